//! Federation: two (or more) real homeserver processes on 127.0.0.x in test mode.

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, ensure};
use parley_federation::directory;
use reqwest::StatusCode;

use crate::harness::{Backend, Server};

crate::on_both_backends!(publishes_a_verifiable_key_directory);

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
