//! Outbox properties: FIFO order, one batch in flight, txn id reuse, bounded backoff.

use parley_federation::outbox::{
    Action, DestinationBackoff, Input, Outbox, OutboxConfig, Outcome, Queued, TxnId,
    destination_delay_ms, request_delay_ms,
};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Enqueue(usize),
    Ephemeral(u8),
    Respond(Outcome),
    Advance(i64),
    Inbound,
    Unpark,
}

fn outcome() -> impl Strategy<Value = Outcome> {
    prop_oneof![
        4 => Just(Outcome::Status(200)),
        1 => Just(Outcome::Status(403)),
        1 => prop::sample::select(vec![400u16, 413, 422]).prop_map(Outcome::Status),
        3 => prop::sample::select(vec![401u16, 429, 500, 502, 503]).prop_map(Outcome::Status),
        1 => Just(Outcome::Timeout),
        1 => Just(Outcome::Network),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => prop_oneof![1usize..2_000, 100_000usize..400_000].prop_map(Op::Enqueue),
        1 => (0u8..3).prop_map(Op::Ephemeral),
        4 => outcome().prop_map(Op::Respond),
        2 => (0i64..200_000_000).prop_map(Op::Advance),
        1 => Just(Op::Inbound),
        1 => Just(Op::Unpark),
    ]
}

const MAX_BYTES: usize = 1024 * 1024;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn outbox_invariants(ops in prop::collection::vec(op(), 1..200), rands in prop::collection::vec(0.0f64..1.0, 200)) {
        let config = OutboxConfig::default();
        let mut outbox: Outbox<(u64, usize)> = Outbox::new(config.clone());
        let mut now = 1_000_000i64;
        let mut next_id = 1u64;
        let mut enqueued: Vec<u64> = Vec::new();
        let mut finished: Vec<u64> = Vec::new();
        let mut outstanding: Option<(TxnId, Vec<u64>)> = None;
        let mut must_resend: Option<(TxnId, Vec<u64>)> = None;

        for (i, op) in ops.into_iter().enumerate() {
            let rand = rands[i % rands.len()];
            let input = match op {
                Op::Enqueue(bytes) => {
                    let id = next_id;
                    next_id += 1;
                    enqueued.push(id);
                    Input::Enqueue(vec![Queued { id, bytes, item: (id, bytes) }])
                }
                Op::Ephemeral(k) => Input::Ephemeral { key: format!("k{k}"), item: (0, 10), bytes: 10 },
                Op::Respond(outcome) => match outstanding.take() {
                    Some((txn_id, ids)) => {
                        let retryable = !matches!(outcome, Outcome::Status(200..=299 | 400 | 413 | 422));
                        if retryable && !ids.is_empty() {
                            must_resend = Some((txn_id.clone(), ids));
                        }
                        Input::Sent { txn_id, outcome }
                    }
                    None => Input::Tick,
                },
                Op::Advance(ms) => {
                    now += ms;
                    Input::Tick
                }
                Op::Inbound => Input::Inbound,
                Op::Unpark => Input::Unpark,
            };
            for action in outbox.step(input, now, rand) {
                match action {
                    Action::SendBatch { txn_id, events, .. } => {
                        prop_assert!(outstanding.is_none(), "two batches in flight");
                        let ids: Vec<u64> = events.iter().map(|e| e.0).collect();
                        prop_assert!(ids.len() <= config.max_batch_events);
                        prop_assert!(events.iter().map(|e| e.1).sum::<usize>() <= MAX_BYTES);
                        // FIFO: the batch continues exactly where the finished ones end.
                        let start = finished.len();
                        prop_assert_eq!(&ids[..], &enqueued[start..start + ids.len()]);
                        if let Some((t, resend)) = must_resend.take() {
                            prop_assert_eq!(&txn_id, &t, "txn id reused on retry");
                            prop_assert_eq!(&ids, &resend);
                        }
                        outstanding = Some((txn_id, ids));
                    }
                    Action::Acked { event_ids, .. } | Action::DeadLetter { event_ids, .. } => {
                        finished.extend(event_ids);
                        prop_assert_eq!(&finished[..], &enqueued[..finished.len()]);
                    }
                    Action::Wait { until_ms } => {
                        prop_assert!(until_ms > now);
                        prop_assert!(until_ms - now <= 24 * 3600 * 1000);
                    }
                    Action::Park { .. } | Action::PersistBackoff(_) => {}
                }
            }
        }
    }

    #[test]
    fn backoff_bounds(n in 1u32..200, r in 0.0f64..1.0) {
        let c = OutboxConfig::default();
        let d = request_delay_ms(&c, n, r);
        prop_assert!((800..=60_000).contains(&d), "{}", d);
        let expected = 1_000f64 * 2f64.powi(n.min(40) as i32 - 1);
        prop_assert!(d as f64 >= (expected * 0.8).min(60_000.0) - 1.0);
        prop_assert!(d as f64 <= expected * 1.2 + 1.0);
        let d = destination_delay_ms(&c, n, r);
        prop_assert!((48_000..=24 * 3600 * 1000).contains(&d), "{}", d);
        let expected = 60_000f64 * 2f64.powi(n.min(40) as i32 - 1);
        prop_assert!(d as f64 >= (expected * 0.8).min(86_400_000.0) - 1.0);
        prop_assert!(d as f64 <= expected * 1.4 + 1.0);
    }
}

/// A restart sends the queue in order, once the persisted backoff has passed.
#[test]
fn restore_resumes_the_queue_after_its_backoff() {
    let queued = |id| Queued {
        id,
        bytes: 1,
        item: id,
    };
    let backoff = DestinationBackoff {
        failures: 1,
        retry_at_ms: Some(5_000),
    };
    let mut outbox = Outbox::restore(
        OutboxConfig::default(),
        vec![queued(4), queued(5), queued(6)],
        backoff,
    );
    assert_eq!(
        outbox.step(Input::Tick, 0, 0.5),
        vec![Action::Wait { until_ms: 5_000 }]
    );
    assert_eq!(
        outbox.step(Input::Tick, 5_000, 0.5),
        vec![Action::SendBatch {
            txn_id: TxnId::new("4-6"),
            events: vec![4, 5, 6],
            ephemeral: vec![]
        }]
    );
}
