//! Integration tests for parley-crypto (one harness, see style.md).

mod envelope;
mod external;
mod groups;
mod interop;
mod media;
mod persistence;
mod safety;
mod support;
mod vectors;
