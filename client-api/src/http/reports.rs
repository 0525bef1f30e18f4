//! Reporting abuse to one's own server's admins (`spec/messaging.md`, MS50–MS56).
//!
//! A report names what is reported (a user, a chat, or one message) and carries what the
//! reporter chooses to show: a reason and the decrypted messages they attach. The server
//! cannot read the chat, so what a report says a message said is the reporter's claim:
//! v1 has no message franking (MS53).

use serde::{Deserialize, Serialize};

use crate::ids::{ChatId, UserId};

/// At most this many attached messages per report.
pub const MAX_MESSAGES: usize = 100;
/// The longest reason, in characters.
pub const MAX_REASON_CHARS: usize = 2000;
/// The longest attached message text, in characters.
pub const MAX_TEXT_CHARS: usize = 8192;

/// What a report is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ReportTarget {
    /// A user (local or of another server).
    User { user_id: UserId },
    /// A chat.
    Chat { chat_id: ChatId },
    /// One message of a chat, by its `seq`, and who sent it.
    Message {
        chat_id: ChatId,
        seq: i64,
        sender: UserId,
    },
}

/// A message as the reporter's device decrypted it. The server cannot check it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReportedMessage {
    pub chat_id: ChatId,
    /// The hub's sequence number of the event (absent for an unsent own message).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<i64>,
    pub sender: UserId,
    /// The hub's time of the event (or the sender's clock), ms since the Unix epoch.
    pub ts: i64,
    /// The kind of the message (`text`, `reply`, `media`, …).
    pub kind: String,
    /// What the reporter's device shows for it.
    pub text: String,
}

/// File a report with the caller's own server. At least a reason or one message:
/// otherwise `400 empty_report`. `201 Created`.
pub mod create {
    use super::*;
    pub const METHOD: crate::http::Method = crate::http::Method::Post;
    pub const PATH: &str = "/v1/reports";

    #[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
    #[serde(deny_unknown_fields)]
    #[schemars(rename = "ReportsCreateRequest")]
    pub struct Request {
        pub target: super::ReportTarget,
        /// Why (0–2,000 characters).
        #[serde(default)]
        pub reason: String,
        /// The decrypted messages the reporter attaches (at most 100).
        #[serde(default)]
        pub messages: Vec<super::ReportedMessage>,
    }

    #[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
    #[schemars(rename = "ReportsCreateResponse")]
    pub struct Response {
        pub report_id: i64,
        /// Ms since the Unix epoch.
        pub created_at: i64,
    }
}
