//! The log against a disk that fails: full, short writes, failed fsync, and
//! power loss at any moment, through the simulated storage behind its seam.

use crate::common;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use common::{keyed_batch, options, read_all};
use nublar_log::storage::Storage;
use nublar_log::storage::sim::SimStorage;
use nublar_log::{AppendError, Durability, Log, ManualClock, ReadError, TopicConfig};
use proptest::prelude::*;

const DIR: &str = "/data/log";

fn sim_log(storage: &SimStorage, clock: &Arc<ManualClock>) -> Log {
    Log::open_with(DIR, options(Arc::new(storage.clone()), clock.clone())).unwrap()
}

fn topics(log: &Log) {
    let small = TopicConfig {
        segment_bytes: 64 * 1024,
        ..TopicConfig::default()
    };
    // The fsync topic zero-fills ahead, so faults meet that path too.
    log.create_topic(
        "sync",
        TopicConfig {
            zero_fill: true,
            ..small.clone()
        },
    )
    .unwrap();
    log.create_topic(
        "loose",
        TopicConfig {
            durability: Durability::None,
            ..small
        },
    )
    .unwrap();
}

#[test]
fn a_full_disk_fails_the_append_cleanly_and_appends_resume_when_space_returns() {
    let storage = SimStorage::new();
    let clock = Arc::new(ManualClock::new(0));
    let log = sim_log(&storage, &clock);
    topics(&log);
    log.append("sync", 0, keyed_batch(None, &["before"]))
        .unwrap();
    storage.faults.limit_space(30);
    // The segment is zero-filled ahead of its end, so the disk runs out when
    // appends reach the end of that region: before a batch is written.
    let value = "x".repeat(20_000);
    let mut accepted = 1;
    let error = loop {
        match log.append("sync", 0, keyed_batch(None, &[value.as_str()])) {
            Ok(_) => accepted += 1,
            Err(error) => break error,
        }
        assert!(accepted < 200, "the disk never filled");
    };
    assert!(matches!(error, AppendError::DiskFull(_)), "{error}");
    assert_eq!(
        log.end_offset("sync", 0).unwrap(),
        accepted,
        "no partial batch is visible"
    );
    assert!(
        log.stopped_partitions().is_empty(),
        "a full disk does not stop the partition"
    );
    assert!(matches!(
        log.append("sync", 0, keyed_batch(None, &[value.as_str()])),
        Err(AppendError::DiskFull(_))
    ));
    storage.faults.unlimited_space();
    let outcome = log
        .append("sync", 0, keyed_batch(None, &["after"]))
        .unwrap();
    assert_eq!(outcome.base_offset, accepted);
    drop(log);
    storage.crash(7);
    let log = sim_log(&storage, &clock);
    let values: Vec<String> = read_all(&log, "sync", 0, 0)
        .into_iter()
        .map(|(_, value)| value)
        .collect();
    assert_eq!(values.len() as i64, accepted + 1);
    assert_eq!(
        (values[0].as_str(), values[accepted as usize].as_str()),
        ("before", "after")
    );
}

/// Found by the deterministic simulation (`nublar-dst`, seed 118): a sync fails keeping its
/// pages, the durable mark cannot be written either, the process restarts while the machine
/// stays up, and the retried request must not be answered with offsets the disk never held.
#[test]
fn a_restart_after_a_failed_sync_and_a_failed_mark_serves_nothing_the_disk_never_held() {
    let storage = SimStorage::new();
    let clock = Arc::new(ManualClock::new(0));
    let log = sim_log(&storage, &clock);
    topics(&log);
    log.append("sync", 0, keyed_batch(Some("first"), &["one"]))
        .unwrap();
    // The zero-filled segment has room for the batch, so only the mark needs new space.
    storage.faults.limit_space(0);
    storage
        .faults
        .fail_next_sync_keeping_pages
        .store(true, Ordering::SeqCst);
    let refused = log.append("sync", 0, keyed_batch(Some("second"), &["two"]));
    assert!(
        matches!(refused, Err(AppendError::PartitionStopped { .. })),
        "{refused:?}"
    );
    drop(log);
    storage.faults.unlimited_space();

    // The process starts again; the page cache still holds "two", marked clean.
    let log = sim_log(&storage, &clock);
    let retried = log
        .append("sync", 0, keyed_batch(Some("second"), &["two"]))
        .unwrap();
    assert!(
        !retried.deduplicated,
        "the retry was answered with offsets only the page cache held"
    );
    drop(log);
    storage.crash(3);
    let log = sim_log(&storage, &clock);
    let values: Vec<String> = read_all(&log, "sync", 0, 0)
        .into_iter()
        .map(|(_, value)| value)
        .collect();
    assert_eq!(values, ["one", "two"]);
}

#[test]
fn the_zero_filled_end_is_trimmed_at_recovery_and_not_taken_for_a_torn_batch() {
    let storage = SimStorage::new();
    let clock = Arc::new(ManualClock::new(0));
    let log = sim_log(&storage, &clock);
    topics(&log);
    log.append("sync", 0, keyed_batch(None, &["one", "two"]))
        .unwrap();
    let data_len = log.partition_info("sync", 0).unwrap().size_bytes;
    let segment = Path::new(DIR).join("topics/sync/0/00000000000000000000.log");
    assert!(
        storage.read_file(&segment).unwrap().len() as u64 > data_len,
        "zero-filled ahead"
    );
    drop(log);
    let log = sim_log(&storage, &clock);
    assert_eq!(
        storage.read_file(&segment).unwrap().len() as u64,
        data_len,
        "trimmed to the data"
    );
    assert_eq!(
        log.partition_info("sync", 0).unwrap().truncated_bytes_total,
        0,
        "zeros are not a torn batch"
    );
    assert_eq!(read_all(&log, "sync", 0, 0).len(), 2);
}

#[test]
fn a_failed_fsync_stops_the_partition_and_says_why() {
    let storage = SimStorage::new();
    let clock = Arc::new(ManualClock::new(0));
    let log = sim_log(&storage, &clock);
    topics(&log);
    log.append("sync", 0, keyed_batch(None, &["durable"]))
        .unwrap();
    storage.faults.fail_next_sync.store(true, Ordering::SeqCst);
    let error = log
        .append("sync", 0, keyed_batch(None, &["lost"]))
        .unwrap_err();
    assert!(
        matches!(&error, AppendError::PartitionStopped { reason, .. } if reason.contains("fdatasync"))
    );
    // Not retried as if nothing happened: later appends are refused too.
    assert!(matches!(
        log.append("sync", 0, keyed_batch(None, &["no"])),
        Err(AppendError::PartitionStopped { .. })
    ));
    let stopped = log.stopped_partitions();
    assert_eq!(stopped.len(), 1);
    assert_eq!((stopped[0].0.as_str(), stopped[0].1), ("sync", 0));
    // Other partitions go on, and durable data stays readable.
    log.append("loose", 0, keyed_batch(None, &["fine"]))
        .unwrap();
    assert_eq!(
        read_all(&log, "sync", 0, 0),
        vec![(0, "durable".to_string())]
    );
}

/// A log whose fsync topic holds one durable record and then stopped at a failed sync of
/// a second, the way ext4 fails one: the failed pages stay readable, and the next sync
/// says all is well. The process has ended; the page cache still holds the second record.
fn stopped_at_a_failed_sync() -> (SimStorage, Arc<ManualClock>) {
    let storage = SimStorage::new();
    let clock = Arc::new(ManualClock::new(0));
    let log = sim_log(&storage, &clock);
    topics(&log);
    log.append("sync", 0, keyed_batch(None, &["durable"]))
        .unwrap();
    storage
        .faults
        .fail_next_sync_keeping_pages
        .store(true, Ordering::SeqCst);
    assert!(matches!(
        log.append("sync", 0, keyed_batch(None, &["never on disk"])),
        Err(AppendError::PartitionStopped { .. })
    ));
    (storage, clock)
}

#[test]
fn after_a_failed_fsync_the_next_start_keeps_only_what_was_durable() {
    let (storage, clock) = stopped_at_a_failed_sync();
    // A restart, not a power cut.
    let log = sim_log(&storage, &clock);
    assert_eq!(
        read_all(&log, "sync", 0, 0),
        vec![(0, "durable".to_string())],
        "what only the page cache held is not served"
    );
    assert!(log.stopped_partitions().is_empty());
    assert!(log.partition_info("sync", 0).unwrap().truncated_bytes_total > 0);
    let after = log
        .append("sync", 0, keyed_batch(None, &["acknowledged after"]))
        .unwrap();
    assert_eq!(after.base_offset, 1);
    drop(log);
    // Whatever a power cut leaves, every offset served and acknowledged stays.
    for seed in 0..20 {
        let copy = storage.clone();
        copy.crash(seed);
        let log = sim_log(&copy, &clock);
        assert_eq!(
            read_all(&log, "sync", 0, 0),
            vec![
                (0, "durable".to_string()),
                (1, "acknowledged after".to_string())
            ],
            "seed {seed}"
        );
        drop(log);
    }
}

#[test]
fn a_second_failed_start_still_keeps_only_what_was_durable() {
    let (storage, clock) = stopped_at_a_failed_sync();
    // The recovery's own sync fails: the mark must survive for the start after.
    storage.faults.fail_next_sync.store(true, Ordering::SeqCst);
    let log = sim_log(&storage, &clock);
    assert_eq!(log.stopped_partitions().len(), 1);
    drop(log);
    let log = sim_log(&storage, &clock);
    assert_eq!(
        read_all(&log, "sync", 0, 0),
        vec![(0, "durable".to_string())]
    );
}

#[test]
fn short_writes_still_append_whole_batches() {
    let storage = SimStorage::new();
    storage.faults.short_writes.store(true, Ordering::SeqCst);
    let clock = Arc::new(ManualClock::new(0));
    let log = sim_log(&storage, &clock);
    topics(&log);
    let mut expected = Vec::new();
    for index in 0..200 {
        let value = format!("{index}-{}", "w".repeat(index * 7 % 900));
        log.append("sync", 0, keyed_batch(None, &[&value])).unwrap();
        expected.push((index as i64, value));
    }
    assert_eq!(read_all(&log, "sync", 0, 0), expected);
    drop(log);
    storage.crash(3);
    assert_eq!(read_all(&sim_log(&storage, &clock), "sync", 0, 0), expected);
}

/// A simulated log whose fsync topic holds `count` one-record batches.
fn with_records(count: usize) -> (SimStorage, Arc<ManualClock>, Log) {
    let storage = SimStorage::new();
    let clock = Arc::new(ManualClock::new(0));
    let log = sim_log(&storage, &clock);
    topics(&log);
    for index in 0..count {
        log.append("sync", 0, keyed_batch(None, &[&format!("record {index}")]))
            .unwrap();
    }
    (storage, clock, log)
}

#[test]
fn corruption_in_the_middle_of_the_active_segment_is_reported_not_truncated() {
    let (storage, clock, log) = with_records(10);
    let data_len = log.partition_info("sync", 0).unwrap().size_bytes as usize;
    drop(log);
    let segment = Path::new(DIR).join("topics/sync/0/00000000000000000000.log");
    let mut bytes = storage.read_file(&segment).unwrap();
    let original_len = bytes.len();
    // A bit of a record in the fifth batch flips; the batch's framing is intact.
    let batch_len = data_len / 10;
    bytes[batch_len * 4 + nublar_log::batch::HEADER_BYTES + 3] ^= 0x01;
    storage.overwrite_file(&segment, bytes);
    let log = sim_log(&storage, &clock);
    let stopped = log.stopped_partitions();
    assert_eq!(stopped.len(), 1, "the partition refuses writes");
    assert!(
        stopped[0].2.contains("corrupt batch at offset"),
        "{}",
        stopped[0].2
    );
    assert_eq!(
        storage.read_file(&segment).unwrap().len(),
        original_len,
        "nothing truncated"
    );
    let readable = log
        .read("sync", 0, 0, 1 << 20)
        .unwrap()
        .next_offset()
        .unwrap();
    assert!(
        matches!(log.read("sync", 0, readable, 100), Err(ReadError::Corruption { offset, .. }) if offset == readable)
    );
}

/// Damage that breaks a batch's framing (its magic byte) in the middle of
/// the active segment is still told from a torn tail: a valid batch follows.
#[test]
fn damaged_framing_in_the_middle_stops_the_partition_instead_of_truncating() {
    let (storage, clock, log) = with_records(10);
    let data_len = log.partition_info("sync", 0).unwrap().size_bytes as usize;
    drop(log);
    let segment = Path::new(DIR).join("topics/sync/0/00000000000000000000.log");
    let mut bytes = storage.read_file(&segment).unwrap();
    let length_before = bytes.len();
    bytes[data_len / 10 * 3 + nublar_log::batch::MAGIC_AT] = 7;
    storage.overwrite_file(&segment, bytes);
    let log = sim_log(&storage, &clock);
    assert_eq!(log.stopped_partitions().len(), 1);
    assert_eq!(
        storage.read_file(&segment).unwrap().len(),
        length_before,
        "nothing truncated"
    );
    assert_eq!(
        log.end_offset("sync", 0).unwrap(),
        10,
        "the batches after it stay readable"
    );
    assert!(matches!(
        log.read("sync", 0, 3, 100),
        Err(ReadError::Corruption { offset: 3, .. })
    ));
    assert_eq!(read_all(&log, "sync", 0, 4).len(), 6);
}

/// Damage in the last batch is a torn tail, unless a consumer group has
/// already committed past it: then it was acknowledged, and is not truncated.
#[test]
fn damage_below_a_committed_offset_is_never_truncated() {
    let (storage, clock, log) = with_records(5);
    log.commit("reader", &[("sync", 0, 5)]).unwrap();
    let data_len = log.partition_info("sync", 0).unwrap().size_bytes as usize;
    log.close().unwrap();
    let segment = Path::new(DIR).join("topics/sync/0/00000000000000000000.log");
    let mut bytes = storage.read_file(&segment).unwrap();
    bytes[data_len - 3] ^= 0x40;
    storage.overwrite_file(&segment, bytes);
    // Without the clean marker's short cut: the full recovery scan runs.
    storage
        .remove_file(&Path::new(DIR).join("topics/sync/0/clean-shutdown"))
        .unwrap();
    let log = sim_log(&storage, &clock);
    let stopped = log.stopped_partitions();
    assert_eq!(stopped.len(), 1);
    assert!(
        stopped[0].2.contains("committed past it"),
        "{}",
        stopped[0].2
    );
    assert_eq!(storage.read_file(&segment).unwrap().len(), data_len);
}

#[derive(Clone, Debug)]
enum Op {
    Append {
        topic: usize,
        records: usize,
        size: usize,
        key: Option<u8>,
    },
    Crash {
        seed: u64,
    },
    Close,
    FailNextSync,
    DiskFull {
        bytes: u64,
    },
    SpaceBack,
    ShortWrites(bool),
    Commit {
        offset_share: u8,
    },
    Tick {
        ms: i64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        12 => (0usize..2, 1usize..6, 1usize..3000, proptest::option::weighted(0.4, 0u8..12))
            .prop_map(|(topic, records, size, key)| Op::Append { topic, records, size, key }),
        2 => any::<u64>().prop_map(|seed| Op::Crash { seed }),
        1 => Just(Op::Close),
        1 => Just(Op::FailNextSync),
        1 => (0u64..4000).prop_map(|bytes| Op::DiskFull { bytes }),
        2 => Just(Op::SpaceBack),
        1 => any::<bool>().prop_map(Op::ShortWrites),
        1 => any::<u8>().prop_map(|offset_share| Op::Commit { offset_share }),
        1 => (0i64..120_000).prop_map(|ms| Op::Tick { ms }),
    ]
}

const TOPICS: [&str; 2] = ["sync", "loose"];

/// A batch written but not acknowledged: values, batch key, append time.
type Unconfirmed = (Vec<String>, Option<String>, i64);

/// What the log must hold: per topic, the acknowledged records, plus the
/// records written but not acknowledged as durable, which may or may not
/// survive a crash.
#[derive(Default)]
struct Model {
    acknowledged: [Vec<(i64, String)>; 2],
    unconfirmed: [Vec<Unconfirmed>; 2],
    keys: std::collections::HashMap<String, (i64, i64, i64)>,
    committed: Option<i64>,
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// Random appends, faults and power losses: after every reopen the
    /// acknowledged records of the fsync topic are all there, intact, exactly
    /// once and first; whatever else survived is a prefix of what was written
    /// after them; offsets never repeat; acknowledged batch keys are remembered.
    #[test]
    fn every_acknowledged_record_survives_any_crash(ops in proptest::collection::vec(op(), 1..60)) {
        let storage = SimStorage::new();
        let clock = Arc::new(ManualClock::new(1_000_000));
        let mut log = sim_log(&storage, &clock);
        topics(&log);
        let mut model = Model::default();
        let mut serial = 0usize;
        for op in ops {
            match op {
                Op::Append { topic, records, size, key } => {
                    serial += 1;
                    let values: Vec<String> = (0..records)
                        .map(|record| format!("{serial}/{record}/{}", "v".repeat(size / records)))
                        .collect();
                    let refs: Vec<&str> = values.iter().map(String::as_str).collect();
                    // Keys are checked on the fsync topic, whose acknowledgements are durable.
                    let key = key.filter(|_| topic == 0).map(|key| format!("key-{key}"));
                    match log.append(TOPICS[topic], 0, keyed_batch(key.as_deref(), &refs)) {
                        Ok(outcome) if outcome.deduplicated => {
                            let key = key.unwrap();
                            let first = model.keys[&key];
                            prop_assert_eq!((outcome.base_offset, outcome.last_offset), (first.0, first.1));
                        }
                        Ok(outcome) => {
                            if topic == 0 {
                                let known = &mut model.acknowledged[0];
                                prop_assert_eq!(outcome.base_offset, known.last().map_or(0, |last| last.0 + 1));
                                for (at, value) in values.into_iter().enumerate() {
                                    known.push((outcome.base_offset + at as i64, value));
                                }
                                if let Some(key) = key {
                                    model.keys.insert(key, (outcome.base_offset, outcome.last_offset, clock.now()));
                                }
                            } else {
                                model.unconfirmed[1].push((values, None, clock.now()));
                            }
                        }
                        Err(AppendError::DiskFull(_)) | Err(AppendError::Io(_)) => {}
                        Err(AppendError::PartitionStopped { .. }) => {
                            // Written, perhaps, but never acknowledged.
                            model.unconfirmed[topic].push((values, key, clock.now()));
                        }
                        Err(other) => prop_assert!(false, "unexpected error {other}"),
                    }
                }
                Op::Crash { seed } => {
                    drop(log);
                    storage.crash(seed);
                    storage.faults.unlimited_space();
                    storage.faults.fail_next_sync.store(false, Ordering::SeqCst);
                    log = sim_log(&storage, &clock);
                    check_after_reopen(&log, &mut model, &clock)?;
                }
                Op::Close => {
                    // A stopped partition cannot close cleanly; either way the
                    // reopened log must hold what was acknowledged.
                    let _ = log.clone().close();
                    drop(log);
                    log = sim_log(&storage, &clock);
                    check_after_reopen(&log, &mut model, &clock)?;
                }
                Op::FailNextSync => storage.faults.fail_next_sync.store(true, Ordering::SeqCst),
                Op::DiskFull { bytes } => storage.faults.limit_space(bytes),
                Op::SpaceBack => storage.faults.unlimited_space(),
                Op::ShortWrites(on) => storage.faults.short_writes.store(on, Ordering::SeqCst),
                Op::Commit { offset_share } => {
                    let end = log.end_offset("sync", 0).unwrap();
                    let offset = end * i64::from(offset_share) / 255;
                    if log.commit("reader", &[("sync", 0, offset)]).is_ok() {
                        model.committed = Some(offset);
                    }
                }
                Op::Tick { ms } => clock.advance(ms),
            }
        }
    }
}

trait Now {
    fn now(&self) -> i64;
}

impl Now for Arc<ManualClock> {
    fn now(&self) -> i64 {
        nublar_log::Clock::now_ms(self.as_ref())
    }
}

fn check_after_reopen(
    log: &Log,
    model: &mut Model,
    clock: &Arc<ManualClock>,
) -> Result<(), TestCaseError> {
    for (topic, name) in TOPICS.iter().enumerate() {
        let found = read_all(log, name, 0, 0);
        let acknowledged = &model.acknowledged[topic];
        prop_assert!(
            found.len() >= acknowledged.len(),
            "{name}: lost acknowledged records"
        );
        prop_assert_eq!(
            &found[..acknowledged.len()],
            &acknowledged[..],
            "{}: acknowledged prefix",
            name
        );
        let extra: Vec<&String> = found[acknowledged.len()..]
            .iter()
            .map(|(_, value)| value)
            .collect();
        let candidates: Vec<&String> = model.unconfirmed[topic]
            .iter()
            .flat_map(|(values, _, _)| values)
            .collect();
        prop_assert!(
            extra.len() <= candidates.len(),
            "{name}: records nobody wrote"
        );
        for (survivor, candidate) in extra.iter().zip(&candidates) {
            prop_assert_eq!(*survivor, *candidate, "{}: a survivor out of order", name);
        }
        // Survivors are whole batches; those with keys are remembered by the log.
        let mut offset = acknowledged.len() as i64;
        let mut left = extra.len();
        for (values, key, appended_ms) in &model.unconfirmed[topic] {
            if left == 0 {
                break;
            }
            prop_assert!(values.len() <= left, "{name}: a batch survived in part");
            if let Some(key) = key {
                model.keys.insert(
                    key.clone(),
                    (offset, offset + values.len() as i64 - 1, *appended_ms),
                );
            }
            offset += values.len() as i64;
            left -= values.len();
        }
        // What survived is now on disk: it is acknowledged from here on.
        model.acknowledged[topic] = found;
        model.unconfirmed[topic].clear();
    }
    prop_assert_eq!(log.committed("reader", "sync", 0), model.committed);
    let now = clock.now();
    let keys: Vec<(String, (i64, i64, i64))> = model
        .keys
        .iter()
        .map(|(key, value)| (key.clone(), *value))
        .collect();
    for (key, (base, last, appended_ms)) in keys {
        if now - appended_ms >= nublar_log::limits::DEDUP_WINDOW_MS_DEFAULT {
            model.keys.remove(&key);
            continue;
        }
        let retry = log
            .append("sync", 0, keyed_batch(Some(&key), &["retry"]))
            .unwrap();
        prop_assert!(retry.deduplicated, "key {key} forgotten after reopen");
        prop_assert_eq!((retry.base_offset, retry.last_offset), (base, last));
    }
    Ok(())
}
