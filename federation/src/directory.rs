//! The key directory (IETF HTTP Message Signatures Directory draft) and the key cache.
//!
//! `GET /.well-known/http-message-signatures-directory` answers, as
//! `application/http-message-signatures-directory+json`, a JWKS of the server's current
//! Ed25519 keys (`kty` OKP, `kid` = JWK thumbprint, `nbf`/`exp` in seconds) plus
//! `"parley_retired_keys"`: keys no longer used, with `retired_at`, which verify only
//! durable objects dated before their retirement, never a request.
//!
//! The response is signed once per current key, `tag="http-message-signatures-directory"`,
//! covering `("@authority";req "content-digest")`: the authority the client asked (so a
//! directory cannot be replayed for another server) and, beyond the draft's minimum, the
//! body (so the list, its validity times and the retired keys are bound too). A client
//! keeps only the current keys whose own signature verifies.
//!
//! [`KeyCache`] is the verifier's per-origin cache, pure with `now` passed in: entries
//! live as `Cache-Control: max-age` says, at most 24 h; an unknown `kid` triggers a
//! refetch at most once a minute per origin, or sooner after failed fetches (1 s, then
//! doubling).

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::ids::ServerName;
use crate::keys::{KeyId, ServerPublicKey, ServerSigningKey};
use crate::signing::digest::{content_digest, verify_content_digest};
use crate::signing::profile::CLOCK_SKEW_SECS;
use crate::signing::rfc9421::{
    Message, RequestParts, ResponseParts, SignatureInput, parse_signature_fields,
};

/// Where the directory is served.
pub const PATH: &str = "/.well-known/http-message-signatures-directory";
/// Its media type.
pub const MEDIA_TYPE: &str = "application/http-message-signatures-directory+json";
/// The `tag` of the directory's signatures.
pub const TAG: &str = "http-message-signatures-directory";
/// Longest time a directory is cached, in seconds.
pub const MAX_CACHE_SECS: i64 = 24 * 3600;
/// Cache time when the response says nothing, in seconds.
pub const DEFAULT_CACHE_SECS: i64 = 3600;
/// Least time between two fetches of one origin's directory, in ms.
pub const MIN_REFETCH_MS: i64 = 60_000;
/// Least time before fetching again after one failed fetch, in ms; it doubles with each
/// failure in a row, up to [`MIN_REFETCH_MS`]. Shorter than the minute so that a server
/// that was down while a peer fetched its keys is heard soon after it is back.
pub const FAILED_REFETCH_MS: i64 = 1_000;
/// Most multiaddrs kept from one directory.
pub const MAX_MULTIADDRS: usize = 16;
/// Largest directory body a client reads.
pub const MAX_DIRECTORY_BYTES: usize = 64 * 1024;

/// One JWK of the directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Jwk {
    pub kty: String,
    pub crv: String,
    pub kid: String,
    pub x: String,
    #[serde(rename = "use", default, skip_serializing_if = "Option::is_none")]
    pub use_: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exp: Option<i64>,
    /// Retired keys only: when the key stopped signing (seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retired_at: Option<i64>,
}

/// The directory document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct DirectoryDocument {
    pub keys: Vec<Jwk>,
    #[serde(rename = "parley_retired_keys", default)]
    pub retired_keys: Vec<Jwk>,
    /// The libp2p multiaddrs the server accepts federation on (without `/p2p/`: the
    /// PeerId follows from the keys). Empty when it federates over HTTP only.
    #[serde(
        rename = "parley_multiaddrs",
        default,
        skip_serializing_if = "Vec::is_empty"
    )]
    pub multiaddrs: Vec<String>,
}

/// A current key and its validity (seconds since the epoch; `None` = unbounded).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublishedKey {
    pub key: ServerPublicKey,
    pub nbf: Option<i64>,
    pub exp: Option<i64>,
}

impl PublishedKey {
    /// True when a request signed at `now_secs` may use this key.
    pub fn valid_at(&self, now_secs: i64) -> bool {
        self.nbf.is_none_or(|nbf| nbf <= now_secs) && self.exp.is_none_or(|exp| now_secs <= exp)
    }
}

/// A retired key: it verifies only durable objects dated before `retired_at`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetiredKey {
    pub key: ServerPublicKey,
    pub retired_at: i64,
}

/// A signing key to publish, with its validity (seconds).
#[derive(Debug, Clone, Copy)]
pub struct KeyToPublish<'a> {
    pub key: &'a ServerSigningKey,
    pub nbf: i64,
    pub exp: i64,
}

/// The directory response to serve: body and headers (content type, cache control,
/// content digest and the signatures).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectoryResponse {
    pub body: Vec<u8>,
    pub headers: Vec<(&'static str, String)>,
}

/// Why a directory could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BuildError {
    #[error("a directory needs at least one current key")]
    NoKeys,
    #[error("cannot encode the directory: {0}")]
    Encode(String),
}

fn jwk(key: &ServerPublicKey, nbf: Option<i64>, exp: Option<i64>) -> Jwk {
    Jwk {
        kty: "OKP".into(),
        crv: "Ed25519".into(),
        kid: key.key_id().as_str().to_owned(),
        x: key.jwk_x(),
        use_: Some("sig".into()),
        nbf,
        exp,
        retired_at: None,
    }
}

/// Builds the directory `our_name` serves at `now_ms`, cacheable for `cache_secs`
/// (clamped to 0..=24 h): one signature per current key.
pub fn build_response(
    our_name: &ServerName,
    current: &[KeyToPublish<'_>],
    retired: &[RetiredKey],
    now_ms: i64,
    cache_secs: i64,
) -> Result<DirectoryResponse, BuildError> {
    build_response_with(our_name, current, retired, &[], now_ms, cache_secs)
}

/// [`build_response`] advertising the libp2p `multiaddrs` federation is accepted on.
pub fn build_response_with(
    our_name: &ServerName,
    current: &[KeyToPublish<'_>],
    retired: &[RetiredKey],
    multiaddrs: &[String],
    now_ms: i64,
    cache_secs: i64,
) -> Result<DirectoryResponse, BuildError> {
    if current.is_empty() {
        return Err(BuildError::NoKeys);
    }
    let doc = DirectoryDocument {
        keys: current
            .iter()
            .map(|k| jwk(&k.key.public(), Some(k.nbf), Some(k.exp)))
            .collect(),
        retired_keys: retired
            .iter()
            .map(|r| Jwk {
                retired_at: Some(r.retired_at),
                use_: None,
                ..jwk(&r.key, None, None)
            })
            .collect(),
        multiaddrs: multiaddrs.to_vec(),
    };
    let body = serde_json::to_vec(&doc).map_err(|e| BuildError::Encode(e.to_string()))?;
    let cache_secs = cache_secs.clamp(0, MAX_CACHE_SECS);
    let digest = content_digest(&body);
    let request = RequestParts {
        authority: our_name.as_str().to_owned(),
        ..Default::default()
    };
    let response = ResponseParts {
        status: 200,
        headers: vec![("content-digest".into(), digest.clone())],
        request: Some(&request),
    };
    let created = now_ms.div_euclid(1000);
    let encode = |e: sfv::Error| BuildError::Encode(e.to_string());
    let mut inputs = Vec::new();
    let mut signatures = Vec::new();
    for (i, k) in current.iter().enumerate() {
        let input = SignatureInput::parse(r#"("@authority";req "content-digest")"#)
            .map_err(|e| BuildError::Encode(e.to_string()))?
            .with_int("created", created)
            .and_then(|i| i.with_int("expires", created + cache_secs.max(60)))
            .and_then(|i| i.with_str("keyid", k.key.key_id().as_str()))
            .and_then(|i| i.with_str("alg", "ed25519"))
            .and_then(|i| i.with_str("tag", TAG))
            .map_err(encode)?;
        let base = input
            .signature_base(Message::Response(&response))
            .map_err(|e| BuildError::Encode(e.to_string()))?;
        let sig = k.key.sign(base.as_bytes());
        let (si, s) = crate::signing::rfc9421::signature_fields(&format!("key{i}"), &input, &sig)
            .map_err(encode)?;
        inputs.push(si);
        signatures.push(s);
    }
    Ok(DirectoryResponse {
        body,
        headers: vec![
            ("content-type", MEDIA_TYPE.to_owned()),
            ("cache-control", format!("max-age={cache_secs}")),
            ("content-digest", digest),
            ("signature-input", inputs.join(", ")),
            ("signature", signatures.join(", ")),
        ],
    })
}

/// Why a fetched directory was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DirectoryError {
    #[error("directory is not valid JSON: {0}")]
    Json(String),
    #[error("directory signatures: {0}")]
    Signatures(String),
    #[error("content digest: {0}")]
    Digest(String),
    #[error("no current key of the directory carries a valid signature")]
    NoValidKey,
    #[error("directory is larger than {MAX_DIRECTORY_BYTES} bytes")]
    TooLarge,
}

/// A directory whose keys proved themselves.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VerifiedDirectory {
    pub keys: Vec<PublishedKey>,
    pub retired: Vec<RetiredKey>,
    /// Advertised libp2p multiaddrs (unparsed; the transport parses them).
    pub multiaddrs: Vec<String>,
}

/// Parses and verifies a directory fetched from `authority` at `now_ms`. Keys whose
/// `kid` is not their thumbprint, or without a valid signature, are dropped.
pub fn verify_response(
    authority: &ServerName,
    headers: &[(String, String)],
    body: &[u8],
    now_ms: i64,
) -> Result<VerifiedDirectory, DirectoryError> {
    if body.len() > MAX_DIRECTORY_BYTES {
        return Err(DirectoryError::TooLarge);
    }
    let doc: DirectoryDocument =
        serde_json::from_slice(body).map_err(|e| DirectoryError::Json(e.to_string()))?;
    let request = RequestParts {
        authority: authority.as_str().to_owned(),
        ..Default::default()
    };
    let response = ResponseParts {
        status: 200,
        headers: headers.to_vec(),
        request: Some(&request),
    };
    let header = |n: &str| request_header(headers, n);
    let digest = header("content-digest")
        .ok_or_else(|| DirectoryError::Digest("Content-Digest is missing".into()))?;
    verify_content_digest(&digest, body).map_err(|e| DirectoryError::Digest(e.to_string()))?;
    let (Some(si), Some(s)) = (header("signature-input"), header("signature")) else {
        return Err(DirectoryError::Signatures("unsigned".into()));
    };
    let entries =
        parse_signature_fields(&si, &s).map_err(|e| DirectoryError::Signatures(e.to_string()))?;
    let now = now_ms.div_euclid(1000);
    let mut keys = Vec::new();
    for k in &doc.keys {
        let Some(key) = okp_key(k) else { continue };
        let signed = entries.iter().any(|e| {
            let i = &e.input;
            i.param_str("tag") == Some(TAG)
                && i.param_str("keyid") == Some(k.kid.as_str())
                && i.param_str("alg").is_none_or(|a| a == "ed25519")
                && i.covers("content-digest")
                && i.components()
                    .any(|(n, has_params)| n == "@authority" && has_params)
                && i.param_int("created")
                    .is_some_and(|c| c <= now + CLOCK_SKEW_SECS)
                && i.param_int("expires")
                    .is_none_or(|x| x >= now - CLOCK_SKEW_SECS)
                && crate::signing::verify_ed25519(e, Message::Response(&response), &key).is_ok()
        });
        if signed {
            keys.push(PublishedKey {
                key,
                nbf: k.nbf,
                exp: k.exp,
            });
        }
    }
    if keys.is_empty() {
        return Err(DirectoryError::NoValidKey);
    }
    let retired = doc
        .retired_keys
        .iter()
        .filter_map(|k| {
            Some(RetiredKey {
                key: okp_key(k)?,
                retired_at: k.retired_at?,
            })
        })
        .collect();
    let multiaddrs = doc.multiaddrs.into_iter().take(MAX_MULTIADDRS).collect();
    Ok(VerifiedDirectory {
        keys,
        retired,
        multiaddrs,
    })
}

fn request_header(headers: &[(String, String)], name: &str) -> Option<String> {
    RequestParts {
        headers: headers.to_vec(),
        ..Default::default()
    }
    .header(name)
}

/// The Ed25519 key of a JWK whose `kid` is its thumbprint.
fn okp_key(k: &Jwk) -> Option<ServerPublicKey> {
    if k.kty != "OKP" || k.crv != "Ed25519" {
        return None;
    }
    let key = ServerPublicKey::from_jwk_x(&k.x).ok()?;
    (key.key_id().as_str() == k.kid).then_some(key)
}

/// Seconds to cache a directory, from its `Cache-Control` (`max-age`, `no-cache`,
/// `no-store`), clamped to 0..=24 h.
pub fn cache_secs(cache_control: Option<&str>) -> i64 {
    let Some(value) = cache_control else {
        return DEFAULT_CACHE_SECS;
    };
    let mut max_age = None;
    for directive in value.split(',').map(str::trim) {
        let lower = directive.to_ascii_lowercase();
        if lower == "no-store" || lower == "no-cache" {
            return 0;
        }
        if let Some(v) = lower.strip_prefix("max-age=") {
            max_age = v.trim_matches('"').parse::<i64>().ok();
        }
    }
    max_age
        .unwrap_or(DEFAULT_CACHE_SECS)
        .clamp(0, MAX_CACHE_SECS)
}

// ------------------------------------------------------------------------------------
// The cache

/// Least time since the last fetch before the next, after `failures` failed in a row.
fn refetch_wait(failures: u32) -> i64 {
    match failures {
        0 => MIN_REFETCH_MS,
        n => FAILED_REFETCH_MS
            .saturating_mul(1 << (n - 1).min(16))
            .min(MIN_REFETCH_MS),
    }
}

/// What [`KeyCache::lookup`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    /// A current key of the origin with that kid, valid now.
    Found(ServerPublicKey),
    /// Fetch the origin's directory ([`KeyCache::insert`] it, or
    /// [`KeyCache::fetch_failed`]), then look up again.
    Fetch,
    /// No such key, and the origin was fetched too recently to fetch again (a minute
    /// after a fetch that succeeded, less after failed ones).
    Unknown,
}

#[derive(Debug, Clone)]
struct Entry {
    directory: VerifiedDirectory,
    /// When the cached directory goes stale (ms).
    fresh_until: i64,
    /// Last fetch attempt, successful or not (ms).
    last_attempt: Option<i64>,
    /// Fetches that failed since the last one that succeeded.
    failures: u32,
}

/// Per-origin cache of verified directories, bounded by `capacity` origins.
#[derive(Debug)]
pub struct KeyCache {
    entries: HashMap<ServerName, Entry>,
    capacity: usize,
}

impl KeyCache {
    pub fn new(capacity: usize) -> Self {
        Self {
            entries: HashMap::new(),
            capacity: capacity.max(1),
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn may_fetch(entry: Option<&Entry>, now_ms: i64) -> bool {
        entry.is_none_or(|e| {
            e.last_attempt
                .is_none_or(|t| now_ms - t >= refetch_wait(e.failures))
        })
    }

    /// The key `kid` of `origin` for a request checked at `now_ms`.
    pub fn lookup(&self, origin: &ServerName, kid: &KeyId, now_ms: i64) -> Lookup {
        let entry = self.entries.get(origin);
        let may_fetch = Self::may_fetch(entry, now_ms);
        let Some(e) = entry else {
            return if may_fetch {
                Lookup::Fetch
            } else {
                Lookup::Unknown
            };
        };
        // Stale, or a kid we don't know (rotation): refetch, once a minute at most.
        let fresh = now_ms < e.fresh_until;
        let now_secs = now_ms.div_euclid(1000);
        let current = e
            .directory
            .keys
            .iter()
            .find(|k| &k.key.key_id() == kid && k.valid_at(now_secs));
        match current {
            Some(k) if fresh || !may_fetch => Lookup::Found(k.key),
            _ if may_fetch => Lookup::Fetch,
            _ => Lookup::Unknown,
        }
    }

    /// Records a failed fetch of `origin` that started at `started_ms` (the origin was
    /// unreachable or its answer did not verify). A fetch that never ended (the request
    /// it was for went away midway) is not recorded, so it does not stop the next request
    /// from fetching.
    pub fn fetch_failed(&mut self, origin: &ServerName, started_ms: i64) {
        if !self.entries.contains_key(origin) {
            self.make_room();
            self.entries.insert(
                origin.clone(),
                Entry {
                    directory: VerifiedDirectory::default(),
                    fresh_until: i64::MIN,
                    last_attempt: None,
                    failures: 0,
                },
            );
        }
        if let Some(e) = self.entries.get_mut(origin) {
            e.last_attempt = Some(started_ms);
            e.failures = e.failures.saturating_add(1);
        }
    }

    /// Stores a verified directory of `origin`, fresh for `cache_secs` (≤ 24 h).
    pub fn insert(
        &mut self,
        origin: &ServerName,
        directory: VerifiedDirectory,
        cache_secs: i64,
        now_ms: i64,
    ) {
        if !self.entries.contains_key(origin) {
            self.make_room();
        }
        let fresh_until = now_ms + cache_secs.clamp(0, MAX_CACHE_SECS) * 1000;
        self.entries.insert(
            origin.clone(),
            Entry {
                directory,
                fresh_until,
                last_attempt: Some(now_ms),
                failures: 0,
            },
        );
    }

    /// A retired key of `origin`, for durable objects dated before `retired_at`.
    pub fn retired_key(&self, origin: &ServerName, kid: &KeyId) -> Option<RetiredKey> {
        self.entries
            .get(origin)?
            .directory
            .retired
            .iter()
            .find(|r| &r.key.key_id() == kid)
            .copied()
    }

    /// Forgets `origin` (e.g. when policy denies it).
    pub fn remove(&mut self, origin: &ServerName) {
        self.entries.remove(origin);
    }

    fn make_room(&mut self) {
        while self.entries.len() >= self.capacity {
            // Evict the entry fetched longest ago.
            let Some(victim) = self
                .entries
                .iter()
                .min_by_key(|(_, e)| e.last_attempt.unwrap_or(i64::MIN))
                .map(|(k, _)| k.clone())
            else {
                return;
            };
            self.entries.remove(&victim);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_control() {
        assert_eq!(cache_secs(None), DEFAULT_CACHE_SECS);
        assert_eq!(cache_secs(Some("max-age=600")), 600);
        assert_eq!(cache_secs(Some("public, max-age=999999")), MAX_CACHE_SECS);
        assert_eq!(cache_secs(Some("no-store")), 0);
        assert_eq!(cache_secs(Some("max-age=60, no-cache")), 0);
        assert_eq!(cache_secs(Some("max-age=-5")), 0);
        assert_eq!(cache_secs(Some("max-age=x")), DEFAULT_CACHE_SECS);
    }

    fn dir(keys: &[(u8, Option<i64>, Option<i64>)]) -> VerifiedDirectory {
        VerifiedDirectory {
            keys: keys
                .iter()
                .map(|&(seed, nbf, exp)| PublishedKey {
                    key: ServerSigningKey::from_seed(&[seed; 32]).public(),
                    nbf,
                    exp,
                })
                .collect(),
            retired: Vec::new(),
            multiaddrs: Vec::new(),
        }
    }

    fn kid(seed: u8) -> KeyId {
        ServerSigningKey::from_seed(&[seed; 32]).key_id()
    }

    #[test]
    fn refetch_at_most_once_a_minute_per_origin() {
        let a = ServerName::try_from("a.org").unwrap();
        let b = ServerName::try_from("b.org").unwrap();
        let mut c = KeyCache::new(10);
        let t = 1_000_000_000_000;
        assert_eq!(c.lookup(&a, &kid(1), t), Lookup::Fetch);
        c.insert(&a, dir(&[(1, None, None)]), 3600, t);
        let key = ServerSigningKey::from_seed(&[1; 32]).public();
        assert_eq!(c.lookup(&a, &kid(1), t + 1_000), Lookup::Found(key));
        // A kid it doesn't know (the origin rotated): refetch, but not twice a minute.
        assert_eq!(c.lookup(&a, &kid(2), t + 1_000), Lookup::Unknown);
        assert_eq!(c.lookup(&a, &kid(2), t + 59_999), Lookup::Unknown);
        assert_eq!(c.lookup(&a, &kid(2), t + 60_000), Lookup::Fetch);
        // Another origin is independent.
        assert_eq!(c.lookup(&b, &kid(2), t + 1_000), Lookup::Fetch);
        // Stale after max-age: refetch; while that fails, the old key still serves.
        assert_eq!(c.lookup(&a, &kid(1), t + 3_600_000), Lookup::Fetch);
        c.fetch_failed(&a, t + 3_600_000);
        assert_eq!(c.lookup(&a, &kid(1), t + 3_600_001), Lookup::Found(key));
        assert_eq!(c.lookup(&a, &kid(1), t + 3_601_000), Lookup::Fetch);
    }

    #[test]
    fn refetch_backs_off_from_a_second_after_failures() {
        let a = ServerName::try_from("a.org").unwrap();
        let mut c = KeyCache::new(10);
        let mut t = 1_000_000_000_000;
        // Each failure in a row doubles the wait: 1 s, 2 s, 4 s, … up to the minute.
        for wait in [1_000, 2_000, 4_000, 8_000, 16_000, 32_000, 60_000, 60_000] {
            assert_eq!(c.lookup(&a, &kid(1), t), Lookup::Fetch);
            c.fetch_failed(&a, t);
            assert_eq!(c.lookup(&a, &kid(1), t + wait - 1), Lookup::Unknown);
            t += wait;
        }
        // A success resets it: the next refetch waits the full minute.
        c.insert(&a, dir(&[(1, None, None)]), 3600, t);
        assert_eq!(c.lookup(&a, &kid(2), t + 59_999), Lookup::Unknown);
        assert_eq!(c.lookup(&a, &kid(2), t + 60_000), Lookup::Fetch);
        c.fetch_failed(&a, t + 60_000);
        assert_eq!(c.lookup(&a, &kid(2), t + 60_999), Lookup::Unknown);
        assert_eq!(c.lookup(&a, &kid(2), t + 61_000), Lookup::Fetch);
    }

    #[test]
    fn key_validity_is_enforced() {
        let a = ServerName::try_from("a.org").unwrap();
        let mut c = KeyCache::new(10);
        let t = 1_000_000_000_000;
        c.insert(
            &a,
            dir(&[(1, Some(1_000_000_000), Some(1_000_000_030))]),
            86_400,
            t,
        );
        assert_eq!(c.lookup(&a, &kid(1), t - 1_000), Lookup::Unknown);
        assert!(matches!(c.lookup(&a, &kid(1), t), Lookup::Found(_)));
        // Expired (exp is in seconds): not found, and no refetch within the minute.
        assert_eq!(c.lookup(&a, &kid(1), t + 31_000), Lookup::Unknown);
        assert_eq!(c.lookup(&a, &kid(1), t + 60_000), Lookup::Fetch);
    }

    #[test]
    fn bounded() {
        let mut c = KeyCache::new(2);
        for (i, n) in ["a.org", "b.org", "c.org"].iter().enumerate() {
            let n = ServerName::try_from(*n).unwrap();
            c.insert(&n, dir(&[(1, None, None)]), 60, i as i64);
        }
        assert_eq!(c.len(), 2);
        let a = ServerName::try_from("a.org").unwrap();
        assert_eq!(c.lookup(&a, &kid(1), 100_000), Lookup::Fetch);
    }
}
