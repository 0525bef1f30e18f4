//! Everyday messaging where the server takes part (messaging.md): the disappearing
//! timer's purge, blocking, the read-receipt policy, reports.

use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use parley_client_api::http::fill;
use reqwest::Method;
use serde_json::{Value, json};

use super::chats::{create, send, send_ok};
use super::net::{Ctx, User};
use super::socket::Socket;

/// The shortest disappearing timer (messaging.md MS32).
const TIMER_SECS: u64 = 5;

fn events_path(chat: &str) -> String {
    fill("/v1/chats/{c}/events", &[("c", chat)])
}

/// The `client_msg_id`s of the events `user` may read in `chat`'s history.
async fn history_ids(ctx: &Ctx, user: &User, chat: &str) -> Result<Vec<String>> {
    let r = ctx
        .as_user(user, Method::GET, &events_path(chat), None)
        .await?;
    r.expect(200, None).context("history")?;
    Ok(r.body["events"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["client_msg_id"].as_str().map(str::to_owned))
        .collect())
}

/// The `client_msg_id`s of the events in a replay.
fn replayed_ids(replay: &[Value]) -> Vec<String> {
    replay
        .iter()
        .filter(|f| f["type"] == "event")
        .filter_map(|f| f["event"]["client_msg_id"].as_str().map(str::to_owned))
        .collect()
}

/// `member`'s receipt as `viewer` sees it: `(delivered_seq, read_seq)`.
async fn receipt(ctx: &Ctx, viewer: &User, chat: &str, member: &User) -> Result<(i64, i64)> {
    let r = ctx
        .as_user(
            viewer,
            Method::GET,
            &fill("/v1/chats/{c}/receipts", &[("c", chat)]),
            None,
        )
        .await?;
    r.expect(200, None)?;
    let x = r.body["receipts"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|x| x["user_id"] == member.user_id.as_str())
        .cloned()
        .with_context(|| format!("no receipt of {} in {}", member.user_id, r.body))?;
    Ok((
        x["delivered_seq"].as_i64().unwrap_or(0),
        x["read_seq"].as_i64().unwrap_or(0),
    ))
}

/// Marks everything read (the server caps the marker at the chat's last `seq`).
async fn mark_all_read(ctx: &Ctx, user: &User, chat: &str) -> Result<()> {
    let seq = i64::from(i32::MAX);
    ctx.as_user(
        user,
        Method::POST,
        &fill("/v1/chats/{c}/read", &[("c", chat)]),
        Some(json!({ "seq": seq })),
    )
    .await?
    .expect(204, None)?;
    Ok(())
}

/// MS32: a timer out of bounds, of the wrong type, or on a commit is refused.
pub(super) async fn bad_timer(ctx: &Ctx) -> Result<()> {
    let (a, b) = (ctx.register().await?, ctx.register().await?);
    let chat = create(ctx, &a, &[&b], None).await?;
    for (i, extra) in [
        json!({"expires_in": TIMER_SECS - 1}),
        json!({"expires_in": 366 * 86_400}),
        json!({"expires_in": 60, "mls": {"kind": "commit", "epoch": 0}}),
    ]
    .into_iter()
    .enumerate()
    {
        let r = send(ctx, &a, &chat, &format!("bad{i}"), b"x", extra.clone()).await?;
        r.expect(400, Some("invalid_timer"))
            .with_context(|| format!("a send with {extra}"))?;
    }
    let r = send(
        ctx,
        &a,
        &chat,
        "bad-type",
        b"x",
        json!({"expires_in": "1h"}),
    )
    .await?;
    r.expect(400, Some("bad_json"))?;
    ensure!(
        history_ids(ctx, &a, &chat).await?.is_empty(),
        "a refused send was stored"
    );
    Ok(())
}

/// MS34: at its expiry an event leaves the server: history and the undelivered inbox of
/// an offline member's device; events without a timer stay.
pub(super) async fn timer_purge(ctx: &Ctx) -> Result<()> {
    let (a, b) = (ctx.register().await?, ctx.register().await?);
    let chat = create(ctx, &a, &[&b], None).await?;
    send_ok(ctx, &a, &chat, "kept").await?;
    let r = send(
        ctx,
        &a,
        &chat,
        "vanishing",
        b"vanishing",
        json!({ "expires_in": TIMER_SECS }),
    )
    .await?;
    r.expect(201, None)?;
    let history = ctx
        .as_user(&a, Method::GET, &events_path(&chat), None)
        .await?;
    let stored = history.body["events"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["client_msg_id"] == "vanishing")
        .cloned()
        .context("the event is not in the history before its expiry")?;
    ensure!(
        stored["expires_in"] == TIMER_SECS,
        "the event does not carry its timer: {stored}"
    );
    // Well past the expiry (plus the purge's own delay), bounded.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(TIMER_SECS + 20);
    loop {
        let ids = history_ids(ctx, &a, &chat).await?;
        if !ids.iter().any(|i| i == "vanishing") {
            ensure!(ids == ["kept"], "history after the expiry: {ids:?}");
            break;
        }
        if tokio::time::Instant::now() > deadline {
            bail!("the expired event is still in the history");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // b was offline all along: its replay holds only what did not expire.
    let (s, replay) = Socket::connect_synced(&b).await?;
    let ids = replayed_ids(&replay);
    s.close().await;
    ensure!(
        ids == ["kept"],
        "the offline device's inbox replayed {ids:?}"
    );
    Ok(())
}

/// MS21/MS22: a blocked user's 1:1 messages are not delivered to the blocker (inbox and
/// history); the sender is not told.
pub(super) async fn blocking(ctx: &Ctx) -> Result<()> {
    let (a, b) = (ctx.register().await?, ctx.register().await?);
    let chat = create(ctx, &a, &[&b], None).await?;
    send_ok(ctx, &a, &chat, "before").await?;
    ctx.as_user(
        &b,
        Method::PUT,
        &fill("/v1/blocks/{u}", &[("u", &a.user_id)]),
        None,
    )
    .await?
    .expect(200, None)?;
    ctx.as_user(
        &b,
        Method::PUT,
        &fill("/v1/blocks/{u}", &[("u", &b.user_id)]),
        None,
    )
    .await?
    .expect(400, Some("invalid_param"))?;
    send_ok(ctx, &a, &chat, "while-blocked").await?;
    let (s, replay) = Socket::connect_synced(&b).await?;
    let ids = replayed_ids(&replay);
    s.close().await;
    ensure!(ids == ["before"], "the blocker's device got {ids:?}");
    let ids = history_ids(ctx, &b, &chat).await?;
    ensure!(ids == ["before"], "the blocker's history serves {ids:?}");
    ensure!(
        history_ids(ctx, &a, &chat).await?.len() == 2,
        "the sender's history changed"
    );
    Ok(())
}

/// MS41/MS42: a user who turned read receipts off sends none and sees none; delivered
/// receipts still go both ways.
pub(super) async fn receipts_off(ctx: &Ctx) -> Result<()> {
    let (a, b) = (ctx.register().await?, ctx.register().await?);
    let chat = create(ctx, &a, &[&b], None).await?;
    let r = ctx
        .as_user(
            &b,
            Method::PUT,
            "/v1/privacy",
            Some(json!({"last_seen": "everyone", "read_receipts": false})),
        )
        .await?;
    r.expect(200, None)?;
    let got = ctx.as_user(&b, Method::GET, "/v1/privacy", None).await?;
    ensure!(
        got.body["read_receipts"] == false,
        "the setting was not kept: {}",
        got.body
    );
    // Acknowledged sequence numbers are not needed: a marker covers every event.
    send_ok(ctx, &a, &chat, "to-b").await?;
    mark_all_read(ctx, &b, &chat).await?;
    let (delivered, read) = receipt(ctx, &a, &chat, &b).await?;
    ensure!(
        delivered > 0 && read == 0,
        "a sees b's receipt as delivered {delivered}, read {read}"
    );
    let (_, own) = receipt(ctx, &b, &chat, &b).await?;
    ensure!(own > 0, "b's own read marker is {own}");
    send_ok(ctx, &b, &chat, "to-a").await?;
    mark_all_read(ctx, &a, &chat).await?;
    let (delivered, read) = receipt(ctx, &b, &chat, &a).await?;
    ensure!(
        delivered > 0 && read == 0,
        "b sees a's receipt as delivered {delivered}, read {read}"
    );
    Ok(())
}

/// MS44: a chat whose policy forbids read receipts relays none; in a group only admins
/// set the policy.
pub(super) async fn chat_policy(ctx: &Ctx) -> Result<()> {
    let (a, b) = (ctx.register().await?, ctx.register().await?);
    let chat = create(ctx, &a, &[&b], Some("policy")).await?;
    let r = send(
        ctx,
        &b,
        &chat,
        "not-admin",
        b"x",
        json!({"read_receipts": false}),
    )
    .await?;
    r.expect(403, Some("forbidden"))?;
    let r = send(
        ctx,
        &a,
        &chat,
        "policy",
        b"x",
        json!({"read_receipts": false}),
    )
    .await?;
    r.expect(201, None)?;
    send_ok(ctx, &a, &chat, "after").await?;
    mark_all_read(ctx, &b, &chat).await?;
    let (delivered, read) = receipt(ctx, &a, &chat, &b).await?;
    ensure!(
        delivered > 0 && read == 0,
        "a sees b's receipt as delivered {delivered}, read {read}"
    );
    Ok(())
}

/// MS51: a report needs content; a report with some is accepted.
pub(super) async fn reports(ctx: &Ctx) -> Result<()> {
    let (a, b) = (ctx.register().await?, ctx.register().await?);
    let target = json!({"type": "user", "user_id": b.user_id});
    let r = ctx
        .as_user(
            &a,
            Method::POST,
            "/v1/reports",
            Some(json!({"target": target, "reason": "  "})),
        )
        .await?;
    r.expect(400, Some("empty_report"))?;
    let r = ctx
        .as_user(
            &a,
            Method::POST,
            "/v1/reports",
            Some(json!({"target": target, "reason": "spam"})),
        )
        .await?;
    r.expect(201, None)?;
    ensure!(
        r.body["report_id"].as_i64().is_some(),
        "no report_id in {}",
        r.body
    );
    Ok(())
}
