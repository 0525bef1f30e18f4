//! The load: one WebSocket per device, a sender and a recipient per pair.
//!
//! Each socket is owned by one task. A sender stamps every payload with its send time
//! (see [`crate::stats::encode_payload`]) and times its `sent` acks; a recipient reads the
//! stamp of every event it receives. Both acknowledge every inbox item (events and
//! receipts) in batches, as a real client does, so the server does its whole job:
//! commit, push, delete on ack, delivered receipt.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use futures_util::{FutureExt as _, SinkExt as _, StreamExt as _};
use hdrhistogram::Histogram;
use parley_client_api::ws::{ClientFrame, MAX_ACK_IDS, ServerFrame};
use parley_client_api::{ChatId, Payload};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::{Instant, sleep_until, timeout};
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::http::header::AUTHORIZATION;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::stats::{decode_payload, encode_payload, latency_histogram, record};

pub(crate) type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How long connecting and the inbox replay up to `synced` may take.
const SYNC_TIMEOUT: Duration = Duration::from_secs(30);
/// Frames handled in one go before the socket is flushed and timers get a look in.
const MAX_BURST: usize = 256;

/// What a sender does.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Load {
    /// Closed loop: keep this many sends awaiting their `sent` ack.
    Window(u32),
    /// Open loop: one send every `period`, unless `max_inflight` are already unacked
    /// (then the send is skipped and counted).
    Rate {
        period: Duration,
        max_inflight: usize,
    },
}

/// When things happen in a run, and what every client shares.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    /// The clock base of payload stamps.
    pub(crate) base: Instant,
    /// Senders start (warm-up begins).
    pub(crate) start: Instant,
    /// Measurement window: sends, acks and receipts in `[measure_start, measure_end)`
    /// are counted; senders stop at `measure_end`.
    pub(crate) measure_start: Instant,
    pub(crate) measure_end: Instant,
    pub(crate) payload_size: usize,
    /// Prefix of client message ids, unique per run (devices are reused across runs).
    pub(crate) run_tag: String,
    pub(crate) ack_batch: usize,
    pub(crate) ack_delay: Duration,
}

impl Plan {
    fn in_window(&self, t: Instant) -> bool {
        t >= self.measure_start && t < self.measure_end
    }
}

/// Counters every client task adds to.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    /// Send frames written.
    pub(crate) sends: AtomicU64,
    /// Sends answered by `sent` (first acceptance).
    pub(crate) acked: AtomicU64,
    /// Sends answered by `sent` with `duplicate: true` (never expected here).
    pub(crate) duplicates: AtomicU64,
    /// Sends awaiting their answer.
    pub(crate) inflight: AtomicI64,
    /// Events received by recipients.
    pub(crate) received: AtomicU64,
    /// `sent` acks and received events inside the measurement window.
    pub(crate) acked_in_window: AtomicU64,
    pub(crate) received_in_window: AtomicU64,
    /// Open-loop sends skipped because too many were in flight.
    pub(crate) skipped: AtomicU64,
}

/// What all client tasks of one run share.
pub(crate) struct Shared {
    pub(crate) plan: Plan,
    pub(crate) counters: Counters,
    /// send → recipient socket, by send time in the window.
    pub(crate) e2e: Mutex<Histogram<u64>>,
    /// send → `sent` ack, by send time in the window.
    pub(crate) sent: Mutex<Histogram<u64>>,
    /// Errors by kind (`error frame: <code>`, `socket: …`).
    pub(crate) errors: Mutex<BTreeMap<String, u64>>,
}

impl Shared {
    pub(crate) fn new(plan: Plan) -> Self {
        Self {
            plan,
            counters: Counters::default(),
            e2e: Mutex::new(latency_histogram()),
            sent: Mutex::new(latency_histogram()),
            errors: Mutex::new(BTreeMap::new()),
        }
    }

    /// Counts an error of `kind`; how many of that kind so far.
    fn error(&self, kind: String) -> u64 {
        let mut errors = lock(&self.errors);
        let n = errors.entry(kind).or_default();
        *n += 1;
        *n
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Opens a device socket, acknowledges whatever its inbox replays, and returns it once
/// the server says `synced`.
pub(crate) async fn connect(ws_url: &str, token: &str) -> Result<Ws> {
    let mut req = ws_url.into_client_request()?;
    req.headers_mut().insert(
        AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {token}"))?,
    );
    let sync = async {
        // TCP_NODELAY: frames are small and latency is what we measure.
        let (mut ws, _) = tokio_tungstenite::connect_async_with_config(req, None, true)
            .await
            .context("WebSocket handshake")?;
        let mut replayed = Vec::new();
        loop {
            let msg = ws.next().await.context("socket closed before synced")??;
            let Message::Text(text) = msg else { continue };
            let frame: ServerFrame = serde_json::from_str(text.as_str())?;
            match frame {
                ServerFrame::Synced => break,
                ServerFrame::Error { code, message, .. } => {
                    bail!("error frame before synced: {} ({message})", code.as_str())
                }
                other => replayed.extend(other.inbox_id()),
            }
        }
        for ids in replayed.chunks(MAX_ACK_IDS) {
            ws.feed(ack_message(ids.to_vec())?).await?;
        }
        ws.flush().await?;
        Ok(ws)
    };
    timeout(SYNC_TIMEOUT, sync)
        .await
        .context("no synced frame in time")?
}

/// A `send` frame with an empty payload, or a `ping` where there is nothing to send.
///
/// Built through serde rather than a struct literal, so that optional fields the API
/// grows (e.g. MLS metadata) take their defaults and need no change here.
fn send_template(chat_id: Option<ChatId>) -> Result<ClientFrame> {
    let frame = match chat_id {
        Some(chat_id) => serde_json::json!({
            "type": "send",
            "chat_id": chat_id,
            "client_msg_id": "template",
            "payload": Payload::default(),
        }),
        None => serde_json::json!({ "type": "ping" }),
    };
    Ok(serde_json::from_value(frame)?)
}

fn ack_message(ids: Vec<i64>) -> Result<Message> {
    let json = serde_json::to_string(&ClientFrame::Ack { ids })?;
    Ok(Message::Text(Utf8Bytes::from(json)))
}

/// A device's role in its pair.
#[derive(Debug, Clone)]
pub(crate) enum Role {
    Sender {
        chat_id: ChatId,
        load: Load,
        /// Open loop: when this sender's first send is due, after `plan.start`.
        offset: Duration,
    },
    Recipient,
}

/// Inbox ids waiting to be acknowledged: flushed when `ack_batch` are waiting or
/// `ack_delay` after the first.
struct Acks {
    ids: Vec<i64>,
    due: Option<Instant>,
}

/// One socket's task.
struct Client {
    ws: Ws,
    sh: std::sync::Arc<Shared>,
    role: Role,
    acks: Acks,
    /// Sender: message number → send time, for sends awaiting `sent`.
    inflight: HashMap<u64, Instant>,
    next_n: u64,
    /// Frames fed to the socket since the last flush.
    dirty: bool,
    /// Sender: a `send` frame for its chat, to fill in per message.
    template: ClientFrame,
}

/// Runs one device until `stop` fires or its socket fails.
pub(crate) async fn run_client(
    ws: Ws,
    role: Role,
    sh: std::sync::Arc<Shared>,
    stop: watch::Receiver<bool>,
) {
    let chat_id = match &role {
        Role::Sender { chat_id, .. } => Some(chat_id.clone()),
        Role::Recipient => None,
    };
    let template = match send_template(chat_id) {
        Ok(t) => t,
        Err(e) => {
            sh.error(format!("send frame: {e:#}"));
            return;
        }
    };
    let mut client = Client {
        ws,
        sh,
        role,
        acks: Acks {
            ids: Vec::new(),
            due: None,
        },
        inflight: HashMap::new(),
        next_n: 0,
        dirty: false,
        template,
    };
    if let Err(e) = client.run(stop).await {
        client.sh.error(format!("socket: {e:#}"));
    }
    // Whatever is still unanswered will not be answered now.
    let left = client.inflight.len() as i64;
    client.sh.counters.inflight.fetch_sub(left, Relaxed);
}

impl Client {
    async fn run(&mut self, mut stop: watch::Receiver<bool>) -> Result<()> {
        let plan = self.sh.plan.clone();
        sleep_until(plan.start).await;
        let (mut next_tick, period, max_inflight) = match self.role {
            Role::Sender {
                load: Load::Window(w),
                ..
            } => {
                for _ in 0..w {
                    self.send_one().await?;
                }
                (None, Duration::ZERO, 0)
            }
            Role::Sender {
                load:
                    Load::Rate {
                        period,
                        max_inflight,
                    },
                offset,
                ..
            } => (Some(plan.start + offset), period, max_inflight),
            Role::Recipient => (None, Duration::ZERO, 0),
        };
        loop {
            if self.dirty {
                self.ws.flush().await?;
                self.dirty = false;
            }
            let tick = next_tick.filter(|&t| t < plan.measure_end);
            tokio::select! {
                biased;
                _ = stop.changed() => break,
                msg = self.ws.next() => {
                    let Some(msg) = msg else { bail!("closed by the server") };
                    self.on_message(msg?).await?;
                    for _ in 0..MAX_BURST {
                        match self.ws.next().now_or_never() {
                            Some(Some(msg)) => self.on_message(msg?).await?,
                            Some(None) => bail!("closed by the server"),
                            None => break,
                        }
                    }
                }
                () = sleep_until(tick.unwrap_or(plan.measure_end)), if tick.is_some() => {
                    if self.inflight.len() < max_inflight {
                        self.send_one().await?;
                    } else {
                        self.sh.counters.skipped.fetch_add(1, Relaxed);
                    }
                    next_tick = next_tick.map(|t| t + period);
                }
                () = sleep_until(self.acks.due.unwrap_or(plan.measure_end)), if self.acks.due.is_some() => {
                    self.flush_acks().await?;
                }
            }
        }
        self.flush_acks().await?;
        self.ws.flush().await?;
        let _ = timeout(Duration::from_secs(1), self.ws.close(None)).await;
        Ok(())
    }

    async fn send_one(&mut self) -> Result<()> {
        if !matches!(self.role, Role::Sender { .. }) {
            return Ok(());
        }
        let plan = &self.sh.plan;
        let n = self.next_n;
        self.next_n += 1;
        let now = Instant::now();
        let stamp = now.duration_since(plan.base).as_nanos() as u64;
        let mut frame = self.template.clone();
        if let ClientFrame::Send {
            client_msg_id,
            payload,
            ..
        } = &mut frame
        {
            *client_msg_id = format!("{}.{n}", plan.run_tag);
            *payload = Payload(encode_payload(stamp, n, plan.payload_size));
        }
        let json = serde_json::to_string(&frame)?;
        self.inflight.insert(n, now);
        self.sh.counters.sends.fetch_add(1, Relaxed);
        self.sh.counters.inflight.fetch_add(1, Relaxed);
        self.ws.feed(Message::Text(Utf8Bytes::from(json))).await?;
        self.dirty = true;
        Ok(())
    }

    async fn on_message(&mut self, msg: Message) -> Result<()> {
        let text = match msg {
            Message::Text(text) => text,
            Message::Close(frame) => bail!("closed by the server: {frame:?}"),
            // tungstenite answers pings itself (on the next write or flush).
            Message::Ping(_) => {
                self.dirty = true;
                return Ok(());
            }
            _ => return Ok(()),
        };
        let now = Instant::now();
        let frame: ServerFrame = serde_json::from_str(text.as_str())
            .with_context(|| format!("unexpected frame {text}"))?;
        if let Some(id) = frame.inbox_id() {
            self.queue_ack(id, now).await?;
        }
        let sh = self.sh.clone();
        let (plan, c) = (&sh.plan, &sh.counters);
        match frame {
            ServerFrame::Event { event, .. } => {
                if !matches!(self.role, Role::Recipient) {
                    return Ok(());
                }
                c.received.fetch_add(1, Relaxed);
                if plan.in_window(now) {
                    c.received_in_window.fetch_add(1, Relaxed);
                }
                match decode_payload(event.payload.as_bytes()) {
                    Some((sent_ns, _)) => {
                        let sent_at = plan.base + Duration::from_nanos(sent_ns);
                        if plan.in_window(sent_at) {
                            let ns = now.saturating_duration_since(sent_at).as_nanos() as u64;
                            record(&mut lock(&sh.e2e), ns);
                        }
                    }
                    None => {
                        self.sh.error("event without a stamp".into());
                    }
                }
            }
            ServerFrame::Sent { ack } => {
                let Some(sent_at) = self.answered(&ack.client_msg_id) else {
                    self.sh.error("sent ack for an unknown send".into());
                    return Ok(());
                };
                if ack.duplicate {
                    c.duplicates.fetch_add(1, Relaxed);
                } else {
                    c.acked.fetch_add(1, Relaxed);
                }
                if plan.in_window(now) {
                    c.acked_in_window.fetch_add(1, Relaxed);
                }
                if plan.in_window(sent_at) {
                    let ns = now.saturating_duration_since(sent_at).as_nanos() as u64;
                    record(&mut lock(&sh.sent), ns);
                }
                self.refill(now).await?;
            }
            ServerFrame::Error {
                code,
                message,
                client_msg_id,
                ..
            } => {
                if self.sh.error(format!("error frame: {}", code.as_str())) <= 3 {
                    eprintln!("error frame: {} ({message})", code.as_str());
                }
                if let Some(id) = client_msg_id
                    && self.answered(&id).is_some()
                {
                    self.refill(now).await?;
                }
            }
            // A chat's hub refused a send it had answered `pending` (a sender on a
            // follower whose hub was down: not a setup the bench makes).
            ServerFrame::SendFailed { code, .. } => {
                self.sh
                    .error(format!("send failed late: {}", code.as_str()));
            }
            ServerFrame::Receipt { .. }
            | ServerFrame::SentLate { .. }
            | ServerFrame::Synced
            | ServerFrame::Pong
            | ServerFrame::Typing { .. }
            | ServerFrame::Presence { .. }
            | ServerFrame::DevicesChanged => {}
        }
        Ok(())
    }

    /// Removes an answered send from the in-flight set; its send time.
    fn answered(&mut self, client_msg_id: &str) -> Option<Instant> {
        let n = client_msg_id
            .strip_prefix(self.sh.plan.run_tag.as_str())?
            .strip_prefix('.')?
            .parse()
            .ok()?;
        let sent_at = self.inflight.remove(&n)?;
        self.sh.counters.inflight.fetch_sub(1, Relaxed);
        Some(sent_at)
    }

    /// Closed loop: an answer frees a slot of the window, until the window closes.
    async fn refill(&mut self, now: Instant) -> Result<()> {
        if let Role::Sender {
            load: Load::Window(_),
            ..
        } = self.role
            && now < self.sh.plan.measure_end
        {
            self.send_one().await?;
        }
        Ok(())
    }

    async fn queue_ack(&mut self, id: i64, now: Instant) -> Result<()> {
        if self.acks.ids.is_empty() {
            self.acks.due = Some(now + self.sh.plan.ack_delay);
        }
        self.acks.ids.push(id);
        if self.acks.ids.len() >= self.sh.plan.ack_batch {
            self.flush_acks().await?;
        }
        Ok(())
    }

    async fn flush_acks(&mut self) -> Result<()> {
        self.acks.due = None;
        if self.acks.ids.is_empty() {
            return Ok(());
        }
        let ids = std::mem::take(&mut self.acks.ids);
        for chunk in ids.chunks(MAX_ACK_IDS) {
            self.ws.feed(ack_message(chunk.to_vec())?).await?;
        }
        self.dirty = true;
        Ok(())
    }
}
