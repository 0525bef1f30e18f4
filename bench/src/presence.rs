//! `--presence N`: N connected devices, each heartbeating, in N/2 1:1 chats.
//!
//! Every device is a plain WebSocket (the bench's, speaking `parley-client-api` frames)
//! that heartbeats every `--presence-heartbeat-ms` (staggered) and so receives presence
//! updates of its chat peer. To make presence *change* (the fan-out path), each device
//! also reconnects once per `--presence-churn-s` seconds (random phase): its user goes
//! offline and online again, and its peer's socket gets both updates.
//!
//! Measured over the window: heartbeats sent per second, presence frames received per
//! second (the fan-out), reconnects, server CPU (% of one core) and RSS before and after.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use futures_util::SinkExt as _;
use futures_util::stream::{self, StreamExt, TryStreamExt};
use parley_client_api::http::accounts::Session;
use parley_client_api::ws::{ClientFrame, ServerFrame};
use serde::Serialize;
use tokio::sync::watch;
use tokio::time::{Instant, sleep_until};
use tokio_tungstenite::tungstenite::Message;

use crate::load;
use crate::procfs;
use crate::server::Server;

/// Sockets opened at once during setup.
const CONNECT_CONCURRENCY: usize = 64;

#[derive(Debug, Clone)]
pub(crate) struct PresenceOptions {
    pub(crate) devices: usize,
    pub(crate) heartbeat: Duration,
    /// Each device reconnects once per this long (0: never).
    pub(crate) churn: Duration,
    pub(crate) warmup: Duration,
    pub(crate) duration: Duration,
    pub(crate) setup_concurrency: usize,
}

/// The server's config for the run: room for every socket, a timeout of three
/// heartbeats.
pub(crate) fn server_config(opts: &PresenceOptions) -> String {
    format!(
        "[limits]\nmax_connections = {}\n[presence]\nheartbeat_timeout_ms = {}\n",
        opts.devices + 64,
        opts.heartbeat.as_millis() * 3
    )
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct PresenceReport {
    pub(crate) backend: String,
    pub(crate) devices: usize,
    pub(crate) heartbeat_ms: u64,
    pub(crate) churn_s: f64,
    pub(crate) setup_s: f64,
    pub(crate) connect_s: f64,
    pub(crate) window_s: f64,
    pub(crate) heartbeats_per_s: f64,
    pub(crate) presence_frames_per_s: f64,
    pub(crate) reconnects: u64,
    pub(crate) errors: u64,
    pub(crate) server_cpu_pct: Option<f64>,
    pub(crate) postgres_cpu_pct: f64,
    pub(crate) other_cpu_pct: f64,
    pub(crate) rss_before_mib: Option<f64>,
    pub(crate) rss_after_mib: Option<f64>,
    pub(crate) rss_peak_mib: Option<f64>,
}

#[derive(Default)]
struct Counters {
    heartbeats: AtomicU64,
    presence: AtomicU64,
    reconnects: AtomicU64,
    errors: AtomicU64,
}

pub(crate) async fn run(server: &Server, opts: &PresenceOptions) -> Result<PresenceReport> {
    let started = std::time::Instant::now();
    eprintln!(
        "registering {} users in {} chats",
        opts.devices,
        opts.devices / 2
    );
    let pairs = crate::setup::pairs(
        &server.url,
        &server.url,
        opts.devices / 2,
        opts.setup_concurrency,
    )
    .await?;
    let sessions: Vec<Session> = pairs
        .into_iter()
        .flat_map(|p| [p.sender, p.recipient])
        .collect();
    let setup_s = started.elapsed().as_secs_f64();
    eprintln!("set up in {setup_s:.1} s; connecting");

    let ws_url = server.ws_url();
    let counters = Arc::new(Counters::default());
    let (stop_tx, stop) = watch::channel(false);
    let connected = std::time::Instant::now();
    let sockets: Vec<load::Ws> = stream::iter(sessions.iter())
        .map(|s| load::connect(&ws_url, &s.access_token))
        .buffered(CONNECT_CONCURRENCY)
        .try_collect()
        .await
        .context("connecting the devices")?;
    let connect_s = connected.elapsed().as_secs_f64();
    eprintln!("{} sockets in {connect_s:.1} s", sockets.len());

    let base = Instant::now();
    let mut tasks = Vec::with_capacity(sockets.len());
    for (i, (ws, session)) in sockets.into_iter().zip(&sessions).enumerate() {
        let phase = |period: Duration| {
            if period.is_zero() {
                Duration::ZERO
            } else {
                period.mul_f64(i as f64 / opts.devices as f64)
            }
        };
        let device = Device {
            ws_url: ws_url.clone(),
            token: session.access_token.clone(),
            heartbeat: opts.heartbeat,
            churn: opts.churn,
            first_beat: base + phase(opts.heartbeat),
            first_churn: base + phase(opts.churn) + opts.churn / 2,
            counters: counters.clone(),
        };
        tasks.push(tokio::spawn(device.run(ws, stop.clone())));
    }

    tokio::time::sleep(opts.warmup).await;
    let pids = server.pid.map(|p| vec![p]);
    let rss_before = server.pid.and_then(procfs::memory);
    let cpu_a = procfs::CpuSample::take(pids.as_deref());
    let (h0, p0) = (
        counters.heartbeats.load(Ordering::Relaxed),
        counters.presence.load(Ordering::Relaxed),
    );
    let window = std::time::Instant::now();
    tokio::time::sleep(opts.duration).await;
    let elapsed = window.elapsed();
    let cpu_b = procfs::CpuSample::take(pids.as_deref());
    let (h1, p1) = (
        counters.heartbeats.load(Ordering::Relaxed),
        counters.presence.load(Ordering::Relaxed),
    );
    let rss_after = server.pid.and_then(procfs::memory);
    let _ = stop_tx.send(true);
    for t in tasks {
        let _ = t.await;
    }
    let cpu = procfs::CpuPercent::between(cpu_a, cpu_b, elapsed, procfs::clock_ticks());
    let secs = elapsed.as_secs_f64();
    let mib = |kib: u64| kib as f64 / 1024.0;
    Ok(PresenceReport {
        backend: server.backend.clone(),
        devices: sessions.len(),
        heartbeat_ms: opts.heartbeat.as_millis() as u64,
        churn_s: opts.churn.as_secs_f64(),
        setup_s,
        connect_s,
        window_s: secs,
        heartbeats_per_s: (h1 - h0) as f64 / secs,
        presence_frames_per_s: (p1 - p0) as f64 / secs,
        reconnects: counters.reconnects.load(Ordering::Relaxed),
        errors: counters.errors.load(Ordering::Relaxed),
        server_cpu_pct: cpu.server,
        postgres_cpu_pct: cpu.postgres,
        other_cpu_pct: cpu.other,
        rss_before_mib: rss_before.map(|m| mib(m.rss_kib)),
        rss_after_mib: rss_after.map(|m| mib(m.rss_kib)),
        rss_peak_mib: rss_after.map(|m| mib(m.hwm_kib)),
    })
}

struct Device {
    ws_url: String,
    token: String,
    heartbeat: Duration,
    churn: Duration,
    first_beat: Instant,
    first_churn: Instant,
    counters: Arc<Counters>,
}

impl Device {
    async fn run(self, mut ws: load::Ws, mut stop: watch::Receiver<bool>) {
        let heartbeat = match serde_json::to_string(&ClientFrame::Heartbeat) {
            Ok(t) => t,
            Err(_) => return,
        };
        let mut next_beat = self.first_beat;
        let mut next_churn = (!self.churn.is_zero()).then_some(self.first_churn);
        if ws
            .send(Message::Text(heartbeat.clone().into()))
            .await
            .is_err()
        {
            self.counters.errors.fetch_add(1, Ordering::Relaxed);
        }
        loop {
            let churn_at = next_churn.unwrap_or(next_beat + Duration::from_secs(3600));
            tokio::select! {
                _ = stop.changed() => {
                    let _ = ws.close(None).await;
                    return;
                }
                () = sleep_until(next_beat) => {
                    next_beat += self.heartbeat;
                    match ws.send(Message::Text(heartbeat.clone().into())).await {
                        Ok(()) => { self.counters.heartbeats.fetch_add(1, Ordering::Relaxed); }
                        Err(_) => { self.counters.errors.fetch_add(1, Ordering::Relaxed); }
                    }
                }
                () = sleep_until(churn_at), if next_churn.is_some() => {
                    next_churn = Some(churn_at + self.churn);
                    let _ = ws.close(None).await;
                    match load::connect(&self.ws_url, &self.token).await {
                        Ok(new) => {
                            ws = new;
                            self.counters.reconnects.fetch_add(1, Ordering::Relaxed);
                            if ws.send(Message::Text(heartbeat.clone().into())).await.is_err() {
                                self.counters.errors.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        Err(e) => {
                            eprintln!("reconnect failed: {e:#}");
                            self.counters.errors.fetch_add(1, Ordering::Relaxed);
                            return;
                        }
                    }
                }
                msg = ws.next() => match msg {
                    Some(Ok(Message::Text(text))) => {
                        if let Ok(ServerFrame::Presence { .. }) = serde_json::from_str(text.as_str()) {
                            self.counters.presence.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Some(Ok(Message::Close(frame))) => {
                        if self.counters.errors.fetch_add(1, Ordering::Relaxed) < 3 {
                            eprintln!("socket closed by the server: {frame:?}");
                        }
                        return;
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        if self.counters.errors.fetch_add(1, Ordering::Relaxed) < 3 {
                            eprintln!("socket error: {e}");
                        }
                        return;
                    }
                    None => {
                        if self.counters.errors.fetch_add(1, Ordering::Relaxed) < 3 {
                            eprintln!("socket closed by the server");
                        }
                        return;
                    }
                },
            }
        }
    }
}

pub(crate) fn print(r: &PresenceReport) {
    let opt = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.1}"));
    println!(
        "backend  devices  heartbeat_ms  churn_s  heartbeats/s  presence_frames/s  reconnects  errors  server_cpu%  postgres_cpu%  other_cpu%  rss_before_MiB  rss_after_MiB  rss_peak_MiB"
    );
    println!(
        "{:<8} {:>8} {:>13} {:>8.1} {:>13.1} {:>18.1} {:>11} {:>7} {:>12} {:>14.1} {:>11.1} {:>15} {:>14} {:>13}",
        r.backend,
        r.devices,
        r.heartbeat_ms,
        r.churn_s,
        r.heartbeats_per_s,
        r.presence_frames_per_s,
        r.reconnects,
        r.errors,
        opt(r.server_cpu_pct),
        r.postgres_cpu_pct,
        r.other_cpu_pct,
        opt(r.rss_before_mib),
        opt(r.rss_after_mib),
        opt(r.rss_peak_mib),
    );
    println!(
        "setup {:.1} s, {} sockets connected in {:.1} s; window {:.1} s; CPU in % of one core",
        r.setup_s, r.devices, r.connect_s, r.window_s
    );
}
