//! The operator's Sigstore trusted root (`trusted_root.json`, media type
//! `application/vnd.dev.sigstore.trustedroot+json;version=0.1`): the Fulcio CAs that may issue
//! signing certificates and the Rekor keys that sign log entries, each with the period it was
//! valid for. Read from a file, never fetched (the gate runs offline).

use base64::Engine;
use serde::Deserialize;

use super::keys::PublicKey;
use super::x509::{Authority, Cert};
use crate::policy::units::parse_rfc3339;

/// A transparency log's key, by its log id, and when it signed.
pub struct LogKey {
    pub log_id: Vec<u8>,
    pub key: PublicKey,
    pub valid_from: i64,
    pub valid_to: Option<i64>,
}

pub struct TrustRoot {
    pub authorities: Vec<Authority>,
    pub logs: Vec<LogKey>,
    /// Certificate-transparency logs: when the root lists any, a Fulcio certificate needs an
    /// SCT by one of them.
    pub ct_logs: Vec<LogKey>,
}

impl std::fmt::Debug for TrustRoot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "TrustRoot({} CAs, {} logs)",
            self.authorities.len(),
            self.logs.len()
        )
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Raw {
    media_type: Option<String>,
    #[serde(default)]
    tlogs: Vec<RawLog>,
    #[serde(default)]
    ctlogs: Vec<RawLog>,
    #[serde(default)]
    certificate_authorities: Vec<RawCa>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawLog {
    public_key: RawKey,
    log_id: RawLogId,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawKey {
    raw_bytes: Option<String>,
    valid_for: Option<RawPeriod>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawLogId {
    key_id: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawCa {
    cert_chain: RawChain,
    valid_for: Option<RawPeriod>,
}

#[derive(Deserialize)]
struct RawChain {
    certificates: Vec<RawCert>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawCert {
    raw_bytes: String,
}

#[derive(Deserialize)]
struct RawPeriod {
    start: Option<String>,
    end: Option<String>,
}

fn period(p: Option<&RawPeriod>, what: &str) -> Result<(i64, Option<i64>), String> {
    let Some(p) = p else {
        return Err(format!("{what} has no validFor"));
    };
    let start = p
        .start
        .as_deref()
        .and_then(parse_rfc3339)
        .ok_or_else(|| format!("{what}: validFor.start is missing or not a timestamp"))?;
    let end = match p.end.as_deref() {
        None => None,
        Some(e) => Some(
            parse_rfc3339(e).ok_or_else(|| format!("{what}: validFor.end is not a timestamp"))?,
        ),
    };
    Ok((start, end))
}

impl TrustRoot {
    /// Parses a trusted root. Anything unreadable in it is an error: a partly read root could
    /// silently drop the CA or log an operator relies on.
    pub fn from_json(bytes: &[u8]) -> Result<TrustRoot, String> {
        let b64 = base64::engine::general_purpose::STANDARD;
        let raw: Raw = serde_json::from_slice(bytes).map_err(|e| format!("not JSON: {e}"))?;
        if !raw
            .media_type
            .as_deref()
            .is_some_and(|m| m.starts_with("application/vnd.dev.sigstore.trustedroot"))
        {
            return Err("mediaType is not application/vnd.dev.sigstore.trustedroot+json".into());
        }
        let mut authorities = Vec::new();
        for (i, ca) in raw.certificate_authorities.iter().enumerate() {
            let what = format!("certificateAuthorities[{i}]");
            let (valid_from, valid_to) = period(ca.valid_for.as_ref(), &what)?;
            let certs = ca
                .cert_chain
                .certificates
                .iter()
                .map(|c| {
                    let der = b64
                        .decode(&c.raw_bytes)
                        .map_err(|_| format!("{what}: a certificate is not base64"))?;
                    Cert::from_der(&der).map_err(|e| format!("{what}: {e}"))
                })
                .collect::<Result<Vec<_>, _>>()?;
            if certs.is_empty() {
                return Err(format!("{what} has no certificates"));
            }
            authorities.push(Authority {
                certs,
                valid_from,
                valid_to,
            });
        }
        let logs = Self::log_keys(&raw.tlogs, "tlogs")?;
        let ct_logs = Self::log_keys(&raw.ctlogs, "ctlogs")?;
        if authorities.is_empty() && logs.is_empty() {
            return Err("it lists no certificate authority and no transparency log".into());
        }
        Ok(TrustRoot {
            authorities,
            logs,
            ct_logs,
        })
    }

    fn log_keys(raw: &[RawLog], kind: &str) -> Result<Vec<LogKey>, String> {
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut logs = Vec::new();
        for (i, log) in raw.iter().enumerate() {
            let what = format!("{kind}[{i}]");
            let (valid_from, valid_to) = period(log.public_key.valid_for.as_ref(), &what)?;
            let der = b64
                .decode(log.public_key.raw_bytes.as_deref().unwrap_or_default())
                .map_err(|_| format!("{what}: publicKey is not base64"))?;
            let key = PublicKey::from_der(&der).map_err(|e| format!("{what}: {e}"))?;
            let log_id = b64
                .decode(&log.log_id.key_id)
                .map_err(|_| format!("{what}: logId is not base64"))?;
            logs.push(LogKey {
                log_id,
                key,
                valid_from,
                valid_to,
            });
        }
        Ok(logs)
    }

    /// The log key with this id that was valid at `at`.
    pub fn log(&self, log_id: &[u8], at: i64) -> Option<&LogKey> {
        self.logs.iter().find(|l| {
            l.log_id == log_id && l.valid_from <= at && l.valid_to.is_none_or(|end| at <= end)
        })
    }
}
