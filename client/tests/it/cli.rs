//! The `parley` CLI's one-shot commands and its one-line errors.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use anyhow::{Context, Result, ensure};

use crate::harness::{Backend, PASSWORD, Server};

const PARLEY: &str = env!("CARGO_BIN_EXE_parley");

fn parley(profile: &Path, args: &[&str], password: &str) -> Result<Output> {
    Command::new(PARLEY)
        .arg("--profile")
        .arg(profile)
        .args(args)
        .env("PARLEY_PASSWORD", password)
        .env_remove("PARLEY_LOG")
        .output()
        .context("running parley")
}

/// The command failed with exactly one line on stderr: `error: <want…>`.
fn fails_with(out: &Output, want: &str) -> Result<()> {
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(!out.status.success(), "succeeded; stderr: {stderr}");
    ensure!(
        stderr.lines().count() == 1 && stderr.starts_with("error: ") && stderr.contains(want),
        "expected one line `error: …{want}…`, got:\n{stderr}"
    );
    Ok(())
}

fn stdout(out: &Output) -> Result<String> {
    ensure!(
        out.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_and_clear_errors() -> Result<()> {
    let mut server = Server::start(Backend::Sqlite).await?;
    let url = server.url();
    let dirs = tempfile::tempdir()?;
    let (a, b, c) = (
        dirs.path().join("a"),
        dirs.path().join("b"),
        dirs.path().join("c"),
    );

    stdout(&parley(
        &a,
        &["register", "alice", "--server", &url],
        PASSWORD,
    )?)?;
    stdout(&parley(
        &b,
        &["register", "bob", "--server", &url],
        PASSWORD,
    )?)?;
    fails_with(
        &parley(&c, &["register", "alice", "--server", &url], PASSWORD)?,
        "that username is taken",
    )?;
    fails_with(
        &parley(
            &c,
            &["login", "alice", "--server", &url],
            "not the password",
        )?,
        "wrong username or password",
    )?;
    fails_with(
        &parley(&a, &["chat", "new", "@nobody:parley.test"], PASSWORD)?,
        "@nobody:parley.test",
    )?;
    fails_with(
        &parley(&a, &["chat", "new", "nobody"], PASSWORD)?,
        "not a user id",
    )?;
    fails_with(
        &parley(&c, &["history", "@bob:parley.test"], PASSWORD)?,
        "not logged in",
    )?;

    let chat = stdout(&parley(&a, &["chat", "new", "@bob:parley.test"], PASSWORD)?)?;
    ensure!(chat.trim().starts_with('!'));
    let sent = stdout(&parley(
        &a,
        &["send", "@bob:parley.test", "hello", "bob"],
        PASSWORD,
    )?)?;
    ensure!(sent.starts_with('✓'), "{sent}");
    let chats = stdout(&parley(&a, &["chats"], PASSWORD)?)?;
    ensure!(
        chats.contains("@bob:parley.test") && chats.contains("hello bob"),
        "{chats}"
    );
    let devices = stdout(&parley(&a, &["devices"], PASSWORD)?)?;
    ensure!(devices.contains("(this device)"), "{devices}");

    // The server is down: a clear error for what needs it, a queued send, and the
    // local history still there.
    server.stop().await?;
    fails_with(
        &parley(
            &c,
            &[
                "login",
                "alice",
                "--server",
                &format!("http://{}", server.process.addr()),
            ],
            PASSWORD,
        )?,
        "cannot reach the homeserver",
    )?;
    let queued = stdout(&parley(
        &a,
        &["send", "@bob:parley.test", "later"],
        PASSWORD,
    )?)?;
    ensure!(queued.starts_with("queued"), "{queued}");
    let history = stdout(&parley(&a, &["history", "@bob:parley.test"], PASSWORD)?)?;
    ensure!(
        history.contains("me: hello bob  ✓") && history.contains("me: later  …"),
        "{history}"
    );
    let found = stdout(&parley(&a, &["search", "HELLO"], PASSWORD)?)?;
    ensure!(found.contains("hello bob"), "{found}");

    // Back up: the queued message goes out on the next connection, once.
    server.restart().await?;
    let sent = stdout(&parley(&a, &["send", "@bob:parley.test", "now"], PASSWORD)?)?;
    ensure!(sent.starts_with('✓'), "{sent}");
    let history = stdout(&parley(&a, &["history", "@bob:parley.test"], PASSWORD)?)?;
    ensure!(history.contains("me: later  ✓"), "{history}");
    let texts = ["hello bob", "later", "now"];
    let out = listen_until(&b, |out| texts.iter().all(|t| out.contains(t)))?;
    for text in texts {
        let n = out
            .matches(&format!("@alice:parley.test: {text}\n"))
            .count();
        ensure!(n == 1, "bob saw {text:?} {n} times:\n{out}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_commands() -> Result<()> {
    let server = Server::start(Backend::Sqlite).await?;
    let url = server.url();
    let dirs = tempfile::tempdir()?;
    let [a, b, c] = ["a", "b", "c"].map(|d| dirs.path().join(d));
    for (dir, name) in [(&a, "alice"), (&b, "bob"), (&c, "carol")] {
        stdout(&parley(
            dir,
            &["register", name, "--server", &url],
            PASSWORD,
        )?)?;
    }
    let (bob, carol) = ("@bob:parley.test", "@carol:parley.test");
    let chat = stdout(&parley(
        &a,
        &["group", "new", "Team", bob, carol],
        PASSWORD,
    )?)?;
    let chat = chat.trim();
    ensure!(chat.starts_with('!'), "{chat}");
    // Bob's command connects first, so his device joins from the Welcome.
    let sent = stdout(&parley(&b, &["send", chat, "hello team"], PASSWORD)?)?;
    ensure!(sent.starts_with('✓'), "{sent}");
    stdout(&parley(&a, &["send", chat, "hi all"], PASSWORD)?)?;
    let members = stdout(&parley(&b, &["group", "members", chat], PASSWORD)?)?;
    ensure!(
        members.lines().count() == 3
            && members.contains("@alice:parley.test  admin")
            && members.contains("@bob:parley.test  (1 device)"),
        "{members}"
    );
    fails_with(
        &parley(&b, &["group", "remove", chat, carol], PASSWORD)?,
        "only an admin",
    )?;
    let left = stdout(&parley(&c, &["group", "leave", chat], PASSWORD)?)?;
    ensure!(left.starts_with("left"), "{left}");
    // Alice's next command picks up the receipts; history shows them per message.
    stdout(&parley(
        &a,
        &["group", "rename", chat, "Team", "2"],
        PASSWORD,
    )?)?;
    let history = stdout(&parley(&a, &["history", chat], PASSWORD)?)?;
    ensure!(
        history.contains("me: hi all  delivered to 2 of 2 · read by 0 of 2")
            && history.contains("@bob:parley.test: hello team"),
        "{history}"
    );
    let members = stdout(&parley(&a, &["group", "members", chat], PASSWORD)?)?;
    ensure!(
        members.lines().count() == 2 && !members.contains("carol"),
        "{members}"
    );
    let chats = stdout(&parley(&a, &["chats"], PASSWORD)?)?;
    ensure!(chats.contains("Team 2 ("), "{chats}");
    Ok(())
}

/// `parley timer`, `privacy read-receipts`, `chat-receipts` and `report`, their clear
/// errors, and what `listen` and `history` show (spec/messaging.md MS36, MS46, MS55).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timer_receipts_and_report_commands() -> Result<()> {
    let server = Server::start(Backend::Sqlite).await?;
    let url = server.url();
    let dirs = tempfile::tempdir()?;
    let [a, b] = ["a", "b"].map(|d| dirs.path().join(d));
    for (dir, name) in [(&a, "alice"), (&b, "bob")] {
        stdout(&parley(
            dir,
            &["register", name, "--server", &url],
            PASSWORD,
        )?)?;
    }
    let bob = "@bob:parley.test";
    let chat = stdout(&parley(&a, &["chat", "new", bob], PASSWORD)?)?;
    let chat = chat.trim();
    // Bob joins from the Welcome.
    stdout(&parley(&b, &["send", chat, "hi"], PASSWORD)?)?;

    fails_with(
        &parley(&a, &["timer", chat, "2s"], PASSWORD)?,
        "a timer is between 5 seconds and 365 days",
    )?;
    fails_with(
        &parley(&a, &["timer", chat, "soon"], PASSWORD)?,
        "expected off, 24h, 7d, 90d",
    )?;
    let set = stdout(&parley(&a, &["timer", chat, "5s"], PASSWORD)?)?;
    ensure!(set.contains("disappearing messages: 5s"), "{set}");
    let shown = stdout(&parley(&a, &["timer", chat], PASSWORD)?)?;
    ensure!(shown.contains("5s"), "{shown}");
    let sent = stdout(&parley(&a, &["send", chat, "gone soon"], PASSWORD)?)?;
    ensure!(sent.starts_with('✓'), "{sent}");
    // Bob's listen shows the timer event, the message, and its disappearance.
    let seen = |out: &str| {
        out.contains("[disappearing messages: 5s]")
            && out.contains("@alice:parley.test: gone soon")
            && out.contains("disappeared")
    };
    let out = listen_until(&b, seen)?;
    ensure!(seen(&out), "{out}");
    let history = stdout(&parley(&b, &["history", chat], PASSWORD)?)?;
    ensure!(!history.contains("gone soon"), "{history}");
    ensure!(
        stdout(&parley(&b, &["timer", chat], PASSWORD)?)?.contains("5s"),
        "bob's timer"
    );
    stdout(&parley(&a, &["timer", chat, "off"], PASSWORD)?)?;

    // Read receipts: the user's setting and the chat's policy.
    fails_with(
        &parley(&b, &["privacy", "read-receipts", "maybe"], PASSWORD)?,
        "expected on or off",
    )?;
    let off = stdout(&parley(&b, &["privacy", "read-receipts", "off"], PASSWORD)?)?;
    ensure!(off.contains("read receipts: off"), "{off}");
    let shown = stdout(&parley(&b, &["privacy", "read-receipts"], PASSWORD)?)?;
    ensure!(shown.contains("off"), "{shown}");
    let policy = stdout(&parley(&a, &["chat-receipts", chat, "off"], PASSWORD)?)?;
    ensure!(
        policy.contains("read receipts in this chat: off"),
        "{policy}"
    );

    // Reports.
    fails_with(
        &parley(&b, &["report", "user", "@alice:parley.test"], PASSWORD)?,
        "a report needs a reason or a message",
    )?;
    let done = stdout(&parley(
        &b,
        &["report", "user", "@alice:parley.test", "--reason", "spam"],
        PASSWORD,
    )?)?;
    ensure!(
        done.starts_with("report ") && done.contains("admins"),
        "{done}"
    );
    Ok(())
}

fn parley_env(profile: &Path, args: &[&str], env: &[(&str, &str)]) -> Result<Output> {
    Command::new(PARLEY)
        .arg("--profile")
        .arg(profile)
        .args(args)
        .env("PARLEY_PASSWORD", PASSWORD)
        .envs(env.iter().copied())
        .env_remove("PARLEY_LOG")
        .output()
        .context("running parley")
}

/// What a device's `parley listen` prints until `done` holds for it (at most
/// [`LISTEN_WAIT`]), and for [`LISTEN_GRACE`] after, to catch what must not come (a
/// repeat). A deadline for the outcome, not a timing: slow machines only take longer.
fn listen_until(profile: &Path, done: impl Fn(&str) -> bool) -> Result<String> {
    use std::io::BufRead as _;
    use std::time::Instant;
    let mut child = Command::new(PARLEY)
        .arg("--profile")
        .arg(profile)
        .arg("listen")
        .env_remove("PARLEY_LOG")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("running parley listen")?;
    let stdout = child.stdout.take().context("listen's stdout")?;
    let (tx, rx) = std::sync::mpsc::sync_channel(256);
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut out = String::new();
    let mut end = Instant::now() + LISTEN_WAIT;
    let mut seen = false;
    // Until the deadline passes or `listen` ends.
    while let Ok(line) = rx.recv_timeout(end.saturating_duration_since(Instant::now())) {
        out.push_str(&line);
        out.push('\n');
        if !seen && done(&out) {
            seen = true;
            end = Instant::now() + LISTEN_GRACE;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    Ok(out)
}

/// How long [`listen_until`] waits for what it expects.
const LISTEN_WAIT: Duration = Duration::from_secs(60);
/// How long [`listen_until`] keeps listening after it came.
const LISTEN_GRACE: Duration = Duration::from_secs(1);

/// `parley backup enable|status`, `restore` on a fresh install (a wrong or mistyped
/// recovery key refused with a clear message, nothing restored), the restored device
/// rejoining the chat by itself and chatting on, `parley rejoin` (spec/backup.md).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_restore_and_rejoin_commands() -> Result<()> {
    let server = Server::start(Backend::Sqlite).await?;
    let url = server.url();
    let dirs = tempfile::tempdir()?;
    let [a, b, fresh] = ["a", "b", "fresh"].map(|d| dirs.path().join(d));
    for (dir, name) in [(&a, "alice"), (&b, "bob")] {
        stdout(&parley(
            dir,
            &["register", name, "--server", &url],
            PASSWORD,
        )?)?;
    }
    let chat = stdout(&parley(&a, &["chat", "new", "@bob:parley.test"], PASSWORD)?)?;
    let chat = chat.trim();
    // Bob joins from the Welcome; alice's next command gets his message.
    stdout(&parley(&b, &["send", chat, "hi alice"], PASSWORD)?)?;
    stdout(&parley(&a, &["send", chat, "hello bob"], PASSWORD)?)?;
    let history = stdout(&parley(&a, &["history", chat], PASSWORD)?)?;
    ensure!(history.contains("@bob:parley.test: hi alice"), "{history}");

    let status = stdout(&parley(&a, &["backup", "status"], PASSWORD)?)?;
    ensure!(
        status.contains("no backup on the server; not enabled on this device"),
        "{status}"
    );
    let enabled = stdout(&parley(&a, &["backup", "enable"], PASSWORD)?)?;
    ensure!(
        enabled.contains("Your recovery key")
            && enabled.contains("backed up 2 messages in 1 chats"),
        "{enabled}"
    );
    let key = enabled
        .lines()
        .map(str::trim)
        .find(|l| l.len() == 79 && l.split(' ').count() == 16)
        .context("the recovery key line")?
        .to_owned();
    let status = stdout(&parley(&a, &["backup", "status"], PASSWORD)?)?;
    ensure!(
        status.contains("(recovery key); enabled on this device"),
        "{status}"
    );

    // The phone is lost: a fresh install logs in.
    stdout(&parley(
        &fresh,
        &["login", "alice", "--server", &url],
        PASSWORD,
    )?)?;
    let mut typo: Vec<char> = key.chars().collect();
    typo[5] = if typo[5] == 'A' { 'B' } else { 'A' };
    let typo: String = typo.into_iter().collect();
    fails_with(
        &parley_env(&fresh, &["restore"], &[("PARLEY_RECOVERY_KEY", &typo)])?,
        "invalid recovery key",
    )?;
    let other = parley_crypto::RecoveryKey::generate().display();
    fails_with(
        &parley_env(&fresh, &["restore"], &[("PARLEY_RECOVERY_KEY", &other)])?,
        "the key does not open this history archive",
    )?;
    let chats = stdout(&parley(&fresh, &["chats"], PASSWORD)?)?;
    ensure!(
        !chats.contains("hello bob"),
        "nothing restored yet: {chats}"
    );

    let restored = stdout(&parley_env(
        &fresh,
        &["restore"],
        &[("PARLEY_RECOVERY_KEY", &key.to_lowercase())],
    )?)?;
    ensure!(
        restored.contains("restored 2 messages in 1 chats")
            && restored.contains(&format!("rejoined {chat}"))
            && restored.contains("1 chats rejoined, 0 joined already, 0 failed"),
        "{restored}"
    );
    let history = stdout(&parley(&fresh, &["history", chat], PASSWORD)?)?;
    ensure!(
        history.contains("@bob:parley.test: hi alice") && history.contains("me: hello bob"),
        "{history}"
    );
    // Chatting on, both ways.
    let sent = stdout(&parley(&fresh, &["send", chat, "back again"], PASSWORD)?)?;
    ensure!(sent.starts_with('✓'), "{sent}");
    let back = |out: &str| out.contains("@alice:parley.test: back again");
    let out = listen_until(&b, back)?;
    ensure!(back(&out), "{out}");
    stdout(&parley(&b, &["send", chat, "welcome back"], PASSWORD)?)?;
    let welcome = |out: &str| out.contains("@bob:parley.test: welcome back");
    let out = listen_until(&fresh, welcome)?;
    ensure!(welcome(&out), "{out}");
    let again = stdout(&parley(&fresh, &["rejoin"], PASSWORD)?)?;
    ensure!(
        again.contains("0 chats rejoined, 1 joined already, 0 failed"),
        "{again}"
    );
    Ok(())
}
