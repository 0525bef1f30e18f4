//! Block lists (migration 0012, `service::blocking`): one row per period a local user
//! blocked someone. A separate trait from [`super::Store`] so the table stays in one
//! place; both backends are here. The pure rule of what a block withholds is
//! [`withheld`]; the send and federation transactions read the periods with
//! [`periods_pg`] / [`periods_sqlite`] (Postgres sends: within the heads' statement,
//! [`periods_from_json`]) and ask it.

use std::future::Future;

use std::collections::HashMap;

use parley_client_api::http::chats::{ChatEvent, ChatKind, MembershipChange, MlsKind, MlsMeta};
use parley_client_api::{ChatId, DeviceId, UserId};
use sqlx::{PgConnection, SqliteConnection};

use super::pg::PgStore;
use super::plan::{ChatState, SendPlan};
use super::sqlite::SqliteStore;
use super::{AnyStore, Result, SendRequest, StoreError, id};

/// A period during which `blocker` (a local user) blocked `blocked`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockPeriod {
    pub blocker: UserId,
    pub blocked: UserId,
    pub since: i64,
    /// None: still blocked.
    pub until: Option<i64>,
}

impl BlockPeriod {
    fn covers(&self, ts: i64) -> bool {
        self.since <= ts && self.until.is_none_or(|u| ts < u)
    }
}

/// What a block withholds (MS21–MS23): an event from `sender` is not delivered to
/// `recipient` (or served to them from history) if `recipient` blocked `sender` at the
/// event's time `ts` and the event is
/// - an application message in a 1:1 chat, or
/// - an invitation: a commit that starts the chat (`seq` 1) or adds `recipient`.
///
/// Other handshakes (a group's commits) are delivered: the blocker's devices must stay
/// in step with the chat's MLS epochs, or nothing after an unblock would decrypt.
#[allow(clippy::too_many_arguments)]
pub fn withheld(
    periods: &[BlockPeriod],
    recipient: &UserId,
    sender: &UserId,
    ts: i64,
    kind: ChatKind,
    seq: i64,
    mls: Option<MlsMeta>,
    membership: Option<&MembershipChange>,
) -> bool {
    let blocked = periods
        .iter()
        .any(|p| &p.blocker == recipient && &p.blocked == sender && p.covers(ts));
    if !blocked {
        return false;
    }
    match mls.map(|m| m.kind) {
        None | Some(MlsKind::Application) => kind == ChatKind::Direct,
        Some(MlsKind::Commit) => seq == 1 || membership.is_some_and(|m| m.add.contains(recipient)),
        Some(_) => false,
    }
}

/// [`withheld`] for a stored event of a chat of `kind`.
pub fn event_withheld(
    periods: &[BlockPeriod],
    recipient: &UserId,
    kind: ChatKind,
    e: &ChatEvent,
) -> bool {
    withheld(
        periods,
        recipient,
        &e.sender,
        e.ts,
        kind,
        e.seq,
        e.mls,
        e.membership.as_ref(),
    )
}

/// Drops from a send plan the inbox rows a block withholds ([`withheld`]); `chats` and
/// `users` are what the planner read (members' and added users' devices).
pub fn withhold_inbox(
    plan: &mut SendPlan,
    batch: &[SendRequest],
    chats: &HashMap<ChatId, ChatState>,
    users: &HashMap<UserId, Vec<DeviceId>>,
    periods: &[BlockPeriod],
) {
    if periods.is_empty() {
        return;
    }
    let owner = |chat: &ChatId, device: &DeviceId| -> Option<UserId> {
        chats
            .get(chat)
            .and_then(|c| {
                c.members
                    .iter()
                    .find(|(_, m)| m.devices.contains(device))
                    .map(|(u, _)| u.clone())
            })
            .or_else(|| {
                users
                    .iter()
                    .find(|(_, ds)| ds.contains(device))
                    .map(|(u, _)| u.clone())
            })
    };
    let events: HashMap<(ChatId, i64), usize> = plan
        .events
        .iter()
        .map(|(i, seq)| ((batch[*i].chat_id.clone(), *seq), *i))
        .collect();
    plan.inbox.retain(|row| {
        let Some(&i) = events.get(&(row.chat_id.clone(), row.seq)) else {
            return true;
        };
        let req = &batch[i];
        let Some(kind) = chats.get(&req.chat_id).map(|c| c.kind) else {
            return true;
        };
        let Some(user) = owner(&req.chat_id, &row.device_id) else {
            return true;
        };
        !withheld(
            periods,
            &user,
            &req.sender,
            req.ts,
            kind,
            row.seq,
            req.mls,
            req.membership.as_ref(),
        )
    });
}

pub trait BlockStore: Send + Sync + 'static {
    /// Blocks `blocked` for `blocker` from `at` (a lasting block stays as it is);
    /// returns since when.
    fn block(
        &self,
        blocker: &UserId,
        blocked: &UserId,
        at: i64,
    ) -> impl Future<Output = Result<i64>> + Send;
    /// Ends a lasting block at `at`; false if there was none.
    fn unblock(
        &self,
        blocker: &UserId,
        blocked: &UserId,
        at: i64,
    ) -> impl Future<Output = Result<bool>> + Send;
    /// The users `blocker` blocks now, with since when.
    fn blocked_by(
        &self,
        blocker: &UserId,
    ) -> impl Future<Output = Result<Vec<(UserId, i64)>>> + Send;
    /// Every period in which `blocker` blocked someone (for history).
    fn periods_of(&self, blocker: &UserId)
    -> impl Future<Output = Result<Vec<BlockPeriod>>> + Send;
    /// The lasting blocks between `user` and anyone, both ways: `(blocker, blocked)`.
    fn lasting_around(
        &self,
        user: &UserId,
    ) -> impl Future<Output = Result<Vec<(UserId, UserId)>>> + Send;
}

type PeriodTuple = (String, String, i64, Option<i64>);

fn period((blocker, blocked, since, until): PeriodTuple) -> Result<BlockPeriod> {
    Ok(BlockPeriod {
        blocker: id(blocker)?,
        blocked: id(blocked)?,
        since,
        until,
    })
}

/// Inside a send transaction (Postgres): the periods in which anyone blocked one of
/// `senders`.
pub(crate) async fn periods_pg(
    conn: &mut PgConnection,
    senders: &[&str],
) -> Result<Vec<BlockPeriod>> {
    if senders.is_empty() {
        return Ok(Vec::new());
    }
    let rows: Vec<PeriodTuple> = sqlx::query_as(
        "SELECT blocker, blocked, since, until FROM user_blocks WHERE blocked = ANY($1)",
    )
    .bind(senders)
    .fetch_all(conn)
    .await?;
    rows.into_iter().map(period).collect()
}

/// The periods a Postgres statement returned as one JSON array of
/// `[blocker, blocked, since, until]` (`json_agg`; NULL when there are none).
pub(crate) fn periods_from_json(json: Option<String>) -> Result<Vec<BlockPeriod>> {
    let Some(json) = json else {
        return Ok(Vec::new());
    };
    let rows: Vec<PeriodTuple> =
        serde_json::from_str(&json).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    rows.into_iter().map(period).collect()
}

/// Inside a send transaction (SQLite): as [`periods_pg`].
pub(crate) async fn periods_sqlite(
    conn: &mut SqliteConnection,
    senders: &[&str],
) -> Result<Vec<BlockPeriod>> {
    if senders.is_empty() {
        return Ok(Vec::new());
    }
    let list = serde_json::to_string(senders).unwrap_or_else(|_| "[]".into());
    let rows: Vec<PeriodTuple> = sqlx::query_as(
        "SELECT blocker, blocked, since, until FROM user_blocks
         WHERE blocked IN (SELECT value FROM json_each(?1))",
    )
    .bind(list)
    .fetch_all(conn)
    .await?;
    rows.into_iter().map(period).collect()
}

impl BlockStore for PgStore {
    async fn block(&self, blocker: &UserId, blocked: &UserId, at: i64) -> Result<i64> {
        let mut tx = self.pool().begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
            .bind(blocker.as_str())
            .execute(&mut *tx)
            .await?;
        let open: Option<i64> = sqlx::query_scalar(
            "SELECT since FROM user_blocks WHERE blocker = $1 AND blocked = $2 AND until IS NULL",
        )
        .bind(blocker.as_str())
        .bind(blocked.as_str())
        .fetch_optional(&mut *tx)
        .await?;
        let since = match open {
            Some(s) => s,
            None => {
                sqlx::query(
                    "INSERT INTO user_blocks (blocker, blocked, since) VALUES ($1, $2, $3)
                     ON CONFLICT DO NOTHING",
                )
                .bind(blocker.as_str())
                .bind(blocked.as_str())
                .bind(at)
                .execute(&mut *tx)
                .await?;
                at
            }
        };
        tx.commit().await?;
        Ok(since)
    }

    async fn unblock(&self, blocker: &UserId, blocked: &UserId, at: i64) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE user_blocks SET until = GREATEST($3, since)
             WHERE blocker = $1 AND blocked = $2 AND until IS NULL",
        )
        .bind(blocker.as_str())
        .bind(blocked.as_str())
        .bind(at)
        .execute(self.pool())
        .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn blocked_by(&self, blocker: &UserId) -> Result<Vec<(UserId, i64)>> {
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT blocked, since FROM user_blocks WHERE blocker = $1 AND until IS NULL
             ORDER BY blocked",
        )
        .bind(blocker.as_str())
        .fetch_all(self.pool())
        .await?;
        rows.into_iter().map(|(u, s)| Ok((id(u)?, s))).collect()
    }

    async fn periods_of(&self, blocker: &UserId) -> Result<Vec<BlockPeriod>> {
        let rows: Vec<PeriodTuple> = sqlx::query_as(
            "SELECT blocker, blocked, since, until FROM user_blocks WHERE blocker = $1",
        )
        .bind(blocker.as_str())
        .fetch_all(self.pool())
        .await?;
        rows.into_iter().map(period).collect()
    }

    async fn lasting_around(&self, user: &UserId) -> Result<Vec<(UserId, UserId)>> {
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT blocker, blocked FROM user_blocks
             WHERE (blocker = $1 OR blocked = $1) AND until IS NULL",
        )
        .bind(user.as_str())
        .fetch_all(self.pool())
        .await?;
        rows.into_iter()
            .map(|(a, b)| Ok((id(a)?, id(b)?)))
            .collect()
    }
}

impl BlockStore for SqliteStore {
    async fn block(&self, blocker: &UserId, blocked: &UserId, at: i64) -> Result<i64> {
        let mut tx = self.write_tx().await?;
        let open: Option<i64> = sqlx::query_scalar(
            "SELECT since FROM user_blocks WHERE blocker = ?1 AND blocked = ?2 AND until IS NULL",
        )
        .bind(blocker.as_str())
        .bind(blocked.as_str())
        .fetch_optional(&mut *tx)
        .await?;
        let since = match open {
            Some(s) => s,
            None => {
                sqlx::query(
                    "INSERT INTO user_blocks (blocker, blocked, since) VALUES (?1, ?2, ?3)
                     ON CONFLICT DO NOTHING",
                )
                .bind(blocker.as_str())
                .bind(blocked.as_str())
                .bind(at)
                .execute(&mut *tx)
                .await?;
                at
            }
        };
        tx.commit().await?;
        Ok(since)
    }

    async fn unblock(&self, blocker: &UserId, blocked: &UserId, at: i64) -> Result<bool> {
        let mut tx = self.write_tx().await?;
        let done = sqlx::query(
            "UPDATE user_blocks SET until = MAX(?3, since)
             WHERE blocker = ?1 AND blocked = ?2 AND until IS NULL",
        )
        .bind(blocker.as_str())
        .bind(blocked.as_str())
        .bind(at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(done.rows_affected() > 0)
    }

    async fn blocked_by(&self, blocker: &UserId) -> Result<Vec<(UserId, i64)>> {
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT blocked, since FROM user_blocks WHERE blocker = ?1 AND until IS NULL
             ORDER BY blocked",
        )
        .bind(blocker.as_str())
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(|(u, s)| Ok((id(u)?, s))).collect()
    }

    async fn periods_of(&self, blocker: &UserId) -> Result<Vec<BlockPeriod>> {
        let rows: Vec<PeriodTuple> = sqlx::query_as(
            "SELECT blocker, blocked, since, until FROM user_blocks WHERE blocker = ?1",
        )
        .bind(blocker.as_str())
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(period).collect()
    }

    async fn lasting_around(&self, user: &UserId) -> Result<Vec<(UserId, UserId)>> {
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT blocker, blocked FROM user_blocks
             WHERE (blocker = ?1 OR blocked = ?1) AND until IS NULL",
        )
        .bind(user.as_str())
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|(a, b)| Ok((id(a)?, id(b)?)))
            .collect()
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

impl BlockStore for AnyStore {
    async fn block(&self, blocker: &UserId, blocked: &UserId, at: i64) -> Result<i64> {
        dispatch!(self, s => s.block(blocker, blocked, at).await)
    }
    async fn unblock(&self, blocker: &UserId, blocked: &UserId, at: i64) -> Result<bool> {
        dispatch!(self, s => s.unblock(blocker, blocked, at).await)
    }
    async fn blocked_by(&self, blocker: &UserId) -> Result<Vec<(UserId, i64)>> {
        dispatch!(self, s => s.blocked_by(blocker).await)
    }
    async fn periods_of(&self, blocker: &UserId) -> Result<Vec<BlockPeriod>> {
        dispatch!(self, s => s.periods_of(blocker).await)
    }
    async fn lasting_around(&self, user: &UserId) -> Result<Vec<(UserId, UserId)>> {
        dispatch!(self, s => s.lasting_around(user).await)
    }
}

#[cfg(test)]
mod tests {
    use parley_client_api::http::chats::{ChatKind, MembershipChange, MlsKind, MlsMeta};

    use super::*;

    fn u(s: &str) -> UserId {
        UserId::try_from(s).unwrap()
    }

    #[test]
    fn a_block_withholds_direct_messages_and_invites_during_its_period() {
        let (alice, bob) = (u("@alice:a.test"), u("@bob:b.test"));
        let p = vec![BlockPeriod {
            blocker: alice.clone(),
            blocked: bob.clone(),
            since: 100,
            until: Some(200),
        }];
        let app = Some(MlsMeta {
            kind: MlsKind::Application,
            epoch: 1,
        });
        let commit = Some(MlsMeta {
            kind: MlsKind::Commit,
            epoch: 1,
        });
        let w = |ts, kind, seq, mls, m: Option<&MembershipChange>| {
            withheld(&p, &alice, &bob, ts, kind, seq, mls, m)
        };
        assert!(w(150, ChatKind::Direct, 5, app, None));
        assert!(w(150, ChatKind::Direct, 5, None, None));
        // Outside the period, the other way round, or in a group: delivered.
        assert!(!w(99, ChatKind::Direct, 5, app, None));
        assert!(!w(200, ChatKind::Direct, 5, app, None));
        assert!(!withheld(
            &p,
            &bob,
            &alice,
            150,
            ChatKind::Direct,
            5,
            app,
            None
        ));
        assert!(!w(150, ChatKind::Group, 5, app, None));
        // Invitations are withheld; other commits keep the blocker's MLS state in step.
        assert!(w(150, ChatKind::Direct, 1, commit, None));
        let adds = MembershipChange {
            add: vec![alice.clone()],
            remove: vec![],
        };
        assert!(w(150, ChatKind::Group, 9, commit, Some(&adds)));
        assert!(!w(150, ChatKind::Group, 9, commit, None));
    }
}
