//! The servers under test: one homeserver, or N nodes of one domain sharing one Postgres
//! database and routing through NATS (`--nodes N --bus-url nats://…`).
//!
//! With N nodes, pair `i`'s sender connects to node `i % N` and its recipient to node
//! `(i + 1) % N`, so with two nodes every message crosses the bus: it is committed by
//! the sender's node and pushed by the recipient's, and its receipt goes back the same
//! way. Users and chats are created through node 0 (any node accepts any request).
//! CPU and memory figures are the nodes' sums.
//!
//! `--federated`: two homeservers of different domains, A on 127.0.0.2 and B on
//! 127.0.0.3, federating over signed HTTP (test mode). Every sender is a user of A,
//! every recipient a user of B, and A (where the chats are created) is every chat's hub:
//! a message is committed on A, carried to B by A's outbox, and pushed by B; the
//! recipient's receipt goes back the same way.

use anyhow::{Result, bail};
use reqwest::Url;

use crate::procfs::{self, Memory};
use crate::server::Server;

/// The one server name every node of a spawned multi-node domain shares.
const DOMAIN: &str = "bench.parley.test";
/// At most this many nodes (each is a process with its own connection pool).
pub(crate) const MAX_NODES: usize = 8;

pub(crate) struct Nodes {
    nodes: Vec<Server>,
    /// Two federating servers: senders on the first, recipients on the second.
    federated: bool,
}

impl Nodes {
    pub(crate) fn single(server: Server) -> Self {
        Self {
            nodes: vec![server],
            federated: false,
        }
    }

    /// Spawns two federating homeservers, on 127.0.0.2 (senders, hubs) and 127.0.0.3
    /// (recipients), each on its own database (with `writers` send writers, if given).
    pub(crate) async fn federated(
        binary: &std::path::Path,
        database_url: Option<&str>,
        peer_database_url: Option<&str>,
        writers: Option<usize>,
    ) -> Result<Self> {
        if database_url.is_some() && database_url == peer_database_url {
            bail!("--federated: the two servers need two databases (--peer-database-url)");
        }
        let a = Server::spawn_peer(binary, "127.0.0.2", database_url, writers).await?;
        let b = Server::spawn_peer(binary, "127.0.0.3", peer_database_url, writers).await?;
        Ok(Self {
            nodes: vec![a, b],
            federated: true,
        })
    }

    /// Spawns `n` nodes of one domain on `database_url` (Postgres), routing through NATS
    /// at `bus_url`.
    pub(crate) async fn spawn(
        binary: &std::path::Path,
        database_url: Option<&str>,
        n: usize,
        bus_url: &str,
    ) -> Result<Self> {
        let Some(db) = database_url.filter(|u| u.starts_with("postgres")) else {
            bail!("--nodes {n}: the nodes share one database: pass --database-url postgres://…")
        };
        let extra = [
            "--server-name".to_owned(),
            DOMAIN.to_owned(),
            "--bus-url".to_owned(),
            bus_url.to_owned(),
        ];
        let mut nodes = Vec::with_capacity(n);
        for _ in 0..n {
            nodes.push(Server::spawn_with(binary, Some(db), None, &extra).await?);
        }
        Ok(Self {
            nodes,
            federated: false,
        })
    }

    /// Node 0 (the only one unless `--nodes`).
    pub(crate) fn first(&self) -> &Server {
        &self.nodes[0]
    }

    pub(crate) fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Where senders are registered and chats created.
    pub(crate) fn url(&self) -> &Url {
        &self.nodes[0].url
    }

    /// Where recipients are registered.
    pub(crate) fn recipient_url(&self) -> &Url {
        if self.federated {
            &self.nodes[1].url
        } else {
            &self.nodes[0].url
        }
    }

    /// `(sender, recipient)` WebSocket URLs of pair `i`.
    pub(crate) fn ws_urls(&self, i: usize) -> (String, String) {
        if self.federated {
            return (self.nodes[0].ws_url(), self.nodes[1].ws_url());
        }
        let n = self.nodes.len();
        (self.nodes[i % n].ws_url(), self.nodes[(i + 1) % n].ws_url())
    }

    /// The nodes' pids, when every one is known.
    pub(crate) fn pids(&self) -> Option<Vec<u32>> {
        self.nodes.iter().map(|s| s.pid).collect()
    }

    /// The nodes' RSS and peak RSS, summed (None unless every node's is known).
    pub(crate) fn memory(&self) -> Option<Memory> {
        let mut sum = Memory::default();
        for pid in self.pids()? {
            let m = procfs::memory(pid)?;
            sum.rss_kib += m.rss_kib;
            sum.hwm_kib += m.hwm_kib;
        }
        Some(sum)
    }

    /// `postgres`, `postgres×2` for two nodes, `sqlite→sqlite` for two federating
    /// servers.
    pub(crate) fn label(&self) -> String {
        let backend = &self.nodes[0].backend;
        if self.federated {
            return format!("{backend}→{}", self.nodes[1].backend);
        }
        match self.nodes.len() {
            1 => backend.clone(),
            n => format!("{backend}×{n}"),
        }
    }

    pub(crate) fn describe(&self) -> String {
        self.nodes
            .iter()
            .map(|s| {
                format!(
                    "{} (pid {})",
                    s.url,
                    s.pid.map_or("unknown".into(), |p| p.to_string())
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    pub(crate) async fn stop(self) -> Result<()> {
        for node in self.nodes {
            node.stop().await?;
        }
        Ok(())
    }
}
