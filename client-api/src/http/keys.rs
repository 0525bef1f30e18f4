//! MLS KeyPackages: devices upload them, others claim them to add the device to a group.
//!
//! The server stores them as opaque bytes (it never parses MLS); claimers validate them.
//! A claim removes one one-time KeyPackage atomically; when a device has none left, the
//! claim returns its last-resort KeyPackage, which is never removed (only replaced).

use serde::{Deserialize, Serialize};

use crate::ids::{DeviceId, UserId};
use crate::payload::Payload;

/// Most KeyPackages in one upload.
pub const MAX_UPLOAD: usize = 100;
/// Most one-time KeyPackages the server keeps per device.
pub const MAX_STORED: usize = 500;
/// Largest KeyPackage, in bytes.
pub const MAX_KEY_PACKAGE_BYTES: usize = 16 * 1024;

/// Upload one-time KeyPackages and/or replace the last-resort one for the calling device.
pub mod upload {
    use super::*;
    pub const METHOD: crate::http::Method = crate::http::Method::Post;
    pub const PATH: &str = "/v1/keys/key_packages";

    #[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
    #[serde(deny_unknown_fields)]
    #[schemars(rename = "KeysUploadRequest")]
    pub struct Request {
        #[serde(default)]
        pub key_packages: Vec<Payload>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub last_resort: Option<Payload>,
    }

    pub type Response = super::KeyPackageCount;
}

/// How many one-time KeyPackages the calling device has left.
pub mod count {
    pub const METHOD: crate::http::Method = crate::http::Method::Get;
    pub const PATH: &str = "/v1/keys/key_packages";
    pub type Response = super::KeyPackageCount;
}

/// Claim one KeyPackage for each device of a user.
pub mod claim {
    use super::*;
    pub const METHOD: crate::http::Method = crate::http::Method::Post;
    pub const PATH: &str = "/v1/keys/claim";

    #[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
    #[serde(deny_unknown_fields)]
    #[schemars(rename = "KeysClaimRequest")]
    pub struct Request {
        pub user_id: UserId,
    }

    #[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
    #[schemars(rename = "KeysClaimResponse")]
    pub struct Response {
        pub user_id: UserId,
        /// One entry per device that has a KeyPackage; devices with none are left out.
        pub devices: Vec<ClaimedKeyPackage>,
    }
}

/// The devices of a user (ids only), so other devices can keep MLS groups in step.
pub mod user_devices {
    use super::*;
    pub const METHOD: crate::http::Method = crate::http::Method::Get;
    pub const PATH: &str = "/v1/users/{user_id}/devices";

    #[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
    #[schemars(rename = "KeysUserDevicesResponse")]
    pub struct Response {
        pub user_id: UserId,
        pub devices: Vec<DeviceId>,
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct KeyPackageCount {
    pub one_time: u32,
    pub has_last_resort: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ClaimedKeyPackage {
    pub device_id: DeviceId,
    pub key_package: Payload,
    /// True when the device had no one-time KeyPackage left.
    pub last_resort: bool,
}
