-- Each hosted chat's latest MLS GroupInfo (spec/backup.md BK18-BK21): the signed
-- GroupInfo of the epoch the last accepted commit created, as that commit's sender
-- published it with the commit. Opaque bytes to the server; a member user's device that
-- lost its group state (a restored device) joins by external commit from it. Written in
-- the transaction that accepts the commit; one row per chat.
CREATE TABLE chat_group_info (
    chat_id     TEXT PRIMARY KEY,
    epoch       BIGINT NOT NULL,
    data        BLOB NOT NULL,
    updated_at  BIGINT NOT NULL
);
