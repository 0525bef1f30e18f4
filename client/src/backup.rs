//! Encrypted history backups (`spec/backup.md`): the device's history archive
//! ([`crate::history`]) sealed under the user's backup key and stored on the homeserver
//! as a media blob, replacing the previous backup; restored on a fresh install with the
//! recovery key (or passphrase).
//!
//! - [`Client::enable_backup`] makes the backup key — random, shown once as a recovery
//!   key, or derived from a passphrase with Argon2id — keeps it in this device's store
//!   and makes the first backup.
//! - [`Client::backup_now`] exports, uploads (resumable, through the media upload) and
//!   points the user's backup at the new blob.
//! - [`Client::backup_status`] says what the server holds.
//! - [`Client::restore`] on a new device: reads the typed recovery key (a typo is
//!   refused by its checksum before anything is downloaded) or passphrase, downloads
//!   the archive and imports it (all or nothing), keeps the key for later backups, and
//!   rejoins the user's chats by external commit ([`crate::rejoin`]).
//!
//! The server learns the archive's size and when it was made; never the key or a byte
//! of plaintext. MLS group state is never in a backup.

use std::io::Write;
use std::path::PathBuf;

use parley_client_api::BlobHash;
use parley_client_api::http::backup::{self, Backup, BackupKeyMode};
use parley_crypto::{ArchiveKey, PassphraseParams, RecoveryKey};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::client::{Client, Inner};
use crate::error::{Error, Result};
use crate::history::{self, ExportSummary, ImportSummary};
use crate::rejoin::RejoinSummary;
use crate::store;

const KEY_STATE: &str = "backup_key";
const MODE_STATE: &str = "backup_mode";

/// How to make the backup key.
#[derive(Debug, Clone)]
pub enum BackupSecret {
    /// A random key, returned once as a recovery key to write down.
    RecoveryKey,
    /// Derived from this passphrase with Argon2id. Weak passphrases can be guessed by
    /// anyone who obtains the backup (the server's operator included).
    Passphrase(Zeroizing<String>),
}

/// What [`Client::enable_backup`] did.
#[derive(Debug)]
pub struct BackupEnabled {
    /// The recovery key to show the user, once (16 groups of 4 characters); `None` in
    /// passphrase mode.
    pub recovery_key: Option<Zeroizing<String>>,
    pub backup: BackupDone,
}

/// What [`Client::backup_now`] stored.
#[derive(Debug, Clone)]
pub struct BackupDone {
    pub backup: Backup,
    pub export: ExportSummary,
}

/// What [`Client::restore`] did.
#[derive(Debug)]
pub struct Restored {
    pub import: ImportSummary,
    pub backup: Backup,
    /// The chats rejoined by external commit after the import ([`Client::rejoin_chats`]);
    /// `Err` when the server could not list the chats (call `rejoin_chats` again later).
    pub rejoin: Result<RejoinSummary>,
}

/// Writes to a file and hashes what it wrote (the blob address).
struct Hashing {
    file: std::fs::File,
    hasher: Sha256,
}

impl Write for Hashing {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.file.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

fn mode_json(mode: &BackupKeyMode) -> Result<String> {
    serde_json::to_string(mode).map_err(Error::store)
}

impl Inner {
    async fn backup_key(&self) -> Result<Option<(ArchiveKey, BackupKeyMode)>> {
        let key = self.db.reader.state(KEY_STATE).await?;
        let mode = self.db.reader.state(MODE_STATE).await?;
        let (Some(key), Some(mode)) = (key, mode) else {
            return Ok(None);
        };
        let mut bytes = Zeroizing::new([0u8; 32]);
        hex::decode_to_slice(key.as_bytes(), bytes.as_mut_slice()).map_err(Error::store)?;
        let mode: BackupKeyMode = serde_json::from_str(&mode).map_err(Error::store)?;
        Ok(Some((ArchiveKey::from_bytes(*bytes), mode)))
    }

    async fn keep_backup_key(&self, key: &ArchiveKey, mode: &BackupKeyMode) -> Result<()> {
        let hex_key = Zeroizing::new(hex::encode(key.as_bytes()));
        let mut conn = self.db.writer.lock().await;
        let mut tx = store::begin(&mut conn).await?;
        store::set_state(&mut tx, KEY_STATE, &hex_key).await?;
        store::set_state(&mut tx, MODE_STATE, &mode_json(mode)?).await?;
        tx.commit().await?;
        Ok(())
    }

    fn backup_dir(&self) -> Result<PathBuf> {
        self.media_dir("backup")
    }
}

impl Client {
    /// Turns backups on: makes the backup key, keeps it on this device and makes the
    /// first backup. With [`BackupSecret::RecoveryKey`] the answer carries the recovery
    /// key, to be shown once. Enabling again makes a new key (the old backup is
    /// replaced and its key no longer matters).
    pub async fn enable_backup(&self, secret: BackupSecret) -> Result<BackupEnabled> {
        let (key, mode, shown) = match secret {
            BackupSecret::RecoveryKey => {
                let rk = RecoveryKey::generate();
                (
                    rk.key().clone(),
                    BackupKeyMode::RecoveryKey,
                    Some(rk.display()),
                )
            }
            BackupSecret::Passphrase(p) => {
                let params = PassphraseParams::generate();
                let derived = derive(&params, p).await?;
                let mode = BackupKeyMode::Passphrase {
                    salt: params.salt,
                    m_kib: params.m_kib,
                    t: params.t,
                    p: params.p,
                };
                (derived, mode, None)
            }
        };
        self.inner.keep_backup_key(&key, &mode).await?;
        let backup = self.backup_now().await?;
        Ok(BackupEnabled {
            recovery_key: shown,
            backup,
        })
    }

    /// Whether this device holds a backup key (backups enabled here).
    pub async fn backup_enabled(&self) -> Result<bool> {
        Ok(self.inner.backup_key().await?.is_some())
    }

    /// Makes a backup now: exports the whole history sealed under the backup key,
    /// uploads it and makes it the user's backup (replacing the previous one).
    pub async fn backup_now(&self) -> Result<BackupDone> {
        let inner = &self.inner;
        let Some((key, mode)) = inner.backup_key().await? else {
            return Err(Error::Invalid(
                "backups are not enabled on this device (enable them first)".into(),
            ));
        };
        let dir = inner.backup_dir()?;
        let path = dir.join("backup.part");
        let file = std::fs::File::create(&path)
            .map_err(|e| Error::Store(format!("{}: {e}", path.display())))?;
        let out = Hashing {
            file,
            hasher: Sha256::new(),
        };
        let result = async {
            let (out, export) = history::export(&inner.db.reader, None, &key, out).await?;
            out.file
                .sync_all()
                .map_err(|e| Error::Store(format!("{}: {e}", path.display())))?;
            let blob = BlobHash::try_from(hex::encode(out.hasher.finalize()).as_str())
                .map_err(Error::store)?;
            let total = export.archive_bytes;
            inner
                .upload_blob(&path, &blob, total)
                .await
                .map_err(|(e, _)| e)?;
            let req = backup::put::Request {
                blob,
                size: total,
                key: mode,
            };
            let stored: Backup = inner
                .api
                .call(backup::put::METHOD, backup::put::PATH, Some(&req))
                .await?;
            Ok(BackupDone {
                backup: stored,
                export,
            })
        }
        .await;
        let _ = tokio::fs::remove_file(&path).await;
        result
    }

    /// The user's backup on the server, if any.
    pub async fn backup_status(&self) -> Result<Option<Backup>> {
        match self
            .inner
            .api
            .call::<(), Backup>(backup::get::METHOD, backup::get::PATH, None)
            .await
        {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.code() == Some(parley_client_api::ErrorCode::NotFound) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Restores the user's backup into this device: `secret` is the recovery key as
    /// typed (spaces, dashes and case do not matter; a typo is refused by its checksum
    /// with [`Error::RecoveryKey`] before anything is downloaded) or, for a backup
    /// made with a passphrase, the passphrase. A key that does not open the backup is
    /// [`Error::WrongKey`]; a damaged backup [`Error::CorruptArchive`]; in both cases
    /// nothing on the device changed. On success this device keeps the key and makes
    /// the next backups, and rejoins the user's chats by external commit
    /// ([`Client::rejoin_chats`]; MLS group state is never in a backup).
    pub async fn restore(&self, secret: &str) -> Result<Restored> {
        let inner = &self.inner;
        let Some(found) = self.backup_status().await? else {
            return Err(Error::NoBackup);
        };
        let key = match &found.key {
            BackupKeyMode::RecoveryKey => RecoveryKey::parse(secret)
                .map_err(|e| Error::RecoveryKey(e.to_string()))?
                .key()
                .clone(),
            BackupKeyMode::Passphrase { salt, m_kib, t, p } => {
                let params = PassphraseParams {
                    salt: salt.clone(),
                    m_kib: *m_kib,
                    t: *t,
                    p: *p,
                };
                derive(&params, Zeroizing::new(secret.to_owned())).await?
            }
        };
        let dir = inner.backup_dir()?;
        let part = dir.join(format!("{}.restore", found.blob));
        let result: Result<ImportSummary> = async {
            inner.fetch_blob(&found.blob, &part, found.size).await?;
            let file = std::fs::File::open(&part)
                .map_err(|e| Error::Store(format!("{}: {e}", part.display())))?;
            let import = self
                .import_history(&key, std::io::BufReader::new(file))
                .await?;
            inner.keep_backup_key(&key, &found.key).await?;
            Ok(import)
        }
        .await;
        let _ = tokio::fs::remove_file(&part).await;
        let import = result?;
        Ok(Restored {
            import,
            backup: found,
            rejoin: self.rejoin_chats().await,
        })
    }
}

/// Argon2id on a blocking thread (it takes a while on purpose).
async fn derive(params: &PassphraseParams, passphrase: Zeroizing<String>) -> Result<ArchiveKey> {
    let params = params.clone();
    tokio::task::spawn_blocking(move || params.derive(&passphrase))
        .await
        .map_err(|e| Error::Store(format!("key derivation: {e}")))?
        .map_err(|e| Error::Invalid(e.to_string()))
}
