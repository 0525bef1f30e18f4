//! Tests of the test kit itself.

mod pg;
mod process;
