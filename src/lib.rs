//! tollgate: a supply-chain gate. This build serves the PyPI-compatible index.

pub mod admin;
pub mod admission;
pub mod audit;
pub mod cli;
pub mod config;
pub mod conn;
pub mod error;
pub mod fetch;
pub mod loader;
pub mod logs;
pub mod metrics;
pub mod oci;
pub mod policy;
pub mod pypi;
pub mod replicas;
pub mod server;
pub mod store;
pub mod sync;
pub mod verify;
pub mod vulns;

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use audit::Audit;
use config::Config;
use error::ApiError;
use loader::{InForce, LoadedPolicy};
use metrics::{Metrics, Route};
use policy::allowlist::LoadError;
use pypi::service::Pypi;
use store::{Cache, Store};

/// One request as a gate decides and serves it: the policy it took when it arrived, who asked,
/// whether it is a HEAD, and its headers (conditional and range requests).
pub struct Ask<'a> {
    pub policy: &'a LoadedPolicy,
    pub client: &'a conn::Client,
    pub head: bool,
    pub headers: &'a axum::http::HeaderMap,
}

/// Longest request target accepted; longer ones get 414.
pub const MAX_URI_BYTES: usize = 8 * 1024;

pub struct AppState {
    pub config: Config,
    /// The policy in force, and the files' policy API writes build on.
    in_force: InForce,
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
    /// The admin listener's handle, when `[admin] listen` runs one (to stop it with the gate).
    pub admin_handle: std::sync::Mutex<Option<axum_server::Handle>>,
    /// With a shared store: what /readyz says of the other replicas (allowlist files that
    /// differ), `None` when there is nothing to say.
    pub replicas: std::sync::Mutex<Option<String>>,
    /// With a shared store: why a change made on another replica is not in force here.
    pub policy_problem: std::sync::Mutex<Option<String>>,
    /// With a shared store: when (ms since the gate started) the changes made on other
    /// replicas were last known to be followed; see [`AppState::policy_stale`].
    pub synced_ms: std::sync::atomic::AtomicU64,
    started: std::time::Instant,
}

impl AppState {
    /// Opens the store and cache, loads the allowlists and builds the upstream clients.
    /// Must run inside a tokio runtime (the audit writer is a task).
    pub fn open(config: Config) -> Result<Arc<AppState>, String> {
        std::fs::create_dir_all(&config.data_dir)
            .map_err(|e| format!("data_dir {}: {e}", config.data_dir.display()))?;
        let store = Arc::new(
            match &config.store {
                Some(pg) => Store::open_postgres(pg),
                None => Store::open(&config.data_dir.join("tollgate.redb")),
            }
            .map_err(|e| e.to_string())?,
        );
        let oidc = config
            .admin
            .oidc
            .clone()
            .map(admin::oidc::Oidc::new)
            .transpose()?;
        let in_force = InForce::load(&config, &store).map_err(|errs| {
            errs.iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("\n")
        })?;
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
        // A store file removed or replaced while the gate runs is noticed within seconds (the
        // open handle would go on writing to a file no one will read again).
        if !store.shared() {
            let watched = store.clone();
            tokio::spawn(async move {
                let mut every = tokio::time::interval(std::time::Duration::from_secs(2));
                while watched.check_file().is_ok() {
                    every.tick().await;
                }
            });
        }
        // The local cache: under data_dir, or the directory `[cache] url` names. Its index is
        // the replica's own (the files are on its disk): in the store when the store is the
        // embedded one, in a file beside the cache when the store is shared.
        let (cache_dir, remote) = match &config.cache {
            config::CacheUrl::Local(dir) => (dir.clone(), None),
            config::CacheUrl::Remote(url) => (
                config.data_dir.clone(),
                Some(Arc::new(store::remote::Remote::open(url)?)),
            ),
        };
        let index = if store.shared() {
            std::fs::create_dir_all(&cache_dir)
                .map_err(|e| format!("cache directory {}: {e}", cache_dir.display()))?;
            Arc::new(Store::open(&cache_dir.join("cache-index.redb")).map_err(|e| e.to_string())?)
        } else {
            store.clone()
        };
        let cache = Arc::new(
            Cache::open(&cache_dir, config.cache_max_bytes, index, metrics.clone())
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
            let given = audit.given();
            tokio::spawn(audit::archive::run(
                store.clone(),
                audit::archive::dir(&config.data_dir),
                keep,
                Arc::new(given),
                metrics.clone(),
            ));
        }
        let fetcher = Arc::new(
            fetch::Fetcher::new(
                cache.clone(),
                metrics.clone(),
                audit.clone(),
                config.cache_max_bytes,
            )
            .with_remote(remote),
        );
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
        let throttle = admin::auth::Throttle::new(&store);
        let state = Arc::new(AppState {
            config,
            in_force,
            pypi,
            oci,
            metrics,
            ready: AtomicBool::new(true),
            store,
            audit,
            throttle,
            bootstrap_sha256,
            admin_writes: tokio::sync::Mutex::new(()),
            oidc,
            admin_handle: std::sync::Mutex::new(None),
            replicas: std::sync::Mutex::new(None),
            policy_problem: std::sync::Mutex::new(None),
            synced_ms: std::sync::atomic::AtomicU64::new(0),
            started: std::time::Instant::now(),
        });
        if state.store.shared() {
            tokio::spawn(replicas::follow(Arc::downgrade(&state)));
        }
        Ok(state)
    }

    /// The policy in force now; every request decides against the one it took here.
    pub fn policy(&self) -> Arc<LoadedPolicy> {
        self.in_force.get()
    }

    /// Builds the policy from the files and the API rules in the store, without applying it.
    pub fn build_policy(
        &self,
        api_rules: &[loader::ApiRule],
        revoked: &[loader::ApiRevocation],
    ) -> Result<loader::Built, Vec<LoadError>> {
        self.in_force.build(&self.config, api_rules, revoked)
    }

    /// Milliseconds since the gate started.
    pub fn uptime_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// With a shared store: why this replica cannot vouch that its policy holds every change
    /// made on the other replicas (it has not read the store for longer than
    /// [`replicas::LEASE_MS`]). A revocation made elsewhere is then either in force here or
    /// every request is refused (503): the gate fails closed rather than serve what may have
    /// been revoked.
    pub fn policy_stale(&self) -> Option<String> {
        if !self.store.shared() {
            return None;
        }
        let age = self
            .uptime_ms()
            .saturating_sub(self.synced_ms.load(Relaxed));
        if age <= replicas::LEASE_MS {
            return None;
        }
        Some(format!("the shared store has not been read for {age} ms: changes made on other replicas may not be in force here, so nothing is served until it answers"))
    }

    /// The digest of the allowlist files in force (replicas compare theirs).
    pub fn files_digest(&self) -> String {
        self.in_force.files_digest()
    }

    /// Puts a built policy in force (every request after this decides against it).
    pub fn apply(&self, built: loader::Built) -> u64 {
        let version = self.in_force.apply(built);
        self.pypi.invalidate();
        version
    }

    /// Reloads every allowlist file (with the API rules). All or nothing: on any error the
    /// policy in force stays.
    pub fn reload(&self) -> Result<(usize, usize), Vec<LoadError>> {
        match self.in_force.reread(&self.config, &self.store) {
            Ok(built) => {
                let counts = (built.policy.exact_count(), built.policy.release_count());
                self.apply(built);
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

/// How current the vulnerability database in force is: its age goes to the metrics, and a
/// database older than `max_age` is named (the gate still decides with it: an old database
/// refuses less than a new one, never more, so readiness stays).
fn vuln_state(st: &AppState) -> Option<String> {
    let cfg = st.config.vulnerabilities.as_ref()?;
    let lp = st.policy();
    let v = lp.policy.vulnerabilities.as_ref()?;
    let age = match v.db.newest {
        Some(t) => (crate::store::cache::now_secs() - t).max(0) as u64,
        None => u64::MAX,
    };
    st.metrics
        .vuln_db_age
        .store(age.min(i64::MAX as u64), Relaxed);
    let stale = age > cfg.max_age.as_secs();
    st.metrics.vuln_db_stale.store(stale as u64, Relaxed);
    stale.then(|| match v.db.newest {
        Some(t) => format!(
            "vulnerability database {} is stale: its newest record is from {}, older than max_age ({}s); run `tollgate osv update` and reload",
            cfg.database.display(),
            crate::policy::units::format_rfc3339(t),
            cfg.max_age.as_secs()
        ),
        None => format!(
            "vulnerability database {} has no dated PyPI record: its age is unknown",
            cfg.database.display()
        ),
    })
}

async fn readyz(State(st): State<Arc<AppState>>) -> Response {
    if let Err(why) = st.store.check_file() {
        return (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")).into_response();
    }
    if !st.store.usable() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "store unusable after an I/O error (is the disk full?): it is reopened as soon as it can be\n",
        )
            .into_response();
    }
    if let Some(why) = st.policy_stale() {
        return (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")).into_response();
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
        if let Some(p) = st.audit.witness_problem() {
            body.push_str(&format!(
                "audit witness_file cannot be written (it vouches only up to its last checkpoint): {p}\n"
            ));
        }
        if let Some(v) = vuln_state(&st) {
            body.push_str(&v);
            body.push('\n');
        }
        for note in [&st.replicas, &st.policy_problem] {
            if let Some(p) = note.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
                body.push_str(p);
                body.push('\n');
            }
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
    vuln_state(&st);
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
    let decides = !matches!(route, Route::Ops) && !path.starts_with("/admin");
    let stale = if decides { st.policy_stale() } else { None };
    let resp = if req.uri().to_string().len() > MAX_URI_BYTES {
        ApiError::UriTooLong.into_response()
    } else if let Some(why) = stale {
        ApiError::Unavailable(why).into_response()
    } else {
        // A file's sha256 is its path's third segment (`/files/{project}/{sha256}/{name}`).
        let file = matches!(route, Route::Files)
            .then(|| {
                path.split('/')
                    .nth(3)
                    .and_then(|h| policy::Sha256::parse(h).ok())
            })
            .flatten();
        let resp = next.run(req).await;
        match file {
            Some(sha) if resp.status().is_success() => cut_off_when_refused(st.clone(), sha, resp),
            _ => resp,
        }
    };
    st.metrics.request(route, resp.status().as_u16());
    resp
}

/// A file's bytes stop flowing once it is revoked, or once this replica can no longer vouch
/// for its policy (see [`AppState::policy_stale`]): a transfer under way when a revocation is
/// stored (a slow client, a slow upstream, a request that joined a download) is cut off at its
/// next chunk, not served to the end.
fn cut_off_when_refused(st: Arc<AppState>, sha: policy::Sha256, resp: Response) -> Response {
    use futures_util::StreamExt as _;
    let (parts, body) = resp.into_parts();
    let chunks = body.into_data_stream();
    let guarded = futures_util::stream::unfold(Some((chunks, st)), move |state| async move {
        let (mut chunks, st) = state?;
        let item = chunks.next().await?;
        let refused = match st.policy().policy.revoked.get(&sha) {
            Some(r) => Some(format!("revoked while it was being sent: {}", r.reason)),
            None => st.policy_stale(),
        };
        match refused {
            Some(why) => {
                tracing::warn!(%sha, reason = %why, "transfer cut off");
                Some((Err(std::io::Error::other(why)), None))
            }
            None => Some((item.map_err(std::io::Error::other), Some((chunks, st)))),
        }
    });
    Response::from_parts(parts, axum::body::Body::from_stream(guarded))
}
