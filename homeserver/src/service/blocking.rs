//! Blocking (`spec/messaging.md` MS20–MS27): a user's block list, and its enforcement
//! where this server delivers to its users. The send transaction (hub) and the
//! federation transaction (follower) withhold inbox rows with the pure
//! `store::blocks::withheld`; history served to a blocker is filtered the same way;
//! typing and presence are filtered through [`Blocking::hides`]. Nothing is ever
//! reported to the blocked user: their sends succeed as usual.

use parley_client_api::http::chats::ChatEvent;
use parley_client_api::{ChatId, UserId};

use super::ServiceError;
use crate::clock::now_ms;
use crate::store::blocks::{BlockStore, event_withheld};
use crate::store::{AnyStore, Store};

#[derive(Clone)]
pub struct Blocking {
    store: AnyStore,
}

impl Blocking {
    pub fn new(store: AnyStore) -> Self {
        Self { store }
    }

    /// Blocks `user` for `me`; returns since when. Idempotent.
    pub async fn block(&self, me: &UserId, user: &UserId) -> Result<i64, ServiceError> {
        if me == user {
            return Err(ServiceError::InvalidParam(
                "user_id: you cannot block yourself".into(),
            ));
        }
        Ok(self.store.block(me, user, now_ms()).await?)
    }

    /// Unblocks `user`: what they send from now on reaches `me` again.
    pub async fn unblock(&self, me: &UserId, user: &UserId) -> Result<(), ServiceError> {
        if self.store.unblock(me, user, now_ms()).await? {
            Ok(())
        } else {
            Err(ServiceError::NotFound(format!("{user} is not blocked")))
        }
    }

    /// The users `me` blocks, with since when.
    pub async fn list(&self, me: &UserId) -> Result<Vec<(UserId, i64)>, ServiceError> {
        Ok(self.store.blocked_by(me).await?)
    }

    /// Takes out of a history page what `me`'s blocks withheld from `me`.
    pub async fn filter_history(
        &self,
        chat_id: &ChatId,
        me: &UserId,
        mut events: Vec<ChatEvent>,
    ) -> Result<Vec<ChatEvent>, ServiceError> {
        let periods = self.store.periods_of(me).await?;
        if periods.is_empty() {
            return Ok(events);
        }
        let Some(info) = self.store.chat_info(chat_id).await? else {
            return Ok(events);
        };
        events.retain(|e| !event_withheld(&periods, me, info.kind, e));
        Ok(events)
    }

    /// Whether typing and presence of `from` are hidden from `to`: either blocks the
    /// other (a blocker neither sees the blocked user's nor shows them their own).
    /// Errors count as not hidden (presence is best effort; messages are not).
    pub async fn hides(&self, from: &UserId, to: &UserId) -> bool {
        match self.store.lasting_around(from).await {
            Ok(pairs) => pairs
                .iter()
                .any(|(a, b)| (a == from && b == to) || (a == to && b == from)),
            Err(e) => {
                tracing::warn!(error = %e, "reading blocks failed");
                false
            }
        }
    }

    /// The users whose typing and presence are hidden from `from` and who do not see
    /// `from`'s (a lasting block, either way).
    pub async fn hidden_among(&self, from: &UserId) -> Vec<UserId> {
        match self.store.lasting_around(from).await {
            Ok(pairs) => pairs
                .into_iter()
                .map(|(a, b)| if &a == from { b } else { a })
                .collect(),
            Err(e) => {
                tracing::warn!(error = %e, "reading blocks failed");
                Vec::new()
            }
        }
    }
}
