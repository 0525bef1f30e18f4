-- Media: what a queued message needs besides its ciphertext, and the media reference of
-- messages that carry a file.

-- The blobs a queued message refers to (JSON array of blob addresses), sent with it so
-- that the chat's members may download them.
ALTER TABLE parley_outbox ADD COLUMN blobs TEXT;
-- While set: the path of the encrypted file still to upload. The message waits (and the
-- chat's later messages behind it) until the upload is complete.
ALTER TABLE parley_outbox ADD COLUMN upload TEXT;

-- For a message carrying a file: the JSON of `{media: MediaRef, caption}` (blob, server,
-- size, MIME type, name, the file's key and thumbnail), as in the envelope.
ALTER TABLE parley_messages ADD COLUMN media TEXT;
