//! parley-spec's tests: the suite against real homeservers and against faulty ones, the
//! documents' rule ids, the generated files and the test vectors.

mod docs;
