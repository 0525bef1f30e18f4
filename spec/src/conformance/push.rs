//! The push gateway contract (push-gateway.md): the suite registers pushers pointing at
//! a small gateway it runs itself on a loopback address and checks what the server
//! sends it.
//!
//! A server accepts a plain-`http` loopback gateway URL only when it is configured to
//! (`[push] allow_insecure = true`, P2); where it refuses it, the rules that need the
//! gateway are skipped with that reason.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use base64::Engine as _;
use parley_client_api::http::fill;
use reqwest::Method;
use serde_json::{Value, json};

use super::chats::{create, send, send_ok};
use super::net::{Ctx, User, now_ms};

/// The gateway's notify path (the reference gateway's).
const NOTIFY: &str = "/_parley/push/v1/notify";
/// How long the suite waits for a notification it expects (several coalescing windows
/// of the default 5 s).
const WAIT: Duration = Duration::from_secs(25);

/// One request the gateway got.
#[derive(Debug, Clone)]
struct Note {
    at_ms: i64,
    body: Value,
    raw: Vec<u8>,
    content_type: String,
    token: String,
}

impl Note {
    fn chat(&self) -> &str {
        self.body["notification"]["chat_id"].as_str().unwrap_or("")
    }

    fn counts(&self) -> (i64, i64) {
        let c = &self.body["notification"]["counts"];
        (
            c["unread"].as_i64().unwrap_or(-1),
            c["chat_unread"].as_i64().unwrap_or(-1),
        )
    }
}

#[derive(Default)]
struct GwState {
    notes: Mutex<Vec<Note>>,
    /// Answers per token, in turn (then `200 {"rejected": []}`).
    script: Mutex<HashMap<String, VecDeque<(u16, Value)>>>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    changed: tokio::sync::Notify,
}

/// A push gateway on a loopback listener.
struct Gateway {
    url: String,
    state: Arc<GwState>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Gateway {
    async fn start(ip: &str) -> Result<Self> {
        let listener = tokio::net::TcpListener::bind((ip, 0)).await?;
        let url = format!("http://{}{NOTIFY}", listener.local_addr()?);
        let state = Arc::new(GwState::default());
        let app = axum::Router::new()
            .route(NOTIFY, axum::routing::post(notify))
            .with_state(state.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { url, state, task })
    }

    /// Answers the next requests for `token` with these statuses and bodies.
    fn answer(&self, token: &str, answers: Vec<(u16, Value)>) {
        lock(&self.state.script).insert(token.to_owned(), answers.into());
    }

    fn notes(&self, token: &str) -> Vec<Note> {
        lock(&self.state.notes)
            .iter()
            .filter(|n| n.token == token)
            .cloned()
            .collect()
    }

    /// Waits until there are `n` notifications for `token`; all of them.
    async fn wait_notes(&self, token: &str, n: usize, wait: Duration) -> Result<Vec<Note>> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let changed = self.state.changed.notified();
            let got = self.notes(token);
            if got.len() >= n {
                return Ok(got);
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                let got = self.notes(token);
                if got.len() >= n {
                    return Ok(got);
                }
                anyhow::bail!(
                    "the gateway got {} notification(s) for the device within {wait:?}, \
                     expected {n}: {:?}",
                    got.len(),
                    got.iter().map(|n| &n.body).collect::<Vec<_>>()
                );
            }
        }
    }
}

async fn notify(
    axum::extract::State(s): axum::extract::State<Arc<GwState>>,
    headers: HeaderMap,
    body: Bytes,
) -> axum::response::Response {
    let now = s.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    s.max_in_flight.fetch_max(now, Ordering::SeqCst);
    let parsed: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let token = parsed["notification"]["token"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    lock(&s.notes).push(Note {
        at_ms: now_ms(),
        body: parsed,
        raw: body.to_vec(),
        content_type: headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned(),
        token: token.clone(),
    });
    s.changed.notify_waiters();
    let answer = lock(&s.script)
        .get_mut(&token)
        .and_then(VecDeque::pop_front);
    // Hold each answer a little, so overlapping requests would show.
    tokio::time::sleep(Duration::from_millis(100)).await;
    s.in_flight.fetch_sub(1, Ordering::SeqCst);
    let (status, body) = answer.unwrap_or((200, json!({"rejected": []})));
    (
        StatusCode::from_u16(status).unwrap_or(StatusCode::OK),
        axum::Json(body),
    )
        .into_response()
}

/// A gateway, or a skip when the server does not accept a loopback gateway URL for
/// `user`'s device (registering it with `token`).
async fn gateway_for(ctx: &Ctx, user: &User, token: &str) -> Result<Gateway> {
    let g = Gateway::start(ctx.listen_ip())
        .await
        .with_context(|| format!("a push gateway on {}", ctx.listen_ip()))?;
    register(ctx, user, &g, token).await?;
    Ok(g)
}

async fn register(ctx: &Ctx, user: &User, g: &Gateway, token: &str) -> Result<()> {
    let r = ctx
        .as_user(
            user,
            Method::POST,
            "/v1/pushers",
            Some(json!({"url": g.url, "token": token})),
        )
        .await?;
    if r.status == 400 {
        return super::skip(format!(
            "the server refuses the suite's plain-http loopback gateway URL {} (P2); \
             a server configured with [push] allow_insecure = true accepts it",
            g.url
        ));
    }
    r.expect(200, None).context("register a pusher")?;
    Ok(())
}

fn token() -> String {
    format!("conformance-token-{}", rand::random::<u64>())
}

async fn pushers(ctx: &Ctx, u: &User) -> Result<Vec<Value>> {
    let r = ctx.as_user(u, Method::GET, "/v1/pushers", None).await?;
    r.expect(200, None)?;
    Ok(r.body["pushers"].as_array().cloned().unwrap_or_default())
}

const PUBLIC_URL: &str = "https://push.example.org/_parley/push/v1/notify";

pub(super) async fn pusher_crud(ctx: &Ctx) -> Result<()> {
    let u = ctx.register().await?;
    ensure!(pushers(ctx, &u).await?.is_empty(), "a new user has pushers");
    let r = ctx
        .as_user(
            &u,
            Method::POST,
            "/v1/pushers",
            Some(json!({"url": PUBLIC_URL, "token": "t1"})),
        )
        .await?;
    r.expect(200, None)?;
    ensure!(
        r.body["device_id"] == u.device_id.as_str()
            && r.body["url"] == PUBLIC_URL
            && r.body["token"] == "t1"
            && r.body["created_at"].is_i64(),
        "pusher: {}",
        r.body
    );
    // Registering again replaces the device's pusher.
    ctx.as_user(
        &u,
        Method::POST,
        "/v1/pushers",
        Some(json!({"url": PUBLIC_URL, "token": "t2"})),
    )
    .await?
    .expect(200, None)?;
    let list = pushers(ctx, &u).await?;
    ensure!(
        list.len() == 1 && list[0]["token"] == "t2" && list[0]["device_id"] == u.device_id.as_str(),
        "after registering twice: {list:?}"
    );
    let path = fill("/v1/pushers/{d}", &[("d", &u.device_id)]);
    ctx.as_user(&u, Method::DELETE, &path, None)
        .await?
        .expect(204, None)?;
    ensure!(
        pushers(ctx, &u).await?.is_empty(),
        "the pusher is still listed"
    );
    ctx.as_user(&u, Method::DELETE, &path, None)
        .await?
        .expect(404, Some("unknown_device"))?;
    Ok(())
}

pub(super) async fn pusher_validation(ctx: &Ctx) -> Result<()> {
    let u = ctx.register().await?;
    ctx.as_user(
        &u,
        Method::POST,
        "/v1/pushers",
        Some(json!({"url": PUBLIC_URL, "token": "kept"})),
    )
    .await?
    .expect(200, None)?;
    let long_url = format!("https://push.example.org/{}", "a".repeat(2_100));
    let long_token = "t".repeat(4_097);
    for (what, url, token) in [
        ("an ftp URL", "ftp://push.example.org/notify", "t"),
        (
            "credentials in the URL",
            "https://user:secret@push.example.org/notify",
            "t",
        ),
        ("not a URL", "push gateway", "t"),
        ("a URL over 2,048 bytes", long_url.as_str(), "t"),
        ("an empty token", PUBLIC_URL, ""),
        ("a control character in the token", PUBLIC_URL, "a\u{7}b"),
        ("a token over 4,096 bytes", PUBLIC_URL, long_token.as_str()),
    ] {
        ctx.as_user(
            &u,
            Method::POST,
            "/v1/pushers",
            Some(json!({"url": url, "token": token})),
        )
        .await?
        .expect(400, Some("invalid_param"))
        .with_context(|| what.to_owned())?;
    }
    let list = pushers(ctx, &u).await?;
    ensure!(
        list.len() == 1 && list[0]["token"] == "kept",
        "refused registrations changed the pusher: {list:?}"
    );
    Ok(())
}

pub(super) async fn notify_offline(ctx: &Ctx) -> Result<()> {
    let (a, b1) = (ctx.register().await?, ctx.register().await?);
    let b2 = ctx.login(&b1).await?;
    let (t1, t2) = (token(), token());
    let g = gateway_for(ctx, &b1, &t1).await?;
    register(ctx, &b2, &g, &t2).await?;
    let chat = create(ctx, &a, &[&b1], None).await?;
    let (mut socket, _) = super::socket::Socket::connect_synced(&b2).await?;
    // The user's own message from another device notifies nobody.
    send_ok(ctx, &b2, &chat, "own-message").await?;
    let sent_at = now_ms();
    send_ok(ctx, &a, &chat, "from-a").await?;
    let notes = g.wait_notes(&t1, 1, WAIT).await?;
    let first = &notes[0];
    ensure!(
        first.at_ms >= sent_at && first.chat() == chat && first.counts() == (1, 1),
        "the first notification of the device without a socket: {} (expected one for the \
         other user's message, unread 1)",
        first.body
    );
    // The device with an open socket got the event there, and no notification.
    socket
        .until("the event on the open socket", |f| {
            f["type"] == "event" && f["event"]["client_msg_id"] == "from-a"
        })
        .await?;
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    ensure!(
        g.notes(&t2).is_empty(),
        "a device with an open socket was notified: {:?}",
        g.notes(&t2).iter().map(|n| &n.body).collect::<Vec<_>>()
    );
    socket.close().await;
    Ok(())
}

pub(super) async fn no_content(ctx: &Ctx) -> Result<()> {
    let (a, b) = (ctx.register().await?, ctx.register().await?);
    let t = token();
    let g = gateway_for(ctx, &b, &t).await?;
    let chat = create(ctx, &a, &[&b], None).await?;
    let payload = format!("secret payload {}", rand::random::<u64>());
    send(ctx, &a, &chat, "private", payload.as_bytes(), json!({}))
        .await?
        .expect(201, None)?;
    let n = g.wait_notes(&t, 1, WAIT).await?.remove(0);
    ensure!(
        n.content_type.starts_with("application/json"),
        "content-type {:?}",
        n.content_type
    );
    let notification = n.body["notification"]
        .as_object()
        .with_context(|| format!("no notification object: {}", n.body))?;
    ensure!(
        n.body.as_object().map(|o| o.len()) == Some(1)
            && notification.len() == 3
            && n.body["notification"]["token"] == t.as_str()
            && n.chat() == chat
            && n.body["notification"]["counts"]
                .as_object()
                .map(|c| c.len())
                == Some(2),
        "the body is not exactly {{notification: {{chat_id, counts: {{unread, chat_unread}}, \
         token}}}}: {}",
        n.body
    );
    let raw = String::from_utf8_lossy(&n.raw);
    let b64 = base64::engine::general_purpose::STANDARD.encode(&payload);
    for (what, secret) in [
        ("the payload", payload.as_str()),
        ("the payload (base64)", b64.as_str()),
        ("the client_msg_id", "private"),
        ("the sender", a.user_id.as_str()),
        ("the sender's name", a.username.as_str()),
        ("the recipient", b.user_id.as_str()),
        ("the recipient's device", b.device_id.as_str()),
    ] {
        ensure!(
            !raw.contains(secret),
            "the notification carries {what}: {raw}"
        );
    }
    Ok(())
}

/// A group of `a` and `b` named `name`.
async fn group(ctx: &Ctx, a: &User, b: &User, name: &str) -> Result<String> {
    create(ctx, a, &[b], Some(name)).await
}

pub(super) async fn coalescing(ctx: &Ctx) -> Result<()> {
    let (a, b) = (ctx.register().await?, ctx.register().await?);
    let t = token();
    let g = gateway_for(ctx, &b, &t).await?;
    let x = create(ctx, &a, &[&b], None).await?;
    let y = group(ctx, &a, &b, "coalescing").await?;
    send_ok(ctx, &a, &x, "c1").await?;
    let n1 = g.wait_notes(&t, 1, WAIT).await?.remove(0);
    ensure!(n1.counts() == (1, 1), "first: {}", n1.body);
    // Right after a notification: these fold into the next one, which names the chat
    // of the newest event and the counts when it is sent.
    send_ok(ctx, &a, &x, "c2").await?;
    send_ok(ctx, &a, &y, "c3").await?;
    let notes = g.wait_notes(&t, 2, WAIT).await?;
    ensure!(
        notes[1].chat() == y && notes[1].counts() == (3, 1),
        "the next notification after two more events: {} (expected chat {y}, unread 3, \
         chat_unread 1)",
        notes[1].body
    );
    Ok(())
}

pub(super) async fn counts(ctx: &Ctx) -> Result<()> {
    let (a, b) = (ctx.register().await?, ctx.register().await?);
    let t = token();
    let g = gateway_for(ctx, &b, &t).await?;
    let x = create(ctx, &a, &[&b], None).await?;
    let y = group(ctx, &a, &b, "counts").await?;
    let s1 = send_ok(ctx, &a, &x, "n1").await?;
    g.wait_notes(&t, 1, WAIT).await?;
    send_ok(ctx, &a, &y, "n2").await?;
    let notes = g.wait_notes(&t, 2, WAIT).await?;
    ensure!(
        notes[1].chat() == y && notes[1].counts() == (2, 1),
        "unread over all chats and in the chat: {}",
        notes[1].body
    );
    // Reading chat x resets its count.
    ctx.as_user(
        &b,
        Method::POST,
        &fill("/v1/chats/{c}/read", &[("c", &x)]),
        Some(json!({"seq": s1})),
    )
    .await?
    .expect(204, None)?;
    send_ok(ctx, &a, &y, "n3").await?;
    let notes = g.wait_notes(&t, 3, WAIT).await?;
    ensure!(
        notes[2].chat() == y && notes[2].counts() == (2, 2),
        "after reading the other chat: {}",
        notes[2].body
    );
    Ok(())
}

pub(super) async fn retry(ctx: &Ctx) -> Result<()> {
    let (a, b) = (ctx.register().await?, ctx.register().await?);
    let t = token();
    let g = gateway_for(ctx, &b, &t).await?;
    g.answer(&t, vec![(503, json!({"error": "unavailable"}))]);
    let x = create(ctx, &a, &[&b], None).await?;
    let y = group(ctx, &a, &b, "retry").await?;
    send_ok(ctx, &a, &x, "r1").await?;
    let n1 = g.wait_notes(&t, 1, WAIT).await?.remove(0);
    send_ok(ctx, &a, &y, "r2").await?;
    let notes = g.wait_notes(&t, 2, WAIT).await?;
    let retried = &notes[1];
    ensure!(
        retried.chat() == y && retried.counts() == (2, 1),
        "the retry after a 503 does not carry the newest chat and counts: {}",
        retried.body
    );
    ensure!(
        retried.at_ms - n1.at_ms >= 700,
        "retried {} ms after a 503 (the first retry waits about 1 s)",
        retried.at_ms - n1.at_ms
    );
    let most = g.state.max_in_flight.load(Ordering::SeqCst);
    ensure!(
        most <= 1,
        "{most} requests for one device were in flight at once"
    );
    Ok(())
}

pub(super) async fn gone(ctx: &Ctx) -> Result<()> {
    let (a, b1) = (ctx.register().await?, ctx.register().await?);
    let b2 = ctx.login(&b1).await?;
    let (t1, t2) = (token(), token());
    let g = gateway_for(ctx, &b1, &t1).await?;
    register(ctx, &b2, &g, &t2).await?;
    // The gateway says b1's token is gone (410) and lists b2's as rejected.
    g.answer(&t1, vec![(410, json!({"error": "gone"}))]);
    g.answer(&t2, vec![(200, json!({"rejected": [t2]}))]);
    let chat = create(ctx, &a, &[&b1], None).await?;
    send_ok(ctx, &a, &chat, "g1").await?;
    g.wait_notes(&t1, 1, WAIT).await?;
    g.wait_notes(&t2, 1, WAIT).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let left = pushers(ctx, &b1).await?;
        if left.is_empty() {
            return Ok(());
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "pushers still registered after 410 and a rejected token: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
