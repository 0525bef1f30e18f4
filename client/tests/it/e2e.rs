//! End to end through a real homeserver process: two users, three devices.

use anyhow::{Result, ensure};
use parley_client::{Event, MessageState};

use crate::harness::{Backend, Server, drain, eventually, server_history};

crate::on_both_backends!(
    two_users_three_devices,
    offline_sends_go_out_once_on_reconnect,
    a_restarted_client_keeps_history_and_keys
);

async fn two_users_three_devices(backend: Backend) -> Result<()> {
    let server = Server::start(backend).await?;
    let mut alice = server.register("alice").await?;
    let bob = server.register("bob").await?;
    alice.online().await?;
    bob.online().await?;

    // A 1:1 chat is an MLS group; bob joins from the Welcome.
    let chat = alice.client.create_chat(bob.user()).await?;
    bob.joined(&chat).await?;
    alice.joined(&chat).await?;
    drain(&mut alice.events);

    // Ticks: pending at once, then ✓ sent, ✓✓ delivered (bob's device acked), read.
    let msg = alice.client.send_text(&chat, "hello bob").await?;
    ensure!(msg.state == MessageState::Pending);
    let got = bob.received(&chat, "hello bob").await?;
    ensure!(got.sender == *alice.user() && !got.outgoing);
    alice.state(&chat, &msg.id, MessageState::Delivered).await?;
    bob.client.mark_read(&chat).await?;
    alice.state(&chat, &msg.id, MessageState::Read).await?;
    let states: Vec<MessageState> = drain(&mut alice.events)
        .into_iter()
        .filter_map(|e| match e {
            Event::MessageStateChanged { id, state, .. } if id == msg.id => Some(state),
            _ => None,
        })
        .collect();
    // Normally ✓, ✓✓, read; a receipt may overtake the server's ack, never go back.
    ensure!(
        states.windows(2).all(|w| w[0] < w[1])
            && states.ends_with(&[MessageState::Delivered, MessageState::Read]),
        "ticks went {states:?}"
    );

    // Bob answers.
    bob.client.send_text(&chat, "hi alice").await?;
    alice.received(&chat, "hi alice").await?;

    // Alice logs in a second device; her first device adds it to the chat.
    let alice2 = server.link("alice", &alice).await?;
    alice2.online().await?;
    alice.client.refresh_devices().await?;
    alice2.joined(&chat).await?;

    // From then on every message decrypts on every other device.
    bob.client.send_text(&chat, "to both of you").await?;
    alice.received(&chat, "to both of you").await?;
    alice2.received(&chat, "to both of you").await?;
    let m = alice2.client.send_text(&chat, "from my phone").await?;
    bob.received(&chat, "from my phone").await?;
    let seen = alice.received(&chat, "from my phone").await?;
    ensure!(seen.sender == *alice.user() && seen.sender_device == *alice2.client.device_id());
    alice2.state(&chat, &m.id, MessageState::Delivered).await?;
    let m = alice.client.send_text(&chat, "from my laptop").await?;
    bob.received(&chat, "from my laptop").await?;
    alice2.received(&chat, "from my laptop").await?;
    alice.state(&chat, &m.id, MessageState::Delivered).await?;

    // The new device sees nothing from before it joined, and nothing failed elsewhere.
    let h2 = alice2.history(&chat).await?;
    ensure!(!h2.iter().any(|m| m.body == "hello bob"), "{h2:?}");
    for d in [&alice, &bob] {
        let h = d.history(&chat).await?;
        ensure!(h.iter().all(|m| m.state != MessageState::Failed), "{h:?}");
    }
    // Bob's device count in the group: alice ×2 + bob.
    let undecryptable = drain(&mut alice.events)
        .into_iter()
        .filter(|e| matches!(e, Event::Undecryptable { .. }))
        .count();
    ensure!(undecryptable == 0);
    Ok(())
}

async fn offline_sends_go_out_once_on_reconnect(backend: Backend) -> Result<()> {
    let mut server = Server::start(backend).await?;
    let alice = server.register("alice").await?;
    let bob = server.register("bob").await?;
    alice.online().await?;
    bob.online().await?;
    let chat = alice.client.create_chat(bob.user()).await?;
    bob.joined(&chat).await?;

    // 1. The client is offline: the message waits, pending.
    server.proxy.set_offline(true);
    let mut state = alice.client.connection();
    eventually("alice notices she is offline", || {
        let s = *state.borrow_and_update();
        async move { Ok(s == parley_client::ConnectionState::Offline) }
    })
    .await?;
    let m1 = alice.client.send_text(&chat, "sent while offline").await?;
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    let stored = alice.client.store().message(&chat, &m1.id).await?;
    ensure!(stored.is_some_and(|m| m.state == MessageState::Pending));
    ensure!(alice.client.store().outbox_len().await? == 1);
    server.proxy.set_offline(false);
    alice.state(&chat, &m1.id, MessageState::Delivered).await?;
    bob.received(&chat, "sent while offline").await?;

    // 2. The server is down: pending again, then sent once it is back.
    server.stop().await?;
    let m2 = alice
        .client
        .send_text(&chat, "sent while the server was down")
        .await?;
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    let stored = alice.client.store().message(&chat, &m2.id).await?;
    ensure!(stored.is_some_and(|m| m.state == MessageState::Pending));
    server.restart().await?;
    alice.state(&chat, &m2.id, MessageState::Delivered).await?;
    bob.received(&chat, "sent while the server was down")
        .await?;

    // 3. The server committed the send but its answer was lost: the resend (same
    //    client_msg_id) is deduplicated by the server.
    server.proxy.set_mute_down(true);
    let m3 = alice.client.send_text(&chat, "answer lost").await?;
    // Raw checks go around the proxy.
    let base = format!("http://{}", server.process.addr());
    let token = bob.token().await?;
    eventually("the server stored the send", || {
        let (base, token, chat, id) = (base.clone(), token.clone(), chat.clone(), m3.id.clone());
        async move {
            Ok(server_history(&base, &token, &chat)
                .await
                .unwrap_or_default()
                .iter()
                .any(|e| e.client_msg_id == id))
        }
    })
    .await?;
    server.proxy.set_offline(true);
    server.proxy.set_mute_down(false);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    ensure!(
        alice
            .client
            .store()
            .message(&chat, &m3.id)
            .await?
            .is_some_and(|m| m.state == MessageState::Pending)
    );
    server.proxy.set_offline(false);
    alice.state(&chat, &m3.id, MessageState::Delivered).await?;
    bob.received(&chat, "answer lost").await?;

    // Exactly once: on the server and in bob's history.
    let base = format!("http://{}", server.process.addr());
    let events = server_history(&base, &bob.token().await?, &chat).await?;
    for m in [&m1, &m2, &m3] {
        let n = events.iter().filter(|e| e.client_msg_id == m.id).count();
        ensure!(n == 1, "{} stored {n} times", m.body);
        let n = bob
            .history(&chat)
            .await?
            .iter()
            .filter(|x| x.body == m.body)
            .count();
        ensure!(n == 1, "bob has {:?} {n} times", m.body);
    }
    ensure!(alice.client.store().outbox_len().await? == 0);
    Ok(())
}

async fn a_restarted_client_keeps_history_and_keys(backend: Backend) -> Result<()> {
    let server = Server::start(backend).await?;
    let alice = server.register("alice").await?;
    let bob = server.register("bob").await?;
    alice.online().await?;
    bob.online().await?;
    let chat = alice.client.create_chat(bob.user()).await?;
    bob.joined(&chat).await?;
    let m = alice.client.send_text(&chat, "before the restart").await?;
    bob.received(&chat, "before the restart").await?;
    alice.state(&chat, &m.id, MessageState::Delivered).await?;

    // Bob's client stops; alice writes meanwhile; bob's client comes back from disk.
    let bob = bob.restart().await?;
    let h = bob.history(&chat).await?;
    ensure!(h.iter().any(|m| m.body == "before the restart"), "{h:?}");
    let found = bob.client.search("BEFORE the", None).await?;
    ensure!(found.len() == 1, "{found:?}");
    alice.client.send_text(&chat, "while bob was away").await?;
    bob.online().await?;
    bob.received(&chat, "while bob was away").await?;

    // Alice restarts too, and both still encrypt to each other.
    let alice = alice.restart().await?;
    alice.online().await?;
    ensure!(alice.history(&chat).await?.len() == 2);
    bob.client.send_text(&chat, "after both restarts").await?;
    alice.received(&chat, "after both restarts").await?;
    let m = alice.client.send_text(&chat, "still here").await?;
    bob.received(&chat, "still here").await?;
    alice.state(&chat, &m.id, MessageState::Delivered).await?;
    Ok(())
}
