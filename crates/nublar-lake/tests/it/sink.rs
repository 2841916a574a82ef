//! The lake sink against a real embedded log and real Delta tables, read back with DataFusion:
//! types and exact values, values written before the stored layout, unsafe names, schema
//! evolution, and exactly once across restarts and a crash between the table commits and the
//! group's.

use crate::lab;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use lab::{Lab, TOPIC, query, texts};
use nublar_lake::names;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_become_rows_with_their_types_and_exact_values() {
    let mut lab = Lab::new(1).await;
    lab.send(
        0,
        "park",
        &[
            "weather,habitat=savanna,station=ws-1 temp_c=23.5,humidity=41i,count=18446744073709551615u,ok=true,note=\"dry\" 1700000000123456789",
            "weather,habitat=forest,station=ws-2 temp_c=-3.25 1700086400000000001",
        ],
    )
    .await;
    lab.sink_until(lab.config(), 2).await;
    let dir = lab.table_dir("park", "weather");
    let rows = query(
        &dir,
        "SELECT time, _time_ns, _day, _sender, _batch_key, habitat, station, temp_c, humidity, \
         count, ok, note FROM t ORDER BY _time_ns",
    )
    .await;
    assert_eq!(
        rows,
        texts(&[
            &[
                "2023-11-14T22:13:20.123456Z",
                "1700000000123456789",
                "2023-11-14",
                "2001:db8:7::42",
                "park/request-1",
                "savanna",
                "ws-1",
                "23.5",
                "41",
                "18446744073709551615",
                "true",
                "dry",
            ],
            &[
                "2023-11-15T22:13:20Z",
                "1700086400000000001",
                "2023-11-15",
                "2001:db8:7::42",
                "park/request-1",
                "forest",
                "ws-2",
                "-3.25",
                "NULL",
                "NULL",
                "NULL",
                "NULL",
            ],
        ])
    );
    // Partitioned by day: one directory per day.
    let mut days: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("_day="))
        .collect();
    days.sort();
    assert_eq!(days, ["_day=2023-11-14", "_day=2023-11-15"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_in_line_protocol_from_before_the_stored_layout_are_read_and_bad_ones_counted() {
    let mut lab = Lab::new(1).await;
    lab.send_values(
        0,
        "park",
        &[
            b"gate,gate=g1 open=true 1700000000000000001".as_slice(),
            b"\x01\x09 not an event",
            b"not a line",
        ],
    )
    .await;
    lab.send(0, "park", &["gate,gate=g2 open=false 1700000000000000002"])
        .await;
    let counters = lab.sink_until(lab.config(), 2).await;
    assert_eq!(counters.records_unreadable.load(Ordering::Relaxed), 2);
    let rows = query(
        &lab.table_dir("park", "gate"),
        "SELECT gate, open, _time_ns FROM t ORDER BY _time_ns",
    )
    .await;
    assert_eq!(
        rows,
        texts(&[
            &["g1", "true", "1700000000000000001"],
            &["g2", "false", "1700000000000000002"],
        ])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_an_operator_reclaims_unread_records_the_sink_goes_on_from_the_log_start() {
    let mut lab = Lab::with_topic(lab::nublar_log::TopicConfig {
        segment_bytes: 64 * 1024,
        retention_bytes: Some(64 * 1024),
        ..lab::nublar_log::TopicConfig::with_partitions(1)
    })
    .await;
    // Notes that do not compress, so that the batches fill segments.
    let line = |n: u64| {
        let note: String = (0..16u64)
            .map(|i| {
                format!(
                    "{:016x}",
                    (n * 16 + i)
                        .wrapping_mul(0x9e37_79b9_7f4a_7c15)
                        .rotate_left(29)
                )
            })
            .collect();
        format!(
            "gate,gate=g{} open=true,n={n}i,note=\"{note}\" {}",
            n % 7,
            1_700_000_000_000_000_000u64 + n
        )
    };
    lab.send(0, "park", &[&line(0)]).await;
    lab.sink_until(lab.config(), 1).await;
    // The sink is away while the log fills several segments past what it read.
    for request in 0..40u64 {
        let lines: Vec<String> = (0..25).map(|i| line(1 + request * 25 + i)).collect();
        let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
        lab.send(0, "park", &lines).await;
    }
    let before = lab.bus.offsets(TOPIC, 0).await.unwrap();
    assert_eq!((before.start, before.end), (0, 1001));
    // Retention alone keeps what the required group has not read; reclaiming does not.
    lab.log.apply_retention();
    assert_eq!(lab.bus.offsets(TOPIC, 0).await.unwrap().start, 0);
    lab.log.reclaim(TOPIC).unwrap();
    let after = lab.bus.offsets(TOPIC, 0).await.unwrap();
    assert!(after.start > 1 && after.start < after.end, "{after:?}");
    let kept = (after.end - after.start) as u64;
    let counters = lab.sink_until(lab.config(), kept).await;
    assert_eq!(counters.rows_written.load(Ordering::Relaxed), kept);
    let rows = query(
        &lab.table_dir("park", "gate"),
        "SELECT count(*), min(n), max(n) FROM t WHERE n > 0",
    )
    .await;
    assert_eq!(
        rows,
        texts(&[&[&kept.to_string(), &after.start.to_string(), "1000"]])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_batch_stops_its_partition_until_an_operator_moves_past_it() {
    let mut lab = Lab::new(2).await;
    let gate = |n: u64| {
        format!(
            "gate,gate=g{n} open=true,n={n}i {}",
            1_700_000_000_000_000_000u64 + n
        )
    };
    lab.send(0, "park", &[&gate(1), &gate(2)]).await;
    let damaged_at = lab.log.partition_info(TOPIC, 0).unwrap().size_bytes;
    lab.send(0, "park", &[&gate(3), &gate(4)]).await;
    let after = lab.bus.offsets(TOPIC, 0).await.unwrap().end;
    lab.send(0, "park", &[&gate(5)]).await;
    // A bit of the second batch's records flips on disk: its CRC no longer holds.
    let segment = lab
        .lake
        .parent()
        .unwrap()
        .join("log/topics/telemetry/0/00000000000000000000.log");
    let mut bytes = std::fs::read(&segment).unwrap();
    bytes[damaged_at as usize + 70] ^= 0x10;
    std::fs::write(&segment, &bytes).unwrap();

    let stalls = Arc::new(nublar_bus::Stalls::default());
    let config = nublar_lake::SinkConfig {
        stalls: stalls.clone(),
        ..lab.config()
    };
    let sink = nublar_lake::Sink::new(lab.bus.clone(), config);
    let counters = sink.counters();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let running = tokio::spawn(async move { sink.run(stopped).await });
    let wait_for = |rows: u64| {
        let counters = counters.clone();
        async move {
            let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
            while counters.rows_written.load(Ordering::Relaxed) < rows {
                assert!(tokio::time::Instant::now() < deadline, "rows never came");
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        }
    };
    // The other partition goes on while this one stops before the damage.
    lab.send(1, "park", &[&gate(6)]).await;
    wait_for(3).await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(
        counters.rows_written.load(Ordering::Relaxed),
        3,
        "nothing past the damage"
    );
    let listed = stalls.list();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(
        (
            listed[0].group.as_str(),
            listed[0].partition,
            listed[0].offset
        ),
        ("lake", 0, 2)
    );
    assert!(listed[0].reason.contains("CRC"), "{}", listed[0].reason);
    assert_eq!(
        lab.bus.committed("lake", TOPIC, 0).await.unwrap(),
        Some(2),
        "the group holds at the damage"
    );
    assert_eq!(
        counters.failed_rounds.load(Ordering::Relaxed),
        0,
        "no retrying in a loop"
    );
    // The operator's word: on from the batch after it.
    assert_eq!(stalls.skip("lake", TOPIC, 0, Some(after)), Ok((2, after)));
    wait_for(4).await;
    stop.send(true).unwrap();
    running.await.unwrap().unwrap();
    assert!(stalls.list().is_empty());
    assert_eq!(
        lab.bus.committed("lake", TOPIC, 0).await.unwrap(),
        Some(after + 1)
    );
    let rows = query(&lab.table_dir("park", "gate"), "SELECT n FROM t ORDER BY n").await;
    assert_eq!(rows, texts(&[&["1"], &["2"], &["5"], &["6"]]));
    assert!(
        stalls
            .prometheus()
            .contains("nublar_consumer_skipped_offsets_total 2")
    );
}

/// A disk that loses power: it records what the store made durable (each file's data by
/// inode and length, each directory's entries as they were when it was synced), and
/// [`PowerCut::cut`] then takes from a real directory everything that was not.
#[derive(Debug, Default)]
struct PowerCut {
    files: std::sync::Mutex<std::collections::HashMap<u64, u64>>,
    dirs: std::sync::Mutex<
        std::collections::HashMap<std::path::PathBuf, std::collections::HashSet<(String, u64)>>,
    >,
}

impl nublar_lake::store::Syncer for PowerCut {
    fn sync_file(&self, file: &std::fs::File) -> std::io::Result<()> {
        use std::os::unix::fs::MetadataExt;
        let metadata = file.metadata()?;
        self.files
            .lock()
            .unwrap()
            .insert(metadata.ino(), metadata.len());
        Ok(())
    }

    fn sync_dir(&self, dir: &std::path::Path) -> std::io::Result<()> {
        use std::os::unix::fs::MetadataExt;
        let mut entries = std::collections::HashSet::new();
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            entries.insert((name, entry.metadata()?.ino()));
        }
        self.dirs.lock().unwrap().insert(dir.to_owned(), entries);
        Ok(())
    }
}

impl PowerCut {
    /// What the disk under `dir` holds after the power comes back: names its directory was
    /// never synced with are gone, and files keep only the bytes synced.
    fn cut(&self, dir: &std::path::Path) {
        use std::os::unix::fs::MetadataExt;
        let durable = self
            .dirs
            .lock()
            .unwrap()
            .get(dir)
            .cloned()
            .unwrap_or_default();
        for entry in std::fs::read_dir(dir).unwrap() {
            let entry = entry.unwrap();
            let path = entry.path();
            let metadata = std::fs::symlink_metadata(&path).unwrap();
            let name = entry.file_name().to_string_lossy().into_owned();
            if !durable.contains(&(name, metadata.ino())) {
                if metadata.is_dir() {
                    std::fs::remove_dir_all(&path).unwrap();
                } else {
                    std::fs::remove_file(&path).unwrap();
                }
            } else if metadata.is_dir() {
                self.cut(&path);
            } else {
                let synced = self.files.lock().unwrap().get(&metadata.ino()).copied();
                let kept = synced.unwrap_or(0).min(metadata.len());
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .unwrap()
                    .set_len(kept)
                    .unwrap();
            }
        }
    }
}

/// The rows the lake holds of every table the sink writes in `lab`, or why it cannot tell.
async fn lake_rows(lab: &Lab) -> Result<u64, String> {
    let mut rows = 0;
    for measurement in ["gate", "fence"] {
        let dir = lab.table_dir("park", measurement);
        let url = deltalake::ensure_table_uri(dir.to_string_lossy()).map_err(|e| e.to_string())?;
        let table = deltalake::DeltaTable::try_from_url(url)
            .await
            .map_err(|error| format!("{measurement}: {error}"))?;
        if table.version().is_none() {
            return Err(format!("{measurement}: no table"));
        }
        let context = deltalake::datafusion::prelude::SessionContext::new();
        context
            .register_table(
                "t",
                table.table_provider().await.map_err(|e| e.to_string())?,
            )
            .map_err(|e| e.to_string())?;
        let batches = context
            .sql("SELECT count(*) FROM t")
            .await
            .map_err(|e| e.to_string())?
            .collect()
            .await
            .map_err(|error| format!("{measurement}: {error}"))?;
        let counted = batches[0]
            .column(0)
            .as_any()
            .downcast_ref::<deltalake::arrow::array::Int64Array>()
            .unwrap()
            .value(0);
        rows += counted as u64;
    }
    Ok(rows)
}

/// Runs the real sink over three commits' worth of rows through a store syncing through
/// `syncer`, then cuts the power on the lake; the log and its group offsets stay as they
/// were (they sync for real). Returns what the group had committed and what the lake holds.
async fn sink_then_cut(syncer: Arc<PowerCut>, cut: bool) -> (u64, Result<u64, String>) {
    let mut lab = Lab::new(2).await;
    std::fs::create_dir_all(&lab.lake).unwrap();
    let store = Arc::new(nublar_lake::store::DurableLocalStore::new(syncer.clone()));
    for round in 0..3u64 {
        for partition in 0..2 {
            let lines: Vec<String> = (0..20)
                .map(|i| {
                    let n = round * 100 + partition * 20 + i;
                    if n % 2 == 0 {
                        format!("gate,gate=g{} open=true,n={n}i {n}", n % 5)
                    } else {
                        format!("fence,segment=s{} voltage_kv=7.5,n={n}i {n}", n % 3)
                    }
                })
                .collect();
            let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
            lab.send(partition as u32, "park", &lines).await;
        }
        let config = nublar_lake::SinkConfig {
            store: store.clone(),
            ..lab.config()
        };
        // A sink of its own each round: each is a start, a commit and a stop.
        lab.sink_until(config, 40).await;
    }
    let mut committed = 0;
    for partition in 0..2 {
        committed += lab
            .bus
            .committed("lake", TOPIC, partition)
            .await
            .unwrap()
            .unwrap_or(0) as u64;
    }
    if cut {
        syncer.cut(&lab.lake);
    }
    (committed, lake_rows(&lab).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_the_group_committed_survives_a_power_cut_of_the_lake() {
    let (committed, held) = sink_then_cut(Arc::new(PowerCut::default()), true).await;
    assert_eq!(committed, 120);
    assert_eq!(
        held,
        Ok(120),
        "every row the group committed past is in the lake"
    );
    // The same lake with the syncs not made (the store as object_store's own) loses what the
    // group committed past: the harness sees a lost sync.
    #[derive(Debug)]
    struct Forgetful;
    impl nublar_lake::store::Syncer for Forgetful {
        fn sync_file(&self, _: &std::fs::File) -> std::io::Result<()> {
            Ok(())
        }
        fn sync_dir(&self, _: &std::path::Path) -> std::io::Result<()> {
            Ok(())
        }
    }
    // It recorded nothing, since nothing was synced.
    let cut = PowerCut::default();
    let mut lab = Lab::new(1).await;
    lab.send(0, "park", &["gate,gate=g1 open=true 1"]).await;
    let store = Arc::new(nublar_lake::store::DurableLocalStore::new(Arc::new(
        Forgetful,
    )));
    let config = nublar_lake::SinkConfig {
        store,
        ..lab.config()
    };
    lab.sink_until(config, 1).await;
    assert_eq!(lab.bus.committed("lake", TOPIC, 0).await.unwrap(), Some(1));
    cut.cut(&lab.lake);
    assert!(
        lake_rows(&lab).await.is_err(),
        "without syncs the power cut takes the committed rows"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsafe_names_are_stored_reversibly_and_new_fields_become_nullable_columns() {
    let mut lab = Lab::new(1).await;
    lab.send(
        0,
        "park",
        &["a/b\\ c,Zone\\ Name=north x\\=1=1 1700000000000000000"],
    )
    .await;
    lab.sink_until(lab.config(), 1).await;
    lab.send(
        0,
        "park",
        &["a/b\\ c,Zone\\ Name=south x\\=1=2,extra=\"new\" 1700000001000000000"],
    )
    .await;
    lab.sink_until(lab.config(), 1).await;
    let dir = lab.table_dir("park", "a/b c");
    assert!(dir.ends_with("park/a~2fb~20c"), "{}", dir.display());
    let zone = names::encode("Zone Name");
    let x = names::encode("x=1");
    let rows = query(
        &dir,
        &format!("SELECT \"{zone}\", \"{x}\", extra FROM t ORDER BY _time_ns"),
    )
    .await;
    assert_eq!(
        rows,
        texts(&[&["north", "1.0", "NULL"], &["south", "2.0", "new"]])
    );
    assert_eq!(names::decode(&zone).as_deref(), Some("Zone Name"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_and_a_crash_before_the_group_commit_write_nothing_twice() {
    let mut lab = Lab::new(2).await;
    let line = |n: usize| {
        format!(
            "gate,gate=g{} open=true {}",
            n % 3,
            1_700_000_000_000_000_000i64 + n as i64
        )
    };
    for request in 0..10 {
        let lines: Vec<String> = (0..50).map(|i| line(request * 50 + i)).collect();
        let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
        lab.send(request as u32 % 2, "park", &lines).await;
    }
    lab.sink_until(lab.config(), 500).await;
    // More arrives; a restarted sink takes only the new rows.
    for request in 10..12 {
        let lines: Vec<String> = (0..50).map(|i| line(request * 50 + i)).collect();
        let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
        lab.send(request as u32 % 2, "park", &lines).await;
    }
    let counters = lab.sink_until(lab.config(), 100).await;
    assert_eq!(counters.rows_written.load(Ordering::Relaxed), 100);
    // A crash after the tables committed but before the group did: the group's offsets are
    // behind what the table holds. The sink reads everything again and writes none of it.
    lab.bus
        .commit("lake", &[(TOPIC, 0, 0), (TOPIC, 1, 0)])
        .await
        .unwrap();
    lab.send(0, "park", &[&line(600)]).await;
    let counters = lab.sink_until(lab.config(), 1).await;
    assert_eq!(counters.rows_written.load(Ordering::Relaxed), 1);
    assert_eq!(counters.rows_skipped.load(Ordering::Relaxed), 600);
    let dir = lab.table_dir("park", "gate");
    let rows = query(&dir, "SELECT count(*), count(DISTINCT _time_ns) FROM t").await;
    assert_eq!(rows, texts(&[&["601", "601"]]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_a_crash_left_half_written_are_removed_when_the_table_opens() {
    let mut lab = Lab::new(1).await;
    lab.send(
        0,
        "park",
        &["fence,segment=s1 voltage_kv=9.5 1700000000000000000"],
    )
    .await;
    lab.sink_until(lab.config(), 1).await;
    let dir = lab.table_dir("park", "fence");
    let partition = dir.join("_day=2023-11-14");
    let staged = partition.join("part-00000-left-behind.parquet#1");
    std::fs::write(&staged, b"half a file").unwrap();
    lab.send(
        0,
        "park",
        &["fence,segment=s1 voltage_kv=9.4 1700000001000000000"],
    )
    .await;
    lab.sink_until(lab.config(), 1).await;
    assert!(!staged.exists());
    let rows = query(&dir, "SELECT count(*) FROM t").await;
    assert_eq!(rows, texts(&[&["2"]]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_hundredth_commit_writes_a_checkpoint_that_keeps_the_positions() {
    let mut lab = Lab::new(1).await;
    let commits = 105;
    for n in 0..commits {
        let line = format!(
            "gate,gate=g1 open=true {}",
            1_700_000_000_000_000_000i64 + n
        );
        lab.send(0, "park", &[&line]).await;
    }
    // One row per commit: each read takes one batch, and one row fills the buffer.
    let config = nublar_lake::SinkConfig {
        rows_max: 1,
        read_bytes: 1,
        ..lab.config()
    };
    let counters = lab.sink_until(config, commits as u64).await;
    assert_eq!(counters.commits.load(Ordering::Relaxed), commits as u64);
    let log = lab.table_dir("park", "gate").join("_delta_log");
    assert!(
        log.join("00000000000000000099.checkpoint.parquet").exists(),
        "no checkpoint at version 99 in {}",
        log.display()
    );
    // What the table holds is read back through the checkpoint: nothing is written twice.
    lab.bus.commit("lake", &[(TOPIC, 0, 0)]).await.unwrap();
    lab.send(0, "park", &["gate,gate=g1 open=false 1700000001000000000"])
        .await;
    let counters = lab.sink_until(lab.config(), 1).await;
    assert_eq!(
        counters.rows_skipped.load(Ordering::Relaxed),
        commits as u64
    );
    let rows = query(
        &lab.table_dir("park", "gate"),
        "SELECT count(*), count(DISTINCT _time_ns) FROM t",
    )
    .await;
    assert_eq!(rows, texts(&[&["106", "106"]]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_of_json_records_becomes_a_table_of_fixed_columns() {
    use nublar_bus::{BatchBuilder, Compression, TopicConfig};
    use nublar_lake::{JsonTable, RecordFormat};
    use nublar_model::FieldType;
    let lab = Lab::new(1).await;
    lab.bus
        .ensure_topic("_alerts", TopicConfig::with_partitions(1))
        .await
        .unwrap();
    let mut builder = BatchBuilder::new(Compression::None)
        .batch_key("alerts-1")
        .unwrap();
    for record in [
        r#"{"db":"park","at_ns":1700000000000000000,"rule":"fence","level":3,"text":"low voltage","from":"2001:db8::9"}"#,
        r#"{"db":"park","at_ns":1700000001000000000,"rule":"silence","level":"high"}"#,
        r#"{"db":"park","rule":"no time"}"#,
        r#"not json"#,
        r#"{"db":"zoo","at_ns":1700000002000000000,"rule":"gate","level":1}"#,
    ] {
        builder.push(None, record.as_bytes(), &[]);
    }
    lab.bus
        .append("_alerts", 0, builder.finish().unwrap())
        .await
        .unwrap();
    let config = nublar_lake::SinkConfig {
        topic: "_alerts".into(),
        group: "lake-alerts".into(),
        format: RecordFormat::Json(JsonTable {
            table: "_alerts".into(),
            db: "db".into(),
            time: "at_ns".into(),
            sender: Some("from".into()),
            tags: vec!["rule".into()],
            fields: vec![
                ("level".into(), FieldType::I64),
                ("text".into(), FieldType::Str),
            ],
        }),
        ..lab.config()
    };
    let counters = lab.sink_until(config, 3).await;
    assert_eq!(counters.records_unreadable.load(Ordering::Relaxed), 2);
    let rows = query(
        &lab.table_dir("park", "_alerts"),
        "SELECT _time_ns, rule, level, text, _sender, _batch_key FROM t ORDER BY _time_ns",
    )
    .await;
    // A member of another type than its column's is a null, not a refusal of the row.
    assert_eq!(
        rows,
        texts(&[
            &[
                "1700000000000000000",
                "fence",
                "3",
                "low voltage",
                "2001:db8::9",
                "alerts-1"
            ],
            &[
                "1700000001000000000",
                "silence",
                "NULL",
                "NULL",
                "NULL",
                "alerts-1"
            ],
        ])
    );
    let zoo = query(&lab.table_dir("zoo", "_alerts"), "SELECT rule FROM t").await;
    assert_eq!(zoo, texts(&[&["gate"]]));
}
