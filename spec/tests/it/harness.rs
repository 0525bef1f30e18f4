//! Real `parley-homeserver` processes (the binary beside the test binary) for the suite to
//! test, federating in test mode on 127.0.0.x and allowing the suite's peer (127.0.0.5),
//! over HTTP and libp2p.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use parley_testkit::{PgDatabase, ServerProcess, homeserver};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Backend {
    Sqlite,
    Postgres,
}

/// `parley-homeserver` beside this test's binary (`…/debug/deps/it-…` →
/// `…/debug/parley-homeserver`); `cargo test --workspace` builds it.
fn homeserver_binary() -> Result<PathBuf> {
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

/// A homeserver process with its own database.
pub(crate) struct Server {
    _process: ServerProcess,
    pub(crate) base: String,
    _pg: Option<PgDatabase>,
    dir: tempfile::TempDir,
}

impl Server {
    /// A federating server on `ip` (test mode) that allows 127.0.0.1–5, any port, and
    /// accepts federation over libp2p on `ip` too (advertised in its key directory).
    pub(crate) async fn start(backend: Backend, ip: &str) -> Result<Self> {
        Self::start_advertising(backend, ip, None).await
    }

    /// [`Server::start`], advertising `libp2p_addr` instead of its own libp2p listener
    /// (where a faulty proxy stands in front of it).
    pub(crate) async fn start_advertising(
        backend: Backend,
        ip: &str,
        libp2p_addr: Option<&str>,
    ) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let (database_url, pg) = match backend {
            Backend::Sqlite => (
                format!("sqlite://{}", dir.path().join("parley.db").display()),
                None,
            ),
            Backend::Postgres => {
                let db = parley_testkit::postgres().await?;
                (db.url().to_owned(), Some(db))
            }
        };
        let config = dir.path().join("peer.toml");
        // A gateway on the same host (the suite's, on loopback) is allowed (P2); short
        // coalescing windows keep the push rules quick.
        std::fs::write(
            &config,
            homeserver::peer_config(
                "[push]\nallow_insecure = true\ncoalesce_ms = 1000\n",
                &libp2p_section(ip, libp2p_addr),
            ),
        )?;
        let (listen, name) = homeserver::peer_identity(ip);
        let mut args = homeserver::base_args(&listen, &name, &database_url, dir.path());
        args.extend(homeserver::peer_args(&config));
        let process =
            ServerProcess::spawn(homeserver_binary()?, args, [("PARLEY_LOG", "info")]).await?;
        Ok(Self {
            base: format!("http://{}", process.addr()),
            _process: process,
            _pg: pg,
            dir,
        })
    }

    /// The server's signing key (its libp2p identity), from its data directory.
    pub(crate) fn signing_key(&self) -> Result<parley_federation::keys::ServerSigningKey> {
        let pem = std::fs::read_to_string(self.dir.path().join("federation.key"))?;
        Ok(parley_federation::keys::ServerSigningKey::from_pkcs8_pem(
            &pem,
        )?)
    }
}

/// `[federation.libp2p]`: listening on a free port of `ip`, advertising `external` if set.
fn libp2p_section(ip: &str, external: Option<&str>) -> String {
    let port = parley_testkit::free_port(ip);
    let mut s = format!("[federation.libp2p]\nlisten = [\"/ip4/{ip}/tcp/{port}\"]\n");
    if let Some(addr) = external {
        s.push_str(&format!("external = [\"{addr}\"]\n"));
    }
    s
}
