//! `/admin/v1/export` and `/explain`: the rules in force as the allowlist TOML one would
//! commit, and why a package file or an image would be admitted or refused.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::rule_api::{api_rules, image_rules, package_rules};
use super::rules;
use super::views::{self, Explained, RuleSource};
use super::ApiResult;
use crate::conn::Client;
use crate::error::{ApiError, JsonError};
use crate::policy::{ProjectName, RuleId};
use crate::store::cache::now_secs;
use crate::AppState;

/// A `[[revoke]]` table of an allowlist file.
#[derive(Serialize)]
struct RevokeTable {
    revoke: Vec<RevokeEntry>,
}

#[derive(Serialize)]
struct RevokeEntry {
    sha256: String,
    reason: String,
}

/// `GET /admin/v1/export`: every rule in force as allowlist TOML (API rules ready to commit to
/// git; a rule in both is one rule), plus the API's revocations.
pub(super) async fn export(State(st): State<Arc<AppState>>) -> ApiResult<Response> {
    let api = api_rules(&st)?;
    let mut out = String::from("# tollgate allowlist export: every rule in force\n");
    // Comment text is one line: nothing in a name can start a TOML table in the export.
    let one_line = |s: &str| s.replace(|c: char| c.is_control(), " ");
    let from = |id: &RuleId, source: &RuleSource| match source {
        RuleSource::Api {
            revision,
            updated_by,
            ..
        } => format!(
            "# from the admin API, rule {id} (revision {revision}, by {})",
            one_line(updated_by)
        ),
        RuleSource::Git { file, line } => format!("# from git: {}:{line}", one_line(file)),
    };
    let mut section = |table: &str, head: String, view: Value| -> Result<(), JsonError> {
        // The rule as its allowlist table: everything but the API's own `id` and `source`.
        let mut body = view;
        if let Value::Object(m) = &mut body {
            m.remove("id");
            m.remove("source");
        }
        let doc = serde_json::Map::from_iter([(table.to_string(), Value::Array(vec![body]))]);
        let text =
            toml::to_string(&doc).map_err(|e| JsonError(ApiError::Internal(e.to_string())))?;
        out.push('\n');
        out.push_str(&head);
        out.push('\n');
        out.push_str(&text);
        Ok(())
    };
    for r in package_rules(&st, &api, None) {
        section("package", from(&r.id, &r.source), views::value(&r)?)?;
    }
    for r in image_rules(&st, &api, None) {
        section("image", from(&r.id, &r.source), views::value(&r)?)?;
    }
    for r in rules::revocations(&st.store)? {
        let entry = RevokeEntry {
            sha256: r.sha256.to_string(),
            reason: r.reason.clone(),
        };
        let text = toml::to_string(&RevokeTable {
            revoke: vec![entry],
        })
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ExplainQuery {
    pub(super) package: Option<String>,
    /// With `package`: a file, to be decided as the index would.
    pub(super) filename: Option<String>,
    pub(super) sha256: Option<String>,
    pub(super) image: Option<String>,
}

/// Why a package (file) or an image reference is allowed or denied, by the gate's own policy
/// code. A file is decided as if it were listed now (a release-rule pin the gate has not seen
/// yet is "not yet seen").
pub(super) async fn explain(
    State(st): State<Arc<AppState>>,
    client: Client,
    q: Result<Query<ExplainQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Response> {
    use crate::policy::decide::{decide_file, decide_project, Decision};
    let Query(q) = q.map_err(|e| JsonError(ApiError::BadRequest(e.body_text())))?;
    let lp = st.policy();
    match (&q.package, &q.image) {
        (Some(p), None) => {
            let name = ProjectName::parse(p)
                .map_err(|e| JsonError(ApiError::BadRequest(format!("package: {e}"))))?;
            let rules = match decide_project(&lp.policy, &name) {
                Err(d) => {
                    let denied = Explained::Denied {
                        package: name.to_string(),
                        filename: None,
                        allowed: false,
                        reason: d.code(),
                        explanation: d.to_string(),
                    };
                    return Ok(Json(denied).into_response());
                }
                Ok(r) => r,
            };
            let (Some(filename), Some(sha)) = (&q.filename, &q.sha256) else {
                let listed = Explained::Listed {
                    package: name.to_string(),
                    allowed: true,
                    index: rules.index.clone(),
                    explanation: format!(
                        "{name} is on the allowlist ({} exact and {} release rule(s)); \
                         name a filename and sha256 to decide a file",
                        rules.exact.len(),
                        rules.release.len()
                    ),
                };
                return Ok(Json(listed).into_response());
            };
            let dist = crate::policy::filename::DistFilename::parse(filename, &name)
                .map_err(|e| JsonError(ApiError::BadRequest(format!("filename: {e}"))))?;
            let sha = crate::policy::Sha256::parse(sha)
                .map_err(|e| JsonError(ApiError::BadRequest(format!("sha256: {e}"))))?;
            let pin = st.pypi.pin_for(&name, filename)?;
            let provenance = st.pypi.provenance_of(&lp, rules, &dist, &sha)?;
            let facts = crate::policy::decide::Facts {
                pin: pin.as_ref(),
                provenance: provenance.as_ref(),
            };
            let decided = match decide_file(
                &lp.policy,
                rules,
                st.pypi.wheels_only,
                &dist,
                &sha,
                facts,
                now_secs(),
            ) {
                Decision::Allow(a) => Explained::Allowed {
                    package: name.to_string(),
                    filename: filename.clone(),
                    allowed: true,
                    rule: a.source().to_string(),
                },
                Decision::Deny(d) => Explained::Denied {
                    package: name.to_string(),
                    filename: Some(filename.clone()),
                    allowed: false,
                    reason: d.code(),
                    explanation: d.to_string(),
                },
            };
            Ok(Json(decided).into_response())
        }
        (None, Some(image)) => {
            let v = st
                .oci
                .verify_reference(&lp, image, &client)
                .await
                .map_err(|crate::error::OciError::Coded(_, e)| JsonError(e))?;
            Ok(Json(v).into_response())
        }
        _ => Err(JsonError(ApiError::BadRequest(
            "name exactly one of package= and image=".into(),
        ))),
    }
}
