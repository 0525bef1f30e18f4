//! The admin API (`/_parley/admin/v1/…`), served only on its own listener
//! (`admin_listen`), never on the public one, and only with the admin token
//! (`Authorization: Bearer <admin_token>`). The `parley-homeserver admin` CLI speaks it.

use axum::extract::{FromRequestParts, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use parley_client_api::{DeviceId, ErrorCode, UserId};
use sha2::{Digest, Sha256};

use super::AppState;
use super::error::ApiError;
use super::extract::{ApiJson, ApiPath};
use parley_federation::Policy;
use parley_federation::policy::Rule;

use crate::store::Store;

/// The admin API's bodies, shared by the handlers and the CLI.
pub mod api {
    use parley_client_api::{DeviceId, UserId};
    use serde::{Deserialize, Serialize};

    pub const PREFIX: &str = "/_parley/admin/v1";

    #[derive(Debug, Clone, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct CreateUser {
        pub username: String,
        pub password: String,
    }

    #[derive(Debug, Clone, Serialize, Deserialize)]
    pub struct UserCreated {
        pub user_id: UserId,
    }

    #[derive(Debug, Clone, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct ResetPassword {
        pub password: String,
        /// Also remove every device (they must log in again).
        #[serde(default)]
        pub logout_devices: bool,
    }

    #[derive(Debug, Clone, Serialize, Deserialize)]
    pub struct Deactivated {
        pub user_id: UserId,
        pub devices_removed: Vec<DeviceId>,
    }

    #[derive(Debug, Clone, Serialize, Deserialize)]
    pub struct Devices {
        pub user_id: UserId,
        pub devices: Vec<Device>,
    }

    #[derive(Debug, Clone, Serialize, Deserialize)]
    pub struct Device {
        pub device_id: DeviceId,
        pub display_name: Option<String>,
        pub created_at: i64,
    }

    /// `DELETE /_parley/admin/v1/federation/rules`.
    #[derive(Debug, Clone, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct RemoveRule {
        pub pattern: String,
    }

    /// `POST /_parley/admin/v1/federation/mode`.
    #[derive(Debug, Clone, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct SetMode {
        pub mode: parley_federation::policy::Mode,
    }

    /// `POST /_parley/admin/v1/federation/keys/rotate`.
    #[derive(Debug, Clone, Default, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct RotateKey {
        /// Seconds until the new key signs (default: the configured grace).
        #[serde(default)]
        pub grace_secs: Option<u64>,
    }

    /// A report filed by a local user (`GET /_parley/admin/v1/reports[/{id}]`).
    #[derive(Debug, Clone, Serialize, Deserialize)]
    pub struct Report {
        pub id: i64,
        pub reporter: UserId,
        pub target: parley_client_api::http::reports::ReportTarget,
        pub reason: String,
        pub messages: Vec<parley_client_api::http::reports::ReportedMessage>,
        pub created_at: i64,
        /// What the attached messages prove: only that the reporter's device showed them
        /// (no franking in v1).
        pub notice: String,
    }

    #[derive(Debug, Clone, Serialize, Deserialize)]
    pub struct Reports {
        pub reports: Vec<Report>,
    }

    #[derive(Debug, Clone, Default, Serialize, Deserialize)]
    pub struct ReportsQuery {
        /// At most this many, newest first (default 100).
        #[serde(default)]
        pub limit: Option<i64>,
    }

    #[derive(Debug, Clone, Serialize, Deserialize)]
    pub struct Stats {
        pub users: i64,
        pub devices: i64,
        pub chats: i64,
        pub inbox_rows: i64,
        pub connected_sockets: usize,
    }
}

/// The admin router (mount it on the admin listener only).
pub fn admin_app(state: AppState) -> Router {
    Router::new()
        .route("/_parley/admin/v1/users", post(create_user))
        .route(
            "/_parley/admin/v1/users/{user_id}/deactivate",
            post(deactivate),
        )
        .route(
            "/_parley/admin/v1/users/{user_id}/password",
            post(reset_password),
        )
        .route("/_parley/admin/v1/users/{user_id}/devices", get(devices))
        .route(
            "/_parley/admin/v1/users/{user_id}/devices/{device_id}",
            delete(revoke_device),
        )
        .route("/_parley/admin/v1/stats", get(stats))
        .route("/_parley/admin/v1/reports", get(reports))
        .route("/_parley/admin/v1/reports/{id}", get(report))
        .route(
            "/_parley/admin/v1/federation/rules",
            get(federation_rules)
                .post(put_federation_rule)
                .delete(remove_federation_rule),
        )
        .route(
            "/_parley/admin/v1/federation/mode",
            post(set_federation_mode),
        )
        .route("/_parley/admin/v1/federation/keys", get(federation_keys))
        .route(
            "/_parley/admin/v1/federation/keys/rotate",
            post(rotate_federation_key),
        )
        .fallback(|| async { ApiError::new(ErrorCode::NotFound, "no such admin endpoint") })
        .with_state(state)
}

/// The request carries the admin token.
pub struct Admin;

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let Some(expected) = state.services.config.admin_token.as_deref() else {
            return Err(ApiError::new(
                ErrorCode::Forbidden,
                "the admin API is disabled",
            ));
        };
        let given = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| ApiError::new(ErrorCode::MissingToken, "send the admin token"))?;
        // Compare digests: equal-length inputs, no early exit on a shared prefix.
        if Sha256::digest(given.as_bytes()) == Sha256::digest(expected.as_bytes()) {
            Ok(Admin)
        } else {
            Err(ApiError::new(ErrorCode::UnknownToken, "wrong admin token"))
        }
    }
}

type ApiResult<T> = Result<T, ApiError>;

async fn create_user(
    State(st): State<AppState>,
    _: Admin,
    ApiJson(req): ApiJson<api::CreateUser>,
) -> ApiResult<(StatusCode, Json<api::UserCreated>)> {
    let user_id = st
        .services
        .accounts
        .create_user(&req.username, &req.password)
        .await?;
    tracing::info!(user = %user_id, "admin: user created");
    Ok((StatusCode::CREATED, Json(api::UserCreated { user_id })))
}

async fn deactivate(
    State(st): State<AppState>,
    _: Admin,
    ApiPath(user_id): ApiPath<UserId>,
) -> ApiResult<Json<api::Deactivated>> {
    let removed = st.services.accounts.deactivate(&user_id).await?;
    st.services.close_sockets(removed.iter().cloned()).await;
    tracing::info!(user = %user_id, devices = removed.len(), "admin: user deactivated");
    Ok(Json(api::Deactivated {
        user_id,
        devices_removed: removed,
    }))
}

async fn reset_password(
    State(st): State<AppState>,
    _: Admin,
    ApiPath(user_id): ApiPath<UserId>,
    ApiJson(req): ApiJson<api::ResetPassword>,
) -> ApiResult<StatusCode> {
    st.services
        .accounts
        .reset_password(&user_id, &req.password)
        .await?;
    if req.logout_devices {
        for device in st.services.accounts.devices(&user_id).await? {
            st.services
                .remove_device(&user_id, &device.device_id)
                .await?;
        }
    }
    tracing::info!(user = %user_id, "admin: password reset");
    Ok(StatusCode::NO_CONTENT)
}

async fn devices(
    State(st): State<AppState>,
    _: Admin,
    ApiPath(user_id): ApiPath<UserId>,
) -> ApiResult<Json<api::Devices>> {
    if !st
        .services
        .store
        .user_exists(&user_id)
        .await
        .map_err(crate::service::ServiceError::from)?
    {
        return Err(ApiError::new(
            ErrorCode::UnknownUser,
            format!("no such user: {user_id}"),
        ));
    }
    let devices = st.services.accounts.devices(&user_id).await?;
    Ok(Json(api::Devices {
        user_id,
        devices: devices
            .into_iter()
            .map(|d| api::Device {
                device_id: d.device_id,
                display_name: d.display_name,
                created_at: d.created_at,
            })
            .collect(),
    }))
}

async fn revoke_device(
    State(st): State<AppState>,
    _: Admin,
    ApiPath((user_id, device_id)): ApiPath<(UserId, DeviceId)>,
) -> ApiResult<StatusCode> {
    st.services.remove_device(&user_id, &device_id).await?;
    tracing::info!(user = %user_id, device = %device_id, "admin: device revoked");
    Ok(StatusCode::NO_CONTENT)
}

async fn stats(State(st): State<AppState>, _: Admin) -> ApiResult<Json<api::Stats>> {
    let s = st
        .services
        .store
        .stats()
        .await
        .map_err(crate::service::ServiceError::from)?;
    Ok(Json(api::Stats {
        users: s.users,
        devices: s.devices,
        chats: s.chats,
        inbox_rows: s.inbox_rows,
        connected_sockets: st.services.gateway.connected().await,
    }))
}

fn report_body(r: crate::service::reports::Report) -> api::Report {
    api::Report {
        id: r.id,
        reporter: r.reporter,
        target: r.target,
        reason: r.reason,
        messages: r.messages,
        created_at: r.created_at,
        notice: crate::service::reports::CLAIM_NOTICE.to_owned(),
    }
}

/// Reports filed by local users, newest first.
async fn reports(
    State(st): State<AppState>,
    _: Admin,
    axum::extract::Query(q): axum::extract::Query<api::ReportsQuery>,
) -> ApiResult<Json<api::Reports>> {
    let reports = st.services.reports.list(q.limit.unwrap_or(100)).await?;
    Ok(Json(api::Reports {
        reports: reports.into_iter().map(report_body).collect(),
    }))
}

async fn report(
    State(st): State<AppState>,
    _: Admin,
    ApiPath(id): ApiPath<i64>,
) -> ApiResult<Json<api::Report>> {
    Ok(Json(report_body(st.services.reports.get(id).await?)))
}

fn federation(st: &AppState) -> ApiResult<&crate::service::federation::Federation> {
    st.services.federation.as_ref().ok_or_else(|| {
        ApiError::new(
            ErrorCode::Forbidden,
            "federation is not enabled ([federation] enabled = true)",
        )
    })
}

/// The federation policy: mode and rules.
async fn federation_rules(State(st): State<AppState>, _: Admin) -> ApiResult<Json<Policy>> {
    Ok(Json(federation(&st)?.reload().await?))
}

/// Adds a rule (or replaces the one with its pattern).
async fn put_federation_rule(
    State(st): State<AppState>,
    _: Admin,
    ApiJson(rule): ApiJson<Rule>,
) -> ApiResult<Json<Policy>> {
    let policy = federation(&st)?.put_rule(rule.clone()).await?;
    tracing::info!(pattern = rule.pattern.as_str(), action = ?rule.action, "admin: federation rule set");
    Ok(Json(policy))
}

async fn remove_federation_rule(
    State(st): State<AppState>,
    _: Admin,
    ApiJson(req): ApiJson<api::RemoveRule>,
) -> ApiResult<Json<Policy>> {
    let policy = federation(&st)?.remove_rule(&req.pattern).await?;
    tracing::info!(pattern = req.pattern, "admin: federation rule removed");
    Ok(Json(policy))
}

async fn set_federation_mode(
    State(st): State<AppState>,
    _: Admin,
    ApiJson(req): ApiJson<api::SetMode>,
) -> ApiResult<Json<Policy>> {
    let policy = federation(&st)?.set_mode(req.mode).await?;
    tracing::info!(mode = ?req.mode, "admin: federation mode set");
    Ok(Json(policy))
}

async fn federation_keys(
    State(st): State<AppState>,
    _: Admin,
) -> ApiResult<Json<crate::service::federation::KeyStatus>> {
    Ok(Json(federation(&st)?.key_status()))
}

/// Starts a key rotation: the new key is published now and signs after the grace.
async fn rotate_federation_key(
    State(st): State<AppState>,
    _: Admin,
    ApiJson(req): ApiJson<api::RotateKey>,
) -> ApiResult<Json<crate::service::federation::KeyStatus>> {
    let grace = match req.grace_secs {
        Some(secs) => std::time::Duration::from_secs(secs),
        None => st.services.config.federation.key_rotation_grace(),
    };
    let status = federation(&st)?.rotate_key(grace)?;
    tracing::info!(next = ?status.next, switch_at = ?status.switch_at, "admin: federation key rotation started");
    Ok(Json(status))
}
