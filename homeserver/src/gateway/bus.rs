//! Routing between the nodes of one domain through NATS.
//!
//! Several homeserver processes share one Postgres; a device's socket lives on one of
//! them. The node holding a socket subscribes to the device's subject
//! (`parley.dev.<device_id>`); any node that commits something for that device publishes
//! it there. NATS routes by interest, so a message reaches only the node with the socket,
//! and is dropped when no node has it (the item is in the device's inbox either way: the
//! bus is a doorbell with the item attached, never the record).
//!
//! Why NATS rather than Redis: subject interest routing does the "which node holds
//! device X" lookup for us, with no presence map to keep consistent, and per-device
//! subscriptions are cheap. Delivery is at most once, which is all a doorbell needs.
//!
//! One task owns the NATS subscriptions; the registry talks to it through a bounded
//! queue and never waits on it.
//!
//! "Does any node hold device X's socket?" (push, for a device with no socket here;
//! presence, for a user online on another node) is a NATS request on the device's
//! subject ([`Probe`]): the node subscribed to it answers at once from its bus task with
//! its node id; with no subscriber the NATS server answers "no responders" at once. No
//! map of our own, again.

use std::collections::HashMap;

use futures_util::StreamExt;
use futures_util::stream::SelectAll;
use parley_client_api::DeviceId;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{CloseReason, Outbound};

/// What travels on a device's subject.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "k", rename_all = "snake_case")]
pub(super) enum Wire {
    Event {
        id: i64,
        event: String,
    },
    Frame {
        id: i64,
        json: String,
    },
    /// Typing: not an inbox item.
    Ephemeral {
        json: String,
    },
    /// Presence: not an inbox item, written only on connections that heartbeat.
    Presence {
        json: String,
    },
    /// "Is the device's socket here?": the subscribed node's bus task answers.
    Probe,
    /// Close the device's socket unless it is on node `node` (a newer connection there).
    Kick {
        node: String,
        reason: u16,
    },
}

impl Wire {
    pub(super) fn from_outbound(item: &Outbound, node: &str) -> Self {
        match item {
            Outbound::Event { id, event_json } => Wire::Event {
                id: *id,
                event: event_json.to_string(),
            },
            Outbound::Frame { id, json } => Wire::Frame {
                id: *id,
                json: json.clone(),
            },
            Outbound::Ephemeral(json) => Wire::Ephemeral {
                json: json.to_string(),
            },
            Outbound::Presence(json) => Wire::Presence {
                json: json.to_string(),
            },
            Outbound::Close(reason) => Wire::Kick {
                node: node.to_owned(),
                reason: reason.code().0,
            },
        }
    }
}

pub(super) fn reason_from_code(code: u16) -> CloseReason {
    match code {
        4001 => CloseReason::Replaced,
        4002 => CloseReason::Lagged,
        1001 => CloseReason::Shutdown,
        _ => CloseReason::DeviceRemoved,
    }
}

enum Cmd {
    /// Subscribe, make sure the server has the subscription, then answer `done`.
    Subscribe(DeviceId, Option<(u64, tokio::sync::oneshot::Sender<u64>)>),
    Unsubscribe(DeviceId),
    Publish(DeviceId, Vec<u8>),
}

/// The registry's handle to the bus task.
#[derive(Clone)]
pub(super) struct BusHandle {
    tx: mpsc::Sender<Cmd>,
    pub(super) node: String,
}

impl BusHandle {
    /// Subscribes to the device's subject; `done` gets `conn` once NATS has the
    /// subscription, so nothing published after that is missed.
    pub(super) fn subscribe(
        &self,
        device: DeviceId,
        done: Option<(u64, tokio::sync::oneshot::Sender<u64>)>,
    ) {
        if let Err(
            mpsc::error::TrySendError::Full(Cmd::Subscribe(_, Some((conn, done))))
            | mpsc::error::TrySendError::Closed(Cmd::Subscribe(_, Some((conn, done)))),
        ) = self.tx.try_send(Cmd::Subscribe(device, done))
        {
            tracing::warn!("bus queue full; subscribing late");
            let _ = done.send(conn);
        }
    }
    pub(super) fn unsubscribe(&self, device: DeviceId) {
        self.try_send(Cmd::Unsubscribe(device));
    }
    pub(super) fn publish(&self, device: DeviceId, wire: &Wire) {
        if let Ok(bytes) = serde_json::to_vec(wire) {
            self.try_send(Cmd::Publish(device, bytes));
        }
    }
    fn try_send(&self, cmd: Cmd) {
        if self.tx.try_send(cmd).is_err() {
            // Full: the device's items are in its inbox; it gets them on its next sync.
            tracing::warn!("bus queue full; a live delivery was skipped");
        }
    }
}

fn subject(device: &DeviceId) -> String {
    format!("parley.dev.{device}")
}

/// How long a probe waits for the node holding a socket to answer (it answers from its
/// bus task; "no responders" comes back at once).
const PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Asks the domain which node holds a device's socket (a NATS request on the device's
/// subject). Called by the push task and presence, concurrently with the bus task.
#[derive(Clone)]
pub(super) struct Probe {
    client: async_nats::Client,
    /// This node's id (as the bus task answers probes).
    pub(super) node: String,
}

impl Probe {
    /// The id of the node holding the device's socket; `None`: no node (or no answer).
    pub(super) async fn holder(&self, device: &DeviceId) -> Option<String> {
        let body = serde_json::to_vec(&Wire::Probe).ok()?;
        let request = self.client.request(subject(device), body.into());
        match tokio::time::timeout(PROBE_TIMEOUT, request).await {
            Ok(Ok(answer)) => Some(String::from_utf8_lossy(&answer.payload).into_owned()),
            Ok(Err(e)) => {
                if e.kind() != async_nats::RequestErrorKind::NoResponders {
                    tracing::warn!(%device, error = %e, "bus probe failed");
                }
                None
            }
            Err(_) => {
                tracing::warn!(%device, "bus probe timed out");
                None
            }
        }
    }
}

/// Connects to NATS and starts the bus task. Messages for local devices come back on
/// `to_registry` as `(device, wire)`.
pub(super) async fn start(
    url: &str,
    node: String,
    to_registry: mpsc::Sender<(DeviceId, Wire)>,
) -> Result<(BusHandle, Probe), async_nats::ConnectError> {
    let client = async_nats::connect(url).await?;
    let (tx, rx) = mpsc::channel(64 * 1024);
    let probe = Probe {
        client: client.clone(),
        node: node.clone(),
    };
    tokio::spawn(run(client, node.clone(), rx, to_registry));
    Ok((BusHandle { tx, node }, probe))
}

async fn run(
    client: async_nats::Client,
    node: String,
    mut rx: mpsc::Receiver<Cmd>,
    to_registry: mpsc::Sender<(DeviceId, Wire)>,
) {
    type Incoming = std::pin::Pin<
        Box<
            dyn futures_util::Stream<Item = (DeviceId, Vec<u8>, Option<async_nats::Subject>)>
                + Send,
        >,
    >;
    let mut subs: SelectAll<Incoming> = SelectAll::new();
    let mut live: HashMap<DeviceId, CancellationToken> = HashMap::new();
    loop {
        tokio::select! {
            cmd = rx.recv() => {
                let Some(cmd) = cmd else { return };
                match cmd {
                    Cmd::Subscribe(device, done) => {
                        let answer = |done: Option<(u64, tokio::sync::oneshot::Sender<u64>)>| {
                            if let Some((conn, done)) = done {
                                let _ = done.send(conn);
                            }
                        };
                        if live.contains_key(&device) {
                            answer(done);
                            continue;
                        }
                        let result = client.subscribe(subject(&device)).await;
                        if let Err(e) = client.flush().await {
                            tracing::warn!(error = %e, "bus flush failed");
                        }
                        answer(done);
                        match result {
                            Ok(sub) => {
                                let stop = CancellationToken::new();
                                let d = device.clone();
                                let stream = sub
                                    .take_until(stop.clone().cancelled_owned())
                                    .map(move |m| (d.clone(), m.payload.to_vec(), m.reply));
                                subs.push(Box::pin(stream));
                                live.insert(device, stop);
                            }
                            Err(e) => tracing::warn!(error = %e, %device, "bus subscribe failed"),
                        }
                    }
                    Cmd::Unsubscribe(device) => {
                        if let Some(stop) = live.remove(&device) {
                            stop.cancel();
                        }
                    }
                    Cmd::Publish(device, bytes) => {
                        if let Err(e) = client.publish(subject(&device), bytes.into()).await {
                            tracing::warn!(error = %e, "bus publish failed");
                        }
                    }
                }
            }
            Some((device, bytes, reply)) = subs.next(), if !subs.is_empty() => {
                match serde_json::from_slice::<Wire>(&bytes) {
                    Ok(Wire::Probe) => {
                        // Subscribed: the socket is on this node.
                        if let Some(reply) = reply
                            && let Err(e) = client.publish(reply, node.clone().into()).await
                        {
                            tracing::warn!(error = %e, "bus probe answer failed");
                        }
                    }
                    Ok(wire) => {
                        if to_registry.send((device, wire)).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "malformed bus message"),
                }
            }
        }
    }
}
