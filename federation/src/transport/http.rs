//! The HTTP transport: a reqwest client that signs every request, and an axum-side
//! verifier (extractor, middleware) that runs the staged verifier of
//! [`crate::signing::profile`] with the homeserver's key fetching, policy and nonce
//! storage behind [`FederationContext`] and [`NonceStore`].
//!
//! Everything here translates; every decision is in the pure cores.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{FromRef, FromRequest, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use libp2p::Multiaddr;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::libp2p::Libp2pRoutes;
use super::system_now_ms;
use crate::api::Method;
use crate::directory::{self, DirectoryResponse, KeyCache, Lookup, VerifiedDirectory};
use crate::error::{ErrorBody, FedErrorCode, ProtocolError};
use crate::ids::ServerName;
use crate::keys::{KeyId, ServerPublicKey};
use crate::outbox::Outcome;
use crate::policy::Policy;
use crate::signing::nonce::{NonceCache, NonceError};
use crate::signing::profile::{
    self, IncomingRequest, OutgoingRequest, RequestSigner, Verified, random_nonce,
};

/// A boxed `Send` future, so the context traits stay object-safe.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

// ------------------------------------------------------------------------------------
// Sending

/// How the client reaches peers.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Test mode: plain `http://`, and loopback/private addresses allowed. Production:
    /// `https://` only, and names resolving only to private or loopback ranges refused.
    pub insecure_test_mode: bool,
    /// Whole-request timeout.
    pub timeout: Duration,
    pub connect_timeout: Duration,
    /// Largest response body read.
    pub max_response_bytes: usize,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            insecure_test_mode: false,
            timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            max_response_bytes: 4 * 1024 * 1024,
        }
    }
}

/// Why a federation request failed before a usable answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot build the HTTP client: {0}")]
    Build(String),
    #[error("bad request target {0}")]
    Target(String),
    #[error("cannot sign: {0}")]
    Sign(#[from] profile::SignError),
    #[error("request timed out")]
    Timeout,
    #[error("network: {0}")]
    Network(String),
    #[error("response larger than {0} bytes")]
    TooLarge(usize),
    /// The peer answered with a non-2xx status (its error body, when it sent one).
    #[error("peer answered {status}: {body:?}")]
    Status {
        status: u16,
        body: Option<ErrorBody>,
    },
    #[error("cannot encode or decode JSON: {0}")]
    Json(String),
    #[error("key directory: {0}")]
    Directory(#[from] directory::DirectoryError),
}

/// A peer's answer.
#[derive(Debug, Clone)]
pub struct FedResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

/// A 2xx answer whose body is read as it arrives ([`FederationClient::get_streamed`]).
#[derive(Debug)]
pub struct StreamedResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    body: StreamedBody,
}

/// Where a streamed body comes from.
#[derive(Debug)]
enum StreamedBody {
    Http(reqwest::Response),
    /// Over libp2p: the hyper body, and when the whole transfer must be done.
    Libp2p(hyper::body::Incoming, tokio::time::Instant),
}

impl StreamedResponse {
    /// A header's value (names in lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body's length as announced (`Content-Length`), if it was.
    pub fn content_length(&self) -> Option<u64> {
        match &self.body {
            StreamedBody::Http(resp) => resp.content_length(),
            StreamedBody::Libp2p(..) => self.header("content-length")?.parse().ok(),
        }
    }

    /// The next piece of the body; `None` at its end.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>, ClientError> {
        match &mut self.body {
            StreamedBody::Http(resp) => resp.chunk().await.map_err(map_reqwest),
            StreamedBody::Libp2p(body, deadline) => loop {
                use http_body_util::BodyExt as _;
                let frame = tokio::time::timeout_at(*deadline, body.frame())
                    .await
                    .map_err(|_| ClientError::Timeout)?;
                match frame {
                    None => return Ok(None),
                    Some(Err(e)) => return Err(ClientError::Network(e.to_string())),
                    Some(Ok(frame)) => {
                        if let Ok(data) = frame.into_data() {
                            return Ok(Some(data));
                        }
                    }
                }
            },
        }
    }
}

/// The outbox outcome of a request (for [`crate::outbox::Input::Sent`]).
pub fn outcome_of(result: &Result<FedResponse, ClientError>) -> Outcome {
    match result {
        Ok(r) => Outcome::Status(r.status),
        Err(ClientError::Status { status, .. }) => Outcome::Status(*status),
        Err(ClientError::Timeout) => Outcome::Timeout,
        Err(_) => Outcome::Network,
    }
}

/// Sends signed federation requests as one origin, over HTTP, or over libp2p to the
/// servers [`Libp2pRoutes`] names.
#[derive(Debug, Clone)]
pub struct FederationClient {
    http: reqwest::Client,
    signer: Arc<RequestSigner>,
    config: ClientConfig,
    libp2p: Option<Arc<Libp2pRoutes>>,
}

impl FederationClient {
    pub fn new(signer: RequestSigner, config: ClientConfig) -> Result<Self, ClientError> {
        let mut builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(config.timeout)
            .connect_timeout(config.connect_timeout)
            .user_agent(concat!("parley-federation/", env!("CARGO_PKG_VERSION")));
        if !config.insecure_test_mode {
            builder = builder
                .https_only(true)
                .dns_resolver(Arc::new(PublicOnlyResolver));
        }
        let http = builder
            .build()
            .map_err(|e| ClientError::Build(e.to_string()))?;
        Ok(Self {
            http,
            signer: Arc::new(signer),
            config,
            libp2p: None,
        })
    }

    /// Sends to the servers `routes` names over libp2p.
    pub fn with_libp2p(mut self, routes: Arc<Libp2pRoutes>) -> Self {
        self.libp2p = Some(routes);
        self
    }

    /// The libp2p address `destination` is reached at, if it is reached over libp2p
    /// (looking at its key directory first in auto mode).
    async fn libp2p_route(
        &self,
        destination: &ServerName,
    ) -> Option<(Arc<Libp2pRoutes>, Multiaddr)> {
        let routes = self.libp2p.as_ref()?;
        if routes.should_look_up(destination, system_now_ms())
            && let Err(e) = self.fetch_directory(destination).await
        {
            tracing::debug!(%destination, "no key directory, so no libp2p route: {e}");
        }
        let addr = routes.route(destination)?;
        Some((routes.clone(), addr))
    }

    pub fn signer(&self) -> &RequestSigner {
        &self.signer
    }

    fn url(
        &self,
        destination: &ServerName,
        path_and_query: &str,
    ) -> Result<reqwest::Url, ClientError> {
        if !self.config.insecure_test_mode && destination.ip().is_some_and(|ip| !is_public(ip)) {
            return Err(ClientError::Target(format!(
                "{destination} is a private or loopback address (test mode only)"
            )));
        }
        let scheme = if self.config.insecure_test_mode {
            "http"
        } else {
            "https"
        };
        reqwest::Url::parse(&format!("{scheme}://{destination}{path_and_query}"))
            .map_err(|e| ClientError::Target(e.to_string()))
    }

    /// Sends a signed request (`path_and_query` as from [`crate::api::fill`]) and returns
    /// the answer whatever its status: over libp2p to the servers [`Libp2pRoutes`] names,
    /// else over HTTP. The bytes signed are the same either way.
    pub async fn send(
        &self,
        destination: &ServerName,
        method: Method,
        path_and_query: &str,
        body: Option<Vec<u8>>,
    ) -> Result<FedResponse, ClientError> {
        let body = body.unwrap_or_default();
        let url = self.url(destination, path_and_query)?;
        let headers = self.signature_headers(destination, method, &url, &body)?;
        if let Some((routes, addr)) = self.libp2p_route(destination).await {
            let mut req = http::Request::builder()
                .method(method.as_str())
                .uri(origin_form(&url))
                .header(http::header::HOST, destination.as_str());
            for (name, value) in headers {
                req = req.header(name, value);
            }
            if !body.is_empty() {
                req = req.header(http::header::CONTENT_TYPE, "application/json");
            }
            let req = req
                .body(Bytes::from(body))
                .map_err(|e| ClientError::Target(e.to_string()))?;
            return routes
                .node()
                .request(destination, &addr, req, self.config.max_response_bytes)
                .await;
        }
        let mut req = self.http_request(method, url, headers)?;
        if !body.is_empty() {
            req = req.header("content-type", "application/json").body(body);
        }
        let resp = req.send().await.map_err(map_reqwest)?;
        self.read(resp).await
    }

    /// The signature headers of a request to `url` at `destination` carrying `body`:
    /// exactly the path and query the URL puts on the wire are signed.
    fn signature_headers(
        &self,
        destination: &ServerName,
        method: Method,
        url: &reqwest::Url,
        body: &[u8],
    ) -> Result<Vec<(&'static str, String)>, ClientError> {
        let headers = self.signer.sign(
            &OutgoingRequest {
                method: method.as_str(),
                destination,
                path: url.path(),
                query: url.query(),
                body,
            },
            system_now_ms(),
            &random_nonce(),
        )?;
        Ok(headers.to_vec())
    }

    fn http_request(
        &self,
        method: Method,
        url: reqwest::Url,
        headers: Vec<(&'static str, String)>,
    ) -> Result<reqwest::RequestBuilder, ClientError> {
        let method = reqwest::Method::from_bytes(method.as_str().as_bytes())
            .map_err(|e| ClientError::Target(e.to_string()))?;
        let mut req = self.http.request(method, url);
        for (name, value) in headers {
            req = req.header(name, value);
        }
        Ok(req)
    }

    /// Sends a signed `GET` and returns as soon as the answer's headers are in; the body
    /// is then read chunk by chunk ([`StreamedResponse::chunk`]), in constant memory.
    /// `from > 0` asks for the bytes from that offset on (`Range: bytes=from-`; a peer
    /// may still answer `200` with everything). `timeout` bounds the whole transfer.
    /// A non-2xx answer is [`ClientError::Status`] with the peer's error body.
    pub async fn get_streamed(
        &self,
        destination: &ServerName,
        path_and_query: &str,
        from: u64,
        timeout: Duration,
    ) -> Result<StreamedResponse, ClientError> {
        let url = self.url(destination, path_and_query)?;
        let headers = self.signature_headers(destination, Method::Get, &url, &[])?;
        if let Some((routes, addr)) = self.libp2p_route(destination).await {
            let deadline = tokio::time::Instant::now() + timeout;
            let mut req = http::Request::get(origin_form(&url))
                .header(http::header::HOST, destination.as_str());
            for (name, value) in headers {
                req = req.header(name, value);
            }
            if from > 0 {
                req = req.header(http::header::RANGE, format!("bytes={from}-"));
            }
            let req = req
                .body(Bytes::new())
                .map_err(|e| ClientError::Target(e.to_string()))?;
            let resp = tokio::time::timeout_at(
                deadline,
                routes.node().request_streamed(destination, &addr, req),
            )
            .await
            .map_err(|_| ClientError::Timeout)??;
            let (parts, body) = resp.into_parts();
            let status = parts.status.as_u16();
            let mut streamed = StreamedResponse {
                status,
                headers: header_lines(&parts.headers),
                body: StreamedBody::Libp2p(body, deadline),
            };
            if !(200..300).contains(&status) {
                let mut body = Vec::new();
                while let Some(chunk) = streamed.chunk().await? {
                    if body.len() + chunk.len() > self.config.max_response_bytes {
                        break;
                    }
                    body.extend_from_slice(&chunk);
                }
                return Err(ClientError::Status {
                    status,
                    body: serde_json::from_slice(&body).ok(),
                });
            }
            return Ok(streamed);
        }
        let mut req = self
            .http_request(Method::Get, url, headers)?
            .timeout(timeout);
        if from > 0 {
            req = req.header("range", format!("bytes={from}-"));
        }
        let resp = req.send().await.map_err(map_reqwest)?;
        if !resp.status().is_success() {
            let resp = self.read(resp).await?;
            return Err(ClientError::Status {
                status: resp.status,
                body: serde_json::from_slice(&resp.body).ok(),
            });
        }
        Ok(StreamedResponse {
            status: resp.status().as_u16(),
            headers: header_lines(resp.headers()),
            body: StreamedBody::Http(resp),
        })
    }

    async fn read(&self, mut resp: reqwest::Response) -> Result<FedResponse, ClientError> {
        let status = resp.status().as_u16();
        let headers = header_lines(resp.headers());
        let limit = self.config.max_response_bytes;
        if resp.content_length().is_some_and(|n| n > limit as u64) {
            return Err(ClientError::TooLarge(limit));
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(map_reqwest)? {
            if body.len() + chunk.len() > limit {
                return Err(ClientError::TooLarge(limit));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(FedResponse {
            status,
            headers,
            body: body.into(),
        })
    }

    /// Sends `request` as JSON and decodes a 2xx answer; other statuses become
    /// [`ClientError::Status`] with the peer's error body.
    pub async fn send_json<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        destination: &ServerName,
        method: Method,
        path_and_query: &str,
        request: Option<&Req>,
    ) -> Result<Resp, ClientError> {
        let body = request
            .map(serde_json::to_vec)
            .transpose()
            .map_err(|e| ClientError::Json(e.to_string()))?;
        let resp = self.send(destination, method, path_and_query, body).await?;
        if !(200..300).contains(&resp.status) {
            return Err(ClientError::Status {
                status: resp.status,
                body: serde_json::from_slice(&resp.body).ok(),
            });
        }
        serde_json::from_slice(&resp.body).map_err(|e| ClientError::Json(e.to_string()))
    }

    /// Fetches and verifies `server`'s key directory (unsigned GET); returns it with the
    /// seconds it may be cached.
    pub async fn fetch_directory(
        &self,
        server: &ServerName,
    ) -> Result<(VerifiedDirectory, i64), ClientError> {
        let routed = self
            .libp2p
            .as_ref()
            .and_then(|r| Some((r, r.route(server)?)));
        let resp = match routed {
            Some((routes, addr)) => {
                let req = http::Request::get(directory::PATH)
                    .header(http::header::HOST, server.as_str())
                    .header(http::header::ACCEPT, directory::MEDIA_TYPE)
                    .body(Bytes::new())
                    .map_err(|e| ClientError::Target(e.to_string()))?;
                routes
                    .node()
                    .request(server, &addr, req, directory::MAX_DIRECTORY_BYTES)
                    .await?
            }
            None => self.fetch_directory_http(server).await?,
        };
        if resp.status != 200 {
            return Err(ClientError::Status {
                status: resp.status,
                body: serde_json::from_slice(&resp.body).ok(),
            });
        }
        let cache_control = resp
            .headers
            .iter()
            .find(|(n, _)| n == "cache-control")
            .map(|(_, v)| v.as_str());
        let secs = directory::cache_secs(cache_control);
        let verified =
            directory::verify_response(server, &resp.headers, &resp.body, system_now_ms())?;
        if let Some(routes) = &self.libp2p {
            routes.learn(server, &verified, system_now_ms());
        }
        Ok((verified, secs))
    }

    async fn fetch_directory_http(&self, server: &ServerName) -> Result<FedResponse, ClientError> {
        let url = self.url(server, directory::PATH)?;
        let resp = self
            .http
            .get(url)
            .header("accept", directory::MEDIA_TYPE)
            .send()
            .await
            .map_err(map_reqwest)?;
        self.read(resp).await
    }
}

/// The request target as it goes on the wire (and is signed): path and query.
fn origin_form(url: &reqwest::Url) -> String {
    match url.query() {
        Some(q) => format!("{}?{q}", url.path()),
        None => url.path().to_owned(),
    }
}

fn map_reqwest(e: reqwest::Error) -> ClientError {
    if e.is_timeout() {
        ClientError::Timeout
    } else {
        // The source chain says what actually failed (refused, reset, TLS…).
        let mut message = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            message.push_str(": ");
            message.push_str(&s.to_string());
            source = s.source();
        }
        ClientError::Network(message)
    }
}

fn header_lines(headers: &HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .filter_map(|(n, v)| Some((n.as_str().to_owned(), v.to_str().ok()?.to_owned())))
        .collect()
}

/// True for addresses on the public internet (not loopback, private, link-local, CGNAT,
/// unique-local, unspecified, documentation or multicast).
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_documentation()
                || v4.is_multicast()
                || o[0] == 0
                || (o[0] == 100 && (64..128).contains(&o[1])))
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80
                || first == 0x2001 && v6.segments()[1] == 0x0db8)
        }
    }
}

/// Resolves names like the system does, then drops non-public addresses.
#[derive(Debug)]
struct PublicOnlyResolver;

impl reqwest::dns::Resolve for PublicOnlyResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|a| is_public(a.ip()))
                .collect();
            if addrs.is_empty() {
                return Err(format!("{host} resolves to no public address").into());
            }
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

// ------------------------------------------------------------------------------------
// Receiving

/// What the verifier needs from the homeserver.
pub trait FederationContext: Send + Sync + 'static {
    /// Our server name: the `@authority` peers sign for.
    fn server_name(&self) -> &ServerName;

    /// The current allow/deny policy (a snapshot; the decision itself is pure).
    fn policy(&self) -> BoxFuture<'_, Policy>;

    /// Fetches and verifies `origin`'s key directory (e.g. with
    /// [`FederationClient::fetch_directory`]); returns it with its cache seconds. Only
    /// called for origins the policy admits, at most once a minute per origin.
    fn fetch_directory<'a>(
        &'a self,
        origin: &'a ServerName,
    ) -> BoxFuture<'a, Result<(VerifiedDirectory, i64), ClientError>>;

    /// Called after each verified request (reset `origin`'s outbox backoff, count it…).
    fn on_verified(&self, _verified: &Verified) {}

    /// Called for each refused request (log, metrics). The default logs at `warn`.
    fn on_refused(&self, error: &ProtocolError) {
        tracing::warn!(
            status = error.status(),
            code = error.body.error.as_str(),
            "federation request refused: {}",
            error.body.message
        );
    }

    /// The clock, in ms since the Unix epoch.
    fn now_ms(&self) -> i64 {
        system_now_ms()
    }
}

/// Where nonces are remembered. Several homeserver processes of one domain must share
/// one (e.g. in Postgres); a single process can use [`MemoryNonces`].
pub trait NonceStore: Send + Sync + 'static {
    fn check_and_insert<'a>(
        &'a self,
        origin: &'a ServerName,
        nonce: &'a str,
        window_end_ms: i64,
        now_ms: i64,
    ) -> BoxFuture<'a, Result<(), NonceError>>;
}

/// The in-process replay cache.
#[derive(Debug)]
pub struct MemoryNonces(Mutex<NonceCache>);

impl MemoryNonces {
    pub fn new(capacity: usize) -> Self {
        Self(Mutex::new(NonceCache::new(capacity)))
    }
}

impl NonceStore for MemoryNonces {
    fn check_and_insert<'a>(
        &'a self,
        origin: &'a ServerName,
        nonce: &'a str,
        window_end_ms: i64,
        now_ms: i64,
    ) -> BoxFuture<'a, Result<(), NonceError>> {
        let result = match self.0.lock() {
            Ok(mut cache) => cache.check_and_insert(origin, nonce, window_end_ms, now_ms),
            Err(poisoned) => {
                poisoned
                    .into_inner()
                    .check_and_insert(origin, nonce, window_end_ms, now_ms)
            }
        };
        Box::pin(std::future::ready(result))
    }
}

/// The inbound verifier: one per homeserver process, shared by every federation route.
pub struct InboundVerifier {
    ctx: Arc<dyn FederationContext>,
    nonces: Arc<dyn NonceStore>,
    keys: Mutex<KeyCache>,
    /// One fetch at a time per origin; requests waiting for it then find the key.
    fetching: Mutex<HashMap<ServerName, Arc<tokio::sync::Mutex<()>>>>,
    max_body: usize,
}

impl std::fmt::Debug for InboundVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InboundVerifier")
            .field("server_name", self.ctx.server_name())
            .field("max_body", &self.max_body)
            .finish_non_exhaustive()
    }
}

/// Defaults: 100,000 nonces in memory, 10,000 origins' keys, bodies up to
/// [`crate::api::send::MAX_BODY_BYTES`].
impl InboundVerifier {
    pub fn new(ctx: Arc<dyn FederationContext>) -> Self {
        Self {
            ctx,
            nonces: Arc::new(MemoryNonces::new(100_000)),
            keys: Mutex::new(KeyCache::new(10_000)),
            fetching: Mutex::new(HashMap::new()),
            max_body: crate::api::send::MAX_BODY_BYTES,
        }
    }

    pub fn with_nonce_store(mut self, store: Arc<dyn NonceStore>) -> Self {
        self.nonces = store;
        self
    }

    pub fn with_max_body(mut self, bytes: usize) -> Self {
        self.max_body = bytes;
        self
    }

    pub fn max_body(&self) -> usize {
        self.max_body
    }

    /// Forgets `origin`'s cached keys (e.g. after a policy change).
    pub fn forget_keys(&self, origin: &ServerName) {
        lock(&self.keys).remove(origin);
    }

    /// Reports a refusal made before verification (the body limit) to the context.
    fn refused(&self, error: ProtocolError) -> ProtocolError {
        self.ctx.on_refused(&error);
        error
    }

    /// Runs the whole verifier on a received request (path and query as received).
    /// `peer`: the libp2p PeerId of the connection it came over, if any: the key that
    /// signed it must be that PeerId's key.
    pub async fn verify(
        &self,
        method: &str,
        path: &str,
        query: Option<&str>,
        headers: &HeaderMap,
        body: &[u8],
        peer: Option<&TransportPeer>,
    ) -> Result<Verified, ProtocolError> {
        let result = self
            .verify_inner(method, path, query, headers, body, peer)
            .await;
        match &result {
            Ok(v) => self.ctx.on_verified(v),
            Err(e) => self.ctx.on_refused(e),
        }
        result
    }

    async fn verify_inner(
        &self,
        method: &str,
        path: &str,
        query: Option<&str>,
        headers: &HeaderMap,
        body: &[u8],
        peer: Option<&TransportPeer>,
    ) -> Result<Verified, ProtocolError> {
        let lines = header_lines(headers);
        let req = IncomingRequest {
            method,
            authority: self.ctx.server_name().as_str(),
            path,
            query,
            headers: &lines,
            body,
        };
        let parsed = profile::parse(req)?;
        let policy = self.ctx.policy().await;
        let admitted = parsed.admit(&policy)?;
        let (origin, key_id) = admitted.key_needed();
        let (origin, key_id) = (origin.clone(), key_id.clone());
        let key = self.resolve_key(&origin, &key_id).await;
        let now = self.ctx.now_ms();
        let checked = admitted.check(key.as_ref(), now)?;
        if let (Some(peer), Some(key)) = (peer, key.as_ref())
            && peer.0.as_slice() != key.peer_id_bytes().as_slice()
        {
            return Err(ProtocolError::new(
                FedErrorCode::PeerMismatch,
                "the libp2p connection's PeerId is not the key that signed the request",
            ));
        }
        let (o, n, end) = checked.nonce_key();
        let nonce_result = self.nonces.check_and_insert(o, n, end, now).await;
        Ok(checked.finish_with(nonce_result)?)
    }

    async fn resolve_key(&self, origin: &ServerName, key_id: &KeyId) -> Option<ServerPublicKey> {
        let lookup = lock(&self.keys).lookup(origin, key_id, self.ctx.now_ms());
        if let Lookup::Found(key) = lookup {
            return Some(key);
        }
        let gate = lock(&self.fetching)
            .entry(origin.clone())
            .or_default()
            .clone();
        let result = {
            let _one_at_a_time = gate.lock().await;
            let now = self.ctx.now_ms();
            let lookup = lock(&self.keys).lookup(origin, key_id, now);
            match lookup {
                Lookup::Found(key) => Some(key),
                Lookup::Unknown => None,
                Lookup::Fetch => {
                    // The attempt is recorded once the fetch ends: if this request goes
                    // away midway (its sender crashed), the next one fetches instead of
                    // finding an attempt that never finished and being refused.
                    let fetched = self.ctx.fetch_directory(origin).await;
                    let mut keys = lock(&self.keys);
                    match fetched {
                        Ok((dir, secs)) => keys.insert(origin, dir, secs, self.ctx.now_ms()),
                        Err(e) => {
                            tracing::warn!(%origin, "cannot fetch the key directory: {e}");
                            keys.fetch_failed(origin, now);
                        }
                    }
                    // After a failure, a key of the stale directory still serves.
                    match keys.lookup(origin, key_id, self.ctx.now_ms()) {
                        Lookup::Found(key) => Some(key),
                        _ => None,
                    }
                }
            }
        };
        let mut fetching = lock(&self.fetching);
        if Arc::strong_count(&gate) <= 2 {
            fetching.remove(origin);
        }
        result
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Set by the libp2p transport on each request it hands to the router: the PeerId bytes
/// (identity multihash) of the connection. Requests over TCP never carry it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransportPeer(pub Vec<u8>);

/// A verified request: who sent it, and its body.
#[derive(Debug, Clone)]
pub struct VerifiedRequest {
    pub verified: Verified,
    pub body: Bytes,
}

impl VerifiedRequest {
    pub fn origin(&self) -> &ServerName {
        &self.verified.origin
    }

    /// The body as JSON of `T` (400 `bad_json` otherwise).
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, ProtocolError> {
        serde_json::from_slice(&self.body)
            .map_err(|e| ProtocolError::new(FedErrorCode::BadJson, e.to_string()))
    }
}

async fn buffer_and_verify(
    verifier: &InboundVerifier,
    req: Request,
) -> Result<(http::request::Parts, Verified, Bytes), ProtocolError> {
    let (parts, body) = req.into_parts();
    let too_large = || {
        ProtocolError::new(
            FedErrorCode::TooLarge,
            format!("body larger than {} bytes", verifier.max_body),
        )
    };
    let declared = parts
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > verifier.max_body as u64) {
        return Err(verifier.refused(too_large()));
    }
    let bytes = axum::body::to_bytes(body, verifier.max_body)
        .await
        .map_err(|_| verifier.refused(too_large()))?;
    let verified = verifier
        .verify(
            parts.method.as_str(),
            parts.uri.path(),
            parts.uri.query(),
            &parts.headers,
            &bytes,
            parts.extensions.get::<TransportPeer>(),
        )
        .await?;
    Ok((parts, verified, bytes))
}

/// Extracts a [`VerifiedRequest`] (buffering the body up to the verifier's limit), or
/// answers 401/403/413. The state must provide `Arc<InboundVerifier>`.
impl<S> FromRequest<S> for VerifiedRequest
where
    S: Send + Sync,
    Arc<InboundVerifier>: FromRef<S>,
{
    type Rejection = ProtocolError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let verifier = Arc::<InboundVerifier>::from_ref(state);
        let (_, verified, body) = buffer_and_verify(&verifier, req).await?;
        Ok(Self { verified, body })
    }
}

/// Middleware for a whole federation router:
/// `router.route_layer(axum::middleware::from_fn_with_state(verifier, require_signature))`.
/// Verified requests continue with their body and a [`Verified`] extension; others are
/// answered here.
pub async fn require_signature(
    State(verifier): State<Arc<InboundVerifier>>,
    req: Request,
    next: Next,
) -> Response {
    match buffer_and_verify(&verifier, req).await {
        Ok((mut parts, verified, body)) => {
            parts.extensions.insert(verified);
            next.run(Request::from_parts(parts, Body::from(body))).await
        }
        Err(e) => e.into_response(),
    }
}

impl IntoResponse for ProtocolError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let extra = self.headers();
        let mut resp = (status, axum::Json(self.body)).into_response();
        for (name, value) in extra {
            if let Ok(value) = HeaderValue::from_str(&value) {
                resp.headers_mut()
                    .insert(HeaderName::from_static(name), value);
            }
        }
        resp
    }
}

/// Serves a built key directory (`GET /.well-known/http-message-signatures-directory`).
pub fn directory_response(directory: DirectoryResponse) -> Response {
    let mut resp = Response::new(Body::from(directory.body));
    for (name, value) in directory.headers {
        if let Ok(value) = HeaderValue::from_str(&value) {
            resp.headers_mut()
                .insert(HeaderName::from_static(name), value);
        }
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_addresses() {
        for ip in [
            "127.0.0.2",
            "10.1.2.3",
            "192.168.0.1",
            "172.16.0.1",
            "169.254.1.1",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fc00::1",
            "fe80::1",
            "::ffff:10.0.0.1",
        ] {
            assert!(!is_public(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["1.1.1.1", "2606:4700::1111", "::ffff:8.8.8.8"] {
            assert!(is_public(ip.parse().unwrap()), "{ip}");
        }
    }
}
