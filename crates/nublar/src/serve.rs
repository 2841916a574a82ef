//! `nublar serve`: one node ([`nublar_node::node::Node`]) with its data directory, and the
//! signals around it: SIGTERM and SIGINT drain and stop it, SIGHUP applies the
//! configuration file's access rules again.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use nublar_node::config::NodeConfig;
use nublar_node::node::{Node, NodeOptions};

/// Flags and `NUBLAR_*` variables override the configuration file, which
/// overrides the defaults (listed in `docs/nublar.example.toml`).
#[derive(Args)]
pub struct ServeArgs {
    /// A TOML configuration file (every option: docs/nublar.example.toml).
    #[arg(long, env = "NUBLAR_CONFIG")]
    config: Option<PathBuf>,
    /// HTTP API and ingest address [default: [::]:8086; `[::]` takes IPv6 and IPv4].
    #[arg(long, env = "NUBLAR_HTTP")]
    http: Option<SocketAddr>,
    /// UDP line protocol address [default: [::]:8089].
    #[arg(long, env = "NUBLAR_UDP")]
    udp: Option<SocketAddr>,
    /// Database that UDP datagrams are written to [default: park].
    #[arg(long, env = "NUBLAR_UDP_DB")]
    udp_db: Option<String>,
    /// Partitions of the telemetry topic when it is created [default: 8].
    #[arg(long, env = "NUBLAR_PARTITIONS")]
    partitions: Option<u32>,
    /// Largest request body in bytes [default: 10 MiB].
    #[arg(long, env = "NUBLAR_BODY_BYTES_MAX")]
    body_bytes_max: Option<usize>,
    /// Largest body after gzip decompression, in bytes [default: 50 MiB].
    #[arg(long, env = "NUBLAR_DECOMPRESSED_BYTES_MAX")]
    decompressed_bytes_max: Option<usize>,
    /// Request bodies held in memory at once, in bytes; past it, 503 [default: 256 MiB].
    #[arg(long, env = "NUBLAR_IN_FLIGHT_BYTES_MAX")]
    in_flight_bytes_max: Option<usize>,
    /// Open HTTP connections at once; past it new ones are closed at once [default: 4096].
    #[arg(long, env = "NUBLAR_CONNECTIONS_MAX")]
    connections_max: Option<usize>,
    /// Milliseconds a client has to send a request's headers [default: 10000].
    #[arg(long, env = "NUBLAR_HEADER_READ_TIMEOUT_MS")]
    header_read_timeout_ms: Option<u64>,
    /// Milliseconds a client has to send a request's body (408 beyond) [default: 30000].
    #[arg(long, env = "NUBLAR_BODY_READ_TIMEOUT_MS")]
    body_read_timeout_ms: Option<u64>,
    /// Appends are refused (503) once the log takes this many bytes; 0: none [default: 0].
    #[arg(long, env = "NUBLAR_DISK_QUOTA_BYTES")]
    disk_quota_bytes: Option<u64>,
    /// How long a SIGTERM waits for requests in flight [default: 30].
    #[arg(long, env = "NUBLAR_DRAIN_SECONDS")]
    drain_seconds: Option<u64>,
    /// PEM certificate chain: serve HTTPS on --http (with --tls-key) [default: plain HTTP].
    #[arg(long, env = "NUBLAR_TLS_CERT")]
    tls_cert: Option<String>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "NUBLAR_TLS_KEY")]
    tls_key: Option<String>,
}

impl ServeArgs {
    fn node_config(&self) -> anyhow::Result<NodeConfig> {
        let mut config = NodeConfig::load(self.config.as_deref())?;
        let http = &mut config.http;
        set(&mut http.listen, self.http);
        set(&mut http.body_bytes_max, self.body_bytes_max);
        set(
            &mut http.decompressed_bytes_max,
            self.decompressed_bytes_max,
        );
        set(&mut http.in_flight_bytes_max, self.in_flight_bytes_max);
        set(&mut http.connections_max, self.connections_max);
        set(
            &mut http.header_read_timeout_ms,
            self.header_read_timeout_ms,
        );
        set(&mut http.body_read_timeout_ms, self.body_read_timeout_ms);
        set(&mut http.drain_seconds, self.drain_seconds);
        set(&mut http.tls_cert, self.tls_cert.clone());
        set(&mut http.tls_key, self.tls_key.clone());
        set(&mut config.udp.listen, self.udp);
        set(&mut config.udp.db, self.udp_db.clone());
        set(&mut config.log.partitions, self.partitions);
        set(&mut config.log.disk_quota_bytes, self.disk_quota_bytes);
        Ok(config)
    }
}

fn set<T>(slot: &mut T, value: Option<T>) {
    if let Some(value) = value {
        *slot = value;
    }
}

pub fn run(data: &Path, args: ServeArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    // Queries and table maintenance scan and rewrite files for seconds at a time; on a runtime
    // of their own they never hold a thread that ingest's acknowledgements wait for. Made and
    // ended here, outside any async context, whichever way `serve` returns.
    let lake_work = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("nublar-lake-work")
        .enable_all()
        .build()
        .context("starting the query runtime")?;
    let served = runtime.block_on(serve(data, args, lake_work.handle().clone()));
    // A compaction cut short leaves only files no version refers to, which vacuum removes.
    lake_work.shutdown_background();
    served
}

async fn serve(
    data: &Path,
    args: ServeArgs,
    lake_work: tokio::runtime::Handle,
) -> anyhow::Result<()> {
    // Registered before anything else: until a handler exists, SIGTERM, SIGINT and SIGHUP end
    // the process at once, without a drain. One that comes while the node starts is taken up
    // once it serves: it then drains at once.
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut hangup = signal(SignalKind::hangup())?;
    let node = Node::start(NodeOptions {
        data: data.to_path_buf(),
        config: args.node_config()?,
        config_path: args.config.clone(),
        lake_work,
    })
    .await?;
    // Scripts and tests read the bound addresses from this first line.
    println!(
        "nublar listening http={} udp={}",
        node.http_address(),
        node.udp_address()
    );
    loop {
        tokio::select! {
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
            _ = hangup.recv() => node.reload(),
        }
    }
    node.stop().await?;
    eprintln!("stopped cleanly");
    Ok(())
}
