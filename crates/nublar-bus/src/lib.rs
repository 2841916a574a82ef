//! The one interface through which nublar produces and consumes.
//!
//! Everything after the log (the gateway, the processors, the lake sink) holds
//! an `Arc<dyn Bus>` and never names what is behind it. The embedded log (crate
//! `nublar-bus-embedded`) is one implementation and [`MemoryBus`] another; a
//! Kafka one fits the same trait, and [`contract`] (feature `contract`) is the
//! test suite every implementation passes.
//!
//! The currency both ways is the Kafka RecordBatch v2 batch ([`Batch`] in,
//! [`ReadBatches`] out): what the embedded log stores verbatim and what a
//! Kafka broker sends and takes, so neither side re-encodes records.
//!
//! Batch keys: a batch built with [`BatchBuilder::batch_key`] carries its key
//! as a header of its first record. The embedded log deduplicates on it (a
//! retried batch gets its first offsets back, `deduplicated` set); on Kafka
//! the header travels with the batch and duplicates are recognised downstream.

#[cfg(feature = "contract")]
pub mod contract;
mod memory;
mod stalls;

use std::time::Duration;

use async_trait::async_trait;
pub use nublar_batch::limits::BATCH_KEY_BYTES_MAX;
/// The most a batch's records may take before compression: what every reader
/// decompresses at most, and so what every producer must stay within.
pub use nublar_batch::limits::DECOMPRESSED_BYTES_MAX as BATCH_RECORDS_BYTES_MAX;
pub use nublar_batch::{
    Batch, BatchBuilder, BatchError, BatchView, Compression, Fingerprint, ReadBatches, Record,
};

pub use memory::MemoryBus;
pub use stalls::{Stall, Stalls, Unreadable};

/// When an append is acknowledged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Durability {
    /// Once on stable storage (on Kafka: once every in-sync replica has it).
    #[default]
    Fsync,
    /// Once written; the bus makes it durable within `ms` milliseconds, and a
    /// machine crash may lose the last `ms` of acknowledged appends.
    Interval { ms: u64 },
    /// Once written; never forced to stable storage.
    None,
}

/// What an acknowledged append survives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Guarantee {
    /// A crash of the machine.
    Synced,
    /// A crash of the process, not of the machine.
    Written,
    /// Nothing: the batch is in the bus's memory only (the in-memory bus).
    Memory,
}

/// A topic as every bus understands it. What only one bus has (the embedded
/// log's segment sizes, Kafka's replication) is that bus's own configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicConfig {
    pub partitions: u32,
    pub durability: Durability,
    /// Data older than this may be deleted (`None`: kept by age forever).
    pub retention_ms: Option<i64>,
    /// Data past this size per partition may be deleted, oldest first.
    pub retention_bytes: Option<u64>,
}

impl Default for TopicConfig {
    fn default() -> TopicConfig {
        TopicConfig {
            partitions: 1,
            durability: Durability::Fsync,
            retention_ms: Some(7 * 24 * 60 * 60 * 1000),
            retention_bytes: None,
        }
    }
}

impl TopicConfig {
    pub fn with_partitions(partitions: u32) -> TopicConfig {
        TopicConfig {
            partitions,
            ..TopicConfig::default()
        }
    }
}

/// An acknowledged append.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AppendOutcome {
    pub base_offset: i64,
    pub last_offset: i64,
    pub guarantee: Guarantee,
    /// The batch key was seen before: these are the first append's offsets
    /// and nothing new was written.
    pub deduplicated: bool,
}

/// A batch key a partition remembers, and what it stood for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RememberedKey {
    pub key: String,
    pub base_offset: i64,
    pub last_offset: i64,
    pub append_ms: i64,
    /// What the key stood for when it was appended, if the producer said.
    pub fingerprint: Option<Fingerprint>,
}

/// Where a read starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start {
    /// At this offset (the first batch returned may begin before it: skip
    /// records below it).
    Offset(i64),
    /// At the first record appended at or after this time (ms since the epoch).
    Time(i64),
}

/// The offsets a partition holds: `start..end`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OffsetRange {
    pub start: i64,
    pub end: i64,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BusError {
    #[error("unknown topic {0:?}")]
    UnknownTopic(String),
    #[error("partition {partition} is out of range: topic {topic:?} has {partitions}")]
    PartitionOutOfRange {
        topic: String,
        partition: u32,
        partitions: u32,
    },
    #[error("offset {requested} is out of range {start}..{end}")]
    OffsetOutOfRange {
        requested: i64,
        start: i64,
        end: i64,
    },
    /// The request itself is wrong (a bad batch, a limit, a name): retrying
    /// it unchanged cannot succeed.
    #[error("{0}")]
    Invalid(String),
    /// The batch key was used before for a batch with another fingerprint.
    #[error("{0}")]
    Conflict(String),
    /// No room now (quota or disk full); the same request may succeed later.
    #[error("{0}")]
    Full(String),
    /// The partition takes no writes until an operator acts.
    #[error("{0}")]
    Stopped(String),
    #[error("{0}")]
    Corruption(String),
    #[error("{0}")]
    Unavailable(String),
}

impl BusError {
    /// Whether the same request may succeed if sent again later.
    pub fn is_retryable(&self) -> bool {
        matches!(self, BusError::Full(_) | BusError::Unavailable(_))
    }
}

#[async_trait]
pub trait Bus: Send + Sync + 'static {
    /// Creates the topic if it does not exist; an existing topic with another
    /// configuration is an error.
    async fn ensure_topic(&self, topic: &str, config: TopicConfig) -> Result<(), BusError>;

    async fn partitions(&self, topic: &str) -> Result<u32, BusError>;

    /// Appends one batch to one partition. Returns once the batch has the
    /// topic's guarantee (named in the outcome).
    async fn append(
        &self,
        topic: &str,
        partition: u32,
        batch: Batch,
    ) -> Result<AppendOutcome, BusError>;

    /// Whole batches from `start`, at most about `max_bytes` (at least one
    /// batch). Empty at the end: then [`Bus::wait`].
    async fn read(
        &self,
        topic: &str,
        partition: u32,
        start: Start,
        max_bytes: usize,
    ) -> Result<ReadBatches, BusError>;

    async fn offsets(&self, topic: &str, partition: u32) -> Result<OffsetRange, BusError>;

    /// Waits until a record at or after `offset` can be read, or `timeout`
    /// passes; returns whether one can.
    async fn wait(
        &self,
        topic: &str,
        partition: u32,
        offset: i64,
        timeout: Duration,
    ) -> Result<bool, BusError>;

    /// Commits a group's positions (the next offset to read) atomically.
    async fn commit(&self, group: &str, offsets: &[(&str, u32, i64)]) -> Result<(), BusError>;

    async fn committed(
        &self,
        group: &str,
        topic: &str,
        partition: u32,
    ) -> Result<Option<i64>, BusError>;

    /// Marks `group` as required for `topic`: data it has not committed is
    /// kept whatever the retention says.
    async fn require_group(&self, group: &str, topic: &str) -> Result<(), BusError>;

    /// What keeps the bus from taking writes right now (a stopped partition
    /// and why), for readiness; empty when all is well.
    fn problems(&self) -> Vec<String>;

    /// The batch keys the partition remembers, oldest first; empty on a bus
    /// that keeps none.
    async fn batch_keys(
        &self,
        _topic: &str,
        _partition: u32,
    ) -> Result<Vec<RememberedKey>, BusError> {
        Ok(Vec::new())
    }
}
