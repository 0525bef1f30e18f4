//! Linking a new device (spec/devices.md, DL1–DL6): the rendezvous of the new device and
//! an existing device of the same user. The server relays two sealed messages it cannot
//! read, keyed by a link id the new device chose; a link expires after
//! [`LINK_TTL_SECS`] (by default) and is approved at most once.

use serde::{Deserialize, Serialize};

use crate::ids::DeviceId;
use crate::payload::Payload;

/// How long a link waits for its approval, by default (the server may shorten it).
pub const LINK_TTL_SECS: u64 = 300;
/// Largest sealed request or approval, in bytes.
pub const MAX_LINK_MESSAGE_BYTES: usize = 4096;

/// The new device opens a link: its sealed request under a fresh link id (10 lowercase
/// hex characters). `201 Created` with the expiry; `409 link_used` when the id is taken.
pub mod create {
    use super::*;
    pub const METHOD: crate::http::Method = crate::http::Method::Post;
    pub const PATH: &str = "/v1/devices/links";

    #[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
    #[serde(deny_unknown_fields)]
    #[schemars(rename = "LinksCreateRequest")]
    pub struct Request {
        pub link_id: String,
        pub request: Payload,
    }

    #[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
    #[schemars(rename = "LinksCreateResponse")]
    pub struct Response {
        /// Milliseconds since the Unix epoch.
        pub expires_at: i64,
    }
}

/// Another device of the same user reads a link: the new device's id and its sealed
/// request. `404 unknown_link` (no such link, or another user's), `410 link_expired`,
/// `409 link_used` (approved already), `403 forbidden` for the new device itself.
pub mod get {
    use super::*;
    pub const METHOD: crate::http::Method = crate::http::Method::Get;
    pub const PATH: &str = "/v1/devices/links/{link_id}";

    #[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
    #[schemars(rename = "LinksGetResponse")]
    pub struct Response {
        pub device_id: DeviceId,
        pub request: Payload,
        pub expires_at: i64,
    }
}

/// The existing device approves: its sealed approval, accepted once. `204 No Content`;
/// errors as for [`get`].
pub mod approve {
    use super::*;
    pub const METHOD: crate::http::Method = crate::http::Method::Post;
    pub const PATH: &str = "/v1/devices/links/{link_id}/approval";

    #[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
    #[serde(deny_unknown_fields)]
    #[schemars(rename = "LinksApproveRequest")]
    pub struct Request {
        pub approval: Payload,
    }
}

/// The new device polls its link: the approval once there is one (absent while
/// waiting). Only the device that opened the link; `404 unknown_link` for anyone else,
/// `410 link_expired` once it expired unapproved.
pub mod approval {
    use super::*;
    pub const METHOD: crate::http::Method = crate::http::Method::Get;
    pub const PATH: &str = "/v1/devices/links/{link_id}/approval";

    #[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
    #[schemars(rename = "LinksApprovalResponse")]
    pub struct Response {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub approval: Option<Payload>,
        /// The device that approved.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub approved_by: Option<DeviceId>,
        pub expires_at: i64,
    }
}
