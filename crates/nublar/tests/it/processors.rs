//! The processors in a running node: the default rules raise the simulator's staged breach
//! and silence, each once, with the node killed with SIGKILL and restarted during the run;
//! aggregates and alerts land in the lake; latest readings over the API and `nublar latest`.

use crate::common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{NodeProcess, free_port, nublar_ok, start_node};

/// Fast ticks, snapshots far apart (so a restart reads seconds again), two-second windows, the default fence rule and absence after
/// 5 s. (A breached collar takes up to minutes of simulated time to reach its fence: its
/// geofence has a test of its own, below.)
const CONFIG: &str = r#"
[lake]
commit_interval_ms = 200

[processors]
snapshot_interval_seconds = 5.0
tick_interval_ms = 100

[processors.windows]
width_seconds = 2.0
allowed_lateness_seconds = 1.0

[[processors.alerts.rules]]
name = "fence_voltage_low"
measurement = "fence"
kind = "threshold"
field = "voltage_kv"
below = 5.0

[[processors.alerts.rules]]
name = "weather_station_silent"
measurement = "weather"
kind = "absence"
for_seconds = 5.0
"#;

/// (rule, series, state, rows) of the `_alerts` table.
fn alert_rows(dir: &str) -> Vec<(String, String, String, u64)> {
    let csv = nublar_ok(
        dir,
        &[
            "query",
            "--format",
            "csv",
            "SELECT rule, series, state, count(*) AS n FROM _alerts \
             GROUP BY rule, series, state ORDER BY rule, series, state",
        ],
    );
    csv.lines()
        .skip(1)
        .map(|line| {
            // The series holds commas: rule first, then the series, then the last two.
            let (rule, rest) = line.split_once(',').unwrap();
            let (rest, n) = rest.rsplit_once(',').unwrap();
            let (series, state) = rest.rsplit_once(',').unwrap();
            (
                rule.to_owned(),
                series.trim_matches('"').to_owned(),
                state.to_owned(),
                n.parse().unwrap(),
            )
        })
        .collect()
}

#[test]
fn the_staged_breach_and_silence_raise_one_alert_each_across_sigkills() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().to_str().unwrap();
    let sim_args = ["--sensors", "300", "--seed", "7"];
    let http = format!("127.0.0.1:{}", free_port());
    let mut node = start_node(data.path(), CONFIG, &http);
    let sim = Command::new(env!("CARGO_BIN_EXE_nublar"))
        .arg("sim")
        .args(sim_args)
        .args(["--target", &format!("http://{http}")])
        .args(["--rate", "3000", "--duration", "20"])
        .args(["--stage-breach", "2", "--stage-silence", "2"])
        .args([
            "--batch",
            "300",
            "--concurrency",
            "2",
            "--http-timeout",
            "3",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64;
    println!("kill schedule seed {seed}");
    let mut state = seed | 1;
    for kill in 0..3 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let wait = Duration::from_millis(1000 + state % 1500);
        std::thread::sleep(wait);
        println!("kill {kill} after {wait:?}");
        node.signal(libc::SIGKILL);
        node.wait_exit(Duration::from_secs(10));
        node = start_node(data.path(), CONFIG, &http);
    }
    // Latest readings while the simulator still sends: the silenced station is among the stations, and
    // the answer through the command line is the API's.
    let started = Instant::now();
    let weather = loop {
        let (status, body) = common::request(
            node.http,
            "GET",
            "/api/v1/latest?db=park&measurement=weather",
            &[],
            b"",
        );
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        let answer: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let series = answer["series"].as_array().unwrap().clone();
        if !series.is_empty() || started.elapsed() > Duration::from_secs(20) {
            break series;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        !weather.is_empty(),
        "no weather station in the latest state"
    );
    let station = weather[0]["tags"]["station"].as_str().unwrap().to_owned();
    assert!(weather[0]["fields"]["temp_c"]["value"].is_number());
    let table = nublar_ok(
        dir,
        &[
            "latest",
            "--measurement",
            "weather",
            "--tag",
            &format!("station={station}"),
        ],
    );
    assert!(table.contains(&format!("station={station}")), "{table}");
    assert!(table.contains("temp_c"), "{table}");
    let (status, _) = common::request(node.http, "GET", "/api/v1/latest", &[], b"");
    assert_eq!(status, 400, "db is required");

    // A replay through the running node recomputes the fence alert from the log's start and
    // writes nothing.
    let replayed = nublar_ok(
        dir,
        &["replay", "--processor", "alerts", "--from-offset", "0"],
    );
    let fence: Vec<&str> = replayed
        .lines()
        .filter(|line| line.contains("fence_voltage_low"))
        .collect();
    assert_eq!(fence.len(), 1, "{replayed}");
    assert!(fence[0].contains("\"state\":\"firing\""), "{replayed}");
    assert!(
        replayed
            .lines()
            .last()
            .unwrap()
            .contains("\"truncated\":false")
    );

    // Stopped as soon as the simulator ends, before its end looks like every series falling
    // silent; the node drains, the processors write their last snapshots, the lake commits.
    let output = sim.wait_with_output().unwrap();
    let summary = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{summary}");
    stop(node);
    let rows = alert_rows(dir);
    let firing = |rule: &str| -> Vec<&(String, String, String, u64)> {
        rows.iter()
            .filter(|(name, _, state, _)| name == rule && state == "firing")
            .collect()
    };
    for rule in ["fence_voltage_low", "weather_station_silent"] {
        let fired = firing(rule);
        assert_eq!(fired.len(), 1, "one series fires {rule}: {rows:?}");
        assert_eq!(fired[0].3, 1, "{rule} fires once: {rows:?}");
    }
    assert!(
        rows.iter().all(|(_, _, state, _)| state == "firing"),
        "nothing staged comes back: {rows:?}"
    );

    // One-minute (here two-second) aggregates of every numeric field, once per window.
    let csv = nublar_ok(
        dir,
        &[
            "query",
            "--format",
            "csv",
            "SELECT count(*) AS rows, count(DISTINCT concat(CAST(time AS VARCHAR), measurement, series, field)) AS distinct_keys, \
             sum(\"count\") AS events FROM _agg_1m WHERE measurement = 'weather' AND field = 'temp_c'",
        ],
    );
    let values: Vec<u64> = csv
        .lines()
        .nth(1)
        .unwrap()
        .split(',')
        .map(|value| value.parse().unwrap())
        .collect();
    assert!(values[0] > 0, "{csv}");
    assert_eq!(
        values[0], values[1],
        "each window, series and field once: {csv}"
    );
}

#[test]
fn a_collar_that_leaves_its_paddock_raises_one_geofence_alert_with_its_position() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().to_str().unwrap();
    let sim = |extra: &[&str]| {
        let output = Command::new(env!("CARGO_BIN_EXE_nublar"))
            .arg("sim")
            .args(["--sensors", "60", "--seed", "3", "--rate", "300"])
            .args(extra)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    };
    // The park the node knows, and six simulated minutes written at once: the breach at 5 s,
    // the animal out well within them.
    let park = data.path().join("park.geojson");
    sim(&["--park-out", park.to_str().unwrap()]);
    let lines = data.path().join("park.lp");
    sim(&[
        "--events",
        "108000",
        "--stage-breach",
        "5",
        "--out",
        lines.to_str().unwrap(),
    ]);
    let config = r#"
[lake]
commit_interval_ms = 200

[[processors.alerts.rules]]
name = "collar_outside_paddock"
measurement = "collar"
kind = "geofence"
"#;
    let node = start_node(data.path(), config, "127.0.0.1:0");
    let text = std::fs::read_to_string(&lines).unwrap();
    let all: Vec<&str> = text.lines().collect();
    for chunk in all.chunks(4000) {
        write_park(&node, &chunk.join("\n"));
    }
    metrics_until(&node, Duration::from_secs(60), |metrics| {
        let events = metrics
            .lines()
            .find_map(|line| line.strip_prefix("nublar_processors_events_total "))
            .and_then(|value| value.parse::<usize>().ok());
        events == Some(all.len())
    });
    stop(node);
    let csv = nublar_ok(
        dir,
        &[
            "query",
            "--format",
            "csv",
            "SELECT state, series, lat, lon, message FROM _alerts WHERE rule = 'collar_outside_paddock'",
        ],
    );
    let rows: Vec<&str> = csv.lines().skip(1).collect();
    assert_eq!(rows.len(), 1, "one breach, fired once, never back: {csv}");

    // With the node stopped, a replay reads the log itself (the rules from the same file) and
    // finds the same breach; windows replayed from a time give aggregates.
    let config_file = data.path().join("node.toml");
    let config_file = config_file.to_str().unwrap();
    let replayed = nublar_ok(
        dir,
        &[
            "replay",
            "--processor",
            "alerts",
            "--from-time",
            "0",
            "--config",
            config_file,
        ],
    );
    let breaches: Vec<&str> = replayed
        .lines()
        .filter(|line| line.contains("collar_outside_paddock"))
        .collect();
    assert_eq!(breaches.len(), 1, "{replayed}");
    assert!(breaches[0].contains("\"lat\":"), "{replayed}");
    let windows = nublar_ok(
        dir,
        &[
            "replay",
            "--processor",
            "windows",
            "--from-offset",
            "1:0",
            "--limit",
            "3",
            "--config",
            config_file,
        ],
    );
    assert_eq!(
        windows.lines().count(),
        4,
        "three items and the totals: {windows}"
    );
    assert!(
        windows
            .lines()
            .all(|line| !line.contains("\"partition\":0")),
        "{windows}"
    );
    assert!(
        windows
            .lines()
            .last()
            .unwrap()
            .contains("\"truncated\":true"),
        "{windows}"
    );
    assert!(rows[0].starts_with("firing,"), "{csv}");
    for wanted in ["animal=", "species=", "paddock=", "containment breach"] {
        assert!(rows[0].contains(wanted), "{wanted} in {csv}");
    }
}

/// Writes line protocol with nanosecond times to the `park` database.
fn write_park(node: &NodeProcess, lines: &str) {
    let (status, body) = common::request(
        node.http,
        "POST",
        "/api/v3/write_lp?db=park&precision=ns",
        &[],
        lines.as_bytes(),
    );
    assert_eq!(status, 204, "{}", String::from_utf8_lossy(&body));
}

/// The node's `/metrics` once `done` holds of it; fails with the last answer after `limit`.
fn metrics_until(node: &NodeProcess, limit: Duration, done: impl Fn(&str) -> bool) -> String {
    let started = Instant::now();
    loop {
        let (_, metrics) = common::request(node.http, "GET", "/metrics", &[], b"");
        let metrics = String::from_utf8_lossy(&metrics).into_owned();
        if done(&metrics) {
            return metrics;
        }
        assert!(started.elapsed() < limit, "not within {limit:?}: {metrics}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Stops a node as an operator does, and requires a clean exit.
fn stop(mut node: NodeProcess) {
    node.signal(libc::SIGTERM);
    assert!(node.wait_exit(Duration::from_secs(30)).success());
}

/// A webhook receiver on loopback: answers 500 to the first `failures` requests, then 204;
/// keeps each request's `Nublar-Alert-Id` and body.
/// (Nublar-Alert-Id, body) of each request a receiver answered with 204.
type Received = std::sync::Arc<std::sync::Mutex<Vec<(String, String)>>>;

fn receiver(failures: usize) -> (u16, Received) {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let kept = received.clone();
    std::thread::spawn(move || {
        let mut answered = 0;
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let (mut length, mut id) = (0usize, String::new());
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                let lower = line.to_ascii_lowercase();
                if let Some(value) = lower.strip_prefix("content-length:") {
                    length = value.trim().parse().unwrap_or(0);
                }
                if lower.starts_with("nublar-alert-id:") {
                    id = line.split_once(':').unwrap().1.trim().to_owned();
                }
            }
            let mut body = vec![0; length];
            let _ = reader.read_exact(&mut body);
            answered += 1;
            let status = if answered <= failures {
                "500 Internal Server Error"
            } else {
                kept.lock()
                    .unwrap()
                    .push((id, String::from_utf8_lossy(&body).into_owned()));
                "204 No Content"
            };
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
        }
    });
    (port, received)
}

#[test]
fn alerts_reach_webhooks_through_failures_and_a_dead_receiver_becomes_a_dead_letter() {
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().to_str().unwrap();
    let (port, received) = receiver(2);
    let closed = free_port();
    let config = format!(
        r#"
[lake]
commit_interval_ms = 200

[[processors.alerts.rules]]
name = "fence_voltage_low"
measurement = "fence"
kind = "threshold"
field = "voltage_kv"
below = 5.0

[processors.alerts.webhooks]
urls = ["http://127.0.0.1:{port}/hooks", "http://127.0.0.1:{closed}/"]
tries = 3
backoff_first_ms = 50
backoff_max_ms = 100
timeout_ms = 1000
"#
    );
    let node = start_node(data.path(), &config, "127.0.0.1:0");
    let lines = "fence,paddock=p1,segment=p1/1 voltage_kv=9.1 1000000000\n\
                 fence,paddock=p1,segment=p1/1 voltage_kv=0.1 2000000000\n";
    write_park(&node, lines);
    let metrics = metrics_until(&node, Duration::from_secs(30), |metrics| {
        metrics.contains("nublar_webhook_dead_letters_total 1")
    });
    assert!(
        metrics.contains("nublar_webhook_deliveries_total 1"),
        "{metrics}"
    );
    // Two 500s from the receiver, two more failed tries to the closed port.
    assert!(
        metrics.contains("nublar_webhook_retries_total 4"),
        "{metrics}"
    );
    let got = received.lock().unwrap().clone();
    assert_eq!(got.len(), 1, "delivered once: {got:?}");
    assert!(got[0].0.starts_with("_alerts/"), "{got:?}");
    let alert: serde_json::Value = serde_json::from_str(&got[0].1).unwrap();
    assert_eq!(alert["rule"], "fence_voltage_low");
    assert_eq!(alert["state"], "firing");
    assert_eq!(alert["value"], 0.1);
    stop(node);
    let csv = nublar_ok(
        dir,
        &[
            "query",
            "--format",
            "csv",
            "SELECT reason, message FROM _dead_letters",
        ],
    );
    assert_eq!(csv.lines().count(), 2, "{csv}");
    assert!(
        csv.contains("webhook_failed")
            && csv.contains(&format!("127.0.0.1:{closed}/ after 3 tries")),
        "{csv}"
    );
}

/// Alerts raised at a node's first start with webhooks, from telemetry already in the log,
/// are sent: the webhooks' group takes its place before the processors raise anything.
#[test]
fn alerts_from_a_backlog_reach_webhooks_at_their_first_start() {
    let data = tempfile::tempdir().unwrap();
    let rule = r#"
[[processors.alerts.rules]]
name = "fence_voltage_low"
measurement = "fence"
kind = "threshold"
field = "voltage_kv"
below = 5.0
"#;
    let node = start_node(
        data.path(),
        &format!("[lake]\nenabled = false\n\n[processors]\nenabled = false\n{rule}"),
        "127.0.0.1:0",
    );
    let lines = "fence,paddock=p1,segment=p1/1 voltage_kv=9.1 1000000000\n\
                 fence,paddock=p1,segment=p1/1 voltage_kv=0.1 2000000000\n";
    write_park(&node, lines);
    stop(node);

    let (port, received) = receiver(0);
    let config = format!(
        "[lake]\nenabled = false\n{rule}\n[processors.alerts.webhooks]\nurls = [\"http://127.0.0.1:{port}/\"]\n"
    );
    let node = start_node(data.path(), &config, "127.0.0.1:0");
    let started = Instant::now();
    while received.lock().unwrap().is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the backlog's alert never reached the webhook"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let got = received.lock().unwrap().clone();
    let alert: serde_json::Value = serde_json::from_str(&got[0].1).unwrap();
    assert_eq!(
        (alert["rule"].as_str(), alert["value"].as_f64()),
        (Some("fence_voltage_low"), Some(0.1))
    );
    stop(node);
}

/// Each memory bound says in /metrics what it left out, so an operator sees one set too low.
#[test]
fn what_the_memory_bounds_leave_out_is_counted() {
    let data = tempfile::tempdir().unwrap();
    let config = r#"
[lake]
enabled = false

[processors.dedup]
enabled = true
window_seconds = 1.0
keys_max = 1

[processors.latest]
series_max = 1

[processors.alerts]
series_max = 1

[[processors.alerts.rules]]
name = "fence_voltage_low"
measurement = "fence"
kind = "threshold"
field = "voltage_kv"
below = 5.0
"#;
    let node = start_node(data.path(), config, "127.0.0.1:0");
    // Two events of one series within the window, then a second series: with one digest
    // kept, each new one forgets the last while the window still covers it; the second
    // series is beyond latest state's and the rule's one series; the last event is older
    // than the window.
    let lines = "fence,segment=a voltage_kv=9 20000000000\n\
                 fence,segment=a voltage_kv=8 20500000000\n\
                 fence,segment=b voltage_kv=9 20600000000\n\
                 fence,segment=a voltage_kv=7 10000000000\n";
    write_park(&node, lines);
    let wanted = [
        "nublar_processors_events_total 4",
        "nublar_processors_dedup_keys 1",
        "nublar_processors_dedup_forgotten_early_total 2",
        "nublar_processors_dedup_too_old_total 1",
        "nublar_processors_alerts_series_unwatched_total 1",
        "nublar_processors_latest_series_dropped_total 1",
    ];
    metrics_until(&node, Duration::from_secs(30), |metrics| {
        wanted
            .iter()
            .all(|line| metrics.lines().any(|l| l == *line))
    });
    stop(node);
}
