//! The pure decisions inside a store transaction: given what the backend read (under
//! the chat row locks), decide outcomes and the rows to write. No I/O, no clock.
//!
//! Invariant: a chat's sequence numbers are assigned here, consecutively from the head
//! the backend read, so a committed batch leaves no gap and no duplicate `seq`.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use parley_client_api::http::chats::Receipt;
use parley_client_api::{ChatId, DeviceId, UserId};

use super::SendRequest;

/// The result of one send of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendOutcome {
    /// Stored as `seq`; `recipients` are the inbox rows written (device, inbox id).
    Committed {
        seq: i64,
        ts: i64,
        recipients: Vec<(DeviceId, i64)>,
    },
    /// The same device already sent this `client_msg_id` in this chat.
    Duplicate {
        seq: i64,
        ts: i64,
    },
    UnknownChat,
    NotMember,
}

/// A chat as read inside the transaction.
#[derive(Debug, Clone, Default)]
pub struct ChatState {
    pub last_seq: i64,
    /// Current members and their devices.
    pub members: BTreeMap<UserId, Vec<DeviceId>>,
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

#[derive(Debug, Clone, Default)]
pub struct SendPlan {
    pub outcomes: Vec<SendOutcome>,
    /// New events: (index into the batch, seq).
    pub events: Vec<(usize, i64)>,
    pub inbox: Vec<EventInboxRow>,
    /// New chat heads: (chat, last_seq, last_ts).
    pub heads: Vec<(ChatId, i64, i64)>,
}

/// Decides every send of a batch. `existing` holds already stored sends by key.
pub fn plan_sends(
    batch: &[SendRequest],
    existing: &HashMap<SendKey, (i64, i64)>,
    chats: &HashMap<ChatId, ChatState>,
) -> SendPlan {
    let mut plan = SendPlan::default();
    let mut heads: BTreeMap<ChatId, (i64, i64)> = BTreeMap::new();
    let mut in_batch: HashMap<SendKey, (i64, i64)> = HashMap::new();
    for (i, req) in batch.iter().enumerate() {
        let key = send_key(req);
        if let Some(&(seq, ts)) = existing.get(&key).or_else(|| in_batch.get(&key)) {
            plan.outcomes.push(SendOutcome::Duplicate { seq, ts });
            continue;
        }
        let Some(chat) = chats.get(&req.chat_id) else {
            plan.outcomes.push(SendOutcome::UnknownChat);
            continue;
        };
        if !chat.members.contains_key(&req.sender) {
            plan.outcomes.push(SendOutcome::NotMember);
            continue;
        }
        let head = heads
            .entry(req.chat_id.clone())
            .or_insert((chat.last_seq, req.ts));
        head.0 += 1;
        head.1 = req.ts;
        let seq = head.0;
        plan.events.push((i, seq));
        in_batch.insert(key, (seq, req.ts));
        for devices in chat.members.values() {
            for device in devices {
                if *device != req.sender_device {
                    plan.inbox.push(EventInboxRow {
                        device_id: device.clone(),
                        chat_id: req.chat_id.clone(),
                        seq,
                        sender: req.sender.clone(),
                    });
                }
            }
        }
        plan.outcomes.push(SendOutcome::Committed {
            seq,
            ts: req.ts,
            recipients: Vec::new(),
        });
    }
    plan.heads = heads
        .into_iter()
        .map(|(chat, (seq, ts))| (chat, seq, ts))
        .collect();
    plan
}

impl SendPlan {
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
        }
    }
    fn chat(last: i64, members: &[(&str, &[&str])]) -> ChatState {
        ChatState {
            last_seq: last,
            members: members
                .iter()
                .map(|(m, ds)| (u(m), ds.iter().map(|x| d(x)).collect()))
                .collect(),
        }
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
        let plan = plan_sends(&batch, &HashMap::new(), &chats);
        assert_eq!(plan.events, vec![(0, 6), (1, 1), (2, 7)]);
        assert_eq!(plan.heads, vec![(c("a"), 7, 12), (c("b"), 1, 11)]);
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
        let plan = plan_sends(&batch, &existing, &chats);
        let outcomes = plan.finish(&batch, [(100, d("B1"), c("a"), 2)]);
        assert_eq!(
            outcomes,
            vec![
                SendOutcome::Duplicate { seq: 1, ts: 5 },
                SendOutcome::Committed {
                    seq: 2,
                    ts: 11,
                    recipients: vec![(d("B1"), 100)]
                },
                SendOutcome::Duplicate { seq: 2, ts: 11 },
                SendOutcome::UnknownChat,
                SendOutcome::NotMember,
            ]
        );
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
}
