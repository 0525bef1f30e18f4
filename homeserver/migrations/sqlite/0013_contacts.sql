-- Contact lists (service::contacts): the user ids each local user keeps as contacts,
-- local or remote. "contacts" in the privacy settings means this list. Keyed by owner;
-- the index on the contact answers "who lists this user" for presence fan-out.
CREATE TABLE contacts (
    owner_id       TEXT NOT NULL,
    contact_id     TEXT NOT NULL,
    added_at       BIGINT NOT NULL,
    PRIMARY KEY (owner_id, contact_id)
);
CREATE INDEX contacts_by_contact ON contacts (contact_id);
