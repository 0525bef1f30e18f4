//! Blocking (spec/messaging.md MS20–MS26) through real homeservers: the blocker's
//! server withholds the blocked user's 1:1 messages, invitations, typing and presence,
//! as the hub and for events arriving over federation; the blocked user is not told;
//! unblocking brings back new messages only.

use anyhow::{Result, ensure};
use parley_client::{ChatId, Error, ErrorCode, Event, MessageState};

use crate::harness::{Backend, Device, Server, drain, eventually, server_history, users};

crate::on_both_backends!(blocking_on_one_server, blocking_across_two_servers);

/// `d` has no message with `text` in `chat`.
async fn lacks(d: &Device, chat: &ChatId, text: &str) -> Result<()> {
    let h = d.history(chat).await?;
    ensure!(
        !h.iter().any(|m| m.body == text),
        "{} has {text:?}",
        d.user()
    );
    Ok(())
}

async fn blocking_on_one_server(backend: Backend) -> Result<()> {
    let server = Server::start(backend).await?;
    let mut alice = server.register("alice").await?;
    let bob = server.register("bob").await?;
    let carol = server.register("carol").await?;
    for d in [&alice, &bob, &carol] {
        d.online().await?;
        d.client.set_present(true);
    }
    let direct = bob.client.create_chat(alice.user()).await?;
    alice.joined(&direct).await?;
    let group = bob
        .client
        .create_group("Both", &users(&[&alice, &carol]))
        .await?;
    alice.joined(&group).await?;
    carol.joined(&group).await?;
    bob.client.send_text(&direct, "before the block").await?;
    alice.received(&direct, "before the block").await?;

    // Bad input: oneself (the SDK and the server refuse it), unblocking a stranger.
    ensure!(matches!(
        alice.client.block(alice.user()).await,
        Err(Error::Invalid(_))
    ));
    let raw = reqwest::Client::new()
        .put(format!("{}/v1/blocks/{}", server.url(), alice.user()))
        .bearer_auth(alice.token().await?)
        .send()
        .await?;
    ensure!(raw.status() == 400, "{}", raw.status());
    ensure!(
        alice
            .client
            .unblock(carol.user())
            .await
            .err()
            .and_then(|e| e.code())
            == Some(ErrorCode::NotFound)
    );

    alice.client.block(bob.user()).await?;
    alice.client.block(bob.user()).await?; // idempotent
    let list = alice.client.blocked().await?;
    ensure!(
        list.len() == 1 && list[0].user_id == *bob.user(),
        "{list:?}"
    );

    // A 1:1 message while blocked: ✓ sent for bob, nothing for alice (her server has
    // no copy for her, in the inbox or in history). Group messages still arrive, so the
    // group's message after it proves it would have arrived by now.
    let withheld = bob.client.send_text(&direct, "while blocked").await?;
    bob.state(&direct, &withheld.id, MessageState::Sent).await?;
    bob.client.send_text(&group, "group after").await?;
    alice.received(&group, "group after").await?;
    lacks(&alice, &direct, "while blocked").await?;
    ensure!(
        !server_history(&server.url(), &alice.token().await?, &direct)
            .await?
            .iter()
            .any(|e| e.client_msg_id == withheld.id),
        "alice's history serves a withheld event"
    );
    let m = bob.client.store().message(&direct, &withheld.id).await?;
    ensure!(m.is_some_and(|m| m.state == MessageState::Sent));

    // An invitation from bob (a new group) never reaches alice.
    let invite = bob
        .client
        .create_group("Invite", &users(&[&alice, &carol]))
        .await?;
    carol.joined(&invite).await?;
    bob.client.send_text(&group, "after the invite").await?;
    alice.received(&group, "after the invite").await?;
    ensure!(
        !alice
            .client
            .store()
            .chat(&invite)
            .await?
            .is_some_and(|c| c.joined),
        "alice joined a group bob invited her to"
    );

    // Typing and presence, both ways.
    drain(&mut alice.events);
    bob.client.typing(&group, true);
    let mut carol_events = carol.client.subscribe();
    eventually("carol sees bob typing", || {
        let got = drain(&mut carol_events).into_iter().any(|e| {
            matches!(e, Event::Typing { ref user_id, typing: true, .. } if user_id == bob.user())
        });
        async move { Ok(got) }
    })
    .await?;
    carol.client.typing(&group, true);
    let mut seen_bob = false;
    eventually("alice sees carol typing", || {
        let events = drain(&mut alice.events);
        seen_bob |= events
            .iter()
            .any(|e| matches!(e, Event::Typing { user_id, .. } if user_id == bob.user()));
        let got = events.iter().any(
            |e| matches!(e, Event::Typing { user_id, typing: true, .. } if user_id == carol.user()),
        );
        async move { Ok(got) }
    })
    .await?;
    ensure!(!seen_bob, "alice saw bob typing");
    let p = alice.client.presence(bob.user()).await?;
    ensure!(p.online.is_none() && p.last_seen.is_none(), "{p:?}");
    let p = bob.client.presence(alice.user()).await?;
    ensure!(p.online.is_none() && p.last_seen.is_none(), "{p:?}");
    ensure!(carol.client.presence(bob.user()).await?.online == Some(true));

    // Unblocked: new messages arrive; the one sent during the block never does.
    alice.client.unblock(bob.user()).await?;
    ensure!(alice.client.blocked().await?.is_empty());
    bob.client.send_text(&direct, "after the unblock").await?;
    alice.received(&direct, "after the unblock").await?;
    lacks(&alice, &direct, "while blocked").await?;
    ensure!(alice.client.presence(bob.user()).await?.online == Some(true));
    Ok(())
}

async fn blocking_across_two_servers(backend: Backend) -> Result<()> {
    let a = Server::start_peer(backend, "127.0.0.2", "").await?;
    let b = Server::start_peer(backend, "127.0.0.3", "").await?;
    let alice = a.register("alice").await?;
    let bob = b.register("bob").await?;
    alice.online().await?;
    bob.online().await?;
    // Hosted on bob's server: alice's server enforces her block on what arrives over
    // federation.
    let remote_hub = bob.client.create_chat(alice.user()).await?;
    alice.joined(&remote_hub).await?;
    let group = bob.client.create_group("Marker", &users(&[&alice])).await?;
    alice.joined(&group).await?;
    bob.client.send_text(&remote_hub, "before").await?;
    alice.received(&remote_hub, "before").await?;

    alice.client.block(bob.user()).await?;
    let m = bob.client.send_text(&remote_hub, "blocked across").await?;
    bob.state(&remote_hub, &m.id, MessageState::Sent).await?;
    bob.client.send_text(&group, "marker").await?;
    alice.received(&group, "marker").await?;
    lacks(&alice, &remote_hub, "blocked across").await?;

    alice.client.unblock(bob.user()).await?;
    bob.client.send_text(&remote_hub, "after").await?;
    alice.received(&remote_hub, "after").await?;
    lacks(&alice, &remote_hub, "blocked across").await?;
    Ok(())
}
