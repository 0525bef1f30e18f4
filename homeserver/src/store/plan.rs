//! The pure decisions inside a store transaction: given what the backend read (under
//! the chat row locks), decide outcomes and the rows to write. No I/O, no clock.
//!
//! Invariant: a chat's sequence numbers are assigned here, consecutively from the head
//! the backend read, so a committed batch leaves no gap and no duplicate `seq`.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use parley_client_api::http::chats::{ChatKind, MlsKind, Receipt};
#[cfg(test)]
use parley_client_api::http::chats::{MembershipChange, MlsMeta};
use parley_client_api::{BlobHash, ChatId, DeviceId, UserId};

use super::SendRequest;

/// The result of one send of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendOutcome {
    /// Stored as `seq`; `recipients` are the inbox rows written (device, inbox id).
    Committed {
        seq: i64,
        ts: i64,
        recipients: Vec<(DeviceId, i64)>,
        /// Other servers the event was queued for (federation outbox).
        followers: Vec<String>,
    },
    /// The same device already sent this `client_msg_id` in this chat.
    Duplicate {
        seq: i64,
        ts: i64,
    },
    UnknownChat,
    NotMember,
    /// An MLS message for an epoch the hub does not accept now.
    WrongEpoch {
        current: u64,
    },
    /// A membership change names a user who does not exist.
    UnknownUser(UserId),
    /// The message refers to a blob that was never uploaded.
    UnknownBlob(BlobHash),
    /// Not allowed (the reason is shown to the client).
    Refused(String),
    /// The chat spans servers and the event would not fit one federation transaction
    /// (`size` bytes as it travels): followers could never get it.
    TooLargeToFederate {
        size: usize,
    },
}

/// A member as read inside the transaction.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Member {
    pub admin: bool,
    pub devices: Vec<DeviceId>,
}

/// A chat as read inside the transaction.
#[derive(Debug, Clone)]
pub struct ChatState {
    pub kind: ChatKind,
    pub last_seq: i64,
    pub mls_epoch: u64,
    /// Current members and their devices.
    pub members: BTreeMap<UserId, Member>,
}

/// The idempotency key of a send.
pub type SendKey = (ChatId, DeviceId, String);

pub fn send_key(r: &SendRequest) -> SendKey {
    (
        r.chat_id.clone(),
        r.sender_device.clone(),
        r.client_msg_id.clone(),
    )
}

/// An inbox row to insert for an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventInboxRow {
    pub device_id: DeviceId,
    pub chat_id: ChatId,
    pub seq: i64,
    pub sender: UserId,
}

/// A membership change to apply with an accepted commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MembershipOp {
    pub chat_id: ChatId,
    pub user_id: UserId,
    pub add: bool,
}

/// A chat's new head: sequence, time of the last event, MLS epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub chat_id: ChatId,
    pub last_seq: i64,
    pub last_ts: i64,
    pub mls_epoch: u64,
}

#[derive(Debug, Clone, Default)]
pub struct SendPlan {
    pub outcomes: Vec<SendOutcome>,
    /// New events: (index into the batch, seq).
    pub events: Vec<(usize, i64)>,
    pub inbox: Vec<EventInboxRow>,
    pub heads: Vec<Head>,
    pub membership: Vec<MembershipOp>,
    /// (chat, seq, blob): which events refer to which blobs.
    pub blob_refs: Vec<(ChatId, i64, BlobHash)>,
    /// Federation: (follower server, chat, seq, the event's size in a transaction) for
    /// each event a follower must receive.
    pub outbox: Vec<(String, ChatId, i64, usize)>,
    /// The chat's GroupInfo to keep, per accepted commit that carries one: (index into
    /// the batch, chat, the epoch the commit created), in the order accepted (a later
    /// one of the same chat replaces an earlier one).
    pub group_infos: Vec<(usize, ChatId, u64)>,
}

/// Decides every send of a batch, in order, as the hub: duplicates, membership, MLS
/// epochs (exactly one commit per epoch), sequence numbers, fan-out.
///
/// `existing` holds already stored sends by key; `users` the devices of every user a
/// membership change in the batch adds (absent: no such user); `max_members` caps a chat.
pub fn plan_sends(
    batch: &[SendRequest],
    existing: &HashMap<SendKey, (i64, i64)>,
    chats: &HashMap<ChatId, ChatState>,
    users: &HashMap<UserId, Vec<DeviceId>>,
    blobs: &HashSet<BlobHash>,
    max_members: usize,
) -> SendPlan {
    let mut plan = SendPlan::default();
    let mut state: BTreeMap<ChatId, (ChatState, i64)> = BTreeMap::new();
    let mut in_batch: HashMap<SendKey, (i64, i64)> = HashMap::new();
    for (i, req) in batch.iter().enumerate() {
        let key = send_key(req);
        if let Some(&(seq, ts)) = existing.get(&key).or_else(|| in_batch.get(&key)) {
            plan.outcomes.push(SendOutcome::Duplicate { seq, ts });
            continue;
        }
        if !state.contains_key(&req.chat_id) {
            let Some(chat) = chats.get(&req.chat_id) else {
                plan.outcomes.push(SendOutcome::UnknownChat);
                continue;
            };
            state.insert(req.chat_id.clone(), (chat.clone(), req.ts));
        }
        let Some((chat, last_ts)) = state.get_mut(&req.chat_id) else {
            continue;
        };
        // A local sender's blobs are stored here (its service checked that the sender
        // may refer to them); a remote sender's live on its server, which checked the
        // same before forwarding the send: the hub records the reference only.
        let local_sender = req.sender.server_name() == req.chat_id.hub();
        let outcome = check_send(req, chat, users, max_members).or_else(|| {
            req.blobs
                .iter()
                .find(|b| local_sender && !blobs.contains(*b))
                .map(|b| SendOutcome::UnknownBlob(b.clone()))
        });
        if let Some(refusal) = outcome {
            plan.outcomes.push(refusal);
            continue;
        }
        // Followers: every other server with a member before the change or one it adds
        // (a removed member's server learns of the removal). The event must fit one
        // transaction to reach them.
        let change = req.membership.clone().unwrap_or_default();
        let hub = req.chat_id.hub();
        let followers: BTreeSet<String> = chat
            .members
            .keys()
            .chain(change.add.iter())
            .map(UserId::server_name)
            .filter(|s| *s != hub)
            .map(str::to_owned)
            .collect();
        let bytes = if followers.is_empty() {
            0
        } else {
            req.event_wire_bytes()
        };
        if bytes > parley_federation::api::send::MAX_BATCH_BYTES {
            plan.outcomes
                .push(SendOutcome::TooLargeToFederate { size: bytes });
            continue;
        }
        chat.last_seq += 1;
        *last_ts = req.ts;
        let seq = chat.last_seq;
        if req.mls.is_some_and(|m| m.kind == MlsKind::Commit) {
            chat.mls_epoch += 1;
            if req.group_info.is_some() {
                plan.group_infos
                    .push((i, req.chat_id.clone(), chat.mls_epoch));
            }
        }
        plan.events.push((i, seq));
        in_batch.insert(key, (seq, req.ts));
        let unique: BTreeSet<&BlobHash> = req.blobs.iter().collect();
        plan.blob_refs.extend(
            unique
                .into_iter()
                .map(|b| (req.chat_id.clone(), seq, b.clone())),
        );
        // Fan out to the members before the change and to those it adds (they need the
        // commit's Welcome); then apply the change.
        let added = change
            .add
            .iter()
            .map(|u| (u, users.get(u).cloned().unwrap_or_default()));
        let recipients: Vec<DeviceId> = chat
            .members
            .values()
            .flat_map(|m| m.devices.iter().cloned())
            .chain(added.clone().flat_map(|(_, devices)| devices))
            .collect();
        plan.outbox.extend(
            followers
                .into_iter()
                .map(|s| (s, req.chat_id.clone(), seq, bytes)),
        );
        for device in recipients {
            if device != req.sender_device {
                plan.inbox.push(EventInboxRow {
                    device_id: device,
                    chat_id: req.chat_id.clone(),
                    seq,
                    sender: req.sender.clone(),
                });
            }
        }
        for (user, devices) in added {
            chat.members.insert(
                user.clone(),
                Member {
                    admin: false,
                    devices,
                },
            );
            plan.membership.push(MembershipOp {
                chat_id: req.chat_id.clone(),
                user_id: user.clone(),
                add: true,
            });
        }
        for user in &change.remove {
            chat.members.remove(user);
            plan.membership.push(MembershipOp {
                chat_id: req.chat_id.clone(),
                user_id: user.clone(),
                add: false,
            });
        }
        plan.outcomes.push(SendOutcome::Committed {
            seq,
            ts: req.ts,
            recipients: Vec::new(),
            followers: plan
                .outbox
                .iter()
                .filter(|(_, c, s, _)| *s == seq && *c == req.chat_id)
                .map(|(d, _, _, _)| d.clone())
                .collect(),
        });
    }
    plan.heads = state
        .into_iter()
        .filter(|(id, (chat, _))| chats.get(id).is_some_and(|c| c.last_seq != chat.last_seq))
        .map(|(chat_id, (chat, last_ts))| Head {
            chat_id,
            last_seq: chat.last_seq,
            last_ts,
            mls_epoch: chat.mls_epoch,
        })
        .collect();
    plan
}

/// Why the hub refuses a send, if it does.
fn check_send(
    req: &SendRequest,
    chat: &ChatState,
    users: &HashMap<UserId, Vec<DeviceId>>,
    max_members: usize,
) -> Option<SendOutcome> {
    let Some(sender) = chat.members.get(&req.sender) else {
        return Some(SendOutcome::NotMember);
    };
    if req.read_receipts.is_some() && chat.kind == ChatKind::Group && !sender.admin {
        return Some(SendOutcome::Refused(
            "only admins change a group's read-receipt policy".into(),
        ));
    }
    if let Some(mls) = req.mls {
        // Every kind: the current epoch only (see `MlsMeta`).
        let current = chat.mls_epoch;
        if mls.epoch != current {
            return Some(SendOutcome::WrongEpoch { current });
        }
    }
    let Some(change) = &req.membership else {
        return None;
    };
    let kind = req.mls.map(|m| m.kind);
    if kind != Some(MlsKind::Commit) && kind != Some(MlsKind::Proposal) {
        return Some(SendOutcome::Refused(
            "a membership change travels with the MLS commit that makes it".into(),
        ));
    }
    if chat.kind == ChatKind::Direct {
        return Some(SendOutcome::Refused(
            "a 1:1 chat's members are fixed".into(),
        ));
    }
    // MLS forbids a Commit that removes its committer: a member leaves with a Proposal
    // removing its own leaf (which another member commits), and that Proposal may carry
    // nothing but the sender's own departure.
    let own_leave = change.add.is_empty() && change.remove == [req.sender.clone()];
    if kind == Some(MlsKind::Proposal) {
        if !own_leave {
            return Some(SendOutcome::Refused(
                "a proposal's membership change can only be its sender leaving".into(),
            ));
        }
    } else if !sender.admin {
        return Some(SendOutcome::Refused(
            "only admins add or remove members".into(),
        ));
    } else if change.remove.contains(&req.sender) {
        return Some(SendOutcome::Refused(
            "a commit cannot remove its committer: leave with a proposal".into(),
        ));
    }
    for user in &change.add {
        // A remote user's server vouched for them when their KeyPackages were claimed.
        if !users.contains_key(user) && user.server_name() == req.chat_id.hub() {
            return Some(SendOutcome::UnknownUser(user.clone()));
        }
        if chat.members.contains_key(user) {
            return Some(SendOutcome::Refused(format!("{user} is already a member")));
        }
    }
    for user in &change.remove {
        if !chat.members.contains_key(user) {
            return Some(SendOutcome::Refused(format!("{user} is not a member")));
        }
    }
    let unique_adds: std::collections::BTreeSet<_> = change.add.iter().collect();
    if unique_adds.len() != change.add.len() {
        return Some(SendOutcome::Refused("a user is added twice".into()));
    }
    if chat.members.len() + change.add.len() - change.remove.len().min(chat.members.len())
        > max_members
    {
        return Some(SendOutcome::Refused(format!(
            "a chat has at most {max_members} members"
        )));
    }
    None
}

impl SendPlan {
    /// The federation outbox rows for the planned events.
    pub fn outbox_rows(&self) -> Vec<super::fed::NewOutboxRow> {
        self.outbox
            .iter()
            .map(|(destination, chat, seq, bytes)| super::fed::NewOutboxRow {
                destination: destination.clone(),
                kind: super::fed::OutboxKind::Event,
                body: super::fed::ChatRef::event(chat, *seq, *bytes),
            })
            .collect()
    }

    /// Fills in the inbox ids the backend got back: `(inbox id, device, chat, seq)`.
    pub fn finish(
        mut self,
        batch: &[SendRequest],
        ids: impl IntoIterator<Item = (i64, DeviceId, ChatId, i64)>,
    ) -> Vec<SendOutcome> {
        let mut by_event: HashMap<(ChatId, i64), Vec<(DeviceId, i64)>> = HashMap::new();
        for (id, device, chat, seq) in ids {
            by_event.entry((chat, seq)).or_default().push((device, id));
        }
        for (i, seq) in &self.events {
            if let SendOutcome::Committed { recipients, .. } = &mut self.outcomes[*i]
                && let Some(mut r) = by_event.remove(&(batch[*i].chat_id.clone(), *seq))
            {
                r.sort_by_key(|(_, id)| *id);
                *recipients = r;
            }
        }
        self.outcomes
    }
}

/// An inbox row removed by an acknowledgement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AckedRow {
    /// The acknowledging member.
    pub user_id: UserId,
    pub chat_id: ChatId,
    pub kind: i16,
    pub seq: i64,
    /// The event's sender (for event rows).
    pub sender: UserId,
}

/// Which delivered receipts to raise, and whom to tell if they rise.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AckPlan {
    /// (chat, member) → highest acknowledged seq.
    pub delivered: BTreeMap<(ChatId, UserId), i64>,
    /// (chat, member) → the senders of the acknowledged events (never the member).
    pub notify: BTreeMap<(ChatId, UserId), BTreeSet<UserId>>,
}

/// Folds acknowledged rows into receipt raises: a receipt for `n` covers all earlier
/// events, so only the highest seq per (chat, member) matters. Receipt rows acknowledge
/// nothing.
pub fn plan_acks(rows: &[AckedRow]) -> AckPlan {
    let mut plan = AckPlan::default();
    for row in rows {
        if row.kind != super::INBOX_EVENT || row.sender == row.user_id {
            continue;
        }
        let key = (row.chat_id.clone(), row.user_id.clone());
        let max = plan.delivered.entry(key.clone()).or_insert(0);
        *max = (*max).max(row.seq);
        plan.notify
            .entry(key)
            .or_default()
            .insert(row.sender.clone());
    }
    plan
}

/// A receipt change for a device's inbox (before it has an id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiptRow {
    pub device_id: DeviceId,
    pub chat_id: ChatId,
    pub receipt: Receipt,
}

/// For each changed receipt `(chat, receipt)`, one row per device of each user in
/// `notify[(chat, receipt.user_id)]`, skipping `except_device` (the device that caused
/// the change).
pub fn receipt_rows(
    changed: &[(ChatId, Receipt)],
    notify: &BTreeMap<(ChatId, UserId), BTreeSet<UserId>>,
    devices_of: &HashMap<UserId, Vec<DeviceId>>,
    except_device: Option<&DeviceId>,
) -> Vec<ReceiptRow> {
    let mut rows = Vec::new();
    for (chat_id, receipt) in changed {
        let Some(users) = notify.get(&(chat_id.clone(), receipt.user_id.clone())) else {
            continue;
        };
        for user in users {
            for device in devices_of.get(user).into_iter().flatten() {
                if Some(device) != except_device {
                    rows.push(ReceiptRow {
                        device_id: device.clone(),
                        chat_id: chat_id.clone(),
                        receipt: receipt.clone(),
                    });
                }
            }
        }
    }
    rows
}

/// Receipts another server reported, folded to the highest per `(chat, member)` and
/// sorted (so concurrent writers lock members' rows in one order). Pure.
pub fn fold_receipts(receipts: &[(ChatId, Receipt)]) -> Vec<(ChatId, Receipt)> {
    let mut folded: BTreeMap<(ChatId, UserId), (i64, i64)> = BTreeMap::new();
    for (chat, r) in receipts {
        let e = folded
            .entry((chat.clone(), r.user_id.clone()))
            .or_insert((r.delivered_seq, r.read_seq));
        *e = (e.0.max(r.delivered_seq), e.1.max(r.read_seq));
    }
    folded
        .into_iter()
        .map(|((chat, user_id), (delivered_seq, read_seq))| {
            (
                chat,
                Receipt {
                    user_id,
                    delivered_seq,
                    read_seq,
                },
            )
        })
        .collect()
}

/// Who hears of a member's receipt that another server reported: the chat's other
/// current members (`members`: `(chat, member)` pairs). Pure.
pub fn notify_other_members(
    changed: &[(ChatId, Receipt)],
    members: &[(ChatId, UserId)],
) -> BTreeMap<(ChatId, UserId), BTreeSet<UserId>> {
    let mut of_chat: BTreeMap<&ChatId, BTreeSet<&UserId>> = BTreeMap::new();
    for (chat, user) in members {
        of_chat.entry(chat).or_default().insert(user);
    }
    changed
        .iter()
        .map(|(chat, r)| {
            let others = of_chat
                .get(chat)
                .into_iter()
                .flatten()
                .filter(|u| **u != &r.user_id)
                .map(|u| (*u).clone())
                .collect();
            ((chat.clone(), r.user_id.clone()), others)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u(s: &str) -> UserId {
        UserId::try_from(format!("@{s}:x.org")).unwrap()
    }
    fn d(s: &str) -> DeviceId {
        DeviceId::try_from(s).unwrap()
    }
    fn c(s: &str) -> ChatId {
        ChatId::try_from(format!("!{s}:x.org")).unwrap()
    }
    fn req(chat: &str, user: &str, dev: &str, id: &str, ts: i64) -> SendRequest {
        SendRequest {
            chat_id: c(chat),
            sender: u(user),
            sender_device: d(dev),
            client_msg_id: id.into(),
            payload: vec![1],
            ts,
            mls: None,
            membership: None,
            blobs: Vec::new(),
            expires_in: None,
            read_receipts: None,
            group_info: None,
        }
    }
    fn chat(last: i64, members: &[(&str, &[&str])]) -> ChatState {
        ChatState {
            kind: ChatKind::Group,
            last_seq: last,
            mls_epoch: 0,
            members: members
                .iter()
                .enumerate()
                .map(|(i, (m, ds))| {
                    (
                        u(m),
                        Member {
                            admin: i == 0,
                            devices: ds.iter().map(|x| d(x)).collect(),
                        },
                    )
                })
                .collect(),
        }
    }
    fn plan(batch: &[SendRequest], chats: &HashMap<ChatId, ChatState>) -> SendPlan {
        let users = HashMap::from([(u("dave"), vec![d("D1"), d("D2")])]);
        plan_sends(batch, &HashMap::new(), chats, &users, &HashSet::new(), 4)
    }
    fn mls(kind: MlsKind, epoch: u64) -> Option<MlsMeta> {
        Some(MlsMeta { kind, epoch })
    }

    #[test]
    fn assigns_consecutive_seqs_per_chat_and_fans_out() {
        let chats = HashMap::from([
            (
                c("a"),
                chat(5, &[("alice", &["A1", "A2"]), ("bob", &["B1"])]),
            ),
            (c("b"), chat(0, &[("alice", &["A1"]), ("carol", &["C1"])])),
        ]);
        let batch = [
            req("a", "alice", "A1", "m1", 10),
            req("b", "alice", "A1", "m2", 11),
            req("a", "bob", "B1", "m3", 12),
        ];
        let plan = plan(&batch, &chats);
        assert_eq!(plan.events, vec![(0, 6), (1, 1), (2, 7)]);
        let heads: Vec<_> = plan
            .heads
            .iter()
            .map(|h| (h.chat_id.clone(), h.last_seq, h.last_ts))
            .collect();
        assert_eq!(heads, vec![(c("a"), 7, 12), (c("b"), 1, 11)]);
        let targets: Vec<_> = plan
            .inbox
            .iter()
            .map(|r| (r.device_id.as_str(), r.seq))
            .collect();
        // alice's other device and bob for m1; carol for m2; alice's two for m3.
        assert_eq!(
            targets,
            vec![("A2", 6), ("B1", 6), ("C1", 1), ("A1", 7), ("A2", 7)]
        );
    }

    #[test]
    fn an_event_too_large_to_federate_is_refused_only_where_the_chat_spans_servers() {
        let remote = UserId::try_from("@bob:y.org").unwrap();
        let mut across = chat(3, &[("alice", &["A1"])]);
        across.members.insert(remote, Member::default());
        let chats = HashMap::from([
            (c("across"), across),
            (
                c("local"),
                chat(3, &[("alice", &["A1"]), ("carol", &["C1"])]),
            ),
        ]);
        let big = |chat: &str, id: &str| SendRequest {
            payload: vec![7; 900 * 1024],
            ..req(chat, "alice", "A1", id, 10)
        };
        let batch = [
            big("across", "big"),
            req("across", "alice", "A1", "small", 11),
            big("local", "big"),
        ];
        let plan = plan(&batch, &chats);
        let size = batch[0].event_wire_bytes();
        assert!(size > parley_federation::api::send::MAX_BATCH_BYTES);
        assert_eq!(plan.outcomes[0], SendOutcome::TooLargeToFederate { size });
        // No seq was taken: the next send of that chat is 4; the one-server chat takes it.
        assert_eq!(plan.events, vec![(1, 4), (2, 4)]);
        let queued: Vec<_> = plan
            .outbox
            .iter()
            .map(|(d, _, s, _)| (d.as_str(), *s))
            .collect();
        assert_eq!(queued, vec![("y.org", 4)]);
    }

    #[test]
    fn duplicates_unknown_chats_and_non_members() {
        let chats = HashMap::from([(c("a"), chat(1, &[("alice", &["A1"]), ("bob", &["B1"])]))]);
        let existing = HashMap::from([((c("a"), d("A1"), "old".to_string()), (1, 5))]);
        let batch = [
            req("a", "alice", "A1", "old", 10),
            req("a", "alice", "A1", "new", 11),
            req("a", "alice", "A1", "new", 12),
            req("zz", "alice", "A1", "x", 13),
            req("a", "eve", "E1", "y", 14),
        ];
        let plan = plan_sends(
            &batch,
            &existing,
            &chats,
            &HashMap::new(),
            &HashSet::new(),
            10,
        );
        let outcomes = plan.finish(&batch, [(100, d("B1"), c("a"), 2)]);
        assert_eq!(
            outcomes,
            vec![
                SendOutcome::Duplicate { seq: 1, ts: 5 },
                SendOutcome::Committed {
                    seq: 2,
                    ts: 11,
                    recipients: vec![(d("B1"), 100)],
                    followers: vec![],
                },
                SendOutcome::Duplicate { seq: 2, ts: 11 },
                SendOutcome::UnknownChat,
                SendOutcome::NotMember,
            ]
        );
    }

    #[test]
    fn one_commit_per_epoch_and_messages_only_in_the_current_epoch() {
        let mut group = chat(0, &[("alice", &["A1"]), ("bob", &["B1"])]);
        group.mls_epoch = 5;
        let chats = HashMap::from([(c("g"), group)]);
        let with = |mut r: SendRequest, m| {
            r.mls = m;
            r
        };
        let batch = [
            with(req("g", "alice", "A1", "c1", 1), mls(MlsKind::Commit, 5)),
            // Bob committed in the same epoch: stale once Alice's commit is in.
            with(req("g", "bob", "B1", "c2", 2), mls(MlsKind::Commit, 5)),
            with(req("g", "bob", "B1", "c3", 3), mls(MlsKind::Commit, 6)),
            with(
                req("g", "alice", "A1", "a1", 4),
                mls(MlsKind::Application, 7),
            ),
            // Made before Bob's commit (which could have added a member): refused.
            with(
                req("g", "alice", "A1", "a2", 5),
                mls(MlsKind::Application, 6),
            ),
            with(
                req("g", "alice", "A1", "a3", 6),
                mls(MlsKind::Application, 3),
            ),
            with(
                req("g", "alice", "A1", "a4", 7),
                mls(MlsKind::Application, 8),
            ),
            with(req("g", "alice", "A1", "p1", 8), mls(MlsKind::Proposal, 6)),
        ];
        let p = plan(&batch, &chats);
        let kinds: Vec<_> = p
            .outcomes
            .iter()
            .map(|o| match o {
                SendOutcome::Committed { seq, .. } => format!("ok{seq}"),
                SendOutcome::WrongEpoch { current } => format!("wrong{current}"),
                other => format!("{other:?}"),
            })
            .collect();
        assert_eq!(
            kinds,
            [
                "ok1", "wrong6", "ok2", "ok3", "wrong7", "wrong7", "wrong7", "wrong7"
            ]
        );
        assert_eq!(p.heads[0].mls_epoch, 7);
    }

    #[test]
    fn the_group_info_of_accepted_commits_only_and_external_commits_of_members_only() {
        let mut group = chat(0, &[("alice", &["A1"]), ("bob", &["B1", "B2"])]);
        group.mls_epoch = 2;
        let chats = HashMap::from([(c("g"), group)]);
        let commit = |user, dev, id, epoch, info: Option<&[u8]>| SendRequest {
            mls: mls(MlsKind::Commit, epoch),
            group_info: info.map(<[u8]>::to_vec),
            ..req("g", user, dev, id, 1)
        };
        let batch = [
            // Bob's new device (no leaf yet) joins by external commit: a member's.
            commit("bob", "B2", "ext", 2, Some(b"gi3")),
            // A commit that lost epoch 2: its GroupInfo is not kept.
            commit("alice", "A1", "lost", 2, Some(b"stale")),
            // Mallory is no member: her (external) commit is refused.
            commit("mallory", "M1", "evil", 3, Some(b"evil")),
            commit("alice", "A1", "next", 3, Some(b"gi4")),
            commit("alice", "A1", "bare", 4, None),
        ];
        let p = plan(&batch, &chats);
        assert_eq!(p.events, vec![(0, 1), (3, 2), (4, 3)]);
        assert!(matches!(
            p.outcomes[1],
            SendOutcome::WrongEpoch { current: 3 }
        ));
        assert_eq!(p.outcomes[2], SendOutcome::NotMember);
        assert_eq!(p.group_infos, vec![(0, c("g"), 3), (3, c("g"), 4)]);
        assert_eq!(p.heads[0].mls_epoch, 5);
        // The external commit reaches every other device, the committer's own user's too.
        let first: Vec<_> = p
            .inbox
            .iter()
            .filter(|r| r.seq == 1)
            .map(|r| r.device_id.as_str())
            .collect();
        assert_eq!(first, ["A1", "B1"]);
    }

    #[test]
    fn membership_changes_need_an_admin_commit_and_fan_out_to_joiners() {
        let chats = HashMap::from([(
            c("g"),
            chat(
                0,
                &[("alice", &["A1"]), ("bob", &["B1"]), ("carol", &["C1"])],
            ),
        )]);
        let change = |r: SendRequest, add: &[&str], remove: &[&str]| SendRequest {
            mls: mls(MlsKind::Commit, 0),
            membership: Some(MembershipChange {
                add: add.iter().map(|x| u(x)).collect(),
                remove: remove.iter().map(|x| u(x)).collect(),
            }),
            ..r
        };
        // A non-admin may not add; an unknown user cannot be added.
        let p = plan(
            &[change(req("g", "bob", "B1", "x", 1), &["dave"], &[])],
            &chats,
        );
        assert!(matches!(p.outcomes[0], SendOutcome::Refused(_)));
        let p = plan(
            &[change(req("g", "alice", "A1", "x", 1), &["zed"], &[])],
            &chats,
        );
        assert_eq!(p.outcomes[0], SendOutcome::UnknownUser(u("zed")));
        // Too many members (limit 4).
        let mut big = change(req("g", "alice", "A1", "x", 1), &["dave"], &[]);
        big.membership = Some(MembershipChange {
            add: vec![u("dave"), u("erin")],
            remove: vec![],
        });
        let users = HashMap::from([(u("dave"), vec![]), (u("erin"), vec![])]);
        let p = plan_sends(&[big], &HashMap::new(), &chats, &users, &HashSet::new(), 4);
        assert!(matches!(p.outcomes[0], SendOutcome::Refused(_)));

        // Alice adds dave and removes carol: dave's devices get the commit; carol gets it
        // too (she learns she is out) but nothing after; her later send is refused.
        let batch = [
            change(req("g", "alice", "A1", "c1", 1), &["dave"], &["carol"]),
            req("g", "alice", "A1", "m1", 2),
            req("g", "carol", "C1", "m2", 3),
        ];
        let p = plan(&batch, &chats);
        let to = |seq| -> Vec<&str> {
            p.inbox
                .iter()
                .filter(|r| r.seq == seq)
                .map(|r| r.device_id.as_str())
                .collect()
        };
        assert_eq!(to(1), ["B1", "C1", "D1", "D2"]);
        assert_eq!(to(2), ["B1", "D1", "D2"]);
        assert_eq!(p.outcomes[2], SendOutcome::NotMember);
        assert_eq!(p.membership.len(), 2);
        // Anyone may leave, with a proposal removing themselves (and nobody else); a
        // commit cannot remove its committer, and a non-admin's commit removes nobody.
        let leave = |r: SendRequest, remove: &[&str]| SendRequest {
            mls: mls(MlsKind::Proposal, 0),
            ..change(r, &[], remove)
        };
        let p = plan(&[leave(req("g", "bob", "B1", "x", 1), &["bob"])], &chats);
        assert!(matches!(p.outcomes[0], SendOutcome::Committed { .. }));
        assert_eq!(to_members(&p), [("bob", false)]);
        assert_eq!(p.heads[0].mls_epoch, 0, "a proposal does not end the epoch");
        for refused in [
            leave(req("g", "bob", "B1", "x", 1), &["carol"]),
            leave(req("g", "bob", "B1", "x", 1), &["bob", "carol"]),
            change(req("g", "bob", "B1", "x", 1), &[], &["bob"]),
            change(req("g", "alice", "A1", "x", 1), &[], &["alice"]),
        ] {
            let p = plan(&[refused], &chats);
            assert!(matches!(p.outcomes[0], SendOutcome::Refused(_)), "{p:?}");
        }
        // After leaving, bob's sends are refused.
        let p = plan(
            &[
                leave(req("g", "bob", "B1", "x", 1), &["bob"]),
                req("g", "bob", "B1", "y", 2),
            ],
            &chats,
        );
        assert_eq!(p.outcomes[1], SendOutcome::NotMember);
    }

    fn to_members(p: &SendPlan) -> Vec<(&str, bool)> {
        p.membership
            .iter()
            .map(|m| {
                let name = m.user_id.as_str();
                (&name[1..name.find(':').unwrap_or(name.len())], m.add)
            })
            .collect()
    }

    #[test]
    fn acks_fold_to_the_highest_seq_and_ignore_own_and_receipt_rows() {
        let row = |user: &str, seq, sender: &str, kind| AckedRow {
            user_id: u(user),
            chat_id: c("a"),
            kind,
            seq,
            sender: u(sender),
        };
        let plan = plan_acks(&[
            row("bob", 3, "alice", 0),
            row("bob", 7, "carol", 0),
            row("bob", 5, "alice", 0),
            row("bob", 9, "bob", 0),
            row("bob", 12, "alice", 1),
        ]);
        assert_eq!(plan.delivered, BTreeMap::from([((c("a"), u("bob")), 7)]));
        assert_eq!(
            plan.notify[&(c("a"), u("bob"))],
            BTreeSet::from([u("alice"), u("carol")])
        );
        let receipt = Receipt {
            user_id: u("bob"),
            delivered_seq: 7,
            read_seq: 0,
        };
        let devices = HashMap::from([
            (u("alice"), vec![d("A1"), d("A2")]),
            (u("carol"), vec![d("C1")]),
        ]);
        let rows = receipt_rows(
            &[(c("a"), receipt.clone())],
            &plan.notify,
            &devices,
            Some(&d("A2")),
        );
        let to: Vec<_> = rows.iter().map(|r| r.device_id.as_str()).collect();
        assert_eq!(to, vec!["A1", "C1"]);
    }

    #[test]
    fn remote_receipts_fold_to_the_highest_and_reach_the_other_members() {
        let r = |user: &str, delivered_seq, read_seq| Receipt {
            user_id: u(user),
            delivered_seq,
            read_seq,
        };
        let folded = fold_receipts(&[
            (c("a"), r("bob", 5, 2)),
            (c("a"), r("bob", 4, 3)),
            (c("a"), r("al", 1, 0)),
        ]);
        assert_eq!(folded, [(c("a"), r("al", 1, 0)), (c("a"), r("bob", 5, 3))]);
        let notify = notify_other_members(
            &folded[1..],
            &[(c("a"), u("al")), (c("a"), u("bob")), (c("b"), u("cy"))],
        );
        assert_eq!(
            notify,
            BTreeMap::from([((c("a"), u("bob")), BTreeSet::from([u("al")]))])
        );
    }
}
