//! Device inboxes: acknowledgements (batched, like sends), replay pages, receipts, and
//! the janitor that enforces the retention limit.

use std::sync::Arc;
use std::time::Duration;

use parley_client_api::ws::ServerFrame;
use parley_client_api::{ChatId, DeviceId, UserId};
use tokio::sync::{Notify, mpsc, oneshot};

use crate::clock::now_ms;
use crate::gateway::{Gateway, Outbound};
use crate::metrics::Metrics;
use crate::store::{AckRequest, AnyStore, InboxItem, ReceiptNotice, Store};

use super::ServiceError;

/// The ack writer commits at most once per tick: every device's acknowledgements (and
/// the receipts they raise) that arrive within a tick share one transaction, so at a
/// low rate a message does not cost the database one commit per acknowledgement.
/// ✓✓ delivered reaches the sender at most this much later.
const ACK_TICK: Duration = Duration::from_millis(10);
/// How often the receipts that acks raise leave for other servers. Receipts are
/// cumulative, so a member's receipts of one tick travel as one: fewer, fuller
/// transactions, and fewer commits on both servers.
const FEDERATE_TICK: Duration = Duration::from_millis(50);
/// Fanout records taken at a time.
const FANOUT_BATCH: i64 = 1024;
/// Records left behind by a failure are tried again after this long without an ack.
const FANOUT_RETRY: Duration = Duration::from_secs(5);
/// Waits before each new try of a batch of acks whose commit failed.
const ACK_RETRY_MS: [u64; 3] = [5, 25, 100];

struct AckJob {
    ack: AckRequest,
    done: oneshot::Sender<()>,
}

#[derive(Clone)]
pub struct Inbox {
    store: AnyStore,
    acks: mpsc::Sender<AckJob>,
}

/// Room for one acknowledgement in the ack writer's (bounded) queue.
pub struct AckPermit<'a>(mpsc::Permit<'a, AckJob>);

impl AckPermit<'_> {
    /// Queues a device's acknowledgement; the receiver fires once it is committed (or
    /// failed: the items then stay in the inbox and come again on reconnect).
    pub fn send(
        self,
        user_id: UserId,
        device_id: DeviceId,
        ids: Vec<i64>,
    ) -> oneshot::Receiver<()> {
        let (done, wait) = oneshot::channel();
        self.0.send(AckJob {
            ack: AckRequest {
                user_id,
                device_id,
                ids,
            },
            done,
        });
        wait
    }
}

impl Inbox {
    /// `federated`: the relay and this server's name, when federation is on (each ack
    /// commit records the receipts it raised; a federator queues them for the servers
    /// that share the chats, and at start queues what a crash left recorded).
    pub fn spawn(
        store: AnyStore,
        gateway: Gateway,
        max_batch: usize,
        metrics: Arc<Metrics>,
        federated: Option<(super::relay::Relay, String)>,
    ) -> Self {
        let (acks, rx) = mpsc::channel(max_batch * 4);
        let federated = federated.map(|(relay, local)| {
            let wake = Arc::new(Notify::new());
            tokio::spawn(run_receipt_federator(
                store.clone(),
                relay,
                local,
                wake.clone(),
            ));
            wake
        });
        tokio::spawn(run_ack_writer(
            store.clone(),
            gateway,
            rx,
            max_batch,
            metrics,
            federated,
        ));
        Self { store, acks }
    }

    /// Waits for room in the ack queue. A socket waits on this beside its other work,
    /// never instead of it.
    pub async fn reserve_ack(&self) -> Result<AckPermit<'_>, ServiceError> {
        self.acks
            .reserve()
            .await
            .map(AckPermit)
            .map_err(|_| ServiceError::Unavailable)
    }

    pub async fn page(
        &self,
        device_id: &DeviceId,
        after: i64,
        limit: u32,
    ) -> Result<Vec<InboxItem>, ServiceError> {
        Ok(self.store.inbox_page(device_id, after, limit).await?)
    }
}

/// The frame for a receipt change.
fn receipt_frame(n: ReceiptNotice) -> (parley_client_api::DeviceId, Outbound) {
    let frame = ServerFrame::Receipt {
        id: n.id,
        chat_id: n.chat_id,
        receipt: n.receipt,
    };
    let json = serde_json::to_string(&frame).unwrap_or_default();
    (n.device_id, Outbound::Frame { id: n.id, json })
}

/// Pushes receipt changes to the devices connected now (they are in the inboxes too).
pub async fn push_receipts(gateway: &Gateway, notices: Vec<ReceiptNotice>) {
    gateway
        .deliver(notices.into_iter().map(receipt_frame).collect())
        .await;
}

async fn run_ack_writer(
    store: AnyStore,
    gateway: Gateway,
    mut rx: mpsc::Receiver<AckJob>,
    max_batch: usize,
    metrics: Arc<Metrics>,
    federator: Option<Arc<Notify>>,
) {
    let mut jobs = Vec::with_capacity(max_batch);
    let mut next_commit = tokio::time::Instant::now();
    while rx.recv_many(&mut jobs, max_batch).await > 0 {
        // Collect until this tick is over, then commit everything in one transaction.
        tokio::time::sleep_until(next_commit).await;
        while jobs.len() < max_batch {
            match rx.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        next_commit = tokio::time::Instant::now() + ACK_TICK;
        let batch: Vec<AckRequest> = jobs.iter().map(|j| j.ack.clone()).collect();
        match commit_acks(&store, &batch, federator.is_some()).await {
            Ok(notices) => {
                metrics
                    .acks
                    .inc_by(batch.iter().map(|a| a.ids.len() as u64).sum());
                push_receipts(&gateway, notices).await;
                if let Some(federator) = &federator {
                    federator.notify_one();
                }
            }
            // Unacknowledged items stay in the inbox and are sent again on reconnect:
            // safe, only late.
            Err(e) => tracing::error!(error = %e, "committing acknowledgements failed"),
        }
        for job in jobs.drain(..) {
            let _ = job.done.send(());
        }
    }
}

/// Queues the receipts that ack commits recorded for the servers that must hear of
/// them, at most once per [`FEDERATE_TICK`], then forgets the records. Runs once at
/// start for what a crash left behind.
async fn run_receipt_federator(
    store: AnyStore,
    relay: super::relay::Relay,
    local: String,
    wake: Arc<Notify>,
) {
    loop {
        federate_recorded_receipts(&store, &relay, &local).await;
        tokio::time::sleep(FEDERATE_TICK).await;
        // A failure leaves records behind: try them again after a while even if no
        // ack comes.
        let _ = tokio::time::timeout(FANOUT_RETRY, wake.notified()).await;
    }
}

/// Queues every recorded receipt (one per member and chat), a batch at a time. Stops at
/// the first failure; the records stay for the next try.
async fn federate_recorded_receipts(store: &AnyStore, relay: &super::relay::Relay, local: &str) {
    use crate::store::fed::FedStore as _;
    loop {
        let records = match store.receipt_fanout(FANOUT_BATCH).await {
            Ok(r) if r.is_empty() => return,
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the receipts to federate");
                return;
            }
        };
        let full = records.len() as i64 == FANOUT_BATCH;
        let (ids, pairs): (Vec<i64>, Vec<(ChatId, UserId)>) =
            records.into_iter().map(|(n, c, u)| (n, (c, u))).unzip();
        if let Err(e) = super::relay::federate_receipts(store, relay, local, pairs, None).await {
            tracing::warn!(error = %e, "cannot queue receipts for federation");
            return;
        }
        if let Err(e) = store.receipt_fanout_done(&ids).await {
            // Queued again next time: receipts only rise, so a repeat changes nothing.
            tracing::warn!(error = %e, "cannot forget federated receipts");
            return;
        }
        if !full {
            return;
        }
    }
}

/// Commits a batch of acks, retried after a failure: another node's ack writer may
/// deadlock with this one on Postgres (each deletes its devices' items, then writes
/// receipt items into the other's devices' inboxes), and Postgres aborts one of the two.
/// A batch is idempotent, so trying it again is safe.
async fn commit_acks(
    store: &AnyStore,
    batch: &[AckRequest],
    fanout: bool,
) -> Result<Vec<ReceiptNotice>, crate::store::StoreError> {
    let mut result = store.commit_acks(batch, now_ms(), fanout).await;
    for backoff_ms in ACK_RETRY_MS {
        let Err(e) = &result else { break };
        tracing::warn!(error = %e, "committing acknowledgements failed; retrying");
        tokio::time::sleep(Duration::from_millis(backoff_ms)).await;
        result = store.commit_acks(batch, now_ms(), fanout).await;
    }
    result
}

/// How often expired disappearing messages are dropped (MS34: within a few seconds of
/// their expiry), and at most how many per transaction.
const EXPIRY_TICK: Duration = Duration::from_secs(1);
const EXPIRY_BATCH: i64 = 1000;

/// Drops events whose disappearing timer ended, with their undelivered inbox rows, every
/// [`EXPIRY_TICK`]; media only they referred to goes with them.
pub fn spawn_expiry(store: AnyStore, media: super::media::Media) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(EXPIRY_TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            loop {
                match store.purge_disappeared(now_ms(), EXPIRY_BATCH).await {
                    Ok(d) => {
                        if d.purged.events > 0 {
                            tracing::debug!(
                                events = d.purged.events,
                                inbox_rows = d.purged.inbox_rows,
                                "expired messages dropped"
                            );
                        }
                        if !d.orphans.is_empty()
                            && let Err(e) = media.delete_blobs(&d.orphans).await
                        {
                            tracing::warn!(error = %e, "collecting expired media failed");
                        }
                        if d.purged.events < EXPIRY_BATCH as u64 {
                            break;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "dropping expired messages failed");
                        break;
                    }
                }
            }
        }
    });
}

/// Deletes what is older than the retention limit, at start and then hourly; with
/// federation on, also received transactions older than the dedup window (days).
pub fn spawn_janitor(
    store: AnyStore,
    media: super::media::Media,
    retention_days: u32,
    dedup_window_days: Option<u32>,
) {
    tokio::spawn(async move {
        let retention_ms = i64::from(retention_days) * 24 * 3600 * 1000;
        let mut tick = tokio::time::interval(Duration::from_secs(3600));
        loop {
            tick.tick().await;
            if let Some(days) = dedup_window_days {
                let cutoff = super::inbound::received_cutoff(now_ms(), days);
                match crate::store::fed::FedStore::purge_received(&store, cutoff).await {
                    Ok(0) => {}
                    Ok(n) => {
                        tracing::info!(rows = n, "old received federation transactions purged")
                    }
                    Err(e) => tracing::warn!(error = %e, "purging received transactions failed"),
                }
            }
            match store.purge_expired(now_ms() - retention_ms).await {
                Ok(p) if p.inbox_rows + p.events > 0 => {
                    tracing::info!(
                        inbox_rows = p.inbox_rows,
                        events = p.events,
                        "retention purge"
                    );
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "retention purge failed"),
            }
            match media.collect_garbage(now_ms() - retention_ms).await {
                Ok((0, 0)) => {}
                Ok((blobs, uploads)) => {
                    tracing::info!(blobs, uploads, "unreferenced media collected");
                }
                Err(e) => tracing::warn!(error = %e, "media collection failed"),
            }
        }
    });
}
