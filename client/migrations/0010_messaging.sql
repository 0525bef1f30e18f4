-- Replies, reactions, edits and deletes (spec/messaging.md MS1–MS12).

-- The message a reply quotes (its envelope id).
ALTER TABLE parley_messages ADD COLUMN reply_to TEXT;
-- The hub's time of the last edit applied (NULL: never edited).
ALTER TABLE parley_messages ADD COLUMN edited_at INTEGER;
-- 1: deleted for everyone; the row is a tombstone (body, media, edits and reactions gone).
ALTER TABLE parley_messages ADD COLUMN deleted INTEGER NOT NULL DEFAULT 0;
-- 1: deleted for me; the row stays (so later actions on it are no-ops) but is not shown.
ALTER TABLE parley_messages ADD COLUMN hidden INTEGER NOT NULL DEFAULT 0;
CREATE INDEX parley_messages_chat_msg ON parley_messages (chat_id, msg_id);

-- Every version of an edited message, kept on this device only: the original (at the
-- message's seq) and each edit (at the edit's seq).
CREATE TABLE parley_edits (
    chat_id TEXT NOT NULL,
    msg_id  TEXT NOT NULL,
    seq     INTEGER NOT NULL,
    body    TEXT NOT NULL,
    at      INTEGER NOT NULL,
    PRIMARY KEY (chat_id, msg_id, seq)
);

-- One reaction per member per message (a new one replaces the old).
CREATE TABLE parley_reactions (
    chat_id TEXT NOT NULL,
    msg_id  TEXT NOT NULL,
    user_id TEXT NOT NULL,
    emoji   TEXT NOT NULL,
    seq     INTEGER NOT NULL,
    PRIMARY KEY (chat_id, msg_id, user_id)
);

-- Reactions, edits and deletes whose target this device has not seen yet: applied when
-- the message arrives, dropped after a while (rules::PENDING_ACTION_TTL_MS).
CREATE TABLE parley_pending_actions (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    chat_id       TEXT NOT NULL,
    target        TEXT NOT NULL,
    seq           INTEGER NOT NULL,
    ts            INTEGER NOT NULL,
    sender        TEXT NOT NULL,
    sender_device TEXT NOT NULL,
    -- The decrypted envelope.
    envelope      BLOB NOT NULL,
    received_at   INTEGER NOT NULL
);
CREATE INDEX parley_pending_actions_target ON parley_pending_actions (chat_id, target);
