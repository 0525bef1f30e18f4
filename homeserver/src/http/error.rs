//! The one boundary where failures become protocol errors: an HTTP status, a stable
//! machine-readable code and a message. Internal details are logged, never returned.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use parley_client_api::{ErrorBody, ErrorCode};

use crate::service::ServiceError;

#[derive(Debug)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    /// With `wrong_epoch`.
    pub current_epoch: Option<u64>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            current_epoch: None,
        }
    }

    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            current_epoch: self.current_epoch,
            ..ErrorBody::new(self.code, self.message.clone())
        }
    }
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        let code = match &e {
            ServiceError::InvalidParam(_) => ErrorCode::InvalidParam,
            ServiceError::InvalidTimer(_) => ErrorCode::InvalidTimer,
            ServiceError::EmptyReport => ErrorCode::EmptyReport,
            ServiceError::UserExists => ErrorCode::UserExists,
            ServiceError::InvalidCredentials => ErrorCode::InvalidCredentials,
            ServiceError::UnknownToken => ErrorCode::UnknownToken,
            ServiceError::UnknownUser(_) => ErrorCode::UnknownUser,
            ServiceError::UnknownChat => ErrorCode::UnknownChat,
            ServiceError::UnknownDevice => ErrorCode::UnknownDevice,
            ServiceError::UnknownBlob(_) => ErrorCode::UnknownBlob,
            ServiceError::BlobForbidden(_) => ErrorCode::BlobForbidden,
            ServiceError::HashMismatch => ErrorCode::HashMismatch,
            ServiceError::UploadOffset { .. } => ErrorCode::UploadOffset,
            ServiceError::QuotaExceeded { .. } => ErrorCode::QuotaExceeded,
            ServiceError::NotMember => ErrorCode::NotMember,
            ServiceError::UnknownLink => ErrorCode::UnknownLink,
            ServiceError::LinkExpired => ErrorCode::LinkExpired,
            ServiceError::LinkUsed => ErrorCode::LinkUsed,
            ServiceError::NotFound(_) => ErrorCode::NotFound,
            ServiceError::NoGroupInfo(_) => ErrorCode::NoGroupInfo,
            ServiceError::TooLarge { .. } | ServiceError::TooLargeToFederate { .. } => {
                ErrorCode::TooLarge
            }
            ServiceError::Forbidden(_) | ServiceError::FederationDenied(_) => ErrorCode::Forbidden,
            ServiceError::Remote(_) => {
                tracing::warn!(error = %e, "a federation request failed");
                return ApiError::new(ErrorCode::Internal, e.to_string());
            }
            ServiceError::WrongEpoch { current } => {
                return ApiError {
                    current_epoch: Some(*current),
                    ..ApiError::new(ErrorCode::WrongEpoch, e.to_string())
                };
            }
            ServiceError::Unavailable => ErrorCode::RateLimited,
            ServiceError::Store(_) | ServiceError::Internal(_) => {
                tracing::error!(error = %e, "request failed");
                return ApiError::new(
                    ErrorCode::Internal,
                    "internal server error; nothing was changed",
                );
            }
        };
        ApiError::new(code, e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.code.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, Json(self.body())).into_response()
    }
}

/// The same mapping for federation endpoints: a [`ServiceError`] as a protocol error
/// (`{"error", "message"}` with the federation codes).
pub fn fed_error(e: ServiceError) -> parley_federation::ProtocolError {
    use parley_federation::FedErrorCode as C;
    let code = match &e {
        ServiceError::InvalidParam(_) | ServiceError::InvalidTimer(_) => C::InvalidParam,
        ServiceError::UnknownUser(_) => C::UnknownUser,
        ServiceError::UnknownChat => C::UnknownChat,
        ServiceError::UnknownBlob(_) => C::NotFound,
        ServiceError::NotMember => C::NotMember,
        ServiceError::NotFound(_) | ServiceError::NoGroupInfo(_) => C::NotFound,
        ServiceError::FederationDenied(_) | ServiceError::Forbidden(_) => C::FederationDenied,
        ServiceError::TooLarge { .. } | ServiceError::TooLargeToFederate { .. } => C::TooLarge,
        ServiceError::WrongEpoch { .. } => C::WrongEpoch,
        ServiceError::Unavailable => C::RateLimited,
        _ => {
            tracing::error!(error = %e, "federation request failed");
            return parley_federation::ProtocolError::new(
                C::Internal,
                "internal server error; nothing was changed",
            );
        }
    };
    parley_federation::ProtocolError::new(code, e.to_string())
}
