//! Contact list handlers (`/v1/contacts`).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use parley_client_api::UserId;
use parley_client_api::http::contacts::{self, Contacts};

use super::AppState;
use super::error::ApiError;
use super::extract::{ApiPath, Auth};

pub async fn list(
    State(st): State<AppState>,
    Auth(me): Auth,
) -> Result<Json<contacts::list::Response>, ApiError> {
    let contacts = st.services.contacts.list(&me.user_id).await?;
    Ok(Json(Contacts { contacts }))
}

pub async fn add(
    State(st): State<AppState>,
    Auth(me): Auth,
    ApiPath(user_id): ApiPath<UserId>,
) -> Result<StatusCode, ApiError> {
    st.services.contacts.add(&me.user_id, &user_id).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn remove(
    State(st): State<AppState>,
    Auth(me): Auth,
    ApiPath(user_id): ApiPath<UserId>,
) -> Result<StatusCode, ApiError> {
    st.services.contacts.remove(&me.user_id, &user_id).await?;
    Ok(StatusCode::NO_CONTENT)
}
