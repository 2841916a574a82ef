//! `nublar demo`: a node in a fresh directory, the park simulator sending to it with a live
//! progress line, then the answers to questions a park's operator asks, and the commands to ask
//! more. The node and the simulator are this same binary in child processes, as an operator
//! would run them; the directory stays behind for the commands printed at the end.

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use nublar_lake::query::{Format, QueryConfig};
use nublar_sim::Park;

use nublar_bench::node_child::ChildGuard;
use nublar_node::query_command::DEFAULT_DB;

/// `nublar demo`
#[derive(clap::Args)]
pub struct DemoArgs {
    /// The node's data directory; it must not exist yet. By default a new `nublar-demo-N` in
    /// the current directory.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Seconds the simulator sends.
    #[arg(long, default_value_t = 20.0)]
    duration: f64,
    /// Events per second the simulator sends.
    #[arg(long, default_value_t = 50_000)]
    rate: u64,
    /// Sensors in the park.
    #[arg(long, default_value_t = 2000)]
    sensors: usize,
    /// Seed of the park and its events.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.duration > 0.0 && args.duration.is_finite(),
        "--duration must be more than 0"
    );
    anyhow::ensure!(args.rate > 0, "--rate must be more than 0");
    let dir = match args.dir.clone() {
        Some(dir) => {
            anyhow::ensure!(
                !dir.exists(),
                "{} exists: the demo starts in a fresh directory",
                dir.display()
            );
            dir
        }
        None => (1..)
            .map(|n| PathBuf::from(format!("nublar-demo-{n}")))
            .find(|dir| !dir.exists())
            .expect("some name is free"),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let dir = dir.canonicalize()?;
    let exe = std::env::current_exe().context("finding this program")?;
    println!("nublar demo in {}", dir.display());

    let park_file = dir.join("park.geojson");
    let status = Command::new(&exe)
        .arg("sim")
        .args(["--seed", &args.seed.to_string()])
        .args(["--sensors", &args.sensors.to_string()])
        .arg("--park-out")
        .arg(&park_file)
        .stderr(Stdio::null())
        .status()?;
    anyhow::ensure!(status.success(), "the simulator could not write the park");
    let park = Park::from_geojson(&std::fs::read_to_string(&park_file)?)?;
    println!(
        "the park: {} habitats, {} paddocks, {} animals, {} weather stations, {} gates ({} sensors)",
        park.habitats().len(),
        park.paddocks().len(),
        park.animals().len(),
        park.weather_stations().len(),
        park.gates().len(),
        park.sensor_count()
    );

    let (mut node, http) = nublar_bench::node_child::start_node(&dir, &[])?;
    println!(
        "a node listens on http://{http} (its log: {})",
        dir.join("node.log").display()
    );
    let sim = Command::new(&exe)
        .arg("sim")
        .args(["--target", &format!("http://{http}")])
        .arg("--park")
        .arg(&park_file)
        .args(["--seed", &args.seed.to_string()])
        .args(["--rate", &args.rate.to_string()])
        .args(["--duration", &args.duration.to_string()])
        .args(["--batch", "1000", "--concurrency", "4"])
        .args(["--malformed", "0.001", "--out-of-order", "0.01"])
        .args(["--stage-breach", &(args.duration / 10.0).to_string()])
        .stdout(std::fs::File::create(dir.join("sim.log"))?)
        .stderr(Stdio::null())
        .spawn()
        .context("starting the simulator")?;
    let mut sim = ChildGuard(sim);
    println!(
        "the simulator sends {} events/s for {} s (0.1% malformed, a fence breach a tenth of the way in)",
        args.rate, args.duration
    );
    let started = Instant::now();
    let mut last = (Instant::now(), 0.0);
    let counts = loop {
        let done = sim.0.try_wait()?;
        let counts = Counts::read(http)?;
        let now = Instant::now();
        let rate = (counts.accepted - last.1) / now.duration_since(last.0).as_secs_f64().max(1e-3);
        last = (now, counts.accepted);
        print!(
            "\r  {:>5.1} s  {:>9} events/s  acknowledged {:>11}  in the lake {:>11}  rejected {:>7}  ",
            started.elapsed().as_secs_f64(),
            thousands(rate as u64),
            thousands(counts.accepted as u64),
            thousands(counts.lake_rows as u64),
            thousands(counts.rejected as u64),
        );
        std::io::stdout().flush()?;
        if let Some(status) = done {
            anyhow::ensure!(
                status.success(),
                "the simulator failed: see {}",
                dir.join("sim.log").display()
            );
            break counts;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    // Every acknowledged event (and every dead letter) reaches the lake within a commit
    // interval or so.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut counts = counts;
    while !counts.caught_up() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        counts = Counts::read(http)?;
    }
    println!(
        "\r  {:>5.1} s  done: {} events acknowledged, {} rows in the lake, {} lines rejected{:>20}",
        started.elapsed().as_secs_f64(),
        thousands(counts.accepted as u64),
        thousands(counts.lake_rows as u64),
        thousands(counts.rejected as u64),
        ""
    );

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let lake = dir.join("lake");
    let answers = runtime.block_on(answers(&lake, &park, &counts))?;
    print!("{answers}");

    // SIGTERM: the node drains, and its lake holds everything it acknowledged.
    node.terminate(Duration::from_secs(30))?;
    let data = shell_quote(&dir);
    println!(
        "\nAsk more (the node's directory stays in {}):",
        dir.display()
    );
    println!(
        "  cargo run --release -- query --data {data} \"SELECT species, count(DISTINCT animal) AS animals FROM collar GROUP BY species\""
    );
    println!(
        "  cargo run --release -- query --data {data} --format csv \"SELECT * FROM fence WHERE voltage_kv < 5 ORDER BY time\""
    );
    println!("  cargo run --release -- lake tables --data {data}");
    println!(
        "  cargo run --release -- serve --data {data}   # then GET /api/v3/query_sql?db=park&q=…"
    );
    println!(
        "  python3 -c \"from deltalake import DeltaTable; print(DeltaTable('{}').to_pandas().describe())\"",
        lake.join(DEFAULT_DB).join("weather").display()
    );
    Ok(())
}

/// What the node's `/metrics` says so far.
struct Counts {
    accepted: f64,
    rejected: f64,
    lake_rows: f64,
    /// Rejected lines kept as dead letters, and those of them in the lake.
    dead_letters: f64,
    dead_letter_rows: f64,
}

impl Counts {
    fn read(http: SocketAddr) -> anyhow::Result<Counts> {
        let text = nublar_bench::node_child::metrics_text(http)?;
        let sample = |series| nublar_bench::node_child::sample(&text, series);
        Ok(Counts {
            accepted: sample("nublar_ingest_accepted_lines_total"),
            rejected: sample("nublar_ingest_rejected_lines_total"),
            lake_rows: sample("nublar_lake_rows_written_total{topic=\"telemetry\"}"),
            dead_letters: sample("nublar_ingest_dead_letters_total"),
            dead_letter_rows: sample("nublar_lake_rows_written_total{topic=\"_dead_letters\"}"),
        })
    }

    fn caught_up(&self) -> bool {
        self.lake_rows >= self.accepted && self.dead_letter_rows >= self.dead_letters
    }
}

fn thousands(value: u64) -> String {
    let digits = value.to_string();
    let mut out = String::new();
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

fn shell_quote(path: &Path) -> String {
    let text = path.display().to_string();
    if text
        .bytes()
        .all(|byte| byte.is_ascii_alphanumeric() || b"/._-".contains(&byte))
    {
        text
    } else {
        format!("'{}'", text.replace('\'', "'\\''"))
    }
}

async fn sql_table(lake: &Path, sql: &str) -> anyhow::Result<String> {
    let result = nublar_lake::query::query(lake, DEFAULT_DB, sql, &QueryConfig::default())
        .await
        .with_context(|| format!("asking {sql}"))?;
    Ok(String::from_utf8(nublar_lake::query::render(
        &result,
        Format::Table,
    )?)?)
}

/// The questions, each with its SQL and its answer.
async fn answers(lake: &Path, park: &Park, counts: &Counts) -> anyhow::Result<String> {
    let mut out = String::new();
    let questions = [
        (
            "How many events did each kind of sensor send?",
            "SELECT 'collar' AS measurement, count(*) AS events FROM collar \
             UNION ALL SELECT 'weather', count(*) FROM weather \
             UNION ALL SELECT 'fence', count(*) FROM fence \
             UNION ALL SELECT 'gate', count(*) FROM gate ORDER BY events DESC",
        ),
        (
            "Which habitats are warmest?",
            "SELECT habitat, round(avg(temp_c), 1) AS avg_temp_c, max(temp_c) AS max_temp_c, \
             count(DISTINCT station) AS stations FROM weather GROUP BY habitat \
             ORDER BY avg_temp_c DESC",
        ),
        (
            "Which fence segments lost voltage?",
            "SELECT paddock, segment, min(voltage_kv) AS lowest_kv, max(time) AS last_reading \
             FROM fence GROUP BY paddock, segment HAVING min(voltage_kv) < 5 \
             ORDER BY lowest_kv LIMIT 5",
        ),
    ];
    for (question, sql) in questions {
        let _ = writeln!(
            out,
            "\n{question}\n  {sql}\n{}",
            sql_table(lake, sql).await?
        );
    }

    // The fences are polygons in the park file, not rows: the last position of every
    // animal comes from SQL, its distance to its paddock's fence from the park.
    let positions_sql = "SELECT animal, species, paddock, last_value(lat ORDER BY time) AS lat, \
                         last_value(lon ORDER BY time) AS lon FROM collar \
                         GROUP BY animal, species, paddock";
    let result =
        nublar_lake::query::query(lake, DEFAULT_DB, positions_sql, &QueryConfig::default()).await?;
    let csv = String::from_utf8(nublar_lake::query::render(&result, Format::Csv)?)?;
    let mut nearest: Vec<(f64, bool, Vec<String>)> = Vec::new();
    for line in csv.lines().skip(1) {
        let cells: Vec<String> = line.split(',').map(str::to_owned).collect();
        let [_, _, paddock, lat, lon] = &cells[..] else {
            continue;
        };
        let (Ok(lat), Ok(lon)) = (lat.parse::<f64>(), lon.parse::<f64>()) else {
            continue;
        };
        let Some(paddock) = park.paddocks().iter().find(|known| known.name == *paddock) else {
            continue;
        };
        let inside = paddock.contains(lat, lon);
        nearest.push((paddock.distance_to_fence_m(lat, lon), inside, cells));
    }
    // Outside first (a breach), then the nearest inside.
    nearest.sort_by(|a, b| a.1.cmp(&b.1).then(a.0.total_cmp(&b.0)));
    let _ = writeln!(
        out,
        "\nWhich animals are nearest a fence (their last position)?\n  {positions_sql}\n  \
         with each paddock's fence from park.geojson"
    );
    let _ = writeln!(
        out,
        "  {:<20} {:<14} {:<14} {:>11} {:>11} {:>9}  where",
        "animal", "species", "paddock", "lat", "lon", "metres"
    );
    for (metres, inside, cells) in nearest.iter().take(5) {
        let _ = writeln!(
            out,
            "  {:<20} {:<14} {:<14} {:>11} {:>11} {:>9.2}  {}",
            cells[0],
            cells[1],
            cells[2],
            cells[3],
            cells[4],
            metres,
            if *inside {
                "inside"
            } else {
                "OUTSIDE: a breach"
            }
        );
    }

    let sql = "SELECT reason, count(*) AS lines, left(min(raw), 60) AS example FROM _dead_letters \
               GROUP BY reason ORDER BY lines DESC";
    let _ = writeln!(
        out,
        "\nWhich lines were rejected, and why? ({} in all; the first of each request and sender \
         are kept as dead letters)\n  {sql}",
        thousands(counts.rejected as u64)
    );
    if counts.dead_letters > 0.0 {
        let _ = writeln!(out, "{}", sql_table(lake, sql).await?);
    } else {
        let _ = writeln!(out, "  none");
    }
    Ok(out)
}
