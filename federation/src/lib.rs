//! Parley federation: how homeservers talk to each other.
//!
//! Pure cores, clock and randomness passed in:
//! - [`ids`]: validated identifiers (the client API's rules, federation's own types).
//! - [`keys`]: the server signing key, its key id (JWK thumbprint) and PeerId.
//! - [`signing`]: RFC 9421 signatures, profile `parley-fed-v1`: signer and the staged
//!   verifier (parse → tag/alg → components → origin → policy → key → signature →
//!   digest → clock → nonce).
//! - [`directory`]: the key directory (`/.well-known/http-message-signatures-directory`),
//!   built, signed, parsed and verified; the per-origin key cache and its refetch rule.
//! - [`policy`]: allow/deny decisions.
//! - [`outbox`]: the per-destination delivery state machine.
//! - [`api`]: the server↔server wire types, each with its method and path.
//! - [`error`]: protocol errors (status + `{"error", "message"}`), mapped at one place.
//!
//! Thin shells: [`transport::http`] (reqwest signer, axum verifier).

pub mod api;
pub mod directory;
pub mod error;
pub mod ids;
pub mod keys;
pub mod outbox;
pub mod policy;
pub mod signing;
pub mod transport;

pub use error::{ErrorBody, FedErrorCode, ProtocolError};
pub use ids::{ChatId, DeviceId, IdError, ServerName, UserId};
pub use keys::{KeyId, ServerPublicKey, ServerSigningKey};
pub use policy::{Decision, Policy};
pub use signing::profile::{RequestSigner, Verified, VerifyError};

/// The path prefix (and version) of every federation endpoint.
pub const FED_PREFIX: &str = "/_parley/fed/v1";
