//! The lake sink against a real embedded log and real Delta tables, read back with DataFusion:
//! types and exact values, unsafe names, schema evolution, and exactly once across restarts
//! and a crash between the table commits and the group's.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use deltalake::DeltaTable;
use deltalake::arrow::array::{Array, StringArray};
use deltalake::arrow::datatypes::DataType as ArrowType;
use deltalake::datafusion::common::TableReference;
use deltalake::datafusion::prelude::SessionContext;
use nublar_bus::{BatchBuilder, Bus, Compression, EmbeddedBus, TopicConfig};
use nublar_lake::{Sink, SinkConfig, names};
use nublar_log::Log;
use tokio::sync::watch;

const TOPIC: &str = "telemetry";

struct Lab {
    _dir: tempfile::TempDir,
    bus: Arc<dyn Bus>,
    lake: std::path::PathBuf,
    sequence: u64,
}

impl Lab {
    async fn new(partitions: u32) -> Lab {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(dir.path().join("log")).unwrap();
        let bus = EmbeddedBus::new(log).into_shared();
        bus.ensure_topic(TOPIC, TopicConfig::with_partitions(partitions))
            .await
            .unwrap();
        let lake = dir.path().join("lake");
        Lab {
            _dir: dir,
            bus,
            lake,
            sequence: 0,
        }
    }

    /// Appends lines as the gateway does: one batch per request, keyed, with the database and
    /// sender on the first record.
    async fn send(&mut self, partition: u32, db: &str, lines: &[&str]) {
        self.sequence += 1;
        let mut builder = BatchBuilder::new(Compression::Lz4)
            .batch_key(&format!("{db}/request-{}", self.sequence))
            .unwrap();
        for (index, line) in lines.iter().enumerate() {
            let headers: &[(&str, &[u8])] = if index == 0 {
                &[("db", db.as_bytes()), ("sender", b"2001:db8:7::42")]
            } else {
                &[]
            };
            builder.push(None, line.as_bytes(), headers);
        }
        self.bus
            .append(TOPIC, partition, builder.finish().unwrap())
            .await
            .unwrap();
    }

    fn config(&self) -> SinkConfig {
        SinkConfig {
            commit_interval: Duration::from_millis(100),
            retry_after: Duration::from_millis(50),
            ..SinkConfig::new(self.lake.clone())
        }
    }

    /// Runs a sink until it has written `rows` rows (and committed its group), then stops it.
    async fn sink_until(&self, config: SinkConfig, rows: u64) -> Arc<nublar_lake::SinkCounters> {
        let sink = Sink::new(self.bus.clone(), config);
        let counters = sink.counters();
        let (stop, stopped) = watch::channel(false);
        let running = tokio::spawn(async move { sink.run(stopped).await });
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while counters.rows_written.load(Ordering::Relaxed) < rows {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the sink wrote {} of {rows} rows",
                counters.rows_written.load(Ordering::Relaxed)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        stop.send(true).unwrap();
        running.await.unwrap().unwrap();
        counters
    }

    fn table_dir(&self, db: &str, measurement: &str) -> std::path::PathBuf {
        self.lake
            .join(names::encode(db))
            .join(names::encode(measurement))
    }
}

/// Runs `sql` over the table in `dir` (registered as `t`) and returns every value as text.
async fn query(dir: &Path, sql: &str) -> Vec<Vec<String>> {
    let url = deltalake::ensure_table_uri(dir.to_string_lossy()).unwrap();
    let table = DeltaTable::try_from_url(url).await.unwrap();
    let context = SessionContext::new();
    context
        .register_table(
            TableReference::bare("t"),
            table.table_provider().await.unwrap(),
        )
        .unwrap();
    let batches = context.sql(sql).await.unwrap().collect().await.unwrap();
    let mut rows = Vec::new();
    for batch in batches {
        let columns: Vec<StringArray> = batch
            .columns()
            .iter()
            .map(|column| {
                let text = deltalake::arrow::compute::cast(column, &ArrowType::Utf8).unwrap();
                text.as_any().downcast_ref::<StringArray>().unwrap().clone()
            })
            .collect();
        for row in 0..batch.num_rows() {
            rows.push(
                columns
                    .iter()
                    .map(|column| {
                        if column.is_null(row) {
                            "NULL".to_owned()
                        } else {
                            column.value(row).to_owned()
                        }
                    })
                    .collect(),
            );
        }
    }
    rows
}

fn texts(rows: &[&[&str]]) -> Vec<Vec<String>> {
    rows.iter()
        .map(|row| row.iter().map(|value| value.to_string()).collect())
        .collect()
}

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
