//! Dead letters: the lines a request's answer rejected, kept on the bus so
//! that an operator can see what a sender got wrong after the sender has
//! forgotten it.
//!
//! Topic `_dead_letters`, one partition (they are few and read rarely), the
//! log's default retention. One record per rejected line, no key, its value
//! JSON:
//!
//! ```json
//! {"db":"park","line_number":2,"reason":"field_type_conflict",
//!  "message":"field \"temp_c\" of …","raw":"weather temp_c=1i","sender":"2001:db8::7",
//!  "received_ns":1700000000000000000}
//! ```
//!
//! `reason` is the same label as in `nublar_ingest_rejected_lines_total`,
//! `raw` the line as sent (invalid UTF-8 replaced), `sender` the client's
//! address as in the telemetry batch headers. A request's dead letters are
//! one batch, with the request's batch key when it has one, so a retried
//! request adds no second copy.
//!
//! Bounded twice, so that a sender with a broken client cannot fill the
//! disk: at most `dead_letters_per_request_max` per request and
//! `dead_letters_per_sender_per_second` per sender (a token bucket per
//! address, for at most `DEAD_LETTER_SENDERS_MAX` addresses at once); the
//! rest are counted in `nublar_ingest_dead_letters_dropped_total`. They are
//! appended after the request's batch, and a failure to append them is
//! logged and counted, never the request's failure: the data matter more.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

use nublar_bus::{BatchBuilder, Compression, TopicConfig};
use serde::Serialize;

use crate::Inner;
use crate::admission::Rejected;
use crate::limits::DEAD_LETTER_SENDERS_MAX;

/// The topic rejected lines are kept in.
pub const DEAD_LETTERS_TOPIC: &str = "_dead_letters";

pub(crate) fn topic_config() -> TopicConfig {
    TopicConfig::with_partitions(1)
}

/// One token bucket per sender, refilled at the per-second bound.
pub(crate) struct SenderBuckets {
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
    per_second: usize,
}

struct Bucket {
    tokens: f64,
    refilled: Instant,
}

#[derive(Serialize)]
struct DeadLetter<'a> {
    db: &'a str,
    line_number: usize,
    reason: &'a str,
    message: &'a str,
    raw: &'a str,
    sender: &'a str,
    received_ns: i64,
}

/// What the write path knows of the request whose lines are rejected.
pub(crate) struct Origin<'a> {
    pub db: &'a str,
    pub sender: IpAddr,
    pub sender_text: &'a str,
    pub received_ns: i64,
    pub batch_key: Option<&'a str>,
    pub fingerprint: Option<nublar_bus::Fingerprint>,
}

/// Appends the first of `rejected` (the first rejected lines of a request,
/// in line order, of `rejected_total` in all) as dead letters, within the
/// bounds; counts what is written and what is not.
pub(crate) async fn append(
    inner: &Inner,
    origin: Origin<'_>,
    rejected: &[Rejected],
    rejected_total: usize,
) {
    if rejected_total == 0 {
        return;
    }
    let wanted = rejected
        .len()
        .min(inner.config.dead_letters_per_request_max);
    let granted = inner.dead_letter_buckets.take(origin.sender, wanted);
    let mut dropped = rejected_total - granted;
    if granted > 0 {
        let mut builder = BatchBuilder::new(Compression::Lz4);
        if let Some(key) = origin.batch_key {
            builder = builder
                .batch_key(key)
                .expect("the request's batch key already fit");
            if let Some(fingerprint) = origin.fingerprint {
                builder = builder.fingerprint(fingerprint);
            }
        }
        for line in &rejected[..granted] {
            let letter = DeadLetter {
                db: origin.db,
                line_number: line.line_number,
                reason: line.reason,
                message: &line.message,
                raw: &line.original_line,
                sender: origin.sender_text,
                received_ns: origin.received_ns,
            };
            let value = serde_json::to_vec(&letter).expect("a dead letter serialises");
            builder.push(None, &value, &[]);
        }
        let appended = match builder.finish() {
            Ok(batch) => inner
                .bus
                .append(DEAD_LETTERS_TOPIC, 0, batch)
                .await
                .map(|outcome| outcome.deduplicated)
                .map_err(|error| error.to_string()),
            Err(error) => Err(error.to_string()),
        };
        match appended {
            // A retried request's dead letters are already stored and counted.
            Ok(true) => dropped = 0,
            Ok(false) => inner.metrics.count_dead_letters(granted, 0),
            Err(error) => {
                tracing::warn!(
                    sender = origin.sender_text,
                    "{granted} dead letters were not stored: {error}"
                );
                dropped += granted;
            }
        }
    }
    inner.metrics.count_dead_letters(0, dropped);
}

impl SenderBuckets {
    pub(crate) fn new(per_second: usize) -> SenderBuckets {
        SenderBuckets {
            buckets: Mutex::new(HashMap::new()),
            per_second,
        }
    }

    /// Takes up to `wanted` tokens from `sender`'s bucket; returns how many.
    fn take(&self, sender: IpAddr, wanted: usize) -> usize {
        self.take_at(sender, wanted, Instant::now())
    }

    fn take_at(&self, sender: IpAddr, wanted: usize, now: Instant) -> usize {
        let rate = self.per_second as f64;
        let mut buckets = self.buckets.lock().unwrap();
        if !buckets.contains_key(&sender) && buckets.len() >= DEAD_LETTER_SENDERS_MAX {
            // A bucket that has refilled completely says nothing a new one
            // would not: forget those. When every bucket is still in use,
            // the new sender gets none until some refill (the memory bound
            // wins over a new sender's dead letters).
            buckets.retain(|_, bucket| {
                bucket.tokens + now.duration_since(bucket.refilled).as_secs_f64() * rate < rate
            });
            if buckets.len() >= DEAD_LETTER_SENDERS_MAX {
                return 0;
            }
        }
        let bucket = buckets.entry(sender).or_insert(Bucket {
            tokens: rate,
            refilled: now,
        });
        let elapsed = now.duration_since(bucket.refilled).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rate).min(rate);
        bucket.refilled = now;
        let granted = (bucket.tokens.floor() as usize).min(wanted);
        bucket.tokens -= granted as f64;
        granted
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::limits::DEAD_LETTERS_PER_SENDER_PER_SECOND_DEFAULT;

    #[test]
    fn each_sender_gets_its_rate_and_refills_over_time() {
        let buckets = SenderBuckets::new(DEAD_LETTERS_PER_SENDER_PER_SECOND_DEFAULT);
        let start = Instant::now();
        let a: IpAddr = "2001:db8::1".parse().unwrap();
        let b: IpAddr = "192.0.2.1".parse().unwrap();
        let rate = DEAD_LETTERS_PER_SENDER_PER_SECOND_DEFAULT;
        assert_eq!(buckets.take_at(a, rate - 10, start), rate - 10);
        assert_eq!(buckets.take_at(a, 100, start), 10);
        assert_eq!(buckets.take_at(a, 100, start), 0);
        assert_eq!(buckets.take_at(b, 100, start), 100);
        let later = start + Duration::from_millis(500);
        assert_eq!(buckets.take_at(a, rate, later), rate / 2);
        let much_later = start + Duration::from_secs(60);
        assert_eq!(buckets.take_at(a, rate * 2, much_later), rate);
    }

    #[test]
    fn the_number_of_senders_tracked_is_bounded() {
        let buckets = SenderBuckets::new(DEAD_LETTERS_PER_SENDER_PER_SECOND_DEFAULT);
        let start = Instant::now();
        for index in 0..DEAD_LETTER_SENDERS_MAX as u32 {
            let sender = IpAddr::from(std::net::Ipv4Addr::from(index));
            assert_eq!(buckets.take_at(sender, 1, start), 1);
        }
        let newcomer: IpAddr = "2001:db8::1".parse().unwrap();
        // Every bucket is in use: the newcomer gets none, and none is added.
        assert_eq!(buckets.take_at(newcomer, 1, start), 0);
        assert_eq!(
            buckets.buckets.lock().unwrap().len(),
            DEAD_LETTER_SENDERS_MAX
        );
        // Once they have refilled, they make room.
        let later = start + Duration::from_secs(1);
        assert_eq!(buckets.take_at(newcomer, 1, later), 1);
        assert_eq!(buckets.buckets.lock().unwrap().len(), 1);
    }
}
