//! The caller's block list (`spec/messaging.md`, MS20–MS27).
//!
//! Blocking is enforced by the blocker's homeserver, for local users and for traffic
//! arriving over federation: a blocked user's messages in a 1:1 chat, invitations to a
//! chat, typing and presence no longer reach the blocker; the blocker's presence no
//! longer reaches the blocked user. Nothing tells the blocked user. Unblocking restores
//! delivery of what is sent from then on only.

use serde::{Deserialize, Serialize};

use crate::ids::UserId;

/// One blocked user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Blocked {
    pub user_id: UserId,
    /// Since when (ms since the Unix epoch).
    pub since: i64,
}

/// The caller's block list.
pub mod list {
    pub const METHOD: crate::http::Method = crate::http::Method::Get;
    pub const PATH: &str = "/v1/blocks";

    #[derive(
        Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema,
    )]
    #[schemars(rename = "BlockList")]
    pub struct Response {
        pub blocked: Vec<super::Blocked>,
    }
}

/// Blocks a user (local or remote; the user need not exist). Idempotent: blocking a
/// blocked user changes nothing. Blocking oneself is `400 invalid_param`.
pub mod block {
    pub const METHOD: crate::http::Method = crate::http::Method::Put;
    pub const PATH: &str = "/v1/blocks/{user_id}";
    pub type Response = super::Blocked;
}

/// Unblocks a user: `204`; `404 not_found` if the user is not blocked.
pub mod unblock {
    pub const METHOD: crate::http::Method = crate::http::Method::Delete;
    pub const PATH: &str = "/v1/blocks/{user_id}";
}
