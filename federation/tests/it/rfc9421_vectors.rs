//! RFC 9421 Appendix B.2.6: the ed25519 example, byte for byte, through the generic
//! (profile-free) code path.

use base64::Engine as _;
use parley_federation::keys::{ServerPublicKey, ServerSigningKey};
use parley_federation::signing::digest::verify_content_digest;
use parley_federation::signing::rfc9421::{Message, RequestParts, parse_signature_fields};
use parley_federation::signing::{GenericVerifyError, verify_ed25519};

/// Appendix B.1.4 `test-key-ed25519`.
const TEST_KEY_PEM: &str = "-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEIJ+DYvh6SEqVTm50DFtMDoQikTmiCqirVv9mWG9qfSnF
-----END PRIVATE KEY-----";
const TEST_KEY_X: &str = "JrQLj5P_89iXES9-vFgrIy29clF9CC_oPPsw3c5D0bs";

const SIGNATURE_INPUT: &str = "sig-b26=(\"date\" \"@method\" \"@path\" \"@authority\" \
     \"content-type\" \"content-length\");created=1618884473;keyid=\"test-key-ed25519\"";
const SIGNATURE: &str = "sig-b26=:wqcAqbmYJ2ji2glfAMaRy4gruYYnx2nEFN2HN6jrnDnQCK1\
     u02Gb04v9EDgwUPiu4A0w6vuQv5lIp5WPpBKRCw==:";
const BASE: &str = "\"date\": Tue, 20 Apr 2021 02:07:55 GMT
\"@method\": POST
\"@path\": /foo
\"@authority\": example.com
\"content-type\": application/json
\"content-length\": 18
\"@signature-params\": (\"date\" \"@method\" \"@path\" \"@authority\" \"content-type\" \"content-length\");created=1618884473;keyid=\"test-key-ed25519\"";

/// Appendix B.2: the test request.
fn test_request() -> RequestParts {
    RequestParts {
        method: "POST".into(),
        authority: "example.com".into(),
        path: "/foo".into(),
        query: Some("param=Value&Pet=dog".into()),
        headers: vec![
            ("Host".into(), "example.com".into()),
            ("Date".into(), "Tue, 20 Apr 2021 02:07:55 GMT".into()),
            ("Content-Type".into(), "application/json".into()),
            (
                "Content-Digest".into(),
                "sha-512=:WZDPaVn/7XgHaAy8pmojAkGWoRx2UFChF41A2svX+TaPm+AbwAgBWnrIiYl\
                 lu7BNNyealdVLvRwEmTHWXvJwew==:"
                    .into(),
            ),
            ("Content-Length".into(), "18".into()),
            ("Signature-Input".into(), SIGNATURE_INPUT.into()),
            ("Signature".into(), SIGNATURE.into()),
        ],
    }
}

#[test]
fn b26_signature_base_is_reproduced_byte_for_byte() {
    let entries = parse_signature_fields(SIGNATURE_INPUT, SIGNATURE).unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].label, "sig-b26");
    let req = test_request();
    let base = entries[0]
        .input
        .signature_base(Message::Request(&req))
        .unwrap();
    assert_eq!(base, BASE);
    // The @signature-params value is the Signature-Input member, re-serialized unchanged.
    assert_eq!(
        format!("sig-b26={}", entries[0].input.serialize()),
        SIGNATURE_INPUT
    );
}

#[test]
fn b26_signature_verifies_with_the_rfc_public_key() {
    let public = ServerPublicKey::from_jwk_x(TEST_KEY_X).unwrap();
    let entries = parse_signature_fields(SIGNATURE_INPUT, SIGNATURE).unwrap();
    let req = test_request();
    let base = verify_ed25519(&entries[0], Message::Request(&req), &public).unwrap();
    assert_eq!(base, BASE);

    // The private key reproduces the RFC's signature exactly (Ed25519 is deterministic).
    let private = ServerSigningKey::from_pkcs8_pem(TEST_KEY_PEM).unwrap();
    assert_eq!(private.public(), public);
    assert_eq!(private.sign(BASE.as_bytes()).to_vec(), entries[0].signature);
    let sig_b64 = base64::engine::general_purpose::STANDARD.encode(&entries[0].signature);
    assert!(SIGNATURE.contains(&sig_b64));

    // The request's sha-512 Content-Digest matches its body.
    verify_content_digest(
        &req.header("content-digest").unwrap(),
        b"{\"hello\": \"world\"}",
    )
    .unwrap();
}

#[test]
fn b26_tampering_breaks_the_signature() {
    let public = ServerPublicKey::from_jwk_x(TEST_KEY_X).unwrap();
    let entries = parse_signature_fields(SIGNATURE_INPUT, SIGNATURE).unwrap();
    let mutations: [fn(&mut RequestParts); 5] = [
        |r| r.method = "PUT".into(),
        |r| r.path = "/bar".into(),
        |r| r.authority = "example.org".into(),
        |r| r.headers[1].1 = "Tue, 20 Apr 2021 02:07:56 GMT".into(),
        |r| r.headers[4].1 = "19".into(),
    ];
    for (i, mutate) in mutations.iter().enumerate() {
        let mut req = test_request();
        mutate(&mut req);
        assert_eq!(
            verify_ed25519(&entries[0], Message::Request(&req), &public),
            Err(GenericVerifyError::BadSignature),
            "mutation {i}"
        );
    }
    // The query is not covered by this signature: changing it does not matter.
    let mut req = test_request();
    req.query = Some("other".into());
    verify_ed25519(&entries[0], Message::Request(&req), &public).unwrap();
}
