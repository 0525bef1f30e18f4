//! A server binary run as a child process, for multi-server tests.

use std::ffi::OsStr;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

/// How long [`ServerProcess::spawn`] and [`ServerProcess::start`] wait for the
/// `listening on <addr>` line.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long to wait for the rest of the output once the process has exited by itself.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// The same after we killed it: what it printed is read already, but a grandchild (say
/// the `sleep` of a shell script) may hold the pipes open.
const DRAIN_AFTER_KILL: Duration = Duration::from_millis(500);
/// What a server prints when it is ready, followed by its address.
const READY_MARKER: &str = "listening on ";

/// A server running as a child process.
///
/// Its stdout and stderr lines are collected (see [`ServerProcess::logs`]) and also
/// echoed to the test's stderr prefixed with `[<program>]`, which the test harness shows
/// only for failing tests. The child is killed (SIGKILL) when this is dropped.
#[derive(Debug)]
pub struct ServerProcess {
    child: Child,
    label: String,
    addr: String,
    logs: Arc<Mutex<String>>,
    lines: watch::Receiver<u64>,
    pumps: Vec<JoinHandle<()>>,
}

impl ServerProcess {
    /// Runs `program` with `args` and extra environment variables `envs`, and waits (up to
    /// [`READY_TIMEOUT`]) until it prints a line containing `listening on <addr>`.
    pub async fn spawn<I, S, E, K, V>(program: impl AsRef<Path>, args: I, envs: E) -> Result<Self>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
        E: IntoIterator<Item = (K, V)>,
        K: AsRef<OsStr>,
        V: AsRef<OsStr>,
    {
        let mut command = Command::new(program.as_ref());
        command.args(args).envs(envs);
        Self::start(command).await
    }

    /// Runs `command` (stdio is replaced: stdin null, stdout and stderr captured) and waits
    /// (up to [`READY_TIMEOUT`]) until it prints a line containing `listening on <addr>`.
    pub async fn start(command: Command) -> Result<Self> {
        Self::start_with_timeout(command, READY_TIMEOUT).await
    }

    /// As [`ServerProcess::start`], with another readiness timeout.
    pub async fn start_with_timeout(mut command: Command, ready_timeout: Duration) -> Result<Self> {
        let program = command.as_std().get_program().to_owned();
        let label = Path::new(&program)
            .file_name()
            .unwrap_or(&program)
            .to_string_lossy()
            .into_owned();
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command
            .spawn()
            .with_context(|| format!("spawning {}", program.to_string_lossy()))?;
        let stdout = child
            .stdout
            .take()
            .context("the child's stdout was not captured")?;
        let stderr = child
            .stderr
            .take()
            .context("the child's stderr was not captured")?;

        let logs = Arc::new(Mutex::new(String::new()));
        let (lines_tx, lines) = watch::channel(0u64);
        let lines_tx = Arc::new(lines_tx);
        let (ready_tx, ready_rx) = oneshot::channel();
        let ready_tx = Arc::new(Mutex::new(Some(ready_tx)));
        let pumps = vec![
            tokio::spawn(pump(
                stdout,
                label.clone(),
                logs.clone(),
                lines_tx.clone(),
                ready_tx.clone(),
            )),
            tokio::spawn(pump(
                stderr,
                label.clone(),
                logs.clone(),
                lines_tx,
                ready_tx,
            )),
        ];
        let mut server = Self {
            child,
            label,
            addr: String::new(),
            logs,
            lines,
            pumps,
        };

        match tokio::time::timeout(ready_timeout, ready_rx).await {
            Ok(Ok(addr)) => {
                server.addr = addr;
                Ok(server)
            }
            Ok(Err(_)) => {
                // Both output streams closed without the line: it (most likely) exited.
                let status = match tokio::time::timeout(DRAIN_TIMEOUT, server.child.wait()).await {
                    Ok(Ok(status)) => status.to_string(),
                    Ok(Err(e)) => format!("exit status unknown: {e}"),
                    Err(_) => "it closed stdout and stderr but is still running".to_owned(),
                };
                bail!(
                    "`{}` stopped before it printed `{READY_MARKER}<addr>` ({status}); its output:\n{}",
                    server.label,
                    server.logs()
                )
            }
            Err(_) => {
                let _ = server.child.kill().await;
                server.drain(DRAIN_AFTER_KILL).await;
                bail!(
                    "`{}` did not print `{READY_MARKER}<addr>` within {ready_timeout:?} (killed it); its output:\n{}",
                    server.label,
                    server.logs()
                )
            }
        }
    }

    /// The address from the `listening on <addr>` line, e.g. `127.0.0.1:8448`.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The child's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Everything the process printed so far, stdout and stderr interleaved by line.
    pub fn logs(&self) -> String {
        self.logs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Waits until a printed line contains `needle` (returns at once if one already did).
    pub async fn wait_for_log(&self, needle: &str, timeout: Duration) -> Result<()> {
        let mut lines = self.lines.clone();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            lines.borrow_and_update();
            if self.logs().contains(needle) {
                return Ok(());
            }
            match tokio::time::timeout_at(deadline, lines.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => bail!(
                    "`{}` closed its output without printing `{needle}`; its output:\n{}",
                    self.label,
                    self.logs()
                ),
                Err(_) => bail!(
                    "`{}` did not print `{needle}` within {timeout:?}; its output:\n{}",
                    self.label,
                    self.logs()
                ),
            }
        }
    }

    /// Kills the process with SIGKILL (no chance to clean up) and waits for it to exit.
    pub async fn kill_hard(&mut self) -> Result<ExitStatus> {
        self.child
            .kill()
            .await
            .with_context(|| format!("killing `{}`", self.label))?;
        let status = self
            .child
            .wait()
            .await
            .with_context(|| format!("waiting for `{}`", self.label))?;
        self.drain(DRAIN_AFTER_KILL).await;
        Ok(status)
    }

    /// Sends SIGTERM (a graceful shutdown request); [`ServerProcess::wait`] for the exit.
    pub async fn terminate(&self) -> Result<()> {
        let Some(pid) = self.child.id() else {
            return Ok(()); // already exited and reaped
        };
        let status = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .await
            .context("running kill -TERM")?;
        if !status.success() {
            bail!("kill -TERM {pid} failed: {status}");
        }
        Ok(())
    }

    /// Waits for the process to exit, then for the rest of its output.
    pub async fn wait(&mut self) -> Result<ExitStatus> {
        let status = self
            .child
            .wait()
            .await
            .with_context(|| format!("waiting for `{}`", self.label))?;
        self.drain(DRAIN_TIMEOUT).await;
        Ok(status)
    }

    /// Lets the output readers finish (bounded: a grandchild may hold the pipes open).
    async fn drain(&mut self, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        for pump in &mut self.pumps {
            if pump.is_finished() {
                continue;
            }
            if tokio::time::timeout_at(deadline, pump).await.is_err() {
                return;
            }
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// Reads `stream` line by line into `logs` until it closes, and reports the address of
/// the first `listening on <addr>` line through `ready`.
async fn pump(
    stream: impl AsyncRead + Unpin,
    label: String,
    logs: Arc<Mutex<String>>,
    lines: Arc<watch::Sender<u64>>,
    ready: Arc<Mutex<Option<oneshot::Sender<String>>>>,
) {
    let mut reader = BufReader::new(stream);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let line = String::from_utf8_lossy(&buf);
        let line = line.trim_end_matches(['\n', '\r']);
        eprintln!("[{label}] {line}");
        {
            let mut logs = logs.lock().unwrap_or_else(PoisonError::into_inner);
            logs.push_str(line);
            logs.push('\n');
        }
        if let Some(addr) = listening_addr(line) {
            let sender = ready.lock().unwrap_or_else(PoisonError::into_inner).take();
            if let Some(sender) = sender {
                let _ = sender.send(addr.to_owned());
            }
        }
        lines.send_modify(|n| *n += 1);
    }
}

/// `127.0.0.1:8448` from `parley-homeserver listening on 127.0.0.1:8448`.
fn listening_addr(line: &str) -> Option<&str> {
    let (_, rest) = line.split_once(READY_MARKER)?;
    rest.split_whitespace().next()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_address() {
        assert_eq!(
            listening_addr("parley-homeserver listening on 127.0.0.1:8448"),
            Some("127.0.0.1:8448")
        );
        assert_eq!(
            listening_addr("x listening on [::1]:1 (http)"),
            Some("[::1]:1")
        );
        assert_eq!(listening_addr("listening on "), None);
        assert_eq!(listening_addr("starting"), None);
    }
}
