//! One segment: a file of whole batches, named by its base offset, with a
//! sparse offset index and a time index beside it.
//!
//! The indexes are hints, never truth: they are rebuilt from the segment when
//! they are missing or fail their sanity checks, and every read checks the
//! batch it lands on.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};

use crate::batch::{self, BatchError, BatchView, HEADER_BYTES};
use crate::limits::{
    INDEX_INTERVAL_BYTES, OFFSET_INDEX_ENTRY_BYTES, READ_CHUNK_BYTES, TIME_INDEX_ENTRY_BYTES,
};
use crate::storage::{OpenMode, Storage, StorageFile};

pub(crate) const LOG_SUFFIX: &str = ".log";
pub(crate) const OFFSET_INDEX_SUFFIX: &str = ".index";
pub(crate) const TIME_INDEX_SUFFIX: &str = ".timeindex";

pub(crate) fn segment_path(dir: &Path, base_offset: i64, suffix: &str) -> PathBuf {
    dir.join(format!("{base_offset:020}{suffix}"))
}

/// Parses `00000000000000001234.log` into 1234.
pub(crate) fn parse_segment_name(name: &str) -> Option<i64> {
    let digits = name.strip_suffix(LOG_SUFFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

#[derive(Clone, Debug, Default)]
pub(crate) struct Index {
    /// (offset relative to the segment base, byte position of the batch holding it)
    pub offsets: Vec<(u32, u32)>,
    /// (max timestamp so far, relative offset of the batch that reached it)
    pub times: Vec<(i64, u32)>,
}

impl Index {
    /// Where to start scanning for `relative_offset`: the entry's relative
    /// offset (the base of the batch found there) and its byte position.
    pub fn entry_for_offset(&self, relative_offset: u32) -> (u32, u32) {
        let at = self
            .offsets
            .partition_point(|&(offset, _)| offset <= relative_offset);
        if at == 0 {
            (0, 0)
        } else {
            self.offsets[at - 1]
        }
    }

    /// The relative offset to start scanning at for the first batch whose
    /// timestamp is at least `timestamp_ms`.
    pub fn offset_for_time(&self, timestamp_ms: i64) -> u32 {
        let at = self.times.partition_point(|&(time, _)| time < timestamp_ms);
        if at == 0 { 0 } else { self.times[at - 1].1 }
    }

    fn encode_offsets(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.offsets.len() * OFFSET_INDEX_ENTRY_BYTES);
        for (offset, position) in &self.offsets {
            out.extend_from_slice(&offset.to_be_bytes());
            out.extend_from_slice(&position.to_be_bytes());
        }
        out
    }

    fn encode_times(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.times.len() * TIME_INDEX_ENTRY_BYTES);
        for (time, offset) in &self.times {
            out.extend_from_slice(&time.to_be_bytes());
            out.extend_from_slice(&offset.to_be_bytes());
        }
        out
    }

    /// Decodes both index files; `None` when either fails a sanity check
    /// (torn length, entries out of order, a position past the segment).
    fn decode(offsets: &[u8], times: &[u8], segment_len: u64) -> Option<Index> {
        if !offsets.len().is_multiple_of(OFFSET_INDEX_ENTRY_BYTES)
            || !times.len().is_multiple_of(TIME_INDEX_ENTRY_BYTES)
        {
            return None;
        }
        let mut index = Index::default();
        for entry in offsets.chunks_exact(OFFSET_INDEX_ENTRY_BYTES) {
            let offset = u32::from_be_bytes(entry[..4].try_into().ok()?);
            let position = u32::from_be_bytes(entry[4..].try_into().ok()?);
            if let Some(&(last_offset, last_position)) = index.offsets.last()
                && (offset <= last_offset || position <= last_position)
            {
                return None;
            }
            if u64::from(position) >= segment_len {
                return None;
            }
            index.offsets.push((offset, position));
        }
        for entry in times.chunks_exact(TIME_INDEX_ENTRY_BYTES) {
            let time = i64::from_be_bytes(entry[..8].try_into().ok()?);
            let offset = u32::from_be_bytes(entry[8..].try_into().ok()?);
            if let Some(&(last_time, last_offset)) = index.times.last()
                && (time < last_time || offset < last_offset)
            {
                return None;
            }
            index.times.push((time, offset));
        }
        Some(index)
    }
}

/// What a scan of a segment found.
pub(crate) struct ScanOutcome {
    /// Bytes of whole, valid batches from the start.
    pub valid_len: u64,
    pub next_offset: i64,
    pub max_timestamp: i64,
    pub index: Index,
    /// Where the scan stopped before the end of the file, and why.
    pub stopped: Option<ScanStop>,
    /// Batch keys seen, with the batch's offsets and append time, in order.
    pub keys: Vec<(String, crate::dedup::KeyEntry)>,
}

#[derive(Debug)]
pub(crate) struct ScanStop {
    pub position: u64,
    pub offset: i64,
    pub error: BatchError,
    /// Where the first whole, valid batch after the bad one starts, if any:
    /// then the damage is in the middle of the data, not a torn tail.
    pub resume_at: Option<u64>,
}

pub(crate) struct Segment {
    pub base_offset: i64,
    pub path: PathBuf,
    pub file: Arc<dyn StorageFile>,
    /// Bytes of whole batches written. Only the partition's writer changes it.
    pub len: AtomicU64,
    /// One past the last offset written.
    pub next_offset: AtomicI64,
    pub max_timestamp: AtomicI64,
    /// When the segment was created (ms), for rolling by age.
    pub created_ms: AtomicI64,
    /// The active segment's index is kept here as it grows; a sealed segment's
    /// is loaded from its files when first needed.
    pub live_index: Mutex<Option<LiveIndex>>,
    pub sealed_index: OnceLock<Index>,
    /// How far the file is zero-filled ahead of the data (fsync topics only).
    pub zero: Mutex<ZeroFill>,
    pub zero_done: Condvar,
}

#[derive(Debug, Default)]
pub(crate) struct ZeroFill {
    /// Bytes of the file known to be allocated and synced: data, then zeros.
    pub filled: u64,
    /// Someone (the appender or the background thread) is filling past `filled`.
    pub filling: bool,
    /// No more filling: the segment is sealed or closed and its end trimmed.
    pub sealed: bool,
}

pub(crate) struct LiveIndex {
    pub index: Index,
    pub bytes_since_entry: u64,
}

impl Segment {
    pub fn new_active(
        storage: &dyn Storage,
        dir: &Path,
        base_offset: i64,
        created_ms: i64,
    ) -> std::io::Result<Segment> {
        let path = segment_path(dir, base_offset, LOG_SUFFIX);
        let file = storage.open(&path, OpenMode::Create)?;
        Ok(Segment {
            base_offset,
            path,
            file,
            len: AtomicU64::new(0),
            next_offset: AtomicI64::new(base_offset),
            max_timestamp: AtomicI64::new(i64::MIN),
            created_ms: AtomicI64::new(created_ms),
            live_index: Mutex::new(Some(LiveIndex {
                index: Index::default(),
                bytes_since_entry: 0,
            })),
            sealed_index: OnceLock::new(),
            zero: Mutex::default(),
            zero_done: Condvar::new(),
        })
    }

    /// A segment found on disk whose end is known (the next segment's base).
    pub fn open_sealed(
        storage: &dyn Storage,
        dir: &Path,
        base_offset: i64,
        next_offset: i64,
        mode: OpenMode,
    ) -> std::io::Result<Segment> {
        let path = segment_path(dir, base_offset, LOG_SUFFIX);
        let file = storage.open(&path, mode)?;
        let len = file.len()?;
        Ok(Segment {
            base_offset,
            path,
            file,
            len: AtomicU64::new(len),
            next_offset: AtomicI64::new(next_offset),
            max_timestamp: AtomicI64::new(i64::MIN),
            created_ms: AtomicI64::new(0),
            live_index: Mutex::new(None),
            sealed_index: OnceLock::new(),
            zero: Mutex::new(ZeroFill {
                filled: len,
                filling: false,
                sealed: false,
            }),
            zero_done: Condvar::new(),
        })
    }

    /// The append time of the first batch, which is when a reopened active
    /// segment began (for rolling by age); `None` for an empty segment.
    pub fn first_timestamp(&self) -> Option<i64> {
        let mut header = [0u8; HEADER_BYTES];
        let read = self.file.read_full_at(&mut header, 0).ok()?;
        let view = BatchView::parse(&header[..read]).ok();
        // A header-only parse needs the whole batch; the fields it checks
        // first (length, magic) are enough to know a batch starts here.
        let starts_batch = view.is_some()
            || (read == HEADER_BYTES
                && header[batch::MAGIC_AT] == batch::MAGIC
                && header[..12] != [0; 12]);
        starts_batch.then(|| {
            let at = batch::BASE_TIMESTAMP_AT;
            i64::from_be_bytes(header[at..at + 8].try_into().expect("8 bytes"))
        })
    }

    pub fn len(&self) -> u64 {
        self.len.load(Ordering::Acquire)
    }

    pub fn next_offset(&self) -> i64 {
        self.next_offset.load(Ordering::Acquire)
    }

    /// Records a batch just written at `position`.
    pub fn note_append(&self, position: u64, batch: &BatchView<'_>) {
        let relative = (batch.base_offset() - self.base_offset) as u32;
        let mut live = self.live_index.lock().unwrap();
        let live = live
            .as_mut()
            .expect("appends go to the active segment only");
        let due = live.index.offsets.is_empty() || live.bytes_since_entry >= INDEX_INTERVAL_BYTES;
        if due {
            live.index.offsets.push((relative, position as u32));
            let newer = live
                .index
                .times
                .last()
                .is_none_or(|&(time, _)| batch.max_timestamp() > time);
            if newer {
                live.index.times.push((batch.max_timestamp(), relative));
            }
            live.bytes_since_entry = 0;
        }
        live.bytes_since_entry += batch.len_bytes() as u64;
        self.max_timestamp
            .fetch_max(batch.max_timestamp(), Ordering::AcqRel);
        self.len
            .store(position + batch.len_bytes() as u64, Ordering::Release);
        self.next_offset
            .store(batch.next_offset(), Ordering::Release);
    }

    /// The index to search: the live one for the active segment, else the
    /// sealed one, loaded (or rebuilt) on first use.
    pub fn index_snapshot<R>(
        &self,
        storage: &dyn Storage,
        use_index: impl FnOnce(&Index) -> R,
    ) -> R {
        if let Some(live) = self.live_index.lock().unwrap().as_ref() {
            return use_index(&live.index);
        }
        let index = self
            .sealed_index
            .get_or_init(|| self.load_or_rebuild_index(storage));
        use_index(index)
    }

    fn load_or_rebuild_index(&self, storage: &dyn Storage) -> Index {
        let dir = self.path.parent().expect("segments live in a directory");
        let read = |suffix: &str| {
            storage
                .read_whole(&segment_path(dir, self.base_offset, suffix))
                .ok()
        };
        if let (Some(offsets), Some(times)) = (read(OFFSET_INDEX_SUFFIX), read(TIME_INDEX_SUFFIX))
            && let Some(index) = Index::decode(&offsets, &times, self.len())
        {
            return index;
        }
        tracing::info!(segment = %self.path.display(), "rebuilding the segment's index");
        match scan(self.file.as_ref(), self.base_offset, self.len(), false) {
            Ok(outcome) => outcome.index,
            // An unreadable segment gets an empty index: reads then scan from
            // the start and report the error where they meet it.
            Err(_) => Index::default(),
        }
    }

    /// The newest append time in the segment, from the last time index entry
    /// (or a scan when the index has none).
    pub fn max_timestamp(&self, storage: &dyn Storage) -> i64 {
        let known = self.max_timestamp.load(Ordering::Acquire);
        if known != i64::MIN {
            return known;
        }
        // The index is sparse: batches after its last entry may be newer, so
        // the scan starts there rather than trusting the entry.
        let from = self.index_snapshot(storage, |index| {
            index
                .offsets
                .last()
                .map_or(0, |&(_, position)| u64::from(position))
        });
        let found = scan_from(
            self.file.as_ref(),
            self.base_offset,
            from,
            self.len(),
            false,
        )
        .map(|outcome| outcome.max_timestamp)
        .unwrap_or(i64::MIN);
        self.max_timestamp.store(found, Ordering::Release);
        found
    }

    /// Writes the index files of a segment that takes no more appends.
    pub fn write_index_files(&self, storage: &dyn Storage) -> std::io::Result<()> {
        let index = match self.live_index.lock().unwrap().as_ref() {
            Some(live) => live.index.clone(),
            None => return Ok(()),
        };
        let dir = self.path.parent().expect("segments live in a directory");
        for (suffix, bytes) in [
            (OFFSET_INDEX_SUFFIX, index.encode_offsets()),
            (TIME_INDEX_SUFFIX, index.encode_times()),
        ] {
            let file = storage.open(
                &segment_path(dir, self.base_offset, suffix),
                OpenMode::Create,
            )?;
            file.set_len(0)?;
            file.write_all_at(&bytes, 0)?;
            file.sync_data()?;
        }
        Ok(())
    }

    /// Stops zero-filling (waiting for a fill under way) and trims the file
    /// to its data, so a sealed or closed segment ends with its last batch.
    pub fn trim(&self) -> std::io::Result<()> {
        let mut zero = self.zero.lock().unwrap();
        while zero.filling {
            zero = self.zero_done.wait(zero).unwrap();
        }
        zero.sealed = true;
        zero.filled = self.len();
        self.file.set_len(self.len())
    }

    /// Turns the active segment into a sealed one: its index moves to where
    /// sealed indexes are looked up.
    pub fn seal(&self) {
        if let Some(live) = self.live_index.lock().unwrap().take() {
            let _ = self.sealed_index.set(live.index);
        }
    }

    /// Restores an active segment from a scan after an unclean shutdown.
    pub fn restore_active(&self, outcome: &ScanOutcome) {
        self.len.store(outcome.valid_len, Ordering::Release);
        self.zero.lock().unwrap().filled = outcome.valid_len;
        self.next_offset
            .store(outcome.next_offset, Ordering::Release);
        self.max_timestamp
            .store(outcome.max_timestamp, Ordering::Release);
        let bytes_since_entry = outcome.valid_len
            - outcome
                .index
                .offsets
                .last()
                .map(|&(_, position)| u64::from(position))
                .unwrap_or(0);
        *self.live_index.lock().unwrap() = Some(LiveIndex {
            index: outcome.index.clone(),
            bytes_since_entry,
        });
    }

    /// Appends index entries found by a scan that resumed past damage.
    pub fn extend_live_index(&self, more: &Index) {
        if let Some(live) = self.live_index.lock().unwrap().as_mut() {
            live.index.offsets.extend_from_slice(&more.offsets);
            live.index.times.extend_from_slice(&more.times);
        }
    }

    /// Restores an active segment after a clean shutdown: its length, end and
    /// index come from the files without reading every batch.
    pub fn restore_active_clean(&self, storage: &dyn Storage) -> Result<(), BatchError> {
        let index = self.load_or_rebuild_index(storage);
        // The end offset: scan the batches after the last index entry only.
        let from = index
            .offsets
            .last()
            .map(|&(_, position)| u64::from(position))
            .unwrap_or(0);
        let tail = scan_from(
            self.file.as_ref(),
            self.base_offset,
            from,
            self.len(),
            false,
        )
        .map_err(|error| BatchError::Decompression(error.to_string()))?;
        if let Some(stop) = tail.stopped {
            return Err(stop.error);
        }
        // An index entry always points at a batch, so a tail scan from one that
        // finds nothing means the index lies; an empty segment has no entry.
        if from > 0 && tail.valid_len == from {
            return Err(BatchError::TooShort(0));
        }
        self.next_offset.store(tail.next_offset, Ordering::Release);
        let max_timestamp = tail
            .max_timestamp
            .max(index.times.last().map_or(i64::MIN, |&(t, _)| t));
        self.max_timestamp.store(max_timestamp, Ordering::Release);
        *self.live_index.lock().unwrap() = Some(LiveIndex {
            index,
            bytes_since_entry: self.len() - from,
        });
        Ok(())
    }
}

/// Reads every batch of a segment from the start, checking each one's header
/// and CRC, and rebuilds the index as it goes.
pub(crate) fn scan(
    file: &dyn StorageFile,
    base_offset: i64,
    len: u64,
    collect_keys: bool,
) -> std::io::Result<ScanOutcome> {
    scan_from(file, base_offset, 0, len, collect_keys)
}

/// Scans from byte `from` (a batch boundary) to `len`.
pub(crate) fn scan_from(
    file: &dyn StorageFile,
    base_offset: i64,
    from: u64,
    len: u64,
    collect_keys: bool,
) -> std::io::Result<ScanOutcome> {
    let mut outcome = ScanOutcome {
        valid_len: from,
        next_offset: base_offset,
        max_timestamp: i64::MIN,
        index: Index::default(),
        stopped: None,
        keys: Vec::new(),
    };
    let mut reader = ChunkReader::new(file, from, len);
    let mut bytes_since_entry = INDEX_INTERVAL_BYTES;
    // From the start of a segment the first batch must begin at its base.
    let mut expected_offset: Option<i64> = (from == 0).then_some(base_offset);
    loop {
        let position = reader.position();
        if position >= len {
            break;
        }
        let batch_bytes = match reader.next_batch()? {
            Ok(bytes) => bytes,
            Err(error) => {
                let offset = expected_offset.unwrap_or(base_offset);
                let resume_at = find_valid_batch_after(file, position, len, offset)?;
                outcome.stopped = Some(ScanStop {
                    position,
                    offset,
                    error,
                    resume_at,
                });
                break;
            }
        };
        let view = BatchView::parse(batch_bytes).expect("next_batch returns parsed batches");
        let checked = view.verify_crc().and_then(|()| {
            let in_sequence = expected_offset.is_none_or(|expected| view.base_offset() == expected)
                && view.base_offset() >= base_offset
                && view.last_offset() - base_offset <= u32::MAX as i64;
            if in_sequence {
                Ok(())
            } else {
                Err(BatchError::MalformedRecord {
                    index: 0,
                    reason: "batch offset out of sequence",
                })
            }
        });
        let size = view.len_bytes() as u64;
        if let Err(error) = checked {
            let offset = expected_offset.unwrap_or(view.base_offset());
            let resume_at = find_valid_batch_after(file, position, len, offset)?;
            outcome.stopped = Some(ScanStop {
                position,
                offset,
                error,
                resume_at,
            });
            break;
        }
        let relative = (view.base_offset() - base_offset) as u32;
        if bytes_since_entry >= INDEX_INTERVAL_BYTES {
            outcome.index.offsets.push((relative, position as u32));
            if outcome
                .index
                .times
                .last()
                .is_none_or(|&(time, _)| view.max_timestamp() > time)
            {
                outcome.index.times.push((view.max_timestamp(), relative));
            }
            bytes_since_entry = 0;
        }
        bytes_since_entry += size;
        if collect_keys
            && let Ok(records) = view.records()
            && let Ok(Some(key)) = view.batch_key_in(&records)
        {
            let entry = crate::dedup::KeyEntry {
                base_offset: view.base_offset(),
                last_offset: view.last_offset(),
                append_ms: view.max_timestamp(),
                fingerprint: view.fingerprint_in(&records).ok().flatten(),
            };
            outcome.keys.push((key, entry));
        }
        outcome.max_timestamp = outcome.max_timestamp.max(view.max_timestamp());
        outcome.next_offset = view.next_offset();
        expected_offset = Some(view.next_offset());
        outcome.valid_len = position + size;
        reader.advance(size as usize);
    }
    Ok(outcome)
}

/// Whether every byte of `file` from `from` to `end` is zero: the unused,
/// zero-filled end of an active segment rather than a torn batch.
pub(crate) fn is_zero_filled(file: &dyn StorageFile, from: u64, end: u64) -> std::io::Result<bool> {
    let mut buffer = vec![0u8; READ_CHUNK_BYTES];
    let mut position = from;
    while position < end {
        let wanted = ((end - position) as usize).min(buffer.len());
        let read = file.read_full_at(&mut buffer[..wanted], position)?;
        if read == 0 {
            break;
        }
        if buffer[..read].iter().any(|&byte| byte != 0) {
            return Ok(false);
        }
        position += read as u64;
    }
    Ok(true)
}

/// Reads a segment in large chunks and hands out whole batches from them.
pub(crate) struct ChunkReader<'a> {
    file: &'a dyn StorageFile,
    buffer: Vec<u8>,
    /// File position of `buffer[0]`.
    buffer_at: u64,
    /// Read cursor inside `buffer`.
    cursor: usize,
    end: u64,
}

impl<'a> ChunkReader<'a> {
    pub fn new(file: &'a dyn StorageFile, from: u64, end: u64) -> ChunkReader<'a> {
        ChunkReader {
            file,
            buffer: Vec::new(),
            buffer_at: from,
            cursor: 0,
            end,
        }
    }

    pub fn position(&self) -> u64 {
        self.buffer_at + self.cursor as u64
    }

    /// Makes at least `wanted` bytes available at the cursor, unless the end comes first.
    fn fill(&mut self, wanted: usize) -> std::io::Result<()> {
        let available = self.buffer.len() - self.cursor;
        if available >= wanted {
            return Ok(());
        }
        let position = self.position();
        let to_read = (wanted.max(READ_CHUNK_BYTES) as u64).min(self.end - position) as usize;
        let mut buffer = std::mem::take(&mut self.buffer);
        buffer.drain(..self.cursor);
        let kept = buffer.len();
        if to_read > kept {
            buffer.resize(to_read, 0);
            let read = self
                .file
                .read_full_at(&mut buffer[kept..], position + kept as u64)?;
            buffer.truncate(kept + read);
        }
        self.buffer = buffer;
        self.buffer_at = position;
        self.cursor = 0;
        Ok(())
    }

    /// The next batch's bytes, with its header parsed (not its CRC checked).
    /// The inner error says why no batch starts at the cursor.
    pub fn next_batch(&mut self) -> std::io::Result<Result<&[u8], BatchError>> {
        self.fill(HEADER_BYTES)?;
        let available = &self.buffer[self.cursor..];
        let total = match batch::batch_len_from_prefix(available) {
            Ok(total) => total,
            Err(error) => return Ok(Err(error)),
        };
        self.fill(total)?;
        let available = &self.buffer[self.cursor..];
        Ok(BatchView::parse(available).map(|view| view.as_bytes()))
    }

    pub fn advance(&mut self, bytes: usize) {
        self.cursor += bytes;
    }
}

/// The position of the first whole batch with a valid CRC that starts after
/// `from` and holds offsets above `after_offset`: the evidence that damage at
/// `from` lies inside the data rather than at a torn tail. Searched byte by
/// byte, since the damage may have broken the framing, and only when a scan
/// stops; a zero-filled end is passed over quickly (its magic byte is 0).
fn find_valid_batch_after(
    file: &dyn StorageFile,
    from: u64,
    end: u64,
    after_offset: i64,
) -> std::io::Result<Option<u64>> {
    let mut buffer = vec![0u8; READ_CHUNK_BYTES + HEADER_BYTES];
    let mut start = from + 1;
    while start + HEADER_BYTES as u64 <= end {
        let wanted = ((end - start) as usize).min(buffer.len());
        let read = file.read_full_at(&mut buffer[..wanted], start)?;
        if read < HEADER_BYTES {
            break;
        }
        let candidates = read - HEADER_BYTES + 1;
        for at in 0..candidates {
            let header = &buffer[at..at + HEADER_BYTES];
            if header[batch::MAGIC_AT] != batch::MAGIC {
                continue;
            }
            let Ok(total) = batch::batch_len_from_prefix(header) else {
                continue;
            };
            let base = i64::from_be_bytes(header[..8].try_into().expect("8 bytes"));
            let position = start + at as u64;
            if base <= after_offset || position + total as u64 > end {
                continue;
            }
            let mut whole = vec![0u8; total];
            if file.read_full_at(&mut whole, position)? == total
                && BatchView::parse(&whole).is_ok_and(|view| view.verify_crc().is_ok())
            {
                return Ok(Some(position));
            }
        }
        start += candidates as u64;
    }
    Ok(None)
}
