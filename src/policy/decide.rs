//! The decision for one distribution file, as CONTRACT.md's rule semantics state it. Pure: every
//! fact (the file, its first-sight pin, the clock) is handed in.

use std::fmt;
use std::time::Duration;

use super::allowlist::{Policy, ProjectRules, Source};
use super::filename::{DistFilename, DistKind};
use super::hash::Sha256;
use super::name::ProjectName;
use super::publisher::{Evidence, Publisher};

/// What the gate recorded the first time it saw a file listed under a release rule.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Pin {
    pub sha256: Sha256,
    pub size: Option<u64>,
    /// Unix seconds the file's `min_age` clock started: its upload time, or first sight when the
    /// upstream gave none, or the moment a changed hash was first seen.
    pub clock_start: i64,
    pub first_seen: i64,
    /// The last time (Unix seconds, to the day) the file was served under this pin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_served: Option<i64>,
    /// Hashes this filename carried before; never served again under a release rule.
    #[serde(default)]
    pub superseded: Vec<Sha256>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Allowed {
    Exact(Source),
    Release(Source),
}

impl Allowed {
    pub fn source(&self) -> &Source {
        match self {
            Allowed::Exact(s) | Allowed::Release(s) => s,
        }
    }
}

/// Why a request is refused. Each renders to one sentence a person can act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DenyReason {
    NotAllowlisted(ProjectName),
    Revoked {
        sha256: Sha256,
        reason: String,
    },
    WheelsOnly(String),
    VersionNotAllowed {
        filename: String,
    },
    HashNotPinned {
        filename: String,
        sha256: Sha256,
    },
    NotYetSeen {
        filename: String,
    },
    SupersededPin {
        filename: String,
        sha256: Sha256,
    },
    TooNew {
        filename: String,
        remaining: Duration,
    },
    /// Advisories of the OSV database at or above `[vulnerabilities] block` (or of unknown
    /// severity) affect this release, and no unexpired exception names them.
    /// A rule admitting the file names a Trusted Publisher and its provenance has not been
    /// checked yet.
    ProvenanceUnchecked {
        filename: String,
    },
    /// Its provenance is missing, does not verify, or names another publisher.
    Provenance {
        filename: String,
        why: String,
    },
    Vulnerable {
        project: ProjectName,
        version: String,
        /// Each as "ID (level), fixed in X".
        findings: Vec<String>,
    },
}

impl DenyReason {
    /// A stable code for metrics labels and audit queries.
    pub fn code(&self) -> &'static str {
        match self {
            DenyReason::NotAllowlisted(_) => "not_allowlisted",
            DenyReason::Revoked { .. } => "revoked",
            DenyReason::WheelsOnly(_) => "wheels_only",
            DenyReason::VersionNotAllowed { .. } => "version_not_allowed",
            DenyReason::HashNotPinned { .. } => "hash_not_pinned",
            DenyReason::NotYetSeen { .. } => "not_yet_seen",
            DenyReason::SupersededPin { .. } => "superseded_pin",
            DenyReason::TooNew { .. } => "too_new",
            DenyReason::Vulnerable { .. } => "vulnerable",
            DenyReason::ProvenanceUnchecked { .. } => "provenance_unchecked",
            DenyReason::Provenance { .. } => "provenance",
        }
    }
}

fn human(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 86_400 {
        format!("{}d {}h", s / 86_400, (s % 86_400) / 3600)
    } else if s >= 3600 {
        format!("{}h {}m", s / 3600, (s % 3600) / 60)
    } else {
        format!("{}m {}s", s / 60, s % 60)
    }
}

impl fmt::Display for DenyReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DenyReason::NotAllowlisted(p) => write!(f, "project {p} is not on the allowlist; ask the security team to approve it"),
            DenyReason::Revoked { sha256, reason } => write!(f, "file sha256 {sha256} has been revoked: {reason}"),
            DenyReason::WheelsOnly(file) => write!(f, "{file} is a source distribution and this index serves wheels only"),
            DenyReason::VersionNotAllowed { filename } => write!(f, "{filename}: this release is not on the allowlist"),
            DenyReason::HashNotPinned { filename, sha256 } => write!(f, "{filename} with sha256 {sha256} is not a pinned file of an allowlisted release"),
            DenyReason::NotYetSeen { filename } => write!(f, "{filename} has not been pinned yet; it is pinned when the gate first lists it"),
            DenyReason::SupersededPin { filename, sha256 } => write!(f, "{filename} with sha256 {sha256} was replaced upstream by another hash and is never served again"),
            DenyReason::TooNew { filename, remaining } => write!(f, "{filename} is newer than the release rule's min_age; it becomes available in {}", human(*remaining)),
            DenyReason::ProvenanceUnchecked { filename } => write!(f, "{filename}: its rule names a Trusted Publisher and its provenance has not been checked yet; it is when the gate first lists it"),
            DenyReason::Provenance { filename, why } => write!(f, "{filename}: provenance: {why}"),
            DenyReason::Vulnerable { project, version, findings } => write!(f, "{project} {version}: {}", findings.join("; ")),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow(Allowed),
    Deny(DenyReason),
}

/// The project-level decision: a project on no rule is refused before anything is fetched.
pub fn decide_project<'a>(
    policy: &'a Policy,
    project: &ProjectName,
) -> Result<&'a ProjectRules, DenyReason> {
    policy
        .project(project)
        .ok_or_else(|| DenyReason::NotAllowlisted(project.clone()))
}

/// Does any release rule of the project admit this version? Such files get a first-sight pin.
pub fn release_rule_matches(rules: &ProjectRules, dist: &DistFilename) -> bool {
    rules
        .release
        .iter()
        .any(|r| r.specifiers.contains(&dist.version))
}

/// What the gate knows of one file besides its name and hash.
#[derive(Debug, Clone, Copy, Default)]
pub struct Facts<'a> {
    /// The first-sight record of this filename, if the gate has one.
    pub pin: Option<&'a Pin>,
    /// The file's PEP 740 provenance as checked (`None`: not fetched yet).
    pub provenance: Option<&'a Evidence>,
}

/// Decides one file of an admitted project; `now` is Unix seconds. A file the rules admit is
/// then held to the Trusted Publisher of the rules that admit it (unless one of them names
/// none: a union of rules) and to the vulnerability database.
pub fn decide_file(
    policy: &Policy,
    rules: &ProjectRules,
    wheels_only: bool,
    dist: &DistFilename,
    sha256: &Sha256,
    facts: Facts<'_>,
    now: i64,
) -> Decision {
    let admitting = match decide_rules(policy, rules, wheels_only, dist, sha256, facts.pin, now) {
        Ok(a) => a,
        Err(deny) => return Decision::Deny(deny),
    };
    let allowed = match admitting.iter().find(|(_, p)| p.is_none()) {
        Some((a, _)) => a.clone(),
        None => match published(&admitting, dist, facts.provenance) {
            Ok(a) => a,
            Err(deny) => return Decision::Deny(deny),
        },
    };
    match vulnerable(policy, dist, now) {
        Some(reason) => Decision::Deny(reason),
        None => Decision::Allow(allowed),
    }
}

/// Whether the file's verified provenance names the publisher of one of the rules admitting
/// it (each with a publisher).
fn published(
    admitting: &[(Allowed, Option<&Publisher>)],
    dist: &DistFilename,
    evidence: Option<&Evidence>,
) -> Result<Allowed, DenyReason> {
    let claims = match evidence {
        None => {
            return Err(DenyReason::ProvenanceUnchecked {
                filename: dist.filename.clone(),
            })
        }
        Some(Evidence::Failed(why)) => {
            return Err(DenyReason::Provenance {
                filename: dist.filename.clone(),
                why: why.clone(),
            })
        }
        Some(Evidence::Verified(c)) => c,
    };
    let mut why = Vec::new();
    for (allowed, publisher) in admitting {
        let Some(p) = publisher else { continue };
        for c in claims {
            match p.admits(c) {
                Ok(()) => return Ok(allowed.clone()),
                Err(e) => why.push(format!(
                    "the rule at {} wants {p}, but it was {e}",
                    allowed.source()
                )),
            }
        }
    }
    why.dedup();
    Err(DenyReason::Provenance {
        filename: dist.filename.clone(),
        why: why.join("; "),
    })
}

/// The refusal of a release the rules admit, when the vulnerability database in force names
/// it (CONTRACT.md `[vulnerabilities]`); `None` without a database or without findings.
pub fn vulnerable(policy: &Policy, dist: &DistFilename, now: i64) -> Option<DenyReason> {
    vulnerable_release(policy, &dist.project, &dist.version, now)
}

/// [`vulnerable`] for a release (project and version).
pub fn vulnerable_release(
    policy: &Policy,
    project: &ProjectName,
    version: &pep440_rs::Version,
    now: i64,
) -> Option<DenyReason> {
    let v = policy.vulnerabilities.as_ref()?;
    let findings = super::osv::refusals(
        v.db.of(project),
        project,
        version,
        v.block,
        &policy.exceptions,
        now,
    );
    (!findings.is_empty()).then(|| DenyReason::Vulnerable {
        project: project.clone(),
        version: version.to_string(),
        findings: findings.iter().map(ToString::to_string).collect(),
    })
}

/// When the next exception stops applying (Unix seconds), if one is in force: a listing that
/// depends on it is rendered again then.
pub fn next_expiry(policy: &Policy, now: i64) -> Option<i64> {
    policy
        .exceptions
        .iter()
        .map(|e| e.expires)
        .filter(|t| *t > now)
        .min()
}

/// The rules that admit the file (each with its publisher, if it names one), or why none does.
fn decide_rules<'r>(
    policy: &Policy,
    rules: &'r ProjectRules,
    wheels_only: bool,
    dist: &DistFilename,
    sha256: &Sha256,
    pin: Option<&Pin>,
    now: i64,
) -> Result<Vec<(Allowed, Option<&'r Publisher>)>, DenyReason> {
    // A revoked pin is refused whatever rule lists it.
    if let Some(r) = policy.revoked.get(sha256) {
        return Err(DenyReason::Revoked {
            sha256: *sha256,
            reason: r.reason.clone(),
        });
    }
    if wheels_only && dist.kind == DistKind::Sdist {
        return Err(DenyReason::WheelsOnly(dist.filename.clone()));
    }
    // Union of rules: every rule that admits the file is collected.
    let mut admitting = Vec::new();
    let mut exact_version_listed = false;
    for rule in &rules.exact {
        if rule.version == dist.version {
            exact_version_listed = true;
            if rule.sha256.contains(sha256) {
                admitting.push((Allowed::Exact(rule.source.clone()), rule.publisher.as_ref()));
            }
        }
    }
    let mut release_reason = None;
    for rule in &rules.release {
        if !rule.specifiers.contains(&dist.version) {
            continue;
        }
        let reason = match pin {
            None => DenyReason::NotYetSeen {
                filename: dist.filename.clone(),
            },
            // A hash the upstream replaced is never served again, even if it comes back.
            Some(p) if p.superseded.contains(sha256) => DenyReason::SupersededPin {
                filename: dist.filename.clone(),
                sha256: *sha256,
            },
            Some(p) if p.sha256 != *sha256 => {
                if p.superseded.contains(sha256) {
                    DenyReason::SupersededPin {
                        filename: dist.filename.clone(),
                        sha256: *sha256,
                    }
                } else {
                    DenyReason::HashNotPinned {
                        filename: dist.filename.clone(),
                        sha256: *sha256,
                    }
                }
            }
            Some(p) => {
                let age = now.saturating_sub(p.clock_start).max(0) as u64;
                let min = rule.min_age.as_secs();
                if age >= min {
                    admitting.push((
                        Allowed::Release(rule.source.clone()),
                        rule.publisher.as_ref(),
                    ));
                    continue;
                }
                DenyReason::TooNew {
                    filename: dist.filename.clone(),
                    remaining: Duration::from_secs(min - age),
                }
            }
        };
        release_reason.get_or_insert(reason);
    }
    if !admitting.is_empty() {
        return Ok(admitting);
    }
    Err(match release_reason {
        Some(r) => r,
        None if exact_version_listed => DenyReason::HashNotPinned {
            filename: dist.filename.clone(),
            sha256: *sha256,
        },
        None => DenyReason::VersionNotAllowed {
            filename: dist.filename.clone(),
        },
    })
}

/// The pin to record when a file of a release rule is seen listed. `declared` is the hash the
/// upstream gives (or the one the gate computed); `upload_time` is PEP 700's, if any.
/// Returns `None` when the existing pin stands unchanged.
pub fn next_pin(
    existing: Option<&Pin>,
    declared: &Sha256,
    size: Option<u64>,
    upload_time: Option<i64>,
    now: i64,
) -> Option<Pin> {
    let hex = *declared;
    match existing {
        // An old hash coming back does not become the pin again.
        Some(p) if p.superseded.contains(&hex) => None,
        // A file re-published this often is frozen at its pin: each change would otherwise
        // grow the record for ever (an upstream churning hashes on every fetch). New hashes
        // are then refused as not pinned.
        Some(p) if p.sha256 != hex && p.superseded.len() >= MAX_SUPERSEDED => None,
        Some(p) if p.sha256 == hex => {
            if p.size.is_none() && size.is_some() {
                let mut p = p.clone();
                p.size = size;
                Some(p)
            } else {
                None
            }
        }
        Some(p) => {
            // A changed hash restarts the clock from now: the upload time belongs to the old
            // bytes, and the old hash is remembered so it is never served again.
            let mut superseded = p.superseded.clone();
            superseded.push(p.sha256);
            Some(Pin {
                sha256: hex,
                size,
                clock_start: now,
                first_seen: now,
                last_served: None,
                superseded,
            })
        }
        None => Some(Pin {
            sha256: hex,
            size,
            // An upload time in the future is not believed.
            clock_start: upload_time.map(|t| t.min(now)).unwrap_or(now),
            first_seen: now,
            last_served: None,
            superseded: Vec::new(),
        }),
    }
}

/// Hashes a first-sight pin remembers as replaced, at most.
pub const MAX_SUPERSEDED: usize = 16;

/// May a first-sight pin go? Only when no release rule admits its file any more (the project
/// left the allowlist, or the rule's specifier moved on) and it was neither seen nor served for
/// `idle` seconds: a pin that still decides something is never pruned.
pub fn pin_prunable(
    rules: Option<&ProjectRules>,
    dist: Option<&DistFilename>,
    pin: &Pin,
    now: i64,
    idle: i64,
) -> bool {
    let admitted = match (rules, dist) {
        (Some(r), Some(d)) => release_rule_matches(r, d),
        _ => false,
    };
    let used = pin.first_seen.max(pin.last_served.unwrap_or(0));
    !admitted && now - used >= idle
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::allowlist::load;

    const H1: &str = "1111111111111111111111111111111111111111111111111111111111111111";
    const H2: &str = "2222222222222222222222222222222222222222222222222222222222222222";
    const H3: &str = "3333333333333333333333333333333333333333333333333333333333333333";
    const DAY: i64 = 86_400;

    fn policy(extra: &str) -> Policy {
        let text = format!(
            "[[package]]\nname = \"demo\"\nversion = \"1.0\"\nsha256 = [\"{H1}\"]\n\
             [[package]]\nname = \"demo\"\nspecifier = \">=2,<3\"\nmin_age = \"7d\"\n{extra}"
        );
        load(&[("a.toml".into(), text)], &["pypi".into()]).unwrap()
    }

    fn decide(
        p: &Policy,
        file: &str,
        sha: &str,
        pin: Option<&Pin>,
        wheels_only: bool,
        now: i64,
    ) -> Decision {
        let name = ProjectName::parse("demo").unwrap();
        let rules = decide_project(p, &name).unwrap();
        let dist = DistFilename::parse(file, &name).unwrap();
        decide_file(
            p,
            rules,
            wheels_only,
            &dist,
            &Sha256::parse(sha).unwrap(),
            Facts {
                pin,
                provenance: None,
            },
            now,
        )
    }

    #[test]
    fn a_publisher_rule_needs_verified_provenance_naming_it() {
        use crate::policy::publisher::{Claims, Evidence};
        let text = format!(
            "[[package]]\nname = \"demo\"\nversion = \"1.0\"\nsha256 = [\"{H1}\"]\npublisher = {{ google = \"sa@x.iam.gserviceaccount.com\" }}\n"
        );
        let p = load(&[("a.toml".into(), text.clone())], &["pypi".into()]).unwrap();
        let name = ProjectName::parse("demo").unwrap();
        let rules = decide_project(&p, &name).unwrap();
        let dist = DistFilename::parse("demo-1.0-py3-none-any.whl", &name).unwrap();
        let sha = Sha256::parse(H1).unwrap();
        let claims = |email: &str| Claims {
            identity: email.into(),
            issuer: None,
            extensions: [(8, "https://accounts.google.com".to_string())].into(),
            predicate_type: String::new(),
        };
        let with = |e: Option<&Evidence>| {
            let facts = Facts {
                pin: None,
                provenance: e,
            };
            code(decide_file(&p, rules, false, &dist, &sha, facts, 0))
        };
        assert_eq!(with(None), "provenance_unchecked");
        assert_eq!(with(Some(&Evidence::Failed("none".into()))), "provenance");
        assert_eq!(with(Some(&Evidence::Verified(vec![]))), "provenance");
        assert_eq!(
            with(Some(&Evidence::Verified(vec![claims(
                "other@x.iam.gserviceaccount.com"
            )]))),
            "provenance"
        );
        assert_eq!(
            with(Some(&Evidence::Verified(vec![
                claims("other@x.iam.gserviceaccount.com"),
                claims("sa@x.iam.gserviceaccount.com")
            ]))),
            "exact"
        );
        // A pin of another file of the release without a publisher does not lift the
        // publisher from this one (the rules used to merge into the first one's publisher).
        let other =
            format!("[[package]]\nname = \"demo\"\nversion = \"1.0\"\nsha256 = [\"{H2}\"]\n{text}");
        let p3 = load(&[("c.toml".into(), other)], &["pypi".into()]).unwrap();
        let rules3 = decide_project(&p3, &name).unwrap();
        assert_eq!(
            code(decide_file(
                &p3,
                rules3,
                false,
                &dist,
                &sha,
                Facts::default(),
                0
            )),
            "provenance_unchecked"
        );
        // A second rule admitting the file without a publisher: a union, no provenance needed.
        let both =
            format!("{text}[[package]]\nname = \"demo\"\nversion = \"1.0\"\nsha256 = [\"{H1}\"]\n");
        let p2 = load(&[("b.toml".into(), both)], &["pypi".into()]).unwrap();
        let rules2 = decide_project(&p2, &name).unwrap();
        let facts = Facts::default();
        assert_eq!(
            code(decide_file(&p2, rules2, false, &dist, &sha, facts, 0)),
            "exact"
        );
    }

    fn pin(sha: &str, clock_start: i64) -> Pin {
        Pin {
            sha256: Sha256::parse(sha).unwrap(),
            size: Some(10),
            clock_start,
            first_seen: clock_start,
            last_served: None,
            superseded: vec![],
        }
    }

    fn code(d: Decision) -> &'static str {
        match d {
            Decision::Allow(Allowed::Exact(_)) => "exact",
            Decision::Allow(Allowed::Release(_)) => "release",
            Decision::Deny(r) => r.code(),
        }
    }

    #[test]
    fn every_path() {
        let p = policy("");
        let now = 100 * DAY;
        let cases: Vec<(&str, &str, Option<Pin>, bool, &str)> = vec![
            ("demo-1.0-py3-none-any.whl", H1, None, false, "exact"),
            ("demo-1.0.tar.gz", H1, None, false, "exact"),
            ("demo-1.0.tar.gz", H1, None, true, "wheels_only"),
            (
                "demo-1.0-py3-none-any.whl",
                H2,
                None,
                false,
                "hash_not_pinned",
            ),
            // the pinned hash under another release's filename is not that release
            (
                "demo-1.1-py3-none-any.whl",
                H1,
                None,
                false,
                "version_not_allowed",
            ),
            (
                "demo-3.0-py3-none-any.whl",
                H1,
                None,
                false,
                "version_not_allowed",
            ),
            ("demo-2.0-py3-none-any.whl", H2, None, false, "not_yet_seen"),
            (
                "demo-2.0-py3-none-any.whl",
                H2,
                Some(pin(H2, now - 8 * DAY)),
                false,
                "release",
            ),
            (
                "demo-2.0-py3-none-any.whl",
                H2,
                Some(pin(H2, now - 6 * DAY)),
                false,
                "too_new",
            ),
            (
                "demo-2.0-py3-none-any.whl",
                H3,
                Some(pin(H2, now - 8 * DAY)),
                false,
                "hash_not_pinned",
            ),
            (
                "demo-2.0-py3-none-any.whl",
                H3,
                Some(Pin {
                    superseded: vec![Sha256::parse(H3).unwrap()],
                    ..pin(H2, now - 8 * DAY)
                }),
                false,
                "superseded_pin",
            ),
        ];
        for (file, sha, pin, wo, want) in cases {
            assert_eq!(
                code(decide(&p, file, sha, pin.as_ref(), wo, now)),
                want,
                "{file} {sha}"
            );
        }
    }

    #[test]
    fn revocation_beats_every_rule() {
        let p = policy(&format!(
            "[[revoke]]\nsha256 = \"{H1}\"\nreason = \"CVE-1\"\n"
        ));
        let d = decide(&p, "demo-1.0-py3-none-any.whl", H1, None, false, 0);
        assert_eq!(code(d.clone()), "revoked");
        if let Decision::Deny(r) = d {
            assert!(r.to_string().contains("CVE-1"));
        }
    }

    #[test]
    fn unlisted_project_is_denied() {
        let p = policy("");
        let r = decide_project(&p, &ProjectName::parse("evil").unwrap()).unwrap_err();
        assert_eq!(
            r.to_string(),
            "project evil is not on the allowlist; ask the security team to approve it"
        );
    }

    #[test]
    fn pins_follow_first_sight_and_restart_on_change() {
        let h1 = Sha256::parse(H1).unwrap();
        let h2 = Sha256::parse(H2).unwrap();
        let first = next_pin(None, &h1, Some(5), Some(10), 1000).unwrap();
        assert_eq!((first.clock_start, first.first_seen), (10, 1000));
        assert_eq!(next_pin(Some(&first), &h1, Some(5), Some(10), 2000), None);
        let future = next_pin(None, &h1, None, Some(5000), 1000).unwrap();
        assert_eq!(future.clock_start, 1000);
        let changed = next_pin(Some(&first), &h2, Some(6), Some(10), 3000).unwrap();
        assert_eq!(
            (changed.sha256.to_string().as_str(), changed.clock_start),
            (H2, 3000)
        );
        assert_eq!(changed.superseded, vec![Sha256::parse(H1).unwrap()]);
        // A -> B -> A: the old hash is not adopted again, and stays refused.
        assert_eq!(next_pin(Some(&changed), &h1, Some(5), Some(10), 4000), None);
        let p = policy("");
        let back = decide(
            &p,
            "demo-2.0-py3-none-any.whl",
            H1,
            Some(&Pin {
                clock_start: 0,
                ..changed
            }),
            false,
            100 * DAY,
        );
        assert_eq!(code(back), "superseded_pin");
    }

    #[test]
    fn only_idle_pins_no_rule_admits_are_prunable() {
        let p = policy("");
        let name = ProjectName::parse("demo").unwrap();
        let rules = decide_project(&p, &name).ok();
        let admitted = DistFilename::parse("demo-2.1-py3-none-any.whl", &name).unwrap();
        let dropped = DistFilename::parse("demo-3.0-py3-none-any.whl", &name).unwrap();
        let mut old = pin(H2, 0);
        let now = 400 * DAY;
        assert!(!pin_prunable(rules, Some(&admitted), &old, now, 90 * DAY));
        assert!(pin_prunable(rules, Some(&dropped), &old, now, 90 * DAY));
        assert!(pin_prunable(None, Some(&admitted), &old, now, 90 * DAY));
        old.last_served = Some(now - DAY);
        assert!(!pin_prunable(rules, Some(&dropped), &old, now, 90 * DAY));
    }

    #[test]
    fn a_churning_file_freezes_at_its_pin() {
        let mut p: Option<Pin> = None;
        for i in 0..40u8 {
            let sha = Sha256::parse(&format!("{:02x}", i).repeat(32)).unwrap();
            if let Some(next) = next_pin(p.as_ref(), &sha, Some(1), None, i as i64) {
                p = Some(next);
            }
        }
        let p = p.unwrap();
        assert_eq!(p.superseded.len(), MAX_SUPERSEDED);
        assert_eq!(
            p.sha256.to_string(),
            format!("{:02x}", MAX_SUPERSEDED).repeat(32)
        );
    }
}
