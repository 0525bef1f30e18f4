//! The workspace's invariants as checks (rust-analyzer's "tidy"), run by
//! `cargo xtask tidy` and by the `#[test]` below as part of `cargo test --workspace`.
//!
//! 1. Dependency rules (the table in design.md): a crate's normal (non-dev, non-build)
//!    transitive dependencies never include the crates it must not depend on.
//! 2. One version each of the crates that must not be built twice (`links` crates and the
//!    crypto stack).
//! 3. No leftover placeholders or debugging, no ignored tests and no unbounded channels in
//!    any tracked `.rs` file.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fmt;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::cargo;

/// `(crate, crates it must never depend on)`, from design.md. Crates not in the workspace
/// (yet) are skipped. A third-party name also covers its family (`sqlx` covers
/// `sqlx-core`, `openmls` covers `openmls_traits`).
const FORBIDDEN: &[(&str, &[&str])] = &[
    (
        "parley-homeserver",
        &["openmls", "parley-crypto", "parley-client"],
    ),
    (
        "parley-crypto",
        &[
            "tokio",
            "sqlx",
            "axum",
            "reqwest",
            "libp2p",
            "parley-client-api",
            "parley-client",
            "parley-federation",
            "parley-homeserver",
            "parley-spec",
            "parley-bench",
        ],
    ),
    (
        "parley-federation",
        &["sqlx", "parley-crypto", "parley-homeserver"],
    ),
    (
        "parley-client-api",
        &["tokio", "sqlx", "axum", "parley-crypto", "openmls"],
    ),
    ("parley-client", &["parley-homeserver", "parley-federation"]),
    ("parley-spec", &["parley-homeserver"]),
    ("parley-bench", &["parley-homeserver"]),
    (
        "xtask",
        &[
            "parley-crypto",
            "parley-federation",
            "parley-client-api",
            "parley-client",
            "parley-homeserver",
            "parley-spec",
            "parley-bench",
        ],
    ),
];

/// Crates the whole graph may hold in one version only: `libsqlite3-sys` is a `links`
/// crate, and the others would otherwise be built twice with incompatible types.
const SINGLE_VERSION: &[&str] = &[
    "libsqlite3-sys",
    "sqlx",
    "openmls",
    "ed25519-dalek",
    "chacha20poly1305",
];

/// One broken invariant, printed as one line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Violation(String);

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Runs every check in the workspace at `root`, prints each violation, and fails if any.
pub(crate) fn run(root: &Path) -> Result<()> {
    let violations = check(root)?;
    for v in &violations {
        println!("tidy: {v}");
    }
    if !violations.is_empty() {
        bail!("tidy: {} violation(s)", violations.len());
    }
    println!("tidy: ok");
    Ok(())
}

/// Every violation in the workspace at `root`.
pub(crate) fn check(root: &Path) -> Result<Vec<Violation>> {
    let graph = Graph::from_metadata(&cargo_metadata(root)?)?;
    let mut violations = dependency_rules(&graph);
    violations.extend(single_versions(&graph));
    violations.extend(scan_sources(root)?);
    Ok(violations)
}

fn cargo_metadata(root: &Path) -> Result<Value> {
    let output = Command::new(cargo())
        .args(["metadata", "--format-version", "1"])
        .current_dir(root)
        .output()
        .context("running cargo metadata")?;
    if !output.status.success() {
        bail!(
            "cargo metadata failed ({}):\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    serde_json::from_slice(&output.stdout).context("parsing the output of cargo metadata")
}

/// The resolved dependency graph, as far as the checks need it.
#[derive(Debug, Default)]
struct Graph {
    /// package id → (name, version)
    packages: BTreeMap<String, (String, String)>,
    /// package id → its normal (non-dev, non-build) dependencies
    normal: HashMap<String, Vec<String>>,
    /// package id → packages that depend on it in any way
    dependents: HashMap<String, BTreeSet<String>>,
    /// package name → id, for the workspace's own crates
    members: BTreeMap<String, String>,
}

impl Graph {
    fn from_metadata(metadata: &Value) -> Result<Self> {
        let mut graph = Self::default();
        for package in array(metadata, "packages")? {
            graph.packages.insert(
                string(package, "id")?.to_owned(),
                (
                    string(package, "name")?.to_owned(),
                    string(package, "version")?.to_owned(),
                ),
            );
        }
        for member in array(metadata, "workspace_members")? {
            let id = member
                .as_str()
                .context("a workspace member id is not a string")?;
            let name = graph.name(id).to_owned();
            graph.members.insert(name, id.to_owned());
        }
        let resolve = metadata
            .get("resolve")
            .context("cargo metadata has no `resolve` (was it run with --no-deps?)")?;
        for node in array(resolve, "nodes")? {
            let id = string(node, "id")?;
            for dep in array(node, "deps")? {
                let dep_id = string(dep, "pkg")?;
                let is_normal = array(dep, "dep_kinds")?
                    .iter()
                    .any(|kind| kind.get("kind").is_none_or(Value::is_null));
                if is_normal {
                    graph
                        .normal
                        .entry(id.to_owned())
                        .or_default()
                        .push(dep_id.to_owned());
                }
                graph
                    .dependents
                    .entry(dep_id.to_owned())
                    .or_default()
                    .insert(id.to_owned());
            }
        }
        Ok(graph)
    }

    fn name<'a>(&'a self, id: &'a str) -> &'a str {
        self.packages.get(id).map_or(id, |(name, _)| name.as_str())
    }

    fn display(&self, id: &str) -> String {
        match self.packages.get(id) {
            Some((name, version)) => format!("{name} {version}"),
            None => id.to_owned(),
        }
    }

    /// Every package reachable from `from` over normal edges, each with the path that
    /// reaches it first (breadth-first, so a shortest one).
    fn normal_closure(&self, from: &str) -> BTreeMap<String, Vec<String>> {
        let mut paths = BTreeMap::new();
        paths.insert(from.to_owned(), vec![from.to_owned()]);
        let mut queue = VecDeque::from([from.to_owned()]);
        while let Some(id) = queue.pop_front() {
            let path = paths[&id].clone();
            for dep in self.normal.get(&id).into_iter().flatten() {
                if !paths.contains_key(dep) {
                    let mut dep_path = path.clone();
                    dep_path.push(dep.clone());
                    paths.insert(dep.clone(), dep_path);
                    queue.push_back(dep.clone());
                }
            }
        }
        paths.remove(from);
        paths
    }
}

fn array<'a>(value: &'a Value, key: &str) -> Result<&'a Vec<Value>> {
    value
        .get(key)
        .and_then(Value::as_array)
        .with_context(|| format!("cargo metadata: `{key}` is missing or not an array"))
}

fn string<'a>(value: &'a Value, key: &str) -> Result<&'a str> {
    value
        .get(key)
        .and_then(Value::as_str)
        .with_context(|| format!("cargo metadata: `{key}` is missing or not a string"))
}

/// Whether `package` is `forbidden` or, for third-party names, one of its family.
fn is_forbidden(package: &str, forbidden: &str) -> bool {
    package == forbidden
        || (!forbidden.starts_with("parley-")
            && package
                .strip_prefix(forbidden)
                .is_some_and(|rest| rest.starts_with(['-', '_'])))
}

fn dependency_rules(graph: &Graph) -> Vec<Violation> {
    let mut violations = Vec::new();
    for (krate, forbidden) in FORBIDDEN {
        let Some(root) = graph.members.get(*krate) else {
            continue; // not written yet
        };
        let rule_for = |id: &String| {
            let name = graph.name(id);
            forbidden.iter().find(|f| is_forbidden(name, f))
        };
        for (id, path) in graph.normal_closure(root) {
            // Report each forbidden crate reached, not also everything behind it.
            if path[..path.len() - 1]
                .iter()
                .any(|hop| rule_for(hop).is_some())
            {
                continue;
            }
            if let Some(rule) = rule_for(&id) {
                let chain: Vec<String> = path.iter().map(|id| graph.display(id)).collect();
                violations.push(Violation(format!(
                    "{krate} must never depend on {rule} (design.md), but: {}",
                    chain.join(" -> ")
                )));
            }
        }
    }
    violations
}

fn single_versions(graph: &Graph) -> Vec<Violation> {
    let mut violations = Vec::new();
    for name in SINGLE_VERSION {
        let ids: Vec<&String> = graph
            .packages
            .iter()
            .filter(|(_, (n, _))| n == name)
            .map(|(id, _)| id)
            .collect();
        if ids.len() < 2 {
            continue;
        }
        let versions: Vec<String> = ids
            .iter()
            .map(|id| {
                let users: Vec<&str> = graph
                    .dependents
                    .get(*id)
                    .into_iter()
                    .flatten()
                    .map(|d| graph.name(d))
                    .collect();
                format!(
                    "{} (used by {})",
                    graph.display(id),
                    if users.is_empty() {
                        "nothing".to_owned()
                    } else {
                        users.join(", ")
                    }
                )
            })
            .collect();
        violations.push(Violation(format!(
            "{name} must exist in one version only (design.md), but the graph has {}: {}",
            ids.len(),
            versions.join("; ")
        )));
    }
    violations
}

/// What the source scan looks for. The needles are built from pieces so that this file
/// does not trip its own scan.
struct Needle {
    patterns: &'static [&'static str],
    why: &'static str,
}

const NEEDLES: &[Needle] = &[
    Needle {
        patterns: &[concat!("to", "do!(")],
        why: "unfinished code: finish it, or return an error and open an issue",
    },
    Needle {
        patterns: &[concat!("unimple", "mented!(")],
        why: "unfinished code: finish it, or return an error and open an issue",
    },
    Needle {
        patterns: &[concat!("db", "g!(")],
        why: "debugging leftover: use tracing, or remove it",
    },
    Needle {
        patterns: &[
            concat!("#[ig", "nore]"),
            concat!("#[ig", "nore ="),
            concat!("#[ig", "nore="),
        ],
        why: "ignored test: fix it or delete it",
    },
    Needle {
        patterns: &[
            concat!("unbounded", "_channel"),
            concat!("mpsc::", "unbounded"),
            concat!("mpsc::", "channel()"),
        ],
        why: "unbounded channel: bound it (design.md: bound everything)",
    },
];

fn scan_sources(root: &Path) -> Result<Vec<Violation>> {
    let output = Command::new("git")
        .args(["ls-files", "-z", "--", "*.rs"])
        .current_dir(root)
        .output()
        .context("running git ls-files (tidy scans the files git tracks)")?;
    if !output.status.success() {
        bail!(
            "git ls-files failed ({}):\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let mut violations = Vec::new();
    for path in String::from_utf8_lossy(&output.stdout)
        .split('\0')
        .filter(|p| !p.is_empty())
    {
        let text = match std::fs::read(root.join(path)) {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            // Deleted in the work tree but not yet in the index.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("reading {path}")),
        };
        violations.extend(scan_text(path, &text));
    }
    Ok(violations)
}

fn scan_text(path: &str, text: &str) -> Vec<Violation> {
    let mut violations = Vec::new();
    for (number, line) in text.lines().enumerate() {
        for needle in NEEDLES {
            if let Some(found) = needle.patterns.iter().find(|p| line.contains(**p)) {
                violations.push(Violation(format!(
                    "{path}:{}: `{found}`: {}",
                    number + 1,
                    needle.why
                )));
            }
        }
    }
    violations
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The invariants hold in this workspace. Run `cargo xtask tidy` for the same report.
    #[test]
    fn workspace_is_tidy() -> Result<()> {
        let violations = check(&crate::project_root())?;
        let report: Vec<String> = violations.iter().map(ToString::to_string).collect();
        assert!(
            violations.is_empty(),
            "tidy found {} violation(s):\n{}",
            violations.len(),
            report.join("\n")
        );
        Ok(())
    }

    fn normal(pkg: &str) -> Value {
        json!({ "pkg": pkg, "dep_kinds": [{ "kind": null, "target": null }] })
    }

    fn dev(pkg: &str) -> Value {
        json!({ "pkg": pkg, "dep_kinds": [{ "kind": "dev", "target": null }] })
    }

    fn package(id: &str) -> Value {
        let (name, version) = id.split_once('@').unwrap_or((id, "1.0.0"));
        json!({ "id": id, "name": name, "version": version })
    }

    /// homeserver -> client-api -> openmls_traits (forbidden, by family);
    /// homeserver -(dev)-> parley-crypto (allowed: dev only);
    /// crypto -> sqlx@0.8.6, client-api -> sqlx@0.9.0 (two versions).
    fn fixture() -> Result<Graph> {
        let ids = [
            "parley-homeserver",
            "parley-client-api",
            "parley-crypto",
            "openmls_traits",
            "sqlx@0.8.6",
            "sqlx@0.9.0",
        ];
        let metadata = json!({
            "packages": ids.iter().map(|id| package(id)).collect::<Vec<_>>(),
            "workspace_members": ["parley-homeserver", "parley-client-api", "parley-crypto"],
            "resolve": { "nodes": [
                { "id": "parley-homeserver", "deps": [normal("parley-client-api"), dev("parley-crypto")] },
                { "id": "parley-client-api", "deps": [normal("openmls_traits"), normal("sqlx@0.9.0")] },
                { "id": "parley-crypto", "deps": [normal("sqlx@0.8.6")] },
                { "id": "openmls_traits", "deps": [] },
                { "id": "sqlx@0.8.6", "deps": [] },
                { "id": "sqlx@0.9.0", "deps": [] },
            ]},
        });
        Graph::from_metadata(&metadata)
    }

    #[test]
    fn reports_forbidden_edges_with_their_path_and_ignores_dev_edges() -> Result<()> {
        let found: Vec<String> = dependency_rules(&fixture()?)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            found,
            [
                "parley-homeserver must never depend on openmls (design.md), but: \
                 parley-homeserver 1.0.0 -> parley-client-api 1.0.0 -> openmls_traits 1.0.0",
                "parley-crypto must never depend on sqlx (design.md), but: \
                 parley-crypto 1.0.0 -> sqlx 0.8.6",
                "parley-client-api must never depend on openmls (design.md), but: \
                 parley-client-api 1.0.0 -> openmls_traits 1.0.0",
                "parley-client-api must never depend on sqlx (design.md), but: \
                 parley-client-api 1.0.0 -> sqlx 0.9.0",
            ]
        );
        Ok(())
    }

    #[test]
    fn reports_crates_built_in_two_versions() -> Result<()> {
        let found: Vec<String> = single_versions(&fixture()?)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            found,
            [
                "sqlx must exist in one version only (design.md), but the graph has 2: \
              sqlx 0.8.6 (used by parley-crypto); sqlx 0.9.0 (used by parley-client-api)"
            ]
        );
        Ok(())
    }

    #[test]
    fn families_cover_third_party_crates_only() {
        assert!(is_forbidden("openmls", "openmls"));
        assert!(is_forbidden("openmls_traits", "openmls"));
        assert!(is_forbidden("sqlx-core", "sqlx"));
        assert!(!is_forbidden("tokio", "tokio-util"));
        assert!(!is_forbidden("axumite", "axum"));
        assert!(!is_forbidden("parley-client-api", "parley-client"));
        assert!(is_forbidden("parley-client", "parley-client"));
    }

    #[test]
    fn scans_for_leftovers_by_line() {
        let text = [
            "fn main() {",
            concat!("    let x = db", "g!(1);"),
            concat!("    to", "do!()"),
            concat!("#[ig", "nore = \"slow\"]"),
            concat!(
                "let (tx, rx) = tokio::sync::mpsc::unb",
                "ounded_channel::<u8>();"
            ),
            concat!("let (tx, rx) = std::sync::mpsc::", "channel();"),
            "let (tx, rx) = tokio::sync::mpsc::channel(16);",
            "#[ignore_me]",
            "}",
        ]
        .join("\n");
        let found: Vec<String> = scan_text("src/lib.rs", &text)
            .iter()
            .map(|v| {
                v.to_string()
                    .split(": ")
                    .next()
                    .unwrap_or_default()
                    .to_owned()
            })
            .collect();
        assert_eq!(
            found,
            [
                "src/lib.rs:2",
                "src/lib.rs:3",
                "src/lib.rs:4",
                "src/lib.rs:5",
                "src/lib.rs:6"
            ]
        );
    }
}
