//! The client for one upstream simple index. It fetches and never decides.
//!
//! Redirects are followed by hand so that credentials go only to the index's own origin and a
//! file redirect can only land on a configured file host.

use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::header::{ACCEPT, CONTENT_TYPE};
use reqwest::{StatusCode, Url};

use super::page::{check_file_url, parse_html, parse_json, resolve_links, PageError, UpstreamFile};
use crate::config::{IndexConfig, Secret};
pub use crate::fetch::{read_limited, ReadError};
use crate::metrics::{self, Metrics};
use crate::policy::ProjectName;

/// What the gate asks for: JSON first, HTML as the fallback (PEP 691).
const PAGE_ACCEPT: &str = "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html;q=0.2, text/html;q=0.1";
use crate::fetch::identity::{Identity, IdentityError, AZURE_DEVOPS_RESOURCE};
use crate::fetch::{redirect_target, tls_cause, MAX_REDIRECTS};

#[derive(Debug, Clone, thiserror::Error)]
pub enum UpstreamError {
    #[error("upstream index {0} could not be reached")]
    Unreachable(String),
    #[error("upstream index {0}: {1}")]
    Tls(String, String),
    /// No token from the managed identity: the request is not sent (never anonymously).
    /// The cause (endpoint, tenant, paths) is logged where it is found, not told to clients.
    #[error("upstream index {0}: no token from the gate's managed identity; try again shortly")]
    Identity(String, IdentityError),
    #[error("upstream index {0} answered HTTP {1}")]
    Status(String, u16),
    #[error("upstream index {0} refused the gate's credentials")]
    Auth(String),
    #[error("upstream index {0} sent a page larger than limits.page_bytes")]
    TooLarge(String),
    #[error("upstream index {0}: {1}")]
    Page(String, PageError),
    #[error("upstream index {0} redirected where the gate does not follow: {1}")]
    Redirect(String, String),
    #[error("not found upstream")]
    NotFound,
    #[error("upstream index {0} lists {1} files for this project, more than max_files_per_page ({2}): the page is refused")]
    TooManyFiles(String, usize, usize),
}

pub struct Upstream {
    pub cfg: IndexConfig,
    client: reqwest::Client,
    /// `auth = "managed-identity"`: where its bearer tokens come from.
    identity: Option<std::sync::Arc<Identity>>,
    page_limit: u64,
    max_files: usize,
    metrics: Arc<Metrics>,
}

impl Upstream {
    pub fn new(
        cfg: IndexConfig,
        page_limit: u64,
        max_files: usize,
        timeout: Duration,
        metrics: Arc<Metrics>,
    ) -> Result<Upstream, String> {
        // The index and its file hosts are the operator's: they may be private; the client
        // reaches nothing else (links and redirects are checked against them first).
        let private_ok: Vec<String> = std::iter::once(cfg.url.host_str().unwrap_or_default())
            .chain(cfg.file_hosts.iter().map(|h| h.host.as_str()))
            .map(str::to_ascii_lowercase)
            .collect();
        let client = crate::fetch::http_client(
            &format!("index {}", cfg.name),
            cfg.ca_file.as_deref(),
            timeout,
            private_ok,
        )?;
        let identity = Identity::of_upstream(
            &format!("index {}", cfg.name),
            cfg.managed_identity.as_ref(),
        )?;
        Ok(Upstream {
            cfg,
            client,
            identity,
            page_limit,
            max_files,
            metrics,
        })
    }

    /// A GET with the index's credentials when `url` is on the index's own origin: never to a
    /// file host elsewhere, never along a redirect to another origin. A managed identity that
    /// gives no token fails the request: it is never sent without one.
    async fn request(
        &self,
        url: &Url,
        accept: Option<&str>,
    ) -> Result<(reqwest::RequestBuilder, Option<Secret>), UpstreamError> {
        let mut r = self.client.get(url.clone());
        if let Some(a) = accept {
            r = r.header(ACCEPT, a);
        }
        if url.origin() == self.cfg.url.origin() {
            if let Some(id) = &self.identity {
                // Azure Artifacts takes an Entra ID token for Azure DevOps as a bearer token.
                // The identity logs why it has none, once per fetch.
                let token = id
                    .token(AZURE_DEVOPS_RESOURCE)
                    .await
                    .map_err(|e| UpstreamError::Identity(self.cfg.name.clone(), e))?;
                r = r.bearer_auth(token.expose());
                return Ok((r, Some(token)));
            } else if let (Some(u), Some(p)) = (&self.cfg.username, &self.cfg.password) {
                r = r.basic_auth(u, Some(p.expose()));
            }
        }
        Ok((r, None))
    }

    /// Sends a GET, following up to five redirects that `allowed` accepts.
    async fn get(
        &self,
        mut url: Url,
        accept: Option<&str>,
        kind: metrics::Upstream,
        allowed: impl Fn(&Url) -> Result<(), String>,
    ) -> Result<reqwest::Response, UpstreamError> {
        let name = self.cfg.name.clone();
        // A managed identity's token refused once is replaced and the request sent again
        // (it may have been revoked, or the identity's rights changed since it was issued).
        let mut renewed = false;
        let mut hops = 0;
        while hops <= MAX_REDIRECTS {
            hops += 1;
            let started = Instant::now();
            let (req, token) = self.request(&url, accept).await?;
            let resp = match req.send().await {
                Ok(r) => r,
                Err(e) => {
                    self.metrics.upstream(kind, started.elapsed(), false);
                    if let Some(cause) = tls_cause(&e) {
                        tracing::warn!(index = %name, url = %safe(&url), %cause, "upstream TLS failed");
                        return Err(UpstreamError::Tls(name, cause));
                    }
                    tracing::warn!(index = %name, url = %safe(&url), error = %e, "upstream request failed");
                    return Err(UpstreamError::Unreachable(name));
                }
            };
            let status = resp.status();
            self.metrics.upstream(
                kind,
                started.elapsed(),
                status.is_success() || status == StatusCode::NOT_FOUND || status.is_redirection(),
            );
            if status == StatusCode::UNAUTHORIZED
                && !renewed
                && url.origin() == self.cfg.url.origin()
            {
                if let (Some(id), Some(token)) = (&self.identity, &token) {
                    tracing::warn!(index = %name, "upstream refused the managed identity's token; fetching a new one");
                    id.forget(AZURE_DEVOPS_RESOURCE, token).await;
                    renewed = true;
                    hops -= 1;
                    continue;
                }
            }
            if status.is_success() {
                if let (Some(id), Some(token)) = (&self.identity, &token) {
                    id.accepted(AZURE_DEVOPS_RESOURCE, token).await;
                }
            }
            if status.is_redirection() {
                let next = redirect_target(&resp, &url)
                    .map_err(|e| UpstreamError::Redirect(name.clone(), e))?;
                allowed(&next).map_err(|e| UpstreamError::Redirect(name.clone(), e))?;
                url = next;
                continue;
            }
            return match status {
                s if s.is_success() => Ok(resp),
                StatusCode::NOT_FOUND | StatusCode::GONE => Err(UpstreamError::NotFound),
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Err(UpstreamError::Auth(name)),
                s => Err(UpstreamError::Status(name, s.as_u16())),
            };
        }
        Err(UpstreamError::Redirect(name, "too many redirects".into()))
    }

    /// Fetches and parses a project's page. A project the upstream does not know has no files.
    pub async fn fetch_page(
        &self,
        project: &ProjectName,
    ) -> Result<Vec<UpstreamFile>, UpstreamError> {
        let name = self.cfg.name.clone();
        let url = self
            .cfg
            .url
            .join(&format!("{project}/"))
            .map_err(|_| UpstreamError::Unreachable(name.clone()))?;
        let origin = self.cfg.url.origin();
        let resp = match self
            .get(
                url.clone(),
                Some(PAGE_ACCEPT),
                metrics::Upstream::Page,
                |u| {
                    if u.origin() == origin {
                        Ok(())
                    } else {
                        Err(format!(
                            "page redirect to another origin ({})",
                            u.host_str().unwrap_or("")
                        ))
                    }
                },
            )
            .await
        {
            Ok(r) => r,
            Err(UpstreamError::NotFound) => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let final_url = resp.url().clone();
        let is_json = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.contains("json"));
        let body = read_limited(resp, self.page_limit)
            .await
            .map_err(|e| match e {
                ReadError::TooLarge => UpstreamError::TooLarge(name.clone()),
                ReadError::Broken => UpstreamError::Unreachable(name.clone()),
            })?;
        let (links, base) = if is_json {
            let (l, _) = parse_json(&body).map_err(|e| UpstreamError::Page(name.clone(), e))?;
            (l, None)
        } else {
            let text = std::str::from_utf8(&body).map_err(|_| {
                UpstreamError::Page(
                    name.clone(),
                    PageError::Malformed("HTML is not UTF-8".into()),
                )
            })?;
            parse_html(text)
        };
        // Counted before anything is resolved, pinned or kept: the page's bytes are bounded by
        // page_bytes, what the gate keeps from it by this.
        if links.len() > self.max_files {
            return Err(UpstreamError::TooManyFiles(
                name,
                links.len(),
                self.max_files,
            ));
        }
        let (files, problems) =
            resolve_links(links, &final_url, base.as_deref(), &self.cfg.file_hosts);
        for p in problems {
            tracing::warn!(index = %name, %project, problem = %p, "upstream link dropped");
        }
        Ok(files)
    }

    /// Where the index's Integrity API keeps a file's provenance (PEP 740, warehouse's
    /// `integrity.provenance` route): `<origin>/integrity/<project>/<version>/<filename>/provenance`.
    pub fn integrity_url(
        &self,
        project: &ProjectName,
        version: &str,
        filename: &str,
    ) -> Option<Url> {
        let mut u = Url::parse(&self.cfg.url.origin().ascii_serialization()).ok()?;
        u.path_segments_mut().ok()?.extend([
            "integrity",
            project.as_str(),
            version,
            filename,
            "provenance",
        ]);
        Some(u)
    }

    /// Fetches a file's provenance object. `Ok(None)`: the index has none (404). The URL and
    /// every redirect stay on the index's origin or its file hosts; the body is bounded.
    pub async fn fetch_provenance(&self, url: &Url) -> Result<Option<Vec<u8>>, UpstreamError> {
        let origin = self.cfg.url.origin();
        let hosts = self.cfg.file_hosts.clone();
        let allowed = move |u: &Url| {
            if u.origin() == origin {
                Ok(())
            } else {
                check_file_url(u, &hosts)
            }
        };
        allowed(url).map_err(|e| UpstreamError::Redirect(self.cfg.name.clone(), e))?;
        let resp = match self
            .get(
                url.clone(),
                Some("application/vnd.pypi.integrity.v1+json, application/json;q=0.9"),
                metrics::Upstream::Page,
                allowed,
            )
            .await
        {
            Ok(r) => r,
            Err(UpstreamError::NotFound) => return Ok(None),
            Err(e) => return Err(e),
        };
        let limit = crate::verify::pep740::MAX_PROVENANCE_BYTES as u64;
        read_limited(resp, limit)
            .await
            .map(|b| Some(b.to_vec()))
            .map_err(|e| match e {
                ReadError::TooLarge => UpstreamError::TooLarge(self.cfg.name.clone()),
                ReadError::Broken => UpstreamError::Unreachable(self.cfg.name.clone()),
            })
    }

    /// Opens a file download; redirects may only go to configured file hosts.
    pub async fn open_file(&self, url: &Url) -> Result<reqwest::Response, UpstreamError> {
        check_file_url(url, &self.cfg.file_hosts)
            .map_err(|e| UpstreamError::Redirect(self.cfg.name.clone(), e))?;
        let hosts = self.cfg.file_hosts.clone();
        self.get(url.clone(), None, metrics::Upstream::File, move |u| {
            check_file_url(u, &hosts)
        })
        .await
    }
}

/// A URL for logs: no credentials, no query (signed URLs carry tokens there).
/// [`safe`] of a URL given as text (unparseable: not shown).
pub fn safe_str(url: &str) -> String {
    Url::parse(url).map_or_else(|_| "(unparseable URL)".into(), |u| safe(&u))
}

pub fn safe(url: &Url) -> String {
    let mut u = url.clone();
    let _ = u.set_username("");
    let _ = u.set_password(None);
    u.set_query(None);
    u.to_string()
}
