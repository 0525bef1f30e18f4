//! Integration tests for parley-crypto.
