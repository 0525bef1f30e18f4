//! MLS groups: one per chat, one leaf per device.
//!
//! # Configuration (the same for every Parley group)
//! - Ciphersuite [`CIPHERSUITE`] = `MLS_128_DHKEMX25519_CHACHA20POLY1305_SHA256_Ed25519` (0x0003).
//! - Wire format: handshake messages (Commit, Proposal) are sent as MLS
//!   **PublicMessage** so the hub can validate them with openmls's
//!   `PublicGroup`; application messages are always **PrivateMessage**
//!   (openmls's `MIXED_PLAINTEXT_WIRE_FORMAT_POLICY`). Incoming handshake
//!   messages must be PublicMessages too ([`ProcessError::WrongWireFormat`]).
//! - [`MAX_PAST_EPOCHS`] = 3: application messages from the three previous
//!   epochs still decrypt (a device that merged a commit can still read messages
//!   sequenced before it; the hub itself accepts messages only in its current epoch).
//! - Welcomes carry the ratchet tree (no separate tree download).
//! - Application plaintexts are padded to a multiple of [`PADDING_SIZE`] bytes.
//! - Out-of-order tolerance within an epoch: [`OUT_OF_ORDER_TOLERANCE`] generations.
//!
//! # Commits and the hub
//! A device never merges its own Commit before the hub accepted it. Every
//! `commit_*` method returns a [`PendingCommit`] (Commit bytes, Welcome bytes
//! for added devices, the epoch the hub must compare-and-set) and stores the
//! Commit as *pending*. Then:
//! - hub accepted → [`Group::confirm_pending_commit`] (or process the Commit
//!   when it comes back through the inbox: [`Received::OwnCommitConfirmed`]);
//! - hub answered `409 wrong_epoch` → [`Group::discard_pending_commit`], feed
//!   the missing events in `seq` order through [`Group::process`], retry.
//!   Processing another member's Commit for the current epoch also discards
//!   the pending one ([`CommitSummary::discarded_own_pending`]).
//!
//! Messages are processed in the order the caller feeds them (the hub's `seq`
//! order). See [`crate::provider`] for persistence and crash safety.

mod key_packages;

pub use key_packages::{
    KeyPackageBatch, ValidatedKeyPackage, generate_key_packages, validate_key_package,
};

use openmls::framing::errors::{MessageDecryptionError, SecretTreeError};
use openmls::group::{
    MIXED_PLAINTEXT_WIRE_FORMAT_POLICY, MlsGroup, MlsGroupCreateConfig, MlsGroupJoinConfig,
    StagedWelcome,
};
use openmls::prelude::tls_codec::{Deserialize as _, Serialize as _};
use openmls::prelude::{
    Capabilities, Ciphersuite, CommitBuilderStageError, CreateCommitError, ExtensionType, GroupId,
    LeafNodeIndex, LeafNodeParameters, Member, MlsGroupStateError, MlsMessageBodyIn, MlsMessageIn,
    MlsMessageOut, ProcessMessageError, ProcessedMessageContent, Proposal, ProtocolMessage, Sender,
    SenderRatchetConfiguration, StageCommitError, ValidationError, WelcomeError, WireFormat,
};
use openmls_traits::OpenMlsProvider;
use openmls_traits::storage::{CURRENT_VERSION, StorageProvider};

use crate::error::{
    CommitError, EncryptError, IdentityError, JoinError, ProcessError, StoreError, storage_msg,
};
use crate::identity::{DeviceIdentity, DevicePublicIdentity};
use crate::provider::Provider;

/// Parley's only ciphersuite: `MLS_128_DHKEMX25519_CHACHA20POLY1305_SHA256_Ed25519`.
pub const CIPHERSUITE: Ciphersuite =
    Ciphersuite::MLS_128_DHKEMX25519_CHACHA20POLY1305_SHA256_Ed25519;
/// How many past epochs' application messages still decrypt.
pub const MAX_PAST_EPOCHS: usize = 3;
/// Application plaintexts are padded to a multiple of this many bytes.
pub const PADDING_SIZE: usize = 32;
/// How many generations back an out-of-order application message may be.
pub const OUT_OF_ORDER_TOLERANCE: u32 = 100;
const MAXIMUM_FORWARD_DISTANCE: u32 = 1000;

pub(crate) fn leaf_capabilities() -> Capabilities {
    // The last-resort extension must be listed for last-resort KeyPackages.
    Capabilities::new(
        None,
        Some(&[CIPHERSUITE]),
        Some(&[ExtensionType::LastResort]),
        None,
        None,
    )
}

fn join_config() -> MlsGroupJoinConfig {
    MlsGroupJoinConfig::builder()
        .wire_format_policy(MIXED_PLAINTEXT_WIRE_FORMAT_POLICY)
        .max_past_epochs(MAX_PAST_EPOCHS)
        .use_ratchet_tree_extension(true)
        .padding_size(PADDING_SIZE)
        .sender_ratchet_configuration(SenderRatchetConfiguration::new(
            OUT_OF_ORDER_TOLERANCE,
            MAXIMUM_FORWARD_DISTANCE,
        ))
        .build()
}

fn create_config() -> MlsGroupCreateConfig {
    MlsGroupCreateConfig::builder()
        .ciphersuite(CIPHERSUITE)
        .capabilities(leaf_capabilities())
        .wire_format_policy(MIXED_PLAINTEXT_WIRE_FORMAT_POLICY)
        .max_past_epochs(MAX_PAST_EPOCHS)
        .use_ratchet_tree_extension(true)
        .padding_size(PADDING_SIZE)
        .sender_ratchet_configuration(SenderRatchetConfiguration::new(
            OUT_OF_ORDER_TOLERANCE,
            MAXIMUM_FORWARD_DISTANCE,
        ))
        .build()
}

/// A member of a group: its leaf and the device identity its credential binds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberInfo {
    /// The member's leaf index (stable while it is a member).
    pub leaf_index: u32,
    /// Who the member is.
    pub identity: DevicePublicIdentity,
}

impl MemberInfo {
    fn from_member(member: &Member) -> Result<Self, IdentityError> {
        Ok(Self {
            leaf_index: member.index.u32(),
            identity: DevicePublicIdentity::from_credential(
                &member.credential,
                &member.signature_key,
            )?,
        })
    }
}

/// A Commit this device created and has not merged: send `commit` to the hub
/// with `epoch` (and `welcome` for the added devices), then confirm or
/// discard it.
#[derive(Clone, PartialEq, Eq)]
pub struct PendingCommit {
    /// The epoch the Commit was created in (the hub's compare-and-set value).
    pub epoch: u64,
    /// The Commit, a TLS-encoded `MLSMessage` carrying a PublicMessage.
    pub commit: Vec<u8>,
    /// The Welcome for added devices, a TLS-encoded `MLSMessage`.
    pub welcome: Option<Vec<u8>>,
    /// The GroupInfo of the new epoch (with the ratchet tree), a TLS-encoded
    /// `MLSMessage`, for the hub's copy of the public group state.
    pub group_info: Option<Vec<u8>>,
}

impl std::fmt::Debug for PendingCommit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingCommit")
            .field("epoch", &self.epoch)
            .field("commit_len", &self.commit.len())
            .field("welcome_len", &self.welcome.as_ref().map(Vec::len))
            .field("group_info_len", &self.group_info.as_ref().map(Vec::len))
            .finish()
    }
}

/// What a Commit changed, from the processing device's point of view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitSummary {
    /// Who committed.
    pub committer: MemberInfo,
    /// The epoch the group is in now.
    pub epoch: u64,
    /// Devices added (with their new leaf indices).
    pub added: Vec<DevicePublicIdentity>,
    /// Devices removed (with their former leaf indices).
    pub removed: Vec<MemberInfo>,
    /// Members whose leaf key was updated (the committer included, if the
    /// Commit carries a path).
    pub updated: Vec<MemberInfo>,
    /// This device was removed: the group is now inactive.
    pub self_removed: bool,
    /// This device had a pending Commit for the same epoch; it lost the race
    /// and has been discarded. Rebuild and resend it if still wanted.
    pub discarded_own_pending: bool,
    /// An external commit: the committer joined with it (it is also in `added`).
    pub external: bool,
}

/// The result of processing one incoming message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    /// An application message from another member.
    Application {
        /// The sender (a current member).
        sender: MemberInfo,
        /// The epoch it was sent in.
        epoch: u64,
        /// The decrypted plaintext (usually an [`crate::Envelope`]).
        plaintext: Vec<u8>,
    },
    /// This device's own application message, echoed by the hub. It cannot
    /// be decrypted (its keys were deleted after sending); the caller has the
    /// plaintext already.
    OwnApplication {
        /// The epoch it was sent in.
        epoch: u64,
    },
    /// Another member's Commit, now merged.
    Commit(CommitSummary),
    /// This device's pending Commit came back from the hub: it was accepted
    /// and is now merged.
    OwnCommitConfirmed {
        /// The epoch the group is in now.
        epoch: u64,
    },
    /// A Proposal was queued. A member must commit it
    /// ([`Group::commit_pending_proposals`]) before anyone can send
    /// application messages again.
    ProposalQueued {
        /// Who proposed.
        sender: MemberInfo,
        /// For a Remove proposal: the member to remove (a member that
        /// proposes its own removal is leaving).
        removes: Option<MemberInfo>,
    },
}

/// One MLS group (one chat) as seen by this device.
///
/// A `Group` is an in-memory view over the provider's store; every method
/// that changes state writes through the provider passed to it (see
/// [`crate::provider`] for the transaction contract).
#[derive(Debug)]
pub struct Group {
    mls: MlsGroup,
}

fn serialize(msg: &MlsMessageOut) -> Result<Vec<u8>, String> {
    msg.tls_serialize_detached().map_err(|e| e.to_string())
}

impl Group {
    /// Creates a new group with this device as its only member. `group_id`
    /// is the chat's id (bytes of its string form).
    pub fn create<S: StorageProvider<CURRENT_VERSION>>(
        provider: &Provider<S>,
        identity: &DeviceIdentity,
        group_id: &[u8],
    ) -> Result<Self, JoinError> {
        let gid = GroupId::from_slice(group_id);
        if MlsGroup::load(provider.storage(), &gid)
            .map_err(|e| JoinError::Storage(storage_msg(e)))?
            .is_some()
        {
            return Err(JoinError::AlreadyExists);
        }
        let mls = MlsGroup::new_with_group_id(
            provider,
            identity,
            &create_config(),
            gid,
            identity.public().credential_with_key(),
        )
        .map_err(|e| match e {
            openmls::group::NewGroupError::StorageError(e) => JoinError::Storage(storage_msg(e)),
            openmls::group::NewGroupError::GroupAlreadyExists => JoinError::AlreadyExists,
            other => JoinError::Internal(other.to_string()),
        })?;
        Ok(Self { mls })
    }

    /// Joins a group from a Welcome (a TLS-encoded `MLSMessage`) addressed to
    /// one of this device's KeyPackages. Every member's credential is checked.
    pub fn join<S: StorageProvider<CURRENT_VERSION>>(
        provider: &Provider<S>,
        welcome: &[u8],
    ) -> Result<Self, JoinError> {
        let msg = MlsMessageIn::tls_deserialize_exact(welcome).map_err(|_| JoinError::Malformed)?;
        let MlsMessageBodyIn::Welcome(welcome) = msg.extract() else {
            return Err(JoinError::Malformed);
        };
        if welcome.ciphersuite() != CIPHERSUITE {
            return Err(JoinError::UnsupportedCiphersuite(
                welcome.ciphersuite().into(),
            ));
        }
        let staged = StagedWelcome::new_from_welcome(provider, &join_config(), welcome, None)
            .map_err(map_welcome_error)?;
        for member in staged.members() {
            MemberInfo::from_member(&member)?;
        }
        let mls = staged.into_group(provider).map_err(map_welcome_error)?;
        Ok(Self { mls })
    }

    /// Joins a group by external commit (RFC 9420 §12.4.3.2) from its GroupInfo (a
    /// TLS-encoded `MLSMessage` with the ratchet tree and the external public key, as
    /// [`Group::group_info`] exports it), which must be of `group_id`. Every member's
    /// credential is checked. Returns the group, already in the new epoch and stored
    /// through the provider, and the Commit to send to the hub with the GroupInfo's
    /// epoch (`welcome` is `None`). Unlike the other commits this one cannot wait for
    /// the hub: if the hub refuses it, delete the group and join again from a fresh
    /// GroupInfo. Other members accept it only from a device of a user who already
    /// has a leaf in the group (see [`Group::process`]).
    pub fn join_external<S: StorageProvider<CURRENT_VERSION>>(
        provider: &Provider<S>,
        identity: &DeviceIdentity,
        group_info: &[u8],
        group_id: &[u8],
    ) -> Result<(Self, PendingCommit), JoinError> {
        let msg =
            MlsMessageIn::tls_deserialize_exact(group_info).map_err(|_| JoinError::Malformed)?;
        let MlsMessageBodyIn::GroupInfo(info) = msg.extract() else {
            return Err(JoinError::Malformed);
        };
        if info.ciphersuite() != CIPHERSUITE {
            return Err(JoinError::UnsupportedCiphersuite(info.ciphersuite().into()));
        }
        if info.group_id().as_slice() != group_id {
            return Err(JoinError::Invalid(
                "a GroupInfo of another group".to_owned(),
            ));
        }
        let epoch = info.epoch().as_u64();
        if let Some(old) = MlsGroup::load(provider.storage(), &GroupId::from_slice(group_id))
            .map_err(|e| JoinError::Storage(storage_msg(e)))?
        {
            let mut old = old;
            old.delete(provider.storage())
                .map_err(|e| JoinError::Storage(storage_msg(e)))?;
        }
        let (mls, bundle) = MlsGroup::external_commit_builder()
            .with_config(join_config())
            .build_group(provider, info, identity.public().credential_with_key())
            .map_err(|e| JoinError::Invalid(e.to_string()))?
            .leaf_node_parameters(
                LeafNodeParameters::builder()
                    .with_capabilities(leaf_capabilities())
                    .build(),
            )
            .load_psks(provider.storage())
            .map_err(|e| JoinError::Storage(storage_msg(e)))?
            .build(provider.rand(), provider.crypto(), identity, |_| true)
            .map_err(|e| JoinError::Invalid(e.to_string()))?
            .finalize(provider)
            .map_err(|e| JoinError::Invalid(e.to_string()))?;
        for member in mls.members() {
            MemberInfo::from_member(&member)?;
        }
        let (commit, _, new_info) = bundle.into_messages();
        let pending = PendingCommit {
            epoch,
            commit: serialize(&commit).map_err(JoinError::Internal)?,
            welcome: None,
            group_info: new_info
                .as_ref()
                .map(serialize)
                .transpose()
                .map_err(JoinError::Internal)?,
        };
        Ok((Self { mls }, pending))
    }

    /// Loads a group from the store; `Ok(None)` if there is none with this id.
    pub fn load<S: StorageProvider<CURRENT_VERSION>>(
        provider: &Provider<S>,
        group_id: &[u8],
    ) -> Result<Option<Self>, StoreError> {
        MlsGroup::load(provider.storage(), &GroupId::from_slice(group_id))
            .map(|g| g.map(|mls| Self { mls }))
            .map_err(|e| StoreError::Storage(storage_msg(e)))
    }

    /// Deletes the group's state from the store (after leaving, or when the
    /// chat is deleted).
    pub fn delete<S: StorageProvider<CURRENT_VERSION>>(
        mut self,
        provider: &Provider<S>,
    ) -> Result<(), StoreError> {
        self.mls
            .delete(provider.storage())
            .map_err(|e| StoreError::Storage(storage_msg(e)))
    }

    /// The group id (the chat id's bytes).
    pub fn group_id(&self) -> &[u8] {
        self.mls.group_id().as_slice()
    }

    /// The current epoch.
    pub fn epoch(&self) -> u64 {
        self.mls.epoch().as_u64()
    }

    /// Whether this device is still a member (false after it was removed).
    pub fn is_active(&self) -> bool {
        self.mls.is_active()
    }

    /// This device's leaf index.
    pub fn own_leaf_index(&self) -> u32 {
        self.mls.own_leaf_index().u32()
    }

    /// Whether a Commit of ours awaits the hub's verdict.
    pub fn has_pending_commit(&self) -> bool {
        self.mls.pending_commit().is_some()
    }

    /// Whether Proposals are queued (they must be committed before sending).
    pub fn has_pending_proposals(&self) -> bool {
        self.mls.pending_proposals().next().is_some()
    }

    /// The current members.
    pub fn members(&self) -> Result<Vec<MemberInfo>, IdentityError> {
        self.mls
            .members()
            .map(|m| MemberInfo::from_member(&m))
            .collect()
    }

    /// Finds the leaf of a device.
    pub fn find_member(&self, user_id: &str, device_id: &str) -> Option<MemberInfo> {
        self.mls.members().find_map(|m| {
            let info = MemberInfo::from_member(&m).ok()?;
            (info.identity.user_id().as_str() == user_id
                && info.identity.device_id().as_str() == device_id)
                .then_some(info)
        })
    }

    /// The signed GroupInfo of the current epoch including the ratchet tree
    /// (a TLS-encoded `MLSMessage`): what the hub needs to build its
    /// `PublicGroup` when the chat is created, and what a device needs to
    /// join by external commit.
    pub fn group_info<S: StorageProvider<CURRENT_VERSION>>(
        &self,
        provider: &Provider<S>,
        identity: &DeviceIdentity,
    ) -> Result<Vec<u8>, CommitError> {
        let msg = self
            .mls
            .export_group_info(provider.crypto(), identity, true)
            .map_err(|e| CommitError::Internal(e.to_string()))?;
        serialize(&msg).map_err(CommitError::Internal)
    }

    fn ensure_can_commit(&self) -> Result<(), CommitError> {
        if !self.mls.is_active() {
            return Err(CommitError::NotAMember);
        }
        if self.has_pending_commit() {
            return Err(CommitError::PendingCommitExists);
        }
        Ok(())
    }

    fn stage<S: StorageProvider<CURRENT_VERSION>>(
        &mut self,
        provider: &Provider<S>,
        identity: &DeviceIdentity,
        build: impl FnOnce(
            openmls::group::CommitBuilder<'_, openmls::group::Initial>,
        ) -> openmls::group::CommitBuilder<'_, openmls::group::Initial>,
    ) -> Result<PendingCommit, CommitError> {
        self.ensure_can_commit()?;
        let epoch = self.epoch();
        let bundle = build(self.mls.commit_builder())
            .load_psks(provider.storage())
            .map_err(map_create_commit_error)?
            .build(provider.rand(), provider.crypto(), identity, |_| true)
            .map_err(map_create_commit_error)?
            .stage_commit(provider)
            .map_err(|e| match e {
                CommitBuilderStageError::KeyStoreError(e) => CommitError::Storage(storage_msg(e)),
                other => CommitError::Internal(other.to_string()),
            })?;
        let (commit, welcome, group_info) = bundle.into_messages();
        Ok(PendingCommit {
            epoch,
            commit: serialize(&commit).map_err(CommitError::Internal)?,
            welcome: welcome
                .as_ref()
                .map(serialize)
                .transpose()
                .map_err(CommitError::Internal)?,
            group_info: group_info
                .as_ref()
                .map(serialize)
                .transpose()
                .map_err(CommitError::Internal)?,
        })
    }

    /// Creates a Commit adding these devices (and any queued proposals).
    pub fn commit_add<S: StorageProvider<CURRENT_VERSION>>(
        &mut self,
        provider: &Provider<S>,
        identity: &DeviceIdentity,
        key_packages: &[ValidatedKeyPackage],
    ) -> Result<PendingCommit, CommitError> {
        if key_packages.is_empty() {
            return Err(CommitError::EmptyInput);
        }
        let kps: Vec<_> = key_packages.iter().map(|k| k.key_package.clone()).collect();
        self.stage(provider, identity, |b| b.propose_adds(kps))
    }

    /// Creates a Commit removing these members by leaf index (and any queued
    /// proposals).
    pub fn commit_remove<S: StorageProvider<CURRENT_VERSION>>(
        &mut self,
        provider: &Provider<S>,
        identity: &DeviceIdentity,
        leaf_indices: &[u32],
    ) -> Result<PendingCommit, CommitError> {
        if leaf_indices.is_empty() {
            return Err(CommitError::EmptyInput);
        }
        for &i in leaf_indices {
            if self.mls.member_at(LeafNodeIndex::new(i)).is_none() {
                return Err(CommitError::NoSuchMember);
            }
        }
        let leaves: Vec<_> = leaf_indices
            .iter()
            .map(|&i| LeafNodeIndex::new(i))
            .collect();
        self.stage(provider, identity, |b| b.propose_removals(leaves))
    }

    /// Creates a Commit that rotates this device's leaf keys (post-compromise
    /// security), also committing any queued proposals.
    pub fn commit_update<S: StorageProvider<CURRENT_VERSION>>(
        &mut self,
        provider: &Provider<S>,
        identity: &DeviceIdentity,
    ) -> Result<PendingCommit, CommitError> {
        self.stage(provider, identity, |b| {
            b.force_self_update(true)
                .leaf_node_parameters(LeafNodeParameters::default())
        })
    }

    /// Creates a Commit covering the queued proposals (e.g. another member's
    /// request to leave).
    pub fn commit_pending_proposals<S: StorageProvider<CURRENT_VERSION>>(
        &mut self,
        provider: &Provider<S>,
        identity: &DeviceIdentity,
    ) -> Result<PendingCommit, CommitError> {
        if !self.has_pending_proposals() {
            return Err(CommitError::EmptyInput);
        }
        self.stage(provider, identity, |b| b.consume_proposal_store(true))
    }

    /// Asks to leave: returns a Remove Proposal for this device (a
    /// TLS-encoded `MLSMessage` carrying a PublicMessage) to send to the hub.
    /// Another member commits it; when this device processes that Commit the
    /// group becomes inactive ([`CommitSummary::self_removed`]).
    pub fn leave<S: StorageProvider<CURRENT_VERSION>>(
        &mut self,
        provider: &Provider<S>,
        identity: &DeviceIdentity,
    ) -> Result<Vec<u8>, CommitError> {
        self.ensure_can_commit()?;
        let msg = self
            .mls
            .leave_group(provider, identity)
            .map_err(|e| match e {
                openmls::group::LeaveGroupError::StorageError(e) => {
                    CommitError::Storage(storage_msg(e))
                }
                openmls::group::LeaveGroupError::GroupStateError(_) => CommitError::NotAMember,
                other => CommitError::Internal(other.to_string()),
            })?;
        serialize(&msg).map_err(CommitError::Internal)
    }

    /// The hub accepted our pending Commit: merge it and enter the new epoch.
    pub fn confirm_pending_commit<S: StorageProvider<CURRENT_VERSION>>(
        &mut self,
        provider: &Provider<S>,
    ) -> Result<(), CommitError> {
        if !self.has_pending_commit() {
            return Err(CommitError::NoPendingCommit);
        }
        self.mls
            .merge_pending_commit(provider)
            .map_err(|e| match e {
                openmls::group::MergePendingCommitError::MlsGroupStateError(_) => {
                    CommitError::NotAMember
                }
                openmls::group::MergePendingCommitError::MergeCommitError(
                    openmls::group::MergeCommitError::StorageError(e),
                ) => CommitError::Storage(storage_msg(e)),
                other => CommitError::Internal(other.to_string()),
            })
    }

    /// The hub refused our pending Commit (`409 wrong_epoch`): forget it. The
    /// caller then processes the missing events and may retry.
    pub fn discard_pending_commit<S: StorageProvider<CURRENT_VERSION>>(
        &mut self,
        provider: &Provider<S>,
    ) -> Result<(), CommitError> {
        if !self.has_pending_commit() {
            return Err(CommitError::NoPendingCommit);
        }
        self.mls
            .clear_pending_commit(provider.storage())
            .map_err(|e| CommitError::Storage(storage_msg(e)))
    }

    /// Encrypts an application message (a TLS-encoded `MLSMessage` carrying a
    /// PrivateMessage) in the current epoch.
    pub fn encrypt<S: StorageProvider<CURRENT_VERSION>>(
        &mut self,
        provider: &Provider<S>,
        identity: &DeviceIdentity,
        plaintext: &[u8],
    ) -> Result<Vec<u8>, EncryptError> {
        if !self.mls.is_active() {
            return Err(EncryptError::NotAMember);
        }
        if self.has_pending_proposals() {
            return Err(EncryptError::PendingProposals);
        }
        let msg = self
            .mls
            .create_message(provider, identity, plaintext)
            .map_err(|e| match e {
                openmls::prelude::CreateMessageError::GroupStateError(
                    MlsGroupStateError::PendingProposal,
                ) => EncryptError::PendingProposals,
                openmls::prelude::CreateMessageError::GroupStateError(_) => {
                    EncryptError::NotAMember
                }
                other => EncryptError::Internal(other.to_string()),
            })?;
        // openmls persists the advanced sender ratchet inside `create_message`.
        serialize(&msg).map_err(EncryptError::Internal)
    }

    fn member_info(&self, leaf: LeafNodeIndex) -> Result<MemberInfo, ProcessError> {
        let member = self.mls.member_at(leaf).ok_or(ProcessError::NotAMember)?;
        Ok(MemberInfo::from_member(&member)?)
    }

    /// Processes one incoming message (Commit, Proposal or application
    /// message, a TLS-encoded `MLSMessage`) in the hub's order.
    pub fn process<S: StorageProvider<CURRENT_VERSION>>(
        &mut self,
        provider: &Provider<S>,
        message: &[u8],
    ) -> Result<Received, ProcessError> {
        let msg =
            MlsMessageIn::tls_deserialize_exact(message).map_err(|_| ProcessError::Malformed)?;
        let protocol: ProtocolMessage = msg
            .try_into_protocol_message()
            .map_err(|_| ProcessError::Malformed)?;
        if protocol.group_id() != self.mls.group_id() {
            return Err(ProcessError::WrongGroup);
        }
        if !self.mls.is_active() {
            return Err(ProcessError::GroupInactive);
        }
        let message_epoch = protocol.epoch().as_u64();
        let group_epoch = self.epoch();
        let wrong_epoch = ProcessError::WrongEpoch {
            message_epoch,
            group_epoch,
        };
        if protocol.is_handshake_message() {
            if protocol.wire_format() != WireFormat::PublicMessage {
                return Err(ProcessError::WrongWireFormat);
            }
            if message_epoch != group_epoch {
                return Err(wrong_epoch);
            }
        } else if message_epoch > group_epoch
            || message_epoch.saturating_add(MAX_PAST_EPOCHS as u64) < group_epoch
        {
            return Err(wrong_epoch);
        }

        let processed = self
            .mls
            .process_message(provider, protocol)
            .map_err(|e| map_process_error(e, message_epoch, group_epoch))?;
        // `None`: an external commit (a device joining from the GroupInfo).
        let sender_leaf = match processed.sender() {
            Sender::Member(leaf) => Some(*leaf),
            Sender::NewMemberCommit => None,
            _ => return Err(ProcessError::NotAMember),
        };
        let member_leaf = || sender_leaf.ok_or(ProcessError::NotAMember);
        let credential = processed.credential().clone();
        match processed.into_content() {
            ProcessedMessageContent::ApplicationMessage(app) => {
                // The sender must still hold its leaf with the same
                // credential: a removed device cannot keep talking through a
                // past epoch's keys.
                let sender = self.member_info(member_leaf()?)?;
                if sender.identity.credential() != credential {
                    return Err(ProcessError::NotAMember);
                }
                Ok(Received::Application {
                    sender,
                    epoch: message_epoch,
                    plaintext: app.into_bytes(),
                })
            }
            ProcessedMessageContent::OwnPrivateMessage => Ok(Received::OwnApplication {
                epoch: message_epoch,
            }),
            ProcessedMessageContent::ProposalMessage(queued) => {
                let sender = self.member_info(member_leaf()?)?;
                let removes = match queued.proposal() {
                    Proposal::Remove(r) => Some(self.member_info(r.removed())?),
                    Proposal::Add(add) => {
                        let leaf = add.key_package().leaf_node();
                        DevicePublicIdentity::from_credential(
                            leaf.credential(),
                            leaf.signature_key().as_slice(),
                        )?;
                        None
                    }
                    Proposal::Update(update) => {
                        self.check_same_device(&sender, update.leaf_node())?;
                        None
                    }
                    _ => {
                        return Err(ProcessError::InvalidCommit(
                            "unsupported proposal type".to_owned(),
                        ));
                    }
                };
                self.mls
                    .store_pending_proposal(provider.storage(), *queued)
                    .map_err(|e| ProcessError::Storage(storage_msg(e)))?;
                Ok(Received::ProposalQueued { sender, removes })
            }
            ProcessedMessageContent::StagedCommitMessage(staged) if sender_leaf.is_none() => {
                self.merge_external(provider, *staged)
            }
            ProcessedMessageContent::StagedCommitMessage(staged) => {
                let committer = self.member_info(member_leaf()?)?;
                let mut added = Vec::new();
                for add in staged.add_proposals() {
                    let leaf = add.add_proposal().key_package().leaf_node();
                    added.push(DevicePublicIdentity::from_credential(
                        leaf.credential(),
                        leaf.signature_key().as_slice(),
                    )?);
                }
                let mut removed = Vec::new();
                for remove in staged.remove_proposals() {
                    removed.push(self.member_info(remove.remove_proposal().removed())?);
                }
                let mut updated = Vec::new();
                for update in staged.update_proposals() {
                    let Sender::Member(leaf) = update.sender() else {
                        return Err(ProcessError::NotAMember);
                    };
                    let member = self.member_info(*leaf)?;
                    self.check_same_device(&member, update.update_proposal().leaf_node())?;
                    updated.push(member);
                }
                if let Some(leaf) = staged.update_path_leaf_node() {
                    self.check_same_device(&committer, leaf)?;
                    updated.push(committer.clone());
                }
                let discarded_own_pending = self.has_pending_commit();
                let self_removed = staged.self_removed();
                self.mls
                    .merge_staged_commit(provider, *staged)
                    .map_err(|e| match e {
                        openmls::group::MergeCommitError::StorageError(e) => {
                            ProcessError::Storage(storage_msg(e))
                        }
                        other => ProcessError::Internal(other.to_string()),
                    })?;
                Ok(Received::Commit(CommitSummary {
                    committer,
                    epoch: self.epoch(),
                    added,
                    removed,
                    updated,
                    self_removed,
                    discarded_own_pending,
                    external: false,
                }))
            }
            ProcessedMessageContent::OwnPendingCommit => {
                self.confirm_pending_commit(provider).map_err(|e| match e {
                    CommitError::Storage(s) => ProcessError::Storage(s),
                    other => ProcessError::Internal(other.to_string()),
                })?;
                Ok(Received::OwnCommitConfirmed {
                    epoch: self.epoch(),
                })
            }
            ProcessedMessageContent::ExternalJoinProposalMessage(_) => {
                Err(ProcessError::NotAMember)
            }
        }
    }

    /// An external commit: accepted only when a device of a user who already has a
    /// leaf joins (a user re-adding their own device, e.g. after a restore) and the
    /// commit adds nobody and removes only leaves of that user (a stale leaf of the same
    /// device). Anything else is refused before anything is merged.
    fn merge_external<S: StorageProvider<CURRENT_VERSION>>(
        &mut self,
        provider: &Provider<S>,
        staged: openmls::group::StagedCommit,
    ) -> Result<Received, ProcessError> {
        let Some(leaf) = staged.update_path_leaf_node() else {
            return Err(ProcessError::InvalidCommit(
                "an external commit without a path".to_owned(),
            ));
        };
        let joiner = DevicePublicIdentity::from_credential(
            leaf.credential(),
            leaf.signature_key().as_slice(),
        )?;
        let members = self.members()?;
        if !members
            .iter()
            .any(|m| m.identity.user_id() == joiner.user_id())
        {
            return Err(ProcessError::ExternalJoinRefused);
        }
        if staged.add_proposals().next().is_some() {
            return Err(ProcessError::ExternalJoinRefused);
        }
        let mut removed = Vec::new();
        for remove in staged.remove_proposals() {
            let gone = self.member_info(remove.remove_proposal().removed())?;
            if gone.identity.user_id() != joiner.user_id() {
                return Err(ProcessError::ExternalJoinRefused);
            }
            removed.push(gone);
        }
        let discarded_own_pending = self.has_pending_commit();
        self.mls
            .merge_staged_commit(provider, staged)
            .map_err(|e| match e {
                openmls::group::MergeCommitError::StorageError(e) => {
                    ProcessError::Storage(storage_msg(e))
                }
                other => ProcessError::Internal(other.to_string()),
            })?;
        let committer = self
            .find_member(joiner.user_id().as_str(), joiner.device_id().as_str())
            .ok_or(ProcessError::NotAMember)?;
        Ok(Received::Commit(CommitSummary {
            committer,
            epoch: self.epoch(),
            added: vec![joiner],
            removed,
            updated: Vec::new(),
            self_removed: false,
            discarded_own_pending,
            external: true,
        }))
    }

    /// A member's new leaf must carry a valid credential for the same user and
    /// device as before.
    fn check_same_device(
        &self,
        before: &MemberInfo,
        leaf: &openmls::prelude::LeafNode,
    ) -> Result<(), ProcessError> {
        let after = DevicePublicIdentity::from_credential(
            leaf.credential(),
            leaf.signature_key().as_slice(),
        )?;
        if after.user_id() != before.identity.user_id()
            || after.device_id() != before.identity.device_id()
        {
            return Err(ProcessError::Credential(
                IdentityError::CredentialKeyMismatch,
            ));
        }
        Ok(())
    }
}

fn map_welcome_error<E: std::fmt::Display>(e: WelcomeError<E>) -> JoinError {
    match e {
        WelcomeError::NoMatchingKeyPackage
        | WelcomeError::PrivateInitKeyNotFound
        | WelcomeError::NoMatchingEncryptionKey => JoinError::NoMatchingKeyPackage,
        WelcomeError::CiphersuiteMismatch | WelcomeError::UnsupportedCiphersuite(_) => {
            JoinError::Invalid("ciphersuite".to_owned())
        }
        WelcomeError::StorageError(e) => JoinError::Storage(storage_msg(e)),
        WelcomeError::GroupAlreadyExists => JoinError::AlreadyExists,
        WelcomeError::LibraryError(e) => JoinError::Internal(e.to_string()),
        other => JoinError::Invalid(other.to_string()),
    }
}

fn map_create_commit_error(e: CreateCommitError) -> CommitError {
    match e {
        CreateCommitError::LibraryError(e) => CommitError::Internal(e.to_string()),
        other => CommitError::Rejected(other.to_string()),
    }
}

fn map_process_error<E: std::fmt::Display>(
    e: ProcessMessageError<E>,
    message_epoch: u64,
    group_epoch: u64,
) -> ProcessError {
    match e {
        ProcessMessageError::StorageError(e) => ProcessError::Storage(storage_msg(e)),
        ProcessMessageError::LibraryError(e) => ProcessError::Internal(e.to_string()),
        ProcessMessageError::IncompatibleWireFormat => ProcessError::WrongWireFormat,
        ProcessMessageError::GroupStateError(_) => ProcessError::GroupInactive,
        ProcessMessageError::UnauthorizedExternalApplicationMessage
        | ProcessMessageError::UnauthorizedExternalCommitMessage
        | ProcessMessageError::UnsupportedProposalType => ProcessError::NotAMember,
        ProcessMessageError::InvalidCommit(StageCommitError::OwnCommitMismatch) => {
            ProcessError::OwnCommitMismatch
        }
        ProcessMessageError::InvalidCommit(e) => ProcessError::InvalidCommit(e.to_string()),
        ProcessMessageError::ValidationError(v) => match v {
            ValidationError::WrongGroupId => ProcessError::WrongGroup,
            ValidationError::WrongEpoch | ValidationError::NoPastEpochData => {
                ProcessError::WrongEpoch {
                    message_epoch,
                    group_epoch,
                }
            }
            ValidationError::UnknownMember
            | ValidationError::MissingMembershipTag
            | ValidationError::InvalidMembershipTag
            | ValidationError::NonMemberApplicationMessage
            | ValidationError::UnauthorizedExternalSender
            | ValidationError::NoExternalSendersExtension
            | ValidationError::InvalidSenderType => ProcessError::NotAMember,
            ValidationError::UnencryptedApplicationMessage | ValidationError::WrongWireFormat => {
                ProcessError::WrongWireFormat
            }
            // Secrets for an earlier epoch are gone (or were never held:
            // the epoch precedes this device's join).
            ValidationError::UnableToDecrypt(MessageDecryptionError::SecretTreeError(
                SecretTreeError::TooDistantInThePast,
            )) if message_epoch < group_epoch => ProcessError::WrongEpoch {
                message_epoch,
                group_epoch,
            },
            ValidationError::UnableToDecrypt(_) | ValidationError::InvalidSignature => {
                ProcessError::DecryptionFailed
            }
            ValidationError::LibraryError(e) => ProcessError::Internal(e.to_string()),
            other => ProcessError::InvalidCommit(other.to_string()),
        },
        #[allow(unreachable_patterns)]
        other => ProcessError::Internal(other.to_string()),
    }
}
