//! The crate's integration tests, one module per subject, linked into one
//! binary so that the crate and its dependencies are linked once.

mod common;

mod bfd;
mod cli;
mod failover;
mod lake;
mod netns;
mod processors;
mod security;
mod serve;
mod stalls;
