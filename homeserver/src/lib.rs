//! The Parley homeserver.
//!
//! Layers, each only calling the next: [`http`] (handlers, WebSocket) → [`service`]
//! (behaviour) → [`store`] (trait) → `pg` | `sqlite`. The [`gateway`] task owns the map
//! of connected devices. `main` is a thin wrapper around [`run`].

pub mod admin_cli;
pub mod clock;
pub mod config;
pub mod gateway;
pub mod http;
pub mod metrics;
pub mod service;
pub mod store;

use std::future::Future;
use std::sync::Arc;

use axum::serve::ListenerExt as _;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use config::Config;
use http::AppState;
use service::Services;
use store::{AnyStore, Store};

/// Runs the server on `listener` until `shutdown` resolves.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    if let Some(path) = config.database_url.strip_prefix("sqlite://")
        && let Some(dir) = std::path::Path::new(path).parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir)?;
    }
    if let Some(dir) = &config.federation.dump_dir {
        std::fs::create_dir_all(dir)?;
    }
    let config = Arc::new(config);
    let store = AnyStore::connect(&config.database_url, config.limits.db_connections).await?;
    tracing::info!(
        backend = store.backend(),
        database = %config.database_url_redacted(),
        "store ready"
    );
    let gateway = match &config.bus_url {
        Some(url) => gateway::Gateway::spawn_with_bus(config.limits.socket_queue, url).await?,
        None => gateway::Gateway::spawn(config.limits.socket_queue),
    };
    let services = Services::start(
        config.clone(),
        store,
        gateway,
        Arc::new(metrics::Metrics::new()),
    )
    .await?;
    if let Some(fed) = &services.federation
        && config.federation.libp2p.enabled()
    {
        http::federation::start_libp2p(&services, fed).await?;
    }
    let cancel = CancellationToken::new();
    let state = AppState {
        services,
        sockets: Arc::new(Semaphore::new(config.limits.max_connections)),
        shutdown: cancel.clone(),
    };
    let addr = listener.local_addr()?;
    tracing::info!(%addr, server_name = %config.server_name, "listening");
    // The harnesses wait for this exact line.
    println!("parley-homeserver listening on {addr}");
    let admin = match config.admin_listen {
        Some(addr) => {
            let listener = TcpListener::bind(addr).await?;
            let addr = listener.local_addr()?;
            tracing::info!(%addr, "admin API listening");
            println!("parley-homeserver admin listening on {addr}");
            let app = http::admin::admin_app(state.clone());
            let stop = cancel.clone();
            Some(tokio::spawn(async move {
                axum::serve(listener, app)
                    .with_graceful_shutdown(async move { stop.cancelled().await })
                    .await
            }))
        }
        None => None,
    };
    let app = http::app(state);
    let stop = cancel.clone();
    // Frames go out as soon as they are written: without TCP_NODELAY a frame written
    // while the previous one is unacknowledged waits for the client's delayed ACK (40 ms).
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::warn!(error = %e, "TCP_NODELAY failed");
        }
    });
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            shutdown.await;
            stop.cancel();
        })
        .await?;
    if let Some(admin) = admin {
        admin.await??;
    }
    Ok(())
}
