//! Group chats: create, add and remove members, leave, rename, admins, members.
//!
//! A group is a chat like any other: one MLS group, one leaf per device, events in the
//! hub's `seq` order through the same engine as 1:1 chats. A membership change is one
//! MLS Commit sent with `membership: {add|remove}`, which the hub applies in the same
//! transaction that sequences the Commit (admins only, except removing oneself).
//!
//! The SDK call sends its Commit itself over HTTP to learn the outcome (the socket
//! leaves it alone meanwhile, and the chat's messages wait behind it): accepted → the
//! Commit is merged in `seq` order; `wrong_epoch` → another Commit won the epoch: the
//! call drops its own, catches up, re-bases (builds the change again on the new epoch,
//! leaving out what the winner already did) and retries; `forbidden` →
//! [`Error::NotAdmin`]. The Commit sits in the outbox as well, so a crash or a lost
//! connection leaves it to the socket to send.

use std::time::Duration;

use parley_client_api::http::chats::{MembershipChange, MlsKind, MlsMeta};
use parley_client_api::{ChatId, ErrorCode, Payload, UserId};
use parley_crypto::{Group, ValidatedKeyPackage};

use crate::client::{Client, Event, Inner, check_key_package, commit_msg_id, now_ms};
use crate::error::{Error, Result};
use crate::payload::ChatPayload;
use crate::store::{self, ReceiptSummary, provider};

/// How many times a membership change is re-based and retried after losing its epoch.
const MAX_ATTEMPTS: usize = 12;
/// How long a change waits for an own commit the socket is sending (device sync).
const BUSY_WAIT: Duration = Duration::from_secs(20);

/// A member of a group and their role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupMember {
    pub user_id: UserId,
    pub admin: bool,
    /// How many of the member's devices are in this device's view of the MLS group.
    pub devices: usize,
}

/// A group's members as the hub lists them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupMembers {
    pub chat_id: ChatId,
    /// The hub's MLS epoch for the chat.
    pub hub_epoch: u64,
    pub members: Vec<GroupMember>,
}

/// A membership change to make as one Commit.
#[derive(Debug, Clone)]
enum Change {
    Add(Vec<ValidatedKeyPackage>, Vec<UserId>),
    Remove(Vec<UserId>),
}

/// What one attempt came to.
enum Attempt {
    Done,
    Retry,
}

impl Inner {
    /// The Remove Proposal of this device's leaf in the group's current epoch. Nothing
    /// of it is kept: the proposal is signed and complete, so the store is rolled back
    /// (the device needs no trace of it; it forgets the group once the hub accepts it).
    async fn make_leave_proposal(&self, chat: &ChatId) -> Result<(u64, Vec<u8>)> {
        let deadline = tokio::time::Instant::now() + BUSY_WAIT;
        loop {
            let mut conn = self.db.writer.lock().await;
            store::ensure_joined(&mut conn, chat).await?;
            let busy = store::outbox_all(&mut conn)
                .await?
                .iter()
                .any(|r| r.chat_id == chat.as_str() && r.kind == store::OUTBOX_COMMIT);
            let mut tx = store::begin(&mut conn).await?;
            let p = provider(&mut tx);
            let Some(mut group) =
                Group::load(&p, chat.as_str().as_bytes()).map_err(Error::crypto)?
            else {
                return Err(Error::NotJoined(chat.to_string()));
            };
            if group.has_pending_commit() {
                if busy {
                    tx.rollback().await?;
                    drop(conn);
                    if tokio::time::Instant::now() > deadline {
                        return Err(Error::Protocol(format!(
                            "a commit of this device to {chat} is still unconfirmed"
                        )));
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
                group.discard_pending_commit(&p).map_err(Error::crypto)?;
            }
            let epoch = group.epoch();
            let proposal = group.leave(&p, &self.identity).map_err(Error::crypto);
            tx.rollback().await?;
            return Ok((epoch, proposal?));
        }
    }

    /// This device left the chat (the hub sequenced its leave as `seq`): forget the
    /// group's keys and the queued sends, keep the history.
    async fn forget_group(&self, chat: &ChatId, seq: i64) -> Result<()> {
        {
            let mut conn = self.db.writer.lock().await;
            let mut tx = store::begin(&mut conn).await?;
            let users: Vec<UserId> = store::chat_members(&mut tx, chat)
                .await?
                .into_iter()
                .filter(|u| *u != self.user_id)
                .collect();
            store::set_joined(&mut tx, chat, false, &users, seq).await?;
            let p = provider(&mut tx);
            if let Some(g) = Group::load(&p, chat.as_str().as_bytes()).map_err(Error::crypto)? {
                g.delete(&p).map_err(Error::crypto)?;
            }
            let cur = store::cursor(&mut tx, chat).await?;
            if seq > cur.last_seq {
                store::set_last_seq(&mut tx, chat, seq).await?;
            }
            tx.commit().await?;
        }
        tracing::info!(%chat, seq, "left the chat");
        self.emit(Event::ChatLeft {
            chat_id: chat.clone(),
        });
        Ok(())
    }

    pub(crate) fn is_direct(&self, client_msg_id: &str) -> bool {
        self.direct
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains(client_msg_id)
    }

    fn set_direct(&self, client_msg_id: &str, on: bool) {
        let mut set = self
            .direct
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if on {
            set.insert(client_msg_id.to_owned());
        } else {
            set.remove(client_msg_id);
        }
    }

    /// Claims one KeyPackage of each device of each user (validated).
    async fn claim_all(&self, users: &[UserId]) -> Result<Vec<ValidatedKeyPackage>> {
        let mut kps = Vec::new();
        for user in users {
            let claimed = self.api.claim(user).await?;
            let mut conn = self.db.writer.lock().await;
            let trusted = crate::devices::trusted(&mut conn).await?;
            let p = provider(&mut conn);
            let before = kps.len();
            for c in claimed
                .iter()
                .filter(|c| user != &self.user_id || c.device_id != self.device_id)
            {
                // Own devices only if trusted (spec/devices.md DL7).
                kps.extend(check_key_package(&p, user, c).filter(|kp| {
                    user != &self.user_id || crate::devices::trusted_key_package(kp, &trusted)
                }));
            }
            if kps.len() == before && user != &self.user_id {
                return Err(Error::NoDevices(user.to_string()));
            }
        }
        Ok(kps)
    }

    /// Makes `change` as one Commit, re-basing and retrying when another Commit wins
    /// the epoch, until the hub accepts it or nothing is left to do.
    async fn change_members(&self, chat: &ChatId, change: Change) -> Result<()> {
        for _ in 0..MAX_ATTEMPTS {
            let Some(id) = self.build_commit(chat, &change).await? else {
                return Ok(());
            };
            match self.submit_commit(chat, &id).await? {
                Attempt::Done => return Ok(()),
                Attempt::Retry => {}
            }
        }
        Err(Error::Protocol(format!(
            "the change to {chat} lost its epoch {MAX_ATTEMPTS} times in a row"
        )))
    }

    /// Builds the Commit for `change` on the group's current epoch and queues it
    /// (marked as sent by the caller). `None`: nothing left to do.
    async fn build_commit(&self, chat: &ChatId, change: &Change) -> Result<Option<String>> {
        let gid = chat.as_str().as_bytes();
        let deadline = tokio::time::Instant::now() + BUSY_WAIT;
        loop {
            let mut conn = self.db.writer.lock().await;
            store::ensure_joined(&mut conn, chat).await?;
            let busy = store::outbox_all(&mut conn)
                .await?
                .iter()
                .any(|r| r.chat_id == chat.as_str() && r.kind == store::OUTBOX_COMMIT);
            let mut tx = store::begin(&mut conn).await?;
            let p = provider(&mut tx);
            let Some(mut group) = Group::load(&p, gid).map_err(Error::crypto)? else {
                return Err(Error::NotJoined(chat.to_string()));
            };
            if group.has_pending_commit() {
                if busy {
                    // A commit of ours (a device change) is on its way: wait for it.
                    tx.rollback().await?;
                    drop(conn);
                    if tokio::time::Instant::now() > deadline {
                        return Err(Error::Protocol(format!(
                            "a commit of this device to {chat} is still unconfirmed"
                        )));
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
                group.discard_pending_commit(&p).map_err(Error::crypto)?;
            }
            let members = group.members().map_err(Error::crypto)?;
            let leaves_of = |users: &[UserId]| -> Vec<u32> {
                members
                    .iter()
                    .filter(|m| {
                        users
                            .iter()
                            .any(|u| u.as_str() == m.identity.user_id().as_str())
                    })
                    .map(|m| m.leaf_index)
                    .collect()
            };
            let (pc, membership) = match change {
                Change::Add(kps, users) => {
                    let missing: Vec<ValidatedKeyPackage> = kps
                        .iter()
                        .filter(|k| {
                            let id = k.identity();
                            group
                                .find_member(id.user_id().as_str(), id.device_id().as_str())
                                .is_none()
                        })
                        .cloned()
                        .collect();
                    if missing.is_empty() {
                        return Ok(None);
                    }
                    let add: Vec<UserId> = users
                        .iter()
                        .filter(|u| {
                            !members
                                .iter()
                                .any(|m| m.identity.user_id().as_str() == u.as_str())
                        })
                        .cloned()
                        .collect();
                    (
                        group.commit_add(&p, &self.identity, &missing),
                        MembershipChange {
                            add,
                            remove: Vec::new(),
                        },
                    )
                }
                Change::Remove(users) => {
                    let leaves = leaves_of(users);
                    if leaves.is_empty() {
                        return Ok(None);
                    }
                    if leaves.contains(&group.own_leaf_index()) {
                        return Err(Error::Invalid(
                            "to remove yourself from a group, leave it".into(),
                        ));
                    }
                    (
                        group.commit_remove(&p, &self.identity, &leaves),
                        MembershipChange {
                            add: Vec::new(),
                            remove: users.clone(),
                        },
                    )
                }
            };
            let pc = pc.map_err(Error::crypto)?;
            let id = commit_msg_id();
            let payload = ChatPayload::Commit {
                epoch: pc.epoch,
                commit: pc.commit,
                welcome: pc.welcome,
            };
            store::outbox_push_commit(
                &mut tx,
                chat,
                &id,
                &payload.to_bytes(),
                pc.epoch,
                pc.group_info.as_deref(),
            )
            .await?;
            let json = serde_json::to_string(&membership).map_err(Error::store)?;
            store::outbox_set_membership(&mut tx, chat, &id, &json).await?;
            self.set_direct(&id, true);
            if let Err(e) = tx.commit().await {
                self.set_direct(&id, false);
                return Err(e.into());
            }
            return Ok(Some(id));
        }
    }

    /// Sends a queued commit over HTTP and handles the answer.
    async fn submit_commit(&self, chat: &ChatId, id: &str) -> Result<Attempt> {
        let result = self.send_queued_commit(chat, id).await;
        self.set_direct(id, false);
        match result {
            Ok(ack) => {
                self.on_sent(ack).await?;
                Ok(Attempt::Done)
            }
            Err(Error::Server {
                code: ErrorCode::WrongEpoch,
                ..
            }) => {
                self.drop_own_commit(chat, id).await?;
                self.catch_up(chat).await?;
                tracing::info!(%chat, "our commit lost its epoch; re-basing");
                Ok(Attempt::Retry)
            }
            Err(e @ Error::Unreachable { .. }) => {
                // Still queued: the socket sends it once connected.
                self.kick();
                Err(e)
            }
            Err(e) => {
                self.drop_own_commit(chat, id).await?;
                self.kick();
                Err(match e {
                    Error::Server {
                        code: ErrorCode::Forbidden,
                        ..
                    } => Error::NotAdmin(chat.to_string()),
                    other => other,
                })
            }
        }
    }

    async fn send_queued_commit(
        &self,
        chat: &ChatId,
        id: &str,
    ) -> Result<parley_client_api::http::chats::SendAck> {
        let row = {
            let mut conn = self.db.writer.lock().await;
            store::outbox_get(&mut conn, chat, id).await?
        };
        let Some(row) = row else {
            return Err(Error::Protocol("the queued commit vanished".into()));
        };
        let (Some(payload), Some(epoch)) = (row.payload, row.epoch) else {
            return Err(Error::Protocol("the queued commit has no payload".into()));
        };
        let membership: Option<serde_json::Value> = row
            .membership
            .as_deref()
            .and_then(|m| serde_json::from_str(m).ok());
        let body = crate::api::wire(serde_json::json!({
            "client_msg_id": id,
            "payload": Payload(payload),
            "mls": MlsMeta { kind: MlsKind::Commit, epoch: u64::try_from(epoch).unwrap_or(0) },
            "membership": membership,
            "group_info": row.group_info.map(Payload),
        }))?;
        self.api.send_event(chat, &body).await
    }
}

fn admin_error(chat: &ChatId, e: Error) -> Error {
    match e {
        Error::Server {
            code: ErrorCode::Forbidden,
            ..
        } => Error::NotAdmin(chat.to_string()),
        other => other,
    }
}

impl Client {
    /// Creates a group named `name` with `members` (this user is added, as its first
    /// admin): one Commit adds every device of every member and this user's other
    /// devices. Returns once the hub accepted the Commit.
    pub async fn create_group(&self, name: &str, members: &[UserId]) -> Result<ChatId> {
        let inner = &self.inner;
        let mut others: Vec<UserId> = members
            .iter()
            .filter(|u| **u != inner.user_id)
            .cloned()
            .collect();
        others.sort();
        others.dedup();
        if others.is_empty() {
            return Err(Error::Invalid(
                "a group needs at least one other member".into(),
            ));
        }
        if name.trim().is_empty() {
            return Err(Error::Invalid("a group needs a name".into()));
        }
        let mut users = others.clone();
        users.push(inner.user_id.clone());
        // Claimed before the chat exists: a member nobody can encrypt to fails early.
        let kps = inner.claim_all(&users).await?;
        let summary = inner.api.create_group(others.clone(), name).await?;
        let chat = summary.chat_id;
        let id = {
            let mut conn = inner.db.writer.lock().await;
            let mut tx = store::begin(&mut conn).await?;
            let p = provider(&mut tx);
            let gid = chat.as_str().as_bytes();
            if let Some(old) = Group::load(&p, gid).map_err(Error::crypto)? {
                old.delete(&p).map_err(Error::crypto)?;
            }
            let mut group = Group::create(&p, &inner.identity, gid).map_err(Error::crypto)?;
            let pc = if kps.is_empty() {
                group.commit_update(&p, &inner.identity)
            } else {
                group.commit_add(&p, &inner.identity, &kps)
            }
            .map_err(Error::crypto)?;
            let payload = ChatPayload::Commit {
                epoch: pc.epoch,
                commit: pc.commit,
                welcome: pc.welcome,
            };
            store::ensure_chat(&mut tx, &chat, now_ms()).await?;
            store::set_chat_meta(&mut tx, &chat, true, Some(name)).await?;
            store::set_joined(&mut tx, &chat, true, &users, 0).await?;
            let id = commit_msg_id();
            store::outbox_push_commit(
                &mut tx,
                &chat,
                &id,
                &payload.to_bytes(),
                pc.epoch,
                pc.group_info.as_deref(),
            )
            .await?;
            inner.set_direct(&id, true);
            tx.commit().await?;
            id
        };
        inner.emit(Event::ChatJoined {
            chat_id: chat.clone(),
        });
        match inner.submit_commit(&chat, &id).await? {
            Attempt::Done => Ok(chat),
            Attempt::Retry => Err(Error::Protocol(format!(
                "the new group {chat} already had a commit"
            ))),
        }
    }

    /// Adds users to a group (admins only): one Commit adding every device of each.
    /// Added devices read what is sent from then on, nothing before.
    pub async fn add_members(&self, chat: &ChatId, users: &[UserId]) -> Result<()> {
        if users.is_empty() {
            return Ok(());
        }
        let kps = self.inner.claim_all(users).await?;
        self.inner
            .change_members(chat, Change::Add(kps, users.to_vec()))
            .await
    }

    /// Removes users from a group (admins only: [`Error::NotAdmin`] otherwise): one
    /// Commit removing all their devices. They read nothing sent afterwards, and the
    /// hub refuses their sends.
    pub async fn remove_members(&self, chat: &ChatId, users: &[UserId]) -> Result<()> {
        if users.is_empty() {
            return Ok(());
        }
        self.inner
            .change_members(chat, Change::Remove(users.to_vec()))
            .await
    }

    /// Leaves a group (anyone may). MLS forbids a Commit removing its committer, so
    /// this device sends a Proposal removing its own leaf, with
    /// `membership: {remove: [me]}`: the hub takes this user off the member list at once
    /// (its later sends are refused, nothing more is sent to its devices), and a
    /// remaining member's device commits the removal of every leaf of this user
    /// automatically (the one with the lowest leaf index at once, or whoever sends
    /// next). Once the hub accepted the Proposal, this device forgets the group's keys
    /// (history stays) and the chat shows as left; the user's other devices follow when
    /// they see it. Re-made and retried when another Commit changes the epoch first.
    pub async fn leave(&self, chat: &ChatId) -> Result<()> {
        let inner = &self.inner;
        for _ in 0..MAX_ATTEMPTS {
            let (epoch, proposal) = inner.make_leave_proposal(chat).await?;
            let id = format!("leave-{}", parley_crypto::MessageId::random().as_str());
            let body = crate::api::wire(serde_json::json!({
                "client_msg_id": id,
                "payload": Payload(ChatPayload::Proposal { epoch, proposal }.to_bytes()),
                "mls": MlsMeta { kind: MlsKind::Proposal, epoch },
                "membership": MembershipChange { add: Vec::new(), remove: vec![inner.user_id.clone()] },
            }))?;
            match inner.api.send_event(chat, &body).await {
                Ok(ack) => {
                    inner.forget_group(chat, ack.seq).await?;
                    return Ok(());
                }
                Err(Error::Server {
                    code: ErrorCode::WrongEpoch,
                    ..
                }) => {
                    tracing::info!(%chat, "our leave lost its epoch; catching up");
                    inner.catch_up(chat).await?;
                }
                Err(e) => return Err(e),
            }
        }
        Err(Error::Protocol(format!(
            "leaving {chat} lost its epoch {MAX_ATTEMPTS} times in a row"
        )))
    }

    /// Renames a group (admins only).
    pub async fn rename(&self, chat: &ChatId, name: &str) -> Result<()> {
        self.inner
            .api
            .rename(chat, name)
            .await
            .map_err(|e| admin_error(chat, e))?;
        let mut conn = self.inner.db.writer.lock().await;
        store::set_chat_meta(&mut conn, chat, true, Some(name)).await
    }

    /// Promotes a member to admin or demotes one (admins only; a group keeps at least
    /// one admin).
    pub async fn set_admin(&self, chat: &ChatId, user: &UserId, admin: bool) -> Result<()> {
        self.inner
            .api
            .set_admin(chat, user, admin)
            .await
            .map_err(|e| admin_error(chat, e))
    }

    /// The group's members and roles, as the hub lists them, with how many devices
    /// each has in this device's view of the MLS group.
    pub async fn members(&self, chat: &ChatId) -> Result<GroupMembers> {
        let r = self.inner.api.members(chat).await?;
        let leaves = {
            let mut conn = self.inner.db.writer.lock().await;
            let p = provider(&mut conn);
            Group::load(&p, chat.as_str().as_bytes())
                .map_err(Error::crypto)?
                .map(|g| g.members().unwrap_or_default())
                .unwrap_or_default()
        };
        Ok(GroupMembers {
            chat_id: r.chat_id,
            hub_epoch: r.mls_epoch,
            members: r
                .members
                .into_iter()
                .map(|m| GroupMember {
                    devices: leaves
                        .iter()
                        .filter(|l| l.identity.user_id().as_str() == m.user_id.as_str())
                        .count(),
                    user_id: m.user_id,
                    admin: m.admin,
                })
                .collect(),
        })
    }

    /// This device's MLS epoch for the chat (`None`: not in its group).
    pub async fn epoch(&self, chat: &ChatId) -> Result<Option<u64>> {
        let mut conn = self.inner.db.writer.lock().await;
        let p = provider(&mut conn);
        Ok(Group::load(&p, chat.as_str().as_bytes())
            .map_err(Error::crypto)?
            .filter(Group::is_active)
            .map(|g| g.epoch()))
    }

    /// Fetches every member's receipts in the chat from the server and stores them
    /// (ticks of own messages move as with live receipts).
    pub async fn refresh_receipts(&self, chat: &ChatId) -> Result<()> {
        let r = self.inner.api.receipts(chat).await?;
        for receipt in r.receipts {
            self.inner.on_receipt(chat.clone(), receipt).await?;
        }
        Ok(())
    }

    /// Fetches and processes, in `seq` order, every event of the chat the server holds
    /// after this device's cursor (what the socket would deliver, for a chat whose
    /// events reached this device's inbox through another connection).
    pub async fn catch_up(&self, chat: &ChatId) -> Result<()> {
        self.inner.catch_up(chat).await
    }

    /// Records the server's kind and name of the chats this device knows.
    pub async fn refresh_chats(&self) -> Result<()> {
        let chats = self.inner.api.chats().await?;
        let mut conn = self.inner.db.writer.lock().await;
        for c in chats {
            if store::cursor(&mut conn, &c.chat_id).await?.known {
                let group = c.kind == parley_client_api::http::chats::ChatKind::Group;
                store::set_chat_meta(&mut conn, &c.chat_id, group, c.name.as_deref()).await?;
            }
        }
        Ok(())
    }

    /// "Delivered to N of M / read by N of M" for a message, with per-member detail,
    /// from the receipts this device has (call [`Client::refresh_receipts`] first for
    /// other senders' messages: live receipts reach only a message's sender). M is the
    /// chat's members other than the sender at the message's time.
    pub async fn receipt_summary(
        &self,
        chat: &ChatId,
        message_id: &str,
    ) -> Result<Option<ReceiptSummary>> {
        let Some(m) = self.inner.db.reader.message(chat, message_id).await? else {
            return Ok(None);
        };
        self.inner.db.reader.receipt_summary(&m).await
    }
}
