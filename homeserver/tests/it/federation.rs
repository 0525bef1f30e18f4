//! Federation: two (or more) real homeserver processes on 127.0.0.x in test mode.

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, ensure};
use parley_federation::directory;
use reqwest::StatusCode;

use crate::harness::{Backend, Server, User};

crate::on_both_backends!(
    publishes_a_verifiable_key_directory,
    policy_changes_take_effect_at_runtime
);

const TOKEN: &str = "admin-token-for-tests-0123456789";

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

/// Fetches and verifies `server`'s key directory with the crate's own verifier.
async fn fetch_directory(server: &Server) -> Result<directory::VerifiedDirectory> {
    let resp = reqwest::get(format!("{}{}", server.base, directory::PATH)).await?;
    ensure!(resp.status() == StatusCode::OK, "{}", resp.status());
    let headers: Vec<(String, String)> = resp
        .headers()
        .iter()
        .map(|(n, v)| (n.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
        .collect();
    let body = resp.bytes().await?;
    let name = parley_federation::ServerName::try_from(server.name())?;
    Ok(directory::verify_response(
        &name,
        &headers,
        &body,
        now_ms(),
    )?)
}

async fn publishes_a_verifiable_key_directory(backend: Backend) -> Result<()> {
    let mut a = Server::start_federated(backend, "127.0.0.2", &[]).await?;
    let dir = fetch_directory(&a).await?;
    ensure!(dir.keys.len() == 1, "{dir:?}");
    let key = dir.keys[0];
    ensure!(key.valid_at(now_ms() / 1000));

    // The key lives in the data directory, readable by the owner only, and survives a
    // restart (even a kill -9).
    let path = a.data_dir().join("federation.key");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path)
            .context("federation.key")?
            .permissions()
            .mode();
        ensure!(mode & 0o777 == 0o600, "mode {mode:o}");
    }
    a.crash_and_restart().await?;
    let again = fetch_directory(&a).await?;
    ensure!(again.keys[0].key == key.key, "the key changed on restart");

    let (status, body) = a
        .request(reqwest::Method::GET, "/_parley/fed/v1/version", None, None)
        .await?;
    ensure!(status == StatusCode::OK, "{status} {body}");
    ensure!(body["versions"][0] == "parley-fed-v1", "{body}");

    // A server without federation serves none of it.
    let plain = Server::start(backend).await?;
    let (status, _) = plain
        .request(reqwest::Method::GET, directory::PATH, None, None)
        .await?;
    ensure!(status == StatusCode::NOT_FOUND);
    ensure!(!plain.data_dir().join("federation.key").exists());
    Ok(())
}

/// Starts a federating server on `ip` with an admin listener; returns it and the
/// admin API's URL.
async fn start_with_admin(backend: Backend, ip: &str, extra: &[&str]) -> Result<(Server, String)> {
    let mut args = vec!["--admin-listen", "127.0.0.1:0", "--admin-token", TOKEN];
    args.extend_from_slice(extra);
    let server = Server::start_federated(backend, ip, &args).await?;
    server
        .process
        .wait_for_log("admin listening on", crate::harness::WAIT)
        .await?;
    let admin = server
        .process
        .logs()
        .lines()
        .find_map(|l| l.strip_prefix("parley-homeserver admin listening on "))
        .map(|a| format!("http://{}", a.trim()))
        .context("admin address")?;
    Ok((server, admin))
}

/// Runs `parley-homeserver admin federation …`; returns stdout.
async fn fed_cli(admin: &str, args: &[&str]) -> Result<String> {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_parley-homeserver"))
        .args(["admin", "--url", admin, "--token", TOKEN, "federation"])
        .args(args)
        .output()
        .await?;
    ensure!(out.status.success(), "{out:?}");
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `me` asks their server for `user`'s devices: `(status, body)`.
async fn devices_of(
    server: &Server,
    me: &User,
    user: &User,
) -> Result<(StatusCode, serde_json::Value)> {
    server
        .get(&format!("/v1/users/{}/devices", user.user_id), &me.token)
        .await
}

async fn policy_changes_take_effect_at_runtime(backend: Backend) -> Result<()> {
    let dumps = tempfile::tempdir()?;
    let dump_dir = dumps.path().join("fed-requests");
    let (a, admin_a) = start_with_admin(
        backend,
        "127.0.0.2",
        &["--federation-dump-dir", dump_dir.to_str().context("path")?],
    )
    .await?;
    let (b, admin_b) = start_with_admin(backend, "127.0.0.3", &[]).await?;
    let alice = a.register("alice").await?;
    let bob = b.register("bob").await?;
    let a_rule = a.name().to_owned();
    let b_rule = b.name().to_owned();

    // B refuses to send to an IP-literal server no rule names: nothing leaves B.
    let (status, body) = devices_of(&b, &bob, &alice).await?;
    ensure!(
        status == StatusCode::FORBIDDEN
            && body["message"]
                .as_str()
                .unwrap_or("")
                .contains("federation_denied"),
        "{status} {body}"
    );
    // B allows A; A still refuses B (inbound, before fetching B's keys): 403.
    let listed = fed_cli(&admin_b, &["allow", &a_rule]).await?;
    ensure!(listed.contains(&format!("allow {a_rule}")), "{listed}");
    let (status, body) = devices_of(&b, &bob, &alice).await?;
    ensure!(
        status == StatusCode::FORBIDDEN
            && body["message"]
                .as_str()
                .unwrap_or("")
                .contains("refuses us"),
        "{status} {body}"
    );
    // A allows B: the signed request verifies and bob sees alice's device.
    let listed = fed_cli(&admin_a, &["allow", &b_rule]).await?;
    let (status, body) = devices_of(&b, &bob, &alice).await?;
    ensure!(status == StatusCode::OK, "{status} {body} {listed}");
    ensure!(body["devices"][0] == alice.device_id.as_str(), "{body}");
    // A deny rule wins over the allow rule, at once.
    fed_cli(&admin_a, &["deny", "127.0.0.3:*", "--reason", "spam"]).await?;
    let (status, body) = devices_of(&b, &bob, &alice).await?;
    ensure!(status == StatusCode::FORBIDDEN, "{status} {body}");
    ensure!(a.process.logs().contains("federation request refused"));
    // Remove it; switch to allowlist mode: B is still allowed by name.
    let listed = fed_cli(&admin_a, &["list"]).await?;
    ensure!(listed.contains("deny 127.0.0.3:* spam"), "{listed}");
    let listed = fed_cli(&admin_a, &["remove", "127.0.0.3:*"]).await?;
    ensure!(!listed.contains("deny"), "{listed}");
    let listed = fed_cli(&admin_a, &["mode", "allowlist"]).await?;
    ensure!(listed.starts_with("mode allowlist"), "{listed}");
    let (status, body) = devices_of(&b, &bob, &alice).await?;
    ensure!(status == StatusCode::OK, "{status} {body}");
    // Bob claims alice's KeyPackage through A.
    let (status, body) = a
        .post(
            "/v1/keys/key_packages",
            Some(&alice.token),
            serde_json::json!({"key_packages": [parley_client_api::Payload(b"kp-one".to_vec())]}),
        )
        .await?;
    ensure!(status.is_success(), "{status} {body}");
    let (status, body) = b
        .post(
            "/v1/keys/claim",
            Some(&bob.token),
            serde_json::json!({ "user_id": alice.user_id }),
        )
        .await?;
    ensure!(status == StatusCode::OK, "{status} {body}");
    ensure!(
        body["devices"][0]["key_package"]
            == serde_json::json!(parley_client_api::Payload(b"kp-one".to_vec())),
        "{body}"
    );
    // A dumped the exact bytes of the signed claim it received (interop debugging).
    let mut claim_dump = None;
    for entry in std::fs::read_dir(&dump_dir)? {
        let bytes = std::fs::read(entry?.path())?;
        let text = String::from_utf8_lossy(&bytes).into_owned();
        if text.starts_with("POST /_parley/fed/v1/keys/claim HTTP/1.1\r\n") {
            claim_dump = Some(text);
        }
    }
    let dump = claim_dump.context("no dump of the claim request")?;
    ensure!(
        dump.contains("\r\nsignature-input: parley=")
            && dump.contains("\r\ncontent-digest: sha-256=:")
            && dump.ends_with(&format!("{{\"users\":[\"{}\"]}}", alice.user_id)),
        "{dump}"
    );
    // Unknown users come back as such.
    let (status, body) = b
        .get(
            &format!("/v1/users/@nobody:{}/devices", a.name()),
            &bob.token,
        )
        .await?;
    ensure!(status == StatusCode::NOT_FOUND, "{status} {body}");
    // The policy is persisted: it survives a restart of A.
    let mut a = a;
    a.crash_and_restart().await?;
    let (status, body) = devices_of(&b, &bob, &alice).await?;
    ensure!(status == StatusCode::OK, "{status} {body}");
    Ok(())
}
