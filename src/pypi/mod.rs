//! The PyPI-compatible simple index (PEP 503, PEP 691) and its file routes.

mod check;
mod files;
pub mod hashing;
mod listing;
pub mod page;
mod pins;
pub mod provenance;
pub mod render;
pub mod service;
pub mod upstream;
pub mod wheel;

use std::sync::Arc;

use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use bytes::Bytes;

use crate::error::ApiError;
use crate::policy::{ProjectName, Sha256};
use crate::AppState;
use render::Format;
use service::Client;

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/simple", get(|| async { redirect("simple/") }))
        .route("/simple/", get(index))
        .route("/simple/{project}", get(project_no_slash))
        .route("/simple/{project}/", get(project))
        .route("/files/{project}/{sha256}/{filename}", get(file))
        .route("/api/v1/packages/{project}/{version}", get(release_check))
}

/// `GET /api/v1/packages/{project}/{version}[?sha256=H[&sha256=H…]]`: why that release would or
/// would not install (see `check.rs`). JSON; 400 for a name, version or hash that is not one.
async fn release_check(
    State(st): State<Arc<AppState>>,
    Path((raw, version)): Path<(String, String)>,
    req: Request,
) -> Result<Response, crate::error::JsonError> {
    use crate::error::JsonError;
    let bad = |e: String| JsonError(ApiError::BadRequest(e));
    let name = ProjectName::parse(&raw).map_err(|e| bad(format!("project: {e}")))?;
    let version = version
        .parse::<pep440_rs::Version>()
        .map_err(|e| bad(format!("version: {e}")))?;
    let mut hashes = Vec::new();
    for pair in req.uri().query().unwrap_or_default().split('&') {
        match pair.split_once('=') {
            Some(("sha256", v)) => {
                for h in v.split(',').filter(|h| !h.is_empty()) {
                    hashes.push(Sha256::parse(h).map_err(|e| bad(format!("sha256: {e}")))?);
                }
            }
            None if pair.is_empty() => {}
            _ => return Err(bad("the only query parameter is sha256".into())),
        }
    }
    let lp = st.policy();
    let client = Client::of(&req);
    let ask = crate::Ask {
        policy: &lp,
        client: &client,
        head: false,
        headers: req.headers(),
    };
    let check = st
        .pypi
        .release_check(&ask, &name, &version, &hashes)
        .await?;
    let mut r = axum::Json(check).into_response();
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(r)
}

/// A relative redirect, so it works behind any proxy and prefix (PEP 503: URLs must end in `/`,
/// and clients follow a redirect to the normalised name).
fn redirect(location: &str) -> Response {
    let mut r = StatusCode::MOVED_PERMANENTLY.into_response();
    if let Ok(v) = HeaderValue::from_str(location) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

#[derive(serde::Deserialize)]
struct FormatQuery {
    format: Option<String>,
}

fn negotiate(q: &FormatQuery, headers: &HeaderMap) -> Result<Format, ApiError> {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    render::negotiate(q.format.as_deref(), accept).ok_or(ApiError::NotAcceptable)
}

/// A simple-API response with the caching headers PEP 691 clients rely on.
fn page_response(format: Format, body: Bytes, etag: String, headers: &HeaderMap) -> Response {
    let not_modified = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let mut r = if not_modified {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        (StatusCode::OK, body).into_response()
    };
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(format.header_value()),
    );
    h.insert(header::VARY, HeaderValue::from_static("Accept"));
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("max-age=60"),
    );
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    r
}

async fn index(
    State(st): State<Arc<AppState>>,
    Query(q): Query<FormatQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let format = negotiate(&q, &headers)?;
    let lp = st.policy();
    let projects: Vec<&ProjectName> = lp.policy.projects.keys().collect();
    let body = Bytes::from(render::render_index(format, &projects));
    let etag = format!(
        "\"{}-{}\"",
        lp.version,
        format.content_type().len() + body.len()
    );
    Ok(page_response(format, body, etag, &headers))
}

async fn project_no_slash(Path(raw): Path<String>) -> Result<Response, ApiError> {
    let name = ProjectName::parse(&raw).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    Ok(redirect(&format!("{name}/")))
}

async fn project(
    State(st): State<Arc<AppState>>,
    Path(raw): Path<String>,
    Query(q): Query<FormatQuery>,
    req: Request,
) -> Result<Response, ApiError> {
    let name = ProjectName::parse(&raw).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    if name.as_str() != raw {
        return Ok(redirect(&format!("../{name}/")));
    }
    let format = negotiate(&q, req.headers())?;
    let lp = st.policy();
    let client = Client::of(&req);
    let ask = crate::Ask {
        policy: &lp,
        client: &client,
        head: req.method() == Method::HEAD,
        headers: req.headers(),
    };
    let (body, etag) = st.pypi.project_page(&ask, &name, format).await?;
    Ok(page_response(format, body, etag, req.headers()))
}

async fn file(
    State(st): State<Arc<AppState>>,
    Path((raw, sha, filename)): Path<(String, String, String)>,
    req: Request,
) -> Result<Response, ApiError> {
    let name = ProjectName::parse(&raw).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let sha = Sha256::parse_canonical(&sha).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    if name.as_str() != raw {
        return Ok(redirect(&format!("../../{name}/{sha}/{filename}")));
    }
    let head = req.method() == Method::HEAD;
    let lp = st.policy();
    let client = Client::of(&req);
    let ask = crate::Ask {
        policy: &lp,
        client: &client,
        head,
        headers: req.headers(),
    };
    if let Some(wheel) = filename.strip_suffix(".metadata") {
        return st.pypi.metadata(&ask, &name, sha, wheel).await;
    }
    if let Some(dist) = filename.strip_suffix(".provenance") {
        return st.pypi.provenance_file(&ask, &name, sha, dist).await;
    }
    st.pypi.file(&ask, &name, sha, &filename).await
}

/// The index's tables in the store.
use crate::store::Table;

/// First-sight pins of release rules: `{project}/{filename}` → `Pin`.
pub const PINS: Table = Table::new("pins");
/// Hashes the gate computed for files whose upstream declared none: file URL → `Observed`.
pub const OBSERVED: Table = Table::new("observed");
/// The last good upstream page per `{index}/{project}`, served stale when the upstream is down.
pub const PAGES: Table = Table::new("pages");
/// Wheel sha256 → sha256 of its METADATA file (itself in the cache).
pub const METADATA: Table = Table::new("metadata");

/// PEP 740 provenance per file, `{project}/{filename}/{sha256}` → `provenance::Stored`: the
/// object as the index served it and the verdict on it.
pub const PROVENANCE: Table = Table::new("provenance");

/// Every table of this gate, created at its construction.
pub const TABLES: [Table; 5] = [PINS, OBSERVED, PAGES, METADATA, PROVENANCE];
