//! `/admin/v1/audit…`: the audit log queried, verified against its signed checkpoints and
//! archive, and exported as the archive's lines.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{header, HeaderValue};
use axum::response::Response;
use axum::Json;
use serde::Deserialize;

use super::views::{AuditLine, AuditVerified};
use super::ApiResult;
use crate::error::{ApiError, JsonError};
use crate::AppState;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AuditQuery {
    pub(super) since: Option<i64>,
    pub(super) until: Option<i64>,
    pub(super) actor: Option<String>,
    pub(super) subject: Option<String>,
    pub(super) decision: Option<String>,
    pub(super) action: Option<String>,
    pub(super) after: Option<u64>,
    pub(super) limit: Option<usize>,
}

/// `GET /admin/v1/audit`: entries as JSON lines, oldest first, filtered; `Link: …; rel="next"`
/// names the next page (`after` = the last sequence number returned).
pub(super) async fn audit_query(
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
    // Everything recorded before this request is in the answer.
    st.audit.flush().await;
    let store = st.store.clone();
    let (lines, last, more) = tokio::task::spawn_blocking(move || {
        let mut lines = String::new();
        let (mut n, mut last, mut more) = (0usize, 0u64, false);
        let r = store.audit_scan(q.after.unwrap_or(0), |seq, bytes| {
            let Some((hash, e)) = crate::audit::decode(bytes) else {
                // A damaged entry is shown as such (audit verify names it).
                push_line(&mut lines, &AuditLine::Damaged { seq, damaged: true });
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
                push_line(
                    &mut lines,
                    &AuditLine::Entry {
                        entry: &e,
                        hash: &hash,
                    },
                );
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

/// One JSON line of an answer (the views cannot fail to serialize; a line that did would be
/// left out rather than sent half-written).
fn push_line(lines: &mut String, line: &AuditLine) {
    if let Ok(text) = serde_json::to_string(line) {
        lines.push_str(&text);
        lines.push('\n');
    }
}

pub(super) async fn audit_verify(
    State(st): State<Arc<AppState>>,
) -> ApiResult<Json<AuditVerified>> {
    st.audit.flush().await;
    let given = st.audit.given();
    let store = st.store.clone();
    let dir = crate::audit::archive::dir(&st.config.data_dir);
    let report = tokio::task::spawn_blocking(move || {
        store.guard(|| {
            crate::audit::verify_all(&store, &given, &dir).map_err(crate::store::StoreError::Audit)
        })
    })
    .await
    .map_err(|e| JsonError(ApiError::Internal(e.to_string())))?
    .map_err(|e| JsonError(ApiError::Unavailable(e.to_string())))?;
    Ok(Json(AuditVerified::from(report)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ExportQuery {
    pub(super) since: Option<String>,
    pub(super) until: Option<String>,
}

/// `GET /admin/v1/audit/export?since=&until=`: what `tollgate audit export` prints, streamed
/// (the archive can be larger than what should sit in memory).
pub(super) async fn audit_export(
    State(st): State<Arc<AppState>>,
    q: Result<Query<ExportQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Response> {
    let Query(q) = q.map_err(|e| JsonError(ApiError::BadRequest(e.body_text())))?;
    let parse = |v: &Option<String>, default: i64| match v {
        None => Ok(default),
        Some(t) => {
            crate::audit::archive::parse_time(t).map_err(|e| JsonError(ApiError::BadRequest(e)))
        }
    };
    let (since, until) = (parse(&q.since, 0)?, parse(&q.until, i64::MAX)?);
    st.audit.flush().await;
    let store = st.store.clone();
    let dir = crate::audit::archive::dir(&st.config.data_dir);
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<axum::body::Bytes, std::io::Error>>(64);
    tokio::task::spawn_blocking(move || {
        let r = store.guard(|| {
            crate::audit::archive::export(&store, &dir, since, until, |mut line| {
                line.push('\n');
                tx.blocking_send(Ok(line.into())).is_ok()
            })
            .map_err(crate::store::StoreError::Audit)
        });
        if let Err(e) = r {
            // The client sees a cut-off body (no final newline-terminated checkpoint); the
            // cause is logged.
            tracing::error!(error = %e, "audit export");
            let _ = tx.blocking_send(Err(std::io::Error::other(e)));
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    let mut resp = Response::new(Body::from_stream(stream));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    Ok(resp)
}
