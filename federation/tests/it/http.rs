//! The HTTP transport end to end: a real axum receiver and a real key directory server on
//! 127.0.0.1:0, a real reqwest client signing as the origin.

use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::Path;
use axum::response::IntoResponse;
use axum::routing::{get, put};
use axum::{Extension, Json, Router};
use parley_federation::api::{Method, fill, send, version};
use parley_federation::directory::{self, KeyToPublish, VerifiedDirectory};
use parley_federation::keys::ServerSigningKey;
use parley_federation::policy::{Mode, Policy, Rule};
use parley_federation::signing::profile::{OutgoingRequest, RequestSigner, random_nonce};
use parley_federation::transport::http::{
    BoxFuture, ClientConfig, ClientError, FederationClient, FederationContext, InboundVerifier,
    VerifiedRequest, directory_response, require_signature,
};
use parley_federation::transport::system_now_ms;
use parley_federation::{FedErrorCode, ProtocolError, ServerName, Verified};
use serde_json::{Value, json};
use tokio::net::TcpListener;

use crate::name;

fn test_mode() -> ClientConfig {
    ClientConfig {
        insecure_test_mode: true,
        ..Default::default()
    }
}

/// The receiver's view of the world.
struct Ctx {
    name: ServerName,
    policy: Mutex<Policy>,
    client: FederationClient,
    fetches: AtomicUsize,
    verified: AtomicUsize,
}

impl FederationContext for Ctx {
    fn server_name(&self) -> &ServerName {
        &self.name
    }

    fn policy(&self) -> BoxFuture<'_, Policy> {
        let p = self.policy.lock().unwrap().clone();
        Box::pin(async move { p })
    }

    fn fetch_directory<'a>(
        &'a self,
        origin: &'a ServerName,
    ) -> BoxFuture<'a, Result<(VerifiedDirectory, i64), ClientError>> {
        self.fetches.fetch_add(1, Ordering::SeqCst);
        Box::pin(self.client.fetch_directory(origin))
    }

    fn on_verified(&self, _: &Verified) {
        self.verified.fetch_add(1, Ordering::SeqCst);
    }
}

async fn listen() -> (TcpListener, ServerName) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    (listener, name(&addr.to_string()))
}

async fn put_send(
    Path(txn_id): Path<String>,
    req: VerifiedRequest,
) -> Result<Json<Value>, ProtocolError> {
    let body: send::Request = req.json()?;
    Ok(Json(json!({
        "txn_id": txn_id,
        "origin": req.origin().as_str(),
        "claimed_origin": body.origin.as_str(),
    })))
}

async fn get_version(Extension(v): Extension<Verified>) -> Json<Value> {
    Json(json!({"versions": version::VERSIONS, "origin": v.origin.as_str()}))
}

struct Env {
    /// The receiver ("A").
    a: ServerName,
    ctx: Arc<Ctx>,
    /// The origin ("B"), whose directory is served.
    b: ServerName,
    b_key: ServerSigningKey,
    /// How B answers its next directory request ([`ANSWER`], [`STALL`], [`FAIL`]).
    b_next_directory: Arc<AtomicU8>,
    raw: reqwest::Client,
}

impl Env {
    fn b_client(&self) -> FederationClient {
        FederationClient::new(
            RequestSigner::new(self.b.clone(), self.b_key.clone()),
            test_mode(),
        )
        .unwrap()
    }

    fn set_policy(&self, policy: Policy) {
        *self.ctx.policy.lock().unwrap() = policy;
    }

    fn fetches(&self) -> usize {
        self.ctx.fetches.load(Ordering::SeqCst)
    }

    fn send_path(&self, txn: &str) -> String {
        fill(send::PATH, &[("txn_id", txn)])
    }
}

fn loopback_policy() -> Policy {
    Policy {
        mode: Mode::Open,
        rules: vec![Rule::allow("127.0.0.1:*").unwrap()],
    }
}

const ANSWER: u8 = 0;
const STALL: u8 = 1;
const FAIL: u8 = 2;

async fn setup() -> Env {
    // B: serves its key directory.
    let (b_listener, b) = listen().await;
    let b_key = ServerSigningKey::generate().unwrap();
    let b_next_directory = Arc::new(AtomicU8::new(ANSWER));
    let (key, b_name, next) = (b_key.clone(), b.clone(), b_next_directory.clone());
    let b_app = Router::new().route(
        directory::PATH,
        get(move || {
            let how = next.swap(ANSWER, Ordering::SeqCst);
            let now = system_now_ms();
            let built = directory::build_response(
                &b_name,
                &[KeyToPublish {
                    key: &key,
                    nbf: now / 1000 - 60,
                    exp: now / 1000 + 86_400,
                }],
                &[],
                now,
                600,
            )
            .unwrap();
            async move {
                match how {
                    STALL => std::future::pending().await,
                    FAIL => http::StatusCode::SERVICE_UNAVAILABLE.into_response(),
                    _ => directory_response(built).into_response(),
                }
            }
        }),
    );
    tokio::spawn(async move { axum::serve(b_listener, b_app).await });

    // A: verifies.
    let (a_listener, a) = listen().await;
    let a_key = ServerSigningKey::generate().unwrap();
    let ctx = Arc::new(Ctx {
        name: a.clone(),
        policy: Mutex::new(loopback_policy()),
        client: FederationClient::new(RequestSigner::new(a.clone(), a_key), test_mode()).unwrap(),
        fetches: AtomicUsize::new(0),
        verified: AtomicUsize::new(0),
    });
    let verifier = Arc::new(InboundVerifier::new(ctx.clone()).with_max_body(64 * 1024));
    let a_app = Router::new()
        .route(send::PATH, put(put_send))
        .merge(
            Router::new()
                .route(version::PATH, get(get_version))
                .route_layer(axum::middleware::from_fn_with_state(
                    verifier.clone(),
                    require_signature,
                )),
        )
        .with_state(verifier);
    tokio::spawn(async move { axum::serve(a_listener, a_app).await });

    Env {
        a,
        ctx,
        b,
        b_key,
        b_next_directory,
        raw: reqwest::Client::new(),
    }
}

fn txn_body(origin: &ServerName) -> Vec<u8> {
    serde_json::to_vec(&json!({"origin": origin.as_str(), "origin_ts": 1})).unwrap()
}

/// A raw PUT with hand-made signature headers (for replays and tampering).
async fn raw_put(
    env: &Env,
    path: &str,
    headers: &[(&'static str, String)],
    body: Vec<u8>,
) -> reqwest::Response {
    let mut req = env
        .raw
        .put(format!("http://{}{path}", env.a))
        .header("content-type", "application/json")
        .body(body);
    for (n, v) in headers {
        req = req.header(*n, v);
    }
    req.send().await.unwrap()
}

async fn error_code(resp: reqwest::Response) -> (u16, FedErrorCode, Option<String>) {
    let status = resp.status().as_u16();
    let accept = resp
        .headers()
        .get("accept-signature")
        .map(|v| v.to_str().unwrap().to_owned());
    let body: parley_federation::ErrorBody = resp.json().await.unwrap();
    (status, body.error, accept)
}

#[tokio::test]
async fn signed_requests_are_verified_and_keys_cached() {
    let env = setup().await;
    let client = env.b_client();
    for txn in ["1-3", "4-4"] {
        let resp: Value = client
            .send_json(
                &env.a,
                Method::Put,
                &env.send_path(txn),
                Some(&json!({"origin": env.b.as_str(), "origin_ts": 1})),
            )
            .await
            .unwrap();
        assert_eq!(resp["txn_id"], txn);
        assert_eq!(resp["origin"], env.b.as_str());
    }
    // One directory fetch for both requests.
    assert_eq!(env.fetches(), 1);
    // The middleware route: GET without a body.
    let resp: Value = client
        .send_json::<(), _>(&env.a, Method::Get, version::PATH, None)
        .await
        .unwrap();
    assert_eq!(resp["origin"], env.b.as_str());
    assert_eq!(env.ctx.verified.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn replayed_tampered_and_unsigned_requests_get_401() {
    let env = setup().await;
    let signer = RequestSigner::new(env.b.clone(), env.b_key.clone());
    let path = env.send_path("9-9");
    let body = txn_body(&env.b);
    let headers = signer
        .sign(
            &OutgoingRequest {
                method: "PUT",
                destination: &env.a,
                path: &path,
                query: None,
                body: &body,
            },
            system_now_ms(),
            &random_nonce(),
        )
        .unwrap()
        .to_vec();

    let first = raw_put(&env, &path, &headers, body.clone()).await;
    assert_eq!(first.status(), 200);
    let (status, code, accept) =
        error_code(raw_put(&env, &path, &headers, body.clone()).await).await;
    assert_eq!((status, code), (401, FedErrorCode::ReplayedNonce));
    assert!(accept.unwrap().contains("tag=\"parley-fed-v1\""));

    // Same signature, other body.
    let mut other = body.clone();
    other[2] ^= 1;
    let (status, code, _) = error_code(raw_put(&env, &path, &headers, other).await).await;
    assert_eq!((status, code), (401, FedErrorCode::BadDigest));
    // Same signature, other path.
    let (status, code, _) =
        error_code(raw_put(&env, &env.send_path("9-10"), &headers, body.clone()).await).await;
    assert_eq!((status, code), (401, FedErrorCode::BadSignature));
    // Unsigned.
    let (status, code, accept) = error_code(raw_put(&env, &path, &[], body.clone()).await).await;
    assert_eq!((status, code), (401, FedErrorCode::MissingSignature));
    assert!(accept.is_some());
    // Signed with a key B does not publish: unknown, and no second fetch within a minute.
    let impostor = FederationClient::new(
        RequestSigner::new(env.b.clone(), ServerSigningKey::generate().unwrap()),
        test_mode(),
    )
    .unwrap();
    let err = impostor
        .send_json::<_, Value>(
            &env.a,
            Method::Put,
            &path,
            Some(&json!({"origin": env.b.as_str(), "origin_ts": 1})),
        )
        .await
        .unwrap_err();
    let ClientError::Status { status, body } = err else {
        panic!("{err}")
    };
    assert_eq!(
        (status, body.unwrap().error),
        (401, FedErrorCode::UnknownKey)
    );
    assert_eq!(env.fetches(), 1);
}

/// The sender crashed while its request waited for the receiver to fetch its keys: the
/// fetch went away with the request, and the sender's next request (after its restart)
/// fetches again instead of being refused as signed with an unknown key.
#[tokio::test]
async fn a_request_that_goes_away_mid_fetch_does_not_block_the_next() {
    let env = setup().await;
    let client = env.b_client();
    env.b_next_directory.store(STALL, Ordering::SeqCst);
    let path = env.send_path("1-1");
    let first = client.send(&env.a, Method::Put, &path, Some(txn_body(&env.b)));
    let gone = tokio::time::timeout(Duration::from_secs(30), async {
        tokio::select! {
            r = first => panic!("answered while B's directory stalls: {r:?}"),
            () = async {
                while env.fetches() == 0 {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            } => {}
        }
    });
    gone.await.expect("A never fetched B's keys");
    // The first request is gone (dropped mid-fetch). The next one is verified.
    let resp = tokio::time::timeout(
        Duration::from_secs(30),
        client.send(
            &env.a,
            Method::Put,
            &env.send_path("2-2"),
            Some(txn_body(&env.b)),
        ),
    )
    .await
    .expect("the second request waited for the first one's fetch")
    .unwrap();
    assert_eq!(resp.status, 200, "{}", String::from_utf8_lossy(&resp.body));
    assert_eq!(env.fetches(), 2);
}

/// A server that could not be reached when its keys were fetched (it was restarting) is
/// heard again a second later, not a minute later.
#[tokio::test]
async fn after_a_failed_key_fetch_the_next_comes_a_second_later() {
    let env = setup().await;
    let client = env.b_client();
    env.b_next_directory.store(FAIL, Ordering::SeqCst);
    let put = |txn: &'static str| {
        let path = env.send_path(txn);
        let client = &client;
        let env = &env;
        async move {
            client
                .send(&env.a, Method::Put, &path, Some(txn_body(&env.b)))
                .await
                .unwrap()
                .status
        }
    };
    assert_eq!(put("1-1").await, 401);
    assert_eq!(env.fetches(), 1);
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    assert_eq!(put("2-2").await, 200);
    assert_eq!(env.fetches(), 2);
}

#[tokio::test]
async fn denied_origins_get_403_before_any_key_fetch() {
    let env = setup().await;
    // C: a server that does not even exist; its keys can never be fetched.
    let c = name("127.0.0.1:9");
    env.set_policy(Policy {
        mode: Mode::Open,
        rules: vec![
            Rule::allow("127.0.0.1:*").unwrap(),
            Rule::deny("127.0.0.1:9", Some("test")).unwrap(),
        ],
    });
    let c_client = FederationClient::new(
        RequestSigner::new(c.clone(), ServerSigningKey::generate().unwrap()),
        test_mode(),
    )
    .unwrap();
    let err = c_client
        .send(
            &env.a,
            Method::Put,
            &env.send_path("1-1"),
            Some(txn_body(&c)),
        )
        .await
        .unwrap();
    assert_eq!(err.status, 403);
    let body: parley_federation::ErrorBody = serde_json::from_slice(&err.body).unwrap();
    assert_eq!(body.error, FedErrorCode::FederationDenied);
    assert!(body.message.contains("test"), "{}", body.message);
    assert!(!err.headers.iter().any(|(n, _)| n == "accept-signature"));
    assert_eq!(
        env.fetches(),
        0,
        "the key fetcher was called for a denied origin"
    );

    // Allowlist mode without B: B is refused too (at runtime, no restart), then allowed.
    env.set_policy(Policy {
        mode: Mode::Allowlist,
        rules: vec![Rule::allow("friends.example.org").unwrap()],
    });
    let b_client = env.b_client();
    let resp = b_client
        .send(
            &env.a,
            Method::Put,
            &env.send_path("1-1"),
            Some(txn_body(&env.b)),
        )
        .await
        .unwrap();
    assert_eq!(resp.status, 403);
    assert_eq!(env.fetches(), 0);
    env.set_policy(loopback_policy());
    let resp = b_client
        .send(
            &env.a,
            Method::Put,
            &env.send_path("1-1"),
            Some(txn_body(&env.b)),
        )
        .await
        .unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(env.fetches(), 1);
}

#[tokio::test]
async fn oversized_and_malformed_bodies() {
    let env = setup().await;
    let client = env.b_client();
    let big = vec![b' '; 100 * 1024];
    let resp = client
        .send(&env.a, Method::Put, &env.send_path("1-1"), Some(big))
        .await
        .unwrap();
    assert_eq!(resp.status, 413);
    let resp = client
        .send(
            &env.a,
            Method::Put,
            &env.send_path("1-1"),
            Some(b"{not json".to_vec()),
        )
        .await
        .unwrap();
    assert_eq!(resp.status, 400);
    let body: parley_federation::ErrorBody = serde_json::from_slice(&resp.body).unwrap();
    assert_eq!(body.error, FedErrorCode::BadJson);
}

#[tokio::test]
async fn production_mode_refuses_private_destinations() {
    let client = FederationClient::new(
        RequestSigner::new(name("a.example.org"), ServerSigningKey::generate().unwrap()),
        ClientConfig::default(),
    )
    .unwrap();
    let err = client
        .send(&name("127.0.0.1:8448"), Method::Get, version::PATH, None)
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::Target(_)), "{err}");
}
