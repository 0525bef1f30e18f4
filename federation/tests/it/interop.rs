//! Interoperability with an independent RFC 9421 implementation: the PyPI library
//! `http-message-signatures` (tests/interop/rfc9421_interop.py) verifies what we sign and
//! signs what we verify, under profile parley-fed-v1.
//!
//! Needs `python3` with `pip install 'http-message-signatures==3.0.0'`; without it the
//! test fails and says so.

use std::io::Write as _;
use std::process::{Command, Stdio};

use base64::Engine as _;
use parley_federation::keys::ServerSigningKey;
use parley_federation::policy::{Mode, Policy, Rule};
use parley_federation::signing::nonce::NonceCache;
use parley_federation::signing::profile::{OutgoingRequest, RequestSigner, VerifyError};
use parley_federation::transport::system_now_ms;
use serde_json::{Value, json};

use crate::{Wire, name, verify};

const INSTALL: &str = "pip install 'http-message-signatures==3.0.0'";
const DEST: &str = "127.0.0.1:8448";
const ORIGIN: &str = "a.example.org";

fn python(request: &Value) -> Value {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/interop/rfc9421_interop.py"
    );
    let mut child = Command::new("python3")
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run python3 ({e}); the interop test needs python3 and `{INSTALL}`")
        });
    child
        .stdin
        .take()
        .unwrap()
        .write_all(request.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    if out.status.code() == Some(3) {
        panic!(
            "the interop test needs the PyPI package http-message-signatures: run `{INSTALL}` ({stdout})"
        );
    }
    assert!(
        out.status.success(),
        "interop script failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(&stdout).unwrap()
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn url(path: &str, query: Option<&str>) -> String {
    match query {
        Some(q) => format!("http://{DEST}{path}?{q}"),
        None => format!("http://{DEST}{path}"),
    }
}

fn key() -> ServerSigningKey {
    ServerSigningKey::from_seed(&[0x42; 32])
}

fn policy() -> Policy {
    Policy {
        mode: Mode::Open,
        rules: vec![Rule::allow("127.0.0.1:*").unwrap()],
    }
}

/// Ours signs, theirs verifies.
fn python_verifies(
    method: &str,
    path: &str,
    query: Option<&str>,
    body: &[u8],
    tamper: bool,
) -> Value {
    let signer = RequestSigner::new(name(ORIGIN), key());
    let dest = name(DEST);
    let headers = signer
        .sign(
            &OutgoingRequest {
                method,
                destination: &dest,
                path,
                query,
                body,
            },
            system_now_ms(),
            "interop-nonce",
        )
        .unwrap();
    let mut sent_body = body.to_vec();
    if tamper {
        sent_body.push(b' ');
    }
    python(&json!({
        "op": "verify",
        "public_key": hex(key().public().as_bytes()),
        "keyid": signer.key_id().as_str(),
        "method": method,
        "url": url(path, query),
        "headers": headers.to_vec().into_iter().map(|(n, v)| vec![n.to_owned(), v]).collect::<Vec<_>>(),
        "body": (!sent_body.is_empty()).then(|| b64(&sent_body)),
    }))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn an_independent_implementation_verifies_our_signatures() {
    let body = br#"{"origin":"a.example.org","origin_ts":1,"events":[]}"#;
    let out = python_verifies("PUT", "/_parley/fed/v1/send/1-3", None, body, false);
    assert_eq!(out["ok"], true, "{out}");
    assert_eq!(out["params"]["tag"], "parley-fed-v1");
    assert_eq!(out["params"]["alg"], "ed25519");
    assert_eq!(out["params"]["keyid"], key().key_id().as_str());
    assert_eq!(
        out["covered"],
        json!([
            "\"@method\"",
            "\"@authority\"",
            "\"@path\"",
            "\"@query\"",
            "\"content-digest\"",
            "\"signature-agent\"",
            "\"@signature-params\""
        ])
    );

    let out = python_verifies(
        "GET",
        "/_parley/fed/v1/users/@bob:127.0.0.1:8448/devices",
        Some("a=1&b=%20x"),
        b"",
        false,
    );
    assert_eq!(out["ok"], true, "{out}");

    // The oracle really checks: a changed body fails there too.
    let out = python_verifies("PUT", "/_parley/fed/v1/send/1-3", None, body, true);
    assert_eq!(out["ok"], false, "{out}");
}

/// Theirs signs, ours verifies.
fn python_signs(method: &str, path: &str, query: Option<&str>, body: &[u8]) -> Wire {
    let created = crate::NOW_MS / 1000;
    let out = python(&json!({
        "op": "sign",
        "seed": hex(key().to_seed().as_ref()),
        "keyid": key().key_id().as_str(),
        "method": method,
        "url": url(path, query),
        "body": (!body.is_empty()).then(|| b64(body)),
        "signature_agent": ORIGIN,
        "created": created,
        "expires": created + 300,
        "nonce": format!("py-{method}-{path}"),
        "label": "pyhms",
    }));
    let headers = out["headers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|pair| {
            (
                pair[0].as_str().unwrap().to_owned(),
                pair[1].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    Wire {
        method: method.to_owned(),
        path: path.to_owned(),
        query: query.map(str::to_owned),
        headers,
        body: body.to_vec(),
    }
}

#[test]
fn we_verify_signatures_of_an_independent_implementation() {
    let body = br#"{"origin":"a.example.org","origin_ts":1}"#;
    let mut nonces = NonceCache::new(100);
    let wire = python_signs("PUT", "/_parley/fed/v1/send/7-7", None, body);
    // Their parameter order differs from ours (created;keyid;alg;expires;nonce;tag).
    assert!(
        wire.header("signature-input")
            .unwrap()
            .starts_with("pyhms=("),
        "{wire:?}"
    );
    let v = verify(
        &wire,
        DEST,
        &policy(),
        Some(key().public()),
        &mut nonces,
        crate::NOW_MS,
    )
    .unwrap();
    assert_eq!(v.origin, name(ORIGIN));

    let wire = python_signs(
        "GET",
        "/_parley/fed/v1/users/@bob:127.0.0.1:8448/devices",
        Some("a=1&b=%20x"),
        b"",
    );
    verify(
        &wire,
        DEST,
        &policy(),
        Some(key().public()),
        &mut nonces,
        crate::NOW_MS,
    )
    .unwrap();

    let mut wire = python_signs("PUT", "/_parley/fed/v1/send/8-8", None, body);
    wire.path = "/_parley/fed/v1/send/8-9".into();
    assert_eq!(
        verify(
            &wire,
            DEST,
            &policy(),
            Some(key().public()),
            &mut nonces,
            crate::NOW_MS
        ),
        Err(VerifyError::BadSignature)
    );
}
