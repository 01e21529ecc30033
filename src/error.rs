//! The one place where errors become HTTP responses. Internal causes are logged here and never
//! sent: a client sees a status and one sentence.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    /// Refused by policy: the reason is for the person at the client.
    #[error("{0}")]
    Denied(String),
    #[error("none of the formats in Accept is available; this index serves application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html and text/html")]
    NotAcceptable,
    #[error("request URI too long")]
    UriTooLong,
    /// The upstream could not be reached or refused the gate's credentials.
    #[error("{0}")]
    Unavailable(String),
    /// The upstream answered with bytes that are not what was pinned or declared.
    #[error("{0}")]
    BadUpstream(String),
    /// No valid credential (admin API): 401 with a Bearer challenge.
    #[error("{0}")]
    Unauthorized(String),
    /// The change conflicts with the state of the resource (a rule managed in git, …).
    #[error("{0}")]
    Conflict(String),
    /// `If-Match` names an older version (412).
    #[error("{0}")]
    PreconditionFailed(String),
    /// A change without `If-Match` (428).
    #[error("{0}")]
    PreconditionRequired(String),
    /// Too many failed authentications from this client: 429 with Retry-After.
    #[error("{0}")]
    TooManyRequests(String),
    /// Anything else: logged with its cause, answered with a generic sentence.
    #[error("internal error")]
    Internal(String),
}

/// Seconds a client should wait before retrying after a 503.
pub const RETRY_AFTER_SECS: u64 = 30;

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Denied(_) => StatusCode::FORBIDDEN,
            ApiError::NotAcceptable => StatusCode::NOT_ACCEPTABLE,
            ApiError::UriTooLong => StatusCode::URI_TOO_LONG,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::BadUpstream(_) => StatusCode::BAD_GATEWAY,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::PreconditionFailed(_) => StatusCode::PRECONDITION_FAILED,
            ApiError::PreconditionRequired(_) => StatusCode::PRECONDITION_REQUIRED,
            ApiError::TooManyRequests(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The sentence a client may see (an internal cause is logged, not told).
    pub fn public_message(&self) -> String {
        self.public().1
    }

    /// Logs what must not be sent; returns the status and the sentence that may be.
    fn public(&self) -> (StatusCode, String) {
        if let ApiError::Internal(cause) = self {
            tracing::error!(%cause, "internal error");
        }
        (self.status(), self.to_string())
    }
}

fn finish(mut resp: Response, status: StatusCode, content_type: &'static str) -> Response {
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if status == StatusCode::SERVICE_UNAVAILABLE {
        h.insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
    }
    if status == StatusCode::TOO_MANY_REQUESTS {
        h.insert(header::RETRY_AFTER, HeaderValue::from(THROTTLE_WINDOW_SECS));
    }
    if status == StatusCode::UNAUTHORIZED {
        h.insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"tollgate admin\""),
        );
    }
    resp
}

/// The admin API's error body: `{"error": "…"}`, with the same statuses and sentences.
pub struct JsonError(pub ApiError);

impl From<ApiError> for JsonError {
    fn from(e: ApiError) -> Self {
        JsonError(e)
    }
}

impl From<crate::store::StoreError> for JsonError {
    fn from(e: crate::store::StoreError) -> Self {
        JsonError(e.into())
    }
}

/// `{"error": "…"}`: the body of a refusal on the JSON routes (admin, admission, `/verify`).
#[derive(serde::Serialize)]
pub struct ErrorBody<'a> {
    pub error: &'a str,
}

/// The distribution spec's error body (`{"errors":[{"code","message"}]}`), one error.
#[derive(serde::Serialize)]
pub struct OciErrorBody<'a> {
    errors: [OciErrorItem<'a>; 1],
}

#[derive(serde::Serialize)]
struct OciErrorItem<'a> {
    code: &'a str,
    message: &'a str,
}

impl<'a> OciErrorBody<'a> {
    pub fn one(code: &'a str, message: &'a str) -> Self {
        OciErrorBody {
            errors: [OciErrorItem { code, message }],
        }
    }
}

/// A body for an error answer; these types cannot fail to serialize.
fn json_text<T: serde::Serialize>(body: &T) -> String {
    serde_json::to_string(body).unwrap_or_else(|_| "{}".into())
}

impl IntoResponse for JsonError {
    fn into_response(self) -> Response {
        let (status, message) = self.0.public();
        let json = json_text(&ErrorBody { error: &message });
        finish((status, json).into_response(), status, "application/json")
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, message) = self.public();
        finish(
            (status, format!("{message}\n")).into_response(),
            status,
            "text/plain; charset=utf-8",
        )
    }
}

/// How long a client that failed admin authentication too often waits (`Retry-After`).
pub const THROTTLE_WINDOW_SECS: u64 = 60;

/// The distribution spec's error codes the pull gate answers with (OCI distribution spec,
/// "Error Codes"; `UNAVAILABLE` and `UNSUPPORTED` as registries use them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OciCode {
    BlobUnknown,
    Denied,
    DigestInvalid,
    ManifestInvalid,
    ManifestUnknown,
    NameInvalid,
    NameUnknown,
    TagInvalid,
    Unavailable,
    Unsupported,
    Unknown,
}

impl OciCode {
    pub fn as_str(self) -> &'static str {
        match self {
            OciCode::BlobUnknown => "BLOB_UNKNOWN",
            OciCode::Denied => "DENIED",
            OciCode::DigestInvalid => "DIGEST_INVALID",
            OciCode::ManifestInvalid => "MANIFEST_INVALID",
            OciCode::ManifestUnknown => "MANIFEST_UNKNOWN",
            OciCode::NameInvalid => "NAME_INVALID",
            OciCode::NameUnknown => "NAME_UNKNOWN",
            OciCode::TagInvalid => "TAG_INVALID",
            OciCode::Unavailable => "UNAVAILABLE",
            OciCode::Unsupported => "UNSUPPORTED",
            OciCode::Unknown => "UNKNOWN",
        }
    }

    /// What was not found, for `*_UNKNOWN` codes ("blob", "manifest", "name").
    pub fn noun(self) -> &'static str {
        match self {
            OciCode::BlobUnknown => "blob",
            OciCode::ManifestUnknown => "manifest",
            _ => "name",
        }
    }
}

/// An error of the pull gate: the spec's code and the gate's error (status and sentence).
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    #[error("{1}")]
    Coded(OciCode, ApiError),
}

impl OciError {
    /// The sentence a client may see (internal causes are not in it).
    pub fn public_message(&self) -> String {
        let OciError::Coded(_, err) = self;
        err.public().1
    }
}

impl From<ApiError> for OciError {
    fn from(e: ApiError) -> Self {
        let code = match &e {
            ApiError::Denied(_) => OciCode::Denied,
            ApiError::BadRequest(_) => OciCode::NameInvalid,
            ApiError::NotFound(_) => OciCode::NameUnknown,
            ApiError::Unavailable(_) => OciCode::Unavailable,
            ApiError::BadUpstream(_) => OciCode::ManifestInvalid,
            _ => OciCode::Unknown,
        };
        OciError::Coded(code, e)
    }
}

impl From<crate::store::StoreError> for OciError {
    fn from(e: crate::store::StoreError) -> Self {
        ApiError::from(e).into()
    }
}

/// The distribution spec's error body (`{"errors":[{"code","message"}]}`) for `/v2/` routes,
/// with the same statuses and sentences as every other route.
impl IntoResponse for OciError {
    fn into_response(self) -> Response {
        let OciError::Coded(code, err) = self;
        let (status, message) = err.public();
        let json = json_text(&OciErrorBody::one(code.as_str(), &message));
        finish((status, json).into_response(), status, "application/json")
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> Self {
        // A store that is being reopened after an I/O error is an outage to retry (503), not
        // a fault of the request.
        match e {
            crate::store::StoreError::Unusable(_) => ApiError::Unavailable(
                "the gate's store is recovering from an I/O error; try again shortly".into(),
            ),
            // Logged where it was found; the client learns only that the gate cannot decide.
            crate::store::StoreError::Lost(_) => ApiError::Unavailable(
                "the gate's store is unavailable; the operator has been told".into(),
            ),
            crate::store::StoreError::Unreachable(_) => ApiError::Unavailable(
                "the gate's shared store cannot be reached; try again shortly".into(),
            ),
            e => ApiError::Internal(e.to_string()),
        }
    }
}
