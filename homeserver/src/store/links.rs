//! Device links (migration 0017, spec/devices.md DL1–DL6): the rendezvous of a new
//! device and an existing device of the same user. Sealed bytes only; the service
//! decides who may read or approve. A separate trait from [`super::Store`], like
//! [`super::contacts`].

use std::future::Future;

use parley_client_api::{DeviceId, UserId};
use sqlx::Row;

use super::pg::PgStore;
use super::sqlite::SqliteStore;
use super::{AnyStore, Result, id};

/// Expired links are kept this long (so a late reader is told "expired", not
/// "unknown"), then purged when the next link is opened.
const KEEP_EXPIRED_MS: i64 = 24 * 3600 * 1000;

#[derive(Debug, Clone)]
pub struct NewLink<'a> {
    pub link_id: &'a str,
    pub user_id: &'a UserId,
    pub device_id: &'a DeviceId,
    pub request: &'a [u8],
    pub now: i64,
    pub expires_at: i64,
}

#[derive(Debug, Clone)]
pub struct LinkRow {
    pub user_id: UserId,
    pub device_id: DeviceId,
    pub request: Vec<u8>,
    pub expires_at: i64,
    pub approved_by: Option<DeviceId>,
    pub approval: Option<Vec<u8>>,
}

pub trait LinkStore: Send + Sync + 'static {
    /// Stores a new link; `false` if the id is taken. Purges long-expired links.
    fn create_link(&self, link: NewLink<'_>) -> impl Future<Output = Result<bool>> + Send;
    fn link(&self, link_id: &str) -> impl Future<Output = Result<Option<LinkRow>>> + Send;
    /// Sets the approval of an unexpired, unapproved link; `false` if there is none.
    fn approve_link(
        &self,
        link_id: &str,
        approver: &DeviceId,
        approval: &[u8],
        now: i64,
    ) -> impl Future<Output = Result<bool>> + Send;
}

fn row(r: &impl RowLike) -> Result<LinkRow> {
    Ok(LinkRow {
        user_id: id(r.text("user_id"))?,
        device_id: id(r.text("device_id"))?,
        request: r.bytes("request"),
        expires_at: r.int("expires_at"),
        approved_by: r.opt_text("approved_by").map(id).transpose()?,
        approval: r.opt_bytes("approval"),
    })
}

/// Column access shared by both backends' rows.
trait RowLike {
    fn text(&self, c: &str) -> String;
    fn opt_text(&self, c: &str) -> Option<String>;
    fn bytes(&self, c: &str) -> Vec<u8>;
    fn opt_bytes(&self, c: &str) -> Option<Vec<u8>>;
    fn int(&self, c: &str) -> i64;
}

macro_rules! row_like {
    ($t:ty) => {
        impl RowLike for $t {
            fn text(&self, c: &str) -> String {
                self.get(c)
            }
            fn opt_text(&self, c: &str) -> Option<String> {
                self.get(c)
            }
            fn bytes(&self, c: &str) -> Vec<u8> {
                self.get(c)
            }
            fn opt_bytes(&self, c: &str) -> Option<Vec<u8>> {
                self.get(c)
            }
            fn int(&self, c: &str) -> i64 {
                self.get(c)
            }
        }
    };
}
row_like!(sqlx::postgres::PgRow);
row_like!(sqlx::sqlite::SqliteRow);

const SELECT: &str =
    "SELECT user_id, device_id, request, expires_at, approved_by, approval FROM device_links";

impl LinkStore for PgStore {
    async fn create_link(&self, l: NewLink<'_>) -> Result<bool> {
        sqlx::query("DELETE FROM device_links WHERE expires_at < $1")
            .bind(l.now - KEEP_EXPIRED_MS)
            .execute(self.pool())
            .await?;
        let n = sqlx::query(
            "INSERT INTO device_links (link_id, user_id, device_id, request, created_at, expires_at)
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (link_id) DO NOTHING",
        )
        .bind(l.link_id)
        .bind(l.user_id.as_str())
        .bind(l.device_id.as_str())
        .bind(l.request)
        .bind(l.now)
        .bind(l.expires_at)
        .execute(self.pool())
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    async fn link(&self, link_id: &str) -> Result<Option<LinkRow>> {
        sqlx::query(&format!("{SELECT} WHERE link_id = $1"))
            .bind(link_id)
            .fetch_optional(self.pool())
            .await?
            .as_ref()
            .map(row)
            .transpose()
    }

    async fn approve_link(
        &self,
        link_id: &str,
        approver: &DeviceId,
        approval: &[u8],
        now: i64,
    ) -> Result<bool> {
        let n = sqlx::query(
            "UPDATE device_links SET approved_by = $2, approval = $3
             WHERE link_id = $1 AND approved_by IS NULL AND expires_at > $4",
        )
        .bind(link_id)
        .bind(approver.as_str())
        .bind(approval)
        .bind(now)
        .execute(self.pool())
        .await?
        .rows_affected();
        Ok(n == 1)
    }
}

impl LinkStore for SqliteStore {
    async fn create_link(&self, l: NewLink<'_>) -> Result<bool> {
        let mut tx = self.write_tx().await?;
        sqlx::query("DELETE FROM device_links WHERE expires_at < ?1")
            .bind(l.now - KEEP_EXPIRED_MS)
            .execute(&mut *tx)
            .await?;
        let n = sqlx::query(
            "INSERT INTO device_links (link_id, user_id, device_id, request, created_at, expires_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (link_id) DO NOTHING",
        )
        .bind(l.link_id)
        .bind(l.user_id.as_str())
        .bind(l.device_id.as_str())
        .bind(l.request)
        .bind(l.now)
        .bind(l.expires_at)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(n == 1)
    }

    async fn link(&self, link_id: &str) -> Result<Option<LinkRow>> {
        sqlx::query(&format!("{SELECT} WHERE link_id = ?1"))
            .bind(link_id)
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(row)
            .transpose()
    }

    async fn approve_link(
        &self,
        link_id: &str,
        approver: &DeviceId,
        approval: &[u8],
        now: i64,
    ) -> Result<bool> {
        let mut tx = self.write_tx().await?;
        let n = sqlx::query(
            "UPDATE device_links SET approved_by = ?2, approval = ?3
             WHERE link_id = ?1 AND approved_by IS NULL AND expires_at > ?4",
        )
        .bind(link_id)
        .bind(approver.as_str())
        .bind(approval)
        .bind(now)
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

impl LinkStore for AnyStore {
    async fn create_link(&self, link: NewLink<'_>) -> Result<bool> {
        dispatch!(self, s => s.create_link(link).await)
    }
    async fn link(&self, link_id: &str) -> Result<Option<LinkRow>> {
        dispatch!(self, s => s.link(link_id).await)
    }
    async fn approve_link(
        &self,
        link_id: &str,
        approver: &DeviceId,
        approval: &[u8],
        now: i64,
    ) -> Result<bool> {
        dispatch!(self, s => s.approve_link(link_id, approver, approval, now).await)
    }
}
