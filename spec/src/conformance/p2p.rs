//! The libp2p transport (federation.md FL1, FL2).
//!
//! The suite finds the server's libp2p addresses where FL1 says a server advertises
//! them (`parley_multiaddrs` in its key directory) and dials one as a libp2p peer of its
//! own: TCP + noise + yamux, identify and ping, and raw `/http/1.1` streams, on which it
//! writes the signed HTTP/1.1 request bytes itself and reads the answer back byte by
//! byte. It is built on the libp2p crates (the workspace's version), not on
//! `parley-federation`'s transport, so the server's end is checked against the text,
//! not against the same code.

use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use libp2p::futures::{AsyncReadExt as _, AsyncWriteExt as _, StreamExt as _};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, PeerId, StreamProtocol, identify, multiaddr::Protocol, noise, ping};
use libp2p::{tcp, yamux};
use parley_client_api::http::fill;
use parley_federation::ServerName;
use parley_federation::directory::{self, VerifiedDirectory};
use reqwest::Method;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::net::{Ctx, Peer, now_ms, verify_directory};

/// The stream protocol federation requests travel on (libp2p/specs `http`).
const HTTP: StreamProtocol = StreamProtocol::new("/http/1.1");
/// Longest wait for one step (dial, identify, ping, an answer, a close).
const STEP: Duration = Duration::from_secs(15);
/// Largest answer read from a stream.
const MAX_ANSWER: usize = 1 << 20;

#[derive(NetworkBehaviour)]
struct Behaviour {
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    stream: libp2p_stream::Behaviour,
}

/// What the swarm saw, as the checks need it.
#[derive(Debug, Clone)]
enum Seen {
    Connected(PeerId),
    DialFailed(String),
    Identified(PeerId, Box<identify::Info>),
    Pinged(PeerId, Result<Duration, String>),
    Closed(PeerId),
}

/// One libp2p connection of the suite to the server under test.
struct Conn {
    /// The server's PeerId, as the noise handshake proved it.
    peer: PeerId,
    control: libp2p_stream::Control,
    events: mpsc::Receiver<Seen>,
    /// Every event so far, in order.
    seen: Vec<Seen>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Conn {
    /// Dials `addr` as a node whose identity is the ed25519 key with `seed`.
    async fn dial(seed: &[u8; 32], addr: &Multiaddr) -> Result<Self> {
        let mut seed = *seed;
        let keypair = libp2p::identity::Keypair::ed25519_from_bytes(&mut seed)?;
        let mut swarm = libp2p::SwarmBuilder::with_existing_identity(keypair)
            .with_tokio()
            .with_tcp(
                tcp::Config::default().nodelay(true),
                noise::Config::new,
                yamux::Config::default,
            )?
            .with_behaviour(|key| Behaviour {
                identify: identify::Behaviour::new(identify::Config::new(
                    "/parley-conformance/1".into(),
                    key.public(),
                )),
                ping: ping::Behaviour::new(ping::Config::new()),
                stream: libp2p_stream::Behaviour::new(),
            })?
            .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(120)))
            .build();
        let control = swarm.behaviour().stream.new_control();
        swarm
            .dial(addr.clone())
            .with_context(|| format!("dialing {addr}"))?;
        let (tx, events) = mpsc::channel(256);
        let task = tokio::spawn(async move {
            loop {
                let seen = match swarm.select_next_some().await {
                    SwarmEvent::ConnectionEstablished { peer_id, .. } => Seen::Connected(peer_id),
                    SwarmEvent::OutgoingConnectionError { error, .. } => {
                        Seen::DialFailed(error.to_string())
                    }
                    SwarmEvent::ConnectionClosed { peer_id, .. } => Seen::Closed(peer_id),
                    SwarmEvent::Behaviour(BehaviourEvent::Identify(
                        identify::Event::Received { peer_id, info, .. },
                    )) => Seen::Identified(peer_id, Box::new(info)),
                    SwarmEvent::Behaviour(BehaviourEvent::Ping(e)) => {
                        Seen::Pinged(e.peer, e.result.map_err(|f| f.to_string()))
                    }
                    _ => continue,
                };
                // A check that stopped listening does not stop the swarm.
                let _ = tx.try_send(seen);
            }
        });
        let mut conn = Self {
            peer: PeerId::random(),
            control,
            events,
            seen: Vec::new(),
            task,
        };
        conn.peer = conn
            .wait_for(&format!("a libp2p connection to {addr}"), |e| match e {
                Seen::Connected(p) => Some(Ok(*p)),
                Seen::DialFailed(why) => Some(Err(why.clone())),
                _ => None,
            })
            .await?
            .map_err(|why| anyhow::anyhow!("dialing {addr} (tcp, noise, yamux): {why}"))?;
        Ok(conn)
    }

    /// The first event (seen before or within [`STEP`]) for which `pick` says something.
    async fn wait_for<T>(&mut self, what: &str, pick: impl Fn(&Seen) -> Option<T>) -> Result<T> {
        if let Some(t) = self.seen.iter().find_map(&pick) {
            return Ok(t);
        }
        let deadline = tokio::time::Instant::now() + STEP;
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(e)) => {
                    let got = pick(&e);
                    self.seen.push(e);
                    if let Some(t) = got {
                        return Ok(t);
                    }
                }
                Ok(None) => bail!("the suite's libp2p node stopped before {what}"),
                Err(_) => bail!("no {what} within {STEP:?}; saw {:?}", self.seen),
            }
        }
    }

    /// Writes `request` (whole HTTP/1.1 request bytes) on a fresh `/http/1.1` stream to
    /// the server and reads its answer.
    async fn exchange(&mut self, request: &[u8]) -> Result<Answer> {
        let mut stream = tokio::time::timeout(STEP, self.control.open_stream(self.peer, HTTP))
            .await
            .context("opening an /http/1.1 stream took too long")?
            .context("opening an /http/1.1 stream")?;
        let work = async {
            stream.write_all(request).await?;
            stream.flush().await?;
            let answer = read_answer(&mut stream).await?;
            // Done with the stream (the server may close the connection after a 401).
            let _ = stream.close().await;
            Ok(answer)
        };
        tokio::time::timeout(STEP, work)
            .await
            .context("no answer on the /http/1.1 stream")?
    }
}

/// An HTTP/1.1 answer read from a stream.
#[derive(Debug)]
struct Answer {
    status: u16,
    /// Header names in lower case.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Fails unless the status is `status` (and, with `code`, the error code is `code`).
    fn expect(&self, status: u16, code: Option<&str>) -> Result<()> {
        let body = self.json();
        let got = body.get("error").and_then(Value::as_str);
        ensure!(
            self.status == status && (code.is_none() || got == code),
            "expected {status}{}, got {} {}",
            code.map(|c| format!(" {c}")).unwrap_or_default(),
            self.status,
            String::from_utf8_lossy(&self.body)
                .chars()
                .take(300)
                .collect::<String>()
        );
        Ok(())
    }
}

/// Reads one HTTP/1.1 response: the head, then a `Content-Length` body, a chunked body,
/// or (with neither) everything until the server closes the stream.
async fn read_answer(stream: &mut libp2p::Stream) -> Result<Answer> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i;
        }
        let n = stream.read(&mut chunk).await?;
        ensure!(n > 0, "the stream ended inside the answer's head");
        buf.extend_from_slice(&chunk[..n]);
        ensure!(
            buf.len() <= MAX_ANSWER,
            "an answer head over {MAX_ANSWER} bytes"
        );
    };
    let head = std::str::from_utf8(&buf[..head_end]).context("an answer head not in UTF-8")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let mut parts = status_line.splitn(3, ' ');
    ensure!(
        parts.next() == Some("HTTP/1.1"),
        "not an HTTP/1.1 answer: {status_line:?}"
    );
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no status in {status_line:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let mut body = buf[head_end + 4..].to_vec();
    let length = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .map(|(_, v)| v.parse::<usize>())
        .transpose()
        .context("a bad Content-Length")?;
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.to_ascii_lowercase().contains("chunked"));
    let body = loop {
        match (length, chunked) {
            (Some(len), _) if body.len() >= len => {
                body.truncate(len);
                break body;
            }
            (None, true) => {
                if let Some(done) = dechunk(&body)? {
                    break done;
                }
            }
            _ => {}
        }
        ensure!(
            body.len() <= MAX_ANSWER && length.is_none_or(|l| l <= MAX_ANSWER),
            "an answer over {MAX_ANSWER} bytes"
        );
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            ensure!(
                length.is_none() && !chunked,
                "the stream ended inside the answer's body"
            );
            break body;
        }
        body.extend_from_slice(&chunk[..n]);
    };
    Ok(Answer {
        status,
        headers,
        body,
    })
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The body of a `Transfer-Encoding: chunked` answer; `None` while it is incomplete.
fn dechunk(mut raw: &[u8]) -> Result<Option<Vec<u8>>> {
    let mut out = Vec::new();
    loop {
        let Some(line_end) = find(raw, b"\r\n") else {
            return Ok(None);
        };
        let size_text = std::str::from_utf8(&raw[..line_end])?;
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .with_context(|| format!("a bad chunk size {size_text:?}"))?;
        raw = &raw[line_end + 2..];
        if size == 0 {
            return Ok(Some(out));
        }
        if raw.len() < size + 2 {
            return Ok(None);
        }
        out.extend_from_slice(&raw[..size]);
        raw = &raw[size + 2..];
    }
}

/// The bytes of an HTTP/1.1 request to `destination` with the extra (signature) header
/// fields and `body`: the request a peer sends over HTTP. One request per stream: the
/// suite closes the stream once it has read the answer.
fn request_bytes(
    method: &str,
    destination: &str,
    path: &str,
    extra: &[(String, String)],
    body: &[u8],
) -> Vec<u8> {
    let mut head = format!("{method} {path} HTTP/1.1\r\nhost: {destination}\r\n");
    for (name, value) in extra {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if !body.is_empty() {
        head.push_str("content-type: application/json\r\n");
    }
    head.push_str(&format!("content-length: {}\r\n\r\n", body.len()));
    let mut out = head.into_bytes();
    out.extend_from_slice(body);
    out
}

/// The PeerIds of a directory's current keys, computed with libp2p's own key types.
fn peer_ids(dir: &VerifiedDirectory) -> Vec<PeerId> {
    dir.keys
        .iter()
        .filter_map(|k| libp2p::identity::ed25519::PublicKey::try_from_bytes(k.key.as_bytes()).ok())
        .map(|k| libp2p::identity::PublicKey::from(k).to_peer_id())
        .collect()
}

/// The server's verified key directory (over HTTP) and the first TCP multiaddr it
/// advertises; skips when federation is off or no multiaddr is advertised (libp2p is
/// optional, FL1).
async fn advertised(ctx: &Ctx) -> Result<(VerifiedDirectory, Multiaddr)> {
    let r = ctx.call(Method::GET, directory::PATH, None, None).await?;
    if r.status == 404 {
        return super::skip("federation is off on this server (no key directory)");
    }
    r.expect(200, None)?;
    let name = ServerName::try_from(ctx.server_name().await?)?;
    let dir = verify_directory(&name, &r.headers, &r.bytes)
        .context("the key directory does not verify")?;
    if dir.multiaddrs.is_empty() {
        return super::skip(
            "the server advertises no parley_multiaddrs in its key directory (libp2p off)",
        );
    }
    let addr = dir
        .multiaddrs
        .iter()
        .filter_map(|s| s.parse::<Multiaddr>().ok())
        .find(|a| a.iter().any(|p| matches!(p, Protocol::Tcp(_))))
        .with_context(|| {
            format!(
                "none of the advertised multiaddrs {:?} is a TCP address",
                dir.multiaddrs
            )
        })?;
    Ok((dir, addr))
}

/// A path the suite may GET signed (a fresh local user's devices) and that user's device.
async fn devices_path(ctx: &Ctx) -> Result<(String, String)> {
    let u = ctx.register().await?;
    Ok((
        fill(
            parley_federation::api::keys::user_devices::PATH,
            &[("user_id", &u.user_id)],
        ),
        u.device_id,
    ))
}

/// FL1: the suite's peer, dialing as its own key, is answered over libp2p as over HTTP.
pub(super) async fn accepted(ctx: &Ctx) -> Result<()> {
    let (dir, addr) = advertised(ctx).await?;
    let peer = ctx.peer().await?;
    let dest = ctx.server_name().await?.to_owned();
    let (path, device) = devices_path(ctx).await?;
    let seed = peer.current_keys()[0].seed;
    let mut conn = Conn::dial(&seed, &addr).await?;
    let server = conn.peer;
    ensure!(
        peer_ids(&dir).contains(&server),
        "the connection's PeerId {server} is not a current key of the server's directory"
    );
    // identify: the server names itself by that key and offers /http/1.1.
    let info = conn
        .wait_for("identify information from the server", |e| match e {
            Seen::Identified(p, info) if *p == server => Some(info.clone()),
            _ => None,
        })
        .await?;
    ensure!(
        info.public_key.to_peer_id() == server,
        "identify names the key of {}, the connection is {server}",
        info.public_key.to_peer_id()
    );
    ensure!(
        info.protocols.contains(&HTTP),
        "identify does not list {HTTP}: {:?}",
        info.protocols
    );
    // ping answers.
    conn.wait_for("a ping answered by the server", |e| match e {
        Seen::Pinged(p, Ok(_)) if *p == server => Some(()),
        _ => None,
    })
    .await?;
    // The key directory over the stream (unsigned, as a sender proves the peer: FL2).
    let raw = request_bytes(
        "GET",
        &dest,
        directory::PATH,
        &[("accept".to_owned(), directory::MEDIA_TYPE.to_owned())],
        b"",
    );
    let a = conn.exchange(&raw).await.context("GET the key directory")?;
    a.expect(200, None)
        .context("the key directory over libp2p")?;
    let over_p2p = directory::verify_response(
        &ServerName::try_from(dest.as_str())?,
        &a.headers,
        &a.body,
        now_ms(),
    )
    .context("the key directory served over libp2p does not verify")?;
    ensure!(
        peer_ids(&over_p2p).contains(&server),
        "the directory served over libp2p does not list the connection's PeerId"
    );
    // A signed GET: the same answer as over HTTP.
    let h = Peer::sign_now(&peer.signer(), "GET", &dest, &path, b"")?;
    let a = conn
        .exchange(&request_bytes("GET", &dest, &path, &h, b""))
        .await
        .context("a signed GET")?;
    a.expect(200, None)
        .context("a signed GET of a local user's devices over libp2p")?;
    ensure!(
        a.json()["devices"] == json!([device]),
        "devices: {}",
        a.json()
    );
    // A signed PUT with a body (Content-Digest): an empty transaction.
    let txn = format!("conformance-p2p-{}", rand::random::<u64>());
    let tpath = fill(parley_federation::api::send::PATH, &[("txn_id", &txn)]);
    let body = json!({"origin": peer.name.as_str(), "origin_ts": now_ms()})
        .to_string()
        .into_bytes();
    let h = Peer::sign_now(&peer.signer(), "PUT", &dest, &tpath, &body)?;
    let a = conn
        .exchange(&request_bytes("PUT", &dest, &tpath, &h, &body))
        .await
        .context("a signed transaction")?;
    a.expect(200, None)
        .context("a signed empty transaction over libp2p")?;
    ensure!(a.json().is_object(), "a transaction answered {}", a.json());
    Ok(())
}

/// FL2: a request signed with the suite peer's key but carried by a connection whose
/// PeerId is another key is refused `401 peer_mismatch`, and the connection is closed.
pub(super) async fn peer_mismatch(ctx: &Ctx) -> Result<()> {
    let (_, addr) = advertised(ctx).await?;
    let peer = ctx.peer().await?;
    let dest = ctx.server_name().await?.to_owned();
    let (path, _) = devices_path(ctx).await?;
    let stranger: [u8; 32] = rand::random();
    let mut conn = Conn::dial(&stranger, &addr).await?;
    let server = conn.peer;
    let h = Peer::sign_now(&peer.signer(), "GET", &dest, &path, b"")?;
    let a = conn
        .exchange(&request_bytes("GET", &dest, &path, &h, b""))
        .await
        .context("a signed GET over a connection of another key")?;
    a.expect(401, Some("peer_mismatch"))
        .context("a request signed by a key that is not the connection's PeerId")?;
    ensure!(
        a.header("accept-signature").is_some(),
        "a 401 without Accept-Signature"
    );
    conn.wait_for("the server to close the connection after its 401", |e| {
        matches!(e, Seen::Closed(p) if *p == server).then_some(())
    })
    .await?;
    Ok(())
}
