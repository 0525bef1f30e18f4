//! The suite catches faults: a small faulty server — a proxy in front of a real
//! homeserver that breaks one rule — must fail exactly the rules that cite the fault.
//! No fault switch lives in the homeserver itself.

use std::sync::Arc;

use anyhow::{Context, Result, ensure};
use axum::Router;
use axum::body::Bytes;
use axum::extract::ws::{Message as AxMessage, WebSocket, WebSocketUpgrade};
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt, StreamExt};
use parley_spec::conformance::{self, Config};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message as TMessage;

use crate::harness::{Backend, Server};

/// The one rule a proxy breaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// Accepts a request whose signature is forged (answers 200 where the server
    /// refused it with `bad_signature` or `unknown_key`).
    AcceptsForgedSignature,
    /// Accepts a replayed nonce.
    AcceptsReplayedNonce,
    /// Skips a sequence number: answers `seq + 1` for every send after the first.
    SkipsSequenceNumber,
    /// Acknowledges a socket `send` (✓ sent) without storing it.
    AcksBeforeStoring,
    /// Hands out a claimed KeyPackage again: answers every later claim of a user with
    /// the first answer.
    HandsOutKeyPackageTwice,
    /// Keeps trusting a key it once saw verify: accepts a request refused with
    /// `unknown_key` whose `keyid` signed an accepted request before (an expired or
    /// retired key).
    AcceptsRetiredKey,
    /// Never tells a socket that typing stopped (drops `typing: false` frames).
    DropsTypingStop,
    /// Keeps a device's older socket open when the server replaces it (swallows the
    /// `4001` close).
    KeepsReplacedSocket,
    /// Accepts a libp2p request whose connection's PeerId is not the key that signed it:
    /// a libp2p node with the server's own key (so it is the server to a dialer) that
    /// passes each `/http/1.1` stream's bytes to the server's HTTP port, where no PeerId
    /// is compared ([`start_libp2p_proxy`]; the server advertises its address).
    AcceptsMismatchedPeer,
}

struct Proxy {
    upstream: String,
    fault: Fault,
    http: reqwest::Client,
    /// `HandsOutKeyPackageTwice`: the first claim answer per request body.
    claims: std::sync::Mutex<std::collections::HashMap<Vec<u8>, Vec<u8>>>,
    /// `AcceptsRetiredKey`: key ids that signed an accepted federation request.
    seen_keys: std::sync::Mutex<std::collections::HashSet<String>>,
}

/// Starts the faulty proxy in front of `upstream`; its base URL.
async fn start_proxy(upstream: &str, fault: Fault) -> Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let state = Arc::new(Proxy {
        upstream: upstream.to_owned(),
        fault,
        http: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()?,
        claims: Default::default(),
        seen_keys: Default::default(),
    });
    let app = Router::new()
        .route("/v1/ws", axum::routing::get(socket))
        .fallback(forward)
        .with_state(state);
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(format!("http://{addr}"))
}

async fn forward(
    State(p): State<Arc<Proxy>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match forward_inner(&p, method, uri, headers, body).await {
        Ok(r) => r,
        Err(e) => (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
    }
}

async fn forward_inner(
    p: &Proxy,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response> {
    let path = uri.path_and_query().map(|x| x.as_str()).unwrap_or("/");
    let claim = p.fault == Fault::HandsOutKeyPackageTwice && uri.path() == "/v1/keys/claim";
    if claim && let Some(first) = lock(&p.claims).get(body.as_ref()).cloned() {
        return Ok((
            StatusCode::OK,
            [("content-type", "application/json")],
            first,
        )
            .into_response());
    }
    let keyid = headers
        .get("signature-input")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split("keyid=\"").nth(1))
        .and_then(|v| v.split('"').next())
        .map(str::to_owned);
    let mut req = p
        .http
        .request(method.clone(), format!("{}{path}", p.upstream));
    for (name, value) in &headers {
        if name != "host" && name != "content-length" {
            req = req.header(name, value);
        }
    }
    let resp = req.body(body.clone()).send().await?;
    let status = resp.status();
    let mut out_headers = HeaderMap::new();
    for (name, value) in resp.headers() {
        if name != "content-length" && name != "transfer-encoding" && name != "connection" {
            out_headers.insert(name.clone(), value.clone());
        }
    }
    let mut bytes = resp.bytes().await?.to_vec();
    let mut status = StatusCode::from_u16(status.as_u16())?;
    let code = serde_json::from_slice::<Value>(&bytes)
        .ok()
        .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_owned));
    let fed = uri.path().starts_with("/_parley/fed/");
    match p.fault {
        Fault::AcceptsForgedSignature
            if fed && matches!(code.as_deref(), Some("bad_signature" | "unknown_key")) =>
        {
            status = StatusCode::OK;
            bytes = br#"{"user_id":"@forged:accepted","devices":[]}"#.to_vec();
            out_headers.remove("accept-signature");
        }
        Fault::AcceptsReplayedNonce if fed && code.as_deref() == Some("replayed_nonce") => {
            status = StatusCode::OK;
            bytes = br#"{"user_id":"@replayed:accepted","devices":[]}"#.to_vec();
            out_headers.remove("accept-signature");
        }
        Fault::SkipsSequenceNumber
            if method == Method::POST
                && uri.path().ends_with("/events")
                && status == StatusCode::CREATED =>
        {
            let mut ack: Value = serde_json::from_slice(&bytes)?;
            if let Some(seq) = ack["seq"].as_i64().filter(|s| *s >= 2) {
                ack["seq"] = json!(seq + 1);
            }
            bytes = serde_json::to_vec(&ack)?;
        }
        Fault::HandsOutKeyPackageTwice if claim && status == StatusCode::OK => {
            lock(&p.claims).insert(body.to_vec(), bytes.clone());
        }
        Fault::AcceptsRetiredKey if fed => {
            if let Some(kid) = keyid {
                let mut seen = lock(&p.seen_keys);
                if status.is_success() {
                    seen.insert(kid);
                } else if code.as_deref() == Some("unknown_key") && seen.contains(&kid) {
                    status = StatusCode::OK;
                    bytes = br#"{"user_id":"@retired:accepted","devices":[]}"#.to_vec();
                    out_headers.remove("accept-signature");
                }
            }
        }
        _ => {}
    }
    Ok((status, out_headers, bytes).into_response())
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

async fn socket(
    State(p): State<Arc<Proxy>>,
    RawQuery(query): RawQuery,
    uri: Uri,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    let Ok(ws) = ws else {
        // Not an upgrade: the server answers it as it would.
        return forward(State(p), Method::GET, uri, headers, Bytes::new()).await;
    };
    let url = format!(
        "{}/v1/ws?{}",
        p.upstream.replacen("http", "ws", 1),
        query.unwrap_or_default()
    );
    let upstream = match tokio_tungstenite::connect_async(url).await {
        Ok((s, _)) => s,
        Err(e) => return (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
    };
    let fault = p.fault;
    ws.on_upgrade(move |client| pump(client, upstream, fault))
}

async fn pump(
    client: WebSocket,
    upstream: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    fault: Fault,
) {
    let (mut up_tx, mut up_rx) = upstream.split();
    let (client_tx, mut client_rx) = client.split();
    let client_tx = Arc::new(tokio::sync::Mutex::new(client_tx));
    let down = {
        let client_tx = client_tx.clone();
        tokio::spawn(async move {
            while let Some(Ok(msg)) = up_rx.next().await {
                let out = match msg {
                    TMessage::Text(t) => {
                        if fault == Fault::DropsTypingStop {
                            let frame: Value =
                                serde_json::from_str(t.as_str()).unwrap_or(Value::Null);
                            if frame["type"] == "typing" && frame["typing"] == false {
                                continue;
                            }
                        }
                        AxMessage::Text(t.as_str().into())
                    }
                    TMessage::Close(frame) => {
                        let code = frame.as_ref().map(|f| u16::from(f.code));
                        if fault == Fault::KeepsReplacedSocket && code == Some(4001) {
                            // The older socket stays open, silent.
                            return;
                        }
                        let close = frame.map(|f| axum::extract::ws::CloseFrame {
                            code: u16::from(f.code),
                            reason: f.reason.as_str().into(),
                        });
                        let _ = client_tx.lock().await.send(AxMessage::Close(close)).await;
                        break;
                    }
                    _ => continue,
                };
                if client_tx.lock().await.send(out).await.is_err() {
                    break;
                }
            }
            let _ = client_tx.lock().await.close().await;
        })
    };
    while let Some(Ok(msg)) = client_rx.next().await {
        let AxMessage::Text(t) = msg else {
            if matches!(msg, AxMessage::Close(_)) {
                break;
            }
            continue;
        };
        if fault == Fault::AcksBeforeStoring {
            let frame: Value = serde_json::from_str(t.as_str()).unwrap_or(Value::Null);
            if frame["type"] == "send" {
                let sent = json!({"type": "sent", "chat_id": frame["chat_id"],
                    "client_msg_id": frame["client_msg_id"], "seq": 1, "ts": 1,
                    "duplicate": false});
                let _ = client_tx
                    .lock()
                    .await
                    .send(AxMessage::Text(sent.to_string().into()))
                    .await;
                continue;
            }
        }
        if up_tx.send(TMessage::text(t.as_str())).await.is_err() {
            break;
        }
    }
    let _ = up_tx.close().await;
    down.abort();
}

/// The `/http/1.1` stream protocol of libp2p federation.
const HTTP_STREAM: libp2p::StreamProtocol = libp2p::StreamProtocol::new("/http/1.1");

#[derive(libp2p::swarm::NetworkBehaviour)]
struct P2pBehaviour {
    identify: libp2p::identify::Behaviour,
    ping: libp2p::ping::Behaviour,
    stream: libp2p_stream::Behaviour,
}

/// [`Fault::AcceptsMismatchedPeer`]'s libp2p node: identity `key` (the server's), listening
/// on `listen`, piping every `/http/1.1` stream to `upstream` (the server's HTTP port).
async fn start_libp2p_proxy(
    key: &parley_federation::keys::ServerSigningKey,
    listen: libp2p::Multiaddr,
    upstream: std::net::SocketAddr,
) -> Result<()> {
    use libp2p::futures::StreamExt as _;
    use tokio_util::compat::FuturesAsyncReadCompatExt as _;
    let mut seed = *key.to_seed();
    let keypair = libp2p::identity::Keypair::ed25519_from_bytes(&mut seed)?;
    let mut swarm = libp2p::SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_tcp(
            libp2p::tcp::Config::default(),
            libp2p::noise::Config::new,
            libp2p::yamux::Config::default,
        )?
        .with_behaviour(|key| P2pBehaviour {
            identify: libp2p::identify::Behaviour::new(libp2p::identify::Config::new(
                "/parley-fed/1".into(),
                key.public(),
            )),
            ping: libp2p::ping::Behaviour::new(libp2p::ping::Config::new()),
            stream: libp2p_stream::Behaviour::new(),
        })?
        .with_swarm_config(|c| c.with_idle_connection_timeout(std::time::Duration::from_secs(60)))
        .build();
    let mut incoming = swarm
        .behaviour()
        .stream
        .new_control()
        .accept(HTTP_STREAM)
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    swarm.listen_on(listen)?;
    loop {
        if let libp2p::swarm::SwarmEvent::NewListenAddr { .. } = swarm.select_next_some().await {
            break;
        }
    }
    tokio::spawn(async move {
        loop {
            swarm.select_next_some().await;
        }
    });
    tokio::spawn(async move {
        while let Some((_peer, stream)) = incoming.next().await {
            tokio::spawn(async move {
                let Ok(mut tcp) = tokio::net::TcpStream::connect(upstream).await else {
                    return;
                };
                let mut stream = stream.compat();
                let _ = tokio::io::copy_bidirectional(&mut stream, &mut tcp).await;
            });
        }
    });
    Ok(())
}

/// The ids of the rules that fail through the proxy, and the report's lines.
async fn failures_through(
    upstream: &str,
    fault: Fault,
) -> Result<(Vec<&'static str>, Vec<String>)> {
    // The libp2p fault's proxy is already in front of its server's libp2p address.
    let proxy = if fault == Fault::AcceptsMismatchedPeer {
        upstream.to_owned()
    } else {
        start_proxy(upstream, fault).await?
    };
    let report = conformance::run(&Config::new(vec![proxy]), |_| {})
        .await
        .with_context(|| format!("{fault:?}"))?;
    let unexpected_skips: Vec<_> = report
        .results
        .iter()
        .filter(|r| matches!(r.outcome, conformance::Outcome::Skip(_)) && r.rule.id != "FX1")
        .map(|r| r.rule.id)
        .collect();
    ensure!(
        unexpected_skips.is_empty(),
        "{fault:?}: skipped {unexpected_skips:?}"
    );
    Ok((report.failed_ids(), report.lines()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_fault_fails_exactly_its_rule() {
    let server = Server::start(Backend::Sqlite, "127.0.0.4").await.unwrap();
    // A server that advertises a faulty libp2p node's address instead of its own.
    let p2p_addr = format!(
        "/ip4/127.0.0.4/tcp/{}",
        parley_testkit::free_port("127.0.0.4")
    );
    let p2p_server = Server::start_advertising(Backend::Sqlite, "127.0.0.4", Some(&p2p_addr))
        .await
        .unwrap();
    start_libp2p_proxy(
        &p2p_server.signing_key().unwrap(),
        p2p_addr.parse().unwrap(),
        p2p_server
            .base
            .trim_start_matches("http://")
            .parse()
            .unwrap(),
    )
    .await
    .unwrap();
    let cases = [
        // Accepting a key the origin does not publish also accepts expired and retired
        // ones.
        (Fault::AcceptsForgedSignature, vec!["FK3", "FS3", "FK4"]),
        (Fault::AcceptsReplayedNonce, vec!["FS4"]),
        (Fault::SkipsSequenceNumber, vec!["CH2"]),
        (Fault::AcksBeforeStoring, vec!["WS3"]),
        (Fault::HandsOutKeyPackageTwice, vec!["KP2"]),
        (Fault::AcceptsRetiredKey, vec!["FK3", "FK4"]),
        (Fault::DropsTypingStop, vec!["T3"]),
        (Fault::KeepsReplacedSocket, vec!["WS6"]),
        (Fault::AcceptsMismatchedPeer, vec!["FL2"]),
    ];
    let runs = cases.iter().map(|(fault, _)| {
        let upstream = if *fault == Fault::AcceptsMismatchedPeer {
            &p2p_server.base
        } else {
            &server.base
        };
        failures_through(upstream, *fault)
    });
    let results = futures_util::future::join_all(runs).await;
    for ((fault, expected), got) in cases.iter().zip(results) {
        let (got, lines) = got.unwrap();
        assert_eq!(
            &got,
            expected,
            "{fault:?} failed {got:?}:\n{}",
            lines
                .iter()
                .filter(|l| l.starts_with("FAIL"))
                .cloned()
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}
