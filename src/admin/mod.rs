//! The admin API (`/admin/v1/…`, JSON): who may act (bearer tokens and roles, checked before
//! anything else for every path under `/admin`), the audit trail, tokens, reloads, the rules in
//! force and "explain".

mod audit_api;
pub mod auth;
mod explain_api;
pub mod oidc;
mod pin_api;
mod rule_api;
pub mod rules;
mod token_api;
mod views;

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde_json::Value;

use crate::audit::AuditEvent;
use crate::conn::Client;
use crate::error::{ApiError, JsonError};
use crate::store::cache::now_secs;
use crate::AppState;
use audit_api::{audit_export, audit_query, audit_verify};
use auth::{Actor, Rejected, Role};
use explain_api::{explain, export};
use pin_api::{approve, pins, revoke};
use rule_api::{image, images, package, packages, reload, rule_writes};
use token_api::{token_create, token_delete, tokens};

type ApiResult<T> = Result<T, JsonError>;

pub fn routes(state: Arc<AppState>) -> Router<Arc<AppState>> {
    let limit = state.config.limits.admin_body_bytes as usize;
    let package_writes = rule_writes(rules::Kind::Package);
    let image_writes = rule_writes(rules::Kind::Image);
    let api = Router::new()
        .route("/packages", package_writes.0.get(packages))
        .route("/images", image_writes.0.get(images))
        .route("/packages/{id}", package_writes.1.get(package))
        .route("/images/{id}", image_writes.1.get(image))
        .route("/approvals", post(approve))
        .route("/pins", get(pins))
        .route("/pins/{id}/revoke", post(revoke))
        .route("/export", get(export))
        .route("/explain", get(explain))
        .route("/audit", get(audit_query))
        .route("/audit/verify", get(audit_verify))
        .route("/audit/export", get(audit_export))
        .route("/reload", post(reload))
        .route("/tokens", get(tokens).post(token_create))
        .route("/tokens/{id}", delete(token_delete))
        .fallback(not_here);
    Router::new()
        .nest("/admin/v1", api)
        .route("/admin", axum::routing::any(not_here))
        .route("/admin/", axum::routing::any(not_here))
        .route("/admin/{*rest}", axum::routing::any(not_here))
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::from_fn_with_state(state, guard))
}

/// The role each method and path needs (CONTRACT.md's table). `None`: no such endpoint (404
/// once the caller is authenticated).
fn required(method: &Method, path: &str) -> Option<Role> {
    let rest = path.strip_prefix("/admin/v1")?;
    let segs: Vec<&str> = rest.trim_matches('/').split('/').collect();
    let m = method.as_str();
    Some(match (m, segs.as_slice()) {
        ("GET" | "HEAD", ["packages" | "images"])
        | ("GET" | "HEAD", ["packages" | "images", _])
        | ("GET" | "HEAD", ["pins" | "explain" | "audit" | "export"])
        | ("GET" | "HEAD", ["audit", "verify" | "export"]) => Role::Reader,
        ("POST", ["packages" | "images" | "approvals"])
        | ("PUT", ["packages" | "images", _])
        | ("POST", ["pins", _, "revoke"]) => Role::Approver,
        ("DELETE", ["packages" | "images" | "tokens", _])
        | ("POST", ["reload" | "tokens"])
        | ("GET" | "HEAD", ["tokens"]) => Role::Admin,
        _ => return None,
    })
}

/// The client (forwarded through a trusted proxy, see `conn::client_ip`), and whether the TCP
/// peer itself is on this machine (credentials in clear are accepted only from there).
fn client_of(req: &Request) -> (String, bool) {
    (
        crate::conn::Client::of(req).0,
        crate::conn::peer_is_loopback(req.extensions()),
    )
}

/// A credential that crossed the network in clear (no TLS, not from loopback): counted,
/// throttled and audited as a failure; the caller refuses it and says so.
async fn cleartext_credential(
    st: &AppState,
    client: &str,
    loopback: bool,
    now: i64,
    path: &str,
) -> bool {
    if st.config.tls.is_some() || loopback {
        return false;
    }
    st.metrics
        .auth_failures
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    st.throttle.fail(client, now);
    audit_auth(
        st,
        client,
        "auth_failed",
        "credential sent over plain HTTP from a non-loopback address".into(),
        path,
    )
    .await;
    true
}

async fn audit_auth(st: &AppState, client: &str, reason: &str, detail: String, path: &str) {
    let ev = AuditEvent::about("auth", path.to_string(), None, None, client).deny(reason, detail);
    st.audit.record(ev).await;
}

/// Every request under `/admin`: throttled clients get 429; credentials only over TLS or from
/// loopback; no valid credential is 401 (audited, counted); a role below the endpoint's is 403.
async fn guard(State(st): State<Arc<AppState>>, mut req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    if !(path == "/admin" || path.starts_with("/admin/")) {
        return next.run(req).await;
    }
    let now = now_secs();
    let (client, loopback) = client_of(&req);
    if st.throttle.blocked(&client, now) {
        return JsonError(ApiError::TooManyRequests(
            "too many failed authentications from this address; try again later".into(),
        ))
        .into_response();
    }
    let header = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok());
    if header.is_some() && cleartext_credential(&st, &client, loopback, now, &path).await {
        return JsonError(ApiError::Denied(
            "admin credentials are accepted over TLS, or over plain HTTP on loopback only".into(),
        ))
        .into_response();
    }
    let actor = match credential(&st, header, now).await {
        Err(e) => return JsonError(e.into()).into_response(),
        Ok(Ok(a)) => a,
        Ok(Err(rejected)) => {
            st.metrics
                .auth_failures
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if rejected != Rejected::Missing {
                st.throttle.fail(&client, now);
            }
            tracing::warn!(%client, ?path, why = %rejected, "admin authentication failed");
            audit_auth(&st, &client, "auth_failed", rejected.to_string(), &path).await;
            let msg = match rejected {
                Rejected::Missing => "a bearer token is required",
                Rejected::Expired(_) => "the token has expired",
                _ => "the credential is not valid",
            };
            return JsonError(ApiError::Unauthorized(msg.into())).into_response();
        }
    };
    match required(req.method(), &path) {
        Some(need) if actor.role < need => {
            let detail = format!(
                "role {} may not {} {path}; it needs {need}",
                actor.role,
                req.method()
            );
            let mut ev = AuditEvent::about("auth", path.clone(), None, None, &client)
                .deny("forbidden", detail.clone());
            ev.actor = Some(actor.to_string());
            st.audit.record(ev).await;
            JsonError(ApiError::Denied(detail)).into_response()
        }
        _ => {
            req.extensions_mut().insert(actor);
            next.run(req).await
        }
    }
}

/// Resolves a credential: a token of the store or the bootstrap hash, else (when configured)
/// an OIDC JWT.
async fn credential(
    st: &AppState,
    header: Option<&str>,
    now: i64,
) -> Result<Result<Actor, Rejected>, crate::store::StoreError> {
    let found = auth::authenticate(&st.store, st.bootstrap_sha256.as_deref(), header, now)?;
    let (Err(Rejected::Unknown), Some(oidc), Some(h)) = (&found, &st.oidc, header) else {
        return Ok(found);
    };
    let token = h.get(7..).unwrap_or_default().trim();
    if token.split('.').count() != 3 {
        return Ok(found);
    }
    Ok(oidc
        .authenticate(token, now)
        .await
        .map_err(Rejected::Invalid))
}

/// `[oci] require_auth`: pulls (`/v2/…`) and `/api/v1/verify` need a credential of role
/// `puller` or above: Basic with the token as password (what docker, podman, skopeo and
/// containerd send after the challenge) or Bearer. Failures are audited, counted and
/// throttled as on the admin API.
pub async fn pull_guard(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let path = req.uri().path();
    let oci = path == "/v2" || path.starts_with("/v2/");
    if !st.config.oci.require_auth || !(oci || path == "/api/v1/verify") {
        return next.run(req).await;
    }
    let path = path.to_string();
    let now = now_secs();
    let (client, loopback) = client_of(&req);
    let refuse = |status: StatusCode, code: &str, message: &str| {
        let mut r = if oci {
            let e = crate::error::OciErrorBody::one(code, message);
            (status, Json(e)).into_response()
        } else {
            let e = crate::error::ErrorBody { error: message };
            (status, Json(e)).into_response()
        };
        if status == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"tollgate\""),
            );
        }
        if status == StatusCode::TOO_MANY_REQUESTS {
            r.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from(crate::error::THROTTLE_WINDOW_SECS),
            );
        }
        r
    };
    if st.throttle.blocked(&client, now) {
        return refuse(
            StatusCode::TOO_MANY_REQUESTS,
            "TOOMANYREQUESTS",
            "too many failed authentications from this address; try again later",
        );
    }
    let raw = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok());
    // Basic user:token → the token, as a Bearer credential.
    let bearer = raw.map(|h| match h.strip_prefix("Basic ") {
        Some(b) => {
            base64::engine::Engine::decode(&base64::engine::general_purpose::STANDARD, b.trim())
                .ok()
                .and_then(|d| String::from_utf8(d).ok())
                .and_then(|d| d.split_once(':').map(|(_, p)| format!("Bearer {p}")))
                .unwrap_or_default()
        }
        None => h.to_string(),
    });
    if raw.is_some() && cleartext_credential(&st, &client, loopback, now, &path).await {
        return refuse(
            StatusCode::FORBIDDEN,
            "DENIED",
            "credentials are accepted over TLS, or over plain HTTP on loopback only",
        );
    }
    match credential(&st, bearer.as_deref(), now).await {
        Err(e) => JsonError(e.into()).into_response(),
        Ok(Ok(actor)) if actor.role >= Role::Puller => next.run(req).await,
        Ok(Ok(_)) => refuse(
            StatusCode::FORBIDDEN,
            "DENIED",
            "this credential may not pull",
        ),
        // The anonymous first request of every pull is the challenge handshake, not a failed
        // authentication: answered, not audited.
        Ok(Err(Rejected::Missing)) => refuse(
            StatusCode::UNAUTHORIZED,
            "UNAUTHORIZED",
            "authentication required: a tollgate token of role puller or above, as the password",
        ),
        Ok(Err(rejected)) => {
            st.metrics
                .auth_failures
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            st.throttle.fail(&client, now);
            audit_auth(&st, &client, "auth_failed", rejected.to_string(), &path).await;
            refuse(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", "authentication required: a tollgate token of role puller or above, as the password")
        }
    }
}

async fn not_here(method: Method, uri: axum::http::Uri) -> JsonError {
    if required(&method, uri.path()).is_some() {
        // In the contract's table but not in this version: say so rather than pretend.
        return JsonError(ApiError::NotFound(format!(
            "{method} {} is not available in this version of tollgate",
            uri.path()
        )));
    }
    JsonError(ApiError::NotFound("no such admin endpoint".into()))
}

/// Stores an admin change together with its audit entry (who, what, before and after) in one
/// durable transaction: the change happens if and only if its entry is stored.
#[allow(clippy::too_many_arguments)]
async fn commit(
    st: &AppState,
    actor: &Actor,
    client: &Client,
    action: &str,
    subject: String,
    before: Option<Value>,
    after: Option<Value>,
    apply: crate::store::Change,
) -> Result<(), JsonError> {
    let mut ev = AuditEvent::about("admin", subject, None, None, &client.0)
        .allow("admin_change", action.to_string());
    ev.action = format!("admin.{action}");
    ev.actor = Some(actor.to_string());
    ev.before = before;
    ev.after = after;
    st.audit.commit_change(ev, apply).await.map_err(|e| {
        // A store that cannot be written now (an I/O error, its file lost; a shared store
        // that is down, or whose lock another replica held too long) is an outage to retry,
        // not a fault of the request: 503, with the cause in the log.
        if st.store.usable() && !st.store.shared() {
            JsonError(ApiError::Internal(e))
        } else {
            tracing::error!(cause = %e, "admin change refused: the store is unusable");
            JsonError(ApiError::Unavailable(
                "the gate's store is unavailable; nothing was changed".into(),
            ))
        }
    })
}

/// Runs an admin change to its end even if the client goes away meanwhile (a dropped handler
/// must not leave a change stored but not in force).
async fn detached<T: Send + 'static>(
    f: impl std::future::Future<Output = ApiResult<T>> + Send + 'static,
) -> ApiResult<T> {
    tokio::spawn(f)
        .await
        .map_err(|e| JsonError(ApiError::Internal(e.to_string())))?
}

/// A JSON body: malformed JSON, unknown fields and wrong types are 400 with what is wrong.
fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, JsonError> {
    serde_json::from_slice(body)
        .map_err(|e| JsonError(ApiError::BadRequest(format!("request body: {e}"))))
}
