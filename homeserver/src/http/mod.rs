//! The HTTP and WebSocket surface. Handlers translate between the wire types of
//! `parley-client-api` and the services; they hold no logic and touch no SQL.

pub mod admin;
pub mod backup;
pub mod blocks;
pub mod client;
pub mod contacts;
pub mod error;
pub mod extract;
pub mod federation;
pub mod links;
pub mod media;
pub mod presence;
pub mod ws;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{delete, get, head, post, put};
use parley_client_api::ErrorCode;
use parley_client_api::http::{
    accounts, chats, contacts as contacts_api, keys, media as media_api, presence as presence_api,
    push as push_api,
};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

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
    let body_limit = state.services.config.limits.max_event_bytes() / 3 * 4 + 8 * 1024;
    let federation = match &state.services.federation {
        Some(fed) => federation::router(state.services.clone(), fed.clone()),
        None => Router::new(),
    };
    Router::new()
        .merge(federation)
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
        .route(chats::group_info::PATH, get(client::group_info))
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
        .route(
            parley_client_api::http::links::create::PATH,
            post(links::create),
        )
        .route(parley_client_api::http::links::get::PATH, get(links::get))
        .route(
            parley_client_api::http::links::approve::PATH,
            post(links::approve).get(links::approval),
        )
        .route(
            media_api::download::PATH,
            get(media::download).merge(head(media::exists)),
        )
        .route(
            media_api::upload::PATH,
            put(media::upload)
                .layer(DefaultBodyLimit::disable())
                .merge(get(media::status)),
        )
        .route(
            presence_api::get_privacy::PATH,
            get(presence::get_privacy).put(presence::set_privacy),
        )
        .route(presence_api::get::PATH, get(presence::get_presence))
        .route(contacts_api::list::PATH, get(contacts::list))
        .route(
            contacts_api::add::PATH,
            put(contacts::add).delete(contacts::remove),
        )
        .route(
            push_api::set::PATH,
            post(presence::set_pusher).get(presence::list_pushers),
        )
        .route(push_api::delete::PATH, delete(presence::delete_pusher))
        .route(
            parley_client_api::http::backup::get::PATH,
            get(backup::get).put(backup::put).delete(backup::delete),
        )
        .route(
            parley_client_api::http::blocks::list::PATH,
            get(blocks::list),
        )
        .route(
            parley_client_api::http::blocks::block::PATH,
            put(blocks::block).delete(blocks::unblock),
        )
        .route(
            parley_client_api::http::reports::create::PATH,
            post(blocks::report),
        )
        .route(parley_client_api::ws::PATH, get(ws::upgrade))
        .route("/health", get(|| async { "ok" }))
        .route("/ready", get(client::ready))
        .route("/metrics", get(client::metrics))
        .fallback(|| async { ApiError::new(ErrorCode::NotFound, "no such endpoint") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                ErrorCode::MethodNotAllowed,
                "method not allowed on this path",
            )
        })
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(
            tower::ServiceBuilder::new()
                .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
                .layer(TraceLayer::new_for_http().make_span_with(|req: &axum::http::Request<_>| {
                    let id = req
                        .headers()
                        .get("x-request-id")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("-");
                    tracing::debug_span!("request", method = %req.method(), path = %req.uri().path(), request_id = %id)
                }))
                .layer(PropagateRequestIdLayer::x_request_id()),
        )
        .with_state(state)
}
