//! Push notifications: when an event lands in the inbox of a device that has no open
//! socket on this node and has a pusher, POST `{chat_id, counts, token}` (no content) to
//! its push gateway ([`wire`], `spec/push-gateway.md`).
//!
//! One task owns the pure [`core::Coalescer`]: at most one notification per device per
//! `coalesce_ms`, retries with capped exponential backoff while the gateway fails, given
//! up after `max_attempts`; requests run concurrently (bounded), at most one per device.
//! The gateway tells it about undelivered events through a bounded queue ([`Push::hint`];
//! when full, a hint is dropped: the next event of the device brings it back).
//!
//! With several nodes per domain (a bus), "no socket here" may mean "a socket on another
//! node": before notifying, the task asks the domain ([`Gateway::connected_anywhere`],
//! a NATS request answered by the node holding the socket, if any) and notifies only
//! a device no node holds.

pub mod core;
pub mod wire;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use parley_client_api::{ChatId, DeviceId, UserId};
use rand::Rng as _;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use self::core::{After, Coalescer, PushOutcome, PushTimings};
use super::ServiceError;
use crate::clock::now_ms;
use crate::config::PushConfig;
use crate::gateway::Gateway;
use crate::store::presence::{PresenceStore, PusherRow};
use crate::store::{AnyStore, Store};

/// Hints waiting for the push task.
const HINT_QUEUE: usize = 8 * 1024;
/// Requests to gateways in flight at once.
const MAX_IN_FLIGHT: usize = 64;
/// Most devices tracked (pending, in flight, or in their coalescing window).
const MAX_DEVICES: usize = 100_000;
/// How long "this device has no pusher" is remembered (ms).
const NO_PUSHER_MS: i64 = 30_000;

enum Cmd {
    /// An event (serialized `ChatEvent`) landed in the inbox of a device with no socket.
    Hint(DeviceId, Arc<str>),
    /// The device's pusher changed or was removed.
    Changed(DeviceId),
}

/// The handle. Cheap to clone.
#[derive(Clone)]
pub struct Push {
    tx: mpsc::Sender<Cmd>,
    store: AnyStore,
    allow_insecure: bool,
}

impl Push {
    pub fn spawn(
        config: &PushConfig,
        store: AnyStore,
        gateway: Gateway,
    ) -> Result<Self, ServiceError> {
        let ms = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        let timings = PushTimings {
            coalesce_ms: ms(config.coalesce_ms),
            retry_base_ms: ms(config.retry_base_ms),
            retry_max_ms: ms(config.retry_max_ms),
            max_attempts: config.max_attempts,
            max_devices: MAX_DEVICES,
        };
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_millis(config.timeout_ms))
            .build()
            .map_err(|e| ServiceError::Internal(format!("push client: {e}")))?;
        let (tx, rx) = mpsc::channel(HINT_QUEUE);
        let task = Task {
            store: store.clone(),
            gateway,
            http,
            core: Coalescer::new(timings),
            owners: HashMap::new(),
            no_pusher: HashMap::new(),
        };
        tokio::spawn(task.run(rx));
        Ok(Self {
            tx,
            store,
            allow_insecure: config.allow_insecure,
        })
    }

    /// An event landed in the inbox of `device`, which has no socket here.
    pub fn hint(&self, device: DeviceId, event_json: Arc<str>) {
        let _ = self.tx.try_send(Cmd::Hint(device, event_json));
    }

    /// Registers (or replaces) the device's pusher.
    pub async fn set_pusher(
        &self,
        user: &UserId,
        device: &DeviceId,
        url: &str,
        token: &str,
    ) -> Result<PusherRow, ServiceError> {
        check_url(url, self.allow_insecure)?;
        if token.is_empty()
            || token.len() > parley_client_api::http::push::MAX_TOKEN_BYTES
            || token.chars().any(char::is_control)
        {
            return Err(ServiceError::InvalidParam(format!(
                "token: 1 to {} bytes, no control characters",
                parley_client_api::http::push::MAX_TOKEN_BYTES
            )));
        }
        let row = PusherRow {
            device_id: device.clone(),
            user_id: user.clone(),
            url: url.to_owned(),
            token: token.to_owned(),
            created_at: now_ms(),
        };
        self.store.set_pusher(&row).await?;
        let _ = self.tx.send(Cmd::Changed(device.clone())).await;
        Ok(row)
    }

    pub async fn pushers(&self, user: &UserId) -> Result<Vec<PusherRow>, ServiceError> {
        Ok(self.store.pushers(user).await?)
    }

    pub async fn delete_pusher(
        &self,
        user: &UserId,
        device: &DeviceId,
    ) -> Result<(), ServiceError> {
        if !self.store.delete_pusher(user, device).await? {
            return Err(ServiceError::UnknownDevice);
        }
        let _ = self.tx.send(Cmd::Changed(device.clone())).await;
        Ok(())
    }
}

/// A gateway URL: `https://` to a host name or public address, or, with
/// `allow_insecure`, also `http://` and loopback/private addresses.
fn check_url(url: &str, allow_insecure: bool) -> Result<(), ServiceError> {
    let bad = |why: &str| Err(ServiceError::InvalidParam(format!("url: {why}")));
    if url.len() > parley_client_api::http::push::MAX_URL_BYTES {
        return bad("too long");
    }
    let Ok(parsed) = reqwest::Url::parse(url) else {
        return bad("not a URL");
    };
    match parsed.scheme() {
        "https" => {}
        "http" if allow_insecure => {}
        _ => return bad("must be https://"),
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return bad("no credentials in the URL");
    }
    let Some(host) = parsed.host_str() else {
        return bad("no host");
    };
    if allow_insecure {
        return Ok(());
    }
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.eq_ignore_ascii_case("localhost") || host.ends_with(".localhost") {
        return bad("a loopback host");
    }
    if let Ok(ip) = host.parse::<IpAddr>() {
        let private = match ip {
            IpAddr::V4(v4) => {
                v4.is_loopback()
                    || v4.is_private()
                    || v4.is_link_local()
                    || v4.is_unspecified()
                    || v4.is_broadcast()
                    || v4.octets()[0] == 100 && (v4.octets()[1] & 0xc0) == 64
            }
            IpAddr::V6(v6) => {
                v6.is_loopback()
                    || v6.is_unspecified()
                    || (v6.segments()[0] & 0xfe00) == 0xfc00
                    || (v6.segments()[0] & 0xffc0) == 0xfe80
            }
        };
        if private {
            return bad("a loopback or private address");
        }
    }
    Ok(())
}

/// What the push task reads from an event: its chat and sender (never its payload).
#[derive(serde::Deserialize)]
struct Peek {
    chat_id: ChatId,
    sender: UserId,
}

struct Task {
    store: AnyStore,
    gateway: Gateway,
    http: reqwest::Client,
    core: Coalescer,
    /// The user of each tracked device.
    owners: HashMap<DeviceId, UserId>,
    /// Devices without a pusher, until (ms).
    no_pusher: HashMap<DeviceId, i64>,
}

impl Task {
    async fn run(mut self, mut rx: mpsc::Receiver<Cmd>) {
        let mut in_flight: JoinSet<(DeviceId, PushOutcome)> = JoinSet::new();
        let mut gc = tokio::time::interval(Duration::from_secs(10));
        loop {
            let now = now_ms();
            let room = MAX_IN_FLIGHT.saturating_sub(in_flight.len());
            if room > 0 {
                for (device, chat) in self.core.due(now, room) {
                    let Some(user) = self.owners.get(&device).cloned() else {
                        self.core.forget(&device);
                        continue;
                    };
                    let (store, http) = (self.store.clone(), self.http.clone());
                    let gateway = self.gateway.clone();
                    in_flight.spawn(async move {
                        // A socket on another node of the domain gets the event: no push.
                        if gateway.has_bus() && gateway.connected_anywhere(&device).await {
                            return (device, PushOutcome::Delivered);
                        }
                        let outcome = notify(&store, &http, &device, &user, &chat).await;
                        (device, outcome)
                    });
                }
            }
            let wait = match self.core.next_due() {
                Some(at) if in_flight.len() < MAX_IN_FLIGHT => {
                    Duration::from_millis(u64::try_from(at - now).unwrap_or(0))
                }
                _ => Duration::from_secs(3600),
            };
            tokio::select! {
                cmd = rx.recv() => match cmd {
                    None => return,
                    Some(Cmd::Hint(device, json)) => self.hint(device, &json).await,
                    Some(Cmd::Changed(device)) => {
                        self.no_pusher.remove(&device);
                        self.owners.remove(&device);
                        self.core.forget(&device);
                    }
                },
                Some(done) = in_flight.join_next(), if !in_flight.is_empty() => {
                    let Ok((device, outcome)) = done else { continue };
                    let jitter: f64 = rand::rng().random();
                    match self.core.finished(&device, outcome, now_ms(), jitter) {
                        After::Nothing => {}
                        After::GaveUp => tracing::warn!(%device, ?outcome, "push notification given up"),
                        After::RemovePusher => {
                            if let Some(user) = self.owners.remove(&device) {
                                tracing::info!(%device, "push gateway rejected the token: pusher removed");
                                if let Err(e) = self.store.delete_pusher(&user, &device).await {
                                    tracing::warn!(%device, error = %e, "cannot remove a pusher");
                                }
                            }
                        }
                    }
                }
                () = tokio::time::sleep(wait) => {}
                _ = gc.tick() => {
                    let now = now_ms();
                    self.core.gc(now);
                    let core = &self.core;
                    self.owners.retain(|d, _| core.tracks(d));
                    self.no_pusher.retain(|_, until| *until > now);
                }
            }
        }
    }

    async fn hint(&mut self, device: DeviceId, json: &str) {
        let Ok(peek) = serde_json::from_str::<Peek>(json) else {
            return;
        };
        if !self.core.tracks(&device) {
            let now = now_ms();
            if self
                .no_pusher
                .get(&device)
                .is_some_and(|until| *until > now)
            {
                return;
            }
            match self.store.pusher_of(&device).await {
                Ok(Some(row)) => {
                    self.owners.insert(device.clone(), row.user_id);
                }
                Ok(None) => {
                    if self.no_pusher.len() >= MAX_DEVICES {
                        self.no_pusher.clear();
                    }
                    self.no_pusher.insert(device, now + NO_PUSHER_MS);
                    return;
                }
                Err(e) => {
                    tracing::warn!(%device, error = %e, "cannot read a pusher");
                    return;
                }
            }
        }
        // One's own messages (from another device) notify no one.
        if self.owners.get(&device) == Some(&peek.sender) {
            return;
        }
        if !self.core.hint(&device, &peek.chat_id) {
            self.owners.remove(&device);
            tracing::warn!(%device, "too many devices awaiting push; a notification was dropped");
        }
    }
}

/// Sends one notification: the device's current pusher, the user's unread counts.
async fn notify(
    store: &AnyStore,
    http: &reqwest::Client,
    device: &DeviceId,
    user: &UserId,
    chat: &ChatId,
) -> PushOutcome {
    let row = match store.pusher_of(device).await {
        Ok(Some(row)) if row.user_id == *user => row,
        Ok(_) => return PushOutcome::Gone,
        Err(_) => return PushOutcome::Failed,
    };
    let Ok(chats) = store.list_chats(user).await else {
        return PushOutcome::Failed;
    };
    let counts = wire::Counts {
        unread: chats.iter().map(|c| c.unread_count).sum(),
        chat_unread: chats
            .iter()
            .find(|c| c.chat_id == *chat)
            .map(|c| c.unread_count)
            .unwrap_or(0),
    };
    let body = wire::Request {
        notification: wire::Notification {
            chat_id: chat.clone(),
            counts,
            token: row.token.clone(),
        },
    };
    let resp = match http.post(&row.url).json(&body).send().await {
        Ok(r) => r,
        Err(e) => {
            tracing::info!(%device, error = %e, "push gateway unreachable");
            return PushOutcome::Failed;
        }
    };
    let status = resp.status().as_u16();
    match status {
        200..=299 => {
            let answer: wire::Response = resp.json().await.unwrap_or_default();
            if answer.rejected.contains(&row.token) {
                PushOutcome::Gone
            } else {
                PushOutcome::Delivered
            }
        }
        404 | 410 => PushOutcome::Gone,
        429 | 500..=599 => {
            tracing::info!(%device, status, "push gateway failed; will retry");
            PushOutcome::Failed
        }
        _ => {
            tracing::warn!(%device, status, "push gateway refused the notification");
            PushOutcome::Refused
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn gateway_urls() {
        let ok = |u: &str, insecure| super::check_url(u, insecure).is_ok();
        assert!(ok("https://push.example.org/_parley/push/v1/notify", false));
        assert!(!ok("http://push.example.org/x", false));
        assert!(!ok("https://127.0.0.1/x", false));
        assert!(!ok("https://10.1.2.3/x", false));
        assert!(!ok("https://[::1]/x", false));
        assert!(!ok("https://localhost/x", false));
        assert!(!ok("https://u:p@push.example.org/x", false));
        assert!(!ok("ftp://push.example.org/x", true));
        assert!(ok("http://127.0.0.1:9000/x", true));
    }
}
