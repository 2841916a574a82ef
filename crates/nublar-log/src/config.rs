//! Topic configuration, durability policies, errors and the clock.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::batch::BatchError;
use crate::limits;

/// When an append is acknowledged, and what readers see.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Durability {
    /// An append returns only after its bytes are on stable storage
    /// (`fdatasync`); concurrent appenders share one sync (group commit).
    /// Readers see durable records only.
    Fsync,
    /// An append returns once written to the page cache; a background thread
    /// syncs every `ms` milliseconds. Readers see records as soon as they are
    /// written, and a machine crash may lose the last `ms` of them.
    Interval { ms: u64 },
    /// Never synced except when a segment rolls and at a clean close. Readers
    /// see records as soon as they are written.
    None,
}

impl fmt::Display for Durability {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Durability::Fsync => write!(formatter, "fsync"),
            Durability::Interval { ms } => write!(formatter, "interval:{ms}"),
            Durability::None => write!(formatter, "none"),
        }
    }
}

impl FromStr for Durability {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "fsync" => Ok(Durability::Fsync),
            "none" => Ok(Durability::None),
            _ => match text.strip_prefix("interval:").map(str::parse::<u64>) {
                Some(Ok(ms)) if ms > 0 => Ok(Durability::Interval { ms }),
                _ => Err(format!(
                    "unknown durability {text:?}: expected fsync, interval:<ms> (ms > 0) or none"
                )),
            },
        }
    }
}

impl Serialize for Durability {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Durability {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// What the append got: the guarantee is part of the answer, so a caller can
/// never mistake a written record for a durable one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Guarantee {
    /// On stable storage.
    Synced,
    /// In the page cache; survives a crash of the process, not of the machine.
    Written,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TopicConfig {
    pub partitions: u32,
    pub durability: Durability,
    /// A segment rolls when the next batch would take it past this size.
    pub segment_bytes: u64,
    /// A segment rolls at the first append after it is this old.
    pub segment_ms: i64,
    /// Sealed segments whose newest record is older than this are deleted.
    pub retention_ms: Option<i64>,
    /// Sealed segments are deleted, oldest first, while a partition is larger.
    pub retention_bytes: Option<u64>,
    pub batch_bytes_max: usize,
    pub record_bytes_max: usize,
    /// Batch keys remembered per partition, and for how long.
    pub dedup_keys_max: usize,
    pub dedup_window_ms: i64,
    /// Under `fsync`: keep the active segment zero-filled (and synced) a few
    /// MiB ahead of its end, so that each append's `fdatasync` has no file
    /// size to journal. Lower latency and higher throughput for small
    /// batches; but every byte is written twice, which costs throughput when
    /// the disk's bandwidth is the limit (large batches). See BENCHMARKS.md.
    pub zero_fill: bool,
}

impl Default for TopicConfig {
    fn default() -> TopicConfig {
        TopicConfig {
            partitions: 1,
            durability: Durability::Fsync,
            segment_bytes: limits::SEGMENT_BYTES_DEFAULT,
            segment_ms: limits::SEGMENT_MS_DEFAULT,
            retention_ms: Some(7 * 24 * 60 * 60 * 1000),
            retention_bytes: None,
            batch_bytes_max: limits::BATCH_BYTES_DEFAULT,
            record_bytes_max: limits::RECORD_BYTES_DEFAULT,
            dedup_keys_max: limits::DEDUP_KEYS_DEFAULT,
            dedup_window_ms: limits::DEDUP_WINDOW_MS_DEFAULT,
            zero_fill: false,
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

    pub fn validate(&self) -> Result<(), String> {
        if self.partitions == 0 || self.partitions > limits::PARTITIONS_MAX {
            return Err(format!("partitions must be 1..={}", limits::PARTITIONS_MAX));
        }
        if !(limits::SEGMENT_BYTES_MIN..=limits::SEGMENT_BYTES_MAX).contains(&self.segment_bytes) {
            return Err(format!(
                "segment_bytes must be {}..={}",
                limits::SEGMENT_BYTES_MIN,
                limits::SEGMENT_BYTES_MAX
            ));
        }
        if self.segment_ms <= 0 {
            return Err("segment_ms must be positive".into());
        }
        if self.batch_bytes_max == 0 || self.batch_bytes_max > limits::BATCH_BYTES_MAX {
            return Err(format!(
                "batch_bytes_max must be 1..={}",
                limits::BATCH_BYTES_MAX
            ));
        }
        if self.record_bytes_max == 0 || self.record_bytes_max > self.batch_bytes_max {
            return Err("record_bytes_max must be 1..=batch_bytes_max".into());
        }
        if self.retention_ms.is_some_and(|retention| retention <= 0) {
            return Err("retention_ms must be positive (leave it out to keep data forever)".into());
        }
        if self.retention_bytes == Some(0) {
            return Err("retention_bytes must be positive (leave it out for no size limit)".into());
        }
        if self.dedup_window_ms < 0 {
            return Err("dedup_window_ms must not be negative".into());
        }
        Ok(())
    }
}

/// Milliseconds since the Unix epoch. The log reads time only through this, so
/// that tests can drive segment ages, retention and key windows exactly.
pub trait Clock: Send + Sync + 'static {
    fn now_ms(&self) -> i64;
}

#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|elapsed| elapsed.as_millis() as i64)
            .unwrap_or(0)
    }
}

/// A clock that moves only when told to.
#[derive(Debug, Default)]
pub struct ManualClock(std::sync::atomic::AtomicI64);

impl ManualClock {
    pub fn new(start_ms: i64) -> ManualClock {
        ManualClock(std::sync::atomic::AtomicI64::new(start_ms))
    }

    pub fn advance(&self, ms: i64) {
        self.0.fetch_add(ms, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl<C: Clock> Clock for std::sync::Arc<C> {
    fn now_ms(&self) -> i64 {
        (**self).now_ms()
    }
}

/// Why an append was refused. Every variant means nothing was appended.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AppendError {
    #[error("unknown topic {0:?}")]
    UnknownTopic(String),
    #[error("partition {partition} is out of range: topic {topic:?} has {partitions}")]
    PartitionOutOfRange {
        topic: String,
        partition: u32,
        partitions: u32,
    },
    #[error("invalid batch: {0}")]
    InvalidBatch(#[from] BatchError),
    #[error("batch of {bytes} bytes is over the topic's limit of {limit} bytes")]
    BatchTooLarge { bytes: usize, limit: usize },
    #[error("a record of {bytes} bytes is over the topic's limit of {limit} bytes")]
    RecordTooLarge { bytes: usize, limit: usize },
    #[error(
        "the batch's records take {bytes} bytes before compression, over the {limit} bytes \
         a reader accepts"
    )]
    RecordsTooLarge { bytes: usize, limit: usize },
    #[error("batch key {key:?} was appended before with another fingerprint")]
    BatchKeyReused { key: String },
    #[error("the log's disk quota is reached ({used} of {quota} bytes used)")]
    QuotaExceeded { used: u64, quota: u64 },
    #[error("the disk is full: {0}")]
    DiskFull(String),
    #[error("partition {topic}/{partition} takes no writes: {reason}")]
    PartitionStopped {
        topic: String,
        partition: u32,
        reason: String,
    },
    #[error("the log is open read-only")]
    ReadOnly,
    #[error("the log was closed")]
    Closed,
    #[error("I/O error, nothing appended: {0}")]
    Io(String),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    #[error("unknown topic {0:?}")]
    UnknownTopic(String),
    #[error("partition {partition} is out of range: topic {topic:?} has {partitions}")]
    PartitionOutOfRange {
        topic: String,
        partition: u32,
        partitions: u32,
    },
    #[error("offset {requested} is out of range: the partition holds {start}..{end}")]
    OffsetOutOfRange {
        requested: i64,
        start: i64,
        end: i64,
    },
    #[error("corrupt data in {topic}/{partition} at offset {offset}: {detail}")]
    Corruption {
        topic: String,
        partition: u32,
        offset: i64,
        detail: String,
    },
    #[error("I/O error: {0}")]
    Io(String),
}

/// Errors of opening the log and of administrative operations.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("I/O error on {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Locked(String),
    #[error("invalid name {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },
    #[error("invalid topic configuration: {0}")]
    InvalidConfig(String),
    #[error("topic {name:?} exists with a different configuration")]
    TopicConflict { name: String },
    #[error("unknown topic {0:?}")]
    UnknownTopic(String),
    #[error("partition {partition} is out of range: topic {topic:?} has {partitions}")]
    PartitionOutOfRange {
        topic: String,
        partition: u32,
        partitions: u32,
    },
    #[error("offset {offset} is beyond the end {end} of {topic}/{partition}")]
    OffsetBeyondEnd {
        topic: String,
        partition: u32,
        offset: i64,
        end: i64,
    },
    #[error("corrupt metadata in {path}: {detail}")]
    CorruptMetadata { path: String, detail: String },
    #[error("the log is open read-only")]
    ReadOnly,
}

impl LogError {
    pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> LogError {
        LogError::Io {
            path: path.display().to_string(),
            source,
        }
    }
}
