//! The log as a whole: one data directory, its topics, groups and the
//! background thread that syncs `interval` topics and applies retention.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock, Weak};
use std::time::Duration;

use event_listener::EventListener;

use crate::batch::Batch;
use crate::batch::ReadBatches;
use crate::config::{
    AppendError, Clock, Durability, LogError, ReadError, SystemClock, TopicConfig,
};
use crate::dedup::KeyEntry;
use crate::groups::{GroupState, Groups};
use crate::limits::{GROUP_NAME_BYTES_MAX, RETENTION_CHECK_MS, TOPIC_NAME_BYTES_MAX};
use crate::partition::{AppendOutcome, Partition, PartitionContext, RetentionOutcome};
use crate::storage::{FsStorage, OpenMode, Storage};

const LOCK_FILE: &str = "LOCK";
const TOPICS_DIR: &str = "topics";
const GROUPS_DIR: &str = "groups";
const TOPIC_META: &str = "topic.json";
const TOPIC_META_TEMPORARY: &str = "topic.json.tmp";

pub struct OpenOptions {
    pub storage: Arc<dyn Storage>,
    pub clock: Arc<dyn Clock>,
    /// Appends are refused once the log's segments take this many bytes.
    pub quota_bytes: Option<u64>,
    /// Open without changing anything on disk (no truncation, no appends),
    /// for operators looking inside a directory no node owns.
    pub read_only: bool,
    /// Run the thread that syncs `interval` topics and applies retention.
    pub background: bool,
}

impl Default for OpenOptions {
    fn default() -> OpenOptions {
        OpenOptions {
            storage: Arc::new(FsStorage),
            clock: Arc::new(SystemClock),
            quota_bytes: None,
            read_only: false,
            background: true,
        }
    }
}

/// A snapshot of one partition for `describe` and metrics.
#[derive(Clone, Debug)]
pub struct PartitionInfo {
    pub topic: String,
    pub partition: u32,
    pub start_offset: i64,
    pub end_offset: i64,
    pub size_bytes: u64,
    pub segments: usize,
    pub remembered_keys: usize,
    pub stopped: Option<String>,
    pub appends_total: u64,
    pub appended_records_total: u64,
    pub appended_bytes_total: u64,
    pub deduplicated_total: u64,
    pub syncs_total: u64,
    pub truncated_bytes_total: u64,
}

struct Topic {
    config: Arc<TopicConfig>,
    partitions: Vec<Arc<Partition>>,
}

struct Inner {
    dir: PathBuf,
    storage: Arc<dyn Storage>,
    clock: Arc<dyn Clock>,
    read_only: bool,
    quota_bytes: Option<u64>,
    used_bytes: Arc<AtomicU64>,
    topics: RwLock<BTreeMap<String, Arc<Topic>>>,
    groups: Groups,
    dropped_required_records_total: AtomicU64,
    /// Set by `close`: other clones of the log append no more.
    closed: std::sync::atomic::AtomicBool,
    background: Arc<BackgroundSignal>,
    _lock: Box<dyn std::any::Any + Send + Sync>,
}

/// Lives outside [`Inner`] so that the background thread can sleep on it
/// without keeping the log (and its directory lock) alive.
#[derive(Default)]
struct BackgroundSignal {
    state: Mutex<SignalState>,
    wake: Condvar,
}

#[derive(Default)]
struct SignalState {
    stop: bool,
    /// Set when something changed that the thread should look at now; read
    /// under the same lock as the wait, so no wake-up is lost.
    woken: bool,
}

impl BackgroundSignal {
    fn stop(&self) {
        self.state.lock().unwrap().stop = true;
        self.wake.notify_all();
    }

    fn wake(&self) {
        self.state.lock().unwrap().woken = true;
        self.wake.notify_all();
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.background.stop();
    }
}

/// The embedded commit log. Cheap to clone; all clones share one directory.
#[derive(Clone)]
pub struct Log {
    inner: Arc<Inner>,
    background: Arc<Mutex<Option<std::thread::JoinHandle<()>>>>,
}

impl Log {
    pub fn open(dir: impl AsRef<Path>) -> Result<Log, LogError> {
        Log::open_with(dir, OpenOptions::default())
    }

    pub fn open_with(dir: impl AsRef<Path>, options: OpenOptions) -> Result<Log, LogError> {
        let dir = dir.as_ref().to_path_buf();
        let storage = options.storage;
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |error| LogError::io(&path, error)
        };
        if options.read_only {
            if !storage.exists(&dir) {
                return Err(LogError::io(
                    &dir,
                    std::io::Error::new(std::io::ErrorKind::NotFound, "no log in this directory"),
                ));
            }
        } else {
            storage
                .create_dir_all(&dir.join(TOPICS_DIR))
                .map_err(io(&dir))?;
        }
        let lock_path = dir.join(LOCK_FILE);
        let lock = storage
            .lock(&lock_path, options.read_only)
            .map_err(|error| match error.kind() {
                std::io::ErrorKind::WouldBlock => LogError::Locked(format!(
                    "{error}: another nublar process owns {}; stop it or ask it instead",
                    dir.display()
                )),
                _ => LogError::io(&lock_path, error),
            })?;
        let groups = Groups::open(storage.clone(), dir.join(GROUPS_DIR), options.read_only)?;
        let inner = Arc::new(Inner {
            dir: dir.clone(),
            storage: storage.clone(),
            clock: options.clock,
            read_only: options.read_only,
            quota_bytes: options.quota_bytes,
            used_bytes: Arc::new(AtomicU64::new(0)),
            topics: RwLock::new(BTreeMap::new()),
            groups,
            dropped_required_records_total: AtomicU64::new(0),
            closed: std::sync::atomic::AtomicBool::new(false),
            background: Arc::default(),
            _lock: lock,
        });
        let topics_dir = dir.join(TOPICS_DIR);
        let names = if storage.exists(&topics_dir) {
            storage.list_dir(&topics_dir).map_err(io(&topics_dir))?
        } else {
            Vec::new()
        };
        for name in names {
            let meta_path = topics_dir.join(&name).join(TOPIC_META);
            let leftover = topics_dir.join(&name).join(TOPIC_META_TEMPORARY);
            if !options.read_only && storage.exists(&leftover) {
                let _ = storage.remove_file(&leftover);
            }
            if !storage.exists(&meta_path) {
                // A topic whose creation did not finish: its metadata is
                // written last, so nothing was ever appended to it.
                continue;
            }
            let bytes = storage.read_whole(&meta_path).map_err(io(&meta_path))?;
            let config: TopicConfig =
                serde_json::from_slice(&bytes).map_err(|error| LogError::CorruptMetadata {
                    path: meta_path.display().to_string(),
                    detail: error.to_string(),
                })?;
            config
                .validate()
                .map_err(|detail| LogError::CorruptMetadata {
                    path: meta_path.display().to_string(),
                    detail,
                })?;
            let topic = inner.open_topic(&name, config)?;
            inner.topics.write().unwrap().insert(name, topic);
        }
        let log = Log {
            inner,
            background: Arc::new(Mutex::new(None)),
        };
        if options.background && !options.read_only {
            let weak = Arc::downgrade(&log.inner);
            let signal = log.inner.background.clone();
            let handle = std::thread::Builder::new()
                .name("nublar-log-background".into())
                .spawn(move || background_loop(weak, signal))
                .map_err(io(&dir))?;
            *log.background.lock().unwrap() = Some(handle);
        }
        Ok(log)
    }

    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Creates a topic, or does nothing if it exists with the same configuration.
    pub fn create_topic(&self, name: &str, config: TopicConfig) -> Result<(), LogError> {
        if self.inner.read_only {
            return Err(LogError::ReadOnly);
        }
        validate_name(name, TOPIC_NAME_BYTES_MAX)?;
        config.validate().map_err(LogError::InvalidConfig)?;
        let mut topics = self.inner.topics.write().unwrap();
        if let Some(existing) = topics.get(name) {
            return if *existing.config == config {
                Ok(())
            } else {
                Err(LogError::TopicConflict {
                    name: name.to_owned(),
                })
            };
        }
        let storage = &self.inner.storage;
        let topics_dir = self.inner.dir.join(TOPICS_DIR);
        let topic_dir = topics_dir.join(name);
        let io = |error| LogError::io(&topic_dir, error);
        storage.create_dir_all(&topic_dir).map_err(io)?;
        let topic = self.inner.open_topic(name, config.clone())?;
        // The metadata goes last and atomically: a topic directory without it
        // is an interrupted creation and is ignored.
        let bytes = serde_json::to_vec_pretty(&config).expect("topic config serializes");
        let temporary = topic_dir.join(TOPIC_META_TEMPORARY);
        let file = storage.open(&temporary, OpenMode::Create).map_err(io)?;
        file.set_len(0).map_err(io)?;
        file.write_all_at(&bytes, 0)
            .and_then(|()| file.sync_data())
            .map_err(io)?;
        storage
            .rename(&temporary, &topic_dir.join(TOPIC_META))
            .map_err(io)?;
        storage.sync_dir(&topic_dir).map_err(io)?;
        storage.sync_dir(&topics_dir).map_err(io)?;
        topics.insert(name.to_owned(), topic);
        // The background thread learns of new `interval` partitions now.
        self.inner.background.wake();
        Ok(())
    }

    pub fn topics(&self) -> Vec<(String, TopicConfig)> {
        let topics = self.inner.topics.read().unwrap();
        topics
            .iter()
            .map(|(name, topic)| (name.clone(), (*topic.config).clone()))
            .collect()
    }

    pub fn topic_config(&self, name: &str) -> Option<TopicConfig> {
        self.inner
            .topics
            .read()
            .unwrap()
            .get(name)
            .map(|topic| (*topic.config).clone())
    }

    pub fn append(
        &self,
        topic: &str,
        partition: u32,
        batch: Batch,
    ) -> Result<AppendOutcome, AppendError> {
        if self.inner.read_only {
            return Err(AppendError::ReadOnly);
        }
        let partition = self
            .inner
            .partition(topic, partition)
            .map_err(|error| match error {
                Lookup::UnknownTopic => AppendError::UnknownTopic(topic.to_owned()),
                Lookup::OutOfRange(partitions) => AppendError::PartitionOutOfRange {
                    topic: topic.to_owned(),
                    partition,
                    partitions,
                },
            })?;
        let result = partition.append(batch);
        if matches!(result, Err(AppendError::QuotaExceeded { .. })) {
            // Retention may be able to make room now rather than at its next turn.
            self.inner.background.wake();
        }
        result
    }

    pub fn read(
        &self,
        topic: &str,
        partition: u32,
        offset: i64,
        max_bytes: usize,
    ) -> Result<ReadBatches, ReadError> {
        self.read_partition(topic, partition)?
            .read(offset, max_bytes)
    }

    pub fn offset_for_time(
        &self,
        topic: &str,
        partition: u32,
        timestamp_ms: i64,
    ) -> Result<i64, ReadError> {
        self.read_partition(topic, partition)?
            .offset_for_time(timestamp_ms)
    }

    pub fn start_offset(&self, topic: &str, partition: u32) -> Result<i64, ReadError> {
        Ok(self.read_partition(topic, partition)?.start_offset())
    }

    pub fn end_offset(&self, topic: &str, partition: u32) -> Result<i64, ReadError> {
        Ok(self.read_partition(topic, partition)?.end_offset())
    }

    /// Blocks until a record at or after `offset` is visible or `timeout` passes.
    pub fn wait_for(
        &self,
        topic: &str,
        partition: u32,
        offset: i64,
        timeout: Duration,
    ) -> Result<bool, ReadError> {
        Ok(self
            .read_partition(topic, partition)?
            .wait_for(offset, timeout))
    }

    /// A listener (usable from async code too) that fires when the partition's
    /// end offset moves. Take it, check the end offset, then wait.
    pub fn listen(&self, topic: &str, partition: u32) -> Result<EventListener, ReadError> {
        Ok(self.read_partition(topic, partition)?.listen())
    }

    pub fn partition_info(&self, topic: &str, partition: u32) -> Result<PartitionInfo, ReadError> {
        let part = self.read_partition(topic, partition)?;
        let counters = &part.counters;
        Ok(PartitionInfo {
            topic: topic.to_owned(),
            partition,
            start_offset: part.start_offset(),
            end_offset: part.end_offset(),
            size_bytes: part.size_bytes(),
            segments: part.segment_count(),
            remembered_keys: part.remembered_keys(),
            stopped: part.stopped_reason().map(str::to_owned),
            appends_total: counters.appends_total.load(Ordering::Relaxed),
            appended_records_total: counters.appended_records_total.load(Ordering::Relaxed),
            appended_bytes_total: counters.appended_bytes_total.load(Ordering::Relaxed),
            deduplicated_total: counters.deduplicated_total.load(Ordering::Relaxed),
            syncs_total: counters.syncs_total.load(Ordering::Relaxed),
            truncated_bytes_total: counters.truncated_bytes_total.load(Ordering::Relaxed),
        })
    }

    /// The batch keys a partition remembers now (key, offsets, append time and
    /// fingerprint), oldest first: what a producer that keeps its own index of
    /// keys rebuilds it from after a restart.
    pub fn batch_keys(
        &self,
        topic: &str,
        partition: u32,
    ) -> Result<Vec<(String, KeyEntry)>, ReadError> {
        Ok(self.read_partition(topic, partition)?.batch_keys())
    }

    /// Partitions that take no writes, with the reason: readiness shows these.
    pub fn stopped_partitions(&self) -> Vec<(String, u32, String)> {
        let topics = self.inner.topics.read().unwrap();
        let mut stopped = Vec::new();
        for (name, topic) in topics.iter() {
            for partition in &topic.partitions {
                if let Some(reason) = partition.stopped_reason() {
                    stopped.push((name.clone(), partition.id, reason.to_owned()));
                }
            }
        }
        stopped
    }

    pub fn used_bytes(&self) -> u64 {
        self.inner.used_bytes.load(Ordering::SeqCst)
    }

    pub fn dropped_required_records_total(&self) -> u64 {
        self.inner
            .dropped_required_records_total
            .load(Ordering::Relaxed)
    }

    /// Commits a group's offsets (the next offset to read) atomically and durably.
    pub fn commit(&self, group: &str, offsets: &[(&str, u32, i64)]) -> Result<(), LogError> {
        if self.inner.read_only {
            return Err(LogError::ReadOnly);
        }
        validate_name(group, GROUP_NAME_BYTES_MAX)?;
        for &(topic, partition, offset) in offsets {
            let part = self
                .inner
                .partition(topic, partition)
                .map_err(|error| match error {
                    Lookup::UnknownTopic => LogError::UnknownTopic(topic.to_owned()),
                    Lookup::OutOfRange(partitions) => LogError::PartitionOutOfRange {
                        topic: topic.to_owned(),
                        partition,
                        partitions,
                    },
                })?;
            let end = part.end_offset();
            if offset < 0 || offset > end {
                return Err(LogError::OffsetBeyondEnd {
                    topic: topic.to_owned(),
                    partition,
                    offset,
                    end,
                });
            }
        }
        self.inner.groups.update(group, |state| {
            for &(topic, partition, offset) in offsets {
                state.offsets.insert((topic.to_owned(), partition), offset);
            }
        })
    }

    pub fn committed(&self, group: &str, topic: &str, partition: u32) -> Option<i64> {
        self.inner
            .groups
            .get(group)?
            .offsets
            .get(&(topic.to_owned(), partition))
            .copied()
    }

    pub fn groups(&self) -> BTreeMap<String, GroupState> {
        self.inner.groups.list()
    }

    /// Marks `group` as required for `topic`: retention keeps whatever it has
    /// not committed.
    pub fn set_required(&self, group: &str, topic: &str, required: bool) -> Result<(), LogError> {
        if self.inner.read_only {
            return Err(LogError::ReadOnly);
        }
        validate_name(group, GROUP_NAME_BYTES_MAX)?;
        validate_name(topic, TOPIC_NAME_BYTES_MAX)?;
        if required && !self.inner.topics.read().unwrap().contains_key(topic) {
            return Err(LogError::UnknownTopic(topic.to_owned()));
        }
        self.inner.groups.update(group, |state| {
            if required {
                state.required_topics.insert(topic.to_owned());
            } else {
                state.required_topics.remove(topic);
            }
        })
    }

    pub fn delete_group(&self, group: &str) -> Result<bool, LogError> {
        if self.inner.read_only {
            return Err(LogError::ReadOnly);
        }
        self.inner.groups.delete(group)
    }

    /// Applies retention to every partition now, as the background thread does.
    pub fn apply_retention(&self) -> Vec<(String, u32, RetentionOutcome)> {
        self.inner.apply_retention(None, false)
    }

    /// The operator's way out of a full disk held by a required group that
    /// does not consume: applies `topic`'s retention ignoring required groups.
    /// Every record dropped that way is logged with the groups that lose it
    /// and counted.
    pub fn reclaim(&self, topic: &str) -> Result<Vec<(String, u32, RetentionOutcome)>, LogError> {
        if self.inner.read_only {
            return Err(LogError::ReadOnly);
        }
        if !self.inner.topics.read().unwrap().contains_key(topic) {
            return Err(LogError::UnknownTopic(topic.to_owned()));
        }
        Ok(self.inner.apply_retention(Some(topic), true))
    }

    /// Stops the background thread, syncs every partition and marks each
    /// clean so the next open needs no recovery scan.
    pub fn close(self) -> Result<(), AppendError> {
        self.inner.closed.store(true, Ordering::Release);
        self.stop_background();
        let topics = self.inner.topics.read().unwrap();
        let mut result = Ok(());
        for topic in topics.values() {
            for partition in &topic.partitions {
                if let Err(error) = partition.close() {
                    result = Err(error);
                }
            }
        }
        result
    }

    fn stop_background(&self) {
        self.inner.background.stop();
        if let Some(handle) = self.background.lock().unwrap().take() {
            let _ = handle.join();
        }
    }

    fn read_partition(&self, topic: &str, partition: u32) -> Result<Arc<Partition>, ReadError> {
        self.inner
            .partition(topic, partition)
            .map_err(|error| match error {
                Lookup::UnknownTopic => ReadError::UnknownTopic(topic.to_owned()),
                Lookup::OutOfRange(partitions) => ReadError::PartitionOutOfRange {
                    topic: topic.to_owned(),
                    partition,
                    partitions,
                },
            })
    }
}

enum Lookup {
    UnknownTopic,
    OutOfRange(u32),
}

impl Inner {
    fn open_topic(&self, name: &str, config: TopicConfig) -> Result<Arc<Topic>, LogError> {
        let config = Arc::new(config);
        let signal = Arc::downgrade(&self.background);
        let context = PartitionContext {
            storage: self.storage.clone(),
            clock: self.clock.clone(),
            used_bytes: self.used_bytes.clone(),
            quota_bytes: self.quota_bytes,
            read_only: self.read_only,
            wake_background: Arc::new(move || {
                if let Some(signal) = signal.upgrade() {
                    signal.wake();
                }
            }),
        };
        let topic_name: Arc<str> = Arc::from(name);
        let mut partitions = Vec::with_capacity(config.partitions as usize);
        for id in 0..config.partitions {
            let dir = self.dir.join(TOPICS_DIR).join(name).join(id.to_string());
            let floor = self.groups.max_committed(name, id);
            let partition =
                Partition::open(&context, topic_name.clone(), id, dir, config.clone(), floor)?;
            partitions.push(Arc::new(partition));
        }
        if !self.read_only {
            self.storage
                .sync_dir(&self.dir.join(TOPICS_DIR).join(name))
                .map_err(|error| LogError::io(&self.dir, error))?;
        }
        Ok(Arc::new(Topic { config, partitions }))
    }

    fn partition(&self, topic: &str, partition: u32) -> Result<Arc<Partition>, Lookup> {
        let topics = self.topics.read().unwrap();
        let found = topics.get(topic).ok_or(Lookup::UnknownTopic)?;
        found
            .partitions
            .get(partition as usize)
            .cloned()
            .ok_or(Lookup::OutOfRange(found.config.partitions))
    }

    fn apply_retention(
        &self,
        only: Option<&str>,
        force: bool,
    ) -> Vec<(String, u32, RetentionOutcome)> {
        let now = self.clock.now_ms();
        let topics: Vec<(String, Arc<Topic>)> = {
            let topics = self.topics.read().unwrap();
            topics
                .iter()
                .map(|(name, topic)| (name.clone(), topic.clone()))
                .collect()
        };
        let mut outcomes = Vec::new();
        for (name, topic) in topics {
            if only.is_some_and(|only| only != name) {
                continue;
            }
            for partition in &topic.partitions {
                let floor = self.groups.required_floor(&name, partition.id);
                let outcome = partition.apply_retention(now, floor, force);
                if let Some((from, to)) = outcome.dropped_uncommitted {
                    let behind = self.groups.required_groups_behind(&name, partition.id, to);
                    self.dropped_required_records_total
                        .fetch_add((to - from) as u64, Ordering::Relaxed);
                    tracing::warn!(
                        topic = %name,
                        partition = partition.id,
                        from_offset = from,
                        to_offset = to,
                        groups = ?behind,
                        "an operator reclaimed space: records a required group had not consumed were deleted"
                    );
                }
                if outcome.deleted_segments > 0 {
                    tracing::info!(
                        topic = %name,
                        partition = partition.id,
                        segments = outcome.deleted_segments,
                        bytes = outcome.deleted_bytes,
                        "retention deleted sealed segments"
                    );
                    outcomes.push((name.clone(), partition.id, outcome));
                }
            }
        }
        outcomes
    }

    fn all_partitions(&self) -> Vec<Arc<Partition>> {
        let topics = self.topics.read().unwrap();
        topics
            .values()
            .flat_map(|topic| topic.partitions.iter().cloned())
            .collect()
    }

    /// Partitions under the `interval` policy with their interval.
    fn interval_partitions(&self) -> Vec<(Arc<Partition>, u64)> {
        let topics = self.topics.read().unwrap();
        let mut found = Vec::new();
        for topic in topics.values() {
            if let Durability::Interval { ms } = topic.config.durability {
                found.extend(
                    topic
                        .partitions
                        .iter()
                        .map(|partition| (partition.clone(), ms)),
                );
            }
        }
        found
    }
}

fn background_loop(inner: Weak<Inner>, signal: Arc<BackgroundSignal>) {
    let started = std::time::Instant::now();
    let mut next_retention_ms = RETENTION_CHECK_MS;
    let mut next_sync_ms: BTreeMap<(String, u32), u64> = BTreeMap::new();
    loop {
        let wake_at = {
            let Some(inner) = inner.upgrade() else { return };
            let now_ms = started.elapsed().as_millis() as u64;
            let mut wake_at = next_retention_ms;
            for partition in inner.all_partitions() {
                if partition.take_zero_fill_request() {
                    partition.fill_ahead();
                }
            }
            for (partition, interval_ms) in inner.interval_partitions() {
                let due = next_sync_ms
                    .entry((partition.topic.to_string(), partition.id))
                    .or_insert(now_ms);
                if *due <= now_ms {
                    let _ = partition.sync_now();
                    *due = now_ms + interval_ms;
                }
                wake_at = wake_at.min(*due);
            }
            let quota_pressure = inner
                .quota_bytes
                .is_some_and(|quota| inner.used_bytes.load(Ordering::SeqCst) >= quota);
            if now_ms >= next_retention_ms || quota_pressure {
                inner.apply_retention(None, false);
                next_retention_ms = now_ms + RETENTION_CHECK_MS;
            }
            wake_at
        };
        let mut state = signal.state.lock().unwrap();
        let now_ms = started.elapsed().as_millis() as u64;
        let sleep = Duration::from_millis(wake_at.saturating_sub(now_ms).max(1));
        if !state.stop && !state.woken {
            state = signal.wake.wait_timeout(state, sleep).unwrap().0;
        }
        if state.stop {
            return;
        }
        state.woken = false;
    }
}

/// Topic and group names become directory and file names: Kafka's alphabet.
pub fn validate_name(name: &str, max_bytes: usize) -> Result<(), LogError> {
    let reason = if name.is_empty() {
        Some("empty")
    } else if name.len() > max_bytes {
        Some("too long")
    } else if name == "." || name == ".." {
        Some("reserved")
    } else if !name
        .bytes()
        .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'_' | b'-'))
    {
        Some("only ASCII letters, digits, '.', '_' and '-' are allowed")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(LogError::InvalidName {
            name: name.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}
