//! `GET /_parley/fed/v1/media/{hash}`: a media blob's ciphertext, fetched by a server
//! whose users were sent a message referring to it, from the server that stores it (the
//! sender's server).
//!
//! The answer is the raw bytes (`application/octet-stream`, `Content-Length`), or with a
//! `Range: bytes=N-` request header the bytes from `N` on (`206`, `Content-Range`), so an
//! interrupted fetch resumes. The origin serves a blob only if it stores it and the blob
//! is referred to by an event of a chat that has current members on the requesting
//! server; anything else is `404 not_found` (whether or not the blob exists). The
//! fetcher checks the SHA-256 of what it received against `{hash}` before keeping it.

pub const METHOD: super::Method = super::Method::Get;
pub const PATH: &str = "/_parley/fed/v1/media/{hash}";

/// The path for `hash` (a lowercase hex SHA-256).
pub fn path(hash: &str) -> String {
    super::fill(PATH, &[("hash", hash)])
}
