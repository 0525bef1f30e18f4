//! Processing a chat's events in `seq` order: decrypting, joining from Welcomes,
//! merging Commits (ours only once the server sequenced them), receipts and ticks.
//!
//! Every event is applied in one store transaction together with the chat's cursor
//! (`last_seq`), so an event is processed exactly once even across crashes, and the
//! inbox item is acknowledged only after that transaction committed.

use std::sync::atomic::Ordering;
use std::time::Duration;

use parley_client_api::http::chats::{ChatEvent, MembershipChange, Receipt, SendAck};

use parley_client_api::{ChatId, DeviceId, ErrorCode, UserId};
use parley_crypto::{Content, Envelope, Group, JoinError, ProcessError, Received};
use sqlx::SqliteConnection;

use crate::client::{Event, Inner};
use crate::error::{Error, Result};
use crate::payload::ChatPayload;
use crate::store::{self, Message, MessageState, provider};

/// One event of a chat as the engine processes it: read from the wire's
/// [`ChatEvent`] (fields added to the wire type later need no change here), or made
/// from the server's acknowledgement of one of our own sends.
#[derive(Debug, Clone)]
pub(crate) struct Incoming {
    pub(crate) chat_id: ChatId,
    pub(crate) seq: i64,
    pub(crate) sender: UserId,
    pub(crate) sender_device: DeviceId,
    pub(crate) client_msg_id: String,
    pub(crate) ts: i64,
    pub(crate) payload: Vec<u8>,
    /// With a commit: the membership change the hub applied with it.
    pub(crate) membership: Option<MembershipChange>,
}

impl From<ChatEvent> for Incoming {
    fn from(e: ChatEvent) -> Self {
        Self {
            chat_id: e.chat_id,
            seq: e.seq,
            sender: e.sender,
            sender_device: e.sender_device,
            client_msg_id: e.client_msg_id,
            ts: e.ts,
            payload: e.payload.0,
            membership: e.membership,
        }
    }
}

/// Events fetched per history request when filling a gap.
const HISTORY_PAGE: i64 = 500;
/// How long an own event waits for the events before it to reach our server (the hub
/// may be another server, which answers before its events arrive here).
const OWN_GAP_WAIT: Duration = Duration::from_secs(5);

/// Why an event was not applied.
enum Skip {
    /// Permanently: record the skip and move on (the reason is shown to the app).
    Failed(String),
    /// A stale Commit (another one won its epoch): nothing to show.
    Stale,
    /// The event is not for this device (e.g. a chat it has not joined).
    NotForMe,
    /// A Commit with a Welcome in a chat this device has not joined: join if the
    /// Welcome is for this device, else ignore it.
    TryWelcome,
}

enum Apply {
    Done(Vec<Event>),
    Skip(Skip),
}

fn fatal(e: impl std::fmt::Display) -> Error {
    Error::Store(e.to_string())
}

fn device_of(m: &parley_crypto::MemberInfo) -> Option<(UserId, DeviceId)> {
    Some((
        UserId::try_from(m.identity.user_id().as_str()).ok()?,
        DeviceId::try_from(m.identity.device_id().as_str()).ok()?,
    ))
}

fn member_users(group: &Group) -> Vec<UserId> {
    let mut users: Vec<UserId> = group
        .members()
        .unwrap_or_default()
        .iter()
        .filter_map(|m| UserId::try_from(m.identity.user_id().as_str()).ok())
        .collect();
    users.sort();
    users.dedup();
    users
}

/// The users a commit's membership change removed at the hub.
fn hub_removed(m: Option<&MembershipChange>) -> Vec<UserId> {
    m.map(|m| m.remove.clone()).unwrap_or_default()
}

impl Inner {
    /// Users the hub no longer lists but who still have leaves in the MLS group: they
    /// left with a proposal (see [`crate::Client::leave`]) that is not committed yet, or
    /// that a commit racing with it left out. The chat's stored members are the hub's
    /// view; the group's leaves are MLS's.
    pub(crate) async fn departed(
        &self,
        tx: &mut SqliteConnection,
        chat: &ChatId,
        group: &Group,
    ) -> Result<Vec<UserId>> {
        let listed = store::chat_members(tx, chat).await?;
        Ok(member_users(group)
            .into_iter()
            .filter(|u| !listed.contains(u))
            .collect())
    }

    /// Leaves of users who are gone at the hub (`gone`: left, or removed by a commit
    /// that could not remove every leaf) are removed by a commit that also covers any
    /// queued proposals (a member's request to leave). Made by the remaining device with
    /// the lowest leaf index, or by any device when `anyone` (it has a message to send,
    /// which MLS allows only once the proposals are committed). Queued in the same
    /// transaction; the socket sends it, and the hub's one-commit-per-epoch settles a
    /// race between two devices doing this at once. Returns whether a commit was queued.
    pub(crate) async fn commit_departures(
        &self,
        tx: &mut SqliteConnection,
        chat: &ChatId,
        group: &mut Group,
        gone: &[UserId],
        anyone: bool,
    ) -> Result<bool> {
        let members = group.members().map_err(fatal)?;
        let stale: Vec<u32> = members
            .iter()
            .filter(|m| {
                gone.iter()
                    .any(|u| u.as_str() == m.identity.user_id().as_str())
            })
            .map(|m| m.leaf_index)
            .collect();
        let leader = members
            .iter()
            .filter(|m| !stale.contains(&m.leaf_index))
            .map(|m| m.leaf_index)
            .min();
        let nothing = stale.is_empty() && !group.has_pending_proposals();
        if nothing
            || stale.contains(&group.own_leaf_index())
            || (!anyone && leader != Some(group.own_leaf_index()))
            || group.has_pending_commit()
        {
            return Ok(false);
        }
        let pc = {
            let p = provider(&mut *tx);
            let made = if stale.is_empty() {
                group.commit_pending_proposals(&p, &self.identity)
            } else {
                // Queued proposals (a Remove of the same leaf included) are covered too.
                group.commit_remove(&p, &self.identity, &stale)
            };
            match made {
                Ok(pc) => pc,
                Err(e) => {
                    tracing::warn!(%chat, error = %e, "cannot commit the departure of members");
                    return Ok(false);
                }
            }
        };
        let payload = ChatPayload::Commit {
            epoch: pc.epoch,
            commit: pc.commit,
            welcome: pc.welcome,
        };
        store::outbox_push_commit(
            tx,
            chat,
            &crate::client::commit_msg_id(),
            &payload.to_bytes(),
            pc.epoch,
            pc.group_info.as_deref(),
        )
        .await?;
        tracing::info!(%chat, leaves = stale.len(), "committing the departure of members");
        self.kick();
        Ok(true)
    }

    /// Forgets an own commit the hub refused: its outbox row and the pending commit.
    pub(crate) async fn drop_own_commit(&self, chat: &ChatId, client_msg_id: &str) -> Result<()> {
        let mut conn = self.db.writer.lock().await;
        let mut tx = store::begin(&mut conn).await?;
        let still_queued = store::outbox_get(&mut tx, chat, client_msg_id)
            .await?
            .is_some();
        store::outbox_remove(&mut tx, chat, client_msg_id).await?;
        if still_queued {
            let p = provider(&mut tx);
            if let Some(mut g) = Group::load(&p, chat.as_str().as_bytes()).map_err(fatal)?
                && g.has_pending_commit()
            {
                g.discard_pending_commit(&p).map_err(fatal)?;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    /// Processes one event of a chat (from the inbox, or our own send once the server
    /// sequenced it): skips what was processed already, fills a gap from the chat's
    /// history first.
    pub(crate) async fn ingest(&self, event: Incoming) -> Result<()> {
        let mut conn = self.db.writer.lock().await;
        let cur = store::cursor(&mut conn, &event.chat_id).await?;
        if event.seq <= cur.last_seq {
            return Ok(());
        }
        if cur.joined && event.seq > cur.last_seq + 1 {
            // Our own send's `seq` comes from the chat's hub; when that is another server,
            // ours may not hold the events before it yet (they are on their way): wait
            // for them a little rather than skip them.
            let own = event.sender_device == self.device_id && event.sender == self.user_id;
            let wait_until = tokio::time::Instant::now() + OWN_GAP_WAIT;
            let mut after = cur.last_seq;
            while after < event.seq - 1 {
                let want = (event.seq - 1 - after).min(HISTORY_PAGE);
                let page = self
                    .api
                    .history(&event.chat_id, after, u32::try_from(want).unwrap_or(500))
                    .await?;
                if page.is_empty() {
                    if own && tokio::time::Instant::now() < wait_until {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                    tracing::warn!(chat = %event.chat_id, after, "history has a gap (expired?)");
                    break;
                }
                let before = after;
                for e in page {
                    if e.seq >= event.seq {
                        break;
                    }
                    after = e.seq;
                    self.process_one(&mut conn, e.into()).await?;
                }
                if after == before {
                    // The server holds nothing more before this event: the missing ones
                    // expired (disappearing messages, retention) and are gone for good.
                    tracing::info!(chat = %event.chat_id, after, seq = event.seq, "history has a gap (expired)");
                    break;
                }
            }
        }
        self.process_one(&mut conn, event).await
    }

    async fn process_one(&self, conn: &mut SqliteConnection, ev: Incoming) -> Result<()> {
        let chat = ev.chat_id.clone();
        let own = ev.sender_device == self.device_id && ev.sender == self.user_id;
        let payload = ChatPayload::from_bytes(&ev.payload);
        let mut tx = store::begin(conn).await?;
        store::ensure_chat(&mut tx, &chat, ev.ts).await?;
        let outcome = match &payload {
            Err(e) => Ok(Apply::Skip(Skip::Failed(e.to_string()))),
            Ok(p) => self.apply(&mut tx, &ev, own, p).await,
        };
        let outcome = match outcome {
            Ok(o) => o,
            Err(e) => {
                tx.rollback().await?;
                return Err(e);
            }
        };
        match outcome {
            Apply::Done(events) => {
                store::set_last_seq(&mut tx, &chat, ev.seq).await?;
                tx.commit().await?;
                for e in events {
                    self.emit(e);
                }
                Ok(())
            }
            Apply::Skip(skip) => {
                // Whatever the failed MLS call wrote is rolled back.
                tx.rollback().await?;
                // A Commit that failed to apply may still carry our (re-)invitation.
                if let (
                    Skip::Failed(_) | Skip::TryWelcome,
                    Ok(ChatPayload::Commit {
                        welcome: Some(w), ..
                    }),
                ) = (&skip, &payload)
                    && !own
                    && self.try_join(conn, &ev, w).await?
                {
                    return Ok(());
                }
                let mut tx = store::begin(conn).await?;
                store::ensure_chat(&mut tx, &chat, ev.ts).await?;
                store::set_last_seq(&mut tx, &chat, ev.seq).await?;
                if own {
                    store::outbox_remove(&mut tx, &chat, &ev.client_msg_id).await?;
                }
                tx.commit().await?;
                match skip {
                    Skip::Failed(reason) => {
                        tracing::warn!(%chat, seq = ev.seq, %reason, "event skipped");
                        self.emit(Event::Undecryptable {
                            chat_id: chat,
                            seq: ev.seq,
                            reason,
                        });
                    }
                    Skip::Stale => {
                        tracing::info!(%chat, seq = ev.seq, own, "stale commit skipped");
                        if own {
                            self.needs_device_sync.store(true, Ordering::SeqCst);
                        }
                    }
                    Skip::NotForMe | Skip::TryWelcome => {
                        tracing::debug!(%chat, seq = ev.seq, "event for a chat this device has not joined")
                    }
                }
                Ok(())
            }
        }
    }

    /// Joins (or re-joins) the chat from a Welcome in its own transaction; false if the
    /// Welcome is not for this device.
    async fn try_join(
        &self,
        conn: &mut SqliteConnection,
        ev: &Incoming,
        welcome: &[u8],
    ) -> Result<bool> {
        let mut tx = store::begin(conn).await?;
        let joined = {
            let p = provider(&mut tx);
            if let Some(old) = Group::load(&p, ev.chat_id.as_str().as_bytes()).map_err(fatal)? {
                old.delete(&p).map_err(fatal)?;
            }
            match Group::join(&p, welcome) {
                Ok(g) if g.group_id() == ev.chat_id.as_str().as_bytes() => Ok(Some(g)),
                Ok(_) => Ok(None),
                Err(JoinError::Storage(e)) => Err(Error::Store(e)),
                Err(JoinError::NoMatchingKeyPackage) => Ok(None),
                Err(e) => {
                    tracing::warn!(chat = %ev.chat_id, seq = ev.seq, error = %e, "welcome rejected");
                    Ok(None)
                }
            }
        };
        let group = match joined {
            Ok(Some(g)) => g,
            Ok(None) => {
                tx.rollback().await?;
                return Ok(false);
            }
            Err(e) => {
                tx.rollback().await?;
                return Err(e);
            }
        };
        let members = member_users(&group);
        store::ensure_chat(&mut tx, &ev.chat_id, ev.ts).await?;
        store::set_joined(&mut tx, &ev.chat_id, true, &members, ev.seq).await?;
        if members.len() > 2 {
            // A first guess; the server's chat list says for sure (`refresh_chats`).
            store::set_chat_meta(&mut tx, &ev.chat_id, true, None).await?;
        }
        store::set_last_seq(&mut tx, &ev.chat_id, ev.seq).await?;
        crate::devices::after_join(
            &mut tx,
            &self.user_id,
            (&ev.sender, &ev.sender_device),
            &group,
        )
        .await?;
        tx.commit().await?;
        tracing::info!(chat = %ev.chat_id, seq = ev.seq, "joined chat");
        self.emit(Event::ChatJoined {
            chat_id: ev.chat_id.clone(),
        });
        Ok(true)
    }

    async fn apply(
        &self,
        tx: &mut SqliteConnection,
        ev: &Incoming,
        own: bool,
        payload: &ChatPayload,
    ) -> Result<Apply> {
        let gid = ev.chat_id.as_str().as_bytes();
        match payload {
            ChatPayload::Application { mls_message } => {
                if own {
                    // An own action is applied now that the hub ordered it, by the rules
                    // every other device applies.
                    let queued = store::outbox_get(tx, &ev.chat_id, &ev.client_msg_id).await?;
                    let action = queued
                        .and_then(|r| r.plaintext)
                        .and_then(|p| Envelope::from_bytes(&p).ok())
                        .filter(|e| crate::messaging::action_of(&e.content).is_some());
                    if let Some(env) = action {
                        store::outbox_remove(tx, &ev.chat_id, &ev.client_msg_id).await?;
                        let action = crate::messaging::ActionEvent {
                            chat: &ev.chat_id,
                            seq: ev.seq,
                            ts: ev.ts,
                            user: &self.user_id,
                            device: &self.device_id,
                        };
                        return crate::messaging::apply_action(tx, &action, &env)
                            .await
                            .map(Apply::Done);
                    }
                    return self.own_message_sequenced(tx, ev).await.map(Apply::Done);
                }
                let result = {
                    let p = provider(&mut *tx);
                    match Group::load(&p, gid).map_err(fatal)? {
                        None => return Ok(Apply::Skip(Skip::NotForMe)),
                        Some(mut g) => g.process(&p, mls_message),
                    }
                };
                match result {
                    Ok(Received::Application {
                        sender, plaintext, ..
                    }) => {
                        let (user, device) = device_of(&sender).ok_or_else(|| {
                            Error::Crypto("sender credential has invalid ids".into())
                        })?;
                        if user != ev.sender || device != ev.sender_device {
                            return Ok(Apply::Skip(Skip::Failed(format!(
                                "sender mismatch: the server says {} ({}), MLS says {user} ({device})",
                                ev.sender, ev.sender_device
                            ))));
                        }
                        let envelope = Envelope::from_bytes(&plaintext).ok();
                        if let Some(env) = envelope
                            .as_ref()
                            .filter(|e| crate::messaging::action_of(&e.content).is_some())
                        {
                            let action = crate::messaging::ActionEvent {
                                chat: &ev.chat_id,
                                seq: ev.seq,
                                ts: ev.ts,
                                user: &user,
                                device: &device,
                            };
                            return crate::messaging::apply_action(tx, &action, env)
                                .await
                                .map(Apply::Done);
                        }
                        let (message, media) = decode_message(ev, &user, &device, &plaintext);
                        if crate::messaging::id_taken(tx, &ev.chat_id, &message.id, &device).await?
                        {
                            tracing::warn!(chat = %ev.chat_id, seq = ev.seq, id = %message.id, "message id already used in the chat by another sender; ignored");
                            return Ok(Apply::Done(Vec::new()));
                        }
                        if store::insert_message(tx, &message).await? {
                            if let Some(env) = &envelope {
                                store::apply_chat_setting(tx, &ev.chat_id, &env.content).await?;
                            }
                            if let Some(media) = media {
                                store::set_message_media(
                                    tx,
                                    &ev.chat_id,
                                    &device,
                                    &message.id,
                                    &media,
                                )
                                .await?;
                            }
                            let id = message.id.clone();
                            let mut events = Vec::new();
                            if crate::devices::verification_changed(tx, &message.sender).await? {
                                events.push(Event::VerificationWarning {
                                    chat_id: ev.chat_id.clone(),
                                    user_id: message.sender.clone(),
                                });
                            }
                            events.push(Event::MessageReceived(message));
                            events.extend(
                                crate::messaging::message_arrived(tx, &ev.chat_id, &id).await?,
                            );
                            Ok(Apply::Done(events))
                        } else {
                            Ok(Apply::Done(Vec::new()))
                        }
                    }
                    Ok(_) => Ok(Apply::Done(Vec::new())),
                    Err(ProcessError::Storage(e)) => Err(Error::Store(e)),
                    Err(e) => Ok(Apply::Skip(Skip::Failed(e.to_string()))),
                }
            }
            ChatPayload::Commit {
                epoch,
                commit,
                welcome,
            } => {
                if own {
                    return self.own_commit_sequenced(tx, ev, *epoch).await;
                }
                let loaded = {
                    let p = provider(&mut *tx);
                    Group::load(&p, gid).map_err(fatal)?
                };
                let Some(mut group) = loaded else {
                    // Joining happens in its own transaction (see `process_one`).
                    return Ok(Apply::Skip(if welcome.is_some() {
                        Skip::TryWelcome
                    } else {
                        Skip::NotForMe
                    }));
                };
                if *epoch < group.epoch() {
                    return Ok(Apply::Skip(Skip::Stale));
                }
                if *epoch > group.epoch() {
                    return Ok(Apply::Skip(Skip::Failed(format!(
                        "commit for epoch {epoch}, this device is at {}",
                        group.epoch()
                    ))));
                }
                let departed = self.departed(tx, &ev.chat_id, &group).await?;
                let result = {
                    let p = provider(&mut *tx);
                    group.process(&p, commit)
                };
                match result {
                    Ok(Received::Commit(summary))
                        if summary.external
                            && device_of(&summary.committer)
                                != Some((ev.sender.clone(), ev.sender_device.clone())) =>
                    {
                        // A member's own device re-joined (parley-crypto's policy), but
                        // it must be the device the server says sent the commit.
                        Ok(Apply::Skip(Skip::Failed(
                            "an external commit by another device than its sender".into(),
                        )))
                    }
                    Ok(Received::Commit(summary)) => {
                        if summary.discarded_own_pending {
                            self.needs_device_sync.store(true, Ordering::SeqCst);
                        }
                        let mut gone = hub_removed(ev.membership.as_ref());
                        gone.extend(departed);
                        let members: Vec<UserId> = member_users(&group)
                            .into_iter()
                            .filter(|u| !gone.contains(u))
                            .collect();
                        store::set_joined(tx, &ev.chat_id, !summary.self_removed, &members, ev.seq)
                            .await?;
                        let mut events = Vec::new();
                        if summary.self_removed {
                            // Removed: forget the group's keys; nothing after this decrypts.
                            let p = provider(&mut *tx);
                            group.delete(&p).map_err(fatal)?;
                            events.push(Event::ChatLeft {
                                chat_id: ev.chat_id.clone(),
                            });
                        } else if !gone.is_empty() {
                            self.commit_departures(tx, &ev.chat_id, &mut group, &gone, false)
                                .await?;
                        }
                        let added: Vec<(UserId, DeviceId)> = summary
                            .added
                            .iter()
                            .filter_map(|d| {
                                Some((
                                    UserId::try_from(d.user_id().as_str()).ok()?,
                                    DeviceId::try_from(d.device_id().as_str()).ok()?,
                                ))
                            })
                            .collect();
                        let removed: Vec<(UserId, DeviceId)> =
                            summary.removed.iter().filter_map(device_of).collect();
                        crate::devices::after_commit(
                            tx,
                            &self.user_id,
                            &summary.committer.identity,
                            &summary.added,
                        )
                        .await?;
                        let mut changed: Vec<UserId> = added
                            .iter()
                            .chain(removed.iter())
                            .map(|(u, _): &(UserId, DeviceId)| u.clone())
                            .collect();
                        changed.sort();
                        changed.dedup();
                        for user_id in
                            crate::devices::note_device_changes(tx, &self.user_id, &changed).await?
                        {
                            events.push(Event::VerifiedDevicesChanged {
                                chat_id: ev.chat_id.clone(),
                                user_id,
                            });
                        }
                        events.insert(
                            0,
                            Event::MembersChanged {
                                chat_id: ev.chat_id.clone(),
                                added,
                                removed,
                            },
                        );
                        Ok(Apply::Done(events))
                    }
                    Ok(_) => Ok(Apply::Done(Vec::new())),
                    Err(ProcessError::Storage(e)) => Err(Error::Store(e)),
                    Err(e) => Ok(Apply::Skip(Skip::Failed(e.to_string()))),
                }
            }
            ChatPayload::Proposal { epoch, proposal } => {
                self.apply_proposal(tx, ev, own, *epoch, proposal).await
            }
        }
    }

    /// A member's request to leave (a Remove Proposal of its own leaf, with
    /// `membership: {remove: [it]}`, which the hub applied): queue it for the next
    /// commit, which the leader makes at once. Another device of the leaving user leaves
    /// too.
    async fn apply_proposal(
        &self,
        tx: &mut SqliteConnection,
        ev: &Incoming,
        own: bool,
        epoch: u64,
        proposal: &[u8],
    ) -> Result<Apply> {
        if own {
            // Our own leave: `Client::leave` handled it.
            return Ok(Apply::Done(Vec::new()));
        }
        let gid = ev.chat_id.as_str().as_bytes();
        let loaded = {
            let p = provider(&mut *tx);
            Group::load(&p, gid).map_err(fatal)?
        };
        let Some(mut group) = loaded else {
            return Ok(Apply::Skip(Skip::NotForMe));
        };
        if epoch != group.epoch() {
            return Ok(Apply::Skip(Skip::Failed(format!(
                "proposal for epoch {epoch}, this device is at {}",
                group.epoch()
            ))));
        }
        let departed = self.departed(tx, &ev.chat_id, &group).await?;
        let result = {
            let p = provider(&mut *tx);
            group.process(&p, proposal)
        };
        match result {
            Ok(Received::ProposalQueued { sender, removes }) => {
                let leaving = removes.is_some_and(|r| r.leaf_index == sender.leaf_index)
                    && sender.identity.user_id().as_str() == ev.sender.as_str();
                let gone = hub_removed(ev.membership.as_ref());
                if !leaving || gone != [ev.sender.clone()] {
                    // Parley's only proposal is a member leaving.
                    return Ok(Apply::Skip(Skip::Failed(
                        "a proposal other than a member leaving".into(),
                    )));
                }
                if gone.contains(&self.user_id) {
                    // Another device of this user left the group: this one leaves too.
                    let users: Vec<UserId> = member_users(&group)
                        .into_iter()
                        .filter(|u| !gone.contains(u))
                        .collect();
                    store::set_joined(tx, &ev.chat_id, false, &users, ev.seq).await?;
                    let p = provider(&mut *tx);
                    group.delete(&p).map_err(fatal)?;
                    tracing::info!(chat = %ev.chat_id, seq = ev.seq, "left the chat (another device left)");
                    return Ok(Apply::Done(vec![Event::ChatLeft {
                        chat_id: ev.chat_id.clone(),
                    }]));
                }
                let mut gone_all = gone;
                gone_all.extend(departed);
                let users: Vec<UserId> = member_users(&group)
                    .into_iter()
                    .filter(|u| !gone_all.contains(u))
                    .collect();
                store::set_joined(tx, &ev.chat_id, true, &users, ev.seq).await?;
                self.commit_departures(tx, &ev.chat_id, &mut group, &gone_all, false)
                    .await?;
                Ok(Apply::Done(Vec::new()))
            }
            Ok(_) => Ok(Apply::Done(Vec::new())),
            Err(ProcessError::Storage(e)) => Err(Error::Store(e)),
            Err(e) => Ok(Apply::Skip(Skip::Failed(e.to_string()))),
        }
    }

    /// Our own application message got its `seq`.
    async fn own_message_sequenced(
        &self,
        tx: &mut SqliteConnection,
        ev: &Incoming,
    ) -> Result<Vec<Event>> {
        store::outbox_remove(tx, &ev.chat_id, &ev.client_msg_id).await?;
        let Some(m) = store::own_message(tx, &ev.chat_id, &ev.client_msg_id).await? else {
            return Ok(Vec::new());
        };
        if m.seq.is_some() && m.state != MessageState::Pending {
            return Ok(Vec::new());
        }
        let state = store::state_from_receipts(tx, &ev.chat_id, &self.user_id, ev.seq).await?;
        store::update_own_message(
            tx,
            &ev.chat_id,
            &ev.client_msg_id,
            Some(ev.seq),
            Some(ev.ts),
            state,
        )
        .await?;
        Ok(vec![Event::MessageStateChanged {
            chat_id: ev.chat_id.clone(),
            id: ev.client_msg_id.clone(),
            seq: Some(ev.seq),
            state,
        }])
    }

    /// Our own Commit got its `seq`: merge it if it is still the pending one for the
    /// group's epoch; otherwise another Commit won the epoch and ours is dropped.
    async fn own_commit_sequenced(
        &self,
        tx: &mut SqliteConnection,
        ev: &Incoming,
        epoch: u64,
    ) -> Result<Apply> {
        let gid = ev.chat_id.as_str().as_bytes();
        let loaded = {
            let p = provider(&mut *tx);
            Group::load(&p, gid).map_err(fatal)?
        };
        let mut merged = None;
        if let Some(mut g) = loaded
            && g.has_pending_commit()
            && g.epoch() == epoch
        {
            let departed = self.departed(tx, &ev.chat_id, &g).await?;
            let before: Vec<_> = g.members().unwrap_or_default();
            g.confirm_pending_commit(&provider(&mut *tx))
                .map_err(fatal)?;
            let after = g.members().unwrap_or_default();
            merged = Some((g, departed, before, after));
        }
        store::outbox_remove(tx, &ev.chat_id, &ev.client_msg_id).await?;
        let Some((mut group, departed, before, after)) = merged else {
            return Ok(Apply::Skip(Skip::Stale));
        };
        let mut gone = hub_removed(ev.membership.as_ref());
        gone.extend(departed);
        let users: Vec<UserId> = member_users(&group)
            .into_iter()
            .filter(|u| !gone.contains(u))
            .collect();
        store::set_joined(tx, &ev.chat_id, true, &users, ev.seq).await?;
        if !gone.is_empty() {
            self.commit_departures(tx, &ev.chat_id, &mut group, &gone, false)
                .await?;
        }
        let added = after
            .iter()
            .filter(|m| !before.iter().any(|b| b.identity == m.identity))
            .filter_map(device_of)
            .collect();
        let removed = before
            .iter()
            .filter(|m| !after.iter().any(|a| a.identity == m.identity))
            .filter_map(device_of)
            .collect();
        tracing::info!(chat = %ev.chat_id, seq = ev.seq, "own commit accepted and merged");
        // Messages waiting for the new epoch can go now.
        self.kick();
        Ok(Apply::Done(vec![Event::MembersChanged {
            chat_id: ev.chat_id.clone(),
            added,
            removed,
        }]))
    }

    /// The server acknowledged one of our sends (✓ sent).
    pub(crate) async fn on_sent(&self, ack: SendAck) -> Result<()> {
        let row = {
            let mut conn = self.db.writer.lock().await;
            store::outbox_get(&mut conn, &ack.chat_id, &ack.client_msg_id).await?
        };
        let Some(row) = row else {
            return Ok(());
        };
        let Some(payload) = row.payload else {
            return Ok(());
        };
        self.ingest(Incoming {
            chat_id: ack.chat_id,
            seq: ack.seq,
            sender: self.user_id.clone(),
            sender_device: self.device_id.clone(),
            client_msg_id: ack.client_msg_id,
            ts: ack.ts,
            payload,
            membership: row
                .membership
                .as_deref()
                .and_then(|m| serde_json::from_str(m).ok()),
        })
        .await
    }

    /// The server refused a send. Returns whether to retry it later.
    /// `current_epoch` is the hub's epoch, sent with `wrong_epoch`.
    pub(crate) async fn on_send_error(
        &self,
        client_msg_id: &str,
        code: ErrorCode,
        current_epoch: Option<u64>,
    ) -> Result<bool> {
        if matches!(code, ErrorCode::RateLimited | ErrorCode::Internal) {
            return Ok(true);
        }
        let row = {
            let mut conn = self.db.writer.lock().await;
            store::outbox_all(&mut conn)
                .await?
                .into_iter()
                .find(|r| r.client_msg_id == client_msg_id)
        };
        let Some(row) = row else {
            return Ok(false);
        };
        let chat = ChatId::try_from(row.chat_id.as_str()).map_err(Error::store)?;
        let is_commit = row.kind == store::OUTBOX_COMMIT;
        let wrong_epoch = code == ErrorCode::WrongEpoch;
        {
            let mut conn = self.db.writer.lock().await;
            let mut tx = store::begin(&mut conn).await?;
            if is_commit {
                // Another commit won the epoch (or ours is moot): forget ours; it is
                // made again, if still needed, once we caught up.
                store::outbox_remove(&mut tx, &chat, client_msg_id).await?;
                let p = provider(&mut tx);
                if let Some(mut g) = Group::load(&p, chat.as_str().as_bytes()).map_err(fatal)?
                    && g.has_pending_commit()
                {
                    g.discard_pending_commit(&p).map_err(fatal)?;
                }
            } else if wrong_epoch {
                // Too old an epoch: encrypt it again in the current one.
                store::outbox_set_payload(&mut tx, row.id, None, None).await?;
            } else {
                store::outbox_remove(&mut tx, &chat, client_msg_id).await?;
                store::update_own_message(
                    &mut tx,
                    &chat,
                    client_msg_id,
                    None,
                    None,
                    MessageState::Failed,
                )
                .await?;
            }
            tx.commit().await?;
        }
        tracing::info!(%chat, %client_msg_id, code = code.as_str(), "send refused");
        if wrong_epoch {
            self.catch_up(&chat).await?;
            // Caught up, the group is in the hub's epoch. Behind it, the commit that
            // ended our epoch has not reached our server yet (it follows the hub): retry
            // later, encrypting again once it is merged. Ahead of it, retrying would
            // only be refused again.
            let epoch = {
                let mut conn = self.db.writer.lock().await;
                let p = provider(&mut conn);
                Group::load(&p, chat.as_str().as_bytes())
                    .map_err(fatal)?
                    .map(|g| g.epoch())
            };
            if let (Some(have), Some(hub)) = (epoch, current_epoch)
                && have < hub
            {
                tracing::info!(%chat, epoch = have, current_epoch = hub,
                    "the hub's newer commit is still on its way; retrying later");
                return Ok(true);
            }
            if current_epoch.is_some() && epoch != current_epoch {
                tracing::warn!(%chat, ?epoch, ?current_epoch, "this device is out of step with the hub's epoch");
                return Ok(false);
            }
            if is_commit {
                self.needs_device_sync.store(true, Ordering::SeqCst);
            }
            return Ok(true);
        }
        if !is_commit {
            self.emit(Event::MessageStateChanged {
                chat_id: chat,
                id: client_msg_id.to_owned(),
                seq: None,
                state: MessageState::Failed,
            });
        }
        Ok(false)
    }

    /// Processes every event of the chat the server has after our cursor.
    pub(crate) async fn catch_up(&self, chat: &ChatId) -> Result<()> {
        let mut conn = self.db.writer.lock().await;
        loop {
            let cur = store::cursor(&mut conn, chat).await?;
            let page = self
                .api
                .history(
                    chat,
                    cur.last_seq,
                    u32::try_from(HISTORY_PAGE).unwrap_or(500),
                )
                .await?;
            if page.is_empty() {
                return Ok(());
            }
            for e in page {
                let cur = store::cursor(&mut conn, chat).await?;
                if e.seq > cur.last_seq {
                    self.process_one(&mut conn, e.into()).await?;
                }
            }
        }
    }

    /// A member's receipts changed: store them and move our ticks.
    pub(crate) async fn on_receipt(&self, chat: ChatId, receipt: Receipt) -> Result<()> {
        let mut events = Vec::new();
        {
            let mut conn = self.db.writer.lock().await;
            let mut tx = store::begin(&mut conn).await?;
            store::ensure_chat(&mut tx, &chat, crate::client::now_ms()).await?;
            let (delivered, read) = store::raise_receipt(
                &mut tx,
                &chat,
                &receipt.user_id,
                receipt.delivered_seq,
                receipt.read_seq,
            )
            .await?;
            if receipt.user_id == self.user_id {
                // Another device of ours read the chat.
                store::set_read_seq(&mut tx, &chat, read).await?;
                store::set_read_sent(&mut tx, &chat, read).await?;
            } else {
                for m in store::unsettled_own(&mut tx, &chat).await? {
                    let Some(seq) = m.seq else { continue };
                    let state =
                        store::state_from_receipts(&mut tx, &chat, &self.user_id, seq).await?;
                    if state > m.state {
                        store::update_own_message(&mut tx, &chat, &m.id, None, None, state).await?;
                        events.push(Event::MessageStateChanged {
                            chat_id: chat.clone(),
                            id: m.id,
                            seq: Some(seq),
                            state,
                        });
                    }
                }
            }
            tx.commit().await?;
            events.insert(
                0,
                Event::ReceiptChanged {
                    chat_id: chat,
                    user_id: receipt.user_id,
                    delivered_seq: delivered,
                    read_seq: read,
                },
            );
        }
        for e in events {
            self.emit(e);
        }
        Ok(())
    }

    /// Encrypts a queued message for sending, in the chat's current epoch, and stores
    /// the ciphertext in the outbox row (the same bytes are resent until acknowledged).
    /// `Ok(None)`: not now (a Commit of ours awaits the server).
    pub(crate) async fn encrypt_queued(
        &self,
        row: &store::OutboxRow,
    ) -> Result<Option<(Vec<u8>, u64)>> {
        let Some(plaintext) = &row.plaintext else {
            return Ok(None);
        };
        let chat = ChatId::try_from(row.chat_id.as_str()).map_err(Error::store)?;
        let mut conn = self.db.writer.lock().await;
        let commit_queued = store::outbox_all(&mut conn)
            .await?
            .iter()
            .any(|r| r.chat_id == row.chat_id && r.kind == store::OUTBOX_COMMIT);
        let mut tx = store::begin(&mut conn).await?;
        let loaded = {
            let p = provider(&mut tx);
            Group::load(&p, chat.as_str().as_bytes()).map_err(fatal)?
        };
        if let Some(mut g) = loaded
            && g.has_pending_proposals()
            && !commit_queued
        {
            // A member asked to leave: MLS lets nobody send until that is committed, so
            // commit it first; the message goes in the epoch that commit creates. (A
            // pending commit that is not queued can never be confirmed.)
            if g.has_pending_commit() {
                g.discard_pending_commit(&provider(&mut tx))
                    .map_err(fatal)?;
            }
            let departed = self.departed(&mut tx, &chat, &g).await?;
            if self
                .commit_departures(&mut tx, &chat, &mut g, &departed, true)
                .await?
            {
                tx.commit().await?;
                return Ok(None);
            }
        }
        let result = {
            let p = provider(&mut tx);
            match Group::load(&p, chat.as_str().as_bytes()).map_err(fatal)? {
                None => Err("this device is not in the chat's group".to_owned()),
                // Our commit is on its way: the message goes in the epoch it creates.
                Some(g) if g.has_pending_commit() && commit_queued => return Ok(None),
                // A pending commit that is not queued can never be confirmed: drop it.
                Some(mut g) if g.has_pending_commit() => g
                    .discard_pending_commit(&p)
                    .map_err(|e| e.to_string())
                    .and_then(|()| {
                        g.encrypt(&p, &self.identity, plaintext)
                            .map(|m| (m, g.epoch()))
                            .map_err(|e| e.to_string())
                    }),
                Some(mut g) => g
                    .encrypt(&p, &self.identity, plaintext)
                    .map(|m| (m, g.epoch()))
                    .map_err(|e| e.to_string()),
            }
        };
        match result {
            Ok((mls_message, epoch)) => {
                let payload = ChatPayload::Application { mls_message }.to_bytes();
                store::outbox_set_payload(&mut tx, row.id, Some(&payload), Some(epoch)).await?;
                tx.commit().await?;
                Ok(Some((payload, epoch)))
            }
            Err(reason) => {
                tx.rollback().await?;
                let mut tx = store::begin(&mut conn).await?;
                store::outbox_remove(&mut tx, &chat, &row.client_msg_id).await?;
                store::update_own_message(
                    &mut tx,
                    &chat,
                    &row.client_msg_id,
                    None,
                    None,
                    MessageState::Failed,
                )
                .await?;
                tx.commit().await?;
                tracing::warn!(%chat, %reason, "cannot encrypt a queued message");
                self.emit(Event::MessageStateChanged {
                    chat_id: chat,
                    id: row.client_msg_id.clone(),
                    seq: None,
                    state: MessageState::Failed,
                });
                Ok(None)
            }
        }
    }
}

/// Turns a decrypted envelope into a history row (a placeholder for kinds this
/// version does not show), with the media reference (JSON) of a file message.
fn decode_message(
    ev: &Incoming,
    user: &UserId,
    device: &DeviceId,
    plaintext: &[u8],
) -> (Message, Option<String>) {
    let mut media_json = None;
    let mut reply_to = None;
    let mut expires_at = None;
    let (id, sent_at, kind, body) = match Envelope::from_bytes(plaintext) {
        Ok(env) => {
            // Counted from this device's receipt (MS33).
            expires_at = env
                .expires_in
                .map(|s| crate::client::now_ms() + i64::from(s) * 1000);
            let (kind, body) = match env.content {
                Content::Text { text } => ("text".to_owned(), text),
                Content::Media { media, caption } => {
                    let body = crate::media::describe(&media, caption.as_deref());
                    media_json = serde_json::to_string(&crate::media::StoredMedia {
                        media: *media,
                        caption,
                    })
                    .ok();
                    ("media".to_owned(), body)
                }
                Content::Reply { text, in_reply_to } => {
                    reply_to = Some(in_reply_to.as_str().to_owned());
                    ("reply".to_owned(), text)
                }
                Content::Unknown { kind } => {
                    (kind.clone(), format!("[unsupported message: {kind}]"))
                }
                Content::Timer { seconds } => (
                    "timer".to_owned(),
                    crate::disappearing::describe_timer(seconds),
                ),
                Content::ReadReceipts { allowed } => (
                    "read_receipts".to_owned(),
                    crate::disappearing::describe_receipts(allowed),
                ),
                other => {
                    let kind = match other {
                        Content::Reaction { .. } => "reaction",
                        Content::Edit { .. } => "edit",
                        Content::Delete { .. } => "delete",
                        _ => "unknown",
                    };
                    (kind.to_owned(), format!("[{kind}]"))
                }
            };
            (
                env.id.as_str().to_owned(),
                i64::try_from(env.sent_at_ms).unwrap_or(0),
                kind,
                body,
            )
        }
        Err(e) => (
            format!("seq{}", ev.seq),
            ev.ts,
            "invalid".to_owned(),
            format!("[unreadable message: {e}]"),
        ),
    };
    let message = Message {
        chat_id: ev.chat_id.clone(),
        id,
        seq: Some(ev.seq),
        sender: user.clone(),
        sender_device: device.clone(),
        outgoing: false,
        kind,
        body,
        sent_at_ms: sent_at,
        server_ts: Some(ev.ts),
        state: MessageState::Received,
        reply_to,
        edited_at: None,
        deleted: false,
        expires_at,
    };
    (message, media_json)
}
