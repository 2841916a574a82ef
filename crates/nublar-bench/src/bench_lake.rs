//! `nublar bench lake`: the lake sink's throughput from the log into committed, zstd-compressed
//! Delta files on one core, beside DuckDB converting the same rows from CSV to zstd Parquet in
//! the same run.
//!
//! The log is filled first (not timed) with `weather` events as the gateway stores them: one
//! batch per request of `--batch` lines, each line parsed and kept in the stored layout (or, with
//! `--values line-protocol`, as the line itself), keyed, the database and sender on the first
//! record. Then a sink on a single-threaded runtime reads it all into the lake;
//! the time runs from its start to its last commit, and the process's CPU time over the same
//! span shows how much of a core it took.

use std::io::Write;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use nublar_bus::{BatchBuilder, Bus, Compression, Durability, TopicConfig};
use nublar_bus_embedded::EmbeddedBus;
use nublar_log::{Log, OpenOptions};

#[derive(Args)]
pub struct LakeBenchArgs {
    /// Where to write; a fresh folder is made inside and deleted afterwards.
    #[arg(long, default_value = ".")]
    dir: PathBuf,
    /// Rows (events) to write.
    #[arg(long, default_value_t = 10_000_000)]
    rows: u64,
    /// Lines per batch in the log, as one request of that many lines would store them.
    #[arg(long, default_value_t = 5000)]
    batch: usize,
    /// Partitions of the telemetry topic.
    #[arg(long, default_value_t = 1)]
    partitions: u32,
    /// Skip the DuckDB comparison (it needs `python3 -m pip install duckdb`).
    #[arg(long)]
    no_duckdb: bool,
    /// How the log keeps each event: the stored layout the gateway writes, or canonical line
    /// protocol (what it wrote before, which the sink still reads), to compare the two.
    #[arg(long, value_enum, default_value_t = Values::Stored)]
    values: Values,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Values {
    Stored,
    LineProtocol,
}

const HABITATS: [&str; 8] = [
    "savanna",
    "forest",
    "wetland",
    "desert",
    "grassland",
    "river",
    "mountain",
    "lake",
];

/// The `i`-th row, deterministic: a station of a habitat reporting every second.
pub(crate) fn weather_row(i: u64) -> (i64, &'static str, u64, f64, i64, f64) {
    let station = i % 64;
    let habitat = HABITATS[(station % 8) as usize];
    let time_ns = 1_767_225_600_000_000_000 + (i as i64) * 15_625_000;
    // A cheap hash for values that do not repeat in a pattern compression would exploit.
    let mix = i.wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(17);
    let temp_c = -10.0 + (mix % 4500) as f64 / 100.0;
    let humidity = (mix >> 20) as i64 % 100;
    let wind_ms = (mix >> 40) as f64 % 3000.0 / 100.0;
    (time_ns, habitat, station, temp_c, humidity, wind_ms)
}

pub fn run(args: LakeBenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.rows > 0 && args.batch > 0,
        "--rows and --batch must be positive"
    );
    let root = tempfile::Builder::new()
        .prefix("nublar-bench-lake-")
        .tempdir_in(&args.dir)
        .with_context(|| format!("creating a folder in {}", args.dir.display()))?;
    println!(
        "machine: {} cores; {} weather rows in batches of {}, {} partition(s), values {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        args.rows,
        args.batch,
        args.partitions,
        match args.values {
            Values::Stored => "in the stored layout",
            Values::LineProtocol => "as line protocol",
        }
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let log = Log::open_with(
        root.path().join("log"),
        OpenOptions {
            background: false,
            ..OpenOptions::default()
        },
    )?;
    let bus: Arc<dyn Bus> = EmbeddedBus::new(log.clone()).into_shared();
    let filled = Instant::now();
    let log_bytes = runtime.block_on(fill(&bus, &args))?;
    println!(
        "log filled: {} MB in {:.1} s (not timed below)",
        log_bytes / 1_000_000,
        filled.elapsed().as_secs_f64()
    );

    let config = nublar_lake::SinkConfig::new(root.path().join("lake"));
    let sink = nublar_lake::Sink::new(bus.clone(), config);
    let counters = sink.counters();
    let cpu_before = cpu_seconds();
    let started = Instant::now();
    let rows = args.rows;
    runtime.block_on(async {
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let watcher = {
            let counters = counters.clone();
            tokio::spawn(async move {
                while counters.rows_written.load(Ordering::Relaxed) < rows {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                let _ = stop.send(true);
            })
        };
        let result = sink.run(stopped).await;
        watcher.abort();
        result
    })?;
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu_before;
    let written = counters.rows_written.load(Ordering::Relaxed);
    let lake_bytes = directory_bytes(&root.path().join("lake"));
    let sink_rate = written as f64 / elapsed;
    println!(
        "sink: {written} rows into committed Delta (zstd) in {elapsed:.2} s: {:.2} M rows/s; \
         CPU {cpu:.2} s = {:.0}% of one core; {} commits; {} MB of Parquet",
        sink_rate / 1e6,
        cpu / elapsed * 100.0,
        counters.commits.load(Ordering::Relaxed),
        lake_bytes / 1_000_000,
    );
    drop(runtime);
    log.close()?;

    if !args.no_duckdb {
        match duckdb(root.path(), args.rows) {
            Ok(duck_rate) => println!(
                "DuckDB CSV -> zstd Parquet, same rows, same run: {:.2} M rows/s; \
                 sink / DuckDB = {:.2}",
                duck_rate / 1e6,
                sink_rate / duck_rate
            ),
            Err(error) => println!("DuckDB comparison not run: {error:#}"),
        }
    }
    Ok(())
}

/// Fills the telemetry topic; returns the bytes appended.
async fn fill(bus: &Arc<dyn Bus>, args: &LakeBenchArgs) -> anyhow::Result<u64> {
    bus.ensure_topic(
        "telemetry",
        TopicConfig {
            partitions: args.partitions,
            durability: Durability::None,
            ..TopicConfig::default()
        },
    )
    .await?;
    let mut line = String::with_capacity(160);
    let mut value = Vec::with_capacity(160);
    let mut bytes = 0u64;
    let mut row = 0u64;
    let mut request = 0u64;
    while row < args.rows {
        let mut builder = BatchBuilder::with_capacity(Compression::Lz4, args.batch * 120)
            .batch_key(&format!("park/bench-{request}"))?;
        let end = (row + args.batch as u64).min(args.rows);
        for i in row..end {
            let (time_ns, habitat, station, temp_c, humidity, wind_ms) = weather_row(i);
            line.clear();
            use std::fmt::Write as _;
            write!(
                line,
                "weather,habitat={habitat},station=ws-{station} temp_c={temp_c},humidity={humidity}i,wind_ms={wind_ms} {time_ns}"
            )?;
            let headers: &[(&str, &[u8])] = if i == row {
                &[("db", b"park"), ("sender", b"2001:db8:7::1")]
            } else {
                &[]
            };
            if args.values == Values::LineProtocol {
                builder.push(None, line.as_bytes(), headers);
                continue;
            }
            let (_, parsed) = nublar_model::parse_lines(
                line.as_bytes(),
                nublar_model::Precision::Ns,
                Default::default(),
            )
            .next()
            .context("a bench line")?;
            value.clear();
            nublar_model::stored::encode(&parsed?, &mut value);
            builder.push(None, &value, headers);
        }
        let batch = builder.finish()?;
        bytes += batch.len_bytes() as u64;
        let partition = (request % u64::from(args.partitions)) as u32;
        bus.append("telemetry", partition, batch).await?;
        row = end;
        request += 1;
    }
    Ok(bytes)
}

/// DuckDB (Python package) converting the same rows from CSV to zstd Parquet: rows/s.
fn duckdb(root: &std::path::Path, rows: u64) -> anyhow::Result<f64> {
    let csv = root.join("weather.csv");
    {
        let mut out = std::io::BufWriter::new(std::fs::File::create(&csv)?);
        writeln!(out, "time_ns,habitat,station,temp_c,humidity,wind_ms")?;
        for i in 0..rows {
            let (time_ns, habitat, station, temp_c, humidity, wind_ms) = weather_row(i);
            writeln!(
                out,
                "{time_ns},{habitat},ws-{station},{temp_c},{humidity},{wind_ms}"
            )?;
        }
        out.flush()?;
    }
    let parquet = root.join("weather.parquet");
    let script = format!(
        "import duckdb, time\n\
         duckdb.sql(\"SET enable_progress_bar = false\")\n\
         start = time.perf_counter()\n\
         duckdb.sql(\"COPY (SELECT * FROM read_csv('{}')) TO '{}' (FORMAT parquet, COMPRESSION zstd)\")\n\
         print(time.perf_counter() - start)\n",
        csv.display(),
        parquet.display()
    );
    let output = python(&script, "duckdb")?;
    // The time is the last line, whatever DuckDB printed before it.
    let text = String::from_utf8_lossy(&output);
    let seconds: f64 = text
        .lines()
        .last()
        .unwrap_or_default()
        .trim()
        .parse()
        .with_context(|| format!("reading DuckDB's time from {text:?}"))?;
    Ok(rows as f64 / seconds)
}

/// Runs a Python script that needs the pip `packages` (named in the error when they are
/// missing) and returns what it printed.
pub(crate) fn python(script: &str, packages: &str) -> anyhow::Result<Vec<u8>> {
    let output = Command::new("python3")
        .args(["-c", script])
        .output()
        .context("running python3")?;
    if !output.status.success() {
        bail!(
            "python3 with {packages} failed (python3 -m pip install {packages}): {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(output.stdout)
}

/// User and system CPU time of this process so far.
fn cpu_seconds() -> f64 {
    // SAFETY: rusage is plain data for which all zeroes is valid, and getrusage writes only
    // into the struct it is given.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let seconds = |time: libc::timeval| time.tv_sec as f64 + time.tv_usec as f64 / 1e6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

fn directory_bytes(path: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .map(|entry| match entry.file_type() {
            Ok(kind) if kind.is_dir() => directory_bytes(&entry.path()),
            _ => entry.metadata().map_or(0, |metadata| metadata.len()),
        })
        .sum()
}
