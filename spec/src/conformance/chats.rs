//! Chats, sequences, groups and epochs, the device socket, receipts
//! (ordering.md, websocket.md).

use anyhow::{Context, Result, bail, ensure};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use parley_client_api::http::fill;
use reqwest::Method;
use serde_json::{Value, json};

use super::net::{Ctx, Resp, User};
use super::socket::Socket;

/// Creates a chat of `owner` with `others` (a name makes it a group); its id.
pub(super) async fn create(
    ctx: &Ctx,
    owner: &User,
    others: &[&User],
    name: Option<&str>,
) -> Result<String> {
    let members: Vec<&str> = others.iter().map(|u| u.user_id.as_str()).collect();
    let mut body = json!({"members": members});
    if let Some(n) = name {
        body["name"] = json!(n);
    }
    let r = ctx
        .as_user(owner, Method::POST, "/v1/chats", Some(body))
        .await?;
    r.ok().context("create a chat")?;
    r.body["chat_id"]
        .as_str()
        .map(str::to_owned)
        .with_context(|| format!("no chat_id in {}", r.body))
}

fn events_path(chat: &str) -> String {
    fill("/v1/chats/{c}/events", &[("c", chat)])
}

/// Sends `payload` to `chat` as `user` with `client_msg_id`, plus `extra` fields.
pub(super) async fn send(
    ctx: &Ctx,
    user: &User,
    chat: &str,
    cmid: &str,
    payload: &[u8],
    extra: Value,
) -> Result<Resp> {
    let mut body = json!({"client_msg_id": cmid, "payload": STANDARD.encode(payload)});
    if let Value::Object(m) = extra {
        for (k, v) in m {
            body[k] = v;
        }
    }
    ctx.as_user(user, Method::POST, &events_path(chat), Some(body))
        .await
}

/// Sends and returns the acknowledged `seq`.
pub(super) async fn send_ok(ctx: &Ctx, user: &User, chat: &str, cmid: &str) -> Result<i64> {
    let r = send(ctx, user, chat, cmid, cmid.as_bytes(), json!({})).await?;
    r.expect(201, None)
        .with_context(|| format!("send {cmid}"))?;
    seq_of(&r.body)
}

fn seq_of(v: &Value) -> Result<i64> {
    v["seq"].as_i64().with_context(|| format!("no seq in {v}"))
}

async fn read_history(ctx: &Ctx, user: &User, chat: &str, after: i64) -> Result<Vec<Value>> {
    let r = ctx
        .as_user(
            user,
            Method::GET,
            &format!("{}?after={after}", events_path(chat)),
            None,
        )
        .await?;
    r.expect(200, None).context("history")?;
    Ok(r.body["events"].as_array().cloned().unwrap_or_default())
}

pub(super) async fn create_direct(ctx: &Ctx) -> Result<()> {
    let (a, b) = (ctx.register().await?, ctx.register().await?);
    let r = ctx
        .as_user(
            &a,
            Method::POST,
            "/v1/chats",
            Some(json!({"members": [b.user_id]})),
        )
        .await?;
    r.expect(201, None)?;
    ensure!(r.body["kind"] == "direct", "kind is not direct: {}", r.body);
    let again = ctx
        .as_user(
            &b,
            Method::POST,
            "/v1/chats",
            Some(json!({"members": [a.user_id]})),
        )
        .await?;
    again.expect(200, None)?;
    ensure!(
        again.body["chat_id"] == r.body["chat_id"],
        "a second chat for the same pair: {} vs {}",
        again.body,
        r.body
    );
    let members = r.body["members"].as_array().cloned().unwrap_or_default();
    ensure!(
        members.contains(&json!(a.user_id)) && members.contains(&json!(b.user_id)),
        "members: {}",
        r.body
    );
    Ok(())
}

pub(super) async fn consecutive(ctx: &Ctx) -> Result<()> {
    let (a, b) = (ctx.register().await?, ctx.register().await?);
    let chat = create(ctx, &a, &[&b], None).await?;
    let mut seqs = Vec::new();
    for i in 0..3 {
        seqs.push(send_ok(ctx, &a, &chat, &format!("a{i}")).await?);
        seqs.push(send_ok(ctx, &b, &chat, &format!("b{i}")).await?);
    }
    ensure!(
        seqs == [1, 2, 3, 4, 5, 6],
        "sequence numbers {seqs:?}, expected 1..=6"
    );
    Ok(())
}

pub(super) async fn idempotent(ctx: &Ctx) -> Result<()> {
    let (a, b) = (ctx.register().await?, ctx.register().await?);
    let chat = create(ctx, &a, &[&b], None).await?;
    let first = send(ctx, &a, &chat, "same-id", b"one", json!({})).await?;
    first.expect(201, None)?;
    let again = send(ctx, &a, &chat, "same-id", b"one", json!({})).await?;
    again.expect(200, None)?;
    ensure!(
        again.body["duplicate"] == true,
        "duplicate is not true: {}",
        again.body
    );
    ensure!(
        again.body["seq"] == first.body["seq"] && again.body["ts"] == first.body["ts"],
        "the resend got another result: {} vs {}",
        again.body,
        first.body
    );
    let events = read_history(ctx, &a, &chat, 0).await?;
    ensure!(
        events.len() == 1,
        "stored {} events, expected 1",
        events.len()
    );
    // The same id from another device is another message.
    let other = send(ctx, &b, &chat, "same-id", b"two", json!({})).await?;
    other.expect(201, None)?;
    Ok(())
}

pub(super) async fn non_member(ctx: &Ctx) -> Result<()> {
    let [a, b, c] = ctx.register_many().await?;
    let chat = create(ctx, &a, &[&b], None).await?;
    send(ctx, &c, &chat, "x", b"x", json!({}))
        .await?
        .expect(403, Some("not_member"))?;
    let server = super::net::server_of(&a.user_id)?;
    let unknown = format!("!doesnotexist{}:{server}", ctx.username());
    send(ctx, &a, &unknown, "x", b"x", json!({}))
        .await?
        .expect(404, Some("unknown_chat"))?;
    let events = read_history(ctx, &a, &chat, 0).await?;
    ensure!(events.is_empty(), "a refused send was stored");
    Ok(())
}

pub(super) async fn history(ctx: &Ctx) -> Result<()> {
    let (a, b) = (ctx.register().await?, ctx.register().await?);
    let chat = create(ctx, &a, &[&b], None).await?;
    let payloads: Vec<Vec<u8>> = vec![vec![0, 1, 2, 255], b"second".to_vec(), vec![7; 1000]];
    for (i, p) in payloads.iter().enumerate() {
        send(ctx, &a, &chat, &format!("h{i}"), p, json!({}))
            .await?
            .expect(201, None)?;
    }
    let events = read_history(ctx, &b, &chat, 0).await?;
    ensure!(events.len() == 3, "expected 3 events, got {}", events.len());
    for (i, (e, p)) in events.iter().zip(&payloads).enumerate() {
        ensure!(e["seq"] == i as i64 + 1, "event {i} has seq {}", e["seq"]);
        ensure!(
            e["payload"] == STANDARD.encode(p),
            "event {i}'s payload changed"
        );
        ensure!(
            e["sender"] == a.user_id.as_str() && e["sender_device"] == a.device_id.as_str(),
            "event {i}'s sender: {e}"
        );
        ensure!(
            e["client_msg_id"] == format!("h{i}"),
            "event {i}'s client_msg_id: {e}"
        );
    }
    let after = read_history(ctx, &b, &chat, 2).await?;
    ensure!(
        after.len() == 1 && after[0]["seq"] == 3,
        "after=2 answered {after:?}"
    );
    Ok(())
}

pub(super) async fn bad_send(ctx: &Ctx) -> Result<()> {
    let (a, b) = (ctx.register().await?, ctx.register().await?);
    let chat = create(ctx, &a, &[&b], None).await?;
    send(ctx, &a, &chat, "", b"x", json!({}))
        .await?
        .expect(400, Some("invalid_param"))?;
    send(ctx, &a, &chat, "with space", b"x", json!({}))
        .await?
        .expect(400, Some("invalid_param"))?;
    send(ctx, &a, &chat, "empty", b"", json!({}))
        .await?
        .expect(400, Some("invalid_param"))?;
    let r = ctx
        .as_user(
            &a,
            Method::POST,
            &events_path(&chat),
            Some(json!({"client_msg_id": "m", "payload": "*not base64*"})),
        )
        .await?;
    r.expect(400, Some("bad_json"))?;
    ensure!(
        read_history(ctx, &a, &chat, 0).await?.is_empty(),
        "a refused send was stored"
    );
    Ok(())
}

async fn members(ctx: &Ctx, u: &User, chat: &str) -> Result<Value> {
    let r = ctx
        .as_user(
            u,
            Method::GET,
            &fill("/v1/chats/{c}/members", &[("c", chat)]),
            None,
        )
        .await?;
    r.expect(200, None)?;
    Ok(r.body)
}

fn mls(kind: &str, epoch: u64) -> Value {
    json!({"mls": {"kind": kind, "epoch": epoch}})
}

pub(super) async fn group_admin(ctx: &Ctx) -> Result<()> {
    let [a, b, c] = ctx.register_many().await?;
    let r = ctx
        .as_user(
            &a,
            Method::POST,
            "/v1/chats",
            Some(json!({"members": [b.user_id, c.user_id], "name": "conformance"})),
        )
        .await?;
    r.expect(201, None)?;
    ensure!(
        r.body["kind"] == "group" && r.body["name"] == "conformance",
        "not a named group: {}",
        r.body
    );
    let chat = r.body["chat_id"].as_str().unwrap_or_default();
    let m = members(ctx, &b, chat).await?;
    ensure!(
        m["mls_epoch"] == 0,
        "a new group's epoch is {}",
        m["mls_epoch"]
    );
    for member in m["members"].as_array().cloned().unwrap_or_default() {
        let admin = member["user_id"] == a.user_id.as_str();
        ensure!(member["admin"] == admin, "admin flag wrong: {member}");
    }
    Ok(())
}

pub(super) async fn one_commit_per_epoch(ctx: &Ctx) -> Result<()> {
    let [a, b, c] = ctx.register_many().await?;
    let chat = create(ctx, &a, &[&b, &c], Some("epochs")).await?;
    send(ctx, &a, &chat, "c0", b"commit 0", mls("commit", 0))
        .await?
        .expect(201, None)?;
    let m = members(ctx, &a, &chat).await?;
    ensure!(
        m["mls_epoch"] == 1,
        "after a commit in epoch 0 the epoch is {}",
        m["mls_epoch"]
    );
    let late = send(ctx, &b, &chat, "c0b", b"rival commit 0", mls("commit", 0)).await?;
    late.expect(409, Some("wrong_epoch"))?;
    ensure!(
        late.body["current_epoch"] == 1,
        "current_epoch: {}",
        late.body
    );
    let early = send(ctx, &b, &chat, "c5", b"commit 5", mls("commit", 5)).await?;
    early.expect(409, Some("wrong_epoch"))?;
    let proposal = send(ctx, &b, &chat, "p0", b"proposal 0", mls("proposal", 0)).await?;
    proposal.expect(409, Some("wrong_epoch"))?;
    let events = read_history(ctx, &c, &chat, 0).await?;
    ensure!(
        events.len() == 1,
        "refused handshakes were stored: {} events",
        events.len()
    );
    Ok(())
}

pub(super) async fn past_epochs(ctx: &Ctx) -> Result<()> {
    let (a, b) = (ctx.register().await?, ctx.register().await?);
    let chat = create(ctx, &a, &[&b], Some("past")).await?;
    for e in 0..4u64 {
        send(
            ctx,
            &a,
            &chat,
            &format!("c{e}"),
            b"commit",
            mls("commit", e),
        )
        .await?
        .expect(201, None)?;
    }
    // Current epoch 4: only messages of epoch 4 are accepted.
    send(ctx, &b, &chat, "app4", b"app", mls("application", 4))
        .await?
        .expect(201, None)?;
    let old = send(ctx, &b, &chat, "app3", b"app", mls("application", 3)).await?;
    old.expect(409, Some("wrong_epoch"))?;
    ensure!(
        old.body["current_epoch"] == 4,
        "current_epoch: {}",
        old.body
    );
    Ok(())
}

pub(super) async fn admin_only(ctx: &Ctx) -> Result<()> {
    let [a, b, c] = ctx.register_many().await?;
    let chat = create(ctx, &a, &[&b], Some("admins")).await?;
    let mut extra = mls("commit", 0);
    extra["membership"] = json!({"add": [c.user_id]});
    let r = send(ctx, &b, &chat, "add-c", b"commit", extra.clone()).await?;
    r.expect(403, Some("forbidden"))?;
    let m = members(ctx, &a, &chat).await?;
    ensure!(
        m["mls_epoch"] == 0 && m["members"].as_array().map(Vec::len) == Some(2),
        "a refused commit changed the chat: {m}"
    );
    send(ctx, &a, &chat, "add-c", b"commit", extra)
        .await?
        .expect(201, None)?;
    let m = members(ctx, &a, &chat).await?;
    ensure!(
        m["members"].as_array().map(Vec::len) == Some(3),
        "the admin's add did not apply: {m}"
    );
    Ok(())
}

fn event_seqs(frames: &[Value]) -> Vec<i64> {
    frames
        .iter()
        .filter(|f| f["type"] == "event")
        .filter_map(|f| f["event"]["seq"].as_i64())
        .collect()
}

pub(super) async fn inbox_replay(ctx: &Ctx) -> Result<()> {
    let (a, b) = (ctx.register().await?, ctx.register().await?);
    let chat = create(ctx, &a, &[&b], None).await?;
    for i in 0..3 {
        send_ok(ctx, &a, &chat, &format!("r{i}")).await?;
    }
    let (s, replay) = Socket::connect_synced(&b).await?;
    let seqs = event_seqs(&replay);
    ensure!(
        seqs == [1, 2, 3],
        "replayed {seqs:?} before synced, expected [1, 2, 3]"
    );
    for f in &replay {
        ensure!(f["id"].as_i64().is_some(), "an inbox item without id: {f}");
    }
    s.close().await;
    Ok(())
}

/// Waits until `viewer` sees `member`'s `field` (delivered_seq/read_seq) at `seq` or more.
async fn wait_receipt(
    ctx: &Ctx,
    viewer: &User,
    chat: &str,
    member: &User,
    field: &str,
    seq: i64,
) -> Result<()> {
    let path = fill("/v1/chats/{c}/receipts", &[("c", chat)]);
    for _ in 0..150 {
        let r = ctx.as_user(viewer, Method::GET, &path, None).await?;
        r.expect(200, None)?;
        let got = r.body["receipts"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|x| x["user_id"] == member.user_id.as_str())
            .and_then(|x| x[field].as_i64())
            .unwrap_or(0);
        if got >= seq {
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    bail!("{field} of {} never reached {seq}", member.user_id)
}

pub(super) async fn redelivery(ctx: &Ctx) -> Result<()> {
    let (a, b) = (ctx.register().await?, ctx.register().await?);
    let chat = create(ctx, &a, &[&b], None).await?;
    for i in 0..3 {
        send_ok(ctx, &a, &chat, &format!("d{i}")).await?;
    }
    let (mut s, replay) = Socket::connect_synced(&b).await?;
    let ids: Vec<i64> = replay
        .iter()
        .filter(|f| f["type"] == "event" && f["event"]["seq"].as_i64() <= Some(2))
        .filter_map(|f| f["id"].as_i64())
        .collect();
    ensure!(ids.len() == 2, "replay: {replay:?}");
    s.ack(&ids).await?;
    wait_receipt(ctx, &a, &chat, &b, "delivered_seq", 2).await?;
    s.close().await;
    let (s, again) = Socket::connect_synced(&b).await?;
    let seqs = event_seqs(&again);
    ensure!(
        seqs == [3],
        "after acking 1 and 2, a reconnect replayed {seqs:?}, expected [3]"
    );
    s.close().await;
    Ok(())
}

pub(super) async fn ws_send(ctx: &Ctx) -> Result<()> {
    let (a, b) = (ctx.register().await?, ctx.register().await?);
    let chat = create(ctx, &a, &[&b], None).await?;
    let (mut s, _) = Socket::connect_synced(&a).await?;
    s.send(json!({"type": "send", "chat_id": chat, "client_msg_id": "ws1", "payload": STANDARD.encode(b"over the socket")}))
        .await?;
    let sent = s
        .until("sent", |f| f["type"] == "sent" || f["type"] == "error")
        .await?;
    ensure!(sent["type"] == "sent", "the send was refused: {sent}");
    ensure!(
        sent["client_msg_id"] == "ws1" && sent["chat_id"] == chat.as_str(),
        "sent frame: {sent}"
    );
    let seq = seq_of(&sent)?;
    s.close().await;
    let events = read_history(ctx, &b, &chat, 0).await?;
    ensure!(
        events
            .iter()
            .any(|e| e["seq"] == seq && e["client_msg_id"] == "ws1"),
        "acknowledged as seq {seq} but not stored: history {events:?}"
    );
    Ok(())
}

pub(super) async fn live(ctx: &Ctx) -> Result<()> {
    let (a, b) = (ctx.register().await?, ctx.register().await?);
    let chat = create(ctx, &a, &[&b], None).await?;
    let (mut s, _) = Socket::connect_synced(&b).await?;
    let seq = send_ok(ctx, &a, &chat, "live").await?;
    let f = s.until("the live event", |f| f["type"] == "event").await?;
    ensure!(
        f["event"]["seq"] == seq && f["event"]["chat_id"] == chat.as_str(),
        "event frame: {f}"
    );
    s.close().await;
    Ok(())
}

pub(super) async fn ws_errors(ctx: &Ctx) -> Result<()> {
    let a = ctx.register().await?;
    let (mut s, _) = Socket::connect_synced(&a).await?;
    s.send(json!({"type": "ping"})).await?;
    let f = s
        .until("pong", |f| f["type"] == "pong" || f["type"] == "error")
        .await?;
    ensure!(f["type"] == "pong", "ping answered {f}");
    s.send(json!({"type": "no_such_frame"})).await?;
    let f = s.until("error", |f| f["type"] == "error").await?;
    ensure!(f["code"] == "bad_json", "a bad frame got {f}");
    s.send(json!({"type": "ping"})).await?;
    s.until("pong after the error", |f| f["type"] == "pong")
        .await?;
    s.close().await;
    Ok(())
}

pub(super) async fn delivered(ctx: &Ctx) -> Result<()> {
    let (a, b) = (ctx.register().await?, ctx.register().await?);
    let chat = create(ctx, &a, &[&b], None).await?;
    let (mut sa, _) = Socket::connect_synced(&a).await?;
    let seq = send_ok(ctx, &a, &chat, "rc").await?;
    let (mut sb, replay) = Socket::connect_synced(&b).await?;
    let ids: Vec<i64> = replay.iter().filter_map(|f| f["id"].as_i64()).collect();
    ensure!(!ids.is_empty(), "nothing replayed to the recipient");
    sb.ack(&ids).await?;
    let r = sa
        .until("a receipt", |f| {
            f["type"] == "receipt"
                && f["user_id"] == b.user_id.as_str()
                && f["delivered_seq"].as_i64() >= Some(seq)
        })
        .await?;
    ensure!(
        r["chat_id"] == chat.as_str() && r["id"].as_i64().is_some(),
        "receipt frame: {r}"
    );
    wait_receipt(ctx, &a, &chat, &b, "delivered_seq", seq).await?;
    sa.close().await;
    sb.close().await;
    Ok(())
}

pub(super) async fn read(ctx: &Ctx) -> Result<()> {
    let (a, b) = (ctx.register().await?, ctx.register().await?);
    let chat = create(ctx, &a, &[&b], None).await?;
    for i in 0..3 {
        send_ok(ctx, &a, &chat, &format!("m{i}")).await?;
    }
    let read_path = fill("/v1/chats/{c}/read", &[("c", &chat)]);
    ctx.as_user(&b, Method::POST, &read_path, Some(json!({"seq": 2})))
        .await?
        .expect(204, None)?;
    wait_receipt(ctx, &a, &chat, &b, "read_seq", 2).await?;
    let list = ctx.as_user(&b, Method::GET, "/v1/chats", None).await?;
    list.expect(200, None)?;
    let mine = list.body["chats"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["chat_id"] == chat.as_str())
        .cloned()
        .context("the chat is not listed")?;
    ensure!(
        mine["read_seq"] == 2 && mine["unread_count"] == 1,
        "after reading up to 2 of 3: {mine}"
    );
    ctx.as_user(&b, Method::POST, &read_path, Some(json!({"seq": 1})))
        .await?
        .ok()?;
    let r = ctx
        .as_user(
            &a,
            Method::GET,
            &fill("/v1/chats/{c}/receipts", &[("c", &chat)]),
            None,
        )
        .await?;
    let back = r.body["receipts"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|x| x["user_id"] == b.user_id.as_str())
        .and_then(|x| x["read_seq"].as_i64());
    ensure!(
        back == Some(2),
        "a lower read marker moved read_seq to {back:?}"
    );
    Ok(())
}

pub(super) async fn one_socket(ctx: &Ctx) -> Result<()> {
    let (a, b) = (ctx.register().await?, ctx.register().await?);
    let chat = create(ctx, &a, &[&b], None).await?;
    let (mut first, _) = Socket::connect_synced(&b).await?;
    let (mut second, _) = Socket::connect_synced(&b).await?;
    let code = first.closed_with().await?;
    ensure!(
        code == Some(4001),
        "the older socket of a device was closed with {code:?}, not 4001 replaced"
    );
    // The newer socket is the device's: it gets the live event.
    let seq = send_ok(ctx, &a, &chat, "one-socket").await?;
    let f = second
        .until("the event on the newer socket", |f| f["type"] == "event")
        .await?;
    ensure!(f["event"]["seq"] == seq, "event: {f}");
    second.close().await;
    Ok(())
}

fn group_info_path(chat: &str) -> String {
    fill("/v1/chats/{c}/group_info", &[("c", chat)])
}

/// A commit in `epoch` publishing `info` as the GroupInfo of the epoch it creates.
fn commit_with_info(epoch: u64, info: &[u8]) -> Value {
    let mut extra = mls("commit", epoch);
    extra["group_info"] = json!(STANDARD.encode(info));
    extra
}

/// BK19: the GroupInfo the accepted commit published is served to any device of a
/// member user, and to no one else.
pub(super) async fn group_info(ctx: &Ctx) -> Result<()> {
    let [a, b, c] = ctx.register_many().await?;
    let chat = create(ctx, &a, &[&b], None).await?;
    let path = group_info_path(&chat);
    ctx.as_user(&b, Method::GET, &path, None)
        .await?
        .expect(404, Some("no_group_info"))?;
    send(
        ctx,
        &a,
        &chat,
        "c0",
        b"commit 0",
        commit_with_info(0, b"info 1"),
    )
    .await?
    .expect(201, None)?;
    let b2 = ctx.login(&b).await?;
    for u in [&a, &b, &b2] {
        let r = ctx.as_user(u, Method::GET, &path, None).await?;
        r.expect(200, None)?;
        ensure!(
            r.body["chat_id"] == chat.as_str()
                && r.body["epoch"] == 1
                && r.body["group_info"] == STANDARD.encode(b"info 1"),
            "not the published GroupInfo of epoch 1: {}",
            r.body
        );
    }
    ctx.as_user(&c, Method::GET, &path, None)
        .await?
        .expect(403, Some("not_member"))?;
    // A commit without one leaves no current GroupInfo.
    send(ctx, &a, &chat, "c1", b"commit 1", mls("commit", 1))
        .await?
        .expect(201, None)?;
    ctx.as_user(&b, Method::GET, &path, None)
        .await?
        .expect(404, Some("no_group_info"))?;
    Ok(())
}

/// BK21: a member user's new device (no leaf yet) gets its external commit sequenced
/// like any commit, publishing the next GroupInfo; a non-member's commit is refused.
pub(super) async fn external_commit(ctx: &Ctx) -> Result<()> {
    let [a, b, c] = ctx.register_many().await?;
    let chat = create(ctx, &a, &[&b], None).await?;
    send(
        ctx,
        &a,
        &chat,
        "c0",
        b"commit 0",
        commit_with_info(0, b"info 1"),
    )
    .await?
    .expect(201, None)?;
    send(
        ctx,
        &c,
        &chat,
        "evil",
        b"evil",
        commit_with_info(1, b"evil"),
    )
    .await?
    .expect(403, Some("not_member"))?;
    let b2 = ctx.login(&b).await?;
    send(
        ctx,
        &b2,
        &chat,
        "ext",
        b"external",
        commit_with_info(1, b"info 2"),
    )
    .await?
    .expect(201, None)?;
    let m = members(ctx, &a, &chat).await?;
    ensure!(
        m["mls_epoch"] == 2,
        "after the external commit the epoch is {}",
        m["mls_epoch"]
    );
    let r = ctx
        .as_user(&a, Method::GET, &group_info_path(&chat), None)
        .await?;
    r.expect(200, None)?;
    ensure!(
        r.body["epoch"] == 2 && r.body["group_info"] == STANDARD.encode(b"info 2"),
        "not the external commit's GroupInfo: {}",
        r.body
    );
    let events = read_history(ctx, &a, &chat, 0).await?;
    ensure!(
        events.len() == 2,
        "expected the two commits, got {} events",
        events.len()
    );
    Ok(())
}
