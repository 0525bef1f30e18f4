//! The HTTP and WebSocket surface. Handlers translate between the wire types of
//! `parley-client-api` and the services; they hold no logic and touch no SQL.

pub mod client;
pub mod error;
pub mod extract;
pub mod ws;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{delete, get, post};
use parley_client_api::ErrorCode;
use parley_client_api::http::{accounts, chats, keys};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::service::Services;
use error::ApiError;

/// Shared state of every handler.
#[derive(Clone)]
pub struct AppState {
    pub services: Services,
    /// One permit per open device socket.
    pub sockets: Arc<Semaphore>,
    /// Cancelled when the server shuts down; sockets close.
    pub shutdown: CancellationToken,
}

/// The client API router.
pub fn app(state: AppState) -> Router {
    // Base64 inflates payloads by 4/3; leave room for the JSON around them.
    let body_limit = state.services.config.limits.max_payload_bytes / 3 * 4 + 8 * 1024;
    Router::new()
        .route(accounts::register::PATH, post(client::register))
        .route(accounts::login::PATH, post(client::login))
        .route(accounts::logout::PATH, post(client::logout))
        .route(accounts::list_devices::PATH, get(client::list_devices))
        .route(accounts::delete_device::PATH, delete(client::delete_device))
        .route(
            chats::create::PATH,
            post(client::create_chat).get(client::list_chats),
        )
        .route(chats::leave::PATH, post(client::leave_chat))
        .route(chats::send::PATH, post(client::send).get(client::history))
        .route(chats::receipts::PATH, get(client::receipts))
        .route(chats::members::PATH, get(client::members))
        .route(chats::rename::PATH, post(client::rename))
        .route(chats::set_admin::PATH, post(client::set_admin))
        .route(chats::mark_read::PATH, post(client::mark_read))
        .route(
            keys::upload::PATH,
            post(client::upload_keys).get(client::count_keys),
        )
        .route(keys::claim::PATH, post(client::claim_keys))
        .route(keys::user_devices::PATH, get(client::user_devices))
        .route(parley_client_api::ws::PATH, get(ws::upgrade))
        .route("/health", get(|| async { "ok" }))
        .fallback(|| async { ApiError::new(ErrorCode::NotFound, "no such endpoint") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                ErrorCode::MethodNotAllowed,
                "method not allowed on this path",
            )
        })
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(state)
}
