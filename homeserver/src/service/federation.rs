//! Federation: this server's signing key and key directory, the allow/deny policy, the
//! inbound verifier's context and the signing client. The decisions (policy, verifier
//! stages, outbox) are `parley-federation`'s pure cores; this module only feeds them.

use std::path::Path;
use std::sync::{Arc, RwLock};

use parley_federation::directory::{self, DirectoryResponse, KeyToPublish, VerifiedDirectory};
use parley_federation::policy::{self, Decision, Mode, Policy, Rule};
use parley_federation::signing::nonce::NonceError;
use parley_federation::transport::http::{
    BoxFuture, ClientConfig, ClientError, FederationClient, FederationContext, InboundVerifier,
    NonceStore,
};
use parley_federation::transport::libp2p::Libp2pRoutes;
use parley_federation::{ProtocolError, RequestSigner, ServerName, ServerSigningKey};

use super::ServiceError;
use crate::clock::now_ms;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::store::fed::FedStore as _;
use crate::store::{AnyStore, Store};

/// How often each node rereads the policy table (changes made through another node).
const POLICY_REFRESH: std::time::Duration = std::time::Duration::from_secs(2);

/// How often ended nonces are deleted from the shared replay store.
const NONCE_PURGE: std::time::Duration = std::time::Duration::from_secs(60);

/// How long peers may cache our key directory (seconds).
const DIRECTORY_CACHE_SECS: i64 = 3600;
/// Validity window published for the current key (seconds either side of start).
const KEY_VALIDITY_SECS: i64 = 30 * 24 * 3600;

/// The federation service: cheap to clone, shared by handlers and tasks.
#[derive(Clone)]
pub struct Federation {
    inner: Arc<Inner>,
    verifier: Arc<InboundVerifier>,
}

struct Inner {
    store: AnyStore,
    name: ServerName,
    /// The signing keys; replaced whole on rotation.
    keys: RwLock<Keys>,
    key_path: std::path::PathBuf,
    /// This node's stable id (kept in its data directory): the holder of outbox leases.
    node_id: String,
    client_config: ClientConfig,
    policy: RwLock<Policy>,
    test_mode: bool,
    /// Counts refused inbound requests by reason.
    metrics: Arc<Metrics>,
    /// When this process started (ms): the published key's `nbf` is a day before.
    started_ms: i64,
    /// The libp2p transport, once started ([`Federation::attach_libp2p`]).
    libp2p: std::sync::OnceLock<Libp2p>,
}

/// The libp2p side: who is reached over it, and what the key directory advertises.
struct Libp2p {
    routes: Arc<Libp2pRoutes>,
    advertised: Vec<String>,
}

impl Federation {
    /// Loads (or creates) the signing key, seeds the policy table on first start, loads
    /// the policy, builds the client and the verifier, and starts the policy refresher.
    pub async fn start(
        config: &Config,
        store: AnyStore,
        seed: &Policy,
        metrics: Arc<Metrics>,
    ) -> Result<Self, ServiceError> {
        store.seed_federation_policy(seed, now_ms()).await?;
        let policy = store.federation_policy().await?;
        let fed = Self::new(config, store, policy, metrics)?;
        if config.bus_url.is_some() {
            let weak = Arc::downgrade(&fed.inner);
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(NONCE_PURGE).await;
                    let Some(inner) = weak.upgrade() else { return };
                    if let Err(e) = inner.store.purge_nonces(now_ms()).await {
                        tracing::warn!(error = %e, "cannot purge ended federation nonces");
                    }
                }
            });
        }
        let weak = Arc::downgrade(&fed.inner);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(POLICY_REFRESH).await;
                let Some(inner) = weak.upgrade() else { return };
                match inner.store.federation_policy().await {
                    Ok(p) => inner.set_policy(p),
                    Err(e) => tracing::warn!(error = %e, "cannot reread the federation policy"),
                }
            }
        });
        Ok(fed)
    }

    fn new(
        config: &Config,
        store: AnyStore,
        policy: Policy,
        metrics: Arc<Metrics>,
    ) -> Result<Self, ServiceError> {
        let name = ServerName::try_from(config.server_name.as_str())
            .map_err(|e| ServiceError::Internal(format!("server name: {e}")))?;
        let key_path = config
            .federation
            .key_file
            .clone()
            .unwrap_or_else(|| config.data_dir.join("federation.key"));
        let key = load_or_create_key(&key_path)?;
        let client_config = ClientConfig {
            insecure_test_mode: config.federation.test_mode,
            ..ClientConfig::default()
        };
        let keys = Keys::load(&name, key, &key_path, &client_config)?;
        tracing::info!(key_id = %keys.current.key_id(), path = %key_path.display(), "federation key loaded");
        let inner = Arc::new(Inner {
            store,
            name,
            keys: RwLock::new(keys),
            key_path,
            node_id: load_or_create_node_id(&config.data_dir)?,
            client_config,
            policy: RwLock::new(policy),
            test_mode: config.federation.test_mode,
            metrics,
            started_ms: now_ms(),
            libp2p: std::sync::OnceLock::new(),
        });
        let mut verifier = InboundVerifier::new(inner.clone());
        if config.bus_url.is_some() {
            // Several nodes behind one name: a replayed request may reach another node,
            // so they share the replay store (the database).
            verifier = verifier.with_nonce_store(Arc::new(StoreNonces(inner.store.clone())));
        }
        let verifier = Arc::new(verifier);
        Ok(Self { inner, verifier })
    }

    pub fn server_name(&self) -> &ServerName {
        &self.inner.name
    }

    /// This node's id (stable across restarts): several nodes of a domain share the
    /// outboxes, one node per destination at a time.
    pub fn node_id(&self) -> &str {
        &self.inner.node_id
    }

    pub fn verifier(&self) -> &Arc<InboundVerifier> {
        &self.verifier
    }

    /// The signing client (with the current key: after a rotation switched, new clients
    /// sign with the new key).
    pub fn client(&self) -> FederationClient {
        self.inner.switch_if_due(now_ms());
        self.inner.client()
    }

    /// The key the libp2p identity is made from (the current signing key).
    pub fn signing_key(&self) -> ServerSigningKey {
        self.inner.keys().current.clone()
    }

    /// Sends over libp2p to the servers `routes` names from now on, and advertises
    /// `advertised` in the key directory.
    pub fn attach_libp2p(&self, routes: Arc<Libp2pRoutes>, advertised: Vec<String>) {
        self.inner
            .metrics
            .attach_libp2p(routes.node().stats().clone());
        let _ = self.inner.libp2p.set(Libp2p { routes, advertised });
    }

    /// Starts a key rotation: a new key is published at once beside the current one and
    /// used for signing from `grace` on, so every peer can fetch it first (peers refetch
    /// an origin's keys at most once a minute: keep `grace` above that). The old key is
    /// then retired: published as retired, it verifies no request.
    pub fn rotate_key(&self, grace: std::time::Duration) -> Result<KeyStatus, ServiceError> {
        let next =
            ServerSigningKey::generate().map_err(|e| ServiceError::Internal(e.to_string()))?;
        write_key(&next_path(&self.inner.key_path), &next)?;
        let switch_at = now_ms() + i64::try_from(grace.as_millis()).unwrap_or(i64::MAX);
        std::fs::write(switch_path(&self.inner.key_path), switch_at.to_string())
            .map_err(|e| ServiceError::Internal(format!("federation key switch time: {e}")))?;
        let mut keys = self.inner.keys.write().unwrap_or_else(|p| p.into_inner());
        keys.next = Some((next, switch_at));
        tracing::info!(switch_at, "federation key rotation started");
        Ok(keys.status())
    }

    /// The current, next and retired key ids.
    pub fn key_status(&self) -> KeyStatus {
        self.inner.switch_if_due(now_ms());
        self.inner.keys().status()
    }

    pub fn test_mode(&self) -> bool {
        self.inner.test_mode
    }

    /// The current policy (a snapshot).
    pub fn policy(&self) -> Policy {
        self.inner.policy()
    }

    /// Whether we federate with `server` now (inbound, key fetches, outbound).
    pub fn decide(&self, server: &ServerName) -> Decision {
        policy::decide(server, &self.policy())
    }

    /// Refuses with `federation_denied` unless we federate with `server`.
    pub fn check_allowed(&self, server: &ServerName) -> Result<(), ServiceError> {
        let decision = self.decide(server);
        if decision.allowed {
            Ok(())
        } else {
            Err(ServiceError::FederationDenied(format!(
                "{server}: {}",
                decision.reason
            )))
        }
    }

    /// Adds or replaces a rule; effective at once on this node, within
    /// [`POLICY_REFRESH`] on the others.
    pub async fn put_rule(&self, rule: Rule) -> Result<Policy, ServiceError> {
        self.inner
            .store
            .put_federation_rule(&rule, now_ms())
            .await?;
        self.reload().await
    }

    /// Removes the rule with `pattern`.
    pub async fn remove_rule(&self, pattern: &str) -> Result<Policy, ServiceError> {
        if !self.inner.store.delete_federation_rule(pattern).await? {
            return Err(ServiceError::InvalidParam(format!(
                "no federation rule with pattern {pattern:?}"
            )));
        }
        self.reload().await
    }

    pub async fn set_mode(&self, mode: Mode) -> Result<Policy, ServiceError> {
        self.inner.store.set_federation_mode(mode).await?;
        self.reload().await
    }

    /// Rereads the policy table.
    pub async fn reload(&self) -> Result<Policy, ServiceError> {
        let policy = self.inner.store.federation_policy().await?;
        self.inner.set_policy(policy.clone());
        Ok(policy)
    }

    /// The signed key directory we serve at `now_ms`: the current key, the next one
    /// during a rotation, and the retired ones.
    pub fn directory(&self, now_ms: i64) -> Result<DirectoryResponse, ServiceError> {
        self.inner.switch_if_due(now_ms);
        let keys = self.inner.keys();
        let nbf = self.inner.started_ms / 1000 - 24 * 3600;
        let exp = now_ms / 1000 + KEY_VALIDITY_SECS;
        let mut publish = vec![KeyToPublish {
            key: &keys.current,
            nbf,
            exp,
        }];
        if let Some((next, _)) = &keys.next {
            publish.push(KeyToPublish {
                key: next,
                nbf: now_ms / 1000 - 60,
                exp,
            });
        }
        // During a rotation peers may cache for a short while only.
        let cache = if keys.next.is_some() {
            30
        } else {
            DIRECTORY_CACHE_SECS
        };
        let advertised = self
            .inner
            .libp2p
            .get()
            .map(|l| l.advertised.as_slice())
            .unwrap_or_default();
        directory::build_response_with(
            &self.inner.name,
            &publish,
            &keys.retired,
            advertised,
            now_ms,
            cache,
        )
        .map_err(|e| ServiceError::Internal(e.to_string()))
    }
}

/// This server's keys: the one it signs with, the one a rotation will switch to (and
/// when), and the retired ones (published, never verifying a request).
struct Keys {
    current: ServerSigningKey,
    next: Option<(ServerSigningKey, i64)>,
    retired: Vec<directory::RetiredKey>,
    client: FederationClient,
}

/// Key ids, for the admin API.
#[derive(Debug, Clone, serde::Serialize)]
pub struct KeyStatus {
    pub current: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
    /// When the next key replaces the current one (ms since the Unix epoch).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub switch_at: Option<i64>,
    pub retired: Vec<String>,
}

impl Keys {
    /// The current key, plus a rotation in progress and the retired keys from their
    /// files beside it.
    fn load(
        name: &ServerName,
        current: ServerSigningKey,
        path: &Path,
        config: &ClientConfig,
    ) -> Result<Self, ServiceError> {
        let next = match std::fs::read_to_string(next_path(path)) {
            Ok(pem) => {
                let key = ServerSigningKey::from_pkcs8_pem(&pem)
                    .map_err(|e| ServiceError::Internal(format!("next federation key: {e}")))?;
                let at = std::fs::read_to_string(switch_path(path))
                    .ok()
                    .and_then(|s| s.trim().parse().ok())
                    .unwrap_or(0);
                Some((key, at))
            }
            Err(_) => None,
        };
        let retired = std::fs::read_to_string(retired_path(path))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let (x, at) = l.split_once(' ')?;
                Some(directory::RetiredKey {
                    key: parley_federation::ServerPublicKey::from_jwk_x(x).ok()?,
                    retired_at: at.trim().parse().ok()?,
                })
            })
            .collect();
        let client = signing_client(name, &current, config)?;
        Ok(Self {
            current,
            next,
            retired,
            client,
        })
    }

    fn status(&self) -> KeyStatus {
        KeyStatus {
            current: self.current.key_id().to_string(),
            next: self.next.as_ref().map(|(k, _)| k.key_id().to_string()),
            switch_at: self.next.as_ref().map(|(_, at)| *at),
            retired: self
                .retired
                .iter()
                .map(|r| r.key.key_id().to_string())
                .collect(),
        }
    }
}

fn signing_client(
    name: &ServerName,
    key: &ServerSigningKey,
    config: &ClientConfig,
) -> Result<FederationClient, ServiceError> {
    FederationClient::new(
        RequestSigner::new(name.clone(), key.clone()),
        config.clone(),
    )
    .map_err(|e| ServiceError::Internal(e.to_string()))
}

fn next_path(path: &Path) -> std::path::PathBuf {
    path.with_extension("next")
}
fn switch_path(path: &Path) -> std::path::PathBuf {
    path.with_extension("switch")
}
fn retired_path(path: &Path) -> std::path::PathBuf {
    path.with_extension("retired")
}

impl Inner {
    fn keys(&self) -> std::sync::RwLockReadGuard<'_, Keys> {
        self.keys.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The signing client with the current key, over libp2p where routed.
    fn client(&self) -> FederationClient {
        let client = self.keys().client.clone();
        match self.libp2p.get() {
            Some(l) => client.with_libp2p(l.routes.clone()),
            None => client,
        }
    }

    /// Completes a rotation whose switch time has come: the next key becomes current
    /// (its file replaces the key file), the old one is retired.
    fn switch_if_due(&self, now_ms: i64) {
        let due = self
            .keys()
            .next
            .as_ref()
            .is_some_and(|(_, at)| *at <= now_ms);
        if !due {
            return;
        }
        let mut keys = self.keys.write().unwrap_or_else(|p| p.into_inner());
        let Some((next, at)) = keys.next.take() else {
            return;
        };
        if at > now_ms {
            keys.next = Some((next, at));
            return;
        }
        let client = match signing_client(&self.name, &next, &self.client_config) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "cannot switch the federation key");
                keys.next = Some((next, at));
                return;
            }
        };
        // Persist first: the key file, then the retired list, then drop the rotation.
        if let Err(e) = replace_key_file(&self.key_path, &next) {
            tracing::error!(error = %e, "cannot switch the federation key");
            keys.next = Some((next, at));
            return;
        }
        let old = keys.current.public();
        let line = format!("{} {}\n", old.jwk_x(), now_ms / 1000);
        let appended = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(retired_path(&self.key_path))
            .and_then(|mut f| std::io::Write::write_all(&mut f, line.as_bytes()));
        if let Err(e) = appended {
            tracing::warn!(error = %e, "cannot record the retired federation key");
        }
        let _ = std::fs::remove_file(next_path(&self.key_path));
        let _ = std::fs::remove_file(switch_path(&self.key_path));
        keys.retired.push(directory::RetiredKey {
            key: old,
            retired_at: now_ms / 1000,
        });
        tracing::info!(old = %keys.current.key_id(), new = %next.key_id(), "federation key switched");
        keys.current = next;
        keys.client = client;
    }

    fn set_policy(&self, policy: Policy) {
        *self.policy.write().unwrap_or_else(|p| p.into_inner()) = policy;
    }

    fn policy(&self) -> Policy {
        self.policy
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// The replay store in the database, shared by every node of the domain.
struct StoreNonces(AnyStore);

impl NonceStore for StoreNonces {
    fn check_and_insert<'a>(
        &'a self,
        origin: &'a ServerName,
        nonce: &'a str,
        window_end_ms: i64,
        now_ms: i64,
    ) -> BoxFuture<'a, Result<(), NonceError>> {
        Box::pin(async move {
            match self
                .0
                .insert_nonce(origin.as_str(), nonce, window_end_ms, now_ms)
                .await
            {
                Ok(true) => Ok(()),
                Ok(false) => Err(NonceError::Replayed),
                Err(e) => {
                    tracing::warn!(error = %e, "the federation replay store is unavailable");
                    Err(NonceError::Unavailable)
                }
            }
        })
    }
}

impl FederationContext for Inner {
    fn server_name(&self) -> &ServerName {
        &self.name
    }

    fn policy(&self) -> BoxFuture<'_, Policy> {
        Box::pin(std::future::ready(Inner::policy(self)))
    }

    fn fetch_directory<'a>(
        &'a self,
        origin: &'a ServerName,
    ) -> BoxFuture<'a, Result<(VerifiedDirectory, i64), ClientError>> {
        Box::pin(async move {
            // The policy guards key fetches too (the verifier checked it already; a
            // rule may have changed since).
            let decision = policy::decide(origin, &Inner::policy(self));
            if !decision.allowed {
                return Err(ClientError::Target(format!(
                    "{origin}: federation denied ({})",
                    decision.reason
                )));
            }
            let client = self.client();
            client.fetch_directory(origin).await
        })
    }

    fn on_refused(&self, error: &ProtocolError) {
        self.metrics.federation_rejected(error.body.error.as_str());
        tracing::warn!(
            status = error.status(),
            code = error.body.error.as_str(),
            "federation request refused: {}",
            error.body.message
        );
    }
}

/// The client-facing error for a hub's refusal of a forwarded send.
pub fn entry_error(e: parley_federation::api::send::EntryError) -> ServiceError {
    use parley_federation::FedErrorCode as C;
    match e.error {
        C::WrongEpoch => match e.current_epoch {
            Some(current) => ServiceError::WrongEpoch { current },
            None => ServiceError::Remote(e.message),
        },
        C::NotMember => ServiceError::NotMember,
        C::UnknownChat => ServiceError::UnknownChat,
        C::UnknownUser => ServiceError::UnknownUser(e.message),
        C::NotFound => ServiceError::UnknownBlob(e.message),
        C::Forbidden => ServiceError::Forbidden(e.message),
        C::FederationDenied => ServiceError::FederationDenied(e.message),
        C::InvalidParam | C::BadJson => ServiceError::InvalidParam(e.message),
        C::TooLarge => ServiceError::InvalidParam(e.message),
        _ => ServiceError::Remote(e.message),
    }
}

/// Reads `<data_dir>/node-id`, or writes a new random one there.
fn load_or_create_node_id(data_dir: &Path) -> Result<String, ServiceError> {
    use rand::Rng as _;
    let path = data_dir.join("node-id");
    if let Ok(id) = std::fs::read_to_string(&path)
        && !id.trim().is_empty()
    {
        return Ok(id.trim().to_owned());
    }
    let id: String = rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(16)
        .map(char::from)
        .collect();
    std::fs::create_dir_all(data_dir)
        .and_then(|()| std::fs::write(&path, &id))
        .map_err(|e| ServiceError::Internal(format!("node id {}: {e}", path.display())))?;
    Ok(id)
}

/// Writes a new key file (0600), failing if it exists.
fn write_key(path: &Path, key: &ServerSigningKey) -> Result<(), ServiceError> {
    let internal = |what: &str, e: &dyn std::fmt::Display| {
        ServiceError::Internal(format!("federation key {}: {what}: {e}", path.display()))
    };
    let _ = std::fs::remove_file(path);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path).map_err(|e| internal("create", &e))?;
    std::io::Write::write_all(&mut file, key.to_pkcs8_pem().as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| internal("write", &e))
}

/// Replaces the key file atomically (write beside it, then rename over it).
fn replace_key_file(path: &Path, key: &ServerSigningKey) -> Result<(), ServiceError> {
    let tmp = path.with_extension("tmp");
    write_key(&tmp, key)?;
    std::fs::rename(&tmp, path)
        .map_err(|e| ServiceError::Internal(format!("federation key {}: {e}", path.display())))
}

/// Reads the PKCS#8 PEM key at `path`, or generates one and writes it there (0600).
pub fn load_or_create_key(path: &Path) -> Result<ServerSigningKey, ServiceError> {
    let internal = |what: &str, e: &dyn std::fmt::Display| {
        ServiceError::Internal(format!("federation key {}: {what}: {e}", path.display()))
    };
    match std::fs::read_to_string(path) {
        Ok(pem) => ServerSigningKey::from_pkcs8_pem(&pem).map_err(|e| internal("invalid", &e)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = ServerSigningKey::generate().map_err(|e| internal("generate", &e))?;
            if let Some(dir) = path.parent()
                && !dir.as_os_str().is_empty()
            {
                std::fs::create_dir_all(dir).map_err(|e| internal("create dir", &e))?;
            }
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            let mut file = options.open(path).map_err(|e| internal("create", &e))?;
            std::io::Write::write_all(&mut file, key.to_pkcs8_pem().as_bytes())
                .and_then(|()| file.sync_all())
                .map_err(|e| internal("write", &e))?;
            tracing::info!(path = %path.display(), "generated a new federation signing key");
            Ok(key)
        }
        Err(e) => Err(internal("read", &e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_is_created_once_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/federation.key");
        let a = load_or_create_key(&path).unwrap();
        let b = load_or_create_key(&path).unwrap();
        assert_eq!(a.key_id(), b.key_id());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
