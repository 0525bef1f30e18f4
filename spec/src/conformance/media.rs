//! Media blobs: upload, hash check, dedup, access (client-api.md).

use anyhow::{Context, Result, ensure};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use parley_client_api::http::fill;
use reqwest::Method;
use serde_json::json;
use sha2::{Digest, Sha256};

use super::chats::{create, send};
use super::net::{Ctx, Peer, User, now_ms};
use super::peer::PEER_DEVICE;

fn blob(tag: &str) -> (Vec<u8>, String) {
    let bytes: Vec<u8> = format!("conformance blob {tag} {}", rand::random::<u64>())
        .into_bytes()
        .repeat(50);
    let hash = hex::encode(Sha256::digest(&bytes));
    (bytes, hash)
}

async fn upload_all(ctx: &Ctx, u: &User, hash: &str, bytes: &[u8]) -> Result<super::net::Resp> {
    ctx.put_bytes(
        u,
        &format!("/v1/media/{hash}/upload?offset=0&total={}", bytes.len()),
        bytes.to_vec(),
    )
    .await
}

pub(super) async fn upload(ctx: &Ctx) -> Result<()> {
    let u = ctx.register().await?;
    let (bytes, hash) = blob("upload");
    ctx.as_user(&u, Method::HEAD, &format!("/v1/media/{hash}"), None)
        .await?
        .expect(404, None)?;
    let half = bytes.len() / 2;
    let first = ctx
        .put_bytes(
            &u,
            &format!("/v1/media/{hash}/upload?offset=0&total={}", bytes.len()),
            bytes[..half].to_vec(),
        )
        .await?;
    first.expect(200, None)?;
    ensure!(
        first.body["received"] == half && first.body["complete"] == false,
        "after half: {}",
        first.body
    );
    let status = ctx
        .as_user(&u, Method::GET, &format!("/v1/media/{hash}/upload"), None)
        .await?;
    ensure!(
        status.body["received"] == half,
        "upload status: {}",
        status.body
    );
    let rest = ctx
        .put_bytes(
            &u,
            &format!(
                "/v1/media/{hash}/upload?offset={half}&total={}",
                bytes.len()
            ),
            bytes[half..].to_vec(),
        )
        .await?;
    rest.expect(201, None)?;
    ensure!(
        rest.body["complete"] == true && rest.body["received"] == bytes.len(),
        "complete: {}",
        rest.body
    );
    ctx.as_user(&u, Method::HEAD, &format!("/v1/media/{hash}"), None)
        .await?
        .expect(200, None)?;
    let down = ctx
        .as_user(&u, Method::GET, &format!("/v1/media/{hash}"), None)
        .await?;
    down.expect(200, None)?;
    ensure!(down.bytes == bytes, "the download differs from the upload");
    Ok(())
}

pub(super) async fn hash_mismatch(ctx: &Ctx) -> Result<()> {
    let u = ctx.register().await?;
    let (bytes, _) = blob("mismatch");
    let (_, other_hash) = blob("other");
    upload_all(ctx, &u, &other_hash, &bytes)
        .await?
        .expect(400, Some("hash_mismatch"))?;
    ctx.as_user(&u, Method::HEAD, &format!("/v1/media/{other_hash}"), None)
        .await?
        .expect(404, None)?;
    Ok(())
}

pub(super) async fn dedup(ctx: &Ctx) -> Result<()> {
    let (a, b) = (ctx.register().await?, ctx.register().await?);
    let (bytes, hash) = blob("dedup");
    upload_all(ctx, &a, &hash, &bytes)
        .await?
        .expect(201, None)?;
    let again = upload_all(ctx, &b, &hash, &bytes).await?;
    again.expect(201, None)?;
    ensure!(
        again.body["complete"] == true && again.body["received"] == bytes.len(),
        "second upload: {}",
        again.body
    );
    let status = ctx
        .as_user(&b, Method::GET, &format!("/v1/media/{hash}/upload"), None)
        .await?;
    ensure!(
        status.body["complete"] == true,
        "upload status of a stored blob: {}",
        status.body
    );
    Ok(())
}

pub(super) async fn access(ctx: &Ctx) -> Result<()> {
    let [a, b, c] = ctx.register_many().await?;
    let (bytes, hash) = blob("access");
    upload_all(ctx, &a, &hash, &bytes)
        .await?
        .expect(201, None)?;
    let path = format!("/v1/media/{hash}");
    ctx.as_user(&b, Method::GET, &path, None)
        .await?
        .expect(404, Some("unknown_blob"))?;
    // c may not list a blob it neither uploaded nor received.
    let chat_c = create(ctx, &c, &[&b], None).await?;
    send(ctx, &c, &chat_c, "steal", b"x", json!({"blobs": [hash]}))
        .await?
        .expect(403, Some("blob_forbidden"))?;
    let chat = create(ctx, &a, &[&b], None).await?;
    send(
        ctx,
        &a,
        &chat,
        "file",
        b"a media message",
        json!({"blobs": [hash]}),
    )
    .await?
    .expect(201, None)?;
    let down = ctx.as_user(&b, Method::GET, &path, None).await?;
    down.expect(200, None)?;
    ensure!(down.bytes == bytes, "the member's download differs");
    ctx.as_user(&c, Method::GET, &path, None)
        .await?
        .expect(404, Some("unknown_blob"))?;
    Ok(())
}

pub(super) async fn offset(ctx: &Ctx) -> Result<()> {
    let u = ctx.register().await?;
    let (bytes, hash) = blob("offset");
    let r = ctx
        .put_bytes(
            &u,
            &format!("/v1/media/{hash}/upload?offset=10&total={}", bytes.len()),
            bytes[10..20].to_vec(),
        )
        .await?;
    r.expect(409, Some("upload_offset"))?;
    Ok(())
}

pub(super) async fn federated(ctx: &Ctx) -> Result<()> {
    let federates = ctx
        .call(Method::GET, parley_federation::directory::PATH, None, None)
        .await?
        .status
        == 200;
    if !federates {
        return super::skip("federation is off on this server (no key directory)");
    }
    // The suite's peer is the sender's server: a user of the peer sends a file in a chat
    // the server hosts; a local member downloads it through the server.
    let peer = ctx.new_peer().await?;
    let a = ctx.register().await?;
    let remote = peer.user(&ctx.username());
    let r = ctx
        .as_user(
            &a,
            Method::POST,
            "/v1/chats",
            Some(json!({"members": [remote], "name": "media"})),
        )
        .await?;
    r.ok().context("a chat with a user of the suite's peer")?;
    let chat = r.body["chat_id"].as_str().context("no chat_id")?.to_owned();
    let (bytes, hash) = blob("federated");
    let mut wrong = bytes.clone();
    wrong[0] ^= 1;
    // The first fetch gets bytes that do not hash to the address, later ones the right.
    peer.serve_blob(&hash, vec![wrong.clone(), bytes.clone()]);
    let server = ctx.server_name().await?;
    let txn = format!("conformance-media-{}", rand::random::<u64>());
    let path = fill(parley_federation::api::send::PATH, &[("txn_id", &txn)]);
    let body = json!({
        "origin": peer.name.as_str(),
        "origin_ts": now_ms(),
        "sends": [{
            "chat_id": chat,
            "sender": remote,
            "sender_device": PEER_DEVICE,
            "client_msg_id": "federated-file",
            "payload": STANDARD.encode("a file reference"),
            "blobs": [hash],
        }],
    })
    .to_string()
    .into_bytes();
    let h = Peer::sign_now(&peer.signer(), "PUT", server, &path, &body)?;
    let r = ctx.fed_call(Method::PUT, &path, Some(body), h).await?;
    r.expect(200, None)?;
    ensure!(
        r.body["sends"][0]["seq"].is_i64(),
        "the hub did not sequence the peer user's send: {}",
        r.body
    );
    let media = format!("/v1/media/{hash}");
    let first = ctx.as_user(&a, Method::GET, &media, None).await?;
    ensure!(
        !(200..300).contains(&first.status) && first.bytes != wrong,
        "bytes that do not match their address were served: {}",
        first.status
    );
    let second = ctx.as_user(&a, Method::GET, &media, None).await?;
    second
        .expect(200, None)
        .context("the blob, fetched again")?;
    ensure!(second.bytes == bytes, "the blob's bytes differ");
    let fetches = |p: &Peer| {
        p.received()
            .into_iter()
            .filter(|r| r.method == "GET" && r.path.ends_with(&hash))
            .collect::<Vec<_>>()
    };
    let before = fetches(&peer);
    ensure!(
        before.iter().all(|r| r.signed.as_deref() == Ok(server)),
        "a media fetch not signed by {server}: {:?}",
        before.iter().map(|r| &r.signed).collect::<Vec<_>>()
    );
    // Kept once: later downloads are served from the server's copy.
    let third = ctx.as_user(&a, Method::GET, &media, None).await?;
    third.expect(200, None)?;
    ensure!(third.bytes == bytes, "the blob's bytes differ");
    ensure!(
        fetches(&peer).len() == before.len(),
        "the server fetched a blob it already holds again"
    );
    Ok(())
}
