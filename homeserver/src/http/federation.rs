//! The federation surface: the key directory, `/_parley/fed/v1/version`, and the signed
//! server↔server endpoints (behind [`InboundVerifier`]). Mounted only when federation
//! is enabled. Handlers translate; the service decides.

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{FromRef, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use parley_federation::api::{chats, keys, media, send, version};
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
    let router = Router::new()
        .route(directory::PATH, get(key_directory))
        .route(version::PATH, get(versions))
        .route(keys::user_devices::PATH, get(user_devices))
        .route(keys::claim::PATH, axum::routing::post(claim))
        .route(send::PATH, axum::routing::put(transaction))
        .route(media::PATH, get(media_blob))
        .route(chats::group_info::PATH, get(group_info));
    let router = match services.config.federation.dump_dir.clone() {
        Some(dir) => router.route_layer(axum::middleware::from_fn_with_state(
            Arc::new(Dumper {
                dir,
                next: std::sync::atomic::AtomicU64::new(0),
            }),
            dump_request,
        )),
        None => router,
    };
    router.with_state(FedState {
        services,
        federation,
    })
}

/// Starts the libp2p transport (`[federation.libp2p]`): a node whose identity is the
/// signing key, serving inbound `/http/1.1` streams with the same federation router as
/// TCP, and sending to the configured (or advertised) peers. Prints
/// `parley-homeserver libp2p address ADDR` per address.
pub async fn start_libp2p(services: &Services, federation: &Federation) -> anyhow::Result<()> {
    use parley_federation::transport::libp2p::{Libp2pConfig, Libp2pNode, Libp2pRoutes, Multiaddr};
    let section = &services.config.federation.libp2p;
    let parse = |s: &String| {
        s.parse::<Multiaddr>()
            .map_err(|e| anyhow::anyhow!("[federation.libp2p]: bad multiaddr {s:?}: {e}"))
    };
    let listen = section.listen.iter().map(parse).collect::<Result<_, _>>()?;
    let mut peers = std::collections::HashMap::new();
    for (name, addr) in &section.peers {
        let server = parley_federation::ServerName::try_from(name.as_str())
            .map_err(|e| anyhow::anyhow!("[federation.libp2p.peers]: {name:?}: {e}"))?;
        peers.insert(server, parse(addr)?);
    }
    let router = router::<()>(services.clone(), federation.clone());
    let node = Libp2pNode::start(
        &federation.signing_key(),
        Libp2pConfig {
            listen,
            ..Libp2pConfig::default()
        },
        router,
    )
    .await?;
    let bound = node.listen_addrs();
    for addr in &bound {
        println!("parley-homeserver libp2p address {addr}");
    }
    let advertised = if section.external.is_empty() {
        bound
            .iter()
            .filter(|a| {
                !a.iter().any(|p| match p {
                    parley_federation::transport::libp2p::Protocol::Ip4(ip) => ip.is_unspecified(),
                    parley_federation::transport::libp2p::Protocol::Ip6(ip) => ip.is_unspecified(),
                    _ => false,
                })
            })
            .map(|a| a.to_string())
            .collect()
    } else {
        for a in &section.external {
            parse(a)?;
        }
        section.external.clone()
    };
    tracing::info!(peer_id = %node.peer_id(), ?advertised, "libp2p federation ready");
    let routes = Libp2pRoutes::new(node, peers, section.auto, federation.test_mode());
    federation.attach_libp2p(Arc::new(routes), advertised);
    Ok(())
}

/// Where received requests are dumped (interop debugging).
struct Dumper {
    dir: std::path::PathBuf,
    next: std::sync::atomic::AtomicU64,
}

/// Writes the request exactly as received (request line, headers in order, body) to
/// `<dir>/<ms>-<n>.http` before anything verifies it, then passes it on.
async fn dump_request(
    State(dumper): State<Arc<Dumper>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let (parts, body) = req.into_parts();
    let Ok(body) = axum::body::to_bytes(body, parley_federation::api::send::MAX_BODY_BYTES).await
    else {
        return ProtocolError::new(parley_federation::FedErrorCode::TooLarge, "body too large")
            .into_response();
    };
    let mut raw = format!("{} {} HTTP/1.1\r\n", parts.method, parts.uri).into_bytes();
    for (name, value) in &parts.headers {
        raw.extend_from_slice(name.as_str().as_bytes());
        raw.extend_from_slice(b": ");
        raw.extend_from_slice(value.as_bytes());
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(b"\r\n");
    raw.extend_from_slice(&body);
    let n = dumper
        .next
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = dumper.dir.join(format!("{}-{n:06}.http", now_ms()));
    if let Err(e) = tokio::fs::write(&path, &raw).await {
        tracing::warn!(path = %path.display(), "cannot dump a federation request: {e}");
    }
    next.run(axum::extract::Request::from_parts(parts, body.into()))
        .await
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

/// `PUT /_parley/fed/v1/send/{txn_id}` (signed): one transaction from the origin's
/// outbox. Answered after everything it reports is committed.
async fn transaction(
    State(st): State<FedState>,
    axum::extract::Path(txn_id): axum::extract::Path<String>,
    req: VerifiedRequest,
) -> Result<Json<send::Response>, ProtocolError> {
    if txn_id.is_empty() || txn_id.len() > 128 || !txn_id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ProtocolError::new(
            parley_federation::FedErrorCode::InvalidParam,
            "txn_id: 1 to 128 printable ASCII characters",
        ));
    }
    let origin = req.origin().clone();
    if let Some(relay) = &st.services.relay {
        relay.inbound(origin.as_str());
    }
    let body: send::Request = req.json()?;
    crate::service::inbound::receive(&st.services, &origin, &txn_id, body)
        .await
        .map(Json)
        .map_err(fed_error)
}

/// `GET /_parley/fed/v1/media/{hash}` (signed): a stored blob's bytes, for a peer with
/// current members in a chat whose events refer to it (else `404 not_found`);
/// `Range: bytes=N-` resumes an interrupted fetch (`206`).
async fn media_blob(
    State(st): State<FedState>,
    axum::extract::Path(hash): axum::extract::Path<String>,
    headers: axum::http::HeaderMap,
    req: VerifiedRequest,
) -> Result<Response, ProtocolError> {
    use axum::http::{StatusCode, header};
    let hash = parley_client_api::BlobHash::try_from(hash.as_str()).map_err(|e| {
        ProtocolError::new(parley_federation::FedErrorCode::InvalidParam, e.to_string())
    })?;
    let media = &st.services.media;
    let size = media.size(&hash).await.map_err(fed_error)?.unwrap_or(0);
    let range = match headers.get(header::RANGE).and_then(|v| v.to_str().ok()) {
        Some(h) if size > 0 => match crate::service::media::parse_range(h, size) {
            Ok(r) => r,
            Err(_) => {
                return Ok((
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    [(header::CONTENT_RANGE, format!("bytes */{size}"))],
                )
                    .into_response());
            }
        },
        _ => None,
    };
    let partial = range.is_some();
    let d = media
        .serve_peer(req.origin().as_str(), &hash, range)
        .await
        .map_err(fed_error)?;
    Ok(super::media::blob_response(d, partial).into_response())
}

/// `GET /_parley/fed/v1/chats/{chat_id}/group_info/{user_id}` (signed): a hosted chat's
/// current GroupInfo for a device of `user_id`, a user of the origin and a current
/// member (spec/backup.md BK20).
async fn group_info(
    State(st): State<FedState>,
    axum::extract::Path((chat_id, user_id)): axum::extract::Path<(String, String)>,
    req: VerifiedRequest,
) -> Result<Json<chats::group_info::Response>, ProtocolError> {
    use parley_federation::FedErrorCode as C;
    let bad = |e: parley_client_api::IdError| ProtocolError::new(C::InvalidParam, e.to_string());
    let chat = parley_client_api::ChatId::try_from(chat_id.as_str()).map_err(bad)?;
    let user = parley_client_api::UserId::try_from(user_id.as_str()).map_err(bad)?;
    if chat.hub() != st.services.config.server_name.as_str() {
        return Err(ProtocolError::new(
            C::UnknownChat,
            format!("{chat} is not hosted here"),
        ));
    }
    if user.server_name() != req.origin().as_str() {
        return Err(ProtocolError::new(
            C::Forbidden,
            format!("{} cannot ask for {user}", req.origin()),
        ));
    }
    let (epoch, data) = st
        .services
        .chats
        .group_info_as_hub(&chat, &user)
        .await
        .map_err(fed_error)?;
    Ok(Json(chats::group_info::Response {
        chat_id: parley_federation::ChatId::try_from(chat.as_str())
            .map_err(|e| ProtocolError::new(C::Internal, e.to_string()))?,
        epoch,
        group_info: data.into(),
    }))
}
