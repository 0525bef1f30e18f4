//! MLS KeyPackages: stored opaque, claimed one per device. The server never parses
//! them (it links no MLS code); the claiming client validates what it gets.

use parley_client_api::http::keys::{MAX_KEY_PACKAGE_BYTES, MAX_STORED, MAX_UPLOAD};
use parley_client_api::{DeviceId, ServerName, UserId};

use parley_federation::api;
use parley_federation::transport::http::ClientError;

use super::ServiceError;
use super::federation::Federation;
use crate::store::{AnyStore, ClaimedKeyPackage, KeyPackageCount, Store, StoreError};

#[derive(Clone)]
pub struct Keys {
    store: AnyStore,
    server_name: ServerName,
    federation: Option<Federation>,
}

impl Keys {
    pub fn new(store: AnyStore, server_name: ServerName, federation: Option<Federation>) -> Self {
        Self {
            store,
            server_name,
            federation,
        }
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

    /// Claims one KeyPackage per device of `user_id`; a remote user's through their
    /// server (signed).
    pub async fn claim(&self, user_id: &UserId) -> Result<Vec<ClaimedKeyPackage>, ServiceError> {
        if let Some(fed) = self.remote(user_id)? {
            let server = fed_server(user_id)?;
            fed.check_allowed(&server)?;
            let fed_user = parley_federation::UserId::try_from(user_id.as_str())
                .map_err(|e| ServiceError::InvalidParam(e.to_string()))?;
            let resp: api::keys::claim::Response = fed
                .client()
                .send_json(
                    &server,
                    api::keys::claim::METHOD,
                    api::keys::claim::PATH,
                    Some(&api::keys::claim::Request {
                        users: vec![fed_user.clone()],
                    }),
                )
                .await
                .map_err(|e| remote_error(&server, e, user_id))?;
            let Some(claimed) = resp.users.get(&fed_user) else {
                return Err(ServiceError::UnknownUser(user_id.to_string()));
            };
            return claimed
                .iter()
                .map(|c| {
                    Ok(ClaimedKeyPackage {
                        device_id: DeviceId::try_from(c.device_id.as_str()).map_err(|e| {
                            ServiceError::Remote(format!("{server}: bad device id: {e}"))
                        })?,
                        data: c.key_package.0.clone(),
                        last_resort: c.last_resort,
                    })
                })
                .collect();
        }
        self.claim_local(user_id).await
    }

    /// Claims a local user's KeyPackages (for local clients and for peers).
    pub async fn claim_local(
        &self,
        user_id: &UserId,
    ) -> Result<Vec<ClaimedKeyPackage>, ServiceError> {
        self.local_user(user_id).await?;
        Ok(self.store.claim_key_packages(user_id).await?)
    }

    /// A user's devices; a remote user's are asked of their server (signed).
    pub async fn devices(&self, user_id: &UserId) -> Result<Vec<DeviceId>, ServiceError> {
        if let Some(fed) = self.remote(user_id)? {
            let server = fed_server(user_id)?;
            fed.check_allowed(&server)?;
            let path = api::fill(
                api::keys::user_devices::PATH,
                &[("user_id", user_id.as_str())],
            );
            let resp: api::keys::user_devices::Response = fed
                .client()
                .send_json::<(), _>(&server, api::keys::user_devices::METHOD, &path, None)
                .await
                .map_err(|e| remote_error(&server, e, user_id))?;
            return resp
                .devices
                .iter()
                .map(|d| {
                    DeviceId::try_from(d.as_str())
                        .map_err(|e| ServiceError::Remote(format!("{server}: bad device id: {e}")))
                })
                .collect();
        }
        self.local_devices(user_id).await
    }

    /// A local user's devices (for local clients and for peers).
    pub async fn local_devices(&self, user_id: &UserId) -> Result<Vec<DeviceId>, ServiceError> {
        self.local_user(user_id).await?;
        Ok(self
            .store
            .list_devices(user_id)
            .await?
            .into_iter()
            .map(|d| d.device_id)
            .collect())
    }

    /// `Some(federation)` when `user_id` is on another server and we federate.
    fn remote(&self, user_id: &UserId) -> Result<Option<&Federation>, ServiceError> {
        if user_id.server_name() == self.server_name.as_str() {
            return Ok(None);
        }
        match &self.federation {
            Some(fed) => Ok(Some(fed)),
            None => Err(ServiceError::Forbidden(format!(
                "{user_id} is on another server; this server does not federate"
            ))),
        }
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

/// The federation form of a user's server name.
pub(crate) fn fed_server(user_id: &UserId) -> Result<parley_federation::ServerName, ServiceError> {
    parley_federation::ServerName::try_from(user_id.server_name())
        .map_err(|e| ServiceError::InvalidParam(format!("{user_id}: {e}")))
}

/// A peer's refusal or failure, as a service error.
pub(crate) fn remote_error(
    server: &parley_federation::ServerName,
    e: ClientError,
    user_id: &UserId,
) -> ServiceError {
    match e {
        ClientError::Status { status: 403, body } => ServiceError::FederationDenied(format!(
            "{server} refuses us: {}",
            body.map(|b| b.message).unwrap_or_default()
        )),
        ClientError::Status { status: 404, .. } => ServiceError::UnknownUser(user_id.to_string()),
        e => ServiceError::Remote(format!("{server}: {e}")),
    }
}
