//! Device identity: identifiers, the device's ed25519 key, the MLS credential
//! that binds them, and safety numbers.
//!
//! # The device identity key
//! Each device has one ed25519 key pair. It is both the device's long-term
//! identity key (what users compare through safety numbers) and its MLS
//! signature key in every group.
//!
//! # Credential encoding
//! A device's MLS credential is a `BasicCredential` whose `identity` is the
//! canonical [`DevicePublicIdentity::to_bytes`] encoding:
//!
//! ```text
//! 0x01                                  format version
//! u8 len ‖ user id (UTF-8)              e.g. "@alice:chat.example.org"
//! u8 len ‖ device id (ASCII)            e.g. "PHONE1"
//! 32 bytes                              ed25519 public identity key
//! ```
//!
//! On receipt (KeyPackages, Welcomes, Commits) the credential is parsed and its
//! key must equal the leaf's signature key
//! ([`DevicePublicIdentity::from_credential`]); a member's user and device id
//! may never change over the life of a leaf.
//!
//! # Safety numbers
//! [`safety_number`] gives the 60-digit number two users compare for a pair of
//! devices, in the shape of Signal's: for each device
//!
//! ```text
//! h_0     = SHA-512("parley-safety-number-v1" ‖ key ‖ credential identity bytes)
//! h_{i+1} = SHA-512(h_i ‖ key)            for i in 0..5200
//! digits  = for each of the first six 5-byte chunks c of h_5200:
//!           (c as a 40-bit big-endian integer) mod 100000, zero-padded to 5
//! ```
//!
//! gives 30 digits per device (the credential identity bytes contain the user
//! id, device id and key, see above). The two 30-digit strings are sorted and
//! concatenated, so both sides compute the same number regardless of order;
//! it is shown as 12 groups of 5 digits.

use std::fmt;

use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};
use openmls::prelude::{BasicCredential, Credential, CredentialType, CredentialWithKey};
use openmls_basic_credential::SignatureKeyPair;
use openmls_traits::signatures::{Signer, SignerError};
use openmls_traits::storage::{CURRENT_VERSION, StorageProvider};
use openmls_traits::types::SignatureScheme;
use serde::{Deserialize, Deserializer, Serialize};
use sha2::{Digest, Sha512};
use zeroize::Zeroizing;

use crate::error::{IdentityError, storage_msg};

const MAX_USER_ID_LEN: usize = 255;
const MAX_DEVICE_ID_LEN: usize = 64;
const CREDENTIAL_FORMAT_V1: u8 = 0x01;

/// A user id, `@localpart:server` (the same rules as `parley-client-api`'s
/// `UserId`: lowercase localpart of `a-z 0-9 . _ = - /`, a non-empty server
/// part without whitespace, at most 255 bytes).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct UserId(String);

/// A device id: 1–64 characters of `A-Z a-z 0-9 _ -`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct DeviceId(String);

fn validate_user_id(s: &str) -> Result<(), IdentityError> {
    if s.is_empty() || s.len() > MAX_USER_ID_LEN {
        return Err(IdentityError::InvalidUserId(
            "empty or longer than 255 bytes",
        ));
    }
    let rest = s
        .strip_prefix('@')
        .ok_or(IdentityError::InvalidUserId("must start with '@'"))?;
    let (local, server) = rest
        .split_once(':')
        .ok_or(IdentityError::InvalidUserId("needs a ':server' part"))?;
    if local.is_empty() {
        return Err(IdentityError::InvalidUserId("empty localpart"));
    }
    if !local
        .chars()
        .all(|c| matches!(c, 'a'..='z' | '0'..='9' | '.' | '_' | '=' | '-' | '/'))
    {
        return Err(IdentityError::InvalidUserId(
            "invalid character in localpart",
        ));
    }
    if server.is_empty() || server.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(IdentityError::InvalidUserId("invalid server part"));
    }
    Ok(())
}

fn validate_device_id(s: &str) -> Result<(), IdentityError> {
    if s.is_empty() || s.len() > MAX_DEVICE_ID_LEN {
        return Err(IdentityError::InvalidDeviceId("empty or longer than 64"));
    }
    if !s
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(IdentityError::InvalidDeviceId("invalid character"));
    }
    Ok(())
}

macro_rules! id_impls {
    ($name:ident, $validate:path) => {
        impl $name {
            /// The identifier as a string.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<&str> for $name {
            type Error = IdentityError;
            fn try_from(s: &str) -> Result<Self, IdentityError> {
                $validate(s)?;
                Ok(Self(s.to_owned()))
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::try_from(s.as_str()).map_err(serde::de::Error::custom)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), self.0)
            }
        }
    };
}

id_impls!(UserId, validate_user_id);
id_impls!(DeviceId, validate_device_id);

/// The public part of a device identity: who it is and its identity key.
/// This is what a credential carries, what the directory publishes, and what
/// safety numbers are computed from.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct DevicePublicIdentity {
    user_id: UserId,
    device_id: DeviceId,
    key: [u8; 32],
}

impl DevicePublicIdentity {
    /// Builds a public identity, checking that `key` is a valid ed25519 point.
    pub fn new(user_id: UserId, device_id: DeviceId, key: [u8; 32]) -> Result<Self, IdentityError> {
        VerifyingKey::from_bytes(&key).map_err(|_| IdentityError::InvalidKey)?;
        Ok(Self {
            user_id,
            device_id,
            key,
        })
    }

    /// The user this device belongs to.
    pub fn user_id(&self) -> &UserId {
        &self.user_id
    }

    /// The device id.
    pub fn device_id(&self) -> &DeviceId {
        &self.device_id
    }

    /// The ed25519 public identity key (also the MLS signature key).
    pub fn key(&self) -> &[u8; 32] {
        &self.key
    }

    /// The canonical encoding (see the module docs); also the MLS credential
    /// identity.
    pub fn to_bytes(&self) -> Vec<u8> {
        let u = self.user_id.as_str().as_bytes();
        let d = self.device_id.as_str().as_bytes();
        let mut out = Vec::with_capacity(3 + u.len() + d.len() + 32);
        out.push(CREDENTIAL_FORMAT_V1);
        // Lengths fit in a u8: validated at construction (≤ 255 and ≤ 64).
        out.push(u.len() as u8);
        out.extend_from_slice(u);
        out.push(d.len() as u8);
        out.extend_from_slice(d);
        out.extend_from_slice(&self.key);
        out
    }

    /// Parses the canonical encoding.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, IdentityError> {
        let (&version, rest) = bytes
            .split_first()
            .ok_or(IdentityError::Malformed("empty"))?;
        if version != CREDENTIAL_FORMAT_V1 {
            return Err(IdentityError::Malformed("unknown format version"));
        }
        let (user, rest) = take_len_prefixed(rest)?;
        let (device, rest) = take_len_prefixed(rest)?;
        let key: [u8; 32] = rest
            .try_into()
            .map_err(|_| IdentityError::Malformed("key must be 32 bytes"))?;
        let user =
            std::str::from_utf8(user).map_err(|_| IdentityError::Malformed("user id utf-8"))?;
        let device =
            std::str::from_utf8(device).map_err(|_| IdentityError::Malformed("device id utf-8"))?;
        Self::new(UserId::try_from(user)?, DeviceId::try_from(device)?, key)
    }

    /// Extracts the identity from an MLS credential and checks that it binds
    /// `signature_key` (the key of the leaf or KeyPackage that carries it).
    pub fn from_credential(
        credential: &Credential,
        signature_key: &[u8],
    ) -> Result<Self, IdentityError> {
        if credential.credential_type() != CredentialType::Basic {
            return Err(IdentityError::CredentialKeyMismatch);
        }
        let basic = BasicCredential::try_from(credential.clone())
            .map_err(|_| IdentityError::CredentialKeyMismatch)?;
        let identity = Self::from_bytes(basic.identity())?;
        if identity.key.as_slice() != signature_key {
            return Err(IdentityError::CredentialKeyMismatch);
        }
        Ok(identity)
    }

    /// The MLS credential for this identity.
    pub fn credential(&self) -> Credential {
        BasicCredential::new(self.to_bytes()).into()
    }

    pub(crate) fn credential_with_key(&self) -> CredentialWithKey {
        CredentialWithKey {
            credential: self.credential(),
            signature_key: self.key.to_vec().into(),
        }
    }
}

fn take_len_prefixed(bytes: &[u8]) -> Result<(&[u8], &[u8]), IdentityError> {
    let (&len, rest) = bytes
        .split_first()
        .ok_or(IdentityError::Malformed("truncated"))?;
    let len = usize::from(len);
    if rest.len() < len {
        return Err(IdentityError::Malformed("truncated"));
    }
    Ok(rest.split_at(len))
}

impl fmt::Debug for DevicePublicIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DevicePublicIdentity")
            .field("user_id", &self.user_id)
            .field("device_id", &self.device_id)
            .field("key", &hex::encode(self.key))
            .finish()
    }
}

/// A device's identity with its private key. Signs MLS messages (it is the
/// openmls [`Signer`]). The private key is zeroized on drop and never printed.
pub struct DeviceIdentity {
    public: DevicePublicIdentity,
    signing_key: SigningKey,
}

impl DeviceIdentity {
    /// Generates a fresh identity key for a device.
    pub fn generate(user_id: UserId, device_id: DeviceId) -> Self {
        let signing_key = SigningKey::generate(&mut chacha20poly1305::aead::OsRng);
        Self::from_signing_key(user_id, device_id, signing_key)
    }

    /// Rebuilds an identity from its 32-byte secret seed
    /// (see [`DeviceIdentity::secret_bytes`]).
    pub fn from_secret_bytes(user_id: UserId, device_id: DeviceId, secret: &[u8; 32]) -> Self {
        Self::from_signing_key(user_id, device_id, SigningKey::from_bytes(secret))
    }

    fn from_signing_key(user_id: UserId, device_id: DeviceId, signing_key: SigningKey) -> Self {
        let public = DevicePublicIdentity {
            user_id,
            device_id,
            key: signing_key.verifying_key().to_bytes(),
        };
        Self {
            public,
            signing_key,
        }
    }

    /// The 32-byte secret seed, for the caller's own encrypted key storage.
    /// Prefer [`DeviceIdentity::save`].
    pub fn secret_bytes(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.signing_key.to_bytes())
    }

    /// The public part.
    pub fn public(&self) -> &DevicePublicIdentity {
        &self.public
    }

    /// Stores the key pair in the openmls store (as an openmls
    /// `SignatureKeyPair` keyed by the public key).
    pub fn save<S: StorageProvider<CURRENT_VERSION>>(
        &self,
        storage: &S,
    ) -> Result<(), IdentityError> {
        let secret = self.secret_bytes();
        SignatureKeyPair::from_raw(
            SignatureScheme::ED25519,
            secret.to_vec(),
            self.public.key.to_vec(),
        )
        .store(storage)
        .map_err(|e| IdentityError::Storage(storage_msg(e)))
    }

    /// Loads a key pair stored with [`DeviceIdentity::save`]; `Ok(None)` if
    /// the store has no key for `public`.
    pub fn load<S: StorageProvider<CURRENT_VERSION>>(
        storage: &S,
        public: &DevicePublicIdentity,
    ) -> Result<Option<Self>, IdentityError> {
        let Some(pair) = SignatureKeyPair::read(storage, &public.key, SignatureScheme::ED25519)
        else {
            return Ok(None);
        };
        // openmls_basic_credential only exposes the private half through
        // serde; go through a zeroizing JSON round trip.
        let json = Zeroizing::new(
            serde_json::to_vec(&pair).map_err(|_| IdentityError::Malformed("stored key pair"))?,
        );
        let stored: StoredKeyPair = serde_json::from_slice(&json)
            .map_err(|_| IdentityError::Malformed("stored key pair"))?;
        let secret: Zeroizing<[u8; 32]> = Zeroizing::new(
            stored
                .private
                .as_slice()
                .try_into()
                .map_err(|_| IdentityError::Malformed("stored private key length"))?,
        );
        let identity =
            Self::from_secret_bytes(public.user_id.clone(), public.device_id.clone(), &secret);
        if identity.public.key != public.key {
            return Err(IdentityError::CredentialKeyMismatch);
        }
        Ok(Some(identity))
    }
}

#[derive(Deserialize, zeroize::Zeroize, zeroize::ZeroizeOnDrop)]
struct StoredKeyPair {
    private: Vec<u8>,
}

impl fmt::Debug for DeviceIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeviceIdentity")
            .field("public", &self.public)
            .field("signing_key", &"***")
            .finish()
    }
}

impl Signer for DeviceIdentity {
    fn sign(&self, payload: &[u8]) -> Result<Vec<u8>, SignerError> {
        Ok(self.signing_key.sign(payload).to_bytes().to_vec())
    }

    fn signature_scheme(&self) -> SignatureScheme {
        SignatureScheme::ED25519
    }
}

/// A 60-digit safety number for a pair of devices (see the module docs).
#[derive(Clone, PartialEq, Eq)]
pub struct SafetyNumber(String);

impl SafetyNumber {
    /// The 60 digits without separators.
    pub fn digits(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SafetyNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, group) in self.0.as_bytes().chunks(5).enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            // Digits are ASCII by construction.
            f.write_str(std::str::from_utf8(group).map_err(|_| fmt::Error)?)?;
        }
        Ok(())
    }
}

impl fmt::Debug for SafetyNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SafetyNumber({self})")
    }
}

const SAFETY_NUMBER_ITERATIONS: usize = 5200;
const SAFETY_NUMBER_LABEL: &[u8] = b"parley-safety-number-v1";

fn device_fingerprint_digits(id: &DevicePublicIdentity) -> String {
    let mut hasher = Sha512::new();
    hasher.update(SAFETY_NUMBER_LABEL);
    hasher.update(id.key);
    hasher.update(id.to_bytes());
    let mut hash = hasher.finalize();
    for _ in 0..SAFETY_NUMBER_ITERATIONS {
        let mut hasher = Sha512::new();
        hasher.update(hash);
        hasher.update(id.key);
        hash = hasher.finalize();
    }
    let mut out = String::with_capacity(30);
    for chunk in hash[..30].chunks(5) {
        let value = chunk.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
        out.push_str(&format!("{:05}", value % 100_000));
    }
    out
}

/// The safety number two users compare to verify a pair of devices. The
/// result does not depend on the order of the arguments.
pub fn safety_number(a: &DevicePublicIdentity, b: &DevicePublicIdentity) -> SafetyNumber {
    let mut parts = [device_fingerprint_digits(a), device_fingerprint_digits(b)];
    parts.sort();
    SafetyNumber(parts.concat())
}

const USER_SAFETY_NUMBER_LABEL: &[u8] = b"parley-user-safety-number-v1";

/// The canonical list of one user's devices that [`user_safety_number`] hashes:
/// `u8 len ‖ user id ‖ (u16be len ‖ DevicePublicIdentity::to_bytes)*`, the
/// encodings sorted bytewise and deduplicated. `None` if a device names another
/// user or the list is empty.
fn user_device_list(user: &UserId, devices: &[DevicePublicIdentity]) -> Option<Vec<u8>> {
    if devices.is_empty() || devices.iter().any(|d| &d.user_id != user) {
        return None;
    }
    let mut encodings: Vec<Vec<u8>> = devices.iter().map(DevicePublicIdentity::to_bytes).collect();
    encodings.sort();
    encodings.dedup();
    let u = user.as_str().as_bytes();
    let mut out =
        Vec::with_capacity(1 + u.len() + encodings.iter().map(|e| 2 + e.len()).sum::<usize>());
    // Validated at construction: ≤ 255 bytes; an encoding is ≤ 354 bytes.
    out.push(u.len() as u8);
    out.extend_from_slice(u);
    for e in encodings {
        out.extend_from_slice(&(e.len() as u16).to_be_bytes());
        out.extend_from_slice(&e);
    }
    Some(out)
}

fn user_fingerprint_digits(list: &[u8]) -> String {
    let mut hasher = Sha512::new();
    hasher.update(USER_SAFETY_NUMBER_LABEL);
    hasher.update(list);
    let mut hash = hasher.finalize();
    for _ in 0..SAFETY_NUMBER_ITERATIONS {
        let mut hasher = Sha512::new();
        hasher.update(hash);
        hasher.update(list);
        hash = hasher.finalize();
    }
    let mut out = String::with_capacity(30);
    for chunk in hash[..30].chunks(5) {
        let value = chunk.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
        out.push_str(&format!("{:05}", value % 100_000));
    }
    out
}

/// The safety number two users compare to verify each other (spec/devices.md,
/// DV1): it covers every device of both users, so it changes when either adds
/// or removes a device. For each user, over the canonical list `L` of its
/// devices (see `user_device_list`):
///
/// ```text
/// h_0     = SHA-512("parley-user-safety-number-v1" ‖ L)
/// h_{i+1} = SHA-512(h_i ‖ L)            for i in 0..5200
/// digits  = for each of the first six 5-byte chunks c of h_5200:
///           (c as a 40-bit big-endian integer) mod 100000, zero-padded to 5
/// ```
///
/// The two 30-digit strings are sorted and concatenated. `None` if either list
/// is empty or names a device of another user.
pub fn user_safety_number(
    a: (&UserId, &[DevicePublicIdentity]),
    b: (&UserId, &[DevicePublicIdentity]),
) -> Option<SafetyNumber> {
    let mut parts = [
        user_fingerprint_digits(&user_device_list(a.0, a.1)?),
        user_fingerprint_digits(&user_device_list(b.0, b.1)?),
    ];
    parts.sort();
    Some(SafetyNumber(parts.concat()))
}

/// What a QR code for verifying shows (spec/devices.md, DV2):
/// `parley-verify:1:<user a>:<user b>:<60 digits>`, the user ids sorted.
pub fn verify_qr_payload(a: &UserId, b: &UserId, number: &SafetyNumber) -> String {
    let (x, y) = if a <= b { (a, b) } else { (b, a) };
    format!("parley-verify:1:{x}:{y}:{}", number.digits())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids() -> (UserId, DeviceId) {
        (
            UserId::try_from("@alice:chat.example.org").unwrap(),
            DeviceId::try_from("PHONE1").unwrap(),
        )
    }

    #[test]
    fn identifiers_are_validated() {
        assert!(UserId::try_from("@bob:127.0.0.2:8448").is_ok());
        for bad in ["", "alice:x", "@:x", "@Alice:x", "@a", "@a:", "@a:b c"] {
            assert!(UserId::try_from(bad).is_err(), "{bad}");
        }
        assert!(DeviceId::try_from("ABC_def-9").is_ok());
        for bad in ["", "a b", "é", &"x".repeat(65)] {
            assert!(DeviceId::try_from(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn public_identity_round_trips_and_rejects_garbage() {
        let (u, d) = ids();
        let id = DeviceIdentity::generate(u, d);
        let bytes = id.public().to_bytes();
        assert_eq!(
            &DevicePublicIdentity::from_bytes(&bytes).unwrap(),
            id.public()
        );
        for cut in 0..bytes.len() {
            assert!(DevicePublicIdentity::from_bytes(&bytes[..cut]).is_err());
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(DevicePublicIdentity::from_bytes(&longer).is_err());
    }

    #[test]
    fn credential_must_bind_the_signature_key() {
        let (u, d) = ids();
        let a = DeviceIdentity::generate(u.clone(), d.clone());
        let b = DeviceIdentity::generate(u, d);
        let cred = a.public().credential();
        assert!(DevicePublicIdentity::from_credential(&cred, a.public().key()).is_ok());
        assert_eq!(
            DevicePublicIdentity::from_credential(&cred, b.public().key()),
            Err(IdentityError::CredentialKeyMismatch)
        );
    }

    #[test]
    fn secrets_do_not_leak_into_debug() {
        let (u, d) = ids();
        let id = DeviceIdentity::generate(u, d);
        let secret_hex = hex::encode(*id.secret_bytes());
        let dbg = format!("{id:?}");
        assert!(dbg.contains("***"));
        assert!(!dbg.contains(&secret_hex));
    }

    #[test]
    fn secret_round_trip_keeps_the_key() {
        let (u, d) = ids();
        let id = DeviceIdentity::generate(u.clone(), d.clone());
        let again = DeviceIdentity::from_secret_bytes(u, d, &id.secret_bytes());
        assert_eq!(id.public(), again.public());
    }

    #[test]
    fn safety_number_is_symmetric_and_sensitive() {
        let a = DeviceIdentity::generate(
            UserId::try_from("@alice:a.example").unwrap(),
            DeviceId::try_from("A1").unwrap(),
        );
        let b = DeviceIdentity::generate(
            UserId::try_from("@bob:b.example").unwrap(),
            DeviceId::try_from("B1").unwrap(),
        );
        let c = DeviceIdentity::generate(
            UserId::try_from("@bob:b.example").unwrap(),
            DeviceId::try_from("B1").unwrap(),
        );
        let ab = safety_number(a.public(), b.public());
        assert_eq!(ab, safety_number(b.public(), a.public()));
        assert_ne!(ab, safety_number(a.public(), c.public()));
        assert_eq!(ab.digits().len(), 60);
        assert!(ab.digits().bytes().all(|c| c.is_ascii_digit()));
        assert_eq!(ab.to_string().split(' ').count(), 12);
    }

    #[test]
    fn safety_number_is_stable() {
        // A fixed vector so that a change to the derivation is noticed.
        let a = DeviceIdentity::from_secret_bytes(
            UserId::try_from("@alice:chat.example.org").unwrap(),
            DeviceId::try_from("A").unwrap(),
            &[1u8; 32],
        );
        let b = DeviceIdentity::from_secret_bytes(
            UserId::try_from("@bob:chat.example.org").unwrap(),
            DeviceId::try_from("B").unwrap(),
            &[2u8; 32],
        );
        let n = safety_number(a.public(), b.public());
        assert_eq!(n.digits(), SAFETY_NUMBER_VECTOR, "{n}");
    }

    #[test]
    fn user_safety_number_covers_every_device_in_any_order() {
        let alice = UserId::try_from("@alice:a.example").unwrap();
        let bob = UserId::try_from("@bob:b.example").unwrap();
        let dev = |u: &UserId, d: &str, seed: u8| {
            DeviceIdentity::from_secret_bytes(
                u.clone(),
                DeviceId::try_from(d).unwrap(),
                &[seed; 32],
            )
            .public()
            .clone()
        };
        let a1 = dev(&alice, "A1", 1);
        let a2 = dev(&alice, "A2", 2);
        let b1 = dev(&bob, "B1", 3);
        let one = user_safety_number(
            (&alice, std::slice::from_ref(&a1)),
            (&bob, std::slice::from_ref(&b1)),
        )
        .unwrap();
        let two = user_safety_number(
            (&alice, &[a1.clone(), a2.clone()]),
            (&bob, std::slice::from_ref(&b1)),
        )
        .unwrap();
        assert_ne!(one, two);
        assert_eq!(
            two,
            user_safety_number(
                (&bob, std::slice::from_ref(&b1)),
                (&alice, &[a2.clone(), a1.clone(), a2.clone()])
            )
            .unwrap()
        );
        assert!(
            user_safety_number(
                (&alice, std::slice::from_ref(&b1)),
                (&bob, std::slice::from_ref(&b1))
            )
            .is_none()
        );
        assert!(user_safety_number((&alice, &[]), (&bob, std::slice::from_ref(&b1))).is_none());
        let qr = verify_qr_payload(&bob, &alice, &two);
        assert_eq!(
            qr,
            format!(
                "parley-verify:1:@alice:a.example:@bob:b.example:{}",
                two.digits()
            )
        );
    }

    const SAFETY_NUMBER_VECTOR: &str =
        "177234810834601319784395215433796262146835286075233399567567";
}
