//! The admin API and the `parley-homeserver admin` CLI.

use std::process::Output;

use anyhow::{Result, ensure};
use reqwest::StatusCode;
use serde_json::json;

use crate::harness::{Backend, PASSWORD, Server};

crate::on_both_backends!(admins_manage_users_and_devices_from_the_cli);

const TOKEN: &str = "admin-token-for-tests-0123456789";

async fn cli(admin_url: &str, token: &str, args: &[&str]) -> Result<Output> {
    Ok(
        tokio::process::Command::new(env!("CARGO_BIN_EXE_parley-homeserver"))
            .args(["admin", "--url", admin_url, "--token", token])
            .args(args)
            .output()
            .await?,
    )
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

async fn admins_manage_users_and_devices_from_the_cli(backend: Backend) -> Result<()> {
    let server = Server::start_with(
        backend,
        &["--admin-listen", "127.0.0.1:0", "--admin-token", TOKEN],
    )
    .await?;
    server
        .process
        .wait_for_log("admin listening on", crate::harness::WAIT)
        .await?;
    let logs = server.process.logs();
    let admin_addr = logs
        .lines()
        .find_map(|l| l.strip_prefix("parley-homeserver admin listening on "))
        .map(str::trim)
        .unwrap_or_default()
        .to_owned();
    let admin_url = format!("http://{admin_addr}");

    // The admin API is not on the public listener, and needs the token.
    let (status, _) = server
        .request(
            reqwest::Method::GET,
            "/_parley/admin/v1/stats",
            Some(TOKEN),
            None,
        )
        .await?;
    ensure!(status == StatusCode::NOT_FOUND);
    let resp = reqwest::Client::new()
        .get(format!("{admin_url}/_parley/admin/v1/stats"))
        .bearer_auth("wrong-token-wrong-token")
        .send()
        .await?;
    ensure!(resp.status() == StatusCode::UNAUTHORIZED);
    let out = cli(&admin_url, "wrong-token-wrong-token", &["stats"]).await?;
    ensure!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("unknown_token"),
        "{out:?}"
    );

    // Create a user from the CLI; she logs in.
    let out = cli(
        &admin_url,
        TOKEN,
        &["create-user", "carol", "--password", PASSWORD],
    )
    .await?;
    ensure!(
        out.status.success() && stdout(&out).contains("@carol:parley.test"),
        "{out:?}"
    );
    let carol = server.login("carol").await?;
    let carol2 = server.login("carol").await?;
    let out = cli(&admin_url, TOKEN, &["devices", "@carol:parley.test"]).await?;
    ensure!(stdout(&out).lines().count() == 2, "{}", stdout(&out));

    // Revoke one device: its token dies, the other lives.
    let out = cli(
        &admin_url,
        TOKEN,
        &["revoke-device", "@carol:parley.test", &carol2.device_id],
    )
    .await?;
    ensure!(out.status.success(), "{out:?}");
    ensure!(server.get("/v1/devices", &carol2.token).await?.0 == StatusCode::UNAUTHORIZED);
    ensure!(server.get("/v1/devices", &carol.token).await?.0 == StatusCode::OK);

    // Reset the password: the old one stops working.
    let out = cli(
        &admin_url,
        TOKEN,
        &[
            "reset-password",
            "@carol:parley.test",
            "--password",
            "a brand new secret",
        ],
    )
    .await?;
    ensure!(out.status.success(), "{out:?}");
    ensure!(server.login("carol").await.is_err());
    let (status, _) = server
        .post(
            "/v1/login",
            None,
            json!({"username": "carol", "password": "a brand new secret"}),
        )
        .await?;
    ensure!(status == StatusCode::OK);

    // Deactivate: every device is removed, her socket closes, logins fail, the name stays taken.
    let mut ws = server.connect(&carol).await?;
    ws.until_synced().await?;
    let out = cli(&admin_url, TOKEN, &["deactivate", "@carol:parley.test"]).await?;
    ensure!(
        out.status.success() && stdout(&out).contains("devices removed"),
        "{out:?}"
    );
    ensure!(ws.next().await.is_err(), "socket still open");
    ensure!(server.get("/v1/devices", &carol.token).await?.0 == StatusCode::UNAUTHORIZED);
    let (status, _) = server
        .post(
            "/v1/login",
            None,
            json!({"username": "carol", "password": "a brand new secret"}),
        )
        .await?;
    ensure!(status == StatusCode::UNAUTHORIZED);
    let (status, _) = server
        .post(
            "/v1/register",
            None,
            json!({"username": "carol", "password": PASSWORD}),
        )
        .await?;
    ensure!(status == StatusCode::CONFLICT);
    let out = cli(&admin_url, TOKEN, &["deactivate", "@carol:parley.test"]).await?;
    ensure!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("unknown_user"));

    let out = cli(&admin_url, TOKEN, &["stats"]).await?;
    ensure!(
        stdout(&out).contains("users 1") && stdout(&out).contains("devices 0"),
        "{}",
        stdout(&out)
    );
    Ok(())
}
