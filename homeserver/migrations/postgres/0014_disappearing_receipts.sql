-- Disappearing messages and read-receipt privacy (spec/messaging.md MS30–MS47).

-- When an event expires (ms since the epoch; NULL: never before retention). The
-- janitor drops expired events with their undelivered inbox rows and blob references,
-- on the hub and on every follower that holds a copy.
ALTER TABLE events ADD COLUMN expires_at BIGINT;
CREATE INDEX events_by_expiry ON events (expires_at) WHERE expires_at IS NOT NULL;
-- The chat read-receipt policy an event set (NULL: it set none), so followers get it.
ALTER TABLE events ADD COLUMN read_receipts BOOLEAN;

-- A chat's read-receipt policy (FALSE: no member's read receipt is relayed).
ALTER TABLE chats ADD COLUMN read_receipts BOOLEAN NOT NULL DEFAULT TRUE;

-- A user's setting: FALSE sends no read receipts and receives none.
ALTER TABLE presence ADD COLUMN read_receipts BOOLEAN NOT NULL DEFAULT TRUE;
