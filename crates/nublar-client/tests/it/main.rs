//! The crate's integration tests, one module per subject, linked into one
//! binary so that the crate and its dependencies are linked once.

mod client;
