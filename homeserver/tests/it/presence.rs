//! Presence, last seen and typing over real sockets: online from connections and
//! heartbeats, the heartbeat timeout, last seen stored across a restart, the reciprocal
//! privacy rule, typing relay and its 5 s expiry, and both across two federated servers
//! (only from the signing origin, only about its own users).

use std::time::{Duration, Instant};

use anyhow::{Result, bail, ensure};
use parley_client_api::ChatId;
use parley_client_api::http::presence::Presence;
use parley_client_api::ws::{ClientFrame, ServerFrame};
use reqwest::StatusCode;
use serde_json::json;

use crate::federation_chats::{impersonate, put_txn, wait_listed};
use crate::harness::{Backend, Server, User, Ws};

crate::on_both_backends!(
    presence_follows_connect_heartbeat_timeout_and_disconnect,
    last_seen_privacy_applies_both_ways,
    typing_is_relayed_debounced_and_expires,
    presence_and_typing_cross_servers,
);

pub(crate) const CONFIG: &str =
    "[presence]\nheartbeat_timeout_ms = 1500\nlast_seen_write_ms = 500\n";

/// The next presence frame about `who` within `d` (other frames are skipped).
pub(crate) async fn presence_of(ws: &mut Ws, who: &User, d: Duration) -> Result<Presence> {
    let deadline = tokio::time::Instant::now() + d;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match ws.next_within(left).await? {
            Some(ServerFrame::Presence { presence }) if presence.user_id == who.user_id => {
                return Ok(presence);
            }
            Some(_) => {}
            None => bail!("no presence of {} within {d:?}", who.user_id),
        }
    }
}

/// The next presence of `who` that is not `online == was` (a state re-sent unchanged,
/// as after a contact change, is skipped): the change a user would notice.
pub(crate) async fn presence_change(
    ws: &mut Ws,
    who: &User,
    was: bool,
    d: Duration,
) -> Result<Presence> {
    let deadline = tokio::time::Instant::now() + d;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let p = presence_of(ws, who, left).await?;
        if p.online != Some(was) {
            return Ok(p);
        }
    }
}

/// No presence frame within `d`.
pub(crate) async fn no_presence(ws: &mut Ws, d: Duration) -> Result<()> {
    let deadline = tokio::time::Instant::now() + d;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match ws.next_within(left).await? {
            Some(ServerFrame::Presence { presence }) => bail!("unexpected {presence:?}"),
            Some(_) => {}
            None => return Ok(()),
        }
    }
}

/// The next typing frame within `d`: `(user, device, typing)`.
async fn typing_frame(
    ws: &mut Ws,
    d: Duration,
) -> Result<Option<(ChatId, String, Option<String>, bool)>> {
    let deadline = tokio::time::Instant::now() + d;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match ws.next_within(left).await? {
            Some(ServerFrame::Typing {
                chat_id,
                user_id,
                device_id,
                typing,
            }) => {
                return Ok(Some((
                    chat_id,
                    user_id.to_string(),
                    device_id.map(|d| d.to_string()),
                    typing,
                )));
            }
            Some(_) => {}
            None => return Ok(None),
        }
    }
}

/// A socket that heartbeats once (so it gets presence updates), synced.
pub(crate) async fn present(server: &Server, me: &User) -> Result<Ws> {
    let mut ws = server.connect(me).await?;
    ws.until_synced().await?;
    ws.send(&ClientFrame::Heartbeat).await?;
    Ok(ws)
}

pub(crate) async fn get_presence(
    server: &Server,
    viewer: &User,
    target: &User,
) -> Result<Presence> {
    let (status, body) = server
        .get(&format!("/v1/presence/{}", target.user_id), &viewer.token)
        .await?;
    ensure!(status == StatusCode::OK, "{status} {body}");
    Ok(serde_json::from_value(body)?)
}

pub(crate) async fn set_privacy(server: &Server, me: &User, v: &str) -> Result<()> {
    let (status, body) = server
        .put("/v1/privacy", &me.token, json!({"last_seen": v}))
        .await?;
    ensure!(status == StatusCode::OK, "{status} {body}");
    ensure!(body["last_seen"] == v, "{body}");
    Ok(())
}

async fn presence_follows_connect_heartbeat_timeout_and_disconnect(backend: Backend) -> Result<()> {
    let mut server = Server::start_with_config(backend, CONFIG).await?;
    let alice = server.register("alice").await?;
    let bob = server.register("bob").await?;
    server.create_chat(&alice, &[&bob]).await?;
    let never = get_presence(&server, &bob, &alice).await?;
    assert_eq!((never.online, never.last_seen), (Some(false), None));

    let mut bob_ws = present(&server, &bob).await?;
    // Connecting makes alice online.
    let mut alice_ws = server.connect(&alice).await?;
    alice_ws.until_synced().await?;
    let p = presence_of(&mut bob_ws, &alice, Duration::from_secs(5)).await?;
    assert_eq!(p.online, Some(true));
    assert_eq!(
        get_presence(&server, &bob, &alice).await?.online,
        Some(true)
    );

    // Heartbeats keep her online past the timeout.
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        alice_ws.send(&ClientFrame::Heartbeat).await?;
    }
    no_presence(&mut bob_ws, Duration::from_millis(300)).await?;
    let last_beat = clock_ms();

    // Silence: offline after the 1.5 s timeout, last seen = her last heartbeat.
    let started = Instant::now();
    let p = presence_of(&mut bob_ws, &alice, Duration::from_secs(5)).await?;
    assert_eq!(p.online, Some(false));
    let seen = p.last_seen.expect("last seen");
    ensure!(
        (seen - last_beat).abs() < 1_000,
        "last seen {seen}, last heartbeat {last_beat}"
    );
    ensure!(
        started.elapsed() >= Duration::from_millis(900),
        "offline too early: {:?}",
        started.elapsed()
    );
    let got = get_presence(&server, &bob, &alice).await?;
    assert_eq!((got.online, got.last_seen), (Some(false), Some(seen)));

    // A heartbeat brings her back; closing the socket takes her offline at once.
    alice_ws.send(&ClientFrame::Heartbeat).await?;
    assert_eq!(
        presence_of(&mut bob_ws, &alice, Duration::from_secs(5))
            .await?
            .online,
        Some(true)
    );
    alice_ws.close().await?;
    let p = presence_of(&mut bob_ws, &alice, Duration::from_secs(5)).await?;
    assert_eq!(p.online, Some(false));
    let closed_at = p.last_seen.expect("last seen");
    ensure!(closed_at >= seen, "{closed_at} < {seen}");

    // Last seen is stored: it survives a restart.
    drop(bob_ws);
    tokio::time::sleep(Duration::from_millis(800)).await;
    server.stop_hard().await?;
    server.restart().await?;
    let got = get_presence(&server, &bob, &alice).await?;
    assert_eq!(got.online, Some(false));
    assert_eq!(got.last_seen, Some(closed_at));
    Ok(())
}

fn clock_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

async fn last_seen_privacy_applies_both_ways(backend: Backend) -> Result<()> {
    let server = Server::start_with_config(backend, CONFIG).await?;
    let alice = server.register("alice").await?;
    let bob = server.register("bob").await?;
    let carol = server.register("carol").await?;
    server.create_chat(&alice, &[&bob]).await?;
    let mut alice_ws = present(&server, &alice).await?;
    let visible = |p: &Presence| p.online.is_some() && p.last_seen.is_some();
    let hidden = |p: &Presence| p.online.is_none() && p.last_seen.is_none();

    // Everyone (the default): carol, who shares no chat, sees alice too.
    let (status, body) = server.get("/v1/privacy", &alice.token).await?;
    ensure!(
        status == 200 && body["last_seen"] == "everyone",
        "{status} {body}"
    );
    ensure!(visible(&get_presence(&server, &carol, &alice).await?));

    // Contacts: only people in alice's contact list (bob; carol is not).
    crate::contacts::add(&server, &alice, &bob).await?;
    set_privacy(&server, &alice, "contacts").await?;
    ensure!(hidden(&get_presence(&server, &carol, &alice).await?));
    ensure!(visible(&get_presence(&server, &bob, &alice).await?));

    // Nobody: bob no longer sees alice, and gets no presence frame about her.
    set_privacy(&server, &alice, "nobody").await?;
    ensure!(hidden(&get_presence(&server, &bob, &alice).await?));
    let mut bob_ws = present(&server, &bob).await?;
    // alice sees bob come online? No: hiding hers hides everyone's from her.
    no_presence(&mut alice_ws, Duration::from_millis(800)).await?;
    ensure!(hidden(&get_presence(&server, &alice, &bob).await?));
    // Her own she always sees.
    ensure!(visible(&get_presence(&server, &alice, &alice).await?));
    alice_ws.close().await?;
    no_presence(&mut bob_ws, Duration::from_millis(800)).await?;

    // The other direction: bob hides his; alice shows hers. Bob cannot see alice.
    set_privacy(&server, &bob, "nobody").await?;
    set_privacy(&server, &alice, "everyone").await?;
    ensure!(hidden(&get_presence(&server, &bob, &alice).await?));
    ensure!(hidden(&get_presence(&server, &alice, &bob).await?));
    let _alice_ws = present(&server, &alice).await?;
    no_presence(&mut bob_ws, Duration::from_millis(800)).await?;
    // With "contacts", bob sees alice again (he lists her), carol does not.
    crate::contacts::add(&server, &bob, &alice).await?;
    set_privacy(&server, &bob, "contacts").await?;
    ensure!(visible(&get_presence(&server, &bob, &alice).await?));
    set_privacy(&server, &carol, "contacts").await?;
    ensure!(hidden(&get_presence(&server, &carol, &alice).await?));

    // Bad input changes nothing.
    let (status, body) = server
        .put("/v1/privacy", &bob.token, json!({"last_seen": "friends"}))
        .await?;
    ensure!(status == StatusCode::BAD_REQUEST, "{status} {body}");
    ensure!(body["error"] == "bad_json", "{body}");
    let (_, body) = server.get("/v1/privacy", &bob.token).await?;
    ensure!(body["last_seen"] == "contacts", "{body}");
    let (status, body) = server
        .get("/v1/presence/@nobody:parley.test", &bob.token)
        .await?;
    ensure!(
        status == StatusCode::NOT_FOUND && body["error"] == "unknown_user",
        "{status} {body}"
    );
    let (status, _) = server
        .request(
            reqwest::Method::GET,
            "/v1/presence/@a:parley.test",
            None,
            None,
        )
        .await?;
    ensure!(status == StatusCode::UNAUTHORIZED, "{status}");
    Ok(())
}

async fn typing_is_relayed_debounced_and_expires(backend: Backend) -> Result<()> {
    let server = Server::start_with_config(backend, CONFIG).await?;
    let alice = server.register("alice").await?;
    let bob = server.register("bob").await?;
    let carol = server.register("carol").await?;
    let chat = server.create_chat(&alice, &[&bob]).await?;
    let mut alice_ws = server.connect(&alice).await?;
    alice_ws.until_synced().await?;
    let mut bob_ws = server.connect(&bob).await?;
    bob_ws.until_synced().await?;
    let start = ClientFrame::Typing {
        chat_id: chat.clone(),
        typing: true,
    };

    alice_ws.send(&start).await?;
    let got = typing_frame(&mut bob_ws, Duration::from_secs(5)).await?;
    assert_eq!(
        got,
        Some((
            chat.clone(),
            alice.user_id.to_string(),
            Some(alice.device_id.clone()),
            true
        ))
    );
    let last_start = Instant::now();
    // A refresh within the debounce is not relayed again.
    alice_ws.send(&start).await?;
    assert_eq!(
        typing_frame(&mut bob_ws, Duration::from_millis(700)).await?,
        None
    );
    // No more refreshes: the server ends it after 5 s (from the last refresh).
    let stop = typing_frame(&mut bob_ws, Duration::from_secs(8)).await?;
    ensure!(
        matches!(&stop, Some((_, u, _, false)) if *u == alice.user_id.to_string()),
        "{stop:?}"
    );
    let after = last_start.elapsed();
    ensure!(
        after >= Duration::from_millis(4_900) && after < Duration::from_millis(7_500),
        "expired after {after:?}"
    );

    // An explicit stop is relayed at once.
    alice_ws.send(&start).await?;
    ensure!(
        typing_frame(&mut bob_ws, Duration::from_secs(5))
            .await?
            .is_some_and(|t| t.3)
    );
    alice_ws
        .send(&ClientFrame::Typing {
            chat_id: chat.clone(),
            typing: false,
        })
        .await?;
    ensure!(
        typing_frame(&mut bob_ws, Duration::from_secs(2))
            .await?
            .is_some_and(|t| !t.3)
    );
    // The typer gets no echo.
    assert_eq!(
        typing_frame(&mut alice_ws, Duration::from_millis(300)).await?,
        None
    );

    // A non-member is refused; nothing is relayed.
    let mut carol_ws = server.connect(&carol).await?;
    carol_ws.until_synced().await?;
    carol_ws.send(&start).await?;
    match carol_ws.next().await? {
        ServerFrame::Error { code, .. } => {
            assert_eq!(code, parley_client_api::ErrorCode::NotMember)
        }
        other => bail!("expected an error, got {other:?}"),
    }
    assert_eq!(
        typing_frame(&mut bob_ws, Duration::from_millis(500)).await?,
        None
    );

    // Never stored: a reconnecting device gets no typing replayed.
    alice_ws.send(&start).await?;
    typing_frame(&mut bob_ws, Duration::from_secs(5)).await?;
    bob_ws.close().await?;
    let mut bob_ws = server.connect(&bob).await?;
    for frame in bob_ws.until_synced().await? {
        ensure!(
            !matches!(frame, ServerFrame::Typing { .. }),
            "replayed {frame:?}"
        );
    }
    Ok(())
}

async fn presence_and_typing_cross_servers(backend: Backend) -> Result<()> {
    // The default heartbeat timeout (60 s): alice stays online until she disconnects.
    let a = Server::start_peer(backend, "127.0.0.1", "").await?;
    let b = Server::start_peer(backend, "127.0.0.2", "").await?;
    let c = Server::start_peer(backend, "127.0.0.3", "").await?;
    let alice = a.register("alice").await?;
    let bob = b.register("bob").await?;
    let mallory = c.register("mallory").await?;
    let chat = a.create_chat(&alice, &[&bob]).await?;
    wait_listed(&b, &bob, &chat).await?;

    // Bob on B sees alice on A come online.
    let mut bob_ws = present(&b, &bob).await?;
    let mut alice_ws = present(&a, &alice).await?;
    let p = presence_of(&mut bob_ws, &alice, Duration::from_secs(10)).await?;
    assert_eq!(p.online, Some(true));
    // B remembers it for queries.
    let known = get_presence(&b, &bob, &alice).await?;
    assert_eq!(known.online, Some(true));

    // Typing crosses both ways; remote typing carries no device.
    alice_ws
        .send(&ClientFrame::Typing {
            chat_id: chat.clone(),
            typing: true,
        })
        .await?;
    let got = typing_frame(&mut bob_ws, Duration::from_secs(10)).await?;
    assert_eq!(
        got,
        Some((chat.clone(), alice.user_id.to_string(), None, true))
    );
    bob_ws
        .send(&ClientFrame::Typing {
            chat_id: chat.clone(),
            typing: true,
        })
        .await?;
    let got = typing_frame(&mut alice_ws, Duration::from_secs(10)).await?;
    assert_eq!(
        got,
        Some((chat.clone(), bob.user_id.to_string(), None, true))
    );
    // The expiry's stop crosses too.
    let got = typing_frame(&mut bob_ws, Duration::from_secs(10)).await?;
    assert_eq!(
        got,
        Some((chat.clone(), alice.user_id.to_string(), None, false))
    );

    // C (allowed, signed) cannot speak for A's user, nor for its own non-member.
    let from_c = impersonate(&c)?;
    let (status, answer) = put_txn(
        &from_c,
        &b,
        "e1",
        json!({"origin": c.name(), "origin_ts": 0, "ephemeral": [
            {"type": "presence", "user_id": alice.user_id, "online": false, "last_seen": 1},
            {"type": "typing", "chat_id": chat, "user_id": alice.user_id, "typing": true},
            {"type": "typing", "chat_id": chat, "user_id": mallory.user_id, "typing": true},
            {"type": "presence", "user_id": mallory.user_id, "online": true},
        ]}),
    )
    .await?;
    ensure!(status == 200, "{status} {answer}");
    let deadline = tokio::time::Instant::now() + Duration::from_millis(800);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match bob_ws.next_within(left).await? {
            Some(ServerFrame::Typing {
                user_id, typing, ..
            }) if user_id == alice.user_id && !typing => {}
            Some(f @ (ServerFrame::Typing { .. } | ServerFrame::Presence { .. })) => {
                bail!("forged ephemeral delivered: {f:?}")
            }
            Some(_) => {}
            None => break,
        }
    }
    // The forged "offline, last seen 1" changed nothing.
    let known = get_presence(&b, &bob, &alice).await?;
    assert_eq!(known.online, Some(true));
    ensure!(known.last_seen != Some(1), "{known:?}");

    // Alice leaves: bob sees her go offline, with her last seen.
    alice_ws.close().await?;
    let p = presence_of(&mut bob_ws, &alice, Duration::from_secs(10)).await?;
    assert_eq!(p.online, Some(false));
    ensure!(p.last_seen.is_some(), "{p:?}");
    Ok(())
}
