//! The one interface through which nublar produces and consumes.
//!
//! Everything after the log (the gateway, the processors, the lake sink) holds
//! an `Arc<dyn Bus>` and never names the log behind it. The embedded log is
//! the first implementation ([`EmbeddedBus`]); a Kafka one fits the same trait.
//!
//! The currency both ways is the Kafka RecordBatch v2 batch ([`Batch`] in,
//! [`ReadBatches`] out): what the embedded log stores verbatim and what a
//! Kafka broker sends and takes, so neither side re-encodes records.
//!
//! Batch keys: a batch built with [`BatchBuilder::batch_key`] carries its key
//! as a header of its first record. The embedded log deduplicates on it (a
//! retried batch gets its first offsets back, `deduplicated` set); on Kafka
//! the header travels with the batch and duplicates are recognised downstream.

mod stalls;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
pub use nublar_batch::limits::BATCH_KEY_BYTES_MAX;
/// The most a batch's records may take before compression: what every reader
/// decompresses at most, and so what every producer must stay within.
pub use nublar_batch::limits::DECOMPRESSED_BYTES_MAX as BATCH_RECORDS_BYTES_MAX;
pub use nublar_batch::{
    Batch, BatchBuilder, BatchError, BatchView, Compression, Fingerprint, ReadBatches, Record,
};
use nublar_log::{AppendError, Log, LogError, ReadError};
pub use nublar_log::{AppendOutcome, Durability, Guarantee, KeyEntry, TopicConfig};

pub use stalls::{Stall, Stalls, Unreadable};

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

    /// The batch keys the partition remembers (key, offsets, append time,
    /// fingerprint), oldest first; empty on a bus that keeps none.
    async fn batch_keys(
        &self,
        _topic: &str,
        _partition: u32,
    ) -> Result<Vec<(String, KeyEntry)>, BusError> {
        Ok(Vec::new())
    }
}

/// The embedded log as a bus. Blocking log calls run on tokio's blocking
/// pool, so an `fsync` wait never stalls the async workers.
#[derive(Clone)]
pub struct EmbeddedBus {
    log: Log,
}

impl EmbeddedBus {
    pub fn new(log: Log) -> EmbeddedBus {
        EmbeddedBus { log }
    }

    pub fn log(&self) -> &Log {
        &self.log
    }

    pub fn into_shared(self) -> Arc<dyn Bus> {
        Arc::new(self)
    }

    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Log) -> Result<T, BusError> + Send + 'static,
    ) -> Result<T, BusError> {
        let log = self.log.clone();
        tokio::task::spawn_blocking(move || work(&log))
            .await
            .map_err(|error| BusError::Unavailable(format!("log task failed: {error}")))?
    }
}

#[async_trait]
impl Bus for EmbeddedBus {
    async fn ensure_topic(&self, topic: &str, config: TopicConfig) -> Result<(), BusError> {
        let topic = topic.to_owned();
        self.blocking(move |log| log.create_topic(&topic, config).map_err(from_log_error))
            .await
    }

    async fn partitions(&self, topic: &str) -> Result<u32, BusError> {
        self.log
            .topic_config(topic)
            .map(|config| config.partitions)
            .ok_or_else(|| BusError::UnknownTopic(topic.to_owned()))
    }

    async fn append(
        &self,
        topic: &str,
        partition: u32,
        batch: Batch,
    ) -> Result<AppendOutcome, BusError> {
        let topic = topic.to_owned();
        self.blocking(move |log| {
            log.append(&topic, partition, batch)
                .map_err(from_append_error)
        })
        .await
    }

    async fn read(
        &self,
        topic: &str,
        partition: u32,
        start: Start,
        max_bytes: usize,
    ) -> Result<ReadBatches, BusError> {
        let topic = topic.to_owned();
        self.blocking(move |log| {
            let offset = match start {
                Start::Offset(offset) => offset,
                Start::Time(timestamp_ms) => log
                    .offset_for_time(&topic, partition, timestamp_ms)
                    .map_err(from_read_error)?,
            };
            log.read(&topic, partition, offset, max_bytes)
                .map_err(from_read_error)
        })
        .await
    }

    async fn offsets(&self, topic: &str, partition: u32) -> Result<OffsetRange, BusError> {
        let start = self
            .log
            .start_offset(topic, partition)
            .map_err(from_read_error)?;
        let end = self
            .log
            .end_offset(topic, partition)
            .map_err(from_read_error)?;
        Ok(OffsetRange { start, end })
    }

    async fn wait(
        &self,
        topic: &str,
        partition: u32,
        offset: i64,
        timeout: Duration,
    ) -> Result<bool, BusError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            // Listen first, then check: an append between the two still wakes us.
            let listener = self.log.listen(topic, partition).map_err(from_read_error)?;
            if self
                .log
                .end_offset(topic, partition)
                .map_err(from_read_error)?
                > offset
            {
                return Ok(true);
            }
            if tokio::time::timeout_at(deadline, listener).await.is_err() {
                return Ok(self
                    .log
                    .end_offset(topic, partition)
                    .map_err(from_read_error)?
                    > offset);
            }
        }
    }

    async fn commit(&self, group: &str, offsets: &[(&str, u32, i64)]) -> Result<(), BusError> {
        let group = group.to_owned();
        let offsets: Vec<(String, u32, i64)> = offsets
            .iter()
            .map(|&(topic, partition, offset)| (topic.to_owned(), partition, offset))
            .collect();
        self.blocking(move |log| {
            let borrowed: Vec<(&str, u32, i64)> = offsets
                .iter()
                .map(|(topic, partition, offset)| (topic.as_str(), *partition, *offset))
                .collect();
            log.commit(&group, &borrowed).map_err(from_log_error)
        })
        .await
    }

    async fn committed(
        &self,
        group: &str,
        topic: &str,
        partition: u32,
    ) -> Result<Option<i64>, BusError> {
        Ok(self.log.committed(group, topic, partition))
    }

    fn problems(&self) -> Vec<String> {
        self.log
            .stopped_partitions()
            .into_iter()
            .map(|(topic, partition, reason)| format!("{topic}/{partition} stopped: {reason}"))
            .collect()
    }

    async fn batch_keys(
        &self,
        topic: &str,
        partition: u32,
    ) -> Result<Vec<(String, KeyEntry)>, BusError> {
        let topic = topic.to_owned();
        self.blocking(move |log| log.batch_keys(&topic, partition).map_err(from_read_error))
            .await
    }

    async fn require_group(&self, group: &str, topic: &str) -> Result<(), BusError> {
        let (group, topic) = (group.to_owned(), topic.to_owned());
        self.blocking(move |log| {
            log.set_required(&group, &topic, true)
                .map_err(from_log_error)
        })
        .await
    }
}

fn from_append_error(error: AppendError) -> BusError {
    match error {
        AppendError::UnknownTopic(topic) => BusError::UnknownTopic(topic),
        AppendError::PartitionOutOfRange {
            topic,
            partition,
            partitions,
        } => BusError::PartitionOutOfRange {
            topic,
            partition,
            partitions,
        },
        AppendError::QuotaExceeded { .. } | AppendError::DiskFull(_) => {
            BusError::Full(error.to_string())
        }
        AppendError::PartitionStopped { .. } | AppendError::ReadOnly | AppendError::Closed => {
            BusError::Stopped(error.to_string())
        }
        AppendError::Io(_) => BusError::Unavailable(error.to_string()),
        AppendError::BatchKeyReused { .. } => BusError::Conflict(error.to_string()),
        AppendError::InvalidBatch(_)
        | AppendError::BatchTooLarge { .. }
        | AppendError::RecordTooLarge { .. }
        | AppendError::RecordsTooLarge { .. } => BusError::Invalid(error.to_string()),
    }
}

fn from_read_error(error: ReadError) -> BusError {
    match error {
        ReadError::UnknownTopic(topic) => BusError::UnknownTopic(topic),
        ReadError::PartitionOutOfRange {
            topic,
            partition,
            partitions,
        } => BusError::PartitionOutOfRange {
            topic,
            partition,
            partitions,
        },
        ReadError::OffsetOutOfRange {
            requested,
            start,
            end,
        } => BusError::OffsetOutOfRange {
            requested,
            start,
            end,
        },
        ReadError::Corruption { .. } => BusError::Corruption(error.to_string()),
        ReadError::Io(_) => BusError::Unavailable(error.to_string()),
    }
}

fn from_log_error(error: LogError) -> BusError {
    match error {
        LogError::UnknownTopic(topic) => BusError::UnknownTopic(topic),
        LogError::PartitionOutOfRange {
            topic,
            partition,
            partitions,
        } => BusError::PartitionOutOfRange {
            topic,
            partition,
            partitions,
        },
        LogError::Io { .. } => BusError::Unavailable(error.to_string()),
        LogError::CorruptMetadata { .. } => BusError::Corruption(error.to_string()),
        LogError::ReadOnly => BusError::Stopped(error.to_string()),
        LogError::Locked(_)
        | LogError::InvalidName { .. }
        | LogError::InvalidConfig(_)
        | LogError::TopicConflict { .. }
        | LogError::OffsetBeyondEnd { .. } => BusError::Invalid(error.to_string()),
    }
}
