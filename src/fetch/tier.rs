//! The shared tier behind the local cache (`[cache] url` on an object store): what the fetcher
//! reads from it, writes to it, and does when it lies.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use axum::http::{header, HeaderMap, HeaderName};
use axum::response::Response;

use super::{Fetcher, Job};
use crate::error::ApiError;
use crate::policy::Sha256;

impl Fetcher {
    /// Serves a file that is not on the local disk. A Range request for it, with a shared
    /// object store configured, is served from the local copy once a whole verified read put it
    /// there (a range of unverified bytes is never sent); any other request streams as it is
    /// verified.
    pub async fn serve_missing(
        self: &Arc<Self>,
        sha: Sha256,
        job: impl Fn() -> Job,
        headers: &HeaderMap,
        content_type: &'static str,
        extra: &[(HeaderName, String)],
    ) -> Result<Response, ApiError> {
        if self.remote.is_some() && headers.contains_key(header::RANGE) {
            let size = self.ensure_cached(sha, job).await?;
            return self
                .serve_cached(&sha, size, false, headers, content_type, extra)
                .await;
        }
        self.fetch_and_serve(sha, job, content_type, extra).await
    }

    /// The shared object store's copy of `sha`, when it has one of the expected length.
    pub(super) async fn remote_copy(
        &self,
        sha: &Sha256,
        size: Option<u64>,
    ) -> Option<crate::store::remote::Object> {
        let remote = self.remote.as_ref()?;
        match remote.get(sha).await {
            Ok(Some(obj)) if size.is_none_or(|s| s == obj.len) => {
                self.metrics.remote_hits.fetch_add(1, Relaxed);
                Some(obj)
            }
            Ok(Some(obj)) => {
                // Another length than the listing or manifest declared: not these bytes.
                self.remote_tampered(
                    sha,
                    None,
                    format!("its length is {} bytes, not {}", obj.len, size.unwrap_or(0)),
                )
                .await;
                None
            }
            Ok(None) => None,
            Err(e) => {
                self.metrics.remote_failures.fetch_add(1, Relaxed);
                tracing::warn!(remote = %remote.shown, error = %e, "shared cache could not be read; fetching from the upstream");
                None
            }
        }
    }

    /// An object of the shared store whose bytes are not what its name says: removed from the
    /// store, audited and counted, as a lying upstream is.
    pub(super) async fn remote_tampered(&self, sha: &Sha256, actual: Option<Sha256>, why: String) {
        self.metrics.remote_tampered.fetch_add(1, Relaxed);
        let Some(remote) = &self.remote else { return };
        tracing::error!(%sha, remote = %remote.shown, problem = %why, "an object in the shared cache does not match its sha256; removed, never served whole");
        self.audit
            .record(super::cache_verify(
                sha,
                actual,
                "remote_cache_tampered",
                format!("the shared cache {} held bytes that do not match their sha256 ({why}); removed, fetched again from the upstream when asked for", remote.shown),
            ))
            .await;
        if let Err(e) = remote.delete(sha).await {
            tracing::error!(%sha, error = %e, "the damaged object could not be removed from the shared cache");
        }
    }

    /// Writes a verified cached file to the shared object store, in the background.
    pub(super) fn share(&self, sha: Sha256) {
        let Some(remote) = self.remote.clone() else {
            return;
        };
        let path = self.cache.path(&sha);
        let metrics = self.metrics.clone();
        tokio::spawn(async move {
            match remote.put_file(&sha, &path).await {
                Ok(()) => {
                    metrics.remote_stored.fetch_add(1, Relaxed);
                }
                Err(e) => {
                    metrics.remote_failures.fetch_add(1, Relaxed);
                    tracing::warn!(%sha, remote = %remote.shown, error = %e, "verified file could not be written to the shared cache");
                }
            }
        });
    }
}
