//! The openmls provider: RustCrypto for crypto and randomness, plus a
//! caller-supplied [`StorageProvider`] for all persistent state.
//!
//! parley-crypto opens no files and runs no async code: the caller builds a
//! [`Provider`] around whatever storage it uses (the SDK uses
//! `openmls_sqlx_storage::SqliteStorageProvider` over the client's SQLite
//! file; tests also use `openmls_rust_crypto::MemoryStorage`) and passes it to
//! each group operation.
//!
//! # What is persisted
//! Everything openmls needs to resume: group state (tree, secrets of the
//! current and up to [`crate::group::MAX_PAST_EPOCHS`] past epochs, the
//! pending Commit if any, queued proposals), the private halves of unused
//! KeyPackages, and — if the caller uses [`crate::DeviceIdentity::save`] — the
//! device's signature key. A [`crate::Group`] is only an in-memory view that
//! can be rebuilt at any time with [`crate::Group::load`].
//!
//! # Crash safety: what is guaranteed
//! openmls performs several independent storage writes for one group
//! operation (e.g. merging a Commit writes the tree, the group context, the
//! epoch secrets, the message secrets and the group state one after another).
//! parley-crypto therefore makes this contract:
//!
//! 1. **Every state-changing call writes only through the provider passed to
//!    that call**, and performs no writes after it returns. The calls are
//!    [`crate::Group::create`], [`crate::Group::join`], every `commit_*`
//!    method, [`crate::Group::leave`], [`crate::Group::confirm_pending_commit`],
//!    [`crate::Group::discard_pending_commit`], [`crate::Group::encrypt`],
//!    [`crate::Group::process`], [`crate::generate_key_packages`] and
//!    [`crate::Group::delete`].
//! 2. **If the caller runs each such call inside one storage transaction**,
//!    committing it only after the call returned `Ok` (for `encrypt` and the
//!    `commit_*` calls: after the returned bytes are durably queued for
//!    sending), then a crash or error at any point leaves the store at either
//!    the state before the call or the state after it — never in between.
//!    `openmls_sqlx_storage` supports this directly: build the provider over
//!    `&mut *transaction`. The integration test `crash` injects a failure at
//!    *every* storage write of a Commit merge, an application-message decrypt,
//!    a Welcome join and a Commit creation, rolls back, reloads, and checks
//!    that the group resumes at the previous epoch and then processes the same
//!    message successfully.
//! 3. **After a failed call, drop the in-memory [`crate::Group`] and
//!    [`crate::Group::load`] it again** (after rolling back): openmls may have
//!    changed the in-memory state before the failing write.
//! 4. A pending Commit is part of the persisted state: after a restart the
//!    caller can still [`crate::Group::confirm_pending_commit`] or
//!    [`crate::Group::discard_pending_commit`] it, so the "never merge before
//!    the hub accepted" rule survives restarts.
//!
//! Without transactions (a store that applies each write immediately) nothing
//! stronger than "each single write is atomic" holds, and a crash in the
//! middle of a merge can leave a group that must be rejoined (e.g. by
//! external commit). The SDK must use transactions.
//!
//! Replay after a rollback is safe: an incoming message whose processing was
//! rolled back is processed again from the hub's inbox, and an outgoing
//! message whose transaction was rolled back was never sent (its ratchet
//! generation is simply reused).

use openmls_rust_crypto::RustCrypto;
use openmls_traits::OpenMlsProvider;
use openmls_traits::storage::{CURRENT_VERSION, StorageProvider};

/// An [`OpenMlsProvider`] combining RustCrypto with the caller's storage.
pub struct Provider<S> {
    crypto: RustCrypto,
    storage: S,
}

impl<S: StorageProvider<CURRENT_VERSION>> Provider<S> {
    /// Wraps `storage`; crypto and randomness come from RustCrypto (seeded
    /// from the operating system).
    pub fn new(storage: S) -> Self {
        Self {
            crypto: RustCrypto::default(),
            storage,
        }
    }

    /// The storage (also reachable through [`OpenMlsProvider::storage`]).
    pub fn storage(&self) -> &S {
        &self.storage
    }

    /// Gives the storage back (e.g. to commit the transaction it borrows).
    pub fn into_storage(self) -> S {
        self.storage
    }
}

impl<S> std::fmt::Debug for Provider<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provider").finish_non_exhaustive()
    }
}

impl<S: StorageProvider<CURRENT_VERSION>> OpenMlsProvider for Provider<S> {
    type CryptoProvider = RustCrypto;
    type RandProvider = RustCrypto;
    type StorageProvider = S;

    fn storage(&self) -> &S {
        &self.storage
    }

    fn crypto(&self) -> &RustCrypto {
        &self.crypto
    }

    fn rand(&self) -> &RustCrypto {
        &self.crypto
    }
}
