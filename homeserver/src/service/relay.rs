//! The federation relay: one task per destination server drives
//! `parley_federation::outbox` (the pure state machine) over the durable outbox rows.
//!
//! - Rows are written by the transaction that makes them (store::fed); whoever writes
//!   them calls [`Relay::wake`] after the commit. A woken task rereads its destination's
//!   rows and feeds the new ones to the state machine, so a lost wake-up costs only
//!   latency (every task also rereads on a timer).
//! - One batch in flight per destination, retried under its `txn_id` (this process's
//!   start time and the batch's first and last row ids). Nothing is written before the
//!   request leaves: after a restart the rows form new batches under new ids, and the
//!   receiver applies entries idempotently (FO1). Acknowledged rows are deleted while
//!   the next request is in flight.
//! - A forwarded send (follower → hub) is answered by the hub's `seq`: the task hands
//!   each [`SendResult`] to the client request waiting for that outbox row. When nobody
//!   waits any more (the client was answered `pending`, or this server restarted), the
//!   result goes into the sender device's inbox (`sent_late` / `send_failed`) before the
//!   rows are deleted: a crash in between resends the transaction, which the hub answers
//!   again from its dedup table.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use parley_federation::api::send::{self, SendResult};
use parley_federation::api::{
    ChatSnapshot, FedEvent, FedReceipt, HubLeave, HubSend, SnapshotMember,
};
use parley_federation::outbox::{
    Action, DeadReason, DestinationBackoff, Input, Outbox, OutboxConfig, Outcome, Queued,
};
use parley_federation::transport::http::outcome_of;
use parley_federation::{ServerName, api};
use rand::Rng as _;
use tokio::sync::{mpsc, oneshot};

use super::federation::Federation;
use crate::clock::now_ms;
use crate::gateway::{Gateway, Outbound};
use crate::store::fed::{ChatRef, DestinationRow, FedStore, OutboxKind, OutboxRow, SendResultRow};
use crate::store::{AnyStore, StoreError};

/// How often an idle destination task rereads its rows anyway (rows another node of the
/// domain wrote reach the lease holder this way).
const REREAD: Duration = Duration::from_secs(2);
/// How long a node's lease on a destination lasts without renewal (ms).
const LEASE_MS: i64 = 15_000;
/// Wake-ups queued for the dispatcher and for each destination task. A wake-up is only a
/// hint (tasks reread their rows on a timer), so one that finds a full queue is dropped.
const WAKE_QUEUE: usize = 1024;
/// How often the dispatcher looks for destinations with rows but no task.
const SCAN: Duration = Duration::from_secs(10);
/// Most results kept for senders that have not started waiting yet.
const MAX_EARLY: usize = 4096;
/// Acknowledged rows are deleted in sets of this many, or once the oldest has waited
/// [`DELETE_AFTER`]: a commit per batch would take the writer from the sends (on
/// SQLite every write queues on one connection). Until then a crash resends them,
/// which receivers take idempotently (FO1).
const DELETE_BATCH: usize = 256;
const DELETE_AFTER: Duration = Duration::from_millis(200);

/// The handle: wakes destination tasks and matches forwarded sends with the hub's answer.
#[derive(Clone)]
pub struct Relay {
    wake: mpsc::Sender<Wake>,
    waiters: Arc<Mutex<Waiters>>,
    live: Live,
}

/// What the destination tasks of this node report of their state (for `/metrics`):
/// one entry per running task.
type Live = Arc<Mutex<HashMap<String, LiveState>>>;

/// A destination's state as the task driving it sees it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LiveState {
    /// Failed requests in a row since the last success (or signed request from it).
    pub failures: u32,
    /// No request before this time (ms); `None`: sending freely.
    pub retry_at: Option<i64>,
    pub parked: bool,
}

#[derive(Default)]
struct Waiters {
    waiting: HashMap<i64, oneshot::Sender<SendResult>>,
    /// Answers that arrived before their sender started waiting.
    early: HashMap<i64, SendResult>,
}

#[derive(Debug)]
enum Wake {
    /// New rows for this destination.
    Rows(String),
    /// A signed request from this server arrived: it is up.
    Inbound(String),
    /// Typing or presence for this destination: coalesced, never stored, dropped when
    /// older than 30 s or when a request carrying it fails.
    Ephemeral(String, api::Ephemeral),
}

impl Wake {
    fn destination(&self) -> &str {
        match self {
            Wake::Rows(d) | Wake::Inbound(d) | Wake::Ephemeral(d, _) => d,
        }
    }
}

/// The receiving end, handed to [`spawn`] once federation has started.
pub struct RelayTasks {
    rx: mpsc::Receiver<Wake>,
    waiters: Arc<Mutex<Waiters>>,
    live: Live,
}

pub fn channel() -> (Relay, RelayTasks) {
    let (wake, rx) = mpsc::channel(WAKE_QUEUE);
    let waiters = Arc::new(Mutex::new(Waiters::default()));
    let live = Live::default();
    (
        Relay {
            wake,
            waiters: waiters.clone(),
            live: live.clone(),
        },
        RelayTasks { rx, waiters, live },
    )
}

impl Relay {
    /// New outbox rows for `destinations` were committed.
    pub fn wake<'a>(&self, destinations: impl IntoIterator<Item = &'a String>) {
        for d in destinations {
            let _ = self.wake.try_send(Wake::Rows(d.clone()));
        }
    }

    /// Queues an ephemeral event (typing, presence) for `destination`. Dropped when the
    /// relay's queue is full: ephemeral events are best effort.
    pub fn ephemeral(&self, destination: &str, event: api::Ephemeral) {
        let _ = self
            .wake
            .try_send(Wake::Ephemeral(destination.to_owned(), event));
    }

    /// The state of the destinations this node drives (it holds their lease).
    pub fn live_states(&self) -> Vec<(String, LiveState)> {
        let live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        live.iter().map(|(d, s)| (d.clone(), *s)).collect()
    }

    /// A verified request from `origin` arrived.
    pub fn inbound(&self, origin: &str) {
        let _ = self.wake.try_send(Wake::Inbound(origin.to_owned()));
    }

    /// Waits up to `timeout` for the hub's answer to outbox row `id`. None: the answer
    /// will go to the sender device's inbox instead.
    pub async fn wait_result(&self, id: i64, timeout: Duration) -> Option<SendResult> {
        let mut rx = {
            let mut w = self.waiters.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(result) = w.early.remove(&id) {
                return Some(result);
            }
            let (tx, rx) = oneshot::channel();
            w.waiting.insert(id, tx);
            rx
        };
        if let Ok(Ok(result)) = tokio::time::timeout(timeout, &mut rx).await {
            return Some(result);
        }
        // Gave up: unless the relay took our slot meanwhile (then its answer is in `rx`),
        // the answer will go to the inbox.
        let mut w = self.waiters.lock().unwrap_or_else(|p| p.into_inner());
        if w.waiting.remove(&id).is_some() {
            None
        } else {
            rx.try_recv().ok()
        }
    }
}

impl Waiters {
    /// Hands `result` to the request waiting for row `id`. Returns it back when no one
    /// is sure to see it (no waiter, or one that gave up): the sender device's inbox must
    /// get it. (An answer that arrives before its request started waiting is kept for
    /// it, and goes to the inbox too: at worst the device hears it twice.)
    fn deliver(&mut self, id: i64, result: SendResult) -> Option<SendResult> {
        match self.waiting.remove(&id) {
            Some(tx) => tx.send(result).err(),
            None => {
                if self.early.len() >= MAX_EARLY {
                    self.early.clear();
                }
                self.early.insert(id, result.clone());
                Some(result)
            }
        }
    }
}

/// Starts the dispatcher: one task per destination with rows, now and as rows appear.
pub fn spawn(tasks: RelayTasks, store: AnyStore, federation: Federation, gateway: Gateway) {
    tokio::spawn(dispatch(tasks, store, federation, gateway));
}

async fn dispatch(
    mut tasks: RelayTasks,
    store: AnyStore,
    federation: Federation,
    gateway: Gateway,
) {
    let mut running: HashMap<String, mpsc::Sender<Wake>> = HashMap::new();
    let mut ensure = |dest: &str| -> mpsc::Sender<Wake> {
        if let Some(tx) = running.get(dest).filter(|tx| !tx.is_closed()) {
            return tx.clone();
        }
        let (tx, rx) = mpsc::channel(WAKE_QUEUE);
        let task = Destination {
            name: dest.to_owned(),
            store: store.clone(),
            federation: federation.clone(),
            gateway: gateway.clone(),
            waiters: tasks.waiters.clone(),
            live: tasks.live.clone(),
            boot: now_ms(),
        };
        tokio::spawn(task.run(rx));
        running.insert(dest.to_owned(), tx.clone());
        tx
    };
    // Every destination with rows gets a task: now (after a restart) and on a timer, so
    // rows another node of the domain left behind (it died) are taken over.
    let mut scan = tokio::time::interval(SCAN);
    loop {
        tokio::select! {
            _ = scan.tick() => match store.outbox_destinations().await {
                Ok(dests) => {
                    for d in dests {
                        ensure(&d);
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot read the federation outbox"),
            },
            wake = tasks.rx.recv() => {
                let Some(wake) = wake else { return };
                let tx = ensure(wake.destination());
                let _ = tx.try_send(wake);
            }
        }
    }
}

/// What the state machine carries: a queued outbox row, or an ephemeral event.
#[derive(Debug, Clone)]
enum Entry {
    Row {
        id: i64,
        kind: OutboxKind,
        body: String,
    },
    Ephemeral(api::Ephemeral),
}

struct Destination {
    name: String,
    store: AnyStore,
    federation: Federation,
    gateway: Gateway,
    waiters: Arc<Mutex<Waiters>>,
    live: Live,
    /// When this task started (ms): prefixes the transaction ids it forms, so ids stay
    /// unique even if the outbox's row ids start over (a database restored or replaced).
    boot: i64,
}

impl Destination {
    async fn run(self, mut rx: mpsc::Receiver<Wake>) {
        let Ok(server) = ServerName::try_from(self.name.as_str()) else {
            tracing::error!(destination = %self.name, "outbox rows for an invalid server name");
            return;
        };
        let mut lease_until = 0;
        // Drive the destination while this node holds its lease; when it is lost (another
        // node took over after a stall), wait for it again and start from the rows.
        loop {
            while !self.hold(&mut lease_until).await {
                if let Ok(None) = tokio::time::timeout(REREAD, rx.recv()).await {
                    return;
                }
            }
            let stopped = self.drive(&server, &mut rx, &mut lease_until).await;
            self.publish(None);
            if stopped {
                return;
            }
        }
    }

    /// Reports this task's view of the destination (`None`: it no longer drives it).
    fn publish(&self, state: Option<LiveState>) {
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        match state {
            Some(s) => live.insert(self.name.clone(), s),
            None => live.remove(&self.name),
        };
    }

    /// True while this node holds the destination's lease (renewed at half time).
    async fn hold(&self, lease_until: &mut i64) -> bool {
        let now = now_ms();
        if now < *lease_until - LEASE_MS / 2 {
            return true;
        }
        let node = self.federation.node_id();
        match self
            .store
            .take_lease(&self.name, node, now, now + LEASE_MS)
            .await
        {
            Ok(true) => {
                *lease_until = now + LEASE_MS;
                true
            }
            Ok(false) => false,
            Err(e) => {
                tracing::warn!(destination = %self.name, error = %e, "cannot take the outbox lease");
                false
            }
        }
    }

    /// Drives the outbox until the lease is lost (returns false) or the relay stops
    /// (returns true).
    async fn drive(
        &self,
        server: &ServerName,
        rx: &mut mpsc::Receiver<Wake>,
        lease_until: &mut i64,
    ) -> bool {
        let (mut outbox, mut known) = match self.restore().await {
            Ok(restored) => restored,
            Err(e) => {
                tracing::error!(destination = %self.name, error = %e, "cannot restore the outbox");
                tokio::time::sleep(REREAD).await;
                return false;
            }
        };
        let mut actions = outbox.step(Input::Tick, now_ms(), rand::rng().random());
        // Failed requests in a row, for `/metrics`.
        let mut failures = 0u32;
        // Rows of the batches acknowledged: deleted in sets, while a request is in flight
        // or when the outbox is idle.
        let mut acked = AckedRows::default();
        // The newest row id read: rereads ask for rows after it.
        let mut newest = known.iter().copied().max().unwrap_or(0);
        loop {
            let mut wait_until = None;
            let mut send = None;
            for action in actions.drain(..) {
                match action {
                    Action::SendBatch {
                        txn_id,
                        events,
                        ephemeral,
                    } => send = Some((txn_id, events, ephemeral)),
                    Action::Acked { event_ids, .. } => acked.add(
                        event_ids.iter().filter_map(|i| i64::try_from(*i).ok()),
                        Instant::now(),
                    ),
                    Action::DeadLetter {
                        event_ids,
                        items,
                        reason,
                        ..
                    } => {
                        tracing::warn!(destination = %self.name, ?reason, rows = event_ids.len(),
                            "federation events dead-lettered");
                        self.conclude_dead_sends(&items, reason).await;
                        let ids: Vec<i64> = event_ids
                            .iter()
                            .filter_map(|i| i64::try_from(*i).ok())
                            .collect();
                        self.delete(&ids, &mut known).await;
                    }
                    Action::Park { status } => {
                        tracing::warn!(destination = %self.name, status, "destination refuses us: parked");
                        self.persist(outbox.backoff(), true).await;
                    }
                    Action::PersistBackoff(b) => self.persist(b, false).await,
                    Action::Wait { until_ms } => wait_until = Some(until_ms),
                }
            }
            self.publish(Some(LiveState {
                failures,
                retry_at: outbox.retry_at().filter(|at| *at > now_ms()),
                parked: outbox.is_parked(),
            }));
            if let Some((txn_id, events, ephemeral)) = send {
                if !self.hold(lease_until).await {
                    tracing::info!(destination = %self.name, "outbox lease lost to another node");
                    return false;
                }
                let wire = format!("{}.{txn_id}", self.boot);
                let outcome = self
                    .send_batch(server, &wire, &events, &ephemeral, &mut acked, &mut known)
                    .await;
                failures = match outcome {
                    Outcome::Status(200..=299) => 0,
                    _ => failures.saturating_add(1),
                };
                actions = outbox.step(
                    Input::Sent { txn_id, outcome },
                    now_ms(),
                    rand::rng().random(),
                );
                continue;
            }
            if let Some(ids) = acked.take_due(Instant::now()) {
                self.delete(&ids, &mut known).await;
            }
            // Idle or waiting: the next wake-up, the end of the wait, the acknowledged
            // rows' deletion, or a reread.
            let sleep = match wait_until {
                Some(at) => Duration::from_millis(u64::try_from(at - now_ms()).unwrap_or(0)),
                None => REREAD,
            };
            let sleep = acked.due_in(Instant::now()).map_or(sleep, |d| d.min(sleep));
            let now = |o: &mut Outbox<Entry>, i| o.step(i, now_ms(), rand::rng().random());
            match tokio::time::timeout(sleep, rx.recv()).await {
                Ok(None) => return true,
                Ok(Some(Wake::Inbound(_))) => {
                    failures = 0;
                    actions = now(&mut outbox, Input::Inbound);
                }
                Ok(Some(Wake::Ephemeral(_, event))) => {
                    let bytes = serde_json::to_vec(&event).map(|b| b.len()).unwrap_or(256);
                    let key = event.coalesce_key();
                    actions = now(
                        &mut outbox,
                        Input::Ephemeral {
                            key,
                            item: Entry::Ephemeral(event),
                            bytes,
                        },
                    );
                }
                Ok(Some(Wake::Rows(_))) | Err(_) => {
                    // Drain further wake-ups: one reread serves them all.
                    while rx.try_recv().is_ok() {}
                    if outbox.is_parked() && self.federation.decide(server).allowed {
                        actions.extend(now(&mut outbox, Input::Unpark));
                    }
                    // Only rows committed after the newest seen (the store knows what
                    // that means for its ids).
                    match self.new_rows(&mut known, newest).await {
                        Ok(rows) if !rows.is_empty() => {
                            let ids = rows.iter().filter_map(|r| i64::try_from(r.id).ok());
                            newest = ids.fold(newest, i64::max);
                            actions.extend(now(&mut outbox, Input::Enqueue(rows)));
                        }
                        Ok(_) => {}
                        Err(e) => {
                            tracing::warn!(destination = %self.name, error = %e, "cannot read the outbox")
                        }
                    }
                    actions.extend(now(&mut outbox, Input::Tick));
                }
            }
        }
    }

    /// The state machine as the rows left it, and the row ids it holds.
    async fn restore(&self) -> Result<(Outbox<Entry>, HashSet<i64>), StoreError> {
        let rows = self.store.outbox_rows(&self.name, 0, &[]).await?;
        let backoff = self
            .store
            .destinations()
            .await?
            .into_iter()
            .find(|d| d.destination == self.name)
            .map(|d| DestinationBackoff {
                failures: d.failures,
                retry_at_ms: d.retry_at,
            })
            .unwrap_or_default();
        let known: HashSet<i64> = rows.iter().map(|r| r.id).collect();
        let queue = rows.into_iter().map(queued).collect();
        Ok((
            Outbox::restore(OutboxConfig::default(), queue, backoff),
            known,
        ))
    }

    async fn new_rows(
        &self,
        known: &mut HashSet<i64>,
        after: i64,
    ) -> Result<Vec<Queued<Entry>>, StoreError> {
        let held: Vec<i64> = known.iter().copied().collect();
        let rows = self.store.outbox_rows(&self.name, after, &held).await?;
        Ok(rows
            .into_iter()
            .filter(|r| known.insert(r.id))
            .map(queued)
            .collect())
    }

    async fn delete(&self, ids: &[i64], known: &mut HashSet<i64>) {
        if ids.is_empty() {
            // A batch of ephemeral events only: no rows.
            return;
        }
        if let Err(e) = self.store.outbox_delete(ids).await {
            tracing::error!(destination = %self.name, error = %e, "cannot delete acknowledged outbox rows");
        }
        for id in ids {
            known.remove(id);
        }
    }

    async fn persist(&self, b: DestinationBackoff, parked: bool) {
        let row = DestinationRow {
            destination: self.name.clone(),
            failures: b.failures,
            retry_at: b.retry_at_ms,
            parked,
        };
        if let Err(e) = self.store.save_destination(&row).await {
            tracing::warn!(destination = %self.name, error = %e, "cannot persist the destination backoff");
        }
    }

    /// Builds the transaction from the rows, sends it (deleting the `acked` rows of the
    /// previous batches meanwhile), and hands forwarded sends their answers.
    async fn send_batch(
        &self,
        server: &ServerName,
        txn_id: &str,
        entries: &[Entry],
        ephemeral: &[Entry],
        acked: &mut AckedRows,
        known: &mut HashSet<i64>,
    ) -> parley_federation::outbox::Outcome {
        use parley_federation::outbox::Outcome;
        if !self.federation.decide(server).allowed {
            // Nothing goes to a server the policy refuses: park until it allows again.
            return Outcome::Status(403);
        }
        let started = Instant::now();
        let (mut request, send_ids) = match self.build(entries).await {
            Ok(built) => built,
            Err(e) => {
                tracing::warn!(destination = %self.name, error = %e, "cannot build a transaction");
                return Outcome::Network;
            }
        };
        request.ephemeral = ephemeral
            .iter()
            .filter_map(|e| match e {
                Entry::Ephemeral(e) => Some(e.clone()),
                Entry::Row { .. } => None,
            })
            .collect();
        let path = api::fill(send::PATH, &[("txn_id", txn_id)]);
        let body = match serde_json::to_vec(&request) {
            Ok(b) => b,
            Err(_) => return Outcome::Status(400),
        };
        let formed = started.elapsed();
        let deleting = acked.take_due(Instant::now()).unwrap_or_default();
        let client = self.federation.client();
        let (result, ()) = tokio::join!(
            client.send(server, send::METHOD, &path, Some(body)),
            self.delete(&deleting, known),
        );
        let mut outcome = outcome_of(&result);
        match &result {
            Ok(resp) if (200..300).contains(&resp.status) => {
                match serde_json::from_slice::<send::Response>(&resp.body) {
                    Ok(answer) => {
                        let results = send_ids
                            .into_iter()
                            .zip(answer.sends)
                            .map(|((id, send), result)| (id, send, result))
                            .collect();
                        if let Err(e) = self.conclude(results).await {
                            // The rows stay; the resent transaction is answered the same.
                            tracing::warn!(destination = %self.name, error = %e,
                                "cannot record the results of forwarded sends");
                            outcome = Outcome::Network;
                        }
                        for r in answer.events {
                            if let send::EventResult::Rejected(e) = r {
                                tracing::warn!(destination = %self.name, error = ?e.error,
                                    message = %e.message, "a follower refused an event");
                            }
                        }
                    }
                    Err(e) => {
                        tracing::warn!(destination = %self.name, error = %e, "unreadable transaction answer")
                    }
                }
            }
            Ok(resp) => {
                tracing::info!(destination = %self.name, status = resp.status, "transaction refused")
            }
            Err(e) => tracing::info!(destination = %self.name, error = %e, "transaction failed"),
        }
        tracing::debug!(destination = %self.name, entries = entries.len(),
            ephemeral = ephemeral.len(), ?outcome, build_ms = formed.as_secs_f64() * 1e3,
            request_ms = (started.elapsed() - formed).as_secs_f64() * 1e3, "transaction sent");
        outcome
    }

    /// Forwarded sends given up on: their sender devices hear that they failed
    /// (`send_failed`, to the waiting request or the device's inbox) instead of seeing
    /// them pending forever.
    async fn conclude_dead_sends(&self, items: &[Entry], reason: DeadReason) {
        use parley_federation::FedErrorCode;
        let (error, message) = match reason {
            DeadReason::TooLarge | DeadReason::Refused(413) => (
                FedErrorCode::TooLarge,
                "too large for a federation transaction to the chat's hub".to_owned(),
            ),
            DeadReason::Refused(status) => (
                FedErrorCode::InvalidParam,
                format!("the chat's hub refused the transaction that carried it ({status})"),
            ),
        };
        let results = items
            .iter()
            .filter_map(|item| match item {
                Entry::Row {
                    id,
                    kind: OutboxKind::Send,
                    body,
                } => Some((*id, serde_json::from_str::<HubSend>(body).ok()?)),
                _ => None,
            })
            .map(|(id, send)| {
                let failed = SendResult::Rejected(send::EntryError {
                    error,
                    message: message.clone(),
                    current_epoch: None,
                });
                (id, send, failed)
            })
            .collect();
        if let Err(e) = self.conclude(results).await {
            tracing::warn!(destination = %self.name, error = %e,
                "cannot tell the senders of dead-lettered sends");
        }
    }

    /// Hands each forwarded send's result (by outbox row id) to the request waiting for
    /// it, and writes the ones no request is sure to see into the sender devices'
    /// inboxes.
    async fn conclude(&self, results: Vec<(i64, HubSend, SendResult)>) -> Result<(), StoreError> {
        let late: Vec<(HubSend, SendResult)> = {
            let mut w = self.waiters.lock().unwrap_or_else(|p| p.into_inner());
            results
                .into_iter()
                .filter_map(|(id, send, result)| Some((send, w.deliver(id, result)?)))
                .collect()
        };
        self.record_late(late).await
    }

    /// Writes the hub's answers that no client request took into the sender devices'
    /// inboxes, then pushes them to the devices connected now.
    async fn record_late(&self, late: Vec<(HubSend, SendResult)>) -> Result<(), StoreError> {
        if late.is_empty() {
            return Ok(());
        }
        let rows: Vec<SendResultRow> = late
            .iter()
            .filter_map(|(send, result)| late_row(send, result))
            .collect();
        let written = self.store.record_send_results(&rows, now_ms()).await?;
        let mut pushes = Vec::with_capacity(written.len());
        for (i, id) in written {
            let row = &rows[i];
            if let Some(crate::store::InboxItem::SendResult { frame, .. }) =
                crate::store::send_result_item(id, &row.body)
                && let Ok(json) = serde_json::to_string(&frame)
            {
                pushes.push((row.device_id.clone(), Outbound::Frame { id, json }));
            }
        }
        tracing::info!(destination = %self.name, results = pushes.len(),
            "late results of forwarded sends written to the senders' inboxes");
        self.gateway.deliver(pushes).await;
        Ok(())
    }

    /// The wire transaction for `entries`, and the outbox ids of its `sends` with the
    /// sends, in order.
    #[allow(clippy::type_complexity)]
    async fn build(
        &self,
        entries: &[Entry],
    ) -> Result<(send::Request, Vec<(i64, HubSend)>), String> {
        let origin = self.federation.server_name().clone();
        let mut request = send::Request {
            origin,
            origin_ts: now_ms(),
            sends: Vec::new(),
            chats: Vec::new(),
            events: Vec::new(),
            receipts: Vec::new(),
            ephemeral: Vec::new(),
            leaves: Vec::new(),
        };
        let mut send_ids = Vec::new();
        let mut event_refs = Vec::new();
        let mut snapshots_done = HashSet::new();
        for entry in entries {
            let Entry::Row { id, kind, body } = entry else {
                continue;
            };
            match kind {
                OutboxKind::Event => {
                    let r: ChatRef = serde_json::from_str(body).map_err(|e| e.to_string())?;
                    if let Some(seq) = r.seq {
                        event_refs.push((r.chat_id, seq));
                    }
                }
                OutboxKind::Snapshot => {
                    let r: ChatRef = serde_json::from_str(body).map_err(|e| e.to_string())?;
                    if !snapshots_done.insert(r.chat_id.clone()) {
                        continue;
                    }
                    if let Some((s, seq)) = self
                        .store
                        .chat_snapshot(&r.chat_id)
                        .await
                        .map_err(|e| e.to_string())?
                    {
                        request.chats.push(to_wire_snapshot(s, seq)?);
                    }
                }
                OutboxKind::Send => {
                    let s: HubSend = serde_json::from_str(body).map_err(|e| e.to_string())?;
                    send_ids.push((*id, s.clone()));
                    request.sends.push(s);
                }
                OutboxKind::Receipt => {
                    let r: FedReceipt = serde_json::from_str(body).map_err(|e| e.to_string())?;
                    request.receipts.push(r);
                }
                OutboxKind::Leave => {
                    let l: HubLeave = serde_json::from_str(body).map_err(|e| e.to_string())?;
                    request.leaves.push(l);
                }
            }
        }
        if !event_refs.is_empty() {
            for ev in self
                .store
                .events_by_seq(&event_refs)
                .await
                .map_err(|e| e.to_string())?
            {
                request.events.push(convert::<_, FedEvent>(&ev)?);
            }
        }
        Ok((request, send_ids))
    }
}

/// Acknowledged outbox rows waiting to be deleted in one set ([`DELETE_BATCH`],
/// [`DELETE_AFTER`]).
#[derive(Debug, Default)]
struct AckedRows {
    ids: Vec<i64>,
    /// When the oldest of `ids` was acknowledged.
    since: Option<Instant>,
}

impl AckedRows {
    fn add(&mut self, ids: impl IntoIterator<Item = i64>, now: Instant) {
        let before = self.ids.len();
        self.ids.extend(ids);
        if before == 0 && !self.ids.is_empty() {
            self.since = Some(now);
        }
    }

    /// How long until the rows are due (zero: now); `None` without rows.
    fn due_in(&self, now: Instant) -> Option<Duration> {
        let since = self.since.filter(|_| !self.ids.is_empty())?;
        if self.ids.len() >= DELETE_BATCH {
            return Some(Duration::ZERO);
        }
        Some(DELETE_AFTER.saturating_sub(now.saturating_duration_since(since)))
    }

    /// The rows, if they are due.
    fn take_due(&mut self, now: Instant) -> Option<Vec<i64>> {
        if self.due_in(now)? > Duration::ZERO {
            return None;
        }
        self.since = None;
        Some(std::mem::take(&mut self.ids))
    }
}

/// The inbox row telling a forwarded send's device how the hub concluded it (the frame
/// without its id). Pure.
fn late_row(send: &HubSend, result: &SendResult) -> Option<SendResultRow> {
    use parley_client_api::ws::ServerFrame;
    let chat_id: parley_client_api::ChatId = convert(&send.chat_id).ok()?;
    let (seq, frame) = match result {
        SendResult::Accepted { seq, ts, duplicate } => (
            *seq,
            ServerFrame::SentLate {
                id: 0,
                ack: parley_client_api::http::chats::SendAck {
                    chat_id: chat_id.clone(),
                    client_msg_id: send.client_msg_id.clone(),
                    seq: *seq,
                    ts: *ts,
                    duplicate: *duplicate,
                    pending: false,
                },
            },
        ),
        SendResult::Rejected(e) => (
            0,
            ServerFrame::SendFailed {
                id: 0,
                chat_id: chat_id.clone(),
                client_msg_id: send.client_msg_id.clone(),
                code: client_code(e.error),
                message: e.message.clone(),
                current_epoch: e.current_epoch,
            },
        ),
    };
    Some(SendResultRow {
        device_id: convert(&send.sender_device).ok()?,
        chat_id,
        sender: convert(&send.sender).ok()?,
        seq,
        body: serde_json::to_string(&frame).ok()?,
    })
}

/// The client error code for a hub's refusal of a forwarded send.
fn client_code(e: parley_federation::FedErrorCode) -> parley_client_api::ErrorCode {
    use parley_client_api::ErrorCode as E;
    use parley_federation::FedErrorCode as F;
    match e {
        F::WrongEpoch => E::WrongEpoch,
        F::NotMember => E::NotMember,
        F::UnknownChat => E::UnknownChat,
        F::UnknownUser => E::UnknownUser,
        F::NotFound => E::UnknownBlob,
        F::Forbidden | F::FederationDenied => E::Forbidden,
        F::InvalidParam | F::BadJson => E::InvalidParam,
        F::TooLarge => E::TooLarge,
        F::RateLimited => E::RateLimited,
        _ => E::Internal,
    }
}

fn queued(row: OutboxRow) -> Queued<Entry> {
    Queued {
        id: u64::try_from(row.id).unwrap_or_default(),
        bytes: row.wire_bytes(),
        item: Entry::Row {
            id: row.id,
            kind: row.kind,
            body: row.body,
        },
    }
}

/// Converts between the client API's and the federation API's mirror types (same JSON).
pub(crate) fn convert<A: serde::Serialize, B: serde::de::DeserializeOwned>(
    a: &A,
) -> Result<B, String> {
    serde_json::to_value(a)
        .and_then(serde_json::from_value)
        .map_err(|e| e.to_string())
}

fn to_wire_snapshot(
    s: crate::store::fed::ChatSnapshotRow,
    seq: i64,
) -> Result<ChatSnapshot, String> {
    Ok(ChatSnapshot {
        chat_id: convert(&s.chat_id)?,
        kind: convert(&s.kind)?,
        name: s.name,
        seq,
        mls_epoch: s.mls_epoch,
        created_by: convert(&s.created_by)?,
        created_at: s.created_at,
        members: s
            .members
            .iter()
            .map(|(u, admin)| {
                Ok(SnapshotMember {
                    user_id: convert(u)?,
                    admin: *admin,
                })
            })
            .collect::<Result<_, String>>()?,
        read_receipts: s.read_receipts,
    })
}

/// Queues members' current receipts for the servers that must hear of them: for a chat
/// hosted elsewhere, its hub; for a chat we host, every follower except `except` (the
/// server that told us). Receipts are cumulative, so a receipt lost to a crash before
/// this ran is carried by the member's next one.
pub async fn federate_receipts(
    store: &AnyStore,
    relay: &Relay,
    local: &str,
    pairs: Vec<(parley_client_api::ChatId, parley_client_api::UserId)>,
    except: Option<&str>,
) -> Result<(), StoreError> {
    let pairs: Vec<_> = pairs
        .into_iter()
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    if pairs.is_empty() {
        return Ok(());
    }
    let receipts = store.member_receipts(&pairs).await?;
    queue_receipts(store, relay, local, receipts, except).await
}

/// Queues these receipts for the servers that must hear of them (as
/// [`federate_receipts`], with the values given).
pub async fn queue_receipts(
    store: &AnyStore,
    relay: &Relay,
    local: &str,
    receipts: Vec<(
        parley_client_api::ChatId,
        parley_client_api::http::chats::Receipt,
    )>,
    except: Option<&str>,
) -> Result<(), StoreError> {
    if receipts.is_empty() {
        return Ok(());
    }
    let hosted: Vec<parley_client_api::ChatId> = receipts
        .iter()
        .filter(|(c, _)| c.hub() == local)
        .map(|(c, _)| c.clone())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let followers: HashMap<parley_client_api::ChatId, Vec<String>> = if hosted.is_empty() {
        HashMap::new()
    } else {
        store.chat_followers(&hosted).await?.into_iter().collect()
    };
    let mut rows = Vec::new();
    // Read-receipt privacy: a local user who turned them off, or a chat that forbids
    // them, sends other servers the delivered part only (MS43, MS45).
    let policy = {
        use crate::store::receipt_policy::ReceiptPolicyStore as _;
        let chats: Vec<_> = receipts.iter().map(|(c, _)| c.clone()).collect();
        let users: Vec<_> = receipts.iter().map(|(_, r)| r.user_id.clone()).collect();
        store.receipt_policy(&chats, &users).await?
    };
    for (chat, receipt) in receipts {
        let receipt = policy.mask(&chat, None, receipt);
        let destinations: Vec<String> = if chat.hub() == local {
            followers
                .get(&chat)
                .into_iter()
                .flatten()
                .filter(|d| Some(d.as_str()) != except)
                .cloned()
                .collect()
        } else {
            vec![chat.hub().to_owned()]
        };
        if destinations.is_empty() {
            continue;
        }
        let body = FedReceipt {
            chat_id: convert(&chat).map_err(StoreError::Corrupt)?,
            user_id: convert(&receipt.user_id).map_err(StoreError::Corrupt)?,
            delivered_seq: receipt.delivered_seq,
            read_seq: receipt.read_seq,
        };
        let body = serde_json::to_string(&body).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        for destination in destinations {
            rows.push(crate::store::fed::NewOutboxRow {
                destination,
                kind: OutboxKind::Receipt,
                body: body.clone(),
            });
        }
    }
    if rows.is_empty() {
        return Ok(());
    }
    store.enqueue_outbox(&rows, now_ms()).await?;
    let destinations: HashSet<String> = rows.into_iter().map(|r| r.destination).collect();
    relay.wake(&destinations);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acknowledged_rows_are_deleted_in_sets() {
        let t0 = Instant::now();
        let mut acked = AckedRows::default();
        assert_eq!(acked.due_in(t0), None);
        assert_eq!(acked.take_due(t0), None);
        acked.add([1, 2], t0);
        // Young and few: they wait, and say how long.
        assert_eq!(acked.due_in(t0), Some(DELETE_AFTER));
        assert_eq!(acked.take_due(t0 + DELETE_AFTER / 2), None);
        acked.add([3], t0 + DELETE_AFTER / 2);
        // The oldest decides.
        assert_eq!(acked.take_due(t0 + DELETE_AFTER), Some(vec![1, 2, 3]));
        assert_eq!(acked.due_in(t0 + DELETE_AFTER), None);
        // A full set goes at once.
        let t1 = t0 + DELETE_AFTER * 3;
        acked.add(0..DELETE_BATCH as i64, t1);
        assert_eq!(acked.due_in(t1), Some(Duration::ZERO));
        assert_eq!(acked.take_due(t1).map(|ids| ids.len()), Some(DELETE_BATCH));
    }
}
