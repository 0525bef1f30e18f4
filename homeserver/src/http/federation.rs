//! The federation surface: the key directory, `/_parley/fed/v1/version`, and the signed
//! server↔server endpoints (behind [`InboundVerifier`]). Mounted only when federation
//! is enabled. Handlers translate; the service decides.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{FromRef, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use parley_federation::api::{keys, version};
use parley_federation::directory;
use parley_federation::transport::http::VerifiedRequest;
use parley_federation::transport::http::{InboundVerifier, directory_response};
use parley_federation::{DeviceId as FedDeviceId, ProtocolError, UserId as FedUserId};

use super::error::{ApiError, fed_error};
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
        .route(keys::user_devices::PATH, get(user_devices))
        .route(keys::claim::PATH, axum::routing::post(claim))
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

/// `GET /_parley/fed/v1/users/{user_id}/devices` (signed): a local user's device ids.
async fn user_devices(
    State(st): State<FedState>,
    axum::extract::Path(user_id): axum::extract::Path<String>,
    _req: VerifiedRequest,
) -> Result<Json<keys::user_devices::Response>, ProtocolError> {
    let bad = |e: parley_client_api::IdError| {
        ProtocolError::new(parley_federation::FedErrorCode::InvalidParam, e.to_string())
    };
    let local = parley_client_api::UserId::try_from(user_id.as_str()).map_err(bad)?;
    let devices = st
        .services
        .keys
        .local_devices(&local)
        .await
        .map_err(fed_error)?;
    Ok(Json(keys::user_devices::Response {
        user_id: FedUserId::try_from(local.as_str()).map_err(|e| {
            ProtocolError::new(parley_federation::FedErrorCode::InvalidParam, e.to_string())
        })?,
        devices: devices
            .iter()
            .filter_map(|d| FedDeviceId::try_from(d.as_str()).ok())
            .collect(),
    }))
}

/// `POST /_parley/fed/v1/keys/claim` (signed): one KeyPackage per device of each local
/// user named; unknown users are left out.
async fn claim(
    State(st): State<FedState>,
    req: VerifiedRequest,
) -> Result<Json<keys::claim::Response>, ProtocolError> {
    let body: keys::claim::Request = req.json()?;
    if body.users.len() > keys::claim::MAX_USERS {
        return Err(ProtocolError::new(
            parley_federation::FedErrorCode::InvalidParam,
            format!("at most {} users per claim", keys::claim::MAX_USERS),
        ));
    }
    let mut out = keys::claim::Response::default();
    for user in body.users {
        let Ok(local) = parley_client_api::UserId::try_from(user.as_str()) else {
            continue;
        };
        let claimed = match st.services.keys.claim_local(&local).await {
            Ok(c) => c,
            Err(crate::service::ServiceError::UnknownUser(_)) => continue,
            Err(e) => return Err(fed_error(e)),
        };
        let claimed = claimed
            .into_iter()
            .filter_map(|c| {
                Some(keys::ClaimedKeyPackage {
                    device_id: FedDeviceId::try_from(c.device_id.as_str()).ok()?,
                    key_package: c.data.into(),
                    last_resort: c.last_resort,
                })
            })
            .collect();
        out.users.insert(user, claimed);
    }
    Ok(Json(out))
}
