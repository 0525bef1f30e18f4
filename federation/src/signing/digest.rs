//! `Content-Digest` (RFC 9530): the signer sends `sha-256`; the verifier checks every
//! `sha-256` and `sha-512` member it finds and needs at least one of them.

use sfv::{BareItem, ListEntry, Parser};
use sha2::{Digest as _, Sha256, Sha512};

/// Why a `Content-Digest` does not vouch for the body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    #[error("Content-Digest is not a Structured Field dictionary of byte sequences")]
    Syntax,
    #[error("Content-Digest has no sha-256 or sha-512 member")]
    NoKnownAlgorithm,
    #[error("Content-Digest does not match the body")]
    Mismatch,
}

/// The `Content-Digest` value for `body`: `sha-256=:<base64>:`.
pub fn content_digest(body: &[u8]) -> String {
    use base64::Engine as _;
    format!(
        "sha-256=:{}:",
        base64::engine::general_purpose::STANDARD.encode(Sha256::digest(body))
    )
}

/// Checks a `Content-Digest` value against `body`.
pub fn verify_content_digest(value: &str, body: &[u8]) -> Result<(), DigestError> {
    let dict: sfv::Dictionary = Parser::new(value)
        .parse()
        .map_err(|_| DigestError::Syntax)?;
    let mut checked = false;
    for (alg, entry) in &dict {
        let ListEntry::Item(item) = entry else {
            return Err(DigestError::Syntax);
        };
        let BareItem::ByteSequence(got) = &item.bare_item else {
            return Err(DigestError::Syntax);
        };
        let want: Vec<u8> = match alg.as_str() {
            "sha-256" => Sha256::digest(body).to_vec(),
            "sha-512" => Sha512::digest(body).to_vec(),
            _ => continue,
        };
        if !constant_time_eq(got, &want) {
            return Err(DigestError::Mismatch);
        }
        checked = true;
    }
    if checked {
        Ok(())
    } else {
        Err(DigestError::NoKnownAlgorithm)
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The digests RFC 9530's examples show for `{"hello": "world"}` (with and without a
    /// final LF), and the digest of empty content.
    #[test]
    fn rfc9530_examples() {
        assert_eq!(
            content_digest(b"{\"hello\": \"world\"}\n"),
            "sha-256=:RK/0qy18MlBSVnWgjwz6lZEWjP/lF5HF9bvEF8FabDg=:"
        );
        assert_eq!(
            content_digest(b"{\"hello\": \"world\"}"),
            "sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:"
        );
        assert_eq!(
            content_digest(b""),
            "sha-256=:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=:"
        );
    }

    #[test]
    fn verifies() {
        let body = b"payload";
        verify_content_digest(&content_digest(body), body).unwrap();
        assert_eq!(
            verify_content_digest(&content_digest(body), b"payloaD"),
            Err(DigestError::Mismatch)
        );
        assert_eq!(
            verify_content_digest("md5=:AAAA:", body),
            Err(DigestError::NoKnownAlgorithm)
        );
        assert_eq!(
            verify_content_digest("sha-256=1", body),
            Err(DigestError::Syntax)
        );
        assert_eq!(verify_content_digest("(", body), Err(DigestError::Syntax));
        let both = format!("{}, unixsum=:AAAA:", content_digest(body));
        verify_content_digest(&both, body).unwrap();
    }
}
