//! One run's figures, as a table row or one JSON object.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::procfs::CpuPercent;
use crate::stats::LatencySummary;

#[derive(Debug, Clone, Serialize)]
pub(crate) struct RunReport {
    pub(crate) backend: String,
    /// `throughput` (closed loop) or `latency` (open loop at a fixed rate).
    pub(crate) mode: &'static str,
    pub(crate) pairs: usize,
    /// Closed loop: sends in flight per sender.
    pub(crate) window: Option<u32>,
    /// Open loop: offered messages/s, all pairs together.
    pub(crate) rate: Option<f64>,
    pub(crate) payload_bytes: usize,
    pub(crate) warmup_s: f64,
    pub(crate) duration_s: f64,
    /// Events that reached recipients' sockets in the window, per second.
    pub(crate) msgs_per_s: f64,
    /// `sent` acks received in the window, per second.
    pub(crate) sent_acks_per_s: f64,
    /// send → recipient socket, for sends in the window.
    pub(crate) e2e: LatencySummary,
    /// send → `sent` ack (✓ sent), for sends in the window.
    pub(crate) sent_ack: LatencySummary,
    /// Server VmRSS before this run's sockets connected.
    pub(crate) server_rss_before_mib: Option<f64>,
    /// Server VmRSS at the end of the window, peak VmRSS sampled during the window (every
    /// 100 ms), and VmHWM (the kernel's peak since the server started).
    pub(crate) server_rss_mib: Option<f64>,
    pub(crate) server_rss_sampled_peak_mib: Option<f64>,
    pub(crate) server_hwm_mib: Option<f64>,
    /// CPU in the window, % of one core (the machine has `cores` × 100).
    pub(crate) cpu_percent: CpuPercent,
    pub(crate) cores: usize,
    pub(crate) sends: u64,
    pub(crate) acked: u64,
    pub(crate) delivered: u64,
    /// Acked by the server but not received by the recipient by the end of the drain.
    pub(crate) lost: u64,
    /// Open loop: sends skipped because the sender had too many in flight.
    pub(crate) skipped: u64,
    pub(crate) errors: u64,
    pub(crate) error_kinds: BTreeMap<String, u64>,
}

const HEADER: [&str; 12] = [
    "backend",
    "pairs",
    "load",
    "msgs/s",
    "e2e p50",
    "e2e p99",
    "e2e p999",
    "sent p50",
    "sent p99",
    "RSS MiB pre/end/peak",
    "CPU% srv/pg/bench/irq/other",
    "errors",
];

impl RunReport {
    fn cells(&self) -> [String; 12] {
        let load = match (self.window, self.rate) {
            (Some(w), _) => format!("W={w}"),
            (_, Some(r)) => format!("{r:.0}/s"),
            _ => "?".into(),
        };
        let mib = |m: Option<f64>| m.map_or("?".into(), |m| format!("{m:.0}"));
        let cpu = format!(
            "{}/{:.0}/{:.0}/{:.0}/{:.0}",
            self.cpu_percent
                .server
                .map_or("?".into(), |s| format!("{s:.0}")),
            self.cpu_percent.postgres,
            self.cpu_percent.bench,
            self.cpu_percent.irq,
            self.cpu_percent.other
        );
        [
            self.backend.clone(),
            self.pairs.to_string(),
            load,
            format!("{:.0}", self.msgs_per_s),
            ms(self.e2e.p50_ms),
            ms(self.e2e.p99_ms),
            ms(self.e2e.p999_ms),
            ms(self.sent_ack.p50_ms),
            ms(self.sent_ack.p99_ms),
            format!(
                "{}/{}/{}",
                mib(self.server_rss_before_mib),
                mib(self.server_rss_mib),
                mib(self.server_hwm_mib)
            ),
            cpu,
            (self.errors + self.lost + self.skipped).to_string(),
        ]
    }
}

fn ms(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0} ms")
    } else if v >= 10.0 {
        format!("{v:.1} ms")
    } else {
        format!("{v:.2} ms")
    }
}

const WIDTHS: [usize; 12] = [8, 5, 7, 8, 9, 9, 9, 9, 9, 20, 27, 6];

/// The table's header line.
pub(crate) fn header() -> String {
    row(&HEADER.map(String::from))
}

/// One run as a table line.
pub(crate) fn table_row(r: &RunReport) -> String {
    row(&r.cells())
}

fn row(cells: &[String; 12]) -> String {
    let mut out = String::new();
    for (i, (cell, w)) in cells.iter().zip(WIDTHS).enumerate() {
        if i > 0 {
            out.push_str("  ");
        }
        if i < 3 {
            out.push_str(&format!("{cell:<w$}"));
        } else {
            out.push_str(&format!("{cell:>w$}"));
        }
    }
    out.trim_end().to_owned()
}
