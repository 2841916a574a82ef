//! `nublar bench alerts`: how long after the gateway acknowledges an event the alert it raises
//! is out, while the simulator loads the node; and whether the whole node (gateway, log, lake
//! sinks, processors) keeps up with that load.
//!
//! The node runs with its default processors and lake, the default rules and one more:
//! `probe_high`, a threshold on the `probe` measurement. `nublar sim` sends the park's events
//! at `--rate`. Every `--probe-interval-ms` the benchmark writes one probe event of a new
//! series, which fires `probe_high` once; the node's webhook POSTs the alert to a receiver in
//! this program. The time from the probe's acknowledgement to the alert's arrival is its
//! latency: the alert has been appended to `_alerts`, read back by the webhook group and
//! sent over HTTP, so this bounds the time to the `_alerts` topic from above. Every second the
//! processors' and the lake's lag are sampled: a node that keeps up ends with both small.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;

use crate::node_child::{Connection, finish_load, metric, quantile, start_load, start_node};

#[derive(Args)]
pub struct AlertsBenchArgs {
    /// Where to write; a fresh folder is made inside and deleted afterwards.
    #[arg(long, default_value = ".")]
    dir: PathBuf,
    /// Events per second the simulator sends (0: as fast as the node acknowledges).
    #[arg(long, default_value_t = 500_000)]
    rate: u64,
    /// Seconds the simulator sends.
    #[arg(long, default_value_t = 30.0)]
    duration: f64,
    /// Time between probes.
    #[arg(long, default_value_t = 100)]
    probe_interval_ms: u64,
}

/// Probes start once the load has run this long.
const WARM_UP: Duration = Duration::from_secs(2);
/// An alert not out within this long counts as missing.
const ALERT_WAIT_MAX: Duration = Duration::from_secs(10);

const CONFIG: &str = r#"
[[processors.alerts.rules]]
name = "fence_voltage_low"
measurement = "fence"
kind = "threshold"
field = "voltage_kv"
below = 5.0

[[processors.alerts.rules]]
name = "collar_outside_paddock"
measurement = "collar"
kind = "geofence"

[[processors.alerts.rules]]
name = "weather_station_silent"
measurement = "weather"
kind = "absence"
for_seconds = 30.0

[[processors.alerts.rules]]
name = "probe_high"
measurement = "probe"
kind = "threshold"
field = "v"
above = 0.5
"#;

pub fn run(args: AlertsBenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.duration > 0.0, "--duration must be positive");
    let root = tempfile::Builder::new()
        .prefix("nublar-bench-alerts-")
        .tempdir_in(&args.dir)
        .with_context(|| format!("creating a folder in {}", args.dir.display()))?;
    println!("{}", crate::machine::machine_line());
    println!(
        "a node with its default processors and lake; the simulator sends {} events/s for {} s; \
         a probe every {} ms",
        if args.rate == 0 {
            "as many".to_owned()
        } else {
            args.rate.to_string()
        },
        args.duration,
        args.probe_interval_ms
    );
    let arrivals: Arc<Mutex<HashMap<u64, Instant>>> = Arc::default();
    let port = receive(arrivals.clone())?;
    let node_dir = root.path().join("node");
    std::fs::create_dir_all(&node_dir)?;
    let config = node_dir.join("node.toml");
    std::fs::write(
        &config,
        format!("{CONFIG}\n[processors.alerts.webhooks]\nurls = [\"http://127.0.0.1:{port}/\"]\n"),
    )?;
    let (mut node, http) = start_node(&node_dir, &["--config", config.to_str().unwrap_or("")])?;
    let summary_path = root.path().join("sim.json");
    let mut sim = start_load(http, args.rate, args.duration, &summary_path)?;
    std::thread::sleep(WARM_UP);

    let mut writer = Connection::new(http);
    let mut acknowledged_at: HashMap<u64, Instant> = HashMap::new();
    let (mut processors_lag, mut lake_lag) = (Vec::new(), Vec::new());
    let mut sampled = Instant::now();
    let mut probe = 0u64;
    while sim.0.try_wait()?.is_none() {
        let next = Instant::now() + Duration::from_millis(args.probe_interval_ms);
        probe += 1;
        let line = format!("probe,n={probe} v=1");
        let (status, body) =
            writer.request("POST", "/api/v3/write_lp?db=bench", line.as_bytes())?;
        anyhow::ensure!(
            status == 204,
            "the probe write got {status}: {}",
            String::from_utf8_lossy(&body)
        );
        acknowledged_at.insert(probe, Instant::now());
        if sampled.elapsed() >= Duration::from_secs(1) {
            sampled = Instant::now();
            processors_lag.push(metric(http, "nublar_processors_lag_events")?);
            lake_lag.push(metric(http, "nublar_lake_lag_events")?);
        }
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    let (acknowledged, seconds) = finish_load(sim, &summary_path)?;
    // The last probes' alerts, and the lags once the load has stopped.
    std::thread::sleep(Duration::from_secs(1));
    let end_lags = (
        metric(http, "nublar_processors_lag_events")?,
        metric(http, "nublar_lake_lag_events")?,
    );
    let deadline = Instant::now() + ALERT_WAIT_MAX;
    while arrivals.lock().expect("arrivals").len() < acknowledged_at.len()
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    node.terminate(Duration::from_secs(60))?;
    let arrivals = arrivals.lock().expect("arrivals");
    let mut latencies: Vec<f64> = acknowledged_at
        .iter()
        .filter_map(|(probe, acknowledged)| {
            let arrived = arrivals.get(probe)?;
            // An alert can be out before the probe's answer has come back.
            Some(
                arrived
                    .saturating_duration_since(*acknowledged)
                    .as_secs_f64()
                    * 1000.0,
            )
        })
        .collect();
    latencies.sort_by(f64::total_cmp);
    let missing = acknowledged_at.len() - latencies.len();
    let max = |lags: &[f64]| lags.iter().copied().fold(0.0, f64::max);
    println!(
        "load: {acknowledged} events acknowledged in {seconds:.1} s = {:.0} events/s",
        acknowledged / seconds
    );
    println!(
        "lag during the load (sampled every second): processors at most {:.0} events, lake at most \
         {:.0}; 1 s after it: processors {:.0}, lake {:.0}",
        max(&processors_lag),
        max(&lake_lag),
        end_lags.0,
        end_lags.1
    );
    println!(
        "alert latency (acknowledged -> alert at the webhook) over {} probes: p50 {:.0} ms, \
         p99 {:.0} ms, max {:.0} ms; {missing} not out within {} s",
        latencies.len(),
        quantile(&latencies, 0.5),
        quantile(&latencies, 0.99),
        latencies.last().copied().unwrap_or(0.0),
        ALERT_WAIT_MAX.as_secs()
    );
    Ok(())
}

/// A webhook receiver on loopback that notes when each probe's alert arrived; its port.
fn receive(arrivals: Arc<Mutex<HashMap<u64, Instant>>>) -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let Ok(clone) = stream.try_clone() else {
                continue;
            };
            let mut reader = BufReader::new(clone);
            let mut length = 0usize;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = value.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; length];
            let _ = reader.read_exact(&mut body);
            let arrived = Instant::now();
            let _ = stream.write_all(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n");
            let Ok(alert) = serde_json::from_slice::<serde_json::Value>(&body) else {
                continue;
            };
            let probe = alert["series"]
                .as_str()
                .and_then(|series| series.strip_prefix("n="))
                .and_then(|n| n.parse::<u64>().ok());
            if let (Some(probe), true) = (probe, alert["rule"] == "probe_high") {
                arrivals
                    .lock()
                    .expect("arrivals")
                    .entry(probe)
                    .or_insert(arrived);
            }
        }
    });
    Ok(port)
}
