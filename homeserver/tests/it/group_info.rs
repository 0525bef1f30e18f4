//! A chat's GroupInfo at its hub (spec/backup.md BK18–BK21): kept from the accepted
//! commit that carries it, served to any device of a member user only (also through the
//! hub for a follower's user), and an external commit accepted from a member user's new
//! device but never from a non-member. Payloads are opaque bytes here; the SDK's rejoin
//! test carries real MLS through the same path.

use anyhow::{Result, ensure};
use parley_client_api::{ChatId, Payload};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::federation_chats::impersonate;
use crate::harness::{Backend, Server, User};

crate::on_both_backends!(
    only_members_get_the_group_info_and_only_members_commit,
    the_group_info_across_servers,
);

/// Sends a commit for `epoch` (its payload: its id), with `group_info` if given.
async fn commit(
    server: &Server,
    me: &User,
    chat: &ChatId,
    id: &str,
    epoch: u64,
    group_info: Option<&[u8]>,
) -> Result<(StatusCode, Value)> {
    server
        .commit(me, chat, id, epoch, id.as_bytes(), group_info)
        .await
}

async fn group_info(server: &Server, me: &User, chat: &ChatId) -> Result<(StatusCode, Value)> {
    server
        .get(&format!("/v1/chats/{chat}/group_info"), &me.token)
        .await
}

/// The GroupInfo a member gets: `(epoch, bytes)`.
async fn got(server: &Server, me: &User, chat: &ChatId) -> Result<(u64, Vec<u8>)> {
    let (status, body) = group_info(server, me, chat).await?;
    ensure!(status == StatusCode::OK, "{status} {body}");
    ensure!(body["chat_id"] == chat.as_str(), "{body}");
    let bytes: Payload = serde_json::from_value(body["group_info"].clone())?;
    Ok((body["epoch"].as_u64().unwrap_or(u64::MAX), bytes.0))
}

fn refused(r: &(StatusCode, Value), status: StatusCode, code: &str) -> Result<()> {
    ensure!(
        r.0 == status && r.1["error"] == code,
        "want {status} {code}: {} {}",
        r.0,
        r.1
    );
    Ok(())
}

async fn only_members_get_the_group_info_and_only_members_commit(backend: Backend) -> Result<()> {
    let s = Server::start(backend).await?;
    let alice = s.register("alice").await?;
    let bob = s.register("bob").await?;
    let mallory = s.register("mallory").await?;
    let chat = s.create_chat(&alice, &[&bob]).await?;

    // No commit published one yet.
    refused(
        &group_info(&s, &bob, &chat).await?,
        StatusCode::NOT_FOUND,
        "no_group_info",
    )?;
    // The creating commit (epoch 0 → 1) publishes the GroupInfo of epoch 1.
    let r = commit(&s, &alice, &chat, "c0", 0, Some(b"info of epoch 1")).await?;
    ensure!(r.0 == StatusCode::CREATED, "{r:?}");
    ensure!(got(&s, &bob, &chat).await? == (1, b"info of epoch 1".to_vec()));
    ensure!(got(&s, &alice, &chat).await? == (1, b"info of epoch 1".to_vec()));

    // A non-member can neither read it nor commit (external or not): nothing stored.
    refused(
        &group_info(&s, &mallory, &chat).await?,
        StatusCode::FORBIDDEN,
        "not_member",
    )?;
    let bad = commit(&s, &mallory, &chat, "m1", 1, Some(b"mallory's")).await?;
    refused(&bad, StatusCode::FORBIDDEN, "not_member")?;
    let unknown: ChatId = format!("!nosuchchat:{}", s.name()).as_str().try_into()?;
    refused(
        &group_info(&s, &bob, &unknown).await?,
        StatusCode::NOT_FOUND,
        "unknown_chat",
    )?;

    // Bob's restored device (a new login, no leaf yet) reads it and joins by external
    // commit: accepted like any member's commit, its GroupInfo replaces the old one.
    let bob2 = s.login("bob").await?;
    ensure!(got(&s, &bob2, &chat).await?.0 == 1);
    let r = commit(&s, &bob2, &chat, "ext", 1, Some(b"info of epoch 2")).await?;
    ensure!(r.0 == StatusCode::CREATED && r.1["seq"] == 2, "{r:?}");
    ensure!(got(&s, &alice, &chat).await? == (2, b"info of epoch 2".to_vec()));

    // A losing commit for the old epoch is refused and its GroupInfo not kept.
    let r = commit(&s, &alice, &chat, "late", 1, Some(b"stale")).await?;
    refused(&r, StatusCode::CONFLICT, "wrong_epoch")?;
    ensure!(r.1["current_epoch"] == 2, "{r:?}");
    ensure!(got(&s, &bob2, &chat).await? == (2, b"info of epoch 2".to_vec()));

    // Only with a commit, never empty.
    let app = s
        .post(
            &format!("/v1/chats/{chat}/events"),
            Some(&alice.token),
            json!({"client_msg_id": "app", "payload": Payload(b"x".to_vec()),
                   "mls": {"kind": "application", "epoch": 2},
                   "group_info": Payload(b"not with a message".to_vec())}),
        )
        .await?;
    refused(&app, StatusCode::BAD_REQUEST, "invalid_param")?;
    let empty = commit(&s, &alice, &chat, "empty", 2, Some(b"")).await?;
    refused(&empty, StatusCode::BAD_REQUEST, "invalid_param")?;

    // A commit that publishes none leaves no current GroupInfo.
    let r = commit(&s, &alice, &chat, "bare", 2, None).await?;
    ensure!(r.0 == StatusCode::CREATED, "{r:?}");
    refused(
        &group_info(&s, &bob, &chat).await?,
        StatusCode::NOT_FOUND,
        "no_group_info",
    )?;
    // Nothing of the refused sends was sequenced: the events are c0, ext, bare.
    let (_, history) = s
        .get(&format!("/v1/chats/{chat}/events"), &alice.token)
        .await?;
    let ids: Vec<&str> = history["events"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|e| e["client_msg_id"].as_str())
                .collect()
        })
        .unwrap_or_default();
    ensure!(ids == ["c0", "ext", "bare"], "{history}");
    Ok(())
}

async fn the_group_info_across_servers(backend: Backend) -> Result<()> {
    let a = Server::start_peer(backend, "127.0.0.1", "").await?;
    let b = Server::start_peer(backend, "127.0.0.2", "").await?;
    let c = Server::start_peer(backend, "127.0.0.3", "").await?;
    let alice = a.register("alice").await?;
    let bob = b.register("bob").await?;
    let carol = b.register("carol").await?;
    let mallory = c.register("mallory").await?;
    let chat = a.create_chat(&alice, &[&bob]).await?;
    crate::federation_chats::wait_listed(&b, &bob, &chat).await?;
    let r = commit(&a, &alice, &chat, "c0", 0, Some(b"info 1")).await?;
    ensure!(r.0 == StatusCode::CREATED, "{r:?}");

    // Bob asks his own server, which asks the hub.
    ensure!(got(&b, &bob, &chat).await? == (1, b"info 1".to_vec()));
    // Carol, on the same follower but no member: refused by her server.
    refused(
        &group_info(&b, &carol, &chat).await?,
        StatusCode::FORBIDDEN,
        "not_member",
    )?;

    // A peer asking the hub directly: for its own user who is no member, refused; for
    // another server's user, refused.
    let from_c = impersonate(&c)?;
    let hub = parley_federation::ServerName::try_from(a.name())?;
    let ask = |user: &User| {
        parley_federation::api::fill(
            parley_federation::api::chats::group_info::PATH,
            &[
                ("chat_id", chat.as_str()),
                ("user_id", user.user_id.as_str()),
            ],
        )
    };
    for (user, status, code) in [(&mallory, 403, "not_member"), (&bob, 403, "forbidden")] {
        let resp = from_c
            .send(&hub, parley_federation::api::Method::Get, &ask(user), None)
            .await?;
        let body: Value = serde_json::from_slice(&resp.body).unwrap_or_default();
        ensure!(
            resp.status == status && body["error"] == code,
            "{}: {} {body}",
            user.user_id,
            resp.status
        );
    }
    // Nor does the hub sequence a commit (an external one) of the peer's user who is no
    // member, forwarded as the peer's send.
    let (status, answer) = crate::federation_chats::put_txn(
        &from_c,
        &a,
        "ext-mallory",
        json!({"origin": c.name(), "origin_ts": 0, "sends": [{
            "chat_id": chat, "sender": mallory.user_id, "sender_device": mallory.device_id,
            "client_msg_id": "x", "payload": "aGk=", "mls": {"kind": "commit", "epoch": 1},
            "group_info": "aGk="}]}),
    )
    .await?;
    ensure!(
        status == 200 && answer["sends"][0]["error"] == "not_member",
        "{answer}"
    );
    ensure!(got(&a, &alice, &chat).await? == (1, b"info 1".to_vec()));

    // Bob's new device joins by external commit through his server: the hub keeps its
    // GroupInfo.
    let bob2 = b.login("bob").await?;
    let r = commit(&b, &bob2, &chat, "ext", 1, Some(b"info 2")).await?;
    ensure!(r.0 == StatusCode::CREATED && r.1["seq"] == 2, "{r:?}");
    ensure!(got(&a, &alice, &chat).await? == (2, b"info 2".to_vec()));
    ensure!(got(&b, &bob2, &chat).await? == (2, b"info 2".to_vec()));

    // A commit larger than a message may be (it carries a Welcome for the devices it
    // adds) is held to the commit limit at the hub too, as when sent there directly.
    let big = vec![7u8; 100 * 1024];
    let r = b
        .post(
            &format!("/v1/chats/{chat}/events"),
            Some(&bob2.token),
            json!({"client_msg_id": "big", "payload": Payload(big),
                   "mls": {"kind": "commit", "epoch": 2}, "group_info": Payload(b"info 3".to_vec())}),
        )
        .await?;
    ensure!(r.0 == StatusCode::CREATED && r.1["seq"] == 3, "{r:?}");
    ensure!(got(&a, &alice, &chat).await? == (3, b"info 3".to_vec()));
    Ok(())
}
