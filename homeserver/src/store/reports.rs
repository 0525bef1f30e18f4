//! Reports of abuse filed by local users for this server's admins (migration 0015,
//! `spec/messaging.md` MS50–MS56). Stored as filed: the attached messages are the
//! reporter's claim, kept as JSON.

use std::future::Future;

use parley_client_api::UserId;
use sqlx::Row;

use super::pg::PgStore;
use super::sqlite::SqliteStore;
use super::{AnyStore, Result, id};

/// A report to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewReport {
    pub reporter: UserId,
    /// `user`, `chat` or `message`.
    pub target_kind: &'static str,
    pub target_user: Option<String>,
    pub target_chat: Option<String>,
    pub target_seq: Option<i64>,
    pub reason: String,
    /// JSON array of the attached messages.
    pub messages: String,
    pub created_at: i64,
}

/// A stored report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportRow {
    pub id: i64,
    pub reporter: UserId,
    pub target_kind: String,
    pub target_user: Option<String>,
    pub target_chat: Option<String>,
    pub target_seq: Option<i64>,
    pub reason: String,
    pub messages: String,
    pub created_at: i64,
}

pub trait ReportStore: Send + Sync + 'static {
    /// Stores a report; returns its id.
    fn insert_report(&self, r: &NewReport) -> impl Future<Output = Result<i64>> + Send;
    /// Reports, newest first, at most `limit`.
    fn list_reports(&self, limit: i64) -> impl Future<Output = Result<Vec<ReportRow>>> + Send;
    fn report(&self, id: i64) -> impl Future<Output = Result<Option<ReportRow>>> + Send;
}

const COLUMNS: &str = "id, reporter, target_kind, target_user, target_chat, target_seq, reason,
                       messages, created_at";

fn row<R: Row>(r: &R) -> Result<ReportRow>
where
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    for<'a> i64: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> String: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Option<i64>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Option<String>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    Ok(ReportRow {
        id: r.try_get("id")?,
        reporter: id(r.try_get::<String, _>("reporter")?)?,
        target_kind: r.try_get("target_kind")?,
        target_user: r.try_get("target_user")?,
        target_chat: r.try_get("target_chat")?,
        target_seq: r.try_get("target_seq")?,
        reason: r.try_get("reason")?,
        messages: r.try_get("messages")?,
        created_at: r.try_get("created_at")?,
    })
}

impl ReportStore for PgStore {
    async fn insert_report(&self, r: &NewReport) -> Result<i64> {
        Ok(sqlx::query_scalar(
            "INSERT INTO reports (reporter, target_kind, target_user, target_chat, target_seq,
                                  reason, messages, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
        )
        .bind(r.reporter.as_str())
        .bind(r.target_kind)
        .bind(&r.target_user)
        .bind(&r.target_chat)
        .bind(r.target_seq)
        .bind(&r.reason)
        .bind(&r.messages)
        .bind(r.created_at)
        .fetch_one(self.pool())
        .await?)
    }

    async fn list_reports(&self, limit: i64) -> Result<Vec<ReportRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM reports ORDER BY id DESC LIMIT $1"
        ))
        .bind(limit)
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(row).collect()
    }

    async fn report(&self, report: i64) -> Result<Option<ReportRow>> {
        let r = sqlx::query(&format!("SELECT {COLUMNS} FROM reports WHERE id = $1"))
            .bind(report)
            .fetch_optional(self.pool())
            .await?;
        r.as_ref().map(row).transpose()
    }
}

impl ReportStore for SqliteStore {
    async fn insert_report(&self, r: &NewReport) -> Result<i64> {
        Ok(sqlx::query_scalar(
            "INSERT INTO reports (reporter, target_kind, target_user, target_chat, target_seq,
                                  reason, messages, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) RETURNING id",
        )
        .bind(r.reporter.as_str())
        .bind(r.target_kind)
        .bind(&r.target_user)
        .bind(&r.target_chat)
        .bind(r.target_seq)
        .bind(&r.reason)
        .bind(&r.messages)
        .bind(r.created_at)
        .fetch_one(&self.pool)
        .await?)
    }

    async fn list_reports(&self, limit: i64) -> Result<Vec<ReportRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM reports ORDER BY id DESC LIMIT ?1"
        ))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(row).collect()
    }

    async fn report(&self, report: i64) -> Result<Option<ReportRow>> {
        let r = sqlx::query(&format!("SELECT {COLUMNS} FROM reports WHERE id = ?1"))
            .bind(report)
            .fetch_optional(&self.pool)
            .await?;
        r.as_ref().map(row).transpose()
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

impl ReportStore for AnyStore {
    async fn insert_report(&self, r: &NewReport) -> Result<i64> {
        dispatch!(self, s => s.insert_report(r).await)
    }
    async fn list_reports(&self, limit: i64) -> Result<Vec<ReportRow>> {
        dispatch!(self, s => s.list_reports(limit).await)
    }
    async fn report(&self, report: i64) -> Result<Option<ReportRow>> {
        dispatch!(self, s => s.report(report).await)
    }
}
