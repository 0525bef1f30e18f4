//! kill -9 while a client is sending: after the restart every acknowledged event is
//! present exactly once, sequence numbers have no gap, and the recipient gets them.

use std::collections::BTreeMap;

use anyhow::{Result, ensure};
use parley_client_api::http::chats::ChatEvent;
use parley_client_api::ws::{ClientFrame, ServerFrame};

use crate::harness::{Backend, Server};

crate::on_both_backends!(
    acknowledged_events_survive_kill_9,
    coalesced_acknowledgements_survive_kill_9
);

async fn acknowledged_events_survive_kill_9(backend: Backend) -> Result<()> {
    let mut server = Server::start(backend).await?;
    let alice = server.register("alice").await?;
    let bob = server.register("bob").await?;
    let chat = server.create_chat(&alice, &[&bob]).await?;
    let mut ws = server.connect(&alice).await?;
    ws.until_synced().await?;

    // Keep 32 sends in flight; record every ✓ sent.
    let mut acked: BTreeMap<String, i64> = BTreeMap::new();
    let mut next = 0u32;
    let mut in_flight = 0u32;
    while acked.len() < 300 {
        while in_flight < 32 {
            next += 1;
            ws.send(&ClientFrame::send(
                chat.clone(),
                format!("c{next}"),
                format!("payload {next}").into_bytes(),
            ))
            .await?;
            in_flight += 1;
        }
        if let ServerFrame::Sent { ack } = ws.next().await? {
            in_flight -= 1;
            acked.insert(ack.client_msg_id, ack.seq);
        }
    }
    // Crash with sends still in flight.
    server.crash_and_restart().await?;

    // Every acknowledged send is there once, with its seq; seqs are gap-free.
    let mut stored: Vec<ChatEvent> = Vec::new();
    loop {
        let after = stored.last().map_or(0, |e| e.seq);
        let (_, body) = server
            .get(
                &format!("/v1/chats/{chat}/events?after={after}&limit=500"),
                &bob.token,
            )
            .await?;
        let page: Vec<ChatEvent> = serde_json::from_value(body["events"].clone())?;
        if page.is_empty() {
            break;
        }
        stored.extend(page);
    }
    let seqs: Vec<i64> = stored.iter().map(|e| e.seq).collect();
    ensure!(
        seqs == (1..=stored.len() as i64).collect::<Vec<_>>(),
        "gap in {seqs:?}"
    );
    let mut by_id: BTreeMap<&str, Vec<i64>> = BTreeMap::new();
    for e in &stored {
        by_id
            .entry(e.client_msg_id.as_str())
            .or_default()
            .push(e.seq);
    }
    ensure!(by_id.values().all(|s| s.len() == 1), "a send stored twice");
    for (id, seq) in &acked {
        ensure!(
            by_id.get(id.as_str()) == Some(&vec![*seq]),
            "acked {id} (seq {seq}) lost"
        );
    }

    // Resending an acknowledged id after the restart is answered from storage.
    let (first_id, first_seq) = acked
        .iter()
        .next()
        .map(|(k, v)| (k.clone(), *v))
        .unwrap_or_default();
    let (_, again) = server.send(&alice, &chat, &first_id, b"retry").await?;
    ensure!(
        again["seq"] == first_seq && again["duplicate"] == true,
        "{again}"
    );

    // Bob gets all of them, in order.
    let mut bob_ws = server.connect(&bob).await?;
    let replay = bob_ws.until_synced().await?;
    let got: Vec<i64> = replay
        .iter()
        .filter_map(|f| match f {
            ServerFrame::Event { event, .. } => Some(event.seq),
            _ => None,
        })
        .collect();
    ensure!(got == seqs, "bob's replay differs from the stored events");
    Ok(())
}

/// Acknowledgements of several devices (and several frames of one device) share one
/// transaction per tick. Once the sender sees ✓✓ delivered, that transaction has
/// committed: after a kill -9 nothing acknowledged comes back and the receipts stay.
async fn coalesced_acknowledgements_survive_kill_9(backend: Backend) -> Result<()> {
    let mut server = Server::start(backend).await?;
    let alice = server.register("alice").await?;
    let bob = server.register("bob").await?;
    let carol = server.register("carol").await?;
    let to_bob = server.create_chat(&alice, &[&bob]).await?;
    let to_carol = server.create_chat(&alice, &[&carol]).await?;
    for i in 1..=6 {
        server.send(&alice, &to_bob, &format!("b{i}"), b"x").await?;
        server
            .send(&alice, &to_carol, &format!("c{i}"), b"x")
            .await?;
    }
    let mut alice_ws = server.connect(&alice).await?;
    alice_ws.until_synced().await?;
    let mut bob_ws = server.connect(&bob).await?;
    let mut carol_ws = server.connect(&carol).await?;
    let bob_ids: Vec<i64> = bob_ws
        .until_synced()
        .await?
        .iter()
        .filter_map(ServerFrame::inbox_id)
        .collect();
    let carol_ids: Vec<i64> = carol_ws
        .until_synced()
        .await?
        .iter()
        .filter_map(ServerFrame::inbox_id)
        .collect();
    ensure!(bob_ids.len() == 6 && carol_ids.len() == 6);
    // Bob acknowledges in three frames, Carol in one, all at once.
    for part in bob_ids.chunks(2) {
        bob_ws.ack(part.to_vec()).await?;
    }
    carol_ws.ack(carol_ids).await?;

    // ✓✓ delivered for both chats reaches Alice (only ever pushed after commit).
    let mut delivered: BTreeMap<String, i64> = BTreeMap::new();
    while delivered.values().filter(|&&s| s == 6).count() < 2 {
        if let ServerFrame::Receipt { receipt, .. } = alice_ws.next().await? {
            delivered.insert(receipt.user_id.to_string(), receipt.delivered_seq);
        }
    }
    server.crash_and_restart().await?;

    for (user, chat) in [(&bob, &to_bob), (&carol, &to_carol)] {
        let mut ws = server.connect(user).await?;
        let replay = ws.until_synced().await?;
        ensure!(
            replay.is_empty(),
            "{} gets acknowledged items again: {replay:?}",
            user.user_id
        );
        let (_, body) = server
            .get(&format!("/v1/chats/{chat}/receipts"), &alice.token)
            .await?;
        let theirs = body["receipts"]
            .as_array()
            .and_then(|r| r.iter().find(|r| r["user_id"] == user.user_id.as_str()))
            .cloned()
            .unwrap_or_default();
        ensure!(theirs["delivered_seq"] == 6, "{body}");
    }
    Ok(())
}
