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
//! Blobs of other servers. Rule: a blob an event refers to is stored on the server of
//! the event's sender (a send may list only blobs stored on the sender's server that the
//! sender uploaded or may download; see [`Media::check_reference`]). So when a local user
//! may read a blob that is not stored here (an event of one of their chats refers to it),
//! [`Media::ensure_local`] fetches it from the sender's server with a signed
//! `GET /_parley/fed/v1/media/{hash}`, streaming to a staged file (resuming a partial one
//! with a `Range`), checks its SHA-256 against the address and stores it like an upload:
//! once per server, whoever asks next reads the local copy. One fetch per blob at a time
//! per process. The other side, [`Media::serve_peer`], serves a stored blob to a peer
//! only if an event of a chat with a current member on that peer refers to it.

mod s3;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use object_store::path::Path as ObjectPath;
use object_store::{GetOptions, GetRange, ObjectStore, ObjectStoreExt, WriteMultipart};
use parley_client_api::{BlobHash, UserId};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::ServiceError;
use super::federation::Federation;
use crate::clock::now_ms;
use crate::config::{Config, MediaStore};
use crate::metrics::Metrics;
use crate::store::{AnyStore, Store, UploadStart};

/// Bytes read from a staged file per step (hashing, copying into the object store).
const CHUNK: usize = 256 * 1024;
/// The object store's multipart part size (S3's minimum for all parts but the last).
const PART: usize = 5 * 1024 * 1024;
/// Parts uploading at once; with the one being filled, the most a blob's copy into the
/// object store holds in memory is `(PARTS_IN_FLIGHT + 1) * PART`, whatever its size.
const PARTS_IN_FLIGHT: usize = 2;
/// Servers asked for a blob, at most (the senders of events referring to it).
const MAX_SOURCES: i64 = 4;
/// A whole fetch of one blob from another server, at most.
const FETCH_TIMEOUT: Duration = Duration::from_secs(600);

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
    /// The directory of the local filesystem store (`None` for S3): a finished upload
    /// is moved into it, not copied.
    local_root: Option<PathBuf>,
    staging: PathBuf,
    max_blob: u64,
    quota: u64,
    /// Staged uploads a request is appending to now.
    appending: Arc<Mutex<HashSet<PathBuf>>>,
    /// Fetching blobs from other servers; `None` without federation.
    remote: Option<Remote>,
}

#[derive(Clone)]
struct Remote {
    federation: Federation,
    metrics: Arc<Metrics>,
    /// One fetch per blob at a time: later askers wait, then read the stored copy.
    fetching: Arc<Mutex<HashMap<BlobHash, Arc<tokio::sync::Mutex<()>>>>>,
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
        let mut media_service =
            Self::with_objects(store, Arc::new(objects), staging, max_blob, quota);
        media_service.local_root = Some(media);
        Ok(media_service)
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
            local_root: None,
            staging,
            max_blob,
            quota,
            appending: Arc::default(),
            remote: None,
        }
    }

    /// Fetches blobs of other servers through `federation` (see the module docs).
    pub fn with_federation(mut self, federation: Federation, metrics: Arc<Metrics>) -> Self {
        self.remote = Some(Remote {
            federation,
            metrics,
            fetching: Arc::default(),
        });
        self
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
        // Each write hands at most this much to the blocking pool (tokio's default, 2 MiB
        // per open file, is what an upload request's memory grew by).
        file.set_max_buf_size(CHUNK);
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
        self.open(hash, blob.size, range).await
    }

    /// Opens a stored blob for the peer server `peer`, if an event of a chat with a
    /// current member on `peer` refers to it (else `UnknownBlob`, whether or not it
    /// exists).
    pub async fn serve_peer(
        &self,
        peer: &str,
        hash: &BlobHash,
        range: Option<std::ops::Range<u64>>,
    ) -> Result<Download, ServiceError> {
        let Some(blob) = self.store.blob(hash).await? else {
            return Err(ServiceError::UnknownBlob(hash.to_string()));
        };
        if !self.store.blob_shared_with(hash, peer).await? {
            return Err(ServiceError::UnknownBlob(hash.to_string()));
        }
        let d = self.open(hash, blob.size, range).await?;
        if let Some(remote) = &self.remote {
            remote.metrics.media_served_to_peers.inc();
        }
        Ok(d)
    }

    /// Checks that `user` may list `hash` in a send: it is stored here (fetched first if
    /// an event of one of their chats refers to it on another server) and `user`
    /// uploaded it or may download it. `UnknownBlob` if it is not stored here,
    /// `BlobForbidden` if `user` may not refer to it.
    pub async fn check_reference(
        &self,
        user: &UserId,
        hash: &BlobHash,
    ) -> Result<(), ServiceError> {
        self.ensure_local(user, hash).await?;
        if self.store.can_download(hash, user).await? {
            return Ok(());
        }
        if self.store.blob(hash).await?.is_some() {
            return Err(ServiceError::BlobForbidden(hash.to_string()));
        }
        Err(ServiceError::UnknownBlob(hash.to_string()))
    }

    /// Makes sure a blob `user` may read is stored here: one not stored here but
    /// referred to by an event of a chat of `user`'s is fetched from its sender's server
    /// (signed), checked against its address and stored. Does nothing for anyone else
    /// (the caller then finds no blob); fails when every server asked failed.
    pub async fn ensure_local(&self, user: &UserId, hash: &BlobHash) -> Result<(), ServiceError> {
        let Some(remote) = &self.remote else {
            return Ok(());
        };
        if self.store.blob(hash).await?.is_some() {
            return Ok(());
        }
        let local = remote.federation.server_name().as_str();
        let sources: BTreeSet<String> = self
            .store
            .blob_senders(hash, user, MAX_SOURCES)
            .await?
            .iter()
            .map(|u| u.server_name().to_owned())
            .filter(|s| s != local)
            .collect();
        if sources.is_empty() {
            return Ok(());
        }
        let gate = remote
            .fetching
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(hash.clone())
            .or_default()
            .clone();
        let result = {
            let _one_at_a_time = gate.lock().await;
            // Someone else may have stored it while we waited.
            match self.store.blob(hash).await {
                Ok(Some(_)) => Ok(()),
                Ok(None) => self.fetch_from_any(remote, &sources, hash).await,
                Err(e) => Err(e.into()),
            }
        };
        let mut fetching = remote
            .fetching
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if Arc::strong_count(&gate) <= 2 {
            fetching.remove(hash);
        }
        drop(fetching);
        match result {
            Ok(()) => Ok(()),
            Err(ServiceError::HashMismatch) => Err(ServiceError::Remote(format!(
                "the bytes {hash} names on its server do not hash to its address; nothing was stored"
            ))),
            Err(e) => Err(e),
        }
    }

    /// Asks each server in turn until one gave the blob.
    async fn fetch_from_any(
        &self,
        remote: &Remote,
        sources: &BTreeSet<String>,
        hash: &BlobHash,
    ) -> Result<(), ServiceError> {
        let mut result = Ok(());
        for server in sources {
            result = self.fetch(remote, server, hash).await;
            let outcome = match &result {
                Ok(()) => "stored",
                Err(ServiceError::HashMismatch) => "hash_mismatch",
                Err(_) => "failed",
            };
            remote.metrics.media_fetch(outcome);
            match &result {
                Ok(()) => break,
                Err(e) => tracing::warn!(%hash, %server, error = %e, "fetching a blob failed"),
            }
        }
        result
    }

    /// Fetches `hash` from `server` into the staging directory (resuming what an earlier
    /// attempt left there), checks it and stores it.
    async fn fetch(
        &self,
        remote: &Remote,
        server: &str,
        hash: &BlobHash,
    ) -> Result<(), ServiceError> {
        let origin = parley_federation::ServerName::try_from(server)
            .map_err(|e| ServiceError::Remote(format!("{server}: {e}")))?;
        remote.federation.check_allowed(&origin)?;
        let path = self.staging.join(format!("{hash}.fetch.part"));
        let mut file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .await
            .map_err(io_error)?;
        let mut len = file.metadata().await.map_err(io_error)?.len();
        let answer = remote
            .federation
            .client()
            .get_streamed(
                &origin,
                &parley_federation::api::media::path(hash.as_str()),
                len,
                FETCH_TIMEOUT,
            )
            .await;
        let mut resp = match answer {
            Ok(r) => r,
            Err(e) => {
                if len == 0 {
                    drop(file);
                    let _ = tokio::fs::remove_file(&path).await;
                }
                return Err(ServiceError::Remote(format!("{server}: {e}")));
            }
        };
        let total = if resp.status == 206 {
            let (start, total) = resp
                .header("content-range")
                .and_then(content_range)
                .ok_or_else(|| ServiceError::Remote(format!("{server}: bad Content-Range")))?;
            if start != len {
                file.set_len(0).await.map_err(io_error)?;
                return Err(ServiceError::Remote(format!(
                    "{server} answered from byte {start}, not {len}"
                )));
            }
            Some(total)
        } else {
            // The whole blob: start over.
            file.set_len(0).await.map_err(io_error)?;
            len = 0;
            resp.content_length()
        };
        let too_large = || {
            ServiceError::Remote(format!(
                "{server}: the blob is larger than this server's limit ({} bytes)",
                self.max_blob
            ))
        };
        if total.is_some_and(|t| t > self.max_blob) {
            file.set_len(0).await.map_err(io_error)?;
            return Err(too_large());
        }
        loop {
            let chunk = match resp.chunk().await {
                Ok(Some(c)) => c,
                Ok(None) => break,
                Err(e) => {
                    // Keep what arrived: the next attempt resumes from there.
                    file.sync_data().await.map_err(io_error)?;
                    return Err(ServiceError::Remote(format!("{server}: {e}")));
                }
            };
            if len + chunk.len() as u64 > self.max_blob {
                file.set_len(0).await.map_err(io_error)?;
                return Err(too_large());
            }
            file.write_all(&chunk).await.map_err(io_error)?;
            len += chunk.len() as u64;
        }
        file.sync_data().await.map_err(io_error)?;
        drop(file);
        if total.is_some_and(|t| len < t) {
            return Err(ServiceError::Remote(format!(
                "{server}: the blob ended after {len} bytes"
            )));
        }
        if hash_file(&path).await? != hash.as_str() {
            let _ = tokio::fs::remove_file(&path).await;
            return Err(ServiceError::HashMismatch);
        }
        self.copy_into_store(&path, hash).await?;
        self.store
            .insert_fetched_blob(hash, len, server, now_ms())
            .await?;
        let _ = tokio::fs::remove_file(&path).await;
        tracing::debug!(%hash, size = len, %server, "blob fetched and stored");
        Ok(())
    }

    async fn open(
        &self,
        hash: &BlobHash,
        blob_size: u64,
        range: Option<std::ops::Range<u64>>,
    ) -> Result<Download, ServiceError> {
        let range = range.unwrap_or(0..blob_size);
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
            size: blob_size,
            range,
            body: got.into_stream(),
        })
    }

    /// Deletes blobs no retained event refers to and that are older than `before`, and
    /// uploads abandoned and partial fetches from other servers left before `before`;
    /// returns (blobs, uploads and partial fetches).
    pub async fn collect_garbage(&self, before: i64) -> Result<(usize, usize), ServiceError> {
        let blobs = self.store.unreferenced_blobs(before).await?;
        self.delete_blobs(&blobs).await?;
        let uploads = self.store.take_stale_uploads(before).await?;
        for (hash, user) in &uploads {
            let _ = tokio::fs::remove_file(self.staging_path(hash, user)).await;
        }
        let fetches = self.remove_stale_fetches(before).await;
        Ok((blobs.len(), uploads.len() + fetches))
    }

    /// Deletes blobs no event refers to any more — the hourly collection's, and those
    /// whose last events expired (disappearing messages, MS35); returns how many went. A
    /// blob the object store cannot delete stays recorded (the next collection retries).
    pub async fn delete_blobs(&self, hashes: &[BlobHash]) -> Result<usize, ServiceError> {
        let mut n = 0;
        for hash in hashes {
            match self.objects.delete(&object_path(hash)).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => {
                    tracing::warn!(%hash, error = %e, "deleting a blob failed");
                    continue;
                }
            }
            self.store.delete_blob(hash).await?;
            n += 1;
        }
        Ok(n)
    }

    /// Removes partial fetches from other servers last written before `before` (a fetch
    /// that failed for good leaves one; a retry soon after resumes it).
    async fn remove_stale_fetches(&self, before: i64) -> usize {
        let Ok(mut dir) = tokio::fs::read_dir(&self.staging).await else {
            return 0;
        };
        // `None`: beyond what the clock can say, so everything is older.
        let before = std::time::UNIX_EPOCH.checked_add(Duration::from_millis(
            u64::try_from(before).unwrap_or_default(),
        ));
        let mut removed = 0;
        while let Ok(Some(entry)) = dir.next_entry().await {
            if !entry.file_name().to_string_lossy().ends_with(".fetch.part") {
                continue;
            }
            let stale = entry
                .metadata()
                .await
                .and_then(|m| m.modified())
                .is_ok_and(|t| before.is_none_or(|b| t < b));
            if stale && tokio::fs::remove_file(entry.path()).await.is_ok() {
                removed += 1;
            }
        }
        removed
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

    /// Puts a staged, verified blob into the object store. On the local filesystem the
    /// file is renamed into place (no copy, no buffer: memory does not depend on the
    /// blob's size), falling back to a copy when the two directories are on different
    /// filesystems.
    async fn copy_into_store(&self, path: &Path, hash: &BlobHash) -> Result<(), ServiceError> {
        if let Some(root) = &self.local_root {
            let target = root.join(object_path(hash).as_ref());
            match move_into_place(path, &target).await {
                Ok(()) => return Ok(()),
                Err(e) => {
                    tracing::debug!(%hash, error = %e, "cannot rename a blob into place: copying")
                }
            }
        }
        let upload = self
            .objects
            .put_multipart(&object_path(hash))
            .await
            .map_err(|e| ServiceError::Internal(e.to_string()))?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART);
        match copy_parts(path, &mut writer).await {
            Ok(()) => {
                writer
                    .finish()
                    .await
                    .map_err(|e| ServiceError::Internal(e.to_string()))?;
                Ok(())
            }
            Err(e) => {
                if let Err(abort) = writer.abort().await {
                    tracing::warn!(%hash, error = %abort, "aborting a multipart upload failed");
                }
                Err(e)
            }
        }
    }
}

/// Renames `from` to `to` (creating `to`'s directory) and syncs the directory, so the
/// blob is durable under its final name before the upload is acknowledged.
async fn move_into_place(from: &Path, to: &Path) -> std::io::Result<()> {
    let dir = to
        .parent()
        .ok_or_else(|| std::io::Error::other("a blob path has a directory"))?
        .to_owned();
    tokio::fs::create_dir_all(&dir).await?;
    tokio::fs::rename(from, to).await?;
    tokio::task::spawn_blocking(move || std::fs::File::open(&dir)?.sync_all())
        .await
        .map_err(std::io::Error::other)?
}

/// Feeds a staged file to `writer` one whole part at a time, with back pressure: each
/// part waits until fewer than [`PARTS_IN_FLIGHT`] are uploading, so memory stays
/// bounded whatever the size (`WriteMultipart::write` alone buffers without limit when
/// the store is slower than the disk). A part is one contiguous buffer, which the S3
/// transport sends without copying.
async fn copy_parts(path: &Path, writer: &mut WriteMultipart) -> Result<(), ServiceError> {
    let mut file = tokio::fs::File::open(path).await.map_err(io_error)?;
    loop {
        let mut part = vec![0u8; PART];
        let mut filled = 0;
        while filled < PART {
            let n = file.read(&mut part[filled..]).await.map_err(io_error)?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        if filled == 0 {
            return Ok(());
        }
        part.truncate(filled);
        writer
            .wait_for_capacity(PARTS_IN_FLIGHT)
            .await
            .map_err(|e| ServiceError::Internal(e.to_string()))?;
        writer.put(Bytes::from(part));
        if filled < PART {
            return Ok(());
        }
    }
}

/// `bytes START-END/TOTAL` → (START, TOTAL).
fn content_range(v: &str) -> Option<(u64, u64)> {
    let rest = v.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (start, _) = range.split_once('-')?;
    Some((start.trim().parse().ok()?, total.trim().parse().ok()?))
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
