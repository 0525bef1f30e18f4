//! The SQLite backend: the zero-setup default. One file, WAL, `synchronous = FULL` (an
//! acknowledged event survives power loss), write transactions `BEGIN IMMEDIATE` on one
//! writer connection, so writers queue in its pool instead of failing on upgrade or
//! sleeping in SQLite's busy handler. Variable-length
//! lists are bound as JSON arrays and read with `json_each`.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::str::FromStr;
use std::time::Duration;

use parley_client_api::http::chats::{ChatEvent, Receipt};
use parley_client_api::{BlobHash, ChatId, DeviceId, Payload, UserId};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{Row, Sqlite, SqlitePool, Transaction};

use parley_federation::Policy;
use parley_federation::policy::{Mode, Rule};

use super::fed::snapshot_rows;
use super::plan::{self, AckedRow, ChatState, ReceiptRow, SendOutcome};
use super::{
    AckRequest, BlobRow, ChatInfo, ChatListRow, ClaimedKeyPackage, DeviceRow, INBOX_RECEIPT,
    INBOX_SEND_RESULT, InboxItem, KeyPackageCount, NewChat, NewDevice, NewUser, Purged,
    ReceiptNotice, Result, SendRequest, Stats, Store, StoreError, UploadStart, blobs_from_json,
    blobs_to_json, epoch_i64, id, kind_from_i16, kind_to_i16, membership_from_json,
    membership_to_json, mls_from_columns, mls_kind_to_i16, size_i64,
};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

#[derive(Clone)]
pub struct SqliteStore {
    /// Reads (WAL: side by side with the writer) and single-statement writes.
    pub(super) pool: SqlitePool,
    /// The one connection write transactions take ([`SqliteStore::write_tx`]): writers
    /// wait their turn in the pool's queue and start the moment the previous one ends,
    /// instead of polling the database lock in SQLite's busy handler, which sleeps up to
    /// 100 ms between tries.
    pub(super) writer: SqlitePool,
}

impl SqliteStore {
    /// Opens (creating if missing) the database at `url` (`sqlite://path` or a path).
    pub async fn connect(url: &str) -> Result<Self> {
        let url = if url.starts_with("sqlite:") {
            url.to_owned()
        } else {
            format!("sqlite://{url}")
        };
        let options = SqliteConnectOptions::from_str(&url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(30))
            .foreign_keys(true);
        // A connection still inside a transaction is never handed out again (a `BEGIN`
        // whose future was dropped after the worker ran it leaves no `Transaction` to roll
        // back; the next `BEGIN IMMEDIATE` on it would fail): it is closed instead.
        let pool_with = |n: u32| {
            SqlitePoolOptions::new()
                .max_connections(n)
                .after_release(|conn, _| {
                    Box::pin(async move { Ok(!sqlx::Connection::is_in_transaction(conn)) })
                })
                .before_acquire(|conn, _| {
                    Box::pin(async move { Ok(!sqlx::Connection::is_in_transaction(conn)) })
                })
        };
        let pool = pool_with(4).connect_with(options.clone()).await?;
        MIGRATOR.run(&pool).await?;
        let writer = pool_with(1).connect_with(options).await?;
        Ok(Self { pool, writer })
    }

    /// A write transaction on the writer connection (`BEGIN IMMEDIATE`: it holds the
    /// database's write lock from the start).
    pub(super) async fn write_tx(&self) -> Result<Transaction<'static, Sqlite>> {
        Ok(self.writer.begin_with("BEGIN IMMEDIATE").await?)
    }
}

pub(super) fn json_list<T: AsRef<str>>(v: impl IntoIterator<Item = T>) -> String {
    serde_json::Value::Array(
        v.into_iter()
            .map(|s| serde_json::Value::String(s.as_ref().to_owned()))
            .collect(),
    )
    .to_string()
}

/// A list of rows (tuples) as a JSON array of arrays, for a statement to read with
/// `json_each` and `value ->> N`: one statement for a whole set.
pub(super) fn json_rows<T: serde::Serialize>(rows: impl IntoIterator<Item = T>) -> Result<String> {
    serde_json::to_string(&rows.into_iter().collect::<Vec<T>>())
        .map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.is_unique_violation())
}

pub(super) async fn devices_of(
    tx: &mut Transaction<'_, Sqlite>,
    users: &BTreeSet<UserId>,
) -> Result<HashMap<UserId, Vec<DeviceId>>> {
    let mut out: HashMap<UserId, Vec<DeviceId>> = HashMap::new();
    if users.is_empty() {
        return Ok(out);
    }
    let rows = sqlx::query(
        "SELECT user_id, device_id FROM devices
         WHERE user_id IN (SELECT value FROM json_each(?1)) ORDER BY device_id",
    )
    .bind(json_list(users))
    .fetch_all(&mut **tx)
    .await?;
    for r in rows {
        out.entry(id(r.get("user_id"))?)
            .or_default()
            .push(id(r.get("device_id"))?);
    }
    Ok(out)
}

/// Writes receipt changes into inboxes, replacing an unacknowledged older change of the
/// same member; the replacement takes a new, later id.
pub(super) async fn upsert_receipts(
    tx: &mut Transaction<'_, Sqlite>,
    rows: Vec<ReceiptRow>,
    now: i64,
) -> Result<Vec<ReceiptNotice>> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    // Read-receipt privacy: what each device's user may see (MS40–MS47).
    let (policy, owner) = super::receipt_policy::for_rows_sqlite(tx, &rows).await?;
    let rows = policy.mask_rows(rows, &owner);
    let mut dedup: BTreeMap<(DeviceId, ChatId, UserId), Receipt> = BTreeMap::new();
    for r in rows {
        dedup.insert(
            (r.device_id, r.chat_id, r.receipt.user_id.clone()),
            r.receipt,
        );
    }
    // Each (device, chat, member) keeps one receipt item: the old one goes, the new one
    // carries the higher of both. Two statements for the whole set.
    let keys = json_rows(
        dedup
            .keys()
            .map(|(d, c, u)| (d.as_str(), c.as_str(), u.as_str())),
    )?;
    let old: HashMap<(String, String, String), (i64, i64)> =
        sqlx::query_as::<_, (String, String, String, i64, i64)>(
            "DELETE FROM inbox WHERE kind = 1 AND (device_id, chat_id, sender) IN
             (SELECT value ->> 0, value ->> 1, value ->> 2 FROM json_each(?1))
         RETURNING device_id, chat_id, sender, delivered_seq, read_seq",
        )
        .bind(&keys)
        .fetch_all(&mut **tx)
        .await?
        .into_iter()
        .map(|(d, c, u, ds, rs)| ((d, c, u), (ds, rs)))
        .collect();
    let items: Vec<(DeviceId, ChatId, Receipt)> = dedup
        .into_iter()
        .map(|((device_id, chat_id, user), receipt)| {
            let (old_d, old_r) = old
                .get(&(
                    device_id.as_str().to_owned(),
                    chat_id.as_str().to_owned(),
                    user.as_str().to_owned(),
                ))
                .copied()
                .unwrap_or_default();
            let receipt = Receipt {
                user_id: user,
                delivered_seq: receipt.delivered_seq.max(old_d),
                read_seq: receipt.read_seq.max(old_r),
            };
            (device_id, chat_id, receipt)
        })
        .collect();
    let mut ids: HashMap<(String, String, String), i64> = HashMap::with_capacity(items.len());
    for chunk in items.chunks(ROWS_PER_STATEMENT) {
        let mut q = sqlx::QueryBuilder::<Sqlite>::new(
            "INSERT INTO inbox (device_id, chat_id, kind, seq, sender, delivered_seq, read_seq, created_at) ",
        );
        q.push_values(chunk, |mut b, (device, chat, receipt)| {
            b.push_bind(device.as_str())
                .push_bind(chat.as_str())
                .push_bind(1i16)
                .push_bind(0i64)
                .push_bind(receipt.user_id.as_str())
                .push_bind(receipt.delivered_seq)
                .push_bind(receipt.read_seq)
                .push_bind(now);
        });
        q.push(" RETURNING id, device_id, chat_id, sender");
        for (id, d, c, u) in q
            .build_query_as::<(i64, String, String, String)>()
            .fetch_all(&mut **tx)
            .await?
        {
            ids.insert((d, c, u), id);
        }
    }
    let mut notices = Vec::with_capacity(items.len());
    for (device_id, chat_id, receipt) in items {
        let key = (
            device_id.as_str().to_owned(),
            chat_id.as_str().to_owned(),
            receipt.user_id.as_str().to_owned(),
        );
        let id = *ids
            .get(&key)
            .ok_or_else(|| StoreError::Corrupt("a receipt item was not written".into()))?;
        notices.push(ReceiptNotice {
            device_id,
            id,
            chat_id,
            receipt,
        });
    }
    Ok(notices)
}

pub(super) fn receipt_from_row(r: &SqliteRow) -> Result<(ChatId, Receipt)> {
    Ok((
        id(r.get("chat_id"))?,
        Receipt {
            user_id: id(r.get("user_id"))?,
            delivered_seq: r.get("delivered_seq"),
            read_seq: r.get("read_seq"),
        },
    ))
}

/// Rows per multi-row statement (each statement is a round trip to SQLite's worker
/// thread): at 11 parameters a row, far below SQLite's limit of 32,766.
pub(super) const ROWS_PER_STATEMENT: usize = 500;

/// Writes event items (`kind` 0) into inboxes, a few statements for any number, and
/// returns their ids in the order given.
pub(super) async fn insert_event_items<'a>(
    tx: &mut Transaction<'_, Sqlite>,
    items: impl Iterator<Item = (&'a DeviceId, &'a ChatId, i64, &'a UserId)>,
    at: i64,
) -> Result<Vec<i64>> {
    let items: Vec<_> = items.collect();
    let index: HashMap<(&str, &str, i64), usize> = items
        .iter()
        .enumerate()
        .map(|(n, (d, c, s, _))| ((d.as_str(), c.as_str(), *s), n))
        .collect();
    let mut ids: Vec<Option<i64>> = vec![None; items.len()];
    for chunk in items.chunks(ROWS_PER_STATEMENT) {
        let mut q = sqlx::QueryBuilder::<Sqlite>::new(
            "INSERT INTO inbox (device_id, chat_id, kind, seq, sender, created_at) ",
        );
        q.push_values(chunk, |mut b, (device, chat, seq, sender)| {
            b.push_bind(device.as_str())
                .push_bind(chat.as_str())
                .push_bind(0i16)
                .push_bind(*seq)
                .push_bind(sender.as_str())
                .push_bind(at);
        });
        q.push(" RETURNING id, device_id, chat_id, seq");
        // RETURNING lists rows in no set order: match them back by their key.
        for (id, device, chat, seq) in q
            .build_query_as::<(i64, String, String, i64)>()
            .fetch_all(&mut **tx)
            .await?
        {
            if let Some(n) = index.get(&(device.as_str(), chat.as_str(), seq)) {
                ids[*n] = Some(id);
            }
        }
    }
    ids.into_iter()
        .map(|id| id.ok_or_else(|| StoreError::Corrupt("an inbox row was not written".into())))
        .collect()
}

pub(super) fn event_from_row(r: &SqliteRow) -> Result<ChatEvent> {
    Ok(ChatEvent {
        chat_id: id(r.get("chat_id"))?,
        seq: r.get("seq"),
        sender: id(r.get("sender"))?,
        sender_device: id(r.get("sender_device"))?,
        client_msg_id: r.get("client_msg_id"),
        ts: r.get("ts"),
        payload: Payload(r.get("payload")),
        mls: mls_from_columns(r.get("mls_kind"), r.get("mls_epoch"))?,
        membership: membership_from_json(r.get("membership"))?,
        blobs: blobs_from_json(r.get("blobs"))?,
        expires_in: super::expires_in(r.get("ts"), r.get("expires_at")),
        read_receipts: r.get("read_receipts"),
    })
}

impl Store for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    async fn create_user(&self, user: &NewUser) -> Result<()> {
        let res = sqlx::query(
            "INSERT INTO users (user_id, localpart, password_hash, created_at) VALUES (?1, ?2, ?3, ?4)",
        )
        .bind(user.user_id.as_str())
        .bind(&user.localpart)
        .bind(&user.password_hash)
        .bind(user.created_at)
        .execute(&self.writer)
        .await;
        match res {
            Ok(_) => Ok(()),
            Err(e) if is_unique_violation(&e) => Err(StoreError::Conflict("user")),
            Err(e) => Err(e.into()),
        }
    }

    async fn user_password(&self, localpart: &str) -> Result<Option<(UserId, String)>> {
        let row = sqlx::query(
            "SELECT user_id, password_hash FROM users WHERE localpart = ?1 AND deactivated_at IS NULL",
        )
            .bind(localpart)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| Ok((id(r.get("user_id"))?, r.get("password_hash"))))
            .transpose()
    }

    async fn user_exists(&self, user_id: &UserId) -> Result<bool> {
        let row = sqlx::query("SELECT 1 FROM users WHERE user_id = ?1")
            .bind(user_id.as_str())
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.is_some())
    }

    async fn create_device(&self, device: &NewDevice) -> Result<()> {
        let res = sqlx::query(
            "INSERT INTO devices (device_id, user_id, display_name, token_hash, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )
        .bind(device.device_id.as_str())
        .bind(device.user_id.as_str())
        .bind(&device.display_name)
        .bind(&device.token_hash[..])
        .bind(device.created_at)
        .execute(&self.writer)
        .await;
        match res {
            Ok(_) => Ok(()),
            Err(e) if is_unique_violation(&e) => Err(StoreError::Conflict("device")),
            Err(e) => Err(e.into()),
        }
    }

    async fn device_by_token(&self, token_hash: &[u8; 32]) -> Result<Option<(UserId, DeviceId)>> {
        let row = sqlx::query("SELECT user_id, device_id FROM devices WHERE token_hash = ?1")
            .bind(&token_hash[..])
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| Ok((id(r.get("user_id"))?, id(r.get("device_id"))?)))
            .transpose()
    }

    async fn list_devices(&self, user_id: &UserId) -> Result<Vec<DeviceRow>> {
        let rows = sqlx::query(
            "SELECT device_id, display_name, created_at FROM devices WHERE user_id = ?1
             ORDER BY created_at, device_id",
        )
        .bind(user_id.as_str())
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(DeviceRow {
                    device_id: id(r.get("device_id"))?,
                    display_name: r.get("display_name"),
                    created_at: r.get("created_at"),
                })
            })
            .collect()
    }

    async fn delete_device(&self, user_id: &UserId, device_id: &DeviceId) -> Result<bool> {
        let mut tx = self.write_tx().await?;
        let gone = sqlx::query("DELETE FROM devices WHERE device_id = ?1 AND user_id = ?2")
            .bind(device_id.as_str())
            .bind(user_id.as_str())
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if gone == 1 {
            sqlx::query("DELETE FROM inbox WHERE device_id = ?1")
                .bind(device_id.as_str())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(gone == 1)
    }

    async fn create_chat(&self, chat: &NewChat) -> Result<(ChatId, bool)> {
        let mut tx = self.write_tx().await?;
        if let Some(key) = &chat.direct_key {
            let existing: Option<String> =
                sqlx::query_scalar("SELECT chat_id FROM chats WHERE direct_key = ?1")
                    .bind(key)
                    .fetch_optional(&mut *tx)
                    .await?;
            if let Some(existing) = existing {
                sqlx::query(
                    "UPDATE chat_members SET left_at = NULL
                     WHERE chat_id = ?1 AND user_id IN (SELECT value FROM json_each(?2))",
                )
                .bind(&existing)
                .bind(json_list(&chat.members))
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                return Ok((id(existing)?, false));
            }
        }
        sqlx::query(
            "INSERT INTO chats (chat_id, kind, direct_key, created_by, created_at, last_ts, name)
             VALUES (?1, ?2, ?3, ?4, ?5, ?5, ?6)",
        )
        .bind(chat.chat_id.as_str())
        .bind(kind_to_i16(chat.kind))
        .bind(&chat.direct_key)
        .bind(chat.created_by.as_str())
        .bind(chat.created_at)
        .bind(&chat.name)
        .execute(&mut *tx)
        .await?;
        for member in &chat.members {
            sqlx::query(
                "INSERT INTO chat_members (chat_id, user_id, joined_at, admin) VALUES (?1, ?2, ?3, ?4)",
            )
            .bind(chat.chat_id.as_str())
            .bind(member.as_str())
            .bind(chat.created_at)
            .bind(*member == chat.created_by)
            .execute(&mut *tx)
            .await?;
        }
        super::fed_sqlite::insert_outbox(&mut tx, &snapshot_rows(chat), chat.created_at).await?;
        tx.commit().await?;
        Ok((chat.chat_id.clone(), true))
    }

    async fn chat_members(&self, chat_id: &ChatId) -> Result<Option<Vec<UserId>>> {
        let rows = sqlx::query(
            "SELECT m.user_id FROM chats c
             LEFT JOIN chat_members m ON m.chat_id = c.chat_id AND m.left_at IS NULL
             WHERE c.chat_id = ?1 ORDER BY m.user_id",
        )
        .bind(chat_id.as_str())
        .fetch_all(&self.pool)
        .await?;
        if rows.is_empty() {
            return Ok(None);
        }
        let mut members = Vec::new();
        for r in rows {
            if let Some(u) = r.get::<Option<String>, _>("user_id") {
                members.push(id(u)?);
            }
        }
        Ok(Some(members))
    }

    async fn list_chats(&self, user_id: &UserId) -> Result<Vec<ChatListRow>> {
        let rows = sqlx::query(
            "SELECT c.chat_id, c.kind, c.name, c.last_seq, c.last_ts, c.created_at, m.read_seq,
                    (SELECT json_group_array(user_id) FROM (SELECT o.user_id FROM chat_members o
                      WHERE o.chat_id = c.chat_id AND o.left_at IS NULL ORDER BY o.user_id)) AS members,
                    (SELECT count(*) FROM events e
                      WHERE e.chat_id = c.chat_id AND e.seq > m.read_seq AND e.sender <> m.user_id) AS unread
             FROM chat_members m JOIN chats c ON c.chat_id = m.chat_id
             WHERE m.user_id = ?1 AND m.left_at IS NULL
             ORDER BY c.last_ts DESC, c.chat_id",
        )
        .bind(user_id.as_str())
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let members: Vec<String> = serde_json::from_str(r.get("members"))
                    .map_err(|e| StoreError::Corrupt(e.to_string()))?;
                Ok(ChatListRow {
                    chat_id: id(r.get("chat_id"))?,
                    kind: kind_from_i16(r.get("kind"))?,
                    name: r.get("name"),
                    members: members.into_iter().map(id).collect::<Result<_>>()?,
                    last_seq: r.get("last_seq"),
                    last_ts: r.get("last_ts"),
                    read_seq: r.get("read_seq"),
                    unread_count: r.get("unread"),
                    created_at: r.get("created_at"),
                })
            })
            .collect()
    }

    async fn leave_chat(&self, chat_id: &ChatId, user_id: &UserId, at: i64) -> Result<bool> {
        let n = sqlx::query(
            "UPDATE chat_members SET left_at = ?3 WHERE chat_id = ?1 AND user_id = ?2 AND left_at IS NULL",
        )
        .bind(chat_id.as_str())
        .bind(user_id.as_str())
        .bind(at)
        .execute(&self.writer)
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    async fn commit_sends(
        &self,
        batch: &[SendRequest],
        max_members: usize,
    ) -> Result<Vec<SendOutcome>> {
        let mut tx = self.write_tx().await?;
        let chat_ids: BTreeSet<&str> = batch.iter().map(|r| r.chat_id.as_str()).collect();
        let mut chats: HashMap<ChatId, ChatState> = HashMap::new();
        let heads = sqlx::query(
            "SELECT chat_id, kind, last_seq, mls_epoch FROM chats
             WHERE chat_id IN (SELECT value FROM json_each(?1))",
        )
        .bind(json_list(&chat_ids))
        .fetch_all(&mut *tx)
        .await?;
        for r in &heads {
            chats.insert(
                id(r.get("chat_id"))?,
                ChatState {
                    kind: kind_from_i16(r.get("kind"))?,
                    last_seq: r.get("last_seq"),
                    mls_epoch: u64::try_from(r.get::<i64, _>("mls_epoch")).unwrap_or_default(),
                    members: BTreeMap::new(),
                },
            );
        }
        let members = sqlx::query(
            "SELECT m.chat_id, m.user_id, m.admin, d.device_id FROM chat_members m
             LEFT JOIN devices d ON d.user_id = m.user_id
             WHERE m.chat_id IN (SELECT value FROM json_each(?1)) AND m.left_at IS NULL",
        )
        .bind(json_list(&chat_ids))
        .fetch_all(&mut *tx)
        .await?;
        for r in &members {
            let chat: ChatId = id(r.get("chat_id"))?;
            let Some(state) = chats.get_mut(&chat) else {
                continue;
            };
            let member = state.members.entry(id(r.get("user_id"))?).or_default();
            member.admin = r.get("admin");
            if let Some(d) = r.get::<Option<String>, _>("device_id") {
                member.devices.push(id(d)?);
            }
        }
        // Users that membership changes add: they must exist; their devices get the commit.
        let adds: BTreeSet<String> = batch
            .iter()
            .filter_map(|r| r.membership.as_ref())
            .flat_map(|m| m.add.iter().map(|u| u.to_string()))
            .collect();
        let mut users: HashMap<UserId, Vec<DeviceId>> = HashMap::new();
        if !adds.is_empty() {
            let rows = sqlx::query(
                "SELECT u.user_id, d.device_id FROM users u
                 LEFT JOIN devices d ON d.user_id = u.user_id
                 WHERE u.user_id IN (SELECT value FROM json_each(?1))",
            )
            .bind(json_list(&adds))
            .fetch_all(&mut *tx)
            .await?;
            for r in rows {
                let devices = users.entry(id(r.get("user_id"))?).or_default();
                if let Some(d) = r.get::<Option<String>, _>("device_id") {
                    devices.push(id(d)?);
                }
            }
        }
        // Sends seen before (a retry): one statement for the batch.
        let keys = json_rows(batch.iter().map(|r| {
            (
                r.chat_id.as_str(),
                r.sender_device.as_str(),
                &r.client_msg_id,
            )
        }))?;
        let rows = sqlx::query(
            "SELECT DISTINCT k.key AS i, e.seq, e.ts FROM json_each(?1) AS k
             JOIN events e ON e.chat_id = k.value ->> 0 AND e.sender_device = k.value ->> 1
                          AND e.client_msg_id = k.value ->> 2",
        )
        .bind(&keys)
        .fetch_all(&mut *tx)
        .await?;
        let mut existing = HashMap::new();
        for r in rows {
            let i = usize::try_from(r.get::<i64, _>("i"))
                .map_err(|e| StoreError::Corrupt(e.to_string()))?;
            existing.insert(plan::send_key(&batch[i]), (r.get("seq"), r.get("ts")));
        }

        let wanted: BTreeSet<&BlobHash> = batch.iter().flat_map(|r| r.blobs.iter()).collect();
        let mut present: HashSet<BlobHash> = HashSet::new();
        if !wanted.is_empty() {
            let rows: Vec<String> = sqlx::query_scalar(
                "SELECT hash FROM blobs WHERE hash IN (SELECT value FROM json_each(?1))",
            )
            .bind(json_list(&wanted))
            .fetch_all(&mut *tx)
            .await?;
            present = rows.into_iter().map(id).collect::<Result<_>>()?;
        }
        let mut plan = plan::plan_sends(batch, &existing, &chats, &users, &present, max_members);
        let senders: BTreeSet<&str> = batch.iter().map(|r| r.sender.as_str()).collect();
        let senders: Vec<&str> = senders.into_iter().collect();
        let periods = super::blocks::periods_sqlite(&mut tx, &senders).await?;
        super::blocks::withhold_inbox(&mut plan, batch, &chats, &users, &periods);
        let now_ts = batch.iter().map(|r| r.ts).max().unwrap_or_default();
        for (chat, seq, blob) in &plan.blob_refs {
            sqlx::query("INSERT INTO blob_refs (chat_id, seq, hash, ts) VALUES (?1, ?2, ?3, ?4)")
                .bind(chat.as_str())
                .bind(seq)
                .bind(blob.as_str())
                .bind(now_ts)
                .execute(&mut *tx)
                .await?;
        }
        let heads = json_rows(plan.heads.iter().map(|h| {
            (
                h.chat_id.as_str(),
                h.last_seq,
                h.last_ts,
                epoch_i64(h.mls_epoch),
            )
        }))?;
        sqlx::query(
            "UPDATE chats SET last_seq = h.seq, last_ts = h.ts, mls_epoch = h.epoch
             FROM (SELECT value ->> 0 AS chat_id, value ->> 1 AS seq, value ->> 2 AS ts,
                          value ->> 3 AS epoch FROM json_each(?1)) AS h
             WHERE chats.chat_id = h.chat_id",
        )
        .bind(&heads)
        .execute(&mut *tx)
        .await?;
        let now = batch.iter().map(|r| r.ts).max().unwrap_or_default();
        for op in &plan.membership {
            let sql = if op.add {
                "INSERT INTO chat_members (chat_id, user_id, joined_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (chat_id, user_id) DO UPDATE
                    SET left_at = NULL, joined_at = EXCLUDED.joined_at, admin = FALSE"
            } else {
                "UPDATE chat_members SET left_at = ?3, admin = FALSE WHERE chat_id = ?1 AND user_id = ?2"
            };
            sqlx::query(sql)
                .bind(op.chat_id.as_str())
                .bind(op.user_id.as_str())
                .bind(now)
                .execute(&mut *tx)
                .await?;
        }
        for chunk in plan.events.chunks(ROWS_PER_STATEMENT) {
            let mut q = sqlx::QueryBuilder::<Sqlite>::new(
                "INSERT INTO events (chat_id, seq, sender, sender_device, client_msg_id, ts, payload,
                                     mls_kind, mls_epoch, membership, blobs) ",
            );
            q.push_values(chunk, |mut b, (i, seq)| {
                let r = &batch[*i];
                b.push_bind(r.chat_id.as_str())
                    .push_bind(*seq)
                    .push_bind(r.sender.as_str())
                    .push_bind(r.sender_device.as_str())
                    .push_bind(&r.client_msg_id)
                    .push_bind(r.ts)
                    .push_bind(&r.payload)
                    .push_bind(r.mls.map(|m| mls_kind_to_i16(m.kind)))
                    .push_bind(r.mls.map(|m| epoch_i64(m.epoch)))
                    .push_bind(membership_to_json(&r.membership))
                    .push_bind(blobs_to_json(&r.blobs));
            });
            q.build().execute(&mut *tx).await?;
        }
        let now = batch.iter().map(|r| r.ts).max().unwrap_or_default();
        let written = insert_event_items(
            &mut tx,
            plan.inbox
                .iter()
                .map(|row| (&row.device_id, &row.chat_id, row.seq, &row.sender)),
            now,
        )
        .await?;
        let ids = plan
            .inbox
            .iter()
            .zip(written)
            .map(|(row, id)| (id, row.device_id.clone(), row.chat_id.clone(), row.seq))
            .collect::<Vec<_>>();
        let stamps: Vec<_> = plan
            .events
            .iter()
            .map(|(i, seq)| super::disappearing::Stamp {
                chat_id: &batch[*i].chat_id,
                seq: *seq,
                ts: batch[*i].ts,
                expires_in: batch[*i].expires_in,
                read_receipts: batch[*i].read_receipts,
            })
            .collect();
        super::disappearing::stamp_sqlite(&mut tx, &stamps).await?;
        super::group_info::keep_sqlite(&mut tx, &plan, batch, now).await?;
        super::fed_sqlite::insert_outbox(&mut tx, &plan.outbox_rows(), now).await?;
        tx.commit().await?;
        Ok(plan.finish(batch, ids))
    }

    async fn history(&self, chat_id: &ChatId, after: i64, limit: u32) -> Result<Vec<ChatEvent>> {
        let rows = sqlx::query(
            "SELECT chat_id, seq, sender, sender_device, client_msg_id, ts, payload, mls_kind,
                    mls_epoch, membership, blobs, expires_at, read_receipts FROM events
             WHERE chat_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
        )
        .bind(chat_id.as_str())
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(event_from_row).collect()
    }

    async fn inbox_page(
        &self,
        device_id: &DeviceId,
        after: i64,
        limit: u32,
    ) -> Result<Vec<InboxItem>> {
        let rows = sqlx::query(
            "SELECT i.id, i.kind, i.chat_id, i.seq, i.sender, i.delivered_seq, i.read_seq, i.body,
                    e.sender_device, e.client_msg_id, e.ts, e.payload, e.mls_kind, e.mls_epoch,
                    e.membership, e.blobs, e.expires_at, e.read_receipts
             FROM inbox i
             LEFT JOIN events e ON i.kind = 0 AND e.chat_id = i.chat_id AND e.seq = i.seq
             WHERE i.device_id = ?1 AND i.id > ?2 ORDER BY i.id LIMIT ?3",
        )
        .bind(device_id.as_str())
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        let mut items = Vec::with_capacity(rows.len());
        for r in &rows {
            let item_id: i64 = r.get("id");
            let chat_id: ChatId = id(r.get("chat_id"))?;
            if r.get::<i16, _>("kind") == INBOX_SEND_RESULT {
                let body: Option<String> = r.get("body");
                match body.and_then(|b| crate::store::send_result_item(item_id, &b)) {
                    Some(item) => items.push(item),
                    None => tracing::warn!(item_id, "unreadable send result in the inbox"),
                }
                continue;
            }
            if r.get::<i16, _>("kind") == INBOX_RECEIPT {
                items.push(InboxItem::Receipt {
                    id: item_id,
                    chat_id,
                    receipt: Receipt {
                        user_id: id(r.get("sender"))?,
                        delivered_seq: r.get("delivered_seq"),
                        read_seq: r.get("read_seq"),
                    },
                });
                continue;
            }
            let Some(payload) = r.get::<Option<Vec<u8>>, _>("payload") else {
                continue;
            };
            items.push(InboxItem::Event {
                id: item_id,
                event: ChatEvent {
                    chat_id,
                    seq: r.get("seq"),
                    sender: id(r.get("sender"))?,
                    sender_device: id(r
                        .get::<Option<String>, _>("sender_device")
                        .unwrap_or_default())?,
                    client_msg_id: r
                        .get::<Option<String>, _>("client_msg_id")
                        .unwrap_or_default(),
                    ts: r.get::<Option<i64>, _>("ts").unwrap_or_default(),
                    payload: Payload(payload),
                    mls: mls_from_columns(r.get("mls_kind"), r.get("mls_epoch"))?,
                    membership: membership_from_json(r.get("membership"))?,
                    blobs: blobs_from_json(r.get("blobs"))?,
                    expires_in: super::expires_in(r.get("ts"), r.get("expires_at")),
                    read_receipts: r.get("read_receipts"),
                },
            });
        }
        Ok(items)
    }

    async fn commit_acks(
        &self,
        batch: &[AckRequest],
        at: i64,
        fanout: bool,
    ) -> Result<Vec<ReceiptNotice>> {
        let mut tx = self.write_tx().await?;
        // The acknowledged items, gone in one statement (an id already gone was acked
        // before: nothing to do).
        let owners: HashMap<&str, &UserId> = batch
            .iter()
            .map(|a| (a.device_id.as_str(), &a.user_id))
            .collect();
        let items = json_rows(
            batch
                .iter()
                .flat_map(|a| a.ids.iter().map(move |n| (a.device_id.as_str(), n))),
        )?;
        let deleted = sqlx::query(
            "DELETE FROM inbox WHERE id IN (SELECT value ->> 1 FROM json_each(?1))
                AND EXISTS (SELECT 1 FROM json_each(?1) AS k
                            WHERE k.value ->> 0 = inbox.device_id AND k.value ->> 1 = inbox.id)
             RETURNING device_id, chat_id, kind, seq, sender",
        )
        .bind(&items)
        .fetch_all(&mut *tx)
        .await?;
        let mut rows = Vec::with_capacity(deleted.len());
        for r in deleted {
            let device: String = r.get("device_id");
            let Some(user) = owners.get(device.as_str()) else {
                continue;
            };
            rows.push(AckedRow {
                user_id: (*user).clone(),
                chat_id: id(r.get("chat_id"))?,
                kind: r.get("kind"),
                seq: r.get("seq"),
                sender: id(r.get("sender"))?,
            });
        }
        let plan = plan::plan_acks(&rows);
        let raised = json_rows(
            plan.delivered
                .iter()
                .map(|((chat, user), seq)| (chat.as_str(), user.as_str(), seq)),
        )?;
        let changed = sqlx::query(
            "UPDATE chat_members SET delivered_seq = h.s
             FROM (SELECT value ->> 0 AS c, value ->> 1 AS u, value ->> 2 AS s
                   FROM json_each(?1)) AS h
             WHERE chat_id = h.c AND user_id = h.u AND delivered_seq < h.s
             RETURNING chat_id, user_id, delivered_seq, read_seq",
        )
        .bind(&raised)
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(receipt_from_row)
        .collect::<Result<Vec<_>>>()?;
        if fanout && !changed.is_empty() {
            sqlx::query(
                "INSERT INTO receipt_fanout (chat_id, user_id)
                 SELECT value ->> 0, value ->> 1 FROM json_each(?1)",
            )
            .bind(json_rows(
                changed
                    .iter()
                    .map(|(c, r)| (c.as_str(), r.user_id.as_str())),
            )?)
            .execute(&mut *tx)
            .await?;
        }
        let users: BTreeSet<UserId> = plan.notify.values().flatten().cloned().collect();
        let devices = devices_of(&mut tx, &users).await?;
        let notices = upsert_receipts(
            &mut tx,
            plan::receipt_rows(&changed, &plan.notify, &devices, None),
            at,
        )
        .await?;
        tx.commit().await?;
        Ok(notices)
    }

    async fn mark_read(
        &self,
        chat_id: &ChatId,
        user_id: &UserId,
        device_id: &DeviceId,
        seq: i64,
        at: i64,
    ) -> Result<Option<Vec<ReceiptNotice>>> {
        let mut tx = self.write_tx().await?;
        let old = sqlx::query(
            "SELECT m.read_seq, c.last_seq FROM chat_members m JOIN chats c ON c.chat_id = m.chat_id
             WHERE m.chat_id = ?1 AND m.user_id = ?2 AND m.left_at IS NULL",
        )
        .bind(chat_id.as_str())
        .bind(user_id.as_str())
        .fetch_optional(&mut *tx)
        .await?;
        let Some(old) = old else {
            return Ok(None);
        };
        let (old_read, last): (i64, i64) = (old.get("read_seq"), old.get("last_seq"));
        let new_read = seq.min(last);
        if new_read <= old_read {
            tx.commit().await?;
            return Ok(Some(Vec::new()));
        }
        let row = sqlx::query(
            "UPDATE chat_members SET read_seq = ?3, delivered_seq = max(delivered_seq, ?3)
             WHERE chat_id = ?1 AND user_id = ?2 RETURNING chat_id, user_id, delivered_seq, read_seq",
        )
        .bind(chat_id.as_str())
        .bind(user_id.as_str())
        .bind(new_read)
        .fetch_one(&mut *tx)
        .await?;
        let changed = vec![receipt_from_row(&row)?];
        let senders: Vec<String> = sqlx::query_scalar(
            "SELECT DISTINCT sender FROM events WHERE chat_id = ?1 AND seq > ?2 AND seq <= ?3 AND sender <> ?4",
        )
        .bind(chat_id.as_str())
        .bind(old_read)
        .bind(new_read)
        .bind(user_id.as_str())
        .fetch_all(&mut *tx)
        .await?;
        let mut notify_users: BTreeSet<UserId> =
            senders.into_iter().map(id).collect::<Result<_>>()?;
        notify_users.insert(user_id.clone());
        let devices = devices_of(&mut tx, &notify_users).await?;
        let notify = BTreeMap::from([((chat_id.clone(), user_id.clone()), notify_users)]);
        let notices = upsert_receipts(
            &mut tx,
            plan::receipt_rows(&changed, &notify, &devices, Some(device_id)),
            at,
        )
        .await?;
        tx.commit().await?;
        Ok(Some(notices))
    }

    async fn receipts(&self, chat_id: &ChatId) -> Result<Option<(i64, Vec<Receipt>)>> {
        let last: Option<i64> = sqlx::query_scalar("SELECT last_seq FROM chats WHERE chat_id = ?1")
            .bind(chat_id.as_str())
            .fetch_optional(&self.pool)
            .await?;
        let Some(last) = last else {
            return Ok(None);
        };
        let rows = sqlx::query(
            "SELECT chat_id, user_id, delivered_seq, read_seq FROM chat_members
             WHERE chat_id = ?1 AND left_at IS NULL ORDER BY user_id",
        )
        .bind(chat_id.as_str())
        .fetch_all(&self.pool)
        .await?;
        let receipts = rows
            .iter()
            .map(|r| receipt_from_row(r).map(|(_, r)| r))
            .collect::<Result<_>>()?;
        Ok(Some((last, receipts)))
    }

    async fn purge_expired(&self, before: i64) -> Result<Purged> {
        let mut tx = self.write_tx().await?;
        let inbox_rows = sqlx::query("DELETE FROM inbox WHERE created_at < ?1")
            .bind(before)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        sqlx::query("DELETE FROM blob_refs WHERE ts < ?1")
            .bind(before)
            .execute(&mut *tx)
            .await?;
        let events = sqlx::query("DELETE FROM events WHERE ts < ?1")
            .bind(before)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        Ok(Purged { inbox_rows, events })
    }

    async fn purge_disappeared(
        &self,
        now: i64,
        limit: i64,
    ) -> Result<super::disappearing::Disappeared> {
        super::disappearing::purge_sqlite(&self.pool, now, limit).await
    }

    async fn chat_info(&self, chat_id: &ChatId) -> Result<Option<ChatInfo>> {
        let Some(chat) = sqlx::query("SELECT kind, name, mls_epoch FROM chats WHERE chat_id = ?1")
            .bind(chat_id.as_str())
            .fetch_optional(&self.pool)
            .await?
        else {
            return Ok(None);
        };
        let members = sqlx::query(
            "SELECT user_id, admin FROM chat_members WHERE chat_id = ?1 AND left_at IS NULL ORDER BY user_id",
        )
        .bind(chat_id.as_str())
        .fetch_all(&self.pool)
        .await?;
        Ok(Some(ChatInfo {
            kind: kind_from_i16(chat.get("kind"))?,
            name: chat.get("name"),
            mls_epoch: u64::try_from(chat.get::<i64, _>("mls_epoch")).unwrap_or_default(),
            members: members
                .iter()
                .map(|r| Ok((id(r.get("user_id"))?, r.get("admin"))))
                .collect::<Result<_>>()?,
        }))
    }

    async fn rename_chat(&self, chat_id: &ChatId, name: &str) -> Result<()> {
        sqlx::query("UPDATE chats SET name = ?2 WHERE chat_id = ?1")
            .bind(chat_id.as_str())
            .bind(name)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    async fn set_admin(&self, chat_id: &ChatId, user_id: &UserId, admin: bool) -> Result<bool> {
        let n = sqlx::query(
            "UPDATE chat_members SET admin = ?3 WHERE chat_id = ?1 AND user_id = ?2 AND left_at IS NULL",
        )
        .bind(chat_id.as_str())
        .bind(user_id.as_str())
        .bind(admin)
        .execute(&self.writer)
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    async fn deactivate_user(&self, user_id: &UserId, at: i64) -> Result<Option<Vec<DeviceId>>> {
        let mut tx = self.write_tx().await?;
        let n = sqlx::query(
            "UPDATE users SET deactivated_at = ?2 WHERE user_id = ?1 AND deactivated_at IS NULL",
        )
        .bind(user_id.as_str())
        .bind(at)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if n == 0 {
            return Ok(None);
        }
        let devices: Vec<String> =
            sqlx::query_scalar("DELETE FROM devices WHERE user_id = ?1 RETURNING device_id")
                .bind(user_id.as_str())
                .fetch_all(&mut *tx)
                .await?;
        for device in &devices {
            sqlx::query("DELETE FROM inbox WHERE device_id = ?1")
                .bind(device)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(Some(devices.into_iter().map(id).collect::<Result<_>>()?))
    }

    async fn set_password(&self, user_id: &UserId, password_hash: &str) -> Result<bool> {
        let n = sqlx::query(
            "UPDATE users SET password_hash = ?2 WHERE user_id = ?1 AND deactivated_at IS NULL",
        )
        .bind(user_id.as_str())
        .bind(password_hash)
        .execute(&self.writer)
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    async fn blob(&self, hash: &BlobHash) -> Result<Option<BlobRow>> {
        let row = sqlx::query("SELECT size, uploader, created_at FROM blobs WHERE hash = ?1")
            .bind(hash.as_str())
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| {
            Ok(BlobRow {
                size: u64::try_from(r.get::<i64, _>("size")).unwrap_or_default(),
                uploader: r.get("uploader"),
                created_at: r.get("created_at"),
            })
        })
        .transpose()
    }

    async fn start_upload(
        &self,
        hash: &BlobHash,
        user: &UserId,
        total: u64,
        quota: u64,
        now: i64,
    ) -> Result<UploadStart> {
        let mut tx = self.write_tx().await?;
        // Serialize one user's uploads on their row, so the quota check holds.
        sqlx::query("SELECT user_id FROM users WHERE user_id = ?1")
            .bind(user.as_str())
            .fetch_optional(&mut *tx)
            .await?;
        if let Some(size) = sqlx::query_scalar::<_, i64>("SELECT size FROM blobs WHERE hash = ?1")
            .bind(hash.as_str())
            .fetch_optional(&mut *tx)
            .await?
        {
            tx.commit().await?;
            return Ok(UploadStart::Stored {
                size: u64::try_from(size).unwrap_or_default(),
            });
        }
        if let Some(existing) = sqlx::query_scalar::<_, i64>(
            "SELECT total FROM uploads WHERE hash = ?1 AND user_id = ?2",
        )
        .bind(hash.as_str())
        .bind(user.as_str())
        .fetch_optional(&mut *tx)
        .await?
        {
            tx.commit().await?;
            return Ok(if existing == size_i64(total) {
                UploadStart::Started
            } else {
                UploadStart::TotalMismatch {
                    total: u64::try_from(existing).unwrap_or_default(),
                }
            });
        }
        let used: i64 = sqlx::query_scalar(
            "SELECT (SELECT COALESCE(SUM(size), 0) FROM blobs WHERE uploader = ?1)
                  + (SELECT COALESCE(SUM(total), 0) FROM uploads WHERE user_id = ?1)",
        )
        .bind(user.as_str())
        .fetch_one(&mut *tx)
        .await?;
        let used = u64::try_from(used).unwrap_or_default();
        if used.saturating_add(total) > quota {
            tx.commit().await?;
            return Ok(UploadStart::QuotaExceeded { used });
        }
        sqlx::query(
            "INSERT INTO uploads (hash, user_id, total, created_at) VALUES (?1, ?2, ?3, ?4)",
        )
        .bind(hash.as_str())
        .bind(user.as_str())
        .bind(size_i64(total))
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(UploadStart::Started)
    }

    async fn finish_upload(
        &self,
        hash: &BlobHash,
        user: &UserId,
        size: u64,
        now: i64,
    ) -> Result<()> {
        let mut tx = self.write_tx().await?;
        sqlx::query(
            "INSERT INTO blobs (hash, size, uploader, created_at) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (hash) DO NOTHING",
        )
        .bind(hash.as_str())
        .bind(size_i64(size))
        .bind(user.as_str())
        .bind(now)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM uploads WHERE hash = ?1 AND user_id = ?2")
            .bind(hash.as_str())
            .bind(user.as_str())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn cancel_upload(&self, hash: &BlobHash, user: &UserId) -> Result<()> {
        sqlx::query("DELETE FROM uploads WHERE hash = ?1 AND user_id = ?2")
            .bind(hash.as_str())
            .bind(user.as_str())
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    async fn can_download(&self, hash: &BlobHash, user: &UserId) -> Result<bool> {
        let row = sqlx::query(
            "SELECT 1 FROM blobs b WHERE b.hash = ?1 AND (b.uploader = ?2 OR EXISTS (
                SELECT 1 FROM blob_refs r JOIN chat_members m
                  ON m.chat_id = r.chat_id AND m.user_id = ?2 AND m.left_at IS NULL
                WHERE r.hash = ?1))",
        )
        .bind(hash.as_str())
        .bind(user.as_str())
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.is_some())
    }

    async fn blob_senders(
        &self,
        hash: &BlobHash,
        user: &UserId,
        limit: i64,
    ) -> Result<Vec<UserId>> {
        let rows: Vec<String> = sqlx::query_scalar(
            "SELECT DISTINCT e.sender FROM blob_refs r
               JOIN chat_members m
                 ON m.chat_id = r.chat_id AND m.user_id = ?2 AND m.left_at IS NULL
               JOIN events e ON e.chat_id = r.chat_id AND e.seq = r.seq
              WHERE r.hash = ?1
              LIMIT ?3",
        )
        .bind(hash.as_str())
        .bind(user.as_str())
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(id).collect()
    }

    async fn blob_shared_with(&self, hash: &BlobHash, server: &str) -> Result<bool> {
        // A user id is `@localpart:server` and a localpart holds no `:`, so the suffix
        // `:server` names exactly the users of `server`.
        let row = sqlx::query(
            "SELECT 1 FROM blob_refs r JOIN chat_members m
                ON m.chat_id = r.chat_id AND m.left_at IS NULL
             WHERE r.hash = ?1 AND substr(m.user_id, -(length(?2) + 1)) = ':' || ?2
             LIMIT 1",
        )
        .bind(hash.as_str())
        .bind(server)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.is_some())
    }

    async fn insert_fetched_blob(
        &self,
        hash: &BlobHash,
        size: u64,
        origin: &str,
        now: i64,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO blobs (hash, size, uploader, created_at) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (hash) DO NOTHING",
        )
        .bind(hash.as_str())
        .bind(size_i64(size))
        .bind(origin)
        .bind(now)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    async fn unreferenced_blobs(&self, before: i64) -> Result<Vec<BlobHash>> {
        let rows: Vec<String> = sqlx::query_scalar(
            "SELECT hash FROM blobs b WHERE created_at < ?1
               AND NOT EXISTS (SELECT 1 FROM blob_refs r WHERE r.hash = b.hash)
               AND NOT EXISTS (SELECT 1 FROM backups k WHERE k.blob = b.hash)",
        )
        .bind(before)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(id).collect()
    }

    async fn delete_blob(&self, hash: &BlobHash) -> Result<()> {
        sqlx::query("DELETE FROM blobs WHERE hash = ?1")
            .bind(hash.as_str())
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    async fn take_stale_uploads(&self, before: i64) -> Result<Vec<(BlobHash, UserId)>> {
        let rows = sqlx::query("DELETE FROM uploads WHERE created_at < ?1 RETURNING hash, user_id")
            .bind(before)
            .fetch_all(&self.writer)
            .await?;
        rows.iter()
            .map(|r| Ok((id(r.get("hash"))?, id(r.get("user_id"))?)))
            .collect()
    }

    async fn stats(&self) -> Result<Stats> {
        let row = sqlx::query(
            "SELECT (SELECT count(*) FROM users) AS users, (SELECT count(*) FROM devices) AS devices,
                    (SELECT count(*) FROM chats) AS chats, (SELECT count(*) FROM inbox) AS inbox_rows",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(Stats {
            users: row.get("users"),
            devices: row.get("devices"),
            chats: row.get("chats"),
            inbox_rows: row.get("inbox_rows"),
        })
    }

    async fn upload_key_packages(
        &self,
        device_id: &DeviceId,
        one_time: &[Vec<u8>],
        last_resort: Option<&[u8]>,
        max_stored: u32,
    ) -> Result<KeyPackageCount> {
        let mut tx = self.write_tx().await?;
        // Serialize uploads of one device on its row.
        sqlx::query("SELECT device_id FROM devices WHERE device_id = ?1")
            .bind(device_id.as_str())
            .fetch_optional(&mut *tx)
            .await?;
        let held: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM key_packages WHERE device_id = ?1 AND NOT last_resort",
        )
        .bind(device_id.as_str())
        .fetch_one(&mut *tx)
        .await?;
        if held + one_time.len() as i64 > i64::from(max_stored) {
            return Err(StoreError::Conflict("key_packages"));
        }
        for data in one_time {
            sqlx::query(
                "INSERT INTO key_packages (device_id, last_resort, data) VALUES (?1, FALSE, ?2)",
            )
            .bind(device_id.as_str())
            .bind(data)
            .execute(&mut *tx)
            .await?;
        }
        if let Some(data) = last_resort {
            sqlx::query("DELETE FROM key_packages WHERE device_id = ?1 AND last_resort")
                .bind(device_id.as_str())
                .execute(&mut *tx)
                .await?;
            sqlx::query(
                "INSERT INTO key_packages (device_id, last_resort, data) VALUES (?1, TRUE, ?2)",
            )
            .bind(device_id.as_str())
            .bind(data)
            .execute(&mut *tx)
            .await?;
        }
        let count = key_package_count(&mut tx, device_id).await?;
        tx.commit().await?;
        Ok(count)
    }

    async fn key_package_count(&self, device_id: &DeviceId) -> Result<KeyPackageCount> {
        let mut conn = self.pool.acquire().await?;
        key_package_count(&mut conn, device_id).await
    }

    async fn claim_key_packages(&self, user_id: &UserId) -> Result<Vec<ClaimedKeyPackage>> {
        let mut tx = self.write_tx().await?;
        let devices: Vec<String> = sqlx::query_scalar(
            "SELECT device_id FROM devices WHERE user_id = ?1 ORDER BY device_id",
        )
        .bind(user_id.as_str())
        .fetch_all(&mut *tx)
        .await?;
        let mut out = Vec::with_capacity(devices.len());
        for device in devices {
            let one_time: Option<Vec<u8>> = sqlx::query_scalar(
                "DELETE FROM key_packages WHERE id = (SELECT id FROM key_packages WHERE device_id = ?1 AND NOT last_resort ORDER BY id LIMIT 1) RETURNING data",
            )
            .bind(&device)
            .fetch_optional(&mut *tx)
            .await?;
            let (data, last_resort) = match one_time {
                Some(d) => (Some(d), false),
                None => (
                    sqlx::query_scalar(
                        "SELECT data FROM key_packages WHERE device_id = ?1 AND last_resort",
                    )
                    .bind(&device)
                    .fetch_optional(&mut *tx)
                    .await?,
                    true,
                ),
            };
            if let Some(data) = data {
                out.push(ClaimedKeyPackage {
                    device_id: id(device)?,
                    data,
                    last_resort,
                });
            }
        }
        tx.commit().await?;
        Ok(out)
    }

    async fn seed_federation_policy(&self, seed: &Policy, at: i64) -> Result<()> {
        let mut tx = self.write_tx().await?;
        let inserted = sqlx::query(
            "INSERT INTO federation_settings (id, mode) VALUES (1, ?) ON CONFLICT (id) DO NOTHING",
        )
        .bind(super::mode_to_str(seed.mode))
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if inserted == 1 {
            for rule in &seed.rules {
                sqlx::query(
                    "INSERT INTO federation_rules (pattern, action, reason, created_at) \
                     VALUES (?, ?, ?, ?) ON CONFLICT (pattern) DO NOTHING",
                )
                .bind(rule.pattern.as_str())
                .bind(super::action_to_str(rule.action))
                .bind(rule.reason.as_deref())
                .bind(at)
                .execute(&mut *tx)
                .await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    async fn federation_policy(&self) -> Result<Policy> {
        let mode: Option<String> =
            sqlx::query_scalar("SELECT mode FROM federation_settings WHERE id = 1")
                .fetch_optional(&self.pool)
                .await?;
        let rows = sqlx::query(
            "SELECT pattern, action, reason FROM federation_rules ORDER BY created_at, pattern",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(Policy {
            mode: mode
                .as_deref()
                .map(super::mode_from_str)
                .transpose()?
                .unwrap_or_default(),
            rules: rows
                .into_iter()
                .map(|r| {
                    super::rule_from_columns(r.get("pattern"), r.get("action"), r.get("reason"))
                })
                .collect::<Result<_>>()?,
        })
    }

    async fn set_federation_mode(&self, mode: Mode) -> Result<()> {
        sqlx::query(
            "INSERT INTO federation_settings (id, mode) VALUES (1, ?) \
             ON CONFLICT (id) DO UPDATE SET mode = excluded.mode",
        )
        .bind(super::mode_to_str(mode))
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    async fn put_federation_rule(&self, rule: &Rule, at: i64) -> Result<()> {
        sqlx::query(
            "INSERT INTO federation_rules (pattern, action, reason, created_at) VALUES (?, ?, ?, ?) \
             ON CONFLICT (pattern) DO UPDATE SET action = excluded.action, reason = excluded.reason",
        )
        .bind(rule.pattern.as_str())
        .bind(super::action_to_str(rule.action))
        .bind(rule.reason.as_deref())
        .bind(at)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    async fn delete_federation_rule(&self, pattern: &str) -> Result<bool> {
        Ok(
            sqlx::query("DELETE FROM federation_rules WHERE pattern = ?")
                .bind(pattern)
                .execute(&self.writer)
                .await?
                .rows_affected()
                > 0,
        )
    }
}

async fn key_package_count(
    conn: &mut sqlx::SqliteConnection,
    device_id: &DeviceId,
) -> Result<KeyPackageCount> {
    let row = sqlx::query(
        "SELECT count(*) FILTER (WHERE NOT last_resort) AS one_time,
                count(*) FILTER (WHERE last_resort) AS last_resort
         FROM key_packages WHERE device_id = ?1",
    )
    .bind(device_id.as_str())
    .fetch_one(&mut *conn)
    .await?;
    Ok(KeyPackageCount {
        one_time: u32::try_from(row.get::<i64, _>("one_time")).unwrap_or(u32::MAX),
        has_last_resort: row.get::<i64, _>("last_resort") > 0,
    })
}
