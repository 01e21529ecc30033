//! tollgate: a supply-chain gate. This build serves the PyPI-compatible index.

pub mod admin;
pub mod admission;
pub mod audit;
pub mod cli;
pub mod config;
pub mod conn;
pub mod error;
pub mod fetch;
pub mod metrics;
pub mod oci;
pub mod policy;
pub mod pypi;
pub mod server;
pub mod store;
pub mod verify;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, RwLock};

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use audit::Audit;
use config::Config;
use error::ApiError;
use metrics::{Metrics, Route};
use policy::allowlist::LoadError;
use pypi::service::{LoadedPolicy, Pypi};
use store::{Cache, Store};

/// Longest request target accepted; longer ones get 414.
pub const MAX_URI_BYTES: usize = 8 * 1024;

pub struct AppState {
    pub config: Config,
    policy: RwLock<Arc<LoadedPolicy>>,
    policy_version: AtomicU64,
    pub pypi: Arc<Pypi>,
    pub oci: Arc<oci::service::Oci>,
    pub metrics: Arc<Metrics>,
    pub ready: AtomicBool,
    pub store: Arc<Store>,
    pub audit: Audit,
    /// Failed admin authentications per client.
    pub throttle: admin::auth::Throttle,
    /// `TOLLGATE_BOOTSTRAP_TOKEN_SHA256`: an admin credential for making the first token.
    pub bootstrap_sha256: Option<String>,
    /// Serialises admin writes and reloads: each reads the rules, validates and applies.
    pub admin_writes: tokio::sync::Mutex<()>,
    /// `[admin.oidc]`: JWTs as admin credentials.
    pub oidc: Option<admin::oidc::Oidc>,
    /// The allowlist files' policy as last loaded (start-up, SIGHUP, `POST /admin/v1/reload`):
    /// API writes build on it and never read the files themselves.
    files_policy: RwLock<Arc<policy::Policy>>,
    /// The admin listener's handle, when `[admin] listen` runs one (to stop it with the gate).
    pub admin_handle: std::sync::Mutex<Option<axum_server::Handle>>,
}

impl AppState {
    /// Opens the store and cache, loads the allowlists and builds the upstream clients.
    /// Must run inside a tokio runtime (the audit writer is a task).
    pub fn open(config: Config) -> Result<Arc<AppState>, String> {
        std::fs::create_dir_all(&config.data_dir)
            .map_err(|e| format!("data_dir {}: {e}", config.data_dir.display()))?;
        let store = Arc::new(
            Store::open(&config.data_dir.join("tollgate.redb")).map_err(|e| e.to_string())?,
        );
        let oidc = config
            .admin
            .oidc
            .clone()
            .map(admin::oidc::Oidc::new)
            .transpose()?;
        let api_rules = admin::rules::rules(&store).map_err(|e| e.to_string())?;
        let api_revoked = admin::rules::revocations(&store).map_err(|e| e.to_string())?;
        let joined = |errs: Vec<LoadError>| {
            errs.iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("\n")
        };
        let files_policy = read_files_policy(&config)
            .and_then(|p| finish_policy(&config, p))
            .map_err(joined)?;
        let policy =
            with_api(&config, files_policy.clone(), &api_rules, &api_revoked).map_err(joined)?;
        let bootstrap_sha256 =
            match std::env::var("TOLLGATE_BOOTSTRAP_TOKEN_SHA256") {
                Err(_) => None,
                Ok(v) if v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit()) => {
                    Some(v.to_ascii_lowercase())
                }
                Ok(_) => return Err(
                    "TOLLGATE_BOOTSTRAP_TOKEN_SHA256 must be the 64 hex digits of a token's sha256"
                        .into(),
                ),
            };
        let metrics = Arc::new(Metrics::default());
        let cache = Arc::new(
            Cache::open(
                &config.data_dir,
                config.cache_max_bytes,
                store.clone(),
                metrics.clone(),
            )
            .map_err(|e| e.to_string())?,
        );
        cache.set_min_free(config.limits.min_free_disk);
        let settings = audit::Settings::from_config(
            &config.audit,
            &config.data_dir,
            config.limits.min_free_disk,
        )?;
        let (audit, _writer) = Audit::start(metrics.clone(), Some(store.clone()), settings)?;
        if let Some(keep) = config.audit.retention {
            let given = audit::verify::Given {
                keys: audit.keys(),
                external: Vec::new(),
                checkpoint_every: Some(config.audit.checkpoint_every),
            };
            tokio::spawn(audit::archive::run(
                store.clone(),
                audit::archive::dir(&config.data_dir),
                keep,
                Arc::new(given),
                metrics.clone(),
            ));
        }
        let fetcher = Arc::new(fetch::Fetcher::new(
            cache.clone(),
            metrics.clone(),
            audit.clone(),
            config.cache_max_bytes,
        ));
        // Cached bytes are re-checked once per run: when served first, and in the background.
        let f2 = fetcher.clone();
        tokio::spawn(async move { f2.report_startup_tampering().await });
        tokio::spawn(fetcher.clone().scrub(config.cache_scrub_rate));
        let oci = Arc::new(oci::service::Oci::new(
            &config,
            store.clone(),
            fetcher.clone(),
            metrics.clone(),
            audit.clone(),
        )?);
        let pypi = Arc::new(Pypi::new(
            &config,
            store.clone(),
            cache,
            fetcher,
            metrics.clone(),
            audit.clone(),
        )?);
        Ok(Arc::new(AppState {
            config,
            policy: RwLock::new(Arc::new(LoadedPolicy { policy, version: 1 })),
            policy_version: AtomicU64::new(1),
            pypi,
            oci,
            metrics,
            ready: AtomicBool::new(true),
            store,
            audit,
            throttle: admin::auth::Throttle::default(),
            bootstrap_sha256,
            admin_writes: tokio::sync::Mutex::new(()),
            oidc,
            files_policy: RwLock::new(Arc::new(files_policy)),
            admin_handle: std::sync::Mutex::new(None),
        }))
    }

    /// The policy in force now; every request decides against the one it took here.
    pub fn policy(&self) -> Arc<LoadedPolicy> {
        self.policy
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Builds the policy from the files and the API rules in the store, without applying it.
    pub fn build_policy(
        &self,
        api_rules: &[admin::rules::ApiRule],
        revoked: &[admin::rules::ApiRevocation],
    ) -> Result<policy::Policy, Vec<LoadError>> {
        let files = self
            .files_policy
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        with_api(&self.config, (*files).clone(), api_rules, revoked)
    }

    /// Puts a built policy in force (every request after this decides against it).
    pub fn apply(&self, policy: policy::Policy) -> u64 {
        let version = self.policy_version.fetch_add(1, Relaxed) + 1;
        *self.policy.write().unwrap_or_else(|p| p.into_inner()) =
            Arc::new(LoadedPolicy { policy, version });
        self.pypi.invalidate();
        version
    }

    /// Reloads every allowlist file (with the API rules). All or nothing: on any error the
    /// policy in force stays.
    pub fn reload(&self) -> Result<(usize, usize), Vec<LoadError>> {
        let store_err = |e: store::StoreError| {
            vec![LoadError {
                file: "store".into(),
                line: 0,
                message: e.to_string(),
            }]
        };
        let built = (|| {
            let files =
                read_files_policy(&self.config).and_then(|p| finish_policy(&self.config, p))?;
            let rules = admin::rules::rules(&self.store).map_err(store_err)?;
            let revoked = admin::rules::revocations(&self.store).map_err(store_err)?;
            let policy = with_api(&self.config, files.clone(), &rules, &revoked)?;
            Ok::<_, Vec<LoadError>>((files, policy))
        })();
        match built {
            Ok((files, policy)) => {
                *self.files_policy.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(files);
                let counts = (policy.exact_count(), policy.release_count());
                self.apply(policy);
                self.metrics.reloads_ok.fetch_add(1, Relaxed);
                Ok(counts)
            }
            Err(e) => {
                self.metrics.reloads_failed.fetch_add(1, Relaxed);
                Err(e)
            }
        }
    }
}

/// Every `*.toml` below `dir`, sorted, so the policy does not depend on directory order.
pub fn allowlist_files(dir: &Path) -> Result<Vec<PathBuf>, String> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
        for e in std::fs::read_dir(dir)? {
            let p = e?.path();
            if p.is_dir() {
                walk(&p, out)?;
            } else if p.extension().is_some_and(|x| x == "toml") {
                out.push(p);
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(dir, &mut out).map_err(|e| format!("allowlist_dir {}: {e}", dir.display()))?;
    out.sort();
    Ok(out)
}

/// Reads the allowlist files and builds the policy (the I/O half of `policy::allowlist::load`).
pub fn load_policy(config: &Config) -> Result<policy::Policy, Vec<LoadError>> {
    load_policy_with(config, &[], &[])
}

/// As [`load_policy`], with the rules and revocations made through the admin API (see
/// [`with_api`]).
pub fn load_policy_with(
    config: &Config,
    api_rules: &[admin::rules::ApiRule],
    api_revocations: &[admin::rules::ApiRevocation],
) -> Result<policy::Policy, Vec<LoadError>> {
    let files = read_files_policy(config)?;
    with_api(config, files, api_rules, api_revocations)
}

/// The allowlist files' rules alone, without their keys (see [`finish_policy`]).
fn read_files_policy(config: &Config) -> Result<policy::Policy, Vec<LoadError>> {
    let one = |message: String| {
        vec![LoadError {
            file: config.allowlist_dir.display().to_string(),
            line: 0,
            message,
        }]
    };
    let paths = allowlist_files(&config.allowlist_dir).map_err(one)?;
    let mut files = Vec::new();
    for p in paths {
        let text = std::fs::read_to_string(&p).map_err(|e| one(format!("{}: {e}", p.display())))?;
        files.push((p.display().to_string(), text));
    }
    policy::allowlist::load_with_registries(&files, &config.index_names(), &config.registry_hosts())
}

/// Adds the admin API's rules and revocations to the files' policy: each API rule is validated
/// by the same loader as a file (named `api:<id>`) and merged (an identical git rule makes it
/// one rule; a conflicting one is an error at the API rule); then keys and the trusted root are
/// read for whatever the rules name.
pub fn with_api(
    config: &Config,
    mut policy: policy::Policy,
    api_rules: &[admin::rules::ApiRule],
    api_revocations: &[admin::rules::ApiRevocation],
) -> Result<policy::Policy, Vec<LoadError>> {
    let mut api_errors = Vec::new();
    for r in api_rules {
        let name = format!("api:{}", r.id);
        match policy::allowlist::load_with_registries(
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
        // A revocation that cannot be read must not quietly stop applying: refuse the policy.
        let Ok(sha) = policy::Sha256::parse(&rv.sha256) else {
            api_errors.push(LoadError {
                file: "api:revocations".into(),
                line: 1,
                message: format!("stored revocation {:?} is not a sha256", rv.sha256),
            });
            continue;
        };
        policy
            .revoked
            .entry(sha)
            .or_insert(policy::allowlist::Revocation {
                reason: rv.reason.clone(),
                source: policy::Source {
                    file: format!("api:revoked by {}", rv.by),
                    line: 1,
                },
            });
    }
    if !api_errors.is_empty() {
        return Err(api_errors);
    }
    finish_policy(config, policy)
}

/// Reads the keys and the trusted root the rules name (those not read yet), and checks that no
/// threshold counts one key twice.
fn finish_policy(
    config: &Config,
    mut policy: policy::Policy,
) -> Result<policy::Policy, Vec<LoadError>> {
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
            if policy.keys.contains_key(name) {
                continue;
            }
            let path = keys_dir.join(name);
            let parsed = std::fs::read_to_string(&path)
                .map_err(|e| format!("key {}: {e}", path.display()))
                .and_then(|pem| {
                    verify::cosign::TrustedKey::from_pem(name, &pem)
                        .map_err(|e| format!("key {}: {e}", path.display()))
                });
            match parsed {
                Ok(key) => {
                    policy.keys.insert(name.clone(), Arc::new(key));
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
    if policy.trust_root.is_none() {
        if let Some(path) = &config.trusted_root {
            match std::fs::read(path)
                .map_err(|e| e.to_string())
                .and_then(|b| verify::trust::TrustRoot::from_json(&b))
            {
                Ok(root) => policy.trust_root = Some(Arc::new(root)),
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
        let usable = match (&config.trusted_root, &policy.trust_root) {
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
    // A threshold counts distinct keys: one key saved under two names must not count twice.
    for rule in &policy.images {
        let Some(sig) = &rule.signature else { continue };
        let mut seen: std::collections::HashMap<[u8; 32], &str> = std::collections::HashMap::new();
        for name in &sig.keys {
            if let Some(k) = policy.keys.get(name) {
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
        Ok(policy)
    } else {
        Err(errors)
    }
}

/// The whole HTTP surface (the admin API too, unless `[admin] listen` gives it a listener of
/// its own: then [`admin_app`] serves it there and it is absent here).
pub fn app(state: Arc<AppState>) -> Router {
    let mut r = Router::new()
        .merge(pypi::routes())
        .merge(oci::routes())
        .merge(admission::verify_routes());
    if state.config.admin.listen.is_none() {
        r = r.merge(admin::routes(state.clone()));
    }
    // With `[admission] listen`, the webhooks are served there only.
    if state.config.admission.listen.is_none() {
        r = r.merge(admission::webhook_routes(state.clone()));
    }
    r.route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .fallback(|| async { ApiError::NotFound("not found".into()) })
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            admin::pull_guard,
        ))
        .layer(axum::middleware::from_fn_with_state(state.clone(), edge))
        .with_state(state)
}

/// The admission webhooks alone, for `[admission] listen`.
pub fn admission_app(state: Arc<AppState>) -> Router {
    Router::new()
        .merge(admission::webhook_routes(state.clone()))
        .route("/healthz", get(|| async { "ok\n" }))
        .fallback(|| async { ApiError::NotFound("not found".into()) })
        .layer(axum::middleware::from_fn_with_state(state.clone(), edge))
        .with_state(state)
}

/// The admin API alone, for `[admin] listen`.
pub fn admin_app(state: Arc<AppState>) -> Router {
    Router::new()
        .merge(admin::routes(state.clone()))
        .route("/healthz", get(|| async { "ok\n" }))
        .fallback(|| async { ApiError::NotFound("not found".into()) })
        .layer(axum::middleware::from_fn_with_state(state.clone(), edge))
        .with_state(state)
}

/// The store's size and the free space under data_dir, into the metrics; `Some` sentence when
/// the disk is below `min_free_disk`.
fn disk_state(st: &AppState) -> (u64, Option<u64>, Option<String>) {
    let size = st.store.size_bytes();
    st.metrics.store_bytes.store(size, Relaxed);
    let free = store::disk_free(&st.config.data_dir);
    if let Some(f) = free {
        st.metrics.disk_free_bytes.store(f, Relaxed);
    }
    let low = free
        .filter(|f| *f < st.config.limits.min_free_disk)
        .map(|f| {
            format!(
                "disk nearly full: {} MiB free under {}, below min_free_disk ({} MiB): new files are served but not cached, decisions are still served and audited",
                f >> 20,
                st.config.data_dir.display(),
                st.config.limits.min_free_disk >> 20
            )
        });
    (size, free, low)
}

async fn readyz(State(st): State<Arc<AppState>>) -> Response {
    if !st.store.usable() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "store unusable after an I/O error (is the disk full?): it is reopened as soon as it can be\n",
        )
            .into_response();
    }
    if st.ready.load(Relaxed) {
        let lp = st.policy();
        let (size, free, low) = disk_state(&st);
        // Still 200 when the disk is low: the gate goes on deciding; the body says what is
        // degraded, for the operator and the alerting on it.
        let mut body = format!(
            "ready: {} projects, policy version {}; store {} MiB, {} free\n",
            lp.policy.projects.len(),
            lp.version,
            size >> 20,
            free.map_or("unknown".to_string(), |f| format!("{} MiB", f >> 20)),
        );
        if let Some(l) = low {
            body.push_str(&l);
            body.push('\n');
        }
        if let Some(p) = st.audit.integrity() {
            body.push_str(&format!(
                "audit log does not verify (checkpoints are not signed until it is resolved): {p}\n"
            ));
        }
        (StatusCode::OK, body).into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response()
    }
}

async fn metrics_text(State(st): State<Arc<AppState>>) -> Response {
    disk_state(&st);
    let mut r = st.metrics.render().into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    r
}

/// Limits the request target and counts every response by route class.
async fn edge(State(st): State<Arc<AppState>>, mut req: Request, next: Next) -> Response {
    // The client, once: the TCP peer, or the forwarded client when the peer is a trusted proxy.
    if let Some(peer) = req
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip())
    {
        let ip = conn::client_ip(peer, req.headers(), &st.config.limits.trusted_proxies);
        req.extensions_mut().insert(conn::ClientIp(ip));
    }
    // A request body that stops arriving for idle_timeout ends the request (the APIs that take
    // bodies read them whole; a client trickling one must not hold a worker).
    if matches!(
        *req.method(),
        axum::http::Method::POST | axum::http::Method::PUT | axum::http::Method::PATCH
    ) {
        let idle = st.config.limits.idle_timeout;
        // And the whole body within body_timeout: a pace just inside idle_timeout is no way
        // to hold a worker for ever.
        let deadline = tokio::time::Instant::now() + st.config.limits.body_timeout;
        let (parts, body) = req.into_parts();
        let timed =
            futures_util::stream::unfold(Some(body.into_data_stream()), move |stream| async move {
                use futures_util::StreamExt;
                let mut s = stream?;
                let wait =
                    idle.min(deadline.saturating_duration_since(tokio::time::Instant::now()));
                match tokio::time::timeout(wait, s.next()).await {
                    Ok(Some(item)) => Some((item, Some(s))),
                    Ok(None) => None,
                    Err(_) => Some((
                        Err(axum::Error::new(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            "the request body stopped arriving, or took longer than body_timeout",
                        ))),
                        None,
                    )),
                }
            });
        req = Request::from_parts(parts, axum::body::Body::from_stream(timed));
    }
    let path = req.uri().path();
    let route = if path.starts_with("/simple") {
        Route::Simple
    } else if path.starts_with("/files/") {
        Route::Files
    } else if path.starts_with("/v2") {
        Route::Oci
    } else if matches!(path, "/healthz" | "/readyz" | "/metrics") {
        Route::Ops
    } else {
        Route::Other
    };
    let resp = if req.uri().to_string().len() > MAX_URI_BYTES {
        ApiError::UriTooLong.into_response()
    } else {
        next.run(req).await
    };
    st.metrics.request(route, resp.status().as_u16());
    resp
}
