//! Block list handlers (`/v1/blocks`; the rules are in `service::blocking`) and reports
//! (`/v1/reports`, `service::reports`).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use parley_client_api::UserId;
use parley_client_api::http::blocks::{self, Blocked};

use super::AppState;
use super::error::ApiError;
use super::extract::{ApiPath, Auth};

pub async fn list(
    State(st): State<AppState>,
    Auth(me): Auth,
) -> Result<Json<blocks::list::Response>, ApiError> {
    let blocked = st
        .services
        .blocking
        .list(&me.user_id)
        .await?
        .into_iter()
        .map(|(user_id, since)| Blocked { user_id, since })
        .collect();
    Ok(Json(blocks::list::Response { blocked }))
}

pub async fn block(
    State(st): State<AppState>,
    Auth(me): Auth,
    ApiPath(user): ApiPath<UserId>,
) -> Result<Json<blocks::block::Response>, ApiError> {
    let since = st.services.blocking.block(&me.user_id, &user).await?;
    Ok(Json(Blocked {
        user_id: user,
        since,
    }))
}

pub async fn unblock(
    State(st): State<AppState>,
    Auth(me): Auth,
    ApiPath(user): ApiPath<UserId>,
) -> Result<StatusCode, ApiError> {
    st.services.blocking.unblock(&me.user_id, &user).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /v1/reports`: files a report with this server's admins (`service::reports`).
pub async fn report(
    State(st): State<AppState>,
    Auth(me): Auth,
    super::extract::ApiJson(req): super::extract::ApiJson<
        parley_client_api::http::reports::create::Request,
    >,
) -> Result<
    (
        StatusCode,
        Json<parley_client_api::http::reports::create::Response>,
    ),
    ApiError,
> {
    let r = st.services.reports.file(&me.user_id, req).await?;
    Ok((StatusCode::CREATED, Json(r)))
}
