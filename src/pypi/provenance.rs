//! PEP 740 provenance at the index: fetched once per file (from the link's `provenance` URL or
//! the index's Integrity API), verified against the one trusted root, and kept with the pin in
//! the store (so every replica, and every restart, decides from the same verdict). Served back
//! to clients at the gate's own Integrity API URL.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::page::UpstreamFile;
use super::service::Pypi;
use super::PROVENANCE;
use crate::error::ApiError;
use crate::loader::LoadedPolicy;
use crate::policy::filename::DistFilename;
use crate::policy::publisher::Evidence;
use crate::policy::{ProjectName, ProjectRules, Sha256};
use crate::store::cache::now_secs;
use crate::sync::lock;
use crate::verify::trust::TrustRoot;

/// Provenance checks running at once (each one request and one verification), and for one
/// project at most half of them, so one index trickling bodies cannot hold every project's.
const MAX_CHECKS: usize = 16;
/// One provenance fetch, whole: an index that trickles or stalls is given up on (nothing is
/// kept; the next render asks again).
const FETCH_DEADLINE: std::time::Duration = std::time::Duration::from_secs(60);
/// After a failed fetch, that project's next provenance check waits this long.
const FAILURE_PAUSE_SECS: i64 = 60;
/// An index that had no provenance for a file is asked again after this long (an index may
/// add it later); a provenance that did not verify is kept as it is: the bytes it vouches for
/// do not change.
const MISSING_RECHECK_SECS: i64 = 3600;

/// A file's provenance as the gate found it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Stored {
    pub fetched_at: i64,
    /// The provenance object as served (`None`: the index had none).
    pub body: Option<String>,
    pub evidence: Evidence,
    /// The trusted root the verdict was reached under (its digest): another root re-verifies.
    pub root: String,
}

pub fn key(project: &ProjectName, filename: &str, sha: &Sha256) -> String {
    format!("{project}/{filename}/{}", sha.hex())
}

fn verify(
    root: Option<&TrustRoot>,
    body: &[u8],
    dist: &DistFilename,
    sha: &Sha256,
) -> (Evidence, String) {
    let Some(root) = root else {
        // The loader refuses publisher rules without a root; fail closed regardless.
        return (
            Evidence::Failed("no trusted_root is configured".into()),
            String::new(),
        );
    };
    let verdict = crate::verify::pep740::verify_provenance(
        root,
        body,
        &dist.project,
        &dist.filename,
        *sha.as_bytes(),
    );
    let evidence = match verdict {
        Ok(v) => Evidence::Verified(v.attestations),
        Err(why) => Evidence::Failed(why),
    };
    (evidence, root.digest().to_string())
}

impl Pypi {
    /// The provenance verdict kept for this file, if its rules name a publisher and it was
    /// checked; one reached under another trusted root is reached again from the kept object
    /// (no fetch). `None` for a project whose rules need no provenance (no store read).
    pub fn provenance_of(
        &self,
        lp: &LoadedPolicy,
        rules: &ProjectRules,
        dist: &DistFilename,
        sha: &Sha256,
    ) -> Result<Option<Evidence>, ApiError> {
        if !rules.wants_provenance() {
            return Ok(None);
        }
        let k = key(&dist.project, &dist.filename, sha);
        let Some(mut stored): Option<Stored> = self.store.get(PROVENANCE, &k)? else {
            return Ok(None);
        };
        if stored.body.is_none() && now_secs() - stored.fetched_at > MISSING_RECHECK_SECS {
            return Ok(None);
        }
        let current = lp
            .material
            .trust_root
            .as_ref()
            .map(|r| r.digest().to_string())
            .unwrap_or_default();
        if stored.root != current {
            if let Some(body) = &stored.body {
                (stored.evidence, stored.root) = verify(
                    lp.material.trust_root.as_deref(),
                    body.as_bytes(),
                    dist,
                    sha,
                );
                self.store.put(PROVENANCE, &k, &stored)?;
            }
        }
        Ok(Some(stored.evidence))
    }

    /// The provenance object kept for a file whose verdict is verified: what the gate serves
    /// at `{file URL}.provenance`.
    pub fn provenance_body(
        &self,
        project: &ProjectName,
        filename: &str,
        sha: &Sha256,
    ) -> Result<Option<String>, ApiError> {
        let stored: Option<Stored> = self.store.get(PROVENANCE, &key(project, filename, sha))?;
        Ok(stored
            .filter(|s| matches!(s.evidence, Evidence::Verified(_)))
            .and_then(|s| s.body))
    }

    /// `GET /files/{project}/{sha256}/{filename}.provenance`: the provenance object the gate
    /// verified for a file it serves (decided and audited as the file itself is).
    pub async fn provenance_file(
        &self,
        ask: &crate::Ask<'_>,
        project: &ProjectName,
        sha: Sha256,
        filename: &str,
    ) -> Result<axum::response::Response, ApiError> {
        self.decide_file_request(
            ask.policy,
            project,
            &sha,
            filename,
            "pypi.provenance",
            ask.client,
        )
        .await?;
        let body = self
            .provenance_body(project, filename, &sha)?
            .ok_or_else(|| {
                ApiError::NotFound(format!(
                    "the gate keeps no verified provenance for {filename}"
                ))
            })?;
        axum::response::Response::builder()
            .header(
                axum::http::header::CONTENT_TYPE,
                "application/vnd.pypi.integrity.v1+json",
            )
            .body(axum::body::Body::from(body))
            .map_err(|e| ApiError::Internal(e.to_string()))
    }

    /// Fetches and verifies a file's provenance in the background; the page is rendered again
    /// once the verdict is kept. `false`: no slot now (the caller renders again soon).
    pub(super) fn check_provenance(
        self: &Arc<Self>,
        root: Option<Arc<TrustRoot>>,
        rules: &ProjectRules,
        dist: &DistFilename,
        f: &UpstreamFile,
        sha: Sha256,
    ) -> bool {
        let k = key(&dist.project, &dist.filename, &sha);
        {
            let mut running = lock(&self.provenance_checks);
            if running.contains(&k) {
                return true;
            }
            let prefix = format!("{}/", dist.project);
            let mine = running.iter().filter(|r| r.starts_with(&prefix)).count();
            if running.len() >= MAX_CHECKS || mine >= MAX_CHECKS / 2 {
                return false;
            }
            // A project whose index just failed a fetch (timed out, refused) waits before its
            // next: its page views cannot grab every slot the moment one frees.
            let failed = lock(&self.provenance_failed).get(&dist.project).copied();
            if failed.is_some_and(|t| now_secs() - t < FAILURE_PAUSE_SECS) {
                return false;
            }
            running.insert(k.clone());
        }
        let Some(upstream) = self.upstreams.get(&rules.index).cloned() else {
            lock(&self.provenance_checks).remove(&k);
            return true;
        };
        let url = f
            .provenance
            .as_deref()
            .and_then(|u| reqwest::Url::parse(u).ok())
            .or_else(|| {
                upstream.integrity_url(&dist.project, &dist.version.to_string(), &dist.filename)
            });
        let (this, dist) = (self.clone(), dist.clone());
        let root_id = root
            .as_ref()
            .map(|r| r.digest().to_string())
            .unwrap_or_default();
        tokio::spawn(async move {
            let fetched = match &url {
                Some(u) => tokio::time::timeout(FETCH_DEADLINE, upstream.fetch_provenance(u))
                    .await
                    .unwrap_or_else(|_| {
                        Err(super::upstream::UpstreamError::Unreachable(
                            upstream.cfg.name.clone(),
                        ))
                    }),
                None => Ok(None),
            };
            let stored = match fetched {
                Ok(Some(body)) => {
                    let dist2 = dist.clone();
                    let checked = tokio::task::spawn_blocking(move || {
                        let (evidence, root) = verify(root.as_deref(), &body, &dist2, &sha);
                        (String::from_utf8(body).ok(), evidence, root)
                    })
                    .await;
                    match checked {
                        Ok((text, evidence, root)) => Some(Stored {
                            fetched_at: now_secs(),
                            evidence: if text.is_some() {
                                evidence
                            } else {
                                Evidence::Failed("the provenance is not UTF-8 JSON".into())
                            },
                            body: text,
                            root,
                        }),
                        Err(_) => None,
                    }
                }
                Ok(None) => Some(Stored {
                    fetched_at: now_secs(),
                    body: None,
                    evidence: Evidence::Failed(format!(
                        "the index {} has no provenance for {}",
                        upstream.cfg.name, dist.filename
                    )),
                    root: root_id,
                }),
                // An index that fails (or refuses, as PyPI does while attestations are turned
                // off) is asked again at the next render: nothing is kept.
                Err(e) => {
                    tracing::warn!(project = %dist.project, filename = %dist.filename, error = %e, "provenance could not be fetched");
                    lock(&this.provenance_failed).insert(dist.project.clone(), now_secs());
                    None
                }
            };
            if let Some(s) = stored {
                if let Evidence::Failed(why) = &s.evidence {
                    tracing::warn!(project = %dist.project, filename = %dist.filename, %why, "provenance does not verify");
                }
                let store = this.store.clone();
                let k2 = k.clone();
                let _ = tokio::task::spawn_blocking(move || store.put(PROVENANCE, &k2, &s)).await;
                this.pins_gen
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            lock(&this.provenance_checks).remove(&k);
        });
        true
    }
}
