//! Linking a new device: the link code and the two sealed messages of the
//! rendezvous (spec/devices.md, rules DL1–DL6).
//!
//! The new device makes a [`LinkCode`]: 15 random bytes, shown as 24 base32
//! characters in six groups of four (`ABCD-EFGH-…`). Its first 5 bytes, in hex,
//! are the **link id**, the only part the server sees; the other 10 bytes are
//! the **link secret** `S`, which never leaves the two devices (the user carries
//! it from one screen to the other).
//!
//! ```text
//! request  = nonce(12) ‖ ChaCha20-Poly1305(K_req, nonce, aad = link id,
//!              u16be(len) ‖ new device identity (DevicePublicIdentity::to_bytes) ‖ x25519 public key N)
//! K_req    = SHA-256("parley-link-v1 request" ‖ link id ‖ S)
//!
//! approval = E(32) ‖ nonce(12) ‖ ChaCha20-Poly1305(K_app, nonce, aad = link id,
//!              u16be(len) ‖ approver identity ‖ payload)
//! K_app    = SHA-256("parley-link-v1 approval" ‖ link id ‖ S ‖ X25519(e, N) ‖ E ‖ N)
//! ```
//!
//! `E = e·G` is the approver's fresh X25519 key. Both keys depend on `S`, so the
//! server can neither read nor forge either message: it cannot substitute its
//! own device for the one the user sees, nor pose as the approver. The payload
//! is the caller's (the SDK puts the history transfer key there).

use std::fmt;

use chacha20poly1305::aead::{Aead, KeyInit, OsRng, Payload, rand_core::RngCore};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use sha2::{Digest, Sha256};
use x25519_dalek::{EphemeralSecret, PublicKey};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::identity::DevicePublicIdentity;

/// Bytes of a link code: 5 of link id, 10 of secret.
const CODE_LEN: usize = 15;
const ID_LEN: usize = 5;
const NONCE_LEN: usize = 12;
const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
const REQUEST_LABEL: &[u8] = b"parley-link-v1 request";
const APPROVAL_LABEL: &[u8] = b"parley-link-v1 approval";
/// What a QR code of a link code holds before the code.
pub const QR_PREFIX: &str = "parley-link:1:";

/// Why a link message was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    /// Not 24 base32 characters (dashes and spaces aside).
    #[error("not a link code: expected 24 characters A-Z 2-7 (dashes optional)")]
    MalformedCode,
    /// The message does not open with this code: another code, or altered on the way.
    #[error("the link data does not match this code (wrong code, or altered on the way)")]
    Mismatch,
    /// The message opened but its contents are malformed.
    #[error("malformed link message: {0}")]
    Malformed(&'static str),
}

/// A link code (secret: prints as `***` in Debug, zeroized on drop).
#[derive(Clone, PartialEq, Eq, Zeroize, ZeroizeOnDrop)]
pub struct LinkCode([u8; CODE_LEN]);

impl fmt::Debug for LinkCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LinkCode({}, ***)", self.link_id())
    }
}

impl LinkCode {
    /// A fresh random code.
    pub fn generate() -> Self {
        let mut b = [0u8; CODE_LEN];
        OsRng.fill_bytes(&mut b);
        Self(b)
    }

    /// From its 15 bytes (tests and vectors).
    pub fn from_bytes(b: [u8; CODE_LEN]) -> Self {
        Self(b)
    }

    /// Parses what the user typed or scanned: 24 base32 characters, any case,
    /// dashes and spaces ignored, with or without [`QR_PREFIX`].
    pub fn parse(s: &str) -> Result<Self, LinkError> {
        let s = s.trim();
        let s = s.strip_prefix(QR_PREFIX).unwrap_or(s);
        let mut bits: u64 = 0;
        let mut nbits = 0;
        let mut out = Vec::with_capacity(CODE_LEN);
        for c in s.chars().filter(|c| *c != '-' && !c.is_whitespace()) {
            let c = c.to_ascii_uppercase() as u8;
            let v = ALPHABET
                .iter()
                .position(|a| *a == c)
                .ok_or(LinkError::MalformedCode)?;
            bits = (bits << 5) | v as u64;
            nbits += 5;
            if nbits >= 8 {
                nbits -= 8;
                out.push((bits >> nbits) as u8);
                bits &= (1 << nbits) - 1;
            }
        }
        let bytes: [u8; CODE_LEN] = out.try_into().map_err(|_| LinkError::MalformedCode)?;
        if nbits != 0 {
            return Err(LinkError::MalformedCode);
        }
        Ok(Self(bytes))
    }

    /// The code as shown: 24 characters in groups of four.
    pub fn display(&self) -> String {
        let mut chars = String::with_capacity(29);
        let mut bits: u64 = 0;
        let mut nbits = 0;
        for b in self.0 {
            bits = (bits << 8) | u64::from(b);
            nbits += 8;
            while nbits >= 5 {
                nbits -= 5;
                if !chars.is_empty() && chars.len() % 5 == 4 {
                    chars.push('-');
                }
                chars.push(ALPHABET[((bits >> nbits) & 31) as usize] as char);
            }
        }
        chars
    }

    /// What a QR code shows: [`QR_PREFIX`] and the code without dashes.
    pub fn qr_payload(&self) -> String {
        format!("{QR_PREFIX}{}", self.display().replace('-', ""))
    }

    /// The link id: the part the server sees (10 lowercase hex characters).
    pub fn link_id(&self) -> String {
        hex::encode(&self.0[..ID_LEN])
    }

    fn secret(&self) -> &[u8] {
        &self.0[ID_LEN..]
    }

    fn request_key(&self) -> Zeroizing<[u8; 32]> {
        let mut h = Sha256::new();
        h.update(REQUEST_LABEL);
        h.update(self.link_id().as_bytes());
        h.update(self.secret());
        Zeroizing::new(h.finalize().into())
    }
}

fn seal(key: &[u8; 32], aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
    let mut nonce = [0u8; NONCE_LEN];
    OsRng.fill_bytes(&mut nonce);
    let ct = ChaCha20Poly1305::new(Key::from_slice(key))
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: plaintext,
                aad,
            },
        )
        .unwrap_or_default();
    let mut out = nonce.to_vec();
    out.extend_from_slice(&ct);
    out
}

fn open(key: &[u8; 32], aad: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, LinkError> {
    if sealed.len() < NONCE_LEN + 16 {
        return Err(LinkError::Mismatch);
    }
    let (nonce, ct) = sealed.split_at(NONCE_LEN);
    ChaCha20Poly1305::new(Key::from_slice(key))
        .decrypt(Nonce::from_slice(nonce), Payload { msg: ct, aad })
        .map(Zeroizing::new)
        .map_err(|_| LinkError::Mismatch)
}

fn framed(identity: &DevicePublicIdentity, rest: &[u8]) -> Vec<u8> {
    let id = identity.to_bytes();
    let mut out = Vec::with_capacity(2 + id.len() + rest.len());
    // An identity encoding is at most 3 + 255 + 64 + 32 bytes.
    out.extend_from_slice(&(id.len() as u16).to_be_bytes());
    out.extend_from_slice(&id);
    out.extend_from_slice(rest);
    out
}

fn unframed(pt: &[u8]) -> Result<(DevicePublicIdentity, &[u8]), LinkError> {
    let (len, rest) = pt
        .split_first_chunk::<2>()
        .ok_or(LinkError::Malformed("too short"))?;
    let len = usize::from(u16::from_be_bytes(*len));
    if rest.len() < len {
        return Err(LinkError::Malformed("identity cut short"));
    }
    let (id, rest) = rest.split_at(len);
    let identity = DevicePublicIdentity::from_bytes(id)
        .map_err(|_| LinkError::Malformed("invalid device identity"))?;
    Ok((identity, rest))
}

/// The new device's half of a link in progress: its X25519 secret lives only
/// in memory, for as long as the device waits.
pub struct LinkRequest {
    code: LinkCode,
    secret: EphemeralSecret,
    public: PublicKey,
}

impl fmt::Debug for LinkRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LinkRequest")
            .field("code", &self.code)
            .finish_non_exhaustive()
    }
}

impl LinkRequest {
    /// A fresh code and key; returns the request and the sealed bytes to post
    /// under [`LinkCode::link_id`].
    pub fn new(identity: &DevicePublicIdentity) -> (Self, Vec<u8>) {
        Self::with_code(LinkCode::generate(), identity)
    }

    /// As [`LinkRequest::new`] with a given code.
    pub fn with_code(code: LinkCode, identity: &DevicePublicIdentity) -> (Self, Vec<u8>) {
        let secret = EphemeralSecret::random_from_rng(OsRng);
        let public = PublicKey::from(&secret);
        let sealed = seal(
            &code.request_key(),
            code.link_id().as_bytes(),
            &framed(identity, public.as_bytes()),
        );
        (
            Self {
                code,
                secret,
                public,
            },
            sealed,
        )
    }

    /// The code to show.
    pub fn code(&self) -> &LinkCode {
        &self.code
    }

    /// Opens the approval: the approving device's identity and the payload.
    pub fn open_approval(
        self,
        approval: &[u8],
    ) -> Result<(DevicePublicIdentity, Zeroizing<Vec<u8>>), LinkError> {
        let (e_pub, sealed) = approval
            .split_first_chunk::<32>()
            .ok_or(LinkError::Mismatch)?;
        let e_pub = PublicKey::from(*e_pub);
        let shared = self.secret.diffie_hellman(&e_pub);
        let key = approval_key(&self.code, shared.as_bytes(), &e_pub, &self.public);
        let pt = open(&key, self.code.link_id().as_bytes(), sealed)?;
        let (identity, payload) = unframed(&pt)?;
        Ok((identity, Zeroizing::new(payload.to_vec())))
    }
}

fn approval_key(
    code: &LinkCode,
    shared: &[u8; 32],
    e: &PublicKey,
    n: &PublicKey,
) -> Zeroizing<[u8; 32]> {
    let mut h = Sha256::new();
    h.update(APPROVAL_LABEL);
    h.update(code.link_id().as_bytes());
    h.update(code.secret());
    h.update(shared);
    h.update(e.as_bytes());
    h.update(n.as_bytes());
    Zeroizing::new(h.finalize().into())
}

/// A request opened by the approving device.
#[derive(Debug)]
pub struct OpenedRequest {
    /// The new device, as it described itself (the approver checks it names
    /// its own user and the device the server says).
    pub identity: DevicePublicIdentity,
    new_key: PublicKey,
}

/// Opens a request with the code the user typed.
pub fn open_request(code: &LinkCode, request: &[u8]) -> Result<OpenedRequest, LinkError> {
    let pt = open(&code.request_key(), code.link_id().as_bytes(), request)?;
    let (identity, rest) = unframed(&pt)?;
    let key: [u8; 32] = rest
        .try_into()
        .map_err(|_| LinkError::Malformed("x25519 key is not 32 bytes"))?;
    Ok(OpenedRequest {
        identity,
        new_key: PublicKey::from(key),
    })
}

/// Seals the approval for the device of `request`: `approver`'s identity and
/// `payload`, readable only with the code and the new device's X25519 secret.
pub fn seal_approval(
    code: &LinkCode,
    request: &OpenedRequest,
    approver: &DevicePublicIdentity,
    payload: &[u8],
) -> Vec<u8> {
    let e = EphemeralSecret::random_from_rng(OsRng);
    let e_pub = PublicKey::from(&e);
    let shared = e.diffie_hellman(&request.new_key);
    let key = approval_key(code, shared.as_bytes(), &e_pub, &request.new_key);
    let mut out = e_pub.as_bytes().to_vec();
    out.extend_from_slice(&seal(
        &key,
        code.link_id().as_bytes(),
        &framed(approver, payload),
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::{DeviceId, DeviceIdentity, UserId};

    fn device(d: &str, seed: u8) -> DeviceIdentity {
        DeviceIdentity::from_secret_bytes(
            UserId::try_from("@alice:a.example").unwrap(),
            DeviceId::try_from(d).unwrap(),
            &[seed; 32],
        )
    }

    #[test]
    fn code_round_trips_in_any_form() {
        let code = LinkCode::generate();
        let shown = code.display();
        assert_eq!(shown.len(), 29);
        assert_eq!(shown.split('-').count(), 6);
        assert_eq!(LinkCode::parse(&shown).unwrap(), code);
        assert_eq!(LinkCode::parse(&shown.to_lowercase()).unwrap(), code);
        assert_eq!(LinkCode::parse(&code.qr_payload()).unwrap(), code);
        assert_eq!(code.link_id().len(), 10);
        assert!(!format!("{code:?}").contains(&shown[5..]));
        for bad in [
            "",
            "ABCD",
            "ABCD-EFGH-IJKL-MNOP-QRST-UVW1",
            "ABCD-EFGH-IJKL-MNOP-QRST-UVWXY",
        ] {
            assert_eq!(LinkCode::parse(bad), Err(LinkError::MalformedCode), "{bad}");
        }
        let fixed = LinkCode::from_bytes([0; 15]);
        assert_eq!(fixed.display(), "AAAA-AAAA-AAAA-AAAA-AAAA-AAAA");
    }

    #[test]
    fn the_two_devices_agree_and_no_one_else_can() {
        let new = device("NEW", 1);
        let old = device("OLD", 2);
        let (req, sealed) = LinkRequest::new(new.public());
        let code = LinkCode::parse(&req.code().display()).unwrap();
        let opened = open_request(&code, &sealed).unwrap();
        assert_eq!(&opened.identity, new.public());
        // Another code (as a server guessing) opens nothing.
        assert_eq!(
            open_request(&LinkCode::generate(), &sealed).unwrap_err(),
            LinkError::Mismatch
        );
        let approval = seal_approval(&code, &opened, old.public(), b"history key");
        let (approver, payload) = req.open_approval(&approval).unwrap();
        assert_eq!(&approver, old.public());
        assert_eq!(payload.as_slice(), b"history key");
    }

    #[test]
    fn a_substituted_request_or_approval_is_refused() {
        let new = device("NEW", 1);
        let (req, sealed) = LinkRequest::new(new.public());
        let code = req.code().clone();
        // A server that saw the link id but not the secret makes its own request.
        let mut forged_code = [0u8; 15];
        forged_code[..5].copy_from_slice(&hex::decode(code.link_id()).unwrap());
        let (_, forged) = LinkRequest::with_code(LinkCode::from_bytes(forged_code), new.public());
        assert_eq!(
            open_request(&code, &forged).unwrap_err(),
            LinkError::Mismatch
        );
        // An approval for another request does not open.
        let (other, other_sealed) = LinkRequest::new(new.public());
        let opened = open_request(other.code(), &other_sealed).unwrap();
        let approval = seal_approval(other.code(), &opened, new.public(), b"x");
        assert_eq!(
            req.open_approval(&approval).unwrap_err(),
            LinkError::Mismatch
        );
        let mut tampered = sealed.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert_eq!(
            open_request(&code, &tampered).unwrap_err(),
            LinkError::Mismatch
        );
    }
}
