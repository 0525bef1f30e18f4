-- A queued commit's GroupInfo of the epoch it creates (spec/backup.md BK18): sent with
-- the commit so the chat's hub keeps the latest one for the user's devices that rejoin
-- by external commit.
ALTER TABLE parley_outbox ADD COLUMN group_info BLOB;
