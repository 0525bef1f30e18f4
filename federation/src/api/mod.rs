//! The server↔server API (`/_parley/fed/v1`), defined once: one module per endpoint with
//! its `METHOD`, `PATH`, request and response. Every request is signed (profile
//! parley-fed-v1); refusals carry [`crate::ErrorBody`].
//!
//! Paths use axum's `{param}` syntax; [`fill`] substitutes parameters for senders.

pub mod chats;
pub mod events;
pub mod keys;
pub mod media;
pub mod payload;
pub mod send;
pub mod version;

pub use events::{
    ChatKind, ChatSnapshot, Ephemeral, FedEvent, FedReceipt, HubLeave, HubSend, MembershipChange,
    MlsKind, MlsMeta, SnapshotMember,
};
pub use payload::Payload;

/// An HTTP method, as the endpoints name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
    Put,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Put => "PUT",
        }
    }
}

/// Replaces each `{name}` in `path` by its value, percent-encoding what a path segment
/// cannot hold (`/`, `?`, `#`, `%`, space, non-ASCII).
pub fn fill(path: &str, params: &[(&str, &str)]) -> String {
    let mut out = path.to_owned();
    for (name, value) in params {
        out = out.replace(&format!("{{{name}}}"), &encode_segment(value));
    }
    out
}

fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn fill_encodes() {
        assert_eq!(
            super::fill(
                super::keys::user_devices::PATH,
                &[("user_id", "@bob:b.org:8448")]
            ),
            "/_parley/fed/v1/users/@bob:b.org:8448/devices"
        );
        assert_eq!(super::fill("/x/{a}", &[("a", "a/b c")]), "/x/a%2Fb%20c");
    }
}
