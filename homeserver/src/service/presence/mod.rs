//! Presence, last seen and typing: the shell around the pure [`core`].
//!
//! - Online comes from this node's sockets and heartbeats ([`core::Tracker`] behind a
//!   mutex, never held across an await). Changes are fanned out by worker tasks through
//!   a bounded queue: to the heartbeating devices of local users who share a chat with
//!   the user and may see them (the reciprocal rule, [`core::visible`]), and as an
//!   ephemeral event to every other server with such users (unless the user's setting is
//!   `nobody`).
//! - Last seen is buffered and written by the ticker, at most every
//!   `last_seen_write_ms` per online user, and on going offline.
//! - Typing is relayed to the chat's other members' connected devices and servers,
//!   debounced, never stored; a start expires after [`TYPING_TTL_MS`] without a refresh,
//!   and the ticker relays the stop.
//! - Remote presence and typing are accepted only about the signing origin's own users
//!   (`receive_ephemeral`), and only shown to local users who share a chat with them
//!   (presence: and whom the origin names in `visible_to`, when it does).
//! - `contacts` in a setting means the user's contact list (`store::contacts`); a
//!   change of the list or the setting re-sends the user's presence ([`Presence::refresh`]).
//!
//! Several nodes per domain: frames reach devices on any node (through the bus, see
//! [`Inner::deliver`]). Each node tracks the sockets connected to it; a user this node
//! sees offline is online when another node holds a socket of one of their devices
//! (a bus probe per device, [`Inner::online_elsewhere`]): a query answered here says so,
//! and going offline here is not announced while they are online there.

pub mod core;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use parley_client_api::http::presence::{Presence as WirePresence, Visibility};
use parley_client_api::ws::{ServerFrame, TYPING_TTL_MS};
use parley_client_api::{ChatId, DeviceId, UserId};
use parley_federation::ServerName;
use parley_federation::api::Ephemeral;
use tokio::sync::mpsc;

use self::core::{Action, LastSeenWrites, Timings, Tracker, Typing, TypingRelay, visible};
use super::ServiceError;
use super::blocking::Blocking;
use super::relay::{Relay, convert};
use crate::clock::now_ms;
use crate::config::PresenceConfig;
use crate::gateway::{Gateway, Outbound};
use crate::store::contacts::ContactStore;
use crate::store::devices::DeviceDirectory;
use crate::store::presence::PresenceStore;
use crate::store::{AnyStore, Store};

/// Presence changes waiting for fan-out; beyond, a change is dropped (logged): presence
/// is eventually consistent, and the next change carries the state.
const FANOUT_QUEUE: usize = 16 * 1024;
/// Tasks fanning presence changes out.
const FANOUT_WORKERS: usize = 2;
/// Most `(chat, user)` typing entries held.
const MAX_TYPING: usize = 100_000;
/// Most remote users whose last presence is remembered.
const MAX_REMOTE: usize = 100_000;
/// Most devices of a user probed on the bus to learn whether another node holds one.
const MAX_PROBED: usize = 16;

#[derive(Clone)]
pub struct Presence {
    inner: Arc<Inner>,
}

struct Inner {
    store: AnyStore,
    gateway: Gateway,
    relay: Option<Relay>,
    local: String,
    tracker: Mutex<Tracker>,
    typing: Mutex<Typing>,
    /// Last seen waiting to be written, per user.
    pending_writes: Mutex<LastSeenWrites>,
    /// Remote users' last presence, as their servers sent it.
    remote: Mutex<HashMap<UserId, RemotePresence>>,
    /// One queue per fan-out worker; a user's changes always take the same one, so they
    /// reach peers in order.
    changes: Vec<mpsc::Sender<Change>>,
}

/// A remote user's presence as their server last sent it.
#[derive(Debug, Clone)]
struct RemotePresence {
    online: bool,
    last_seen: Option<i64>,
    /// Local users their server lets see it; `None`: anyone our rules allow.
    visible_to: Option<BTreeSet<UserId>>,
}

impl RemotePresence {
    fn shown_to(&self, viewer: &UserId) -> bool {
        self.visible_to.as_ref().is_none_or(|v| v.contains(viewer))
    }
}

/// A presence change (or, with `refresh`, the current state after a privacy or contact
/// list change) waiting for fan-out.
#[derive(Debug, Clone)]
struct Change {
    user: UserId,
    online: bool,
    last_seen: i64,
    refresh: bool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Presence {
    /// Starts the ticker and the fan-out workers.
    pub fn spawn(
        config: &PresenceConfig,
        store: AnyStore,
        gateway: Gateway,
        relay: Option<Relay>,
        local: String,
    ) -> Self {
        let timeout = i64::try_from(config.heartbeat_timeout_ms).unwrap_or(i64::MAX);
        let (changes, receivers): (Vec<_>, Vec<_>) = (0..FANOUT_WORKERS)
            .map(|_| mpsc::channel(FANOUT_QUEUE / FANOUT_WORKERS))
            .unzip();
        let inner = Arc::new(Inner {
            store,
            gateway,
            relay,
            local,
            tracker: Mutex::new(Tracker::new(Timings {
                heartbeat_timeout_ms: timeout,
                last_seen_write_ms: i64::try_from(config.last_seen_write_ms).unwrap_or(i64::MAX),
            })),
            typing: Mutex::new(Typing::new(
                TYPING_TTL_MS,
                i64::try_from(config.typing_debounce_ms).unwrap_or(i64::MAX),
                MAX_TYPING,
            )),
            pending_writes: Mutex::new(LastSeenWrites::default()),
            remote: Mutex::new(HashMap::new()),
            changes,
        });
        for mut rx in receivers {
            let weak = Arc::downgrade(&inner);
            tokio::spawn(async move {
                while let Some(change) = rx.recv().await {
                    let Some(inner) = weak.upgrade() else { return };
                    if let Err(e) = inner.fan_out(&change).await {
                        tracing::warn!(user = %change.user, error = %e, "presence fan-out failed");
                    }
                }
            });
        }
        let tick = Duration::from_millis((config.heartbeat_timeout_ms / 4).clamp(100, 1_000));
        let weak = Arc::downgrade(&inner);
        tokio::spawn(async move {
            let mut every = tokio::time::interval(tick);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                let Some(inner) = weak.upgrade() else { return };
                inner.tick().await;
            }
        });
        Self { inner }
    }

    /// A device's socket opened (`conn`: its gateway registration).
    pub fn connect(&self, user: &UserId, device: &DeviceId, conn: u64) {
        let actions = lock(&self.inner.tracker).connect(user, device, conn, now_ms());
        self.inner.apply(actions);
    }

    pub fn heartbeat(&self, user: &UserId, device: &DeviceId, conn: u64) {
        let actions = lock(&self.inner.tracker).heartbeat(user, device, conn, now_ms());
        self.inner.apply(actions);
    }

    pub fn disconnect(&self, user: &UserId, device: &DeviceId, conn: u64) {
        let actions = lock(&self.inner.tracker).disconnect(user, device, conn, now_ms());
        self.inner.apply(actions);
    }

    /// A member's device typing (or not) in a chat; relayed unless debounced.
    pub async fn typing(
        &self,
        user: &UserId,
        device: &DeviceId,
        chat: &ChatId,
        typing: bool,
    ) -> Result<(), ServiceError> {
        let members = self
            .inner
            .store
            .chat_members(chat)
            .await?
            .ok_or(ServiceError::UnknownChat)?;
        if !members.contains(user) {
            return Err(ServiceError::NotMember);
        }
        let relay = lock(&self.inner.typing).input(chat, user, device, typing, now_ms());
        if let Some(r) = relay {
            self.inner.relay_typing(&r, &members).await;
        }
        Ok(())
    }

    /// What `viewer` may see of `target`'s presence.
    pub async fn get(
        &self,
        viewer: &UserId,
        target: &UserId,
    ) -> Result<WirePresence, ServiceError> {
        let inner = &self.inner;
        let hidden = WirePresence {
            user_id: target.clone(),
            online: None,
            last_seen: None,
        };
        if viewer == target {
            return inner.local_presence(target).await;
        }
        if Blocking::new(inner.store.clone())
            .hides(target, viewer)
            .await
        {
            return Ok(hidden);
        }
        let (viewer_setting, _) = inner.store.presence_row(viewer).await?;
        let target_listed = inner.store.is_contact(viewer, target).await?;
        if target.server_name() != inner.local {
            // Known only from its server's updates, and only to people sharing a chat.
            let shares = inner
                .store
                .chat_peers(viewer)
                .await?
                .iter()
                .any(|(u, _)| u == target);
            if !(shares && viewer_setting.allows(target_listed)) {
                return Ok(hidden);
            }
            return Ok(match lock(&inner.remote).get(target) {
                Some(r) if r.shown_to(viewer) => WirePresence {
                    user_id: target.clone(),
                    online: Some(r.online),
                    last_seen: r.last_seen,
                },
                _ => hidden,
            });
        }
        if !inner.store.user_exists(target).await? {
            return Err(ServiceError::UnknownUser(target.to_string()));
        }
        let (target_setting, _) = inner.store.presence_row(target).await?;
        let viewer_listed = inner.store.is_contact(target, viewer).await?;
        if !visible(
            viewer,
            viewer_setting,
            target,
            target_setting,
            viewer_listed,
            target_listed,
        ) {
            return Ok(hidden);
        }
        inner.local_presence(target).await
    }

    /// The caller's privacy setting.
    pub async fn privacy(&self, user: &UserId) -> Result<Visibility, ServiceError> {
        Ok(self.inner.store.presence_row(user).await?.0)
    }

    /// Whether the user sends (and sees) read receipts (MS40).
    pub async fn read_receipts(&self, user: &UserId) -> Result<bool, ServiceError> {
        use crate::store::receipt_policy::ReceiptPolicyStore as _;
        Ok(self.inner.store.read_receipts_enabled(user).await?)
    }

    /// Turns the user's read receipts on or off; from then on the server relays none of
    /// theirs and delivers them none of anyone else's (MS41).
    pub async fn set_read_receipts(&self, user: &UserId, on: bool) -> Result<(), ServiceError> {
        use crate::store::receipt_policy::ReceiptPolicyStore as _;
        Ok(self.inner.store.set_read_receipts(user, on).await?)
    }

    /// Changes the caller's setting and re-sends their presence under it.
    pub async fn set_privacy(&self, user: &UserId, v: Visibility) -> Result<(), ServiceError> {
        self.inner.store.set_visibility(user, v).await?;
        self.refresh(user).await
    }

    /// Re-sends a local user's current presence to whoever may now see it (after their
    /// setting or contact list changed): local devices that may see it get a frame;
    /// other servers get it with their users who may (`visible_to`), or, under
    /// `nobody`, an empty `visible_to` so they forget it.
    pub async fn refresh(&self, user: &UserId) -> Result<(), ServiceError> {
        let now = self.inner.local_presence(user).await?;
        let online = now.online.unwrap_or(false);
        let last_seen = match (online, now.last_seen) {
            (false, None) => return Ok(()),
            (_, t) => t.unwrap_or_else(now_ms),
        };
        self.inner.enqueue(Change {
            user: user.clone(),
            online,
            last_seen,
            refresh: true,
        });
        Ok(())
    }

    /// An ephemeral event from a verified origin server: typing or presence of one of
    /// its own users, shown to local members who share the chat (typing) or a chat
    /// (presence) with them. Anything else is dropped (logged).
    pub async fn receive_ephemeral(&self, origin: &ServerName, e: Ephemeral) {
        if let Err(e) = self.inner.receive(origin, e).await {
            tracing::warn!(%origin, error = %e, "ephemeral event dropped");
        }
    }

    /// Whether the user is online on this node.
    pub fn is_online(&self, user: &UserId) -> bool {
        lock(&self.inner.tracker).is_online(user)
    }
}

fn frame_json(frame: &ServerFrame) -> Option<Arc<str>> {
    serde_json::to_string(frame).ok().map(Arc::from)
}

impl Inner {
    /// The fan-out worker of a user (fixed: a user's changes stay in order).
    fn lane(&self, user: &UserId) -> usize {
        use std::hash::{Hash, Hasher};
        let mut h = std::hash::DefaultHasher::new();
        user.hash(&mut h);
        (h.finish() % self.changes.len() as u64) as usize
    }

    fn apply(&self, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::Changed {
                    user,
                    online,
                    last_seen,
                } => self.enqueue(Change {
                    user,
                    online,
                    last_seen,
                    refresh: false,
                }),
                Action::WriteLastSeen { user, at } => lock(&self.pending_writes).record(user, at),
            }
        }
    }

    fn enqueue(&self, change: Change) {
        let lane = self.lane(&change.user);
        if let Err(e) = self.changes[lane].try_send(change) {
            let user = match e {
                mpsc::error::TrySendError::Full(c) | mpsc::error::TrySendError::Closed(c) => c.user,
            };
            tracing::warn!(%user, "presence fan-out queue full; a change was dropped");
        }
    }

    async fn tick(&self) {
        let now = now_ms();
        let actions = lock(&self.tracker).tick(now);
        self.apply(actions);
        let stops = lock(&self.typing).expire(now);
        for stop in stops {
            match self.store.chat_members(&stop.chat).await {
                Ok(Some(members)) => self.relay_typing(&stop, &members).await,
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "cannot read members for a typing stop"),
            }
        }
        let writes = lock(&self.pending_writes).snapshot();
        if writes.is_empty() {
            return;
        }
        match self.store.save_last_seen(&writes).await {
            Ok(()) => lock(&self.pending_writes).stored(writes),
            // They stay pending for the next tick.
            Err(e) => tracing::warn!(error = %e, users = writes.len(), "cannot store last seen"),
        }
    }

    /// With a bus: whether another node of the domain holds a socket of one of the
    /// user's devices (at most [`MAX_PROBED`] devices asked, side by side).
    async fn online_elsewhere(&self, user: &UserId) -> Result<bool, ServiceError> {
        if !self.gateway.has_bus() {
            return Ok(false);
        }
        let devices = self.store.list_devices(user).await?;
        let probes = devices
            .iter()
            .take(MAX_PROBED)
            .map(|d| self.gateway.connected_elsewhere(&d.device_id));
        Ok(futures_util::future::join_all(probes)
            .await
            .into_iter()
            .any(|held| held))
    }

    /// A local user's own presence (they are allowed to see it).
    async fn local_presence(&self, user: &UserId) -> Result<WirePresence, ServiceError> {
        let online = lock(&self.tracker).is_online(user) || self.online_elsewhere(user).await?;
        // Pending before stored: `tick` removes a pending value only once it is stored.
        let pending = lock(&self.pending_writes).get(user);
        let stored = self.store.presence_row(user).await?.1;
        let last_seen = if online {
            Some(now_ms())
        } else {
            stored.max(pending)
        };
        Ok(WirePresence {
            user_id: user.clone(),
            online: Some(online),
            last_seen,
        })
    }

    async fn fan_out(&self, change: &Change) -> Result<(), ServiceError> {
        let Change {
            user,
            online,
            last_seen,
            refresh,
        } = change;
        if !online && !refresh && self.online_elsewhere(user).await? {
            // Offline here, still online on another node: nothing to announce.
            return Ok(());
        }
        let (setting, _) = self.store.presence_row(user).await?;
        // A block hides presence both ways (MS24).
        let hidden = Blocking::new(self.store.clone()).hidden_among(user).await;
        let peers: Vec<_> = self
            .store
            .chat_peers(user)
            .await?
            .into_iter()
            .filter(|(p, _)| !hidden.contains(p))
            .collect();
        let remote_servers = || {
            peers
                .iter()
                .filter(|(p, _)| p.server_name() != self.local)
                .map(|(p, _)| p.server_name().to_owned())
                .collect::<BTreeSet<_>>()
        };
        if setting == Visibility::Nobody {
            // No frame, no federated presence; after a change of setting, the servers
            // that knew it forget it.
            if *refresh {
                let hide = Ephemeral::Presence {
                    user_id: convert(user).map_err(ServiceError::Internal)?,
                    online: false,
                    last_seen: None,
                    visible_to: Some(Vec::new()),
                };
                self.federate(remote_servers(), |_| Some(hide.clone()));
            }
            return Ok(());
        }
        // Who the user lists (their setting is `contacts`), and who lists the user
        // (viewers whose setting is `contacts` see only the users they list).
        let listed: BTreeSet<UserId> = if setting == Visibility::Contacts {
            self.store.contacts(user).await?.into_iter().collect()
        } else {
            BTreeSet::new()
        };
        let listing: BTreeSet<UserId> = if peers
            .iter()
            .any(|(p, s)| p.server_name() == self.local && *s == Visibility::Contacts)
        {
            self.store.listed_by(user).await?.into_iter().collect()
        } else {
            BTreeSet::new()
        };
        let frame = ServerFrame::Presence {
            presence: WirePresence {
                user_id: user.clone(),
                online: Some(*online),
                last_seen: Some(*last_seen),
            },
        };
        let Some(json) = frame_json(&frame) else {
            return Ok(());
        };
        let mut viewers = Vec::new();
        // Per other server, its users who may see it (`contacts`), or `None` (anyone).
        let mut servers: BTreeMap<String, Option<Vec<parley_federation::UserId>>> = BTreeMap::new();
        {
            for (peer, peer_setting) in &peers {
                if peer.server_name() != self.local {
                    let audience = servers
                        .entry(peer.server_name().to_owned())
                        .or_insert_with(|| (setting == Visibility::Contacts).then(Vec::new));
                    if let Some(audience) = audience
                        && listed.contains(peer)
                    {
                        audience.push(convert(peer).map_err(ServiceError::Internal)?);
                    }
                } else if visible(
                    peer,
                    *peer_setting,
                    user,
                    setting,
                    listed.contains(peer),
                    listing.contains(peer),
                ) {
                    viewers.push(peer.clone());
                }
            }
        }
        self.deliver(&viewers, Outbound::Presence(json)).await;
        let user_id: parley_federation::UserId = convert(user).map_err(ServiceError::Internal)?;
        let names: BTreeSet<String> = servers.keys().cloned().collect();
        self.federate(names, |server| {
            Some(Ephemeral::Presence {
                user_id: user_id.clone(),
                online: *online,
                last_seen: Some(*last_seen),
                visible_to: servers.get(server).cloned().flatten(),
            })
        });
        Ok(())
    }

    /// Hands a typing or presence frame to the devices of local `users`. Alone, to the
    /// ones connected here (presence: those that heartbeat). With a bus, to every
    /// device of theirs: the bus takes each to the node holding its socket (dropped
    /// where none does), and that connection writes presence only if it heartbeats.
    async fn deliver(&self, users: &[UserId], item: Outbound) {
        if users.is_empty() {
            return;
        }
        let devices = if self.gateway.has_bus() {
            match self.store.devices_of(users).await {
                Ok(devices) => devices,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read devices for typing or presence");
                    return;
                }
            }
        } else {
            let tracker = lock(&self.tracker);
            let presence = matches!(item, Outbound::Presence(_));
            users
                .iter()
                .flat_map(|u| {
                    if presence {
                        tracker.subscribers(u)
                    } else {
                        tracker.devices(u)
                    }
                })
                .collect()
        };
        let deliveries = devices.into_iter().map(|d| (d, item.clone())).collect();
        self.gateway.deliver(deliveries).await;
    }

    /// Queues an ephemeral event for each server (none without federation).
    fn federate(&self, servers: BTreeSet<String>, event: impl Fn(&str) -> Option<Ephemeral>) {
        let Some(relay) = &self.relay else { return };
        for server in servers {
            if let Some(e) = event(&server) {
                relay.ephemeral(&server, e);
            }
        }
    }

    async fn relay_typing(&self, r: &TypingRelay, members: &[UserId]) {
        let frame = ServerFrame::Typing {
            chat_id: r.chat.clone(),
            user_id: r.user.clone(),
            device_id: Some(r.device.clone()),
            typing: r.typing,
        };
        let Some(json) = frame_json(&frame) else {
            return;
        };
        let mut local = Vec::new();
        let mut servers = BTreeSet::new();
        // A block hides typing both ways (MS24).
        let hidden = Blocking::new(self.store.clone())
            .hidden_among(&r.user)
            .await;
        for m in members
            .iter()
            .filter(|m| **m != r.user && !hidden.contains(m))
        {
            if m.server_name() != self.local {
                servers.insert(m.server_name().to_owned());
            } else {
                local.push(m.clone());
            }
        }
        self.deliver(&local, Outbound::Ephemeral(json)).await;
        if let (Some(relay), Ok(chat_id), Ok(user_id)) =
            (&self.relay, convert(&r.chat), convert(&r.user))
        {
            let e = Ephemeral::Typing {
                chat_id,
                user_id,
                typing: r.typing,
            };
            for server in servers {
                relay.ephemeral(&server, e.clone());
            }
        }
    }

    async fn receive(&self, origin: &ServerName, e: Ephemeral) -> Result<(), ServiceError> {
        match e {
            Ephemeral::Typing {
                chat_id,
                user_id,
                typing,
            } => {
                let chat: ChatId = convert(&chat_id).map_err(ServiceError::InvalidParam)?;
                let user: UserId = convert(&user_id).map_err(ServiceError::InvalidParam)?;
                if user.server_name() != origin.as_str() {
                    return Err(ServiceError::Forbidden(format!(
                        "{origin} cannot speak for {user}"
                    )));
                }
                let members = self
                    .store
                    .chat_members(&chat)
                    .await?
                    .ok_or(ServiceError::UnknownChat)?;
                if !members.contains(&user) {
                    return Err(ServiceError::NotMember);
                }
                let hidden = Blocking::new(self.store.clone()).hidden_among(&user).await;
                let members: Vec<UserId> = members
                    .into_iter()
                    .filter(|m| !hidden.contains(m))
                    .collect();
                let frame = ServerFrame::Typing {
                    chat_id: chat,
                    user_id: user,
                    device_id: None,
                    typing,
                };
                let Some(json) = frame_json(&frame) else {
                    return Ok(());
                };
                let local: Vec<UserId> = members
                    .into_iter()
                    .filter(|m| m.server_name() == self.local)
                    .collect();
                self.deliver(&local, Outbound::Ephemeral(json)).await;
            }
            Ephemeral::Presence {
                user_id,
                online,
                last_seen,
                visible_to,
            } => {
                let user: UserId = convert(&user_id).map_err(ServiceError::InvalidParam)?;
                if user.server_name() != origin.as_str() {
                    return Err(ServiceError::Forbidden(format!(
                        "{origin} cannot speak for {user}"
                    )));
                }
                let peers = self.store.chat_peers(&user).await?;
                let hidden = Blocking::new(self.store.clone()).hidden_among(&user).await;
                let local: Vec<_> = peers
                    .into_iter()
                    .filter(|(p, _)| p.server_name() == self.local && !hidden.contains(p))
                    .collect();
                if local.is_empty() {
                    return Err(ServiceError::NotMember);
                }
                // Names that are not ours (or not ids) are ignored.
                let visible_to = visible_to.map(|v| {
                    v.iter()
                        .filter_map(|u| convert::<_, UserId>(u).ok())
                        .filter(|u| u.server_name() == self.local)
                        .collect::<BTreeSet<_>>()
                });
                let entry = RemotePresence {
                    online,
                    last_seen,
                    visible_to,
                };
                {
                    let mut remote = lock(&self.remote);
                    if remote.len() >= MAX_REMOTE && !remote.contains_key(&user) {
                        remote.clear();
                    }
                    remote.insert(user.clone(), entry.clone());
                }
                if entry.visible_to.as_ref().is_some_and(|v| v.is_empty()) {
                    return Ok(());
                }
                let listing: BTreeSet<UserId> =
                    if local.iter().any(|(_, s)| *s == Visibility::Contacts) {
                        self.store.listed_by(&user).await?.into_iter().collect()
                    } else {
                        BTreeSet::new()
                    };
                let frame = ServerFrame::Presence {
                    presence: WirePresence {
                        user_id: user,
                        online: Some(online),
                        last_seen,
                    },
                };
                let Some(json) = frame_json(&frame) else {
                    return Ok(());
                };
                let viewers: Vec<UserId> = local
                    .into_iter()
                    .filter(|(p, setting)| entry.shown_to(p) && setting.allows(listing.contains(p)))
                    .map(|(p, _)| p)
                    .collect();
                self.deliver(&viewers, Outbound::Presence(json)).await;
            }
        }
        Ok(())
    }
}
