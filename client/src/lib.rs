//! The Parley client SDK: one device of one user, end-to-end encrypted with MLS.
//!
//! - [`Client`]: register or log in ([`Client::register`], [`Client::login`]) or open
//!   an existing profile ([`Client::open`]); [`Client::connect`] starts the WebSocket
//!   event stream (inbox replay, live events, automatic reconnect); events reach the app
//!   through [`Client::subscribe`] as [`Event`]s.
//! - Chats: [`Client::create_chat`] sets up a 1:1 chat as an MLS group with every
//!   device of both users; [`Client::send_text`] writes a message at once (pending),
//!   encrypts it and sends it through the outbox exactly once; ticks move
//!   pending → ✓ sent → ✓✓ delivered → read ([`MessageState`]). In a chat hosted on
//!   another server whose server is down, a message stays pending (stored by the user's
//!   server, not resent) until that hub orders it (✓ sent with its `seq`, from the
//!   server's `sent_late`) or refuses it ([`MessageState::Failed`], `send_failed`).
//! - Groups: [`Client::create_group`], [`Client::add_members`],
//!   [`Client::remove_members`], [`Client::leave`], [`Client::rename`],
//!   [`Client::set_admin`], [`Client::members`]; receipts per message as "delivered to
//!   N of M / read by N of M" ([`Client::receipt_summary`]).
//! - Media: [`Client::send_file`] encrypts a file (streaming), uploads the ciphertext
//!   unless the server has it (resuming an interrupted upload) and sends the reference;
//!   [`Client::download`] fetches, checks and decrypts one; [`Client::forward`] sends a
//!   received file on without uploading it again.
//! - Everyday messaging ([`rules`], `spec/messaging.md`): [`Client::reply`],
//!   [`Client::react`] / [`Client::unreact`], [`Client::edit`] (versions kept locally:
//!   [`Reader::edits`]), [`Client::delete_for_everyone`] (a tombstone on every device)
//!   and [`Client::delete_for_me`]; the MLS sender decides who may edit or delete.
//! - Disappearing messages and privacy: [`Client::set_timer`] (a chat event; messages
//!   sent while it is on vanish from every device and from the servers),
//!   [`Client::set_read_receipts`] and [`Client::set_chat_read_receipts`]; reports to
//!   the server's admins: [`Client::report`], [`Client::report_message`].
//! - A local SQLite store per device ([`store`]) holds the MLS state and the decrypted
//!   history: [`Reader`] reads history and searches it offline.
//! - History archives ([`history`]): [`history::export`] and
//!   [`Client::import_history`] stream a device's decrypted history, sealed under an
//!   [`ArchiveKey`], to and from any file (backups, transfers to a linked device).
//! - Encrypted backups ([`Client::enable_backup`], [`Client::backup_now`],
//!   [`Client::restore`]): the history archive under a random key shown once as a
//!   recovery key (or an Argon2id passphrase), stored on the homeserver; a restored
//!   device rejoins its chats by MLS external commit ([`Client::rejoin_chats`]) from the
//!   GroupInfo each chat's hub keeps.
//! - Other devices of the user are added to the user's chats by an existing device
//!   ([`Client::refresh_devices`], also automatic while connected).
//!
//! The server only ever sees ciphertext: chat event payloads are a [`ChatPayload`]
//! (an MLS message, or a Commit with its Welcome).

mod api;
mod backup;
mod blocking;
mod client;
mod devices;
mod disappearing;
mod engine;
pub mod error;
mod groups;
pub mod history;
mod media;
mod messaging;
pub mod payload;
mod rejoin;
pub mod rules;
mod socket;
pub mod store;

pub use backup::{BackupDone, BackupEnabled, BackupSecret, Restored};
pub use client::{Client, ClientConfig, ConnectionState, Event};
pub use devices::{
    HistoryRange, Linked, LinkedDevice, PendingLink, SafetyNumber, Verification, is_spent_link,
};
pub use error::{Error, Result};
pub use groups::{GroupMember, GroupMembers};
pub use history::{ExportSummary, ImportSummary};
pub use media::{Attachment, Downloaded, FileOptions, SentFile, guess_mime, human_size};
pub use parley_crypto::ArchiveKey;
pub use payload::ChatPayload;
pub use rejoin::{RejoinFailure, RejoinSummary};
pub use store::{
    ChatInfo, MemberReceipt, Message, MessageState, Reaction, Reader, ReceiptSummary, Version,
};

pub use parley_client_api::http::backup::{Backup, BackupKeyMode};
pub use parley_client_api::http::blocks::Blocked;
pub use parley_client_api::http::chats::timer;
pub use parley_client_api::http::presence::{Presence, Visibility};
pub use parley_client_api::http::push::Pusher;
pub use parley_client_api::http::reports::{ReportTarget, ReportedMessage};
pub use parley_client_api::{ChatId, DeviceId, ErrorCode, UserId};
