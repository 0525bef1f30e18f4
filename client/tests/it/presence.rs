//! Presence, typing, privacy and pushers through the SDK and the `parley` CLI, against a
//! real homeserver process.

use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use parley_client::{Event, Presence, Visibility};
use tokio::sync::broadcast;

use crate::harness::{Backend, PASSWORD, Server, eventually};

crate::on_both_backends!(presence_typing_privacy_and_pushers);

const PARLEY: &str = env!("CARGO_BIN_EXE_parley");

/// Waits for the first event `pick` accepts.
async fn wait_for<T>(
    events: &mut broadcast::Receiver<Event>,
    what: &str,
    mut pick: impl FnMut(Event) -> Option<T>,
) -> Result<T> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(left, events.recv()).await {
            Err(_) => bail!("timed out waiting for {what}"),
            Ok(Err(broadcast::error::RecvError::Lagged(_))) => {}
            Ok(Err(e)) => bail!("{what}: {e}"),
            Ok(Ok(e)) => {
                if let Some(t) = pick(e) {
                    return Ok(t);
                }
            }
        }
    }
}

async fn presence_typing_privacy_and_pushers(backend: Backend) -> Result<()> {
    let conf = tempfile::tempdir()?;
    let path = conf.path().join("server.toml");
    std::fs::write(
        &path,
        "[presence]\nheartbeat_timeout_ms = 1500\n[push]\nallow_insecure = true\n",
    )?;
    let server = Server::start_with(backend, &["--config", path.to_str().context("path")?]).await?;
    let alice = server.register("alice").await?;
    let mut bob = server.register("bob").await?;
    alice.online().await?;
    bob.online().await?;
    let chat = alice.client.create_chat(bob.user()).await?;
    bob.joined(&chat).await?;

    // Alice's app is connected but in the background (no heartbeats): she goes
    // offline after the timeout. Bob's app is in the foreground.
    let alice_id = alice.user().clone();
    bob.client.set_present(true);
    eventually("alice shows offline", || async {
        Ok(bob.client.presence(&alice_id).await?.online == Some(false))
    })
    .await?;
    // Alice's app comes to the foreground: bob sees her online.
    alice.client.set_present(true);
    let p: Presence = wait_for(&mut bob.events, "alice online", |e| match e {
        Event::Presence(p) if p.user_id == alice_id && p.online == Some(true) => Some(p),
        _ => None,
    })
    .await?;
    ensure!(p.last_seen.is_some());
    ensure!(bob.client.presence(&alice_id).await?.online == Some(true));

    // Typing shows on bob's side with alice's device.
    alice.client.typing(&chat, true);
    let (device, typing) = wait_for(&mut bob.events, "alice typing", |e| match e {
        Event::Typing {
            chat_id,
            user_id,
            device_id,
            typing,
        } if chat_id == chat && user_id == alice_id => Some((device_id, typing)),
        _ => None,
    })
    .await?;
    ensure!(typing && device.as_ref() == Some(alice.client.device_id()));
    alice.client.typing(&chat, false);
    wait_for(&mut bob.events, "alice stopped typing", |e| match e {
        Event::Typing {
            user_id, typing, ..
        } if user_id == alice_id && !typing => Some(()),
        _ => None,
    })
    .await?;

    // Alice's app goes to the background: heartbeats stop, she goes offline.
    alice.client.set_present(false);
    let p = wait_for(&mut bob.events, "alice offline", |e| match e {
        Event::Presence(p) if p.user_id == alice_id && p.online == Some(false) => Some(p),
        _ => None,
    })
    .await?;
    ensure!(p.last_seen.is_some(), "{p:?}");

    // Privacy: alice hides her last seen.
    ensure!(alice.client.privacy().await? == Visibility::Everyone);
    ensure!(alice.client.set_privacy(Visibility::Nobody).await? == Visibility::Nobody);
    let seen = bob.client.presence(&alice_id).await?;
    ensure!(
        seen.online.is_none() && seen.last_seen.is_none(),
        "{seen:?}"
    );
    let seen = alice.client.presence(bob.user()).await?;
    ensure!(seen.online.is_none(), "reciprocal: {seen:?}");

    // Contacts: bob's list, through the SDK.
    ensure!(bob.client.contacts().await?.is_empty());
    bob.client.add_contact(&alice_id).await?;
    bob.client.add_contact(&alice_id).await?;
    ensure!(bob.client.contacts().await? == vec![alice_id.clone()]);
    bob.client.remove_contact(&alice_id).await?;
    ensure!(bob.client.contacts().await?.is_empty());

    // Pushers.
    let url = "http://127.0.0.1:9/_parley/push/v1/notify";
    let p = bob.client.add_pusher(url, "tok-bob").await?;
    ensure!(p.device_id == *bob.client.device_id() && p.url == url);
    ensure!(bob.client.pushers().await?.len() == 1);
    bob.client.remove_pusher(bob.client.device_id()).await?;
    ensure!(bob.client.pushers().await?.is_empty());

    // The CLI, on alice's profile (her SDK client is shut down first: one user of a
    // profile at a time).
    let profile = alice.dir.path().to_owned();
    alice.client.shutdown().await;
    let run = |args: &[&str]| -> Result<String> {
        let out = Command::new(PARLEY)
            .arg("--profile")
            .arg(&profile)
            .args(args)
            .env("PARLEY_PASSWORD", PASSWORD)
            .env_remove("PARLEY_LOG")
            .output()?;
        ensure!(
            out.status.success(),
            "parley {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    ensure!(run(&["privacy", "last-seen"])?.contains("last seen: nobody"));
    ensure!(run(&["privacy", "last-seen", "contacts"])?.contains("last seen: contacts"));
    // With `contacts` alice sees only whom she lists.
    let out = run(&["presence", bob.user().as_str()])?;
    ensure!(out.contains("not shown to you"), "{out}");
    ensure!(run(&["contacts", "add", bob.user().as_str()])?.contains("added"));
    ensure!(run(&["contacts", "list"])?.contains(bob.user().as_str()));
    let out = run(&["presence", bob.user().as_str()])?;
    ensure!(
        out.contains(bob.user().as_str()) && out.contains("online"),
        "{out}"
    );
    let out = run(&["typing", chat.as_str()])?;
    ensure!(out.contains("typing in"), "{out}");
    wait_for(&mut bob.events, "typing from the CLI", |e| match e {
        Event::Typing {
            user_id, typing, ..
        } if user_id == alice_id && typing => Some(()),
        _ => None,
    })
    .await?;
    ensure!(run(&["pusher", "add", url, "tok-alice"])?.contains("pusher for device"));
    ensure!(run(&["pusher", "list"])?.contains(url));
    Ok(())
}
