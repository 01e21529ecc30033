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

pub async fn serve(state: Arc<AppState>) -> Result<(), String> {
    let cfg = state.config.clone();
    let handle = Handle::new();
    let admin_handle = Handle::new();
    tokio::spawn(signals(
        state.clone(),
        vec![handle.clone(), admin_handle.clone()],
    ));
    *state.admin_handle.lock().unwrap_or_else(|p| p.into_inner()) = Some(admin_handle.clone());
    let admin_server = cfg
        .admin
        .listen
        .map(|addr| tokio::spawn(serve_admin(state.clone(), addr, admin_handle.clone())));

    let svc = app(state.clone()).into_make_service_with_connect_info::<SocketAddr>();
    let h2 = handle.clone();
    let admin_ready = cfg.admin.listen.map(|_| admin_handle.clone());
    let scheme = if cfg.tls.is_some() { "https" } else { "http" };
    tokio::spawn(async move {
        if let Some(addr) = h2.listening().await {
            // The ready line comes once every listener accepts connections.
            if let Some(admin) = admin_ready {
                if admin.listening().await.is_none() {
                    return;
                }
            }
            // Printed on stdout so scripts can find an ephemeral port (listen = "127.0.0.1:0").
            println!("tollgate listening on {scheme}://{addr}");
            tracing::info!(%addr, "listening");
        }
    });
    // hyper's read buffer bounds the request head: larger headers get 431.
    let header_limit = (cfg.limits.header_bytes as usize).max(8192);
    let main_handle = handle.clone();
    let main = async {
        let served = match &cfg.tls {
            Some(tls) => {
                crate::fetch::install_crypto_provider();
                let rustls = RustlsConfig::from_pem_file(&tls.cert, &tls.key)
                    .await
                    .map_err(|e| {
                        format!(
                            "tls: cannot load {} / {}: {e}",
                            tls.cert.display(),
                            tls.key.display()
                        )
                    })?;
                let mut server = axum_server::bind_rustls(cfg.listen, rustls).handle(main_handle);
                server.http_builder().http1().max_buf_size(header_limit);
                server.serve(svc).await
            }
            None => {
                let mut server = axum_server::bind(cfg.listen).handle(main_handle);
                server.http_builder().http1().max_buf_size(header_limit);
                server.serve(svc).await
            }
        };
        served.map_err(|e| format!("cannot serve on {}: {e}", cfg.listen))
    };
    // Both listeners live and die together: one that fails takes the other down, so the gate
    // never runs half-configured (or hangs waiting on a listener that is gone).
    let result = match admin_server {
        None => main.await,
        Some(mut admin) => {
            tokio::pin!(main);
            tokio::select! {
                r = &mut main => {
                    state.ready.store(false, Relaxed);
                    admin_handle_stop(&state);
                    let _ = admin.await;
                    r
                }
                a = &mut admin => {
                    let failed = match a {
                        Ok(Ok(())) => None,
                        Ok(Err(e)) => Some(e),
                        Err(e) => Some(e.to_string()),
                    };
                    if failed.is_some() {
                        state.ready.store(false, Relaxed);
                        handle.graceful_shutdown(Some(SHUTDOWN_GRACE));
                    }
                    let r = main.await;
                    match failed {
                        Some(e) => Err(e),
                        None => r,
                    }
                }
            }
        }
    };
    // Everything recorded before the listener closed is stored before the process exits.
    state.audit.flush().await;
    result
}

/// Stops the admin listener when the main one has stopped.
fn admin_handle_stop(state: &Arc<AppState>) {
    if let Some(h) = state
        .admin_handle
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .as_ref()
    {
        h.graceful_shutdown(Some(SHUTDOWN_GRACE));
    }
}

/// `[admin] listen`: the admin API on a listener of its own (TLS when the gate has TLS).
async fn serve_admin(state: Arc<AppState>, addr: SocketAddr, handle: Handle) -> Result<(), String> {
    let cfg = state.config.clone();
    let svc = crate::admin_app(state.clone()).into_make_service_with_connect_info::<SocketAddr>();
    let h2 = handle.clone();
    let scheme = if cfg.tls.is_some() { "https" } else { "http" };
    tokio::spawn(async move {
        if let Some(a) = h2.listening().await {
            println!("tollgate admin listening on {scheme}://{a}");
            tracing::info!(addr = %a, "admin API listening");
        }
    });
    let result = match &cfg.tls {
        Some(tls) => {
            crate::fetch::install_crypto_provider();
            let rustls = RustlsConfig::from_pem_file(&tls.cert, &tls.key)
                .await
                .map_err(|e| format!("tls: {e}"))?;
            axum_server::bind_rustls(addr, rustls)
                .handle(handle)
                .serve(svc)
                .await
        }
        None => axum_server::bind(addr).handle(handle).serve(svc).await,
    };
    result.map_err(|e| format!("cannot serve the admin API on {addr}: {e}"))
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
