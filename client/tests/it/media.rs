//! Media through the SDK and a real homeserver: send a file (encrypt, upload, message),
//! receive and download it (hash check, decrypt), thumbnails, forwarding without an
//! upload, an interrupted upload resumed from the server's offset, the quota, and
//! downloads for members only.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, ensure};
use parley_client::{ChatId, Error, ErrorCode, FileOptions, Message, MessageState};

use crate::harness::{Backend, Device, Server, eventually};

crate::on_both_backends!(a_file_round_trips_and_forwarding_uploads_nothing);

/// Deterministic, incompressible-looking bytes.
fn bytes(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761).max(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

fn write(dir: &Path, name: &str, data: &[u8]) -> Result<PathBuf> {
    let path = dir.join(name);
    std::fs::write(&path, data)?;
    Ok(path)
}

/// Blob files the server stores on disk.
fn stored_blobs(server: &Server) -> usize {
    fn count(p: &Path) -> usize {
        std::fs::read_dir(p).map_or(0, |rd| {
            rd.flatten()
                .map(|e| {
                    let p = e.path();
                    if p.is_dir() { count(&p) } else { 1 }
                })
                .sum()
        })
    }
    count(&server.data_dir.path().join("media"))
}

/// Waits until `device` has a file message in `chat` named `name`; returns it.
async fn file_message(device: &Device, chat: &ChatId, name: &str) -> Result<Message> {
    let what = format!("{} has the file {name}", device.user());
    let find = || async {
        for m in device.history(chat).await? {
            if m.kind == "media"
                && let Some(a) = device.client.attachment(chat, &m.id).await?
                && a.name.as_deref() == Some(name)
            {
                return Ok::<_, anyhow::Error>(Some(m));
            }
        }
        Ok(None)
    };
    eventually(&what, || async { Ok(find().await?.is_some()) }).await?;
    find().await?.context("vanished")
}

/// Two users in a 1:1 chat, online.
async fn pair(server: &Server) -> Result<(Device, Device, ChatId)> {
    let alice = server.register("alice").await?;
    let bob = server.register("bob").await?;
    alice.online().await?;
    bob.online().await?;
    let chat = alice.client.create_chat(bob.user()).await?;
    bob.joined(&chat).await?;
    alice.joined(&chat).await?;
    Ok((alice, bob, chat))
}

async fn a_file_round_trips_and_forwarding_uploads_nothing(backend: Backend) -> Result<()> {
    let server = Server::start(backend).await?;
    let (alice, bob, chat) = pair(&server).await?;
    let files = tempfile::tempdir()?;

    // 300 KiB: several 64 KiB chunks, one upload segment.
    let data = bytes(300 * 1024 + 7, 1);
    let path = write(files.path(), "report.bin", &data)?;
    let sent = alice
        .client
        .send_file(
            &chat,
            &path,
            FileOptions {
                caption: Some("the numbers".into()),
                ..FileOptions::default()
            },
        )
        .await?;
    ensure!(sent.upload_complete && sent.uploaded > data.len() as u64);
    alice
        .state(&chat, &sent.message.id, MessageState::Delivered)
        .await?;
    // The encrypted copy is gone once uploaded.
    let outgoing = alice.dir.path().join("media/outgoing");
    ensure!(std::fs::read_dir(&outgoing)?.next().is_none());

    let got = file_message(&bob, &chat, "report.bin").await?;
    ensure!(
        got.body.contains("report.bin") && got.body.contains("the numbers"),
        "{}",
        got.body
    );
    let att = bob
        .client
        .attachment(&chat, &got.id)
        .await?
        .context("no attachment")?;
    ensure!(att.size == data.len() as u64 && att.mime == "application/octet-stream");
    ensure!(att.blob == sent.blob && att.server == "parley.test" && att.thumbnail.is_none());
    let out = tempfile::tempdir()?;
    let done = bob.client.download(&chat, &got.id, out.path()).await?;
    ensure!(done.path == out.path().join("report.bin") && done.size == data.len() as u64);
    ensure!(std::fs::read(&done.path)? == data, "decrypted bytes differ");

    // An image gets an encrypted thumbnail carried in the message.
    let mut img = image::RgbImage::new(640, 480);
    for (x, y, p) in img.enumerate_pixels_mut() {
        *p = image::Rgb([(x % 256) as u8, (y % 256) as u8, 128]);
    }
    let png = files.path().join("sunset.png");
    img.save(&png)?;
    let sent_png = alice
        .client
        .send_file(&chat, &png, FileOptions::default())
        .await?;
    let got_png = file_message(&bob, &chat, "sunset.png").await?;
    let att = bob
        .client
        .attachment(&chat, &got_png.id)
        .await?
        .context("no attachment")?;
    ensure!(att.mime == "image/png" && att.thumbnail.as_deref() == Some("image/jpeg"));
    let (mime, thumb) = bob
        .client
        .thumbnail(&chat, &got_png.id)
        .await?
        .context("no thumbnail")?;
    let thumb = image::load_from_memory(&thumb)?;
    ensure!(mime == "image/jpeg" && thumb.width() == 160 && thumb.height() == 120);
    let done = bob.client.download(&chat, &got_png.id, out.path()).await?;
    ensure!(std::fs::read(&done.path)? == std::fs::read(&png)?);
    ensure!(sent_png.upload_complete);

    // Bob forwards Alice's file to Carol: the same blob, no upload, nothing stored anew.
    let carol = server.register("carol").await?;
    carol.online().await?;
    let chat2 = bob.client.create_chat(carol.user()).await?;
    carol.joined(&chat2).await?;
    bob.joined(&chat2).await?;
    let blobs_before = stored_blobs(&server);
    ensure!(blobs_before == 2, "{blobs_before} blobs stored");
    let puts = || {
        server
            .proxy
            .recorded()
            .iter()
            .map(|r| {
                String::from_utf8_lossy(&r.up)
                    .matches("PUT /v1/media/")
                    .count()
            })
            .sum::<usize>()
    };
    let (puts_before, up_before) = (puts(), server.proxy.bytes_up());
    ensure!(puts_before >= 2, "{puts_before} upload requests seen");
    let fwd = bob.client.forward(&chat, &got.id, &chat2).await?;
    bob.state(&chat2, &fwd.id, MessageState::Delivered).await?;
    let got_fwd = file_message(&carol, &chat2, "report.bin").await?;
    let done = carol
        .client
        .download(&chat2, &got_fwd.id, out.path())
        .await?;
    ensure!(std::fs::read(&done.path)? == data);
    ensure!(puts() == puts_before, "the forward uploaded");
    let sent_up = server.proxy.bytes_up() - up_before;
    ensure!(sent_up < 64 * 1024, "{sent_up} bytes sent for a forward");
    ensure!(
        stored_blobs(&server) == blobs_before,
        "the forward stored a blob"
    );

    // The server never saw the file name or the plaintext.
    let logs = server.logs();
    ensure!(!logs.contains("report.bin") && !logs.contains("the numbers"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_upload_resumes_from_the_servers_offset() -> Result<()> {
    let server = Server::start(Backend::Sqlite).await?;
    let (alice, bob, chat) = pair(&server).await?;
    let files = tempfile::tempdir()?;
    // 20 MiB: three upload segments; the cut falls in the second.
    let data = bytes(20 * 1024 * 1024, 2);
    let path = write(files.path(), "video.mp4", &data)?;
    let up_before = server.proxy.bytes_up();
    server.proxy.cut_after_up(11 * 1024 * 1024);
    let sent = alice
        .client
        .send_file(&chat, &path, FileOptions::default())
        .await?;
    ensure!(server.proxy.cuts() == 1, "the upload was not cut");
    ensure!(sent.upload_complete);
    let ciphertext = parley_crypto::media::ciphertext_len(data.len() as u64);
    // Everything sent over the wire: the ciphertext once, not again from the start
    // (a restart from zero would add the 11 MiB sent before the cut).
    let up = server.proxy.bytes_up() - up_before;
    ensure!(
        up >= ciphertext && up < ciphertext + 2 * 1024 * 1024,
        "{up} bytes sent for a {ciphertext}-byte ciphertext"
    );
    alice
        .state(&chat, &sent.message.id, MessageState::Delivered)
        .await?;
    let got = file_message(&bob, &chat, "video.mp4").await?;
    let out = tempfile::tempdir()?;
    let done = bob.client.download(&chat, &got.id, out.path()).await?;
    ensure!(done.fetched == ciphertext);
    ensure!(std::fs::read(&done.path)? == data);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_left_over_from_a_restart_resumes_when_connected() -> Result<()> {
    let server = Server::start(Backend::Sqlite).await?;
    let (alice, bob, chat) = pair(&server).await?;
    let files = tempfile::tempdir()?;
    let data = bytes(12 * 1024 * 1024, 3);
    let path = write(files.path(), "backup.tar", &data)?;
    // The server goes away mid-upload and stays away: the call gives up, the message
    // stays queued with part of its file on the server.
    server.proxy.cut_after_up(9 * 1024 * 1024);
    let cut = async {
        while server.proxy.cuts() == 0 {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        server.proxy.set_offline(true);
    };
    let (sent, ()) = tokio::join!(
        alice.client.send_file(&chat, &path, FileOptions::default()),
        cut
    );
    let sent = sent?;
    ensure!(!sent.upload_complete && sent.message.state == MessageState::Pending);
    let alice = alice.restart().await?;
    server.proxy.set_offline(false);
    alice.online().await?;
    alice
        .state(&chat, &sent.message.id, MessageState::Delivered)
        .await?;
    let got = file_message(&bob, &chat, "backup.tar").await?;
    let out = tempfile::tempdir()?;
    let done = bob.client.download(&chat, &got.id, out.path()).await?;
    ensure!(std::fs::read(&done.path)? == data);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_quota_is_a_clear_error_and_strangers_cannot_download() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("parley.toml");
    std::fs::write(&config, "[limits]\nuser_quota_bytes = 200000\n")?;
    let server = Server::start_with(
        Backend::Sqlite,
        &["--config", config.to_str().unwrap_or_default()],
    )
    .await?;
    let (alice, bob, chat) = pair(&server).await?;
    let files = tempfile::tempdir()?;
    let small = write(files.path(), "note.txt", &bytes(50_000, 4))?;
    let sent = alice
        .client
        .send_file(&chat, &small, FileOptions::default())
        .await?;
    let big = write(files.path(), "movie.mkv", &bytes(300_000, 5))?;
    let err = alice
        .client
        .send_file(&chat, &big, FileOptions::default())
        .await
        .err()
        .context("the quota did not refuse the upload")?;
    ensure!(
        err.code() == Some(ErrorCode::QuotaExceeded) && err.to_string().contains("quota"),
        "{err}"
    );
    let failed = alice
        .history(&chat)
        .await?
        .into_iter()
        .find(|m| m.body.contains("movie.mkv"))
        .context("the refused file is not in the history")?;
    ensure!(failed.state == MessageState::Failed);
    ensure!(
        std::fs::read_dir(alice.dir.path().join("media/outgoing"))?
            .next()
            .is_none()
    );

    // Eve is in no chat with the file: the server does not serve it to her, and says
    // the same as for a blob that does not exist.
    let eve = server.register("eve").await?;
    let url = format!("{}/v1/media/{}", server.url(), sent.blob);
    let resp = reqwest::Client::new()
        .get(&url)
        .bearer_auth(eve.token().await?)
        .send()
        .await?;
    ensure!(resp.status() == reqwest::StatusCode::NOT_FOUND);
    let body: serde_json::Value = resp.json().await?;
    ensure!(body["error"] == "unknown_blob", "{body}");
    // Bob, a member of the chat, can.
    let got = file_message(&bob, &chat, "note.txt").await?;
    let out = tempfile::tempdir()?;
    bob.client.download(&chat, &got.id, out.path()).await?;
    // Asking for a message without a file is an error, not a download.
    let text = alice.client.send_text(&chat, "no file here").await?;
    ensure!(matches!(
        bob.client.download(&chat, &text.id, out.path()).await,
        Err(Error::Invalid(_))
    ));
    Ok(())
}
