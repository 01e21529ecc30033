//! `GET /api/v1/packages/{project}/{version}`: why a release would or would not install, for
//! the person whose `pip install` failed. pip shows only "403" for a refused page or file; this
//! answers with the gate's own sentences, decided by the same code as the index, without an
//! admin token (it tells nothing a `pip install` of the same release would not).

use std::sync::Arc;

use serde::Serialize;

use super::render::Format;
use super::service::Pypi;
use crate::error::ApiError;
use crate::policy::decide::{self, Decision};
use crate::policy::{DistFilename, ProjectName, Sha256};
use crate::store::cache::now_secs;

/// The answer: whether the release installs, and each of its upstream files' verdicts.
#[derive(Serialize)]
pub struct ReleaseCheck {
    pub project: String,
    pub version: String,
    /// True when some file of the release (one of the asked hashes, when hashes were given)
    /// is served.
    pub installable: bool,
    /// One sentence: what installs, or the most useful reason why nothing does.
    pub explanation: String,
    pub files: Vec<FileCheck>,
}

#[derive(Serialize)]
pub struct FileCheck {
    pub filename: String,
    /// The file's hash as the gate knows it (declared upstream or computed); none while the
    /// gate has not hashed it yet.
    pub sha256: Option<Sha256>,
    /// The file is one of the hashes asked about (always true when none were given).
    pub asked: bool,
    pub allowed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
    pub explanation: String,
}

impl Pypi {
    /// Decides every upstream file of `project` `version` as the index would list and serve it
    /// now. The project page is produced first, exactly as a client's request would (so
    /// first-sight pins are recorded as they would be for `pip install`).
    pub async fn release_check(
        self: &Arc<Self>,
        ask: &crate::Ask<'_>,
        project: &ProjectName,
        version: &pep440_rs::Version,
        hashes: &[Sha256],
    ) -> Result<ReleaseCheck, ApiError> {
        let mut out = ReleaseCheck {
            project: project.to_string(),
            version: version.to_string(),
            installable: false,
            explanation: String::new(),
            files: Vec::new(),
        };
        let rules = match decide::decide_project(&ask.policy.policy, project) {
            Ok(r) => r,
            Err(reason) => {
                out.explanation = reason.to_string();
                return Ok(out);
            }
        };
        if let Err(e) = self.project_page(ask, project, Format::Json).await {
            // The page itself is refused or unavailable: that is the answer pip got.
            out.explanation = e.public_message();
            return Ok(out);
        }
        let (page, _) = self.page(rules, project).await?;
        let now = now_secs();
        for f in &page.files {
            let Ok(dist) = DistFilename::parse(&f.filename, project) else {
                continue;
            };
            if dist.version != *version || out.files.iter().any(|x| x.filename == f.filename) {
                continue;
            }
            // A release no rule admits is said so before anything about its files' hashes (the
            // gate never fetches them, and their hashes are not the caller's business).
            let admitted = decide::release_rule_matches(rules, &dist)
                || rules.exact.iter().any(|r| r.version == dist.version);
            if !admitted {
                let d = decide::DenyReason::VersionNotAllowed {
                    filename: f.filename.clone(),
                };
                out.files.push(FileCheck {
                    filename: f.filename.clone(),
                    sha256: None,
                    asked: true,
                    allowed: false,
                    reason: Some(d.code()),
                    explanation: d.to_string(),
                });
                continue;
            }
            let known = self.effective_hash(f)?;
            let sha = known.map(|(sha, _)| sha);
            let asked = hashes.is_empty() || sha.is_some_and(|s| hashes.contains(&s));
            let Some(sha) = sha else {
                out.files.push(FileCheck {
                    filename: f.filename.clone(),
                    sha256: None,
                    asked,
                    allowed: false,
                    reason: Some("not_yet_hashed"),
                    explanation: format!(
                        "{}: the upstream declares no hash and the gate is still hashing it; try again shortly",
                        f.filename
                    ),
                });
                continue;
            };
            let pin = self.pin_for(project, &f.filename)?;
            let provenance = self.provenance_of(ask.policy, rules, &dist, &sha)?;
            let facts = decide::Facts {
                pin: pin.as_ref(),
                provenance: provenance.as_ref(),
            };
            let decision = decide::decide_file(
                &ask.policy.policy,
                rules,
                self.wheels_only,
                &dist,
                &sha,
                facts,
                now,
            );
            let (allowed, reason, explanation) = match decision {
                Decision::Allow(_) => (true, None, format!("{} is served", f.filename)),
                Decision::Deny(d) => (false, Some(d.code()), d.to_string()),
            };
            out.files.push(FileCheck {
                filename: f.filename.clone(),
                sha256: Some(sha),
                asked,
                allowed,
                reason,
                explanation,
            });
        }
        let asked: Vec<&FileCheck> = out.files.iter().filter(|f| f.asked).collect();
        out.installable = asked.iter().any(|f| f.allowed);
        out.explanation = match (asked.iter().find(|f| f.allowed), asked.first()) {
            (Some(ok), _) => format!("{project} {version}: {} is served", ok.filename),
            // A refusal of the whole release already names it.
            (None, Some(first)) if first.reason == Some("vulnerable") => first.explanation.clone(),
            (None, Some(first)) => format!("{project} {version}: {}", first.explanation),
            (None, None) if out.files.is_empty() => format!(
                "{project} {version}: the upstream index {} lists no files of this release",
                rules.index
            ),
            (None, None) => format!(
                "{project} {version}: none of the upstream's {} file(s) of this release has the \
                 hash asked for (the requirement pins other bytes than the upstream serves)",
                out.files.len()
            ),
        };
        Ok(out)
    }
}
