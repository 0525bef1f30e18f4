//! Device links (spec/devices.md DL1–DL6): the rendezvous of a new device and an
//! existing device of the same user. The server relays a sealed request and a sealed
//! approval it cannot read, enforces who may read or answer, the expiry and single use.
//! Whether the new device is genuine is the approving client's check (the link code's
//! secret never reaches the server), not this service's.

use parley_client_api::http::links::MAX_LINK_MESSAGE_BYTES;
use parley_client_api::{DeviceId, UserId};

use super::ServiceError;
use crate::clock::now_ms;
use crate::store::AnyStore;
use crate::store::links::{LinkRow, LinkStore, NewLink};

#[derive(Clone)]
pub struct Links {
    store: AnyStore,
    ttl_ms: i64,
}

/// A link as its approver sees it.
#[derive(Debug, Clone)]
pub struct PendingLink {
    pub device_id: DeviceId,
    pub request: Vec<u8>,
    pub expires_at: i64,
}

/// A link as its new device sees it.
#[derive(Debug, Clone)]
pub struct LinkStatus {
    pub approval: Option<(DeviceId, Vec<u8>)>,
    pub expires_at: i64,
}

fn valid_link_id(id: &str) -> bool {
    id.len() == 10 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn check_size(what: &str, bytes: &[u8]) -> Result<(), ServiceError> {
    if bytes.is_empty() {
        return Err(ServiceError::InvalidParam(format!("the {what} is empty")));
    }
    if bytes.len() > MAX_LINK_MESSAGE_BYTES {
        return Err(ServiceError::TooLarge {
            size: bytes.len(),
            limit: MAX_LINK_MESSAGE_BYTES,
        });
    }
    Ok(())
}

impl Links {
    pub fn new(store: AnyStore, ttl_secs: u64) -> Self {
        Self {
            store,
            ttl_ms: i64::try_from(ttl_secs.saturating_mul(1000)).unwrap_or(i64::MAX),
        }
    }

    /// DL2: the new device opens a link. Returns its expiry.
    pub async fn create(
        &self,
        user: &UserId,
        device: &DeviceId,
        link_id: &str,
        request: &[u8],
    ) -> Result<i64, ServiceError> {
        if !valid_link_id(link_id) {
            return Err(ServiceError::InvalidParam(
                "link_id must be 10 lowercase hex characters".into(),
            ));
        }
        check_size("request", request)?;
        let now = now_ms();
        let expires_at = now.saturating_add(self.ttl_ms);
        let created = self
            .store
            .create_link(NewLink {
                link_id,
                user_id: user,
                device_id: device,
                request,
                now,
                expires_at,
            })
            .await?;
        if !created {
            return Err(ServiceError::LinkUsed);
        }
        Ok(expires_at)
    }

    /// A link of `user`'s; `UnknownLink` for a missing link or another user's.
    async fn own(&self, user: &UserId, link_id: &str) -> Result<LinkRow, ServiceError> {
        if !valid_link_id(link_id) {
            return Err(ServiceError::UnknownLink);
        }
        match self.store.link(link_id).await? {
            Some(l) if &l.user_id == user => Ok(l),
            _ => Err(ServiceError::UnknownLink),
        }
    }

    /// DL3: the checks before another device of the user may read or approve a link.
    fn open_for_approver(l: &LinkRow, device: &DeviceId, now: i64) -> Result<(), ServiceError> {
        if &l.device_id == device {
            return Err(ServiceError::Forbidden(
                "a device cannot approve its own link".into(),
            ));
        }
        if l.approved_by.is_some() {
            return Err(ServiceError::LinkUsed);
        }
        if l.expires_at <= now {
            return Err(ServiceError::LinkExpired);
        }
        Ok(())
    }

    /// DL3: another device of the same user reads the link.
    pub async fn get(
        &self,
        user: &UserId,
        device: &DeviceId,
        link_id: &str,
    ) -> Result<PendingLink, ServiceError> {
        let l = self.own(user, link_id).await?;
        Self::open_for_approver(&l, device, now_ms())?;
        Ok(PendingLink {
            device_id: l.device_id,
            request: l.request,
            expires_at: l.expires_at,
        })
    }

    /// DL4: the approval, accepted once and only before the expiry.
    pub async fn approve(
        &self,
        user: &UserId,
        device: &DeviceId,
        link_id: &str,
        approval: &[u8],
    ) -> Result<(), ServiceError> {
        check_size("approval", approval)?;
        let l = self.own(user, link_id).await?;
        let now = now_ms();
        Self::open_for_approver(&l, device, now)?;
        if self
            .store
            .approve_link(link_id, device, approval, now)
            .await?
        {
            return Ok(());
        }
        // Lost a race with another approval, or expired in between: say which.
        let l = self.own(user, link_id).await?;
        Self::open_for_approver(&l, device, now_ms())?;
        Err(ServiceError::LinkUsed)
    }

    /// DL5: the new device polls for its approval.
    pub async fn status(
        &self,
        user: &UserId,
        device: &DeviceId,
        link_id: &str,
    ) -> Result<LinkStatus, ServiceError> {
        let l = self.own(user, link_id).await?;
        if &l.device_id != device {
            return Err(ServiceError::UnknownLink);
        }
        match (l.approved_by, l.approval) {
            (Some(by), Some(approval)) => Ok(LinkStatus {
                approval: Some((by, approval)),
                expires_at: l.expires_at,
            }),
            _ if l.expires_at <= now_ms() => Err(ServiceError::LinkExpired),
            _ => Ok(LinkStatus {
                approval: None,
                expires_at: l.expires_at,
            }),
        }
    }
}
