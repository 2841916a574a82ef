//! `nublar bench query`: SQL over a large `weather` table in a running node, beside DuckDB
//! reading the same table's files in the same run.
//!
//! A node runs at its defaults; the benchmark writes `--rows` weather events to it over HTTP
//! (line protocol, `--batch` lines a request), waits until its lake sink has committed them
//! all, then times each query through the node's `/api/v3/query_sql`: once to warm, then
//! `--repeat` times, keeping the median. DuckDB (the Python package) reads the table's active
//! Parquet files, listed by the `deltalake` package, with the same warm-up and repeats; so does
//! DataFusion's Python package when it is installed, which shows what the engine the node runs
//! does on those files by itself.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;

use crate::node_child::{Connection, metric, quantile, start_node, url_encoded};

#[derive(Args)]
pub struct QueryBenchArgs {
    /// Where to write; a fresh folder is made inside and deleted afterwards.
    #[arg(long, default_value = ".")]
    dir: PathBuf,
    /// Weather rows to write.
    #[arg(long, default_value_t = 100_000_000)]
    rows: u64,
    /// Lines per write request.
    #[arg(long, default_value_t = 10_000)]
    batch: u64,
    /// Connections writing at once.
    #[arg(long, default_value_t = 4)]
    connections: u64,
    /// Timed runs of each query after the warm-up run; the median counts.
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// Skip the DuckDB comparison (it needs `python3 -m pip install duckdb deltalake`).
    #[arg(long)]
    no_duckdb: bool,
    /// Keep the node's data directory (printed at the end) for more queries, instead of
    /// deleting it.
    #[arg(long)]
    keep: bool,
}

const QUERIES: [&str; 2] = [
    "SELECT habitat, avg(temp_c), max(temp_c) FROM weather GROUP BY habitat",
    "SELECT count(*) FROM weather WHERE temp_c > 30",
];

/// The lake's rows of the telemetry topic in the node's `/metrics`.
const TELEMETRY_ROWS: &str = "nublar_lake_rows_written_total{topic=\"telemetry\"}";

/// How long the lake may take to commit everything after the last write.
const SINK_WAIT_MAX: Duration = Duration::from_secs(1800);

pub fn run(args: QueryBenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.rows > 0 && args.batch > 0 && args.connections > 0 && args.repeat > 0,
        "--rows, --batch, --connections and --repeat must be positive"
    );
    let root = tempfile::Builder::new()
        .prefix("nublar-bench-query-")
        .tempdir_in(&args.dir)
        .with_context(|| format!("creating a folder in {}", args.dir.display()))?;
    println!("{}", crate::machine::machine_line());
    let node_dir = root.path().join("node");
    let (mut node, http) = start_node(&node_dir, &[])?;
    println!(
        "writing {} weather rows to a node at its defaults, {} lines a request over {} connections",
        args.rows, args.batch, args.connections
    );
    let started = Instant::now();
    let requests = args.rows.div_ceil(args.batch);
    let next = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let writers: Vec<_> = (0..args.connections)
        .map(|_| {
            let (next, refused) = (next.clone(), refused.clone());
            let (rows, batch) = (args.rows, args.batch);
            std::thread::spawn(move || write_requests(http, &next, &refused, requests, rows, batch))
        })
        .collect();
    let mut last_report = Instant::now();
    while !writers.iter().all(std::thread::JoinHandle::is_finished) {
        std::thread::sleep(Duration::from_millis(200));
        if last_report.elapsed() >= Duration::from_secs(10) {
            last_report = Instant::now();
            println!(
                "  {:.0} s: {} of {} requests acknowledged, {} rows in the lake",
                started.elapsed().as_secs_f64(),
                next.load(Ordering::Relaxed).min(requests),
                requests,
                metric(http, TELEMETRY_ROWS)?
            );
        }
    }
    for writer in writers {
        writer.join().expect("a writer thread panicked")?;
    }
    let written = started.elapsed().as_secs_f64();
    let deadline = Instant::now() + SINK_WAIT_MAX;
    while metric(http, TELEMETRY_ROWS)? < args.rows as f64 {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the lake did not commit every row within {} s",
            SINK_WAIT_MAX.as_secs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let committed = started.elapsed().as_secs_f64();
    let table = node_dir.join("lake").join("park").join("weather");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let summary = runtime.block_on(nublar_lake::maintenance::summary("park", "weather", &table))?;
    println!(
        "written in {written:.0} s ({:.0} rows/s acknowledged), all in the lake after {committed:.0} s \
         ({} writes refused while the lake caught up); table: {} rows, {} files, {} MB",
        args.rows as f64 / written,
        refused.load(Ordering::Relaxed),
        summary.rows,
        summary.files,
        summary.bytes / 1_000_000
    );

    let mut reader = Connection::new(http);
    let mut ours = Vec::new();
    for sql in QUERIES {
        let target = format!(
            "/api/v3/query_sql?db=park&format=json&q={}",
            url_encoded(sql)
        );
        let mut times = Vec::new();
        let mut answer = Vec::new();
        for run in 0..=args.repeat {
            let began = Instant::now();
            let (status, body) = reader.request("GET", &target, b"")?;
            let elapsed = began.elapsed().as_secs_f64() * 1000.0;
            if status != 200 {
                bail!("{sql}: {status} {}", String::from_utf8_lossy(&body));
            }
            if run > 0 {
                times.push(elapsed);
            }
            answer = body;
        }
        times.sort_by(f64::total_cmp);
        ours.push((
            quantile(&times, 0.5),
            String::from_utf8_lossy(&answer).into_owned(),
        ));
    }
    node.terminate(Duration::from_secs(120))?;

    let duck = if args.no_duckdb {
        None
    } else {
        match baselines(&table, args.repeat) {
            Ok(times) => Some(times),
            Err(error) => {
                println!("DuckDB comparison not run: {error:#}");
                None
            }
        }
    };
    for (index, sql) in QUERIES.iter().enumerate() {
        let (ms, answer) = &ours[index];
        println!("{sql}");
        println!(
            "  nublar (node, warm, median of {}): {ms:.0} ms",
            args.repeat
        );
        println!("  answer: {}", answer.trim());
        if let Some(baselines) = &duck {
            let run = &baselines.duckdb[index];
            let ours: Vec<Vec<serde_json::Value>> =
                serde_json::from_str::<Vec<serde_json::Map<String, serde_json::Value>>>(answer)?
                    .into_iter()
                    .map(|row| row.into_iter().map(|(_, value)| value).collect())
                    .collect();
            let same = |rows: &[Vec<serde_json::Value>]| {
                if canonical(&ours) == canonical(rows) {
                    "yes"
                } else {
                    "NO"
                }
            };
            println!(
                "  DuckDB over the same files (warm, median of {}): {:.0} ms; nublar / DuckDB = {:.2}; same answer: {}",
                args.repeat,
                run.ms,
                ms / run.ms,
                same(&run.rows)
            );
            match &baselines.datafusion {
                Some(alone) => println!(
                    "  DataFusion alone over the same files (Python package, warm, median of {}): {:.0} ms; DataFusion / DuckDB = {:.2}; same answer: {}",
                    args.repeat,
                    alone[index].ms,
                    alone[index].ms / run.ms,
                    same(&alone[index].rows)
                ),
                None => println!("  DataFusion alone not run: python3 -m pip install datafusion"),
            }
        }
    }
    if args.keep {
        let kept = root.keep();
        println!(
            "the node's data is kept: nublar query --data {} \"SELECT …\"",
            kept.join("node").display()
        );
    }
    Ok(())
}

/// Sends requests until none are left: each takes the next request number and writes its rows,
/// again after a 503 (the lake catching up; nothing of a refused request is stored).
fn write_requests(
    http: std::net::SocketAddr,
    next: &AtomicU64,
    refused: &AtomicU64,
    requests: u64,
    rows: u64,
    batch: u64,
) -> anyhow::Result<()> {
    let mut connection = Connection::new(http);
    let mut body = String::new();
    loop {
        let request = next.fetch_add(1, Ordering::Relaxed);
        if request >= requests {
            return Ok(());
        }
        body.clear();
        for i in request * batch..((request + 1) * batch).min(rows) {
            let (time_ns, habitat, station, temp_c, humidity, wind_ms) =
                crate::bench_lake::weather_row(i);
            use std::fmt::Write as _;
            let _ = writeln!(
                body,
                "weather,habitat={habitat},station=ws-{station} temp_c={temp_c},humidity={humidity}i,wind_ms={wind_ms} {time_ns}"
            );
        }
        let mut tries = 0u32;
        loop {
            let (status, answer) =
                connection.request("POST", "/api/v3/write_lp?db=park", body.as_bytes())?;
            match status {
                204 => break,
                503 => {
                    refused.fetch_add(1, Ordering::Relaxed);
                    tries += 1;
                    anyhow::ensure!(tries < 100_000, "the node kept refusing writes");
                    std::thread::sleep(Duration::from_millis(100));
                }
                _ => bail!("a write got {status}: {}", String::from_utf8_lossy(&answer)),
            }
        }
    }
}

/// What an engine beside the node did with one query.
#[derive(serde::Deserialize)]
struct EngineRun {
    /// Median of the timed runs.
    ms: f64,
    rows: Vec<Vec<serde_json::Value>>,
}

/// The engines beside the node: DuckDB, and DataFusion alone when its Python package is there
/// (the engine the node runs, without the node, the HTTP API or delta-rs's scan).
#[derive(serde::Deserialize)]
struct Baselines {
    duckdb: Vec<EngineRun>,
    datafusion: Option<Vec<EngineRun>>,
}

/// DuckDB (Python package) running the same queries over the table's active files, listed by
/// the `deltalake` package, each after a warm-up run; then DataFusion's Python package over the
/// same files in the same way, if it is installed.
fn baselines(table: &std::path::Path, repeat: usize) -> anyhow::Result<Baselines> {
    let script = format!(
        "import duckdb, json, os, shutil, tempfile, time\n\
         from deltalake import DeltaTable\n\
         files = DeltaTable({table:?}).file_uris()\n\
         def timed(run):\n\
         \x20   rows = run()\n\
         \x20   times = []\n\
         \x20   for _ in range({repeat}):\n\
         \x20       start = time.perf_counter()\n\
         \x20       run()\n\
         \x20       times.append((time.perf_counter() - start) * 1000)\n\
         \x20   times.sort()\n\
         \x20   return {{'ms': times[(len(times) + 1) // 2 - 1], 'rows': rows}}\n\
         con = duckdb.connect()\n\
         con.execute('CREATE VIEW weather AS SELECT * FROM read_parquet(' + repr(files) + ')')\n\
         out = {{'duckdb': [timed(lambda: [list(row) for row in con.execute(sql).fetchall()]) for sql in {queries:?}]}}\n\
         try:\n\
         \x20   import datafusion, pyarrow\n\
         except ImportError:\n\
         \x20   out['datafusion'] = None\n\
         else:\n\
         \x20   # The active files only, under names of their own: the folder also holds files\n\
         \x20   # that compaction replaced and vacuum has not removed yet.\n\
         \x20   links = tempfile.mkdtemp()\n\
         \x20   for index, uri in enumerate(files):\n\
         \x20       os.symlink(uri.removeprefix('file://'), os.path.join(links, f'{{index}}.parquet'))\n\
         \x20   ctx = datafusion.SessionContext()\n\
         \x20   ctx.register_parquet('weather', links)\n\
         \x20   def rows(sql):\n\
         \x20       batches = ctx.sql(sql).collect()\n\
         \x20       return [list(row.values()) for row in pyarrow.Table.from_batches(batches).to_pylist()] if batches else []\n\
         \x20   out['datafusion'] = [timed(lambda: rows(sql)) for sql in {queries:?}]\n\
         \x20   shutil.rmtree(links)\n\
         print(json.dumps(out))\n",
        table = table.display().to_string(),
        queries = QUERIES,
    );
    let output = crate::bench_lake::python(&script, "duckdb deltalake")?;
    serde_json::from_slice(&output).context("reading DuckDB's times")
}

/// Rows compared without regard to row or column order, numbers to four decimals (the two
/// engines add floating-point values in different orders).
fn canonical(rows: &[Vec<serde_json::Value>]) -> Vec<Vec<String>> {
    let mut out: Vec<Vec<String>> = rows
        .iter()
        .map(|row| {
            let mut cells: Vec<String> = row
                .iter()
                .map(|value| match value {
                    serde_json::Value::Number(number) => {
                        format!("{:.4}", number.as_f64().unwrap_or(f64::NAN))
                    }
                    serde_json::Value::String(text) => text.clone(),
                    other => other.to_string(),
                })
                .collect();
            cells.sort();
            cells
        })
        .collect();
    out.sort();
    out
}
