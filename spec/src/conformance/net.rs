//! The suite's side of the wire: HTTP calls, test users, and its federation peers.

use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context, Result, bail};
use reqwest::Method;
use serde_json::{Value, json};
use tokio::sync::OnceCell;

use super::Config;
pub(crate) use super::peer::Peer;

/// The password of every account the suite registers.
pub(crate) const PASSWORD: &str = "conformance suite password";

/// Shared state of one run.
pub(crate) struct Ctx {
    /// Base URL of the (first) server under test, without a trailing `/`.
    pub(crate) base: String,
    /// Base URL of the second server, if given.
    pub(crate) second: Option<String>,
    http: reqwest::Client,
    /// A random tag in every username, so runs against one server never collide.
    run: String,
    counter: AtomicU32,
    server_name: OnceCell<String>,
    pub(super) peer: OnceCell<Option<Peer>>,
    pub(super) denied: OnceCell<Option<Peer>>,
    /// The peer whose key rotation FK3 starts and FK4 completes.
    rotating: OnceCell<Option<Peer>>,
    config: Config,
}

/// A registered account with one logged-in device.
#[derive(Debug, Clone)]
pub(crate) struct User {
    pub(crate) username: String,
    pub(crate) user_id: String,
    pub(crate) device_id: String,
    pub(crate) token: String,
    /// Base URL of its server.
    pub(crate) base: String,
}

/// An HTTP answer.
#[derive(Debug, Clone)]
pub(crate) struct Resp {
    pub(crate) status: u16,
    pub(crate) body: Value,
    pub(crate) headers: reqwest::header::HeaderMap,
    pub(crate) bytes: Vec<u8>,
}

impl Resp {
    /// Fails unless the status is `status` (and, with `code`, the error code is `code`).
    pub(crate) fn expect(&self, status: u16, code: Option<&str>) -> Result<&Self> {
        let got_code = self.body.get("error").and_then(Value::as_str);
        if self.status != status || (code.is_some() && got_code != code) {
            bail!(
                "expected {status}{}, got {} {}",
                code.map(|c| format!(" {c}")).unwrap_or_default(),
                self.status,
                String::from_utf8_lossy(&self.bytes)
                    .chars()
                    .take(300)
                    .collect::<String>()
            );
        }
        Ok(self)
    }

    /// Fails unless the status is 2xx.
    pub(crate) fn ok(&self) -> Result<&Self> {
        if !(200..300).contains(&self.status) {
            bail!(
                "expected success, got {} {}",
                self.status,
                String::from_utf8_lossy(&self.bytes)
                    .chars()
                    .take(300)
                    .collect::<String>()
            );
        }
        Ok(self)
    }
}

impl Ctx {
    pub(super) async fn new(config: &Config) -> Result<Self> {
        let base = config.servers[0].trim_end_matches('/').to_owned();
        let second = config
            .servers
            .get(1)
            .map(|s| s.trim_end_matches('/').to_owned());
        let run = hex::encode(rand::random::<[u8; 4]>());
        Ok(Self {
            base,
            second,
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()?,
            run,
            counter: AtomicU32::new(0),
            server_name: OnceCell::new(),
            peer: OnceCell::new(),
            denied: OnceCell::new(),
            rotating: OnceCell::new(),
            config: config.clone(),
        })
    }

    pub(super) async fn shutdown(&self) {
        for p in [self.peer.get(), self.denied.get(), self.rotating.get()]
            .into_iter()
            .flatten()
            .flatten()
        {
            p.stop();
        }
    }

    /// A fresh username of this run.
    pub(crate) fn username(&self) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        format!("cf{}{n}", self.run)
    }

    /// Registers a fresh account on the first server.
    pub(crate) async fn register(&self) -> Result<User> {
        self.register_on(&self.base).await
    }

    /// Registers `N` fresh accounts on the first server, one after the other.
    pub(crate) async fn register_many<const N: usize>(&self) -> Result<[User; N]> {
        let mut users = Vec::with_capacity(N);
        for _ in 0..N {
            users.push(self.register().await?);
        }
        users
            .try_into()
            .map_err(|_| anyhow::anyhow!("registered a number of users other than {N}"))
    }

    /// Registers a fresh account on the server at `base`.
    pub(crate) async fn register_on(&self, base: &str) -> Result<User> {
        let username = self.username();
        let r = self
            .call_at(
                base,
                Method::POST,
                "/v1/register",
                None,
                Some(json!({"username": username, "password": PASSWORD})),
            )
            .await?;
        r.expect(201, None).context("register")?;
        let s = |k: &str| -> Result<String> {
            r.body
                .get(k)
                .and_then(Value::as_str)
                .map(str::to_owned)
                .with_context(|| format!("register: no {k} in {}", r.body))
        };
        Ok(User {
            username,
            user_id: s("user_id")?,
            device_id: s("device_id")?,
            token: s("access_token")?,
            base: base.to_owned(),
        })
    }

    /// Logs `user` in again: a new device of the same account.
    pub(crate) async fn login(&self, user: &User) -> Result<User> {
        let r = self
            .call_at(
                &user.base,
                Method::POST,
                "/v1/login",
                None,
                Some(json!({"username": user.username, "password": PASSWORD})),
            )
            .await?;
        r.expect(200, None).context("login")?;
        let s = |k: &str| -> Result<String> {
            r.body
                .get(k)
                .and_then(Value::as_str)
                .map(str::to_owned)
                .with_context(|| format!("login: no {k} in {}", r.body))
        };
        Ok(User {
            username: user.username.clone(),
            user_id: user.user_id.clone(),
            device_id: s("device_id")?,
            token: s("access_token")?,
            base: user.base.clone(),
        })
    }

    /// The loopback address the suite listens on for its peers and push gateways.
    pub(crate) fn listen_ip(&self) -> &str {
        &self.config.peer_ip
    }

    /// The first server's name, learned from a registered user id (`@name:server`).
    pub(crate) async fn server_name(&self) -> Result<&str> {
        self.server_name
            .get_or_try_init(|| async {
                let u = self.register().await?;
                server_of(&u.user_id)
            })
            .await
            .map(String::as_str)
    }

    /// A request to the first server.
    pub(crate) async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Result<Resp> {
        self.call_at(&self.base, method, path, token, body).await
    }

    /// A request as `user` to their server.
    pub(crate) async fn as_user(
        &self,
        user: &User,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Resp> {
        self.call_at(&user.base, method, path, Some(&user.token), body)
            .await
    }

    pub(crate) async fn call_at(
        &self,
        base: &str,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Result<Resp> {
        let body = body.map(|b| b.to_string().into_bytes());
        self.raw(base, method, path, token, body, &[]).await
    }

    /// A request with exactly these body bytes and extra headers.
    pub(crate) async fn raw(
        &self,
        base: &str,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Vec<u8>>,
        headers: &[(String, String)],
    ) -> Result<Resp> {
        let mut req = self.http.request(method.clone(), format!("{base}{path}"));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b);
        }
        for (k, v) in headers {
            req = req.header(k.as_str(), v.as_str());
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("{method} {path}"))?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let bytes = resp.bytes().await?.to_vec();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Ok(Resp {
            status,
            body,
            headers,
            bytes,
        })
    }

    /// A request with a binary body (media upload).
    pub(crate) async fn put_bytes(&self, user: &User, path: &str, bytes: Vec<u8>) -> Result<Resp> {
        let resp = self
            .http
            .put(format!("{}{path}", user.base))
            .bearer_auth(&user.token)
            .header("content-type", "application/octet-stream")
            .body(bytes)
            .send()
            .await
            .with_context(|| format!("PUT {path}"))?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let bytes = resp.bytes().await?.to_vec();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Ok(Resp {
            status,
            body,
            headers,
            bytes,
        })
    }

    /// The suite's federation peer, started on first use (`None` if it cannot listen).
    pub(crate) async fn peer(&self) -> Result<&Peer> {
        let p = self
            .peer
            .get_or_init(|| async { Peer::start(&self.config.peer_ip).await.ok() })
            .await;
        match p {
            Some(p) => Ok(p),
            None => super::skip(format!(
                "cannot listen on {} for the suite's federation peer",
                self.config.peer_ip
            )),
        }
    }

    /// A fresh peer (its own name, key and scripts) on the allowed address.
    pub(crate) async fn new_peer(&self) -> Result<Peer> {
        match Peer::start(&self.config.peer_ip).await {
            Ok(p) => Ok(p),
            Err(e) => super::skip(format!(
                "cannot listen on {} for a federation peer: {e}",
                self.config.peer_ip
            )),
        }
    }

    /// The peer whose key rotation spans FK3 and FK4 (started on first use).
    pub(crate) async fn rotating_peer(&self) -> Result<&Peer> {
        let p = self
            .rotating
            .get_or_init(|| async { Peer::start(&self.config.peer_ip).await.ok() })
            .await;
        match p {
            Some(p) => Ok(p),
            None => super::skip(format!(
                "cannot listen on {} for the suite's federation peer",
                self.config.peer_ip
            )),
        }
    }

    /// A peer the server under test must refuse.
    pub(crate) async fn denied_peer(&self) -> Result<&Peer> {
        let p = self
            .denied
            .get_or_init(|| async { Peer::start(&self.config.denied_peer_ip).await.ok() })
            .await;
        match p {
            Some(p) => Ok(p),
            None => super::skip(format!(
                "cannot listen on {} for the denied peer",
                self.config.denied_peer_ip
            )),
        }
    }

    /// Sends a request signed by `peer` (headers from [`Peer::sign`]) to the first server.
    pub(crate) async fn fed_call(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        headers: Vec<(String, String)>,
    ) -> Result<Resp> {
        self.raw(&self.base, method, path, None, body, &headers)
            .await
    }
}

/// The server part of a user id.
pub(crate) fn server_of(user_id: &str) -> Result<String> {
    user_id
        .split_once(':')
        .map(|(_, s)| s.to_owned())
        .with_context(|| format!("{user_id:?} is not a user id"))
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Verifies a key directory answer of `server` (its signature headers and body) as a
/// peer must before trusting its keys.
pub(crate) fn verify_directory(
    server: &parley_federation::ServerName,
    headers: &reqwest::header::HeaderMap,
    body: &[u8],
) -> Result<parley_federation::directory::VerifiedDirectory> {
    let headers: Vec<(String, String)> = headers
        .iter()
        .map(|(n, v)| (n.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
        .collect();
    Ok(parley_federation::directory::verify_response(
        server,
        &headers,
        body,
        now_ms(),
    )?)
}
