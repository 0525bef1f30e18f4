//! Disappearing messages and the chat read-receipt policy as the store sees them
//! (`spec/messaging.md` MS30–MS47): an event's expiry (`events.expires_at`) and the policy
//! an event sets (`events.read_receipts`, `chats.read_receipts`), written in the
//! transaction that stores the event (the hub's send, a follower's copy); and the purge
//! that drops expired events with their undelivered inbox rows and blob references, so
//! media only expired messages referred to becomes collectable.

use parley_client_api::{BlobHash, ChatId};
use sqlx::{Postgres, Sqlite, Transaction};

use super::{Purged, Result, id};

/// What one purge of expired events removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Disappeared {
    pub purged: Purged,
    /// Blobs that only the purged events referred to: collectable now (they were sent,
    /// so the grace that protects a fresh upload before its message does not apply).
    pub orphans: Vec<BlobHash>,
}

/// What an event carries beside its payload that the store keeps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stamp<'a> {
    pub chat_id: &'a ChatId,
    pub seq: i64,
    pub ts: i64,
    pub expires_in: Option<u32>,
    pub read_receipts: Option<bool>,
}

impl Stamp<'_> {
    fn needed(&self) -> bool {
        self.expires_in.is_some() || self.read_receipts.is_some()
    }
}

pub(crate) async fn stamp_pg(
    tx: &mut Transaction<'_, Postgres>,
    stamps: &[Stamp<'_>],
) -> Result<()> {
    for s in stamps.iter().filter(|s| s.needed()) {
        sqlx::query(
            "UPDATE events SET expires_at = $3, read_receipts = $4 WHERE chat_id = $1 AND seq = $2",
        )
        .bind(s.chat_id.as_str())
        .bind(s.seq)
        .bind(super::expires_at(s.ts, s.expires_in))
        .bind(s.read_receipts)
        .execute(&mut **tx)
        .await?;
        if let Some(policy) = s.read_receipts {
            sqlx::query("UPDATE chats SET read_receipts = $2 WHERE chat_id = $1")
                .bind(s.chat_id.as_str())
                .bind(policy)
                .execute(&mut **tx)
                .await?;
        }
    }
    Ok(())
}

pub(crate) async fn stamp_sqlite(
    tx: &mut Transaction<'_, Sqlite>,
    stamps: &[Stamp<'_>],
) -> Result<()> {
    for s in stamps.iter().filter(|s| s.needed()) {
        sqlx::query(
            "UPDATE events SET expires_at = ?3, read_receipts = ?4 WHERE chat_id = ?1 AND seq = ?2",
        )
        .bind(s.chat_id.as_str())
        .bind(s.seq)
        .bind(super::expires_at(s.ts, s.expires_in))
        .bind(s.read_receipts)
        .execute(&mut **tx)
        .await?;
        if let Some(policy) = s.read_receipts {
            sqlx::query("UPDATE chats SET read_receipts = ?2 WHERE chat_id = ?1")
                .bind(s.chat_id.as_str())
                .bind(policy)
                .execute(&mut **tx)
                .await?;
        }
    }
    Ok(())
}

/// Drops events that expired before `now` (at most `limit` per call), their inbox rows
/// and their blob references, in one transaction.
pub(crate) async fn purge_pg(pool: &sqlx::PgPool, now: i64, limit: i64) -> Result<Disappeared> {
    let mut tx = pool.begin().await?;
    let expired: Vec<(String, i64)> = sqlx::query_as(
        "SELECT chat_id, seq FROM events WHERE expires_at IS NOT NULL AND expires_at <= $1
         ORDER BY expires_at LIMIT $2",
    )
    .bind(now)
    .bind(limit)
    .fetch_all(&mut *tx)
    .await?;
    if expired.is_empty() {
        return Ok(Disappeared::default());
    }
    let chats: Vec<&str> = expired.iter().map(|(c, _)| c.as_str()).collect();
    let seqs: Vec<i64> = expired.iter().map(|(_, s)| *s).collect();
    let inbox_rows = sqlx::query(
        "DELETE FROM inbox i USING UNNEST($1::text[], $2::bigint[]) AS x(c, s)
         WHERE i.kind = 0 AND i.chat_id = x.c AND i.seq = x.s",
    )
    .bind(&chats)
    .bind(&seqs)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    let unref: Vec<String> = sqlx::query_scalar(
        "DELETE FROM blob_refs b USING UNNEST($1::text[], $2::bigint[]) AS x(c, s)
         WHERE b.chat_id = x.c AND b.seq = x.s RETURNING b.hash",
    )
    .bind(&chats)
    .bind(&seqs)
    .fetch_all(&mut *tx)
    .await?;
    let orphans: Vec<String> = sqlx::query_scalar(
        "SELECT hash FROM blobs b WHERE hash = ANY($1)
           AND NOT EXISTS (SELECT 1 FROM blob_refs r WHERE r.hash = b.hash)",
    )
    .bind(&unref)
    .fetch_all(&mut *tx)
    .await?;
    let events = sqlx::query(
        "DELETE FROM events e USING UNNEST($1::text[], $2::bigint[]) AS x(c, s)
         WHERE e.chat_id = x.c AND e.seq = x.s",
    )
    .bind(&chats)
    .bind(&seqs)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    tx.commit().await?;
    Ok(Disappeared {
        purged: Purged { inbox_rows, events },
        orphans: orphans.into_iter().map(id).collect::<Result<_>>()?,
    })
}

pub(crate) async fn purge_sqlite(
    pool: &sqlx::SqlitePool,
    now: i64,
    limit: i64,
) -> Result<Disappeared> {
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
    let expired: Vec<(String, i64)> = sqlx::query_as(
        "SELECT chat_id, seq FROM events WHERE expires_at IS NOT NULL AND expires_at <= ?1
         ORDER BY expires_at LIMIT ?2",
    )
    .bind(now)
    .bind(limit)
    .fetch_all(&mut *tx)
    .await?;
    let mut purged = Purged::default();
    let mut unref: Vec<String> = Vec::new();
    for (chat, seq) in &expired {
        purged.inbox_rows +=
            sqlx::query("DELETE FROM inbox WHERE kind = 0 AND chat_id = ?1 AND seq = ?2")
                .bind(chat)
                .bind(seq)
                .execute(&mut *tx)
                .await?
                .rows_affected();
        unref.extend(
            sqlx::query_scalar::<_, String>(
                "DELETE FROM blob_refs WHERE chat_id = ?1 AND seq = ?2 RETURNING hash",
            )
            .bind(chat)
            .bind(seq)
            .fetch_all(&mut *tx)
            .await?,
        );
        purged.events += sqlx::query("DELETE FROM events WHERE chat_id = ?1 AND seq = ?2")
            .bind(chat)
            .bind(seq)
            .execute(&mut *tx)
            .await?
            .rows_affected();
    }
    let orphans: Vec<String> = sqlx::query_scalar(
        "SELECT hash FROM blobs b WHERE hash IN (SELECT value FROM json_each(?1))
           AND NOT EXISTS (SELECT 1 FROM blob_refs r WHERE r.hash = b.hash)",
    )
    .bind(super::sqlite::json_list(&unref))
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Disappeared {
        purged,
        orphans: orphans.into_iter().map(id).collect::<Result<_>>()?,
    })
}
