//! Serving: listener (plain or TLS), graceful shutdown, and SIGHUP reloads.

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use axum_server::tls_rustls::RustlsConfig;
use axum_server::Handle;

use crate::{app, AppState};

/// How long in-flight requests get to finish after SIGTERM / Ctrl-C.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(20);

/// One listener: which app it serves, where, and how clients must present themselves.
struct Listener {
    what: &'static str,
    addr: SocketAddr,
    app: axum::Router,
    /// TLS, optionally requiring client certificates from this CA (mTLS).
    tls: Option<(crate::config::Tls, Option<std::path::PathBuf>)>,
}

pub async fn serve(state: Arc<AppState>) -> Result<(), String> {
    let cfg = state.config.clone();
    tokio::spawn(prune_pins(state.clone()));
    let tls = cfg.tls.clone();
    let mut listeners = vec![Listener {
        what: "gate",
        addr: cfg.listen,
        app: app(state.clone()),
        tls: tls.clone().map(|t| (t, None)),
    }];
    if let Some(addr) = cfg.admin.listen {
        listeners.push(Listener {
            what: "admin API",
            addr,
            app: crate::admin_app(state.clone()),
            tls: tls.clone().map(|t| (t, None)),
        });
    }
    if let Some(addr) = cfg.admission.listen {
        listeners.push(Listener {
            what: "admission webhooks",
            addr,
            app: crate::admission_app(state.clone()),
            tls: tls.clone().map(|t| (t, cfg.admission.client_ca.clone())),
        });
    }
    if !cfg.admission.is_guarded() {
        tracing::warn!(
            "/k8s/admission and /k8s/mutate accept any caller: set [admission] client_ca or token_sha256_env, or serve them on [admission] listen behind a NetworkPolicy"
        );
    }
    let handles: Vec<Handle> = listeners.iter().map(|_| Handle::new()).collect();
    tokio::spawn(signals(state.clone(), handles.clone()));
    *state.admin_handle.lock().unwrap_or_else(|p| p.into_inner()) = handles.get(1).cloned();

    // The ready line comes once every listener accepts connections; printed on stdout so
    // scripts can find ephemeral ports (listen = "127.0.0.1:0").
    let scheme = if cfg.tls.is_some() { "https" } else { "http" };
    let names: Vec<&'static str> = listeners.iter().map(|l| l.what).collect();
    let waiting = handles.clone();
    tokio::spawn(async move {
        let mut addrs = Vec::new();
        for h in &waiting {
            match h.listening().await {
                Some(a) => addrs.push(a),
                None => return,
            }
        }
        for (i, (what, addr)) in names.iter().zip(&addrs).enumerate().rev() {
            match (i, *what) {
                (0, _) => println!("tollgate listening on {scheme}://{addr}"),
                (_, "admin API") => println!("tollgate admin listening on {scheme}://{addr}"),
                _ => println!("tollgate admission listening on {scheme}://{addr}"),
            }
            tracing::info!(%addr, listener = what, "listening");
        }
    });
    let header_limit = (cfg.limits.header_bytes as usize).max(8192);
    let running: Vec<_> = listeners
        .into_iter()
        .zip(handles.iter().cloned())
        .map(|(l, h)| {
            let limits = crate::conn::ConnLimits::new(&cfg.limits, state.metrics.clone());
            Box::pin(listen(l, h, limits, header_limit, cfg.limits.head_timeout))
        })
        .collect();
    // Every listener lives and dies with the others: one that fails takes the rest down, so the
    // gate never runs half-configured (or hangs waiting on a listener that is gone).
    let (first, _, rest) = futures_util::future::select_all(running).await;
    state.ready.store(false, Relaxed);
    for h in &handles {
        h.graceful_shutdown(Some(SHUTDOWN_GRACE));
    }
    let mut result = first;
    for r in futures_util::future::join_all(rest).await {
        if result.is_ok() {
            result = r;
        }
    }
    // Everything recorded before the listeners closed is stored before the process exits,
    // with the denials folded so far and a signed checkpoint of the head.
    state.audit.close().await;
    result
}

/// Serves one listener with the connection limits of `[limits]` (caps, head and idle timeouts)
/// and its TLS, until its handle shuts it down.
async fn listen(
    l: Listener,
    handle: Handle,
    limits: Arc<crate::conn::ConnLimits>,
    header_limit: usize,
    head_timeout: Duration,
) -> Result<(), String> {
    let svc = l.app.into_make_service_with_connect_info::<SocketAddr>();
    let guard = crate::conn::GuardAcceptor::new(limits);
    let what = l.what;
    let addr = l.addr;
    let configure =
        |b: &mut hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor>| {
            // hyper's read buffer bounds the request head (larger heads get 431), and its header
            // read timeout bounds how long a head may take, or a kept-alive connection may wait for
            // the next one: a slowloris client is dropped after head_timeout.
            //
            // HTTP/1.1 only (`Http1Only`, and ALPN): an HTTP/2 connection idles without a
            // head to time, carries hundreds of streams (bodies, open files) past the
            // per-connection limits, and can stall every response with a zero flow-control
            // window while TCP keeps moving. pip, uv, containerd, docker, podman, skopeo and
            // the Kubernetes API server all speak HTTP/1.1.
            b.http1()
                .max_buf_size(header_limit)
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(head_timeout);
        };
    let served = match l.tls {
        Some((tls, client_ca)) => {
            crate::fetch::install_crypto_provider();
            let config = rustls_config(&tls, client_ca.as_deref())?;
            let acceptor = crate::conn::Http1Only::new(
                axum_server::tls_rustls::RustlsAcceptor::new(config)
                    .handshake_timeout(head_timeout)
                    .acceptor(guard),
                head_timeout,
            );
            let mut server = axum_server::bind(addr).acceptor(acceptor).handle(handle);
            configure(server.http_builder());
            server.serve(svc).await
        }
        None => {
            let mut server = axum_server::bind(addr)
                .acceptor(crate::conn::Http1Only::new(guard, head_timeout))
                .handle(handle);
            configure(server.http_builder());
            server.serve(svc).await
        }
    };
    served.map_err(|e| format!("cannot serve the {what} on {addr}: {e}"))
}

/// The server's TLS configuration; with `client_ca`, a client certificate chaining to it is
/// required in the handshake (mTLS), so nothing else can even send a request.
fn rustls_config(
    tls: &crate::config::Tls,
    client_ca: Option<&std::path::Path>,
) -> Result<RustlsConfig, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&tls.cert)
        .and_then(|i| i.collect())
        .map_err(|e| format!("tls: cannot load {}: {e}", tls.cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(&tls.key)
        .map_err(|e| format!("tls: cannot load {}: {e}", tls.key.display()))?;
    let builder = rustls::ServerConfig::builder();
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_file_iter(ca)
                .map_err(|e| format!("[admission] client_ca {}: {e}", ca.display()))?
            {
                let c = c.map_err(|e| format!("[admission] client_ca {}: {e}", ca.display()))?;
                roots
                    .add(c)
                    .map_err(|e| format!("[admission] client_ca {}: {e}", ca.display()))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots))
                .build()
                .map_err(|e| format!("[admission] client_ca {}: {e}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| format!("tls: {} / {}: {e}", tls.cert.display(), tls.key.display()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(RustlsConfig::from_config(Arc::new(config)))
}

async fn signals(state: Arc<AppState>, handles: Vec<Handle>) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut hup), Ok(mut term)) = (
        signal(SignalKind::hangup()),
        signal(SignalKind::terminate()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    loop {
        tokio::select! {
            _ = hup.recv() => reload(&state).await,
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    tracing::info!("shutting down");
    state.ready.store(false, Relaxed);
    for handle in handles {
        handle.graceful_shutdown(Some(SHUTDOWN_GRACE));
    }
}

/// Once a day (the first a minute after start): first-sight pins no rule admits any more and
/// unused for `prune_pins_after` are pruned.
async fn prune_pins(state: Arc<AppState>) {
    let mut wait = Duration::from_secs(60);
    loop {
        tokio::time::sleep(wait).await;
        wait = Duration::from_secs(86_400);
        let lp = state.policy();
        match state.pypi.prune_pins(&lp.policy).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                pins = n,
                "first-sight pins pruned (no rule admits them, unused for prune_pins_after)"
            ),
            Err(e) => tracing::warn!(error = %e, "first-sight pin pruning"),
        }
    }
}

/// SIGHUP: reload every allowlist file, all or nothing.
async fn reload(state: &Arc<AppState>) {
    // One change at a time: a reload must not put back an older view of the API's rules.
    let _writing = state.admin_writes.lock().await;
    // Reading and validating the files is blocking work; keep it off the request workers.
    let st = state.clone();
    match tokio::task::spawn_blocking(move || st.reload()).await {
        Ok(Ok((exact, release))) => tracing::info!(exact, release, "allowlists reloaded"),
        Ok(Err(errors)) => {
            for e in &errors {
                tracing::error!(error = %e, "allowlist reload refused");
            }
            tracing::error!(
                count = errors.len(),
                "allowlists NOT reloaded; the previous policy stays in force"
            );
        }
        Err(e) => {
            tracing::error!(error = %e, "allowlist reload task failed; the previous policy stays in force")
        }
    }
}
