//! Contact lists: each local user keeps user ids (local or remote) on this server.
//! `contacts` in the privacy settings means this list (`service::presence`); a change
//! re-sends the owner's presence, so who may see it follows at once.

use parley_client_api::UserId;
use parley_client_api::http::contacts::MAX_CONTACTS;

use super::ServiceError;
use super::presence::Presence;
use crate::clock::now_ms;
use crate::store::contacts::ContactStore;
use crate::store::{AnyStore, Store};

#[derive(Clone)]
pub struct Contacts {
    store: AnyStore,
    presence: Presence,
    local: String,
}

impl Contacts {
    pub fn new(store: AnyStore, presence: Presence, local: String) -> Self {
        Self {
            store,
            presence,
            local,
        }
    }

    /// The owner's contacts, sorted.
    pub async fn list(&self, owner: &UserId) -> Result<Vec<UserId>, ServiceError> {
        Ok(self.store.contacts(owner).await?)
    }

    /// Adds `contact` (idempotent). A local contact must exist; a remote one is taken
    /// as named (its server is not asked).
    pub async fn add(&self, owner: &UserId, contact: &UserId) -> Result<(), ServiceError> {
        if owner == contact {
            return Err(ServiceError::InvalidParam(
                "one cannot be one's own contact".into(),
            ));
        }
        if contact.server_name() == self.local && !self.store.user_exists(contact).await? {
            return Err(ServiceError::UnknownUser(contact.to_string()));
        }
        if !self
            .store
            .add_contact(owner, contact, MAX_CONTACTS, now_ms())
            .await?
        {
            return Err(ServiceError::Forbidden(format!(
                "the contact list is full ({MAX_CONTACTS} contacts)"
            )));
        }
        self.presence.refresh(owner).await
    }

    /// Removes `contact` (idempotent).
    pub async fn remove(&self, owner: &UserId, contact: &UserId) -> Result<(), ServiceError> {
        if self.store.remove_contact(owner, contact).await? {
            self.presence.refresh(owner).await?;
        }
        Ok(())
    }
}
