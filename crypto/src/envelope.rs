//! The plaintext envelope: what an MLS application message carries.
//!
//! JSON (UTF-8), versioned and kind-tagged:
//!
//! ```json
//! {"v":1,"id":"b3JqZ2FuaXNlZC1pZA","sent_at_ms":1767225600000,
//!  "kind":"text","content":{"text":"hello"}}
//! ```
//!
//! - `v`: envelope version, always 1 for this version. A higher version is
//!   rejected with [`EnvelopeError::UnsupportedVersion`] (the client shows a
//!   placeholder).
//! - `id`: the sender-chosen message id ([`MessageId`]: 1–64 characters of
//!   `A-Z a-z 0-9 _ -`; new ids are 16 random bytes in base64url), unique per
//!   sender; replies, reactions, edits and deletions refer to it.
//! - `sent_at_ms`: the sender's clock (milliseconds since the Unix epoch),
//!   informational only; the hub's `seq` orders messages.
//! - `expires_in` (optional): disappearing messages; the receiving device deletes
//!   the message this many seconds after it received it.
//! - `kind` + `content`: one of `text`, `media`, `reply`, `reaction`, `edit`,
//!   `delete`, `timer`, `read_receipts` (see [`Content`]). An unknown `kind` decodes to
//!   [`Content::Unknown`] instead of failing, so older clients show a
//!   placeholder for newer kinds. Unknown fields are ignored.

use serde::{Deserialize, Serialize};

use crate::error::EnvelopeError;
use crate::media::{BlobHash, MediaKey};

/// The envelope version this crate writes and reads.
pub const ENVELOPE_VERSION: u64 = 1;
/// The largest envelope accepted (before MLS padding).
pub const MAX_ENVELOPE_LEN: usize = 64 * 1024;

/// A message id, unique per sender.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct MessageId(String);

impl MessageId {
    /// A fresh random id (16 random bytes, base64url, 22 characters).
    pub fn random() -> Self {
        use base64::Engine as _;
        use chacha20poly1305::aead::{OsRng, rand_core::RngCore};
        let mut bytes = [0u8; 16];
        OsRng.fill_bytes(&mut bytes);
        Self(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
    }

    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<&str> for MessageId {
    type Error = EnvelopeError;
    fn try_from(s: &str) -> Result<Self, EnvelopeError> {
        if s.is_empty()
            || s.len() > 64
            || !s
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(EnvelopeError::Malformed(serde::de::Error::custom(
                "message id must be 1-64 characters of A-Z a-z 0-9 _ -",
            )));
        }
        Ok(Self(s.to_owned()))
    }
}

impl<'de> Deserialize<'de> for MessageId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::try_from(s.as_str()).map_err(|_| {
            serde::de::Error::custom("message id must be 1-64 characters of A-Z a-z 0-9 _ -")
        })
    }
}

/// A reference to an encrypted media blob.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MediaRef {
    /// The blob address: SHA-256 of the ciphertext.
    pub blob: BlobHash,
    /// The server that stores the blob.
    pub server: String,
    /// Plaintext size in bytes (the ciphertext size follows from it:
    /// [`crate::media::ciphertext_len`]).
    pub size: u64,
    /// MIME type of the plaintext.
    pub mime: String,
    /// The blob's key.
    pub key: MediaKey,
    /// The file name (never seen by servers: it travels inside MLS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// An optional preview image, itself encrypted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thumbnail: Option<Thumbnail>,
}

/// A thumbnail: encrypted with its own key, stored as its own blob or inline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Thumbnail {
    /// Stored as a separate blob.
    Blob {
        /// The thumbnail blob's address.
        blob: BlobHash,
        /// The server that stores it.
        server: String,
        /// Plaintext size in bytes.
        size: u64,
        /// MIME type.
        mime: String,
        /// Its key.
        key: MediaKey,
    },
    /// Carried in the message: the media ciphertext (same format as a blob),
    /// base64url.
    Inline {
        /// MIME type.
        mime: String,
        /// Its key.
        key: MediaKey,
        /// The ciphertext.
        #[serde(with = "b64")]
        ciphertext: Vec<u8>,
    },
}

mod b64 {
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&URL_SAFE_NO_PAD.encode(v))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        URL_SAFE_NO_PAD
            .decode(s.as_bytes())
            .map_err(serde::de::Error::custom)
    }
}

/// Add or remove a reaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReactionAction {
    /// Add the emoji.
    Add,
    /// Remove it.
    Remove,
}

/// What a message says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    /// `kind: "text"`.
    Text {
        /// The text.
        text: String,
    },
    /// `kind: "media"`.
    Media {
        /// The attachment.
        media: Box<MediaRef>,
        /// An optional caption.
        caption: Option<String>,
    },
    /// `kind: "reply"`: a text message quoting another message.
    Reply {
        /// The message replied to.
        in_reply_to: MessageId,
        /// The reply text.
        text: String,
    },
    /// `kind: "reaction"`.
    Reaction {
        /// The message reacted to.
        target: MessageId,
        /// The emoji.
        emoji: String,
        /// Add or remove.
        action: ReactionAction,
    },
    /// `kind: "edit"`: replaces the text of an earlier message of the same
    /// sender.
    Edit {
        /// The edited message.
        target: MessageId,
        /// The new text.
        text: String,
    },
    /// `kind: "delete"`: deletes an earlier message of the same sender for
    /// everyone.
    Delete {
        /// The deleted message.
        target: MessageId,
    },
    /// `kind: "timer"`: the chat's disappearing-message timer from now on (seconds;
    /// 0: off). Shown to every member as a chat event.
    Timer {
        /// Seconds, or 0 for off.
        seconds: u32,
    },
    /// `kind: "read_receipts"`: the chat's read-receipt policy from now on (the send
    /// carries the same value in the clear, as the server enforces it).
    ReadReceipts {
        /// False: no member's read receipts in this chat.
        allowed: bool,
    },
    /// A kind this version does not know: show a placeholder.
    Unknown {
        /// The kind as sent.
        kind: String,
    },
}

/// A decrypted message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// The sender-chosen id.
    pub id: MessageId,
    /// The sender's clock, informational.
    pub sent_at_ms: u64,
    /// Disappearing messages: seconds after receipt at which each device deletes it.
    pub expires_in: Option<u32>,
    /// What it says.
    pub content: Content,
}

#[derive(Serialize, Deserialize)]
struct TextBody {
    text: String,
}
#[derive(Serialize, Deserialize)]
struct MediaBody {
    media: Box<MediaRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    caption: Option<String>,
}
#[derive(Serialize, Deserialize)]
struct ReplyBody {
    in_reply_to: MessageId,
    text: String,
}
#[derive(Serialize, Deserialize)]
struct ReactionBody {
    target: MessageId,
    emoji: String,
    action: ReactionAction,
}
#[derive(Serialize, Deserialize)]
struct EditBody {
    target: MessageId,
    text: String,
}
#[derive(Serialize, Deserialize)]
struct DeleteBody {
    target: MessageId,
}
#[derive(Serialize, Deserialize)]
struct TimerBody {
    seconds: u32,
}
#[derive(Serialize, Deserialize)]
struct ReadReceiptsBody {
    allowed: bool,
}

#[derive(Serialize, Deserialize)]
struct Wire {
    v: u64,
    id: MessageId,
    #[serde(default)]
    sent_at_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    expires_in: Option<u32>,
    kind: String,
    #[serde(default)]
    content: serde_json::Value,
}

impl Envelope {
    /// A new envelope with a fresh random id.
    pub fn new(sent_at_ms: u64, content: Content) -> Self {
        Self {
            id: MessageId::random(),
            sent_at_ms,
            expires_in: None,
            content,
        }
    }

    /// Encodes to JSON bytes. `Content::Unknown` cannot be sent.
    pub fn to_bytes(&self) -> Result<Vec<u8>, EnvelopeError> {
        let (kind, content) = match &self.content {
            Content::Text { text } => (
                "text",
                serde_json::to_value(TextBody { text: text.clone() })?,
            ),
            Content::Media { media, caption } => (
                "media",
                serde_json::to_value(MediaBody {
                    media: media.clone(),
                    caption: caption.clone(),
                })?,
            ),
            Content::Reply { in_reply_to, text } => (
                "reply",
                serde_json::to_value(ReplyBody {
                    in_reply_to: in_reply_to.clone(),
                    text: text.clone(),
                })?,
            ),
            Content::Reaction {
                target,
                emoji,
                action,
            } => (
                "reaction",
                serde_json::to_value(ReactionBody {
                    target: target.clone(),
                    emoji: emoji.clone(),
                    action: *action,
                })?,
            ),
            Content::Edit { target, text } => (
                "edit",
                serde_json::to_value(EditBody {
                    target: target.clone(),
                    text: text.clone(),
                })?,
            ),
            Content::Delete { target } => (
                "delete",
                serde_json::to_value(DeleteBody {
                    target: target.clone(),
                })?,
            ),
            Content::Timer { seconds } => (
                "timer",
                serde_json::to_value(TimerBody { seconds: *seconds })?,
            ),
            Content::ReadReceipts { allowed } => (
                "read_receipts",
                serde_json::to_value(ReadReceiptsBody { allowed: *allowed })?,
            ),
            Content::Unknown { .. } => {
                return Err(EnvelopeError::Malformed(serde::ser::Error::custom(
                    "cannot encode an unknown kind",
                )));
            }
        };
        let bytes = serde_json::to_vec(&Wire {
            v: ENVELOPE_VERSION,
            id: self.id.clone(),
            sent_at_ms: self.sent_at_ms,
            expires_in: self.expires_in,
            kind: kind.to_owned(),
            content,
        })?;
        if bytes.len() > MAX_ENVELOPE_LEN {
            return Err(EnvelopeError::TooLarge);
        }
        Ok(bytes)
    }

    /// Decodes JSON bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, EnvelopeError> {
        if bytes.len() > MAX_ENVELOPE_LEN {
            return Err(EnvelopeError::TooLarge);
        }
        // Read the version first so that a v2 envelope with a different
        // shape reports the version, not a parse error.
        #[derive(Deserialize)]
        struct Version {
            v: u64,
        }
        let Version { v } = serde_json::from_slice(bytes)?;
        if v != ENVELOPE_VERSION {
            return Err(EnvelopeError::UnsupportedVersion(v));
        }
        let wire: Wire = serde_json::from_slice(bytes)?;
        let c = wire.content;
        let content = match wire.kind.as_str() {
            "text" => {
                let b: TextBody = serde_json::from_value(c)?;
                Content::Text { text: b.text }
            }
            "media" => {
                let b: MediaBody = serde_json::from_value(c)?;
                Content::Media {
                    media: b.media,
                    caption: b.caption,
                }
            }
            "reply" => {
                let b: ReplyBody = serde_json::from_value(c)?;
                Content::Reply {
                    in_reply_to: b.in_reply_to,
                    text: b.text,
                }
            }
            "reaction" => {
                let b: ReactionBody = serde_json::from_value(c)?;
                Content::Reaction {
                    target: b.target,
                    emoji: b.emoji,
                    action: b.action,
                }
            }
            "edit" => {
                let b: EditBody = serde_json::from_value(c)?;
                Content::Edit {
                    target: b.target,
                    text: b.text,
                }
            }
            "delete" => {
                let b: DeleteBody = serde_json::from_value(c)?;
                Content::Delete { target: b.target }
            }
            "timer" => {
                let b: TimerBody = serde_json::from_value(c)?;
                Content::Timer { seconds: b.seconds }
            }
            "read_receipts" => {
                let b: ReadReceiptsBody = serde_json::from_value(c)?;
                Content::ReadReceipts { allowed: b.allowed }
            }
            other => Content::Unknown {
                kind: other.to_owned(),
            },
        };
        Ok(Self {
            id: wire.id,
            sent_at_ms: wire.sent_at_ms,
            expires_in: wire.expires_in,
            content,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_has_the_documented_shape() {
        let env = Envelope {
            id: MessageId::try_from("abc").unwrap(),
            sent_at_ms: 5,
            expires_in: None,
            content: Content::Text {
                text: "hello".into(),
            },
        };
        let json: serde_json::Value = serde_json::from_slice(&env.to_bytes().unwrap()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"v":1,"id":"abc","sent_at_ms":5,"kind":"text","content":{"text":"hello"}})
        );
    }

    #[test]
    fn timer_and_expiry_round_trip() {
        let mut env = Envelope::new(7, Content::Timer { seconds: 3600 });
        env.expires_in = Some(30);
        let bytes = env.to_bytes().unwrap();
        let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(json["kind"], "timer");
        assert_eq!(json["expires_in"], 30);
        assert_eq!(json["content"]["seconds"], 3600);
        assert_eq!(Envelope::from_bytes(&bytes).unwrap(), env);
        let rr = Envelope::new(7, Content::ReadReceipts { allowed: false });
        assert_eq!(Envelope::from_bytes(&rr.to_bytes().unwrap()).unwrap(), rr);
    }

    #[test]
    fn unknown_kind_becomes_placeholder() {
        let bytes = br#"{"v":1,"id":"x1","kind":"poll","content":{"question":"?"}}"#;
        let env = Envelope::from_bytes(bytes).unwrap();
        assert_eq!(
            env.content,
            Content::Unknown {
                kind: "poll".into()
            }
        );
    }

    #[test]
    fn newer_version_is_reported() {
        let bytes = br#"{"v":2,"whatever":true}"#;
        assert!(matches!(
            Envelope::from_bytes(bytes),
            Err(EnvelopeError::UnsupportedVersion(2))
        ));
    }

    #[test]
    fn bad_message_ids_are_rejected() {
        let bytes = br#"{"v":1,"id":"no spaces","kind":"text","content":{"text":"x"}}"#;
        assert!(Envelope::from_bytes(bytes).is_err());
        assert_eq!(MessageId::random().as_str().len(), 22);
    }
}
