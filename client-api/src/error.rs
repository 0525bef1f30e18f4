//! The error body every failed request returns, and the stable error codes.
//!
//! HTTP: status from [`ErrorCode::status`], body [`ErrorBody`].
//! WebSocket: a [`crate::ws::ServerFrame::Error`] frame with the same code.

use serde::{Deserialize, Serialize};

/// Machine-readable error codes. Stable: clients match on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The body or frame is not valid JSON for this endpoint.
    BadJson,
    /// A field is present but its value is invalid (bad id, empty list, …).
    InvalidParam,
    /// No or malformed `Authorization: Bearer` token.
    MissingToken,
    /// The token is unknown or was revoked (logout, device removed).
    UnknownToken,
    /// Wrong username or password.
    InvalidCredentials,
    /// The username is taken.
    UserExists,
    /// The user does not exist.
    UnknownUser,
    /// The chat does not exist, or the caller cannot know it exists.
    UnknownChat,
    /// The device does not exist (or is not the caller's).
    UnknownDevice,
    /// The caller is not a member of the chat.
    NotMember,
    /// The payload or body exceeds the server's limit.
    TooLarge,
    /// The upload would exceed the user's storage quota.
    QuotaExceeded,
    /// No such media blob (or the caller may not see it).
    UnknownBlob,
    /// A send lists a media blob (`blobs`) that the sender neither uploaded nor may
    /// download (it is referred to in no chat the sender is a member of); nothing was
    /// stored.
    BlobForbidden,
    /// The uploaded bytes do not hash to the blob address; nothing was stored.
    HashMismatch,
    /// An upload chunk does not start where the stored bytes end; the body carries
    /// the stored length as `message`, and `GET …/upload` tells it too.
    UploadOffset,
    /// An MLS commit or proposal for another epoch than the chat's current one, or an
    /// application message from too old an epoch. The body carries `current_epoch`:
    /// process the chat's events up to it, then retry.
    WrongEpoch,
    /// The request is not allowed (e.g. a chat with oneself).
    Forbidden,
    /// Too many requests or connections; retry later.
    RateLimited,
    /// No such endpoint.
    NotFound,
    /// Method not allowed on this path.
    MethodNotAllowed,
    /// The server failed; nothing was changed. Retrying is safe.
    Internal,
    /// A disappearing-message timer (`expires_in`) out of bounds, or on an event that
    /// cannot expire (an MLS commit or proposal).
    InvalidTimer,
    /// A report with neither a reason nor an attached message.
    EmptyReport,
    /// No such device link, or another user's (spec/devices.md DL3).
    UnknownLink,
    /// The device link expired before it was approved: start a new one.
    LinkExpired,
    /// The device link was approved already (a link is used once), or its id is taken.
    LinkUsed,
    /// The chat's hub holds no GroupInfo of the chat's current epoch (no accepted commit
    /// published one since): a device cannot join by external commit now; another
    /// device of the user can add it, or a later commit publishes one
    /// (spec/backup.md BK19).
    NoGroupInfo,
}

impl ErrorCode {
    /// The HTTP status that carries this code.
    pub fn status(self) -> u16 {
        match self {
            ErrorCode::BadJson
            | ErrorCode::InvalidParam
            | ErrorCode::InvalidTimer
            | ErrorCode::EmptyReport => 400,
            ErrorCode::MissingToken | ErrorCode::UnknownToken | ErrorCode::InvalidCredentials => {
                401
            }
            ErrorCode::NotMember | ErrorCode::Forbidden | ErrorCode::BlobForbidden => 403,
            ErrorCode::UnknownUser
            | ErrorCode::UnknownChat
            | ErrorCode::UnknownDevice
            | ErrorCode::NotFound => 404,
            ErrorCode::MethodNotAllowed => 405,
            ErrorCode::UserExists | ErrorCode::WrongEpoch | ErrorCode::UploadOffset => 409,
            ErrorCode::QuotaExceeded => 413,
            ErrorCode::UnknownBlob => 404,
            ErrorCode::HashMismatch => 400,
            ErrorCode::TooLarge => 413,
            ErrorCode::RateLimited => 429,
            ErrorCode::Internal => 500,
            ErrorCode::UnknownLink => 404,
            ErrorCode::LinkExpired => 410,
            ErrorCode::LinkUsed => 409,
            ErrorCode::NoGroupInfo => 404,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadJson => "bad_json",
            ErrorCode::InvalidParam => "invalid_param",
            ErrorCode::MissingToken => "missing_token",
            ErrorCode::UnknownToken => "unknown_token",
            ErrorCode::InvalidCredentials => "invalid_credentials",
            ErrorCode::UserExists => "user_exists",
            ErrorCode::UnknownUser => "unknown_user",
            ErrorCode::UnknownChat => "unknown_chat",
            ErrorCode::UnknownDevice => "unknown_device",
            ErrorCode::NotMember => "not_member",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::QuotaExceeded => "quota_exceeded",
            ErrorCode::UnknownBlob => "unknown_blob",
            ErrorCode::BlobForbidden => "blob_forbidden",
            ErrorCode::HashMismatch => "hash_mismatch",
            ErrorCode::UploadOffset => "upload_offset",
            ErrorCode::WrongEpoch => "wrong_epoch",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::NotFound => "not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::Internal => "internal",
            ErrorCode::InvalidTimer => "invalid_timer",
            ErrorCode::EmptyReport => "empty_report",
            ErrorCode::UnknownLink => "unknown_link",
            ErrorCode::LinkExpired => "link_expired",
            ErrorCode::LinkUsed => "link_used",
            ErrorCode::NoGroupInfo => "no_group_info",
        }
    }
}

/// `{"error": "<code>", "message": "<human text>"}`, plus `current_epoch` with
/// `wrong_epoch`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ErrorBody {
    pub error: ErrorCode,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_epoch: Option<u64>,
}

impl ErrorBody {
    pub fn new(error: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            error,
            message: message.into(),
            current_epoch: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn as_str_matches_serde() {
        for code in [
            ErrorCode::BadJson,
            ErrorCode::InvalidParam,
            ErrorCode::MissingToken,
            ErrorCode::UnknownToken,
            ErrorCode::InvalidCredentials,
            ErrorCode::UserExists,
            ErrorCode::UnknownUser,
            ErrorCode::UnknownChat,
            ErrorCode::UnknownDevice,
            ErrorCode::NotMember,
            ErrorCode::TooLarge,
            ErrorCode::QuotaExceeded,
            ErrorCode::UnknownBlob,
            ErrorCode::BlobForbidden,
            ErrorCode::HashMismatch,
            ErrorCode::UploadOffset,
            ErrorCode::WrongEpoch,
            ErrorCode::Forbidden,
            ErrorCode::RateLimited,
            ErrorCode::NotFound,
            ErrorCode::MethodNotAllowed,
            ErrorCode::Internal,
            ErrorCode::InvalidTimer,
            ErrorCode::EmptyReport,
            ErrorCode::UnknownLink,
            ErrorCode::LinkExpired,
            ErrorCode::LinkUsed,
            ErrorCode::NoGroupInfo,
        ] {
            assert_eq!(
                serde_json::to_value(code).unwrap(),
                serde_json::Value::String(code.as_str().into())
            );
        }
    }
}
