//! Shared helpers: start a server on a backend, talk HTTP and WebSocket to it.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use futures_util::{SinkExt, StreamExt};
use parley_client_api::http::accounts::Session;
use parley_client_api::http::chats::ChatSummary;
use parley_client_api::ws::{ClientFrame, ServerFrame};
use parley_client_api::{ChatId, Payload, UserId};
use parley_testkit::{PgDatabase, ServerProcess, homeserver};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const SERVER_NAME: &str = "parley.test";
pub const PASSWORD: &str = "correct horse battery";
/// How long a test waits for a frame it expects.
pub const WAIT: Duration = Duration::from_secs(15);

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

/// A homeserver process with its own database.
pub struct Server {
    pub process: ServerProcess,
    pub base: String,
    database_url: String,
    data_dir: tempfile::TempDir,
    extra_args: Vec<String>,
    /// Extra environment variables of the server process.
    extra_env: Vec<(String, String)>,
    /// `(listen, server name)`; a restart keeps both (peers know the name).
    identity: (String, String),
    _pg: Option<Arc<PgDatabase>>,
    http: reqwest::Client,
    /// Directories that must outlive the process (its config file).
    keep: Vec<tempfile::TempDir>,
}

fn default_identity() -> (String, String) {
    ("127.0.0.1:0".to_owned(), SERVER_NAME.to_owned())
}

impl Server {
    pub async fn start(backend: Backend) -> Result<Self> {
        Self::start_with(backend, &[]).await
    }

    /// Starts a server with extra command-line arguments.
    pub async fn start_with(backend: Backend, extra: &[&str]) -> Result<Self> {
        Self::start_as(backend, default_identity(), extra, &[]).await
    }

    /// Starts a server with extra command-line arguments and environment variables.
    pub async fn start_with_env(
        backend: Backend,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Self> {
        Self::start_as(backend, default_identity(), extra, env).await
    }

    /// Starts a server with a configuration file holding `toml`.
    pub async fn start_with_config(backend: Backend, toml: &str) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("server.toml");
        std::fs::write(&path, toml)?;
        let path = path.to_str().context("config path")?.to_owned();
        let mut server = Self::start_with(backend, &["--config", &path]).await?;
        server.keep.push(dir);
        Ok(server)
    }

    /// A federating server on `ip` (e.g. `127.0.0.2`) with a fixed free port: its
    /// server name is `ip:port`, so peers can reach it by name (test mode).
    pub async fn start_federated(backend: Backend, ip: &str, extra: &[&str]) -> Result<Self> {
        let mut args = vec!["--federation", "--federation-test-mode"];
        args.extend_from_slice(extra);
        Self::start_as(backend, homeserver::peer_identity(ip), &args, &[]).await
    }

    /// A federating server on `ip` that allows the loopback peers 127.0.0.1–5 (any
    /// port); `toml` adds lines to its `[federation]` section.
    pub async fn start_peer(backend: Backend, ip: &str, toml: &str) -> Result<Self> {
        Self::start_peer_with(backend, ip, "", toml).await
    }

    /// [`Server::start_peer`] with top-level config lines too (`top`).
    pub async fn start_peer_with(
        backend: Backend,
        ip: &str,
        top: &str,
        toml: &str,
    ) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("peer.toml");
        std::fs::write(&path, homeserver::peer_config(top, toml))?;
        let args = homeserver::peer_args(&path);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut server = Self::start_as(backend, homeserver::peer_identity(ip), &args, &[]).await?;
        server.keep.push(dir);
        Ok(server)
    }

    /// The database the server runs on (to reach its store while it is stopped).
    pub fn database_url(&self) -> &str {
        &self.database_url
    }

    pub fn data_dir(&self) -> &std::path::Path {
        self.data_dir.path()
    }

    /// This server's name.
    pub fn name(&self) -> &str {
        &self.identity.1
    }

    async fn start_as(
        backend: Backend,
        identity: (String, String),
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Self> {
        let extra_args: Vec<String> = extra.iter().map(|s| (*s).to_owned()).collect();
        let extra_env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let data_dir = tempfile::tempdir()?;
        let (database_url, pg) = match backend {
            Backend::Sqlite => (
                format!("sqlite://{}", data_dir.path().join("parley.db").display()),
                None,
            ),
            Backend::Postgres => {
                let db = parley_testkit::postgres().await?;
                (db.url().to_owned(), Some(Arc::new(db)))
            }
        };
        let process = spawn(
            &database_url,
            data_dir.path(),
            &identity,
            &extra_args,
            &extra_env,
        )
        .await?;
        let base = format!("http://{}", process.addr());
        Ok(Self {
            process,
            base,
            database_url,
            data_dir,
            extra_args,
            extra_env,
            identity,
            _pg: pg,
            http: reqwest::Client::new(),
            keep: Vec::new(),
        })
    }

    /// `n` nodes of one domain on one Postgres database, routing through NATS at `bus`.
    pub async fn start_nodes(n: usize, bus: &str) -> Result<Vec<Self>> {
        Self::start_nodes_with_config(n, bus, "").await
    }

    /// [`Server::start_nodes`], each node with the config file `toml` (when not empty).
    pub async fn start_nodes_with_config(n: usize, bus: &str, toml: &str) -> Result<Vec<Self>> {
        let db = Arc::new(parley_testkit::postgres().await?);
        let mut nodes = Vec::with_capacity(n);
        for _ in 0..n {
            let data_dir = tempfile::tempdir()?;
            let mut extra = vec!["--bus-url".to_owned(), bus.to_owned()];
            if !toml.is_empty() {
                let path = data_dir.path().join("node.toml");
                std::fs::write(&path, toml)?;
                extra.push("--config".to_owned());
                extra.push(path.to_str().context("config path")?.to_owned());
            }
            let process =
                spawn(db.url(), data_dir.path(), &default_identity(), &extra, &[]).await?;
            nodes.push(Self {
                base: format!("http://{}", process.addr()),
                process,
                database_url: db.url().to_owned(),
                data_dir,
                extra_args: extra.clone(),
                extra_env: Vec::new(),
                identity: default_identity(),
                _pg: Some(db.clone()),
                http: reqwest::Client::new(),
                keep: Vec::new(),
            });
        }
        Ok(nodes)
    }

    /// Kills the process with SIGKILL (no shutdown of any kind) and starts a new one on
    /// the same database.
    pub async fn crash_and_restart(&mut self) -> Result<()> {
        self.process.kill_hard().await?;
        self.process = spawn(
            &self.database_url,
            self.data_dir.path(),
            &self.identity,
            &self.extra_args,
            &self.extra_env,
        )
        .await?;
        self.base = format!("http://{}", self.process.addr());
        Ok(())
    }

    /// Kills the process with SIGKILL; [`Server::restart`] brings it back (same name,
    /// address, database and data directory).
    pub async fn stop_hard(&mut self) -> Result<()> {
        self.process.kill_hard().await?;
        Ok(())
    }

    pub async fn restart(&mut self) -> Result<()> {
        self.process = spawn(
            &self.database_url,
            self.data_dir.path(),
            &self.identity,
            &self.extra_args,
            &self.extra_env,
        )
        .await?;
        self.base = format!("http://{}", self.process.addr());
        Ok(())
    }

    /// The value of the `/metrics` line starting with `prefix` (0 when absent).
    pub async fn metric(&self, prefix: &str) -> Result<f64> {
        let text = self
            .http
            .get(format!("{}/metrics", self.base))
            .send()
            .await?
            .text()
            .await?;
        Ok(text
            .lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or(0.0))
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/v1/ws", self.process.addr())
    }

    /// A raw request; returns the status and the JSON body (Null when empty).
    pub async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Result<(StatusCode, Value)> {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await?;
        let status = resp.status();
        let bytes = resp.bytes().await?;
        let value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .with_context(|| format!("non-JSON body: {}", String::from_utf8_lossy(&bytes)))?
        };
        Ok((status, value))
    }

    pub async fn post(
        &self,
        path: &str,
        token: Option<&str>,
        body: Value,
    ) -> Result<(StatusCode, Value)> {
        self.request(reqwest::Method::POST, path, token, Some(body))
            .await
    }

    pub async fn put(&self, path: &str, token: &str, body: Value) -> Result<(StatusCode, Value)> {
        self.request(reqwest::Method::PUT, path, Some(token), Some(body))
            .await
    }

    pub async fn get(&self, path: &str, token: &str) -> Result<(StatusCode, Value)> {
        self.request(reqwest::Method::GET, path, Some(token), None)
            .await
    }

    pub async fn register(&self, username: &str) -> Result<User> {
        let (status, body) = self
            .post(
                "/v1/register",
                None,
                json!({"username": username, "password": PASSWORD}),
            )
            .await?;
        if status != StatusCode::CREATED {
            bail!("register {username}: {status} {body}");
        }
        Ok(User::from(serde_json::from_value::<Session>(body)?))
    }

    /// Logs in another device of an existing user.
    pub async fn login(&self, username: &str) -> Result<User> {
        let (status, body) = self
            .post(
                "/v1/login",
                None,
                json!({"username": username, "password": PASSWORD}),
            )
            .await?;
        if status != StatusCode::OK {
            bail!("login {username}: {status} {body}");
        }
        Ok(User::from(serde_json::from_value::<Session>(body)?))
    }

    pub async fn create_chat(&self, me: &User, others: &[&User]) -> Result<ChatId> {
        let members: Vec<&str> = others.iter().map(|u| u.user_id.as_str()).collect();
        let (status, body) = self
            .post("/v1/chats", Some(&me.token), json!({"members": members}))
            .await?;
        if !status.is_success() {
            bail!("create chat: {status} {body}");
        }
        Ok(serde_json::from_value::<ChatSummary>(body)?.chat_id)
    }

    /// Sends over HTTP; returns `(status, body)`.
    pub async fn send(
        &self,
        me: &User,
        chat: &ChatId,
        msg_id: &str,
        payload: &[u8],
    ) -> Result<(StatusCode, Value)> {
        self.post(
            &format!("/v1/chats/{chat}/events"),
            Some(&me.token),
            json!({"client_msg_id": msg_id, "payload": Payload(payload.to_vec())}),
        )
        .await
    }

    /// Sends an MLS commit for `epoch` over HTTP (with `group_info` if given); returns
    /// `(status, body)`.
    pub async fn commit(
        &self,
        me: &User,
        chat: &ChatId,
        msg_id: &str,
        epoch: u64,
        payload: &[u8],
        group_info: Option<&[u8]>,
    ) -> Result<(StatusCode, Value)> {
        let mut body = json!({"client_msg_id": msg_id, "payload": Payload(payload.to_vec()),
                              "mls": {"kind": "commit", "epoch": epoch}});
        if let Some(gi) = group_info {
            body["group_info"] = json!(Payload(gi.to_vec()));
        }
        self.post(&format!("/v1/chats/{chat}/events"), Some(&me.token), body)
            .await
    }

    pub async fn chats(&self, me: &User) -> Result<Vec<ChatSummary>> {
        let (status, body) = self.get("/v1/chats", &me.token).await?;
        if status != StatusCode::OK {
            bail!("list chats: {status} {body}");
        }
        Ok(serde_json::from_value(body["chats"].clone())?)
    }

    pub async fn connect(&self, me: &User) -> Result<Ws> {
        Ws::connect(&self.ws_url(), &me.token).await
    }
}

async fn spawn(
    database_url: &str,
    data_dir: &std::path::Path,
    (listen, server_name): &(String, String),
    extra: &[String],
    env: &[(String, String)],
) -> Result<ServerProcess> {
    let mut args = homeserver::base_args(listen, server_name, database_url, data_dir);
    args.extend_from_slice(extra);
    ServerProcess::spawn(
        env!("CARGO_BIN_EXE_parley-homeserver"),
        args,
        [("PARLEY_LOG", "info,parley_homeserver=debug")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .chain(env.iter().cloned()),
    )
    .await
}

#[derive(Debug, Clone)]
pub struct User {
    pub user_id: UserId,
    pub device_id: String,
    pub token: String,
}

impl From<Session> for User {
    fn from(s: Session) -> Self {
        Self {
            user_id: s.user_id,
            device_id: s.device_id.to_string(),
            token: s.access_token,
        }
    }
}

/// A device's WebSocket.
pub struct Ws {
    stream: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl Ws {
    pub async fn connect(url: &str, token: &str) -> Result<Self> {
        let (stream, _) = tokio_tungstenite::connect_async(format!("{url}?access_token={token}"))
            .await
            .context("websocket connect")?;
        Ok(Self { stream })
    }

    pub async fn send(&mut self, frame: &ClientFrame) -> Result<()> {
        self.send_text(serde_json::to_string(frame)?).await
    }

    pub async fn send_text(&mut self, text: String) -> Result<()> {
        self.stream.send(Message::Text(text.into())).await?;
        Ok(())
    }

    /// The next server frame (skipping pings), or an error after `WAIT`.
    pub async fn next(&mut self) -> Result<ServerFrame> {
        self.next_within(WAIT)
            .await?
            .context("no frame within the wait")
    }

    /// The next frame within `d`, or None if none came.
    pub async fn next_within(&mut self, d: Duration) -> Result<Option<ServerFrame>> {
        let deadline = tokio::time::Instant::now() + d;
        loop {
            let msg = match tokio::time::timeout_at(deadline, self.stream.next()).await {
                Err(_) => return Ok(None),
                Ok(None) => bail!("socket closed"),
                Ok(Some(m)) => m?,
            };
            match msg {
                Message::Text(t) => {
                    return Ok(Some(
                        serde_json::from_str(t.as_str())
                            .with_context(|| format!("bad server frame {t}"))?,
                    ));
                }
                Message::Close(f) => bail!("socket closed by server: {f:?}"),
                _ => continue,
            }
        }
    }

    /// Frames up to and including `synced`.
    pub async fn until_synced(&mut self) -> Result<Vec<ServerFrame>> {
        let mut frames = Vec::new();
        loop {
            match self.next().await? {
                ServerFrame::Synced => return Ok(frames),
                f => frames.push(f),
            }
        }
    }

    /// Waits for `n` event frames (other frames are collected in `others`).
    pub async fn events(
        &mut self,
        n: usize,
    ) -> Result<Vec<(i64, parley_client_api::http::chats::ChatEvent)>> {
        let mut out = Vec::new();
        while out.len() < n {
            if let ServerFrame::Event { id, event } = self.next().await? {
                out.push((id, event));
            }
        }
        Ok(out)
    }

    pub async fn ack(&mut self, ids: Vec<i64>) -> Result<()> {
        self.send(&ClientFrame::Ack { ids }).await
    }

    /// Closes the socket cleanly and waits for the server's close.
    pub async fn close(mut self) -> Result<()> {
        self.stream.close(None).await?;
        while let Some(Ok(_)) = self.stream.next().await {}
        Ok(())
    }
}
