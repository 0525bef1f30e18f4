//! `parley-push-gateway`: the reference push gateway (`spec/push-gateway.md`).
//!
//! Receives `POST /_parley/push/v1/notify` from homeservers, writes each notification as
//! one JSON line on stdout, and, with `--forward URL`, POSTs the same body there (a
//! bridge to a real provider or a test sink). It answers `200 {"rejected": []}`, `400`
//! for a body that is not a notification, and `502` when the forward fails (the
//! homeserver then retries). It keeps nothing.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use clap::Parser;
use parley_homeserver::service::push::wire;

#[derive(Debug, Parser)]
#[command(
    name = "parley-push-gateway",
    version,
    about = "The reference Parley push gateway"
)]
struct Args {
    /// Address to listen on.
    #[arg(long, env = "PARLEY_PUSH_LISTEN", default_value = "127.0.0.1:8090")]
    listen: SocketAddr,
    /// POST every notification to this URL too (answer 502 when that fails).
    #[arg(long, env = "PARLEY_PUSH_FORWARD")]
    forward: Option<reqwest::Url>,
}

#[derive(Clone)]
struct AppState {
    forward: Option<reqwest::Url>,
    http: reqwest::Client,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PARLEY_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    let state = AppState {
        forward: args.forward,
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .build()?,
    };
    let app = Router::new()
        .route(wire::PATH, post(notify))
        .route("/health", axum::routing::get(|| async { "ok" }))
        .layer(axum::extract::DefaultBodyLimit::max(64 * 1024))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    let addr = listener.local_addr()?;
    // Harnesses wait for this line (stderr: stdout carries only notifications).
    eprintln!("parley-push-gateway listening on {addr}");
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}

async fn notify(
    State(st): State<AppState>,
    body: Result<Json<wire::Request>, JsonRejection>,
) -> Response {
    let Json(req) = match body {
        Ok(b) => b,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                Json(serde_json::json!({"error": "bad_json", "message": e.body_text()})),
            )
                .into_response();
        }
    };
    let ts = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    let n = &req.notification;
    println!(
        "{}",
        serde_json::json!({
            "ts": ts,
            "chat_id": n.chat_id,
            "counts": n.counts,
            "token": n.token,
        })
    );
    if let Some(url) = &st.forward {
        let ok = st
            .http
            .post(url.clone())
            .json(&req)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if !ok {
            tracing::warn!(%url, "forward failed");
            return (
                StatusCode::BAD_GATEWAY,
                Json(serde_json::json!({"error": "forward_failed", "message": "the forward URL did not accept the notification"})),
            )
                .into_response();
        }
    }
    Json(wire::Response::default()).into_response()
}
