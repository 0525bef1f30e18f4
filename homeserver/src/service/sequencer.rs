//! The hub's sequencer: the only place a chat's `seq` is assigned.
//!
//! Sends go to one of N writer tasks, chosen by the chat id, so one chat's sends are
//! always ordered by the same writer. A writer takes everything waiting (up to
//! `max_batch`), commits it in one transaction, and only then answers each sender and
//! hands the events to the socket registry. Many events per commit is how the server
//! gets past the per-commit cost without acknowledging anything early.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use parley_client_api::Payload;
use parley_client_api::http::chats::ChatEvent;
use tokio::sync::{mpsc, oneshot};

use super::ServiceError;
use crate::gateway::{Gateway, Outbound};
use crate::metrics::Metrics;
use crate::store::{AnyStore, SendOutcome, SendRequest, Store};

struct Job {
    req: SendRequest,
    reply: oneshot::Sender<Result<SendOutcome, ServiceError>>,
}

/// A handle to the writer tasks.
#[derive(Clone)]
pub struct Sequencer {
    shards: Arc<[mpsc::Sender<Job>]>,
}

impl Sequencer {
    pub fn spawn(
        store: AnyStore,
        gateway: Gateway,
        writers: usize,
        max_batch: usize,
        max_members: usize,
        metrics: Arc<Metrics>,
    ) -> Self {
        let shards: Vec<_> = (0..writers.max(1))
            .map(|_| {
                let (tx, rx) = mpsc::channel(max_batch * 4);
                tokio::spawn(run_writer(
                    store.clone(),
                    gateway.clone(),
                    rx,
                    max_batch,
                    max_members,
                    metrics.clone(),
                ));
                tx
            })
            .collect();
        Self {
            shards: shards.into(),
        }
    }

    /// Commits one send; resolves after its transaction committed.
    pub async fn submit(&self, req: SendRequest) -> Result<SendOutcome, ServiceError> {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        req.chat_id.hash(&mut h);
        let shard = &self.shards[(h.finish() % self.shards.len() as u64) as usize];
        let (reply, wait) = oneshot::channel();
        shard
            .send(Job { req, reply })
            .await
            .map_err(|_| ServiceError::Unavailable)?;
        wait.await.map_err(|_| ServiceError::Unavailable)?
    }
}

async fn run_writer(
    store: AnyStore,
    gateway: Gateway,
    mut rx: mpsc::Receiver<Job>,
    max_batch: usize,
    max_members: usize,
    metrics: Arc<Metrics>,
) {
    let mut jobs: Vec<Job> = Vec::with_capacity(max_batch);
    while rx.recv_many(&mut jobs, max_batch).await > 0 {
        let reqs: Vec<SendRequest> = jobs.iter().map(|j| j.req.clone()).collect();
        let started = std::time::Instant::now();
        match store.commit_sends(&reqs, max_members).await {
            Ok(outcomes) => {
                metrics
                    .commit_seconds
                    .observe(started.elapsed().as_secs_f64());
                metrics.send_batches.inc();
                for outcome in &outcomes {
                    match outcome {
                        SendOutcome::Committed { .. } => metrics.events_committed.inc(),
                        SendOutcome::Duplicate { .. } => 0,
                        _ => metrics.sends_refused.inc(),
                    };
                }
                let mut deliveries = Vec::new();
                for (req, outcome) in reqs.into_iter().zip(&outcomes) {
                    if let SendOutcome::Committed {
                        seq,
                        ts,
                        recipients,
                        ..
                    } = outcome
                    {
                        if recipients.is_empty() {
                            continue;
                        }
                        let event = ChatEvent {
                            chat_id: req.chat_id,
                            seq: *seq,
                            sender: req.sender,
                            sender_device: req.sender_device,
                            client_msg_id: req.client_msg_id,
                            ts: *ts,
                            payload: Payload(req.payload),
                            mls: req.mls,
                            membership: req.membership,
                            blobs: req.blobs,
                            expires_in: req.expires_in,
                            read_receipts: req.read_receipts,
                        };
                        let Ok(json) = serde_json::to_string(&event) else {
                            continue;
                        };
                        let json: Arc<str> = json.into();
                        for (device, id) in recipients {
                            deliveries.push((
                                device.clone(),
                                Outbound::Event {
                                    id: *id,
                                    event_json: json.clone(),
                                },
                            ));
                        }
                    }
                }
                gateway.deliver(deliveries).await;
                for (job, outcome) in jobs.drain(..).zip(outcomes) {
                    let _ = job.reply.send(Ok(outcome));
                }
            }
            Err(e) => {
                // Nothing of this batch was committed: every sender gets an error and
                // may retry with the same client_msg_id.
                tracing::error!(error = %e, batch = jobs.len(), "committing a batch of sends failed");
                for job in jobs.drain(..) {
                    let _ = job
                        .reply
                        .send(Err(ServiceError::Internal("commit failed".into())));
                }
            }
        }
    }
}
