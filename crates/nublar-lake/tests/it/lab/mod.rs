//! The lake tests' shared lab: a real embedded log with the telemetry topic, lines appended as
//! the gateway appends them, a sink run until it has written what a test waits for, and
//! DataFusion reading a table back as text.
#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use deltalake::DeltaTable;
use deltalake::arrow::array::{Array, StringArray};
use deltalake::arrow::datatypes::DataType as ArrowType;
use deltalake::datafusion::common::TableReference;
use deltalake::datafusion::prelude::SessionContext;
use nublar_bus::{BatchBuilder, Bus, Compression};
use nublar_bus_embedded::EmbeddedBus;
pub use nublar_bus_embedded::nublar_log;
use nublar_lake::{Sink, SinkConfig, names};
use nublar_log::Log;
use tokio::sync::watch;

pub const TOPIC: &str = "telemetry";

pub struct Lab {
    _dir: tempfile::TempDir,
    pub log: Log,
    pub bus: Arc<dyn Bus>,
    pub lake: std::path::PathBuf,
    sequence: u64,
}

impl Lab {
    pub async fn new(partitions: u32) -> Lab {
        Lab::with_topic(nublar_log::TopicConfig::with_partitions(partitions)).await
    }

    /// A lab whose topic has the log settings a test needs (small segments to reclaim).
    pub async fn with_topic(config: nublar_log::TopicConfig) -> Lab {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(dir.path().join("log")).unwrap();
        log.create_topic(TOPIC, config).unwrap();
        let bus = EmbeddedBus::new(log.clone()).into_shared();
        let lake = dir.path().join("lake");
        Lab {
            _dir: dir,
            log,
            bus,
            lake,
            sequence: 0,
        }
    }

    /// Appends lines as the gateway does: one batch per request, keyed, with the database and
    /// sender on the first record, each line parsed and kept in the stored layout.
    pub async fn send(&mut self, partition: u32, db: &str, lines: &[&str]) {
        let values: Vec<Vec<u8>> = lines
            .iter()
            .map(|line| {
                let (_, parsed) = nublar_model::parse_lines(
                    line.as_bytes(),
                    nublar_model::Precision::Ns,
                    Default::default(),
                )
                .next()
                .unwrap();
                let mut value = Vec::new();
                nublar_model::stored::encode(&parsed.unwrap(), &mut value);
                value
            })
            .collect();
        self.send_values(partition, db, &values).await;
    }

    /// Appends values as they are, in one batch as [`Lab::send`] does.
    pub async fn send_values(&mut self, partition: u32, db: &str, lines: &[impl AsRef<[u8]>]) {
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
            builder.push(None, line.as_ref(), headers);
        }
        self.bus
            .append(TOPIC, partition, builder.finish().unwrap())
            .await
            .unwrap();
    }

    pub fn config(&self) -> SinkConfig {
        SinkConfig {
            commit_interval: Duration::from_millis(100),
            retry_after: Duration::from_millis(50),
            ..SinkConfig::new(self.lake.clone())
        }
    }

    /// Runs a sink until it has written `rows` rows (and committed its group), then stops it.
    pub async fn sink_until(
        &self,
        config: SinkConfig,
        rows: u64,
    ) -> Arc<nublar_lake::SinkCounters> {
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

    pub fn table_dir(&self, db: &str, measurement: &str) -> std::path::PathBuf {
        self.lake
            .join(names::encode(db))
            .join(names::encode(measurement))
    }
}

/// Runs `sql` over the table in `dir` (registered as `t`) and returns every value as text.
pub async fn query(dir: &Path, sql: &str) -> Vec<Vec<String>> {
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

pub fn texts(rows: &[&[&str]]) -> Vec<Vec<String>> {
    rows.iter()
        .map(|row| row.iter().map(|value| value.to_string()).collect())
        .collect()
}
