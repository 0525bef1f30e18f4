-- Device links (service::links, spec/devices.md DL1–DL6): the rendezvous of a new device
-- and an existing device of the same user. The server keeps only the link id, the
-- sealed request and the sealed approval, which it cannot read (they are encrypted
-- under the link code's secret, which never reaches the server). A link expires
-- (expires_at) and is approved at most once (approved_by set once).
CREATE TABLE device_links (
    link_id        TEXT PRIMARY KEY,
    user_id        TEXT NOT NULL,
    device_id      TEXT NOT NULL,
    request        BLOB NOT NULL,
    created_at     BIGINT NOT NULL,
    expires_at     BIGINT NOT NULL,
    approved_by    TEXT,
    approval       BLOB
);
CREATE INDEX device_links_by_expiry ON device_links (expires_at);
