//! Protocol errors: what a federation endpoint answers when it refuses a request.
//!
//! Every refusal is a status plus `{"error": code, "message": …}`. Operation errors
//! (`VerifyError`, …) are mapped here, at one boundary, by `From` impls; the HTTP
//! transport only renders a [`ProtocolError`].

use serde::{Deserialize, Serialize};

use crate::signing::nonce::NonceError;
use crate::signing::profile::{ACCEPT_SIGNATURE, VerifyError};

/// Machine-readable error codes of the federation API. Stable: peers match on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum FedErrorCode {
    /// No `Signature-Input`/`Signature`, or none with `tag="parley-fed-v1"`.
    MissingSignature,
    /// The signature fields or their parameters are malformed.
    MalformedSignature,
    /// Wrong `alg`, or more than one parley-fed-v1 signature.
    WrongProfile,
    /// The signature does not cover every component the profile requires.
    MissingComponent,
    /// `Signature-Agent` is missing or not a server name.
    BadSignatureAgent,
    /// The `keyid` is not a current key of the origin.
    UnknownKey,
    /// The signature does not verify.
    BadSignature,
    /// `Content-Digest` is missing, malformed or does not match the body.
    BadDigest,
    /// `created`/`expires` outside the accepted window (clock skew 60 s, ≤ 300 s).
    StaleSignature,
    /// The nonce was already used.
    ReplayedNonce,
    /// Over libp2p: the connection's PeerId is not the key that signed the request.
    PeerMismatch,
    /// Policy refuses federation with the origin (or with the destination).
    FederationDenied,
    /// The origin has no members in the chat it sends events for.
    NotMember,
    /// The receiver refuses the entry (a rule of the chat, e.g. only admins change
    /// membership); the message says which.
    Forbidden,
    /// The body is not valid JSON for this endpoint.
    BadJson,
    /// A field is present but invalid.
    InvalidParam,
    UnknownUser,
    UnknownChat,
    NotFound,
    /// An MLS handshake for another epoch than the chat's current one.
    WrongEpoch,
    /// The body exceeds the limit.
    TooLarge,
    RateLimited,
    /// The server failed; nothing was changed. Retrying is safe.
    Internal,
    /// A code this version does not know.
    #[serde(other)]
    Unknown,
}

impl FedErrorCode {
    /// The HTTP status that carries this code.
    pub fn status(self) -> u16 {
        use FedErrorCode::*;
        match self {
            MissingSignature | MalformedSignature | WrongProfile | MissingComponent
            | BadSignatureAgent | UnknownKey | BadSignature | BadDigest | StaleSignature
            | ReplayedNonce | PeerMismatch => 401,
            FederationDenied | NotMember | Forbidden => 403,
            BadJson | InvalidParam => 400,
            UnknownUser | UnknownChat | NotFound => 404,
            WrongEpoch => 409,
            TooLarge => 413,
            RateLimited => 429,
            Internal | Unknown => 500,
        }
    }

    /// The wire string (`"federation_denied"`).
    pub fn as_str(self) -> &'static str {
        use FedErrorCode::*;
        match self {
            MissingSignature => "missing_signature",
            MalformedSignature => "malformed_signature",
            WrongProfile => "wrong_profile",
            MissingComponent => "missing_component",
            BadSignatureAgent => "bad_signature_agent",
            UnknownKey => "unknown_key",
            BadSignature => "bad_signature",
            BadDigest => "bad_digest",
            StaleSignature => "stale_signature",
            ReplayedNonce => "replayed_nonce",
            PeerMismatch => "peer_mismatch",
            FederationDenied => "federation_denied",
            NotMember => "not_member",
            Forbidden => "forbidden",
            BadJson => "bad_json",
            InvalidParam => "invalid_param",
            UnknownUser => "unknown_user",
            UnknownChat => "unknown_chat",
            NotFound => "not_found",
            WrongEpoch => "wrong_epoch",
            TooLarge => "too_large",
            RateLimited => "rate_limited",
            Internal => "internal",
            Unknown => "unknown",
        }
    }
}

/// The body of every refusal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ErrorBody {
    pub error: FedErrorCode,
    pub message: String,
    /// With `wrong_epoch`: the chat's current epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_epoch: Option<u64>,
}

impl ErrorBody {
    pub fn new(error: FedErrorCode, message: impl Into<String>) -> Self {
        Self {
            error,
            message: message.into(),
            current_epoch: None,
        }
    }
}

/// A refusal, ready to render: status, body, and (for 401) `Accept-Signature`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtocolError {
    pub body: ErrorBody,
}

impl ProtocolError {
    pub fn new(code: FedErrorCode, message: impl Into<String>) -> Self {
        Self {
            body: ErrorBody::new(code, message),
        }
    }

    pub fn status(&self) -> u16 {
        self.body.error.status()
    }

    /// Extra response headers: a 401 tells the peer how to sign (RFC 9421 §5.1).
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        if self.status() == 401 {
            vec![("accept-signature", ACCEPT_SIGNATURE.to_owned())]
        } else {
            Vec::new()
        }
    }
}

impl std::fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status(),
            self.body.error.as_str(),
            self.body.message
        )
    }
}

impl std::error::Error for ProtocolError {}

impl From<&VerifyError> for ProtocolError {
    fn from(e: &VerifyError) -> Self {
        use FedErrorCode as C;
        let code = match e {
            VerifyError::Unsigned => C::MissingSignature,
            VerifyError::Malformed(_) => C::MalformedSignature,
            VerifyError::WrongProfile(_) => C::WrongProfile,
            VerifyError::MissingComponent(_) => C::MissingComponent,
            VerifyError::BadSignatureAgent(_) => C::BadSignatureAgent,
            VerifyError::Denied { .. } => C::FederationDenied,
            VerifyError::UnknownKey { .. } => C::UnknownKey,
            VerifyError::BadSignature => C::BadSignature,
            VerifyError::Digest(_) => C::BadDigest,
            VerifyError::Clock(_) => C::StaleSignature,
            VerifyError::Nonce(NonceError::Replayed) => C::ReplayedNonce,
            // The replay cache was full: a freshly signed retry is accepted.
            VerifyError::Nonce(NonceError::BelowFloor) => C::StaleSignature,
            VerifyError::Nonce(NonceError::Unavailable) => C::Internal,
        };
        ProtocolError::new(code, e.to_string())
    }
}

impl From<VerifyError> for ProtocolError {
    fn from(e: VerifyError) -> Self {
        Self::from(&e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_serialize_as_their_strings() {
        for code in [
            FedErrorCode::FederationDenied,
            FedErrorCode::ReplayedNonce,
            FedErrorCode::WrongEpoch,
        ] {
            assert_eq!(
                serde_json::to_string(&code).unwrap(),
                format!("\"{}\"", code.as_str())
            );
        }
        let body: ErrorBody =
            serde_json::from_str(r#"{"error":"from_the_future","message":"x"}"#).unwrap();
        assert_eq!(body.error, FedErrorCode::Unknown);
    }

    #[test]
    fn accept_signature_is_a_structured_field_dictionary() {
        let dict: sfv::Dictionary = sfv::Parser::new(ACCEPT_SIGNATURE).parse().unwrap();
        assert_eq!(dict.len(), 1);
        assert!(dict.contains_key("parley"));
    }

    #[test]
    fn only_401_carries_accept_signature() {
        let e = ProtocolError::new(FedErrorCode::BadSignature, "no");
        assert_eq!(e.status(), 401);
        assert_eq!(e.headers()[0].0, "accept-signature");
        let e = ProtocolError::new(FedErrorCode::FederationDenied, "no");
        assert_eq!(e.status(), 403);
        assert!(e.headers().is_empty());
    }
}
