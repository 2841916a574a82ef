//! The crate's integration tests, one module per subject, linked into one
//! binary so that the crate and its dependencies are linked once.

mod common;

mod accept;
mod auth;
mod multihop;
mod packet;
mod pair;
mod session;
mod session_properties;
mod speaker;
