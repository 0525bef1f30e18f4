-- Federation: the allow/deny policy (seeded from config, changed through the admin
-- API), the per-destination outbox, destination backoff, and received transactions.

-- One row: the policy mode ('open' | 'allowlist').
CREATE TABLE federation_settings (
    id             SMALLINT PRIMARY KEY CHECK (id = 1),
    mode           TEXT NOT NULL
);

CREATE TABLE federation_rules (
    pattern        TEXT PRIMARY KEY,
    action         TEXT NOT NULL,               -- 'allow' | 'deny'
    reason         TEXT,
    created_at     BIGINT NOT NULL
);

-- Durable entries waiting for a destination, written in the transaction that made
-- them. Per destination FIFO by id. kind 0 = hub event, 1 = send forwarded to a hub,
-- 2 = receipt. txn_id is set while the entry is in the batch in flight (reused on
-- retry after a restart).
CREATE TABLE federation_outbox (
    id             BIGSERIAL PRIMARY KEY,
    destination    TEXT NOT NULL,
    kind           SMALLINT NOT NULL,
    body           TEXT NOT NULL,
    txn_id         TEXT,
    created_at     BIGINT NOT NULL
);
CREATE INDEX federation_outbox_by_destination ON federation_outbox (destination, id);

CREATE TABLE federation_destinations (
    destination    TEXT PRIMARY KEY,
    failures       BIGINT NOT NULL DEFAULT 0,
    retry_at       BIGINT,
    parked         BOOLEAN NOT NULL DEFAULT FALSE
);

-- Transactions received and committed: (origin, txn_id) answered again, applied once.
CREATE TABLE federation_received (
    origin         TEXT NOT NULL,
    txn_id         TEXT NOT NULL,
    response       TEXT NOT NULL,
    received_at    BIGINT NOT NULL,
    PRIMARY KEY (origin, txn_id)
);
