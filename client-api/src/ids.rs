//! Validated identifiers.
//!
//! - [`ServerName`]: a DNS name or IP literal, with an optional port
//!   (`chat.example.org`, `127.0.0.2:8448`, `[::1]:8448`).
//! - [`UserId`]: `@localpart:server` with a lowercase localpart of `a-z 0-9 . _ = - /`.
//! - [`DeviceId`]: 1–64 characters of `A-Z a-z 0-9 _ -`, unique per user.
//! - [`ChatId`]: `!opaque:hub-server`; the server part names the chat's hub.

use std::fmt;

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
    };
}

string_id!(
    /// A homeserver's name: DNS name or IP literal, optional port.
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
string_id!(
    /// A media blob's address: the SHA-256 of its ciphertext, 64 lowercase hex digits.
    BlobHash,
    validate_blob_hash
);

fn validate_blob_hash(s: &str) -> Result<(), IdError> {
    if s.len() != 64 {
        return Err(IdError::Length);
    }
    if let Some(ch) = s.chars().find(|c| !matches!(c, '0'..='9' | 'a'..='f')) {
        return Err(IdError::BadChar {
            kind: "blob hash",
            ch,
        });
    }
    Ok(())
}

const MAX_ID_LEN: usize = 255;

fn validate_server_name(s: &str) -> Result<(), IdError> {
    if s.is_empty() || s.len() > MAX_ID_LEN {
        return Err(IdError::Length);
    }
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let end = rest
            .find(']')
            .ok_or(IdError::ServerName("unterminated IPv6 literal"))?;
        let host = &rest[..end];
        if host.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(IdError::ServerName("bad IPv6 literal"));
        }
        let after = &rest[end + 1..];
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p),
            None if after.is_empty() => None,
            None => return Err(IdError::ServerName("junk after IPv6 literal")),
        };
        return validate_port(port);
    } else {
        match s.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        }
    };
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

/// Checks a localpart as users type it at registration: `a-z 0-9 . _ = - /`, 1–64 bytes.
pub fn validate_localpart(s: &str) -> Result<(), IdError> {
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
    /// Builds `@localpart:server` from a validated server name.
    pub fn new(localpart: &str, server: &ServerName) -> Result<Self, IdError> {
        Self::try_from(format!("@{localpart}:{server}"))
    }

    pub fn localpart(&self) -> &str {
        let rest = &self.0[1..];
        rest.split_once(':').map(|(l, _)| l).unwrap_or(rest)
    }

    pub fn server_name(&self) -> &str {
        self.0.split_once(':').map(|(_, s)| s).unwrap_or("")
    }
}

impl ChatId {
    /// Builds `!opaque:hub` from a validated server name.
    pub fn new(opaque: &str, hub: &ServerName) -> Result<Self, IdError> {
        Self::try_from(format!("!{opaque}:{hub}"))
    }

    /// The chat's hub: the server that orders its events.
    pub fn hub(&self) -> &str {
        self.0.split_once(':').map(|(_, s)| s).unwrap_or("")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_valid_ids() {
        for s in [
            "chat.example.org",
            "127.0.0.2:8448",
            "[::1]:8448",
            "localhost",
        ] {
            ServerName::try_from(s).unwrap();
        }
        let u = UserId::try_from("@alice:chat.example.org").unwrap();
        assert_eq!(u.localpart(), "alice");
        assert_eq!(u.server_name(), "chat.example.org");
        let u = UserId::try_from("@bob:127.0.0.2:8448").unwrap();
        assert_eq!(u.server_name(), "127.0.0.2:8448");
        let c = ChatId::try_from("!Abc_12-x:127.0.0.1:9000").unwrap();
        assert_eq!(c.hub(), "127.0.0.1:9000");
        DeviceId::try_from("ABCDEF123").unwrap();
    }

    #[test]
    fn rejects_invalid_ids() {
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
        for s in [
            "alice:x.org",
            "@Alice:x.org",
            "@alice",
            "@:x.org",
            "@al ice:x.org",
        ] {
            assert!(UserId::try_from(s).is_err(), "{s}");
        }
        for s in ["", "a b", "x/y", &"A".repeat(65)] {
            assert!(DeviceId::try_from(s).is_err(), "{s}");
        }
        for s in ["abc:x.org", "!:x.org", "!a$b:x.org", "!abc"] {
            assert!(ChatId::try_from(s).is_err(), "{s}");
        }
    }

    #[test]
    fn serde_validates() {
        let ok: UserId = serde_json::from_str("\"@a:b.org\"").unwrap();
        assert_eq!(ok.as_str(), "@a:b.org");
        assert!(serde_json::from_str::<UserId>("\"nope\"").is_err());
    }
}
