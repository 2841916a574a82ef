//! A bus in memory: the contract with nothing behind it, for tests and the
//! simulation. Nothing survives the process, and a bound on the bytes it
//! holds keeps it from growing without end.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use nublar_batch::{Batch, ReadBatches};
use tokio::sync::watch;

use crate::{AppendOutcome, Bus, BusError, Guarantee, OffsetRange, Start, TopicConfig};

/// What a [`MemoryBus`] holds at most unless told otherwise.
pub const MEMORY_BUS_BYTES_DEFAULT: usize = 64 << 20;

/// Partitions a topic may have: as many as the embedded log allows.
const PARTITIONS_MAX: u32 = 1024;

#[derive(Clone)]
pub struct MemoryBus {
    state: Arc<Mutex<State>>,
}

struct State {
    bytes_max: usize,
    bytes: usize,
    topics: HashMap<String, Topic>,
    /// (group, topic, partition) → the next offset to read.
    committed: HashMap<(String, String, u32), i64>,
    required: HashSet<(String, String)>,
}

struct Topic {
    config: TopicConfig,
    partitions: Vec<Partition>,
}

struct Partition {
    /// Stamped batches by base offset.
    batches: BTreeMap<i64, Stored>,
    bytes: usize,
    start: i64,
    /// The end offset, which waiting readers watch.
    end: watch::Sender<i64>,
}

struct Stored {
    bytes: Vec<u8>,
    append_ms: i64,
    next_offset: i64,
}

impl Default for MemoryBus {
    fn default() -> MemoryBus {
        MemoryBus::with_bytes_max(MEMORY_BUS_BYTES_DEFAULT)
    }
}

impl MemoryBus {
    pub fn new() -> MemoryBus {
        MemoryBus::default()
    }

    /// A bus that refuses appends (as full) once it holds `bytes_max` bytes
    /// of batches, until retention frees some.
    pub fn with_bytes_max(bytes_max: usize) -> MemoryBus {
        MemoryBus {
            state: Arc::new(Mutex::new(State {
                bytes_max,
                bytes: 0,
                topics: HashMap::new(),
                committed: HashMap::new(),
                required: HashSet::new(),
            })),
        }
    }

    pub fn into_shared(self) -> Arc<dyn Bus> {
        Arc::new(self)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere while holding the lock leaves whole values behind:
        // every change below is made after its checks.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl State {
    /// The first offset some group required on the topic has not read.
    fn keep_from(&self, topic: &str, partition: u32) -> i64 {
        self.required
            .iter()
            .filter(|(_, required)| required == topic)
            .map(|(group, _)| {
                let key = (group.clone(), topic.to_owned(), partition);
                self.committed.get(&key).copied().unwrap_or(0)
            })
            .min()
            .unwrap_or(i64::MAX)
    }

    fn partition(&mut self, topic: &str, partition: u32) -> Result<&mut Partition, BusError> {
        let found = self
            .topics
            .get_mut(topic)
            .ok_or_else(|| BusError::UnknownTopic(topic.to_owned()))?;
        let partitions = found.config.partitions;
        found
            .partitions
            .get_mut(partition as usize)
            .ok_or_else(|| BusError::PartitionOutOfRange {
                topic: topic.to_owned(),
                partition,
                partitions,
            })
    }
}

impl Partition {
    fn end(&self) -> i64 {
        *self.end.borrow()
    }

    fn range(&self) -> OffsetRange {
        OffsetRange {
            start: self.start,
            end: self.end(),
        }
    }

    /// Drops the oldest batches while the partition is past its retention,
    /// but none a required group has yet to read (from `keep_from` on).
    fn retain(&mut self, config: &TopicConfig, now_ms: i64, keep_from: i64) -> usize {
        let mut freed = 0;
        while self.batches.len() > 1 {
            let (&base, oldest) = self.batches.iter().next().expect("not empty");
            if oldest.next_offset > keep_from {
                break;
            }
            let too_old = config
                .retention_ms
                .is_some_and(|retention| now_ms - oldest.append_ms > retention);
            let too_big = config
                .retention_bytes
                .is_some_and(|retention| self.bytes as u64 > retention);
            if !(too_old || too_big) {
                break;
            }
            let length = oldest.bytes.len();
            self.batches.remove(&base);
            self.bytes -= length;
            freed += length;
            self.start = self
                .batches
                .keys()
                .next()
                .copied()
                .unwrap_or_else(|| self.end());
        }
        freed
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as i64)
}

#[async_trait]
impl Bus for MemoryBus {
    async fn ensure_topic(&self, topic: &str, config: TopicConfig) -> Result<(), BusError> {
        if topic.is_empty() {
            return Err(BusError::Invalid("a topic needs a name".to_owned()));
        }
        if config.partitions == 0 || config.partitions > PARTITIONS_MAX {
            return Err(BusError::Invalid(format!(
                "partitions must be 1..={PARTITIONS_MAX}"
            )));
        }
        let mut state = self.lock();
        if let Some(existing) = state.topics.get(topic) {
            return if existing.config == config {
                Ok(())
            } else {
                Err(BusError::Invalid(format!(
                    "topic {topic:?} exists with another configuration"
                )))
            };
        }
        let partitions = (0..config.partitions)
            .map(|_| Partition {
                batches: BTreeMap::new(),
                bytes: 0,
                start: 0,
                end: watch::channel(0).0,
            })
            .collect();
        state
            .topics
            .insert(topic.to_owned(), Topic { config, partitions });
        Ok(())
    }

    async fn partitions(&self, topic: &str) -> Result<u32, BusError> {
        self.lock()
            .topics
            .get(topic)
            .map(|topic| topic.config.partitions)
            .ok_or_else(|| BusError::UnknownTopic(topic.to_owned()))
    }

    async fn append(
        &self,
        topic: &str,
        partition: u32,
        mut batch: Batch,
    ) -> Result<AppendOutcome, BusError> {
        let now = now_ms();
        let mut guard = self.lock();
        let state = &mut *guard;
        let config = state
            .topics
            .get(topic)
            .map(|topic| topic.config.clone())
            .ok_or_else(|| BusError::UnknownTopic(topic.to_owned()))?;
        let length = batch.len_bytes();
        let (bytes, bytes_max) = (state.bytes, state.bytes_max);
        let keep_from = state.keep_from(topic, partition);
        let target = state.partition(topic, partition)?;
        let freed = target.retain(&config, now, keep_from);
        if bytes - freed + length > bytes_max {
            state.bytes -= freed;
            return Err(BusError::Full(format!(
                "the in-memory bus holds {} of its {bytes_max} bytes",
                bytes - freed
            )));
        }
        let base_offset = target.end();
        let last_offset = base_offset + i64::from(batch.record_count()) - 1;
        batch.stamp(base_offset, now);
        target.batches.insert(
            base_offset,
            Stored {
                bytes: batch.into_bytes(),
                append_ms: now,
                next_offset: last_offset + 1,
            },
        );
        target.bytes += length;
        target.end.send_replace(last_offset + 1);
        state.bytes = state.bytes - freed + length;
        Ok(AppendOutcome {
            base_offset,
            last_offset,
            guarantee: Guarantee::Memory,
            deduplicated: false,
        })
    }

    async fn read(
        &self,
        topic: &str,
        partition: u32,
        start: Start,
        max_bytes: usize,
    ) -> Result<ReadBatches, BusError> {
        let mut state = self.lock();
        let source = state.partition(topic, partition)?;
        let range = source.range();
        let offset = match start {
            Start::Offset(offset) => offset,
            Start::Time(timestamp_ms) => source
                .batches
                .iter()
                .find(|(_, stored)| stored.append_ms >= timestamp_ms)
                .map_or(range.end, |(&base, _)| base),
        };
        if offset < range.start || offset > range.end {
            return Err(BusError::OffsetOutOfRange {
                requested: offset,
                start: range.start,
                end: range.end,
            });
        }
        // The batch holding `offset` is the last one based at or before it, unless that batch
        // ends before it (`offset` is the end): then reading starts at the next batch, if any.
        let first = match source.batches.range(..=offset).next_back() {
            Some((&base, stored)) if stored.next_offset > offset => base,
            _ => offset,
        };
        let mut out = Vec::new();
        for stored in source.batches.range(first..).map(|(_, stored)| stored) {
            if !out.is_empty() && out.len() + stored.bytes.len() > max_bytes {
                break;
            }
            out.extend_from_slice(&stored.bytes);
        }
        Ok(ReadBatches::from_bytes(out))
    }

    async fn offsets(&self, topic: &str, partition: u32) -> Result<OffsetRange, BusError> {
        Ok(self.lock().partition(topic, partition)?.range())
    }

    async fn wait(
        &self,
        topic: &str,
        partition: u32,
        offset: i64,
        timeout: Duration,
    ) -> Result<bool, BusError> {
        let mut end = self.lock().partition(topic, partition)?.end.subscribe();
        let arrived = tokio::time::timeout(timeout, end.wait_for(|&end| end > offset)).await;
        Ok(matches!(arrived, Ok(Ok(_))))
    }

    async fn commit(&self, group: &str, offsets: &[(&str, u32, i64)]) -> Result<(), BusError> {
        let mut state = self.lock();
        // All checked before any is written: a commit is all or nothing.
        for &(topic, partition, offset) in offsets {
            let range = state.partition(topic, partition)?.range();
            if offset < 0 || offset > range.end {
                return Err(BusError::Invalid(format!(
                    "offset {offset} is beyond the end {} of {topic}/{partition}",
                    range.end
                )));
            }
        }
        for &(topic, partition, offset) in offsets {
            state
                .committed
                .insert((group.to_owned(), topic.to_owned(), partition), offset);
        }
        Ok(())
    }

    async fn committed(
        &self,
        group: &str,
        topic: &str,
        partition: u32,
    ) -> Result<Option<i64>, BusError> {
        let key = (group.to_owned(), topic.to_owned(), partition);
        Ok(self.lock().committed.get(&key).copied())
    }

    async fn require_group(&self, group: &str, topic: &str) -> Result<(), BusError> {
        // Retention here is only by the topic's bounds, so a required group
        // is recorded and nothing else changes.
        let mut state = self.lock();
        if !state.topics.contains_key(topic) {
            return Err(BusError::UnknownTopic(topic.to_owned()));
        }
        state.required.insert((group.to_owned(), topic.to_owned()));
        Ok(())
    }

    fn problems(&self) -> Vec<String> {
        Vec::new()
    }
}
