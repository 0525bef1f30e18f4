//! `cargo xtask ci`: the one command CI runs.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::{cargo, deploy, tidy};

enum Action {
    Cargo(Vec<String>),
    Tidy,
    Deploy,
}

struct Step {
    name: &'static str,
    action: Action,
}

fn cargo_args(args: &[&str]) -> Vec<String> {
    args.iter().map(|&a| a.to_owned()).collect()
}

fn steps(test_args: &[String]) -> Vec<Step> {
    let mut test = cargo_args(&["test", "--workspace"]);
    test.extend(test_args.iter().cloned());
    vec![
        Step {
            name: "fmt",
            action: Action::Cargo(cargo_args(&["fmt", "--all", "--", "--check"])),
        },
        Step {
            name: "clippy",
            action: Action::Cargo(cargo_args(&[
                "clippy",
                "--workspace",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ])),
        },
        Step {
            name: "tidy",
            action: Action::Tidy,
        },
        Step {
            name: "deploy",
            action: Action::Deploy,
        },
        Step {
            name: "test",
            action: Action::Cargo(test),
        },
    ]
}

/// Runs the steps in order, stopping at the first failure. `test_args` go to
/// `cargo test --workspace`.
pub(crate) fn run(root: &Path, test_args: &[String]) -> Result<()> {
    let steps = steps(test_args);
    let total = steps.len();
    let started = Instant::now();
    let mut timings = Vec::new();
    for (i, step) in steps.iter().enumerate() {
        let shown = match &step.action {
            Action::Cargo(args) => format!("cargo {}", args.join(" ")),
            Action::Tidy => "cargo xtask tidy".to_owned(),
            Action::Deploy => "cargo xtask deploy".to_owned(),
        };
        println!("\n==> ci [{}/{total}] {}: {shown}", i + 1, step.name);
        let step_started = Instant::now();
        let outcome = match &step.action {
            Action::Cargo(args) => run_cargo(root, args),
            Action::Tidy => tidy::run(root),
            Action::Deploy => deploy::run(root),
        };
        let took = step_started.elapsed();
        if let Err(e) = outcome {
            println!("==> ci: step `{}` FAILED after {}", step.name, secs(took));
            return Err(e).context(format!("ci failed at step `{}` ({shown})", step.name));
        }
        println!("==> ci: step `{}` ok ({})", step.name, secs(took));
        timings.push(format!("{} {}", step.name, secs(took)));
    }
    println!(
        "\n==> ci: all {total} steps passed in {} ({})",
        secs(started.elapsed()),
        timings.join(", ")
    );
    Ok(())
}

fn run_cargo(root: &Path, args: &[String]) -> Result<()> {
    let status = Command::new(cargo())
        .args(args)
        .current_dir(root)
        .status()
        .with_context(|| format!("running {} {}", cargo(), args.join(" ")))?;
    if !status.success() {
        bail!("cargo {} exited with {status}", args.join(" "));
    }
    Ok(())
}

fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_the_checks_in_order_and_passes_test_args_on() {
        let steps = steps(&["--".to_owned(), "--nocapture".to_owned()]);
        let names: Vec<_> = steps.iter().map(|s| s.name).collect();
        assert_eq!(names, ["fmt", "clippy", "tidy", "deploy", "test"]);
        let Some(Step {
            action: Action::Cargo(test),
            ..
        }) = steps.last()
        else {
            panic!("the last step runs cargo test");
        };
        assert_eq!(test, &["test", "--workspace", "--", "--nocapture"]);
    }
}
