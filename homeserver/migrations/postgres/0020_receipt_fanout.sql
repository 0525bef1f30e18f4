-- Receipts that acknowledgements raised and that other servers have still to hear of
-- (spec FO1). Written in the transaction that commits the acks, deleted once the
-- receipts are in the federation outbox: a crash in between sends them again (receipts
-- only rise) rather than loses them. One row per raise; the federator folds repeats.
CREATE TABLE receipt_fanout (
    id       BIGSERIAL PRIMARY KEY,
    chat_id  TEXT NOT NULL,
    user_id  TEXT NOT NULL
);
