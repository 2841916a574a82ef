//! The log's behaviour as its users rely on it, on the real file system.

use crate::common;

use std::sync::Arc;
use std::time::Duration;

use common::{batch, keyed_batch, open, read_all, small_segments};
use nublar_log::{
    AppendError, BatchBuilder, Compression, Durability, Guarantee, Log, LogError, ManualClock,
    OpenOptions, ReadError, TopicConfig,
};

#[test]
fn records_read_back_at_every_offset_across_segment_rolls() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    log.create_topic("telemetry", small_segments()).unwrap();
    let mut expected = Vec::new();
    for index in 0..400 {
        let values: Vec<String> = (0..5)
            .map(|record| format!("r{index}-{record}-{}", "x".repeat(100)))
            .collect();
        let refs: Vec<&str> = values.iter().map(String::as_str).collect();
        let outcome = log.append("telemetry", 0, batch(&refs)).unwrap();
        assert_eq!(outcome.base_offset, index * 5);
        assert_eq!(outcome.last_offset, index * 5 + 4);
        assert_eq!(outcome.guarantee, Guarantee::Synced);
        expected.extend(
            values
                .into_iter()
                .enumerate()
                .map(|(at, value)| (index * 5 + at as i64, value)),
        );
    }
    assert!(
        log.partition_info("telemetry", 0).unwrap().segments > 3,
        "segments rolled by size"
    );
    assert_eq!(read_all(&log, "telemetry", 0, 0), expected);
    for offset in [1, 777, 1000, 1999] {
        let first = read_all(&log, "telemetry", 0, offset);
        assert_eq!(first[0], expected[offset as usize]);
    }
    drop(log);
    // Unclean reopen (no close): recovery scans the active segment.
    let log = open(dir.path());
    assert_eq!(read_all(&log, "telemetry", 0, 0), expected);
    log.close().unwrap();
    // Clean reopen: no scan, same content, appends continue at the end.
    let log = open(dir.path());
    assert_eq!(log.end_offset("telemetry", 0).unwrap(), 2000);
    assert_eq!(
        log.append("telemetry", 0, batch(&["after"]))
            .unwrap()
            .base_offset,
        2000
    );
    assert_eq!(read_all(&log, "telemetry", 0, 1999).len(), 2);
}

#[test]
fn segments_roll_by_age() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(0));
    let options = || OpenOptions {
        clock: clock.clone(),
        background: false,
        ..OpenOptions::default()
    };
    let log = Log::open_with(dir.path(), options()).unwrap();
    log.create_topic(
        "t",
        TopicConfig {
            segment_ms: 60_000,
            ..TopicConfig::default()
        },
    )
    .unwrap();
    log.append("t", 0, batch(&["a"])).unwrap();
    clock.advance(59_000);
    log.append("t", 0, batch(&["b"])).unwrap();
    assert_eq!(log.partition_info("t", 0).unwrap().segments, 1);
    clock.advance(1_000);
    log.append("t", 0, batch(&["c"])).unwrap();
    assert_eq!(
        log.partition_info("t", 0).unwrap().segments,
        2,
        "the first segment turned 60 s old"
    );
    // A restart keeps the age of the active segment (its first batch's time).
    drop(log);
    let log = Log::open_with(dir.path(), options()).unwrap();
    clock.advance(59_000);
    log.append("t", 0, batch(&["d"])).unwrap();
    assert_eq!(log.partition_info("t", 0).unwrap().segments, 2);
    clock.advance(1_000);
    log.append("t", 0, batch(&["e"])).unwrap();
    assert_eq!(log.partition_info("t", 0).unwrap().segments, 3);
    assert_eq!(read_all(&log, "t", 0, 0).len(), 5);
}

#[test]
fn reads_by_time_seek_to_the_first_batch_at_or_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(1_000_000));
    let options = OpenOptions {
        clock: clock.clone(),
        background: false,
        ..OpenOptions::default()
    };
    let log = Log::open_with(dir.path(), options).unwrap();
    log.create_topic("t", small_segments()).unwrap();
    for index in 0..300 {
        log.append("t", 0, batch(&[&"v".repeat(500)])).unwrap();
        if index % 10 == 9 {
            clock.advance(1000);
        }
    }
    // Batches 0..10 were appended at 1_000_000, 10..20 at 1_001_000, ...
    assert_eq!(log.offset_for_time("t", 0, 0).unwrap(), 0);
    assert_eq!(log.offset_for_time("t", 0, 1_000_001).unwrap(), 10);
    assert_eq!(log.offset_for_time("t", 0, 1_015_000).unwrap(), 150);
    assert_eq!(log.offset_for_time("t", 0, 1_029_000).unwrap(), 290);
    assert_eq!(
        log.offset_for_time("t", 0, 9_999_999).unwrap(),
        300,
        "past the end: the end offset"
    );
    let first = log.read("t", 0, 150, 1).unwrap();
    assert_eq!(first.iter().next().unwrap().max_timestamp(), 1_015_000);
}

#[test]
fn bad_requests_get_clear_errors_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    let config = TopicConfig {
        partitions: 2,
        batch_bytes_max: 4096,
        record_bytes_max: 1024,
        ..TopicConfig::default()
    };
    log.create_topic("t", config.clone()).unwrap();
    log.append("t", 0, batch(&["a"])).unwrap();

    assert_eq!(
        log.append("nope", 0, batch(&["a"])),
        Err(AppendError::UnknownTopic("nope".into()))
    );
    assert_eq!(
        log.append("t", 2, batch(&["a"])),
        Err(AppendError::PartitionOutOfRange {
            topic: "t".into(),
            partition: 2,
            partitions: 2
        })
    );
    let big = "x".repeat(5000);
    assert!(matches!(
        log.append("t", 0, batch(&[&big])),
        Err(AppendError::BatchTooLarge { limit: 4096, .. })
    ));
    let record = "x".repeat(2000);
    assert!(matches!(
        log.append("t", 0, batch(&[&record])),
        Err(AppendError::RecordTooLarge { limit: 1024, .. })
    ));
    assert_eq!(
        log.read("t", 0, 5, 100).unwrap_err(),
        ReadError::OffsetOutOfRange {
            requested: 5,
            start: 0,
            end: 1
        }
    );
    assert!(
        log.read("t", 0, 1, 100).unwrap().is_empty(),
        "reading at the end waits for more"
    );
    assert!(matches!(
        log.read("t", 7, 0, 100),
        Err(ReadError::PartitionOutOfRange { .. })
    ));
    assert!(matches!(
        log.create_topic("bad/name", TopicConfig::default()),
        Err(LogError::InvalidName { .. })
    ));
    assert!(matches!(
        log.create_topic("..", TopicConfig::default()),
        Err(LogError::InvalidName { .. })
    ));
    assert!(matches!(
        log.create_topic(
            "t",
            TopicConfig {
                partitions: 3,
                ..config.clone()
            }
        ),
        Err(LogError::TopicConflict { .. })
    ));
    log.create_topic("t", config).unwrap();
    assert!(matches!(
        log.commit("g", &[("t", 0, 2)]),
        Err(LogError::OffsetBeyondEnd {
            offset: 2,
            end: 1,
            ..
        })
    ));
    assert_eq!(log.end_offset("t", 0).unwrap(), 1);
    assert_eq!(log.committed("g", "t", 0), None);
}

#[test]
fn a_retried_batch_key_gets_its_first_offsets_also_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    log.create_topic("t", small_segments()).unwrap();
    let first = log
        .append("t", 0, keyed_batch(Some("req-1"), &["a", "b"]))
        .unwrap();
    log.append("t", 0, batch(&["c"])).unwrap();
    let again = log
        .append("t", 0, keyed_batch(Some("req-1"), &["a", "b"]))
        .unwrap();
    assert!(again.deduplicated);
    assert_eq!(
        (again.base_offset, again.last_offset),
        (first.base_offset, first.last_offset)
    );
    assert_eq!(log.end_offset("t", 0).unwrap(), 3);
    drop(log);
    // After a crash (no clean close) the key comes back from the scan.
    let log = open(dir.path());
    let after_crash = log
        .append("t", 0, keyed_batch(Some("req-1"), &["a", "b"]))
        .unwrap();
    assert!(after_crash.deduplicated);
    assert_eq!(after_crash.base_offset, 0);
    // Roll several segments so the key lives in a snapshot, then close cleanly.
    for _ in 0..200 {
        log.append("t", 0, batch(&[&"y".repeat(1000)])).unwrap();
    }
    log.close().unwrap();
    let log = open(dir.path());
    let after_close = log
        .append("t", 0, keyed_batch(Some("req-1"), &["a", "b"]))
        .unwrap();
    assert!(after_close.deduplicated);
    assert_eq!(log.end_offset("t", 0).unwrap(), 203);
    let fresh = log
        .append("t", 0, keyed_batch(Some("req-2"), &["z"]))
        .unwrap();
    assert!(!fresh.deduplicated);
}

fn printed_batch(key: &str, fingerprint: u8, values: &[&str]) -> nublar_log::Batch {
    let mut builder = BatchBuilder::new(Compression::Lz4)
        .batch_key(key)
        .unwrap()
        .fingerprint([fingerprint; 16]);
    for value in values {
        builder.push(None, value.as_bytes(), &[]);
    }
    builder.finish().unwrap()
}

#[test]
fn a_batch_key_with_another_fingerprint_is_refused_also_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    log.create_topic("t", small_segments()).unwrap();
    log.append("t", 0, printed_batch("park/k", 1, &["a"]))
        .unwrap();
    let retry = log
        .append("t", 0, printed_batch("park/k", 1, &["a, sent again"]))
        .unwrap();
    assert!(retry.deduplicated, "the same fingerprint is a retry");
    let reused = log.append("t", 0, printed_batch("park/k", 2, &["b"]));
    assert!(
        matches!(&reused, Err(AppendError::BatchKeyReused { key }) if key == "park/k"),
        "{reused:?}"
    );
    // A batch without a fingerprint cannot be told apart: taken for a retry.
    assert!(
        log.append("t", 0, keyed_batch(Some("park/k"), &["c"]))
            .unwrap()
            .deduplicated
    );
    let remembered = log.batch_keys("t", 0).unwrap();
    assert_eq!(remembered.len(), 1);
    assert_eq!(remembered[0].0, "park/k");
    assert_eq!(remembered[0].1.fingerprint, Some([1; 16]));
    drop(log);
    // After a crash, from the scan; after a clean close, from the snapshot.
    for close in [false, true] {
        let log = open(dir.path());
        assert!(matches!(
            log.append("t", 0, printed_batch("park/k", 3, &["d"])),
            Err(AppendError::BatchKeyReused { .. })
        ));
        assert_eq!(
            log.batch_keys("t", 0).unwrap()[0].1.fingerprint,
            Some([1; 16])
        );
        assert_eq!(log.end_offset("t", 0).unwrap(), 1);
        if close {
            log.close().unwrap();
        }
    }
}

#[test]
fn a_batch_no_reader_could_decompress_is_never_built() {
    let mut builder = BatchBuilder::new(Compression::Lz4);
    let record = vec![b'x'; 1024 * 1024 - 64];
    for _ in 0..65 {
        builder.push(None, &record, &[]);
    }
    assert!(builder.encoded_bytes() > nublar_log::limits::DECOMPRESSED_BYTES_MAX);
    assert!(
        matches!(
            builder.finish(),
            Err(nublar_log::BatchError::RecordsTooLarge(bytes))
                if bytes > nublar_log::limits::DECOMPRESSED_BYTES_MAX
        ),
        "compressed it would fit the batch limit, but no reader would decompress it"
    );
}

#[test]
fn batch_keys_are_forgotten_after_the_window() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(0));
    let options = OpenOptions {
        clock: clock.clone(),
        background: false,
        ..OpenOptions::default()
    };
    let log = Log::open_with(dir.path(), options).unwrap();
    let config = TopicConfig {
        dedup_window_ms: 60_000,
        dedup_keys_max: 3,
        ..TopicConfig::default()
    };
    log.create_topic("t", config).unwrap();
    log.append("t", 0, keyed_batch(Some("k"), &["a"])).unwrap();
    clock.advance(59_000);
    assert!(
        log.append("t", 0, keyed_batch(Some("k"), &["a"]))
            .unwrap()
            .deduplicated
    );
    clock.advance(2_000);
    assert!(
        !log.append("t", 0, keyed_batch(Some("k"), &["a"]))
            .unwrap()
            .deduplicated
    );
    for key in ["k1", "k2", "k3"] {
        log.append("t", 0, keyed_batch(Some(key), &["a"])).unwrap();
    }
    assert!(
        !log.append("t", 0, keyed_batch(Some("k"), &["a"]))
            .unwrap()
            .deduplicated,
        "evicted by count"
    );
    assert_eq!(log.partition_info("t", 0).unwrap().remembered_keys, 3);
}

#[test]
fn group_offsets_survive_a_restart_and_required_groups_hold_retention() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(0));
    let options = || OpenOptions {
        clock: clock.clone(),
        background: false,
        ..OpenOptions::default()
    };
    let log = Log::open_with(dir.path(), options()).unwrap();
    let config = TopicConfig {
        retention_ms: Some(10_000),
        ..small_segments()
    };
    log.create_topic("t", config).unwrap();
    log.set_required("sink", "t", true).unwrap();
    for _ in 0..300 {
        log.append("t", 0, batch(&[&"z".repeat(1000)])).unwrap();
    }
    let segments = log.partition_info("t", 0).unwrap().segments;
    assert!(segments >= 4);
    log.commit("sink", &[("t", 0, 120)]).unwrap();
    log.commit("other", &[("t", 0, 300)]).unwrap();
    drop(log);

    let log = Log::open_with(dir.path(), options()).unwrap();
    assert_eq!(log.committed("sink", "t", 0), Some(120));
    assert_eq!(log.committed("other", "t", 0), Some(300));
    clock.advance(20_000);
    log.apply_retention();
    let start = log.start_offset("t", 0).unwrap();
    assert!(
        start > 0 && start <= 120,
        "deleted only what the required group consumed: start {start}"
    );
    assert_eq!(read_all(&log, "t", 0, 120).len(), 180);
    assert!(matches!(
        log.read("t", 0, 0, 10),
        Err(ReadError::OffsetOutOfRange { .. })
    ));

    // The operator's reclaim deletes past the required group, and says so.
    let reclaimed = log.reclaim("t").unwrap();
    let (from, to) = reclaimed[0].2.dropped_uncommitted.unwrap();
    assert_eq!(from, 120);
    assert_eq!(log.dropped_required_records_total(), (to - from) as u64);
    assert_eq!(log.start_offset("t", 0).unwrap(), to);
    assert_eq!(
        log.end_offset("t", 0).unwrap(),
        300,
        "the active segment is never deleted"
    );
}

#[test]
fn retention_by_size_deletes_whole_sealed_segments_oldest_first() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    let config = TopicConfig {
        retention_bytes: Some(200 * 1024),
        retention_ms: None,
        ..small_segments()
    };
    log.create_topic("t", config).unwrap();
    for _ in 0..1000 {
        log.append("t", 0, batch(&[&"s".repeat(1000)])).unwrap();
    }
    let before = log.partition_info("t", 0).unwrap();
    log.apply_retention();
    let after = log.partition_info("t", 0).unwrap();
    assert!(
        after.size_bytes <= 200 * 1024 + 64 * 1024,
        "{} bytes left",
        after.size_bytes
    );
    assert!(after.size_bytes > 200 * 1024 - 64 * 1024);
    assert!(after.start_offset > before.start_offset);
    assert_eq!(after.end_offset, 1000);
    let first = read_all(&log, "t", 0, after.start_offset);
    assert_eq!(first.len() as i64, 1000 - after.start_offset);
    // A reopen sees the same start.
    drop(log);
    assert_eq!(
        open(dir.path()).start_offset("t", 0).unwrap(),
        after.start_offset
    );
}

#[test]
fn the_disk_quota_refuses_appends_until_retention_makes_room() {
    let dir = tempfile::tempdir().unwrap();
    let options = OpenOptions {
        quota_bytes: Some(150 * 1024),
        background: false,
        ..OpenOptions::default()
    };
    let log = Log::open_with(dir.path(), options).unwrap();
    log.create_topic("t", small_segments()).unwrap();
    let mut refused = None;
    for index in 0..1000 {
        match log.append("t", 0, batch(&[&"q".repeat(1000)])) {
            Ok(_) => {}
            Err(error) => {
                refused = Some((index, error));
                break;
            }
        }
    }
    let (accepted, error) = refused.expect("the quota stops appends");
    assert!(
        matches!(error, AppendError::QuotaExceeded { quota: 153_600, .. }),
        "{error}"
    );
    assert_eq!(log.end_offset("t", 0).unwrap(), accepted);
}

#[test]
fn the_guarantee_follows_the_topic_policy_and_readers_see_written_records() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path()).unwrap();
    for (name, durability) in [
        ("fast", Durability::None),
        ("timed", Durability::Interval { ms: 5 }),
    ] {
        log.create_topic(
            name,
            TopicConfig {
                durability,
                ..TopicConfig::default()
            },
        )
        .unwrap();
        let outcome = log.append(name, 0, batch(&["a"])).unwrap();
        assert_eq!(outcome.guarantee, Guarantee::Written);
        assert_eq!(log.end_offset(name, 0).unwrap(), 1);
    }
    // The background thread syncs interval topics.
    std::thread::sleep(Duration::from_millis(100));
    assert!(log.partition_info("timed", 0).unwrap().syncs_total >= 1);
    assert_eq!(log.partition_info("fast", 0).unwrap().syncs_total, 0);
}

#[test]
fn a_waiting_reader_wakes_when_records_arrive() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    log.create_topic("t", TopicConfig::default()).unwrap();
    assert!(
        !log.wait_for("t", 0, 0, Duration::from_millis(20)).unwrap(),
        "times out when nothing comes"
    );
    let writer = log.clone();
    let handle = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        writer.append("t", 0, batch(&["hello"])).unwrap();
    });
    assert!(log.wait_for("t", 0, 0, Duration::from_secs(10)).unwrap());
    handle.join().unwrap();
    assert_eq!(read_all(&log, "t", 0, 0), vec![(0, "hello".to_string())]);
}

#[test]
fn one_process_owns_a_directory() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    match Log::open(dir.path()) {
        Err(LogError::Locked(message)) => assert!(message.contains("pid"), "{message}"),
        other => panic!("expected Locked, got {:?}", other.map(|_| ())),
    }
    drop(log);
    open(dir.path());
}

#[test]
fn truncating_a_segment_at_any_byte_keeps_exactly_the_whole_batches_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    log.create_topic("t", TopicConfig::default()).unwrap();
    let mut ends = vec![0u64];
    for index in 0..20 {
        let values: Vec<String> = (0..=index % 3)
            .map(|record| format!("{index}.{record}"))
            .collect();
        let refs: Vec<&str> = values.iter().map(String::as_str).collect();
        log.append("t", 0, batch(&refs)).unwrap();
        ends.push(log.partition_info("t", 0).unwrap().size_bytes);
    }
    let expected = read_all(&log, "t", 0, 0);
    drop(log);
    let segment = dir.path().join("topics/t/0/00000000000000000000.log");
    let full = std::fs::read(&segment).unwrap();
    let mut seed = 12345u64;
    for _ in 0..25 {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let cut = (seed >> 33) % (full.len() as u64 + 1);
        std::fs::write(&segment, &full[..cut as usize]).unwrap();
        let whole_batches = ends.iter().filter(|&&end| end <= cut).count() - 1;
        let log = open(dir.path());
        let records = read_all(&log, "t", 0, 0);
        let expected_records: usize = (0..whole_batches).map(|index| index % 3 + 1).sum();
        assert_eq!(records, expected[..expected_records], "cut at byte {cut}");
        assert_eq!(
            std::fs::metadata(&segment).unwrap().len(),
            ends[whole_batches],
            "torn tail truncated"
        );
        drop(log);
        std::fs::write(&segment, &full).unwrap();
    }
}

#[test]
fn a_flipped_bit_is_reported_with_topic_partition_and_offset_and_never_served() {
    let (dir, segment, mut bytes) = closed_log_of_200_batches();
    // Damage a record in the middle of the first (sealed) segment.
    let starts = batch_starts(&bytes);
    bytes[starts[10] + 100] ^= 0x10;
    std::fs::write(&segment, &bytes).unwrap();
    let log = open(dir.path());
    match log.read("t", 0, 10, 1) {
        Err(ReadError::Corruption {
            topic,
            partition,
            offset,
            ..
        }) => {
            assert_eq!((topic.as_str(), partition, offset), ("t", 0, 10));
        }
        other => panic!("expected corruption, got {other:?}"),
    }
    // Data before it is served, and a read that reaches it stops short of it.
    let before = log.read("t", 0, 0, 1 << 20).unwrap();
    assert_eq!(before.next_offset(), Some(10));
    assert_eq!(read_all(&log, "t", 0, 11).len(), 189);
}

/// The base offset lies outside the CRC; a damaged one must not make a
/// reader skip records or see wrong offsets.
#[test]
fn a_damaged_base_offset_is_reported_not_served() {
    let (dir, segment, mut bytes) = closed_log_of_200_batches();
    let starts = batch_starts(&bytes);
    // Batch 20's base offset becomes 21 (raised) and batch 30's becomes 29 (lowered).
    bytes[starts[20] + 7] = 21;
    bytes[starts[30] + 7] = 29;
    std::fs::write(&segment, &bytes).unwrap();
    let log = open(dir.path());
    assert!(matches!(
        log.read("t", 0, 20, 1),
        Err(ReadError::Corruption { offset: 20, .. })
    ));
    assert!(matches!(
        log.read("t", 0, 30, 1),
        Err(ReadError::Corruption { offset: 30, .. })
    ));
    let before = log.read("t", 0, 10, 1 << 20).unwrap();
    assert_eq!(
        before.next_offset(),
        Some(20),
        "a read stops short of the damage"
    );
    // A read that has to step over the damaged batch cannot pass it either.
    assert!(matches!(
        log.read("t", 0, 21, 1),
        Err(ReadError::Corruption { offset: 21, .. })
    ));
    // From an index entry past the damage, reading resumes.
    let between = log.read("t", 0, 25, 1 << 20).unwrap();
    assert_eq!(between.next_offset(), Some(30));
}

/// A cleanly closed log of 200 one-record batches over several segments,
/// with the path and bytes of its first (sealed) segment.
fn closed_log_of_200_batches() -> (tempfile::TempDir, std::path::PathBuf, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    log.create_topic("t", small_segments()).unwrap();
    for index in 0..200 {
        log.append("t", 0, batch(&[&format!("{index}{}", "p".repeat(1000))]))
            .unwrap();
    }
    log.close().unwrap();
    let segment = dir.path().join("topics/t/0/00000000000000000000.log");
    let bytes = std::fs::read(&segment).unwrap();
    (dir, segment, bytes)
}

fn batch_starts(bytes: &[u8]) -> Vec<usize> {
    let mut starts = Vec::new();
    let mut at = 0;
    while let Ok(view) = nublar_log::BatchView::parse(&bytes[at..]) {
        starts.push(at);
        at += view.len_bytes();
    }
    starts
}

#[test]
fn read_only_opening_changes_nothing_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path());
    log.create_topic("t", TopicConfig::default()).unwrap();
    log.append("t", 0, batch(&["a", "b"])).unwrap();
    drop(log);
    let segment = dir.path().join("topics/t/0/00000000000000000000.log");
    let mut bytes = std::fs::read(&segment).unwrap();
    bytes.extend_from_slice(&[0xAB; 30]);
    std::fs::write(&segment, &bytes).unwrap();
    let options = OpenOptions {
        read_only: true,
        ..OpenOptions::default()
    };
    let log = Log::open_with(dir.path(), options).unwrap();
    assert_eq!(
        read_all(&log, "t", 0, 0).len(),
        2,
        "the torn tail is not served"
    );
    assert!(matches!(
        log.append("t", 0, batch(&["c"])),
        Err(AppendError::ReadOnly)
    ));
    drop(log);
    assert_eq!(
        std::fs::read(&segment).unwrap(),
        bytes,
        "read-only open left the tail alone"
    );
}
