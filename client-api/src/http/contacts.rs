//! The caller's contact list: user ids, local or remote, kept on the caller's homeserver.
//! `contacts` in the privacy settings ([`super::presence::Visibility::Contacts`]) means
//! this list. Rules: `spec/presence.md` (C1–C3).

use serde::{Deserialize, Serialize};

use crate::ids::UserId;

/// The caller's contacts, sorted.
pub mod list {
    pub const METHOD: crate::http::Method = crate::http::Method::Get;
    pub const PATH: &str = "/v1/contacts";
    pub type Response = super::Contacts;
}

/// Add a user to the caller's contacts. `204 No Content`, also when already listed;
/// `404 unknown_user` for a user of this server that does not exist; `400 invalid_param`
/// for oneself; `403 forbidden` when the list holds [`MAX_CONTACTS`] already.
pub mod add {
    pub const METHOD: crate::http::Method = crate::http::Method::Put;
    pub const PATH: &str = "/v1/contacts/{user_id}";
}

/// Remove a user from the caller's contacts. `204 No Content`, also when not listed.
pub mod remove {
    pub const METHOD: crate::http::Method = crate::http::Method::Delete;
    pub const PATH: &str = "/v1/contacts/{user_id}";
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Contacts {
    pub contacts: Vec<UserId>,
}

/// The most contacts one user may keep.
pub const MAX_CONTACTS: usize = 5_000;
