//! The committed generated files are what the code generates now, and the committed
//! test vectors verify against the code.

use parley_spec::{docs, generated, vectors};

#[test]
fn generated_files_are_up_to_date() {
    let dir = docs::spec_dir();
    let stale: Vec<String> = generated::files()
        .into_iter()
        .filter(|(path, contents)| {
            std::fs::read_to_string(dir.join(path)).ok().as_ref() != Some(contents)
        })
        .map(|(path, _)| path)
        .collect();
    assert!(
        stale.is_empty(),
        "spec/{stale:?} differ from the code: run `cargo run -p parley-spec --bin parley-spec-gen` and commit"
    );
}

fn committed(name: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(docs::spec_dir().join("test-vectors").join(name)).unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn the_signature_vectors_verify() {
    vectors::verify_signatures(&committed("federation-signatures.json")).unwrap();
}

#[test]
fn the_envelope_vectors_round_trip() {
    vectors::verify_envelopes(&committed("envelope.json")).unwrap();
}

#[test]
fn the_openapi_document_lists_every_endpoint() {
    let doc = generated::openapi();
    for e in parley_client_api::http::ENDPOINTS {
        let method = e.method.as_str().to_ascii_lowercase();
        assert!(
            doc["paths"][e.path][&method].is_object(),
            "{} {} missing",
            e.method.as_str(),
            e.path
        );
    }
}
