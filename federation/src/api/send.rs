//! `PUT /_parley/fed/v1/send/{txn_id}`: one transaction from the origin's outbox.
//!
//! The receiver dedups on `(origin, txn_id)`: a transaction it already committed is
//! answered again with its first response and applied once. It answers only after its
//! commit. The origin is the verified signer; the `origin` field must equal it.

use serde::{Deserialize, Serialize};

use super::events::{ChatSnapshot, Ephemeral, FedEvent, FedReceipt, HubLeave, HubSend};
use crate::error::FedErrorCode;
use crate::ids::ServerName;

pub const METHOD: super::Method = super::Method::Put;
pub const PATH: &str = "/_parley/fed/v1/send/{txn_id}";

/// Most durable entries (`sends` + `events` + `receipts`) in one transaction.
pub const MAX_ENTRIES: usize = 50;
/// Most ephemeral events in one transaction.
pub const MAX_EPHEMERAL: usize = 50;
/// Most bytes of entries a sender puts in one transaction (the outbox cuts batches there).
pub const MAX_BATCH_BYTES: usize = 1024 * 1024;
/// Largest body a receiver accepts ([`MAX_BATCH_BYTES`] of entries plus JSON overhead).
pub const MAX_BODY_BYTES: usize = MAX_BATCH_BYTES + 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(rename = "FedSendRequest")]
pub struct Request {
    pub origin: ServerName,
    /// The origin's clock when it formed the transaction (ms).
    pub origin_ts: i64,
    /// Follower → hub: local users' sends for chats the receiver hosts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sends: Vec<HubSend>,
    /// Hub → follower: chat states (creation, name, roles, members), each applied after
    /// the events up to its `seq`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub chats: Vec<ChatSnapshot>,
    /// Hub → follower: sequenced events of chats the sender hosts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<FedEvent>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub receipts: Vec<FedReceipt>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ephemeral: Vec<Ephemeral>,
    /// Follower → hub: local users leaving chats the receiver hosts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub leaves: Vec<HubLeave>,
}

impl Request {
    /// Durable entries, for the [`MAX_ENTRIES`] limit.
    pub fn entries(&self) -> usize {
        self.sends.len()
            + self.chats.len()
            + self.events.len()
            + self.receipts.len()
            + self.leaves.len()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[schemars(rename = "FedSendResponse")]
pub struct Response {
    /// One result per `sends` entry, in order.
    #[serde(default)]
    pub sends: Vec<SendResult>,
    /// One result per `events` entry, in order.
    #[serde(default)]
    pub events: Vec<EventResult>,
}

/// The hub's answer to one forwarded send: its `seq`, or why not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(untagged)]
pub enum SendResult {
    Accepted {
        seq: i64,
        /// The hub's time of first acceptance (ms).
        ts: i64,
        /// True when this answers a resend of an already sequenced event.
        #[serde(default)]
        duplicate: bool,
    },
    Rejected(EntryError),
}

/// A follower's answer to one sequenced event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(untagged)]
pub enum EventResult {
    /// Stored (or already stored: dedup on `(chat_id, seq)`).
    Stored {
        seq: i64,
    },
    Rejected(EntryError),
}

/// Why one entry of a transaction was refused (the transaction itself succeeded).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct EntryError {
    pub error: FedErrorCode,
    pub message: String,
    /// With `wrong_epoch`: the chat's current epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_epoch: Option<u64>,
}
