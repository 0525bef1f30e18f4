//! The SDK's errors.

use parley_client_api::ErrorCode;
use thiserror::Error;

/// Everything an SDK call can fail with.
#[derive(Debug, Error)]
pub enum Error {
    /// The homeserver cannot be reached (down, wrong address, network failure).
    #[error("cannot reach the homeserver at {url}: {reason}")]
    Unreachable { url: String, reason: String },
    /// The homeserver refused the request with an error code.
    #[error("{message}")]
    Server {
        code: ErrorCode,
        status: u16,
        message: String,
    },
    /// The homeserver answered something this SDK does not understand.
    #[error("unexpected answer from the homeserver: {0}")]
    Protocol(String),
    /// The profile has no session: register or log in first.
    #[error("not logged in (no session in {0}); register or log in first")]
    NotLoggedIn(String),
    /// The profile already holds a session.
    #[error("the profile {0} already holds a session; use another profile directory")]
    AlreadyLoggedIn(String),
    /// Another process is using this profile.
    #[error("the profile {0} is in use by another parley process")]
    ProfileInUse(String),
    /// The local store failed.
    #[error("local store: {0}")]
    Store(String),
    /// End-to-end encryption failed.
    #[error("encryption: {0}")]
    Crypto(String),
    /// No such chat in the local store.
    #[error("unknown chat {0}")]
    UnknownChat(String),
    /// The chat exists but this device is not (yet) a member of its MLS group.
    #[error("this device has not joined chat {0} yet")]
    NotJoined(String),
    /// The other user has no device with a KeyPackage: nobody to encrypt to.
    #[error("{0} has no device that can receive encrypted messages yet")]
    NoDevices(String),
    /// The hub refused a group change: only the group's admins may make it.
    #[error("only an admin of chat {0} can do that")]
    NotAdmin(String),
    /// An argument is invalid (bad user id, empty text, …).
    #[error("{0}")]
    Invalid(String),
    /// The key does not open the history archive or backup (a wrong recovery key,
    /// passphrase or transfer key).
    #[error("the key does not open this history archive (wrong recovery key or passphrase?)")]
    WrongKey,
    /// A history archive or backup is damaged, truncated or not an archive; nothing was
    /// imported.
    #[error("the history archive is damaged or incomplete ({0}); nothing was imported")]
    CorruptArchive(String),
    /// A typed recovery key is malformed or has a typo (its checksum does not match).
    #[error("invalid recovery key: {0}")]
    RecoveryKey(String),
    /// The user has no backup on the homeserver.
    #[error("there is no backup to restore")]
    NoBackup,
    /// The client was shut down.
    #[error("the client was shut down")]
    Closed,
}

impl Error {
    /// The server's error code, if the server refused the request.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Error::Server { code, .. } => Some(*code),
            _ => None,
        }
    }

    pub(crate) fn store(e: impl std::fmt::Display) -> Self {
        Error::Store(e.to_string())
    }

    pub(crate) fn crypto(e: impl std::fmt::Display) -> Self {
        Error::Crypto(e.to_string())
    }
}

impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Self {
        Error::store(e)
    }
}

impl From<sqlx::migrate::MigrateError> for Error {
    fn from(e: sqlx::migrate::MigrateError) -> Self {
        Error::store(e)
    }
}

/// Shorthand.
pub type Result<T, E = Error> = std::result::Result<T, E>;
