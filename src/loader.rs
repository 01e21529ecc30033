//! The policy's life: the allowlist files and the rules made through the admin API read into
//! one policy, the key material its image rules name read beside it, the policy in force and
//! its version, and the all-or-nothing reload. Used alike by `serve`, the admin API and the CLI.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::Config;
use crate::policy::allowlist::LoadError;
use crate::policy::{Policy, RuleId, Sha256};
use crate::store::{Store, StoreError, API_RULES, REVOKED};
use crate::verify::Material;

/// The policy in force, the key material it names, and its version (bumped on every apply).
pub struct LoadedPolicy {
    pub policy: Policy,
    pub material: Arc<Material>,
    pub version: u64,
}

/// A policy built and checked, not yet in force.
pub struct Built {
    pub policy: Policy,
    material: Arc<Material>,
}

/// The kind of an API rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Package,
    Image,
}

impl Kind {
    /// The allowlist table name (`[[package]]`, `[[image]]`).
    pub fn table(self) -> &'static str {
        match self {
            Kind::Package => "package",
            Kind::Image => "image",
        }
    }
}

/// A rule made through the admin API, kept in the store as the allowlist TOML it stands for,
/// so it is validated by exactly the code that validates the files.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApiRule {
    pub id: RuleId,
    pub kind: Kind,
    /// The rule as one allowlist table (`[[package]]` or `[[image]]`).
    pub toml: String,
    /// Bumped by every change; the ETag.
    pub revision: u64,
    pub created: i64,
    pub created_by: String,
    pub updated: i64,
    pub updated_by: String,
    /// Set when an approval made the rule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<Value>,
}

impl ApiRule {
    pub fn etag(&self) -> String {
        format!("\"{}-{}\"", self.id, self.revision)
    }
}

/// A pin revoked through the admin API.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApiRevocation {
    pub sha256: Sha256,
    pub reason: String,
    pub by: String,
    pub time: i64,
}

/// The API rules in the store, oldest first.
pub fn api_rules(store: &Store) -> Result<Vec<ApiRule>, StoreError> {
    let mut all: Vec<ApiRule> = store.all(API_RULES)?.into_iter().map(|(_, r)| r).collect();
    all.sort_by(|a, b| (a.created, &a.id).cmp(&(b.created, &b.id)));
    Ok(all)
}

/// The API revocations in the store.
pub fn api_revocations(store: &Store) -> Result<Vec<ApiRevocation>, StoreError> {
    Ok(store.all(REVOKED)?.into_iter().map(|(_, r)| r).collect())
}

/// The policy in force and the files' policy that API writes build on.
pub struct InForce {
    current: RwLock<Arc<LoadedPolicy>>,
    version: AtomicU64,
    /// The allowlist files' policy and material as last loaded (start-up, SIGHUP,
    /// `POST /admin/v1/reload`): API writes build on it and never read the files themselves.
    files: RwLock<Arc<FilesPolicy>>,
}

/// The allowlist files' policy, the material it names, and the digest of the files read (the
/// same files give the same digest on every replica).
type FilesPolicy = (Policy, Arc<Material>, String);

fn store_errors(e: StoreError) -> Vec<LoadError> {
    vec![LoadError {
        file: "store".into(),
        line: 0,
        message: e.to_string(),
    }]
}

impl InForce {
    /// Reads the files and the API rules in `store`: the first policy in force (version 1).
    pub fn load(config: &Config, store: &Store) -> Result<InForce, Vec<LoadError>> {
        let rules = api_rules(store).map_err(store_errors)?;
        let revoked = api_revocations(store).map_err(store_errors)?;
        let (files, built) = read_all(config, &rules, &revoked)?;
        Ok(InForce {
            current: RwLock::new(Arc::new(LoadedPolicy {
                policy: built.policy,
                material: built.material,
                version: 1,
            })),
            version: AtomicU64::new(1),
            files: RwLock::new(Arc::new(files)),
        })
    }

    /// The policy in force now; every request decides against the one it took here.
    pub fn get(&self) -> Arc<LoadedPolicy> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Builds the policy from the files as last loaded and the given API rules, without
    /// applying it.
    pub fn build(
        &self,
        config: &Config,
        rules: &[ApiRule],
        revoked: &[ApiRevocation],
    ) -> Result<Built, Vec<LoadError>> {
        let files = self.files.read().unwrap_or_else(|p| p.into_inner()).clone();
        let policy = with_api(config, files.0.clone(), rules, revoked)?;
        let material = Arc::new(material(config, &policy, &files.1)?);
        Ok(Built { policy, material })
    }

    /// Puts a built policy in force (every request after this decides against it); returns
    /// its version.
    pub fn apply(&self, built: Built) -> u64 {
        let version = self.version.fetch_add(1, Relaxed) + 1;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(LoadedPolicy {
            policy: built.policy,
            material: built.material,
            version,
        });
        version
    }

    /// The digest of the allowlist files in force: their paths below allowlist_dir and their
    /// bytes (replicas compare theirs through a shared store).
    pub fn files_digest(&self) -> String {
        self.files
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .2
            .clone()
    }

    /// Reads every allowlist file again (with the API rules in `store`). All or nothing: on
    /// any error nothing changes. Returns the policy to apply.
    pub fn reread(&self, config: &Config, store: &Store) -> Result<Built, Vec<LoadError>> {
        let rules = api_rules(store).map_err(store_errors)?;
        let revoked = api_revocations(store).map_err(store_errors)?;
        let (files, built) = read_all(config, &rules, &revoked)?;
        *self.files.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(files);
        Ok(built)
    }
}

/// The files' policy with its material, and the whole policy with the API's rules.
fn read_all(
    config: &Config,
    rules: &[ApiRule],
    revoked: &[ApiRevocation],
) -> Result<(FilesPolicy, Built), Vec<LoadError>> {
    let (files, digest) = read_files(config)?;
    let files_material = Arc::new(material(config, &files, &Material::default())?);
    let policy = with_api(config, files.clone(), rules, revoked)?;
    let material = Arc::new(material(config, &policy, &files_material)?);
    Ok(((files, files_material, digest), Built { policy, material }))
}

/// The files alone, with their material, as one-shot commands use them (version 1).
pub fn load(config: &Config) -> Result<LoadedPolicy, Vec<LoadError>> {
    let (policy, _) = read_files(config)?;
    let material = Arc::new(material(config, &policy, &Material::default())?);
    Ok(LoadedPolicy {
        policy,
        material,
        version: 1,
    })
}

/// Every `*.toml` below `dir`, sorted, so the policy does not depend on directory order.
pub fn allowlist_files(dir: &Path) -> Result<Vec<PathBuf>, String> {
    crate::vulns::files_below(dir, "toml", 100_000)
        .map_err(|e| format!("allowlist_dir {}: {e}", dir.display()))
}

/// The allowlist files' rules alone, without their keys (see [`finish_policy`]), and the digest
/// of what was read.
fn read_files(config: &Config) -> Result<(Policy, String), Vec<LoadError>> {
    use sha2::Digest as _;
    let one = |message: String| {
        vec![LoadError {
            file: config.allowlist_dir.display().to_string(),
            line: 0,
            message,
        }]
    };
    let paths = allowlist_files(&config.allowlist_dir).map_err(one)?;
    let mut files = Vec::new();
    let mut digest = sha2::Sha256::new();
    for p in paths {
        let text = std::fs::read_to_string(&p).map_err(|e| one(format!("{}: {e}", p.display())))?;
        let rel = p.strip_prefix(&config.allowlist_dir).unwrap_or(&p);
        // Length-prefixed, so no two sets of files hash alike.
        for part in [rel.display().to_string().as_bytes(), text.as_bytes()] {
            digest.update((part.len() as u64).to_be_bytes());
            digest.update(part);
        }
        files.push((p.display().to_string(), text));
    }
    let mut policy = crate::policy::allowlist::load_with_registries(
        &files,
        &config.index_names(),
        &config.registry_hosts(),
    )?;
    // The OSV database is read with the files (start, SIGHUP, reload): a database that does
    // not load fails the reload like a broken file, and the one in force stays.
    if let Some(v) = &config.vulnerabilities {
        let db = crate::vulns::read_database_cached(&v.database).map_err(|message| {
            vec![LoadError {
                file: v.database.display().to_string(),
                line: 0,
                message,
            }]
        })?;
        policy.vulnerabilities = Some(Arc::new(crate::policy::allowlist::Vulnerabilities {
            db,
            block: v.block,
        }));
    }
    Ok((policy, hex::encode(digest.finalize())))
}

/// Adds the admin API's rules and revocations to the files' policy: each API rule is validated
/// by the same loader as a file (named `api:<id>`) and merged (an identical git rule makes it
/// one rule; a conflicting one is an error at the API rule); then keys and the trusted root are
/// read for whatever the rules name (see [`material`]).
fn with_api(
    config: &Config,
    mut policy: Policy,
    api_rules: &[ApiRule],
    api_revocations: &[ApiRevocation],
) -> Result<Policy, Vec<LoadError>> {
    let mut api_errors = Vec::new();
    for r in api_rules {
        let name = r.id.source_file();
        match crate::policy::allowlist::load_with_registries(
            &[(name.clone(), r.toml.clone())],
            &config.index_names(),
            &config.registry_hosts(),
        ) {
            Ok(p) => {
                if let Err(message) = policy.merge(p) {
                    api_errors.push(LoadError {
                        file: name,
                        line: 1,
                        message,
                    });
                }
            }
            Err(es) => api_errors.extend(es),
        }
    }
    for rv in api_revocations {
        policy
            .revoked
            .entry(rv.sha256)
            .or_insert(crate::policy::allowlist::Revocation {
                reason: rv.reason.clone(),
                source: crate::policy::Source {
                    file: format!("api:revoked by {}", rv.by),
                    line: 1,
                },
            });
    }
    if !api_errors.is_empty() {
        return Err(api_errors);
    }
    Ok(policy)
}

/// Reads the keys and the trusted root the rules name (those `known` has not read already),
/// and checks that no threshold counts one key twice.
fn material(
    config: &Config,
    policy: &Policy,
    known: &Material,
) -> Result<Material, Vec<LoadError>> {
    let mut material = known.clone();
    // Keys named by signature and attestation rules, from allowlist_dir/keys/; a missing or
    // unreadable key is a load error at the rule that names it, never a rule that silently
    // admits nothing.
    let mut errors = Vec::new();
    let keys_dir = config.allowlist_dir.join("keys");
    for rule in &policy.images {
        let names = rule
            .signature
            .iter()
            .flat_map(|s| s.keys.iter())
            .chain(rule.attestations.iter().flat_map(|a| a.keys.iter()));
        for name in names {
            if material.keys.contains_key(name) {
                continue;
            }
            let path = keys_dir.join(name);
            let parsed = std::fs::read_to_string(&path)
                .map_err(|e| format!("key {}: {e}", path.display()))
                .and_then(|pem| {
                    crate::verify::cosign::TrustedKey::from_pem(name, &pem)
                        .map_err(|e| format!("key {}: {e}", path.display()))
                });
            match parsed {
                Ok(key) => {
                    material.keys.insert(name.clone(), Arc::new(key));
                }
                Err(message) => errors.push(LoadError {
                    file: rule.source.file.clone(),
                    line: rule.source.line,
                    message,
                }),
            }
        }
    }
    // The operator's trusted root is read with the policy (so SIGHUP reloads it too) whenever
    // one is configured: keyless identities need it, and log entries on key signatures are
    // checked against it. A keyless rule without a readable root is refused, never left to
    // admit nothing.
    if material.trust_root.is_none() {
        if let Some(path) = &config.trusted_root {
            match std::fs::read(path)
                .map_err(|e| e.to_string())
                .and_then(|b| crate::verify::trust::TrustRoot::from_json(&b).map_err(String::from))
            {
                Ok(root) => material.trust_root = Some(Arc::new(root)),
                Err(e) => errors.push(LoadError {
                    file: path.display().to_string(),
                    line: 0,
                    message: format!("not a usable Sigstore trusted root: {e}"),
                }),
            }
        }
    }
    let keyless_rule = policy.images.iter().find(|r| {
        r.signature.as_ref().is_some_and(|s| !s.keyless.is_empty())
            || r.attestations.iter().any(|a| !a.keyless.is_empty())
    });
    // require_tlog asks for a log entry checked against the root: without a root that lists
    // a log, the rule could admit nothing.
    let tlog_rule = policy.images.iter().find(|r| {
        r.signature.as_ref().is_some_and(|s| s.require_tlog)
            || r.attestations.iter().any(|a| a.require_tlog)
    });
    if let Some(rule) = tlog_rule {
        let usable = match (&config.trusted_root, &material.trust_root) {
            (None, _) => Some("trusted_root is not configured"),
            (Some(_), Some(root)) if !root.has_logs() => {
                Some("the trusted root lists no transparency log")
            }
            _ => None,
        };
        if let Some(why) = usable {
            errors.push(LoadError {
                file: rule.source.file.clone(),
                line: rule.source.line,
                message: format!("{}: require_tlog, but {why}", rule.pattern),
            });
        }
    }
    if let (Some(rule), None) = (keyless_rule, &config.trusted_root) {
        errors.push(LoadError {
            file: rule.source.file.clone(),
            line: rule.source.line,
            message: format!(
                "{}: keyless identities need trusted_root (a Sigstore trusted_root.json)",
                rule.pattern
            ),
        });
    }
    // A publisher is proven by provenance verified under the trusted root: without one the
    // rule could admit nothing (PEP 740 attestations are keyless).
    let publisher_rule = policy.projects.iter().find_map(|(name, r)| {
        r.exact
            .iter()
            .filter(|e| e.publisher.is_some())
            .map(|e| &e.source)
            .chain(
                r.release
                    .iter()
                    .filter(|e| e.publisher.is_some())
                    .map(|e| &e.source),
            )
            .next()
            .map(|s| (name, s))
    });
    if let (Some((name, source)), None) = (publisher_rule, &config.trusted_root) {
        errors.push(LoadError {
            file: source.file.clone(),
            line: source.line,
            message: format!(
                "{name}: publisher needs trusted_root (a Sigstore trusted_root.json) to verify provenance"
            ),
        });
    }
    // A threshold counts distinct keys: one key saved under two names must not count twice.
    for rule in &policy.images {
        let Some(sig) = &rule.signature else { continue };
        let mut seen: HashMap<[u8; 32], &str> = HashMap::new();
        for name in &sig.keys {
            if let Some(k) = material.keys.get(name) {
                if let Some(first) = seen.insert(k.fingerprint, name) {
                    errors.push(LoadError {
                        file: rule.source.file.clone(),
                        line: rule.source.line,
                        message: format!(
                            "{}: keys {first} and {name} are the same key",
                            rule.pattern
                        ),
                    });
                }
            }
        }
    }
    if errors.is_empty() {
        Ok(material)
    } else {
        Err(errors)
    }
}
