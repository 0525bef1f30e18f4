//! Users on three federated homeservers (127.0.0.2, .3, .4) through the real SDK and
//! real MLS: a 1:1 across servers, a group spanning all three (hub order on every
//! device, a remote member added, removed and leaving, "delivered to N of M"), a follower
//! stopped and restarted mid-conversation, and a send the hub takes only after it comes
//! back (✓ sent with its seq, late) or refuses (failed).

use anyhow::{Context, Result, ensure};
use parley_client::{ChatId, MessageState};

use crate::harness::{
    Backend, Device, Server, eventually, not_joined, same_epoch, same_order, users,
};

crate::on_both_backends!(
    a_direct_chat_and_a_group_across_three_servers,
    a_server_stopped_mid_conversation_loses_nothing,
    a_send_while_the_hub_is_down_is_sent_late,
);

/// Three federating servers and one user on each.
async fn three(backend: Backend) -> Result<([Server; 3], [Device; 3])> {
    let a = Server::start_peer(backend, "127.0.0.2", "").await?;
    let b = Server::start_peer(backend, "127.0.0.3", "").await?;
    let c = Server::start_peer(backend, "127.0.0.4", "").await?;
    let alice = a.register("alice").await?;
    let bob = b.register("bob").await?;
    let carol = c.register("carol").await?;
    for d in [&alice, &bob, &carol] {
        d.online().await?;
    }
    Ok(([a, b, c], [alice, bob, carol]))
}

/// The receipt line of an own message once `want` holds.
async fn summary_line(d: &Device, chat: &ChatId, id: &str, want: &str) -> Result<()> {
    eventually(&format!("{id} is {want:?}"), || async {
        d.client.refresh_receipts(chat).await?;
        Ok(d.client
            .receipt_summary(chat, id)
            .await?
            .is_some_and(|s| s.line() == want))
    })
    .await
}

async fn a_direct_chat_and_a_group_across_three_servers(backend: Backend) -> Result<()> {
    let ([a, b, c], [alice, bob, carol]) = three(backend).await?;
    ensure!(alice.user().server_name() == a.name() && bob.user().server_name() == b.name());

    // 1:1 across servers: alice's server is the hub, bob's follows.
    let direct = alice.client.create_chat(bob.user()).await?;
    ensure!(direct.hub() == a.name(), "{direct}");
    bob.joined(&direct).await?;
    let m = alice.client.send_text(&direct, "hello bob").await?;
    bob.received(&direct, "hello bob").await?;
    alice.state(&direct, &m.id, MessageState::Delivered).await?;
    let r = bob.client.send_text(&direct, "hi alice, from B").await?;
    alice.received(&direct, "hi alice, from B").await?;
    bob.state(&direct, &r.id, MessageState::Delivered).await?;
    bob.client.mark_read(&direct).await?;
    alice.state(&direct, &m.id, MessageState::Read).await?;

    // A group on all three servers, created by bob: B is its hub.
    let group = bob
        .client
        .create_group("Three servers", &users(&[&alice, &carol]))
        .await?;
    ensure!(group.hub() == b.name(), "{group}");
    for d in [&alice, &carol] {
        d.joined(&group).await?;
    }
    let all = [&alice, &bob, &carol];
    let texts = ["from A", "from B", "from C"];
    let sends = all
        .iter()
        .zip(texts)
        .map(|(d, t)| d.client.send_text(&group, t));
    for s in futures_util::future::join_all(sends).await {
        s?;
    }
    same_order(&group, &all, &texts).await?;
    same_epoch(&group, &all).await?;

    // Receipts across servers: delivered to 2 of 2, then read by 2 of 2.
    let m = carol.client.send_text(&group, "count me").await?;
    alice.received(&group, "count me").await?;
    bob.received(&group, "count me").await?;
    carol.state(&group, &m.id, MessageState::Delivered).await?;
    summary_line(
        &carol,
        &group,
        &m.id,
        "delivered to 2 of 2 · read by 0 of 2",
    )
    .await?;
    alice.client.mark_read(&group).await?;
    bob.client.mark_read(&group).await?;
    carol.state(&group, &m.id, MessageState::Read).await?;
    summary_line(
        &carol,
        &group,
        &m.id,
        "delivered to 2 of 2 · read by 2 of 2",
    )
    .await?;

    // Add a second remote member (dave on C): he reads what follows, nothing before.
    let dave = c.register("dave").await?;
    dave.online().await?;
    bob.client.add_members(&group, &users(&[&dave])).await?;
    dave.joined(&group).await?;
    alice.client.send_text(&group, "welcome dave").await?;
    let four = [&alice, &bob, &carol, &dave];
    same_order(&group, &four, &["welcome dave"]).await?;
    let on_dave: Vec<String> = dave
        .history(&group)
        .await?
        .into_iter()
        .map(|m| m.body)
        .collect();
    ensure!(on_dave == ["welcome dave"], "{on_dave:?}");

    // Remove a remote member (alice on A): her device leaves; nothing after reaches her.
    bob.client.remove_members(&group, &users(&[&alice])).await?;
    not_joined(&alice, &group).await?;
    let m = dave.client.send_text(&group, "after alice").await?;
    same_order(&group, &[&bob, &carol, &dave], &["after alice"]).await?;
    ensure!(
        !alice
            .history(&group)
            .await?
            .iter()
            .any(|m| m.body == "after alice")
    );
    dave.state(&group, &m.id, MessageState::Delivered).await?;
    summary_line(&dave, &group, &m.id, "delivered to 2 of 2 · read by 0 of 2").await?;
    // Alice's server no longer lists her in the group.
    let members = bob.client.members(&group).await?;
    ensure!(
        !members.members.iter().any(|m| m.user_id == *alice.user()),
        "{members:?}"
    );

    // A remote member leaves by herself (carol, on C): the hub drops her, a remaining
    // member commits her leaf's removal, and the others go on without her.
    carol.client.leave(&group).await?;
    not_joined(&carol, &group).await?;
    dave.client.send_text(&group, "after carol").await?;
    same_order(&group, &[&bob, &dave], &["after carol"]).await?;
    same_epoch(&group, &[&bob, &dave]).await?;
    ensure!(
        !carol
            .history(&group)
            .await?
            .iter()
            .any(|m| m.body == "after carol")
    );
    let left: Vec<_> = bob.client.members(&group).await?.members;
    ensure!(
        left.iter().map(|m| &m.user_id).collect::<Vec<_>>() == [bob.user(), dave.user()],
        "{left:?}"
    );
    Ok(())
}

async fn a_server_stopped_mid_conversation_loses_nothing(backend: Backend) -> Result<()> {
    let ([_a, _b, mut c], [alice, bob, carol]) = three(backend).await?;
    let group = alice
        .client
        .create_group("Restart", &users(&[&bob, &carol]))
        .await?;
    for d in [&bob, &carol] {
        d.joined(&group).await?;
    }
    alice.client.send_text(&group, "m1").await?;
    same_order(&group, &[&alice, &bob, &carol], &["m1"]).await?;

    // Carol's server dies; the others go on. Her device retries in the background.
    c.stop().await?;
    let mut texts = vec!["m1".to_owned()];
    for i in 2..=7 {
        let d = if i % 2 == 0 { &alice } else { &bob };
        let t = format!("m{i}");
        d.client.send_text(&group, &t).await?;
        texts.push(t);
    }
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    same_order(&group, &[&alice, &bob], &refs).await?;
    c.restart().await?;

    // Everything arrives once, in hub order; carol's device is in step again.
    same_order(&group, &[&alice, &bob, &carol], &refs).await?;
    let seqs: Vec<i64> = carol
        .history(&group)
        .await?
        .into_iter()
        .filter(|m| m.body.starts_with('m'))
        .map(|m| m.seq.context("no seq"))
        .collect::<Result<_>>()?;
    ensure!(
        seqs.len() == 7 && seqs.windows(2).all(|w| w[0] < w[1]),
        "{seqs:?}"
    );
    let m = carol.client.send_text(&group, "back").await?;
    same_order(&group, &[&alice, &bob, &carol], &["back"]).await?;
    carol.state(&group, &m.id, MessageState::Delivered).await?;
    Ok(())
}

async fn a_send_while_the_hub_is_down_is_sent_late(backend: Backend) -> Result<()> {
    // Bob's server never waits for the hub's answer (forward_wait_ms = 1): every send of
    // his is answered "pending" and reaches ✓ sent only through `sent_late`.
    let mut a = Server::start_peer(backend, "127.0.0.2", "").await?;
    let b = Server::start_peer(backend, "127.0.0.3", "forward_wait_ms = 1").await?;
    let alice = a.register("alice").await?;
    let bob = b.register("bob").await?;
    for d in [&alice, &bob] {
        d.online().await?;
    }
    let chat = alice.client.create_chat(bob.user()).await?;
    bob.joined(&chat).await?;
    let m = bob.client.send_text(&chat, "before").await?;
    alice.received(&chat, "before").await?;
    bob.state(&chat, &m.id, MessageState::Delivered).await?;

    // The hub (alice's server) is down: bob's server stores his messages and answers
    // "pending"; his app shows them pending, not sent, and does not resend them.
    a.stop().await?;
    let late1 = bob.client.send_text(&chat, "while A is down").await?;
    let late2 = bob.client.send_text(&chat, "still down").await?;
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    for id in [&late1.id, &late2.id] {
        let m = bob
            .client
            .store()
            .message(&chat, id)
            .await?
            .context("stored")?;
        ensure!(m.state == MessageState::Pending && m.seq.is_none(), "{m:?}");
    }

    // A is back: the hub orders them, bob's device learns their seqs (✓ sent, then ✓✓
    // once alice's device has them), and alice reads them in order.
    a.restart().await?;
    for id in [&late1.id, &late2.id] {
        bob.state(&chat, id, MessageState::Delivered).await?;
    }
    same_order(
        &chat,
        &[&alice, &bob],
        &["before", "while A is down", "still down"],
    )
    .await?;
    let seqs: Vec<Option<i64>> = bob
        .history(&chat)
        .await?
        .into_iter()
        .filter(|m| m.outgoing)
        .map(|m| m.seq)
        .collect();
    ensure!(
        seqs.len() == 3 && seqs.iter().all(Option::is_some),
        "{seqs:?}"
    );
    ensure!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    Ok(())
}
