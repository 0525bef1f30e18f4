-- The replay store shared by every node of a domain (several nodes behind one name):
-- a signature's nonce is remembered until its window ends, whichever node saw it.
CREATE TABLE federation_nonces (
    origin TEXT NOT NULL,
    nonce TEXT NOT NULL,
    window_end INTEGER NOT NULL,
    PRIMARY KEY (origin, nonce)
);
CREATE INDEX federation_nonces_window_end ON federation_nonces (window_end);
