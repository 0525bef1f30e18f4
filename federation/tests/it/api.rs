//! Wire types: shapes, round trips, and the FedEvent ↔ client-api ChatEvent mirror.

use parley_federation::FedErrorCode;
use parley_federation::api::send::{self, EntryError, EventResult, SendResult};
use parley_federation::api::{Ephemeral, FedEvent, MlsKind, fill, keys, version};
use serde_json::{Value, json};

/// A `ChatEvent` as the client API serializes it (client-api/src/http/chats.rs).
fn chat_event_json() -> Value {
    json!({
        "chat_id": "!abc:hub.example.org",
        "seq": 42,
        "sender": "@alice:a.example.org",
        "sender_device": "DEV1",
        "client_msg_id": "m-1",
        "ts": 1_793_491_200_000i64,
        "payload": "AAEC",
        "mls": {"kind": "commit", "epoch": 7},
        "membership": {"add": ["@bob:b.example.org"]}
    })
}

#[test]
fn fed_event_mirrors_chat_event() {
    let event: FedEvent = serde_json::from_value(chat_event_json()).unwrap();
    assert_eq!(event.seq, 42);
    assert_eq!(event.payload.as_bytes(), &[0, 1, 2]);
    assert_eq!(event.mls.unwrap().kind, MlsKind::Commit);
    assert_eq!(serde_json::to_value(&event).unwrap(), chat_event_json());

    // Without the optional fields, they are absent (not null), as in ChatEvent.
    let mut plain = chat_event_json();
    plain.as_object_mut().unwrap().remove("mls");
    plain.as_object_mut().unwrap().remove("membership");
    let event: FedEvent = serde_json::from_value(plain.clone()).unwrap();
    assert_eq!(serde_json::to_value(&event).unwrap(), plain);
    // Ids are validated.
    let mut bad = chat_event_json();
    bad["sender"] = json!("alice");
    assert!(serde_json::from_value::<FedEvent>(bad).is_err());
}

#[test]
fn transaction_shape() {
    let req: send::Request = serde_json::from_value(json!({
        "origin": "hub.example.org",
        "origin_ts": 1,
        "events": [chat_event_json()],
        "receipts": [{"chat_id": "!abc:hub.example.org", "user_id": "@bob:b.example.org",
                      "delivered_seq": 42, "read_seq": 40}],
        "ephemeral": [
            {"type": "typing", "chat_id": "!abc:hub.example.org",
             "user_id": "@bob:b.example.org", "typing": true},
            {"type": "presence", "user_id": "@bob:b.example.org", "online": false,
             "last_seen": 5}
        ]
    }))
    .unwrap();
    assert_eq!(req.entries(), 2);
    assert!(req.sends.is_empty());
    assert_eq!(
        req.ephemeral[0].coalesce_key(),
        "typing !abc:hub.example.org @bob:b.example.org"
    );
    assert!(matches!(
        req.ephemeral[1],
        Ephemeral::Presence { online: false, .. }
    ));
    // Unknown fields are refused.
    assert!(
        serde_json::from_value::<send::Request>(json!({"origin": "a.org", "origin_ts": 1, "x": 1}))
            .is_err()
    );
    assert_eq!(
        fill(send::PATH, &[("txn_id", "4-5")]),
        "/_parley/fed/v1/send/4-5"
    );
    assert_eq!(send::METHOD.as_str(), "PUT");
}

#[test]
fn per_entry_results() {
    let resp = send::Response {
        sends: vec![
            SendResult::Accepted {
                seq: 43,
                ts: 9,
                duplicate: false,
            },
            SendResult::Rejected(EntryError {
                error: FedErrorCode::WrongEpoch,
                message: "epoch 8 is current".into(),
                current_epoch: Some(8),
            }),
        ],
        events: vec![EventResult::Stored { seq: 42 }],
    };
    let v = serde_json::to_value(&resp).unwrap();
    assert_eq!(
        v,
        json!({
            "sends": [
                {"seq": 43, "ts": 9, "duplicate": false},
                {"error": "wrong_epoch", "message": "epoch 8 is current", "current_epoch": 8}
            ],
            "events": [{"seq": 42}]
        })
    );
    assert_eq!(serde_json::from_value::<send::Response>(v).unwrap(), resp);
}

#[test]
fn other_endpoints() {
    assert_eq!(version::PATH, "/_parley/fed/v1/version");
    let v: version::Response =
        serde_json::from_value(json!({"versions": ["parley-fed-v1"]})).unwrap();
    assert!(v.features.is_empty());
    let claim: keys::claim::Response = serde_json::from_value(json!({"users": {
        "@bob:b.example.org": [{"device_id": "D1", "key_package": "AQI=", "last_resort": true}]
    }}))
    .unwrap();
    assert_eq!(claim.users.len(), 1);
    assert_eq!(
        fill(
            keys::user_devices::PATH,
            &[("user_id", "@bob:b.example.org")]
        ),
        "/_parley/fed/v1/users/@bob:b.example.org/devices"
    );
}
