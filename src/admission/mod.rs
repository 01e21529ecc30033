//! The verification API and the Kubernetes admission webhooks: "may this image run?" answered
//! by the same decision the pull gate makes, so a pull that bypasses the gate is still refused.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use base64::Engine;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::conn::Client;
use crate::error::ApiError;
use crate::oci::service::Verification;
use crate::AppState;

/// `POST /api/v1/verify`: on the gate's main listener.
pub fn verify_routes() -> Router<Arc<AppState>> {
    Router::new().route("/api/v1/verify", post(verify))
}

/// `/k8s/admission` and `/k8s/mutate`, behind the API server's bearer token when
/// `[admission] token_sha256_env` is set (a client certificate, when `client_ca` is, is checked
/// in the TLS handshake of the admission listener).
pub fn webhook_routes(state: Arc<AppState>) -> Router<Arc<AppState>> {
    Router::new()
        .route("/k8s/admission", post(admission))
        .route("/k8s/mutate", post(mutate))
        .layer(axum::middleware::from_fn_with_state(state, webhook_guard))
}

/// The API server's bearer token, compared by its SHA-256 without early exit; anything else is
/// 401 (the API server then fails the webhook call, and the webhook's failurePolicy decides).
async fn webhook_guard(
    State(st): State<Arc<AppState>>,
    req: Request,
    next: axum::middleware::Next,
) -> Response {
    let Some(want) = st.config.admission.token_sha256 else {
        return next.run(req).await;
    };
    let given = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| {
            crate::policy::Sha256::from_bytes(
                <sha2::Sha256 as sha2::Digest>::digest(t.trim().as_bytes()).into(),
            )
        });
    let ok = given.is_some_and(|g| {
        g.as_bytes()
            .iter()
            .zip(want.as_bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    });
    if !ok {
        let client = Client::of(&req);
        tracing::warn!(client = %client.0, path = ?req.uri().path(), "admission webhook call without the API server's token");
        st.metrics
            .auth_failures
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        return ApiError::Unauthorized(
            "the admission webhooks need the API server's bearer token".into(),
        )
        .into_response();
    }
    next.run(req).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VerifyRequest {
    image: String,
}

/// `POST /api/v1/verify` `{"image": "REF"}` → the decision, the digest and every reason.
async fn verify(State(st): State<Arc<AppState>>, req: Request) -> Response {
    let client = Client::of(&req);
    let body =
        match axum::body::to_bytes(req.into_body(), st.config.limits.admin_body_bytes as usize)
            .await
        {
            Ok(b) => b,
            Err(e) if too_slow(&e) => {
                return (
                    StatusCode::REQUEST_TIMEOUT,
                    "the request body took longer than body_timeout or stalled\n",
                )
                    .into_response()
            }
            Err(_) => {
                return (StatusCode::PAYLOAD_TOO_LARGE, "request body too large\n").into_response()
            }
        };
    let parsed: Result<VerifyRequest, _> = serde_json::from_slice(&body);
    let r = match parsed {
        Ok(r) => r,
        Err(e) => return ApiError::BadRequest(format!("request body: {e}")).into_response(),
    };
    let lp = st.policy();
    match st.oci.verify_reference(&lp, &r.image, &client).await {
        Ok(v) => (StatusCode::OK, Json(v)).into_response(),
        Err(e) => e.into_response(),
    }
}

/// The parts of an AdmissionReview v1 the gate reads.
#[derive(Deserialize)]
struct Review {
    #[serde(rename = "apiVersion")]
    api_version: String,
    kind: String,
    request: ReviewRequest,
}

#[derive(Deserialize)]
struct ReviewRequest {
    uid: String,
    kind: GroupVersionKind,
    operation: String,
    #[serde(default)]
    object: Value,
    #[serde(default, rename = "oldObject")]
    old_object: Value,
}

#[derive(Deserialize)]
struct GroupVersionKind {
    kind: String,
}

/// Every image a Pod can run or mount: its containers, initContainers and
/// ephemeralContainers, and its image volumes (`spec.volumes[].image.reference`, Kubernetes
/// 1.31+), with the JSON pointer of each (for the mutating webhook's patch and for comparing
/// an UPDATE with the old object).
fn pod_images(object: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for field in ["containers", "initContainers", "ephemeralContainers"] {
        if let Some(list) = object
            .pointer(&format!("/spec/{field}"))
            .and_then(Value::as_array)
        {
            for (i, c) in list.iter().enumerate() {
                // A container whose image is not a string is listed with an empty image,
                // which no rule admits.
                let image = c.get("image").and_then(Value::as_str).unwrap_or_default();
                out.push((format!("/spec/{field}/{i}/image"), image.to_string()));
            }
        }
    }
    if let Some(list) = object.pointer("/spec/volumes").and_then(Value::as_array) {
        for (i, v) in list.iter().enumerate() {
            // Only image volumes name an image; one without a string reference is listed
            // empty, and refused.
            let Some(img) = v.get("image") else { continue };
            let reference = img
                .get("reference")
                .and_then(Value::as_str)
                .unwrap_or_default();
            out.push((
                format!("/spec/volumes/{i}/image/reference"),
                reference.to_string(),
            ));
        }
    }
    out
}

/// Decides every image of the review's Pod. Images the gate cannot decide now (its upstream is
/// down) are refused: a webhook that fails open would let the pull gate be bypassed.
async fn decide_review(
    st: &Arc<AppState>,
    review: &Review,
    client: &Client,
) -> Result<Option<Vec<(String, String, Verification)>>, ApiError> {
    if review.request.kind.kind != "Pod"
        || !matches!(review.request.operation.as_str(), "CREATE" | "UPDATE")
    {
        return Ok(None);
    }
    // A Pod review without a Pod spec cannot be judged image by image: refused, not waved on.
    if review
        .request
        .object
        .pointer("/spec")
        .and_then(Value::as_object)
        .is_none()
    {
        let v = Verification {
            image: String::new(),
            allowed: false,
            repository: None,
            digest: None,
            reasons: vec!["the review carries no Pod spec".into()],
        };
        return Ok(Some(vec![(String::new(), "(no spec)".into(), v)]));
    }
    let lp = st.policy();
    let mut out = Vec::new();
    // On UPDATE only images that are new or changed are judged (and patched): a label change
    // must not fail because an unchanged, running image's tag has moved since. Unchanged means
    // the same image at the same place; the same string elsewhere (a new ephemeral container
    // naming a running container's image) is judged like any new one.
    let unchanged: std::collections::HashSet<(String, String)> =
        if review.request.operation == "UPDATE" {
            pod_images(&review.request.old_object).into_iter().collect()
        } else {
            Default::default()
        };
    for (pointer, image) in pod_images(&review.request.object) {
        if unchanged.contains(&(pointer.clone(), image.clone())) {
            continue;
        }
        let v = match st.oci.verify_reference(&lp, &image, client).await {
            Ok(v) => v,
            Err(e) => Verification {
                image: image.clone(),
                allowed: false,
                repository: None,
                digest: None,
                reasons: vec![format!("could not be decided now: {}", e.public_message())],
            },
        };
        out.push((pointer, image, v));
    }
    Ok(Some(out))
}

/// Did reading a body fail on the edge's body deadline (not on its size)?
fn too_slow(e: &axum::Error) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if err
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
        {
            return true;
        }
        cur = err.source();
    }
    false
}

/// Reviews carry the object and, on UPDATE, the old object: read up to this much.
const MAX_REVIEW_BYTES: usize = 8 << 20;

async fn parse_review(req: Request) -> Result<Review, ApiError> {
    let body = axum::body::to_bytes(req.into_body(), MAX_REVIEW_BYTES)
        .await
        .map_err(|e| {
            ApiError::BadRequest(if too_slow(&e) {
                "the AdmissionReview took longer than body_timeout or stalled".into()
            } else {
                "AdmissionReview larger than 8 MiB".into()
            })
        })?;
    let r: Review = serde_json::from_slice(&body)
        .map_err(|e| ApiError::BadRequest(format!("not an AdmissionReview: {e}")))?;
    if r.api_version != "admission.k8s.io/v1" || r.kind != "AdmissionReview" {
        return Err(ApiError::BadRequest(
            "not an admission.k8s.io/v1 AdmissionReview".into(),
        ));
    }
    Ok(r)
}

fn review_response(
    uid: &str,
    allowed: bool,
    message: Option<String>,
    patch: Option<String>,
) -> Response {
    let mut resp = json!({ "uid": uid, "allowed": allowed });
    if let Some(m) = message {
        resp["status"] = json!({ "code": 403, "message": m });
    }
    if let Some(p) = patch {
        resp["patchType"] = json!("JSONPatch");
        resp["patch"] = json!(p);
    }
    (StatusCode::OK, Json(json!({ "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": resp }))).into_response()
}

fn refusal(decisions: &[(String, String, Verification)]) -> Option<String> {
    let denied: Vec<String> = decisions
        .iter()
        .filter(|(_, _, v)| !v.allowed)
        .map(|(_, image, v)| format!("{image}: {}", v.reasons.join("; ")))
        .collect();
    (!denied.is_empty()).then(|| format!("tollgate refused: {}", denied.join(" | ")))
}

/// `POST /k8s/admission`: the validating webhook.
async fn admission(State(st): State<Arc<AppState>>, client: Client, req: Request) -> Response {
    let review = match parse_review(req).await {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    match decide_review(&st, &review, &client).await {
        Ok(None) => review_response(&review.request.uid, true, None, None),
        Ok(Some(d)) => {
            let message = refusal(&d);
            review_response(&review.request.uid, message.is_none(), message, None)
        }
        Err(e) => e.into_response(),
    }
}

/// `POST /k8s/mutate`: the mutating webhook. Admitted images are rewritten to the digest that
/// was verified (`name@sha256:…`), so the node pulls exactly what was decided.
async fn mutate(State(st): State<Arc<AppState>>, client: Client, req: Request) -> Response {
    let review = match parse_review(req).await {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    match decide_review(&st, &review, &client).await {
        Ok(None) => review_response(&review.request.uid, true, None, None),
        Ok(Some(d)) => {
            if let Some(message) = refusal(&d) {
                return review_response(&review.request.uid, false, Some(message), None);
            }
            let ops: Vec<Value> = d
                .iter()
                .filter_map(|(pointer, image, v)| {
                    let digest = v.digest.as_ref()?;
                    // The canonical name (docker.io/library/…), so no runtime's short-name
                    // resolution can send the pull elsewhere.
                    let pinned = format!("{}@{digest}", v.repository.as_deref()?);
                    (pinned != *image)
                        .then(|| json!({ "op": "replace", "path": pointer, "value": pinned }))
                })
                .collect();
            let patch = (!ops.is_empty()).then(|| {
                base64::engine::general_purpose::STANDARD.encode(Value::Array(ops).to_string())
            });
            review_response(&review.request.uid, true, None, patch)
        }
        Err(e) => e.into_response(),
    }
}

#[cfg(test)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::default() })]

        /// AdmissionReview bodies: arbitrary bytes, and reviews whose Pod holds values of every
        /// JSON type where images and volumes go. Every image pointer names a string place.
        #[test]
        fn reviews(bytes in proptest::collection::vec(any::<u8>(), 0..512), image in prop_oneof![Just(serde_json::json!(1)), Just(serde_json::json!(null)), "[ -~]{0,40}".prop_map(serde_json::Value::from), Just(serde_json::json!({"reference": 3})), Just(serde_json::json!([]))]) {
            let _ = serde_json::from_slice::<Review>(&bytes);
            let pod = serde_json::json!({ "spec": {
                "containers": [{ "image": image.clone() }, 7, null],
                "initContainers": image.clone(),
                "ephemeralContainers": [{}],
                "volumes": [{ "image": image.clone() }, { "image": { "reference": image } }, "x"]
            }});
            for (pointer, _) in pod_images(&pod) {
                prop_assert!(pointer.starts_with("/spec/"));
            }
        }
    }
}
