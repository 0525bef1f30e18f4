-- Groups: names, admins, the hub's MLS epoch, and MLS metadata of events.
ALTER TABLE chats ADD COLUMN name TEXT;
ALTER TABLE chats ADD COLUMN mls_epoch BIGINT NOT NULL DEFAULT 0;
ALTER TABLE chat_members ADD COLUMN admin BOOLEAN NOT NULL DEFAULT FALSE;
ALTER TABLE events ADD COLUMN mls_kind SMALLINT;         -- 0 commit, 1 proposal, 2 application
ALTER TABLE events ADD COLUMN mls_epoch BIGINT;
ALTER TABLE events ADD COLUMN membership TEXT;           -- JSON {"add":[…],"remove":[…]}
