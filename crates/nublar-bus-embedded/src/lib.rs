//! The bus over the embedded commit log: what a single node runs on.
//!
//! Blocking log calls run on tokio's blocking pool, so an `fsync` wait never
//! stalls the async workers. The bus's own types are translated here, and
//! only here: the log knows nothing of the bus, the bus nothing of the log.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use nublar_bus::{
    AppendOutcome, Batch, Bus, BusError, Durability, Guarantee, OffsetRange, ReadBatches,
    RememberedKey, Start, TopicConfig,
};
pub use nublar_log;
use nublar_log::{AppendError, Log, LogError, OpenOptions, ReadError};

/// The embedded log as a bus.
#[derive(Clone)]
pub struct EmbeddedBus {
    log: Log,
}

impl EmbeddedBus {
    pub fn new(log: Log) -> EmbeddedBus {
        EmbeddedBus { log }
    }

    /// Opens (and recovers) the log in `dir` with the default options.
    pub fn open(dir: impl AsRef<Path>) -> Result<EmbeddedBus, LogError> {
        EmbeddedBus::open_with(dir, OpenOptions::default())
    }

    pub fn open_with(dir: impl AsRef<Path>, options: OpenOptions) -> Result<EmbeddedBus, LogError> {
        Ok(EmbeddedBus::new(Log::open_with(dir.as_ref(), options)?))
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
        // What the bus names must match an existing topic; the log's own
        // settings (segment sizes, key windows) stay as its creator chose.
        if let Some(existing) = self.log.topic_config(topic) {
            return if from_log_config(&existing) == config {
                Ok(())
            } else {
                Err(BusError::Invalid(format!(
                    "topic {topic:?} exists with another configuration"
                )))
            };
        }
        let topic = topic.to_owned();
        self.blocking(move |log| {
            log.create_topic(&topic, to_log_config(&config))
                .map_err(from_log_error)
        })
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
                .map(|outcome| AppendOutcome {
                    base_offset: outcome.base_offset,
                    last_offset: outcome.last_offset,
                    guarantee: match outcome.guarantee {
                        nublar_log::Guarantee::Synced => Guarantee::Synced,
                        nublar_log::Guarantee::Written => Guarantee::Written,
                    },
                    deduplicated: outcome.deduplicated,
                })
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
    ) -> Result<Vec<RememberedKey>, BusError> {
        let topic = topic.to_owned();
        let keys = self
            .blocking(move |log| log.batch_keys(&topic, partition).map_err(from_read_error))
            .await?;
        Ok(keys
            .into_iter()
            .map(|(key, entry)| RememberedKey {
                key,
                base_offset: entry.base_offset,
                last_offset: entry.last_offset,
                append_ms: entry.append_ms,
                fingerprint: entry.fingerprint,
            })
            .collect())
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

/// A bus topic as the log keeps it: the log's defaults for what the bus does
/// not name.
pub fn to_log_config(config: &TopicConfig) -> nublar_log::TopicConfig {
    nublar_log::TopicConfig {
        partitions: config.partitions,
        durability: match config.durability {
            Durability::Fsync => nublar_log::Durability::Fsync,
            Durability::Interval { ms } => nublar_log::Durability::Interval { ms },
            Durability::None => nublar_log::Durability::None,
        },
        retention_ms: config.retention_ms,
        retention_bytes: config.retention_bytes,
        ..nublar_log::TopicConfig::default()
    }
}

/// What the bus sees of a log topic.
pub fn from_log_config(config: &nublar_log::TopicConfig) -> TopicConfig {
    TopicConfig {
        partitions: config.partitions,
        durability: match config.durability {
            nublar_log::Durability::Fsync => Durability::Fsync,
            nublar_log::Durability::Interval { ms } => Durability::Interval { ms },
            nublar_log::Durability::None => Durability::None,
        },
        retention_ms: config.retention_ms,
        retention_bytes: config.retention_bytes,
    }
}
