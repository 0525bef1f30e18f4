//! History backups (migration 0016, `service::backup`): one row per local user naming
//! the blob that holds their encrypted archive. A separate trait from [`super::Store`]
//! so the table stays in one place; both backends are here. The blob's bytes are the
//! media store's; [`super::Store::unreferenced_blobs`] keeps a backup's blob.

use std::future::Future;

use parley_client_api::{BlobHash, UserId};

use super::pg::PgStore;
use super::sqlite::SqliteStore;
use super::{AnyStore, Result, id};

/// A user's backup as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupRow {
    pub blob: BlobHash,
    pub size: u64,
    /// The JSON of the key mode (opaque here).
    pub key_mode: String,
    pub created_at: i64,
}

/// What [`BackupStore::set_backup`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SetBackup {
    Stored(BackupRow),
    /// No stored blob with this hash and size that `user` uploaded.
    NoBlob,
}

pub trait BackupStore: Send + Sync + 'static {
    /// Makes `blob` (stored, `size` bytes, uploaded by `user`) `user`'s backup,
    /// replacing the previous one.
    fn set_backup(
        &self,
        user: &UserId,
        blob: &BlobHash,
        size: u64,
        key_mode: &str,
        now: i64,
    ) -> impl Future<Output = Result<SetBackup>> + Send;
    fn backup(&self, user: &UserId) -> impl Future<Output = Result<Option<BackupRow>>> + Send;
    /// False if `user` had none.
    fn delete_backup(&self, user: &UserId) -> impl Future<Output = Result<bool>> + Send;
}

type Row = (String, i64, String, i64);

fn row((blob, size, key_mode, created_at): Row) -> Result<BackupRow> {
    Ok(BackupRow {
        blob: id(blob)?,
        size: u64::try_from(size).unwrap_or_default(),
        key_mode,
        created_at,
    })
}

fn size_i64(size: u64) -> i64 {
    i64::try_from(size).unwrap_or(i64::MAX)
}

impl BackupStore for PgStore {
    async fn set_backup(
        &self,
        user: &UserId,
        blob: &BlobHash,
        size: u64,
        key_mode: &str,
        now: i64,
    ) -> Result<SetBackup> {
        // One statement: the blob check and the upsert see one state. (A blob is
        // collected only when older than the collection's grace period and unreferenced.)
        let stored: Option<Row> = sqlx::query_as(
            "INSERT INTO backups (user_id, blob, size, key_mode, created_at)
             SELECT $1, b.hash, b.size, $4, $5 FROM blobs b
              WHERE b.hash = $2 AND b.size = $3 AND b.uploader = $1
             ON CONFLICT (user_id) DO UPDATE SET blob = excluded.blob, size = excluded.size,
               key_mode = excluded.key_mode, created_at = excluded.created_at
             RETURNING blob, size, key_mode, created_at",
        )
        .bind(user.as_str())
        .bind(blob.as_str())
        .bind(size_i64(size))
        .bind(key_mode)
        .bind(now)
        .fetch_optional(self.pool())
        .await?;
        stored.map_or(Ok(SetBackup::NoBlob), |r| Ok(SetBackup::Stored(row(r)?)))
    }

    async fn backup(&self, user: &UserId) -> Result<Option<BackupRow>> {
        let r: Option<Row> = sqlx::query_as(
            "SELECT blob, size, key_mode, created_at FROM backups WHERE user_id = $1",
        )
        .bind(user.as_str())
        .fetch_optional(self.pool())
        .await?;
        r.map(row).transpose()
    }

    async fn delete_backup(&self, user: &UserId) -> Result<bool> {
        let n = sqlx::query("DELETE FROM backups WHERE user_id = $1")
            .bind(user.as_str())
            .execute(self.pool())
            .await?
            .rows_affected();
        Ok(n == 1)
    }
}

impl BackupStore for SqliteStore {
    async fn set_backup(
        &self,
        user: &UserId,
        blob: &BlobHash,
        size: u64,
        key_mode: &str,
        now: i64,
    ) -> Result<SetBackup> {
        let mut tx = self.write_tx().await?;
        let stored: Option<Row> = sqlx::query_as(
            "INSERT INTO backups (user_id, blob, size, key_mode, created_at)
             SELECT ?1, b.hash, b.size, ?4, ?5 FROM blobs b
              WHERE b.hash = ?2 AND b.size = ?3 AND b.uploader = ?1
             ON CONFLICT (user_id) DO UPDATE SET blob = excluded.blob, size = excluded.size,
               key_mode = excluded.key_mode, created_at = excluded.created_at
             RETURNING blob, size, key_mode, created_at",
        )
        .bind(user.as_str())
        .bind(blob.as_str())
        .bind(size_i64(size))
        .bind(key_mode)
        .bind(now)
        .fetch_optional(&mut *tx)
        .await?;
        tx.commit().await?;
        stored.map_or(Ok(SetBackup::NoBlob), |r| Ok(SetBackup::Stored(row(r)?)))
    }

    async fn backup(&self, user: &UserId) -> Result<Option<BackupRow>> {
        let r: Option<Row> = sqlx::query_as(
            "SELECT blob, size, key_mode, created_at FROM backups WHERE user_id = ?1",
        )
        .bind(user.as_str())
        .fetch_optional(&self.pool)
        .await?;
        r.map(row).transpose()
    }

    async fn delete_backup(&self, user: &UserId) -> Result<bool> {
        let mut tx = self.write_tx().await?;
        let n = sqlx::query("DELETE FROM backups WHERE user_id = ?1")
            .bind(user.as_str())
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        Ok(n == 1)
    }
}

macro_rules! dispatch {
    ($self:ident, $s:ident => $e:expr) => {
        match $self {
            AnyStore::Postgres($s) => $e,
            AnyStore::Sqlite($s) => $e,
        }
    };
}

impl BackupStore for AnyStore {
    async fn set_backup(
        &self,
        user: &UserId,
        blob: &BlobHash,
        size: u64,
        key_mode: &str,
        now: i64,
    ) -> Result<SetBackup> {
        dispatch!(self, s => s.set_backup(user, blob, size, key_mode, now).await)
    }
    async fn backup(&self, user: &UserId) -> Result<Option<BackupRow>> {
        dispatch!(self, s => s.backup(user).await)
    }
    async fn delete_backup(&self, user: &UserId) -> Result<bool> {
        dispatch!(self, s => s.delete_backup(user).await)
    }
}
