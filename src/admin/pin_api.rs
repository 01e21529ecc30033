//! `/admin/v1/approvals` and `/pins`: a release approved (every file fetched, hashed and
//! pinned by an API rule), the pins in force listed, and a pin revoked.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};

use super::auth::Actor;
use super::rule_api::Write;
use super::rule_api::{api_rules, source_of, write_rule};
use super::rules;
use super::views::{self, PinView, Pins, RevokedView};
use super::ApiResult;
use super::{commit, detached, parse_body};
use crate::conn::Client;
use crate::error::{ApiError, JsonError};
use crate::policy::rule_id::API_SOURCE;
use crate::policy::{ProjectName, Sha256};
use crate::store::cache::now_secs;
use crate::store::{Change, REVOKED};
use crate::AppState;

/// The exact rule an approval writes.
#[derive(Serialize)]
struct ApprovedRule {
    name: String,
    version: String,
    sha256: Vec<String>,
    index: String,
}

/// Who approved a release, when, and every file it pinned (kept with the rule it made).
#[derive(Serialize)]
struct ApprovalRecord<F> {
    by: String,
    time: i64,
    files: Vec<F>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Approval {
    pub(super) name: String,
    pub(super) version: String,
    pub(super) index: Option<String>,
}

/// `POST /admin/v1/approvals`: fetches every file of the release from the project's upstream,
/// hashes it, and pins those hashes as an API rule (shown with every file, hash and size).
pub(super) async fn approve(
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
    // The approval becomes an API rule, written as its JSON body would be.
    let rule = ApprovedRule {
        name: name.to_string(),
        version: version.to_string(),
        sha256: files.iter().map(|f| f.sha256.clone()).collect(),
        index,
    };
    let approval = ApprovalRecord {
        by: actor.to_string(),
        time: now_secs(),
        files,
    };
    let (rule, approval) = (views::value(&rule)?, views::value(&approval)?);
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

pub(super) fn valid_sha(id: &str) -> Result<Sha256, JsonError> {
    Sha256::parse(id).map_err(|_| {
        JsonError(ApiError::BadRequest(format!(
            "{id:?} is not a pin id (a sha256)"
        )))
    })
}

/// `GET /admin/v1/pins`: every pinned file hash and where the pin came from: a file's exact rule,
/// an API rule or approval, or first sight under a release rule.
pub(super) async fn pins(State(st): State<Arc<AppState>>) -> ApiResult<Json<Pins>> {
    let lp = st.policy();
    let api = api_rules(&st)?;
    let revoked = |sha: &Sha256| {
        lp.policy.revoked.get(sha).map(|r| RevokedView {
            reason: r.reason.clone(),
            by: match r.source.file.strip_prefix(API_SOURCE) {
                Some(by) => by.to_string(),
                None => r.source.to_string(),
            },
        })
    };
    let mut out = Vec::new();
    for (name, rules) in &lp.policy.projects {
        for r in &rules.exact {
            let (rule, source) = source_of("package", &r.source, &api);
            for h in &r.sha256 {
                out.push(PinView::Rule {
                    id: *h,
                    sha256: *h,
                    project: name.to_string(),
                    version: r.version.to_string(),
                    origin: source.origin(),
                    rule: rule.clone(),
                    source: source.clone(),
                    revoked: revoked(h),
                });
            }
        }
    }
    for (key, pin) in st.pypi.first_sight_pins()? {
        let (project, filename) = key.split_once('/').unwrap_or((key.as_str(), ""));
        out.push(PinView::FirstSight {
            id: pin.sha256,
            sha256: pin.sha256,
            project: project.to_string(),
            filename: filename.to_string(),
            size: pin.size,
            origin: "first_sight",
            first_seen: pin.first_seen,
            superseded: pin.superseded,
            revoked: revoked(&pin.sha256),
        });
    }
    Ok(Json(Pins { pins: out }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Revoke {
    pub(super) reason: String,
}

/// `POST /admin/v1/pins/{sha256}/revoke`: the file is refused from now on, whatever rule lists
/// it, and stays revoked (a later approval does not bring it back).
pub(super) async fn revoke(
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
        if let Some(e) = revoked.iter().find(|r| r.sha256 == sha) {
            return Ok((StatusCode::OK, Json(e.clone())).into_response());
        }
        let rec = rules::ApiRevocation {
            sha256: sha,
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
            rec.sha256.to_string(),
            None,
            Some(views::value(&rec)?),
            Change::put(REVOKED, &write.sha256.to_string(), &write)?,
        )
        .await?;
        st.apply(policy);
        Ok((StatusCode::CREATED, Json(rec)).into_response())
    })
    .await
}
