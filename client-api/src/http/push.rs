//! Pushers: where the homeserver sends a push notification for a device that has no open
//! WebSocket when an event lands in its inbox. One pusher per device (registering again
//! replaces it). The notification carries the chat id and unread counts, never content;
//! the gateway contract is `spec/push-gateway.md`.

use serde::{Deserialize, Serialize};

use crate::ids::DeviceId;

/// Register (or replace) the calling device's pusher. `200` with the pusher.
pub mod set {
    pub const METHOD: crate::http::Method = crate::http::Method::Post;
    pub const PATH: &str = "/v1/pushers";

    #[derive(
        Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema,
    )]
    #[serde(deny_unknown_fields)]
    #[schemars(rename = "PushSetRequest")]
    pub struct Request {
        /// The push gateway's notify URL (`http(s)://…/_parley/push/v1/notify`); at most
        /// 2,048 bytes.
        pub url: String,
        /// The device's token at the push provider, opaque to the homeserver (1–4,096
        /// bytes).
        pub token: String,
    }

    pub type Response = super::Pusher;
}

/// The caller's pushers, one per device that registered one.
pub mod list {
    pub const METHOD: crate::http::Method = crate::http::Method::Get;
    pub const PATH: &str = "/v1/pushers";

    #[derive(Debug, Clone, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
    #[schemars(rename = "PushListResponse")]
    pub struct Response {
        pub pushers: Vec<super::Pusher>,
    }
}

/// Remove the pusher of one of the caller's devices. `204 No Content`; `404
/// unknown_device` when that device has none.
pub mod delete {
    pub const METHOD: crate::http::Method = crate::http::Method::Delete;
    pub const PATH: &str = "/v1/pushers/{device_id}";
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Pusher {
    pub device_id: DeviceId,
    pub url: String,
    pub token: String,
    /// Ms since the Unix epoch.
    pub created_at: i64,
}

/// The largest gateway URL accepted.
pub const MAX_URL_BYTES: usize = 2048;
/// The largest push token accepted.
pub const MAX_TOKEN_BYTES: usize = 4096;
