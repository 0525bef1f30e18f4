//! parley-spec's tests: the suite against real homeservers and against faulty ones, and
//! the documents' rule ids.

mod docs;
mod faulty;
mod generated;
mod harness;
mod real;
