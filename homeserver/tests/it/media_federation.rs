//! Media across servers: a recipient's server fetches a blob from the sender's server
//! over signed federation requests, checks its hash, keeps one copy and serves it to its
//! members; the origin serves only servers with members in a chat referring to it. And
//! the rule every send follows: it may list only blobs its sender uploaded or may read.

use std::path::Path;
use std::time::Duration;

use anyhow::{Result, bail, ensure};
use parley_client_api::ChatId;
use reqwest::StatusCode;
use serde_json::Value;

use crate::federation_chats::{create_group, impersonate, wait_listed};
use crate::harness::{Backend, Server, User};
use crate::media::{blob_of, get_blob, put, send_with_blob};

crate::on_both_backends!(
    a_blob_crosses_servers_once_and_only_to_members,
    a_tampered_blob_is_refused_and_not_kept,
    blobs_of_a_followers_user_and_forwards_cross_servers,
    a_send_may_list_only_blobs_its_sender_may_read,
    an_interrupted_fetch_resumes_where_it_stopped,
    a_blob_crosses_a_libp2p_link,
);

fn bytes(len: usize, seed: u32) -> Vec<u8> {
    (0..len as u32)
        .map(|i| (i.wrapping_mul(31).wrapping_add(seed) % 251) as u8)
        .collect()
}

async fn fetches(server: &Server, result: &str) -> Result<f64> {
    server
        .metric(&format!(
            "parley_media_federation_fetches_total{{result=\"{result}\"}}"
        ))
        .await
}

/// Blob files in a server's local media store.
fn stored_blobs(server: &Server) -> usize {
    fn count(p: &Path) -> usize {
        std::fs::read_dir(p).map_or(0, |entries| {
            entries
                .flatten()
                .map(|e| {
                    let path = e.path();
                    if path.is_dir() { count(&path) } else { 1 }
                })
                .sum()
        })
    }
    count(&server.data_dir().join("media").join("blobs"))
}

/// Uploads `data` as `who` in one request.
async fn upload(server: &Server, who: &User, data: &[u8]) -> Result<String> {
    let blob = blob_of(data);
    let (status, body) = put(server, who, &blob, 0, data.len(), data).await?;
    ensure!(status == StatusCode::CREATED, "upload: {status} {body}");
    Ok(blob)
}

async fn send(server: &Server, who: &User, chat: &ChatId, id: &str, blob: &str) -> Result<()> {
    let (status, body) = send_with_blob(server, who, chat, id, blob).await?;
    ensure!(status == StatusCode::CREATED, "send {id}: {status} {body}");
    Ok(())
}

/// Downloads until it succeeds (the event naming the blob reaches the recipient's server
/// shortly after the hub took it), up to 20 s.
async fn download_eventually(server: &Server, who: &User, blob: &str) -> Result<Vec<u8>> {
    let mut last = (StatusCode::OK, Vec::new());
    for _ in 0..200 {
        last = get_blob(server, who, blob, None).await?;
        if last.0 == StatusCode::OK {
            return Ok(last.1);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!(
        "{blob} never downloadable on {}: {} {}",
        server.name(),
        last.0,
        String::from_utf8_lossy(&last.1)
    )
}

/// A signed `GET /_parley/fed/v1/media/{blob}` from `from` (its own key) to `to`.
async fn fetch_as(from: &Server, to: &Server, blob: &str) -> Result<(u16, Value)> {
    use parley_federation::api::{Method, media};
    let client = impersonate(from)?;
    let to = parley_federation::ServerName::try_from(to.name())?;
    let resp = client
        .send(&to, Method::Get, &media::path(blob), None)
        .await?;
    Ok((
        resp.status,
        serde_json::from_slice(&resp.body).unwrap_or(Value::Null),
    ))
}

async fn a_blob_crosses_servers_once_and_only_to_members(backend: Backend) -> Result<()> {
    let a = Server::start_peer(backend, "127.0.0.1", "").await?;
    let b = Server::start_peer(backend, "127.0.0.2", "").await?;
    let c = Server::start_peer(backend, "127.0.0.3", "").await?;
    let alice = a.register("alice").await?;
    let [bob, carol, eve] = [
        b.register("bob").await?,
        b.register("carol").await?,
        b.register("eve").await?,
    ];
    let chat = create_group(&a, &alice, &[&bob, &carol]).await?;
    wait_listed(&b, &bob, &chat).await?;

    // alice's file is uploaded to A, A is the hub: her send refers to it.
    let data = bytes(700 * 1024 + 17, 1);
    let blob = upload(&a, &alice, &data).await?;
    send(&a, &alice, &chat, "m1", &blob).await?;

    // bob downloads through B: B fetched it from A (signed), checked and kept it.
    ensure!(download_eventually(&b, &bob, &blob).await? == data);
    ensure!(fetches(&b, "stored").await? == 1.0);
    ensure!(a.metric("parley_media_served_to_peers_total").await? == 1.0);
    ensure!(stored_blobs(&b) == 1, "one copy on B");
    // Ranged, from B's copy.
    let (status, got) = get_blob(&b, &bob, &blob, Some("bytes=1000-1999")).await?;
    ensure!(status == StatusCode::PARTIAL_CONTENT && got == data[1000..2000]);

    // Again, and a second member on B: served from B's copy, nothing fetched again.
    ensure!(get_blob(&b, &bob, &blob, None).await? == (StatusCode::OK, data.clone()));
    ensure!(get_blob(&b, &carol, &blob, None).await? == (StatusCode::OK, data.clone()));
    ensure!(fetches(&b, "stored").await? == 1.0);
    ensure!(a.metric("parley_media_served_to_peers_total").await? == 1.0);
    ensure!(stored_blobs(&b) == 1);

    // A user of B outside the chat gets nothing, and B asks A for nothing.
    let (status, _) = get_blob(&b, &eve, &blob, None).await?;
    ensure!(status == StatusCode::NOT_FOUND, "eve: {status}");
    // An address no chat refers to: unknown, nothing fetched.
    let unknown = blob_of(b"never uploaded");
    let (status, _) = get_blob(&b, &bob, &unknown, None).await?;
    ensure!(status == StatusCode::NOT_FOUND);
    ensure!(fetches(&b, "failed").await? == 0.0);

    // The origin's side: C has no member in the chat, so A serves it nothing; B gets
    // nothing for an address it has no business with; unsigned requests are refused.
    let (status, body) = fetch_as(&c, &a, &blob).await?;
    ensure!(
        status == 404 && body["error"] == "not_found",
        "{status} {body}"
    );
    let (status, _) = fetch_as(&b, &a, &unknown).await?;
    ensure!(status == 404);
    let (status, _) = fetch_as(&b, &a, &blob).await?;
    ensure!(status == 200, "B may fetch it: {status}");
    let resp = reqwest::get(format!("{}/_parley/fed/v1/media/{blob}", a.base)).await?;
    ensure!(
        resp.status() == StatusCode::UNAUTHORIZED,
        "{}",
        resp.status()
    );
    // Ranged over federation too (a fetch resumes).
    let resp = {
        use parley_federation::api::media;
        let to = parley_federation::ServerName::try_from(a.name())?;
        let mut r = impersonate(&b)?
            .get_streamed(
                &to,
                &media::path(&blob),
                700 * 1024,
                Duration::from_secs(10),
            )
            .await?;
        let mut got = Vec::new();
        while let Some(chunk) = r.chunk().await? {
            got.extend_from_slice(&chunk);
        }
        (r.status, got)
    };
    ensure!(
        resp == (206, data[700 * 1024..].to_vec()),
        "ranged: {}",
        resp.0
    );
    Ok(())
}

async fn a_tampered_blob_is_refused_and_not_kept(backend: Backend) -> Result<()> {
    let a = Server::start_peer(backend, "127.0.0.1", "").await?;
    let b = Server::start_peer(backend, "127.0.0.2", "").await?;
    let alice = a.register("alice").await?;
    let bob = b.register("bob").await?;
    let chat = create_group(&a, &alice, &[&bob]).await?;
    wait_listed(&b, &bob, &chat).await?;
    let data = bytes(300 * 1024, 2);
    let blob = upload(&a, &alice, &data).await?;
    send(&a, &alice, &chat, "m1", &blob).await?;

    // Flip one byte of A's stored copy: A now serves bytes that do not hash to the
    // address. B refuses them, keeps nothing, and says so.
    let file = a
        .data_dir()
        .join("media/blobs")
        .join(&blob[..2])
        .join(&blob);
    let mut tampered = std::fs::read(&file)?;
    tampered[1234] ^= 0xff;
    std::fs::write(&file, &tampered)?;
    let mut refused = false;
    for _ in 0..200 {
        if fetches(&b, "hash_mismatch").await? >= 1.0 {
            refused = true;
            break;
        }
        let (status, _) = get_blob(&b, &bob, &blob, None).await?;
        ensure!(status != StatusCode::OK, "B served tampered bytes");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ensure!(refused, "B never fetched the tampered blob");
    let (status, body) = get_blob(&b, &bob, &blob, None).await?;
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    ensure!(
        status == StatusCode::INTERNAL_SERVER_ERROR && body["error"] == "internal",
        "{status} {body}"
    );
    ensure!(stored_blobs(&b) == 0, "nothing kept");
    ensure!(fetches(&b, "stored").await? == 0.0);

    // With the right bytes back on A, the same download works.
    std::fs::write(&file, &data)?;
    ensure!(get_blob(&b, &bob, &blob, None).await? == (StatusCode::OK, data));
    ensure!(fetches(&b, "stored").await? == 1.0);
    ensure!(stored_blobs(&b) == 1);
    Ok(())
}

async fn blobs_of_a_followers_user_and_forwards_cross_servers(backend: Backend) -> Result<()> {
    let a = Server::start_peer(backend, "127.0.0.1", "").await?;
    let b = Server::start_peer(backend, "127.0.0.2", "").await?;
    let c = Server::start_peer(backend, "127.0.0.3", "").await?;
    let alice = a.register("alice").await?;
    let bob = b.register("bob").await?;
    let dave = c.register("dave").await?;
    let chat = create_group(&a, &alice, &[&bob]).await?;
    wait_listed(&b, &bob, &chat).await?;

    // bob's file lives on B (his server); the chat's hub A records the reference only.
    let data = bytes(200 * 1024 + 5, 3);
    let blob = upload(&b, &bob, &data).await?;
    send(&b, &bob, &chat, "b1", &blob).await?;
    ensure!(download_eventually(&a, &alice, &blob).await? == data);
    ensure!(fetches(&a, "stored").await? == 1.0);

    // alice forwards it to a chat with dave on C: her send is checked against A's copy
    // (she may read it), and C fetches it from A, the forwarder's server.
    let chat2 = create_group(&a, &alice, &[&dave]).await?;
    wait_listed(&c, &dave, &chat2).await?;
    send(&a, &alice, &chat2, "fwd", &blob).await?;
    ensure!(download_eventually(&c, &dave, &blob).await? == data);
    ensure!(fetches(&c, "stored").await? == 1.0);
    // dave is in no chat with anyone on B: B serves C nothing.
    let (status, _) = fetch_as(&c, &b, &blob).await?;
    ensure!(status == 404);
    Ok(())
}

async fn a_send_may_list_only_blobs_its_sender_may_read(backend: Backend) -> Result<()> {
    let server = Server::start(backend).await?;
    let [alice, bob, carol, eve, mallory] = [
        server.register("alice").await?,
        server.register("bob").await?,
        server.register("carol").await?,
        server.register("eve").await?,
        server.register("mallory").await?,
    ];
    let chat = server.create_chat(&alice, &[&bob]).await?;
    let data = bytes(50 * 1024, 4);
    let blob = upload(&server, &alice, &data).await?;
    send(&server, &alice, &chat, "m1", &blob).await?;

    // eve learned the address: she may neither refer to it in her own chat, nor make it
    // hers by "uploading" it (the server has it, so it takes no bytes from her).
    let theirs = server.create_chat(&eve, &[&mallory]).await?;
    let (status, body) = send_with_blob(&server, &eve, &theirs, "x1", &blob).await?;
    ensure!(
        status == StatusCode::FORBIDDEN && body["error"] == "blob_forbidden",
        "{status} {body}"
    );
    let (status, _) = put(&server, &eve, &blob, 0, data.len(), &data[..10]).await?;
    ensure!(status == StatusCode::CREATED);
    let (status, body) = send_with_blob(&server, &eve, &theirs, "x2", &blob).await?;
    ensure!(
        status == StatusCode::FORBIDDEN && body["error"] == "blob_forbidden",
        "{body}"
    );
    // Nothing was stored: the chat has no event, and mallory cannot download the blob.
    let summary = server.chats(&eve).await?;
    ensure!(
        summary
            .iter()
            .any(|c| c.chat_id == theirs && c.last_seq == 0),
        "{summary:?}"
    );
    let (status, _) = get_blob(&server, &mallory, &blob, None).await?;
    ensure!(status == StatusCode::NOT_FOUND);

    // An address nobody uploaded: unknown.
    let (status, body) = send_with_blob(&server, &eve, &theirs, "x3", &blob_of(b"nothing")).await?;
    ensure!(
        status == StatusCode::NOT_FOUND && body["error"] == "unknown_blob",
        "{status} {body}"
    );

    // bob received it, so he may forward it; carol then downloads it.
    let fwd = server.create_chat(&bob, &[&carol]).await?;
    send(&server, &bob, &fwd, "f1", &blob).await?;
    ensure!(get_blob(&server, &carol, &blob, None).await? == (StatusCode::OK, data));
    Ok(())
}

async fn an_interrupted_fetch_resumes_where_it_stopped(backend: Backend) -> Result<()> {
    // A writes every federation request it receives to `dump` (exact bytes).
    let dump = tempfile::tempdir()?;
    let a = Server::start_peer(
        backend,
        "127.0.0.1",
        &format!("dump_dir = \"{}\"", dump.path().display()),
    )
    .await?;
    let b = Server::start_peer(backend, "127.0.0.2", "").await?;
    let alice = a.register("alice").await?;
    let bob = b.register("bob").await?;
    let chat = create_group(&a, &alice, &[&bob]).await?;
    wait_listed(&b, &bob, &chat).await?;
    let data = bytes(400 * 1024, 5);
    let blob = upload(&a, &alice, &data).await?;
    send(&a, &alice, &chat, "m1", &blob).await?;
    for _ in 0..200 {
        if b.chats(&bob)
            .await?
            .iter()
            .any(|c| c.chat_id == chat && c.last_seq >= 1)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // What an earlier fetch cut off after 100,000 bytes left in B's staging directory.
    let partial = b
        .data_dir()
        .join("uploads")
        .join(format!("{blob}.fetch.part"));
    std::fs::write(&partial, &data[..100_000])?;
    ensure!(get_blob(&b, &bob, &blob, None).await? == (StatusCode::OK, data));
    ensure!(!partial.exists());
    ensure!(fetches(&b, "stored").await? == 1.0);
    // B asked A only for the rest.
    let mut asked = Vec::new();
    for entry in std::fs::read_dir(dump.path())? {
        let raw = std::fs::read_to_string(entry?.path())?;
        if raw.contains(&format!("/_parley/fed/v1/media/{blob}")) {
            asked.push(raw);
        }
    }
    ensure!(asked.len() == 1, "{asked:?}");
    ensure!(asked[0].contains("range: bytes=100000-"), "{}", asked[0]);
    Ok(())
}

/// A and B federate over libp2p (B names A as a peer): B fetches alice's blob from A on
/// a libp2p stream, streamed and checked like over HTTP.
async fn a_blob_crosses_a_libp2p_link(backend: Backend) -> Result<()> {
    let a_port = parley_testkit::free_port("127.0.0.1");
    let a = Server::start_peer(
        backend,
        "127.0.0.1",
        &format!("[federation.libp2p]\nlisten = [\"/ip4/127.0.0.1/tcp/{a_port}\"]\n"),
    )
    .await?;
    let b = Server::start_peer(
        backend,
        "127.0.0.2",
        &format!(
            "[federation.libp2p]\nauto = false\npeers = {{ \"{}\" = \"/ip4/127.0.0.1/tcp/{a_port}\" }}\n",
            a.name()
        ),
    )
    .await?;
    let alice = a.register("alice").await?;
    let bob = b.register("bob").await?;
    let chat = create_group(&a, &alice, &[&bob]).await?;
    wait_listed(&b, &bob, &chat).await?;
    let data = bytes(3 * 1024 * 1024 + 5, 7);
    let blob = upload(&a, &alice, &data).await?;
    send(&a, &alice, &chat, "m1", &blob).await?;
    ensure!(download_eventually(&b, &bob, &blob).await? == data);
    ensure!(fetches(&b, "stored").await? == 1.0);
    let out = b
        .metric("parley_federation_libp2p_requests_total{direction=\"outbound\"}")
        .await?;
    let served = a
        .metric("parley_federation_libp2p_requests_total{direction=\"inbound\"}")
        .await?;
    ensure!(out >= 1.0 && served >= 1.0, "libp2p out {out}, in {served}");
    Ok(())
}
