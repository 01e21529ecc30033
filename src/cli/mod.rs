//! The offline commands: `check`, `allowlist import`, `allowlist check`. They read files and
//! print; they never touch the network or the store, except `allowlist check --gate`, which
//! asks a running gate over HTTP (`gate.rs`).

use std::path::Path;

use crate::config::Config;
use crate::policy::requirements::{parse_pylock, parse_requirements, to_allowlist_toml, Parsed};
use crate::policy::Policy;

mod audit;
mod gate;
mod osv;
pub use audit::{audit_export, audit_public_key, audit_verify, audit_witness_init};
pub use gate::{allowlist_check_gate, health};
pub use osv::osv_update;
mod provenance;
pub use provenance::import_with_publishers;

/// `tollgate check`: 0 when config and every allowlist load, else 1 with one line per error.
pub fn check(config: &Config) -> i32 {
    let files = match crate::loader::allowlist_files(&config.allowlist_dir) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("error: {e}");
            return 1;
        }
    };
    if let Err(e) = crate::audit::Settings::from_config(
        &config.audit,
        &config.data_dir,
        config.limits.min_free_disk,
    ) {
        eprintln!("error: {e}");
        return 1;
    }
    // The webhooks are a policy oracle and a tag resolver for whoever reaches them: say so
    // when nothing but the network guards them.
    if !config.admission.is_guarded() {
        eprintln!(
            "warning: /k8s/admission and /k8s/mutate answer any caller: set [admission] client_ca (mTLS) or token_sha256_env, or serve them on [admission] listen behind a NetworkPolicy{}",
            if config.admission.listen.is_some() { " (listen is set: make sure a NetworkPolicy admits only the API server)" } else { "" }
        );
    }
    match crate::loader::load(config).map(|lp| lp.policy) {
        Ok(p) => {
            let registries: Vec<&str> = config
                .oci
                .registries
                .iter()
                .map(|r| r.host.as_str())
                .collect();
            println!(
                "ok: {} allowlist file(s), {} project(s), {} exact release rule(s), {} release rule(s), {} image rule(s), {} revocation(s); index(es): {}; registries: {}",
                files.len(),
                p.projects.len(),
                p.exact_count(),
                p.release_count(),
                p.images.len(),
                p.revoked.len(),
                config.index_names().join(", "),
                if registries.is_empty() { "none".to_string() } else { registries.join(", ") }
            );
            let now = crate::store::cache::now_secs();
            if let Some(v) = &p.vulnerabilities {
                println!(
                    "vulnerabilities: {} record(s), {} PyPI advisories, newest modified {}; refusing {} and above; {} exception(s) in force",
                    v.db.records,
                    v.db.advisories(),
                    v.db.newest.map_or("unknown".into(), crate::policy::units::format_rfc3339),
                    v.block.as_str(),
                    p.exceptions.iter().filter(|e| e.expires > now).count()
                );
            }
            // An expired exception lets nothing through any more: said, so it is renewed or
            // removed on purpose.
            for e in p.exceptions.iter().filter(|e| e.expires <= now) {
                eprintln!(
                    "warning: {}: [[vulnerability_exception]] {} expired {}",
                    e.source,
                    e.id,
                    crate::policy::units::format_rfc3339(e.expires)
                );
            }
            0
        }
        Err(errors) => {
            for e in &errors {
                eprintln!("{e}");
            }
            eprintln!(
                "{} error(s); the gate would refuse to start with these files",
                errors.len()
            );
            1
        }
    }
}

/// The one-thread runtime a command's network calls run on.
pub(crate) fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))
}

pub(crate) fn read_pinned(path: &Path) -> Result<Parsed, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if path.extension().is_some_and(|e| e == "toml") {
        parse_pylock(&text).map_err(|p| format!("{}:{}: {}", path.display(), p.line, p.message))
    } else {
        Ok(parse_requirements(&text))
    }
}

/// `tollgate allowlist import FILE`: prints `[[package]]` TOML; problems go to stderr, exit 1.
pub fn import(path: &Path) -> i32 {
    let parsed = match read_pinned(path) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return 1;
        }
    };
    for (line, text) in &parsed.ignored {
        eprintln!("{}:{line}: ignored option line: {text}", path.display());
    }
    for p in &parsed.problems {
        eprintln!("{}:{}: {}", path.display(), p.line, p.message);
    }
    println!(
        "# imported from {} by tollgate allowlist import",
        path.file_name()
            .map(|f| f.to_string_lossy())
            .unwrap_or_default()
    );
    print!("{}", to_allowlist_toml(&parsed.pinned));
    if parsed.problems.is_empty() {
        0
    } else {
        1
    }
}

/// The verdict for one pinned requirement against the policy.
pub fn verdict(
    policy: &Policy,
    wheels_only: bool,
    p: &crate::policy::requirements::Pinned,
) -> Result<String, String> {
    let Some(rules) = policy.project(&p.name) else {
        return Err(format!("{} is not on the allowlist", p.name));
    };
    let live: Vec<_> = p
        .hashes
        .iter()
        .filter(|h| !policy.revoked.contains_key(h))
        .collect();
    if live.is_empty() {
        return Err(format!(
            "{}=={}: every hash on this line is revoked",
            p.name, p.version
        ));
    }
    let is_sdist = |h: &crate::policy::Sha256| {
        p.hashes
            .iter()
            .position(|x| x == h)
            .and_then(|i| p.filenames.get(i))
            .is_some_and(|f| f.ends_with(".tar.gz") || f.ends_with(".zip"))
    };
    let mut other_versions = Vec::new();
    let mut unpinned = None;
    for rule in &rules.exact {
        if rule.version == p.version {
            let ok: Vec<_> = live
                .iter()
                .filter(|h| rule.sha256.contains(h) && !(wheels_only && is_sdist(h)))
                .collect();
            if !ok.is_empty() {
                return Ok(format!(
                    "{}=={}: {} of its hashes pinned by {}",
                    p.name,
                    p.version,
                    ok.len(),
                    rule.source
                ));
            }
            unpinned = Some(format!(
                "{}=={}: none of the line's hashes is pinned for this release ({} pinned at {})",
                p.name,
                p.version,
                rule.sha256.len(),
                rule.source
            ));
        }
        other_versions.push(rule.version.to_string());
    }
    if let Some(rule) = rules
        .release
        .iter()
        .find(|r| r.specifiers.contains(&p.version))
    {
        return Ok(format!(
            "{}=={}: admitted by the release rule at {} once the upstream's files are pinned at first sight and older than {}s; the line's hashes must match them",
            p.name,
            p.version,
            rule.source,
            rule.min_age.as_secs()
        ));
    }
    if let Some(m) = unpinned {
        return Err(m);
    }
    Err(format!(
        "{}=={}: this release is not allowed (allowed: {})",
        p.name,
        p.version,
        if other_versions.is_empty() {
            "no exact releases".into()
        } else {
            other_versions.join(", ")
        }
    ))
}

/// `tollgate allowlist check FILE`: one line per requirement; exit 1 if any would fail.
pub fn allowlist_check(config: &Config, path: &Path) -> i32 {
    let policy = match crate::loader::load(config) {
        Ok(lp) => lp.policy,
        Err(errors) => {
            for e in &errors {
                eprintln!("{e}");
            }
            return 1;
        }
    };
    let parsed = match read_pinned(path) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return 1;
        }
    };
    let verdicts: Vec<_> = parsed
        .pinned
        .iter()
        .map(|p| verdict(&policy, config.pypi.wheels_only, p))
        .collect();
    report(path, &parsed, &verdicts)
}

/// Prints one line per requirement (problems of the file included), in file order, and a
/// summary; 1 if any would fail. `verdicts` are those of `parsed.pinned`, in its order.
pub(crate) fn report(path: &Path, parsed: &Parsed, verdicts: &[Result<String, String>]) -> i32 {
    let mut failed = parsed.problems.len();
    let mut lines: Vec<(usize, String)> = Vec::new();
    for p in &parsed.problems {
        lines.push((
            p.line,
            format!("{}:{}: FAIL {}", path.display(), p.line, p.message),
        ));
    }
    for (p, v) in parsed.pinned.iter().zip(verdicts) {
        match v {
            Ok(m) => lines.push((p.line, format!("{}:{}: ok   {m}", path.display(), p.line))),
            Err(m) => {
                failed += 1;
                lines.push((p.line, format!("{}:{}: FAIL {m}", path.display(), p.line)));
            }
        }
    }
    lines.sort_by_key(|(l, _)| *l);
    for (_, l) in &lines {
        println!("{l}");
    }
    let total = parsed.pinned.len() + parsed.problems.len();
    println!(
        "{} of {total} requirement(s) would install through the gate",
        total - failed
    );
    if failed == 0 {
        0
    } else {
        1
    }
}

/// `tollgate image verify REF`: resolves REF through the configured registry and prints the
/// decision with every reason; exit 1 on deny (or when it cannot be decided). It uses a scratch
/// store of its own, so it works beside a running gate and leaves nothing behind.
pub fn image_verify(config: &Config, image: &str) -> i32 {
    let lp = match crate::loader::load(config) {
        Ok(lp) => lp,
        Err(errors) => {
            for e in &errors {
                eprintln!("{e}");
            }
            return 1;
        }
    };
    // A fresh directory only this user can read; an existing one (planted by someone else) is
    // never used.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let scratch =
        std::env::temp_dir().join(format!("tollgate-verify-{}-{nanos}", std::process::id()));
    {
        use std::os::unix::fs::DirBuilderExt;
        if let Err(e) = std::fs::DirBuilder::new().mode(0o700).create(&scratch) {
            eprintln!("error: scratch directory {}: {e}", scratch.display());
            return 1;
        }
    }
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: {e}");
            return 1;
        }
    };
    let code = rt.block_on(async {
        let setup = || -> Result<std::sync::Arc<crate::oci::service::Oci>, String> {
            let metrics = std::sync::Arc::new(crate::metrics::Metrics::default());
            let store = std::sync::Arc::new(
                crate::store::Store::open(&scratch.join("verify.redb"))
                    .map_err(|e| e.to_string())?,
            );
            let cache = std::sync::Arc::new(
                crate::store::Cache::open(
                    &scratch,
                    config.cache_max_bytes,
                    store.clone(),
                    metrics.clone(),
                )
                .map_err(|e| e.to_string())?,
            );
            let (audit, _) =
                crate::audit::Audit::start(metrics.clone(), None, crate::audit::Settings::plain())?;
            let fetcher = std::sync::Arc::new(crate::fetch::Fetcher::new(
                cache,
                metrics.clone(),
                audit.clone(),
                config.cache_max_bytes,
            ));
            Ok(std::sync::Arc::new(crate::oci::service::Oci::new(
                config, store, fetcher, metrics, audit,
            )?))
        };
        let oci = match setup() {
            Ok(o) => o,
            Err(e) => {
                eprintln!("error: {e}");
                return 1;
            }
        };
        match oci
            .verify_reference(&lp, image, &crate::conn::Client("cli".into()))
            .await
        {
            Ok(v) => {
                println!("{}: {}", v.image, if v.allowed { "ALLOW" } else { "DENY" });
                if let Some(r) = &v.repository {
                    println!("  repository: {r}");
                }
                if let Some(d) = &v.digest {
                    println!("  digest: {d}");
                }
                for r in &v.reasons {
                    println!("  reason: {r}");
                }
                if v.allowed {
                    0
                } else {
                    1
                }
            }
            Err(e) => {
                eprintln!("{image}: cannot be decided now: {}", e.public_message());
                1
            }
        }
    });
    let _ = std::fs::remove_dir_all(&scratch);
    code
}

/// Opens the store for a command that needs it; a running gate holds it, so say where to go.
fn open_store(config: &Config, instead: &str) -> Result<crate::store::Store, i32> {
    // The shared store is open to every replica and command at once.
    if let Some(pg) = &config.store {
        return crate::store::Store::open_postgres(pg).map_err(|e| {
            eprintln!("error: {e}");
            1
        });
    }
    let path = config.data_dir.join("tollgate.redb");
    if !path.exists() {
        eprintln!(
            "error: no store at {} (has the gate run with this config?)",
            path.display()
        );
        return Err(1);
    }
    match crate::store::Store::open(&path) {
        Ok(s) => Ok(s),
        Err(crate::store::StoreError::Locked(_)) => {
            eprintln!(
                "error: the store {} is in use by a running gate; {instead}",
                path.display()
            );
            Err(1)
        }
        Err(e) => {
            eprintln!("error: {e}");
            Err(1)
        }
    }
}

/// `tollgate token create`: mints an admin API token, printed once on stdout; the store keeps
/// only its SHA-256. The creation is audited.
pub fn token_create(config: &Config, role: &str, name: Option<&str>, expires: Option<&str>) -> i32 {
    let role = match crate::admin::auth::Role::parse(role) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return 1;
        }
    };
    let now = crate::store::cache::now_secs();
    let expires = match expires.map(|d| crate::admin::auth::expiry(now, d)) {
        None => None,
        Some(Ok(t)) => Some(t),
        Some(Err(e)) => {
            eprintln!("error: --expires: {e}");
            return 1;
        }
    };
    if let Err(e) = std::fs::create_dir_all(&config.data_dir) {
        eprintln!("error: data_dir {}: {e}", config.data_dir.display());
        return 1;
    }
    let path = config.data_dir.join("tollgate.redb");
    let opened = match &config.store {
        Some(pg) => crate::store::Store::open_postgres(pg),
        None => crate::store::Store::open(&path),
    };
    let store = match opened {
        Ok(s) => s,
        Err(crate::store::StoreError::Locked(_)) => {
            eprintln!("error: the store {} is in use by a running gate; create tokens through POST /admin/v1/tokens (TOLLGATE_BOOTSTRAP_TOKEN_SHA256 gives a first admin credential)", path.display());
            return 1;
        }
        Err(e) => {
            eprintln!("error: {e}");
            return 1;
        }
    };
    let name = name
        .map(str::to_string)
        .unwrap_or_else(|| format!("cli-{role}"));
    let (rec, secret) = match crate::admin::auth::create(&store, &name, role, expires, now) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("error: {e}");
            return 1;
        }
    };
    let info = crate::admin::auth::TokenInfo::from(&rec);
    let mut ev = crate::audit::AuditEvent::about("admin", rec.id.clone(), None, None, "cli")
        .allow("admin_change", "tokens.create".into());
    ev.action = "admin.tokens.create".into();
    ev.actor = Some("tollgate token create (local)".into());
    ev.after = serde_json::to_value(&info).ok();
    if let Err(e) = crate::audit::append_blocking(&store, ev) {
        eprintln!("error: the token was made but its audit entry was not: {e}");
        return 1;
    }
    // Signed now, so the entry does not wait for the gate's next checkpoint.
    if let Ok(Some(signer)) = crate::audit::Settings::from_config(
        &config.audit,
        &config.data_dir,
        config.limits.min_free_disk,
    )
    .map(|s| s.signer)
    {
        if let Err(e) =
            crate::audit::checkpoint_blocking(&store, &signer, config.audit.witness_file.as_deref())
        {
            eprintln!("warning: the audit checkpoint could not be written: {e}");
        }
    }
    eprintln!(
        "token {} ({}, role {role}) created; it is shown once:",
        rec.id, rec.name
    );
    println!("{}", secret.0);
    0
}

/// A one-shot command over the store: a panic inside redb on a damaged page is reported as a
/// damaged store, without a backtrace.
fn quietly<T>(f: impl FnOnce() -> T) -> T {
    std::panic::set_hook(Box::new(|_| {}));
    let out = f();
    let _ = std::panic::take_hook();
    out
}

/// What `tollgate sigstore verify-bundle` is asked (the sigstore-conformance client protocol).
pub struct VerifyBundle {
    pub bundle: std::path::PathBuf,
    pub identity: Option<String>,
    pub issuer: Option<String>,
    pub key: Option<std::path::PathBuf>,
    pub trusted_root: Option<std::path::PathBuf>,
    pub staging: bool,
    /// A file, or `sha256:<hex>` of one.
    pub artifact: String,
}

/// `tollgate sigstore verify-bundle`: 0 only when the bundle verifies for that identity and
/// issuer (exactly, as a rule's `subject` and `issuer` match) or with that key, by the same
/// code the pull gate runs; offline, from the given trusted root or the one embedded at build
/// time.
pub fn sigstore_verify_bundle(a: &VerifyBundle) -> i32 {
    match verify_bundle(a) {
        Ok(what) => {
            println!("OK: {what}");
            0
        }
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    }
}

fn verify_bundle(a: &VerifyBundle) -> Result<String, String> {
    use crate::verify::bundle::{authenticate, Input};
    use crate::verify::trust::TrustRoot;
    let read =
        |p: &Path, what: &str| std::fs::read(p).map_err(|e| format!("{what} {}: {e}", p.display()));
    let root = match &a.trusted_root {
        Some(p) => TrustRoot::from_json(&read(p, "trusted root")?)
            .map_err(|e| format!("trusted root {}: {e}", p.display()))?,
        None => TrustRoot::embedded(a.staging)?,
    };
    let text = String::from_utf8(read(&a.bundle, "bundle")?)
        .map_err(|_| format!("bundle {}: not UTF-8", a.bundle.display()))?;
    let bundle = sigstore_verify::types::Bundle::from_json(&text)
        .map_err(|e| format!("bundle {}: {e}", a.bundle.display()))?;
    let bytes;
    let digest = a
        .artifact
        .get(..7)
        .filter(|p| p.eq_ignore_ascii_case("sha256:"))
        .map(|_| &a.artifact[7..]);
    let input = match digest {
        Some(hex) => {
            let d = crate::policy::Sha256::parse(hex)
                .map_err(|_| format!("{}: not sha256:<64 hex digits>", a.artifact))?;
            Input::Sha256(*d.as_bytes())
        }
        None => {
            bytes = read(Path::new(&a.artifact), "artifact")?;
            Input::Bytes(&bytes)
        }
    };
    match (&a.key, &a.identity, &a.issuer) {
        (Some(k), None, None) => {
            let pem = String::from_utf8(read(k, "key")?)
                .map_err(|_| format!("key {}: not PEM", k.display()))?;
            let key = crate::verify::keys::PublicKey::from_pem(&pem)
                .map_err(|e| format!("key {}: {e}", k.display()))?;
            authenticate(&root, &bundle, input, Some(&key))?;
            Ok(format!(
                "signed with the {} key {}",
                key.kind(),
                k.display()
            ))
        }
        (None, Some(identity), Some(issuer)) => {
            let wanted = crate::policy::oci::KeylessIdentity {
                issuer: issuer.clone(),
                subject: crate::policy::oci::SubjectMatch::Exact(identity.clone()),
            };
            let (signer, by) = authenticate(&root, &bundle, input, None)?
                .ok_or("the bundle carries no certificate")?;
            if !wanted.matches(std::slice::from_ref(&signer), by.as_deref()) {
                return Err(format!(
                    "signed by {signer} from {}, not by {wanted}",
                    by.as_deref().unwrap_or("an unnamed issuer")
                ));
            }
            Ok(format!("signed by {wanted}"))
        }
        _ => Err("give --key, or --certificate-identity with --certificate-oidc-issuer".into()),
    }
}

/// `tollgate cache verify`: hashes every file of the cache against its name (a file is named
/// by its sha256); exit 1 naming each that does not match. Reads files only, so it runs beside
/// a running gate (which re-checks them itself when they are first served, and in a
/// background scrub).
pub fn cache_verify(config: &Config) -> i32 {
    let root = config.data_dir.join("cache");
    let Ok(shards) = std::fs::read_dir(&root) else {
        println!("no cache at {}", root.display());
        return 0;
    };
    let (mut files, mut bytes, mut bad) = (0u64, 0u64, Vec::new());
    for shard in shards.flatten() {
        let Ok(entries) = std::fs::read_dir(shard.path()) else {
            continue;
        };
        for f in entries.flatten() {
            let name = f.file_name().to_string_lossy().into_owned();
            let Ok(want) = crate::policy::Sha256::parse_canonical(&name) else {
                continue;
            };
            files += 1;
            bytes += f.metadata().map(|m| m.len()).unwrap_or(0);
            match crate::fetch::hash_file(&f.path()) {
                Some(h) if h == want => {}
                Some(h) => bad.push(format!("{name}: the bytes hash to {h}")),
                None => bad.push(format!("{name}: unreadable")),
            }
        }
    }
    for b in &bad {
        eprintln!("damaged: {b}");
    }
    println!(
        "{files} cached file(s), {} MiB checked, {} damaged{}",
        bytes >> 20,
        bad.len(),
        if bad.is_empty() {
            String::new()
        } else {
            " (the gate never serves them: it evicts each when it meets it; delete them to reclaim the space now)".into()
        }
    );
    i32::from(!bad.is_empty())
}
