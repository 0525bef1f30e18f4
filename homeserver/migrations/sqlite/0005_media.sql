-- Media blobs (ciphertext, stored once under its SHA-256), which events refer to them,
-- and uploads in progress (their bytes are staged on disk).
CREATE TABLE blobs (
    hash        TEXT PRIMARY KEY,
    size        BIGINT NOT NULL,
    uploader    TEXT NOT NULL,
    created_at  BIGINT NOT NULL
);
CREATE INDEX blobs_by_uploader ON blobs (uploader);
CREATE TABLE blob_refs (
    chat_id     TEXT NOT NULL,
    seq         BIGINT NOT NULL,
    hash        TEXT NOT NULL,
    ts          BIGINT NOT NULL,
    PRIMARY KEY (chat_id, seq, hash)
);
CREATE INDEX blob_refs_by_hash ON blob_refs (hash);
CREATE TABLE uploads (
    hash        TEXT NOT NULL,
    user_id     TEXT NOT NULL,
    total       BIGINT NOT NULL,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (hash, user_id)
);
ALTER TABLE events ADD COLUMN blobs TEXT;   -- JSON list of blob hashes
