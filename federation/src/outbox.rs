//! The per-destination outbox: a pure state machine (inputs in, actions out, `now` and
//! randomness passed in) that the homeserver drives from one task per destination.
//!
//! - Durable events form a FIFO (the homeserver persists the rows; it feeds them in with
//!   their row ids). At most one batch exists at a time (≤ 50 events, ≤ 1 MiB), and at
//!   most one request for it is outstanding.
//! - The batch's `txn_id` is fixed when the batch is formed (`"<first id>-<last id>"`;
//!   the homeserver prefixes its start time) and reused on every retry; receivers dedup
//!   on `(origin, txn_id)`. After a restart the rows form new batches, and receivers
//!   apply their entries idempotently (spec FO1).
//! - Outcomes: 2xx acks the batch; 403 parks the destination (until [`Input::Unpark`]);
//!   400/413/422 dead-letter the batch; anything else (401, 429, 5xx, timeouts, network
//!   errors) retries.
//! - Retries: first per request, 1 s ×2 up to 60 s with jitter ×U(0.8, 1.2), for
//!   [`OutboxConfig::request_attempts`] attempts; then per destination (the homeserver
//!   persists it, see [`Action::PersistBackoff`]), 1 min ×2 ×U(0.8, 1.4) up to 24 h. Any
//!   signed inbound request from the destination ([`Input::Inbound`]) resets it.
//! - Ephemeral events (typing, presence) are coalesced per key (the latest wins), ride in
//!   the next batch after the durable ones, are dropped when older than 30 s, and are
//!   never retried.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;

use serde::{Deserialize, Serialize};

/// Limits and timings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxConfig {
    pub max_batch_events: usize,
    pub max_batch_bytes: usize,
    pub request_backoff_base_ms: i64,
    pub request_backoff_max_ms: i64,
    /// Attempts of one batch (the first send included) before the destination itself
    /// backs off.
    pub request_attempts: u32,
    pub destination_backoff_base_ms: i64,
    pub destination_backoff_max_ms: i64,
    pub ephemeral_ttl_ms: i64,
    /// Most ephemeral keys held (the oldest is dropped beyond).
    pub max_ephemeral: usize,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        Self {
            max_batch_events: 50,
            max_batch_bytes: crate::api::send::MAX_BATCH_BYTES,
            request_backoff_base_ms: 1_000,
            request_backoff_max_ms: 60_000,
            request_attempts: 5,
            destination_backoff_base_ms: 60_000,
            destination_backoff_max_ms: 24 * 3600 * 1000,
            ephemeral_ttl_ms: 30_000,
            max_ephemeral: 256,
        }
    }
}

/// A transaction id, unique per (origin, destination).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TxnId(String);

impl TxnId {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TxnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A durable event waiting for its destination: the homeserver's row id (ascending in
/// enqueue order), its encoded size, and the event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Queued<T> {
    pub id: u64,
    pub bytes: usize,
    pub item: T,
}

/// How the request for a batch ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Status(u16),
    Timeout,
    /// Connection refused, DNS, TLS…
    Network,
}

/// The destination backoff the homeserver persists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct DestinationBackoff {
    /// Consecutive failed rounds (0: healthy).
    pub failures: u32,
    /// No request before this time (ms).
    pub retry_at_ms: Option<i64>,
}

/// What happened to the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input<T> {
    /// Durable events (already committed by the homeserver), in order. Rows read
    /// together go in one input, so an idle destination sends them as one batch (one
    /// per input would send the first alone and queue the rest behind its round trip).
    Enqueue(Vec<Queued<T>>),
    /// An ephemeral event; replaces a pending one with the same key.
    Ephemeral { key: String, item: T, bytes: usize },
    /// The request for `txn_id` ended.
    Sent { txn_id: TxnId, outcome: Outcome },
    /// A signed request from the destination arrived: it is up again.
    Inbound,
    /// The admin (or a policy change) allows sending to the destination again.
    Unpark,
    /// Time passed (a `Wait` ended).
    Tick,
}

/// Why a batch was dead-lettered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadReason {
    /// The destination answered 400, 413 or 422.
    Refused(u16),
    /// A single event larger than a whole batch may be.
    TooLarge,
}

/// What the homeserver should do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action<T> {
    /// Send `PUT /send/{txn_id}` with these events (one request at a time).
    SendBatch {
        txn_id: TxnId,
        events: Vec<T>,
        ephemeral: Vec<T>,
    },
    /// The destination committed these events: delete their rows.
    Acked { txn_id: TxnId, event_ids: Vec<u64> },
    /// Give up on these events (`items`, with their ids): delete them, log, and tell
    /// whoever waits for them.
    DeadLetter {
        txn_id: Option<TxnId>,
        event_ids: Vec<u64>,
        items: Vec<T>,
        reason: DeadReason,
    },
    /// The destination refuses us (403): stop until unparked.
    Park { status: u16 },
    /// Persist the destination backoff.
    PersistBackoff(DestinationBackoff),
    /// Nothing to do before `until_ms` (then send [`Input::Tick`]).
    Wait { until_ms: i64 },
}

#[derive(Debug, Clone)]
struct Batch<T> {
    txn_id: TxnId,
    events: Vec<Queued<T>>,
    ephemeral: Vec<T>,
    attempts: u32,
}

/// The outbox of one destination.
#[derive(Debug, Clone)]
pub struct Outbox<T> {
    config: OutboxConfig,
    queue: VecDeque<Queued<T>>,
    ephemeral: BTreeMap<String, (T, usize, i64)>,
    batch: Option<Batch<T>>,
    sending: bool,
    request_retry_at: Option<i64>,
    backoff: DestinationBackoff,
    parked: bool,
    ephemeral_seq: u64,
}

impl<T: Clone> Outbox<T> {
    pub fn new(config: OutboxConfig) -> Self {
        Self {
            config,
            queue: VecDeque::new(),
            ephemeral: BTreeMap::new(),
            batch: None,
            sending: false,
            request_retry_at: None,
            backoff: DestinationBackoff::default(),
            parked: false,
            ephemeral_seq: 0,
        }
    }

    /// Resumes after a restart: the queue in order and the persisted backoff. A batch
    /// that was in flight is formed again (under a new txn id, so its entries may reach
    /// the destination twice: receivers apply entries idempotently, FO1).
    pub fn restore(
        config: OutboxConfig,
        queue: Vec<Queued<T>>,
        backoff: DestinationBackoff,
    ) -> Self {
        let mut outbox = Self::new(config);
        outbox.queue = queue.into();
        outbox.backoff = backoff;
        outbox
    }

    /// Durable events waiting (not counting the current batch).
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    pub fn backoff(&self) -> DestinationBackoff {
        self.backoff
    }

    pub fn is_parked(&self) -> bool {
        self.parked
    }

    /// When the next request may leave (a request retry or the destination backoff);
    /// `None`: as soon as there is something to send.
    pub fn retry_at(&self) -> Option<i64> {
        self.backoff.retry_at_ms.max(self.request_retry_at)
    }

    /// Applies `input` at `now_ms`; `rand` in `[0, 1)` draws the jitter. Returns what to
    /// do, in order; the last action, if any, is `SendBatch` or `Wait`.
    pub fn step(&mut self, input: Input<T>, now_ms: i64, rand: f64) -> Vec<Action<T>> {
        let mut actions = Vec::new();
        match input {
            Input::Enqueue(events) => self.queue.extend(events),
            Input::Ephemeral { key, item, bytes } => {
                if !self.ephemeral.contains_key(&key)
                    && self.ephemeral.len() >= self.config.max_ephemeral
                    && let Some(oldest) = self
                        .ephemeral
                        .iter()
                        .min_by_key(|(_, (_, _, at))| *at)
                        .map(|(k, _)| k.clone())
                {
                    self.ephemeral.remove(&oldest);
                }
                self.ephemeral.insert(key, (item, bytes, now_ms));
            }
            Input::Sent { txn_id, outcome } => {
                self.on_sent(txn_id, outcome, now_ms, rand, &mut actions)
            }
            Input::Inbound => {
                if self.backoff != DestinationBackoff::default() {
                    self.backoff = DestinationBackoff::default();
                    actions.push(Action::PersistBackoff(self.backoff));
                }
                self.request_retry_at = None;
                if let Some(b) = &mut self.batch {
                    b.attempts = 0;
                }
            }
            Input::Unpark => self.parked = false,
            Input::Tick => {}
        }
        let ttl = self.config.ephemeral_ttl_ms;
        self.ephemeral.retain(|_, (_, _, at)| now_ms - *at <= ttl);
        self.next(now_ms, &mut actions);
        actions
    }

    fn on_sent(
        &mut self,
        txn_id: TxnId,
        outcome: Outcome,
        now_ms: i64,
        rand: f64,
        actions: &mut Vec<Action<T>>,
    ) {
        let Some(mut batch) = self.batch.take() else {
            return;
        };
        if !self.sending || batch.txn_id != txn_id {
            // A late answer to something already settled.
            self.batch = Some(batch);
            return;
        }
        self.sending = false;
        let ids = |b: &Batch<T>| b.events.iter().map(|e| e.id).collect();
        match outcome {
            Outcome::Status(200..=299) => actions.push(Action::Acked {
                event_ids: ids(&batch),
                txn_id: batch.txn_id,
            }),
            Outcome::Status(403) => {
                batch.ephemeral.clear();
                self.batch = Some(batch);
                self.parked = true;
                actions.push(Action::Park { status: 403 });
            }
            Outcome::Status(status @ (400 | 413 | 422)) => actions.push(Action::DeadLetter {
                event_ids: ids(&batch),
                items: batch.events.into_iter().map(|e| e.item).collect(),
                txn_id: Some(batch.txn_id),
                reason: DeadReason::Refused(status),
            }),
            _ => {
                // Retry; ephemeral events are dropped, not retried.
                batch.ephemeral.clear();
                if batch.events.is_empty() {
                    return;
                }
                batch.attempts += 1;
                if self.backoff.failures == 0 && batch.attempts < self.config.request_attempts {
                    self.request_retry_at =
                        Some(now_ms + request_delay_ms(&self.config, batch.attempts, rand));
                } else {
                    batch.attempts = 0;
                    self.backoff.failures = self.backoff.failures.saturating_add(1);
                    self.backoff.retry_at_ms = Some(
                        now_ms + destination_delay_ms(&self.config, self.backoff.failures, rand),
                    );
                    actions.push(Action::PersistBackoff(self.backoff));
                }
                self.batch = Some(batch);
                return;
            }
        }
        // A final answer: the destination is up.
        if self.backoff != DestinationBackoff::default() {
            self.backoff = DestinationBackoff::default();
            actions.push(Action::PersistBackoff(self.backoff));
        }
    }

    fn next(&mut self, now_ms: i64, actions: &mut Vec<Action<T>>) {
        if self.parked || self.sending {
            return;
        }
        if let Some(at) = self.backoff.retry_at_ms {
            if at > now_ms {
                actions.push(Action::Wait { until_ms: at });
                return;
            }
            self.backoff.retry_at_ms = None;
        }
        if let Some(at) = self.request_retry_at {
            if at > now_ms {
                actions.push(Action::Wait { until_ms: at });
                return;
            }
            self.request_retry_at = None;
        }
        if self.batch.is_none() {
            self.batch = self.form_batch(now_ms, actions);
        }
        if let Some(batch) = &self.batch {
            self.sending = true;
            actions.push(Action::SendBatch {
                txn_id: batch.txn_id.clone(),
                events: batch.events.iter().map(|e| e.item.clone()).collect(),
                ephemeral: batch.ephemeral.clone(),
            });
        }
    }

    fn form_batch(&mut self, now_ms: i64, actions: &mut Vec<Action<T>>) -> Option<Batch<T>> {
        let max_bytes = self.config.max_batch_bytes;
        let mut events = Vec::new();
        let mut bytes = 0usize;
        while let Some(next) = self.queue.front() {
            if events.len() >= self.config.max_batch_events {
                break;
            }
            if next.bytes > max_bytes {
                if events.is_empty() {
                    let dead = self.queue.pop_front()?;
                    actions.push(Action::DeadLetter {
                        txn_id: None,
                        event_ids: vec![dead.id],
                        items: vec![dead.item],
                        reason: DeadReason::TooLarge,
                    });
                    continue;
                }
                break;
            }
            if bytes + next.bytes > max_bytes {
                break;
            }
            bytes += next.bytes;
            events.push(self.queue.pop_front()?);
        }
        let mut ephemeral = Vec::new();
        let keys: Vec<String> = self.ephemeral.keys().cloned().collect();
        for key in keys {
            if ephemeral.len() >= self.config.max_batch_events {
                break;
            }
            let Some((_, size, _)) = self.ephemeral.get(&key) else {
                continue;
            };
            if bytes + size > max_bytes {
                continue;
            }
            bytes += size;
            if let Some((item, _, _)) = self.ephemeral.remove(&key) {
                ephemeral.push(item);
            }
        }
        let txn_id = match (events.first(), events.last()) {
            (Some(first), Some(last)) => TxnId(format!("{}-{}", first.id, last.id)),
            _ if ephemeral.is_empty() => return None,
            _ => {
                self.ephemeral_seq += 1;
                TxnId(format!("e{now_ms}.{}", self.ephemeral_seq))
            }
        };
        Some(Batch {
            txn_id,
            events,
            ephemeral,
            attempts: 0,
        })
    }
}

/// The wait before retry `attempt` (≥ 1) of a request: 1 s ×2^(attempt-1) ×U(0.8, 1.2),
/// at most 60 s.
pub fn request_delay_ms(config: &OutboxConfig, attempt: u32, rand: f64) -> i64 {
    let base = config
        .request_backoff_base_ms
        .saturating_mul(1i64 << attempt.saturating_sub(1).min(30));
    let jittered = base as f64 * (0.8 + 0.4 * rand.clamp(0.0, 1.0));
    (jittered as i64).min(config.request_backoff_max_ms)
}

/// The destination backoff after `failures` (≥ 1) failed rounds: 1 min ×2^(failures-1)
/// ×U(0.8, 1.4), at most 24 h.
pub fn destination_delay_ms(config: &OutboxConfig, failures: u32, rand: f64) -> i64 {
    let base = config
        .destination_backoff_base_ms
        .saturating_mul(1i64 << failures.saturating_sub(1).min(30));
    let jittered = base as f64 * (0.8 + 0.6 * rand.clamp(0.0, 1.0));
    (jittered as i64).min(config.destination_backoff_max_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(id: u64, bytes: usize) -> Input<u64> {
        Input::Enqueue(vec![Queued {
            id,
            bytes,
            item: id,
        }])
    }

    fn sent(txn: &str, outcome: Outcome) -> Input<u64> {
        Input::Sent {
            txn_id: TxnId::new(txn),
            outcome,
        }
    }

    #[test]
    fn batches_by_count_and_size() {
        let mut o = Outbox::new(OutboxConfig {
            max_batch_events: 3,
            max_batch_bytes: 100,
            ..Default::default()
        });
        let a = o.step(ev(1, 10), 0, 0.5);
        assert_eq!(
            a,
            vec![Action::SendBatch {
                txn_id: TxnId::new("1-1"),
                events: vec![1],
                ephemeral: vec![]
            }]
        );
        // While it is in flight, more events queue up.
        for id in 2..=6 {
            assert!(o.step(ev(id, 40), 0, 0.5).is_empty());
        }
        let a = o.step(sent("1-1", Outcome::Status(200)), 1, 0.5);
        assert_eq!(
            a[0],
            Action::Acked {
                txn_id: TxnId::new("1-1"),
                event_ids: vec![1]
            }
        );
        // 2 and 3 fit in 100 bytes, 4 does not.
        assert_eq!(
            a[1],
            Action::SendBatch {
                txn_id: TxnId::new("2-3"),
                events: vec![2, 3],
                ephemeral: vec![]
            }
        );
    }

    #[test]
    fn rows_read_together_leave_together() {
        let mut o = Outbox::new(OutboxConfig::default());
        let rows = (1..=4)
            .map(|id| Queued {
                id,
                bytes: 10,
                item: id,
            })
            .collect();
        let a = o.step(Input::Enqueue(rows), 0, 0.5);
        assert_eq!(
            a,
            vec![Action::SendBatch {
                txn_id: TxnId::new("1-4"),
                events: vec![1, 2, 3, 4],
                ephemeral: vec![]
            }]
        );
    }

    #[test]
    fn oversized_event_is_dead_lettered() {
        let mut o = Outbox::new(OutboxConfig {
            max_batch_bytes: 100,
            ..Default::default()
        });
        let a = o.step(ev(1, 101), 0, 0.5);
        assert_eq!(
            a,
            vec![Action::DeadLetter {
                txn_id: None,
                event_ids: vec![1],
                items: vec![1],
                reason: DeadReason::TooLarge
            }]
        );
    }

    #[test]
    fn outcomes() {
        let mut o = Outbox::new(OutboxConfig::default());
        o.step(ev(1, 1), 0, 0.0);
        // 500: retry the same txn after 1 s × 0.8.
        let a = o.step(sent("1-1", Outcome::Status(500)), 10, 0.0);
        assert_eq!(a, vec![Action::Wait { until_ms: 810 }]);
        let a = o.step(Input::Tick, 810, 0.0);
        assert!(matches!(&a[0], Action::SendBatch { txn_id, .. } if txn_id.as_str() == "1-1"));
        // 422: dead letter, next batch.
        o.step(ev(2, 1), 811, 0.0);
        let a = o.step(sent("1-1", Outcome::Status(422)), 812, 0.0);
        assert_eq!(
            a[0],
            Action::DeadLetter {
                txn_id: Some(TxnId::new("1-1")),
                event_ids: vec![1],
                items: vec![1],
                reason: DeadReason::Refused(422)
            }
        );
        assert!(matches!(&a[1], Action::SendBatch { txn_id, .. } if txn_id.as_str() == "2-2"));
        // 403: park; nothing is sent until unparked; then the same txn again.
        let a = o.step(sent("2-2", Outcome::Status(403)), 813, 0.0);
        assert_eq!(a, vec![Action::Park { status: 403 }]);
        assert!(o.step(ev(3, 1), 900, 0.0).is_empty());
        let a = o.step(Input::Unpark, 901, 0.0);
        assert!(matches!(&a[0], Action::SendBatch { txn_id, .. } if txn_id.as_str() == "2-2"));
        // A stale answer changes nothing.
        assert!(
            o.step(sent("1-1", Outcome::Status(200)), 902, 0.0)
                .is_empty()
        );
    }

    #[test]
    fn destination_backoff_after_quick_retries_and_reset_by_inbound() {
        let config = OutboxConfig::default();
        let mut o = Outbox::new(config.clone());
        o.step(ev(1, 1), 0, 0.0);
        let mut now = 0;
        for attempt in 1..config.request_attempts {
            let a = o.step(sent("1-1", Outcome::Timeout), now, 0.0);
            let want = now + request_delay_ms(&config, attempt, 0.0);
            assert_eq!(a, vec![Action::Wait { until_ms: want }]);
            now = want;
            o.step(Input::Tick, now, 0.0);
        }
        let a = o.step(sent("1-1", Outcome::Network), now, 0.0);
        let backoff = DestinationBackoff {
            failures: 1,
            retry_at_ms: Some(now + 48_000),
        };
        assert_eq!(
            a,
            vec![
                Action::PersistBackoff(backoff),
                Action::Wait {
                    until_ms: now + 48_000
                }
            ]
        );
        // The destination calls us: reset and send at once.
        let a = o.step(Input::Inbound, now + 1, 0.0);
        assert_eq!(a[0], Action::PersistBackoff(DestinationBackoff::default()));
        assert!(matches!(&a[1], Action::SendBatch { txn_id, .. } if txn_id.as_str() == "1-1"));
    }

    #[test]
    fn ephemeral_events_coalesce_expire_and_are_not_retried() {
        let mut o: Outbox<u64> = Outbox::new(OutboxConfig::default());
        o.step(ev(1, 1), 0, 0.0);
        for (i, v) in [10, 11, 12].into_iter().enumerate() {
            o.step(
                Input::Ephemeral {
                    key: "typing:!c:a".into(),
                    item: v,
                    bytes: 5,
                },
                i as i64,
                0.0,
            );
        }
        o.step(
            Input::Ephemeral {
                key: "presence:@u:a".into(),
                item: 20,
                bytes: 5,
            },
            3,
            0.0,
        );
        let a = o.step(sent("1-1", Outcome::Status(200)), 4, 0.0);
        assert_eq!(
            a[1],
            Action::SendBatch {
                txn_id: TxnId::new("e4.1"),
                events: vec![],
                ephemeral: vec![20, 12]
            }
        );
        // Failed: dropped, not retried.
        assert!(
            o.step(sent("e4.1", Outcome::Status(503)), 5, 0.0)
                .is_empty()
        );
        // Expired before a batch could take it.
        o.step(ev(2, 1), 6, 0.0);
        o.step(
            Input::Ephemeral {
                key: "k".into(),
                item: 30,
                bytes: 1,
            },
            7,
            0.0,
        );
        let a = o.step(sent("2-2", Outcome::Status(200)), 30_008, 0.0);
        assert_eq!(a.len(), 1, "{a:?}");
    }

    #[test]
    fn delays_are_bounded() {
        let c = OutboxConfig::default();
        assert_eq!(request_delay_ms(&c, 1, 0.0), 800);
        assert_eq!(request_delay_ms(&c, 1, 1.0), 1_200);
        assert_eq!(request_delay_ms(&c, 7, 1.0), 60_000);
        assert_eq!(request_delay_ms(&c, 1_000, 1.0), 60_000);
        assert_eq!(destination_delay_ms(&c, 1, 0.0), 48_000);
        assert_eq!(destination_delay_ms(&c, 2, 1.0), 168_000);
        assert_eq!(destination_delay_ms(&c, 100, 1.0), 24 * 3600 * 1000);
    }
}
