//! The admin API (`/admin/v1/…`, JSON): who may act (bearer tokens and roles, checked before
//! anything else for every path under `/admin`), the audit trail, tokens, reloads, the rules in
//! force and "explain".

pub mod auth;

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
    let api = Router::new()
        .route("/packages", get(packages))
        .route("/images", get(images))
        .route("/packages/{id}", get(package))
        .route("/images/{id}", get(image))
        .route("/explain", get(explain))
        .route("/audit", get(audit_query))
        .route("/audit/verify", get(audit_verify))
        .route("/reload", post(reload))
        .route("/tokens", get(tokens).post(token_create))
        .route("/tokens/{id}", delete(token_delete))
        .fallback(not_here);
    Router::new()
        .nest("/admin/v1", api)
        .route("/admin", axum::routing::any(not_here))
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
        | ("GET" | "HEAD", ["audit", "verify"]) => Role::Reader,
        ("POST", ["packages" | "images" | "approvals"])
        | ("PUT", ["packages" | "images", _])
        | ("POST", ["pins", _, "revoke"]) => Role::Approver,
        ("DELETE", ["packages" | "images" | "tokens", _])
        | ("POST", ["reload" | "tokens"])
        | ("GET" | "HEAD", ["tokens"]) => Role::Admin,
        _ => return None,
    })
}

fn client_of(req: &Request) -> (String, bool) {
    match req
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
    {
        Some(c) => (c.0.ip().to_string(), c.0.ip().is_loopback()),
        None => ("unknown".into(), false),
    }
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
    let actor = match auth::authenticate(&st.store, st.bootstrap_sha256.as_deref(), header, now) {
        Err(e) => return JsonError(e.into()).into_response(),
        Ok(Ok(a)) => a,
        Ok(Err(rejected)) => {
            st.metrics
                .auth_failures
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if rejected != Rejected::Missing {
                st.throttle.fail(&client, now);
            }
            tracing::warn!(%client, %path, why = %rejected, "admin authentication failed");
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
            req.extensions_mut().insert(ClientAddr(client));
            next.run(req).await
        }
    }
}

#[derive(Clone)]
struct ClientAddr(String);

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

/// Records an admin change and waits until it is durable before the change is answered.
async fn audit_change(
    st: &AppState,
    actor: &Actor,
    client: &ClientAddr,
    action: &str,
    subject: String,
    before: Option<Value>,
    after: Option<Value>,
) {
    let mut ev = AuditEvent::about("admin", subject, None, None, &client.0)
        .allow("admin_change", action.to_string());
    ev.action = format!("admin.{action}");
    ev.actor = Some(actor.to_string());
    ev.before = before;
    ev.after = after;
    st.audit.record(ev).await;
    st.audit.flush().await;
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
    Extension(client): Extension<ClientAddr>,
    body: axum::body::Bytes,
) -> ApiResult<Response> {
    let req: NewToken = parse_body(&body)?;
    let role = Role::parse(&req.role)
        .map_err(|e| JsonError(ApiError::BadRequest(format!("role: {e}"))))?;
    let now = now_secs();
    let expires = match req.expires.as_deref() {
        None => None,
        Some(d) => Some(
            now + crate::policy::units::parse_duration(d)
                .map_err(|e| JsonError(ApiError::BadRequest(format!("expires: {e}"))))?
                .as_secs() as i64,
        ),
    };
    let store = st.store.clone();
    let name = req.name.clone();
    let (rec, secret) =
        tokio::task::spawn_blocking(move || auth::create(&store, &name, role, expires, now))
            .await
            .map_err(|e| JsonError(ApiError::Internal(e.to_string())))?
            .map_err(|e| JsonError(ApiError::BadRequest(e)))?;
    let info = auth::TokenInfo::from(&rec);
    audit_change(
        &st,
        &actor,
        &client,
        "tokens.create",
        rec.id.clone(),
        None,
        Some(json!(info)),
    )
    .await;
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
    Extension(client): Extension<ClientAddr>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    valid_id(&id)?;
    let before: Option<auth::TokenRecord> = st.store.get(crate::store::TOKENS, &id)?;
    let Some(before) = before else {
        return Err(JsonError(ApiError::NotFound(format!("no token {id}"))));
    };
    st.store.remove(crate::store::TOKENS, &id)?;
    audit_change(
        &st,
        &actor,
        &client,
        "tokens.delete",
        id,
        Some(json!(auth::TokenInfo::from(&before))),
        None,
    )
    .await;
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
    let store = st.store.clone();
    let report = tokio::task::spawn_blocking(move || crate::audit::verify_chain(&store))
        .await
        .map_err(|e| JsonError(ApiError::Internal(e.to_string())))??;
    Ok(Json(json!({
        "intact": report.broken.is_none(),
        "entries": report.entries,
        "head_seq": report.head_seq,
        "head_hash": report.head_hash,
        "first_broken": report.broken.map(|(seq, why)| json!({ "seq": seq, "why": why })),
    })))
}

// ---- reload ---------------------------------------------------------------------------------

async fn reload(
    State(st): State<Arc<AppState>>,
    Extension(actor): Extension<Actor>,
    Extension(client): Extension<ClientAddr>,
) -> ApiResult<Response> {
    let before = st.policy().version;
    let result = tokio::task::block_in_place(|| st.reload());
    match result {
        Ok((exact, release)) => {
            let after = json!({ "policy_version": st.policy().version, "exact": exact, "release": release });
            audit_change(
                &st,
                &actor,
                &client,
                "reload",
                "allowlists".into(),
                Some(json!({ "policy_version": before })),
                Some(after.clone()),
            )
            .await;
            Ok(Json(after).into_response())
        }
        Err(errors) => {
            let list: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
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

/// A rule's id: stable for as long as the rule stays at the same place in the same file.
fn rule_id(kind: &str, source: &Source) -> String {
    use sha2::Digest as _;
    let h = sha2::Sha256::digest(format!("{kind}|{}|{}", source.file, source.line).as_bytes());
    hex::encode(&h[..8])
}

fn git_source(source: &Source) -> Value {
    json!({ "managed": "git", "file": source.file, "line": source.line })
}

fn package_rules(st: &AppState) -> Vec<Value> {
    let lp = st.policy();
    let mut out = Vec::new();
    let mut names: Vec<&ProjectName> = lp.policy.projects.keys().collect();
    names.sort_by_key(|n| n.to_string());
    for name in names {
        let rules = &lp.policy.projects[name];
        for r in &rules.exact {
            out.push(json!({
                "id": rule_id("package", &r.source),
                "name": name.to_string(),
                "version": r.version.to_string(),
                "sha256": r.sha256.iter().map(|h| h.to_string()).collect::<Vec<_>>(),
                "index": rules.index,
                "source": git_source(&r.source),
            }));
        }
        for r in &rules.release {
            out.push(json!({
                "id": rule_id("package", &r.source),
                "name": name.to_string(),
                "specifier": r.specifiers.to_string(),
                "min_age_seconds": r.min_age.as_secs(),
                "index": rules.index,
                "source": git_source(&r.source),
            }));
        }
    }
    out
}

fn image_json(r: &ImageRule) -> Value {
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
    json!({
        "id": rule_id("image", &r.source),
        "repository": match &r.pattern { RepoPattern::Exact(x) => x.to_string(), p => p.to_string() },
        "tags": r.tags.as_ref().map(|t| t.iter().map(|x| x.to_string()).collect::<Vec<_>>()),
        "digests": r.digests.iter().map(|d| d.to_string()).collect::<Vec<_>>(),
        "require": if r.require == Require::All { "all" } else { "any" },
        "signed_identity": r.signed_identity.as_ref().map(|x| x.to_string()),
        "signature": r.signature.as_ref().map(|s| json!({
            "keys": s.keys, "keyless": keyless(&s.keyless), "threshold": s.threshold, "per_platform": s.per_platform,
        })),
        "attestations": r.attestations.iter().map(|a| json!({
            "predicate_type": a.predicate_type, "keys": a.keys, "keyless": keyless(&a.keyless),
        })).collect::<Vec<_>>(),
        "source": git_source(&r.source),
    })
}

async fn packages(State(st): State<Arc<AppState>>) -> Json<Value> {
    Json(json!({ "packages": package_rules(&st) }))
}

async fn images(State(st): State<Arc<AppState>>) -> Json<Value> {
    let lp = st.policy();
    Json(json!({ "images": lp.policy.images.iter().map(image_json).collect::<Vec<_>>() }))
}

async fn package(
    State(st): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    valid_id(&id)?;
    package_rules(&st)
        .into_iter()
        .find(|r| r["id"] == id.as_str())
        .map(Json)
        .ok_or_else(|| JsonError(ApiError::NotFound(format!("no package rule {id}"))))
}

async fn image(State(st): State<Arc<AppState>>, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    valid_id(&id)?;
    let lp = st.policy();
    lp.policy
        .images
        .iter()
        .map(image_json)
        .find(|r| r["id"] == id.as_str())
        .map(Json)
        .ok_or_else(|| JsonError(ApiError::NotFound(format!("no image rule {id}"))))
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
    Extension(client): Extension<ClientAddr>,
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
                .verify_reference(&lp, image, &crate::pypi::service::Client(client.0))
                .await
                .map_err(|crate::oci::service::OciError::Coded(_, e)| JsonError(e))?;
            Ok(Json(json!(v)))
        }
        _ => Err(JsonError(ApiError::BadRequest(
            "name exactly one of package= and image=".into(),
        ))),
    }
}
