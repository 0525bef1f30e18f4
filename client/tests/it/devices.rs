//! KeyPackages (upload, claim, top-up) and device removal.

use anyhow::{Result, ensure};
use parley_client::{ConnectionState, Event};

use crate::harness::{Backend, Server, drain, eventually};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_packages_are_uploaded_claimed_and_topped_up() -> Result<()> {
    let server = Server::start(Backend::Sqlite).await?;
    let alice = server.register("alice").await?;
    let bob = server.register("bob").await?;
    // The test configuration keeps 6 one-time KeyPackages and a last-resort one.
    let count = alice.client.key_package_count().await?;
    ensure!(count.one_time == 6 && count.has_last_resort, "{count:?}");

    // Each claim takes one (validated: it names alice's device).
    for _ in 0..4 {
        let claimed = bob.client.claim_key_packages(alice.user()).await?;
        ensure!(claimed.len() == 1 && claimed[0].device_id == *alice.client.device_id());
        ensure!(!claimed[0].last_resort);
    }
    ensure!(alice.client.key_package_count().await?.one_time == 2);
    // Fewer than half left: the top-up (also run when the client syncs) refills.
    let count = alice.client.top_up_key_packages().await?;
    ensure!(count.one_time == 6 && count.has_last_resort, "{count:?}");
    // More than half left: nothing to do.
    bob.client.claim_key_packages(alice.user()).await?;
    ensure!(alice.client.top_up_key_packages().await?.one_time == 5);

    // Exhausted: the claim hands out the last-resort one, which stays.
    for _ in 0..5 {
        bob.client.claim_key_packages(alice.user()).await?;
    }
    let claimed = bob.client.claim_key_packages(alice.user()).await?;
    ensure!(claimed.len() == 1 && claimed[0].last_resort);
    // Connecting tops up by itself.
    alice.online().await?;
    eventually("alice's client refills its key packages", || async {
        Ok(alice.client.key_package_count().await?.one_time == 6)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_device_leaves_the_chats() -> Result<()> {
    let server = Server::start(Backend::Sqlite).await?;
    let mut alice = server.register("alice").await?;
    let bob = server.register("bob").await?;
    let alice2 = server.link("alice", &alice).await?;
    for d in [&alice, &bob, &alice2] {
        d.online().await?;
    }
    let chat = alice.client.create_chat(bob.user()).await?;
    for d in [&alice, &bob, &alice2] {
        d.joined(&chat).await?;
    }
    let devices = alice.client.devices().await?;
    ensure!(devices.len() == 2);
    drain(&mut alice.events);

    // Alice removes her second device: the server logs it out, and her first device
    // commits its removal from the chat's group.
    alice
        .client
        .remove_device(alice2.client.device_id())
        .await?;
    let mut state = alice2.client.connection();
    eventually("the removed device is logged out", || {
        let s = *state.borrow_and_update();
        async move { Ok(s == ConnectionState::LoggedOut) }
    })
    .await?;
    let removed_device = alice2.client.device_id().clone();
    let mut removed = false;
    eventually("alice's group drops the device", || {
        for e in drain(&mut alice.events) {
            if let Event::MembersChanged { removed: r, .. } = e {
                removed |= r.iter().any(|(_, d)| *d == removed_device);
            }
        }
        async move { Ok(removed) }
    })
    .await?;
    ensure!(alice.client.devices().await?.len() == 1);

    // The chat goes on between the remaining devices.
    let m = bob.client.send_text(&chat, "after the removal").await?;
    alice.received(&chat, "after the removal").await?;
    bob.state(&chat, &m.id, parley_client::MessageState::Delivered)
        .await?;
    alice.client.send_text(&chat, "still here").await?;
    bob.received(&chat, "still here").await?;
    Ok(())
}
