//! Media blobs: ciphertext stored once under its SHA-256, uploaded resumably in
//! constant memory, downloaded (ranged) by those allowed, collected when unreferenced.
//!
//! Uploads are staged in `data_dir/uploads/` (one file per blob and uploader, appended
//! as bytes arrive and synced before each answer), so an interrupted upload resumes from
//! the last stored byte. When every byte is in, the file's hash is checked and the blob
//! moves to the object store (`object_store`: the local filesystem by default, or an
//! S3-compatible store with `[media] store = "s3"`, see `media/s3.rs`).
//!
//! One request at a time appends to a given upload (per process): a second one arriving
//! while the first still writes — a client resuming before the server noticed its old
//! connection drop — is answered `409 upload_offset` with the bytes stored so far, and
//! retries from there.
//!
//! Blobs of other servers: a message may refer to a blob stored on the sender's server.
//! Fetching it from there (signed federation request, hash check, cached here under the
//! same address) belongs in [`Media::download`] where the blob is not stored locally;
//! it is not built yet, so such a download answers `404 unknown_blob`.

mod s3;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use object_store::path::Path as ObjectPath;
use object_store::{GetOptions, GetRange, ObjectStore, ObjectStoreExt, WriteMultipart};
use parley_client_api::{BlobHash, UserId};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::ServiceError;
use crate::clock::now_ms;
use crate::config::{Config, MediaStore};
use crate::store::{AnyStore, Store, UploadStart};

/// Bytes read from a staged file per step (hashing, copying into the object store).
const CHUNK: usize = 256 * 1024;

/// An upload's progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    pub received: u64,
    pub complete: bool,
}

/// A download: the blob's size, the byte range served and its bytes.
pub struct Download {
    pub size: u64,
    pub range: std::ops::Range<u64>,
    pub body: std::pin::Pin<Box<dyn Stream<Item = Result<Bytes, object_store::Error>> + Send>>,
}

#[derive(Clone)]
pub struct Media {
    store: AnyStore,
    objects: Arc<dyn ObjectStore>,
    staging: PathBuf,
    max_blob: u64,
    quota: u64,
    /// Staged uploads a request is appending to now.
    appending: Arc<Mutex<HashSet<PathBuf>>>,
}

/// Holds an upload's append slot; frees it on drop.
struct Appending {
    set: Arc<Mutex<HashSet<PathBuf>>>,
    path: PathBuf,
}

impl Drop for Appending {
    fn drop(&mut self) {
        self.set
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.path);
    }
}

impl Media {
    /// Media as the config says: blobs on the local filesystem under `data_dir/media`,
    /// or in an S3-compatible store; uploads staged in `data_dir/uploads`.
    pub fn from_config(store: AnyStore, config: &Config) -> Result<Self, ServiceError> {
        let (max, quota) = (config.limits.max_blob_bytes, config.limits.user_quota_bytes);
        match config.media.store {
            MediaStore::Fs => Self::new(store, &config.data_dir, max, quota),
            MediaStore::S3 => {
                let staging = config.data_dir.join("uploads");
                std::fs::create_dir_all(&staging)
                    .map_err(|e| ServiceError::Internal(format!("{}: {e}", staging.display())))?;
                let objects = s3::store(&config.media).map_err(ServiceError::Internal)?;
                tracing::info!(
                    bucket = config.media.bucket.as_deref().unwrap_or_default(),
                    endpoint = config.media.endpoint.as_deref().unwrap_or("(AWS)"),
                    "media blobs in S3"
                );
                Ok(Self::with_objects(store, objects, staging, max, quota))
            }
        }
    }

    /// Media under `data_dir` (`media/` for blobs, `uploads/` for staged uploads).
    pub fn new(
        store: AnyStore,
        data_dir: &Path,
        max_blob: u64,
        quota: u64,
    ) -> Result<Self, ServiceError> {
        let media = data_dir.join("media");
        let staging = data_dir.join("uploads");
        for dir in [&media, &staging] {
            std::fs::create_dir_all(dir)
                .map_err(|e| ServiceError::Internal(format!("{}: {e}", dir.display())))?;
        }
        let objects = object_store::local::LocalFileSystem::new_with_prefix(&media)
            .map_err(|e| ServiceError::Internal(e.to_string()))?;
        Ok(Self::with_objects(
            store,
            Arc::new(objects),
            staging,
            max_blob,
            quota,
        ))
    }

    /// Media over any object store (S3 and others).
    pub fn with_objects(
        store: AnyStore,
        objects: Arc<dyn ObjectStore>,
        staging: PathBuf,
        max_blob: u64,
        quota: u64,
    ) -> Self {
        Self {
            store,
            objects,
            staging,
            max_blob,
            quota,
            appending: Arc::default(),
        }
    }

    /// The size of a stored blob.
    pub async fn size(&self, hash: &BlobHash) -> Result<Option<u64>, ServiceError> {
        Ok(self.store.blob(hash).await?.map(|b| b.size))
    }

    pub async fn progress(&self, user: &UserId, hash: &BlobHash) -> Result<Progress, ServiceError> {
        if let Some(size) = self.size(hash).await? {
            return Ok(Progress {
                received: size,
                complete: true,
            });
        }
        Ok(Progress {
            received: staged_len(&self.staging_path(hash, user)).await,
            complete: false,
        })
    }

    /// Appends `body` at `offset` to `user`'s upload of `hash` (of `total` bytes); once
    /// complete, verifies the hash and stores the blob.
    pub async fn append<E: std::fmt::Display>(
        &self,
        user: &UserId,
        hash: &BlobHash,
        offset: u64,
        total: u64,
        mut body: impl Stream<Item = Result<Bytes, E>> + Unpin,
    ) -> Result<Progress, ServiceError> {
        if total == 0 {
            return Err(ServiceError::InvalidParam(
                "total: a blob has at least one byte".into(),
            ));
        }
        if total > self.max_blob {
            return Err(ServiceError::TooLarge {
                size: usize::try_from(total).unwrap_or(usize::MAX),
                limit: usize::try_from(self.max_blob).unwrap_or(usize::MAX),
            });
        }
        match self
            .store
            .start_upload(hash, user, total, self.quota, now_ms())
            .await?
        {
            UploadStart::Started => {}
            UploadStart::Stored { size } => {
                // Stored already (by anyone): nothing to upload.
                return Ok(Progress {
                    received: size,
                    complete: true,
                });
            }
            UploadStart::QuotaExceeded { used } => {
                return Err(ServiceError::QuotaExceeded {
                    used,
                    quota: self.quota,
                });
            }
            UploadStart::TotalMismatch { total } => {
                return Err(ServiceError::InvalidParam(format!(
                    "total: this upload was started with total {total}"
                )));
            }
        }
        let path = self.staging_path(hash, user);
        let Some(_slot) = self.append_slot(&path) else {
            return Err(ServiceError::UploadOffset {
                received: staged_len(&path).await,
            });
        };
        let mut file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .await
            .map_err(io_error)?;
        let start = file.metadata().await.map_err(io_error)?.len();
        if offset != start {
            return Err(ServiceError::UploadOffset { received: start });
        }
        let mut len = start;
        while let Some(chunk) = body.next().await {
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) => {
                    // The client went away: keep what arrived, it resumes from there.
                    file.sync_data().await.map_err(io_error)?;
                    return Err(ServiceError::InvalidParam(format!(
                        "upload interrupted: {e}"
                    )));
                }
            };
            if len + chunk.len() as u64 > total {
                file.set_len(start).await.map_err(io_error)?;
                return Err(ServiceError::InvalidParam(format!(
                    "more bytes than total ({total})"
                )));
            }
            file.write_all(&chunk).await.map_err(io_error)?;
            len += chunk.len() as u64;
        }
        file.sync_data().await.map_err(io_error)?;
        drop(file);
        if len < total {
            return Ok(Progress {
                received: len,
                complete: false,
            });
        }
        if hash_file(&path).await? != hash.as_str() {
            let _ = tokio::fs::remove_file(&path).await;
            self.store.cancel_upload(hash, user).await?;
            return Err(ServiceError::HashMismatch);
        }
        self.copy_into_store(&path, hash).await?;
        self.store
            .finish_upload(hash, user, total, now_ms())
            .await?;
        let _ = tokio::fs::remove_file(&path).await;
        tracing::debug!(%hash, size = total, "blob stored");
        Ok(Progress {
            received: total,
            complete: true,
        })
    }

    /// Opens a blob for `user`, if they may read it (else `UnknownBlob`, whether or not
    /// it exists). `range` is inclusive-exclusive, clamped by the caller.
    pub async fn download(
        &self,
        user: &UserId,
        hash: &BlobHash,
        range: Option<std::ops::Range<u64>>,
    ) -> Result<Download, ServiceError> {
        let Some(blob) = self.store.blob(hash).await? else {
            return Err(ServiceError::UnknownBlob(hash.to_string()));
        };
        if !self.store.can_download(hash, user).await? {
            return Err(ServiceError::UnknownBlob(hash.to_string()));
        }
        let range = range.unwrap_or(0..blob.size);
        let options = GetOptions {
            range: Some(GetRange::Bounded(range.clone())),
            ..Default::default()
        };
        let got = self
            .objects
            .get_opts(&object_path(hash), options)
            .await
            .map_err(|e| ServiceError::Internal(format!("blob {hash}: {e}")))?;
        Ok(Download {
            size: blob.size,
            range,
            body: got.into_stream(),
        })
    }

    /// Deletes blobs no retained event refers to and that are older than `before`, and
    /// uploads abandoned before `before`.
    pub async fn collect_garbage(&self, before: i64) -> Result<(usize, usize), ServiceError> {
        let blobs = self.store.unreferenced_blobs(before).await?;
        for hash in &blobs {
            match self.objects.delete(&object_path(hash)).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => {
                    tracing::warn!(%hash, error = %e, "deleting blob failed");
                    continue;
                }
            }
            self.store.delete_blob(hash).await?;
        }
        let uploads = self.store.take_stale_uploads(before).await?;
        for (hash, user) in &uploads {
            let _ = tokio::fs::remove_file(self.staging_path(hash, user)).await;
        }
        Ok((blobs.len(), uploads.len()))
    }

    fn append_slot(&self, path: &Path) -> Option<Appending> {
        let mut set = self
            .appending
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        set.insert(path.to_owned()).then(|| Appending {
            set: self.appending.clone(),
            path: path.to_owned(),
        })
    }

    fn staging_path(&self, hash: &BlobHash, user: &UserId) -> PathBuf {
        let who = hex::encode(&Sha256::digest(user.as_str().as_bytes())[..8]);
        self.staging.join(format!("{hash}.{who}.part"))
    }

    async fn copy_into_store(&self, path: &Path, hash: &BlobHash) -> Result<(), ServiceError> {
        let upload = self
            .objects
            .put_multipart(&object_path(hash))
            .await
            .map_err(|e| ServiceError::Internal(e.to_string()))?;
        let mut writer = WriteMultipart::new(upload);
        let mut file = tokio::fs::File::open(path).await.map_err(io_error)?;
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = file.read(&mut buf).await.map_err(io_error)?;
            if n == 0 {
                break;
            }
            writer.write(&buf[..n]);
        }
        writer
            .finish()
            .await
            .map_err(|e| ServiceError::Internal(e.to_string()))?;
        Ok(())
    }
}

fn object_path(hash: &BlobHash) -> ObjectPath {
    ObjectPath::from(format!("blobs/{}/{hash}", &hash.as_str()[..2]))
}

async fn staged_len(path: &Path) -> u64 {
    tokio::fs::metadata(path)
        .await
        .map(|m| m.len())
        .unwrap_or(0)
}

async fn hash_file(path: &Path) -> Result<String, ServiceError> {
    let mut file = tokio::fs::File::open(path).await.map_err(io_error)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = file.read(&mut buf).await.map_err(io_error)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

fn io_error(e: std::io::Error) -> ServiceError {
    ServiceError::Internal(format!("media storage: {e}"))
}

/// A `Range` the blob cannot satisfy (answered with 416).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unsatisfiable;

/// Parses a single-range `Range` header against a blob of `size` bytes. `None`: serve
/// everything.
pub fn parse_range(header: &str, size: u64) -> Result<Option<std::ops::Range<u64>>, Unsatisfiable> {
    let Some(spec) = header.trim().strip_prefix("bytes=") else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None); // several ranges: serve the whole blob
    }
    let (a, b) = spec.split_once('-').ok_or(Unsatisfiable)?;
    let (a, b) = (a.trim(), b.trim());
    let range = if a.is_empty() {
        let n: u64 = b.parse().map_err(|_| Unsatisfiable)?;
        if n == 0 {
            return Err(Unsatisfiable);
        }
        size.saturating_sub(n)..size
    } else {
        let start: u64 = a.parse().map_err(|_| Unsatisfiable)?;
        let end = if b.is_empty() {
            size
        } else {
            b.parse::<u64>()
                .map_err(|_| Unsatisfiable)?
                .saturating_add(1)
                .min(size)
        };
        start..end
    };
    if range.start >= size || range.start >= range.end {
        return Err(Unsatisfiable);
    }
    Ok(Some(range))
}

#[cfg(test)]
mod tests {
    use super::{Unsatisfiable, parse_range};

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9", 100), Ok(Some(0..10)));
        assert_eq!(parse_range("bytes=90-", 100), Ok(Some(90..100)));
        assert_eq!(parse_range("bytes=-5", 100), Ok(Some(95..100)));
        assert_eq!(parse_range("bytes=50-500", 100), Ok(Some(50..100)));
        assert_eq!(parse_range("bytes=0-1,5-6", 100), Ok(None));
        assert_eq!(parse_range("items=1-2", 100), Ok(None));
        assert_eq!(parse_range("bytes=100-", 100), Err(Unsatisfiable));
        assert_eq!(parse_range("bytes=5-2", 100), Err(Unsatisfiable));
        assert_eq!(parse_range("bytes=x-2", 100), Err(Unsatisfiable));
    }
}
