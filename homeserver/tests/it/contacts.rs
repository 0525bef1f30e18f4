//! Contact lists over real servers: the HTTP API (add, remove, list, bad input), the
//! privacy setting `contacts` meaning that list (a contact sees last seen, a non-contact
//! does not — even one sharing a chat —, removing the contact hides it again), the
//! reciprocal rule, and a remote contact across two federated servers.

use std::time::Duration;

use anyhow::{Result, bail, ensure};
use parley_client_api::http::presence::Presence;
use reqwest::{Method, StatusCode};

use crate::federation_chats::wait_listed;
use crate::harness::{Backend, Server, User, Ws};
use crate::presence::{CONFIG, get_presence, presence_change, presence_of, present, set_privacy};
use parley_client_api::ws::ServerFrame;

crate::on_both_backends!(
    the_contact_list_api,
    contacts_decide_who_sees_last_seen,
    a_remote_contact_sees_last_seen,
);

/// `me` adds `who` to their contacts.
pub(crate) async fn add(server: &Server, me: &User, who: &User) -> Result<()> {
    let (status, body) = contact(server, Method::PUT, me, who.user_id.as_str()).await?;
    ensure!(status == StatusCode::NO_CONTENT, "{status} {body}");
    Ok(())
}

async fn remove(server: &Server, me: &User, who: &User) -> Result<()> {
    let (status, body) = contact(server, Method::DELETE, me, who.user_id.as_str()).await?;
    ensure!(status == StatusCode::NO_CONTENT, "{status} {body}");
    Ok(())
}

async fn contact(
    server: &Server,
    method: Method,
    me: &User,
    who: &str,
) -> Result<(StatusCode, serde_json::Value)> {
    server
        .request(
            method,
            &format!("/v1/contacts/{who}"),
            Some(&me.token),
            None,
        )
        .await
}

async fn list(server: &Server, me: &User) -> Result<Vec<String>> {
    let (status, body) = server.get("/v1/contacts", &me.token).await?;
    ensure!(status == StatusCode::OK, "{status} {body}");
    Ok(serde_json::from_value(body["contacts"].clone())?)
}

fn shown(p: &Presence) -> bool {
    p.online.is_some()
}

async fn the_contact_list_api(backend: Backend) -> Result<()> {
    let server = Server::start(backend).await?;
    let alice = server.register("alice").await?;
    let bob = server.register("bob").await?;
    let carol = server.register("carol").await?;
    ensure!(list(&server, &alice).await?.is_empty());

    add(&server, &alice, &carol).await?;
    add(&server, &alice, &bob).await?;
    add(&server, &alice, &bob).await?; // again: nothing changes
    let (status, body) = contact(&server, Method::PUT, &alice, "@zed:far.example").await?;
    ensure!(status == StatusCode::NO_CONTENT, "{status} {body}");
    assert_eq!(
        list(&server, &alice).await?,
        vec![
            bob.user_id.to_string(),
            carol.user_id.to_string(),
            "@zed:far.example".to_owned()
        ]
    );
    // Private to its owner: bob's list is his own (empty).
    ensure!(list(&server, &bob).await?.is_empty());

    remove(&server, &alice, &carol).await?;
    remove(&server, &alice, &carol).await?; // not listed: still 204
    let (status, _) = contact(&server, Method::DELETE, &alice, "@zed:far.example").await?;
    ensure!(status == StatusCode::NO_CONTENT);
    assert_eq!(list(&server, &alice).await?, vec![bob.user_id.to_string()]);

    // Bad input changes nothing.
    let (status, body) = contact(&server, Method::PUT, &alice, alice.user_id.as_str()).await?;
    ensure!(
        status == StatusCode::BAD_REQUEST && body["error"] == "invalid_param",
        "{status} {body}"
    );
    let nobody = format!("@nobody:{}", server.name());
    let (status, body) = contact(&server, Method::PUT, &alice, &nobody).await?;
    ensure!(
        status == StatusCode::NOT_FOUND && body["error"] == "unknown_user",
        "{status} {body}"
    );
    let (status, body) = contact(&server, Method::PUT, &alice, "not-a-user").await?;
    ensure!(status == StatusCode::BAD_REQUEST, "{status} {body}");
    let (status, _) = server
        .request(Method::GET, "/v1/contacts", None, None)
        .await?;
    ensure!(status == StatusCode::UNAUTHORIZED, "{status}");
    assert_eq!(list(&server, &alice).await?, vec![bob.user_id.to_string()]);
    Ok(())
}

async fn contacts_decide_who_sees_last_seen(backend: Backend) -> Result<()> {
    let server = Server::start_with_config(backend, CONFIG).await?;
    let alice = server.register("alice").await?;
    let bob = server.register("bob").await?;
    let carol = server.register("carol").await?;
    let dave = server.register("dave").await?;
    // bob and carol both share a chat with alice; dave shares none.
    server.create_chat(&alice, &[&bob]).await?;
    server.create_chat(&alice, &[&carol]).await?;
    add(&server, &alice, &bob).await?;
    set_privacy(&server, &alice, "contacts").await?;

    // alice comes online: bob (a contact) gets the frame; carol (a chat, no contact)
    // does not.
    let mut bob_ws = present(&server, &bob).await?;
    let mut carol_ws = present(&server, &carol).await?;
    let alice_ws = present(&server, &alice).await?;
    let p = presence_of(&mut bob_ws, &alice, Duration::from_secs(5)).await?;
    assert_eq!(p.online, Some(true));
    no_presence_of(&mut carol_ws, &alice, Duration::from_millis(800)).await?;
    ensure!(shown(&get_presence(&server, &bob, &alice).await?));
    ensure!(!shown(&get_presence(&server, &carol, &alice).await?));
    ensure!(!shown(&get_presence(&server, &dave, &alice).await?));

    // Removing bob hides her from him again: queries and frames.
    remove(&server, &alice, &bob).await?;
    ensure!(!shown(&get_presence(&server, &bob, &alice).await?));
    // Adding carol shows her to carol at once (her current state is re-sent).
    add(&server, &alice, &carol).await?;
    let p = presence_of(&mut carol_ws, &alice, Duration::from_secs(5)).await?;
    assert_eq!(p.online, Some(true));
    ensure!(shown(&get_presence(&server, &carol, &alice).await?));
    alice_ws.close().await?;
    // (The add may have re-sent her state twice: what carol sees change is offline.)
    let p = presence_change(&mut carol_ws, &alice, true, Duration::from_secs(5)).await?;
    assert_eq!(p.online, Some(false));
    no_presence_of(&mut bob_ws, &alice, Duration::from_millis(800)).await?;

    // Reciprocal: with `contacts` alice sees only whom she lists. dave shows his to
    // everyone, yet alice sees it only once she lists him.
    let _dave_ws = present(&server, &dave).await?;
    ensure!(!shown(&get_presence(&server, &alice, &dave).await?));
    ensure!(shown(&get_presence(&server, &bob, &dave).await?));
    add(&server, &alice, &dave).await?;
    ensure!(shown(&get_presence(&server, &alice, &dave).await?));
    // Listing someone does not show you theirs against their setting.
    set_privacy(&server, &dave, "contacts").await?;
    ensure!(!shown(&get_presence(&server, &alice, &dave).await?));
    add(&server, &dave, &alice).await?;
    ensure!(shown(&get_presence(&server, &alice, &dave).await?));
    // Hiding hers hides everyone's from her, contacts included.
    set_privacy(&server, &alice, "nobody").await?;
    ensure!(!shown(&get_presence(&server, &alice, &dave).await?));
    ensure!(!shown(&get_presence(&server, &dave, &alice).await?));
    Ok(())
}

/// No presence frame about `who` within `d` (others, e.g. about bob, may come).
async fn no_presence_of(ws: &mut Ws, who: &User, d: Duration) -> Result<()> {
    let deadline = tokio::time::Instant::now() + d;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match ws.next_within(left).await? {
            Some(ServerFrame::Presence { presence }) if presence.user_id == who.user_id => {
                bail!("unexpected {presence:?}")
            }
            Some(_) => {}
            None => return Ok(()),
        }
    }
}

/// Polls `viewer`'s view of `target` on `server` until `want(view)`.
async fn until_view(
    server: &Server,
    viewer: &User,
    target: &User,
    want: impl Fn(&Presence) -> bool,
) -> Result<Presence> {
    let mut last = None;
    for _ in 0..200 {
        let p = get_presence(server, viewer, target).await?;
        if want(&p) {
            return Ok(p);
        }
        last = Some(p);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!(
        "{}'s view of {} stayed {last:?}",
        viewer.user_id,
        target.user_id
    )
}

async fn a_remote_contact_sees_last_seen(backend: Backend) -> Result<()> {
    let a = Server::start_peer(backend, "127.0.0.1", "").await?;
    let b = Server::start_peer(backend, "127.0.0.2", "").await?;
    let alice = a.register("alice").await?;
    let bob = b.register("bob").await?;
    let carol = b.register("carol").await?;
    // One group of the three: bob and carol both share a chat with alice.
    let chat = a.create_chat(&alice, &[&bob, &carol]).await?;
    wait_listed(&b, &bob, &chat).await?;
    wait_listed(&b, &carol, &chat).await?;
    add(&a, &alice, &bob).await?;
    set_privacy(&a, &alice, "contacts").await?;

    // alice comes online on A: bob on B (her contact) sees it, carol on B does not.
    let mut bob_ws = present(&b, &bob).await?;
    let mut carol_ws = present(&b, &carol).await?;
    let _alice_ws = present(&a, &alice).await?;
    let p = presence_of(&mut bob_ws, &alice, Duration::from_secs(10)).await?;
    assert_eq!(p.online, Some(true));
    no_presence_of(&mut carol_ws, &alice, Duration::from_millis(1_500)).await?;
    ensure!(get_presence(&b, &bob, &alice).await?.online == Some(true));
    ensure!(!shown(&get_presence(&b, &carol, &alice).await?));

    // bob's own side of the rule applies on B: with `contacts` he sees her only if he
    // lists her.
    set_privacy(&b, &bob, "contacts").await?;
    ensure!(!shown(&get_presence(&b, &bob, &alice).await?));
    let (status, body) = contact(&b, Method::PUT, &bob, alice.user_id.as_str()).await?;
    ensure!(status == StatusCode::NO_CONTENT, "{status} {body}");
    ensure!(shown(&get_presence(&b, &bob, &alice).await?));

    // alice removes bob: A tells B, and bob no longer sees her.
    remove(&a, &alice, &bob).await?;
    until_view(&b, &bob, &alice, |p| !shown(p)).await?;
    // She adds him back: visible again.
    add(&a, &alice, &bob).await?;
    until_view(&b, &bob, &alice, shown).await?;
    // She hides hers from everyone: B forgets it.
    set_privacy(&a, &alice, "nobody").await?;
    until_view(&b, &bob, &alice, |p| !shown(p)).await?;
    Ok(())
}
