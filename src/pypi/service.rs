//! The index service: pages (upstream page → policy → listing) and files (policy → cache or a
//! verified upstream stream). Handlers call into this; it calls the pure policy to decide.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use super::files::MAX_EXTRACTIONS;
use super::hashing;
use super::listing::Rendered;
use super::page::UpstreamPage;
use super::render::Format;
use super::upstream::Upstream;
use crate::audit::{Audit, AuditEvent};
use crate::config::Config;
use crate::error::ApiError;
use crate::fetch::Fetcher;
use crate::metrics::Metrics;
use crate::policy::decide::Allowed;
use crate::policy::{DenyReason, ProjectName, Sha256};
use crate::store::{Cache, Store};

/// After an upstream failure, requests within this window do not try it again: they get the
/// stale page (or 503) at once instead of each waiting for a timeout.
pub(super) const FAILURE_BACKOFF_SECS: i64 = 5;
/// Upstream files refused for hashing (over max_hash_bytes or hash_timeout), remembered so a
/// page view does not start the download again; at most this many.
pub(super) const MAX_REMEMBERED_REFUSALS: usize = 10_000;

pub use crate::loader::LoadedPolicy;

pub use crate::conn::Client;

pub struct Pypi {
    pub wheels_only: bool,
    pub(super) page_ttl: i64,
    pub(super) public_base: String,
    pub(super) hash_limits: hashing::HashLimits,
    pub(super) max_pins: usize,
    pub(super) prune_pins_after: i64,
    pub(super) hash_refused: Mutex<HashSet<String>>,
    pub(super) upstreams: HashMap<String, Arc<Upstream>>,
    pub(super) pages: Mutex<HashMap<String, Arc<UpstreamPage>>>,
    pub(super) page_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Per page: when its last fetch failed, and the TLS cause when that is why (a TLS failure
    /// is a configuration problem, answered 502 with its cause rather than 503 to retry).
    pub(super) page_failures: Mutex<HashMap<String, (i64, Option<String>)>>,
    pub(super) rendered: Mutex<HashMap<(ProjectName, Format), Arc<Rendered>>>,
    /// Files being hashed: their URL and project.
    pub(super) hashing: Mutex<HashMap<String, ProjectName>>,
    /// Files whose provenance is being fetched and verified (their PROVENANCE keys).
    pub(super) provenance_checks: Mutex<HashSet<String>>,
    /// Projects whose last provenance fetch failed, and when.
    pub(super) provenance_failed: Mutex<HashMap<ProjectName, i64>>,
    pub(super) pins_gen: AtomicU64,
    /// Serialises the read-modify-write of first-sight pins, so two renders of one page cannot
    /// lose a superseded hash.
    pub(super) pin_lock: tokio::sync::Mutex<()>,
    /// METADATA extractions at once (each inflates up to `MAX_METADATA_BYTES`).
    pub(super) extractions: tokio::sync::Semaphore,
    pub(super) store: Arc<Store>,
    pub cache: Arc<Cache>,
    pub(super) fetcher: Arc<Fetcher>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) audit: Audit,
}

pub(crate) use crate::sync::lock;

impl Pypi {
    pub fn new(
        config: &Config,
        store: Arc<Store>,
        cache: Arc<Cache>,
        fetcher: Arc<Fetcher>,
        metrics: Arc<Metrics>,
        audit: Audit,
    ) -> Result<Pypi, String> {
        store.ensure(&super::TABLES).map_err(|e| e.to_string())?;
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
            provenance_checks: Mutex::default(),
            provenance_failed: Mutex::default(),
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

    pub(super) async fn audit(
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
    pub(super) async fn deny(
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

    /// Drops rendered pages so the next request re-decides (after a reload).
    pub fn invalidate(&self) {
        lock(&self.rendered).clear();
    }
}
