//! Read-receipt privacy (`spec/messaging.md` MS40–MS47): a user's setting (`presence.
//! read_receipts`, migration 0014) and a chat's policy (`chats.read_receipts`). The pure
//! [`ReceiptPolicy::mask`] decides what a viewer may see of a member's receipt; every
//! receipt this server writes into an inbox (`upsert_receipts` of both backends), serves
//! (`GET /v1/chats/{chat}/receipts`) or sends to another server passes through it.
//!
//! Only what this server knows is enforced here: the settings of its own users and the
//! policies of the chats it holds (as hub or follower copy). A remote user's setting is
//! enforced by that user's server, which never sends their read receipt.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;

use parley_client_api::http::chats::Receipt;
use parley_client_api::{ChatId, DeviceId, UserId};
use sqlx::{Postgres, Sqlite, Transaction};

use super::pg::PgStore;
use super::plan::ReceiptRow;
use super::sqlite::{SqliteStore, json_list};
use super::{AnyStore, Result, id};

/// Who turned read receipts off, and which chats forbid them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReceiptPolicy {
    /// Local users whose setting is off.
    pub off: BTreeSet<UserId>,
    /// Chats whose policy forbids read receipts.
    pub forbidden: BTreeSet<ChatId>,
}

impl ReceiptPolicy {
    /// Whether `viewer` may see `subject`'s read receipts in `chat` (`None`: another
    /// server). One's own are always visible.
    pub fn shows_read(&self, chat: &ChatId, subject: &UserId, viewer: Option<&UserId>) -> bool {
        if viewer == Some(subject) {
            return true;
        }
        !(self.forbidden.contains(chat)
            || self.off.contains(subject)
            || viewer.is_some_and(|v| self.off.contains(v)))
    }

    /// The receipt as `viewer` may see it: the read part hidden (0) when the policy
    /// says so; delivered always stays.
    pub fn mask(&self, chat: &ChatId, viewer: Option<&UserId>, receipt: Receipt) -> Receipt {
        if self.shows_read(chat, &receipt.user_id, viewer) {
            receipt
        } else {
            Receipt {
                read_seq: 0,
                ..receipt
            }
        }
    }

    /// Masks receipt rows for their devices' users (`owner` of each device).
    pub fn mask_rows(
        &self,
        rows: Vec<ReceiptRow>,
        owner: &HashMap<DeviceId, UserId>,
    ) -> Vec<ReceiptRow> {
        rows.into_iter()
            .map(|r| {
                let receipt = self.mask(&r.chat_id, owner.get(&r.device_id), r.receipt);
                ReceiptRow { receipt, ..r }
            })
            .collect()
    }
}

pub trait ReceiptPolicyStore: Send + Sync + 'static {
    /// A user's setting (`true` when never set).
    fn read_receipts_enabled(&self, user: &UserId) -> impl Future<Output = Result<bool>> + Send;
    fn set_read_receipts(
        &self,
        user: &UserId,
        enabled: bool,
    ) -> impl Future<Output = Result<()>> + Send;
    /// The policy for these chats and users.
    fn receipt_policy(
        &self,
        chats: &[ChatId],
        users: &[UserId],
    ) -> impl Future<Output = Result<ReceiptPolicy>> + Send;
}

/// The policy for the chats and users (viewers and subjects) of `rows`, and each
/// row's device's user, read inside the transaction that writes them.
pub(crate) async fn for_rows_pg(
    tx: &mut Transaction<'_, Postgres>,
    rows: &[ReceiptRow],
) -> Result<(ReceiptPolicy, HashMap<DeviceId, UserId>)> {
    let devices: BTreeSet<String> = rows.iter().map(|r| r.device_id.to_string()).collect();
    let owners: Vec<(String, String)> =
        sqlx::query_as("SELECT device_id, user_id FROM devices WHERE device_id = ANY($1)")
            .bind(devices.into_iter().collect::<Vec<_>>())
            .fetch_all(&mut **tx)
            .await?;
    let owner = owners_map(owners)?;
    let (chats, users) = keys(rows, &owner);
    let off: Vec<String> = sqlx::query_scalar(
        "SELECT user_id FROM presence WHERE read_receipts = FALSE AND user_id = ANY($1)",
    )
    .bind(&users)
    .fetch_all(&mut **tx)
    .await?;
    let forbidden: Vec<String> = sqlx::query_scalar(
        "SELECT chat_id FROM chats WHERE read_receipts = FALSE AND chat_id = ANY($1)",
    )
    .bind(&chats)
    .fetch_all(&mut **tx)
    .await?;
    Ok((policy(off, forbidden)?, owner))
}

pub(crate) async fn for_rows_sqlite(
    tx: &mut Transaction<'_, Sqlite>,
    rows: &[ReceiptRow],
) -> Result<(ReceiptPolicy, HashMap<DeviceId, UserId>)> {
    let devices: BTreeSet<String> = rows.iter().map(|r| r.device_id.to_string()).collect();
    let owners: Vec<(String, String)> = sqlx::query_as(
        "SELECT device_id, user_id FROM devices WHERE device_id IN (SELECT value FROM json_each(?1))",
    )
    .bind(json_list(&devices))
    .fetch_all(&mut **tx)
    .await?;
    let owner = owners_map(owners)?;
    let (chats, users) = keys(rows, &owner);
    let off: Vec<String> = sqlx::query_scalar(
        "SELECT user_id FROM presence
         WHERE read_receipts = 0 AND user_id IN (SELECT value FROM json_each(?1))",
    )
    .bind(json_list(&users))
    .fetch_all(&mut **tx)
    .await?;
    let forbidden: Vec<String> = sqlx::query_scalar(
        "SELECT chat_id FROM chats
         WHERE read_receipts = 0 AND chat_id IN (SELECT value FROM json_each(?1))",
    )
    .bind(json_list(&chats))
    .fetch_all(&mut **tx)
    .await?;
    Ok((policy(off, forbidden)?, owner))
}

fn owners_map(rows: Vec<(String, String)>) -> Result<HashMap<DeviceId, UserId>> {
    rows.into_iter()
        .map(|(d, u)| Ok((id(d)?, id(u)?)))
        .collect()
}

fn keys(rows: &[ReceiptRow], owner: &HashMap<DeviceId, UserId>) -> (Vec<String>, Vec<String>) {
    let chats: BTreeSet<String> = rows.iter().map(|r| r.chat_id.to_string()).collect();
    let users: BTreeSet<String> = rows
        .iter()
        .map(|r| r.receipt.user_id.to_string())
        .chain(owner.values().map(UserId::to_string))
        .collect();
    (chats.into_iter().collect(), users.into_iter().collect())
}

fn policy(off: Vec<String>, forbidden: Vec<String>) -> Result<ReceiptPolicy> {
    Ok(ReceiptPolicy {
        off: off.into_iter().map(id).collect::<Result<_>>()?,
        forbidden: forbidden.into_iter().map(id).collect::<Result<_>>()?,
    })
}

impl ReceiptPolicyStore for PgStore {
    async fn read_receipts_enabled(&self, user: &UserId) -> Result<bool> {
        let v: Option<bool> =
            sqlx::query_scalar("SELECT read_receipts FROM presence WHERE user_id = $1")
                .bind(user.as_str())
                .fetch_optional(self.pool())
                .await?;
        Ok(v.unwrap_or(true))
    }

    async fn set_read_receipts(&self, user: &UserId, enabled: bool) -> Result<()> {
        sqlx::query(
            "INSERT INTO presence (user_id, read_receipts) VALUES ($1, $2)
             ON CONFLICT (user_id) DO UPDATE SET read_receipts = EXCLUDED.read_receipts",
        )
        .bind(user.as_str())
        .bind(enabled)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    async fn receipt_policy(&self, chats: &[ChatId], users: &[UserId]) -> Result<ReceiptPolicy> {
        let off: Vec<String> = sqlx::query_scalar(
            "SELECT user_id FROM presence WHERE read_receipts = FALSE AND user_id = ANY($1)",
        )
        .bind(users.iter().map(UserId::to_string).collect::<Vec<_>>())
        .fetch_all(self.pool())
        .await?;
        let forbidden: Vec<String> = sqlx::query_scalar(
            "SELECT chat_id FROM chats WHERE read_receipts = FALSE AND chat_id = ANY($1)",
        )
        .bind(chats.iter().map(ChatId::to_string).collect::<Vec<_>>())
        .fetch_all(self.pool())
        .await?;
        policy(off, forbidden)
    }
}

impl ReceiptPolicyStore for SqliteStore {
    async fn read_receipts_enabled(&self, user: &UserId) -> Result<bool> {
        let v: Option<bool> =
            sqlx::query_scalar("SELECT read_receipts FROM presence WHERE user_id = ?1")
                .bind(user.as_str())
                .fetch_optional(&self.pool)
                .await?;
        Ok(v.unwrap_or(true))
    }

    async fn set_read_receipts(&self, user: &UserId, enabled: bool) -> Result<()> {
        sqlx::query(
            "INSERT INTO presence (user_id, read_receipts) VALUES (?1, ?2)
             ON CONFLICT (user_id) DO UPDATE SET read_receipts = excluded.read_receipts",
        )
        .bind(user.as_str())
        .bind(enabled)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn receipt_policy(&self, chats: &[ChatId], users: &[UserId]) -> Result<ReceiptPolicy> {
        let off: Vec<String> = sqlx::query_scalar(
            "SELECT user_id FROM presence
             WHERE read_receipts = 0 AND user_id IN (SELECT value FROM json_each(?1))",
        )
        .bind(json_list(users.iter().map(UserId::as_str)))
        .fetch_all(&self.pool)
        .await?;
        let forbidden: Vec<String> = sqlx::query_scalar(
            "SELECT chat_id FROM chats
             WHERE read_receipts = 0 AND chat_id IN (SELECT value FROM json_each(?1))",
        )
        .bind(json_list(chats.iter().map(ChatId::as_str)))
        .fetch_all(&self.pool)
        .await?;
        policy(off, forbidden)
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

impl ReceiptPolicyStore for AnyStore {
    async fn read_receipts_enabled(&self, user: &UserId) -> Result<bool> {
        dispatch!(self, s => s.read_receipts_enabled(user).await)
    }
    async fn set_read_receipts(&self, user: &UserId, enabled: bool) -> Result<()> {
        dispatch!(self, s => s.set_read_receipts(user, enabled).await)
    }
    async fn receipt_policy(&self, chats: &[ChatId], users: &[UserId]) -> Result<ReceiptPolicy> {
        dispatch!(self, s => s.receipt_policy(chats, users).await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u(s: &str) -> UserId {
        UserId::try_from(format!("@{s}:x.org")).unwrap()
    }
    fn c(s: &str) -> ChatId {
        ChatId::try_from(format!("!{s}:x.org")).unwrap()
    }
    fn r(user: &str) -> Receipt {
        Receipt {
            user_id: u(user),
            delivered_seq: 5,
            read_seq: 4,
        }
    }

    #[test]
    fn off_users_neither_send_nor_see_read_receipts_and_delivered_stays() {
        let p = ReceiptPolicy {
            off: [u("bob")].into(),
            forbidden: [c("quiet")].into(),
        };
        let chat = c("a");
        // Bob's receipt to Alice: read hidden, delivered kept.
        assert_eq!(p.mask(&chat, Some(&u("alice")), r("bob")).read_seq, 0);
        assert_eq!(p.mask(&chat, Some(&u("alice")), r("bob")).delivered_seq, 5);
        // Alice's receipt to Bob: hidden too (reciprocal).
        assert_eq!(p.mask(&chat, Some(&u("bob")), r("alice")).read_seq, 0);
        // Bob's own receipt on his other devices: kept.
        assert_eq!(p.mask(&chat, Some(&u("bob")), r("bob")).read_seq, 4);
        // Alice and Carol: shown; another server: shown unless Bob's.
        assert_eq!(p.mask(&chat, Some(&u("carol")), r("alice")).read_seq, 4);
        assert_eq!(p.mask(&chat, None, r("alice")).read_seq, 4);
        assert_eq!(p.mask(&chat, None, r("bob")).read_seq, 0);
        // A chat that forbids them: nobody's, except one's own.
        assert_eq!(
            p.mask(&c("quiet"), Some(&u("carol")), r("alice")).read_seq,
            0
        );
        assert_eq!(p.mask(&c("quiet"), None, r("alice")).read_seq, 0);
        assert_eq!(
            p.mask(&c("quiet"), Some(&u("alice")), r("alice")).read_seq,
            4
        );
    }
}
