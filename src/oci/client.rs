//! The client for one upstream registry (OCI distribution spec). It fetches and never decides.
//!
//! Authentication: anonymous, Basic (password from the environment) and the bearer-token flow
//! (`WWW-Authenticate: Bearer realm,service,scope`, Docker's token spec), tokens cached per scope
//! until they expire. Token endpoints only on `auth_hosts`; blob redirects followed by the gate
//! without credentials, and never to private, loopback or link-local addresses unless listed in
//! `redirect_hosts`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use reqwest::header::{ACCEPT, AUTHORIZATION, WWW_AUTHENTICATE};
use reqwest::{Method, StatusCode, Url};

use crate::config::{is_loopback_host, origin_listed, RegistryConfig, Secret};
use crate::fetch::identity::{Identity, ACR_RESOURCE};
use crate::fetch::{ip_is_private, redirect_target, MAX_REDIRECTS};
use crate::store::cache::now_secs;

/// Media types the gate accepts, in the order it asks for them.
pub const MANIFEST_TYPES: [&str; 4] = [
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];

#[derive(Debug, Clone, thiserror::Error)]
pub enum RegistryError {
    #[error("registry {0} could not be reached")]
    Unreachable(String),
    #[error("registry {0}: {1}")]
    Tls(String, String),
    /// No credential from the managed identity: the request is not sent (never anonymously).
    /// The cause (endpoint, tenant, paths) is logged where it is found, not told to clients.
    #[error("registry {0}: no credential from the gate's managed identity; try again shortly")]
    Identity(String, String),
    #[error("registry {0} refused the gate's credentials")]
    Auth(String),
    #[error("registry {0} answered HTTP {1}")]
    Status(String, u16),
    #[error("registry {0}: {1}")]
    Refused(String, String),
    #[error("not found in the upstream registry")]
    NotFound,
}

/// A request that got no answer: its TLS cause when there is one (a configuration problem,
/// answered 502 with the cause), else unreachable (503, to retry). The cause is logged.
fn failed(registry: &str, e: reqwest::Error) -> RegistryError {
    match crate::fetch::tls_cause(&e) {
        Some(cause) => {
            tracing::warn!(%registry, %cause, "registry TLS failed");
            RegistryError::Tls(registry.to_string(), cause)
        }
        None => {
            tracing::warn!(%registry, error = %e, "registry request failed");
            RegistryError::Unreachable(registry.to_string())
        }
    }
}

struct Token {
    value: String,
    expires: Instant,
}

pub struct RegistryClient {
    pub cfg: RegistryConfig,
    client: reqwest::Client,
    tokens: Mutex<HashMap<String, Token>>,
    /// `auth = "managed-identity"`: the identity, and ACR's refresh token exchanged for its
    /// Entra ID token (with the Unix second it is exchanged again at).
    identity: Option<std::sync::Arc<Identity>>,
    exchanged: tokio::sync::Mutex<Option<Exchanged>>,
}

/// ACR's refresh token, the Unix second it is exchanged again at, and the Entra ID token it
/// was exchanged for.
struct Exchanged {
    refresh: Secret,
    until: i64,
    aad: Secret,
}

/// The user name ACR's token endpoint takes with a refresh token as the password.
const ACR_REFRESH_USER: &str = "00000000-0000-0000-0000-000000000000";
/// ACR's refresh tokens live about three hours; one is exchanged again well before, and with
/// every new Entra ID token.
const ACR_REFRESH_SECS: i64 = 15 * 60;

/// The parameters of a `WWW-Authenticate` challenge (RFC 9110 §11.6.1).
fn parse_challenge(h: &str) -> Option<(String, HashMap<String, String>)> {
    let (scheme, rest) = h.trim().split_once(' ').unwrap_or((h.trim(), ""));
    let mut params = HashMap::new();
    let mut rest = rest.trim();
    while !rest.is_empty() {
        let (k, after) = rest.split_once('=')?;
        let after = after.trim_start();
        let (v, next) = if let Some(q) = after.strip_prefix('"') {
            let end = q.find('"')?;
            (&q[..end], &q[end + 1..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (&after[..end], &after[end..])
        };
        params.insert(k.trim().to_ascii_lowercase(), v.to_string());
        rest = next.trim_start_matches([',', ' ']);
    }
    Some((scheme.to_ascii_lowercase(), params))
}

impl RegistryClient {
    pub fn new(cfg: RegistryConfig, timeout: Duration) -> Result<RegistryClient, String> {
        // Only the registry itself and the hosts the operator listed may resolve to private
        // addresses; any other name (a CDN a blob redirect names) is connected to only on a
        // public address it resolved to when the connection was made.
        let private_ok: Vec<String> = std::iter::once(cfg.url.host_str().unwrap_or_default())
            .chain(cfg.auth_hosts.iter().map(|h| h.host.as_str()))
            .chain(cfg.redirect_hosts.iter().map(|h| h.host.as_str()))
            .map(str::to_ascii_lowercase)
            .collect();
        let client = crate::fetch::http_client(
            &format!("registry {}", cfg.host),
            cfg.ca_file.as_deref(),
            timeout,
            private_ok,
        )?;
        let identity = Identity::of_upstream(
            &format!("registry {}", cfg.host),
            cfg.managed_identity.as_ref(),
        )?;
        Ok(RegistryClient {
            client,
            cfg,
            tokens: Mutex::default(),
            identity,
            exchanged: tokio::sync::Mutex::default(),
        })
    }

    /// The Basic credentials the registry takes: the configured pair, or, with a managed
    /// identity, ACR's refresh token (from `/oauth2/exchange`, for the identity's Entra ID
    /// token) under ACR's fixed user name.
    async fn credentials(&self) -> Result<Option<(String, Secret)>, RegistryError> {
        let Some(id) = &self.identity else {
            return Ok(self.cfg.username.clone().zip(self.cfg.password.clone()));
        };
        let name = self.name();
        let mut held = self.exchanged.lock().await;
        if let Some(e) = &*held {
            if now_secs() < e.until {
                return Ok(Some((ACR_REFRESH_USER.into(), e.refresh.clone())));
            }
        }
        // The identity logs why it has none, once per fetch.
        let (aad, aad_until) = id
            .token_until(ACR_RESOURCE)
            .await
            .map_err(|e| RegistryError::Identity(name.clone(), e.to_string()))?;
        let url = self
            .cfg
            .url
            .join("/oauth2/exchange")
            .map_err(|e| RegistryError::Refused(name.clone(), e.to_string()))?;
        let service = match (self.cfg.url.host_str(), self.cfg.url.port()) {
            (Some(h), Some(p)) => format!("{h}:{p}"),
            (Some(h), None) => h.to_string(),
            (None, _) => String::new(),
        };
        let mut form = vec![
            ("grant_type", "access_token".to_string()),
            ("service", service),
            ("access_token", aad.expose().to_string()),
        ];
        if let Ok(tenant) = std::env::var("AZURE_TENANT_ID") {
            form.push(("tenant", tenant));
        }
        let resp = self
            .client
            .post(url)
            .form(&form)
            .send()
            .await
            .map_err(|e| failed(&name, e))?;
        let status = resp.status();
        if !status.is_success() {
            if status == StatusCode::UNAUTHORIZED {
                // The Entra ID token itself was refused: the next attempt fetches a new one.
                id.forget(ACR_RESOURCE, &aad).await;
            }
            return Err(RegistryError::Identity(
                name,
                format!(
                    "the registry's token exchange answered HTTP {}",
                    status.as_u16()
                ),
            ));
        }
        let body = crate::fetch::read_limited(resp, 64 * 1024)
            .await
            .map_err(|_| RegistryError::Unreachable(name.clone()))?;
        #[derive(serde::Deserialize)]
        struct ExchangeAnswer {
            refresh_token: String,
        }
        let refresh = serde_json::from_slice::<ExchangeAnswer>(&body)
            .ok()
            .map(|e| e.refresh_token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                RegistryError::Refused(
                    name.clone(),
                    "token exchange without a refresh_token".into(),
                )
            })?;
        let refresh = Secret::new(refresh);
        *held = Some(Exchanged {
            refresh: refresh.clone(),
            until: aad_until.min(now_secs() + ACR_REFRESH_SECS),
            aad,
        });
        Ok(Some((ACR_REFRESH_USER.into(), refresh)))
    }

    /// The registry refused `refused`: forgets it and the Entra ID token it came from (when
    /// they are still the ones held), so the next request starts from a new Entra ID token.
    async fn forget_credentials(&self, refused: &Secret) {
        if let Some(id) = &self.identity {
            let mut held = self.exchanged.lock().await;
            if held
                .as_ref()
                .is_some_and(|e| e.refresh.expose() == refused.expose())
            {
                if let Some(e) = held.take() {
                    id.forget(ACR_RESOURCE, &e.aad).await;
                }
            }
        }
    }

    fn name(&self) -> String {
        self.cfg.host.clone()
    }

    fn cached_token(&self, scope: &str) -> Option<String> {
        let t = self.tokens.lock().ok()?;
        t.get(scope)
            .filter(|t| t.expires > Instant::now())
            .map(|t| t.value.clone())
    }

    /// Fetches a bearer token for `scope` from the challenge's realm, which must be an https
    /// URL (http only on loopback) on one of `auth_hosts`.
    async fn fetch_token(
        &self,
        params: &HashMap<String, String>,
        scope: &str,
    ) -> Result<String, RegistryError> {
        let name = self.name();
        let realm = params.get("realm").ok_or_else(|| {
            RegistryError::Refused(name.clone(), "bearer challenge without a realm".into())
        })?;
        let mut url = Url::parse(realm).map_err(|_| {
            RegistryError::Refused(name.clone(), "bearer realm is not a URL".into())
        })?;
        let host = url.host_str().unwrap_or_default().to_ascii_lowercase();
        let scheme_ok =
            url.scheme() == "https" || (url.scheme() == "http" && is_loopback_host(&host));
        // By origin: a token endpoint on another port of an auth host is another service,
        // and the registry's credentials must not reach it.
        if !scheme_ok || !origin_listed(&self.cfg.auth_hosts, &url) {
            return Err(RegistryError::Refused(
                name,
                format!(
                    "token endpoint {host}{} is not in auth_hosts",
                    url.port().map(|p| format!(":{p}")).unwrap_or_default()
                ),
            ));
        }
        {
            let mut q = url.query_pairs_mut();
            if let Some(s) = params.get("service") {
                q.append_pair("service", s);
            }
            q.append_pair("scope", scope);
        }
        let mut resp = None;
        for attempt in 0..2 {
            let mut req = self.client.get(url.clone());
            let creds = self.credentials().await?;
            if let Some((u, p)) = &creds {
                req = req.basic_auth(u, Some(p.expose()));
            }
            let r = req.send().await.map_err(|e| failed(&name, e))?;
            // A refused managed-identity credential is replaced once (revoked, or rights
            // changed since it was issued).
            if r.status() == StatusCode::UNAUTHORIZED && self.identity.is_some() && attempt == 0 {
                tracing::warn!(registry = %name, "registry refused the managed identity's credential; fetching a new one");
                if let Some((_, p)) = &creds {
                    self.forget_credentials(p).await;
                }
                continue;
            }
            resp = Some(r);
            break;
        }
        let resp = resp.ok_or_else(|| RegistryError::Auth(name.clone()))?;
        match resp.status() {
            s if s.is_success() => {
                // The registry took the identity's credential: it has the right.
                if let Some(id) = &self.identity {
                    if let Some(e) = &*self.exchanged.lock().await {
                        id.accepted(ACR_RESOURCE, &e.aad).await;
                    }
                }
            }
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                return Err(RegistryError::Auth(name))
            }
            s => return Err(RegistryError::Status(name, s.as_u16())),
        }
        let body = crate::fetch::read_limited(resp, 64 * 1024)
            .await
            .map_err(|_| RegistryError::Unreachable(name.clone()))?;
        #[derive(serde::Deserialize)]
        struct TokenResp {
            token: Option<String>,
            access_token: Option<String>,
            expires_in: Option<u64>,
        }
        let t: TokenResp = serde_json::from_slice(&body).map_err(|_| {
            RegistryError::Refused(name.clone(), "token response is not JSON".into())
        })?;
        let value = t
            .token
            .or(t.access_token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                RegistryError::Refused(name.clone(), "token response without a token".into())
            })?;
        // Docker's token spec: 60 s when the server says nothing; renew a little early.
        let ttl = t.expires_in.unwrap_or(60).clamp(10, 3600).saturating_sub(5);
        if let Ok(mut tokens) = self.tokens.lock() {
            tokens.insert(
                scope.to_string(),
                Token {
                    value: value.clone(),
                    expires: Instant::now() + Duration::from_secs(ttl),
                },
            );
        }
        Ok(value)
    }

    /// A request to the registry's own origin with its credentials (token or Basic), answering
    /// one auth challenge. Redirects are returned, not followed.
    async fn send(
        &self,
        method: Method,
        path: &str,
        accept: Option<&str>,
        scope: &str,
    ) -> Result<reqwest::Response, RegistryError> {
        let name = self.name();
        let url = self
            .cfg
            .url
            .join(path)
            .map_err(|_| RegistryError::Refused(name.clone(), "bad path".into()))?;
        let mut auth: Option<String> = self.cached_token(scope).map(|t| format!("Bearer {t}"));
        for attempt in 0..2 {
            let mut req = self.client.request(method.clone(), url.clone());
            if let Some(a) = accept {
                req = req.header(ACCEPT, a);
            }
            if let Some(a) = &auth {
                req = req.header(AUTHORIZATION, a);
            }
            let resp = req.send().await.map_err(|e| failed(&name, e))?;
            if resp.status() != StatusCode::UNAUTHORIZED {
                return Ok(resp);
            }
            if attempt == 1 {
                break;
            }
            let challenge = resp
                .headers()
                .get(WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_challenge);
            auth = match challenge {
                Some((scheme, params)) if scheme == "bearer" => Some(format!(
                    "Bearer {}",
                    self.fetch_token(&params, scope).await?
                )),
                Some((scheme, _)) if scheme == "basic" => match self.credentials().await? {
                    Some((u, p)) => Some(basic(&u, p.expose())),
                    None => return Err(RegistryError::Auth(name)),
                },
                _ => return Err(RegistryError::Auth(name)),
            };
        }
        Err(RegistryError::Auth(name))
    }

    /// GET or HEAD a manifest by tag or digest.
    pub async fn manifest(
        &self,
        repo_path: &str,
        reference: &str,
        head: bool,
    ) -> Result<reqwest::Response, RegistryError> {
        let method = if head { Method::HEAD } else { Method::GET };
        let accept = MANIFEST_TYPES.join(", ");
        let resp = self
            .send(
                method,
                &format!("/v2/{repo_path}/manifests/{reference}"),
                Some(&accept),
                &format!("repository:{repo_path}:pull"),
            )
            .await?;
        self.classify(resp)
    }

    pub async fn referrers(
        &self,
        repo_path: &str,
        digest: &str,
    ) -> Result<reqwest::Response, RegistryError> {
        let resp = self
            .send(
                Method::GET,
                &format!("/v2/{repo_path}/referrers/{digest}"),
                Some("application/vnd.oci.image.index.v1+json"),
                &format!("repository:{repo_path}:pull"),
            )
            .await?;
        self.classify(resp)
    }

    /// `n` and `last` (a validated tag) page through the list (distribution spec "Listing Tags").
    pub async fn tags(
        &self,
        repo_path: &str,
        n: Option<u32>,
        last: Option<&str>,
    ) -> Result<reqwest::Response, RegistryError> {
        let mut query = Vec::new();
        if let Some(n) = n {
            query.push(format!("n={n}"));
        }
        if let Some(l) = last {
            query.push(format!("last={l}"));
        }
        let query = if query.is_empty() {
            String::new()
        } else {
            format!("?{}", query.join("&"))
        };
        let resp = self
            .send(
                Method::GET,
                &format!("/v2/{repo_path}/tags/list{query}"),
                None,
                &format!("repository:{repo_path}:pull"),
            )
            .await?;
        self.classify(resp)
    }

    fn classify(&self, resp: reqwest::Response) -> Result<reqwest::Response, RegistryError> {
        let name = self.name();
        match resp.status() {
            s if s.is_success() => Ok(resp),
            StatusCode::NOT_FOUND => Err(RegistryError::NotFound),
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Err(RegistryError::Auth(name)),
            s => Err(RegistryError::Status(name, s.as_u16())),
        }
    }

    /// Opens a blob, following redirects itself: without credentials, and only to https hosts
    /// (or loopback http) whose addresses are public, unless listed in `redirect_hosts`.
    pub async fn open_blob(
        &self,
        repo_path: &str,
        digest: &str,
    ) -> Result<reqwest::Response, RegistryError> {
        let name = self.name();
        let mut resp = self
            .send(
                Method::GET,
                &format!("/v2/{repo_path}/blobs/{digest}"),
                None,
                &format!("repository:{repo_path}:pull"),
            )
            .await?;
        for _ in 0..MAX_REDIRECTS {
            if !resp.status().is_redirection() {
                return self.classify(resp);
            }
            let next = redirect_target(&resp, resp.url())
                .map_err(|e| RegistryError::Refused(name.clone(), e))?;
            self.check_redirect(&next).await?;
            resp = self
                .client
                .get(next)
                .send()
                .await
                .map_err(|e| failed(&name, e))?;
        }
        Err(RegistryError::Refused(name, "too many redirects".into()))
    }

    async fn check_redirect(&self, url: &Url) -> Result<(), RegistryError> {
        let name = self.name();
        let host = url.host_str().unwrap_or_default().to_ascii_lowercase();
        let listed = origin_listed(&self.cfg.redirect_hosts, url);
        match url.scheme() {
            "https" => {}
            "http" if listed && is_loopback_host(&host) => {}
            _ => {
                return Err(RegistryError::Refused(
                    name,
                    format!("blob redirect to {}://{host} refused", url.scheme()),
                ))
            }
        }
        // Credentials in a redirect would be sent (Basic) to wherever it points.
        if !url.username().is_empty() || url.password().is_some() {
            return Err(RegistryError::Refused(
                name,
                format!("blob redirect to {host} carries credentials"),
            ));
        }
        if listed || crate::config::HostPort::of_url(&self.cfg.url).matches(url) {
            return Ok(());
        }
        // The hosts the operator configured may resolve to private addresses, on the ports
        // configured for them only: the same name on another port is another service, and an
        // upstream must not reach it.
        let configured = std::iter::once(self.cfg.url.host_str().unwrap_or_default())
            .chain(self.cfg.auth_hosts.iter().map(|h| h.host.as_str()))
            .chain(self.cfg.redirect_hosts.iter().map(|h| h.host.as_str()))
            .any(|h| h.eq_ignore_ascii_case(&host));
        if configured {
            return Err(RegistryError::Refused(
                name,
                format!(
                    "blob redirect to {host}:{}, a port of a configured host that is not configured (add the origin to redirect_hosts if it is meant)",
                    url.port_or_known_default().unwrap_or(0)
                ),
            ));
        }
        // An IP literal (IPv6 in brackets) is checked as it is, not looked up.
        let literal = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .ok();
        if let Some(ip) = literal {
            if ip_is_private(ip) {
                return Err(RegistryError::Refused(
                    name,
                    format!("blob redirect to the private address {host}"),
                ));
            }
            return Ok(());
        }
        // Names that can only mean this machine or the local network are refused outright:
        // through an HTTPS_PROXY the proxy resolves names, and the address check below would
        // be the proxy's (RFC 6761: `localhost` and `.localhost`; a single label is a local
        // search-domain name).
        if host == "localhost" || host.ends_with(".localhost") || !host.contains('.') {
            return Err(RegistryError::Refused(
                name,
                format!("blob redirect to the local name {host}"),
            ));
        }
        // A name is checked where it is resolved for the connection (the client's resolver
        // keeps only public addresses for hosts the operator did not list), so no second
        // lookup can answer differently between the check and the connect.
        Ok(())
    }
}

/// RFC 7617 Basic credentials.
fn basic(user: &str, password: &str) -> String {
    use base64::Engine as _;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges() {
        let (s, p) = parse_challenge(r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/ubuntu:pull""#).unwrap();
        assert_eq!(s, "bearer");
        assert_eq!(p["realm"], "https://auth.docker.io/token");
        assert_eq!(p["scope"], "repository:library/ubuntu:pull");
        let (s, p) = parse_challenge("Basic realm=registry").unwrap();
        assert_eq!((s.as_str(), p["realm"].as_str()), ("basic", "registry"));
    }

    #[test]
    fn private_addresses() {
        for ip in [
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "127.0.0.1",
            "169.254.169.254",
            "100.64.0.1",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:10.0.0.1",
            "0.0.0.0",
        ] {
            assert!(ip_is_private(ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "::ffff:0:127.0.0.1",
            "64:ff9b:1::808:808",
            "2001:0:4136:e378::1",
        ] {
            assert!(ip_is_private(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["8.8.8.8", "2606:4700::1111", "64:ff9b::808:808"] {
            assert!(!ip_is_private(ip.parse().unwrap()), "{ip}");
        }
    }

    #[tokio::test]
    async fn blob_redirects_to_local_names_are_refused_before_any_lookup() {
        let cfg = crate::config::Config::from_text(
            "[[oci.registry]]\nhost = \"registry.example\"\nurl = \"https://registry.example\"\n",
            None,
            std::path::Path::new("/"),
        )
        .unwrap();
        let client =
            RegistryClient::new(cfg.oci.registries[0].clone(), Duration::from_secs(5)).unwrap();
        // Through an HTTPS_PROXY the proxy would resolve these: they are refused by name.
        for local in [
            "https://localhost:9/b",
            "https://a.localhost/b",
            "https://intranet/b",
            "https://10.0.0.1/b",
        ] {
            let url = Url::parse(local).unwrap();
            assert!(client.check_redirect(&url).await.is_err(), "{local}");
        }
        let cdn = Url::parse("https://cdn.example.net/blobs/x").unwrap();
        assert!(client.check_redirect(&cdn).await.is_ok());
    }

    #[test]
    fn basic_encoding() {
        assert_eq!(basic("user", "secret"), "Basic dXNlcjpzZWNyZXQ=");
    }
}
