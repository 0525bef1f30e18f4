-- Parley homeserver core schema (Postgres).
-- Hot tables are keyed by chat_id (chats, chat_members, events) or by device
-- (inbox), so they can become Citus distribution keys without a rewrite.
-- Times are milliseconds since the Unix epoch.

CREATE TABLE users (
    user_id        TEXT PRIMARY KEY,
    localpart      TEXT NOT NULL UNIQUE,
    password_hash  TEXT NOT NULL,
    created_at     BIGINT NOT NULL
);

CREATE TABLE devices (
    device_id      TEXT PRIMARY KEY,
    user_id        TEXT NOT NULL REFERENCES users (user_id),
    display_name   TEXT,
    token_hash     BYTEA NOT NULL UNIQUE,
    created_at     BIGINT NOT NULL
);
CREATE INDEX devices_by_user ON devices (user_id);

CREATE TABLE chats (
    chat_id        TEXT PRIMARY KEY,
    kind           SMALLINT NOT NULL,          -- 0 direct, 1 group
    direct_key     TEXT UNIQUE,                -- "a\nb" (sorted) for direct chats
    created_by     TEXT NOT NULL,
    created_at     BIGINT NOT NULL,
    last_seq       BIGINT NOT NULL DEFAULT 0,  -- the hub's sequencer head
    last_ts        BIGINT NOT NULL
);

-- One row per member per chat: membership and the member's receipts.
CREATE TABLE chat_members (
    chat_id        TEXT NOT NULL REFERENCES chats (chat_id),
    user_id        TEXT NOT NULL,
    joined_at      BIGINT NOT NULL,
    left_at        BIGINT,
    delivered_seq  BIGINT NOT NULL DEFAULT 0,
    read_seq       BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (chat_id, user_id)
);
CREATE INDEX chat_members_by_user ON chat_members (user_id);

CREATE TABLE events (
    chat_id        TEXT NOT NULL,
    seq            BIGINT NOT NULL,
    sender         TEXT NOT NULL,
    sender_device  TEXT NOT NULL,
    client_msg_id  TEXT NOT NULL,
    ts             BIGINT NOT NULL,
    payload        BYTEA NOT NULL,
    PRIMARY KEY (chat_id, seq),
    UNIQUE (chat_id, sender_device, client_msg_id)
);
CREATE INDEX events_by_ts ON events (ts);

-- A device's inbox: what it has not acknowledged yet. kind 0 = event (chat_id, seq),
-- kind 1 = receipt change of receipt_user in chat_id (at most one per device, chat and
-- member: a newer one replaces it and takes a new id).
CREATE TABLE inbox (
    id             BIGSERIAL,
    device_id      TEXT NOT NULL,
    chat_id        TEXT NOT NULL,
    kind           SMALLINT NOT NULL,
    seq            BIGINT NOT NULL,
    sender         TEXT NOT NULL,               -- event sender, or receipt_user
    delivered_seq  BIGINT NOT NULL DEFAULT 0,
    read_seq       BIGINT NOT NULL DEFAULT 0,
    created_at     BIGINT NOT NULL,
    PRIMARY KEY (device_id, id)
);
CREATE UNIQUE INDEX inbox_one_receipt ON inbox (device_id, chat_id, sender) WHERE kind = 1;
CREATE INDEX inbox_by_age ON inbox (created_at);
