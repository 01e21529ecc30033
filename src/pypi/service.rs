//! The index service: pages (upstream page → policy → listing) and files (policy → cache or a
//! verified upstream stream). Handlers call into this; it calls the pure policy to decide.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use reqwest::Url;
use sha2::Digest;
use tokio::io::AsyncWriteExt;

use super::hashing;
use super::page::{UpstreamFile, UpstreamPage};
use super::render::{self, Format, ListedFile};
use super::upstream::{Upstream, UpstreamError};
use super::wheel;
use crate::audit::{Audit, AuditEvent};
use crate::config::Config;
use crate::error::ApiError;
use crate::fetch::{file_headers, Failure, Fetcher, Job};
use crate::metrics::Metrics;
use crate::policy::decide::{self, next_pin, Allowed, Decision, Pin};
use crate::policy::filename::DistKind;
use crate::policy::{DenyReason, DistFilename, Policy, ProjectName, ProjectRules, Sha256};
use crate::store::cache::now_secs;
use crate::store::{Cache, Store, METADATA, OBSERVED, PAGES, PINS};

/// After an upstream failure, requests within this window do not try it again: they get the
/// stale page (or 503) at once instead of each waiting for a timeout.
const FAILURE_BACKOFF_SECS: i64 = 5;
/// Upstream files refused for hashing (over max_hash_bytes or hash_timeout), remembered so a
/// page view does not start the download again; at most this many.
const MAX_REMEMBERED_REFUSALS: usize = 10_000;
/// Hashes learned for files listed without one, kept at most (pruned after prune_pins_after).
const MAX_OBSERVED: usize = 100_000;
/// Background hashing of files whose upstream declares no hash, at most this many at once.
const MAX_BACKGROUND_HASHING: usize = 4;

pub use crate::loader::LoadedPolicy;

/// A hash the gate computed itself for a file whose upstream declared none.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Observed {
    pub sha256: String,
    pub size: u64,
    /// When it was hashed (pruned after prune_pins_after; 0: before this was recorded).
    #[serde(default)]
    pub seen: i64,
}

struct Rendered {
    body: Bytes,
    etag: String,
    policy_version: u64,
    pins_gen: u64,
    valid_until: i64,
}

pub use crate::conn::Client;

/// METADATA extractions run at once.
const MAX_EXTRACTIONS: usize = 4;
/// Marks a wheel whose METADATA could not be read (the reason follows) in the METADATA table.
const METADATA_FAILED: &str = "!";

pub struct Pypi {
    pub wheels_only: bool,
    page_ttl: i64,
    public_base: String,
    hash_limits: hashing::HashLimits,
    max_pins: usize,
    prune_pins_after: i64,
    hash_refused: Mutex<HashSet<String>>,
    upstreams: HashMap<String, Arc<Upstream>>,
    pages: Mutex<HashMap<String, Arc<UpstreamPage>>>,
    page_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    page_failures: Mutex<HashMap<String, i64>>,
    rendered: Mutex<HashMap<(ProjectName, Format), Arc<Rendered>>>,
    /// Files being hashed: their URL and project.
    hashing: Mutex<HashMap<String, ProjectName>>,
    pins_gen: AtomicU64,
    /// Serialises the read-modify-write of first-sight pins, so two renders of one page cannot
    /// lose a superseded hash.
    pin_lock: tokio::sync::Mutex<()>,
    /// METADATA extractions at once (each inflates up to `MAX_METADATA_BYTES`).
    extractions: tokio::sync::Semaphore,
    store: Arc<Store>,
    pub cache: Arc<Cache>,
    fetcher: Arc<Fetcher>,
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

/// A file an approval pinned: its bytes were fetched and hashed by the gate.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ApprovedFile {
    pub filename: String,
    pub sha256: String,
    pub size: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub yanked: Option<String>,
}

impl Pypi {
    /// Every file of `project` `version` on its upstream `index`, each downloaded and hashed
    /// (an upstream whose bytes differ from the hash it declares is refused: 502). Nothing is
    /// cached: the files are fetched again, verified against these pins, when first installed.
    pub async fn release_files(
        &self,
        index: &str,
        project: &ProjectName,
        version: &pep440_rs::Version,
    ) -> Result<Vec<ApprovedFile>, ApiError> {
        let upstream = self
            .upstreams
            .get(index)
            .ok_or_else(|| ApiError::BadRequest(format!("no index named {index:?}")))?;
        let files = upstream
            .fetch_page(project)
            .await
            .map_err(|e| ApiError::Unavailable(e.to_string()))?;
        let mut out = Vec::new();
        for f in files {
            let Ok(dist) = DistFilename::parse(&f.filename, project) else {
                continue;
            };
            if dist.version != *version
                || (self.wheels_only && dist.kind == crate::policy::filename::DistKind::Sdist)
            {
                continue;
            }
            let (sha, size, temp) = hashing::hash_remote(
                upstream,
                &self.cache,
                &f.url,
                &f.filename,
                f.size,
                self.hash_limits,
            )
            .await
            .map_err(|e| {
                if e.is_limit() {
                    self.metrics.hashes_refused.fetch_add(1, Relaxed);
                    ApiError::BadRequest(format!("nothing was approved: {e}"))
                } else {
                    ApiError::Unavailable(format!("{}: {e}", f.filename))
                }
            })?;
            if let Some(t) = temp {
                let _ = tokio::fs::remove_file(&t.path).await;
            }
            if let Some(declared) = &f.sha256 {
                if *declared != sha.to_string() {
                    return Err(ApiError::BadUpstream(format!(
                        "{}: the upstream declares sha256 {declared} but serves bytes with sha256 {sha}; nothing was approved",
                        f.filename
                    )));
                }
            }
            out.push(ApprovedFile {
                filename: f.filename,
                sha256: sha.to_string(),
                size,
                yanked: f.yanked,
            });
        }
        Ok(out)
    }

    /// Records that a pinned file was served (at most once a day per pin), so pruning keeps
    /// what is in use.
    async fn touch_pin(&self, project: &ProjectName, filename: &str, pin: Pin) {
        let now = now_secs();
        if pin.last_served.is_some_and(|t| now - t < 86_400) {
            return;
        }
        let _pins = self.pin_lock.lock().await;
        let key = pin_key(project, filename);
        let store = self.store.clone();
        let done = tokio::task::spawn_blocking(move || {
            // Read again under the lock: the pin may have changed since the decision.
            let current: Option<Pin> = store.get(PINS, &key)?;
            match current {
                Some(mut p) if p.sha256 == pin.sha256 => {
                    p.last_served = Some(now);
                    store.put(PINS, &key, &p)
                }
                _ => Ok(()),
            }
        })
        .await;
        if let Ok(Err(e)) = done {
            tracing::warn!(error = %e, "could not record a pin's last use");
        }
    }

    /// Prunes first-sight pins that no release rule admits any more and that were neither
    /// seen nor served for `prune_pins_after`; returns how many went.
    pub async fn prune_pins(&self, policy: &Policy) -> Result<usize, ApiError> {
        let _pins = self.pin_lock.lock().await;
        let now = now_secs();
        let mut gone = Vec::new();
        for (key, pin) in self.store.all::<Pin>(PINS)? {
            let Some((project, filename)) = key.split_once('/') else {
                continue;
            };
            let name = ProjectName::parse(project).ok();
            let rules = name
                .as_ref()
                .and_then(|n| decide::decide_project(policy, n).ok());
            let dist = name
                .as_ref()
                .and_then(|n| DistFilename::parse(filename, n).ok());
            if decide::pin_prunable(rules, dist.as_ref(), &pin, now, self.prune_pins_after) {
                gone.push(key);
            }
        }
        // Hashes learned for hashless files are re-learned when needed: old ones go.
        let stale: Vec<String> = self
            .store
            .all::<Observed>(OBSERVED)?
            .into_iter()
            .filter(|(_, o)| now - o.seen >= self.prune_pins_after)
            .map(|(k, _)| k)
            .collect();
        if !stale.is_empty() {
            self.store.remove_many(OBSERVED, &stale)?;
        }
        let n = gone.len();
        if n > 0 {
            let store = self.store.clone();
            tokio::task::spawn_blocking(move || store.remove_many(PINS, &gone))
                .await
                .map_err(|e| ApiError::Internal(e.to_string()))??;
            self.pins_gen.fetch_add(1, Relaxed);
        }
        Ok(n)
    }

    /// Every first-sight pin (`project/filename` → pin).
    pub fn first_sight_pins(&self) -> Result<Vec<(String, Pin)>, ApiError> {
        Ok(self.store.all(PINS)?)
    }

    /// The first-sight pin of a file under a release rule, if the gate has seen it.
    pub fn pin_for(&self, project: &ProjectName, filename: &str) -> Result<Option<Pin>, ApiError> {
        Ok(self.store.get(PINS, &pin_key(project, filename))?)
    }
}

impl Pypi {
    pub fn new(
        config: &Config,
        store: Arc<Store>,
        cache: Arc<Cache>,
        fetcher: Arc<Fetcher>,
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
                    config.pypi.max_files_per_page,
                    config.pypi.upstream_timeout,
                    metrics.clone(),
                )?),
            );
        }
        Ok(Pypi {
            wheels_only: config.pypi.wheels_only,
            page_ttl: config.pypi.page_ttl.as_secs() as i64,
            public_base: config.public_url.clone().unwrap_or_default(),
            hash_limits: hashing::HashLimits {
                max_bytes: config.pypi.max_hash_bytes,
                timeout: config.pypi.hash_timeout,
            },
            max_pins: config.pypi.max_pins_per_project,
            prune_pins_after: config.pypi.prune_pins_after.as_secs() as i64,
            hash_refused: Mutex::default(),
            upstreams,
            pages: Mutex::default(),
            page_locks: Mutex::default(),
            page_failures: Mutex::default(),
            rendered: Mutex::default(),
            hashing: Mutex::default(),
            pins_gen: AtomicU64::new(0),
            pin_lock: tokio::sync::Mutex::new(()),
            extractions: tokio::sync::Semaphore::new(MAX_EXTRACTIONS),
            store,
            cache,
            fetcher,
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
        let ev = AuditEvent::about(
            action,
            project.to_string(),
            file.map(|(f, _)| f.to_string()),
            file.map(|(_, s)| s.hex()),
            &client.0,
        );
        let ev = match decision {
            Ok(a @ Allowed::Release(_)) => ev.allow("release_rule", a.source().to_string()),
            Ok(a) => ev.allow("exact", a.source().to_string()),
            Err(r) => ev.deny(r.code(), r.to_string()),
        };
        self.audit.record(ev).await;
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
            Err(e @ UpstreamError::TooManyFiles(..)) => {
                // A refusal, not an outage: said as it is, and served from the last good copy
                // only while one is fresh enough to be served at all.
                self.metrics.pages_refused.fetch_add(1, Relaxed);
                tracing::warn!(%project, error = %e, "upstream page refused");
                lock(&self.page_failures).insert(key, now_secs());
                match cached {
                    Some(p) => {
                        self.metrics.stale_pages_served.fetch_add(1, Relaxed);
                        Ok((p, true))
                    }
                    None => Err(ApiError::BadUpstream(e.to_string())),
                }
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
        // The allow is audited too (repeated views aggregate into counted entries).
        let ev = AuditEvent::about("pypi.page", project.to_string(), None, None, &client.0)
            .allow("project_rule", format!("index {}", rules.index));
        self.audit.record(ev).await;
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
        let trust_upload_time = self
            .upstreams
            .get(&rules.index)
            .is_some_and(|u| u.cfg.trust_upload_time);
        let mut listed = Vec::new();
        let mut versions: Vec<pep440_rs::Version> = Vec::new();
        let mut pin_writes: Vec<(String, Pin)> = Vec::new();
        let mut valid_until = i64::MAX;
        let mut seen = HashSet::new();
        // First-sight pins this project may still take (max_pins_per_project): counted once,
        // when the page brings a file not pinned yet.
        let mut room: Option<usize> = None;
        let mut unpinned = 0u64;
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
            // The pin cap comes before anything is fetched or kept for a file: past it, a new
            // file is neither hashed, cached, pinned nor listed.
            let key = pin_key(project, &f.filename);
            let existing: Option<Pin> = if release {
                self.store.get(PINS, &key)?
            } else {
                None
            };
            if release && existing.is_none() {
                let left = match room {
                    Some(r) => r,
                    None => {
                        let have = self.store.count_prefix(PINS, &format!("{project}/"))?;
                        *room.insert(self.max_pins.saturating_sub(have))
                    }
                };
                if left == 0 {
                    unpinned += 1;
                    continue;
                }
                room = Some(left - 1);
            }
            let Some((sha, size)) = self.effective_hash(f)? else {
                if !self.hash_in_background(rules, project, &dist, f) {
                    // No hashing slot now: this page is rendered again soon, so the file is
                    // hashed and listed once one frees up (not only after page_ttl).
                    valid_until = valid_until.min(now + FAILURE_BACKOFF_SECS);
                }
                continue;
            };
            let mut pin: Option<Pin> = None;
            if release {
                // An index's upload time shortens the quarantine only when it is trusted
                // (`upload_time`): otherwise a file dated 1999 but first seen now ages from now.
                let uploaded = f.upload_time.filter(|_| trust_upload_time);
                match next_pin(existing.as_ref(), &sha, size, uploaded, now) {
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
                    // PEP 714 `core-metadata`: for wheels only, with the METADATA file's hash
                    // once known; a wheel whose METADATA could not be read is listed without
                    // it, so clients download the wheel itself.
                    let core_metadata = if dist.kind == DistKind::Wheel {
                        let md: Option<String> = self.store.get(METADATA, &sha.hex())?;
                        match md {
                            Some(m) if m.starts_with(METADATA_FAILED) => None,
                            md => Some(md.and_then(|m| Sha256::parse(&m).ok())),
                        }
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
        if unpinned > 0 {
            self.metrics.pins_refused.fetch_add(unpinned, Relaxed);
            tracing::warn!(%project, index = %rules.index, files = unpinned, max_pins_per_project = self.max_pins, "project reached max_pins_per_project: new upstream files are neither pinned nor listed");
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
    /// `false`: not started for want of a slot (the caller renders the page again soon).
    fn hash_in_background(
        self: &Arc<Self>,
        rules: &ProjectRules,
        project: &ProjectName,
        dist: &DistFilename,
        f: &UpstreamFile,
    ) -> bool {
        if lock(&self.hash_refused).contains(&f.url) {
            return true;
        }
        // What hashing has learned is kept in OBSERVED: bounded, like the pins.
        if self.store.len(OBSERVED).unwrap_or(usize::MAX) >= MAX_OBSERVED {
            self.metrics.hashes_refused.fetch_add(1, Relaxed);
            tracing::warn!(%project, "the table of hashed upstream files is full (pruned daily); the file is not hashed or listed");
            return true;
        }
        {
            let mut h = lock(&self.hashing);
            if h.contains_key(&f.url) {
                return true;
            }
            // Half the slots at most for one project, so one upstream's slow files do not
            // hold back every other project's.
            let mine = h.values().filter(|p| *p == project).count();
            if h.len() >= MAX_BACKGROUND_HASHING || mine >= MAX_BACKGROUND_HASHING / 2 {
                return false;
            }
            h.insert(f.url.clone(), project.clone());
        }
        let Some(upstream) = self.upstreams.get(&rules.index).cloned() else {
            lock(&self.hashing).remove(&f.url);
            return true;
        };
        // Which hashes would be admitted for this file: under a release rule the hash found now
        // becomes the pin; under exact rules only the listed hashes. Those bytes are kept in the
        // cache, so the first install does not download the file a second time.
        let release = decide::release_rule_matches(rules, dist);
        let exact: Vec<Sha256> = rules
            .exact
            .iter()
            .filter(|r| r.version == dist.version)
            .flat_map(|r| r.sha256.iter().copied())
            .collect();
        let this = self.clone();
        let url = f.url.clone();
        let filename = f.filename.clone();
        let declared = f.size;
        tokio::spawn(async move {
            let hashed = hashing::hash_remote(
                &upstream,
                &this.cache,
                &url,
                &filename,
                declared,
                this.hash_limits,
            )
            .await;
            match hashed {
                Ok((sha, size, temp)) => {
                    if let Some(t) = temp {
                        if release || exact.contains(&sha) {
                            if let Err(e) = this.cache.commit(t, sha, size, Some(&filename)).await {
                                tracing::warn!(error = %e, "could not cache a hashed file");
                            }
                        } else {
                            let _ = tokio::fs::remove_file(&t.path).await;
                        }
                    }
                    let obs = Observed {
                        sha256: sha.hex(),
                        size,
                        seen: now_secs(),
                    };
                    let store = this.store.clone();
                    let key = url.clone();
                    let _ =
                        tokio::task::spawn_blocking(move || store.put(OBSERVED, &key, &obs)).await;
                    this.pins_gen.fetch_add(1, Relaxed);
                }
                Err(e) if e.is_limit() => {
                    // Not tried again on every page view: the file stays unlisted, and says why.
                    this.metrics.hashes_refused.fetch_add(1, Relaxed);
                    tracing::warn!(url = %crate::pypi::upstream::safe_str(&url), error = %e, "upstream file not hashed; it is not listed");
                    let mut refused = lock(&this.hash_refused);
                    if refused.len() >= MAX_REMEMBERED_REFUSALS {
                        refused.clear();
                    }
                    refused.insert(url.clone());
                }
                Err(e) => {
                    tracing::warn!(url = %crate::pypi::upstream::safe_str(&url), error = %e, "could not hash upstream file")
                }
            }
            lock(&this.hashing).remove(&url);
        });
        true
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
            .fetch_and_serve(sha, job, "application/octet-stream", &[])
            .await
    }

    /// The download of one file from the project's index, as a fetcher job.
    #[allow(clippy::too_many_arguments)]
    fn job(
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
