//! `nublar serve`: one node with its data directory, the commit log, and the
//! ingest gateway on HTTP and UDP.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use nublar_bus::{Bus, EmbeddedBus};
use nublar_ingest::{Gateway, IngestConfig};
use nublar_log::{Log, OpenOptions};
use tokio::net::{TcpListener, UdpSocket};

#[derive(Args)]
pub struct ServeArgs {
    /// HTTP API and ingest address; `[::]` listens on IPv6 and IPv4.
    #[arg(long, env = "NUBLAR_HTTP", default_value = "[::]:8086")]
    http: SocketAddr,
    /// UDP line protocol address.
    #[arg(long, env = "NUBLAR_UDP", default_value = "[::]:8089")]
    udp: SocketAddr,
    /// Database that UDP datagrams are written to.
    #[arg(long, env = "NUBLAR_UDP_DB", default_value = "park")]
    udp_db: String,
    /// Partitions of the telemetry topic when it is created.
    #[arg(long, env = "NUBLAR_PARTITIONS", default_value_t = 8)]
    partitions: u32,
    /// Largest request body in bytes.
    #[arg(long, env = "NUBLAR_BODY_BYTES_MAX", default_value_t = IngestConfig::default().body_bytes_max)]
    body_bytes_max: usize,
    /// Largest body after gzip decompression, in bytes.
    #[arg(long, env = "NUBLAR_DECOMPRESSED_BYTES_MAX", default_value_t = IngestConfig::default().decompressed_bytes_max)]
    decompressed_bytes_max: usize,
    /// Request bodies held in memory at once, in bytes; past it, 503.
    #[arg(long, env = "NUBLAR_IN_FLIGHT_BYTES_MAX", default_value_t = IngestConfig::default().in_flight_bytes_max)]
    in_flight_bytes_max: usize,
    /// Open HTTP connections at once; past it new ones are closed at once.
    #[arg(long, env = "NUBLAR_CONNECTIONS_MAX", default_value_t = IngestConfig::default().connections_max)]
    connections_max: usize,
    /// Milliseconds a client has to send a request's headers.
    #[arg(long, env = "NUBLAR_HEADER_READ_TIMEOUT_MS", default_value_t = IngestConfig::default().header_read_timeout_ms)]
    header_read_timeout_ms: u64,
    /// Milliseconds a client has to send a request's body (408 beyond).
    #[arg(long, env = "NUBLAR_BODY_READ_TIMEOUT_MS", default_value_t = IngestConfig::default().body_read_timeout_ms)]
    body_read_timeout_ms: u64,
    /// Appends are refused (503) once the log takes this many bytes.
    #[arg(long, env = "NUBLAR_DISK_QUOTA_BYTES")]
    disk_quota_bytes: Option<u64>,
    /// How long a SIGTERM waits for requests in flight before giving up.
    #[arg(long, env = "NUBLAR_DRAIN_SECONDS", default_value_t = 30)]
    drain_seconds: u64,
}

pub fn run(data: &Path, args: ServeArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(serve(data, args))
}

async fn serve(data: &Path, args: ServeArgs) -> anyhow::Result<()> {
    let log_dir = data.join("log");
    let options = OpenOptions {
        quota_bytes: args.disk_quota_bytes,
        ..OpenOptions::default()
    };
    let log = Log::open_with(&log_dir, options)
        .with_context(|| format!("opening the log in {}", log_dir.display()))?;
    let bus: Arc<dyn Bus> = EmbeddedBus::new(log.clone()).into_shared();
    let config = IngestConfig {
        partitions: args.partitions,
        body_bytes_max: args.body_bytes_max,
        decompressed_bytes_max: args.decompressed_bytes_max,
        in_flight_bytes_max: args.in_flight_bytes_max,
        udp_db: args.udp_db,
        connections_max: args.connections_max,
        header_read_timeout_ms: args.header_read_timeout_ms,
        body_read_timeout_ms: args.body_read_timeout_ms,
    };
    let gateway = Gateway::new(bus, config).await?;
    let http = TcpListener::bind(args.http)
        .await
        .with_context(|| format!("binding HTTP to {}", args.http))?;
    let udp = UdpSocket::bind(args.udp)
        .await
        .with_context(|| format!("binding UDP to {}", args.udp))?;
    // Scripts and tests read the bound addresses from this first line.
    println!(
        "nublar listening http={} udp={}",
        http.local_addr()?,
        udp.local_addr()?
    );
    eprintln!(
        "WARNING: no tokens are configured: anyone who can reach {} or {} can write to any database",
        http.local_addr()?,
        udp.local_addr()?
    );

    let (stop_http, http_stopped) = tokio::sync::oneshot::channel::<()>();
    let (stop_udp, udp_stopped) = tokio::sync::oneshot::channel::<()>();
    let http_task = {
        let gateway = gateway.clone();
        tokio::spawn(async move {
            gateway
                .serve_http(http, async move { http_stopped.await.unwrap_or(()) })
                .await
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

    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = terminate.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    eprintln!("draining: readiness is false, finishing the requests in flight");
    gateway.start_draining();
    let _ = stop_udp.send(());
    let _ = stop_http.send(());
    let drained = tokio::time::timeout(Duration::from_secs(args.drain_seconds), async {
        let _ = http_task.await;
        let _ = udp_task.await;
    })
    .await;
    if drained.is_err() {
        eprintln!(
            "drain time of {} s passed with requests still in flight",
            args.drain_seconds
        );
    }
    tokio::task::spawn_blocking(move || log.close())
        .await?
        .context("closing the log")?;
    eprintln!("stopped cleanly");
    Ok(())
}
