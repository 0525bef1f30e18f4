//! [`FedStore`] on Postgres. Every statement reaches its rows through a primary key or
//! a leading index column, so plans do not depend on table statistics.

use std::collections::{BTreeMap, BTreeSet};

use parley_client_api::http::chats::{ChatEvent, Receipt};
use parley_client_api::{ChatId, DeviceId, UserId};
use sqlx::{Postgres, Row, Transaction};

use super::ReceiptNotice;
use super::fed::{
    Applied, ChatSnapshotRow, DestinationRow, FedStore, NewOutboxRow, OpRun, OutboxKind, OutboxRow,
    OutboxTuple, Received, RunContext, SendResultRow, direct_key, op_runs, run_heads, run_inbox,
};
use super::pg::{PgStore, devices_of, event_from_row, receipts_from_rows, upsert_receipts};
use super::{
    INBOX_SEND_RESULT, Result, blobs_to_json, epoch_i64, id, kind_from_i16, kind_to_i16,
    membership_to_json, mls_kind_to_i16,
};

/// Writes outbox rows inside a caller's transaction.
pub(super) async fn insert_outbox(
    tx: &mut Transaction<'_, Postgres>,
    rows: &[NewOutboxRow],
    at: i64,
) -> Result<Vec<i64>> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<i64> = sqlx::query_scalar(
        "INSERT INTO federation_outbox (destination, kind, body, created_at)
         SELECT d, k, b, $4 FROM UNNEST($1::text[], $2::smallint[], $3::text[])
              WITH ORDINALITY AS v(d, k, b, n)
         ORDER BY n RETURNING id",
    )
    .bind(
        rows.iter()
            .map(|r| r.destination.clone())
            .collect::<Vec<_>>(),
    )
    .bind(rows.iter().map(|r| r.kind.to_i16()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.body.clone()).collect::<Vec<_>>())
    .bind(at)
    .fetch_all(&mut **tx)
    .await?;
    Ok(ids)
}

async fn local_devices(
    tx: &mut Transaction<'_, Postgres>,
    users: &BTreeSet<String>,
) -> Result<BTreeMap<String, Vec<DeviceId>>> {
    let mut out: BTreeMap<String, Vec<DeviceId>> = BTreeMap::new();
    if users.is_empty() {
        return Ok(out);
    }
    let rows = sqlx::query("SELECT user_id, device_id FROM devices WHERE user_id = ANY($1)")
        .bind(users.iter().cloned().collect::<Vec<_>>())
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
    tx: &mut Transaction<'_, Postgres>,
    s: &ChatSnapshotRow,
    at: i64,
) -> Result<()> {
    let key = direct_key(&s.members);
    let taken: Option<String> = match &key {
        Some(k) => {
            sqlx::query_scalar("SELECT chat_id FROM chats WHERE direct_key = $1")
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
         VALUES ($1, $2, $3, $4, $5, $5, $6, $7, $8)
         ON CONFLICT (chat_id) DO UPDATE
            SET name = EXCLUDED.name, mls_epoch = GREATEST(chats.mls_epoch, EXCLUDED.mls_epoch),
                read_receipts = EXCLUDED.read_receipts",
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
    sqlx::query(
        "UPDATE chat_members SET left_at = $3, admin = FALSE
         WHERE chat_id = $1 AND left_at IS NULL AND NOT (user_id = ANY($2))",
    )
    .bind(s.chat_id.as_str())
    .bind(
        s.members
            .iter()
            .map(|(u, _)| u.to_string())
            .collect::<Vec<_>>(),
    )
    .bind(at)
    .execute(&mut **tx)
    .await?;
    sqlx::query(
        "INSERT INTO chat_members (chat_id, user_id, joined_at, admin)
         SELECT $1, u, $4, a FROM UNNEST($2::text[], $3::bool[]) AS v(u, a)
         ON CONFLICT (chat_id, user_id) DO UPDATE
            SET admin = EXCLUDED.admin, left_at = NULL,
                joined_at = CASE WHEN chat_members.left_at IS NULL
                                 THEN chat_members.joined_at ELSE EXCLUDED.joined_at END",
    )
    .bind(s.chat_id.as_str())
    .bind(
        s.members
            .iter()
            .map(|(u, _)| u.to_string())
            .collect::<Vec<_>>(),
    )
    .bind(s.members.iter().map(|(_, a)| *a).collect::<Vec<_>>())
    .bind(at)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Stores a run of hub events (each once), applies a membership event's change, moves
/// the chats' heads and writes inbox rows for the local devices that must see the new
/// events: a handful of statements per run, whatever its length.
async fn apply_run(
    tx: &mut Transaction<'_, Postgres>,
    run: &[(usize, &ChatEvent)],
    at: i64,
) -> Result<Vec<(DeviceId, i64, usize)>> {
    let ev = |f: fn(&ChatEvent) -> String| run.iter().map(|(_, e)| f(e)).collect::<Vec<_>>();
    let stored: Vec<(String, i64)> = sqlx::query_as(
        "INSERT INTO events (chat_id, seq, sender, sender_device, client_msg_id, ts, payload,
                             mls_kind, mls_epoch, membership, blobs)
         SELECT v.c, v.s, v.snd, v.dev, v.cm, v.ts, v.p, v.mk, v.me, v.mb, v.b
         FROM UNNEST($1::text[], $2::bigint[], $3::text[], $4::text[], $5::text[],
                     $6::bigint[], $7::bytea[], $8::smallint[], $9::bigint[], $10::text[],
                     $11::text[]) AS v(c, s, snd, dev, cm, ts, p, mk, me, mb, b)
         WHERE EXISTS (SELECT 1 FROM chats WHERE chat_id = v.c)
         ON CONFLICT DO NOTHING
         RETURNING chat_id, seq",
    )
    .bind(ev(|e| e.chat_id.to_string()))
    .bind(run.iter().map(|(_, e)| e.seq).collect::<Vec<_>>())
    .bind(ev(|e| e.sender.to_string()))
    .bind(ev(|e| e.sender_device.to_string()))
    .bind(ev(|e| e.client_msg_id.clone()))
    .bind(run.iter().map(|(_, e)| e.ts).collect::<Vec<_>>())
    .bind(
        run.iter()
            .map(|(_, e)| e.payload.0.clone())
            .collect::<Vec<_>>(),
    )
    .bind(
        run.iter()
            .map(|(_, e)| e.mls.map(|m| mls_kind_to_i16(m.kind)))
            .collect::<Vec<_>>(),
    )
    .bind(
        run.iter()
            .map(|(_, e)| e.mls.map(|m| epoch_i64(m.epoch)))
            .collect::<Vec<_>>(),
    )
    .bind(
        run.iter()
            .map(|(_, e)| membership_to_json(&e.membership))
            .collect::<Vec<_>>(),
    )
    .bind(
        run.iter()
            .map(|(_, e)| blobs_to_json(&e.blobs))
            .collect::<Vec<_>>(),
    )
    .fetch_all(&mut **tx)
    .await?;
    let stored: BTreeSet<(String, i64)> = stored.into_iter().collect();
    let new: Vec<(usize, &ChatEvent)> = run
        .iter()
        .filter(|(_, e)| stored.contains(&(e.chat_id.to_string(), e.seq)))
        .copied()
        .collect();
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
    super::disappearing::stamp_pg(tx, &stamps).await?;
    // The events' media references, as on the hub: who may download a blob here, and
    // which server it is fetched from (the sender's).
    for (_, e) in &new {
        for blob in &e.blobs {
            sqlx::query(
                "INSERT INTO blob_refs (chat_id, seq, hash, ts) VALUES ($1, $2, $3, $4)
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
    let heads = run_heads(&new);
    let chats: Vec<String> = heads.iter().map(|(c, ..)| c.to_string()).collect();
    let mut ctx = RunContext::default();
    let members = sqlx::query(
        "SELECT chat_id, user_id FROM chat_members
         WHERE chat_id = ANY($1) AND left_at IS NULL",
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
                "INSERT INTO chat_members (chat_id, user_id, joined_at) VALUES ($1, $2, $3)
                 ON CONFLICT (chat_id, user_id) DO UPDATE SET left_at = NULL, admin = FALSE,
                    joined_at = EXCLUDED.joined_at",
            )
            .bind(e.chat_id.as_str())
            .bind(user.as_str())
            .bind(at)
            .execute(&mut **tx)
            .await?;
        }
        for user in &change.remove {
            sqlx::query(
                "UPDATE chat_members SET left_at = $3, admin = FALSE
                 WHERE chat_id = $1 AND user_id = $2 AND left_at IS NULL",
            )
            .bind(e.chat_id.as_str())
            .bind(user.as_str())
            .bind(at)
            .execute(&mut **tx)
            .await?;
        }
    }
    sqlx::query(
        "UPDATE chats SET last_seq = GREATEST(last_seq, v.s), last_ts = GREATEST(last_ts, v.t),
                          mls_epoch = GREATEST(mls_epoch, v.e)
         FROM UNNEST($1::text[], $2::bigint[], $3::bigint[], $4::bigint[]) AS v(c, s, t, e)
         WHERE chats.chat_id = v.c",
    )
    .bind(&chats)
    .bind(heads.iter().map(|h| h.1).collect::<Vec<_>>())
    .bind(heads.iter().map(|h| h.2).collect::<Vec<_>>())
    .bind(heads.iter().map(|h| h.3).collect::<Vec<_>>())
    .execute(&mut **tx)
    .await?;
    let senders: BTreeSet<&str> = new.iter().map(|(_, e)| e.sender.as_str()).collect();
    ctx.periods = super::blocks::periods_pg(tx, &senders.into_iter().collect::<Vec<_>>()).await?;
    if !ctx.periods.is_empty() {
        let kinds = sqlx::query("SELECT chat_id, kind FROM chats WHERE chat_id = ANY($1)")
            .bind(&chats)
            .fetch_all(&mut **tx)
            .await?;
        for r in kinds {
            ctx.kinds
                .insert(id(r.get("chat_id"))?, kind_from_i16(r.get("kind"))?);
        }
    }
    ctx.devices = local_devices(tx, &ctx.users()).await?;
    let inbox = run_inbox(&new, &ctx);
    if inbox.is_empty() {
        return Ok(Vec::new());
    }
    let events: std::collections::HashMap<usize, &ChatEvent> = new.iter().copied().collect();
    let rows = sqlx::query(
        "INSERT INTO inbox (device_id, chat_id, kind, seq, sender, created_at)
         SELECT d, c, 0, s, snd, $5
         FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::text[]) WITH ORDINALITY
              AS v(d, c, s, snd, n)
         ORDER BY n
         RETURNING id, device_id, chat_id, seq",
    )
    .bind(inbox.iter().map(|(_, d)| d.to_string()).collect::<Vec<_>>())
    .bind(
        inbox
            .iter()
            .map(|(i, _)| events[i].chat_id.to_string())
            .collect::<Vec<_>>(),
    )
    .bind(inbox.iter().map(|(i, _)| events[i].seq).collect::<Vec<_>>())
    .bind(
        inbox
            .iter()
            .map(|(i, _)| events[i].sender.to_string())
            .collect::<Vec<_>>(),
    )
    .bind(at)
    .fetch_all(&mut **tx)
    .await?;
    // Each (device, chat, seq) is written once: map the new rows back to their ops.
    let op_of: std::collections::HashMap<(String, i64), usize> = new
        .iter()
        .map(|(i, e)| ((e.chat_id.to_string(), e.seq), *i))
        .collect();
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let key = (r.get::<String, _>("chat_id"), r.get::<i64, _>("seq"));
        if let Some(i) = op_of.get(&key) {
            out.push((id(r.get("device_id"))?, r.get::<i64, _>("id"), *i));
        }
    }
    out.sort_by_key(|(_, inbox_id, _)| *inbox_id);
    Ok(out)
}

/// Raises members' receipts as another server reported them (never lowers one) and
/// writes a receipt item for every local device of the chat's other members.
async fn raise_remote_receipts(
    tx: &mut Transaction<'_, Postgres>,
    receipts: &[(ChatId, Receipt)],
    at: i64,
) -> Result<Vec<ReceiptNotice>> {
    let receipts = super::plan::fold_receipts(receipts);
    if receipts.is_empty() {
        return Ok(Vec::new());
    }
    let chats: Vec<String> = receipts.iter().map(|(c, _)| c.to_string()).collect();
    let changed = sqlx::query(
        "UPDATE chat_members m
            SET delivered_seq = GREATEST(m.delivered_seq, v.d),
                read_seq = GREATEST(m.read_seq, v.r)
         FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::bigint[]) AS v(c, u, d, r)
         WHERE m.chat_id = ANY($1) AND m.chat_id = v.c AND m.user_id = v.u
           AND (m.delivered_seq < v.d OR m.read_seq < v.r)
         RETURNING m.chat_id, m.user_id, m.delivered_seq, m.read_seq",
    )
    .bind(&chats)
    .bind(
        receipts
            .iter()
            .map(|(_, r)| r.user_id.to_string())
            .collect::<Vec<_>>(),
    )
    .bind(
        receipts
            .iter()
            .map(|(_, r)| r.delivered_seq)
            .collect::<Vec<_>>(),
    )
    .bind(receipts.iter().map(|(_, r)| r.read_seq).collect::<Vec<_>>())
    .fetch_all(&mut **tx)
    .await?;
    let changed = receipts_from_rows(changed)?;
    let members: Vec<(String, String)> = sqlx::query_as(
        "SELECT chat_id, user_id FROM chat_members WHERE chat_id = ANY($1) AND left_at IS NULL",
    )
    .bind(&chats)
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
    tx: &mut Transaction<'_, Postgres>,
    t: &Received<'_>,
    at: i64,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO federation_received (origin, txn_id, response, received_at)
         VALUES ($1, $2, $3, $4) ON CONFLICT (origin, txn_id) DO NOTHING",
    )
    .bind(t.origin)
    .bind(t.txn_id)
    .bind(t.response)
    .bind(at)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

impl FedStore for PgStore {
    async fn enqueue_outbox(&self, rows: &[NewOutboxRow], at: i64) -> Result<Vec<i64>> {
        let mut tx = self.pool().begin().await?;
        let ids = insert_outbox(&mut tx, rows, at).await?;
        tx.commit().await?;
        Ok(ids)
    }

    async fn outbox_rows(
        &self,
        destination: &str,
        _after: i64,
        held: &[i64],
    ) -> Result<Vec<OutboxRow>> {
        // Every pending row the caller does not hold: ids here are not in commit order
        // (see the trait).
        // A snapshot row's size: its chat's name and members' (an id and the admin flag
        // each), read only for snapshot rows.
        let rows: Vec<OutboxTuple> = sqlx::query_as(
            "SELECT o.id, o.destination, o.kind, o.body,
                    CASE WHEN o.kind = $3 THEN
                      COALESCE((SELECT octet_length(c.name) FROM chats c
                                WHERE c.chat_id = o.body::jsonb ->> 'chat_id'), 0)
                      + (SELECT COALESCE(sum(octet_length(m.user_id) + 32), 0)
                         FROM chat_members m
                         WHERE m.chat_id = o.body::jsonb ->> 'chat_id')
                    ELSE 0 END::bigint
             FROM federation_outbox o
             WHERE o.destination = $1 AND o.id <> ALL($2) ORDER BY o.destination, o.id",
        )
        .bind(destination)
        .bind(held)
        .bind(OutboxKind::Snapshot.to_i16())
        .fetch_all(self.pool())
        .await?;
        rows.into_iter().map(OutboxRow::from_tuple).collect()
    }

    async fn outbox_destinations(&self) -> Result<Vec<String>> {
        Ok(
            sqlx::query_scalar("SELECT DISTINCT destination FROM federation_outbox")
                .fetch_all(self.pool())
                .await?,
        )
    }

    async fn outbox_depths(&self) -> Result<Vec<(String, i64)>> {
        Ok(sqlx::query_as(
            "SELECT destination, count(*) FROM federation_outbox GROUP BY destination",
        )
        .fetch_all(self.pool())
        .await?)
    }

    async fn outbox_delete(&self, ids: &[i64]) -> Result<()> {
        delete_ids(self, "federation_outbox", ids).await
    }

    async fn destinations(&self) -> Result<Vec<DestinationRow>> {
        let rows = sqlx::query(
            "SELECT destination, failures, retry_at, parked FROM federation_destinations",
        )
        .fetch_all(self.pool())
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
        sqlx::query(
            "INSERT INTO federation_destinations (destination, failures, retry_at, parked)
             VALUES ($1, $2, $3, $4)
             ON CONFLICT (destination) DO UPDATE
                SET failures = EXCLUDED.failures, retry_at = EXCLUDED.retry_at,
                    parked = EXCLUDED.parked",
        )
        .bind(&row.destination)
        .bind(i64::from(row.failures))
        .bind(row.retry_at)
        .bind(row.parked)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    async fn events_by_seq(&self, refs: &[(ChatId, i64)]) -> Result<Vec<ChatEvent>> {
        let rows = sqlx::query(
            "SELECT e.chat_id, e.seq, e.sender, e.sender_device, e.client_msg_id, e.ts, e.payload,
                    e.mls_kind, e.mls_epoch, e.membership, e.blobs, e.expires_at, e.read_receipts
             FROM UNNEST($1::text[], $2::bigint[]) WITH ORDINALITY AS k(c, s, n)
             JOIN events e ON e.chat_id = k.c AND e.seq = k.s
             ORDER BY k.n",
        )
        .bind(refs.iter().map(|(c, _)| c.to_string()).collect::<Vec<_>>())
        .bind(refs.iter().map(|(_, s)| *s).collect::<Vec<_>>())
        .fetch_all(self.pool())
        .await?;
        rows.into_iter().map(event_from_row).collect()
    }

    async fn chat_snapshot(&self, chat_id: &ChatId) -> Result<Option<(ChatSnapshotRow, i64)>> {
        let mut tx = self.pool().begin().await?;
        let Some(chat) = sqlx::query(
            "SELECT kind, name, mls_epoch, created_by, created_at, last_seq, read_receipts FROM chats
             WHERE chat_id = $1",
        )
        .bind(chat_id.as_str())
        .fetch_optional(&mut *tx)
        .await?
        else {
            return Ok(None);
        };
        let members = sqlx::query(
            "SELECT user_id, admin FROM chat_members WHERE chat_id = $1 AND left_at IS NULL
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
        let rows: Vec<String> =
            sqlx::query_scalar("SELECT chat_id FROM chats WHERE chat_id = ANY($1)")
                .bind(chat_ids.iter().map(|c| c.to_string()).collect::<Vec<_>>())
                .fetch_all(self.pool())
                .await?;
        rows.into_iter().map(id).collect()
    }

    async fn receive_transaction(&self, t: &Received<'_>, at: i64) -> Result<Applied> {
        let mut tx = self.pool().begin().await?;
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
            "SELECT response FROM federation_received WHERE origin = $1 AND txn_id = $2",
        )
        .bind(origin)
        .bind(txn_id)
        .fetch_optional(self.pool())
        .await?)
    }

    async fn purge_received(&self, before: i64) -> Result<u64> {
        Ok(
            sqlx::query("DELETE FROM federation_received WHERE received_at < $1")
                .bind(before)
                .execute(self.pool())
                .await?
                .rows_affected(),
        )
    }
    async fn insert_nonce(
        &self,
        origin: &str,
        nonce: &str,
        window_end: i64,
        now: i64,
    ) -> Result<bool> {
        // A live row makes the upsert a no-op (0 rows): a replay. An ended one is reused.
        let n = sqlx::query(
            "INSERT INTO federation_nonces (origin, nonce, window_end) VALUES ($1, $2, $3)
             ON CONFLICT (origin, nonce) DO UPDATE SET window_end = EXCLUDED.window_end
             WHERE federation_nonces.window_end < $4",
        )
        .bind(origin)
        .bind(nonce)
        .bind(window_end)
        .bind(now)
        .execute(self.pool())
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    async fn purge_nonces(&self, now: i64) -> Result<u64> {
        Ok(
            sqlx::query("DELETE FROM federation_nonces WHERE window_end < $1")
                .bind(now)
                .execute(self.pool())
                .await?
                .rows_affected(),
        )
    }

    async fn record_send_results(
        &self,
        rows: &[SendResultRow],
        at: i64,
    ) -> Result<Vec<(usize, i64)>> {
        let mut tx = self.pool().begin().await?;
        let mut out = Vec::with_capacity(rows.len());
        for (i, r) in rows.iter().enumerate() {
            let id: Option<i64> = sqlx::query_scalar(
                "INSERT INTO inbox (device_id, chat_id, kind, seq, sender, created_at, body)
                 SELECT $1, $2, $3, $4, $5, $6, $7
                 WHERE EXISTS (SELECT 1 FROM devices WHERE device_id = $1)
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
            sqlx::query_as("SELECT id, chat_id, user_id FROM receipt_fanout ORDER BY id LIMIT $1")
                .bind(limit)
                .fetch_all(self.pool())
                .await?;
        rows.into_iter()
            .map(|(n, c, u)| Ok((n, id(c)?, id(u)?)))
            .collect()
    }

    async fn receipt_fanout_done(&self, ids: &[i64]) -> Result<()> {
        delete_ids(self, "receipt_fanout", ids).await
    }

    async fn member_receipts(&self, pairs: &[(ChatId, UserId)]) -> Result<Vec<(ChatId, Receipt)>> {
        let rows = sqlx::query(
            "SELECT m.chat_id, m.user_id, m.delivered_seq, m.read_seq
             FROM UNNEST($1::text[], $2::text[]) AS k(c, u)
             JOIN chat_members m ON m.chat_id = k.c AND m.user_id = k.u",
        )
        .bind(pairs.iter().map(|(c, _)| c.to_string()).collect::<Vec<_>>())
        .bind(pairs.iter().map(|(_, u)| u.to_string()).collect::<Vec<_>>())
        .fetch_all(self.pool())
        .await?;
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

    async fn take_lease(
        &self,
        destination: &str,
        holder: &str,
        now: i64,
        until: i64,
    ) -> Result<bool> {
        let got: Option<String> = sqlx::query_scalar(
            "INSERT INTO federation_leases (destination, holder, expires_at) VALUES ($1, $2, $4)
             ON CONFLICT (destination) DO UPDATE
                SET holder = excluded.holder, expires_at = excluded.expires_at
                WHERE federation_leases.holder = excluded.holder
                   OR federation_leases.expires_at < $3
             RETURNING holder",
        )
        .bind(destination)
        .bind(holder)
        .bind(now)
        .bind(until)
        .fetch_optional(self.pool())
        .await?;
        Ok(got.as_deref() == Some(holder))
    }

    async fn chat_followers(&self, chat_ids: &[ChatId]) -> Result<Vec<(ChatId, Vec<String>)>> {
        let rows = sqlx::query(
            "SELECT chat_id, user_id FROM chat_members
             WHERE chat_id = ANY($1) AND left_at IS NULL",
        )
        .bind(chat_ids.iter().map(|c| c.to_string()).collect::<Vec<_>>())
        .fetch_all(self.pool())
        .await?;
        let mut out: BTreeMap<ChatId, BTreeSet<String>> = BTreeMap::new();
        for r in rows {
            let chat: ChatId = id(r.get("chat_id"))?;
            let user: UserId = id(r.get("user_id"))?;
            if user.server_name() != chat.hub() {
                out.entry(chat)
                    .or_default()
                    .insert(user.server_name().to_owned());
            } else {
                out.entry(chat).or_default();
            }
        }
        Ok(out
            .into_iter()
            .map(|(c, s)| (c, s.into_iter().collect()))
            .collect())
    }
}

/// Deletes the rows of `table` (a fixed name, never input) with these ids.
async fn delete_ids(store: &PgStore, table: &'static str, ids: &[i64]) -> Result<()> {
    sqlx::query(&format!("DELETE FROM {table} WHERE id = ANY($1)"))
        .bind(ids)
        .execute(store.pool())
        .await?;
    Ok(())
}
