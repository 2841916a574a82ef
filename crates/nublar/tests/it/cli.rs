//! The `nublar` binary as an operator uses it.

use std::path::Path;
use std::process::{Command, Output};

use crate::common;

use nublar_log::{BatchBuilder, Compression, Log, OpenOptions, TopicConfig};

/// A child forked while a test here has a log open in-process holds a copy of that log's lock
/// until it execs, so the lock can outlive the log's close by a moment and refuse the next
/// opener. Filling a log takes this for writing; spawning a child, for reading.
static FORKS: std::sync::RwLock<()> = std::sync::RwLock::new(());

fn nublar(args: &[&str]) -> Output {
    let _forking = FORKS
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    Command::new(env!("CARGO_BIN_EXE_nublar"))
        .args(args)
        .output()
        .unwrap()
}

/// Whether a benchmark's output shows its DuckDB comparison (`marker`); under `CI=true`, where
/// DuckDB is installed, it must.
fn duckdb_ran(text: &str, marker: &str) -> bool {
    let ran = text.contains(marker);
    if std::env::var("CI").as_deref() == Ok("true") {
        assert!(ran, "DuckDB is installed under CI: {text}");
    } else if !ran {
        eprintln!("DuckDB comparison skipped: {text}");
    }
    ran
}

fn stdout(output: &Output) -> String {
    assert!(
        output.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).unwrap()
}

#[test]
fn help_lists_the_subcommands_and_version_prints_the_version() {
    let help = stdout(&nublar(&["--help"]));
    for command in ["log", "bench"] {
        assert!(help.contains(command), "{help}");
    }
    let version = stdout(&nublar(&["--version"]));
    assert_eq!(
        version.trim(),
        format!("nublar {}", env!("CARGO_PKG_VERSION"))
    );
}

fn fill(data: &Path) {
    let _no_forks = FORKS
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let log = Log::open_with(
        data.join("log"),
        OpenOptions {
            background: false,
            ..OpenOptions::default()
        },
    )
    .unwrap();
    log.create_topic("telemetry", TopicConfig::with_partitions(2))
        .unwrap();
    for index in 0..5 {
        let mut builder = BatchBuilder::new(Compression::Zstd)
            .batch_key(&format!("req-{index}"))
            .unwrap();
        builder.push(
            None,
            format!("weather,station=s{index} temp_c=21.5").as_bytes(),
            &[("sender", b"2001:db8::9")],
        );
        log.append("telemetry", 1, builder.finish().unwrap())
            .unwrap();
    }
    log.commit("lake", &[("telemetry", 1, 3)]).unwrap();
    log.set_required("lake", "telemetry", true).unwrap();
    log.close().unwrap();
}

#[test]
fn log_commands_look_inside_a_directory_without_changing_it() {
    let data = tempfile::tempdir().unwrap();
    fill(data.path());
    let data_arg = data.path().to_str().unwrap();

    let topics = stdout(&nublar(&["log", "topics", "--data", data_arg]));
    assert!(
        topics
            .lines()
            .any(|line| line.starts_with("telemetry") && line.contains(" 5 ")),
        "{topics}"
    );

    let describe = stdout(&nublar(&[
        "log",
        "describe",
        "telemetry",
        "--data",
        data_arg,
    ]));
    assert!(describe.contains("partition 1: offsets 0..5"), "{describe}");
    assert!(
        describe.contains("group lake (required): committed 3, lag 2"),
        "{describe}"
    );

    let tail = stdout(&nublar(&[
        "log",
        "tail",
        "telemetry",
        "-p",
        "1",
        "-n",
        "2",
        "--data",
        data_arg,
    ]));
    let lines: Vec<&str> = tail.lines().collect();
    assert_eq!(lines.len(), 2, "{tail}");
    assert!(
        lines[0].starts_with("3 ") && lines[0].contains("station=s3"),
        "{tail}"
    );
    assert!(
        lines[1].contains("nublar-batch-key=req-4") && lines[1].contains("sender=2001:db8::9"),
        "{tail}"
    );

    let dump = stdout(&nublar(&[
        "log",
        "dump",
        "telemetry",
        "-p",
        "1",
        "--records",
        "--data",
        data_arg,
    ]));
    assert_eq!(
        dump.lines()
            .filter(|line| line.starts_with("batch offsets"))
            .count(),
        5,
        "{dump}"
    );
    assert!(
        dump.contains("codec zstd") && dump.contains("(ok)"),
        "{dump}"
    );

    // Read-only: a second look finds the clean-shutdown marker still there.
    assert!(
        data.path()
            .join("log/topics/telemetry/1/clean-shutdown")
            .exists()
    );

    let unknown = nublar(&["log", "describe", "nope", "--data", data_arg]);
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("unknown topic"));
}

#[test]
fn log_answers_are_bounded_however_much_is_asked() {
    let data = tempfile::tempdir().unwrap();
    {
        let _no_forks = FORKS
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let log = Log::open_with(
            data.path().join("log"),
            OpenOptions {
                background: false,
                ..OpenOptions::default()
            },
        )
        .unwrap();
        log.create_topic("notes", TopicConfig::with_partitions(1))
            .unwrap();
        // 24 MB of records that print as themselves, more than an answer may hold.
        let note = "n".repeat(300);
        for _ in 0..80 {
            let mut builder = BatchBuilder::new(Compression::Lz4);
            for _ in 0..1000 {
                builder.push(None, note.as_bytes(), &[]);
            }
            log.append("notes", 0, builder.finish().unwrap()).unwrap();
        }
        log.close().unwrap();
    }
    let data_arg = data.path().to_str().unwrap();
    let tail = stdout(&nublar(&[
        "log", "tail", "notes", "-n", "100000", "--data", data_arg,
    ]));
    assert!(
        tail.len() <= (16 << 20) + 1024,
        "{} bytes answered",
        tail.len()
    );
    let last = tail.lines().last().unwrap();
    assert!(last.starts_with("... stopped at offset"), "{last}");
    assert!(last.contains("nublar log dump notes -p 0 --from"), "{last}");
    let too_many = nublar(&["log", "tail", "notes", "-n", "100001", "--data", data_arg]);
    assert!(!too_many.status.success());
    assert!(String::from_utf8_lossy(&too_many.stderr).contains("100001"));
}

#[test]
fn log_commands_refuse_a_directory_a_process_owns() {
    let data = tempfile::tempdir().unwrap();
    fill(data.path());
    let _owner = Log::open(data.path().join("log")).unwrap();
    let output = nublar(&["log", "topics", "--data", data.path().to_str().unwrap()]);
    assert!(!output.status.success());
    let error = String::from_utf8_lossy(&output.stderr);
    assert!(error.contains("another nublar process owns"), "{error}");
}

/// The log benchmark with tiny parameters: it must run, print every column
/// and the group commit line, and leave nothing behind.
#[test]
fn the_log_benchmark_runs_and_cleans_up() {
    let scratch = tempfile::tempdir().unwrap();
    let output = nublar(&[
        "bench",
        "log",
        "--dir",
        scratch.path().to_str().unwrap(),
        "--seconds",
        "0.05",
        "--record-bytes",
        "100",
        "--batch-records",
        "1,100",
        "--producers",
        "1,4",
    ]);
    let text = stdout(&output);
    assert!(text.starts_with("machine: "), "{text}");
    assert!(
        text.contains("raw_recs/s") && text.contains("consume_rec/s"),
        "{text}"
    );
    let rows = text
        .lines()
        .filter(|line| line.trim_start().starts_with("100 "))
        .count();
    assert_eq!(
        rows, 5,
        "1 and 4 producers for two batch sizes, plus 4 partitions at 100: {text}"
    );
    assert!(
        text.contains("group commit: 100 B x 100: 4 producers / 1 producer"),
        "{text}"
    );
    assert_eq!(
        std::fs::read_dir(scratch.path()).unwrap().count(),
        0,
        "benchmark data deleted"
    );

    let open = stdout(&nublar(&[
        "bench",
        "log-open",
        "--dir",
        scratch.path().to_str().unwrap(),
        "--gib",
        "0.01",
    ]));
    assert!(open.contains("open of a cleanly closed"), "{open}");
    assert_eq!(std::fs::read_dir(scratch.path()).unwrap().count(), 0);
}

/// The BFD sessions benchmark with tiny parameters: two processes bring every session Up, keep
/// them Up through the window, and report CPU per side; the second process is gone afterwards.
#[test]
fn the_tls_benchmark_sends_both_protocols_to_one_node_and_cleans_up() {
    let scratch = tempfile::tempdir().unwrap();
    let output = nublar(&[
        "bench",
        "tls",
        "--dir",
        scratch.path().to_str().unwrap(),
        "--lines",
        "200",
        "--concurrency",
        "2",
        "--seconds",
        "0.3",
        "--rounds",
        "1",
    ]);
    let text = stdout(&output);
    assert!(text.starts_with("machine: "), "{text}");
    for protocol in ["round 1: HTTP ", "round 1: HTTPS "] {
        assert!(text.contains(protocol), "{text}");
    }
    let median = text.lines().last().unwrap();
    assert!(
        median.starts_with("median: HTTP ") && median.contains("% of HTTP"),
        "{text}"
    );
    assert_eq!(
        std::fs::read_dir(scratch.path()).unwrap().count(),
        0,
        "the benchmark's folder is gone"
    );
}

#[test]
fn the_memory_benchmark_loads_a_node_and_states_its_peak_beside_the_bound() {
    let scratch = tempfile::tempdir().unwrap();
    let output = nublar(&[
        "bench",
        "memory",
        "--dir",
        scratch.path().to_str().unwrap(),
        "--connections",
        "3",
        "--seconds",
        "1",
        "--requests",
        "3",
        "--events",
        "2000",
        "--in-flight-bytes-max",
        "67108864",
    ]);
    let text = stdout(&output);
    assert!(text.starts_with("machine: "), "{text}");
    assert!(text.contains("stored (204)"), "{text}");
    let last = text.lines().last().unwrap();
    assert!(
        last.starts_with("RSS at start") && last.ends_with("within it"),
        "{text}"
    );
    assert_eq!(std::fs::read_dir(scratch.path()).unwrap().count(), 0);
}

#[test]
fn the_bfd_sessions_benchmark_runs_two_processes_without_a_false_down() {
    let output = nublar(&[
        "bench",
        "bfd-sessions",
        "--sessions",
        "20",
        "--seconds",
        "1",
    ]);
    let text = stdout(&output);
    assert!(text.starts_with("machine: "), "{text}");
    assert!(text.contains("all 20 sessions Up on both sides"), "{text}");
    for side in ["side A (this process): ", "side B (second process): "] {
        let line = text
            .lines()
            .find(|line| line.starts_with(side))
            .unwrap_or_else(|| panic!("no line for {side}: {text}"));
        assert!(
            line.contains("Up 20/20 at start, 20/20 at end, 0 changes to Down, 0 events missed"),
            "{line}"
        );
        assert!(
            line.contains(", 0 transmit errors, 0 dropped, CPU "),
            "{line}"
        );
        assert!(
            line.contains("% of one core (user ") && line.contains("%, system "),
            "{line}"
        );
    }
    assert!(text.contains("result: no false Down; CPU A "), "{text}");
    let second_pid = text
        .split(" B pid ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no pid of the second process: {text}"));
    assert!(
        !Path::new(&format!("/proc/{second_pid}")).exists(),
        "the second process {second_pid} outlived the benchmark"
    );
}

/// The failover benchmark with tiny parameters: both runs freeze each gateway once, every
/// freeze is one failover, nothing goes unacknowledged, and the gateways' data is gone after.
#[test]
fn the_failover_benchmark_freezes_gateways_and_compares_bfd_with_the_time_out() {
    let scratch = tempfile::tempdir().unwrap();
    let output = nublar(&[
        "bench",
        "failover",
        "--dir",
        scratch.path().to_str().unwrap(),
        "--freezes",
        "2",
        "--rate",
        "5000",
        "--batch",
        "100",
        "--hold",
        "0.5",
        "--recover",
        "3",
        "--http-timeout",
        "1",
    ]);
    let text = stdout(&output);
    let row = |name: &str| -> Vec<String> {
        text.lines()
            .find(|line| line.starts_with(name))
            .unwrap_or_else(|| panic!("no row for {name}: {text}"))
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    };
    for name in ["BFD 50 ms x 3 ", "HTTP time-out 1 s, no BFD "] {
        let row = row(name);
        let figures = &row[row.len() - 9..];
        assert_eq!(
            &figures[..3],
            ["2", "2", "2"],
            "freezes, failovers, gaps: {text}"
        );
        assert_eq!(figures[6], figures[7], "every event acknowledged: {text}");
    }
    let p99 = |name: &str| row(name)[row(name).len() - 5].parse::<f64>().unwrap();
    assert!(
        p99("BFD 50 ms x 3 ") < p99("HTTP time-out 1 s, no BFD "),
        "BFD is faster than the time-out: {text}"
    );
    assert!(!text.contains("false Down"), "{text}");
    assert_eq!(std::fs::read_dir(scratch.path()).unwrap().count(), 0);
}

/// The lake benchmark with tiny parameters: the sink writes every row, DuckDB's figure is
/// beside it when DuckDB is installed (always under CI), and the data is gone afterwards.
#[test]
fn the_lake_benchmark_measures_the_sink_beside_duckdb_and_cleans_up() {
    let scratch = tempfile::tempdir().unwrap();
    let output = nublar(&[
        "bench",
        "lake",
        "--dir",
        scratch.path().to_str().unwrap(),
        "--rows",
        "20000",
        "--batch",
        "1000",
        "--partitions",
        "2",
    ]);
    let text = stdout(&output);
    assert!(
        text.contains("sink: 20000 rows into committed Delta (zstd)"),
        "{text}"
    );
    duckdb_ran(&text, "DuckDB CSV -> zstd Parquet, same rows, same run: ");
    assert_eq!(std::fs::read_dir(scratch.path()).unwrap().count(), 0);
    // The layout the log kept before: every row still reaches the lake.
    let output = nublar(&[
        "bench",
        "lake",
        "--dir",
        scratch.path().to_str().unwrap(),
        "--rows",
        "5000",
        "--no-duckdb",
        "--values",
        "line-protocol",
    ]);
    let text = stdout(&output);
    assert!(text.contains("values as line protocol"), "{text}");
    assert!(
        text.contains("sink: 5000 rows into committed Delta (zstd)"),
        "{text}"
    );
}

#[test]
fn the_freshness_benchmark_probes_a_loaded_node_and_cleans_up() {
    let scratch = tempfile::tempdir().unwrap();
    let output = nublar(&[
        "bench",
        "freshness",
        "--dir",
        scratch.path().to_str().unwrap(),
        "--rate",
        "2000",
        "--duration",
        "4",
    ]);
    let text = stdout(&output);
    let line = text
        .lines()
        .find(|line| line.starts_with("freshness (acknowledged -> visible to a query) over "))
        .unwrap_or_else(|| panic!("no freshness line: {text}"));
    assert!(line.ends_with("0 not visible within 10 s"), "{text}");
    assert!(!line.contains(" over 0 probes"), "{text}");
    assert_eq!(std::fs::read_dir(scratch.path()).unwrap().count(), 0);
}

#[test]
fn the_alerts_benchmark_times_probe_alerts_on_a_loaded_node_and_cleans_up() {
    let scratch = tempfile::tempdir().unwrap();
    let output = nublar(&[
        "bench",
        "alerts",
        "--dir",
        scratch.path().to_str().unwrap(),
        "--rate",
        "2000",
        "--duration",
        "4",
        "--probe-interval-ms",
        "200",
    ]);
    let text = stdout(&output);
    let line = text
        .lines()
        .find(|line| line.starts_with("alert latency (acknowledged -> alert at the webhook) over "))
        .unwrap_or_else(|| panic!("no latency line: {text}"));
    assert!(line.ends_with("0 not out within 10 s"), "{text}");
    assert!(!line.contains(" over 0 probes"), "{text}");
    assert!(text.contains("lag during the load"), "{text}");
    assert_eq!(std::fs::read_dir(scratch.path()).unwrap().count(), 0);
}

#[test]
fn the_query_benchmark_fills_a_node_and_compares_with_duckdb() {
    let scratch = tempfile::tempdir().unwrap();
    let output = nublar(&[
        "bench",
        "query",
        "--dir",
        scratch.path().to_str().unwrap(),
        "--rows",
        "30000",
        "--batch",
        "1000",
        "--repeat",
        "1",
    ]);
    let text = stdout(&output);
    assert!(text.contains("table: 30000 rows"), "{text}");
    // Every row counted once by the node's SQL: the temperatures are spread over -10..35.
    let count = text
        .lines()
        .skip_while(|line| !line.starts_with("SELECT count(*) FROM weather WHERE temp_c > 30"))
        .find_map(|line| line.trim().strip_prefix("answer: "))
        .unwrap_or_else(|| panic!("no answer: {text}"));
    let answer: serde_json::Value = serde_json::from_str(count).unwrap();
    let over_30 = answer[0]["count(*)"].as_u64().unwrap();
    assert!(over_30 > 0 && over_30 < 30000, "{text}");
    if duckdb_ran(&text, "DuckDB over the same files") {
        let alone = text.contains("DataFusion alone over the same files");
        assert!(
            alone || std::env::var("CI").as_deref() != Ok("true"),
            "DataFusion's Python package is installed under CI: {text}"
        );
        let engines = if alone { 4 } else { 2 };
        assert_eq!(text.matches("same answer: yes").count(), engines, "{text}");
    }
    assert_eq!(std::fs::read_dir(scratch.path()).unwrap().count(), 0);
}

#[test]
fn the_demo_runs_a_node_and_the_simulator_then_answers_from_the_lake() {
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path().join("demo");
    let output = nublar(&[
        "demo",
        "--dir",
        dir.to_str().unwrap(),
        "--duration",
        "3",
        "--rate",
        "2000",
        "--sensors",
        "300",
    ]);
    let text = stdout(&output);
    assert!(output.status.success(), "{text}");
    // The last progress line: everything acknowledged is in the lake.
    let done = text
        .split(['\r', '\n'])
        .find_map(|line| line.trim().split_once("done: "))
        .map(|(_, rest)| rest.to_owned())
        .unwrap_or_else(|| panic!("no summary line: {text}"));
    let numbers: Vec<u64> = done
        .split(' ')
        .filter_map(|word| word.replace(',', "").parse().ok())
        .collect();
    assert_eq!(numbers.len(), 3, "{done}");
    assert!(numbers[0] > 0 && numbers[0] == numbers[1], "{done}");
    // Events per measurement add up to what was acknowledged.
    let per_measurement: u64 = text
        .lines()
        .filter(|line| {
            ["collar", "weather", "fence", "gate"]
                .iter()
                .any(|name| line.starts_with(&format!("| {name} ")))
        })
        .map(|line| {
            line.split('|')
                .nth(2)
                .unwrap()
                .trim()
                .parse::<u64>()
                .unwrap()
        })
        .sum();
    assert_eq!(per_measurement, numbers[0], "{text}");
    for question in [
        "Which habitats are warmest?",
        "Which fence segments lost voltage?",
        "Which animals are nearest a fence",
        "Which lines were rejected, and why?",
    ] {
        assert!(text.contains(question), "{question} missing: {text}");
    }
    assert!(
        text.contains(&format!("query --data {}", dir.display())),
        "{text}"
    );
    // The node stopped and left its directory behind for those commands.
    assert!(dir.join("lake/park/weather/_delta_log").is_dir());
    assert!(!dir.join("node.json").exists());
    let again = nublar(&["demo", "--dir", dir.to_str().unwrap()]);
    assert!(!again.status.success(), "a used directory is refused");
}

#[test]
fn the_processors_benchmark_runs_every_processor_and_cleans_up() {
    let scratch = tempfile::tempdir().unwrap();
    let output = nublar(&[
        "bench",
        "processors",
        "--dir",
        scratch.path().to_str().unwrap(),
        "--events",
        "20000",
        "--sensors",
        "200",
        "--batch",
        "500",
        "--duplicates",
        "0.05",
    ]);
    let text = stdout(&output);
    assert!(text.starts_with("machine: "), "{text}");
    for run in [
        "all: duplicates, windows, dead letters, alerts, latest",
        "duplicates alone",
        "windows alone",
        "alerts alone",
        "latest alone",
        "decoding alone",
    ] {
        let line = text
            .lines()
            .find(|line| line.starts_with(run))
            .unwrap_or_else(|| panic!("no line for {run}: {text}"));
        assert!(line.contains(" M events/s"), "{line}");
    }
    let all = text.lines().find(|line| line.starts_with("all:")).unwrap();
    assert!(
        !all.contains("; 0 duplicates"),
        "duplicates were sent: {all}"
    );
    assert_eq!(
        std::fs::read_dir(scratch.path()).unwrap().count(),
        0,
        "benchmark data deleted"
    );
}

/// A certificate for 127.0.0.1 as PEM files in `dir`: the certificate (also the CA file a
/// client trusts) and its key.
fn loopback_certificate(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let rcgen::CertifiedKey { cert, signing_key } =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
    let (cert_path, key_path) = (dir.join("node.pem"), dir.join("node.key"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, signing_key.serialize_pem()).unwrap();
    (cert_path, key_path)
}

#[test]
fn operator_commands_reach_a_node_by_url_over_https_with_a_ca_file_and_a_token() {
    let node_data = tempfile::tempdir().unwrap();
    let files = tempfile::tempdir().unwrap();
    let (cert, key) = loopback_certificate(files.path());
    let config = format!(
        "[http]\ntls_cert = \"{}\"\ntls_key = \"{}\"\n\
         [[access.tokens]]\nname = \"ops\"\nsecret = \"ops-secret\"\nscopes = [\"admin\", \"read:park\"]\n",
        cert.display(),
        key.display()
    );
    let node = common::start_node(node_data.path(), &config, "127.0.0.1:0");
    let url = format!("https://127.0.0.1:{}", node.http.port());
    // Another directory: the command has no node.json to go by, only --node.
    let elsewhere = tempfile::tempdir().unwrap();
    let ask = |args: &[&str]| common::nublar(elsewhere.path().to_str().unwrap(), args);
    let ca = cert.to_str().unwrap();

    let topics = ask(&[
        "log",
        "topics",
        "--node",
        &url,
        "--ca-file",
        ca,
        "--token",
        "ops-secret",
    ]);
    assert!(
        topics.status.success(),
        "{}",
        String::from_utf8_lossy(&topics.stderr)
    );
    assert!(String::from_utf8_lossy(&topics.stdout).contains("telemetry"));
    let tables = ask(&[
        "lake",
        "--node",
        &url,
        "--ca-file",
        ca,
        "--token",
        "ops-secret",
        "tables",
    ]);
    assert!(
        tables.status.success(),
        "{}",
        String::from_utf8_lossy(&tables.stderr)
    );

    // Without the token the node refuses; without the CA file the client does.
    let refused = ask(&["log", "topics", "--node", &url, "--ca-file", ca]);
    assert!(!refused.status.success());
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(said.contains("answered 401"), "{said}");
    let untrusted = ask(&["log", "topics", "--node", &url, "--token", "ops-secret"]);
    assert!(!untrusted.status.success());
    let said = String::from_utf8_lossy(&untrusted.stderr).to_lowercase();
    assert!(said.contains("certificate"), "{said}");
    assert!(
        !elsewhere.path().join("log").exists(),
        "asking a node by URL opens nothing here"
    );
    drop(node);
}
