//! The pure decisions of push: when each device gets a notification, what is coalesced,
//! when a failed one is retried and when it is given up. The clock and the jitter are
//! passed in.

use std::collections::HashMap;

use parley_client_api::{ChatId, DeviceId};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PushTimings {
    /// At most one notification per device per this long (ms).
    pub coalesce_ms: i64,
    pub retry_base_ms: i64,
    pub retry_max_ms: i64,
    /// Attempts of one notification, the first included.
    pub max_attempts: u32,
    /// Most devices tracked at once; hints for more are dropped.
    pub max_devices: usize,
}

/// How a request to the gateway ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushOutcome {
    /// 2xx.
    Delivered,
    /// The gateway says the token is gone (404, 410, or listed as rejected): remove the
    /// pusher.
    Gone,
    /// Another 4xx (but 429): the request is refused; retrying cannot help.
    Refused,
    /// 429, 5xx, a timeout or a network error: retry later.
    Failed,
}

/// What the shell must do after [`Coalescer::finished`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum After {
    Nothing,
    /// The notification was given up after its attempts (logged).
    GaveUp,
    /// Remove the device's pusher.
    RemovePusher,
}

#[derive(Debug, Clone)]
struct Device {
    /// The chat of the latest event not yet notified.
    pending: Option<ChatId>,
    in_flight: Option<ChatId>,
    /// No request before this time (ms).
    next_at: i64,
    /// Failed attempts of the current notification.
    failures: u32,
}

/// Per-device notification state.
#[derive(Debug, Clone)]
pub struct Coalescer {
    timings: PushTimings,
    devices: HashMap<DeviceId, Device>,
}

impl Coalescer {
    pub fn new(timings: PushTimings) -> Self {
        Self {
            timings,
            devices: HashMap::new(),
        }
    }

    /// An event of `chat` landed in the inbox of `device`, which has no socket and a
    /// pusher. False if it was dropped (too many devices tracked).
    pub fn hint(&mut self, device: &DeviceId, chat: &ChatId) -> bool {
        if !self.devices.contains_key(device) && self.devices.len() >= self.timings.max_devices {
            return false;
        }
        let d = self.devices.entry(device.clone()).or_insert(Device {
            pending: None,
            in_flight: None,
            next_at: i64::MIN,
            failures: 0,
        });
        d.pending = Some(chat.clone());
        true
    }

    /// Whether the device is tracked (its pusher is known).
    pub fn tracks(&self, device: &DeviceId) -> bool {
        self.devices.contains_key(device)
    }

    /// Notifications to send now: one per device with something pending, nothing in
    /// flight, and its coalescing or retry delay over; at most `limit`.
    pub fn due(&mut self, now: i64, limit: usize) -> Vec<(DeviceId, ChatId)> {
        let mut out = Vec::new();
        for (id, d) in self.devices.iter_mut() {
            if out.len() >= limit {
                break;
            }
            if d.in_flight.is_none()
                && d.next_at <= now
                && let Some(chat) = d.pending.take()
            {
                d.in_flight = Some(chat.clone());
                out.push((id.clone(), chat));
            }
        }
        out
    }

    /// The request for `device` ended.
    pub fn finished(
        &mut self,
        device: &DeviceId,
        outcome: PushOutcome,
        now: i64,
        rand: f64,
    ) -> After {
        let t = self.timings;
        let Some(d) = self.devices.get_mut(device) else {
            return After::Nothing;
        };
        let chat = d.in_flight.take();
        match outcome {
            PushOutcome::Delivered => {
                d.failures = 0;
                d.next_at = now + t.coalesce_ms;
                After::Nothing
            }
            PushOutcome::Gone => {
                self.devices.remove(device);
                After::RemovePusher
            }
            PushOutcome::Refused => {
                d.failures = 0;
                d.next_at = now + t.coalesce_ms;
                After::GaveUp
            }
            PushOutcome::Failed => {
                d.failures += 1;
                if d.failures >= t.max_attempts {
                    d.failures = 0;
                    d.next_at = now + t.coalesce_ms;
                    return After::GaveUp;
                }
                // Retry: the newest pending chat, else the one that failed.
                if d.pending.is_none() {
                    d.pending = chat;
                }
                d.next_at = now + retry_delay_ms(&t, d.failures, rand);
                After::Nothing
            }
        }
    }

    /// When [`Coalescer::due`] next has something (ms), if ever.
    pub fn next_due(&self) -> Option<i64> {
        self.devices
            .values()
            .filter(|d| d.in_flight.is_none() && d.pending.is_some())
            .map(|d| d.next_at)
            .min()
    }

    /// Forgets devices with nothing pending or in flight whose delay is over.
    pub fn gc(&mut self, now: i64) {
        self.devices
            .retain(|_, d| d.pending.is_some() || d.in_flight.is_some() || d.next_at > now);
    }

    /// Forgets a device (its pusher was removed).
    pub fn forget(&mut self, device: &DeviceId) {
        self.devices.remove(device);
    }
}

/// Retry `n` (≥ 1) waits base ×2^(n-1) ×U(0.8, 1.2), at most the maximum.
pub fn retry_delay_ms(t: &PushTimings, n: u32, rand: f64) -> i64 {
    let base = t
        .retry_base_ms
        .saturating_mul(1i64 << n.saturating_sub(1).min(30));
    ((base as f64 * (0.8 + 0.4 * rand.clamp(0.0, 1.0))) as i64).min(t.retry_max_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t() -> PushTimings {
        PushTimings {
            coalesce_ms: 5_000,
            retry_base_ms: 1_000,
            retry_max_ms: 8_000,
            max_attempts: 3,
            max_devices: 2,
        }
    }
    fn d(s: &str) -> DeviceId {
        DeviceId::try_from(s).unwrap()
    }
    fn c(s: &str) -> ChatId {
        ChatId::try_from(format!("!{s}:x.org").as_str()).unwrap()
    }

    #[test]
    fn coalesces_to_one_per_window() {
        let mut p = Coalescer::new(t());
        assert!(p.hint(&d("A"), &c("one")));
        assert_eq!(p.due(0, 10), vec![(d("A"), c("one"))]);
        // While in flight and during the window, hints only accumulate (latest chat).
        p.hint(&d("A"), &c("one"));
        p.hint(&d("A"), &c("two"));
        assert!(p.due(100, 10).is_empty());
        assert_eq!(
            p.finished(&d("A"), PushOutcome::Delivered, 200, 0.5),
            After::Nothing
        );
        assert!(p.due(5_100, 10).is_empty());
        assert_eq!(p.next_due(), Some(5_200));
        assert_eq!(p.due(5_200, 10), vec![(d("A"), c("two"))]);
        p.finished(&d("A"), PushOutcome::Delivered, 5_300, 0.5);
        p.gc(10_300);
        assert!(!p.tracks(&d("A")));
    }

    #[test]
    fn retries_with_backoff_then_gives_up() {
        let mut p = Coalescer::new(t());
        p.hint(&d("A"), &c("one"));
        p.due(0, 10);
        assert_eq!(
            p.finished(&d("A"), PushOutcome::Failed, 0, 0.5),
            After::Nothing
        );
        assert!(p.due(999, 10).is_empty());
        assert_eq!(
            p.due(1_000, 10),
            vec![(d("A"), c("one"))],
            "retried after 1 s"
        );
        p.finished(&d("A"), PushOutcome::Failed, 1_000, 0.5);
        assert!(p.due(2_999, 10).is_empty());
        assert_eq!(p.due(3_000, 10).len(), 1, "then after 2 s");
        assert_eq!(
            p.finished(&d("A"), PushOutcome::Failed, 3_000, 0.5),
            After::GaveUp
        );
        assert!(
            p.due(100_000, 10).is_empty(),
            "bounded: nothing pending after giving up"
        );
    }

    #[test]
    fn gone_removes_and_bounds_hold() {
        let mut p = Coalescer::new(t());
        p.hint(&d("A"), &c("one"));
        p.hint(&d("B"), &c("one"));
        assert!(!p.hint(&d("C"), &c("one")), "at most two devices");
        p.due(0, 10);
        assert_eq!(
            p.finished(&d("A"), PushOutcome::Gone, 0, 0.5),
            After::RemovePusher
        );
        assert!(!p.tracks(&d("A")));
        assert_eq!(retry_delay_ms(&t(), 10, 1.0), 8_000);
    }
}
