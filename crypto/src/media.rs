//! Media (attachment) encryption.
//!
//! # Format
//! 1. **Key**: a fresh random 32-byte ChaCha20-Poly1305 key per file
//!    ([`MediaKey`]). It travels only inside the MLS-encrypted message
//!    ([`crate::envelope::MediaRef`]). Keys are never reused, which is what
//!    makes the fixed nonce prefix below safe.
//! 2. **Padding** (hides the exact size): the padded plaintext is
//!    `plaintext ‖ 0x80 ‖ 0x00…` (ISO/IEC 7816-4 padding) with total length
//!    [`padded_len`]`(len)` = `max(256, padmé(len + 1))`, where padmé(L) rounds
//!    L up to a multiple of `2^(⌊log2 L⌋ − ⌊log2 ⌊log2 L⌋⌋ − 1)` (the Padmé
//!    scheme of Nikitin et al., "Reducing Metadata Leakage from Encrypted
//!    Files and Communication with PURBs", PETS 2019: at most ~12 % overhead,
//!    leaking O(log log L) bits of the size). The padding needs no length up
//!    front, so encryption streams. Decryption rejects non-canonical padding.
//! 3. **Chunks**: the padded plaintext is cut into [`CHUNK_SIZE`] = 64 KiB
//!    chunks (the last may be shorter, never empty); chunk `i` is sealed with
//!    ChaCha20-Poly1305, empty associated data, and the 12-byte nonce
//!    `[0u8; 7] ‖ u32_be(i) ‖ last` where `last` is `0x01` for the final chunk
//!    and `0x00` otherwise. That is the STREAM construction (Hoang, Reyhanitabar,
//!    Rogaway, Vizár 2015) exactly as RustCrypto's `aead::stream::StreamBE32`
//!    builds it with a 7-byte all-zero nonce prefix (a unit test checks the
//!    equivalence) — equivalently "an 11-byte big-endian chunk counter ‖ a
//!    last-chunk flag byte" with the counter limited to 2^32 − 1 chunks.
//!    Ciphertext = concatenation of `chunk ‖ 16-byte tag`.
//! 4. **Address**: the blob is addressed by the lowercase hex SHA-256 of the
//!    whole ciphertext ([`BlobHash`]).
//!
//! Modified, reordered or spliced chunks fail authentication
//! ([`MediaError::Tampered`]); a stream cut at a chunk boundary is detected
//! because its last chunk was not sealed as last ([`MediaError::Truncated`]).
//! Decryption writes plaintext chunk by chunk as it is authenticated: on any
//! error the caller must discard what was written.
//!
//! Memory use is constant (one chunk buffer) for any file size.
//! Test vectors: `spec/test-vectors/media-encryption.json`.

use std::fmt;
use std::io::{Read, Write};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chacha20poly1305::aead::{AeadInPlace, KeyInit, OsRng, rand_core::RngCore};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce, Tag};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::error::MediaError;

/// Plaintext bytes per chunk.
pub const CHUNK_SIZE: usize = 64 * 1024;
/// Authentication tag bytes per chunk.
pub const TAG_SIZE: usize = 16;
/// The smallest padded size.
pub const MIN_PADDED_LEN: u64 = 256;
const PAD_MARKER: u8 = 0x80;
const MAX_CHUNKS: u64 = u32::MAX as u64;

/// A media file's 256-bit key. Zeroized on drop, printed as `***`, serialized
/// as unpadded base64url.
#[derive(Clone, PartialEq, Eq, Zeroize, ZeroizeOnDrop)]
pub struct MediaKey([u8; 32]);

impl MediaKey {
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

impl fmt::Debug for MediaKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MediaKey(***)")
    }
}

impl Serialize for MediaKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&URL_SAFE_NO_PAD.encode(self.0))
    }
}

impl<'de> Deserialize<'de> for MediaKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut s = zeroize::Zeroizing::new(String::deserialize(d)?);
        let mut bytes = zeroize::Zeroizing::new(
            URL_SAFE_NO_PAD
                .decode(s.as_bytes())
                .map_err(|_| serde::de::Error::custom("media key: invalid base64url"))?,
        );
        s.zeroize();
        let key: [u8; 32] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| serde::de::Error::custom("media key: must be 32 bytes"))?;
        bytes.zeroize();
        Ok(Self(key))
    }
}

/// A blob's address: the SHA-256 of its ciphertext, shown as 64 lowercase hex
/// digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct BlobHash([u8; 32]);

impl BlobHash {
    /// The hash of `ciphertext`.
    pub fn of(ciphertext: &[u8]) -> Self {
        Self(Sha256::digest(ciphertext).into())
    }

    /// The raw digest.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl TryFrom<&str> for BlobHash {
    type Error = MediaError;
    fn try_from(s: &str) -> Result<Self, MediaError> {
        if s.len() != 64 || s.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(MediaError::Malformed(
                "blob hash must be 64 lowercase hex digits",
            ));
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out)
            .map_err(|_| MediaError::Malformed("blob hash must be 64 lowercase hex digits"))?;
        Ok(Self(out))
    }
}

impl fmt::Display for BlobHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for BlobHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BlobHash({self})")
    }
}

impl Serialize for BlobHash {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for BlobHash {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::try_from(s.as_str()).map_err(serde::de::Error::custom)
    }
}

/// The Padmé rounding of `len` (see the module docs).
fn padme(len: u64) -> u64 {
    if len < 2 {
        return len;
    }
    let e = 63 - u64::from(len.leading_zeros()); // ⌊log2 len⌋
    let s = 64 - u64::from(e.leading_zeros()); // ⌊log2 e⌋ + 1
    let last_bits = e - s;
    let mask = (1u64 << last_bits) - 1;
    len.saturating_add(mask) & !mask
}

/// The padded size of a `plaintext_len`-byte file (marker byte included).
pub fn padded_len(plaintext_len: u64) -> u64 {
    padme(plaintext_len.saturating_add(1)).max(MIN_PADDED_LEN)
}

/// The ciphertext size of a `plaintext_len`-byte file.
pub fn ciphertext_len(plaintext_len: u64) -> u64 {
    let padded = padded_len(plaintext_len);
    let chunks = padded.div_ceil(CHUNK_SIZE as u64);
    padded + chunks * TAG_SIZE as u64
}

fn chunk_nonce(index: u32, last: bool) -> Nonce {
    let mut nonce = [0u8; 12];
    nonce[7..11].copy_from_slice(&index.to_be_bytes());
    nonce[11] = u8::from(last);
    Nonce::from(nonce)
}

/// The result of encrypting a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncryptedMedia {
    /// The file's key (put it in the [`crate::envelope::MediaRef`]).
    pub key: MediaKey,
    /// The blob address (SHA-256 of the ciphertext).
    pub blob: BlobHash,
    /// Plaintext bytes read.
    pub plaintext_len: u64,
    /// Ciphertext bytes written.
    pub ciphertext_len: u64,
}

/// Encrypts `reader` to `writer` under a fresh key, in constant memory.
pub fn encrypt<R: Read, W: Write>(reader: R, writer: W) -> Result<EncryptedMedia, MediaError> {
    let key = MediaKey::generate();
    let (blob, plaintext_len, ciphertext_len) = encrypt_with_key(&key, reader, writer)?;
    Ok(EncryptedMedia {
        key,
        blob,
        plaintext_len,
        ciphertext_len,
    })
}

/// Encrypts under a caller-chosen key. **Never encrypt two files under the
/// same key** (the nonces repeat); this exists for test vectors. Returns
/// `(blob, plaintext_len, ciphertext_len)`.
pub fn encrypt_with_key<R: Read, W: Write>(
    key: &MediaKey,
    mut reader: R,
    mut writer: W,
) -> Result<(BlobHash, u64, u64), MediaError> {
    let cipher = ChaCha20Poly1305::new(Key::from_slice(key.as_bytes()));
    let mut hasher = Sha256::new();
    let mut buf = zeroize::Zeroizing::new(vec![0u8; CHUNK_SIZE]);
    let mut index: u64 = 0;
    let mut plaintext_len: u64 = 0;
    let mut written: u64 = 0;

    let mut seal = |chunk: &mut [u8], index: u64, last: bool| -> Result<u64, MediaError> {
        if index >= MAX_CHUNKS {
            return Err(MediaError::TooLarge);
        }
        let idx = u32::try_from(index).map_err(|_| MediaError::TooLarge)?;
        let tag = cipher
            .encrypt_in_place_detached(&chunk_nonce(idx, last), b"", chunk)
            .map_err(|_| MediaError::TooLarge)?;
        hasher.update(&*chunk);
        hasher.update(tag);
        writer.write_all(chunk)?;
        writer.write_all(&tag)?;
        Ok((chunk.len() + TAG_SIZE) as u64)
    };

    // Plaintext phase: a full chunk of plaintext is never the last chunk,
    // because at least the padding marker follows it.
    let mut filled;
    loop {
        filled = read_full(&mut reader, &mut buf)?;
        plaintext_len += filled as u64;
        if filled < CHUNK_SIZE {
            break;
        }
        written += seal(&mut buf, index, false)?;
        index += 1;
    }

    // Padding phase: marker, then zeros up to the bucket size.
    let total = padded_len(plaintext_len);
    let mut remaining = total - (index * CHUNK_SIZE as u64 + filled as u64);
    buf[filled] = PAD_MARKER;
    filled += 1;
    remaining -= 1;
    loop {
        let space = (CHUNK_SIZE - filled) as u64;
        let take = remaining.min(space) as usize;
        buf[filled..filled + take].fill(0);
        filled += take;
        remaining -= take as u64;
        let last = remaining == 0;
        written += seal(&mut buf[..filled], index, last)?;
        index += 1;
        if last {
            break;
        }
        filled = 0;
    }
    writer.flush()?;
    Ok((BlobHash(hasher.finalize().into()), plaintext_len, written))
}

/// Reads until `buf` is full or the reader is exhausted; returns bytes read.
fn read_full<R: Read>(reader: &mut R, buf: &mut [u8]) -> Result<usize, std::io::Error> {
    let mut n = 0;
    while n < buf.len() {
        match reader.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Strips the padding while streaming: holds back a candidate
/// `0x80 0x00…` suffix as a count, so memory stays constant.
struct Unpadder<W> {
    writer: W,
    held_marker: bool,
    held_zeros: u64,
    plaintext_len: u64,
    padded_len: u64,
}

impl<W: Write> Unpadder<W> {
    fn push(&mut self, chunk: &[u8]) -> Result<(), MediaError> {
        self.padded_len += chunk.len() as u64;
        match chunk.iter().rposition(|&b| b != 0) {
            None if self.held_marker => self.held_zeros += chunk.len() as u64,
            None => self.emit(chunk)?,
            Some(p) => {
                self.flush_held()?;
                if chunk[p] == PAD_MARKER {
                    self.emit(&chunk[..p])?;
                    self.held_marker = true;
                    self.held_zeros = (chunk.len() - p - 1) as u64;
                } else {
                    self.emit(chunk)?;
                }
            }
        }
        Ok(())
    }

    fn flush_held(&mut self) -> Result<(), MediaError> {
        if self.held_marker {
            self.emit(&[PAD_MARKER])?;
            self.held_marker = false;
        }
        const ZEROS: [u8; 4096] = [0u8; 4096];
        while self.held_zeros > 0 {
            let n = self.held_zeros.min(ZEROS.len() as u64) as usize;
            self.emit(&ZEROS[..n])?;
            self.held_zeros -= n as u64;
        }
        Ok(())
    }

    fn emit(&mut self, bytes: &[u8]) -> Result<(), MediaError> {
        self.plaintext_len += bytes.len() as u64;
        self.writer.write_all(bytes)?;
        Ok(())
    }

    fn finish(mut self) -> Result<u64, MediaError> {
        if !self.held_marker || self.padded_len != padded_len(self.plaintext_len) {
            return Err(MediaError::InvalidPadding);
        }
        self.writer.flush()?;
        Ok(self.plaintext_len)
    }
}

/// Decrypts `reader` to `writer`, in constant memory. If `expected` is given,
/// the SHA-256 of the ciphertext must match it. Returns the plaintext length.
/// On error, discard whatever was written.
pub fn decrypt<R: Read, W: Write>(
    key: &MediaKey,
    mut reader: R,
    writer: W,
    expected: Option<&BlobHash>,
) -> Result<u64, MediaError> {
    const SEALED: usize = CHUNK_SIZE + TAG_SIZE;
    let cipher = ChaCha20Poly1305::new(Key::from_slice(key.as_bytes()));
    let mut hasher = Sha256::new();
    // One sealed chunk plus one byte of look-ahead to tell the last chunk.
    let mut buf = zeroize::Zeroizing::new(vec![0u8; SEALED + 1]);
    let mut filled = 0usize;
    let mut index: u64 = 0;
    let mut out = Unpadder {
        writer,
        held_marker: false,
        held_zeros: 0,
        plaintext_len: 0,
        padded_len: 0,
    };

    let open = |sealed: &mut [u8], index: u64, last: bool| -> bool {
        let Ok(idx) = u32::try_from(index) else {
            return false;
        };
        let Some(split) = sealed.len().checked_sub(TAG_SIZE) else {
            return false;
        };
        let (body, tag) = sealed.split_at_mut(split);
        cipher
            .decrypt_in_place_detached(&chunk_nonce(idx, last), b"", body, Tag::from_slice(tag))
            .is_ok()
    };

    loop {
        filled += read_full(&mut reader, &mut buf[filled..])?;
        if filled > SEALED {
            // Not the last chunk.
            hasher.update(&buf[..SEALED]);
            let sealed = &mut buf[..SEALED];
            if !open(sealed, index, false) {
                return Err(MediaError::Tampered { chunk: index });
            }
            out.push(&buf[..CHUNK_SIZE])?;
            buf.copy_within(SEALED..filled, 0);
            filled -= SEALED;
            index += 1;
            if index >= MAX_CHUNKS {
                return Err(MediaError::TooLarge);
            }
            continue;
        }
        // The last chunk.
        if filled <= TAG_SIZE {
            return Err(if filled == 0 {
                MediaError::Truncated
            } else {
                MediaError::Tampered { chunk: index }
            });
        }
        hasher.update(&buf[..filled]);
        let mut copy = zeroize::Zeroizing::new(buf[..filled].to_vec());
        if !open(&mut buf[..filled], index, true) {
            // Sealed as a middle chunk: the stream was cut after it.
            return Err(if open(&mut copy, index, false) {
                MediaError::Truncated
            } else {
                MediaError::Tampered { chunk: index }
            });
        }
        out.push(&buf[..filled - TAG_SIZE])?;
        break;
    }
    if let Some(expected) = expected {
        let actual: [u8; 32] = hasher.finalize().into();
        if &actual != expected.as_bytes() {
            return Err(MediaError::HashMismatch);
        }
    }
    out.finish()
}

/// Encrypts an in-memory file; returns the metadata and the ciphertext.
pub fn encrypt_bytes(plaintext: &[u8]) -> Result<(EncryptedMedia, Vec<u8>), MediaError> {
    let mut ciphertext = Vec::with_capacity(ciphertext_len(plaintext.len() as u64) as usize);
    let meta = encrypt(plaintext, &mut ciphertext)?;
    Ok((meta, ciphertext))
}

/// Decrypts an in-memory ciphertext.
pub fn decrypt_bytes(
    key: &MediaKey,
    ciphertext: &[u8],
    expected: Option<&BlobHash>,
) -> Result<Vec<u8>, MediaError> {
    let mut plaintext = Vec::with_capacity(ciphertext.len());
    decrypt(key, ciphertext, &mut plaintext, expected)?;
    Ok(plaintext)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chacha20poly1305::aead::stream::EncryptorBE32;

    #[test]
    fn padme_matches_reference_values() {
        // Padmé rounds to at most ~12 % and keeps small values exact.
        assert_eq!(padme(2), 2);
        assert_eq!(padme(9), 10);
        assert_eq!(padme(1000), 1024);
        assert_eq!(padme(65_637), 67_584);
        for len in [300u64, 5_000, 1 << 20, (100 << 20) + 7, 1 << 40] {
            let p = padme(len);
            assert!(p >= len);
            assert!((p - len) as f64 <= len as f64 * 0.12, "{len} -> {p}");
        }
        assert_eq!(padded_len(0), MIN_PADDED_LEN);
        assert_eq!(padded_len(255), MIN_PADDED_LEN);
    }

    #[test]
    fn nonce_layout_is_stream_be32_with_zero_prefix() {
        let key = MediaKey::from_bytes([7u8; 32]);
        let chunks: [&[u8]; 3] = [b"first chunk", b"second chunk", b"last"];
        let mut reference = EncryptorBE32::<ChaCha20Poly1305>::new(
            Key::from_slice(key.as_bytes()),
            &[0u8; 7].into(),
        );
        let cipher = ChaCha20Poly1305::new(Key::from_slice(key.as_bytes()));
        for (i, chunk) in chunks.iter().enumerate() {
            let mut ours = chunk.to_vec();
            let last = i == chunks.len() - 1;
            let tag = cipher
                .encrypt_in_place_detached(&chunk_nonce(i as u32, last), b"", &mut ours)
                .unwrap();
            ours.extend_from_slice(&tag);
            if last {
                let theirs = reference.encrypt_last(*chunk).unwrap();
                assert_eq!(ours, theirs);
                break;
            }
            let theirs = reference.encrypt_next(*chunk).unwrap();
            assert_eq!(ours, theirs);
        }
        // And the nonce is "11-byte big-endian counter ‖ flag".
        assert_eq!(
            chunk_nonce(0x0102_0304, true).as_slice(),
            &[0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4, 1]
        );
    }

    #[test]
    fn ciphertext_len_is_exact() {
        for len in [0usize, 1, 255, 256, 65_535, 65_536, 65_537, 200_000] {
            let data = vec![0xAB; len];
            let (meta, ct) = encrypt_bytes(&data).unwrap();
            assert_eq!(ct.len() as u64, ciphertext_len(len as u64), "{len}");
            assert_eq!(meta.ciphertext_len, ct.len() as u64);
            assert_eq!(meta.blob, BlobHash::of(&ct));
            assert_eq!(
                decrypt_bytes(&meta.key, &ct, Some(&meta.blob)).unwrap(),
                data
            );
        }
    }

    #[test]
    fn key_debug_is_redacted_and_serde_round_trips() {
        let key = MediaKey::generate();
        assert_eq!(format!("{key:?}"), "MediaKey(***)");
        let json = serde_json::to_string(&key).unwrap();
        assert_eq!(serde_json::from_str::<MediaKey>(&json).unwrap(), key);
        assert!(serde_json::from_str::<MediaKey>("\"AAAA\"").is_err());
    }

    #[test]
    fn blob_hash_parses_only_lowercase_hex() {
        let h = BlobHash::of(b"x");
        assert_eq!(BlobHash::try_from(h.to_string().as_str()).unwrap(), h);
        assert!(BlobHash::try_from(h.to_string().to_uppercase().as_str()).is_err());
        assert!(BlobHash::try_from("abc").is_err());
    }
}
