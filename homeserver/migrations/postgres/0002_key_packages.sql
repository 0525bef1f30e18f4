-- MLS KeyPackages, opaque to the server. At most one last-resort per device.
CREATE TABLE key_packages (
    id           BIGSERIAL PRIMARY KEY,
    device_id    TEXT NOT NULL REFERENCES devices (device_id) ON DELETE CASCADE,
    last_resort  BOOLEAN NOT NULL,
    data         BYTEA NOT NULL
);
CREATE INDEX key_packages_by_device ON key_packages (device_id, last_resort, id);
CREATE UNIQUE INDEX key_packages_one_last_resort ON key_packages (device_id) WHERE last_resort;
