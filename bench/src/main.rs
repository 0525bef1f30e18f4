//! `parley-bench`: N pairs of WebSocket clients in 1:1 chats against a real homeserver on
//! loopback. Prints messages/s sustained, send → recipient latency (p50/p99/p999),
//! send → `sent` ack latency, server RSS and CPU.
//!
//! Two modes, each a list of runs against one server:
//! - throughput (`--window W[,W…]`): closed loop, every sender keeps `W` sends in flight;
//! - latency (`--rate R[,R…]`): open loop, `R` messages/s in total, spread over the pairs.
//!
//! A third scenario, `--group N`, measures one group chat of N members (see
//! [`group`]): fan-out of one message to every member's socket, and adding a member.
//!
//! `--presence N`: N connected devices heartbeating in N/2 chats, reconnecting now and
//! then: server CPU and RSS, presence fan-out frames per second (see [`presence`]).
//!
//! `parley-bench media --size 10MiB,100MiB`: media throughput and server RSS (`media`).
//!
//! `--nodes N` spawns N homeserver nodes of one domain on one Postgres database, routing
//! through NATS (`--bus-url`), and spreads each pair over two nodes (see `nodes.rs`).
//!
//! `--federated` spawns two federating homeservers (127.0.0.2 and 127.0.0.3): every
//! pair's sender is on the first, its recipient on the second (see `nodes.rs`).
//!
//! The bench talks only HTTP and WebSocket (the types of `parley-client-api`, and the
//! SDK for the group's MLS setup and commits), never to the server's internals or
//! database. See bench/README.md for the figures.

mod backup;
mod group;
mod load;
mod media;
mod nodes;
mod presence;
mod procfs;
mod report;
mod run;
mod server;
mod setup;
mod stats;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Result, bail};
use clap::Parser;

use nodes::Nodes;
use run::{Options, Spec};
use server::Server;

#[derive(Debug, Parser)]
#[command(name = "parley-bench", version, about)]
struct Args {
    /// Spawn this homeserver binary [default: parley-homeserver next to this executable].
    #[arg(long, conflicts_with_all = ["url", "pid"])]
    spawn: Option<PathBuf>,
    /// Database of the spawned server: `postgres://…` naming an EMPTY, throwaway database
    /// (the bench leaves its users and chats there), or `sqlite://…` [default: SQLite in
    /// a temporary directory].
    #[arg(long, conflicts_with = "url")]
    database_url: Option<String>,
    /// Spawn this many homeserver nodes of one domain, sharing the --database-url
    /// (Postgres) and routing through NATS at --bus-url; each pair's sender and recipient
    /// connect to different nodes.
    #[arg(long, default_value_t = 1, conflicts_with = "url")]
    nodes: usize,
    /// Spawn two federating homeservers, on 127.0.0.2 and 127.0.0.3 (each with its own
    /// database: --database-url and --peer-database-url, SQLite by default); senders
    /// are users of the first (every chat's hub), recipients of the second.
    #[arg(long, conflicts_with_all = ["url", "group"])]
    federated: bool,
    /// With --federated: the second server's database [default: SQLite in a temporary
    /// directory].
    #[arg(long, requires = "federated")]
    peer_database_url: Option<String>,
    /// With --federated: the spawned servers' `[limits] writers`, their concurrent send
    /// writers on Postgres [default: the server's default].
    #[arg(long, requires = "federated")]
    writers: Option<usize>,
    /// With --nodes: the NATS server the nodes route through.
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    bus_url: String,
    /// Use a server already running at this loopback URL (`http://127.0.0.1:PORT`).
    #[arg(long)]
    url: Option<String>,
    /// With --url: the server's pid, for RSS and CPU figures.
    #[arg(long, requires = "url")]
    pid: Option<u32>,
    /// With --url: the label of its store in the output (e.g. `postgres`).
    #[arg(long, requires = "url")]
    backend: Option<String>,
    /// Pairs (sender + recipient, one chat each); a list runs each in turn.
    #[arg(long, value_delimiter = ',', default_value = "20")]
    pairs: Vec<usize>,
    /// Throughput runs: sends each sender keeps in flight [default: 32 unless --rate].
    #[arg(long, value_delimiter = ',')]
    window: Option<Vec<u32>>,
    /// Latency runs: offered messages/s over all pairs (open loop).
    #[arg(long, value_delimiter = ',')]
    rate: Option<Vec<f64>>,
    /// Seconds measured per run.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds of load before measuring.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Bytes per message payload (at least 16: the send stamp).
    #[arg(long, default_value_t = 256)]
    payload_size: usize,
    /// Latency runs: sends one sender may have unanswered before it skips sends.
    #[arg(long, default_value_t = 1024)]
    max_inflight: usize,
    /// Seconds to wait after the window for in-flight messages to arrive.
    #[arg(long, default_value_t = 10.0)]
    drain_timeout: f64,
    /// Clients acknowledge inbox items in batches of this many…
    #[arg(long, default_value_t = 64)]
    ack_batch: usize,
    /// …or this many milliseconds after the first unacknowledged one.
    #[arg(long, default_value_t = 5)]
    ack_delay_ms: u64,
    /// Registrations in parallel (argon2id is slow on purpose).
    #[arg(long, default_value_t = 4)]
    setup_concurrency: usize,
    /// Print one JSON object per run on stdout instead of the table.
    #[arg(long)]
    json: bool,
    /// Instead of pairs: one group chat of this many members (one device each, all
    /// online), see `--group-*`.
    #[arg(long, conflicts_with_all = ["window", "rate"])]
    group: Option<usize>,
    /// Group: messages timed one at a time (send → last member's socket).
    #[arg(long, default_value_t = 200)]
    group_repeats: usize,
    /// Group: messages of the burst (rows inserted per second).
    #[arg(long, default_value_t = 500)]
    group_burst: usize,
    /// Group: messages of the burst in flight at once.
    #[arg(long, default_value_t = 32)]
    group_window: usize,
    /// Group: members added one at a time through the admin's SDK (each timed).
    #[arg(long, default_value_t = 10)]
    group_commits: usize,
    /// Instead of pairs: this many devices (even) connected and heartbeating, in 1:1
    /// chats of two; measures presence (see `--presence-*`, `--warmup`, `--duration`).
    #[arg(long, conflicts_with_all = ["window", "rate", "group"])]
    presence: Option<usize>,
    /// Presence: each device's heartbeat period (the server's timeout is three of them).
    #[arg(long, default_value_t = 20_000)]
    presence_heartbeat_ms: u64,
    /// Presence: each device reconnects once per this many seconds (0: never), so its
    /// peer sees it go offline and online.
    #[arg(long, default_value_t = 60.0)]
    presence_churn_s: f64,
    #[command(subcommand)]
    command: Option<Mode>,
}

/// Other benchmarks than the message load (the default).
#[derive(Debug, clap::Subcommand)]
enum Mode {
    /// Media: upload/download throughput and server RSS per file size.
    Media(media::MediaArgs),
    /// Backup: an encrypted history backup and its restore (time, peak memory).
    Backup(backup::BackupArgs),
}

/// Most devices of a presence run.
const MAX_PRESENCE: usize = 20_000;

/// Most members of a bench group.
const MAX_GROUP: usize = 4096;

/// Bounds on every input, so a run is bounded in count and time.
const MAX_PAIRS: usize = 4000;
const MAX_WINDOW: u32 = 256;
const MAX_SECONDS: f64 = 3600.0;
const MAX_RATE: f64 = 1_000_000.0;
const MAX_PAYLOAD: usize = 60 * 1024;

impl Args {
    fn validate(&self) -> Result<()> {
        if !(1..=nodes::MAX_NODES).contains(&self.nodes) {
            bail!("--nodes: 1 to {}", nodes::MAX_NODES);
        }
        if self.nodes > 1 && self.federated {
            bail!("--federated spawns two servers of one node each; drop --nodes");
        }
        if self.nodes > 1 && self.group.is_some() {
            bail!("--group runs against one node; drop --nodes");
        }
        if self.pairs.iter().any(|&p| p == 0 || p > MAX_PAIRS) {
            bail!("--pairs: 1 to {MAX_PAIRS}");
        }
        if let Some(w) = &self.window
            && w.iter().any(|&w| w == 0 || w > MAX_WINDOW)
        {
            bail!("--window: 1 to {MAX_WINDOW} (the server's per-socket limit is 256)");
        }
        if let Some(r) = &self.rate
            && r.iter().any(|&r| !(r > 0.0 && r <= MAX_RATE))
        {
            bail!("--rate: more than 0, at most {MAX_RATE}");
        }
        for (name, v, min) in [
            ("--duration", self.duration, 0.1),
            ("--warmup", self.warmup, 0.0),
            ("--drain-timeout", self.drain_timeout, 0.0),
        ] {
            if !(v >= min && v <= MAX_SECONDS) {
                bail!("{name}: {min} to {MAX_SECONDS} seconds");
            }
        }
        if !(stats::STAMP_LEN..=MAX_PAYLOAD).contains(&self.payload_size) {
            bail!("--payload-size: {} to {MAX_PAYLOAD}", stats::STAMP_LEN);
        }
        if !(1..=parley_client_api::ws::MAX_ACK_IDS).contains(&self.ack_batch) {
            bail!("--ack-batch: 1 to {}", parley_client_api::ws::MAX_ACK_IDS);
        }
        if self.ack_delay_ms > 1000 || self.max_inflight == 0 || self.max_inflight > 100_000 {
            bail!("--ack-delay-ms: at most 1000; --max-inflight: 1 to 100000");
        }
        if !(1..=64).contains(&self.setup_concurrency) {
            bail!("--setup-concurrency: 1 to 64");
        }
        if self.group.is_some_and(|n| !(3..=MAX_GROUP).contains(&n))
            || self.group_repeats > 100_000
            || self.group_burst > 1_000_000
            || !(1..=256).contains(&self.group_window)
            || self.group_commits > 1000
        {
            bail!(
                "--group: 3 to {MAX_GROUP}; --group-repeats ≤ 100000; --group-burst ≤ 1000000; --group-window 1 to 256; --group-commits ≤ 1000"
            );
        }
        if self
            .presence
            .is_some_and(|n| n < 2 || n % 2 == 1 || n > MAX_PRESENCE)
            || !(100..=600_000).contains(&self.presence_heartbeat_ms)
            || !(self.presence_churn_s >= 0.0 && self.presence_churn_s <= MAX_SECONDS)
        {
            bail!(
                "--presence: an even number, 2 to {MAX_PRESENCE}; --presence-heartbeat-ms 100 to 600000; --presence-churn-s 0 to {MAX_SECONDS}"
            );
        }
        if (self.nodes > 1 || self.federated) && self.presence.is_some() {
            bail!("--presence runs against one node; drop --nodes and --federated");
        }
        Ok(())
    }

    fn specs(&self) -> Vec<Spec> {
        let windows = self.window.clone().unwrap_or_else(|| {
            if self.rate.is_some() {
                Vec::new()
            } else {
                vec![32]
            }
        });
        let throughput = windows
            .into_iter()
            .map(|window| Spec::Throughput { window });
        let latency = self
            .rate
            .iter()
            .flatten()
            .map(|&rate| Spec::Latency { rate });
        throughput.chain(latency).collect()
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    match args.command {
        Some(Mode::Media(m)) => return media::run(m).await,
        Some(Mode::Backup(b)) => return backup::run(b).await,
        None => {}
    }
    args.validate()?;
    let group = args.group.map(|members| group::GroupOptions {
        members,
        repeats: args.group_repeats,
        burst: args.group_burst,
        window: args.group_window,
        commits: args.group_commits,
        payload_size: args.payload_size,
    });
    let presence = args.presence.map(|devices| presence::PresenceOptions {
        devices,
        heartbeat: Duration::from_millis(args.presence_heartbeat_ms),
        churn: Duration::from_secs_f64(args.presence_churn_s),
        warmup: Duration::from_secs_f64(args.warmup),
        duration: Duration::from_secs_f64(args.duration),
        setup_concurrency: args.setup_concurrency,
    });
    let nodes = match &args.url {
        Some(url) => Nodes::single(Server::attach(url, args.pid, args.backend.clone())?),
        None => {
            let binary = match &args.spawn {
                Some(path) => path.clone(),
                None => server::default_binary()?,
            };
            let config = group
                .as_ref()
                .map(group::server_config)
                .or_else(|| presence.as_ref().map(presence::server_config));
            if args.federated {
                Nodes::federated(
                    &binary,
                    args.database_url.as_deref(),
                    args.peer_database_url.as_deref(),
                    args.writers,
                )
                .await?
            } else if args.nodes == 1 {
                Nodes::single(
                    Server::spawn(&binary, args.database_url.as_deref(), config.as_deref()).await?,
                )
            } else {
                Nodes::spawn(
                    &binary,
                    args.database_url.as_deref(),
                    args.nodes,
                    &args.bus_url,
                )
                .await?
            }
        }
    };
    eprintln!(
        "{} node(s) ({}): {}",
        nodes.len(),
        nodes.label(),
        nodes.describe()
    );
    let result = match (&group, &presence) {
        (Some(opts), _) => group::run(nodes.first(), opts).await.map(|r| {
            if args.json {
                println!("{}", serde_json::to_string(&r).unwrap_or_default());
            } else {
                group::print(&r);
            }
        }),
        (None, Some(opts)) => presence::run(nodes.first(), opts).await.map(|r| {
            if args.json {
                println!("{}", serde_json::to_string(&r).unwrap_or_default());
            } else {
                presence::print(&r);
            }
        }),
        (None, None) => bench(&args, &nodes).await,
    };
    nodes.stop().await?;
    result
}

async fn bench(args: &Args, nodes: &Nodes) -> Result<()> {
    let max_pairs = args.pairs.iter().copied().max().unwrap_or(1);
    eprintln!(
        "registering {} users and creating {max_pairs} chats",
        2 * max_pairs
    );
    let started = std::time::Instant::now();
    let pairs = setup::pairs(
        nodes.url(),
        nodes.recipient_url(),
        max_pairs,
        args.setup_concurrency,
    )
    .await?;
    eprintln!("set up in {:.1} s", started.elapsed().as_secs_f64());
    let opts = Options {
        warmup: Duration::from_secs_f64(args.warmup),
        duration: Duration::from_secs_f64(args.duration),
        payload_size: args.payload_size,
        drain_timeout: Duration::from_secs_f64(args.drain_timeout),
        ack_batch: args.ack_batch,
        ack_delay: Duration::from_millis(args.ack_delay_ms),
        max_inflight: args.max_inflight,
        connect_concurrency: 16,
        clock_ticks: procfs::clock_ticks(),
    };
    let mut reports = Vec::new();
    let mut index = 0;
    for &n in &args.pairs {
        for spec in args.specs() {
            index += 1;
            let r = run::run(nodes, &pairs[..n], spec, &opts, index).await?;
            if args.json {
                println!("{}", serde_json::to_string(&r)?);
            } else {
                eprintln!("{}", report::table_row(&r));
            }
            reports.push(r);
        }
    }
    if !args.json {
        println!("{}", report::header());
        for r in &reports {
            println!("{}", report::table_row(r));
        }
        println!(
            "latencies in ms; CPU in % of one core over the window ({} cores); errors = error frames + socket errors + lost + skipped",
            reports.first().map_or(0, |r| r.cores)
        );
    }
    Ok(())
}
