//! Services: the homeserver's behaviour, between the HTTP/WS handlers and the store.
//! Handlers never touch SQL; services never see HTTP.

pub mod accounts;
pub mod backup;
pub mod blocking;
pub mod chats;
pub mod contacts;
pub mod federation;
pub mod inbound;
pub mod inbox;
pub mod keys;
pub mod links;
pub mod media;
pub mod presence;
pub mod push;
pub mod relay;
pub mod reports;
pub mod sequencer;

use std::sync::Arc;

use crate::config::Config;
use crate::gateway::Gateway;
use crate::metrics::Metrics;
use crate::store::{AnyStore, StoreError};

/// What a service operation can fail with. Mapped to protocol errors in one place
/// (`http::error`).
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("{0}")]
    InvalidParam(String),
    #[error("{0}")]
    InvalidTimer(String),
    #[error("a report needs a reason or at least one message")]
    EmptyReport,
    #[error("username is taken")]
    UserExists,
    #[error("wrong username or password")]
    InvalidCredentials,
    #[error("unknown or revoked access token")]
    UnknownToken,
    #[error("no such user: {0}")]
    UnknownUser(String),
    #[error("no such chat")]
    UnknownChat,
    #[error("no such device")]
    UnknownDevice,
    #[error("no such media blob: {0}")]
    UnknownBlob(String),
    #[error(
        "media blob {0}: the sender neither uploaded it nor may download it; nothing was stored"
    )]
    BlobForbidden(String),
    #[error("the uploaded bytes do not hash to the blob's address; nothing was stored")]
    HashMismatch,
    #[error("this upload holds {received} bytes; continue from there")]
    UploadOffset { received: u64 },
    #[error("storage quota exceeded: {used} of {quota} bytes used")]
    QuotaExceeded { used: u64, quota: u64 },
    #[error("not a member of this chat")]
    NotMember,
    #[error("no such device link")]
    UnknownLink,
    #[error("the device link expired; start a new one on the new device")]
    LinkExpired,
    #[error("the device link was used already; start a new one on the new device")]
    LinkUsed,
    /// Nothing of that kind to act on (e.g. unblocking a user who is not blocked).
    #[error("{0}")]
    NotFound(String),
    #[error("payload is {size} bytes; the limit is {limit}")]
    TooLarge { size: usize, limit: usize },
    /// A send to a chat that spans servers must fit one federation transaction.
    #[error(
        "this chat spans servers, and a send to it travels in one federation transaction of \
         at most {limit} bytes; this one takes {size} (payload and GroupInfo base64-encoded): \
         send less at once (e.g. add fewer members per commit)"
    )]
    TooLargeToFederate { size: usize, limit: usize },
    #[error("{0}")]
    Forbidden(String),
    /// The chat's hub holds no GroupInfo of its current epoch (spec/backup.md BK19).
    #[error("no current GroupInfo for this chat: {0}")]
    NoGroupInfo(String),
    #[error("the chat is at MLS epoch {current}; process its events and retry")]
    WrongEpoch { current: u64 },
    /// The policy refuses federating with that server (ours, or theirs answering 403).
    #[error("federation_denied: {0}")]
    FederationDenied(String),
    /// A peer server could not be reached or failed; retrying later may work.
    #[error("the remote server failed: {0}")]
    Remote(String),
    #[error("the server is shutting down or overloaded")]
    Unavailable,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("internal: {0}")]
    Internal(String),
}

/// The services, built once and shared through axum's state.
#[derive(Clone)]
pub struct Services {
    pub config: Arc<Config>,
    pub store: AnyStore,
    pub gateway: Gateway,
    pub accounts: accounts::Accounts,
    pub chats: chats::Chats,
    pub inbox: inbox::Inbox,
    pub keys: keys::Keys,
    pub media: media::Media,
    pub metrics: Arc<Metrics>,
    /// `None` unless `[federation] enabled`.
    pub federation: Option<federation::Federation>,
    /// The federation outbox's handle; `None` unless federation is enabled.
    pub relay: Option<relay::Relay>,
    pub presence: presence::Presence,
    pub contacts: contacts::Contacts,
    pub links: links::Links,
    pub push: push::Push,
    pub blocking: blocking::Blocking,
    pub backups: backup::Backups,
    pub reports: reports::Reports,
}

impl Services {
    /// Starts the background tasks (writers, registry, janitor) and returns the handles.
    pub async fn start(
        config: Arc<Config>,
        store: AnyStore,
        gateway: Gateway,
        metrics: Arc<Metrics>,
    ) -> Result<Self, ServiceError> {
        let writers = match store {
            AnyStore::Sqlite(_) => 1,
            AnyStore::Postgres(_) => config.limits.writers,
        };
        let sequencer = sequencer::Sequencer::spawn(
            store.clone(),
            gateway.clone(),
            writers,
            config.limits.max_batch,
            config.limits.max_group_members,
            metrics.clone(),
        );
        let relay_channel = config.federation.enabled.then(relay::channel);
        let inbox = inbox::Inbox::spawn(
            store.clone(),
            gateway.clone(),
            config.limits.max_batch,
            metrics.clone(),
            relay_channel
                .as_ref()
                .map(|(relay, _)| (relay.clone(), config.server_name.to_string())),
        );
        let presence = presence::Presence::spawn(
            &config.presence,
            store.clone(),
            gateway.clone(),
            relay_channel.as_ref().map(|(relay, _)| relay.clone()),
            config.server_name.to_string(),
        );
        let push = push::Push::spawn(&config.push, store.clone(), gateway.clone())?;
        {
            let push = push.clone();
            gateway
                .on_offline(std::sync::Arc::new(move |device, event| {
                    push.hint(device, event)
                }))
                .await;
        }
        let federation = if config.federation.enabled {
            let seed = parley_federation::Policy {
                mode: config.federation.policy.mode,
                rules: config.federation.policy.rules.clone(),
            };
            Some(
                federation::Federation::start(&config, store.clone(), &seed, metrics.clone())
                    .await?,
            )
        } else {
            None
        };
        let mut media = media::Media::from_config(store.clone(), &config)?;
        if let Some(fed) = &federation {
            media = media.with_federation(fed.clone(), metrics.clone());
        }
        inbox::spawn_expiry(store.clone(), media.clone());
        inbox::spawn_janitor(
            store.clone(),
            media.clone(),
            config.limits.retention_days,
            config
                .federation
                .enabled
                .then(|| config.federation.dedup_window_days()),
        );
        let keys = keys::Keys::new(
            store.clone(),
            config.server_name.clone(),
            federation.clone(),
        );
        let (relay, remote) = match (&federation, relay_channel) {
            (Some(fed), Some((relay, tasks))) => {
                relay::spawn(tasks, store.clone(), fed.clone(), gateway.clone());
                (
                    Some(relay.clone()),
                    Some(chats::Remote {
                        federation: fed.clone(),
                        relay,
                        keys: keys.clone(),
                    }),
                )
            }
            _ => (None, None),
        };
        Ok(Self {
            blocking: blocking::Blocking::new(store.clone()),
            backups: backup::Backups::new(store.clone()),
            reports: reports::Reports::new(store.clone()),
            federation: federation.clone(),
            relay,
            media: media.clone(),
            accounts: accounts::Accounts::new(store.clone(), config.server_name.clone()),
            chats: chats::Chats::new(
                store.clone(),
                config.clone(),
                sequencer,
                gateway.clone(),
                remote,
                media.clone(),
            ),
            inbox,
            keys,
            links: links::Links::new(store.clone(), config.limits.link_ttl_secs),
            contacts: contacts::Contacts::new(
                store.clone(),
                presence.clone(),
                config.server_name.to_string(),
            ),
            presence,
            push,
            gateway,
            store,
            config,
            metrics,
        })
    }
}

impl Services {
    /// The federation outbox per destination, for `/metrics` (capped labels).
    pub async fn outbox_gauges(&self) -> Result<Vec<crate::metrics::OutboxGauge>, ServiceError> {
        use crate::store::fed::FedStore;
        let depths = self.store.outbox_depths().await?;
        // The persisted backoff, replaced by the live state of the destinations this
        // node drives.
        let live: std::collections::HashMap<_, _> = self
            .relay
            .as_ref()
            .map(|r| r.live_states().into_iter().collect())
            .unwrap_or_default();
        let mut backoff: Vec<_> = self
            .store
            .destinations()
            .await?
            .into_iter()
            .filter(|d| !live.contains_key(&d.destination))
            .map(|d| (d.destination, d.failures, d.retry_at, d.parked))
            .collect();
        backoff.extend(
            live.into_iter()
                .map(|(d, s)| (d, s.failures, s.retry_at, s.parked)),
        );
        Ok(crate::metrics::outbox_gauges(
            &depths,
            &backoff,
            crate::clock::now_ms(),
            crate::metrics::MAX_DESTINATION_LABELS,
        ))
    }

    /// Removes a device (its token, its inbox) and closes its socket, wherever it is.
    pub async fn remove_device(
        &self,
        user_id: &parley_client_api::UserId,
        device_id: &parley_client_api::DeviceId,
    ) -> Result<(), ServiceError> {
        self.accounts.remove_device(user_id, device_id).await?;
        self.close_sockets([device_id.clone()]).await;
        // DR2: the user's other devices take it out of their chats now.
        if let Ok(json) = serde_json::to_string(&parley_client_api::ws::ServerFrame::DevicesChanged)
        {
            let json: std::sync::Arc<str> = json.into();
            let items = self
                .accounts
                .devices(user_id)
                .await?
                .into_iter()
                .map(|d| {
                    (
                        d.device_id,
                        crate::gateway::Outbound::Ephemeral(json.clone()),
                    )
                })
                .collect();
            self.gateway.deliver(items).await;
        }
        Ok(())
    }

    /// Closes the sockets of devices that no longer exist.
    pub async fn close_sockets(
        &self,
        devices: impl IntoIterator<Item = parley_client_api::DeviceId>,
    ) {
        for device in devices {
            self.gateway
                .kick(device, crate::gateway::CloseReason::DeviceRemoved)
                .await;
        }
    }
}
