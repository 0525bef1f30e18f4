//! Linking a device (spec/devices.md DL), removing a lost one (DR), safety numbers and
//! verified contacts (DV): real servers, real MLS, on both backends where the server
//! keeps state.

use anyhow::{Context, Result, bail, ensure};
use parley_client::{ErrorCode, Event, HistoryRange, Verification};

use crate::harness::{Backend, Device, Server, drain, eventually, users};

crate::on_both_backends!(
    a_linked_device_reads_the_old_history,
    a_lost_device_is_removed_from_a_group_across_servers,
    a_linked_device_joins_every_chat_and_contacts_see_it,
    an_expired_or_used_link_code_is_refused,
    safety_numbers_agree_and_follow_device_changes,
);

/// The server's error code of a failed SDK call.
fn err_code<T: std::fmt::Debug>(r: parley_client::Result<T>) -> Result<ErrorCode> {
    match r {
        Err(e) => e.code().with_context(|| format!("not a server error: {e}")),
        Ok(v) => bail!("expected an error, got {v:?}"),
    }
}

/// Whether `d`'s group of `chat` has a member device `device`.
async fn has_member(d: &Device, chat: &parley_client::ChatId, device: &str) -> Result<bool> {
    Ok(d.client
        .group_devices(chat)
        .await?
        .iter()
        .any(|(_, x)| x.as_str() == device))
}

async fn a_linked_device_joins_every_chat_and_contacts_see_it(backend: Backend) -> Result<()> {
    let server = Server::start(backend).await?;
    let mut alice = server.register("alice").await?;
    let mut bob = server.register("bob").await?;
    let carol = server.register("carol").await?;
    for d in [&alice, &bob, &carol] {
        d.online().await?;
    }
    let direct = alice.client.create_chat(bob.user()).await?;
    let group = alice
        .client
        .create_group("Linked", &users(&[&bob, &carol]))
        .await?;
    for d in [&bob, &carol] {
        d.joined(&group).await?;
    }
    bob.joined(&direct).await?;
    alice.client.send_text(&direct, "before the link").await?;
    bob.received(&direct, "before the link").await?;
    drain(&mut bob.events);

    // A device the server lists but nobody approved is never added by alice's devices
    // (DL7): the server cannot join her chats by making up a device.
    let rogue = server.login("alice").await?;
    rogue.online().await?;
    alice.client.refresh_devices().await?;

    // The new device shows its code; a wrong code (same link id, another secret, as a
    // server would have to guess) is refused and changes nothing.
    let new = server.login("alice").await?;
    new.online().await?;
    let link = new.client.start_link().await?;
    let code = link.code();
    ensure!(code.len() == 29 && code.split('-').count() == 6, "{code}");
    ensure!(link.qr_payload().starts_with("parley-link:1:"));
    let mut wrong: Vec<char> = code.chars().collect();
    let last = wrong.len() - 1;
    wrong[last] = if wrong[last] == 'A' { 'B' } else { 'A' };
    let wrong: String = wrong.into_iter().collect();
    let e = alice
        .client
        .approve_link(&wrong, HistoryRange::Nothing)
        .await
        .unwrap_err();
    ensure!(e.to_string().contains("does not match"), "{e}");

    // The right code: alice's device approves, trusts the new device and adds it to
    // both chats (one commit per chat); the new device checks who approved it.
    let approved = alice
        .client
        .approve_link(&code, HistoryRange::Nothing)
        .await?;
    ensure!(approved.device_id == *new.client.device_id());
    let linked = new
        .client
        .wait_for_approval(link, crate::harness::WAIT)
        .await?;
    ensure!(linked.approved_by == *alice.client.device_id());
    new.joined(&direct).await?;
    new.joined(&group).await?;

    // Bob sees "a new device was added" for alice.
    let new_id = new.client.device_id().clone();
    let mut seen = false;
    eventually("bob sees alice's new device", || {
        for e in drain(&mut bob.events) {
            if let Event::MembersChanged { added, .. } = e {
                seen |= added.iter().any(|(u, d)| u == alice.user() && *d == new_id);
            }
        }
        async move { Ok(seen) }
    })
    .await?;

    // Messages flow to and from the new device; the rogue one is in no chat.
    bob.client.send_text(&direct, "hello both").await?;
    new.received(&direct, "hello both").await?;
    alice.received(&direct, "hello both").await?;
    new.client.send_text(&group, "from the new device").await?;
    carol.received(&group, "from the new device").await?;
    bob.received(&group, "from the new device").await?;
    for chat in [&direct, &group] {
        ensure!(has_member(&alice, chat, new_id.as_str()).await?);
        ensure!(!has_member(&alice, chat, rogue.client.device_id().as_str()).await?);
        ensure!(
            rogue
                .client
                .store()
                .chat(chat)
                .await?
                .is_none_or(|c| !c.joined)
        );
    }
    drain(&mut alice.events);
    Ok(())
}

async fn an_expired_or_used_link_code_is_refused(backend: Backend) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("links.toml");
    std::fs::write(&config, "[limits]\nlink_ttl_secs = 2\n")?;
    let server =
        Server::start_with(backend, &["--config", config.to_str().context("path")?]).await?;
    let alice = server.register("alice").await?;
    let bob = server.register("bob").await?;
    let new = server.login("alice").await?;

    // Used once: a second approval is refused (DL4).
    let link = new.client.start_link().await?;
    let code = link.code();
    // Another user cannot see it; the new device cannot approve itself.
    ensure!(
        err_code(bob.client.approve_link(&code, HistoryRange::Nothing).await)?
            == ErrorCode::UnknownLink
    );
    ensure!(
        err_code(new.client.approve_link(&code, HistoryRange::Nothing).await)?
            == ErrorCode::Forbidden
    );
    alice
        .client
        .approve_link(&code, HistoryRange::Nothing)
        .await?;
    new.client
        .wait_for_approval(link, crate::harness::WAIT)
        .await?;
    ensure!(
        err_code(
            alice
                .client
                .approve_link(&code, HistoryRange::Nothing)
                .await
        )? == ErrorCode::LinkUsed
    );

    // Expired (DL2): nobody approves, so the new device's wait ends with the link's
    // expiry; an approval after it is refused.
    let newer = server.login("alice").await?;
    let link = newer.client.start_link().await?;
    let code = link.code();
    ensure!(
        err_code(
            newer
                .client
                .wait_for_approval(link, crate::harness::WAIT)
                .await
        )? == ErrorCode::LinkExpired
    );
    ensure!(
        err_code(
            alice
                .client
                .approve_link(&code, HistoryRange::Nothing)
                .await
        )? == ErrorCode::LinkExpired
    );
    Ok(())
}

async fn safety_numbers_agree_and_follow_device_changes(backend: Backend) -> Result<()> {
    let server = Server::start(backend).await?;
    let alice = server.register("alice").await?;
    let mut bob = server.register("bob").await?;
    for d in [&alice, &bob] {
        d.online().await?;
    }
    let chat = alice.client.create_chat(bob.user()).await?;
    bob.joined(&chat).await?;

    // The same number on both sides (DV1).
    let a = alice.client.safety_number(bob.user()).await?;
    let b = bob.client.safety_number(alice.user()).await?;
    ensure!(a.number == b.number, "{} vs {}", a.number, b.number);
    ensure!(a.number.split(' ').count() == 12 && a.number.len() == 71);
    ensure!(a.qr_payload == b.qr_payload && a.qr_payload.ends_with(&a.number.replace(' ', "")));
    ensure!(b.verification == Verification::Unverified);
    let marked = bob.client.mark_verified(alice.user()).await?;
    ensure!(marked.verification == Verification::Verified);
    ensure!(bob.client.verification(alice.user()).await? == Verification::Verified);

    // Alice links a device: the number changes, the same on both sides, and bob's
    // verification of alice says so (DV4).
    let alice2 = server.link("alice", &alice).await?;
    alice2.online().await?;
    alice2.joined(&chat).await?;
    let b_id = alice2.client.device_id().clone();
    eventually("bob's group has alice's new device", || async {
        has_member(&bob, &chat, b_id.as_str()).await
    })
    .await?;
    let a2 = alice.client.safety_number(bob.user()).await?;
    let b2 = bob.client.safety_number(alice.user()).await?;
    ensure!(a2.number == b2.number && a2.number != a.number);
    ensure!(b2.their_devices == 2 && b2.own_devices == 1);
    ensure!(b2.verification == Verification::Changed);
    ensure!(bob.client.verification(alice.user()).await? == Verification::Changed);

    // The next message from alice comes with a warning first.
    drain(&mut bob.events);
    alice.client.send_text(&chat, "new phone").await?;
    bob.received(&chat, "new phone").await?;
    let events = drain(&mut bob.events);
    let warn = events.iter().position(
        |e| matches!(e, Event::VerificationWarning { user_id, .. } if user_id == alice.user()),
    );
    let msg = events
        .iter()
        .position(|e| matches!(e, Event::MessageReceived(m) if m.body == "new phone"));
    ensure!(
        matches!((warn, msg), (Some(w), Some(m)) if w < m),
        "{events:?}"
    );
    // Verified again: no warning any more.
    bob.client.mark_verified(alice.user()).await?;
    alice.client.send_text(&chat, "all good").await?;
    bob.received(&chat, "all good").await?;
    ensure!(
        !drain(&mut bob.events)
            .iter()
            .any(|e| matches!(e, Event::VerificationWarning { .. }))
    );

    // A safety number needs a shared chat.
    let carol = server.register("carol").await?;
    let e = alice.client.safety_number(carol.user()).await.unwrap_err();
    ensure!(e.to_string().contains("share no chat"), "{e}");
    Ok(())
}

async fn a_linked_device_reads_the_old_history(backend: Backend) -> Result<()> {
    let server = Server::start(backend).await?;
    let alice = server.register("alice").await?;
    let bob = server.register("bob").await?;
    for d in [&alice, &bob] {
        d.online().await?;
    }
    let chat = alice.client.create_chat(bob.user()).await?;
    bob.joined(&chat).await?;
    let texts = ["the old days", "were good", "and long"];
    for (i, t) in texts.iter().enumerate() {
        if i % 2 == 0 {
            alice.client.send_text(&chat, t).await?;
        } else {
            bob.client.send_text(&chat, t).await?;
        }
        alice.received(&chat, t).await?;
    }

    // Linked with all history: the old conversation is there, in order, and the chat
    // goes on (DL9).
    let new = server.login("alice").await?;
    new.online().await?;
    let link = new.client.start_link().await?;
    let approved = alice
        .client
        .approve_link(&link.code(), HistoryRange::All)
        .await?;
    ensure!(approved.history.as_ref().is_some_and(|h| h.messages == 3));
    let linked = new
        .client
        .wait_for_approval(link, crate::harness::WAIT)
        .await?;
    let imported = linked.history.context("no history came")?;
    ensure!(
        imported.messages == 3 && imported.messages_added == 3,
        "{imported:?}"
    );
    let mut old: Vec<String> = new
        .history(&chat)
        .await?
        .into_iter()
        .map(|m| m.body)
        .collect();
    old.sort();
    let mut want: Vec<String> = texts.iter().map(|t| (*t).to_owned()).collect();
    want.sort();
    ensure!(old == want, "{old:?}");
    new.joined(&chat).await?;
    bob.client.send_text(&chat, "welcome back").await?;
    new.received(&chat, "welcome back").await?;

    // A history blob meant for another device does not open with another key: a clear
    // error, and nothing on the device changes.
    let other = server.login("alice").await?;
    let (blob, size) = linked.history_blob.context("no blob")?;
    let e = other
        .client
        .import_history_blob(&blob, size, &parley_crypto::ArchiveKey::generate())
        .await;
    let e = match e {
        Err(e) => e,
        Ok(s) => bail!("imported {s:?}"),
    };
    ensure!(matches!(e, parley_client::Error::WrongKey), "{e}");
    ensure!(other.client.chats().await?.is_empty());
    let still: Vec<String> = new
        .history(&chat)
        .await?
        .into_iter()
        .map(|m| m.body)
        .collect();
    ensure!(still.len() == 4, "{still:?}");
    Ok(())
}

async fn a_lost_device_is_removed_from_a_group_across_servers(backend: Backend) -> Result<()> {
    let a = Server::start_peer(backend, "127.0.0.2", "").await?;
    let b = Server::start_peer(backend, "127.0.0.3", "").await?;
    let alice = a.register("alice").await?;
    let bob = b.register("bob").await?;
    let lost = a.link("alice", &alice).await?;
    for d in [&alice, &bob, &lost] {
        d.online().await?;
    }
    // A group hubbed on bob's server, with alice's two devices.
    let group = bob.client.create_group("Across", &users(&[&alice])).await?;
    for d in [&alice, &lost] {
        d.joined(&group).await?;
    }
    bob.client.send_text(&group, "before").await?;
    lost.received(&group, "before").await?;

    // Alice removes the lost device from her other device (DR1, DR2): it is logged out
    // and a commit takes it out of the group; it receives nothing more.
    alice.client.remove_device(lost.client.device_id()).await?;
    let lost_id = lost.client.device_id().clone();
    eventually("bob's group drops the lost device", || async {
        Ok(!has_member(&bob, &group, lost_id.as_str()).await?)
    })
    .await?;
    bob.client.send_text(&group, "after").await?;
    alice.received(&group, "after").await?;
    ensure!(
        !lost
            .history(&group)
            .await?
            .iter()
            .any(|m| m.body == "after"),
        "the removed device read a later message"
    );
    Ok(())
}
