//! The device WebSocket: `GET /v1/ws`, one per device.
//!
//! Authenticate with `Authorization: Bearer <token>` or `?access_token=<token>`. On
//! connect the server sends the device's inbox in order, then [`ServerFrame::Synced`],
//! then live events. Every inbox item carries a stream `id`; the device acknowledges
//! items with [`ClientFrame::Ack`], and only acknowledged items are removed. Items are
//! never sent twice on one connection; after a reconnect, unacknowledged ones come again
//! (clients deduplicate by `(chat_id, seq)`).
//!
//! Frames are JSON text messages tagged by `"type"`.
//!
//! Presence and typing (`spec/presence.md` has the rules):
//! - A device that sends [`ClientFrame::Heartbeat`] (every [`HEARTBEAT_EVERY_MS`]) is
//!   *present*: its user is online while one of their devices is connected and has
//!   heartbeated within the server's timeout (default [`DEFAULT_HEARTBEAT_TIMEOUT_MS`]).
//!   Only connections that heartbeat receive [`ServerFrame::Presence`] updates.
//! - [`ClientFrame::Typing`] `typing: true` is valid for [`TYPING_TTL_MS`]: a client
//!   refreshes it every [`TYPING_REFRESH_MS`] while the user types and sends
//!   `typing: false` when they stop. Recipients drop a [`ServerFrame::Typing`] start
//!   that is not refreshed within [`TYPING_TTL_MS`]; the server also sends
//!   `typing: false` when a start expires. Typing and presence frames carry no inbox id:
//!   they are never stored, never replayed and never acknowledged.

use serde::{Deserialize, Serialize};

use crate::error::ErrorCode;
use crate::http::chats::{ChatEvent, Receipt};
use crate::ids::{ChatId, DeviceId, UserId};
use crate::payload::Payload;

pub const METHOD: crate::http::Method = crate::http::Method::Get;
pub const PATH: &str = "/v1/ws";

/// The largest frame a server accepts from a client, in bytes, beyond the payload limit.
pub const FRAME_OVERHEAD: usize = 4096;
/// The most ids one `ack` frame may carry.
pub const MAX_ACK_IDS: usize = 1024;

/// How long a `typing: true` lasts without a refresh (ms): the client-visible expiry.
pub const TYPING_TTL_MS: i64 = 5_000;
/// How often a client refreshes `typing: true` while its user types (ms).
pub const TYPING_REFRESH_MS: i64 = 3_000;
/// How often a present client sends `heartbeat` (ms).
pub const HEARTBEAT_EVERY_MS: i64 = 20_000;
/// The server's default heartbeat timeout (ms; `[presence] heartbeat_timeout_ms`).
pub const DEFAULT_HEARTBEAT_TIMEOUT_MS: i64 = 60_000;

/// Frames a device sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientFrame {
    /// Send an event; answered by [`ServerFrame::Sent`] or an error with the same
    /// `client_msg_id`. Same semantics as `POST /v1/chats/{chat_id}/events`.
    Send {
        chat_id: ChatId,
        client_msg_id: String,
        payload: Payload,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mls: Option<crate::http::chats::MlsMeta>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        membership: Option<crate::http::chats::MembershipChange>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        blobs: Vec<crate::ids::BlobHash>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expires_in: Option<u32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        read_receipts: Option<bool>,
        /// With a commit: the GroupInfo of the epoch it creates (see the HTTP send).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        group_info: Option<Payload>,
    },
    /// Acknowledge inbox items: they are removed, and delivered receipts go out.
    Ack { ids: Vec<i64> },
    /// Mark everything up to `seq` read.
    Read { chat_id: ChatId, seq: i64 },
    /// Keep-alive; answered by [`ServerFrame::Pong`].
    Ping,
    /// The device is present (the app is in the foreground): keeps its user online and
    /// subscribes this connection to presence updates. Not answered.
    Heartbeat,
    /// The user started (`true`, refresh every [`TYPING_REFRESH_MS`]) or stopped
    /// (`false`) typing in a chat. Relayed to the other members' connected devices.
    Typing { chat_id: ChatId, typing: bool },
}

/// Frames the server sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    /// A chat event for this device (inbox item `id`).
    Event {
        id: i64,
        event: ChatEvent,
    },
    /// A member's receipts changed (inbox item `id`).
    Receipt {
        id: i64,
        chat_id: ChatId,
        #[serde(flatten)]
        receipt: Receipt,
    },
    /// The inbox replay is complete; what follows is live.
    Synced,
    /// A `send` frame was committed (✓ sent).
    Sent {
        #[serde(flatten)]
        ack: crate::http::chats::SendAck,
    },
    /// A send that was answered `pending` (its chat's hub, on another server, did not
    /// answer in time) was ordered by the hub after all: ✓ sent with its `seq`. An inbox
    /// item (`id`): it comes again until acknowledged, also after a reconnect.
    SentLate {
        id: i64,
        #[serde(flatten)]
        ack: crate::http::chats::SendAck,
    },
    /// A send that was answered `pending` was refused by its chat's hub; nothing was
    /// stored. `code`, `message` and `current_epoch` as in [`ServerFrame::Error`]. An
    /// inbox item (`id`).
    SendFailed {
        id: i64,
        chat_id: ChatId,
        client_msg_id: String,
        code: ErrorCode,
        message: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        current_epoch: Option<u64>,
    },
    /// A frame was refused; nothing was changed.
    Error {
        code: ErrorCode,
        message: String,
        /// Set when the refused frame was a `send`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client_msg_id: Option<String>,
        /// Set with `wrong_epoch`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        current_epoch: Option<u64>,
    },
    Pong,
    /// A member of `chat_id` started or stopped typing. A start expires after
    /// [`TYPING_TTL_MS`] without a refresh. `device_id` is absent for users of other
    /// servers.
    Typing {
        chat_id: ChatId,
        user_id: UserId,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        device_id: Option<DeviceId>,
        typing: bool,
    },
    /// Someone who shares a chat with this user went online or offline (sent only to
    /// connections that heartbeat, and only as their privacy settings allow).
    Presence {
        #[serde(flatten)]
        presence: crate::http::presence::Presence,
    },
    /// One of the user's devices was removed (by another device or the admin): the
    /// user's devices take it out of their chats' groups (spec/devices.md DR2). Not an
    /// inbox item; a device that was offline checks when it connects.
    DevicesChanged,
}

impl ClientFrame {
    /// A plain `send` frame (no MLS metadata, membership change or blobs).
    pub fn send(
        chat_id: ChatId,
        client_msg_id: impl Into<String>,
        payload: impl Into<Payload>,
    ) -> Self {
        ClientFrame::Send {
            chat_id,
            client_msg_id: client_msg_id.into(),
            payload: payload.into(),
            mls: None,
            membership: None,
            blobs: Vec::new(),
            expires_in: None,
            read_receipts: None,
            group_info: None,
        }
    }
}

impl ServerFrame {
    /// The inbox id of an item that must be acknowledged.
    pub fn inbox_id(&self) -> Option<i64> {
        match self {
            ServerFrame::Event { id, .. }
            | ServerFrame::Receipt { id, .. }
            | ServerFrame::SentLate { id, .. }
            | ServerFrame::SendFailed { id, .. } => Some(*id),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let f: ClientFrame = serde_json::from_str(
            r#"{"type":"send","chat_id":"!abc:x.org","client_msg_id":"m1","payload":"aGk="}"#,
        )
        .unwrap();
        assert_eq!(
            f,
            ClientFrame::Send {
                chat_id: ChatId::try_from("!abc:x.org").unwrap(),
                client_msg_id: "m1".into(),
                payload: Payload(b"hi".to_vec()),
                mls: None,
                membership: None,
                blobs: vec![],
                expires_in: None,
                read_receipts: None,
                group_info: None,
            }
        );
        assert!(serde_json::from_str::<ClientFrame>(r#"{"type":"nope"}"#).is_err());
        assert!(serde_json::from_str::<ClientFrame>(r#"{"type":"ack","ids":[1],"x":1}"#).is_err());
        let r = ServerFrame::Receipt {
            id: 7,
            chat_id: ChatId::try_from("!abc:x.org").unwrap(),
            receipt: Receipt {
                user_id: "@a:x.org".try_into().unwrap(),
                delivered_seq: 3,
                read_seq: 2,
            },
        };
        let s = serde_json::to_string(&r).unwrap();
        assert_eq!(serde_json::from_str::<ServerFrame>(&s).unwrap(), r);
        assert_eq!(r.inbox_id(), Some(7));
        let f: ServerFrame = serde_json::from_str(
            r#"{"type":"send_failed","id":9,"chat_id":"!abc:x.org","client_msg_id":"m1","code":"not_member","message":"no"}"#,
        )
        .unwrap();
        assert_eq!(f.inbox_id(), Some(9));
        let late: ServerFrame = serde_json::from_str(
            r#"{"type":"sent_late","id":8,"chat_id":"!abc:x.org","client_msg_id":"m1","seq":4,"ts":5,"duplicate":false}"#,
        )
        .unwrap();
        assert!(matches!(late, ServerFrame::SentLate { id: 8, ref ack } if ack.seq == 4));
    }

    #[test]
    fn presence_and_typing_frames() {
        let f: ClientFrame =
            serde_json::from_str(r#"{"type":"typing","chat_id":"!abc:x.org","typing":true}"#)
                .unwrap();
        assert!(matches!(f, ClientFrame::Typing { typing: true, .. }));
        let f: ClientFrame = serde_json::from_str(r#"{"type":"heartbeat"}"#).unwrap();
        assert_eq!(f, ClientFrame::Heartbeat);
        let p = ServerFrame::Presence {
            presence: crate::http::presence::Presence {
                user_id: "@a:x.org".try_into().unwrap(),
                online: Some(true),
                last_seen: Some(5),
            },
        };
        let s = serde_json::to_string(&p).unwrap();
        assert_eq!(
            s,
            r#"{"type":"presence","user_id":"@a:x.org","online":true,"last_seen":5}"#
        );
        assert_eq!(serde_json::from_str::<ServerFrame>(&s).unwrap(), p);
        assert_eq!(p.inbox_id(), None);
    }
}
