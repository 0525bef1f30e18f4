//! Profile parley-fed-v1: round trips, tampering, clock, replay, profile violations.

use parley_federation::keys::ServerSigningKey;
use parley_federation::policy::{Mode, Policy, Reason, Rule};
use parley_federation::signing::digest::DigestError;
use parley_federation::signing::nonce::{NonceCache, NonceError};
use parley_federation::signing::profile::{self, IncomingRequest, VerifyError};
use parley_federation::signing::rfc9421::{self, Message, RequestParts, SignatureInput};
use parley_federation::{FedErrorCode, ProtocolError};

use crate::{NOW_MS, Wire, name, signed, signer, verify};

const ORIGIN: &str = "a.example.org";
const DEST: &str = "b.example.org:8448";
const BODY: &[u8] = br#"{"origin":"a.example.org","events":[]}"#;

fn open() -> Policy {
    Policy::default()
}

fn send_request(now_ms: i64, nonce: &str) -> Wire {
    signed(
        &signer(ORIGIN, 1),
        DEST,
        ("PUT", "/_parley/fed/v1/send/17", None),
        BODY,
        now_ms,
        nonce,
    )
}

fn check(wire: &Wire, now_ms: i64) -> Result<parley_federation::Verified, VerifyError> {
    let key = signer(ORIGIN, 1).public_key();
    verify(
        wire,
        DEST,
        &open(),
        Some(key),
        &mut NonceCache::new(100),
        now_ms,
    )
}

fn code(e: &VerifyError) -> FedErrorCode {
    ProtocolError::from(e).body.error
}

#[test]
fn round_trip_with_and_without_body() {
    let wire = send_request(NOW_MS, "n-1");
    assert_eq!(wire.header("signature-agent"), Some("\"a.example.org\""));
    assert!(
        wire.header("content-digest")
            .unwrap()
            .starts_with("sha-256=:")
    );
    let input = wire.header("signature-input").unwrap();
    assert!(
        input.starts_with(
            "parley=(\"@method\" \"@authority\" \"@path\" \"@query\" \"content-digest\" \
             \"signature-agent\");created=1793491200;expires=1793491500;nonce=\"n-1\";keyid=\""
        ),
        "{input}"
    );
    assert!(
        input.ends_with(";alg=\"ed25519\";tag=\"parley-fed-v1\""),
        "{input}"
    );
    let v = check(&wire, NOW_MS).unwrap();
    assert_eq!(v.origin, name(ORIGIN));
    assert_eq!(&v.key_id, signer(ORIGIN, 1).key_id());

    let get = signed(
        &signer(ORIGIN, 1),
        DEST,
        (
            "GET",
            "/_parley/fed/v1/users/@bob:b.example.org/devices",
            Some("x=1&y=%20"),
        ),
        b"",
        NOW_MS,
        "n-2",
    );
    assert!(get.header("content-digest").is_none());
    check(&get, NOW_MS + 1_000).unwrap();
}

#[test]
fn tampering_is_refused() {
    type Tamper = fn(&mut Wire);
    let cases: &[(&str, Tamper, FedErrorCode)] = &[
        (
            "method",
            |w| w.method = "POST".into(),
            FedErrorCode::BadSignature,
        ),
        (
            "path",
            |w| w.path = "/_parley/fed/v1/send/18".into(),
            FedErrorCode::BadSignature,
        ),
        (
            "query",
            |w| w.query = Some("a=b".into()),
            FedErrorCode::BadSignature,
        ),
        ("body", |w| w.body[3] ^= 1, FedErrorCode::BadDigest),
        (
            "content-digest",
            |w| {
                let d = parley_federation::signing::digest::content_digest(b"other");
                w.set_header("content-digest", &d);
            },
            FedErrorCode::BadSignature,
        ),
        (
            "signature-agent",
            // (This harness offers a's key whatever the claimed origin; a real key cache
            // would find no such key for c.)
            |w| w.set_header("signature-agent", "\"c.example.org\""),
            FedErrorCode::BadSignature,
        ),
        (
            "signature bytes",
            |w| {
                use base64::Engine as _;
                let b64 = base64::engine::general_purpose::STANDARD;
                let s = w.header("signature").unwrap();
                let inner = s
                    .strip_prefix("parley=:")
                    .unwrap()
                    .strip_suffix(':')
                    .unwrap();
                let mut bytes = b64.decode(inner).unwrap();
                bytes[10] ^= 1;
                w.set_header("signature", &format!("parley=:{}:", b64.encode(bytes)));
            },
            FedErrorCode::BadSignature,
        ),
        (
            "created param",
            |w| {
                let s = w
                    .header("signature-input")
                    .unwrap()
                    .replace("created=1793491200", "created=1793491201");
                w.set_header("signature-input", &s);
            },
            FedErrorCode::BadSignature,
        ),
        (
            "unsigned",
            |w| w.headers.retain(|(n, _)| n != "signature"),
            FedErrorCode::MissingSignature,
        ),
    ];
    for (what, tamper, want) in cases {
        let mut wire = send_request(NOW_MS, "n");
        tamper(&mut wire);
        let err = check(&wire, NOW_MS).unwrap_err();
        assert_eq!(code(&err), *want, "{what}: {err}");
        assert_eq!(ProtocolError::from(&err).status(), 401, "{what}");
    }
    // A request signed for another server does not verify here.
    let wire = send_request(NOW_MS, "n");
    let key = signer(ORIGIN, 1).public_key();
    let err = verify(
        &wire,
        "c.example.org",
        &open(),
        Some(key),
        &mut NonceCache::new(9),
        NOW_MS,
    )
    .unwrap_err();
    assert_eq!(err, VerifyError::BadSignature);
}

#[test]
fn clock_window() {
    let wire = send_request(NOW_MS, "n");
    // Up to 60 s early (the verifier's clock behind) and until expires + 60 s.
    check(&wire, NOW_MS - 60_000).unwrap();
    check(&wire, NOW_MS + 360_000).unwrap();
    let future = check(&wire, NOW_MS - 61_000).unwrap_err();
    assert_eq!(future, VerifyError::Clock("created is in the future"));
    let expired = check(&wire, NOW_MS + 361_000).unwrap_err();
    assert_eq!(expired, VerifyError::Clock("expired"));
    assert_eq!(code(&expired), FedErrorCode::StaleSignature);
}

/// The verifier's order: signature before digest before clock before nonce.
#[test]
fn checks_run_in_the_profile_order() {
    // Expired *and* wrongly signed: the signature is reported.
    let mut wire = send_request(NOW_MS, "n");
    wire.method = "POST".into();
    assert_eq!(
        check(&wire, NOW_MS + 3_600_000).unwrap_err(),
        VerifyError::BadSignature
    );
    // Expired *and* a body that does not match: the digest is reported.
    let mut wire = send_request(NOW_MS, "n");
    wire.body[0] ^= 1;
    assert!(matches!(
        check(&wire, NOW_MS + 3_600_000).unwrap_err(),
        VerifyError::Digest(DigestError::Mismatch)
    ));
    // Replayed *and* expired: the clock is reported (the nonce cache is not touched).
    let key = signer(ORIGIN, 1).public_key();
    let mut nonces = NonceCache::new(100);
    let wire = send_request(NOW_MS, "n");
    verify(&wire, DEST, &open(), Some(key), &mut nonces, NOW_MS).unwrap();
    assert_eq!(
        verify(
            &wire,
            DEST,
            &open(),
            Some(key),
            &mut nonces,
            NOW_MS + 3_600_000
        )
        .unwrap_err(),
        VerifyError::Clock("expired")
    );
}

#[test]
fn replayed_nonce_is_refused() {
    let key = signer(ORIGIN, 1).public_key();
    let mut nonces = NonceCache::new(100);
    let wire = send_request(NOW_MS, "once");
    verify(&wire, DEST, &open(), Some(key), &mut nonces, NOW_MS).unwrap();
    let err = verify(&wire, DEST, &open(), Some(key), &mut nonces, NOW_MS + 5_000).unwrap_err();
    assert_eq!(err, VerifyError::Nonce(NonceError::Replayed));
    assert_eq!(code(&err), FedErrorCode::ReplayedNonce);
    // A fresh nonce goes through.
    let wire = send_request(NOW_MS, "twice");
    verify(&wire, DEST, &open(), Some(key), &mut nonces, NOW_MS).unwrap();
}

#[test]
fn denied_origin_is_refused_before_any_key_is_needed() {
    let wire = send_request(NOW_MS, "n");
    let policy = Policy {
        mode: Mode::Allowlist,
        rules: vec![Rule::allow("*.friends.org").unwrap()],
    };
    let req = IncomingRequest {
        method: &wire.method,
        authority: DEST,
        path: &wire.path,
        query: wire.query.as_deref(),
        headers: &wire.headers,
        body: &wire.body,
    };
    // Policy is decided on the parsed origin: no key was looked up (there is none here).
    let err = profile::parse(req).unwrap().admit(&policy).unwrap_err();
    assert_eq!(
        err,
        VerifyError::Denied {
            origin: name(ORIGIN),
            reason: Reason::NotAllowlisted
        }
    );
    let p = ProtocolError::from(&err);
    assert_eq!(
        (p.status(), p.body.error),
        (403, FedErrorCode::FederationDenied)
    );
    assert!(p.headers().is_empty());
}

#[test]
fn unknown_or_rotated_key_is_refused() {
    let wire = send_request(NOW_MS, "n");
    let other = ServerSigningKey::from_seed(&[9; 32]).public();
    let err = verify(
        &wire,
        DEST,
        &open(),
        Some(other),
        &mut NonceCache::new(9),
        NOW_MS,
    )
    .unwrap_err();
    assert!(matches!(err, VerifyError::UnknownKey { .. }), "{err}");
}

/// Signs `wire` with a hand-built signature input (to break the profile on purpose).
fn sign_custom(wire: &mut Wire, components: &[&str], params: &[(&str, Param)], seed: u8) {
    let mut input = SignatureInput::new(components.iter().copied()).unwrap();
    for (name, value) in params {
        input = match value {
            Param::Int(i) => input.with_int(name, *i).unwrap(),
            Param::Str(s) => input.with_str(name, s).unwrap(),
        };
    }
    let parts = RequestParts {
        method: wire.method.clone(),
        authority: DEST.into(),
        path: wire.path.clone(),
        query: wire.query.clone(),
        headers: wire.headers.clone(),
    };
    let base = input.signature_base(Message::Request(&parts)).unwrap();
    let sig = ServerSigningKey::from_seed(&[seed; 32]).sign(base.as_bytes());
    let (si, s) = rfc9421::signature_fields("sig1", &input, &sig).unwrap();
    wire.set_header("signature-input", &si);
    wire.set_header("signature", &s);
}

enum Param {
    Int(i64),
    Str(String),
}

fn params(tag: &str, alg: &str, created: i64, expires: i64) -> Vec<(&'static str, Param)> {
    let key_id = signer(ORIGIN, 1).key_id().as_str().to_owned();
    vec![
        ("created", Param::Int(created)),
        ("expires", Param::Int(expires)),
        ("nonce", Param::Str("custom".into())),
        ("keyid", Param::Str(key_id)),
        ("alg", Param::Str(alg.into())),
        ("tag", Param::Str(tag.into())),
    ]
}

#[test]
fn profile_violations() {
    let now = NOW_MS / 1000;
    let all = profile::COMPONENTS_WITH_BODY;
    let base = || send_request(NOW_MS, "n");

    // A custom signer that follows the profile (other label, other component order) passes.
    let mut w = base();
    let reordered = [
        "signature-agent",
        "content-digest",
        "@query",
        "@path",
        "@authority",
        "@method",
    ];
    sign_custom(
        &mut w,
        &reordered,
        &params("parley-fed-v1", "ed25519", now, now + 300),
        1,
    );
    check(&w, NOW_MS).unwrap();

    let mut w = base();
    sign_custom(
        &mut w,
        &all,
        &params("other-app", "ed25519", now, now + 300),
        1,
    );
    assert_eq!(check(&w, NOW_MS).unwrap_err(), VerifyError::Unsigned);

    let mut w = base();
    sign_custom(
        &mut w,
        &all,
        &params("parley-fed-v1", "rsa-pss-sha512", now, now + 300),
        1,
    );
    assert_eq!(
        code(&check(&w, NOW_MS).unwrap_err()),
        FedErrorCode::WrongProfile
    );

    for missing in all {
        let mut w = base();
        let fewer: Vec<&str> = all.iter().copied().filter(|c| *c != missing).collect();
        sign_custom(
            &mut w,
            &fewer,
            &params("parley-fed-v1", "ed25519", now, now + 300),
            1,
        );
        assert_eq!(
            check(&w, NOW_MS).unwrap_err(),
            VerifyError::MissingComponent(missing.to_owned())
        );
    }

    let mut w = base();
    sign_custom(
        &mut w,
        &all,
        &params("parley-fed-v1", "ed25519", now, now + 301),
        1,
    );
    assert_eq!(
        check(&w, NOW_MS).unwrap_err(),
        VerifyError::Clock("expires must be 1..=300 s after created")
    );

    let mut w = base();
    let mut p = params("parley-fed-v1", "ed25519", now, now + 300);
    p.retain(|(n, _)| *n != "nonce");
    sign_custom(&mut w, &all, &p, 1);
    assert_eq!(
        code(&check(&w, NOW_MS).unwrap_err()),
        FedErrorCode::MalformedSignature
    );

    // Two parley-fed-v1 signatures are ambiguous.
    let mut w = base();
    let si = w.header("signature-input").unwrap().to_owned();
    let s = w.header("signature").unwrap().to_owned();
    w.set_header(
        "signature-input",
        &format!("{si}, {}", si.replacen("parley=", "again=", 1)),
    );
    w.set_header(
        "signature",
        &format!("{s}, {}", s.replacen("parley=", "again=", 1)),
    );
    assert_eq!(
        code(&check(&w, NOW_MS).unwrap_err()),
        FedErrorCode::WrongProfile
    );

    // Signature-Agent must be an sf-string holding a server name.
    for bad in ["a.example.org", "\"not a name\"", "1"] {
        let mut w = base();
        w.set_header("signature-agent", bad);
        assert_eq!(
            code(&check(&w, NOW_MS).unwrap_err()),
            FedErrorCode::BadSignatureAgent,
            "{bad}"
        );
    }

    // A body without a covered digest.
    let mut w = signed(
        &signer(ORIGIN, 1),
        DEST,
        ("PUT", "/x", None),
        b"",
        NOW_MS,
        "n",
    );
    w.body = b"smuggled".to_vec();
    assert_eq!(
        check(&w, NOW_MS).unwrap_err(),
        VerifyError::MissingComponent("content-digest".into())
    );
    let mut w = base();
    w.set_header("content-digest", "sha-256=:AAAA");
    assert!(matches!(
        check(&w, NOW_MS).unwrap_err(),
        VerifyError::BadSignature | VerifyError::Digest(DigestError::Syntax)
    ));
}

#[test]
fn signer_validates_its_inputs() {
    let s = signer(ORIGIN, 1);
    assert!(s.clone().with_validity(301).is_err());
    assert!(s.clone().with_validity(0).is_err());
    let dest = name(DEST);
    let req = profile::OutgoingRequest {
        method: "GET",
        destination: &dest,
        path: "/",
        query: None,
        body: b"",
    };
    assert!(s.sign(&req, NOW_MS, "").is_err());
    assert!(s.sign(&req, NOW_MS, "bad\nnonce").is_err());
    let n1 = profile::random_nonce();
    assert_eq!(n1.len(), 22);
    assert_ne!(n1, profile::random_nonce());
}
