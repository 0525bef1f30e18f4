//! Chats: creation (this server is the hub), membership, sends, history, receipts.

use std::sync::Arc;

use parley_client_api::http::chats::{ChatEvent, ChatKind, Receipt, SendAck, valid_client_msg_id};
use parley_client_api::{ChatId, UserId};
use rand::Rng as _;

use super::ServiceError;
use super::accounts::Session;
use super::sequencer::Sequencer;
use crate::clock::now_ms;
use crate::config::Config;
use crate::gateway::Gateway;
use crate::store::{
    AnyStore, ChatListRow, NewChat, ReceiptNotice, SendOutcome, SendRequest, Store,
};

/// The most members a chat may be created with (groups grow later through commits).
const MAX_INITIAL_MEMBERS: usize = 1024;

#[derive(Clone)]
pub struct Chats {
    store: AnyStore,
    config: Arc<Config>,
    sequencer: Sequencer,
    gateway: Gateway,
}

impl Chats {
    pub fn new(
        store: AnyStore,
        config: Arc<Config>,
        sequencer: Sequencer,
        gateway: Gateway,
    ) -> Self {
        Self {
            store,
            config,
            sequencer,
            gateway,
        }
    }

    /// Creates a chat with `others` (one other: a direct chat, returned as is if the
    /// pair already has one). Returns the chat and whether it was created.
    pub async fn create(
        &self,
        me: &Session,
        others: Vec<UserId>,
    ) -> Result<(ChatListRow, bool), ServiceError> {
        if others.is_empty() {
            return Err(ServiceError::InvalidParam(
                "members: name at least one other user".into(),
            ));
        }
        if others.len() >= MAX_INITIAL_MEMBERS {
            return Err(ServiceError::InvalidParam(format!(
                "members: at most {} others",
                MAX_INITIAL_MEMBERS - 1
            )));
        }
        let mut members = vec![me.user_id.clone()];
        for other in others {
            if other == me.user_id {
                return Err(ServiceError::InvalidParam(
                    "members: you are added anyway; do not list yourself".into(),
                ));
            }
            if other.server_name() != self.config.server_name.as_str() {
                return Err(ServiceError::Forbidden(format!(
                    "{other} is on another server; this server does not federate yet"
                )));
            }
            if !self.store.user_exists(&other).await? {
                return Err(ServiceError::UnknownUser(other.to_string()));
            }
            if !members.contains(&other) {
                members.push(other);
            }
        }
        let kind = if members.len() == 2 {
            ChatKind::Direct
        } else {
            ChatKind::Group
        };
        let direct_key = (kind == ChatKind::Direct).then(|| {
            let mut pair = [members[0].as_str(), members[1].as_str()];
            pair.sort_unstable();
            pair.join("\n")
        });
        let chat = NewChat {
            chat_id: self.new_chat_id()?,
            kind,
            direct_key,
            created_by: me.user_id.clone(),
            members,
            created_at: now_ms(),
        };
        let (chat_id, created) = self.store.create_chat(&chat).await?;
        let row = self
            .store
            .list_chats(&me.user_id)
            .await?
            .into_iter()
            .find(|c| c.chat_id == chat_id)
            .ok_or_else(|| ServiceError::Internal("created chat not listed".into()))?;
        Ok((row, created))
    }

    fn new_chat_id(&self) -> Result<ChatId, ServiceError> {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
        let mut rng = rand::rng();
        let opaque: String = (0..22)
            .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
            .collect();
        ChatId::new(&opaque, &self.config.server_name)
            .map_err(|e| ServiceError::Internal(e.to_string()))
    }

    pub async fn list(&self, me: &UserId) -> Result<Vec<ChatListRow>, ServiceError> {
        Ok(self.store.list_chats(me).await?)
    }

    /// Current members, after checking that `me` is one of them.
    pub async fn members_as_member(
        &self,
        chat_id: &ChatId,
        me: &UserId,
    ) -> Result<Vec<UserId>, ServiceError> {
        let members = self
            .store
            .chat_members(chat_id)
            .await?
            .ok_or(ServiceError::UnknownChat)?;
        if members.contains(me) {
            Ok(members)
        } else {
            Err(ServiceError::NotMember)
        }
    }

    pub async fn leave(&self, chat_id: &ChatId, me: &UserId) -> Result<(), ServiceError> {
        self.members_as_member(chat_id, me).await?;
        self.store.leave_chat(chat_id, me, now_ms()).await?;
        Ok(())
    }

    /// Sends an event. Resolves once it is committed (✓ sent).
    pub async fn send(
        &self,
        me: &Session,
        chat_id: ChatId,
        client_msg_id: String,
        payload: Vec<u8>,
    ) -> Result<SendAck, ServiceError> {
        if !valid_client_msg_id(&client_msg_id) {
            return Err(ServiceError::InvalidParam(
                "client_msg_id: 1 to 128 printable ASCII characters".into(),
            ));
        }
        let limit = self.config.limits.max_payload_bytes;
        if payload.len() > limit {
            return Err(ServiceError::TooLarge {
                size: payload.len(),
                limit,
            });
        }
        if payload.is_empty() {
            return Err(ServiceError::InvalidParam(
                "payload: must not be empty".into(),
            ));
        }
        let req = SendRequest {
            chat_id: chat_id.clone(),
            sender: me.user_id.clone(),
            sender_device: me.device_id.clone(),
            client_msg_id: client_msg_id.clone(),
            payload,
            ts: now_ms(),
        };
        let ack = |seq, ts, duplicate| SendAck {
            chat_id: chat_id.clone(),
            client_msg_id: client_msg_id.clone(),
            seq,
            ts,
            duplicate,
        };
        match self.sequencer.submit(req).await? {
            SendOutcome::Committed { seq, ts, .. } => Ok(ack(seq, ts, false)),
            SendOutcome::Duplicate { seq, ts } => Ok(ack(seq, ts, true)),
            SendOutcome::UnknownChat => Err(ServiceError::UnknownChat),
            SendOutcome::NotMember => Err(ServiceError::NotMember),
        }
    }

    pub async fn history(
        &self,
        chat_id: &ChatId,
        me: &UserId,
        after: i64,
        limit: u32,
    ) -> Result<Vec<ChatEvent>, ServiceError> {
        self.members_as_member(chat_id, me).await?;
        Ok(self
            .store
            .history(chat_id, after.max(0), limit.clamp(1, 500))
            .await?)
    }

    pub async fn receipts(
        &self,
        chat_id: &ChatId,
        me: &UserId,
    ) -> Result<(i64, Vec<Receipt>), ServiceError> {
        self.members_as_member(chat_id, me).await?;
        self.store
            .receipts(chat_id)
            .await?
            .ok_or(ServiceError::UnknownChat)
    }

    /// Marks everything up to `seq` read and pushes the receipt change.
    pub async fn mark_read(
        &self,
        me: &Session,
        chat_id: &ChatId,
        seq: i64,
    ) -> Result<(), ServiceError> {
        if seq < 0 {
            return Err(ServiceError::InvalidParam("seq: must be >= 0".into()));
        }
        let notices: Vec<ReceiptNotice> = match self
            .store
            .mark_read(chat_id, &me.user_id, &me.device_id, seq, now_ms())
            .await?
        {
            Some(n) => n,
            None => {
                // Tell apart an unknown chat from a non-member.
                self.members_as_member(chat_id, &me.user_id).await?;
                return Err(ServiceError::NotMember);
            }
        };
        self.gateway
            .deliver(
                notices
                    .into_iter()
                    .map(super::inbox::receipt_frame)
                    .collect(),
            )
            .await;
        Ok(())
    }
}
