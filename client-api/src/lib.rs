//! The Parley client↔server API (v1), defined once.
//!
//! Every HTTP endpoint is a module under [`http`] with its `METHOD` and `PATH` beside
//! its request and response bodies; the WebSocket frames live in [`ws`]. The homeserver
//! and the SDK both use these types, so the two cannot drift apart.
//!
//! Identifiers ([`UserId`], [`DeviceId`], [`ChatId`], [`ServerName`]) are validated
//! newtypes, built only through `TryFrom<&str>` (and serde, which goes through it).

pub mod error;
pub mod http;
pub mod ids;
pub mod payload;
pub mod ws;

pub use error::{ErrorBody, ErrorCode};
pub use ids::{BlobHash, ChatId, DeviceId, IdError, ServerName, UserId};
pub use payload::Payload;

/// The API version prefix of every client path.
pub const API_PREFIX: &str = "/v1";
