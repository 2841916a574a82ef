//! One partition: appends with group commit, reads, recovery and retention.
//!
//! Locks, always taken in this order and never the other way round:
//! `writer` (one appender at a time writes bytes) → `sync` (who is syncing and
//! how far is durable) → `visible` (what readers may see). `segments` is only
//! held for map lookups and updates.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

use event_listener::{Event, EventListener, Listener};

use crate::batch::{Batch, BatchView, ReadBatches};
use crate::config::{AppendError, Clock, Durability, Guarantee, ReadError, TopicConfig};
use crate::dedup::{KeyEntry, KeyWindow};
use crate::limits::{
    DECOMPRESSED_BYTES_MAX, GROUP_COMMIT_WAIT_US_MAX, READ_BYTES_MAX, SEGMENT_OFFSETS_MAX,
};
use crate::segment::{
    self, ChunkReader, LOG_SUFFIX, OFFSET_INDEX_SUFFIX, Segment, TIME_INDEX_SUFFIX, segment_path,
};
use crate::storage::{OpenMode, Storage, is_disk_full};

/// With `zero_fill`, the active segment is filled with zeros (and synced)
/// ahead of its end, in steps of this size. Batches then overwrite blocks
/// that are already allocated and part of the file, so their `fdatasync`
/// flushes data only, with no file size or extent change to journal: on ext4
/// here 104 µs instead of 160 µs for a 10 KB batch. The price is writing
/// every byte twice. Steps above a few MiB meet the kernel's dirty-page
/// throttling.
const ZERO_FILL_STEP_BYTES: u64 = 1024 * 1024;
/// The background thread keeps this much zero-filled ahead of the data, and
/// is asked to when less than the low water mark is left, so that appenders
/// rarely wait for a fill themselves.
const ZERO_FILL_AHEAD_BYTES: u64 = 4 * ZERO_FILL_STEP_BYTES;
const ZERO_FILL_LOW_WATER_BYTES: u64 = 2 * ZERO_FILL_STEP_BYTES;
const CLEAN_MARKER: &str = "clean-shutdown";
/// Written when a sync fails: how far the active segment was known durable.
/// Recovery keeps nothing past it (see [`DurableMark`]).
const DURABLE_MARK: &str = "durable-mark";
const KEYS_PREFIX: &str = "keys-";
const KEYS_SUFFIX: &str = ".snapshot";

/// What an append was answered with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AppendOutcome {
    pub base_offset: i64,
    pub last_offset: i64,
    pub guarantee: Guarantee,
    /// The batch key was seen before: these are the first append's offsets and
    /// nothing new was written.
    pub deduplicated: bool,
}

/// Counters of one partition, read by `describe` and metrics.
#[derive(Debug, Default)]
pub struct PartitionCounters {
    pub appends_total: AtomicU64,
    pub appended_bytes_total: AtomicU64,
    pub appended_records_total: AtomicU64,
    pub deduplicated_total: AtomicU64,
    pub syncs_total: AtomicU64,
    pub truncated_bytes_total: AtomicU64,
}

/// How far the partition's data is known to be on disk: every byte of the
/// segment at `segment_base` before `position`, and every earlier segment.
///
/// Linux reports a failed write-back once and may then mark the failed pages
/// clean: they stay readable from the page cache, and a later `fdatasync`
/// succeeds without writing them. So after a failed sync, neither a read nor
/// a sync at the next start can tell what reached the disk. The mark, kept
/// in memory as syncs succeed and written to `durable-mark` when one fails,
/// can: recovery truncates the active segment to it before anything is
/// served. File layout, big-endian: `"NBDM"`, version u16 (1), segment base
/// i64, position u64, CRC32C u32 of what precedes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct DurableMark {
    segment_base: i64,
    position: u64,
}

const DURABLE_MARK_MAGIC: &[u8; 4] = b"NBDM";
const DURABLE_MARK_VERSION: u16 = 1;

impl DurableMark {
    fn encode(self) -> Vec<u8> {
        let mut out = DURABLE_MARK_MAGIC.to_vec();
        out.extend_from_slice(&DURABLE_MARK_VERSION.to_be_bytes());
        out.extend_from_slice(&self.segment_base.to_be_bytes());
        out.extend_from_slice(&self.position.to_be_bytes());
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_be_bytes());
        out
    }

    fn decode(bytes: &[u8]) -> Option<DurableMark> {
        if bytes.len() != 26 || !bytes.starts_with(DURABLE_MARK_MAGIC) {
            return None;
        }
        let (body, crc) = bytes.split_at(22);
        if crc32c::crc32c(body).to_be_bytes() != crc {
            return None;
        }
        if u16::from_be_bytes(body[4..6].try_into().ok()?) != DURABLE_MARK_VERSION {
            return None;
        }
        Some(DurableMark {
            segment_base: i64::from_be_bytes(body[6..14].try_into().ok()?),
            position: u64::from_be_bytes(body[14..22].try_into().ok()?),
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Visible {
    end_offset: i64,
    segment_base: i64,
    position: u64,
}

struct Writer {
    active: Arc<Segment>,
    keys: KeyWindow,
    /// Bytes appended since open: the currency of group commit.
    written_total: u64,
    last_append_ms: i64,
}

struct SyncState {
    durable_total: u64,
    syncing: bool,
    /// The targets of appenders that have written and wait for a sync.
    waiting: Vec<u64>,
    /// A leader is waiting for its group to complete.
    leader_waiting: bool,
    /// The larger of the last two groups: how many appenders the next
    /// leader expects. Two, so that one group cut short by a late appender
    /// does not teach the next leader to expect fewer.
    expected_group: usize,
    last_group: usize,
    last_sync: Duration,
}

pub(crate) struct Partition {
    pub topic: Arc<str>,
    pub id: u32,
    pub dir: PathBuf,
    pub config: Arc<TopicConfig>,
    storage: Arc<dyn Storage>,
    clock: Arc<dyn Clock>,
    used_bytes: Arc<AtomicU64>,
    quota_bytes: Option<u64>,
    read_only: bool,
    writer: Mutex<Writer>,
    segments: RwLock<BTreeMap<i64, Arc<Segment>>>,
    sync: Mutex<SyncState>,
    sync_done: Condvar,
    group_ready: Condvar,
    /// Held around every `fdatasync` of the partition's segments; see
    /// [`Partition::sync_segment`].
    sync_io: Mutex<()>,
    durable: Mutex<DurableMark>,
    visible: Mutex<Visible>,
    new_data: Event,
    stopped: OnceLock<String>,
    zero_fill_wanted: AtomicBool,
    wake_background: Arc<dyn Fn() + Send + Sync>,
    pub counters: PartitionCounters,
}

pub(crate) struct PartitionContext {
    pub storage: Arc<dyn Storage>,
    pub clock: Arc<dyn Clock>,
    pub used_bytes: Arc<AtomicU64>,
    pub quota_bytes: Option<u64>,
    pub read_only: bool,
    /// Asks the log's background thread to look at the partitions now.
    pub wake_background: Arc<dyn Fn() + Send + Sync>,
}

/// What retention removed from one partition.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RetentionOutcome {
    pub deleted_segments: usize,
    pub deleted_bytes: u64,
    /// Offsets `start..end` deleted although a required group had not
    /// consumed them (only when forced by an operator).
    pub dropped_uncommitted: Option<(i64, i64)>,
}

impl Partition {
    pub fn open(
        context: &PartitionContext,
        topic: Arc<str>,
        id: u32,
        dir: PathBuf,
        config: Arc<TopicConfig>,
        committed_floor: Option<i64>,
    ) -> Result<Partition, crate::LogError> {
        let storage = context.storage.clone();
        let io = |error| crate::LogError::io(&dir, error);
        if !context.read_only {
            storage.create_dir_all(&dir).map_err(io)?;
        }
        let names = storage.list_dir(&dir).map_err(io)?;
        let mut bases: Vec<i64> = names
            .iter()
            .filter_map(|name| segment::parse_segment_name(name))
            .collect();
        bases.sort_unstable();
        let clean = names.iter().any(|name| name == CLEAN_MARKER);
        let mode = if context.read_only {
            OpenMode::Read
        } else {
            OpenMode::Write
        };
        let now = context.clock.now_ms();
        let mut stopped = None;
        let mut truncated_bytes = 0;

        if bases.is_empty() {
            if context.read_only {
                return Err(io(std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no segments",
                )));
            }
            let first = Segment::new_active(storage.as_ref(), &dir, 0, now).map_err(io)?;
            storage.sync_dir(&dir).map_err(io)?;
            drop(first);
            bases.push(0);
        }
        let mut segments = BTreeMap::new();
        for window in bases.windows(2) {
            let sealed = Segment::open_sealed(storage.as_ref(), &dir, window[0], window[1], mode)
                .map_err(io)?;
            segments.insert(window[0], Arc::new(sealed));
        }
        let active_base = *bases.last().expect("at least one segment");
        let active = Segment::open_sealed(storage.as_ref(), &dir, active_base, active_base, mode)
            .map_err(io)?;
        let mut file_len = active.len();

        // After a failed sync, only what was durable then is kept: the rest
        // may be bytes that only the page cache ever held.
        let mark = names
            .iter()
            .any(|name| name == DURABLE_MARK)
            .then(|| storage.read_whole(&dir.join(DURABLE_MARK)).ok())
            .flatten()
            .and_then(|bytes| {
                let mark = DurableMark::decode(&bytes);
                if mark.is_none() {
                    tracing::warn!(topic = %topic, partition = id,
                        "ignoring a damaged durable mark; recovery scans as after a crash");
                }
                mark
            });
        if let Some(mark) = mark {
            let keep = if mark.segment_base == active_base {
                Some(mark.position)
            } else if mark.segment_base < active_base {
                // A segment started after the mark never had a sync succeed.
                Some(0)
            } else {
                tracing::warn!(topic = %topic, partition = id,
                    "ignoring a durable mark for segment {} past the active one", mark.segment_base);
                None
            };
            if let Some(keep) = keep
                && file_len > keep
            {
                if !context.read_only {
                    let dropped = file_len - keep;
                    tracing::warn!(
                        topic = %topic,
                        partition = id,
                        bytes = dropped,
                        "a sync failed before the last stop: truncating the active segment to \
                         what was durable then"
                    );
                    active.file.set_len(keep).map_err(io)?;
                    truncated_bytes += dropped;
                }
                file_len = keep;
            }
        }

        let restored_clean =
            clean && mark.is_none() && active.restore_active_clean(storage.as_ref()).is_ok();
        let mut scanned_keys = None;
        let mut recovery_sync_failed = false;
        if !restored_clean {
            let outcome =
                segment::scan(active.file.as_ref(), active_base, file_len, true).map_err(io)?;
            let mut resume_at = None;
            if let Some(stop) = &outcome.stopped {
                // A group cannot have committed past data that was never
                // acknowledged: that, or a valid batch after the damaged one,
                // proves the damage sits inside acknowledged data.
                let consumed_past = committed_floor.is_some_and(|floor| floor > stop.offset);
                if stop.resume_at.is_some() || consumed_past {
                    let evidence = if stop.resume_at.is_some() {
                        "valid batches follow it"
                    } else {
                        "a consumer group has committed past it"
                    };
                    let reason = format!(
                        "corrupt batch at offset {} (segment {}, byte {}): {}; {evidence}, so this \
                         is not a torn tail and nothing was truncated",
                        stop.offset,
                        active.path.display(),
                        stop.position,
                        stop.error
                    );
                    tracing::error!(topic = %topic, partition = id, "{reason}");
                    stopped = Some(reason);
                    resume_at = stop.resume_at;
                } else if !context.read_only {
                    let dropped = file_len - outcome.valid_len;
                    if segment::is_zero_filled(active.file.as_ref(), outcome.valid_len, file_len)
                        .map_err(io)?
                    {
                        tracing::debug!(topic = %topic, partition = id, bytes = dropped,
                            "trimming the zero-filled end of the active segment");
                    } else {
                        truncated_bytes += dropped;
                        tracing::warn!(
                            topic = %topic,
                            partition = id,
                            offset = stop.offset,
                            bytes = dropped,
                            reason = %stop.error,
                            "truncating a torn or corrupt tail of the active segment"
                        );
                    }
                    active.file.set_len(outcome.valid_len).map_err(io)?;
                }
            }
            if !context.read_only {
                // The scan may have read bytes that only the page cache holds
                // (a write whose fsync failed before the restart): they become
                // durable before anyone sees them, or nothing of the active
                // segment is served and the partition stops.
                if let Err(error) = active.file.sync_data() {
                    stopped.get_or_insert(format!("fdatasync failed during recovery: {error}"));
                    recovery_sync_failed = true;
                }
            }
            active.restore_active(&outcome);
            if let Some(resume_at) = resume_at {
                // Corruption in the middle: the batches after the bad one stay
                // readable, and a reader reaching the bad one gets an error
                // naming its offset instead of waiting forever at a false end.
                let rest = segment::scan_from(
                    active.file.as_ref(),
                    active_base,
                    resume_at,
                    file_len,
                    false,
                )
                .map_err(io)?;
                active.len.store(rest.valid_len, Ordering::Release);
                active
                    .next_offset
                    .store(rest.next_offset, Ordering::Release);
                // Reads past the damage start from an index entry after it:
                // a batch with broken framing cannot be stepped over.
                active.extend_live_index(&rest.index);
            }
            scanned_keys = Some(outcome.keys);
        }
        let created_ms = active.first_timestamp().unwrap_or(now);
        active.created_ms.store(created_ms, Ordering::Relaxed);
        let active = Arc::new(active);
        segments.insert(active_base, active.clone());

        let mut keys = KeyWindow::new(config.dedup_keys_max, config.dedup_window_ms);
        let snapshot_covers = load_key_snapshot(storage.as_ref(), &dir, &names, &mut keys, now);
        let keys_from = snapshot_covers.unwrap_or(i64::MIN);
        if keys_from < active.next_offset() {
            // Keys appended after the snapshot: from the active segment's scan,
            // and from sealed segments when the snapshot is older than it.
            for segment in segments.values() {
                if segment.next_offset() <= keys_from || segment.base_offset == active_base {
                    continue;
                }
                if let Ok(outcome) = segment::scan(
                    segment.file.as_ref(),
                    segment.base_offset,
                    segment.len(),
                    true,
                ) {
                    insert_keys(&mut keys, outcome.keys, keys_from, now);
                }
            }
            let active_keys = match scanned_keys {
                Some(found) => found,
                None => segment::scan(active.file.as_ref(), active_base, active.len(), true)
                    .map(|outcome| outcome.keys)
                    .unwrap_or_default(),
            };
            insert_keys(&mut keys, active_keys, keys_from, now);
        }

        if clean && !context.read_only {
            storage.remove_file(&dir.join(CLEAN_MARKER)).map_err(io)?;
            storage.sync_dir(&dir).map_err(io)?;
        }
        // Kept until a recovery sync has succeeded, so that a second failed
        // start still truncates to it.
        if mark.is_some() && !context.read_only && !recovery_sync_failed {
            storage.remove_file(&dir.join(DURABLE_MARK)).map_err(io)?;
            storage.sync_dir(&dir).map_err(io)?;
        }
        if !context.read_only {
            remove_orphans(storage.as_ref(), &dir, &names, &bases);
        }
        let used: u64 = segments.values().map(|segment| segment.len()).sum();
        context.used_bytes.fetch_add(used, Ordering::SeqCst);
        let visible = if recovery_sync_failed {
            Visible {
                end_offset: active_base,
                segment_base: active_base,
                position: 0,
            }
        } else {
            Visible {
                end_offset: active.next_offset(),
                segment_base: active_base,
                position: active.len(),
            }
        };
        // Append times never go back, also across a restart right after a
        // roll: the newest time is in the active segment or the one before.
        let last_append_ms = segments
            .values()
            .rev()
            .take(2)
            .map(|segment| segment.max_timestamp(storage.as_ref()))
            .max()
            .unwrap_or(i64::MIN)
            .max(0);
        let partition = Partition {
            topic,
            id,
            dir,
            config,
            storage,
            clock: context.clock.clone(),
            used_bytes: context.used_bytes.clone(),
            quota_bytes: context.quota_bytes,
            read_only: context.read_only,
            writer: Mutex::new(Writer {
                active,
                keys,
                written_total: 0,
                last_append_ms,
            }),
            segments: RwLock::new(segments),
            sync: Mutex::new(SyncState {
                durable_total: 0,
                syncing: false,
                waiting: Vec::new(),
                leader_waiting: false,
                expected_group: 1,
                last_group: 1,
                last_sync: Duration::ZERO,
            }),
            sync_done: Condvar::new(),
            group_ready: Condvar::new(),
            sync_io: Mutex::new(()),
            durable: Mutex::new(DurableMark {
                segment_base: active_base,
                position: if recovery_sync_failed {
                    mark.map_or(0, |mark| mark.position)
                } else {
                    visible.position
                },
            }),
            visible: Mutex::new(visible),
            new_data: Event::new(),
            stopped: OnceLock::new(),
            zero_fill_wanted: AtomicBool::new(false),
            wake_background: context.wake_background.clone(),
            counters: PartitionCounters::default(),
        };
        partition
            .counters
            .truncated_bytes_total
            .store(truncated_bytes, Ordering::Relaxed);
        if let Some(reason) = stopped {
            partition.stop(reason);
        }
        Ok(partition)
    }

    /// Why the partition takes no writes, if it stopped.
    pub fn stopped_reason(&self) -> Option<&str> {
        self.stopped.get().map(String::as_str)
    }

    fn stop(&self, reason: String) {
        if self.stopped.set(reason.clone()).is_ok() {
            tracing::error!(topic = %self.topic, partition = self.id, "partition stopped taking writes: {reason}");
        }
        let _guard = self.sync.lock().unwrap();
        self.sync_done.notify_all();
        self.group_ready.notify_all();
    }

    fn stopped_error(&self) -> AppendError {
        AppendError::PartitionStopped {
            topic: self.topic.to_string(),
            partition: self.id,
            reason: self.stopped.get().cloned().unwrap_or_default(),
        }
    }

    pub fn start_offset(&self) -> i64 {
        let segments = self.segments.read().unwrap();
        *segments
            .keys()
            .next()
            .expect("a partition always has its active segment")
    }

    /// One past the last offset a reader may see.
    pub fn end_offset(&self) -> i64 {
        self.visible.lock().unwrap().end_offset
    }

    pub fn size_bytes(&self) -> u64 {
        self.segments
            .read()
            .unwrap()
            .values()
            .map(|segment| segment.len())
            .sum()
    }

    pub fn segment_count(&self) -> usize {
        self.segments.read().unwrap().len()
    }

    pub fn remembered_keys(&self) -> usize {
        self.writer.lock().unwrap().keys.len()
    }

    /// The batch keys remembered now, oldest first.
    pub fn batch_keys(&self) -> Vec<(String, KeyEntry)> {
        let now = self.clock.now_ms();
        self.writer.lock().unwrap().keys.remembered(now)
    }

    pub fn append(&self, mut batch: Batch) -> Result<AppendOutcome, AppendError> {
        if self.read_only {
            return Err(AppendError::ReadOnly);
        }
        let size = batch.len_bytes();
        if size > self.config.batch_bytes_max {
            return Err(AppendError::BatchTooLarge {
                bytes: size,
                limit: self.config.batch_bytes_max,
            });
        }
        if batch.largest_record_bytes() > self.config.record_bytes_max {
            return Err(AppendError::RecordTooLarge {
                bytes: batch.largest_record_bytes(),
                limit: self.config.record_bytes_max,
            });
        }
        // What the readers refuse is refused here too, so that nothing stored
        // can stall a consumer.
        if batch.records_bytes() > DECOMPRESSED_BYTES_MAX {
            return Err(AppendError::RecordsTooLarge {
                bytes: batch.records_bytes(),
                limit: DECOMPRESSED_BYTES_MAX,
            });
        }
        let count = i64::from(batch.record_count());
        let fsync = self.config.durability == Durability::Fsync;
        let guarantee = if fsync {
            Guarantee::Synced
        } else {
            Guarantee::Written
        };

        let (outcome, sync_target) = {
            let mut writer = self.writer.lock().unwrap();
            if self.stopped.get().is_some() {
                return Err(self.stopped_error());
            }
            let now = self.clock.now_ms();
            if let Some(entry) = batch.batch_key().and_then(|key| writer.keys.get(key, now)) {
                // The same key for another request is a client's mistake, not a
                // retry: answered as such rather than with the first offsets.
                if let (Some(first), Some(now)) = (entry.fingerprint, batch.fingerprint())
                    && first != now
                {
                    return Err(AppendError::BatchKeyReused {
                        key: batch.batch_key().unwrap_or_default().to_owned(),
                    });
                }
                self.counters
                    .deduplicated_total
                    .fetch_add(1, Ordering::Relaxed);
                let outcome = AppendOutcome {
                    base_offset: entry.base_offset,
                    last_offset: entry.last_offset,
                    guarantee,
                    deduplicated: true,
                };
                // The first copy may still be waiting for its sync: the answer
                // must not claim more than the first copy has.
                (outcome, fsync.then_some(writer.written_total))
            } else {
                if let Some(quota) = self.quota_bytes {
                    let used = self.used_bytes.load(Ordering::SeqCst);
                    if used + size as u64 > quota {
                        return Err(AppendError::QuotaExceeded { used, quota });
                    }
                }
                self.roll_if_due(&mut writer, size as u64, count, now)?;
                let active = writer.active.clone();
                let position = active.len();
                let end = position + size as u64;
                // Zero-filling pays only where every append waits for a sync.
                let zero_fill = fsync && self.config.zero_fill;
                if zero_fill {
                    self.ensure_zero_filled(&active, end)?;
                }
                let base_offset = active.next_offset();
                let append_ms = now.max(writer.last_append_ms);
                batch.stamp(base_offset, append_ms);
                if let Err(error) = active.file.write_all_at(batch.as_bytes(), position) {
                    // Nothing of a failed batch may stay behind: take back
                    // whatever part of it reached the file (zeros included:
                    // the region is filled again when needed).
                    active.zero.lock().unwrap().filled = position;
                    if let Err(truncate_error) = active.file.set_len(position) {
                        self.stop(format!(
                            "a write failed ({error}) and its partial batch could not be removed \
                             ({truncate_error})"
                        ));
                    }
                    return Err(io_append_error(&error));
                }
                active.note_append(position, &batch.view());
                if zero_fill
                    && end + ZERO_FILL_LOW_WATER_BYTES > active.zero.lock().unwrap().filled
                    && !self.zero_fill_wanted.swap(true, Ordering::AcqRel)
                {
                    (self.wake_background)();
                }
                writer.written_total += size as u64;
                writer.last_append_ms = append_ms;
                let last_offset = base_offset + count - 1;
                if let Some(key) = batch.batch_key() {
                    let entry = KeyEntry {
                        base_offset,
                        last_offset,
                        append_ms,
                        fingerprint: batch.fingerprint(),
                    };
                    writer.keys.insert(key.to_owned(), entry, now);
                }
                self.used_bytes.fetch_add(size as u64, Ordering::SeqCst);
                self.counters.appends_total.fetch_add(1, Ordering::Relaxed);
                self.counters
                    .appended_bytes_total
                    .fetch_add(size as u64, Ordering::Relaxed);
                self.counters
                    .appended_records_total
                    .fetch_add(count as u64, Ordering::Relaxed);
                if !fsync {
                    self.publish(Visible {
                        end_offset: base_offset + count,
                        segment_base: active.base_offset,
                        position: end,
                    });
                }
                let outcome = AppendOutcome {
                    base_offset,
                    last_offset,
                    guarantee,
                    deduplicated: false,
                };
                (outcome, fsync.then_some(writer.written_total))
            }
        };
        if let Some(target) = sync_target {
            self.wait_durable(target)?;
        }
        Ok(outcome)
    }

    /// Syncs everything written so far (for the interval policy and close).
    pub fn sync_now(&self) -> Result<(), AppendError> {
        let target = self.writer.lock().unwrap().written_total;
        self.wait_durable(target)
    }

    /// Group commit. An appender that finds no sync running becomes the
    /// leader and syncs for everyone who has written; the others wait. When
    /// recent syncs served several appenders, the leader first waits a little
    /// (at most half a sync, at most [`GROUP_COMMIT_WAIT_US_MAX`]) until as
    /// many wait, so that concurrent producers keep sharing syncs instead of
    /// falling into a rhythm of alternating half-full groups. Only the leader
    /// is woken by arrivals, and only when its group is complete; the others
    /// are woken once, when a sync ends.
    fn wait_durable(&self, target: u64) -> Result<(), AppendError> {
        let mut state = self.sync.lock().unwrap();
        if state.durable_total >= target {
            return Ok(());
        }
        state.waiting.push(target);
        if state.leader_waiting && state.waiting.len() >= state.expected_group {
            self.group_ready.notify_one();
        }
        loop {
            if state.durable_total >= target {
                return Ok(());
            }
            if self.stopped.get().is_some() {
                state.waiting.retain(|&waiting| waiting != target);
                return Err(self.stopped_error());
            }
            if state.syncing {
                state = self.sync_done.wait(state).unwrap();
                continue;
            }
            state.syncing = true;
            if state.expected_group > 1 && state.waiting.len() < state.expected_group {
                let wait =
                    (state.last_sync / 2).min(Duration::from_micros(GROUP_COMMIT_WAIT_US_MAX));
                let deadline = Instant::now() + wait;
                state.leader_waiting = true;
                while state.waiting.len() < state.expected_group && self.stopped.get().is_none() {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    state = self.group_ready.wait_timeout(state, left).unwrap().0;
                }
                state.leader_waiting = false;
            }
            drop(state);

            let (active, covered, visible) = {
                let writer = self.writer.lock().unwrap();
                let active = writer.active.clone();
                let visible = Visible {
                    end_offset: active.next_offset(),
                    segment_base: active.base_offset,
                    position: active.len(),
                };
                (active, writer.written_total, visible)
            };
            let started = Instant::now();
            let synced = self.sync_segment(&active, "for appends");
            let took = started.elapsed();
            self.counters.syncs_total.fetch_add(1, Ordering::Relaxed);

            state = self.sync.lock().unwrap();
            state.syncing = false;
            state.last_sync = took;
            // On failure the partition stopped inside `sync_segment`; the
            // loop then answers every waiter not covered by an earlier sync.
            if synced.is_ok() {
                self.note_durable(visible.segment_base, visible.position);
                state.durable_total = state.durable_total.max(covered);
                let before = state.waiting.len();
                let durable = state.durable_total;
                state.waiting.retain(|&waiting| waiting > durable);
                let group = before - state.waiting.len();
                state.expected_group = group.max(state.last_group);
                state.last_group = group;
                self.publish(visible);
            }
            self.sync_done.notify_all();
        }
    }

    /// Every `fdatasync` of a segment goes through here, one at a time.
    /// Linux reports a writeback error to one caller only and may drop the
    /// pages that failed, so after one failure a later success on the same
    /// file proves nothing: the failure stops the partition inside the same
    /// critical section, and every later sync sees that before it starts.
    fn sync_segment(&self, segment: &Segment, during: &str) -> Result<(), AppendError> {
        let _one_at_a_time = self.sync_io.lock().unwrap();
        if self.stopped.get().is_some() {
            return Err(self.stopped_error());
        }
        match segment.file.sync_data() {
            Ok(()) => Ok(()),
            Err(error) => {
                self.stop(format!("fdatasync failed {during}: {error}"));
                if !self.write_durable_mark() {
                    self.cut_to_durable(segment);
                }
                Err(self.stopped_error())
            }
        }
    }

    /// Moves the durable mark forward: `position` bytes of the segment at
    /// `segment_base` are on disk.
    fn note_durable(&self, segment_base: i64, position: u64) {
        let mut durable = self.durable.lock().unwrap();
        let next = DurableMark {
            segment_base,
            position,
        };
        if (next.segment_base, next.position) > (durable.segment_base, durable.position) {
            *durable = next;
        }
    }

    /// Records the durable mark on disk, for the recovery after a failed sync; answers
    /// whether it did.
    fn write_durable_mark(&self) -> bool {
        let mark = *self.durable.lock().unwrap();
        let path = self.dir.join(DURABLE_MARK);
        let temporary = path.with_extension("tmp");
        let written = (|| {
            let file = self.storage.open(&temporary, OpenMode::Create)?;
            file.set_len(0)?;
            file.write_all_at(&mark.encode(), 0)?;
            file.sync_data()?;
            self.storage.rename(&temporary, &path)?;
            self.storage.sync_dir(&self.dir)
        })();
        match &written {
            Ok(()) => tracing::warn!(
                topic = %self.topic,
                partition = self.id,
                segment = mark.segment_base,
                position = mark.position,
                "recorded how far the partition was durable; the next start keeps nothing past it"
            ),
            Err(error) => tracing::error!(
                topic = %self.topic,
                partition = self.id,
                "could not record how far the partition was durable ({error}); cutting the \
                 active segment back to it instead"
            ),
        }
        written.is_ok()
    }

    /// When the durable mark could not be written (the disk failing twice in a row): cuts
    /// `segment` back to the mark in place, as recovery would have. The pages past it are
    /// what a failed write-back may have left readable but never written; once the file
    /// is cut, a restart of the process (the machine still up, its page cache intact) cannot
    /// read them, take them for durable, and answer a retried request with their offsets.
    /// After a power loss the disk holds what it holds, and recovery's scan judges it.
    /// Readers never see past the durable mark, and appends stop before their sync, so the
    /// cut takes nothing anyone was told of.
    fn cut_to_durable(&self, segment: &Segment) {
        let mark = *self.durable.lock().unwrap();
        let keep = match mark.segment_base.cmp(&segment.base_offset) {
            std::cmp::Ordering::Equal => mark.position,
            // A segment started after the mark never had a sync succeed.
            std::cmp::Ordering::Less => 0,
            std::cmp::Ordering::Greater => return,
        };
        if let Err(error) = segment.file.set_len(keep) {
            tracing::error!(
                topic = %self.topic,
                partition = self.id,
                "could not cut the active segment back to what was durable ({error}); after a \
                 restart without a power loss it may serve bytes that never reached the disk"
            );
        }
    }

    fn publish(&self, next: Visible) {
        let mut visible = self.visible.lock().unwrap();
        if next.end_offset > visible.end_offset
            || (next.end_offset == visible.end_offset && next.segment_base > visible.segment_base)
        {
            *visible = next;
            drop(visible);
            self.new_data.notify(usize::MAX);
        }
    }

    /// Makes sure the file is zero-filled (and synced) past `end`, filling
    /// the next step itself when the background thread has not.
    fn ensure_zero_filled(&self, segment: &Segment, end: u64) -> Result<(), AppendError> {
        let mut zero = segment.zero.lock().unwrap();
        loop {
            if end <= zero.filled || zero.sealed {
                return Ok(());
            }
            if zero.filling {
                zero = segment.zero_done.wait(zero).unwrap();
                continue;
            }
            let from = zero.filled.max(segment.len());
            let segment_end = self.config.segment_bytes + self.config.batch_bytes_max as u64;
            let target = end
                .next_multiple_of(ZERO_FILL_STEP_BYTES)
                .min(segment_end)
                .max(end);
            zero.filling = true;
            drop(zero);
            let result = self.write_zeros(segment, from, target);
            zero = segment.zero.lock().unwrap();
            zero.filling = false;
            if result.is_ok() {
                zero.filled = target;
            }
            segment.zero_done.notify_all();
            result?;
        }
    }

    fn write_zeros(&self, segment: &Segment, from: u64, to: u64) -> Result<(), AppendError> {
        let zeros = vec![0u8; (to - from) as usize];
        if let Err(error) = segment.file.write_all_at(&zeros, from) {
            if let Err(truncate_error) = segment.file.set_len(from) {
                self.stop(format!(
                    "zero-filling failed ({error}) and could not be undone ({truncate_error})"
                ));
            }
            return Err(io_append_error(&error));
        }
        // The sync covers appended batches too: the same rule as any sync.
        self.sync_segment(segment, "after zero-filling")
    }

    /// Whether the background thread should fill ahead (asked once per
    /// crossing of the low water mark).
    pub fn take_zero_fill_request(&self) -> bool {
        self.zero_fill_wanted.swap(false, Ordering::AcqRel)
    }

    /// Fills the active segment with zeros up to the look-ahead, in steps.
    pub fn fill_ahead(&self) {
        let wanted = self.config.durability == Durability::Fsync && self.config.zero_fill;
        if !wanted || self.read_only || self.stopped.get().is_some() {
            return;
        }
        let Some(active) = self.segments.read().unwrap().values().next_back().cloned() else {
            return;
        };
        let segment_end = self.config.segment_bytes + self.config.batch_bytes_max as u64;
        let desired = (active.len() + ZERO_FILL_AHEAD_BYTES).min(segment_end);
        loop {
            let (filled, sealed) = {
                let zero = active.zero.lock().unwrap();
                (zero.filled, zero.sealed)
            };
            if sealed || filled >= desired {
                return;
            }
            if self.ensure_zero_filled(&active, filled + 1).is_err() {
                return;
            }
        }
    }

    fn roll_if_due(
        &self,
        writer: &mut Writer,
        size: u64,
        count: i64,
        now: i64,
    ) -> Result<(), AppendError> {
        let active = &writer.active;
        let len = active.len();
        if len == 0 {
            return Ok(());
        }
        let full = len + size > self.config.segment_bytes;
        let old = now - active.created_ms.load(Ordering::Relaxed) >= self.config.segment_ms;
        let offsets_full = active.next_offset() + count - active.base_offset > SEGMENT_OFFSETS_MAX;
        if full || old || offsets_full {
            self.roll(writer, now)?;
        }
        Ok(())
    }

    /// Seals the active segment (synced, indexed, zero-filled end trimmed) and
    /// starts a new one whose directory entry is durable before any batch goes in.
    fn roll(&self, writer: &mut Writer, now: i64) -> Result<(), AppendError> {
        let old = writer.active.clone();
        self.sync_segment(&old, "while sealing a segment")?;
        if let Err(error) = old.write_index_files(self.storage.as_ref()) {
            // Indexes are rebuilt from the segment when missing or torn.
            tracing::warn!(segment = %old.path.display(), "could not write the segment's index: {error}");
        }
        // The trim is synced too, so that a sealed segment never keeps a
        // zero-filled end after a crash.
        if old.trim().is_ok() {
            self.sync_segment(&old, "after trimming a sealed segment")?;
        }
        self.note_durable(old.base_offset, old.len());
        let next_base = old.next_offset();
        self.write_key_snapshot(&writer.keys, next_base);

        let new = Segment::new_active(self.storage.as_ref(), &self.dir, next_base, now)
            .map_err(|error| io_append_error(&error))?;
        if let Err(error) = self.storage.sync_dir(&self.dir) {
            let _ = self.storage.remove_file(&new.path);
            self.stop(format!("fsync of the partition directory failed: {error}"));
            return Err(self.stopped_error());
        }
        old.seal();
        self.note_durable(next_base, 0);
        let new = Arc::new(new);
        self.segments
            .write()
            .unwrap()
            .insert(next_base, new.clone());
        writer.active = new;
        // Everything written so far is in the sealed, synced segment.
        {
            let mut state = self.sync.lock().unwrap();
            state.durable_total = state.durable_total.max(writer.written_total);
            let durable = state.durable_total;
            state.waiting.retain(|&waiting| waiting > durable);
            self.sync_done.notify_all();
        }
        self.publish(Visible {
            end_offset: next_base,
            segment_base: old.base_offset,
            position: old.len(),
        });
        Ok(())
    }

    fn write_key_snapshot(&self, keys: &KeyWindow, covered_to: i64) {
        let path = self
            .dir
            .join(format!("{KEYS_PREFIX}{covered_to:020}{KEYS_SUFFIX}"));
        let temporary = path.with_extension("tmp");
        let bytes = keys.encode_snapshot(covered_to);
        let written = (|| {
            let file = self.storage.open(&temporary, OpenMode::Create)?;
            file.set_len(0)?;
            file.write_all_at(&bytes, 0)?;
            file.sync_data()?;
            self.storage.rename(&temporary, &path)?;
            self.storage.sync_dir(&self.dir)
        })();
        match written {
            Ok(()) => {
                // Older snapshots are superseded.
                if let Ok(names) = self.storage.list_dir(&self.dir) {
                    for name in names {
                        if let Some(offset) = parse_key_snapshot_name(&name)
                            && offset < covered_to
                        {
                            let _ = self.storage.remove_file(&self.dir.join(name));
                        }
                    }
                }
            }
            Err(error) => {
                let _ = self.storage.remove_file(&temporary);
                tracing::warn!(topic = %self.topic, partition = self.id,
                    "could not write the batch key snapshot ({error}); a restart will scan further back");
            }
        }
    }

    /// Syncs, writes the index and key snapshot of the active segment, and
    /// leaves the marker that lets the next open skip the recovery scan.
    pub fn close(&self) -> Result<(), AppendError> {
        if self.read_only {
            return Ok(());
        }
        let writer = self.writer.lock().unwrap();
        if self.stopped.get().is_some() {
            return Err(self.stopped_error());
        }
        let active = writer.active.clone();
        self.sync_segment(&active, "at close")?;
        if active.trim().is_ok() {
            self.sync_segment(&active, "after trimming at close")?;
        }
        let indexed = active.write_index_files(self.storage.as_ref());
        self.write_key_snapshot(&writer.keys, active.next_offset());
        if indexed.is_ok() {
            let marker = self.dir.join(CLEAN_MARKER);
            let written = self
                .storage
                .open(&marker, OpenMode::Create)
                .and_then(|file| file.sync_data())
                .and_then(|()| self.storage.sync_dir(&self.dir));
            if let Err(error) = written {
                tracing::warn!(
                    "could not mark a clean shutdown ({error}); the next open will scan"
                );
            }
        }
        Ok(())
    }

    /// A listener that fires when the end offset moves. Take it before
    /// checking the end offset, then wait on it, so no notification is missed.
    pub fn listen(&self) -> EventListener {
        self.new_data.listen()
    }

    /// Blocks until records at or after `offset` are visible, or `timeout`
    /// passes. Returns whether they are.
    pub fn wait_for(&self, offset: i64, timeout: Duration) -> bool {
        let Some(deadline) = Instant::now().checked_add(timeout) else {
            // A timeout too long to represent: wait as long as it takes.
            return self.wait_for(offset, Duration::from_secs(365 * 24 * 3600));
        };
        loop {
            if self.end_offset() > offset {
                return true;
            }
            let listener = self.listen();
            if self.end_offset() > offset {
                return true;
            }
            if listener.wait_deadline(deadline).is_none() {
                return self.end_offset() > offset;
            }
        }
    }

    pub fn read(&self, offset: i64, max_bytes: usize) -> Result<ReadBatches, ReadError> {
        let max_bytes = max_bytes.clamp(1, READ_BYTES_MAX);
        let visible = *self.visible.lock().unwrap();
        let (segment, start) = {
            let segments = self.segments.read().unwrap();
            let start = *segments.keys().next().expect("active segment");
            (
                segments
                    .range(..=offset)
                    .next_back()
                    .map(|(_, segment)| segment.clone()),
                start,
            )
        };
        let out_of_range = || ReadError::OffsetOutOfRange {
            requested: offset,
            start,
            end: visible.end_offset,
        };
        if offset < start || offset > visible.end_offset {
            return Err(out_of_range());
        }
        if offset == visible.end_offset {
            return Ok(ReadBatches::default());
        }
        let segment = segment.ok_or_else(out_of_range)?;
        let limit = if segment.base_offset >= visible.segment_base {
            if segment.base_offset > visible.segment_base {
                return Ok(ReadBatches::default());
            }
            visible.position
        } else {
            segment.len()
        };
        let relative = (offset - segment.base_offset) as u32;
        let (entry_offset, from) = segment.index_snapshot(self.storage.as_ref(), |index| {
            index.entry_for_offset(relative)
        });
        let corruption = |offset: i64, detail: String| ReadError::Corruption {
            topic: self.topic.to_string(),
            partition: self.id,
            offset,
            detail: format!("{detail} (segment {})", segment.path.display()),
        };
        let mut reader = ChunkReader::new(segment.file.as_ref(), u64::from(from), limit);
        let mut out = Vec::new();
        // The first batch must begin where the index entry says.
        let mut next_expected = segment.base_offset + i64::from(entry_offset);
        while reader.position() < limit {
            let position = reader.position();
            let bytes = match reader
                .next_batch()
                .map_err(|error| ReadError::Io(error.to_string()))?
            {
                Ok(bytes) => bytes,
                Err(error) if out.is_empty() => {
                    return Err(corruption(offset, format!("byte {position}: {error}")));
                }
                Err(_) => break,
            };
            let view = BatchView::parse(bytes).expect("parsed by next_batch");
            let size = view.len_bytes();
            // Batches stepped over on the way must be continuous too, or a
            // damaged base offset could make a later batch look like the one
            // asked for.
            let continuous = view.base_offset() == next_expected;
            if out.is_empty() && continuous && view.last_offset() < offset {
                next_expected = view.next_offset();
                reader.advance(size);
                continue;
            }
            // The base offset lies outside the CRC, so continuity is checked
            // too: the first batch served holds the requested offset, and
            // each next one starts where the previous ended.
            let checked = view
                .verify_crc()
                .map_err(|error| error.to_string())
                .and_then(|()| {
                    if continuous {
                        Ok(())
                    } else {
                        Err("batch offset out of sequence".to_string())
                    }
                });
            if let Err(detail) = checked {
                if out.is_empty() {
                    return Err(corruption(offset, detail));
                }
                break;
            }
            if !out.is_empty() && out.len() + size > max_bytes {
                break;
            }
            next_expected = view.next_offset();
            out.extend_from_slice(bytes);
            reader.advance(size);
            if out.len() >= max_bytes {
                break;
            }
        }
        if out.is_empty()
            && reader.position() >= limit
            && segment.base_offset < visible.segment_base
        {
            // The offset lies past this segment's last batch: a gap can only
            // mean the segment lost its tail.
            return Err(corruption(offset, "offset missing from its segment".into()));
        }
        Ok(ReadBatches::from_bytes(out))
    }

    /// The first offset whose append time is at or after `timestamp_ms`, or
    /// the end offset when there is none.
    pub fn offset_for_time(&self, timestamp_ms: i64) -> Result<i64, ReadError> {
        let visible = *self.visible.lock().unwrap();
        let segments: Vec<Arc<Segment>> = self.segments.read().unwrap().values().cloned().collect();
        for segment in segments {
            if segment.base_offset > visible.segment_base {
                break;
            }
            if segment.base_offset != visible.segment_base
                && segment.max_timestamp(self.storage.as_ref()) < timestamp_ms
            {
                continue;
            }
            let limit = if segment.base_offset == visible.segment_base {
                visible.position
            } else {
                segment.len()
            };
            let relative = segment.index_snapshot(self.storage.as_ref(), |index| {
                index.offset_for_time(timestamp_ms)
            });
            let (_, from) = segment.index_snapshot(self.storage.as_ref(), |index| {
                index.entry_for_offset(relative)
            });
            let mut reader = ChunkReader::new(segment.file.as_ref(), u64::from(from), limit);
            while reader.position() < limit {
                let bytes = match reader
                    .next_batch()
                    .map_err(|error| ReadError::Io(error.to_string()))?
                {
                    Ok(bytes) => bytes,
                    Err(error) => {
                        return Err(ReadError::Corruption {
                            topic: self.topic.to_string(),
                            partition: self.id,
                            offset: segment.base_offset,
                            detail: error.to_string(),
                        });
                    }
                };
                let view = BatchView::parse(bytes).expect("parsed");
                if view.max_timestamp() >= timestamp_ms {
                    return Ok(view.base_offset());
                }
                let size = view.len_bytes();
                reader.advance(size);
            }
        }
        Ok(visible.end_offset)
    }

    /// Deletes whole sealed segments that retention allows, oldest first,
    /// never at or past `keep_from` (the lowest offset a required group has
    /// not consumed) unless `force` is set.
    pub fn apply_retention(
        &self,
        now_ms: i64,
        keep_from: Option<i64>,
        force: bool,
    ) -> RetentionOutcome {
        let mut outcome = RetentionOutcome::default();
        if self.read_only {
            return outcome;
        }
        let _writer = self.writer.lock().unwrap();
        let candidates: Vec<Arc<Segment>> = {
            let segments = self.segments.read().unwrap();
            let count = segments.len();
            segments.values().take(count - 1).cloned().collect()
        };
        let mut remaining = self.size_bytes();
        for segment in candidates {
            let too_old = self.config.retention_ms.is_some_and(|retention| {
                segment.max_timestamp(self.storage.as_ref()) < now_ms - retention
            });
            let too_big = self
                .config
                .retention_bytes
                .is_some_and(|limit| remaining > limit);
            if !(too_old || too_big) {
                break;
            }
            let end = segment.next_offset();
            if let Some(keep_from) = keep_from
                && end > keep_from
            {
                if !force {
                    break;
                }
                let lost_from = keep_from.max(segment.base_offset);
                let range = outcome.dropped_uncommitted.get_or_insert((lost_from, end));
                range.1 = end;
            }
            self.segments.write().unwrap().remove(&segment.base_offset);
            for suffix in [LOG_SUFFIX, OFFSET_INDEX_SUFFIX, TIME_INDEX_SUFFIX] {
                let _ =
                    self.storage
                        .remove_file(&segment_path(&self.dir, segment.base_offset, suffix));
            }
            remaining -= segment.len();
            self.used_bytes.fetch_sub(segment.len(), Ordering::SeqCst);
            outcome.deleted_segments += 1;
            outcome.deleted_bytes += segment.len();
        }
        if outcome.deleted_segments > 0 {
            let _ = self.storage.sync_dir(&self.dir);
        }
        outcome
    }
}

fn io_append_error(error: &std::io::Error) -> AppendError {
    if is_disk_full(error) {
        AppendError::DiskFull(error.to_string())
    } else {
        AppendError::Io(error.to_string())
    }
}

fn parse_key_snapshot_name(name: &str) -> Option<i64> {
    name.strip_prefix(KEYS_PREFIX)?
        .strip_suffix(KEYS_SUFFIX)?
        .parse()
        .ok()
}

/// Loads the newest readable key snapshot; returns the offset it covers to.
fn load_key_snapshot(
    storage: &dyn Storage,
    dir: &Path,
    names: &[String],
    keys: &mut KeyWindow,
    now: i64,
) -> Option<i64> {
    let mut snapshots: Vec<(i64, &String)> = names
        .iter()
        .filter_map(|name| Some((parse_key_snapshot_name(name)?, name)))
        .collect();
    snapshots.sort_unstable();
    for (_, name) in snapshots.iter().rev() {
        let Ok(bytes) = storage.read_whole(&dir.join(name)) else {
            continue;
        };
        let mut candidate = KeyWindow::new(usize::MAX, i64::MAX);
        if candidate.decode_snapshot(&bytes, now).is_some() {
            return keys.decode_snapshot(&bytes, now);
        }
        tracing::warn!(snapshot = %dir.join(name).display(), "ignoring a damaged batch key snapshot");
    }
    None
}

fn insert_keys(keys: &mut KeyWindow, found: Vec<(String, KeyEntry)>, from: i64, now: i64) {
    for (key, entry) in found {
        if entry.base_offset >= from {
            keys.insert(key, entry, now);
        }
    }
}

/// Index files whose segment is gone (a crash during retention) and
/// temporary files of an interrupted snapshot.
fn remove_orphans(storage: &dyn Storage, dir: &Path, names: &[String], bases: &[i64]) {
    for name in names {
        let base = name
            .strip_suffix(OFFSET_INDEX_SUFFIX)
            .or_else(|| name.strip_suffix(TIME_INDEX_SUFFIX))
            .and_then(|digits| digits.parse::<i64>().ok());
        let orphan_index = base.is_some_and(|base| !bases.contains(&base));
        if orphan_index || name.ends_with(".tmp") {
            let _ = storage.remove_file(&dir.join(name));
        }
    }
}
