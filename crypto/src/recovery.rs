//! Backup keys: the random 256-bit key shown once as a recovery key, and the optional
//! passphrase mode (Argon2id). `spec/backup.md` BK7–BK10 fixes both encodings.
//!
//! # Recovery key
//! 40 bytes — `0x01` (the encoding's version) ‖ the 32-byte key ‖ the first 7 bytes of
//! `SHA-256("parley recovery key" ‖ 0x01 ‖ key)` (the checksum) — written in Crockford
//! base32 (alphabet `0123456789ABCDEFGHJKMNPQRSTVWXYZ`, 5 bits per character, most
//! significant first): exactly 64 characters, shown as 16 groups of 4 separated by
//! spaces. Parsing ignores spaces and `-`, is case-insensitive and reads `O` as `0` and
//! `I`/`L` as `1` (Crockford's rule); a wrong length, a character outside the
//! alphabet, another version or a checksum mismatch is refused before any network
//! request, so a typo never reaches the backup (a changed character passes the 56-bit
//! checksum with probability 2^-56).
//!
//! # Passphrase
//! The key is Argon2id (RFC 9106, version 0x13) of the passphrase (UTF-8, as typed)
//! with a random 16-byte salt, 32 bytes of output, and the parameters stored beside the
//! backup (by default m = 64 MiB, t = 3, p = 1; at least m = 19 MiB, t = 2 are
//! accepted). A passphrase is only as strong as it is unpredictable: anyone who gets
//! the backup (the server's operator included) can try guesses offline, each costing
//! one Argon2id evaluation. Weak passphrases can be guessed; the random recovery key
//! cannot.

use std::fmt;

use chacha20poly1305::aead::{OsRng, rand_core::RngCore};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::{Zeroize, Zeroizing};

use crate::archive::ArchiveKey;

const VERSION: u8 = 1;
const CHECKSUM_LEN: usize = 7;
const RAW_LEN: usize = 1 + 32 + CHECKSUM_LEN;
/// Characters in a recovery key (without the spaces).
pub const RECOVERY_KEY_CHARS: usize = RAW_LEN * 8 / 5;
const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
const DOMAIN: &[u8] = b"parley recovery key";

/// Why a typed recovery key was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecoveryKeyError {
    #[error("a recovery key has 64 characters (without spaces); this one has {0}")]
    Length(usize),
    #[error("{0:?} (character {1}) cannot be in a recovery key")]
    Character(char, usize),
    #[error("this recovery key has a typo (its checksum does not match)")]
    Checksum,
    #[error("this recovery key is of an unknown kind (version {0})")]
    Version(u8),
}

/// A backup's random key, shown to the user once as a recovery key.
#[derive(Clone, PartialEq, Eq)]
pub struct RecoveryKey(ArchiveKey);

impl fmt::Debug for RecoveryKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RecoveryKey(***)")
    }
}

fn checksum(key: &[u8; 32]) -> [u8; CHECKSUM_LEN] {
    let mut h = Sha256::new();
    h.update(DOMAIN);
    h.update([VERSION]);
    h.update(key);
    let d = h.finalize();
    let mut out = [0u8; CHECKSUM_LEN];
    out.copy_from_slice(&d[..CHECKSUM_LEN]);
    out
}

impl RecoveryKey {
    /// A fresh random key.
    pub fn generate() -> Self {
        Self(ArchiveKey::generate())
    }

    /// The key that seals the backup.
    pub fn key(&self) -> &ArchiveKey {
        &self.0
    }

    /// Wraps an existing key.
    pub fn from_key(key: ArchiveKey) -> Self {
        Self(key)
    }

    /// The 64 characters as 16 space-separated groups of 4.
    pub fn display(&self) -> Zeroizing<String> {
        let mut raw = Zeroizing::new([0u8; RAW_LEN]);
        raw[0] = VERSION;
        raw[1..33].copy_from_slice(self.0.as_bytes());
        raw[33..].copy_from_slice(&checksum(self.0.as_bytes()));
        let mut out = Zeroizing::new(String::with_capacity(RECOVERY_KEY_CHARS + 15));
        let mut acc: u64 = 0;
        let mut bits = 0;
        let mut n = 0;
        for &b in raw.iter() {
            acc = (acc << 8) | u64::from(b);
            bits += 8;
            while bits >= 5 {
                bits -= 5;
                if n > 0 && n % 4 == 0 {
                    out.push(' ');
                }
                out.push(ALPHABET[((acc >> bits) & 31) as usize] as char);
                n += 1;
            }
        }
        acc.zeroize();
        out
    }

    /// Reads a typed recovery key (see the module docs for what is tolerated).
    pub fn parse(typed: &str) -> Result<Self, RecoveryKeyError> {
        let mut values = Zeroizing::new(Vec::with_capacity(RECOVERY_KEY_CHARS));
        for (i, c) in typed
            .chars()
            .filter(|c| !c.is_whitespace() && *c != '-')
            .enumerate()
        {
            let v = match c.to_ascii_uppercase() {
                'O' => 0,
                'I' | 'L' => 1,
                u => match ALPHABET.iter().position(|&a| a as char == u) {
                    Some(p) => p as u8,
                    None => return Err(RecoveryKeyError::Character(c, i + 1)),
                },
            };
            values.push(v);
        }
        if values.len() != RECOVERY_KEY_CHARS {
            return Err(RecoveryKeyError::Length(values.len()));
        }
        let mut raw = Zeroizing::new([0u8; RAW_LEN]);
        let mut acc: u64 = 0;
        let mut bits = 0;
        let mut n = 0;
        for &v in values.iter() {
            acc = (acc << 5) | u64::from(v);
            bits += 5;
            if bits >= 8 {
                bits -= 8;
                raw[n] = ((acc >> bits) & 0xff) as u8;
                n += 1;
            }
        }
        acc.zeroize();
        let mut key = [0u8; 32];
        key.copy_from_slice(&raw[1..33]);
        let ok = checksum(&key)[..] == raw[33..];
        let version = raw[0];
        let key = ArchiveKey::from_bytes(key);
        if !ok {
            return Err(RecoveryKeyError::Checksum);
        }
        if version != VERSION {
            return Err(RecoveryKeyError::Version(version));
        }
        Ok(Self(key))
    }
}

/// Argon2id parameters of a passphrase-derived key (stored beside the backup; none of
/// it is secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PassphraseParams {
    /// 16 random bytes, lowercase hex.
    pub salt: String,
    /// Memory in KiB.
    pub m_kib: u32,
    /// Iterations.
    pub t: u32,
    /// Lanes.
    pub p: u32,
}

/// Why a key could not be derived from a passphrase.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PassphraseError {
    #[error("the passphrase is empty")]
    Empty,
    #[error("unusable Argon2id parameters: {0}")]
    Params(String),
}

/// The smallest accepted memory cost (OWASP's Argon2id minimum), KiB.
pub const MIN_M_KIB: u32 = 19 * 1024;

impl PassphraseParams {
    /// Fresh parameters: a random salt, m = 64 MiB, t = 3, p = 1.
    pub fn generate() -> Self {
        let mut salt = [0u8; 16];
        OsRng.fill_bytes(&mut salt);
        Self {
            salt: hex::encode(salt),
            m_kib: 64 * 1024,
            t: 3,
            p: 1,
        }
    }

    /// Derives the backup key from `passphrase`.
    pub fn derive(&self, passphrase: &str) -> Result<ArchiveKey, PassphraseError> {
        if passphrase.is_empty() {
            return Err(PassphraseError::Empty);
        }
        let salt = hex::decode(&self.salt)
            .ok()
            .filter(|s| s.len() == 16)
            .ok_or_else(|| PassphraseError::Params("the salt is not 16 bytes of hex".into()))?;
        if self.m_kib < MIN_M_KIB || self.t < 2 || self.p == 0 || self.m_kib > 4 * 1024 * 1024 {
            return Err(PassphraseError::Params(format!(
                "m={} KiB t={} p={}",
                self.m_kib, self.t, self.p
            )));
        }
        let params = argon2::Params::new(self.m_kib, self.t, self.p, Some(32))
            .map_err(|e| PassphraseError::Params(e.to_string()))?;
        let argon =
            argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        let mut out = [0u8; 32];
        argon
            .hash_password_into(passphrase.as_bytes(), &salt, &mut out)
            .map_err(|e| PassphraseError::Params(e.to_string()))?;
        let key = ArchiveKey::from_bytes(out);
        out.zeroize();
        Ok(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovery_key_round_trips_in_64_characters() {
        let k = RecoveryKey::generate();
        let shown = k.display();
        assert_eq!(shown.len(), 64 + 15);
        assert_eq!(shown.split(' ').count(), 16);
        assert!(shown.split(' ').all(|g| g.len() == 4));
        assert_eq!(RecoveryKey::parse(&shown).unwrap(), k);
        // Lowercase, dashes, no spaces, O for 0 and l for 1.
        let sloppy = shown
            .replace(' ', "-")
            .to_lowercase()
            .replace('0', "o")
            .replace('1', "l");
        assert_eq!(RecoveryKey::parse(&sloppy).unwrap(), k);
        assert_eq!(format!("{k:?}"), "RecoveryKey(***)");
    }

    #[test]
    fn typos_are_caught() {
        let k = RecoveryKey::generate();
        let shown: Vec<char> = k.display().chars().filter(|c| *c != ' ').collect();
        for i in 0..shown.len() {
            let mut t = shown.clone();
            t[i] = if t[i] == 'X' { 'Y' } else { 'X' };
            let s: String = t.into_iter().collect();
            assert!(RecoveryKey::parse(&s).is_err(), "changed character {i}");
        }
        let mut swapped = shown.clone();
        let j = (0..63).find(|&j| swapped[j] != swapped[j + 1]).unwrap();
        swapped.swap(j, j + 1);
        let s: String = swapped.into_iter().collect();
        assert!(RecoveryKey::parse(&s).is_err());
        let short: String = shown[..63].iter().collect();
        assert_eq!(
            RecoveryKey::parse(&short),
            Err(RecoveryKeyError::Length(63))
        );
        let mut u = shown.clone();
        u[5] = 'U';
        let s: String = u.into_iter().collect();
        assert_eq!(
            RecoveryKey::parse(&s),
            Err(RecoveryKeyError::Character('U', 6))
        );
    }

    #[test]
    fn a_known_key_has_a_fixed_encoding() {
        let k = RecoveryKey::from_key(ArchiveKey::from_bytes([0u8; 32]));
        let shown = k.display();
        assert!(shown.starts_with("0400 0000"), "{}", *shown);
        assert_eq!(RecoveryKey::parse(&shown).unwrap(), k);
    }

    #[test]
    fn passphrase_derivation_is_deterministic_per_salt() {
        let p = PassphraseParams {
            m_kib: MIN_M_KIB,
            t: 2,
            ..PassphraseParams::generate()
        };
        let a = p.derive("correct horse battery staple").unwrap();
        assert_eq!(a, p.derive("correct horse battery staple").unwrap());
        assert_ne!(a, p.derive("correct horse battery stapler").unwrap());
        let other = PassphraseParams {
            salt: PassphraseParams::generate().salt,
            ..p.clone()
        };
        assert_ne!(a, other.derive("correct horse battery staple").unwrap());
        assert_eq!(p.derive(""), Err(PassphraseError::Empty));
        let weak = PassphraseParams { m_kib: 1024, ..p };
        assert!(matches!(weak.derive("x"), Err(PassphraseError::Params(_))));
    }
}
