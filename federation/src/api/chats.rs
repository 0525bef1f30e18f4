//! A chat's state that a follower asks of the chat's hub on behalf of one of its users.

use serde::{Deserialize, Serialize};

use super::payload::Payload;
use crate::ids::ChatId;

/// `GET /_parley/fed/v1/chats/{chat_id}/group_info/{user_id}`: the chat's current MLS
/// GroupInfo, for a device of `user_id` (a user of the requesting server) that joins the
/// group by external commit. The hub answers only if the chat is hosted there, `user_id`
/// is on the origin (else `403 forbidden`) and is a current member (else `403
/// not_member`); `404 unknown_chat` for a chat it does not host, `404 not_found` when it
/// holds no GroupInfo of the chat's current epoch.
pub mod group_info {
    use super::*;

    pub const METHOD: crate::api::Method = crate::api::Method::Get;
    pub const PATH: &str = "/_parley/fed/v1/chats/{chat_id}/group_info/{user_id}";

    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
    #[schemars(rename = "FedChatsGroupInfoResponse")]
    pub struct Response {
        pub chat_id: ChatId,
        /// The chat's current MLS epoch, which the GroupInfo is of.
        pub epoch: u64,
        /// The signed GroupInfo (TLS-encoded `MLSMessage`), opaque to servers.
        pub group_info: Payload,
    }
}
