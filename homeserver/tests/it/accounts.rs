//! Accounts and devices over HTTP.

use anyhow::{Result, ensure};
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::harness::{Backend, PASSWORD, Server};

crate::on_both_backends!(
    devices_are_listed_removed_and_revoked,
    logout_revokes_only_that_device
);

async fn devices_are_listed_removed_and_revoked(backend: Backend) -> Result<()> {
    let server = Server::start(backend).await?;
    let phone = server.register("alice").await?;
    let (status, laptop) = server
        .post(
            "/v1/login",
            None,
            json!({"username": "@alice:parley.test", "password": PASSWORD, "device_name": "laptop"}),
        )
        .await?;
    ensure!(status == StatusCode::OK, "{laptop}");
    let laptop_token = laptop["access_token"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    ensure!(laptop["device_id"] != phone.device_id.as_str());

    let (_, list) = server.get("/v1/devices", &phone.token).await?;
    let devices = list["devices"].as_array().cloned().unwrap_or_default();
    ensure!(devices.len() == 2, "{list}");
    let current: Vec<_> = devices.iter().filter(|d| d["current"] == true).collect();
    ensure!(current.len() == 1 && current[0]["device_id"] == phone.device_id.as_str());
    ensure!(devices.iter().any(|d| d["display_name"] == "laptop"));

    // The phone removes the laptop: its token stops working at once.
    let (status, _) = server
        .request(
            Method::DELETE,
            &format!(
                "/v1/devices/{}",
                laptop["device_id"].as_str().unwrap_or_default()
            ),
            Some(&phone.token),
            None,
        )
        .await?;
    ensure!(status == StatusCode::NO_CONTENT);
    let (status, body) = server.get("/v1/devices", &laptop_token).await?;
    ensure!(
        status == StatusCode::UNAUTHORIZED && body["error"] == "unknown_token",
        "{body}"
    );
    // Removing it again, or someone else's device, is unknown_device.
    let bob = server.register("bob").await?;
    let (status, body) = server
        .request(
            Method::DELETE,
            &format!("/v1/devices/{}", phone.device_id),
            Some(&bob.token),
            None,
        )
        .await?;
    ensure!(
        status == StatusCode::NOT_FOUND && body["error"] == "unknown_device",
        "{body}"
    );
    let (status, _) = server.get("/v1/devices", &phone.token).await?;
    ensure!(status == StatusCode::OK);
    Ok(())
}

async fn logout_revokes_only_that_device(backend: Backend) -> Result<()> {
    let server = Server::start(backend).await?;
    let a = server.register("alice").await?;
    let b = server.login("alice").await?;
    let (status, _) = server.post("/v1/logout", Some(&a.token), json!({})).await?;
    ensure!(status == StatusCode::NO_CONTENT);
    let (status, _) = server.get("/v1/chats", &a.token).await?;
    ensure!(status == StatusCode::UNAUTHORIZED);
    let (status, _) = server.get("/v1/chats", &b.token).await?;
    ensure!(status == StatusCode::OK);
    Ok(())
}
