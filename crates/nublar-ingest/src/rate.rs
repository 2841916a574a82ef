//! Per-token rate limits in events per second.
//!
//! Each limited token has a bucket that refills at its rate and holds at most
//! one second of it. A request is admitted while the bucket is not in debt,
//! and its events are then taken whatever their number, which may put the
//! bucket in debt: a batch larger than one second's worth still goes through
//! (a sender's batch size is not the operator's business), and the requests
//! after it are refused with 429 until the debt is paid. Over any stretch of
//! time, a token writes at most its rate plus one second's worth plus one
//! request.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Default)]
pub(crate) struct RateLimits {
    buckets: Mutex<HashMap<String, Bucket>>,
}

struct Bucket {
    rate: u64,
    /// Events that may still be taken; negative while in debt.
    level: f64,
    updated: Instant,
}

impl Bucket {
    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.level = (self.level + elapsed * self.rate as f64).min(self.rate as f64);
        self.updated = now;
    }

    /// How long until the bucket is out of debt.
    fn wait(&self) -> Duration {
        Duration::from_secs_f64((-self.level).max(0.0) / self.rate as f64)
    }
}

impl RateLimits {
    /// Whether `token` may write now; `Err` holds how long to wait.
    pub fn admit(&self, token: &str, rate: u64) -> Result<(), Duration> {
        self.take(token, rate, 0)
    }

    /// Takes `events` from `token`'s bucket, unless it is in debt.
    pub fn take(&self, token: &str, rate: u64, events: u64) -> Result<(), Duration> {
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap();
        let bucket = buckets.entry(token.to_owned()).or_insert_with(|| Bucket {
            rate,
            level: rate as f64,
            updated: now,
        });
        if bucket.rate != rate {
            // A reloaded limit starts afresh rather than inherit a debt
            // computed at the old rate.
            *bucket = Bucket {
                rate,
                level: rate as f64,
                updated: now,
            };
        }
        bucket.refill(now);
        if bucket.level < 0.0 {
            return Err(bucket.wait());
        }
        bucket.level -= events as f64;
        Ok(())
    }

    /// Forgets the buckets of tokens no longer configured.
    pub fn retain(&self, names: &[&str]) {
        self.buckets
            .lock()
            .unwrap()
            .retain(|name, _| names.contains(&name.as_str()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_in_debt_waits_until_its_rate_has_paid_it() {
        let limits = RateLimits::default();
        // One second's worth, then a batch far larger: both admitted.
        limits.take("collars", 100, 100).unwrap();
        limits.take("collars", 100, 1000).unwrap_or_else(|wait| {
            panic!("a bucket at zero is not in debt, yet it said wait {wait:?}")
        });
        // Now about 1,000 events in debt: about ten seconds at 100/s.
        let wait = limits.admit("collars", 100).unwrap_err();
        assert!(
            wait > Duration::from_secs(9) && wait <= Duration::from_secs(10),
            "{wait:?}"
        );
        // Other tokens are not affected; a changed rate starts afresh.
        limits.admit("weather", 100).unwrap();
        limits.admit("collars", 5000).unwrap();
        limits.retain(&["weather"]);
        assert_eq!(limits.buckets.lock().unwrap().len(), 1);
    }
}
