//! The embedded commit log of nublar.
//!
//! Topics have a fixed number of partitions; a partition is a directory of
//! segment files of Kafka RecordBatch v2 batches, named by base offset, each
//! with a sparse offset index and a time index. An append is acknowledged
//! according to the topic's [`Durability`]; under `fsync`, only after its bytes
//! are on stable storage, with concurrent appenders sharing one `fdatasync`.
//! The byte layout, the write protocol and every crash case are in
//! `docs/log-format.md`.
//!
//! **This crate knows nothing of HTTP, of async runtimes or of what the
//! records mean.** It reads the time only through [`Clock`] and the disk only
//! through [`storage::Storage`].

/// The record batch codec the log stores (its own crate, which every bus shares).
pub use nublar_batch as batch;
mod config;
mod dedup;
mod groups;
pub mod limits;
mod log;
mod partition;
mod segment;
pub mod storage;

pub use batch::{
    Batch, BatchBuilder, BatchError, BatchView, Compression, Fingerprint, ReadBatches, Record,
};
pub use config::{
    AppendError, Clock, Durability, Guarantee, LogError, ManualClock, ReadError, SystemClock,
    TopicConfig,
};
pub use dedup::KeyEntry;
pub use event_listener::EventListener;
pub use groups::GroupState;
pub use log::{Log, OpenOptions, PartitionInfo, validate_name};
pub use partition::{AppendOutcome, RetentionOutcome};
