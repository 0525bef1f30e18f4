-- Deactivated accounts keep their id (it is never reused) but cannot log in.
ALTER TABLE users ADD COLUMN deactivated_at BIGINT;
