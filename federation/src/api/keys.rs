//! Remote users' devices and MLS KeyPackages, asked of the user's own server.

use serde::{Deserialize, Serialize};

use super::payload::Payload;
use crate::ids::{DeviceId, UserId};

/// Claim one KeyPackage per device of each user (one-time first; the last-resort one
/// when a device has none left, never deleted).
pub mod claim {
    use std::collections::BTreeMap;

    use super::*;

    pub const METHOD: crate::api::Method = crate::api::Method::Post;
    pub const PATH: &str = "/_parley/fed/v1/keys/claim";
    /// Most users in one claim.
    pub const MAX_USERS: usize = 100;

    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
    #[serde(deny_unknown_fields)]
    #[schemars(rename = "FedKeysClaimRequest")]
    pub struct Request {
        /// Users of the receiving server.
        pub users: Vec<UserId>,
    }

    #[derive(
        Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema,
    )]
    #[schemars(rename = "FedKeysClaimResponse")]
    pub struct Response {
        /// Per user, one entry per device that had a KeyPackage; unknown users are left
        /// out.
        pub users: BTreeMap<UserId, Vec<ClaimedKeyPackage>>,
    }
}

/// The devices of a user (ids only).
pub mod user_devices {
    use super::*;

    pub const METHOD: crate::api::Method = crate::api::Method::Get;
    pub const PATH: &str = "/_parley/fed/v1/users/{user_id}/devices";

    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
    #[schemars(rename = "FedKeysUserDevicesResponse")]
    pub struct Response {
        pub user_id: UserId,
        pub devices: Vec<DeviceId>,
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ClaimedKeyPackage {
    pub device_id: DeviceId,
    pub key_package: Payload,
    /// True when the device had no one-time KeyPackage left.
    pub last_resort: bool,
}
