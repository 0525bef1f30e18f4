//! [`Client`]: one device of one user, with its profile directory.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use parley_client_api::http::accounts::{DeviceInfo, Session};
use parley_client_api::http::keys::{ClaimedKeyPackage, KeyPackageCount};
use parley_client_api::http::presence::{Presence, Visibility};
use parley_client_api::http::push::Pusher;
use parley_client_api::ws::ClientFrame;
use parley_client_api::{ChatId, DeviceId, ErrorCode, UserId};
use parley_crypto::{
    Content, DeviceIdentity, DevicePublicIdentity, Envelope, Group, ValidatedKeyPackage,
    generate_key_packages, validate_key_package,
};
use tokio::sync::{broadcast, mpsc, watch};
use tokio::task::JoinHandle;

use crate::api::Api;
use crate::error::{Error, Result};
use crate::payload::ChatPayload;
use crate::store::{self, ChatInfo, Db, Message, MessageState, Reader, provider};

/// Typing frames waiting for the socket.
const FRAME_QUEUE: usize = 64;

/// How a [`Client`] behaves. `ClientConfig::new(dir)` gives the defaults.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The profile directory: the SQLite store (session, MLS state, history, outbox).
    pub profile: PathBuf,
    /// How many one-time KeyPackages to keep on the server; topped up when fewer than
    /// half are left.
    pub key_package_target: usize,
    /// First and longest wait between reconnection attempts (doubling in between).
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    /// How often a connected client checks its KeyPackages and its own devices.
    pub housekeeping_interval: Duration,
    /// Capacity of the event channel; a subscriber that falls further behind misses
    /// events (and is told how many), and can re-read the state from the store.
    pub event_capacity: usize,
    /// The device name sent at register or login.
    pub device_name: Option<String>,
    /// How often a present device ([`Client::set_present`]) sends a heartbeat.
    pub heartbeat_interval: Duration,
}

impl ClientConfig {
    pub fn new(profile: impl Into<PathBuf>) -> Self {
        Self {
            profile: profile.into(),
            key_package_target: 20,
            reconnect_min: Duration::from_millis(250),
            reconnect_max: Duration::from_secs(10),
            housekeeping_interval: Duration::from_secs(60),
            event_capacity: 1024,
            device_name: None,
            heartbeat_interval: Duration::from_millis(
                parley_client_api::ws::HEARTBEAT_EVERY_MS.unsigned_abs(),
            ),
        }
    }
}

/// The connection to the homeserver's event stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionState {
    /// Not connected (not started, or waiting to reconnect).
    Offline,
    /// Connected; the inbox replay is running.
    Connected,
    /// Connected, inbox replayed: what arrives now is live.
    Synced,
    /// The session is gone (logged out or device removed).
    LoggedOut,
}

/// What the SDK tells an app, in order, on [`Client::subscribe`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The connection state changed.
    Connection(ConnectionState),
    /// This device joined a chat's MLS group (created it, or was added).
    ChatJoined { chat_id: ChatId },
    /// An own message was written locally (pending).
    MessageQueued(Message),
    /// A message from someone else was decrypted and stored.
    MessageReceived(Message),
    /// The sender edited a message (the new text; [`Reader::edits`] has every version).
    MessageEdited {
        chat_id: ChatId,
        id: String,
        text: String,
    },
    /// The sender deleted a message for everyone: it is a tombstone now.
    MessageDeleted { chat_id: ChatId, id: String },
    /// A member reacted to a message (`Some(emoji)`) or took the reaction back (`None`).
    ReactionChanged {
        chat_id: ChatId,
        id: String,
        user_id: UserId,
        emoji: Option<String>,
    },
    /// An own message changed state (✓ sent, ✓✓ delivered, read, failed).
    MessageStateChanged {
        chat_id: ChatId,
        id: String,
        seq: Option<i64>,
        state: MessageState,
    },
    /// A disappearing message's timer ended: it is gone from this device.
    MessageExpired { chat_id: ChatId, id: String },
    /// A member's receipts in a chat rose.
    ReceiptChanged {
        chat_id: ChatId,
        user_id: UserId,
        delivered_seq: i64,
        read_seq: i64,
    },
    /// This device left a chat's group (it left, or was removed): it reads nothing
    /// sent afterwards.
    ChatLeft { chat_id: ChatId },
    /// Devices joined or left a chat's MLS group.
    MembersChanged {
        chat_id: ChatId,
        added: Vec<(UserId, DeviceId)>,
        removed: Vec<(UserId, DeviceId)>,
    },
    /// A contact the user verified changed devices (added or removed one) since: the
    /// safety number changed; compare it again (spec/devices.md DV4).
    VerifiedDevicesChanged { chat_id: ChatId, user_id: UserId },
    /// Comes right before a message from a verified contact whose devices changed since
    /// the user verified them (until verified again).
    VerificationWarning { chat_id: ChatId, user_id: UserId },
    /// An event could not be decrypted or applied; it was skipped.
    Undecryptable {
        chat_id: ChatId,
        seq: i64,
        reason: String,
    },
    /// Someone who shares a chat with this user went online or offline (only while this
    /// device is present, [`Client::set_present`], and as privacy settings allow).
    Presence(Presence),
    /// A member of a chat started or stopped typing. A start ends by itself after
    /// [`parley_client_api::ws::TYPING_TTL_MS`] unless refreshed: apps drop it then.
    Typing {
        chat_id: ChatId,
        user_id: UserId,
        /// Absent for users of other servers.
        device_id: Option<DeviceId>,
        typing: bool,
    },
}

/// One device of one user: HTTP, the WebSocket event stream, the local store.
///
/// Cheap to clone. Needs a multi-threaded tokio runtime (the MLS store blocks in place).
/// Start the event stream with [`Client::connect`]; stop with [`Client::shutdown`].
#[derive(Clone)]
pub struct Client {
    pub(crate) inner: Arc<Inner>,
    _guard: Arc<ShutdownOnDrop>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("user_id", &self.inner.user_id)
            .field("device_id", &self.inner.device_id)
            .finish()
    }
}

struct ShutdownOnDrop(watch::Sender<bool>);

impl Drop for ShutdownOnDrop {
    fn drop(&mut self) {
        let _ = self.0.send(true);
    }
}

pub(crate) struct Inner {
    pub(crate) config: ClientConfig,
    pub(crate) api: Api,
    pub(crate) db: Db,
    pub(crate) identity: DeviceIdentity,
    pub(crate) user_id: UserId,
    pub(crate) device_id: DeviceId,
    pub(crate) events: broadcast::Sender<Event>,
    pub(crate) state: watch::Sender<ConnectionState>,
    pub(crate) flush_tx: mpsc::Sender<()>,
    flush_rx: std::sync::Mutex<Option<mpsc::Receiver<()>>>,
    pub(crate) shutdown: watch::Receiver<bool>,
    task: std::sync::Mutex<Option<JoinHandle<()>>>,
    /// A commit of ours lost a race: re-check the devices of our chats.
    pub(crate) needs_device_sync: AtomicBool,
    /// Outbox commits an SDK call is sending itself (over HTTP, to learn the outcome):
    /// the socket leaves them alone, but a chat's messages still wait behind them.
    pub(crate) direct: std::sync::Mutex<std::collections::HashSet<String>>,
    /// Media uploads and downloads running in this process.
    pub(crate) transfers: crate::media::Transfers,
    /// The app is in the foreground: the socket heartbeats (the user shows online) and
    /// gets presence updates.
    pub(crate) present: AtomicBool,
    /// Frames for the socket that are not stored anywhere (typing): sent if connected.
    pub(crate) frames_tx: mpsc::Sender<ClientFrame>,
    pub(crate) frames_rx: tokio::sync::Mutex<mpsc::Receiver<ClientFrame>>,
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn crypto_user(u: &UserId) -> Result<parley_crypto::UserId> {
    parley_crypto::UserId::try_from(u.as_str()).map_err(Error::crypto)
}

fn crypto_device(d: &DeviceId) -> Result<parley_crypto::DeviceId> {
    parley_crypto::DeviceId::try_from(d.as_str()).map_err(Error::crypto)
}

/// A fresh client message id for a commit.
pub(crate) fn commit_msg_id() -> String {
    format!("commit-{}", parley_crypto::MessageId::random().as_str())
}

impl Client {
    /// Creates an account on the server at `server_url`, logs this profile in as its
    /// first device and uploads KeyPackages.
    pub async fn register(
        config: ClientConfig,
        server_url: &str,
        username: &str,
        password: &str,
    ) -> Result<Client> {
        let db = Db::open(&config.profile).await?;
        if db.reader.user_id().await?.is_some() {
            return Err(Error::AlreadyLoggedIn(config.profile.display().to_string()));
        }
        let api = Api::new(server_url, None)?;
        let session = api
            .register(username, password, config.device_name.clone())
            .await?;
        Self::start_session(config, db, api.base().to_owned(), session).await
    }

    /// Logs this profile in as a new device of an existing account and uploads
    /// KeyPackages. Another device of the user adds it to the user's chats.
    pub async fn login(
        config: ClientConfig,
        server_url: &str,
        username: &str,
        password: &str,
    ) -> Result<Client> {
        let db = Db::open(&config.profile).await?;
        if db.reader.user_id().await?.is_some() {
            return Err(Error::AlreadyLoggedIn(config.profile.display().to_string()));
        }
        let api = Api::new(server_url, None)?;
        let session = api
            .login(username, password, config.device_name.clone())
            .await?;
        Self::start_session(config, db, api.base().to_owned(), session).await
    }

    async fn start_session(
        config: ClientConfig,
        db: Db,
        server_url: String,
        session: Session,
    ) -> Result<Client> {
        let identity = DeviceIdentity::generate(
            crypto_user(&session.user_id)?,
            crypto_device(&session.device_id)?,
        );
        {
            let mut conn = db.writer.lock().await;
            let mut tx = store::begin(&mut conn).await?;
            identity
                .save(provider(&mut tx).storage())
                .map_err(Error::crypto)?;
            store::set_state(&mut tx, "server_url", &server_url).await?;
            store::set_state(&mut tx, "user_id", session.user_id.as_str()).await?;
            store::set_state(&mut tx, "device_id", session.device_id.as_str()).await?;
            store::set_state(&mut tx, "access_token", &session.access_token).await?;
            store::set_state(
                &mut tx,
                "identity_key",
                &hex::encode(identity.public().key()),
            )
            .await?;
            crate::devices::bootstrap_trust(&mut tx, identity.public()).await?;
            tx.commit().await?;
        }
        let api = Api::new(&server_url, Some(session.access_token))?;
        let client = Self::build(
            config,
            db,
            api,
            identity,
            session.user_id,
            session.device_id,
        );
        if let Err(e) = client.top_up_key_packages().await {
            tracing::warn!(error = %e, "uploading key packages failed; retrying once connected");
        }
        Ok(client)
    }

    /// Opens the logged-in profile in `config.profile` (no network needed).
    pub async fn open(config: ClientConfig) -> Result<Client> {
        let db = Db::open(&config.profile).await?;
        let not_logged_in = || Error::NotLoggedIn(config.profile.display().to_string());
        let get = |k: &'static str| {
            let reader = db.reader.clone();
            async move { reader.state(k).await }
        };
        let server_url = get("server_url").await?.ok_or_else(not_logged_in)?;
        let user_id = get("user_id").await?.ok_or_else(not_logged_in)?;
        let device_id = get("device_id").await?.ok_or_else(not_logged_in)?;
        let token = get("access_token").await?.ok_or_else(not_logged_in)?;
        let key_hex = get("identity_key").await?.ok_or_else(not_logged_in)?;
        let user_id = UserId::try_from(user_id).map_err(Error::store)?;
        let device_id = DeviceId::try_from(device_id).map_err(Error::store)?;
        let key: [u8; 32] = hex::decode(&key_hex)
            .ok()
            .and_then(|k| k.try_into().ok())
            .ok_or_else(|| Error::Store("stored identity key is malformed".into()))?;
        let public =
            DevicePublicIdentity::new(crypto_user(&user_id)?, crypto_device(&device_id)?, key)
                .map_err(Error::crypto)?;
        let identity = {
            let mut conn = db.writer.lock().await;
            let identity = DeviceIdentity::load(provider(&mut conn).storage(), &public)
                .map_err(Error::crypto)?
                .ok_or_else(|| Error::Store("the device's identity key is missing".into()))?;
            crate::devices::bootstrap_trust(&mut conn, identity.public()).await?;
            identity
        };
        let api = Api::new(&server_url, Some(token))?;
        Ok(Self::build(config, db, api, identity, user_id, device_id))
    }

    fn build(
        config: ClientConfig,
        db: Db,
        api: Api,
        identity: DeviceIdentity,
        user_id: UserId,
        device_id: DeviceId,
    ) -> Client {
        let (events, _) = broadcast::channel(config.event_capacity.max(16));
        let (state, _) = watch::channel(ConnectionState::Offline);
        let (flush_tx, flush_rx) = mpsc::channel(1);
        let (frames_tx, frames_rx) = mpsc::channel(FRAME_QUEUE);
        let (shutdown_tx, shutdown) = watch::channel(false);
        let inner = Arc::new(Inner {
            config,
            api,
            db,
            identity,
            user_id,
            device_id,
            events,
            state,
            flush_tx,
            flush_rx: std::sync::Mutex::new(Some(flush_rx)),
            shutdown,
            task: std::sync::Mutex::new(None),
            needs_device_sync: AtomicBool::new(false),
            direct: std::sync::Mutex::default(),
            transfers: crate::media::Transfers::default(),
            present: AtomicBool::new(false),
            frames_tx,
            frames_rx: tokio::sync::Mutex::new(frames_rx),
        });
        Client {
            inner,
            _guard: Arc::new(ShutdownOnDrop(shutdown_tx)),
        }
    }

    /// This device's access token, for tools that speak the client API directly (the
    /// load harness opens its own sockets with it). Keep it secret.
    pub async fn access_token(&self) -> Result<String> {
        self.inner
            .db
            .reader
            .state("access_token")
            .await?
            .ok_or_else(|| Error::NotLoggedIn(self.inner.config.profile.display().to_string()))
    }

    /// This device's user.
    pub fn user_id(&self) -> &UserId {
        &self.inner.user_id
    }

    /// This device.
    pub fn device_id(&self) -> &DeviceId {
        &self.inner.device_id
    }

    /// The server URL this profile talks to.
    pub fn server_url(&self) -> &str {
        self.inner.api.base()
    }

    /// This device's public identity key (what safety numbers are made of).
    pub fn identity_key(&self) -> [u8; 32] {
        *self.inner.identity.public().key()
    }

    /// Read access to the local store (history, search, chats): works offline.
    pub fn store(&self) -> &Reader {
        &self.inner.db.reader
    }

    /// A stream of SDK events (bounded: see [`ClientConfig::event_capacity`]).
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.inner.events.subscribe()
    }

    /// The connection state, as a watch channel.
    pub fn connection(&self) -> watch::Receiver<ConnectionState> {
        self.inner.state.subscribe()
    }

    /// Starts the event stream: connects the WebSocket and keeps it connected
    /// (reconnecting with backoff), processes the inbox, sends the outbox. Idempotent.
    pub fn connect(&self) {
        let mut task = self
            .inner
            .task
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if task.is_some() {
            return;
        }
        let rx = self
            .inner
            .flush_rx
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(rx) = rx {
            *task = Some(tokio::spawn(crate::socket::run(self.inner.clone(), rx)));
        }
    }

    /// Waits until the event stream is synced (inbox replayed), up to `timeout`.
    pub async fn wait_synced(&self, timeout: Duration) -> Result<()> {
        let mut rx = self.connection();
        let wait =
            rx.wait_for(|s| matches!(s, ConnectionState::Synced | ConnectionState::LoggedOut));
        match tokio::time::timeout(timeout, wait).await {
            Ok(Ok(s)) if *s == ConnectionState::Synced => Ok(()),
            Ok(Ok(_)) => Err(Error::Server {
                code: ErrorCode::UnknownToken,
                status: 401,
                message: "this device was logged out or removed".into(),
            }),
            Ok(Err(_)) => Err(Error::Closed),
            Err(_) => Err(Error::Unreachable {
                url: self.server_url().to_owned(),
                reason: format!("not connected within {timeout:?}"),
            }),
        }
    }

    /// Stops the event stream and waits for it to finish; the profile is released when
    /// the last clone of this client is dropped.
    pub async fn shutdown(self) {
        let _ = self._guard.0.send(true);
        let task = self
            .inner
            .task
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(task) = task {
            let _ = task.await;
        }
        self.inner.db.reader.close().await;
    }

    // ---- accounts and devices ----

    /// The user's devices.
    pub async fn devices(&self) -> Result<Vec<DeviceInfo>> {
        self.inner.api.devices().await
    }

    /// Removes one of the user's devices from the server, then from the user's chats'
    /// MLS groups.
    pub async fn remove_device(&self, device: &DeviceId) -> Result<()> {
        self.inner.api.delete_device(device).await?;
        self.refresh_devices().await
    }

    /// Logs this device out (the server forgets it); the local store stays.
    pub async fn logout(&self) -> Result<()> {
        self.inner.api.logout().await?;
        let mut conn = self.inner.db.writer.lock().await;
        sqlx::query("DELETE FROM parley_state WHERE key = 'access_token'")
            .execute(&mut *conn)
            .await?;
        Ok(())
    }

    // ---- key packages ----

    /// How many KeyPackages this device has on the server.
    pub async fn key_package_count(&self) -> Result<KeyPackageCount> {
        self.inner.api.key_package_count().await
    }

    /// Uploads KeyPackages until the server holds `key_package_target` one-time ones
    /// (when fewer than half are left) and a last-resort one. Returns the new count.
    pub async fn top_up_key_packages(&self) -> Result<KeyPackageCount> {
        self.inner.top_up_key_packages().await
    }

    /// Claims one KeyPackage of each device of `user` (validated; invalid ones are
    /// dropped).
    pub async fn claim_key_packages(&self, user: &UserId) -> Result<Vec<ClaimedKeyPackage>> {
        let claimed = self.inner.api.claim(user).await?;
        let mut conn = self.inner.db.writer.lock().await;
        let p = provider(&mut conn);
        Ok(claimed
            .into_iter()
            .filter(|c| check_key_package(&p, user, c).is_some())
            .collect())
    }

    // ---- chats ----

    /// The chats this device knows (offline), most recently active first.
    pub async fn chats(&self) -> Result<Vec<ChatInfo>> {
        self.inner.db.reader.chats().await
    }

    /// The caller's chats as the server lists them (also those this device has not
    /// joined yet).
    pub async fn server_chats(&self) -> Result<Vec<parley_client_api::http::chats::ChatSummary>> {
        self.inner.api.chats().await
    }

    /// The last `limit` messages of a chat (offline).
    pub async fn history(&self, chat: &ChatId, limit: u32) -> Result<Vec<Message>> {
        self.inner.db.reader.history(chat, limit).await
    }

    /// Messages containing `needle` (offline).
    pub async fn search(&self, needle: &str, chat: Option<&ChatId>) -> Result<Vec<Message>> {
        self.inner.db.reader.search(needle, chat, 100).await
    }

    /// Finds the 1:1 chat with `peer` among the chats this device knows.
    pub async fn direct_chat_with(&self, peer: &UserId) -> Result<Option<ChatId>> {
        Ok(self
            .chats()
            .await?
            .into_iter()
            .find(|c| c.members.len() == 2 && c.members.contains(peer))
            .map(|c| c.chat_id))
    }

    /// Creates (or finds) the 1:1 chat with `peer` and sets up its MLS group: every
    /// device of `peer` and this user's other devices are added by one Commit, sent
    /// through the chat; it is merged once the server accepted it.
    ///
    /// When the chat already exists on the server and another device set it up, this
    /// device is not a member yet; it joins when one of the user's devices adds it.
    pub async fn create_chat(&self, peer: &UserId) -> Result<ChatId> {
        let inner = &self.inner;
        if peer == &inner.user_id {
            return Err(Error::Invalid(
                "a chat with yourself is not possible".into(),
            ));
        }
        let summary = inner.api.create_chat(vec![peer.clone()]).await?;
        let chat = summary.chat_id;
        {
            let mut conn = inner.db.writer.lock().await;
            let cur = store::cursor(&mut conn, &chat).await?;
            if cur.joined {
                return Ok(chat);
            }
            if summary.last_seq > 0 {
                // Someone set the group up already: wait to be added.
                store::ensure_chat(&mut conn, &chat, summary.created_at).await?;
                return Ok(chat);
            }
        }
        let mut kps = Vec::new();
        {
            let peer_kps = inner.api.claim(peer).await?;
            let mine = inner.api.claim(&inner.user_id).await?;
            let mut conn = inner.db.writer.lock().await;
            let trusted = crate::devices::trusted(&mut conn).await?;
            let p = provider(&mut conn);
            for c in &peer_kps {
                kps.extend(check_key_package(&p, peer, c));
            }
            if kps.is_empty() {
                return Err(Error::NoDevices(peer.to_string()));
            }
            for c in mine.iter().filter(|c| c.device_id != inner.device_id) {
                kps.extend(
                    check_key_package(&p, &inner.user_id, c)
                        .filter(|kp| crate::devices::trusted_key_package(kp, &trusted)),
                );
            }
        }
        let mut conn = inner.db.writer.lock().await;
        if store::cursor(&mut conn, &chat).await?.joined {
            // Joined meanwhile: the other side's Welcome arrived while we claimed.
            return Ok(chat);
        }
        let mut tx = store::begin(&mut conn).await?;
        let payload = {
            let p = provider(&mut tx);
            let gid = chat.as_str().as_bytes();
            if let Some(old) = Group::load(&p, gid).map_err(Error::crypto)? {
                // Left over from an attempt that never reached the server.
                old.delete(&p).map_err(Error::crypto)?;
            }
            let mut group = Group::create(&p, &inner.identity, gid).map_err(Error::crypto)?;
            let pc = group
                .commit_add(&p, &inner.identity, &kps)
                .map_err(Error::crypto)?;
            (
                ChatPayload::Commit {
                    epoch: pc.epoch,
                    commit: pc.commit,
                    welcome: pc.welcome,
                },
                pc.epoch,
                pc.group_info,
            )
        };
        store::ensure_chat(&mut tx, &chat, now_ms()).await?;
        store::set_joined(
            &mut tx,
            &chat,
            true,
            &[inner.user_id.clone(), peer.clone()],
            0,
        )
        .await?;
        store::outbox_push_commit(
            &mut tx,
            &chat,
            &commit_msg_id(),
            &payload.0.to_bytes(),
            payload.1,
            payload.2.as_deref(),
        )
        .await?;
        tx.commit().await?;
        drop(conn);
        inner.emit(Event::ChatJoined {
            chat_id: chat.clone(),
        });
        inner.kick();
        Ok(chat)
    }

    /// Writes a text message to the chat's history at once (pending) and queues it;
    /// it is encrypted and sent as soon as the chat's group and the connection allow,
    /// exactly once.
    pub async fn send_text(&self, chat: &ChatId, text: &str) -> Result<Message> {
        if text.is_empty() {
            return Err(Error::Invalid("the message is empty".into()));
        }
        let inner = &self.inner;
        let timer = inner.db.reader.timer(chat).await?;
        let (message, bytes) = inner.pending_message(
            chat,
            Content::Text {
                text: text.to_owned(),
            },
            "text",
            text.to_owned(),
            timer,
        )?;
        inner.queue_message(chat, &message, bytes).await?;
        Ok(message)
    }

    /// Marks the app present (foreground) or not. While present, the socket heartbeats,
    /// so the user shows online, and [`Event::Presence`] arrives; when not, the user goes
    /// offline after the server's heartbeat timeout even if the socket stays open.
    pub fn set_present(&self, present: bool) {
        self.inner.present.store(present, Ordering::Relaxed);
        self.inner.kick();
    }

    /// Tells the chat's members that the user types (`true`; call again every
    /// [`parley_client_api::ws::TYPING_REFRESH_MS`] while they do) or stopped. Sent only
    /// while connected (typing is never stored); dropped otherwise.
    pub fn typing(&self, chat: &ChatId, typing: bool) {
        let _ = self.inner.frames_tx.try_send(ClientFrame::Typing {
            chat_id: chat.clone(),
            typing,
        });
    }

    /// Who sees this user's online state and last seen.
    pub async fn privacy(&self) -> Result<Visibility> {
        Ok(self.inner.api.privacy().await?.last_seen)
    }

    /// Sets who sees this user's online state and last seen (and so whose this user
    /// sees: the rule is reciprocal). The read-receipt setting stays as it is.
    pub async fn set_privacy(&self, last_seen: Visibility) -> Result<Visibility> {
        let mut p = self.inner.api.privacy().await?;
        p.last_seen = last_seen;
        Ok(self.inner.api.set_privacy(&p).await?.last_seen)
    }

    /// Whether this user sends read receipts (and so sees others': the rule is
    /// reciprocal, spec/messaging.md MS40).
    pub async fn read_receipts(&self) -> Result<bool> {
        Ok(self.inner.api.privacy().await?.read_receipts)
    }

    /// Turns this user's read receipts on or off (every device): off, the server relays
    /// none of this user's read receipts and delivers this user none of anyone's;
    /// ✓✓ delivered still works both ways.
    pub async fn set_read_receipts(&self, on: bool) -> Result<bool> {
        let mut p = self.inner.api.privacy().await?;
        p.read_receipts = on;
        Ok(self.inner.api.set_privacy(&p).await?.read_receipts)
    }

    /// A user's online state and last seen, as far as this user may see them.
    pub async fn presence(&self, user: &UserId) -> Result<Presence> {
        self.inner.api.presence(user).await
    }

    /// This user's contacts (user ids of any server), sorted. `contacts` in the privacy
    /// setting means this list.
    pub async fn contacts(&self) -> Result<Vec<UserId>> {
        self.inner.api.contacts().await
    }

    /// Adds a user to this user's contacts (nothing changes if listed already).
    pub async fn add_contact(&self, user: &UserId) -> Result<()> {
        self.inner.api.add_contact(user).await
    }

    /// Removes a user from this user's contacts (nothing changes if not listed).
    pub async fn remove_contact(&self, user: &UserId) -> Result<()> {
        self.inner.api.remove_contact(user).await
    }

    /// Registers this device's pusher: push gateway URL and the device's push token.
    pub async fn add_pusher(&self, url: &str, token: &str) -> Result<Pusher> {
        self.inner.api.add_pusher(url, token).await
    }

    /// This user's pushers (one per device that registered one).
    pub async fn pushers(&self) -> Result<Vec<Pusher>> {
        self.inner.api.pushers().await
    }

    /// Removes the pusher of one of this user's devices.
    pub async fn remove_pusher(&self, device: &DeviceId) -> Result<()> {
        self.inner.api.remove_pusher(device).await
    }

    /// Marks everything received in the chat so far as read (sent to the server now or
    /// when connected).
    pub async fn mark_read(&self, chat: &ChatId) -> Result<i64> {
        let mut conn = self.inner.db.writer.lock().await;
        let seq = store::last_incoming(&mut conn, chat).await?;
        store::set_read_seq(&mut conn, chat, seq).await?;
        drop(conn);
        self.inner.kick();
        Ok(seq)
    }

    /// Compares the user's devices on the server with the members of each chat's MLS
    /// group, and commits adding the missing ones (and removing the ones the server no
    /// longer has).
    pub async fn refresh_devices(&self) -> Result<()> {
        self.inner.sync_devices(true).await
    }
}

/// Validates a claimed KeyPackage: well-formed, Parley's ciphersuite, and a credential
/// naming the expected user and the device the server said.
pub(crate) fn check_key_package(
    p: &store::MlsProvider<'_>,
    user: &UserId,
    c: &ClaimedKeyPackage,
) -> Option<ValidatedKeyPackage> {
    match validate_key_package(p, c.key_package.as_bytes()) {
        Ok(kp)
            if kp.identity().user_id().as_str() == user.as_str()
                && kp.identity().device_id().as_str() == c.device_id.as_str() =>
        {
            Some(kp)
        }
        Ok(_) => {
            tracing::warn!(%user, device = %c.device_id, "key package names another device; ignored");
            None
        }
        Err(e) => {
            tracing::warn!(%user, device = %c.device_id, error = %e, "invalid key package; ignored");
            None
        }
    }
}

impl Inner {
    /// A new outgoing message of this device (pending) and its encoded envelope.
    pub(crate) fn pending_message(
        &self,
        chat: &ChatId,
        content: Content,
        kind: &str,
        body: String,
        expires_in: Option<u32>,
    ) -> Result<(Message, Vec<u8>)> {
        let mut envelope = Envelope::new(u64::try_from(now_ms()).unwrap_or(0), content);
        envelope.expires_in = expires_in;
        let bytes = envelope.to_bytes().map_err(Error::crypto)?;
        let message = Message {
            chat_id: chat.clone(),
            id: envelope.id.as_str().to_owned(),
            seq: None,
            sender: self.user_id.clone(),
            sender_device: self.device_id.clone(),
            outgoing: true,
            kind: kind.into(),
            body,
            sent_at_ms: now_ms(),
            server_ts: None,
            state: MessageState::Pending,
            reply_to: None,
            edited_at: None,
            deleted: false,
            expires_at: expires_in.map(|s| now_ms() + i64::from(s) * 1000),
        };
        Ok((message, bytes))
    }

    /// Writes an own message to the history (pending) and queues its envelope.
    pub(crate) async fn queue_message(
        &self,
        chat: &ChatId,
        message: &Message,
        bytes: Vec<u8>,
    ) -> Result<()> {
        let mut conn = self.db.writer.lock().await;
        store::ensure_joined(&mut conn, chat).await?;
        let mut tx = store::begin(&mut conn).await?;
        store::insert_message(&mut tx, message).await?;
        store::outbox_push(
            &mut tx,
            chat,
            &message.id,
            store::OUTBOX_MESSAGE,
            Some(&bytes),
            None,
        )
        .await?;
        tx.commit().await?;
        drop(conn);
        self.emit(Event::MessageQueued(message.clone()));
        self.kick();
        Ok(())
    }

    pub(crate) fn emit(&self, e: Event) {
        let _ = self.events.send(e);
    }

    /// Asks the socket task to send what is queued.
    pub(crate) fn kick(&self) {
        let _ = self.flush_tx.try_send(());
    }

    pub(crate) fn set_state(&self, s: ConnectionState) {
        let changed = self.state.send_if_modified(|cur| {
            if *cur == s {
                false
            } else {
                *cur = s;
                true
            }
        });
        if changed {
            self.emit(Event::Connection(s));
        }
    }

    pub(crate) async fn top_up_key_packages(&self) -> Result<KeyPackageCount> {
        let count = self.api.key_package_count().await?;
        let target = self.config.key_package_target.clamp(1, 100);
        let low = (count.one_time as usize) < target.div_ceil(2);
        if !low && count.has_last_resort {
            return Ok(count);
        }
        let n = if low {
            target.saturating_sub(count.one_time as usize)
        } else {
            0
        };
        let batch = {
            let mut conn = self.db.writer.lock().await;
            let mut tx = store::begin(&mut conn).await?;
            let batch = generate_key_packages(&provider(&mut tx), &self.identity, n)
                .map_err(Error::crypto)?;
            // The private keys are durable before the public halves leave the device.
            tx.commit().await?;
            batch
        };
        let last_resort = (!count.has_last_resort).then_some(batch.last_resort);
        tracing::debug!(one_time = n, "uploading key packages");
        self.api
            .upload_key_packages(batch.one_time, last_resort)
            .await
    }

    /// See [`Client::refresh_devices`]. Unless `force`, only the device with the
    /// smallest id among the user's devices in a group acts (to avoid racing commits).
    pub(crate) async fn sync_devices(&self, force: bool) -> Result<()> {
        let devices = self.api.user_devices(&self.user_id).await?;
        let chats = {
            let mut conn = self.db.writer.lock().await;
            store::joined_chats(&mut conn).await?
        };
        for chat in chats {
            if let Err(e) = self.sync_chat_devices(&chat, &devices, force).await {
                tracing::warn!(%chat, error = %e, "updating the chat's devices failed");
            }
        }
        self.kick();
        Ok(())
    }

    async fn sync_chat_devices(
        &self,
        chat: &ChatId,
        devices: &[DeviceId],
        force: bool,
    ) -> Result<()> {
        let gid = chat.as_str().as_bytes();
        let (missing, stale) = {
            let mut conn = self.db.writer.lock().await;
            let p = provider(&mut conn);
            let Some(group) = Group::load(&p, gid).map_err(Error::crypto)? else {
                return Ok(());
            };
            if !group.is_active() || group.has_pending_commit() {
                return Ok(());
            }
            let members = group.members().map_err(Error::crypto)?;
            let mine: Vec<(String, u32)> = members
                .iter()
                .filter(|m| m.identity.user_id().as_str() == self.user_id.as_str())
                .map(|m| (m.identity.device_id().as_str().to_owned(), m.leaf_index))
                .collect();
            if !force {
                let leader = mine
                    .iter()
                    .map(|(d, _)| d.as_str())
                    .filter(|d| devices.iter().any(|x| x.as_str() == *d))
                    .min();
                if leader != Some(self.device_id.as_str()) {
                    return Ok(());
                }
            }
            let missing: Vec<DeviceId> = devices
                .iter()
                .filter(|d| !mine.iter().any(|(m, _)| m == d.as_str()))
                .cloned()
                .collect();
            let stale: Vec<u32> = mine
                .iter()
                .filter(|(d, _)| {
                    d != self.device_id.as_str() && !devices.iter().any(|x| x.as_str() == d)
                })
                .map(|(_, leaf)| *leaf)
                .collect();
            (missing, stale)
        };
        if missing.is_empty() && stale.is_empty() {
            return Ok(());
        }
        let mut kps = Vec::new();
        if !missing.is_empty() {
            let claimed = self.api.claim(&self.user_id).await?;
            let mut conn = self.db.writer.lock().await;
            // Only own devices this device trusts (spec/devices.md DL7).
            let trusted = crate::devices::trusted(&mut conn).await?;
            let p = provider(&mut conn);
            for c in claimed.iter().filter(|c| missing.contains(&c.device_id)) {
                kps.extend(
                    check_key_package(&p, &self.user_id, c)
                        .filter(|kp| crate::devices::trusted_key_package(kp, &trusted)),
                );
            }
        }
        if kps.is_empty() && stale.is_empty() {
            return Ok(());
        }
        let mut conn = self.db.writer.lock().await;
        let mut tx = store::begin(&mut conn).await?;
        let payload = {
            let p = provider(&mut tx);
            let Some(mut group) = Group::load(&p, gid).map_err(Error::crypto)? else {
                return Ok(());
            };
            if group.has_pending_commit() {
                return Ok(());
            }
            let pc = if kps.is_empty() {
                group.commit_remove(&p, &self.identity, &stale)
            } else {
                group.commit_add(&p, &self.identity, &kps)
            }
            .map_err(Error::crypto)?;
            (
                ChatPayload::Commit {
                    epoch: pc.epoch,
                    commit: pc.commit,
                    welcome: pc.welcome,
                },
                pc.epoch,
                pc.group_info,
            )
        };
        store::outbox_push_commit(
            &mut tx,
            chat,
            &commit_msg_id(),
            &payload.0.to_bytes(),
            payload.1,
            payload.2.as_deref(),
        )
        .await?;
        tx.commit().await?;
        tracing::info!(%chat, added = kps.len(), removed = stale.len(), "committing device changes");
        Ok(())
    }

    pub(crate) fn take_device_sync(&self) -> bool {
        self.needs_device_sync.swap(false, Ordering::SeqCst)
    }
}
