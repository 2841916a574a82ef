//! The park's senders, made up from the seed: line protocol bodies of a few
//! measurements, now and then a line that does not parse, a field of the
//! wrong type, a repeated event, or one from the past.

use std::net::{IpAddr, Ipv6Addr};

use rand::Rng;
use rand::rngs::StdRng;

/// Sensors in the simulated park; each sends from its own address.
pub const SENDERS: u16 = 6;

pub fn sender_address(sender: u16) -> IpAddr {
    IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, sender + 1))
}

/// One request's body: `lines` lines at about `now_ns`.
pub fn body(rng: &mut StdRng, sender: u16, now_ns: i64) -> Vec<u8> {
    let lines = rng.random_range(1..12);
    let mut body = String::new();
    let mut previous: Option<String> = None;
    for _ in 0..lines {
        // Event time a little behind the clock; sometimes far behind (late for its window).
        let behind_ns = if rng.random_bool(0.05) {
            rng.random_range(0..120_000_000_000)
        } else {
            rng.random_range(0..2_000_000_000)
        };
        let time = now_ns - behind_ns;
        let line = match rng.random_range(0..100) {
            // A sender repeating itself: the duplicate filter's work.
            0..5 if previous.is_some() => previous.clone().unwrap_or_default(),
            5..8 => format!("weather,station=s{sender} temp_c= {time}"),
            // The wrong type for a field the park's schema already has.
            8..10 => format!(
                "weather,station=s{sender} temp_c={}i {time}",
                rng.random_range(0..40)
            ),
            10..40 => format!(
                "fence,segment=f{sender} volts={}i {time}",
                rng.random_range(5000..9000)
            ),
            40..50 => format!(
                "gate,gate=g{} open={} {time}",
                sender % 3,
                rng.random_bool(0.5)
            ),
            _ => format!(
                "weather,station=s{sender} temp_c={:.1},humidity={:.1} {time}",
                rng.random_range(-100..400) as f64 / 10.0,
                rng.random_range(0..1000) as f64 / 10.0
            ),
        };
        body.push_str(&line);
        body.push('\n');
        previous = Some(line);
    }
    body.into_bytes()
}
