//! KeyPackages: generating batches to upload, validating claimed ones.

use openmls::prelude::tls_codec::{Deserialize as _, Serialize as _};
use openmls::prelude::{
    KeyPackage, KeyPackageIn, MlsMessageBodyIn, MlsMessageIn, MlsMessageOut, ProtocolVersion,
};
use openmls_traits::OpenMlsProvider;
use openmls_traits::storage::{CURRENT_VERSION, StorageProvider};

use crate::error::KeyPackageError;
use crate::group::{CIPHERSUITE, leaf_capabilities};
use crate::identity::{DeviceIdentity, DevicePublicIdentity};
use crate::provider::Provider;

/// KeyPackages to upload to the homeserver: `one_time` ones (each consumed by
/// one claim) and one `last_resort` KeyPackage that the server hands out when
/// the one-time ones are exhausted and never deletes. Each is a TLS-encoded
/// `MLSMessage`. Their private keys are in the provider's store; a one-time
/// KeyPackage's keys are deleted when a Welcome consumes it.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyPackageBatch {
    /// One-time KeyPackages.
    pub one_time: Vec<Vec<u8>>,
    /// The last-resort KeyPackage (carries the `last_resort` extension).
    pub last_resort: Vec<u8>,
}

impl std::fmt::Debug for KeyPackageBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyPackageBatch")
            .field("one_time", &self.one_time.len())
            .field("last_resort_len", &self.last_resort.len())
            .finish()
    }
}

/// Generates `one_time` one-time KeyPackages plus one last-resort KeyPackage
/// for this device, storing their private keys through `provider`.
pub fn generate_key_packages<S: StorageProvider<CURRENT_VERSION>>(
    provider: &Provider<S>,
    identity: &DeviceIdentity,
    one_time: usize,
) -> Result<KeyPackageBatch, KeyPackageError> {
    let mut out = Vec::with_capacity(one_time);
    for _ in 0..one_time {
        out.push(build(provider, identity, false)?);
    }
    let last_resort = build(provider, identity, true)?;
    Ok(KeyPackageBatch {
        one_time: out,
        last_resort,
    })
}

fn build<S: StorageProvider<CURRENT_VERSION>>(
    provider: &Provider<S>,
    identity: &DeviceIdentity,
    last_resort: bool,
) -> Result<Vec<u8>, KeyPackageError> {
    let mut builder = KeyPackage::builder().leaf_node_capabilities(leaf_capabilities());
    if last_resort {
        builder = builder.mark_as_last_resort();
    }
    let bundle = builder
        .build(
            CIPHERSUITE,
            provider,
            identity,
            identity.public().credential_with_key(),
        )
        .map_err(|e| match e {
            openmls::prelude::KeyPackageNewError::StorageError => {
                KeyPackageError::Storage("writing key package".to_owned())
            }
            other => KeyPackageError::Internal(other.to_string()),
        })?;
    MlsMessageOut::from(bundle.key_package().clone())
        .tls_serialize_detached()
        .map_err(|e| KeyPackageError::Internal(e.to_string()))
}

/// A KeyPackage that passed validation: signature, lifetime, Parley's
/// ciphersuite, and a credential that binds its signature key.
#[derive(Debug, Clone)]
pub struct ValidatedKeyPackage {
    pub(crate) key_package: KeyPackage,
    identity: DevicePublicIdentity,
}

impl ValidatedKeyPackage {
    /// The device this KeyPackage belongs to.
    pub fn identity(&self) -> &DevicePublicIdentity {
        &self.identity
    }

    /// Whether this is a last-resort KeyPackage.
    pub fn is_last_resort(&self) -> bool {
        self.key_package.last_resort()
    }
}

/// Validates a KeyPackage (a TLS-encoded `MLSMessage`, as uploaded) before
/// adding its device to a group.
pub fn validate_key_package<S: StorageProvider<CURRENT_VERSION>>(
    provider: &Provider<S>,
    bytes: &[u8],
) -> Result<ValidatedKeyPackage, KeyPackageError> {
    let msg = MlsMessageIn::tls_deserialize_exact(bytes).map_err(|_| KeyPackageError::Malformed)?;
    let MlsMessageBodyIn::KeyPackage(kp_in) = msg.extract() else {
        return Err(KeyPackageError::Malformed);
    };
    validate_key_package_in(provider, kp_in)
}

fn validate_key_package_in<S: StorageProvider<CURRENT_VERSION>>(
    provider: &Provider<S>,
    kp_in: KeyPackageIn,
) -> Result<ValidatedKeyPackage, KeyPackageError> {
    let key_package = kp_in
        .validate(provider.crypto(), ProtocolVersion::Mls10)
        .map_err(|e| KeyPackageError::Invalid(e.to_string()))?;
    if key_package.ciphersuite() != CIPHERSUITE {
        return Err(KeyPackageError::UnsupportedCiphersuite(
            key_package.ciphersuite().into(),
        ));
    }
    let leaf = key_package.leaf_node();
    let identity =
        DevicePublicIdentity::from_credential(leaf.credential(), leaf.signature_key().as_slice())?;
    Ok(ValidatedKeyPackage {
        key_package,
        identity,
    })
}
