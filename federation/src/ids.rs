//! Validated identifiers, as they travel between servers.
//!
//! The rules are the client API's (the homeserver converts with `TryFrom<&str>` on either
//! side); federation keeps its own copies because it may depend on no other Parley crate.
//!
//! - [`ServerName`]: a DNS name or IP literal with an optional port (`chat.example.org`,
//!   `127.0.0.2:8448`, `[::1]:8448`).
//! - [`UserId`]: `@localpart:server`, localpart of `a-z 0-9 . _ = - /`.
//! - [`DeviceId`]: 1–64 characters of `A-Z a-z 0-9 _ -`.
//! - [`ChatId`]: `!opaque:hub-server`; the server part names the chat's hub.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};

use serde::{Deserialize, Deserializer, Serialize};

/// Why a string is not a valid identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("identifier is empty or longer than 255 bytes")]
    Length,
    #[error("{kind} must start with '{sigil}'")]
    Sigil { kind: &'static str, sigil: char },
    #[error("{kind} needs a ':server' part")]
    MissingServer { kind: &'static str },
    #[error("invalid character {ch:?} in {kind}")]
    BadChar { kind: &'static str, ch: char },
    #[error("invalid server name: {0}")]
    ServerName(&'static str),
}

macro_rules! string_id {
    ($(#[$m:meta])* $name:ident, $validate:path) => {
        $(#[$m])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<&str> for $name {
            type Error = IdError;
            fn try_from(s: &str) -> Result<Self, IdError> {
                $validate(s)?;
                Ok(Self(s.to_owned()))
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(s: String) -> Result<Self, IdError> {
                $validate(&s)?;
                Ok(Self(s))
            }
        }

        impl std::str::FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::try_from(s)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::try_from(s).map_err(serde::de::Error::custom)
            }
        }

        impl schemars::JsonSchema for $name {
            fn schema_name() -> std::borrow::Cow<'static, str> {
                stringify!($name).into()
            }
            fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
                schemars::json_schema!({
                    "type": "string",
                    "description": concat!("A validated ", stringify!($name), " (spec/v1/client-api.md, Conventions).")
                })
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }
    };
}

string_id!(
    /// A homeserver's name: DNS name or IP literal, optional port. It is also the
    /// `@authority` of every federation request sent to that server.
    ServerName,
    validate_server_name
);
string_id!(
    /// `@localpart:server`.
    UserId,
    validate_user_id
);
string_id!(
    /// A device of a user.
    DeviceId,
    validate_device_id
);
string_id!(
    /// `!opaque:hub-server`.
    ChatId,
    validate_chat_id
);

const MAX_ID_LEN: usize = 255;

impl ServerName {
    /// The host part, without port; an IPv6 literal keeps its brackets.
    pub fn host(&self) -> &str {
        split_host_port(&self.0).0
    }

    /// The explicit port, if any.
    pub fn port(&self) -> Option<u16> {
        split_host_port(&self.0).1.and_then(|p| p.parse().ok())
    }

    /// The host as an IP address, when it is an IP literal (`127.0.0.2`, `[::1]`).
    pub fn ip(&self) -> Option<IpAddr> {
        let host = self.host();
        if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            return inner.parse::<Ipv6Addr>().ok().map(IpAddr::V6);
        }
        host.parse::<IpAddr>().ok()
    }

    /// True when the host is an IP literal rather than a DNS name.
    pub fn is_ip_literal(&self) -> bool {
        self.ip().is_some()
    }
}

fn split_host_port(s: &str) -> (&str, Option<&str>) {
    if s.starts_with('[') {
        match s.find(']') {
            Some(end) => {
                let port = s[end + 1..].strip_prefix(':');
                (&s[..=end], port)
            }
            None => (s, None),
        }
    } else {
        match s.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        }
    }
}

fn validate_server_name(s: &str) -> Result<(), IdError> {
    if s.is_empty() || s.len() > MAX_ID_LEN {
        return Err(IdError::Length);
    }
    if let Some(rest) = s.strip_prefix('[') {
        let end = rest
            .find(']')
            .ok_or(IdError::ServerName("unterminated IPv6 literal"))?;
        if rest[..end].parse::<Ipv6Addr>().is_err() {
            return Err(IdError::ServerName("bad IPv6 literal"));
        }
        let after = &rest[end + 1..];
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p),
            None if after.is_empty() => None,
            None => return Err(IdError::ServerName("junk after IPv6 literal")),
        };
        return validate_port(port);
    }
    let (host, port) = split_host_port(s);
    validate_port(port)?;
    if host.is_empty() {
        return Err(IdError::ServerName("empty host"));
    }
    for label in host.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(IdError::ServerName("bad DNS label"));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(IdError::ServerName("DNS label starts or ends with '-'"));
        }
        if let Some(ch) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-'))
        {
            return Err(IdError::BadChar {
                kind: "server name",
                ch,
            });
        }
    }
    Ok(())
}

fn validate_port(port: Option<&str>) -> Result<(), IdError> {
    match port {
        None => Ok(()),
        Some(p) if !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()) => {
            match p.parse::<u16>() {
                Ok(n) if n > 0 => Ok(()),
                _ => Err(IdError::ServerName("port out of range")),
            }
        }
        Some(_) => Err(IdError::ServerName("bad port")),
    }
}

fn validate_localpart(s: &str) -> Result<(), IdError> {
    if s.is_empty() || s.len() > 64 {
        return Err(IdError::Length);
    }
    if let Some(ch) = s.chars().find(|c| {
        !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '=' | '-' | '/'))
    }) {
        return Err(IdError::BadChar {
            kind: "username",
            ch,
        });
    }
    Ok(())
}

fn split_sigil<'a>(
    s: &'a str,
    kind: &'static str,
    sigil: char,
) -> Result<(&'a str, &'a str), IdError> {
    if s.is_empty() || s.len() > MAX_ID_LEN {
        return Err(IdError::Length);
    }
    let rest = s
        .strip_prefix(sigil)
        .ok_or(IdError::Sigil { kind, sigil })?;
    rest.split_once(':').ok_or(IdError::MissingServer { kind })
}

fn validate_user_id(s: &str) -> Result<(), IdError> {
    let (local, server) = split_sigil(s, "user id", '@')?;
    validate_localpart(local)?;
    validate_server_name(server)
}

fn validate_chat_id(s: &str) -> Result<(), IdError> {
    let (opaque, server) = split_sigil(s, "chat id", '!')?;
    if opaque.is_empty() || opaque.len() > 64 {
        return Err(IdError::Length);
    }
    if let Some(ch) = opaque
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
    {
        return Err(IdError::BadChar {
            kind: "chat id",
            ch,
        });
    }
    validate_server_name(server)
}

fn validate_device_id(s: &str) -> Result<(), IdError> {
    if s.is_empty() || s.len() > 64 {
        return Err(IdError::Length);
    }
    if let Some(ch) = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
    {
        return Err(IdError::BadChar {
            kind: "device id",
            ch,
        });
    }
    Ok(())
}

impl UserId {
    pub fn localpart(&self) -> &str {
        let rest = &self.0[1..];
        rest.split_once(':').map(|(l, _)| l).unwrap_or(rest)
    }

    /// The user's homeserver.
    pub fn server_name(&self) -> ServerName {
        let s = self.0.split_once(':').map(|(_, s)| s).unwrap_or("");
        // Validated on construction.
        ServerName(s.to_owned())
    }
}

impl ChatId {
    /// The chat's hub: the server that orders its events.
    pub fn hub(&self) -> ServerName {
        let s = self.0.split_once(':').map(|(_, s)| s).unwrap_or("");
        ServerName(s.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names() {
        for s in [
            "chat.example.org",
            "127.0.0.2:8448",
            "[::1]:8448",
            "localhost",
        ] {
            ServerName::try_from(s).unwrap();
        }
        for s in [
            "",
            "a..b",
            "-a.org",
            "host:0",
            "host:99999",
            "host:",
            "[::1",
            "a b",
        ] {
            assert!(ServerName::try_from(s).is_err(), "{s}");
        }
        let n = ServerName::try_from("127.0.0.2:8448").unwrap();
        assert_eq!((n.host(), n.port()), ("127.0.0.2", Some(8448)));
        assert!(n.is_ip_literal());
        let n = ServerName::try_from("[::1]:8448").unwrap();
        assert_eq!((n.host(), n.port()), ("[::1]", Some(8448)));
        assert!(n.is_ip_literal());
        let n = ServerName::try_from("chat.example.org").unwrap();
        assert_eq!((n.host(), n.port()), ("chat.example.org", None));
        assert!(!n.is_ip_literal());
    }

    #[test]
    fn user_and_chat_ids() {
        let u = UserId::try_from("@bob:127.0.0.2:8448").unwrap();
        assert_eq!(u.localpart(), "bob");
        assert_eq!(u.server_name().as_str(), "127.0.0.2:8448");
        let c = ChatId::try_from("!Abc_12-x:hub.example.org").unwrap();
        assert_eq!(c.hub().as_str(), "hub.example.org");
        for s in ["alice:x.org", "@Alice:x.org", "@alice", "@:x.org"] {
            assert!(UserId::try_from(s).is_err(), "{s}");
        }
        assert!(serde_json::from_str::<ChatId>("\"!a$b:x.org\"").is_err());
        assert!(DeviceId::try_from("x/y").is_err());
    }
}
