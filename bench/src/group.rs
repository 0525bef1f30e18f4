//! `--group N`: one group chat of N members, one device each, every device online over
//! its own WebSocket on loopback.
//!
//! Setup goes through the SDK (`parley-client`): every member registers as a real
//! device with its own identity and uploads KeyPackages; the admin (member 0) creates the
//! group with one MLS Commit adding the other N − 1 devices. Then each member's device
//! gets a plain WebSocket (the bench's, speaking `parley-client-api` frames) that
//! acknowledges every inbox item as a real client does; the SDK clients are shut down,
//! except the admin's.
//!
//! Measured:
//! 1. **fan-out**: member 1 sends one message; the time until the *last* of the other
//!    N − 1 sockets has it, and until ✓ sent (`sent`), over `--group-repeats` messages
//!    sent one at a time;
//! 2. **burst**: `--group-burst` messages with `--group-window` in flight; messages and
//!    rows written (one event + one inbox row per recipient device) per second;
//! 3. **add one member**: the admin's SDK adds a fresh user (claim its KeyPackage, build
//!    the MLS Commit + Welcome against the whole tree, send it, the hub accepts it, the
//!    SDK merges it), then until every member's socket has the Commit and until the new
//!    member's SDK has joined from the Welcome; `--group-commits` times, the group
//!    growing by one each time.
//!
//! Payloads of the fan-out are opaque bytes stamped by the bench (the server never
//! looks inside; member sockets do not decrypt): what is timed is the server's path.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use futures_util::SinkExt as _;
use futures_util::stream::{self, StreamExt, TryStreamExt};
use hdrhistogram::Histogram;
use parley_client::{ChatId, Client, ClientConfig, UserId};
use parley_client_api::ws::{ClientFrame, MAX_ACK_IDS};
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep, sleep_until, timeout};
use tokio_tungstenite::tungstenite::Message;

use crate::load::{self, Ws};
use crate::procfs;
use crate::server::Server;
use crate::stats::{LatencySummary, latency_histogram, record};

const PASSWORD: &str = "parley-bench-password";
/// How long one message or commit may take to reach every member before the run fails.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(120);
/// Pause between two timed messages (their acks and receipts settle meanwhile).
const PAUSE: Duration = Duration::from_millis(50);
/// Members' sockets acknowledge in batches of this many items or after this delay.
const ACK_BATCH: usize = 64;
const ACK_DELAY: Duration = Duration::from_millis(5);

/// The group scenario's settings.
#[derive(Debug, Clone)]
pub(crate) struct GroupOptions {
    pub(crate) members: usize,
    pub(crate) repeats: usize,
    pub(crate) burst: usize,
    pub(crate) window: usize,
    pub(crate) commits: usize,
    pub(crate) payload_size: usize,
}

/// The server config a group run needs: room for the group and the members it adds.
pub(crate) fn server_config(opts: &GroupOptions) -> String {
    format!(
        "[limits]\nmax_group_members = {}\n",
        opts.members + opts.commits + 1
    )
}

/// What one group run measured.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct GroupReport {
    pub(crate) backend: String,
    pub(crate) members: usize,
    pub(crate) setup_s: f64,
    /// The admin's `create_group` with N − 1 others (claims, Commit, hub, merge).
    pub(crate) create_s: f64,
    pub(crate) create_commit_kib: f64,
    /// Send → the last recipient socket, one message at a time.
    pub(crate) fanout_last: LatencySummary,
    /// Send → the first recipient socket.
    pub(crate) fanout_first: LatencySummary,
    /// Send → `sent` (committed).
    pub(crate) fanout_sent: LatencySummary,
    pub(crate) burst_messages: usize,
    pub(crate) burst_window: usize,
    pub(crate) burst_s: f64,
    /// Messages at every member per second, over the burst.
    pub(crate) burst_msgs_per_s: f64,
    /// Rows the server inserted per second (event + inbox rows), first send → last `sent`.
    pub(crate) burst_rows_per_s: f64,
    /// Add one member: `add_members` returned (commit made, accepted, merged).
    pub(crate) add_accepted: LatencySummary,
    /// Add one member: start → the Commit at the last member's socket.
    pub(crate) add_delivered: LatencySummary,
    /// Add one member: start → the new member's SDK joined from the Welcome.
    pub(crate) add_joined: LatencySummary,
    pub(crate) add_commit_kib: f64,
    pub(crate) server_rss_mib: Option<f64>,
    pub(crate) server_hwm_mib: Option<f64>,
    pub(crate) errors: u64,
}

/// Per event `seq`: how many member sockets have it, first and last arrival, bytes.
#[derive(Debug, Clone, Copy)]
struct Arrival {
    count: usize,
    first: Instant,
    last: Instant,
    frame_bytes: usize,
}

/// What the member sockets share with the coordinator.
#[derive(Default)]
struct Tracker {
    arrivals: Mutex<HashMap<i64, Arrival>>,
    /// `client_msg_id` → (seq, when `sent` arrived).
    sent: Mutex<HashMap<String, (i64, Instant)>>,
    errors: Mutex<Vec<String>>,
    changed: Notify,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Tracker {
    fn arrived(&self, seq: i64, at: Instant, bytes: usize) {
        lock(&self.arrivals)
            .entry(seq)
            .and_modify(|a| {
                a.count += 1;
                a.last = a.last.max(at);
                a.first = a.first.min(at);
                a.frame_bytes = a.frame_bytes.max(bytes);
            })
            .or_insert(Arrival {
                count: 1,
                first: at,
                last: at,
                frame_bytes: bytes,
            });
        self.changed.notify_waiters();
    }

    fn sent(&self, id: String, seq: i64, at: Instant) {
        lock(&self.sent).insert(id, (seq, at));
        self.changed.notify_waiters();
    }

    fn error(&self, e: String) {
        let mut errors = lock(&self.errors);
        if errors.len() < 100 {
            eprintln!("group: {e}");
            errors.push(e);
        }
    }

    /// Waits until `check` says yes, re-checking on every change.
    async fn until<T>(&self, what: &str, mut check: impl FnMut(&Self) -> Option<T>) -> Result<T> {
        let deadline = Instant::now() + DELIVERY_TIMEOUT;
        loop {
            let changed = self.changed.notified();
            if let Some(t) = check(self) {
                return Ok(t);
            }
            if timeout(deadline.saturating_duration_since(Instant::now()), changed)
                .await
                .is_err()
            {
                bail!("timed out waiting until {what}");
            }
        }
    }

    async fn all_have(&self, seq: i64, sockets: usize) -> Result<Arrival> {
        self.until(&format!("{sockets} sockets have seq {seq}"), |t| {
            lock(&t.arrivals)
                .get(&seq)
                .filter(|a| a.count >= sockets)
                .copied()
        })
        .await
    }

    async fn sent_ack(&self, id: &str) -> Result<(i64, Instant)> {
        self.until(&format!("{id} is sent"), |t| lock(&t.sent).get(id).copied())
            .await
    }
}

/// The fields of a server frame the bench reads; the rest (payloads included) is
/// skipped without being decoded.
#[derive(Deserialize)]
struct Light {
    #[serde(rename = "type")]
    kind: String,
    id: Option<i64>,
    event: Option<LightEvent>,
    client_msg_id: Option<String>,
    seq: Option<i64>,
    code: Option<String>,
    message: Option<String>,
}

#[derive(Deserialize)]
struct LightEvent {
    seq: i64,
}

fn ack_frame(ids: Vec<i64>) -> Result<Message> {
    Ok(Message::Text(
        serde_json::to_string(&ClientFrame::Ack { ids })?.into(),
    ))
}

/// One member's socket: records arrivals, acknowledges everything, sends what it is
/// told to.
async fn member_socket(
    mut ws: Ws,
    tracker: Arc<Tracker>,
    mut sends: mpsc::Receiver<ClientFrame>,
    mut stop: watch::Receiver<bool>,
) {
    let mut pending: Vec<i64> = Vec::new();
    let mut flush_at: Option<Instant> = None;
    let result: Result<()> = async {
        loop {
            let deadline = flush_at.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                msg = ws.next() => {
                    let Some(msg) = msg else { bail!("socket closed") };
                    let Message::Text(text) = msg? else { continue };
                    let at = Instant::now();
                    let f: Light = serde_json::from_str(text.as_str())?;
                    match f.kind.as_str() {
                        "event" | "receipt" => {
                            if let (Some(e), "event") = (&f.event, f.kind.as_str()) {
                                tracker.arrived(e.seq, at, text.len());
                            }
                            if let Some(id) = f.id {
                                pending.push(id);
                                flush_at.get_or_insert(at + ACK_DELAY);
                            }
                        }
                        "sent" => {
                            if let (Some(id), Some(seq)) = (f.client_msg_id, f.seq) {
                                tracker.sent(id, seq, at);
                            }
                        }
                        "error" => tracker.error(format!(
                            "error frame: {} ({})",
                            f.code.unwrap_or_default(),
                            f.message.unwrap_or_default()
                        )),
                        _ => {}
                    }
                    if pending.len() >= ACK_BATCH {
                        flush_at = Some(Instant::now());
                    }
                }
                Some(frame) = sends.recv() => {
                    ws.send(Message::Text(serde_json::to_string(&frame)?.into())).await?;
                }
                () = sleep_until(deadline), if flush_at.is_some() => {
                    for ids in pending.chunks(MAX_ACK_IDS) {
                        ws.feed(ack_frame(ids.to_vec())?).await?;
                    }
                    ws.flush().await?;
                    pending.clear();
                    flush_at = None;
                }
                _ = stop.changed() => return Ok(()),
            }
        }
    }
    .await;
    if let Err(e) = result
        && !*stop.borrow()
    {
        tracker.error(format!("socket: {e:#}"));
    }
    let _ = ws.close(None).await;
}

/// A member's socket task and its send channel.
struct Member {
    sends: mpsc::Sender<ClientFrame>,
    task: JoinHandle<()>,
}

fn client_config(dir: &Path) -> ClientConfig {
    let mut c = ClientConfig::new(dir);
    // One KeyPackage is all a member needs here (the bench adds each device once).
    c.key_package_target = 1;
    c.device_name = Some("parley-bench".into());
    c
}

/// A registered member: its user, device token and profile directory.
struct Registered {
    user_id: UserId,
    token: String,
    dir: std::path::PathBuf,
}

/// Registers `n` users through the SDK (each a device with its identity and
/// KeyPackages), `concurrency` at a time; every client but the first is shut down.
async fn register_all(
    base: &str,
    root: &Path,
    tag: &str,
    n: usize,
    concurrency: usize,
) -> Result<(Client, Vec<Registered>)> {
    let done = std::sync::atomic::AtomicUsize::new(0);
    let done = &done;
    let registered: Vec<(Option<Client>, Registered)> = stream::iter(0..n)
        .map(|i| async move {
            let dir = root.join(format!("m{i}"));
            std::fs::create_dir_all(&dir)?;
            let name = format!("g{tag}m{i}");
            let client = Client::register(client_config(&dir), base, &name, PASSWORD)
                .await
                .with_context(|| format!("registering {name}"))?;
            let r = Registered {
                user_id: client.user_id().clone(),
                token: client.access_token().await?,
                dir,
            };
            let keep = if i == 0 {
                Some(client)
            } else {
                client.shutdown().await;
                None
            };
            let k = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            if k.is_multiple_of(128) {
                eprintln!("group: {k}/{n} members registered");
            }
            Ok::<_, anyhow::Error>((keep, r))
        })
        .buffered(concurrency.max(1))
        .try_collect()
        .await?;
    let mut admin = None;
    let mut out = Vec::with_capacity(n);
    for (c, r) in registered {
        if c.is_some() {
            admin = c;
        }
        out.push(r);
    }
    Ok((admin.context("no admin client")?, out))
}

fn summary(h: &Histogram<u64>) -> LatencySummary {
    LatencySummary::of(h)
}

fn ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

pub(crate) async fn run(server: &Server, opts: &GroupOptions) -> Result<GroupReport> {
    let n = opts.members;
    if n < 3 {
        bail!("--group: at least 3 members");
    }
    let base = server.url.as_str().trim_end_matches('/').to_owned();
    let root = tempfile::Builder::new()
        .prefix("parley-bench-group-")
        .tempdir()?;
    let tag = format!("{:06x}", rand::random::<u32>() & 0xff_ffff);
    let started = std::time::Instant::now();
    // One at a time: the SDK's MLS storage blocks its thread while it waits for its
    // SQLite file, so SDK clients polled together by one task can stall each other (and
    // the SDK's futures are not `Send`, so each cannot get a task of its own here).
    eprintln!(
        "group: registering {} devices through the SDK (one at a time)",
        n + opts.commits,
    );
    let (admin, regs) = register_all(&base, root.path(), &tag, n + opts.commits, 1).await?;
    let (members, joiners) = regs.split_at(n);

    eprintln!(
        "group: creating the group (one Commit adding {} devices)",
        n - 1
    );
    let t = std::time::Instant::now();
    let others: Vec<UserId> = members[1..].iter().map(|m| m.user_id.clone()).collect();
    let chat = admin.create_group("bench group", &others).await?;
    let create_s = t.elapsed().as_secs_f64();
    eprintln!("group: created {chat} in {create_s:.2} s");

    // Every member's device online over a plain socket (the admin's too).
    let tracker = Arc::new(Tracker::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let ws_url = server.ws_url();
    let sockets: Vec<Ws> = stream::iter(members)
        .map(|m| {
            let ws_url = ws_url.as_str();
            async move {
                load::connect(ws_url, &m.token)
                    .await
                    .with_context(|| format!("connecting {}", m.user_id))
            }
        })
        .buffered(16)
        .try_collect()
        .await?;
    let create_commit_kib = {
        // The creation commit was replayed, not tracked; read its size from history.
        commit_size(&base, &members[1].token, &chat, 1).await? as f64 / 1024.0
    };
    let mut sockets_of: Vec<Member> = sockets
        .into_iter()
        .map(|ws| {
            let (tx, rx) = mpsc::channel(64);
            Member {
                sends: tx,
                task: tokio::spawn(member_socket(ws, tracker.clone(), rx, stop_rx.clone())),
            }
        })
        .collect();
    let setup_s = started.elapsed().as_secs_f64();
    eprintln!("group: {n} sockets online; setup took {setup_s:.1} s");

    // 1. Fan-out, one message at a time, from member 1.
    let sender = sockets_of[1].sends.clone();
    let send = |k: String| {
        let payload = vec![0x5au8; opts.payload_size];
        let frame = ClientFrame::send(chat.clone(), k, payload);
        let sender = sender.clone();
        async move {
            sender
                .send(frame)
                .await
                .map_err(|_| anyhow::anyhow!("the sender's socket is gone"))
        }
    };
    let (mut last_h, mut first_h, mut sent_h) = (
        latency_histogram(),
        latency_histogram(),
        latency_histogram(),
    );
    let mut head = 1i64;
    eprintln!("group: {} messages, one at a time", opts.repeats);
    for k in 0..opts.repeats {
        let id = format!("f{tag}-{k}");
        let t0 = Instant::now();
        send(id.clone()).await?;
        let (seq, sent_at) = tracker.sent_ack(&id).await?;
        let a = tracker.all_have(seq, n - 1).await?;
        record(&mut last_h, ns(a.last - t0));
        record(&mut first_h, ns(a.first - t0));
        record(&mut sent_h, ns(sent_at - t0));
        head = head.max(seq);
        sleep(PAUSE).await;
    }

    // 2. A burst with a window.
    eprintln!(
        "group: burst of {} messages, {} in flight",
        opts.burst, opts.window
    );
    let t0 = Instant::now();
    let ids: Vec<String> = (0..opts.burst).map(|k| format!("b{tag}-{k}")).collect();
    let mut next = 0;
    let mut acked = 0;
    let mut last_sent = t0;
    let mut last_seq = head;
    while acked < ids.len() {
        while next < ids.len() && next - acked < opts.window {
            send(ids[next].clone()).await?;
            next += 1;
        }
        let (seq, at) = tracker.sent_ack(&ids[acked]).await?;
        last_sent = last_sent.max(at);
        last_seq = last_seq.max(seq);
        acked += 1;
    }
    let mut last_at = t0;
    for seq in head + 1..=last_seq {
        last_at = last_at.max(tracker.all_have(seq, n - 1).await?.last);
    }
    head = last_seq;
    let burst_s = (last_at - t0).as_secs_f64();
    let commit_s = (last_sent - t0).as_secs_f64();
    sleep(PAUSE * 4).await;

    // 3. Add one member at a time through the admin's SDK. Its device got the messages
    // above on the bench's socket: the SDK catches up on them (from the chat's history)
    // first, so that the timed commits start from a device that is up to date.
    if let Some(admin_socket) = sockets_of.first_mut() {
        admin_socket.task.abort();
    }
    admin.catch_up(&chat).await?;
    if admin
        .store()
        .chat(&chat)
        .await?
        .is_none_or(|c| c.last_seq < head)
    {
        bail!("the admin's SDK did not catch up to seq {head}");
    }
    let (mut accepted_h, mut delivered_h, mut joined_h) = (
        latency_histogram(),
        latency_histogram(),
        latency_histogram(),
    );
    let mut add_commit_bytes = 0usize;
    let mut joined_clients = Vec::new();
    for (k, j) in joiners.iter().enumerate() {
        let joiner = Client::open(client_config(&j.dir)).await?;
        joiner.connect();
        joiner.wait_synced(DELIVERY_TIMEOUT).await?;
        let t0 = Instant::now();
        admin
            .add_members(&chat, std::slice::from_ref(&j.user_id))
            .await?;
        let accepted = Instant::now();
        let seq = head + 1;
        // Members 1..n have sockets (the admin's device sent the commit).
        let a = tracker.all_have(seq, n - 1).await?;
        let deadline = Instant::now() + DELIVERY_TIMEOUT;
        let joined = loop {
            if joiner.store().chat(&chat).await?.is_some_and(|c| c.joined) {
                break Instant::now();
            }
            if Instant::now() > deadline {
                bail!("{} did not join", j.user_id);
            }
            sleep(Duration::from_millis(1)).await;
        };
        record(&mut accepted_h, ns(accepted - t0));
        record(&mut delivered_h, ns(a.last - t0));
        record(&mut joined_h, ns(joined - t0));
        add_commit_bytes = add_commit_bytes.max(a.frame_bytes);
        eprintln!(
            "group: add #{k}: accepted {:.1} ms, at every member {:.1} ms, joined {:.1} ms",
            (accepted - t0).as_secs_f64() * 1e3,
            (a.last - t0).as_secs_f64() * 1e3,
            (joined - t0).as_secs_f64() * 1e3
        );
        head = seq;
        joined_clients.push(joiner);
    }

    let mem = server.pid.and_then(procfs::memory);
    let _ = stop_tx.send(true);
    for m in sockets_of {
        drop(m.sends);
        let _ = m.task.await;
    }
    for c in joined_clients {
        c.shutdown().await;
    }
    admin.shutdown().await;
    let mib = |kib: u64| kib as f64 / 1024.0;
    let rows = (opts.burst * n) as f64;
    let errors = lock(&tracker.errors).len() as u64;
    Ok(GroupReport {
        backend: server.backend.clone(),
        members: n,
        setup_s,
        create_s,
        create_commit_kib,
        fanout_last: summary(&last_h),
        fanout_first: summary(&first_h),
        fanout_sent: summary(&sent_h),
        burst_messages: opts.burst,
        burst_window: opts.window,
        burst_s,
        burst_msgs_per_s: opts.burst as f64 / burst_s,
        burst_rows_per_s: rows / commit_s,
        add_accepted: summary(&accepted_h),
        add_delivered: summary(&delivered_h),
        add_joined: summary(&joined_h),
        add_commit_kib: add_commit_bytes as f64 / 1024.0,
        server_rss_mib: mem.map(|m| mib(m.rss_kib)),
        server_hwm_mib: mem.map(|m| mib(m.hwm_kib)),
        errors,
    })
}

/// The payload size of event `seq` (bytes), from the chat's history.
async fn commit_size(base: &str, token: &str, chat: &ChatId, seq: i64) -> Result<usize> {
    let path = parley_client_api::http::fill(
        parley_client_api::http::chats::history::PATH,
        &[("chat_id", chat.as_str())],
    );
    let resp = reqwest::Client::new()
        .get(format!("{base}{path}?after={}&limit=1", seq - 1))
        .bearer_auth(token)
        .send()
        .await?;
    if !resp.status().is_success() {
        bail!("history: {}", resp.status());
    }
    let body: parley_client_api::http::chats::history::Response = resp.json().await?;
    Ok(body.events.first().map_or(0, |e| e.payload.0.len()))
}

/// The report as text.
pub(crate) fn print(r: &GroupReport) {
    let l = |s: &LatencySummary| format!("{:.1} / {:.1} / {:.1}", s.p50_ms, s.p99_ms, s.max_ms);
    println!(
        "group of {} members ({}), every device online over its own WebSocket",
        r.members, r.backend
    );
    println!(
        "  setup {:.1} s; create (one Commit adding {} devices, {:.0} KiB): {:.2} s",
        r.setup_s,
        r.members - 1,
        r.create_commit_kib,
        r.create_s
    );
    println!(
        "  one message → last of {} sockets, p50 / p99 / max ms ({} messages): {}",
        r.members - 1,
        r.fanout_last.count,
        l(&r.fanout_last)
    );
    println!("    → first socket: {}", l(&r.fanout_first));
    println!("    → sent (committed): {}", l(&r.fanout_sent));
    println!(
        "  burst of {} messages, window {}: {:.2} s to the last member = {:.0} msgs/s at every member; {:.0} rows inserted/s (event + inbox rows, until the last sent)",
        r.burst_messages, r.burst_window, r.burst_s, r.burst_msgs_per_s, r.burst_rows_per_s
    );
    println!(
        "  add 1 member (Commit + Welcome {:.0} KiB), p50 / p99 / max ms over {}: accepted and merged {}; at every member's socket {}; new member joined {}",
        r.add_commit_kib,
        r.add_accepted.count,
        l(&r.add_accepted),
        l(&r.add_delivered),
        l(&r.add_joined)
    );
    if let (Some(rss), Some(hwm)) = (r.server_rss_mib, r.server_hwm_mib) {
        println!("  server RSS {rss:.0} MiB at the end, peak {hwm:.0} MiB");
    }
    println!("  errors: {}", r.errors);
}
