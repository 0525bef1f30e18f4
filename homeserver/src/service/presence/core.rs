//! The pure decisions of presence and typing: inputs in, actions out, the clock passed
//! in. No I/O; the shell (`super`) reads the database, writes frames and federates.

use std::collections::{BTreeMap, HashMap};

use parley_client_api::http::presence::Visibility;
use parley_client_api::{ChatId, DeviceId, UserId};

/// Timings of the tracker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timings {
    /// A device silent for this long no longer keeps its user online (ms).
    pub heartbeat_timeout_ms: i64,
    /// Last seen is written at most this often per online user (ms).
    pub last_seen_write_ms: i64,
}

/// What the shell must do after an input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// The user went online or offline: tell the people who may see it.
    Changed {
        user: UserId,
        online: bool,
        last_seen: i64,
    },
    /// Store the user's last seen.
    WriteLastSeen { user: UserId, at: i64 },
}

#[derive(Debug, Clone)]
struct Device {
    conn: u64,
    /// Last connect or heartbeat (ms).
    last_beat: i64,
    /// The connection heartbeats: it receives presence updates.
    subscribed: bool,
}

#[derive(Debug, Clone, Default)]
struct User {
    devices: HashMap<DeviceId, Device>,
    online: bool,
    /// Last activity of any device (ms).
    last_active: i64,
    /// When last seen was last written (ms).
    written_at: Option<i64>,
}

/// Online state of the users connected to this node, from sockets and heartbeats.
///
/// A user is online while one of their devices is connected and has connected or
/// heartbeated within the timeout. Going online or offline is an [`Action::Changed`];
/// last seen is written at most every `last_seen_write_ms` while online, and always on
/// going offline.
#[derive(Debug, Clone)]
pub struct Tracker {
    timings: Timings,
    users: HashMap<UserId, User>,
}

impl Tracker {
    pub fn new(timings: Timings) -> Self {
        Self {
            timings,
            users: HashMap::new(),
        }
    }

    /// A device's socket opened (connection `conn`).
    pub fn connect(
        &mut self,
        user: &UserId,
        device: &DeviceId,
        conn: u64,
        now: i64,
    ) -> Vec<Action> {
        let u = self.users.entry(user.clone()).or_default();
        u.devices.insert(
            device.clone(),
            Device {
                conn,
                last_beat: now,
                subscribed: false,
            },
        );
        self.active(user, now)
    }

    /// A heartbeat on connection `conn`. Unknown connections are ignored.
    pub fn heartbeat(
        &mut self,
        user: &UserId,
        device: &DeviceId,
        conn: u64,
        now: i64,
    ) -> Vec<Action> {
        let Some(d) = self
            .users
            .get_mut(user)
            .and_then(|u| u.devices.get_mut(device))
            .filter(|d| d.conn == conn)
        else {
            return Vec::new();
        };
        d.last_beat = now;
        d.subscribed = true;
        self.active(user, now)
    }

    fn active(&mut self, user: &UserId, now: i64) -> Vec<Action> {
        let mut actions = Vec::new();
        let Some(u) = self.users.get_mut(user) else {
            return actions;
        };
        u.last_active = u.last_active.max(now);
        if !u.online {
            u.online = true;
            actions.push(Action::Changed {
                user: user.clone(),
                online: true,
                last_seen: now,
            });
        }
        if u.written_at
            .is_none_or(|w| now - w >= self.timings.last_seen_write_ms)
        {
            u.written_at = Some(now);
            actions.push(Action::WriteLastSeen {
                user: user.clone(),
                at: now,
            });
        }
        actions
    }

    /// Connection `conn` of a device closed (a newer connection of the device stays).
    pub fn disconnect(
        &mut self,
        user: &UserId,
        device: &DeviceId,
        conn: u64,
        now: i64,
    ) -> Vec<Action> {
        let Some(u) = self.users.get_mut(user) else {
            return Vec::new();
        };
        if u.devices.get(device).is_some_and(|d| d.conn == conn) {
            u.devices.remove(device);
        }
        let mut actions = Vec::new();
        let timeout = self.timings.heartbeat_timeout_ms;
        let live = u.devices.values().any(|d| now - d.last_beat < timeout);
        if u.online && !live {
            u.online = false;
            u.last_active = u.last_active.max(now);
            offline(user, u, u.last_active, &mut actions);
        }
        if u.devices.is_empty() {
            self.users.remove(user);
        }
        actions
    }

    /// Time passed: users whose devices all went silent go offline (last seen: their
    /// last heartbeat).
    pub fn tick(&mut self, now: i64) -> Vec<Action> {
        let timeout = self.timings.heartbeat_timeout_ms;
        let mut actions = Vec::new();
        for (user, u) in self.users.iter_mut() {
            if u.online && !u.devices.values().any(|d| now - d.last_beat < timeout) {
                u.online = false;
                let at = u.last_active;
                offline(user, u, at, &mut actions);
            }
        }
        actions
    }

    pub fn is_online(&self, user: &UserId) -> bool {
        self.users.get(user).is_some_and(|u| u.online)
    }

    /// The user's connected devices on this node.
    pub fn devices(&self, user: &UserId) -> Vec<DeviceId> {
        self.users
            .get(user)
            .map(|u| u.devices.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// The user's connected devices that take presence updates (they heartbeat).
    pub fn subscribers(&self, user: &UserId) -> Vec<DeviceId> {
        self.users
            .get(user)
            .map(|u| {
                u.devices
                    .iter()
                    .filter(|(_, d)| d.subscribed)
                    .map(|(id, _)| id.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Users with a connected device.
    pub fn connected_users(&self) -> usize {
        self.users.len()
    }
}

fn offline(user: &UserId, u: &mut User, at: i64, actions: &mut Vec<Action>) {
    u.written_at = Some(at);
    actions.push(Action::Changed {
        user: user.clone(),
        online: false,
        last_seen: at,
    });
    actions.push(Action::WriteLastSeen {
        user: user.clone(),
        at,
    });
}

/// Whether `viewer` may see `target`'s presence: both settings must allow it (the
/// reciprocal rule). `viewer_listed`: the viewer is in the target's contact list;
/// `target_listed`: the target is in the viewer's. One always sees oneself.
pub fn visible(
    viewer: &UserId,
    viewer_setting: Visibility,
    target: &UserId,
    target_setting: Visibility,
    viewer_listed: bool,
    target_listed: bool,
) -> bool {
    viewer == target
        || (target_setting.allows(viewer_listed) && viewer_setting.allows(target_listed))
}

/// Typing state: who types in which chat, until when. Never stored.
#[derive(Debug, Clone)]
pub struct Typing {
    ttl_ms: i64,
    debounce_ms: i64,
    max_entries: usize,
    /// `(chat, user)` → (device, expires at, last relayed at).
    active: BTreeMap<(ChatId, UserId), (DeviceId, i64, i64)>,
}

/// What the shell relays after a typing input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypingRelay {
    pub chat: ChatId,
    pub user: UserId,
    pub device: DeviceId,
    pub typing: bool,
}

impl Typing {
    pub fn new(ttl_ms: i64, debounce_ms: i64, max_entries: usize) -> Self {
        Self {
            ttl_ms,
            debounce_ms,
            max_entries,
            active: BTreeMap::new(),
        }
    }

    /// A member's device says they type (`true`) or stopped (`false`). Returns what to
    /// relay: a start unless one was relayed within the debounce (then it only extends
    /// the expiry), a stop only if a start was active.
    pub fn input(
        &mut self,
        chat: &ChatId,
        user: &UserId,
        device: &DeviceId,
        typing: bool,
        now: i64,
    ) -> Option<TypingRelay> {
        let key = (chat.clone(), user.clone());
        let relay = |typing| TypingRelay {
            chat: chat.clone(),
            user: user.clone(),
            device: device.clone(),
            typing,
        };
        if !typing {
            return self.active.remove(&key).map(|_| relay(false));
        }
        match self.active.get_mut(&key) {
            Some((d, expires, relayed)) if *expires > now => {
                *expires = now + self.ttl_ms;
                *d = device.clone();
                if now - *relayed >= self.debounce_ms {
                    *relayed = now;
                    Some(relay(true))
                } else {
                    None
                }
            }
            _ => {
                if !self.active.contains_key(&key) && self.active.len() >= self.max_entries {
                    return None;
                }
                self.active
                    .insert(key, (device.clone(), now + self.ttl_ms, now));
                Some(relay(true))
            }
        }
    }

    /// Starts not refreshed within the expiry end: the stops to relay.
    pub fn expire(&mut self, now: i64) -> Vec<TypingRelay> {
        let mut out = Vec::new();
        self.active.retain(|(chat, user), (device, expires, _)| {
            if *expires <= now {
                out.push(TypingRelay {
                    chat: chat.clone(),
                    user: user.clone(),
                    device: device.clone(),
                    typing: false,
                });
                false
            } else {
                true
            }
        });
        out
    }
}

/// Last seen values waiting to be stored, per user (newest wins).
///
/// A value stays here until the store has it: [`Self::stored`] removes it only after
/// the write, and only if no newer value arrived meanwhile. A reader that looks here
/// first and in the store second therefore never misses a value that is being written.
#[derive(Debug, Default)]
pub struct LastSeenWrites(HashMap<UserId, i64>);

impl LastSeenWrites {
    pub fn record(&mut self, user: UserId, at: i64) {
        let e = self.0.entry(user).or_insert(at);
        *e = (*e).max(at);
    }

    pub fn get(&self, user: &UserId) -> Option<i64> {
        self.0.get(user).copied()
    }

    /// What to write now; it stays pending until [`Self::stored`].
    pub fn snapshot(&self) -> Vec<(UserId, i64)> {
        self.0.iter().map(|(u, at)| (u.clone(), *at)).collect()
    }

    /// `written` (a snapshot) is in the store: forget what has not changed since.
    pub fn stored(&mut self, written: Vec<(UserId, i64)>) {
        for (u, at) in written {
            if self.0.get(&u) == Some(&at) {
                self.0.remove(&u);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u(s: &str) -> UserId {
        UserId::try_from(format!("@{s}:x.org").as_str()).unwrap()
    }
    fn d(s: &str) -> DeviceId {
        DeviceId::try_from(s).unwrap()
    }
    fn changes(actions: &[Action]) -> Vec<(bool, i64)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Changed {
                    online, last_seen, ..
                } => Some((*online, *last_seen)),
                _ => None,
            })
            .collect()
    }
    fn writes(actions: &[Action]) -> Vec<i64> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::WriteLastSeen { at, .. } => Some(*at),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn online_from_sockets_and_heartbeats() {
        let mut t = Tracker::new(Timings {
            heartbeat_timeout_ms: 10_000,
            last_seen_write_ms: 5_000,
        });
        let a = u("a");
        let acts = t.connect(&a, &d("A1"), 1, 1_000);
        assert_eq!(changes(&acts), vec![(true, 1_000)]);
        assert_eq!(writes(&acts), vec![1_000]);
        // A second device changes nothing; heartbeats write at most every 5 s.
        assert!(t.connect(&a, &d("A2"), 2, 1_500).is_empty());
        assert!(t.heartbeat(&a, &d("A1"), 1, 3_000).is_empty());
        assert_eq!(writes(&t.heartbeat(&a, &d("A1"), 1, 6_000)), vec![6_000]);
        // A heartbeat of an old connection is ignored.
        assert!(t.heartbeat(&a, &d("A1"), 9, 7_000).is_empty());
        assert_eq!(t.subscribers(&a), vec![d("A1")]);
        // One device leaves: still online. The other goes silent: offline after 10 s.
        assert!(t.disconnect(&a, &d("A1"), 1, 8_000).is_empty());
        assert!(t.tick(11_000).is_empty());
        // Last seen: the last heartbeat (6 s; the one at 7 s was of an old connection).
        let acts = t.tick(11_500);
        assert_eq!(changes(&acts), vec![(false, 6_000)]);
        assert_eq!(writes(&acts), vec![6_000]);
        assert!(!t.is_online(&a));
        // It heartbeats again: online; then it disconnects: offline at once.
        assert_eq!(
            changes(&t.heartbeat(&a, &d("A2"), 2, 12_000)),
            vec![(true, 12_000)]
        );
        let acts = t.disconnect(&a, &d("A2"), 2, 13_000);
        assert_eq!(changes(&acts), vec![(false, 13_000)]);
        assert_eq!(writes(&acts), vec![13_000]);
        assert_eq!(t.connected_users(), 0);
    }

    #[test]
    fn last_seen_stays_pending_until_stored() {
        let (a, b) = (u("a"), u("b"));
        let mut w = LastSeenWrites::default();
        w.record(a.clone(), 5);
        w.record(a.clone(), 3);
        w.record(b.clone(), 7);
        let mut batch = w.snapshot();
        batch.sort();
        assert_eq!(batch, vec![(a.clone(), 5), (b.clone(), 7)]);
        // While the batch is being written, a reader still finds it here.
        assert_eq!(w.get(&a), Some(5));
        // A newer value arrives during the write: it survives the write's completion.
        w.record(b.clone(), 9);
        w.stored(batch);
        assert_eq!(w.get(&a), None);
        assert_eq!(w.get(&b), Some(9));
        assert_eq!(w.snapshot(), vec![(b, 9)]);
    }

    #[test]
    fn a_replaced_connection_keeps_the_device() {
        let mut t = Tracker::new(Timings {
            heartbeat_timeout_ms: 10_000,
            last_seen_write_ms: 5_000,
        });
        let a = u("a");
        t.connect(&a, &d("A1"), 1, 0);
        t.connect(&a, &d("A1"), 2, 100);
        assert!(t.disconnect(&a, &d("A1"), 1, 200).is_empty());
        assert!(t.is_online(&a));
    }

    #[test]
    fn visibility_is_reciprocal() {
        use Visibility::*;
        let (a, b) = (u("a"), u("b"));
        assert!(visible(&a, Everyone, &b, Everyone, false, false));
        assert!(!visible(&a, Everyone, &b, Contacts, false, true));
        assert!(
            visible(&a, Everyone, &b, Contacts, true, false),
            "b lists a"
        );
        assert!(
            !visible(&a, Nobody, &b, Everyone, true, true),
            "hiding yours hides theirs"
        );
        assert!(
            !visible(&a, Contacts, &b, Everyone, true, false),
            "a shows hers to her contacts only: she sees only theirs"
        );
        assert!(visible(&a, Contacts, &b, Contacts, true, true));
        assert!(!visible(&a, Everyone, &b, Nobody, true, true));
        assert!(
            visible(&a, Nobody, &a, Nobody, false, false),
            "one sees oneself"
        );
    }

    #[test]
    fn typing_debounces_and_expires() {
        let mut t = Typing::new(5_000, 2_000, 10);
        let (c, a, dev) = (ChatId::try_from("!c:x.org").unwrap(), u("a"), d("A1"));
        assert!(t.input(&c, &a, &dev, true, 0).is_some_and(|r| r.typing));
        assert!(t.input(&c, &a, &dev, true, 1_000).is_none(), "debounced");
        assert!(
            t.input(&c, &a, &dev, true, 2_500).is_some(),
            "refresh relayed"
        );
        assert!(
            t.expire(7_000).is_empty(),
            "refreshed at 2.5 s: until 7.5 s"
        );
        let stops = t.expire(7_500);
        assert_eq!(stops.len(), 1);
        assert!(!stops[0].typing);
        assert!(
            t.input(&c, &a, &dev, false, 8_000).is_none(),
            "nothing to stop"
        );
        t.input(&c, &a, &dev, true, 9_000);
        assert!(
            t.input(&c, &a, &dev, false, 9_100)
                .is_some_and(|r| !r.typing)
        );
        // Bounded.
        let mut small = Typing::new(5_000, 2_000, 1);
        assert!(small.input(&c, &a, &dev, true, 0).is_some());
        assert!(small.input(&c, &u("b"), &dev, true, 0).is_none());
    }
}
