//! A node: started from its configuration, stopped in order.
//!
//! [`Node::start`] opens the data directory's log (recovering it), starts the gateway, the
//! processors and webhooks, the lake sinks and their maintenance, BFD, and binds HTTP and UDP;
//! when it returns, the node serves. [`Node::stop`] tells BFD peers AdminDown, drains the
//! listeners (readiness false, requests in flight finished within the drain time), then stops
//! the maintenance, the processors (which write a last snapshot), the webhooks and the lake
//! sinks (which commit what they buffered), and closes the log: so everything acknowledged is
//! in the log, and what the lake had read is in the lake. Each component's stop is bounded by
//! the drain time and said when it runs out; none blocks the next.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use nublar_bfd::Speaker;
use nublar_bus::Bus;
use nublar_bus_embedded::EmbeddedBus;
use nublar_ingest::Gateway;
use nublar_log::{Log, OpenOptions};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use crate::config::NodeConfig;

/// What a node is started with.
pub struct NodeOptions {
    /// The data directory: the log, the lake, the processors' state, `node.json`.
    pub data: PathBuf,
    /// The configuration, with flags and environment applied.
    pub config: NodeConfig,
    /// The file it came from, read again on [`Node::reload`] and when it changes: its
    /// `[access]` rules (and the TLS certificate's files) are applied without a restart.
    pub config_path: Option<PathBuf>,
    /// Where queries and table maintenance run, apart from the runtime that acknowledges
    /// writes.
    pub lake_work: tokio::runtime::Handle,
}

type LakeTask = JoinHandle<Result<(), nublar_lake::LakeError>>;
type ProcessorsTask = JoinHandle<Result<(), nublar_process::runner::RunnerError>>;
type WebhooksTask = JoinHandle<anyhow::Result<()>>;

/// A running node.
pub struct Node {
    log: Log,
    gateway: Gateway,
    http: SocketAddr,
    udp: SocketAddr,
    /// Where a command on this host reaches the operator API: plain HTTP, on loopback.
    operator: SocketAddr,
    bfd: Option<Arc<Speaker>>,
    node_file: PathBuf,
    drain_seconds: u64,
    reload: Arc<tokio::sync::Notify>,
    reloading: JoinHandle<()>,
    stop_http: watch::Sender<bool>,
    http_task: JoinHandle<()>,
    stop_udp: oneshot::Sender<()>,
    udp_task: JoinHandle<std::io::Result<()>>,
    stop_maintenance: watch::Sender<bool>,
    processors: Option<(
        Arc<nublar_process::runner::RunnerShared>,
        watch::Sender<bool>,
        ProcessorsTask,
    )>,
    webhooks: Option<(watch::Sender<bool>, WebhooksTask)>,
    lake: Option<(watch::Sender<bool>, LakeTask)>,
}

impl Node {
    /// Starts every component the configuration enables; the node serves when this returns.
    pub async fn start(options: NodeOptions) -> anyhow::Result<Node> {
        let node = options.config.clone();
        let ingest = node.ingest()?;
        let log_dir = options.data.join("log");
        let quota = (node.log.disk_quota_bytes > 0).then_some(node.log.disk_quota_bytes);
        let log_options = OpenOptions {
            quota_bytes: quota,
            ..OpenOptions::default()
        };
        let log = Log::open_with(&log_dir, log_options)
            .with_context(|| format!("opening the log in {}", log_dir.display()))?;
        let bus: Arc<dyn Bus> = EmbeddedBus::new(log.clone()).into_shared();
        let access = ingest.access.clone();
        let gateway = Gateway::new(bus.clone(), ingest).await?;
        // The file as it was, apart from flags: what a reload compares the file with.
        let reloading_config = (
            options.config_path.clone(),
            NodeConfig::load(options.config_path.as_deref())?,
        );
        // Where consumers stopped at a batch they cannot read, until an operator moves them on.
        let stalls = Arc::new(nublar_bus::Stalls::default());
        {
            let (problems, metrics) = (stalls.clone(), stalls.clone());
            gateway.add_problems(Arc::new(move || problems.problems()));
            gateway.add_metrics(Arc::new(move || {
                let text = metrics.prometheus();
                Box::pin(async move { text })
            }));
        }
        // After the gateway, which creates the telemetry topic they read; before the lake, whose
        // sinks read the topics the processors create.
        let runner_config = node.processors.runner(&options.data)?.map(|mut config| {
            config.stalls = stalls.clone();
            config
        });
        let live_pipeline = runner_config.as_ref().map(|config| config.pipeline.clone());
        let webhooks_config = node.processors.webhooks()?;
        let processors = start_processors(
            runner_config,
            bus.clone(),
            &gateway,
            webhooks_config.is_some(),
        )
        .await?;
        let webhooks = match webhooks_config {
            Some(webhooks) => {
                let counters = Arc::new(crate::webhooks::WebhookCounters::default());
                let metrics = counters.clone();
                gateway.add_metrics(Arc::new(move || {
                    let text = metrics.prometheus();
                    Box::pin(async move { text })
                }));
                let (stop, stopped) = tokio::sync::watch::channel(false);
                let task = tokio::spawn(crate::webhooks::run(
                    bus.clone(),
                    webhooks,
                    counters,
                    stopped,
                ));
                Some((stop, task))
            }
            None => None,
        };
        let lake = start_lake(
            &options.data,
            &node,
            bus.clone(),
            &gateway,
            processors.is_some(),
            &stalls,
        )?;
        let (http_address, udp_address) = (node.http.listen, node.udp.listen);
        let http = TcpListener::bind(http_address)
            .await
            .with_context(|| format!("binding HTTP to {http_address}"))?;
        let tls = node.http.tls()?.map(Arc::new);
        // With HTTPS, the operator commands of this host (whose client speaks plain HTTP) ask a
        // plain listener on loopback, which only this host reaches.
        let local = match &tls {
            None => None,
            Some(_) => {
                let loopback = local_address(http_address);
                Some(
                    TcpListener::bind(loopback)
                        .await
                        .with_context(|| format!("binding the local listener to {loopback}"))?,
                )
            }
        };
        let udp = UdpSocket::bind(udp_address)
            .await
            .with_context(|| format!("binding UDP to {udp_address}"))?;
        let bfd = start_bfd(&node).await?.map(Arc::new);
        let query_config = node.query.query_config()?;
        let maintenance = node.lake.maintenance()?;
        let (stop_maintenance, maintenance_stopped) = tokio::sync::watch::channel(false);
        if let Some(maintenance) = maintenance {
            options.lake_work.spawn(crate::lake_command::maintain(
                options.data.join("lake"),
                maintenance,
                maintenance_stopped,
            ));
        }
        let node_file = options.data.join(crate::log_command::NODE_FILE);
        let reachable = match &local {
            Some(local) => local.local_addr()?,
            None => reachable_address(http.local_addr()?),
        };
        let announcement = serde_json::json!({
            "pid": std::process::id(),
            "http": reachable.to_string(),
            "https": tls.as_ref().map(|_| http.local_addr().map(|address| address.to_string())).transpose()?,
        });
        std::fs::write(&node_file, announcement.to_string())
            .with_context(|| format!("writing {}", node_file.display()))?;
        let (http_bound, udp_bound) = (http.local_addr()?, udp.local_addr()?);
        warn_about_access(&access, http_bound, udp_bound);
        let reload = Arc::new(tokio::sync::Notify::new());
        let reloading = tokio::spawn(watch_configuration(
            reloading_config.0,
            reloading_config.1,
            gateway.clone(),
            tls.clone(),
            reload.clone(),
        ));
        if let Some(tls) = &tls {
            eprintln!(
                "HTTPS on {} with {}; operator commands of this host on http://{reachable}",
                http.local_addr()?,
                tls.cert_path().display()
            );
        }

        if let Some(speaker) = &bfd {
            let speaker = Arc::downgrade(speaker);
            gateway.add_metrics(Arc::new(move || {
                let speaker = speaker.clone();
                Box::pin(async move {
                    let Some(speaker) = speaker.upgrade() else {
                        return String::new();
                    };
                    let mut text = match speaker.sessions().await {
                        Ok(sessions) => crate::bfd_command::prometheus(&sessions),
                        Err(_) => String::new(),
                    };
                    if let Ok(counters) = speaker.counters().await {
                        text.push_str(&crate::bfd_command::speaker_prometheus(&counters));
                    }
                    text
                })
            }));
        }

        let (stop_http, http_stopping) = tokio::sync::watch::channel(false);
        let (stop_udp, udp_stopped) = tokio::sync::oneshot::channel::<()>();
        let http_task = {
            let gateway = gateway.clone();
            let operator = crate::operator::operator_routes(
                gateway.clone(),
                log.clone(),
                bfd.clone(),
                stalls.clone(),
            )
            .merge(crate::query_command::routes(
                crate::query_command::QueryService {
                    gateway: gateway.clone(),
                    lake_dir: options.data.join("lake"),
                    config: query_config,
                    permits: Arc::new(tokio::sync::Semaphore::new(node.query.concurrency_max)),
                    runtime: options.lake_work.clone(),
                },
            ))
            .merge(crate::processors::routes(
                crate::processors::LatestService {
                    gateway: gateway.clone(),
                    shared: processors
                        .as_ref()
                        .filter(|_| node.processors.latest.enabled)
                        .map(|(shared, _, _)| shared.clone()),
                },
            ))
            .merge(crate::processors::replay_routes(
                crate::processors::ReplayService {
                    gateway: gateway.clone(),
                    bus: bus.clone(),
                    pipeline: live_pipeline,
                },
            ))
            .merge(crate::lake_command::routes(
                crate::lake_command::LakeOperator {
                    gateway: gateway.clone(),
                    lake: options.data.join("lake"),
                    runtime: options.lake_work.clone(),
                },
            ));
            let local_task = local.map(|local| {
                let (gateway, operator) = (gateway.clone(), operator.clone());
                let mut stopped = http_stopping.clone();
                tokio::spawn(async move {
                    let stopped = async move {
                        let _ = stopped.wait_for(|stop| *stop).await;
                    };
                    gateway
                        .serve_http_with(local, operator, None, stopped)
                        .await
                })
            });
            let mut stopped = http_stopping.clone();
            let tls = tls.clone();
            let main_task = tokio::spawn(async move {
                let stopped = async move {
                    let _ = stopped.wait_for(|stop| *stop).await;
                };
                gateway.serve_http_with(http, operator, tls, stopped).await
            });
            tokio::spawn(async move {
                let _ = main_task.await;
                if let Some(local_task) = local_task {
                    let _ = local_task.await;
                }
            })
        };
        let udp_task = {
            let gateway = gateway.clone();
            tokio::spawn(async move {
                gateway
                    .serve_udp(udp, async move { udp_stopped.await.unwrap_or(()) })
                    .await
            })
        };

        Ok(Node {
            log,
            gateway,
            http: http_bound,
            udp: udp_bound,
            operator: reachable,
            bfd,
            node_file,
            drain_seconds: node.http.drain_seconds,
            reload,
            reloading,
            stop_http,
            http_task,
            stop_udp,
            udp_task,
            stop_maintenance,
            processors,
            webhooks,
            lake,
        })
    }

    /// Where the node serves HTTP (or HTTPS), as bound.
    pub fn http_address(&self) -> SocketAddr {
        self.http
    }

    /// Where the node takes UDP line protocol, as bound.
    pub fn udp_address(&self) -> SocketAddr {
        self.udp
    }

    /// Where a command on this host reaches the operator API (plain HTTP on loopback).
    pub fn operator_address(&self) -> SocketAddr {
        self.operator
    }

    /// The node's gateway: its access rules, readiness and metrics.
    pub fn gateway(&self) -> &Gateway {
        &self.gateway
    }

    /// Reads the configuration file again and applies its access rules (what SIGHUP does).
    pub fn reload(&self) {
        self.reload.notify_one();
    }

    /// Drains, then stops every component in order and closes the log.
    pub async fn stop(self) -> anyhow::Result<()> {
        let Node {
            log,
            gateway,
            bfd,
            node_file,
            reloading,
            stop_http,
            http_task,
            stop_udp,
            udp_task,
            stop_maintenance,
            processors,
            webhooks,
            lake,
            ..
        } = self;
        if let Some(speaker) = &bfd {
            announce_admin_down(speaker).await;
        }
        eprintln!("draining: readiness is false, finishing the requests in flight");
        gateway.start_draining();
        let _ = stop_udp.send(());
        let _ = stop_http.send(true);
        let drain_seconds = self.drain_seconds;
        let drained = tokio::time::timeout(Duration::from_secs(drain_seconds), async {
            let _ = http_task.await;
            let _ = udp_task.await;
        })
        .await;
        if drained.is_err() {
            eprintln!(
                "drain time of {} s passed with requests still in flight",
                drain_seconds
            );
        }
        let _ = stop_maintenance.send(true);
        if let Some((_, stop_processors, processors_task)) = processors {
            // Each partition writes a last snapshot, so the next start reads nothing again.
            let _ = stop_processors.send(true);
            match tokio::time::timeout(Duration::from_secs(drain_seconds.max(1)), processors_task)
                .await
            {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(error))) => eprintln!("processors: {error}"),
                Ok(Err(error)) => eprintln!("processors task failed: {error}"),
                Err(_) => eprintln!("processors did not write their last snapshots in time"),
            }
        }
        if let Some((stop_webhooks, webhooks_task)) = webhooks {
            // An alert not yet delivered is sent at the next start: the group has not committed it.
            let _ = stop_webhooks.send(true);
            match tokio::time::timeout(Duration::from_secs(drain_seconds.max(1)), webhooks_task)
                .await
            {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(error))) => eprintln!("webhooks: {error:#}"),
                Ok(Err(error)) => eprintln!("webhooks task failed: {error}"),
                Err(_) => eprintln!("webhooks were still delivering when the drain time ran out"),
            }
        }
        if let Some((stop_lake, lake_task)) = lake {
            // Everything acknowledged is in the log; what the sink still buffers is committed now,
            // and what it had not read yet it reads at the next start.
            let _ = stop_lake.send(true);
            match tokio::time::timeout(Duration::from_secs(drain_seconds.max(1)), lake_task).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(error))) => eprintln!("lake sink: {error}"),
                Ok(Err(error)) => eprintln!("lake sink task failed: {error}"),
                Err(_) => eprintln!("lake sink did not finish its last commit in time"),
            }
        }
        reloading.abort();
        let _ = std::fs::remove_file(&node_file);
        if let Some(speaker) = bfd {
            // The HTTP task, which held the other handle, has ended unless the drain timed out;
            // then dropping this handle stops the speaker just the same.
            if let Ok(speaker) = Arc::try_unwrap(speaker) {
                speaker.stop().await;
            }
        }
        tokio::task::spawn_blocking(move || log.close())
            .await?
            .context("closing the log")?;
        Ok(())
    }
}

/// Says at start-up what the access rules leave open, loudest where they open most.
fn warn_about_access(access: &nublar_ingest::AccessConfig, http: SocketAddr, udp: SocketAddr) {
    if access.is_unprotected() {
        eprintln!(
            "WARNING: the node is OPEN: no tokens are configured and access.protected_mode is \
             false, so anyone who can reach {http} can read every database, run operator \
             commands (including log reclaim and lake vacuum) and write, and anyone who can \
             reach {udp} can write; configure [[access.tokens]] to close it"
        );
    } else if access.is_open() {
        eprintln!(
            "WARNING: no tokens are configured: anyone who can reach {http} or {udp} can write to \
             any database; reads and operator commands are answered only to clients on this \
             host (protected mode)"
        );
    }
}

/// How often the configuration file is read to see whether it changed.
const CONFIGURATION_POLL: Duration = Duration::from_secs(1);

/// Applies the access rules of the configuration file again on SIGHUP and whenever the file's
/// contents change, for every request from then on. A file that no longer parses, or whose
/// rules are invalid, changes nothing: the reason is said and the rules in force stay.
async fn watch_configuration(
    path: Option<PathBuf>,
    at_start: NodeConfig,
    gateway: Gateway,
    tls: Option<Arc<nublar_ingest::Tls>>,
    reload: Arc<tokio::sync::Notify>,
) {
    let mut seen = path.as_deref().map(|path| std::fs::read(path).ok());
    let mut applied = at_start.clone();
    let mut poll = tokio::time::interval(CONFIGURATION_POLL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let cause = tokio::select! {
            () = reload.notified() => "SIGHUP",
            _ = poll.tick() => "the file changed",
        };
        // The certificate first: it has files of its own, watched with or without --config.
        if let Some(tls) = &tls {
            match tls.reload_if_changed() {
                Ok(false) => {}
                Ok(true) => eprintln!(
                    "{}: TLS certificate reloaded from {}; new connections use it",
                    if cause == "SIGHUP" {
                        cause
                    } else {
                        "its file changed"
                    },
                    tls.cert_path().display()
                ),
                Err(error) => {
                    tracing::error!("TLS certificate not reloaded: {error}");
                    eprintln!("TLS certificate not reloaded, the one before stays: {error}");
                }
            }
        }
        if cause != "SIGHUP" {
            let Some(path) = &path else { continue };
            let now = Some(std::fs::read(path).ok());
            if now == seen {
                continue;
            }
            seen = now;
        }
        let Some(path) = &path else {
            eprintln!("{cause}: no configuration file (--config) to read again");
            continue;
        };
        let reloaded = NodeConfig::load(Some(path)).and_then(|config| {
            let access = config.access.access()?;
            Ok((config, access))
        });
        match reloaded {
            Err(error) => {
                tracing::error!("configuration not reloaded: {error:#}");
                eprintln!(
                    "{cause}: {} not applied, the access rules before it stay: {error:#}",
                    path.display()
                );
            }
            Ok((config, access)) => {
                let tokens = access.tokens.len();
                if let Err(error) = gateway.set_access(access) {
                    eprintln!("{cause}: access rules not applied: {error}");
                    continue;
                }
                eprintln!(
                    "{cause}: access rules reloaded from {} ({tokens} tokens)",
                    path.display()
                );
                let mut rest = config.clone();
                rest.access = at_start.access.clone();
                if rest != at_start && config != applied {
                    eprintln!(
                        "{cause}: only [access] is applied without a restart; the file's other \
                         changes take effect at the next start"
                    );
                }
                applied = config;
            }
        }
    }
}

/// Starts the processors unless `[processors]` turns them all off, with their counters in
/// `/metrics`; their output topics exist when this returns.
async fn start_processors(
    config: Option<nublar_process::runner::RunnerConfig>,
    bus: Arc<dyn Bus>,
    gateway: &Gateway,
    webhooks: bool,
) -> anyhow::Result<
    Option<(
        Arc<nublar_process::runner::RunnerShared>,
        tokio::sync::watch::Sender<bool>,
        ProcessorsTask,
    )>,
> {
    let Some(config) = config else {
        return Ok(None);
    };
    let runner = nublar_process::runner::Runner::new(bus.clone(), config);
    runner.prepare().await.context("starting the processors")?;
    if webhooks {
        crate::webhooks::prepare(&bus)
            .await
            .context("starting the webhooks")?;
    }
    let shared = runner.shared();
    let metrics = shared.clone();
    let input = bus.clone();
    gateway.add_metrics(Arc::new(move || {
        let mut text = crate::processors::prometheus(&metrics);
        let positions = metrics.positions();
        let bus = input.clone();
        Box::pin(async move {
            // How far the processors are behind the telemetry: the gauge that says whether
            // they keep up.
            let mut behind = 0i64;
            for (partition, position) in positions.iter().enumerate() {
                if let Ok(range) = bus
                    .offsets(nublar_ingest::TELEMETRY_TOPIC, partition as u32)
                    .await
                {
                    behind += (range.end - position).max(0);
                }
            }
            text.push_str(&format!(
                "# TYPE nublar_processors_lag_events gauge\nnublar_processors_lag_events {behind}\n"
            ));
            text
        })
    }));
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(runner.run(stopped));
    Ok(Some((shared, stop, task)))
}

/// Starts the lake sinks when `[lake]` is enabled (the telemetry, and the dead letters), with
/// their counters in `/metrics` and the guard on the telemetry's lag.
fn start_lake(
    data: &Path,
    node: &NodeConfig,
    bus: Arc<dyn Bus>,
    gateway: &Gateway,
    processors: bool,
    stalls: &Arc<nublar_bus::Stalls>,
) -> anyhow::Result<Option<(tokio::sync::watch::Sender<bool>, LakeTask)>> {
    let (Some(mut telemetry), Some(mut dead_letters)) =
        (node.lake.sink(data)?, node.lake.dead_letters_sink(data)?)
    else {
        return Ok(None);
    };
    telemetry.stalls = stalls.clone();
    dead_letters.stalls = stalls.clone();
    let derived = crate::processors::lake_sinks(&node.processors, &telemetry);
    telemetry.topic = node.processors.telemetry_topic().into();
    let lag = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let guard = tokio::spawn(guard_lake_lag(
        bus.clone(),
        gateway.clone(),
        [&telemetry, &dead_letters]
            .into_iter()
            .chain(&derived)
            .map(|sink| (sink.topic.clone(), sink.group.clone()))
            // The processors hold the telemetry's retention too: a node whose processors
            // cannot keep up refuses writes like one whose lake cannot.
            .chain(processors.then(|| {
                (
                    nublar_ingest::TELEMETRY_TOPIC.to_owned(),
                    nublar_process::runner::GROUP.to_owned(),
                )
            }))
            .collect(),
        node.lake.lag_events_max,
        lag.clone(),
    ));
    let mut sinks = vec![
        nublar_lake::Sink::new(bus.clone(), telemetry),
        nublar_lake::Sink::new(bus.clone(), dead_letters),
    ];
    sinks.extend(
        derived
            .into_iter()
            .map(|sink| nublar_lake::Sink::new(bus.clone(), sink)),
    );
    let counters: Vec<(String, Arc<nublar_lake::SinkCounters>)> = sinks
        .iter()
        .map(|sink| (sink.topic().to_owned(), sink.counters()))
        .collect();
    gateway.add_metrics(Arc::new(move || {
        let mut text = lake_prometheus(&counters);
        text.push_str(&format!(
            "# TYPE nublar_lake_lag_events gauge\nnublar_lake_lag_events {}\n",
            lag.load(std::sync::atomic::Ordering::Relaxed)
        ));
        Box::pin(async move { text })
    }));
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let running: Vec<_> = sinks
        .into_iter()
        .map(|sink| {
            let stopped = stopped.clone();
            tokio::spawn(async move {
                let result = sink.run(stopped).await;
                // Said at once, not at shutdown: a sink that has ended leaves its topic growing
                // until the lag guard (or the disk quota) stops writes.
                if let Err(error) = &result {
                    tracing::error!(topic = sink.topic(), %error, "a lake sink stopped");
                    eprintln!("lake sink of {} stopped: {error}", sink.topic());
                }
                result
            })
        })
        .collect();
    let task = tokio::spawn(async move {
        let mut result = Ok(());
        for sink in running {
            let ended = sink.await.unwrap_or_else(|error| {
                Err(nublar_lake::LakeError::Io {
                    path: "lake sink task".into(),
                    message: error.to_string(),
                })
            });
            if result.is_ok() {
                result = ended;
            }
        }
        guard.abort();
        result
    });
    Ok(Some((stop, task)))
}

/// How often the node compares the log's end with what the lake has committed.
const LAKE_LAG_CHECK: Duration = Duration::from_millis(200);

/// Holds the gateway's writes back while the lake sinks are more than `max` records behind
/// their topics (0: never), and takes them again below 90% of it, so that a lake that cannot keep up
/// (or cannot write at all) turns into 503s instead of a log filling the disk.
async fn guard_lake_lag(
    bus: Arc<dyn Bus>,
    gateway: Gateway,
    sinks: Vec<(String, String)>,
    max: u64,
    lag: Arc<std::sync::atomic::AtomicU64>,
) {
    let mut held = false;
    loop {
        tokio::time::sleep(LAKE_LAG_CHECK).await;
        // Every sink's topic counts: each holds its topic's retention until it has committed.
        let mut behind = 0u64;
        for (topic, group) in &sinks {
            let Ok(partitions) = bus.partitions(topic).await else {
                continue;
            };
            for partition in 0..partitions {
                let (Ok(offsets), Ok(committed)) = (
                    bus.offsets(topic, partition).await,
                    bus.committed(group, topic, partition).await,
                ) else {
                    continue;
                };
                let from = committed.unwrap_or(offsets.start).max(offsets.start);
                behind += offsets.end.saturating_sub(from).max(0) as u64;
            }
        }
        lag.store(behind, std::sync::atomic::Ordering::Relaxed);
        if max == 0 {
            continue;
        }
        if !held && behind > max {
            held = true;
            gateway.hold_back(Some(format!(
                "the lake is {behind} events behind the log (lake.lag_events_max = {max})"
            )));
        } else if held && behind <= max - max / 10 {
            held = false;
            gateway.hold_back(None);
        }
    }
}

/// One of a sink's counters.
type Counter = fn(&nublar_lake::SinkCounters) -> &std::sync::atomic::AtomicU64;

fn lake_prometheus(sinks: &[(String, Arc<nublar_lake::SinkCounters>)]) -> String {
    use std::fmt::Write;
    use std::sync::atomic::Ordering::Relaxed;
    let mut out = String::new();
    let series: [(&str, Counter); 6] = [
        ("nublar_lake_rows_written_total", |c| &c.rows_written),
        ("nublar_lake_rows_skipped_total", |c| &c.rows_skipped),
        ("nublar_lake_commits_total", |c| &c.commits),
        ("nublar_lake_failed_rounds_total", |c| &c.failed_rounds),
        ("nublar_lake_values_mismatched_total", |c| {
            &c.values_mismatched
        }),
        ("nublar_lake_records_unreadable_total", |c| {
            &c.records_unreadable
        }),
    ];
    for (name, counter) in series {
        let _ = writeln!(out, "# TYPE {name} counter");
        for (topic, counters) in sinks {
            let _ = writeln!(
                out,
                "{name}{{topic=\"{topic}\"}} {}",
                counter(counters).load(Relaxed)
            );
        }
    }
    out
}

/// Longest a SIGTERM waits for the peers to hear our AdminDown.
const BFD_ADMIN_DOWN_WAIT_MAX: Duration = Duration::from_secs(5);
/// AdminDown packets each session that was Up or Init sends before the speaker stops, so that
/// one lost packet does not turn the drain into a detection timeout at the peer. The first goes
/// out at the old rate; later ones at the 1 s rate RFC 5880 requires outside Up.
const BFD_ADMIN_DOWN_PACKETS: u64 = 2;
/// How often the drain looks at the sessions' counters.
const BFD_ADMIN_DOWN_POLL: Duration = Duration::from_millis(20);

/// Binds the BFD speaker and adds the configured peers, when `[bfd]` is enabled.
async fn start_bfd(node: &NodeConfig) -> anyhow::Result<Option<Speaker>> {
    let Some(plan) = node.bfd.plan()? else {
        return Ok(None);
    };
    let speaker = Speaker::bind(plan.speaker).context("binding BFD")?;
    let multihop = if plan.multihop_ipv4.is_some() || plan.multihop_ipv6.is_some() {
        let (ipv4, ipv6) = speaker
            .listen_multihop(plan.multihop_ipv4, plan.multihop_ipv6)
            .await
            .context("binding BFD multihop")?;
        [ipv4.map(|a| a.to_string()), ipv6.map(|a| a.to_string())]
    } else {
        [None, None]
    };
    for spec in plan.sessions {
        let (local, peer) = (spec.local, spec.peer);
        speaker
            .add_session(spec)
            .await
            .with_context(|| format!("adding the BFD session {local} -> {peer}"))?;
    }
    if plan.accept.is_some() {
        speaker
            .set_accept_policy(plan.accept)
            .await
            .context("setting the BFD accept policy")?;
    }
    let [multihop_ipv4, multihop_ipv6] = multihop;
    let listening = [
        speaker.ipv4_address().map(|address| address.to_string()),
        speaker.ipv6_address().map(|address| address.to_string()),
        multihop_ipv4.map(|address| format!("{address} (multihop)")),
        multihop_ipv6.map(|address| format!("{address} (multihop)")),
    ];
    eprintln!(
        "bfd listening on {}",
        listening
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(" ")
    );
    Ok(Some(speaker))
}

/// Puts every BFD session in AdminDown and keeps the speaker running, bounded by
/// [`BFD_ADMIN_DOWN_WAIT_MAX`], for one detection time and until every session that had a peer
/// listening has sent [`BFD_ADMIN_DOWN_PACKETS`] AdminDown packets, so peers take the node's
/// going away as a drain rather than a failure.
async fn announce_admin_down(speaker: &Speaker) {
    use nublar_bfd::State;
    let started = tokio::time::Instant::now();
    let Ok(before) = speaker.sessions().await else {
        return;
    };
    // Sessions that were Down have nobody to tell (or already told them).
    let listening =
        |session: &&nublar_bfd::SessionStatus| matches!(session.state, State::Up | State::Init);
    let detection = before
        .iter()
        .filter(listening)
        .map(|session| {
            session
                .detection_time
                .unwrap_or(session.transmit_interval * 3)
        })
        .max()
        .unwrap_or_default();
    if speaker.set_admin_down_all().await.is_err() {
        return;
    }
    // Counted from here, so that only AdminDown packets count.
    let Ok(after) = speaker.sessions().await else {
        return;
    };
    let to_tell: std::collections::HashMap<_, _> = before
        .iter()
        .filter(listening)
        .filter_map(|session| {
            let now = after.iter().find(|now| now.id == session.id)?;
            Some((session.id, now.counters.packets_sent))
        })
        .collect();
    eprintln!(
        "bfd: {} sessions AdminDown, telling {} peers",
        before.len(),
        to_tell.len()
    );
    let deadline = started + BFD_ADMIN_DOWN_WAIT_MAX;
    loop {
        let Ok(now) = speaker.sessions().await else {
            return;
        };
        let everyone_told = now.iter().all(|session| match to_tell.get(&session.id) {
            Some(sent) => session.counters.packets_sent >= sent + BFD_ADMIN_DOWN_PACKETS,
            None => true,
        });
        if everyone_told && started.elapsed() >= detection {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            eprintln!("bfd: stopping before every peer was told AdminDown");
            return;
        }
        tokio::time::sleep(BFD_ADMIN_DOWN_POLL).await;
    }
}

/// The loopback address, of the family `listen` is in, where a node serving HTTPS also
/// serves this host's operator commands in plain HTTP (any free port).
fn local_address(listen: SocketAddr) -> SocketAddr {
    match listen.ip() {
        std::net::IpAddr::V4(_) => SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), 0),
        std::net::IpAddr::V6(_) => SocketAddr::new(std::net::Ipv6Addr::LOCALHOST.into(), 0),
    }
}

/// Where a local command can reach a node listening on `bound`: the
/// loopback address of the same family when it listens on all addresses.
fn reachable_address(bound: SocketAddr) -> SocketAddr {
    match bound.ip() {
        std::net::IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(std::net::Ipv6Addr::LOCALHOST.into(), bound.port())
        }
        std::net::IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), bound.port())
        }
        _ => bound,
    }
}
