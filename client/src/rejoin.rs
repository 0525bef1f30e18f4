//! Rejoining the user's chats by MLS external commit (`spec/backup.md` BK18–BK23): a
//! device that has no group state for a chat of its user — a fresh install restored
//! from a backup, whose MLS state was never backed up — joins each such chat from the
//! GroupInfo the chat's hub keeps ([`Client::rejoin_chats`], which [`Client::restore`]
//! calls after importing the history).
//!
//! Per chat: fetch the GroupInfo (the hub serves it to a member user's devices only),
//! `Group::join_external`, send the commit through the hub like any commit (its epoch is
//! the hub's compare-and-set), and keep the group only once the hub accepted it. The
//! group is written in one local transaction that commits after the hub's answer, so a
//! refusal leaves the device exactly as it was; `wrong_epoch` (another commit won the
//! epoch) fetches a fresh GroupInfo and tries again. Other members' clients accept the
//! commit because the device's user already has a leaf in the group (BK17), and encrypt
//! to the new device from then on. Messages sent before the commit stay unreadable to
//! the device (they were encrypted before it joined); the backup brings the history.

use parley_client_api::http::chats::{ChatKind, ChatSummary, MlsKind, MlsMeta};
use parley_client_api::{ChatId, ErrorCode, Payload};
use parley_crypto::Group;

use crate::client::{Client, Event, Inner, commit_msg_id, now_ms};
use crate::error::{Error, Result};
use crate::payload::ChatPayload;
use crate::store::{self, provider};

/// How many fresh GroupInfos one chat's rejoin tries when commits keep winning its epoch.
const MAX_ATTEMPTS: usize = 8;

/// What [`Client::rejoin_chats`] did.
#[derive(Debug, Default)]
pub struct RejoinSummary {
    /// Chats this device joined by external commit now.
    pub rejoined: Vec<ChatId>,
    /// Chats this device was in already (it has their group state).
    pub already_joined: Vec<ChatId>,
    /// Chats it could not join, each with why; nothing of them changed on the device.
    pub failed: Vec<RejoinFailure>,
}

/// A chat [`Client::rejoin_chats`] could not join.
#[derive(Debug)]
pub struct RejoinFailure {
    pub chat_id: ChatId,
    pub error: Error,
}

impl Inner {
    async fn has_group(&self, chat: &ChatId) -> Result<bool> {
        let mut conn = self.db.writer.lock().await;
        let p = provider(&mut conn);
        Ok(Group::load(&p, chat.as_str().as_bytes())
            .map_err(Error::crypto)?
            .is_some())
    }

    /// Joins `chat` by external commit. False if the device has its group already (a
    /// Welcome came meanwhile).
    async fn rejoin_chat(&self, chat: &ChatSummary) -> Result<bool> {
        let chat_id = &chat.chat_id;
        let gid = chat_id.as_str().as_bytes();
        for _ in 0..MAX_ATTEMPTS {
            let info = self.api.group_info(chat_id).await?;
            if &info.chat_id != chat_id {
                return Err(Error::Protocol(format!(
                    "asked for the GroupInfo of {chat_id}, got {}'s",
                    info.chat_id
                )));
            }
            // The writer connection is held until the hub answered, so nothing else
            // touches this chat's state in between; the transaction commits only if
            // the hub accepted the commit.
            let mut conn = self.db.writer.lock().await;
            let mut tx = store::begin(&mut conn).await?;
            let joined = {
                let p = provider(&mut tx);
                if Group::load(&p, gid).map_err(Error::crypto)?.is_some() {
                    None
                } else {
                    Some(
                        Group::join_external(&p, &self.identity, info.group_info.as_bytes(), gid)
                            .map_err(|e| {
                            Error::Crypto(format!("cannot join from the GroupInfo: {e}"))
                        })?,
                    )
                }
            };
            let Some((group, pc)) = joined else {
                tx.rollback().await?;
                return Ok(false);
            };
            if pc.epoch != info.epoch {
                tx.rollback().await?;
                return Err(Error::Protocol(format!(
                    "the hub says the GroupInfo is of epoch {}, it is of epoch {}",
                    info.epoch, pc.epoch
                )));
            }
            let payload = ChatPayload::Commit {
                epoch: pc.epoch,
                commit: pc.commit,
                welcome: None,
            };
            let body = crate::api::wire(serde_json::json!({
                "client_msg_id": commit_msg_id(),
                "payload": Payload(payload.to_bytes()),
                "mls": MlsMeta { kind: MlsKind::Commit, epoch: pc.epoch },
                "group_info": pc.group_info.map(Payload),
            }))?;
            match self.api.send_event(chat_id, &body).await {
                Ok(ack) => {
                    let members = chat.members.clone();
                    store::ensure_chat(&mut tx, chat_id, now_ms()).await?;
                    store::set_chat_meta(
                        &mut tx,
                        chat_id,
                        chat.kind == ChatKind::Group,
                        chat.name.as_deref(),
                    )
                    .await?;
                    // Everything before the commit was encrypted before this device
                    // joined. (A pending answer — the hub is another server and slow —
                    // has no seq yet: the commit's event arrives later and is skipped
                    // as this device's own, already merged.)
                    store::set_joined(&mut tx, chat_id, true, &members, ack.seq).await?;
                    if !ack.pending {
                        store::set_last_seq(&mut tx, chat_id, ack.seq).await?;
                    }
                    tx.commit().await?;
                    drop(conn);
                    tracing::info!(chat = %chat_id, seq = ack.seq, epoch = group.epoch(),
                        pending = ack.pending, "rejoined the chat by external commit");
                    self.emit(Event::ChatJoined {
                        chat_id: chat_id.clone(),
                    });
                    self.kick();
                    return Ok(true);
                }
                Err(Error::Server {
                    code: ErrorCode::WrongEpoch,
                    ..
                }) => {
                    // Another commit won the epoch: nothing kept; try a fresh GroupInfo
                    // (the winner published it).
                    tx.rollback().await?;
                    tracing::info!(chat = %chat_id, "external commit lost its epoch; retrying");
                }
                Err(e) => {
                    tx.rollback().await?;
                    return Err(e);
                }
            }
        }
        Err(Error::Protocol(format!(
            "rejoining {chat_id} lost its epoch {MAX_ATTEMPTS} times in a row"
        )))
    }
}

impl Client {
    /// Joins, by MLS external commit, every chat of the user (as the server lists them)
    /// that this device has no group state for — after a restore, on a fresh install
    /// ([`Client::restore`] calls it). Each chat succeeds or fails on its own; a failure
    /// changes nothing on the device for that chat and says why (e.g.
    /// [`ErrorCode::NoGroupInfo`]: no commit published a GroupInfo yet; another device
    /// of the user can still add this one, `spec/devices.md` DL6). Errs only when the
    /// server cannot list the chats.
    pub async fn rejoin_chats(&self) -> Result<RejoinSummary> {
        let inner = &self.inner;
        let mut summary = RejoinSummary::default();
        for chat in inner.api.chats().await? {
            if inner.has_group(&chat.chat_id).await? {
                summary.already_joined.push(chat.chat_id);
                continue;
            }
            match inner.rejoin_chat(&chat).await {
                Ok(true) => summary.rejoined.push(chat.chat_id),
                Ok(false) => summary.already_joined.push(chat.chat_id),
                Err(error) => {
                    tracing::warn!(chat = %chat.chat_id, %error, "cannot rejoin the chat");
                    summary.failed.push(RejoinFailure {
                        chat_id: chat.chat_id,
                        error,
                    });
                }
            }
        }
        Ok(summary)
    }
}
