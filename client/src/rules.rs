//! The rules every client applies to replies, reactions, edits and deletes
//! (`spec/messaging.md`, MS1–MS12): the time windows in one place, and the pure decision
//! of what an incoming action does. The clock is passed in; nothing here reads a store.
//!
//! Times are the hub's (`ts` of the events), so every device of every member decides the
//! same: the window runs from the target message's `ts` to the action's `ts`.

use parley_client_api::UserId;

/// An edit is applied only within this long after the message (MS5): 24 h.
pub const EDIT_WINDOW_MS: i64 = 24 * 60 * 60 * 1000;
/// "Delete for everyone" is applied only within this long after the message (MS6): 48 h.
pub const DELETE_WINDOW_MS: i64 = 48 * 60 * 60 * 1000;
/// An action whose target this device has not seen is kept this long, waiting for the
/// message (MS8); then it is dropped.
pub const PENDING_ACTION_TTL_MS: i64 = 7 * 24 * 60 * 60 * 1000;
/// At most this many waiting actions per chat; the oldest go first (MS8).
pub const MAX_PENDING_ACTIONS_PER_CHAT: i64 = 1000;
/// The longest reaction, in bytes of UTF-8 (one emoji, with modifiers and joiners).
pub const MAX_REACTION_BYTES: usize = 64;

/// What an action does to its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActionKind {
    Reaction,
    Edit,
    Delete,
}

/// What this device knows of an action's target message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The MLS-authenticated sender (user) of the target.
    pub sender: UserId,
    /// The hub's time of the target (none while an own message is pending).
    pub ts: Option<i64>,
    /// Deleted for everyone (a tombstone).
    pub deleted: bool,
    /// A text message (`text` or `reply`): the only kinds an edit may change.
    pub text: bool,
}

/// The decision on one action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Apply it now.
    Apply,
    /// The target is unknown here: keep the action until the message arrives (MS8).
    Keep,
    /// Ignore it, for this reason (a documented no-op, MS9).
    Ignore(&'static str),
}

/// Decides an action by `actor` (the MLS sender, never an envelope field) at the hub's
/// time `at_ms` on `target` (None: not seen here).
pub fn judge(kind: ActionKind, actor: &UserId, at_ms: i64, target: Option<&Target>) -> Verdict {
    let Some(t) = target else {
        return Verdict::Keep;
    };
    if t.deleted {
        return Verdict::Ignore("the message was deleted");
    }
    let within = |window: i64| match t.ts {
        Some(ts) => at_ms.saturating_sub(ts) <= window,
        None => true,
    };
    match kind {
        ActionKind::Reaction => Verdict::Apply,
        ActionKind::Edit if &t.sender != actor => {
            Verdict::Ignore("edit by someone other than the sender")
        }
        ActionKind::Edit if !t.text => Verdict::Ignore("only text messages can be edited"),
        ActionKind::Edit if !within(EDIT_WINDOW_MS) => {
            Verdict::Ignore("edit after the edit window")
        }
        ActionKind::Delete if &t.sender != actor => {
            Verdict::Ignore("delete by someone other than the sender")
        }
        ActionKind::Delete if !within(DELETE_WINDOW_MS) => {
            Verdict::Ignore("delete after the delete window")
        }
        ActionKind::Edit | ActionKind::Delete => Verdict::Apply,
    }
}

/// Checks a reaction: 1–[`MAX_REACTION_BYTES`] bytes, no whitespace or control
/// characters, not plain letters or digits (MS4).
pub fn check_reaction(emoji: &str) -> Result<(), &'static str> {
    if emoji.is_empty() || emoji.len() > MAX_REACTION_BYTES {
        return Err("a reaction is one emoji (1 to 64 bytes)");
    }
    if emoji.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("a reaction has no spaces or control characters");
    }
    if emoji.chars().all(|c| c.is_ascii_alphanumeric()) {
        return Err("a reaction is an emoji, not text");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(s: &str) -> UserId {
        UserId::try_from(s).unwrap()
    }

    fn target(sender: &str, ts: i64) -> Target {
        Target {
            sender: user(sender),
            ts: Some(ts),
            deleted: false,
            text: true,
        }
    }

    #[test]
    fn only_the_sender_edits_and_deletes_within_the_windows() {
        let alice = user("@alice:a.test");
        let bob = user("@bob:a.test");
        let t = target("@alice:a.test", 1_000);
        assert_eq!(
            judge(ActionKind::Edit, &alice, 2_000, Some(&t)),
            Verdict::Apply
        );
        assert!(matches!(
            judge(ActionKind::Edit, &bob, 2_000, Some(&t)),
            Verdict::Ignore(_)
        ));
        assert!(matches!(
            judge(ActionKind::Delete, &bob, 2_000, Some(&t)),
            Verdict::Ignore(_)
        ));
        assert_eq!(
            judge(ActionKind::Reaction, &bob, 2_000, Some(&t)),
            Verdict::Apply
        );
        // The windows' edges are inclusive.
        let edge = 1_000 + EDIT_WINDOW_MS;
        assert_eq!(
            judge(ActionKind::Edit, &alice, edge, Some(&t)),
            Verdict::Apply
        );
        assert!(matches!(
            judge(ActionKind::Edit, &alice, edge + 1, Some(&t)),
            Verdict::Ignore(_)
        ));
        let edge = 1_000 + DELETE_WINDOW_MS;
        assert_eq!(
            judge(ActionKind::Delete, &alice, edge, Some(&t)),
            Verdict::Apply
        );
        assert!(matches!(
            judge(ActionKind::Delete, &alice, edge + 1, Some(&t)),
            Verdict::Ignore(_)
        ));
    }

    #[test]
    fn unknown_targets_wait_and_tombstones_take_nothing() {
        let alice = user("@alice:a.test");
        assert_eq!(judge(ActionKind::Reaction, &alice, 5, None), Verdict::Keep);
        assert_eq!(judge(ActionKind::Delete, &alice, 5, None), Verdict::Keep);
        let mut t = target("@alice:a.test", 1);
        t.deleted = true;
        for k in [ActionKind::Reaction, ActionKind::Edit, ActionKind::Delete] {
            assert!(matches!(judge(k, &alice, 5, Some(&t)), Verdict::Ignore(_)));
        }
        let mut media = target("@alice:a.test", 1);
        media.text = false;
        assert!(matches!(
            judge(ActionKind::Edit, &alice, 5, Some(&media)),
            Verdict::Ignore(_)
        ));
        assert_eq!(
            judge(ActionKind::Delete, &alice, 5, Some(&media)),
            Verdict::Apply
        );
    }

    #[test]
    fn reactions_are_emoji() {
        assert!(check_reaction("👍").is_ok());
        assert!(check_reaction("👩‍👩‍👧").is_ok());
        assert!(check_reaction("+1").is_ok());
        for bad in ["", "ok", "a b", "👍\n", &"👍".repeat(17)] {
            assert!(check_reaction(bad).is_err(), "{bad:?}");
        }
    }
}
