//! The suite against our own homeserver: two federating servers, on SQLite and on
//! Postgres. Every rule the suite checks passes (none is skipped), and the outcome per
//! rule — the rules it does not check included — is the committed one
//! (`spec/expected/parley-homeserver.txt`), so a changed outcome shows up as a diff.

use anyhow::{Result, ensure};
use parley_spec::conformance::{self, Config, Outcome};

use crate::harness::{Backend, Server};

const EXPECTED: &str = "expected/parley-homeserver.txt";

async fn passes_the_suite(backend: Backend) -> Result<()> {
    let a = Server::start(backend, "127.0.0.2").await?;
    let b = Server::start(backend, "127.0.0.3").await?;
    let report = conformance::run(&Config::new(vec![a.base.clone(), b.base.clone()]), |r| {
        eprintln!("{}", conformance::line(r));
    })
    .await?;
    let outcomes: String = report
        .results
        .iter()
        .map(|r| match r.outcome {
            Outcome::Pass => format!("PASS {}\n", r.rule.id),
            Outcome::Fail(_) => format!("FAIL {}\n", r.rule.id),
            Outcome::Skip(_) => format!("SKIP {}\n", r.rule.id),
            Outcome::NotChecked(_) => format!("SKIP {} not checked\n", r.rule.id),
        })
        .collect();
    let path = parley_spec::docs::spec_dir().join(EXPECTED);
    if std::env::var_os("PARLEY_WRITE_EXPECTED").is_some() {
        std::fs::write(&path, &outcomes)?;
    }
    let spec_rules = parley_spec::docs::spec_rules().len();
    ensure!(
        report.results.len() == spec_rules,
        "{} lines for the spec's {spec_rules} rules",
        report.results.len()
    );
    ensure!(
        report.failed == 0 && report.skipped == 0,
        "the homeserver fails the suite: {:?}\n{}",
        report.failed_ids(),
        report.lines().join("\n")
    );
    let expected = std::fs::read_to_string(&path).unwrap_or_default();
    ensure!(
        outcomes == expected,
        "the outcomes differ from spec/{EXPECTED} (rerun with PARLEY_WRITE_EXPECTED=1 to \
         update it):\n{outcomes}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_homeserver_passes_on_sqlite() {
    passes_the_suite(Backend::Sqlite).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_homeserver_passes_on_postgres() {
    passes_the_suite(Backend::Postgres).await.unwrap();
}
