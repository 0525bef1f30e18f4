-- Disappearing messages and the chat read-receipt policy (spec/messaging.md MS30–MS47).

-- The chat's disappearing-message timer in seconds (0: off), from the last `timer`
-- event applied in seq order (or set by this device).
ALTER TABLE parley_chats ADD COLUMN timer_secs INTEGER NOT NULL DEFAULT 0;
-- The chat's read-receipt policy (0: forbidden for every member).
ALTER TABLE parley_chats ADD COLUMN read_receipts INTEGER NOT NULL DEFAULT 1;
-- When this device deletes the message (ms; counted from when this device received or
-- sent it). NULL: never.
ALTER TABLE parley_messages ADD COLUMN expires_at INTEGER;
CREATE INDEX parley_messages_expiry ON parley_messages (expires_at) WHERE expires_at IS NOT NULL;
