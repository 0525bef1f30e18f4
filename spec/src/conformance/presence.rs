//! Presence, privacy and typing (presence.md).

use anyhow::{Result, ensure};
use reqwest::Method;
use serde_json::{Value, json};

use super::chats::create;
use super::net::Ctx;
use super::socket::Socket;

pub(super) async fn presence_frames(ctx: &Ctx) -> Result<()> {
    let (a, b) = (ctx.register().await?, ctx.register().await?);
    create(ctx, &a, &[&b], None).await?;
    let (mut sa, _) = Socket::connect_synced(&a).await?;
    sa.send(json!({"type": "heartbeat"})).await?;
    // The heartbeat is handled before the pong: bob comes online after it.
    sa.send(json!({"type": "ping"})).await?;
    sa.until("pong", |f| f["type"] == "pong").await?;
    let (mut sb, _) = Socket::connect_synced(&b).await?;
    sb.send(json!({"type": "heartbeat"})).await?;
    let f = sa
        .until("bob online", |f| {
            f["type"] == "presence" && f["user_id"] == b.user_id.as_str() && f["online"] == true
        })
        .await?;
    ensure!(
        f.get("id").is_none(),
        "a presence frame carries an inbox id: {f}"
    );
    sb.close().await;
    sa.until("bob offline", |f| {
        f["type"] == "presence" && f["user_id"] == b.user_id.as_str() && f["online"] == false
    })
    .await?;
    let r = ctx
        .as_user(
            &a,
            Method::GET,
            &format!("/v1/presence/{}", b.user_id),
            None,
        )
        .await?;
    r.expect(200, None)?;
    ensure!(
        r.body["online"] == false && r.body["last_seen"].is_i64(),
        "presence query: {}",
        r.body
    );
    sa.close().await;
    Ok(())
}

pub(super) async fn privacy(ctx: &Ctx) -> Result<()> {
    let (a, b) = (ctx.register().await?, ctx.register().await?);
    create(ctx, &a, &[&b], None).await?;
    let r = ctx.as_user(&a, Method::GET, "/v1/privacy", None).await?;
    r.expect(200, None)?;
    ensure!(
        r.body["last_seen"] == "everyone",
        "default privacy: {}",
        r.body
    );
    // b is seen once online.
    let (mut sb, _) = Socket::connect_synced(&b).await?;
    sb.send(json!({"type": "heartbeat"})).await?;
    sb.send(json!({"type": "ping"})).await?;
    sb.until("pong", |f| f["type"] == "pong").await?;
    let path = format!("/v1/presence/{}", b.user_id);
    // Presence is eventually consistent: wait until the heartbeat is seen.
    let mut seen = ctx.as_user(&a, Method::GET, &path, None).await?;
    for _ in 0..100 {
        if seen.body["online"] == true {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        seen = ctx.as_user(&a, Method::GET, &path, None).await?;
    }
    ensure!(
        seen.body["online"] == true,
        "an online user with default privacy: {}",
        seen.body
    );
    // a hides their own: a sees no one's (reciprocal).
    let set = ctx
        .as_user(
            &a,
            Method::PUT,
            "/v1/privacy",
            Some(json!({"last_seen": "nobody"})),
        )
        .await?;
    set.expect(200, None)?;
    ensure!(
        set.body["last_seen"] == "nobody",
        "set privacy answered {}",
        set.body
    );
    let hidden = ctx.as_user(&a, Method::GET, &path, None).await?;
    hidden.expect(200, None)?;
    ensure!(
        hidden.body.get("online").is_none() && hidden.body.get("last_seen").is_none(),
        "a user who hides their last seen still sees others': {}",
        hidden.body
    );
    let bad = ctx
        .as_user(
            &a,
            Method::PUT,
            "/v1/privacy",
            Some(json!({"last_seen": "friends"})),
        )
        .await?;
    bad.expect(400, Some("bad_json"))?;
    sb.close().await;
    Ok(())
}

pub(super) async fn typing(ctx: &Ctx) -> Result<()> {
    let (a, b) = (ctx.register().await?, ctx.register().await?);
    let chat = create(ctx, &a, &[&b], None).await?;
    let (mut sa, _) = Socket::connect_synced(&a).await?;
    let (mut sb, _) = Socket::connect_synced(&b).await?;
    sa.send(json!({"type": "typing", "chat_id": chat, "typing": true}))
        .await?;
    let f = sb.until("typing", |f| f["type"] == "typing").await?;
    ensure!(
        f["user_id"] == a.user_id.as_str() && f["chat_id"] == chat.as_str() && f["typing"] == true,
        "typing frame: {f}"
    );
    ensure!(
        f.get("id").is_none(),
        "a typing frame carries an inbox id: {f}"
    );
    // The typer's own socket gets nothing: a ping is answered before any typing frame.
    sa.send(json!({"type": "ping"})).await?;
    let next = sa
        .until("pong", |f| f["type"] == "pong" || f["type"] == "typing")
        .await?;
    ensure!(
        next["type"] == "pong",
        "the typer got its own typing: {next}"
    );
    sa.close().await;
    sb.close().await;
    Ok(())
}

pub(super) async fn typing_expiry(ctx: &Ctx) -> Result<()> {
    let (a, b) = (ctx.register().await?, ctx.register().await?);
    let chat = create(ctx, &a, &[&b], None).await?;
    let (mut sa, _) = Socket::connect_synced(&a).await?;
    let (mut sb, _) = Socket::connect_synced(&b).await?;
    sa.send(json!({"type": "typing", "chat_id": chat, "typing": true}))
        .await?;
    let is_typing = |f: &Value| f["type"] == "typing" && f["user_id"] == a.user_id.as_str();
    let on = sb.until("typing true", is_typing).await?;
    ensure!(on["typing"] == true, "typing frame: {on}");
    let started = std::time::Instant::now();
    // No refresh and no `typing: false` from the typer: the server ends it after 5 s.
    let off = sb.until("typing false after 5 s", is_typing).await?;
    let after = started.elapsed();
    ensure!(off["typing"] == false, "expected typing false, got {off}");
    ensure!(
        after >= std::time::Duration::from_millis(4_000)
            && after <= std::time::Duration::from_millis(9_000),
        "typing false came {after:?} after typing true (the expiry is 5 s)"
    );
    sa.close().await;
    sb.close().await;
    Ok(())
}
