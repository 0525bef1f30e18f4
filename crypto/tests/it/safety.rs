//! Safety number test vectors: `spec/test-vectors/safety-number.json` (spec/devices.md, DV1).
//!
//! The test recomputes every case and compares it with the committed file. To
//! regenerate after a deliberate change:
//! `PARLEY_WRITE_VECTORS=1 cargo test -p parley-crypto --test it safety`.

use parley_crypto::{DeviceId, DeviceIdentity, DevicePublicIdentity, UserId, user_safety_number};
use serde_json::{Value, json};

fn path() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../spec/test-vectors/safety-number.json")
}

fn device(user: &str, device: &str, seed: u8) -> DevicePublicIdentity {
    DeviceIdentity::from_secret_bytes(
        UserId::try_from(user).unwrap(),
        DeviceId::try_from(device).unwrap(),
        &[seed; 32],
    )
    .public()
    .clone()
}

fn user_json(user: &str, devices: &[DevicePublicIdentity]) -> Value {
    json!({
        "user_id": user,
        "devices": devices.iter().map(|d| json!({
            "device_id": d.device_id().as_str(),
            "identity_key": hex::encode(d.key()),
            "encoding": hex::encode(d.to_bytes()),
        })).collect::<Vec<_>>(),
    })
}

fn generate() -> Value {
    let a = "@alice:a.example";
    let b = "@bob:b.example";
    let cases: Vec<(&str, Vec<DevicePublicIdentity>, Vec<DevicePublicIdentity>)> = vec![
        (
            "one device each",
            vec![device(a, "PHONE", 1)],
            vec![device(b, "LAPTOP", 2)],
        ),
        (
            "alice links a second device",
            vec![device(a, "PHONE", 1), device(a, "TABLET", 3)],
            vec![device(b, "LAPTOP", 2)],
        ),
        (
            "devices listed in another order",
            vec![device(a, "TABLET", 3), device(a, "PHONE", 1)],
            vec![device(b, "LAPTOP", 2)],
        ),
    ];
    let cases: Vec<Value> = cases
        .into_iter()
        .map(|(name, da, db)| {
            let ua = UserId::try_from(a).unwrap();
            let ub = UserId::try_from(b).unwrap();
            let n = user_safety_number((&ua, &da), (&ub, &db)).unwrap();
            json!({
                "name": name,
                "user_a": user_json(a, &da),
                "user_b": user_json(b, &db),
                "safety_number": n.digits(),
                "shown": n.to_string(),
            })
        })
        .collect();
    json!({
        "description": "Parley user safety numbers (spec/devices.md DV1; parley-crypto identity.rs user_safety_number). Byte strings are lowercase hex; identity keys are the ed25519 public keys of the secret keys 0x01…01, 0x02…02, 0x03…03.",
        "device_encoding": "0x01 || u8 len || user id || u8 len || device id || 32-byte ed25519 key",
        "device_list": "L = u8 len || user id || for each device encoding, sorted bytewise, duplicates dropped: u16be len || encoding",
        "digits": "h0 = SHA-512(\"parley-user-safety-number-v1\" || L); h(i+1) = SHA-512(h(i) || L) for i in 0..5200; for each of the first six 5-byte chunks c of h5200: (c as 40-bit big-endian) mod 100000, 5 digits",
        "number": "the two users' 30-digit strings sorted and concatenated; shown as 12 groups of 5",
        "cases": cases,
    })
}

#[test]
fn safety_number_vectors_match_the_committed_file() {
    let generated = generate();
    if std::env::var_os("PARLEY_WRITE_VECTORS").is_some() {
        let text = serde_json::to_string_pretty(&generated).unwrap() + "\n";
        std::fs::write(path(), text).unwrap();
    }
    let committed: Value =
        serde_json::from_str(&std::fs::read_to_string(path()).expect(
            "spec/test-vectors/safety-number.json missing: run with PARLEY_WRITE_VECTORS=1",
        ))
        .unwrap();
    assert_eq!(
        committed, generated,
        "safety number vectors are stale: PARLEY_WRITE_VECTORS=1 cargo test -p parley-crypto --test it safety"
    );
    let cases = committed["cases"].as_array().unwrap();
    // Order does not matter; a new device changes the number.
    assert_eq!(cases[1]["safety_number"], cases[2]["safety_number"]);
    assert_ne!(cases[0]["safety_number"], cases[1]["safety_number"]);
}
