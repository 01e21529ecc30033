//! A project's page: the upstream page fetched (bounded, single flight, remembered refusals),
//! every file decided by the policy in force, and only admitted files listed under their
//! pinned hash (PEP 503 HTML or PEP 691 JSON).

use super::files::METADATA_FAILED;
use super::page::{UpstreamFile, UpstreamPage};
use super::pins::{pin_key, Observed};
use super::render::{self, Format, ListedFile};
use super::service::{lock, Pypi, FAILURE_BACKOFF_SECS};
use super::upstream::UpstreamError;
use super::{METADATA, OBSERVED, PAGES, PINS};
use crate::audit::AuditEvent;
use crate::error::ApiError;
use crate::loader::LoadedPolicy;
use crate::policy::decide::{self, next_pin, Decision, Pin};
use crate::policy::filename::DistKind;
use crate::policy::publisher::Evidence;
use crate::policy::{DenyReason, DistFilename, ProjectName, ProjectRules, Sha256};
use crate::store::cache::now_secs;
use bytes::Bytes;
use sha2::Digest;
use std::collections::HashSet;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

pub(super) struct Rendered {
    pub(super) body: Bytes,
    pub(super) etag: String,
    pub(super) policy_version: u64,
    pub(super) pins_gen: u64,
    pub(super) valid_until: i64,
}

/// What a listing admits (files, versions), until when it holds, and the files withheld for
/// a vulnerability (audited by the caller).
type Listing = (
    Vec<ListedFile>,
    Vec<String>,
    i64,
    Vec<(String, Sha256, DenyReason)>,
);

impl Pypi {
    /// The upstream page for a project: fresh within `page_ttl`, else fetched once for all
    /// concurrent requests, else the last good copy when the upstream fails (stale = true).
    pub(super) async fn page(
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
        let recent_failure = |now: i64| {
            lock(&self.page_failures)
                .get(&key)
                .filter(|(t, _)| now - t < FAILURE_BACKOFF_SECS)
                .map(|(_, tls)| tls.clone())
        };
        // Served stale when a copy exists; else 503 to retry, or 502 with the TLS cause (a
        // retry cannot help until the operator changes what the gate trusts).
        let upstream_down =
            |cached: Option<Arc<UpstreamPage>>, why: String, tls: Option<String>| match cached {
                Some(p) => {
                    self.metrics.stale_pages_served.fetch_add(1, Relaxed);
                    Ok((p, true))
                }
                None => match tls {
                    Some(cause) => Err(ApiError::BadUpstream(format!(
                        "upstream index {}: {cause}",
                        rules.index
                    ))),
                    None => Err(ApiError::Unavailable(why)),
                },
            };
        let down = || {
            format!(
                "upstream index {} is unavailable; try again shortly",
                rules.index
            )
        };
        if let Some(tls) = recent_failure(now) {
            return upstream_down(cached, down(), tls);
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
        if let Some(tls) = recent_failure(now_secs()) {
            return upstream_down(cached, down(), tls);
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
                lock(&self.page_failures).insert(key, (now_secs(), None));
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
                let tls = match &e {
                    UpstreamError::Tls(_, cause) => Some(cause.clone()),
                    _ => None,
                };
                lock(&self.page_failures).insert(key.clone(), (now_secs(), tls.clone()));
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
                upstream_down(cached, why, tls)
            }
        }
    }

    pub(super) fn cached_page(&self, key: &str) -> Result<Option<Arc<UpstreamPage>>, ApiError> {
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
    pub(super) fn effective_hash(
        &self,
        f: &UpstreamFile,
    ) -> Result<Option<(Sha256, Option<u64>)>, ApiError> {
        if let Some(h) = f.sha256.as_deref().and_then(|h| Sha256::parse(h).ok()) {
            return Ok(Some((h, f.size)));
        }
        let obs: Option<Observed> = self.store.get(OBSERVED, &f.url)?;
        Ok(obs.map(|o| (o.sha256, Some(o.size))))
    }

    /// `/simple/{project}/`: the listing, from the rendered cache when nothing it depends on
    /// has changed.
    pub async fn project_page(
        self: &Arc<Self>,
        ask: &crate::Ask<'_>,
        project: &ProjectName,
        format: Format,
    ) -> Result<(Bytes, String), ApiError> {
        let (lp, client) = (ask.policy, ask.client);
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
        let (files, versions, mut valid_until, withheld) =
            self.listing(lp, rules, project, &page).await?;
        // Files left out for a vulnerability are audited with the advisories (once per render),
        // so "why can pip not find it" has an answer in the log.
        for (filename, sha, reason) in &withheld {
            self.audit(
                "pypi.page",
                project,
                Some((filename, sha)),
                Err(reason),
                client,
            )
            .await;
        }
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
    pub(super) async fn listing(
        self: &Arc<Self>,
        lp: &LoadedPolicy,
        rules: &ProjectRules,
        project: &ProjectName,
        page: &UpstreamPage,
    ) -> Result<Listing, ApiError> {
        let policy = &lp.policy;
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
        // A listing an exception lets a file into is rendered again when the exception ends.
        let mut valid_until = decide::next_expiry(policy, now).unwrap_or(i64::MAX);
        let mut seen = HashSet::new();
        let mut withheld = Vec::new();
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
            let provenance = self.provenance_of(lp, rules, &dist, &sha)?;
            let facts = decide::Facts {
                pin: pin.as_ref(),
                provenance: provenance.as_ref(),
            };
            match decide::decide_file(policy, rules, self.wheels_only, &dist, &sha, facts, now) {
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
                        provenance: matches!(provenance, Some(Evidence::Verified(_))),
                    });
                }
                Decision::Deny(DenyReason::TooNew { remaining, .. }) => {
                    valid_until = valid_until.min(now + remaining.as_secs() as i64);
                }
                Decision::Deny(reason @ DenyReason::Vulnerable { .. })
                | Decision::Deny(reason @ DenyReason::Provenance { .. }) => {
                    withheld.push((f.filename.clone(), sha, reason));
                }
                Decision::Deny(DenyReason::ProvenanceUnchecked { .. }) => {
                    // Listed once its provenance is checked: rendered again soon.
                    let root = lp.material.trust_root.clone();
                    self.check_provenance(root, rules, &dist, f, sha);
                    valid_until = valid_until.min(now + FAILURE_BACKOFF_SECS);
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
            withheld,
        ))
    }
}
