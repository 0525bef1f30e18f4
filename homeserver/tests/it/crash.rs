//! kill -9 while a client is sending: after the restart every acknowledged event is
//! present exactly once, sequence numbers have no gap, and the recipient gets them.

use std::collections::BTreeMap;

use anyhow::{Result, ensure};
use parley_client_api::http::chats::ChatEvent;
use parley_client_api::ws::{ClientFrame, ServerFrame};

use crate::harness::{Backend, Server};

crate::on_both_backends!(acknowledged_events_survive_kill_9);

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
