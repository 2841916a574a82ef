//! The lake of a running node is plain Delta Lake: the simulator sends to `nublar serve`, the
//! node's sink writes the tables, and the `deltalake` Python package (delta-rs's own, not
//! ours) reads every table back with exactly the events that were acknowledged, each once.
//!
//! Needs `python3` with `deltalake` and `pyarrow` (`python3 -m pip install deltalake pyarrow`);
//! without them the test prints why and passes, unless `CI=true`, where it fails.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::NodeProcess;

fn python_has_deltalake() -> Result<(), String> {
    let output = Command::new("python3")
        .args(["-c", "import deltalake, pyarrow"])
        .output()
        .map_err(|error| format!("python3: {error}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "python3 cannot import deltalake and pyarrow (python3 -m pip install deltalake \
             pyarrow): {}",
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

fn start(data: &Path) -> NodeProcess {
    let config = data.join("node.toml");
    std::fs::write(&config, "[lake]\ncommit_interval_ms = 200\n").unwrap();
    let stderr = data.join("stderr.txt");
    let mut command = Command::new(env!("CARGO_BIN_EXE_nublar"));
    command
        .args(["serve", "--data", data.to_str().unwrap()])
        .args(["--config", config.to_str().unwrap()])
        .args(["--http", "127.0.0.1:0", "--udp", "127.0.0.1:0"])
        .args(["--partitions", "2", "--drain-seconds", "20"])
        .stderr(std::fs::File::create(&stderr).unwrap());
    NodeProcess::spawn(command, move || {
        std::fs::read_to_string(&stderr).unwrap_or_default()
    })
}

/// Every table under `lake/park` as the `deltalake` package reads it: name, rows, distinct
/// values of the unique field, and their sum.
const READ_TABLES: &str = r#"
import json, os, sys
from deltalake import DeltaTable
import pyarrow.compute as pc
root = sys.argv[1]
out = {}
for name in sorted(os.listdir(root)):
    table = DeltaTable(os.path.join(root, name)).to_pyarrow_table()
    uid = table.column("uid")
    out[name] = {
        "rows": table.num_rows,
        "distinct": pc.count_distinct(uid).as_py(),
        "sum": pc.sum(uid).as_py(),
        "columns": table.column_names,
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
    let summary = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "{summary}");
    assert!(
        summary.contains(&format!("{events} events sent, {events} acknowledged")),
        "{summary}"
    );
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
        "{}",
        String::from_utf8_lossy(&read.stderr)
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
