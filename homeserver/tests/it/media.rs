//! Media: resumable uploads verified against their address, dedup, ranged downloads for
//! members only, quota, garbage collection.

use anyhow::{Result, ensure};
use parley_client_api::{BlobHash, ChatId};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::harness::{Backend, Server, User};

crate::on_both_backends!(uploads_resume_dedup_and_downloads_are_for_members);

pub(crate) fn blob_of(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

pub(crate) async fn put(
    server: &Server,
    who: &User,
    blob: &str,
    offset: usize,
    total: usize,
    body: &[u8],
) -> Result<(StatusCode, Value)> {
    let resp = reqwest::Client::new()
        .put(format!(
            "{}/v1/media/{blob}/upload?offset={offset}&total={total}",
            server.base
        ))
        .bearer_auth(&who.token)
        .body(body.to_vec())
        .send()
        .await?;
    let status = resp.status();
    Ok((status, resp.json().await.unwrap_or(Value::Null)))
}

pub(crate) async fn get_blob(
    server: &Server,
    who: &User,
    blob: &str,
    range: Option<&str>,
) -> Result<(StatusCode, Vec<u8>)> {
    let mut req = reqwest::Client::new()
        .get(format!("{}/v1/media/{blob}", server.base))
        .bearer_auth(&who.token);
    if let Some(r) = range {
        req = req.header("range", r);
    }
    let resp = req.send().await?;
    Ok((resp.status(), resp.bytes().await?.to_vec()))
}

pub(crate) async fn send_with_blob(
    server: &Server,
    who: &User,
    chat: &ChatId,
    id: &str,
    blob: &str,
) -> Result<(StatusCode, Value)> {
    server
        .post(
            &format!("/v1/chats/{chat}/events"),
            Some(&who.token),
            json!({"client_msg_id": id, "payload": "bWVkaWE=", "blobs": [blob]}),
        )
        .await
}

async fn uploads_resume_dedup_and_downloads_are_for_members(backend: Backend) -> Result<()> {
    let server = Server::start(backend).await?;
    let [alice, bob, eve] = [
        server.register("alice").await?,
        server.register("bob").await?,
        server.register("eve").await?,
    ];
    let chat = server.create_chat(&alice, &[&bob]).await?;
    // 300 KiB of "ciphertext".
    let data: Vec<u8> = (0..300 * 1024u32).map(|i| (i * 7 % 251) as u8).collect();
    let blob = blob_of(&data);
    let head = |who: &User| {
        reqwest::Client::new()
            .head(format!("{}/v1/media/{blob}", server.base))
            .bearer_auth(who.token.clone())
            .send()
    };
    ensure!(head(&alice).await?.status() == StatusCode::NOT_FOUND);

    // First half, then the status tells where to resume; a wrong offset is refused.
    let (status, body) = put(&server, &alice, &blob, 0, data.len(), &data[..100_000]).await?;
    ensure!(
        status == StatusCode::OK && body["received"] == 100_000 && body["complete"] == false,
        "{status} {body}"
    );
    let (_, st) = server
        .get(&format!("/v1/media/{blob}/upload"), &alice.token)
        .await?;
    ensure!(st["received"] == 100_000, "{st}");
    let (status, body) = put(&server, &alice, &blob, 5, data.len(), &data[5..10]).await?;
    ensure!(
        status == StatusCode::CONFLICT && body["error"] == "upload_offset",
        "{body}"
    );
    let (status, body) = put(
        &server,
        &alice,
        &blob,
        100_000,
        data.len(),
        &data[100_000..],
    )
    .await?;
    ensure!(
        status == StatusCode::CREATED && body["complete"] == true,
        "{status} {body}"
    );
    let resp = head(&bob).await?;
    ensure!(
        resp.status() == StatusCode::OK
            && resp.headers()["content-length"] == data.len().to_string().as_str()
    );

    // Bob uploading the same ciphertext stores nothing new: complete at once.
    let (status, body) = put(&server, &bob, &blob, 0, data.len(), &data[..10]).await?;
    ensure!(
        status == StatusCode::CREATED && body["received"] == data.len(),
        "{body}"
    );

    // Bytes that don't hash to the address are refused and nothing is stored.
    let fake = blob_of(b"something else");
    let (status, body) = put(&server, &alice, &fake, 0, 4, b"abcd").await?;
    ensure!(
        status == StatusCode::BAD_REQUEST && body["error"] == "hash_mismatch",
        "{body}"
    );
    ensure!(
        reqwest::Client::new()
            .head(format!("{}/v1/media/{fake}", server.base))
            .bearer_auth(&alice.token)
            .send()
            .await?
            .status()
            == StatusCode::NOT_FOUND
    );
    let (status, body) = put(&server, &alice, &fake, 0, 4, b"abcdef").await?;
    ensure!(
        status == StatusCode::BAD_REQUEST && body["error"] == "invalid_param",
        "more bytes than total: {body}"
    );
    let (status, body) = put(&server, &alice, &fake, 0, 200 * 1024 * 1024, b"x").await?;
    ensure!(
        status == StatusCode::PAYLOAD_TOO_LARGE && body["error"] == "too_large",
        "{body}"
    );

    // Downloads: the uploader yes; Bob only once a message of their chat refers to it;
    // Eve never. Unknown and forbidden look the same.
    let (status, got) = get_blob(&server, &alice, &blob, None).await?;
    ensure!(status == StatusCode::OK && got == data);
    ensure!(get_blob(&server, &bob, &blob, None).await?.0 == StatusCode::NOT_FOUND);
    let (status, body) =
        send_with_blob(&server, &alice, &chat, "m1", &blob_of(b"never uploaded")).await?;
    ensure!(
        status == StatusCode::NOT_FOUND && body["error"] == "unknown_blob",
        "{body}"
    );
    let (status, _) = send_with_blob(&server, &alice, &chat, "m2", &blob).await?;
    ensure!(status == StatusCode::CREATED);
    let (status, got) = get_blob(&server, &bob, &blob, Some("bytes=1000-1999")).await?;
    ensure!(status == StatusCode::PARTIAL_CONTENT && got == data[1000..2000]);
    let (status, got) = get_blob(&server, &bob, &blob, Some("bytes=-10")).await?;
    ensure!(status == StatusCode::PARTIAL_CONTENT && got == data[data.len() - 10..]);
    ensure!(
        get_blob(&server, &bob, &blob, Some("bytes=999999999-"))
            .await?
            .0
            == StatusCode::RANGE_NOT_SATISFIABLE
    );
    ensure!(get_blob(&server, &eve, &blob, None).await?.0 == StatusCode::NOT_FOUND);
    let (_, history) = server
        .get(&format!("/v1/chats/{chat}/events"), &bob.token)
        .await?;
    ensure!(
        history["events"][0]["blobs"][0] == blob.as_str(),
        "{history}"
    );
    let _: BlobHash = blob.as_str().try_into()?;
    let (status, _) = server
        .request(
            Method::GET,
            "/v1/media/not-a-hash",
            Some(&alice.token),
            None,
        )
        .await?;
    ensure!(status == StatusCode::BAD_REQUEST);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_quota_counts_blobs_and_uploads_in_progress() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("parley.toml");
    std::fs::write(&config, "[limits]\nuser_quota_bytes = 1000\n")?;
    let server = Server::start_with(
        Backend::Sqlite,
        &["--config", config.to_str().unwrap_or_default()],
    )
    .await?;
    let alice = server.register("alice").await?;
    let a = vec![1u8; 600];
    let (status, _) = put(&server, &alice, &blob_of(&a), 0, a.len(), &a).await?;
    ensure!(status == StatusCode::CREATED);
    // 600 stored + 300 in progress = 900; another 200 would make 1,100.
    let b = vec![2u8; 300];
    let (status, _) = put(&server, &alice, &blob_of(&b), 0, b.len(), &b[..100]).await?;
    ensure!(status == StatusCode::OK);
    let c = vec![3u8; 200];
    let (status, body) = put(&server, &alice, &blob_of(&c), 0, c.len(), &c).await?;
    ensure!(
        status == StatusCode::PAYLOAD_TOO_LARGE && body["error"] == "quota_exceeded",
        "{body}"
    );
    // Finishing the upload in progress is still fine; someone else's quota is their own.
    let (status, _) = put(&server, &alice, &blob_of(&b), 100, b.len(), &b[100..]).await?;
    ensure!(status == StatusCode::CREATED);
    let bob = server.register("bob").await?;
    ensure!(put(&server, &bob, &blob_of(&c), 0, c.len(), &c).await?.0 == StatusCode::CREATED);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreferenced_blobs_are_collected_and_referenced_ones_kept() -> Result<()> {
    use parley_homeserver::service::media::Media;
    use parley_homeserver::store::{AnyStore, NewChat, NewUser, SendRequest, Store};

    let dir = tempfile::tempdir()?;
    let store = AnyStore::connect(
        &format!("sqlite://{}", dir.path().join("s.db").display()),
        2,
    )
    .await?;
    let media = Media::new(store.clone(), dir.path(), 1 << 20, 1 << 30)?;
    let alice: parley_client_api::UserId = "@alice:x.test".try_into()?;
    store
        .create_user(&NewUser {
            user_id: alice.clone(),
            localpart: "alice".into(),
            password_hash: "h".into(),
            created_at: 1,
        })
        .await?;
    let chat: ChatId = "!c:x.test".try_into()?;
    store
        .create_chat(&NewChat {
            followers: vec![],
            chat_id: chat.clone(),
            kind: parley_client_api::http::chats::ChatKind::Group,
            direct_key: None,
            created_by: alice.clone(),
            members: vec![alice.clone()],
            name: None,
            created_at: 1,
        })
        .await?;
    let mut hashes = Vec::new();
    for content in [&b"kept"[..], &b"collected"[..]] {
        let hash: BlobHash = blob_of(content).try_into()?;
        let body = futures_util::stream::iter([Ok::<_, std::io::Error>(
            bytes::Bytes::copy_from_slice(content),
        )]);
        ensure!(
            media
                .append(&alice, &hash, 0, content.len() as u64, body)
                .await?
                .complete
        );
        hashes.push(hash);
    }
    let refer = SendRequest {
        chat_id: chat.clone(),
        sender: alice.clone(),
        sender_device: "D".try_into()?,
        client_msg_id: "m".into(),
        payload: vec![1],
        ts: 5,
        mls: None,
        membership: None,
        blobs: vec![hashes[0].clone()],
        expires_in: None,
        read_receipts: None,
        group_info: None,
    };
    store.commit_sends(&[refer], 10).await?;
    // A partial fetch from another server that was never resumed goes too.
    let partial = dir
        .path()
        .join("uploads")
        .join(format!("{}.fetch.part", hashes[1]));
    std::fs::write(&partial, b"half a blob")?;
    ensure!(
        media.collect_garbage(0).await? == (0, 0),
        "nothing is that old"
    );
    ensure!(partial.exists());
    let far_future = i64::MAX / 2;
    let (blobs, leftovers) = media.collect_garbage(far_future).await?;
    ensure!(blobs == 1 && leftovers == 1, "{blobs} {leftovers}");
    ensure!(!partial.exists());
    ensure!(media.size(&hashes[0]).await? == Some(4) && media.size(&hashes[1]).await?.is_none());
    let read = media.download(&alice, &hashes[0], None).await?;
    ensure!(read.size == 4);
    // Once the referring event is past retention, the blob goes too.
    store.purge_expired(far_future).await?;
    ensure!(media.collect_garbage(far_future).await?.0 == 1);
    ensure!(media.size(&hashes[0]).await?.is_none());
    Ok(())
}

/// `[media] store = "s3"`: blobs go to an S3-compatible server (moto on loopback) in
/// multipart uploads, and come back ranged, to members only, after a restart too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blobs_live_in_an_s3_store_when_configured() -> Result<()> {
    let s3 = parley_testkit::s3_server()?;
    let http = reqwest::Client::new();
    // moto takes unsigned requests: create the bucket.
    let resp = http
        .put(format!("{}/parley-media", s3.endpoint()))
        .send()
        .await?;
    ensure!(
        resp.status().is_success(),
        "creating the bucket: {}",
        resp.status()
    );
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("parley.toml");
    std::fs::write(
        &config,
        format!(
            "[media]\nstore = \"s3\"\nbucket = \"parley-media\"\nendpoint = \"{}\"\n\
             region = \"us-east-1\"\nallow_http = true\n",
            s3.endpoint()
        ),
    )?;
    let mut server = Server::start_with_env(
        Backend::Sqlite,
        &["--config", config.to_str().unwrap_or_default()],
        &[
            ("AWS_ACCESS_KEY_ID", "parley-test"),
            ("AWS_SECRET_ACCESS_KEY", "parley-test-secret"),
        ],
    )
    .await?;
    let [alice, bob, eve] = [
        server.register("alice").await?,
        server.register("bob").await?,
        server.register("eve").await?,
    ];
    let chat = server.create_chat(&alice, &[&bob]).await?;
    // Past S3's 5 MiB multipart part size, so the store writes more than one part.
    let data: Vec<u8> = (0..6 * 1024 * 1024 + 123u32)
        .map(|i| (i * 31 % 253) as u8)
        .collect();
    let blob = blob_of(&data);
    let (status, _) = put(&server, &alice, &blob, 0, data.len(), &data[..1 << 20]).await?;
    ensure!(status == StatusCode::OK);
    let (status, body) = put(
        &server,
        &alice,
        &blob,
        1 << 20,
        data.len(),
        &data[1 << 20..],
    )
    .await?;
    ensure!(status == StatusCode::CREATED, "{status} {body}");

    // The blob is an object in the bucket, and nothing is kept on local disk.
    let object = http
        .get(format!(
            "{}/parley-media/blobs/{}/{blob}",
            s3.endpoint(),
            &blob[..2]
        ))
        .send()
        .await?;
    ensure!(object.status().is_success(), "object: {}", object.status());
    ensure!(object.bytes().await?.as_ref() == data.as_slice());
    ensure!(!server.data_dir().join("media").exists());

    let (status, _) = send_with_blob(&server, &alice, &chat, "m1", &blob).await?;
    ensure!(status == StatusCode::CREATED);
    let (status, got) = get_blob(&server, &bob, &blob, Some("bytes=5000000-5999999")).await?;
    ensure!(status == StatusCode::PARTIAL_CONTENT && got == data[5_000_000..6_000_000]);
    ensure!(get_blob(&server, &eve, &blob, None).await?.0 == StatusCode::NOT_FOUND);

    // A second upload of the same ciphertext stores nothing new.
    let (status, body) = put(&server, &bob, &blob, 0, data.len(), &data[..10]).await?;
    ensure!(
        status == StatusCode::CREATED && body["received"] == data.len(),
        "{body}"
    );

    server.crash_and_restart().await?;
    let (status, got) = get_blob(&server, &bob, &blob, None).await?;
    ensure!(
        status == StatusCode::OK && got == data,
        "after restart: {status}"
    );
    Ok(())
}

/// A process's peak resident set (`VmHWM`), in KiB.
fn peak_rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no VmHWM in /proc/{pid}/status"))
}

/// Copying a large blob into S3 holds a bounded number of multipart parts in memory,
/// not the whole blob: the server's peak RSS grows far less than the blob's size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_multipart_uploads_hold_bounded_memory() -> Result<()> {
    let s3 = parley_testkit::s3_server()?;
    let http = reqwest::Client::new();
    let resp = http
        .put(format!("{}/parley-media", s3.endpoint()))
        .send()
        .await?;
    ensure!(resp.status().is_success(), "bucket: {}", resp.status());
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("parley.toml");
    std::fs::write(
        &config,
        format!(
            "[media]\nstore = \"s3\"\nbucket = \"parley-media\"\nendpoint = \"{}\"\n\
             region = \"us-east-1\"\nallow_http = true\n",
            s3.endpoint()
        ),
    )?;
    let server = Server::start_with_env(
        Backend::Sqlite,
        &["--config", config.to_str().unwrap_or_default()],
        &[
            ("AWS_ACCESS_KEY_ID", "parley-test"),
            ("AWS_SECRET_ACCESS_KEY", "parley-test-secret"),
        ],
    )
    .await?;
    let alice = server.register("alice").await?;
    let pid = server.process.pid().ok_or_else(|| anyhow::anyhow!("pid"))?;
    // 96 MiB: nineteen 5 MiB parts and a bit.
    let data: Vec<u8> = (0..96 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(13) % 251) as u8)
        .collect();
    let blob = blob_of(&data);
    let before = peak_rss_kib(pid)?;
    let (status, body) = put(&server, &alice, &blob, 0, data.len(), &data).await?;
    ensure!(status == StatusCode::CREATED, "{status} {body}");
    let grew_mib = peak_rss_kib(pid)?.saturating_sub(before) / 1024;
    // At most three 5 MiB parts at once, plus the transport's buffers (measured: 26 MiB);
    // without back pressure parts queue up as fast as the disk reads them (measured:
    // 54 MiB, and more the slower the store).
    ensure!(
        grew_mib < 40,
        "peak RSS grew by {grew_mib} MiB for a 96 MiB blob"
    );
    let object = http
        .head(format!(
            "{}/parley-media/blobs/{}/{blob}",
            s3.endpoint(),
            &blob[..2]
        ))
        .send()
        .await?;
    ensure!(object.status().is_success(), "object: {}", object.status());
    ensure!(
        object
            .headers()
            .get("content-length")
            .and_then(|v| v.to_str().ok())
            == Some(data.len().to_string().as_str())
    );
    Ok(())
}
