//! The processors: small services that read topics of the bus and write derived topics.
//!
//! This crate holds their logic as plain state machines over events, apart from the bus, so that
//! each can be tested against a reference model and replayed exactly: [`windows`] turns events
//! into one-minute aggregates by event time, [`alerts`] fires and resolves alert rules, [`dedup`]
//! drops events seen before, [`latest`] keeps each series' newest readings.

pub mod alerts;
pub mod dedup;
pub mod latest;
pub mod pipeline;
pub mod runner;
pub mod series;
pub mod windows;
