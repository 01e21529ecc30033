//! `/admin/v1/packages`, `/images` and `/reload`: the rules in force (files and API) shown
//! with where each comes from, API rules created, changed and deleted (validated with every
//! other rule, `If-Match` required), and the allowlist files reloaded.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Extension, Json};
use serde_json::{json, Value};

use super::auth;
use super::auth::Actor;
use super::rules;
use super::token_api::valid_id;
use super::ApiResult;
use super::{commit, detached, parse_body};
use crate::audit::AuditEvent;
use crate::conn::Client;
use crate::error::{ApiError, JsonError};
use crate::policy::allowlist::Source;
use crate::policy::oci::{ImageRule, RepoPattern, Require, SubjectMatch};
use crate::store::cache::now_secs;
use crate::AppState;

pub(super) async fn reload(
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

/// A file name as clients see it: relative to `allowlist_dir` (no server paths in answers).
pub(super) fn shown_path(st: &AppState, text: &str) -> String {
    let dir = format!("{}/", st.config.allowlist_dir.display());
    text.replace(&dir, "")
}

/// A git rule's id: stable for as long as the rule stays at the same place in the same file.
pub(super) fn rule_id(kind: &str, source: &Source) -> String {
    use sha2::Digest as _;
    let h = sha2::Sha256::digest(format!("{kind}|{}|{}", source.file, source.line).as_bytes());
    hex::encode(&h[..8])
}

/// Where a rule in force came from: a file (git) or the admin API (`api:<id>`).
pub(super) fn source_json(kind: &str, source: &Source, api: &[rules::ApiRule]) -> (String, Value) {
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
pub(super) fn duration_text(secs: u64) -> String {
    for (unit, n) in [("w", 604_800), ("d", 86_400), ("h", 3600), ("m", 60)] {
        if secs > 0 && secs % n == 0 {
            return format!("{}{unit}", secs / n);
        }
    }
    format!("{secs}s")
}

/// Package rules in force, in the shape the API accepts (plus `id`, `source`).
pub(super) fn package_rules(st: &AppState, api: &[rules::ApiRule]) -> Vec<Value> {
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

pub(super) fn image_rules(st: &AppState, api: &[rules::ApiRule]) -> Vec<Value> {
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

pub(super) fn api_rules(st: &AppState) -> Result<Vec<rules::ApiRule>, JsonError> {
    Ok(rules::rules(&st.store)?)
}

pub(super) async fn packages(State(st): State<Arc<AppState>>) -> ApiResult<Json<Value>> {
    let api = api_rules(&st)?;
    Ok(Json(json!({ "packages": package_rules(&st, &api) })))
}

pub(super) async fn images(State(st): State<Arc<AppState>>) -> ApiResult<Json<Value>> {
    let api = api_rules(&st)?;
    Ok(Json(json!({ "images": image_rules(&st, &api) })))
}

/// One rule, with its ETag when it is an API rule (the version `If-Match` must name).
pub(super) fn one_rule(st: &AppState, kind: rules::Kind, id: &str) -> ApiResult<Response> {
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

pub(super) async fn package(
    State(st): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    one_rule(&st, rules::Kind::Package, &id)
}

pub(super) async fn image(
    State(st): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    one_rule(&st, rules::Kind::Image, &id)
}

pub(super) enum Write {
    Create(Value),
    Update(String, Option<String>, Value),
    Delete(String, Option<String>),
}

/// Creates, changes or deletes an API rule: validated by the allowlist loader together with
/// every other rule, stored in one transaction, then put in force; admin writes are serialised,
/// and a change must name the version it changes (`If-Match`).
pub(super) async fn write_rule(
    st: Arc<AppState>,
    actor: Actor,
    client: Client,
    kind: rules::Kind,
    op: Write,
    approval: Option<Value>,
) -> ApiResult<Response> {
    detached(write_rule_now(st, actor, client, kind, op, approval)).await
}

pub(super) async fn write_rule_now(
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

pub(super) fn if_match(headers: &axum::http::HeaderMap) -> Option<String> {
    headers
        .get(header::IF_MATCH)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// `POST /admin/v1/{packages,images}`.
pub(super) async fn rule_create(
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
pub(super) async fn rule_update(
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
pub(super) async fn rule_delete(
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
pub(super) fn rule_writes(
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
