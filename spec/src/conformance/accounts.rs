//! Accounts, devices, and the error codes of bad requests (client-api.md, errors.md).

use anyhow::{Result, bail, ensure};
use parley_client_api::http::{ENDPOINTS, Method as ApiMethod, WEBSOCKET, fill};
use reqwest::Method;
use serde_json::{Value, json};

use super::net::{Ctx, PASSWORD, server_of};

pub(super) async fn register(ctx: &Ctx) -> Result<()> {
    let u = ctx.register().await?;
    ensure!(
        u.user_id.starts_with(&format!("@{}:", u.username)),
        "user_id {} is not @{}:<server>",
        u.user_id,
        u.username
    );
    ensure!(
        !u.device_id.is_empty() && !u.token.is_empty(),
        "empty device id or token"
    );
    let r = ctx.as_user(&u, Method::GET, "/v1/devices", None).await?;
    r.expect(200, None)?;
    Ok(())
}

pub(super) async fn taken(ctx: &Ctx) -> Result<()> {
    let u = ctx.register().await?;
    let r = ctx
        .call(
            Method::POST,
            "/v1/register",
            None,
            Some(json!({"username": u.username, "password": PASSWORD})),
        )
        .await?;
    r.expect(409, Some("user_exists"))?;
    Ok(())
}

pub(super) async fn login(ctx: &Ctx) -> Result<()> {
    let u = ctx.register().await?;
    let r = ctx
        .call(
            Method::POST,
            "/v1/login",
            None,
            Some(json!({"username": u.username, "password": PASSWORD})),
        )
        .await?;
    r.expect(200, None)?;
    ensure!(
        r.body["user_id"] == u.user_id.as_str(),
        "login answered another user: {}",
        r.body
    );
    ensure!(
        r.body["device_id"] != u.device_id.as_str() && r.body["access_token"] != u.token.as_str(),
        "login did not create a new device: {}",
        r.body
    );
    let full = ctx
        .call(
            Method::POST,
            "/v1/login",
            None,
            Some(json!({"username": u.user_id, "password": PASSWORD})),
        )
        .await?;
    full.expect(200, None)?;
    let wrong = ctx
        .call(
            Method::POST,
            "/v1/login",
            None,
            Some(json!({"username": u.username, "password": "not the password"})),
        )
        .await?;
    wrong.expect(401, Some("invalid_credentials"))?;
    Ok(())
}

pub(super) async fn devices(ctx: &Ctx) -> Result<()> {
    let u = ctx.register().await?;
    let second = ctx
        .call(
            Method::POST,
            "/v1/login",
            None,
            Some(json!({"username": u.username, "password": PASSWORD, "device_name": "second"})),
        )
        .await?;
    second.expect(200, None)?;
    let r = ctx.as_user(&u, Method::GET, "/v1/devices", None).await?;
    r.expect(200, None)?;
    let list = r.body["devices"].as_array().cloned().unwrap_or_default();
    ensure!(list.len() == 2, "expected 2 devices, got {}", r.body);
    for d in &list {
        let me = d["device_id"] == u.device_id.as_str();
        ensure!(d["current"] == me, "current is wrong for {d}");
    }
    ensure!(
        list.iter().any(|d| d["display_name"] == "second"),
        "the device name was not kept: {}",
        r.body
    );
    Ok(())
}

pub(super) async fn revoke(ctx: &Ctx) -> Result<()> {
    let mut u = ctx.register().await?;
    ctx.as_user(&u, Method::POST, "/v1/logout", None)
        .await?
        .expect(204, None)?;
    ctx.as_user(&u, Method::GET, "/v1/devices", None)
        .await?
        .expect(401, Some("unknown_token"))?;
    // Removing another device revokes its token too.
    let login = |username: String| async move {
        ctx.call(
            Method::POST,
            "/v1/login",
            None,
            Some(json!({"username": username, "password": PASSWORD})),
        )
        .await
    };
    let a = login(u.username.clone()).await?;
    let b = login(u.username.clone()).await?;
    a.ok()?;
    b.ok()?;
    u.token = a.body["access_token"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let other_device = b.body["device_id"].as_str().unwrap_or_default();
    let other_token = b.body["access_token"].as_str().unwrap_or_default();
    ctx.as_user(
        &u,
        Method::DELETE,
        &fill("/v1/devices/{d}", &[("d", other_device)]),
        None,
    )
    .await?
    .expect(204, None)?;
    ctx.call(Method::GET, "/v1/devices", Some(other_token), None)
        .await?
        .expect(401, Some("unknown_token"))?;
    Ok(())
}

pub(super) async fn missing_token(ctx: &Ctx) -> Result<()> {
    ctx.call(Method::GET, "/v1/chats", None, None)
        .await?
        .expect(401, Some("missing_token"))?;
    ctx.call(Method::GET, "/v1/chats", Some("not-a-token"), None)
        .await?
        .expect(401, Some("unknown_token"))?;
    Ok(())
}

pub(super) async fn bad_json(ctx: &Ctx) -> Result<()> {
    let u = ctx.register().await?;
    let r = ctx
        .raw(
            &ctx.base,
            Method::POST,
            "/v1/chats",
            Some(&u.token),
            Some(b"{not json".to_vec()),
            &[],
        )
        .await?;
    r.expect(400, Some("bad_json"))?;
    ensure!(
        r.body["message"].is_string(),
        "the error body has no message: {}",
        r.body
    );
    let r = ctx
        .call(
            Method::POST,
            "/v1/register",
            None,
            Some(json!({"username": ctx.username(), "password": PASSWORD, "surprise": 1})),
        )
        .await?;
    r.expect(400, Some("bad_json"))?;
    Ok(())
}

pub(super) async fn invalid_param(ctx: &Ctx) -> Result<()> {
    let u = ctx.register().await?;
    ctx.as_user(&u, Method::GET, "/v1/chats/not-a-chat-id/members", None)
        .await?
        .expect(400, Some("invalid_param"))?;
    ctx.call(
        Method::POST,
        "/v1/register",
        None,
        Some(json!({"username": "Not Valid!", "password": PASSWORD})),
    )
    .await?
    .expect(400, Some("invalid_param"))?;
    ctx.call(
        Method::POST,
        "/v1/register",
        None,
        Some(json!({"username": ctx.username(), "password": "short"})),
    )
    .await?
    .expect(400, Some("invalid_param"))?;
    Ok(())
}

pub(super) async fn not_found(ctx: &Ctx) -> Result<()> {
    let u = ctx.register().await?;
    ctx.as_user(&u, Method::GET, "/v1/no-such-endpoint", None)
        .await?
        .expect(404, Some("not_found"))?;
    ctx.as_user(&u, Method::PATCH, "/v1/chats", None)
        .await?
        .expect(405, Some("method_not_allowed"))?;
    Ok(())
}

/// Every endpoint of `parley-client-api` answers something other than "no such
/// endpoint" or "method not allowed": without a token, `401 missing_token`; register and
/// login, with an empty object, `400`.
pub(super) async fn endpoints_exist(ctx: &Ctx) -> Result<()> {
    let server = server_of(&ctx.register().await?.user_id)?;
    let chat = format!("!conformance:{server}");
    let user = format!("@nobody:{server}");
    let blob = "0".repeat(64);
    let mut wrong = Vec::new();
    for e in ENDPOINTS.iter().chain([&WEBSOCKET]) {
        let path = fill(
            e.path,
            &[
                ("chat_id", &chat),
                ("user_id", &user),
                ("device_id", "NODEVICE"),
                ("blob", &blob),
            ],
        );
        let method = match e.method {
            ApiMethod::Get => Method::GET,
            ApiMethod::Head => Method::HEAD,
            ApiMethod::Post => Method::POST,
            ApiMethod::Put => Method::PUT,
            ApiMethod::Delete => Method::DELETE,
        };
        let body = (!e.auth).then(|| json!({}));
        let r = ctx.call(method, &path, None, body).await?;
        let expected = if e.auth { 401 } else { 400 };
        if r.status != expected {
            wrong.push(format!(
                "{} {} ({}): {} {}",
                e.method.as_str(),
                e.path,
                e.name,
                r.status,
                r.body.get("error").and_then(Value::as_str).unwrap_or("")
            ));
        }
    }
    if !wrong.is_empty() {
        bail!("unexpected answers: {}", wrong.join("; "));
    }
    Ok(())
}
