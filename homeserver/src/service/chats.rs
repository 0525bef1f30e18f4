//! Chats: creation (this server is the hub), membership, sends, history, receipts.

use std::sync::Arc;

use parley_client_api::Payload;
use parley_client_api::http::chats::{
    ChatEvent, ChatKind, MlsKind, Receipt, SendAck, send, valid_client_msg_id,
};
use parley_client_api::{ChatId, UserId};
use rand::Rng as _;

use super::ServiceError;
use super::accounts::Session;
use super::sequencer::Sequencer;
use crate::clock::now_ms;
use crate::config::Config;
use crate::gateway::Gateway;
use crate::store::{
    AnyStore, ChatInfo, ChatListRow, NewChat, ReceiptNotice, SendOutcome, SendRequest, Store,
};

/// Most media blobs one event may refer to.
const MAX_BLOBS_PER_EVENT: usize = 32;

/// Longest group name, in characters.
const MAX_NAME: usize = 128;

fn check_name(name: &str) -> Result<(), ServiceError> {
    let n = name.chars().count();
    if n == 0 || n > MAX_NAME || name.chars().any(char::is_control) {
        return Err(ServiceError::InvalidParam(format!(
            "name: 1 to {MAX_NAME} printable characters"
        )));
    }
    Ok(())
}

#[derive(Clone)]
pub struct Chats {
    store: AnyStore,
    config: Arc<Config>,
    sequencer: Sequencer,
    gateway: Gateway,
    /// Set when federation is on: remote members, forwarded sends.
    remote: Option<Remote>,
    /// Checks the media blobs a send lists.
    media: super::media::Media,
}

#[derive(Clone)]
pub struct Remote {
    pub federation: super::federation::Federation,
    pub relay: super::relay::Relay,
    pub keys: super::keys::Keys,
}

impl Chats {
    pub fn new(
        store: AnyStore,
        config: Arc<Config>,
        sequencer: Sequencer,
        gateway: Gateway,
        remote: Option<Remote>,
        media: super::media::Media,
    ) -> Self {
        Self {
            store,
            config,
            sequencer,
            gateway,
            remote,
            media,
        }
    }

    /// Checks that a remote user may be reached and exists (asking their server).
    async fn check_remote_user(&self, user: &UserId) -> Result<(), ServiceError> {
        let Some(remote) = &self.remote else {
            return Err(ServiceError::Forbidden(format!(
                "{user} is on another server and this server does not federate"
            )));
        };
        remote
            .federation
            .check_allowed(&super::keys::fed_server(user)?)?;
        remote.keys.devices(user).await?;
        Ok(())
    }

    /// Creates a chat with `others` (one other: a direct chat, returned as is if the
    /// pair already has one). Returns the chat and whether it was created.
    pub async fn create(
        &self,
        me: &Session,
        others: Vec<UserId>,
        name: Option<String>,
    ) -> Result<(ChatListRow, bool), ServiceError> {
        if let Some(n) = &name {
            check_name(n)?;
        }
        if others.is_empty() {
            return Err(ServiceError::InvalidParam(
                "members: name at least one other user".into(),
            ));
        }
        let max = self.config.limits.max_group_members;
        if others.len() >= max {
            return Err(ServiceError::InvalidParam(format!(
                "members: at most {} others",
                max - 1
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
                if !members.contains(&other) {
                    self.check_remote_user(&other).await?;
                    members.push(other);
                }
                continue;
            }
            if !self.store.user_exists(&other).await? {
                return Err(ServiceError::UnknownUser(other.to_string()));
            }
            if !members.contains(&other) {
                members.push(other);
            }
        }
        let kind = if members.len() == 2 && name.is_none() {
            ChatKind::Direct
        } else {
            ChatKind::Group
        };
        let direct_key = (kind == ChatKind::Direct).then(|| {
            let mut pair = [members[0].as_str(), members[1].as_str()];
            pair.sort_unstable();
            pair.join("\n")
        });
        let followers: Vec<String> = members
            .iter()
            .map(|m| m.server_name().to_owned())
            .filter(|s| s != self.config.server_name.as_str())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        let chat = NewChat {
            followers: followers.clone(),
            chat_id: self.new_chat_id()?,
            kind,
            direct_key,
            created_by: me.user_id.clone(),
            members,
            name,
            created_at: now_ms(),
        };
        let (chat_id, created) = self.store.create_chat(&chat).await?;
        if let Some(remote) = &self.remote {
            remote.relay.wake(&followers);
        }
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

    /// Takes `me` out of the chat. For a chat hosted elsewhere the leave is queued for
    /// its hub (durably, before the answer) and this server's copy stops delivering to
    /// `me` at once.
    pub async fn leave(&self, chat_id: &ChatId, me: &UserId) -> Result<(), ServiceError> {
        use crate::store::fed::{FedStore, NewOutboxRow, OutboxKind};
        self.members_as_member(chat_id, me).await?;
        if chat_id.hub() == self.config.server_name.as_str() {
            return self.leave_as_hub(chat_id, me).await;
        }
        let Some(remote) = &self.remote else {
            return Err(ServiceError::UnknownChat);
        };
        let hub = parley_federation::ServerName::try_from(chat_id.hub())
            .map_err(|e| ServiceError::Internal(e.to_string()))?;
        remote.federation.check_allowed(&hub)?;
        let leave = parley_federation::api::HubLeave {
            chat_id: super::relay::convert(chat_id).map_err(ServiceError::Internal)?,
            user_id: super::relay::convert(me).map_err(ServiceError::Internal)?,
        };
        let row = NewOutboxRow {
            destination: hub.to_string(),
            kind: OutboxKind::Leave,
            body: serde_json::to_string(&leave)
                .map_err(|e| ServiceError::Internal(e.to_string()))?,
        };
        FedStore::enqueue_outbox(&self.store, &[row], now_ms()).await?;
        remote.relay.wake([&hub.to_string()]);
        self.store.leave_chat(chat_id, me, now_ms()).await?;
        Ok(())
    }

    /// As the chat's hub: takes `user` out of its members (a second time changes
    /// nothing) and sends the new chat state to the followers that still have members.
    pub async fn leave_as_hub(&self, chat_id: &ChatId, user: &UserId) -> Result<(), ServiceError> {
        use crate::store::fed::{ChatRef, FedStore, NewOutboxRow, OutboxKind};
        let left = self.store.leave_chat(chat_id, user, now_ms()).await?;
        let Some(remote) = self.remote.as_ref().filter(|_| left) else {
            return Ok(());
        };
        let rows: Vec<NewOutboxRow> =
            FedStore::chat_followers(&self.store, std::slice::from_ref(chat_id))
                .await?
                .into_iter()
                .flat_map(|(_, servers)| servers)
                .map(|destination| NewOutboxRow {
                    destination,
                    kind: OutboxKind::Snapshot,
                    body: ChatRef::snapshot(chat_id),
                })
                .collect();
        if !rows.is_empty() {
            FedStore::enqueue_outbox(&self.store, &rows, now_ms()).await?;
            remote.relay.wake(rows.iter().map(|r| &r.destination));
        }
        Ok(())
    }

    /// Sends an event. Resolves once it is committed (✓ sent).
    pub async fn send(
        &self,
        me: &Session,
        chat_id: ChatId,
        body: send::Request,
    ) -> Result<SendAck, ServiceError> {
        let send::Request {
            client_msg_id,
            payload: Payload(payload),
            mls,
            membership,
            blobs,
            expires_in,
            read_receipts,
            group_info,
        } = body;
        check_timer(expires_in, mls).map_err(ServiceError::InvalidTimer)?;
        let group_info = group_info.map(|p| p.0);
        check_group_info(
            group_info.as_deref(),
            mls,
            self.config.limits.max_commit_bytes,
        )
        .map_err(ServiceError::InvalidParam)?;
        if blobs.len() > MAX_BLOBS_PER_EVENT {
            return Err(ServiceError::InvalidParam(format!(
                "blobs: at most {MAX_BLOBS_PER_EVENT} per event"
            )));
        }
        if membership
            .as_ref()
            .is_some_and(|m| m.add.is_empty() && m.remove.is_empty())
        {
            return Err(ServiceError::InvalidParam(
                "membership: add or remove someone".into(),
            ));
        }
        if !valid_client_msg_id(&client_msg_id) {
            return Err(ServiceError::InvalidParam(
                "client_msg_id: 1 to 128 printable ASCII characters".into(),
            ));
        }
        let limit = payload_limit(mls, &self.config.limits);
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
        // A send may list a blob only if it is stored here and the sender uploaded it or
        // may download it (forwarding one received works; naming someone else's
        // address does not). Checked before anything is stored or forwarded.
        for blob in &blobs {
            self.media.check_reference(&me.user_id, blob).await?;
        }
        if chat_id.hub() != self.config.server_name.as_str() {
            let extra = Extra {
                expires_in,
                read_receipts,
                group_info,
            };
            return self
                .forward(
                    me,
                    chat_id,
                    client_msg_id,
                    payload,
                    mls,
                    membership,
                    blobs,
                    extra,
                )
                .await;
        }
        let req = SendRequest {
            chat_id: chat_id.clone(),
            sender: me.user_id.clone(),
            sender_device: me.device_id.clone(),
            client_msg_id: client_msg_id.clone(),
            payload,
            ts: now_ms(),
            mls,
            membership,
            blobs,
            expires_in,
            read_receipts,
            group_info,
        };
        let ack = |seq, ts, duplicate| SendAck {
            chat_id: chat_id.clone(),
            client_msg_id: client_msg_id.clone(),
            seq,
            ts,
            duplicate,
            pending: false,
        };
        match self.submit(req).await? {
            SendOutcome::Committed { seq, ts, .. } => Ok(ack(seq, ts, false)),
            SendOutcome::Duplicate { seq, ts } => Ok(ack(seq, ts, true)),
            SendOutcome::UnknownChat => Err(ServiceError::UnknownChat),
            SendOutcome::NotMember => Err(ServiceError::NotMember),
            SendOutcome::WrongEpoch { current } => Err(ServiceError::WrongEpoch { current }),
            SendOutcome::UnknownUser(u) => Err(ServiceError::UnknownUser(u.to_string())),
            SendOutcome::UnknownBlob(b) => Err(ServiceError::UnknownBlob(b.to_string())),
            SendOutcome::Refused(why) => Err(ServiceError::Forbidden(why)),
            SendOutcome::TooLargeToFederate { size } => Err(ServiceError::TooLargeToFederate {
                size,
                limit: parley_federation::api::send::MAX_BATCH_BYTES,
            }),
        }
    }

    /// Sequences a send as this chat's hub (a local client's, or one a follower
    /// forwarded), and wakes the relay for the followers the event was queued for.
    pub async fn submit(&self, req: SendRequest) -> Result<SendOutcome, ServiceError> {
        let outcome = self.sequencer.submit(req).await?;
        if let (SendOutcome::Committed { followers, .. }, Some(remote)) = (&outcome, &self.remote) {
            remote.relay.wake(followers);
        }
        Ok(outcome)
    }

    /// A local user's send to a chat hosted elsewhere: queued durably for the hub, then
    /// answered with the hub's `seq`, or as pending when the hub does not answer soon
    /// (the send stays queued; its event arrives with its `seq` when the hub takes it).
    #[allow(clippy::too_many_arguments)]
    async fn forward(
        &self,
        me: &Session,
        chat_id: ChatId,
        client_msg_id: String,
        payload: Vec<u8>,
        mls: Option<parley_client_api::http::chats::MlsMeta>,
        membership: Option<parley_client_api::http::chats::MembershipChange>,
        blobs: Vec<parley_client_api::BlobHash>,
        extra: Extra,
    ) -> Result<SendAck, ServiceError> {
        let Some(remote) = &self.remote else {
            return Err(ServiceError::UnknownChat);
        };
        self.members_as_member(&chat_id, &me.user_id).await?;
        let hub = parley_federation::ServerName::try_from(chat_id.hub())
            .map_err(|e| ServiceError::Internal(e.to_string()))?;
        remote.federation.check_allowed(&hub)?;
        let send = parley_federation::api::HubSend {
            chat_id: super::relay::convert(&chat_id).map_err(ServiceError::Internal)?,
            sender: super::relay::convert(&me.user_id).map_err(ServiceError::Internal)?,
            sender_device: super::relay::convert(&me.device_id).map_err(ServiceError::Internal)?,
            client_msg_id: client_msg_id.clone(),
            payload: parley_federation::api::Payload(payload),
            mls: mls
                .map(|m| super::relay::convert(&m))
                .transpose()
                .map_err(ServiceError::Internal)?,
            membership: membership
                .map(|m| super::relay::convert(&m))
                .transpose()
                .map_err(ServiceError::Internal)?,
            blobs: blobs.iter().map(|b| b.to_string()).collect(),
            expires_in: extra.expires_in,
            read_receipts: extra.read_receipts,
            group_info: extra.group_info.map(parley_federation::api::Payload),
        };
        let body =
            serde_json::to_string(&send).map_err(|e| ServiceError::Internal(e.to_string()))?;
        // Checked before anything is stored: a send that cannot leave would wait forever.
        let size = crate::store::fed::entry_wire_bytes(0, body.len());
        if size > parley_federation::api::send::MAX_BATCH_BYTES {
            return Err(ServiceError::TooLargeToFederate {
                size,
                limit: parley_federation::api::send::MAX_BATCH_BYTES,
            });
        }
        let row = crate::store::fed::NewOutboxRow {
            destination: hub.to_string(),
            kind: crate::store::fed::OutboxKind::Send,
            body,
        };
        let ids =
            crate::store::fed::FedStore::enqueue_outbox(&self.store, &[row], now_ms()).await?;
        let Some(&row_id) = ids.first() else {
            return Err(ServiceError::Internal("outbox row not written".into()));
        };
        remote.relay.wake([&hub.to_string()]);
        use parley_federation::api::send::SendResult;
        let ack = |seq, ts, duplicate, pending| SendAck {
            chat_id: chat_id.clone(),
            client_msg_id: client_msg_id.clone(),
            seq,
            ts,
            duplicate,
            pending,
        };
        match remote
            .relay
            .wait_result(row_id, self.config.federation.forward_wait())
            .await
        {
            None => Ok(ack(0, now_ms(), false, true)),
            Some(SendResult::Accepted { seq, ts, duplicate }) => Ok(ack(seq, ts, duplicate, false)),
            Some(SendResult::Rejected(e)) => Err(super::federation::entry_error(e)),
        }
    }

    /// The chat's current GroupInfo for a device of `me` (spec/backup.md BK19): as its
    /// hub, if `me` is a member and the stored GroupInfo is of the current epoch; for a
    /// chat hosted elsewhere, asked of the hub (signed) once this server's copy lists
    /// `me` as a member — the hub applies the same rule.
    pub async fn group_info(
        &self,
        chat_id: &ChatId,
        me: &UserId,
    ) -> Result<(u64, Vec<u8>), ServiceError> {
        if chat_id.hub() == self.config.server_name.as_str() {
            return self.group_info_as_hub(chat_id, me).await;
        }
        let Some(remote) = &self.remote else {
            return Err(ServiceError::UnknownChat);
        };
        self.members_as_member(chat_id, me).await?;
        let hub = parley_federation::ServerName::try_from(chat_id.hub())
            .map_err(|e| ServiceError::Internal(e.to_string()))?;
        remote.federation.check_allowed(&hub)?;
        use parley_federation::api::chats::group_info as fed;
        let path = parley_federation::api::fill(
            fed::PATH,
            &[("chat_id", chat_id.as_str()), ("user_id", me.as_str())],
        );
        let resp: fed::Response = remote
            .federation
            .client()
            .send_json::<(), _>(&hub, fed::METHOD, &path, None)
            .await
            .map_err(|e| group_info_error(&hub, e))?;
        if resp.chat_id.as_str() != chat_id.as_str() || resp.group_info.0.is_empty() {
            return Err(ServiceError::Remote(format!(
                "{hub} answered with another chat's or an empty GroupInfo"
            )));
        }
        Ok((resp.epoch, resp.group_info.0))
    }

    /// As the chat's hub: its GroupInfo for a device of `user`, a current member.
    pub async fn group_info_as_hub(
        &self,
        chat_id: &ChatId,
        user: &UserId,
    ) -> Result<(u64, Vec<u8>), ServiceError> {
        use crate::store::group_info::GroupInfoStore as _;
        self.members_as_member(chat_id, user).await?;
        match self.store.group_info(chat_id).await? {
            Some(row) if row.epoch == row.chat_epoch => Ok((row.epoch, row.data)),
            Some(row) => Err(ServiceError::NoGroupInfo(format!(
                "the chat is at epoch {} and its last GroupInfo is of epoch {}: the commits \
                 since published none",
                row.chat_epoch, row.epoch
            ))),
            None => Err(ServiceError::NoGroupInfo(
                "no commit of the chat published a GroupInfo".into(),
            )),
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
        let events = self
            .store
            .history(chat_id, after.max(0), limit.clamp(1, 500))
            .await?;
        super::blocking::Blocking::new(self.store.clone())
            .filter_history(chat_id, me, events)
            .await
    }

    pub async fn receipts(
        &self,
        chat_id: &ChatId,
        me: &UserId,
    ) -> Result<(i64, Vec<Receipt>), ServiceError> {
        use crate::store::receipt_policy::ReceiptPolicyStore as _;
        self.members_as_member(chat_id, me).await?;
        let (last, receipts) = self
            .store
            .receipts(chat_id)
            .await?
            .ok_or(ServiceError::UnknownChat)?;
        // Read-receipt privacy (MS42–MS45): what `me` may see.
        let users: Vec<UserId> = receipts.iter().map(|r| r.user_id.clone()).collect();
        let policy = self
            .store
            .receipt_policy(std::slice::from_ref(chat_id), &users)
            .await?;
        let receipts = receipts
            .into_iter()
            .map(|r| policy.mask(chat_id, Some(me), r))
            .collect();
        Ok((last, receipts))
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
        super::inbox::push_receipts(&self.gateway, notices).await;
        if let Some(remote) = &self.remote {
            super::relay::federate_receipts(
                &self.store,
                &remote.relay,
                self.config.server_name.as_str(),
                vec![(chat_id.clone(), me.user_id.clone())],
                None,
            )
            .await?;
        }
        Ok(())
    }

    /// Kind, name, epoch and members with roles, for a member.
    pub async fn info(&self, chat_id: &ChatId, me: &UserId) -> Result<ChatInfo, ServiceError> {
        let info = self
            .store
            .chat_info(chat_id)
            .await?
            .ok_or(ServiceError::UnknownChat)?;
        if info.members.iter().any(|(m, _)| m == me) {
            Ok(info)
        } else {
            Err(ServiceError::NotMember)
        }
    }

    /// The chat's info, after checking that `me` is an admin of a group.
    async fn as_group_admin(
        &self,
        chat_id: &ChatId,
        me: &UserId,
    ) -> Result<ChatInfo, ServiceError> {
        let info = self.info(chat_id, me).await?;
        if info.kind != ChatKind::Group {
            return Err(ServiceError::Forbidden(
                "a 1:1 chat has no admins or name".into(),
            ));
        }
        if !info.members.iter().any(|(m, admin)| m == me && *admin) {
            return Err(ServiceError::Forbidden("only admins may do this".into()));
        }
        Ok(info)
    }

    pub async fn rename(
        &self,
        me: &UserId,
        chat_id: &ChatId,
        name: &str,
    ) -> Result<(), ServiceError> {
        check_name(name)?;
        self.as_group_admin(chat_id, me).await?;
        Ok(self.store.rename_chat(chat_id, name).await?)
    }

    /// Promotes or demotes a member; a group keeps at least one admin.
    pub async fn set_admin(
        &self,
        me: &UserId,
        chat_id: &ChatId,
        user: &UserId,
        admin: bool,
    ) -> Result<(), ServiceError> {
        let info = self.as_group_admin(chat_id, me).await?;
        let Some((_, was_admin)) = info.members.iter().find(|(m, _)| m == user) else {
            return Err(ServiceError::InvalidParam(format!(
                "{user} is not a member"
            )));
        };
        let admins = info.members.iter().filter(|(_, a)| *a).count();
        if *was_admin && !admin && admins == 1 {
            return Err(ServiceError::Forbidden(
                "a group keeps at least one admin".into(),
            ));
        }
        self.store.set_admin(chat_id, user, admin).await?;
        Ok(())
    }
}

/// What a forwarded send carries beside its payload and MLS metadata.
struct Extra {
    expires_in: Option<u32>,
    read_receipts: Option<bool>,
    group_info: Option<Vec<u8>>,
}

/// A send's GroupInfo (spec/backup.md BK18): only with an MLS commit, not empty, at most
/// `limit` bytes. The bytes are never read.
pub(crate) fn check_group_info(
    group_info: Option<&[u8]>,
    mls: Option<parley_client_api::http::chats::MlsMeta>,
    limit: usize,
) -> Result<(), String> {
    let Some(info) = group_info else {
        return Ok(());
    };
    if !mls.is_some_and(|m| m.kind == MlsKind::Commit) {
        return Err("group_info: only with an MLS commit".into());
    }
    if info.is_empty() || info.len() > limit {
        return Err(format!("group_info: 1 to {limit} bytes"));
    }
    Ok(())
}

/// A disappearing timer must be within the spec's bounds (MS32), and only application
/// messages expire: a commit or proposal dropped before a device received it would leave
/// that device unable to follow the chat's epochs.
pub(crate) fn check_timer(
    expires_in: Option<u32>,
    mls: Option<parley_client_api::http::chats::MlsMeta>,
) -> Result<(), String> {
    use parley_client_api::http::chats::timer;
    let Some(secs) = expires_in else {
        return Ok(());
    };
    if !timer::valid(secs) {
        return Err(format!(
            "expires_in: {secs} is not a timer (between {} seconds and {} days)",
            timer::MIN_SECS,
            timer::MAX_SECS / timer::DAY
        ));
    }
    if mls.is_some_and(|m| m.kind != MlsKind::Application) {
        return Err("expires_in: only application messages expire".into());
    }
    Ok(())
}

/// A hub's refusal of a GroupInfo request, as this server's error.
fn group_info_error(
    hub: &parley_federation::ServerName,
    e: parley_federation::transport::http::ClientError,
) -> ServiceError {
    use parley_federation::FedErrorCode as C;
    use parley_federation::transport::http::ClientError;
    match e {
        ClientError::Status {
            body: Some(body), ..
        } => match body.error {
            C::NotMember => ServiceError::NotMember,
            C::UnknownChat => ServiceError::UnknownChat,
            C::NotFound => ServiceError::NoGroupInfo(format!("{hub}: {}", body.message)),
            C::FederationDenied => {
                ServiceError::FederationDenied(format!("{hub} refuses us: {}", body.message))
            }
            C::Forbidden => ServiceError::Forbidden(format!("{hub}: {}", body.message)),
            _ => ServiceError::Remote(format!("{hub}: {}", body.message)),
        },
        e => ServiceError::Remote(format!("{hub}: {e}")),
    }
}

/// The largest payload a send may carry. Handshakes may be larger than messages: a
/// Commit carries the Welcome (with the ratchet tree) for the devices it adds. The same
/// limit holds for a user's own send and for one a follower forwards.
pub(super) fn payload_limit(
    mls: Option<parley_client_api::http::chats::MlsMeta>,
    limits: &crate::config::Limits,
) -> usize {
    if mls.is_some_and(|m| m.kind != MlsKind::Application) {
        limits.max_commit_bytes
    } else {
        limits.max_payload_bytes
    }
}
