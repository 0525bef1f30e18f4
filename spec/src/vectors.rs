//! Generated test vectors (`spec/test-vectors/`): federation request signatures and
//! plaintext envelope encodings, made by the code from fixed inputs. The drift test
//! regenerates them, and [`verify_signatures`] checks the committed signatures with the
//! verifier. (Media encryption vectors are `parley-crypto`'s, checked by its `vectors`
//! test.)

use parley_crypto::envelope::{Content, Envelope, MessageId, ReactionAction};
use parley_federation::ServerName;
use parley_federation::keys::{ServerPublicKey, ServerSigningKey};
use parley_federation::signing::profile::{self, IncomingRequest, OutgoingRequest, RequestSigner};
use serde_json::{Value, json};

/// The fixed signing key seed of the vectors: bytes 0, 1, …, 31.
fn seed() -> [u8; 32] {
    std::array::from_fn(|i| u8::try_from(i).unwrap_or(0))
}

const NOW_MS: i64 = 1_767_225_600_000;
const ORIGIN: &str = "origin.example";
const DESTINATION: &str = "destination.example:8448";

/// `(file name, contents)` of every generated vector file.
pub fn generate() -> Vec<(&'static str, Value)> {
    vec![
        ("federation-signatures", signatures()),
        ("envelope", envelopes()),
    ]
}

fn signatures() -> Value {
    let key = ServerSigningKey::from_seed(&seed());
    let signer = RequestSigner::new(ServerName::try_from(ORIGIN).expect("origin"), key.clone());
    let dest = ServerName::try_from(DESTINATION).expect("destination");
    let body = format!(r#"{{"origin":"{ORIGIN}","origin_ts":{NOW_MS}}}"#);
    let cases = [
        (
            "put-with-body",
            "PUT",
            "/_parley/fed/v1/send/txn-1",
            body.as_str(),
            "bm9uY2UtMQ",
        ),
        (
            "get-without-body",
            "GET",
            "/_parley/fed/v1/users/@bob:destination.example:8448/devices",
            "",
            "bm9uY2UtMg",
        ),
    ];
    let cases: Vec<Value> = cases
        .iter()
        .map(|(name, method, path, body, nonce)| {
            let headers = signer
                .sign(
                    &OutgoingRequest {
                        method,
                        destination: &dest,
                        path,
                        query: None,
                        body: body.as_bytes(),
                    },
                    NOW_MS,
                    nonce,
                )
                .expect("signing a vector");
            let headers: serde_json::Map<String, Value> = headers
                .to_vec()
                .into_iter()
                .map(|(k, v)| (k.to_owned(), json!(v)))
                .collect();
            json!({
                "name": name,
                "method": method,
                "authority": DESTINATION,
                "path": path,
                "body": body,
                "now_ms": NOW_MS,
                "nonce": nonce,
                "headers": headers,
            })
        })
        .collect();
    json!({
        "profile": "parley-fed-v1 (spec/v1/federation.md)",
        "key": {
            "seed_hex": hex::encode(seed()),
            "jwk_x": key.public().jwk_x(),
            "keyid": key.key_id().as_str(),
        },
        "origin": ORIGIN,
        "cases": cases,
    })
}

/// Checks every committed signature vector with the verifier (`parse` → policy →
/// signature, digest and clock at the vector's time).
pub fn verify_signatures(vectors: &Value) -> anyhow::Result<()> {
    let x = vectors["key"]["jwk_x"].as_str().unwrap_or_default();
    let key = ServerPublicKey::from_jwk_x(x)?;
    anyhow::ensure!(
        key.key_id().as_str() == vectors["key"]["keyid"].as_str().unwrap_or_default(),
        "keyid is not the key's thumbprint"
    );
    for case in vectors["cases"].as_array().into_iter().flatten() {
        let headers: Vec<(String, String)> = case["headers"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
            .collect();
        let s = |k: &str| case[k].as_str().unwrap_or_default();
        let req = IncomingRequest {
            method: s("method"),
            authority: s("authority"),
            path: s("path"),
            query: None,
            headers: &headers,
            body: s("body").as_bytes(),
        };
        let now = case["now_ms"].as_i64().unwrap_or_default();
        profile::parse(req)?
            .admit(&parley_federation::Policy::default())?
            .check(Some(&key), now)?;
    }
    Ok(())
}

fn id(s: &str) -> MessageId {
    MessageId::try_from(s).expect("a valid message id")
}

fn envelopes() -> Value {
    let cases = [
        (
            "text",
            Content::Text {
                text: "hello, 世界".into(),
            },
        ),
        (
            "reply",
            Content::Reply {
                in_reply_to: id("b3JpZ2luYWw"),
                text: "yes".into(),
            },
        ),
        (
            "reaction",
            Content::Reaction {
                target: id("b3JpZ2luYWw"),
                emoji: "👍".into(),
                action: ReactionAction::Add,
            },
        ),
        (
            "edit",
            Content::Edit {
                target: id("b3JpZ2luYWw"),
                text: "fixed".into(),
            },
        ),
        (
            "delete",
            Content::Delete {
                target: id("b3JpZ2luYWw"),
            },
        ),
    ];
    let cases: Vec<Value> = cases
        .into_iter()
        .map(|(name, content)| {
            let env = Envelope {
                id: id("dmVjdG9yLWlk"),
                sent_at_ms: 1_767_225_600_000,
                expires_in: None,
                content,
            };
            let bytes = env.to_bytes().expect("encoding a vector");
            json!({"name": name, "json": String::from_utf8_lossy(&bytes), "hex": hex::encode(&bytes)})
        })
        .collect();
    json!({
        "format": "the plaintext envelope v1 (spec/v1/e2ee.md, E7-E8): UTF-8 JSON bytes",
        "cases": cases,
    })
}

/// Checks that every committed envelope vector decodes and re-encodes to its bytes.
pub fn verify_envelopes(vectors: &Value) -> anyhow::Result<()> {
    for case in vectors["cases"].as_array().into_iter().flatten() {
        let bytes = hex::decode(case["hex"].as_str().unwrap_or_default())?;
        let env = Envelope::from_bytes(&bytes)?;
        anyhow::ensure!(
            env.to_bytes()? == bytes,
            "{} does not round-trip",
            case["name"]
        );
    }
    Ok(())
}
