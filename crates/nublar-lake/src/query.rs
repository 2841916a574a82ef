//! SQL over one database's tables, with DataFusion.
//!
//! Every table of the database is opened at its latest version when the query starts, so a
//! query sees everything the sink has committed by then. Each table is registered under its
//! measurement's name as sent, as a view that gives every column its name as sent too: the
//! stored names ([`crate::names`]) never show. Filters on `_day` or `time` still reach the Delta
//! scan through the view, so partitions and files are pruned.
//!
//! A query may only read: DDL, DML and statements such as `SET` are refused, because the same
//! engine answers the node's HTTP API and must not create tables over the server's files or
//! write them. Its run time, the memory of its operators and the size of its result are bounded.

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use deltalake::arrow::datatypes::SchemaRef;
use deltalake::arrow::record_batch::RecordBatch;
use deltalake::datafusion::common::TableReference;
use deltalake::datafusion::execution::runtime_env::RuntimeEnvBuilder;
use deltalake::datafusion::prelude::{SQLOptions, SessionConfig, SessionContext, ident};
use deltalake::parquet::arrow::ArrowWriter;
use deltalake::parquet::basic::{Compression, ZstdLevel};
use deltalake::parquet::file::properties::WriterProperties;
use futures::StreamExt;

use crate::names;

/// Bounds on one query; see the example configuration's `[query]` for defaults.
#[derive(Clone, Debug)]
pub struct QueryConfig {
    /// A query still running after this is cancelled.
    pub time_limit: Duration,
    /// The largest result a query may return, in memory and as written out
    /// ([`render_within`]).
    pub result_bytes_max: usize,
    /// Memory the engine's operators (sorts, joins, aggregates) may hold at once.
    pub memory_bytes_max: usize,
}

impl Default for QueryConfig {
    fn default() -> QueryConfig {
        QueryConfig {
            time_limit: Duration::from_secs(30),
            result_bytes_max: 256 << 20,
            memory_bytes_max: 1 << 30,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// The engine refused or failed the query; the message is the engine's.
    #[error("{0}")]
    Sql(String),
    #[error("the query ran past its time limit of {} s and was cancelled", .0.as_secs_f64())]
    TimedOut(Duration),
    #[error(
        "the result is larger than {0} bytes; ask for fewer rows (LIMIT, WHERE) or fewer columns"
    )]
    TooLarge(usize),
    /// A table could not be opened or its files read: the lake's fault, not the query's.
    #[error("{0}")]
    Lake(String),
}

/// The rows a query returned, with their schema (also when there are none).
pub struct QueryResult {
    pub schema: SchemaRef,
    pub batches: Vec<RecordBatch>,
}

impl QueryResult {
    pub fn rows(&self) -> usize {
        self.batches.iter().map(RecordBatch::num_rows).sum()
    }
}

/// How a result is written out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// A text table for people.
    Table,
    Csv,
    /// One JSON array of objects, one per row.
    Json,
    /// One JSON object per line.
    Jsonl,
    /// A Parquet file (zstd).
    Parquet,
}

impl FromStr for Format {
    type Err = String;

    fn from_str(text: &str) -> Result<Format, String> {
        match text {
            "table" | "pretty" => Ok(Format::Table),
            "csv" => Ok(Format::Csv),
            "json" => Ok(Format::Json),
            "jsonl" | "ndjson" => Ok(Format::Jsonl),
            "parquet" => Ok(Format::Parquet),
            other => Err(format!(
                "unknown format {other:?}: use table, csv, json, jsonl or parquet"
            )),
        }
    }
}

impl Format {
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Table => "text/plain; charset=utf-8",
            Format::Csv => "text/csv; charset=utf-8",
            Format::Json => "application/json",
            Format::Jsonl => "application/jsonl",
            Format::Parquet => "application/vnd.apache.parquet",
        }
    }
}

/// Runs `sql` over the tables of `db` in `lake_dir`.
pub async fn query(
    lake_dir: &Path,
    db: &str,
    sql: &str,
    config: &QueryConfig,
) -> Result<QueryResult, QueryError> {
    let limit = config.time_limit;
    // Opening the tables counts against the time limit too: it reads their logs.
    match tokio::time::timeout(limit, run(lake_dir, db, sql, config)).await {
        Ok(result) => result,
        Err(_) => Err(QueryError::TimedOut(limit)),
    }
}

async fn run(
    lake_dir: &Path,
    db: &str,
    sql: &str,
    config: &QueryConfig,
) -> Result<QueryResult, QueryError> {
    let context = context(config)?;
    let tables = crate::maintenance::table_dirs(lake_dir, Some(db))
        .map_err(|error| QueryError::Lake(error.to_string()))?;
    for (_, name, dir) in tables {
        register(&context, &name, &dir).await?;
    }
    let options = SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false);
    let frame = context
        .sql_with_options(sql, options)
        .await
        .map_err(engine_error)?;
    let schema: SchemaRef = Arc::new(frame.schema().as_arrow().clone());
    let mut stream = frame.execute_stream().await.map_err(engine_error)?;
    let mut batches = Vec::new();
    let mut bytes = 0usize;
    while let Some(batch) = stream.next().await {
        let batch = batch.map_err(engine_error)?;
        bytes += batch.get_array_memory_size();
        if bytes > config.result_bytes_max {
            return Err(QueryError::TooLarge(config.result_bytes_max));
        }
        batches.push(batch);
    }
    // Writers check each batch against the schema they were given; the batches' own schema is
    // the one they match (the plan's may differ in nullability or metadata).
    let schema = batches.first().map_or(schema, RecordBatch::schema);
    Ok(QueryResult { schema, batches })
}

/// The engine's error as the query's: the files' fault (unreadable, missing, I/O) is the
/// lake's, anything else (the SQL, its types, its values) the query's.
fn engine_error(error: deltalake::datafusion::error::DataFusionError) -> QueryError {
    use deltalake::datafusion::error::DataFusionError;
    match error.find_root() {
        DataFusionError::ParquetError(_)
        | DataFusionError::ObjectStore(_)
        | DataFusionError::IoError(_)
        | DataFusionError::External(_) => QueryError::Lake(error.to_string()),
        _ => QueryError::Sql(error.to_string()),
    }
}

fn context(config: &QueryConfig) -> Result<SessionContext, QueryError> {
    let runtime = RuntimeEnvBuilder::new()
        .with_memory_limit(config.memory_bytes_max, 1.0)
        .build_arc()
        .map_err(|error| QueryError::Sql(error.to_string()))?;
    // Names as sent keep their case, so identifiers are compared as written once quoted;
    // unquoted ones are folded to lower case as in PostgreSQL.
    let session = SessionConfig::new().with_information_schema(true);
    Ok(SessionContext::new_with_config_rt(session, runtime))
}

/// Registers the table in `dir` as `name`, with every column under its name as sent.
async fn register(context: &SessionContext, name: &str, dir: &Path) -> Result<(), QueryError> {
    let Some(table) = crate::maintenance::open(dir)
        .await
        .map_err(|error| QueryError::Lake(error.to_string()))?
    else {
        return Ok(());
    };
    let engine = |error: deltalake::datafusion::error::DataFusionError| {
        QueryError::Lake(format!("table {}: {error}", dir.display()))
    };
    // The scan takes its settings from this session, not delta-rs's own defaults: those push
    // every filter into the Parquet reader row by row, which costs more than it saves when a
    // filter keeps a sizeable share of the rows.
    let provider = table
        .table_provider()
        .with_session(Arc::new(context.state()))
        .await
        .map_err(engine)?;
    let frame = context.read_table(provider).map_err(engine)?;
    let columns: Vec<_> = frame
        .schema()
        .fields()
        .iter()
        .map(|field| {
            let stored = field.name();
            match names::decode(stored) {
                Some(sent) if sent != *stored => ident(stored).alias(sent),
                _ => ident(stored),
            }
        })
        .collect();
    let view = frame.select(columns).map_err(engine)?.into_view();
    context
        .register_table(TableReference::bare(name), view)
        .map_err(engine)?;
    Ok(())
}

/// Writes `result` in `format`, with no bound (the demo's own small answers).
pub fn render(result: &QueryResult, format: Format) -> Result<Vec<u8>, QueryError> {
    render_bounded(result, format, usize::MAX, None)
}

/// Writes `result` in `format` within the query's bounds: refusing (`TooLarge`) once the
/// output would pass `config.result_bytes_max` (text can be many times the size of the same
/// values in memory: a boolean is one bit there and six bytes of JSON), and (`TimedOut`)
/// once `config.time_limit` has passed since `started`, when the query began.
pub fn render_within(
    result: &QueryResult,
    format: Format,
    config: &QueryConfig,
    started: Instant,
) -> Result<Vec<u8>, QueryError> {
    let deadline = (started + config.time_limit, config.time_limit);
    render_bounded(result, format, config.result_bytes_max, Some(deadline))
}

fn render_bounded(
    result: &QueryResult,
    format: Format,
    bytes_max: usize,
    deadline: Option<(Instant, Duration)>,
) -> Result<Vec<u8>, QueryError> {
    let arrow = |error: deltalake::arrow::error::ArrowError| QueryError::Sql(error.to_string());
    let too_large = |written: usize| {
        if written > bytes_max {
            Err(QueryError::TooLarge(bytes_max))
        } else {
            Ok(())
        }
    };
    let in_time = || match deadline {
        Some((deadline, limit)) if Instant::now() > deadline => Err(QueryError::TimedOut(limit)),
        _ => Ok(()),
    };
    let batches: Vec<&RecordBatch> = result.batches.iter().collect();
    let mut out = Vec::new();
    match format {
        Format::Table => out = render_table(result, bytes_max, &in_time)?,
        Format::Csv => {
            // A writer per batch, so that the output's size can be checked between them; only
            // the first writes the header.
            for (index, batch) in batches.into_iter().enumerate() {
                deltalake::arrow::csv::WriterBuilder::new()
                    .with_header(index == 0)
                    .build(&mut out)
                    .write(batch)
                    .map_err(arrow)?;
                too_large(out.len())?;
                in_time()?;
            }
            if result.batches.is_empty() {
                // The CSV writer writes its header with the first batch; an empty result
                // still names its columns.
                let names: Vec<&str> = result
                    .schema
                    .fields()
                    .iter()
                    .map(|field| field.name().as_str())
                    .collect();
                out = format!("{}\n", names.join(",")).into_bytes();
            }
        }
        Format::Json => {
            let mut writer = deltalake::arrow::json::ArrayWriter::new(&mut out);
            for batch in batches {
                writer.write(batch).map_err(arrow)?;
                too_large(writer.get_ref().len())?;
                in_time()?;
            }
            writer.finish().map_err(arrow)?;
            drop(writer);
            out.push(b'\n');
        }
        Format::Jsonl => {
            let mut writer = deltalake::arrow::json::LineDelimitedWriter::new(&mut out);
            for batch in batches {
                writer.write(batch).map_err(arrow)?;
                too_large(writer.get_ref().len())?;
                in_time()?;
            }
            writer.finish().map_err(arrow)?;
        }
        Format::Parquet => {
            let level =
                ZstdLevel::try_new(3).map_err(|error| QueryError::Sql(error.to_string()))?;
            let properties = WriterProperties::builder()
                .set_compression(Compression::ZSTD(level))
                .build();
            let mut writer =
                ArrowWriter::try_new(&mut out, result.schema.clone(), Some(properties))
                    .map_err(|error| QueryError::Sql(error.to_string()))?;
            for batch in batches {
                writer
                    .write(batch)
                    .map_err(|error| QueryError::Sql(error.to_string()))?;
                too_large(writer.bytes_written())?;
                in_time()?;
            }
            writer
                .close()
                .map_err(|error| QueryError::Sql(error.to_string()))?;
        }
    }
    too_large(out.len())?;
    Ok(out)
}

/// How often (in cells) the table format looks at the clock.
const TABLE_CELLS_PER_CLOCK_CHECK: usize = 4096;

/// The `table` format: every value as text, left-aligned in columns as wide as their widest
/// value, between borders. The widths are measured first, and the size they make known
/// before anything is padded: a result whose table would pass `bytes_max` is refused as soon
/// as its widths show it, and one that fits is written row by row within the bound.
fn render_table(
    result: &QueryResult,
    bytes_max: usize,
    in_time: &dyn Fn() -> Result<(), QueryError>,
) -> Result<Vec<u8>, QueryError> {
    use deltalake::arrow::util::display::{ArrayFormatter, FormatOptions};
    let names: Vec<String> = result
        .schema
        .fields()
        .iter()
        .map(|field| one_line(field.name()))
        .collect();
    let rows = result.rows();
    // Top border, header, separator, bottom border, and a line per row, each as long as the
    // border: `+` and `-` per column plus padding. The bytes can only be more (wide UTF-8).
    let lines = rows.saturating_add(4);
    let line_bytes = |widths: &[usize]| widths.iter().map(|width| width + 3).sum::<usize>() + 2;
    let fits = |widths: &[usize]| lines.saturating_mul(line_bytes(widths)) <= bytes_max;
    let mut widths: Vec<usize> = names.iter().map(|name| name.chars().count()).collect();
    if !fits(&widths) {
        return Err(QueryError::TooLarge(bytes_max));
    }
    let options = FormatOptions::default();
    let formatters: Vec<Vec<ArrayFormatter<'_>>> = result
        .batches
        .iter()
        .map(|batch| {
            batch
                .columns()
                .iter()
                .map(|column| ArrayFormatter::try_new(column.as_ref(), &options))
                .collect::<Result<Vec<_>, _>>()
        })
        .collect::<Result<_, _>>()
        .map_err(|error| QueryError::Sql(error.to_string()))?;
    let mut cell = String::new();
    let mut cells = 0usize;
    let format_cell = |formatter: &ArrayFormatter<'_>, row: usize, cell: &mut String| {
        use std::fmt::Write;
        cell.clear();
        let _ = write!(cell, "{}", formatter.value(row));
        if cell.contains(['\n', '\r', '\t']) {
            *cell = one_line(cell);
        }
    };
    for (batch, columns) in result.batches.iter().zip(&formatters) {
        for row in 0..batch.num_rows() {
            for (index, formatter) in columns.iter().enumerate() {
                format_cell(formatter, row, &mut cell);
                let width = cell.chars().count();
                if width > widths[index] {
                    widths[index] = width;
                    if !fits(&widths) {
                        return Err(QueryError::TooLarge(bytes_max));
                    }
                }
                cells += 1;
                if cells.is_multiple_of(TABLE_CELLS_PER_CLOCK_CHECK) {
                    in_time()?;
                }
            }
        }
    }
    let mut out = String::with_capacity(lines.saturating_mul(line_bytes(&widths)));
    let border = |out: &mut String| {
        for width in &widths {
            out.push('+');
            out.extend(std::iter::repeat_n('-', width + 2));
        }
        out.push_str("+\n");
    };
    let padded = |out: &mut String, text: &str, width: usize| {
        out.push_str("| ");
        out.push_str(text);
        out.extend(std::iter::repeat_n(' ', width - text.chars().count() + 1));
    };
    border(&mut out);
    for (name, width) in names.iter().zip(&widths) {
        padded(&mut out, name, *width);
    }
    out.push_str("|\n");
    border(&mut out);
    for (batch, columns) in result.batches.iter().zip(&formatters) {
        for row in 0..batch.num_rows() {
            for (formatter, width) in columns.iter().zip(&widths) {
                format_cell(formatter, row, &mut cell);
                padded(&mut out, &cell, *width);
            }
            out.push_str("|\n");
            if out.len() > bytes_max {
                return Err(QueryError::TooLarge(bytes_max));
            }
            if row % (TABLE_CELLS_PER_CLOCK_CHECK / columns.len().max(1)).max(1) == 0 {
                in_time()?;
            }
        }
    }
    border(&mut out);
    Ok(out.into_bytes())
}

/// `text` on one line: line breaks and tabs as their escapes.
fn one_line(text: &str) -> String {
    text.replace('\n', "\\n")
        .replace('\r', "\\r")
        .replace('\t', "\\t")
}
