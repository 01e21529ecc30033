//! `/admin/v1/packages`, `/images` and `/reload`: the rules in force (files and API) shown
//! with where each comes from, API rules created, changed and deleted (validated with every
//! other rule, `If-Match` required), and the allowlist files reloaded.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Extension, Json};
use serde_json::Value;

use super::auth;
use super::auth::Actor;
use super::rules;
use super::views::{
    self, AttestationView, AuditedRule, ImageRuleView, ImageRules, KeylessView, PackagePins,
    PackageRuleView, PackageRules, PolicyVersion, ReloadRefused, Reloaded, RuleSource,
    SignatureView, SignersView, WrittenRule,
};
use super::ApiResult;
use super::{commit, detached, parse_body};
use crate::audit::AuditEvent;
use crate::conn::Client;
use crate::error::{ApiError, JsonError};
use crate::policy::allowlist::Source;
use crate::policy::oci::{ImageRule, KeylessIdentity, RepoPattern, Require, SubjectMatch};
use crate::policy::rule_id::API_SOURCE;
use crate::policy::RuleId;
use crate::store::cache::now_secs;
use crate::store::{Change, API_RULES};
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
            let after = Reloaded {
                policy_version: st.policy().version,
                exact,
                release,
            };
            let mut ev = AuditEvent::about("admin", "allowlists".into(), None, None, &client.0)
                .allow("admin_change", "reload".into());
            ev.action = "admin.reload".into();
            ev.actor = Some(actor.to_string());
            ev.before = Some(views::value(&PolicyVersion {
                policy_version: before,
            })?);
            ev.after = Some(views::value(&after)?);
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
                Json(ReloadRefused {
                    error: "the allowlists have errors; the policy in force is unchanged",
                    errors: list,
                }),
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

/// Where a rule in force came from: a file (git) or the admin API (`api:<id>`).
pub(super) fn source_of(
    kind: &str,
    source: &Source,
    api: &[rules::ApiRule],
) -> (RuleId, RuleSource) {
    let id = RuleId::of(kind, source);
    if source.file.starts_with(API_SOURCE) {
        if let Some(r) = api.iter().find(|r| r.id == id) {
            return (id, RuleSource::api(r));
        }
    }
    let file = source.file.rsplit('/').next().unwrap_or(&source.file);
    let git = RuleSource::Git {
        file: file.to_string(),
        line: source.line,
    };
    (id, git)
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

/// Package rules in force (all of them, or those of the rule `only`), in the shape the API
/// accepts (plus `id`, `source`).
pub(super) fn package_rules(
    st: &AppState,
    api: &[rules::ApiRule],
    only: Option<&RuleId>,
) -> Vec<PackageRuleView> {
    let lp = st.policy();
    let wanted = |source: &Source| only.is_none_or(|id| RuleId::of("package", source) == *id);
    let mut out = Vec::new();
    for (name, rules) in &lp.policy.projects {
        let now = crate::store::cache::now_secs();
        let exact = rules.exact.iter().filter(|r| wanted(&r.source)).map(|r| {
            let pins = PackagePins::Exact {
                version: r.version.to_string(),
                sha256: r.sha256.iter().map(|h| h.to_string()).collect(),
            };
            let refused =
                crate::policy::decide::vulnerable_release(&lp.policy, name, &r.version, now);
            (
                &r.source,
                pins,
                refused.map(|d| d.to_string()),
                r.publisher.as_ref(),
            )
        });
        let release = rules.release.iter().filter(|r| wanted(&r.source)).map(|r| {
            let pins = PackagePins::Release {
                specifier: r.specifiers.to_string(),
                min_age: duration_text(r.min_age.as_secs()),
            };
            (&r.source, pins, None, r.publisher.as_ref())
        });
        for (source, pins, refused, publisher) in exact.chain(release) {
            let (id, source) = source_of("package", source, api);
            out.push(PackageRuleView {
                id,
                name: name.to_string(),
                pins,
                index: rules.index.clone(),
                source,
                refused,
                publisher: publisher.and_then(|p| {
                    let t: toml::Value = toml::from_str(&format!("p = {}", p.to_toml())).ok()?;
                    serde_json::to_value(t.get("p")?).ok()
                }),
            });
        }
    }
    out
}

fn signers(require_tlog: bool, keys: &[String], ids: &[KeylessIdentity]) -> SignersView {
    let keyless = ids
        .iter()
        .map(|k| match &k.subject {
            SubjectMatch::Exact(s) => KeylessView {
                issuer: k.issuer.clone(),
                subject: Some(s.clone()),
                subject_regex: None,
            },
            SubjectMatch::Regex(re) => {
                // Shown as written: the anchoring wrapper is the gate's, not the rule's.
                let shown = re
                    .as_str()
                    .strip_prefix("^(?:")
                    .and_then(|x| x.strip_suffix(")$"))
                    .unwrap_or(re.as_str());
                KeylessView {
                    issuer: k.issuer.clone(),
                    subject: None,
                    subject_regex: Some(shown.to_string()),
                }
            }
        })
        .collect();
    SignersView {
        require_tlog,
        keys: keys.to_vec(),
        keyless,
    }
}

/// Image rules in force (all, or the rule `only`), in the shape the API accepts.
pub(super) fn image_rules(
    st: &AppState,
    api: &[rules::ApiRule],
    only: Option<&RuleId>,
) -> Vec<ImageRuleView> {
    let lp = st.policy();
    lp.policy
        .images
        .iter()
        .filter(|r| only.is_none_or(|id| RuleId::of("image", &r.source) == *id))
        .map(|r: &ImageRule| {
            let (id, source) = source_of("image", &r.source, api);
            ImageRuleView {
                id,
                repository: match &r.pattern {
                    RepoPattern::Exact(x) => x.to_string(),
                    p => p.to_string(),
                },
                require: if r.require == Require::All {
                    "all"
                } else {
                    "any"
                },
                tags: r
                    .tags
                    .as_ref()
                    .map(|t| t.iter().map(|x| x.to_string()).collect()),
                digests: r.digests.iter().map(|d| d.to_string()).collect(),
                signed_identity: r.signed_identity.as_ref().map(|si| si.to_string()),
                signature: r.signature.as_ref().map(|sig| SignatureView {
                    threshold: sig.threshold,
                    per_platform: sig.per_platform,
                    signers: signers(sig.require_tlog, &sig.keys, &sig.keyless),
                }),
                attestation: r
                    .attestations
                    .iter()
                    .map(|a| AttestationView {
                        predicate_type: a.predicate_type.clone(),
                        signers: signers(a.require_tlog, &a.keys, &a.keyless),
                    })
                    .collect(),
                source,
            }
        })
        .collect()
}

pub(super) fn api_rules(st: &AppState) -> Result<Vec<rules::ApiRule>, JsonError> {
    Ok(rules::rules(&st.store)?)
}

pub(super) async fn packages(State(st): State<Arc<AppState>>) -> ApiResult<Json<PackageRules>> {
    let api = api_rules(&st)?;
    let packages = package_rules(&st, &api, None);
    Ok(Json(PackageRules { packages }))
}

pub(super) async fn images(State(st): State<Arc<AppState>>) -> ApiResult<Json<ImageRules>> {
    let api = api_rules(&st)?;
    let images = image_rules(&st, &api, None);
    Ok(Json(ImageRules { images }))
}

/// The rule `id` of `kind` as its view: one rule, or several for a package table that holds
/// more than one (none: no such rule).
fn rule_view(
    st: &AppState,
    kind: rules::Kind,
    api: &[rules::ApiRule],
    id: &RuleId,
) -> Option<Value> {
    fn one_or_all<T: serde::Serialize>(found: Vec<T>) -> Option<Value> {
        match found.len() {
            0 => None,
            1 => serde_json::to_value(&found[0]).ok(),
            _ => serde_json::to_value(&found).ok(),
        }
    }
    match kind {
        rules::Kind::Package => one_or_all(package_rules(st, api, Some(id))),
        rules::Kind::Image => one_or_all(image_rules(st, api, Some(id))),
    }
}

/// Whether a rule `id` of `kind` is in force (from a file or the API).
fn in_force(st: &AppState, kind: rules::Kind, id: &RuleId) -> bool {
    let lp = st.policy();
    let is = |source: &Source| RuleId::of(kind.table(), source) == *id;
    match kind {
        rules::Kind::Package => lp.policy.projects.values().any(|r| {
            r.exact.iter().any(|x| is(&x.source)) || r.release.iter().any(|x| is(&x.source))
        }),
        rules::Kind::Image => lp.policy.images.iter().any(|r| is(&r.source)),
    }
}

/// A rule id from a request path: 400 when it is not one.
pub(super) fn parse_id(id: &str) -> Result<RuleId, JsonError> {
    RuleId::parse(id).map_err(|e| JsonError(ApiError::BadRequest(e.to_string())))
}

/// One rule, with its ETag when it is an API rule (the version `If-Match` must name).
pub(super) fn one_rule(st: &AppState, kind: rules::Kind, id: &str) -> ApiResult<Response> {
    let id = parse_id(id)?;
    let api = api_rules(st)?;
    let Some(body) = rule_view(st, kind, &api, &id) else {
        return Err(JsonError(ApiError::NotFound(format!(
            "no {} rule {id}",
            kind.table()
        ))));
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
    Update(RuleId, Option<String>, Value),
    Delete(RuleId, Option<String>),
}

/// The JSON object of an API rule's body (what the API accepted).
fn written(r: &rules::ApiRule) -> WrittenRule {
    let rule = match rules::to_json(r) {
        Value::Object(m) => m,
        _ => serde_json::Map::new(),
    };
    WrittenRule {
        id: r.id.clone(),
        rule,
        source: RuleSource::api(r),
    }
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
    let find = |all: &[rules::ApiRule],
                id: &RuleId,
                if_match: &Option<String>|
     -> Result<usize, JsonError> {
        let Some(i) = all.iter().position(|r| r.id == *id && r.kind == kind) else {
            return Err(JsonError(if in_force(st, kind, id) {
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
                id: auth::random_hex(8)
                    .and_then(|h| RuleId::parse(&h).map_err(|e| e.to_string()))
                    .map_err(|e| JsonError(ApiError::Internal(e)))?,
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
    let own = id.source_file();
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
    let shown = |r: &rules::ApiRule| {
        views::value(&AuditedRule {
            id: r.id.clone(),
            revision: r.revision,
            rule: rules::to_json(r),
        })
    };
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
        id.to_string(),
        before.as_ref().map(shown).transpose()?,
        after.map(|i| shown(&all[i])).transpose()?,
        match &write {
            Some(r) => Change::put(API_RULES, r.id.as_str(), r)?,
            None => Change::remove(API_RULES, rid.as_str()),
        },
    )
    .await?;
    st.apply(policy);
    let Some(i) = after else {
        return Ok(status.into_response());
    };
    let r = &all[i];
    let mut resp = (status, Json(written(r))).into_response();
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
    let id = parse_id(&id)?;
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
    let op = Write::Delete(parse_id(&id)?, if_match(&headers));
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
