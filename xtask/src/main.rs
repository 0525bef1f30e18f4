//! Project automation, run as `cargo xtask <command>` (an alias in `.cargo/config.toml`).
//!
//! - `cargo xtask tidy`: checks the workspace's invariants (see [`tidy`]). The same checks
//!   run as a `#[test]`, so `cargo test --workspace` enforces them too.
//! - `cargo xtask deploy`: checks `docker-compose.yml` (Compose schema), the `Dockerfile`
//!   and `scripts/local-topology.sh` against the workspace and each other (see [`deploy`]).
//! - `cargo xtask ci [ARGS…]`: everything CI checks, in order, failing fast: rustfmt,
//!   clippy, tidy, deploy, then `cargo test --workspace ARGS…`. `.ci/run` calls this.

mod ci;
mod deploy;
mod tidy;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

const USAGE: &str = "\
usage: cargo xtask <command>

commands:
  tidy          check the workspace's invariants: forbidden dependency edges,
                duplicated links crates, leftover debugging and unbounded channels
  deploy        validate docker-compose.yml (check-jsonschema, Compose schema) and check it,
                the Dockerfile and scripts/local-topology.sh against the workspace
  ci [ARGS...]  fmt --check, clippy -D warnings, tidy, deploy, then cargo test --workspace ARGS...";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("tidy") if args.len() == 1 => tidy::run(&project_root()),
        Some("deploy") if args.len() == 1 => deploy::run(&project_root()),
        Some("ci") => ci::run(&project_root(), &args[1..]),
        Some("help" | "-h" | "--help") => {
            println!("{USAGE}");
            Ok(())
        }
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The workspace root (this crate lives in `<root>/xtask`).
///
/// `cargo run` and `cargo test` set `CARGO_MANIFEST_DIR` at run time too; that is
/// preferred to the compile-time value, which is wrong when a target directory shared by
/// two checkouts hands one of them the other's binary.
fn project_root() -> PathBuf {
    let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from);
    manifest_dir
        .parent()
        .map_or_else(|| manifest_dir.clone(), Path::to_path_buf)
}

/// The cargo that runs us (`CARGO`), else `cargo` from `PATH`.
fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned())
}
