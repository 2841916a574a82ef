//! A `nublar serve` started by this program (the demo, benchmarks), and what they need to talk
//! to it: a child process that cannot outlive an error, its address, its metrics, and a
//! keep-alive HTTP connection for writes.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

/// A child process killed (and reaped) when dropped, whatever ended the program's work.
pub struct ChildGuard(pub Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        // SIGKILL ends a stopped process too. Errors mean it has ended already.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl ChildGuard {
    /// SIGTERM, then waits up to `limit` for the exit.
    pub fn terminate(&mut self, limit: Duration) -> anyhow::Result<()> {
        // SAFETY: kill only sends a signal to our own child's pid.
        unsafe {
            libc::kill(self.0.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + limit;
        while self.0.try_wait()?.is_none() {
            anyhow::ensure!(
                Instant::now() < deadline,
                "the node did not stop within {} s",
                limit.as_secs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }
}

/// Starts `nublar serve` (this executable) on `dir`, HTTP and UDP on ephemeral loopback
/// ports, with `extra` arguments; its stderr goes to `dir/node.log`. Returns once it listens.
pub fn start_node(dir: &Path, extra: &[&str]) -> anyhow::Result<(ChildGuard, SocketAddr)> {
    let exe = std::env::current_exe().context("finding this program")?;
    std::fs::create_dir_all(dir)?;
    let log = dir.join("node.log");
    let mut child = Command::new(exe)
        .arg("serve")
        .arg("--data")
        .arg(dir)
        .args(["--http", "127.0.0.1:0", "--udp", "127.0.0.1:0"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log)?)
        .spawn()
        .context("starting the node")?;
    let mut first = String::new();
    BufReader::new(child.stdout.take().expect("piped")).read_line(&mut first)?;
    let guard = ChildGuard(child);
    let http = first
        .strip_prefix("nublar listening http=")
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|address| address.parse().ok())
        .with_context(|| format!("the node did not start: see {}", log.display()))?;
    Ok((guard, http))
}

/// The node's `/metrics` page.
pub fn metrics_text(http: SocketAddr) -> anyhow::Result<String> {
    let (status, text) =
        nublar_node::log_command::http_request(http, "GET", "/metrics", None, b"")?;
    anyhow::ensure!(status == 200, "the node's /metrics answered {status}");
    Ok(text)
}

/// In a `/metrics` page, the sample of `series` when it names labels (`name{topic="x"}`), or
/// the sum of every sample of the metric `series` when it does not.
pub fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (found, value) = line.rsplit_once(' ')?;
            let matches = if series.contains('{') {
                found == series
            } else {
                found.split('{').next() == Some(series)
            };
            matches.then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

/// [`sample`] of the node's `/metrics` now.
pub fn metric(http: SocketAddr, series: &str) -> anyhow::Result<f64> {
    Ok(sample(&metrics_text(http)?, series))
}

/// One keep-alive HTTP/1.1 connection to a node, reconnecting when the node closes it.
pub struct Connection {
    address: SocketAddr,
    stream: Option<TcpStream>,
    buffer: Vec<u8>,
}

impl Connection {
    pub fn new(address: SocketAddr) -> Connection {
        Connection {
            address,
            stream: None,
            buffer: Vec::new(),
        }
    }

    /// Sends one request and returns the status and body.
    pub fn request(
        &mut self,
        method: &str,
        target: &str,
        body: &[u8],
    ) -> anyhow::Result<(u16, Vec<u8>)> {
        self.request_with(method, target, &[], body)
    }

    /// As [`Connection::request`], with more headers.
    pub fn request_with(
        &mut self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> anyhow::Result<(u16, Vec<u8>)> {
        let result = self.exchange(method, target, headers, body);
        if result.is_err() {
            self.stream = None;
        }
        result
    }

    fn exchange(
        &mut self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> anyhow::Result<(u16, Vec<u8>)> {
        if self.stream.is_none() {
            let stream = TcpStream::connect(self.address)?;
            stream.set_nodelay(true)?;
            stream.set_read_timeout(Some(Duration::from_secs(60)))?;
            self.stream = Some(stream);
        }
        let stream = self.stream.as_mut().expect("connected above");
        let mut head = format!(
            "{method} {target} HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\n",
            self.address,
            body.len()
        );
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes())?;
        stream.write_all(body)?;
        self.buffer.clear();
        let mut chunk = [0u8; 16 * 1024];
        let end = loop {
            if let Some(end) = self
                .buffer
                .windows(4)
                .position(|window| window == b"\r\n\r\n")
            {
                break end + 4;
            }
            let read = stream.read(&mut chunk)?;
            anyhow::ensure!(read > 0, "the node closed the connection");
            self.buffer.extend_from_slice(&chunk[..read]);
        };
        let head = String::from_utf8_lossy(&self.buffer[..end]).to_ascii_lowercase();
        let status: u16 = head
            .split(' ')
            .nth(1)
            .and_then(|status| status.parse().ok())
            .context("a status line")?;
        let length: usize = head
            .lines()
            .find_map(|line| line.strip_prefix("content-length:"))
            .and_then(|value| value.trim().parse().ok())
            .unwrap_or(0);
        while self.buffer.len() < end + length {
            let read = stream.read(&mut chunk)?;
            anyhow::ensure!(read > 0, "the node closed the connection");
            self.buffer.extend_from_slice(&chunk[..read]);
        }
        if head.contains("connection: close") {
            self.stream = None;
        }
        Ok((status, self.buffer[end..end + length].to_vec()))
    }
}

/// The value at quantile `q` of ascending `sorted` (nearest rank); 0 when empty.
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    let rank = ((sorted.len() as f64 * q).ceil() as usize).saturating_sub(1);
    sorted.get(rank).copied().unwrap_or(0.0)
}

/// `text` as a URL query value.
pub fn url_encoded(text: &str) -> String {
    let mut out = String::new();
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-_.~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// `nublar sim` sending the park's events to `http` at `rate` (0: as fast as acknowledged) for
/// `duration` seconds, 5,000 lines per request over 4 connections, its summary going to
/// `summary`.
pub fn start_load(
    http: SocketAddr,
    rate: u64,
    duration: f64,
    summary: &Path,
) -> anyhow::Result<ChildGuard> {
    let sim = Command::new(std::env::current_exe()?)
        .arg("sim")
        .args(["--target", &format!("http://{http}")])
        .args(["--rate", &rate.to_string()])
        .args(["--duration", &duration.to_string()])
        .args(["--batch", "5000", "--concurrency", "4"])
        .arg("--summary-json")
        .arg(summary)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting the simulator")?;
    Ok(ChildGuard(sim))
}

/// Waits for the simulator started by [`start_load`]; (events acknowledged, seconds).
pub fn finish_load(mut sim: ChildGuard, summary: &Path) -> anyhow::Result<(f64, f64)> {
    let status = sim.0.wait()?;
    anyhow::ensure!(status.success(), "the simulator ended with {status}");
    let summary: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(summary).context("reading the simulator's summary")?,
    )?;
    Ok((
        summary["acknowledged"].as_f64().unwrap_or(0.0),
        summary["seconds"].as_f64().unwrap_or(f64::NAN),
    ))
}
