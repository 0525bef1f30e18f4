//! Shared helpers: a real homeserver process on SQLite or Postgres, a recording TCP
//! proxy in front of it, SDK devices with profile directories, polling waits.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use parley_client::{ChatId, Client, ClientConfig, Event, Message, MessageState, UserId};
use parley_testkit::{PgDatabase, ServerProcess, homeserver};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, watch};

pub const SERVER_NAME: &str = "parley.test";
pub const PASSWORD: &str = "correct horse battery";
/// How long a test waits for something it expects.
pub const WAIT: Duration = Duration::from_secs(30);

/// Runs one async test body on both backends, as `sqlite::<name>` and `postgres::<name>`.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::harness::Backend::Sqlite).await.unwrap();
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::harness::Backend::Postgres).await.unwrap();
                }
            )*
        }
    };
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The `parley-homeserver` binary beside this test's binary (`…/debug/deps/it-…` →
/// `…/debug/parley-homeserver`).
pub fn homeserver_binary() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .context("the test binary has no grandparent directory")?;
    let bin = dir.join("parley-homeserver");
    if !bin.exists() {
        bail!(
            "{} is missing: run `cargo build -p parley-homeserver` first",
            bin.display()
        );
    }
    Ok(bin)
}

/// A homeserver process with its own database, behind a recording proxy.
pub struct Server {
    pub process: ServerProcess,
    pub proxy: Proxy,
    pub database_url: String,
    pub data_dir: tempfile::TempDir,
    /// Extra command-line arguments of the server process.
    extra: Vec<String>,
    /// `(listen, server name)`; a restart keeps both (peers know the name).
    identity: (String, String),
    /// Directories that must outlive the process (a peer's config file).
    keep: Vec<tempfile::TempDir>,
    earlier_logs: Mutex<String>,
    _pg: Option<PgDatabase>,
}

/// Client-side logs for a failing test: `PARLEY_TEST_LOG=parley_client=debug`.
fn init_logging() {
    if let Ok(filter) = std::env::var("PARLEY_TEST_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_test_writer()
            .try_init();
    }
}

impl Server {
    pub async fn start(backend: Backend) -> Result<Self> {
        Self::start_with(backend, &[]).await
    }

    /// Starts a server with extra command-line arguments (e.g. `--config FILE`).
    pub async fn start_with(backend: Backend, extra: &[&str]) -> Result<Self> {
        let identity = ("127.0.0.1:0".to_owned(), SERVER_NAME.to_owned());
        Self::start_as(backend, identity, extra).await
    }

    /// A federating server on `ip` (e.g. `127.0.0.2`, name `ip:port`) that allows the
    /// loopback peers 127.0.0.1–5; `federation` adds lines to its `[federation]`.
    pub async fn start_peer(backend: Backend, ip: &str, federation: &str) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("peer.toml");
        std::fs::write(&path, homeserver::peer_config("", federation))?;
        let args = homeserver::peer_args(&path);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut server = Self::start_as(backend, homeserver::peer_identity(ip), &args).await?;
        server.keep.push(dir);
        Ok(server)
    }

    /// This server's name (the part after `:` in its users' ids).
    pub fn name(&self) -> &str {
        &self.identity.1
    }

    async fn start_as(
        backend: Backend,
        identity: (String, String),
        extra: &[&str],
    ) -> Result<Self> {
        init_logging();
        let extra: Vec<String> = extra.iter().map(|s| (*s).to_owned()).collect();
        let data_dir = tempfile::tempdir()?;
        let (database_url, pg) = match backend {
            Backend::Sqlite => (
                format!("sqlite://{}", data_dir.path().join("parley.db").display()),
                None,
            ),
            Backend::Postgres => {
                let db = parley_testkit::postgres().await?;
                (db.url().to_owned(), Some(db))
            }
        };
        let process = spawn(&database_url, data_dir.path(), &identity, &extra).await?;
        let proxy = Proxy::start(process.addr()).await?;
        Ok(Self {
            process,
            proxy,
            database_url,
            data_dir,
            extra,
            identity,
            keep: Vec::new(),
            earlier_logs: Mutex::new(String::new()),
            _pg: pg,
        })
    }

    /// The URL clients use: the proxy's.
    pub fn url(&self) -> String {
        self.proxy.url()
    }

    /// Stops the server (SIGKILL).
    pub async fn stop(&mut self) -> Result<()> {
        self.process.kill_hard().await?;
        Ok(())
    }

    /// Starts the server again on the same database (a new port unless it federates:
    /// peers know its address; the proxy follows).
    pub async fn restart(&mut self) -> Result<()> {
        let logs = self.process.logs();
        self.process = spawn(
            &self.database_url,
            self.data_dir.path(),
            &self.identity,
            &self.extra,
        )
        .await?;
        self.proxy.set_upstream(self.process.addr());
        self.earlier_logs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push_str(&logs);
        Ok(())
    }

    /// Everything every server process printed.
    pub fn logs(&self) -> String {
        let mut all = self
            .earlier_logs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        all.push_str(&self.process.logs());
        all
    }

    /// Registers a user through the SDK, in a fresh profile directory.
    pub async fn register(&self, username: &str) -> Result<Device> {
        let dir = tempfile::tempdir()?;
        let client = Client::register(config(dir.path()), &self.url(), username, PASSWORD).await?;
        Ok(Device::new(client, dir))
    }

    /// Logs in another device of a user, in a fresh profile directory. Not linked: the
    /// user's devices do not add it to their chats (see [`Server::link`]).
    pub async fn login(&self, username: &str) -> Result<Device> {
        let dir = tempfile::tempdir()?;
        let client = Client::login(config(dir.path()), &self.url(), username, PASSWORD).await?;
        Ok(Device::new(client, dir))
    }

    /// Logs in another device of `existing`'s user and links it: the new device opens a
    /// link, `existing` approves its code (trusting it and adding it to every chat), the
    /// new device checks the approval.
    pub async fn link(&self, username: &str, existing: &Device) -> Result<Device> {
        let new = self.login(username).await?;
        let link = new.client.start_link().await?;
        existing
            .client
            .approve_link(&link.code(), parley_client::HistoryRange::Nothing)
            .await?;
        new.client.wait_for_approval(link, WAIT).await?;
        Ok(new)
    }
}

/// A client configuration for tests: quick reconnects.
pub fn config(dir: &Path) -> ClientConfig {
    let mut c = ClientConfig::new(dir);
    c.reconnect_min = Duration::from_millis(100);
    c.reconnect_max = Duration::from_millis(500);
    c.key_package_target = 6;
    c.heartbeat_interval = Duration::from_millis(400);
    c
}

async fn spawn(
    database_url: &str,
    data_dir: &Path,
    (listen, server_name): &(String, String),
    extra: &[String],
) -> Result<ServerProcess> {
    let mut args = homeserver::base_args(listen, server_name, database_url, data_dir);
    args.extend_from_slice(extra);
    ServerProcess::spawn(homeserver_binary()?, args, [("PARLEY_LOG", "debug")]).await
}

/// One device: an SDK client, its event stream, its profile directory.
pub struct Device {
    pub client: Client,
    pub events: broadcast::Receiver<Event>,
    pub dir: tempfile::TempDir,
}

impl Device {
    pub fn new(client: Client, dir: tempfile::TempDir) -> Self {
        let events = client.subscribe();
        Self {
            client,
            events,
            dir,
        }
    }

    pub fn user(&self) -> &UserId {
        self.client.user_id()
    }

    /// Connects and waits for the inbox replay.
    pub async fn online(&self) -> Result<()> {
        self.client.connect();
        self.client.wait_synced(WAIT).await?;
        Ok(())
    }

    /// Shuts the client down and opens the profile again (a restart).
    pub async fn restart(self) -> Result<Device> {
        let Device { client, dir, .. } = self;
        client.shutdown().await;
        // A task the old client spawned may still hold its store (and the profile's
        // lock) for a moment; a new process would find it released at exit.
        let deadline = tokio::time::Instant::now() + WAIT;
        let client = loop {
            match Client::open(config(dir.path())).await {
                Err(parley_client::Error::ProfileInUse(_))
                    if tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                other => break other?,
            }
        };
        Ok(Device::new(client, dir))
    }

    pub async fn history(&self, chat: &ChatId) -> Result<Vec<Message>> {
        Ok(self.client.history(chat, 1000).await?)
    }

    /// Waits until this device is in the chat's group.
    pub async fn joined(&self, chat: &ChatId) -> Result<()> {
        let store = self.client.store().clone();
        let chat = chat.clone();
        eventually(&format!("{} joins {chat}", self.user()), || {
            let store = store.clone();
            let chat = chat.clone();
            async move { Ok(store.chat(&chat).await?.is_some_and(|c| c.joined)) }
        })
        .await
    }

    /// Waits until the chat's history holds a message with `text`; returns it.
    pub async fn received(&self, chat: &ChatId, text: &str) -> Result<Message> {
        let what = format!("{} has {text:?}", self.user());
        eventually(&what, || async {
            Ok(self.history(chat).await?.iter().any(|m| m.body == text))
        })
        .await?;
        self.history(chat)
            .await?
            .into_iter()
            .find(|m| m.body == text)
            .context("vanished")
    }

    /// Waits until an own message reaches `state`.
    pub async fn state(&self, chat: &ChatId, id: &str, state: MessageState) -> Result<()> {
        let what = format!("{}'s message {id} is {state:?}", self.user());
        eventually(&what, || async {
            Ok(self
                .client
                .store()
                .message(chat, id)
                .await?
                .is_some_and(|m| m.state == state))
        })
        .await
    }

    /// Makes this device trust `other` (an own device) as if it had seen a trusted device
    /// add it, by writing the profile's table directly: for tests that need two devices
    /// to race on adding the same device.
    pub async fn trust(&self, other: &Device) -> Result<()> {
        use sqlx::Connection as _;
        let url = format!(
            "sqlite://{}",
            self.dir
                .path()
                .join(parley_client::store::DB_FILE)
                .display()
        );
        let mut conn = sqlx::SqliteConnection::connect(&url).await?;
        sqlx::query(
            "INSERT INTO trusted_devices (device_id, identity_key, how, trusted_at) VALUES (?1, ?2, 'test', 0)",
        )
        .bind(other.client.device_id().as_str())
        .bind(other.client.identity_key().as_slice())
        .execute(&mut conn)
        .await?;
        Ok(())
    }

    /// The access token (read from the profile, for raw API checks).
    pub async fn token(&self) -> Result<String> {
        use sqlx::Connection as _;
        let url = format!(
            "sqlite://{}?mode=ro",
            self.dir
                .path()
                .join(parley_client::store::DB_FILE)
                .display()
        );
        let mut conn = sqlx::SqliteConnection::connect(&url).await?;
        let token: String =
            sqlx::query_scalar("SELECT value FROM parley_state WHERE key = 'access_token'")
                .fetch_one(&mut conn)
                .await?;
        Ok(token)
    }
}

/// Polls `check` every 50 ms until it is true, failing after [`WAIT`].
pub async fn eventually<F, Fut>(what: &str, mut check: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<bool>>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if check().await? {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            bail!("timed out waiting until {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn users(ds: &[&Device]) -> Vec<UserId> {
    ds.iter().map(|d| d.user().clone()).collect()
}

/// Every device in `ds` has the same texts, in the same seq order (waiting until each
/// has them all with their `seq`: an own message has none until the hub ordered it).
pub async fn same_order(chat: &ChatId, ds: &[&Device], texts: &[&str]) -> Result<()> {
    for d in ds {
        for t in texts {
            let what = format!("{} has {t:?} with its seq", d.user());
            eventually(&what, || async {
                Ok(d.history(chat)
                    .await?
                    .iter()
                    .any(|m| m.body == *t && m.seq.is_some()))
            })
            .await?;
        }
    }
    let order = |h: Vec<parley_client::Message>| -> Vec<(i64, String)> {
        h.into_iter()
            .filter(|m| texts.contains(&m.body.as_str()))
            .map(|m| (m.seq.unwrap_or(-1), m.body))
            .collect()
    };
    let want = order(ds[0].history(chat).await?);
    for d in &ds[1..] {
        let got = order(d.history(chat).await?);
        ensure!(got == want, "{} has {got:?}, want {want:?}", d.user());
    }
    Ok(())
}

/// Every device's MLS epoch for the chat is the same.
pub async fn same_epoch(chat: &ChatId, ds: &[&Device]) -> Result<u64> {
    let epochs = || async {
        let mut epochs = Vec::new();
        for d in ds {
            epochs.push(d.client.epoch(chat).await?);
        }
        anyhow::Ok(epochs)
    };
    eventually("every member is on the same epoch", || async {
        let e = epochs().await?;
        Ok(e[0].is_some() && e.iter().all(|x| *x == e[0]))
    })
    .await?;
    epochs().await?[0].ok_or_else(|| anyhow::anyhow!("no epoch"))
}

pub async fn not_joined(d: &Device, chat: &ChatId) -> Result<()> {
    let store = d.client.store().clone();
    eventually(&format!("{} has left {chat}", d.user()), || {
        let store = store.clone();
        let chat = chat.clone();
        async move { Ok(store.chat(&chat).await?.is_some_and(|c| !c.joined)) }
    })
    .await
}

/// The events of `device` so far (non-blocking).
pub fn drain(events: &mut broadcast::Receiver<Event>) -> Vec<Event> {
    let mut out = Vec::new();
    while let Ok(e) = events.try_recv() {
        out.push(e);
    }
    out
}

/// Raw history of a chat from the server (what it stores), with a member's token.
pub async fn server_history(
    base: &str,
    token: &str,
    chat: &ChatId,
) -> Result<Vec<parley_client_api::http::chats::ChatEvent>> {
    let path = parley_client_api::http::fill(
        parley_client_api::http::chats::history::PATH,
        &[("chat_id", chat.as_str())],
    );
    let resp = reqwest::Client::new()
        .get(format!("{base}{path}?after=0&limit=500"))
        .bearer_auth(token)
        .send()
        .await?;
    if !resp.status().is_success() {
        bail!("history: {}", resp.status());
    }
    let body: parley_client_api::http::chats::history::Response = resp.json().await?;
    Ok(body.events)
}

/// One proxied TCP connection's bytes, each direction.
#[derive(Debug, Default, Clone)]
pub struct Recorded {
    /// Client → server.
    pub up: Vec<u8>,
    /// Server → client.
    pub down: Vec<u8>,
}

/// A TCP proxy in front of the server that records every byte both ways, and can cut
/// every connection and refuse new ones ("offline") or swallow the server's answers.
pub struct Proxy {
    addr: String,
    upstream: Arc<Mutex<String>>,
    offline: watch::Sender<bool>,
    mute_down: Arc<std::sync::atomic::AtomicBool>,
    cut: Arc<Cut>,
    recorded: Arc<Mutex<Vec<Arc<Mutex<Recorded>>>>>,
    task: tokio::task::JoinHandle<()>,
}

/// Client → server bytes so far (all connections), and a one-shot cut: the connection
/// that carries the byte at `at` is closed there.
#[derive(Debug)]
struct Cut {
    up: std::sync::atomic::AtomicU64,
    at: std::sync::atomic::AtomicU64,
    done: std::sync::atomic::AtomicU64,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Proxy {
    pub async fn start(upstream: &str) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?.to_string();
        let upstream = Arc::new(Mutex::new(upstream.to_owned()));
        let (offline, offline_rx) = watch::channel(false);
        let mute_down = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let cut = Arc::new(Cut {
            up: 0.into(),
            at: u64::MAX.into(),
            done: 0.into(),
        });
        let recorded: Arc<Mutex<Vec<Arc<Mutex<Recorded>>>>> = Arc::default();
        let task = tokio::spawn({
            let upstream = upstream.clone();
            let recorded = recorded.clone();
            let mute_down = mute_down.clone();
            let cut = cut.clone();
            async move {
                while let Ok((client, _)) = listener.accept().await {
                    if *offline_rx.borrow() {
                        drop(client);
                        continue;
                    }
                    let target = upstream
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .clone();
                    let rec = Arc::new(Mutex::new(Recorded::default()));
                    recorded
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push(rec.clone());
                    tokio::spawn(pipe(
                        client,
                        target,
                        rec,
                        offline_rx.clone(),
                        mute_down.clone(),
                        cut.clone(),
                    ));
                }
            }
        });
        Ok(Self {
            addr,
            upstream,
            offline,
            mute_down,
            cut,
            recorded,
            task,
        })
    }

    /// Client → server bytes so far, over all connections.
    pub fn bytes_up(&self) -> u64 {
        self.cut.up.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Closes the connection that carries the client's `n`-th byte from now on (once).
    pub fn cut_after_up(&self, n: u64) {
        let at = self.bytes_up().saturating_add(n);
        self.cut.at.store(at, std::sync::atomic::Ordering::SeqCst);
    }

    /// How many connections [`Proxy::cut_after_up`] closed.
    pub fn cuts(&self) -> u64 {
        self.cut.done.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn set_upstream(&self, addr: &str) {
        *self.upstream.lock().unwrap_or_else(PoisonError::into_inner) = addr.to_owned();
    }

    /// Offline: cut every connection now and refuse new ones.
    pub fn set_offline(&self, offline: bool) {
        let _ = self.offline.send(offline);
    }

    /// Drop what the server sends (the client's sends still arrive).
    pub fn set_mute_down(&self, mute: bool) {
        self.mute_down
            .store(mute, std::sync::atomic::Ordering::SeqCst);
    }

    /// Every connection's bytes so far.
    pub fn recorded(&self) -> Vec<Recorded> {
        self.recorded
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|r| r.lock().unwrap_or_else(PoisonError::into_inner).clone())
            .collect()
    }
}

async fn pipe(
    client: TcpStream,
    target: String,
    rec: Arc<Mutex<Recorded>>,
    mut offline: watch::Receiver<bool>,
    mute_down: Arc<std::sync::atomic::AtomicBool>,
    cut: Arc<Cut>,
) {
    let Ok(server) = TcpStream::connect(&target).await else {
        return;
    };
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let rec_up = rec.clone();
    let up = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match cr.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            use std::sync::atomic::Ordering::SeqCst;
            let before = cut.up.fetch_add(n as u64, SeqCst);
            let at = cut.at.load(SeqCst);
            if before < at
                && before + n as u64 >= at
                && cut
                    .at
                    .compare_exchange(at, u64::MAX, SeqCst, SeqCst)
                    .is_ok()
            {
                // Forward what came before the cut, then drop the connection.
                let keep = usize::try_from(at - before).unwrap_or(n).min(n);
                let _ = sw.write_all(&buf[..keep]).await;
                cut.done.fetch_add(1, SeqCst);
                break;
            }
            rec_up
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .up
                .extend_from_slice(&buf[..n]);
            if sw.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
    };
    let down = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match sr.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            rec.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .down
                .extend_from_slice(&buf[..n]);
            if mute_down.load(std::sync::atomic::Ordering::SeqCst) {
                continue;
            }
            if cw.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
    };
    tokio::select! {
        () = up => {}
        () = down => {}
        _ = offline.wait_for(|o| *o) => {}
    }
}
