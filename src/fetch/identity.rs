//! Upstream credentials from an Azure managed identity: Entra ID access tokens, obtained where
//! the platform offers them and refreshed before they expire, so no long-lived secret is stored.
//!
//! Where the token comes from is the platform's to say, through its standard variables (the
//! same the Azure SDKs read), never through the upstream rules (IMDS is plain HTTP on a
//! link-local address, which those rules refuse):
//! - **workload identity** (AKS): `AZURE_FEDERATED_TOKEN_FILE` (a Kubernetes service-account
//!   token, re-read for every request: the kubelet rotates it), `AZURE_TENANT_ID`,
//!   `AZURE_CLIENT_ID` (or the rule's `client_id`) and `AZURE_AUTHORITY_HOST` (default
//!   `https://login.microsoftonline.com/`): the OAuth 2.0 client-credentials grant with the
//!   file's token as a JWT client assertion (RFC 7523), on `{authority}{tenant}/oauth2/v2.0/token`;
//! - **App Service, Container Apps, Functions**: `IDENTITY_ENDPOINT` and `IDENTITY_HEADER`,
//!   the managed-identity endpoint, API version 2019-08-01;
//! - **a VM or scale set**: the Instance Metadata Service at `169.254.169.254` (or the host in
//!   `AZURE_POD_IDENTITY_AUTHORITY_HOST`), API version 2018-02-01, with `Metadata: true`.
//!
//! Tokens are never logged; errors name the endpoint and the status, not the answer's body.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use reqwest::Url;

use crate::config::Secret;
use crate::store::cache::now_secs;

/// Entra ID's resource for Azure DevOps, and so for Azure Artifacts feeds.
pub const AZURE_DEVOPS_RESOURCE: &str = "499b84ac-1321-427f-aa17-267ca6975798";
/// Entra ID's resource for Azure Container Registry's token exchange.
pub const ACR_RESOURCE: &str = "https://containerregistry.azure.net";

/// How long before its expiry a token is replaced (at most half its lifetime).
const REFRESH_MARGIN_SECS: i64 = 300;
/// The longest lifetime believed (IMDS issues 24-hour tokens); a longer one is cut to it.
const MAX_LIFETIME_SECS: i64 = 86_400;
/// After the endpoint fails, it is not asked again for this long (or its `Retry-After`, up to
/// a minute): IMDS limits the whole machine's calls, and every request would otherwise ask.
const FAILURE_BACKOFF_SECS: i64 = 5;
/// A fetch waits this long at most.
const FETCH_WAIT: Duration = Duration::from_secs(30);
/// A replacement token (fetched because the upstream refused the one before) that the upstream
/// refuses too within this long of its fetch says the identity lacks the right: the endpoint is
/// then not asked again for `REFUSED_BACKOFF_SECS`.
const FRESH_SECS: i64 = 60;
const REFUSED_BACKOFF_SECS: i64 = 30;

#[derive(Debug, Clone, thiserror::Error)]
#[error("managed identity: {0}")]
pub struct IdentityError(pub String);

#[derive(Debug)]
enum Endpoint {
    Federated {
        token_url: Url,
        client_id: String,
        token_file: PathBuf,
    },
    AppService {
        url: Url,
        header: Secret,
    },
    Imds {
        url: Url,
    },
}

/// An access token, when it was fetched, the Unix second it is replaced at, and the one it
/// expires at.
#[derive(Clone)]
struct Held {
    token: Secret,
    fetched_at: i64,
    /// Fetched because the upstream refused the one before.
    after_refusal: bool,
    refresh_at: i64,
    expires_at: i64,
}

/// By resource: the token held, the last failure (until when it stands, and what it was), and
/// whether a background refresh is under way.
#[derive(Default)]
struct Tokens {
    held: HashMap<String, Held>,
    failed: HashMap<String, (i64, IdentityError)>,
    refreshing: std::collections::HashSet<String>,
    /// Resources whose last token the upstream refused.
    refused: std::collections::HashSet<String>,
}

/// One managed identity (the system-assigned one, or the user-assigned `client_id`).
pub struct Identity {
    /// The upstream it authenticates (for the log).
    label: String,
    client_id: Option<String>,
    endpoint: Endpoint,
    http: reqwest::Client,
    /// One lock, so concurrent requests wait for one fetch and then share its outcome.
    tokens: tokio::sync::Mutex<Tokens>,
    /// Some held token was fetched after a refusal and has not been accepted yet (so
    /// `accepted` need not take the lock on every request).
    unproven: std::sync::atomic::AtomicBool,
    /// Woken when a background refresh settles.
    settled: tokio::sync::Notify,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("client_id", &self.client_id)
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// https, or http on a loopback or link-local address (the local identity endpoints are).
fn endpoint_url(what: &str, text: &str) -> Result<Url, String> {
    let url = Url::parse(text).map_err(|e| format!("{what} {text:?}: {e}"))?;
    let host = url.host_str().unwrap_or_default();
    let local = match host.trim_matches(['[', ']']).parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(ip)) => ip.is_loopback() || ip.is_link_local(),
        Ok(std::net::IpAddr::V6(ip)) => ip.is_loopback(),
        Err(_) => host.eq_ignore_ascii_case("localhost"),
    };
    match url.scheme() {
        "https" => Ok(url),
        "http" if local => Ok(url),
        _ => Err(format!(
            "{what} {text:?} must be https (http only for a local endpoint)"
        )),
    }
}

impl Identity {
    /// The identity of an upstream configured with `auth = "managed-identity"` (none when it
    /// is not), logged once with where its tokens come from. `label` names the upstream.
    pub fn of_upstream(
        label: &str,
        mi: Option<&crate::config::ManagedIdentity>,
    ) -> Result<Option<Arc<Identity>>, String> {
        let Some(mi) = mi else {
            return Ok(None);
        };
        let mut id = Identity::from_env(mi.client_id.clone())
            .map_err(|e| format!("{label}: managed identity: {e}"))?;
        id.label = label.to_string();
        tracing::info!(upstream = %label, source = %id.describe(), "upstream credentials from a managed identity");
        Ok(Some(Arc::new(id)))
    }

    /// The identity the environment offers, for the user-assigned `client_id` if given.
    pub fn from_env(client_id: Option<String>) -> Result<Identity, String> {
        crate::fetch::install_crypto_provider();
        let client_id = client_id.filter(|c| !c.trim().is_empty());
        let endpoint = if let Some(file) = var("AZURE_FEDERATED_TOKEN_FILE") {
            let tenant = var("AZURE_TENANT_ID")
                .ok_or("AZURE_FEDERATED_TOKEN_FILE is set but AZURE_TENANT_ID is not")?;
            let client = client_id
                .clone()
                .or_else(|| var("AZURE_CLIENT_ID"))
                .ok_or("workload identity needs client_id or AZURE_CLIENT_ID")?;
            let authority = var("AZURE_AUTHORITY_HOST")
                .unwrap_or_else(|| "https://login.microsoftonline.com/".into());
            let authority = endpoint_url("AZURE_AUTHORITY_HOST", &authority)?;
            let token_url = authority
                .join(&format!("{}/oauth2/v2.0/token", tenant.trim_matches('/')))
                .map_err(|e| format!("AZURE_AUTHORITY_HOST: {e}"))?;
            Endpoint::Federated {
                token_url,
                client_id: client,
                token_file: PathBuf::from(file),
            }
        } else if let Some(url) = var("IDENTITY_ENDPOINT") {
            let header = var("IDENTITY_HEADER")
                .ok_or("IDENTITY_ENDPOINT is set but IDENTITY_HEADER is not")?;
            Endpoint::AppService {
                url: endpoint_url("IDENTITY_ENDPOINT", &url)?,
                header: Secret::new(header),
            }
        } else {
            let host = var("AZURE_POD_IDENTITY_AUTHORITY_HOST")
                .unwrap_or_else(|| "http://169.254.169.254".into());
            let url = endpoint_url("the IMDS address", &host)?
                .join("/metadata/identity/oauth2/token")
                .map_err(|e| e.to_string())?;
            Endpoint::Imds { url }
        };
        // The local endpoints are reached directly, never through an egress proxy (as the
        // Azure SDKs do); Entra ID's token endpoint is reached like any public host.
        let mut b = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(30))
            .user_agent(concat!("tollgate/", env!("CARGO_PKG_VERSION")));
        if !matches!(endpoint, Endpoint::Federated { .. }) {
            b = b.no_proxy();
        }
        let http = b.build().map_err(|e| format!("managed identity: {e}"))?;
        Ok(Identity {
            label: String::new(),
            client_id,
            endpoint,
            http,
            tokens: tokio::sync::Mutex::default(),
            unproven: std::sync::atomic::AtomicBool::new(false),
            settled: tokio::sync::Notify::new(),
        })
    }

    /// Which endpoint the tokens come from, for the log (no secret in it).
    pub fn describe(&self) -> String {
        match &self.endpoint {
            Endpoint::Federated { token_url, .. } => format!("workload identity ({token_url})"),
            Endpoint::AppService { url, .. } => format!("IDENTITY_ENDPOINT ({url})"),
            Endpoint::Imds { url } => format!("IMDS ({url})"),
        }
    }

    /// An access token for `resource`, from the cache while it is fresh.
    pub async fn token(self: &Arc<Self>, resource: &str) -> Result<Secret, IdentityError> {
        Ok(self.token_until(resource).await?.0)
    }

    /// An access token for `resource` and the Unix second it will be replaced at (what is
    /// derived from it, such as ACR's refresh token, is replaced with it).
    ///
    /// A token due for refresh but not yet expired is returned at once while one background
    /// task fetches its successor, so a slow or failing endpoint stalls no request while a
    /// valid token is in hand. Without one, the fetch happens here, one at a time (waiters then
    /// share its outcome), and a failure is remembered for a backoff.
    pub async fn token_until(
        self: &Arc<Self>,
        resource: &str,
    ) -> Result<(Secret, i64), IdentityError> {
        // At most twice round: once more after waiting for a background refresh to settle.
        for round in 0..2 {
            let mut tokens = self.tokens.lock().await;
            let now = now_secs();
            let failed = tokens
                .failed
                .get(resource)
                .filter(|(until, _)| now < *until)
                .map(|(_, e)| e.clone());
            if let Some(h) = tokens.held.get(resource).cloned() {
                if now < h.refresh_at {
                    return Ok((h.token, h.refresh_at));
                }
                if now < h.expires_at {
                    if failed.is_none() && tokens.refreshing.insert(resource.to_string()) {
                        let me = Arc::clone(self);
                        let resource = resource.to_string();
                        tokio::spawn(async move {
                            let fetched = me.fetch_bounded(&resource).await;
                            let mut tokens = me.tokens.lock().await;
                            tokens.refreshing.remove(&resource);
                            // Kept (token) or remembered (failure, logged) for the next
                            // request; whoever waits for it is woken.
                            let _kept = me.settle(&mut tokens, &resource, fetched);
                            drop(tokens);
                            me.settled.notify_waiters();
                        });
                    }
                    return Ok((h.token, h.expires_at));
                }
            }
            if let Some(e) = failed {
                return Err(e);
            }
            // The held token expired while a background refresh is still out: wait for it
            // (without the lock, so it can settle) rather than fetch a second time.
            if round == 0 && tokens.refreshing.contains(resource) {
                let settled = self.settled.notified();
                tokio::pin!(settled);
                settled.as_mut().enable();
                drop(tokens);
                let _ = tokio::time::timeout(FETCH_WAIT, settled).await;
                continue;
            }
            let fetched = self.fetch_bounded(resource).await;
            return self.settle(&mut tokens, resource, fetched);
        }
        Err(IdentityError(format!(
            "{}: no token after waiting for the refresh under way",
            self.describe()
        )))
    }

    /// A fetch within `FETCH_WAIT`: the token and the Unix second its life ends, counted from
    /// when the answer arrived (not from when its outcome could be kept).
    async fn fetch_bounded(&self, resource: &str) -> Result<(Secret, i64), Failure> {
        match tokio::time::timeout(FETCH_WAIT, self.fetch(resource)).await {
            Ok(r) => r.map(|(token, lifetime)| (token, now_secs() + lifetime)),
            Err(_) => Err(Failure {
                error: IdentityError(format!(
                    "{}: no answer within {} s",
                    self.describe(),
                    FETCH_WAIT.as_secs()
                )),
                retry_after: None,
            }),
        }
    }

    /// Keeps a fetched token (unless the one held expires later: an older answer settling
    /// late does not replace a newer one), or remembers the failure for a backoff.
    fn settle(
        &self,
        tokens: &mut Tokens,
        resource: &str,
        fetched: Result<(Secret, i64), Failure>,
    ) -> Result<(Secret, i64), IdentityError> {
        let now = now_secs();
        match fetched {
            Ok((token, expires_at)) => {
                if let Some(h) = tokens.held.get(resource) {
                    if h.expires_at > expires_at {
                        tokens.failed.remove(resource);
                        return Ok((h.token.clone(), h.refresh_at));
                    }
                }
                let lifetime = expires_at - now;
                if lifetime <= 0 {
                    return Err(IdentityError(format!(
                        "{}: the token expired before it could be used",
                        self.describe()
                    )));
                }
                let margin = REFRESH_MARGIN_SECS.min(lifetime / 2);
                let after_refusal = tokens.refused.remove(resource);
                if after_refusal {
                    self.unproven
                        .store(true, std::sync::atomic::Ordering::Relaxed);
                }
                let held = Held {
                    token: token.clone(),
                    fetched_at: now,
                    after_refusal,
                    refresh_at: expires_at - margin,
                    expires_at,
                };
                let refresh_at = held.refresh_at;
                tokens.held.insert(resource.to_string(), held);
                tokens.failed.remove(resource);
                Ok((token, refresh_at))
            }
            Err(f) => {
                let backoff = f
                    .retry_after
                    .map_or(FAILURE_BACKOFF_SECS, |s| s.clamp(1, 60));
                // Logged here, once per fetch, not by every request the failure answers.
                tracing::warn!(upstream = %self.label, cause = %f.error, backoff_secs = backoff, "managed identity: no token");
                tokens
                    .failed
                    .insert(resource.to_string(), (now + backoff, f.error.clone()));
                Err(f.error)
            }
        }
    }

    /// The upstream accepted `token`: the identity has the right, so a later refusal of it is
    /// a revocation to recover from, not a reason to back off.
    pub async fn accepted(&self, resource: &str, token: &Secret) {
        use std::sync::atomic::Ordering::Relaxed;
        if !self.unproven.load(Relaxed) {
            return;
        }
        let mut tokens = self.tokens.lock().await;
        if let Some(h) = tokens.held.get_mut(resource) {
            if h.token.expose() == token.expose() {
                h.after_refusal = false;
            }
        }
        if !tokens.held.values().any(|h| h.after_refusal) {
            self.unproven.store(false, Relaxed);
        }
    }

    /// The upstream refused `refused`, the token held for `resource`: it is dropped, so the
    /// next request fetches a new one (revoked, or the identity's rights changed). When that
    /// new token is refused too, soon after it was fetched, the identity lacks the right: the
    /// endpoint is then left alone for a while rather than asked again for every request. A
    /// token other than the one held (a concurrent request's older one) changes nothing.
    pub async fn forget(&self, resource: &str, refused: &Secret) {
        let mut tokens = self.tokens.lock().await;
        let Some(h) = tokens.held.get(resource) else {
            return;
        };
        if h.token.expose() != refused.expose() {
            return;
        }
        let again = h.after_refusal && now_secs() - h.fetched_at < FRESH_SECS;
        tokens.held.remove(resource);
        tokens.refused.insert(resource.to_string());
        if again {
            tracing::warn!(upstream = %self.label, %resource, backoff_secs = REFUSED_BACKOFF_SECS, "managed identity: the upstream refused a token fetched moments ago; does the identity have the right (AcrPull, feed Reader)?");
            tokens.failed.insert(
                resource.to_string(),
                (
                    now_secs() + REFUSED_BACKOFF_SECS,
                    IdentityError(format!(
                        "{}: the upstream refuses this identity's tokens",
                        self.describe()
                    )),
                ),
            );
        }
    }

    /// Asks the endpoint for a token: the token and its lifetime in seconds.
    async fn fetch(&self, resource: &str) -> Result<(Secret, i64), Failure> {
        let fail = |e: String| Failure {
            error: IdentityError(format!("{}: {e}", self.describe())),
            retry_after: None,
        };
        let req = match &self.endpoint {
            Endpoint::Federated {
                token_url,
                client_id,
                token_file,
            } => {
                let assertion = std::fs::read_to_string(token_file)
                    .map_err(|e| fail(format!("{}: {e}", token_file.display())))?;
                let scope = format!("{}/.default", resource.trim_end_matches('/'));
                self.http.post(token_url.clone()).form(&[
                    ("grant_type", "client_credentials"),
                    ("client_id", client_id.as_str()),
                    ("scope", scope.as_str()),
                    (
                        "client_assertion_type",
                        "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                    ),
                    ("client_assertion", assertion.trim()),
                ])
            }
            Endpoint::AppService { url, header } => {
                let mut q = vec![("api-version", "2019-08-01"), ("resource", resource)];
                if let Some(c) = &self.client_id {
                    q.push(("client_id", c));
                }
                self.http
                    .get(url.clone())
                    .query(&q)
                    .header("X-IDENTITY-HEADER", header.expose())
            }
            Endpoint::Imds { url } => {
                let mut q = vec![("api-version", "2018-02-01"), ("resource", resource)];
                if let Some(c) = &self.client_id {
                    q.push(("client_id", c));
                }
                self.http
                    .get(url.clone())
                    .query(&q)
                    .header("Metadata", "true")
            }
        };
        let resp = req.send().await.map_err(|e| {
            fail(match crate::fetch::tls_cause(&e) {
                Some(cause) => cause,
                None => "the endpoint could not be reached".into(),
            })
        })?;
        let status = resp.status();
        // 429 and 503 may say when to ask again (IMDS does, when its limit is reached).
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<i64>().ok());
        let body = crate::fetch::read_limited(resp, 64 * 1024)
            .await
            .map_err(|_| fail("the answer could not be read".into()))?;
        if !status.is_success() {
            // The body may echo request details; only the status and the OAuth error code
            // (RFC 6749 §5.2: a short ASCII token, checked as such) go to the log.
            let code = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("error").and_then(|e| e.as_str().map(String::from)))
                .filter(|c| {
                    (1..=64).contains(&c.len())
                        && c.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                })
                .map(|c| format!(" ({c})"))
                .unwrap_or_default();
            let mut f = fail(format!("answered HTTP {}{code}", status.as_u16()));
            f.retry_after = retry_after;
            return Err(f);
        }
        parse_token(&body, now_secs()).map_err(fail)
    }
}

/// A failed fetch, and how long the endpoint asked the gate to wait.
struct Failure {
    error: IdentityError,
    retry_after: Option<i64>,
}

/// A number that the identity endpoints write as a JSON number or a string.
fn seconds(v: Option<&serde_json::Value>) -> Option<i64> {
    match v? {
        serde_json::Value::Number(n) => n.as_i64(),
        serde_json::Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// The token and its lifetime from an answer of any of the endpoints: Entra ID and IMDS give
/// `expires_in` (seconds, IMDS as a string), App Service gives `expires_on` (Unix seconds).
fn parse_token(body: &[u8], now: i64) -> Result<(Secret, i64), String> {
    let v: serde_json::Value =
        serde_json::from_slice(body).map_err(|_| "the answer is not JSON".to_string())?;
    let token = v
        .get("access_token")
        .and_then(|t| t.as_str())
        .filter(|t| !t.is_empty())
        .ok_or("the answer has no access_token")?;
    // Checked arithmetic: the numbers are the endpoint's, and may be anything.
    let lifetime = match seconds(v.get("expires_in")) {
        Some(s) => Some(s),
        None => seconds(v.get("expires_on")).and_then(|at| at.checked_sub(now)),
    }
    .ok_or("the answer says neither expires_in nor expires_on (or an impossible one)")?;
    if lifetime <= 0 {
        return Err("the answer's token has already expired".into());
    }
    // A token must be usable as it is sent: printable ASCII (it goes into a header).
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("the answer's access_token is not printable ASCII".into());
    }
    Ok((
        Secret::new(token.to_string()),
        lifetime.min(MAX_LIFETIME_SECS),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_of_every_endpoint_are_read() {
        // Entra ID (number), IMDS (strings), App Service (expires_on only).
        let (t, life) = parse_token(br#"{"access_token":"a","expires_in":3599}"#, 0).unwrap();
        assert_eq!((t.expose(), life), ("a", 3599));
        let (_, life) = parse_token(
            br#"{"access_token":"b","expires_in":"86399","expires_on":"9"}"#,
            0,
        )
        .unwrap();
        assert_eq!(life, 86399);
        let (_, life) = parse_token(br#"{"access_token":"c","expires_on":"1000"}"#, 400).unwrap();
        assert_eq!(life, 600);
        for bad in [
            &br#"{"expires_in":5}"#[..],
            br#"{"access_token":"","expires_in":5}"#,
            br#"{"access_token":"d"}"#,
            br#"{"access_token":"e","expires_on":"10"}"#,
            br#"{"access_token":"a\r\nX: y","expires_in":5}"#,
            b"not json",
        ] {
            assert!(parse_token(bad, 100).is_err());
        }
    }

    #[tokio::test]
    async fn a_late_older_answer_does_not_replace_a_newer_token() {
        // The endpoint is never asked here: only what is kept is.
        let id = Identity::from_env(None).unwrap();
        let mut held = Tokens::default();
        let now = now_secs();
        let newer = Ok((Secret::new("newer".into()), now + 3600));
        id.settle(&mut held, "r", newer).unwrap();
        let older = Ok((Secret::new("older".into()), now + 1800));
        let (kept, _) = id.settle(&mut held, "r", older).unwrap();
        assert_eq!(kept.expose(), "newer");
        // An answer whose token expired while it waited to be kept is not kept.
        let stale = Ok((Secret::new("stale".into()), now - 1));
        assert!(id.settle(&mut held, "s", stale).is_err());
        assert!(!held.held.contains_key("s"));
    }

    #[test]
    fn endpoints_are_https_or_local() {
        assert!(endpoint_url("x", "https://login.microsoftonline.com/").is_ok());
        assert!(endpoint_url("x", "http://169.254.169.254").is_ok());
        assert!(endpoint_url("x", "http://127.0.0.1:4000/msi/token").is_ok());
        assert!(endpoint_url("x", "http://localhost:4000/msi/token").is_ok());
        assert!(endpoint_url("x", "http://login.example.com/").is_err());
        assert!(endpoint_url("x", "ftp://127.0.0.1/").is_err());
    }
}
