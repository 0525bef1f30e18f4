//! Disappearing messages, the chat read-receipt policy and reports
//! (`spec/messaging.md` MS30–MS56).
//!
//! A chat's timer is an encrypted chat event (`timer`) every member's devices apply in
//! `seq` order; each message sent while it is on carries `expires_in` inside the
//! envelope (every device deletes it that long after *it* received it) and, in the
//! clear, on the send (so servers drop undelivered copies at expiry instead of keeping
//! them for their full retention). The read-receipt policy is a chat event too
//! (`read_receipts`), whose value the send also carries in the clear: the servers
//! enforce it.

use std::sync::Arc;
use std::time::Duration;

use parley_client_api::http::chats::timer;
use parley_client_api::http::reports::{self, ReportTarget, ReportedMessage};
use parley_client_api::{ChatId, UserId};
use parley_crypto::Content;

use crate::client::{Client, Event, Inner, now_ms};
use crate::error::{Error, Result};
use crate::store::{self, Message};

/// How often a device deletes its expired messages.
const EXPIRY_TICK: Duration = Duration::from_secs(1);

/// The text a `timer` event shows.
pub(crate) fn describe_timer(seconds: u32) -> String {
    if seconds == 0 {
        "[disappearing messages off]".to_owned()
    } else {
        format!("[disappearing messages: {}]", timer::display(seconds))
    }
}

/// The text a `read_receipts` event shows.
pub(crate) fn describe_receipts(allowed: bool) -> String {
    if allowed {
        "[read receipts allowed in this chat]".to_owned()
    } else {
        "[read receipts turned off for everyone in this chat]".to_owned()
    }
}

impl Client {
    /// Sets the chat's disappearing-message timer (`None`: off; else seconds, see
    /// [`timer`]: 24 h, 7 d, 90 d or a custom value within the bounds). Every member sees
    /// the change as a chat event; what anyone sends from then on disappears from every
    /// device that long after that device received it.
    pub async fn set_timer(&self, chat: &ChatId, seconds: Option<u32>) -> Result<Message> {
        if let Some(s) = seconds
            && !timer::valid(s)
        {
            return Err(Error::Invalid(format!(
                "a timer is between {} seconds and {} days (or off)",
                timer::MIN_SECS,
                timer::MAX_SECS / timer::DAY
            )));
        }
        let content = Content::Timer {
            seconds: seconds.unwrap_or(0),
        };
        self.setting_event(chat, content).await
    }

    /// Allows or forbids read receipts for every member of the chat (in a group, admins
    /// only: the hub refuses it from others). Shown to all as a chat event; the servers
    /// relay no read receipt in a chat that forbids them.
    pub async fn set_chat_read_receipts(&self, chat: &ChatId, allowed: bool) -> Result<Message> {
        self.setting_event(chat, Content::ReadReceipts { allowed })
            .await
    }

    async fn setting_event(&self, chat: &ChatId, content: Content) -> Result<Message> {
        let inner = &self.inner;
        let body = match &content {
            Content::Timer { seconds } => describe_timer(*seconds),
            Content::ReadReceipts { allowed } => describe_receipts(*allowed),
            _ => String::new(),
        };
        let kind = match &content {
            Content::Timer { .. } => "timer",
            _ => "read_receipts",
        };
        let (message, bytes) = inner.pending_message(chat, content.clone(), kind, body, None)?;
        inner.queue_message(chat, &message, bytes).await?;
        let mut conn = inner.db.writer.lock().await;
        store::apply_chat_setting(&mut conn, chat, &content).await?;
        Ok(message)
    }

    /// Reports to this user's server's admins: a user, a chat, or one message (`about`),
    /// with a reason and the messages of this device's history named by `attach` (their
    /// decrypted text goes to the admins). A report needs a reason or a message.
    pub async fn report(
        &self,
        about: ReportTarget,
        reason: &str,
        attach: &[(ChatId, String)],
    ) -> Result<reports::create::Response> {
        if reason.trim().is_empty() && attach.is_empty() {
            return Err(Error::Invalid(
                "a report needs a reason or a message".into(),
            ));
        }
        let mut messages = Vec::with_capacity(attach.len());
        for (chat, id) in attach {
            let m = self
                .inner
                .db
                .reader
                .message(chat, id)
                .await?
                .ok_or_else(|| Error::Invalid(format!("no message {id} in {chat}")))?;
            messages.push(ReportedMessage {
                chat_id: m.chat_id,
                seq: m.seq,
                sender: m.sender,
                ts: m.server_ts.unwrap_or(m.sent_at_ms),
                kind: m.kind,
                text: m.body,
            });
        }
        let body = reports::create::Request {
            target: about,
            reason: reason.to_owned(),
            messages,
        };
        self.inner
            .api
            .call(reports::create::METHOD, reports::create::PATH, Some(&body))
            .await
    }

    /// Reports one message of the chat (by its id), attaching it.
    pub async fn report_message(
        &self,
        chat: &ChatId,
        id: &str,
        reason: &str,
    ) -> Result<reports::create::Response> {
        let m = self
            .inner
            .db
            .reader
            .message(chat, id)
            .await?
            .ok_or_else(|| Error::Invalid(format!("no message {id} in this chat")))?;
        let Some(seq) = m.seq else {
            return Err(Error::Invalid(format!("message {id} is not sent yet")));
        };
        self.report(
            ReportTarget::Message {
                chat_id: chat.clone(),
                seq,
                sender: m.sender.clone(),
            },
            reason,
            &[(chat.clone(), id.to_owned())],
        )
        .await
    }

    /// Reports a user (no message attached unless given).
    pub async fn report_user(
        &self,
        user: &UserId,
        reason: &str,
        attach: &[(ChatId, String)],
    ) -> Result<reports::create::Response> {
        self.report(
            ReportTarget::User {
                user_id: user.clone(),
            },
            reason,
            attach,
        )
        .await
    }
}

impl Inner {
    /// Deletes this device's expired messages now; tells the app of each.
    pub(crate) async fn purge_expired(&self) -> Result<usize> {
        let gone = {
            let mut conn = self.db.writer.lock().await;
            let mut tx = store::begin(&mut conn).await?;
            let gone = store::purge_expired(&mut tx, now_ms()).await?;
            tx.commit().await?;
            gone
        };
        let n = gone.len();
        for (chat_id, id) in gone {
            self.emit(Event::MessageExpired { chat_id, id });
        }
        Ok(n)
    }
}

/// Deletes expired messages every [`EXPIRY_TICK`] until the client shuts down.
pub(crate) async fn expiry_loop(inner: Arc<Inner>) {
    let mut shutdown = inner.shutdown.clone();
    let mut tick = tokio::time::interval(EXPIRY_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        if *shutdown.borrow() {
            return;
        }
        if let Err(e) = inner.purge_expired().await {
            tracing::warn!(error = %e, "deleting expired messages failed");
        }
    }
}
