//! Federation over libp2p: the same signed requests as over HTTP, on `/http/1.1` streams
//! of a libp2p connection whose PeerId is the server's key. Three real homeservers:
//! A ↔ B over libp2p (A names B in its config; B finds A's multiaddrs in A's key
//! directory), B ↔ C and A ↔ C over HTTP (C has no libp2p).

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use parley_client_api::ChatId;
use reqwest::StatusCode;
use serde_json::json;

use crate::federation_chats::{events, texts, wait_listed};
use crate::harness::{Backend, Server, User};

crate::on_both_backends!(
    a_group_spans_libp2p_and_http_and_survives_a_restart,
    a_libp2p_peer_must_be_the_key_that_signs,
);

/// `[federation.libp2p]` listening on `ip:port`, plus `extra` lines.
fn libp2p_toml(ip: &str, port: u16, extra: &str) -> String {
    format!("[federation.libp2p]\nlisten = [\"/ip4/{ip}/tcp/{port}\"]\n{extra}\n")
}

const LIBP2P_OUT: &str = "parley_federation_libp2p_requests_total{direction=\"outbound\"}";
const LIBP2P_IN: &str = "parley_federation_libp2p_requests_total{direction=\"inbound\"}";

/// Sends; returns `(seq, pending)`.
async fn send(server: &Server, me: &User, chat: &ChatId, id: &str) -> Result<(i64, bool)> {
    let (status, body) = server.send(me, chat, id, id.as_bytes()).await?;
    ensure!(status.is_success(), "send {id}: {status} {body}");
    Ok((
        body["seq"].as_i64().context("seq")?,
        body["pending"].as_bool().unwrap_or(false),
    ))
}

async fn a_group_spans_libp2p_and_http_and_survives_a_restart(backend: Backend) -> Result<()> {
    let b_port = parley_testkit::free_port("127.0.0.2");
    let a_port = parley_testkit::free_port("127.0.0.1");
    let mut b =
        Server::start_peer(backend, "127.0.0.2", &libp2p_toml("127.0.0.2", b_port, "")).await?;
    let peers = format!(
        "auto = false\npeers = {{ \"{}\" = \"/ip4/127.0.0.2/tcp/{b_port}\" }}",
        b.name()
    );
    let a = Server::start_peer(
        backend,
        "127.0.0.1",
        &libp2p_toml("127.0.0.1", a_port, &peers),
    )
    .await?;
    let c = Server::start_peer(backend, "127.0.0.3", "").await?;

    // B's key directory advertises its libp2p address (how A could have found it).
    let dir: serde_json::Value = reqwest::get(format!(
        "http://{}/.well-known/http-message-signatures-directory",
        b.name()
    ))
    .await?
    .json()
    .await?;
    ensure!(
        dir["parley_multiaddrs"] == json!([format!("/ip4/127.0.0.2/tcp/{b_port}")]),
        "{dir}"
    );

    let alice = a.register("alice").await?;
    let bob = b.register("bob").await?;
    let carol = c.register("carol").await?;
    let (status, body) = a
        .post(
            "/v1/chats",
            Some(&alice.token),
            json!({"members": [bob.user_id.as_str(), carol.user_id.as_str()], "name": "p2p"}),
        )
        .await?;
    ensure!(status.is_success(), "{status} {body}");
    let chat: ChatId = serde_json::from_value(body["chat_id"].clone())?;
    wait_listed(&b, &bob, &chat).await?;
    wait_listed(&c, &carol, &chat).await?;

    assert_eq!(send(&a, &alice, &chat, "a1").await?, (1, false));
    assert_eq!(send(&b, &bob, &chat, "b1").await?, (2, false));
    assert_eq!(send(&c, &carol, &chat, "c1").await?, (3, false));
    // Carol's inbox is replayed on connect (then the live stream).
    let mut carol_ws = c.connect(&carol).await?;
    assert_eq!(
        texts(&events(&mut carol_ws, 2).await?),
        [(1, "a1".into()), (2, "b1".into())]
    );

    // A ↔ B went over libp2p, both ways; C never spoke libp2p.
    ensure!(
        a.metric(LIBP2P_OUT).await? > 0.0,
        "A sent nothing over libp2p"
    );
    ensure!(
        b.metric(LIBP2P_IN).await? > 0.0,
        "B received nothing over libp2p"
    );
    ensure!(
        b.metric(LIBP2P_OUT).await? > 0.0,
        "B sent nothing over libp2p"
    );
    ensure!(c.metric(LIBP2P_OUT).await? + c.metric(LIBP2P_IN).await? == 0.0);

    // B dies; A and C go on. B comes back on the same addresses: nothing lost, in order.
    b.stop_hard().await?;
    assert_eq!(send(&a, &alice, &chat, "a2").await?, (4, false));
    assert_eq!(send(&c, &carol, &chat, "c2").await?, (5, false));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    b.restart().await?;
    let mut bob_ws = b.connect(&bob).await?;
    let got = events(&mut bob_ws, 4).await?;
    assert_eq!(
        texts(&got),
        [
            (1, "a1".into()),
            (3, "c1".into()),
            (4, "a2".into()),
            (5, "c2".into())
        ]
    );
    // B → A over libp2p again after the restart.
    assert_eq!(send(&b, &bob, &chat, "b2").await?, (6, false));
    let mut alice_ws = a.connect(&alice).await?;
    let got = events(&mut alice_ws, 4).await?;
    assert_eq!(
        texts(&got),
        [
            (2, "b1".into()),
            (3, "c1".into()),
            (5, "c2".into()),
            (6, "b2".into())
        ]
    );
    assert_eq!(
        texts(&events(&mut carol_ws, 2).await?),
        [(4, "a2".into()), (6, "b2".into())]
    );
    ensure!(
        b.metric(LIBP2P_OUT).await? > 0.0,
        "B (restarted) sent nothing over libp2p"
    );
    Ok(())
}

/// A libp2p node with identity `identity`, sending requests signed as `signer`'s
/// server to `to` at `addr`.
async fn libp2p_client(
    signer: &Server,
    identity: &parley_federation::ServerSigningKey,
    to: &Server,
    addr: &str,
) -> Result<parley_federation::transport::http::FederationClient> {
    use parley_federation::transport::http::{ClientConfig, FederationClient};
    use parley_federation::transport::libp2p::{Libp2pConfig, Libp2pNode, Libp2pRoutes};
    use parley_federation::{RequestSigner, ServerName, ServerSigningKey};
    let pem = std::fs::read_to_string(signer.data_dir().join("federation.key"))?;
    let key = ServerSigningKey::from_pkcs8_pem(&pem)?;
    let node = Libp2pNode::start(identity, Libp2pConfig::default(), axum::Router::new()).await?;
    let routes = Libp2pRoutes::new(
        node,
        [(ServerName::try_from(to.name())?, addr.parse()?)].into(),
        false,
        true,
    );
    Ok(FederationClient::new(
        RequestSigner::new(ServerName::try_from(signer.name())?, key),
        ClientConfig {
            insecure_test_mode: true,
            ..ClientConfig::default()
        },
    )?
    .with_libp2p(Arc::new(routes)))
}

async fn a_libp2p_peer_must_be_the_key_that_signs(backend: Backend) -> Result<()> {
    use parley_federation::api::{self, send};
    let b_port = parley_testkit::free_port("127.0.0.2");
    let b = Server::start_peer(backend, "127.0.0.2", &libp2p_toml("127.0.0.2", b_port, "")).await?;
    let a = Server::start_peer(backend, "127.0.0.1", "").await?;
    let addr = format!("/ip4/127.0.0.2/tcp/{b_port}");
    let to = parley_federation::ServerName::try_from(b.name())?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis();
    let empty = serde_json::to_vec(&json!({"origin": a.name(), "origin_ts": now}))?;
    let path = |txn: &str| api::fill(send::PATH, &[("txn_id", txn)]);

    // Signed with A's key, but carried by a connection whose PeerId is another key:
    // refused, and the connection is closed.
    let stranger = parley_federation::ServerSigningKey::generate()?;
    let impostor = libp2p_client(&a, &stranger, &b, &addr).await?;
    let resp = impostor
        .send(&to, send::METHOD, &path("t1"), Some(empty.clone()))
        .await?;
    let body: serde_json::Value = serde_json::from_slice(&resp.body).unwrap_or_default();
    ensure!(
        resp.status == StatusCode::UNAUTHORIZED.as_u16() && body["error"] == "peer_mismatch",
        "{} {body}",
        resp.status
    );
    ensure!(
        b.metric("parley_federation_requests_rejected_total{reason=\"peer_mismatch\"}")
            .await?
            == 1.0
    );

    // The same request from a node whose identity is A's key is A: accepted.
    let pem = std::fs::read_to_string(a.data_dir().join("federation.key"))?;
    let a_key = parley_federation::ServerSigningKey::from_pkcs8_pem(&pem)?;
    let genuine = libp2p_client(&a, &a_key, &b, &addr).await?;
    let resp = genuine
        .send(&to, send::METHOD, &path("t2"), Some(empty))
        .await?;
    ensure!(
        resp.status == 200,
        "{} {}",
        resp.status,
        String::from_utf8_lossy(&resp.body)
    );
    Ok(())
}
