//! Real-time delivery, inbox replay, multi-device, receipts, idempotent resend.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{Result, ensure};
use parley_client_api::ws::{ClientFrame, ServerFrame};
use reqwest::StatusCode;
use serde_json::json;

use crate::harness::{Backend, Server};

crate::on_both_backends!(
    online_delivery_then_ack_empties_the_inbox,
    offline_device_gets_its_inbox_in_order_then_live,
    replay_and_live_overlap_without_gap_or_duplicate,
    every_device_of_both_users_gets_the_event,
    receipts_reach_the_sender_live_and_on_query,
    resend_with_same_client_msg_id_stores_nothing_new,
    leaving_a_chat_stops_delivery_and_sends,
);

async fn online_delivery_then_ack_empties_the_inbox(backend: Backend) -> Result<()> {
    let server = Server::start(backend).await?;
    let alice = server.register("alice").await?;
    let bob = server.register("bob").await?;
    let chat = server.create_chat(&alice, &[&bob]).await?;
    let mut bob_ws = server.connect(&bob).await?;
    ensure!(
        bob_ws.until_synced().await?.is_empty(),
        "fresh inbox is empty"
    );

    let (status, ack) = server.send(&alice, &chat, "m1", b"ciphertext-1").await?;
    ensure!(status == StatusCode::CREATED, "send: {status} {ack}");
    ensure!(ack["seq"] == 1 && ack["duplicate"] == false, "{ack}");

    let events = bob_ws.events(1).await?;
    let (id, ev) = &events[0];
    ensure!(ev.seq == 1 && ev.chat_id == chat && ev.sender == alice.user_id);
    ensure!(ev.payload.0 == b"ciphertext-1" && ev.client_msg_id == "m1");
    bob_ws.ack(vec![*id]).await?;
    bob_ws.close().await?;

    // Acknowledged: a reconnect replays nothing.
    let mut again = server.connect(&bob).await?;
    let replay = again.until_synced().await?;
    ensure!(replay.is_empty(), "acked item came again: {replay:?}");
    Ok(())
}

async fn offline_device_gets_its_inbox_in_order_then_live(backend: Backend) -> Result<()> {
    let server = Server::start(backend).await?;
    let alice = server.register("alice").await?;
    let bob = server.register("bob").await?;
    let chat = server.create_chat(&alice, &[&bob]).await?;
    for i in 1..=30 {
        let (status, _) = server
            .send(&alice, &chat, &format!("m{i}"), format!("p{i}").as_bytes())
            .await?;
        ensure!(status == StatusCode::CREATED);
    }
    let mut bob_ws = server.connect(&bob).await?;
    let replay = bob_ws.until_synced().await?;
    let seqs: Vec<i64> = replay
        .iter()
        .filter_map(|f| match f {
            ServerFrame::Event { event, .. } => Some(event.seq),
            _ => None,
        })
        .collect();
    ensure!(
        seqs == (1..=30).collect::<Vec<_>>(),
        "replay order {seqs:?}"
    );
    // Not acknowledged: a second connection gets the same again.
    bob_ws.close().await?;
    let mut bob_ws = server.connect(&bob).await?;
    ensure!(bob_ws.until_synced().await?.len() == 30);
    // Then live.
    server.send(&alice, &chat, "m31", b"live").await?;
    let live = bob_ws.events(1).await?;
    ensure!(live[0].1.seq == 31 && live[0].1.payload.0 == b"live");
    Ok(())
}

async fn replay_and_live_overlap_without_gap_or_duplicate(backend: Backend) -> Result<()> {
    let server = Server::start(backend).await?;
    let alice = server.register("alice").await?;
    let bob = server.register("bob").await?;
    let chat = server.create_chat(&alice, &[&bob]).await?;
    const TOTAL: i64 = 400;
    // Alice sends over her socket in a pipelined burst while Bob connects mid-way.
    let mut alice_ws = server.connect(&alice).await?;
    alice_ws.until_synced().await?;
    for i in 1..=TOTAL / 2 {
        alice_ws
            .send(&ClientFrame::send(
                chat.clone(),
                format!("m{i}"),
                format!("p{i}").into_bytes(),
            ))
            .await?;
    }
    let mut bob_ws = server.connect(&bob).await?;
    for i in TOTAL / 2 + 1..=TOTAL {
        alice_ws
            .send(&ClientFrame::send(
                chat.clone(),
                format!("m{i}"),
                format!("p{i}").into_bytes(),
            ))
            .await?;
    }
    let mut seqs = Vec::new();
    let mut synced = false;
    while seqs.len() < TOTAL as usize {
        match bob_ws.next().await? {
            ServerFrame::Event { event, .. } => seqs.push(event.seq),
            ServerFrame::Synced => {
                ensure!(!synced, "synced twice");
                synced = true;
            }
            other => anyhow::bail!("unexpected {other:?}"),
        }
    }
    ensure!(synced, "no synced marker");
    ensure!(
        seqs == (1..=TOTAL).collect::<Vec<_>>(),
        "gap, duplicate or disorder: {seqs:?}"
    );
    ensure!(
        bob_ws
            .next_within(Duration::from_millis(300))
            .await?
            .is_none(),
        "extra frame"
    );
    // Every send was acknowledged with its seq.
    let mut sent = BTreeSet::new();
    while sent.len() < TOTAL as usize {
        if let ServerFrame::Sent { ack } = alice_ws.next().await? {
            sent.insert(ack.seq);
        }
    }
    ensure!(sent == (1..=TOTAL).collect());
    Ok(())
}

async fn every_device_of_both_users_gets_the_event(backend: Backend) -> Result<()> {
    let server = Server::start(backend).await?;
    let alice1 = server.register("alice").await?;
    let alice2 = server.login("alice").await?;
    let bob = server.register("bob").await?;
    let chat = server.create_chat(&alice1, &[&bob]).await?;
    let bob2 = server.login("bob").await?; // a device added after the chat exists
    let mut ws_a1 = server.connect(&alice1).await?;
    let mut ws_a2 = server.connect(&alice2).await?;
    let mut ws_b1 = server.connect(&bob).await?;
    let mut ws_b2 = server.connect(&bob2).await?;
    for ws in [&mut ws_a1, &mut ws_a2, &mut ws_b1, &mut ws_b2] {
        ws.until_synced().await?;
    }
    ws_a1
        .send(&ClientFrame::send(chat.clone(), "x1", b"hello".to_vec()))
        .await?;
    match ws_a1.next().await? {
        ServerFrame::Sent { ack } => ensure!(ack.seq == 1 && !ack.duplicate),
        other => anyhow::bail!("expected sent, got {other:?}"),
    }
    for ws in [&mut ws_a2, &mut ws_b1, &mut ws_b2] {
        let ev = ws.events(1).await?;
        ensure!(ev[0].1.seq == 1 && ev[0].1.sender_device.as_str() == alice1.device_id);
    }
    // The sending device does not get its own event back.
    ensure!(
        ws_a1
            .next_within(Duration::from_millis(300))
            .await?
            .is_none()
    );
    Ok(())
}

async fn receipts_reach_the_sender_live_and_on_query(backend: Backend) -> Result<()> {
    let server = Server::start(backend).await?;
    let alice = server.register("alice").await?;
    let bob = server.register("bob").await?;
    let chat = server.create_chat(&alice, &[&bob]).await?;
    let mut alice_ws = server.connect(&alice).await?;
    alice_ws.until_synced().await?;
    for i in 1..=3 {
        server.send(&alice, &chat, &format!("m{i}"), b"x").await?;
    }
    let bobs = server.chats(&bob).await?;
    ensure!(
        bobs[0].unread_count == 3 && bobs[0].last_seq == 3,
        "{bobs:?}"
    );

    // Bob's device acknowledges: ✓✓ delivered reaches Alice live.
    let mut bob_ws = server.connect(&bob).await?;
    let items = bob_ws.until_synced().await?;
    let ids: Vec<i64> = items.iter().filter_map(ServerFrame::inbox_id).collect();
    ensure!(ids.len() == 3);
    bob_ws.ack(ids).await?;
    let receipt = next_receipt(&mut alice_ws).await?;
    ensure!(receipt == (bob.user_id.to_string(), 3, 0), "{receipt:?}");

    // Bob reads up to 2 (over the socket), then 3 (over HTTP).
    bob_ws
        .send(&ClientFrame::Read {
            chat_id: chat.clone(),
            seq: 2,
        })
        .await?;
    ensure!(next_receipt(&mut alice_ws).await? == (bob.user_id.to_string(), 3, 2));
    let (status, _) = server
        .post(
            &format!("/v1/chats/{chat}/read"),
            Some(&bob.token),
            json!({"seq": 3}),
        )
        .await?;
    ensure!(status == StatusCode::NO_CONTENT);
    ensure!(next_receipt(&mut alice_ws).await? == (bob.user_id.to_string(), 3, 3));

    let (status, body) = server
        .get(&format!("/v1/chats/{chat}/receipts"), &alice.token)
        .await?;
    ensure!(status == StatusCode::OK && body["last_seq"] == 3, "{body}");
    let bob_receipt = body["receipts"]
        .as_array()
        .and_then(|r| r.iter().find(|r| r["user_id"] == bob.user_id.as_str()))
        .cloned()
        .unwrap_or_default();
    ensure!(
        bob_receipt["delivered_seq"] == 3 && bob_receipt["read_seq"] == 3,
        "{body}"
    );
    ensure!(server.chats(&bob).await?[0].unread_count == 0);

    // An offline sender gets the latest receipt (one item, not one per change) on
    // reconnect.
    alice_ws.close().await?;
    let mut alice_ws = server.connect(&alice).await?;
    let replay = alice_ws.until_synced().await?;
    ensure!(
        replay.len() == 1,
        "one item per member, the latest: {replay:?}"
    );
    match &replay[0] {
        ServerFrame::Receipt { receipt, .. } => {
            ensure!(receipt.delivered_seq == 3 && receipt.read_seq == 3)
        }
        other => anyhow::bail!("expected a receipt, got {other:?}"),
    }
    Ok(())
}

async fn next_receipt(ws: &mut crate::harness::Ws) -> Result<(String, i64, i64)> {
    loop {
        if let ServerFrame::Receipt { receipt, .. } = ws.next().await? {
            return Ok((
                receipt.user_id.to_string(),
                receipt.delivered_seq,
                receipt.read_seq,
            ));
        }
    }
}

async fn resend_with_same_client_msg_id_stores_nothing_new(backend: Backend) -> Result<()> {
    let server = Server::start(backend).await?;
    let alice = server.register("alice").await?;
    let bob = server.register("bob").await?;
    let chat = server.create_chat(&alice, &[&bob]).await?;
    let (s1, a1) = server.send(&alice, &chat, "same", b"one").await?;
    let (s2, a2) = server.send(&alice, &chat, "same", b"one").await?;
    ensure!(
        s1 == StatusCode::CREATED && s2 == StatusCode::OK,
        "{s1} {s2}"
    );
    ensure!(a1["seq"] == a2["seq"] && a1["ts"] == a2["ts"] && a2["duplicate"] == true);
    let (_, history) = server
        .get(&format!("/v1/chats/{chat}/events"), &bob.token)
        .await?;
    ensure!(
        history["events"].as_array().map(Vec::len) == Some(1),
        "{history}"
    );
    let mut bob_ws = server.connect(&bob).await?;
    ensure!(bob_ws.until_synced().await?.len() == 1);
    Ok(())
}

async fn leaving_a_chat_stops_delivery_and_sends(backend: Backend) -> Result<()> {
    let server = Server::start(backend).await?;
    let alice = server.register("alice").await?;
    let bob = server.register("bob").await?;
    let chat = server.create_chat(&alice, &[&bob]).await?;
    let (status, _) = server
        .post(
            &format!("/v1/chats/{chat}/leave"),
            Some(&bob.token),
            json!({}),
        )
        .await?;
    ensure!(status == StatusCode::NO_CONTENT);
    ensure!(server.chats(&bob).await?.is_empty());
    server.send(&alice, &chat, "after-leave", b"x").await?;
    let mut bob_ws = server.connect(&bob).await?;
    ensure!(bob_ws.until_synced().await?.is_empty());
    let (status, body) = server.send(&bob, &chat, "b1", b"x").await?;
    ensure!(
        status == StatusCode::FORBIDDEN && body["error"] == "not_member",
        "{status} {body}"
    );
    Ok(())
}
