//! Every bad input gets a clear error (status + code + message) and changes nothing.

use std::time::Duration;

use anyhow::{Result, ensure};
use parley_client_api::ws::ServerFrame;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::harness::{Backend, Server, Ws};

crate::on_both_backends!(
    bad_http_input_is_refused_and_changes_nothing,
    bad_socket_frames_get_error_frames
);

fn check(what: &str, got: (StatusCode, Value), status: u16, code: &str) -> Result<()> {
    ensure!(
        got.0.as_u16() == status
            && got.1["error"] == code
            && got.1["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{what}: expected {status} {code}, got {} {}",
        got.0,
        got.1
    );
    Ok(())
}

async fn raw(
    server: &Server,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> Result<(StatusCode, Value)> {
    let mut req = reqwest::Client::new()
        .request(method, format!("{}{path}", server.base))
        .header("content-type", "application/json")
        .body(body.to_owned());
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await?;
    let status = resp.status();
    Ok((status, resp.json().await.unwrap_or(Value::Null)))
}

async fn bad_http_input_is_refused_and_changes_nothing(backend: Backend) -> Result<()> {
    let server = Server::start(backend).await?;
    let alice = server.register("alice").await?;
    let bob = server.register("bob").await?;
    let eve = server.register("eve").await?;
    let chat = server.create_chat(&alice, &[&bob]).await?;
    server.send(&alice, &chat, "m1", b"first").await?;
    let send_path = format!("/v1/chats/{chat}/events");

    check(
        "malformed json",
        raw(
            &server,
            Method::POST,
            &send_path,
            Some(&alice.token),
            "{\"client_msg_id\":",
        )
        .await?,
        400,
        "bad_json",
    )?;
    check(
        "wrong field type",
        raw(
            &server,
            Method::POST,
            &send_path,
            Some(&alice.token),
            r#"{"client_msg_id":1,"payload":"eA=="}"#,
        )
        .await?,
        400,
        "bad_json",
    )?;
    check(
        "payload not base64",
        raw(
            &server,
            Method::POST,
            &send_path,
            Some(&alice.token),
            r#"{"client_msg_id":"x","payload":"***"}"#,
        )
        .await?,
        400,
        "bad_json",
    )?;
    check(
        "bad client_msg_id",
        server.send(&alice, &chat, "has space", b"x").await?,
        400,
        "invalid_param",
    )?;
    check(
        "empty payload",
        server.send(&alice, &chat, "e", b"").await?,
        400,
        "invalid_param",
    )?;
    let unknown = "!AAAAAAAAAAAAAAAAAAAAAA:parley.test".try_into()?;
    check(
        "unknown chat",
        server.send(&alice, &unknown, "u", b"x").await?,
        404,
        "unknown_chat",
    )?;
    check(
        "bad chat id",
        raw(
            &server,
            Method::POST,
            "/v1/chats/not-a-chat/events",
            Some(&alice.token),
            r#"{"client_msg_id":"x","payload":"eA=="}"#,
        )
        .await?,
        400,
        "invalid_param",
    )?;
    check(
        "non-member send",
        server.send(&eve, &chat, "e1", b"x").await?,
        403,
        "not_member",
    )?;
    check(
        "non-member history",
        server.get(&send_path, &eve.token).await?,
        403,
        "not_member",
    )?;
    check(
        "oversize payload",
        server
            .send(&alice, &chat, "big", &vec![7u8; 64 * 1024 + 1])
            .await?,
        413,
        "too_large",
    )?;
    check(
        "bad token",
        server.get("/v1/chats", "not-a-token").await?,
        401,
        "unknown_token",
    )?;
    check(
        "no token",
        server.request(Method::GET, "/v1/chats", None, None).await?,
        401,
        "missing_token",
    )?;
    check(
        "duplicate username",
        server
            .post(
                "/v1/register",
                None,
                json!({"username": "alice", "password": "whatever123"}),
            )
            .await?,
        409,
        "user_exists",
    )?;
    check(
        "bad username",
        server
            .post(
                "/v1/register",
                None,
                json!({"username": "Al ice", "password": "whatever123"}),
            )
            .await?,
        400,
        "invalid_param",
    )?;
    check(
        "short password",
        server
            .post(
                "/v1/register",
                None,
                json!({"username": "carol", "password": "short"}),
            )
            .await?,
        400,
        "invalid_param",
    )?;
    check(
        "wrong password",
        server
            .post(
                "/v1/login",
                None,
                json!({"username": "alice", "password": "wrong-password"}),
            )
            .await?,
        401,
        "invalid_credentials",
    )?;
    check(
        "unknown user login",
        server
            .post(
                "/v1/login",
                None,
                json!({"username": "nobody", "password": "wrong-password"}),
            )
            .await?,
        401,
        "invalid_credentials",
    )?;
    check(
        "chat with unknown user",
        server
            .post(
                "/v1/chats",
                Some(&alice.token),
                json!({"members": ["@nobody:parley.test"]}),
            )
            .await?,
        404,
        "unknown_user",
    )?;
    check(
        "chat with bad user id",
        server
            .post(
                "/v1/chats",
                Some(&alice.token),
                json!({"members": ["nobody"]}),
            )
            .await?,
        400,
        "bad_json",
    )?;
    check(
        "chat with self",
        server
            .post(
                "/v1/chats",
                Some(&alice.token),
                json!({"members": [alice.user_id]}),
            )
            .await?,
        400,
        "invalid_param",
    )?;
    check(
        "unknown field",
        server
            .post(
                "/v1/chats",
                Some(&alice.token),
                json!({"members": [bob.user_id], "x": 1}),
            )
            .await?,
        400,
        "bad_json",
    )?;
    check(
        "unknown path",
        server.get("/v1/nope", &alice.token).await?,
        404,
        "not_found",
    )?;
    check(
        "wrong method",
        server
            .request(Method::DELETE, "/v1/chats", Some(&alice.token), None)
            .await?,
        405,
        "method_not_allowed",
    )?;

    // Nothing changed: one event, one chat each, the usernames free or taken as before.
    let (_, history) = server.get(&send_path, &alice.token).await?;
    ensure!(
        history["events"].as_array().map(Vec::len) == Some(1),
        "{history}"
    );
    ensure!(server.chats(&alice).await?.len() == 1 && server.chats(&eve).await?.is_empty());
    server.register("carol").await?;
    Ok(())
}

async fn bad_socket_frames_get_error_frames(backend: Backend) -> Result<()> {
    let server = Server::start(backend).await?;
    let alice = server.register("alice").await?;
    let bob = server.register("bob").await?;
    let eve = server.register("eve").await?;
    let chat = server.create_chat(&alice, &[&bob]).await?;

    // Bad or missing token: refused before the upgrade.
    ensure!(Ws::connect(&server.ws_url(), "nope").await.is_err());

    let mut ws = server.connect(&eve).await?;
    ws.until_synced().await?;
    let expect = |f: ServerFrame, code: &str, id: Option<&str>| -> Result<()> {
        match f {
            ServerFrame::Error {
                code: c,
                message,
                client_msg_id,
                ..
            } => {
                ensure!(
                    c.as_str() == code && !message.is_empty() && client_msg_id.as_deref() == id,
                    "{c:?} {message} {client_msg_id:?}"
                );
                Ok(())
            }
            other => anyhow::bail!("expected error {code}, got {other:?}"),
        }
    };
    ws.send_text("{not json".into()).await?;
    expect(ws.next().await?, "bad_json", None)?;
    ws.send_text(r#"{"type":"launch_missiles"}"#.into()).await?;
    expect(ws.next().await?, "bad_json", None)?;
    ws.send_text(format!(
        r#"{{"type":"send","chat_id":"{chat}","client_msg_id":"e1","payload":"eA=="}}"#
    ))
    .await?;
    expect(ws.next().await?, "not_member", Some("e1"))?;
    ws.send_text(r#"{"type":"send","chat_id":"!AAAAAAAAAAAAAAAAAAAAAA:parley.test","client_msg_id":"e2","payload":"eA=="}"#.into()).await?;
    expect(ws.next().await?, "unknown_chat", Some("e2"))?;
    ws.send_text(r#"{"type":"ack","ids":[]}"#.into()).await?;
    expect(ws.next().await?, "invalid_param", None)?;
    ws.send_text(format!(r#"{{"type":"read","chat_id":"{chat}","seq":1}}"#))
        .await?;
    expect(ws.next().await?, "not_member", None)?;
    // The connection is still usable.
    ws.send_text(r#"{"type":"ping"}"#.into()).await?;
    ensure!(ws.next().await? == ServerFrame::Pong);

    let (_, history) = server
        .get(&format!("/v1/chats/{chat}/events"), &alice.token)
        .await?;
    ensure!(
        history["events"].as_array().map(Vec::len) == Some(0),
        "{history}"
    );
    let mut bob_ws = server.connect(&bob).await?;
    ensure!(bob_ws.until_synced().await?.is_empty());
    ensure!(
        bob_ws
            .next_within(Duration::from_millis(200))
            .await?
            .is_none()
    );
    Ok(())
}
