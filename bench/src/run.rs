//! One run: connect every device, let the load go through warm-up and the measurement
//! window, drain what is in flight, stop, and sum up.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use anyhow::{Context, Result};
use futures_util::stream::{self, StreamExt, TryStreamExt};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep, sleep_until};

use crate::load::{self, Load, Plan, Role, Shared};
use crate::nodes::Nodes;
use crate::procfs::{CpuPercent, CpuSample};
use crate::report::RunReport;
use crate::setup::Pair;
use crate::stats::LatencySummary;

/// Settings shared by every run of one invocation.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    pub(crate) warmup: Duration,
    pub(crate) duration: Duration,
    pub(crate) payload_size: usize,
    pub(crate) drain_timeout: Duration,
    pub(crate) ack_batch: usize,
    pub(crate) ack_delay: Duration,
    pub(crate) max_inflight: usize,
    pub(crate) connect_concurrency: usize,
    pub(crate) clock_ticks: u64,
}

/// What one run measures.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Spec {
    Throughput { window: u32 },
    Latency { rate: f64 },
}

/// How often the server's RSS is sampled during the window.
const RSS_EVERY: Duration = Duration::from_millis(100);
/// Time between the last socket being ready and the first send.
const START_DELAY: Duration = Duration::from_millis(200);

pub(crate) async fn run(
    nodes: &Nodes,
    pairs: &[Pair],
    spec: Spec,
    opts: &Options,
    run_index: usize,
) -> Result<RunReport> {
    let n = pairs.len();
    let pids = nodes.pids();
    let mem_before = nodes.memory();
    eprintln!("run {run_index}: connecting {} sockets", 2 * n);
    let sockets: Vec<(load::Ws, load::Ws)> = stream::iter(pairs.iter().enumerate())
        .map(|(i, p)| {
            let (sender_url, recipient_url) = nodes.ws_urls(i);
            async move {
                let s = load::connect(&sender_url, &p.sender.access_token)
                    .await
                    .with_context(|| format!("connecting {}", p.sender.user_id))?;
                let r = load::connect(&recipient_url, &p.recipient.access_token)
                    .await
                    .with_context(|| format!("connecting {}", p.recipient.user_id))?;
                Ok::<_, anyhow::Error>((s, r))
            }
        })
        .buffered(opts.connect_concurrency.max(1))
        .try_collect()
        .await?;

    let base = Instant::now();
    let start = base + START_DELAY;
    let measure_start = start + opts.warmup;
    let measure_end = measure_start + opts.duration;
    let plan = Plan {
        base,
        start,
        measure_start,
        measure_end,
        payload_size: opts.payload_size,
        run_tag: format!("r{run_index}x{:06x}", rand::random::<u32>() & 0xff_ffff),
        ack_batch: opts.ack_batch,
        ack_delay: opts.ack_delay,
    };
    let load = match spec {
        Spec::Throughput { window } => Load::Window(window),
        Spec::Latency { rate } => Load::Rate {
            period: Duration::from_secs_f64(n as f64 / rate),
            max_inflight: opts.max_inflight,
        },
    };
    let sh = Arc::new(Shared::new(plan));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    for (i, (p, (s, r))) in pairs.iter().zip(sockets).enumerate() {
        // Open loop: spread the pairs' first sends evenly over one period.
        let offset = match load {
            Load::Rate { period, .. } => period.mul_f64(i as f64 / n as f64),
            Load::Window(_) => Duration::ZERO,
        };
        let role = Role::Sender {
            chat_id: p.chat_id.clone(),
            load,
            offset,
        };
        tasks.spawn(load::run_client(s, role, sh.clone(), stop_rx.clone()));
        tasks.spawn(load::run_client(
            r,
            Role::Recipient,
            sh.clone(),
            stop_rx.clone(),
        ));
    }
    drop(stop_rx);
    eprintln!(
        "run {run_index}: {spec:?}, {n} pairs: warm-up {:?}, measuring {:?}",
        opts.warmup, opts.duration
    );

    // The window: CPU at both ends, RSS all along.
    sleep_until(measure_start).await;
    let cpu0 = CpuSample::take(pids.as_deref());
    let mut rss_peak: Option<u64> = None;
    while Instant::now() < measure_end {
        if let Some(m) = nodes.memory() {
            rss_peak = Some(rss_peak.unwrap_or(0).max(m.rss_kib));
        }
        sleep(RSS_EVERY.min(measure_end.saturating_duration_since(Instant::now()))).await;
    }
    let cpu1 = CpuSample::take(pids.as_deref());
    let elapsed = Instant::now().duration_since(measure_start);
    let mem_end = nodes.memory();

    // Drain: every send answered and every acked event received, or the timeout.
    let c = &sh.counters;
    let drain_end = Instant::now() + opts.drain_timeout;
    while Instant::now() < drain_end
        && (c.inflight.load(Relaxed) > 0 || c.received.load(Relaxed) < c.acked.load(Relaxed))
    {
        sleep(Duration::from_millis(10)).await;
    }
    // Let the last acks (and the receipts they cause) go out before stopping.
    sleep(opts.ack_delay * 2).await;
    let _ = stop_tx.send(true);
    while let Some(joined) = tasks.join_next().await {
        if let Err(e) = joined {
            sh.errors
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(format!("task: {e}"))
                .and_modify(|n| *n += 1)
                .or_insert(1);
        }
    }

    let secs = opts.duration.as_secs_f64();
    let acked = c.acked.load(Relaxed);
    let delivered = c.received.load(Relaxed);
    let errors = sh.errors.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mib = |kib: u64| kib as f64 / 1024.0;
    let (mode, window, rate) = match spec {
        Spec::Throughput { window } => ("throughput", Some(window), None),
        Spec::Latency { rate } => ("latency", None, Some(rate)),
    };
    Ok(RunReport {
        backend: nodes.label(),
        mode,
        pairs: n,
        window,
        rate,
        payload_bytes: opts.payload_size,
        warmup_s: opts.warmup.as_secs_f64(),
        duration_s: secs,
        msgs_per_s: c.received_in_window.load(Relaxed) as f64 / secs,
        sent_acks_per_s: c.acked_in_window.load(Relaxed) as f64 / secs,
        e2e: LatencySummary::of(&sh.e2e.lock().unwrap_or_else(|e| e.into_inner())),
        sent_ack: LatencySummary::of(&sh.sent.lock().unwrap_or_else(|e| e.into_inner())),
        server_rss_before_mib: mem_before.map(|m| mib(m.rss_kib)),
        server_rss_mib: mem_end.map(|m| mib(m.rss_kib)),
        server_rss_sampled_peak_mib: rss_peak.map(mib),
        server_hwm_mib: mem_end.map(|m| mib(m.hwm_kib)),
        cpu_percent: CpuPercent::between(cpu0, cpu1, elapsed, opts.clock_ticks),
        cores,
        sends: c.sends.load(Relaxed),
        acked,
        delivered,
        lost: acked.saturating_sub(delivered),
        skipped: c.skipped.load(Relaxed),
        errors: errors.values().sum::<u64>() + c.duplicates.load(Relaxed),
        error_kinds: errors,
    })
}
