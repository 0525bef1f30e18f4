//! The federation surface: the key directory, `/_parley/fed/v1/version`, and the signed
//! server↔server endpoints (behind [`InboundVerifier`]). Mounted only when federation
//! is enabled. Handlers translate; the service decides.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{FromRef, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use parley_federation::api::version;
use parley_federation::directory;
use parley_federation::transport::http::{InboundVerifier, directory_response};

use super::error::ApiError;
use crate::clock::now_ms;
use crate::service::Services;
use crate::service::federation::Federation;

/// State of the federation handlers.
#[derive(Clone)]
pub struct FedState {
    pub services: Services,
    pub federation: Federation,
}

impl FromRef<FedState> for Arc<InboundVerifier> {
    fn from_ref(state: &FedState) -> Self {
        state.federation.verifier().clone()
    }
}

/// The federation routes, ready to merge into the public router.
pub fn router<S: Clone + Send + Sync + 'static>(
    services: Services,
    federation: Federation,
) -> Router<S> {
    Router::new()
        .route(directory::PATH, get(key_directory))
        .route(version::PATH, get(versions))
        .with_state(FedState {
            services,
            federation,
        })
}

async fn key_directory(State(st): State<FedState>) -> Response {
    match st.federation.directory(now_ms()) {
        Ok(d) => directory_response(d),
        Err(e) => ApiError::from(e).into_response(),
    }
}

async fn versions() -> Json<version::Response> {
    Json(version::Response {
        versions: version::VERSIONS.iter().map(|v| (*v).to_owned()).collect(),
        features: vec!["mls-0x0003".into()],
        server: Some(version::Software {
            name: "parley-homeserver".into(),
            version: env!("CARGO_PKG_VERSION").into(),
        }),
    })
}
