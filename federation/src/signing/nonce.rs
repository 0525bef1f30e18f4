//! The replay cache: a bounded set of `(origin, nonce)` seen within their windows.
//!
//! A nonce is remembered until its window ends (the signature's `expires` plus the
//! allowed clock skew); after that the clock check refuses the request anyway. When the
//! cache is full the entry whose window ends first is evicted and the cache raises its
//! *floor* to that time: from then on a request whose window ends at or before the floor
//! is refused (the cache can no longer prove it unseen). Fresh requests always end later,
//! so under overload old-but-valid requests are refused rather than replays accepted.
//! Pure: the caller passes `now`.

use std::collections::{BTreeSet, HashMap};

use crate::ids::ServerName;

/// Why a nonce was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NonceError {
    #[error("nonce already seen within its window")]
    Replayed,
    #[error("signature window ends before what the replay cache still remembers")]
    BelowFloor,
    /// A shared replay store could not answer: the request is refused (never accepted
    /// unchecked); the peer retries.
    #[error("the replay store is unavailable")]
    Unavailable,
}

/// A bounded replay cache. Times are milliseconds since the Unix epoch.
#[derive(Debug)]
pub struct NonceCache {
    capacity: usize,
    /// `(origin, nonce)` → window end.
    seen: HashMap<(ServerName, String), i64>,
    /// `(window end, origin, nonce)`, ordered by window end.
    by_end: BTreeSet<(i64, ServerName, String)>,
    floor: i64,
}

impl NonceCache {
    /// A cache holding at most `capacity` nonces (at least 1).
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            seen: HashMap::new(),
            by_end: BTreeSet::new(),
            floor: i64::MIN,
        }
    }

    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    /// Records `nonce` from `origin`, valid until `window_end_ms`; refuses it if it was
    /// seen within its window.
    pub fn check_and_insert(
        &mut self,
        origin: &ServerName,
        nonce: &str,
        window_end_ms: i64,
        now_ms: i64,
    ) -> Result<(), NonceError> {
        self.expire(now_ms);
        let key = (origin.clone(), nonce.to_owned());
        if self.seen.contains_key(&key) {
            return Err(NonceError::Replayed);
        }
        if window_end_ms <= self.floor {
            return Err(NonceError::BelowFloor);
        }
        while self.seen.len() >= self.capacity {
            let Some((end, o, n)) = self.by_end.pop_first() else {
                break;
            };
            self.seen.remove(&(o, n));
            self.floor = self.floor.max(end);
            if window_end_ms <= self.floor {
                return Err(NonceError::BelowFloor);
            }
        }
        self.by_end
            .insert((window_end_ms, key.0.clone(), key.1.clone()));
        self.seen.insert(key, window_end_ms);
        Ok(())
    }

    /// Forgets nonces whose window ended before `now_ms`.
    pub fn expire(&mut self, now_ms: i64) {
        while let Some(first) = self.by_end.first() {
            if first.0 >= now_ms {
                break;
            }
            if let Some((_, o, n)) = self.by_end.pop_first() {
                self.seen.remove(&(o, n));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin(s: &str) -> ServerName {
        ServerName::try_from(s).unwrap()
    }

    #[test]
    fn refuses_replays_within_the_window() {
        let mut c = NonceCache::new(10);
        let a = origin("a.org");
        c.check_and_insert(&a, "n1", 1_000, 0).unwrap();
        assert_eq!(
            c.check_and_insert(&a, "n1", 1_000, 500),
            Err(NonceError::Replayed)
        );
        // Same nonce from another origin is another key.
        c.check_and_insert(&origin("b.org"), "n1", 1_000, 500)
            .unwrap();
        // After the window the entry is gone (the clock check refuses such requests).
        c.check_and_insert(&a, "n1", 3_000, 1_001).unwrap();
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn stays_bounded_and_never_forgets_a_live_nonce_silently() {
        let mut c = NonceCache::new(3);
        let a = origin("a.org");
        for (i, end) in [100, 200, 300].into_iter().enumerate() {
            c.check_and_insert(&a, &format!("n{i}"), end, 0).unwrap();
        }
        // Full: inserting evicts the earliest-ending entry (n0, ends 100) and raises the
        // floor to 100.
        c.check_and_insert(&a, "n3", 400, 0).unwrap();
        assert_eq!(c.len(), 3);
        // n0 was forgotten, but its window (ends at 100) is at the floor: still refused.
        assert_eq!(
            c.check_and_insert(&a, "n0", 100, 0),
            Err(NonceError::BelowFloor)
        );
        assert_eq!(
            c.check_and_insert(&a, "n1", 200, 0),
            Err(NonceError::Replayed)
        );
        // A fresh request whose window ends later is accepted.
        c.check_and_insert(&a, "n5", 500, 0).unwrap();
        assert_eq!(c.len(), 3);
    }
}
