//! MLS KeyPackages: stored opaque, claimed one per device. The server never parses
//! them (it links no MLS code); the claiming client validates what it gets.

use parley_client_api::http::keys::{MAX_KEY_PACKAGE_BYTES, MAX_STORED, MAX_UPLOAD};
use parley_client_api::{DeviceId, ServerName, UserId};

use super::ServiceError;
use crate::store::{AnyStore, ClaimedKeyPackage, KeyPackageCount, Store, StoreError};

#[derive(Clone)]
pub struct Keys {
    store: AnyStore,
    server_name: ServerName,
}

impl Keys {
    pub fn new(store: AnyStore, server_name: ServerName) -> Self {
        Self { store, server_name }
    }

    pub async fn upload(
        &self,
        device_id: &DeviceId,
        one_time: Vec<Vec<u8>>,
        last_resort: Option<Vec<u8>>,
    ) -> Result<KeyPackageCount, ServiceError> {
        if one_time.is_empty() && last_resort.is_none() {
            return Err(ServiceError::InvalidParam("nothing to upload".into()));
        }
        if one_time.len() > MAX_UPLOAD {
            return Err(ServiceError::InvalidParam(format!(
                "key_packages: at most {MAX_UPLOAD} per upload"
            )));
        }
        for kp in one_time.iter().chain(last_resort.iter()) {
            if kp.is_empty() {
                return Err(ServiceError::InvalidParam("empty key package".into()));
            }
            if kp.len() > MAX_KEY_PACKAGE_BYTES {
                return Err(ServiceError::TooLarge {
                    size: kp.len(),
                    limit: MAX_KEY_PACKAGE_BYTES,
                });
            }
        }
        match self
            .store
            .upload_key_packages(
                device_id,
                &one_time,
                last_resort.as_deref(),
                MAX_STORED as u32,
            )
            .await
        {
            Err(StoreError::Conflict(_)) => Err(ServiceError::InvalidParam(format!(
                "a device holds at most {MAX_STORED} one-time key packages"
            ))),
            other => Ok(other?),
        }
    }

    pub async fn count(&self, device_id: &DeviceId) -> Result<KeyPackageCount, ServiceError> {
        Ok(self.store.key_package_count(device_id).await?)
    }

    pub async fn claim(&self, user_id: &UserId) -> Result<Vec<ClaimedKeyPackage>, ServiceError> {
        self.local_user(user_id).await?;
        Ok(self.store.claim_key_packages(user_id).await?)
    }

    pub async fn devices(&self, user_id: &UserId) -> Result<Vec<DeviceId>, ServiceError> {
        self.local_user(user_id).await?;
        Ok(self
            .store
            .list_devices(user_id)
            .await?
            .into_iter()
            .map(|d| d.device_id)
            .collect())
    }

    async fn local_user(&self, user_id: &UserId) -> Result<(), ServiceError> {
        if user_id.server_name() != self.server_name.as_str() {
            return Err(ServiceError::Forbidden(format!(
                "{user_id} is on another server; this server does not federate yet"
            )));
        }
        if !self.store.user_exists(user_id).await? {
            return Err(ServiceError::UnknownUser(user_id.to_string()));
        }
        Ok(())
    }
}
