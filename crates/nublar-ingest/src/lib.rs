//! The ingest gateway: InfluxDB-compatible HTTP write endpoints and UDP line
//! protocol, parsing and validating once, appending each request as one
//! batch to one partition of the `telemetry` topic through the bus, and
//! answering only once the batch has the topic's guarantee.
//!
//! What a batch holds: one record per accepted line or event, its value the
//! event in the stored layout of `nublar_model::stored` (parsed once here,
//! the timestamp always present, in nanoseconds), no key. The first record
//! carries the batch's headers: `db` (the database), `sender` (the client's
//! address; IPv4-mapped IPv6 shown as IPv4) and, when the client sent an
//! `Idempotency-Key`, the batch key `<db>/<key>`.
//!
//! The schema registry (`schema.rs`): topic `_schemas`, one partition, no
//! retention, one JSON record per column the first time a database's
//! measurement uses it, `{"db","measurement","column","kind":"tag"|"field",
//! "type"}` (`type` for fields only: `float`, `integer`, `unsigned`,
//! `boolean` or `string`); the first record for a column in log order wins.
//! The gateway rebuilds its cache from it at start-up and registers a
//! request's new columns before appending the request's batch, so every
//! stored line fits the registry. Lines that conflict with it are rejected
//! like lines that do not parse (`field_type_conflict`,
//! `column_kind_conflict`, and `too_many_columns` past the registry's bound,
//! `schema_columns_max`, `schema_bytes_max` and `schema_database_bytes_max` in
//! `IngestConfig`).
//!
//! Dead letters (`dead_letters.rs`): topic `_dead_letters`, one partition,
//! one JSON record per rejected line, `{"db","line_number","reason",
//! "message","raw","sender","received_ns"}`, appended after the request's
//! batch, bounded per request and per sender per second (the rest counted in
//! `nublar_ingest_dead_letters_dropped_total`). Requests refused before
//! parsing (401, 403, 413, …) leave none: they are only counted.

pub mod admission;
mod auth;
mod dead_letters;
mod idempotency;
mod limits;
mod metrics;
mod rate;
pub mod schema;
mod tls;
mod write;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use nublar_bus::{Bus, TopicConfig};
use serde::Deserialize;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::Semaphore;

pub use auth::{
    AccessConfig, Action, Client, Denied, ForwardedHeader, Grant, Prefix, Scope, Token,
};
pub use dead_letters::DEAD_LETTERS_TOPIC;

pub use limits::{IdempotencyConfig, IngestConfig};
pub use metrics::Metrics;
pub use schema::SCHEMAS_TOPIC;
pub use tls::{Tls, crypto_provider};
use write::{Dialect, WriteRequest};

/// The topic every accepted request lands in.
pub const TELEMETRY_TOPIC: &str = "telemetry";

/// A running gateway's shared state.
#[derive(Clone)]
pub struct Gateway {
    inner: Arc<Inner>,
}

struct Inner {
    bus: Arc<dyn Bus>,
    config: IngestConfig,
    /// Tokens and access rules: the configuration's at start, replaced whole
    /// by [`Gateway::set_access`] (a reload), never edited in place.
    access: std::sync::RwLock<Arc<AccessConfig>>,
    rates: rate::RateLimits,
    keys: idempotency::KeyIndex,
    partitions: u32,
    in_flight: Semaphore,
    draining: AtomicBool,
    /// Set while a consumer downstream (the lake sink) is too far behind: writes are refused
    /// with 503 and Retry-After, UDP datagrams dropped, with this reason.
    held_back: std::sync::RwLock<Option<String>>,
    metrics: Metrics,
    schemas: schema::SchemaRegistry,
    dead_letter_buckets: dead_letters::SenderBuckets,
    /// More Prometheus text appended to `/metrics` (the node's BFD sessions).
    extra_metrics: std::sync::RwLock<Vec<MetricsSource>>,
    /// More reasons `/ready` says no (the node's stalled consumers).
    extra_problems: std::sync::RwLock<Vec<ProblemsSource>>,
    /// The inodes of the UDP sockets served, to find the kernel's count of datagrams each
    /// dropped because its receive buffer was full.
    udp_socket_inodes: std::sync::Mutex<Vec<u64>>,
}

/// Says what else keeps the node from being ready: a part of the node the gateway does not
/// know (a stalled consumer) shows in `/ready` too.
pub type ProblemsSource = Arc<dyn Fn() -> Vec<String> + Send + Sync>;

/// Renders more lines of `/metrics`: a part of the node the gateway does not
/// know (BFD) shows its state on the same page.
pub type MetricsSource =
    Arc<dyn Fn() -> std::pin::Pin<Box<dyn Future<Output = String> + Send>> + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("a topic could not be created: {0}")]
    Topic(nublar_bus::BusError),
    #[error("the schema registry could not be read: {0}")]
    Schemas(nublar_bus::BusError),
    #[error("invalid configuration: {0}")]
    Config(String),
}

impl Gateway {
    /// Creates the telemetry, `_schemas` and `_dead_letters` topics if needed
    /// and reads the schema registry from the bus. Nothing listens yet.
    pub async fn new(bus: Arc<dyn Bus>, config: IngestConfig) -> Result<Gateway, StartError> {
        config.validate().map_err(StartError::Config)?;
        let topic = TopicConfig::with_partitions(config.partitions);
        bus.ensure_topic(TELEMETRY_TOPIC, topic)
            .await
            .map_err(StartError::Topic)?;
        let partitions = bus
            .partitions(TELEMETRY_TOPIC)
            .await
            .map_err(StartError::Topic)?;
        bus.ensure_topic(DEAD_LETTERS_TOPIC, dead_letters::topic_config())
            .await
            .map_err(StartError::Topic)?;
        let bounds = schema::Bounds {
            columns_max: config.schema_columns_max,
            bytes_max: config.schema_bytes_max,
            database_bytes_max: config.schema_database_bytes_max,
        };
        let schemas = schema::SchemaRegistry::open(bus.as_ref(), bounds)
            .await
            .map_err(StartError::Schemas)?;
        // Keys stored before a restart still answer their retries.
        let keys = idempotency::KeyIndex::new(config.idempotency.clone());
        for partition in 0..partitions {
            let remembered = bus
                .batch_keys(TELEMETRY_TOPIC, partition)
                .await
                .map_err(StartError::Topic)?;
            for remembered in remembered {
                keys.restore(
                    &remembered.key,
                    remembered.fingerprint,
                    remembered.append_ms,
                );
            }
        }
        let permits = config.in_flight_bytes_max.div_ceil(limits::PERMIT_BYTES);
        Ok(Gateway {
            inner: Arc::new(Inner {
                bus,
                access: std::sync::RwLock::new(Arc::new(config.access.clone())),
                rates: rate::RateLimits::default(),
                keys,
                partitions,
                in_flight: Semaphore::new(permits),
                draining: AtomicBool::new(false),
                held_back: std::sync::RwLock::new(None),
                metrics: Metrics::default(),
                schemas,
                dead_letter_buckets: dead_letters::SenderBuckets::new(
                    config.dead_letters_per_sender_per_second,
                ),
                extra_metrics: std::sync::RwLock::default(),
                extra_problems: std::sync::RwLock::default(),
                udp_socket_inodes: std::sync::Mutex::default(),
                config,
            }),
        })
    }

    /// The access rules in force now.
    pub fn access(&self) -> Arc<AccessConfig> {
        self.inner.access()
    }

    /// Replaces the tokens and access rules for every request that starts
    /// from now on (a reload); requests already admitted finish as they were.
    pub fn set_access(&self, access: AccessConfig) -> Result<(), String> {
        access.validate()?;
        let names: Vec<&str> = access
            .tokens
            .iter()
            .map(|token| token.name.as_str())
            .collect();
        self.inner.rates.retain(&names);
        *self.inner.access.write().unwrap() = Arc::new(access);
        Ok(())
    }

    /// Who sent a request from `peer` with `headers`, and whether they may do
    /// `action`; a refusal is counted by the caller's answer.
    pub fn authorize(
        &self,
        peer: IpAddr,
        headers: &HeaderMap,
        action: Action<'_>,
    ) -> Result<(Client, Grant), Denied> {
        let access = self.access();
        let client = access.resolve(peer, headers);
        let grant = access.authorize(&client, headers, action)?;
        Ok((client, grant))
    }

    /// Adds `source`'s lines to every `/metrics` answer.
    pub fn add_metrics(&self, source: MetricsSource) {
        self.inner.extra_metrics.write().unwrap().push(source);
    }

    /// Adds `source`'s problems to every `/ready` answer.
    pub fn add_problems(&self, source: ProblemsSource) {
        self.inner.extra_problems.write().unwrap().push(source);
    }

    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// Refuses writes with 503 and Retry-After, saying `reason`, until called with `None`:
    /// backpressure from a consumer that has fallen too far behind, so that the log does not
    /// grow without bound while it catches up.
    pub fn hold_back(&self, reason: Option<String>) {
        let mut held = self.inner.held_back.write().unwrap();
        if held.is_some() != reason.is_some() {
            match &reason {
                Some(reason) => tracing::warn!("writes held back: {reason}"),
                None => tracing::info!("writes taken again"),
            }
        }
        *held = reason;
    }

    /// From now on `/ready` says no, so that a balancer stops sending; requests
    /// already in flight still finish.
    pub fn start_draining(&self) {
        self.inner.draining.store(true, Ordering::SeqCst);
    }

    pub fn router(&self) -> Router {
        Router::new()
            .route("/api/v2/write", post(write_v2))
            .route("/api/v3/write_lp", post(write_v3))
            .route("/api/v1/events", post(write_events))
            .route("/health", get(health))
            .route("/ready", get(ready))
            .route("/metrics", get(metrics_text))
            .with_state(self.clone())
    }

    /// Serves HTTP on `listener` until `shutdown` completes, then lets the
    /// requests in flight finish. Connections are bounded in number (past
    /// the bound a new one is closed at once) and a client that is slow to
    /// send its headers is dropped.
    pub async fn serve_http(
        &self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        self.serve_http_with(listener, Router::new(), None, shutdown)
            .await
    }

    /// As [`Gateway::serve_http`], with `extra` routes served beside the
    /// gateway's own (the node's operator API), and over TLS when `tls` is given: each
    /// connection's handshake must end within the header time-out.
    pub async fn serve_http_with(
        &self,
        listener: TcpListener,
        extra: Router,
        tls: Option<Arc<Tls>>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let router = self.router().merge(extra);
        let config = &self.inner.config;
        let connections = Arc::new(Semaphore::new(config.connections_max));
        let header_timeout = std::time::Duration::from_millis(config.header_read_timeout_ms);
        let graceful = hyper_util::server::graceful::GracefulShutdown::new();
        tokio::pin!(shutdown);
        loop {
            let (stream, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        // Out of file descriptors and the like: pause rather
                        // than spin, and keep serving the open connections.
                        tracing::warn!("accepting a connection failed: {error}");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = &mut shutdown => break,
            };
            let Ok(permit) = connections.clone().try_acquire_owned() else {
                self.inner.metrics.count_refused_connection();
                drop(stream);
                continue;
            };
            let service = router.clone().layer(axum::Extension(ConnectInfo(peer)));
            let service = hyper_util::service::TowerToHyperService::new(service);
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(header_timeout)
                .max_buf_size(limits::CONNECTION_BUFFER_BYTES_MAX);
            // Watched from the start, so that a shutdown also waits for handshakes under way.
            let watcher = graceful.watcher();
            let tls = tls.clone();
            let gateway = self.clone();
            tokio::spawn(async move {
                let _permit = permit;
                match tls {
                    None => {
                        let io = hyper_util::rt::TokioIo::new(stream);
                        let _ = watcher.watch(builder.serve_connection(io, service)).await;
                    }
                    Some(tls) => {
                        let handshake = tls.acceptor().accept(stream);
                        match tokio::time::timeout(header_timeout, handshake).await {
                            Ok(Ok(stream)) => {
                                let io = hyper_util::rt::TokioIo::new(stream);
                                let _ = watcher.watch(builder.serve_connection(io, service)).await;
                            }
                            Ok(Err(error)) => {
                                gateway.inner.metrics.count_tls_handshake_failure();
                                tracing::debug!(%peer, "TLS handshake failed: {error}");
                            }
                            Err(_) => gateway.inner.metrics.count_tls_handshake_failure(),
                        }
                    }
                }
            });
        }
        graceful.shutdown().await;
        Ok(())
    }

    /// Receives line protocol datagrams into the configured UDP database
    /// until `shutdown` completes. Bad datagrams are counted, and logged at
    /// most once a second.
    pub async fn serve_udp(
        &self,
        socket: UdpSocket,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        if let Some(inode) = metrics::socket_inode(&socket) {
            self.inner.udp_socket_inodes.lock().unwrap().push(inode);
        }
        let mut buffer = vec![0u8; limits::UDP_DATAGRAM_BYTES_MAX];
        let mut last_warning: Option<std::time::Instant> = None;
        tokio::pin!(shutdown);
        loop {
            let (length, peer) = tokio::select! {
                received = socket.recv_from(&mut buffer) => received?,
                () = &mut shutdown => return Ok(()),
            };
            let sender = canonical_ip(peer.ip());
            if !self.inner.access().check_udp(sender) {
                self.inner.metrics.count_udp_drop();
                continue;
            }
            let Ok(mut held) = write::Held::reserve(&self.inner, length) else {
                self.inner.metrics.count_udp_drop();
                continue;
            };
            let request = WriteRequest {
                payload: write::Payload::LineProtocol,
                db: self.inner.config.udp_db.clone(),
                body: buffer[..length].to_vec(),
                precision: write::PrecisionChoice::Fixed(nublar_model::Precision::Ns),
                accept_partial: true,
                sender,
                idempotency_key: None,
                fingerprint: None,
                rate: None,
                replay: false,
            };
            if let Err(error) = write::handle(&self.inner, request, &mut held).await {
                self.inner.metrics.count_udp_drop();
                let now = std::time::Instant::now();
                if last_warning.is_none_or(|at| now.duration_since(at).as_secs() >= 1) {
                    tracing::warn!(%peer, "UDP datagram not stored: {}", error.message);
                    last_warning = Some(now);
                }
            }
        }
    }
}

/// IPv4-mapped IPv6 addresses (from a dual-stack socket) are IPv4 senders.
pub fn canonical_ip(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

#[derive(Deserialize)]
struct V2Query {
    bucket: Option<String>,
    #[allow(dead_code)]
    org: Option<String>,
    precision: Option<String>,
}

#[derive(Deserialize)]
struct V3Query {
    db: Option<String>,
    precision: Option<String>,
    accept_partial: Option<String>,
}

async fn write_v2(
    State(gateway): State<Gateway>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Query(query): Query<V2Query>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let dialect = Dialect::V2;
    let Some(db) = query.bucket else {
        return write::error_response(dialect, StatusCode::BAD_REQUEST, "bucket is required");
    };
    let precision = match precision_choice(dialect, query.precision.as_deref()) {
        Ok(precision) => precision,
        Err(response) => return response,
    };
    write::respond(
        &gateway.inner,
        dialect,
        db,
        precision,
        true,
        peer,
        headers,
        body,
    )
    .await
}

async fn write_v3(
    State(gateway): State<Gateway>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Query(query): Query<V3Query>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let dialect = Dialect::V3;
    let Some(db) = query.db else {
        return write::error_response(dialect, StatusCode::BAD_REQUEST, "db is required");
    };
    let precision = match precision_choice(dialect, query.precision.as_deref()) {
        Ok(precision) => precision,
        Err(response) => return response,
    };
    let accept_partial = match accept_partial_choice(dialect, query.accept_partial.as_deref()) {
        Ok(accept_partial) => accept_partial,
        Err(response) => return response,
    };
    write::respond(
        &gateway.inner,
        dialect,
        db,
        precision,
        accept_partial,
        peer,
        headers,
        body,
    )
    .await
}

/// The `precision` parameter: v2 defaults to nanoseconds and has no `auto`;
/// v3 defaults to `auto`, InfluxDB 3's guess from each timestamp's size.
// A response is the natural error of a handler helper; it is built once per
// bad request, so its size costs nothing that matters.
#[allow(clippy::result_large_err)]
fn precision_choice(
    dialect: Dialect,
    name: Option<&str>,
) -> Result<write::PrecisionChoice, Response> {
    let auto_allowed = dialect == Dialect::V3;
    match name {
        None if auto_allowed => Ok(write::PrecisionChoice::Auto),
        None => Ok(write::PrecisionChoice::Fixed(nublar_model::Precision::Ns)),
        Some("auto") if auto_allowed => Ok(write::PrecisionChoice::Auto),
        Some(name) => nublar_model::Precision::from_name(name)
            .map(write::PrecisionChoice::Fixed)
            .ok_or_else(|| {
                let expected = if auto_allowed {
                    "auto, ns, us, ms or s"
                } else {
                    "ns, us, ms or s"
                };
                let message = format!("invalid precision {name:?}: expected {expected}");
                write::error_response(dialect, StatusCode::BAD_REQUEST, &message)
            }),
    }
}

#[derive(Deserialize)]
struct EventsQuery {
    db: Option<String>,
    accept_partial: Option<String>,
}

async fn write_events(
    State(gateway): State<Gateway>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Query(query): Query<EventsQuery>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let dialect = Dialect::Events;
    let Some(db) = query.db else {
        return write::error_response(dialect, StatusCode::BAD_REQUEST, "db is required");
    };
    let accept_partial = match accept_partial_choice(dialect, query.accept_partial.as_deref()) {
        Ok(accept_partial) => accept_partial,
        Err(response) => return response,
    };
    let precision = write::PrecisionChoice::Fixed(nublar_model::Precision::Ns);
    write::respond(
        &gateway.inner,
        dialect,
        db,
        precision,
        accept_partial,
        peer,
        headers,
        body,
    )
    .await
}

/// The `accept_partial` parameter: true unless the client says false.
#[allow(clippy::result_large_err)]
fn accept_partial_choice(dialect: Dialect, value: Option<&str>) -> Result<bool, Response> {
    match value {
        None | Some("true") => Ok(true),
        Some("false") => Ok(false),
        Some(other) => {
            let message = format!("invalid accept_partial {other:?}: expected true or false");
            Err(write::error_response(
                dialect,
                StatusCode::BAD_REQUEST,
                &message,
            ))
        }
    }
}

async fn health() -> &'static str {
    "ok\n"
}

impl Inner {
    fn access(&self) -> Arc<AccessConfig> {
        self.access.read().unwrap().clone()
    }
}

/// Refuses `/metrics` and `/ready` to whom `protect_metrics` keeps them from.
#[allow(clippy::result_large_err)]
fn check_metrics(gateway: &Gateway, peer: SocketAddr, headers: &HeaderMap) -> Result<(), Response> {
    gateway
        .authorize(peer.ip(), headers, Action::Metrics)
        .map(|_| ())
        .map_err(|denied| (denied.status(), format!("{}\n", denied.message())).into_response())
}

async fn ready(
    State(gateway): State<Gateway>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    if let Err(refused) = check_metrics(&gateway, peer, &headers) {
        return refused;
    }
    let mut problems = gateway.inner.bus.problems();
    for source in gateway.inner.extra_problems.read().unwrap().iter() {
        problems.extend(source());
    }
    if gateway.inner.draining.load(Ordering::SeqCst) {
        problems.insert(0, "draining".into());
    }
    // Held-back writes get 503 anyway; saying so here lets a balancer send them elsewhere.
    if let Some(reason) = gateway.inner.held_back.read().unwrap().as_ref() {
        problems.push(format!("writes held back: {reason}"));
    }
    if problems.is_empty() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", problems.join("; ")),
        )
            .into_response()
    }
}

async fn metrics_text(
    State(gateway): State<Gateway>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    if let Err(refused) = check_metrics(&gateway, peer, &headers) {
        return refused;
    }
    let available = gateway.inner.in_flight.available_permits() * limits::PERMIT_BYTES;
    let in_flight = gateway
        .inner
        .config
        .in_flight_bytes_max
        .saturating_sub(available);
    let mut text = gateway.inner.metrics.render(in_flight);
    let held_back = u8::from(gateway.inner.held_back.read().unwrap().is_some());
    text.push_str(&format!(
        "# TYPE nublar_ingest_held_back gauge\nnublar_ingest_held_back {held_back}\n"
    ));
    let inodes = gateway.inner.udp_socket_inodes.lock().unwrap().clone();
    if let Some(dropped) = metrics::kernel_udp_drops(&inodes) {
        text.push_str(&format!(
            "# TYPE nublar_udp_kernel_dropped_datagrams_total counter\n\
             nublar_udp_kernel_dropped_datagrams_total {dropped}\n"
        ));
    }
    let sources = gateway.inner.extra_metrics.read().unwrap().clone();
    for source in sources {
        text.push_str(&source().await);
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}
