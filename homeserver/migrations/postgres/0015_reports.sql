-- Reports of abuse to this server's admins (spec/messaging.md MS50–MS56). What the
-- reporter attached is their claim (no franking in v1): stored as sent, JSON.
CREATE TABLE reports (
    id            BIGSERIAL PRIMARY KEY,
    reporter      TEXT NOT NULL,
    -- user | chat | message
    target_kind   TEXT NOT NULL,
    -- The reported user, or the sender of the reported message (NULL for a chat).
    target_user   TEXT,
    target_chat   TEXT,
    target_seq    BIGINT,
    reason        TEXT NOT NULL,
    messages      TEXT NOT NULL,
    created_at    BIGINT NOT NULL
);
CREATE INDEX reports_by_time ON reports (created_at);
