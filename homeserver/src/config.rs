//! Configuration: defaults, then a TOML file (`--config`), then environment variables
//! (`PARLEY_*`), then command-line flags. Loaded once in `main` and passed down.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::Parser;
use parley_client_api::ServerName;
use serde::Deserialize;

/// Command-line flags; each also reads an environment variable.
#[derive(Debug, Parser)]
#[command(name = "parley-homeserver", version, about = "The Parley homeserver")]
pub struct Cli {
    /// A TOML configuration file.
    #[arg(long, env = "PARLEY_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to listen on (default 127.0.0.1:8008).
    #[arg(long, env = "PARLEY_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// This server's name, as in `@alice:<server_name>` (default: localhost:<port>).
    #[arg(long, env = "PARLEY_SERVER_NAME")]
    pub server_name: Option<String>,
    /// `postgres://…` or `sqlite://path` (default: sqlite in the data directory).
    #[arg(long, env = "PARLEY_DATABASE_URL")]
    pub database_url: Option<String>,
    /// Where the server keeps its files (default ./parley-data).
    #[arg(long, env = "PARLEY_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Log format: `text` or `json`.
    #[arg(long, env = "PARLEY_LOG_FORMAT")]
    pub log_format: Option<LogFormat>,
    /// NATS URL (`nats://host:4222`) shared by the nodes of one domain; unset: one node.
    #[arg(long, env = "PARLEY_BUS_URL")]
    pub bus_url: Option<String>,
    /// Where the admin API listens (off when unset; keep it off the public network).
    #[arg(long, env = "PARLEY_ADMIN_LISTEN")]
    pub admin_listen: Option<SocketAddr>,
    /// The admin API's bearer token (required with `--admin-listen`).
    #[arg(long, env = "PARLEY_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Federate with other homeservers (`[federation] enabled`).
    #[arg(long, env = "PARLEY_FEDERATION")]
    pub federation: bool,
    /// Federation test mode: plain HTTP and loopback/private peers (tests on 127.0.0.x).
    #[arg(long, env = "PARLEY_FEDERATION_TEST_MODE")]
    pub federation_test_mode: bool,
    /// Write every received federation request's bytes into this directory.
    #[arg(long, env = "PARLEY_FEDERATION_DUMP_DIR")]
    pub federation_dump_dir: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Subcommands; without one, the server runs.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Administer a running server through its admin API.
    Admin(crate::admin_cli::AdminArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum, Default)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Limits; every one bounds a resource.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest event payload, in bytes.
    pub max_payload_bytes: usize,
    /// Largest payload of an MLS handshake event (a Commit, with the Welcome for the
    /// devices it adds, or a Proposal). A Welcome carries the group's ratchet tree, about
    /// 0.5 KiB per device, so adding to a group of 1,024 devices needs about 0.5 MiB.
    pub max_commit_bytes: usize,
    /// Most open device WebSockets.
    pub max_connections: usize,
    /// Inbox rows and stored events older than this are deleted.
    pub retention_days: u32,
    /// Most sends committed in one transaction.
    pub max_batch: usize,
    /// Concurrent send writers (Postgres; SQLite always uses one).
    pub writers: usize,
    /// Database connections (Postgres).
    pub db_connections: u32,
    /// Per-connection queue of frames waiting for a slow socket; a device that falls
    /// further behind is disconnected and resumes from its inbox.
    pub socket_queue: usize,
    /// Items sent on one socket and not yet acknowledged, before it is closed.
    pub max_unacked: usize,
    /// Sends of one socket awaiting their commit at once.
    pub max_inflight_sends: usize,
    /// Most members of a group.
    pub max_group_members: usize,
    /// Largest media blob (ciphertext), in bytes. The default has room for a 100 MiB
    /// file: padding adds at most 2 MiB at that size, and 16 bytes per 64 KiB chunk.
    pub max_blob_bytes: u64,
    /// Media bytes one user may have uploaded (blobs and uploads in progress).
    pub user_quota_bytes: u64,
    /// How long a device link waits for its approval, in seconds (spec/devices.md DL2).
    pub link_ttl_secs: u64,
}

impl Limits {
    /// The largest payload any event may have (an application message or a handshake).
    pub fn max_event_bytes(&self) -> usize {
        self.max_payload_bytes.max(self.max_commit_bytes)
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_payload_bytes: 64 * 1024,
            max_commit_bytes: 4 * 1024 * 1024,
            max_connections: 10_000,
            retention_days: 30,
            max_batch: 512,
            writers: 4,
            db_connections: 16,
            socket_queue: 4096,
            max_unacked: 100_000,
            max_inflight_sends: 256,
            max_group_members: 1024,
            max_blob_bytes: 103 * 1024 * 1024,
            user_quota_bytes: 1024 * 1024 * 1024,
            link_ttl_secs: parley_client_api::http::links::LINK_TTL_SECS,
        }
    }
}

/// The `[federation]` section.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FederationConfig {
    /// Off by default: a single server answers nothing under `/_parley/fed/` and
    /// refuses remote users.
    pub enabled: bool,
    /// Plain HTTP and loopback/private peers (tests on 127.0.0.x). Never in production.
    pub test_mode: bool,
    /// The server's ed25519 key (PKCS#8 PEM); default `<data_dir>/federation.key`,
    /// created (0600) on first start.
    pub key_file: Option<PathBuf>,
    /// Seeds the `federation_rules` table when it is empty (first start); afterwards the
    /// admin API and CLI change the table and this is ignored.
    pub policy: PolicySeed,
    /// Interop debugging: when set, the exact bytes of every received federation
    /// request (request line, headers, body) are written to a file in this directory.
    pub dump_dir: Option<PathBuf>,
    /// How long a send to a chat hosted on another server waits for the hub's `seq`
    /// before its client is answered "pending" (ms; default 10 000). The send stays
    /// queued either way.
    pub forward_wait_ms: Option<u64>,
    /// How long a rotation publishes the new key before signing with it (ms; default
    /// 70 000: peers refetch an origin's keys at most once a minute).
    pub key_rotation_grace_ms: Option<u64>,
    /// How long a received transaction's id and answer are kept to answer a resend the
    /// same (days; default and minimum 7: a peer's backoff reaches 24 h, and a peer may
    /// be down for days before it resends).
    pub dedup_window_days: Option<u32>,
    /// Federation over libp2p (`[federation.libp2p]`).
    pub libp2p: Libp2pSection,
}

/// `[federation.libp2p]`: a second transport for the same federation requests. Off
/// unless `listen` or `peers` is set.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Libp2pSection {
    /// Multiaddrs to listen on, e.g. `["/ip4/0.0.0.0/tcp/8449"]`.
    pub listen: Vec<String>,
    /// Multiaddrs advertised in the key directory (default: the listen addresses that
    /// are not `0.0.0.0`/`::`). Put the public (or port-forwarded) address here.
    pub external: Vec<String>,
    /// Servers always reached over libp2p: server name → multiaddr.
    pub peers: std::collections::BTreeMap<String, String>,
    /// Reach any other server over libp2p when its key directory advertises
    /// multiaddrs (default true); otherwise only `peers` are.
    pub auto: bool,
}

impl Default for Libp2pSection {
    fn default() -> Self {
        Self {
            listen: Vec::new(),
            external: Vec::new(),
            peers: std::collections::BTreeMap::new(),
            auto: true,
        }
    }
}

impl Libp2pSection {
    pub fn enabled(&self) -> bool {
        !self.listen.is_empty() || !self.peers.is_empty()
    }
}

/// The shortest dedup window for received transactions (days).
pub const MIN_DEDUP_WINDOW_DAYS: u32 = 7;

impl FederationConfig {
    /// The dedup window for received transactions, in days (at least
    /// [`MIN_DEDUP_WINDOW_DAYS`]).
    pub fn dedup_window_days(&self) -> u32 {
        self.dedup_window_days
            .unwrap_or(MIN_DEDUP_WINDOW_DAYS)
            .max(MIN_DEDUP_WINDOW_DAYS)
    }

    pub fn key_rotation_grace(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.key_rotation_grace_ms.unwrap_or(70_000))
    }

    pub fn forward_wait(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.forward_wait_ms.unwrap_or(10_000))
    }
}

/// The `[presence]` section: online state, last seen and typing.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PresenceConfig {
    /// A connected device that has not sent a heartbeat (or connected) for this long no
    /// longer keeps its user online (ms; default 60 000).
    pub heartbeat_timeout_ms: u64,
    /// A user's last seen is written to the database at most this often while they are
    /// online (ms; default 60 000: it only matters if the server stops while they are
    /// online); going offline always writes it. Writes of one tick share a transaction.
    pub last_seen_write_ms: u64,
    /// A typing start within this long of the last one relayed for the same user and
    /// chat only extends it; it is not relayed again (ms; default 2 000, below the 5 s
    /// expiry clients apply).
    pub typing_debounce_ms: u64,
}

impl Default for PresenceConfig {
    fn default() -> Self {
        Self {
            heartbeat_timeout_ms: 60_000,
            last_seen_write_ms: 60_000,
            typing_debounce_ms: 2_000,
        }
    }
}

/// The `[push]` section: notifications to push gateways for devices without a socket.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PushConfig {
    /// At most one notification per device per this long; events in between are folded
    /// into the next one (ms; default 5 000).
    pub coalesce_ms: u64,
    /// First retry delay while a gateway fails (doubles per attempt; ms; default 1 000).
    pub retry_base_ms: u64,
    /// Longest retry delay (ms; default 60 000).
    pub retry_max_ms: u64,
    /// Attempts of one notification (the first included) before it is dropped
    /// (default 8).
    pub max_attempts: u32,
    /// Timeout of one request to a gateway (ms; default 10 000).
    pub timeout_ms: u64,
    /// Accept `http://` gateway URLs and loopback/private IP literals (tests and local
    /// gateways only; default false: `https://` to public hosts only).
    pub allow_insecure: bool,
}

impl Default for PushConfig {
    fn default() -> Self {
        Self {
            coalesce_ms: 5_000,
            retry_base_ms: 1_000,
            retry_max_ms: 60_000,
            max_attempts: 8,
            timeout_ms: 10_000,
            allow_insecure: false,
        }
    }
}

/// Where media blobs are stored.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MediaStore {
    /// The local filesystem, under `<data_dir>/media`.
    #[default]
    Fs,
    /// An S3-compatible object store (`bucket`, `endpoint`, `region`; credentials from
    /// `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` / `AWS_SESSION_TOKEN`).
    S3,
}

/// The `[media]` section. Uploads in progress are always staged on local disk
/// (`<data_dir>/uploads`); only complete, verified blobs go to the store.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MediaConfig {
    pub store: MediaStore,
    /// S3: the bucket (required).
    pub bucket: Option<String>,
    /// S3: the endpoint URL (default: AWS; else e.g. `http://127.0.0.1:9000`).
    pub endpoint: Option<String>,
    /// S3: the region (default `us-east-1`, or `AWS_REGION`).
    pub region: Option<String>,
    /// S3: allow a plain-HTTP endpoint (a local S3-compatible server).
    pub allow_http: bool,
}

/// The initial policy: mode and rules (`{pattern, action = "allow"|"deny", reason}`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PolicySeed {
    pub mode: parley_federation::policy::Mode,
    pub rules: Vec<parley_federation::policy::Rule>,
}

/// The configuration file's shape.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct FileConfig {
    server_name: Option<String>,
    listen: Option<SocketAddr>,
    database_url: Option<String>,
    data_dir: Option<PathBuf>,
    log_format: Option<LogFormat>,
    bus_url: Option<String>,
    admin_listen: Option<SocketAddr>,
    admin_token: Option<String>,
    limits: Limits,
    federation: FederationConfig,
    media: MediaConfig,
    presence: PresenceConfig,
    push: PushConfig,
}

/// The resolved configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub server_name: ServerName,
    pub listen: SocketAddr,
    pub database_url: String,
    pub data_dir: PathBuf,
    pub log_format: LogFormat,
    /// Set when several nodes serve this domain: their NATS.
    pub bus_url: Option<String>,
    /// The admin API's own listener; `None`: the admin API is off.
    pub admin_listen: Option<SocketAddr>,
    pub admin_token: Option<String>,
    pub limits: Limits,
    pub federation: FederationConfig,
    pub media: MediaConfig,
    pub presence: PresenceConfig,
    pub push: PushConfig,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {source}")]
    Parse {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("invalid server_name {0:?}: {1}")]
    ServerName(String, parley_client_api::IdError),
    #[error("invalid limit: {0}")]
    Limit(&'static str),
}

impl Config {
    /// Resolves flags (with their environment variables) over the file over defaults.
    pub fn load(cli: Cli) -> Result<Self, ConfigError> {
        let file = match &cli.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        let listen = cli
            .listen
            .or(file.listen)
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8008)));
        let data_dir = cli
            .data_dir
            .or(file.data_dir)
            .unwrap_or_else(|| PathBuf::from("parley-data"));
        let server_name = cli
            .server_name
            .or(file.server_name)
            .unwrap_or_else(|| format!("localhost:{}", listen.port()));
        let server_name = ServerName::try_from(server_name.as_str())
            .map_err(|e| ConfigError::ServerName(server_name.clone(), e))?;
        let database_url = cli
            .database_url
            .or(file.database_url)
            .unwrap_or_else(|| format!("sqlite://{}", data_dir.join("parley.db").display()));
        let limits = file.limits;
        let admin_listen = cli.admin_listen.or(file.admin_listen);
        let admin_token = cli.admin_token.or(file.admin_token);
        if admin_listen.is_some() && admin_token.as_deref().is_none_or(|t| t.len() < 16) {
            return Err(ConfigError::Limit(
                "admin_listen needs an admin_token of at least 16 characters",
            ));
        }
        if limits.max_batch == 0 || limits.writers == 0 || limits.socket_queue == 0 {
            return Err(ConfigError::Limit(
                "max_batch, writers and socket_queue must be > 0",
            ));
        }
        if limits.max_payload_bytes == 0 || limits.max_payload_bytes > 16 * 1024 * 1024 {
            return Err(ConfigError::Limit("max_payload_bytes must be 1..=16 MiB"));
        }
        if limits.max_commit_bytes == 0 || limits.max_commit_bytes > 64 * 1024 * 1024 {
            return Err(ConfigError::Limit("max_commit_bytes must be 1..=64 MiB"));
        }
        if file.media.store == MediaStore::S3
            && file.media.bucket.as_deref().is_none_or(str::is_empty)
        {
            return Err(ConfigError::Limit("[media] store = \"s3\" needs a bucket"));
        }
        if file.presence.heartbeat_timeout_ms < 100 || file.push.max_attempts == 0 {
            return Err(ConfigError::Limit(
                "[presence] heartbeat_timeout_ms must be >= 100 and [push] max_attempts > 0",
            ));
        }
        let mut federation = file.federation;
        federation.enabled |= cli.federation;
        federation.test_mode |= cli.federation_test_mode;
        if cli.federation_dump_dir.is_some() {
            federation.dump_dir = cli.federation_dump_dir;
        }
        Ok(Self {
            server_name,
            listen,
            database_url,
            data_dir,
            log_format: cli.log_format.or(file.log_format).unwrap_or_default(),
            bus_url: cli.bus_url.or(file.bus_url),
            admin_listen,
            admin_token,
            limits,
            federation,
            media: file.media,
            presence: file.presence,
            push: file.push,
        })
    }

    /// The database URL with any password hidden, for logs.
    pub fn database_url_redacted(&self) -> String {
        match (self.database_url.find("://"), self.database_url.rfind('@')) {
            (Some(scheme), Some(at)) if at > scheme => {
                let creds = &self.database_url[scheme + 3..at];
                let user = creds.split(':').next().unwrap_or("");
                format!(
                    "{}{user}:***{}",
                    &self.database_url[..scheme + 3],
                    &self.database_url[at..]
                )
            }
            _ => self.database_url.clone(),
        }
    }
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    toml::from_str(&text).map_err(|source| ConfigError::Parse {
        path: path.to_owned(),
        source: Box::new(source),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli(args: &[&str]) -> Cli {
        Cli::parse_from(std::iter::once("parley-homeserver").chain(args.iter().copied()))
    }

    #[test]
    fn flags_override_file_override_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "server_name = \"chat.example.org\"\nlisten = \"127.0.0.1:9000\"\n[limits]\nmax_payload_bytes = 1000\n",
        )
        .unwrap();
        let c = Config::load(cli(&[
            "--config",
            path.to_str().unwrap(),
            "--listen",
            "127.0.0.1:9001",
        ]))
        .unwrap();
        assert_eq!(c.server_name.as_str(), "chat.example.org");
        assert_eq!(c.listen.port(), 9001);
        assert_eq!(c.limits.max_payload_bytes, 1000);
        assert_eq!(c.limits.retention_days, 30);
        assert!(c.database_url.starts_with("sqlite://"));
        assert!(!c.federation.enabled, "federation is off unless enabled");
    }

    #[test]
    fn federation_section() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "[federation]\nenabled = true\n[federation.policy]\nmode = \"allowlist\"\nrules = [{pattern = \"*.example.org\", action = \"allow\"}, {pattern = \"bad.example.org\", action = \"deny\", reason = \"spam\"}]\n",
        )
        .unwrap();
        let c = Config::load(cli(&["--config", path.to_str().unwrap()])).unwrap();
        assert!(c.federation.enabled && !c.federation.test_mode);
        assert_eq!(
            c.federation.policy.mode,
            parley_federation::policy::Mode::Allowlist
        );
        assert_eq!(c.federation.policy.rules.len(), 2);
        let c = Config::load(cli(&["--federation", "--federation-test-mode"])).unwrap();
        assert!(c.federation.enabled && c.federation.test_mode);
    }

    #[test]
    fn rejects_bad_values_and_redacts_passwords() {
        assert!(Config::load(cli(&["--server-name", "bad name"])).is_err());
        let mut c = Config::load(cli(&[])).unwrap();
        assert_eq!(c.server_name.as_str(), "localhost:8008");
        c.database_url = "postgres://u:secret@db/parley".into();
        assert_eq!(c.database_url_redacted(), "postgres://u:***@db/parley");
    }
}
