//! The Postgres backend. Batches use `UNNEST` so a batch of any size is a handful of
//! statements; chat heads are locked in `chat_id` order so concurrent batches (several
//! writers, several nodes) never deadlock.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use parley_client_api::http::chats::{ChatEvent, Receipt};
use parley_client_api::{BlobHash, ChatId, DeviceId, Payload, UserId};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Postgres, Row, Transaction};

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

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

#[derive(Clone)]
pub struct PgStore {
    pool: PgPool,
}

impl PgStore {
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self> {
        let options: PgConnectOptions = url.parse()?;
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .connect_with(options)
            .await?;
        MIGRATOR.run(&pool).await?;
        let autovacuum: String = sqlx::query_scalar(
            "SELECT CASE WHEN current_setting('autovacuum')::bool
                          AND current_setting('track_counts')::bool THEN 'on' ELSE 'off' END",
        )
        .fetch_one(&pool)
        .await?;
        if autovacuum == "off" {
            tracing::warn!(
                "Postgres runs with autovacuum (or track_counts) off: acknowledged inbox rows \
                 are never vacuumed, so tables and indexes grow without bound and the planner \
                 has no statistics; turn autovacuum on, or VACUUM ANALYZE regularly"
            );
        }
        Ok(Self { pool })
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.code().as_deref() == Some("23505"))
}

fn strs<T: AsRef<str>>(v: impl IntoIterator<Item = T>) -> Vec<String> {
    v.into_iter().map(|s| s.as_ref().to_owned()).collect()
}

/// Devices of the given users.
pub(super) async fn devices_of(
    tx: &mut Transaction<'_, Postgres>,
    users: &BTreeSet<UserId>,
) -> Result<HashMap<UserId, Vec<DeviceId>>> {
    let mut out: HashMap<UserId, Vec<DeviceId>> = HashMap::new();
    if users.is_empty() {
        return Ok(out);
    }
    let rows = sqlx::query(
        "SELECT user_id, device_id FROM devices WHERE user_id = ANY($1) ORDER BY device_id",
    )
    .bind(strs(users))
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
/// same member (which then takes a new, later id).
pub(super) async fn upsert_receipts(
    tx: &mut Transaction<'_, Postgres>,
    rows: Vec<ReceiptRow>,
    now: i64,
) -> Result<Vec<ReceiptNotice>> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    // Read-receipt privacy: what each device's user may see (MS40–MS47).
    let (policy, owner) = super::receipt_policy::for_rows_pg(tx, &rows).await?;
    let rows = policy.mask_rows(rows, &owner);
    // One row per (device, chat, member) in a statement: keep the last.
    let mut dedup: BTreeMap<(DeviceId, ChatId, UserId), Receipt> = BTreeMap::new();
    for r in rows {
        dedup.insert(
            (r.device_id, r.chat_id, r.receipt.user_id.clone()),
            r.receipt,
        );
    }
    let (mut dev, mut chat, mut user, mut del, mut read) = (vec![], vec![], vec![], vec![], vec![]);
    for ((d, c, u), r) in &dedup {
        dev.push(d.to_string());
        chat.push(c.to_string());
        user.push(u.to_string());
        del.push(r.delivered_seq);
        read.push(r.read_seq);
    }
    let returned = sqlx::query(
        "INSERT INTO inbox (device_id, chat_id, kind, seq, sender, delivered_seq, read_seq, created_at)
         SELECT d, c, 1, 0, u, ds, rs, $6
         FROM UNNEST($1::text[], $2::text[], $3::text[], $4::bigint[], $5::bigint[]) AS v(d, c, u, ds, rs)
         ON CONFLICT (device_id, chat_id, sender) WHERE kind = 1 DO UPDATE
            SET id = nextval(pg_get_serial_sequence('inbox', 'id')),
                delivered_seq = GREATEST(inbox.delivered_seq, EXCLUDED.delivered_seq),
                read_seq = GREATEST(inbox.read_seq, EXCLUDED.read_seq),
                created_at = EXCLUDED.created_at
         RETURNING id, device_id, chat_id, sender, delivered_seq, read_seq",
    )
    .bind(dev)
    .bind(chat)
    .bind(user)
    .bind(del)
    .bind(read)
    .bind(now)
    .fetch_all(&mut **tx)
    .await?;
    returned
        .into_iter()
        .map(|r| {
            Ok(ReceiptNotice {
                id: r.get("id"),
                device_id: id(r.get("device_id"))?,
                chat_id: id(r.get("chat_id"))?,
                receipt: Receipt {
                    user_id: id(r.get("sender"))?,
                    delivered_seq: r.get("delivered_seq"),
                    read_seq: r.get("read_seq"),
                },
            })
        })
        .collect()
}

impl PgStore {
    /// Commits a batch of sends in one transaction. With `check_resends` false it does not
    /// look for earlier sends with the same keys, and returns `None` (having rolled back)
    /// if the batch holds one.
    ///
    /// Every statement reads through an index whatever the planner knows about table sizes
    /// (`= ANY($n)` on a leading key column, or a per-key probe), so a cached generic plan
    /// stays cheap on a database that was never analysed.
    async fn commit_sends_once(
        &self,
        batch: &[SendRequest],
        max_members: usize,
        check_resends: bool,
    ) -> Result<Option<Vec<SendOutcome>>> {
        let mut tx = self.pool.begin().await?;
        let chat_ids: Vec<String> = batch
            .iter()
            .map(|r| r.chat_id.to_string())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        // Lock the heads in a fixed order, then read members with their devices, each
        // through an index on a leading key column. (A plain join of the three let a
        // planner without statistics loop over `devices` once per member: ~1,000 scans
        // per send in a 1,024-member group.) The senders' blocks ride on the heads' read
        // (an uncorrelated subquery, run once): they decide whose inboxes events skip.
        let senders: BTreeSet<&str> = batch.iter().map(|r| r.sender.as_str()).collect();
        let heads = sqlx::query(
            "SELECT chat_id, kind, last_seq, mls_epoch,
                    (SELECT json_agg(json_build_array(blocker, blocked, since, until))::text
                     FROM user_blocks WHERE blocked = ANY($2)) AS blocks
             FROM chats WHERE chat_id = ANY($1) ORDER BY chat_id FOR UPDATE OF chats",
        )
        .bind(&chat_ids)
        .bind(senders.into_iter().collect::<Vec<_>>())
        .fetch_all(&mut *tx)
        .await?;
        let periods = match heads.first() {
            Some(r) => super::blocks::periods_from_json(r.get("blocks"))?,
            None => Vec::new(),
        };
        let mut chats: HashMap<ChatId, ChatState> = HashMap::new();
        for r in heads {
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
        // Members with their devices: a per-member probe of `devices_by_user` (LATERAL
        // with OFFSET 0 keeps it a probe: the planner cannot turn it into a join that
        // scans `devices`).
        let members = sqlx::query(
            "SELECT m.chat_id, m.user_id, m.admin, d.device_id FROM chat_members m
             LEFT JOIN LATERAL (
                 SELECT device_id FROM devices WHERE user_id = m.user_id
                 ORDER BY device_id OFFSET 0
             ) d ON TRUE
             WHERE m.chat_id = ANY($1) AND m.left_at IS NULL",
        )
        .bind(&chat_ids)
        .fetch_all(&mut *tx)
        .await?;
        for r in members {
            let Some(state) = chats.get_mut(&id::<ChatId>(r.get("chat_id"))?) else {
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
                 LEFT JOIN devices d ON d.user_id = u.user_id AND d.user_id = ANY($1)
                 WHERE u.user_id = ANY($1)",
            )
            .bind(adds.into_iter().collect::<Vec<_>>())
            .fetch_all(&mut *tx)
            .await?;
            for r in rows {
                let devices = users.entry(id(r.get("user_id"))?).or_default();
                if let Some(d) = r.get::<Option<String>, _>("device_id") {
                    devices.push(id(d)?);
                }
            }
        }
        let mut existing = HashMap::new();
        if check_resends {
            // One unique-index probe per send (OFFSET 0 keeps the planner from turning
            // the lookup into a join that scans `events`).
            let rows = sqlx::query(
                "SELECT k.i, e.seq, e.ts
                 FROM UNNEST($1::text[], $2::text[], $3::text[]) WITH ORDINALITY AS k(c, d, m, i)
                 CROSS JOIN LATERAL (
                     SELECT seq, ts FROM events
                     WHERE chat_id = k.c AND sender_device = k.d AND client_msg_id = k.m OFFSET 0
                 ) e",
            )
            .bind(strs(batch.iter().map(|r| r.chat_id.as_str())))
            .bind(strs(batch.iter().map(|r| r.sender_device.as_str())))
            .bind(strs(batch.iter().map(|r| r.client_msg_id.as_str())))
            .fetch_all(&mut *tx)
            .await?;
            for r in rows {
                let i = usize::try_from(r.get::<i64, _>("i") - 1)
                    .map_err(|_| StoreError::Corrupt("ordinality".into()))?;
                let req = batch
                    .get(i)
                    .ok_or_else(|| StoreError::Corrupt("ordinality".into()))?;
                existing.insert(
                    plan::send_key(req),
                    (r.get::<i64, _>("seq"), r.get::<i64, _>("ts")),
                );
            }
        }

        let wanted: BTreeSet<&BlobHash> = batch.iter().flat_map(|r| r.blobs.iter()).collect();
        let mut present: HashSet<BlobHash> = HashSet::new();
        if !wanted.is_empty() {
            let rows: Vec<String> =
                sqlx::query_scalar("SELECT hash FROM blobs WHERE hash = ANY($1)")
                    .bind(wanted.iter().map(|b| b.to_string()).collect::<Vec<_>>())
                    .fetch_all(&mut *tx)
                    .await?;
            present = rows.into_iter().map(id).collect::<Result<_>>()?;
        }
        let mut plan = plan::plan_sends(batch, &existing, &chats, &users, &present, max_members);
        super::blocks::withhold_inbox(&mut plan, batch, &chats, &users, &periods);
        let now_ts = batch.iter().map(|r| r.ts).max().unwrap_or_default();
        for (chat, seq, blob) in &plan.blob_refs {
            sqlx::query("INSERT INTO blob_refs (chat_id, seq, hash, ts) VALUES ($1, $2, $3, $4)")
                .bind(chat.as_str())
                .bind(seq)
                .bind(blob.as_str())
                .bind(now_ts)
                .execute(&mut *tx)
                .await?;
        }
        if plan.events.is_empty() {
            tx.commit().await?;
            return Ok(Some(plan.finish(batch, [])));
        }
        let now = now_ts;
        for op in &plan.membership {
            let sql = if op.add {
                "INSERT INTO chat_members (chat_id, user_id, joined_at) VALUES ($1, $2, $3)
                 ON CONFLICT (chat_id, user_id) DO UPDATE
                    SET left_at = NULL, joined_at = EXCLUDED.joined_at, admin = FALSE"
            } else {
                "UPDATE chat_members SET left_at = $3, admin = FALSE WHERE chat_id = $1 AND user_id = $2"
            };
            sqlx::query(sql)
                .bind(op.chat_id.as_str())
                .bind(op.user_id.as_str())
                .bind(now)
                .execute(&mut *tx)
                .await?;
        }
        let ev = |f: fn(&SendRequest) -> String| -> Vec<String> {
            plan.events.iter().map(|(i, _)| f(&batch[*i])).collect()
        };
        // One round trip writes the heads, the events, the inbox rows and the outbox rows.
        let outbox = plan.outbox_rows();
        let rows = sqlx::query(
            "WITH heads AS (
                 UPDATE chats SET last_seq = v.s, last_ts = v.t, mls_epoch = v.e
                 FROM UNNEST($1::text[], $2::bigint[], $3::bigint[], $4::bigint[]) AS v(c, s, t, e)
                 WHERE chats.chat_id = ANY($1) AND chats.chat_id = v.c
             ), new_events AS (
                 INSERT INTO events (chat_id, seq, sender, sender_device, client_msg_id, ts, payload,
                                     mls_kind, mls_epoch, membership, blobs)
                 SELECT * FROM UNNEST($5::text[], $6::bigint[], $7::text[], $8::text[], $9::text[],
                                      $10::bigint[], $11::bytea[], $12::smallint[], $13::bigint[],
                                      $14::text[], $15::text[])
                 ON CONFLICT (chat_id, sender_device, client_msg_id) DO NOTHING
                 RETURNING 1
             ), new_inbox AS (
                 INSERT INTO inbox (device_id, chat_id, kind, seq, sender, created_at)
                 SELECT d, c, 0, s, u, $20
                 FROM UNNEST($16::text[], $17::text[], $18::bigint[], $19::text[]) AS w(d, c, s, u)
                 RETURNING id, device_id, chat_id, seq
             ), new_outbox AS (
                 INSERT INTO federation_outbox (destination, kind, body, created_at)
                 SELECT d, k, b, $20 FROM UNNEST($21::text[], $22::smallint[], $23::text[])
                      WITH ORDINALITY AS o(d, k, b, n)
                 ORDER BY n
             )
             SELECT n.events, i.id, i.device_id, i.chat_id, i.seq
             FROM (SELECT count(*) AS events FROM new_events) n LEFT JOIN new_inbox i ON TRUE",
        )
        .bind(
            plan.heads
                .iter()
                .map(|h| h.chat_id.to_string())
                .collect::<Vec<_>>(),
        )
        .bind(plan.heads.iter().map(|h| h.last_seq).collect::<Vec<_>>())
        .bind(plan.heads.iter().map(|h| h.last_ts).collect::<Vec<_>>())
        .bind(
            plan.heads
                .iter()
                .map(|h| epoch_i64(h.mls_epoch))
                .collect::<Vec<_>>(),
        )
        .bind(ev(|r| r.chat_id.to_string()))
        .bind(plan.events.iter().map(|(_, s)| *s).collect::<Vec<_>>())
        .bind(ev(|r| r.sender.to_string()))
        .bind(ev(|r| r.sender_device.to_string()))
        .bind(ev(|r| r.client_msg_id.clone()))
        .bind(plan.events.iter().map(|(i, _)| batch[*i].ts).collect::<Vec<_>>())
        .bind(plan.events.iter().map(|(i, _)| batch[*i].payload.clone()).collect::<Vec<_>>())
        .bind(
            plan.events
                .iter()
                .map(|(i, _)| batch[*i].mls.map(|m| mls_kind_to_i16(m.kind)))
                .collect::<Vec<_>>(),
        )
        .bind(
            plan.events
                .iter()
                .map(|(i, _)| batch[*i].mls.map(|m| epoch_i64(m.epoch)))
                .collect::<Vec<_>>(),
        )
        .bind(
            plan.events
                .iter()
                .map(|(i, _)| membership_to_json(&batch[*i].membership))
                .collect::<Vec<_>>(),
        )
        .bind(
            plan.events
                .iter()
                .map(|(i, _)| blobs_to_json(&batch[*i].blobs))
                .collect::<Vec<_>>(),
        )
        .bind(
            plan.inbox
                .iter()
                .map(|r| r.device_id.to_string())
                .collect::<Vec<_>>(),
        )
        .bind(
            plan.inbox
                .iter()
                .map(|r| r.chat_id.to_string())
                .collect::<Vec<_>>(),
        )
        .bind(plan.inbox.iter().map(|r| r.seq).collect::<Vec<_>>())
        .bind(
            plan.inbox
                .iter()
                .map(|r| r.sender.to_string())
                .collect::<Vec<_>>(),
        )
        .bind(now)
        .bind(
            outbox
                .iter()
                .map(|r| r.destination.clone())
                .collect::<Vec<_>>(),
        )
        .bind(outbox.iter().map(|r| r.kind.to_i16()).collect::<Vec<_>>())
        .bind(outbox.iter().map(|r| r.body.clone()).collect::<Vec<_>>())
        .fetch_all(&mut *tx)
        .await?;
        let stored = rows.first().map_or(0, |r| r.get::<i64, _>("events"));
        if usize::try_from(stored).ok() != Some(plan.events.len()) {
            // A send of the batch was stored before: roll back (dropping `tx`).
            return Ok(None);
        }
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
        super::disappearing::stamp_pg(&mut tx, &stamps).await?;
        super::group_info::keep_pg(&mut tx, &plan, batch, now).await?;
        tx.commit().await?;
        let ids = rows
            .into_iter()
            .filter(|r| r.get::<Option<i64>, _>("id").is_some())
            .map(|r| {
                Ok((
                    r.get::<i64, _>("id"),
                    id(r.get("device_id"))?,
                    id(r.get("chat_id"))?,
                    r.get::<i64, _>("seq"),
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Some(plan.finish(batch, ids)))
    }
}

impl Store for PgStore {
    fn backend(&self) -> &'static str {
        "postgres"
    }

    async fn create_user(&self, user: &NewUser) -> Result<()> {
        let res = sqlx::query(
            "INSERT INTO users (user_id, localpart, password_hash, created_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(user.user_id.as_str())
        .bind(&user.localpart)
        .bind(&user.password_hash)
        .bind(user.created_at)
        .execute(&self.pool)
        .await;
        match res {
            Ok(_) => Ok(()),
            Err(e) if is_unique_violation(&e) => Err(StoreError::Conflict("user")),
            Err(e) => Err(e.into()),
        }
    }

    async fn user_password(&self, localpart: &str) -> Result<Option<(UserId, String)>> {
        let row = sqlx::query(
            "SELECT user_id, password_hash FROM users WHERE localpart = $1 AND deactivated_at IS NULL",
        )
            .bind(localpart)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| Ok((id(r.get("user_id"))?, r.get("password_hash"))))
            .transpose()
    }

    async fn user_exists(&self, user_id: &UserId) -> Result<bool> {
        let row = sqlx::query("SELECT 1 FROM users WHERE user_id = $1")
            .bind(user_id.as_str())
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.is_some())
    }

    async fn create_device(&self, device: &NewDevice) -> Result<()> {
        let res = sqlx::query(
            "INSERT INTO devices (device_id, user_id, display_name, token_hash, created_at)
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(device.device_id.as_str())
        .bind(device.user_id.as_str())
        .bind(&device.display_name)
        .bind(&device.token_hash[..])
        .bind(device.created_at)
        .execute(&self.pool)
        .await;
        match res {
            Ok(_) => Ok(()),
            Err(e) if is_unique_violation(&e) => Err(StoreError::Conflict("device")),
            Err(e) => Err(e.into()),
        }
    }

    async fn device_by_token(&self, token_hash: &[u8; 32]) -> Result<Option<(UserId, DeviceId)>> {
        let row = sqlx::query("SELECT user_id, device_id FROM devices WHERE token_hash = $1")
            .bind(&token_hash[..])
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| Ok((id(r.get("user_id"))?, id(r.get("device_id"))?)))
            .transpose()
    }

    async fn list_devices(&self, user_id: &UserId) -> Result<Vec<DeviceRow>> {
        let rows = sqlx::query(
            "SELECT device_id, display_name, created_at FROM devices WHERE user_id = $1
             ORDER BY created_at, device_id",
        )
        .bind(user_id.as_str())
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
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
        let mut tx = self.pool.begin().await?;
        let gone = sqlx::query("DELETE FROM devices WHERE device_id = $1 AND user_id = $2")
            .bind(device_id.as_str())
            .bind(user_id.as_str())
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if gone == 1 {
            sqlx::query("DELETE FROM inbox WHERE device_id = $1")
                .bind(device_id.as_str())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(gone == 1)
    }

    async fn create_chat(&self, chat: &NewChat) -> Result<(ChatId, bool)> {
        let mut tx = self.pool.begin().await?;
        let inserted = sqlx::query(
            "INSERT INTO chats (chat_id, kind, direct_key, created_by, created_at, last_ts, name)
             VALUES ($1, $2, $3, $4, $5, $5, $6) ON CONFLICT (direct_key) DO NOTHING",
        )
        .bind(chat.chat_id.as_str())
        .bind(kind_to_i16(chat.kind))
        .bind(&chat.direct_key)
        .bind(chat.created_by.as_str())
        .bind(chat.created_at)
        .bind(&chat.name)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if inserted == 0 {
            let existing: String =
                sqlx::query_scalar("SELECT chat_id FROM chats WHERE direct_key = $1")
                    .bind(&chat.direct_key)
                    .fetch_one(&mut *tx)
                    .await?;
            // Someone who left a direct chat and starts it again rejoins it.
            sqlx::query(
                "UPDATE chat_members SET left_at = NULL WHERE chat_id = $1 AND user_id = ANY($2)",
            )
            .bind(&existing)
            .bind(strs(&chat.members))
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            return Ok((id(existing)?, false));
        }
        sqlx::query(
            "INSERT INTO chat_members (chat_id, user_id, joined_at, admin)
             SELECT $1, u, $3, u = $4 FROM UNNEST($2::text[]) AS u",
        )
        .bind(chat.chat_id.as_str())
        .bind(strs(&chat.members))
        .bind(chat.created_at)
        .bind(chat.created_by.as_str())
        .execute(&mut *tx)
        .await?;
        super::fed_pg::insert_outbox(&mut tx, &snapshot_rows(chat), chat.created_at).await?;
        tx.commit().await?;
        Ok((chat.chat_id.clone(), true))
    }

    async fn chat_members(&self, chat_id: &ChatId) -> Result<Option<Vec<UserId>>> {
        let rows = sqlx::query(
            "SELECT m.user_id FROM chats c
             LEFT JOIN chat_members m ON m.chat_id = c.chat_id AND m.left_at IS NULL
             WHERE c.chat_id = $1 ORDER BY m.user_id",
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
                    (SELECT array_agg(o.user_id ORDER BY o.user_id) FROM chat_members o
                      WHERE o.chat_id = c.chat_id AND o.left_at IS NULL) AS members,
                    (SELECT count(*) FROM events e
                      WHERE e.chat_id = c.chat_id AND e.seq > m.read_seq AND e.sender <> m.user_id) AS unread
             FROM chat_members m JOIN chats c ON c.chat_id = m.chat_id
             WHERE m.user_id = $1 AND m.left_at IS NULL
             ORDER BY c.last_ts DESC, c.chat_id",
        )
        .bind(user_id.as_str())
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|r| {
                let members: Vec<String> = r
                    .get::<Option<Vec<String>>, _>("members")
                    .unwrap_or_default();
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
            "UPDATE chat_members SET left_at = $3 WHERE chat_id = $1 AND user_id = $2 AND left_at IS NULL",
        )
        .bind(chat_id.as_str())
        .bind(user_id.as_str())
        .bind(at)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    async fn commit_sends(
        &self,
        batch: &[SendRequest],
        max_members: usize,
    ) -> Result<Vec<SendOutcome>> {
        // Resends are rare: first commit without looking for them (the events insert's
        // ON CONFLICT notices one, and the transaction is rolled back); only then look
        // every send up and plan again.
        if let Some(outcomes) = self.commit_sends_once(batch, max_members, false).await? {
            return Ok(outcomes);
        }
        self.commit_sends_once(batch, max_members, true)
            .await?
            .ok_or_else(|| StoreError::Corrupt("a send conflicted under its chat's lock".into()))
    }

    async fn history(&self, chat_id: &ChatId, after: i64, limit: u32) -> Result<Vec<ChatEvent>> {
        let rows = sqlx::query(
            "SELECT chat_id, seq, sender, sender_device, client_msg_id, ts, payload, mls_kind,
                    mls_epoch, membership, blobs, expires_at, read_receipts FROM events
             WHERE chat_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
        )
        .bind(chat_id.as_str())
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(event_from_row).collect()
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
             WHERE i.device_id = $1 AND i.id > $2 ORDER BY i.id LIMIT $3",
        )
        .bind(device_id.as_str())
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        let mut items = Vec::with_capacity(rows.len());
        for r in rows {
            let item_id: i64 = r.get("id");
            let kind: i16 = r.get("kind");
            let chat_id: ChatId = id(r.get("chat_id"))?;
            if kind == INBOX_SEND_RESULT {
                let body: Option<String> = r.get("body");
                match body.and_then(|b| crate::store::send_result_item(item_id, &b)) {
                    Some(item) => items.push(item),
                    None => tracing::warn!(item_id, "unreadable send result in the inbox"),
                }
                continue;
            }
            if kind == INBOX_RECEIPT {
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
            // An event purged by retention leaves nothing to deliver.
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
        // A few devices per statement: `device_id = ANY($1) AND id = ANY($2)` probes the
        // primary key once per (device, id) combination whatever the planner knows about
        // the table, so a statement takes devices while the combinations stay within
        // ACK_PROBES; the exact pairs filter what the probes find.
        let mut by_device: BTreeMap<&DeviceId, (&UserId, BTreeSet<i64>)> = BTreeMap::new();
        for ack in batch {
            by_device
                .entry(&ack.device_id)
                .or_insert_with(|| (&ack.user_id, BTreeSet::new()))
                .1
                .extend(ack.ids.iter().copied());
        }
        let owners: HashMap<&str, &UserId> = by_device
            .iter()
            .map(|(d, (u, _))| (d.as_str(), *u))
            .collect();
        let mut tx = self.pool.begin().await?;
        let mut rows = Vec::new();
        for chunk in ack_chunks(by_device.iter().map(|(d, (_, ids))| (*d, ids))) {
            let devices: Vec<&str> = chunk.iter().map(|(d, _)| d.as_str()).collect();
            let pairs: Vec<(&str, i64)> = chunk
                .iter()
                .flat_map(|(d, ids)| ids.iter().map(move |n| (d.as_str(), *n)))
                .collect();
            let deleted = sqlx::query(
                "DELETE FROM inbox
                 WHERE device_id = ANY($1) AND id = ANY($2)
                   AND (device_id, id) IN (SELECT * FROM UNNEST($3::text[], $2::bigint[]))
                 RETURNING device_id, chat_id, kind, seq, sender",
            )
            .bind(&devices)
            .bind(pairs.iter().map(|p| p.1).collect::<Vec<_>>())
            .bind(pairs.iter().map(|p| p.0).collect::<Vec<_>>())
            .fetch_all(&mut *tx)
            .await?;
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
        }
        let plan = plan::plan_acks(&rows);
        if plan.delivered.is_empty() {
            tx.commit().await?;
            return Ok(Vec::new());
        }
        let changed = sqlx::query(
            "UPDATE chat_members m SET delivered_seq = v.s
             FROM UNNEST($1::text[], $2::text[], $3::bigint[]) AS v(c, u, s)
             WHERE m.chat_id = ANY($1) AND m.chat_id = v.c AND m.user_id = v.u
               AND m.delivered_seq < v.s
             RETURNING m.chat_id, m.user_id, m.delivered_seq, m.read_seq",
        )
        .bind(
            plan.delivered
                .keys()
                .map(|k| k.0.to_string())
                .collect::<Vec<_>>(),
        )
        .bind(
            plan.delivered
                .keys()
                .map(|k| k.1.to_string())
                .collect::<Vec<_>>(),
        )
        .bind(plan.delivered.values().copied().collect::<Vec<_>>())
        .fetch_all(&mut *tx)
        .await?;
        let changed = receipts_from_rows(changed)?;
        if fanout && !changed.is_empty() {
            sqlx::query(
                "INSERT INTO receipt_fanout (chat_id, user_id)
                 SELECT * FROM UNNEST($1::text[], $2::text[])",
            )
            .bind(
                changed
                    .iter()
                    .map(|(c, _)| c.to_string())
                    .collect::<Vec<_>>(),
            )
            .bind(
                changed
                    .iter()
                    .map(|(_, r)| r.user_id.to_string())
                    .collect::<Vec<_>>(),
            )
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
        let mut tx = self.pool.begin().await?;
        let old = sqlx::query(
            "SELECT m.read_seq, c.last_seq FROM chat_members m JOIN chats c ON c.chat_id = m.chat_id
             WHERE m.chat_id = $1 AND m.user_id = $2 AND m.left_at IS NULL FOR UPDATE OF m",
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
            "UPDATE chat_members SET read_seq = $3, delivered_seq = GREATEST(delivered_seq, $3)
             WHERE chat_id = $1 AND user_id = $2 RETURNING chat_id, user_id, delivered_seq, read_seq",
        )
        .bind(chat_id.as_str())
        .bind(user_id.as_str())
        .bind(new_read)
        .fetch_all(&mut *tx)
        .await?;
        let changed = receipts_from_rows(row)?;
        let senders: Vec<String> = sqlx::query_scalar(
            "SELECT DISTINCT sender FROM events WHERE chat_id = $1 AND seq > $2 AND seq <= $3 AND sender <> $4",
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
        let last: Option<i64> = sqlx::query_scalar("SELECT last_seq FROM chats WHERE chat_id = $1")
            .bind(chat_id.as_str())
            .fetch_optional(&self.pool)
            .await?;
        let Some(last) = last else {
            return Ok(None);
        };
        let rows = sqlx::query(
            "SELECT chat_id, user_id, delivered_seq, read_seq FROM chat_members
             WHERE chat_id = $1 AND left_at IS NULL ORDER BY user_id",
        )
        .bind(chat_id.as_str())
        .fetch_all(&self.pool)
        .await?;
        let receipts = receipts_from_rows(rows)?
            .into_iter()
            .map(|(_, r)| r)
            .collect();
        Ok(Some((last, receipts)))
    }

    async fn purge_expired(&self, before: i64) -> Result<Purged> {
        let inbox_rows = sqlx::query("DELETE FROM inbox WHERE created_at < $1")
            .bind(before)
            .execute(&self.pool)
            .await?
            .rows_affected();
        sqlx::query("DELETE FROM blob_refs WHERE ts < $1")
            .bind(before)
            .execute(&self.pool)
            .await?;
        let events = sqlx::query("DELETE FROM events WHERE ts < $1")
            .bind(before)
            .execute(&self.pool)
            .await?
            .rows_affected();
        Ok(Purged { inbox_rows, events })
    }

    async fn purge_disappeared(
        &self,
        now: i64,
        limit: i64,
    ) -> Result<super::disappearing::Disappeared> {
        super::disappearing::purge_pg(&self.pool, now, limit).await
    }

    async fn chat_info(&self, chat_id: &ChatId) -> Result<Option<ChatInfo>> {
        let Some(chat) = sqlx::query("SELECT kind, name, mls_epoch FROM chats WHERE chat_id = $1")
            .bind(chat_id.as_str())
            .fetch_optional(&self.pool)
            .await?
        else {
            return Ok(None);
        };
        let members = sqlx::query(
            "SELECT user_id, admin FROM chat_members WHERE chat_id = $1 AND left_at IS NULL ORDER BY user_id",
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
        sqlx::query("UPDATE chats SET name = $2 WHERE chat_id = $1")
            .bind(chat_id.as_str())
            .bind(name)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn set_admin(&self, chat_id: &ChatId, user_id: &UserId, admin: bool) -> Result<bool> {
        let n = sqlx::query(
            "UPDATE chat_members SET admin = $3 WHERE chat_id = $1 AND user_id = $2 AND left_at IS NULL",
        )
        .bind(chat_id.as_str())
        .bind(user_id.as_str())
        .bind(admin)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    async fn deactivate_user(&self, user_id: &UserId, at: i64) -> Result<Option<Vec<DeviceId>>> {
        let mut tx = self.pool.begin().await?;
        let n = sqlx::query(
            "UPDATE users SET deactivated_at = $2 WHERE user_id = $1 AND deactivated_at IS NULL",
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
            sqlx::query_scalar("DELETE FROM devices WHERE user_id = $1 RETURNING device_id")
                .bind(user_id.as_str())
                .fetch_all(&mut *tx)
                .await?;
        for device in &devices {
            sqlx::query("DELETE FROM inbox WHERE device_id = $1")
                .bind(device)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(Some(devices.into_iter().map(id).collect::<Result<_>>()?))
    }

    async fn set_password(&self, user_id: &UserId, password_hash: &str) -> Result<bool> {
        let n = sqlx::query(
            "UPDATE users SET password_hash = $2 WHERE user_id = $1 AND deactivated_at IS NULL",
        )
        .bind(user_id.as_str())
        .bind(password_hash)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    async fn blob(&self, hash: &BlobHash) -> Result<Option<BlobRow>> {
        let row = sqlx::query("SELECT size, uploader, created_at FROM blobs WHERE hash = $1")
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
        let mut tx = self.pool.begin().await?;
        // Serialize one user's uploads on their row, so the quota check holds.
        sqlx::query("SELECT user_id FROM users WHERE user_id = $1 FOR UPDATE")
            .bind(user.as_str())
            .fetch_optional(&mut *tx)
            .await?;
        if let Some(size) = sqlx::query_scalar::<_, i64>("SELECT size FROM blobs WHERE hash = $1")
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
            "SELECT total FROM uploads WHERE hash = $1 AND user_id = $2",
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
            "SELECT ((SELECT COALESCE(SUM(size), 0) FROM blobs WHERE uploader = $1)
                  + (SELECT COALESCE(SUM(total), 0) FROM uploads WHERE user_id = $1))::BIGINT",
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
            "INSERT INTO uploads (hash, user_id, total, created_at) VALUES ($1, $2, $3, $4)",
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
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO blobs (hash, size, uploader, created_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (hash) DO NOTHING",
        )
        .bind(hash.as_str())
        .bind(size_i64(size))
        .bind(user.as_str())
        .bind(now)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM uploads WHERE hash = $1 AND user_id = $2")
            .bind(hash.as_str())
            .bind(user.as_str())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn cancel_upload(&self, hash: &BlobHash, user: &UserId) -> Result<()> {
        sqlx::query("DELETE FROM uploads WHERE hash = $1 AND user_id = $2")
            .bind(hash.as_str())
            .bind(user.as_str())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn can_download(&self, hash: &BlobHash, user: &UserId) -> Result<bool> {
        let row = sqlx::query(
            "SELECT 1 FROM blobs b WHERE b.hash = $1 AND (b.uploader = $2 OR EXISTS (
                SELECT 1 FROM blob_refs r JOIN chat_members m
                  ON m.chat_id = r.chat_id AND m.user_id = $2 AND m.left_at IS NULL
                WHERE r.hash = $1))",
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
                 ON m.chat_id = r.chat_id AND m.user_id = $2 AND m.left_at IS NULL
               JOIN events e ON e.chat_id = r.chat_id AND e.seq = r.seq
              WHERE r.hash = $1
              LIMIT $3",
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
             WHERE r.hash = $1 AND right(m.user_id, char_length($2) + 1) = ':' || $2
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
            "INSERT INTO blobs (hash, size, uploader, created_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (hash) DO NOTHING",
        )
        .bind(hash.as_str())
        .bind(size_i64(size))
        .bind(origin)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn unreferenced_blobs(&self, before: i64) -> Result<Vec<BlobHash>> {
        let rows: Vec<String> = sqlx::query_scalar(
            "SELECT hash FROM blobs b WHERE created_at < $1
               AND NOT EXISTS (SELECT 1 FROM blob_refs r WHERE r.hash = b.hash)
               AND NOT EXISTS (SELECT 1 FROM backups k WHERE k.blob = b.hash)",
        )
        .bind(before)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(id).collect()
    }

    async fn delete_blob(&self, hash: &BlobHash) -> Result<()> {
        sqlx::query("DELETE FROM blobs WHERE hash = $1")
            .bind(hash.as_str())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn take_stale_uploads(&self, before: i64) -> Result<Vec<(BlobHash, UserId)>> {
        let rows = sqlx::query("DELETE FROM uploads WHERE created_at < $1 RETURNING hash, user_id")
            .bind(before)
            .fetch_all(&self.pool)
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
        let mut tx = self.pool.begin().await?;
        // Serialize uploads of one device on its row.
        sqlx::query("SELECT device_id FROM devices WHERE device_id = $1 FOR UPDATE")
            .bind(device_id.as_str())
            .fetch_optional(&mut *tx)
            .await?;
        let held: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM key_packages WHERE device_id = $1 AND NOT last_resort",
        )
        .bind(device_id.as_str())
        .fetch_one(&mut *tx)
        .await?;
        if held + one_time.len() as i64 > i64::from(max_stored) {
            return Err(StoreError::Conflict("key_packages"));
        }
        for data in one_time {
            sqlx::query(
                "INSERT INTO key_packages (device_id, last_resort, data) VALUES ($1, FALSE, $2)",
            )
            .bind(device_id.as_str())
            .bind(data)
            .execute(&mut *tx)
            .await?;
        }
        if let Some(data) = last_resort {
            sqlx::query("DELETE FROM key_packages WHERE device_id = $1 AND last_resort")
                .bind(device_id.as_str())
                .execute(&mut *tx)
                .await?;
            sqlx::query(
                "INSERT INTO key_packages (device_id, last_resort, data) VALUES ($1, TRUE, $2)",
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
        let mut tx = self.pool.begin().await?;
        let devices: Vec<String> = sqlx::query_scalar(
            "SELECT device_id FROM devices WHERE user_id = $1 ORDER BY device_id",
        )
        .bind(user_id.as_str())
        .fetch_all(&mut *tx)
        .await?;
        let mut out = Vec::with_capacity(devices.len());
        for device in devices {
            let one_time: Option<Vec<u8>> = sqlx::query_scalar(
                "DELETE FROM key_packages WHERE id = (SELECT id FROM key_packages WHERE device_id = $1 AND NOT last_resort ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED) RETURNING data",
            )
            .bind(&device)
            .fetch_optional(&mut *tx)
            .await?;
            let (data, last_resort) = match one_time {
                Some(d) => (Some(d), false),
                None => (
                    sqlx::query_scalar(
                        "SELECT data FROM key_packages WHERE device_id = $1 AND last_resort",
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
        let mut tx = self.pool.begin().await?;
        let inserted = sqlx::query(
            "INSERT INTO federation_settings (id, mode) VALUES (1, $1) ON CONFLICT (id) DO NOTHING",
        )
        .bind(super::mode_to_str(seed.mode))
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if inserted == 1 {
            for rule in &seed.rules {
                sqlx::query(
                    "INSERT INTO federation_rules (pattern, action, reason, created_at) \
                     VALUES ($1, $2, $3, $4) ON CONFLICT (pattern) DO NOTHING",
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
            "INSERT INTO federation_settings (id, mode) VALUES (1, $1) \
             ON CONFLICT (id) DO UPDATE SET mode = excluded.mode",
        )
        .bind(super::mode_to_str(mode))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn put_federation_rule(&self, rule: &Rule, at: i64) -> Result<()> {
        sqlx::query(
            "INSERT INTO federation_rules (pattern, action, reason, created_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (pattern) DO UPDATE SET action = excluded.action, reason = excluded.reason",
        )
        .bind(rule.pattern.as_str())
        .bind(super::action_to_str(rule.action))
        .bind(rule.reason.as_deref())
        .bind(at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn delete_federation_rule(&self, pattern: &str) -> Result<bool> {
        Ok(
            sqlx::query("DELETE FROM federation_rules WHERE pattern = $1")
                .bind(pattern)
                .execute(&self.pool)
                .await?
                .rows_affected()
                > 0,
        )
    }
}

async fn key_package_count(
    conn: &mut sqlx::PgConnection,
    device_id: &DeviceId,
) -> Result<KeyPackageCount> {
    let row = sqlx::query(
        "SELECT count(*) FILTER (WHERE NOT last_resort) AS one_time,
                count(*) FILTER (WHERE last_resort) AS last_resort
         FROM key_packages WHERE device_id = $1",
    )
    .bind(device_id.as_str())
    .fetch_one(&mut *conn)
    .await?;
    Ok(KeyPackageCount {
        one_time: u32::try_from(row.get::<i64, _>("one_time")).unwrap_or(u32::MAX),
        has_last_resort: row.get::<i64, _>("last_resort") > 0,
    })
}

/// At most this many (device, id) combinations per ack delete (see `commit_acks`).
const ACK_PROBES: usize = 1024;

/// Splits devices with their acked ids into runs whose devices × ids stay within
/// [`ACK_PROBES`] (a device with more ids than that is a run of its own).
fn ack_chunks<'a>(
    devices: impl Iterator<Item = (&'a DeviceId, &'a BTreeSet<i64>)>,
) -> Vec<Vec<(&'a DeviceId, &'a BTreeSet<i64>)>> {
    let mut chunks: Vec<Vec<(&DeviceId, &BTreeSet<i64>)>> = Vec::new();
    let mut ids = 0;
    for (device, these) in devices {
        match chunks.last_mut() {
            Some(chunk) if (chunk.len() + 1) * (ids + these.len()) <= ACK_PROBES => {
                chunk.push((device, these));
                ids += these.len();
            }
            _ => {
                chunks.push(vec![(device, these)]);
                ids = these.len();
            }
        }
    }
    chunks
}

pub(super) fn receipts_from_rows(
    rows: Vec<sqlx::postgres::PgRow>,
) -> Result<Vec<(ChatId, Receipt)>> {
    rows.into_iter()
        .map(|r| {
            Ok((
                id(r.get("chat_id"))?,
                Receipt {
                    user_id: id(r.get("user_id"))?,
                    delivered_seq: r.get("delivered_seq"),
                    read_seq: r.get("read_seq"),
                },
            ))
        })
        .collect()
}

pub(super) fn event_from_row(r: sqlx::postgres::PgRow) -> Result<ChatEvent> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ack_deletes_stay_within_their_probe_budget() {
        let devices: Vec<DeviceId> = (0..40)
            .map(|i| DeviceId::try_from(format!("D{i:02}").as_str()).unwrap())
            .collect();
        // Device i acked i + 1 ids; device 39 alone has more than the budget.
        let mut ids: Vec<BTreeSet<i64>> = (0..40).map(|i| (0..=i).collect()).collect();
        ids[39] = (0..ACK_PROBES as i64 + 5).collect();
        let chunks = ack_chunks(devices.iter().zip(&ids));
        let mut seen = Vec::new();
        for chunk in &chunks {
            let probes = chunk.len() * chunk.iter().map(|(_, i)| i.len()).sum::<usize>();
            assert!(probes <= ACK_PROBES || chunk.len() == 1, "{probes}");
            seen.extend(chunk.iter().map(|(d, _)| (*d).clone()));
        }
        // Every device once, in order; small acks share statements.
        assert_eq!(seen, devices);
        assert!(chunks.len() < 20, "{} statements", chunks.len());
        assert_eq!(chunks.last().map(Vec::len), Some(1));
    }
}
