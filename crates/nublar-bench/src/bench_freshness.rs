//! `nublar bench freshness`: how long after the gateway acknowledges an event a query sees it,
//! while the simulator loads the node.
//!
//! A node runs with its default settings; `nublar sim` sends the park's events to it at
//! `--rate`. Every `--probe-interval-ms` the benchmark writes one probe event (its own
//! database, so that its queries open one small table) and, from the moment the write is
//! acknowledged, asks `/api/v3/query_sql` for it every 20 ms until it is there. The time from
//! acknowledgement to the first answer that holds it is the probe's freshness.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;

use crate::node_child::{
    Connection, finish_load, metric, quantile, start_load, start_node, url_encoded,
};

#[derive(Args)]
pub struct FreshnessArgs {
    /// Where to write; a fresh folder is made inside and deleted afterwards.
    #[arg(long, default_value = ".")]
    dir: PathBuf,
    /// Events per second the simulator sends.
    #[arg(long, default_value_t = 500_000)]
    rate: u64,
    /// Seconds the simulator sends.
    #[arg(long, default_value_t = 30.0)]
    duration: f64,
    /// Time between probes.
    #[arg(long, default_value_t = 250)]
    probe_interval_ms: u64,
}

/// A probe not seen within this long counts as not visible.
const VISIBLE_WAIT_MAX: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(20);
/// Probes start once the load has run this long.
const WARM_UP: Duration = Duration::from_secs(2);

pub fn run(args: FreshnessArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.rate > 0 && args.duration > 0.0,
        "--rate and --duration must be positive"
    );
    let root = tempfile::Builder::new()
        .prefix("nublar-bench-freshness-")
        .tempdir_in(&args.dir)
        .with_context(|| format!("creating a folder in {}", args.dir.display()))?;
    println!("{}", crate::machine::machine_line());
    println!(
        "a node at its defaults; the simulator sends {} events/s for {} s; a probe every {} ms",
        args.rate, args.duration, args.probe_interval_ms
    );
    let (mut node, http) = start_node(&root.path().join("node"), &[])?;
    let summary_path = root.path().join("sim.json");
    let mut sim = start_load(http, args.rate, args.duration, &summary_path)?;
    std::thread::sleep(WARM_UP);

    let mut writer = Connection::new(http);
    let mut reader = Connection::new(http);
    let mut seen: Vec<f64> = Vec::new();
    let mut missed = 0u64;
    let mut lag_max = 0f64;
    let mut probe = 0u64;
    while sim.0.try_wait()?.is_none() {
        let next = Instant::now() + Duration::from_millis(args.probe_interval_ms);
        probe += 1;
        let line = format!("probe,run=bench id={probe}i");
        let (status, body) =
            writer.request("POST", "/api/v3/write_lp?db=freshness", line.as_bytes())?;
        anyhow::ensure!(
            status == 204,
            "the probe write got {status}: {}",
            String::from_utf8_lossy(&body)
        );
        let acknowledged = Instant::now();
        let target = format!(
            "/api/v3/query_sql?db=freshness&format=jsonl&q={}",
            url_encoded(&format!(
                "SELECT count(*) AS n FROM probe WHERE id = {probe}"
            ))
        );
        loop {
            let (status, body) = reader.request("GET", &target, b"")?;
            if status == 200 && body.starts_with(b"{\"n\":1}") {
                seen.push(acknowledged.elapsed().as_secs_f64() * 1000.0);
                break;
            }
            if acknowledged.elapsed() > VISIBLE_WAIT_MAX {
                missed += 1;
                break;
            }
            std::thread::sleep(POLL);
        }
        lag_max = lag_max.max(metric(http, "nublar_lake_lag_events")?);
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    let (acknowledged, seconds) = finish_load(sim, &summary_path)?;
    node.terminate(Duration::from_secs(60))?;
    seen.sort_by(f64::total_cmp);
    println!(
        "load: {} events acknowledged in {seconds:.1} s = {:.0} events/s; lake lag at most {} events",
        acknowledged,
        acknowledged / seconds,
        lag_max
    );
    println!(
        "freshness (acknowledged -> visible to a query) over {} probes: p50 {:.0} ms, p99 {:.0} ms, \
         max {:.0} ms; {missed} not visible within {} s",
        seen.len(),
        quantile(&seen, 0.5),
        quantile(&seen, 0.99),
        seen.last().copied().unwrap_or(0.0),
        VISIBLE_WAIT_MAX.as_secs()
    );
    Ok(())
}
