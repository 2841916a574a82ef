//! The lake of a running node: plain Delta Lake that the `deltalake` Python package (delta-rs's
//! own, not ours) and DuckDB read back with exactly the events that were acknowledged, each
//! once; SQL over it through the API and the command line; its maintenance; writes held back
//! while it lags; every event once across SIGKILLs during ingest; the schema registry's types.
//!
//! The interop test needs `python3` with `deltalake`, `pyarrow` and `duckdb` (`python3 -m pip
//! install deltalake pyarrow duckdb`); without them it prints why and passes, unless `CI=true`,
//! where it fails.

use crate::common;

use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{NodeProcess, free_port, nublar, nublar_ok, start_node};

fn python_has_deltalake() -> Result<(), String> {
    let output = Command::new("python3")
        .args(["-c", "import deltalake, pyarrow, duckdb"])
        .output()
        .map_err(|error| format!("python3: {error}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "python3 cannot import deltalake, pyarrow and duckdb (python3 -m pip install \
             deltalake pyarrow duckdb): {}",
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

fn start(data: &Path) -> NodeProcess {
    start_node(data, "[lake]\ncommit_interval_ms = 200\n", "127.0.0.1:0")
}

/// The simulator ended well and says every one of `events` was acknowledged.
fn assert_all_acknowledged(sim: &std::process::Output, events: u64) {
    let summary = String::from_utf8_lossy(&sim.stdout);
    assert!(sim.status.success(), "{summary}");
    assert!(
        summary.contains(&format!("{events} events sent, {events} acknowledged")),
        "{summary}"
    );
}

/// Every table under `lake/park` as the `deltalake` package reads it: name, rows, distinct
/// values of the unique field, and their sum.
const READ_TABLES: &str = r#"
import json, os, sys
import duckdb
from deltalake import DeltaTable
import pyarrow.compute as pc
root = sys.argv[1]
out = {}
for name in sorted(os.listdir(root)):
    if name.startswith("_"):
        continue
    delta = DeltaTable(os.path.join(root, name))
    table = delta.to_pyarrow_table()
    uid = table.column("uid")
    # DuckDB over the same version's files, as its own Parquet reader sees them.
    duck_rows, duck_sum = duckdb.sql(
        "SELECT count(*), sum(uid) FROM read_parquet(" + repr(delta.file_uris()) + ")"
    ).fetchall()[0]
    out[name] = {
        "rows": table.num_rows,
        "distinct": pc.count_distinct(uid).as_py(),
        "sum": pc.sum(uid).as_py(),
        "columns": table.column_names,
        "duckdb_rows": duck_rows,
        "duckdb_sum": int(duck_sum),
    }
print(json.dumps(out))
"#;

#[test]
fn the_deltalake_python_package_reads_every_acknowledged_event_once() {
    if let Err(reason) = python_has_deltalake() {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("the lake interop test cannot run under CI=true: {reason}");
        }
        let _ = writeln!(
            std::io::stderr(),
            "skipping the lake interop test: {reason}"
        );
        return;
    }
    let data = tempfile::tempdir().unwrap();
    let mut node = start(data.path());
    let events = 20_000u64;
    let output = Command::new(env!("CARGO_BIN_EXE_nublar"))
        .arg("sim")
        .args(["--target", &format!("http://{}", node.http)])
        .args([
            "--rate",
            "0",
            "--events",
            &events.to_string(),
            "--batch",
            "1000",
        ])
        .args(["--unique-field", "uid"])
        .output()
        .unwrap();
    assert_all_acknowledged(&output, events);
    // A drain commits what the sink still holds.
    node.signal(libc::SIGTERM);
    assert!(node.wait_exit(Duration::from_secs(30)).success());

    let lake = data.path().join("lake").join("park");
    let read = Command::new("python3")
        .args(["-c", READ_TABLES, lake.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        read.status.success(),
        "python3 {}: {} {}",
        read.status,
        String::from_utf8_lossy(&read.stderr),
        String::from_utf8_lossy(&read.stdout)
    );
    let tables: serde_json::Value = serde_json::from_slice(&read.stdout).unwrap();
    let names: Vec<&str> = tables
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(names, ["collar", "fence", "gate", "weather"], "{tables}");
    let (mut rows, mut distinct, mut sum) = (0, 0, 0);
    for table in tables.as_object().unwrap().values() {
        rows += table["rows"].as_u64().unwrap();
        assert_eq!(table["duckdb_rows"], table["rows"], "{tables}");
        assert_eq!(table["duckdb_sum"], table["sum"], "{tables}");
        distinct += table["distinct"].as_u64().unwrap();
        sum += table["sum"].as_u64().unwrap();
        let columns: Vec<&str> = table["columns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|column| column.as_str().unwrap())
            .collect();
        for own in ["time", "_time_ns", "_day", "_sender", "_batch_key"] {
            assert!(columns.contains(&own), "{own} missing: {columns:?}");
        }
    }
    assert_eq!(rows, events, "{tables}");
    assert_eq!(distinct, events, "every event once: {tables}");
    assert_eq!(
        sum,
        events * (events - 1) / 2,
        "the unique values 0..n: {tables}"
    );
    let weather = &tables["weather"]["columns"];
    for column in ["habitat", "station", "temp_c", "humidity", "wind_ms"] {
        assert!(
            weather
                .as_array()
                .unwrap()
                .iter()
                .any(|name| name == column),
            "{column} missing from weather: {weather}"
        );
    }
}

/// `text` as a URL query value.
fn url_encoded(text: &str) -> String {
    let mut out = String::new();
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-_.~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[test]
fn queries_answer_over_the_api_and_the_command_line_and_lake_commands_ask_the_node() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().to_str().unwrap();
    let mut node = start_node(
        data.path(),
        "[[access.tokens]]\nname = \"ops\"\nsecret = \"adm1n\"\nscopes = [\"admin\"]\n\n\
         [[access.tokens]]\nname = \"analyst\"\nsecret = \"r3ad\"\nscopes = [\"read:park\"]\n\n\
         [[access.tokens]]\nname = \"collars\"\nsecret = \"wr1te\"\nscopes = [\"write:park\"]\n",
        "127.0.0.1:0",
    );
    let write = [("Authorization", "Token wr1te")];
    let read = [("Authorization", "Token r3ad")];
    let lines = "weather,station=s1 temp_c=21.5 1700000000000000000\n\
                 weather,station=s2 temp_c=30.25 1700000001000000000\n\
                 Zone\\ Map,Paddock\\ Name=north Temp\\ C=4i 1700000000000000000\n";
    let (status, _) = common::request(
        node.http,
        "POST",
        "/api/v3/write_lp?db=park",
        &write,
        lines.as_bytes(),
    );
    assert_eq!(status, 204);
    let get = |sql: &str, format: &str, headers: &[(&str, &str)]| {
        let target = format!(
            "/api/v3/query_sql?db=park&format={format}&q={}",
            url_encoded(sql)
        );
        let (status, body) = common::request(node.http, "GET", &target, headers, b"");
        (status, String::from_utf8_lossy(&body).into_owned())
    };
    // Visible once the sink has committed (every second by default).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = get("SELECT count(*) AS n FROM weather", "json", &read);
        if status == 200 && body.trim() == r#"[{"n":2}]"# {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the events did not become visible: {status} {body}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let sql = "SELECT station, temp_c FROM weather ORDER BY station";
    let (status, json) = get(sql, "json", &read);
    assert_eq!(status, 200, "{json}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&json).unwrap(),
        serde_json::json!([{"station": "s1", "temp_c": 21.5}, {"station": "s2", "temp_c": 30.25}])
    );
    assert_eq!(
        get(sql, "jsonl", &read).1,
        "{\"station\":\"s1\",\"temp_c\":21.5}\n{\"station\":\"s2\",\"temp_c\":30.25}\n"
    );
    let body = serde_json::json!({"db": "park", "q": "SELECT \"Paddock Name\", \"Temp C\" FROM \"Zone Map\"", "format": "csv"});
    let (status, csv) = common::request(
        node.http,
        "POST",
        "/api/v3/query_sql",
        &read,
        body.to_string().as_bytes(),
    );
    assert_eq!(
        (status, String::from_utf8_lossy(&csv).as_ref()),
        (200, "Paddock Name,Temp C\nnorth,4\n")
    );
    let target = format!(
        "/api/v3/query_sql?db=park&format=parquet&q={}",
        url_encoded(sql)
    );
    let (status, parquet) = common::request(node.http, "GET", &target, &read, b"");
    assert_eq!(status, 200);
    assert!(parquet.starts_with(b"PAR1") && parquet.ends_with(b"PAR1"));

    // Refusals, each with a reason.
    assert_eq!(get(sql, "json", &[]).0, 401);
    assert_eq!(get(sql, "json", &write).0, 403);
    let (status, body) = get("SELEKT station FROM weather", "json", &read);
    assert_eq!(status, 400);
    assert!(body.contains("SELEKT"), "{body}");
    let (status, body) = get("CREATE TABLE t AS SELECT 1", "json", &read);
    assert_eq!(status, 400, "{body}");
    assert_eq!(get(sql, "xml", &read).0, 400);
    let (status, _) = common::request(node.http, "GET", "/api/v3/query_sql?db=park", &read, b"");
    assert_eq!(status, 400);

    // The command line reads the same tables, beside the running node.
    let nublar = |args: &[&str]| nublar(dir, args);
    let output = nublar(&["query", "--format", "jsonl", sql]);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        String::from_utf8(output.stdout).unwrap(),
        get(sql, "jsonl", &read).1
    );
    let table = nublar(&["query", "SELECT max(temp_c) AS warmest FROM weather"]);
    let text = String::from_utf8(table.stdout).unwrap();
    assert!(
        text.contains("| warmest |") && text.contains("| 30.25   |"),
        "{text}"
    );
    let bad = nublar(&["query", "SELECT nothing FROM weather"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("nothing"));

    // Maintenance goes through the node that owns the directory, with an admin token.
    let refused = nublar(&["lake", "optimize"]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("401"));
    let optimized = nublar(&["lake", "optimize", "--token", "adm1n", "--db", "park"]);
    assert!(
        optimized.status.success(),
        "{}",
        String::from_utf8_lossy(&optimized.stderr)
    );
    let text = String::from_utf8(optimized.stdout).unwrap();
    assert!(text.contains("park/weather: "), "{text}");
    let tables = nublar(&["lake", "tables", "--json"]);
    let tables: Vec<serde_json::Value> = String::from_utf8(tables.stdout)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let rows: Vec<(&str, u64)> = tables
        .iter()
        .map(|table| {
            (
                table["measurement"].as_str().unwrap(),
                table["rows"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(rows, [("Zone Map", 1), ("weather", 2)]);

    // A table whose data files are gone is the lake's fault: 500, naming no server path.
    let zone_map = std::fs::read_dir(data.path().join("lake").join("park"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .find(|path| path.file_name().unwrap() != "weather")
        .unwrap();
    let mut removed = 0;
    for day in std::fs::read_dir(&zone_map).unwrap() {
        let day = day.unwrap().path();
        if day
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("_day=")
        {
            for file in std::fs::read_dir(&day).unwrap() {
                std::fs::remove_file(file.unwrap().path()).unwrap();
                removed += 1;
            }
        }
    }
    assert!(removed > 0);
    let (status, error) = get("SELECT * FROM \"Zone Map\"", "json", &read);
    assert_eq!(status, 500, "{error}");
    let message = serde_json::from_str::<serde_json::Value>(&error).unwrap()["error"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(message.contains("<lake>"), "{message}");
    assert!(!message.contains(dir.trim_start_matches('/')), "{message}");

    node.signal(libc::SIGTERM);
    assert!(node.wait_exit(Duration::from_secs(30)).success());
    // Without a node, the commands run here.
    let checkpoint = nublar(&["lake", "checkpoint", "--db", "park", "--table", "weather"]);
    assert!(
        checkpoint.status.success(),
        "{}",
        String::from_utf8_lossy(&checkpoint.stderr)
    );
    assert!(
        String::from_utf8_lossy(&checkpoint.stdout).contains("park/weather: checkpoint at version")
    );
    let vacuum = nublar(&["lake", "vacuum", "--retention-hours", "0"]);
    assert!(!vacuum.status.success());
    assert!(String::from_utf8_lossy(&vacuum.stderr).contains("too short"));
}

#[test]
fn a_lake_that_cannot_keep_up_holds_writes_back_until_it_catches_up() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().to_str().unwrap();
    // A file where the lake's directory belongs: the sink cannot write a table.
    let lake = data.path().join("lake");
    std::fs::write(&lake, b"in the way").unwrap();
    let mut node = start_node(data.path(), "[lake]\nlag_events_max = 100\n", "127.0.0.1:0");
    let write = |lines: &str| {
        let (status, body) = common::request(
            node.http,
            "POST",
            "/api/v3/write_lp?db=park",
            &[],
            lines.as_bytes(),
        );
        (status, String::from_utf8_lossy(&body).into_owned())
    };
    let batch: String = (0..150)
        .map(|n| {
            format!(
                "gate,gate=g1 open=true,n={n}i {}\n",
                1_700_000_000_000_000_000i64 + n
            )
        })
        .collect();
    assert_eq!(write(&batch).0, 204);
    let one = |n: i64| {
        format!(
            "gate,gate=g1 open=true,n={n}i {}\n",
            1_700_000_000_000_000_000i64 + n
        )
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let refusal = loop {
        let (status, body) = write(&one(1000));
        if status == 503 {
            break body;
        }
        assert_eq!(status, 204, "{body}");
        assert!(
            std::time::Instant::now() < deadline,
            "writes were never held back"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(refusal.contains("the lake is"), "{refusal}");
    let (_, metrics) = common::request(node.http, "GET", "/metrics", &[], b"");
    let metrics = String::from_utf8(metrics).unwrap();
    assert!(metrics.contains("nublar_ingest_held_back 1"), "{metrics}");
    let (status, ready) = common::request(node.http, "GET", "/ready", &[], b"");
    let ready = String::from_utf8_lossy(&ready);
    assert_eq!(status, 503, "{ready}");
    assert!(ready.contains("writes held back: the lake is"), "{ready}");

    // The way cleared, the sink catches up and writes are taken again.
    std::fs::remove_file(&lake).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while write(&one(2000)).0 != 204 {
        assert!(
            std::time::Instant::now() < deadline,
            "writes stayed held back"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        common::request(node.http, "GET", "/ready", &[], b"").0,
        200,
        "ready again once writes are taken"
    );
    node.signal(libc::SIGTERM);
    assert!(node.wait_exit(Duration::from_secs(30)).success());
    let counted = nublar_ok(
        dir,
        &[
            "query",
            "--format",
            "csv",
            "SELECT count(*) AS n, count(DISTINCT n) AS distinct_n FROM gate WHERE n < 1000",
        ],
    );
    assert_eq!(counted, "n,distinct_n\n150,150\n");
}

#[test]
fn the_lake_holds_every_event_once_across_sigkills_during_ingest() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().to_str().unwrap();
    let http = format!("127.0.0.1:{}", free_port());
    let start = || start_node(data.path(), "[lake]\ncommit_interval_ms = 100\n", &http);
    let mut node = start();
    let events = 40_000u64;
    let sim = Command::new(env!("CARGO_BIN_EXE_nublar"))
        .arg("sim")
        .args(["--target", &format!("http://{http}")])
        .args(["--rate", "5000", "--events", &events.to_string()])
        .args([
            "--batch",
            "250",
            "--concurrency",
            "2",
            "--http-timeout",
            "3",
        ])
        .args(["--unique-field", "uid"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Kills at moments drawn from the clock; printed, so that a failure can be told apart.
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64;
    println!("kill schedule seed {seed}");
    let mut state = seed | 1;
    for kill in 0..5 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let wait = Duration::from_millis(300 + state % 1200);
        std::thread::sleep(wait);
        println!("kill {kill} after {wait:?}");
        node.signal(libc::SIGKILL);
        node.wait_exit(Duration::from_secs(10));
        node = start();
    }
    let output = sim.wait_with_output().unwrap();
    assert_all_acknowledged(&output, events);
    node.signal(libc::SIGTERM);
    assert!(node.wait_exit(Duration::from_secs(30)).success());
    let sql = "SELECT count(*) AS n, count(DISTINCT uid) AS distinct_uid, sum(uid) AS sum_uid FROM \
               (SELECT uid FROM collar UNION ALL SELECT uid FROM weather \
                UNION ALL SELECT uid FROM fence UNION ALL SELECT uid FROM gate)";
    assert_eq!(
        nublar_ok(dir, &["query", "--format", "csv", sql]),
        format!(
            "n,distinct_uid,sum_uid\n{events},{events},{}\n",
            events * (events - 1) / 2
        )
    );
}

#[test]
fn the_lake_gives_each_column_the_type_the_schema_registry_gave_it() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().to_str().unwrap();
    let mut node = start(data.path());
    let write = |lines: &str| {
        common::request(
            node.http,
            "POST",
            "/api/v3/write_lp?db=park",
            &[],
            lines.as_bytes(),
        )
        .0
    };
    assert_eq!(
        write("m,t=a f=1.5,i=2i,u=3u,b=true,s=\"x\" 1700000000000000000\n"),
        204
    );
    // A field that arrives later becomes a column of its own type too; a value of another type
    // for a known field is refused, so it can never reach the lake.
    assert_eq!(write("m,t=b f=2.5,late=7u 1700000001000000000\n"), 204);
    assert_eq!(write("m,t=c f=3i 1700000002000000000\n"), 400);
    node.signal(libc::SIGTERM);
    assert!(node.wait_exit(Duration::from_secs(30)).success());

    let nublar = |args: &[&str]| nublar_ok(dir, args);
    let mut registered = std::collections::BTreeMap::new();
    for line in nublar(&["log", "tail", "_schemas", "-n", "100"]).lines() {
        let Some(start) = line.find('{') else {
            continue;
        };
        let record: serde_json::Value =
            serde_json::from_str(&line[start..].replace("\\\"", "\"")).unwrap();
        let expected = match (record["kind"].as_str(), record["type"].as_str()) {
            (Some("tag"), _) | (_, Some("string")) => "Utf8View",
            (_, Some("float")) => "Float64",
            (_, Some("integer")) => "Int64",
            (_, Some("unsigned")) => "Decimal128(20, 0)",
            (_, Some("boolean")) => "Boolean",
            other => panic!("unknown registration {other:?} in {line}"),
        };
        registered.insert(record["column"].as_str().unwrap().to_owned(), expected);
    }
    assert_eq!(registered.len(), 7, "{registered:?}");
    let mut stored = std::collections::BTreeMap::new();
    for line in nublar(&[
        "query",
        "--format",
        "jsonl",
        "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = 'm'",
    ])
    .lines()
    {
        let column: serde_json::Value = serde_json::from_str(line).unwrap();
        let name = column["column_name"].as_str().unwrap();
        if !name.starts_with('_') && name != "time" {
            stored.insert(
                name.to_owned(),
                column["data_type"].as_str().unwrap().to_owned(),
            );
        }
    }
    let registered: std::collections::BTreeMap<String, String> = registered
        .into_iter()
        .map(|(name, kind)| (name, kind.to_owned()))
        .collect();
    assert_eq!(stored, registered);
    // The refused line is a dead letter, and the dead letters are a table of the database.
    let dead = nublar(&[
        "query",
        "--format",
        "csv",
        "SELECT reason, line_number, raw, _sender FROM _dead_letters",
    ]);
    assert_eq!(
        dead,
        "reason,line_number,raw,_sender\nfield_type_conflict,1,\"m,t=c f=3i 1700000002000000000\",127.0.0.1\n"
    );
}

#[test]
fn the_node_compacts_and_checkpoints_its_tables_in_the_background() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().to_str().unwrap();
    let mut node = start_node(
        data.path(),
        "[lake]\nmaintenance_interval_seconds = 1\n",
        "127.0.0.1:0",
    );
    let tables = || {
        nublar_ok(dir, &["lake", "tables", "--json"])
            .lines()
            .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
            .find(|table| table["measurement"] == "gate")
    };
    // One request at a time, each committed on its own: a file each.
    for n in 0..6i64 {
        let line = format!(
            "gate,gate=g1 open=true,n={n}i {}\n",
            1_700_000_000_000_000_000 + n
        );
        let (status, _) = common::request(
            node.http,
            "POST",
            "/api/v3/write_lp?db=park",
            &[],
            line.as_bytes(),
        );
        assert_eq!(status, 204);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while tables().is_none_or(|table| table["rows"].as_i64() != Some(n + 1)) {
            assert!(
                std::time::Instant::now() < deadline,
                "row {n} never committed"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let table = tables().unwrap();
        let checkpointed = data
            .path()
            .join("lake/park/gate/_delta_log/_last_checkpoint")
            .exists();
        if table["files"] == 1 && checkpointed {
            assert_eq!(table["rows"], 6, "{table}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not compacted and checkpointed: {table}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    node.signal(libc::SIGTERM);
    assert!(node.wait_exit(Duration::from_secs(30)).success());
}
