//! Federation: key discovery, signatures, policy, transactions (federation.md).
//!
//! The suite plays a peer server: it signs with its own key and serves its key
//! directory on a loopback listener, so the server under test must run in federation
//! test mode and allow the suite's peer address (`--peer-ip`, default 127.0.0.5).

use anyhow::{Context, Result, ensure};
use base64::Engine as _;
use parley_client_api::http::fill;
use parley_federation::ServerName;
use parley_federation::directory;
use parley_federation::keys::ServerSigningKey;
use parley_federation::signing::profile::{RequestSigner, random_nonce};
use reqwest::Method;
use serde_json::{Value, json};

use super::chats::{create, send_ok};
use super::net::{Ctx, Peer, Resp, now_ms, server_of};
use super::socket::Socket;

/// Skips unless the server serves a key directory (federation on).
async fn require_federation(ctx: &Ctx) -> Result<Resp> {
    let r = ctx.call(Method::GET, directory::PATH, None, None).await?;
    if r.status == 404 {
        return super::skip("federation is off on this server (no key directory)");
    }
    Ok(r)
}

/// A path the suite may GET signed: the devices of a fresh local user; and that user's
/// device id.
async fn devices_path(ctx: &Ctx) -> Result<(String, String)> {
    let u = ctx.register().await?;
    Ok((
        fill(
            parley_federation::api::keys::user_devices::PATH,
            &[("user_id", &u.user_id)],
        ),
        u.device_id,
    ))
}

fn error_code(r: &Resp) -> &str {
    r.body.get("error").and_then(Value::as_str).unwrap_or("")
}

pub(super) async fn directory(ctx: &Ctx) -> Result<()> {
    let r = require_federation(ctx).await?;
    r.expect(200, None)?;
    let name = ServerName::try_from(ctx.server_name().await?)?;
    let headers: Vec<(String, String)> = r
        .headers
        .iter()
        .map(|(n, v)| (n.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
        .collect();
    let verified = directory::verify_response(&name, &headers, &r.bytes, now_ms())
        .context("the directory does not verify")?;
    ensure!(
        !verified.keys.is_empty(),
        "the directory has no verifiable current key"
    );
    let ct = r
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    ensure!(ct.starts_with(directory::MEDIA_TYPE), "content-type {ct:?}");
    Ok(())
}

pub(super) async fn version(ctx: &Ctx) -> Result<()> {
    require_federation(ctx).await?;
    let r = ctx
        .call(
            Method::GET,
            parley_federation::api::version::PATH,
            None,
            None,
        )
        .await?;
    r.expect(200, None)?;
    let versions = r.body["versions"].as_array().cloned().unwrap_or_default();
    ensure!(
        versions.contains(&json!("parley-fed-v1")),
        "versions: {}",
        r.body
    );
    Ok(())
}

pub(super) async fn valid(ctx: &Ctx) -> Result<()> {
    require_federation(ctx).await?;
    let peer = ctx.peer().await?;
    let dest = ctx.server_name().await?;
    let (path, device) = devices_path(ctx).await?;
    let h = Peer::sign_now(&peer.signer(), "GET", dest, &path, b"")?;
    let r = ctx.fed_call(Method::GET, &path, None, h).await?;
    r.expect(200, None)
        .with_context(|| format!("is the suite's peer {} allowed by the server?", peer.name))?;
    ensure!(r.body["devices"] == json!([device]), "devices: {}", r.body);
    Ok(())
}

pub(super) async fn unsigned(ctx: &Ctx) -> Result<()> {
    require_federation(ctx).await?;
    let (path, _) = devices_path(ctx).await?;
    let r = ctx.fed_call(Method::GET, &path, None, vec![]).await?;
    r.expect(401, Some("missing_signature"))?;
    ensure!(
        r.headers.contains_key("accept-signature"),
        "a 401 without Accept-Signature"
    );
    Ok(())
}

pub(super) async fn forged(ctx: &Ctx) -> Result<()> {
    require_federation(ctx).await?;
    let peer = ctx.peer().await?;
    let dest = ctx.server_name().await?;
    let (path, _) = devices_path(ctx).await?;
    // Signed by a key the origin does not publish.
    let forger = RequestSigner::new(
        peer.name.clone(),
        ServerSigningKey::from_seed(&rand::random()),
    );
    let h = Peer::sign_now(&forger, "GET", dest, &path, b"")?;
    let r = ctx.fed_call(Method::GET, &path, None, h).await?;
    ensure!(
        r.status == 401,
        "a request signed with an unpublished key: {} {}",
        r.status,
        r.body
    );
    ensure!(
        matches!(error_code(&r), "unknown_key" | "bad_signature"),
        "code {}",
        r.body
    );
    // The published key id with signature bytes that are not its signature.
    let mut h = Peer::sign_now(&peer.signer(), "GET", dest, &path, b"")?;
    for (name, value) in &mut h {
        if name == "signature" {
            *value = tamper(value)?;
        }
    }
    let r = ctx.fed_call(Method::GET, &path, None, h).await?;
    r.expect(401, Some("bad_signature"))?;
    ensure!(
        r.headers.contains_key("accept-signature"),
        "a 401 without Accept-Signature"
    );
    Ok(())
}

/// Flips one bit of the signature in `parley=:BASE64:`.
fn tamper(field: &str) -> Result<String> {
    let (label, rest) = field.split_once("=:").context("signature field")?;
    let b64 = rest.trim_end_matches(':');
    let mut sig = base64::engine::general_purpose::STANDARD.decode(b64)?;
    sig[0] ^= 1;
    Ok(format!(
        "{label}=:{}:",
        base64::engine::general_purpose::STANDARD.encode(sig)
    ))
}

pub(super) async fn replayed(ctx: &Ctx) -> Result<()> {
    require_federation(ctx).await?;
    let peer = ctx.peer().await?;
    let dest = ctx.server_name().await?;
    let (path, _) = devices_path(ctx).await?;
    let h = Peer::sign_now(&peer.signer(), "GET", dest, &path, b"")?;
    ctx.fed_call(Method::GET, &path, None, h.clone())
        .await?
        .expect(200, None)?;
    let again = ctx.fed_call(Method::GET, &path, None, h).await?;
    again.expect(401, Some("replayed_nonce"))?;
    Ok(())
}

pub(super) async fn stale(ctx: &Ctx) -> Result<()> {
    require_federation(ctx).await?;
    let peer = ctx.peer().await?;
    let dest = ctx.server_name().await?;
    let (path, _) = devices_path(ctx).await?;
    let old = now_ms() - 10 * 60 * 1000;
    let h = Peer::sign(
        &peer.signer(),
        "GET",
        dest,
        &path,
        b"",
        old,
        &random_nonce(),
    )?;
    ctx.fed_call(Method::GET, &path, None, h)
        .await?
        .expect(401, Some("stale_signature"))?;
    let future = now_ms() + 10 * 60 * 1000;
    let h = Peer::sign(
        &peer.signer(),
        "GET",
        dest,
        &path,
        b"",
        future,
        &random_nonce(),
    )?;
    ctx.fed_call(Method::GET, &path, None, h)
        .await?
        .expect(401, Some("stale_signature"))?;
    Ok(())
}

pub(super) async fn digest(ctx: &Ctx) -> Result<()> {
    require_federation(ctx).await?;
    let peer = ctx.peer().await?;
    let dest = ctx.server_name().await?;
    let u = ctx.register().await?;
    let path = parley_federation::api::keys::claim::PATH;
    let body = json!({"users": [u.user_id]}).to_string().into_bytes();
    let h = Peer::sign_now(&peer.signer(), "POST", dest, path, &body)?;
    let other = json!({"users": [u.user_id, u.user_id]})
        .to_string()
        .into_bytes();
    let r = ctx.fed_call(Method::POST, path, Some(other), h).await?;
    r.expect(401, Some("bad_digest"))?;
    Ok(())
}

pub(super) async fn denied(ctx: &Ctx) -> Result<()> {
    require_federation(ctx).await?;
    let peer = ctx.denied_peer().await?;
    let dest = ctx.server_name().await?;
    let (path, _) = devices_path(ctx).await?;
    let h = Peer::sign_now(&peer.signer(), "GET", dest, &path, b"")?;
    let r = ctx.fed_call(Method::GET, &path, None, h).await?;
    r.expect(403, Some("federation_denied"))
        .with_context(|| format!("the denied peer is {}", peer.name))?;
    let fetches = peer.fetches.load(std::sync::atomic::Ordering::SeqCst);
    ensure!(
        fetches == 0,
        "the server fetched a denied origin's key directory {fetches} time(s)"
    );
    Ok(())
}

pub(super) async fn txn_idempotent(ctx: &Ctx) -> Result<()> {
    require_federation(ctx).await?;
    let peer = ctx.peer().await?;
    let dest = ctx.server_name().await?;
    let txn = format!("conformance-{}", random_nonce());
    let path = fill(parley_federation::api::send::PATH, &[("txn_id", &txn)]);
    let body = json!({"origin": peer.name.as_str(), "origin_ts": now_ms()})
        .to_string()
        .into_bytes();
    let mut answers = Vec::new();
    for _ in 0..2 {
        let h = Peer::sign_now(&peer.signer(), "PUT", dest, &path, &body)?;
        let r = ctx
            .fed_call(Method::PUT, &path, Some(body.clone()), h)
            .await?;
        r.expect(200, None)?;
        answers.push(r.body);
    }
    ensure!(
        answers[0] == answers[1],
        "a resent transaction got another answer: {answers:?}"
    );
    // The origin field must be the signer.
    let lie = json!({"origin": "elsewhere.example", "origin_ts": now_ms()})
        .to_string()
        .into_bytes();
    let path = fill(
        parley_federation::api::send::PATH,
        &[("txn_id", &format!("{txn}-lie"))],
    );
    let h = Peer::sign_now(&peer.signer(), "PUT", dest, &path, &lie)?;
    let r = ctx.fed_call(Method::PUT, &path, Some(lie), h).await?;
    ensure!(
        r.status == 400,
        "a transaction whose origin is not its signer: {} {}",
        r.status,
        r.body
    );
    Ok(())
}

pub(super) async fn cross_server(ctx: &Ctx) -> Result<()> {
    let Some(second) = ctx.second.clone() else {
        return super::skip("needs the URLs of two federating servers");
    };
    let a = ctx.register().await?;
    let b = ctx.register_on(&second).await?;
    ensure!(
        server_of(&a.user_id)? != server_of(&b.user_id)?,
        "both URLs are the same server"
    );
    let chat = create(ctx, &a, &[&b], None).await?;
    ensure!(
        chat.ends_with(&format!(":{}", server_of(&a.user_id)?)),
        "the chat {chat} is not hosted by its creator's server"
    );
    let seq = send_ok(ctx, &a, &chat, "across").await?;
    let (mut s, replay) = Socket::connect_synced(&b).await?;
    let found = replay
        .into_iter()
        .find(|f| f["type"] == "event" && f["event"]["chat_id"] == chat.as_str());
    let f = match found {
        Some(f) => f,
        None => {
            s.until("the event from the other server", |f| {
                f["type"] == "event" && f["event"]["chat_id"] == chat.as_str()
            })
            .await?
        }
    };
    ensure!(
        f["event"]["seq"] == seq && f["event"]["sender"] == a.user_id.as_str(),
        "event: {f}"
    );
    s.close().await;
    Ok(())
}
