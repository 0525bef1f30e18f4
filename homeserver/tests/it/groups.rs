//! Groups at the hub: roles, membership changes carried by MLS commits, exactly one
//! commit per epoch, receipts per member.

use anyhow::{Result, ensure};
use parley_client_api::ChatId;
use parley_client_api::http::chats::MlsKind;
use parley_client_api::ws::ServerFrame;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::harness::{Backend, Server, User};

crate::on_both_backends!(
    membership_changes_are_admin_commits_applied_by_the_hub,
    the_hub_accepts_exactly_one_commit_per_epoch,
);

fn commit(msg_id: &str, epoch: u64, add: &[&User], remove: &[&User]) -> Value {
    let ids = |us: &[&User]| us.iter().map(|u| u.user_id.to_string()).collect::<Vec<_>>();
    json!({
        "client_msg_id": msg_id,
        "payload": "Y29tbWl0",
        "mls": {"kind": "commit", "epoch": epoch},
        "membership": {"add": ids(add), "remove": ids(remove)},
    })
}

fn proposal(msg_id: &str, epoch: u64, remove: &[&User]) -> Value {
    let ids: Vec<String> = remove.iter().map(|u| u.user_id.to_string()).collect();
    json!({
        "client_msg_id": msg_id,
        "payload": "cHJvcG9zYWw=",
        "mls": {"kind": "proposal", "epoch": epoch},
        "membership": {"remove": ids},
    })
}

fn app(msg_id: &str, epoch: u64) -> Value {
    json!({"client_msg_id": msg_id, "payload": "aGk=", "mls": {"kind": "application", "epoch": epoch}})
}

async fn send(
    server: &Server,
    who: &User,
    chat: &ChatId,
    body: Value,
) -> Result<(StatusCode, Value)> {
    server
        .post(&format!("/v1/chats/{chat}/events"), Some(&who.token), body)
        .await
}

async fn members(server: &Server, who: &User, chat: &ChatId) -> Result<Value> {
    Ok(server
        .get(&format!("/v1/chats/{chat}/members"), &who.token)
        .await?
        .1)
}

async fn membership_changes_are_admin_commits_applied_by_the_hub(backend: Backend) -> Result<()> {
    let server = Server::start(backend).await?;
    let [alice, bob, carol, dave] = [
        server.register("alice").await?,
        server.register("bob").await?,
        server.register("carol").await?,
        server.register("dave").await?,
    ];
    let (status, created) = server
        .post(
            "/v1/chats",
            Some(&alice.token),
            json!({"members": [bob.user_id, carol.user_id], "name": "Team"}),
        )
        .await?;
    ensure!(
        status == StatusCode::CREATED && created["kind"] == "group" && created["name"] == "Team",
        "{created}"
    );
    let chat: ChatId = serde_json::from_value(created["chat_id"].clone())?;
    let m = members(&server, &bob, &chat).await?;
    ensure!(
        m["mls_epoch"] == 0 && m["members"].as_array().map(Vec::len) == Some(3),
        "{m}"
    );
    ensure!(m["members"].as_array().is_some_and(|ms| {
        ms.iter()
            .all(|x| (x["user_id"] == alice.user_id.as_str()) == (x["admin"] == true))
    }));

    // A non-admin cannot add or remove others, rename or promote.
    let (status, body) = send(&server, &bob, &chat, commit("b1", 0, &[&dave], &[])).await?;
    ensure!(
        status == StatusCode::FORBIDDEN && body["error"] == "forbidden",
        "{body}"
    );
    let (status, _) = send(&server, &bob, &chat, commit("b2", 0, &[], &[&carol])).await?;
    ensure!(status == StatusCode::FORBIDDEN);
    let (status, _) = server
        .post(
            &format!("/v1/chats/{chat}/name"),
            Some(&bob.token),
            json!({"name": "Mine"}),
        )
        .await?;
    ensure!(status == StatusCode::FORBIDDEN);
    // A membership change must travel with a commit.
    let (status, body) = send(
        &server,
        &alice,
        &chat,
        json!({"client_msg_id": "x", "payload": "eA==", "membership": {"add": [dave.user_id]}}),
    )
    .await?;
    ensure!(status == StatusCode::FORBIDDEN, "{body}");

    // Alice adds dave and removes carol in one commit (epoch 0 → 1).
    let mut dave_ws = server.connect(&dave).await?;
    dave_ws.until_synced().await?;
    let (status, ack) = send(&server, &alice, &chat, commit("a1", 0, &[&dave], &[&carol])).await?;
    ensure!(status == StatusCode::CREATED && ack["seq"] == 1, "{ack}");
    // Dave gets the commit (it carries his Welcome), with its metadata.
    match dave_ws.next().await? {
        ServerFrame::Event { event, .. } => {
            ensure!(
                event.seq == 1
                    && event
                        .membership
                        .as_ref()
                        .is_some_and(|m| m.add.len() == 1 && m.remove.len() == 1)
            );
            ensure!(event.mls.is_some_and(|m| m.epoch == 0));
        }
        other => anyhow::bail!("expected the commit, got {other:?}"),
    }
    let m = members(&server, &alice, &chat).await?;
    ensure!(m["mls_epoch"] == 1, "{m}");
    let names: Vec<&str> = m["members"]
        .as_array()
        .map(|ms| ms.iter().filter_map(|x| x["user_id"].as_str()).collect())
        .unwrap_or_default();
    ensure!(
        names
            == [
                alice.user_id.as_str(),
                bob.user_id.as_str(),
                dave.user_id.as_str()
            ],
        "{names:?}"
    );

    // Carol, removed, can no longer send; her chat list no longer has the group.
    let (status, body) = send(&server, &carol, &chat, app("c1", 1)).await?;
    ensure!(
        status == StatusCode::FORBIDDEN && body["error"] == "not_member",
        "{body}"
    );
    ensure!(server.chats(&carol).await?.is_empty());
    // Dave can.
    let (status, _) = send(&server, &dave, &chat, app("d1", 1)).await?;
    ensure!(status == StatusCode::CREATED);

    // Promote bob; he may now rename; the last admin cannot step down alone.
    let (status, _) = server
        .post(
            &format!("/v1/chats/{chat}/admins"),
            Some(&alice.token),
            json!({"user_id": bob.user_id, "admin": true}),
        )
        .await?;
    ensure!(status == StatusCode::NO_CONTENT);
    let (status, _) = server
        .post(
            &format!("/v1/chats/{chat}/name"),
            Some(&bob.token),
            json!({"name": "Team 2"}),
        )
        .await?;
    ensure!(status == StatusCode::NO_CONTENT);
    ensure!(server.chats(&dave).await?[0].name.as_deref() == Some("Team 2"));
    server
        .post(
            &format!("/v1/chats/{chat}/admins"),
            Some(&bob.token),
            json!({"user_id": alice.user_id, "admin": false}),
        )
        .await?;
    let (status, body) = server
        .post(
            &format!("/v1/chats/{chat}/admins"),
            Some(&bob.token),
            json!({"user_id": bob.user_id, "admin": false}),
        )
        .await?;
    ensure!(status == StatusCode::FORBIDDEN, "{body}");

    // MLS forbids a commit removing its committer: leaving is a proposal removing
    // oneself (another member commits it), and it may carry nothing else.
    let (status, body) = send(&server, &dave, &chat, commit("d2", 1, &[], &[&dave])).await?;
    ensure!(status == StatusCode::FORBIDDEN, "{body}");
    let (status, body) = send(&server, &dave, &chat, proposal("d3", 1, &[&dave, &bob])).await?;
    ensure!(status == StatusCode::FORBIDDEN, "{body}");
    let (status, body) = send(&server, &dave, &chat, proposal("d4", 0, &[&dave])).await?;
    ensure!(
        status == StatusCode::CONFLICT && body["current_epoch"] == 1,
        "{body}"
    );
    let mut bob_ws = server.connect(&bob).await?;
    bob_ws.until_synced().await?;
    let (status, ack) = send(&server, &dave, &chat, proposal("d5", 1, &[&dave])).await?;
    ensure!(status == StatusCode::CREATED, "{ack}");
    // The members get the proposal (to commit it); the hub lists dave no more, refuses
    // his sends, and the epoch stays until someone commits.
    loop {
        if let ServerFrame::Event { event, .. } = bob_ws.next().await?
            && event.client_msg_id == "d5"
        {
            ensure!(event.mls.is_some_and(|m| m.kind == MlsKind::Proposal));
            ensure!(
                event
                    .membership
                    .is_some_and(|m| m.remove == [dave.user_id.clone()])
            );
            break;
        }
    }
    let m = members(&server, &bob, &chat).await?;
    ensure!(
        m["mls_epoch"] == 1 && m["members"].as_array().map(Vec::len) == Some(2),
        "{m}"
    );
    let (status, body) = send(&server, &dave, &chat, app("d6", 1)).await?;
    ensure!(
        status == StatusCode::FORBIDDEN && body["error"] == "not_member",
        "{body}"
    );
    // Any remaining member may commit the departure (no membership change left to make).
    let (status, _) = send(
        &server,
        &bob,
        &chat,
        json!({"client_msg_id": "b3", "payload": "Y29tbWl0", "mls": {"kind": "commit", "epoch": 1}}),
    )
    .await?;
    ensure!(status == StatusCode::CREATED);

    // Receipts: one row per member; "delivered to N of M" is counted from them.
    let (_, receipts) = server
        .get(&format!("/v1/chats/{chat}/receipts"), &alice.token)
        .await?;
    ensure!(
        receipts["receipts"].as_array().map(Vec::len) == Some(2),
        "{receipts}"
    );
    Ok(())
}

async fn the_hub_accepts_exactly_one_commit_per_epoch(backend: Backend) -> Result<()> {
    let server = Server::start(backend).await?;
    let [alice, bob, carol] = [
        server.register("alice").await?,
        server.register("bob").await?,
        server.register("carol").await?,
    ];
    let (_, created) = server
        .post(
            "/v1/chats",
            Some(&alice.token),
            json!({"members": [bob.user_id, carol.user_id], "name": "Race"}),
        )
        .await?;
    let chat: ChatId = serde_json::from_value(created["chat_id"].clone())?;
    let update = |id: &str, epoch: u64| json!({"client_msg_id": id, "payload": "dXBk", "mls": {"kind": "commit", "epoch": epoch}});

    // Three members commit in epoch 0 at once: exactly one wins.
    let (a, b, c) = tokio::join!(
        send(&server, &alice, &chat, update("a", 0)),
        send(&server, &bob, &chat, update("b", 0)),
        send(&server, &carol, &chat, update("c", 0)),
    );
    let results = [a?, b?, c?];
    let won = results
        .iter()
        .filter(|(s, _)| *s == StatusCode::CREATED)
        .count();
    ensure!(won == 1, "{results:?}");
    for (status, body) in results.iter().filter(|(s, _)| *s != StatusCode::CREATED) {
        ensure!(
            *status == StatusCode::CONFLICT
                && body["error"] == "wrong_epoch"
                && body["current_epoch"] == 1,
            "{body}"
        );
    }
    // A loser catches up and retries in epoch 1 with a new id.
    let (status, _) = send(&server, &bob, &chat, update("b-retry", 1)).await?;
    ensure!(status == StatusCode::CREATED);
    // Application messages: only the current epoch (2) is accepted; earlier ones (a
    // member added since could not read them) and future ones are refused.
    ensure!(send(&server, &alice, &chat, app("m2", 2)).await?.0 == StatusCode::CREATED);
    for (id, epoch) in [("m1", 1), ("m3", 3)] {
        let (status, body) = send(&server, &alice, &chat, app(id, epoch)).await?;
        ensure!(
            status == StatusCode::CONFLICT
                && body["error"] == "wrong_epoch"
                && body["current_epoch"] == 2,
            "{body}"
        );
    }
    // Over the socket the refusal says the same.
    let mut ws = server.connect(&carol).await?;
    ws.until_synced().await?;
    ws.send_text(json!({"type": "send", "chat_id": chat, "client_msg_id": "late", "payload": "eA==", "mls": {"kind": "commit", "epoch": 0}}).to_string()).await?;
    loop {
        if let ServerFrame::Error {
            code,
            current_epoch,
            client_msg_id,
            ..
        } = ws.next().await?
        {
            ensure!(
                code.as_str() == "wrong_epoch"
                    && current_epoch == Some(2)
                    && client_msg_id.as_deref() == Some("late")
            );
            break;
        }
    }
    // The stored order has no gap and one commit per epoch.
    let (_, history) = server
        .get(&format!("/v1/chats/{chat}/events"), &alice.token)
        .await?;
    let kinds: Vec<(i64, String)> = history["events"]
        .as_array()
        .map(|es| {
            es.iter()
                .map(|e| {
                    (
                        e["seq"].as_i64().unwrap_or(-1),
                        e["mls"]["kind"].as_str().unwrap_or("").to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    ensure!(
        kinds.iter().map(|k| k.0).collect::<Vec<_>>() == [1, 2, 3],
        "{kinds:?}"
    );
    ensure!(kinds.iter().filter(|k| k.1 == "commit").count() == 2);
    Ok(())
}
