//! Contact lists (migration 0013): the user ids each local user keeps as contacts. A
//! separate trait from [`super::Store`] so the table stays in one place; both backends
//! are here, as the queries are small and the same but for placeholders.

use std::future::Future;

use parley_client_api::UserId;

use super::pg::PgStore;
use super::sqlite::SqliteStore;
use super::{AnyStore, Result, id};

pub trait ContactStore: Send + Sync + 'static {
    /// Adds `contact` to `owner`'s list unless `owner` already lists `max` users (then
    /// `false`). Adding a listed contact again changes nothing and answers `true`.
    fn add_contact(
        &self,
        owner: &UserId,
        contact: &UserId,
        max: usize,
        now: i64,
    ) -> impl Future<Output = Result<bool>> + Send;
    /// False if `owner` did not list `contact`.
    fn remove_contact(
        &self,
        owner: &UserId,
        contact: &UserId,
    ) -> impl Future<Output = Result<bool>> + Send;
    /// Whether `owner` lists `contact`.
    fn is_contact(
        &self,
        owner: &UserId,
        contact: &UserId,
    ) -> impl Future<Output = Result<bool>> + Send;
    /// `owner`'s contacts, sorted.
    fn contacts(&self, owner: &UserId) -> impl Future<Output = Result<Vec<UserId>>> + Send;
    /// The users who list `contact`, sorted.
    fn listed_by(&self, contact: &UserId) -> impl Future<Output = Result<Vec<UserId>>> + Send;
}

fn ids(rows: Vec<(String,)>) -> Result<Vec<UserId>> {
    rows.into_iter().map(|(s,)| id(s)).collect()
}

impl ContactStore for PgStore {
    async fn add_contact(
        &self,
        owner: &UserId,
        contact: &UserId,
        max: usize,
        now: i64,
    ) -> Result<bool> {
        let mut tx = self.pool().begin().await?;
        // One writer per owner at a time, so the cap holds under concurrent adds.
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext('contacts ' || $1))")
            .bind(owner.as_str())
            .execute(&mut *tx)
            .await?;
        let (listed, count): (bool, i64) = sqlx::query_as(
            "SELECT bool_or(contact_id = $2) IS TRUE, count(*) FROM contacts WHERE owner_id = $1",
        )
        .bind(owner.as_str())
        .bind(contact.as_str())
        .fetch_one(&mut *tx)
        .await?;
        if listed {
            return Ok(true);
        }
        if usize::try_from(count).unwrap_or(usize::MAX) >= max {
            return Ok(false);
        }
        sqlx::query("INSERT INTO contacts (owner_id, contact_id, added_at) VALUES ($1, $2, $3)")
            .bind(owner.as_str())
            .bind(contact.as_str())
            .bind(now)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn remove_contact(&self, owner: &UserId, contact: &UserId) -> Result<bool> {
        let n = sqlx::query("DELETE FROM contacts WHERE owner_id = $1 AND contact_id = $2")
            .bind(owner.as_str())
            .bind(contact.as_str())
            .execute(self.pool())
            .await?
            .rows_affected();
        Ok(n == 1)
    }

    async fn is_contact(&self, owner: &UserId, contact: &UserId) -> Result<bool> {
        let row: Option<(i32,)> =
            sqlx::query_as("SELECT 1 FROM contacts WHERE owner_id = $1 AND contact_id = $2")
                .bind(owner.as_str())
                .bind(contact.as_str())
                .fetch_optional(self.pool())
                .await?;
        Ok(row.is_some())
    }

    async fn contacts(&self, owner: &UserId) -> Result<Vec<UserId>> {
        ids(sqlx::query_as(
            "SELECT contact_id FROM contacts WHERE owner_id = $1 ORDER BY contact_id",
        )
        .bind(owner.as_str())
        .fetch_all(self.pool())
        .await?)
    }

    async fn listed_by(&self, contact: &UserId) -> Result<Vec<UserId>> {
        ids(
            sqlx::query_as("SELECT owner_id FROM contacts WHERE contact_id = $1 ORDER BY owner_id")
                .bind(contact.as_str())
                .fetch_all(self.pool())
                .await?,
        )
    }
}

impl ContactStore for SqliteStore {
    async fn add_contact(
        &self,
        owner: &UserId,
        contact: &UserId,
        max: usize,
        now: i64,
    ) -> Result<bool> {
        // The write transaction is exclusive: the count and the insert see one state.
        let mut tx = self.write_tx().await?;
        let (listed, count): (i64, i64) = sqlx::query_as(
            "SELECT COALESCE(MAX(contact_id = ?2), 0), COUNT(*) FROM contacts WHERE owner_id = ?1",
        )
        .bind(owner.as_str())
        .bind(contact.as_str())
        .fetch_one(&mut *tx)
        .await?;
        if listed != 0 {
            tx.commit().await?;
            return Ok(true);
        }
        if usize::try_from(count).unwrap_or(usize::MAX) >= max {
            tx.commit().await?;
            return Ok(false);
        }
        sqlx::query("INSERT INTO contacts (owner_id, contact_id, added_at) VALUES (?1, ?2, ?3)")
            .bind(owner.as_str())
            .bind(contact.as_str())
            .bind(now)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn remove_contact(&self, owner: &UserId, contact: &UserId) -> Result<bool> {
        let mut tx = self.write_tx().await?;
        let n = sqlx::query("DELETE FROM contacts WHERE owner_id = ?1 AND contact_id = ?2")
            .bind(owner.as_str())
            .bind(contact.as_str())
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        Ok(n == 1)
    }

    async fn is_contact(&self, owner: &UserId, contact: &UserId) -> Result<bool> {
        let row: Option<(i64,)> =
            sqlx::query_as("SELECT 1 FROM contacts WHERE owner_id = ?1 AND contact_id = ?2")
                .bind(owner.as_str())
                .bind(contact.as_str())
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.is_some())
    }

    async fn contacts(&self, owner: &UserId) -> Result<Vec<UserId>> {
        ids(sqlx::query_as(
            "SELECT contact_id FROM contacts WHERE owner_id = ?1 ORDER BY contact_id",
        )
        .bind(owner.as_str())
        .fetch_all(&self.pool)
        .await?)
    }

    async fn listed_by(&self, contact: &UserId) -> Result<Vec<UserId>> {
        ids(
            sqlx::query_as("SELECT owner_id FROM contacts WHERE contact_id = ?1 ORDER BY owner_id")
                .bind(contact.as_str())
                .fetch_all(&self.pool)
                .await?,
        )
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

impl ContactStore for AnyStore {
    async fn add_contact(
        &self,
        owner: &UserId,
        contact: &UserId,
        max: usize,
        now: i64,
    ) -> Result<bool> {
        dispatch!(self, s => s.add_contact(owner, contact, max, now).await)
    }
    async fn remove_contact(&self, owner: &UserId, contact: &UserId) -> Result<bool> {
        dispatch!(self, s => s.remove_contact(owner, contact).await)
    }
    async fn is_contact(&self, owner: &UserId, contact: &UserId) -> Result<bool> {
        dispatch!(self, s => s.is_contact(owner, contact).await)
    }
    async fn contacts(&self, owner: &UserId) -> Result<Vec<UserId>> {
        dispatch!(self, s => s.contacts(owner).await)
    }
    async fn listed_by(&self, contact: &UserId) -> Result<Vec<UserId>> {
        dispatch!(self, s => s.listed_by(contact).await)
    }
}
