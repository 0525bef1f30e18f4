-- Which node of the domain drives a destination's outbox: exactly one at a time. A
-- node renews its lease while it works; when it dies the lease expires and another
-- node takes the destination over.
CREATE TABLE federation_leases (
    destination    TEXT PRIMARY KEY,
    holder         TEXT NOT NULL,
    expires_at     BIGINT NOT NULL
);
