//! A restored device rejoins its chats by MLS external commit (spec/backup.md
//! BK17–BK23), across servers: alice on server A and bob on server B chat in a 1:1
//! (hosted on A) and a group (hosted on B); alice backs up, loses her device, logs in on
//! a fresh install (a new device), restores from the recovery key — her history is back
//! and the new device joins both chats from their hubs' GroupInfo — and alice and bob
//! go on chatting both ways in the same chats.

use anyhow::{Context, Result, ensure};
use parley_client::{BackupSecret, ChatId, ErrorCode, Event};

use crate::harness::{Backend, Device, Server, eventually, same_epoch, users};

crate::on_both_backends!(
    a_restored_device_rejoins_its_chats_across_servers,
    a_chat_without_a_group_info_fails_alone,
);

async fn texts(d: &Device, chat: &ChatId) -> Result<Vec<String>> {
    Ok(d.history(chat).await?.into_iter().map(|m| m.body).collect())
}

/// Waits until the device's own message `text` has its hub `seq` (only ordered
/// messages are backed up, spec/backup.md BK4).
async fn ordered(d: &Device, chat: &ChatId, text: &str) -> Result<()> {
    eventually(&format!("{text:?} has its seq"), || async {
        Ok(d.history(chat)
            .await?
            .iter()
            .any(|m| m.body == text && m.seq.is_some()))
    })
    .await
}

/// The user wipes the device: the client stops and the profile directory is deleted.
async fn wipe(d: Device) {
    let Device { client, dir, .. } = d;
    client.shutdown().await;
    drop(dir);
}

async fn a_restored_device_rejoins_its_chats_across_servers(backend: Backend) -> Result<()> {
    let a = Server::start_peer(backend, "127.0.0.2", "").await?;
    let b = Server::start_peer(backend, "127.0.0.3", "").await?;
    let alice = a.register("alice").await?;
    let bob = b.register("bob").await?;
    alice.online().await?;
    bob.online().await?;

    let direct = alice.client.create_chat(bob.user()).await?;
    ensure!(direct.hub() == a.name(), "{direct}");
    bob.joined(&direct).await?;
    let group = bob.client.create_group("Across", &users(&[&alice])).await?;
    ensure!(group.hub() == b.name(), "{group}");
    alice.joined(&group).await?;
    alice.client.send_text(&direct, "hello bob").await?;
    bob.received(&direct, "hello bob").await?;
    bob.client.send_text(&direct, "hi alice").await?;
    alice.received(&direct, "hi alice").await?;
    bob.client.send_text(&group, "group, before").await?;
    alice.received(&group, "group, before").await?;
    alice.client.send_text(&group, "alice in the group").await?;
    bob.received(&group, "alice in the group").await?;

    ordered(&alice, &direct, "hello bob").await?;
    ordered(&alice, &group, "alice in the group").await?;
    let enabled = alice
        .client
        .enable_backup(BackupSecret::RecoveryKey)
        .await?;
    let key = enabled.recovery_key.context("a recovery key")?;
    let want_direct = texts(&alice, &direct).await?;
    let want_group = texts(&alice, &group).await?;
    ensure!(want_direct.len() == 2 && want_group.len() == 2);
    let old_device = alice.client.device_id().clone();

    // The device is lost. A fresh install logs in: a new device, in no chat.
    wipe(alice).await;
    let alice = a.login("alice").await?;
    ensure!(alice.client.device_id() != &old_device);
    alice.online().await?;
    ensure!(alice.client.chats().await?.is_empty());
    ensure!(alice.client.epoch(&direct).await?.is_none());

    // A wrong key changes nothing and joins nothing.
    let other = parley_crypto::RecoveryKey::generate().display();
    let r = alice.client.restore(&other).await;
    ensure!(matches!(r, Err(parley_client::Error::WrongKey)), "{r:?}");
    ensure!(alice.client.epoch(&direct).await?.is_none());

    let mut events = alice.client.subscribe();
    let restored = alice.client.restore(&key).await?;
    ensure!(restored.import.messages_added == 4, "{:?}", restored.import);
    let rejoin = restored
        .rejoin
        .as_ref()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    ensure!(rejoin.failed.is_empty(), "{:?}", rejoin.failed);
    let mut rejoined = rejoin.rejoined.clone();
    rejoined.sort();
    let mut both = vec![direct.clone(), group.clone()];
    both.sort();
    ensure!(rejoined == both, "{rejoin:?}");
    let mut joined_events = 0;
    while let Ok(e) = events.try_recv() {
        if matches!(e, Event::ChatJoined { .. }) {
            joined_events += 1;
        }
    }
    ensure!(joined_events == 2, "ChatJoined events: {joined_events}");

    // The old history is there, and the device is in both groups at the hub's epoch.
    ensure!(texts(&alice, &direct).await? == want_direct);
    ensure!(texts(&alice, &group).await? == want_group);
    same_epoch(&direct, &[&alice, &bob]).await?;
    same_epoch(&group, &[&alice, &bob]).await?;
    // Bob's client took the external commits: alice's new device is in both groups.
    let new_device = alice.client.device_id().clone();
    for chat in [&direct, &group] {
        let devices = bob.client.group_devices(chat).await?;
        ensure!(
            devices.contains(&(alice.user().clone(), new_device.clone())),
            "{chat}: {devices:?}"
        );
    }

    // They keep chatting, both ways, in the same chats.
    bob.client.send_text(&direct, "welcome back").await?;
    alice.received(&direct, "welcome back").await?;
    alice
        .client
        .send_text(&direct, "back on a new phone")
        .await?;
    bob.received(&direct, "back on a new phone").await?;
    alice.client.send_text(&group, "back in the group").await?;
    bob.received(&group, "back in the group").await?;
    bob.client.send_text(&group, "glad you are back").await?;
    alice.received(&group, "glad you are back").await?;
    ensure!(texts(&alice, &direct).await?[..2] == want_direct[..]);

    // Rejoining again has nothing to do.
    let again = alice.client.rejoin_chats().await?;
    ensure!(
        again.rejoined.is_empty() && again.failed.is_empty() && again.already_joined.len() == 2,
        "{again:?}"
    );
    // And a restart keeps the rejoined groups.
    let alice = alice.restart().await?;
    alice.online().await?;
    bob.client.send_text(&group, "after your restart").await?;
    alice.received(&group, "after your restart").await?;
    Ok(())
}

/// A chat whose hub holds no current GroupInfo (the commit that set it up predates
/// GroupInfo publishing; simulated by a commit sent without one) fails on its own with
/// `no_group_info`, and the other chats are rejoined.
async fn a_chat_without_a_group_info_fails_alone(backend: Backend) -> Result<()> {
    let server = Server::start(backend).await?;
    let alice = server.register("alice").await?;
    let bob = server.register("bob").await?;
    let carol = server.register("carol").await?;
    alice.online().await?;
    bob.online().await?;
    carol.online().await?;
    let with_bob = alice.client.create_chat(bob.user()).await?;
    bob.joined(&with_bob).await?;
    let with_carol = alice.client.create_chat(carol.user()).await?;
    carol.joined(&with_carol).await?;
    alice.client.send_text(&with_carol, "hi carol").await?;
    carol.received(&with_carol, "hi carol").await?;
    ordered(&alice, &with_carol, "hi carol").await?;
    // A bare commit (no GroupInfo) on carol's chat: the hub's GroupInfo is now stale.
    let token = carol.token().await?;
    let epoch = carol.client.epoch(&with_carol).await?.context("epoch")?;
    let r = reqwest::Client::new()
        .post(format!("{}/v1/chats/{with_carol}/events", server.url()))
        .bearer_auth(&token)
        .json(
            &serde_json::json!({"client_msg_id": "bare", "payload": "aGk=",
                                  "mls": {"kind": "commit", "epoch": epoch}}),
        )
        .send()
        .await?;
    ensure!(r.status() == 201, "{}", r.status());
    let enabled = alice
        .client
        .enable_backup(BackupSecret::RecoveryKey)
        .await?;
    let key = enabled.recovery_key.context("key")?;
    wipe(alice).await;

    let alice = server.login("alice").await?;
    let restored = alice.client.restore(&key).await?;
    let rejoin = restored.rejoin.map_err(|e| anyhow::anyhow!("{e}"))?;
    ensure!(rejoin.rejoined == [with_bob.clone()], "{rejoin:?}");
    ensure!(rejoin.failed.len() == 1, "{rejoin:?}");
    let f = &rejoin.failed[0];
    ensure!(
        f.chat_id == with_carol && f.error.code() == Some(ErrorCode::NoGroupInfo),
        "{f:?}"
    );
    // Nothing changed on the device for that chat: its history is there, not joined.
    ensure!(alice.client.epoch(&with_carol).await?.is_none());
    ensure!(texts(&alice, &with_carol).await? == ["hi carol"]);
    let info = alice
        .client
        .chats()
        .await?
        .into_iter()
        .find(|c| c.chat_id == with_carol)
        .context("chat")?;
    ensure!(!info.joined);
    // The other chat works.
    alice.online().await?;
    bob.client.send_text(&with_bob, "still here").await?;
    alice.received(&with_bob, "still here").await?;
    eventually("nothing else to rejoin but carol's chat", || async {
        let again = alice.client.rejoin_chats().await?;
        Ok(again.failed.len() == 1 && again.already_joined == [with_bob.clone()])
    })
    .await?;
    Ok(())
}
