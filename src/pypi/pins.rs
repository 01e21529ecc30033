//! The index's pins: exact pins from the rules, first-sight pins of release rules (taken,
//! touched, pruned), approvals' files, and files with no declared hash hashed in the background
//! (bounded per project, in size and in time).

use super::hashing;
use super::page::UpstreamFile;
use super::service::{lock, Pypi, MAX_REMEMBERED_REFUSALS};
use super::{OBSERVED, PINS};
use crate::error::ApiError;
use crate::policy::decide::{self, Pin};
use crate::policy::{DistFilename, Policy, ProjectName, ProjectRules, Sha256};
use crate::store::cache::now_secs;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

/// A hash the gate computed itself for a file whose upstream declared none.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Observed {
    pub sha256: Sha256,
    pub size: u64,
    /// When it was hashed (pruned after prune_pins_after; 0: before this was recorded).
    #[serde(default)]
    pub seen: i64,
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

pub(super) fn pin_key(project: &ProjectName, filename: &str) -> String {
    format!("{project}/{filename}")
}

/// Hashes learned for files listed without one, kept at most (pruned after prune_pins_after).
pub(super) const MAX_OBSERVED: usize = 100_000;

/// Background hashing of files whose upstream declares no hash, at most this many at once.
pub(super) const MAX_BACKGROUND_HASHING: usize = 4;

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
    pub(super) async fn touch_pin(&self, project: &ProjectName, filename: &str, pin: Pin) {
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

    /// Hashes a file whose upstream declared no hash, so it can be pinned and listed (CONTRACT:
    /// "by hashing it in the background before listing it").
    /// `false`: not started for want of a slot (the caller renders the page again soon).
    pub(super) fn hash_in_background(
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
                        sha256: sha,
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
}
