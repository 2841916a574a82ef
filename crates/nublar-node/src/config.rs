//! The node's configuration: defaults, then a TOML file, then `NUBLAR_*`
//! environment variables, then flags, each overriding the one before.
//!
//! `docs/nublar.example.toml` lists every option with its default; a test
//! checks that it parses to exactly the defaults, so it cannot drift.

use std::net::{IpAddr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::path::Path;
#[cfg(test)]
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use nublar_bfd::{
    AcceptPolicy, AuthenticationMode, Multihop, Parameters, SessionSpec, Sha1Key, SimplePassword,
    SpeakerConfig,
};
use nublar_ingest::{AccessConfig, IngestConfig, Prefix, Scope, Token};
use serde::Deserialize;

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    pub http: HttpSection,
    pub udp: UdpSection,
    pub log: LogSection,
    pub access: AccessSection,
    pub idempotency: IdempotencySection,
    pub bfd: BfdSection,
    pub dead_letters: DeadLettersSection,
    pub schema: SchemaSection,
    pub lake: LakeSection,
    pub query: QuerySection,
    pub processors: crate::processors::ProcessorsSection,
}

/// Bounds on SQL queries, over the node's API and from `nublar query`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QuerySection {
    pub time_limit_seconds: f64,
    pub result_bytes_max: usize,
    pub memory_bytes_max: usize,
    pub concurrency_max: usize,
}

impl Default for QuerySection {
    fn default() -> QuerySection {
        let query = nublar_lake::query::QueryConfig::default();
        QuerySection {
            time_limit_seconds: query.time_limit.as_secs_f64(),
            result_bytes_max: query.result_bytes_max,
            memory_bytes_max: query.memory_bytes_max,
            concurrency_max: 4,
        }
    }
}

impl QuerySection {
    pub fn query_config(&self) -> anyhow::Result<nublar_lake::query::QueryConfig> {
        anyhow::ensure!(
            self.time_limit_seconds > 0.0 && self.time_limit_seconds.is_finite(),
            "query.time_limit_seconds must be more than 0, not {}",
            self.time_limit_seconds
        );
        anyhow::ensure!(
            self.result_bytes_max > 0,
            "query.result_bytes_max must be at least 1"
        );
        anyhow::ensure!(
            self.memory_bytes_max > 0,
            "query.memory_bytes_max must be at least 1"
        );
        anyhow::ensure!(
            self.concurrency_max > 0,
            "query.concurrency_max must be at least 1"
        );
        Ok(nublar_lake::query::QueryConfig {
            time_limit: Duration::from_secs_f64(self.time_limit_seconds),
            result_bytes_max: self.result_bytes_max,
            memory_bytes_max: self.memory_bytes_max,
        })
    }
}

/// The lake sink: the telemetry topic into Delta tables under `<data>/lake`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LakeSection {
    pub enabled: bool,
    pub commit_interval_ms: u64,
    pub rows_max: usize,
    pub bytes_max: usize,
    pub zstd_level: i32,
    pub maintenance_interval_seconds: u64,
    pub optimize_target_bytes: u64,
    pub vacuum_retention_hours: u64,
    pub lag_events_max: u64,
}

/// What the node's background maintenance does, and how often.
#[derive(Clone, Debug)]
pub struct Maintenance {
    pub interval: Duration,
    pub optimize_target_bytes: u64,
    pub zstd_level: i32,
    pub vacuum_retention: Duration,
}

impl Default for LakeSection {
    fn default() -> LakeSection {
        let sink = nublar_lake::SinkConfig::new(std::path::PathBuf::new());
        LakeSection {
            enabled: true,
            commit_interval_ms: sink.commit_interval.as_millis() as u64,
            rows_max: sink.rows_max,
            bytes_max: sink.bytes_max,
            zstd_level: sink.zstd_level,
            maintenance_interval_seconds: 300,
            optimize_target_bytes: 100 << 20,
            vacuum_retention_hours: 168,
            lag_events_max: 20_000_000,
        }
    }
}

impl LakeSection {
    /// The sink's configuration for a node whose data lives in `data`; `None` when off.
    pub fn sink(&self, data: &Path) -> anyhow::Result<Option<nublar_lake::SinkConfig>> {
        if !self.enabled {
            return Ok(None);
        }
        anyhow::ensure!(
            self.commit_interval_ms > 0,
            "lake.commit_interval_ms must be at least 1"
        );
        anyhow::ensure!(self.rows_max > 0, "lake.rows_max must be at least 1");
        anyhow::ensure!(
            (1..=22).contains(&self.zstd_level),
            "lake.zstd_level must be 1 to 22, not {}",
            self.zstd_level
        );
        Ok(Some(nublar_lake::SinkConfig {
            commit_interval: Duration::from_millis(self.commit_interval_ms),
            rows_max: self.rows_max,
            bytes_max: self.bytes_max,
            zstd_level: self.zstd_level,
            ..nublar_lake::SinkConfig::new(data.join("lake"))
        }))
    }

    /// The sink of the gateway's dead letters into a `_dead_letters` table per database
    /// (group `lake-dead-letters`), like the telemetry's; `None` when the lake is off.
    pub fn dead_letters_sink(
        &self,
        data: &Path,
    ) -> anyhow::Result<Option<nublar_lake::SinkConfig>> {
        Ok(self.sink(data)?.map(|telemetry| nublar_lake::SinkConfig {
            topic: nublar_ingest::DEAD_LETTERS_TOPIC.into(),
            group: "lake-dead-letters".into(),
            format: nublar_lake::RecordFormat::Json(nublar_lake::JsonTable {
                table: nublar_ingest::DEAD_LETTERS_TOPIC.into(),
                db: "db".into(),
                time: "received_ns".into(),
                sender: Some("sender".into()),
                tags: vec!["reason".into()],
                fields: vec![
                    ("line_number".into(), nublar_model::FieldType::I64),
                    ("message".into(), nublar_model::FieldType::Str),
                    ("raw".into(), nublar_model::FieldType::Str),
                ],
            }),
            ..telemetry
        }))
    }

    /// The background maintenance; `None` when the lake or its maintenance is off.
    pub fn maintenance(&self) -> anyhow::Result<Option<Maintenance>> {
        if !self.enabled || self.maintenance_interval_seconds == 0 {
            return Ok(None);
        }
        let vacuum_retention =
            Duration::from_secs(self.vacuum_retention_hours.saturating_mul(3600));
        anyhow::ensure!(
            vacuum_retention >= nublar_lake::maintenance::VACUUM_RETENTION_MIN,
            "lake.vacuum_retention_hours must be at least {}",
            nublar_lake::maintenance::VACUUM_RETENTION_MIN.as_secs() / 3600
        );
        anyhow::ensure!(
            self.optimize_target_bytes > 0,
            "lake.optimize_target_bytes must be at least 1"
        );
        Ok(Some(Maintenance {
            interval: Duration::from_secs(self.maintenance_interval_seconds),
            optimize_target_bytes: self.optimize_target_bytes,
            zstd_level: self.zstd_level,
            vacuum_retention,
        }))
    }
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeadLettersSection {
    pub per_request_max: usize,
    pub per_sender_per_second: usize,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SchemaSection {
    pub columns_max: usize,
    pub bytes_max: usize,
    pub database_bytes_max: usize,
}

impl Default for DeadLettersSection {
    fn default() -> DeadLettersSection {
        let ingest = IngestConfig::default();
        DeadLettersSection {
            per_request_max: ingest.dead_letters_per_request_max,
            per_sender_per_second: ingest.dead_letters_per_sender_per_second,
        }
    }
}

impl Default for SchemaSection {
    fn default() -> SchemaSection {
        let ingest = IngestConfig::default();
        SchemaSection {
            columns_max: ingest.schema_columns_max,
            bytes_max: ingest.schema_bytes_max,
            database_bytes_max: ingest.schema_database_bytes_max,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpSection {
    pub listen: SocketAddr,
    pub body_bytes_max: usize,
    pub decompressed_bytes_max: usize,
    pub in_flight_bytes_max: usize,
    pub connections_max: usize,
    pub header_read_timeout_ms: u64,
    pub body_read_timeout_ms: u64,
    pub drain_seconds: u64,
    /// PEM certificate chain for HTTPS on `listen`; empty: plain HTTP.
    pub tls_cert: String,
    /// PEM private key of the certificate.
    pub tls_key: String,
}

impl HttpSection {
    /// The certificate to serve HTTPS with, when `tls_cert` and `tls_key` are set.
    pub fn tls(&self) -> anyhow::Result<Option<nublar_ingest::Tls>> {
        match (self.tls_cert.trim(), self.tls_key.trim()) {
            ("", "") => Ok(None),
            ("", _) | (_, "") => {
                anyhow::bail!("http.tls_cert and http.tls_key go together: give both or neither")
            }
            (cert, key) => nublar_ingest::Tls::load(Path::new(cert), Path::new(key))
                .map(Some)
                .map_err(|error| anyhow::anyhow!("http.tls_cert / http.tls_key: {error}")),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UdpSection {
    pub listen: SocketAddr,
    pub db: String,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogSection {
    pub partitions: u32,
    /// 0 means no quota.
    pub disk_quota_bytes: u64,
}

/// BFD (RFC 5880/5881 single hop), off unless `enabled`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BfdSection {
    pub enabled: bool,
    /// Where Control packets are received; an empty string leaves IPv4 out.
    pub ipv4_listen: String,
    /// As `ipv4_listen`, for IPv6.
    pub ipv6_listen: String,
    /// Where multihop Control packets (RFC 5883, port 4784) are received; empty: none.
    pub multihop_ipv4_listen: String,
    pub multihop_ipv6_listen: String,
    pub desired_min_tx_ms: u32,
    pub required_min_rx_ms: u32,
    pub detect_multiplier: u8,
    /// Prefixes whose senders get a session without being listed as peers.
    pub accept_from: Vec<String>,
    pub accept_sessions_max: usize,
    pub accept_idle_seconds: u64,
    /// For accepted sessions and for peers without their own.
    pub authentication: Option<BfdAuthenticationSection>,
    pub peers: Vec<BfdPeerSection>,
}

/// A BFD authentication key (RFC 5880 section 6.7).
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BfdAuthenticationSection {
    /// `simple-password`, `keyed-sha1` or `meticulous-keyed-sha1`.
    #[serde(rename = "type")]
    pub kind: String,
    pub key_id: u8,
    pub secret: String,
}

/// One configured BFD session; intervals left out take the section's.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BfdPeerSection {
    pub local: IpAddr,
    pub peer: IpAddr,
    /// Where the peer listens: 3784, or 4784 for multihop.
    pub peer_port: Option<u16>,
    pub desired_min_tx_ms: Option<u32>,
    pub required_min_rx_ms: Option<u32>,
    pub detect_multiplier: Option<u8>,
    #[serde(default)]
    pub passive: bool,
    pub authentication: Option<BfdAuthenticationSection>,
    /// A multihop session (RFC 5883), received on the multihop listen address.
    #[serde(default)]
    pub multihop: bool,
    /// For multihop: the lowest TTL accepted (254: at most one router between).
    pub min_ttl: Option<u8>,
}

/// The BFD section turned into what the speaker takes.
#[derive(Clone, Debug)]
pub struct BfdPlan {
    pub speaker: SpeakerConfig,
    pub multihop_ipv4: Option<SocketAddrV4>,
    pub multihop_ipv6: Option<SocketAddrV6>,
    pub sessions: Vec<SessionSpec>,
    pub accept: Option<AcceptPolicy>,
}

/// How long, and how many, idempotency keys answer their retries.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IdempotencySection {
    pub window_seconds: u64,
    pub keys_per_owner_max: usize,
    pub keys_max: usize,
}

impl Default for IdempotencySection {
    fn default() -> IdempotencySection {
        let keys = nublar_ingest::IdempotencyConfig::default();
        IdempotencySection {
            window_seconds: (keys.window_ms / 1000) as u64,
            keys_per_owner_max: keys.keys_per_owner_max,
            keys_max: keys.keys_max,
        }
    }
}

/// Who may do what; reloaded without a restart (SIGHUP, or the file changing).
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AccessSection {
    pub allow: Vec<String>,
    pub trusted_proxies: Vec<String>,
    /// The header the trusted proxies write: `X-Forwarded-For` or `Forwarded`.
    pub forwarded_header: String,
    /// With no token, reads and operator commands only from this host.
    pub protected_mode: bool,
    /// `/metrics` and `/ready` need the `metrics` scope.
    pub protect_metrics: bool,
    pub tokens: Vec<TokenSection>,
}

impl Default for AccessSection {
    fn default() -> AccessSection {
        let access = AccessConfig::default();
        AccessSection {
            allow: Vec::new(),
            trusted_proxies: Vec::new(),
            forwarded_header: "X-Forwarded-For".into(),
            protected_mode: access.protected_mode,
            protect_metrics: access.protect_metrics,
            tokens: Vec::new(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenSection {
    pub name: String,
    pub secret: String,
    pub scopes: Vec<String>,
    #[serde(default)]
    pub allow: Vec<String>,
    /// Events per second on average; left out: no limit.
    #[serde(default)]
    pub events_per_second_max: Option<u64>,
}

impl Default for HttpSection {
    fn default() -> HttpSection {
        let ingest = IngestConfig::default();
        HttpSection {
            listen: "[::]:8086".parse().expect("a valid address"),
            body_bytes_max: ingest.body_bytes_max,
            decompressed_bytes_max: ingest.decompressed_bytes_max,
            in_flight_bytes_max: ingest.in_flight_bytes_max,
            connections_max: ingest.connections_max,
            header_read_timeout_ms: ingest.header_read_timeout_ms,
            body_read_timeout_ms: ingest.body_read_timeout_ms,
            drain_seconds: 30,
            tls_cert: String::new(),
            tls_key: String::new(),
        }
    }
}

impl Default for UdpSection {
    fn default() -> UdpSection {
        UdpSection {
            listen: "[::]:8089".parse().expect("a valid address"),
            db: IngestConfig::default().udp_db,
        }
    }
}

impl Default for BfdSection {
    fn default() -> BfdSection {
        BfdSection {
            enabled: false,
            ipv4_listen: "0.0.0.0:3784".into(),
            ipv6_listen: "[::]:3784".into(),
            multihop_ipv4_listen: String::new(),
            multihop_ipv6_listen: String::new(),
            desired_min_tx_ms: 300,
            required_min_rx_ms: 300,
            detect_multiplier: 3,
            accept_from: Vec::new(),
            accept_sessions_max: 1000,
            accept_idle_seconds: 60,
            authentication: None,
            peers: Vec::new(),
        }
    }
}

impl BfdSection {
    /// The speaker's sockets and sessions, or `None` when BFD is off.
    pub fn plan(&self) -> anyhow::Result<Option<BfdPlan>> {
        if !self.enabled {
            return Ok(None);
        }
        let ipv4_bind = parse_listen::<SocketAddrV4>(&self.ipv4_listen, "bfd.ipv4_listen")?;
        let ipv6_bind = parse_listen::<SocketAddrV6>(&self.ipv6_listen, "bfd.ipv6_listen")?;
        let multihop_ipv4 =
            parse_listen::<SocketAddrV4>(&self.multihop_ipv4_listen, "bfd.multihop_ipv4_listen")?;
        let multihop_ipv6 =
            parse_listen::<SocketAddrV6>(&self.multihop_ipv6_listen, "bfd.multihop_ipv6_listen")?;
        anyhow::ensure!(
            ipv4_bind.is_some() || ipv6_bind.is_some(),
            "bfd is enabled but both ipv4_listen and ipv6_listen are empty"
        );
        let default_authentication = self
            .authentication
            .as_ref()
            .map(|section| section.mode().context("bfd.authentication"))
            .transpose()?;
        let accept = if self.accept_from.is_empty() {
            None
        } else {
            let prefixes = self
                .accept_from
                .iter()
                .map(|text| {
                    text.parse::<Prefix>()
                        .map_err(|error| anyhow::anyhow!("bfd.accept_from: {error}"))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            anyhow::ensure!(
                self.accept_sessions_max <= nublar_bfd::limits::SPEAKER_SESSIONS_MAX,
                "bfd.accept_sessions_max {} is above the speaker's limit of {}",
                self.accept_sessions_max,
                nublar_bfd::limits::SPEAKER_SESSIONS_MAX
            );
            let parameters = self.parameters(None, "bfd")?;
            parameters
                .validate()
                .map_err(|error| anyhow::anyhow!("bfd: {error}"))?;
            Some(AcceptPolicy {
                admit: Arc::new(move |address| {
                    prefixes.iter().any(|prefix| prefix.contains(address))
                }),
                parameters,
                authentication: default_authentication.clone(),
                sessions_max: self.accept_sessions_max,
                idle: Duration::from_secs(self.accept_idle_seconds),
            })
        };
        let mut sessions = Vec::new();
        for peer in &self.peers {
            let parameters = self.parameters(Some(peer), &format!("bfd peer {}", peer.peer))?;
            anyhow::ensure!(
                peer.local.is_ipv4() == peer.peer.is_ipv4(),
                "bfd peer {}: local {} is of another address family",
                peer.peer,
                peer.local
            );
            let bound = if peer.local.is_ipv4() {
                ipv4_bind.is_some()
            } else {
                ipv6_bind.is_some()
            };
            anyhow::ensure!(
                bound,
                "bfd peer {}: no listen address of its family is configured",
                peer.peer
            );
            let multihop_bound = if peer.local.is_ipv4() {
                multihop_ipv4.is_some()
            } else {
                multihop_ipv6.is_some()
            };
            anyhow::ensure!(
                !peer.multihop || multihop_bound,
                "bfd peer {}: multihop, but no multihop listen address of its family is \
                 configured (bfd.multihop_ipv4_listen / multihop_ipv6_listen)",
                peer.peer
            );
            anyhow::ensure!(
                peer.multihop || peer.min_ttl.is_none(),
                "bfd peer {}: min_ttl applies to multihop sessions only",
                peer.peer
            );
            sessions.push(SessionSpec {
                local: peer.local,
                peer: peer.peer,
                peer_port: peer.peer_port.unwrap_or(if peer.multihop {
                    nublar_bfd::limits::MULTIHOP_CONTROL_PORT
                } else {
                    nublar_bfd::limits::SINGLE_HOP_CONTROL_PORT
                }),
                parameters,
                authentication: match &peer.authentication {
                    Some(section) => Some(
                        section
                            .mode()
                            .with_context(|| format!("bfd peer {}", peer.peer))?,
                    ),
                    None => default_authentication.clone(),
                },
                passive: peer.passive,
                multihop: peer.multihop.then(|| Multihop {
                    min_ttl: peer
                        .min_ttl
                        .unwrap_or(nublar_bfd::limits::MULTIHOP_MIN_TTL_DEFAULT),
                }),
            });
        }
        Ok(Some(BfdPlan {
            speaker: SpeakerConfig {
                ipv4_bind,
                ipv6_bind,
            },
            multihop_ipv4,
            multihop_ipv6,
            sessions,
            accept,
        }))
    }

    /// A peer's timers, each taken from the section where the peer leaves it out.
    fn parameters(&self, peer: Option<&BfdPeerSection>, name: &str) -> anyhow::Result<Parameters> {
        let microseconds = |ms: u32, what: &str| -> anyhow::Result<u32> {
            ms.checked_mul(1000)
                .with_context(|| format!("{name}: {what} of {ms} ms is too large"))
        };
        Ok(Parameters {
            desired_min_tx_interval_us: microseconds(
                peer.and_then(|peer| peer.desired_min_tx_ms)
                    .unwrap_or(self.desired_min_tx_ms),
                "desired_min_tx_ms",
            )?,
            required_min_rx_interval_us: microseconds(
                peer.and_then(|peer| peer.required_min_rx_ms)
                    .unwrap_or(self.required_min_rx_ms),
                "required_min_rx_ms",
            )?,
            detect_multiplier: peer
                .and_then(|peer| peer.detect_multiplier)
                .unwrap_or(self.detect_multiplier),
        })
    }
}

/// An optional listen address: empty leaves it out.
fn parse_listen<T: std::str::FromStr>(text: &str, name: &str) -> anyhow::Result<Option<T>>
where
    T::Err: std::fmt::Display,
{
    match text.trim() {
        "" => Ok(None),
        text => text
            .parse::<T>()
            .map(Some)
            .map_err(|error| anyhow::anyhow!("{name} {text:?}: {error}")),
    }
}

impl BfdAuthenticationSection {
    pub fn mode(&self) -> anyhow::Result<AuthenticationMode> {
        let secret = self.secret.as_bytes();
        let sha1_key = || {
            Sha1Key::new(secret).with_context(|| {
                format!("a keyed SHA1 secret is 1 to 20 bytes, not {}", secret.len())
            })
        };
        Ok(match self.kind.as_str() {
            "simple-password" => AuthenticationMode::SimplePassword {
                key_id: self.key_id,
                password: SimplePassword::new(secret).with_context(|| {
                    format!("a simple password is 1 to 16 bytes, not {}", secret.len())
                })?,
            },
            "keyed-sha1" => AuthenticationMode::KeyedSha1 {
                key_id: self.key_id,
                key: sha1_key()?,
            },
            "meticulous-keyed-sha1" => AuthenticationMode::MeticulousKeyedSha1 {
                key_id: self.key_id,
                key: sha1_key()?,
            },
            other => anyhow::bail!(
                "unknown type {other:?}: expected simple-password, keyed-sha1 or \
                 meticulous-keyed-sha1"
            ),
        })
    }
}

impl Default for LogSection {
    fn default() -> LogSection {
        LogSection {
            partitions: IngestConfig::default().partitions,
            disk_quota_bytes: 0,
        }
    }
}

impl NodeConfig {
    /// The defaults overridden by the file at `path`, if given.
    pub fn load(path: Option<&Path>) -> anyhow::Result<NodeConfig> {
        let Some(path) = path else {
            return Ok(NodeConfig::default());
        };
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("in {}", path.display()))
    }

    pub fn ingest(&self) -> anyhow::Result<IngestConfig> {
        let config = IngestConfig {
            partitions: self.log.partitions,
            body_bytes_max: self.http.body_bytes_max,
            decompressed_bytes_max: self.http.decompressed_bytes_max,
            in_flight_bytes_max: self.http.in_flight_bytes_max,
            udp_db: self.udp.db.clone(),
            connections_max: self.http.connections_max,
            header_read_timeout_ms: self.http.header_read_timeout_ms,
            body_read_timeout_ms: self.http.body_read_timeout_ms,
            access: self.access.access()?,
            dead_letters_per_request_max: self.dead_letters.per_request_max,
            dead_letters_per_sender_per_second: self.dead_letters.per_sender_per_second,
            schema_columns_max: self.schema.columns_max,
            schema_bytes_max: self.schema.bytes_max,
            schema_database_bytes_max: self.schema.database_bytes_max,
            idempotency: nublar_ingest::IdempotencyConfig {
                window_ms: i64::try_from(self.idempotency.window_seconds.saturating_mul(1000))
                    .unwrap_or(i64::MAX),
                keys_per_owner_max: self.idempotency.keys_per_owner_max,
                keys_max: self.idempotency.keys_max,
            },
        };
        config
            .validate()
            .map_err(|error| anyhow::anyhow!("invalid configuration: {error}"))?;
        Ok(config)
    }
}

impl AccessSection {
    /// The rules the gateway applies; what a reload replaces.
    pub fn access(&self) -> anyhow::Result<AccessConfig> {
        let prefixes = |texts: &[String], what: &str| -> anyhow::Result<Vec<Prefix>> {
            texts
                .iter()
                .map(|text| {
                    text.parse::<Prefix>()
                        .map_err(|error| anyhow::anyhow!("{what}: {error}"))
                })
                .collect()
        };
        let mut tokens = Vec::new();
        for token in &self.tokens {
            let scopes = token
                .scopes
                .iter()
                .map(|scope| {
                    scope
                        .parse::<Scope>()
                        .map_err(|error| anyhow::anyhow!("token {:?}: {error}", token.name))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            tokens.push(Token {
                name: token.name.clone(),
                secret: token.secret.clone(),
                scopes,
                allow: prefixes(&token.allow, &format!("token {:?} allow", token.name))?,
                events_per_second_max: token.events_per_second_max,
            });
        }
        let access = AccessConfig {
            tokens,
            allow: prefixes(&self.allow, "access.allow")?,
            trusted_proxies: prefixes(&self.trusted_proxies, "access.trusted_proxies")?,
            forwarded_header: self
                .forwarded_header
                .parse()
                .map_err(|error| anyhow::anyhow!("access.forwarded_header: {error}"))?,
            protected_mode: self.protected_mode,
            protect_metrics: self.protect_metrics,
        };
        access
            .validate()
            .map_err(|error| anyhow::anyhow!("access: {error}"))?;
        Ok(access)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Where the example configuration lives in the source tree.
    fn example_path() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/nublar.example.toml")
    }

    #[test]
    fn the_example_configuration_lists_exactly_the_defaults() {
        let text = std::fs::read_to_string(example_path()).unwrap();
        let parsed: NodeConfig = toml::from_str(&text).unwrap();
        assert_eq!(parsed, NodeConfig::default());
        // Every option appears in it, uncommented, so a reader sees them all.
        for key in [
            "listen",
            "body_bytes_max",
            "decompressed_bytes_max",
            "in_flight_bytes_max",
            "connections_max",
            "header_read_timeout_ms",
            "body_read_timeout_ms",
            "drain_seconds",
            "tls_cert",
            "tls_key",
            "db",
            "partitions",
            "disk_quota_bytes",
            "per_request_max",
            "per_sender_per_second",
            "columns_max",
            "bytes_max",
            "database_bytes_max",
            "allow",
            "trusted_proxies",
            "forwarded_header",
            "protected_mode",
            "protect_metrics",
            "window_seconds",
            "keys_per_owner_max",
            "keys_max",
            "enabled",
            "ipv4_listen",
            "ipv6_listen",
            "desired_min_tx_ms",
            "required_min_rx_ms",
            "detect_multiplier",
        ] {
            assert!(
                text.lines()
                    .any(|line| line.starts_with(&format!("{key} ="))),
                "{key} missing"
            );
        }
        parsed.ingest().unwrap();
        assert!(parsed.bfd.plan().unwrap().is_none());
        // The commented peer example at the end, uncommented, is a valid configuration too
        // (its own remarks start with "##").
        let start = text.find("# [[bfd.peers]]").expect("a peer example");
        let example: Vec<&str> = text[start..]
            .lines()
            .filter(|line| !line.starts_with("##"))
            .map(|line| line.strip_prefix("# ").unwrap_or(line))
            .collect();
        let peers = format!(
            "[bfd]\nenabled = true\nmultihop_ipv4_listen = \"0.0.0.0:4784\"\n{}\n",
            example.join("\n")
        );
        let peers: NodeConfig = toml::from_str(&peers).unwrap();
        let plan = peers.bfd.plan().unwrap().unwrap();
        assert_eq!(plan.sessions.len(), 3);
        assert!(plan.sessions[1].multihop.is_some());
    }

    #[test]
    fn bfd_peers_take_the_section_intervals_unless_they_set_their_own() {
        let config: NodeConfig = toml::from_str(
            "[bfd]\nenabled = true\nipv6_listen = \"\"\ndesired_min_tx_ms = 50\n\
             [[bfd.peers]]\nlocal = \"127.0.0.1\"\npeer = \"127.0.0.2\"\n\
             [[bfd.peers]]\nlocal = \"127.0.0.1\"\npeer = \"127.0.0.3\"\npeer_port = 4000\n\
             required_min_rx_ms = 1000\ndetect_multiplier = 5\npassive = true\n",
        )
        .unwrap();
        let plan = config.bfd.plan().unwrap().unwrap();
        assert_eq!(plan.speaker.ipv6_bind, None);
        assert_eq!(
            plan.speaker.ipv4_bind,
            Some("0.0.0.0:3784".parse().unwrap())
        );
        let [first, second] = &plan.sessions[..] else {
            panic!("{plan:?}");
        };
        assert_eq!(first.peer_port, 3784);
        assert!(!first.passive);
        assert_eq!(
            first.parameters,
            Parameters {
                desired_min_tx_interval_us: 50_000,
                required_min_rx_interval_us: 300_000,
                detect_multiplier: 3,
            }
        );
        assert_eq!(second.peer_port, 4000);
        assert!(second.passive);
        assert_eq!(second.parameters.required_min_rx_interval_us, 1_000_000);
        assert_eq!(second.parameters.detect_multiplier, 5);
        // An IPv6 peer without an IPv6 listen address is refused, by name.
        let config: NodeConfig = toml::from_str(
            "[bfd]\nenabled = true\nipv6_listen = \"\"\n\
             [[bfd.peers]]\nlocal = \"::1\"\npeer = \"::1\"\n",
        )
        .unwrap();
        let error = config.bfd.plan().unwrap_err().to_string();
        assert!(error.contains("no listen address"), "{error}");
        let config: NodeConfig =
            toml::from_str("[bfd]\nenabled = true\nipv4_listen = \"\"\nipv6_listen = \"\"\n")
                .unwrap();
        assert!(config.bfd.plan().is_err());
    }

    #[test]
    fn bfd_accepts_prefixes_and_authenticates_with_the_section_key_unless_a_peer_has_its_own() {
        let config: NodeConfig = toml::from_str(
            "[bfd]\nenabled = true\naccept_from = [\"2001:db8:7::/48\", \"127.0.0.0/8\"]\n\
             accept_sessions_max = 5\naccept_idle_seconds = 9\n\
             authentication = { type = \"meticulous-keyed-sha1\", key_id = 3, secret = \"s\" }\n\
             [[bfd.peers]]\nlocal = \"127.0.0.1\"\npeer = \"127.0.0.2\"\n\
             [[bfd.peers]]\nlocal = \"127.0.0.1\"\npeer = \"127.0.0.3\"\n\
             authentication = { type = \"simple-password\", key_id = 4, secret = \"pw\" }\n",
        )
        .unwrap();
        let plan = config.bfd.plan().unwrap().unwrap();
        let accept = plan.accept.expect("an accept policy");
        assert!((accept.admit)("2001:db8:7:5::1".parse().unwrap()));
        assert!((accept.admit)("127.9.9.9".parse().unwrap()));
        assert!(!(accept.admit)("2001:db8:8::1".parse().unwrap()));
        assert!(!(accept.admit)("10.0.0.1".parse().unwrap()));
        assert_eq!(accept.sessions_max, 5);
        assert_eq!(accept.idle, Duration::from_secs(9));
        assert_eq!(accept.parameters.desired_min_tx_interval_us, 300_000);
        let section_key = AuthenticationMode::MeticulousKeyedSha1 {
            key_id: 3,
            key: Sha1Key::new(b"s").unwrap(),
        };
        assert_eq!(accept.authentication.as_ref(), Some(&section_key));
        assert_eq!(plan.sessions[0].authentication.as_ref(), Some(&section_key));
        assert_eq!(
            plan.sessions[1].authentication,
            Some(AuthenticationMode::SimplePassword {
                key_id: 4,
                password: SimplePassword::new(b"pw").unwrap(),
            })
        );
        // Off by default: no prefix, no policy.
        let config: NodeConfig = toml::from_str("[bfd]\nenabled = true\n").unwrap();
        assert!(config.bfd.plan().unwrap().unwrap().accept.is_none());
        for (bad, expected) in [
            ("accept_from = [\"10.0.0.0/40\"]", "bfd.accept_from"),
            (
                "accept_from = [\"::/0\"]\naccept_sessions_max = 5000",
                "speaker's limit",
            ),
            (
                "authentication = { type = \"md5\", key_id = 1, secret = \"x\" }",
                "unknown type \"md5\"",
            ),
            (
                "authentication = { type = \"keyed-sha1\", key_id = 1, secret = \"\" }",
                "1 to 20 bytes",
            ),
            (
                "authentication = { type = \"simple-password\", key_id = 1, \
                 secret = \"seventeen bytes!!\" }",
                "1 to 16 bytes",
            ),
        ] {
            let config: NodeConfig =
                toml::from_str(&format!("[bfd]\nenabled = true\n{bad}\n")).unwrap();
            let error = format!("{:#}", config.bfd.plan().unwrap_err());
            assert!(error.contains(expected), "{bad}: {error}");
        }
    }

    #[test]
    fn bfd_multihop_peers_need_a_multihop_listen_address_and_default_to_port_4784() {
        let config: NodeConfig = toml::from_str(
            "[bfd]\nenabled = true\nmultihop_ipv4_listen = \"0.0.0.0:4784\"\n\
             [[bfd.peers]]\nlocal = \"192.0.2.10\"\npeer = \"198.51.100.1\"\nmultihop = true\n\
             [[bfd.peers]]\nlocal = \"192.0.2.10\"\npeer = \"198.51.100.2\"\nmultihop = true\n\
             min_ttl = 64\n",
        )
        .unwrap();
        let plan = config.bfd.plan().unwrap().unwrap();
        assert_eq!(plan.multihop_ipv4, Some("0.0.0.0:4784".parse().unwrap()));
        assert_eq!(plan.multihop_ipv6, None);
        assert_eq!(plan.sessions[0].peer_port, 4784);
        assert_eq!(plan.sessions[0].multihop, Some(Multihop { min_ttl: 254 }));
        assert_eq!(plan.sessions[1].multihop, Some(Multihop { min_ttl: 64 }));
        for (bad, expected) in [
            (
                "[[bfd.peers]]\nlocal = \"::1\"\npeer = \"::2\"\nmultihop = true\n",
                "no multihop listen address",
            ),
            (
                "[[bfd.peers]]\nlocal = \"127.0.0.1\"\npeer = \"127.0.0.2\"\nmin_ttl = 9\n",
                "multihop sessions only",
            ),
            (
                "multihop_ipv6_listen = \"nonsense\"\n",
                "bfd.multihop_ipv6_listen",
            ),
        ] {
            let text =
                format!("[bfd]\nenabled = true\nmultihop_ipv4_listen = \"0.0.0.0:4784\"\n{bad}");
            let config: NodeConfig = match toml::from_str(&text) {
                Ok(config) => config,
                Err(error) => panic!("{bad}: {error}"),
            };
            let error = format!("{:#}", config.bfd.plan().unwrap_err());
            assert!(error.contains(expected), "{bad}: {error}");
        }
    }

    #[test]
    fn mistakes_in_a_file_are_named() {
        let unknown = toml::from_str::<NodeConfig>("[http]\nlisten_on = \"[::]:1\"\n").unwrap_err();
        assert!(unknown.to_string().contains("listen_on"), "{unknown}");
        let config: NodeConfig = toml::from_str(
            "[[access.tokens]]\nname = \"t\"\nsecret = \"x\"\nscopes = [\"write\"]\n",
        )
        .unwrap();
        let error = config.ingest().unwrap_err().to_string();
        assert!(error.contains("unknown scope"), "{error}");
        let config: NodeConfig = toml::from_str("[access]\nallow = [\"10.0.0.0/99\"]\n").unwrap();
        assert!(
            config
                .ingest()
                .unwrap_err()
                .to_string()
                .contains("prefix length")
        );
    }
}
