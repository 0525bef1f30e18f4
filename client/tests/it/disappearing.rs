//! Disappearing messages, read-receipt privacy and reports (spec/messaging.md MS30–MS56)
//! through real homeservers and the SDK: on one server and across two, on SQLite and
//! Postgres.

use anyhow::{Context, Result, ensure};
use parley_client::{
    ChatId, Client, Error, ErrorCode, Event, FileOptions, MessageState, ReportTarget,
};
use parley_client_api::http::chats::Receipt;
use serde_json::json;

use crate::harness::{
    Backend, Device, PASSWORD, Server, config, drain, eventually, server_history, users,
};

crate::on_both_backends!(
    disappearing_messages_on_one_server,
    disappearing_messages_across_two_servers,
    read_receipt_privacy_on_one_server,
    read_receipt_privacy_across_two_servers,
    reports_reach_the_admins,
);

/// The shortest timer (`timer::MIN_SECS`): what the tests wait for.
const TIMER: u32 = 5;

/// A raw request with a device's token; the status and the JSON body.
async fn raw(
    base: &str,
    token: &str,
    method: reqwest::Method,
    path: &str,
    body: serde_json::Value,
) -> Result<(u16, serde_json::Value)> {
    let resp = reqwest::Client::new()
        .request(method, format!("{base}{path}"))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await?;
    let status = resp.status().as_u16();
    let body = resp.json().await.unwrap_or(serde_json::Value::Null);
    Ok((status, body))
}

fn events_path(chat: &ChatId) -> String {
    parley_client_api::http::fill(
        parley_client_api::http::chats::send::PATH,
        &[("chat_id", chat.as_str())],
    )
}

/// The message ids physically stored on a device for a chat.
async fn stored(d: &Device, chat: &ChatId) -> Result<Vec<String>> {
    Ok(d.client.store().stored_message_ids(chat).await?)
}

/// Waits until the device's store no longer holds `id`.
async fn gone_from(d: &Device, chat: &ChatId, id: &str) -> Result<()> {
    eventually(&format!("{id} is gone from {}", d.user()), || async {
        Ok(!stored(d, chat).await?.iter().any(|m| m == id))
    })
    .await
}

/// Waits until the server no longer serves the event `client_msg_id` (its events table).
async fn gone_from_server(base: &str, token: &str, chat: &ChatId, id: &str) -> Result<()> {
    eventually(&format!("{id} is gone from {base}"), || async {
        Ok(!server_history(base, token, chat)
            .await?
            .iter()
            .any(|e| e.client_msg_id == id))
    })
    .await
}

/// Shuts a device's client down (it goes offline; its profile stays).
async fn offline(d: &Device) {
    d.client.clone().shutdown().await;
}

/// Opens a device's profile again and waits until its inbox is replayed.
async fn back_online(d: Device) -> Result<Device> {
    let d = d.restart().await?;
    d.online().await?;
    Ok(d)
}

async fn disappearing_messages_on_one_server(backend: Backend) -> Result<()> {
    let server = Server::start(backend).await?;
    let alice = server.register("alice").await?;
    let bob = server.register("bob").await?;
    let bob2 = server.login("bob").await?;
    for d in [&alice, &bob, &bob2] {
        d.online().await?;
    }
    let chat = alice.client.create_chat(bob.user()).await?;
    bob.joined(&chat).await?;
    bob2.joined(&chat).await?;
    alice.client.send_text(&chat, "before the timer").await?;
    bob2.received(&chat, "before the timer").await?;

    // Bad input: the SDK refuses a timer out of bounds; the server answers 400
    // invalid_timer for one on the wire, and for a timer on a commit.
    ensure!(matches!(
        alice.client.set_timer(&chat, Some(TIMER - 1)).await,
        Err(Error::Invalid(_))
    ));
    let token = alice.token().await?;
    for (expires_in, mls) in [
        (json!(2), json!({"kind": "application", "epoch": 0})),
        (
            json!(400 * 86_400),
            json!({"kind": "application", "epoch": 0}),
        ),
        (json!(60), json!({"kind": "commit", "epoch": 1})),
    ] {
        let body = json!({"client_msg_id": "bad-timer", "payload": "AAAA", "mls": mls,
                          "expires_in": expires_in});
        let (status, body) = raw(
            &server.url(),
            &token,
            reqwest::Method::POST,
            &events_path(&chat),
            body,
        )
        .await?;
        ensure!(
            status == 400 && body["error"] == "invalid_timer",
            "{status} {body}"
        );
    }
    let (status, body) = raw(
        &server.url(),
        &token,
        reqwest::Method::POST,
        &events_path(&chat),
        json!({"client_msg_id": "bad-timer", "payload": "AAAA", "expires_in": "1h"}),
    )
    .await?;
    ensure!(status == 400, "{status} {body}");

    // Alice sets the timer: every device sees the chat event and applies it.
    alice.client.set_timer(&chat, Some(TIMER)).await?;
    for d in [&bob, &bob2] {
        let m = d.received(&chat, "[disappearing messages: 5s]").await?;
        ensure!(m.kind == "timer" && m.sender == *alice.user(), "{m:?}");
        eventually("the timer applies", || async {
            Ok(d.client.store().timer(&chat).await? == Some(TIMER))
        })
        .await?;
    }
    ensure!(alice.client.store().timer(&chat).await? == Some(TIMER));

    // bob2 goes offline: its copy waits in the server's inbox.
    offline(&bob2).await;
    let file = alice.dir.path().join("photo.bin");
    std::fs::write(&file, vec![7u8; 10_000])?;
    let sent = alice
        .client
        .send_file(&chat, &file, FileOptions::default())
        .await?;
    let text = alice.client.send_text(&chat, "this disappears").await?;
    ensure!(text.expires_at.is_some(), "{text:?}");
    alice
        .state(&chat, &text.id, MessageState::Delivered)
        .await?;
    let got = bob.received(&chat, "this disappears").await?;
    ensure!(got.expires_at.is_some(), "{got:?}");
    let media_url = format!("{}/v1/media/{}", server.url(), sent.blob);
    let head = reqwest::Client::new()
        .head(&media_url)
        .bearer_auth(&token)
        .send()
        .await?;
    ensure!(head.status() == 200, "{}", head.status());

    // Expired: gone from every local store (the app is told), from the server's history,
    // its undelivered inbox (bob2 never gets it) and its media store.
    let mut events = bob.client.subscribe();
    for d in [&alice, &bob] {
        gone_from(d, &chat, &text.id).await?;
        gone_from(d, &chat, &sent.message.id).await?;
    }
    ensure!(
        drain(&mut events)
            .iter()
            .any(|e| matches!(e, Event::MessageExpired { id, .. } if *id == got.id)),
        "bob's app was not told"
    );
    gone_from_server(&server.url(), &token, &chat, &text.id).await?;
    eventually("the file is collected", || async {
        let head = reqwest::Client::new()
            .head(&media_url)
            .bearer_auth(&token)
            .send()
            .await?;
        Ok(head.status() == 404)
    })
    .await?;
    alice.client.set_timer(&chat, None).await?;
    alice.client.send_text(&chat, "after the timer").await?;
    let bob2 = back_online(bob2).await?;
    bob2.received(&chat, "after the timer").await?;
    let ids = stored(&bob2, &chat).await?;
    ensure!(
        !ids.contains(&text.id) && !ids.contains(&sent.message.id),
        "bob2 got an expired message from its inbox"
    );
    bob2.received(&chat, "before the timer").await?;
    ensure!(bob2.client.store().timer(&chat).await?.is_none());
    // Off again: new messages stay.
    let kept = bob2.received(&chat, "after the timer").await?;
    ensure!(kept.expires_at.is_none());
    Ok(())
}

async fn disappearing_messages_across_two_servers(backend: Backend) -> Result<()> {
    let a = Server::start_peer(backend, "127.0.0.2", "").await?;
    let b = Server::start_peer(backend, "127.0.0.3", "").await?;
    let alice = a.register("alice").await?;
    let bob = b.register("bob").await?;
    let bob2 = b.login("bob").await?;
    for d in [&alice, &bob, &bob2] {
        d.online().await?;
    }
    // Hosted on A; B follows.
    let group = alice
        .client
        .create_group("Vanishing", &users(&[&bob]))
        .await?;
    bob.joined(&group).await?;
    bob2.joined(&group).await?;
    // Bob (a follower's user) sets the timer: everyone applies it.
    bob.client.set_timer(&group, Some(TIMER)).await?;
    for d in [&alice, &bob2] {
        d.received(&group, "[disappearing messages: 5s]").await?;
    }
    eventually("alice applies bob's timer", || async {
        Ok(alice.client.store().timer(&group).await? == Some(TIMER))
    })
    .await?;
    offline(&bob2).await;
    // One message from the hub's side, one from the follower's.
    let from_alice = alice.client.send_text(&group, "from A, vanishing").await?;
    let from_bob = bob.client.send_text(&group, "from B, vanishing").await?;
    bob.received(&group, "from A, vanishing").await?;
    alice.received(&group, "from B, vanishing").await?;
    let (ta, tb) = (alice.token().await?, bob.token().await?);
    ensure!(
        server_history(&b.url(), &tb, &group)
            .await?
            .iter()
            .any(|e| e.client_msg_id == from_alice.id && e.expires_in == Some(TIMER)),
        "B's copy lacks the event or its expiry"
    );
    for id in [&from_alice.id, &from_bob.id] {
        gone_from(&alice, &group, id).await?;
        gone_from(&bob, &group, id).await?;
        gone_from_server(&a.url(), &ta, &group, id).await?;
        gone_from_server(&b.url(), &tb, &group, id).await?;
    }
    alice.client.set_timer(&group, None).await?;
    alice.client.send_text(&group, "kept").await?;
    let bob2 = back_online(bob2).await?;
    bob2.received(&group, "kept").await?;
    let ids = stored(&bob2, &group).await?;
    ensure!(
        !ids.contains(&from_alice.id) && !ids.contains(&from_bob.id),
        "bob2 got an expired message from B's inbox"
    );
    Ok(())
}

/// A member's receipt as `viewer`'s server shows it to `viewer`.
async fn receipt_of(base: &str, token: &str, chat: &ChatId, user: &str) -> Result<Receipt> {
    let path = parley_client_api::http::fill(
        parley_client_api::http::chats::receipts::PATH,
        &[("chat_id", chat.as_str())],
    );
    let resp: parley_client_api::http::chats::receipts::Response = reqwest::Client::new()
        .get(format!("{base}{path}"))
        .bearer_auth(token)
        .send()
        .await?
        .json()
        .await?;
    resp.receipts
        .into_iter()
        .find(|r| r.user_id.as_str() == user)
        .context("no such member")
}

/// Marks `seq` read through the HTTP API (answered after the commit).
async fn read(base: &str, token: &str, chat: &ChatId, seq: i64) -> Result<()> {
    let path = parley_client_api::http::fill(
        parley_client_api::http::chats::mark_read::PATH,
        &[("chat_id", chat.as_str())],
    );
    let (status, body) = raw(
        base,
        token,
        reqwest::Method::POST,
        &path,
        json!({ "seq": seq }),
    )
    .await?;
    ensure!(status == 204, "{status} {body}");
    Ok(())
}

async fn read_receipt_privacy_on_one_server(backend: Backend) -> Result<()> {
    let server = Server::start(backend).await?;
    let url = server.url();
    let alice = server.register("alice").await?;
    let bob = server.register("bob").await?;
    let carol = server.register("carol").await?;
    for d in [&alice, &bob, &carol] {
        d.online().await?;
    }
    let (ta, tb, tc) = (
        alice.token().await?,
        bob.token().await?,
        carol.token().await?,
    );
    let group = alice
        .client
        .create_group("Ticks", &users(&[&bob, &carol]))
        .await?;
    bob.joined(&group).await?;
    carol.joined(&group).await?;

    // Bob turns read receipts off (the setting survives a change of last seen).
    ensure!(alice.client.read_receipts().await?);
    ensure!(!bob.client.set_read_receipts(false).await?);
    bob.client
        .set_privacy(parley_client::Visibility::Contacts)
        .await?;
    ensure!(!bob.client.read_receipts().await?);

    // Alice's message: bob reads it first, then carol. Alice sees carol's read, and
    // bob's delivered tick but never his read.
    let m1 = alice.client.send_text(&group, "m1").await?;
    let m1 = {
        bob.received(&group, "m1").await?;
        carol.received(&group, "m1").await?;
        alice.state(&group, &m1.id, MessageState::Delivered).await?;
        alice
            .client
            .store()
            .message(&group, &m1.id)
            .await?
            .context("m1")?
    };
    let seq = m1.seq.context("m1 seq")?;
    read(&url, &tb, &group, seq).await?;
    read(&url, &tc, &group, seq).await?;
    eventually("alice sees carol's read", || async {
        let s = alice.client.receipt_summary(&group, &m1.id).await?;
        Ok(s.is_some_and(|s| s.read == 1 && s.delivered == 2))
    })
    .await?;
    let s = alice
        .client
        .receipt_summary(&group, &m1.id)
        .await?
        .context("summary")?;
    ensure!(
        s.members
            .iter()
            .any(|m| m.user_id == *bob.user() && m.delivered && !m.read),
        "{s:?}"
    );
    let r = receipt_of(&url, &ta, &group, bob.user().as_str()).await?;
    ensure!(r.read_seq == 0 && r.delivered_seq >= seq, "{r:?}");
    // Bob's own devices still know what he read.
    ensure!(
        receipt_of(&url, &tb, &group, bob.user().as_str())
            .await?
            .read_seq
            == seq
    );

    // Bob sees no one's read receipts; delivered still reaches him.
    let m2 = bob.client.send_text(&group, "m2").await?;
    alice.received(&group, "m2").await?;
    carol.received(&group, "m2").await?;
    bob.state(&group, &m2.id, MessageState::Delivered).await?;
    let seq2 = bob
        .client
        .store()
        .message(&group, &m2.id)
        .await?
        .and_then(|m| m.seq)
        .context("m2 seq")?;
    read(&url, &ta, &group, seq2).await?;
    read(&url, &tc, &group, seq2).await?;
    for user in [alice.user(), carol.user()] {
        let r = receipt_of(&url, &tb, &group, user.as_str()).await?;
        ensure!(r.read_seq == 0 && r.delivered_seq >= seq2, "{r:?}");
    }
    // Carol sees alice's read (the two of them share receipts).
    ensure!(
        receipt_of(&url, &tc, &group, alice.user().as_str())
            .await?
            .read_seq
            == seq2
    );
    let m2 = bob
        .client
        .store()
        .message(&group, &m2.id)
        .await?
        .context("m2")?;
    ensure!(m2.state == MessageState::Delivered, "{m2:?}");

    // The chat policy: only admins change it in a group; then nobody's read receipt
    // goes anywhere, delivered ticks still do.
    let refused = carol.client.set_chat_read_receipts(&group, false).await?;
    carol
        .state(&group, &refused.id, MessageState::Failed)
        .await?;
    alice.client.set_chat_read_receipts(&group, false).await?;
    for d in [&bob, &carol] {
        d.received(
            &group,
            "[read receipts turned off for everyone in this chat]",
        )
        .await?;
        eventually("the policy applies", || async {
            Ok(!d.client.store().chat_read_receipts(&group).await?)
        })
        .await?;
    }
    let m3 = alice.client.send_text(&group, "m3").await?;
    carol.received(&group, "m3").await?;
    alice.state(&group, &m3.id, MessageState::Delivered).await?;
    let seq3 = alice
        .client
        .store()
        .message(&group, &m3.id)
        .await?
        .and_then(|m| m.seq)
        .context("m3 seq")?;
    read(&url, &tc, &group, seq3).await?;
    let r = receipt_of(&url, &ta, &group, carol.user().as_str()).await?;
    ensure!(r.read_seq == 0 && r.delivered_seq >= seq3, "{r:?}");
    Ok(())
}

async fn read_receipt_privacy_across_two_servers(backend: Backend) -> Result<()> {
    let a = Server::start_peer(backend, "127.0.0.2", "").await?;
    let b = Server::start_peer(backend, "127.0.0.3", "").await?;
    let alice = a.register("alice").await?;
    let bob = b.register("bob").await?;
    let carol = b.register("carol").await?;
    for d in [&alice, &bob, &carol] {
        d.online().await?;
    }
    let (ta, tb, tc) = (
        alice.token().await?,
        bob.token().await?,
        carol.token().await?,
    );
    let group = alice
        .client
        .create_group("Across", &users(&[&bob, &carol]))
        .await?;
    bob.joined(&group).await?;
    carol.joined(&group).await?;
    bob.client.set_read_receipts(false).await?;

    // Bob's server sends the hub no read receipt of his; carol's arrives.
    let m1 = alice.client.send_text(&group, "m1").await?;
    bob.received(&group, "m1").await?;
    carol.received(&group, "m1").await?;
    alice.state(&group, &m1.id, MessageState::Delivered).await?;
    let seq = alice
        .client
        .store()
        .message(&group, &m1.id)
        .await?
        .and_then(|m| m.seq)
        .context("seq")?;
    read(&b.url(), &tb, &group, seq).await?;
    read(&b.url(), &tc, &group, seq).await?;
    eventually("A learns carol's read", || async {
        Ok(receipt_of(&a.url(), &ta, &group, carol.user().as_str())
            .await?
            .read_seq
            == seq)
    })
    .await?;
    let r = receipt_of(&a.url(), &ta, &group, bob.user().as_str()).await?;
    ensure!(r.read_seq == 0 && r.delivered_seq >= seq, "{r:?}");

    // Bob's server delivers him no one's read receipt; carol (same server) gets them.
    let m2 = alice.client.send_text(&group, "m2").await?;
    bob.received(&group, "m2").await?;
    let seq2 = alice
        .client
        .store()
        .message(&group, &m2.id)
        .await?
        .and_then(|m| m.seq)
        .context("seq2")?;
    read(&a.url(), &ta, &group, seq2).await?;
    eventually("B learns alice's receipt", || async {
        Ok(receipt_of(&b.url(), &tc, &group, alice.user().as_str())
            .await?
            .read_seq
            == seq2)
    })
    .await?;
    let r = receipt_of(&b.url(), &tb, &group, alice.user().as_str()).await?;
    ensure!(r.read_seq == 0 && r.delivered_seq >= seq2, "{r:?}");

    // The chat forbids read receipts: the follower stops sending carol's, the hub
    // relays none.
    alice.client.set_chat_read_receipts(&group, false).await?;
    carol
        .received(
            &group,
            "[read receipts turned off for everyone in this chat]",
        )
        .await?;
    let m3 = alice.client.send_text(&group, "m3").await?;
    carol.received(&group, "m3").await?;
    let seq3 = alice
        .client
        .store()
        .message(&group, &m3.id)
        .await?
        .and_then(|m| m.seq)
        .context("seq3")?;
    read(&b.url(), &tc, &group, seq3).await?;
    eventually("A learns carol got m3", || async {
        Ok(receipt_of(&a.url(), &ta, &group, carol.user().as_str())
            .await?
            .delivered_seq
            >= seq3)
    })
    .await?;
    let r = receipt_of(&a.url(), &ta, &group, carol.user().as_str()).await?;
    ensure!(r.read_seq == 0, "{r:?}");
    Ok(())
}

const ADMIN_TOKEN: &str = "admin-token-for-tests-0123456789";

async fn reports_reach_the_admins(backend: Backend) -> Result<()> {
    let server = Server::start_with(
        backend,
        &[
            "--admin-listen",
            "127.0.0.1:0",
            "--admin-token",
            ADMIN_TOKEN,
        ],
    )
    .await?;
    server
        .process
        .wait_for_log("admin listening on", crate::harness::WAIT)
        .await?;
    let admin_url = server
        .process
        .logs()
        .lines()
        .find_map(|l| l.strip_prefix("parley-homeserver admin listening on "))
        .map(|a| format!("http://{}", a.trim()))
        .context("admin address")?;
    let alice = server.register("alice").await?;
    let mallory = server.register("mallory").await?;
    alice.online().await?;
    mallory.online().await?;
    let chat = mallory.client.create_chat(alice.user()).await?;
    alice.joined(&chat).await?;
    mallory.client.send_text(&chat, "buy cheap pills").await?;
    let bad = alice.received(&chat, "buy cheap pills").await?;

    // Bad input: an empty report (the SDK and the server), a message not on the device.
    ensure!(matches!(
        alice.client.report_user(mallory.user(), " ", &[]).await,
        Err(Error::Invalid(_))
    ));
    let (status, body) = raw(
        &server.url(),
        &alice.token().await?,
        reqwest::Method::POST,
        "/v1/reports",
        json!({"target": {"type": "user", "user_id": mallory.user()}, "reason": ""}),
    )
    .await?;
    ensure!(
        status == 400 && body["error"] == "empty_report",
        "{status} {body}"
    );
    let e = alice
        .client
        .report(
            ReportTarget::Chat {
                chat_id: chat.clone(),
            },
            "",
            &[(chat.clone(), "no-such-id".into())],
        )
        .await;
    ensure!(matches!(e, Err(Error::Invalid(_))), "{e:?}");
    ensure!(
        alice
            .client
            .report_user(mallory.user(), &"x".repeat(2001), &[])
            .await
            .err()
            .and_then(|e| e.code())
            == Some(ErrorCode::InvalidParam)
    );

    let filed = alice.client.report_message(&chat, &bad.id, "spam").await?;
    alice
        .client
        .report_user(mallory.user(), "keeps sending spam", &[])
        .await?;

    // The admin API lists and shows them, with the decrypted text alice attached.
    let list: serde_json::Value = reqwest::Client::new()
        .get(format!("{admin_url}/_parley/admin/v1/reports"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await?
        .json()
        .await?;
    let reports = list["reports"].as_array().context("reports")?;
    ensure!(reports.len() == 2, "{list}");
    let one: serde_json::Value = reqwest::Client::new()
        .get(format!(
            "{admin_url}/_parley/admin/v1/reports/{}",
            filed.report_id
        ))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await?
        .json()
        .await?;
    ensure!(
        one["reporter"] == alice.user().as_str()
            && one["target"]["type"] == "message"
            && one["target"]["sender"] == mallory.user().as_str()
            && one["messages"][0]["text"] == "buy cheap pills"
            && one["notice"]
                .as_str()
                .is_some_and(|n| n.contains("franking")),
        "{one}"
    );
    let missing = reqwest::Client::new()
        .get(format!("{admin_url}/_parley/admin/v1/reports/999999"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await?;
    ensure!(missing.status() == 404);

    // And the admin CLI; then the admin acts: the reported account is deactivated.
    let cli = |args: &[&str]| {
        std::process::Command::new(crate::harness::homeserver_binary()?)
            .args(["admin", "--url", &admin_url, "--token", ADMIN_TOKEN])
            .args(args)
            .output()
            .context("running parley-homeserver admin")
    };
    let out = cli(&["reports", "list"])?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success()
            && text.contains(&format!("message {chat} seq"))
            && text.contains("keeps sending spam"),
        "{out:?}"
    );
    let out = cli(&["reports", "show", &filed.report_id.to_string()])?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success() && text.contains("buy cheap pills") && text.contains("franking"),
        "{out:?}"
    );
    let out = cli(&["deactivate", mallory.user().as_str()])?;
    ensure!(out.status.success(), "{out:?}");
    ensure!(
        Client::login(
            config(tempfile::tempdir()?.path()),
            &server.url(),
            "mallory",
            PASSWORD
        )
        .await
        .is_err()
    );
    Ok(())
}
