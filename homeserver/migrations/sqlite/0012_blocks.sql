-- Blocking (service::blocking, spec/messaging.md MS20–MS27). One row per period a
-- local user blocked someone (any user id, local or remote): `until` is NULL while the
-- block lasts. Kept after unblocking, so events sent during the block stay withheld
-- from the blocker (history included) and only new ones are delivered.
CREATE TABLE user_blocks (
    blocker  TEXT NOT NULL,
    blocked  TEXT NOT NULL,
    since    BIGINT NOT NULL,
    until    BIGINT,
    PRIMARY KEY (blocker, blocked, since)
);
CREATE INDEX user_blocks_by_blocked ON user_blocks (blocked, blocker);
