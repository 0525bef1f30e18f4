//! What travels in a transaction: sends forwarded to a chat's hub, the hub's sequenced
//! events, receipts, and ephemeral typing/presence.
//!
//! [`FedEvent`] mirrors the client API's `ChatEvent` field by field (same names, same
//! encodings, same optional fields), so the homeserver converts one into the other
//! without touching a value.

use serde::{Deserialize, Serialize};

use super::payload::Payload;
use crate::ids::{ChatId, DeviceId, UserId};

/// The MLS message kind of an event and the epoch it was made in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct MlsMeta {
    pub kind: MlsKind,
    pub epoch: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum MlsKind {
    Commit,
    Proposal,
    Application,
}

/// Members a commit adds and removes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MembershipChange {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub add: Vec<UserId>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<UserId>,
}

/// One event of a chat as its hub sequenced it (hub → followers). Receivers write it
/// into their members' inboxes in `seq` order and dedup on `(chat_id, seq)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct FedEvent {
    pub chat_id: ChatId,
    /// Assigned by the hub: the chat's gap-free order.
    pub seq: i64,
    pub sender: UserId,
    pub sender_device: DeviceId,
    pub client_msg_id: String,
    /// Ms since the Unix epoch, the hub's time of acceptance.
    pub ts: i64,
    pub payload: Payload,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mls: Option<MlsMeta>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub membership: Option<MembershipChange>,
    /// Media blobs the event refers to (SHA-256 hex addresses), stored on the sender's
    /// server: a follower whose users may read them fetches them from there
    /// ([`crate::api::media`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub blobs: Vec<String>,
    /// Disappearing messages: seconds after `ts` at which the event expires. Every
    /// server holding a copy drops it (and its undelivered inbox rows) then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in: Option<u32>,
    /// The chat's read-receipt policy this event sets (`false`: none relayed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_receipts: Option<bool>,
}

/// A chat's state as its hub sees it after event `seq` (hub → followers): sent when the
/// chat is created with members on the receiver and whenever its name, roles or members
/// change outside an MLS commit (rename, promote, leave). Receivers apply it after the
/// events up to `seq` and before later ones.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ChatSnapshot {
    pub chat_id: ChatId,
    pub kind: ChatKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The chat's head when the snapshot was taken.
    pub seq: i64,
    pub mls_epoch: u64,
    pub created_by: UserId,
    pub created_at: i64,
    /// Current members, with their roles.
    pub members: Vec<SnapshotMember>,
    /// The chat's read-receipt policy (`false`: no read receipts relayed in the chat).
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub read_receipts: bool,
}

fn yes() -> bool {
    true
}

fn is_true(b: &bool) -> bool {
    *b
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ChatKind {
    Direct,
    Group,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SnapshotMember {
    pub user_id: UserId,
    #[serde(default)]
    pub admin: bool,
}

/// A local user's send, forwarded by a follower to the chat's hub (follower → hub). The
/// hub answers with the `seq` it assigned (or an error); resending the same
/// `(sender_device, client_msg_id)` returns the first result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct HubSend {
    pub chat_id: ChatId,
    pub sender: UserId,
    pub sender_device: DeviceId,
    pub client_msg_id: String,
    pub payload: Payload,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mls: Option<MlsMeta>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub membership: Option<MembershipChange>,
    /// Media blobs the send refers to, stored on the origin (the sender's server), which
    /// checked that the sender uploaded each or may download it; the hub records the
    /// references without checking again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub blobs: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_receipts: Option<bool>,
    /// With a commit: the GroupInfo of the epoch it creates, which the hub keeps as the
    /// chat's GroupInfo once it accepts the commit ([`crate::api::chats::group_info`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_info: Option<Payload>,
}

/// A local user leaving a chat, forwarded by a follower to the chat's hub (follower →
/// hub). The hub takes the user out of the chat's members (applying it twice changes
/// nothing) and sends the new chat state to the other followers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct HubLeave {
    pub chat_id: ChatId,
    pub user_id: UserId,
}

/// One member's receipts in a chat; a receipt for `n` covers every event up to `n`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct FedReceipt {
    pub chat_id: ChatId,
    pub user_id: UserId,
    /// Highest seq one of the member's devices acknowledged (✓✓ delivered).
    pub delivered_seq: i64,
    /// Highest seq the member marked read.
    pub read_seq: i64,
}

/// Ephemeral events: never stored, never retried, dropped after ~30 s.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Ephemeral {
    Typing {
        chat_id: ChatId,
        user_id: UserId,
        typing: bool,
    },
    Presence {
        user_id: UserId,
        online: bool,
        /// Ms since the Unix epoch; absent when the user hides it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        last_seen: Option<i64>,
        /// The receiver's users who may see it (the user's privacy setting is
        /// `contacts`: those of them in the user's contact list). Absent: anyone the
        /// receiver's rules allow. Empty: no one (the receiver forgets what it knew).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        visible_to: Option<Vec<UserId>>,
    },
}

impl Ephemeral {
    /// The coalescing key in the outbox: a newer event with the same key replaces it.
    pub fn coalesce_key(&self) -> String {
        match self {
            Ephemeral::Typing {
                chat_id, user_id, ..
            } => format!("typing {chat_id} {user_id}"),
            Ephemeral::Presence { user_id, .. } => format!("presence {user_id}"),
        }
    }
}
