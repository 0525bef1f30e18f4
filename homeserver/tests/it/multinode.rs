//! Several nodes of one domain: one Postgres, routing through NATS.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{Result, ensure};
use parley_client_api::ws::{ClientFrame, ServerFrame};

use crate::harness::Server;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_on_two_nodes_chat_live_and_survive_a_node_dying() -> Result<()> {
    let nats = parley_testkit::nats()?;
    let mut nodes = Server::start_nodes(2, nats.url()).await?;
    let alice = nodes[0].register("alice").await?;
    let bob = nodes[1].register("bob").await?;
    let chat = nodes[0].create_chat(&alice, &[&bob]).await?;

    // Alice on node 0, Bob on node 1: live both ways, receipts too.
    let mut alice_ws = nodes[0].connect(&alice).await?;
    let mut bob_ws = nodes[1].connect(&bob).await?;
    alice_ws.until_synced().await?;
    bob_ws.until_synced().await?;
    nodes[0]
        .send(&alice, &chat, "a1", b"hello from node 0")
        .await?;
    let got = bob_ws.events(1).await?;
    ensure!(got[0].1.payload.0 == b"hello from node 0");
    bob_ws.ack(vec![got[0].0]).await?;
    loop {
        if let ServerFrame::Receipt { receipt, .. } = alice_ws.next().await? {
            ensure!(receipt.delivered_seq == 1);
            break;
        }
    }
    nodes[1]
        .send(&bob, &chat, "b1", b"hello from node 1")
        .await?;
    ensure!(alice_ws.events(1).await?[0].1.seq == 2);

    // A second connection of Bob's device on node 0 replaces the one on node 1.
    let mut bob_ws2 = nodes[0].connect(&bob).await?;
    bob_ws2.until_synced().await?;
    ensure!(
        bob_ws.next().await.is_err(),
        "the old socket on node 1 was not closed"
    );

    // Alice streams sends through node 0; it dies mid-stream (kill -9). Her client
    // reconnects to node 1 and resends what was not acknowledged (same ids).
    const TOTAL: usize = 200;
    let mut acked = BTreeSet::new();
    for i in 0..TOTAL {
        alice_ws
            .send(&ClientFrame::send(
                chat.clone(),
                format!("s{i}"),
                format!("p{i}").into_bytes(),
            ))
            .await?;
        if i == TOTAL / 2 {
            // Collect some acks, then crash the node.
            while acked.len() < 20 {
                if let ServerFrame::Sent { ack } = alice_ws.next().await? {
                    acked.insert(ack.client_msg_id);
                }
            }
            nodes[0].process.kill_hard().await?;
            break;
        }
    }
    let mut alice_ws = nodes[1].connect(&alice).await?;
    alice_ws.until_synced().await?;
    for i in 0..TOTAL {
        alice_ws
            .send(&ClientFrame::send(
                chat.clone(),
                format!("s{i}"),
                format!("p{i}").into_bytes(),
            ))
            .await?;
    }
    let mut all = BTreeSet::new();
    while all.len() < TOTAL {
        if let ServerFrame::Sent { ack } = alice_ws.next().await? {
            all.insert(ack.seq);
        }
    }
    // Bob (his socket was on node 0, which died) reconnects to node 1 and gets every
    // event once, in order, with no gap.
    drop(bob_ws2);
    let mut bob_ws = nodes[1].connect(&bob).await?;
    let mut seqs = Vec::new();
    while seqs.len() < TOTAL {
        match bob_ws.next().await? {
            ServerFrame::Event { event, .. } => seqs.push(event.seq),
            ServerFrame::Synced | ServerFrame::Receipt { .. } => {}
            other => anyhow::bail!("unexpected {other:?}"),
        }
    }
    // seq 1 was acknowledged, 2 is Bob's own: the stream's events are 3..=202.
    ensure!(
        seqs == (3..=(TOTAL as i64 + 2)).collect::<Vec<_>>(),
        "{seqs:?}"
    );
    ensure!(
        all == (3..=(TOTAL as i64 + 2)).collect(),
        "stored seqs {all:?}"
    );

    // Both remaining writers… one node now; start node 0 again and send through both at
    // once: the chat's sequence stays gap-free across nodes.
    nodes[0].crash_and_restart().await?;
    let (n0, n1) = (&nodes[0], &nodes[1]);
    let send_many = |node: &'static str, server: &Server, who: crate::harness::User| {
        let chat = chat.clone();
        let base = server.base.clone();
        async move {
            let http = reqwest::Client::new();
            let mut seqs = Vec::new();
            for i in 0..50 {
                let body: serde_json::Value = http
                    .post(format!("{base}/v1/chats/{chat}/events"))
                    .bearer_auth(&who.token)
                    .json(&serde_json::json!({"client_msg_id": format!("{node}-{i}"), "payload": "eA=="}))
                    .send()
                    .await?
                    .json()
                    .await?;
                seqs.push(body["seq"].as_i64().unwrap_or(-1));
            }
            anyhow::Ok(seqs)
        }
    };
    let (a, b) = tokio::join!(
        send_many("n0", n0, alice.clone()),
        send_many("n1", n1, bob.clone())
    );
    let mut both: Vec<i64> = a?.into_iter().chain(b?).collect();
    both.sort_unstable();
    let first = TOTAL as i64 + 3;
    ensure!(both == (first..first + 100).collect::<Vec<_>>(), "{both:?}");
    Ok(())
}

/// Typing and presence reach a device whose socket is on another node; a push goes to a
/// device with no socket on any node, and not to one whose socket is on another node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_presence_and_push_reach_other_nodes() -> Result<()> {
    let nats = parley_testkit::nats()?;
    let gw = parley_testkit::ServerProcess::spawn(
        env!("CARGO_BIN_EXE_parley-push-gateway"),
        ["--listen", "127.0.0.1:0"],
        [("PARLEY_LOG", "info")],
    )
    .await?;
    let url = format!("http://{}/_parley/push/v1/notify", gw.addr());
    let nodes = Server::start_nodes_with_config(
        2,
        nats.url(),
        "[push]\nallow_insecure = true\ncoalesce_ms = 200\nretry_base_ms = 200\n",
    )
    .await?;
    let (n0, n1) = (&nodes[0], &nodes[1]);
    let alice = n0.register("alice").await?;
    let bob = n0.register("bob").await?;
    let carol = n0.register("carol").await?;
    let chat = n0.create_chat(&alice, &[&bob, &carol]).await?;
    for (me, token) in [(&bob, "bob-token"), (&carol, "carol-token")] {
        let (status, body) = n0
            .post(
                "/v1/pushers",
                Some(&me.token),
                serde_json::json!({"url": url, "token": token}),
            )
            .await?;
        ensure!(status == 200, "{status} {body}");
    }

    // bob's socket is on node 1 and heartbeats; alice's is on node 0.
    let mut bob_ws = crate::presence::present(n1, &bob).await?;
    let mut alice_ws = crate::presence::present(n0, &alice).await?;
    // alice came online on node 0: bob on node 1 sees it.
    let p = crate::presence::presence_of(&mut bob_ws, &alice, Duration::from_secs(10)).await?;
    ensure!(p.online == Some(true), "{p:?}");
    // Typing on node 0 reaches bob on node 1, and back.
    alice_ws
        .send(&ClientFrame::Typing {
            chat_id: chat.clone(),
            typing: true,
        })
        .await?;
    let got = typing_of(&mut bob_ws).await?;
    ensure!(got == (alice.user_id.to_string(), true), "{got:?}");
    bob_ws
        .send(&ClientFrame::Typing {
            chat_id: chat.clone(),
            typing: true,
        })
        .await?;
    let got = typing_of(&mut alice_ws).await?;
    ensure!(got == (bob.user_id.to_string(), true), "{got:?}");

    // A message through node 0: carol (no socket anywhere) gets a push; bob (socket on
    // node 1) gets the event there and no push.
    n0.send(&alice, &chat, "m1", b"hi").await?;
    let got = bob_ws.events(1).await?;
    ensure!(got[0].1.payload.0 == b"hi");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !gw.logs().contains("carol-token") {
        ensure!(
            tokio::time::Instant::now() < deadline,
            "no push for carol: {}",
            gw.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // bob's hint was made at the same time; give its probe the same again.
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    ensure!(
        !gw.logs().contains("bob-token"),
        "bob was pushed though connected to node 1: {}",
        gw.logs()
    );
    // bob leaves: the next message pushes him too.
    bob_ws.close().await?;
    n0.send(&alice, &chat, "m2", b"again").await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !gw.logs().contains("bob-token") {
        ensure!(
            tokio::time::Instant::now() < deadline,
            "no push for bob: {}",
            gw.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// The next typing frame: `(user, typing)`.
async fn typing_of(ws: &mut crate::harness::Ws) -> Result<(String, bool)> {
    loop {
        match ws.next_within(Duration::from_secs(10)).await? {
            Some(ServerFrame::Typing {
                user_id, typing, ..
            }) => return Ok((user_id.to_string(), typing)),
            Some(_) => {}
            None => anyhow::bail!("no typing frame"),
        }
    }
}

/// Online is the domain's, not a node's (spec PR11): a user connected to node 0 is online
/// in a query answered by node 1, stays online while one of their sockets is open on any
/// node, and goes offline when the last one closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn online_state_spans_nodes() -> Result<()> {
    use crate::presence::{get_presence, present};
    let nats = parley_testkit::nats()?;
    let nodes = Server::start_nodes(2, nats.url()).await?;
    let (n0, n1) = (&nodes[0], &nodes[1]);
    let alice = n0.register("alice").await?;
    let bob = n0.register("bob").await?;
    n0.create_chat(&alice, &[&bob]).await?;
    let online_on = async |n: &Server| anyhow::Ok(get_presence(n, &bob, &alice).await?.online);
    ensure!(online_on(n1).await? == Some(false), "nobody connected yet");

    let phone = present(n0, &alice).await?;
    ensure!(online_on(n0).await? == Some(true));
    ensure!(
        online_on(n1).await? == Some(true),
        "node 1 must see alice online on node 0"
    );

    // A second device on node 1; the phone on node 0 goes: alice is still online.
    let laptop_login = n1.login("alice").await?;
    let laptop = present(n1, &laptop_login).await?;
    phone.close().await?;
    // Give node 0 time to notice the close (and to not announce an offline).
    tokio::time::sleep(Duration::from_millis(500)).await;
    for n in [n0, n1] {
        ensure!(online_on(n).await? == Some(true), "laptop still connected");
    }

    // The last socket closes: offline on both nodes (eventually: the unsubscribe reaches
    // NATS asynchronously).
    laptop.close().await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    for n in [n0, n1] {
        while online_on(n).await? != Some(false) {
            ensure!(tokio::time::Instant::now() < deadline, "alice still online");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}
