//! `/admin/v1/export` and `/explain`: the rules in force as the allowlist TOML one would
//! commit, and why a package file or an image would be admitted or refused.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{header, HeaderValue};
use axum::response::Response;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::rule_api::{api_rules, image_rules, package_rules};
use super::rules;
use super::ApiResult;
use crate::conn::Client;
use crate::error::{ApiError, JsonError};
use crate::policy::ProjectName;
use crate::store::cache::now_secs;
use crate::AppState;

/// `GET /admin/v1/export`: every rule in force as allowlist TOML (API rules ready to commit to
/// git; a rule in both is one rule), plus the API's revocations.
pub(super) async fn export(State(st): State<Arc<AppState>>) -> ApiResult<Response> {
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
