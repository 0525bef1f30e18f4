//! One private, throwaway Postgres cluster per test process.

use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tokio::sync::OnceCell;

use crate::free_port;
use crate::pg::{PgDatabase, connect};

const NOT_FOUND: &str =
    "PostgreSQL not found: install it (Debian: apt-get install postgresql) or set DATABASE_URL";
/// The OS user the cluster runs as when this process runs as root (initdb refuses root).
const UNPRIVILEGED_USER: &str = "postgres";
/// How long the new server may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How many ports to try if the free port we picked is taken before Postgres binds it.
const START_ATTEMPTS: usize = 3;

static CLUSTER: OnceCell<Cluster> = OnceCell::const_new();

/// A private Postgres cluster in a temporary directory, listening on `127.0.0.1:<port>`
/// and on a unix socket in that directory, with `trust` authentication for the superuser
/// `postgres`.
///
/// A detached watchdog stops it and deletes its directory once the test process has
/// exited, however it exits (normally, by panic, or killed).
#[derive(Debug)]
pub struct Cluster {
    admin_url: String,
    port: u16,
    dir: PathBuf,
}

impl Cluster {
    /// `postgres://postgres@127.0.0.1:<port>/postgres`.
    pub fn admin_url(&self) -> &str {
        &self.admin_url
    }

    /// The TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The temporary directory: `data/` (the cluster), `postgres.log`, the unix socket.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A fresh, empty database in this cluster.
    pub async fn create_database(&self) -> Result<PgDatabase> {
        PgDatabase::create(&self.admin_url).await
    }
}

/// This process's throwaway cluster, started on first call (by `initdb` and `pg_ctl`,
/// found in `PATH` or `/usr/lib/postgresql/*/bin`) and shared by every later call.
///
/// [`crate::postgres`] uses it when `DATABASE_URL` is not set.
pub async fn throwaway_cluster() -> Result<&'static Cluster> {
    CLUSTER.get_or_try_init(start).await
}

async fn start() -> Result<Cluster> {
    let bin = find_bin_dir().context(NOT_FOUND)?;
    let runner = Runner::for_this_process()?;

    let base = if Path::new("/tmp").is_dir() {
        PathBuf::from("/tmp")
    } else {
        std::env::temp_dir()
    };
    let dir = tempfile::Builder::new()
        .prefix("parley-pg-")
        .tempdir_in(&base)
        .with_context(|| format!("creating a temporary directory in {}", base.display()))?
        .keep();
    // From here on the watchdog owns the directory: it removes it (and stops the server,
    // if one was started) once this process is gone, whether or not we get further.
    spawn_watchdog(&runner, &bin, &dir)?;
    runner.take_ownership(&dir)?;

    let data = dir.join("data");
    let log = dir.join("postgres.log");

    let initdb = bin.join("initdb");
    let mut cmd = runner.command(&initdb);
    cmd.arg("-D")
        .arg(&data)
        .args(["-U", "postgres", "-A", "trust", "--no-sync", "-E", "UTF8"])
        .arg("--locale=C")
        .current_dir(&dir);
    run(cmd, "initdb").await?;

    let pg_ctl = bin.join("pg_ctl");
    let mut failures = Vec::new();
    for _ in 0..START_ATTEMPTS {
        let port = free_port("127.0.0.1");
        let options = format!(
            "-k {socket} -p {port} -c listen_addresses=127.0.0.1 -c fsync=off \
             -c synchronous_commit=off -c full_page_writes=off -c max_connections=200",
            socket = shell_quote(dir.as_os_str())
        );
        let mut cmd = runner.command(&pg_ctl);
        cmd.arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(&log)
            .args([
                "-w",
                "-t",
                &START_TIMEOUT.as_secs().to_string(),
                "-o",
                &options,
                "start",
            ])
            .current_dir(&dir);
        match run(cmd, "pg_ctl start").await {
            Ok(()) => {
                let admin_url = format!("postgres://postgres@127.0.0.1:{port}/postgres");
                wait_until_ready(&admin_url).await?;
                return Ok(Cluster {
                    admin_url,
                    port,
                    dir,
                });
            }
            Err(e) => {
                let log_text = std::fs::read_to_string(&log).unwrap_or_default();
                failures.push(format!("port {port}: {e:#}\nserver log:\n{log_text}"));
            }
        }
    }
    bail!(
        "could not start the throwaway Postgres cluster in {}:\n{}",
        dir.display(),
        failures.join("\n")
    )
}

/// `pg_ctl -w` already waits; this also proves a client connection works.
async fn wait_until_ready(admin_url: &str) -> Result<()> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        match connect(admin_url).await {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() >= deadline => {
                return Err(e).context("the throwaway Postgres cluster never accepted connections");
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// The first directory holding `initdb`, `pg_ctl` and `postgres`: `PATH` first, then
/// `/usr/lib/postgresql/<version>/bin`, newest version first.
fn find_bin_dir() -> Result<PathBuf> {
    let mut candidates: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect())
        .unwrap_or_default();
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            Some((version, entry.path().join("bin")))
        })
        .collect();
    versions.sort_by_key(|(version, _)| std::cmp::Reverse(*version));
    candidates.extend(versions.into_iter().map(|(_, dir)| dir));

    candidates
        .into_iter()
        .find(|dir| {
            ["initdb", "pg_ctl", "postgres"]
                .iter()
                .all(|name| is_executable(&dir.join(name)))
        })
        .context(
            "no directory in PATH or /usr/lib/postgresql/*/bin has initdb, pg_ctl and postgres",
        )
}

fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// How to run the Postgres tools: directly, or as the `postgres` user when we are root.
#[derive(Debug, Clone)]
enum Runner {
    Direct,
    Runuser(String),
    Su(String),
}

impl Runner {
    fn for_this_process() -> Result<Self> {
        if effective_uid()? != 0 {
            return Ok(Self::Direct);
        }
        let user = UNPRIVILEGED_USER.to_owned();
        let exists = Command::new("id")
            .arg("-u")
            .arg(&user)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !exists {
            bail!(
                "running as root, and initdb refuses to run as root, but there is no \
                 `{user}` user to run it as: create one (useradd -r {user}), or run the \
                 tests as another user, or set DATABASE_URL"
            );
        }
        if on_path("runuser") {
            Ok(Self::Runuser(user))
        } else if on_path("su") {
            Ok(Self::Su(user))
        } else {
            bail!("running as root, and neither runuser nor su was found to run initdb as `{user}`")
        }
    }

    fn command(&self, program: &Path) -> tokio::process::Command {
        let mut cmd;
        match self {
            Self::Direct => cmd = tokio::process::Command::new(program),
            Self::Runuser(user) => {
                cmd = tokio::process::Command::new("runuser");
                cmd.args(["-u", user, "--"]).arg(program);
            }
            Self::Su(user) => {
                cmd = tokio::process::Command::new("su");
                cmd.args([user.as_str(), "-s", "/bin/sh", "-c", r#"exec "$0" "$@""#])
                    .arg(program);
            }
        }
        cmd
    }

    /// The same as [`Runner::command`], as one shell command line.
    fn shell_line(&self, program: &Path, args: &[&OsStr]) -> String {
        let mut words: Vec<String> = match self {
            Self::Direct => Vec::new(),
            Self::Runuser(user) => vec![
                "runuser".into(),
                "-u".into(),
                shell_quote(user),
                "--".into(),
            ],
            Self::Su(user) => vec![
                "su".into(),
                shell_quote(user),
                "-s".into(),
                "/bin/sh".into(),
                "-c".into(),
                shell_quote(r#"exec "$0" "$@""#),
            ],
        };
        words.push(shell_quote(program.as_os_str()));
        words.extend(args.iter().map(shell_quote));
        words.join(" ")
    }

    fn take_ownership(&self, dir: &Path) -> Result<()> {
        let user = match self {
            Self::Direct => return Ok(()),
            Self::Runuser(user) | Self::Su(user) => user,
        };
        let output = Command::new("chown")
            .arg("-R")
            .arg(user)
            .arg(dir)
            .output()
            .context("running chown")?;
        if !output.status.success() {
            bail!(
                "chown -R {user} {} failed: {}",
                dir.display(),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(())
    }
}

/// The effective uid, from `/proc/self/status` (or `id -u` where there is no `/proc`).
fn effective_uid() -> Result<u32> {
    if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
        // "Uid:\t<real>\t<effective>\t<saved>\t<fs>"
        if let Some(euid) = status
            .lines()
            .find_map(|line| line.strip_prefix("Uid:"))
            .and_then(|ids| ids.split_whitespace().nth(1))
            .and_then(|euid| euid.parse().ok())
        {
            return Ok(euid);
        }
    }
    let output = Command::new("id")
        .arg("-u")
        .output()
        .context("running `id -u`")?;
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .context("parsing the output of `id -u`")
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| is_executable(&dir.join(program)))
    })
}

/// Starts a detached shell that waits for this process to exit, then stops the cluster
/// and removes `dir`. It runs in its own process group, so a Ctrl-C aimed at the tests
/// does not kill it before it has cleaned up.
fn spawn_watchdog(runner: &Runner, bin: &Path, dir: &Path) -> Result<()> {
    let data = dir.join("data");
    let stop = runner.shell_line(
        &bin.join("pg_ctl"),
        &[
            OsStr::new("-D"),
            data.as_os_str(),
            OsStr::new("stop"),
            OsStr::new("-m"),
            OsStr::new("immediate"),
            OsStr::new("-w"),
        ],
    );
    let script = format!(
        "trap '' HUP INT; cd /; \
         while kill -0 {pid} 2>/dev/null; do sleep 1; done; \
         if [ -f {pidfile} ]; then {stop}; fi; \
         rm -rf {dir}",
        pid = std::process::id(),
        pidfile = shell_quote(data.join("postmaster.pid").as_os_str()),
        dir = shell_quote(dir.as_os_str()),
    );
    // The outer shell backgrounds the watchdog and exits at once, so nothing is left for
    // this process to reap.
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!("( {script} ) </dev/null >/dev/null 2>&1 &"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .status()
        .context("starting the cleanup watchdog (sh)")?;
    if !status.success() {
        bail!("starting the cleanup watchdog failed: {status}");
    }
    Ok(())
}

async fn run(mut cmd: tokio::process::Command, what: &str) -> Result<()> {
    cmd.stdin(Stdio::null());
    let output: Output = cmd
        .output()
        .await
        .with_context(|| format!("running {what}"))?;
    if !output.status.success() {
        bail!(
            "{what} failed ({}):\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

/// One word for `sh`: `'…'` with any `'` written as `'\''`.
fn shell_quote(word: impl AsRef<OsStr>) -> String {
    let word = word.as_ref().to_string_lossy();
    format!("'{}'", word.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_for_sh() {
        assert_eq!(shell_quote("/tmp/a b"), "'/tmp/a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }

    #[test]
    fn builds_the_stop_command_as_the_cluster_user() {
        let line = Runner::Runuser("postgres".into()).shell_line(
            Path::new("/usr/lib/postgresql/15/bin/pg_ctl"),
            &[OsStr::new("stop")],
        );
        assert_eq!(
            line,
            "runuser -u 'postgres' -- '/usr/lib/postgresql/15/bin/pg_ctl' 'stop'"
        );
    }
}
