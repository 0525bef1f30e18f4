-- Each local user's encrypted history backup (spec/backup.md): the media blob holding
-- the archive (uploaded by the user; the blob stays referenced while it is the backup)
-- and how its key is made (the JSON of the wire's BackupKeyMode: nothing secret).
CREATE TABLE backups (
    user_id     TEXT PRIMARY KEY,
    blob        TEXT NOT NULL,
    size        BIGINT NOT NULL,
    key_mode    TEXT NOT NULL,
    created_at  BIGINT NOT NULL
);
CREATE INDEX backups_by_blob ON backups (blob);
