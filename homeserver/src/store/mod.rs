//! Storage: one [`Store`] interface, two backends ([`pg`] for production, [`sqlite`] as
//! the zero-setup default), each with its own migrations under `migrations/`.
//!
//! Backends only translate: the decisions a batch needs (duplicates, membership, which
//! sequence numbers, which inbox rows, which receipts changed) are made by the pure
//! functions in [`plan`], which both backends call with what they read inside the
//! transaction. Nothing here is acknowledged to anyone before its transaction commits.

pub mod backups;
pub mod blocks;
pub mod contacts;
pub mod devices;
pub mod disappearing;
pub mod fed;
mod fed_pg;
mod fed_sqlite;
pub mod group_info;
pub mod links;
pub mod pg;
pub mod plan;
pub mod presence;
pub mod receipt_policy;
pub mod reports;
pub mod sqlite;

use std::future::Future;

use parley_client_api::http::chats::{
    ChatEvent, ChatKind, MembershipChange, MlsKind, MlsMeta, Receipt,
};
use parley_client_api::{BlobHash, ChatId, DeviceId, UserId};
use parley_federation::Policy;
use parley_federation::policy::{Action as RuleAction, Mode, Pattern, Rule};

pub use plan::{AckedRow, SendOutcome};

/// Storage failures. Constraint conflicts the services expect are typed; the rest is
/// the database's own error, which the API boundary logs and reports as `internal`.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("already exists: {0}")]
    Conflict(&'static str),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("corrupt row: {0}")]
    Corrupt(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

#[derive(Debug, Clone)]
pub struct NewUser {
    pub user_id: UserId,
    pub localpart: String,
    pub password_hash: String,
    pub created_at: i64,
}

#[derive(Debug, Clone)]
pub struct NewDevice {
    pub device_id: DeviceId,
    pub user_id: UserId,
    pub display_name: Option<String>,
    pub token_hash: [u8; 32],
    pub created_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRow {
    pub device_id: DeviceId,
    pub display_name: Option<String>,
    pub created_at: i64,
}

#[derive(Debug, Clone)]
pub struct NewChat {
    pub chat_id: ChatId,
    pub kind: ChatKind,
    /// Set for direct chats: the two members, sorted, so a pair has one direct chat.
    pub direct_key: Option<String>,
    pub created_by: UserId,
    /// Every member, the creator included. The creator is the first admin.
    pub members: Vec<UserId>,
    pub name: Option<String>,
    pub created_at: i64,
    /// Other servers with members: each gets the new chat's state (federation outbox).
    pub followers: Vec<String>,
}

/// A chat's kind, name, MLS epoch and members with their roles.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatInfo {
    pub kind: ChatKind,
    pub name: Option<String>,
    pub mls_epoch: u64,
    /// `(member, admin)`, by user id.
    pub members: Vec<(UserId, bool)>,
}

/// What a member sees of a chat in their chat list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatListRow {
    pub chat_id: ChatId,
    pub kind: ChatKind,
    pub name: Option<String>,
    pub members: Vec<UserId>,
    pub last_seq: i64,
    pub last_ts: i64,
    pub read_seq: i64,
    pub unread_count: i64,
    pub created_at: i64,
}

/// A send, as the sequencer hands it to the store.
#[derive(Debug, Clone)]
pub struct SendRequest {
    pub chat_id: ChatId,
    pub sender: UserId,
    pub sender_device: DeviceId,
    pub client_msg_id: String,
    pub payload: Vec<u8>,
    /// Server time of acceptance (ms).
    pub ts: i64,
    pub mls: Option<MlsMeta>,
    pub membership: Option<MembershipChange>,
    pub blobs: Vec<BlobHash>,
    /// Disappearing messages: seconds after `ts` at which the event expires.
    pub expires_in: Option<u32>,
    /// The chat's read-receipt policy this event sets.
    pub read_receipts: Option<bool>,
    /// With a commit: the GroupInfo of the epoch it creates, kept as the chat's
    /// GroupInfo if the commit is accepted (`store::group_info`).
    pub group_info: Option<Vec<u8>>,
}

impl SendRequest {
    /// At most how many bytes the event of this send takes in a federation transaction
    /// (`FedEvent`; the GroupInfo stays with the hub).
    pub fn event_wire_bytes(&self) -> usize {
        let membership = self
            .membership
            .as_ref()
            .map_or(0, |m| serde_json::to_string(m).map_or(0, |s| s.len()));
        let blobs: usize = self.blobs.iter().map(|b| b.to_string().len() + 3).sum();
        fed::entry_wire_bytes(
            self.payload.len(),
            membership + blobs + self.client_msg_id.len(),
        )
    }
}

/// One item of a device's inbox, as replayed on reconnect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InboxItem {
    Event {
        id: i64,
        event: ChatEvent,
    },
    Receipt {
        id: i64,
        chat_id: ChatId,
        receipt: Receipt,
    },
    /// The conclusion of a forwarded send that was answered `pending`: a `sent_late` or
    /// `send_failed` frame carrying this item's id.
    SendResult {
        id: i64,
        frame: parley_client_api::ws::ServerFrame,
    },
}

impl InboxItem {
    pub fn id(&self) -> i64 {
        match self {
            InboxItem::Event { id, .. }
            | InboxItem::Receipt { id, .. }
            | InboxItem::SendResult { id, .. } => *id,
        }
    }
}

/// A stored `sent_late`/`send_failed` frame (kept without its id) as the inbox item
/// `id`; None if the body is not such a frame.
pub(crate) fn send_result_item(id: i64, body: &str) -> Option<InboxItem> {
    use parley_client_api::ws::ServerFrame;
    let mut frame: ServerFrame = serde_json::from_str(body).ok()?;
    match &mut frame {
        ServerFrame::SentLate { id: slot, .. } | ServerFrame::SendFailed { id: slot, .. } => {
            *slot = id;
        }
        _ => return None,
    }
    Some(InboxItem::SendResult { id, frame })
}

/// One device's acknowledgement of inbox items.
#[derive(Debug, Clone)]
pub struct AckRequest {
    pub user_id: UserId,
    pub device_id: DeviceId,
    pub ids: Vec<i64>,
}

/// A receipt change written into a device's inbox (to push it live after commit).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiptNotice {
    pub device_id: DeviceId,
    pub id: i64,
    pub chat_id: ChatId,
    pub receipt: Receipt,
}

/// A stored blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobRow {
    pub size: u64,
    /// The user who uploaded it here, or for a blob fetched from another server, that
    /// server's name (never a user id: it counts against no quota and grants no access).
    pub uploader: String,
    pub created_at: i64,
}

/// What registering an upload found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UploadStart {
    /// Proceed.
    Started,
    /// The blob is already stored: nothing to upload.
    Stored { size: u64 },
    /// The user's blobs and uploads would exceed the quota.
    QuotaExceeded { used: u64 },
    /// An upload of this blob by this user is under way with another total.
    TotalMismatch { total: u64 },
}

/// Row counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub users: i64,
    pub devices: i64,
    pub chats: i64,
    pub inbox_rows: i64,
}

/// What removing expired data removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Purged {
    pub inbox_rows: u64,
    pub events: u64,
}

/// The homeserver's storage interface. Every method is one transaction.
pub trait Store: Send + Sync + 'static {
    /// Which backend, for logs: `"postgres"` or `"sqlite"`.
    fn backend(&self) -> &'static str;

    // --- accounts -------------------------------------------------------------------
    /// Fails with `Conflict("user")` when the user id or localpart is taken.
    fn create_user(&self, user: &NewUser) -> impl Future<Output = Result<()>> + Send;
    /// `(user_id, password_hash)` for a localpart.
    fn user_password(
        &self,
        localpart: &str,
    ) -> impl Future<Output = Result<Option<(UserId, String)>>> + Send;
    fn user_exists(&self, user_id: &UserId) -> impl Future<Output = Result<bool>> + Send;
    fn create_device(&self, device: &NewDevice) -> impl Future<Output = Result<()>> + Send;
    /// The device a token hash belongs to.
    fn device_by_token(
        &self,
        token_hash: &[u8; 32],
    ) -> impl Future<Output = Result<Option<(UserId, DeviceId)>>> + Send;
    fn list_devices(&self, user_id: &UserId)
    -> impl Future<Output = Result<Vec<DeviceRow>>> + Send;
    /// Removes a device, its token and its inbox. False if it is not that user's.
    fn delete_device(
        &self,
        user_id: &UserId,
        device_id: &DeviceId,
    ) -> impl Future<Output = Result<bool>> + Send;

    // --- chats ----------------------------------------------------------------------
    /// Creates the chat, or returns the existing direct chat of the same pair
    /// (`(chat_id, created)`).
    fn create_chat(&self, chat: &NewChat) -> impl Future<Output = Result<(ChatId, bool)>> + Send;
    /// Current members of a chat; `None` if the chat does not exist.
    fn chat_members(
        &self,
        chat_id: &ChatId,
    ) -> impl Future<Output = Result<Option<Vec<UserId>>>> + Send;
    /// The chats a user is a member of, most recently active first.
    fn list_chats(&self, user_id: &UserId)
    -> impl Future<Output = Result<Vec<ChatListRow>>> + Send;
    /// False if the user was not a member.
    fn leave_chat(
        &self,
        chat_id: &ChatId,
        user_id: &UserId,
        at: i64,
    ) -> impl Future<Output = Result<bool>> + Send;
    /// Commits a batch of sends in one transaction: sequence numbers, MLS epochs,
    /// membership changes, events, inbox rows. Outcomes are index-aligned with `batch`.
    fn commit_sends(
        &self,
        batch: &[SendRequest],
        max_members: usize,
    ) -> impl Future<Output = Result<Vec<SendOutcome>>> + Send;
    /// `None` if the chat does not exist.
    fn chat_info(&self, chat_id: &ChatId) -> impl Future<Output = Result<Option<ChatInfo>>> + Send;
    fn rename_chat(&self, chat_id: &ChatId, name: &str) -> impl Future<Output = Result<()>> + Send;
    /// False if the user is not a member.
    fn set_admin(
        &self,
        chat_id: &ChatId,
        user_id: &UserId,
        admin: bool,
    ) -> impl Future<Output = Result<bool>> + Send;
    /// Events with `seq > after`, at most `limit`, in order.
    fn history(
        &self,
        chat_id: &ChatId,
        after: i64,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<ChatEvent>>> + Send;

    // --- inbox and receipts ---------------------------------------------------------
    /// A device's inbox items with `id > after`, at most `limit`, by id.
    fn inbox_page(
        &self,
        device_id: &DeviceId,
        after: i64,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<InboxItem>>> + Send;
    /// Removes acknowledged items, raises delivered receipts and writes the receipt
    /// changes into the senders' inboxes, all in one transaction. With `fanout` (when
    /// federation is on) the raised receipts are also recorded for other servers, in
    /// the same transaction (`FedStore::receipt_fanout`).
    fn commit_acks(
        &self,
        batch: &[AckRequest],
        at: i64,
        fanout: bool,
    ) -> impl Future<Output = Result<Vec<ReceiptNotice>>> + Send;
    /// Raises a member's read (and delivered) receipt to `seq` (capped at the chat's
    /// last seq) and notifies the senders of newly read events and the member's other
    /// devices. `None` if not a member.
    fn mark_read(
        &self,
        chat_id: &ChatId,
        user_id: &UserId,
        device_id: &DeviceId,
        seq: i64,
        at: i64,
    ) -> impl Future<Output = Result<Option<Vec<ReceiptNotice>>>> + Send;
    /// Every member's receipts and the chat's last seq; `None` if the chat is unknown.
    fn receipts(
        &self,
        chat_id: &ChatId,
    ) -> impl Future<Output = Result<Option<(i64, Vec<Receipt>)>>> + Send;
    /// Deletes inbox rows and events older than `before` (ms).
    fn purge_expired(&self, before: i64) -> impl Future<Output = Result<Purged>> + Send;
    /// Drops events whose disappearing timer ended at or before `now` (at most `limit`),
    /// with their undelivered inbox rows and blob references.
    fn purge_disappeared(
        &self,
        now: i64,
        limit: i64,
    ) -> impl Future<Output = Result<disappearing::Disappeared>> + Send;
    /// Counts for metrics and the admin API.
    fn stats(&self) -> impl Future<Output = Result<Stats>> + Send;

    // --- media ----------------------------------------------------------------------
    fn blob(&self, hash: &BlobHash) -> impl Future<Output = Result<Option<BlobRow>>> + Send;
    /// Registers (or continues) `user`'s upload of `hash`, checking their quota.
    fn start_upload(
        &self,
        hash: &BlobHash,
        user: &UserId,
        total: u64,
        quota: u64,
        now: i64,
    ) -> impl Future<Output = Result<UploadStart>> + Send;
    /// Records the stored blob and ends the upload.
    fn finish_upload(
        &self,
        hash: &BlobHash,
        user: &UserId,
        size: u64,
        now: i64,
    ) -> impl Future<Output = Result<()>> + Send;
    fn cancel_upload(
        &self,
        hash: &BlobHash,
        user: &UserId,
    ) -> impl Future<Output = Result<()>> + Send;
    /// The uploader, or a current member of a chat with an event referring to the blob.
    fn can_download(
        &self,
        hash: &BlobHash,
        user: &UserId,
    ) -> impl Future<Output = Result<bool>> + Send;
    /// The senders of events referring to `hash` in chats `user` is a current member of
    /// (distinct, at most `limit`): where the blob is stored (the sender's server).
    fn blob_senders(
        &self,
        hash: &BlobHash,
        user: &UserId,
        limit: i64,
    ) -> impl Future<Output = Result<Vec<UserId>>> + Send;
    /// Whether an event of a chat with a current member on `server` refers to `hash`.
    fn blob_shared_with(
        &self,
        hash: &BlobHash,
        server: &str,
    ) -> impl Future<Output = Result<bool>> + Send;
    /// Records a blob fetched from `origin` (and checked); a no-op if it is stored.
    fn insert_fetched_blob(
        &self,
        hash: &BlobHash,
        size: u64,
        origin: &str,
        now: i64,
    ) -> impl Future<Output = Result<()>> + Send;
    /// Blobs created before `before` that no retained event refers to and that are no
    /// user's backup.
    fn unreferenced_blobs(&self, before: i64)
    -> impl Future<Output = Result<Vec<BlobHash>>> + Send;
    fn delete_blob(&self, hash: &BlobHash) -> impl Future<Output = Result<()>> + Send;
    /// Removes uploads started before `before` and returns them (their staged bytes go).
    fn take_stale_uploads(
        &self,
        before: i64,
    ) -> impl Future<Output = Result<Vec<(BlobHash, UserId)>>> + Send;
    /// Marks the user deactivated and removes all their devices (tokens, inboxes);
    /// returns the removed devices, or `None` if there is no such active user.
    fn deactivate_user(
        &self,
        user_id: &UserId,
        at: i64,
    ) -> impl Future<Output = Result<Option<Vec<DeviceId>>>> + Send;
    /// False if there is no such active user.
    fn set_password(
        &self,
        user_id: &UserId,
        password_hash: &str,
    ) -> impl Future<Output = Result<bool>> + Send;

    // --- key packages ---------------------------------------------------------------
    /// Adds one-time KeyPackages and replaces the last-resort one, unless the device would
    /// then hold more than `max_stored` one-time ones (`Conflict("key_packages")`).
    fn upload_key_packages(
        &self,
        device_id: &DeviceId,
        one_time: &[Vec<u8>],
        last_resort: Option<&[u8]>,
        max_stored: u32,
    ) -> impl Future<Output = Result<KeyPackageCount>> + Send;
    fn key_package_count(
        &self,
        device_id: &DeviceId,
    ) -> impl Future<Output = Result<KeyPackageCount>> + Send;
    /// For each device of `user_id`: removes and returns one one-time KeyPackage, or
    /// returns (without removing) the last-resort one.
    fn claim_key_packages(
        &self,
        user_id: &UserId,
    ) -> impl Future<Output = Result<Vec<ClaimedKeyPackage>>> + Send;

    // --- federation policy ------------------------------------------------------------
    /// Writes `seed` unless a policy was stored before (first start only).
    fn seed_federation_policy(
        &self,
        seed: &Policy,
        at: i64,
    ) -> impl Future<Output = Result<()>> + Send;
    /// The stored policy (mode `open` and no rules if never seeded).
    fn federation_policy(&self) -> impl Future<Output = Result<Policy>> + Send;
    fn set_federation_mode(&self, mode: Mode) -> impl Future<Output = Result<()>> + Send;
    /// Adds the rule, or replaces the one with the same pattern.
    fn put_federation_rule(&self, rule: &Rule, at: i64) -> impl Future<Output = Result<()>> + Send;
    /// False if no rule has that pattern.
    fn delete_federation_rule(&self, pattern: &str) -> impl Future<Output = Result<bool>> + Send;
}

/// What a device holds on the server.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeyPackageCount {
    pub one_time: u32,
    pub has_last_resort: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimedKeyPackage {
    pub device_id: DeviceId,
    pub data: Vec<u8>,
    pub last_resort: bool,
}

/// The configured backend. Dispatches to the concrete store.
#[derive(Clone)]
pub enum AnyStore {
    Postgres(pg::PgStore),
    Sqlite(sqlite::SqliteStore),
}

impl AnyStore {
    /// Connects to `url` (`postgres://…` or `sqlite://…`) and runs the migrations.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(AnyStore::Postgres(
                pg::PgStore::connect(url, max_connections).await?,
            ))
        } else {
            Ok(AnyStore::Sqlite(sqlite::SqliteStore::connect(url).await?))
        }
    }
}

macro_rules! dispatch {
    ($self:ident, $s:ident => $e:expr) => {
        match $self {
            AnyStore::Postgres($s) => $e,
            AnyStore::Sqlite($s) => $e,
        }
    };
}

impl Store for AnyStore {
    fn backend(&self) -> &'static str {
        dispatch!(self, s => s.backend())
    }
    async fn create_user(&self, user: &NewUser) -> Result<()> {
        dispatch!(self, s => s.create_user(user).await)
    }
    async fn user_password(&self, localpart: &str) -> Result<Option<(UserId, String)>> {
        dispatch!(self, s => s.user_password(localpart).await)
    }
    async fn user_exists(&self, user_id: &UserId) -> Result<bool> {
        dispatch!(self, s => s.user_exists(user_id).await)
    }
    async fn create_device(&self, device: &NewDevice) -> Result<()> {
        dispatch!(self, s => s.create_device(device).await)
    }
    async fn device_by_token(&self, token_hash: &[u8; 32]) -> Result<Option<(UserId, DeviceId)>> {
        dispatch!(self, s => s.device_by_token(token_hash).await)
    }
    async fn list_devices(&self, user_id: &UserId) -> Result<Vec<DeviceRow>> {
        dispatch!(self, s => s.list_devices(user_id).await)
    }
    async fn delete_device(&self, user_id: &UserId, device_id: &DeviceId) -> Result<bool> {
        dispatch!(self, s => s.delete_device(user_id, device_id).await)
    }
    async fn create_chat(&self, chat: &NewChat) -> Result<(ChatId, bool)> {
        dispatch!(self, s => s.create_chat(chat).await)
    }
    async fn chat_members(&self, chat_id: &ChatId) -> Result<Option<Vec<UserId>>> {
        dispatch!(self, s => s.chat_members(chat_id).await)
    }
    async fn list_chats(&self, user_id: &UserId) -> Result<Vec<ChatListRow>> {
        dispatch!(self, s => s.list_chats(user_id).await)
    }
    async fn leave_chat(&self, chat_id: &ChatId, user_id: &UserId, at: i64) -> Result<bool> {
        dispatch!(self, s => s.leave_chat(chat_id, user_id, at).await)
    }
    async fn commit_sends(
        &self,
        batch: &[SendRequest],
        max_members: usize,
    ) -> Result<Vec<SendOutcome>> {
        dispatch!(self, s => s.commit_sends(batch, max_members).await)
    }
    async fn chat_info(&self, chat_id: &ChatId) -> Result<Option<ChatInfo>> {
        dispatch!(self, s => s.chat_info(chat_id).await)
    }
    async fn rename_chat(&self, chat_id: &ChatId, name: &str) -> Result<()> {
        dispatch!(self, s => s.rename_chat(chat_id, name).await)
    }
    async fn set_admin(&self, chat_id: &ChatId, user_id: &UserId, admin: bool) -> Result<bool> {
        dispatch!(self, s => s.set_admin(chat_id, user_id, admin).await)
    }
    async fn history(&self, chat_id: &ChatId, after: i64, limit: u32) -> Result<Vec<ChatEvent>> {
        dispatch!(self, s => s.history(chat_id, after, limit).await)
    }
    async fn inbox_page(
        &self,
        device_id: &DeviceId,
        after: i64,
        limit: u32,
    ) -> Result<Vec<InboxItem>> {
        dispatch!(self, s => s.inbox_page(device_id, after, limit).await)
    }
    async fn commit_acks(
        &self,
        batch: &[AckRequest],
        at: i64,
        fanout: bool,
    ) -> Result<Vec<ReceiptNotice>> {
        dispatch!(self, s => s.commit_acks(batch, at, fanout).await)
    }
    async fn mark_read(
        &self,
        chat_id: &ChatId,
        user_id: &UserId,
        device_id: &DeviceId,
        seq: i64,
        at: i64,
    ) -> Result<Option<Vec<ReceiptNotice>>> {
        dispatch!(self, s => s.mark_read(chat_id, user_id, device_id, seq, at).await)
    }
    async fn receipts(&self, chat_id: &ChatId) -> Result<Option<(i64, Vec<Receipt>)>> {
        dispatch!(self, s => s.receipts(chat_id).await)
    }
    async fn purge_expired(&self, before: i64) -> Result<Purged> {
        dispatch!(self, s => s.purge_expired(before).await)
    }
    async fn purge_disappeared(&self, now: i64, limit: i64) -> Result<disappearing::Disappeared> {
        dispatch!(self, s => s.purge_disappeared(now, limit).await)
    }
    async fn stats(&self) -> Result<Stats> {
        dispatch!(self, s => s.stats().await)
    }
    async fn blob(&self, hash: &BlobHash) -> Result<Option<BlobRow>> {
        dispatch!(self, s => s.blob(hash).await)
    }
    async fn start_upload(
        &self,
        hash: &BlobHash,
        user: &UserId,
        total: u64,
        quota: u64,
        now: i64,
    ) -> Result<UploadStart> {
        dispatch!(self, s => s.start_upload(hash, user, total, quota, now).await)
    }
    async fn finish_upload(
        &self,
        hash: &BlobHash,
        user: &UserId,
        size: u64,
        now: i64,
    ) -> Result<()> {
        dispatch!(self, s => s.finish_upload(hash, user, size, now).await)
    }
    async fn cancel_upload(&self, hash: &BlobHash, user: &UserId) -> Result<()> {
        dispatch!(self, s => s.cancel_upload(hash, user).await)
    }
    async fn can_download(&self, hash: &BlobHash, user: &UserId) -> Result<bool> {
        dispatch!(self, s => s.can_download(hash, user).await)
    }
    async fn blob_senders(
        &self,
        hash: &BlobHash,
        user: &UserId,
        limit: i64,
    ) -> Result<Vec<UserId>> {
        dispatch!(self, s => s.blob_senders(hash, user, limit).await)
    }
    async fn blob_shared_with(&self, hash: &BlobHash, server: &str) -> Result<bool> {
        dispatch!(self, s => s.blob_shared_with(hash, server).await)
    }
    async fn insert_fetched_blob(
        &self,
        hash: &BlobHash,
        size: u64,
        origin: &str,
        now: i64,
    ) -> Result<()> {
        dispatch!(self, s => s.insert_fetched_blob(hash, size, origin, now).await)
    }
    async fn unreferenced_blobs(&self, before: i64) -> Result<Vec<BlobHash>> {
        dispatch!(self, s => s.unreferenced_blobs(before).await)
    }
    async fn delete_blob(&self, hash: &BlobHash) -> Result<()> {
        dispatch!(self, s => s.delete_blob(hash).await)
    }
    async fn take_stale_uploads(&self, before: i64) -> Result<Vec<(BlobHash, UserId)>> {
        dispatch!(self, s => s.take_stale_uploads(before).await)
    }
    async fn deactivate_user(&self, user_id: &UserId, at: i64) -> Result<Option<Vec<DeviceId>>> {
        dispatch!(self, s => s.deactivate_user(user_id, at).await)
    }
    async fn set_password(&self, user_id: &UserId, password_hash: &str) -> Result<bool> {
        dispatch!(self, s => s.set_password(user_id, password_hash).await)
    }
    async fn upload_key_packages(
        &self,
        device_id: &DeviceId,
        one_time: &[Vec<u8>],
        last_resort: Option<&[u8]>,
        max_stored: u32,
    ) -> Result<KeyPackageCount> {
        dispatch!(self, s => s.upload_key_packages(device_id, one_time, last_resort, max_stored).await)
    }
    async fn key_package_count(&self, device_id: &DeviceId) -> Result<KeyPackageCount> {
        dispatch!(self, s => s.key_package_count(device_id).await)
    }
    async fn claim_key_packages(&self, user_id: &UserId) -> Result<Vec<ClaimedKeyPackage>> {
        dispatch!(self, s => s.claim_key_packages(user_id).await)
    }
    async fn seed_federation_policy(&self, seed: &Policy, at: i64) -> Result<()> {
        dispatch!(self, s => s.seed_federation_policy(seed, at).await)
    }
    async fn federation_policy(&self) -> Result<Policy> {
        dispatch!(self, s => s.federation_policy().await)
    }
    async fn set_federation_mode(&self, mode: Mode) -> Result<()> {
        dispatch!(self, s => s.set_federation_mode(mode).await)
    }
    async fn put_federation_rule(&self, rule: &Rule, at: i64) -> Result<()> {
        dispatch!(self, s => s.put_federation_rule(rule, at).await)
    }
    async fn delete_federation_rule(&self, pattern: &str) -> Result<bool> {
        dispatch!(self, s => s.delete_federation_rule(pattern).await)
    }
}

pub(crate) fn mode_to_str(mode: Mode) -> &'static str {
    match mode {
        Mode::Open => "open",
        Mode::Allowlist => "allowlist",
    }
}

pub(crate) fn mode_from_str(s: &str) -> Result<Mode> {
    match s {
        "open" => Ok(Mode::Open),
        "allowlist" => Ok(Mode::Allowlist),
        other => Err(StoreError::Corrupt(format!("federation mode {other}"))),
    }
}

pub(crate) fn action_to_str(action: RuleAction) -> &'static str {
    match action {
        RuleAction::Allow => "allow",
        RuleAction::Deny => "deny",
    }
}

/// Rebuilds a rule from its columns.
pub(crate) fn rule_from_columns(
    pattern: String,
    action: &str,
    reason: Option<String>,
) -> Result<Rule> {
    let action = match action {
        "allow" => RuleAction::Allow,
        "deny" => RuleAction::Deny,
        other => return Err(StoreError::Corrupt(format!("rule action {other}"))),
    };
    Ok(Rule {
        pattern: Pattern::try_from(pattern).map_err(|e| StoreError::Corrupt(e.to_string()))?,
        action,
        reason,
    })
}

pub(crate) fn kind_to_i16(kind: ChatKind) -> i16 {
    match kind {
        ChatKind::Direct => 0,
        ChatKind::Group => 1,
    }
}

pub(crate) fn kind_from_i16(v: i16) -> Result<ChatKind> {
    match v {
        0 => Ok(ChatKind::Direct),
        1 => Ok(ChatKind::Group),
        other => Err(StoreError::Corrupt(format!("chat kind {other}"))),
    }
}

/// Parses an id column.
pub(crate) fn id<T: TryFrom<String, Error = parley_client_api::IdError>>(s: String) -> Result<T> {
    T::try_from(s).map_err(|e| StoreError::Corrupt(e.to_string()))
}

pub(crate) fn mls_kind_to_i16(kind: MlsKind) -> i16 {
    match kind {
        MlsKind::Commit => 0,
        MlsKind::Proposal => 1,
        MlsKind::Application => 2,
    }
}

/// Rebuilds an event's MLS metadata from its columns.
pub(crate) fn mls_from_columns(kind: Option<i16>, epoch: Option<i64>) -> Result<Option<MlsMeta>> {
    let (Some(kind), Some(epoch)) = (kind, epoch) else {
        return Ok(None);
    };
    let kind = match kind {
        0 => MlsKind::Commit,
        1 => MlsKind::Proposal,
        2 => MlsKind::Application,
        other => return Err(StoreError::Corrupt(format!("mls kind {other}"))),
    };
    Ok(Some(MlsMeta {
        kind,
        epoch: u64::try_from(epoch).map_err(|_| StoreError::Corrupt("negative epoch".into()))?,
    }))
}

pub(crate) fn membership_to_json(m: &Option<MembershipChange>) -> Option<String> {
    m.as_ref().and_then(|m| serde_json::to_string(m).ok())
}

pub(crate) fn membership_from_json(s: Option<String>) -> Result<Option<MembershipChange>> {
    s.map(|s| serde_json::from_str(&s).map_err(|e| StoreError::Corrupt(e.to_string())))
        .transpose()
}

pub(crate) fn blobs_to_json(b: &[BlobHash]) -> Option<String> {
    (!b.is_empty())
        .then(|| serde_json::to_string(b).ok())
        .flatten()
}

pub(crate) fn blobs_from_json(s: Option<String>) -> Result<Vec<BlobHash>> {
    match s {
        None => Ok(Vec::new()),
        Some(s) => serde_json::from_str(&s).map_err(|e| StoreError::Corrupt(e.to_string())),
    }
}

/// When an event expires (ms), from its hub time and timer.
pub(crate) fn expires_at(ts: i64, expires_in: Option<u32>) -> Option<i64> {
    expires_in.map(|s| ts.saturating_add(i64::from(s) * 1000))
}

/// An event's timer back from its columns.
pub(crate) fn expires_in(ts: Option<i64>, expires_at: Option<i64>) -> Option<u32> {
    let secs = (expires_at? - ts.unwrap_or_default()) / 1000;
    u32::try_from(secs).ok()
}

pub(crate) fn size_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

pub(crate) fn epoch_i64(e: u64) -> i64 {
    i64::try_from(e).unwrap_or(i64::MAX)
}

pub(crate) const INBOX_EVENT: i16 = 0;
pub(crate) const INBOX_RECEIPT: i16 = 1;
/// A forwarded send's late conclusion (`inbox.body` holds the frame).
pub(crate) const INBOX_SEND_RESULT: i16 = 2;
