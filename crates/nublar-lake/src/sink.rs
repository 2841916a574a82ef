//! The lake sink: a topic into Delta tables, exactly once. The `telemetry` topic becomes one
//! table per database and measurement; any other topic of JSON records (the dead letters, a
//! processor's output) becomes one table per database with the columns its [`JsonTable`] names.
//!
//! The sink reads every partition of its topic from its consumer group's offsets, turns each
//! record (for telemetry, one event in the stored layout of `nublar_model::stored`, with the
//! database and sender in the headers of its batch's first record) into a row of its table's
//! buffer, and commits when the oldest buffered row has waited `commit_interval`, or the
//! buffers reach `rows_max` or `bytes_max`.
//! A commit writes each table's rows with the last offset of each partition it now holds, in the
//! same Delta transaction; only when every table has committed does the group commit its
//! offsets. After a crash anywhere in between, the sink starts from the group's offsets and
//! skips, per table, what the table says it already holds: nothing is lost and nothing is
//! written twice.
//!
//! Any failure of a table commit ends the round: the sink forgets what it buffered, waits a
//! moment, and reads again from its group's offsets, which is the same path as a restart.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nublar_bus::{Bus, BusError, ReadBatches, Stalls, Start, Unreadable};
use nublar_sink::{AfterPass, CommitStep, Limits, SinkCore, start_at};

use crate::store::DurableLocalStore;
use nublar_model::{Event, Field, FieldType, FieldValue, ParsedLine, Tag, stored};
use tokio::sync::watch;

use crate::LakeError;
use crate::buffer::{Mismatch, RowOrigin, TableBuffer};
use crate::names;
use crate::table::{Table, app_id};

/// How the records of a sink's topic become rows.
#[derive(Clone, Debug)]
pub enum RecordFormat {
    /// One event per record in the stored layout (or, as written before it, canonical line
    /// protocol), the database and the sender in the headers (`db`, `sender`) of its batch's
    /// first record: the gateway's telemetry. The table is the event's measurement.
    Events,
    /// One JSON object per record, a row of one table with fixed columns (the dead letters,
    /// a processor's output).
    Json(JsonTable),
}

/// A table made of JSON records: which members hold what.
#[derive(Clone, Debug)]
pub struct JsonTable {
    /// The table's name in every database.
    pub table: String,
    /// The member naming the database the row belongs to.
    pub db: String,
    /// The member holding the row's time, in nanoseconds since the epoch.
    pub time: String,
    /// The member holding the sender's address, for the `_sender` column.
    pub sender: Option<String>,
    /// Members that become tag columns (text, dictionary encoded).
    pub tags: Vec<String>,
    /// Members that become field columns of the given types.
    pub fields: Vec<(String, FieldType)>,
}

/// How the sink runs; see the example configuration for each option's meaning and default.
#[derive(Clone, Debug)]
pub struct SinkConfig {
    pub topic: String,
    pub format: RecordFormat,
    pub group: String,
    /// Where the tables live: `<lake>/<database>/<measurement>`, names stored as
    /// [`names::encode`] writes them.
    pub lake_dir: PathBuf,
    pub commit_interval: Duration,
    pub rows_max: usize,
    pub bytes_max: usize,
    /// Bytes asked of the bus per read of one partition.
    pub read_bytes: usize,
    pub zstd_level: i32,
    /// How long to wait after a failed round before reading again.
    pub retry_after: Duration,
    /// Where a partition that meets an unreadable batch stops, shared with the node.
    pub stalls: Arc<Stalls>,
    /// What every table is written through: durable before it answers.
    pub store: Arc<DurableLocalStore>,
}

impl SinkConfig {
    /// The telemetry topic's sink, as group `lake`.
    pub fn new(lake_dir: PathBuf) -> SinkConfig {
        SinkConfig {
            topic: "telemetry".into(),
            format: RecordFormat::Events,
            group: "lake".into(),
            lake_dir,
            commit_interval: Duration::from_secs(1),
            rows_max: 1_000_000,
            bytes_max: 256 << 20,
            read_bytes: 4 << 20,
            zstd_level: 1,
            retry_after: Duration::from_secs(1),
            stalls: Arc::new(Stalls::default()),
            store: DurableLocalStore::shared(),
        }
    }
}

/// What the sink has done, for `/metrics` and tests.
#[derive(Debug, Default)]
pub struct SinkCounters {
    pub rows_written: AtomicU64,
    /// Rows read that a table already held (after a restart).
    pub rows_skipped: AtomicU64,
    pub commits: AtomicU64,
    /// Rounds that failed and were read again.
    pub failed_rounds: AtomicU64,
    /// Values left out because their column has another type in the table.
    pub values_mismatched: AtomicU64,
    /// Records that could not be made into a row (no database header, no readable event).
    pub records_unreadable: AtomicU64,
}

pub struct Sink {
    bus: Arc<dyn Bus>,
    config: SinkConfig,
    counters: Arc<SinkCounters>,
}

/// An open table and the rows waiting for its next commit; its number in the round's
/// [`SinkCore`] is its index in `Round::slots`.
struct Slot {
    table: Table,
    buffer: TableBuffer,
}

/// One round: its decisions in `core`, rebuilt from the group's offsets after any failure.
struct Round {
    core: SinkCore,
    /// Every table opened this round.
    slots: Vec<Slot>,
    /// Database → table name → index in `slots`: looked up by the names of each record as
    /// borrowed, so a row costs no allocation to find its table.
    tables: HashMap<String, HashMap<String, usize>>,
    /// The database, table and slot of the last row: consecutive rows mostly share a table.
    last: Option<(String, String, usize)>,
    app_ids: Vec<String>,
    /// The clock the core reads: time since the round began.
    began: Instant,
}

impl Round {
    fn now(&self) -> Duration {
        self.began.elapsed()
    }
}

impl Sink {
    pub fn new(bus: Arc<dyn Bus>, config: SinkConfig) -> Sink {
        Sink {
            bus,
            config,
            counters: Arc::new(SinkCounters::default()),
        }
    }

    /// The topic the sink reads.
    pub fn topic(&self) -> &str {
        &self.config.topic
    }

    pub fn counters(&self) -> Arc<SinkCounters> {
        self.counters.clone()
    }

    /// Runs until `stop` turns true, then reads up to where the log ends at that moment,
    /// commits, and returns. Failed rounds are retried; only a bus that cannot serve the topic
    /// at all ends the sink with an error (or a failure while stopping).
    pub async fn run(&self, mut stop: watch::Receiver<bool>) -> Result<(), LakeError> {
        self.bus
            .require_group(&self.config.group, &self.config.topic)
            .await
            .map_err(LakeError::Bus)?;
        loop {
            match self.round(&mut stop).await {
                Ok(()) => return Ok(()),
                Err(error) => {
                    self.counters.failed_rounds.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%error, "lake sink round failed; reading again from the last commit");
                    tokio::select! {
                        () = tokio::time::sleep(self.config.retry_after) => {}
                        _ = stop.wait_for(|stopped| *stopped) => return Err(error),
                    }
                }
            }
        }
    }

    /// Reads and commits until stopped (Ok) or until something fails (Err).
    async fn round(&self, stop: &mut watch::Receiver<bool>) -> Result<(), LakeError> {
        let topic = &self.config.topic;
        let partitions = self.bus.partitions(topic).await.map_err(LakeError::Bus)?;
        let mut starts = Vec::new();
        for partition in 0..partitions {
            let committed = self
                .bus
                .committed(&self.config.group, topic, partition)
                .await
                .map_err(LakeError::Bus)?;
            let first = self
                .bus
                .offsets(topic, partition)
                .await
                .map_err(LakeError::Bus)?
                .start;
            let start = start_at(committed, first);
            // An operator reclaimed the log's space past what the lake had read
            // (`nublar log reclaim`): those records are gone, and the log says how many.
            if start.lost > 0 {
                tracing::warn!(
                    topic,
                    partition,
                    lost = start.lost,
                    "records the lake had not read were reclaimed from the log; going on from its start"
                );
            }
            starts.push(start.offset);
        }
        let limits = Limits {
            rows_max: self.config.rows_max,
            bytes_max: self.config.bytes_max,
            commit_interval: self.config.commit_interval,
        };
        let mut round = Round {
            core: SinkCore::new(starts, limits),
            slots: Vec::new(),
            tables: HashMap::new(),
            last: None,
            app_ids: (0..partitions).map(|p| app_id(topic, p)).collect(),
            began: Instant::now(),
        };
        let (group, stalls) = (&self.config.group, &self.config.stalls);
        loop {
            let mut read_any = false;
            for partition in 0..partitions {
                if round.core.is_stalled(partition) {
                    let Some(to) = stalls.skip_to(group, topic, partition) else {
                        continue;
                    };
                    // The operator's word: the group moves past what lies between, at the
                    // next commit, which is now.
                    round.core.resume(partition, to);
                    stalls.resumed(group, topic, partition, to);
                    self.commit(&mut round).await?;
                }
                let at = round.core.next(partition);
                let read = self
                    .bus
                    .read(topic, partition, Start::Offset(at), self.config.read_bytes)
                    .await;
                let batches = match read {
                    Ok(batches) => batches,
                    Err(BusError::Corruption(reason)) => {
                        stalls.stall(group, topic, partition, at, None, &reason);
                        round.core.stall(partition, at);
                        continue;
                    }
                    Err(error) => return Err(LakeError::Bus(error)),
                };
                if let Some(next) = batches.next_offset() {
                    read_any = true;
                    match self.take(&mut round, partition, &batches).await? {
                        None => round.core.advance(partition, next),
                        Some(broken) => {
                            round.core.stall(partition, broken.offset);
                            stalls.stall(
                                group,
                                topic,
                                partition,
                                broken.offset,
                                broken.resume_at,
                                &broken.reason,
                            );
                        }
                    }
                }
                if round.core.full() {
                    self.commit(&mut round).await?;
                }
            }
            let (now, stopping) = (round.now(), *stop.borrow());
            let (commit, done, wait) = match round.core.pass_done(read_any, stopping, now) {
                // Asked to stop: read up to where the log ends now, so that a drained node's
                // lake holds everything it acknowledged, then commit and return.
                AfterPass::FetchEnds => {
                    let mut ends = Vec::new();
                    for partition in 0..partitions {
                        ends.push(
                            self.bus
                                .offsets(topic, partition)
                                .await
                                .map_err(LakeError::Bus)?
                                .end,
                        );
                    }
                    round.core.drain_to(ends);
                    continue;
                }
                AfterPass::Go { commit, done, wait } => (commit, done, wait),
            };
            if commit {
                self.commit(&mut round).await?;
            }
            if done {
                return Ok(());
            }
            if let Some(wait) = wait {
                let waiting = round.core.waiting();
                tokio::select! {
                    () = self.wait_for_records(&waiting, wait) => {}
                    () = stalls.changed() => {}
                    _ = stop.changed() => {}
                }
            }
        }
    }

    /// Waits until any partition has a record past `next` (those with `None` are not watched),
    /// at most `limit`.
    async fn wait_for_records(&self, next: &[Option<i64>], limit: Duration) {
        let mut waits = tokio::task::JoinSet::new();
        if next.iter().all(Option::is_none) {
            tokio::time::sleep(limit).await;
            return;
        }
        for (partition, offset) in next.iter().enumerate() {
            let Some(offset) = offset else {
                continue;
            };
            let bus = self.bus.clone();
            let topic = self.config.topic.clone();
            let offset = *offset;
            waits.spawn(async move {
                bus.wait(&topic, partition as u32, offset, limit)
                    .await
                    .unwrap_or(false)
            });
        }
        while let Some(result) = waits.join_next().await {
            if result.unwrap_or(false) {
                break;
            }
        }
        waits.abort_all();
    }

    /// Makes rows of the records of `batches` past the round's position in `partition`. A
    /// batch that cannot be read ends the take: the rows before it are taken, and the answer
    /// says where the partition stands.
    async fn take(
        &self,
        round: &mut Round,
        partition: u32,
        batches: &ReadBatches,
    ) -> Result<Option<Unreadable>, LakeError> {
        let from = round.core.next(partition);
        // One clock reading for the whole read: a row's wait is counted from when its batch
        // was read, and a reading per row would cost more than the row.
        let read_at = round.now();
        let mut mismatches: Vec<Mismatch> = Vec::new();
        let mut broken = None;
        'batches: for view in batches.iter() {
            let mut untaken = view.base_offset().max(from);
            let unreadable = |offset: i64, error: nublar_bus::BatchError| Unreadable {
                offset,
                resume_at: Some(view.next_offset()),
                reason: error.to_string(),
            };
            let records = match view.records() {
                Ok(records) => records,
                Err(error) => {
                    broken = Some(unreadable(untaken, error));
                    break;
                }
            };
            let batch_key = match view.batch_key_in(&records) {
                Ok(key) => key,
                Err(error) => {
                    broken = Some(unreadable(untaken, error));
                    break;
                }
            };
            let mut database: Option<String> = None;
            let mut sender: Option<String> = None;
            // Each record of the batch is decoded into this one line, which keeps its lists.
            let mut event = ParsedLine {
                measurement: Cow::Borrowed(""),
                tags: Vec::new(),
                fields: Vec::new(),
                timestamp_ns: None,
            };
            let mut json_row;
            for (index, record) in records.iter().enumerate() {
                let record = match record {
                    Ok(record) => record,
                    Err(error) => {
                        broken = Some(unreadable(untaken, error));
                        break 'batches;
                    }
                };
                untaken = untaken.max(record.offset + 1);
                if index == 0 {
                    database = record
                        .header("db")
                        .and_then(|value| std::str::from_utf8(value).ok())
                        .map(str::to_owned);
                    sender = record
                        .header("sender")
                        .and_then(|value| std::str::from_utf8(value).ok())
                        .map(str::to_owned);
                }
                if record.offset < from {
                    continue;
                }
                let decoded = match &self.config.format {
                    RecordFormat::Events => database
                        .as_deref()
                        .filter(|_| stored::decode_into(record.value, &mut event).is_ok())
                        .map(|db| (db, &event, sender.as_deref())),
                    RecordFormat::Json(table) => {
                        json_row = decode_json(record.value, table);
                        json_row
                            .as_ref()
                            .map(|(db, line, sender)| (db.as_str(), line, sender.as_deref()))
                    }
                };
                let Some((db, line, row_sender)) = decoded else {
                    self.counters
                        .records_unreadable
                        .fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                let measurement = line.measurement.as_ref();
                let index = match &round.last {
                    Some((last_db, last_table, index))
                        if last_db == db && last_table == measurement =>
                    {
                        *index
                    }
                    _ => {
                        let index = self.slot(round, db, measurement).await?;
                        round.last = Some((db.to_owned(), measurement.to_owned(), index));
                        index
                    }
                };
                let slot = &mut round.slots[index];
                if slot.table.holds(partition, record.offset) {
                    self.counters.rows_skipped.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let timestamp_ns = line
                    .timestamp_ns
                    .unwrap_or(record.timestamp_ms.saturating_mul(1_000_000));
                let table = &slot.table;
                slot.buffer.push(
                    line,
                    timestamp_ns,
                    &RowOrigin {
                        sender: row_sender,
                        batch_key: batch_key.as_deref(),
                    },
                    |name| table.known(name),
                    &mut mismatches,
                );
                let bytes = slot.buffer.bytes();
                round
                    .core
                    .row_taken(index, partition, record.offset, bytes, read_at);
            }
        }
        if !mismatches.is_empty() {
            self.counters
                .values_mismatched
                .fetch_add(mismatches.len() as u64, Ordering::Relaxed);
            tracing::warn!(
                first = ?mismatches[0],
                count = mismatches.len(),
                "values left out of the lake: their column has another type"
            );
        }
        Ok(broken)
    }

    /// The slot of table `measurement` of `db`, opening the table if this round has not.
    async fn slot(
        &self,
        round: &mut Round,
        db: &str,
        measurement: &str,
    ) -> Result<usize, LakeError> {
        if let Some(index) = round
            .tables
            .get(db)
            .and_then(|tables| tables.get(measurement))
        {
            return Ok(*index);
        }
        let dir = self
            .config
            .lake_dir
            .join(names::encode(db))
            .join(names::encode(measurement));
        let table = Table::open(
            &dir,
            measurement,
            self.config.zstd_level,
            &round.app_ids,
            &self.config.store,
        )
        .await?;
        round.slots.push(Slot {
            table,
            buffer: TableBuffer::default(),
        });
        let index = round.core.add_table();
        debug_assert_eq!(index, round.slots.len() - 1);
        round
            .tables
            .entry(db.to_owned())
            .or_default()
            .insert(measurement.to_owned(), index);
        Ok(index)
    }

    /// Commits as the core orders it: every table's rows, then the group's offsets.
    async fn commit(&self, round: &mut Round) -> Result<(), LakeError> {
        round.core.begin_commit();
        while let Some(step) = round.core.commit_step() {
            match &step {
                CommitStep::Table { table, positions } => {
                    let slot = &mut round.slots[*table];
                    let rows = slot.buffer.rows();
                    let positions: BTreeMap<String, i64> = positions
                        .iter()
                        .map(|(partition, last)| {
                            (round.app_ids[*partition as usize].clone(), *last)
                        })
                        .collect();
                    slot.table.commit(&mut slot.buffer, &positions).await?;
                    self.counters
                        .rows_written
                        .fetch_add(rows as u64, Ordering::Relaxed);
                    self.counters.commits.fetch_add(1, Ordering::Relaxed);
                }
                CommitStep::Group { offsets } => {
                    let offsets: Vec<(&str, u32, i64)> = offsets
                        .iter()
                        .enumerate()
                        .map(|(partition, offset)| {
                            (self.config.topic.as_str(), partition as u32, *offset)
                        })
                        .collect();
                    self.bus
                        .commit(&self.config.group, &offsets)
                        .await
                        .map_err(LakeError::Bus)?;
                }
            }
            round.core.step_done(&step);
        }
        Ok(())
    }
}

/// A row of a JSON topic. A member missing or of another type is a null in its column; a
/// record without its database or time is no row.
fn decode_json(value: &[u8], table: &JsonTable) -> Option<(String, Event, Option<String>)> {
    let serde_json::Value::Object(mut object) = serde_json::from_slice(value).ok()? else {
        return None;
    };
    let text = |value: serde_json::Value| match value {
        serde_json::Value::String(text) => Some(text),
        _ => None,
    };
    let db = object.remove(&table.db).and_then(text)?;
    let time = object
        .get(&table.time)
        .and_then(serde_json::Value::as_i64)?;
    let sender = table
        .sender
        .as_ref()
        .and_then(|member| object.remove(member))
        .and_then(text);
    let tags = table
        .tags
        .iter()
        .filter_map(|name| {
            Some(Tag {
                key: Cow::Owned(name.clone()),
                value: Cow::Owned(object.remove(name).and_then(text)?),
            })
        })
        .collect();
    let fields = table
        .fields
        .iter()
        .filter_map(|(name, field_type)| {
            let member = object.remove(name)?;
            let value = match field_type {
                FieldType::F64 => FieldValue::F64(member.as_f64()?),
                FieldType::I64 => FieldValue::I64(member.as_i64()?),
                FieldType::U64 => FieldValue::U64(member.as_u64()?),
                FieldType::Bool => FieldValue::Bool(member.as_bool()?),
                FieldType::Str => FieldValue::Str(Cow::Owned(text(member)?)),
            };
            Some(Field {
                key: Cow::Owned(name.clone()),
                value,
            })
        })
        .collect();
    let line = ParsedLine {
        measurement: Cow::Owned(table.table.clone()),
        tags,
        fields,
        timestamp_ns: Some(time),
    };
    Some((db, line, sender))
}
