//! The push gateway contract (`spec/push-gateway.md`), defined once: the homeserver sends
//! it, `parley-push-gateway` receives it.

use parley_client_api::ChatId;
use serde::{Deserialize, Serialize};

/// `POST <pusher url>` (the gateway's notify endpoint; the reference gateway serves it
/// at [`PATH`]).
pub const PATH: &str = "/_parley/push/v1/notify";

/// The request body. It never carries message content, sender or keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub notification: Notification,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notification {
    /// The chat of the newest event this notification covers (several events, of
    /// several chats, may be coalesced into one notification).
    pub chat_id: ChatId,
    pub counts: Counts,
    /// The device's token at the push provider, as the device registered it.
    pub token: String,
}

/// Unread counts of the device's user when the notification was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Events from others after the user's read marker, over all chats.
    pub unread: i64,
    /// The same, in `chat_id`.
    pub chat_unread: i64,
}

/// A `2xx` answer's body (optional): tokens the provider no longer knows. The homeserver
/// removes the pusher of a rejected token.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    #[serde(default)]
    pub rejected: Vec<String>,
}
