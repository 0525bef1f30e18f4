//! Media blobs: end-to-end encrypted files, stored once per server under the SHA-256 of
//! their ciphertext.
//!
//! Upload: `GET …/upload` tells how many bytes the server already holds (resume from
//! there); `PUT …/upload?offset=K&total=N` appends the body at `K`. When all `N` bytes
//! are in, the server checks the hash and stores the blob (`201`); a partial chunk
//! answers `200` with the new `received`. Ask `HEAD /v1/media/{blob}` first: an existing
//! blob needs no upload. Download: `GET /v1/media/{blob}`, `Range` supported; allowed
//! to the uploader and to members of a chat whose messages refer to the blob.

use serde::{Deserialize, Serialize};

/// `HEAD`: 200 when the blob is stored, 404 otherwise.
pub mod exists {
    pub const METHOD: crate::http::Method = crate::http::Method::Head;
    pub const PATH: &str = "/v1/media/{blob}";
}

/// Download (ranged).
pub mod download {
    pub const METHOD: crate::http::Method = crate::http::Method::Get;
    pub const PATH: &str = "/v1/media/{blob}";
}

/// How far an upload has got.
pub mod upload_status {
    pub const METHOD: crate::http::Method = crate::http::Method::Get;
    pub const PATH: &str = "/v1/media/{blob}/upload";
    pub type Response = super::UploadState;
}

/// Append bytes to an upload.
pub mod upload {
    use super::*;
    pub const METHOD: crate::http::Method = crate::http::Method::Put;
    pub const PATH: &str = "/v1/media/{blob}/upload";

    #[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
    #[serde(deny_unknown_fields)]
    #[schemars(rename = "MediaUploadQuery")]
    pub struct Query {
        /// Where the body starts; must equal what the server holds.
        pub offset: u64,
        /// The blob's full size.
        pub total: u64,
    }

    pub type Response = super::UploadState;
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct UploadState {
    pub blob: crate::ids::BlobHash,
    /// Bytes the server holds.
    pub received: u64,
    /// True once the blob is stored (hash verified).
    pub complete: bool,
}
