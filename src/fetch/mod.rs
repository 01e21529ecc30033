//! Verified fetching, shared by the index and the pull gate: one upstream download per digest,
//! streamed to the first client while it is hashed, committed to the cache only on a match, and
//! serving of cached, verified bytes (with Range).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use futures_util::StreamExt;
use sha2::Digest as _;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, watch};

use crate::audit::{Audit, AuditEvent};
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::policy::Sha256;
use crate::store::remote::Remote;
use crate::store::Cache;

mod flight;
mod http;
pub mod identity;
mod scrub;
mod tier;
use flight::{send_paced, wait_download};
pub use http::{
    http_client, install_crypto_provider, ip_is_private, redirect_target, tls_cause, MAX_REDIRECTS,
};

/// How long the shared download waits for the first client to take a chunk.
const CLIENT_SEND_TIMEOUT: Duration = Duration::from_secs(30);
/// The same, while other requests wait for the download: a client that paces it (reads slowly,
/// on purpose or not) must not hold everyone else's copy of the file.
const CLIENT_SEND_TIMEOUT_SHARED: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, PartialEq)]
pub enum Download {
    Running,
    Done,
    Failed(Failure),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Failure {
    /// The upstream could not be reached or broke off: 503.
    Unavailable(String),
    /// The upstream sent something other than it declared: 502.
    BadUpstream(String),
}

impl From<Failure> for ApiError {
    fn from(f: Failure) -> Self {
        match f {
            Failure::Unavailable(m) => ApiError::Unavailable(m),
            Failure::BadUpstream(m) => ApiError::BadUpstream(m),
        }
    }
}

pub type Opener = Pin<Box<dyn Future<Output = Result<reqwest::Response, Failure>> + Send>>;

/// One download: what to fetch and what the bytes must hash to.
pub struct Job {
    pub sha: Sha256,
    /// A filename or digest, for messages and the cache record.
    pub name: String,
    /// The size the upstream's listing or manifest declared, if any.
    pub size: Option<u64>,
    pub open: Opener,
    /// Recorded (as a deny) if the bytes do not match.
    pub mismatch: AuditEvent,
}

type Body1 = mpsc::Sender<Result<Bytes, std::io::Error>>;
/// A started download: its response head (length or failure) and its final state.
type Started = (
    oneshot::Receiver<Result<Option<u64>, Failure>>,
    watch::Receiver<Download>,
);

pub struct Fetcher {
    pub cache: Arc<Cache>,
    metrics: Arc<Metrics>,
    audit: Audit,
    cache_max_bytes: u64,
    downloads: Mutex<HashMap<Sha256, watch::Receiver<Download>>>,
    /// `[cache] url` on an object store: the tier the replicas share, behind the local disk.
    remote: Option<Arc<Remote>>,
}

use crate::sync::lock;

impl Fetcher {
    pub fn new(
        cache: Arc<Cache>,
        metrics: Arc<Metrics>,
        audit: Audit,
        cache_max_bytes: u64,
    ) -> Fetcher {
        Fetcher {
            cache,
            metrics,
            audit,
            cache_max_bytes,
            downloads: Mutex::default(),
            remote: None,
        }
    }

    /// Puts a shared object store behind the local cache: files missing on the local disk are
    /// read from it (hashed as they stream out), and verified downloads are written to it.
    pub fn with_remote(mut self, remote: Option<Arc<Remote>>) -> Fetcher {
        self.remote = remote;
        self
    }

    /// Streams `sha` to the client: joins a running download (then serves from the cache) or
    /// starts one. `job` builds the download when one has to start; its `mismatch` event names
    /// this request's client.
    pub async fn fetch_and_serve(
        self: &Arc<Self>,
        sha: Sha256,
        job: impl Fn() -> Job,
        content_type: &'static str,
        extra: &[(HeaderName, String)],
    ) -> Result<Response, ApiError> {
        let mut retried = false;
        loop {
            let existing = lock(&self.downloads).get(&sha).cloned();
            if let Some(rx) = existing {
                match wait_download(rx).await {
                    Ok(()) => {
                        if let Some(sz) = self.cache.lookup(&sha) {
                            return self
                                .serve_cached(
                                    &sha,
                                    sz,
                                    false,
                                    &HeaderMap::new(),
                                    content_type,
                                    extra,
                                )
                                .await;
                        }
                        // Verified but not cacheable (quota, disk): fetch again for this client.
                    }
                    // Another request's download may have gone through another registry or
                    // mirror that is down; retry once with this request's own source.
                    Err(Failure::Unavailable(_)) if !retried => retried = true,
                    Err(f) => {
                        // This client is refused too: its own record of the refusal.
                        if let Failure::BadUpstream(m) = &f {
                            self.audit
                                .record(job().mismatch.deny("upstream_rejected", m.clone()))
                                .await;
                        }
                        return Err(f.into());
                    }
                }
            }
            let (body_tx, body_rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(16);
            let Some((head_rx, _)) = self.start(job(), Some(body_tx)) else {
                continue;
            };
            let len = match head_rx.await {
                Ok(Ok(len)) => len,
                Ok(Err(f)) => return Err(f.into()),
                Err(_) => return Err(ApiError::Internal("download task ended early".into())),
            };
            let stream = futures_util::stream::unfold(body_rx, |mut rx| async move {
                rx.recv().await.map(|item| (item, rx))
            });
            let mut resp = Response::builder().status(StatusCode::OK);
            if let Some(l) = len {
                resp = resp.header(header::CONTENT_LENGTH, l);
            }
            let mut resp = file_headers(resp, &sha, content_type);
            for (k, v) in extra {
                resp = resp.header(k, v);
            }
            return resp
                .body(Body::from_stream(stream))
                .map_err(|e| ApiError::Internal(e.to_string()));
        }
    }

    /// Makes sure `sha` is in the cache (downloading it if needed), without a client stream.
    pub async fn ensure_cached(
        self: &Arc<Self>,
        sha: Sha256,
        job: impl Fn() -> Job,
    ) -> Result<u64, ApiError> {
        for _ in 0..2 {
            if let Some(size) = self.cache.lookup(&sha) {
                return Ok(size);
            }
            let existing = lock(&self.downloads).get(&sha).cloned();
            let rx = match existing {
                Some(rx) => rx,
                None => match self.start(job(), None) {
                    Some((_, rx)) => rx,
                    // Started by someone else just now: look again.
                    None => continue,
                },
            };
            return match wait_download(rx).await {
                Ok(()) => self.cache.lookup(&sha).ok_or_else(|| {
                    ApiError::Unavailable("the verified file could not be cached".into())
                }),
                Err(f) => Err(f.into()),
            };
        }
        self.cache
            .lookup(&sha)
            .ok_or_else(|| ApiError::Unavailable("the file could not be cached".into()))
    }

    /// Starts the one download of `job.sha`, unless one is already running (then `None`).
    fn start(self: &Arc<Self>, job: Job, body: Option<Body1>) -> Option<Started> {
        let sha = job.sha;
        let (state_tx, state_rx) = watch::channel(Download::Running);
        {
            let mut d = lock(&self.downloads);
            if d.contains_key(&sha) {
                return None;
            }
            d.insert(sha, state_rx.clone());
        }
        let (head_tx, head_rx) = oneshot::channel();
        let this = self.clone();
        tokio::spawn(async move {
            let result = this.download(job, head_tx, body, &state_tx).await;
            lock(&this.downloads).remove(&sha);
            let _ = state_tx.send(result);
        });
        Some((head_rx, state_rx))
    }

    /// The download itself. The client's copy of the last chunk is held back until the hash is
    /// known: on a mismatch the client receives an error instead, so it never holds a complete
    /// file with the wrong hash, and nothing is cached.
    async fn download(
        &self,
        job: Job,
        head: oneshot::Sender<Result<Option<u64>, Failure>>,
        mut body: Option<Body1>,
        state: &watch::Sender<Download>,
    ) -> Download {
        let Job {
            sha,
            name,
            size,
            open,
            mismatch,
        } = job;
        let fail = |head: oneshot::Sender<Result<Option<u64>, Failure>>, f: Failure| {
            let _ = head.send(Err(f.clone()));
            Download::Failed(f)
        };
        // The shared tier first. Its bytes are hashed like an upstream's; a mismatch there is
        // the tier's fault (removed, audited), not the upstream's.
        let copy = self.remote_copy(&sha, size).await;
        let from_remote = copy.is_some();
        let (declared, mut stream) = match copy {
            Some(obj) => (Some(obj.len), obj.body),
            None => {
                let resp = match open.await {
                    Ok(r) => r,
                    Err(f) => return fail(head, f),
                };
                (
                    resp.content_length(),
                    resp.bytes_stream()
                        .map(|c| c.map_err(std::io::Error::other))
                        .boxed(),
                )
            }
        };
        if let (Some(want), Some(got)) = (size, declared) {
            if want != got {
                tracing::warn!(%name, want, got, "upstream length differs from the declared size");
                let detail = format!("the upstream sent {name} with a length of {got} bytes, but {want} were declared");
                self.audit
                    .record(mismatch.deny("size_mismatch", detail.clone()))
                    .await;
                return fail(head, Failure::BadUpstream(detail));
            }
        }
        let limit = size.or(declared).unwrap_or(self.cache_max_bytes);
        let _ = head.send(Ok(size.or(declared)));

        // Below min_free_disk the file is served (verified) and not kept.
        let mut temp = match self.cache.temp_file().await {
            Ok(t) if !self.cache.room(size.or(declared).unwrap_or(2 << 20)) => {
                let _ = tokio::fs::remove_file(&t.path).await;
                None
            }
            Ok(t) => Some(t),
            Err(e) => {
                tracing::warn!(error = %e, "cannot create a cache temp file; serving without caching");
                self.metrics.cache_store_failures.fetch_add(1, Relaxed);
                None
            }
        };
        let mut hasher = sha2::Sha256::new();
        let mut total = 0u64;
        let mut held: Option<Bytes> = None;
        let mut failure = None;
        while let Some(chunk) = stream.next().await {
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) => {
                    let from = if from_remote {
                        "shared cache"
                    } else {
                        "upstream"
                    };
                    tracing::warn!(%name, error = %e, "{from} transfer broke");
                    failure = Some(Failure::Unavailable(format!(
                        "the {from} transfer of {name} broke off"
                    )));
                    break;
                }
            };
            total += chunk.len() as u64;
            if total > limit {
                // Never read past the declared size: a longer body is a lie.
                failure = Some(Failure::BadUpstream(format!(
                    "the upstream sent more than the {limit} bytes declared for {name}"
                )));
                break;
            }
            hasher.update(&chunk);
            // The disk is looked at again every 64 MiB written: others fill it too.
            if temp.is_some()
                && total / DISK_CHECK_EVERY != (total - chunk.len() as u64) / DISK_CHECK_EVERY
                && !self.cache.room(2 << 20)
            {
                tracing::warn!(%name, "disk nearly full (below min_free_disk): serving without caching");
                if let Some(t) = temp.take() {
                    let _ = tokio::fs::remove_file(&t.path).await;
                }
            }
            if let Some(t) = temp.as_mut() {
                if let Err(e) = t.file.write_all(&chunk).await {
                    tracing::warn!(error = %e, "cache write failed (disk full?); serving without caching");
                    self.metrics.cache_store_failures.fetch_add(1, Relaxed);
                    if let Some(t) = temp.take() {
                        let _ = tokio::fs::remove_file(&t.path).await;
                    }
                }
            }
            if let Some(prev) = held.replace(chunk) {
                if let Some(b) = &body {
                    // A client that left, or reads so slowly that it would hold up the shared
                    // download, is cut loose; the download goes on for the cache and the others.
                    if !send_paced(b, prev, state).await {
                        body = None;
                    }
                }
            }
        }
        if failure.is_none() && size.or(declared).is_some_and(|s| s != total) {
            failure = Some(Failure::BadUpstream(format!(
                "the upstream sent {total} bytes of {name}, fewer than declared"
            )));
        }
        let actual = Sha256::from_bytes(hasher.finalize().into());
        if from_remote {
            // A copy from the shared tier that is longer, shorter or other than its name: the
            // tier lied (a transfer that broke off is only an outage).
            let lie = match &failure {
                Some(Failure::BadUpstream(d)) => Some(d.clone()),
                Some(Failure::Unavailable(_)) => None,
                None if actual != sha => Some(format!("its bytes hash to {actual}")),
                None => None,
            };
            if let Some(why) = lie {
                let hashed = (failure.is_none()).then_some(actual);
                self.remote_tampered(&sha, hashed, why).await;
                failure = Some(Failure::BadUpstream(format!(
                    "the shared cache's copy of {name} was damaged and has been removed; ask again"
                )));
            }
        } else {
            // A body longer or shorter than declared is as much a lie as other bytes.
            if let Some(Failure::BadUpstream(detail)) = &failure {
                self.audit
                    .record(mismatch.clone().deny("size_mismatch", detail.clone()))
                    .await;
            }
            if failure.is_none() && actual != sha {
                let detail = format!(
                    "{name}: the upstream sent bytes with sha256 {actual}, but the pin is {sha}"
                );
                tracing::error!(%name, expected = %sha, actual = %actual, "upstream bytes do not match the pin; not served, not cached");
                self.audit
                    .record(AuditEvent {
                        actual_sha256: Some(actual.hex()),
                        ..mismatch.deny("hash_mismatch", detail.clone())
                    })
                    .await;
                failure = Some(Failure::BadUpstream(detail));
            }
        }
        if let Some(f) = failure {
            // The rejected bytes leave the disk before anyone hears of the failure.
            if let Some(t) = temp {
                drop(t.file);
                let _ = tokio::fs::remove_file(&t.path).await;
            }
            // The error must reach the client's stream (not be dropped on a full buffer), so
            // the response ends in a reset rather than a clean end, chunked or not.
            if let Some(b) = body.take() {
                let err = Err(std::io::Error::other("upstream bytes rejected"));
                let _ = tokio::time::timeout(CLIENT_SEND_TIMEOUT, b.send(err)).await;
            }
            return Download::Failed(f);
        }
        if let Some(t) = temp {
            match self.cache.commit(t, sha, total, Some(&name)).await {
                // Verified bytes from the upstream go to the tier the other replicas read.
                Ok(true) if !from_remote => self.share(sha),
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "could not cache verified bytes");
                    self.metrics.cache_store_failures.fetch_add(1, Relaxed);
                }
            }
        }
        if let (Some(b), Some(last)) = (&body, held) {
            let _ = tokio::time::timeout(CLIENT_SEND_TIMEOUT, b.send(Ok(last))).await;
        }
        Download::Done
    }

    /// The size of a cached file that may be served: bytes on disk are checked again once per
    /// run (someone may have edited `data_dir` while the gate was stopped). Files up to
    /// `VERIFY_FIRST_BYTES` are hashed whole here, so a damaged one is fetched again for this
    /// very request (`None`); larger ones are hashed while they stream (`serve_cached`).
    pub async fn cached(&self, sha: &Sha256) -> Option<u64> {
        let size = self.cache.lookup(sha)?;
        if self.cache.is_verified(sha) || size > VERIFY_FIRST_BYTES {
            return Some(size);
        }
        self.check_cached(sha).await.then_some(size)
    }

    /// Hashes a cached file against its name; a mismatch is evicted, audited and counted.
    pub async fn check_cached(&self, sha: &Sha256) -> bool {
        let path = self.cache.path(sha);
        let actual = tokio::task::spawn_blocking(move || hash_file(&path))
            .await
            .ok()
            .flatten();
        if actual.as_ref() == Some(sha) {
            self.cache.mark_verified(sha);
            return true;
        }
        self.tampered(sha, actual).await;
        false
    }

    pub(super) async fn tampered(&self, sha: &Sha256, actual: Option<Sha256>) {
        self.metrics.cache_tampered.fetch_add(1, Relaxed);
        tracing::error!(%sha, actual = ?actual.map(|a| a.hex()), "a cached file no longer matches its hash; evicted, never served");
        self.audit
            .record(cache_verify(
                sha,
                actual,
                "cache_tampered",
                "the cached bytes no longer match their sha256; evicted and fetched again when asked for".into(),
            ))
            .await;
        self.cache.evict(sha).await;
    }

    /// Serves verified cached bytes, honouring a single `Range: bytes=` (RFC 9110 §14). A file
    /// not yet re-checked in this run is hashed while it streams, its last chunk held back
    /// until the hash matched (a mismatch cuts the response off and evicts it); a range of
    /// such a file is served after a whole check.
    pub async fn serve_cached(
        self: &Arc<Self>,
        sha: &Sha256,
        size: u64,
        head: bool,
        headers: &HeaderMap,
        content_type: &'static str,
        extra: &[(HeaderName, String)],
    ) -> Result<Response, ApiError> {
        let range = headers
            .get(header::RANGE)
            .and_then(|v| v.to_str().ok())
            .and_then(|r| parse_range(r, size));
        let (status, start, len) = match range {
            Some(Ok((s, e))) => (StatusCode::PARTIAL_CONTENT, s, e - s + 1),
            Some(Err(())) => {
                return Response::builder()
                    .status(StatusCode::RANGE_NOT_SATISFIABLE)
                    .header(header::CONTENT_RANGE, format!("bytes */{size}"))
                    .body(Body::empty())
                    .map_err(|e| ApiError::Internal(e.to_string()));
            }
            None => (StatusCode::OK, 0, size),
        };
        let mut b = Response::builder()
            .status(status)
            .header(header::CONTENT_LENGTH, len)
            .header(header::ACCEPT_RANGES, "bytes");
        if status == StatusCode::PARTIAL_CONTENT {
            b = b.header(
                header::CONTENT_RANGE,
                format!("bytes {start}-{}/{size}", start + len - 1),
            );
        }
        let mut b = file_headers(b, sha, content_type);
        for (k, v) in extra {
            b = b.header(k, v);
        }
        if head {
            return b
                .body(Body::empty())
                .map_err(|e| ApiError::Internal(e.to_string()));
        }
        let verified = self.cache.is_verified(sha);
        if !verified && status == StatusCode::PARTIAL_CONTENT && !self.check_cached(sha).await {
            return Err(ApiError::Unavailable(
                "the cached copy was damaged and has been removed; ask again".into(),
            ));
        }
        let path = self.cache.path(sha);
        let opened = tokio::task::spawn_blocking(move || {
            crate::store::cache::open_cached(&path, Some(size))
        })
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
        let mut file = match opened {
            Ok(f) => tokio::fs::File::from_std(f),
            Err(e)
                if e.kind() == std::io::ErrorKind::InvalidData
                    || e.kind() == std::io::ErrorKind::NotFound
                    || e.raw_os_error() == Some(libc::ELOOP) =>
            {
                // Replaced (a link, a FIFO, another length) while the gate ran.
                self.tampered(sha, None).await;
                return Err(ApiError::Unavailable(
                    "the cached copy was damaged and has been removed; ask again".into(),
                ));
            }
            Err(e) => return Err(ApiError::Internal(format!("cached file: {e}"))),
        };
        if start > 0 {
            file.seek(std::io::SeekFrom::Start(start))
                .await
                .map_err(|e| ApiError::Internal(e.to_string()))?;
        }
        self.metrics.cache_bytes_served.fetch_add(len, Relaxed);
        let stream = tokio_util::io::ReaderStream::with_capacity(file.take(len), 512 * 1024);
        if verified || status == StatusCode::PARTIAL_CONTENT {
            return b
                .body(Body::from_stream(stream))
                .map_err(|e| ApiError::Internal(e.to_string()));
        }
        // Hash while streaming; the last chunk waits for the verdict.
        struct Check {
            inner: tokio_util::io::ReaderStream<tokio::io::Take<tokio::fs::File>>,
            hasher: sha2::Sha256,
            held: Option<Bytes>,
            fetcher: Arc<Fetcher>,
            sha: Sha256,
        }
        let check = Check {
            inner: stream,
            hasher: sha2::Sha256::new(),
            held: None,
            fetcher: self.clone(),
            sha: *sha,
        };
        let body = futures_util::stream::unfold(Some(check), |state| async move {
            let mut c = state?;
            loop {
                match c.inner.next().await {
                    Some(Ok(chunk)) => {
                        c.hasher.update(&chunk);
                        if let Some(prev) = c.held.replace(chunk) {
                            return Some((Ok(prev), Some(c)));
                        }
                    }
                    Some(Err(e)) => return Some((Err(e), None)),
                    None => {
                        let actual = Sha256::from_bytes(c.hasher.finalize_reset().into());
                        if actual == c.sha {
                            c.fetcher.cache.mark_verified(&c.sha);
                            return c.held.take().map(|last| (Ok(last), None));
                        }
                        c.fetcher.tampered(&c.sha, Some(actual)).await;
                        return Some((
                            Err(std::io::Error::other(
                                "the cached bytes no longer match their sha256",
                            )),
                            None,
                        ));
                    }
                }
            }
        });
        b.body(Body::from_stream(body))
            .map_err(|e| ApiError::Internal(e.to_string()))
    }
}

/// The audit entry of cached bytes found not to match their name (the local disk, or the
/// shared tier): who found it is the gate itself.
fn cache_verify(sha: &Sha256, actual: Option<Sha256>, reason: &str, detail: String) -> AuditEvent {
    let ev = AuditEvent::about("cache.verify", sha.hex(), None, Some(sha.hex()), "gate");
    AuditEvent {
        actual_sha256: actual.map(|a| a.hex()),
        ..ev.deny(reason, detail)
    }
}

/// Files up to this size are re-hashed whole before their first serve in a run.
const VERIFY_FIRST_BYTES: u64 = 32 << 20;

/// The sha256 of a file's bytes (`None`: unreadable).
pub fn hash_file(path: &std::path::Path) -> Option<Sha256> {
    use std::io::Read;
    let mut f = crate::store::cache::open_cached(path, None).ok()?;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).ok()?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Some(Sha256::from_bytes(h.finalize().into()))
}

pub fn file_headers(
    b: axum::http::response::Builder,
    sha: &Sha256,
    content_type: &'static str,
) -> axum::http::response::Builder {
    b.header(header::CONTENT_TYPE, HeaderValue::from_static(content_type))
        .header(header::ETAG, format!("\"{sha}\""))
        // The URL names the content's hash, so it never changes.
        .header(header::CACHE_CONTROL, "public, max-age=31536000, immutable")
}

/// One `bytes=a-b`, `bytes=a-` or `bytes=-n` range. `None`: no usable single range (serve the
/// whole file, as RFC 9110 permits); `Err`: unsatisfiable (416).
fn parse_range(h: &str, size: u64) -> Option<Result<(u64, u64), ()>> {
    let spec = h.trim().strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    let (a, b) = (a.trim(), b.trim());
    let r = if a.is_empty() {
        let n: u64 = b.parse().ok()?;
        if n == 0 || size == 0 {
            return Some(Err(()));
        }
        (size.saturating_sub(n), size - 1)
    } else {
        let s: u64 = a.parse().ok()?;
        let e: u64 = if b.is_empty() {
            size.saturating_sub(1)
        } else {
            b.parse().ok()?
        };
        if s >= size || e < s {
            return Some(Err(()));
        }
        (s, e.min(size - 1))
    };
    Some(Ok(r))
}

/// How often (in bytes written) a download that is being cached looks at the free disk again.
pub const DISK_CHECK_EVERY: u64 = 64 << 20;

pub enum ReadError {
    TooLarge,
    Broken,
}

/// Reads a body, never past `limit` bytes (nor past a declared Content-Length over it).
pub async fn read_limited(resp: reqwest::Response, limit: u64) -> Result<Vec<u8>, ReadError> {
    if resp.content_length().is_some_and(|l| l > limit) {
        return Err(ReadError::TooLarge);
    }
    let mut out = Vec::new();
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|_| ReadError::Broken)?;
        if out.len() as u64 + chunk.len() as u64 > limit {
            return Err(ReadError::TooLarge);
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::parse_range;

    /// A large cached file (hashed while it streams) edited on disk while the gate was
    /// stopped: the response is cut off before its last byte, the file evicted and counted; an
    /// intact one streams whole and is then trusted.
    #[tokio::test(flavor = "multi_thread")]
    async fn edited_cached_bytes_are_cut_off_before_the_last_chunk() {
        use super::*;
        use http_body_util::BodyExt;
        let dir = tempfile::tempdir().unwrap();
        let data = vec![7u8; (VERIFY_FIRST_BYTES + (3 << 20)) as usize];
        let sha = Sha256::of(&data);
        let store = Arc::new(crate::store::Store::open(&dir.path().join("s.redb")).unwrap());
        let metrics = Arc::new(Metrics::default());
        {
            let cache = Cache::open(dir.path(), 1 << 40, store.clone(), metrics.clone()).unwrap();
            let mut t = cache.temp_file().await.unwrap();
            t.file.write_all(&data).await.unwrap();
            assert!(cache.commit(t, sha, data.len() as u64, None).await.unwrap());
        }
        let (audit, _w) = Audit::start(
            metrics.clone(),
            Some(store.clone()),
            crate::audit::Settings::plain(),
        )
        .unwrap();
        let serve = |fetcher: Arc<Fetcher>| async move {
            let size = fetcher.cached(&sha).await.unwrap();
            let resp = fetcher
                .serve_cached(&sha, size, false, &HeaderMap::new(), "x", &[])
                .await
                .unwrap();
            resp.into_body().collect().await.map(|b| b.to_bytes().len())
        };
        // A restart (a new cache over the same store): intact bytes stream whole.
        let cache =
            Arc::new(Cache::open(dir.path(), 1 << 40, store.clone(), metrics.clone()).unwrap());
        assert!(!cache.is_verified(&sha));
        let f = Arc::new(Fetcher::new(
            cache.clone(),
            metrics.clone(),
            audit.clone(),
            1 << 40,
        ));
        assert_eq!(serve(f.clone()).await.unwrap(), data.len());
        assert!(cache.is_verified(&sha));
        // Another restart after one byte was changed on disk.
        let path = cache.path(&sha);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[1000] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let cache =
            Arc::new(Cache::open(dir.path(), 1 << 40, store.clone(), metrics.clone()).unwrap());
        let f = Arc::new(Fetcher::new(cache.clone(), metrics.clone(), audit, 1 << 40));
        assert!(serve(f).await.is_err(), "tampered bytes were served whole");
        assert!(cache.lookup(&sha).is_none(), "the tampered file is evicted");
        assert!(!path.exists());
        assert_eq!(metrics.cache_tampered.load(Relaxed), 1);
    }

    /// The resolver is where the address check happens, so what it answers is what the
    /// client connects to: a name not configured that resolves only to loopback is refused.
    #[tokio::test]
    async fn names_resolving_to_private_addresses_need_to_be_configured() {
        use reqwest::dns::Resolve;
        let closed = super::http::GuardedResolver { private_ok: vec![] };
        let name = |s: &str| s.parse::<reqwest::dns::Name>().unwrap();
        assert!(closed.resolve(name("localhost")).await.is_err());
        let open = super::http::GuardedResolver {
            private_ok: vec!["localhost".into()],
        };
        let addrs: Vec<_> = open.resolve(name("localhost")).await.unwrap().collect();
        assert!(addrs.iter().all(|a| a.ip().is_loopback()) && !addrs.is_empty());
    }

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9", 100), Some(Ok((0, 9))));
        assert_eq!(parse_range("bytes=90-", 100), Some(Ok((90, 99))));
        assert_eq!(parse_range("bytes=-10", 100), Some(Ok((90, 99))));
        assert_eq!(parse_range("bytes=50-500", 100), Some(Ok((50, 99))));
        assert_eq!(parse_range("bytes=100-", 100), Some(Err(())));
        assert_eq!(parse_range("bytes=5-1", 100), Some(Err(())));
        assert_eq!(parse_range("bytes=0-1,5-6", 100), None);
        assert_eq!(parse_range("items=0-1", 100), None);
        assert_eq!(parse_range("bytes=x-y", 100), None);
    }
}
