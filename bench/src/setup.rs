//! Accounts and chats over HTTP, before any load: one sender and one recipient per pair,
//! and a 1:1 chat between them.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use futures_util::stream::{self, StreamExt, TryStreamExt};
use parley_client_api::ErrorBody;
use parley_client_api::http::accounts::{Session, register};
use parley_client_api::http::chats::{ChatSummary, create};
use parley_client_api::{ChatId, UserId};
use reqwest::{Client, Url};
use serde::Serialize;
use serde::de::DeserializeOwned;

const PASSWORD: &str = "parley-bench-password";
const HTTP_TIMEOUT: Duration = Duration::from_secs(60);

/// One sender, one recipient and their chat.
#[derive(Debug, Clone)]
pub(crate) struct Pair {
    pub(crate) sender: Session,
    pub(crate) recipient: Session,
    pub(crate) chat_id: ChatId,
}

/// Registers `2 × pairs` users (at most `concurrency` at once: argon2id is slow by
/// design), senders at `base` and recipients at `recipient_base` (the same server, or a
/// federating one), and creates one chat per pair on the sender's server. Usernames carry
/// a random tag, so repeated runs against one server do not collide.
pub(crate) async fn pairs(
    base: &Url,
    recipient_base: &Url,
    pairs: usize,
    concurrency: usize,
) -> Result<Vec<Pair>> {
    let http = Client::builder()
        .timeout(HTTP_TIMEOUT)
        .build()
        .context("building the HTTP client")?;
    let tag = format!("{:08x}", rand::random::<u32>());
    let http = &http;
    let tag = &tag;
    stream::iter(0..pairs)
        .map(|i| async move {
            let sender = register_user(http, base, &format!("bench{tag}s{i}")).await?;
            let recipient = register_user(http, recipient_base, &format!("bench{tag}r{i}")).await?;
            let chat = create_chat(http, base, &sender, &recipient.user_id).await?;
            Ok::<_, anyhow::Error>(Pair {
                sender,
                recipient,
                chat_id: chat.chat_id,
            })
        })
        // Each pair registers its two users one after the other.
        .buffered(concurrency.div_ceil(2).max(1))
        .try_collect()
        .await
}

async fn register_user(http: &Client, base: &Url, username: &str) -> Result<Session> {
    let body = register::Request {
        username: username.to_owned(),
        password: PASSWORD.to_owned(),
        device_name: Some("parley-bench".into()),
    };
    post(http, base, register::PATH, None, &body)
        .await
        .with_context(|| format!("registering {username}"))
}

async fn create_chat(
    http: &Client,
    base: &Url,
    me: &Session,
    other: &UserId,
) -> Result<ChatSummary> {
    // Through serde: optional fields the API grows keep their defaults.
    let body: create::Request = serde_json::from_value(serde_json::json!({ "members": [other] }))?;
    post(http, base, create::PATH, Some(&me.access_token), &body)
        .await
        .with_context(|| format!("creating a chat of {} with {other}", me.user_id))
}

async fn post<B: Serialize, R: DeserializeOwned>(
    http: &Client,
    base: &Url,
    path: &str,
    token: Option<&str>,
    body: &B,
) -> Result<R> {
    let url = base.join(path)?;
    let mut req = http.post(url).json(body);
    if let Some(token) = token {
        req = req.bearer_auth(token);
    }
    let resp = req.send().await?;
    let status = resp.status();
    if !status.is_success() {
        let text = resp.text().await.unwrap_or_default();
        match serde_json::from_str::<ErrorBody>(&text) {
            Ok(e) => bail!("{status}: {} ({})", e.error.as_str(), e.message),
            Err(_) => bail!("{status}: {text}"),
        }
    }
    Ok(resp.json().await?)
}
