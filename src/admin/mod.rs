//! The admin API (`/admin/v1/…`, JSON): who may act (bearer tokens and roles, checked before
//! anything else for every path under `/admin`), the audit trail, tokens, reloads, the rules in
//! force and "explain".

pub mod auth;
pub mod oidc;
pub mod rules;

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Extension, Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::audit::{AuditEntry, AuditEvent};
use crate::conn::Client;
use crate::error::{ApiError, JsonError};
use crate::policy::allowlist::Source;
use crate::policy::oci::{ImageRule, RepoPattern, Require, SubjectMatch};
use crate::policy::ProjectName;
use crate::store::cache::now_secs;
use crate::AppState;
use auth::{Actor, Rejected, Role};

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
    if header.is_some() && st.config.tls.is_none() && !loopback {
        // The credential crossed the network in clear: refuse it and say so.
        st.metrics
            .auth_failures
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        st.throttle.fail(&client, now);
        audit_auth(
            &st,
            &client,
            "auth_failed",
            "credential sent over plain HTTP from a non-loopback address".into(),
            &path,
        )
        .await;
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
        let body = if oci {
            json!({ "errors": [{ "code": code, "message": message }] })
        } else {
            json!({ "error": message })
        };
        let mut r = (status, Json(body)).into_response();
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
    if raw.is_some() && st.config.tls.is_none() && !loopback {
        st.metrics
            .auth_failures
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        st.throttle.fail(&client, now);
        audit_auth(
            &st,
            &client,
            "auth_failed",
            "credential sent over plain HTTP from a non-loopback address".into(),
            &path,
        )
        .await;
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
    apply: crate::audit::ChangeFn,
) -> Result<(), JsonError> {
    let mut ev = AuditEvent::about("admin", subject, None, None, &client.0)
        .allow("admin_change", action.to_string());
    ev.action = format!("admin.{action}");
    ev.actor = Some(actor.to_string());
    ev.before = before;
    ev.after = after;
    st.audit
        .commit_change(ev, apply)
        .await
        .map_err(|e| JsonError(ApiError::Internal(e)))
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

// ---- tokens ---------------------------------------------------------------------------------

async fn tokens(State(st): State<Arc<AppState>>) -> ApiResult<Json<Value>> {
    let list: Vec<auth::TokenInfo> = auth::list(&st.store)?.iter().map(Into::into).collect();
    Ok(Json(json!({ "tokens": list })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewToken {
    role: String,
    name: String,
    /// A duration such as "90d"; none: the token does not expire.
    expires: Option<String>,
}

async fn token_create(
    State(st): State<Arc<AppState>>,
    Extension(actor): Extension<Actor>,
    client: Client,
    body: axum::body::Bytes,
) -> ApiResult<Response> {
    let req: NewToken = parse_body(&body)?;
    let role = Role::parse(&req.role)
        .map_err(|e| JsonError(ApiError::BadRequest(format!("role: {e}"))))?;
    let now = now_secs();
    let expires = match req.expires.as_deref() {
        None => None,
        Some(d) => Some(
            auth::expiry(now, d)
                .map_err(|e| JsonError(ApiError::BadRequest(format!("expires: {e}"))))?,
        ),
    };
    let (rec, secret) = auth::mint(&req.name, role, expires, now)
        .map_err(|e| JsonError(ApiError::BadRequest(e)))?;
    let info = auth::TokenInfo::from(&rec);
    let stored = rec.clone();
    detached(async move {
        commit(
            &st,
            &actor,
            &client,
            "tokens.create",
            stored.id.clone(),
            None,
            Some(json!(auth::TokenInfo::from(&stored))),
            Box::new(move |w| {
                crate::store::Store::tx_put(w, crate::store::TOKENS, &stored.id, &stored)
            }),
        )
        .await
    })
    .await?;
    let mut body = json!(info);
    body["token"] = Value::String(secret.0);
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

fn valid_id(id: &str) -> Result<(), JsonError> {
    if id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(())
    } else {
        Err(JsonError(ApiError::BadRequest(format!(
            "{id:?} is not an id (16 hex digits)"
        ))))
    }
}

async fn token_delete(
    State(st): State<Arc<AppState>>,
    Extension(actor): Extension<Actor>,
    client: Client,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    valid_id(&id)?;
    detached(async move {
        let _writing = st.admin_writes.lock().await;
        let before: Option<auth::TokenRecord> = st.store.get(crate::store::TOKENS, &id)?;
        let Some(before) = before else {
            return Err(JsonError(ApiError::NotFound(format!("no token {id}"))));
        };
        let key = id.clone();
        commit(
            &st,
            &actor,
            &client,
            "tokens.delete",
            id,
            Some(json!(auth::TokenInfo::from(&before))),
            None,
            Box::new(move |w| crate::store::Store::tx_remove(w, crate::store::TOKENS, &key)),
        )
        .await
    })
    .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

// ---- audit ----------------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditQuery {
    since: Option<i64>,
    until: Option<i64>,
    actor: Option<String>,
    subject: Option<String>,
    decision: Option<String>,
    action: Option<String>,
    after: Option<u64>,
    limit: Option<usize>,
}

/// `GET /admin/v1/audit`: entries as JSON lines, oldest first, filtered; `Link: …; rel="next"`
/// names the next page (`after` = the last sequence number returned).
async fn audit_query(
    State(st): State<Arc<AppState>>,
    q: Result<Query<AuditQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Response> {
    let Query(q) = q.map_err(|e| JsonError(ApiError::BadRequest(e.body_text())))?;
    if let Some(d) = &q.decision {
        if d != "allow" && d != "deny" {
            return Err(JsonError(ApiError::BadRequest(
                "decision must be allow or deny".into(),
            )));
        }
    }
    let limit = q.limit.unwrap_or(1000).clamp(1, 10_000);
    // Everything recorded before this request is in the answer.
    st.audit.flush().await;
    let store = st.store.clone();
    let (lines, last, more) = tokio::task::spawn_blocking(move || {
        let mut lines = String::new();
        let (mut n, mut last, mut more) = (0usize, 0u64, false);
        let r = store.audit_scan(q.after.unwrap_or(0), |seq, bytes| {
            let Some((hash, e)) = crate::audit::decode(bytes) else {
                // A damaged entry is shown as such (audit verify names it).
                lines.push_str(&json!({ "seq": seq, "damaged": true }).to_string());
                lines.push('\n');
                n += 1;
                last = seq;
                return n < limit;
            };
            let ev = &e.event;
            let keep = q.since.is_none_or(|s| ev.time >= s)
                && q.until.is_none_or(|u| ev.time <= u)
                && q.actor
                    .as_deref()
                    .is_none_or(|a| ev.actor.as_deref().is_some_and(|x| x.contains(a)))
                && q.subject.as_deref().is_none_or(|s| ev.subject == s)
                && q.decision.as_deref().is_none_or(|d| ev.decision == d)
                && q.action.as_deref().is_none_or(|a| ev.action == a);
            if n >= limit {
                more = true;
                return false;
            }
            last = seq;
            if keep {
                let mut v = json!(AuditEntry { ..e });
                v["hash"] = Value::String(hash);
                lines.push_str(&v.to_string());
                lines.push('\n');
                n += 1;
            }
            true
        });
        r.map(|()| (lines, last, more))
    })
    .await
    .map_err(|e| JsonError(ApiError::Internal(e.to_string())))??;
    let mut resp = Response::new(Body::from(lines));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    if more {
        if let Ok(v) =
            HeaderValue::from_str(&format!("</admin/v1/audit?after={last}>; rel=\"next\""))
        {
            resp.headers_mut().insert(header::LINK, v);
        }
    }
    Ok(resp)
}

async fn audit_verify(State(st): State<Arc<AppState>>) -> ApiResult<Json<Value>> {
    st.audit.flush().await;
    let given = st.audit.given();
    let store = st.store.clone();
    let dir = crate::audit::archive::dir(&st.config.data_dir);
    let report = tokio::task::spawn_blocking(move || {
        store.guard(|| {
            crate::audit::verify_all(&store, &given, &dir).map_err(crate::store::StoreError::Audit)
        })
    })
    .await
    .map_err(|e| JsonError(ApiError::Internal(e.to_string())))?
    .map_err(|e| JsonError(ApiError::Unavailable(e.to_string())))?;
    Ok(Json(json!({
        "status": report.status(),
        "intact": report.intact(),
        "summary": report.lines(),
        "entries": report.entries,
        "first_seq": report.first_seq,
        "head_seq": report.head_seq,
        "head_hash": report.head_hash,
        "first_broken": report.broken.as_ref().map(|(seq, why)| json!({ "seq": seq, "why": why })),
        "keyed": report.keyed,
        "signed_checkpoints": report.signed_checkpoints,
        "last_checkpoint": report.last_checkpoint,
        "unsigned_entries": report.unsigned_entries,
        "tampered": report.tampered,
        "notes": report.notes,
        "archive": { "files": report.archive_files, "entries": report.archived_entries },
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExportQuery {
    since: Option<String>,
    until: Option<String>,
}

/// `GET /admin/v1/audit/export?since=&until=`: what `tollgate audit export` prints, streamed
/// (the archive can be larger than what should sit in memory).
async fn audit_export(
    State(st): State<Arc<AppState>>,
    q: Result<Query<ExportQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Response> {
    let Query(q) = q.map_err(|e| JsonError(ApiError::BadRequest(e.body_text())))?;
    let parse = |v: &Option<String>, default: i64| match v {
        None => Ok(default),
        Some(t) => {
            crate::audit::archive::parse_time(t).map_err(|e| JsonError(ApiError::BadRequest(e)))
        }
    };
    let (since, until) = (parse(&q.since, 0)?, parse(&q.until, i64::MAX)?);
    st.audit.flush().await;
    let store = st.store.clone();
    let dir = crate::audit::archive::dir(&st.config.data_dir);
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<axum::body::Bytes, std::io::Error>>(64);
    tokio::task::spawn_blocking(move || {
        let r = store.guard(|| {
            crate::audit::archive::export(&store, &dir, since, until, |mut line| {
                line.push('\n');
                tx.blocking_send(Ok(line.into())).is_ok()
            })
            .map_err(crate::store::StoreError::Audit)
        });
        if let Err(e) = r {
            // The client sees a cut-off body (no final newline-terminated checkpoint); the
            // cause is logged.
            tracing::error!(error = %e, "audit export");
            let _ = tx.blocking_send(Err(std::io::Error::other(e)));
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    let mut resp = Response::new(Body::from_stream(stream));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    Ok(resp)
}

// ---- reload ---------------------------------------------------------------------------------

async fn reload(
    State(st): State<Arc<AppState>>,
    Extension(actor): Extension<Actor>,
    client: Client,
) -> ApiResult<Response> {
    let _writing = st.admin_writes.lock().await;
    let before = st.policy().version;
    let result = tokio::task::block_in_place(|| st.reload());
    match result {
        Ok((exact, release)) => {
            let after = json!({ "policy_version": st.policy().version, "exact": exact, "release": release });
            let mut ev = AuditEvent::about("admin", "allowlists".into(), None, None, &client.0)
                .allow("admin_change", "reload".into());
            ev.action = "admin.reload".into();
            ev.actor = Some(actor.to_string());
            ev.before = Some(json!({ "policy_version": before }));
            ev.after = Some(after.clone());
            st.audit.record(ev).await;
            st.audit.flush().await;
            Ok(Json(after).into_response())
        }
        Err(errors) => {
            let list: Vec<String> = errors
                .iter()
                .map(|e| shown_path(&st, &e.to_string()))
                .collect();
            let mut ev = AuditEvent::about("admin", "allowlists".into(), None, None, &client.0)
                .deny("reload_refused", list.join("; "));
            ev.action = "admin.reload".into();
            ev.actor = Some(actor.to_string());
            st.audit.record(ev).await;
            Ok((
                StatusCode::BAD_REQUEST,
                Json(json!({ "error": "the allowlists have errors; the policy in force is unchanged", "errors": list })),
            )
                .into_response())
        }
    }
}

// ---- rules ----------------------------------------------------------------------------------

/// A file name as clients see it: relative to `allowlist_dir` (no server paths in answers).
fn shown_path(st: &AppState, text: &str) -> String {
    let dir = format!("{}/", st.config.allowlist_dir.display());
    text.replace(&dir, "")
}

/// A git rule's id: stable for as long as the rule stays at the same place in the same file.
fn rule_id(kind: &str, source: &Source) -> String {
    use sha2::Digest as _;
    let h = sha2::Sha256::digest(format!("{kind}|{}|{}", source.file, source.line).as_bytes());
    hex::encode(&h[..8])
}

/// Where a rule in force came from: a file (git) or the admin API (`api:<id>`).
fn source_json(kind: &str, source: &Source, api: &[rules::ApiRule]) -> (String, Value) {
    if let Some(id) = source.file.strip_prefix("api:") {
        if let Some(r) = api.iter().find(|r| r.id == id) {
            return (
                r.id.clone(),
                json!({ "managed": "api", "revision": r.revision, "created_by": r.created_by,
                        "updated_by": r.updated_by, "created": r.created, "updated": r.updated,
                        "approval": r.approval }),
            );
        }
    }
    (
        rule_id(kind, source),
        json!({ "managed": "git", "file": source.file.rsplit('/').next().unwrap_or(&source.file), "line": source.line }),
    )
}

/// A duration as allowlists write it, in the largest unit that divides it.
fn duration_text(secs: u64) -> String {
    for (unit, n) in [("w", 604_800), ("d", 86_400), ("h", 3600), ("m", 60)] {
        if secs > 0 && secs % n == 0 {
            return format!("{}{unit}", secs / n);
        }
    }
    format!("{secs}s")
}

/// Package rules in force, in the shape the API accepts (plus `id`, `source`).
fn package_rules(st: &AppState, api: &[rules::ApiRule]) -> Vec<Value> {
    let lp = st.policy();
    let mut out = Vec::new();
    for (name, rules) in &lp.policy.projects {
        for r in &rules.exact {
            let (id, source) = source_json("package", &r.source, api);
            out.push(json!({
                "id": id,
                "name": name.to_string(),
                "version": r.version.to_string(),
                "sha256": r.sha256.iter().map(|h| h.to_string()).collect::<Vec<_>>(),
                "index": rules.index,
                "source": source,
            }));
        }
        for r in &rules.release {
            let (id, source) = source_json("package", &r.source, api);
            out.push(json!({
                "id": id,
                "name": name.to_string(),
                "specifier": r.specifiers.to_string(),
                "min_age": duration_text(r.min_age.as_secs()),
                "index": rules.index,
                "source": source,
            }));
        }
    }
    out
}

fn image_rules(st: &AppState, api: &[rules::ApiRule]) -> Vec<Value> {
    let keyless = |ids: &[crate::policy::oci::KeylessIdentity]| -> Vec<Value> {
        ids.iter()
            .map(|k| match &k.subject {
                SubjectMatch::Exact(s) => json!({ "issuer": k.issuer, "subject": s }),
                SubjectMatch::Regex(re) => {
                    // Shown as written: the anchoring wrapper is the gate's, not the rule's.
                    let shown = re
                        .as_str()
                        .strip_prefix("^(?:")
                        .and_then(|x| x.strip_suffix(")$"))
                        .unwrap_or(re.as_str());
                    json!({ "issuer": k.issuer, "subject_regex": shown })
                }
            })
            .collect()
    };
    let lp = st.policy();
    lp.policy
        .images
        .iter()
        .map(|r: &ImageRule| {
            let (id, source) = source_json("image", &r.source, api);
            let mut v = json!({
                "id": id,
                "repository": match &r.pattern { RepoPattern::Exact(x) => x.to_string(), p => p.to_string() },
                "require": if r.require == Require::All { "all" } else { "any" },
                "source": source,
            });
            if let Some(t) = &r.tags {
                v["tags"] = json!(t.iter().map(|x| x.to_string()).collect::<Vec<_>>());
            }
            if !r.digests.is_empty() {
                v["digests"] = json!(r.digests.iter().map(|d| d.to_string()).collect::<Vec<_>>());
            }
            if let Some(si) = &r.signed_identity {
                v["signed_identity"] = json!(si.to_string());
            }
            if let Some(sig) = &r.signature {
                let mut o = json!({ "threshold": sig.threshold, "per_platform": sig.per_platform });
                if sig.require_tlog {
                    o["require_tlog"] = json!(true);
                }
                if !sig.keys.is_empty() {
                    o["keys"] = json!(sig.keys);
                }
                if !sig.keyless.is_empty() {
                    o["keyless"] = json!(keyless(&sig.keyless));
                }
                v["signature"] = o;
            }
            if !r.attestations.is_empty() {
                v["attestation"] = json!(r
                    .attestations
                    .iter()
                    .map(|a| {
                        let mut o = json!({ "predicate_type": a.predicate_type });
                        if a.require_tlog {
                            o["require_tlog"] = json!(true);
                        }
                        if !a.keys.is_empty() {
                            o["keys"] = json!(a.keys);
                        }
                        if !a.keyless.is_empty() {
                            o["keyless"] = json!(keyless(&a.keyless));
                        }
                        o
                    })
                    .collect::<Vec<_>>());
            }
            v
        })
        .collect()
}

fn api_rules(st: &AppState) -> Result<Vec<rules::ApiRule>, JsonError> {
    Ok(rules::rules(&st.store)?)
}

async fn packages(State(st): State<Arc<AppState>>) -> ApiResult<Json<Value>> {
    let api = api_rules(&st)?;
    Ok(Json(json!({ "packages": package_rules(&st, &api) })))
}

async fn images(State(st): State<Arc<AppState>>) -> ApiResult<Json<Value>> {
    let api = api_rules(&st)?;
    Ok(Json(json!({ "images": image_rules(&st, &api) })))
}

/// One rule, with its ETag when it is an API rule (the version `If-Match` must name).
fn one_rule(st: &AppState, kind: rules::Kind, id: &str) -> ApiResult<Response> {
    valid_id(id)?;
    let api = api_rules(st)?;
    let all = match kind {
        rules::Kind::Package => package_rules(st, &api),
        rules::Kind::Image => image_rules(st, &api),
    };
    let found: Vec<Value> = all.into_iter().filter(|r| r["id"] == id).collect();
    if found.is_empty() {
        return Err(JsonError(ApiError::NotFound(format!(
            "no {} rule {id}",
            kind.table()
        ))));
    }
    // A package rule made of one table is one rule; show it as such.
    let body = if found.len() == 1 {
        found[0].clone()
    } else {
        json!(found)
    };
    let mut resp = Json(body).into_response();
    if let Some(r) = api.iter().find(|r| r.id == id) {
        if let Ok(v) = HeaderValue::from_str(&r.etag()) {
            resp.headers_mut().insert(header::ETAG, v);
        }
    }
    Ok(resp)
}

async fn package(State(st): State<Arc<AppState>>, Path(id): Path<String>) -> ApiResult<Response> {
    one_rule(&st, rules::Kind::Package, &id)
}

async fn image(State(st): State<Arc<AppState>>, Path(id): Path<String>) -> ApiResult<Response> {
    one_rule(&st, rules::Kind::Image, &id)
}

enum Write {
    Create(Value),
    Update(String, Option<String>, Value),
    Delete(String, Option<String>),
}

/// Creates, changes or deletes an API rule: validated by the allowlist loader together with
/// every other rule, stored in one transaction, then put in force; admin writes are serialised,
/// and a change must name the version it changes (`If-Match`).
async fn write_rule(
    st: Arc<AppState>,
    actor: Actor,
    client: Client,
    kind: rules::Kind,
    op: Write,
    approval: Option<Value>,
) -> ApiResult<Response> {
    detached(write_rule_now(st, actor, client, kind, op, approval)).await
}

async fn write_rule_now(
    st: Arc<AppState>,
    actor: Actor,
    client: Client,
    kind: rules::Kind,
    op: Write,
    approval: Option<Value>,
) -> ApiResult<Response> {
    let (st, actor, client) = (&*st, &actor, &client);
    let _writing = st.admin_writes.lock().await;
    let mut all = api_rules(st)?;
    let now = now_secs();
    let find =
        |all: &[rules::ApiRule], id: &str, if_match: &Option<String>| -> Result<usize, JsonError> {
            valid_id(id)?;
            let Some(i) = all.iter().position(|r| r.id == id && r.kind == kind) else {
                let in_git = match kind {
                    rules::Kind::Package => package_rules(st, all),
                    rules::Kind::Image => image_rules(st, all),
                }
                .iter()
                .any(|r| r["id"] == id);
                return Err(JsonError(if in_git {
                    ApiError::Conflict(format!(
                        "rule {id} is managed in git; change it in its allowlist file"
                    ))
                } else {
                    ApiError::NotFound(format!("no {} rule {id}", kind.table()))
                }));
            };
            match if_match {
                None => Err(JsonError(ApiError::PreconditionRequired(format!(
                    "a change needs If-Match with the rule's ETag ({})",
                    all[i].etag()
                )))),
                Some(tag) if tag.trim() != all[i].etag() => {
                    Err(JsonError(ApiError::PreconditionFailed(format!(
                        "rule {id} has changed since {tag}; it is now {}",
                        all[i].etag()
                    ))))
                }
                Some(_) => Ok(i),
            }
        };
    let toml_of =
        |body: &Value| rules::to_toml(kind, body).map_err(|e| JsonError(ApiError::BadRequest(e)));
    let (before, after, status, id) = match op {
        Write::Create(body) => {
            let rule = rules::ApiRule {
                id: auth::random_hex(8).map_err(|e| JsonError(ApiError::Internal(e)))?,
                kind,
                toml: toml_of(&body)?,
                revision: 1,
                created: now,
                created_by: actor.to_string(),
                updated: now,
                updated_by: actor.to_string(),
                approval,
            };
            let id = rule.id.clone();
            all.push(rule);
            (None, Some(all.len() - 1), StatusCode::CREATED, id)
        }
        Write::Update(id, if_match, body) => {
            let i = find(&all, &id, &if_match)?;
            let old = all[i].clone();
            all[i] = rules::ApiRule {
                toml: toml_of(&body)?,
                revision: old.revision + 1,
                updated: now,
                updated_by: actor.to_string(),
                approval: None,
                ..old.clone()
            };
            (Some(old), Some(i), StatusCode::OK, id)
        }
        Write::Delete(id, if_match) => {
            let i = find(&all, &id, &if_match)?;
            let old = all.remove(i);
            (Some(old), None, StatusCode::NO_CONTENT, id)
        }
    };
    let own = format!("api:{id}");
    let revoked = rules::revocations(&st.store)?;
    let policy = st.build_policy(&all, &revoked).map_err(|errors| {
        // Errors in the rule being written are about its fields; others name their rule.
        let list: Vec<String> = errors
            .iter()
            .map(|e| {
                if e.file == own {
                    let text = all.iter().find(|r| r.id == id).map(|r| r.toml.as_str());
                    match text.and_then(|t| rules::field_at(t, e.line)) {
                        Some(field) if !e.message.contains(&field) => {
                            format!("{field}: {}", e.message)
                        }
                        _ => e.message.clone(),
                    }
                } else {
                    shown_path(st, &e.to_string())
                }
            })
            .collect();
        JsonError(ApiError::BadRequest(format!(
            "the rule is not valid: {}",
            list.join("; ")
        )))
    })?;
    let shown = |r: &rules::ApiRule| json!({ "id": r.id, "revision": r.revision, "rule": rules::to_json(r) });
    let action = match (&before, after) {
        (None, _) => "create",
        (Some(_), Some(_)) => "update",
        (Some(_), None) => "delete",
    };
    let write = after.map(|i| all[i].clone());
    let rid = id.clone();
    commit(
        st,
        actor,
        client,
        &format!("{}s.{action}", kind.table()),
        id.clone(),
        before.as_ref().map(shown),
        after.map(|i| shown(&all[i])),
        Box::new(move |w| match &write {
            Some(r) => crate::store::Store::tx_put(w, crate::store::API_RULES, &r.id, r),
            None => crate::store::Store::tx_remove(w, crate::store::API_RULES, &rid),
        }),
    )
    .await?;
    st.apply(policy);
    let Some(i) = after else {
        return Ok(status.into_response());
    };
    let r = &all[i];
    let mut body = rules::to_json(r);
    body["id"] = json!(r.id);
    body["source"] = json!({ "managed": "api", "revision": r.revision, "created_by": r.created_by, "updated_by": r.updated_by, "approval": r.approval });
    let mut resp = (status, Json(body)).into_response();
    if let Ok(v) = HeaderValue::from_str(&r.etag()) {
        resp.headers_mut().insert(header::ETAG, v);
    }
    Ok(resp)
}

fn if_match(headers: &axum::http::HeaderMap) -> Option<String> {
    headers
        .get(header::IF_MATCH)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// `POST /admin/v1/{packages,images}`.
async fn rule_create(
    kind: rules::Kind,
    st: Arc<AppState>,
    actor: Actor,
    client: Client,
    body: axum::body::Bytes,
) -> ApiResult<Response> {
    let body: Value = parse_body(&body)?;
    write_rule(st, actor, client, kind, Write::Create(body), None).await
}

/// `PUT /admin/v1/{packages,images}/{id}` (If-Match).
async fn rule_update(
    kind: rules::Kind,
    st: Arc<AppState>,
    actor: Actor,
    client: Client,
    id: String,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> ApiResult<Response> {
    let body: Value = parse_body(&body)?;
    let op = Write::Update(id, if_match(&headers), body);
    write_rule(st, actor, client, kind, op, None).await
}

/// `DELETE /admin/v1/{packages,images}/{id}` (If-Match).
async fn rule_delete(
    kind: rules::Kind,
    st: Arc<AppState>,
    actor: Actor,
    client: Client,
    id: String,
    headers: axum::http::HeaderMap,
) -> ApiResult<Response> {
    let op = Write::Delete(id, if_match(&headers));
    write_rule(st, actor, client, kind, op, None).await
}

/// The write routes of one kind of rule: the collection (create) and one rule (update, delete).
fn rule_writes(
    kind: rules::Kind,
) -> (
    axum::routing::MethodRouter<Arc<AppState>>,
    axum::routing::MethodRouter<Arc<AppState>>,
) {
    let create = post(
        move |State(st): State<Arc<AppState>>,
              Extension(actor): Extension<Actor>,
              client: Client,
              body: axum::body::Bytes| rule_create(kind, st, actor, client, body),
    );
    let one = axum::routing::put(
        move |State(st): State<Arc<AppState>>,
              Extension(actor): Extension<Actor>,
              client: Client,
              Path(id): Path<String>,
              headers: axum::http::HeaderMap,
              body: axum::body::Bytes| {
            rule_update(kind, st, actor, client, id, headers, body)
        },
    )
    .delete(
        move |State(st): State<Arc<AppState>>,
              Extension(actor): Extension<Actor>,
              client: Client,
              Path(id): Path<String>,
              headers: axum::http::HeaderMap| {
            rule_delete(kind, st, actor, client, id, headers)
        },
    );
    (create, one)
}

// ---- approvals and pins ---------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Approval {
    name: String,
    version: String,
    index: Option<String>,
}

/// `POST /admin/v1/approvals`: fetches every file of the release from the project's upstream,
/// hashes it, and pins those hashes as an API rule (shown with every file, hash and size).
async fn approve(
    State(st): State<Arc<AppState>>,
    Extension(actor): Extension<Actor>,
    client: Client,
    body: axum::body::Bytes,
) -> ApiResult<Response> {
    let req: Approval = parse_body(&body)?;
    let name = ProjectName::parse(&req.name)
        .map_err(|e| JsonError(ApiError::BadRequest(format!("name: {e}"))))?;
    let version = req
        .version
        .parse::<pep440_rs::Version>()
        .map_err(|e| JsonError(ApiError::BadRequest(format!("version: {e}"))))?;
    // The project's bound index (a project already on the allowlist keeps its index).
    let lp = st.policy();
    let index = match (lp.policy.project(&name), &req.index) {
        (Some(r), Some(i)) if &r.index != i => {
            return Err(JsonError(ApiError::Conflict(format!(
            "{name} is bound to index {:?}; approving it from {i:?} would be dependency confusion",
            r.index
        ))))
        }
        (Some(r), _) => r.index.clone(),
        (None, Some(i)) => i.clone(),
        (None, None) => st.config.index_names().first().cloned().unwrap_or_default(),
    };
    let files = st.pypi.release_files(&index, &name, &version).await?;
    if files.is_empty() {
        return Err(JsonError(ApiError::NotFound(format!(
            "{name} {version} has no files on index {index:?}"
        ))));
    }
    let rule = json!({
        "name": name.to_string(),
        "version": version.to_string(),
        "sha256": files.iter().map(|f| f.sha256.clone()).collect::<Vec<_>>(),
        "index": index,
    });
    let approval = json!({ "by": actor.to_string(), "time": now_secs(), "files": files });
    let resp = write_rule(
        st,
        actor,
        client,
        rules::Kind::Package,
        Write::Create(rule),
        Some(approval),
    )
    .await?;
    Ok(resp)
}

fn valid_sha(id: &str) -> Result<crate::policy::Sha256, JsonError> {
    crate::policy::Sha256::parse(id).map_err(|_| {
        JsonError(ApiError::BadRequest(format!(
            "{id:?} is not a pin id (a sha256)"
        )))
    })
}

/// `GET /admin/v1/pins`: every pinned file hash and where the pin came from: a file's exact rule,
/// an API rule or approval, or first sight under a release rule.
async fn pins(State(st): State<Arc<AppState>>) -> ApiResult<Json<Value>> {
    let lp = st.policy();
    let api = api_rules(&st)?;
    let revoked = |sha: &str| {
        crate::policy::Sha256::parse(sha)
            .ok()
            .and_then(|h| lp.policy.revoked.get(&h))
            .map(|r| json!({ "reason": r.reason, "by": r.source.file.strip_prefix("api:").unwrap_or(&r.source.to_string()) }))
    };
    let mut out = Vec::new();
    for (name, rules) in &lp.policy.projects {
        for r in &rules.exact {
            let (rule, source) = source_json("package", &r.source, &api);
            for h in &r.sha256 {
                let sha = h.to_string();
                let origin = if source["managed"] == "api" {
                    if source["approval"].is_null() {
                        "api"
                    } else {
                        "approval"
                    }
                } else {
                    "file"
                };
                out.push(json!({ "id": sha, "sha256": sha, "project": name.to_string(), "version": r.version.to_string(),
                                 "origin": origin, "rule": rule, "source": source, "revoked": revoked(&sha) }));
            }
        }
    }
    for (key, pin) in st.pypi.first_sight_pins()? {
        let (project, filename) = key.split_once('/').unwrap_or((key.as_str(), ""));
        out.push(json!({ "id": pin.sha256, "sha256": pin.sha256, "project": project, "filename": filename,
                         "size": pin.size, "origin": "first_sight", "first_seen": pin.first_seen,
                         "superseded": pin.superseded, "revoked": revoked(&pin.sha256) }));
    }
    Ok(Json(json!({ "pins": out })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Revoke {
    reason: String,
}

/// `POST /admin/v1/pins/{sha256}/revoke`: the file is refused from now on, whatever rule lists
/// it, and stays revoked (a later approval does not bring it back).
async fn revoke(
    State(st): State<Arc<AppState>>,
    Extension(actor): Extension<Actor>,
    client: Client,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult<Response> {
    let sha = valid_sha(&id)?;
    let req: Revoke = parse_body(&body)?;
    let reason = req.reason.trim().to_string();
    if reason.is_empty() || reason.chars().any(char::is_control) {
        return Err(JsonError(ApiError::BadRequest(
            "reason: say why the pin is revoked (one line)".into(),
        )));
    }
    detached(async move {
        let _writing = st.admin_writes.lock().await;
        let mut revoked = rules::revocations(&st.store)?;
        if let Some(e) = revoked.iter().find(|r| r.sha256 == sha.to_string()) {
            return Ok((StatusCode::OK, Json(json!(e))).into_response());
        }
        let rec = rules::ApiRevocation {
            sha256: sha.to_string(),
            reason,
            by: actor.to_string(),
            time: now_secs(),
        };
        revoked.push(rec.clone());
        // The policy with the revocation is built before anything is stored.
        let policy = st.build_policy(&api_rules(&st)?, &revoked).map_err(|e| {
            JsonError(ApiError::Internal(format!(
                "{} error(s) building the policy",
                e.len()
            )))
        })?;
        let write = rec.clone();
        commit(
            &st,
            &actor,
            &client,
            "pins.revoke",
            rec.sha256.clone(),
            None,
            Some(json!(rec)),
            Box::new(move |w| {
                crate::store::Store::tx_put(w, crate::store::REVOKED, &write.sha256, &write)
            }),
        )
        .await?;
        st.apply(policy);
        Ok((StatusCode::CREATED, Json(json!(rec))).into_response())
    })
    .await
}

// ---- export ---------------------------------------------------------------------------------

/// `GET /admin/v1/export`: every rule in force as allowlist TOML (API rules ready to commit to
/// git; a rule in both is one rule), plus the API's revocations.
async fn export(State(st): State<Arc<AppState>>) -> ApiResult<Response> {
    let api = api_rules(&st)?;
    let mut out = String::from("# tollgate allowlist export: every rule in force\n");
    // Comment text is one line: nothing in a name can start a TOML table in the export.
    let one_line = |s: &str| s.replace(|c: char| c.is_control(), " ");
    let strip = |mut v: Value| -> (String, Value) {
        let src = v["source"].clone();
        let from = if src["managed"] == "api" {
            format!(
                "# from the admin API, rule {} (revision {}, by {})",
                v["id"].as_str().unwrap_or(""),
                src["revision"],
                one_line(src["updated_by"].as_str().unwrap_or(""))
            )
        } else {
            format!(
                "# from git: {}:{}",
                one_line(src["file"].as_str().unwrap_or("")),
                src["line"]
            )
        };
        if let Value::Object(m) = &mut v {
            m.remove("id");
            m.remove("source");
        }
        (from, v)
    };
    for (table, list) in [
        ("package", package_rules(&st, &api)),
        ("image", image_rules(&st, &api)),
    ] {
        for r in list {
            let (from, body) = strip(r);
            let text = toml::to_string(&json!({ table: [body] }))
                .map_err(|e| JsonError(ApiError::Internal(e.to_string())))?;
            out.push('\n');
            out.push_str(&from);
            out.push('\n');
            out.push_str(&text);
        }
    }
    for r in rules::revocations(&st.store)? {
        let text =
            toml::to_string(&json!({ "revoke": [{ "sha256": r.sha256, "reason": r.reason }] }))
                .map_err(|e| JsonError(ApiError::Internal(e.to_string())))?;
        out.push_str(&format!(
            "\n# revoked through the admin API by {}\n{text}",
            one_line(&r.by)
        ));
    }
    let mut resp = Response::new(Body::from(out));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/toml; charset=utf-8"),
    );
    Ok(resp)
}

// ---- explain --------------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExplainQuery {
    package: Option<String>,
    /// With `package`: a file, to be decided as the index would.
    filename: Option<String>,
    sha256: Option<String>,
    image: Option<String>,
}

/// Why a package (file) or an image reference is allowed or denied, by the gate's own policy
/// code. A file is decided as if it were listed now (a release-rule pin the gate has not seen
/// yet is "not yet seen").
async fn explain(
    State(st): State<Arc<AppState>>,
    client: Client,
    q: Result<Query<ExplainQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<Value>> {
    use crate::policy::decide::{decide_file, decide_project, Decision};
    let Query(q) = q.map_err(|e| JsonError(ApiError::BadRequest(e.body_text())))?;
    let lp = st.policy();
    match (&q.package, &q.image) {
        (Some(p), None) => {
            let name = ProjectName::parse(p)
                .map_err(|e| JsonError(ApiError::BadRequest(format!("package: {e}"))))?;
            let rules = match decide_project(&lp.policy, &name) {
                Err(d) => {
                    return Ok(Json(
                        json!({ "package": name.to_string(), "allowed": false, "reason": d.code(), "explanation": d.to_string() }),
                    ))
                }
                Ok(r) => r,
            };
            let (Some(filename), Some(sha)) = (&q.filename, &q.sha256) else {
                return Ok(Json(json!({
                    "package": name.to_string(), "allowed": true, "index": rules.index,
                    "explanation": format!("{name} is on the allowlist ({} exact and {} release rule(s)); name a filename and sha256 to decide a file", rules.exact.len(), rules.release.len()),
                })));
            };
            let dist = crate::policy::filename::DistFilename::parse(filename, &name)
                .map_err(|e| JsonError(ApiError::BadRequest(format!("filename: {e}"))))?;
            let sha = crate::policy::Sha256::parse(sha)
                .map_err(|e| JsonError(ApiError::BadRequest(format!("sha256: {e}"))))?;
            let pin = st.pypi.pin_for(&name, filename)?;
            Ok(Json(
                match decide_file(
                    &lp.policy,
                    rules,
                    st.pypi.wheels_only,
                    &dist,
                    &sha,
                    pin.as_ref(),
                    now_secs(),
                ) {
                    Decision::Allow(a) => {
                        json!({ "package": name.to_string(), "filename": filename, "allowed": true, "rule": a.source().to_string() })
                    }
                    Decision::Deny(d) => {
                        json!({ "package": name.to_string(), "filename": filename, "allowed": false, "reason": d.code(), "explanation": d.to_string() })
                    }
                },
            ))
        }
        (None, Some(image)) => {
            let v = st
                .oci
                .verify_reference(&lp, image, &client)
                .await
                .map_err(|crate::error::OciError::Coded(_, e)| JsonError(e))?;
            Ok(Json(json!(v)))
        }
        _ => Err(JsonError(ApiError::BadRequest(
            "name exactly one of package= and image=".into(),
        ))),
    }
}
