//! Accounts and devices: registration (argon2id), login, token authentication.
//!
//! Access tokens are 32 random bytes (base64url); only their SHA-256 is stored, so a
//! database leak reveals no usable token. Each login is a new device.

use std::sync::Arc;

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use parley_client_api::ids::validate_localpart;
use parley_client_api::{DeviceId, ServerName, UserId};
use rand::Rng as _;
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

use super::ServiceError;
use crate::clock::now_ms;
use crate::store::{AnyStore, DeviceRow, NewDevice, NewUser, Store, StoreError};

/// An authenticated device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub user_id: UserId,
    pub device_id: DeviceId,
}

/// What register and login return.
pub struct LoggedIn {
    pub session: Session,
    pub access_token: String,
}

const MIN_PASSWORD: usize = 8;
const MAX_PASSWORD: usize = 1024;
const MAX_DEVICE_NAME: usize = 128;

#[derive(Clone)]
pub struct Accounts {
    store: AnyStore,
    server_name: ServerName,
    /// argon2id runs (19 MiB and tens of ms of CPU each) at most this many at a time, so
    /// a burst of logins cannot exhaust memory or the blocking pool.
    hashing: Arc<Semaphore>,
}

impl Accounts {
    pub fn new(store: AnyStore, server_name: ServerName) -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Self {
            store,
            server_name,
            hashing: Arc::new(Semaphore::new(cores)),
        }
    }

    pub fn server_name(&self) -> &ServerName {
        &self.server_name
    }

    pub async fn register(
        &self,
        username: &str,
        password: &str,
        device_name: Option<String>,
    ) -> Result<LoggedIn, ServiceError> {
        check_device_name(&device_name)?;
        let user_id = self.create_user(username, password).await?;
        self.new_device(user_id, device_name).await
    }

    /// Creates an account with no device (admin API).
    pub async fn create_user(
        &self,
        username: &str,
        password: &str,
    ) -> Result<UserId, ServiceError> {
        validate_localpart(username)
            .map_err(|e| ServiceError::InvalidParam(format!("username: {e}")))?;
        let user_id = UserId::new(username, &self.server_name)
            .map_err(|e| ServiceError::InvalidParam(format!("username: {e}")))?;
        let user = NewUser {
            user_id: user_id.clone(),
            localpart: username.to_owned(),
            password_hash: self.hash_password(password).await?,
            created_at: now_ms(),
        };
        match self.store.create_user(&user).await {
            Err(StoreError::Conflict(_)) => Err(ServiceError::UserExists),
            other => Ok(other.map(|()| user_id)?),
        }
    }

    /// Deactivates an account: it can no longer log in, and every device of it is
    /// removed. Returns the removed devices (their sockets must be closed).
    pub async fn deactivate(&self, user_id: &UserId) -> Result<Vec<DeviceId>, ServiceError> {
        self.store
            .deactivate_user(user_id, now_ms())
            .await?
            .ok_or_else(|| ServiceError::UnknownUser(user_id.to_string()))
    }

    pub async fn reset_password(
        &self,
        user_id: &UserId,
        password: &str,
    ) -> Result<(), ServiceError> {
        let hash = self.hash_password(password).await?;
        if self.store.set_password(user_id, &hash).await? {
            Ok(())
        } else {
            Err(ServiceError::UnknownUser(user_id.to_string()))
        }
    }

    pub async fn login(
        &self,
        username: &str,
        password: &str,
        device_name: Option<String>,
    ) -> Result<LoggedIn, ServiceError> {
        check_device_name(&device_name)?;
        // Accept a bare localpart or a full user id of this server.
        let localpart = match UserId::try_from(username) {
            Ok(u) if u.server_name() == self.server_name.as_str() => u.localpart().to_owned(),
            Ok(_) => return Err(ServiceError::InvalidCredentials),
            Err(_) => username.to_owned(),
        };
        let found = self.store.user_password(&localpart).await?;
        let password = password.to_owned();
        let _permit = self
            .hashing
            .acquire()
            .await
            .map_err(|_| ServiceError::Unavailable)?;
        let ok = tokio::task::spawn_blocking(move || {
            // Verify against a dummy hash for unknown users so timing does not reveal
            // which usernames exist.
            let stored = found
                .as_ref()
                .map(|(_, h)| h.as_str())
                .unwrap_or(DUMMY_HASH);
            let verified = PasswordHash::new(stored)
                .map(|h| {
                    Argon2::default()
                        .verify_password(password.as_bytes(), &h)
                        .is_ok()
                })
                .unwrap_or(false);
            found.filter(|_| verified).map(|(user, _)| user)
        })
        .await
        .map_err(|e| ServiceError::Internal(e.to_string()))?;
        let user_id = ok.ok_or(ServiceError::InvalidCredentials)?;
        self.new_device(user_id, device_name).await
    }

    async fn new_device(
        &self,
        user_id: UserId,
        device_name: Option<String>,
    ) -> Result<LoggedIn, ServiceError> {
        for _ in 0..3 {
            let (token, hash) = new_token();
            let device_id = new_device_id();
            let device = NewDevice {
                device_id: device_id.clone(),
                user_id: user_id.clone(),
                display_name: device_name.clone(),
                token_hash: hash,
                created_at: now_ms(),
            };
            match self.store.create_device(&device).await {
                Ok(()) => {
                    return Ok(LoggedIn {
                        session: Session { user_id, device_id },
                        access_token: token,
                    });
                }
                Err(StoreError::Conflict(_)) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(ServiceError::Internal(
            "could not allocate a device id".into(),
        ))
    }

    /// The device a bearer token belongs to.
    pub async fn authenticate(&self, token: &str) -> Result<Session, ServiceError> {
        let hash = token_hash(token);
        let (user_id, device_id) = self
            .store
            .device_by_token(&hash)
            .await?
            .ok_or(ServiceError::UnknownToken)?;
        Ok(Session { user_id, device_id })
    }

    pub async fn devices(&self, user_id: &UserId) -> Result<Vec<DeviceRow>, ServiceError> {
        Ok(self.store.list_devices(user_id).await?)
    }

    /// Removes a device (logout removes the calling one): its token stops working and
    /// its inbox is dropped.
    pub async fn remove_device(
        &self,
        user_id: &UserId,
        device_id: &DeviceId,
    ) -> Result<(), ServiceError> {
        if self.store.delete_device(user_id, device_id).await? {
            Ok(())
        } else {
            Err(ServiceError::UnknownDevice)
        }
    }
}

/// Checks the password policy and hashes it with argon2id (off the async threads).
impl Accounts {
    async fn hash_password(&self, password: &str) -> Result<String, ServiceError> {
        let _permit = self
            .hashing
            .acquire()
            .await
            .map_err(|_| ServiceError::Unavailable)?;
        hash_password(password).await
    }
}

async fn hash_password(password: &str) -> Result<String, ServiceError> {
    if password.chars().count() < MIN_PASSWORD || password.len() > MAX_PASSWORD {
        return Err(ServiceError::InvalidParam(format!(
            "password must be {MIN_PASSWORD} to {MAX_PASSWORD} characters"
        )));
    }
    let password = password.to_owned();
    tokio::task::spawn_blocking(move || {
        let salt = SaltString::encode_b64(&rand::rng().random::<[u8; 16]>())
            .map_err(|e| ServiceError::Internal(e.to_string()))?;
        Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| ServiceError::Internal(e.to_string()))
    })
    .await
    .map_err(|e| ServiceError::Internal(e.to_string()))?
}

fn check_device_name(name: &Option<String>) -> Result<(), ServiceError> {
    match name {
        Some(n) if n.len() > MAX_DEVICE_NAME || n.chars().any(char::is_control) => {
            Err(ServiceError::InvalidParam(format!(
                "device_name: at most {MAX_DEVICE_NAME} printable bytes"
            )))
        }
        _ => Ok(()),
    }
}

/// A fresh random token and its stored hash.
fn new_token() -> (String, [u8; 32]) {
    let bytes: [u8; 32] = rand::rng().random();
    let token = URL_SAFE_NO_PAD.encode(bytes);
    let hash = token_hash(&token);
    (token, hash)
}

fn token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

fn new_device_id() -> DeviceId {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ";
    let mut rng = rand::rng();
    let id: String = (0..10)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect();
    DeviceId::try_from(id).unwrap_or_else(|_| unreachable!("alphabet is valid"))
}

/// An argon2id hash of a random password, verified against when a user is unknown.
const DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$Q0uBgNqTg9X1r2mV0PbnHV7s1wPH2QVrS2mC+gWQe6o";

#[cfg(test)]
mod tests {
    #[test]
    fn tokens_are_random_and_hashed() {
        let (a, ha) = super::new_token();
        let (b, hb) = super::new_token();
        assert_ne!(a, b);
        assert_ne!(ha, hb);
        assert_eq!(super::token_hash(&a), ha);
        assert_eq!(a.len(), 43);
    }
}
