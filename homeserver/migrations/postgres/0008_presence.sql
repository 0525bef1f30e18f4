-- Presence and push (service::presence, service::push).
-- A user's privacy setting and stored last seen (written at most every few seconds per
-- user, and when they go offline; "online" itself lives in memory, from sockets and
-- heartbeats). Keyed by user.
CREATE TABLE presence (
    user_id        TEXT PRIMARY KEY,
    visibility     SMALLINT NOT NULL DEFAULT 0,   -- 0 everyone, 1 contacts, 2 nobody
    last_seen      BIGINT                          -- ms since the epoch; NULL: never seen
);

-- One pusher per device: where to notify it while it has no socket. Removed with the
-- device (the store deletes it in the same transaction).
CREATE TABLE pushers (
    device_id      TEXT PRIMARY KEY,
    user_id        TEXT NOT NULL,
    url            TEXT NOT NULL,
    token          TEXT NOT NULL,
    created_at     BIGINT NOT NULL
);
CREATE INDEX pushers_by_user ON pushers (user_id);
