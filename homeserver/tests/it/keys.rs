//! KeyPackages: upload, count, claim (one-time first, last-resort never removed).

use anyhow::{Result, ensure};
use parley_client_api::Payload;
use reqwest::StatusCode;
use serde_json::json;

use crate::harness::{Backend, Server};

crate::on_both_backends!(claims_take_one_time_packages_then_the_last_resort);

async fn claims_take_one_time_packages_then_the_last_resort(backend: Backend) -> Result<()> {
    let server = Server::start(backend).await?;
    let alice = server.register("alice").await?;
    let bob = server.register("bob").await?;
    let bob2 = server.login("bob").await?;
    let kp = |s: &str| Payload(s.as_bytes().to_vec());
    let (status, count) = server
        .post(
            "/v1/keys/key_packages",
            Some(&bob.token),
            json!({"key_packages": [kp("b1"), kp("b2")], "last_resort": kp("blr")}),
        )
        .await?;
    ensure!(
        status == StatusCode::OK && count == json!({"one_time": 2, "has_last_resort": true}),
        "{count}"
    );
    server
        .post(
            "/v1/keys/key_packages",
            Some(&bob2.token),
            json!({"key_packages": [kp("c1")]}),
        )
        .await?;

    let claim = || {
        server.post(
            "/v1/keys/claim",
            Some(&alice.token),
            json!({"user_id": bob.user_id}),
        )
    };
    let got = |v: &serde_json::Value, device: &str| -> (String, bool) {
        let d = v["devices"]
            .as_array()
            .and_then(|ds| ds.iter().find(|d| d["device_id"] == device))
            .cloned()
            .unwrap_or_default();
        let data: Payload = serde_json::from_value(d["key_package"].clone()).unwrap_or_default();
        (
            String::from_utf8_lossy(&data.0).into_owned(),
            d["last_resort"] == true,
        )
    };
    let (_, first) = claim().await?;
    ensure!(
        got(&first, &bob.device_id) == ("b1".into(), false),
        "{first}"
    );
    ensure!(
        got(&first, &bob2.device_id) == ("c1".into(), false),
        "{first}"
    );
    let (_, second) = claim().await?;
    ensure!(got(&second, &bob.device_id) == ("b2".into(), false));
    // bob2 has nothing left and no last resort: left out.
    ensure!(
        second["devices"].as_array().map(Vec::len) == Some(1),
        "{second}"
    );
    for _ in 0..2 {
        let (_, more) = claim().await?;
        ensure!(got(&more, &bob.device_id) == ("blr".into(), true), "{more}");
    }
    let (_, count) = server.get("/v1/keys/key_packages", &bob.token).await?;
    ensure!(count == json!({"one_time": 0, "has_last_resort": true}));

    let (_, devices) = server
        .get(&format!("/v1/users/{}/devices", bob.user_id), &alice.token)
        .await?;
    ensure!(
        devices["devices"].as_array().map(Vec::len) == Some(2),
        "{devices}"
    );

    // Bad input changes nothing.
    let (status, body) = server
        .post("/v1/keys/key_packages", Some(&bob.token), json!({}))
        .await?;
    ensure!(status == StatusCode::BAD_REQUEST && body["error"] == "invalid_param");
    let big = Payload(vec![0; 16 * 1024 + 1]);
    let (status, body) = server
        .post(
            "/v1/keys/key_packages",
            Some(&bob.token),
            json!({"key_packages": [big]}),
        )
        .await?;
    ensure!(
        status == StatusCode::PAYLOAD_TOO_LARGE && body["error"] == "too_large",
        "{status} {body}"
    );
    let (status, body) = server
        .post(
            "/v1/keys/claim",
            Some(&alice.token),
            json!({"user_id": "@nobody:parley.test"}),
        )
        .await?;
    ensure!(status == StatusCode::NOT_FOUND && body["error"] == "unknown_user");
    let (_, count) = server.get("/v1/keys/key_packages", &bob.token).await?;
    ensure!(count == json!({"one_time": 0, "has_last_resort": true}));
    Ok(())
}
