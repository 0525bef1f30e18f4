//! History backups (`spec/backup.md` BK11–BK16): which uploaded blob is each user's
//! encrypted archive, and how its key is made. The server never sees the key or a
//! byte of plaintext: the blob is ciphertext uploaded like any media blob (quota,
//! resumable, hash-checked), and the key mode is stored as the client sent it.

use parley_client_api::http::backup::{Backup, BackupKeyMode};
use parley_client_api::{BlobHash, UserId};

use super::ServiceError;
use crate::clock::now_ms;
use crate::store::AnyStore;
use crate::store::backups::{BackupRow, BackupStore, SetBackup};

#[derive(Clone)]
pub struct Backups {
    store: AnyStore,
}

fn wire(row: BackupRow) -> Result<Backup, ServiceError> {
    let key: BackupKeyMode = serde_json::from_str(&row.key_mode)
        .map_err(|e| ServiceError::Internal(format!("stored backup key mode: {e}")))?;
    Ok(Backup {
        blob: row.blob,
        size: row.size,
        key,
        created_at: row.created_at,
    })
}

impl Backups {
    pub fn new(store: AnyStore) -> Self {
        Self { store }
    }

    /// `user`'s backup (BK12); `NotFound` if none.
    pub async fn get(&self, user: &UserId) -> Result<Backup, ServiceError> {
        match self.store.backup(user).await? {
            Some(row) => wire(row),
            None => Err(ServiceError::NotFound("no backup".into())),
        }
    }

    /// Makes `blob` `user`'s backup, replacing the previous one (BK11); `UnknownBlob`
    /// unless `user` uploaded a stored blob of this hash and size.
    pub async fn put(
        &self,
        user: &UserId,
        blob: &BlobHash,
        size: u64,
        key: &BackupKeyMode,
    ) -> Result<Backup, ServiceError> {
        if let BackupKeyMode::Passphrase { salt, .. } = key
            && salt.len() > 128
        {
            return Err(ServiceError::InvalidParam("key.salt: too long".into()));
        }
        let key_mode = serde_json::to_string(key)
            .map_err(|e| ServiceError::Internal(format!("backup key mode: {e}")))?;
        match self
            .store
            .set_backup(user, blob, size, &key_mode, now_ms())
            .await?
        {
            SetBackup::Stored(row) => {
                tracing::debug!(%user, %blob, size, "backup stored");
                wire(row)
            }
            SetBackup::NoBlob => Err(ServiceError::UnknownBlob(blob.to_string())),
        }
    }

    /// Deletes `user`'s backup (BK13); `NotFound` if none.
    pub async fn delete(&self, user: &UserId) -> Result<(), ServiceError> {
        if self.store.delete_backup(user).await? {
            Ok(())
        } else {
            Err(ServiceError::NotFound("no backup".into()))
        }
    }
}
