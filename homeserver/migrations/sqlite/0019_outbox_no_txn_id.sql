-- The outbox no longer persists the id of the batch in flight: a restarted server forms
-- its batches again under new ids, and receivers apply entries idempotently (spec FO1).
ALTER TABLE federation_outbox DROP COLUMN txn_id;
