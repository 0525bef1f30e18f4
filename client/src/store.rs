//! The device's local store: one SQLite file (`parley.db` in the profile directory)
//! holding the MLS state (openmls's tables, through `openmls_sqlx_storage`) and the
//! SDK's tables (`parley_*`: session, chats, decrypted history, outbox, receipts).
//!
//! Writes go through one dedicated connection ([`Db::writer`]) behind a mutex, so an
//! MLS operation and the rows that record its outcome commit in one transaction
//! (`BEGIN IMMEDIATE`): after a crash the store holds either both or neither. Reads
//! (history, search, chat lists) use a small pool and work without a server.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use openmls_sqlx_storage::{Codec, SqliteStorageProvider};
use parley_client_api::{ChatId, DeviceId, UserId};
use serde::{Deserialize, Serialize};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{ConnectOptions, Connection, SqliteConnection, SqlitePool};
use tokio::sync::Mutex;

use crate::error::{Error, Result};

/// The store's file name inside the profile directory.
pub const DB_FILE: &str = "parley.db";
const LOCK_FILE: &str = "lock";

/// The codec openmls's state is stored with.
#[derive(Default)]
pub(crate) struct JsonCodec;

impl Codec for JsonCodec {
    type Error = serde_json::Error;
    fn to_vec<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, Self::Error> {
        serde_json::to_vec(value)
    }
    fn from_slice<T: serde::de::DeserializeOwned>(slice: &[u8]) -> Result<T, Self::Error> {
        serde_json::from_slice(slice)
    }
}

/// The openmls provider over a connection (usually a transaction) of the store.
pub(crate) type MlsProvider<'a> = parley_crypto::Provider<SqliteStorageProvider<'a, JsonCodec>>;

pub(crate) fn provider(conn: &mut SqliteConnection) -> MlsProvider<'_> {
    parley_crypto::Provider::new(SqliteStorageProvider::<JsonCodec>::new(conn))
}

/// The state of a message, WhatsApp style.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MessageState {
    /// Written locally, not acknowledged by the server yet (queued in the outbox).
    Pending,
    /// ✓ The server committed it.
    Sent,
    /// ✓✓ Every other member has it on at least one device.
    Delivered,
    /// Blue ✓✓: every other member marked it read.
    Read,
    /// The server refused it for good (e.g. no longer a member); it will not be sent.
    Failed,
    /// A message from someone else.
    Received,
}

impl MessageState {
    pub fn as_str(self) -> &'static str {
        match self {
            MessageState::Pending => "pending",
            MessageState::Sent => "sent",
            MessageState::Delivered => "delivered",
            MessageState::Read => "read",
            MessageState::Failed => "failed",
            MessageState::Received => "received",
        }
    }

    /// The tick a chat shows for it.
    pub fn tick(self) -> &'static str {
        match self {
            MessageState::Pending => "…",
            MessageState::Sent => "✓",
            MessageState::Delivered => "✓✓",
            MessageState::Read => "✓✓ read",
            MessageState::Failed => "✗ failed",
            MessageState::Received => "",
        }
    }
}

impl FromStr for MessageState {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "pending" => MessageState::Pending,
            "sent" => MessageState::Sent,
            "delivered" => MessageState::Delivered,
            "read" => MessageState::Read,
            "failed" => MessageState::Failed,
            "received" => MessageState::Received,
            other => return Err(Error::Store(format!("unknown message state {other:?}"))),
        })
    }
}

/// One message of the local history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub chat_id: ChatId,
    /// The sender's message id (the envelope id; for own messages also the
    /// `client_msg_id`, the local id shown while pending).
    pub id: String,
    /// The chat's sequence number, once the server assigned it.
    pub seq: Option<i64>,
    pub sender: UserId,
    pub sender_device: DeviceId,
    pub outgoing: bool,
    /// The envelope kind (`text`, or a kind shown as a placeholder).
    pub kind: String,
    /// The text (or a placeholder for other kinds).
    pub body: String,
    /// The sender's clock, ms since the Unix epoch.
    pub sent_at_ms: i64,
    /// The server's time of acceptance, ms since the Unix epoch.
    pub server_ts: Option<i64>,
    pub state: MessageState,
    /// A reply: the id of the message it quotes.
    pub reply_to: Option<String>,
    /// The hub's time of the last edit, if the sender edited it (see
    /// [`Reader::edits`] for every version).
    pub edited_at: Option<i64>,
    /// Deleted for everyone by its sender: a tombstone (the text is gone).
    pub deleted: bool,
    /// Disappearing messages: when this device deletes it (ms since the Unix epoch,
    /// counted from when this device received or sent it).
    pub expires_at: Option<i64>,
}

/// The text a tombstone shows.
pub const DELETED_BODY: &str = "[message deleted]";

/// One member's reaction to a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reaction {
    pub user_id: UserId,
    pub emoji: String,
}

/// One version of an edited message, oldest first: the original, then each edit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    pub text: String,
    /// The hub's time of the message or the edit.
    pub at_ms: i64,
}

/// How far a message got among its recipients: the members of the chat other than its
/// sender at the time of the message (added by a commit before it, not removed by one
/// before it). A receipt for `seq` n covers every event up to n.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiptSummary {
    pub seq: i64,
    /// M: the recipients.
    pub total: usize,
    /// How many recipients have it on at least one device.
    pub delivered: usize,
    /// How many recipients marked it read.
    pub read: usize,
    /// Per recipient.
    pub members: Vec<MemberReceipt>,
}

impl ReceiptSummary {
    /// `delivered to N of M · read by N of M`.
    pub fn line(&self) -> String {
        format!(
            "delivered to {} of {} · read by {} of {}",
            self.delivered, self.total, self.read, self.total
        )
    }
}

/// One recipient's receipt for one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberReceipt {
    pub user_id: UserId,
    pub delivered: bool,
    pub read: bool,
}

/// A chat as this device knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatInfo {
    pub chat_id: ChatId,
    /// A group (created with a name or more than one other member), not a 1:1 chat.
    pub is_group: bool,
    /// A group's name, as last seen from the server.
    pub name: Option<String>,
    /// Whether this device is in the chat's MLS group (can read and send).
    pub joined: bool,
    /// The members (users) of the MLS group, this user included.
    pub members: Vec<UserId>,
    /// The highest sequence number processed.
    pub last_seq: i64,
    /// What this user marked read.
    pub read_seq: i64,
    /// Messages from others after `read_seq`.
    pub unread: i64,
    /// Ms since the Unix epoch of the last message (or of creation).
    pub last_activity: i64,
    pub last_message: Option<Message>,
}

#[derive(sqlx::FromRow)]
struct MessageRow {
    chat_id: String,
    msg_id: String,
    seq: Option<i64>,
    sender: String,
    sender_device: String,
    outgoing: bool,
    kind: String,
    body: String,
    sent_at: i64,
    server_ts: Option<i64>,
    state: String,
    reply_to: Option<String>,
    edited_at: Option<i64>,
    deleted: bool,
    expires_at: Option<i64>,
}

impl TryFrom<MessageRow> for Message {
    type Error = Error;
    fn try_from(r: MessageRow) -> Result<Self> {
        Ok(Message {
            chat_id: ChatId::try_from(r.chat_id).map_err(Error::store)?,
            id: r.msg_id,
            seq: r.seq,
            sender: UserId::try_from(r.sender).map_err(Error::store)?,
            sender_device: DeviceId::try_from(r.sender_device).map_err(Error::store)?,
            outgoing: r.outgoing,
            kind: r.kind,
            body: r.body,
            sent_at_ms: r.sent_at,
            server_ts: r.server_ts,
            state: r.state.parse()?,
            reply_to: r.reply_to,
            edited_at: r.edited_at,
            deleted: r.deleted,
            expires_at: r.expires_at,
        })
    }
}

pub(crate) const MESSAGE_COLUMNS: &str = "chat_id, msg_id, seq, sender, sender_device, outgoing, kind, body, sent_at, \
     server_ts, state, reply_to, edited_at, deleted, expires_at";

pub(crate) fn parse_members(s: &str) -> Vec<UserId> {
    s.split_whitespace()
        .filter_map(|u| UserId::try_from(u).ok())
        .collect()
}

/// Read access to a profile's store. Works offline and beside a running client.
#[derive(Clone, Debug)]
pub struct Reader {
    pub(crate) pool: SqlitePool,
}

fn options(path: &Path) -> SqliteConnectOptions {
    SqliteConnectOptions::new()
        .filename(path)
        .busy_timeout(Duration::from_secs(30))
        .log_statements(tracing::log::LevelFilter::Trace)
}

impl Reader {
    /// Opens the store of the profile in `dir` for reading.
    pub async fn open(dir: &Path) -> Result<Self> {
        let path = dir.join(DB_FILE);
        if !path.exists() {
            return Err(Error::NotLoggedIn(dir.display().to_string()));
        }
        let pool = SqlitePoolOptions::new()
            .max_connections(2)
            .connect_with(options(&path).read_only(true))
            .await?;
        let reader = Self { pool };
        // A profile whose register or login failed has a store but no session.
        let has_session = reader.state("user_id").await.ok().flatten().is_some();
        if !has_session {
            return Err(Error::NotLoggedIn(dir.display().to_string()));
        }
        Ok(reader)
    }

    /// A value of the `parley_state` table.
    pub(crate) async fn state(&self, key: &str) -> Result<Option<String>> {
        Ok(
            sqlx::query_scalar("SELECT value FROM parley_state WHERE key = ?1")
                .bind(key)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    /// The session's access token (for tools that also talk to the server directly).
    pub async fn access_token(&self) -> Result<Option<String>> {
        self.state("access_token").await
    }

    /// The server URL of this profile's session.
    pub async fn server_url(&self) -> Result<Option<String>> {
        self.state("server_url").await
    }

    /// This profile's user id.
    pub async fn user_id(&self) -> Result<Option<UserId>> {
        Ok(self
            .state("user_id")
            .await?
            .and_then(|u| UserId::try_from(u).ok()))
    }

    /// The chats this device knows, most recently active first.
    pub async fn chats(&self) -> Result<Vec<ChatInfo>> {
        #[allow(clippy::type_complexity)]
        let rows: Vec<(String, bool, i64, i64, String, i64, String, Option<String>)> =
            sqlx::query_as(
                "SELECT chat_id, joined, last_seq, read_seq, members, last_activity, kind, name
             FROM parley_chats ORDER BY last_activity DESC, chat_id",
            )
            .fetch_all(&self.pool)
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for (chat_id, joined, last_seq, read_seq, members, last_activity, kind, name) in rows {
            let chat_id = ChatId::try_from(chat_id).map_err(Error::store)?;
            let unread: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM parley_messages
                 WHERE chat_id = ?1 AND outgoing = 0 AND seq > ?2",
            )
            .bind(chat_id.as_str())
            .bind(read_seq)
            .fetch_one(&self.pool)
            .await?;
            let last_message = self.history(&chat_id, 1).await?.pop();
            out.push(ChatInfo {
                chat_id,
                is_group: kind == "group",
                name,
                joined,
                members: parse_members(&members),
                last_seq,
                read_seq,
                unread,
                last_activity,
                last_message,
            });
        }
        Ok(out)
    }

    /// One chat.
    pub async fn chat(&self, chat_id: &ChatId) -> Result<Option<ChatInfo>> {
        Ok(self
            .chats()
            .await?
            .into_iter()
            .find(|c| &c.chat_id == chat_id))
    }

    /// The last `limit` messages of a chat, oldest first (unsent ones last).
    pub async fn history(&self, chat_id: &ChatId, limit: u32) -> Result<Vec<Message>> {
        let sql = format!(
            "SELECT {MESSAGE_COLUMNS} FROM (
               SELECT *, (seq IS NULL) AS unsent FROM parley_messages
               WHERE chat_id = ?1 AND hidden = 0
               ORDER BY unsent DESC, seq DESC, id DESC LIMIT ?2
             ) ORDER BY unsent, seq, id"
        );
        let rows: Vec<MessageRow> = sqlx::query_as(&sql)
            .bind(chat_id.as_str())
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        rows.into_iter().map(Message::try_from).collect()
    }

    /// Messages whose text contains `needle` (case-insensitive for ASCII), newest
    /// first, in every chat or in one.
    pub async fn search(
        &self,
        needle: &str,
        chat_id: Option<&ChatId>,
        limit: u32,
    ) -> Result<Vec<Message>> {
        let escaped = needle
            .replace('\\', "\\\\")
            .replace('%', "\\%")
            .replace('_', "\\_");
        let sql = format!(
            "SELECT {MESSAGE_COLUMNS} FROM parley_messages
             WHERE body LIKE ?1 ESCAPE '\\' AND kind IN ('text', 'reply') AND deleted = 0
               AND hidden = 0 AND (?2 IS NULL OR chat_id = ?2)
             ORDER BY coalesce(server_ts, sent_at) DESC, id DESC LIMIT ?3"
        );
        let rows: Vec<MessageRow> = sqlx::query_as(&sql)
            .bind(format!("%{escaped}%"))
            .bind(chat_id.map(ChatId::as_str))
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        rows.into_iter().map(Message::try_from).collect()
    }

    /// One message by chat and id.
    pub async fn message(&self, chat_id: &ChatId, id: &str) -> Result<Option<Message>> {
        let sql = format!(
            "SELECT {MESSAGE_COLUMNS} FROM parley_messages WHERE chat_id = ?1 AND msg_id = ?2
             AND hidden = 0 ORDER BY outgoing DESC LIMIT 1"
        );
        let row: Option<MessageRow> = sqlx::query_as(&sql)
            .bind(chat_id.as_str())
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(Message::try_from).transpose()
    }

    /// "Delivered to N of M / read by N of M" for a message (by its seq and sender),
    /// from the receipts this device has (see [`crate::Client::refresh_receipts`]).
    /// M counts the chat's members other than the sender at the message's time.
    pub async fn receipt_summary(&self, message: &Message) -> Result<Option<ReceiptSummary>> {
        let Some(seq) = message.seq else {
            return Ok(None);
        };
        let mut conn = self.pool.acquire().await?;
        receipt_summary(&mut conn, &message.chat_id, seq, &message.sender)
            .await
            .map(Some)
    }

    /// How many messages wait in the outbox.
    pub async fn outbox_len(&self) -> Result<i64> {
        Ok(sqlx::query_scalar("SELECT count(*) FROM parley_outbox")
            .fetch_one(&self.pool)
            .await?)
    }

    pub(crate) async fn close(&self) {
        self.pool.close().await;
    }
}

/// The store of a profile opened for a client: the writer connection and readers.
pub(crate) struct Db {
    pub(crate) writer: Mutex<SqliteConnection>,
    pub(crate) reader: Reader,
    _lock: std::fs::File,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db").finish_non_exhaustive()
    }
}

impl Db {
    /// Opens (creating if needed) the store in `dir`, taking the profile's lock.
    pub(crate) async fn open(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::Store(format!("creating {}: {e}", dir.display())))?;
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(LOCK_FILE))
            .map_err(|e| Error::Store(format!("opening the profile lock: {e}")))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(Error::ProfileInUse(dir.display().to_string()));
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(Error::Store(format!("locking the profile: {e}")));
            }
        }
        let path: PathBuf = dir.join(DB_FILE);
        let mut writer = options(&path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .connect()
            .await?;
        SqliteStorageProvider::<JsonCodec>::new(&mut writer)
            .run_migrations()
            .map_err(Error::store)?;
        sqlx::migrate!("./migrations").run(&mut writer).await?;
        let pool = SqlitePoolOptions::new()
            .max_connections(2)
            .connect_with(options(&path).read_only(true))
            .await?;
        Ok(Self {
            writer: Mutex::new(writer),
            reader: Reader { pool },
            _lock: lock,
        })
    }
}

/// Begins a write transaction that holds SQLite's write lock from the start.
pub(crate) async fn begin(
    conn: &mut SqliteConnection,
) -> Result<sqlx::Transaction<'_, sqlx::Sqlite>> {
    Ok(conn.begin_with("BEGIN IMMEDIATE").await?)
}

pub(crate) async fn set_state(conn: &mut SqliteConnection, key: &str, value: &str) -> Result<()> {
    sqlx::query(
        "INSERT INTO parley_state (key, value) VALUES (?1, ?2)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
    )
    .bind(key)
    .bind(value)
    .execute(conn)
    .await?;
    Ok(())
}

/// A chat's processing cursor.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Cursor {
    pub(crate) known: bool,
    pub(crate) joined: bool,
    pub(crate) last_seq: i64,
}

pub(crate) async fn cursor(conn: &mut SqliteConnection, chat: &ChatId) -> Result<Cursor> {
    let row: Option<(bool, i64)> =
        sqlx::query_as("SELECT joined, last_seq FROM parley_chats WHERE chat_id = ?1")
            .bind(chat.as_str())
            .fetch_optional(conn)
            .await?;
    Ok(row.map_or(Cursor::default(), |(joined, last_seq)| Cursor {
        known: true,
        joined,
        last_seq,
    }))
}

/// Refuses a chat this device does not know (`UnknownChat`) or has not joined
/// (`NotJoined`): what a device may send to.
pub(crate) async fn ensure_joined(conn: &mut SqliteConnection, chat: &ChatId) -> Result<()> {
    let cur = cursor(conn, chat).await?;
    if !cur.known {
        return Err(Error::UnknownChat(chat.to_string()));
    }
    if !cur.joined {
        return Err(Error::NotJoined(chat.to_string()));
    }
    Ok(())
}

/// Creates the chat's row if missing.
pub(crate) async fn ensure_chat(
    conn: &mut SqliteConnection,
    chat: &ChatId,
    now: i64,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO parley_chats (chat_id, created_at, last_activity) VALUES (?1, ?2, ?2)
         ON CONFLICT (chat_id) DO NOTHING",
    )
    .bind(chat.as_str())
    .bind(now)
    .execute(conn)
    .await?;
    Ok(())
}

pub(crate) async fn set_last_seq(
    conn: &mut SqliteConnection,
    chat: &ChatId,
    seq: i64,
) -> Result<()> {
    sqlx::query("UPDATE parley_chats SET last_seq = max(last_seq, ?2) WHERE chat_id = ?1")
        .bind(chat.as_str())
        .bind(seq)
        .execute(conn)
        .await?;
    Ok(())
}

/// Records whether this device is in the chat's group and its members (users) as of
/// the event `seq` (the commit or Welcome that made them so; 0 before the first).
pub(crate) async fn set_joined(
    conn: &mut SqliteConnection,
    chat: &ChatId,
    joined: bool,
    members: &[UserId],
    seq: i64,
) -> Result<()> {
    let names: Vec<&str> = members.iter().map(UserId::as_str).collect();
    sqlx::query("UPDATE parley_chats SET joined = ?2, members = ?3 WHERE chat_id = ?1")
        .bind(chat.as_str())
        .bind(joined)
        .bind(names.join(" "))
        .execute(&mut *conn)
        .await?;
    record_members(conn, chat, members, seq).await
}

/// Closes the membership intervals of users no longer in `members` at `seq` and opens
/// intervals for new ones.
async fn record_members(
    conn: &mut SqliteConnection,
    chat: &ChatId,
    members: &[UserId],
    seq: i64,
) -> Result<()> {
    let open: Vec<String> = sqlx::query_scalar(
        "SELECT user_id FROM parley_member_log WHERE chat_id = ?1 AND to_seq IS NULL",
    )
    .bind(chat.as_str())
    .fetch_all(&mut *conn)
    .await?;
    for gone in open
        .iter()
        .filter(|u| !members.iter().any(|m| m.as_str() == u.as_str()))
    {
        sqlx::query(
            "UPDATE parley_member_log SET to_seq = ?3
             WHERE chat_id = ?1 AND user_id = ?2 AND to_seq IS NULL",
        )
        .bind(chat.as_str())
        .bind(gone)
        .bind(seq)
        .execute(&mut *conn)
        .await?;
    }
    for new in members
        .iter()
        .filter(|m| !open.iter().any(|u| u.as_str() == m.as_str()))
    {
        sqlx::query(
            "INSERT INTO parley_member_log (chat_id, user_id, from_seq, to_seq)
             VALUES (?1, ?2, ?3, NULL)",
        )
        .bind(chat.as_str())
        .bind(new.as_str())
        .bind(seq)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// The chat's members (users) at the event `seq`: added by a commit before it and not
/// removed by a commit before it. Falls back to the current members for chats this
/// device knew before it kept the log.
pub(crate) async fn members_at(
    conn: &mut SqliteConnection,
    chat: &ChatId,
    seq: i64,
) -> Result<Vec<UserId>> {
    let logged: i64 =
        sqlx::query_scalar("SELECT count(*) FROM parley_member_log WHERE chat_id = ?1")
            .bind(chat.as_str())
            .fetch_one(&mut *conn)
            .await?;
    if logged == 0 {
        return chat_members(conn, chat).await;
    }
    let rows: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT user_id FROM parley_member_log
         WHERE chat_id = ?1 AND from_seq < ?2 AND (to_seq IS NULL OR to_seq > ?2)
         ORDER BY user_id",
    )
    .bind(chat.as_str())
    .bind(seq)
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|u| UserId::try_from(u).ok())
        .collect())
}

/// Records a chat's kind and name as the server reported them.
pub(crate) async fn set_chat_meta(
    conn: &mut SqliteConnection,
    chat: &ChatId,
    group: bool,
    name: Option<&str>,
) -> Result<()> {
    sqlx::query("UPDATE parley_chats SET kind = ?2, name = coalesce(?3, name) WHERE chat_id = ?1")
        .bind(chat.as_str())
        .bind(if group { "group" } else { "direct" })
        .bind(name)
        .execute(conn)
        .await?;
    Ok(())
}

/// Every member's receipts stored for a chat: `(user, delivered_seq, read_seq)`.
pub(crate) async fn receipts(
    conn: &mut SqliteConnection,
    chat: &ChatId,
) -> Result<Vec<(UserId, i64, i64)>> {
    let rows: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT user_id, delivered_seq, read_seq FROM parley_receipts WHERE chat_id = ?1",
    )
    .bind(chat.as_str())
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(u, d, r)| Some((UserId::try_from(u).ok()?, d, r)))
        .collect())
}

/// Who of a message's recipients has it and has read it (see [`ReceiptSummary`]).
pub(crate) async fn receipt_summary(
    conn: &mut SqliteConnection,
    chat: &ChatId,
    seq: i64,
    sender: &UserId,
) -> Result<ReceiptSummary> {
    let recipients: Vec<UserId> = members_at(&mut *conn, chat, seq)
        .await?
        .into_iter()
        .filter(|u| u != sender)
        .collect();
    let rows = receipts(&mut *conn, chat).await?;
    let members: Vec<MemberReceipt> = recipients
        .into_iter()
        .map(|user| {
            let (d, r) = rows
                .iter()
                .find(|(u, _, _)| *u == user)
                .map_or((0, 0), |(_, d, r)| (*d, *r));
            MemberReceipt {
                delivered: d.max(r) >= seq,
                read: r >= seq,
                user_id: user,
            }
        })
        .collect();
    Ok(ReceiptSummary {
        seq,
        total: members.len(),
        delivered: members.iter().filter(|m| m.delivered).count(),
        read: members.iter().filter(|m| m.read).count(),
        members,
    })
}

pub(crate) async fn chat_members(
    conn: &mut SqliteConnection,
    chat: &ChatId,
) -> Result<Vec<UserId>> {
    let m: Option<String> =
        sqlx::query_scalar("SELECT members FROM parley_chats WHERE chat_id = ?1")
            .bind(chat.as_str())
            .fetch_optional(conn)
            .await?;
    Ok(m.map(|m| parse_members(&m)).unwrap_or_default())
}

pub(crate) async fn insert_message(conn: &mut SqliteConnection, m: &Message) -> Result<bool> {
    let done = sqlx::query(
        "INSERT INTO parley_messages
           (chat_id, msg_id, seq, sender, sender_device, outgoing, kind, body, sent_at, server_ts, state,
            reply_to, expires_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)
         ON CONFLICT (chat_id, sender_device, msg_id) DO NOTHING",
    )
    .bind(m.chat_id.as_str())
    .bind(&m.id)
    .bind(m.seq)
    .bind(m.sender.as_str())
    .bind(m.sender_device.as_str())
    .bind(m.outgoing)
    .bind(&m.kind)
    .bind(&m.body)
    .bind(m.sent_at_ms)
    .bind(m.server_ts)
    .bind(m.state.as_str())
    .bind(m.reply_to.as_deref())
    .bind(m.expires_at)
    .execute(&mut *conn)
    .await?;
    let at = m.server_ts.unwrap_or(m.sent_at_ms);
    sqlx::query(
        "UPDATE parley_chats SET last_activity = max(last_activity, ?2) WHERE chat_id = ?1",
    )
    .bind(m.chat_id.as_str())
    .bind(at)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

pub(crate) async fn own_message(
    conn: &mut SqliteConnection,
    chat: &ChatId,
    msg_id: &str,
) -> Result<Option<Message>> {
    let sql = format!(
        "SELECT {MESSAGE_COLUMNS} FROM parley_messages
         WHERE chat_id = ?1 AND msg_id = ?2 AND outgoing = 1"
    );
    let row: Option<MessageRow> = sqlx::query_as(&sql)
        .bind(chat.as_str())
        .bind(msg_id)
        .fetch_optional(conn)
        .await?;
    row.map(Message::try_from).transpose()
}

pub(crate) async fn update_own_message(
    conn: &mut SqliteConnection,
    chat: &ChatId,
    msg_id: &str,
    seq: Option<i64>,
    server_ts: Option<i64>,
    state: MessageState,
) -> Result<()> {
    sqlx::query(
        "UPDATE parley_messages SET seq = coalesce(?3, seq), server_ts = coalesce(?4, server_ts),
           state = ?5
         WHERE chat_id = ?1 AND msg_id = ?2 AND outgoing = 1",
    )
    .bind(chat.as_str())
    .bind(msg_id)
    .bind(seq)
    .bind(server_ts)
    .bind(state.as_str())
    .execute(conn)
    .await?;
    Ok(())
}

/// An outbox row.
#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct OutboxRow {
    pub(crate) id: i64,
    pub(crate) chat_id: String,
    pub(crate) client_msg_id: String,
    pub(crate) kind: String,
    pub(crate) plaintext: Option<Vec<u8>>,
    pub(crate) payload: Option<Vec<u8>>,
    pub(crate) epoch: Option<i64>,
    /// With a commit: the JSON of the membership change it makes.
    pub(crate) membership: Option<String>,
    /// The JSON array of the blobs the message refers to.
    pub(crate) blobs: Option<String>,
    /// While set: the encrypted file still to upload before the message can go.
    pub(crate) upload: Option<String>,
    /// With a commit: the GroupInfo of the epoch it creates, sent with it.
    pub(crate) group_info: Option<Vec<u8>>,
}

pub(crate) const OUTBOX_MESSAGE: &str = "message";
pub(crate) const OUTBOX_COMMIT: &str = "commit";

pub(crate) async fn outbox_push(
    conn: &mut SqliteConnection,
    chat: &ChatId,
    client_msg_id: &str,
    kind: &str,
    plaintext: Option<&[u8]>,
    payload: Option<(&[u8], u64)>,
) -> Result<()> {
    outbox_insert(conn, chat, client_msg_id, kind, plaintext, payload, None).await
}

/// Queues an own Commit (made in `epoch`) with the GroupInfo of the epoch it creates,
/// which goes to the hub with it (spec/backup.md BK18).
pub(crate) async fn outbox_push_commit(
    conn: &mut SqliteConnection,
    chat: &ChatId,
    client_msg_id: &str,
    payload: &[u8],
    epoch: u64,
    group_info: Option<&[u8]>,
) -> Result<()> {
    outbox_insert(
        conn,
        chat,
        client_msg_id,
        OUTBOX_COMMIT,
        None,
        Some((payload, epoch)),
        group_info,
    )
    .await
}

async fn outbox_insert(
    conn: &mut SqliteConnection,
    chat: &ChatId,
    client_msg_id: &str,
    kind: &str,
    plaintext: Option<&[u8]>,
    payload: Option<(&[u8], u64)>,
    group_info: Option<&[u8]>,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO parley_outbox (chat_id, client_msg_id, kind, plaintext, payload, epoch,
                                    group_info)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )
    .bind(chat.as_str())
    .bind(client_msg_id)
    .bind(kind)
    .bind(plaintext)
    .bind(payload.map(|(p, _)| p))
    .bind(payload.map(|(_, e)| i64::try_from(e).unwrap_or(i64::MAX)))
    .bind(group_info)
    .execute(conn)
    .await?;
    Ok(())
}

pub(crate) async fn outbox_all(conn: &mut SqliteConnection) -> Result<Vec<OutboxRow>> {
    Ok(sqlx::query_as(
        "SELECT id, chat_id, client_msg_id, kind, plaintext, payload, epoch, membership, blobs, upload, group_info FROM parley_outbox ORDER BY id",
    )
    .fetch_all(conn)
    .await?)
}

pub(crate) async fn outbox_get(
    conn: &mut SqliteConnection,
    chat: &ChatId,
    client_msg_id: &str,
) -> Result<Option<OutboxRow>> {
    Ok(sqlx::query_as(
        "SELECT id, chat_id, client_msg_id, kind, plaintext, payload, epoch, membership, blobs, upload, group_info FROM parley_outbox
         WHERE chat_id = ?1 AND client_msg_id = ?2",
    )
    .bind(chat.as_str())
    .bind(client_msg_id)
    .fetch_optional(conn)
    .await?)
}

pub(crate) async fn outbox_set_membership(
    conn: &mut SqliteConnection,
    chat: &ChatId,
    client_msg_id: &str,
    membership: &str,
) -> Result<()> {
    sqlx::query(
        "UPDATE parley_outbox SET membership = ?3 WHERE chat_id = ?1 AND client_msg_id = ?2",
    )
    .bind(chat.as_str())
    .bind(client_msg_id)
    .bind(membership)
    .execute(conn)
    .await?;
    Ok(())
}

pub(crate) async fn outbox_set_payload(
    conn: &mut SqliteConnection,
    id: i64,
    payload: Option<&[u8]>,
    epoch: Option<u64>,
) -> Result<()> {
    sqlx::query("UPDATE parley_outbox SET payload = ?2, epoch = ?3 WHERE id = ?1")
        .bind(id)
        .bind(payload)
        .bind(epoch.map(|e| i64::try_from(e).unwrap_or(i64::MAX)))
        .execute(conn)
        .await?;
    Ok(())
}

pub(crate) async fn outbox_remove(
    conn: &mut SqliteConnection,
    chat: &ChatId,
    client_msg_id: &str,
) -> Result<()> {
    sqlx::query("DELETE FROM parley_outbox WHERE chat_id = ?1 AND client_msg_id = ?2")
        .bind(chat.as_str())
        .bind(client_msg_id)
        .execute(conn)
        .await?;
    Ok(())
}

/// Raises a member's receipts; returns the stored values.
pub(crate) async fn raise_receipt(
    conn: &mut SqliteConnection,
    chat: &ChatId,
    user: &UserId,
    delivered: i64,
    read: i64,
) -> Result<(i64, i64)> {
    Ok(sqlx::query_as(
        "INSERT INTO parley_receipts (chat_id, user_id, delivered_seq, read_seq) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (chat_id, user_id) DO UPDATE SET
           delivered_seq = max(delivered_seq, excluded.delivered_seq),
           read_seq = max(read_seq, excluded.read_seq)
         RETURNING delivered_seq, read_seq",
    )
    .bind(chat.as_str())
    .bind(user.as_str())
    .bind(delivered.max(read))
    .bind(read)
    .fetch_one(conn)
    .await?)
}

/// The state an own message with `seq` has given the other members' receipts.
pub(crate) async fn state_from_receipts(
    conn: &mut SqliteConnection,
    chat: &ChatId,
    me: &UserId,
    seq: i64,
) -> Result<MessageState> {
    let members = members_at(&mut *conn, chat, seq).await?;
    let others: Vec<&UserId> = members.iter().filter(|m| *m != me).collect();
    if others.is_empty() {
        return Ok(MessageState::Sent);
    }
    let mut delivered = true;
    let mut read = true;
    for other in others {
        let r: Option<(i64, i64)> = sqlx::query_as(
            "SELECT delivered_seq, read_seq FROM parley_receipts WHERE chat_id = ?1 AND user_id = ?2",
        )
        .bind(chat.as_str())
        .bind(other.as_str())
        .fetch_optional(&mut *conn)
        .await?;
        let (d, r) = r.unwrap_or((0, 0));
        delivered &= d >= seq;
        read &= r >= seq;
    }
    Ok(if read {
        MessageState::Read
    } else if delivered {
        MessageState::Delivered
    } else {
        MessageState::Sent
    })
}

/// Own messages of a chat that are sent or delivered (candidates for a tick change).
pub(crate) async fn unsettled_own(
    conn: &mut SqliteConnection,
    chat: &ChatId,
) -> Result<Vec<Message>> {
    let sql = format!(
        "SELECT {MESSAGE_COLUMNS} FROM parley_messages
         WHERE chat_id = ?1 AND outgoing = 1 AND seq IS NOT NULL AND state IN ('sent', 'delivered')
         ORDER BY seq"
    );
    let rows: Vec<MessageRow> = sqlx::query_as(&sql)
        .bind(chat.as_str())
        .fetch_all(conn)
        .await?;
    rows.into_iter().map(Message::try_from).collect()
}

pub(crate) async fn set_read_seq(
    conn: &mut SqliteConnection,
    chat: &ChatId,
    seq: i64,
) -> Result<()> {
    sqlx::query("UPDATE parley_chats SET read_seq = max(read_seq, ?2) WHERE chat_id = ?1")
        .bind(chat.as_str())
        .bind(seq)
        .execute(conn)
        .await?;
    Ok(())
}

/// Chats whose read marker the server does not know yet: `(chat, read_seq)`.
pub(crate) async fn unsent_reads(conn: &mut SqliteConnection) -> Result<Vec<(ChatId, i64)>> {
    let rows: Vec<(String, i64)> =
        sqlx::query_as("SELECT chat_id, read_seq FROM parley_chats WHERE read_seq > read_sent_seq")
            .fetch_all(conn)
            .await?;
    rows.into_iter()
        .map(|(c, s)| Ok((ChatId::try_from(c).map_err(Error::store)?, s)))
        .collect()
}

pub(crate) async fn set_read_sent(
    conn: &mut SqliteConnection,
    chat: &ChatId,
    seq: i64,
) -> Result<()> {
    sqlx::query(
        "UPDATE parley_chats SET read_sent_seq = max(read_sent_seq, ?2) WHERE chat_id = ?1",
    )
    .bind(chat.as_str())
    .bind(seq)
    .execute(conn)
    .await?;
    Ok(())
}

pub(crate) async fn joined_chats(conn: &mut SqliteConnection) -> Result<Vec<ChatId>> {
    let rows: Vec<String> = sqlx::query_scalar("SELECT chat_id FROM parley_chats WHERE joined = 1")
        .fetch_all(conn)
        .await?;
    rows.into_iter()
        .map(|c| ChatId::try_from(c).map_err(Error::store))
        .collect()
}

pub(crate) async fn last_incoming(conn: &mut SqliteConnection, chat: &ChatId) -> Result<i64> {
    let v: Option<i64> = sqlx::query_scalar(
        "SELECT max(seq) FROM parley_messages WHERE chat_id = ?1 AND outgoing = 0",
    )
    .bind(chat.as_str())
    .fetch_one(conn)
    .await?;
    Ok(v.unwrap_or(0))
}

// ---- media ----

/// Records what a queued message needs besides its ciphertext: the blobs it refers to
/// and, while the file is not uploaded yet, the encrypted file to upload.
pub(crate) async fn outbox_set_media(
    conn: &mut SqliteConnection,
    chat: &ChatId,
    client_msg_id: &str,
    blobs: &str,
    upload: Option<&str>,
) -> Result<()> {
    sqlx::query(
        "UPDATE parley_outbox SET blobs = ?3, upload = ?4 WHERE chat_id = ?1 AND client_msg_id = ?2",
    )
    .bind(chat.as_str())
    .bind(client_msg_id)
    .bind(blobs)
    .bind(upload)
    .execute(conn)
    .await?;
    Ok(())
}

/// The upload of a queued message is complete: it may be sent.
pub(crate) async fn outbox_upload_done(
    conn: &mut SqliteConnection,
    chat: &ChatId,
    client_msg_id: &str,
) -> Result<()> {
    sqlx::query("UPDATE parley_outbox SET upload = NULL WHERE chat_id = ?1 AND client_msg_id = ?2")
        .bind(chat.as_str())
        .bind(client_msg_id)
        .execute(conn)
        .await?;
    Ok(())
}

/// Stores the media reference (JSON) of a message.
pub(crate) async fn set_message_media(
    conn: &mut SqliteConnection,
    chat: &ChatId,
    sender_device: &DeviceId,
    msg_id: &str,
    media: &str,
) -> Result<()> {
    sqlx::query(
        "UPDATE parley_messages SET media = ?4
         WHERE chat_id = ?1 AND sender_device = ?2 AND msg_id = ?3",
    )
    .bind(chat.as_str())
    .bind(sender_device.as_str())
    .bind(msg_id)
    .bind(media)
    .execute(conn)
    .await?;
    Ok(())
}

impl Reader {
    /// The media reference (JSON) of a message, if it carries a file.
    pub(crate) async fn message_media(&self, chat_id: &ChatId, id: &str) -> Result<Option<String>> {
        Ok(sqlx::query_scalar(
            "SELECT media FROM parley_messages WHERE chat_id = ?1 AND msg_id = ?2
             AND media IS NOT NULL ORDER BY outgoing DESC LIMIT 1",
        )
        .bind(chat_id.as_str())
        .bind(id)
        .fetch_optional(&self.pool)
        .await?)
    }
}

/// Applies a chat setting an envelope carries (a `timer` or `read_receipts` event), in
/// `seq` order (or at once for this device's own).
pub(crate) async fn apply_chat_setting(
    conn: &mut SqliteConnection,
    chat: &ChatId,
    content: &parley_crypto::Content,
) -> Result<()> {
    match content {
        parley_crypto::Content::Timer { seconds } => {
            sqlx::query("UPDATE parley_chats SET timer_secs = ?2 WHERE chat_id = ?1")
                .bind(chat.as_str())
                .bind(i64::from(*seconds))
                .execute(conn)
                .await?;
        }
        parley_crypto::Content::ReadReceipts { allowed } => {
            sqlx::query("UPDATE parley_chats SET read_receipts = ?2 WHERE chat_id = ?1")
                .bind(chat.as_str())
                .bind(*allowed)
                .execute(conn)
                .await?;
        }
        _ => {}
    }
    Ok(())
}

/// Deletes the messages whose disappearing timer ended at or before `now`, with their
/// edit history, reactions and waiting actions; returns `(chat, message id)` of each.
pub(crate) async fn purge_expired(
    conn: &mut SqliteConnection,
    now: i64,
) -> Result<Vec<(ChatId, String)>> {
    let gone: Vec<(String, String)> = sqlx::query_as(
        "DELETE FROM parley_messages WHERE expires_at IS NOT NULL AND expires_at <= ?1
         RETURNING chat_id, msg_id",
    )
    .bind(now)
    .fetch_all(&mut *conn)
    .await?;
    let mut out = Vec::with_capacity(gone.len());
    for (chat, id) in gone {
        for table in ["parley_edits", "parley_reactions"] {
            sqlx::query(&format!(
                "DELETE FROM {table} WHERE chat_id = ?1 AND msg_id = ?2"
            ))
            .bind(&chat)
            .bind(&id)
            .execute(&mut *conn)
            .await?;
        }
        sqlx::query("DELETE FROM parley_pending_actions WHERE chat_id = ?1 AND target = ?2")
            .bind(&chat)
            .bind(&id)
            .execute(&mut *conn)
            .await?;
        out.push((ChatId::try_from(chat).map_err(Error::store)?, id));
    }
    Ok(out)
}

impl Reader {
    /// A chat's disappearing-message timer (seconds), if on.
    pub async fn timer(&self, chat_id: &ChatId) -> Result<Option<u32>> {
        let secs: Option<i64> =
            sqlx::query_scalar("SELECT timer_secs FROM parley_chats WHERE chat_id = ?1")
                .bind(chat_id.as_str())
                .fetch_optional(&self.pool)
                .await?;
        Ok(secs.and_then(|s| u32::try_from(s).ok()).filter(|s| *s > 0))
    }

    /// Whether the chat allows read receipts (its policy, as last set by a member).
    pub async fn chat_read_receipts(&self, chat_id: &ChatId) -> Result<bool> {
        let v: Option<bool> =
            sqlx::query_scalar("SELECT read_receipts FROM parley_chats WHERE chat_id = ?1")
                .bind(chat_id.as_str())
                .fetch_optional(&self.pool)
                .await?;
        Ok(v.unwrap_or(true))
    }

    /// Every message row of a chat, hidden and deleted ones included, with its kind
    /// and expiry: what is physically stored on this device (for checks and tests).
    pub async fn stored_message_ids(&self, chat_id: &ChatId) -> Result<Vec<String>> {
        Ok(
            sqlx::query_scalar("SELECT msg_id FROM parley_messages WHERE chat_id = ?1 ORDER BY id")
                .bind(chat_id.as_str())
                .fetch_all(&self.pool)
                .await?,
        )
    }
}
