//! Accounts and devices: register, log in and out, list and remove devices.
//!
//! Each login creates a device with its own id and access token. Tokens are opaque.

use serde::{Deserialize, Serialize};

use crate::ids::{DeviceId, UserId};

/// Create an account and log its first device in.
pub mod register {
    use super::*;
    pub const METHOD: crate::http::Method = crate::http::Method::Post;
    pub const PATH: &str = "/v1/register";

    #[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
    #[serde(deny_unknown_fields)]
    #[schemars(rename = "AccountsRegisterRequest")]
    pub struct Request {
        /// The localpart: `a-z 0-9 . _ = - /`, 1–64 bytes.
        pub username: String,
        /// At least 8 characters.
        pub password: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub device_name: Option<String>,
    }

    /// `201 Created`.
    pub type Response = super::Session;
}

/// Log a new device in with username and password.
pub mod login {
    use super::*;
    pub const METHOD: crate::http::Method = crate::http::Method::Post;
    pub const PATH: &str = "/v1/login";

    #[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
    #[serde(deny_unknown_fields)]
    #[schemars(rename = "AccountsLoginRequest")]
    pub struct Request {
        /// A localpart or a full user id of this server.
        pub username: String,
        pub password: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub device_name: Option<String>,
    }

    pub type Response = super::Session;
}

/// Log the calling device out: the same as removing it (its token stops working, its
/// inbox is dropped, its socket closes). `204 No Content`.
pub mod logout {
    pub const METHOD: crate::http::Method = crate::http::Method::Post;
    pub const PATH: &str = "/v1/logout";
}

/// List the caller's devices.
pub mod list_devices {
    use super::*;
    pub const METHOD: crate::http::Method = crate::http::Method::Get;
    pub const PATH: &str = "/v1/devices";

    #[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
    #[schemars(rename = "AccountsListDevicesResponse")]
    pub struct Response {
        pub devices: Vec<super::DeviceInfo>,
    }
}

/// Remove one of the caller's devices: revokes its token, drops its inbox and closes its
/// socket. `204 No Content`.
pub mod delete_device {
    pub const METHOD: crate::http::Method = crate::http::Method::Delete;
    pub const PATH: &str = "/v1/devices/{device_id}";
}

/// The result of register or login.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Session {
    pub user_id: UserId,
    pub device_id: DeviceId,
    pub access_token: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct DeviceInfo {
    pub device_id: DeviceId,
    pub display_name: Option<String>,
    /// Milliseconds since the Unix epoch.
    pub created_at: i64,
    /// True for the device making the request.
    pub current: bool,
}
