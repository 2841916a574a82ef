//! The gateway's counters, rendered in Prometheus' text format. Counted per
//! request and per batch, never per event on a hot path beyond one add.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// Bucket bounds in seconds for the latency histograms: from a fast
/// page-cache append to a slow disk's sync under load.
const LATENCY_BUCKETS_S: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A Prometheus histogram: cumulative counts per upper bound, a sum and a count.
#[derive(Default)]
struct Histogram {
    buckets: [AtomicU64; LATENCY_BUCKETS_S.len()],
    sum_us: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    fn observe(&self, seconds: f64) {
        if let Some(at) = LATENCY_BUCKETS_S.iter().position(|&bound| seconds <= bound) {
            self.buckets[at].fetch_add(1, Ordering::Relaxed);
        }
        self.sum_us
            .fetch_add((seconds * 1e6) as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        for (bound, bucket) in LATENCY_BUCKETS_S.iter().zip(&self.buckets) {
            cumulative += bucket.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels}le=\"{bound}\"}} {cumulative}");
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels}le=\"+Inf\"}} {count}");
        let sum = self.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{}}}", labels.trim_end_matches(','))
        };
        let _ = writeln!(out, "{name}_sum{braces} {sum}");
        let _ = writeln!(out, "{name}_count{braces} {count}");
    }
}

#[derive(Default)]
pub struct Metrics {
    request_seconds: Mutex<BTreeMap<&'static str, std::sync::Arc<Histogram>>>,
    append_seconds: Histogram,
    requests: Mutex<BTreeMap<(&'static str, u16), u64>>,
    accepted_lines_total: AtomicU64,
    rejected_lines: Mutex<BTreeMap<&'static str, u64>>,
    received_bytes_total: AtomicU64,
    udp_dropped_total: AtomicU64,
    refused_connections_total: AtomicU64,
    idempotent_replays_total: AtomicU64,
    tls_handshake_failures_total: AtomicU64,
    dead_letters_total: AtomicU64,
    dead_letters_dropped_total: AtomicU64,
}

impl Metrics {
    pub fn count_request(&self, endpoint: &'static str, status: u16) {
        *self
            .requests
            .lock()
            .unwrap()
            .entry((endpoint, status))
            .or_default() += 1;
    }

    /// How long a write request took, from its arrival to its answer.
    pub fn observe_request(&self, endpoint: &'static str, seconds: f64) {
        let histogram = self
            .request_seconds
            .lock()
            .unwrap()
            .entry(endpoint)
            .or_default()
            .clone();
        histogram.observe(seconds);
    }

    /// How long the bus took to give a batch its guarantee.
    pub fn observe_append(&self, seconds: f64) {
        self.append_seconds.observe(seconds);
    }

    pub fn count_lines(&self, accepted: usize, rejected_by_reason: &BTreeMap<&'static str, u64>) {
        self.accepted_lines_total
            .fetch_add(accepted as u64, Ordering::Relaxed);
        let mut rejected = self.rejected_lines.lock().unwrap();
        for (reason, count) in rejected_by_reason {
            *rejected.entry(reason).or_default() += count;
        }
    }

    pub fn count_bytes(&self, bytes: usize) {
        self.received_bytes_total
            .fetch_add(bytes as u64, Ordering::Relaxed);
    }

    pub fn count_refused_connection(&self) {
        self.refused_connections_total
            .fetch_add(1, Ordering::Relaxed);
    }

    /// A retry of a stored request, answered without storing it again.
    pub fn count_replay(&self) {
        self.idempotent_replays_total
            .fetch_add(1, Ordering::Relaxed);
    }

    /// A TLS handshake that failed or did not end in time.
    pub fn count_tls_handshake_failure(&self) {
        self.tls_handshake_failures_total
            .fetch_add(1, Ordering::Relaxed);
    }

    pub fn count_udp_drop(&self) {
        self.udp_dropped_total.fetch_add(1, Ordering::Relaxed);
    }

    /// Dead letters stored, and rejected lines not stored as dead letters
    /// (past a bound, or because the append failed).
    pub fn count_dead_letters(&self, stored: usize, dropped: usize) {
        self.dead_letters_total
            .fetch_add(stored as u64, Ordering::Relaxed);
        self.dead_letters_dropped_total
            .fetch_add(dropped as u64, Ordering::Relaxed);
    }

    pub fn dead_letters_total(&self) -> u64 {
        self.dead_letters_total.load(Ordering::Relaxed)
    }

    pub fn dead_letters_dropped_total(&self) -> u64 {
        self.dead_letters_dropped_total.load(Ordering::Relaxed)
    }

    pub fn accepted_lines_total(&self) -> u64 {
        self.accepted_lines_total.load(Ordering::Relaxed)
    }

    pub fn rejected_lines_total(&self, reason: &str) -> u64 {
        self.rejected_lines
            .lock()
            .unwrap()
            .get(reason)
            .copied()
            .unwrap_or(0)
    }

    pub fn render(&self, in_flight_bytes: usize) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "# TYPE nublar_http_requests_total counter");
        for ((endpoint, status), count) in self.requests.lock().unwrap().iter() {
            let _ = writeln!(
                out,
                "nublar_http_requests_total{{endpoint=\"{endpoint}\",status=\"{status}\"}} {count}"
            );
        }
        let _ = writeln!(out, "# TYPE nublar_http_request_duration_seconds histogram");
        for (endpoint, histogram) in self.request_seconds.lock().unwrap().iter() {
            let labels = format!("endpoint=\"{endpoint}\",");
            histogram.render(&mut out, "nublar_http_request_duration_seconds", &labels);
        }
        let _ = writeln!(
            out,
            "# TYPE nublar_ingest_append_duration_seconds histogram"
        );
        self.append_seconds
            .render(&mut out, "nublar_ingest_append_duration_seconds", "");
        let _ = writeln!(out, "# TYPE nublar_ingest_accepted_lines_total counter");
        let accepted = self.accepted_lines_total.load(Ordering::Relaxed);
        let _ = writeln!(out, "nublar_ingest_accepted_lines_total {accepted}");
        let _ = writeln!(out, "# TYPE nublar_ingest_rejected_lines_total counter");
        for (reason, count) in self.rejected_lines.lock().unwrap().iter() {
            let _ = writeln!(
                out,
                "nublar_ingest_rejected_lines_total{{reason=\"{reason}\"}} {count}"
            );
        }
        let _ = writeln!(out, "# TYPE nublar_ingest_dead_letters_total counter");
        let stored = self.dead_letters_total.load(Ordering::Relaxed);
        let _ = writeln!(out, "nublar_ingest_dead_letters_total {stored}");
        let _ = writeln!(
            out,
            "# TYPE nublar_ingest_dead_letters_dropped_total counter"
        );
        let dropped = self.dead_letters_dropped_total.load(Ordering::Relaxed);
        let _ = writeln!(out, "nublar_ingest_dead_letters_dropped_total {dropped}");
        let _ = writeln!(out, "# TYPE nublar_ingest_received_bytes_total counter");
        let bytes = self.received_bytes_total.load(Ordering::Relaxed);
        let _ = writeln!(out, "nublar_ingest_received_bytes_total {bytes}");
        let _ = writeln!(out, "# TYPE nublar_ingest_in_flight_bytes gauge");
        let _ = writeln!(out, "nublar_ingest_in_flight_bytes {in_flight_bytes}");
        let _ = writeln!(out, "# TYPE nublar_udp_dropped_datagrams_total counter");
        let dropped = self.udp_dropped_total.load(Ordering::Relaxed);
        let _ = writeln!(out, "nublar_udp_dropped_datagrams_total {dropped}");
        let _ = writeln!(out, "# TYPE nublar_http_refused_connections_total counter");
        let refused = self.refused_connections_total.load(Ordering::Relaxed);
        let _ = writeln!(out, "nublar_http_refused_connections_total {refused}");
        let _ = writeln!(out, "# TYPE nublar_ingest_idempotent_replays_total counter");
        let replays = self.idempotent_replays_total.load(Ordering::Relaxed);
        let _ = writeln!(out, "nublar_ingest_idempotent_replays_total {replays}");
        let _ = writeln!(
            out,
            "# TYPE nublar_http_tls_handshake_failures_total counter"
        );
        let failures = self.tls_handshake_failures_total.load(Ordering::Relaxed);
        let _ = writeln!(out, "nublar_http_tls_handshake_failures_total {failures}");
        out
    }
}

/// The inode of a socket, by which the kernel's tables name it; `None` where `/proc` is not
/// there (not Linux).
pub(crate) fn socket_inode(socket: &impl std::os::fd::AsRawFd) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    let path = format!("/proc/self/fd/{}", socket.as_raw_fd());
    std::fs::metadata(path).ok().map(|metadata| metadata.ino())
}

/// Datagrams the kernel dropped for the sockets with these inodes because their receive
/// buffers were full: sent to nublar but never seen by it. `None` when there are no such
/// sockets or the kernel does not say (not Linux).
pub(crate) fn kernel_udp_drops(inodes: &[u64]) -> Option<u64> {
    if inodes.is_empty() {
        return None;
    }
    let mut total = None;
    for table in ["/proc/net/udp", "/proc/net/udp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for (inode, drops) in udp_table_drops(&text) {
            if inodes.contains(&inode) {
                *total.get_or_insert(0) += drops;
            }
        }
    }
    total
}

/// (inode, drops) of each socket in a `/proc/net/udp` or `/proc/net/udp6` table.
fn udp_table_drops(text: &str) -> impl Iterator<Item = (u64, u64)> + '_ {
    text.lines().skip(1).filter_map(|line| {
        let columns: Vec<&str> = line.split_whitespace().collect();
        Some((
            columns.get(9)?.parse().ok()?,
            columns.get(12)?.parse().ok()?,
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kernel_udp_table_gives_drops_by_inode() {
        let table = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n\
            \x20  42: 0100007F:1F99 00000000:0000 07 00000000:00034100 00:00000000 00000000     0        0 918273 2 0000000000000000 1734\n\
            \x20  43: 00000000:0202 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 5 2 0000000000000000 0\n\
            garbage\n";
        let rows: Vec<(u64, u64)> = udp_table_drops(table).collect();
        assert_eq!(rows, [(918273, 1734), (5, 0)]);
    }
}
