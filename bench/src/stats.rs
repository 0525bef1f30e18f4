//! Pure helpers: the timestamp the sender puts in each payload, and latency summaries.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Bytes at the start of every payload: send time (ns since the run's clock base) and the
/// sender's message number, both little-endian `u64`.
pub(crate) const STAMP_LEN: usize = 16;
/// Filler after the stamp (the server never looks at it).
const PAD: u8 = 0x5a;
/// The largest latency a histogram records; longer ones are clamped to it.
const MAX_LATENCY: Duration = Duration::from_secs(60);

/// A payload of `size` bytes (at least [`STAMP_LEN`]) stamped with `sent_ns` and `n`.
pub(crate) fn encode_payload(sent_ns: u64, n: u64, size: usize) -> Vec<u8> {
    let mut payload = Vec::with_capacity(size.max(STAMP_LEN));
    payload.extend_from_slice(&sent_ns.to_le_bytes());
    payload.extend_from_slice(&n.to_le_bytes());
    payload.resize(size.max(STAMP_LEN), PAD);
    payload
}

/// The `(sent_ns, n)` stamp of a payload made by [`encode_payload`].
pub(crate) fn decode_payload(payload: &[u8]) -> Option<(u64, u64)> {
    let sent = payload.get(0..8)?.try_into().ok()?;
    let n = payload.get(8..16)?.try_into().ok()?;
    Some((u64::from_le_bytes(sent), u64::from_le_bytes(n)))
}

/// A histogram of latencies in nanoseconds, 3 significant digits, up to a minute.
pub(crate) fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY.as_nanos() as u64, 3)
        .expect("constant bounds are valid")
}

/// Records `ns` in `h`, clamped to the histogram's range.
pub(crate) fn record(h: &mut Histogram<u64>, ns: u64) {
    h.saturating_record(ns.max(1));
}

/// Percentiles of one histogram, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub(crate) struct LatencySummary {
    pub(crate) count: u64,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) p999_ms: f64,
    pub(crate) max_ms: f64,
    pub(crate) mean_ms: f64,
}

impl LatencySummary {
    pub(crate) fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        let ms = |ns: u64| ns as f64 / 1e6;
        Self {
            count: h.len(),
            p50_ms: ms(h.value_at_quantile(0.50)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
            mean_ms: h.mean() / 1e6,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_stamp_round_trips_and_pads() {
        let p = encode_payload(123_456_789_012, 42, 256);
        assert_eq!(p.len(), 256);
        assert_eq!(decode_payload(&p), Some((123_456_789_012, 42)));
        assert!(p[STAMP_LEN..].iter().all(|&b| b == PAD));
        // Too small a size still carries the whole stamp.
        let p = encode_payload(u64::MAX, 7, 4);
        assert_eq!(p.len(), STAMP_LEN);
        assert_eq!(decode_payload(&p), Some((u64::MAX, 7)));
        // Foreign payloads are not mistaken for stamps.
        assert_eq!(decode_payload(b"hello"), None);
    }

    #[test]
    fn summary_reports_percentiles_in_ms() {
        let mut h = latency_histogram();
        assert_eq!(LatencySummary::of(&h), LatencySummary::default());
        // 1..=1000 µs: p50 ≈ 0.5 ms, p99 ≈ 0.99 ms, p999 ≈ 1.0 ms.
        for us in 1..=1000u64 {
            record(&mut h, us * 1000);
        }
        let s = LatencySummary::of(&h);
        assert_eq!(s.count, 1000);
        let close = |a: f64, b: f64| (a - b).abs() <= b * 0.002;
        assert!(close(s.p50_ms, 0.5), "{s:?}");
        assert!(close(s.p99_ms, 0.99), "{s:?}");
        assert!(close(s.p999_ms, 1.0), "{s:?}");
        assert!(close(s.max_ms, 1.0), "{s:?}");
        assert!(close(s.mean_ms, 0.5005), "{s:?}");
        // Out-of-range values are clamped, not lost.
        record(&mut h, 0);
        record(&mut h, u64::MAX);
        assert_eq!(h.len(), 1002);
    }
}
