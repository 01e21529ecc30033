//! What the admin API answers, as types: each body a `#[derive(Serialize)]` view, so a field's
//! name and presence are decided once, here, and a change to them is a change to a type.

use serde::Serialize;
use serde_json::Value;

use super::rules::ApiRule;
use crate::audit::checkpoint::Checkpoint;
use crate::audit::verify::ChainReport;
use crate::audit::AuditEntry;
use crate::error::{ApiError, JsonError};
use crate::policy::{RuleId, Sha256};

/// A view as a JSON value (for audit `before`/`after`, which hold any JSON). Serializing these
/// views cannot fail; if it ever did, the change is refused rather than audited without it.
pub(super) fn value<T: Serialize>(view: &T) -> Result<Value, JsonError> {
    serde_json::to_value(view).map_err(|e| JsonError(ApiError::Internal(e.to_string())))
}

/// Where a rule in force came from: a file in git, or the admin API (with who made it).
#[derive(Serialize, Clone)]
#[serde(tag = "managed", rename_all = "lowercase")]
pub(super) enum RuleSource {
    Api {
        revision: u64,
        created_by: String,
        updated_by: String,
        created: i64,
        updated: i64,
        approval: Option<Value>,
    },
    Git {
        /// The file's name (no server paths in answers).
        file: String,
        line: usize,
    },
}

impl RuleSource {
    pub(super) fn api(r: &ApiRule) -> RuleSource {
        RuleSource::Api {
            revision: r.revision,
            created_by: r.created_by.clone(),
            updated_by: r.updated_by.clone(),
            created: r.created,
            updated: r.updated,
            approval: r.approval.clone(),
        }
    }

    /// `api`, `approval` (an API rule an approval made) or `file`: where a pin came from.
    pub(super) fn origin(&self) -> &'static str {
        match self {
            RuleSource::Api { approval: None, .. } => "api",
            RuleSource::Api { .. } => "approval",
            RuleSource::Git { .. } => "file",
        }
    }
}

/// What a package rule pins: an exact release by its hashes, or releases by a specifier.
#[derive(Serialize)]
#[serde(untagged)]
pub(super) enum PackagePins {
    Exact {
        version: String,
        sha256: Vec<String>,
    },
    Release {
        specifier: String,
        min_age: String,
    },
}

/// A package rule in force, in the shape the API accepts (plus `id` and `source`).
#[derive(Serialize)]
pub(super) struct PackageRuleView {
    pub(super) id: RuleId,
    pub(super) name: String,
    #[serde(flatten)]
    pub(super) pins: PackagePins,
    pub(super) index: String,
    pub(super) source: RuleSource,
    /// An exact release the vulnerability database refuses: the refusal, as pip's would read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) refused: Option<String>,
    /// The Trusted Publisher the rule pins, in the shape the API accepts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) publisher: Option<serde_json::Value>,
}

/// A keyless identity as written: an exact subject or a subject pattern.
#[derive(Serialize)]
pub(super) struct KeylessView {
    pub(super) issuer: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) subject: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) subject_regex: Option<String>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// Who may sign: keys, keyless identities, and whether a transparency-log entry is required.
#[derive(Serialize)]
pub(super) struct SignersView {
    #[serde(skip_serializing_if = "is_false")]
    pub(super) require_tlog: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(super) keys: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(super) keyless: Vec<KeylessView>,
}

#[derive(Serialize)]
pub(super) struct SignatureView {
    pub(super) threshold: usize,
    pub(super) per_platform: bool,
    #[serde(flatten)]
    pub(super) signers: SignersView,
}

#[derive(Serialize)]
pub(super) struct AttestationView {
    pub(super) predicate_type: String,
    #[serde(flatten)]
    pub(super) signers: SignersView,
}

/// An image rule in force, in the shape the API accepts (plus `id` and `source`).
#[derive(Serialize)]
pub(super) struct ImageRuleView {
    pub(super) id: RuleId,
    pub(super) repository: String,
    pub(super) require: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) tags: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(super) digests: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) signed_identity: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) signature: Option<SignatureView>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(super) attestation: Vec<AttestationView>,
    pub(super) source: RuleSource,
}

#[derive(Serialize)]
pub(super) struct PackageRules {
    pub(super) packages: Vec<PackageRuleView>,
}

#[derive(Serialize)]
pub(super) struct ImageRules {
    pub(super) images: Vec<ImageRuleView>,
}

/// An API rule as it was written (the body the API accepted), for answers and audit entries.
#[derive(Serialize)]
pub(super) struct WrittenRule {
    pub(super) id: RuleId,
    #[serde(flatten)]
    pub(super) rule: serde_json::Map<String, Value>,
    pub(super) source: RuleSource,
}

/// An API rule as an audit entry's `before`/`after` shows it.
#[derive(Serialize)]
pub(super) struct AuditedRule {
    pub(super) id: RuleId,
    pub(super) revision: u64,
    pub(super) rule: Value,
}

#[derive(Serialize)]
pub(super) struct Reloaded {
    pub(super) policy_version: u64,
    pub(super) exact: usize,
    pub(super) release: usize,
}

#[derive(Serialize)]
pub(super) struct PolicyVersion {
    pub(super) policy_version: u64,
}

#[derive(Serialize)]
pub(super) struct ReloadRefused {
    pub(super) error: &'static str,
    pub(super) errors: Vec<String>,
}

/// A revocation in force, as a pin listing shows it.
#[derive(Serialize)]
pub(super) struct RevokedView {
    pub(super) reason: String,
    pub(super) by: String,
}

/// A pinned file hash and where the pin came from.
#[derive(Serialize)]
#[serde(untagged)]
pub(super) enum PinView {
    /// From an exact rule (a file's, an API rule's, or an approval's).
    Rule {
        id: Sha256,
        sha256: Sha256,
        project: String,
        version: String,
        origin: &'static str,
        rule: RuleId,
        source: RuleSource,
        revoked: Option<RevokedView>,
    },
    /// From first sight under a release rule.
    FirstSight {
        id: Sha256,
        sha256: Sha256,
        project: String,
        filename: String,
        size: Option<u64>,
        origin: &'static str,
        first_seen: i64,
        superseded: Vec<Sha256>,
        revoked: Option<RevokedView>,
    },
}

#[derive(Serialize)]
pub(super) struct Pins {
    pub(super) pins: Vec<PinView>,
}

#[derive(Serialize)]
pub(super) struct Tokens {
    pub(super) tokens: Vec<super::auth::TokenInfo>,
}

/// A token just made: its listing and, this once, its secret.
#[derive(Serialize)]
pub(super) struct NewTokenView {
    #[serde(flatten)]
    pub(super) info: super::auth::TokenInfo,
    pub(super) token: String,
}

/// One line of `GET /admin/v1/audit`: the entry and its hash, or a damaged entry's place.
#[derive(Serialize)]
#[serde(untagged)]
pub(super) enum AuditLine<'a> {
    Entry {
        #[serde(flatten)]
        entry: &'a AuditEntry,
        hash: &'a str,
    },
    Damaged {
        seq: u64,
        damaged: bool,
    },
}

#[derive(Serialize)]
pub(super) struct Broken {
    pub(super) seq: u64,
    pub(super) why: String,
}

#[derive(Serialize)]
pub(super) struct ArchiveCounts {
    pub(super) files: usize,
    pub(super) entries: u64,
}

/// `GET /admin/v1/audit/verify`: the report of `tollgate audit verify`.
#[derive(Serialize)]
pub(super) struct AuditVerified {
    pub(super) status: &'static str,
    pub(super) intact: bool,
    pub(super) summary: Vec<String>,
    pub(super) entries: u64,
    pub(super) first_seq: u64,
    pub(super) head_seq: u64,
    pub(super) head_hash: String,
    pub(super) first_broken: Option<Broken>,
    pub(super) keyed: bool,
    pub(super) signed_checkpoints: u64,
    pub(super) last_checkpoint: Option<Checkpoint>,
    pub(super) unsigned_entries: u64,
    pub(super) tampered: Vec<String>,
    pub(super) notes: Vec<String>,
    pub(super) archive: ArchiveCounts,
}

/// `GET /admin/v1/explain?package=…`: what the gate decides and why.
#[derive(Serialize)]
#[serde(untagged)]
pub(super) enum Explained {
    /// The project is on the allowlist; no file was named.
    Listed {
        package: String,
        allowed: bool,
        index: String,
        explanation: String,
    },
    /// A file (or the project) is refused.
    Denied {
        package: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        filename: Option<String>,
        allowed: bool,
        reason: &'static str,
        explanation: String,
    },
    /// A file is allowed, by this rule.
    Allowed {
        package: String,
        filename: String,
        allowed: bool,
        rule: String,
    },
}

impl From<ChainReport> for AuditVerified {
    fn from(r: ChainReport) -> Self {
        AuditVerified {
            status: r.status(),
            intact: r.intact(),
            summary: r.lines(),
            entries: r.entries,
            first_seq: r.first_seq,
            head_seq: r.head_seq,
            head_hash: r.head_hash,
            first_broken: r.broken.map(|(seq, why)| Broken { seq, why }),
            keyed: r.keyed,
            signed_checkpoints: r.signed_checkpoints,
            last_checkpoint: r.last_checkpoint,
            unsigned_entries: r.unsigned_entries,
            tampered: r.tampered,
            notes: r.notes,
            archive: ArchiveCounts {
                files: r.archive_files,
                entries: r.archived_entries,
            },
        }
    }
}
