//! `cargo xtask deploy`: checks the files that deploy Parley, without a Docker engine.
//!
//! 1. `docker-compose.yml` is valid under the Compose Specification's JSON schema, checked
//!    by `check-jsonschema --builtin-schema vendor.compose-spec` (PyPI `check-jsonschema`,
//!    installed by `.ci/run`).
//! 2. It describes the topology the project promises: two homeservers built from the
//!    Dockerfile, each with federation on, its own Postgres service, and a policy that
//!    allows the other; and the push gateway from the same image.
//! 3. The `Dockerfile` is multi-stage, runs as a non-root user, builds only binaries that
//!    the workspace has, and copies into the runtime stage exactly the binaries the compose
//!    file runs; every other file it copies exists.
//! 4. `scripts/local-topology.sh` (the same topology as local processes) runs the same
//!    binaries with the same `PARLEY_*` settings as the compose file's homeservers.
//!
//! The checks run as `#[test]`s too (they fail, never skip, without `check-jsonschema`).

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;

use crate::cargo;

pub(crate) const COMPOSE: &str = "docker-compose.yml";
pub(crate) const DOCKERFILE: &str = "Dockerfile";
pub(crate) const SCRIPT: &str = "scripts/local-topology.sh";

const HOMESERVERS: [(&str, &str); 2] = [
    ("homeserver-a", "postgres-a"),
    ("homeserver-b", "postgres-b"),
];
const PUSH_GATEWAY: &str = "push-gateway";
/// Binaries the Dockerfile may name before they land (loudly reported, not refused).
/// None now: `parley-push-gateway` is in the homeserver crate.
const PENDING_BINARIES: &[&str] = &[];

/// Runs every check on the files under `root`.
pub(crate) fn run(root: &Path) -> Result<()> {
    let compose_path = root.join(COMPOSE);
    validate_schema(&compose_path)?;
    let compose = load_yaml(&compose_path)?;
    let dockerfile = std::fs::read_to_string(root.join(DOCKERFILE))
        .with_context(|| format!("reading {DOCKERFILE}"))?;
    let script =
        std::fs::read_to_string(root.join(SCRIPT)).with_context(|| format!("reading {SCRIPT}"))?;
    let image = check_dockerfile(&dockerfile, root, &workspace_binaries(root)?)?;
    let commands = check_compose(&compose, &image.binaries)?;
    check_script(&script, &compose, &commands)?;
    println!(
        "deploy: {COMPOSE} valid; {DOCKERFILE} builds {}; {SCRIPT} matches",
        image
            .binaries
            .iter()
            .cloned()
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}

/// `check-jsonschema` against the Compose Specification schema it ships.
pub(crate) fn validate_schema(compose: &Path) -> Result<()> {
    let output = Command::new("check-jsonschema")
        .args(["--builtin-schema", "vendor.compose-spec"])
        .arg(compose)
        .output();
    let output = match output {
        Ok(o) => o,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "check-jsonschema not found: install it with \
             `python3 -m pip install check-jsonschema==0.39.0` (.ci/run does)"
        ),
        Err(e) => return Err(e).context("running check-jsonschema"),
    };
    if !output.status.success() {
        bail!(
            "{} is not a valid compose file:\n{}{}",
            compose.display(),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

/// The YAML file as JSON, read by the YAML library `check-jsonschema` itself uses.
fn load_yaml(path: &Path) -> Result<Value> {
    let output = Command::new("python3")
        .args([
            "-c",
            "import json, sys\n\
             from ruamel.yaml import YAML\n\
             print(json.dumps(YAML(typ='safe').load(open(sys.argv[1]))))",
        ])
        .arg(path)
        .output()
        .context("running python3 (with ruamel.yaml, a dependency of check-jsonschema)")?;
    if !output.status.success() {
        bail!(
            "reading {} as YAML failed:\n{}",
            path.display(),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    serde_json::from_slice(&output.stdout).context("parsing the YAML converted to JSON")
}

/// Every binary target of the workspace's packages.
fn workspace_binaries(root: &Path) -> Result<BTreeSet<String>> {
    let output = Command::new(cargo())
        .args(["metadata", "--no-deps", "--format-version", "1"])
        .current_dir(root)
        .output()
        .context("running cargo metadata")?;
    ensure!(output.status.success(), "cargo metadata failed");
    let meta: Value = serde_json::from_slice(&output.stdout)?;
    let mut bins = BTreeSet::new();
    for package in meta["packages"].as_array().context("no packages")? {
        for target in package["targets"].as_array().into_iter().flatten() {
            let is_bin = target["kind"]
                .as_array()
                .is_some_and(|k| k.iter().any(|k| k == "bin"));
            if is_bin && let Some(name) = target["name"].as_str() {
                bins.insert(name.to_owned());
            }
        }
    }
    Ok(bins)
}

/// What the Dockerfile's runtime image holds.
#[derive(Debug)]
pub(crate) struct Image {
    /// Binaries built with `cargo build … --bin X` and copied into the runtime stage.
    pub(crate) binaries: BTreeSet<String>,
}

/// One instruction: keyword (upper case) and its arguments, continuation lines joined.
fn instructions(dockerfile: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in dockerfile.lines() {
        let trimmed = line.trim();
        if current.is_empty() && (trimmed.is_empty() || trimmed.starts_with('#')) {
            continue;
        }
        if let Some(head) = trimmed.strip_suffix('\\') {
            current.push_str(head);
            current.push(' ');
            continue;
        }
        current.push_str(trimmed);
        let (keyword, args) = current.split_once(' ').unwrap_or((&current, ""));
        out.push((keyword.to_ascii_uppercase(), args.trim().to_owned()));
        current.clear();
    }
    out
}

pub(crate) fn check_dockerfile(
    dockerfile: &str,
    root: &Path,
    workspace_bins: &BTreeSet<String>,
) -> Result<Image> {
    let steps = instructions(dockerfile);
    let stages: Vec<usize> = steps
        .iter()
        .enumerate()
        .filter(|(_, (k, _))| k == "FROM")
        .map(|(i, _)| i)
        .collect();
    ensure!(
        stages.len() >= 2,
        "{DOCKERFILE}: not multi-stage ({} FROM)",
        stages.len()
    );
    let runtime = &steps[*stages.last().unwrap_or(&0)..];

    // Built: every `--bin X` of a `cargo build` in a build stage.
    let mut built = BTreeSet::new();
    for (keyword, args) in &steps[..*stages.last().unwrap_or(&0)] {
        if keyword != "RUN" || !args.contains("cargo build") {
            continue;
        }
        let words: Vec<&str> = args.split_whitespace().collect();
        for pair in words.windows(2) {
            if pair[0] == "--bin" {
                built.insert(pair[1].to_owned());
            }
        }
    }
    ensure!(!built.is_empty(), "{DOCKERFILE}: no `cargo build --bin …`");
    let mut unknown: Vec<&String> = built.difference(workspace_bins).collect();
    unknown.retain(|bin| {
        let pending = PENDING_BINARIES.contains(&bin.as_str());
        if pending {
            eprintln!(
                "deploy: WARNING: {DOCKERFILE} builds {bin}, which is not in the workspace \
                 yet (being written); `docker build` fails until it lands"
            );
        }
        !pending
    });
    ensure!(
        unknown.is_empty(),
        "{DOCKERFILE} builds {unknown:?}, which no workspace package has as a binary"
    );

    // Copied into the runtime stage: the file names of `COPY --from=…` sources.
    let mut copied = BTreeSet::new();
    for (keyword, args) in runtime {
        if keyword != "COPY" {
            continue;
        }
        let words: Vec<&str> = args.split_whitespace().collect();
        let from_stage = words.iter().any(|w| w.starts_with("--from="));
        let paths: Vec<&&str> = words.iter().filter(|w| !w.starts_with("--")).collect();
        let Some((_, sources)) = paths.split_last() else {
            bail!("{DOCKERFILE}: COPY without a destination: {args}")
        };
        for source in sources {
            if from_stage {
                let name = source.rsplit('/').next().unwrap_or(source);
                copied.insert(name.to_owned());
            } else {
                ensure!(
                    root.join(source).exists(),
                    "{DOCKERFILE}: COPY {source}: no such file in the repository"
                );
            }
        }
    }
    ensure!(
        copied == built,
        "{DOCKERFILE}: the runtime stage copies {copied:?} but the build stage builds {built:?}"
    );

    // Non-root: the runtime stage's last USER names neither root nor uid 0.
    let user = runtime
        .iter()
        .rev()
        .find(|(k, _)| k == "USER")
        .map(|(_, a)| a.as_str());
    match user {
        None => bail!("{DOCKERFILE}: the runtime stage has no USER (it would run as root)"),
        Some(u) => {
            let name = u.split(':').next().unwrap_or(u);
            ensure!(
                name != "root" && name != "0",
                "{DOCKERFILE}: the runtime stage runs as root ({u})"
            );
        }
    }
    ensure!(
        runtime.iter().any(|(k, _)| k == "CMD" || k == "ENTRYPOINT"),
        "{DOCKERFILE}: the runtime stage has no CMD or ENTRYPOINT"
    );
    Ok(Image { binaries: built })
}

fn service<'a>(compose: &'a Value, name: &str) -> Result<&'a Value> {
    compose["services"]
        .get(name)
        .with_context(|| format!("{COMPOSE}: no service `{name}`"))
}

/// A service's `environment` as `(key, value)` pairs (map or `KEY=VALUE` list form).
fn environment(service: &Value) -> Vec<(String, String)> {
    match &service["environment"] {
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| {
                let v = match v {
                    Value::String(s) => s.clone(),
                    Value::Null => String::new(),
                    other => other.to_string(),
                };
                (k.clone(), v)
            })
            .collect(),
        Value::Array(list) => list
            .iter()
            .filter_map(Value::as_str)
            .map(|s| {
                let (k, v) = s.split_once('=').unwrap_or((s, ""));
                (k.to_owned(), v.to_owned())
            })
            .collect(),
        _ => Vec::new(),
    }
}

fn env<'a>(vars: &'a [(String, String)], key: &str) -> Option<&'a str> {
    vars.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

/// The program a service runs (`command`'s first word).
fn program(service: &Value) -> Option<String> {
    match &service["command"] {
        Value::Array(words) => words.first()?.as_str().map(str::to_owned),
        Value::String(line) => line.split_whitespace().next().map(str::to_owned),
        _ => None,
    }
}

/// Checks the topology; returns the programs the image's services run.
pub(crate) fn check_compose(compose: &Value, image_bins: &BTreeSet<String>) -> Result<Vec<String>> {
    let mut programs = Vec::new();
    for (i, (name, db)) in HOMESERVERS.iter().enumerate() {
        let (peer, _) = HOMESERVERS[1 - i];
        let svc = service(compose, name)?;
        service(compose, db)?;
        ensure!(
            !svc["build"].is_null(),
            "{COMPOSE}: {name} is not built from the Dockerfile"
        );
        ensure!(
            program(svc).as_deref() == Some("parley-homeserver"),
            "{COMPOSE}: {name} does not run parley-homeserver"
        );
        let vars = environment(svc);
        ensure!(
            env(&vars, "PARLEY_FEDERATION") == Some("true"),
            "{COMPOSE}: {name} without PARLEY_FEDERATION=true"
        );
        let database = env(&vars, "PARLEY_DATABASE_URL").unwrap_or("");
        ensure!(
            database.starts_with("postgres://") && database.contains(&format!("@{db}:")),
            "{COMPOSE}: {name}'s database is not its own Postgres `{db}`: {database}"
        );
        let depends = &svc["depends_on"];
        ensure!(
            depends.get(*db).is_some()
                || depends
                    .as_array()
                    .is_some_and(|a| a.iter().any(|d| d == *db)),
            "{COMPOSE}: {name} does not depend on {db}"
        );
        // Its policy (a config mounted at the --config path) allows the peer by name.
        let config_source = svc["configs"]
            .as_array()
            .and_then(|c| c.first())
            .and_then(|c| c["source"].as_str().or_else(|| c.as_str()))
            .with_context(|| format!("{COMPOSE}: {name} mounts no config"))?;
        let content = compose["configs"][config_source]["content"]
            .as_str()
            .with_context(|| format!("{COMPOSE}: config {config_source} has no content"))?;
        ensure!(
            content.contains(&format!("pattern = \"{peer}:*\", action = \"allow\"")),
            "{COMPOSE}: {name}'s policy does not allow {peer}"
        );
        programs.push("parley-homeserver".to_owned());
    }
    let push = service(compose, PUSH_GATEWAY)?;
    ensure!(
        program(push).as_deref() == Some("parley-push-gateway"),
        "{COMPOSE}: {PUSH_GATEWAY} does not run parley-push-gateway"
    );
    programs.push("parley-push-gateway".to_owned());
    // Every service built from the Dockerfile runs a binary the image holds.
    for (name, svc) in compose["services"].as_object().context("no services")? {
        if svc["build"].is_null() {
            continue;
        }
        let prog = program(svc).with_context(|| format!("{COMPOSE}: {name} has no command"))?;
        ensure!(
            image_bins.contains(&prog),
            "{COMPOSE}: {name} runs {prog}, which the image does not contain ({image_bins:?})"
        );
    }
    Ok(programs)
}

/// The local script runs the same programs with the same homeserver settings.
pub(crate) fn check_script(script: &str, compose: &Value, programs: &[String]) -> Result<()> {
    for prog in programs {
        ensure!(
            script.contains(&format!("/{prog}")),
            "{SCRIPT} does not start {prog}"
        );
    }
    for (name, _) in HOMESERVERS {
        for (key, _) in environment(service(compose, name)?) {
            ensure!(
                script.contains(&format!("{key}=")),
                "{SCRIPT} does not set {key}, which {COMPOSE} sets for {name}"
            );
        }
    }
    ensure!(
        script.contains("mode = \"allowlist\""),
        "{SCRIPT} does not use the compose file's allowlist policy"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> std::path::PathBuf {
        crate::project_root()
    }

    #[test]
    fn deploy_files_are_valid_and_agree() -> Result<()> {
        run(&root())
    }

    #[test]
    fn an_invalid_compose_file_is_refused() -> Result<()> {
        let good = std::fs::read_to_string(root().join(COMPOSE))?;
        let dir = tempfile_dir()?;
        let bad = dir.join("docker-compose.yml");
        // A misspelt key in one service.
        std::fs::write(
            &bad,
            good.replacen(
                "    restart: unless-stopped",
                "    restat: unless-stopped",
                1,
            ),
        )?;
        let err = validate_schema(&bad).expect_err("a misspelt key passed");
        assert!(format!("{err:#}").contains("restat"), "{err:#}");
        std::fs::remove_dir_all(&dir)?;
        Ok(())
    }

    #[test]
    fn dockerfile_checks_catch_root_and_unknown_binaries() {
        let bins: BTreeSet<String> = ["parley-homeserver".to_owned()].into();
        let good = "FROM rust AS build\nRUN cargo build --release \\\n  --bin parley-homeserver\n\
                    FROM debian\nCOPY --from=build /out/parley-homeserver /usr/local/bin/\n\
                    USER 10001:10001\nCMD [\"parley-homeserver\"]\n";
        let root = root();
        assert!(check_dockerfile(good, &root, &bins).is_ok());
        let as_root = good.replace("USER 10001:10001", "USER root");
        assert!(check_dockerfile(&as_root, &root, &bins).is_err());
        let no_user = good.replace("USER 10001:10001\n", "");
        assert!(check_dockerfile(&no_user, &root, &bins).is_err());
        let unknown = good.replace("--bin parley-homeserver", "--bin parley-nothing");
        assert!(check_dockerfile(&unknown, &root, &bins).is_err());
        let one_stage = good.replace("FROM debian\n", "");
        assert!(check_dockerfile(&one_stage, &root, &bins).is_err());
        let missing_file = good.replace("USER", "COPY no-such-file /x\nUSER");
        assert!(check_dockerfile(&missing_file, &root, &bins).is_err());
    }

    /// A fresh directory under the system's temporary directory.
    fn tempfile_dir() -> Result<std::path::PathBuf> {
        let dir = std::env::temp_dir().join(format!(
            "xtask-deploy-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_nanos()
        ));
        std::fs::create_dir_all(&dir)?;
        Ok(dir)
    }
}
