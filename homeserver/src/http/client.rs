//! Client API handlers (`/v1/…`).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use parley_client_api::http::accounts::{self, DeviceInfo, Session as WireSession};
use parley_client_api::http::chats::{self, ChatSummary};
use parley_client_api::http::keys::{self, ClaimedKeyPackage, KeyPackageCount};
use parley_client_api::{ChatId, DeviceId, Payload, UserId};

use super::AppState;
use super::error::ApiError;
use super::extract::{ApiJson, ApiPath, ApiQuery, Auth};
use crate::service::accounts::LoggedIn;
use crate::store::{ChatListRow, Store};

type ApiResult<T> = Result<T, ApiError>;

fn session(l: LoggedIn) -> WireSession {
    WireSession {
        user_id: l.session.user_id,
        device_id: l.session.device_id,
        access_token: l.access_token,
    }
}

fn summary(c: ChatListRow) -> ChatSummary {
    ChatSummary {
        chat_id: c.chat_id,
        kind: c.kind,
        name: c.name,
        members: c.members,
        last_seq: c.last_seq,
        read_seq: c.read_seq,
        unread_count: c.unread_count,
        created_at: c.created_at,
    }
}

pub async fn register(
    State(st): State<AppState>,
    ApiJson(req): ApiJson<accounts::register::Request>,
) -> ApiResult<Response> {
    let l = st
        .services
        .accounts
        .register(&req.username, &req.password, req.device_name)
        .await?;
    tracing::info!(user = %l.session.user_id, device = %l.session.device_id, "registered");
    Ok((StatusCode::CREATED, Json(session(l))).into_response())
}

pub async fn login(
    State(st): State<AppState>,
    ApiJson(req): ApiJson<accounts::login::Request>,
) -> ApiResult<Json<accounts::login::Response>> {
    let l = st
        .services
        .accounts
        .login(&req.username, &req.password, req.device_name)
        .await?;
    Ok(Json(session(l)))
}

pub async fn logout(State(st): State<AppState>, Auth(me): Auth) -> ApiResult<StatusCode> {
    st.services
        .remove_device(&me.user_id, &me.device_id)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn list_devices(
    State(st): State<AppState>,
    Auth(me): Auth,
) -> ApiResult<Json<accounts::list_devices::Response>> {
    let devices = st.services.accounts.devices(&me.user_id).await?;
    Ok(Json(accounts::list_devices::Response {
        devices: devices
            .into_iter()
            .map(|d| DeviceInfo {
                current: d.device_id == me.device_id,
                device_id: d.device_id,
                display_name: d.display_name,
                created_at: d.created_at,
            })
            .collect(),
    }))
}

pub async fn delete_device(
    State(st): State<AppState>,
    Auth(me): Auth,
    ApiPath(device_id): ApiPath<DeviceId>,
) -> ApiResult<StatusCode> {
    st.services.remove_device(&me.user_id, &device_id).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn create_chat(
    State(st): State<AppState>,
    Auth(me): Auth,
    ApiJson(req): ApiJson<chats::create::Request>,
) -> ApiResult<Response> {
    let (row, created) = st.services.chats.create(&me, req.members, req.name).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(summary(row))).into_response())
}

pub async fn list_chats(
    State(st): State<AppState>,
    Auth(me): Auth,
) -> ApiResult<Json<chats::list::Response>> {
    let rows = st.services.chats.list(&me.user_id).await?;
    Ok(Json(chats::list::Response {
        chats: rows.into_iter().map(summary).collect(),
    }))
}

pub async fn leave_chat(
    State(st): State<AppState>,
    Auth(me): Auth,
    ApiPath(chat_id): ApiPath<ChatId>,
) -> ApiResult<StatusCode> {
    st.services.chats.leave(&chat_id, &me.user_id).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn send(
    State(st): State<AppState>,
    Auth(me): Auth,
    ApiPath(chat_id): ApiPath<ChatId>,
    ApiJson(req): ApiJson<chats::send::Request>,
) -> ApiResult<Response> {
    let ack = st.services.chats.send(&me, chat_id, req).await?;
    let status = if ack.pending {
        StatusCode::ACCEPTED
    } else if ack.duplicate {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(ack)).into_response())
}

pub async fn history(
    State(st): State<AppState>,
    Auth(me): Auth,
    ApiPath(chat_id): ApiPath<ChatId>,
    ApiQuery(q): ApiQuery<chats::history::Query>,
) -> ApiResult<Json<chats::history::Response>> {
    let events = st
        .services
        .chats
        .history(&chat_id, &me.user_id, q.after, q.limit.unwrap_or(100))
        .await?;
    Ok(Json(chats::history::Response { events }))
}

pub async fn receipts(
    State(st): State<AppState>,
    Auth(me): Auth,
    ApiPath(chat_id): ApiPath<ChatId>,
) -> ApiResult<Json<chats::receipts::Response>> {
    let (last_seq, receipts) = st.services.chats.receipts(&chat_id, &me.user_id).await?;
    Ok(Json(chats::receipts::Response {
        chat_id,
        last_seq,
        receipts,
    }))
}

/// `GET /v1/chats/{chat_id}/group_info`: the chat's current GroupInfo, for a device of a
/// member user that joins by external commit (spec/backup.md BK19).
pub async fn group_info(
    State(st): State<AppState>,
    Auth(me): Auth,
    ApiPath(chat_id): ApiPath<ChatId>,
) -> ApiResult<Json<chats::group_info::Response>> {
    let (epoch, data) = st.services.chats.group_info(&chat_id, &me.user_id).await?;
    Ok(Json(chats::group_info::Response {
        chat_id,
        epoch,
        group_info: parley_client_api::Payload(data),
    }))
}

pub async fn mark_read(
    State(st): State<AppState>,
    Auth(me): Auth,
    ApiPath(chat_id): ApiPath<ChatId>,
    ApiJson(req): ApiJson<chats::mark_read::Request>,
) -> ApiResult<StatusCode> {
    st.services.chats.mark_read(&me, &chat_id, req.seq).await?;
    Ok(StatusCode::NO_CONTENT)
}

fn kp_count(c: crate::store::KeyPackageCount) -> KeyPackageCount {
    KeyPackageCount {
        one_time: c.one_time,
        has_last_resort: c.has_last_resort,
    }
}

pub async fn upload_keys(
    State(st): State<AppState>,
    Auth(me): Auth,
    ApiJson(req): ApiJson<keys::upload::Request>,
) -> ApiResult<Json<keys::upload::Response>> {
    let count = st
        .services
        .keys
        .upload(
            &me.device_id,
            req.key_packages.into_iter().map(|p| p.0).collect(),
            req.last_resort.map(|p| p.0),
        )
        .await?;
    Ok(Json(kp_count(count)))
}

pub async fn count_keys(
    State(st): State<AppState>,
    Auth(me): Auth,
) -> ApiResult<Json<keys::count::Response>> {
    Ok(Json(kp_count(st.services.keys.count(&me.device_id).await?)))
}

pub async fn claim_keys(
    State(st): State<AppState>,
    Auth(_me): Auth,
    ApiJson(req): ApiJson<keys::claim::Request>,
) -> ApiResult<Json<keys::claim::Response>> {
    let claimed = st.services.keys.claim(&req.user_id).await?;
    Ok(Json(keys::claim::Response {
        user_id: req.user_id,
        devices: claimed
            .into_iter()
            .map(|c| ClaimedKeyPackage {
                device_id: c.device_id,
                key_package: Payload(c.data),
                last_resort: c.last_resort,
            })
            .collect(),
    }))
}

pub async fn user_devices(
    State(st): State<AppState>,
    Auth(_me): Auth,
    ApiPath(user_id): ApiPath<UserId>,
) -> ApiResult<Json<keys::user_devices::Response>> {
    let devices = st.services.keys.devices(&user_id).await?;
    Ok(Json(keys::user_devices::Response { user_id, devices }))
}

pub async fn members(
    State(st): State<AppState>,
    Auth(me): Auth,
    ApiPath(chat_id): ApiPath<ChatId>,
) -> ApiResult<Json<chats::members::Response>> {
    let info = st.services.chats.info(&chat_id, &me.user_id).await?;
    Ok(Json(chats::members::Response {
        chat_id,
        mls_epoch: info.mls_epoch,
        members: info
            .members
            .into_iter()
            .map(|(user_id, admin)| chats::Member { user_id, admin })
            .collect(),
    }))
}

pub async fn rename(
    State(st): State<AppState>,
    Auth(me): Auth,
    ApiPath(chat_id): ApiPath<ChatId>,
    ApiJson(req): ApiJson<chats::rename::Request>,
) -> ApiResult<StatusCode> {
    st.services
        .chats
        .rename(&me.user_id, &chat_id, &req.name)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn set_admin(
    State(st): State<AppState>,
    Auth(me): Auth,
    ApiPath(chat_id): ApiPath<ChatId>,
    ApiJson(req): ApiJson<chats::set_admin::Request>,
) -> ApiResult<StatusCode> {
    st.services
        .chats
        .set_admin(&me.user_id, &chat_id, &req.user_id, req.admin)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Ready when the database answers.
pub async fn ready(State(st): State<AppState>) -> Response {
    match st.services.store.stats().await {
        Ok(_) => (StatusCode::OK, "ready").into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "not ready");
            (StatusCode::SERVICE_UNAVAILABLE, "database unavailable").into_response()
        }
    }
}

/// Prometheus text exposition.
pub async fn metrics(State(st): State<AppState>) -> Response {
    if let Ok(stats) = st.services.store.stats().await {
        st.services.metrics.inbox_depth.set(stats.inbox_rows);
    }
    if st.services.federation.is_some() {
        match st.services.outbox_gauges().await {
            Ok(gauges) => st.services.metrics.set_outbox(&gauges),
            Err(e) => tracing::warn!(error = %e, "cannot read the federation outbox for metrics"),
        }
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        st.services.metrics.render(),
    )
        .into_response()
}
