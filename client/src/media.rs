//! Media: files sent end-to-end encrypted, stored once per server under the SHA-256 of
//! their ciphertext.
//!
//! Sending ([`Client::send_file`]):
//! 1. The file is encrypted with `parley-crypto`'s media encryption (a fresh key per
//!    file, 64 KiB chunks) into `media/outgoing/<blob>.enc` in the profile directory,
//!    streaming: memory use does not grow with the file. Images (PNG, JPEG) get a small
//!    JPEG thumbnail, encrypted with its own key and carried inline in the message.
//! 2. The message (envelope kind `media`: blob, server, size, MIME type, name, key,
//!    thumbnail) is written to the history (pending) and queued in the outbox with the
//!    blob it refers to and the file still to upload. It waits there, and the chat's
//!    later messages behind it, until the upload is complete.
//! 3. Upload: `HEAD` says whether the server has the blob already (then nothing is
//!    sent); otherwise the server says how many bytes it holds and the rest goes in
//!    segments from there. An interrupted upload continues from the server's stored
//!    offset: at once (a few attempts with backoff), or later from the connection task,
//!    also after a restart (the outbox row names the encrypted file).
//! 4. Once uploaded, the message goes out like a text message, with `blobs: [blob]`
//!    so the chat's members may download it.
//!
//! Forwarding ([`Client::forward`]) sends the same reference (same blob, same key) to
//! another chat: nothing is uploaded. Receiving stores the reference with the message;
//! [`Client::download`] fetches the ciphertext (resuming a partial download with a
//! `Range`), checks its hash and decrypts it to a file, streaming.
//!
//! Cross-server media: a client always talks to its own server. When a file was sent
//! from another server, the recipient's server fetches the blob from the sender's server
//! (signed federation request), checks its hash and keeps one copy for all its users;
//! forwarding such a file makes the forwarder's server fetch it first. The reference's
//! `server` says where the blob was first uploaded.

use std::collections::HashSet;
use std::io::{BufReader, BufWriter};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use parley_client_api::{BlobHash, ChatId, ErrorCode};
use parley_crypto::media as crypt;
use parley_crypto::{Content, MediaRef, Thumbnail};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

use crate::client::{Client, Event, Inner};
use crate::error::{Error, Result};
use crate::store::{self, Message, MessageState};

/// Ciphertext bytes sent per upload request: the server stores (and syncs) each before
/// it answers, so an interruption loses at most the segment in flight.
pub(crate) const UPLOAD_SEGMENT: u64 = 8 * 1024 * 1024;
/// Consecutive failed attempts (no byte of progress) before a transfer gives up for now.
const MAX_ATTEMPTS: u32 = 6;
/// The longest side of a thumbnail, in pixels.
const THUMB_SIDE: u32 = 160;
/// A thumbnail larger than this (JPEG bytes) is left out: it travels in the message.
const THUMB_MAX_BYTES: usize = 24 * 1024;
/// Images larger than this get no thumbnail: decoding holds the whole picture.
const THUMB_MAX_SOURCE: u64 = 32 * 1024 * 1024;
/// Decoding limits for thumbnails (a hostile image cannot make the client allocate more).
const THUMB_MAX_PIXELS_SIDE: u32 = 12_000;
const THUMB_MAX_ALLOC: u64 = 512 * 1024 * 1024;

/// How to send a file.
#[derive(Debug, Clone, Default)]
pub struct FileOptions {
    /// The MIME type; default: guessed from the file name's extension.
    pub mime: Option<String>,
    /// The name shown to recipients; default: the file's name.
    pub name: Option<String>,
    /// A caption.
    pub caption: Option<String>,
}

/// The outcome of [`Client::send_file`].
#[derive(Debug, Clone)]
pub struct SentFile {
    /// The message (pending until the server acknowledges it).
    pub message: Message,
    /// The blob address.
    pub blob: String,
    /// Ciphertext bytes the server received during this call (0 when it had the blob).
    pub uploaded: u64,
    /// False when the upload was interrupted and not resumed within this call: the
    /// message stays queued and the upload continues from the server's stored offset
    /// the next time the client is connected.
    pub upload_complete: bool,
}

/// A file a message carries, as the app shows it (the key stays inside the SDK).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    /// The blob address (SHA-256 of the ciphertext).
    pub blob: String,
    /// The server that stores it.
    pub server: String,
    /// Plaintext size in bytes.
    pub size: u64,
    pub mime: String,
    pub name: Option<String>,
    pub caption: Option<String>,
    /// The thumbnail's MIME type, when the message carries one.
    pub thumbnail: Option<String>,
}

/// The outcome of [`Client::download`].
#[derive(Debug, Clone)]
pub struct Downloaded {
    /// Where the decrypted file was written.
    pub path: PathBuf,
    /// Its size.
    pub size: u64,
    /// Ciphertext bytes fetched by this call (fewer than the blob when it resumed a
    /// partial download).
    pub fetched: u64,
}

/// The media reference of a message as the local store keeps it (the envelope's
/// `media` content).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct StoredMedia {
    pub(crate) media: MediaRef,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) caption: Option<String>,
}

/// Transfers running in this process (one per file at a time).
#[derive(Debug, Default)]
pub(crate) struct Transfers {
    uploads: Mutex<HashSet<String>>,
    downloads: Mutex<HashSet<String>>,
}

/// Holds a transfer's slot; frees it on drop.
struct Slot<'a> {
    set: &'a Mutex<HashSet<String>>,
    key: String,
}

impl<'a> Slot<'a> {
    fn take(set: &'a Mutex<HashSet<String>>, key: &str) -> Option<Self> {
        let mut s = set.lock().unwrap_or_else(PoisonError::into_inner);
        s.insert(key.to_owned()).then(|| Slot {
            set,
            key: key.to_owned(),
        })
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.set
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.key);
    }
}

/// The history line of a file message: `[file] name (mime, size) caption`.
pub(crate) fn describe(media: &MediaRef, caption: Option<&str>) -> String {
    let mut s = format!(
        "[file] {} ({}, {})",
        media.name.as_deref().unwrap_or("unnamed"),
        media.mime,
        human_size(media.size)
    );
    if let Some(c) = caption.filter(|c| !c.is_empty()) {
        s.push(' ');
        s.push_str(c);
    }
    s
}

/// `1.5 MiB`.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut v = bytes as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// A MIME type from a file name's extension (`application/octet-stream` if unknown).
pub fn guess_mime(path: &Path) -> String {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .unwrap_or_default();
    match ext.as_str() {
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "mp4" | "m4v" => "video/mp4",
        "webm" => "video/webm",
        "mov" => "video/quicktime",
        "mp3" => "audio/mpeg",
        "m4a" => "audio/mp4",
        "ogg" | "oga" | "opus" => "audio/ogg",
        "wav" => "audio/wav",
        "pdf" => "application/pdf",
        "zip" => "application/zip",
        "txt" => "text/plain",
        _ => "application/octet-stream",
    }
    .to_owned()
}

fn valid_mime(m: &str) -> bool {
    let Some((a, b)) = m.split_once('/') else {
        return false;
    };
    m.len() <= 127
        && !a.is_empty()
        && !b.is_empty()
        && m.bytes()
            .all(|c| c.is_ascii_graphic() && c != b'"' && c != b'\\')
}

/// A file name from a sender, made safe to write: its last path component only.
fn safe_name(name: &str) -> Option<String> {
    let last = name.rsplit(['/', '\\']).next()?.trim();
    let clean: String = last.chars().filter(|c| !c.is_control()).collect();
    (!clean.is_empty() && clean != "." && clean != "..").then_some(clean)
}

fn io(what: &Path, e: impl std::fmt::Display) -> Error {
    Error::Invalid(format!("{}: {e}", what.display()))
}

fn local_io(what: &Path, e: impl std::fmt::Display) -> Error {
    Error::Store(format!("{}: {e}", what.display()))
}

/// Server refusals and transport failures worth another attempt.
fn transient(e: &Error) -> bool {
    match e {
        Error::Unreachable { .. } => true,
        Error::Server { code, .. } => matches!(
            code,
            ErrorCode::Internal | ErrorCode::RateLimited | ErrorCode::UploadOffset
        ),
        _ => false,
    }
}

fn api_blob(blob: &crypt::BlobHash) -> Result<BlobHash> {
    BlobHash::try_from(blob.to_string().as_str()).map_err(Error::crypto)
}

/// Encrypts `src` into `dir/<blob>.enc` (through a temporary file), streaming.
fn encrypt_file(src: &Path, dir: &Path) -> Result<(crypt::EncryptedMedia, PathBuf)> {
    let input = std::fs::File::open(src).map_err(|e| io(src, e))?;
    let tmp = tempfile_in(dir)?;
    let encrypted = {
        let out = std::fs::File::create(&tmp).map_err(|e| local_io(&tmp, e))?;
        let mut w = BufWriter::with_capacity(crypt::CHUNK_SIZE, out);
        let r = crypt::encrypt(BufReader::with_capacity(crypt::CHUNK_SIZE, input), &mut w);
        match r.and_then(|m| {
            w.into_inner()
                .map_err(|e| crypt_io(e.into_error()))?
                .sync_all()?;
            Ok(m)
        }) {
            Ok(m) => m,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(Error::Invalid(format!("encrypting {}: {e}", src.display())));
            }
        }
    };
    let path = dir.join(format!("{}.enc", encrypted.blob));
    std::fs::rename(&tmp, &path).map_err(|e| local_io(&path, e))?;
    Ok((encrypted, path))
}

fn crypt_io(e: std::io::Error) -> parley_crypto::error::MediaError {
    parley_crypto::error::MediaError::Io(e)
}

/// A fresh file name in `dir`.
fn tempfile_in(dir: &Path) -> Result<PathBuf> {
    Ok(dir.join(format!(
        "tmp-{}",
        parley_crypto::MessageId::random().as_str()
    )))
}

/// A small JPEG preview of an image, encrypted with its own key; `None` if the image
/// cannot be read or the preview would be too large to carry in a message.
fn make_thumbnail(src: &Path) -> Option<Thumbnail> {
    let run = || -> std::result::Result<Option<Thumbnail>, String> {
        let mut reader = image::ImageReader::open(src)
            .map_err(|e| e.to_string())?
            .with_guessed_format()
            .map_err(|e| e.to_string())?;
        let mut limits = image::Limits::default();
        limits.max_image_width = Some(THUMB_MAX_PIXELS_SIDE);
        limits.max_image_height = Some(THUMB_MAX_PIXELS_SIDE);
        limits.max_alloc = Some(THUMB_MAX_ALLOC);
        reader.limits(limits);
        let img = reader.decode().map_err(|e| e.to_string())?;
        let rgb = img.thumbnail(THUMB_SIDE, THUMB_SIDE).to_rgb8();
        let mut jpeg = Vec::new();
        let encoder = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 70);
        rgb.write_with_encoder(encoder).map_err(|e| e.to_string())?;
        if jpeg.len() > THUMB_MAX_BYTES {
            return Ok(None);
        }
        let (meta, ciphertext) = crypt::encrypt_bytes(&jpeg).map_err(|e| e.to_string())?;
        Ok(Some(Thumbnail::Inline {
            mime: "image/jpeg".into(),
            key: meta.key,
            ciphertext,
        }))
    };
    match run() {
        Ok(t) => t,
        Err(e) => {
            tracing::info!(error = %e, "no thumbnail: the image cannot be read");
            None
        }
    }
}

impl Client {
    /// Sends a file: encrypts it (streaming), uploads the ciphertext unless the server
    /// has it, and queues an MLS message carrying the reference (see the module docs).
    ///
    /// Returns once the upload is complete and the message queued, or once the upload
    /// was interrupted beyond a few attempts (then `upload_complete` is false: it
    /// resumes from the server's stored offset when connected). A refusal — quota
    /// exceeded, file too large — fails the message and is returned as the error.
    pub async fn send_file(
        &self,
        chat: &ChatId,
        path: &Path,
        options: FileOptions,
    ) -> Result<SentFile> {
        let inner = &self.inner;
        inner.check_joined(chat).await?;
        let meta = tokio::fs::metadata(path).await.map_err(|e| io(path, e))?;
        if !meta.is_file() {
            return Err(Error::Invalid(format!("{} is not a file", path.display())));
        }
        let mime = options.mime.unwrap_or_else(|| guess_mime(path));
        if !valid_mime(&mime) {
            return Err(Error::Invalid(format!("invalid MIME type {mime:?}")));
        }
        let name = options
            .name
            .or_else(|| path.file_name().map(|n| n.to_string_lossy().into_owned()));
        let dir = inner.media_dir("outgoing")?;
        let src = path.to_owned();
        let thumbnail_wanted =
            matches!(mime.as_str(), "image/png" | "image/jpeg") && meta.len() <= THUMB_MAX_SOURCE;
        let (encrypted, enc_path, thumbnail) = tokio::task::spawn_blocking(move || {
            let (encrypted, enc_path) = encrypt_file(&src, &dir)?;
            let thumbnail = thumbnail_wanted.then(|| make_thumbnail(&src)).flatten();
            Ok::<_, Error>((encrypted, enc_path, thumbnail))
        })
        .await
        .map_err(|e| Error::Store(format!("encryption task: {e}")))??;
        let blob = api_blob(&encrypted.blob)?;
        let media = MediaRef {
            blob: encrypted.blob,
            server: inner.user_id.server_name().to_owned(),
            size: encrypted.plaintext_len,
            mime,
            key: encrypted.key.clone(),
            name,
            thumbnail,
        };
        // Held before the message is queued, so the connection task does not start
        // the same upload in the background.
        let key = enc_path.display().to_string();
        let Some(_slot) = Slot::take(&inner.transfers.uploads, &key) else {
            return Err(Error::Store("the upload is already running".into()));
        };
        let message = match inner
            .queue_media(chat, media, options.caption, Some(&enc_path))
            .await
        {
            Ok(m) => m,
            Err(e) => {
                let _ = tokio::fs::remove_file(&enc_path).await;
                return Err(e);
            }
        };
        let total = encrypted.ciphertext_len;
        match inner.upload_blob(&enc_path, &blob, total).await {
            Ok(uploaded) => {
                inner.upload_done(chat, &message.id, &enc_path).await?;
                Ok(SentFile {
                    message,
                    blob: blob.to_string(),
                    uploaded,
                    upload_complete: true,
                })
            }
            Err((e, uploaded)) if transient(&e) => {
                tracing::warn!(%chat, id = %message.id, error = %e, "upload interrupted; it resumes when connected");
                Ok(SentFile {
                    message,
                    blob: blob.to_string(),
                    uploaded,
                    upload_complete: false,
                })
            }
            Err((e, _)) => {
                inner.upload_failed(chat, &message.id, &enc_path).await?;
                Err(e)
            }
        }
    }

    /// Sends the file of a message (received or sent) to another chat: the same blob
    /// and key, so nothing is uploaded.
    pub async fn forward(&self, from: &ChatId, id: &str, to: &ChatId) -> Result<Message> {
        let stored = self.inner.stored_media(from, id).await?;
        self.inner
            .queue_media(to, stored.media, stored.caption, None)
            .await
    }

    /// The file a message carries, if any (offline).
    pub async fn attachment(&self, chat: &ChatId, id: &str) -> Result<Option<Attachment>> {
        let Some(json) = self.inner.db.reader.message_media(chat, id).await? else {
            return Ok(None);
        };
        let s: StoredMedia = serde_json::from_str(&json).map_err(Error::store)?;
        Ok(Some(Attachment {
            blob: s.media.blob.to_string(),
            server: s.media.server,
            size: s.media.size,
            mime: s.media.mime,
            name: s.media.name,
            caption: s.caption,
            thumbnail: s.media.thumbnail.map(|t| match t {
                Thumbnail::Inline { mime, .. } | Thumbnail::Blob { mime, .. } => mime,
            }),
        }))
    }

    /// The decrypted thumbnail of a message's file: `(mime, bytes)`, if it carries one
    /// inline.
    pub async fn thumbnail(&self, chat: &ChatId, id: &str) -> Result<Option<(String, Vec<u8>)>> {
        let stored = self.inner.stored_media(chat, id).await?;
        match stored.media.thumbnail {
            Some(Thumbnail::Inline {
                mime,
                key,
                ciphertext,
            }) => {
                let bytes = crypt::decrypt_bytes(&key, &ciphertext, None).map_err(Error::crypto)?;
                Ok(Some((mime, bytes)))
            }
            _ => Ok(None),
        }
    }

    /// Downloads the file of a message, checks the ciphertext's hash, and decrypts it
    /// to `dest` (a file path, or an existing directory: then the sender's file name in
    /// it). A partial earlier download resumes where it stopped. Memory use does not
    /// grow with the file. On any error nothing is written at `dest`.
    pub async fn download(&self, chat: &ChatId, id: &str, dest: &Path) -> Result<Downloaded> {
        let inner = &self.inner;
        let stored = inner.stored_media(chat, id).await?;
        let media = stored.media;
        let blob = api_blob(&media.blob)?;
        let dest = if dest.is_dir() {
            let name = media
                .name
                .as_deref()
                .and_then(safe_name)
                .unwrap_or_else(|| blob.to_string());
            dest.join(name)
        } else {
            dest.to_owned()
        };
        let Some(_slot) = Slot::take(&inner.transfers.downloads, blob.as_str()) else {
            return Err(Error::Invalid(format!(
                "{} is being downloaded already",
                media.name.as_deref().unwrap_or("this file")
            )));
        };
        let dir = inner.media_dir("incoming")?;
        let part = dir.join(format!("{blob}.part"));
        let total = crypt::ciphertext_len(media.size);
        // Through our own server, also for a file sent from another server: it fetches
        // the blob from there.
        let fetched = inner.fetch_blob(&blob, &part, total).await?;
        let key = media.key.clone();
        let expected = media.blob;
        let out = dest.clone();
        let size = tokio::task::spawn_blocking(move || -> Result<u64> {
            let parent = match out.parent() {
                Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
                _ => PathBuf::from("."),
            };
            let tmp = tempfile_in(&parent)?;
            let result = (|| -> std::result::Result<u64, parley_crypto::error::MediaError> {
                let input = std::fs::File::open(&part)?;
                let file = std::fs::File::create(&tmp)?;
                let mut w = BufWriter::with_capacity(crypt::CHUNK_SIZE, file);
                let n = crypt::decrypt(
                    &key,
                    BufReader::with_capacity(crypt::CHUNK_SIZE, input),
                    &mut w,
                    Some(&expected),
                )?;
                w.into_inner()
                    .map_err(|e| crypt_io(e.into_error()))?
                    .sync_all()?;
                Ok(n)
            })();
            match result {
                Ok(n) => {
                    std::fs::rename(&tmp, &out).map_err(|e| io(&out, e))?;
                    let _ = std::fs::remove_file(&part);
                    Ok(n)
                }
                Err(e) => {
                    let _ = std::fs::remove_file(&tmp);
                    if !matches!(e, parley_crypto::error::MediaError::Io(_)) {
                        // Bad bytes: fetch them again next time.
                        let _ = std::fs::remove_file(&part);
                    }
                    Err(Error::Crypto(format!(
                        "the downloaded file is not valid: {e}"
                    )))
                }
            }
        })
        .await
        .map_err(|e| Error::Store(format!("decryption task: {e}")))??;
        Ok(Downloaded {
            path: dest,
            size,
            fetched,
        })
    }
}

/// Resumes the upload of a queued file message in the background (the connection task
/// calls this for each queued message whose file is not uploaded yet).
pub(crate) fn resume_upload(inner: &Arc<Inner>, row: &store::OutboxRow) {
    let Some(path) = row.upload.clone() else {
        return;
    };
    if inner
        .transfers
        .uploads
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .contains(&path)
    {
        return;
    }
    let inner = inner.clone();
    let row = row.clone();
    tokio::spawn(async move {
        let Some(_slot) = Slot::take(&inner.transfers.uploads, &path) else {
            return;
        };
        let Ok(chat) = ChatId::try_from(row.chat_id.as_str()) else {
            return;
        };
        let path = PathBuf::from(&path);
        let blob = row
            .blobs
            .as_deref()
            .and_then(|b| serde_json::from_str::<Vec<BlobHash>>(b).ok())
            .and_then(|b| b.into_iter().next());
        let Some(blob) = blob else {
            tracing::warn!(%chat, id = %row.client_msg_id, "queued upload names no blob");
            let _ = inner.upload_failed(&chat, &row.client_msg_id, &path).await;
            return;
        };
        let total = match tokio::fs::metadata(&path).await {
            Ok(m) => m.len(),
            Err(e) => {
                tracing::warn!(%chat, id = %row.client_msg_id, error = %e, "the file to upload is gone");
                let _ = inner.upload_failed(&chat, &row.client_msg_id, &path).await;
                return;
            }
        };
        match inner.upload_blob(&path, &blob, total).await {
            Ok(_) => {
                tracing::info!(%chat, id = %row.client_msg_id, "upload resumed and complete");
                if let Err(e) = inner.upload_done(&chat, &row.client_msg_id, &path).await {
                    tracing::warn!(%chat, error = %e, "recording the upload failed");
                }
            }
            Err((e, _)) if transient(&e) => {
                tracing::info!(%chat, id = %row.client_msg_id, error = %e, "upload still interrupted; retrying later");
            }
            Err((e, _)) => {
                tracing::warn!(%chat, id = %row.client_msg_id, error = %e, "upload refused; the message failed");
                let _ = inner.upload_failed(&chat, &row.client_msg_id, &path).await;
            }
        }
    });
}

impl Inner {
    /// `profile/media/<sub>`, created.
    pub(crate) fn media_dir(&self, sub: &str) -> Result<PathBuf> {
        let dir = self.config.profile.join("media").join(sub);
        std::fs::create_dir_all(&dir).map_err(|e| local_io(&dir, e))?;
        Ok(dir)
    }

    async fn check_joined(&self, chat: &ChatId) -> Result<()> {
        let mut conn = self.db.writer.lock().await;
        store::ensure_joined(&mut conn, chat).await?;
        Ok(())
    }

    async fn stored_media(&self, chat: &ChatId, id: &str) -> Result<StoredMedia> {
        let json = self
            .db
            .reader
            .message_media(chat, id)
            .await?
            .ok_or_else(|| Error::Invalid(format!("message {id} in {chat} carries no file")))?;
        serde_json::from_str(&json).map_err(Error::store)
    }

    /// Writes a file message (pending) and queues it with its blob and, if given, the
    /// encrypted file still to upload.
    async fn queue_media(
        &self,
        chat: &ChatId,
        media: MediaRef,
        caption: Option<String>,
        upload: Option<&Path>,
    ) -> Result<Message> {
        let timer = self.db.reader.timer(chat).await?;
        let (message, bytes) = self.pending_message(
            chat,
            Content::Media {
                media: Box::new(media.clone()),
                caption: caption.clone(),
            },
            "media",
            describe(&media, caption.as_deref()),
            timer,
        )?;
        let blobs = serde_json::to_string(&[media.blob.to_string()]).map_err(Error::store)?;
        let stored =
            serde_json::to_string(&StoredMedia { media, caption }).map_err(Error::store)?;
        let upload = upload.map(|p| p.display().to_string());
        let mut conn = self.db.writer.lock().await;
        store::ensure_joined(&mut conn, chat).await?;
        let mut tx = store::begin(&mut conn).await?;
        store::insert_message(&mut tx, &message).await?;
        store::set_message_media(&mut tx, chat, &self.device_id, &message.id, &stored).await?;
        store::outbox_push(
            &mut tx,
            chat,
            &message.id,
            store::OUTBOX_MESSAGE,
            Some(&bytes),
            None,
        )
        .await?;
        store::outbox_set_media(&mut tx, chat, &message.id, &blobs, upload.as_deref()).await?;
        tx.commit().await?;
        drop(conn);
        self.emit(Event::MessageQueued(message.clone()));
        if upload.is_none() {
            self.kick();
        }
        Ok(message)
    }

    /// The upload is complete: the message may go; the encrypted copy is not needed.
    async fn upload_done(&self, chat: &ChatId, id: &str, path: &Path) -> Result<()> {
        {
            let mut conn = self.db.writer.lock().await;
            store::outbox_upload_done(&mut conn, chat, id).await?;
        }
        let _ = tokio::fs::remove_file(path).await;
        self.kick();
        Ok(())
    }

    /// The server refused the upload for good: the message fails.
    async fn upload_failed(&self, chat: &ChatId, id: &str, path: &Path) -> Result<()> {
        {
            let mut conn = self.db.writer.lock().await;
            let mut tx = store::begin(&mut conn).await?;
            store::outbox_remove(&mut tx, chat, id).await?;
            store::update_own_message(&mut tx, chat, id, None, None, MessageState::Failed).await?;
            tx.commit().await?;
        }
        let _ = tokio::fs::remove_file(path).await;
        self.emit(Event::MessageStateChanged {
            chat_id: chat.clone(),
            id: id.to_owned(),
            seq: None,
            state: MessageState::Failed,
        });
        Ok(())
    }

    fn backoff(&self, failures: u32) -> Duration {
        let min = self.config.reconnect_min;
        min.saturating_mul(1 << failures.min(16))
            .min(self.config.reconnect_max)
    }

    /// Uploads the encrypted file at `path` (`total` bytes) as `blob`, from the
    /// server's stored offset, retrying transient failures. Returns the bytes the
    /// server received meanwhile; on error also those.
    pub(crate) async fn upload_blob(
        &self,
        path: &Path,
        blob: &BlobHash,
        total: u64,
    ) -> std::result::Result<u64, (Error, u64)> {
        let mut first: Option<u64> = None;
        let mut received = 0u64;
        let mut failures = 0u32;
        loop {
            match self
                .upload_attempt(path, blob, total, &mut first, &mut received)
                .await
            {
                Ok(()) => return Ok(received.saturating_sub(first.unwrap_or(received))),
                Err((e, progressed)) => {
                    let got = received.saturating_sub(first.unwrap_or(received));
                    if !transient(&e) {
                        return Err((e, got));
                    }
                    failures = if progressed { 1 } else { failures + 1 };
                    if failures >= MAX_ATTEMPTS {
                        return Err((e, got));
                    }
                    tracing::info!(%blob, received, total, error = %e, "upload interrupted; resuming");
                    tokio::time::sleep(self.backoff(failures - 1)).await;
                }
            }
        }
    }

    /// One attempt: ask where the server is, send the rest in segments. The error says
    /// whether the server's stored bytes grew during the attempt.
    async fn upload_attempt(
        &self,
        path: &Path,
        blob: &BlobHash,
        total: u64,
        first: &mut Option<u64>,
        received: &mut u64,
    ) -> std::result::Result<(), (Error, bool)> {
        let before = *received;
        let fail = |e: Error, now: u64| (e, now > before);
        if first.is_none()
            && self
                .api
                .blob_exists(blob)
                .await
                .map_err(|e| fail(e, before))?
        {
            *first = Some(total);
            *received = total;
            return Ok(());
        }
        let state = self
            .api
            .upload_status(blob)
            .await
            .map_err(|e| fail(e, before))?;
        let mut offset = if state.complete {
            total
        } else {
            state.received
        };
        first.get_or_insert(offset);
        *received = offset;
        if offset > total {
            return Err(fail(
                Error::Protocol(format!(
                    "the server holds {offset} bytes of a {total}-byte upload"
                )),
                *received,
            ));
        }
        while offset < total {
            let len = UPLOAD_SEGMENT.min(total - offset);
            let body = file_segment(path, offset, len)
                .await
                .map_err(|e| fail(e, *received))?;
            let state = self
                .api
                .upload_chunk(blob, offset, total, len, body)
                .await
                .map_err(|e| fail(e, *received))?;
            if state.complete {
                *received = total;
                return Ok(());
            }
            if state.received <= offset {
                return Err(fail(
                    Error::Protocol("the server stored nothing of an upload segment".into()),
                    *received,
                ));
            }
            offset = state.received;
            *received = offset;
        }
        Ok(())
    }

    /// Downloads `blob` (`total` bytes) into `part`, resuming from what it holds.
    /// Returns the bytes fetched.
    pub(crate) async fn fetch_blob(&self, blob: &BlobHash, part: &Path, total: u64) -> Result<u64> {
        let mut fetched = 0u64;
        let mut failures = 0u32;
        loop {
            let mut have = tokio::fs::metadata(part)
                .await
                .map(|m| m.len())
                .unwrap_or(0);
            if have > total {
                tokio::fs::remove_file(part)
                    .await
                    .map_err(|e| local_io(part, e))?;
                have = 0;
            }
            if have == total {
                return Ok(fetched);
            }
            match self
                .fetch_attempt(blob, part, have, total, &mut fetched)
                .await
            {
                Ok(()) => {}
                Err((e, progressed)) => {
                    if !transient(&e) {
                        return Err(e);
                    }
                    failures = if progressed { 1 } else { failures + 1 };
                    if failures >= MAX_ATTEMPTS {
                        return Err(e);
                    }
                    tracing::info!(%blob, error = %e, "download interrupted; resuming");
                    tokio::time::sleep(self.backoff(failures - 1)).await;
                }
            }
        }
    }

    async fn fetch_attempt(
        &self,
        blob: &BlobHash,
        part: &Path,
        have: u64,
        total: u64,
        fetched: &mut u64,
    ) -> std::result::Result<(), (Error, bool)> {
        let before = *fetched;
        let mut resp = self
            .api
            .download(blob, have)
            .await
            .map_err(|e| (e, false))?;
        let mut file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(part)
            .await
            .map_err(|e| (local_io(part, e), false))?;
        if have > 0 && resp.status() != reqwest::StatusCode::PARTIAL_CONTENT {
            // The server sent the whole blob: start over.
            file.set_len(0)
                .await
                .map_err(|e| (local_io(part, e), false))?;
        }
        let mut len = file
            .metadata()
            .await
            .map_err(|e| (local_io(part, e), false))?
            .len();
        loop {
            let chunk = match resp.chunk().await {
                Ok(Some(c)) => c,
                Ok(None) => break,
                Err(e) => {
                    let _ = file.flush().await;
                    return Err((
                        Error::Unreachable {
                            url: self.api.base().to_owned(),
                            reason: crate::api::describe(&e),
                        },
                        *fetched > before,
                    ));
                }
            };
            len += chunk.len() as u64;
            if len > total {
                let _ = file.set_len(0).await;
                return Err((
                    Error::Protocol(format!("the blob {blob} is longer than its {total} bytes")),
                    false,
                ));
            }
            file.write_all(&chunk)
                .await
                .map_err(|e| (local_io(part, e), false))?;
            *fetched += chunk.len() as u64;
        }
        file.flush().await.map_err(|e| (local_io(part, e), false))?;
        file.sync_data()
            .await
            .map_err(|e| (local_io(part, e), false))?;
        if len < total {
            return Err((
                Error::Unreachable {
                    url: self.api.base().to_owned(),
                    reason: format!("the download stopped after {len} of {total} bytes"),
                },
                *fetched > before,
            ));
        }
        Ok(())
    }
}

/// `len` bytes of the file at `path` from `offset`, as a streaming request body.
async fn file_segment(path: &Path, offset: u64, len: u64) -> Result<reqwest::Body> {
    let mut file = tokio::fs::File::open(path)
        .await
        .map_err(|e| local_io(path, e))?;
    file.seek(std::io::SeekFrom::Start(offset))
        .await
        .map_err(|e| local_io(path, e))?;
    let reader = file.take(len);
    let stream = futures_util::stream::unfold(Some(reader), |state| async move {
        let mut reader = state?;
        let mut buf = vec![0u8; 64 * 1024];
        match reader.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(buf), Some(reader)))
            }
            Err(e) => Some((Err(e), None)),
        }
    });
    Ok(reqwest::Body::wrap_stream(stream))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_from_senders_cannot_leave_the_directory() {
        assert_eq!(safe_name("../../etc/passwd").as_deref(), Some("passwd"));
        assert_eq!(safe_name("a\\b\\c.txt").as_deref(), Some("c.txt"));
        assert_eq!(safe_name(".."), None);
        assert_eq!(safe_name("dir/"), None);
        assert_eq!(safe_name("photo.png").as_deref(), Some("photo.png"));
    }

    #[test]
    fn mime_types() {
        assert_eq!(guess_mime(Path::new("a/B.JPG")), "image/jpeg");
        assert_eq!(guess_mime(Path::new("x")), "application/octet-stream");
        assert!(valid_mime("image/png"));
        assert!(!valid_mime("image"));
        assert!(!valid_mime("image/ png"));
        assert_eq!(human_size(1536), "1.5 KiB");
        assert_eq!(human_size(10), "10 B");
    }
}
