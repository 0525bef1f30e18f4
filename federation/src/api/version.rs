//! `GET /_parley/fed/v1/version`: which federation versions and features a server
//! speaks, so peers can choose before sending.

use serde::{Deserialize, Serialize};

pub const METHOD: super::Method = super::Method::Get;
pub const PATH: &str = "/_parley/fed/v1/version";

/// The versions this crate speaks.
pub const VERSIONS: &[&str] = &["parley-fed-v1"];

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[schemars(rename = "FedVersionResponse")]
pub struct Response {
    /// Supported protocol versions, e.g. `["parley-fed-v1"]`.
    pub versions: Vec<String>,
    /// Optional features, e.g. `"mls-0x0003"`, `"libp2p"`.
    #[serde(default)]
    pub features: Vec<String>,
    /// Implementation name and version, informative only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<Software>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Software {
    pub name: String,
    pub version: String,
}
