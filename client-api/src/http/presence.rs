//! Presence and last seen: a user's privacy setting, and what others may see.
//!
//! Visibility is reciprocal (as on WhatsApp): a viewer sees a user's online state and
//! last seen only if the user's setting lets the viewer see them *and* the viewer's own
//! setting would let the user see the viewer. `contacts` means the people in your
//! contact list ([`super::contacts`]). So a user who hides their last seen (`nobody`) sees no one's. A user always
//! sees their own. Presence of users on other servers is known only to users who share
//! a chat with them.

use serde::{Deserialize, Serialize};

use crate::ids::UserId;

/// Who may see one's online state and last seen.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Visibility {
    /// Any user of this server, and users of other servers who share a chat with you.
    #[default]
    Everyone,
    /// The people in your contact list (of other servers: those who also share a chat
    /// with you).
    Contacts,
    Nobody,
}

impl Visibility {
    pub fn as_str(self) -> &'static str {
        match self {
            Visibility::Everyone => "everyone",
            Visibility::Contacts => "contacts",
            Visibility::Nobody => "nobody",
        }
    }

    /// Whether someone may see a user with this setting (`listed`: they are in the
    /// user's contact list). The reciprocal rule applies it in both directions.
    pub fn allows(self, listed: bool) -> bool {
        match self {
            Visibility::Everyone => true,
            Visibility::Contacts => listed,
            Visibility::Nobody => false,
        }
    }
}

impl std::str::FromStr for Visibility {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "everyone" => Ok(Visibility::Everyone),
            "contacts" => Ok(Visibility::Contacts),
            "nobody" => Ok(Visibility::Nobody),
            other => Err(format!("{other:?}: expected everyone, contacts or nobody")),
        }
    }
}

/// The caller's privacy settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Privacy {
    /// Who sees the caller's online state and last seen.
    pub last_seen: Visibility,
    /// Whether the caller sends read receipts (default `true`). Reciprocal: with
    /// `false` the server relays none of the caller's read receipts and delivers the
    /// caller no one else's (✓✓ delivered still works both ways). A `PUT` without the
    /// field turns them back on.
    #[serde(default = "yes")]
    pub read_receipts: bool,
}

impl Default for Privacy {
    fn default() -> Self {
        Self {
            last_seen: Visibility::default(),
            read_receipts: true,
        }
    }
}

fn yes() -> bool {
    true
}

/// Read the caller's privacy settings.
pub mod get_privacy {
    pub const METHOD: crate::http::Method = crate::http::Method::Get;
    pub const PATH: &str = "/v1/privacy";
    pub type Response = super::Privacy;
}

/// Change the caller's privacy settings; answers the new settings. Takes effect at once,
/// for presence updates and queries alike.
pub mod set_privacy {
    pub const METHOD: crate::http::Method = crate::http::Method::Put;
    pub const PATH: &str = "/v1/privacy";
    pub type Request = super::Privacy;
    pub type Response = super::Privacy;
}

/// A user's presence as the caller may see it.
pub mod get {
    pub const METHOD: crate::http::Method = crate::http::Method::Get;
    pub const PATH: &str = "/v1/presence/{user_id}";
    pub type Response = super::Presence;
}

/// A user's presence. `online` and `last_seen` are absent when the caller may not see
/// them (privacy) or the server does not know them (never seen; a remote user who shares
/// no chat with the caller).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Presence {
    pub user_id: UserId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub online: Option<bool>,
    /// When the user was last online (ms since the Unix epoch); while online, about now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<i64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn visibility_wire_and_rules() {
        assert_eq!(
            serde_json::to_string(&Privacy {
                last_seen: Visibility::Contacts,
                read_receipts: true,
            })
            .unwrap(),
            r#"{"last_seen":"contacts","read_receipts":true}"#
        );
        let p: Privacy = serde_json::from_str(r#"{"last_seen":"nobody"}"#).unwrap();
        assert!(p.read_receipts);
        for v in [
            Visibility::Everyone,
            Visibility::Contacts,
            Visibility::Nobody,
        ] {
            assert_eq!(v.as_str().parse::<Visibility>().unwrap(), v);
        }
        assert!(Visibility::Everyone.allows(false));
        assert!(!Visibility::Contacts.allows(false) && Visibility::Contacts.allows(true));
        assert!(!Visibility::Nobody.allows(true));
    }
}
