//! Extractors that turn every malformed request into an [`ApiError`].

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use parley_client_api::ErrorCode;
use serde::de::DeserializeOwned;

use super::AppState;
use super::error::ApiError;
use crate::service::accounts::Session;

/// The authenticated device: `Authorization: Bearer <token>`, or `?access_token=` (for
/// WebSocket clients that cannot set headers).
pub struct Auth(pub Session);

impl FromRequestParts<AppState> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = bearer(parts).ok_or_else(|| {
            ApiError::new(
                ErrorCode::MissingToken,
                "send Authorization: Bearer <access_token>",
            )
        })?;
        Ok(Auth(state.services.accounts.authenticate(&token).await?))
    }
}

fn bearer(parts: &Parts) -> Option<String> {
    if let Some(value) = parts.headers.get(AUTHORIZATION) {
        let value = value.to_str().ok()?;
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))?;
        return Some(token.trim().to_owned()).filter(|t| !t.is_empty());
    }
    let query = parts.uri.query()?;
    query.split('&').find_map(|pair| {
        pair.strip_prefix("access_token=")
            .map(str::to_owned)
            .filter(|t| !t.is_empty())
    })
}

/// JSON body with protocol errors: `bad_json` for syntax, type or content-type
/// problems, `too_large` past the body limit.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(ApiJson(v)),
            Err(JsonRejection::BytesRejection(e)) => {
                Err(ApiError::new(ErrorCode::TooLarge, e.body_text()))
            }
            Err(e) => Err(ApiError::new(ErrorCode::BadJson, e.body_text())),
        }
    }
}

/// Path parameters with protocol errors (`invalid_param`).
pub struct ApiPath<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| ApiPath(p.0))
            .map_err(|e: PathRejection| ApiError::new(ErrorCode::InvalidParam, e.body_text()))
    }
}

/// Query parameters with protocol errors (`invalid_param`).
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| ApiQuery(q.0))
            .map_err(|e: QueryRejection| ApiError::new(ErrorCode::InvalidParam, e.body_text()))
    }
}
