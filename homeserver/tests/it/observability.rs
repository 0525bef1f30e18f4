//! Health, readiness, request ids and metrics that move as messages flow.

use anyhow::{Result, ensure};

use crate::harness::{Backend, Server};

crate::on_both_backends!(metrics_count_what_flows);

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
