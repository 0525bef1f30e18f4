//! RFC 9421 HTTP Message Signatures: the generic machinery ([`rfc9421`]), content
//! digests ([`digest`]), the replay cache ([`nonce`]) and Parley's profile
//! ([`profile`], `parley-fed-v1`).

pub mod digest;
pub mod nonce;
pub mod profile;
pub mod rfc9421;

use crate::keys::ServerPublicKey;
use rfc9421::{BaseError, Message, SignatureEntry};

/// Why a signature failed generic (profile-free) verification.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GenericVerifyError {
    #[error(transparent)]
    Base(#[from] BaseError),
    #[error("signature does not verify")]
    BadSignature,
}

/// Verifies one signature over `message` with an Ed25519 key, whatever it covers: plain
/// RFC 9421, no profile rule (no tag, clock or nonce check). Returns the signature base.
pub fn verify_ed25519(
    entry: &SignatureEntry,
    message: Message<'_>,
    key: &ServerPublicKey,
) -> Result<String, GenericVerifyError> {
    let base = entry.input.signature_base(message)?;
    key.verify(base.as_bytes(), &entry.signature)
        .map_err(|_| GenericVerifyError::BadSignature)?;
    Ok(base)
}
