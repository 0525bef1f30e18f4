//! Push notifications over real HTTP: the real `parley-push-gateway` binary gets a
//! notification (chat id and counts, no content) for an offline device and none for an
//! online one; unread counts reset by read receipts; notifications are coalesced per
//! device; a gateway that is down is retried until it is back.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use parley_testkit::ServerProcess;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::harness::{Backend, Server, User};

crate::on_both_backends!(
    push_reaches_the_gateway_for_an_offline_device_only,
    push_is_coalesced_and_retried_while_the_gateway_is_down,
);

fn config(coalesce_ms: u64) -> String {
    format!(
        "[push]\nallow_insecure = true\ncoalesce_ms = {coalesce_ms}\nretry_base_ms = 200\nretry_max_ms = 800\nmax_attempts = 30\n"
    )
}

async fn add_pusher(server: &Server, me: &User, url: &str, token: &str) -> Result<()> {
    let (status, body) = server
        .post(
            "/v1/pushers",
            Some(&me.token),
            json!({"url": url, "token": token}),
        )
        .await?;
    ensure!(status == StatusCode::OK, "{status} {body}");
    Ok(())
}

/// Notification lines the gateway printed for `token`.
fn gateway_lines(gw: &ServerProcess, token: &str) -> Vec<Value> {
    gw.logs()
        .lines()
        .filter_map(|l| l.find('{').map(|i| &l[i..]))
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["token"] == token)
        .collect()
}

async fn wait_lines(gw: &ServerProcess, token: &str, n: usize, d: Duration) -> Result<Vec<Value>> {
    let deadline = tokio::time::Instant::now() + d;
    loop {
        let lines = gateway_lines(gw, token);
        if lines.len() >= n {
            return Ok(lines);
        }
        if tokio::time::Instant::now() > deadline {
            bail!("{} of {n} notifications: {}", lines.len(), gw.logs());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn push_reaches_the_gateway_for_an_offline_device_only(backend: Backend) -> Result<()> {
    let gw = ServerProcess::spawn(
        env!("CARGO_BIN_EXE_parley-push-gateway"),
        ["--listen", "127.0.0.1:0"],
        [("PARLEY_LOG", "info")],
    )
    .await?;
    let url = format!("http://{}/_parley/push/v1/notify", gw.addr());
    let server = Server::start_with_config(backend, &config(300)).await?;
    let alice = server.register("alice").await?;
    let bob = server.register("bob").await?;
    let chat = server.create_chat(&alice, &[&bob]).await?;

    // Bad pushers change nothing.
    for body in [
        json!({"url": "ftp://127.0.0.1/x", "token": "t"}),
        json!({"url": url, "token": ""}),
    ] {
        let (status, answer) = server.post("/v1/pushers", Some(&bob.token), body).await?;
        ensure!(
            status == StatusCode::BAD_REQUEST && answer["error"] == "invalid_param",
            "{status} {answer}"
        );
    }
    add_pusher(&server, &bob, &url, "tok-bob").await?;
    let (status, list) = server.get("/v1/pushers", &bob.token).await?;
    ensure!(status == StatusCode::OK, "{status}");
    assert_eq!(list["pushers"][0]["device_id"], bob.device_id.as_str());
    assert_eq!(list["pushers"][0]["token"], "tok-bob");

    // Bob is offline: alice's message notifies his gateway, without content.
    let (status, _) = server
        .send(&alice, &chat, "m1", b"very secret words")
        .await?;
    ensure!(status == StatusCode::CREATED);
    let lines = wait_lines(&gw, "tok-bob", 1, Duration::from_secs(10)).await?;
    assert_eq!(lines[0]["chat_id"], chat.as_str());
    assert_eq!(lines[0]["counts"], json!({"unread": 1, "chat_unread": 1}));
    let logs = gw.logs();
    ensure!(
        !logs.contains("very secret") && !logs.contains("dmVyeSBzZWNyZXQ"),
        "{logs}"
    );

    // Bob online: no notification.
    let mut bob_ws = server.connect(&bob).await?;
    bob_ws.until_synced().await?;
    tokio::time::sleep(Duration::from_millis(400)).await;
    server.send(&alice, &chat, "m2", b"x").await?;
    bob_ws.events(1).await?;
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    assert_eq!(gateway_lines(&gw, "tok-bob").len(), 1, "{}", gw.logs());

    // Offline again, after reading everything: counts start over.
    let (status, _) = server
        .post(
            &format!("/v1/chats/{chat}/read"),
            Some(&bob.token),
            json!({"seq": 2}),
        )
        .await?;
    ensure!(status == StatusCode::NO_CONTENT);
    bob_ws.close().await?;
    server.send(&alice, &chat, "m3", b"x").await?;
    let lines = wait_lines(&gw, "tok-bob", 2, Duration::from_secs(10)).await?;
    assert_eq!(lines[1]["counts"], json!({"unread": 1, "chat_unread": 1}));

    // One's own messages from another device notify no one; a removed pusher neither.
    let (status, _) = server.send(&bob, &chat, "b1", b"x").await?;
    ensure!(status == StatusCode::CREATED);
    let resp = server
        .request(
            reqwest::Method::DELETE,
            &format!("/v1/pushers/{}", bob.device_id),
            Some(&bob.token),
            None,
        )
        .await?;
    ensure!(resp.0 == StatusCode::NO_CONTENT, "{resp:?}");
    server.send(&alice, &chat, "m4", b"x").await?;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(gateway_lines(&gw, "tok-bob").len(), 2, "{}", gw.logs());
    let (_, list) = server.get("/v1/pushers", &bob.token).await?;
    assert_eq!(list["pushers"], json!([]));
    let resp = server
        .request(
            reqwest::Method::DELETE,
            &format!("/v1/pushers/{}", bob.device_id),
            Some(&bob.token),
            None,
        )
        .await?;
    ensure!(resp.0 == StatusCode::NOT_FOUND, "{resp:?}");
    Ok(())
}

/// A local gateway: records each notification body with its arrival time.
type Seen = Arc<Mutex<Vec<(tokio::time::Instant, Value)>>>;

async fn local_gateway(listener: tokio::net::TcpListener, seen: Seen) {
    let app = axum::Router::new().route(
        "/notify",
        axum::routing::post(move |axum::Json(body): axum::Json<Value>| {
            let seen = seen.clone();
            async move {
                seen.lock()
                    .unwrap()
                    .push((tokio::time::Instant::now(), body));
                axum::Json(json!({"rejected": []}))
            }
        }),
    );
    let _ = axum::serve(listener, app).await;
}

async fn push_is_coalesced_and_retried_while_the_gateway_is_down(backend: Backend) -> Result<()> {
    let port = parley_testkit::free_port("127.0.0.1");
    let url = format!("http://127.0.0.1:{port}/notify");
    let server = Server::start_with_config(backend, &config(2_000)).await?;
    let alice = server.register("alice").await?;
    let bob = server.register("bob").await?;
    let chat = server.create_chat(&alice, &[&bob]).await?;
    add_pusher(&server, &bob, &url, "tok").await?;

    // The gateway is down: the notification is retried until it comes up.
    server.send(&alice, &chat, "m1", b"x").await?;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let seen: Seen = Arc::default();
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .context("rebinding the gateway port")?;
    let gateway = tokio::spawn(local_gateway(listener, seen.clone()));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while seen.lock().unwrap().is_empty() {
        ensure!(tokio::time::Instant::now() < deadline, "never retried");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let first = seen.lock().unwrap()[0].clone();
    assert_eq!(first.1["notification"]["chat_id"], chat.as_str());
    assert_eq!(first.1["notification"]["token"], "tok");

    // Five quick messages: one notification after the 2 s window, with all counted.
    for i in 0..5 {
        server.send(&alice, &chat, &format!("n{i}"), b"x").await?;
    }
    tokio::time::sleep(Duration::from_millis(3_500)).await;
    let all = seen.lock().unwrap().clone();
    ensure!(all.len() == 2, "expected 2 notifications, got {all:?}");
    let gap = all[1].0 - all[0].0;
    ensure!(
        gap >= Duration::from_millis(1_900),
        "not coalesced: {gap:?}"
    );
    assert_eq!(
        all[1].1["notification"]["counts"],
        json!({"unread": 6, "chat_unread": 6})
    );
    gateway.abort();
    Ok(())
}
