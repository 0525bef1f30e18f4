//! A NATS server for multi-node tests.

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// A NATS URL, and the private server behind it when this process started one (killed on
/// drop).
#[derive(Debug)]
pub struct Nats {
    url: String,
    child: Option<Child>,
}

impl Nats {
    pub fn url(&self) -> &str {
        &self.url
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `NATS_URL` when set; else the server on 127.0.0.1:4222 when one answers; else a
/// private `nats-server` on a free port. Fails with how to install NATS when there is
/// none of these.
pub fn nats() -> Result<Nats> {
    if let Ok(url) = std::env::var("NATS_URL")
        && !url.is_empty()
    {
        return Ok(Nats { url, child: None });
    }
    if TcpStream::connect_timeout(&"127.0.0.1:4222".parse()?, Duration::from_millis(300)).is_ok() {
        return Ok(Nats {
            url: "nats://127.0.0.1:4222".into(),
            child: None,
        });
    }
    let binary = [
        "nats-server",
        "/usr/sbin/nats-server",
        "/usr/bin/nats-server",
    ]
    .into_iter()
    .find(|b| {
        Command::new(b)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok()
    })
    .context(
        "NATS not found: install it (Debian: apt-get install nats-server), start it on \
             127.0.0.1:4222, or set NATS_URL",
    )?;
    let port = crate::free_port("127.0.0.1");
    let child = Command::new(binary)
        .args(["-a", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {binary}"))?;
    let nats = Nats {
        url: format!("nats://127.0.0.1:{port}"),
        child: Some(child),
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let addr = format!("127.0.0.1:{port}").parse()?;
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        if Instant::now() > deadline {
            bail!("{binary} did not start listening on {addr}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(nats)
}
