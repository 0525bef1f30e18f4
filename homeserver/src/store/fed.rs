//! Federation storage: the per-destination outbox, destination backoff, received
//! transactions, and the follower's copy of chats hosted on other servers. A separate
//! trait from [`super::Store`] so the federation tables stay in one place; every method
//! is one transaction.
//!
//! Outbox rows are written in the transaction that makes them (an event's rows with the
//! event, a forwarded send before its client is answered), so nothing committed is
//! forgotten by a crash; a row is deleted only after its destination acknowledged it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;

use parley_client_api::http::chats::{ChatEvent, ChatKind, MlsKind, Receipt};
use parley_client_api::{ChatId, DeviceId, UserId};
use serde::{Deserialize, Serialize};

use super::blocks::BlockPeriod;
use super::{AnyStore, ReceiptNotice, Result};

/// What an outbox row carries. Events and chat states are references (the row names
/// them; the sender reads them when it forms the batch), the rest full bodies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutboxKind {
    /// `{"chat_id","seq"}`: a sequenced event of a chat we host.
    Event,
    /// A `HubSend`: a local user's send forwarded to the chat's hub.
    Send,
    /// A `FedReceipt`.
    Receipt,
    /// `{"chat_id"}`: the current state of a chat we host.
    Snapshot,
    /// A `HubLeave`: a local user leaving a chat hosted elsewhere.
    Leave,
}

impl OutboxKind {
    pub fn to_i16(self) -> i16 {
        match self {
            OutboxKind::Event => 0,
            OutboxKind::Send => 1,
            OutboxKind::Receipt => 2,
            OutboxKind::Snapshot => 3,
            OutboxKind::Leave => 4,
        }
    }

    pub fn from_i16(v: i16) -> Result<Self> {
        Ok(match v {
            0 => OutboxKind::Event,
            1 => OutboxKind::Send,
            2 => OutboxKind::Receipt,
            3 => OutboxKind::Snapshot,
            4 => OutboxKind::Leave,
            _ => return Err(super::StoreError::Corrupt(format!("outbox kind {v}"))),
        })
    }
}

/// The body of an [`OutboxKind::Event`] or [`OutboxKind::Snapshot`] row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatRef {
    pub chat_id: ChatId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<i64>,
    /// An event's size in a transaction ([`SendRequest::event_wire_bytes`]), written
    /// with the row so that batches are cut without reading the events.
    ///
    /// [`SendRequest::event_wire_bytes`]: super::SendRequest::event_wire_bytes
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<usize>,
}

impl ChatRef {
    pub fn event(chat_id: &ChatId, seq: i64, bytes: usize) -> String {
        serde_json::to_string(&ChatRef {
            chat_id: chat_id.clone(),
            seq: Some(seq),
            bytes: Some(bytes),
        })
        .unwrap_or_default()
    }

    pub fn snapshot(chat_id: &ChatId) -> String {
        serde_json::to_string(&ChatRef {
            chat_id: chat_id.clone(),
            seq: None,
            bytes: None,
        })
        .unwrap_or_default()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewOutboxRow {
    pub destination: String,
    pub kind: OutboxKind,
    pub body: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxRow {
    pub id: i64,
    pub destination: String,
    pub kind: OutboxKind,
    pub body: String,
    /// A snapshot row carries its chat's state only once the transaction is formed:
    /// the size of the chat's name and members, read with the row (0 for other rows;
    /// an event row's size is in its body, [`ChatRef::bytes`]).
    pub snapshot_bytes: i64,
}

/// An outbox row as both backends select it: `id, destination, kind, body,
/// snapshot_bytes`.
pub(super) type OutboxTuple = (i64, String, i16, String, i64);

impl OutboxRow {
    pub(super) fn from_tuple(
        (id, destination, kind, body, snapshot_bytes): OutboxTuple,
    ) -> Result<Self> {
        Ok(Self {
            id,
            destination,
            kind: OutboxKind::from_i16(kind)?,
            body,
            snapshot_bytes,
        })
    }

    /// At most how many bytes this row adds to a transaction's body, so that batches
    /// are cut before the 1 MiB a peer accepts.
    pub fn wire_bytes(&self) -> usize {
        match self.kind {
            OutboxKind::Event => serde_json::from_str::<ChatRef>(&self.body)
                .ok()
                .and_then(|r| r.bytes)
                .unwrap_or_else(|| entry_wire_bytes(0, self.body.len())),
            OutboxKind::Snapshot => entry_wire_bytes(
                0,
                self.body.len() + usize::try_from(self.snapshot_bytes).unwrap_or(0),
            ),
            _ => entry_wire_bytes(0, self.body.len()),
        }
    }
}

/// At most how many bytes an entry adds to a transaction's body: `binary` bytes sent
/// base64-encoded (payloads, GroupInfo), `text` bytes of JSON text, and room for the
/// entry's ids, names and punctuation.
pub fn entry_wire_bytes(binary: usize, text: usize) -> usize {
    /// Room for an entry's fields beside what is measured.
    const ENTRY: usize = 1024;
    ENTRY + binary.div_ceil(3) * 4 + text
}

/// A destination's persisted backoff.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DestinationRow {
    pub destination: String,
    pub failures: u32,
    pub retry_at: Option<i64>,
    pub parked: bool,
}

/// The late conclusion of a forwarded send, for its sender device's inbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendResultRow {
    pub device_id: DeviceId,
    pub chat_id: ChatId,
    pub sender: UserId,
    /// The hub's `seq` (0 when refused).
    pub seq: i64,
    /// The `sent_late`/`send_failed` frame, without its id.
    pub body: String,
}

/// A chat's state as its hub sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatSnapshotRow {
    pub chat_id: ChatId,
    pub kind: ChatKind,
    pub name: Option<String>,
    pub mls_epoch: u64,
    pub created_by: UserId,
    pub created_at: i64,
    pub members: Vec<(UserId, bool)>,
    /// The chat's read-receipt policy.
    pub read_receipts: bool,
}

/// One step of applying a hub's transaction on a follower, in the order to apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FollowerOp {
    Snapshot(ChatSnapshotRow),
    Event(ChatEvent),
}

/// What a received transaction asks of the store ([`FedStore::receive_transaction`]).
#[derive(Debug, Clone, Copy)]
pub struct Received<'a> {
    pub origin: &'a str,
    pub txn_id: &'a str,
    /// The answer, kept for a resend of the same transaction.
    pub response: &'a str,
    /// The hub's chat states and events, ordered ([`order_follower_ops`]).
    pub ops: &'a [FollowerOp],
    /// Members' receipts, checked (the origin may report them).
    pub receipts: &'a [(ChatId, Receipt)],
}

/// What a received transaction wrote: the inbox rows to push live `(device, inbox id,
/// index of the event in the ops)` and the receipt items.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    pub inbox: Vec<(DeviceId, i64, usize)>,
    pub notices: Vec<ReceiptNotice>,
}

/// The chat states and events a follower must receive, ordered for application: a chat's
/// state before its events when the follower does not know the chat yet, otherwise after
/// the events up to the state's `seq`. Pure, so the order is tested on its own.
pub fn order_follower_ops(
    snapshots: Vec<(ChatSnapshotRow, i64)>,
    events: Vec<ChatEvent>,
    known: &dyn Fn(&ChatId) -> bool,
) -> Vec<FollowerOp> {
    let mut keyed: Vec<((ChatId, i64, u8), FollowerOp)> = Vec::new();
    for (snapshot, seq) in snapshots {
        let seq = if known(&snapshot.chat_id) { seq } else { -1 };
        keyed.push((
            (snapshot.chat_id.clone(), seq, 1),
            FollowerOp::Snapshot(snapshot),
        ));
    }
    for event in events {
        keyed.push((
            (event.chat_id.clone(), event.seq, 0),
            FollowerOp::Event(event),
        ));
    }
    keyed.sort_by(|a, b| a.0.cmp(&b.0));
    keyed.into_iter().map(|(_, op)| op).collect()
}

/// A group of follower ops applied together: a chat state on its own, or a run of events
/// that share one read of members, devices and blocks. An event that changes membership
/// is a run of its own (whom it reaches depends on the change).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpRun<'a> {
    Snapshot(&'a ChatSnapshotRow),
    /// `(index in the ops, event)`, in order.
    Events(Vec<(usize, &'a ChatEvent)>),
}

/// True when `e` adds or removes members.
pub fn changes_membership(e: &ChatEvent) -> bool {
    e.membership
        .as_ref()
        .is_some_and(|m| !m.add.is_empty() || !m.remove.is_empty())
}

/// Splits ordered ops into the runs a store applies, keeping their order. Pure.
pub fn op_runs(ops: &[FollowerOp]) -> Vec<OpRun<'_>> {
    let mut runs = Vec::new();
    let mut events: Vec<(usize, &ChatEvent)> = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        match op {
            FollowerOp::Snapshot(s) => {
                if !events.is_empty() {
                    runs.push(OpRun::Events(std::mem::take(&mut events)));
                }
                runs.push(OpRun::Snapshot(s));
            }
            FollowerOp::Event(e) if changes_membership(e) => {
                if !events.is_empty() {
                    runs.push(OpRun::Events(std::mem::take(&mut events)));
                }
                runs.push(OpRun::Events(vec![(i, e)]));
            }
            FollowerOp::Event(e) => events.push((i, e)),
        }
    }
    if !events.is_empty() {
        runs.push(OpRun::Events(events));
    }
    runs
}

/// What a store read for the newly stored events of a run.
#[derive(Debug, Clone, Default)]
pub struct RunContext {
    /// Per chat, the users that must see its events (user ids): its current members,
    /// plus, for a membership event, the users it adds or removes.
    pub recipients: HashMap<ChatId, BTreeSet<String>>,
    /// The kinds of the run's chats (read only when `periods` is not empty).
    pub kinds: HashMap<ChatId, ChatKind>,
    /// Blocks of the run's senders.
    pub periods: Vec<BlockPeriod>,
    /// Local devices per user.
    pub devices: BTreeMap<String, Vec<DeviceId>>,
}

impl RunContext {
    /// Adds the users `e` adds or removes to its chat's recipients.
    pub fn add_membership_recipients(&mut self, e: &ChatEvent) {
        if let Some(change) = &e.membership {
            self.recipients
                .entry(e.chat_id.clone())
                .or_default()
                .extend(
                    change
                        .add
                        .iter()
                        .chain(&change.remove)
                        .map(UserId::to_string),
                );
        }
    }

    /// Every user named in `recipients`, for the device read.
    pub fn users(&self) -> BTreeSet<String> {
        self.recipients.values().flatten().cloned().collect()
    }
}

/// The inbox rows a run of newly stored events writes, in order: `(index in the ops,
/// device)` for each local device of each recipient of each event, except the sending
/// device and what a block withholds. Pure.
pub fn run_inbox(events: &[(usize, &ChatEvent)], ctx: &RunContext) -> Vec<(usize, DeviceId)> {
    let mut out = Vec::new();
    for (i, e) in events {
        let Some(recipients) = ctx.recipients.get(&e.chat_id) else {
            continue;
        };
        let kind = ctx.kinds.get(&e.chat_id).copied();
        for user in recipients {
            if let (Some(kind), false) = (kind, ctx.periods.is_empty())
                && UserId::try_from(user.as_str())
                    .is_ok_and(|u| super::blocks::event_withheld(&ctx.periods, &u, kind, e))
            {
                continue;
            }
            for device in ctx.devices.get(user).into_iter().flatten() {
                if *device != e.sender_device {
                    out.push((*i, device.clone()));
                }
            }
        }
    }
    out
}

/// The head of each chat after a run: `(chat, highest seq, latest ts, MLS epoch)`, the
/// epoch being one past the highest commit's (0 without commits). Sorted by chat. Pure.
pub fn run_heads(events: &[(usize, &ChatEvent)]) -> Vec<(ChatId, i64, i64, i64)> {
    let mut heads: BTreeMap<ChatId, (i64, i64, i64)> = BTreeMap::new();
    for (_, e) in events {
        let epoch = e
            .mls
            .filter(|m| m.kind == MlsKind::Commit)
            .map(|m| super::epoch_i64(m.epoch).saturating_add(1))
            .unwrap_or(0);
        let h = heads
            .entry(e.chat_id.clone())
            .or_insert((e.seq, e.ts, epoch));
        *h = (h.0.max(e.seq), h.1.max(e.ts), h.2.max(epoch));
    }
    heads
        .into_iter()
        .map(|(c, (seq, ts, epoch))| (c, seq, ts, epoch))
        .collect()
}

pub trait FedStore: Send + Sync + 'static {
    /// Appends rows; returns their ids in order.
    fn enqueue_outbox(
        &self,
        rows: &[NewOutboxRow],
        at: i64,
    ) -> impl Future<Output = Result<Vec<i64>>> + Send;
    /// A destination's pending rows committed after row `after` (0: all), oldest first.
    /// Where ids are not assigned in commit order (Postgres: a sequence value is taken
    /// before the transaction commits, so a lower id can commit later), `after` cannot
    /// say that: every pending row but those in `held` (the caller's, which it skips
    /// anyway). Each row comes with the size of what it refers to
    /// ([`OutboxRow::wire_bytes`]).
    fn outbox_rows(
        &self,
        destination: &str,
        after: i64,
        held: &[i64],
    ) -> impl Future<Output = Result<Vec<OutboxRow>>> + Send;
    /// The destinations that have rows.
    fn outbox_destinations(&self) -> impl Future<Output = Result<Vec<String>>> + Send;
    /// Rows queued per destination (destinations with rows only).
    fn outbox_depths(&self) -> impl Future<Output = Result<Vec<(String, i64)>>> + Send;
    fn outbox_delete(&self, ids: &[i64]) -> impl Future<Output = Result<()>> + Send;
    fn destinations(&self) -> impl Future<Output = Result<Vec<DestinationRow>>> + Send;
    fn save_destination(&self, row: &DestinationRow) -> impl Future<Output = Result<()>> + Send;
    /// Stored events by `(chat, seq)`, in the order asked (missing ones left out).
    fn events_by_seq(
        &self,
        refs: &[(ChatId, i64)],
    ) -> impl Future<Output = Result<Vec<ChatEvent>>> + Send;
    /// The chat's state with its head `seq`, for a snapshot.
    fn chat_snapshot(
        &self,
        chat_id: &ChatId,
    ) -> impl Future<Output = Result<Option<(ChatSnapshotRow, i64)>>> + Send;
    /// Which of these chats have a local copy (a row in `chats`).
    fn known_chats(&self, chat_ids: &[ChatId]) -> impl Future<Output = Result<Vec<ChatId>>> + Send;
    /// Applies what a received transaction carries for the store, in one database
    /// transaction: the hub's chat states and events (deduplicated on `(chat_id, seq)`,
    /// inbox rows for the local members' devices), then members' receipts (raised, never
    /// lowered; a receipt item for every local device of the chat's other members), and
    /// records the answer under `(origin, txn_id)` — so a resent transaction is either
    /// applied whole or answered from the record, never half.
    fn receive_transaction(
        &self,
        t: &Received<'_>,
        at: i64,
    ) -> impl Future<Output = Result<Applied>> + Send;
    /// The first response to `(origin, txn_id)`, if that transaction was answered.
    fn received_txn(
        &self,
        origin: &str,
        txn_id: &str,
    ) -> impl Future<Output = Result<Option<String>>> + Send;
    /// Deletes received-transaction rows older than `before` (ms); returns how many.
    fn purge_received(&self, before: i64) -> impl Future<Output = Result<u64>> + Send;
    /// Remembers `(origin, nonce)` until `window_end` (ms); false when it is already
    /// remembered with a window that has not ended at `now` (a replay).
    fn insert_nonce(
        &self,
        origin: &str,
        nonce: &str,
        window_end: i64,
        now: i64,
    ) -> impl Future<Output = Result<bool>> + Send;
    /// Forgets nonces whose window ended before `now`; returns how many.
    fn purge_nonces(&self, now: i64) -> impl Future<Output = Result<u64>> + Send;
    /// Writes send results into their devices' inboxes (a device that no longer exists
    /// gets none); returns `(index in rows, inbox id)` of each row written.
    fn record_send_results(
        &self,
        rows: &[SendResultRow],
        at: i64,
    ) -> impl Future<Output = Result<Vec<(usize, i64)>>> + Send;
    /// The oldest `limit` records of receipts that acks raised (`Store::commit_acks`
    /// with `fanout`), as `(record id, chat, member)`; a pair may come more than once.
    fn receipt_fanout(
        &self,
        limit: i64,
    ) -> impl Future<Output = Result<Vec<(i64, ChatId, UserId)>>> + Send;
    /// Forgets these fanout records (their receipts are in the outbox).
    fn receipt_fanout_done(&self, ids: &[i64]) -> impl Future<Output = Result<()>> + Send;
    /// Members' current receipts (one per `(chat, user)` that is a member).
    fn member_receipts(
        &self,
        pairs: &[(ChatId, UserId)],
    ) -> impl Future<Output = Result<Vec<(ChatId, Receipt)>>> + Send;
    /// Takes or renews the lease on driving `destination`'s outbox for `holder` until
    /// `until`; true when `holder` has it (it was free, expired, or already its own).
    fn take_lease(
        &self,
        destination: &str,
        holder: &str,
        now: i64,
        until: i64,
    ) -> impl Future<Output = Result<bool>> + Send;
    /// The servers (other than the chat's hub) with a current member in each chat.
    fn chat_followers(
        &self,
        chat_ids: &[ChatId],
    ) -> impl Future<Output = Result<Vec<(ChatId, Vec<String>)>>> + Send;
}

macro_rules! dispatch {
    ($self:ident, $s:ident => $e:expr) => {
        match $self {
            AnyStore::Postgres($s) => $e,
            AnyStore::Sqlite($s) => $e,
        }
    };
}

impl FedStore for AnyStore {
    async fn enqueue_outbox(&self, rows: &[NewOutboxRow], at: i64) -> Result<Vec<i64>> {
        dispatch!(self, s => s.enqueue_outbox(rows, at).await)
    }
    async fn outbox_rows(
        &self,
        destination: &str,
        after: i64,
        held: &[i64],
    ) -> Result<Vec<OutboxRow>> {
        dispatch!(self, s => s.outbox_rows(destination, after, held).await)
    }
    async fn outbox_destinations(&self) -> Result<Vec<String>> {
        dispatch!(self, s => s.outbox_destinations().await)
    }
    async fn outbox_depths(&self) -> Result<Vec<(String, i64)>> {
        dispatch!(self, s => s.outbox_depths().await)
    }
    async fn outbox_delete(&self, ids: &[i64]) -> Result<()> {
        dispatch!(self, s => s.outbox_delete(ids).await)
    }
    async fn destinations(&self) -> Result<Vec<DestinationRow>> {
        dispatch!(self, s => s.destinations().await)
    }
    async fn save_destination(&self, row: &DestinationRow) -> Result<()> {
        dispatch!(self, s => s.save_destination(row).await)
    }
    async fn events_by_seq(&self, refs: &[(ChatId, i64)]) -> Result<Vec<ChatEvent>> {
        dispatch!(self, s => s.events_by_seq(refs).await)
    }
    async fn chat_snapshot(&self, chat_id: &ChatId) -> Result<Option<(ChatSnapshotRow, i64)>> {
        dispatch!(self, s => s.chat_snapshot(chat_id).await)
    }
    async fn known_chats(&self, chat_ids: &[ChatId]) -> Result<Vec<ChatId>> {
        dispatch!(self, s => s.known_chats(chat_ids).await)
    }
    async fn receive_transaction(&self, t: &Received<'_>, at: i64) -> Result<Applied> {
        dispatch!(self, s => s.receive_transaction(t, at).await)
    }
    async fn received_txn(&self, origin: &str, txn_id: &str) -> Result<Option<String>> {
        dispatch!(self, s => s.received_txn(origin, txn_id).await)
    }
    async fn purge_received(&self, before: i64) -> Result<u64> {
        dispatch!(self, s => s.purge_received(before).await)
    }
    async fn insert_nonce(
        &self,
        origin: &str,
        nonce: &str,
        window_end: i64,
        now: i64,
    ) -> Result<bool> {
        dispatch!(self, s => s.insert_nonce(origin, nonce, window_end, now).await)
    }
    async fn purge_nonces(&self, now: i64) -> Result<u64> {
        dispatch!(self, s => s.purge_nonces(now).await)
    }
    async fn record_send_results(
        &self,
        rows: &[SendResultRow],
        at: i64,
    ) -> Result<Vec<(usize, i64)>> {
        dispatch!(self, s => s.record_send_results(rows, at).await)
    }
    async fn receipt_fanout(&self, limit: i64) -> Result<Vec<(i64, ChatId, UserId)>> {
        dispatch!(self, s => s.receipt_fanout(limit).await)
    }
    async fn receipt_fanout_done(&self, ids: &[i64]) -> Result<()> {
        dispatch!(self, s => s.receipt_fanout_done(ids).await)
    }
    async fn member_receipts(&self, pairs: &[(ChatId, UserId)]) -> Result<Vec<(ChatId, Receipt)>> {
        dispatch!(self, s => s.member_receipts(pairs).await)
    }
    async fn take_lease(
        &self,
        destination: &str,
        holder: &str,
        now: i64,
        until: i64,
    ) -> Result<bool> {
        dispatch!(self, s => s.take_lease(destination, holder, now, until).await)
    }
    async fn chat_followers(&self, chat_ids: &[ChatId]) -> Result<Vec<(ChatId, Vec<String>)>> {
        dispatch!(self, s => s.chat_followers(chat_ids).await)
    }
}

/// The outbox rows telling each follower of a new chat about it.
pub fn snapshot_rows(chat: &super::NewChat) -> Vec<NewOutboxRow> {
    chat.followers
        .iter()
        .map(|destination| NewOutboxRow {
            destination: destination.clone(),
            kind: OutboxKind::Snapshot,
            body: ChatRef::snapshot(&chat.chat_id),
        })
        .collect()
}

/// Direct chats are unique per pair: `"a\nb"` with the two members sorted.
pub fn direct_key(members: &[(UserId, bool)]) -> Option<String> {
    if members.len() != 2 {
        return None;
    }
    let mut pair = [members[0].0.as_str(), members[1].0.as_str()];
    pair.sort_unstable();
    Some(pair.join("\n"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use parley_client_api::Payload;

    fn chat(s: &str) -> ChatId {
        ChatId::try_from(format!("!{s}:hub.org")).unwrap()
    }
    fn snap(c: &str) -> ChatSnapshotRow {
        ChatSnapshotRow {
            chat_id: chat(c),
            kind: ChatKind::Group,
            name: None,
            mls_epoch: 0,
            created_by: UserId::try_from("@a:hub.org").unwrap(),
            created_at: 0,
            members: vec![],
            read_receipts: true,
        }
    }
    fn ev(c: &str, seq: i64) -> ChatEvent {
        ChatEvent {
            chat_id: chat(c),
            seq,
            sender: UserId::try_from("@a:hub.org").unwrap(),
            sender_device: DeviceId::try_from("D").unwrap(),
            client_msg_id: format!("m{seq}"),
            ts: 0,
            payload: Payload(vec![1]),
            mls: None,
            membership: None,
            blobs: vec![],
            expires_in: None,
            read_receipts: None,
        }
    }
    fn shape(ops: &[FollowerOp]) -> Vec<String> {
        ops.iter()
            .map(|op| match op {
                FollowerOp::Snapshot(s) => format!("S {}", s.chat_id),
                FollowerOp::Event(e) => format!("E {} {}", e.chat_id, e.seq),
            })
            .collect()
    }

    #[test]
    fn a_new_chat_state_comes_first_a_known_one_after_its_events() {
        let ops = order_follower_ops(
            vec![(snap("new"), 2), (snap("old"), 5)],
            vec![ev("old", 6), ev("new", 1), ev("old", 5), ev("new", 2)],
            &|c| c.as_str().starts_with("!old"),
        );
        assert_eq!(
            shape(&ops),
            [
                "S !new:hub.org",
                "E !new:hub.org 1",
                "E !new:hub.org 2",
                "E !old:hub.org 5",
                "S !old:hub.org",
                "E !old:hub.org 6",
            ]
        );
    }

    #[test]
    fn direct_key_is_order_independent() {
        let a = UserId::try_from("@a:x.org").unwrap();
        let b = UserId::try_from("@b:y.org").unwrap();
        assert_eq!(
            direct_key(&[(a.clone(), true), (b.clone(), false)]),
            direct_key(&[(b, false), (a, true)])
        );
    }

    fn user(s: &str) -> UserId {
        UserId::try_from(s).unwrap()
    }

    #[test]
    fn a_membership_event_and_a_chat_state_each_end_a_run() {
        let mut join = ev("a", 3);
        join.membership = Some(parley_client_api::http::chats::MembershipChange {
            add: vec![user("@c:x.org")],
            remove: vec![],
        });
        let ops = vec![
            FollowerOp::Event(ev("a", 1)),
            FollowerOp::Event(ev("b", 1)),
            FollowerOp::Event(join),
            FollowerOp::Event(ev("a", 4)),
            FollowerOp::Snapshot(snap("b")),
            FollowerOp::Event(ev("b", 2)),
        ];
        let shape: Vec<String> = op_runs(&ops)
            .iter()
            .map(|r| match r {
                OpRun::Snapshot(s) => format!("S {}", s.chat_id),
                OpRun::Events(es) => format!(
                    "E {}",
                    es.iter()
                        .map(|(i, _)| i.to_string())
                        .collect::<Vec<_>>()
                        .join(",")
                ),
            })
            .collect();
        assert_eq!(shape, ["E 0,1", "E 2", "E 3", "S !b:hub.org", "E 5"]);
    }

    #[test]
    fn a_run_reaches_every_recipient_device_but_the_senders_and_the_blocked() {
        let mut direct = ev("d", 7);
        direct.ts = 100;
        let group = ev("g", 2);
        let mut ctx = RunContext::default();
        for c in ["d", "g"] {
            ctx.recipients.insert(
                chat(c),
                ["@a:hub.org", "@b:x.org"]
                    .map(String::from)
                    .into_iter()
                    .collect(),
            );
        }
        let device = |d: &str| DeviceId::try_from(d).unwrap();
        // The sender's other device gets the event; the sending device does not.
        ctx.devices
            .insert("@a:hub.org".into(), vec![device("D"), device("D2")]);
        ctx.devices.insert("@b:x.org".into(), vec![device("B1")]);
        let run = [(4, &direct), (9, &group)];
        assert_eq!(
            run_inbox(&run, &ctx),
            [
                (4, device("D2")),
                (4, device("B1")),
                (9, device("D2")),
                (9, device("B1")),
            ]
        );
        // b blocked a before the direct message: b's device no longer gets it, but still
        // gets the group's (a block withholds a group's application messages only in
        // direct chats).
        ctx.periods = vec![BlockPeriod {
            blocker: user("@b:x.org"),
            blocked: user("@a:hub.org"),
            since: 50,
            until: None,
        }];
        ctx.kinds.insert(chat("d"), ChatKind::Direct);
        ctx.kinds.insert(chat("g"), ChatKind::Group);
        assert_eq!(
            run_inbox(&run, &ctx),
            [(4, device("D2")), (9, device("D2")), (9, device("B1"))]
        );
    }

    #[test]
    fn a_runs_heads_take_the_highest_seq_ts_and_the_epoch_after_the_last_commit() {
        use parley_client_api::http::chats::MlsMeta;
        let mut commit = ev("a", 2);
        commit.ts = 30;
        commit.mls = Some(MlsMeta {
            kind: MlsKind::Commit,
            epoch: 4,
        });
        let mut app = ev("a", 3);
        app.ts = 20;
        app.mls = Some(MlsMeta {
            kind: MlsKind::Application,
            epoch: 5,
        });
        let other = ev("b", 9);
        assert_eq!(
            run_heads(&[(0, &app), (1, &other), (2, &commit)]),
            [(chat("a"), 3, 30, 5), (chat("b"), 9, 0, 0)]
        );
    }
}
