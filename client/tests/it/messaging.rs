//! Replies, reactions, edits and deletes through real homeservers and real MLS
//! (spec/messaging.md MS1–MS12): every member's devices see the same, a forged edit or
//! delete by another member is ignored everywhere, an action that arrives before its
//! message waits for it, and the SDK refuses what the rules forbid with a clear error.

use anyhow::{Context, Result, ensure};
use parley_client::{ChatId, Error, Message, Reaction, store::DELETED_BODY};
use parley_crypto::{Content, Envelope, MessageId, ReactionAction};

use crate::harness::{Backend, Device, Server, eventually, users};

crate::on_both_backends!(
    replies_reactions_edits_and_deletes_in_a_group,
    across_two_servers
);

/// Waits until `d` has message `id` and `check` holds for it.
async fn until<F>(d: &Device, chat: &ChatId, id: &str, what: &str, check: F) -> Result<Message>
where
    F: Fn(&Message, &[Reaction]) -> bool,
{
    let desc = format!("{} sees {id} {what}", d.user());
    eventually(&desc, || async {
        let Some(m) = d.client.store().message(chat, id).await? else {
            return Ok(false);
        };
        let r = d.client.store().reactions(chat, id).await?;
        Ok(check(&m, &r))
    })
    .await?;
    d.client
        .store()
        .message(chat, id)
        .await?
        .context("vanished")
}

fn invalid(r: parley_client::Result<impl std::fmt::Debug>, want: &str) -> Result<()> {
    match r {
        Err(Error::Invalid(m)) if m.contains(want) => Ok(()),
        other => anyhow::bail!("expected Invalid({want:?}), got {other:?}"),
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn reacted(r: &[Reaction], user: &parley_client::UserId, emoji: &str) -> bool {
    r.iter().any(|x| &x.user_id == user && x.emoji == emoji)
}

async fn replies_reactions_edits_and_deletes_in_a_group(backend: Backend) -> Result<()> {
    let server = Server::start(backend).await?;
    let alice = server.register("alice").await?;
    let bob = server.register("bob").await?;
    let carol = server.register("carol").await?;
    for d in [&alice, &bob, &carol] {
        d.online().await?;
    }
    let chat = alice
        .client
        .create_group("Everyday", &users(&[&bob, &carol]))
        .await?;
    for d in [&bob, &carol] {
        d.joined(&chat).await?;
    }
    let alice2 = server.link("alice", &alice).await?;
    alice2.online().await?;
    alice.client.refresh_devices().await?;
    alice2.joined(&chat).await?;
    let all = [&alice, &alice2, &bob, &carol];

    // A message, and a reply quoting it (MS3).
    let hello = alice.client.send_text(&chat, "hello").await?;
    for d in &all[1..] {
        d.received(&chat, "hello").await?;
    }
    let reply = bob.client.reply(&chat, &hello.id, "hi back").await?;
    for d in all {
        let m = d.received(&chat, "hi back").await?;
        ensure!(
            m.reply_to.as_deref() == Some(hello.id.as_str()) && m.kind == "reply",
            "{m:?}"
        );
    }

    // Reactions: one per member, a new one replaces the old, one can be taken back
    // (MS4).
    bob.client.react(&chat, &hello.id, "👍").await?;
    carol.client.react(&chat, &hello.id, "🎉").await?;
    bob.client.react(&chat, &hello.id, "❤️").await?;
    for d in all {
        until(d, &chat, &hello.id, "with two reactions", |_, r| {
            r.len() == 2 && reacted(r, bob.user(), "❤️") && reacted(r, carol.user(), "🎉")
        })
        .await?;
    }
    carol.client.unreact(&chat, &hello.id, "🎉").await?;
    for d in all {
        until(d, &chat, &hello.id, "with bob's reaction only", |_, r| {
            r.len() == 1 && reacted(r, bob.user(), "❤️")
        })
        .await?;
    }

    // An edit by the sender, from her other device: every device shows the new text
    // and keeps both versions (MS5).
    alice2
        .client
        .edit(&chat, &hello.id, "hello everyone")
        .await?;
    for d in all {
        let m = until(d, &chat, &hello.id, "edited", |m, _| {
            m.body == "hello everyone"
        })
        .await?;
        ensure!(m.edited_at.is_some(), "{m:?}");
        let versions: Vec<String> = d
            .client
            .store()
            .edits(&chat, &hello.id)
            .await?
            .into_iter()
            .map(|v| v.text)
            .collect();
        ensure!(versions == ["hello", "hello everyone"], "{versions:?}");
    }

    // What the SDK refuses (MS9): someone else's message, unknown ids, bad reactions.
    invalid(
        bob.client.edit(&chat, &hello.id, "mine now").await,
        "only the sender",
    )?;
    invalid(
        bob.client.delete_for_everyone(&chat, &hello.id).await,
        "only the sender",
    )?;
    invalid(
        bob.client.react(&chat, "no-such-id", "👍").await,
        "no message",
    )?;
    invalid(bob.client.react(&chat, &hello.id, "ok").await, "emoji")?;
    invalid(bob.client.edit(&chat, &reply.id, "").await, "empty")?;
    invalid(
        bob.client.reply(&chat, "no-such-id", "to nothing").await,
        "no message",
    )?;

    // A member forging an edit and a delete of alice's message (a client that skips
    // the checks): every device ignores them, the forger's too (MS7).
    let target = MessageId::try_from(hello.id.as_str())?;
    for content in [
        Content::Edit {
            target: target.clone(),
            text: "forged".into(),
        },
        Content::Delete {
            target: target.clone(),
        },
    ] {
        carol
            .client
            .send_envelope(&chat, &Envelope::new(now(), content))
            .await?;
    }
    carol.client.send_text(&chat, "after the forgery").await?;
    for d in all {
        d.received(&chat, "after the forgery").await?;
        eventually("carol's outbox is empty", || async {
            Ok(carol.client.store().outbox_len().await? == 0)
        })
        .await?;
        let m = d
            .client
            .store()
            .message(&chat, &hello.id)
            .await?
            .context("gone")?;
        ensure!(
            m.body == "hello everyone" && !m.deleted,
            "{}: {m:?}",
            d.user()
        );
    }

    // An action before its message (a client that sends them out of order): kept, then
    // applied when the message arrives (MS8).
    let early = MessageId::try_from("early-message-1")?;
    bob.client
        .send_envelope(
            &chat,
            &Envelope::new(
                now(),
                Content::Reaction {
                    target: early.clone(),
                    emoji: "🔥".into(),
                    action: ReactionAction::Add,
                },
            ),
        )
        .await?;
    bob.client
        .send_envelope(
            &chat,
            &Envelope {
                id: early.clone(),
                sent_at_ms: now(),
                expires_in: None,
                content: Content::Text {
                    text: "sent after its reaction".into(),
                },
            },
        )
        .await?;
    for d in [&alice, &alice2, &carol] {
        until(
            d,
            &chat,
            early.as_str(),
            "with its early reaction",
            |_, r| reacted(r, bob.user(), "🔥"),
        )
        .await?;
        ensure!(d.client.store().pending_actions(&chat).await? == 0);
    }

    // Delete for everyone: a tombstone on every device, reactions and versions gone
    // (MS6); nothing more can be done to it.
    alice.client.delete_for_everyone(&chat, &hello.id).await?;
    for d in all {
        let m = until(d, &chat, &hello.id, "deleted", |m, _| m.deleted).await?;
        ensure!(m.body == DELETED_BODY, "{m:?}");
        ensure!(
            d.client
                .store()
                .reactions(&chat, &hello.id)
                .await?
                .is_empty()
        );
        ensure!(d.client.store().edits(&chat, &hello.id).await?.is_empty());
    }
    invalid(bob.client.react(&chat, &hello.id, "👍").await, "deleted")?;
    invalid(
        alice.client.edit(&chat, &hello.id, "back again").await,
        "deleted",
    )?;

    // Delete for me: gone from this device only (MS10).
    bob.client.delete_for_me(&chat, &reply.id).await?;
    ensure!(
        bob.client
            .store()
            .message(&chat, &reply.id)
            .await?
            .is_none()
    );
    ensure!(!bob.history(&chat).await?.iter().any(|m| m.id == reply.id));
    ensure!(
        alice
            .client
            .store()
            .message(&chat, &reply.id)
            .await?
            .is_some()
    );
    invalid(
        bob.client.delete_for_me(&chat, &reply.id).await,
        "no message",
    )?;
    Ok(())
}

async fn across_two_servers(backend: Backend) -> Result<()> {
    let a = Server::start_peer(backend, "127.0.0.2", "").await?;
    let b = Server::start_peer(backend, "127.0.0.3", "").await?;
    let alice = a.register("alice").await?;
    let bob = b.register("bob").await?;
    alice.online().await?;
    bob.online().await?;
    // Bob's server is the hub this time: alice's actions travel as forwarded sends.
    let chat = bob.client.create_chat(alice.user()).await?;
    alice.joined(&chat).await?;

    let m = bob.client.send_text(&chat, "across servers").await?;
    alice.received(&chat, "across servers").await?;
    let r = alice.client.reply(&chat, &m.id, "got it").await?;
    let got = bob.received(&chat, "got it").await?;
    ensure!(got.reply_to.as_deref() == Some(m.id.as_str()));
    alice.client.react(&chat, &m.id, "👍").await?;
    bob.client.edit(&chat, &m.id, "across two servers").await?;
    for d in [&alice, &bob] {
        until(d, &chat, &m.id, "edited, with alice's reaction", |m, r| {
            m.body == "across two servers" && reacted(r, alice.user(), "👍")
        })
        .await?;
    }
    alice.client.delete_for_everyone(&chat, &r.id).await?;
    for d in [&alice, &bob] {
        until(d, &chat, &r.id, "deleted", |m, _| m.deleted).await?;
    }
    Ok(())
}

const PARLEY: &str = env!("CARGO_BIN_EXE_parley");

fn parley(profile: &std::path::Path, args: &[&str]) -> Result<std::process::Output> {
    std::process::Command::new(PARLEY)
        .arg("--profile")
        .arg(profile)
        .args(args)
        .env("PARLEY_PASSWORD", crate::harness::PASSWORD)
        .env_remove("PARLEY_LOG")
        .output()
        .context("running parley")
}

fn ok(out: std::process::Output) -> Result<String> {
    ensure!(
        out.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `parley reply|react|edit|delete` and what `listen` and `history` show of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_reply_react_edit_delete() -> Result<()> {
    let server = Server::start(Backend::Sqlite).await?;
    let url = server.url();
    let dirs = tempfile::tempdir()?;
    let (a, b) = (dirs.path().join("a"), dirs.path().join("b"));
    ok(parley(&a, &["register", "alice", "--server", &url])?)?;
    ok(parley(&b, &["register", "bob", "--server", &url])?)?;
    ok(parley(&a, &["chat", "new", "@bob:parley.test"])?)?;
    let sent = ok(parley(&a, &["send", "@bob:parley.test", "hello", "bob"])?)?;
    let id = sent.split_whitespace().nth(1).context("no id")?.to_owned();

    let out = ok(parley(&b, &["react", "@alice:parley.test", &id, "👍"])?)?;
    ensure!(out.contains(&format!("reacted 👍 to {id}")), "{out}");
    let out = ok(parley(
        &b,
        &["reply", "@alice:parley.test", &id, "hi", "alice"],
    )?)?;
    let reply_id = out.split_whitespace().nth(1).context("no id")?.to_owned();
    // Clear errors for what the rules forbid.
    let out = parley(&b, &["edit", "@alice:parley.test", &id, "mine"])?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success() && err.contains("only the sender"),
        "{err}"
    );
    let out = parley(&b, &["react", "@alice:parley.test", "nope", "👍"])?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(!out.status.success() && err.contains("no message"), "{err}");

    // Bob listens while alice edits and deletes.
    let listen = std::process::Command::new("timeout")
        .args(["12", PARLEY, "--profile"])
        .arg(&b)
        .arg("listen")
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let out = ok(parley(
        &a,
        &["edit", "@bob:parley.test", &id, "hello", "bob,", "edited"],
    )?)?;
    ensure!(out.contains(&format!("edited {id}")), "{out}");
    let history = ok(parley(&a, &["history", "@bob:parley.test", "--edits"])?)?;
    ensure!(
        history.contains("me: hello bob, edited")
            && history.contains("(edited)")
            && history.contains("[👍 @bob:parley.test]")
            && history.contains("version: hello bob")
            && history.contains("(reply to me: hello bob, edited)"),
        "{history}"
    );
    let out = ok(parley(&a, &["delete", "@bob:parley.test", &id])?)?;
    ensure!(out.contains("for everyone"), "{out}");
    let out = ok(parley(
        &a,
        &["delete", "@bob:parley.test", &reply_id, "--for-me"],
    )?)?;
    ensure!(out.contains("from this device"), "{out}");
    let history = ok(parley(&a, &["history", "@bob:parley.test", "--ids"])?)?;
    ensure!(
        history.contains(DELETED_BODY) && !history.contains("hi alice"),
        "{history}"
    );
    let listened = listen.wait_with_output()?;
    let out = String::from_utf8_lossy(&listened.stdout);
    ensure!(
        out.contains(&format!("message {id} edited: hello bob, edited"))
            && out.contains(&format!("message {id} was deleted")),
        "{out}"
    );
    Ok(())
}
