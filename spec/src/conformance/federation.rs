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
use super::net::{Ctx, Peer, Resp, now_ms, server_of, verify_directory};
use super::peer::{PeerKey, Received};
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
    let verified =
        verify_directory(&name, &r.headers, &r.bytes).context("the directory does not verify")?;
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
    let fetches = peer.fetches();
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

/// A signed GET of a fresh local user's devices with `key` of `peer`; the answer.
async fn signed_get(ctx: &Ctx, peer: &Peer, key: &PeerKey) -> Result<Resp> {
    let dest = ctx.server_name().await?;
    let (path, _) = devices_path(ctx).await?;
    let h = Peer::sign_now(&peer.signer_with(key), "GET", dest, &path, b"")?;
    ctx.fed_call(Method::GET, &path, None, h).await
}

pub(super) async fn key_cache(ctx: &Ctx) -> Result<()> {
    require_federation(ctx).await?;
    // The rotating peer: its directory is fetched once and then cached.
    let peer = ctx.rotating_peer().await?;
    let k1 = peer.current_keys()[0];
    signed_get(ctx, peer, &k1)
        .await?
        .expect(200, None)
        .context("a request signed with the peer's published key")?;
    signed_get(ctx, peer, &k1).await?.expect(200, None)?;
    ensure!(
        peer.fetches() == 1,
        "two requests fetched the origin's directory {} times (it is cacheable for an hour)",
        peer.fetches()
    );
    // An unknown kid right after a fetch: refused, and no refetch within the minute.
    for _ in 0..2 {
        signed_get(ctx, peer, &PeerKey::fresh())
            .await?
            .expect(401, Some("unknown_key"))?;
    }
    ensure!(
        peer.fetches() == 1,
        "unknown kids within a minute of a fetch refetched the directory ({} fetches)",
        peer.fetches()
    );
    // A retired key verifies no request, whatever its signature.
    let retiring = ctx.new_peer().await?;
    let (old, new) = (retiring.current_keys()[0], PeerKey::fresh());
    retiring.set_keys(vec![new], &[old]);
    signed_get(ctx, &retiring, &old)
        .await?
        .expect(401, Some("unknown_key"))
        .context("a request signed with a retired key")?;
    signed_get(ctx, &retiring, &new).await?.expect(200, None)?;
    // A key past its `exp` verifies nothing, even while its directory is cached.
    let expiring = ctx.new_peer().await?;
    let now = now_ms() / 1000;
    let short = PeerKey {
        exp: now + 2,
        ..expiring.current_keys()[0]
    };
    expiring.set_keys(vec![short], &[]);
    signed_get(ctx, &expiring, &short)
        .await?
        .expect(200, None)
        .context("a request signed before the key's exp")?;
    let after = (short.exp + 1) * 1000 + 100;
    tokio::time::sleep(std::time::Duration::from_millis(
        u64::try_from(after - now_ms()).unwrap_or(0),
    ))
    .await;
    signed_get(ctx, &expiring, &short)
        .await?
        .expect(401, Some("unknown_key"))
        .context("a request signed with a key past its exp")?;
    Ok(())
}

/// How long after a fetch a verifier may fetch an origin's directory again.
const REFETCH_AFTER_MS: i64 = 61_000;

pub(super) async fn key_rotation(ctx: &Ctx) -> Result<()> {
    require_federation(ctx).await?;
    let peer = ctx.rotating_peer().await?;
    let k1 = peer.current_keys()[0];
    if peer.fetches() == 0 {
        // FK3 did not run: the server learns the first key now.
        signed_get(ctx, peer, &k1).await?.expect(200, None)?;
    }
    // The next key is published beside the current one: the current still signs.
    let k2 = PeerKey::fresh();
    peer.set_keys(vec![k1, k2], &[]);
    signed_get(ctx, peer, &k1).await?.expect(200, None)?;
    // The rotation completes: k2 signs, k1 is retired. Once a minute has passed since
    // the last fetch, the server refetches on the unknown kid and follows.
    peer.set_keys(vec![k2], &[k1]);
    let wait = peer.last_fetch_ms() + REFETCH_AFTER_MS - now_ms();
    if wait > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(wait.unsigned_abs())).await;
    }
    let before = peer.fetches();
    signed_get(ctx, peer, &k2)
        .await?
        .expect(200, None)
        .context("a request signed with the next key, a minute after the last fetch")?;
    ensure!(
        peer.fetches() == before + 1,
        "the server did not refetch the directory on the new kid"
    );
    signed_get(ctx, peer, &k1)
        .await?
        .expect(401, Some("unknown_key"))
        .context("a request signed with the retired key")?;
    Ok(())
}

/// The `client_msg_id`s [`deliver_through_refusals`] sends.
const OUTBOX_MSGS: [&str; 3] = ["outbox-1", "outbox-2", "outbox-3"];

/// A chat of a local user with a user of a fresh peer that answers its first
/// transactions with `statuses`; three messages sent. The peer, the chat and the
/// transaction requests it got once every message was in an accepted transaction.
async fn deliver_through_refusals(
    ctx: &Ctx,
    statuses: &[u16],
) -> Result<(Peer, String, Vec<Received>)> {
    require_federation(ctx).await?;
    let peer = ctx.new_peer().await?;
    peer.refuse_transactions(statuses);
    let a = ctx.register().await?;
    let remote = peer.user(&ctx.username());
    let r = ctx
        .as_user(
            &a,
            Method::POST,
            "/v1/chats",
            Some(json!({"members": [remote], "name": "outbox"})),
        )
        .await?;
    r.ok().context("a chat with a user of the suite's peer")?;
    let chat = r.body["chat_id"].as_str().context("no chat_id")?.to_owned();
    for cmid in OUTBOX_MSGS {
        send_ok(ctx, &a, &chat, cmid).await?;
    }
    let got = peer
        .wait_for(
            "every message in an accepted transaction",
            std::time::Duration::from_secs(40),
            |rs| {
                let accepted: Vec<String> = transactions(rs)
                    .iter()
                    .filter(|t| t.status == 200)
                    .flat_map(message_ids)
                    .collect();
                OUTBOX_MSGS.iter().all(|m| accepted.iter().any(|a| a == m))
            },
        )
        .await?;
    Ok((peer, chat, transactions(&got)))
}

/// The `client_msg_id`s of a transaction's events.
fn message_ids(r: &Received) -> Vec<String> {
    r.body["events"]
        .as_array()
        .map(|es| {
            es.iter()
                .filter_map(|e| e["client_msg_id"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn transactions(rs: &[Received]) -> Vec<Received> {
    rs.iter()
        .filter(|r| r.method == "PUT" && r.path.starts_with("/_parley/fed/v1/send/"))
        .cloned()
        .collect()
}

fn txn_id(r: &Received) -> &str {
    r.path.trim_start_matches("/_parley/fed/v1/send/")
}

fn event_keys(r: &Received) -> Vec<(String, i64)> {
    r.body["events"]
        .as_array()
        .map(|es| {
            es.iter()
                .map(|e| {
                    (
                        e["chat_id"].as_str().unwrap_or("").to_owned(),
                        e["seq"].as_i64().unwrap_or(-1),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// What a transaction carries, by identity: its chats' snapshots (by chat; a snapshot is
/// read when the request is formed, so a retry may carry a newer state), events by
/// `(chat_id, seq)`, sends by `client_msg_id`, receipts and leaves. Ephemeral events
/// are left out: they are dropped, not retried (FO2).
fn entries(r: &Received) -> Vec<String> {
    let list = |k: &str| r.body[k].as_array().cloned().unwrap_or_default();
    let mut out = Vec::new();
    for c in list("chats") {
        out.push(format!("chat {}", c["chat_id"]));
    }
    for e in list("events") {
        out.push(format!("event {} {}", e["chat_id"], e["seq"]));
    }
    for s in list("sends") {
        out.push(format!("send {} {}", s["chat_id"], s["client_msg_id"]));
    }
    for x in list("receipts") {
        out.push(format!("receipt {}", x));
    }
    for x in list("leaves") {
        out.push(format!("leave {}", x));
    }
    out
}

pub(super) async fn outbox_same_txn(ctx: &Ctx) -> Result<()> {
    let refusals = [503, 503];
    let (_peer, chat, txns) = deliver_through_refusals(ctx, &refusals).await?;
    let server = ctx.server_name().await?;
    for t in &txns {
        ensure!(
            t.signed.as_deref() == Ok(server),
            "a transaction not signed by {server}: {:?}",
            t.signed
        );
    }
    let first = txn_id(&txns[0]);
    let attempts: Vec<&Received> = txns.iter().filter(|t| txn_id(t) == first).collect();
    ensure!(
        attempts.len() == refusals.len() + 1
            && attempts
                .iter()
                .take(refusals.len())
                .all(|t| t.status != 200)
            && attempts[refusals.len()].status == 200,
        "a refused batch was not retried under its txn id until accepted: {:?}",
        txns.iter()
            .map(|t| (txn_id(t), t.status))
            .collect::<Vec<_>>()
    );
    ensure!(
        attempts.iter().all(|t| entries(t) == entries(attempts[0])),
        "a retried transaction carried other entries than its first attempt: {:?}",
        attempts.iter().map(|t| &t.body).collect::<Vec<_>>()
    );
    // Acknowledged once, applied once, in order.
    let accepted: Vec<&Received> = txns.iter().filter(|t| t.status == 200).collect();
    let mut ids: Vec<&str> = accepted.iter().map(|t| txn_id(t)).collect();
    ids.sort_unstable();
    ids.dedup();
    ensure!(
        ids.len() == accepted.len(),
        "an acknowledged transaction was sent again"
    );
    let delivered: Vec<i64> = accepted
        .iter()
        .flat_map(|t| event_keys(t))
        .filter(|(c, _)| c == &chat)
        .map(|(_, s)| s)
        .collect();
    ensure!(
        delivered.windows(2).all(|w| w[1] == w[0] + 1),
        "the chat's events did not arrive once each in seq order: {delivered:?}"
    );
    let messages: Vec<String> = accepted.iter().flat_map(|t| message_ids(t)).collect();
    ensure!(
        OUTBOX_MSGS
            .iter()
            .all(|m| messages.iter().filter(|x| x == m).count() == 1),
        "sent {OUTBOX_MSGS:?}, acknowledged {messages:?}"
    );
    Ok(())
}

pub(super) async fn outbox_backoff(ctx: &Ctx) -> Result<()> {
    let (_peer, _chat, txns) = deliver_through_refusals(ctx, &[503, 429]).await?;
    let first = txn_id(&txns[0]);
    let at: Vec<i64> = txns
        .iter()
        .filter(|t| txn_id(t) == first)
        .map(|t| t.at_ms)
        .collect();
    ensure!(
        at.len() == 3,
        "a 503 and a 429 are retried: {} attempts",
        at.len()
    );
    let gaps = [at[1] - at[0], at[2] - at[1]];
    // 1 s, then 2 s, each ×U(0.8, 1.2); a little slack for the clocks.
    ensure!(
        gaps[0] >= 750 && gaps[1] >= 1_550,
        "retries came after {gaps:?} ms (at least 0.8 s, then 1.6 s)"
    );
    ensure!(
        gaps[0] <= 10_000 && gaps[1] <= 10_000,
        "retries came after {gaps:?} ms"
    );
    Ok(())
}
