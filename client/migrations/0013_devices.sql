-- Own devices this device trusts (spec/devices.md DL7): only these are added to the
-- user's chats by this device. This device itself, devices it approved (link), the
-- device that approved it, and own devices that a trusted own device added.
CREATE TABLE trusted_devices (
    device_id     TEXT PRIMARY KEY,
    identity_key  BLOB NOT NULL,
    how           TEXT NOT NULL,
    trusted_at    INTEGER NOT NULL
);

-- Contacts the user verified (spec/devices.md DV3): a hash of their devices then,
-- and when their devices changed since (a warning until verified again).
CREATE TABLE verified_users (
    user_id        TEXT PRIMARY KEY,
    device_set     TEXT NOT NULL,
    verified_at    INTEGER NOT NULL,
    changed_at     INTEGER
);
