-- A forwarded send answered `pending` reaches its conclusion on the sending device
-- through its inbox: kind 2 = the hub ordered or refused it; `body` holds the frame
-- (`sent_late` or `send_failed`, without its id). NULL for the other kinds.
ALTER TABLE inbox ADD COLUMN body TEXT;

-- The janitor drops received-transaction dedup rows older than the window.
CREATE INDEX federation_received_by_age ON federation_received (received_at);
