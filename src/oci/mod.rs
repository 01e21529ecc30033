//! The OCI pull gate: `/v2/…` (OCI distribution spec, pull side only).

pub mod client;
mod decisions;
mod documents;
mod endpoints;
mod links;
pub mod service;
mod signatures;
pub mod strict;

use std::sync::Arc;

use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::error::ApiError;
use crate::error::{OciCode, OciError};
use crate::policy::oci::{Digest, Tag};
use crate::AppState;
use service::Reference;

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/v2/", get(base))
        .route("/v2", get(base))
        .route("/v2/{*path}", get(dispatch))
}

fn api_version(mut r: Response) -> Response {
    r.headers_mut().insert(
        HeaderName::from_static("docker-distribution-api-version"),
        HeaderValue::from_static("registry/2.0"),
    );
    r
}

use axum::http::HeaderName;

/// `/v2/`: the API version check every client makes first.
async fn base() -> Response {
    let mut r = (StatusCode::OK, "{}").into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    api_version(r)
}

#[derive(serde::Deserialize)]
struct NsQuery {
    ns: Option<String>,
    n: Option<u32>,
    last: Option<String>,
}

/// Splits `<name>/manifests/<ref>`, `<name>/blobs/<digest>`, `<name>/referrers/<digest>`,
/// `<name>/tags/list`. The last marker in the path wins, since a repository name may itself
/// contain a component called `manifests` or `blobs`.
fn split(path: &str) -> Option<(&str, &str, &str)> {
    if let Some(name) = path.strip_suffix("/tags/list") {
        return Some((name, "tags", ""));
    }
    ["/manifests/", "/blobs/", "/referrers/"]
        .iter()
        .filter_map(|kind| path.rfind(kind).map(|i| (i, *kind)))
        .max_by_key(|(i, _)| *i)
        .map(|(i, kind)| (&path[..i], kind.trim_matches('/'), &path[i + kind.len()..]))
}

async fn dispatch(
    State(st): State<Arc<AppState>>,
    Path(path): Path<String>,
    Query(q): Query<NsQuery>,
    req: Request,
) -> Response {
    let client = crate::conn::Client::of(&req);
    let (parts, _) = req.into_parts();
    let result = handle(&st, &path, &q, &parts, client).await;
    api_version(match result {
        Ok(r) => r,
        Err(e) => e.into_response(),
    })
}

async fn handle(
    st: &Arc<AppState>,
    path: &str,
    q: &NsQuery,
    req: &axum::http::request::Parts,
    client: crate::conn::Client,
) -> Result<Response, OciError> {
    let Some((name, kind, reference)) = split(path) else {
        return Err(OciError::Coded(
            OciCode::Unsupported,
            ApiError::NotFound("not a pull endpoint of the distribution API".into()),
        ));
    };
    let (reg, repo) = st.oci.resolve(name, q.ns.as_deref())?;
    let lp = st.policy();
    let head = req.method == Method::HEAD;
    let ask = crate::Ask {
        policy: &lp,
        client: &client,
        head,
        headers: &req.headers,
    };
    match kind {
        "manifests" => {
            let reference = if reference.starts_with("sha256:") || reference.contains(':') {
                Reference::Digest(Digest::parse(reference).map_err(|e| {
                    OciError::Coded(OciCode::DigestInvalid, ApiError::BadRequest(e.to_string()))
                })?)
            } else {
                Reference::Tag(Tag::parse(reference).map_err(|e| {
                    OciError::Coded(OciCode::TagInvalid, ApiError::BadRequest(e.to_string()))
                })?)
            };
            st.oci.manifest(&ask, &reg, &repo, reference).await
        }
        "blobs" => {
            let digest = Digest::parse(reference).map_err(|e| {
                OciError::Coded(OciCode::DigestInvalid, ApiError::BadRequest(e.to_string()))
            })?;
            st.oci.blob(&ask, &reg, &repo, digest).await
        }
        "referrers" => {
            let digest = Digest::parse(reference).map_err(|e| {
                OciError::Coded(OciCode::DigestInvalid, ApiError::BadRequest(e.to_string()))
            })?;
            st.oci.referrers(&ask, &reg, &repo, digest).await
        }
        _ => {
            let last = match &q.last {
                Some(l) => Some(Tag::parse(l).map_err(|e| {
                    OciError::Coded(OciCode::TagInvalid, ApiError::BadRequest(e.to_string()))
                })?),
                None => None,
            };
            let page = service::TagPage {
                name,
                ns: q.ns.as_deref(),
                n: q.n,
                last: last.as_ref(),
            };
            st.oci.tags(&ask, &reg, &repo, &page).await
        }
    }
}

/// The pull gate's tables in the store.
use crate::store::Table;

/// Verified manifests: digest → media type and size (bytes in the cache).
pub const MANIFESTS: Table = Table::new("manifests");
/// `{repository}|{child digest}` → the index digests that list it.
pub const CHILDREN: Table = Table::new("children");
/// `{repository}|{blob digest}` → size and the manifests that reference it.
pub const BLOBREFS: Table = Table::new("blobrefs");
/// `{repository}|{tag}` → the digest it last resolved to, and when.
pub const TAGS: Table = Table::new("tags");

/// `{repository}|{artifact digest}` → the image digest a `.sig`/`.att` artifact belongs to.
pub const ARTIFACTS: Table = Table::new("artifacts");

/// `{repository}|{blob digest}` → the signature-artifact manifests whose payload it is, with
/// the size each declares: blobs read, parsed and cached as signatures, attestations or
/// bundles, never as image layers.
pub const ARTIFACT_BLOBS: Table = Table::new("artifact_blobs");

/// Every table of this gate, created at its construction.
pub const TABLES: [Table; 6] = [
    MANIFESTS,
    CHILDREN,
    BLOBREFS,
    TAGS,
    ARTIFACTS,
    ARTIFACT_BLOBS,
];

#[cfg(test)]
mod tests {
    use super::split;

    #[test]
    fn paths() {
        assert_eq!(
            split("reg/a/b/manifests/v1"),
            Some(("reg/a/b", "manifests", "v1"))
        );
        assert_eq!(
            split("a/manifests/b/blobs/sha256:x"),
            Some(("a/manifests/b", "blobs", "sha256:x"))
        );
        assert_eq!(
            split("a/blobs/b/manifests/v1"),
            Some(("a/blobs/b", "manifests", "v1"))
        );
        assert_eq!(split("a/tags/list"), Some(("a", "tags", "")));
        assert_eq!(split("a/b"), None);
    }
}
