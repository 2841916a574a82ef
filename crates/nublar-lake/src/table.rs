//! One Delta table: opened or created, its schema as nublar columns, what it already holds of
//! each log partition, and commits that carry that position in the same transaction.
//!
//! Exactly once rests on Delta's application transactions (`txn` actions): every commit
//! records, for each log partition whose records it adds, the last offset it holds, under the
//! app id `<topic>/<partition>`. A sink that restarts skips, per table, every offset at or
//! below what the table says it holds; delta-rs does not compare versions itself, so the skip
//! is the sink's (see [`Table::holds`]).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use deltalake::kernel::transaction::CommitProperties;
use deltalake::kernel::{StructField, Transaction};
use deltalake::parquet::basic::{Compression, ZstdLevel};
use deltalake::parquet::file::properties::WriterProperties;
use deltalake::protocol::SaveMode;
use deltalake::writer::{DeltaWriter, RecordBatchWriter};
use deltalake::{DeltaTable, DeltaTableError, TableProperty};
use nublar_model::ColumnKind;

use crate::LakeError;
use crate::buffer::{DAY, TableBuffer, delta_type, own_columns};
use crate::names;
use crate::store::DurableLocalStore;

/// Field metadata keys: what a column is, and its name as sent.
const KIND_KEY: &str = "nublar.kind";
const NAME_KEY: &str = "nublar.name";

/// An open table and its writer.
pub struct Table {
    dir: PathBuf,
    table: DeltaTable,
    writer: RecordBatchWriter,
    /// Name as sent → kind, for every sender's column the table has.
    known: HashMap<String, ColumnKind>,
    /// The app id of each log partition, by partition number.
    app_ids: Vec<String>,
    /// By partition number: the last offset the table holds of that log partition.
    held: Vec<Option<i64>>,
    zstd_level: i32,
}

/// The app id of one log partition in Delta's application transactions.
pub fn app_id(topic: &str, partition: u32) -> String {
    format!("{topic}/{partition}")
}

/// The Delta column for a sender's column.
fn delta_field(name: &str, kind: ColumnKind) -> StructField {
    StructField::new(names::encode(name), delta_type(kind), true)
        .with_metadata([(KIND_KEY, kind.stored_name()), (NAME_KEY, name)])
}

/// Where a table says which version of nublar's layout it has (its own columns, how names
/// are encoded, the field metadata keys): a key of the Delta table's configuration. Tables
/// made before the key existed have layout 1 and no key.
pub const LAYOUT_KEY: &str = "nublar.layout";
/// The layout this nublar writes and reads.
pub const LAYOUT_VERSION: u32 = 1;

/// The Delta table in `dir` through `store`, which every write of it then goes through;
/// loaded to its latest version when `load` (a table that does not exist yet stays empty),
/// and refused when its layout is not one this nublar reads.
pub(crate) async fn open_delta(
    dir: &Path,
    store: Arc<DurableLocalStore>,
    load: bool,
) -> Result<DeltaTable, LakeError> {
    let error = |e| table_error(dir, e);
    let url = deltalake::ensure_table_uri(dir.to_string_lossy()).map_err(error)?;
    let mut table = deltalake::DeltaTableBuilder::from_url(url.clone())
        .map_err(error)?
        .with_storage_backend(store, url)
        .build()
        .map_err(error)?;
    if load {
        match table.load().await {
            Ok(()) | Err(DeltaTableError::NotATable(_)) => {}
            Err(e) => return Err(error(e)),
        }
    }
    if table.version().is_some() {
        let snapshot = table.snapshot().map_err(error)?;
        check_layout(dir, snapshot.metadata().configuration().get(LAYOUT_KEY))?;
    }
    Ok(table)
}

/// Refuses a table whose layout this nublar does not read, naming both versions.
pub(crate) fn check_layout(dir: &Path, layout: Option<&String>) -> Result<(), LakeError> {
    let found = match layout {
        None => return Ok(()),
        Some(text) => text.parse::<u32>().ok(),
    };
    match found {
        Some(LAYOUT_VERSION) => Ok(()),
        Some(version) => Err(LakeError::Delta {
            table: dir.display().to_string(),
            message: format!(
                "its nublar layout is version {version}, written by {} nublar; this one reads \
                 version {LAYOUT_VERSION}",
                if version > LAYOUT_VERSION {
                    "a newer"
                } else {
                    "an older"
                }
            ),
        }),
        None => Err(LakeError::Delta {
            table: dir.display().to_string(),
            message: format!(
                "its {LAYOUT_KEY} is {:?}, not a version this nublar knows (it reads \
                 {LAYOUT_VERSION})",
                layout.map(String::as_str).unwrap_or_default()
            ),
        }),
    }
}

fn table_error(dir: &Path, error: DeltaTableError) -> LakeError {
    LakeError::Delta {
        table: dir.display().to_string(),
        message: error.to_string(),
    }
}

impl Table {
    /// Opens the table in `dir`, creating it (partitioned by day) when there is none, after
    /// deleting the staging files a crash during an upload may have left: the object store
    /// hides them from listings, so not even VACUUM would ever find them.
    pub async fn open(
        dir: &Path,
        name: &str,
        zstd_level: i32,
        app_ids: &[String],
        store: &Arc<DurableLocalStore>,
    ) -> Result<Table, LakeError> {
        store.create_dir_all(dir).map_err(|error| LakeError::Io {
            path: dir.display().to_string(),
            message: error.to_string(),
        })?;
        remove_staging_files(dir)?;
        let error = |e| table_error(dir, e);
        // A table not made yet is not loaded: loading one that has no log fails, and the
        // Delta kernel logs that failure as an error where nothing is wrong.
        let has_log = std::fs::read_dir(dir.join("_delta_log"))
            .is_ok_and(|mut entries| entries.next().is_some());
        let mut table = open_delta(dir, store.clone(), has_log).await?;
        if table.version().is_none() {
            let mut stats_columns: Vec<String> = own_columns()
                .iter()
                .map(|field| field.name().to_owned())
                .collect();
            stats_columns.retain(|column| column != DAY);
            table = table
                .create()
                .with_table_name(name)
                .with_columns(own_columns())
                .with_partition_columns([DAY])
                // Statistics for nublar's columns only (sender columns are added as they come):
                // unsigned values are decimals, whose statistics delta-rs writes through f64.
                .with_configuration_property(
                    TableProperty::DataSkippingStatsColumns,
                    Some(stats_columns.join(",")),
                )
                // A key of nublar's own, which delta-rs refuses unless told that keys
                // outside Delta's may be kept.
                .with_raise_if_key_not_exists(false)
                .with_configuration([(LAYOUT_KEY, Some(LAYOUT_VERSION.to_string()))])
                .with_save_mode(SaveMode::Ignore)
                .await
                .map_err(error)?;
        }
        let mut held = Vec::with_capacity(app_ids.len());
        {
            let snapshot = table.snapshot().map_err(error)?;
            let log_store = table.log_store();
            for app in app_ids {
                held.push(
                    snapshot
                        .transaction_version(log_store.as_ref(), app)
                        .await
                        .map_err(error)?,
                );
            }
        }
        let writer = new_writer(&table, zstd_level).map_err(error)?;
        let mut opened = Table {
            dir: dir.to_owned(),
            table,
            writer,
            known: HashMap::new(),
            app_ids: app_ids.to_vec(),
            held,
            zstd_level,
        };
        opened.read_schema()?;
        Ok(opened)
    }

    fn read_schema(&mut self) -> Result<(), LakeError> {
        let schema = self
            .table
            .snapshot()
            .map_err(|e| table_error(&self.dir, e))?
            .schema();
        self.known.clear();
        for field in schema.fields() {
            let metadata = field.metadata();
            let kind = metadata.get(KIND_KEY).and_then(|value| match value {
                deltalake::kernel::MetadataValue::String(text) => {
                    ColumnKind::from_stored_name(text)
                }
                _ => None,
            });
            let name = metadata.get(NAME_KEY).and_then(|value| match value {
                deltalake::kernel::MetadataValue::String(text) => Some(text.clone()),
                _ => None,
            });
            if let (Some(kind), Some(name)) = (kind, name) {
                self.known.insert(name, kind);
            }
        }
        Ok(())
    }

    /// What the table holds for a sender's column, if it has it.
    pub fn known(&self, name: &str) -> Option<ColumnKind> {
        self.known.get(name).copied()
    }

    /// Whether the table already holds `offset` of log partition `partition`.
    pub fn holds(&self, partition: u32, offset: i64) -> bool {
        self.held
            .get(partition as usize)
            .copied()
            .flatten()
            .is_some_and(|held| offset <= held)
    }

    /// Notes that the table now holds each position (app id → offset).
    fn note_held(&mut self, positions: &BTreeMap<String, i64>) {
        for (app, offset) in positions {
            if let Some(index) = self.app_ids.iter().position(|known| known == app) {
                self.held[index] = Some(*offset);
            }
        }
    }

    /// Writes the buffer's rows and commits them with `positions` (app id → last offset now
    /// held) in one transaction. Columns the buffer has and the table lacks are added first,
    /// in a commit of their own, as nullable columns.
    pub async fn commit(
        &mut self,
        buffer: &mut TableBuffer,
        positions: &BTreeMap<String, i64>,
    ) -> Result<(), LakeError> {
        let new_columns: Vec<StructField> = buffer
            .columns()
            .filter(|(name, _)| !self.known.contains_key(*name))
            .map(|(name, kind)| delta_field(name, kind))
            .collect();
        if !new_columns.is_empty() {
            self.add_columns(new_columns).await?;
        }
        let batch = buffer
            .take_batch(&self.writer.arrow_schema())
            .map_err(|message| LakeError::Delta {
                table: self.dir.display().to_string(),
                message,
            })?;
        let error = |e| table_error(&self.dir, e);
        let transactions = positions
            .iter()
            .map(|(app, offset)| Transaction::new(app.clone(), *offset))
            .collect();
        // A checkpoint every `delta.checkpointInterval` (100) commits keeps opening the table
        // (here, in queries, in every other reader) from replaying the whole log. Expired log
        // clean-up lists all of `_delta_log`, so it belongs to the maintenance job instead.
        let properties = CommitProperties::default()
            .with_application_transactions(transactions)
            .with_create_checkpoint(true)
            .with_cleanup_expired_logs(Some(false));
        // The properties are fixed when a writer is built, so each commit has its own; the
        // next one is in place whatever happens to this one.
        let fresh = new_writer(&self.table, self.zstd_level).map_err(error)?;
        let mut writer =
            std::mem::replace(&mut self.writer, fresh).with_commit_properties(properties);
        writer.write(batch).await.map_err(error)?;
        let Err(commit_error) = writer.flush_and_commit(&mut self.table).await else {
            self.note_held(positions);
            return Ok(());
        };
        // The commit may have landed before a later step of it failed: the table's own record
        // decides. If it did not land, the files written are orphans for VACUUM, and the
        // caller reads these records from the log again.
        self.table.update_incremental(None).await.map_err(error)?;
        let snapshot = self.table.snapshot().map_err(error)?;
        let log_store = self.table.log_store();
        let mut landed = true;
        for (app, offset) in positions {
            let held = snapshot
                .transaction_version(log_store.as_ref(), app)
                .await
                .map_err(error)?;
            landed &= held.is_some_and(|held| held >= *offset);
        }
        if !landed {
            return Err(table_error(&self.dir, commit_error));
        }
        self.note_held(positions);
        Ok(())
    }

    async fn add_columns(&mut self, fields: Vec<StructField>) -> Result<(), LakeError> {
        let error = |e| table_error(&self.dir, e);
        let table = self.table.clone();
        self.table = table
            .add_columns()
            .with_fields(fields)
            .await
            .map_err(error)?;
        self.writer = new_writer(&self.table, self.zstd_level).map_err(error)?;
        self.read_schema()
    }
}

fn new_writer(table: &DeltaTable, zstd_level: i32) -> Result<RecordBatchWriter, DeltaTableError> {
    let level = ZstdLevel::try_new(zstd_level)
        .map_err(|error| DeltaTableError::Generic(format!("zstd level {zstd_level}: {error}")))?;
    let properties = WriterProperties::builder()
        .set_compression(Compression::ZSTD(level))
        .set_created_by(format!("nublar {}", env!("CARGO_PKG_VERSION")))
        .build();
    Ok(RecordBatchWriter::for_table(table)?.with_writer_properties(properties))
}

/// Deletes `*.parquet#<digits>` and `*.json#<digits>` under `dir`: what the local object store
/// leaves when a process dies between writing a file and renaming it into place.
fn remove_staging_files(dir: &Path) -> Result<(), LakeError> {
    let io = |path: &Path, error: std::io::Error| LakeError::Io {
        path: path.display().to_string(),
        message: error.to_string(),
    };
    let mut pending = vec![dir.to_owned()];
    while let Some(current) = pending.pop() {
        let entries = match std::fs::read_dir(&current) {
            Ok(entries) => entries,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => continue,
            Err(error) => return Err(io(&current, error)),
        };
        for entry in entries {
            let entry = entry.map_err(|error| io(&current, error))?;
            let path = entry.path();
            let file_type = entry.file_type().map_err(|error| io(&path, error))?;
            if file_type.is_dir() {
                pending.push(path);
            } else if is_staging_name(&entry.file_name().to_string_lossy()) {
                tracing::info!(path = %path.display(), "removing a file a crash left half written");
                std::fs::remove_file(&path).map_err(|error| io(&path, error))?;
            }
        }
    }
    Ok(())
}

fn is_staging_name(name: &str) -> bool {
    name.rsplit_once('#').is_some_and(|(_, suffix)| {
        !suffix.is_empty() && suffix.bytes().all(|byte| byte.is_ascii_digit())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staging_names_are_recognised() {
        assert!(is_staging_name("part-0001.parquet#1"));
        assert!(is_staging_name("00000000000000000003.json#12"));
        assert!(!is_staging_name("part-0001.parquet"));
        assert!(!is_staging_name("odd#name.parquet"));
        assert!(!is_staging_name("x#"));
    }
}
