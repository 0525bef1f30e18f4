//! Replies, reactions, edits and deletes (`spec/messaging.md`, MS1–MS12).
//!
//! A reply is a message (kind `reply`, quoting another by id). Reactions, edits and
//! deletes are *actions*: encrypted envelopes that change an earlier message instead
//! of adding one. Every device applies them the same way, in `seq` order, with the
//! pure rules of [`crate::rules`] and the MLS sender of the action (never a field of
//! the envelope): an edit or delete by anyone but the message's sender is ignored.
//! An action on a message this device has not seen is kept and applied when it
//! arrives. Own actions are applied when the hub sequenced them, by the same code.

use parley_client_api::{ChatId, DeviceId, UserId};
use parley_crypto::{Content, Envelope, MessageId, ReactionAction};
use sqlx::SqliteConnection;

use crate::client::{Client, Event, now_ms};
use crate::error::{Error, Result};
use crate::rules::{self, ActionKind, Target, Verdict};
use crate::store::{self, DELETED_BODY, Message, Reaction, Reader, Version};

/// The action an envelope carries, if it is one: its kind and target.
pub(crate) fn action_of(content: &Content) -> Option<(ActionKind, &MessageId)> {
    match content {
        Content::Reaction { target, .. } => Some((ActionKind::Reaction, target)),
        Content::Edit { target, .. } => Some((ActionKind::Edit, target)),
        Content::Delete { target } => Some((ActionKind::Delete, target)),
        _ => None,
    }
}

/// An action's event: where and by whom, as the hub sequenced it.
#[derive(Debug, Clone)]
pub(crate) struct ActionEvent<'a> {
    pub(crate) chat: &'a ChatId,
    pub(crate) seq: i64,
    pub(crate) ts: i64,
    /// The MLS-authenticated sender.
    pub(crate) user: &'a UserId,
    pub(crate) device: &'a DeviceId,
}

#[derive(sqlx::FromRow)]
struct TargetRow {
    id: i64,
    msg_id: String,
    seq: Option<i64>,
    sender: String,
    kind: String,
    body: String,
    server_ts: Option<i64>,
    sent_at: i64,
    deleted: bool,
    hidden: bool,
}

impl TargetRow {
    fn target(&self) -> Result<Target> {
        Ok(Target {
            sender: UserId::try_from(self.sender.as_str()).map_err(Error::store)?,
            ts: self.server_ts,
            deleted: self.deleted,
            text: matches!(self.kind.as_str(), "text" | "reply"),
        })
    }
}

/// The message a target id names in a chat: the first one (by `seq`) with that id.
async fn find_target(
    conn: &mut SqliteConnection,
    chat: &ChatId,
    id: &str,
) -> Result<Option<TargetRow>> {
    Ok(sqlx::query_as(
        "SELECT id, msg_id, seq, sender, kind, body, server_ts, sent_at, deleted, hidden
         FROM parley_messages WHERE chat_id = ?1 AND msg_id = ?2
         ORDER BY (seq IS NULL), seq, id LIMIT 1",
    )
    .bind(chat.as_str())
    .bind(id)
    .fetch_optional(conn)
    .await?)
}

/// Whether another sender's message in the chat already carries `id` (MS2: a message id
/// names one message per chat; a later message reusing it is ignored).
pub(crate) async fn id_taken(
    conn: &mut SqliteConnection,
    chat: &ChatId,
    id: &str,
    device: &DeviceId,
) -> Result<bool> {
    let n: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM parley_messages
         WHERE chat_id = ?1 AND msg_id = ?2 AND sender_device != ?3",
    )
    .bind(chat.as_str())
    .bind(id)
    .bind(device.as_str())
    .fetch_one(conn)
    .await?;
    Ok(n > 0)
}

/// Judges and applies an action (or keeps it for later); returns what to tell the app.
pub(crate) async fn apply_action(
    tx: &mut SqliteConnection,
    ev: &ActionEvent<'_>,
    env: &Envelope,
) -> Result<Vec<Event>> {
    let Some((kind, target_id)) = action_of(&env.content) else {
        return Ok(Vec::new());
    };
    let row = find_target(tx, ev.chat, target_id.as_str()).await?;
    let target = row.as_ref().map(TargetRow::target).transpose()?;
    match rules::judge(kind, ev.user, ev.ts, target.as_ref()) {
        Verdict::Keep => {
            keep(tx, ev, target_id.as_str(), env).await?;
            Ok(Vec::new())
        }
        Verdict::Ignore(reason) => {
            tracing::info!(chat = %ev.chat, seq = ev.seq, target = %target_id.as_str(), reason, "action ignored");
            Ok(Vec::new())
        }
        Verdict::Apply => {
            let Some(row) = row else {
                return Ok(Vec::new());
            };
            let events = apply_now(tx, ev, &row, &env.content).await?;
            // A message deleted for me stays silent.
            Ok(if row.hidden { Vec::new() } else { events })
        }
    }
}

async fn apply_now(
    tx: &mut SqliteConnection,
    ev: &ActionEvent<'_>,
    row: &TargetRow,
    content: &Content,
) -> Result<Vec<Event>> {
    let chat = ev.chat;
    let id = row.msg_id.clone();
    match content {
        Content::Reaction {
            emoji,
            action: ReactionAction::Add,
            ..
        } => {
            if let Err(reason) = rules::check_reaction(emoji) {
                tracing::info!(%chat, seq = ev.seq, reason, "reaction ignored");
                return Ok(Vec::new());
            }
            sqlx::query(
                "INSERT INTO parley_reactions (chat_id, msg_id, user_id, emoji, seq)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (chat_id, msg_id, user_id) DO UPDATE SET
                   emoji = excluded.emoji, seq = excluded.seq",
            )
            .bind(chat.as_str())
            .bind(&id)
            .bind(ev.user.as_str())
            .bind(emoji)
            .bind(ev.seq)
            .execute(&mut *tx)
            .await?;
            Ok(vec![Event::ReactionChanged {
                chat_id: chat.clone(),
                id,
                user_id: ev.user.clone(),
                emoji: Some(emoji.clone()),
            }])
        }
        Content::Reaction {
            emoji,
            action: ReactionAction::Remove,
            ..
        } => {
            let done = sqlx::query(
                "DELETE FROM parley_reactions
                 WHERE chat_id = ?1 AND msg_id = ?2 AND user_id = ?3 AND emoji = ?4",
            )
            .bind(chat.as_str())
            .bind(&id)
            .bind(ev.user.as_str())
            .bind(emoji)
            .execute(&mut *tx)
            .await?;
            Ok(if done.rows_affected() > 0 {
                vec![Event::ReactionChanged {
                    chat_id: chat.clone(),
                    id,
                    user_id: ev.user.clone(),
                    emoji: None,
                }]
            } else {
                Vec::new()
            })
        }
        Content::Edit { text, .. } => {
            if text.is_empty() {
                tracing::info!(%chat, seq = ev.seq, "empty edit ignored");
                return Ok(Vec::new());
            }
            // The original is the first version.
            sqlx::query(
                "INSERT INTO parley_edits (chat_id, msg_id, seq, body, at) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT DO NOTHING",
            )
            .bind(chat.as_str())
            .bind(&id)
            .bind(row.seq.unwrap_or(0))
            .bind(&row.body)
            .bind(row.server_ts.unwrap_or(row.sent_at))
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "INSERT INTO parley_edits (chat_id, msg_id, seq, body, at) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT DO NOTHING",
            )
            .bind(chat.as_str())
            .bind(&id)
            .bind(ev.seq)
            .bind(text)
            .bind(ev.ts)
            .execute(&mut *tx)
            .await?;
            sqlx::query("UPDATE parley_messages SET body = ?2, edited_at = ?3 WHERE id = ?1")
                .bind(row.id)
                .bind(text)
                .bind(ev.ts)
                .execute(&mut *tx)
                .await?;
            Ok(vec![Event::MessageEdited {
                chat_id: chat.clone(),
                id,
                text: text.clone(),
            }])
        }
        Content::Delete { .. } => {
            tombstone(tx, chat, row.id, &id).await?;
            Ok(vec![Event::MessageDeleted {
                chat_id: chat.clone(),
                id,
            }])
        }
        _ => Ok(Vec::new()),
    }
}

/// Replaces a message by a tombstone: its text, file, edit history and reactions go.
async fn tombstone(tx: &mut SqliteConnection, chat: &ChatId, rowid: i64, id: &str) -> Result<()> {
    sqlx::query(
        "UPDATE parley_messages SET deleted = 1, body = ?2, media = NULL, edited_at = NULL
         WHERE id = ?1",
    )
    .bind(rowid)
    .bind(DELETED_BODY)
    .execute(&mut *tx)
    .await?;
    for table in ["parley_edits", "parley_reactions"] {
        sqlx::query(&format!(
            "DELETE FROM {table} WHERE chat_id = ?1 AND msg_id = ?2"
        ))
        .bind(chat.as_str())
        .bind(id)
        .execute(&mut *tx)
        .await?;
    }
    Ok(())
}

/// Keeps an action whose target is unknown (MS8), within the per-chat bound.
async fn keep(
    tx: &mut SqliteConnection,
    ev: &ActionEvent<'_>,
    target: &str,
    env: &Envelope,
) -> Result<()> {
    let now = now_ms();
    let bytes = env.to_bytes().map_err(Error::crypto)?;
    sqlx::query(
        "INSERT INTO parley_pending_actions
           (chat_id, target, seq, ts, sender, sender_device, envelope, received_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )
    .bind(ev.chat.as_str())
    .bind(target)
    .bind(ev.seq)
    .bind(ev.ts)
    .bind(ev.user.as_str())
    .bind(ev.device.as_str())
    .bind(bytes)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    sqlx::query("DELETE FROM parley_pending_actions WHERE received_at < ?1")
        .bind(now - rules::PENDING_ACTION_TTL_MS)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "DELETE FROM parley_pending_actions WHERE chat_id = ?1 AND id NOT IN
           (SELECT id FROM parley_pending_actions WHERE chat_id = ?1 ORDER BY id DESC LIMIT ?2)",
    )
    .bind(ev.chat.as_str())
    .bind(rules::MAX_PENDING_ACTIONS_PER_CHAT)
    .execute(&mut *tx)
    .await?;
    tracing::info!(chat = %ev.chat, seq = ev.seq, target, "action kept until its message arrives");
    Ok(())
}

#[derive(sqlx::FromRow)]
struct PendingRow {
    id: i64,
    seq: i64,
    ts: i64,
    sender: String,
    sender_device: String,
    envelope: Vec<u8>,
    received_at: i64,
}

/// A message arrived: applies the actions that waited for it, in `seq` order.
pub(crate) async fn message_arrived(
    tx: &mut SqliteConnection,
    chat: &ChatId,
    id: &str,
) -> Result<Vec<Event>> {
    let rows: Vec<PendingRow> = sqlx::query_as(
        "SELECT id, seq, ts, sender, sender_device, envelope, received_at
         FROM parley_pending_actions WHERE chat_id = ?1 AND target = ?2 ORDER BY seq",
    )
    .bind(chat.as_str())
    .bind(id)
    .fetch_all(&mut *tx)
    .await?;
    let mut events = Vec::new();
    let cutoff = now_ms() - rules::PENDING_ACTION_TTL_MS;
    for r in rows {
        sqlx::query("DELETE FROM parley_pending_actions WHERE id = ?1")
            .bind(r.id)
            .execute(&mut *tx)
            .await?;
        let (Ok(user), Ok(device), Ok(env)) = (
            UserId::try_from(r.sender.as_str()),
            DeviceId::try_from(r.sender_device.as_str()),
            Envelope::from_bytes(&r.envelope),
        ) else {
            continue;
        };
        if r.received_at < cutoff {
            continue;
        }
        let ev = ActionEvent {
            chat,
            seq: r.seq,
            ts: r.ts,
            user: &user,
            device: &device,
        };
        events.extend(apply_action(tx, &ev, &env).await?);
    }
    Ok(events)
}

impl Reader {
    /// The reactions to a message, one per member.
    pub async fn reactions(&self, chat_id: &ChatId, id: &str) -> Result<Vec<Reaction>> {
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT user_id, emoji FROM parley_reactions WHERE chat_id = ?1 AND msg_id = ?2
             ORDER BY seq",
        )
        .bind(chat_id.as_str())
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .filter_map(|(u, emoji)| {
                Some(Reaction {
                    user_id: UserId::try_from(u).ok()?,
                    emoji,
                })
            })
            .collect())
    }

    /// Every version of an edited message, oldest first (empty if never edited).
    pub async fn edits(&self, chat_id: &ChatId, id: &str) -> Result<Vec<Version>> {
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT body, at FROM parley_edits WHERE chat_id = ?1 AND msg_id = ?2 ORDER BY seq",
        )
        .bind(chat_id.as_str())
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(text, at_ms)| Version { text, at_ms })
            .collect())
    }

    /// How many actions wait for a message this device has not seen.
    pub async fn pending_actions(&self, chat_id: &ChatId) -> Result<i64> {
        Ok(
            sqlx::query_scalar("SELECT count(*) FROM parley_pending_actions WHERE chat_id = ?1")
                .bind(chat_id.as_str())
                .fetch_one(&self.pool)
                .await?,
        )
    }
}

fn invalid(s: impl Into<String>) -> Error {
    Error::Invalid(s.into())
}

impl Client {
    /// Replies to a message of the chat (quoting it by id): a text message that
    /// names the message it answers.
    pub async fn reply(&self, chat: &ChatId, to: &str, text: &str) -> Result<Message> {
        if text.is_empty() {
            return Err(invalid("the message is empty"));
        }
        let target = self.target(chat, to).await?;
        if target.deleted {
            return Err(invalid(format!("message {to} was deleted")));
        }
        let in_reply_to = MessageId::try_from(to).map_err(|_| invalid("invalid message id"))?;
        let inner = &self.inner;
        let timer = inner.db.reader.timer(chat).await?;
        let (mut message, bytes) = inner.pending_message(
            chat,
            Content::Reply {
                in_reply_to,
                text: text.to_owned(),
            },
            "reply",
            text.to_owned(),
            timer,
        )?;
        message.reply_to = Some(to.to_owned());
        inner.queue_message(chat, &message, bytes).await?;
        Ok(message)
    }

    /// Adds a reaction (one emoji) to a message; it replaces this user's earlier one.
    pub async fn react(&self, chat: &ChatId, id: &str, emoji: &str) -> Result<()> {
        self.reaction(chat, id, emoji, ReactionAction::Add).await
    }

    /// Removes this user's reaction `emoji` from a message.
    pub async fn unreact(&self, chat: &ChatId, id: &str, emoji: &str) -> Result<()> {
        self.reaction(chat, id, emoji, ReactionAction::Remove).await
    }

    async fn reaction(
        &self,
        chat: &ChatId,
        id: &str,
        emoji: &str,
        action: ReactionAction,
    ) -> Result<()> {
        rules::check_reaction(emoji).map_err(invalid)?;
        let t = self.target(chat, id).await?;
        if t.deleted {
            return Err(invalid(format!("message {id} was deleted")));
        }
        let target = MessageId::try_from(id).map_err(|_| invalid("invalid message id"))?;
        self.queue_action(
            chat,
            Content::Reaction {
                target,
                emoji: emoji.to_owned(),
                action,
            },
        )
        .await
    }

    /// Replaces the text of an own message (within [`rules::EDIT_WINDOW_MS`]); every
    /// member's devices keep the earlier versions ([`Reader::edits`]).
    pub async fn edit(&self, chat: &ChatId, id: &str, text: &str) -> Result<()> {
        if text.is_empty() {
            return Err(invalid("the new text is empty"));
        }
        self.check_own(chat, id, ActionKind::Edit).await?;
        let target = MessageId::try_from(id).map_err(|_| invalid("invalid message id"))?;
        self.queue_action(
            chat,
            Content::Edit {
                target,
                text: text.to_owned(),
            },
        )
        .await
    }

    /// Deletes an own message for everyone (within [`rules::DELETE_WINDOW_MS`]): every
    /// device of every member replaces it by a tombstone.
    pub async fn delete_for_everyone(&self, chat: &ChatId, id: &str) -> Result<()> {
        self.check_own(chat, id, ActionKind::Delete).await?;
        let target = MessageId::try_from(id).map_err(|_| invalid("invalid message id"))?;
        self.queue_action(chat, Content::Delete { target }).await
    }

    /// Deletes a message from this device only (any message; nothing is sent).
    pub async fn delete_for_me(&self, chat: &ChatId, id: &str) -> Result<()> {
        let mut conn = self.inner.db.writer.lock().await;
        let done = sqlx::query(
            "UPDATE parley_messages SET hidden = 1, body = '', media = NULL
             WHERE chat_id = ?1 AND msg_id = ?2 AND hidden = 0",
        )
        .bind(chat.as_str())
        .bind(id)
        .execute(&mut *conn)
        .await?;
        if done.rows_affected() == 0 {
            return Err(invalid(format!("no message {id} in this chat")));
        }
        sqlx::query("DELETE FROM parley_edits WHERE chat_id = ?1 AND msg_id = ?2")
            .bind(chat.as_str())
            .bind(id)
            .execute(&mut *conn)
            .await?;
        Ok(())
    }

    /// Sends an envelope exactly as given, without the checks of [`Client::edit`] and
    /// the others. For tests and tools that need to behave like a faulty or malicious
    /// client (every other member's device still applies the rules).
    #[doc(hidden)]
    pub async fn send_envelope(&self, chat: &ChatId, envelope: &Envelope) -> Result<()> {
        let bytes = envelope.to_bytes().map_err(Error::crypto)?;
        self.inner
            .queue_plaintext(chat, envelope.id.as_str(), bytes)
            .await
    }

    async fn target(&self, chat: &ChatId, id: &str) -> Result<TargetRow> {
        let mut conn = self.inner.db.writer.lock().await;
        match find_target(&mut conn, chat, id).await? {
            Some(t) if !t.hidden => Ok(t),
            _ => Err(invalid(format!("no message {id} in this chat"))),
        }
    }

    async fn check_own(&self, chat: &ChatId, id: &str, kind: ActionKind) -> Result<()> {
        let row = self.target(chat, id).await?;
        let target = row.target()?;
        if target.sender != self.inner.user_id {
            return Err(invalid("only the sender of a message can change it"));
        }
        if target.ts.is_none() {
            return Err(invalid(format!("message {id} is not sent yet")));
        }
        match rules::judge(kind, &self.inner.user_id, now_ms(), Some(&target)) {
            Verdict::Apply | Verdict::Keep => Ok(()),
            Verdict::Ignore(reason) => Err(invalid(reason)),
        }
    }

    async fn queue_action(&self, chat: &ChatId, content: Content) -> Result<()> {
        let env = Envelope::new(u64::try_from(now_ms()).unwrap_or(0), content);
        self.send_envelope(chat, &env).await
    }
}

impl crate::client::Inner {
    /// Queues an encoded envelope that is not shown as a message of its own (an action):
    /// it is sent like a message and applied when the hub sequenced it.
    pub(crate) async fn queue_plaintext(
        &self,
        chat: &ChatId,
        client_msg_id: &str,
        bytes: Vec<u8>,
    ) -> Result<()> {
        let mut conn = self.db.writer.lock().await;
        store::ensure_joined(&mut conn, chat).await?;
        store::outbox_push(
            &mut conn,
            chat,
            client_msg_id,
            store::OUTBOX_MESSAGE,
            Some(&bytes),
            None,
        )
        .await?;
        drop(conn);
        self.kick();
        Ok(())
    }
}
