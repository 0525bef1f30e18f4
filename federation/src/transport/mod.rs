//! Thin I/O shells around the pure cores. [`http`] is the HTTP transport (reqwest to
//! send, axum to receive); [`libp2p`] carries the same signed request bytes over
//! libp2p streams and hands them to the same axum router.

pub mod http;
pub mod libp2p;

/// Milliseconds since the Unix epoch from the system clock. Shells read the clock here
/// and pass it into the pure cores.
pub fn system_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
