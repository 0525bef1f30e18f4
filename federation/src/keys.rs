//! The server's signing key, its key id and its libp2p identity.
//!
//! - Key id: the RFC 7638 JWK SHA-256 thumbprint of the key as an RFC 8037 OKP JWK,
//!   `{"crv":"Ed25519","kty":"OKP","x":"<base64url>"}`, itself base64url. That string is
//!   the `keyid` of every signature and the `kid` in the key directory; people see it as
//!   `ed25519:<thumbprint>` ([`KeyId`]'s `Display`).
//! - PeerId: the identity multihash of the libp2p protobuf public key,
//!   `00 24 08 01 12 20 ‖ pubkey` ([`ServerPublicKey::peer_id_bytes`]).
//! - Storage: the 32-byte seed, or PKCS#8 v1 (RFC 8410) in DER or PEM. Where the file
//!   lives is the homeserver's business.
//!
//! Secrets zeroize on drop and print as `***`.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};
use sha2::{Digest as _, Sha256};
use zeroize::Zeroizing;

/// Why key material could not be loaded or a signature not checked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("an Ed25519 key is 32 bytes, got {0}")]
    Length(usize),
    #[error("not an Ed25519 PKCS#8 v1 private key (RFC 8410)")]
    Pkcs8,
    #[error("not a PEM \"PRIVATE KEY\" block")]
    Pem,
    #[error("bad base64: {0}")]
    Base64(String),
    #[error("not a valid Ed25519 public key")]
    PublicKey,
    #[error("the operating system's random source failed")]
    Random,
}

/// The signature did not verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("signature does not verify")]
pub struct BadSignature;

/// The DER prefix of an RFC 8410 Ed25519 `OneAsymmetricKey` v1 before the 32-byte seed.
const PKCS8_V1_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// A server's Ed25519 signing key. Zeroized on drop; `Debug` prints `***`.
#[derive(Clone)]
pub struct ServerSigningKey {
    inner: SigningKey,
}

impl ServerSigningKey {
    /// A fresh key from the operating system's random source.
    pub fn generate() -> Result<Self, KeyError> {
        use rand::TryRngCore as _;
        let mut seed = Zeroizing::new([0u8; 32]);
        rand::rngs::OsRng
            .try_fill_bytes(seed.as_mut())
            .map_err(|_| KeyError::Random)?;
        Ok(Self::from_seed(&seed))
    }

    /// The key whose RFC 8032 private seed is `seed`.
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        Self {
            inner: SigningKey::from_bytes(seed),
        }
    }

    /// The key from a 32-byte seed given as a slice.
    pub fn from_seed_slice(seed: &[u8]) -> Result<Self, KeyError> {
        let seed: &[u8; 32] = seed.try_into().map_err(|_| KeyError::Length(seed.len()))?;
        Ok(Self::from_seed(seed))
    }

    /// The 32-byte seed (keep it secret).
    pub fn to_seed(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.inner.to_bytes())
    }

    /// PKCS#8 v1 DER (RFC 8410), as `openssl genpkey -algorithm ed25519` writes it.
    pub fn to_pkcs8_der(&self) -> Zeroizing<Vec<u8>> {
        let mut der = Zeroizing::new(Vec::with_capacity(48));
        der.extend_from_slice(&PKCS8_V1_PREFIX);
        der.extend_from_slice(self.to_seed().as_ref());
        der
    }

    /// Reads PKCS#8 v1 DER (RFC 8410).
    pub fn from_pkcs8_der(der: &[u8]) -> Result<Self, KeyError> {
        match der.strip_prefix(&PKCS8_V1_PREFIX[..]) {
            Some(seed) if seed.len() == 32 => Self::from_seed_slice(seed),
            _ => Err(KeyError::Pkcs8),
        }
    }

    /// PKCS#8 v1 in a PEM `PRIVATE KEY` block.
    pub fn to_pkcs8_pem(&self) -> Zeroizing<String> {
        let b64 = Zeroizing::new(STANDARD.encode(self.to_pkcs8_der().as_slice()));
        Zeroizing::new(format!(
            "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
            b64.as_str()
        ))
    }

    /// Reads a PEM `PRIVATE KEY` block holding PKCS#8 v1.
    pub fn from_pkcs8_pem(pem: &str) -> Result<Self, KeyError> {
        let body = pem
            .trim()
            .strip_prefix("-----BEGIN PRIVATE KEY-----")
            .and_then(|s| s.strip_suffix("-----END PRIVATE KEY-----"))
            .ok_or(KeyError::Pem)?;
        let b64: Zeroizing<String> =
            Zeroizing::new(body.chars().filter(|c| !c.is_whitespace()).collect());
        let der = Zeroizing::new(
            STANDARD
                .decode(b64.as_bytes())
                .map_err(|e| KeyError::Base64(e.to_string()))?,
        );
        Self::from_pkcs8_der(&der)
    }

    pub fn public(&self) -> ServerPublicKey {
        ServerPublicKey(self.inner.verifying_key())
    }

    /// The key id (JWK thumbprint) of the public half.
    pub fn key_id(&self) -> KeyId {
        self.public().key_id()
    }

    /// An Ed25519 signature over `msg`.
    pub fn sign(&self, msg: &[u8]) -> [u8; 64] {
        self.inner.sign(msg).to_bytes()
    }
}

impl fmt::Debug for ServerSigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// A server's Ed25519 public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ServerPublicKey(VerifyingKey);

impl ServerPublicKey {
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, KeyError> {
        let bytes: &[u8; 32] = bytes
            .try_into()
            .map_err(|_| KeyError::Length(bytes.len()))?;
        VerifyingKey::from_bytes(bytes)
            .map(Self)
            .map_err(|_| KeyError::PublicKey)
    }

    /// From a JWK's `x` member (base64url, no padding).
    pub fn from_jwk_x(x: &str) -> Result<Self, KeyError> {
        let bytes = URL_SAFE_NO_PAD
            .decode(x.as_bytes())
            .map_err(|e| KeyError::Base64(e.to_string()))?;
        Self::from_bytes(&bytes)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        self.0.as_bytes()
    }

    /// The JWK `x` member: the key, base64url without padding.
    pub fn jwk_x(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.0.as_bytes())
    }

    /// The RFC 7638 thumbprint of `{"crv":"Ed25519","kty":"OKP","x":…}` (RFC 8037 A.3).
    pub fn key_id(&self) -> KeyId {
        let canonical = format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{}"}}"#, self.jwk_x());
        KeyId(URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes())))
    }

    /// The libp2p PeerId bytes: identity multihash of the protobuf public key,
    /// `00 24 08 01 12 20 ‖ pubkey`.
    pub fn peer_id_bytes(&self) -> [u8; 38] {
        let mut out = [0u8; 38];
        out[..6].copy_from_slice(&[0x00, 0x24, 0x08, 0x01, 0x12, 0x20]);
        out[6..].copy_from_slice(self.0.as_bytes());
        out
    }

    /// The PeerId as libp2p prints it (base58btc, `12D3KooW…`).
    pub fn peer_id_base58(&self) -> String {
        base58(&self.peer_id_bytes())
    }

    /// Checks an Ed25519 signature (strict: rejects small-order keys and non-canonical
    /// signatures).
    pub fn verify(&self, msg: &[u8], signature: &[u8]) -> Result<(), BadSignature> {
        let sig = ed25519_dalek::Signature::from_slice(signature).map_err(|_| BadSignature)?;
        self.0.verify_strict(msg, &sig).map_err(|_| BadSignature)
    }
}

impl fmt::Debug for ServerPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ServerPublicKey({})", self.jwk_x())
    }
}

/// A key id: the base64url JWK thumbprint. [`KeyId::as_str`] is the wire form (`keyid`,
/// `kid`); `Display` is the form people see, `ed25519:<thumbprint>`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct KeyId(String);

impl KeyId {
    /// A key id as received (not checked against any key).
    pub fn new(thumbprint: impl Into<String>) -> Self {
        Self(thumbprint.into())
    }

    /// The thumbprint, as it appears on the wire.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Reads the display form `ed25519:<thumbprint>` (or a bare thumbprint).
    pub fn from_display(s: &str) -> Self {
        Self(s.strip_prefix("ed25519:").unwrap_or(s).to_owned())
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ed25519:{}", self.0)
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId(ed25519:{})", self.0)
    }
}

/// Base58 with the Bitcoin alphabet (as multibase `z` / libp2p use it).
fn base58(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 58] = b"123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz";
    let zeros = bytes.iter().take_while(|&&b| b == 0).count();
    // Little-endian base-58 digits.
    let mut digits: Vec<u8> = Vec::with_capacity(bytes.len() * 138 / 100 + 1);
    for &byte in &bytes[zeros..] {
        let mut carry = u32::from(byte);
        for d in digits.iter_mut() {
            carry += u32::from(*d) << 8;
            *d = (carry % 58) as u8;
            carry /= 58;
        }
        while carry > 0 {
            digits.push((carry % 58) as u8);
            carry /= 58;
        }
    }
    let mut out = String::with_capacity(zeros + digits.len());
    out.extend(std::iter::repeat_n('1', zeros));
    out.extend(digits.iter().rev().map(|&d| ALPHABET[d as usize] as char));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 8037 Appendix A.1–A.3: the Ed25519 key and its JWK thumbprint.
    #[test]
    fn rfc8037_thumbprint() {
        let d = URL_SAFE_NO_PAD
            .decode("nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A")
            .unwrap();
        let key = ServerSigningKey::from_seed_slice(&d).unwrap();
        assert_eq!(
            key.public().jwk_x(),
            "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"
        );
        assert_eq!(
            key.key_id().as_str(),
            "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
        );
        assert_eq!(
            key.key_id().to_string(),
            "ed25519:kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
        );
    }

    /// RFC 9421 Appendix B.1.4: `test-key-ed25519` as PKCS#8 PEM.
    #[test]
    fn rfc9421_test_key_from_pem() {
        let pem = "-----BEGIN PRIVATE KEY-----\n\
                   MC4CAQAwBQYDK2VwBCIEIJ+DYvh6SEqVTm50DFtMDoQikTmiCqirVv9mWG9qfSnF\n\
                   -----END PRIVATE KEY-----\n";
        let key = ServerSigningKey::from_pkcs8_pem(pem).unwrap();
        assert_eq!(
            key.public().jwk_x(),
            "JrQLj5P_89iXES9-vFgrIy29clF9CC_oPPsw3c5D0bs"
        );
        assert_eq!(key.to_pkcs8_pem().as_str(), pem);
        let again = ServerSigningKey::from_pkcs8_der(&key.to_pkcs8_der()).unwrap();
        assert_eq!(again.public(), key.public());
        assert!(ServerSigningKey::from_pkcs8_der(&[0u8; 48]).is_err());
    }

    #[test]
    fn secrets_do_not_print() {
        let key = ServerSigningKey::from_seed(&[7; 32]);
        assert_eq!(format!("{key:?}"), "***");
        assert_eq!(format!("{:?}", Some(&key)), "Some(***)");
    }

    #[test]
    fn sign_and_verify() {
        let key = ServerSigningKey::generate().unwrap();
        let sig = key.sign(b"hello");
        key.public().verify(b"hello", &sig).unwrap();
        assert_eq!(key.public().verify(b"hellO", &sig), Err(BadSignature));
        assert_eq!(key.public().verify(b"hello", &sig[..63]), Err(BadSignature));
    }

    #[test]
    fn peer_id() {
        let key = ServerSigningKey::from_seed(&[1; 32]);
        let bytes = key.public().peer_id_bytes();
        assert_eq!(&bytes[..6], &[0x00, 0x24, 0x08, 0x01, 0x12, 0x20]);
        assert_eq!(&bytes[6..], key.public().as_bytes());
        let text = key.public().peer_id_base58();
        assert!(text.starts_with("12D3KooW"), "{text}");
        assert_eq!(text.len(), 52);
    }

    #[test]
    fn base58_known_values() {
        assert_eq!(base58(b""), "");
        assert_eq!(base58(&[0, 0, 1]), "112");
        assert_eq!(base58(b"hello world"), "StV1DL6CwTryKyV");
    }
}
