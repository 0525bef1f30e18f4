//! The federation crate's one test harness: module per area, shared helpers here.

mod api;
mod directory;
mod http;
mod interop;
mod outbox;
mod rfc9421_vectors;
mod signing;

use parley_federation::ServerName;
use parley_federation::keys::{ServerPublicKey, ServerSigningKey};
use parley_federation::policy::Policy;
use parley_federation::signing::nonce::NonceCache;
use parley_federation::signing::profile::{
    self, IncomingRequest, OutgoingRequest, RequestSigner, Verified, VerifyError,
};

/// 2026-11-01T00:00:00Z, in ms.
pub const NOW_MS: i64 = 1_793_491_200_000;

pub fn name(s: &str) -> ServerName {
    ServerName::try_from(s).unwrap()
}

pub fn signer(origin: &str, seed: u8) -> RequestSigner {
    RequestSigner::new(name(origin), ServerSigningKey::from_seed(&[seed; 32]))
}

/// A request as it arrives: method, path, query, header lines, body.
#[derive(Debug, Clone)]
pub struct Wire {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Wire {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn set_header(&mut self, name: &str, value: &str) {
        self.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        self.headers.push((name.to_owned(), value.to_owned()));
    }
}

/// Signs a request from `signer` to `destination` at `now_ms` with `nonce`.
pub fn signed(
    signer: &RequestSigner,
    destination: &str,
    (method, path, query): (&str, &str, Option<&str>),
    body: &[u8],
    now_ms: i64,
    nonce: &str,
) -> Wire {
    let dest = name(destination);
    let headers = signer
        .sign(
            &OutgoingRequest {
                method,
                destination: &dest,
                path,
                query,
                body,
            },
            now_ms,
            nonce,
        )
        .unwrap();
    let mut lines = vec![("content-type".to_owned(), "application/json".to_owned())];
    lines.extend(headers.to_vec().into_iter().map(|(n, v)| (n.to_owned(), v)));
    Wire {
        method: method.to_owned(),
        path: path.to_owned(),
        query: query.map(str::to_owned),
        headers: lines,
        body: body.to_vec(),
    }
}

/// Runs the whole staged verifier as `our_name`, with one known key for the origin.
pub fn verify(
    wire: &Wire,
    our_name: &str,
    policy: &Policy,
    known: Option<ServerPublicKey>,
    nonces: &mut NonceCache,
    now_ms: i64,
) -> Result<Verified, VerifyError> {
    let req = IncomingRequest {
        method: &wire.method,
        authority: our_name,
        path: &wire.path,
        query: wire.query.as_deref(),
        headers: &wire.headers,
        body: &wire.body,
    };
    let admitted = profile::parse(req)?.admit(policy)?;
    let (_, key_id) = admitted.key_needed();
    let key = known.filter(|k| &k.key_id() == key_id);
    admitted.check(key.as_ref(), now_ms)?.finish(nonces, now_ms)
}
