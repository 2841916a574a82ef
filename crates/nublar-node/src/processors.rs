//! The processors in a node: their `[processors]` configuration, their lake tables
//! (`_agg_1m`, `_alerts`), `/metrics`, `GET /api/v1/latest` and `nublar latest`.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use nublar_ingest::{Action, Gateway};
use nublar_model::{FieldType, FieldValue};
use nublar_process::alerts::{Rule, RuleKind};
use nublar_process::dedup::DedupConfig;
use nublar_process::pipeline::Output;
use nublar_process::pipeline::{AlertsConfig, PipelineConfig};
use nublar_process::runner::{
    AGGREGATES_TOPIC, ALERTS_TOPIC, DEDUPLICATED_TOPIC, ReplayFrom, RunnerConfig, RunnerShared,
    replay,
};
use nublar_process::windows::WindowConfig;
use serde::Deserialize;

const SECOND_NS: f64 = 1e9;

/// `[processors]`: which run, and how. Every option is in `docs/nublar.example.toml`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProcessorsSection {
    pub enabled: bool,
    pub snapshot_interval_seconds: f64,
    pub tick_interval_ms: u64,
    pub dedup: DedupSection,
    pub windows: WindowsSection,
    pub alerts: AlertsSection,
    pub latest: LatestSection,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DedupSection {
    pub enabled: bool,
    pub window_seconds: f64,
    pub keys_max: usize,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WindowsSection {
    pub enabled: bool,
    pub width_seconds: f64,
    pub allowed_lateness_seconds: f64,
    pub open_aggregates_max: usize,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AlertsSection {
    pub enabled: bool,
    pub series_max: usize,
    /// The park's GeoJSON (as `nublar sim --park-out` writes it), for geofence rules; relative
    /// to the data directory.
    pub park_file: PathBuf,
    pub rules: Vec<RuleSection>,
    pub webhooks: crate::webhooks::WebhooksSection,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LatestSection {
    pub enabled: bool,
    pub series_max: usize,
}

/// One `[[processors.alerts.rules]]`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSection {
    pub name: String,
    pub measurement: String,
    /// `threshold`, `rate_of_change`, `absence` or `geofence`.
    pub kind: String,
    pub field: Option<String>,
    pub above: Option<f64>,
    pub below: Option<f64>,
    pub for_seconds: Option<f64>,
    pub per_second_max: Option<f64>,
    pub paddock_tag: Option<String>,
}

impl Default for ProcessorsSection {
    fn default() -> ProcessorsSection {
        ProcessorsSection {
            enabled: true,
            snapshot_interval_seconds: 10.0,
            tick_interval_ms: 1000,
            dedup: DedupSection::default(),
            windows: WindowsSection::default(),
            alerts: AlertsSection::default(),
            latest: LatestSection::default(),
        }
    }
}

impl Default for DedupSection {
    fn default() -> DedupSection {
        let dedup = DedupConfig::default();
        DedupSection {
            // Off unless asked: the deduplicated stream is a second copy of the telemetry.
            enabled: false,
            window_seconds: dedup.window_ns as f64 / SECOND_NS,
            keys_max: dedup.keys_max,
        }
    }
}

impl Default for WindowsSection {
    fn default() -> WindowsSection {
        let windows = WindowConfig::default();
        WindowsSection {
            enabled: true,
            width_seconds: windows.width_ns as f64 / SECOND_NS,
            allowed_lateness_seconds: windows.allowed_lateness_ns as f64 / SECOND_NS,
            open_aggregates_max: windows.open_aggregates_max,
        }
    }
}

impl Default for AlertsSection {
    fn default() -> AlertsSection {
        AlertsSection {
            enabled: true,
            series_max: 1_000_000,
            park_file: PathBuf::from("park.geojson"),
            rules: default_rules(),
            webhooks: crate::webhooks::WebhooksSection::default(),
        }
    }
}

impl Default for LatestSection {
    fn default() -> LatestSection {
        LatestSection {
            enabled: true,
            series_max: 1_000_000,
        }
    }
}

/// Rules for the park the simulator sends: a fence losing voltage (`--stage-breach`), a
/// collar outside its paddock (the same stage; needs the park file), a weather station gone
/// silent (`--stage-silence`).
fn default_rules() -> Vec<RuleSection> {
    vec![
        RuleSection {
            name: "fence_voltage_low".into(),
            measurement: "fence".into(),
            kind: "threshold".into(),
            field: Some("voltage_kv".into()),
            below: Some(5.0),
            for_seconds: Some(0.0),
            ..RuleSection::default()
        },
        RuleSection {
            name: "collar_outside_paddock".into(),
            measurement: "collar".into(),
            kind: "geofence".into(),
            paddock_tag: Some("paddock".into()),
            ..RuleSection::default()
        },
        RuleSection {
            name: "weather_station_silent".into(),
            measurement: "weather".into(),
            kind: "absence".into(),
            for_seconds: Some(30.0),
            ..RuleSection::default()
        },
    ]
}

fn seconds_ns(seconds: f64, name: &str) -> anyhow::Result<i64> {
    anyhow::ensure!(
        (0.0..1e9).contains(&seconds),
        "{name} must be between 0 and 1e9 seconds, not {seconds}"
    );
    Ok((seconds * SECOND_NS) as i64)
}

impl ProcessorsSection {
    /// The runner's configuration for a node in `data`; `None` when no processor runs. A
    /// geofence rule whose park file does not exist is left out, with a warning.
    pub fn runner(&self, data: &Path) -> anyhow::Result<Option<RunnerConfig>> {
        let pipeline = self.pipeline(data)?;
        if !self.enabled
            || (pipeline.dedup.is_none()
                && pipeline.windows.is_none()
                && pipeline.alerts.is_none()
                && pipeline.latest_series_max.is_none())
        {
            return Ok(None);
        }
        anyhow::ensure!(
            self.snapshot_interval_seconds > 0.0 && self.snapshot_interval_seconds <= 3600.0,
            "processors.snapshot_interval_seconds must be more than 0 and at most 3600"
        );
        anyhow::ensure!(
            (10..=60_000).contains(&self.tick_interval_ms),
            "processors.tick_interval_ms must be between 10 and 60000"
        );
        let mut config = RunnerConfig::new(data.join("processors"), pipeline);
        config.snapshot_interval = Duration::from_secs_f64(self.snapshot_interval_seconds);
        config.tick_interval = Duration::from_millis(self.tick_interval_ms);
        if self.dedup.enabled {
            // The lake reads the deduplicated stream instead of telemetry: start that stream
            // where the lake had got to, so it is not sent what it holds.
            config.first_start_from_group = Some("lake".into());
        }
        Ok(Some(config))
    }

    /// The alert webhooks; `None` when alerts are off or no URL is configured.
    pub fn webhooks(&self) -> anyhow::Result<Option<crate::webhooks::Webhooks>> {
        if !self.enabled || !self.alerts.enabled {
            return Ok(None);
        }
        self.alerts.webhooks.webhooks()
    }

    /// The topic the lake's telemetry sink reads: the deduplicated stream when it exists.
    pub fn telemetry_topic(&self) -> &'static str {
        if self.enabled && self.dedup.enabled {
            DEDUPLICATED_TOPIC
        } else {
            nublar_ingest::TELEMETRY_TOPIC
        }
    }

    fn pipeline(&self, data: &Path) -> anyhow::Result<PipelineConfig> {
        let dedup = if self.dedup.enabled {
            anyhow::ensure!(
                self.dedup.keys_max > 0,
                "processors.dedup.keys_max must be at least 1"
            );
            Some(DedupConfig {
                window_ns: seconds_ns(
                    self.dedup.window_seconds,
                    "processors.dedup.window_seconds",
                )?,
                keys_max: self.dedup.keys_max,
            })
        } else {
            None
        };
        let windows = if self.windows.enabled {
            let width_ns = seconds_ns(
                self.windows.width_seconds,
                "processors.windows.width_seconds",
            )?;
            anyhow::ensure!(
                width_ns > 0,
                "processors.windows.width_seconds must be more than 0"
            );
            anyhow::ensure!(
                self.windows.open_aggregates_max > 0,
                "processors.windows.open_aggregates_max must be at least 1"
            );
            Some(WindowConfig {
                width_ns,
                allowed_lateness_ns: seconds_ns(
                    self.windows.allowed_lateness_seconds,
                    "processors.windows.allowed_lateness_seconds",
                )?,
                open_aggregates_max: self.windows.open_aggregates_max,
            })
        } else {
            None
        };
        let alerts = if self.alerts.enabled {
            Some(AlertsConfig {
                rules: self.rules(data)?,
                series_max: self.alerts.series_max,
            })
        } else {
            None
        };
        Ok(PipelineConfig {
            dedup,
            windows,
            alerts,
            latest_series_max: self.latest.enabled.then_some(self.latest.series_max),
        })
    }

    fn rules(&self, data: &Path) -> anyhow::Result<Vec<Rule>> {
        let mut rules = Vec::new();
        let mut names = std::collections::HashSet::new();
        let mut paddocks: Option<Option<HashMap<String, Vec<nublar_model::geo::GeoPoint>>>> = None;
        for (index, section) in self.alerts.rules.iter().enumerate() {
            let name = &section.name;
            let at = format!("processors.alerts.rules[{index}] ({name:?})");
            anyhow::ensure!(!name.is_empty(), "{at}: name is missing");
            anyhow::ensure!(
                names.insert(name.clone()),
                "{at}: another rule has this name"
            );
            anyhow::ensure!(
                !section.measurement.is_empty(),
                "{at}: measurement is missing"
            );
            let field = || {
                section
                    .field
                    .clone()
                    .with_context(|| format!("{at}: a {} rule needs field", section.kind))
            };
            let for_ns = |default: Option<f64>| -> anyhow::Result<i64> {
                let seconds = section
                    .for_seconds
                    .or(default)
                    .with_context(|| format!("{at}: a {} rule needs for_seconds", section.kind))?;
                seconds_ns(seconds, &format!("{at}: for_seconds"))
            };
            let kind = match section.kind.as_str() {
                "threshold" => {
                    anyhow::ensure!(
                        section.above.is_some() || section.below.is_some(),
                        "{at}: a threshold rule needs above, below or both"
                    );
                    RuleKind::Threshold {
                        field: field()?,
                        above: section.above,
                        below: section.below,
                        for_ns: for_ns(Some(0.0))?,
                    }
                }
                "rate_of_change" => {
                    let per_second_max = section.per_second_max.with_context(|| {
                        format!("{at}: a rate_of_change rule needs per_second_max")
                    })?;
                    anyhow::ensure!(
                        per_second_max.is_finite() && per_second_max >= 0.0,
                        "{at}: per_second_max must be a number at least 0"
                    );
                    RuleKind::RateOfChange {
                        field: field()?,
                        per_second_max,
                    }
                }
                "absence" => {
                    let for_ns = for_ns(None)?;
                    anyhow::ensure!(for_ns > 0, "{at}: for_seconds must be more than 0");
                    RuleKind::Absence { for_ns }
                }
                "geofence" => {
                    let park = data.join(&self.alerts.park_file);
                    let known = match &paddocks {
                        Some(known) => known.clone(),
                        None => {
                            let read = read_paddocks(&park)?;
                            paddocks = Some(read.clone());
                            read
                        }
                    };
                    let Some(known) = known else {
                        eprintln!(
                            "alert rule {name:?} is off: no park file at {} (write it with `nublar sim --park-out {}` and the same --seed and --sensors as the simulator)",
                            park.display(),
                            park.display()
                        );
                        continue;
                    };
                    RuleKind::Geofence {
                        paddock_tag: section
                            .paddock_tag
                            .clone()
                            .unwrap_or_else(|| "paddock".into()),
                        paddocks: known,
                    }
                }
                other => anyhow::bail!(
                    "{at}: unknown kind {other:?}: expected threshold, rate_of_change, absence or geofence"
                ),
            };
            rules.push(Rule {
                name: name.clone(),
                measurement: section.measurement.clone(),
                kind,
            });
        }
        Ok(rules)
    }
}

/// The paddocks' fences of the park file, by name; `None` when there is no file.
fn read_paddocks(
    path: &Path,
) -> anyhow::Result<Option<HashMap<String, Vec<nublar_model::geo::GeoPoint>>>> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(error).with_context(|| format!("reading {}", path.display())),
    };
    let park = nublar_sim::Park::from_geojson(&text)
        .with_context(|| format!("reading the park in {}", path.display()))?;
    Ok(Some(
        park.paddocks()
            .iter()
            .map(|paddock| (paddock.name.clone(), paddock.fence.clone()))
            .collect(),
    ))
}

/// The lake tables of the processors' outputs, beside the telemetry's sink (whose settings
/// they share).
pub fn lake_sinks(
    section: &ProcessorsSection,
    telemetry: &nublar_lake::SinkConfig,
) -> Vec<nublar_lake::SinkConfig> {
    let mut sinks = Vec::new();
    if !section.enabled {
        return sinks;
    }
    if section.windows.enabled {
        sinks.push(nublar_lake::SinkConfig {
            topic: AGGREGATES_TOPIC.into(),
            group: "lake-agg-1m".into(),
            format: nublar_lake::RecordFormat::Json(nublar_lake::JsonTable {
                table: AGGREGATES_TOPIC.into(),
                db: "db".into(),
                time: "window_start_ns".into(),
                sender: None,
                tags: vec!["measurement".into(), "series".into(), "field".into()],
                fields: vec![
                    ("count".into(), FieldType::I64),
                    ("min".into(), FieldType::F64),
                    ("max".into(), FieldType::F64),
                    ("mean".into(), FieldType::F64),
                    ("last".into(), FieldType::F64),
                ],
            }),
            ..telemetry.clone()
        });
    }
    if section.alerts.enabled {
        sinks.push(nublar_lake::SinkConfig {
            topic: ALERTS_TOPIC.into(),
            group: "lake-alerts".into(),
            format: nublar_lake::RecordFormat::Json(nublar_lake::JsonTable {
                table: ALERTS_TOPIC.into(),
                db: "db".into(),
                time: "time_ns".into(),
                sender: None,
                tags: vec![
                    "rule".into(),
                    "measurement".into(),
                    "series".into(),
                    "state".into(),
                ],
                fields: vec![
                    ("message".into(), FieldType::Str),
                    ("value".into(), FieldType::F64),
                    ("lat".into(), FieldType::F64),
                    ("lon".into(), FieldType::F64),
                ],
            }),
            ..telemetry.clone()
        });
    }
    sinks
}

/// The processors' counters and gauges for `/metrics`.
pub fn prometheus(shared: &RunnerShared) -> String {
    let totals = shared.totals();
    let counters = totals.counters;
    let bounds = &totals.bounds;
    let mut out = String::new();
    let series: [(&str, &str, u64); 14] = [
        ("nublar_processors_events_total", "counter", counters.events),
        (
            "nublar_processors_records_unreadable_total",
            "counter",
            counters.unreadable,
        ),
        (
            "nublar_processors_duplicates_dropped_total",
            "counter",
            counters.duplicates,
        ),
        (
            "nublar_processors_late_events_total",
            "counter",
            counters.late,
        ),
        (
            "nublar_processors_aggregates_total",
            "counter",
            counters.aggregates,
        ),
        ("nublar_processors_alerts_total", "counter", counters.alerts),
        (
            "nublar_processors_snapshots_total",
            "counter",
            totals.snapshots,
        ),
        (
            "nublar_processors_failed_rounds_total",
            "counter",
            totals.failed_rounds,
        ),
        (
            "nublar_processors_open_aggregates",
            "gauge",
            totals.open_aggregates as u64,
        ),
        (
            "nublar_processors_dedup_keys",
            "gauge",
            bounds.dedup_keys as u64,
        ),
        (
            "nublar_processors_dedup_forgotten_early_total",
            "counter",
            bounds.dedup_forgotten_early,
        ),
        (
            "nublar_processors_dedup_too_old_total",
            "counter",
            bounds.dedup_too_old_to_check,
        ),
        (
            "nublar_processors_alerts_series_unwatched_total",
            "counter",
            bounds.alerts_series_unwatched,
        ),
        (
            "nublar_processors_latest_series_dropped_total",
            "counter",
            bounds.latest_series_dropped,
        ),
    ];
    for (name, kind, value) in series {
        let _ = writeln!(out, "# TYPE {name} {kind}\n{name} {value}");
    }
    out
}

/// Where a node answers latest readings.
pub const LATEST_PATH: &str = "/api/v1/latest";
/// Series in one answer at most, unless `limit` asks for fewer.
const LATEST_LIMIT_MAX: usize = 100_000;
pub const LATEST_LIMIT_DEFAULT: usize = 10_000;

#[derive(Clone)]
pub struct LatestService {
    pub gateway: Gateway,
    /// `None` when latest state is off.
    pub shared: Option<Arc<RunnerShared>>,
}

pub fn routes(service: LatestService) -> axum::Router {
    axum::Router::new()
        .route(LATEST_PATH, axum::routing::get(latest))
        .with_state(service)
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(serde_json::json!({ "error": message }))).into_response()
}

/// `?db=…&measurement=…&limit=…`; every other parameter is a tag that must match.
async fn latest(
    State(service): State<LatestService>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Query(mut parameters): Query<BTreeMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let Some(db) = parameters.remove("db").filter(|db| !db.is_empty()) else {
        return error(
            StatusCode::BAD_REQUEST,
            "missing db: the database to look in",
        );
    };
    if let Err(denied) = service
        .gateway
        .authorize(peer.ip(), &headers, Action::Read(&db))
    {
        return error(denied.status(), denied.message());
    }
    let Some(shared) = &service.shared else {
        return error(
            StatusCode::NOT_FOUND,
            "latest state is off on this node ([processors.latest] enabled = false)",
        );
    };
    let limit = match parameters
        .remove("limit")
        .map(|limit| limit.parse::<usize>())
    {
        None => LATEST_LIMIT_DEFAULT,
        Some(Ok(limit)) if (1..=LATEST_LIMIT_MAX).contains(&limit) => limit,
        Some(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("limit must be a number from 1 to {LATEST_LIMIT_MAX}"),
            );
        }
    };
    let measurement = parameters.remove("measurement").filter(|m| !m.is_empty());
    let tags: Vec<(&str, &str)> = parameters
        .iter()
        .map(|(key, value)| (key.as_str(), value.as_str()))
        .collect();
    let found = shared.latest(&db, measurement.as_deref(), &tags);
    let truncated = found.len() > limit;
    let series: Vec<serde_json::Value> = found
        .iter()
        .take(limit)
        .map(|state| {
            let fields: serde_json::Map<String, serde_json::Value> = state
                .fields
                .iter()
                .map(|(name, reading)| {
                    let value = match &reading.value {
                        FieldValue::F64(value) => serde_json::json!(value),
                        FieldValue::I64(value) => serde_json::json!(value),
                        FieldValue::U64(value) => serde_json::json!(value),
                        FieldValue::Bool(value) => serde_json::json!(value),
                        FieldValue::Str(value) => serde_json::json!(value),
                    };
                    (
                        name.clone(),
                        serde_json::json!({ "value": value, "time_ns": reading.time_ns }),
                    )
                })
                .collect();
            serde_json::json!({
                "measurement": state.measurement,
                "series": state.series,
                "tags": state.tags,
                "fields": fields,
            })
        })
        .collect();
    axum::Json(serde_json::json!({ "series": series, "truncated": truncated })).into_response()
}

/// Where a node runs `nublar replay` (admin scope).
pub const REPLAY_PATH: &str = "/api/v1/admin/replay";
/// Items one replay prints at most.
const REPLAY_ITEMS_MAX: u64 = 1_000_000;

/// What the node is asked to replay.
#[derive(Clone, Debug, serde::Serialize, Deserialize)]
pub struct ReplayRequest {
    pub processor: String,
    /// (partition or every one, offset).
    pub from_offsets: Vec<(Option<u32>, i64)>,
    pub from_time_ms: Option<i64>,
    pub limit: u64,
}

/// The outputs a processor's replay shows.
pub fn replayed_outputs(processor: &str) -> anyhow::Result<&'static [Output]> {
    Ok(match processor {
        "duplicates" => &[Output::Deduplicated],
        "windows" => &[Output::Aggregates, Output::Late],
        "alerts" => &[Output::Alerts],
        other => anyhow::bail!(
            "unknown processor {other:?}: expected duplicates, windows or alerts (latest state has no outputs to replay)"
        ),
    })
}

/// The pipeline a replay of `processor` runs: the node's, without the other processors that
/// have outputs, but with duplicates first when they are on, as the live one sees its events.
pub fn replay_pipeline(live: &PipelineConfig, processor: &str) -> anyhow::Result<PipelineConfig> {
    replayed_outputs(processor)?;
    let pipeline = PipelineConfig {
        dedup: live.dedup,
        windows: live.windows.filter(|_| processor == "windows"),
        alerts: live.alerts.clone().filter(|_| processor == "alerts"),
        latest_series_max: None,
    };
    let off = match processor {
        "duplicates" => pipeline.dedup.is_none(),
        "windows" => pipeline.windows.is_none(),
        _ => pipeline.alerts.is_none(),
    };
    anyhow::ensure!(
        !off,
        "the {processor} processor is off in this configuration"
    );
    Ok(pipeline)
}

/// Runs a replay and writes one JSON line per item: partition, output and the item as its
/// topic holds it; the last line is the totals.
pub async fn run_replay(
    bus: &Arc<dyn nublar_bus::Bus>,
    live: &PipelineConfig,
    request: &ReplayRequest,
) -> anyhow::Result<String> {
    let pipeline = replay_pipeline(live, &request.processor)?;
    let shown = replayed_outputs(&request.processor)?;
    anyhow::ensure!(
        (1..=REPLAY_ITEMS_MAX).contains(&request.limit),
        "the limit must be from 1 to {REPLAY_ITEMS_MAX}"
    );
    let from = match (request.from_time_ms, request.from_offsets.is_empty()) {
        (Some(ms), true) => ReplayFrom::Time(ms),
        (None, false) => ReplayFrom::Offsets(request.from_offsets.clone()),
        _ => anyhow::bail!("give either --from-offset (repeatable) or --from-time"),
    };
    let mut out = String::new();
    let mut cut = false;
    let totals = replay(
        bus,
        nublar_ingest::TELEMETRY_TOPIC,
        &pipeline,
        &from,
        request.limit,
        |partition, output, item| {
            // The answer is bounded in bytes as well as in items: items can be large.
            if out.len() > crate::log_command::ANSWER_BYTES_MAX {
                cut = true;
                return;
            }
            if shown.contains(&output) {
                let item: serde_json::Value =
                    serde_json::from_slice(&item).unwrap_or(serde_json::Value::Null);
                let line = serde_json::json!({
                    "partition": partition,
                    "output": output.name(),
                    "item": item,
                });
                let _ = writeln!(out, "{line}");
            }
        },
    )
    .await?;
    let _ = writeln!(
        out,
        "{}",
        serde_json::json!({
            "events_read": totals.events,
            "items": totals.items,
            "truncated": totals.truncated,
            "output_stopped_at_bytes": cut.then_some(crate::log_command::ANSWER_BYTES_MAX),
        })
    );
    Ok(out)
}

#[derive(Clone)]
pub struct ReplayService {
    pub gateway: Gateway,
    pub bus: Arc<dyn nublar_bus::Bus>,
    /// The node's pipeline; `None` when its processors are off.
    pub pipeline: Option<PipelineConfig>,
}

pub fn replay_routes(service: ReplayService) -> axum::Router {
    axum::Router::new()
        .route(REPLAY_PATH, axum::routing::post(replay_route))
        .with_state(service)
}

async fn replay_route(
    State(service): State<ReplayService>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    if let Err(refused) = crate::operator::check_admin(&service.gateway, peer, &headers) {
        return refused.into_response();
    }
    let request: ReplayRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(error) => return (StatusCode::BAD_REQUEST, error.to_string()).into_response(),
    };
    let Some(pipeline) = &service.pipeline else {
        return (StatusCode::NOT_FOUND, "the processors are off on this node").into_response();
    };
    match run_replay(&service.bus, pipeline, &request).await {
        Ok(text) => (StatusCode::OK, text).into_response(),
        Err(error) => (StatusCode::BAD_REQUEST, format!("{error:#}")).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_name_what_is_wrong_with_them() {
        let data = tempfile::tempdir().unwrap();
        let mut section = ProcessorsSection::default();
        section.alerts.rules = vec![RuleSection {
            name: "hot".into(),
            measurement: "weather".into(),
            kind: "threshold".into(),
            field: Some("temp_c".into()),
            ..RuleSection::default()
        }];
        let error = section.runner(data.path()).err().unwrap().to_string();
        assert!(error.contains("above, below or both"), "{error}");
        section.alerts.rules[0].kind = "hotness".into();
        let error = section.runner(data.path()).err().unwrap().to_string();
        assert!(error.contains("unknown kind \"hotness\""), "{error}");
    }

    #[test]
    fn the_default_rules_watch_the_simulators_stages_and_geofence_only_with_a_park_file() {
        let data = tempfile::tempdir().unwrap();
        let section = ProcessorsSection::default();
        let rules = |config: RunnerConfig| -> Vec<String> {
            config
                .pipeline
                .alerts
                .unwrap()
                .rules
                .into_iter()
                .map(|rule| rule.name)
                .collect()
        };
        let without_park = rules(section.runner(data.path()).unwrap().unwrap());
        assert_eq!(
            without_park,
            ["fence_voltage_low", "weather_station_silent"]
        );
        let park = nublar_sim::Park::generate(&nublar_sim::ParkConfig::default()).unwrap();
        std::fs::write(data.path().join("park.geojson"), park.to_geojson()).unwrap();
        let with_park = rules(section.runner(data.path()).unwrap().unwrap());
        assert_eq!(
            with_park,
            [
                "fence_voltage_low",
                "collar_outside_paddock",
                "weather_station_silent"
            ]
        );
    }
}
