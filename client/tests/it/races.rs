//! Concurrency: racing commits (the hub accepts one per epoch; the loser catches up
//! and retries), both users creating the chat at once, and sends from both sides at
//! once (one order everywhere, gaps filled from history).

use anyhow::{Result, ensure};
use parley_client::{Event, MessageState};

use crate::harness::{Backend, Server, drain, eventually};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_users_create_the_chat_at_once() -> Result<()> {
    let server = Server::start(Backend::Sqlite).await?;
    let alice = server.register("alice").await?;
    let bob = server.register("bob").await?;
    alice.online().await?;
    bob.online().await?;
    let (a, b) = tokio::join!(
        alice.client.create_chat(bob.user()),
        bob.client.create_chat(alice.user())
    );
    let (a, b) = (a?, b?);
    ensure!(a == b, "two chats: {a} {b}");
    let chat = a;
    alice.joined(&chat).await?;
    bob.joined(&chat).await?;
    // Whoever lost the race is in the winner's group now: messages flow both ways.
    let m = alice.client.send_text(&chat, "one group").await?;
    bob.received(&chat, "one group").await?;
    bob.client.send_text(&chat, "yes, one").await?;
    alice.received(&chat, "yes, one").await?;
    alice.state(&chat, &m.id, MessageState::Delivered).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_devices_adding_the_same_device_at_once() -> Result<()> {
    let server = Server::start(Backend::Sqlite).await?;
    let alice = server.register("alice").await?;
    let bob = server.register("bob").await?;
    let alice2 = server.link("alice", &alice).await?;
    for d in [&alice, &bob, &alice2] {
        d.online().await?;
    }
    let chat = alice.client.create_chat(bob.user()).await?;
    for d in [&alice, &bob, &alice2] {
        d.joined(&chat).await?;
    }
    // A third device of alice, which both her devices trust (as after a link); both add
    // it at the same moment. The hub takes one commit for the epoch; the other gets
    // wrong_epoch, catches up, and finds nothing left to do.
    let alice3 = server.login("alice").await?;
    alice.trust(&alice3).await?;
    alice2.trust(&alice3).await?;
    alice3.online().await?;
    let (x, y) = tokio::join!(
        alice.client.refresh_devices(),
        alice2.client.refresh_devices()
    );
    x?;
    y?;
    alice3.joined(&chat).await?;
    let outbox_empty = |d: &crate::harness::Device| {
        let store = d.client.store().clone();
        move || {
            let store = store.clone();
            async move { Ok(store.outbox_len().await? == 0) }
        }
    };
    eventually("alice's outbox is empty", outbox_empty(&alice)).await?;
    eventually("alice2's outbox is empty", outbox_empty(&alice2)).await?;

    bob.client.send_text(&chat, "to three devices").await?;
    for d in [&alice, &alice2, &alice3] {
        d.received(&chat, "to three devices").await?;
    }
    for (d, text) in [
        (&alice, "from one"),
        (&alice2, "from two"),
        (&alice3, "from three"),
    ] {
        let m = d.client.send_text(&chat, text).await?;
        bob.received(&chat, text).await?;
        d.state(&chat, &m.id, MessageState::Delivered).await?;
    }
    for d in [&alice, &alice2, &alice3] {
        for text in ["from one", "from two", "from three"] {
            if d.history(&chat).await?.iter().all(|m| m.body != text) {
                // Its own message is in its history too; others' must arrive.
                d.received(&chat, text).await?;
            }
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_from_both_sides_at_once_keep_one_order() -> Result<()> {
    let server = Server::start(Backend::Sqlite).await?;
    let mut alice = server.register("alice").await?;
    let mut bob = server.register("bob").await?;
    alice.online().await?;
    bob.online().await?;
    let chat = alice.client.create_chat(bob.user()).await?;
    bob.joined(&chat).await?;
    const N: usize = 25;
    let send_all = |d: &crate::harness::Device, who: &'static str| {
        let client = d.client.clone();
        let chat = chat.clone();
        async move {
            for i in 0..N {
                client.send_text(&chat, &format!("{who} {i}")).await?;
                if i % 5 == 0 {
                    tokio::task::yield_now().await;
                }
            }
            anyhow::Ok(())
        }
    };
    let (x, y) = tokio::join!(send_all(&alice, "alice"), send_all(&bob, "bob"));
    x?;
    y?;
    for d in [&alice, &bob] {
        eventually("every message is sent and received", || async {
            let h = d.history(&chat).await?;
            Ok(h.len() == 2 * N && h.iter().all(|m| m.seq.is_some()))
        })
        .await?;
    }
    // The same order (by seq) on both sides, each seq once.
    let order = |h: Vec<parley_client::Message>| -> Vec<(i64, String)> {
        h.into_iter()
            .map(|m| (m.seq.unwrap_or(0), m.body))
            .collect()
    };
    let a = order(alice.history(&chat).await?);
    let b = order(bob.history(&chat).await?);
    ensure!(a == b, "orders differ:\n{a:?}\n{b:?}");
    let mut seqs: Vec<i64> = a.iter().map(|(s, _)| *s).collect();
    seqs.dedup();
    ensure!(seqs.len() == 2 * N);
    // Each side's own messages keep their order.
    for who in ["alice", "bob"] {
        let mine: Vec<&String> = a
            .iter()
            .map(|(_, t)| t)
            .filter(|t| t.starts_with(who))
            .collect();
        let want: Vec<String> = (0..N).map(|i| format!("{who} {i}")).collect();
        ensure!(
            mine.iter()
                .map(|s| s.as_str())
                .eq(want.iter().map(String::as_str))
        );
    }
    for d in [&mut alice, &mut bob] {
        let bad = drain(&mut d.events)
            .into_iter()
            .filter(|e| matches!(e, Event::Undecryptable { .. }))
            .count();
        ensure!(bad == 0, "{bad} undecryptable events");
    }
    Ok(())
}
