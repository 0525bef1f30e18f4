//! Prometheus metrics, served at `/metrics` in the text exposition format.
//!
//! One [`Metrics`] per process, created in `run` and passed to the services that count
//! (no global registry). Gauges that are cheap to read from the store (inbox depth) are
//! read at scrape time.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

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
}
