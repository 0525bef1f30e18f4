//! The Parley protocol, v1: the documents in `spec/` (every server rule numbered), their
//! machine-readable parts and test vectors, and the black-box conformance suite.
//!
//! - [`conformance`]: `parley-conformance`, which tests any homeserver by URL through its
//!   public APIs only, acting as clients and as a signing federation peer, and reports
//!   one line per numbered rule. It never links the homeserver.
//! - [`docs`]: the rule ids the documents define, read from the Markdown, so tests can
//!   check that every rule the suite cites exists.

pub mod conformance;
pub mod docs;
pub mod generated;
pub mod vectors;
