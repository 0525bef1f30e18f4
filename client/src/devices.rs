//! Devices of one's own and of others (spec/devices.md): linking a new device (DL),
//! which own devices this one trusts (DL7), safety numbers and verified contacts (DV).
//!
//! Linking: the new device opens a link ([`Client::start_link`]) and shows its code;
//! the user types the code on an existing device ([`Client::approve_link`]), which
//! checks the new device against the code, approves, trusts it and adds it to every
//! chat; the new device learns who approved it ([`Client::wait_for_approval`]).
//!
//! Trust: a device adds an own device to chats only if it trusts it: itself, a device
//! it approved, the device that approved it, and own devices a trusted own device
//! added (their Commit or Welcome). A device the server lists but no own device
//! approved is never added by this user's devices: the server cannot join the
//! user's chats by inventing a device.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use parley_client_api::http::links;
use parley_client_api::http::{Method, fill};
use parley_client_api::{BlobHash, ChatId, DeviceId, ErrorCode, Payload, UserId};
use parley_crypto::link::{LinkCode, LinkRequest, open_request, seal_approval};
use parley_crypto::{
    ArchiveKey, DevicePublicIdentity, Group, ValidatedKeyPackage, user_safety_number,
    verify_qr_payload,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::SqliteConnection;

use crate::api::{Api, wire};
use crate::client::{Client, now_ms};
use crate::error::{Error, Result};
use crate::store::{self, provider};

/// How often a waiting new device asks for its approval.
const POLL_EVERY: Duration = Duration::from_millis(300);
/// How long an approving device waits for its adds to be accepted before it exports
/// the history.
const OUTBOX_WAIT: Duration = Duration::from_secs(20);
/// `parley_state` key: this profile has bootstrapped its trusted devices.
const TRUST_BOOTSTRAPPED: &str = "trusted_devices_v1";

// ---- the link rendezvous on the wire ----

impl Api {
    async fn link_create(&self, link_id: &str, request: Vec<u8>) -> Result<i64> {
        let body = links::create::Request {
            link_id: link_id.to_owned(),
            request: Payload(request),
        };
        let r: links::create::Response = self
            .call(links::create::METHOD, links::create::PATH, Some(&body))
            .await?;
        Ok(r.expires_at)
    }

    async fn link_get(&self, link_id: &str) -> Result<links::get::Response> {
        let path = fill(links::get::PATH, &[("link_id", link_id)]);
        self.call::<(), _>(links::get::METHOD, &path, None).await
    }

    async fn link_approve(&self, link_id: &str, approval: Vec<u8>) -> Result<()> {
        let path = fill(links::approve::PATH, &[("link_id", link_id)]);
        let body: links::approve::Request = wire(serde_json::json!({
            "approval": Payload(approval),
        }))?;
        self.raw(links::approve::METHOD, &path, Some(&body))
            .await
            .map(drop)
    }

    async fn link_approval(&self, link_id: &str) -> Result<links::approval::Response> {
        let path = fill(links::approval::PATH, &[("link_id", link_id)]);
        self.call::<(), _>(Method::Get, &path, None).await
    }
}

// ---- public types ----

/// A link this (new) device opened: show [`PendingLink::code`] (or the QR payload) to
/// the user, then [`Client::wait_for_approval`].
#[derive(Debug)]
pub struct PendingLink {
    request: LinkRequest,
    expires_at: i64,
}

impl PendingLink {
    /// The code to type on an existing device: 24 characters in groups of four.
    pub fn code(&self) -> String {
        self.request.code().display()
    }

    /// The same code for a QR code.
    pub fn qr_payload(&self) -> String {
        self.request.code().qr_payload()
    }

    /// When the link expires (ms since the Unix epoch).
    pub fn expires_at(&self) -> i64 {
        self.expires_at
    }
}

/// What the approving device sends the new one inside the sealed approval (DL4).
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct ApprovalPayload {
    pub(crate) v: u32,
    /// The history archive for the new device (DL9), if the user chose to send it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) history: Option<HistoryRef>,
}

/// Where the history archive is and the key it is sealed under (only ever inside the
/// sealed approval).
#[derive(Serialize, Deserialize)]
pub(crate) struct HistoryRef {
    /// The blob address (media storage of the approver's server).
    pub(crate) blob: String,
    pub(crate) size: u64,
    /// The archive key, hex: fresh for this transfer, for this device only.
    pub(crate) key: String,
}

impl std::fmt::Debug for HistoryRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HistoryRef")
            .field("blob", &self.blob)
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

/// How much history the approving device sends the new one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HistoryRange {
    /// None: the new device starts empty.
    Nothing,
    /// Everything this device has.
    All,
    /// The messages of the last N days.
    Days(u32),
}

/// The new device's view of a finished link.
#[derive(Debug, Clone)]
pub struct Linked {
    /// The device that approved this one.
    pub approved_by: DeviceId,
    /// The history it sent, imported (`None`: none was sent).
    pub history: Option<crate::history::ImportSummary>,
    /// The history archive's blob address and size, if one was sent.
    pub history_blob: Option<(String, u64)>,
}

/// The approving device's view of a finished link.
#[derive(Debug, Clone)]
pub struct LinkedDevice {
    /// The new device, now trusted and added to every chat.
    pub device_id: DeviceId,
    /// The history sent (`None`: none).
    pub history: Option<crate::history::ExportSummary>,
}

/// Whether the user verified a contact (spec/devices.md DV3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verification {
    /// Never marked verified.
    Unverified,
    /// Marked verified, and their devices are the ones they had then.
    Verified,
    /// Marked verified, but their devices changed since: compare the safety number again.
    Changed,
}

/// A safety number with a contact (spec/devices.md DV1, DV2).
#[derive(Debug, Clone)]
pub struct SafetyNumber {
    /// 60 digits in 12 groups of five.
    pub number: String,
    /// What a QR code shows.
    pub qr_payload: String,
    /// Devices it covers: this user's and the contact's.
    pub own_devices: usize,
    pub their_devices: usize,
    pub verification: Verification,
}

// ---- trusted own devices ----

/// This device's trusted own devices: device id → identity key.
pub(crate) async fn trusted(conn: &mut SqliteConnection) -> Result<HashMap<String, [u8; 32]>> {
    let rows: Vec<(String, Vec<u8>)> =
        sqlx::query_as("SELECT device_id, identity_key FROM trusted_devices")
            .fetch_all(conn)
            .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(d, k)| Some((d, k.try_into().ok()?)))
        .collect())
}

/// Trusts an own device. A device id trusted already keeps its first key.
pub(crate) async fn trust(
    conn: &mut SqliteConnection,
    identity: &DevicePublicIdentity,
    how: &str,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO trusted_devices (device_id, identity_key, how, trusted_at)
         VALUES (?1, ?2, ?3, ?4) ON CONFLICT (device_id) DO NOTHING",
    )
    .bind(identity.device_id().as_str())
    .bind(identity.key().as_slice())
    .bind(how)
    .bind(now_ms())
    .execute(conn)
    .await?;
    Ok(())
}

/// Whether a claimed KeyPackage of an own device belongs to a trusted device (same id
/// and key).
pub(crate) fn trusted_key_package(
    kp: &ValidatedKeyPackage,
    trusted: &HashMap<String, [u8; 32]>,
) -> bool {
    let id = kp.identity();
    trusted
        .get(id.device_id().as_str())
        .is_some_and(|k| k == id.key())
}

/// Trusts this device, and once per profile the own devices already in its chats (a
/// profile from before trust was kept: they were added when every listed device was).
pub(crate) async fn bootstrap_trust(
    conn: &mut SqliteConnection,
    me: &DevicePublicIdentity,
) -> Result<()> {
    trust(conn, me, "self").await?;
    let done: Option<String> = sqlx::query_scalar("SELECT value FROM parley_state WHERE key = ?1")
        .bind(TRUST_BOOTSTRAPPED)
        .fetch_optional(&mut *conn)
        .await?;
    if done.is_some() {
        return Ok(());
    }
    let chats = store::joined_chats(conn).await?;
    let mut found = Vec::new();
    {
        let p = provider(conn);
        for chat in &chats {
            if let Ok(Some(g)) = Group::load(&p, chat.as_str().as_bytes()) {
                found.extend(
                    g.members()
                        .unwrap_or_default()
                        .into_iter()
                        .filter(|m| m.identity.user_id() == me.user_id())
                        .map(|m| m.identity),
                );
            }
        }
    }
    for identity in &found {
        trust(conn, identity, "existing").await?;
    }
    store::set_state(conn, TRUST_BOOTSTRAPPED, "1").await
}

/// After another member's Commit: a trusted own device that adds own devices vouches
/// for them.
pub(crate) async fn after_commit(
    conn: &mut SqliteConnection,
    me: &UserId,
    committer: &DevicePublicIdentity,
    added: &[DevicePublicIdentity],
) -> Result<()> {
    if committer.user_id().as_str() != me.as_str()
        || added.iter().all(|d| d.user_id().as_str() != me.as_str())
    {
        return Ok(());
    }
    let t = trusted(conn).await?;
    if t.get(committer.device_id().as_str()) != Some(committer.key()) {
        return Ok(());
    }
    for d in added.iter().filter(|d| d.user_id().as_str() == me.as_str()) {
        trust(conn, d, "commit").await?;
    }
    Ok(())
}

/// After joining from a Welcome: if a trusted own device added us, the own devices in
/// the group are trusted too.
pub(crate) async fn after_join(
    conn: &mut SqliteConnection,
    me: &UserId,
    welcomer: (&UserId, &DeviceId),
    group: &Group,
) -> Result<()> {
    if welcomer.0 != me {
        return Ok(());
    }
    let members = group.members().unwrap_or_default();
    let t = trusted(conn).await?;
    let vouched = members.iter().any(|m| {
        m.identity.user_id().as_str() == me.as_str()
            && m.identity.device_id().as_str() == welcomer.1.as_str()
            && t.get(welcomer.1.as_str()) == Some(m.identity.key())
    });
    if !vouched {
        return Ok(());
    }
    for m in members
        .iter()
        .filter(|m| m.identity.user_id().as_str() == me.as_str())
    {
        trust(conn, &m.identity, "welcome").await?;
    }
    Ok(())
}

// ---- device sets, safety numbers, verification ----

/// The devices of `users` in this device's groups (the groups they share with us),
/// keyed by user; only groups that include `peer`.
fn devices_in_shared_groups(
    conn: &mut SqliteConnection,
    chats: &[ChatId],
    peer: &UserId,
) -> Result<BTreeMap<String, Vec<DevicePublicIdentity>>> {
    let p = provider(conn);
    let mut out: BTreeMap<String, Vec<DevicePublicIdentity>> = BTreeMap::new();
    for chat in chats {
        let Some(g) = Group::load(&p, chat.as_str().as_bytes()).map_err(Error::crypto)? else {
            continue;
        };
        let members = g.members().map_err(Error::crypto)?;
        if !members
            .iter()
            .any(|m| m.identity.user_id().as_str() == peer.as_str())
        {
            continue;
        }
        for m in members {
            let list = out
                .entry(m.identity.user_id().as_str().to_owned())
                .or_default();
            if !list.contains(&m.identity) {
                list.push(m.identity);
            }
        }
    }
    Ok(out)
}

/// What a verification remembers of a contact's devices: SHA-256 over their sorted
/// identity encodings.
fn device_set_hash(devices: &[DevicePublicIdentity]) -> String {
    let mut enc: Vec<Vec<u8>> = devices.iter().map(DevicePublicIdentity::to_bytes).collect();
    enc.sort();
    enc.dedup();
    let mut h = Sha256::new();
    for e in enc {
        h.update((e.len() as u16).to_be_bytes());
        h.update(&e);
    }
    hex::encode(h.finalize())
}

async fn verified_row(
    conn: &mut SqliteConnection,
    user: &UserId,
) -> Result<Option<(String, Option<i64>)>> {
    Ok(
        sqlx::query_as("SELECT device_set, changed_at FROM verified_users WHERE user_id = ?1")
            .bind(user.as_str())
            .fetch_optional(conn)
            .await?,
    )
}

/// After a Commit changed who is in a group: a verified contact whose devices are no
/// longer the verified ones is marked changed (DV4). Returns the users newly marked.
pub(crate) async fn note_device_changes(
    conn: &mut SqliteConnection,
    me: &UserId,
    users: &[UserId],
) -> Result<Vec<UserId>> {
    let mut marked = Vec::new();
    let mut chats = None;
    for user in users.iter().filter(|u| *u != me) {
        let Some((set, None)) = verified_row(conn, user).await? else {
            continue;
        };
        if chats.is_none() {
            chats = Some(store::joined_chats(conn).await?);
        }
        let sets = devices_in_shared_groups(conn, chats.as_deref().unwrap_or_default(), user)?;
        let now = sets
            .get(user.as_str())
            .map(Vec::as_slice)
            .unwrap_or_default();
        if now.is_empty() || device_set_hash(now) == set {
            continue;
        }
        sqlx::query("UPDATE verified_users SET changed_at = ?2 WHERE user_id = ?1")
            .bind(user.as_str())
            .bind(now_ms())
            .execute(&mut *conn)
            .await?;
        marked.push(user.clone());
    }
    Ok(marked)
}

/// Whether `user`'s verification changed since it was marked: a received message
/// then carries a warning event first (DV4).
pub(crate) async fn verification_changed(
    conn: &mut SqliteConnection,
    user: &UserId,
) -> Result<bool> {
    Ok(matches!(
        verified_row(conn, user).await?,
        Some((_, Some(_)))
    ))
}

impl Client {
    /// The safety number with `peer` (spec/devices.md DV1): over every device of both
    /// users, as this device's groups shared with `peer` hold them (keys checked by
    /// MLS). Both users see the same number once their groups agree; it changes when
    /// either adds or removes a device.
    pub async fn safety_number(&self, peer: &UserId) -> Result<SafetyNumber> {
        let inner = &self.inner;
        if peer == &inner.user_id {
            return Err(Error::Invalid(
                "a safety number is between you and someone else".into(),
            ));
        }
        let mut conn = inner.db.writer.lock().await;
        let chats = store::joined_chats(&mut conn).await?;
        let sets = devices_in_shared_groups(&mut conn, &chats, peer)?;
        let theirs = sets.get(peer.as_str()).cloned().unwrap_or_default();
        if theirs.is_empty() {
            return Err(Error::Invalid(format!(
                "you share no chat with {peer} yet: the safety number is made of the keys of their devices, which a chat brings"
            )));
        }
        let mut mine = sets
            .get(inner.user_id.as_str())
            .cloned()
            .unwrap_or_default();
        let me = inner.identity.public().clone();
        if !mine.contains(&me) {
            mine.push(me);
        }
        let me_id = crypto_user(&inner.user_id)?;
        let peer_id = crypto_user(peer)?;
        let n = user_safety_number((&me_id, &mine), (&peer_id, &theirs))
            .ok_or_else(|| Error::Crypto("a device names another user".into()))?;
        let verification = match verified_row(&mut conn, peer).await? {
            None => Verification::Unverified,
            Some((_, Some(_))) => Verification::Changed,
            Some((set, None)) if set == device_set_hash(&theirs) => Verification::Verified,
            Some(_) => Verification::Changed,
        };
        Ok(SafetyNumber {
            number: n.to_string(),
            qr_payload: verify_qr_payload(&me_id, &peer_id, &n),
            own_devices: mine.len(),
            their_devices: theirs.len(),
            verification,
        })
    }

    /// Marks `peer` verified with their current devices (after comparing the safety
    /// number): a later change of their devices shows as [`Verification::Changed`] and
    /// a warning before their next message (DV3, DV4).
    pub async fn mark_verified(&self, peer: &UserId) -> Result<SafetyNumber> {
        let mut n = self.safety_number(peer).await?;
        let mut conn = self.inner.db.writer.lock().await;
        let chats = store::joined_chats(&mut conn).await?;
        let sets = devices_in_shared_groups(&mut conn, &chats, peer)?;
        let theirs = sets.get(peer.as_str()).cloned().unwrap_or_default();
        sqlx::query(
            "INSERT INTO verified_users (user_id, device_set, verified_at, changed_at)
             VALUES (?1, ?2, ?3, NULL)
             ON CONFLICT (user_id) DO UPDATE SET device_set = excluded.device_set,
               verified_at = excluded.verified_at, changed_at = NULL",
        )
        .bind(peer.as_str())
        .bind(device_set_hash(&theirs))
        .bind(now_ms())
        .execute(&mut *conn)
        .await?;
        n.verification = Verification::Verified;
        Ok(n)
    }

    /// Whether `peer` is verified, and whether their devices changed since.
    pub async fn verification(&self, peer: &UserId) -> Result<Verification> {
        let mut conn = self.inner.db.writer.lock().await;
        Ok(match verified_row(&mut conn, peer).await? {
            None => Verification::Unverified,
            Some((_, None)) => Verification::Verified,
            Some((_, Some(_))) => Verification::Changed,
        })
    }

    // ---- linking ----

    /// On the new device (logged in, not yet in any chat): opens a link and returns its
    /// code, to show the user (spec/devices.md DL1, DL2).
    pub async fn start_link(&self) -> Result<PendingLink> {
        let (request, sealed) = LinkRequest::new(self.inner.identity.public());
        let link_id = request.code().link_id();
        let expires_at = self.inner.api.link_create(&link_id, sealed).await?;
        Ok(PendingLink {
            request,
            expires_at,
        })
    }

    /// On the new device: waits (up to `timeout`) until an existing device approves the
    /// link, checks the approval and trusts the approver (DL5). The approver adds this
    /// device to the user's chats; their Welcomes arrive on the event stream.
    pub async fn wait_for_approval(&self, link: PendingLink, timeout: Duration) -> Result<Linked> {
        let inner = &self.inner;
        let link_id = link.request.code().link_id();
        let deadline = tokio::time::Instant::now() + timeout;
        let (approved_by, approval) = loop {
            let r = inner.api.link_approval(&link_id).await?;
            if let (Some(by), Some(a)) = (r.approved_by, r.approval) {
                break (by, a);
            }
            if tokio::time::Instant::now() + POLL_EVERY > deadline {
                return Err(Error::Invalid(format!(
                    "no device approved this link within {timeout:?}"
                )));
            }
            tokio::time::sleep(POLL_EVERY).await;
        };
        let (approver, payload) = link.request.open_approval(approval.as_bytes()).map_err(|e| {
            Error::Invalid(format!(
                "the approval does not match this link ({e}); this device trusts nothing from it"
            ))
        })?;
        if approver.user_id().as_str() != inner.user_id.as_str()
            || approver.device_id().as_str() != approved_by.as_str()
        {
            return Err(Error::Invalid(format!(
                "the approval names {} ({}), not a device of yours; ignored",
                approver.user_id(),
                approver.device_id()
            )));
        }
        let payload: ApprovalPayload = serde_json::from_slice(&payload).unwrap_or_default();
        {
            let mut conn = inner.db.writer.lock().await;
            trust(&mut conn, &approver, "approver").await?;
        }
        tracing::info!(approver = %approved_by, "this device was linked");
        let (history, history_blob) = match payload.history {
            None => (None, None),
            Some(h) => {
                let key: [u8; 32] = hex::decode(&h.key)
                    .ok()
                    .and_then(|k| k.try_into().ok())
                    .ok_or_else(|| Error::Protocol("the history key is malformed".into()))?;
                let summary = self
                    .import_history_blob(&h.blob, h.size, &ArchiveKey::from_bytes(key))
                    .await?;
                (Some(summary), Some((h.blob, h.size)))
            }
        };
        Ok(Linked {
            approved_by,
            history,
            history_blob,
        })
    }

    /// Downloads a history archive (blob `blob`, `size` bytes, from this user's server)
    /// and imports it with `key` (DL9). A blob sealed for another device does not open
    /// with this device's key: [`Error::WrongKey`], and nothing changes.
    pub async fn import_history_blob(
        &self,
        blob: &str,
        size: u64,
        key: &ArchiveKey,
    ) -> Result<crate::history::ImportSummary> {
        let inner = &self.inner;
        let hash = BlobHash::try_from(blob)
            .map_err(|e| Error::Protocol(format!("history blob address: {e}")))?;
        let part = inner.media_dir("history")?.join(format!("{blob}.part"));
        inner.fetch_blob(&hash, &part, size).await?;
        let result = async {
            let file = std::fs::File::open(&part).map_err(Error::store)?;
            self.import_history(key, file).await
        }
        .await;
        let _ = std::fs::remove_file(&part);
        result
    }

    /// On an existing device: approves the link whose code the user typed (DL3, DL4):
    /// reads the new device's request, checks it against the code (the server cannot
    /// substitute another device), approves once, trusts the new device and adds it to
    /// every chat of the user (one Commit per chat, through each chat's hub).
    pub async fn approve_link(&self, code: &str, history: HistoryRange) -> Result<LinkedDevice> {
        let inner = &self.inner;
        let code = LinkCode::parse(code).map_err(|e| Error::Invalid(e.to_string()))?;
        let link_id = code.link_id();
        let r = inner.api.link_get(&link_id).await?;
        let opened = open_request(&code, r.request.as_bytes()).map_err(|e| {
            Error::Invalid(format!(
                "the link does not match this code ({e}): check the code shown on the new device; nothing was changed"
            ))
        })?;
        let new = &opened.identity;
        if new.user_id().as_str() != inner.user_id.as_str()
            || new.device_id().as_str() != r.device_id.as_str()
            || r.device_id == inner.device_id
        {
            return Err(Error::Invalid(format!(
                "the link names {} ({}) but the server says {}: refused, nothing was changed",
                new.user_id(),
                new.device_id(),
                r.device_id
            )));
        }
        {
            let mut conn = inner.db.writer.lock().await;
            trust(&mut conn, new, "approved").await?;
        }
        tracing::info!(device = %r.device_id, "approving a new device");
        inner.sync_devices(true).await?;
        let (history_ref, exported) = match history {
            HistoryRange::Nothing => (None, None),
            HistoryRange::All | HistoryRange::Days(_) => {
                // The history covers what was ordered before the device's adds were
                // accepted (when connected), so nothing falls between it and the chats.
                let deadline = tokio::time::Instant::now() + OUTBOX_WAIT;
                while inner.db.reader.outbox_len().await? > 0
                    && tokio::time::Instant::now() < deadline
                {
                    tokio::time::sleep(POLL_EVERY).await;
                }
                let since = match history {
                    HistoryRange::Days(n) => Some(now_ms() - i64::from(n) * 86_400_000),
                    _ => None,
                };
                let (h, summary) = self.send_history(since).await?;
                (Some(h), Some(summary))
            }
        };
        let payload = serde_json::to_vec(&ApprovalPayload {
            v: 1,
            history: history_ref,
        })
        .map_err(|e| Error::Protocol(e.to_string()))?;
        let approval = seal_approval(&code, &opened, inner.identity.public(), &payload);
        inner.api.link_approve(&link_id, approval).await?;
        tracing::info!(device = %r.device_id, "approved a new device");
        Ok(LinkedDevice {
            device_id: r.device_id,
            history: exported,
        })
    }

    /// Exports the history under a fresh key and uploads the archive (DL9).
    async fn send_history(
        &self,
        since: Option<i64>,
    ) -> Result<(HistoryRef, crate::history::ExportSummary)> {
        let inner = &self.inner;
        let key = ArchiveKey::generate();
        let path = inner.media_dir("history")?.join(format!(
            "out-{}",
            parley_crypto::MessageId::random().as_str()
        ));
        let file = std::fs::File::create(&path).map_err(Error::store)?;
        let result = async {
            let (file, summary) = self.export_history(since, &key, file).await?;
            file.sync_all().map_err(Error::store)?;
            drop(file);
            let hash = {
                let mut f = std::fs::File::open(&path).map_err(Error::store)?;
                let mut h = Sha256::new();
                std::io::copy(&mut f, &mut h).map_err(Error::store)?;
                hex::encode(h.finalize())
            };
            let blob = BlobHash::try_from(hash.as_str())
                .map_err(|e| Error::Protocol(format!("history blob address: {e}")))?;
            inner
                .upload_blob(&path, &blob, summary.archive_bytes)
                .await
                .map_err(|(e, _)| e)?;
            Ok((
                HistoryRef {
                    blob: hash,
                    size: summary.archive_bytes,
                    key: hex::encode(key.as_bytes()),
                },
                summary,
            ))
        }
        .await;
        let _ = std::fs::remove_file(&path);
        result
    }
}

fn crypto_user(u: &UserId) -> Result<parley_crypto::UserId> {
    parley_crypto::UserId::try_from(u.as_str()).map_err(Error::crypto)
}

/// Whether a server error says the link expired or was used (for callers that
/// explain it).
pub fn is_spent_link(e: &Error) -> bool {
    matches!(
        e.code(),
        Some(ErrorCode::LinkExpired | ErrorCode::LinkUsed | ErrorCode::UnknownLink)
    )
}

impl Client {
    /// The devices in this device's view of a chat's MLS group (keys checked by MLS).
    pub async fn group_devices(&self, chat: &ChatId) -> Result<Vec<(UserId, DeviceId)>> {
        let mut conn = self.inner.db.writer.lock().await;
        let p = provider(&mut conn);
        let Some(g) = Group::load(&p, chat.as_str().as_bytes()).map_err(Error::crypto)? else {
            return Err(Error::NotJoined(chat.to_string()));
        };
        Ok(g.members()
            .map_err(Error::crypto)?
            .iter()
            .filter_map(|m| {
                Some((
                    UserId::try_from(m.identity.user_id().as_str()).ok()?,
                    DeviceId::try_from(m.identity.device_id().as_str()).ok()?,
                ))
            })
            .collect())
    }
}
