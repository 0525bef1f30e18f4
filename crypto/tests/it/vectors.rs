//! Media encryption test vectors: `spec/test-vectors/media-encryption.json`.
//!
//! The test recomputes every case and compares it with the committed file.
//! To regenerate after a deliberate format change:
//! `PARLEY_WRITE_VECTORS=1 cargo test -p parley-crypto --test it vectors`.

use parley_crypto::MediaKey;
use parley_crypto::media::{
    CHUNK_SIZE, MIN_PADDED_LEN, TAG_SIZE, decrypt_bytes, encrypt_with_key, padded_len,
};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

fn path() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../spec/test-vectors/media-encryption.json")
}

/// Plaintexts: (name, bytes, whether to spell the plaintext out in hex).
fn cases() -> Vec<(&'static str, Vec<u8>, bool)> {
    vec![
        ("empty", Vec::new(), true),
        ("short text", b"hello parley".to_vec(), true),
        ("ends like padding", b"abc\x80\x00\x00".to_vec(), true),
        (
            "1000 bytes i mod 251",
            (0..1000).map(|i| (i % 251) as u8).collect(),
            true,
        ),
        (
            "two chunks: 65636 bytes i mod 251",
            (0..65_636).map(|i| (i % 251) as u8).collect(),
            false,
        ),
    ]
}

fn key(i: usize) -> MediaKey {
    let mut k = [0u8; 32];
    for (j, b) in k.iter_mut().enumerate() {
        *b = (j + 32 * i) as u8;
    }
    MediaKey::from_bytes(k)
}

fn generate() -> Value {
    let cases: Vec<Value> = cases()
        .into_iter()
        .enumerate()
        .map(|(i, (name, plaintext, spell_out))| {
            let key = key(i);
            let mut ct = Vec::new();
            let (blob, _, _) = encrypt_with_key(&key, plaintext.as_slice(), &mut ct).unwrap();
            let mut case = json!({
                "name": name,
                "key": hex::encode(key.as_bytes()),
                "plaintext_len": plaintext.len(),
                "plaintext_sha256": hex::encode(Sha256::digest(&plaintext)),
                "padded_len": padded_len(plaintext.len() as u64),
                "ciphertext_len": ct.len(),
                "ciphertext": hex::encode(&ct),
                "blob": blob.to_string(),
            });
            if spell_out {
                case["plaintext"] = Value::String(hex::encode(&plaintext));
            } else {
                case["plaintext_generator"] = Value::String("byte i = i mod 251".into());
            }
            case
        })
        .collect();
    json!({
        "description": "Parley media encryption (parley-crypto media.rs). All byte strings are lowercase hex.",
        "aead": "ChaCha20-Poly1305 (RFC 8439), empty associated data",
        "chunk_size": CHUNK_SIZE,
        "tag_size": TAG_SIZE,
        "nonce": "12 bytes: 7 zero bytes || chunk index as u32 big-endian || 0x01 for the last chunk, else 0x00 (= aead::stream::StreamBE32 with a zero 7-byte prefix; equivalently an 11-byte big-endian counter || flag)",
        "padding": format!(
            "plaintext || 0x80 || 0x00... to padded_len = max({MIN_PADDED_LEN}, padme(len + 1)); padme(L) = round L up to a multiple of 2^(floor(log2 L) - floor(log2 floor(log2 L)) - 1)"
        ),
        "ciphertext": "for each chunk of the padded plaintext (64 KiB, last one shorter or full, never empty): chunk_ciphertext || tag",
        "blob": "SHA-256 of the whole ciphertext",
        "cases": cases,
    })
}

#[test]
fn media_vectors_match_the_committed_file() {
    let generated = generate();
    if std::env::var_os("PARLEY_WRITE_VECTORS").is_some() {
        std::fs::create_dir_all(path().parent().unwrap()).unwrap();
        let text = serde_json::to_string_pretty(&generated).unwrap() + "\n";
        std::fs::write(path(), text).unwrap();
    }
    let committed: Value = serde_json::from_str(&std::fs::read_to_string(path()).expect(
        "spec/test-vectors/media-encryption.json missing: run with PARLEY_WRITE_VECTORS=1",
    ))
    .unwrap();
    assert_eq!(
        committed, generated,
        "media vectors are stale: PARLEY_WRITE_VECTORS=1 cargo test -p parley-crypto --test it vectors"
    );

    // And each committed ciphertext decrypts to its plaintext.
    for case in committed["cases"].as_array().unwrap() {
        let key: [u8; 32] = hex::decode(case["key"].as_str().unwrap())
            .unwrap()
            .try_into()
            .unwrap();
        let ct = hex::decode(case["ciphertext"].as_str().unwrap()).unwrap();
        let pt = decrypt_bytes(&MediaKey::from_bytes(key), &ct, None).unwrap();
        assert_eq!(
            hex::encode(Sha256::digest(&pt)),
            case["plaintext_sha256"].as_str().unwrap()
        );
        assert_eq!(
            hex::encode(Sha256::digest(&ct)),
            case["blob"].as_str().unwrap()
        );
    }
}
