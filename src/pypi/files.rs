//! A file and its `.metadata` (PEP 658): decided, fetched through the one verified download
//! path, served from the cache only as the pinned bytes; METADATA read from the wheel itself.

use super::pins::pin_key;
use super::service::Pypi;
use super::upstream::UpstreamError;
use super::wheel;
use super::{METADATA, PINS};
use crate::audit::AuditEvent;
pub use crate::conn::Client;
use crate::error::ApiError;
use crate::fetch::{file_headers, Failure, Job};
pub use crate::loader::LoadedPolicy;
use crate::policy::decide::{self, Decision, Pin};
use crate::policy::filename::DistKind;
use crate::policy::{DistFilename, ProjectName, ProjectRules, Sha256};
use crate::store::cache::now_secs;
use axum::body::Body;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::Response;
use reqwest::Url;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

/// METADATA extractions run at once.
pub(super) const MAX_EXTRACTIONS: usize = 4;

/// Marks a wheel whose METADATA could not be read (the reason follows) in the METADATA table.
pub(super) const METADATA_FAILED: &str = "!";

impl Pypi {
    /// Decides a file request. Returns the decision's rules and the parsed filename.
    pub(super) async fn decide_file_request<'p>(
        &self,
        lp: &'p LoadedPolicy,
        project: &ProjectName,
        sha: &Sha256,
        filename: &str,
        action: &'static str,
        client: &Client,
    ) -> Result<(&'p ProjectRules, DistFilename), ApiError> {
        let rules = match decide::decide_project(&lp.policy, project) {
            Ok(r) => r,
            Err(reason) => {
                return Err(self
                    .deny(action, project, Some((filename, sha)), reason, client)
                    .await)
            }
        };
        let dist = DistFilename::parse(filename, project)
            .map_err(|e| ApiError::NotFound(e.to_string()))?;
        let pin: Option<Pin> = if decide::release_rule_matches(rules, &dist) {
            self.store.get(PINS, &pin_key(project, filename))?
        } else {
            None
        };
        let provenance = self.provenance_of(lp, rules, &dist, sha)?;
        let facts = decide::Facts {
            pin: pin.as_ref(),
            provenance: provenance.as_ref(),
        };
        match decide::decide_file(
            &lp.policy,
            rules,
            self.wheels_only,
            &dist,
            sha,
            facts,
            now_secs(),
        ) {
            Decision::Allow(a) => {
                self.audit(action, project, Some((filename, sha)), Ok(&a), client)
                    .await;
                if let Some(p) = pin {
                    self.touch_pin(project, filename, p).await;
                }
                Ok((rules, dist))
            }
            Decision::Deny(reason) => Err(self
                .deny(action, project, Some((filename, sha)), reason, client)
                .await),
        }
    }

    /// `GET/HEAD /files/{project}/{sha256}/{filename}`.
    #[allow(clippy::too_many_arguments)]
    pub async fn file(
        self: &Arc<Self>,
        ask: &crate::Ask<'_>,
        project: &ProjectName,
        sha: Sha256,
        filename: &str,
    ) -> Result<Response, ApiError> {
        let (lp, head, headers, client) = (ask.policy, ask.head, ask.headers, ask.client);
        let (rules, _) = self
            .decide_file_request(lp, project, &sha, filename, "pypi.file", client)
            .await?;
        if let Some(size) = self.fetcher.cached(&sha).await {
            // Cached bytes are served only under the name they were verified as: otherwise a
            // pinned sdist could be fetched under a wheel's name past `wheels_only`.
            if !self.cache.verified_as(&sha, filename) {
                return Err(ApiError::NotFound(format!(
                    "{filename} is not the file with sha256 {sha}"
                )));
            }
            self.metrics.cache_hits.fetch_add(1, Relaxed);
            return self
                .fetcher
                .serve_cached(&sha, size, head, headers, "application/octet-stream", &[])
                .await;
        }
        self.metrics.cache_misses.fetch_add(1, Relaxed);
        let (url, size) = self.locate(rules, project, &sha, filename).await?;
        if head {
            let mut resp = Response::builder().status(StatusCode::OK);
            if let Some(s) = size {
                resp = resp.header(header::CONTENT_LENGTH, s);
            }
            return file_headers(resp, &sha, "application/octet-stream")
                .body(Body::empty())
                .map_err(|e| ApiError::Internal(e.to_string()));
        }
        let job = self.job(rules, project, sha, filename, url, size, client)?;
        self.fetcher
            .serve_missing(sha, job, headers, "application/octet-stream", &[])
            .await
    }

    /// The download of one file from the project's index, as a fetcher job.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn job(
        &self,
        rules: &ProjectRules,
        project: &ProjectName,
        sha: Sha256,
        filename: &str,
        url: Url,
        size: Option<u64>,
        client: &Client,
    ) -> Result<impl Fn() -> Job, ApiError> {
        let client = client.0.clone();
        let upstream =
            self.upstreams.get(&rules.index).cloned().ok_or_else(|| {
                ApiError::Internal(format!("index {} not configured", rules.index))
            })?;
        let project = project.to_string();
        let filename = filename.to_string();
        Ok(move || {
            let up = upstream.clone();
            let url = url.clone();
            let name = filename.clone();
            Job {
                sha,
                name: filename.clone(),
                size,
                open: Box::pin(async move {
                    up.open_file(&url).await.map_err(|e| match e {
                        UpstreamError::NotFound => Failure::BadUpstream(format!(
                            "the upstream index lists {name} but does not serve it"
                        )),
                        // Where a redirect tried to go is logged, not told to the client.
                        UpstreamError::Redirect(index, detail) => {
                            tracing::warn!(%index, %detail, "file redirect refused");
                            Failure::BadUpstream(format!("the upstream index {index} redirected {name} where the gate does not follow"))
                        }
                        e @ UpstreamError::Tls(..) => Failure::BadUpstream(e.to_string()),
                        e => Failure::Unavailable(e.to_string()),
                    })
                }),
                mismatch: AuditEvent::about(
                    "pypi.file",
                    project.clone(),
                    Some(filename.clone()),
                    Some(sha.hex()),
                    &client,
                ),
            }
        })
    }

    /// Where the upstream has this file now, and its expected size.
    pub(super) async fn locate(
        &self,
        rules: &ProjectRules,
        project: &ProjectName,
        sha: &Sha256,
        filename: &str,
    ) -> Result<(Url, Option<u64>), ApiError> {
        let (page, _) = self.page(rules, project).await?;
        let f = page
            .files
            .iter()
            .find(|f| f.filename == filename)
            .ok_or_else(|| {
                ApiError::NotFound(format!(
                    "{filename} is pinned but the upstream index lists no link to it that the gate follows (not listed, or its link was refused: another host, port or credentials; see the gate's log)"
                ))
            })?;
        if let Some(declared) = f.sha256.as_deref() {
            if declared != sha.hex() {
                return Err(ApiError::BadUpstream(format!(
                    "the upstream index now declares sha256 {declared} for {filename}; the pinned bytes ({sha}) are not available upstream"
                )));
            }
        }
        let url = Url::parse(&f.url).map_err(|e| ApiError::Internal(e.to_string()))?;
        Ok((url, f.size))
    }

    /// `….metadata` (PEP 658): the METADATA file of the verified wheel, never upstream bytes.
    pub async fn metadata(
        self: &Arc<Self>,
        ask: &crate::Ask<'_>,
        project: &ProjectName,
        sha: Sha256,
        wheel_name: &str,
    ) -> Result<Response, ApiError> {
        let (lp, head, client) = (ask.policy, ask.head, ask.client);
        let (rules, dist) = self
            .decide_file_request(lp, project, &sha, wheel_name, "pypi.metadata", client)
            .await?;
        if dist.kind != DistKind::Wheel {
            return Err(ApiError::NotFound(
                "core metadata is served for wheels only".into(),
            ));
        }
        let known: Option<String> = self.store.get(METADATA, &sha.hex())?;
        // A wheel whose METADATA could not be read says so again, without reading it again.
        if let Some(why) = known
            .as_deref()
            .and_then(|m| m.strip_prefix(METADATA_FAILED))
        {
            return Err(ApiError::BadUpstream(format!("{wheel_name}: {why}")));
        }
        if let Some(md) = known.and_then(|m| Sha256::parse(&m).ok()) {
            if let Some(size) = self.fetcher.cached(&md).await {
                return self
                    .fetcher
                    .serve_cached(
                        &md,
                        size,
                        head,
                        &HeaderMap::new(),
                        "text/plain; charset=utf-8",
                        &[],
                    )
                    .await;
            }
        }
        // The wheel must be verified and cached first.
        if self.fetcher.cached(&sha).await.is_none() {
            let (url, size) = self.locate(rules, project, &sha, wheel_name).await?;
            let job = self.job(rules, project, sha, wheel_name, url, size, client)?;
            self.fetcher.ensure_cached(sha, job).await?;
        }
        let path = self.cache.path(&sha);
        let (p2, v2) = (project.clone(), dist.version.clone());
        let _slot = self
            .extractions
            .acquire()
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        let extracted = tokio::task::spawn_blocking(move || {
            crate::store::cache::open_cached(&path, None)
                .map_err(wheel::WheelError::from)
                .and_then(|f| wheel::extract_metadata(std::io::BufReader::new(f), &p2, &v2))
        })
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
        let bytes = match extracted {
            Ok(b) => b,
            // A wheel that ends early or whose deflate stream is corrupt is the wheel's fault
            // (its bytes are the pinned ones); any other I/O error is the gate's.
            Err(wheel::WheelError::Io(e))
                if !matches!(
                    e.kind(),
                    std::io::ErrorKind::UnexpectedEof
                        | std::io::ErrorKind::InvalidData
                        | std::io::ErrorKind::InvalidInput
                ) =>
            {
                return Err(ApiError::Internal(e.to_string()))
            }
            Err(e) => {
                // The wheel's bytes are pinned: what failed once fails for good. Remembered,
                // so a bad wheel costs one extraction, not one per request, and its listing
                // stops advertising core metadata.
                let store = self.store.clone();
                let (k, v) = (sha.hex(), format!("{METADATA_FAILED}{e}"));
                tokio::task::spawn_blocking(move || store.put(METADATA, &k, &v))
                    .await
                    .map_err(|e| ApiError::Internal(e.to_string()))??;
                self.pins_gen.fetch_add(1, Relaxed);
                return Err(ApiError::BadUpstream(format!("{wheel_name}: {e}")));
            }
        };
        let md_sha = Sha256::of(&bytes);
        let cached = self.cache.commit_bytes(md_sha, &bytes).await?;
        if cached {
            let store = self.store.clone();
            let (k, v) = (sha.hex(), md_sha.hex());
            tokio::task::spawn_blocking(move || store.put(METADATA, &k, &v))
                .await
                .map_err(|e| ApiError::Internal(e.to_string()))??;
            self.pins_gen.fetch_add(1, Relaxed);
        }
        let len = bytes.len();
        let b = file_headers(
            Response::builder()
                .status(StatusCode::OK)
                .header(header::CONTENT_LENGTH, len),
            &md_sha,
            "text/plain; charset=utf-8",
        );
        b.body(if head {
            Body::empty()
        } else {
            Body::from(bytes)
        })
        .map_err(|e| ApiError::Internal(e.to_string()))
    }
}
