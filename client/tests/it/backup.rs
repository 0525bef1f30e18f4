//! Encrypted backups (`spec/backup.md`): a user turns backups on, loses the device,
//! installs afresh, types the recovery key and has the history back; a mistyped key is
//! refused by its checksum, another key or a damaged backup is refused with nothing on
//! the device changed; a passphrase works the same. The restored device rejoins its
//! chats by external commit (`rejoin.rs` tests that across servers).

use anyhow::{Context, Result, ensure};
use parley_client::{BackupKeyMode, BackupSecret, ChatId, Client, Error};
use parley_crypto::RecoveryKey;
use zeroize::Zeroizing;

use crate::harness::{Backend, Device, Server, config};

crate::on_both_backends!(
    restore_from_the_recovery_key_on_a_fresh_install,
    a_damaged_backup_changes_nothing,
    passphrase_backups
);

async fn texts(d: &Device, chat: &ChatId) -> Result<Vec<(Option<i64>, String)>> {
    Ok(d.history(chat)
        .await?
        .into_iter()
        .map(|m| (m.seq, m.body))
        .collect())
}

/// The user wipes the device: the client stops and the profile directory is deleted.
async fn wipe(d: Device) -> Result<()> {
    let Device { client, dir, .. } = d;
    client.shutdown().await;
    drop(dir);
    Ok(())
}

async fn restore_from_the_recovery_key_on_a_fresh_install(backend: Backend) -> Result<()> {
    let server = Server::start(backend).await?;
    let alice = server.register("alice").await?;
    let bob = server.register("bob").await?;
    alice.online().await?;
    bob.online().await?;
    let chat = alice.client.create_chat(bob.user()).await?;
    bob.joined(&chat).await?;
    // Alice's second device (a laptop) survives the wipe of the first.
    let laptop = server.link("alice", &alice).await?;
    laptop.online().await?;
    laptop.joined(&chat).await?;
    alice.client.send_text(&chat, "before the backup").await?;
    bob.received(&chat, "before the backup").await?;
    bob.client.send_text(&chat, "a reply").await?;
    alice.received(&chat, "a reply").await?;

    ensure!(alice.client.backup_status().await?.is_none());
    let enabled = alice
        .client
        .enable_backup(BackupSecret::RecoveryKey)
        .await?;
    let shown = enabled.recovery_key.clone().context("a recovery key")?;
    ensure!(
        shown.len() == 79 && shown.split(' ').count() == 16,
        "{}",
        *shown
    );
    let first = alice.client.backup_status().await?.context("a backup")?;
    ensure!(first == enabled.backup.backup && first.key == BackupKeyMode::RecoveryKey);
    ensure!(enabled.backup.export.messages == 2);

    // Later messages, and a new backup replaces the old one.
    bob.client
        .send_text(&chat, "after the first backup")
        .await?;
    alice.received(&chat, "after the first backup").await?;
    let second = alice.client.backup_now().await?;
    ensure!(second.backup.blob != first.blob && second.export.messages == 3);
    ensure!(alice.client.backup_status().await?.context("backup")?.blob == second.backup.blob);
    let want = texts(&alice, &chat).await?;

    wipe(alice).await?;
    let alice = server.login("alice").await?;
    ensure!(alice.client.chats().await?.is_empty());

    // A typo: one character changed. Refused before anything is downloaded.
    let mut typo: Vec<char> = shown.chars().collect();
    typo[7] = if typo[7] == 'A' { 'B' } else { 'A' };
    let typo: String = typo.into_iter().collect();
    let r = alice.client.restore(&typo).await;
    ensure!(matches!(r, Err(Error::RecoveryKey(_))), "{r:?}");
    let r = alice.client.restore("not a recovery key").await;
    ensure!(matches!(r, Err(Error::RecoveryKey(_))), "{r:?}");
    // A well-formed key that is not this backup's.
    let other = RecoveryKey::generate().display();
    let r = alice.client.restore(&other).await;
    ensure!(matches!(r, Err(Error::WrongKey)), "{r:?}");
    ensure!(alice.client.chats().await?.is_empty());
    ensure!(!alice.client.backup_enabled().await?);

    // The right key, typed sloppily (lowercase, dashes).
    let sloppy = shown.replace(' ', "-").to_lowercase();
    let restored = alice.client.restore(&sloppy).await?;
    ensure!(
        restored.import.messages_added == 3 && restored.import.chats_added == 1,
        "{:?}",
        restored.import
    );
    ensure!(texts(&alice, &chat).await? == want);
    // This device makes the next backups with the same key.
    ensure!(alice.client.backup_enabled().await?);
    let third = alice.client.backup_now().await?;
    ensure!(third.export.messages == 3);

    // The restored device rejoined the chat by itself (an external commit from the
    // hub's GroupInfo; spec/backup.md BK22), which bob and alice's laptop accepted, and
    // goes on chatting.
    let rejoin = restored.rejoin.map_err(|e| anyhow::anyhow!("{e}"))?;
    ensure!(rejoin.rejoined == [chat.clone()], "{rejoin:?}");
    alice.online().await?;
    alice.joined(&chat).await?;
    crate::harness::same_epoch(&chat, &[&alice, &bob, &laptop]).await?;
    bob.client.send_text(&chat, "after the restore").await?;
    alice.received(&chat, "after the restore").await?;
    laptop.received(&chat, "after the restore").await?;
    alice.client.send_text(&chat, "back again").await?;
    bob.received(&chat, "back again").await?;
    laptop.received(&chat, "back again").await?;
    let got = texts(&alice, &chat).await?;
    ensure!(got[..3] == want[..], "{got:?}");
    Ok(())
}

async fn a_damaged_backup_changes_nothing(backend: Backend) -> Result<()> {
    let server = Server::start(backend).await?;
    let alice = server.register("alice").await?;
    let bob = server.register("bob").await?;
    alice.online().await?;
    bob.online().await?;
    let chat = alice.client.create_chat(bob.user()).await?;
    bob.joined(&chat).await?;
    alice.client.send_text(&chat, "kept safe").await?;
    bob.received(&chat, "kept safe").await?;
    let enabled = alice
        .client
        .enable_backup(BackupSecret::RecoveryKey)
        .await?;
    let key = enabled.recovery_key.context("key")?;
    let good = enabled.backup.backup;

    // A fresh device restores, then the backup on the server is damaged (another blob,
    // the same bytes with one flipped and then cut short, made the backup by hand).
    let alice2 = server.login("alice").await?;
    alice2.client.restore(&key).await?;
    let want = texts(&alice2, &chat).await?;
    ensure!(want.len() == 1);

    let token = alice2.token().await?;
    let http = reqwest::Client::new();
    let bytes = http
        .get(format!("{}/v1/media/{}", server.url(), good.blob))
        .bearer_auth(&token)
        .send()
        .await?
        .error_for_status()?
        .bytes()
        .await?
        .to_vec();
    ensure!(bytes.len() as u64 == good.size);
    let mut flipped = bytes.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 1;
    let truncated = bytes[..bytes.len() - 40].to_vec();
    for damaged in [flipped, truncated] {
        let hash = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&damaged));
        http.put(format!(
            "{}/v1/media/{hash}/upload?offset=0&total={}",
            server.url(),
            damaged.len()
        ))
        .bearer_auth(&token)
        .body(damaged.clone())
        .send()
        .await?
        .error_for_status()?;
        http.put(format!("{}/v1/backup", server.url()))
            .bearer_auth(&token)
            .json(&serde_json::json!({
                "blob": hash, "size": damaged.len(), "key": {"mode": "recovery_key"}
            }))
            .send()
            .await?
            .error_for_status()?;
        for d in [&alice2] {
            let r = d.client.restore(&key).await;
            ensure!(matches!(r, Err(Error::CorruptArchive(_))), "{r:?}");
            ensure!(texts(d, &chat).await? == want, "nothing changed");
        }
        let fresh = server.login("alice").await?;
        let r = fresh.client.restore(&key).await;
        ensure!(matches!(r, Err(Error::CorruptArchive(_))), "{r:?}");
        ensure!(fresh.client.chats().await?.is_empty(), "nothing imported");
    }

    // A blob the user did not upload cannot become the backup.
    let bob_token = bob.token().await?;
    let r = http
        .put(format!("{}/v1/backup", server.url()))
        .bearer_auth(&bob_token)
        .json(&serde_json::json!({
            "blob": good.blob, "size": good.size, "key": {"mode": "recovery_key"}
        }))
        .send()
        .await?;
    ensure!(r.status() == 404, "{}", r.status());
    let body: serde_json::Value = r.json().await?;
    ensure!(body["error"] == "unknown_blob", "{body}");
    // Deleting: no backup left to restore.
    let r = http
        .delete(format!("{}/v1/backup", server.url()))
        .bearer_auth(&token)
        .send()
        .await?;
    ensure!(r.status() == 204, "{}", r.status());
    let r = alice2.client.restore(&key).await;
    ensure!(matches!(r, Err(Error::NoBackup)), "{r:?}");
    Ok(())
}

async fn passphrase_backups(backend: Backend) -> Result<()> {
    let server = Server::start(backend).await?;
    let alice = server.register("alice").await?;
    let bob = server.register("bob").await?;
    alice.online().await?;
    bob.online().await?;
    let chat = alice.client.create_chat(bob.user()).await?;
    bob.joined(&chat).await?;
    alice.client.send_text(&chat, "under a passphrase").await?;
    bob.received(&chat, "under a passphrase").await?;
    let enabled = alice
        .client
        .enable_backup(BackupSecret::Passphrase(Zeroizing::new(
            "purple elephant dances quietly at noon".into(),
        )))
        .await?;
    ensure!(enabled.recovery_key.is_none());
    ensure!(matches!(
        enabled.backup.backup.key,
        BackupKeyMode::Passphrase { .. }
    ));
    let dir = tempfile::tempdir()?;
    let fresh = Client::login(
        config(dir.path()),
        &server.url(),
        "alice",
        crate::harness::PASSWORD,
    )
    .await?;
    let fresh = Device::new(fresh, dir);
    let r = fresh.client.restore("purple elephant dances loudly").await;
    ensure!(matches!(r, Err(Error::WrongKey)), "{r:?}");
    fresh
        .client
        .restore("purple elephant dances quietly at noon")
        .await?;
    ensure!(texts(&fresh, &chat).await? == texts(&alice, &chat).await?);
    Ok(())
}
