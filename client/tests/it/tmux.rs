//! The `parley` CLI in real terminals: tmux runs alice's and bob's sessions against a
//! real server; keys are typed with send-keys and screens read with capture-pane.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};

use crate::harness::{Backend, PASSWORD, Server, WAIT};

const PARLEY: &str = env!("CARGO_BIN_EXE_parley");

/// A private tmux server (its own socket), killed on drop.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn new() -> Result<Self> {
        let socket = format!("parley-test-{}-{}", std::process::id(), rand_suffix());
        let t = Self { socket };
        let version = Command::new("tmux").arg("-V").output();
        match version {
            Ok(o) if o.status.success() => Ok(t),
            _ => bail!("tmux is not installed: apt-get install -y tmux"),
        }
    }

    fn run(&self, args: &[&str]) -> Result<String> {
        let out = Command::new("tmux")
            .arg("-u")
            .args(["-L", &self.socket])
            .args(args)
            .env("LC_ALL", "C.UTF-8")
            .output()
            .context("running tmux")?;
        if !out.status.success() {
            bail!(
                "tmux {args:?}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Starts `command` in a new detached session named `name`.
    fn start(&self, name: &str, command: &str) -> Result<()> {
        self.run(&[
            "new-session",
            "-d",
            "-s",
            name,
            "-x",
            "120",
            "-y",
            "40",
            command,
        ])?;
        // Keep the pane after the program exits, to read why.
        self.run(&["set-option", "-t", name, "remain-on-exit", "on"])?;
        Ok(())
    }

    fn screen(&self, name: &str) -> Result<String> {
        self.run(&["capture-pane", "-p", "-t", name])
    }

    fn type_line(&self, name: &str, text: &str) -> Result<()> {
        self.run(&["send-keys", "-t", name, "-l", text])?;
        self.run(&["send-keys", "-t", name, "Enter"])?;
        Ok(())
    }

    fn kill(&self, name: &str) -> Result<()> {
        self.run(&["kill-session", "-t", name]).map(drop)
    }

    /// Waits until a line of the screen satisfies `pred`; returns that line.
    async fn wait_line(
        &self,
        name: &str,
        what: &str,
        pred: impl Fn(&str) -> bool,
    ) -> Result<String> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let screen = self.screen(name)?;
            if let Some(line) = screen.lines().find(|l| pred(l)) {
                return Ok(line.to_owned());
            }
            if tokio::time::Instant::now() > deadline {
                bail!("{name}'s screen never showed {what}; it shows:\n{screen}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .output();
    }
}

fn rand_suffix() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos())
}

/// Runs a one-shot `parley` command; returns its stdout.
fn parley(profile: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new(PARLEY)
        .arg("--profile")
        .arg(profile)
        .args(args)
        .env("PARLEY_PASSWORD", PASSWORD)
        .output()
        .context("running parley")?;
    ensure!(
        out.status.success(),
        "parley {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn shell_command(profile: &Path, args: &str) -> String {
    format!("{PARLEY} --profile {} {args}", profile.display())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interactive_chat_shows_ticks_changing_live() -> Result<()> {
    let tmux = Tmux::new()?;
    let server = Server::start(Backend::Sqlite).await?;
    let url = server.url();
    let dirs = tempfile::tempdir()?;
    let (a, b) = (dirs.path().join("alice"), dirs.path().join("bob"));
    parley(&a, &["register", "alice", "--server", &url])?;
    parley(&b, &["register", "bob", "--server", &url])?;
    let chat = parley(&a, &["chat", "new", "@bob:parley.test"])?;
    ensure!(chat.trim().starts_with('!'), "chat new printed {chat:?}");

    // Alice opens the chat; bob is not running anything yet.
    tmux.start("alice", &shell_command(&a, "chat open @bob:parley.test"))?;
    tmux.wait_line("alice", "online", |l| l.contains("[online]"))
        .await?;
    tmux.type_line("alice", "hello from tmux")?;
    // ✓ sent: on the server, not on any of bob's devices yet.
    let line = tmux
        .wait_line("alice", "the message sent", |l| {
            l.contains("me: hello from tmux") && l.trim_end().ends_with('✓')
        })
        .await?;
    ensure!(!line.contains("✓✓"), "{line}");

    // Bob's device comes online (listening, not reading): ✓✓ delivered.
    tmux.start("bob", &shell_command(&b, "listen"))?;
    tmux.wait_line("bob", "the message", |l| {
        l.contains("@alice:parley.test: hello from tmux")
    })
    .await?;
    let line = tmux
        .wait_line("alice", "delivered", |l| {
            l.contains("me: hello from tmux") && l.trim_end().ends_with("✓✓")
        })
        .await?;
    ensure!(!line.contains("read"), "{line}");

    // Bob opens the chat: read.
    tmux.kill("bob")?;
    tmux.start("bob", &shell_command(&b, "chat open @alice:parley.test"))?;
    tmux.wait_line("bob", "the message in the chat", |l| {
        l.contains("@alice:parley.test: hello from tmux")
    })
    .await?;
    tmux.wait_line("alice", "read", |l| {
        l.contains("me: hello from tmux") && l.trim_end().ends_with("✓✓ read")
    })
    .await?;

    // Bob answers from his window; alice sees it, bob's tick goes to read since alice
    // has the chat open.
    tmux.type_line("bob", "hi alice, read you")?;
    tmux.wait_line("alice", "bob's answer", |l| {
        l.contains("@bob:parley.test: hi alice, read you")
    })
    .await?;
    tmux.wait_line("bob", "bob's message read", |l| {
        l.contains("me: hi alice, read you") && l.trim_end().ends_with("✓✓ read")
    })
    .await?;

    // The history is on disk for the offline commands.
    tmux.type_line("alice", "/quit")?;
    tmux.type_line("bob", "/quit")?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let history = parley(&a, &["history", "@bob:parley.test"])?;
    ensure!(
        history.contains("me: hello from tmux  ✓✓ read"),
        "{history}"
    );
    ensure!(
        history.contains("@bob:parley.test: hi alice, read you"),
        "{history}"
    );
    let found = parley(&b, &["search", "FROM TMUX"])?;
    ensure!(found.contains("hello from tmux"), "{found}");
    Ok(())
}
