//! Parley's client-side end-to-end encryption.
//!
//! Pure, synchronous state machines over bytes: no I/O, no async runtime, no
//! threads. Any client (the Rust SDK, the CLI, a mobile binding) drives it.
//!
//! - [`identity`]: user and device ids, the device's ed25519 identity key,
//!   the MLS credential that binds them, safety numbers.
//! - [`group`]: MLS (RFC 9420) groups through openmls with ciphersuite 0x0003:
//!   KeyPackages, create / join / add / remove / leave / update, pending
//!   Commits that are merged only after the hub accepted them, application
//!   messages.
//! - [`provider`]: the openmls provider over a caller-supplied store, and the
//!   crash-safety contract.
//! - [`envelope`]: the versioned plaintext schema carried inside MLS
//!   application messages (text, media, reply, reaction, edit, delete).
//! - [`media`]: chunked ChaCha20-Poly1305 STREAM encryption of attachments with
//!   padding, addressed by the SHA-256 of the ciphertext.
//! - [`archive`]: history archives (backups, transfers to a linked device): the media
//!   format under a fresh content key, sealed under a long-lived key.
//! - [`recovery`]: backup keys: the recovery key's encoding (64 characters with a
//!   checksum) and the Argon2id passphrase mode.
//! - [`link`]: the link code and the sealed request and approval that link
//!   a new device to an existing one.
//!
//! Secrets zeroize on drop and print as `***`.

pub mod archive;
pub mod envelope;
pub mod error;
pub mod group;
pub mod identity;
pub mod link;
pub mod media;
pub mod provider;
pub mod recovery;

pub use error::{
    CommitError, EncryptError, EnvelopeError, IdentityError, JoinError, KeyPackageError,
    MediaError, ProcessError, StoreError,
};
pub use group::{
    CIPHERSUITE, CommitSummary, Group, KeyPackageBatch, MAX_PAST_EPOCHS, MemberInfo, PendingCommit,
    Received, ValidatedKeyPackage, generate_key_packages, validate_key_package,
};
pub use identity::{
    DeviceId, DeviceIdentity, DevicePublicIdentity, SafetyNumber, UserId, safety_number,
    user_safety_number, verify_qr_payload,
};

pub use archive::{ArchiveError, ArchiveKey};
pub use envelope::{Content, Envelope, MediaRef, MessageId, ReactionAction, Thumbnail};
pub use media::{BlobHash, EncryptedMedia, MediaKey};
pub use provider::Provider;
pub use recovery::{PassphraseError, PassphraseParams, RecoveryKey, RecoveryKeyError};

/// Re-exported so callers can name storage bounds without depending on
/// `openmls_traits` directly.
pub use openmls_traits::storage::{CURRENT_VERSION, StorageProvider};
