//! The history archive: a device's decrypted message history as one encrypted,
//! streamed file, for backups (`spec/backup.md`) and for the transfer to a linked
//! device.
//!
//! # Using it
//! - [`export`]`(&reader, since, &key, writer)` writes the history of the profile
//!   behind `reader` (a [`Reader`]; [`Client::store`] or [`Reader::open`]) into `writer`
//!   (any `std::io::Write + Send + 'static`, typically a `std::fs::File`; it is handed
//!   back with an [`ExportSummary`]). `since` (ms since the Unix epoch) keeps only the
//!   messages from then on (by the hub's time): "the last N days" is
//!   `Some(now_ms - N * 86_400_000)`; `None` is everything.
//! - [`Client::import_history`]`(&key, reader)` reads an archive (any
//!   `std::io::Read + Send + 'static`) into this device's store and returns an
//!   [`ImportSummary`].
//!
//! The key is an [`ArchiveKey`] (32 random bytes: the backup key, or a fresh key the
//! devices agree on for a transfer). Both directions stream in constant memory: rows
//! are read from SQLite one at a time and sealed in 64 KiB chunks on a blocking thread;
//! the archive is authenticated chunk by chunk while it is imported.
//!
//! # What is in it
//! The chats (id, kind, name, times, read marker), every message the hub ordered
//! (`seq` set: unsent messages stay with their outbox on the device that wrote them)
//! with its state, reply, edit and delete marks and its media reference (blob, server,
//! the file's key: enough to download the file again), the versions of edited
//! messages, reactions, the members' receipts and who was a member when (for
//! "delivered to N of M"). Never MLS state, the session, the outbox or the device's
//! identity: a device that imports an archive still joins each chat's MLS group on its
//! own (a Welcome from another device, or an external commit).
//!
//! # Import never damages what is there
//! The whole import is one transaction, committed only after the last chunk was
//! authenticated and the end record checked: a wrong key
//! ([`Error::WrongKey`]), a damaged, truncated or foreign archive
//! ([`Error::CorruptArchive`]), or an archive of another user ([`Error::Invalid`])
//! changes nothing. Rows the device already has win: messages are keyed by (chat,
//! sender device, message id) and skipped when present, read markers and receipts only
//! rise, a chat's cursor, membership and MLS state are never touched (an imported chat
//! this device is not in shows as not joined). Importing the same archive twice adds
//! nothing the second time.
//!
//! # Format
//! [`parley_crypto::archive`] (header with a format version, content sealed in STREAM
//! chunks) around a sequence of records, each `u32` big-endian length ‖ the JSON of
//! one [`Record`]: first `meta`, then `chat`, `message`, `edit`, `reaction`, `receipt`
//! and `member` records, last `end` with the counts. `spec/backup.md` BK1–BK6.

use std::io::{Read, Write};

use futures_util::TryStreamExt;
use parley_client_api::{ChatId, DeviceId, UserId};
use parley_crypto::ArchiveKey;
use parley_crypto::archive::{self, ArchiveError};
use serde::{Deserialize, Serialize};
use sqlx::SqliteConnection;
use tokio::sync::mpsc;

use crate::client::Client;
use crate::error::{Error, Result};
use crate::store::{self, Db, Reader};

/// The largest record an archive may hold (a message with its media reference is far
/// smaller; the bound keeps a damaged length from allocating much).
pub const MAX_RECORD: usize = 1 << 20;
/// Plaintext bytes gathered before they go to the sealing thread.
const BATCH: usize = 64 * 1024;
/// Batches in flight between the database side and the sealing thread.
const PIPE_DEPTH: usize = 4;

/// One record of an archive (the JSON object's `t` names the variant).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum Record {
    /// First: whose history, written when, from when on.
    Meta {
        user_id: String,
        exported_at: i64,
        since: Option<i64>,
    },
    Chat {
        chat_id: String,
        kind: String,
        name: Option<String>,
        created_at: i64,
        last_activity: i64,
        read_seq: i64,
    },
    Message {
        chat_id: String,
        msg_id: String,
        seq: i64,
        sender: String,
        sender_device: String,
        outgoing: bool,
        kind: String,
        body: String,
        sent_at: i64,
        server_ts: Option<i64>,
        state: String,
        media: Option<String>,
        reply_to: Option<String>,
        edited_at: Option<i64>,
        deleted: bool,
        hidden: bool,
    },
    Edit {
        chat_id: String,
        msg_id: String,
        seq: i64,
        body: String,
        at: i64,
    },
    Reaction {
        chat_id: String,
        msg_id: String,
        user_id: String,
        emoji: String,
        seq: i64,
    },
    Receipt {
        chat_id: String,
        user_id: String,
        delivered_seq: i64,
        read_seq: i64,
    },
    Member {
        chat_id: String,
        user_id: String,
        from_seq: i64,
        to_seq: Option<i64>,
    },
    /// Last: how many records came before it (`meta` included), and of them chats and
    /// messages.
    End {
        records: u64,
        chats: u64,
        messages: u64,
    },
}

/// What [`export`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ExportSummary {
    pub chats: u64,
    pub messages: u64,
    /// Records in the archive (all kinds).
    pub records: u64,
    /// Plaintext bytes of the record stream.
    pub plaintext_bytes: u64,
    /// Bytes written (the archive's size).
    pub archive_bytes: u64,
}

/// What [`Client::import_history`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ImportSummary {
    /// Chats and messages the archive holds.
    pub chats: u64,
    pub messages: u64,
    /// Of them, the ones this device did not have.
    pub chats_added: u64,
    pub messages_added: u64,
}

fn archive_error(e: ArchiveError) -> Error {
    match e {
        ArchiveError::WrongKey => Error::WrongKey,
        ArchiveError::Io(e) => Error::Store(format!("history archive: {e}")),
        other => Error::CorruptArchive(other.to_string()),
    }
}

fn corrupt(what: impl std::fmt::Display) -> Error {
    Error::CorruptArchive(what.to_string())
}

// ---- export ----

/// Feeds the sealing thread: batches of record bytes.
struct Frames {
    buf: Vec<u8>,
    tx: mpsc::Sender<Vec<u8>>,
    summary: ExportSummary,
}

impl Frames {
    async fn push(&mut self, record: &Record) -> Result<()> {
        let json = serde_json::to_vec(record).map_err(Error::store)?;
        if json.len() > MAX_RECORD {
            return Err(Error::Store(format!(
                "a history record of {} bytes is over the archive's limit",
                json.len()
            )));
        }
        let len = u32::try_from(json.len()).map_err(Error::store)?;
        self.buf.extend_from_slice(&len.to_be_bytes());
        self.buf.extend_from_slice(&json);
        self.summary.records += 1;
        self.summary.plaintext_bytes += 4 + json.len() as u64;
        match record {
            Record::Chat { .. } => self.summary.chats += 1,
            Record::Message { .. } => self.summary.messages += 1,
            _ => {}
        }
        if self.buf.len() >= BATCH {
            self.flush().await?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<()> {
        let batch = std::mem::replace(&mut self.buf, Vec::with_capacity(BATCH + 4096));
        // A closed pipe means the sealing thread failed: its error is reported.
        self.tx.send(batch).await.map_err(|_| Error::Closed)
    }
}

/// The sealing thread's input: the batches, as a `Read`.
struct PipeReader {
    rx: mpsc::Receiver<Vec<u8>>,
    cur: Vec<u8>,
    pos: usize,
}

impl Read for PipeReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.pos == self.cur.len() {
            match self.rx.blocking_recv() {
                Some(next) => {
                    self.cur = next;
                    self.pos = 0;
                }
                None => return Ok(0),
            }
        }
        let n = out.len().min(self.cur.len() - self.pos);
        out[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[derive(sqlx::FromRow)]
struct ChatRow {
    chat_id: String,
    kind: String,
    name: Option<String>,
    created_at: i64,
    last_activity: i64,
    read_seq: i64,
}

#[derive(sqlx::FromRow)]
struct MessageRow {
    chat_id: String,
    msg_id: String,
    seq: i64,
    sender: String,
    sender_device: String,
    outgoing: bool,
    kind: String,
    body: String,
    sent_at: i64,
    server_ts: Option<i64>,
    state: String,
    media: Option<String>,
    reply_to: Option<String>,
    edited_at: Option<i64>,
    deleted: bool,
    hidden: bool,
}

/// The messages an archive from `since` on holds (`?1`: `since`, or NULL for all).
const IN_RANGE: &str =
    "m.seq IS NOT NULL AND (?1 IS NULL OR coalesce(m.server_ts, m.sent_at) >= ?1)";

/// Writes the history of the profile behind `reader` as an archive sealed under `key`
/// into `writer`, from `since` (ms since the Unix epoch, by the hub's time) on or all
/// of it; hands `writer` back. Reads one consistent snapshot of the store (writes by a
/// running client meanwhile are not in it) in constant memory.
pub async fn export<W: Write + Send + 'static>(
    reader: &Reader,
    since: Option<i64>,
    key: &ArchiveKey,
    writer: W,
) -> Result<(W, ExportSummary)> {
    let user_id = reader
        .user_id()
        .await?
        .ok_or_else(|| Error::NotLoggedIn("this profile".into()))?;
    let (tx, rx) = mpsc::channel::<Vec<u8>>(PIPE_DEPTH);
    let key = key.clone();
    let sealer = tokio::task::spawn_blocking(move || {
        let mut writer = writer;
        let input = PipeReader {
            rx,
            cur: Vec::new(),
            pos: 0,
        };
        let stats = archive::encrypt(&key, input, &mut writer)?;
        Ok::<_, ArchiveError>((writer, stats))
    });
    let mut frames = Frames {
        buf: Vec::with_capacity(BATCH + 4096),
        tx,
        summary: ExportSummary::default(),
    };
    let produced = produce(reader, &user_id, since, &mut frames).await;
    let Frames { summary, tx, .. } = frames;
    drop(tx);
    let sealed = sealer
        .await
        .map_err(|e| Error::Store(format!("history archive: {e}")))?;
    let (writer, stats) = match (produced, sealed) {
        (_, Err(e)) => return Err(archive_error(e)),
        (Err(e), Ok(_)) => return Err(e),
        (Ok(()), Ok(done)) => done,
    };
    Ok((
        writer,
        ExportSummary {
            archive_bytes: stats.archive_len,
            ..summary
        },
    ))
}

async fn produce(
    reader: &Reader,
    user_id: &UserId,
    since: Option<i64>,
    out: &mut Frames,
) -> Result<()> {
    // One read transaction: every row from the same snapshot.
    let mut tx = reader.pool.begin().await?;
    out.push(&Record::Meta {
        user_id: user_id.to_string(),
        exported_at: crate::client::now_ms(),
        since,
    })
    .await?;
    {
        let mut rows = sqlx::query_as::<_, ChatRow>(
            "SELECT chat_id, kind, name, created_at, last_activity, read_seq
             FROM parley_chats ORDER BY chat_id",
        )
        .fetch(&mut *tx);
        while let Some(c) = rows.try_next().await? {
            out.push(&Record::Chat {
                chat_id: c.chat_id,
                kind: c.kind,
                name: c.name,
                created_at: c.created_at,
                last_activity: c.last_activity,
                read_seq: c.read_seq,
            })
            .await?;
        }
    }
    {
        let sql = format!(
            "SELECT chat_id, msg_id, seq, sender, sender_device, outgoing, kind, body, sent_at,
               server_ts, state, media, reply_to, edited_at, deleted, hidden
             FROM parley_messages m WHERE {IN_RANGE} ORDER BY m.id"
        );
        let mut rows = sqlx::query_as::<_, MessageRow>(&sql)
            .bind(since)
            .fetch(&mut *tx);
        while let Some(m) = rows.try_next().await? {
            out.push(&Record::Message {
                chat_id: m.chat_id,
                msg_id: m.msg_id,
                seq: m.seq,
                sender: m.sender,
                sender_device: m.sender_device,
                outgoing: m.outgoing,
                kind: m.kind,
                body: m.body,
                sent_at: m.sent_at,
                server_ts: m.server_ts,
                state: m.state,
                media: m.media,
                reply_to: m.reply_to,
                edited_at: m.edited_at,
                deleted: m.deleted,
                hidden: m.hidden,
            })
            .await?;
        }
    }
    {
        let sql = format!(
            "SELECT e.chat_id, e.msg_id, e.seq, e.body, e.at FROM parley_edits e
             WHERE EXISTS (SELECT 1 FROM parley_messages m
                           WHERE m.chat_id = e.chat_id AND m.msg_id = e.msg_id AND {IN_RANGE})
             ORDER BY e.chat_id, e.msg_id, e.seq"
        );
        let mut rows = sqlx::query_as::<_, (String, String, i64, String, i64)>(&sql)
            .bind(since)
            .fetch(&mut *tx);
        while let Some((chat_id, msg_id, seq, body, at)) = rows.try_next().await? {
            out.push(&Record::Edit {
                chat_id,
                msg_id,
                seq,
                body,
                at,
            })
            .await?;
        }
    }
    {
        let sql = format!(
            "SELECT r.chat_id, r.msg_id, r.user_id, r.emoji, r.seq FROM parley_reactions r
             WHERE EXISTS (SELECT 1 FROM parley_messages m
                           WHERE m.chat_id = r.chat_id AND m.msg_id = r.msg_id AND {IN_RANGE})
             ORDER BY r.chat_id, r.msg_id, r.user_id"
        );
        let mut rows = sqlx::query_as::<_, (String, String, String, String, i64)>(&sql)
            .bind(since)
            .fetch(&mut *tx);
        while let Some((chat_id, msg_id, user_id, emoji, seq)) = rows.try_next().await? {
            out.push(&Record::Reaction {
                chat_id,
                msg_id,
                user_id,
                emoji,
                seq,
            })
            .await?;
        }
    }
    {
        let mut rows = sqlx::query_as::<_, (String, String, i64, i64)>(
            "SELECT chat_id, user_id, delivered_seq, read_seq FROM parley_receipts
             ORDER BY chat_id, user_id",
        )
        .fetch(&mut *tx);
        while let Some((chat_id, user_id, delivered_seq, read_seq)) = rows.try_next().await? {
            out.push(&Record::Receipt {
                chat_id,
                user_id,
                delivered_seq,
                read_seq,
            })
            .await?;
        }
    }
    {
        let mut rows = sqlx::query_as::<_, (String, String, i64, Option<i64>)>(
            "SELECT chat_id, user_id, from_seq, to_seq FROM parley_member_log
             ORDER BY chat_id, user_id, from_seq",
        )
        .fetch(&mut *tx);
        while let Some((chat_id, user_id, from_seq, to_seq)) = rows.try_next().await? {
            out.push(&Record::Member {
                chat_id,
                user_id,
                from_seq,
                to_seq,
            })
            .await?;
        }
    }
    tx.rollback().await?;
    let end = Record::End {
        records: out.summary.records,
        chats: out.summary.chats,
        messages: out.summary.messages,
    };
    out.push(&end).await?;
    out.flush().await
}

// ---- import ----

/// The opening thread's output: authenticated plaintext, in pieces.
struct PipeWriter {
    tx: mpsc::Sender<Vec<u8>>,
}

impl Write for PipeWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.tx
            .blocking_send(buf.to_vec())
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::BrokenPipe))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Cuts the plaintext pieces into records.
struct Records {
    rx: mpsc::Receiver<Vec<u8>>,
    buf: Vec<u8>,
    pos: usize,
}

impl Records {
    /// Ensures `n` unread bytes are buffered; false at the end of the stream.
    async fn fill(&mut self, n: usize) -> bool {
        while self.buf.len() - self.pos < n {
            let Some(piece) = self.rx.recv().await else {
                return false;
            };
            self.buf.drain(..self.pos);
            self.pos = 0;
            self.buf.extend_from_slice(&piece);
        }
        true
    }

    /// The next record, or `None` at a clean end of the stream.
    async fn next(&mut self) -> Result<Option<Record>> {
        if !self.fill(1).await {
            return Ok(None);
        }
        if !self.fill(4).await {
            return Err(corrupt("the archive ends inside a record"));
        }
        let len_bytes: [u8; 4] = self.buf[self.pos..self.pos + 4]
            .try_into()
            .map_err(corrupt)?;
        let len = u32::from_be_bytes(len_bytes) as usize;
        if len > MAX_RECORD {
            return Err(corrupt(format!(
                "a record of {len} bytes is over the limit"
            )));
        }
        if !self.fill(4 + len).await {
            return Err(corrupt("the archive ends inside a record"));
        }
        let start = self.pos + 4;
        let record = serde_json::from_slice(&self.buf[start..start + len])
            .map_err(|e| corrupt(format!("unreadable record: {e}")))?;
        self.pos = start + len;
        Ok(Some(record))
    }
}

impl Client {
    /// Imports a history archive (see [`crate::history`]) sealed under `key` into this
    /// device's store: all of it in one transaction, or nothing. Rows already on the
    /// device win; importing twice adds nothing the second time. Fails with
    /// [`Error::WrongKey`], [`Error::CorruptArchive`] (damaged, truncated, not an
    /// archive), or [`Error::Invalid`] (another user's history) — and then nothing
    /// changed.
    pub async fn import_history<R: Read + Send + 'static>(
        &self,
        key: &ArchiveKey,
        reader: R,
    ) -> Result<ImportSummary> {
        import(&self.inner.db, &self.inner.user_id, key, reader).await
    }

    /// Exports this device's history as an archive sealed under `key` (see
    /// [`export`]).
    pub async fn export_history<W: Write + Send + 'static>(
        &self,
        since: Option<i64>,
        key: &ArchiveKey,
        writer: W,
    ) -> Result<(W, ExportSummary)> {
        export(&self.inner.db.reader, since, key, writer).await
    }
}

/// See [`Client::import_history`].
pub(crate) async fn import<R: Read + Send + 'static>(
    db: &Db,
    user_id: &UserId,
    key: &ArchiveKey,
    reader: R,
) -> Result<ImportSummary> {
    let (tx, rx) = mpsc::channel::<Vec<u8>>(PIPE_DEPTH);
    let key = key.clone();
    let opener =
        tokio::task::spawn_blocking(move || archive::decrypt(&key, reader, PipeWriter { tx }));
    let mut records = Records {
        rx,
        buf: Vec::with_capacity(2 * BATCH),
        pos: 0,
    };
    let mut conn = db.writer.lock().await;
    let mut txn = store::begin(&mut conn).await?;
    let applied = apply_all(&mut txn, user_id, &mut records).await;
    // Stop the opening thread if we stopped early, then hear how it ended.
    drop(records);
    let opened = opener
        .await
        .map_err(|e| Error::Store(format!("history archive: {e}")))?;
    let outcome = match (opened, applied) {
        (Err(ArchiveError::Io(_)), Err(e)) => Err(e),
        (Err(e), _) => Err(archive_error(e)),
        (Ok(_), applied) => applied,
    };
    match outcome {
        Ok(summary) => {
            txn.commit().await?;
            Ok(summary)
        }
        Err(e) => {
            txn.rollback().await?;
            Err(e)
        }
    }
}

async fn apply_all(
    conn: &mut SqliteConnection,
    user_id: &UserId,
    records: &mut Records,
) -> Result<ImportSummary> {
    let mut summary = ImportSummary::default();
    match records.next().await? {
        Some(Record::Meta { user_id: owner, .. }) => {
            if owner != user_id.as_str() {
                return Err(Error::Invalid(format!(
                    "this archive holds the history of {owner}, not of {user_id}"
                )));
            }
        }
        Some(_) => return Err(corrupt("the archive does not start with its meta record")),
        None => return Err(corrupt("the archive is empty")),
    }
    let mut count: u64 = 1;
    loop {
        let Some(record) = records.next().await? else {
            return Err(corrupt("the archive has no end record"));
        };
        if let Record::End {
            records: n,
            chats,
            messages,
        } = record
        {
            if n != count || chats != summary.chats || messages != summary.messages {
                return Err(corrupt("the end record does not match the archive"));
            }
            break;
        }
        count += 1;
        apply(conn, record, &mut summary).await?;
    }
    if records.next().await?.is_some() {
        return Err(corrupt("records after the end record"));
    }
    Ok(summary)
}

fn chat(s: &str) -> Result<ChatId> {
    ChatId::try_from(s).map_err(|e| corrupt(format!("bad chat id: {e}")))
}

fn user(s: &str) -> Result<UserId> {
    UserId::try_from(s).map_err(|e| corrupt(format!("bad user id: {e}")))
}

async fn apply(
    conn: &mut SqliteConnection,
    record: Record,
    summary: &mut ImportSummary,
) -> Result<()> {
    match record {
        Record::Meta { .. } | Record::End { .. } => {
            return Err(corrupt("a meta or end record in the middle"));
        }
        Record::Chat {
            chat_id,
            kind,
            name,
            created_at,
            last_activity,
            read_seq,
        } => {
            chat(&chat_id)?;
            if kind != "direct" && kind != "group" {
                return Err(corrupt(format!("unknown chat kind {kind:?}")));
            }
            summary.chats += 1;
            let known: bool =
                sqlx::query_scalar("SELECT count(*) > 0 FROM parley_chats WHERE chat_id = ?1")
                    .bind(&chat_id)
                    .fetch_one(&mut *conn)
                    .await?;
            if !known {
                summary.chats_added += 1;
            }
            // A chat the device knows keeps its kind, cursor, membership and (if it has
            // one) name; markers only rise.
            sqlx::query(
                "INSERT INTO parley_chats
                   (chat_id, kind, name, created_at, last_activity, read_seq, read_sent_seq)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)
                 ON CONFLICT (chat_id) DO UPDATE SET
                   name = coalesce(parley_chats.name, excluded.name),
                   last_activity = max(parley_chats.last_activity, excluded.last_activity),
                   read_seq = max(parley_chats.read_seq, excluded.read_seq),
                   read_sent_seq = max(parley_chats.read_sent_seq, excluded.read_sent_seq)",
            )
            .bind(&chat_id)
            .bind(&kind)
            .bind(&name)
            .bind(created_at)
            .bind(last_activity)
            .bind(read_seq)
            .execute(&mut *conn)
            .await?;
        }
        Record::Message {
            chat_id,
            msg_id,
            seq,
            sender,
            sender_device,
            outgoing,
            kind,
            body,
            sent_at,
            server_ts,
            state,
            media,
            reply_to,
            edited_at,
            deleted,
            hidden,
        } => {
            chat(&chat_id)?;
            user(&sender)?;
            DeviceId::try_from(sender_device.as_str())
                .map_err(|e| corrupt(format!("bad device id: {e}")))?;
            state.parse::<store::MessageState>().map_err(corrupt)?;
            summary.messages += 1;
            let done = sqlx::query(
                "INSERT INTO parley_messages
                   (chat_id, msg_id, seq, sender, sender_device, outgoing, kind, body, sent_at,
                    server_ts, state, media, reply_to, edited_at, deleted, hidden)
                 SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16
                 WHERE EXISTS (SELECT 1 FROM parley_chats WHERE chat_id = ?1)
                 ON CONFLICT (chat_id, sender_device, msg_id) DO NOTHING",
            )
            .bind(&chat_id)
            .bind(&msg_id)
            .bind(seq)
            .bind(&sender)
            .bind(&sender_device)
            .bind(outgoing)
            .bind(&kind)
            .bind(&body)
            .bind(sent_at)
            .bind(server_ts)
            .bind(&state)
            .bind(&media)
            .bind(&reply_to)
            .bind(edited_at)
            .bind(deleted)
            .bind(hidden)
            .execute(&mut *conn)
            .await?;
            if done.rows_affected() == 0 {
                let exists: bool =
                    sqlx::query_scalar("SELECT count(*) > 0 FROM parley_chats WHERE chat_id = ?1")
                        .bind(&chat_id)
                        .fetch_one(&mut *conn)
                        .await?;
                if !exists {
                    return Err(corrupt("a message of a chat the archive does not hold"));
                }
            }
            summary.messages_added += done.rows_affected();
        }
        Record::Edit {
            chat_id,
            msg_id,
            seq,
            body,
            at,
        } => {
            chat(&chat_id)?;
            sqlx::query(
                "INSERT INTO parley_edits (chat_id, msg_id, seq, body, at)
                 VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT DO NOTHING",
            )
            .bind(&chat_id)
            .bind(&msg_id)
            .bind(seq)
            .bind(&body)
            .bind(at)
            .execute(&mut *conn)
            .await?;
        }
        Record::Reaction {
            chat_id,
            msg_id,
            user_id,
            emoji,
            seq,
        } => {
            chat(&chat_id)?;
            user(&user_id)?;
            sqlx::query(
                "INSERT INTO parley_reactions (chat_id, msg_id, user_id, emoji, seq)
                 VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT DO NOTHING",
            )
            .bind(&chat_id)
            .bind(&msg_id)
            .bind(&user_id)
            .bind(&emoji)
            .bind(seq)
            .execute(&mut *conn)
            .await?;
        }
        Record::Receipt {
            chat_id,
            user_id,
            delivered_seq,
            read_seq,
        } => {
            let c = chat(&chat_id)?;
            let u = user(&user_id)?;
            store::raise_receipt(conn, &c, &u, delivered_seq, read_seq).await?;
        }
        Record::Member {
            chat_id,
            user_id,
            from_seq,
            to_seq,
        } => {
            chat(&chat_id)?;
            user(&user_id)?;
            sqlx::query(
                "INSERT INTO parley_member_log (chat_id, user_id, from_seq, to_seq)
                 SELECT ?1, ?2, ?3, ?4
                 WHERE NOT EXISTS (SELECT 1 FROM parley_member_log
                                   WHERE chat_id = ?1 AND user_id = ?2 AND from_seq = ?3)",
            )
            .bind(&chat_id)
            .bind(&user_id)
            .bind(from_seq)
            .bind(to_seq)
            .execute(&mut *conn)
            .await?;
        }
    }
    Ok(())
}
