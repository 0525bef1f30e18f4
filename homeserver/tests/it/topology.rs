//! docker-compose.yml's topology as local processes (`scripts/local-topology.sh`): two
//! federated homeservers on 127.0.0.2 and 127.0.0.3, each with its own Postgres
//! database, and the push gateway when it is built.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, ensure};
use parley_testkit::ServerProcess;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::harness::PASSWORD;

/// Kills what the script started if the test ends before the script could clean up.
struct Leftovers(PathBuf);

impl Drop for Leftovers {
    fn drop(&mut self) {
        let Ok(pids) = std::fs::read_to_string(self.0.join("pids")) else {
            return;
        };
        for pid in pids.lines().filter(|l| !l.trim().is_empty()) {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", pid.trim()])
                .status();
        }
    }
}

/// A port free on both 127.0.0.2 and 127.0.0.3, with the next one free too (admin).
fn shared_free_port() -> Result<u16> {
    for _ in 0..50 {
        let port = parley_testkit::free_port("127.0.0.2");
        let free = |ip: &str, p: u16| std::net::TcpListener::bind((ip, p)).is_ok();
        if port < u16::MAX
            && ["127.0.0.2", "127.0.0.3"]
                .iter()
                .all(|ip| free(ip, port) && free(ip, port + 1))
        {
            return Ok(port);
        }
    }
    anyhow::bail!("no port free on both 127.0.0.2 and 127.0.0.3")
}

fn read_env(path: &Path) -> Result<BTreeMap<String, String>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
    Ok(text
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect())
}

async fn json_of(resp: reqwest::Response) -> Result<(StatusCode, Value)> {
    let status = resp.status();
    let body = resp.json().await.unwrap_or(Value::Null);
    Ok((status, body))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_topology_runs_two_federated_homeservers() -> Result<()> {
    let pg = parley_testkit::postgres().await?;
    let dir = tempfile::tempdir()?;
    let _leftovers = Leftovers(dir.path().to_owned());
    let port = shared_free_port()?;
    let push_port = parley_testkit::free_port("127.0.0.1");
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_parley-homeserver"))
        .parent()
        .context("binary directory")?;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/local-topology.sh");
    let mut command = tokio::process::Command::new("bash");
    command
        .arg(&script)
        .env("PARLEY_BIN_DIR", bin_dir)
        .env("PARLEY_PG_ADMIN_URL", pg.url())
        .env("PARLEY_TOPOLOGY_DIR", dir.path())
        .env("PARLEY_TOPOLOGY_PORT", port.to_string())
        .env("PARLEY_TOPOLOGY_PUSH_PORT", push_port.to_string())
        .env("PARLEY_LOG", "info");
    let mut topology = ServerProcess::start(command).await?;
    ensure!(topology.addr() == format!("127.0.0.2:{port}"));
    let env = read_env(&dir.path().join("topology.env"))?;
    let get = |k: &str| env.get(k).cloned().unwrap_or_default();
    let (a, b) = (get("HOMESERVER_A_URL"), get("HOMESERVER_B_URL"));
    ensure!(get("HOMESERVER_A_NAME") == format!("127.0.0.2:{port}"));
    ensure!(get("HOMESERVER_B_NAME") == format!("127.0.0.3:{port}"));
    ensure!(get("HOMESERVER_A_DATABASE") != get("HOMESERVER_B_DATABASE"));
    if bin_dir.join("parley-push-gateway").exists() {
        ensure!(
            get("PUSH_GATEWAY_URL") == format!("http://127.0.0.1:{push_port}"),
            "{env:?}"
        );
    }

    let http = reqwest::Client::new();
    let register = |base: String, name: &'static str| {
        let http = http.clone();
        async move {
            let (status, body) = json_of(
                http.post(format!("{base}/v1/register"))
                    .json(&json!({"username": name, "password": PASSWORD}))
                    .send()
                    .await?,
            )
            .await?;
            ensure!(status == StatusCode::CREATED, "{status} {body}");
            anyhow::Ok(body)
        }
    };
    let alice = register(a.clone(), "alice").await?;
    let bob = register(b.clone(), "bob").await?;
    ensure!(
        alice["user_id"] == format!("@alice:127.0.0.2:{port}"),
        "{alice}"
    );

    // Each asks its own server for the other's devices: a signed request to the peer,
    // which the peer's allowlist admits.
    for (base, me, other) in [(&b, &bob, &alice), (&a, &alice, &bob)] {
        let (status, body) = json_of(
            http.get(format!(
                "{base}/v1/users/{}/devices",
                other["user_id"].as_str().unwrap_or("")
            ))
            .bearer_auth(me["access_token"].as_str().unwrap_or(""))
            .send()
            .await?,
        )
        .await?;
        ensure!(status == StatusCode::OK, "{status} {body}");
        ensure!(body["devices"][0] == other["device_id"], "{body}");
    }

    // Two databases: each server counts only its own user. Policies: allowlist, the peer.
    let token = get("ADMIN_TOKEN");
    for (admin, peer) in [
        (get("HOMESERVER_A_ADMIN_URL"), get("HOMESERVER_B_NAME")),
        (get("HOMESERVER_B_ADMIN_URL"), get("HOMESERVER_A_NAME")),
    ] {
        let (status, stats) = json_of(
            http.get(format!("{admin}/_parley/admin/v1/stats"))
                .bearer_auth(&token)
                .send()
                .await?,
        )
        .await?;
        ensure!(status == StatusCode::OK && stats["users"] == 1, "{stats}");
        let (_, policy) = json_of(
            http.get(format!("{admin}/_parley/admin/v1/federation/rules"))
                .bearer_auth(&token)
                .send()
                .await?,
        )
        .await?;
        let text = policy.to_string();
        ensure!(
            text.contains("allowlist") && text.contains(&format!("{}:*", peer_host(&peer))),
            "{text}"
        );
    }

    // SIGTERM: the script stops both servers and drops its databases.
    topology.terminate().await?;
    topology.wait().await?;
    ensure!(
        http.get(format!("{a}/health")).send().await.is_err(),
        "homeserver-a still answers"
    );
    let pool = sqlx::PgPool::connect(pg.url()).await?;
    for db in [get("HOMESERVER_A_DATABASE"), get("HOMESERVER_B_DATABASE")] {
        let name = db.rsplit('/').next().unwrap_or("");
        let left: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_database WHERE datname = $1")
            .bind(name)
            .fetch_one(&pool)
            .await?;
        ensure!(left == 0, "database {name} was not dropped");
    }
    Ok(())
}

fn peer_host(name: &str) -> &str {
    name.rsplit_once(':').map_or(name, |(h, _)| h)
}
