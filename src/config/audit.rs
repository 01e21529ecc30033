//! `[audit]`: the checkpoint key and the keys it replaced, the witness, checkpoints,
//! retention and the denial allowance. Keys and the witness must live outside `data_dir`:
//! whoever can rewrite the log there must not be able to sign or vouch for the rewrite.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::raw::{RawAudit, RawPreviousKey};
use super::{ConfigError, Secret};
use crate::policy::units::parse_duration;

/// `[audit]`: signed checkpoints of the chain, retention, and how many denials a client may
/// add before they fold into counted entries.
#[derive(Debug, Clone)]
pub struct AuditConfig {
    /// The Ed25519 private key (PEM PKCS#8) that signs checkpoints; kept outside `data_dir`.
    pub signing_key: Option<Secret>,
    /// Why the configured key could not be read (its variable unset, its file unreadable):
    /// the gate refuses to start, while `audit verify --public-key` can still run.
    pub signing_key_error: Option<String>,
    /// Public keys (PEM) of signing keys used before a rotation: their checkpoints still
    /// vouch. Kept outside `data_dir` like the signing key, for the same reason.
    /// With the last checkpoint each signed (`last_seq`), when given.
    pub previous_public_keys: Vec<(PathBuf, String, Option<u64>)>,
    /// A file outside `data_dir` the gate keeps its latest signed checkpoint in: a log
    /// rewritten or cut together with its stored checkpoints disagrees with it.
    pub witness_file: Option<PathBuf>,
    pub checkpoint_every: Duration,
    /// Entries older than this are exported to the archive and pruned (`None`: kept).
    pub retention: Option<Duration>,
    /// At most this many denials per client per `denial_window` are separate entries.
    pub max_denials: u64,
    pub denial_window: Duration,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            signing_key: None,
            signing_key_error: None,
            previous_public_keys: Vec::new(),
            witness_file: None,
            checkpoint_every: Duration::from_secs(60),
            retention: None,
            max_denials: 1000,
            denial_window: Duration::from_secs(60),
        }
    }
}

/// The `[audit]` table, validated. `invalid`, `line_of` and `resolve` are the file's: an
/// error names its line, a relative path resolves against the file's directory.
pub(super) fn section(
    rau: RawAudit,
    data_dir: &Path,
    invalid: &dyn Fn(usize, String) -> ConfigError,
    line_of: &dyn Fn(&str) -> usize,
    resolve: &dyn Fn(&str) -> PathBuf,
) -> Result<AuditConfig, ConfigError> {
    let data_dir = data_dir.to_path_buf();
    let at = line_of("[audit]");
    let audit_err = |m: String| invalid(at, format!("[audit] {m}"));
    let mut signing_key_error = None;
    let signing_key = match (&rau.signing_key_env, &rau.signing_key_file) {
        (Some(_), Some(_)) => {
            return Err(audit_err(
                "signing_key_env and signing_key_file: give one".into(),
            ))
        }
        (Some(var), None) => match std::env::var(var) {
            Ok(v) => Some(Secret::new(v)),
            Err(_) => {
                signing_key_error = Some(format!(
                    "[audit] signing_key_env: environment variable {var} is not set"
                ));
                None
            }
        },
        (None, Some(f)) => {
            let path = resolve(f);
            // The key must not sit beside what it vouches for: whoever can rewrite the
            // audit log in data_dir could then sign the rewrite too.
            let abs = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
            if abs(&path).starts_with(abs(&data_dir)) {
                return Err(audit_err(format!(
                    "signing_key_file {} is inside data_dir: keep the key where the store is not",
                    path.display()
                )));
            }
            match std::fs::read_to_string(&path) {
                Ok(v) => Some(Secret::new(v)),
                Err(e) => {
                    signing_key_error =
                        Some(format!("[audit] signing_key_file {}: {e}", path.display()));
                    None
                }
            }
        }
        (None, None) => None,
    };
    let mut previous_public_keys = Vec::new();
    for k in &rau.previous_public_keys {
        let (f, last_seq) = match k {
            RawPreviousKey::File(f) => (f, None),
            RawPreviousKey::Bound { file, last_seq } => (file, *last_seq),
        };
        let path = resolve(f);
        let abs = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
        // A key list that the store's writer can edit would let it vouch for its own rewrite.
        if abs(&path).starts_with(abs(&data_dir)) {
            return Err(audit_err(format!(
                "previous_public_keys {} is inside data_dir: keep keys where the store is not",
                path.display()
            )));
        }
        let pem = std::fs::read_to_string(&path)
            .map_err(|e| audit_err(format!("previous_public_keys {}: {e}", path.display())))?;
        previous_public_keys.push((path, pem, last_seq));
    }
    let witness_file = match &rau.witness_file {
        None => None,
        Some(f) => {
            let path = resolve(f);
            let parent = path.parent().unwrap_or(Path::new("."));
            let abs = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
            // Whoever can rewrite the log must not be able to rewrite its witness.
            if abs(parent).starts_with(abs(&data_dir)) {
                return Err(audit_err(format!(
                    "witness_file {} is inside data_dir: keep it where the store is not",
                    path.display()
                )));
            }
            if signing_key.is_none() && signing_key_error.is_none() {
                return Err(audit_err(
                    "witness_file keeps signed checkpoints: give signing_key_file or signing_key_env".into(),
                ));
            }
            Some(path)
        }
    };
    let dur = |key: &str, v: &Option<String>| -> Result<Option<Duration>, ConfigError> {
        match v {
            None => Ok(None),
            Some(s) => parse_duration(s)
                .map(Some)
                .map_err(|e| invalid(line_of(key), format!("[audit] {key}: {e}"))),
        }
    };
    let defaults = AuditConfig::default();
    let (max_denials, denial_window) = match &rau.max_denials_per_client {
        None => (defaults.max_denials, defaults.denial_window),
        Some(s) => {
            let bad = || {
                invalid(
                    line_of("max_denials_per_client"),
                    format!("[audit] max_denials_per_client {s:?}: write N/s, N/m or N/h"),
                )
            };
            let (n, per) = s.split_once('/').ok_or_else(bad)?;
            let n: u64 = n.trim().parse().map_err(|_| bad())?;
            let window = match per.trim() {
                "s" => 1,
                "m" => 60,
                "h" => 3600,
                _ => return Err(bad()),
            };
            (n.max(1), Duration::from_secs(window))
        }
    };
    Ok(AuditConfig {
        signing_key,
        signing_key_error,
        previous_public_keys,
        witness_file,
        checkpoint_every: dur("checkpoint_every", &rau.checkpoint_every)?
            .filter(|d| !d.is_zero())
            .unwrap_or(defaults.checkpoint_every),
        retention: dur("retention", &rau.retention)?,
        max_denials,
        denial_window,
    })
}
