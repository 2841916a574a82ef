//! The lake: one Delta table per database and measurement under `<data>/lake`, written from
//! the bus exactly once by [`Sink`], in a form every Delta reader understands.
//!
//! - [`names`]: how names as sent become directory and column names, reversibly.
//! - `buffer`: rows gathered column by column, with nublar's own columns.
//! - `table`: one Delta table: create, schema, what it holds per log partition, commits.
//! - [`sink`]: the consumer that ties them to the bus.
//! - [`query`]: SQL over a database's tables, names as sent, bounded in time and size.
//! - [`maintenance`]: compaction, checkpoints and vacuum.

pub mod buffer;
pub mod maintenance;
pub mod names;
pub mod query;
pub mod sink;
pub mod store;
pub mod table;

pub use sink::{JsonTable, RecordFormat, Sink, SinkConfig, SinkCounters};

use nublar_bus::BusError;

#[derive(Debug, thiserror::Error)]
pub enum LakeError {
    #[error("bus: {0}")]
    Bus(BusError),
    #[error("table {table}: {message}")]
    Delta { table: String, message: String },
    #[error("{path}: {message}")]
    Io { path: String, message: String },
}
