//! Device link handlers (`/v1/devices/links`, spec/devices.md DL1–DL6).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use parley_client_api::http::links;
use parley_client_api::payload::Payload;

use super::AppState;
use super::error::ApiError;
use super::extract::{ApiJson, ApiPath, Auth};

pub async fn create(
    State(st): State<AppState>,
    Auth(me): Auth,
    ApiJson(req): ApiJson<links::create::Request>,
) -> Result<(StatusCode, Json<links::create::Response>), ApiError> {
    let expires_at = st
        .services
        .links
        .create(
            &me.user_id,
            &me.device_id,
            &req.link_id,
            req.request.as_bytes(),
        )
        .await?;
    tracing::info!(user = %me.user_id, device = %me.device_id, "device link opened");
    Ok((
        StatusCode::CREATED,
        Json(links::create::Response { expires_at }),
    ))
}

pub async fn get(
    State(st): State<AppState>,
    Auth(me): Auth,
    ApiPath(link_id): ApiPath<String>,
) -> Result<Json<links::get::Response>, ApiError> {
    let l = st
        .services
        .links
        .get(&me.user_id, &me.device_id, &link_id)
        .await?;
    Ok(Json(links::get::Response {
        device_id: l.device_id,
        request: Payload(l.request),
        expires_at: l.expires_at,
    }))
}

pub async fn approve(
    State(st): State<AppState>,
    Auth(me): Auth,
    ApiPath(link_id): ApiPath<String>,
    ApiJson(req): ApiJson<links::approve::Request>,
) -> Result<StatusCode, ApiError> {
    st.services
        .links
        .approve(
            &me.user_id,
            &me.device_id,
            &link_id,
            req.approval.as_bytes(),
        )
        .await?;
    tracing::info!(user = %me.user_id, device = %me.device_id, "device link approved");
    Ok(StatusCode::NO_CONTENT)
}

pub async fn approval(
    State(st): State<AppState>,
    Auth(me): Auth,
    ApiPath(link_id): ApiPath<String>,
) -> Result<Json<links::approval::Response>, ApiError> {
    let s = st
        .services
        .links
        .status(&me.user_id, &me.device_id, &link_id)
        .await?;
    let (approved_by, approval) = match s.approval {
        Some((by, a)) => (Some(by), Some(Payload(a))),
        None => (None, None),
    };
    Ok(Json(links::approval::Response {
        approval,
        approved_by,
        expires_at: s.expires_at,
    }))
}
