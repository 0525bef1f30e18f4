//! Health, readiness, request ids and metrics that move as messages flow.

use std::time::Duration;

use anyhow::{Result, bail, ensure};
use reqwest::StatusCode;

use crate::harness::{Backend, Server};

crate::on_both_backends!(
    metrics_count_what_flows,
    outbox_metrics_follow_a_peer_down_and_back,
);

/// The value of the sample `name` (with its labels, e.g. `x_total{reason="a"}`).
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

async fn scrape(server: &Server) -> Result<String> {
    let resp = reqwest::get(format!("{}/metrics", server.base)).await?;
    ensure!(resp.status() == 200);
    Ok(resp.text().await?)
}

async fn metrics_count_what_flows(backend: Backend) -> Result<()> {
    let server = Server::start(backend).await?;
    for path in ["/health", "/ready"] {
        let resp = reqwest::get(format!("{}{path}", server.base)).await?;
        ensure!(resp.status() == 200, "{path}");
        ensure!(
            resp.headers().contains_key("x-request-id"),
            "{path} has no request id"
        );
    }
    let alice = server.register("alice").await?;
    let bob = server.register("bob").await?;
    let chat = server.create_chat(&alice, &[&bob]).await?;
    let before = scrape(&server).await?;
    ensure!(
        metric(&before, "parley_events_committed_total") == Some(0.0),
        "{before}"
    );
    ensure!(metric(&before, "parley_connected_sockets") == Some(0.0));

    for i in 0..5 {
        server.send(&alice, &chat, &format!("m{i}"), b"x").await?;
    }
    server
        .send(
            &bob,
            &"!AAAAAAAAAAAAAAAAAAAAAA:parley.test".try_into()?,
            "u",
            b"x",
        )
        .await?;
    let mut ws = server.connect(&bob).await?;
    let items = ws.until_synced().await?;
    let ids = items
        .iter()
        .filter_map(parley_client_api::ws::ServerFrame::inbox_id)
        .collect();
    let mid = scrape(&server).await?;
    ensure!(
        metric(&mid, "parley_events_committed_total") == Some(5.0),
        "{mid}"
    );
    ensure!(
        metric(&mid, "parley_sends_refused_total") == Some(1.0),
        "{mid}"
    );
    ensure!(
        metric(&mid, "parley_connected_sockets") == Some(1.0),
        "{mid}"
    );
    ensure!(metric(&mid, "parley_inbox_depth") == Some(5.0), "{mid}");
    ensure!(
        metric(&mid, "parley_commit_seconds_count").is_some_and(|n| n >= 1.0),
        "{mid}"
    );

    ws.ack(ids).await?;
    ws.close().await?;
    // The ack is committed before the socket's task ends; poll briefly for the gauges.
    let mut after = String::new();
    for _ in 0..50 {
        after = scrape(&server).await?;
        if metric(&after, "parley_inbox_acks_total") == Some(5.0)
            && metric(&after, "parley_connected_sockets") == Some(0.0)
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    ensure!(
        metric(&after, "parley_inbox_acks_total") == Some(5.0),
        "{after}"
    );
    ensure!(
        metric(&after, "parley_connected_sockets") == Some(0.0),
        "{after}"
    );
    // Alice now has one receipt item waiting.
    ensure!(metric(&after, "parley_inbox_depth") == Some(1.0), "{after}");
    Ok(())
}

/// Refused federation requests are counted by reason: the body limit, a missing
/// signature, and the policy (a real peer server that A does not allow).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn federation_rejections_are_counted_by_reason() -> Result<()> {
    let rejected =
        |reason: &str| format!("parley_federation_requests_rejected_total{{reason=\"{reason}\"}}");
    let a = Server::start_federated(Backend::Sqlite, "127.0.0.2", &[]).await?;
    // B allows A by name; A keeps its default (open, but no IP-literal server unless a
    // rule names it), so A refuses B.
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("b.toml");
    std::fs::write(
        &config,
        "[federation.policy]\nrules = [{ pattern = \"127.0.0.2:*\", action = \"allow\" }]\n",
    )?;
    let config = config.display().to_string();
    let b = Server::start_federated(Backend::Sqlite, "127.0.0.3", &["--config", &config]).await?;
    let alice = a.register("alice").await?;
    let bob = b.register("bob").await?;
    let before = scrape(&a).await?;
    ensure!(
        !before.contains("parley_federation_requests_rejected_total{"),
        "{before}"
    );

    let http = reqwest::Client::new();
    let claim = format!("{}/_parley/fed/v1/keys/claim", a.base);
    // No signature: 401.
    let resp = http
        .post(&claim)
        .header("content-type", "application/json")
        .body(r#"{"users":[]}"#)
        .send()
        .await?;
    ensure!(
        resp.status() == StatusCode::UNAUTHORIZED,
        "{}",
        resp.status()
    );
    // A body over the limit: 413, before anything is verified.
    let big = vec![b' '; parley_federation::api::send::MAX_BODY_BYTES + 1];
    match http.post(&claim).body(big).send().await {
        Ok(resp) => ensure!(
            resp.status() == StatusCode::PAYLOAD_TOO_LARGE,
            "{}",
            resp.status()
        ),
        // The server may answer 413 and close the connection before the whole body is
        // written; the client then sees the connection go. The refusal still counts
        // (checked below).
        Err(e) => ensure!(e.is_request() || e.is_body(), "{e:#}"),
    }
    // A signed request from B, whom A's policy refuses: 403 (B passes it on to Bob).
    let (status, body) = b
        .get(&format!("/v1/users/{}/devices", alice.user_id), &bob.token)
        .await?;
    ensure!(status == StatusCode::FORBIDDEN, "{status} {body}");

    let after = scrape(&a).await?;
    for reason in ["missing_signature", "too_large", "federation_denied"] {
        ensure!(
            metric(&after, &rejected(reason)) == Some(1.0),
            "{reason}: {after}"
        );
    }
    // B refused nothing: every request it got was a client's.
    ensure!(
        !scrape(&b)
            .await?
            .contains("parley_federation_requests_rejected_total{"),
        "B counted a rejection"
    );
    Ok(())
}

/// Scrapes `server` until `ok(text)` (up to ~60 s); returns the last scrape.
async fn scrape_until(server: &Server, ok: impl Fn(&str) -> bool) -> Result<String> {
    let mut text = String::new();
    for _ in 0..600 {
        text = scrape(server).await?;
        if ok(&text) {
            return Ok(text);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("the metrics never got there: {text}")
}

/// The per-destination outbox gauges: the depth rises while the peer is down, with a
/// failure count and a backoff, and falls to nothing once it is back.
async fn outbox_metrics_follow_a_peer_down_and_back(backend: Backend) -> Result<()> {
    let a = Server::start_peer(backend, "127.0.0.1", "").await?;
    let mut b = Server::start_peer(backend, "127.0.0.2", "").await?;
    let alice = a.register("alice").await?;
    let bob = b.register("bob").await?;
    let chat = a.create_chat(&alice, &[&bob]).await?;
    crate::federation_chats::wait_listed(&b, &bob, &chat).await?;
    let series = |name: &str| {
        format!(
            "parley_federation_outbox_{name}{{destination=\"{}\"}}",
            b.name()
        )
    };
    let (depth, failures, backoff) = (
        series("depth"),
        series("failures"),
        series("backoff_seconds"),
    );
    // Everything delivered: no series for B (or an empty one).
    let idle = scrape_until(&a, |t| metric(t, &depth).unwrap_or(0.0) == 0.0).await?;
    ensure!(metric(&idle, &failures).unwrap_or(0.0) == 0.0, "{idle}");

    b.stop_hard().await?;
    for i in 0..5 {
        let (status, body) = a.send(&alice, &chat, &format!("m{i}"), b"x").await?;
        ensure!(status == StatusCode::CREATED, "{status} {body}");
    }
    // Queued for B: five rows (the first may still be in flight, counted too), and the
    // failed attempts show as failures and a backoff.
    let down = scrape_until(&a, |t| {
        metric(t, &depth) == Some(5.0) && metric(t, &failures).is_some_and(|f| f >= 1.0)
    })
    .await?;
    ensure!(metric(&down, &backoff).is_some(), "{down}");

    b.restart().await?;
    let back = scrape_until(&a, |t| metric(t, &depth).unwrap_or(0.0) == 0.0).await?;
    ensure!(metric(&back, &failures).unwrap_or(0.0) == 0.0, "{back}");
    // B acknowledged them after its commit: bob's inbox has them.
    let mut bob_ws = b.connect(&bob).await?;
    let items = bob_ws.until_synced().await?;
    ensure!(
        items
            .iter()
            .filter(|f| matches!(f, parley_client_api::ws::ServerFrame::Event { .. }))
            .count()
            >= 5,
        "{items:?}"
    );
    Ok(())
}
