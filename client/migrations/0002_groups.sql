-- Groups: a chat's kind and name, the membership change a queued commit makes, and
-- who was a member when (for "delivered to N of M").

-- 'direct' | 'group' (as the server said when this device learnt of the chat).
ALTER TABLE parley_chats ADD COLUMN kind TEXT NOT NULL DEFAULT 'direct';
ALTER TABLE parley_chats ADD COLUMN name TEXT;

-- With a commit: the membership change it makes, as the JSON of the wire's
-- `MembershipChange` (sent with the commit; the hub applies it when it accepts it).
ALTER TABLE parley_outbox ADD COLUMN membership TEXT;

-- Membership intervals per chat and user, from the commits this device processed:
-- the user is a member for the events with from_seq < seq < to_seq (to_seq NULL: still
-- a member). The commit at from_seq is the one that added the user; at to_seq, the one
-- that removed them.
CREATE TABLE parley_member_log (
    chat_id  TEXT NOT NULL,
    user_id  TEXT NOT NULL,
    from_seq INTEGER NOT NULL,
    to_seq   INTEGER
);
CREATE INDEX parley_member_log_chat ON parley_member_log (chat_id, user_id);
