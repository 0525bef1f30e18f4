//! The key directory: built and signed by its server, verified by a peer.

use parley_federation::directory::{
    self, DirectoryDocument, DirectoryError, KeyToPublish, RetiredKey, build_response,
    verify_response,
};
use parley_federation::keys::{ServerPublicKey, ServerSigningKey};

use crate::{NOW_MS, name};

fn headers(resp: &directory::DirectoryResponse) -> Vec<(String, String)> {
    resp.headers
        .iter()
        .map(|(n, v)| ((*n).to_owned(), v.clone()))
        .collect()
}

#[test]
fn round_trip_with_rotation_and_retired_keys() {
    let old = ServerSigningKey::from_seed(&[1; 32]);
    let current = ServerSigningKey::from_seed(&[2; 32]);
    let next = ServerSigningKey::from_seed(&[3; 32]);
    let now = NOW_MS / 1000;
    let resp = build_response(
        &name("b.example.org"),
        &[
            KeyToPublish {
                key: &current,
                nbf: now - 10,
                exp: now + 86_400,
            },
            KeyToPublish {
                key: &next,
                nbf: now + 3_600,
                exp: now + 2 * 86_400,
            },
        ],
        &[RetiredKey {
            key: old.public(),
            retired_at: now - 100,
        }],
        NOW_MS,
        600,
    )
    .unwrap();
    let h = headers(&resp);
    let get = |n: &str| h.iter().find(|(k, _)| k == n).map(|(_, v)| v.as_str());
    assert_eq!(get("content-type"), Some(directory::MEDIA_TYPE));
    assert_eq!(get("cache-control"), Some("max-age=600"));
    let si = get("signature-input").unwrap();
    assert!(
        si.starts_with("key0=(\"@authority\";req \"content-digest\");created="),
        "{si}"
    );
    assert!(
        si.contains("tag=\"http-message-signatures-directory\""),
        "{si}"
    );

    let doc: DirectoryDocument = serde_json::from_slice(&resp.body).unwrap();
    assert_eq!(doc.keys[0].kid, current.key_id().as_str());
    assert_eq!(doc.keys[0].kty, "OKP");
    assert_eq!(doc.retired_keys[0].retired_at, Some(now - 100));

    let v = verify_response(&name("b.example.org"), &h, &resp.body, NOW_MS + 5_000).unwrap();
    assert_eq!(v.keys.len(), 2);
    assert_eq!(v.keys[0].key, current.public());
    assert!(v.keys[0].valid_at(now));
    assert!(!v.keys[1].valid_at(now), "the next key is not valid yet");
    assert_eq!(
        v.retired,
        vec![RetiredKey {
            key: old.public(),
            retired_at: now - 100
        }]
    );
}

#[test]
fn refuses_tampered_or_misdirected_directories() {
    let key = ServerSigningKey::from_seed(&[2; 32]);
    let now = NOW_MS / 1000;
    let resp = build_response(
        &name("b.example.org"),
        &[KeyToPublish {
            key: &key,
            nbf: now,
            exp: now + 86_400,
        }],
        &[],
        NOW_MS,
        600,
    )
    .unwrap();
    let h = headers(&resp);

    // Served for another authority (a replayed directory): no key proves itself.
    assert_eq!(
        verify_response(&name("evil.example.org"), &h, &resp.body, NOW_MS),
        Err(DirectoryError::NoValidKey)
    );
    // A key slipped into the body: the digest no longer matches.
    let mut doc: DirectoryDocument = serde_json::from_slice(&resp.body).unwrap();
    let mut extra = doc.keys[0].clone();
    let intruder = ServerSigningKey::from_seed(&[6; 32]).public();
    extra.x = intruder.jwk_x();
    extra.kid = intruder.key_id().as_str().to_owned();
    doc.keys.push(extra);
    let body = serde_json::to_vec(&doc).unwrap();
    assert!(matches!(
        verify_response(&name("b.example.org"), &h, &body, NOW_MS),
        Err(DirectoryError::Digest(_))
    ));
    // ... and with a recomputed digest, the unsigned key is dropped, the signed one kept
    // only if its signature (which covers the digest) still verifies: none does.
    let mut h2 = h.clone();
    for (n, v) in h2.iter_mut() {
        if n == "content-digest" {
            *v = parley_federation::signing::digest::content_digest(&body);
        }
    }
    assert_eq!(
        verify_response(&name("b.example.org"), &h2, &body, NOW_MS),
        Err(DirectoryError::NoValidKey)
    );
    // Unsigned.
    let unsigned: Vec<_> = h
        .iter()
        .filter(|(n, _)| !n.starts_with("signature"))
        .cloned()
        .collect();
    assert!(matches!(
        verify_response(&name("b.example.org"), &unsigned, &resp.body, NOW_MS),
        Err(DirectoryError::Signatures(_))
    ));
    // Signatures long expired.
    assert_eq!(
        verify_response(&name("b.example.org"), &h, &resp.body, NOW_MS + 700_000),
        Err(DirectoryError::NoValidKey)
    );
    assert!(matches!(
        verify_response(&name("b.example.org"), &h, b"not json", NOW_MS),
        Err(DirectoryError::Json(_))
    ));
}

/// design.md: compute key ids; the directory draft's example `kid` for the RFC 9421
/// test key is not that key's RFC 7638 thumbprint.
#[test]
fn key_ids_are_computed_thumbprints() {
    let rfc_test_key =
        ServerPublicKey::from_jwk_x("JrQLj5P_89iXES9-vFgrIy29clF9CC_oPPsw3c5D0bs").unwrap();
    assert_ne!(
        rfc_test_key.key_id().as_str(),
        "NFcWBst6DXG-N35nHdzMrioWntdzNZghQSkjHNMMSjw"
    );
    assert_eq!(rfc_test_key.key_id().as_str().len(), 43);
}
