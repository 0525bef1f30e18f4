//! Presence, privacy and pusher handlers (`/v1/privacy`, `/v1/presence/…`,
//! `/v1/pushers`).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use parley_client_api::http::presence::{self, Privacy};
use parley_client_api::http::push::{self, Pusher};
use parley_client_api::{DeviceId, UserId};

use super::AppState;
use super::error::ApiError;
use super::extract::{ApiJson, ApiPath, Auth};
use crate::store::presence::PusherRow;

type ApiResult<T> = Result<T, ApiError>;

pub async fn get_privacy(
    State(st): State<AppState>,
    Auth(me): Auth,
) -> ApiResult<Json<presence::get_privacy::Response>> {
    let last_seen = st.services.presence.privacy(&me.user_id).await?;
    let read_receipts = st.services.presence.read_receipts(&me.user_id).await?;
    Ok(Json(Privacy {
        last_seen,
        read_receipts,
    }))
}

pub async fn set_privacy(
    State(st): State<AppState>,
    Auth(me): Auth,
    ApiJson(req): ApiJson<presence::set_privacy::Request>,
) -> ApiResult<Json<presence::set_privacy::Response>> {
    st.services
        .presence
        .set_privacy(&me.user_id, req.last_seen)
        .await?;
    st.services
        .presence
        .set_read_receipts(&me.user_id, req.read_receipts)
        .await?;
    Ok(Json(req))
}

pub async fn get_presence(
    State(st): State<AppState>,
    Auth(me): Auth,
    ApiPath(user_id): ApiPath<UserId>,
) -> ApiResult<Json<presence::get::Response>> {
    Ok(Json(st.services.presence.get(&me.user_id, &user_id).await?))
}

fn pusher(r: PusherRow) -> Pusher {
    Pusher {
        device_id: r.device_id,
        url: r.url,
        token: r.token,
        created_at: r.created_at,
    }
}

pub async fn set_pusher(
    State(st): State<AppState>,
    Auth(me): Auth,
    ApiJson(req): ApiJson<push::set::Request>,
) -> ApiResult<Json<push::set::Response>> {
    let row = st
        .services
        .push
        .set_pusher(&me.user_id, &me.device_id, &req.url, &req.token)
        .await?;
    Ok(Json(pusher(row)))
}

pub async fn list_pushers(
    State(st): State<AppState>,
    Auth(me): Auth,
) -> ApiResult<Json<push::list::Response>> {
    let rows = st.services.push.pushers(&me.user_id).await?;
    Ok(Json(push::list::Response {
        pushers: rows.into_iter().map(pusher).collect(),
    }))
}

pub async fn delete_pusher(
    State(st): State<AppState>,
    Auth(me): Auth,
    ApiPath(device_id): ApiPath<DeviceId>,
) -> ApiResult<StatusCode> {
    st.services
        .push
        .delete_pusher(&me.user_id, &device_id)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
