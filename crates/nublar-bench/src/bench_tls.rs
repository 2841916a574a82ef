//! `nublar bench tls`: ingest over HTTPS beside plain HTTP, in one run, into one node.
//!
//! The node serves HTTPS on its address (a self-signed certificate made for the run) and
//! plain HTTP on its loopback listener for this host; the lake and the processors are off,
//! so that the two protocols share the machine with nothing but the gateway and the log.
//! Rounds alternate between the protocols; in each, `--concurrency` keep-alive connections
//! send batches of `--lines` lines as fast as they are acknowledged, and the round counts
//! the lines acknowledged per second and the CPU both processes spent per million lines.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;

use crate::node_child::{quantile, start_node};

#[derive(Args)]
pub struct TlsBenchArgs {
    /// Where to write; a fresh folder is made inside and deleted afterwards.
    #[arg(long, default_value = ".")]
    dir: PathBuf,
    /// Lines of line protocol per request.
    #[arg(long, default_value_t = 5000)]
    lines: usize,
    /// Connections sending at once.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Seconds each round sends.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Rounds of each protocol, alternating.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Protocol {
    Http,
    Https,
}

struct Round {
    lines_per_second: f64,
    /// CPU seconds of the node and of this process (the senders) per million lines.
    node_cpu_per_million: f64,
    client_cpu_per_million: f64,
}

pub fn run(args: TlsBenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.lines > 0 && args.concurrency > 0 && args.seconds > 0.0 && args.rounds > 0,
        "--lines, --concurrency, --seconds and --rounds must be positive"
    );
    let root = tempfile::Builder::new()
        .prefix("nublar-bench-tls-")
        .tempdir_in(&args.dir)
        .with_context(|| format!("creating a folder in {}", args.dir.display()))?;
    let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()])
        .context("making a certificate")?;
    let (cert, key) = (root.path().join("cert.pem"), root.path().join("key.pem"));
    std::fs::write(&cert, certified.cert.pem())?;
    std::fs::write(&key, certified.signing_key.serialize_pem())?;
    let config = root.path().join("node.toml");
    std::fs::write(
        &config,
        "[lake]\nenabled = false\n[processors]\nenabled = false\n",
    )?;
    let node_dir = root.path().join("node");
    let (mut node, https) = start_node(
        &node_dir,
        &[
            "--config",
            &config.to_string_lossy(),
            "--tls-cert",
            &cert.to_string_lossy(),
            "--tls-key",
            &key.to_string_lossy(),
        ],
    )?;
    let announced: serde_json::Value = serde_json::from_slice(&std::fs::read(
        node_dir.join(nublar_node::log_command::NODE_FILE),
    )?)?;
    let http: SocketAddr = announced["http"]
        .as_str()
        .and_then(|address| address.parse().ok())
        .context("the node announced no plain HTTP address")?;
    println!("{}", crate::machine::machine_line());
    println!(
        "one node (lake and processors off); {} connections send batches of {} lines for {} s \
         a round, HTTP and HTTPS (rustls with aws-lc-rs) alternating, {} rounds each",
        args.concurrency, args.lines, args.seconds, args.rounds
    );
    let body = Bytes::from(batch(args.lines));
    let connector = connector(&cert)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let node_pid = node.0.id();
    let mut results: Vec<(Protocol, Round)> = Vec::new();
    for round in 0..args.rounds * 2 {
        let protocol = if round % 2 == 0 {
            Protocol::Http
        } else {
            Protocol::Https
        };
        let address = match protocol {
            Protocol::Http => http,
            Protocol::Https => https,
        };
        let node_cpu = process_cpu_seconds(node_pid)?;
        let client_cpu = own_cpu_seconds();
        let started = Instant::now();
        let batches = runtime.block_on(send(
            address,
            protocol,
            &connector,
            &body,
            args.concurrency,
            Duration::from_secs_f64(args.seconds),
        ))?;
        let elapsed = started.elapsed().as_secs_f64();
        let lines = (batches * args.lines as u64) as f64;
        let millions = (lines / 1e6).max(1e-9);
        let measured = Round {
            lines_per_second: lines / elapsed,
            node_cpu_per_million: (process_cpu_seconds(node_pid)? - node_cpu) / millions,
            client_cpu_per_million: (own_cpu_seconds() - client_cpu) / millions,
        };
        println!(
            "round {}: {:<5} {:>6.2} M lines/s; CPU per M lines: node {:.3} s, senders {:.3} s",
            round / 2 + 1,
            match protocol {
                Protocol::Http => "HTTP",
                Protocol::Https => "HTTPS",
            },
            measured.lines_per_second / 1e6,
            measured.node_cpu_per_million,
            measured.client_cpu_per_million
        );
        results.push((protocol, measured));
    }
    let median = |protocol: Protocol, value: fn(&Round) -> f64| {
        let mut values: Vec<f64> = results
            .iter()
            .filter(|(of, _)| *of == protocol)
            .map(|(_, round)| value(round))
            .collect();
        values.sort_by(f64::total_cmp);
        quantile(&values, 0.5)
    };
    let throughput = |protocol| median(protocol, |round| round.lines_per_second);
    let node_cpu = |protocol| median(protocol, |round| round.node_cpu_per_million);
    let (plain, secure) = (throughput(Protocol::Http), throughput(Protocol::Https));
    println!(
        "median: HTTP {:.2} M lines/s, HTTPS {:.2} M lines/s: HTTPS at {:.1}% of HTTP \
         ({:+.1}%); node CPU per M lines {:.3} s beside {:.3} s",
        plain / 1e6,
        secure / 1e6,
        secure / plain * 100.0,
        (secure / plain - 1.0) * 100.0,
        node_cpu(Protocol::Https),
        node_cpu(Protocol::Http)
    );
    node.terminate(Duration::from_secs(30))?;
    Ok(())
}

/// `lines` lines of a park's weather, as a sensor would batch them.
fn batch(lines: usize) -> Vec<u8> {
    let mut body = String::with_capacity(lines * 96);
    for index in 0..lines {
        body.push_str(&format!(
            "weather,habitat=h{},station=ws-{} temp_c={:.1},humidity={:.2},wind_ms={:.1} {}\n",
            index % 12,
            index % 480,
            18.0 + (index % 170) as f64 / 10.0,
            0.3 + (index % 60) as f64 / 100.0,
            (index % 90) as f64 / 10.0,
            1_700_000_000_000_000_000u64 + index as u64 * 1_000_000,
        ));
    }
    body.into_bytes()
}

fn connector(cert: &std::path::Path) -> anyhow::Result<tokio_rustls::TlsConnector> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for certificate in rustls::pki_types::CertificateDer::pem_file_iter(cert)? {
        roots.add(certificate?)?;
    }
    let mut config = rustls::ClientConfig::builder_with_provider(nublar_ingest::crypto_provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

/// Sends `body` on `concurrency` connections until `for_how_long` has passed; the batches
/// acknowledged.
async fn send(
    address: SocketAddr,
    protocol: Protocol,
    connector: &tokio_rustls::TlsConnector,
    body: &Bytes,
    concurrency: usize,
    for_how_long: Duration,
) -> anyhow::Result<u64> {
    let deadline = tokio::time::Instant::now() + for_how_long;
    let mut senders = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (connector, body) = (connector.clone(), body.clone());
        senders.spawn(async move {
            let stream = tokio::net::TcpStream::connect(address).await?;
            stream.set_nodelay(true)?;
            match protocol {
                Protocol::Http => {
                    sender(hyper_util::rt::TokioIo::new(stream), body, deadline).await
                }
                Protocol::Https => {
                    let name = rustls::pki_types::ServerName::from(address.ip());
                    let stream = connector.connect(name, stream).await?;
                    sender(hyper_util::rt::TokioIo::new(stream), body, deadline).await
                }
            }
        });
    }
    let mut batches = 0;
    while let Some(sent) = senders.join_next().await {
        batches += sent??;
    }
    Ok(batches)
}

/// One keep-alive connection's requests until `deadline`.
async fn sender<Io>(io: Io, body: Bytes, deadline: tokio::time::Instant) -> anyhow::Result<u64>
where
    Io: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut client, connection) = hyper::client::conn::http1::handshake(io).await?;
    tokio::spawn(connection);
    let mut batches = 0;
    while tokio::time::Instant::now() < deadline {
        let request = hyper::Request::post("/api/v3/write_lp?db=bench&precision=ns")
            .header(hyper::header::HOST, "bench")
            .body(Full::new(body.clone()))?;
        client.ready().await?;
        let response = client.send_request(request).await?;
        let status = response.status();
        let answer = response.into_body().collect().await?.to_bytes();
        anyhow::ensure!(
            status == hyper::StatusCode::NO_CONTENT,
            "a write got {status}: {}",
            String::from_utf8_lossy(&answer)
        );
        batches += 1;
    }
    Ok(batches)
}

/// User and system CPU seconds of process `pid` so far, from `/proc/<pid>/stat`.
fn process_cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields
        .get(11..13)
        .context("a short /proc stat line")?
        .iter()
        .map(|field| field.parse::<f64>().unwrap_or(0.0))
        .sum();
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(ticks / per_second)
}

fn own_cpu_seconds() -> f64 {
    process_cpu_seconds(std::process::id()).unwrap_or(0.0)
}
