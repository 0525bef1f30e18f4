//! Group chats: creation with several devices per member, one order everywhere,
//! adding (no earlier plaintexts) and removing (nothing after) members, admin-only
//! changes, leaving, concurrent commits by two admins, a member offline for several
//! epochs, "delivered to N of M / read by N of M", and a larger group.

use std::time::Instant;

use anyhow::{Result, bail, ensure};
use parley_client::{Error, Event, MessageState, UserId};

use crate::harness::{
    Backend, Device, Server, drain, eventually, not_joined, same_epoch, same_order, users,
};

crate::on_both_backends!(
    a_group_of_four_reads_the_same_messages_in_the_same_order,
    adding_removing_and_leaving,
    two_admins_committing_at_once_end_on_one_epoch,
    a_member_offline_for_several_epochs_catches_up,
    a_group_of_fifty,
    leaving_is_a_proposal_that_the_next_sender_commits,
);

async fn a_group_of_four_reads_the_same_messages_in_the_same_order(backend: Backend) -> Result<()> {
    let server = Server::start(backend).await?;
    let alice = server.register("alice").await?;
    let bob = server.register("bob").await?;
    let carol = server.register("carol").await?;
    let dave = server.register("dave").await?;
    let dave2 = server.link("dave", &dave).await?;
    let all = [&alice, &bob, &carol, &dave, &dave2];
    for d in all {
        d.online().await?;
    }
    let chat = alice
        .client
        .create_group("Team", &users(&[&bob, &carol, &dave]))
        .await?;
    for d in all {
        d.joined(&chat).await?;
    }
    let members = alice.client.members(&chat).await?;
    ensure!(members.members.len() == 4, "{members:?}");
    ensure!(
        members
            .members
            .iter()
            .all(|m| m.admin == (m.user_id == *alice.user())),
        "{members:?}"
    );
    let dave_row = members.members.iter().find(|m| m.user_id == *dave.user());
    ensure!(dave_row.is_some_and(|m| m.devices == 2), "{members:?}");

    // Everyone writes, at once.
    let texts = [
        "from alice",
        "from bob",
        "from carol",
        "from dave",
        "from dave2",
    ];
    let sends = all
        .iter()
        .zip(texts)
        .map(|(d, t)| d.client.send_text(&chat, t));
    for r in futures_util::future::join_all(sends).await {
        r?;
    }
    same_order(&chat, &all, &texts).await?;
    same_epoch(&chat, &all).await?;

    // Receipts: alice's message has 3 recipients (bob, carol, dave).
    let m = alice.client.send_text(&chat, "count me").await?;
    for d in [&bob, &carol, &dave] {
        d.received(&chat, "count me").await?;
    }
    alice.state(&chat, &m.id, MessageState::Delivered).await?;
    let summary = alice
        .client
        .receipt_summary(&chat, &m.id)
        .await?
        .ok_or_else(|| anyhow::anyhow!("no summary"))?;
    ensure!(
        summary.total == 3 && summary.delivered == 3 && summary.read == 0,
        "{summary:?}"
    );
    ensure!(summary.line() == "delivered to 3 of 3 · read by 0 of 3");
    bob.client.mark_read(&chat).await?;
    carol.client.mark_read(&chat).await?;
    eventually("read by 2 of 3", || async {
        let s = alice.client.receipt_summary(&chat, &m.id).await?;
        Ok(s.is_some_and(|s| s.read == 2 && s.total == 3))
    })
    .await?;
    let s = alice.client.receipt_summary(&chat, &m.id).await?.unwrap();
    let unread: Vec<&UserId> = s
        .members
        .iter()
        .filter(|r| !r.read)
        .map(|r| &r.user_id)
        .collect();
    ensure!(unread == [dave.user()], "{s:?}");
    ensure!(
        alice
            .client
            .store()
            .message(&chat, &m.id)
            .await?
            .unwrap()
            .state
            == MessageState::Delivered
    );
    dave2.client.mark_read(&chat).await?;
    alice.state(&chat, &m.id, MessageState::Read).await?;
    // Another member's view of the same message, from the server's receipt rows.
    bob.client.refresh_receipts(&chat).await?;
    let on_bob = bob.client.receipt_summary(&chat, &m.id).await?.unwrap();
    ensure!(on_bob.total == 3 && on_bob.read == 3, "{on_bob:?}");
    Ok(())
}

async fn adding_removing_and_leaving(backend: Backend) -> Result<()> {
    let server = Server::start(backend).await?;
    let alice = server.register("alice").await?;
    let bob = server.register("bob").await?;
    let carol = server.register("carol").await?;
    let dave = server.register("dave").await?;
    let mut erin = server.register("erin").await?;
    for d in [&alice, &bob, &carol, &dave, &erin] {
        d.online().await?;
    }
    let chat = alice
        .client
        .create_group("Team", &users(&[&bob, &carol]))
        .await?;
    for d in [&bob, &carol] {
        d.joined(&chat).await?;
    }
    alice.client.send_text(&chat, "before dave").await?;
    bob.client.send_text(&chat, "also before dave").await?;
    same_order(
        &chat,
        &[&alice, &bob, &carol],
        &["before dave", "also before dave"],
    )
    .await?;

    // A non-admin cannot add or remove: a typed error, nothing changes.
    match bob.client.remove_members(&chat, &users(&[&carol])).await {
        Err(Error::NotAdmin(_)) => {}
        other => bail!("bob's remove: {other:?}"),
    }
    match bob.client.add_members(&chat, &users(&[&erin])).await {
        Err(Error::NotAdmin(_)) => {}
        other => bail!("bob's add: {other:?}"),
    }
    ensure!(
        drain(&mut erin.events)
            .iter()
            .all(|e| !matches!(e, Event::ChatJoined { .. }))
    );
    ensure!(alice.client.members(&chat).await?.members.len() == 3);
    match bob.client.rename(&chat, "Bob's").await {
        Err(Error::NotAdmin(_)) => {}
        other => bail!("bob's rename: {other:?}"),
    }

    // Add dave: he reads what comes after, nothing before.
    alice.client.add_members(&chat, &users(&[&dave])).await?;
    dave.joined(&chat).await?;
    alice.client.send_text(&chat, "after dave").await?;
    same_order(&chat, &[&alice, &bob, &carol, &dave], &["after dave"]).await?;
    let on_dave: Vec<String> = dave
        .history(&chat)
        .await?
        .into_iter()
        .map(|m| m.body)
        .collect();
    ensure!(on_dave == ["after dave"], "{on_dave:?}");

    // Remove carol: her device leaves the group, reads nothing after, cannot send.
    alice
        .client
        .remove_members(&chat, &users(&[&carol]))
        .await?;
    not_joined(&carol, &chat).await?;
    ensure!(carol.client.epoch(&chat).await?.is_none());
    alice.client.send_text(&chat, "after carol").await?;
    same_order(&chat, &[&alice, &bob, &dave], &["after carol"]).await?;
    match carol.client.send_text(&chat, "still here?").await {
        Err(Error::NotJoined(_)) => {}
        other => bail!("carol's send: {other:?}"),
    }
    // Even a send made with the server's API directly is refused.
    let token = carol.token().await?;
    let resp = reqwest::Client::new()
        .post(format!("{}/v1/chats/{chat}/events", server.url()))
        .bearer_auth(token)
        .json(&serde_json::json!({"client_msg_id": "x1", "payload": "aGk="}))
        .send()
        .await?;
    ensure!(resp.status() == 403, "{}", resp.status());
    let body: serde_json::Value = resp.json().await?;
    ensure!(body["error"] == "not_member", "{body}");
    let carol_history: Vec<String> = carol
        .history(&chat)
        .await?
        .into_iter()
        .map(|m| m.body)
        .collect();
    ensure!(
        !carol_history.iter().any(|t| t == "after carol"),
        "{carol_history:?}"
    );
    // The events after her removal reached her device not at all, or undecryptably.
    let seq_after = alice
        .history(&chat)
        .await?
        .into_iter()
        .find(|m| m.body == "after carol")
        .and_then(|m| m.seq)
        .unwrap_or(0);
    ensure!(
        carol
            .history(&chat)
            .await?
            .iter()
            .all(|m| m.seq.unwrap_or(0) < seq_after)
    );

    // Rename, promote bob; bob may now remove dave.
    alice.client.rename(&chat, "Team 2").await?;
    alice.client.set_admin(&chat, bob.user(), true).await?;
    let roles = bob.client.members(&chat).await?;
    ensure!(
        roles.members.iter().filter(|m| m.admin).count() == 2,
        "{roles:?}"
    );
    bob.client.refresh_chats().await?;
    let info = bob.client.store().chat(&chat).await?.unwrap();
    ensure!(
        info.is_group && info.name.as_deref() == Some("Team 2"),
        "{info:?}"
    );

    // Dave leaves (not an admin: allowed). His device forgets the group; the others go
    // on without him, and a remaining member removes his leaf.
    dave.client.leave(&chat).await?;
    not_joined(&dave, &chat).await?;
    let names: Vec<UserId> = alice
        .client
        .members(&chat)
        .await?
        .members
        .into_iter()
        .map(|m| m.user_id)
        .collect();
    ensure!(names == users(&[&alice, &bob]), "{names:?}");
    eventually("dave's leaf is removed", || async {
        let m = alice.client.members(&chat).await?;
        Ok(m.members.iter().map(|m| m.devices).sum::<usize>() == 2)
    })
    .await?;
    same_epoch(&chat, &[&alice, &bob]).await?;
    bob.client.send_text(&chat, "after dave left").await?;
    alice.received(&chat, "after dave left").await?;
    ensure!(
        !dave
            .history(&chat)
            .await?
            .iter()
            .any(|m| m.body == "after dave left")
    );
    let info = alice.client.store().chat(&chat).await?.unwrap();
    ensure!(info.members == users(&[&alice, &bob]), "{info:?}");
    Ok(())
}

async fn two_admins_committing_at_once_end_on_one_epoch(backend: Backend) -> Result<()> {
    let server = Server::start(backend).await?;
    let alice = server.register("alice").await?;
    let bob = server.register("bob").await?;
    let carol = server.register("carol").await?;
    let dave = server.register("dave").await?;
    let erin = server.register("erin").await?;
    let frank = server.register("frank").await?;
    let carol2 = server.register("carol2").await?;
    let grace = server.register("grace").await?;
    for d in [&alice, &bob, &carol, &dave, &erin, &frank, &carol2, &grace] {
        d.online().await?;
    }
    let chat = alice
        .client
        .create_group("Race", &users(&[&bob, &carol]))
        .await?;
    for d in [&bob, &carol] {
        d.joined(&chat).await?;
    }
    alice.client.set_admin(&chat, bob.user(), true).await?;
    bob.joined(&chat).await?;
    // Round 1, made certain: bob's device is offline while alice adds dave, so bob
    // commits (adding erin) in the epoch alice's commit already took. The hub refuses it
    // (wrong_epoch); bob's SDK processes alice's commit, re-bases and retries.
    let bob = bob.restart().await?;
    alice.client.add_members(&chat, &users(&[&dave])).await?;
    let refused = refused_sends(&server).await?;
    bob.client.add_members(&chat, &users(&[&erin])).await?;
    ensure!(
        refused_sends(&server).await? > refused,
        "bob's stale commit was not refused"
    );
    bob.online().await?;
    let now = [&alice, &bob, &carol, &dave, &erin];
    for d in now {
        d.joined(&chat).await?;
    }
    same_epoch(&chat, &now).await?;
    // Round 2: both add someone else at once. One commit wins the epoch; the other is
    // refused (wrong_epoch), re-based on the winner and retried by the SDK.
    let (add_grace, add_carol2) = (users(&[&grace]), users(&[&carol2]));
    let (x, y) = tokio::join!(
        alice.client.add_members(&chat, &add_grace),
        bob.client.add_members(&chat, &add_carol2)
    );
    x?;
    y?;
    // Round 3: both add the same user: the loser finds nothing left to do.
    let add_frank = users(&[&frank]);
    let (x, y) = tokio::join!(
        alice.client.add_members(&chat, &add_frank),
        bob.client.add_members(&chat, &add_frank)
    );
    x?;
    y?;
    let everyone = [&alice, &bob, &carol, &dave, &erin, &frank, &carol2, &grace];
    for d in everyone {
        d.joined(&chat).await?;
    }
    let epoch = same_epoch(&chat, &everyone).await?;
    let hub = alice.client.members(&chat).await?;
    ensure!(
        hub.hub_epoch == epoch && hub.members.len() == 8,
        "{hub:?} vs {epoch}"
    );
    carol.client.send_text(&chat, "all on one epoch").await?;
    same_order(&chat, &everyone, &["all on one epoch"]).await?;
    for d in everyone {
        let bad = d
            .history(&chat)
            .await?
            .iter()
            .filter(|m| m.kind == "invalid")
            .count();
        ensure!(bad == 0);
    }
    Ok(())
}

async fn a_member_offline_for_several_epochs_catches_up(backend: Backend) -> Result<()> {
    let server = Server::start(backend).await?;
    let alice = server.register("alice").await?;
    let bob = server.register("bob").await?;
    let carol = server.register("carol").await?;
    let dave = server.register("dave").await?;
    let erin = server.register("erin").await?;
    for d in [&alice, &bob, &carol, &dave, &erin] {
        d.online().await?;
    }
    let chat = alice
        .client
        .create_group("Later", &users(&[&bob, &carol]))
        .await?;
    carol.joined(&chat).await?;
    bob.joined(&chat).await?;
    // Carol goes offline; several commits and messages happen meanwhile.
    let Device { client, dir, .. } = carol;
    client.shutdown().await;
    let start_epoch = alice.client.epoch(&chat).await?.unwrap_or(0);
    alice.client.send_text(&chat, "m1").await?;
    alice.client.add_members(&chat, &users(&[&dave])).await?;
    alice.client.send_text(&chat, "m2").await?;
    alice.client.add_members(&chat, &users(&[&erin])).await?;
    bob.client.send_text(&chat, "m3").await?;
    alice.client.remove_members(&chat, &users(&[&dave])).await?;
    alice.client.send_text(&chat, "m4").await?;
    let end_epoch = alice.client.epoch(&chat).await?.unwrap_or(0);
    ensure!(end_epoch >= start_epoch + 3);
    let carol = Device::new(
        parley_client::Client::open(crate::harness::config(dir.path())).await?,
        dir,
    );
    carol.online().await?;
    same_order(&chat, &[&alice, &bob, &carol], &["m1", "m2", "m3", "m4"]).await?;
    same_epoch(&chat, &[&alice, &bob, &carol, &erin]).await?;
    carol.client.send_text(&chat, "back").await?;
    same_order(&chat, &[&alice, &bob, &erin], &["back"]).await?;
    Ok(())
}

async fn a_group_of_fifty(backend: Backend) -> Result<()> {
    const N: usize = 50;
    let server = Server::start(backend).await?;
    let mut ds = Vec::new();
    for i in 0..N {
        let d = server.register(&format!("user{i:02}")).await?;
        d.online().await?;
        ds.push(d);
    }
    let others: Vec<UserId> = ds[1..].iter().map(|d| d.user().clone()).collect();
    let t = Instant::now();
    let chat = ds[0].client.create_group("Fifty", &others).await?;
    let created = t.elapsed();
    for d in &ds {
        d.joined(&chat).await?;
    }
    let joined = t.elapsed();
    let t = Instant::now();
    let m = ds[0].client.send_text(&chat, "hello fifty").await?;
    for d in &ds[1..] {
        d.received(&chat, "hello fifty").await?;
    }
    let fanned = t.elapsed();
    ds[0].state(&chat, &m.id, MessageState::Delivered).await?;
    let delivered = t.elapsed();
    let s = ds[0].client.receipt_summary(&chat, &m.id).await?.unwrap();
    ensure!(s.total == N - 1 && s.delivered == N - 1, "{s:?}");
    let t = Instant::now();
    let late = server.register("late").await?;
    late.online().await?;
    ds[0]
        .client
        .add_members(&chat, &[late.user().clone()])
        .await?;
    late.joined(&chat).await?;
    let added = t.elapsed();
    eprintln!(
        "group of {N}: create commit accepted {created:?}, all joined {joined:?}; \
         one message at every member {fanned:?}, ✓✓ delivered to all {delivered:?}; \
         add one member (claim → joined) {added:?}"
    );
    Ok(())
}

async fn leaving_is_a_proposal_that_the_next_sender_commits(backend: Backend) -> Result<()> {
    let server = Server::start(backend).await?;
    let alice = server.register("alice").await?;
    let bob = server.register("bob").await?;
    let carol = server.register("carol").await?;
    let carol2 = server.link("carol", &carol).await?;
    let dave = server.register("dave").await?;
    for d in [&alice, &bob, &carol, &carol2, &dave] {
        d.online().await?;
    }
    let chat = alice
        .client
        .create_group("Leavers", &users(&[&bob, &carol, &dave]))
        .await?;
    for d in [&bob, &carol, &carol2, &dave] {
        d.joined(&chat).await?;
    }
    let before = same_epoch(&chat, &[&alice, &bob, &carol, &carol2, &dave]).await?;
    // Alice, whose device would commit the departure at once, is offline.
    let alice_id = alice.user().clone();
    let Device { client, dir, .. } = alice;
    client.shutdown().await;

    // Carol leaves from one device: a proposal, which the hub applies at once. Both her
    // devices forget the group; the hub refuses her sends; the epoch has not moved.
    carol.client.leave(&chat).await?;
    not_joined(&carol, &chat).await?;
    not_joined(&carol2, &chat).await?;
    let hub = bob.client.members(&chat).await?;
    ensure!(
        hub.members.iter().map(|m| &m.user_id).collect::<Vec<_>>()
            == [&alice_id, bob.user(), dave.user()]
            && hub.hub_epoch == before,
        "{hub:?}"
    );
    let resp = reqwest::Client::new()
        .post(format!("{}/v1/chats/{chat}/events", server.url()))
        .bearer_auth(carol2.token().await?)
        .json(&serde_json::json!({"client_msg_id": "x1", "payload": "aGk="}))
        .send()
        .await?;
    ensure!(resp.status() == 403, "{}", resp.status());
    match carol.client.send_text(&chat, "still here?").await {
        Err(Error::NotJoined(_)) => {}
        other => bail!("carol's send: {other:?}"),
    }

    // Bob sends next: MLS lets nobody send with a proposal pending, so his device
    // commits carol's removal (both her leaves) first, then sends in the new epoch.
    bob.client.send_text(&chat, "after carol").await?;
    dave.received(&chat, "after carol").await?;
    let after = same_epoch(&chat, &[&bob, &dave]).await?;
    ensure!(after == before + 1, "{before} → {after}");
    let leaves = bob.client.members(&chat).await?;
    ensure!(
        leaves.members.iter().map(|m| m.devices).sum::<usize>() == 3,
        "{leaves:?}"
    );
    for c in [&carol, &carol2] {
        ensure!(
            !c.history(&chat)
                .await?
                .iter()
                .any(|m| m.body == "after carol")
        );
    }

    // Alice comes back, catches up (proposal, commit, message) and talks with the rest.
    let alice = Device::new(
        parley_client::Client::open(crate::harness::config(dir.path())).await?,
        dir,
    );
    alice.online().await?;
    alice.received(&chat, "after carol").await?;
    same_epoch(&chat, &[&alice, &bob, &dave]).await?;
    alice.client.send_text(&chat, "welcome back").await?;
    same_order(
        &chat,
        &[&alice, &bob, &dave],
        &["after carol", "welcome back"],
    )
    .await?;
    Ok(())
}

/// The hub's count of refused sends (`wrong_epoch` among them), from `/metrics`.
async fn refused_sends(server: &Server) -> Result<u64> {
    let text = reqwest::get(format!("{}/metrics", server.url()))
        .await?
        .text()
        .await?;
    text.lines()
        .find_map(|l| l.strip_prefix("parley_sends_refused_total "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as u64)
        .ok_or_else(|| anyhow::anyhow!("no parley_sends_refused_total in /metrics"))
}
