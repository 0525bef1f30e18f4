//! The socket registry: one task owns the map from connected devices to their bounded
//! queues; everything else talks to it through a [`Gateway`] handle.
//!
//! Invariant: the registry never waits on a socket. A device whose queue is full is
//! disconnected (it resumes from its inbox, where everything it missed still is).

pub mod bus;

use std::collections::HashMap;
use std::sync::Arc;

use parley_client_api::DeviceId;
use tokio::sync::{mpsc, oneshot};

/// What the registry hands a connection to write.
#[derive(Debug, Clone)]
pub enum Outbound {
    /// A chat event for inbox item `id`; `event_json` is the serialized `ChatEvent`,
    /// shared by every recipient.
    Event { id: i64, event_json: Arc<str> },
    /// A fully serialized frame (receipts).
    Frame { id: i64, json: String },
    /// A serialized frame that is not an inbox item (typing): written as is, never
    /// tracked for acknowledgement.
    Ephemeral(Arc<str>),
    /// A serialized presence frame: like [`Outbound::Ephemeral`], but written only on
    /// connections that heartbeat (the node holding the socket knows; spec PR3).
    Presence(Arc<str>),
    /// Close the connection, with the reason sent to the client.
    Close(CloseReason),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// Another connection of the same device took over.
    Replaced,
    /// The device fell too far behind; reconnect and resume from the inbox.
    Lagged,
    /// The device was removed or logged out.
    DeviceRemoved,
    /// The server is shutting down.
    Shutdown,
}

impl CloseReason {
    /// WebSocket close code and reason (4000–4999 are application codes).
    pub fn code(self) -> (u16, &'static str) {
        match self {
            CloseReason::Replaced => (4001, "replaced"),
            CloseReason::Lagged => (4002, "lagged"),
            CloseReason::DeviceRemoved => (4003, "device_removed"),
            CloseReason::Shutdown => (1001, "shutdown"),
        }
    }
}

enum Command {
    Register {
        device: DeviceId,
        tx: mpsc::Sender<Outbound>,
        done: oneshot::Sender<u64>,
    },
    Unregister {
        device: DeviceId,
        conn: u64,
    },
    Deliver(Vec<(DeviceId, Outbound)>),
    Kick(DeviceId, CloseReason),
    Count(oneshot::Sender<usize>),
    IsLocal(DeviceId, oneshot::Sender<bool>),
    OnOffline(OfflineHook),
}

/// Called with each chat event for a device that has no socket on this node. With a
/// bus the device may have one on another node: ask [`Gateway::connected_anywhere`].
pub type OfflineHook = Arc<dyn Fn(DeviceId, Arc<str>) + Send + Sync>;

/// A handle to the registry task. Cheap to clone.
#[derive(Clone)]
pub struct Gateway {
    tx: mpsc::Sender<Command>,
    queue: usize,
    /// Asks the nodes of the domain whether one holds a device's socket (with a bus).
    probe: Option<bus::Probe>,
}

/// A registered connection: its queue and its registration id.
pub struct Registration {
    pub rx: mpsc::Receiver<Outbound>,
    pub conn: u64,
}

impl Gateway {
    /// Starts the registry task for a single node. `queue` bounds each connection's
    /// queue.
    pub fn spawn(queue: usize) -> Self {
        let (tx, rx) = mpsc::channel(16 * 1024);
        tokio::spawn(run(rx, None));
        Self {
            tx,
            queue,
            probe: None,
        }
    }

    /// Starts the registry task for one node of several, routing deliveries for devices
    /// connected elsewhere through NATS at `url`.
    pub async fn spawn_with_bus(queue: usize, url: &str) -> Result<Self, async_nats::ConnectError> {
        use rand::Rng as _;
        let node = format!("{:016x}", rand::rng().random::<u64>());
        let (from_bus_tx, from_bus_rx) = mpsc::channel(16 * 1024);
        let (bus, probe) = bus::start(url, node.clone(), from_bus_tx).await?;
        tracing::info!(%node, bus = %url, "routing between nodes through NATS");
        let (tx, rx) = mpsc::channel(16 * 1024);
        tokio::spawn(run(rx, Some((bus, from_bus_rx))));
        Ok(Self {
            tx,
            queue,
            probe: Some(probe),
        })
    }

    /// Whether other nodes of the domain may hold sockets (a bus is configured): then a
    /// device without a socket here may have one elsewhere, and deliveries to any
    /// device of the domain reach it through the bus.
    pub fn has_bus(&self) -> bool {
        self.probe.is_some()
    }

    /// Whether a node of the domain (this one included) holds the device's socket. With
    /// no bus, only this node is asked. A bus that does not answer counts as "no", so a
    /// push is sent rather than missed.
    pub async fn connected_anywhere(&self, device: &DeviceId) -> bool {
        match &self.probe {
            Some(probe) => probe.holder(device).await.is_some(),
            None => {
                let (tx, rx) = oneshot::channel();
                if self
                    .tx
                    .send(Command::IsLocal(device.clone(), tx))
                    .await
                    .is_err()
                {
                    return false;
                }
                rx.await.unwrap_or(false)
            }
        }
    }

    /// Whether another node of the domain holds the device's socket (false without a
    /// bus, or when the bus does not answer).
    pub async fn connected_elsewhere(&self, device: &DeviceId) -> bool {
        match &self.probe {
            Some(probe) => probe
                .holder(device)
                .await
                .is_some_and(|node| node != probe.node),
            None => false,
        }
    }

    /// Registers a device's connection, replacing (and closing) an older one. Once this
    /// returns, every later delivery for the device reaches the returned queue.
    pub async fn register(&self, device: DeviceId) -> Option<Registration> {
        let (tx, rx) = mpsc::channel(self.queue);
        let (done, wait) = oneshot::channel();
        self.tx
            .send(Command::Register { device, tx, done })
            .await
            .ok()?;
        let conn = wait.await.ok()?;
        Some(Registration { rx, conn })
    }

    pub async fn unregister(&self, device: DeviceId, conn: u64) {
        let _ = self.tx.send(Command::Unregister { device, conn }).await;
    }

    /// Hands items to connected devices; devices not connected are skipped (the items
    /// are in their inboxes).
    pub async fn deliver(&self, items: Vec<(DeviceId, Outbound)>) {
        if !items.is_empty() {
            let _ = self.tx.send(Command::Deliver(items)).await;
        }
    }

    /// Closes a device's connection, if any.
    pub async fn kick(&self, device: DeviceId, reason: CloseReason) {
        let _ = self.tx.send(Command::Kick(device, reason)).await;
    }

    /// Sets the hook told about events for devices with no socket on this node (push).
    pub async fn on_offline(&self, hook: OfflineHook) {
        let _ = self.tx.send(Command::OnOffline(hook)).await;
    }

    /// Connected devices.
    pub async fn connected(&self) -> usize {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Command::Count(tx)).await.is_err() {
            return 0;
        }
        rx.await.unwrap_or(0)
    }
}

type Conns = HashMap<DeviceId, (u64, mpsc::Sender<Outbound>)>;

/// Hands an item to a local connection; a full queue disconnects the device.
fn deliver_local(conns: &mut Conns, device: &DeviceId, item: Outbound) -> bool {
    let Some((_, tx)) = conns.get(device) else {
        return false;
    };
    if tx.try_send(item).is_err() {
        // Full or gone: drop the sender; the connection sees its queue end and closes
        // as lagged. Its inbox still holds everything.
        tracing::debug!(%device, "socket queue full, disconnecting");
        conns.remove(device);
    }
    true
}

async fn run(
    mut rx: mpsc::Receiver<Command>,
    mut bus: Option<(bus::BusHandle, mpsc::Receiver<(DeviceId, bus::Wire)>)>,
) {
    let mut conns: Conns = HashMap::new();
    let mut next_conn: u64 = 0;
    let mut offline: Option<OfflineHook> = None;
    loop {
        let from_bus = async {
            match bus.as_mut() {
                Some((_, rx)) => rx.recv().await,
                None => std::future::pending().await,
            }
        };
        let cmd = tokio::select! {
            cmd = rx.recv() => match cmd {
                Some(cmd) => cmd,
                None => return,
            },
            Some((device, wire)) = from_bus => {
                let node = bus.as_ref().map(|(b, _)| b.node.as_str()).unwrap_or("");
                match wire {
                    bus::Wire::Event { id, event } => {
                        deliver_local(&mut conns, &device, Outbound::Event { id, event_json: event.into() });
                    }
                    bus::Wire::Frame { id, json } => {
                        deliver_local(&mut conns, &device, Outbound::Frame { id, json });
                    }
                    bus::Wire::Ephemeral { json } => {
                        deliver_local(&mut conns, &device, Outbound::Ephemeral(json.into()));
                    }
                    bus::Wire::Presence { json } => {
                        deliver_local(&mut conns, &device, Outbound::Presence(json.into()));
                    }
                    // Answered by the bus task itself.
                    bus::Wire::Probe => {}
                    bus::Wire::Kick { node: from, reason } if from != node => {
                        if let Some((_, tx)) = conns.remove(&device) {
                            let _ = tx.try_send(Outbound::Close(bus::reason_from_code(reason)));
                        }
                        if let Some((b, _)) = &bus {
                            b.unsubscribe(device);
                        }
                    }
                    bus::Wire::Kick { .. } => {}
                }
                continue;
            }
        };
        match cmd {
            Command::Register { device, tx, done } => {
                next_conn += 1;
                if let Some((_, old)) = conns.insert(device.clone(), (next_conn, tx)) {
                    let _ = old.try_send(Outbound::Close(CloseReason::Replaced));
                }
                if let Some((b, _)) = &bus {
                    // Close the device's socket on any other node, then listen for it.
                    b.publish(
                        device.clone(),
                        &bus::Wire::Kick {
                            node: b.node.clone(),
                            reason: CloseReason::Replaced.code().0,
                        },
                    );
                    b.subscribe(device, Some((next_conn, done)));
                } else {
                    let _ = done.send(next_conn);
                }
            }
            Command::Unregister { device, conn } => {
                if conns.get(&device).is_some_and(|(c, _)| *c == conn) {
                    conns.remove(&device);
                    if let Some((b, _)) = &bus {
                        b.unsubscribe(device);
                    }
                }
            }
            Command::Deliver(items) => {
                for (device, item) in items {
                    if deliver_local(&mut conns, &device, item.clone()) {
                        continue;
                    }
                    if let Some((b, _)) = &bus {
                        b.publish(device.clone(), &bus::Wire::from_outbound(&item, &b.node));
                    }
                    // Not here: maybe on no node at all (the hook asks, with a bus).
                    if let (Some(hook), Outbound::Event { event_json, .. }) = (&offline, &item) {
                        hook(device, event_json.clone());
                    }
                }
            }
            Command::Kick(device, reason) => {
                if let Some((_, tx)) = conns.remove(&device) {
                    let _ = tx.try_send(Outbound::Close(reason));
                }
                if let Some((b, _)) = &bus {
                    b.publish(
                        device.clone(),
                        &bus::Wire::Kick {
                            node: b.node.clone(),
                            reason: reason.code().0,
                        },
                    );
                    b.unsubscribe(device);
                }
            }
            Command::Count(reply) => {
                let _ = reply.send(conns.len());
            }
            Command::IsLocal(device, reply) => {
                let _ = reply.send(conns.contains_key(&device));
            }
            Command::OnOffline(hook) => offline = Some(hook),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> DeviceId {
        DeviceId::try_from(s).unwrap()
    }

    #[tokio::test]
    async fn delivers_replaces_and_disconnects_laggards() {
        let gw = Gateway::spawn(2);
        let mut a = gw.register(d("A")).await.unwrap();
        let json: Arc<str> = Arc::from("{}");
        gw.deliver(vec![
            (
                d("A"),
                Outbound::Event {
                    id: 1,
                    event_json: json.clone(),
                },
            ),
            (
                d("B"),
                Outbound::Event {
                    id: 2,
                    event_json: json.clone(),
                },
            ),
        ])
        .await;
        assert!(matches!(
            a.rx.recv().await,
            Some(Outbound::Event { id: 1, .. })
        ));
        assert_eq!(gw.connected().await, 1);

        // A second connection replaces the first, which is told so.
        let mut a2 = gw.register(d("A")).await.unwrap();
        assert!(matches!(
            a.rx.recv().await,
            Some(Outbound::Close(CloseReason::Replaced))
        ));
        // The old connection's unregister does not remove the new one.
        gw.unregister(d("A"), a.conn).await;
        assert_eq!(gw.connected().await, 1);

        // Overflowing the queue (2) disconnects the device.
        let items = (0..3)
            .map(|i| {
                (
                    d("A"),
                    Outbound::Event {
                        id: i,
                        event_json: json.clone(),
                    },
                )
            })
            .collect();
        gw.deliver(items).await;
        assert_eq!(gw.connected().await, 0);
        assert!(a2.rx.recv().await.is_some());
        assert!(a2.rx.recv().await.is_some());
        assert!(a2.rx.recv().await.is_none());
    }
}
