//! `/admin/v1/tokens`: the admin API's bearer tokens (listed without their secrets, created
//! with the secret shown once, revoked), each change audited.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;

use super::auth;
use super::auth::{Actor, Role};
use super::views::{self, NewTokenView, Tokens};
use super::ApiResult;
use super::{commit, detached, parse_body};
use crate::conn::Client;
use crate::error::{ApiError, JsonError};
use crate::store::cache::now_secs;
use crate::store::{Change, TOKENS};
use crate::AppState;

pub(super) async fn tokens(State(st): State<Arc<AppState>>) -> ApiResult<Json<Tokens>> {
    let tokens = auth::list(&st.store)?.iter().map(Into::into).collect();
    Ok(Json(Tokens { tokens }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct NewToken {
    pub(super) role: String,
    pub(super) name: String,
    /// A duration such as "90d"; none: the token does not expire.
    pub(super) expires: Option<String>,
}

pub(super) async fn token_create(
    State(st): State<Arc<AppState>>,
    Extension(actor): Extension<Actor>,
    client: Client,
    body: axum::body::Bytes,
) -> ApiResult<Response> {
    let req: NewToken = parse_body(&body)?;
    let role = Role::parse(&req.role)
        .map_err(|e| JsonError(ApiError::BadRequest(format!("role: {e}"))))?;
    let now = now_secs();
    let expires = match req.expires.as_deref() {
        None => None,
        Some(d) => Some(
            auth::expiry(now, d)
                .map_err(|e| JsonError(ApiError::BadRequest(format!("expires: {e}"))))?,
        ),
    };
    let (rec, secret) = auth::mint(&req.name, role, expires, now)
        .map_err(|e| JsonError(ApiError::BadRequest(e)))?;
    let info = auth::TokenInfo::from(&rec);
    let stored = rec.clone();
    detached(async move {
        commit(
            &st,
            &actor,
            &client,
            "tokens.create",
            stored.id.clone(),
            None,
            Some(views::value(&auth::TokenInfo::from(&stored))?),
            Change::put(TOKENS, &stored.id, &stored)?,
        )
        .await
    })
    .await?;
    let body = NewTokenView {
        info,
        token: secret.0,
    };
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

pub(super) fn valid_id(id: &str) -> Result<(), JsonError> {
    if id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(())
    } else {
        Err(JsonError(ApiError::BadRequest(format!(
            "{id:?} is not an id (16 hex digits)"
        ))))
    }
}

pub(super) async fn token_delete(
    State(st): State<Arc<AppState>>,
    Extension(actor): Extension<Actor>,
    client: Client,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    valid_id(&id)?;
    detached(async move {
        let _writing = st.admin_writes.lock().await;
        let before: Option<auth::TokenRecord> = st.store.get(crate::store::TOKENS, &id)?;
        let Some(before) = before else {
            return Err(JsonError(ApiError::NotFound(format!("no token {id}"))));
        };
        let key = id.clone();
        commit(
            &st,
            &actor,
            &client,
            "tokens.delete",
            id,
            Some(views::value(&auth::TokenInfo::from(&before))?),
            None,
            Change::remove(TOKENS, &key),
        )
        .await
    })
    .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
