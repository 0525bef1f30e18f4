//! [`FedStore`] on SQLite (lists bound as JSON arrays, read with `json_each`).

use std::collections::{BTreeMap, BTreeSet};

use parley_client_api::http::chats::{ChatEvent, Receipt};
use parley_client_api::{ChatId, DeviceId, UserId};
use sqlx::{Row, Sqlite, Transaction};

use super::ReceiptNotice;
use super::fed::{
    Applied, ChatSnapshotRow, DestinationRow, FedStore, NewOutboxRow, OpRun, OutboxKind, OutboxRow,
    OutboxTuple, Received, RunContext, SendResultRow, direct_key, op_runs, run_heads, run_inbox,
};
use super::sqlite::{
    ROWS_PER_STATEMENT, SqliteStore, devices_of, event_from_row, insert_event_items, json_list,
    json_rows, receipt_from_row, upsert_receipts,
};
use super::{
    INBOX_SEND_RESULT, Result, blobs_to_json, epoch_i64, id, kind_from_i16, kind_to_i16,
    membership_to_json, mls_kind_to_i16,
};

/// Writes outbox rows inside a caller's transaction.
pub(super) async fn insert_outbox(
    tx: &mut Transaction<'_, Sqlite>,
    rows: &[NewOutboxRow],
    at: i64,
) -> Result<Vec<i64>> {
    let mut ids = Vec::with_capacity(rows.len());
    for chunk in rows.chunks(ROWS_PER_STATEMENT) {
        let mut q = sqlx::QueryBuilder::<Sqlite>::new(
            "INSERT INTO federation_outbox (destination, kind, body, created_at) ",
        );
        q.push_values(chunk, |mut b, row| {
            b.push_bind(&row.destination)
                .push_bind(row.kind.to_i16())
                .push_bind(&row.body)
                .push_bind(at);
        });
        q.push(" RETURNING id");
        let mut new: Vec<i64> = q.build_query_scalar().fetch_all(&mut **tx).await?;
        // One statement on the one writer: the ids rise in the order of the rows (and
        // RETURNING lists them in no set order).
        new.sort_unstable();
        ids.extend(new);
    }
    Ok(ids)
}

/// Local devices per user.
async fn local_devices(
    tx: &mut Transaction<'_, Sqlite>,
    users: &BTreeSet<String>,
) -> Result<BTreeMap<String, Vec<DeviceId>>> {
    let mut out: BTreeMap<String, Vec<DeviceId>> = BTreeMap::new();
    if users.is_empty() {
        return Ok(out);
    }
    let rows = sqlx::query(
        "SELECT user_id, device_id FROM devices WHERE user_id IN (SELECT value FROM json_each(?1))
         ORDER BY device_id",
    )
    .bind(json_list(users))
    .fetch_all(&mut **tx)
    .await?;
    for r in rows {
        out.entry(r.get("user_id"))
            .or_default()
            .push(id(r.get("device_id"))?);
    }
    Ok(out)
}

async fn apply_snapshot(
    tx: &mut Transaction<'_, Sqlite>,
    s: &ChatSnapshotRow,
    at: i64,
) -> Result<()> {
    let key = direct_key(&s.members);
    let taken: Option<String> = match &key {
        Some(k) => {
            sqlx::query_scalar("SELECT chat_id FROM chats WHERE direct_key = ?1")
                .bind(k)
                .fetch_optional(&mut **tx)
                .await?
        }
        None => None,
    };
    let key = key.filter(|_| taken.as_deref().is_none_or(|c| c == s.chat_id.as_str()));
    sqlx::query(
        "INSERT INTO chats (chat_id, kind, direct_key, created_by, created_at, last_ts, name, mls_epoch,
                            read_receipts)
         VALUES (?1, ?2, ?3, ?4, ?5, ?5, ?6, ?7, ?8)
         ON CONFLICT (chat_id) DO UPDATE
            SET name = excluded.name, mls_epoch = MAX(chats.mls_epoch, excluded.mls_epoch),
                read_receipts = excluded.read_receipts",
    )
    .bind(s.chat_id.as_str())
    .bind(kind_to_i16(s.kind))
    .bind(key)
    .bind(s.created_by.as_str())
    .bind(s.created_at)
    .bind(&s.name)
    .bind(epoch_i64(s.mls_epoch))
    .bind(s.read_receipts)
    .execute(&mut **tx)
    .await?;
    let members = json_list(s.members.iter().map(|(u, _)| u.as_str()));
    sqlx::query(
        "UPDATE chat_members SET left_at = ?3, admin = 0
         WHERE chat_id = ?1 AND left_at IS NULL
           AND user_id NOT IN (SELECT value FROM json_each(?2))",
    )
    .bind(s.chat_id.as_str())
    .bind(&members)
    .bind(at)
    .execute(&mut **tx)
    .await?;
    for (user, admin) in &s.members {
        sqlx::query(
            "INSERT INTO chat_members (chat_id, user_id, joined_at, admin) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (chat_id, user_id) DO UPDATE
                SET admin = excluded.admin, left_at = NULL,
                    joined_at = CASE WHEN chat_members.left_at IS NULL
                                     THEN chat_members.joined_at ELSE excluded.joined_at END",
        )
        .bind(s.chat_id.as_str())
        .bind(user.as_str())
        .bind(at)
        .bind(*admin)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

/// Stores a run of hub events (each once), applies a membership event's change, moves
/// the chats' heads and writes inbox rows for the local devices that must see the new
/// events. Members, blocks and devices are read once per run.
async fn apply_run(
    tx: &mut Transaction<'_, Sqlite>,
    run: &[(usize, &ChatEvent)],
    at: i64,
) -> Result<Vec<(DeviceId, i64, usize)>> {
    if run.is_empty() {
        return Ok(Vec::new());
    }
    // One statement per chunk of the run (each statement is a round trip to SQLite's
    // worker thread): rows of chats we know, RETURNING the ones that were new.
    let mut inserted: BTreeSet<(String, i64)> = BTreeSet::new();
    for chunk in run.chunks(ROWS_PER_STATEMENT) {
        let mut q = sqlx::QueryBuilder::<Sqlite>::new(
            "INSERT INTO events (chat_id, seq, sender, sender_device, client_msg_id, ts, payload,
                             mls_kind, mls_epoch, membership, blobs)
         SELECT * FROM (",
        );
        q.push_values(chunk.iter(), |mut b, (_, e)| {
            b.push_bind(e.chat_id.as_str())
                .push_bind(e.seq)
                .push_bind(e.sender.as_str())
                .push_bind(e.sender_device.as_str())
                .push_bind(&e.client_msg_id)
                .push_bind(e.ts)
                .push_bind(&e.payload.0)
                .push_bind(e.mls.map(|m| mls_kind_to_i16(m.kind)))
                .push_bind(e.mls.map(|m| epoch_i64(m.epoch)))
                .push_bind(membership_to_json(&e.membership))
                .push_bind(blobs_to_json(&e.blobs));
        });
        q.push(
            ") AS v WHERE EXISTS (SELECT 1 FROM chats WHERE chat_id = v.column1)
         ON CONFLICT DO NOTHING RETURNING chat_id, seq",
        );
        inserted.extend(
            q.build_query_as::<(String, i64)>()
                .fetch_all(&mut **tx)
                .await?,
        );
    }
    let new: Vec<(usize, &ChatEvent)> = run
        .iter()
        .filter(|(_, e)| inserted.contains(&(e.chat_id.as_str().to_owned(), e.seq)))
        .copied()
        .collect();
    // The events' media references, as on the hub: who may download a blob here, and
    // which server it is fetched from (the sender's).
    for (_, e) in &new {
        for blob in &e.blobs {
            sqlx::query(
                "INSERT INTO blob_refs (chat_id, seq, hash, ts) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT DO NOTHING",
            )
            .bind(e.chat_id.as_str())
            .bind(e.seq)
            .bind(blob.as_str())
            .bind(e.ts)
            .execute(&mut **tx)
            .await?;
        }
    }
    if new.is_empty() {
        return Ok(Vec::new());
    }
    let stamps: Vec<_> = new
        .iter()
        .map(|(_, e)| super::disappearing::Stamp {
            chat_id: &e.chat_id,
            seq: e.seq,
            ts: e.ts,
            expires_in: e.expires_in,
            read_receipts: e.read_receipts,
        })
        .collect();
    super::disappearing::stamp_sqlite(tx, &stamps).await?;
    let heads = run_heads(&new);
    let chats = json_list(heads.iter().map(|(c, ..)| c.as_str()));
    let mut ctx = RunContext::default();
    let members = sqlx::query(
        "SELECT chat_id, user_id FROM chat_members
         WHERE chat_id IN (SELECT value FROM json_each(?1)) AND left_at IS NULL",
    )
    .bind(&chats)
    .fetch_all(&mut **tx)
    .await?;
    for r in members {
        ctx.recipients
            .entry(id(r.get("chat_id"))?)
            .or_default()
            .insert(r.get("user_id"));
    }
    // A membership event is a run of its own (`op_runs`): the users it adds or removes
    // see it too.
    if let [(_, e)] = new.as_slice()
        && let Some(change) = &e.membership
    {
        ctx.add_membership_recipients(e);
        for user in &change.add {
            sqlx::query(
                "INSERT INTO chat_members (chat_id, user_id, joined_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (chat_id, user_id) DO UPDATE SET left_at = NULL, admin = 0,
                    joined_at = excluded.joined_at",
            )
            .bind(e.chat_id.as_str())
            .bind(user.as_str())
            .bind(at)
            .execute(&mut **tx)
            .await?;
        }
        for user in &change.remove {
            sqlx::query(
                "UPDATE chat_members SET left_at = ?3, admin = 0
                 WHERE chat_id = ?1 AND user_id = ?2 AND left_at IS NULL",
            )
            .bind(e.chat_id.as_str())
            .bind(user.as_str())
            .bind(at)
            .execute(&mut **tx)
            .await?;
        }
    }
    let heads_json = json_rows(
        heads
            .iter()
            .map(|(c, seq, ts, epoch)| (c.as_str(), seq, ts, epoch)),
    )?;
    sqlx::query(
        "UPDATE chats SET last_seq = MAX(last_seq, h.seq), last_ts = MAX(last_ts, h.ts),
                          mls_epoch = MAX(mls_epoch, h.epoch)
         FROM (SELECT value ->> 0 AS chat_id, value ->> 1 AS seq, value ->> 2 AS ts,
                      value ->> 3 AS epoch FROM json_each(?1)) AS h
         WHERE chats.chat_id = h.chat_id",
    )
    .bind(&heads_json)
    .execute(&mut **tx)
    .await?;
    let senders: BTreeSet<&str> = new.iter().map(|(_, e)| e.sender.as_str()).collect();
    ctx.periods =
        super::blocks::periods_sqlite(tx, &senders.into_iter().collect::<Vec<_>>()).await?;
    if !ctx.periods.is_empty() {
        let kinds = sqlx::query(
            "SELECT chat_id, kind FROM chats WHERE chat_id IN (SELECT value FROM json_each(?1))",
        )
        .bind(&chats)
        .fetch_all(&mut **tx)
        .await?;
        for r in kinds {
            ctx.kinds
                .insert(id(r.get("chat_id"))?, kind_from_i16(r.get("kind"))?);
        }
    }
    ctx.devices = local_devices(tx, &ctx.users()).await?;
    let events: std::collections::HashMap<usize, &ChatEvent> = new.iter().copied().collect();
    let items = run_inbox(&new, &ctx);
    if items.is_empty() {
        return Ok(Vec::new());
    }
    let ids = insert_event_items(
        tx,
        items.iter().map(|(i, device)| {
            let e = events[i];
            (device, &e.chat_id, e.seq, &e.sender)
        }),
        at,
    )
    .await?;
    let out: Vec<(DeviceId, i64, usize)> = items
        .into_iter()
        .zip(ids)
        .map(|((i, device), id)| (device, id, i))
        .collect();
    Ok(out)
}

/// Raises members' receipts as another server reported them (never lowers one) and
/// writes a receipt item for every local device of the chat's other members.
async fn raise_remote_receipts(
    tx: &mut Transaction<'_, Sqlite>,
    receipts: &[(ChatId, Receipt)],
    at: i64,
) -> Result<Vec<ReceiptNotice>> {
    let receipts = super::plan::fold_receipts(receipts);
    if receipts.is_empty() {
        return Ok(Vec::new());
    }
    // One statement for the set (a statement is a round trip to SQLite's worker thread).
    let raised = json_rows(receipts.iter().map(|(chat, r)| {
        (
            chat.as_str(),
            r.user_id.as_str(),
            r.delivered_seq,
            r.read_seq,
        )
    }))?;
    let changed = sqlx::query(
        "UPDATE chat_members
            SET delivered_seq = MAX(delivered_seq, h.d), read_seq = MAX(read_seq, h.r)
           FROM (SELECT value ->> 0 AS c, value ->> 1 AS u, value ->> 2 AS d, value ->> 3 AS r
                   FROM json_each(?1)) AS h
          WHERE chat_id = h.c AND user_id = h.u AND (delivered_seq < h.d OR read_seq < h.r)
          RETURNING chat_id, user_id, delivered_seq, read_seq",
    )
    .bind(&raised)
    .fetch_all(&mut **tx)
    .await?
    .iter()
    .map(receipt_from_row)
    .collect::<Result<Vec<_>>>()?;
    let members: Vec<(String, String)> = sqlx::query_as(
        "SELECT chat_id, user_id FROM chat_members
         WHERE chat_id IN (SELECT value FROM json_each(?1)) AND left_at IS NULL",
    )
    .bind(json_list(changed.iter().map(|(c, _)| c.as_str())))
    .fetch_all(&mut **tx)
    .await?;
    let members: Vec<(ChatId, UserId)> = members
        .into_iter()
        .map(|(c, u)| Ok((id(c)?, id(u)?)))
        .collect::<Result<_>>()?;
    let notify = super::plan::notify_other_members(&changed, &members);
    let users: BTreeSet<UserId> = notify.values().flatten().cloned().collect();
    let devices = devices_of(tx, &users).await?;
    let rows = super::plan::receipt_rows(&changed, &notify, &devices, None);
    let notices = upsert_receipts(tx, rows, at).await?;
    Ok(notices)
}

/// Records the answer to `(origin, txn_id)` (a resend is answered from it).
async fn record_received(
    tx: &mut Transaction<'_, Sqlite>,
    t: &Received<'_>,
    at: i64,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO federation_received (origin, txn_id, response, received_at)
         VALUES (?1, ?2, ?3, ?4) ON CONFLICT (origin, txn_id) DO NOTHING",
    )
    .bind(t.origin)
    .bind(t.txn_id)
    .bind(t.response)
    .bind(at)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

impl FedStore for SqliteStore {
    async fn enqueue_outbox(&self, rows: &[NewOutboxRow], at: i64) -> Result<Vec<i64>> {
        let mut tx = self.write_tx().await?;
        let ids = insert_outbox(&mut tx, rows, at).await?;
        tx.commit().await?;
        Ok(ids)
    }

    async fn outbox_rows(
        &self,
        destination: &str,
        after: i64,
        _held: &[i64],
    ) -> Result<Vec<OutboxRow>> {
        // One writer at a time takes ids inside its write lock: ids are in commit order.
        // A snapshot row's size: its chat's name and members' (an id and the admin flag
        // each), read only for snapshot rows.
        let rows: Vec<OutboxTuple> = sqlx::query_as(
            "SELECT o.id, o.destination, o.kind, o.body,
                    CASE WHEN o.kind = ?3 THEN
                      (SELECT COALESCE(length(c.name), 0) FROM chats c
                       WHERE c.chat_id = json_extract(o.body, '$.chat_id'))
                      + (SELECT COALESCE(sum(length(m.user_id) + 32), 0)
                         FROM chat_members m
                         WHERE m.chat_id = json_extract(o.body, '$.chat_id'))
                    ELSE 0 END
             FROM federation_outbox o
             WHERE o.destination = ?1 AND o.id > ?2 ORDER BY o.id",
        )
        .bind(destination)
        .bind(after)
        .bind(OutboxKind::Snapshot.to_i16())
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(OutboxRow::from_tuple).collect()
    }

    async fn outbox_destinations(&self) -> Result<Vec<String>> {
        Ok(
            sqlx::query_scalar("SELECT DISTINCT destination FROM federation_outbox")
                .fetch_all(&self.pool)
                .await?,
        )
    }

    async fn outbox_depths(&self) -> Result<Vec<(String, i64)>> {
        Ok(sqlx::query_as(
            "SELECT destination, COUNT(*) FROM federation_outbox GROUP BY destination",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    async fn outbox_delete(&self, ids: &[i64]) -> Result<()> {
        delete_ids(self, "federation_outbox", ids).await
    }

    async fn destinations(&self) -> Result<Vec<DestinationRow>> {
        let rows = sqlx::query(
            "SELECT destination, failures, retry_at, parked FROM federation_destinations",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| DestinationRow {
                destination: r.get("destination"),
                failures: u32::try_from(r.get::<i64, _>("failures")).unwrap_or(u32::MAX),
                retry_at: r.get("retry_at"),
                parked: r.get("parked"),
            })
            .collect())
    }

    async fn save_destination(&self, row: &DestinationRow) -> Result<()> {
        let mut tx = self.write_tx().await?;
        sqlx::query(
            "INSERT INTO federation_destinations (destination, failures, retry_at, parked)
             VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (destination) DO UPDATE
                SET failures = excluded.failures, retry_at = excluded.retry_at,
                    parked = excluded.parked",
        )
        .bind(&row.destination)
        .bind(i64::from(row.failures))
        .bind(row.retry_at)
        .bind(row.parked)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn events_by_seq(&self, refs: &[(ChatId, i64)]) -> Result<Vec<ChatEvent>> {
        let refs = json_rows(refs.iter().map(|(c, seq)| (c.as_str(), seq)))?;
        let rows = sqlx::query(
            "SELECT e.chat_id, e.seq, e.sender, e.sender_device, e.client_msg_id, e.ts, e.payload,
                    e.mls_kind, e.mls_epoch, e.membership, e.blobs, e.expires_at, e.read_receipts
             FROM json_each(?1) AS k
             JOIN events e ON e.chat_id = k.value ->> 0 AND e.seq = k.value ->> 1
             ORDER BY k.key",
        )
        .bind(&refs)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(event_from_row).collect()
    }

    async fn chat_snapshot(&self, chat_id: &ChatId) -> Result<Option<(ChatSnapshotRow, i64)>> {
        let mut tx = self.pool.begin().await?;
        let Some(chat) = sqlx::query(
            "SELECT kind, name, mls_epoch, created_by, created_at, last_seq, read_receipts FROM chats
             WHERE chat_id = ?1",
        )
        .bind(chat_id.as_str())
        .fetch_optional(&mut *tx)
        .await?
        else {
            return Ok(None);
        };
        let members = sqlx::query(
            "SELECT user_id, admin FROM chat_members WHERE chat_id = ?1 AND left_at IS NULL
             ORDER BY user_id",
        )
        .bind(chat_id.as_str())
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some((
            ChatSnapshotRow {
                chat_id: chat_id.clone(),
                kind: kind_from_i16(chat.get("kind"))?,
                name: chat.get("name"),
                mls_epoch: u64::try_from(chat.get::<i64, _>("mls_epoch")).unwrap_or_default(),
                created_by: id(chat.get("created_by"))?,
                created_at: chat.get("created_at"),
                read_receipts: chat.get("read_receipts"),
                members: members
                    .iter()
                    .map(|r| Ok((id(r.get("user_id"))?, r.get("admin"))))
                    .collect::<Result<_>>()?,
            },
            chat.get("last_seq"),
        )))
    }

    async fn known_chats(&self, chat_ids: &[ChatId]) -> Result<Vec<ChatId>> {
        let rows: Vec<String> = sqlx::query_scalar(
            "SELECT chat_id FROM chats WHERE chat_id IN (SELECT value FROM json_each(?1))",
        )
        .bind(json_list(chat_ids))
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(id).collect()
    }

    async fn receive_transaction(&self, t: &Received<'_>, at: i64) -> Result<Applied> {
        let mut tx = self.write_tx().await?;
        let mut applied = Applied::default();
        for run in op_runs(t.ops) {
            match run {
                OpRun::Snapshot(s) => apply_snapshot(&mut tx, s, at).await?,
                OpRun::Events(events) => {
                    applied.inbox.extend(apply_run(&mut tx, &events, at).await?)
                }
            }
        }
        applied.notices = raise_remote_receipts(&mut tx, t.receipts, at).await?;
        record_received(&mut tx, t, at).await?;
        tx.commit().await?;
        Ok(applied)
    }

    async fn received_txn(&self, origin: &str, txn_id: &str) -> Result<Option<String>> {
        Ok(sqlx::query_scalar(
            "SELECT response FROM federation_received WHERE origin = ?1 AND txn_id = ?2",
        )
        .bind(origin)
        .bind(txn_id)
        .fetch_optional(&self.pool)
        .await?)
    }

    async fn purge_received(&self, before: i64) -> Result<u64> {
        let mut tx = self.write_tx().await?;
        let n = sqlx::query("DELETE FROM federation_received WHERE received_at < ?1")
            .bind(before)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        Ok(n)
    }
    async fn insert_nonce(
        &self,
        origin: &str,
        nonce: &str,
        window_end: i64,
        now: i64,
    ) -> Result<bool> {
        // A live row makes the upsert a no-op (0 rows): a replay. An ended one is reused.
        let mut tx = self.write_tx().await?;
        let n = sqlx::query(
            "INSERT INTO federation_nonces (origin, nonce, window_end) VALUES (?1, ?2, ?3)
             ON CONFLICT (origin, nonce) DO UPDATE SET window_end = excluded.window_end
             WHERE federation_nonces.window_end < ?4",
        )
        .bind(origin)
        .bind(nonce)
        .bind(window_end)
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(n == 1)
    }

    async fn purge_nonces(&self, now: i64) -> Result<u64> {
        let mut tx = self.write_tx().await?;
        let n = sqlx::query("DELETE FROM federation_nonces WHERE window_end < ?1")
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        Ok(n)
    }

    async fn record_send_results(
        &self,
        rows: &[SendResultRow],
        at: i64,
    ) -> Result<Vec<(usize, i64)>> {
        let mut tx = self.write_tx().await?;
        let mut out = Vec::with_capacity(rows.len());
        for (i, r) in rows.iter().enumerate() {
            let id: Option<i64> = sqlx::query_scalar(
                "INSERT INTO inbox (device_id, chat_id, kind, seq, sender, created_at, body)
                 SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7
                 WHERE EXISTS (SELECT 1 FROM devices WHERE device_id = ?1)
                 RETURNING id",
            )
            .bind(r.device_id.as_str())
            .bind(r.chat_id.as_str())
            .bind(INBOX_SEND_RESULT)
            .bind(r.seq)
            .bind(r.sender.as_str())
            .bind(at)
            .bind(&r.body)
            .fetch_optional(&mut *tx)
            .await?;
            if let Some(id) = id {
                out.push((i, id));
            }
        }
        tx.commit().await?;
        Ok(out)
    }

    async fn receipt_fanout(&self, limit: i64) -> Result<Vec<(i64, ChatId, UserId)>> {
        let rows: Vec<(i64, String, String)> =
            sqlx::query_as("SELECT id, chat_id, user_id FROM receipt_fanout ORDER BY id LIMIT ?1")
                .bind(limit)
                .fetch_all(&self.pool)
                .await?;
        rows.into_iter()
            .map(|(n, c, u)| Ok((n, id(c)?, id(u)?)))
            .collect()
    }

    async fn receipt_fanout_done(&self, ids: &[i64]) -> Result<()> {
        delete_ids(self, "receipt_fanout", ids).await
    }

    async fn member_receipts(&self, pairs: &[(ChatId, UserId)]) -> Result<Vec<(ChatId, Receipt)>> {
        let keys = json_rows(pairs.iter().map(|(c, u)| (c.as_str(), u.as_str())))?;
        let rows = sqlx::query(
            "SELECT m.chat_id, m.user_id, m.delivered_seq, m.read_seq FROM json_each(?1) AS k
             JOIN chat_members m ON m.chat_id = k.value ->> 0 AND m.user_id = k.value ->> 1
             ORDER BY k.key",
        )
        .bind(&keys)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    id::<ChatId>(r.get("chat_id"))?,
                    Receipt {
                        user_id: id(r.get("user_id"))?,
                        delivered_seq: r.get("delivered_seq"),
                        read_seq: r.get("read_seq"),
                    },
                ))
            })
            .collect()
    }

    async fn take_lease(
        &self,
        destination: &str,
        holder: &str,
        now: i64,
        until: i64,
    ) -> Result<bool> {
        let got: Option<String> = sqlx::query_scalar(
            "INSERT INTO federation_leases (destination, holder, expires_at) VALUES (?1, ?2, ?4)
             ON CONFLICT (destination) DO UPDATE
                SET holder = excluded.holder, expires_at = excluded.expires_at
                WHERE federation_leases.holder = excluded.holder
                   OR federation_leases.expires_at < ?3
             RETURNING holder",
        )
        .bind(destination)
        .bind(holder)
        .bind(now)
        .bind(until)
        .fetch_optional(&self.writer)
        .await?;
        Ok(got.as_deref() == Some(holder))
    }

    async fn chat_followers(&self, chat_ids: &[ChatId]) -> Result<Vec<(ChatId, Vec<String>)>> {
        let rows = sqlx::query(
            "SELECT chat_id, user_id FROM chat_members
             WHERE chat_id IN (SELECT value FROM json_each(?1)) AND left_at IS NULL",
        )
        .bind(json_list(chat_ids))
        .fetch_all(&self.pool)
        .await?;
        let mut out: BTreeMap<ChatId, BTreeSet<String>> = BTreeMap::new();
        for r in rows {
            let chat: ChatId = id(r.get("chat_id"))?;
            let user: UserId = id(r.get("user_id"))?;
            let servers = out.entry(chat.clone()).or_default();
            if user.server_name() != chat.hub() {
                servers.insert(user.server_name().to_owned());
            }
        }
        Ok(out
            .into_iter()
            .map(|(c, s)| (c, s.into_iter().collect()))
            .collect())
    }
}

/// Deletes the rows of `table` (a fixed name, never input) with these ids.
async fn delete_ids(store: &SqliteStore, table: &'static str, ids: &[i64]) -> Result<()> {
    let mut tx = store.write_tx().await?;
    sqlx::query(&format!(
        "DELETE FROM {table} WHERE id IN (SELECT value FROM json_each(?1))"
    ))
    .bind(serde_json::to_string(ids).unwrap_or_default())
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}
