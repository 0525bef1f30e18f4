//! Backup handlers (`/v1/backup`); the rules are in `service::backup`.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use parley_client_api::http::backup;

use super::AppState;
use super::error::ApiError;
use super::extract::{ApiJson, Auth};

pub async fn get(
    State(st): State<AppState>,
    Auth(me): Auth,
) -> Result<Json<backup::get::Response>, ApiError> {
    Ok(Json(st.services.backups.get(&me.user_id).await?))
}

pub async fn put(
    State(st): State<AppState>,
    Auth(me): Auth,
    ApiJson(req): ApiJson<backup::put::Request>,
) -> Result<Json<backup::put::Response>, ApiError> {
    Ok(Json(
        st.services
            .backups
            .put(&me.user_id, &req.blob, req.size, &req.key)
            .await?,
    ))
}

pub async fn delete(State(st): State<AppState>, Auth(me): Auth) -> Result<StatusCode, ApiError> {
    st.services.backups.delete(&me.user_id).await?;
    Ok(StatusCode::NO_CONTENT)
}
