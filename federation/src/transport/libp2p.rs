//! The libp2p transport: TCP + noise + yamux, identify and ping, and one stream
//! protocol, `/http/1.1` (libp2p/specs `http`), carrying exactly the signed HTTP/1.1
//! requests of the HTTP transport. Nothing here decides anything about federation:
//! inbound streams are served by the same axum router as TCP connections (with the
//! connection's PeerId attached as [`TransportPeer`], which the verifier checks against
//! the signing key), and outbound requests are signed by [`super::http::FederationClient`]
//! before they get here.
//!
//! A peer is used only once it proved to be the server it is dialed as: after the
//! connection is up, its key directory is fetched over that connection and verified for
//! the server name, and the connection's PeerId must be one of its current keys.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt as _;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper_util::rt::TokioIo;
pub use libp2p::core::multiaddr::Protocol;
use libp2p::swarm::dial_opts::DialOpts;
use libp2p::swarm::{ConnectionId, NetworkBehaviour, SwarmEvent};
pub use libp2p::{Multiaddr, PeerId};
use libp2p::{StreamProtocol, identify, noise, ping, tcp, yamux};
use tokio::sync::{mpsc, oneshot};
use tokio_util::compat::FuturesAsyncReadCompatExt as _;
use tower::ServiceExt as _;

use super::http::{ClientError, FedResponse, TransportPeer, is_public};
use super::system_now_ms;
use crate::directory::{self, VerifiedDirectory};
use crate::ids::ServerName;
use crate::keys::ServerSigningKey;

/// The stream protocol federation requests travel on.
pub const HTTP_PROTOCOL: StreamProtocol = StreamProtocol::new("/http/1.1");
/// Identify's protocol version string.
pub const IDENTIFY_PROTOCOL: &str = "/parley-fed/1";

/// Most peers whose identity is remembered (oldest forgotten first).
const MAX_PEERS: usize = 10_000;
/// Swarm commands queued.
const COMMAND_QUEUE: usize = 256;

/// How the node listens and behaves.
#[derive(Debug, Clone)]
pub struct Libp2pConfig {
    /// Where to listen (`/ip4/0.0.0.0/tcp/8449`); empty: dial only.
    pub listen: Vec<Multiaddr>,
    /// Streams served at once; more are dropped (the peer retries).
    pub max_inbound_streams: usize,
    /// A connection with no stream for this long is closed.
    pub idle_timeout: Duration,
    /// Dialing, and each request/response exchange.
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    /// How long one inbound stream may take to be served (a media blob streams on it).
    pub stream_timeout: Duration,
}

impl Default for Libp2pConfig {
    fn default() -> Self {
        Self {
            listen: Vec::new(),
            max_inbound_streams: 256,
            idle_timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            stream_timeout: Duration::from_secs(900),
        }
    }
}

/// Why the node could not start.
#[derive(Debug, thiserror::Error)]
pub enum Libp2pError {
    #[error("libp2p: {0}")]
    Build(String),
    #[error("cannot listen on {addr}: {message}")]
    Listen { addr: Multiaddr, message: String },
}

#[derive(NetworkBehaviour)]
struct Behaviour {
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    stream: libp2p_stream::Behaviour,
}

enum Command {
    Dial {
        addr: Multiaddr,
        reply: oneshot::Sender<Result<PeerId, String>>,
    },
    AddAddress(PeerId, Multiaddr),
    Disconnect(PeerId),
}

/// Request counts, for metrics.
#[derive(Debug, Default)]
pub struct Libp2pStats {
    /// Requests served (inbound streams answered).
    pub inbound: AtomicU64,
    /// Requests sent and answered.
    pub outbound: AtomicU64,
}

/// A running libp2p node. Cheap to clone.
#[derive(Clone)]
pub struct Libp2pNode {
    commands: mpsc::Sender<Command>,
    control: libp2p_stream::Control,
    local: PeerId,
    listening: Arc<Mutex<Vec<Multiaddr>>>,
    /// Servers whose identity was proven: name → PeerId.
    peers: Arc<Mutex<HashMap<ServerName, PeerId>>>,
    stats: Arc<Libp2pStats>,
    config: Libp2pConfig,
}

impl std::fmt::Debug for Libp2pNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Libp2pNode")
            .field("peer_id", &self.local)
            .finish_non_exhaustive()
    }
}

impl Libp2pNode {
    /// Starts a node whose identity is `key` (so its PeerId is the key's), listening on
    /// `config.listen`, serving inbound `/http/1.1` streams with `router`.
    pub async fn start(
        key: &ServerSigningKey,
        config: Libp2pConfig,
        router: axum::Router,
    ) -> Result<Self, Libp2pError> {
        let build = |e: &dyn std::fmt::Display| Libp2pError::Build(e.to_string());
        let mut seed = *key.to_seed();
        let keypair =
            libp2p::identity::Keypair::ed25519_from_bytes(&mut seed).map_err(|e| build(&e))?;
        let mut swarm = libp2p::SwarmBuilder::with_existing_identity(keypair)
            .with_tokio()
            .with_tcp(
                tcp::Config::default().nodelay(true),
                noise::Config::new,
                yamux::Config::default,
            )
            .map_err(|e| build(&e))?
            .with_behaviour(|key| Behaviour {
                identify: identify::Behaviour::new(
                    identify::Config::new(IDENTIFY_PROTOCOL.into(), key.public())
                        .with_agent_version(concat!("parley/", env!("CARGO_PKG_VERSION")).into()),
                ),
                ping: ping::Behaviour::new(ping::Config::new()),
                stream: libp2p_stream::Behaviour::new(),
            })
            .map_err(|e| build(&e))?
            .with_swarm_config(|c| c.with_idle_connection_timeout(config.idle_timeout))
            .build();
        let local = *swarm.local_peer_id();
        let mut listeners = Vec::new();
        for addr in &config.listen {
            let id = swarm
                .listen_on(addr.clone())
                .map_err(|e| Libp2pError::Listen {
                    addr: addr.clone(),
                    message: e.to_string(),
                })?;
            listeners.push(id);
        }
        // Wait for every listener's first address, so `listen_addrs` is complete.
        let mut listening = Vec::new();
        while listening.len() < listeners.len() {
            match tokio::time::timeout(Duration::from_secs(10), swarm.select_next_some()).await {
                Ok(SwarmEvent::NewListenAddr { address, .. }) => listening.push(address),
                Ok(SwarmEvent::ListenerError { error, .. })
                | Ok(SwarmEvent::ListenerClosed {
                    reason: Err(error), ..
                }) => {
                    return Err(Libp2pError::Build(error.to_string()));
                }
                Ok(_) => {}
                Err(_) => return Err(Libp2pError::Build("listeners did not start".into())),
            }
        }
        let mut control = swarm.behaviour().stream.new_control();
        let incoming = control
            .accept(HTTP_PROTOCOL)
            .map_err(|e| build(&format!("{e:?}")))?;
        let (commands, rx) = mpsc::channel(COMMAND_QUEUE);
        let node = Self {
            commands,
            control,
            local,
            listening: Arc::new(Mutex::new(listening)),
            peers: Arc::new(Mutex::new(HashMap::new())),
            stats: Arc::new(Libp2pStats::default()),
            config,
        };
        tokio::spawn(drive(swarm, rx, node.listening.clone()));
        tokio::spawn(node.clone().serve(incoming, router));
        tracing::info!(peer_id = %local, listen = ?node.listen_addrs(), "libp2p federation listening");
        Ok(node)
    }

    pub fn peer_id(&self) -> PeerId {
        self.local
    }

    /// The addresses actually listened on (ports resolved).
    pub fn listen_addrs(&self) -> Vec<Multiaddr> {
        lock(&self.listening).clone()
    }

    pub fn stats(&self) -> &Arc<Libp2pStats> {
        &self.stats
    }

    /// Sends `request` (already signed; origin-form URI) to `destination` at `addr` and
    /// returns the answer whatever its status.
    pub async fn request(
        &self,
        destination: &ServerName,
        addr: &Multiaddr,
        request: http::Request<Bytes>,
        max_response_bytes: usize,
    ) -> Result<FedResponse, ClientError> {
        let peer = self.proven_peer(destination, addr).await?;
        let result = self.exchange(peer, request, max_response_bytes).await;
        if result.is_err() {
            // Reconnect and prove the peer again next time (it may have a new key).
            lock(&self.peers).remove(destination);
        } else {
            self.stats.outbound.fetch_add(1, Ordering::Relaxed);
        }
        result
    }

    /// Like [`Libp2pNode::request`], but returns once the answer's head is in: the body
    /// is read by the caller as it arrives (media blobs, in constant memory).
    pub async fn request_streamed(
        &self,
        destination: &ServerName,
        addr: &Multiaddr,
        request: http::Request<Bytes>,
    ) -> Result<http::Response<hyper::body::Incoming>, ClientError> {
        let peer = self.proven_peer(destination, addr).await?;
        let result = tokio::time::timeout(self.config.request_timeout, async {
            let mut sender = self.open(peer).await?;
            sender
                .send_request(request.map(Full::new))
                .await
                .map_err(|e| ClientError::Network(e.to_string()))
        })
        .await
        .map_err(|_| ClientError::Timeout)
        .and_then(|r| r);
        match &result {
            Ok(_) => {
                self.stats.outbound.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                lock(&self.peers).remove(destination);
            }
        }
        result
    }

    /// A fresh `/http/1.1` stream to `peer`, as an HTTP/1.1 client connection.
    async fn open(
        &self,
        peer: PeerId,
    ) -> Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>, ClientError> {
        let stream = self
            .control
            .clone()
            .open_stream(peer, HTTP_PROTOCOL)
            .await
            .map_err(|e| ClientError::Network(format!("open stream to {peer}: {e}")))?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream.compat()))
            .await
            .map_err(|e| ClientError::Network(e.to_string()))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!("libp2p http connection: {e}");
            }
        });
        Ok(sender)
    }

    /// The PeerId of `destination`, dialing `addr` and checking its key directory when
    /// not known yet.
    async fn proven_peer(
        &self,
        destination: &ServerName,
        addr: &Multiaddr,
    ) -> Result<PeerId, ClientError> {
        if let Some(peer) = lock(&self.peers).get(destination) {
            return Ok(*peer);
        }
        let peer = self.dial(addr).await?;
        let request = http::Request::get(directory::PATH)
            .header(http::header::HOST, destination.as_str())
            .header(http::header::ACCEPT, directory::MEDIA_TYPE)
            .body(Bytes::new())
            .map_err(|e| ClientError::Target(e.to_string()))?;
        let resp = self
            .exchange(peer, request, directory::MAX_DIRECTORY_BYTES)
            .await?;
        if resp.status != 200 {
            return Err(ClientError::Status {
                status: resp.status,
                body: serde_json::from_slice(&resp.body).ok(),
            });
        }
        let dir =
            directory::verify_response(destination, &resp.headers, &resp.body, system_now_ms())?;
        if !is_key_of(&dir, &peer) {
            let _ = self.commands.try_send(Command::Disconnect(peer));
            return Err(ClientError::Network(format!(
                "{addr} is {peer}, which is not a current key of {destination}"
            )));
        }
        let _ = self
            .commands
            .send(Command::AddAddress(peer, addr.clone()))
            .await;
        let mut peers = lock(&self.peers);
        if peers.len() >= MAX_PEERS {
            peers.clear();
        }
        peers.insert(destination.clone(), peer);
        Ok(peer)
    }

    async fn dial(&self, addr: &Multiaddr) -> Result<PeerId, ClientError> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(Command::Dial {
                addr: addr.clone(),
                reply,
            })
            .await
            .map_err(|_| ClientError::Network("libp2p node stopped".into()))?;
        match tokio::time::timeout(self.config.connect_timeout, rx).await {
            Err(_) => Err(ClientError::Timeout),
            Ok(Err(_)) => Err(ClientError::Network("libp2p node stopped".into())),
            Ok(Ok(Err(e))) => Err(ClientError::Network(format!("dial {addr}: {e}"))),
            Ok(Ok(Ok(peer))) => Ok(peer),
        }
    }

    /// One request/response on a fresh `/http/1.1` stream.
    async fn exchange(
        &self,
        peer: PeerId,
        request: http::Request<Bytes>,
        limit: usize,
    ) -> Result<FedResponse, ClientError> {
        let work = async {
            let mut sender = self.open(peer).await?;
            let resp = sender
                .send_request(request.map(Full::new))
                .await
                .map_err(|e| ClientError::Network(e.to_string()))?;
            let (parts, body) = resp.into_parts();
            if parts
                .headers
                .get(http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
                .is_some_and(|n| n > limit)
            {
                return Err(ClientError::TooLarge(limit));
            }
            let body = Limited::new(body, limit)
                .collect()
                .await
                .map_err(|_| ClientError::TooLarge(limit))?
                .to_bytes();
            Ok(FedResponse {
                status: parts.status.as_u16(),
                headers: parts
                    .headers
                    .iter()
                    .filter_map(|(n, v)| Some((n.as_str().to_owned(), v.to_str().ok()?.to_owned())))
                    .collect(),
                body,
            })
        };
        tokio::time::timeout(self.config.request_timeout, work)
            .await
            .map_err(|_| ClientError::Timeout)?
    }

    /// Serves inbound `/http/1.1` streams with `router`, at most
    /// `max_inbound_streams` at a time.
    async fn serve(self, mut incoming: libp2p_stream::IncomingStreams, router: axum::Router) {
        let permits = Arc::new(tokio::sync::Semaphore::new(self.config.max_inbound_streams));
        while let Some((peer, stream)) = incoming.next().await {
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                tracing::warn!(%peer, "too many libp2p federation streams: one dropped");
                continue;
            };
            let router = router.clone();
            let node = self.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let refused = Arc::new(AtomicBool::new(false));
                let service = {
                    let refused = refused.clone();
                    let stats = node.stats.clone();
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let router = router.clone();
                        let refused = refused.clone();
                        let stats = stats.clone();
                        async move {
                            let mut req = req.map(axum::body::Body::new);
                            req.extensions_mut().insert(TransportPeer(peer.to_bytes()));
                            let resp = match router.oneshot(req).await {
                                Ok(resp) => resp,
                                Err(never) => match never {},
                            };
                            if matches!(resp.status().as_u16(), 401 | 403) {
                                refused.store(true, Ordering::Relaxed);
                            }
                            stats.inbound.fetch_add(1, Ordering::Relaxed);
                            Ok::<_, Infallible>(resp)
                        }
                    })
                };
                let served = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream.compat()), service);
                match tokio::time::timeout(node.config.stream_timeout, served).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::debug!(%peer, "libp2p http stream: {e}"),
                    Err(_) => tracing::debug!(%peer, "libp2p http stream timed out"),
                }
                // A peer that is not who it signs as, or that we do not federate with,
                // loses its connection.
                if refused.load(Ordering::Relaxed) {
                    tracing::info!(%peer, "closing a libp2p connection after a refused request");
                    // The answer (401/403 and its error code) is written to the stream but
                    // may still sit in the connection's buffers: let it leave first.
                    tokio::time::sleep(REFUSED_LINGER).await;
                    let _ = node.commands.try_send(Command::Disconnect(peer));
                }
            });
        }
    }
}

/// How long a connection whose request was refused stays open after the answer, so the
/// refusal reaches the peer before the connection closes.
const REFUSED_LINGER: Duration = Duration::from_millis(250);

/// How long a server's advertised multiaddrs (or their absence) are trusted before its
/// directory is looked at again.
const LEARNED_TTL_MS: i64 = 3_600_000;

/// Which servers are reached over libp2p, and the node that reaches them. Servers named
/// in the configuration always are; with `auto`, so is any server whose key directory
/// advertises multiaddrs; every other server over HTTP.
#[derive(Debug)]
pub struct Libp2pRoutes {
    node: Libp2pNode,
    configured: HashMap<ServerName, Multiaddr>,
    auto: bool,
    test_mode: bool,
    /// Server → (advertised addresses usable here, when learned, ms).
    learned: Mutex<HashMap<ServerName, (Vec<Multiaddr>, i64)>>,
}

impl Libp2pRoutes {
    pub fn new(
        node: Libp2pNode,
        configured: HashMap<ServerName, Multiaddr>,
        auto: bool,
        test_mode: bool,
    ) -> Self {
        Self {
            node,
            configured,
            auto,
            test_mode,
            learned: Mutex::new(HashMap::new()),
        }
    }

    pub fn node(&self) -> &Libp2pNode {
        &self.node
    }

    /// The address to reach `server` at over libp2p, if any.
    pub fn route(&self, server: &ServerName) -> Option<Multiaddr> {
        if let Some(addr) = self.configured.get(server) {
            return Some(addr.clone());
        }
        if !self.auto {
            return None;
        }
        lock(&self.learned)
            .get(server)
            .and_then(|(addrs, _)| addrs.first().cloned())
    }

    /// True when `server`'s directory should be looked at for multiaddrs before sending
    /// (auto mode, not configured, not looked at within the last hour). Marks it looked at.
    pub fn should_look_up(&self, server: &ServerName, now_ms: i64) -> bool {
        if !self.auto || self.configured.contains_key(server) {
            return false;
        }
        let mut learned = lock(&self.learned);
        if learned
            .get(server)
            .is_some_and(|(_, at)| now_ms - at < LEARNED_TTL_MS)
        {
            return false;
        }
        if learned.len() >= MAX_PEERS {
            learned.clear();
        }
        let addrs = learned.remove(server).map(|(a, _)| a).unwrap_or_default();
        learned.insert(server.clone(), (addrs, now_ms));
        true
    }

    /// Remembers the multiaddrs `server`'s verified directory advertises.
    pub fn learn(&self, server: &ServerName, dir: &VerifiedDirectory, now_ms: i64) {
        if !self.auto || self.configured.contains_key(server) {
            return;
        }
        let addrs = usable_multiaddrs(&dir.multiaddrs, self.test_mode);
        let mut learned = lock(&self.learned);
        if learned.len() >= MAX_PEERS && !learned.contains_key(server) {
            learned.clear();
        }
        learned.insert(server.clone(), (addrs, now_ms));
    }
}

/// True when `peer` is the PeerId of one of `dir`'s current keys.
pub fn is_key_of(dir: &VerifiedDirectory, peer: &PeerId) -> bool {
    let peer = peer.to_bytes();
    dir.keys
        .iter()
        .any(|k| k.key.peer_id_bytes().as_slice() == peer.as_slice())
}

/// Parses advertised multiaddrs, keeping those a node may dial: TCP over IP or DNS, and
/// outside test mode no private or loopback IP.
pub fn usable_multiaddrs(advertised: &[String], test_mode: bool) -> Vec<Multiaddr> {
    advertised
        .iter()
        .filter_map(|s| s.parse::<Multiaddr>().ok())
        .filter(|addr| {
            let mut tcp = false;
            let mut host_ok = false;
            for p in addr.iter() {
                match p {
                    Protocol::Ip4(ip) => host_ok = test_mode || is_public(ip.into()),
                    Protocol::Ip6(ip) => host_ok = test_mode || is_public(ip.into()),
                    Protocol::Dns(_) | Protocol::Dns4(_) | Protocol::Dns6(_) => host_ok = true,
                    Protocol::Tcp(_) => tcp = true,
                    Protocol::P2p(_) => {}
                    _ => return false,
                }
            }
            tcp && host_ok
        })
        .collect()
}

/// The swarm's task: runs it, answers dials, adds addresses, closes connections.
async fn drive(
    mut swarm: libp2p::Swarm<Behaviour>,
    mut commands: mpsc::Receiver<Command>,
    listening: Arc<Mutex<Vec<Multiaddr>>>,
) {
    let mut dials: HashMap<ConnectionId, oneshot::Sender<Result<PeerId, String>>> = HashMap::new();
    loop {
        tokio::select! {
            command = commands.recv() => match command {
                None => return,
                Some(Command::Dial { addr, reply }) => {
                    let opts = DialOpts::unknown_peer_id().address(addr).build();
                    let id = opts.connection_id();
                    match swarm.dial(opts) {
                        Ok(()) => {
                            dials.retain(|_, r| !r.is_closed());
                            dials.insert(id, reply);
                        }
                        Err(e) => {
                            let _ = reply.send(Err(e.to_string()));
                        }
                    }
                }
                Some(Command::AddAddress(peer, addr)) => {
                    swarm.add_peer_address(peer, addr);
                }
                Some(Command::Disconnect(peer)) => {
                    let _ = swarm.disconnect_peer_id(peer);
                }
            },
            event = swarm.select_next_some() => match event {
                SwarmEvent::ConnectionEstablished { peer_id, connection_id, .. } => {
                    if let Some(reply) = dials.remove(&connection_id) {
                        let _ = reply.send(Ok(peer_id));
                    }
                }
                SwarmEvent::OutgoingConnectionError { connection_id, error, .. } => {
                    if let Some(reply) = dials.remove(&connection_id) {
                        let _ = reply.send(Err(error.to_string()));
                    }
                }
                SwarmEvent::NewListenAddr { address, .. } => {
                    let mut l = lock(&listening);
                    if !l.contains(&address) && l.len() < 64 {
                        l.push(address);
                    }
                }
                SwarmEvent::ExpiredListenAddr { address, .. } => {
                    lock(&listening).retain(|a| a != &address);
                }
                _ => {}
            },
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multiaddr_filter() {
        let addrs = [
            "/ip4/127.0.0.2/tcp/9000".to_owned(),
            "/ip4/1.2.3.4/tcp/9000".to_owned(),
            "/dns4/chat.example.org/tcp/9000".to_owned(),
            "/ip4/1.2.3.4/udp/9000/quic-v1".to_owned(),
            "not a multiaddr".to_owned(),
        ];
        let prod: Vec<String> = usable_multiaddrs(&addrs, false)
            .iter()
            .map(|a| a.to_string())
            .collect();
        assert_eq!(
            prod,
            ["/ip4/1.2.3.4/tcp/9000", "/dns4/chat.example.org/tcp/9000"]
        );
        assert_eq!(usable_multiaddrs(&addrs, true).len(), 3);
    }

    #[test]
    fn peer_id_is_the_server_key() {
        let key = ServerSigningKey::from_seed(&[7; 32]);
        let mut seed = *key.to_seed();
        let kp = libp2p::identity::Keypair::ed25519_from_bytes(&mut seed).unwrap();
        let peer = kp.public().to_peer_id();
        assert_eq!(peer.to_bytes(), key.public().peer_id_bytes().to_vec());
        assert_eq!(peer.to_base58(), key.public().peer_id_base58());
    }
}
