//! Which devices users have, for routing ephemeral frames (typing, presence) between the
//! nodes of a domain: with a bus, a node addresses every device of the recipients and
//! the bus takes each item to the node holding that socket. A separate trait from
//! [`super::Store`]; both backends here.

use std::future::Future;

use parley_client_api::{DeviceId, UserId};

use super::pg::PgStore;
use super::sqlite::SqliteStore;
use super::{AnyStore, Result, id};

/// Most users asked about in one query (callers chunk longer lists).
const CHUNK: usize = 500;

pub trait DeviceDirectory: Send + Sync + 'static {
    /// The devices of `users` (local users; others have none here).
    fn devices_of(&self, users: &[UserId]) -> impl Future<Output = Result<Vec<DeviceId>>> + Send;
}

fn devices(rows: Vec<(String,)>) -> Result<Vec<DeviceId>> {
    rows.into_iter().map(|(d,)| id(d)).collect()
}

impl DeviceDirectory for PgStore {
    async fn devices_of(&self, users: &[UserId]) -> Result<Vec<DeviceId>> {
        let mut out = Vec::new();
        for chunk in users.chunks(CHUNK) {
            let names: Vec<&str> = chunk.iter().map(UserId::as_str).collect();
            out.extend(devices(
                sqlx::query_as("SELECT device_id FROM devices WHERE user_id = ANY($1)")
                    .bind(&names)
                    .fetch_all(self.pool())
                    .await?,
            )?);
        }
        Ok(out)
    }
}

impl DeviceDirectory for SqliteStore {
    async fn devices_of(&self, users: &[UserId]) -> Result<Vec<DeviceId>> {
        let mut out = Vec::new();
        for chunk in users.chunks(CHUNK) {
            let marks = vec!["?"; chunk.len()].join(", ");
            let sql = format!("SELECT device_id FROM devices WHERE user_id IN ({marks})");
            let mut q = sqlx::query_as(&sql);
            for u in chunk {
                q = q.bind(u.as_str());
            }
            out.extend(devices(q.fetch_all(&self.pool).await?)?);
        }
        Ok(out)
    }
}

impl DeviceDirectory for AnyStore {
    async fn devices_of(&self, users: &[UserId]) -> Result<Vec<DeviceId>> {
        match self {
            AnyStore::Postgres(s) => s.devices_of(users).await,
            AnyStore::Sqlite(s) => s.devices_of(users).await,
        }
    }
}
