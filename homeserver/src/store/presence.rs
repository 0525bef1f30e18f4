//! Presence and push storage: privacy settings, stored last seen, pushers. A separate
//! trait from [`super::Store`] so these tables stay in one place (migration 0008); both
//! backends are implemented here, as the queries are small and the same but for
//! placeholders. Every method is one transaction.

use std::future::Future;

use parley_client_api::http::presence::Visibility;
use parley_client_api::{DeviceId, UserId};
use sqlx::Row;

use super::pg::PgStore;
use super::sqlite::SqliteStore;
use super::{AnyStore, Result, StoreError, id};

/// A stored pusher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PusherRow {
    pub device_id: DeviceId,
    pub user_id: UserId,
    pub url: String,
    pub token: String,
    pub created_at: i64,
}

pub trait PresenceStore: Send + Sync + 'static {
    /// A user's setting (`everyone` when never set) and stored last seen.
    fn presence_row(
        &self,
        user: &UserId,
    ) -> impl Future<Output = Result<(Visibility, Option<i64>)>> + Send;
    fn set_visibility(
        &self,
        user: &UserId,
        visibility: Visibility,
    ) -> impl Future<Output = Result<()>> + Send;
    /// Raises each user's stored last seen to the given time (never lowers it).
    fn save_last_seen(&self, rows: &[(UserId, i64)]) -> impl Future<Output = Result<()>> + Send;
    /// Everyone who shares a current chat with `user` (not `user`), with their setting.
    fn chat_peers(
        &self,
        user: &UserId,
    ) -> impl Future<Output = Result<Vec<(UserId, Visibility)>>> + Send;
    /// Sets (or replaces) a device's pusher.
    fn set_pusher(&self, row: &PusherRow) -> impl Future<Output = Result<()>> + Send;
    /// A user's pushers (of devices that still exist), by device id.
    fn pushers(&self, user: &UserId) -> impl Future<Output = Result<Vec<PusherRow>>> + Send;
    /// The pusher of a device that still exists.
    fn pusher_of(
        &self,
        device: &DeviceId,
    ) -> impl Future<Output = Result<Option<PusherRow>>> + Send;
    /// False if the user's device has no pusher.
    fn delete_pusher(
        &self,
        user: &UserId,
        device: &DeviceId,
    ) -> impl Future<Output = Result<bool>> + Send;
}

pub(crate) fn visibility_to_i16(v: Visibility) -> i16 {
    match v {
        Visibility::Everyone => 0,
        Visibility::Contacts => 1,
        Visibility::Nobody => 2,
    }
}

pub(crate) fn visibility_from_i16(v: i16) -> Result<Visibility> {
    Ok(match v {
        0 => Visibility::Everyone,
        1 => Visibility::Contacts,
        2 => Visibility::Nobody,
        other => return Err(StoreError::Corrupt(format!("visibility {other}"))),
    })
}

type PusherTuple = (String, String, String, String, i64);

fn pusher_row((device_id, user_id, url, token, created_at): PusherTuple) -> Result<PusherRow> {
    Ok(PusherRow {
        device_id: id(device_id)?,
        user_id: id(user_id)?,
        url,
        token,
        created_at,
    })
}

const PEERS_PG: &str =
    "SELECT DISTINCT o.user_id, COALESCE(p.visibility, 0::smallint) AS visibility
     FROM chat_members m
     JOIN chat_members o ON o.chat_id = m.chat_id AND o.left_at IS NULL AND o.user_id <> m.user_id
     LEFT JOIN presence p ON p.user_id = o.user_id
     WHERE m.user_id = $1 AND m.left_at IS NULL";

const PEERS_SQLITE: &str = "SELECT DISTINCT o.user_id, COALESCE(p.visibility, 0) AS visibility
     FROM chat_members m
     JOIN chat_members o ON o.chat_id = m.chat_id AND o.left_at IS NULL AND o.user_id <> m.user_id
     LEFT JOIN presence p ON p.user_id = o.user_id
     WHERE m.user_id = ?1 AND m.left_at IS NULL";

impl PresenceStore for PgStore {
    async fn presence_row(&self, user: &UserId) -> Result<(Visibility, Option<i64>)> {
        let row = sqlx::query("SELECT visibility, last_seen FROM presence WHERE user_id = $1")
            .bind(user.as_str())
            .fetch_optional(self.pool())
            .await?;
        match row {
            None => Ok((Visibility::Everyone, None)),
            Some(r) => Ok((
                visibility_from_i16(r.get("visibility"))?,
                r.get("last_seen"),
            )),
        }
    }

    async fn set_visibility(&self, user: &UserId, visibility: Visibility) -> Result<()> {
        sqlx::query(
            "INSERT INTO presence (user_id, visibility) VALUES ($1, $2)
             ON CONFLICT (user_id) DO UPDATE SET visibility = EXCLUDED.visibility",
        )
        .bind(user.as_str())
        .bind(visibility_to_i16(visibility))
        .execute(self.pool())
        .await?;
        Ok(())
    }

    async fn save_last_seen(&self, rows: &[(UserId, i64)]) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let users: Vec<&str> = rows.iter().map(|(u, _)| u.as_str()).collect();
        let times: Vec<i64> = rows.iter().map(|(_, t)| *t).collect();
        sqlx::query(
            "INSERT INTO presence (user_id, last_seen)
             SELECT * FROM UNNEST($1::text[], $2::bigint[])
             ON CONFLICT (user_id) DO UPDATE
               SET last_seen = GREATEST(presence.last_seen, EXCLUDED.last_seen)",
        )
        .bind(&users)
        .bind(&times)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    async fn chat_peers(&self, user: &UserId) -> Result<Vec<(UserId, Visibility)>> {
        let rows = sqlx::query(PEERS_PG)
            .bind(user.as_str())
            .fetch_all(self.pool())
            .await?;
        rows.into_iter()
            .map(|r| {
                Ok((
                    id(r.get("user_id"))?,
                    visibility_from_i16(r.get("visibility"))?,
                ))
            })
            .collect()
    }

    async fn set_pusher(&self, row: &PusherRow) -> Result<()> {
        sqlx::query(
            "INSERT INTO pushers (device_id, user_id, url, token, created_at)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (device_id) DO UPDATE
               SET user_id = EXCLUDED.user_id, url = EXCLUDED.url, token = EXCLUDED.token,
                   created_at = EXCLUDED.created_at",
        )
        .bind(row.device_id.as_str())
        .bind(row.user_id.as_str())
        .bind(&row.url)
        .bind(&row.token)
        .bind(row.created_at)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    async fn pushers(&self, user: &UserId) -> Result<Vec<PusherRow>> {
        let rows = sqlx::query_as::<_, PusherTuple>(
            "SELECT p.device_id, p.user_id, p.url, p.token, p.created_at
             FROM pushers p JOIN devices d ON d.device_id = p.device_id
             WHERE p.user_id = $1 ORDER BY p.device_id",
        )
        .bind(user.as_str())
        .fetch_all(self.pool())
        .await?;
        rows.into_iter().map(pusher_row).collect()
    }

    async fn pusher_of(&self, device: &DeviceId) -> Result<Option<PusherRow>> {
        sqlx::query_as::<_, PusherTuple>(
            "SELECT p.device_id, p.user_id, p.url, p.token, p.created_at
             FROM pushers p JOIN devices d ON d.device_id = p.device_id
             WHERE p.device_id = $1",
        )
        .bind(device.as_str())
        .fetch_optional(self.pool())
        .await?
        .map(pusher_row)
        .transpose()
    }

    async fn delete_pusher(&self, user: &UserId, device: &DeviceId) -> Result<bool> {
        let n = sqlx::query("DELETE FROM pushers WHERE device_id = $1 AND user_id = $2")
            .bind(device.as_str())
            .bind(user.as_str())
            .execute(self.pool())
            .await?
            .rows_affected();
        Ok(n == 1)
    }
}

impl PresenceStore for SqliteStore {
    async fn presence_row(&self, user: &UserId) -> Result<(Visibility, Option<i64>)> {
        let row = sqlx::query("SELECT visibility, last_seen FROM presence WHERE user_id = ?1")
            .bind(user.as_str())
            .fetch_optional(&self.pool)
            .await?;
        match row {
            None => Ok((Visibility::Everyone, None)),
            Some(r) => Ok((
                visibility_from_i16(r.get("visibility"))?,
                r.get("last_seen"),
            )),
        }
    }

    async fn set_visibility(&self, user: &UserId, visibility: Visibility) -> Result<()> {
        let mut tx = self.write_tx().await?;
        sqlx::query(
            "INSERT INTO presence (user_id, visibility) VALUES (?1, ?2)
             ON CONFLICT (user_id) DO UPDATE SET visibility = excluded.visibility",
        )
        .bind(user.as_str())
        .bind(visibility_to_i16(visibility))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn save_last_seen(&self, rows: &[(UserId, i64)]) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let mut tx = self.write_tx().await?;
        for (user, at) in rows {
            sqlx::query(
                "INSERT INTO presence (user_id, last_seen) VALUES (?1, ?2)
                 ON CONFLICT (user_id) DO UPDATE
                   SET last_seen = MAX(COALESCE(last_seen, 0), excluded.last_seen)",
            )
            .bind(user.as_str())
            .bind(at)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn chat_peers(&self, user: &UserId) -> Result<Vec<(UserId, Visibility)>> {
        let rows = sqlx::query(PEERS_SQLITE)
            .bind(user.as_str())
            .fetch_all(&self.pool)
            .await?;
        rows.into_iter()
            .map(|r| {
                Ok((
                    id(r.get("user_id"))?,
                    visibility_from_i16(r.get("visibility"))?,
                ))
            })
            .collect()
    }

    async fn set_pusher(&self, row: &PusherRow) -> Result<()> {
        let mut tx = self.write_tx().await?;
        sqlx::query(
            "INSERT INTO pushers (device_id, user_id, url, token, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (device_id) DO UPDATE
               SET user_id = excluded.user_id, url = excluded.url, token = excluded.token,
                   created_at = excluded.created_at",
        )
        .bind(row.device_id.as_str())
        .bind(row.user_id.as_str())
        .bind(&row.url)
        .bind(&row.token)
        .bind(row.created_at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn pushers(&self, user: &UserId) -> Result<Vec<PusherRow>> {
        let rows = sqlx::query_as::<_, PusherTuple>(
            "SELECT p.device_id, p.user_id, p.url, p.token, p.created_at
             FROM pushers p JOIN devices d ON d.device_id = p.device_id
             WHERE p.user_id = ?1 ORDER BY p.device_id",
        )
        .bind(user.as_str())
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(pusher_row).collect()
    }

    async fn pusher_of(&self, device: &DeviceId) -> Result<Option<PusherRow>> {
        sqlx::query_as::<_, PusherTuple>(
            "SELECT p.device_id, p.user_id, p.url, p.token, p.created_at
             FROM pushers p JOIN devices d ON d.device_id = p.device_id
             WHERE p.device_id = ?1",
        )
        .bind(device.as_str())
        .fetch_optional(&self.pool)
        .await?
        .map(pusher_row)
        .transpose()
    }

    async fn delete_pusher(&self, user: &UserId, device: &DeviceId) -> Result<bool> {
        let mut tx = self.write_tx().await?;
        let n = sqlx::query("DELETE FROM pushers WHERE device_id = ?1 AND user_id = ?2")
            .bind(device.as_str())
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

impl PresenceStore for AnyStore {
    async fn presence_row(&self, user: &UserId) -> Result<(Visibility, Option<i64>)> {
        dispatch!(self, s => s.presence_row(user).await)
    }
    async fn set_visibility(&self, user: &UserId, visibility: Visibility) -> Result<()> {
        dispatch!(self, s => s.set_visibility(user, visibility).await)
    }
    async fn save_last_seen(&self, rows: &[(UserId, i64)]) -> Result<()> {
        dispatch!(self, s => s.save_last_seen(rows).await)
    }
    async fn chat_peers(&self, user: &UserId) -> Result<Vec<(UserId, Visibility)>> {
        dispatch!(self, s => s.chat_peers(user).await)
    }
    async fn set_pusher(&self, row: &PusherRow) -> Result<()> {
        dispatch!(self, s => s.set_pusher(row).await)
    }
    async fn pushers(&self, user: &UserId) -> Result<Vec<PusherRow>> {
        dispatch!(self, s => s.pushers(user).await)
    }
    async fn pusher_of(&self, device: &DeviceId) -> Result<Option<PusherRow>> {
        dispatch!(self, s => s.pusher_of(device).await)
    }
    async fn delete_pusher(&self, user: &UserId, device: &DeviceId) -> Result<bool> {
        dispatch!(self, s => s.delete_pusher(user, device).await)
    }
}
