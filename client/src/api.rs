//! Typed HTTP calls to the homeserver, one method per endpoint of `parley-client-api`.

use std::time::Duration;

use parley_client_api::http::accounts::{self, DeviceInfo, Session};
use parley_client_api::http::chats::{self, ChatEvent, ChatSummary, SendAck};
use parley_client_api::http::contacts;
use parley_client_api::http::keys::{self, ClaimedKeyPackage, KeyPackageCount};
use parley_client_api::http::media;
use parley_client_api::http::presence;
use parley_client_api::http::push;
use parley_client_api::http::{Method, fill};
use parley_client_api::{BlobHash, ChatId, DeviceId, ErrorBody, ErrorCode, Payload, UserId};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};

/// How long one HTTP request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a media transfer may wait for the next bytes.
const MEDIA_READ_TIMEOUT: Duration = Duration::from_secs(60);

/// The homeserver's HTTP API for one device.
#[derive(Clone)]
pub(crate) struct Api {
    http: reqwest::Client,
    /// For media transfers: no limit on a whole request (a large segment may take long
    /// on a slow link), but on each wait for bytes.
    media: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Api").field("base", &self.base).finish()
    }
}

/// Builds a wire type from JSON through its own `Deserialize`: the SDK names only the
/// fields it sets, so optional fields added to `parley-client-api` later need no change
/// here (the same approach as parley-bench).
pub(crate) fn wire<T: DeserializeOwned>(value: serde_json::Value) -> Result<T> {
    serde_json::from_value(value).map_err(|e| Error::Protocol(format!("building a request: {e}")))
}

/// Normalizes a server URL: trims trailing slashes, defaults to `http://`.
pub(crate) fn normalize_url(url: &str) -> Result<String> {
    let url = url.trim().trim_end_matches('/');
    if url.is_empty() {
        return Err(Error::Invalid("the server URL is empty".into()));
    }
    let url = if url.starts_with("http://") || url.starts_with("https://") {
        url.to_owned()
    } else {
        format!("http://{url}")
    };
    Ok(url)
}

impl Api {
    pub(crate) fn new(base: &str, token: Option<String>) -> Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| Error::Protocol(format!("building the HTTP client: {e}")))?;
        let media = reqwest::Client::builder()
            .read_timeout(MEDIA_READ_TIMEOUT)
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| Error::Protocol(format!("building the HTTP client: {e}")))?;
        Ok(Self {
            http,
            media,
            base: normalize_url(base)?,
            token,
        })
    }

    pub(crate) fn base(&self) -> &str {
        &self.base
    }

    pub(crate) fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// The WebSocket URL (`ws://…/v1/ws` or `wss://…`).
    pub(crate) fn ws_url(&self) -> String {
        let rest = self
            .base
            .strip_prefix("https://")
            .map(|r| format!("wss://{r}"))
            .or_else(|| {
                self.base
                    .strip_prefix("http://")
                    .map(|r| format!("ws://{r}"))
            })
            .unwrap_or_else(|| self.base.clone());
        format!("{rest}{}", parley_client_api::ws::PATH)
    }

    pub(crate) async fn call<B: Serialize, R: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<R> {
        let bytes = self.raw(method, path, body).await?;
        let bytes = if bytes.is_empty() {
            b"null".to_vec()
        } else {
            bytes
        };
        serde_json::from_slice(&bytes)
            .map_err(|e| Error::Protocol(format!("{} {path}: {e}", method.as_str())))
    }

    pub(crate) async fn raw<B: Serialize>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<Vec<u8>> {
        let url = format!("{}{path}", self.base);
        let m = reqwest::Method::from_bytes(method.as_str().as_bytes())
            .map_err(|e| Error::Protocol(format!("method {}: {e}", method.as_str())))?;
        let mut req = self.http.request(m, &url);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.map_err(|e| Error::Unreachable {
            url: self.base.clone(),
            reason: describe(&e),
        })?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| Error::Unreachable {
            url: self.base.clone(),
            reason: describe(&e),
        })?;
        if status.is_success() {
            return Ok(bytes.to_vec());
        }
        Err(server_error(status, &bytes, method, path))
    }

    pub(crate) async fn register(
        &self,
        username: &str,
        password: &str,
        device_name: Option<String>,
    ) -> Result<Session> {
        let body: accounts::register::Request = wire(serde_json::json!({
            "username": username,
            "password": password,
            "device_name": device_name,
        }))?;
        self.call(
            accounts::register::METHOD,
            accounts::register::PATH,
            Some(&body),
        )
        .await
    }

    pub(crate) async fn login(
        &self,
        username: &str,
        password: &str,
        device_name: Option<String>,
    ) -> Result<Session> {
        let body: accounts::login::Request = wire(serde_json::json!({
            "username": username,
            "password": password,
            "device_name": device_name,
        }))?;
        self.call(accounts::login::METHOD, accounts::login::PATH, Some(&body))
            .await
    }

    pub(crate) async fn logout(&self) -> Result<()> {
        self.raw::<()>(accounts::logout::METHOD, accounts::logout::PATH, None)
            .await
            .map(drop)
    }

    pub(crate) async fn privacy(&self) -> Result<presence::Privacy> {
        self.call::<(), _>(
            presence::get_privacy::METHOD,
            presence::get_privacy::PATH,
            None,
        )
        .await
    }

    pub(crate) async fn set_privacy(&self, body: &presence::Privacy) -> Result<presence::Privacy> {
        self.call(
            presence::set_privacy::METHOD,
            presence::set_privacy::PATH,
            Some(body),
        )
        .await
    }

    pub(crate) async fn presence(&self, user: &UserId) -> Result<presence::Presence> {
        let path = fill(presence::get::PATH, &[("user_id", user.as_str())]);
        self.call::<(), _>(presence::get::METHOD, &path, None).await
    }

    pub(crate) async fn contacts(&self) -> Result<Vec<UserId>> {
        let r: contacts::list::Response = self
            .call::<(), _>(contacts::list::METHOD, contacts::list::PATH, None)
            .await?;
        Ok(r.contacts)
    }

    pub(crate) async fn add_contact(&self, user: &UserId) -> Result<()> {
        let path = fill(contacts::add::PATH, &[("user_id", user.as_str())]);
        self.raw::<()>(contacts::add::METHOD, &path, None)
            .await
            .map(drop)
    }

    pub(crate) async fn remove_contact(&self, user: &UserId) -> Result<()> {
        let path = fill(contacts::remove::PATH, &[("user_id", user.as_str())]);
        self.raw::<()>(contacts::remove::METHOD, &path, None)
            .await
            .map(drop)
    }

    pub(crate) async fn add_pusher(&self, url: &str, token: &str) -> Result<push::Pusher> {
        let body = push::set::Request {
            url: url.to_owned(),
            token: token.to_owned(),
        };
        self.call(push::set::METHOD, push::set::PATH, Some(&body))
            .await
    }

    pub(crate) async fn pushers(&self) -> Result<Vec<push::Pusher>> {
        let r: push::list::Response = self
            .call::<(), _>(push::list::METHOD, push::list::PATH, None)
            .await?;
        Ok(r.pushers)
    }

    pub(crate) async fn remove_pusher(&self, device: &DeviceId) -> Result<()> {
        let path = fill(push::delete::PATH, &[("device_id", device.as_str())]);
        self.raw::<()>(push::delete::METHOD, &path, None)
            .await
            .map(drop)
    }

    pub(crate) async fn devices(&self) -> Result<Vec<DeviceInfo>> {
        let r: accounts::list_devices::Response = self
            .call::<(), _>(
                accounts::list_devices::METHOD,
                accounts::list_devices::PATH,
                None,
            )
            .await?;
        Ok(r.devices)
    }

    pub(crate) async fn delete_device(&self, device: &DeviceId) -> Result<()> {
        let path = fill(
            accounts::delete_device::PATH,
            &[("device_id", device.as_str())],
        );
        self.raw::<()>(accounts::delete_device::METHOD, &path, None)
            .await
            .map(drop)
    }

    pub(crate) async fn create_chat(&self, members: Vec<UserId>) -> Result<ChatSummary> {
        let body: chats::create::Request = wire(serde_json::json!({ "members": members }))?;
        self.call(chats::create::METHOD, chats::create::PATH, Some(&body))
            .await
    }

    pub(crate) async fn create_group(
        &self,
        members: Vec<UserId>,
        name: &str,
    ) -> Result<ChatSummary> {
        let body: chats::create::Request =
            wire(serde_json::json!({ "members": members, "name": name }))?;
        self.call(chats::create::METHOD, chats::create::PATH, Some(&body))
            .await
    }

    pub(crate) async fn members(&self, chat: &ChatId) -> Result<chats::members::Response> {
        let path = fill(chats::members::PATH, &[("chat_id", chat.as_str())]);
        self.call::<(), _>(chats::members::METHOD, &path, None)
            .await
    }

    pub(crate) async fn rename(&self, chat: &ChatId, name: &str) -> Result<()> {
        let path = fill(chats::rename::PATH, &[("chat_id", chat.as_str())]);
        let body: chats::rename::Request = wire(serde_json::json!({ "name": name }))?;
        self.raw(chats::rename::METHOD, &path, Some(&body))
            .await
            .map(drop)
    }

    pub(crate) async fn set_admin(&self, chat: &ChatId, user: &UserId, admin: bool) -> Result<()> {
        let path = fill(chats::set_admin::PATH, &[("chat_id", chat.as_str())]);
        let body: chats::set_admin::Request =
            wire(serde_json::json!({ "user_id": user, "admin": admin }))?;
        self.raw(chats::set_admin::METHOD, &path, Some(&body))
            .await
            .map(drop)
    }

    pub(crate) async fn receipts(&self, chat: &ChatId) -> Result<chats::receipts::Response> {
        let path = fill(chats::receipts::PATH, &[("chat_id", chat.as_str())]);
        self.call::<(), _>(chats::receipts::METHOD, &path, None)
            .await
    }

    /// The chat's current GroupInfo (for joining by external commit).
    pub(crate) async fn group_info(&self, chat: &ChatId) -> Result<chats::group_info::Response> {
        let path = fill(chats::group_info::PATH, &[("chat_id", chat.as_str())]);
        self.call::<(), _>(chats::group_info::METHOD, &path, None)
            .await
    }

    /// Sends one event over HTTP (the server deduplicates by `client_msg_id`, so the
    /// same send may also travel over the socket).
    pub(crate) async fn send_event(
        &self,
        chat: &ChatId,
        body: &chats::send::Request,
    ) -> Result<SendAck> {
        let path = fill(chats::send::PATH, &[("chat_id", chat.as_str())]);
        self.call(chats::send::METHOD, &path, Some(body)).await
    }

    pub(crate) async fn chats(&self) -> Result<Vec<ChatSummary>> {
        let r: chats::list::Response = self
            .call::<(), _>(chats::list::METHOD, chats::list::PATH, None)
            .await?;
        Ok(r.chats)
    }

    pub(crate) async fn history(
        &self,
        chat: &ChatId,
        after: i64,
        limit: u32,
    ) -> Result<Vec<ChatEvent>> {
        let path = format!(
            "{}?after={after}&limit={limit}",
            fill(chats::history::PATH, &[("chat_id", chat.as_str())])
        );
        let r: chats::history::Response = self
            .call::<(), _>(chats::history::METHOD, &path, None)
            .await?;
        Ok(r.events)
    }

    pub(crate) async fn upload_key_packages(
        &self,
        one_time: Vec<Vec<u8>>,
        last_resort: Option<Vec<u8>>,
    ) -> Result<KeyPackageCount> {
        let key_packages: Vec<Payload> = one_time.into_iter().map(Payload).collect();
        let body: keys::upload::Request = wire(serde_json::json!({
            "key_packages": key_packages,
            "last_resort": last_resort.map(Payload),
        }))?;
        self.call(keys::upload::METHOD, keys::upload::PATH, Some(&body))
            .await
    }

    pub(crate) async fn key_package_count(&self) -> Result<KeyPackageCount> {
        self.call::<(), _>(keys::count::METHOD, keys::count::PATH, None)
            .await
    }

    pub(crate) async fn claim(&self, user: &UserId) -> Result<Vec<ClaimedKeyPackage>> {
        let body: keys::claim::Request = wire(serde_json::json!({ "user_id": user }))?;
        let r: keys::claim::Response = self
            .call(keys::claim::METHOD, keys::claim::PATH, Some(&body))
            .await?;
        Ok(r.devices)
    }

    pub(crate) async fn user_devices(&self, user: &UserId) -> Result<Vec<DeviceId>> {
        let path = fill(keys::user_devices::PATH, &[("user_id", user.as_str())]);
        let r: keys::user_devices::Response = self
            .call::<(), _>(keys::user_devices::METHOD, &path, None)
            .await?;
        Ok(r.devices)
    }
}

/// The error a refused request carries (its body's code, else one from its status).
fn server_error(status: reqwest::StatusCode, body: &[u8], method: Method, path: &str) -> Error {
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(body) => Error::Server {
            code: body.error,
            status: status.as_u16(),
            message: body.message,
        },
        Err(_) => Error::Server {
            code: if status.is_server_error() {
                ErrorCode::Internal
            } else {
                ErrorCode::NotFound
            },
            status: status.as_u16(),
            message: format!("the server answered {status} to {} {path}", method.as_str()),
        },
    }
}

impl Api {
    fn unreachable(&self, e: &reqwest::Error) -> Error {
        Error::Unreachable {
            url: self.base.clone(),
            reason: describe(e),
        }
    }

    fn media_request(&self, method: Method, path: &str) -> Result<reqwest::RequestBuilder> {
        let m = reqwest::Method::from_bytes(method.as_str().as_bytes())
            .map_err(|e| Error::Protocol(format!("method {}: {e}", method.as_str())))?;
        let mut req = self.media.request(m, format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        Ok(req)
    }

    /// Whether the server stores the blob (`HEAD /v1/media/{blob}`).
    pub(crate) async fn blob_exists(&self, blob: &BlobHash) -> Result<bool> {
        let path = fill(media::exists::PATH, &[("blob", blob.as_str())]);
        let resp = self
            .media_request(media::exists::METHOD, &path)?
            .send()
            .await
            .map_err(|e| self.unreachable(&e))?;
        match resp.status() {
            s if s.is_success() => Ok(true),
            reqwest::StatusCode::NOT_FOUND => Ok(false),
            s => Err(server_error(s, b"", media::exists::METHOD, &path)),
        }
    }

    /// How many bytes of this device's user's upload of `blob` the server holds.
    pub(crate) async fn upload_status(&self, blob: &BlobHash) -> Result<media::UploadState> {
        let path = fill(media::upload_status::PATH, &[("blob", blob.as_str())]);
        self.call::<(), _>(media::upload_status::METHOD, &path, None)
            .await
    }

    /// Appends `len` bytes (`body`) at `offset` to the upload of `blob` (`total` bytes).
    pub(crate) async fn upload_chunk(
        &self,
        blob: &BlobHash,
        offset: u64,
        total: u64,
        len: u64,
        body: reqwest::Body,
    ) -> Result<media::UploadState> {
        let path = format!(
            "{}?offset={offset}&total={total}",
            fill(media::upload::PATH, &[("blob", blob.as_str())])
        );
        let resp = self
            .media_request(media::upload::METHOD, &path)?
            .header(reqwest::header::CONTENT_LENGTH, len)
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .body(body)
            .send()
            .await
            .map_err(|e| self.unreachable(&e))?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| self.unreachable(&e))?;
        if !status.is_success() {
            return Err(server_error(status, &bytes, media::upload::METHOD, &path));
        }
        serde_json::from_slice(&bytes).map_err(|e| Error::Protocol(format!("PUT {path}: {e}")))
    }

    /// Starts downloading `blob` from byte `from`: the response streams the rest.
    pub(crate) async fn download(&self, blob: &BlobHash, from: u64) -> Result<reqwest::Response> {
        let path = fill(media::download::PATH, &[("blob", blob.as_str())]);
        let mut req = self.media_request(media::download::METHOD, &path)?;
        if from > 0 {
            req = req.header(reqwest::header::RANGE, format!("bytes={from}-"));
        }
        let resp = req.send().await.map_err(|e| self.unreachable(&e))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let bytes = resp.bytes().await.map_err(|e| self.unreachable(&e))?;
        Err(server_error(status, &bytes, media::download::METHOD, &path))
    }
}

/// A one-line reason for a transport failure.
pub(crate) fn describe(e: &reqwest::Error) -> String {
    if e.is_connect() {
        "connection refused or unreachable".to_owned()
    } else if e.is_timeout() {
        "timed out".to_owned()
    } else {
        let mut s = e.to_string();
        let mut src = std::error::Error::source(e);
        while let Some(inner) = src {
            s = format!("{s}: {inner}");
            src = inner.source();
        }
        s
    }
}
