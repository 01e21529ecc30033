//! The allowlist model: `[[package]]` rules (and `[[revoke]]` entries) parsed from TOML text,
//! validated with file:line errors, and combined into one [`Policy`].
//!
//! Pure: the caller reads the files; this module only sees their text.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use pep440_rs::{Version, VersionSpecifiers};
use serde::Deserialize;
use toml::Spanned;

use super::hash::Sha256;
use super::name::ProjectName;
use super::oci::{
    AttestationRule, Digest, ImageRule, KeylessIdentity, RepoPattern, Repository, Require,
    SignatureRule, SubjectMatch, Tag,
};
use super::osv::{Database, Exception, Level};
use super::publisher::Publisher;
use super::units::parse_duration;

/// Where a rule was written: shown in errors, decisions and audit events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub file: String,
    pub line: usize,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file, self.line)
    }
}

/// One problem in one allowlist file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadError {
    pub file: String,
    pub line: usize,
    pub message: String,
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.file, self.line, self.message)
    }
}

/// An exact, hash-pinned release: only files of `version` whose sha256 is in `sha256`.
#[derive(Debug, Clone)]
pub struct ExactRule {
    pub version: Version,
    /// Never empty: the loader refuses an empty pin set.
    pub sha256: BTreeSet<Sha256>,
    /// The Trusted Publisher the files' provenance must name, if any.
    pub publisher: Option<Publisher>,
    pub source: Source,
}

/// A release rule: files of matching releases are pinned at first sight and listed once older
/// than `min_age`.
#[derive(Debug, Clone)]
pub struct ReleaseRule {
    pub specifiers: VersionSpecifiers,
    pub min_age: Duration,
    /// New releases are admitted only when their provenance names this publisher.
    pub publisher: Option<Publisher>,
    pub source: Source,
}

/// All rules for one project. A project is bound to exactly one upstream index.
#[derive(Debug, Clone)]
pub struct ProjectRules {
    pub index: String,
    pub exact: Vec<ExactRule>,
    pub release: Vec<ReleaseRule>,
}

#[derive(Debug, Clone)]
pub struct Revocation {
    pub reason: String,
    pub source: Source,
}

/// The policy in force: every project rule and revocation, from every allowlist file.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    pub projects: BTreeMap<ProjectName, ProjectRules>,
    pub revoked: HashMap<Sha256, Revocation>,
    pub images: Vec<ImageRule>,
    pub files: usize,
    /// `[[vulnerability_exception]]`: advisories let through, each until it expires.
    pub exceptions: Vec<Exception>,
    /// The OSV database and threshold in force (`[vulnerabilities]`), set by the loader.
    pub vulnerabilities: Option<std::sync::Arc<Vulnerabilities>>,
}

/// `[vulnerabilities]` as loaded: the database and the level at or above which an affected
/// release is refused.
#[derive(Debug)]
pub struct Vulnerabilities {
    pub db: std::sync::Arc<Database>,
    pub block: Level,
}

impl ProjectRules {
    /// Does any rule name a Trusted Publisher (so the project's files need provenance)?
    pub fn wants_provenance(&self) -> bool {
        self.exact.iter().any(|r| r.publisher.is_some())
            || self.release.iter().any(|r| r.publisher.is_some())
    }
}

impl Policy {
    pub fn project(&self, name: &ProjectName) -> Option<&ProjectRules> {
        self.projects.get(name)
    }

    /// Adds the rules of `other` (rules made through the admin API) to this policy (the files'
    /// rules). CONTRACT.md: git and API copies of one rule are one rule, git's copy kept; a
    /// project bound to another index, or a repository that already has a different rule, is
    /// a conflict.
    pub fn merge(&mut self, other: Policy) -> Result<(), String> {
        for (name, rules) in other.projects {
            match self.projects.get_mut(&name) {
                None => {
                    self.projects.insert(name, rules);
                }
                Some(mine) => {
                    if mine.index != rules.index {
                        return Err(format!(
                            "project {name} is bound to index {:?} by {}; a rule for index {:?} would be dependency confusion",
                            mine.index,
                            mine.exact
                                .first()
                                .map(|r| &r.source)
                                .or(mine.release.first().map(|r| &r.source))
                                .map(|s| s.to_string())
                                .unwrap_or_default(),
                            rules.index
                        ));
                    }
                    for r in rules.exact {
                        if !mine.exact.iter().any(|m| {
                            m.version == r.version
                                && m.sha256 == r.sha256
                                && m.publisher == r.publisher
                        }) {
                            mine.exact.push(r);
                        }
                    }
                    for r in rules.release {
                        if !mine.release.iter().any(|m| {
                            m.specifiers.to_string() == r.specifiers.to_string()
                                && m.min_age == r.min_age
                        }) {
                            mine.release.push(r);
                        }
                    }
                }
            }
        }
        for rule in other.images {
            match self.images.iter().find(|m| m.pattern == rule.pattern) {
                None => self.images.push(rule),
                Some(m) if m.same_as(&rule) => {}
                Some(m) => {
                    return Err(format!(
                        "{} already has a different rule at {}; change that one instead",
                        rule.pattern, m.source
                    ))
                }
            }
        }
        for (sha, r) in other.revoked {
            self.revoked.entry(sha).or_insert(r);
        }
        for e in other.exceptions {
            if !self
                .exceptions
                .iter()
                .any(|m| m.id.eq_ignore_ascii_case(&e.id) && m.package == e.package)
            {
                self.exceptions.push(e);
            }
        }
        Ok(())
    }

    pub fn exact_count(&self) -> usize {
        self.projects.values().map(|p| p.exact.len()).sum()
    }

    pub fn release_count(&self) -> usize {
        self.projects.values().map(|p| p.release.len()).sum()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    package: Vec<Spanned<RawPackage>>,
    #[serde(default)]
    revoke: Vec<Spanned<RawRevoke>>,
    #[serde(default)]
    image: Vec<Spanned<RawImage>>,
    #[serde(default)]
    vulnerability_exception: Vec<Spanned<super::osv::RawException>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawImage {
    repository: String,
    tags: Option<Vec<String>>,
    digests: Option<Vec<String>>,
    require: Option<String>,
    signed_identity: Option<String>,
    signature: Option<RawSignature>,
    #[serde(default)]
    attestation: Vec<RawAttestation>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSignature {
    keys: Option<Vec<String>>,
    keyless: Option<Vec<RawKeyless>>,
    threshold: Option<i64>,
    per_platform: Option<bool>,
    require_tlog: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKeyless {
    issuer: String,
    subject: Option<String>,
    subject_regex: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAttestation {
    predicate_type: String,
    keys: Option<Vec<String>>,
    keyless: Option<Vec<RawKeyless>>,
    require_tlog: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPackage {
    name: String,
    version: Option<String>,
    sha256: Option<Vec<String>>,
    specifier: Option<String>,
    min_age: Option<String>,
    index: Option<String>,
    publisher: Option<super::publisher::RawPublisher>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRevoke {
    sha256: String,
    reason: Option<String>,
}

/// Byte offset → 1-based line, by binary search over the line starts (linear per file, so a
/// 10,000-rule file loads in milliseconds).
pub(crate) struct Lines(Vec<usize>);

impl Lines {
    pub(crate) fn new(text: &str) -> Lines {
        let mut starts = vec![0];
        starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        Lines(starts)
    }

    pub(crate) fn of(&self, offset: usize) -> usize {
        self.0.partition_point(|s| *s <= offset)
    }
}

/// The keys and keyless identities of a signature or attestation requirement: never none, key
/// names plain file names in `keys/`, nothing listed twice, identities well formed.
fn signers(
    pattern: &RepoPattern,
    what: &str,
    keys: &Option<Vec<String>>,
    keyless: &Option<Vec<RawKeyless>>,
) -> Result<(Vec<String>, Vec<KeylessIdentity>), String> {
    let keys = keys.clone().unwrap_or_default();
    let raw_keyless = keyless.as_deref().unwrap_or_default();
    if keys.is_empty() && raw_keyless.is_empty() {
        return Err(format!("{pattern}: {what} names no keys and no keyless identities; a signature no one may make admits nothing"));
    }
    let mut seen = std::collections::BTreeSet::new();
    for k in &keys {
        let plain = !k.is_empty() && !k.starts_with('.') && !k.contains(['/', '\\', '\0']);
        if !plain {
            return Err(format!(
                "{pattern}: key {k:?} must be a file name in the keys/ folder"
            ));
        }
        if !seen.insert(k.clone()) {
            return Err(format!("{pattern}: key {k:?} is listed twice"));
        }
    }
    let mut identities = Vec::new();
    let mut seen_ids = std::collections::BTreeSet::new();
    for k in raw_keyless {
        let issuer = k.issuer.trim();
        if issuer.is_empty() {
            return Err(format!(
                "{pattern}: {what}: a keyless identity needs an issuer"
            ));
        }
        let id = match (&k.subject, &k.subject_regex) {
            (Some(s), None) if !s.is_empty() => KeylessIdentity {
                issuer: issuer.to_string(),
                subject: SubjectMatch::Exact(s.clone()),
            },
            (None, Some(re)) if !re.is_empty() => KeylessIdentity::new_regex(issuer, re)
                .map_err(|e| format!("{pattern}: {what}: {e}"))?,
            _ => {
                return Err(format!("{pattern}: {what}: a keyless identity needs exactly one of subject and subject_regex, not empty"))
            }
        };
        if !seen_ids.insert(id.to_string()) {
            return Err(format!(
                "{pattern}: {what}: keyless identity {id} is listed twice"
            ));
        }
        identities.push(id);
    }
    Ok((keys, identities))
}

fn image_rule(raw: &RawImage, source: Source, registries: &[String]) -> Result<ImageRule, String> {
    let pattern =
        RepoPattern::parse(&raw.repository).map_err(|e| format!("[[image]] repository: {e}"))?;
    let registry = match &pattern {
        RepoPattern::Exact(r) => r.registry.clone(),
        RepoPattern::Below { registry, .. } => registry.clone(),
    };
    if !registries.contains(&registry) {
        return Err(format!(
            "{pattern}: registry {registry} is not configured in [[oci.registry]]"
        ));
    }
    let signature = match &raw.signature {
        None => None,
        Some(sig) => {
            let (keys, keyless) = signers(&pattern, "[image.signature]", &sig.keys, &sig.keyless)?;
            let count = keys.len() + keyless.len();
            let threshold = sig.threshold.unwrap_or(1);
            if threshold < 1 || threshold as usize > count {
                return Err(format!("{pattern}: threshold {threshold} must be between 1 and the number of signers ({count}: keys and keyless identities)"));
            }
            Some(SignatureRule {
                threshold: threshold as usize,
                keys,
                keyless,
                per_platform: sig.per_platform.unwrap_or(false),
                require_tlog: sig.require_tlog.unwrap_or(false),
            })
        }
    };
    let mut attestations = Vec::new();
    for a in &raw.attestation {
        let predicate_type = a.predicate_type.trim();
        if predicate_type.is_empty() {
            return Err(format!(
                "{pattern}: [[image.attestation]] predicate_type is empty"
            ));
        }
        let what = format!("[[image.attestation]] {predicate_type}");
        let (keys, keyless) = signers(&pattern, &what, &a.keys, &a.keyless)?;
        attestations.push(AttestationRule {
            predicate_type: predicate_type.to_string(),
            keys,
            keyless,
            require_tlog: a.require_tlog.unwrap_or(false),
        });
    }
    let require = match raw.require.as_deref() {
        None | Some("all") => Require::All,
        Some("any") => Require::Any,
        Some(req) => {
            return Err(format!(
                "{pattern}: require must be \"all\" or \"any\", not {req:?}"
            ))
        }
    };
    let signed_identity = match &raw.signed_identity {
        None => None,
        Some(id) => {
            Some(Repository::parse(id).map_err(|e| format!("{pattern}: signed_identity: {e}"))?)
        }
    };
    let tags = match &raw.tags {
        None => None,
        Some(list) => Some(
            list.iter()
                .map(|t| Tag::parse(t))
                .collect::<Result<std::collections::BTreeSet<_>, _>>()
                .map_err(|e| format!("{pattern}: {e}"))?,
        ),
    };
    let list = raw.digests.clone().unwrap_or_default();
    if list.is_empty() && signature.is_none() {
        return Err(format!("{pattern}: a rule needs pinned digests (digests = [\"sha256:…\"]) or [image.signature]"));
    }
    let mut digests = std::collections::BTreeSet::new();
    for d in &list {
        let d = Digest::parse(d).map_err(|e| format!("{pattern}: {e}"))?;
        if !digests.insert(d) {
            return Err(format!("{pattern}: digest {d} is listed twice"));
        }
    }
    Ok(ImageRule {
        signature,
        attestations,
        require,
        signed_identity,
        pattern,
        tags,
        digests,
        source,
    })
}

enum Rule {
    Exact(ExactRule),
    Release(ReleaseRule),
}

/// Builds the policy from the text of every allowlist file. `indexes` are the configured
/// upstream index names, the default first. Returns every error found, not just the first, so
/// an operator fixes a file in one pass.
pub fn load(files: &[(String, String)], indexes: &[String]) -> Result<Policy, Vec<LoadError>> {
    load_with_registries(files, indexes, &[])
}

/// As [`load`], with the configured OCI registry hosts that `[[image]]` rules may name.
pub fn load_with_registries(
    files: &[(String, String)],
    indexes: &[String],
    registries: &[String],
) -> Result<Policy, Vec<LoadError>> {
    let mut errors = Vec::new();
    let mut policy = Policy {
        files: files.len(),
        ..Policy::default()
    };
    // Where each project's index binding was first stated, for conflict messages.
    let mut bound_at: HashMap<ProjectName, (String, Source, bool)> = HashMap::new();
    let default_index = indexes.first().cloned().unwrap_or_default();

    for (file, text) in files {
        let lines = Lines::new(text);
        let line_of = |_: &str, offset: usize| lines.of(offset);
        let raw: RawFile = match toml::from_str(text) {
            Ok(r) => r,
            Err(e) => {
                let line = e.span().map(|s| line_of(text, s.start)).unwrap_or(1);
                let message = e.message().replace('\n', " ");
                errors.push(LoadError {
                    file: file.clone(),
                    line,
                    message,
                });
                continue;
            }
        };
        let err = |errors: &mut Vec<LoadError>, span: std::ops::Range<usize>, message: String| {
            errors.push(LoadError {
                file: file.clone(),
                line: line_of(text, span.start),
                message,
            })
        };
        for img in &raw.image {
            let span = img.span();
            let source = Source {
                file: file.clone(),
                line: line_of(text, span.start),
            };
            match image_rule(img.get_ref(), source, registries) {
                Ok(rule) => {
                    if let Some(prev) = policy.images.iter().find(|r| r.pattern == rule.pattern) {
                        err(&mut errors, span, format!("{}: a second rule for this repository (first at {}); one rule per repository", rule.pattern, prev.source));
                    } else {
                        policy.images.push(rule);
                    }
                }
                Err(m) => err(&mut errors, span, m),
            }
        }
        for rv in &raw.revoke {
            let span = rv.span();
            let rv = rv.get_ref();
            match Sha256::parse(&rv.sha256) {
                Ok(h) => {
                    let source = Source {
                        file: file.clone(),
                        line: line_of(text, span.start),
                    };
                    policy.revoked.entry(h).or_insert(Revocation {
                        reason: rv.reason.clone().unwrap_or_else(|| "revoked".into()),
                        source,
                    });
                }
                Err(e) => err(&mut errors, span, format!("[[revoke]]: {e}")),
            }
        }
        for ex in &raw.vulnerability_exception {
            let span = ex.span();
            let source = Source {
                file: file.clone(),
                line: line_of(text, span.start),
            };
            match super::osv::exception(ex.get_ref(), source) {
                Ok(e) => match policy.exceptions.iter().find(|m| m.id.eq_ignore_ascii_case(&e.id) && m.package == e.package) {
                    Some(m) => err(&mut errors, span, format!("[[vulnerability_exception]] {}: a second exception for this advisory (first at {})", e.id, m.source)),
                    None => policy.exceptions.push(e),
                },
                Err(m) => err(&mut errors, span, m),
            }
        }
        for pkg in &raw.package {
            let span = pkg.span();
            let source = Source {
                file: file.clone(),
                line: line_of(text, span.start),
            };
            let pkg = pkg.get_ref();
            let name = match ProjectName::parse(&pkg.name) {
                Ok(n) => n,
                Err(e) => {
                    err(&mut errors, span, e.to_string());
                    continue;
                }
            };
            let publisher = match pkg.publisher.as_ref().map(|p| p.parse()).transpose() {
                Ok(p) => p,
                Err(e) => {
                    err(&mut errors, span, format!("{name}: {e}"));
                    continue;
                }
            };
            let explicit_index = pkg.index.is_some();
            let index = pkg.index.clone().unwrap_or_else(|| default_index.clone());
            if !indexes.contains(&index) {
                err(
                    &mut errors,
                    span.clone(),
                    format!(
                        "{name}: index {index:?} is not configured (configured: {})",
                        indexes.join(", ")
                    ),
                );
                continue;
            }
            let rule = match (&pkg.version, &pkg.sha256, &pkg.specifier, &pkg.min_age) {
                (Some(v), Some(hashes), None, None) => {
                    let version = match Version::from_str(v) {
                        Ok(v) => v,
                        Err(e) => {
                            err(
                                &mut errors,
                                span,
                                format!("{name}: version {v:?} is not a PEP 440 version: {e}"),
                            );
                            continue;
                        }
                    };
                    if hashes.is_empty() {
                        err(&mut errors, span, format!("{name} {v}: sha256 is empty; an exact release needs at least one pinned hash"));
                        continue;
                    }
                    let mut set = BTreeSet::new();
                    let mut bad = false;
                    for h in hashes {
                        match Sha256::parse(h.strip_prefix("sha256:").unwrap_or(h)) {
                            Ok(h) => {
                                if !set.insert(h) {
                                    err(
                                        &mut errors,
                                        span.clone(),
                                        format!("{name} {v}: sha256 {h} is listed twice"),
                                    );
                                    bad = true;
                                }
                            }
                            Err(e) => {
                                err(&mut errors, span.clone(), format!("{name} {v}: {e}"));
                                bad = true;
                            }
                        }
                    }
                    if bad {
                        continue;
                    }
                    Rule::Exact(ExactRule {
                        version,
                        sha256: set,
                        publisher,
                        source: source.clone(),
                    })
                }
                (None, None, Some(spec), min_age) => {
                    let specifiers = match VersionSpecifiers::from_str(spec) {
                        Ok(s) if !spec.trim().is_empty() => s,
                        Ok(_) => {
                            err(&mut errors, span, format!("{name}: specifier is empty; write the releases it admits, e.g. \">=2.0,<3\""));
                            continue;
                        }
                        Err(e) => {
                            err(
                                &mut errors,
                                span,
                                format!(
                                    "{name}: specifier {spec:?} is not a PEP 440 specifier: {e}"
                                ),
                            );
                            continue;
                        }
                    };
                    let Some(min_age) = min_age else {
                        err(
                            &mut errors,
                            span,
                            format!("{name}: a release rule needs min_age (e.g. \"7d\")"),
                        );
                        continue;
                    };
                    let min_age = match parse_duration(min_age) {
                        Ok(d) => d,
                        Err(e) => {
                            err(&mut errors, span, format!("{name}: min_age: {e}"));
                            continue;
                        }
                    };
                    if indexes.len() > 1 && !explicit_index {
                        err(&mut errors, span, format!("{name}: a release rule must name its index when more than one is configured"));
                        continue;
                    }
                    Rule::Release(ReleaseRule {
                        specifiers,
                        min_age,
                        publisher,
                        source: source.clone(),
                    })
                }
                _ => {
                    err(
                        &mut errors,
                        span,
                        format!("{name}: a [[package]] is either an exact release (version and sha256) or a release rule (specifier and min_age)"),
                    );
                    continue;
                }
            };

            // One index per project: a second index for the same project is the dependency
            // confusion this gate exists to prevent, so it is a load error, not a union.
            match bound_at.get(&name) {
                Some((first_index, first_src, _)) if *first_index != index => {
                    err(
                        &mut errors,
                        span,
                        format!("{name}: bound to index {index:?} here but to {first_index:?} at {first_src}; a project comes from one index only"),
                    );
                    continue;
                }
                Some(_) => {}
                None => {
                    bound_at.insert(
                        name.clone(),
                        (index.clone(), source.clone(), explicit_index),
                    );
                }
            }
            let entry = policy
                .projects
                .entry(name.clone())
                .or_insert_with(|| ProjectRules {
                    index: index.clone(),
                    exact: Vec::new(),
                    release: Vec::new(),
                });
            match rule {
                Rule::Exact(r) => {
                    // Union of rules: two files pinning files of one release add up.
                    // Only rules with the same publisher (or none) merge: a pin without one
                    // must not lift the publisher another rule requires of its own files.
                    if let Some(prev) = entry
                        .exact
                        .iter_mut()
                        .find(|p| p.version == r.version && p.publisher == r.publisher)
                    {
                        prev.sha256.extend(r.sha256);
                        continue;
                    }
                    entry.exact.push(r);
                }
                Rule::Release(r) => {
                    if let Some(prev) = entry.release.iter().find(|p| p.specifiers == r.specifiers)
                    {
                        err(
                            &mut errors,
                            span,
                            format!(
                                "{name}: duplicate release rule {:?} (first at {})",
                                r.specifiers.to_string(),
                                prev.source
                            ),
                        );
                        continue;
                    }
                    entry.release.push(r);
                }
            }
        }
    }
    if errors.is_empty() {
        Ok(policy)
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H1: &str = "1111111111111111111111111111111111111111111111111111111111111111";
    const H2: &str = "2222222222222222222222222222222222222222222222222222222222222222";

    fn one(text: &str) -> Result<Policy, Vec<LoadError>> {
        load(&[("a.toml".into(), text.into())], &["pypi".into()])
    }

    fn first_error(text: &str) -> String {
        one(text).unwrap_err()[0].to_string()
    }

    #[test]
    fn vulnerability_exceptions_need_a_reason_and_an_expiry() {
        let p = one("[[vulnerability_exception]]\nid = \"GHSA-xxxx\"\nreason = \"not reachable\"\nexpires = \"2027-01-31\"\n[[vulnerability_exception]]\nid = \"CVE-1\"\nreason = \"r\"\nexpires = 2027-01-31\n").unwrap();
        // A date expires at its first instant (00:00 UTC), quoted or a TOML date.
        assert_eq!(p.exceptions[0].expires, 1_801_353_600);
        assert_eq!(p.exceptions[1].expires, 1_801_353_600);
        assert_eq!(p.exceptions[0].source.line, 1);
        for (text, why) in [
            (
                "id = \"X\"\nexpires = \"2027-01-31\"",
                "missing field `reason`",
            ),
            (
                "id = \"X\"\nreason = \" \"\nexpires = \"2027-01-31\"",
                "reason is empty",
            ),
            ("id = \"X\"\nreason = \"r\"", "missing field `expires`"),
            (
                "id = \"X\"\nreason = \"r\"\nexpires = \"soon\"",
                "is not a date",
            ),
            (
                "id = \"\"\nreason = \"r\"\nexpires = \"2027-01-31\"",
                "not an advisory id",
            ),
        ] {
            let e = first_error(&format!("[[vulnerability_exception]]\n{text}\n"));
            assert!(e.contains(why), "{text}: {e}");
        }
        let twice = "[[vulnerability_exception]]\nid = \"GHSA-x\"\nreason = \"r\"\nexpires = \"2027-01-31\"\n";
        assert!(
            first_error(&format!("{twice}{}", twice.replace("GHSA-x", "ghsa-X")))
                .contains("a second exception for this advisory (first at a.toml:1)")
        );
    }

    #[test]
    fn loads_exact_and_release_rules() {
        let p = one(&format!(
            "[[package]]\nname = \"NumPy\"\nversion = \"2.4.6\"\nsha256 = [\"{H1}\", \"sha256:{H2}\"]\n\n\
             [[package]]\nname = \"numpy\"\nspecifier = \">=3\"\nmin_age = \"7d\"\n"
        ))
        .unwrap();
        let np = p.project(&ProjectName::parse("numpy").unwrap()).unwrap();
        assert_eq!(np.index, "pypi");
        assert_eq!(np.exact[0].sha256.len(), 2);
        assert_eq!(np.exact[0].source.line, 1);
        assert_eq!(np.release[0].min_age, Duration::from_secs(7 * 86400));
        assert_eq!(np.release[0].source.line, 6);
    }

    #[test]
    fn errors_name_file_and_line() {
        assert_eq!(
            first_error("\n\n[[package]]\nname = \"numpy\"\nversion = \"1.0\"\nsha256 = []\n"),
            "a.toml:3: numpy 1.0: sha256 is empty; an exact release needs at least one pinned hash"
        );
        assert!(first_error(
            "[[package]]\nname = \"numpy\"\nversion = \"1.0\"\nsha256 = [\"abc\"]\n"
        )
        .starts_with("a.toml:1: numpy 1.0: \"abc\" is not a sha256"));
        assert!(
            first_error("[[package]]\nname = \"-bad\"\nversion = \"1.0\"\nsha256 = [\"x\"]\n")
                .contains("not a valid project name")
        );
        assert!(
            first_error("[[package]]\nname = \"a\"\nspecifier = \">=1\"\n")
                .contains("needs min_age")
        );
        assert!(
            first_error("[[package]]\nname = \"a\"\nspecifier = \"~~1\"\nmin_age = \"1d\"\n")
                .contains("not a PEP 440 specifier")
        );
        assert!(first_error(
            "[[package]]\nname = \"a\"\nspecifier = \">=1\"\nmin_age = \"soon\"\n"
        )
        .contains("min_age"));
        assert!(
            first_error("[[package]]\nname = \"a\"\nversion = \"1.0\"\nspecifier = \">=1\"\n")
                .contains("either an exact release")
        );
        assert!(first_error("[[package]]\nname = \"a\"\nversion = \"1.0\"\nsha256 = [\"{H1}\"]\nindex = \"other\"\n").contains("not configured"));
        assert!(first_error("[[package]]\nname = \"a\"\nbogus = 1\n").starts_with("a.toml:3:"));
        assert!(first_error("[[package]\n").starts_with("a.toml:1:"));
        assert!(first_error(&format!(
            "[[image]]\nrepository = \"nvcr.io/nvidia/cuda\"\ndigests = [\"sha256:{H1}\"]\n"
        ))
        .contains("not configured in [[oci.registry]]"));
    }

    #[test]
    fn duplicates_and_conflicts_are_errors() {
        let union = format!(
            "[[package]]\nname = \"a\"\nversion = \"1.0\"\nsha256 = [\"{H1}\"]\n[[package]]\nname = \"A\"\nversion = \"1.0\"\nsha256 = [\"{H2}\"]\n"
        );
        let p = one(&union).unwrap();
        assert_eq!(p.projects.values().next().unwrap().exact[0].sha256.len(), 2);
        let twice = format!(
            "[[package]]\nname = \"a\"\nversion = \"1.0\"\nsha256 = [\"{H1}\", \"{H1}\"]\n"
        );
        assert!(one(&twice).unwrap_err()[0].message.contains("listed twice"));
        let confused = load(
            &[
                ("a.toml".into(), format!("[[package]]\nname = \"a\"\nversion = \"1.0\"\nsha256 = [\"{H1}\"]\nindex = \"pypi\"\n")),
                ("b.toml".into(), format!("[[package]]\nname = \"a\"\nversion = \"2.0\"\nsha256 = [\"{H2}\"]\nindex = \"private\"\n")),
            ],
            &["pypi".into(), "private".into()],
        )
        .unwrap_err();
        assert_eq!(confused.len(), 1);
        assert!(confused[0].to_string().starts_with(
            "b.toml:1: a: bound to index \"private\" here but to \"pypi\" at a.toml:1"
        ));
        let need_index = load(
            &[(
                "a.toml".into(),
                "[[package]]\nname = \"a\"\nspecifier = \">=1\"\nmin_age = \"1d\"\n".into(),
            )],
            &["pypi".into(), "private".into()],
        )
        .unwrap_err();
        assert!(need_index[0].message.contains("must name its index"));
    }

    #[test]
    fn collects_every_error_and_revocations() {
        let errs = one(
            "[[package]]\nname = \"a\"\n[[package]]\nname = \"b\"\n[[revoke]]\nsha256 = \"zz\"\n",
        )
        .unwrap_err();
        assert_eq!(errs.len(), 3);
        let p = one(&format!(
            "[[revoke]]\nsha256 = \"{H1}\"\nreason = \"CVE-2099-1\"\n"
        ))
        .unwrap();
        assert_eq!(p.revoked[&Sha256::parse(H1).unwrap()].reason, "CVE-2099-1");
    }

    #[test]
    fn image_rules() {
        let reg = |text: &str| {
            load_with_registries(
                &[("i.toml".into(), text.into())],
                &["pypi".into()],
                &["nvcr.io".into(), "docker.io".into()],
            )
        };
        let d = format!("sha256:{H1}");
        let p = reg(&format!("[[image]]\nrepository = \"nvcr.io/nvidia/*\"\ndigests = [\"{d}\"]\n[[image]]\nrepository = \"docker.io/ubuntu\"\ntags = [\"24.04\"]\ndigests = [\"{d}\"]\n")).unwrap();
        let signed = reg("[[image]]\nrepository = \"nvcr.io/a\"\n[image.signature]\nkeys = [\"k.pub\"]\nkeyless = [{ issuer = \"https://i\", subject_regex = \"^x.*$\" }]\nthreshold = 2\n[[image.attestation]]\npredicate_type = \"https://slsa.dev/provenance/v1\"\nkeyless = [{ issuer = \"https://i\", subject = \"b@example.com\" }]\n").unwrap();
        let r = &signed.images[0];
        assert_eq!(
            r.signature
                .as_ref()
                .map(|s| (s.keys.len(), s.keyless.len(), s.threshold)),
            Some((1, 1, 2))
        );
        assert_eq!(r.attestations.len(), 1);
        assert_eq!(
            r.attestations[0].predicate_type,
            "https://slsa.dev/provenance/v1"
        );
        assert_eq!(p.images.len(), 2);
        assert_eq!(p.images[1].pattern.to_string(), "docker.io/library/ubuntu");
        for (text, want) in [
            ("[[image]]\nrepository = \"nvcr.io/nvidia/cuda\"\n".to_string(), "needs pinned digests"),
            ("[[image]]\nrepository = \"nvcr.io/nvidia/cuda\"\ndigests = []\n".to_string(), "needs pinned digests"),
            ("[[image]]\nrepository = \"nvcr.io/nvidia/cuda\"\ndigests = [\"sha256:zz\"]\n".to_string(), "not a sha256 digest"),
            (format!("[[image]]\nrepository = \"nvcr.io/Bad\"\ndigests = [\"{d}\"]\n"), "not a valid repository"),
            (format!("[[image]]\nrepository = \"nvcr.io/a\"\ndigests = [\"{d}\"]\ntags = [\"-x\"]\n"), "not a valid tag"),
            (format!("[[image]]\nrepository = \"nvcr.io/a\"\ndigests = [\"{d}\"]\nrequire = \"some\"\n"), "require must be"),
            ("[[image]]\nrepository = \"nvcr.io/a\"\n[image.signature]\nkeyless = [{ issuer = \"x\" }]\n".to_string(), "exactly one of subject"),
            ("[[image]]\nrepository = \"nvcr.io/a\"\n[image.signature]\nkeyless = [{ issuer = \"x\", subject = \"a\", subject_regex = \"b\" }]\n".to_string(), "exactly one of subject"),
            ("[[image]]\nrepository = \"nvcr.io/a\"\n[image.signature]\nkeyless = [{ issuer = \"\", subject = \"a\" }]\n".to_string(), "needs an issuer"),
            ("[[image]]\nrepository = \"nvcr.io/a\"\n[image.signature]\nkeyless = [{ issuer = \"x\", subject_regex = \"(\" }]\n".to_string(), "not a valid regular expression"),
            ("[[image]]\nrepository = \"nvcr.io/a\"\n[image.signature]\nkeyless = [{ issuer = \"x\", subject = \"a\", extra = 1 }]\n".to_string(), "unknown field"),
            ("[[image]]\nrepository = \"nvcr.io/a\"\n[image.signature]\nkeyless = [{ issuer = \"x\", subject = \"a\" }, { issuer = \"x\", subject = \"a\" }]\n".to_string(), "listed twice"),
            ("[[image]]\nrepository = \"nvcr.io/a\"\n[image.signature]\nkeys = [\"k.pub\"]\nkeyless = [{ issuer = \"x\", subject = \"a\" }]\nthreshold = 3\n".to_string(), "threshold 3"),
            (format!("[[image]]\nrepository = \"nvcr.io/a\"\ndigests = [\"{d}\"]\n[[image.attestation]]\npredicate_type = \"x\"\n"), "names no keys"),
            (format!("[[image]]\nrepository = \"nvcr.io/a\"\ndigests = [\"{d}\"]\n[[image.attestation]]\npredicate_type = \" \"\nkeys = [\"k.pub\"]\n"), "predicate_type is empty"),
            ("[[image]]\nrepository = \"nvcr.io/a\"\n[[image.attestation]]\npredicate_type = \"x\"\nkeys = [\"k.pub\"]\n".to_string(), "needs pinned digests"),
            ("[[image]]\nrepository = \"nvcr.io/a\"\n[image.signature]\nkeys = []\n".to_string(), "names no keys"),
            ("[[image]]\nrepository = \"nvcr.io/a\"\n[image.signature]\nkeys = [\"../k.pub\"]\n".to_string(), "file name"),
            ("[[image]]\nrepository = \"nvcr.io/a\"\n[image.signature]\nkeys = [\"k.pub\"]\nthreshold = 2\n".to_string(), "threshold 2"),
            ("[[image]]\nrepository = \"nvcr.io/a\"\n[image.signature]\nkeys = [\"k.pub\", \"k.pub\"]\n".to_string(), "listed twice"),
            (format!("[[image]]\nrepository = \"docker.io/ubuntu\"\ndigests = [\"{d}\"]\n[[image]]\nrepository = \"docker.io/library/ubuntu\"\ndigests = [\"{d}\"]\n"), "one rule per repository"),
            (format!("[[image]]\nrepository = \"quay.io/a\"\ndigests = [\"{d}\"]\n"), "not configured"),
        ] {
            let e = reg(&text).unwrap_err();
            assert!(e[0].message.contains(want), "{text}: {}", e[0]);
        }
    }
}
