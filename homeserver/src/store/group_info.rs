//! Each hosted chat's latest MLS GroupInfo (migration 0018, `spec/backup.md` BK18–BK21):
//! the bytes a commit's sender published with it, kept in the transaction that accepts
//! the commit (the planner says which: [`super::plan::SendPlan::group_infos`]) and read
//! for a member user's device that joins by external commit. The server never reads the
//! bytes; it knows only the epoch they are of.

use std::future::Future;

use parley_client_api::ChatId;
use sqlx::{Postgres, Sqlite, Transaction};

use super::pg::PgStore;
use super::plan::SendPlan;
use super::sqlite::SqliteStore;
use super::{AnyStore, Result, SendRequest};

/// A chat's stored GroupInfo and the chat's current epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupInfoRow {
    /// The epoch the GroupInfo is of.
    pub epoch: u64,
    pub data: Vec<u8>,
    /// The chat's current MLS epoch (the GroupInfo is current when they are equal).
    pub chat_epoch: u64,
}

pub trait GroupInfoStore: Send + Sync + 'static {
    /// The chat's stored GroupInfo, if it has one.
    fn group_info(
        &self,
        chat: &ChatId,
    ) -> impl Future<Output = Result<Option<GroupInfoRow>>> + Send;
}

fn epoch_i64(e: u64) -> i64 {
    i64::try_from(e).unwrap_or(i64::MAX)
}

/// The GroupInfos the plan keeps: (chat, epoch, bytes), in the order accepted.
fn kept<'a>(
    plan: &'a SendPlan,
    batch: &'a [SendRequest],
) -> impl Iterator<Item = (&'a ChatId, i64, &'a [u8])> {
    plan.group_infos.iter().filter_map(|(i, chat, epoch)| {
        let data = batch.get(*i)?.group_info.as_deref()?;
        Some((chat, epoch_i64(*epoch), data))
    })
}

const UPSERT_PG: &str = "INSERT INTO chat_group_info (chat_id, epoch, data, updated_at)
     VALUES ($1, $2, $3, $4)
     ON CONFLICT (chat_id) DO UPDATE
        SET epoch = excluded.epoch, data = excluded.data, updated_at = excluded.updated_at";

const UPSERT_SQLITE: &str = "INSERT INTO chat_group_info (chat_id, epoch, data, updated_at)
     VALUES (?1, ?2, ?3, ?4)
     ON CONFLICT (chat_id) DO UPDATE
        SET epoch = excluded.epoch, data = excluded.data, updated_at = excluded.updated_at";

/// Writes the GroupInfos of the commits the plan accepted (in the send transaction).
pub(crate) async fn keep_pg(
    tx: &mut Transaction<'_, Postgres>,
    plan: &SendPlan,
    batch: &[SendRequest],
    now: i64,
) -> Result<()> {
    for (chat, epoch, data) in kept(plan, batch) {
        sqlx::query(UPSERT_PG)
            .bind(chat.as_str())
            .bind(epoch)
            .bind(data)
            .bind(now)
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

/// Writes the GroupInfos of the commits the plan accepted (in the send transaction).
pub(crate) async fn keep_sqlite(
    tx: &mut Transaction<'_, Sqlite>,
    plan: &SendPlan,
    batch: &[SendRequest],
    now: i64,
) -> Result<()> {
    for (chat, epoch, data) in kept(plan, batch) {
        sqlx::query(UPSERT_SQLITE)
            .bind(chat.as_str())
            .bind(epoch)
            .bind(data)
            .bind(now)
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

type Row = (i64, Vec<u8>, i64);

fn row((epoch, data, chat_epoch): Row) -> GroupInfoRow {
    GroupInfoRow {
        epoch: u64::try_from(epoch).unwrap_or_default(),
        data,
        chat_epoch: u64::try_from(chat_epoch).unwrap_or_default(),
    }
}

impl GroupInfoStore for PgStore {
    async fn group_info(&self, chat: &ChatId) -> Result<Option<GroupInfoRow>> {
        let r: Option<Row> = sqlx::query_as(
            "SELECT g.epoch, g.data, c.mls_epoch FROM chat_group_info g
             JOIN chats c ON c.chat_id = g.chat_id WHERE g.chat_id = $1",
        )
        .bind(chat.as_str())
        .fetch_optional(self.pool())
        .await?;
        Ok(r.map(row))
    }
}

impl GroupInfoStore for SqliteStore {
    async fn group_info(&self, chat: &ChatId) -> Result<Option<GroupInfoRow>> {
        let r: Option<Row> = sqlx::query_as(
            "SELECT g.epoch, g.data, c.mls_epoch FROM chat_group_info g
             JOIN chats c ON c.chat_id = g.chat_id WHERE g.chat_id = ?1",
        )
        .bind(chat.as_str())
        .fetch_optional(&self.pool)
        .await?;
        Ok(r.map(row))
    }
}

impl GroupInfoStore for AnyStore {
    async fn group_info(&self, chat: &ChatId) -> Result<Option<GroupInfoRow>> {
        match self {
            AnyStore::Postgres(s) => s.group_info(chat).await,
            AnyStore::Sqlite(s) => s.group_info(chat).await,
        }
    }
}
