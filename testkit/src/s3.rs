//! An S3-compatible server on loopback for media tests: moto's server mode (PyPI
//! `moto[server]`, installed by `.ci/run`), one private instance per call.

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// A private S3-compatible server (killed on drop). It accepts any credentials.
#[derive(Debug)]
pub struct S3Server {
    endpoint: String,
    child: Child,
}

impl S3Server {
    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `python3 -m moto.server` on a free loopback port. Fails with how to install it
/// when moto is missing.
pub fn s3_server() -> Result<S3Server> {
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let found = Command::new(&python)
        .args(["-c", "import moto.server, flask_cors"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        bail!(
            "moto's S3 server is not installed: run `{python} -m pip install 'moto[server]'` \
             (.ci/run does)"
        );
    }
    let port = crate::free_port("127.0.0.1");
    let child = Command::new(&python)
        .args([
            "-m",
            "moto.server",
            "-H",
            "127.0.0.1",
            "-p",
            &port.to_string(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {python} -m moto.server"))?;
    let server = S3Server {
        endpoint: format!("http://127.0.0.1:{port}"),
        child,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let addr = format!("127.0.0.1:{port}").parse()?;
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        if Instant::now() > deadline {
            bail!("moto did not start listening on {addr}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(server)
}
