//! The caller's encrypted history backup (`spec/backup.md`, BK11–BK16).
//!
//! The backup's bytes are a media blob: the client uploads the archive with the media
//! upload endpoints (resumable, hash-checked, counted against the user's quota), then
//! points its backup at the blob with `PUT /v1/backup`, replacing the previous one (whose
//! blob is collected like any unreferenced blob). A fresh device of the same user reads
//! `GET /v1/backup` and downloads the blob with `GET /v1/media/{blob}`. The server
//! stores the blob and these fields and nothing else: the archive is sealed under a key
//! only the user has; how that key is made ([`BackupKeyMode`]) is stored for the
//! restoring client and holds nothing secret.

use serde::{Deserialize, Serialize};

use crate::ids::BlobHash;

/// How the backup's key is made (what a restoring client asks the user for).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "mode", rename_all = "snake_case", deny_unknown_fields)]
pub enum BackupKeyMode {
    /// A random key, shown to the user once as a recovery key.
    RecoveryKey,
    /// Argon2id of a passphrase with these parameters (the salt is not secret).
    Passphrase {
        /// 16 bytes, lowercase hex.
        salt: String,
        /// Memory in KiB.
        m_kib: u32,
        /// Iterations.
        t: u32,
        /// Lanes.
        p: u32,
    },
}

/// The caller's backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Backup {
    /// The archive's blob (download with `GET /v1/media/{blob}`).
    pub blob: BlobHash,
    /// Its size in bytes.
    pub size: u64,
    pub key: BackupKeyMode,
    /// When it was stored (ms since the Unix epoch).
    pub created_at: i64,
}

/// The caller's backup: `404 not_found` if there is none.
pub mod get {
    pub const METHOD: crate::http::Method = crate::http::Method::Get;
    pub const PATH: &str = "/v1/backup";
    pub type Response = super::Backup;
}

/// Makes an uploaded blob the caller's backup, replacing the previous one. The blob must
/// be stored with this size and uploaded by the caller (`404 unknown_blob` otherwise).
pub mod put {
    use super::*;
    pub const METHOD: crate::http::Method = crate::http::Method::Put;
    pub const PATH: &str = "/v1/backup";

    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
    #[serde(deny_unknown_fields)]
    #[schemars(rename = "BackupRequest")]
    pub struct Request {
        pub blob: BlobHash,
        pub size: u64,
        pub key: BackupKeyMode,
    }

    pub type Response = super::Backup;
}

/// Deletes the caller's backup (`204`; `404 not_found` if there is none).
pub mod delete {
    pub const METHOD: crate::http::Method = crate::http::Method::Delete;
    pub const PATH: &str = "/v1/backup";
}
