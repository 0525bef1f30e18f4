//! Typed errors, one enum per operation family.
//!
//! Every enum has an `Internal` variant for conditions that indicate a bug in
//! this crate or in openmls ("can't happen"), in the spirit of openmls's
//! `LibraryError`. Storage failures carry the storage provider's message as a
//! string so that the enums stay independent of the provider type; the message
//! never contains key material (openmls storage errors describe the failed
//! operation, not the data).

use thiserror::Error;

/// Errors about identifiers, device identities and credentials.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum IdentityError {
    /// The user id is not `@localpart:server`.
    #[error("invalid user id: {0}")]
    InvalidUserId(&'static str),
    /// The device id is not 1–64 characters of `A-Z a-z 0-9 _ -`.
    #[error("invalid device id: {0}")]
    InvalidDeviceId(&'static str),
    /// The bytes are not a valid ed25519 key.
    #[error("invalid ed25519 key")]
    InvalidKey,
    /// A serialized public identity (credential identity) could not be parsed.
    #[error("malformed public identity: {0}")]
    Malformed(&'static str),
    /// The credential is not a Parley basic credential, or it names another
    /// signature key than the leaf or key package carrying it.
    #[error("credential does not bind the signature key it is used with")]
    CredentialKeyMismatch,
    /// The storage provider failed.
    #[error("storage error: {0}")]
    Storage(String),
}

/// Errors while generating or validating KeyPackages.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum KeyPackageError {
    /// The bytes are not a TLS-encoded `MLSMessage` carrying a KeyPackage.
    #[error("malformed key package")]
    Malformed,
    /// The KeyPackage signature, lifetime or structure is invalid.
    #[error("invalid key package: {0}")]
    Invalid(String),
    /// The KeyPackage uses another ciphersuite than Parley's (0x0003).
    #[error("unsupported ciphersuite {0:#06x}")]
    UnsupportedCiphersuite(u16),
    /// The credential does not bind the KeyPackage's signature key.
    #[error(transparent)]
    Credential(#[from] IdentityError),
    /// The storage provider failed.
    #[error("storage error: {0}")]
    Storage(String),
    /// A bug.
    #[error("internal error: {0}")]
    Internal(String),
}

/// Errors while creating, loading or joining a group.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum JoinError {
    /// The bytes are not a TLS-encoded `MLSMessage` carrying a Welcome.
    #[error("malformed welcome")]
    Malformed,
    /// None of our stored KeyPackages is addressed by this Welcome (already
    /// used, deleted, or the Welcome is for another device).
    #[error("no matching key package for this welcome")]
    NoMatchingKeyPackage,
    /// The Welcome uses another ciphersuite than Parley's (0x0003).
    #[error("unsupported ciphersuite {0:#06x}")]
    UnsupportedCiphersuite(u16),
    /// The Welcome or the group state it describes is invalid.
    #[error("invalid welcome: {0}")]
    Invalid(String),
    /// A member's credential does not bind its signature key.
    #[error(transparent)]
    Credential(#[from] IdentityError),
    /// A group with this id already exists in the store.
    #[error("group already exists")]
    AlreadyExists,
    /// The storage provider failed.
    #[error("storage error: {0}")]
    Storage(String),
    /// A bug.
    #[error("internal error: {0}")]
    Internal(String),
}

/// Errors while creating a Commit or Proposal, or resolving a pending Commit.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum CommitError {
    /// A Commit of ours is pending: confirm or discard it first.
    #[error("a pending commit exists; confirm or discard it first")]
    PendingCommitExists,
    /// There is no pending Commit to confirm.
    #[error("no pending commit")]
    NoPendingCommit,
    /// Nothing to commit (empty input, or no pending proposals).
    #[error("nothing to commit")]
    EmptyInput,
    /// The named member is not in the group.
    #[error("no such member")]
    NoSuchMember,
    /// This device is no longer a member of the group.
    #[error("this device is no longer a member of the group")]
    NotAMember,
    /// A KeyPackage is invalid.
    #[error(transparent)]
    KeyPackage(#[from] KeyPackageError),
    /// openmls refused to build the Commit (e.g. duplicate member).
    #[error("cannot create commit: {0}")]
    Rejected(String),
    /// The storage provider failed.
    #[error("storage error: {0}")]
    Storage(String),
    /// A bug.
    #[error("internal error: {0}")]
    Internal(String),
}

/// Errors while encrypting an application message.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum EncryptError {
    /// This device is no longer a member of the group.
    #[error("this device is no longer a member of the group")]
    NotAMember,
    /// Proposals are pending: they must be committed before sending (RFC 9420
    /// §12.2); call `commit_pending_proposals`.
    #[error("proposals are pending; commit them before sending")]
    PendingProposals,
    /// The storage provider failed.
    #[error("storage error: {0}")]
    Storage(String),
    /// A bug.
    #[error("internal error: {0}")]
    Internal(String),
}

/// Errors while processing an incoming MLS message.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ProcessError {
    /// The bytes are not a TLS-encoded `MLSMessage` carrying a Public or
    /// Private message.
    #[error("malformed message")]
    Malformed,
    /// The message belongs to another group.
    #[error("message is for another group")]
    WrongGroup,
    /// The message is for an epoch this device cannot process: a Commit or
    /// Proposal for another epoch than the current one, or an application
    /// message from the future or from further back than `max_past_epochs`.
    #[error("wrong epoch: message epoch {message_epoch}, group epoch {group_epoch}")]
    WrongEpoch {
        /// The epoch the message claims.
        message_epoch: u64,
        /// This device's current epoch.
        group_epoch: u64,
    },
    /// The sender is not (or no longer) a member of the group, or the message
    /// failed membership authentication.
    #[error("sender is not a member of the group")]
    NotAMember,
    /// Handshake messages must be PublicMessages and application messages
    /// PrivateMessages.
    #[error("wrong wire format for this content")]
    WrongWireFormat,
    /// The message could not be decrypted or authenticated (tampered, or a
    /// generation this device already consumed: duplicates are rejected).
    #[error("message could not be decrypted or authenticated")]
    DecryptionFailed,
    /// A Commit is invalid.
    #[error("invalid commit: {0}")]
    InvalidCommit(String),
    /// An external commit that Parley's policy refuses: only a device of a user who
    /// already has a leaf may join by external commit, adding nobody else and removing
    /// only leaves of that user.
    #[error("external join refused: only a member's own device may join by external commit")]
    ExternalJoinRefused,
    /// A credential in a Commit or Proposal does not bind its signature key,
    /// or changes a member's user or device id.
    #[error(transparent)]
    Credential(#[from] IdentityError),
    /// This device has been removed from the group.
    #[error("this device is no longer a member of the group")]
    GroupInactive,
    /// This device cannot process its own Commit unless it is the pending one.
    #[error("own commit does not match the pending commit")]
    OwnCommitMismatch,
    /// The storage provider failed.
    #[error("storage error: {0}")]
    Storage(String),
    /// A bug.
    #[error("internal error: {0}")]
    Internal(String),
}

/// Errors while loading or deleting a group from the store.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// The storage provider failed or holds inconsistent data.
    #[error("storage error: {0}")]
    Storage(String),
    /// A bug.
    #[error("internal error: {0}")]
    Internal(String),
}

/// Errors while encoding or decoding a plaintext envelope.
#[derive(Debug, Error)]
pub enum EnvelopeError {
    /// The envelope's `v` is not one this version understands.
    #[error("unsupported envelope version {0}")]
    UnsupportedVersion(u64),
    /// The bytes are not a valid envelope.
    #[error("malformed envelope: {0}")]
    Malformed(#[from] serde_json::Error),
    /// The envelope is larger than [`crate::envelope::MAX_ENVELOPE_LEN`].
    #[error("envelope too large")]
    TooLarge,
}

/// Errors while encrypting or decrypting media.
#[derive(Debug, Error)]
pub enum MediaError {
    /// Reading the input or writing the output failed.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// A chunk failed authentication: the ciphertext was modified, chunks were
    /// reordered or spliced from another file, or the key is wrong.
    #[error("chunk {chunk} failed authentication (tampered, reordered or wrong key)")]
    Tampered {
        /// Index of the first chunk that failed (0-based).
        chunk: u64,
    },
    /// The ciphertext ends before its final chunk.
    #[error("ciphertext is truncated")]
    Truncated,
    /// The decrypted padding is not canonical.
    #[error("invalid padding")]
    InvalidPadding,
    /// The SHA-256 of the ciphertext is not the expected blob address.
    #[error("ciphertext hash does not match the blob address")]
    HashMismatch,
    /// The file is larger than the format allows (2^32 - 1 chunks).
    #[error("file too large")]
    TooLarge,
    /// A key, hash or encoded value has the wrong format.
    #[error("malformed value: {0}")]
    Malformed(&'static str),
}

/// Formats a storage error for the string-carrying `Storage` variants.
pub(crate) fn storage_msg(e: impl std::fmt::Display) -> String {
    e.to_string()
}
