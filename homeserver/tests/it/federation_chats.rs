//! Chats spanning servers: three real homeservers on 127.0.0.1–3. The chat's creator's
//! server is its hub; the others follow. Payloads are opaque bytes here (the SDK's own
//! tests carry MLS through the same path).

use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use parley_client_api::ChatId;
use parley_client_api::http::chats::ChatEvent;
use parley_client_api::ws::ServerFrame;
use reqwest::StatusCode;
use serde_json::json;

use crate::harness::{Backend, Server, User, WAIT, Ws};

crate::on_both_backends!(
    a_group_spans_three_servers_in_hub_order,
    nothing_is_lost_while_a_follower_is_down,
    large_messages_queued_for_a_follower_all_arrive,
    a_send_too_large_to_federate_is_refused_up_front,
    sends_wait_in_the_outbox_while_the_hub_is_down,
    peers_cannot_act_for_chats_or_users_they_do_not_own,
    receipts_cross_servers,
    a_receipt_an_ack_raised_before_a_crash_still_leaves,
    a_pending_send_concludes_on_the_sending_device,
    a_send_the_hub_refuses_with_its_transaction_concludes_failed,
    leaving_on_a_follower_reaches_the_hub,
);

/// Waits up to 20 s for `n` events on `ws`, acking them; returns them in arrival order.
pub(crate) async fn events(ws: &mut Ws, n: usize) -> Result<Vec<ChatEvent>> {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while out.len() < n {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match ws.next_within(left).await? {
            Some(ServerFrame::Event { id, event }) => {
                ws.ack(vec![id]).await?;
                out.push(event);
            }
            Some(_) => {}
            None => bail!("got {} of {n} events: {out:?}", out.len()),
        }
    }
    Ok(out)
}

/// No further event arrives within `d`.
async fn no_more_events(ws: &mut Ws, d: Duration) -> Result<()> {
    let deadline = tokio::time::Instant::now() + d;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match ws.next_within(left).await? {
            Some(ServerFrame::Event { event, .. }) => bail!("unexpected event {event:?}"),
            Some(_) => {}
            None => return Ok(()),
        }
    }
}

pub(crate) async fn create_group(hub: &Server, me: &User, others: &[&User]) -> Result<ChatId> {
    let members: Vec<&str> = others.iter().map(|u| u.user_id.as_str()).collect();
    let (status, body) = hub
        .post(
            "/v1/chats",
            Some(&me.token),
            json!({"members": members, "name": "across"}),
        )
        .await?;
    ensure!(status.is_success(), "create: {status} {body}");
    Ok(serde_json::from_value(body["chat_id"].clone())?)
}

/// Waits until `user`'s server lists `chat` (a follower learns of a chat shortly after
/// its hub created it).
pub(crate) async fn wait_listed(server: &Server, user: &User, chat: &ChatId) -> Result<()> {
    for _ in 0..200 {
        if server.chats(user).await?.iter().any(|c| c.chat_id == *chat) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("{chat} never listed on {}", server.name())
}

/// Sends and returns the ack's `seq` (0 when pending).
async fn send(server: &Server, me: &User, chat: &ChatId, id: &str) -> Result<(i64, bool)> {
    let (status, body) = server.send(me, chat, id, id.as_bytes()).await?;
    let pending = body["pending"].as_bool().unwrap_or(false);
    let want = if pending {
        StatusCode::ACCEPTED
    } else {
        StatusCode::CREATED
    };
    ensure!(status == want, "send {id}: {status} {body}");
    Ok((body["seq"].as_i64().context("seq")?, pending))
}

pub(crate) fn texts(events: &[ChatEvent]) -> Vec<(i64, String)> {
    events
        .iter()
        .map(|e| (e.seq, String::from_utf8_lossy(&e.payload.0).into_owned()))
        .collect()
}

async fn a_group_spans_three_servers_in_hub_order(backend: Backend) -> Result<()> {
    let a = Server::start_peer(backend, "127.0.0.1", "").await?;
    let b = Server::start_peer(backend, "127.0.0.2", "").await?;
    let c = Server::start_peer(backend, "127.0.0.3", "").await?;
    let alice = a.register("alice").await?;
    let bob = b.register("bob").await?;
    let carol = c.register("carol").await?;

    let chat = create_group(&a, &alice, &[&bob, &carol]).await?;
    ensure!(chat.hub() == a.name(), "the creator's server is the hub");
    wait_listed(&b, &bob, &chat).await?;
    wait_listed(&c, &carol, &chat).await?;
    let mut alice_ws = a.connect(&alice).await?;
    let mut bob_ws = b.connect(&bob).await?;
    let mut carol_ws = c.connect(&carol).await?;
    for ws in [&mut alice_ws, &mut bob_ws, &mut carol_ws] {
        ws.until_synced().await?;
    }

    // The hub orders everyone's sends; every member sees the same order.
    assert_eq!(send(&a, &alice, &chat, "a1").await?, (1, false));
    assert_eq!(send(&b, &bob, &chat, "b1").await?, (2, false));
    assert_eq!(send(&c, &carol, &chat, "c1").await?, (3, false));
    assert_eq!(send(&a, &alice, &chat, "a2").await?, (4, false));
    // A resend through the follower returns the first result and stores nothing new.
    let (status, body) = b.send(&bob, &chat, "b1", b"b1").await?;
    ensure!(
        status == StatusCode::OK && body["seq"] == 2 && body["duplicate"] == true,
        "{body}"
    );

    let want_bob = vec![(1, "a1".into()), (3, "c1".into()), (4, "a2".into())];
    assert_eq!(texts(&events(&mut bob_ws, 3).await?), want_bob);
    let want_carol = vec![(1, "a1".into()), (2, "b1".into()), (4, "a2".into())];
    assert_eq!(texts(&events(&mut carol_ws, 3).await?), want_carol);
    let want_alice = vec![(2, "b1".into()), (3, "c1".into())];
    assert_eq!(texts(&events(&mut alice_ws, 2).await?), want_alice);
    no_more_events(&mut bob_ws, Duration::from_millis(300)).await?;

    // Each follower lists the chat with its members and the hub's head.
    for (server, user) in [(&b, &bob), (&c, &carol)] {
        let listed = server.chats(user).await?;
        let row = listed
            .iter()
            .find(|r| r.chat_id == chat)
            .context("listed on the follower")?;
        assert_eq!(row.name.as_deref(), Some("across"));
        assert_eq!(row.members.len(), 3);
        assert_eq!(row.last_seq, 4);
        // History is served from the follower's copy.
        let (status, body) = server
            .get(&format!("/v1/chats/{chat}/events?after=0"), &user.token)
            .await?;
        ensure!(status == StatusCode::OK, "{body}");
        ensure!(body["events"].as_array().map(Vec::len) == Some(4), "{body}");
    }

    // A follower refuses to forward for someone who is not a member.
    let dave = b.register("dave").await?;
    let (status, body) = b.send(&dave, &chat, "d1", b"d1").await?;
    ensure!(status == StatusCode::FORBIDDEN, "{status} {body}");
    ensure!(body["error"] == "not_member", "{body}");
    Ok(())
}

async fn nothing_is_lost_while_a_follower_is_down(backend: Backend) -> Result<()> {
    let a = Server::start_peer(backend, "127.0.0.1", "").await?;
    let mut b = Server::start_peer(backend, "127.0.0.2", "").await?;
    let alice = a.register("alice").await?;
    let bob = b.register("bob").await?;
    let chat = a.create_chat(&alice, &[&bob]).await?;
    assert_eq!(send(&a, &alice, &chat, "m1").await?, (1, false));

    // The follower dies; the hub keeps committing and queues for it.
    b.stop_hard().await?;
    for i in 2..=6 {
        assert_eq!(send(&a, &alice, &chat, &format!("m{i}")).await?, (i, false));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    b.restart().await?;

    // Bob gets every message exactly once, in order, from his inbox then live.
    let mut bob_ws = b.connect(&bob).await?;
    let got = events(&mut bob_ws, 6).await?;
    let want: Vec<(i64, String)> = (1..=6).map(|i| (i, format!("m{i}"))).collect();
    assert_eq!(texts(&got), want);
    assert_eq!(send(&a, &alice, &chat, "m7").await?, (7, false));
    assert_eq!(texts(&events(&mut bob_ws, 1).await?), [(7, "m7".into())]);
    no_more_events(&mut bob_ws, Duration::from_millis(500)).await?;
    Ok(())
}

/// Messages near the payload limit, queued while the follower is down, together far
/// larger than one transaction may be (1 MiB): they leave in several transactions, and
/// every one arrives, in order.
async fn large_messages_queued_for_a_follower_all_arrive(backend: Backend) -> Result<()> {
    const N: i64 = 24;
    let a = Server::start_peer(backend, "127.0.0.1", "").await?;
    let mut b = Server::start_peer(backend, "127.0.0.2", "").await?;
    let alice = a.register("alice").await?;
    let bob = b.register("bob").await?;
    let chat = a.create_chat(&alice, &[&bob]).await?;
    wait_listed(&b, &bob, &chat).await?;
    b.stop_hard().await?;
    let big = |i: i64| format!("m{i}:{}", "x".repeat(60 * 1024));
    for i in 1..=N {
        let (status, body) = a
            .send(&alice, &chat, &format!("m{i}"), big(i).as_bytes())
            .await?;
        ensure!(status == StatusCode::CREATED, "m{i}: {status} {body}");
    }
    b.restart().await?;
    let mut bob_ws = b.connect(&bob).await?;
    let got = events(&mut bob_ws, N as usize).await?;
    let got: Vec<(i64, bool)> = texts(&got)
        .into_iter()
        .map(|(seq, text)| (seq, text == big(seq)))
        .collect();
    let want: Vec<(i64, bool)> = (1..=N).map(|i| (i, true)).collect();
    assert_eq!(got, want);
    Ok(())
}

/// A commit within the server's own limit (4 MiB) but too large for one federation
/// transaction (1 MiB, base64-encoded) is refused when the chat spans servers — on the
/// hub and on a follower alike — and changes nothing; a chat on one server takes it.
async fn a_send_too_large_to_federate_is_refused_up_front(backend: Backend) -> Result<()> {
    let a = Server::start_peer(backend, "127.0.0.1", "").await?;
    let b = Server::start_peer(backend, "127.0.0.2", "").await?;
    let alice = a.register("alice").await?;
    let carol = a.register("carol").await?;
    let bob = b.register("bob").await?;
    let across = create_group(&a, &alice, &[&bob]).await?;
    let local = a.create_chat(&alice, &[&carol]).await?;
    wait_listed(&b, &bob, &across).await?;
    let big = vec![7u8; 900 * 1024];
    let (status, body) = a.commit(&alice, &local, "big", 0, &big, None).await?;
    ensure!(
        status == StatusCode::CREATED,
        "on one server: {status} {body}"
    );

    let before = send_ok(&a, &alice, &across, "before").await?;
    for (server, me) in [(&a, &alice), (&b, &bob)] {
        let (status, body) = server.commit(me, &across, "big", 0, &big, None).await?;
        ensure!(
            status == StatusCode::PAYLOAD_TOO_LARGE
                && body["error"] == "too_large"
                && body["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("spans servers")),
            "{}: {status} {body}",
            me.user_id
        );
    }
    // Nothing changed: the epoch is still 0, and the next event follows `before`.
    let (status, body) = a
        .commit(&alice, &across, "small", 0, b"commit", None)
        .await?;
    ensure!(
        status == StatusCode::CREATED,
        "small commit: {status} {body}"
    );
    ensure!(body["seq"] == before + 1, "{body}");
    let mut bob_ws = b.connect(&bob).await?;
    let got = events(&mut bob_ws, 2).await?;
    let seqs: Vec<i64> = got.iter().map(|e| e.seq).collect();
    ensure!(seqs == [before, before + 1], "bob got {seqs:?}");
    no_more_events(&mut bob_ws, Duration::from_millis(500)).await?;
    Ok(())
}

async fn sends_wait_in_the_outbox_while_the_hub_is_down(backend: Backend) -> Result<()> {
    let mut a = Server::start_peer(backend, "127.0.0.1", "").await?;
    let b = Server::start_peer(backend, "127.0.0.2", "forward_wait_ms = 300").await?;
    let alice = a.register("alice").await?;
    let bob = b.register("bob").await?;
    let chat = a.create_chat(&alice, &[&bob]).await?;
    wait_listed(&b, &bob, &chat).await?;
    assert_eq!(send(&b, &bob, &chat, "b1").await?, (1, false));

    // The hub dies: the follower stores Bob's sends and answers "pending" (✓ sent).
    a.stop_hard().await?;
    for i in 2..=4 {
        let (seq, pending) = send(&b, &bob, &chat, &format!("b{i}")).await?;
        ensure!(pending && seq == 0, "b{i}: seq {seq}, pending {pending}");
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    a.restart().await?;

    // When the hub is back, the follower's retries deliver them once each, in order;
    // Bob's own server receives them back with their seq.
    let mut alice_ws = a.connect(&alice).await?;
    let got = events(&mut alice_ws, 4).await?;
    let want: Vec<(i64, String)> = (1..=4).map(|i| (i, format!("b{i}"))).collect();
    assert_eq!(texts(&got), want);
    no_more_events(&mut alice_ws, Duration::from_millis(500)).await?;
    // The hub's events reach the follower's copy shortly after.
    let mut seqs = Vec::new();
    for _ in 0..200 {
        let (status, body) = b
            .get(&format!("/v1/chats/{chat}/events?after=0"), &bob.token)
            .await?;
        ensure!(status == StatusCode::OK, "{body}");
        seqs = body["events"]
            .as_array()
            .context("events")?
            .iter()
            .filter_map(|e| e["seq"].as_i64())
            .collect();
        if seqs.len() >= 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(seqs, [1, 2, 3, 4]);
    Ok(())
}

/// A client that signs as `server` with its own key (read from its data directory):
/// what a misbehaving peer could send.
pub(crate) fn impersonate(
    server: &Server,
) -> Result<parley_federation::transport::http::FederationClient> {
    use parley_federation::transport::http::{ClientConfig, FederationClient};
    use parley_federation::{RequestSigner, ServerName, ServerSigningKey};
    let pem = std::fs::read_to_string(server.data_dir().join("federation.key"))?;
    let key = ServerSigningKey::from_pkcs8_pem(&pem)?;
    let name = ServerName::try_from(server.name())?;
    Ok(FederationClient::new(
        RequestSigner::new(name, key),
        ClientConfig {
            insecure_test_mode: true,
            ..ClientConfig::default()
        },
    )?)
}

/// `PUT /send/{txn}` from `client` to `to`; returns the status and the JSON answer.
pub(crate) async fn put_txn(
    client: &parley_federation::transport::http::FederationClient,
    to: &Server,
    txn: &str,
    body: serde_json::Value,
) -> Result<(u16, serde_json::Value)> {
    use parley_federation::api::{self, send};
    let to = parley_federation::ServerName::try_from(to.name())?;
    let resp = client
        .send(
            &to,
            send::METHOD,
            &api::fill(send::PATH, &[("txn_id", txn)]),
            Some(serde_json::to_vec(&body)?),
        )
        .await?;
    Ok((
        resp.status,
        serde_json::from_slice(&resp.body).unwrap_or_default(),
    ))
}

async fn peers_cannot_act_for_chats_or_users_they_do_not_own(backend: Backend) -> Result<()> {
    let a = Server::start_peer(backend, "127.0.0.1", "").await?;
    let b = Server::start_peer(backend, "127.0.0.2", "").await?;
    let c = Server::start_peer(backend, "127.0.0.3", "").await?;
    let alice = a.register("alice").await?;
    let bob = b.register("bob").await?;
    let mallory = c.register("mallory").await?;
    let chat = a.create_chat(&alice, &[&bob]).await?;
    wait_listed(&b, &bob, &chat).await?;
    let mut bob_ws = b.connect(&bob).await?;
    bob_ws.until_synced().await?;
    let from_c = impersonate(&c)?;
    let send = |sender: &User, id: &str| {
        json!({"chat_id": chat, "sender": sender.user_id, "sender_device": sender.device_id,
               "client_msg_id": id, "payload": "aGk="})
    };

    // C forwards sends to the hub: one for a user of C who is not a member, one
    // pretending to be B's user. Each entry is refused; nothing is sequenced.
    let (status, answer) = put_txn(
        &from_c,
        &a,
        "t1",
        json!({"origin": c.name(), "origin_ts": 0,
               "sends": [send(&mallory, "x1"), send(&bob, "x2")]}),
    )
    .await?;
    ensure!(status == 200, "{status} {answer}");
    assert_eq!(answer["sends"][0]["error"], "not_member", "{answer}");
    assert_eq!(answer["sends"][1]["error"], "forbidden", "{answer}");

    // C pushes an event for A's chat to B as if it were the hub: refused, not stored.
    let event = json!({"chat_id": chat, "seq": 1, "sender": mallory.user_id,
        "sender_device": mallory.device_id, "client_msg_id": "e1", "ts": 1, "payload": "aGk="});
    let (status, answer) = put_txn(
        &from_c,
        &b,
        "t2",
        json!({"origin": c.name(), "origin_ts": 0, "events": [event]}),
    )
    .await?;
    ensure!(status == 200, "{status} {answer}");
    assert_eq!(answer["events"][0]["error"], "forbidden", "{answer}");
    no_more_events(&mut bob_ws, Duration::from_millis(300)).await?;

    // A transaction whose body names another origin than its signer: 400.
    let (status, answer) = put_txn(
        &from_c,
        &a,
        "t3",
        json!({"origin": b.name(), "origin_ts": 0, "sends": [send(&bob, "x3")]}),
    )
    .await?;
    ensure!(status == 400, "{status} {answer}");
    // Unsigned: 401.
    let resp = reqwest::Client::new()
        .put(format!("{}/_parley/fed/v1/send/t4", a.base))
        .json(&json!({"origin": c.name(), "origin_ts": 0}))
        .send()
        .await?;
    ensure!(
        resp.status() == StatusCode::UNAUTHORIZED,
        "{}",
        resp.status()
    );

    // Nothing of the above reached the chat: the next real send is seq 1.
    assert_eq!(send_ok(&a, &alice, &chat, "real").await?, 1);
    assert_eq!(texts(&events(&mut bob_ws, 1).await?), [(1, "real".into())]);
    Ok(())
}

async fn send_ok(server: &Server, me: &User, chat: &ChatId, id: &str) -> Result<i64> {
    let (seq, pending) = send(server, me, chat, id).await?;
    ensure!(!pending, "{id} pending");
    Ok(seq)
}

/// Waits up to 20 s for a receipt of `user` reaching `(delivered, read)` on `ws`.
async fn receipt(ws: &mut Ws, user: &User, delivered: i64, read: i64) -> Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match ws.next_within(left).await? {
            Some(ServerFrame::Receipt { id, receipt, .. }) => {
                ws.ack(vec![id]).await?;
                if receipt.user_id == user.user_id
                    && receipt.delivered_seq >= delivered
                    && receipt.read_seq >= read
                {
                    return Ok(());
                }
            }
            Some(ServerFrame::Event { id, .. }) => ws.ack(vec![id]).await?,
            Some(_) => {}
            None => bail!("no receipt of {} at ({delivered}, {read})", user.user_id),
        }
    }
}

async fn receipts_cross_servers(backend: Backend) -> Result<()> {
    let a = Server::start_peer(backend, "127.0.0.1", "").await?;
    let b = Server::start_peer(backend, "127.0.0.2", "").await?;
    let c = Server::start_peer(backend, "127.0.0.3", "").await?;
    let alice = a.register("alice").await?;
    let bob = b.register("bob").await?;
    let carol = c.register("carol").await?;
    let chat = create_group(&a, &alice, &[&bob, &carol]).await?;
    wait_listed(&b, &bob, &chat).await?;
    wait_listed(&c, &carol, &chat).await?;
    let mut alice_ws = a.connect(&alice).await?;
    let mut bob_ws = b.connect(&bob).await?;
    let mut carol_ws = c.connect(&carol).await?;
    for ws in [&mut alice_ws, &mut bob_ws, &mut carol_ws] {
        ws.until_synced().await?;
    }
    assert_eq!(send_ok(&a, &alice, &chat, "hello").await?, 1);
    // Bob's device acks the event (events() acks): ✓✓ delivered reaches the hub's
    // member and, through the hub, the other follower's.
    events(&mut bob_ws, 1).await?;
    receipt(&mut alice_ws, &bob, 1, 0).await?;
    receipt(&mut carol_ws, &bob, 1, 0).await?;
    // Bob reads it: read reaches both.
    let (status, body) = b
        .post(
            &format!("/v1/chats/{chat}/read"),
            Some(&bob.token),
            json!({"seq": 1}),
        )
        .await?;
    ensure!(status.is_success(), "{status} {body}");
    receipt(&mut alice_ws, &bob, 1, 1).await?;
    receipt(&mut carol_ws, &bob, 1, 1).await?;
    // The hub's receipts list shows it too.
    let (status, body) = a
        .get(&format!("/v1/chats/{chat}/receipts"), &alice.token)
        .await?;
    ensure!(status == StatusCode::OK, "{body}");
    let bob_row = body["receipts"]
        .as_array()
        .context("receipts")?
        .iter()
        .find(|r| r["user_id"] == bob.user_id.as_str())
        .cloned()
        .context("bob's receipt")?;
    ensure!(
        bob_row["delivered_seq"] == 1 && bob_row["read_seq"] == 1,
        "{bob_row}"
    );
    Ok(())
}

/// A crash right after an ack commit, before the receipt it raised reached the outbox:
/// the restarted server still sends it (the commit recorded it, spec FO1).
async fn a_receipt_an_ack_raised_before_a_crash_still_leaves(backend: Backend) -> Result<()> {
    use parley_homeserver::store::{AckRequest, AnyStore, Store as _};
    let a = Server::start_peer(backend, "127.0.0.1", "").await?;
    let mut b = Server::start_peer(backend, "127.0.0.2", "").await?;
    let alice = a.register("alice").await?;
    let bob = b.register("bob").await?;
    let chat = a.create_chat(&alice, &[&bob]).await?;
    let mut alice_ws = a.connect(&alice).await?;
    alice_ws.until_synced().await?;
    assert_eq!(send_ok(&a, &alice, &chat, "hello").await?, 1);
    // Bob's device gets the event and does not ack it yet.
    let device = parley_client_api::DeviceId::try_from(bob.device_id.as_str())?;
    let mut bob_ws = b.connect(&bob).await?;
    let item = loop {
        match bob_ws.next_within(WAIT).await? {
            Some(ServerFrame::Event { id, .. }) => break id,
            Some(_) => {}
            None => bail!("the event never reached bob"),
        }
    };
    drop(bob_ws);
    // The crash: the server dies; its ack commit is made (as its ack writer makes it)
    // while no federator runs.
    b.stop_hard().await?;
    let store = AnyStore::connect(b.database_url(), 2).await?;
    store
        .commit_acks(
            &[AckRequest {
                user_id: bob.user_id.clone(),
                device_id: device,
                ids: vec![item],
            }],
            now_ms(),
            true,
        )
        .await?;
    drop(store);
    b.restart().await?;
    // ✓✓ delivered reaches the hub's member.
    receipt(&mut alice_ws, &bob, 1, 0).await?;
    Ok(())
}

/// The next `sent_late`/`send_failed` frame on `ws` (acking events on the way).
async fn late_result(ws: &mut Ws) -> Result<ServerFrame> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match ws.next_within(left).await? {
            Some(f @ (ServerFrame::SentLate { .. } | ServerFrame::SendFailed { .. })) => {
                return Ok(f);
            }
            Some(ServerFrame::Event { id, .. }) => ws.ack(vec![id]).await?,
            Some(_) => {}
            None => bail!("no late send result"),
        }
    }
}

/// The hub refuses the whole transaction that carries a forwarded send (422: another
/// implementation found it invalid): the follower gives the batch up, and the sending
/// device hears `send_failed` instead of seeing the send pending forever.
async fn a_send_the_hub_refuses_with_its_transaction_concludes_failed(
    backend: Backend,
) -> Result<()> {
    use std::sync::{Arc, Mutex};
    let mut c = Server::start_peer(backend, "127.0.0.3", "").await?;
    let b = Server::start_peer(backend, "127.0.0.2", "forward_wait_ms = 300").await?;
    let carol = c.register("carol").await?;
    let bob = b.register("bob").await?;
    let chat = c.create_chat(&carol, &[&bob]).await?;
    wait_listed(&b, &bob, &chat).await?;
    let mut bob_ws = b.connect(&bob).await?;
    bob_ws.until_synced().await?;

    // The hub's address now answers every transaction 422, after a while; it notes the
    // sends it was given.
    c.stop_hard().await?;
    let refused: Arc<Mutex<Vec<String>>> = Arc::default();
    let seen = refused.clone();
    let hub = axum::Router::new().route(
        "/_parley/fed/v1/send/{txn_id}",
        axum::routing::put(move |body: axum::body::Bytes| {
            let seen = seen.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(600)).await;
                let txn: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                for s in txn["sends"].as_array().into_iter().flatten() {
                    let id = s["client_msg_id"].as_str().unwrap_or_default().to_owned();
                    seen.lock().unwrap_or_else(|p| p.into_inner()).push(id);
                }
                (
                    axum::http::StatusCode::UNPROCESSABLE_ENTITY,
                    axum::Json(json!({"error": "invalid_param", "message": "not for us"})),
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind(c.name()).await?;
    let serving = tokio::spawn(async move { axum::serve(listener, hub).await });

    let (seq, pending) = send(&b, &bob, &chat, "doomed").await?;
    ensure!(pending && seq == 0, "seq {seq}, pending {pending}");
    let late = late_result(&mut bob_ws).await?;
    let ServerFrame::SendFailed {
        client_msg_id,
        code,
        ..
    } = &late
    else {
        bail!("expected send_failed: {late:?}")
    };
    ensure!(client_msg_id == "doomed", "{late:?}");
    assert_eq!(*code, parley_client_api::ErrorCode::InvalidParam);
    // Given up on, not sent again.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let sends = refused.lock().unwrap_or_else(|p| p.into_inner()).clone();
    ensure!(sends == ["doomed"], "the hub got the sends {sends:?}");
    serving.abort();
    Ok(())
}

async fn a_pending_send_concludes_on_the_sending_device(backend: Backend) -> Result<()> {
    use parley_client_api::http::chats::{MlsKind, MlsMeta};
    use parley_client_api::ws::ClientFrame;
    let mut a = Server::start_peer(backend, "127.0.0.1", "").await?;
    let b = Server::start_peer(backend, "127.0.0.2", "forward_wait_ms = 300").await?;
    let alice = a.register("alice").await?;
    let bob = b.register("bob").await?;
    let chat = a.create_chat(&alice, &[&bob]).await?;
    wait_listed(&b, &bob, &chat).await?;
    assert_eq!(send_ok(&b, &bob, &chat, "b1").await?, 1);
    let mut bob_ws = b.connect(&bob).await?;
    bob_ws.until_synced().await?;

    // The hub is down: bob's sends are answered pending, one fine, one the hub will
    // refuse (a commit for an epoch the chat is not at).
    a.stop_hard().await?;
    bob_ws
        .send(&ClientFrame::send(chat.clone(), "b2", b"b2".to_vec()))
        .await?;
    bob_ws
        .send(&ClientFrame::Send {
            chat_id: chat.clone(),
            client_msg_id: "bad".into(),
            payload: b"commit".to_vec().into(),
            mls: Some(MlsMeta {
                kind: MlsKind::Commit,
                epoch: 7,
            }),
            membership: None,
            blobs: Vec::new(),
            expires_in: None,
            read_receipts: None,
            group_info: None,
        })
        .await?;
    for _ in 0..2 {
        match bob_ws.next().await? {
            ServerFrame::Sent { ack } => ensure!(ack.pending && ack.seq == 0, "{ack:?}"),
            other => bail!("expected a pending ack: {other:?}"),
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    a.restart().await?;

    // Bob's device learns both conclusions, in the order sent, as inbox items: they come
    // again after a reconnect until acknowledged.
    let first = late_result(&mut bob_ws).await?;
    let ServerFrame::SentLate { ack, .. } = &first else {
        bail!("b2: {first:?}")
    };
    ensure!(
        ack.client_msg_id == "b2" && ack.seq == 2 && ack.chat_id == chat,
        "{ack:?}"
    );
    let second = late_result(&mut bob_ws).await?;
    let ServerFrame::SendFailed {
        client_msg_id,
        code,
        current_epoch,
        ..
    } = &second
    else {
        bail!("bad: {second:?}")
    };
    ensure!(
        client_msg_id == "bad" && code.as_str() == "wrong_epoch",
        "{second:?}"
    );
    ensure!(*current_epoch == Some(0), "{second:?}");
    bob_ws.close().await?;
    let mut bob_ws = b.connect(&bob).await?;
    let replay = bob_ws.until_synced().await?;
    let ids: Vec<i64> = replay.iter().filter_map(ServerFrame::inbox_id).collect();
    ensure!(
        replay.contains(&first) && replay.contains(&second),
        "replay: {replay:?}"
    );
    bob_ws.ack(ids).await?;
    bob_ws.close().await?;
    let mut bob_ws = b.connect(&bob).await?;
    let replay = bob_ws.until_synced().await?;
    ensure!(
        !replay.iter().any(|f| matches!(
            f,
            ServerFrame::SentLate { .. } | ServerFrame::SendFailed { .. }
        )),
        "acknowledged results came again: {replay:?}"
    );
    // The hub stored b2 and nothing of the refused one.
    let mut alice_ws = a.connect(&alice).await?;
    let got = events(&mut alice_ws, 2).await?;
    assert_eq!(texts(&got), [(1, "b1".into()), (2, "b2".into())]);
    no_more_events(&mut alice_ws, Duration::from_millis(500)).await?;
    Ok(())
}

async fn leaving_on_a_follower_reaches_the_hub(backend: Backend) -> Result<()> {
    let a = Server::start_peer(backend, "127.0.0.1", "").await?;
    let b = Server::start_peer(backend, "127.0.0.2", "").await?;
    let c = Server::start_peer(backend, "127.0.0.3", "").await?;
    let alice = a.register("alice").await?;
    let bob = b.register("bob").await?;
    let bert = b.register("bert").await?;
    let carol = c.register("carol").await?;
    let chat = create_group(&a, &alice, &[&bob, &bert, &carol]).await?;
    for (server, user) in [(&b, &bob), (&b, &bert), (&c, &carol)] {
        wait_listed(server, user, &chat).await?;
    }
    let mut bob_ws = b.connect(&bob).await?;
    let mut bert_ws = b.connect(&bert).await?;
    let mut carol_ws = c.connect(&carol).await?;
    for ws in [&mut bob_ws, &mut bert_ws, &mut carol_ws] {
        ws.until_synced().await?;
    }
    assert_eq!(send_ok(&a, &alice, &chat, "m1").await?, 1);
    for ws in [&mut bob_ws, &mut bert_ws, &mut carol_ws] {
        events(ws, 1).await?;
    }

    // Bob leaves on his own server: the hub's member list loses him, and so do the
    // other servers' copies.
    let (status, body) = b
        .post(
            &format!("/v1/chats/{chat}/leave"),
            Some(&bob.token),
            json!({}),
        )
        .await?;
    ensure!(status.is_success(), "{status} {body}");
    let without_bob = |rows: Vec<parley_client_api::http::chats::ChatSummary>| {
        rows.iter()
            .any(|r| r.chat_id == chat && r.members.len() == 3 && !r.members.contains(&bob.user_id))
    };
    let mut done = false;
    for _ in 0..200 {
        if without_bob(a.chats(&alice).await?) && without_bob(c.chats(&carol).await?) {
            done = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    ensure!(
        done,
        "the hub or carol's server still lists bob: {:?}",
        a.chats(&alice).await?
    );
    // Bob is out on his server too; nobody delivers to him any more.
    let (status, body) = b
        .get(&format!("/v1/chats/{chat}/events?after=0"), &bob.token)
        .await?;
    ensure!(
        status == StatusCode::FORBIDDEN && body["error"] == "not_member",
        "{status} {body}"
    );
    assert_eq!(send_ok(&a, &alice, &chat, "m2").await?, 2);
    assert_eq!(send_ok(&b, &bert, &chat, "m3").await?, 3);
    assert_eq!(
        texts(&events(&mut carol_ws, 2).await?),
        [(2, "m2".into()), (3, "m3".into())]
    );
    assert_eq!(texts(&events(&mut bert_ws, 1).await?), [(2, "m2".into())]);
    no_more_events(&mut bob_ws, Duration::from_millis(500)).await?;
    // Leaving again is refused: he is no member.
    let (status, _) = b
        .post(
            &format!("/v1/chats/{chat}/leave"),
            Some(&bob.token),
            json!({}),
        )
        .await?;
    ensure!(status == StatusCode::FORBIDDEN, "{status}");
    Ok(())
}

const ADMIN_TOKEN: &str = "admin-token-for-tests-0123456789";

/// The admin API's URL of a server started with an admin listener.
async fn admin_url(server: &Server) -> Result<String> {
    server
        .process
        .wait_for_log("admin listening on", crate::harness::WAIT)
        .await?;
    server
        .process
        .logs()
        .lines()
        .find_map(|l| l.strip_prefix("parley-homeserver admin listening on "))
        .map(|a| format!("http://{}", a.trim()))
        .context("admin address")
}

async fn admin(
    url: &str,
    method: reqwest::Method,
    path: &str,
    body: serde_json::Value,
) -> Result<serde_json::Value> {
    let mut req = reqwest::Client::new()
        .request(method.clone(), format!("{url}/_parley/admin/v1{path}"))
        .bearer_auth(ADMIN_TOKEN);
    if method != reqwest::Method::GET {
        req = req.json(&body);
    }
    let resp = req.send().await?;
    ensure!(resp.status().is_success(), "{path}: {}", resp.status());
    Ok(resp.json().await?)
}

/// A key rotation in the middle of a conversation: the new key is published first and
/// signs only after every peer may refetch (peers refetch at most once a minute), so no
/// request is refused; afterwards the retired key verifies nothing. Takes about a minute.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_rotation_mid_conversation_breaks_nothing() -> Result<()> {
    let backend = Backend::Sqlite;
    let a = Server::start_peer(backend, "127.0.0.1", "").await?;
    let top = format!("admin_listen = \"127.0.0.2:0\"\nadmin_token = \"{ADMIN_TOKEN}\"");
    let b = Server::start_peer_with(backend, "127.0.0.2", &top, "").await?;
    let b_admin = admin_url(&b).await?;
    let alice = a.register("alice").await?;
    let bob = b.register("bob").await?;
    let chat = a.create_chat(&alice, &[&bob]).await?;
    wait_listed(&b, &bob, &chat).await?;
    let mut alice_ws = a.connect(&alice).await?;
    alice_ws.until_synced().await?;
    assert_eq!(send_ok(&b, &bob, &chat, "before").await?, 1);
    let old_pem = std::fs::read_to_string(b.data_dir().join("federation.key"))?;

    let rotation = admin(
        &b_admin,
        reqwest::Method::POST,
        "/federation/keys/rotate",
        json!({"grace_secs": 61}),
    )
    .await?;
    let switch_at = rotation["switch_at"].as_i64().context("switch_at")?;
    let new_kid = rotation["next"].as_str().context("next")?.to_owned();
    // Both keys are published while the old one still signs.
    assert_eq!(send_ok(&b, &bob, &chat, "during").await?, 2);
    let wait = switch_at - now_ms() + 500;
    tokio::time::sleep(Duration::from_millis(u64::try_from(wait).unwrap_or(0))).await;

    // Signed with the new key now: A fetches it and accepts at once.
    assert_eq!(send_ok(&b, &bob, &chat, "after").await?, 3);
    let got = events(&mut alice_ws, 3).await?;
    assert_eq!(
        texts(&got),
        [
            (1, "before".into()),
            (2, "during".into()),
            (3, "after".into())
        ]
    );
    let keys = admin(
        &b_admin,
        reqwest::Method::GET,
        "/federation/keys",
        json!(null),
    )
    .await?;
    assert_eq!(keys["current"], new_kid.as_str(), "{keys}");
    assert_eq!(keys["retired"].as_array().map(Vec::len), Some(1), "{keys}");

    // The retired key verifies no request any more.
    use parley_federation::transport::http::{ClientConfig, FederationClient};
    let old = FederationClient::new(
        parley_federation::RequestSigner::new(
            parley_federation::ServerName::try_from(b.name())?,
            parley_federation::ServerSigningKey::from_pkcs8_pem(&old_pem)?,
        ),
        ClientConfig {
            insecure_test_mode: true,
            ..ClientConfig::default()
        },
    )?;
    let (status, answer) = put_txn(
        &old,
        &a,
        "old-key",
        json!({"origin": b.name(), "origin_ts": 0}),
    )
    .await?;
    ensure!(status == 401, "{status} {answer}");
    Ok(())
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or_default()
}
