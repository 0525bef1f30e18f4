//! Prometheus metrics, served at `/metrics` in the text exposition format.
//!
//! One [`Metrics`] per process, created in `run` and passed to the services that count
//! (no global registry). Gauges that are cheap to read from the store (inbox depth, the
//! federation outbox per destination) are read at scrape time.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

use parley_federation::transport::libp2p::Libp2pStats;

pub struct Metrics {
    registry: Registry,
    /// Device sockets open now.
    pub sockets: Gauge,
    /// Events committed by the sequencer.
    pub events_committed: Counter,
    /// Sends refused by the hub (not a member, wrong epoch, …).
    pub sends_refused: Counter,
    /// Send batches committed.
    pub send_batches: Counter,
    /// Time to commit one batch of sends, in seconds.
    pub commit_seconds: Histogram,
    /// Inbox items acknowledged by devices.
    pub acks: Counter,
    /// Inbox items waiting for their devices (set at scrape time).
    pub inbox_depth: Gauge,
    /// Federation requests refused before any handler ran, by the protocol error code
    /// (`missing_signature`, `federation_denied`, `too_large`, …).
    federation_rejected: Family<ReasonLabel, Counter>,
    /// Federation requests carried over libp2p, by direction (synced from the
    /// transport's own counters at scrape time).
    libp2p_requests: Family<DirectionLabel, Counter>,
    libp2p: std::sync::OnceLock<std::sync::Arc<Libp2pStats>>,
    render_lock: std::sync::Mutex<()>,
    /// Media blobs fetched from other servers, by result (`stored`, `hash_mismatch`,
    /// `failed`).
    media_fetches: Family<ResultLabel, Counter>,
    /// Media blobs served to other servers.
    pub media_served_to_peers: Counter,
    /// Per destination server (at most [`MAX_DESTINATION_LABELS`]): outbox rows queued,
    /// seconds until the next attempt, consecutive failures, parked (1) or not (0).
    outbox_depth: Family<DestinationLabel, Gauge>,
    outbox_backoff: Family<DestinationLabel, Gauge<f64, AtomicU64>>,
    outbox_failures: Family<DestinationLabel, Gauge>,
    outbox_parked: Family<DestinationLabel, Gauge>,
}

/// The per-destination outbox gauges carry at most this many `destination` labels: the
/// destinations with the deepest queues (then the most failures) first; the others are
/// folded into one `destination="_other"` series (depth and failures summed, backoff
/// the longest, parked if any is). Destinations are the peers users chat with — under
/// `allowlist` the admin's list — so the cap only matters on open servers.
pub const MAX_DESTINATION_LABELS: usize = 50;

/// The label of the series that folds the destinations past the cap (no server name
/// starts with `_`).
pub const OTHER_DESTINATIONS: &str = "_other";

/// The `destination` label: a peer server's name.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DestinationLabel {
    destination: String,
}

/// One destination's outbox, as stored.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OutboxGauge {
    pub destination: String,
    /// Rows queued.
    pub depth: i64,
    /// Failed requests in a row, as the node driving the destination counts them
    /// (elsewhere: the persisted count of failed rounds).
    pub failures: u32,
    /// Seconds until the next attempt (0: not backing off).
    pub backoff_seconds: f64,
    pub parked: bool,
}

/// The gauges to show: every destination with rows, failures or a park, capped at `cap`
/// labels (see [`MAX_DESTINATION_LABELS`]). `backoff`: `(destination, failures,
/// retry_at, parked)`; `now` in ms.
pub fn outbox_gauges(
    depths: &[(String, i64)],
    backoff: &[(String, u32, Option<i64>, bool)],
    now: i64,
    cap: usize,
) -> Vec<OutboxGauge> {
    let mut all: std::collections::BTreeMap<&str, OutboxGauge> = Default::default();
    for (d, depth) in depths {
        all.entry(d).or_default().depth = *depth;
    }
    for (d, failures, retry_at, parked) in backoff {
        if *failures == 0 && !*parked {
            continue;
        }
        let g = all.entry(d).or_default();
        g.failures = *failures;
        g.parked = *parked;
        g.backoff_seconds = retry_at.map_or(0.0, |at| (at - now).max(0) as f64 / 1000.0);
    }
    let mut list: Vec<OutboxGauge> = all
        .into_iter()
        .map(|(d, g)| OutboxGauge {
            destination: d.to_owned(),
            ..g
        })
        .collect();
    if list.len() <= cap {
        return list;
    }
    list.sort_by(|a, b| {
        (b.depth, b.failures)
            .cmp(&(a.depth, a.failures))
            .then_with(|| a.destination.cmp(&b.destination))
    });
    let rest = list.split_off(cap.saturating_sub(1));
    let other = rest.into_iter().fold(
        OutboxGauge {
            destination: OTHER_DESTINATIONS.to_owned(),
            ..Default::default()
        },
        |mut o, g| {
            o.depth += g.depth;
            o.failures = o.failures.saturating_add(g.failures);
            o.backoff_seconds = o.backoff_seconds.max(g.backoff_seconds);
            o.parked |= g.parked;
            o
        },
    );
    list.push(other);
    list
}

/// The `direction` label: `inbound` (served) or `outbound` (sent and answered).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabel {
    direction: &'static str,
}

/// The `result` label of an operation.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

/// The `reason` label: a stable, machine-readable error code.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("parley");
        let sockets = Gauge::default();
        let events_committed = Counter::default();
        let sends_refused = Counter::default();
        let send_batches = Counter::default();
        // 100 µs … ~3.3 s
        let commit_seconds = Histogram::new(exponential_buckets(0.0001, 2.0, 16));
        let acks = Counter::default();
        let inbox_depth = Gauge::default();
        let federation_rejected = Family::<ReasonLabel, Counter>::default();
        let libp2p_requests = Family::<DirectionLabel, Counter>::default();
        let media_fetches = Family::<ResultLabel, Counter>::default();
        let media_served_to_peers = Counter::default();
        let outbox_depth = Family::<DestinationLabel, Gauge>::default();
        let outbox_backoff = Family::<DestinationLabel, Gauge<f64, AtomicU64>>::default();
        let outbox_failures = Family::<DestinationLabel, Gauge>::default();
        let outbox_parked = Family::<DestinationLabel, Gauge>::default();
        registry.register(
            "federation_outbox_depth",
            "Federation outbox rows queued per destination server",
            outbox_depth.clone(),
        );
        registry.register(
            "federation_outbox_backoff_seconds",
            "Seconds until the next attempt to a destination server (0: not backing off)",
            outbox_backoff.clone(),
        );
        registry.register(
            "federation_outbox_failures",
            "Failed requests in a row to a destination server (on a node not driving it: persisted failed rounds)",
            outbox_failures.clone(),
        );
        registry.register(
            "federation_outbox_parked",
            "1 while a destination server refuses us (403) and its outbox is parked",
            outbox_parked.clone(),
        );
        registry.register(
            "connected_sockets",
            "Device sockets open now",
            sockets.clone(),
        );
        registry.register(
            "events_committed",
            "Chat events committed by the sequencer",
            events_committed.clone(),
        );
        registry.register(
            "sends_refused",
            "Sends refused by the hub (not a member, wrong epoch, duplicate excluded)",
            sends_refused.clone(),
        );
        registry.register(
            "send_batches",
            "Send batches committed",
            send_batches.clone(),
        );
        registry.register(
            "commit_seconds",
            "Time to commit one batch of sends",
            commit_seconds.clone(),
        );
        registry.register(
            "inbox_acks",
            "Inbox items acknowledged by devices",
            acks.clone(),
        );
        registry.register(
            "inbox_depth",
            "Inbox items waiting for their devices",
            inbox_depth.clone(),
        );
        registry.register(
            "federation_requests_rejected",
            "Federation requests refused by the verifier or the body limit, by error code",
            federation_rejected.clone(),
        );
        registry.register(
            "federation_libp2p_requests",
            "Federation requests carried over libp2p, by direction",
            libp2p_requests.clone(),
        );
        registry.register(
            "media_federation_fetches",
            "Media blobs fetched from other servers, by result (stored, hash_mismatch, failed)",
            media_fetches.clone(),
        );
        registry.register(
            "media_served_to_peers",
            "Media blobs served to other servers",
            media_served_to_peers.clone(),
        );
        Self {
            registry,
            sockets,
            events_committed,
            sends_refused,
            send_batches,
            commit_seconds,
            acks,
            inbox_depth,
            federation_rejected,
            libp2p_requests,
            libp2p: std::sync::OnceLock::new(),
            render_lock: std::sync::Mutex::new(()),
            media_fetches,
            media_served_to_peers,
            outbox_depth,
            outbox_backoff,
            outbox_failures,
            outbox_parked,
        }
    }

    /// Replaces the per-destination outbox gauges (series of destinations no longer
    /// listed disappear).
    pub fn set_outbox(&self, gauges: &[OutboxGauge]) {
        let _one_at_a_time = self.render_lock.lock().unwrap_or_else(|p| p.into_inner());
        self.outbox_depth.clear();
        self.outbox_backoff.clear();
        self.outbox_failures.clear();
        self.outbox_parked.clear();
        for g in gauges {
            let label = DestinationLabel {
                destination: g.destination.clone(),
            };
            self.outbox_depth.get_or_create(&label).set(g.depth);
            self.outbox_backoff
                .get_or_create(&label)
                .set(g.backoff_seconds);
            self.outbox_failures
                .get_or_create(&label)
                .set(i64::from(g.failures));
            self.outbox_parked
                .get_or_create(&label)
                .set(i64::from(g.parked));
        }
    }

    /// Reports the libp2p transport's request counts from now on.
    pub fn attach_libp2p(&self, stats: std::sync::Arc<Libp2pStats>) {
        let _ = self.libp2p.set(stats);
    }

    /// Counts one fetch of a blob from another server under its result.
    pub fn media_fetch(&self, result: &'static str) {
        self.media_fetches
            .get_or_create(&ResultLabel { result })
            .inc();
    }

    /// Counts one refused federation request under its error code.
    pub fn federation_rejected(&self, reason: &'static str) {
        self.federation_rejected
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let _one_at_a_time = self.render_lock.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(stats) = self.libp2p.get() {
            use std::sync::atomic::Ordering::Relaxed;
            for (direction, value) in [
                ("inbound", stats.inbound.load(Relaxed)),
                ("outbound", stats.outbound.load(Relaxed)),
            ] {
                let counter = self
                    .libp2p_requests
                    .get_or_create(&DirectionLabel { direction });
                counter.inc_by(value.saturating_sub(counter.get()));
            }
        }
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn renders_counters() {
        let m = super::Metrics::new();
        m.events_committed.inc_by(3);
        m.commit_seconds.observe(0.002);
        m.federation_rejected("federation_denied");
        m.federation_rejected("federation_denied");
        let text = m.render();
        assert!(text.contains("parley_events_committed_total 3"), "{text}");
        assert!(text.contains("parley_commit_seconds_count 1"), "{text}");
        assert!(
            text.contains(
                "parley_federation_requests_rejected_total{reason=\"federation_denied\"} 2"
            ),
            "{text}"
        );
    }

    #[test]
    fn outbox_gauges_are_capped() {
        use super::{OTHER_DESTINATIONS, outbox_gauges};
        let depths = vec![
            ("a.org".to_owned(), 5),
            ("b.org".to_owned(), 1),
            ("c.org".to_owned(), 9),
        ];
        let backoff = vec![
            ("b.org".to_owned(), 3, Some(12_500), false),
            ("d.org".to_owned(), 0, None, false), // healthy, empty: not shown
            ("e.org".to_owned(), 0, None, true),
        ];
        let all = outbox_gauges(&depths, &backoff, 10_000, 10);
        let names: Vec<_> = all.iter().map(|g| g.destination.as_str()).collect();
        assert_eq!(names, ["a.org", "b.org", "c.org", "e.org"]);
        assert_eq!((all[1].failures, all[1].backoff_seconds), (3, 2.5));
        assert!(all[3].parked);

        // Capped at 2 labels: the deepest, then the rest folded.
        let capped = outbox_gauges(&depths, &backoff, 10_000, 2);
        assert_eq!(capped.len(), 2);
        assert_eq!(
            (capped[0].destination.as_str(), capped[0].depth),
            ("c.org", 9)
        );
        let other = &capped[1];
        assert_eq!(other.destination, OTHER_DESTINATIONS);
        assert_eq!((other.depth, other.failures, other.parked), (6, 3, true));
        assert_eq!(other.backoff_seconds, 2.5);

        let m = super::Metrics::new();
        m.set_outbox(&all);
        let text = m.render();
        assert!(
            text.contains("parley_federation_outbox_depth{destination=\"c.org\"} 9"),
            "{text}"
        );
        assert!(
            text.contains("parley_federation_outbox_backoff_seconds{destination=\"b.org\"} 2.5"),
            "{text}"
        );
        m.set_outbox(&capped);
        assert!(!m.render().contains("a.org"), "stale series removed");
    }
}
