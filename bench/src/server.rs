//! The homeserver under test: a process the bench spawns on a free loopback port, or one
//! already running at a loopback URL.

use std::net::{IpAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use reqwest::Url;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// The line the homeserver prints once it accepts connections.
const READY_MARKER: &str = "parley-homeserver listening on ";
/// How long a spawned server may take to print [`READY_MARKER`] (migrations included).
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a spawned server may take to stop after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

pub(crate) struct Server {
    pub(crate) url: Url,
    pub(crate) pid: Option<u32>,
    /// `sqlite`, `postgres`, or what the caller said for `--url`.
    pub(crate) backend: String,
    child: Option<Child>,
    /// Holds the SQLite file and data directory of a spawned server.
    _data: Option<tempfile::TempDir>,
}

impl Server {
    /// Spawns `binary` with `PARLEY_LOG=warn` (or `$PARLEY_BENCH_SERVER_LOG`) on a free port of 127.0.0.1 and waits for its
    /// ready line. Without `database_url` it uses SQLite in a temporary directory;
    /// `config` is the text of a config file to start it with (e.g. limits).
    pub(crate) async fn spawn(
        binary: &Path,
        database_url: Option<&str>,
        config: Option<&str>,
    ) -> Result<Self> {
        Self::spawn_with(binary, database_url, config, &[]).await
    }

    /// As [`Server::spawn`], with extra arguments (e.g. `--bus-url`).
    pub(crate) async fn spawn_with(
        binary: &Path,
        database_url: Option<&str>,
        config: Option<&str>,
        extra: &[String],
    ) -> Result<Self> {
        Self::spawn_at(binary, "127.0.0.1", false, database_url, config, extra).await
    }

    /// A federating server on loopback address `ip` (e.g. `127.0.0.2`), named `ip:port`
    /// (test mode: plain HTTP between servers), that federates with 127.0.0.2 and .3.
    pub(crate) async fn spawn_peer(
        binary: &Path,
        ip: &str,
        database_url: Option<&str>,
        writers: Option<usize>,
    ) -> Result<Self> {
        let limits = writers
            .map(|n| format!("[limits]\nwriters = {n}\n"))
            .unwrap_or_default();
        let config = format!(
            "{limits}[federation]\n[federation.policy]\nrules = [\
             {{pattern = \"127.0.0.2:*\", action = \"allow\"}}, \
             {{pattern = \"127.0.0.3:*\", action = \"allow\"}}]\n"
        );
        Self::spawn_at(binary, ip, true, database_url, Some(&config), &[]).await
    }

    async fn spawn_at(
        binary: &Path,
        ip: &str,
        federate: bool,
        database_url: Option<&str>,
        config: Option<&str>,
        extra: &[String],
    ) -> Result<Self> {
        if !binary.is_file() {
            bail!(
                "no homeserver binary at {} (build it with `cargo build --release -p parley-homeserver`, or pass --spawn PATH or --url)",
                binary.display()
            );
        }
        let data = tempfile::Builder::new()
            .prefix("parley-bench-")
            .tempdir()
            .context("creating a temporary data directory")?;
        let database_url = match database_url {
            Some(url) => url.to_owned(),
            None => format!("sqlite://{}", data.path().join("parley.db").display()),
        };
        let backend = backend_of(&database_url)?;
        let listen = format!("{ip}:{}", free_port(ip)?);
        let mut cmd = Command::new(binary);
        if let Some(text) = config {
            let path = data.path().join("bench.toml");
            std::fs::write(&path, text).context("writing the server's config file")?;
            cmd.arg("--config").arg(path);
        }
        if federate {
            // Peers reach a test-mode server by its name: its address.
            cmd.args(["--federation", "--federation-test-mode", "--server-name"])
                .arg(&listen);
        }
        let mut child = cmd
            .arg("--listen")
            .arg(&listen)
            .arg("--database-url")
            .arg(&database_url)
            .arg("--data-dir")
            .arg(data.path())
            .args(extra)
            // `PARLEY_BENCH_SERVER_LOG=parley_homeserver::service::relay=debug` shows
            // what a run's servers do (stderr); quiet by default.
            .env(
                "PARLEY_LOG",
                std::env::var("PARLEY_BENCH_SERVER_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let pid = child.id();
        let stdout = child.stdout.take().context("no stdout pipe")?;
        let mut lines = BufReader::new(stdout).lines();
        let addr = tokio::time::timeout(READY_TIMEOUT, async {
            while let Some(line) = lines.next_line().await? {
                if let Some(addr) = line.trim().strip_prefix(READY_MARKER) {
                    return Ok(addr.to_owned());
                }
                eprintln!("[server] {line}");
            }
            bail!("the homeserver exited before it was ready")
        })
        .await
        .context("the homeserver did not print its ready line in time")??;
        // Keep draining its stdout (where its warnings go) so it never blocks on a full pipe.
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                eprintln!("[server] {line}");
            }
        });
        let url = Url::parse(&format!("http://{addr}")).context("parsing the ready line")?;
        check_loopback(&url)?;
        Ok(Self {
            url,
            pid,
            backend,
            child: Some(child),
            _data: Some(data),
        })
    }

    /// A server already running at `url` (loopback only); `pid` enables RSS and CPU figures.
    pub(crate) fn attach(url: &str, pid: Option<u32>, backend: Option<String>) -> Result<Self> {
        let url = Url::parse(url).with_context(|| format!("parsing --url {url}"))?;
        if url.scheme() != "http" {
            bail!("--url must be http://… (loopback, no TLS)");
        }
        check_loopback(&url)?;
        Ok(Self {
            url,
            pid,
            backend: backend.unwrap_or_else(|| "?".into()),
            child: None,
            _data: None,
        })
    }

    /// `ws://host:port/v1/ws`.
    pub(crate) fn ws_url(&self) -> String {
        let host = self.url.host_str().unwrap_or("127.0.0.1");
        let port = self.url.port_or_known_default().unwrap_or(80);
        format!("ws://{host}:{port}{}", parley_client_api::ws::PATH)
    }

    /// Stops a spawned server (SIGTERM, then SIGKILL after [`STOP_TIMEOUT`]).
    pub(crate) async fn stop(mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        if let Some(pid) = child.id() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(pid.to_string())
                .status()
                .await;
        }
        match tokio::time::timeout(STOP_TIMEOUT, child.wait()).await {
            Ok(status) => {
                status?;
            }
            Err(_) => {
                eprintln!("the homeserver did not stop in time; killing it");
                child.kill().await?;
            }
        }
        Ok(())
    }
}

/// The default server binary: `parley-homeserver` next to this executable.
pub(crate) fn default_binary() -> Result<PathBuf> {
    Ok(std::env::current_exe()
        .context("locating this executable")?
        .with_file_name("parley-homeserver"))
}

fn backend_of(database_url: &str) -> Result<String> {
    if database_url.starts_with("postgres://") || database_url.starts_with("postgresql://") {
        Ok("postgres".into())
    } else if database_url.starts_with("sqlite:") {
        Ok("sqlite".into())
    } else {
        bail!("--database-url must be postgres://… or sqlite://…")
    }
}

fn free_port(ip: &str) -> Result<u16> {
    let listener = TcpListener::bind((ip, 0)).context("finding a free port")?;
    Ok(listener.local_addr()?.port())
}

/// The bench only ever talks to loopback addresses.
fn check_loopback(url: &Url) -> Result<()> {
    let host = url.host_str().unwrap_or("");
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let loopback = match host.parse::<IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => host == "localhost",
    };
    if !loopback {
        bail!(
            "{url} is not a loopback address; the bench only talks to 127.0.0.0/8, ::1 or localhost"
        );
    }
    Ok(())
}
