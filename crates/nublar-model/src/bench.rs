//! The parser benchmark, kept in the library so that the binary can run it on any machine
//! (`nublar bench parse`) and the test suite runs it with tiny parameters, so it cannot rot.

use std::hint::black_box;
use std::time::Instant;

use crate::event::Precision;
use crate::limits::ParseLimits;
use crate::line_protocol::parse_lines;

/// The body is generated once and parsed repeatedly; this bounds its size (about 10 MB, the
/// largest request body the gateway accepts) however many lines are asked for.
pub const BODY_LINES_MAX: usize = 100_000;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ParseReport {
    pub lines_per_s: f64,
    pub mb_per_s: f64,
    /// Lines parsed in total, over every pass over the body.
    pub lines: usize,
    /// Bytes parsed in total.
    pub bytes: usize,
}

/// Parses a realistic park body (collars, weather stations, fences and gates, with
/// nanosecond timestamps) with full validation on the calling thread, until `lines` lines
/// are parsed or `seconds_max` seconds have passed, whichever comes first; at least one pass
/// over the body is always made.
pub fn parse_throughput(lines: usize, seconds_max: f64) -> ParseReport {
    let body = park_body(lines.clamp(1, BODY_LINES_MAX), 0x6e75_626c_6172);
    let limits = ParseLimits::default();
    let started = Instant::now();
    let mut lines_parsed = 0;
    let mut bytes_parsed = 0;
    loop {
        for (line_number, result) in parse_lines(&body, Precision::Ns, limits) {
            // The body is generated here, so a rejected line is a bug in this module or in
            // the parser, never a property of the input.
            assert!(
                result.is_ok(),
                "generated line {line_number} rejected: {result:?}"
            );
            black_box(&result);
            lines_parsed += 1;
        }
        bytes_parsed += body.len();
        if lines_parsed >= lines || started.elapsed().as_secs_f64() >= seconds_max {
            break;
        }
    }
    let seconds = started.elapsed().as_secs_f64().max(f64::MIN_POSITIVE);
    ParseReport {
        lines_per_s: lines_parsed as f64 / seconds,
        mb_per_s: bytes_parsed as f64 / 1e6 / seconds,
        lines: lines_parsed,
        bytes: bytes_parsed,
    }
}

/// A body of `lines` lines as the park's sensors send them: half collar fixes, then weather,
/// fence and gate readings. The same seed gives the same body.
pub fn park_body(lines: usize, seed: u64) -> Vec<u8> {
    let mut random = SplitMix64(seed);
    let mut body = Vec::with_capacity(lines * 110);
    let mut timestamp_ns: i64 = 1_700_000_000_000_000_000;
    for _ in 0..lines {
        timestamp_ns += 1_000_000 + (random.next() % 1_000_000) as i64;
        let paddock = random.next() % 24;
        let line = match random.next() % 10 {
            0..=4 => {
                const SPECIES: [&str; 4] = [
                    "triceratops",
                    "gallimimus",
                    "brachiosaurus",
                    "parasaurolophus",
                ];
                format!(
                    "collar,animal=a-{:04},species={},paddock=p-{paddock:02} lat={:.6},lon={:.6},\
                     heart_bpm={}i,speed_ms={:.2} {timestamp_ns}\n",
                    random.next() % 5000,
                    SPECIES[(random.next() % 4) as usize],
                    -8.5 + random.unit() * 0.2,
                    115.1 + random.unit() * 0.2,
                    30 + random.next() % 90,
                    random.unit() * 12.0,
                )
            }
            5..=6 => {
                const HABITATS: [&str; 4] = ["savanna", "jungle", "swamp", "highland"];
                format!(
                    "weather,habitat={},station=ws-{:03} temp_c={:.1},humidity={:.1},\
                     wind_ms={:.1} {timestamp_ns}\n",
                    HABITATS[(random.next() % 4) as usize],
                    random.next() % 200,
                    15.0 + random.unit() * 20.0,
                    20.0 + random.unit() * 70.0,
                    random.unit() * 15.0,
                )
            }
            7..=8 => format!(
                "fence,paddock=p-{paddock:02},segment=s-{:03} voltage_kv={:.2} {timestamp_ns}\n",
                random.next() % 400,
                9.0 + random.unit() * 2.0,
            ),
            _ => format!(
                "gate,gate=g-{:02},paddock=p-{paddock:02} open={} {timestamp_ns}\n",
                random.next() % 60,
                if random.next().is_multiple_of(2) {
                    "true"
                } else {
                    "false"
                },
            ),
        };
        body.extend_from_slice(line.as_bytes());
    }
    body
}

/// A tiny deterministic generator, so that the benchmark needs no dependency and every run
/// parses the same body.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut mixed = self.0;
        mixed = (mixed ^ (mixed >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        mixed = (mixed ^ (mixed >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        mixed ^ (mixed >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_throughput_runs_with_tiny_parameters() {
        let report = parse_throughput(1_000, 5.0);
        assert!(report.lines >= 1_000);
        assert!(report.bytes > 50 * report.lines && report.bytes < 150 * report.lines);
        assert!(report.lines_per_s > 0.0 && report.mb_per_s > 0.0);
    }

    /// Run in release for the figure to mean anything:
    /// `NUBLAR_BENCH_PARSE_LINES=20000000 cargo test -p nublar-model --release -- --nocapture
    /// bench_parse_speed`.
    #[test]
    fn bench_parse_speed() {
        let lines = std::env::var("NUBLAR_BENCH_PARSE_LINES")
            .ok()
            .and_then(|lines| lines.parse().ok())
            .unwrap_or(10_000);
        let report = parse_throughput(lines, 60.0);
        println!(
            "parse: {} lines, {} bytes, {:.0} lines/s, {:.1} MB/s, {:.1} bytes/line",
            report.lines,
            report.bytes,
            report.lines_per_s,
            report.mb_per_s,
            report.bytes as f64 / report.lines as f64
        );
        assert!(report.lines >= lines.min(BODY_LINES_MAX));
    }

    #[test]
    fn park_body_mixes_all_four_measurements() {
        let body = park_body(1_000, 7);
        let text = std::str::from_utf8(&body).unwrap();
        for measurement in ["collar,", "weather,", "fence,", "gate,"] {
            assert!(
                text.lines().any(|line| line.starts_with(measurement)),
                "{measurement}"
            );
        }
        assert_eq!(body, park_body(1_000, 7));
    }
}
