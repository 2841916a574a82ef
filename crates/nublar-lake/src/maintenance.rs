//! Keeping tables quick to read and small on disk: compaction (OPTIMIZE), checkpoints, and
//! VACUUM, for the node's background job and `nublar lake …`.
//!
//! All three are safe beside a running sink. OPTIMIZE removes the files it compacts without
//! changing data, so it never conflicts with the sink's appends (Delta's conflict checker
//! lets blind appends and data-preserving removes pass each other). VACUUM deletes only files
//! no version newer than its retention refers to, and files no version refers to at all (a
//! crash between writing a file and committing it) once they are older than the retention;
//! the retention can never be shorter than [`VACUUM_RETENTION_MIN`], far longer than the
//! sink takes from writing a file to committing it, so a file about to be committed is never
//! taken for an orphan.

use std::num::NonZeroU64;
use std::path::{Path, PathBuf};
use std::time::Duration;

use deltalake::DeltaTable;
use deltalake::operations::vacuum::VacuumMode;
use deltalake::parquet::basic::{Compression, ZstdLevel};
use deltalake::parquet::file::properties::WriterProperties;

use crate::LakeError;
use crate::names;

/// The shortest retention VACUUM accepts.
pub const VACUUM_RETENTION_MIN: Duration = Duration::from_secs(3600);

/// One table as `nublar lake tables` shows it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct TableSummary {
    /// Database and measurement as sent.
    pub db: String,
    pub measurement: String,
    pub dir: PathBuf,
    /// `None` for a directory whose table was never created.
    pub version: Option<u64>,
    /// Live data files, their rows and bytes.
    pub files: usize,
    pub rows: u64,
    pub bytes: u64,
    /// Distinct days (partitions) with data.
    pub days: usize,
    pub columns: usize,
}

/// What one OPTIMIZE did.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct OptimizeReport {
    pub files_removed: u64,
    pub files_added: u64,
    pub partitions_optimized: u64,
}

/// What one checkpoint did.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct CheckpointReport {
    /// The version the checkpoint holds (`None`: no table, nothing done).
    pub version: Option<u64>,
    /// Commit files past the log retention that were deleted.
    pub logs_removed: usize,
}

/// What one VACUUM did (or, dry, would do).
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct VacuumReport {
    pub dry_run: bool,
    pub files_deleted: Vec<String>,
}

fn delta_error(dir: &Path) -> impl Fn(deltalake::DeltaTableError) -> LakeError + '_ {
    move |error| LakeError::Delta {
        table: dir.display().to_string(),
        message: error.to_string(),
    }
}

/// Every table in the lake, or of one database: (db, measurement, directory), sorted.
pub fn table_dirs(
    lake_dir: &Path,
    db: Option<&str>,
) -> Result<Vec<(String, String, PathBuf)>, LakeError> {
    let io = |path: &Path, error: std::io::Error| LakeError::Io {
        path: path.display().to_string(),
        message: error.to_string(),
    };
    let databases: Vec<(String, PathBuf)> = match db {
        Some(db) => vec![(db.to_owned(), lake_dir.join(names::encode(db)))],
        None => match std::fs::read_dir(lake_dir) {
            Ok(entries) => {
                let mut databases = Vec::new();
                for entry in entries {
                    let entry = entry.map_err(|error| io(lake_dir, error))?;
                    if let Some(name) = names::decode(&entry.file_name().to_string_lossy()) {
                        databases.push((name, entry.path()));
                    }
                }
                databases
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(error) => return Err(io(lake_dir, error)),
        },
    };
    let mut tables = Vec::new();
    for (db, dir) in databases {
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => continue,
            Err(error) => return Err(io(&dir, error)),
        };
        for entry in entries {
            let entry = entry.map_err(|error| io(&dir, error))?;
            let path = entry.path();
            let Some(measurement) = names::decode(&entry.file_name().to_string_lossy()) else {
                continue;
            };
            if path.join("_delta_log").is_dir() {
                tables.push((db.clone(), measurement, path));
            }
        }
    }
    tables.sort();
    Ok(tables)
}

/// The table in `dir` at its latest version; `None` when it was never created.
pub(crate) async fn open(dir: &Path) -> Result<Option<DeltaTable>, LakeError> {
    let store = crate::store::DurableLocalStore::shared();
    let table = crate::table::open_delta(dir, store, true).await?;
    Ok(table.version().is_some().then_some(table))
}

/// The table in `dir`, summed up.
pub async fn summary(db: &str, measurement: &str, dir: &Path) -> Result<TableSummary, LakeError> {
    let error = delta_error(dir);
    let mut summary = TableSummary {
        db: db.to_owned(),
        measurement: measurement.to_owned(),
        dir: dir.to_owned(),
        version: None,
        files: 0,
        rows: 0,
        bytes: 0,
        days: 0,
        columns: 0,
    };
    let Some(table) = open(dir).await? else {
        return Ok(summary);
    };
    let snapshot = table.snapshot().map_err(&error)?;
    summary.version = Some(snapshot.version());
    summary.columns = snapshot.schema().fields().count();
    let mut days = std::collections::HashSet::new();
    for file in snapshot.log_data().iter() {
        summary.files += 1;
        summary.bytes += file.size().max(0) as u64;
        summary.rows += file.num_records().unwrap_or(0) as u64;
        if let Some(Some(day)) = file.partition_values_map().get(crate::buffer::DAY) {
            days.insert(day.clone());
        }
    }
    summary.days = days.len();
    Ok(summary)
}

/// Compacts the small files of each day into files of about `target_bytes`, keeping every row.
pub async fn optimize(
    dir: &Path,
    target_bytes: u64,
    zstd_level: i32,
) -> Result<OptimizeReport, LakeError> {
    let error = delta_error(dir);
    let Some(table) = open(dir).await? else {
        return Ok(OptimizeReport::default());
    };
    let level = ZstdLevel::try_new(zstd_level).map_err(|problem| LakeError::Delta {
        table: dir.display().to_string(),
        message: format!("zstd level {zstd_level}: {problem}"),
    })?;
    let properties = WriterProperties::builder()
        .set_compression(Compression::ZSTD(level))
        .set_created_by(format!("nublar {}", env!("CARGO_PKG_VERSION")))
        .build();
    let (_, metrics) = table
        .optimize()
        .with_target_size(NonZeroU64::new(target_bytes.max(1)).expect("at least one"))
        .with_writer_properties(properties)
        // One core for compaction; the other serves ingest.
        .with_max_concurrent_tasks(1)
        .await
        .map_err(&error)?;
    Ok(OptimizeReport {
        files_removed: metrics.num_files_removed,
        files_added: metrics.num_files_added,
        partitions_optimized: metrics.partitions_optimized,
    })
}

/// Writes a checkpoint at the table's latest version, then deletes commit files older than the
/// table's log retention (`delta.logRetentionDuration`, 30 days unless set) that the new
/// checkpoint makes unneeded.
pub async fn checkpoint(dir: &Path) -> Result<CheckpointReport, LakeError> {
    let error = delta_error(dir);
    let Some(table) = open(dir).await? else {
        return Ok(CheckpointReport::default());
    };
    deltalake::checkpoints::create_checkpoint(&table, None)
        .await
        .map_err(&error)?;
    let logs_removed = deltalake::checkpoints::cleanup_metadata(&table, None)
        .await
        .map_err(&error)?;
    Ok(CheckpointReport {
        version: table.version(),
        logs_removed,
    })
}

/// Deletes data files that no version within `retention` refers to, and files no version
/// refers to at all once older than `retention` (at least [`VACUUM_RETENTION_MIN`]).
pub async fn vacuum(
    dir: &Path,
    retention: Duration,
    dry_run: bool,
) -> Result<VacuumReport, LakeError> {
    if retention < VACUUM_RETENTION_MIN {
        return Err(LakeError::Delta {
            table: dir.display().to_string(),
            message: format!(
                "a vacuum retention of {} s is too short: at least {} s, so that no file \
                 a query or the sink is about to use can be deleted",
                retention.as_secs(),
                VACUUM_RETENTION_MIN.as_secs()
            ),
        });
    }
    let error = delta_error(dir);
    let Some(table) = open(dir).await? else {
        return Ok(VacuumReport {
            dry_run,
            files_deleted: Vec::new(),
        });
    };
    let retention = chrono::Duration::from_std(retention).map_err(|problem| LakeError::Delta {
        table: dir.display().to_string(),
        message: format!("vacuum retention: {problem}"),
    })?;
    let (_, metrics) = table
        .vacuum()
        .with_mode(VacuumMode::Full)
        .with_retention_period(retention)
        // The floor above replaces Delta's own (the table's deleted-file retention, a week).
        .with_enforce_retention_duration(false)
        .with_dry_run(dry_run)
        .await
        .map_err(&error)?;
    Ok(VacuumReport {
        dry_run: metrics.dry_run,
        files_deleted: metrics.files_deleted,
    })
}
