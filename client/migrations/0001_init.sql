-- The SDK's own tables. They live in the device's SQLite file beside openmls's
-- tables (`openmls_*`, migrated separately into `_openmls_sqlx_migrations`).

-- The session and settings: server_url, user_id, device_id, access_token,
-- identity_key (hex of the device's public ed25519 key).
CREATE TABLE parley_state (
    key   TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL
);

-- One row per chat this device knows about.
CREATE TABLE parley_chats (
    chat_id       TEXT PRIMARY KEY NOT NULL,
    -- 1 once this device is a member of the chat's MLS group.
    joined        INTEGER NOT NULL DEFAULT 0,
    -- The highest seq processed, in order (dedup key with chat_id).
    last_seq      INTEGER NOT NULL DEFAULT 0,
    -- What this user marked read, and what of it the server knows.
    read_seq      INTEGER NOT NULL DEFAULT 0,
    read_sent_seq INTEGER NOT NULL DEFAULT 0,
    -- Space-separated user ids of the MLS group's members (this user included).
    members       TEXT NOT NULL DEFAULT '',
    created_at    INTEGER NOT NULL,
    last_activity INTEGER NOT NULL
);

-- Decrypted history (and own messages from the moment they are written).
CREATE TABLE parley_messages (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    chat_id       TEXT NOT NULL,
    -- The envelope's message id (for own messages also the client_msg_id).
    msg_id        TEXT NOT NULL,
    seq           INTEGER,
    sender        TEXT NOT NULL,
    sender_device TEXT NOT NULL,
    outgoing      INTEGER NOT NULL,
    kind          TEXT NOT NULL,
    body          TEXT NOT NULL,
    sent_at       INTEGER NOT NULL,
    server_ts     INTEGER,
    -- pending | sent | delivered | read | failed | received
    state         TEXT NOT NULL,
    UNIQUE (chat_id, sender_device, msg_id)
);
CREATE INDEX parley_messages_chat_seq ON parley_messages (chat_id, seq);

-- Sends not yet acknowledged by the server, in order. `payload` is NULL until the
-- message is encrypted (at send time, in MLS epoch `epoch`); after that the same bytes
-- and client_msg_id are resent until the server acknowledges them (it deduplicates).
-- A message the hub refuses as too old (wrong_epoch) is encrypted again from
-- `plaintext`, which is kept until the server acknowledged the message.
CREATE TABLE parley_outbox (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    chat_id       TEXT NOT NULL,
    client_msg_id TEXT NOT NULL UNIQUE,
    -- message | commit
    kind          TEXT NOT NULL,
    plaintext     BLOB,
    payload       BLOB,
    epoch         INTEGER
);

-- Every member's receipts per chat, as the server reported them.
CREATE TABLE parley_receipts (
    chat_id       TEXT NOT NULL,
    user_id       TEXT NOT NULL,
    delivered_seq INTEGER NOT NULL DEFAULT 0,
    read_seq      INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (chat_id, user_id)
);
