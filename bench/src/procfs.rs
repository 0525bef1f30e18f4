//! Memory and CPU of processes, from `/proc` (Linux only): the server's RSS, and the CPU
//! time of the server, of Postgres and of the bench itself.

use std::time::Duration;

/// `VmRSS` and `VmHWM` (peak RSS) of a process, in KiB.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Memory {
    pub(crate) rss_kib: u64,
    pub(crate) hwm_kib: u64,
}

/// Reads `/proc/<pid>/status`; `None` if the process is gone.
pub(crate) fn memory(pid: u32) -> Option<Memory> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_memory(&text)
}

fn parse_memory(status: &str) -> Option<Memory> {
    Some(Memory {
        rss_kib: status_kib(status, "VmRSS")?,
        hwm_kib: status_kib(status, "VmHWM")?,
    })
}

/// A `Key:   1234 kB` line of `/proc/<pid>/status`.
fn status_kib(status: &str, key: &str) -> Option<u64> {
    status.lines().find_map(|line| {
        let rest = line.strip_prefix(key)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// `(command name, user + system CPU ticks)` from the text of `/proc/<pid>/stat`.
fn parse_stat(stat: &str) -> Option<(&str, u64)> {
    // `pid (comm) state ppid …`: comm may hold spaces and parentheses, so split at the
    // last ')'. utime and stime are fields 14 and 15, i.e. 11 and 12 after comm.
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close)?;
    let mut fields = stat.get(close + 1..)?.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((comm, utime + stime))
}

/// CPU ticks per second (`getconf CLK_TCK`; 100 on every common Linux).
pub(crate) fn clock_ticks() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .filter(|&t| t > 0)
        .unwrap_or(100)
}

fn cpu_ticks_of(path: &str) -> Option<(String, u64)> {
    let text = std::fs::read_to_string(path).ok()?;
    parse_stat(&text).map(|(comm, t)| (comm.to_owned(), t))
}

/// Busy (not idle, not waiting for I/O) CPU ticks of the whole machine, and the part of
/// them spent in interrupts (loopback networking runs there), from the first line of
/// `/proc/stat`: `cpu user nice system idle iowait irq softirq steal …`.
fn parse_machine_busy(stat: &str) -> Option<(u64, u64)> {
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .take(8)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    let total: u64 = fields.iter().sum();
    let busy = total - fields.get(3)? - fields.get(4)?;
    Some((busy, fields.get(5)? + fields.get(6)?))
}

/// CPU ticks used so far by the server, by every `postgres` process, by this process,
/// and by the whole machine.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct CpuSample {
    pub(crate) server: Option<u64>,
    pub(crate) postgres: u64,
    pub(crate) bench: u64,
    pub(crate) machine: u64,
    pub(crate) irq: u64,
}

impl CpuSample {
    /// `server_pids`: the server's processes (their ticks are summed), if known.
    pub(crate) fn take(server_pids: Option<&[u32]>) -> Self {
        let server = server_pids.and_then(|pids| {
            pids.iter()
                .map(|pid| cpu_ticks_of(&format!("/proc/{pid}/stat")).map(|(_, t)| t))
                .sum::<Option<u64>>()
        });
        let bench = cpu_ticks_of("/proc/self/stat").map_or(0, |(_, t)| t);
        let mut postgres = 0;
        if let Ok(dir) = std::fs::read_dir("/proc") {
            for entry in dir.flatten() {
                let name = entry.file_name();
                let Some(name) = name.to_str() else { continue };
                if !name.bytes().all(|b| b.is_ascii_digit()) {
                    continue;
                }
                if let Some((comm, t)) = cpu_ticks_of(&format!("/proc/{name}/stat"))
                    && comm == "postgres"
                {
                    postgres += t;
                }
            }
        }
        let (machine, irq) = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|s| parse_machine_busy(&s))
            .unwrap_or((0, 0));
        Self {
            server,
            postgres,
            bench,
            machine,
            irq,
        }
    }
}

/// CPU use between two samples, in percent of one core (200 = both cores of this machine).
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub(crate) struct CpuPercent {
    pub(crate) server: Option<f64>,
    pub(crate) postgres: f64,
    pub(crate) bench: f64,
    /// Interrupt and softirq time of the whole machine (loopback TCP is processed there).
    pub(crate) irq: f64,
    /// Every other process and kernel thread: a run with much here shared the cores with
    /// something else and is not a clean figure.
    pub(crate) other: f64,
}

impl CpuPercent {
    pub(crate) fn between(a: CpuSample, b: CpuSample, elapsed: Duration, ticks: u64) -> Self {
        let secs = elapsed.as_secs_f64().max(1e-9);
        let pct = |from: u64, to: u64| to.saturating_sub(from) as f64 / ticks as f64 / secs * 100.0;
        Self {
            server: a.server.zip(b.server).map(|(x, y)| pct(x, y)),
            // Postgres backends come and go; a negative difference means some exited.
            postgres: pct(a.postgres, b.postgres),
            bench: pct(a.bench, b.bench),
            irq: pct(a.irq, b.irq),
            other: (pct(a.machine, b.machine)
                - pct(a.irq, b.irq)
                - pct(a.server.unwrap_or(0), b.server.unwrap_or(0))
                - pct(a.postgres, b.postgres)
                - pct(a.bench, b.bench))
            .max(0.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status_and_stat() {
        let status =
            "Name:\tparley-homeserv\nVmPeak:\t  900 kB\nVmHWM:\t   51200 kB\nVmRSS:\t   40960 kB\n";
        assert_eq!(
            parse_memory(status),
            Some(Memory {
                rss_kib: 40960,
                hwm_kib: 51200
            })
        );
        assert_eq!(parse_memory("Name: x\n"), None);
        let stat = "4242 (tokio (rt) x) S 1 4242 4242 0 -1 4194560 1000 0 0 0 250 75 0 0 20 0 4 0";
        assert_eq!(parse_stat(stat), Some(("tokio (rt) x", 325)));
        assert_eq!(parse_stat("1 (x) S 1"), None);
        assert_eq!(
            parse_machine_busy("cpu  100 5 50 1000 20 1 2 3 0 0\ncpu0 1 2 3 4\n"),
            Some((161, 3))
        );
        assert_eq!(parse_machine_busy("intr 1 2\n"), None);
        let a = CpuSample {
            server: Some(100),
            postgres: 50,
            bench: 0,
            machine: 1000,
            irq: 0,
        };
        let b = CpuSample {
            server: Some(300),
            postgres: 150,
            bench: 100,
            machine: 1500,
            irq: 20,
        };
        let p = CpuPercent::between(a, b, Duration::from_secs(2), 100);
        assert_eq!(p.server, Some(100.0));
        assert_eq!(p.postgres, 50.0);
        assert_eq!(p.bench, 50.0);
        assert_eq!(p.irq, 10.0);
        assert_eq!(p.other, 40.0);
    }
}
