//! OCI names and image rules: registries, repositories, tags and digests as the distribution
//! spec defines them, `[[image]]` rules matched on path components, and the pull decision.
//! Pure: the caller resolves tags and fetches manifests.

use std::collections::BTreeSet;
use std::fmt;

use super::allowlist::Source;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RefError {
    #[error("{0:?} is not a sha256 digest (sha256: and 64 lowercase hex characters)")]
    Digest(String),
    #[error("{0:?} is not a valid repository name (distribution spec: lowercase components of [a-z0-9] separated by '.', '_', '__' or '-', joined by '/', at most 255 characters)")]
    Repository(String),
    #[error("{0:?} is not a valid tag ([A-Za-z0-9_][A-Za-z0-9._-]{{0,127}})")]
    Tag(String),
    #[error("{0:?} is not a valid registry host")]
    Host(String),
}

/// `sha256:` and 64 lowercase hex characters: the only digest algorithm the gate accepts, so
/// a digest can name a cache file directly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(pub super::Sha256);

impl Digest {
    pub fn parse(raw: &str) -> Result<Digest, RefError> {
        let err = || RefError::Digest(raw.chars().take(80).collect());
        let hex = raw.strip_prefix("sha256:").ok_or_else(err)?;
        super::Sha256::parse_canonical(hex)
            .map(Digest)
            .map_err(|_| err())
    }

    pub fn sha(&self) -> &super::Sha256 {
        &self.0
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.0)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tag(String);

impl Tag {
    pub fn parse(raw: &str) -> Result<Tag, RefError> {
        let b = raw.as_bytes();
        let ok = !b.is_empty()
            && b.len() <= 128
            && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
            && b.iter()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'));
        if ok {
            Ok(Tag(raw.to_string()))
        } else {
            Err(RefError::Tag(raw.chars().take(140).collect()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Docker Hub's aliases all mean `docker.io`.
pub fn normalize_host(raw: &str) -> Result<String, RefError> {
    let h = raw.to_ascii_lowercase();
    let ok = !h.is_empty()
        && h.len() <= 255
        && h.bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-' | b':' | b'[' | b']'))
        && !h.starts_with(['.', '-', ':']);
    if !ok {
        return Err(RefError::Host(raw.chars().take(80).collect()));
    }
    Ok(match h.as_str() {
        "index.docker.io" | "registry-1.docker.io" => "docker.io".to_string(),
        _ => h,
    })
}

fn valid_component(c: &str) -> bool {
    // [a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*
    let b = c.as_bytes();
    if b.is_empty() || !b[0].is_ascii_alphanumeric() || !b[b.len() - 1].is_ascii_alphanumeric() {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        let ch = b[i];
        if ch.is_ascii_lowercase() || ch.is_ascii_digit() {
            i += 1;
            continue;
        }
        // a separator run: ".", "_", "__" or one or more "-"
        let start = i;
        match ch {
            b'.' => i += 1,
            b'_' => {
                i += 1;
                if i < b.len() && b[i] == b'_' {
                    i += 1;
                }
            }
            b'-' => {
                while i < b.len() && b[i] == b'-' {
                    i += 1;
                }
            }
            _ => return false,
        }
        if i == start || i >= b.len() || !b[i].is_ascii_alphanumeric() {
            return false;
        }
    }
    true
}

/// A repository on a registry: `docker.io/library/ubuntu`, `nvcr.io/nvidia/cuda`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Repository {
    pub registry: String,
    pub path: String,
}

impl Repository {
    /// `registry` is a (normalised) host; `path` the repository path within it. Docker Hub's
    /// one-component names live under `library/`.
    pub fn new(registry: &str, path: &str) -> Result<Repository, RefError> {
        let registry = normalize_host(registry)?;
        let err = || RefError::Repository(path.chars().take(300).collect());
        if path.is_empty() || path.len() > 255 || !path.split('/').all(valid_component) {
            return Err(err());
        }
        let path = if registry == "docker.io" && !path.contains('/') {
            format!("library/{path}")
        } else {
            path.to_string()
        };
        Ok(Repository { registry, path })
    }

    /// Parses `host/path` (the form rules and signatures use).
    pub fn parse(full: &str) -> Result<Repository, RefError> {
        let (host, path) = full
            .split_once('/')
            .ok_or_else(|| RefError::Repository(full.chars().take(300).collect()))?;
        Repository::new(host, path)
    }

    fn components(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.registry.as_str()).chain(self.path.split('/'))
    }
}

impl fmt::Display for Repository {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.path)
    }
}

/// The repository a reference names (`host[:port]/path[:tag][@digest]`), tag and digest
/// dropped. As Docker does, a first component with a `.` or `:` (or `localhost`) is a registry
/// host; otherwise the reference is on Docker Hub (`ubuntu` = `docker.io/library/ubuntu`).
pub fn reference_repository(reference: &str) -> Result<Repository, RefError> {
    let bad = || RefError::Repository(reference.chars().take(300).collect());
    let no_digest = reference
        .split_once('@')
        .map(|(r, _)| r)
        .unwrap_or(reference);
    let last_slash = no_digest.rfind('/').map(|i| i + 1).unwrap_or(0);
    let name = match no_digest[last_slash..].find(':') {
        Some(i) => &no_digest[..last_slash + i],
        None => no_digest,
    };
    if name.is_empty() {
        return Err(bad());
    }
    match name.split_once('/') {
        Some((first, rest)) if first.contains(['.', ':']) || first == "localhost" => {
            Repository::new(first, rest)
        }
        _ => Repository::new("docker.io", name),
    }
}

/// An image reference as a user writes it: repository, and a tag and/or a digest. With
/// neither, the tag is `latest` (as every container runtime assumes).
pub fn parse_image_ref(
    reference: &str,
) -> Result<(Repository, Option<Tag>, Option<Digest>), RefError> {
    let repo = reference_repository(reference)?;
    let (name_tag, digest) = match reference.split_once('@') {
        Some((n, d)) => (n, Some(Digest::parse(d)?)),
        None => (reference, None),
    };
    let last_slash = name_tag.rfind('/').map(|i| i + 1).unwrap_or(0);
    let tag = match name_tag[last_slash..].split_once(':') {
        Some((_, t)) => Some(Tag::parse(t)?),
        None if digest.is_none() => Some(Tag::parse("latest")?),
        None => None,
    };
    Ok((repo, tag, digest))
}

/// The reference as written, without its tag or digest (for `name@sha256:…` rewrites).
pub fn reference_name(reference: &str) -> &str {
    let no_digest = reference
        .split_once('@')
        .map(|(r, _)| r)
        .unwrap_or(reference);
    let last_slash = no_digest.rfind('/').map(|i| i + 1).unwrap_or(0);
    match no_digest[last_slash..].find(':') {
        Some(i) => &no_digest[..last_slash + i],
        None => no_digest,
    }
}

/// What a rule's `repository` names: one repository, or every repository below a prefix
/// (`nvcr.io/nvidia/*`), compared component by component so `nvcr.io/nvidia/*` never matches
/// `nvcr.io/nvidia-evil/x`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RepoPattern {
    Exact(Repository),
    Below {
        registry: String,
        prefix: Vec<String>,
    },
}

impl RepoPattern {
    pub fn parse(raw: &str) -> Result<RepoPattern, RefError> {
        if let Some(prefix) = raw.strip_suffix("/*") {
            let (host, path) = match prefix.split_once('/') {
                Some((h, p)) => (h, Some(p)),
                None => (prefix, None),
            };
            let registry = normalize_host(host)?;
            let prefix = match path {
                None => Vec::new(),
                Some(p) => {
                    if !p.split('/').all(valid_component) {
                        return Err(RefError::Repository(raw.to_string()));
                    }
                    p.split('/').map(str::to_string).collect()
                }
            };
            return Ok(RepoPattern::Below { registry, prefix });
        }
        Repository::parse(raw).map(RepoPattern::Exact)
    }

    /// `None`: no match; `Some(n)`: a match of specificity `n` (higher wins).
    pub fn specificity(&self, repo: &Repository) -> Option<usize> {
        match self {
            RepoPattern::Exact(r) => (r == repo).then_some(usize::MAX),
            RepoPattern::Below { registry, prefix } => {
                let mut comps = repo.components();
                if comps.next() != Some(registry.as_str()) {
                    return None;
                }
                let rest: Vec<&str> = comps.collect();
                // `x/*` admits repositories strictly below `x`.
                (rest.len() > prefix.len() && prefix.iter().zip(&rest).all(|(a, b)| a == b))
                    .then_some(prefix.len())
            }
        }
    }
}

impl fmt::Display for RepoPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RepoPattern::Exact(r) => write!(f, "{r}"),
            RepoPattern::Below { registry, prefix } if prefix.is_empty() => {
                write!(f, "{registry}/*")
            }
            RepoPattern::Below { registry, prefix } => {
                write!(f, "{registry}/{}/*", prefix.join("/"))
            }
        }
    }
}

/// One `[[image]]` rule: pinned digests and/or a signature requirement, plus the attestations
/// that must verify in addition.
#[derive(Debug, Clone)]
pub struct ImageRule {
    pub pattern: RepoPattern,
    pub tags: Option<BTreeSet<Tag>>,
    /// Pinned digests; may be empty only when `signature` is set.
    pub digests: BTreeSet<Digest>,
    pub signature: Option<SignatureRule>,
    pub require: Require,
    /// The repository signatures name, if not the pulled one.
    pub signed_identity: Option<Repository>,
    /// `[[image.attestation]]`: every one must verify, whatever admitted the digest.
    pub attestations: Vec<AttestationRule>,
    pub source: Source,
}

impl ImageRule {
    /// The same rule, wherever it was written (sources aside).
    pub fn same_as(&self, other: &ImageRule) -> bool {
        let ids = |v: &[KeylessIdentity]| v.iter().map(|k| k.to_string()).collect::<Vec<_>>();
        let sig = |r: &ImageRule| {
            r.signature.as_ref().map(|s| {
                (
                    s.keys.clone(),
                    ids(&s.keyless),
                    s.threshold,
                    s.per_platform,
                    s.require_tlog,
                )
            })
        };
        let att = |r: &ImageRule| {
            r.attestations
                .iter()
                .map(|a| {
                    (
                        a.predicate_type.clone(),
                        a.keys.clone(),
                        ids(&a.keyless),
                        a.require_tlog,
                    )
                })
                .collect::<Vec<_>>()
        };
        self.pattern == other.pattern
            && self.tags == other.tags
            && self.digests == other.digests
            && self.require == other.require
            && self.signed_identity == other.signed_identity
            && sig(self) == sig(other)
            && att(self) == att(other)
    }
}

/// `[image.signature]`: cosign public keys (file names under `allowlist_dir/keys/`) and keyless
/// identities, together never empty, and how many distinct signers must have signed.
#[derive(Debug, Clone)]
pub struct SignatureRule {
    pub keys: Vec<String>,
    pub keyless: Vec<KeylessIdentity>,
    /// 1 ≤ threshold ≤ keys + keyless entries, checked at load.
    pub threshold: usize,
    /// Each platform manifest of an index needs its own signature.
    pub per_platform: bool,
    /// A key's signature counts only with a transparency-log entry that verifies against the
    /// trusted root (cosign's default for `--key`); keyless signatures always need one.
    pub require_tlog: bool,
}

/// `[[image.attestation]]`: an in-toto statement of this predicate type about the image,
/// signed by one of these signers (never none).
#[derive(Debug, Clone)]
pub struct AttestationRule {
    pub predicate_type: String,
    pub keys: Vec<String>,
    pub keyless: Vec<KeylessIdentity>,
    /// As in [`SignatureRule::require_tlog`].
    pub require_tlog: bool,
}

/// A keyless signer: the OIDC issuer (exact) and the subject Fulcio certified, matched as a
/// whole string (CONTRACT.md: `subject` exactly, `subject_regex` anchored at both ends).
#[derive(Debug, Clone)]
pub struct KeylessIdentity {
    pub issuer: String,
    pub subject: SubjectMatch,
}

#[derive(Debug, Clone)]
pub enum SubjectMatch {
    Exact(String),
    /// Compiled as `^(?:…)$` so that a pattern can never match part of a subject.
    Regex(regex::Regex),
}

impl KeylessIdentity {
    pub fn new_regex(issuer: &str, pattern: &str) -> Result<KeylessIdentity, String> {
        // The pattern must be a regular expression on its own: otherwise unbalanced groups
        // such as `a)|(.*` would close the anchoring group and match anything.
        regex::Regex::new(pattern).map_err(|e| {
            format!("subject_regex {pattern:?} is not a valid regular expression: {e}")
        })?;
        let re = regex::Regex::new(&format!("^(?:{pattern})$")).map_err(|e| {
            format!("subject_regex {pattern:?} is not a valid regular expression: {e}")
        })?;
        Ok(KeylessIdentity {
            issuer: issuer.to_string(),
            subject: SubjectMatch::Regex(re),
        })
    }

    /// Does a certificate with these SAN identities and this OIDC issuer belong to this signer?
    pub fn matches(&self, identities: &[String], issuer: Option<&str>) -> bool {
        issuer == Some(self.issuer.as_str())
            && identities.iter().any(|id| match &self.subject {
                SubjectMatch::Exact(s) => id == s,
                SubjectMatch::Regex(re) => re.is_match(id),
            })
    }
}

impl fmt::Display for KeylessIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.subject {
            SubjectMatch::Exact(s) => write!(f, "{s} from {}", self.issuer),
            SubjectMatch::Regex(re) => write!(f, "{} from {}", re.as_str(), self.issuer),
        }
    }
}

/// How pins and signatures combine when a rule has both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Require {
    All,
    Any,
}

/// Why an image manifest was admitted (the audit entry's reason).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageAllowed {
    /// Its digest is pinned by the rule.
    PinnedDigest,
    /// Its signatures (and attestations) satisfy the rule.
    Signed,
    /// A signature or attestation artifact of an admitted image, served so downstream
    /// verifiers work through the gate.
    ArtifactOfAdmitted,
}

impl ImageAllowed {
    pub fn reason(self) -> &'static str {
        match self {
            ImageAllowed::PinnedDigest => "pinned_digest",
            ImageAllowed::Signed => "signed",
            ImageAllowed::ArtifactOfAdmitted => "artifact_of_admitted",
        }
    }
}

/// What the pull path found out about one manifest digest, for [`decide_image`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evidence {
    /// The digest is pinned (itself, or through an index that is admitted).
    pub pinned: bool,
    /// The signature check's outcome; `None` when the rule asks for no signature.
    pub signature: Option<Result<Vec<String>, SignatureDeny>>,
    /// The first attestation requirement that failed, if any.
    pub attestations: Result<(), SignatureDeny>,
}

/// The decision for a manifest digest from its evidence, as CONTRACT.md's `require` says: with
/// only digests, pinned; with only a signature, signed; with both, pinned AND signed ("all",
/// the default) or either ("any").
pub fn decide_image(
    rule: &ImageRule,
    repo: &Repository,
    digest: &Digest,
    tag: Option<&Tag>,
    ev: &Evidence,
) -> Result<(), ImageDeny> {
    let not_pinned = || ImageDeny::DigestNotPinned {
        repo: repo.clone(),
        digest: *digest,
        tag: tag.cloned(),
    };
    // Attestations are required in addition to whatever admits the digest.
    let admitted = match (&ev.signature, rule.digests.is_empty()) {
        (None, _) => ev.pinned.then_some(()).ok_or_else(not_pinned),
        (Some(sig), true) => sig
            .as_ref()
            .map(|_| ())
            .map_err(|d| ImageDeny::Signature(d.clone())),
        (Some(sig), false) => match (rule.require, ev.pinned, sig) {
            (Require::All, true, Ok(_)) => Ok(()),
            (Require::All, false, _) => Err(not_pinned()),
            (Require::All, true, Err(d)) => Err(ImageDeny::Signature(d.clone())),
            (Require::Any, true, _) | (Require::Any, false, Ok(_)) => Ok(()),
            (Require::Any, false, Err(d)) => Err(ImageDeny::Signature(d.clone())),
        },
    };
    admitted?;
    ev.attestations.clone().map_err(ImageDeny::Signature)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageDeny {
    NoRule(Repository),
    TagNotAllowed {
        repo: Repository,
        tag: Tag,
    },
    DigestNotPinned {
        repo: Repository,
        digest: Digest,
        tag: Option<Tag>,
    },
    NotReferenced {
        repo: Repository,
        digest: Digest,
    },
    Signature(SignatureDeny),
}

impl ImageDeny {
    pub fn code(&self) -> &'static str {
        match self {
            ImageDeny::NoRule(_) => "image_not_allowlisted",
            ImageDeny::TagNotAllowed { .. } => "tag_not_allowed",
            ImageDeny::DigestNotPinned { .. } => "digest_not_pinned",
            ImageDeny::NotReferenced { .. } => "blob_not_referenced",
            ImageDeny::Signature(d) => d.code(),
        }
    }
}

impl fmt::Display for ImageDeny {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageDeny::NoRule(r) => write!(f, "repository {r} is not on the allowlist; ask the security team to approve it"),
            ImageDeny::TagNotAllowed { repo, tag } => write!(f, "tag {tag} of {repo} is not an allowed tag; pull an allowed tag or a pinned digest"),
            ImageDeny::DigestNotPinned { repo, digest, tag: Some(tag) } => write!(f, "{repo}:{tag} now points to {digest}, which is not a pinned digest; the tag may have moved upstream"),
            ImageDeny::DigestNotPinned { repo, digest, tag: None } => write!(f, "{repo}@{digest} is not a pinned digest"),
            ImageDeny::NotReferenced { repo, digest } => write!(f, "{digest} is not referenced by an admitted manifest of {repo}"),
            ImageDeny::Signature(d) => write!(f, "{d}"),
        }
    }
}

/// The rule that governs a repository: the most specific match.
pub fn rule_for<'a>(rules: &'a [ImageRule], repo: &Repository) -> Option<&'a ImageRule> {
    rules
        .iter()
        .filter_map(|r| r.pattern.specificity(repo).map(|s| (s, r)))
        .max_by_key(|(s, _)| *s)
        .map(|(_, r)| r)
}

/// May this tag be pulled? (Checked before anything is resolved upstream.)
pub fn check_tag(rule: &ImageRule, repo: &Repository, tag: &Tag) -> Result<(), ImageDeny> {
    match &rule.tags {
        Some(tags) if !tags.contains(tag) => Err(ImageDeny::TagNotAllowed {
            repo: repo.clone(),
            tag: tag.clone(),
        }),
        _ => Ok(()),
    }
}

/// Why signatures or attestations did not admit an image. Each renders to one sentence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignatureDeny {
    Unsigned,
    /// Signatures exist, but none by a signer of the rule; `found` names who did sign, as far
    /// as that is known (certificate identities; keys are only "an unknown key").
    Untrusted {
        found: Vec<String>,
    },
    OtherRepository {
        signed: String,
        wanted: String,
    },
    OtherDigest {
        signed: String,
    },
    Threshold {
        signers: Vec<String>,
        need: usize,
    },
    AttestationMissing {
        predicate_type: String,
    },
    AttestationUntrusted {
        predicate_type: String,
        found: Vec<String>,
    },
}

impl SignatureDeny {
    pub fn code(&self) -> &'static str {
        match self {
            SignatureDeny::Unsigned => "unsigned",
            SignatureDeny::Untrusted { .. } => "untrusted_signer",
            SignatureDeny::OtherRepository { .. } => "signature_other_repository",
            SignatureDeny::OtherDigest { .. } => "signature_other_digest",
            SignatureDeny::Threshold { .. } => "signature_threshold",
            SignatureDeny::AttestationMissing { .. } => "attestation_missing",
            SignatureDeny::AttestationUntrusted { .. } => "attestation_untrusted",
        }
    }
}

impl fmt::Display for SignatureDeny {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SignatureDeny::Unsigned => write!(f, "unsigned"),
            SignatureDeny::Untrusted { found } => write!(
                f,
                "signed, but by no trusted signer (found: {})",
                found.join("; ")
            ),
            SignatureDeny::OtherRepository { signed, wanted } => write!(
                f,
                "signature names another repository ({signed}, not {wanted})"
            ),
            SignatureDeny::OtherDigest { signed } => {
                write!(f, "signature is for another image ({signed})")
            }
            SignatureDeny::Threshold { signers, need } => write!(
                f,
                "signed by {} trusted signer(s) ({}), {need} required",
                signers.len(),
                signers.join(", ")
            ),
            SignatureDeny::AttestationMissing { predicate_type } => {
                write!(f, "attestation {predicate_type} missing")
            }
            SignatureDeny::AttestationUntrusted {
                predicate_type,
                found,
            } => write!(
                f,
                "attestation {predicate_type} present, but by no trusted signer (found: {})",
                found.join("; ")
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

    fn rule(pattern: &str, tags: Option<&[&str]>, line: usize) -> ImageRule {
        ImageRule {
            pattern: RepoPattern::parse(pattern).unwrap(),
            tags: tags.map(|t| t.iter().map(|t| Tag::parse(t).unwrap()).collect()),
            digests: [Digest::parse(D1).unwrap()].into_iter().collect(),
            signature: None,
            require: Require::All,
            signed_identity: None,
            attestations: vec![],
            source: Source {
                file: "a.toml".into(),
                line,
            },
        }
    }

    #[test]
    fn names() {
        assert_eq!(
            Repository::parse("docker.io/ubuntu").unwrap().to_string(),
            "docker.io/library/ubuntu"
        );
        assert_eq!(
            Repository::parse("index.docker.io/library/ubuntu")
                .unwrap()
                .to_string(),
            "docker.io/library/ubuntu"
        );
        assert_eq!(
            Repository::parse("registry-1.docker.io/ubuntu")
                .unwrap()
                .to_string(),
            "docker.io/library/ubuntu"
        );
        assert_eq!(
            Repository::parse("nvcr.io/nvidia/cuda").unwrap().path,
            "nvidia/cuda"
        );
        assert_eq!(
            Repository::parse("127.0.0.1:5000/a/b").unwrap().registry,
            "127.0.0.1:5000"
        );
        for bad in [
            "nvcr.io/",
            "nvcr.io/Nvidia/cuda",
            "nvcr.io/a//b",
            "nvcr.io/../etc",
            "nvcr.io/a/-b",
            "nvcr.io/a_-b",
            "nvcr.io/a%2fb",
            "x",
        ] {
            assert!(Repository::parse(bad).is_err(), "{bad}");
        }
        assert!(Repository::parse("nvcr.io/a__b/c-d.e--f").is_ok());
        assert!(Tag::parse("12.4.1-runtime-ubuntu22.04").is_ok());
        for bad in ["", "-x", ".x", "a/b", "a:b", &"a".repeat(129)] {
            assert!(Tag::parse(bad).is_err(), "{bad}");
        }
        assert!(Digest::parse(D1).is_ok());
        for bad in [
            "sha256:abc",
            "sha512:11",
            &D1.to_uppercase(),
            "1111111111111111111111111111111111111111111111111111111111111111",
        ] {
            assert!(Digest::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn references() {
        let r = |s: &str| reference_repository(s).map(|r| r.to_string());
        assert_eq!(
            r("192.168.64.2:5000/skopeo-signed:tag").unwrap(),
            "192.168.64.2:5000/skopeo-signed"
        );
        assert_eq!(
            r("nvcr.io/nvidia/cuda:12@sha256:abc").unwrap(),
            "nvcr.io/nvidia/cuda"
        );
        assert_eq!(r("ubuntu").unwrap(), "docker.io/library/ubuntu");
        assert_eq!(r("bitnami/redis:7").unwrap(), "docker.io/bitnami/redis");
        assert_eq!(r("localhost/a").unwrap(), "localhost/a");
        assert!(r("").is_err());
        assert!(r("UPPER/x").is_err());
    }

    #[test]
    fn image_references() {
        let (r, t, d) = parse_image_ref("nvcr.io/nvidia/cuda:12.4").unwrap();
        assert_eq!(
            (r.to_string().as_str(), t.unwrap().as_str(), d),
            ("nvcr.io/nvidia/cuda", "12.4", None)
        );
        let (_, t, _) = parse_image_ref("ubuntu").unwrap();
        assert_eq!(t.unwrap().as_str(), "latest");
        let (_, t, d) = parse_image_ref(&format!("127.0.0.1:5000/a@{D1}")).unwrap();
        assert_eq!((t, d.unwrap().to_string()), (None, D1.to_string()));
        assert!(parse_image_ref("a@sha256:zz").is_err());
        assert!(parse_image_ref("a:-bad").is_err());
        assert_eq!(
            reference_name("nvcr.io/nvidia/cuda:12@sha256:x"),
            "nvcr.io/nvidia/cuda"
        );
        assert_eq!(reference_name("127.0.0.1:5000/a"), "127.0.0.1:5000/a");
    }

    #[test]
    fn prefixes_match_on_components() {
        let rules = vec![
            rule("nvcr.io/nvidia/*", None, 1),
            rule("nvcr.io/nvidia/cuda", Some(&["12"]), 2),
        ];
        let cuda = Repository::parse("nvcr.io/nvidia/cuda").unwrap();
        assert_eq!(
            rule_for(&rules, &cuda).unwrap().source.line,
            2,
            "the exact rule wins"
        );
        let other = Repository::parse("nvcr.io/nvidia/tritonserver").unwrap();
        assert_eq!(rule_for(&rules, &other).unwrap().source.line, 1);
        for no in [
            "nvcr.io/nvidia-evil/x",
            "nvcr.io/nvidia",
            "nvcr.io.evil.com/nvidia/cuda",
            "docker.io/nvidia/cuda",
        ] {
            assert!(
                rule_for(&rules, &Repository::parse(no).unwrap()).is_none(),
                "{no}"
            );
        }
        let all = vec![rule("docker.io/*", None, 3)];
        assert!(rule_for(&all, &Repository::parse("docker.io/ubuntu").unwrap()).is_some());
    }

    #[test]
    fn decisions() {
        let r = rule("nvcr.io/nvidia/cuda", Some(&["12"]), 1);
        let repo = Repository::parse("nvcr.io/nvidia/cuda").unwrap();
        assert!(check_tag(&r, &repo, &Tag::parse("12").unwrap()).is_ok());
        let e = check_tag(&r, &repo, &Tag::parse("latest").unwrap()).unwrap_err();
        assert_eq!(e.code(), "tag_not_allowed");
        let pinned = Evidence {
            pinned: true,
            signature: None,
            attestations: Ok(()),
        };
        let loose = Evidence {
            pinned: false,
            signature: None,
            attestations: Ok(()),
        };
        let d1 = Digest::parse(D1).unwrap();
        assert!(decide_image(&r, &repo, &d1, None, &pinned).is_ok());
        let e = decide_image(
            &r,
            &repo,
            &Digest::parse(D2).unwrap(),
            Some(&Tag::parse("12").unwrap()),
            &loose,
        )
        .unwrap_err();
        assert!(e.to_string().contains("may have moved upstream"));
    }

    /// `require` with pins and signatures, every combination.
    #[test]
    fn pins_and_signatures_combine() {
        let repo = Repository::parse("nvcr.io/nvidia/cuda").unwrap();
        let d = Digest::parse(D1).unwrap();
        let signed = Some(Ok(vec!["k.pub".to_string()]));
        let unsigned = Some(Err(SignatureDeny::Unsigned));
        let sig = Some(SignatureRule {
            keys: vec!["k.pub".into()],
            keyless: vec![],
            threshold: 1,
            per_platform: false,
            require_tlog: false,
        });
        let mut both_all = rule("nvcr.io/nvidia/cuda", None, 1);
        both_all.signature = sig.clone();
        let both_any = ImageRule {
            require: Require::Any,
            ..both_all.clone()
        };
        let only_sig = ImageRule {
            digests: BTreeSet::new(),
            ..both_all.clone()
        };
        let ev = |pinned: bool, signature: &Option<Result<Vec<String>, SignatureDeny>>| Evidence {
            pinned,
            signature: signature.clone(),
            attestations: Ok(()),
        };
        let code = |r: &ImageRule, e: Evidence| {
            decide_image(r, &repo, &d, None, &e)
                .map_err(|d| d.code())
                .err()
        };
        assert_eq!(code(&both_all, ev(true, &signed)), None);
        assert_eq!(code(&both_all, ev(true, &unsigned)), Some("unsigned"));
        assert_eq!(
            code(&both_all, ev(false, &signed)),
            Some("digest_not_pinned")
        );
        assert_eq!(code(&both_any, ev(false, &signed)), None);
        assert_eq!(code(&both_any, ev(true, &unsigned)), None);
        assert_eq!(code(&both_any, ev(false, &unsigned)), Some("unsigned"));
        assert_eq!(code(&only_sig, ev(false, &signed)), None);
        assert_eq!(code(&only_sig, ev(false, &unsigned)), Some("unsigned"));
        // A signature rule whose verdict is missing never passes on its own.
        assert_eq!(
            code(
                &only_sig,
                ev(
                    false,
                    &Some(Err(SignatureDeny::Untrusted { found: vec![] }))
                )
            ),
            Some("untrusted_signer")
        );
        // A missing attestation refuses even a pinned, signed digest.
        let missing = Evidence {
            attestations: Err(SignatureDeny::AttestationMissing {
                predicate_type: "https://slsa.dev/provenance/v1".into(),
            }),
            ..ev(true, &signed)
        };
        assert_eq!(
            code(&both_any, missing.clone()),
            Some("attestation_missing")
        );
        assert_eq!(code(&both_all, missing), Some("attestation_missing"));
    }

    #[test]
    fn keyless_identities_match_whole_strings() {
        let gh = "https://token.actions.githubusercontent.com";
        let re =
            KeylessIdentity::new_regex(gh, "https://github.com/acme/.+@refs/tags/v.*").unwrap();
        let ids = |s: &str| vec![s.to_string()];
        assert!(re.matches(
            &ids("https://github.com/acme/x/.github/workflows/r.yml@refs/tags/v1"),
            Some(gh)
        ));
        // Anchored at both ends: a prefix or suffix around a match does not pass.
        assert!(!re.matches(
            &ids("https://evil.example/https://github.com/acme/x@refs/tags/v1"),
            Some(gh)
        ));
        assert!(!re.matches(
            &ids("https://github.com/acme/x@refs/tags/v1"),
            Some("https://evil.example")
        ));
        assert!(!re.matches(&ids("https://github.com/acme/x@refs/tags/v1"), None));
        // Neither an alternation nor unbalanced groups can escape the anchors.
        assert!(KeylessIdentity::new_regex(gh, "a)|(.*").is_err());
        assert!(KeylessIdentity::new_regex(gh, ")|(").is_err());
        let alt = KeylessIdentity::new_regex(gh, "a|b").unwrap();
        assert!(!alt.matches(&ids("xa"), Some(gh)));
        assert!(alt.matches(&ids("b"), Some(gh)));
        let exact = KeylessIdentity {
            issuer: gh.into(),
            subject: SubjectMatch::Exact("mitr@redhat.com".into()),
        };
        assert!(exact.matches(&ids("mitr@redhat.com"), Some(gh)));
        assert!(!exact.matches(&ids("mitr@redhat.com.evil"), Some(gh)));
        assert!(KeylessIdentity::new_regex(gh, "(").is_err());
    }
}
