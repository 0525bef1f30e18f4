//! A federation peer played by the suite: a small server of its own on a loopback
//! listener. It serves its key directory (keys the checks can rotate, expire and
//! retire), answers the federation endpoints a homeserver calls (a user's devices,
//! KeyPackage claims, transactions, media) as the checks script them, verifies the
//! signature of every request it gets with the caller's published keys, and records
//! what it got. Its server name is the listener's `ip:port` (reachable only by a
//! server in test mode).
//!
//! It is written against `parley-federation`, the protocol library (wire types, RFC
//! 9421 signing and verifying, the key directory), never against a homeserver.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use parley_federation::ServerName;
use parley_federation::directory::{self, KeyToPublish, RetiredKey};
use parley_federation::keys::ServerSigningKey;
use parley_federation::policy::{Mode, Policy, Rule};
use parley_federation::signing::profile::{self, IncomingRequest, OutgoingRequest, RequestSigner};
use serde_json::{Value, json};

use super::net::now_ms;

/// The device every user of a suite peer has.
pub(crate) const PEER_DEVICE: &str = "SUITEPEERDEVICE";

/// A key the peer publishes: its seed and validity (seconds).
#[derive(Debug, Clone, Copy)]
pub(crate) struct PeerKey {
    pub(crate) seed: [u8; 32],
    pub(crate) nbf: i64,
    pub(crate) exp: i64,
}

impl PeerKey {
    /// A fresh key valid from an hour ago for a day.
    pub(crate) fn fresh() -> Self {
        let now = now_ms() / 1000;
        Self {
            seed: rand::random(),
            nbf: now - 3600,
            exp: now + 24 * 3600,
        }
    }

    pub(crate) fn signing_key(&self) -> ServerSigningKey {
        ServerSigningKey::from_seed(&self.seed)
    }
}

/// What the peer's key directory lists.
#[derive(Debug, Clone)]
struct Keys {
    current: Vec<PeerKey>,
    /// Retired keys and when (seconds).
    retired: Vec<([u8; 32], i64)>,
}

/// One request the peer got.
#[derive(Debug, Clone)]
pub(crate) struct Received {
    pub(crate) method: String,
    pub(crate) path: String,
    pub(crate) body: Value,
    pub(crate) at_ms: i64,
    /// The status the peer answered.
    pub(crate) status: u16,
    /// `Ok(origin)` when the signature verified with the origin's published keys.
    pub(crate) signed: Result<String, String>,
}

#[derive(Default)]
struct Scripts {
    /// Statuses to answer the next transactions with (then 200).
    txn_statuses: VecDeque<u16>,
    /// Blob bytes to serve per hash, in turn (the last one stays).
    blobs: HashMap<String, VecDeque<Vec<u8>>>,
}

struct State {
    name: ServerName,
    keys: Mutex<Keys>,
    fetches: AtomicUsize,
    last_fetch_ms: AtomicI64,
    received: Mutex<Vec<Received>>,
    scripts: Mutex<Scripts>,
    http: reqwest::Client,
    changed: tokio::sync::Notify,
}

/// The suite's federation peer (see the module doc).
pub(crate) struct Peer {
    pub(crate) name: ServerName,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Peer {
    /// Starts a peer on `ip` (port chosen by the system) with one fresh key.
    pub(crate) async fn start(ip: &str) -> Result<Self> {
        let listener = tokio::net::TcpListener::bind((ip, 0)).await?;
        let name = ServerName::try_from(listener.local_addr()?.to_string().as_str())?;
        let state = Arc::new(State {
            name: name.clone(),
            keys: Mutex::new(Keys {
                current: vec![PeerKey::fresh()],
                retired: Vec::new(),
            }),
            fetches: AtomicUsize::new(0),
            last_fetch_ms: AtomicI64::new(0),
            received: Mutex::new(Vec::new()),
            scripts: Mutex::new(Scripts::default()),
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()?,
            changed: tokio::sync::Notify::new(),
        });
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(state.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { name, state, task })
    }

    /// Stops serving.
    pub(crate) fn stop(&self) {
        self.task.abort();
    }

    /// The signer of the peer's first current key.
    pub(crate) fn signer(&self) -> RequestSigner {
        let key = lock(&self.state.keys).current[0];
        self.signer_with(&key)
    }

    /// A signer for this peer's name with `key` (published or not).
    pub(crate) fn signer_with(&self, key: &PeerKey) -> RequestSigner {
        RequestSigner::new(self.name.clone(), key.signing_key())
    }

    /// The keys the directory lists as current.
    pub(crate) fn current_keys(&self) -> Vec<PeerKey> {
        lock(&self.state.keys).current.clone()
    }

    /// Publishes `current` as the current keys and `retired` as retired now.
    pub(crate) fn set_keys(&self, current: Vec<PeerKey>, retired: &[PeerKey]) {
        let at = now_ms() / 1000;
        let mut keys = lock(&self.state.keys);
        keys.current = current;
        keys.retired = retired.iter().map(|k| (k.seed, at)).collect();
    }

    /// How many times its key directory was fetched.
    pub(crate) fn fetches(&self) -> usize {
        self.state.fetches.load(Ordering::SeqCst)
    }

    /// When its key directory was last fetched (ms; 0 if never).
    pub(crate) fn last_fetch_ms(&self) -> i64 {
        self.state.last_fetch_ms.load(Ordering::SeqCst)
    }

    /// A user id of this peer.
    pub(crate) fn user(&self, localpart: &str) -> String {
        format!("@{localpart}:{}", self.name)
    }

    /// Answers the next transactions with these statuses, then 200 again.
    pub(crate) fn refuse_transactions(&self, statuses: &[u16]) {
        lock(&self.state.scripts)
            .txn_statuses
            .extend(statuses.iter().copied());
    }

    /// Serves `versions` of the blob `hash`, one per request (the last one stays).
    pub(crate) fn serve_blob(&self, hash: &str, versions: Vec<Vec<u8>>) {
        lock(&self.state.scripts)
            .blobs
            .insert(hash.to_owned(), versions.into());
    }

    /// Every request it got, in order.
    pub(crate) fn received(&self) -> Vec<Received> {
        lock(&self.state.received).clone()
    }

    /// Waits (at most `wait`) until `pred` holds for what the peer got.
    pub(crate) async fn wait_for(
        &self,
        what: &str,
        wait: std::time::Duration,
        pred: impl Fn(&[Received]) -> bool,
    ) -> Result<Vec<Received>> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let notified = self.state.changed.notified();
            let got = self.received();
            if pred(&got) {
                return Ok(got);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                let got = self.received();
                if pred(&got) {
                    return Ok(got);
                }
                anyhow::bail!(
                    "the peer {} did not get {what} within {wait:?}; it got: {}",
                    self.name,
                    got.iter()
                        .map(|r| format!("{} {} → {}", r.method, r.path, r.status))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
        }
    }

    /// The headers of a request signed by `signer` at `now_ms` with `nonce` for
    /// `destination`.
    pub(crate) fn sign(
        signer: &RequestSigner,
        method: &str,
        destination: &str,
        path: &str,
        body: &[u8],
        now_ms: i64,
        nonce: &str,
    ) -> Result<Vec<(String, String)>> {
        let destination = ServerName::try_from(destination)?;
        let headers = signer.sign(
            &OutgoingRequest {
                method,
                destination: &destination,
                path,
                query: None,
                body,
            },
            now_ms,
            nonce,
        )?;
        Ok(headers
            .to_vec()
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect())
    }

    /// [`Peer::sign`] now, with a fresh nonce: a request the server should accept.
    pub(crate) fn sign_now(
        signer: &RequestSigner,
        method: &str,
        destination: &str,
        path: &str,
        body: &[u8],
    ) -> Result<Vec<(String, String)>> {
        Self::sign(
            signer,
            method,
            destination,
            path,
            body,
            now_ms(),
            &profile::random_nonce(),
        )
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn error(status: StatusCode, code: &str) -> Response {
    (
        status,
        axum::Json(json!({"error": code, "message": format!("the suite's peer answers {code}")})),
    )
        .into_response()
}

async fn handle(
    axum::extract::State(s): axum::extract::State<Arc<State>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_owned();
    if method == Method::GET && path == directory::PATH {
        return serve_directory(&s);
    }
    let signed = verify(&s, &method, &uri, &headers, &body).await;
    let json_body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let fed = "/_parley/fed/v1/";
    let rest = path.strip_prefix(fed).unwrap_or("");
    let response = if signed.is_err() {
        error(StatusCode::UNAUTHORIZED, "bad_signature")
    } else if method == Method::GET && rest.starts_with("users/") && rest.ends_with("/devices") {
        let user = rest
            .trim_start_matches("users/")
            .trim_end_matches("/devices");
        axum::Json(json!({"user_id": user, "devices": [PEER_DEVICE]})).into_response()
    } else if method == Method::POST && rest == "keys/claim" {
        let users = json_body["users"].as_array().cloned().unwrap_or_default();
        let mut out = serde_json::Map::new();
        for u in users {
            let Some(u) = u.as_str() else { continue };
            let kp = base64::engine::general_purpose::STANDARD
                .encode(format!("suite peer key package of {u}"));
            out.insert(
                u.to_owned(),
                json!([{"device_id": PEER_DEVICE, "key_package": kp, "last_resort": false}]),
            );
        }
        axum::Json(json!({"users": out})).into_response()
    } else if method == Method::PUT && rest.starts_with("send/") {
        let scripted = lock(&s.scripts).txn_statuses.pop_front();
        match scripted {
            Some(status) => error(
                StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
                "unavailable",
            ),
            None => {
                let events: Vec<Value> = json_body["events"]
                    .as_array()
                    .map(|es| es.iter().map(|e| json!({"seq": e["seq"]})).collect())
                    .unwrap_or_default();
                let sends: Vec<Value> = json_body["sends"]
                    .as_array()
                    .map(|ss| {
                        ss.iter()
                            .map(|_| json!({"error": "forbidden", "message": "not a hub"}))
                            .collect()
                    })
                    .unwrap_or_default();
                axum::Json(json!({"sends": sends, "events": events})).into_response()
            }
        }
    } else if method == Method::GET && rest.starts_with("media/") {
        let hash = rest.trim_start_matches("media/");
        let bytes = {
            let mut scripts = lock(&s.scripts);
            scripts.blobs.get_mut(hash).and_then(|versions| {
                if versions.len() > 1 {
                    versions.pop_front()
                } else {
                    versions.front().cloned()
                }
            })
        };
        match bytes {
            Some(b) => (
                StatusCode::OK,
                [("content-type", "application/octet-stream")],
                b,
            )
                .into_response(),
            None => error(StatusCode::NOT_FOUND, "not_found"),
        }
    } else {
        error(StatusCode::NOT_FOUND, "not_found")
    };
    lock(&s.received).push(Received {
        method: method.to_string(),
        path,
        body: json_body,
        at_ms: now_ms(),
        status: response.status().as_u16(),
        signed,
    });
    s.changed.notify_waiters();
    response
}

fn serve_directory(s: &State) -> Response {
    let now = now_ms();
    s.fetches.fetch_add(1, Ordering::SeqCst);
    s.last_fetch_ms.store(now, Ordering::SeqCst);
    let keys = lock(&s.keys).clone();
    let signing: Vec<ServerSigningKey> = keys.current.iter().map(PeerKey::signing_key).collect();
    let published: Vec<KeyToPublish<'_>> = keys
        .current
        .iter()
        .zip(&signing)
        .map(|(k, key)| KeyToPublish {
            key,
            nbf: k.nbf,
            exp: k.exp,
        })
        .collect();
    let retired: Vec<RetiredKey> = keys
        .retired
        .iter()
        .map(|(seed, at)| RetiredKey {
            key: ServerSigningKey::from_seed(seed).public(),
            retired_at: *at,
        })
        .collect();
    // Cached for an hour: a verifier learns of a change only by refetching (FK3).
    match directory::build_response(&s.name, &published, &retired, now, 3600) {
        Ok(d) => parley_federation::transport::http::directory_response(d),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// Verifies a request's signature with the origin's published keys (fetched from the
/// origin by its name, as a server in test mode would); the origin's name.
async fn verify(
    s: &State,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<String, String> {
    let fields: Vec<(String, String)> = headers
        .iter()
        .map(|(n, v)| (n.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
        .collect();
    let req = IncomingRequest {
        method: method.as_str(),
        authority: s.name.as_str(),
        path: uri.path(),
        query: uri.query(),
        headers: &fields,
        body,
    };
    let parsed = profile::parse(req).map_err(|e| e.to_string())?;
    let origin = parsed.origin().clone();
    let policy = Policy {
        mode: Mode::Open,
        rules: vec![Rule::allow(origin.as_str()).map_err(|e| e.to_string())?],
    };
    let admitted = parsed.admit(&policy).map_err(|e| e.to_string())?;
    let keys = fetch_keys(s, &origin).await.map_err(|e| format!("{e:#}"))?;
    let (_, kid) = admitted.key_needed();
    let now_secs = now_ms() / 1000;
    let key = keys
        .keys
        .iter()
        .find(|k| &k.key.key_id() == kid && k.valid_at(now_secs))
        .map(|k| k.key);
    admitted
        .check(key.as_ref(), now_ms())
        .map_err(|e| e.to_string())?;
    Ok(origin.as_str().to_owned())
}

async fn fetch_keys(s: &State, origin: &ServerName) -> Result<directory::VerifiedDirectory> {
    let r = s
        .http
        .get(format!("http://{origin}{}", directory::PATH))
        .send()
        .await
        .context("fetching the origin's key directory")?;
    let headers = r.headers().clone();
    let bytes = r.bytes().await?;
    super::net::verify_directory(origin, &headers, &bytes)
}
