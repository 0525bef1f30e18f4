//! Integration tests for parley-crypto (one harness, see style.md).

mod groups;
mod support;
