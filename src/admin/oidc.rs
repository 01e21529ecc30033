//! `[admin.oidc]`: JSON Web Tokens as admin credentials (RFC 7519), so a workload identity (an
//! Entra ID managed identity, a CI job) calls the API with no stored secret. Only RS256 and
//! ES256 signatures (RFC 7518 §3.3, §3.4) are accepted, with keys from the issuer's JWKS (RFC
//! 7517; a file, or an https URL fetched again when a token names an unknown key id). The
//! issuer must match exactly, the audience must be ours, the token must be in its validity
//! period, and the role comes from the configured claim (the highest of the roles it names).

use std::sync::Mutex;

use aws_lc_rs::signature::{
    ParsedPublicKey, RsaPublicKeyComponents, ECDSA_P256_SHA256_FIXED, RSA_PKCS1_2048_8192_SHA256,
};
use base64::Engine;
use serde::Deserialize;
use serde_json::Value;

use super::auth::{Actor, Role};
use crate::config::{JwksSource, OidcConfig};

/// Clock skew tolerated on `exp` and `nbf` (seconds).
const LEEWAY: i64 = 60;
/// A JWKS URL is fetched again at most this often for an unknown key id.
const REFRESH_SECS: i64 = 60;
/// A JWKS URL's keys are trusted this long (a key the issuer removed stops working by then).
const MAX_AGE_SECS: i64 = 3600;

/// A key parsed once (RS256: PKCS#1 v1.5 with SHA-256, 2048 to 8192 bits; ES256: P-256 with a
/// fixed-length `r || s` signature, RFC 7518 §3.4).
enum Key {
    Rsa(ParsedPublicKey),
    Ec(ParsedPublicKey),
}

struct Jwk {
    kid: Option<String>,
    key: Key,
}

pub struct Oidc {
    cfg: OidcConfig,
    keys: Mutex<(std::sync::Arc<Vec<Jwk>>, i64)>,
    client: reqwest::Client,
}

fn b64url(s: &str) -> Result<Vec<u8>, String> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s.trim_end_matches('='))
        .map_err(|_| "not base64url".to_string())
}

/// Parses a JWK Set; keys of other types or curves are skipped, as RFC 7517 §5 allows.
fn parse_jwks(bytes: &[u8]) -> Result<Vec<Jwk>, String> {
    #[derive(Deserialize)]
    struct Set {
        keys: Vec<Value>,
    }
    let set: Set = serde_json::from_slice(bytes).map_err(|e| format!("not a JWK Set: {e}"))?;
    let mut out = Vec::new();
    for k in set.keys {
        let s = |f: &str| k.get(f).and_then(Value::as_str);
        let kid = s("kid").map(str::to_string);
        if s("use").is_some_and(|u| u != "sig") {
            continue;
        }
        let key = match (s("kty"), s("crv")) {
            (Some("RSA"), _) => {
                let (Some(n), Some(e)) = (s("n"), s("e")) else {
                    continue;
                };
                let (Ok(n), Ok(e)) = (b64url(n), b64url(e)) else {
                    continue;
                };
                // Keys this small are forgeable: skipped rather than trusted.
                let n_bits = |n: &[u8]| {
                    let n: Vec<u8> = n.iter().copied().skip_while(|b| *b == 0).collect();
                    n.first()
                        .map_or(0, |f| (n.len() - 1) * 8 + (8 - f.leading_zeros() as usize))
                };
                let bits = n_bits(&n);
                if bits < 2048 {
                    continue;
                }
                let Ok(k) = RsaPublicKeyComponents { n, e }
                    .to_parsed_public_key(&RSA_PKCS1_2048_8192_SHA256)
                else {
                    continue;
                };
                Key::Rsa(k)
            }
            (Some("EC"), Some("P-256")) => {
                let (Some(x), Some(y)) = (s("x"), s("y")) else {
                    continue;
                };
                let (Ok(x), Ok(y)) = (b64url(x), b64url(y)) else {
                    continue;
                };
                if x.len() != 32 || y.len() != 32 {
                    continue;
                }
                // SEC1 §2.3.3 uncompressed point; a point off the curve is refused here.
                let mut point = vec![4u8];
                point.extend_from_slice(&x);
                point.extend_from_slice(&y);
                let Ok(k) = ParsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &point) else {
                    continue;
                };
                Key::Ec(k)
            }
            _ => continue,
        };
        out.push(Jwk { kid, key });
    }
    Ok(out)
}

impl Oidc {
    /// Reads a JWKS file now (an unreadable file is a start-up error); a URL is fetched on
    /// first use.
    pub fn new(cfg: OidcConfig) -> Result<Oidc, String> {
        let keys = match &cfg.jwks {
            JwksSource::File(p) => parse_jwks(
                &std::fs::read(p).map_err(|e| format!("[admin.oidc] jwks {}: {e}", p.display()))?,
            )
            .map_err(|e| format!("[admin.oidc] jwks {}: {e}", p.display()))?,
            JwksSource::Url(_) => Vec::new(),
        };
        crate::fetch::install_crypto_provider();
        let client = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Oidc {
            cfg,
            keys: Mutex::new((std::sync::Arc::new(keys), 0)),
            client,
        })
    }

    fn keys(&self) -> (std::sync::Arc<Vec<Jwk>>, i64) {
        let g = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        (g.0.clone(), g.1)
    }

    /// Fetches the JWKS URL again (rate-limited); a failure keeps the keys there were.
    async fn refresh(&self, now: i64) {
        let JwksSource::Url(url) = &self.cfg.jwks else {
            return;
        };
        {
            let mut g = self.keys.lock().unwrap_or_else(|p| p.into_inner());
            if now - g.1 < REFRESH_SECS {
                return;
            }
            g.1 = now;
        }
        let fetched = async {
            let resp = self
                .client
                .get(url.clone())
                .send()
                .await
                .map_err(|e| e.to_string())?;
            if !resp.status().is_success() {
                return Err(format!("HTTP {}", resp.status()));
            }
            let body = crate::fetch::read_limited(resp, 1 << 20)
                .await
                .map_err(|_| "the JWKS is too large or broke off".to_string())?;
            parse_jwks(&body)
        }
        .await;
        match fetched {
            Ok(keys) => {
                let mut g = self.keys.lock().unwrap_or_else(|p| p.into_inner());
                g.0 = std::sync::Arc::new(keys);
            }
            Err(e) => tracing::warn!(%url, error = %e, "[admin.oidc] jwks could not be fetched"),
        }
    }

    /// Checks a JWT; returns who it names and their role, or why not.
    pub async fn authenticate(&self, token: &str, now: i64) -> Result<Actor, String> {
        let parts: Vec<&str> = token.split('.').collect();
        let [h, p, s] = parts.as_slice() else {
            return Err("not a JWT".into());
        };
        let header: Value =
            serde_json::from_slice(&b64url(h)?).map_err(|_| "JWT header is not JSON")?;
        let alg = header
            .get("alg")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if alg != "RS256" && alg != "ES256" {
            return Err(format!(
                "JWT algorithm {alg:?} is not accepted (RS256 or ES256)"
            ));
        }
        let kid = header.get("kid").and_then(Value::as_str);
        let sig = b64url(s)?;
        let signed = format!("{h}.{p}");
        let verify = |keys: &[Jwk]| {
            keys.iter()
                .filter(|k| kid.is_none() || k.kid.as_deref() == kid)
                .any(|k| match (&k.key, alg) {
                    (Key::Rsa(k), "RS256") | (Key::Ec(k), "ES256") => {
                        k.verify_sig(signed.as_bytes(), &sig).is_ok()
                    }
                    _ => false,
                })
        };
        if matches!(self.cfg.jwks, JwksSource::Url(_)) && now - self.keys().1 >= MAX_AGE_SECS {
            self.refresh(now).await;
        }
        let (keys, _) = self.keys();
        let known_kid = kid.is_some_and(|k| keys.iter().any(|j| j.kid.as_deref() == Some(k)));
        let mut ok = verify(&keys);
        if !ok && (!known_kid || keys.is_empty()) {
            self.refresh(now).await;
            ok = verify(&self.keys().0);
        }
        if !ok {
            return Err("JWT signature does not verify with the issuer's keys".into());
        }
        let claims: Value =
            serde_json::from_slice(&b64url(p)?).map_err(|_| "JWT claims are not JSON")?;
        if claims.get("iss").and_then(Value::as_str) != Some(self.cfg.issuer.as_str()) {
            return Err("JWT issuer is not the configured issuer".into());
        }
        let aud_ok = match claims.get("aud") {
            Some(Value::String(a)) => *a == self.cfg.audience,
            Some(Value::Array(list)) => list
                .iter()
                .any(|a| a.as_str() == Some(self.cfg.audience.as_str())),
            _ => false,
        };
        if !aud_ok {
            return Err("JWT audience is not this gate".into());
        }
        match claims.get("exp").and_then(Value::as_i64) {
            Some(exp) if exp.saturating_add(LEEWAY) > now => {}
            Some(_) => return Err("JWT has expired".into()),
            None => return Err("JWT has no expiry".into()),
        }
        if claims
            .get("nbf")
            .and_then(Value::as_i64)
            .is_some_and(|nbf| nbf > now + LEEWAY)
        {
            return Err("JWT is not valid yet".into());
        }
        let names: Vec<&str> = match claims.get(&self.cfg.role_claim) {
            Some(Value::String(r)) => vec![r.as_str()],
            Some(Value::Array(list)) => list.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        let role = names
            .iter()
            .filter_map(|n| Role::parse(n).ok())
            .max()
            .ok_or_else(|| format!("JWT claim {:?} names no tollgate role", self.cfg.role_claim))?;
        // The audit must name who acted: a token naming no one, or in characters a log line
        // cannot hold, is refused.
        let who = ["sub", "oid", "appid"]
            .iter()
            .find_map(|c| claims.get(*c).and_then(Value::as_str))
            .filter(|w| !w.is_empty() && w.len() <= 256 && !w.chars().any(char::is_control))
            .ok_or("JWT names no subject (sub)")?;
        Ok(Actor {
            name: format!("oidc:{who}"),
            role,
        })
    }
}
