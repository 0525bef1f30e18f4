//! Chats: create, list, leave; send events; history; receipts.

use serde::{Deserialize, Serialize};

use crate::ids::{ChatId, DeviceId, UserId};
use crate::payload::Payload;

/// Create a chat. With one other member it is a 1:1 chat, and asking again for the same
/// pair returns the existing chat (`200`) instead of creating one (`201`).
pub mod create {
    use super::*;
    pub const METHOD: crate::http::Method = crate::http::Method::Post;
    pub const PATH: &str = "/v1/chats";

    #[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
    #[serde(deny_unknown_fields)]
    #[schemars(rename = "ChatsCreateRequest")]
    pub struct Request {
        /// The other members (the caller is added). One other and no name: a 1:1 chat;
        /// otherwise a group, whose creator is its first admin.
        pub members: Vec<UserId>,
        /// A group's name (1–128 characters).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub name: Option<String>,
    }

    pub type Response = super::ChatSummary;
}

/// A chat's members and their roles.
pub mod members {
    use super::*;
    pub const METHOD: crate::http::Method = crate::http::Method::Get;
    pub const PATH: &str = "/v1/chats/{chat_id}/members";

    #[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
    #[schemars(rename = "ChatsMembersResponse")]
    pub struct Response {
        pub chat_id: ChatId,
        /// The chat's current MLS epoch, as the hub has accepted commits.
        pub mls_epoch: u64,
        pub members: Vec<super::Member>,
    }
}

/// Rename a group (admins only). `204 No Content`.
pub mod rename {
    use super::*;
    pub const METHOD: crate::http::Method = crate::http::Method::Post;
    pub const PATH: &str = "/v1/chats/{chat_id}/name";

    #[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
    #[serde(deny_unknown_fields)]
    #[schemars(rename = "ChatsRenameRequest")]
    pub struct Request {
        pub name: String,
    }
}

/// Promote a member to admin or demote an admin (admins only; a group keeps at least
/// one admin). `204 No Content`.
pub mod set_admin {
    use super::*;
    pub const METHOD: crate::http::Method = crate::http::Method::Post;
    pub const PATH: &str = "/v1/chats/{chat_id}/admins";

    #[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
    #[serde(deny_unknown_fields)]
    #[schemars(rename = "ChatsSetAdminRequest")]
    pub struct Request {
        pub user_id: UserId,
        pub admin: bool,
    }
}

/// List the caller's chats, most recently active first.
pub mod list {
    use super::*;
    pub const METHOD: crate::http::Method = crate::http::Method::Get;
    pub const PATH: &str = "/v1/chats";

    #[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
    #[schemars(rename = "ChatsListResponse")]
    pub struct Response {
        pub chats: Vec<super::ChatSummary>,
    }
}

/// Leave a chat: the caller's devices stop receiving its events. `204 No Content`.
pub mod leave {
    pub const METHOD: crate::http::Method = crate::http::Method::Post;
    pub const PATH: &str = "/v1/chats/{chat_id}/leave";
}

/// Send an event. The server assigns the chat's next sequence number, commits, then
/// answers (✓ sent). Resending the same `client_msg_id` from the same device returns the
/// first result with `duplicate: true` and stores nothing.
pub mod send {
    use super::*;
    pub const METHOD: crate::http::Method = crate::http::Method::Post;
    pub const PATH: &str = "/v1/chats/{chat_id}/events";

    #[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
    #[serde(deny_unknown_fields)]
    #[schemars(rename = "ChatsSendRequest")]
    pub struct Request {
        /// Chosen by the client, unique per sending device: 1–128 printable ASCII.
        pub client_msg_id: String,
        pub payload: Payload,
        /// What the payload is in MLS terms, for the hub's epoch checks.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub mls: Option<super::MlsMeta>,
        /// With a commit: the membership change it makes (admins only, except removing
        /// oneself). Applied by the hub when it accepts the commit.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub membership: Option<super::MembershipChange>,
        /// Media blobs the (encrypted) message refers to: members of the chat may then
        /// download them. Each must be one the sender uploaded or may download (received
        /// in one of their chats, also from another server: forwarding works); otherwise
        /// `403 blob_forbidden` (`404 unknown_blob` if the server has no such blob) and
        /// nothing is stored.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        pub blobs: Vec<crate::ids::BlobHash>,
        /// Disappearing messages: the event expires this many seconds after the hub
        /// accepted it ([`super::timer`] bounds; application messages only, else `400
        /// invalid_timer`). Servers drop undelivered copies at expiry.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub expires_in: Option<u32>,
        /// Sets the chat's read-receipt policy (`false`: no read receipts for anyone in
        /// the chat) from this event on. In a group only admins may change it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub read_receipts: Option<bool>,
        /// With an MLS commit only (else `400 invalid_param`): the signed GroupInfo of
        /// the epoch the commit creates (a TLS-encoded `MLSMessage` with the ratchet tree
        /// and the external public key), at most `max_commit_bytes`. When the hub
        /// accepts the commit it keeps this as the chat's GroupInfo, from which a member
        /// user's device rejoins by external commit ([`super::group_info`],
        /// spec/backup.md BK18).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub group_info: Option<Payload>,
    }

    pub type Response = super::SendAck;
}

/// The chat's current MLS GroupInfo, as the last accepted commit published it: what a
/// device of a member user needs to join the group by external commit (a restored
/// device rejoining its chats, spec/backup.md BK19). Any device of a member user may
/// read it; anyone else gets `403 not_member` (`404 unknown_chat` for a chat the server
/// does not know). `404 no_group_info` when the hub holds none for the chat's current
/// epoch. For a chat hosted on another server, the user's server asks the hub.
pub mod group_info {
    use super::*;
    pub const METHOD: crate::http::Method = crate::http::Method::Get;
    pub const PATH: &str = "/v1/chats/{chat_id}/group_info";

    #[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
    #[schemars(rename = "ChatsGroupInfoResponse")]
    pub struct Response {
        pub chat_id: ChatId,
        /// The epoch the GroupInfo is of: the chat's current MLS epoch.
        pub epoch: u64,
        /// The signed GroupInfo (TLS-encoded `MLSMessage`), base64 like every payload.
        pub group_info: Payload,
    }
}

/// Read a chat's stored events after a sequence number (the server keeps events for its
/// retention period only).
pub mod history {
    use super::*;
    pub const METHOD: crate::http::Method = crate::http::Method::Get;
    pub const PATH: &str = "/v1/chats/{chat_id}/events";

    #[derive(Debug, Clone, Default, Serialize, Deserialize, schemars::JsonSchema)]
    #[schemars(rename = "ChatsHistoryQuery")]
    pub struct Query {
        /// Events with `seq > after`. Default 0.
        #[serde(default)]
        pub after: i64,
        /// At most this many (1–500, default 100).
        #[serde(default)]
        pub limit: Option<u32>,
    }

    #[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
    #[schemars(rename = "ChatsHistoryResponse")]
    pub struct Response {
        pub events: Vec<super::ChatEvent>,
    }
}

/// Every member's receipt state in a chat.
pub mod receipts {
    use super::*;
    pub const METHOD: crate::http::Method = crate::http::Method::Get;
    pub const PATH: &str = "/v1/chats/{chat_id}/receipts";

    #[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
    #[schemars(rename = "ChatsReceiptsResponse")]
    pub struct Response {
        pub chat_id: ChatId,
        pub last_seq: i64,
        pub receipts: Vec<super::Receipt>,
    }
}

/// Mark everything up to `seq` read. `204 No Content`.
pub mod mark_read {
    use super::*;
    pub const METHOD: crate::http::Method = crate::http::Method::Post;
    pub const PATH: &str = "/v1/chats/{chat_id}/read";

    #[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
    #[serde(deny_unknown_fields)]
    #[schemars(rename = "ChatsMarkReadRequest")]
    pub struct Request {
        pub seq: i64,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ChatKind {
    Direct,
    Group,
}

/// The MLS message kind of an event and the epoch it was made in.
///
/// The hub accepts exactly one commit per epoch, and every message only in the current
/// epoch: anything made in another epoch is refused with `409 wrong_epoch` (the sender
/// catches up and encrypts it again). So every device a commit adds can read every event
/// sequenced after it, and "delivered to N of M" counts devices that can read the
/// message: an application message from an earlier epoch, sequenced after a commit that
/// added a member, would reach that member's devices unreadable.
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

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Member {
    pub user_id: UserId,
    pub admin: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ChatSummary {
    pub chat_id: ChatId,
    pub kind: ChatKind,
    /// A group's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub members: Vec<UserId>,
    /// The chat's latest sequence number (0: no events yet).
    pub last_seq: i64,
    /// What the caller has marked read.
    pub read_seq: i64,
    /// Events from others after `read_seq`.
    pub unread_count: i64,
    /// Milliseconds since the Unix epoch.
    pub created_at: i64,
}

/// The server's acknowledgement of a send: the event is durably committed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct SendAck {
    pub chat_id: ChatId,
    pub client_msg_id: String,
    pub seq: i64,
    /// Server time of the first acceptance, ms since the Unix epoch.
    pub ts: i64,
    /// True when this answers a resend of an already stored event.
    pub duplicate: bool,
    /// True when the chat's hub is another server that has not answered yet: the send is
    /// stored on this server and forwarded when the hub is reachable; `seq` is 0. The
    /// sending device later gets `sent_late` with the `seq` once the hub orders it, or
    /// `send_failed` if the hub refuses it (WebSocket inbox items, see `ws`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pending: bool,
}

/// One event of a chat, as stored by its hub.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ChatEvent {
    pub chat_id: ChatId,
    pub seq: i64,
    pub sender: UserId,
    pub sender_device: DeviceId,
    pub client_msg_id: String,
    /// Ms since the Unix epoch.
    pub ts: i64,
    pub payload: Payload,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mls: Option<MlsMeta>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub membership: Option<MembershipChange>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub blobs: Vec<crate::ids::BlobHash>,
    /// Seconds after `ts` at which the event expires (disappearing messages).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in: Option<u32>,
    /// The chat's read-receipt policy set by this event, if it sets one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_receipts: Option<bool>,
}

/// Disappearing-message timers (spec/messaging.md MS30–MS38): the values a chat's timer
/// and an event's `expires_in` may take.
pub mod timer {
    /// 24 hours, in seconds.
    pub const DAY: u32 = 24 * 3600;
    /// The presets: 24 h, 7 days, 90 days.
    pub const PRESETS: [u32; 3] = [DAY, 7 * DAY, 90 * DAY];
    /// The shortest custom timer: 5 seconds.
    pub const MIN_SECS: u32 = 5;
    /// The longest: 365 days.
    pub const MAX_SECS: u32 = 365 * DAY;

    /// Whether `secs` is a timer value this version accepts.
    pub fn valid(secs: u32) -> bool {
        (MIN_SECS..=MAX_SECS).contains(&secs)
    }

    /// Parses `off`, `24h`, `7d`, `90d`, or a custom value `<n>s|m|h|d`; `Ok(None)` is off.
    pub fn parse(s: &str) -> Result<Option<u32>, String> {
        let s = s.trim();
        if s == "off" || s == "0" {
            return Ok(None);
        }
        let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
        let mult: u64 = match unit {
            "" | "s" => 1,
            "m" => 60,
            "h" => 3600,
            "d" => u64::from(DAY),
            _ => {
                return Err(format!(
                    "{s:?}: expected off, 24h, 7d, 90d or a number of seconds"
                ));
            }
        };
        let n: u64 = num
            .parse()
            .map_err(|_| format!("{s:?}: expected off, 24h, 7d, 90d or a number of seconds"))?;
        let secs = n.saturating_mul(mult);
        match u32::try_from(secs) {
            Ok(v) if valid(v) => Ok(Some(v)),
            _ => Err(format!(
                "{s:?}: a timer is between {MIN_SECS} seconds and {} days",
                MAX_SECS / DAY
            )),
        }
    }

    /// `24h`, `7d`, `90s`: the shortest exact form.
    pub fn display(secs: u32) -> String {
        if secs.is_multiple_of(DAY) {
            format!("{}d", secs / DAY)
        } else if secs.is_multiple_of(3600) {
            format!("{}h", secs / 3600)
        } else if secs.is_multiple_of(60) {
            format!("{}m", secs / 60)
        } else {
            format!("{secs}s")
        }
    }
}

/// One member's receipts in a chat; `n` covers every event up to `n`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Receipt {
    pub user_id: UserId,
    /// Highest seq one of the member's devices acknowledged (✓✓ delivered).
    pub delivered_seq: i64,
    /// Highest seq the member marked read.
    pub read_seq: i64,
}

/// Validates a client message id: 1–128 bytes of printable ASCII.
pub fn valid_client_msg_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| (0x21..0x7f).contains(&b))
}
