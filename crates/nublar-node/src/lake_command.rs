//! `nublar lake tables|optimize|checkpoint|vacuum`, the node's operator route for them, and
//! the node's background maintenance.
//!
//! `tables` only reads, so it always runs here. The others change tables; when a node owns the
//! data directory they run in that node (asked over its operator API with an admin token), so
//! that one process maintains a table at a time.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Subcommand;
use nublar_lake::maintenance;

use crate::config::Maintenance;

/// Where a node answers `nublar lake …` commands (admin scope).
pub const OPERATOR_PATH: &str = "/api/v1/admin/lake";

/// `nublar lake [--node URL] [--token T] [--ca-file PEM] …`
#[derive(clap::Args)]
pub struct LakeArgs {
    #[command(flatten)]
    target: crate::log_command::NodeTarget,
    #[command(subcommand)]
    command: LakeCommand,
}

/// How the node's operator API parses what a client sends.
#[derive(clap::Parser)]
#[command(name = "lake")]
pub struct RemoteLakeCommand {
    #[command(subcommand)]
    pub command: LakeCommand,
}

/// Which tables a command acts on: all, a database's, or one.
#[derive(clap::Args, Clone, Debug)]
pub struct Selection {
    /// Only this database's tables.
    #[arg(long)]
    db: Option<String>,
    /// Only this measurement's table (with --db).
    #[arg(long, requires = "db")]
    table: Option<String>,
}

#[derive(Subcommand, Clone, Debug)]
pub enum LakeCommand {
    /// One line per table: version, live files, rows, bytes, days, columns.
    Tables {
        #[command(flatten)]
        selection: Selection,
        /// One JSON object per table instead.
        #[arg(long)]
        json: bool,
    },
    /// Compact each day's small files into larger ones (keeps every row).
    Optimize {
        #[command(flatten)]
        selection: Selection,
        /// Size of the files to write.
        #[arg(long, default_value_t = 100 << 20)]
        target_bytes: u64,
    },
    /// Write a checkpoint at each table's latest version and remove expired commit files.
    Checkpoint {
        #[command(flatten)]
        selection: Selection,
    },
    /// Delete data files no version of the last RETENTION hours refers to, and files a crash
    /// left uncommitted once that old.
    Vacuum {
        #[command(flatten)]
        selection: Selection,
        /// At least 1.
        #[arg(long, default_value_t = 168)]
        retention_hours: u64,
        /// Only list what would be deleted.
        #[arg(long)]
        dry_run: bool,
    },
}

impl LakeCommand {
    fn to_args(&self) -> Vec<String> {
        let mut args = Vec::new();
        let selection = match self {
            LakeCommand::Tables { selection, json } => {
                args.push("tables".to_owned());
                if *json {
                    args.push("--json".to_owned());
                }
                selection
            }
            LakeCommand::Optimize {
                selection,
                target_bytes,
            } => {
                args.extend([
                    "optimize".to_owned(),
                    format!("--target-bytes={target_bytes}"),
                ]);
                selection
            }
            LakeCommand::Checkpoint { selection } => {
                args.push("checkpoint".to_owned());
                selection
            }
            LakeCommand::Vacuum {
                selection,
                retention_hours,
                dry_run,
            } => {
                args.extend([
                    "vacuum".to_owned(),
                    format!("--retention-hours={retention_hours}"),
                ]);
                if *dry_run {
                    args.push("--dry-run".to_owned());
                }
                selection
            }
        };
        if let Some(db) = &selection.db {
            args.push(format!("--db={db}"));
        }
        if let Some(table) = &selection.table {
            args.push(format!("--table={table}"));
        }
        args
    }
}

pub fn run(data: &Path, args: LakeArgs) -> anyhow::Result<()> {
    let changes = !matches!(args.command, LakeCommand::Tables { .. });
    if args.target.remote() || (changes && crate::log_command::node_owns(data)) {
        let body = serde_json::to_vec(&args.command.to_args())?;
        let text = crate::log_command::post_to_node(data, &args.target, OPERATOR_PATH, &body)?;
        print!("{text}");
        return Ok(());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let text = runtime.block_on(render(&data.join("lake"), &args.command))?;
    print!("{text}");
    Ok(())
}

fn selected(lake: &Path, selection: &Selection) -> anyhow::Result<Vec<(String, String, PathBuf)>> {
    let mut tables = maintenance::table_dirs(lake, selection.db.as_deref())?;
    if let Some(table) = &selection.table {
        tables.retain(|(_, measurement, _)| measurement == table);
        anyhow::ensure!(
            !tables.is_empty(),
            "no table {table:?} in database {:?}",
            selection.db.as_deref().unwrap_or_default()
        );
    }
    Ok(tables)
}

/// Runs `command` on the lake in `lake` and returns what it prints.
pub async fn render(lake: &Path, command: &LakeCommand) -> anyhow::Result<String> {
    let mut out = String::new();
    match command {
        LakeCommand::Tables { selection, json } => {
            if !json {
                let _ = writeln!(
                    out,
                    "{:<16} {:<24} {:>8} {:>7} {:>12} {:>14} {:>5} {:>7}",
                    "DATABASE", "TABLE", "VERSION", "FILES", "ROWS", "BYTES", "DAYS", "COLUMNS"
                );
            }
            for (db, measurement, dir) in selected(lake, selection)? {
                let summary = maintenance::summary(&db, &measurement, &dir).await?;
                if *json {
                    let _ = writeln!(out, "{}", serde_json::to_string(&summary)?);
                } else {
                    let version = summary
                        .version
                        .map_or_else(|| "-".to_owned(), |version| version.to_string());
                    let _ = writeln!(
                        out,
                        "{:<16} {:<24} {:>8} {:>7} {:>12} {:>14} {:>5} {:>7}",
                        db,
                        measurement,
                        version,
                        summary.files,
                        summary.rows,
                        summary.bytes,
                        summary.days,
                        summary.columns
                    );
                }
            }
        }
        LakeCommand::Optimize {
            selection,
            target_bytes,
        } => {
            for (db, measurement, dir) in selected(lake, selection)? {
                let report = maintenance::optimize(&dir, *target_bytes, 3).await?;
                let _ = writeln!(
                    out,
                    "{db}/{measurement}: {} files compacted into {} in {} days",
                    report.files_removed, report.files_added, report.partitions_optimized
                );
            }
        }
        LakeCommand::Checkpoint { selection } => {
            for (db, measurement, dir) in selected(lake, selection)? {
                let report = maintenance::checkpoint(&dir).await?;
                let version = report
                    .version
                    .map_or_else(|| "-".to_owned(), |version| version.to_string());
                let _ = writeln!(
                    out,
                    "{db}/{measurement}: checkpoint at version {version}, {} expired commit files removed",
                    report.logs_removed
                );
            }
        }
        LakeCommand::Vacuum {
            selection,
            retention_hours,
            dry_run,
        } => {
            let retention = Duration::from_secs(retention_hours.saturating_mul(3600));
            for (db, measurement, dir) in selected(lake, selection)? {
                let report = maintenance::vacuum(&dir, retention, *dry_run).await?;
                let verb = if report.dry_run {
                    "would delete"
                } else {
                    "deleted"
                };
                let _ = writeln!(
                    out,
                    "{db}/{measurement}: {verb} {} files",
                    report.files_deleted.len()
                );
                for file in &report.files_deleted {
                    let _ = writeln!(out, "  {file}");
                }
            }
        }
    }
    Ok(out)
}

/// Maintains every table every `maintenance.interval` until `stop`: compaction, a checkpoint,
/// vacuum. A table that fails is logged and tried again next time.
pub async fn maintain(
    lake: PathBuf,
    maintenance: Maintenance,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(maintenance.interval) => {}
            _ = stop.wait_for(|stopped| *stopped) => return,
        }
        let tables = match maintenance::table_dirs(&lake, None) {
            Ok(tables) => tables,
            Err(error) => {
                tracing::warn!(%error, "lake maintenance could not list the tables");
                continue;
            }
        };
        for (db, measurement, dir) in tables {
            if *stop.borrow() {
                return;
            }
            let done = async {
                let optimized = maintenance::optimize(
                    &dir,
                    maintenance.optimize_target_bytes,
                    maintenance.zstd_level,
                )
                .await?;
                maintenance::checkpoint(&dir).await?;
                let vacuumed =
                    maintenance::vacuum(&dir, maintenance.vacuum_retention, false).await?;
                Ok::<_, nublar_lake::LakeError>((optimized, vacuumed))
            };
            match done.await {
                Ok((optimized, vacuumed)) => tracing::info!(
                    table = %format!("{db}/{measurement}"),
                    compacted = optimized.files_removed,
                    written = optimized.files_added,
                    vacuumed = vacuumed.files_deleted.len(),
                    "lake maintenance"
                ),
                Err(error) => tracing::warn!(
                    table = %format!("{db}/{measurement}"),
                    %error,
                    "lake maintenance failed; trying again next time"
                ),
            }
        }
    }
}

/// The operator route's state.
#[derive(Clone)]
pub struct LakeOperator {
    pub gateway: nublar_ingest::Gateway,
    pub lake: PathBuf,
    pub runtime: tokio::runtime::Handle,
}

pub fn routes(operator: LakeOperator) -> axum::Router {
    axum::Router::new()
        .route(OPERATOR_PATH, axum::routing::post(operator_command))
        .with_state(operator)
}

async fn operator_command(
    axum::extract::State(operator): axum::extract::State<LakeOperator>,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<SocketAddr>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> axum::response::Response {
    use axum::http::StatusCode;
    use axum::response::IntoResponse;
    let command = match crate::operator::operator_arguments::<RemoteLakeCommand>(
        &operator.gateway,
        peer,
        &headers,
        &body,
        "lake",
    ) {
        Ok(parsed) => parsed.command,
        Err(refused) => return refused.into_response(),
    };
    let lake = operator.lake.clone();
    let ran = operator.runtime.spawn(async move {
        render(&lake, &command)
            .await
            .map_err(|error| format!("{error:#}"))
    });
    match ran.await {
        Ok(Ok(text)) => (StatusCode::OK, text).into_response(),
        Ok(Err(message)) => (StatusCode::BAD_REQUEST, message).into_response(),
        Err(error) => (StatusCode::INTERNAL_SERVER_ERROR, error.to_string()).into_response(),
    }
}
