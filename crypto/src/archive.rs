//! History archive encryption: a byte stream (a device's message history, framed by
//! the SDK) sealed under a long-lived 256-bit key — a backup key, or a key agreed for
//! a transfer to a linked device — in constant memory.
//!
//! # Format (version 1)
//! ```text
//! offset  size  field
//! 0       8     magic "PARLEYHA"
//! 8       2     version, u16 big-endian (1)
//! 10      12    nonce (random)
//! 22      48    the archive's content key (32 bytes) sealed with ChaCha20-Poly1305
//!               under the caller's key, this nonce, associated data = bytes 0..10
//!               (ciphertext 32 ‖ tag 16)
//! 70      …     the content: the media format of [`crate::media`] (padding,
//!               64 KiB STREAM chunks) under the content key
//! ```
//! The content key is fresh and random per archive, so the media format's rule "never
//! two files under one key" holds however often the caller's key is reused; the
//! caller's key only ever seals 32 random bytes under a random 96-bit nonce (safe for
//! far more archives than one user makes). A wrong caller key fails on the sealed
//! content key ([`ArchiveError::WrongKey`]) before any content is read; a modified
//! header (magic, version) fails the same way because it is the associated data.
//! Modified, reordered or cut content fails as in [`crate::media`].
//!
//! Decryption writes plaintext as it is authenticated, chunk by chunk: whatever was
//! written must be discarded unless [`decrypt`] returns `Ok` (the SDK imports inside
//! one transaction and commits only then).

use std::fmt;
use std::io::{Read, Write};

use chacha20poly1305::aead::{Aead, KeyInit, OsRng, Payload, rand_core::RngCore};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::error::MediaError;
use crate::media::{self, MediaKey};

/// The first bytes of every archive.
pub const MAGIC: &[u8; 8] = b"PARLEYHA";
/// The format version this code writes and reads.
pub const VERSION: u16 = 1;
/// Header bytes before the content.
pub const HEADER_LEN: usize = 8 + 2 + 12 + 32 + 16;

/// A 256-bit key that seals archives. Zeroized on drop, printed as `***`.
#[derive(Clone, PartialEq, Eq, Zeroize, ZeroizeOnDrop)]
pub struct ArchiveKey([u8; 32]);

impl ArchiveKey {
    /// A fresh random key.
    pub fn generate() -> Self {
        let mut key = [0u8; 32];
        OsRng.fill_bytes(&mut key);
        Self(key)
    }

    /// Wraps raw key bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The raw key bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for ArchiveKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ArchiveKey(***)")
    }
}

/// Why an archive could not be written or opened.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// Reading the input or writing the output failed.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// The bytes do not start like an archive.
    #[error("not a Parley history archive")]
    NotAnArchive,
    /// An archive of a format version this code does not read.
    #[error("archive format version {0} is not supported (this client reads version 1)")]
    UnsupportedVersion(u16),
    /// The key does not open the archive (or its header was modified).
    #[error("the key does not open this archive")]
    WrongKey,
    /// The content was modified (a chunk failed authentication).
    #[error("the archive is damaged (chunk {chunk} failed authentication)")]
    Tampered {
        /// Index of the first chunk that failed (0-based).
        chunk: u64,
    },
    /// The archive ends early.
    #[error("the archive is truncated")]
    Truncated,
    /// The content's padding is not canonical.
    #[error("the archive is damaged (invalid padding)")]
    InvalidPadding,
    /// Larger than the format allows.
    #[error("the archive is too large")]
    TooLarge,
}

impl From<MediaError> for ArchiveError {
    fn from(e: MediaError) -> Self {
        match e {
            MediaError::Io(e) => ArchiveError::Io(e),
            MediaError::Tampered { chunk } => ArchiveError::Tampered { chunk },
            MediaError::Truncated => ArchiveError::Truncated,
            MediaError::InvalidPadding | MediaError::HashMismatch | MediaError::Malformed(_) => {
                ArchiveError::InvalidPadding
            }
            MediaError::TooLarge => ArchiveError::TooLarge,
        }
    }
}

/// What [`encrypt`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArchiveStats {
    /// Plaintext bytes read.
    pub plaintext_len: u64,
    /// Archive bytes written (header included).
    pub archive_len: u64,
}

fn header_prefix() -> [u8; 10] {
    let mut p = [0u8; 10];
    p[..8].copy_from_slice(MAGIC);
    p[8..].copy_from_slice(&VERSION.to_be_bytes());
    p
}

/// Seals `reader` into an archive written to `writer` under `key`, in constant memory.
pub fn encrypt<R: Read, W: Write>(
    key: &ArchiveKey,
    reader: R,
    mut writer: W,
) -> Result<ArchiveStats, ArchiveError> {
    let content_key = MediaKey::generate();
    let mut nonce = [0u8; 12];
    OsRng.fill_bytes(&mut nonce);
    let prefix = header_prefix();
    let sealed = ChaCha20Poly1305::new(Key::from_slice(key.as_bytes()))
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: content_key.as_bytes(),
                aad: &prefix,
            },
        )
        .map_err(|_| ArchiveError::TooLarge)?;
    writer.write_all(&prefix)?;
    writer.write_all(&nonce)?;
    writer.write_all(&sealed)?;
    let (_, plaintext_len, ciphertext_len) =
        media::encrypt_with_key(&content_key, reader, &mut writer)?;
    Ok(ArchiveStats {
        plaintext_len,
        archive_len: HEADER_LEN as u64 + ciphertext_len,
    })
}

/// Opens the archive in `reader` with `key`, writing the plaintext to `writer` as it
/// is authenticated; returns the plaintext length. On any error, discard what was
/// written.
pub fn decrypt<R: Read, W: Write>(
    key: &ArchiveKey,
    mut reader: R,
    writer: W,
) -> Result<u64, ArchiveError> {
    let mut header = [0u8; HEADER_LEN];
    let mut n = 0;
    while n < HEADER_LEN {
        match reader.read(&mut header[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    if n < MAGIC.len() || &header[..8] != MAGIC {
        return Err(ArchiveError::NotAnArchive);
    }
    if n < 10 {
        return Err(ArchiveError::Truncated);
    }
    let version = u16::from_be_bytes([header[8], header[9]]);
    if version != VERSION {
        return Err(ArchiveError::UnsupportedVersion(version));
    }
    if n < HEADER_LEN {
        return Err(ArchiveError::Truncated);
    }
    let opened = Zeroizing::new(
        ChaCha20Poly1305::new(Key::from_slice(key.as_bytes()))
            .decrypt(
                Nonce::from_slice(&header[10..22]),
                Payload {
                    msg: &header[22..HEADER_LEN],
                    aad: &header[..10],
                },
            )
            .map_err(|_| ArchiveError::WrongKey)?,
    );
    let bytes: [u8; 32] = opened
        .as_slice()
        .try_into()
        .map_err(|_| ArchiveError::WrongKey)?;
    let content_key = MediaKey::from_bytes(bytes);
    Ok(media::decrypt(&content_key, reader, writer, None)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seal(key: &ArchiveKey, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let stats = encrypt(key, data, &mut out).unwrap();
        assert_eq!(stats.archive_len, out.len() as u64);
        assert_eq!(stats.plaintext_len, data.len() as u64);
        out
    }

    fn open(key: &ArchiveKey, archive: &[u8]) -> Result<Vec<u8>, ArchiveError> {
        let mut out = Vec::new();
        decrypt(key, archive, &mut out)?;
        Ok(out)
    }

    #[test]
    fn round_trips_and_each_archive_differs() {
        let key = ArchiveKey::generate();
        for len in [0usize, 1, 70_000, 300_000] {
            let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let a = seal(&key, &data);
            let b = seal(&key, &data);
            assert_ne!(a, b, "a fresh content key per archive");
            assert_eq!(open(&key, &a).unwrap(), data);
            assert_eq!(&a[..8], MAGIC);
        }
    }

    #[test]
    fn wrong_key_modified_header_and_bad_content_are_refused() {
        let key = ArchiveKey::generate();
        let data = vec![7u8; 200_000];
        let a = seal(&key, &data);
        assert!(matches!(
            open(&ArchiveKey::generate(), &a),
            Err(ArchiveError::WrongKey)
        ));
        let mut v = a.clone();
        v[9] = 2;
        assert!(matches!(
            open(&key, &v),
            Err(ArchiveError::UnsupportedVersion(2))
        ));
        let mut m = a.clone();
        m[0] = b'X';
        assert!(matches!(open(&key, &m), Err(ArchiveError::NotAnArchive)));
        let mut n = a.clone();
        n[12] ^= 1;
        assert!(matches!(open(&key, &n), Err(ArchiveError::WrongKey)));
        let mut t = a.clone();
        t[HEADER_LEN + 100] ^= 1;
        assert!(matches!(
            open(&key, &t),
            Err(ArchiveError::Tampered { chunk: 0 })
        ));
        // Cut at a chunk boundary, inside a chunk, and inside the header.
        let boundary = HEADER_LEN + media::CHUNK_SIZE + media::TAG_SIZE;
        assert!(matches!(
            open(&key, &a[..boundary]),
            Err(ArchiveError::Truncated)
        ));
        assert!(open(&key, &a[..a.len() - 1]).is_err());
        assert!(matches!(
            open(&key, &a[..HEADER_LEN]),
            Err(ArchiveError::Truncated)
        ));
        assert!(matches!(open(&key, &a[..30]), Err(ArchiveError::Truncated)));
        assert!(matches!(open(&key, b""), Err(ArchiveError::NotAnArchive)));
        assert_eq!(format!("{key:?}"), "ArchiveKey(***)");
    }
}
