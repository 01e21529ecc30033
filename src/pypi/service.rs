//! The index service: pages (upstream page → policy → listing) and files (policy → cache or a
//! verified upstream stream). Handlers call into this; it calls the pure policy to decide.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use futures_util::StreamExt;
use reqwest::Url;
use sha2::Digest;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, watch};

use super::page::{UpstreamFile, UpstreamPage};
use super::render::{self, Format, ListedFile};
use super::upstream::{safe, Upstream, UpstreamError};
use super::wheel;
use crate::audit::{Audit, AuditEvent};
use crate::config::Config;
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::policy::decide::{self, next_pin, Allowed, Decision, Pin};
use crate::policy::filename::DistKind;
use crate::policy::{DenyReason, DistFilename, Policy, ProjectName, ProjectRules, Sha256};
use crate::store::cache::now_secs;
use crate::store::{Cache, Store, METADATA, OBSERVED, PAGES, PINS};

/// After an upstream failure, requests within this window do not try it again: they get the
/// stale page (or 503) at once instead of each waiting for a timeout.
const FAILURE_BACKOFF_SECS: i64 = 5;
/// Background hashing of files whose upstream declares no hash, at most this many at once.
const MAX_BACKGROUND_HASHING: usize = 4;
/// How long the shared download waits for the first client to take a chunk.
const CLIENT_SEND_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// The policy in force and its version (bumped on every reload).
pub struct LoadedPolicy {
    pub policy: Policy,
    pub version: u64,
}

/// A hash the gate computed itself for a file whose upstream declared none.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Observed {
    pub sha256: String,
    pub size: u64,
}

struct Rendered {
    body: Bytes,
    etag: String,
    policy_version: u64,
    pins_gen: u64,
    valid_until: i64,
}

#[derive(Debug, Clone, PartialEq)]
enum Download {
    Running,
    Done,
    Failed(Failure),
}

#[derive(Debug, Clone, PartialEq)]
enum Failure {
    Unavailable(String),
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

/// Who asked, for the audit record.
#[derive(Debug, Clone)]
pub struct Client(pub String);

pub struct Pypi {
    pub wheels_only: bool,
    page_ttl: i64,
    public_base: String,
    cache_max_bytes: u64,
    upstreams: HashMap<String, Arc<Upstream>>,
    pages: Mutex<HashMap<String, Arc<UpstreamPage>>>,
    page_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    page_failures: Mutex<HashMap<String, i64>>,
    rendered: Mutex<HashMap<(ProjectName, Format), Arc<Rendered>>>,
    downloads: Mutex<HashMap<Sha256, watch::Receiver<Download>>>,
    hashing: Mutex<HashSet<String>>,
    pins_gen: AtomicU64,
    /// Serialises the read-modify-write of first-sight pins, so two renders of one page cannot
    /// lose a superseded hash.
    pin_lock: tokio::sync::Mutex<()>,
    store: Arc<Store>,
    pub cache: Arc<Cache>,
    metrics: Arc<Metrics>,
    audit: Audit,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves only caches behind; keep serving.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn pin_key(project: &ProjectName, filename: &str) -> String {
    format!("{project}/{filename}")
}

impl Pypi {
    pub fn new(
        config: &Config,
        store: Arc<Store>,
        cache: Arc<Cache>,
        metrics: Arc<Metrics>,
        audit: Audit,
    ) -> Result<Pypi, String> {
        let mut upstreams = HashMap::new();
        for idx in &config.pypi.indexes {
            upstreams.insert(
                idx.name.clone(),
                Arc::new(Upstream::new(
                    idx.clone(),
                    config.limits.page_bytes,
                    config.pypi.upstream_timeout,
                    metrics.clone(),
                )?),
            );
        }
        Ok(Pypi {
            wheels_only: config.pypi.wheels_only,
            page_ttl: config.pypi.page_ttl.as_secs() as i64,
            public_base: config.public_url.clone().unwrap_or_default(),
            cache_max_bytes: config.cache_max_bytes,
            upstreams,
            pages: Mutex::default(),
            page_locks: Mutex::default(),
            page_failures: Mutex::default(),
            rendered: Mutex::default(),
            downloads: Mutex::default(),
            hashing: Mutex::default(),
            pins_gen: AtomicU64::new(0),
            pin_lock: tokio::sync::Mutex::new(()),
            store,
            cache,
            metrics,
            audit,
        })
    }

    async fn audit(
        &self,
        action: &'static str,
        project: &ProjectName,
        file: Option<(&str, &Sha256)>,
        decision: Result<&Allowed, &DenyReason>,
        client: &Client,
    ) {
        let (dec, reason, detail, actual) = match decision {
            Ok(a) => {
                self.metrics.allow(matches!(a, Allowed::Release(_)));
                let kind = if matches!(a, Allowed::Release(_)) {
                    "release_rule"
                } else {
                    "exact"
                };
                ("allow", kind.to_string(), a.source().to_string(), None)
            }
            Err(r) => {
                self.metrics.deny(r);
                let actual = match r {
                    DenyReason::HashMismatch { actual, .. } => Some(actual.hex()),
                    _ => None,
                };
                ("deny", r.code().to_string(), r.to_string(), actual)
            }
        };
        self.audit
            .record(AuditEvent {
                time: now_secs(),
                action,
                decision: dec,
                reason,
                detail,
                project: project.to_string(),
                filename: file.map(|(f, _)| f.to_string()),
                sha256: file.map(|(_, s)| s.hex()),
                actual_sha256: actual,
                client: client.0.clone(),
            })
            .await;
    }

    /// A refusal: audited, counted, and turned into the 403 the client sees.
    async fn deny(
        &self,
        action: &'static str,
        project: &ProjectName,
        file: Option<(&str, &Sha256)>,
        reason: DenyReason,
        client: &Client,
    ) -> ApiError {
        self.audit(action, project, file, Err(&reason), client)
            .await;
        ApiError::Denied(reason.to_string())
    }

    /// The upstream page for a project: fresh within `page_ttl`, else fetched once for all
    /// concurrent requests, else the last good copy when the upstream fails (stale = true).
    async fn page(
        &self,
        rules: &ProjectRules,
        project: &ProjectName,
    ) -> Result<(Arc<UpstreamPage>, bool), ApiError> {
        let key = format!("{}/{project}", rules.index);
        let now = now_secs();
        let cached = self.cached_page(&key)?;
        if let Some(p) = &cached {
            if now - p.fetched_at < self.page_ttl {
                return Ok((p.clone(), false));
            }
        }
        let recently_failed = lock(&self.page_failures)
            .get(&key)
            .is_some_and(|t| now - t < FAILURE_BACKOFF_SECS);
        let upstream_down = |cached: Option<Arc<UpstreamPage>>, why: String| match cached {
            Some(p) => {
                self.metrics.stale_pages_served.fetch_add(1, Relaxed);
                Ok((p, true))
            }
            None => Err(ApiError::Unavailable(why)),
        };
        if recently_failed {
            return upstream_down(
                cached,
                format!(
                    "upstream index {} is unavailable; try again shortly",
                    rules.index
                ),
            );
        }
        let flight = lock(&self.page_locks)
            .entry(key.clone())
            .or_default()
            .clone();
        let _guard = flight.lock().await;
        // Another request may have refreshed the page while this one waited.
        let cached = self.cached_page(&key)?;
        if let Some(p) = &cached {
            if now_secs() - p.fetched_at < self.page_ttl {
                return Ok((p.clone(), false));
            }
        }
        if lock(&self.page_failures)
            .get(&key)
            .is_some_and(|t| now_secs() - t < FAILURE_BACKOFF_SECS)
        {
            return upstream_down(
                cached,
                format!(
                    "upstream index {} is unavailable; try again shortly",
                    rules.index
                ),
            );
        }
        let upstream = self
            .upstreams
            .get(&rules.index)
            .ok_or_else(|| ApiError::Internal(format!("index {} not configured", rules.index)))?;
        match upstream.fetch_page(project).await {
            Ok(files) => {
                let page = Arc::new(UpstreamPage {
                    fetched_at: now_secs(),
                    files,
                });
                lock(&self.page_failures).remove(&key);
                lock(&self.pages).insert(key.clone(), page.clone());
                let store = self.store.clone();
                let p2 = page.clone();
                let k2 = key.clone();
                match tokio::task::spawn_blocking(move || store.put(PAGES, &k2, &*p2)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::warn!(error = %e, "could not persist upstream page"),
                    Err(e) => tracing::warn!(error = %e, "could not persist upstream page"),
                }
                Ok((page, false))
            }
            Err(e) => {
                tracing::warn!(%project, error = %e, "upstream page fetch failed");
                lock(&self.page_failures).insert(key, now_secs());
                let why = match &e {
                    UpstreamError::Page(..)
                    | UpstreamError::TooLarge(_)
                    | UpstreamError::Redirect(..) => {
                        format!(
                            "upstream index {} sent a page the gate cannot use",
                            rules.index
                        )
                    }
                    other => other.to_string(),
                };
                upstream_down(cached, why)
            }
        }
    }

    fn cached_page(&self, key: &str) -> Result<Option<Arc<UpstreamPage>>, ApiError> {
        if let Some(p) = lock(&self.pages).get(key) {
            return Ok(Some(p.clone()));
        }
        let stored: Option<UpstreamPage> = self.store.get(PAGES, key)?;
        Ok(stored.map(|p| {
            let p = Arc::new(p);
            lock(&self.pages).insert(key.to_string(), p.clone());
            p
        }))
    }

    /// The hash of an upstream file: declared by the upstream, or computed by the gate.
    fn effective_hash(&self, f: &UpstreamFile) -> Result<Option<(Sha256, Option<u64>)>, ApiError> {
        if let Some(h) = f.sha256.as_deref().and_then(|h| Sha256::parse(h).ok()) {
            return Ok(Some((h, f.size)));
        }
        let obs: Option<Observed> = self.store.get(OBSERVED, &f.url)?;
        Ok(obs.and_then(|o| Sha256::parse(&o.sha256).ok().map(|h| (h, Some(o.size)))))
    }

    /// `/simple/{project}/`: the listing, from the rendered cache when nothing it depends on
    /// has changed.
    pub async fn project_page(
        self: &Arc<Self>,
        lp: &LoadedPolicy,
        project: &ProjectName,
        format: Format,
        client: &Client,
    ) -> Result<(Bytes, String), ApiError> {
        let rules = match decide::decide_project(&lp.policy, project) {
            Ok(r) => r,
            Err(reason) => return Err(self.deny("pypi.page", project, None, reason, client).await),
        };
        let gen = self.pins_gen.load(Relaxed);
        let now = now_secs();
        if let Some(r) = lock(&self.rendered).get(&(project.clone(), format)) {
            if r.policy_version == lp.version && r.pins_gen == gen && now < r.valid_until {
                return Ok((r.body.clone(), r.etag.clone()));
            }
        }
        let (page, stale) = self.page(rules, project).await?;
        let (files, versions, mut valid_until) =
            self.listing(&lp.policy, rules, project, &page).await?;
        valid_until = valid_until.min(if stale {
            now_secs() + FAILURE_BACKOFF_SECS
        } else {
            page.fetched_at + self.page_ttl
        });
        let body = Bytes::from(render::render_project(
            format,
            &self.public_base,
            project,
            &files,
            &versions,
        ));
        let etag = format!("\"{}\"", &hex::encode(sha2::Sha256::digest(&body))[..32]);
        lock(&self.rendered).insert(
            (project.clone(), format),
            Arc::new(Rendered {
                body: body.clone(),
                etag: etag.clone(),
                policy_version: lp.version,
                // The generation read before the listing: a pin written meanwhile re-renders.
                pins_gen: gen,
                valid_until,
            }),
        );
        Ok((body, etag))
    }

    /// Applies the policy to every upstream file: records first-sight pins, starts hashing
    /// files with no declared hash, and returns what may be listed.
    async fn listing(
        self: &Arc<Self>,
        policy: &Policy,
        rules: &ProjectRules,
        project: &ProjectName,
        page: &UpstreamPage,
    ) -> Result<(Vec<ListedFile>, Vec<String>, i64), ApiError> {
        let _pins = if rules.release.is_empty() {
            None
        } else {
            Some(self.pin_lock.lock().await)
        };
        let now = now_secs();
        let mut listed = Vec::new();
        let mut versions: Vec<pep440_rs::Version> = Vec::new();
        let mut pin_writes: Vec<(String, Pin)> = Vec::new();
        let mut valid_until = i64::MAX;
        let mut seen = HashSet::new();
        for f in &page.files {
            let Ok(dist) = DistFilename::parse(&f.filename, project) else {
                continue;
            };
            // One entry per filename: a page that lists a name twice gets its first entry.
            if !seen.insert(f.filename.clone()) {
                continue;
            }
            let release = decide::release_rule_matches(rules, &dist);
            let exact = rules.exact.iter().any(|r| r.version == dist.version);
            if !release && !exact {
                continue;
            }
            let Some((sha, size)) = self.effective_hash(f)? else {
                self.hash_in_background(rules, f);
                continue;
            };
            let mut pin: Option<Pin> = None;
            if release {
                let key = pin_key(project, &f.filename);
                let existing: Option<Pin> = self.store.get(PINS, &key)?;
                match next_pin(existing.as_ref(), &sha, size, f.upload_time, now) {
                    Some(new) => {
                        if existing.as_ref().is_some_and(|e| e.sha256 != new.sha256) {
                            tracing::warn!(%project, filename = %f.filename, old = ?existing.as_ref().map(|e| &e.sha256), new = %new.sha256, "upstream re-published a file under a new hash; its min_age clock restarts");
                        }
                        pin_writes.push((key, new.clone()));
                        pin = Some(new);
                    }
                    None => pin = existing,
                }
            }
            match decide::decide_file(
                policy,
                rules,
                self.wheels_only,
                &dist,
                &sha,
                pin.as_ref(),
                now,
            ) {
                Decision::Allow(_) => {
                    let size = size
                        .or(pin.as_ref().and_then(|p| p.size))
                        .or_else(|| self.cache.lookup(&sha));
                    let core_metadata = if dist.kind == DistKind::Wheel {
                        let md: Option<String> = self.store.get(METADATA, &sha.hex())?;
                        Some(md.and_then(|m| Sha256::parse(&m).ok()))
                    } else {
                        None
                    };
                    if !versions.contains(&dist.version) {
                        versions.push(dist.version.clone());
                    }
                    listed.push(ListedFile {
                        filename: f.filename.clone(),
                        sha256: sha,
                        requires_python: f.requires_python.clone(),
                        yanked: f.yanked.clone(),
                        size,
                        upload_time: f.upload_time,
                        core_metadata,
                    });
                }
                Decision::Deny(DenyReason::TooNew { remaining, .. }) => {
                    valid_until = valid_until.min(now + remaining.as_secs() as i64);
                }
                Decision::Deny(_) => {}
            }
        }
        if !pin_writes.is_empty() {
            let store = self.store.clone();
            tokio::task::spawn_blocking(move || store.put_many(PINS, &pin_writes))
                .await
                .map_err(|e| ApiError::Internal(e.to_string()))??;
            self.pins_gen.fetch_add(1, Relaxed);
        }
        versions.sort();
        Ok((
            listed,
            versions.iter().map(|v| v.to_string()).collect(),
            valid_until,
        ))
    }

    /// Hashes a file whose upstream declared no hash, so it can be pinned and listed (CONTRACT:
    /// "by hashing it in the background before listing it").
    fn hash_in_background(self: &Arc<Self>, rules: &ProjectRules, f: &UpstreamFile) {
        {
            let mut h = lock(&self.hashing);
            if h.len() >= MAX_BACKGROUND_HASHING || !h.insert(f.url.clone()) {
                return;
            }
        }
        let Some(upstream) = self.upstreams.get(&rules.index).cloned() else {
            return;
        };
        let this = self.clone();
        let url = f.url.clone();
        tokio::spawn(async move {
            let result = this.hash_remote(&upstream, &url).await;
            match result {
                Ok((sha, size)) => {
                    let obs = Observed {
                        sha256: sha.hex(),
                        size,
                    };
                    let store = this.store.clone();
                    let key = url.clone();
                    let _ =
                        tokio::task::spawn_blocking(move || store.put(OBSERVED, &key, &obs)).await;
                    this.pins_gen.fetch_add(1, Relaxed);
                }
                Err(e) => tracing::warn!(url = %url, error = %e, "could not hash upstream file"),
            }
            lock(&this.hashing).remove(&url);
        });
    }

    async fn hash_remote(&self, upstream: &Upstream, url: &str) -> Result<(Sha256, u64), String> {
        let url = Url::parse(url).map_err(|e| e.to_string())?;
        let resp = upstream.open_file(&url).await.map_err(|e| e.to_string())?;
        let mut hasher = sha2::Sha256::new();
        let mut total = 0u64;
        let mut stream = resp.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| e.to_string())?;
            total += chunk.len() as u64;
            if total > self.cache_max_bytes {
                return Err("file larger than the cache quota".into());
            }
            hasher.update(&chunk);
        }
        Ok((Sha256::from_bytes(hasher.finalize().into()), total))
    }

    /// Decides a file request. Returns the decision's rules and the parsed filename.
    async fn decide_file_request<'p>(
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
        match decide::decide_file(
            &lp.policy,
            rules,
            self.wheels_only,
            &dist,
            sha,
            pin.as_ref(),
            now_secs(),
        ) {
            Decision::Allow(a) => {
                self.audit(action, project, Some((filename, sha)), Ok(&a), client)
                    .await;
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
        lp: &LoadedPolicy,
        project: &ProjectName,
        sha: Sha256,
        filename: &str,
        head: bool,
        headers: &HeaderMap,
        client: &Client,
    ) -> Result<Response, ApiError> {
        let (rules, _) = self
            .decide_file_request(lp, project, &sha, filename, "pypi.file", client)
            .await?;
        if let Some(size) = self.cache.lookup(&sha) {
            // Cached bytes are served only under the name they were verified as: otherwise a
            // pinned sdist could be fetched under a wheel's name past `wheels_only`.
            if !self.cache.verified_as(&sha, filename) {
                return Err(ApiError::NotFound(format!(
                    "{filename} is not the file with sha256 {sha}"
                )));
            }
            self.metrics.cache_hits.fetch_add(1, Relaxed);
            return self
                .serve_cached(&sha, size, head, headers, "application/octet-stream")
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
        self.fetch_and_serve(rules, project, sha, filename, url, size)
            .await
    }

    /// Where the upstream has this file now, and its expected size.
    async fn locate(
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
                    "{filename} is pinned but the upstream index no longer lists it"
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

    /// Streams a file from the upstream to the client while hashing it. One upstream fetch per
    /// file: concurrent requests wait for it and are then served from the cache.
    async fn fetch_and_serve(
        self: &Arc<Self>,
        rules: &ProjectRules,
        project: &ProjectName,
        sha: Sha256,
        filename: &str,
        url: Url,
        size: Option<u64>,
    ) -> Result<Response, ApiError> {
        loop {
            let existing = lock(&self.downloads).get(&sha).cloned();
            if let Some(rx) = existing {
                match wait_download(rx).await {
                    Download::Done => {
                        if let Some(sz) = self.cache.lookup(&sha) {
                            return self
                                .serve_cached(
                                    &sha,
                                    sz,
                                    false,
                                    &HeaderMap::new(),
                                    "application/octet-stream",
                                )
                                .await;
                        }
                        // Verified but not cacheable (quota, disk): fetch again for this client.
                    }
                    Download::Failed(f) => return Err(f.into()),
                    Download::Running => {}
                }
            }
            let (body_tx, body_rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(16);
            let Some(head_rx) = self.start_download(
                rules,
                project,
                sha,
                filename,
                url.clone(),
                size,
                Some(body_tx),
            ) else {
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
            return file_headers(resp, &sha, "application/octet-stream")
                .body(Body::from_stream(stream))
                .map_err(|e| ApiError::Internal(e.to_string()));
        }
    }

    /// Starts the one download of `sha`, unless one is already running (then `None`).
    #[allow(clippy::too_many_arguments)]
    fn start_download(
        self: &Arc<Self>,
        rules: &ProjectRules,
        project: &ProjectName,
        sha: Sha256,
        filename: &str,
        url: Url,
        size: Option<u64>,
        body: Option<mpsc::Sender<Result<Bytes, std::io::Error>>>,
    ) -> Option<oneshot::Receiver<Result<Option<u64>, Failure>>> {
        let (state_tx, state_rx) = watch::channel(Download::Running);
        {
            let mut d = lock(&self.downloads);
            if d.contains_key(&sha) {
                return None;
            }
            d.insert(sha, state_rx);
        }
        let (head_tx, head_rx) = oneshot::channel();
        let upstream = self.upstreams.get(&rules.index).cloned();
        let this = self.clone();
        let project = project.clone();
        let filename = filename.to_string();
        tokio::spawn(async move {
            let result = match upstream {
                Some(up) => {
                    this.download(&up, &project, sha, &filename, &url, size, head_tx, body)
                        .await
                }
                None => Download::Failed(Failure::Unavailable("index not configured".into())),
            };
            lock(&this.downloads).remove(&sha);
            let _ = state_tx.send(result);
        });
        Some(head_rx)
    }

    /// The download itself. The client's copy of the last chunk is held back until the hash is
    /// known: on a mismatch the client receives an error instead, so it never holds a complete
    /// file with the wrong hash, and nothing is cached.
    #[allow(clippy::too_many_arguments)]
    async fn download(
        &self,
        up: &Upstream,
        project: &ProjectName,
        sha: Sha256,
        filename: &str,
        url: &Url,
        size: Option<u64>,
        head: oneshot::Sender<Result<Option<u64>, Failure>>,
        mut body: Option<mpsc::Sender<Result<Bytes, std::io::Error>>>,
    ) -> Download {
        let fail = |head: oneshot::Sender<Result<Option<u64>, Failure>>, f: Failure| {
            let _ = head.send(Err(f.clone()));
            Download::Failed(f)
        };
        let resp = match up.open_file(url).await {
            Ok(r) => r,
            Err(UpstreamError::NotFound) => {
                return fail(
                    head,
                    Failure::BadUpstream(format!(
                        "the upstream index lists {filename} but does not serve it"
                    )),
                )
            }
            Err(e) => return fail(head, Failure::Unavailable(e.to_string())),
        };
        let declared = resp.content_length();
        if let (Some(want), Some(got)) = (size, declared) {
            if want != got {
                tracing::warn!(%filename, want, got, "upstream file length differs from the listed size");
                return fail(head, Failure::BadUpstream(format!("the upstream sent {filename} with a length of {got} bytes, but {want} were listed")));
            }
        }
        let limit = size.or(declared).unwrap_or(self.cache_max_bytes);
        let _ = head.send(Ok(size.or(declared)));

        let mut temp = match self.cache.temp_file().await {
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
        let mut stream = resp.bytes_stream();
        let mut failure = None;
        while let Some(chunk) = stream.next().await {
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(%filename, url = %safe(url), error = %e, "upstream file transfer broke");
                    failure = Some(Failure::Unavailable(format!(
                        "the upstream transfer of {filename} broke off"
                    )));
                    break;
                }
            };
            total += chunk.len() as u64;
            if total > limit {
                // Never read past the declared size: a longer body is a lie.
                failure = Some(Failure::BadUpstream(format!(
                    "the upstream sent more than the {limit} bytes declared for {filename}"
                )));
                break;
            }
            hasher.update(&chunk);
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
                    if !matches!(
                        tokio::time::timeout(CLIENT_SEND_TIMEOUT, b.send(Ok(prev))).await,
                        Ok(Ok(()))
                    ) {
                        body = None;
                    }
                }
            }
        }
        if failure.is_none() && size.or(declared).is_some_and(|s| s != total) {
            failure = Some(Failure::BadUpstream(format!(
                "the upstream sent {total} bytes of {filename}, fewer than declared"
            )));
        }
        let actual = Sha256::from_bytes(hasher.finalize().into());
        if failure.is_none() && actual != sha {
            let reason = DenyReason::HashMismatch {
                filename: filename.to_string(),
                expected: sha,
                actual,
            };
            tracing::error!(%project, %filename, expected = %sha, actual = %actual, url = %safe(url), "upstream bytes do not match the pin; not served, not cached");
            self.audit(
                "pypi.file",
                project,
                Some((filename, &sha)),
                Err(&reason),
                &Client("gate".into()),
            )
            .await;
            failure = Some(Failure::BadUpstream(reason.to_string()));
        }
        if let Some(f) = failure {
            // The error must reach the client's stream (not be dropped on a full buffer), so
            // the response ends in a reset rather than a clean end, chunked or not.
            if let Some(b) = body.take() {
                let err = Err(std::io::Error::other("upstream file rejected"));
                let _ = tokio::time::timeout(CLIENT_SEND_TIMEOUT, b.send(err)).await;
            }
            if let Some(t) = temp {
                let _ = tokio::fs::remove_file(&t.path).await;
            }
            return Download::Failed(f);
        }
        if let Some(t) = temp {
            if let Err(e) = self.cache.commit(t, sha, total, Some(filename)).await {
                tracing::warn!(error = %e, "could not cache a verified file");
                self.metrics.cache_store_failures.fetch_add(1, Relaxed);
            }
        }
        if let (Some(b), Some(last)) = (&body, held) {
            let _ = b.send(Ok(last)).await;
        }
        Download::Done
    }

    /// Serves a verified cached file, honouring a single `Range: bytes=` (RFC 9110 §14).
    async fn serve_cached(
        &self,
        sha: &Sha256,
        size: u64,
        head: bool,
        headers: &HeaderMap,
        content_type: &'static str,
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
        let b = file_headers(b, sha, content_type);
        if head {
            return b
                .body(Body::empty())
                .map_err(|e| ApiError::Internal(e.to_string()));
        }
        let mut file = tokio::fs::File::open(self.cache.path(sha))
            .await
            .map_err(|e| ApiError::Internal(format!("cached file: {e}")))?;
        if start > 0 {
            file.seek(std::io::SeekFrom::Start(start))
                .await
                .map_err(|e| ApiError::Internal(e.to_string()))?;
        }
        self.metrics.cache_bytes_served.fetch_add(len, Relaxed);
        let stream = tokio_util::io::ReaderStream::with_capacity(file.take(len), 512 * 1024);
        b.body(Body::from_stream(stream))
            .map_err(|e| ApiError::Internal(e.to_string()))
    }

    /// `….metadata` (PEP 658): the METADATA file of the verified wheel, never upstream bytes.
    pub async fn metadata(
        self: &Arc<Self>,
        lp: &LoadedPolicy,
        project: &ProjectName,
        sha: Sha256,
        wheel_name: &str,
        head: bool,
        client: &Client,
    ) -> Result<Response, ApiError> {
        let (rules, dist) = self
            .decide_file_request(lp, project, &sha, wheel_name, "pypi.metadata", client)
            .await?;
        if dist.kind != DistKind::Wheel {
            return Err(ApiError::NotFound(
                "core metadata is served for wheels only".into(),
            ));
        }
        let known: Option<String> = self.store.get(METADATA, &sha.hex())?;
        if let Some(md) = known.and_then(|m| Sha256::parse(&m).ok()) {
            if let Some(size) = self.cache.lookup(&md) {
                return self
                    .serve_cached(
                        &md,
                        size,
                        head,
                        &HeaderMap::new(),
                        "text/plain; charset=utf-8",
                    )
                    .await;
            }
        }
        // The wheel must be verified and cached first.
        let mut tries = 0;
        while self.cache.lookup(&sha).is_none() {
            tries += 1;
            if tries > 3 {
                return Err(ApiError::Unavailable(
                    "the wheel could not be cached to read its metadata".into(),
                ));
            }
            let existing = lock(&self.downloads).get(&sha).cloned();
            let rx = match existing {
                Some(rx) => rx,
                None => {
                    let (url, size) = self.locate(rules, project, &sha, wheel_name).await?;
                    match self.start_download(rules, project, sha, wheel_name, url, size, None) {
                        Some(head_rx) => {
                            if let Ok(Err(f)) = head_rx.await {
                                return Err(f.into());
                            }
                        }
                        None => continue,
                    }
                    match lock(&self.downloads).get(&sha).cloned() {
                        Some(rx) => rx,
                        None => continue,
                    }
                }
            };
            if let Download::Failed(f) = wait_download(rx).await {
                return Err(f.into());
            }
        }
        let path = self.cache.path(&sha);
        let p2 = project.clone();
        let bytes = tokio::task::spawn_blocking(move || {
            std::fs::File::open(path)
                .map_err(wheel::WheelError::from)
                .and_then(|f| wheel::extract_metadata(std::io::BufReader::new(f), &p2))
        })
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .map_err(|e| ApiError::BadUpstream(format!("{wheel_name}: {e}")))?;
        let md_sha = Sha256::from_bytes(sha2::Sha256::digest(&bytes).into());
        let mut temp = self
            .cache
            .temp_file()
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        temp.file
            .write_all(&bytes)
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        let cached = self
            .cache
            .commit(temp, md_sha, bytes.len() as u64, None)
            .await?;
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

    /// Drops rendered pages so the next request re-decides (after a reload).
    pub fn invalidate(&self) {
        lock(&self.rendered).clear();
    }
}

async fn wait_download(mut rx: watch::Receiver<Download>) -> Download {
    loop {
        let cur = rx.borrow().clone();
        if cur != Download::Running {
            return cur;
        }
        if rx.changed().await.is_err() {
            let last = rx.borrow().clone();
            return if last == Download::Running {
                Download::Failed(Failure::Unavailable("download stopped".into()))
            } else {
                last
            };
        }
    }
}

fn file_headers(
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

#[cfg(test)]
mod tests {
    use super::parse_range;

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
