//! Test support shared by Parley's test harnesses.
//!
//! - [`postgres`]: a fresh, empty Postgres database for one test. It uses the server at
//!   `DATABASE_URL` when that is set, else one private throwaway cluster per test process
//!   ([`throwaway_cluster`]), started on first use and removed when the process exits.
//!   Each database is dropped again when its [`PgDatabase`] is dropped.
//! - [`ServerProcess`]: a server binary run as a child process, with its stdout and
//!   stderr captured, started once it prints `listening on <addr>`.
//! - [`nats`]: a NATS server for multi-node tests (`NATS_URL`, the local one, or a
//!   private one).
//! - [`s3_server`]: a private S3-compatible server (moto) for media tests.
//! - [`homeserver`]: arguments and config of federating `parley-homeserver` test
//!   processes on 127.0.0.x, for the homeserver's and the SDK's harnesses.
//! - [`free_port`]: an unused TCP port on a loopback address.

mod cluster;
pub mod homeserver;
mod nats;
mod pg;
mod process;
mod s3;

use std::net::TcpListener;

pub use cluster::{Cluster, throwaway_cluster};
pub use nats::{Nats, nats};
pub use pg::{PgDatabase, postgres};
pub use process::{READY_TIMEOUT, ServerProcess};
pub use s3::{S3Server, s3_server};

/// Returns a TCP port that is free on `ip` right now (found by binding port 0).
///
/// Another process may take it before the caller binds it; prefer handing a server
/// port 0 and reading back its address where the server allows it.
///
/// # Panics
/// If `ip` is not an IP address or nothing can be bound on it.
pub fn free_port(ip: &str) -> u16 {
    let listener = TcpListener::bind((ip, 0))
        .unwrap_or_else(|e| panic!("free_port: cannot bind a TCP port on {ip}: {e}"));
    listener
        .local_addr()
        .unwrap_or_else(|e| panic!("free_port: no local address for the socket on {ip}: {e}"))
        .port()
}
