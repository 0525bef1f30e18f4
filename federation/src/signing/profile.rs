//! Profile `parley-fed-v1` of RFC 9421: how servers sign and verify requests.
//!
//! A signed request carries `Signature-Agent: "<origin server name>"` (an sf-string),
//! `Content-Digest: sha-256=:…:` when it has a body, and one signature labelled
//! `parley` covering `("@method" "@authority" "@path" "@query" "content-digest"
//! "signature-agent")` (without `content-digest` when there is no body) with `created`,
//! `expires` (at most 300 s later), `nonce`, `keyid` (the JWK thumbprint), `alg="ed25519"`
//! and `tag="parley-fed-v1"`. `@authority` is the destination's server name.
//!
//! Verification is staged so that its order is fixed by the types:
//!
//! 1. [`parse`]: signature fields → tag/alg → required components → origin from
//!    `Signature-Agent`, giving a [`Parsed`];
//! 2. [`Parsed::admit`]: allow/deny policy (403), *before* any key is looked up;
//! 3. [`Admitted::key_needed`] names `(origin, keyid)`; the caller resolves it (cache,
//!    or fetch) and calls [`Admitted::check`]: signature → digest → clock;
//! 4. [`Checked::finish`] (or [`Checked::finish_with`] for an external store): nonce;
//! 5. authorizing the request itself (is the origin in that chat?) is the handler's job,
//!    with the [`Verified`] origin.

use base64::Engine as _;

use super::digest::{DigestError, content_digest, verify_content_digest};
use super::nonce::{NonceCache, NonceError};
use super::rfc9421::{self, Message, RequestParts, SignatureEntry, SignatureInput};
use crate::ids::ServerName;
use crate::keys::{KeyId, ServerPublicKey, ServerSigningKey};
use crate::policy::{self, Policy};

/// The signature `tag` of the profile.
pub const PROFILE_TAG: &str = "parley-fed-v1";
/// The only accepted `alg`.
pub const ALG: &str = "ed25519";
/// The label our signer uses (verifiers select by tag, not by label).
pub const SIGNATURE_LABEL: &str = "parley";
/// Longest accepted `expires - created`, in seconds.
pub const MAX_VALIDITY_SECS: i64 = 300;
/// What the signer uses by default.
pub const DEFAULT_VALIDITY_SECS: i64 = 300;
/// Accepted clock difference between servers, in seconds.
pub const CLOCK_SKEW_SECS: i64 = 60;
/// Longest accepted nonce, in characters.
pub const MAX_NONCE_LEN: usize = 128;
/// Covered components of a request with a body, in the order our signer writes them.
pub const COMPONENTS_WITH_BODY: [&str; 6] = [
    "@method",
    "@authority",
    "@path",
    "@query",
    "content-digest",
    "signature-agent",
];
/// Covered components of a request without a body.
pub const COMPONENTS_WITHOUT_BODY: [&str; 5] = [
    "@method",
    "@authority",
    "@path",
    "@query",
    "signature-agent",
];
/// The `Accept-Signature` value sent with every 401 (RFC 9421 §5.1).
pub const ACCEPT_SIGNATURE: &str = "parley=(\"@method\" \"@authority\" \"@path\" \"@query\" \
     \"content-digest\" \"signature-agent\");created;expires;nonce;alg=\"ed25519\";\
     tag=\"parley-fed-v1\"";

// ------------------------------------------------------------------------------------
// Signing

/// A request to sign. `path` and `query` exactly as they will be sent (percent-encoded;
/// `query` without `?`).
#[derive(Debug, Clone, Copy)]
pub struct OutgoingRequest<'a> {
    pub method: &'a str,
    pub destination: &'a ServerName,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub body: &'a [u8],
}

/// The headers a signed request carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedHeaders {
    pub signature_input: String,
    pub signature: String,
    pub signature_agent: String,
    pub content_digest: Option<String>,
}

impl SignedHeaders {
    /// `(lowercase name, value)` pairs to add to the request.
    pub fn to_vec(&self) -> Vec<(&'static str, String)> {
        let mut out = vec![
            ("signature-agent", self.signature_agent.clone()),
            ("signature-input", self.signature_input.clone()),
            ("signature", self.signature.clone()),
        ];
        if let Some(d) = &self.content_digest {
            out.push(("content-digest", d.clone()));
        }
        out
    }
}

/// Why a request could not be signed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignError {
    #[error("validity must be 1..={MAX_VALIDITY_SECS} s, got {0}")]
    Validity(i64),
    #[error("nonce must be 1..={MAX_NONCE_LEN} printable ASCII characters")]
    Nonce,
    #[error("request part cannot be signed: {0}")]
    Part(String),
}

/// Signs requests as one origin server with its current key.
#[derive(Debug, Clone)]
pub struct RequestSigner {
    origin: ServerName,
    key: ServerSigningKey,
    key_id: KeyId,
    validity_secs: i64,
}

impl RequestSigner {
    pub fn new(origin: ServerName, key: ServerSigningKey) -> Self {
        let key_id = key.key_id();
        Self {
            origin,
            key,
            key_id,
            validity_secs: DEFAULT_VALIDITY_SECS,
        }
    }

    /// Signatures valid for `secs` (1..=300) after `created`.
    pub fn with_validity(mut self, secs: i64) -> Result<Self, SignError> {
        if !(1..=MAX_VALIDITY_SECS).contains(&secs) {
            return Err(SignError::Validity(secs));
        }
        self.validity_secs = secs;
        Ok(self)
    }

    pub fn origin(&self) -> &ServerName {
        &self.origin
    }

    pub fn key_id(&self) -> &KeyId {
        &self.key_id
    }

    pub fn public_key(&self) -> ServerPublicKey {
        self.key.public()
    }

    /// Signs `req` at `now_ms` with `nonce` (use [`random_nonce`]).
    pub fn sign(
        &self,
        req: &OutgoingRequest<'_>,
        now_ms: i64,
        nonce: &str,
    ) -> Result<SignedHeaders, SignError> {
        if nonce.is_empty()
            || nonce.len() > MAX_NONCE_LEN
            || !nonce.bytes().all(|b| (0x20..0x7f).contains(&b))
        {
            return Err(SignError::Nonce);
        }
        let created = now_ms.div_euclid(1000);
        let expires = created + self.validity_secs;
        let signature_agent = sf_string(self.origin.as_str())?;
        let content_digest = (!req.body.is_empty()).then(|| content_digest(req.body));
        let mut headers = vec![("signature-agent".to_owned(), signature_agent.clone())];
        let components: &[&str] = if let Some(d) = &content_digest {
            headers.push(("content-digest".to_owned(), d.clone()));
            &COMPONENTS_WITH_BODY
        } else {
            &COMPONENTS_WITHOUT_BODY
        };
        let part = |e: sfv::Error| SignError::Part(e.to_string());
        let input = SignatureInput::new(components.iter().copied())
            .and_then(|i| i.with_int("created", created))
            .and_then(|i| i.with_int("expires", expires))
            .and_then(|i| i.with_str("nonce", nonce))
            .and_then(|i| i.with_str("keyid", self.key_id.as_str()))
            .and_then(|i| i.with_str("alg", ALG))
            .and_then(|i| i.with_str("tag", PROFILE_TAG))
            .map_err(part)?;
        let parts = RequestParts {
            method: req.method.to_owned(),
            authority: req.destination.as_str().to_owned(),
            path: req.path.to_owned(),
            query: req.query.map(str::to_owned),
            headers,
        };
        let base = input
            .signature_base(Message::Request(&parts))
            .map_err(|e| SignError::Part(e.to_string()))?;
        let signature = self.key.sign(base.as_bytes());
        let (signature_input, signature) =
            rfc9421::signature_fields(SIGNATURE_LABEL, &input, &signature).map_err(part)?;
        Ok(SignedHeaders {
            signature_input,
            signature,
            signature_agent,
            content_digest,
        })
    }
}

fn sf_string(s: &str) -> Result<String, SignError> {
    use sfv::FieldType as _;
    let value =
        sfv::String::from_string(s.to_owned()).map_err(|(e, _)| SignError::Part(e.to_string()))?;
    Ok(sfv::Item::new(value).serialize())
}

/// 16 random bytes from the operating system, base64url: a fresh nonce.
pub fn random_nonce() -> String {
    use rand::RngCore as _;
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

// ------------------------------------------------------------------------------------
// Verifying

/// A received request, as the verifier sees it.
#[derive(Debug, Clone, Copy)]
pub struct IncomingRequest<'a> {
    pub method: &'a str,
    /// Our own server name: the `@authority` a signer must have covered. (Not the
    /// `Host` header: a request signed for another server must not verify here.)
    pub authority: &'a str,
    /// As received, percent-encoded.
    pub path: &'a str,
    /// As received, without `?`.
    pub query: Option<&'a str>,
    /// Field lines in order (names in any case).
    pub headers: &'a [(String, String)],
    pub body: &'a [u8],
}

/// Why a request was refused, in verifier order. Mapped to a protocol error (401, or
/// 403 for [`VerifyError::Denied`]) in [`crate::error`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("request is not signed (no Signature-Input/Signature with tag=\"{PROFILE_TAG}\")")]
    Unsigned,
    #[error("malformed signature fields: {0}")]
    Malformed(String),
    #[error("wrong profile: {0}")]
    WrongProfile(String),
    #[error("signature does not cover {0}")]
    MissingComponent(String),
    #[error("bad Signature-Agent: {0}")]
    BadSignatureAgent(String),
    #[error("federation with {origin} is refused: {reason}")]
    Denied {
        origin: ServerName,
        reason: policy::Reason,
    },
    #[error("key {key_id} is not a current key of {origin}")]
    UnknownKey { origin: ServerName, key_id: KeyId },
    #[error("signature does not verify")]
    BadSignature,
    #[error("content digest: {0}")]
    Digest(#[from] DigestError),
    #[error("signature window: {0}")]
    Clock(&'static str),
    #[error("nonce: {0}")]
    Nonce(#[from] NonceError),
}

/// Stage 1 done: the signature is well-formed and follows the profile; the origin is
/// known but nothing is verified yet.
#[derive(Debug, Clone)]
pub struct Parsed<'a> {
    req: IncomingRequest<'a>,
    entry: SignatureEntry,
    origin: ServerName,
    key_id: KeyId,
    created: i64,
    expires: i64,
    nonce: String,
}

/// Parses the signature fields and checks the profile: tag and alg, the required
/// components, then the origin from `Signature-Agent`.
pub fn parse<'a>(req: IncomingRequest<'a>) -> Result<Parsed<'a>, VerifyError> {
    let field = |name: &str| combined(req.headers, name);
    let (Some(input), Some(signature)) = (field("signature-input"), field("signature")) else {
        return Err(VerifyError::Unsigned);
    };
    let entries = rfc9421::parse_signature_fields(&input, &signature)
        .map_err(|e| VerifyError::Malformed(e.to_string()))?;
    let mut ours = entries
        .into_iter()
        .filter(|e| e.input.param_str("tag") == Some(PROFILE_TAG));
    let entry = ours.next().ok_or(VerifyError::Unsigned)?;
    if ours.next().is_some() {
        return Err(VerifyError::WrongProfile(format!(
            "more than one signature with tag=\"{PROFILE_TAG}\""
        )));
    }
    let sig_input = &entry.input;
    match sig_input.param_str("alg") {
        Some(ALG) => {}
        Some(other) => return Err(VerifyError::WrongProfile(format!("alg=\"{other}\""))),
        None => return Err(VerifyError::WrongProfile("alg is missing".into())),
    }
    let (Some(created), Some(expires), Some(nonce), Some(key_id)) = (
        sig_input.param_int("created"),
        sig_input.param_int("expires"),
        sig_input.param_str("nonce"),
        sig_input.param_str("keyid"),
    ) else {
        return Err(VerifyError::Malformed(
            "created, expires, nonce and keyid are required".into(),
        ));
    };
    if nonce.is_empty() || nonce.len() > MAX_NONCE_LEN {
        return Err(VerifyError::Malformed("nonce length".into()));
    }
    if entry.signature.len() != 64 {
        return Err(VerifyError::Malformed(
            "an ed25519 signature is 64 bytes".into(),
        ));
    }
    let required: &[&str] = if req.body.is_empty() {
        &COMPONENTS_WITHOUT_BODY
    } else {
        &COMPONENTS_WITH_BODY
    };
    if let Some(missing) = required.iter().find(|c| !sig_input.covers(c)) {
        return Err(VerifyError::MissingComponent((*missing).to_owned()));
    }
    let agent =
        field("signature-agent").ok_or_else(|| VerifyError::BadSignatureAgent("missing".into()))?;
    let origin = parse_signature_agent(&agent)?;
    Ok(Parsed {
        origin,
        key_id: KeyId::new(key_id),
        created,
        expires,
        nonce: nonce.to_owned(),
        req,
        entry,
    })
}

/// Reads `Signature-Agent`: one sf-string holding a server name.
pub fn parse_signature_agent(value: &str) -> Result<ServerName, VerifyError> {
    let item: sfv::Item = sfv::Parser::new(value)
        .parse()
        .map_err(|_| VerifyError::BadSignatureAgent("not a Structured Field item".into()))?;
    let name = item
        .bare_item
        .as_string()
        .ok_or_else(|| VerifyError::BadSignatureAgent("not a string".into()))?;
    ServerName::try_from(name.as_str()).map_err(|e| VerifyError::BadSignatureAgent(e.to_string()))
}

fn combined(headers: &[(String, String)], name: &str) -> Option<String> {
    RequestParts {
        headers: headers.to_vec(),
        ..Default::default()
    }
    .header(name)
}

impl<'a> Parsed<'a> {
    /// The server the request claims to come from (not yet proven).
    pub fn origin(&self) -> &ServerName {
        &self.origin
    }

    pub fn key_id(&self) -> &KeyId {
        &self.key_id
    }

    /// Stage 2: the allow/deny policy. A refused origin gets 403 and no key is fetched.
    pub fn admit(self, policy: &Policy) -> Result<Admitted<'a>, VerifyError> {
        let decision = policy::decide(&self.origin, policy);
        if decision.allowed {
            Ok(Admitted { parsed: self })
        } else {
            Err(VerifyError::Denied {
                origin: self.origin,
                reason: decision.reason,
            })
        }
    }
}

/// Stage 2 done: policy admits the origin. Next: the key for [`Admitted::key_needed`].
#[derive(Debug, Clone)]
pub struct Admitted<'a> {
    parsed: Parsed<'a>,
}

impl<'a> Admitted<'a> {
    /// The key to resolve: `(origin, keyid)`.
    pub fn key_needed(&self) -> (&ServerName, &KeyId) {
        (&self.parsed.origin, &self.parsed.key_id)
    }

    /// Stage 3: with the origin's current key for `keyid` (`None`: no such key), checks
    /// the signature, then the content digest, then the clock at `now_ms`.
    pub fn check(
        self,
        key: Option<&ServerPublicKey>,
        now_ms: i64,
    ) -> Result<Checked<'a>, VerifyError> {
        let p = self.parsed;
        let Some(key) = key else {
            return Err(VerifyError::UnknownKey {
                origin: p.origin,
                key_id: p.key_id,
            });
        };
        let parts = RequestParts {
            method: p.req.method.to_owned(),
            authority: p.req.authority.to_owned(),
            path: p.req.path.to_owned(),
            query: p.req.query.map(str::to_owned),
            headers: p.req.headers.to_vec(),
        };
        let base = p
            .entry
            .input
            .signature_base(Message::Request(&parts))
            .map_err(|e| VerifyError::Malformed(e.to_string()))?;
        key.verify(base.as_bytes(), &p.entry.signature)
            .map_err(|_| VerifyError::BadSignature)?;
        if p.entry.input.covers("content-digest") {
            let value = parts.header("content-digest").ok_or(DigestError::Syntax)?;
            verify_content_digest(&value, p.req.body)?;
        }
        let now = now_ms.div_euclid(1000);
        if p.created > now + CLOCK_SKEW_SECS {
            return Err(VerifyError::Clock("created is in the future"));
        }
        if p.expires < now - CLOCK_SKEW_SECS {
            return Err(VerifyError::Clock("expired"));
        }
        if p.expires <= p.created || p.expires - p.created > MAX_VALIDITY_SECS {
            return Err(VerifyError::Clock(
                "expires must be 1..=300 s after created",
            ));
        }
        Ok(Checked { parsed: p })
    }
}

/// Stage 3 done: authentic and fresh. Last: the nonce.
#[derive(Debug, Clone)]
pub struct Checked<'a> {
    parsed: Parsed<'a>,
}

impl Checked<'_> {
    /// `(origin, nonce, end of its window in ms)` for an external replay store.
    pub fn nonce_key(&self) -> (&ServerName, &str, i64) {
        let p = &self.parsed;
        (
            &p.origin,
            &p.nonce,
            (p.expires + CLOCK_SKEW_SECS).saturating_mul(1000),
        )
    }

    /// Stage 4 with the in-process replay cache.
    pub fn finish(self, nonces: &mut NonceCache, now_ms: i64) -> Result<Verified, VerifyError> {
        let (origin, nonce, end) = self.nonce_key();
        let result = nonces.check_and_insert(origin, nonce, end, now_ms);
        self.finish_with(result)
    }

    /// Stage 4 with the answer of an external replay store for [`Checked::nonce_key`].
    pub fn finish_with(
        self,
        nonce_result: Result<(), NonceError>,
    ) -> Result<Verified, VerifyError> {
        nonce_result?;
        let p = self.parsed;
        Ok(Verified {
            origin: p.origin,
            key_id: p.key_id,
            created: p.created,
            expires: p.expires,
            nonce: p.nonce,
        })
    }
}

/// A request that passed every check: it comes from `origin`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub origin: ServerName,
    pub key_id: KeyId,
    /// Seconds since the Unix epoch.
    pub created: i64,
    pub expires: i64,
    pub nonce: String,
}
