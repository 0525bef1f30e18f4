//! The history archive (`parley_client::history`): a device's history exported, sealed
//! under a key, imported on another device of the user — with its edits, reactions,
//! replies and files — and a wrong key, a damaged or truncated archive, or another
//! user's archive refused with nothing on the device changed.

use std::io::Cursor;

use anyhow::{Context, Result, ensure};
use parley_client::{ArchiveKey, ChatId, Error, FileOptions, history};

use crate::harness::{Backend, Device, Server, eventually};

crate::on_both_backends!(archive_moves_history_to_another_device);

/// `(seq, sender, body)` of every message of a chat, in order.
async fn texts(d: &Device, chat: &ChatId) -> Result<Vec<(Option<i64>, String, String)>> {
    Ok(d.history(chat)
        .await?
        .into_iter()
        .map(|m| (m.seq, m.sender.to_string(), m.body))
        .collect())
}

async fn export(d: &Device, since: Option<i64>, key: &ArchiveKey) -> Result<Vec<u8>> {
    let (bytes, summary) = history::export(d.client.store(), since, key, Vec::new()).await?;
    ensure!(summary.archive_bytes == bytes.len() as u64);
    Ok(bytes)
}

async fn archive_moves_history_to_another_device(backend: Backend) -> Result<()> {
    let server = Server::start(backend).await?;
    let alice = server.register("alice").await?;
    let bob = server.register("bob").await?;
    alice.online().await?;
    bob.online().await?;
    let chat = alice.client.create_chat(bob.user()).await?;
    bob.joined(&chat).await?;
    let first = alice.client.send_text(&chat, "first words").await?;
    bob.received(&chat, "first words").await?;
    bob.client.reply(&chat, &first.id, "a reply").await?;
    alice.received(&chat, "a reply").await?;
    alice
        .client
        .edit(&chat, &first.id, "first words, edited")
        .await?;
    bob.client.react(&chat, &first.id, "👍").await?;
    let file = alice.dir.path().join("note.txt");
    std::fs::write(&file, b"a small file")?;
    let sent = alice
        .client
        .send_file(&chat, &file, FileOptions::default())
        .await?;
    bob.received(&chat, "a reply").await?;
    eventually("alice sees bob's reaction", || async {
        Ok(!alice
            .client
            .store()
            .reactions(&chat, &first.id)
            .await?
            .is_empty())
    })
    .await?;
    eventually("every message is ordered", || async {
        Ok(alice.history(&chat).await?.iter().all(|m| m.seq.is_some()))
    })
    .await?;
    let want = texts(&alice, &chat).await?;
    ensure!(want.len() == 3, "alice has {want:?}");

    let key = ArchiveKey::generate();
    let archive = export(&alice, None, &key).await?;

    // A second device of alice's that no device has added to the chat yet.
    let alice2 = server.login("alice").await?;
    ensure!(alice2.client.store().chat(&chat).await?.is_none());

    // Bad input first: nothing changes.
    let wrong = alice2
        .client
        .import_history(&ArchiveKey::generate(), Cursor::new(archive.clone()))
        .await;
    ensure!(matches!(wrong, Err(Error::WrongKey)), "{wrong:?}");
    let cut = archive[..archive.len() - 100].to_vec();
    let r = alice2.client.import_history(&key, Cursor::new(cut)).await;
    ensure!(matches!(r, Err(Error::CorruptArchive(_))), "{r:?}");
    let mut flipped = archive.clone();
    let at = flipped.len() / 2;
    flipped[at] ^= 0x40;
    let r = alice2
        .client
        .import_history(&key, Cursor::new(flipped))
        .await;
    ensure!(matches!(r, Err(Error::CorruptArchive(_))), "{r:?}");
    let r = alice2
        .client
        .import_history(&key, Cursor::new(b"hello".to_vec()))
        .await;
    ensure!(matches!(r, Err(Error::CorruptArchive(_))), "{r:?}");
    let r = bob
        .client
        .import_history(&key, Cursor::new(archive.clone()))
        .await;
    ensure!(matches!(r, Err(Error::Invalid(_))), "{r:?}");
    ensure!(alice2.client.store().chat(&chat).await?.is_none());
    ensure!(alice2.client.chats().await?.is_empty());

    // The archive: the same history, edits, reactions and the file's reference.
    let done = alice2
        .client
        .import_history(&key, Cursor::new(archive.clone()))
        .await?;
    ensure!(
        done.messages == 3 && done.messages_added == 3 && done.chats_added == 1,
        "{done:?}"
    );
    ensure!(texts(&alice2, &chat).await? == want);
    let info = alice2.client.store().chat(&chat).await?.context("chat")?;
    ensure!(!info.joined, "an imported chat is not joined by itself");
    ensure!(alice2.client.store().edits(&chat, &first.id).await?.len() == 2);
    ensure!(
        alice2
            .client
            .store()
            .reactions(&chat, &first.id)
            .await?
            .len()
            == 1,
        "the reaction"
    );
    let attachment = alice2
        .client
        .attachment(&chat, &sent.message.id)
        .await?
        .context("the file's reference")?;
    ensure!(attachment.size == 12);

    // Twice: nothing more, nothing broken.
    let again = alice2
        .client
        .import_history(&key, Cursor::new(archive.clone()))
        .await?;
    ensure!(
        again.messages_added == 0 && again.chats_added == 0,
        "{again:?}"
    );
    ensure!(texts(&alice2, &chat).await? == want);

    // Damage after a successful import leaves that import alone.
    let r = alice2
        .client
        .import_history(&key, Cursor::new(archive[..archive.len() / 2].to_vec()))
        .await;
    ensure!(matches!(r, Err(Error::CorruptArchive(_))), "{r:?}");
    ensure!(texts(&alice2, &chat).await? == want);

    // The device still joins the chat as usual and goes on from there; the imported
    // file downloads.
    alice2.online().await?;
    // Alice's first device trusts the new one, as after a link (devices.md DL7).
    alice.trust(&alice2).await?;
    alice.client.refresh_devices().await?;
    alice2.joined(&chat).await?;
    bob.client.send_text(&chat, "after the import").await?;
    alice2.received(&chat, "after the import").await?;
    let got = texts(&alice2, &chat).await?;
    ensure!(got[..3] == want[..], "{got:?}");
    let dest = alice2.dir.path().join("note-copy.txt");
    alice2
        .client
        .download(&chat, &sent.message.id, &dest)
        .await?;
    ensure!(std::fs::read(&dest)? == b"a small file");

    // Only the last N days: a cut-off in the future keeps the chats, no messages.
    let future = export(&alice, Some(i64::MAX / 2), &key).await?;
    let alice3 = server.login("alice").await?;
    let done = alice3
        .client
        .import_history(&key, Cursor::new(future))
        .await?;
    ensure!(done.messages == 0 && done.chats == 1, "{done:?}");
    Ok(())
}
