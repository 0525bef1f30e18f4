//! `parley-conformance URL [URL2]`: the black-box conformance suite against one or two
//! homeservers. Prints one line per numbered spec rule and a summary; exits non-zero when
//! a rule fails.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use parley_spec::conformance::{self, Config};

#[derive(Parser)]
#[command(about = "Checks a Parley homeserver against the numbered rules of the spec (v1).")]
struct Args {
    /// Base URL of the homeserver under test, and optionally of a second one that
    /// federates with it (for the cross-server rules).
    #[arg(required_unless_present = "list", num_args = 1..=2)]
    urls: Vec<String>,
    /// Loopback address for the suite's federation peer (the server must allow it).
    #[arg(long, default_value = "127.0.0.5")]
    peer_ip: String,
    /// Loopback address of a peer the server must refuse.
    #[arg(long, default_value = "127.0.0.9")]
    denied_peer_ip: String,
    /// Run only rules whose id starts with this (repeatable), e.g. `--only FS --only CH`.
    #[arg(long)]
    only: Vec<String>,
    /// Seconds one check may take.
    #[arg(long, default_value_t = 60)]
    timeout: u64,
    /// Also write the report as JSON to this file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
    /// List the rules (checked, then not checked with the reason) and exit.
    #[arg(long)]
    list: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    let args = Args::parse();
    if args.list {
        for r in conformance::rules() {
            println!("{} {}", r.id, r.title);
        }
        for (r, why) in conformance::not_checked() {
            println!("{} {} [not checked by this suite: {why}]", r.id, r.title);
        }
        return Ok(ExitCode::SUCCESS);
    }
    let config = Config {
        peer_ip: args.peer_ip,
        denied_peer_ip: args.denied_peer_ip,
        only: args.only,
        check_timeout: Duration::from_secs(args.timeout),
        ..Config::new(args.urls)
    };
    let report = conformance::run(&config, |r| println!("{}", conformance::line(r))).await?;
    println!("{}", report.summary());
    if let Some(path) = args.json {
        std::fs::write(&path, serde_json::to_vec_pretty(&report)?)?;
    }
    Ok(if report.failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
