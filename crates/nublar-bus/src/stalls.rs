//! Where consumers stopped because they could not read a batch, and the
//! operator's word to move past it.
//!
//! A consumer (the lake sink, the processors) that meets a batch it cannot
//! read (its CRC fails, it will not decompress, a record's framing is
//! broken) neither retries it forever nor skips it in silence: it stops that
//! partition where it is, records the stall here with the reason, and goes on
//! with its other partitions. Readiness and metrics show every stall. Only an
//! operator moves a stalled partition on (`nublar log skip`), to the batch
//! after the bad one or to an offset they name; the consumer then commits its
//! group past the gap, and the stall is logged and counted as skipped.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// A batch a consumer could not read: where it stopped, and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unreadable data at offset {offset}: {reason}")]
pub struct Unreadable {
    /// The first offset not taken.
    pub offset: i64,
    /// Where the next batch starts, when the bad one's header said.
    pub resume_at: Option<i64>,
    pub reason: String,
}

/// One consumer group's partition, stopped at `offset`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stall {
    pub group: String,
    pub topic: String,
    pub partition: u32,
    /// The first offset the consumer has not taken.
    pub offset: i64,
    /// Where the batch after the unreadable one starts, when its header said.
    pub resume_at: Option<i64>,
    pub reason: String,
    /// Where an operator said to go on from, not yet taken up by the consumer.
    pub skip_to: Option<i64>,
}

#[derive(Debug, Default)]
pub struct Stalls {
    stalls: Mutex<BTreeMap<(String, String, u32), Stall>>,
    changed: tokio::sync::Notify,
    stalled_total: AtomicU64,
    skipped_total: AtomicU64,
    skipped_offsets_total: AtomicU64,
}

impl Stalls {
    /// `group` cannot read `topic`/`partition` at `offset`: it stops there.
    pub fn stall(
        &self,
        group: &str,
        topic: &str,
        partition: u32,
        offset: i64,
        resume_at: Option<i64>,
        reason: &str,
    ) {
        let key = (group.to_owned(), topic.to_owned(), partition);
        let mut stalls = self.stalls.lock().unwrap();
        if stalls.get(&key).is_some_and(|stall| stall.offset == offset) {
            return;
        }
        self.stalled_total.fetch_add(1, Ordering::Relaxed);
        tracing::error!(
            group,
            topic,
            partition,
            offset,
            "a batch cannot be read: the partition stops here until an operator moves past it \
             (nublar log skip): {reason}"
        );
        stalls.insert(
            key,
            Stall {
                group: group.to_owned(),
                topic: topic.to_owned(),
                partition,
                offset,
                resume_at,
                reason: reason.to_owned(),
                skip_to: None,
            },
        );
    }

    /// The offset an operator said `group` should go on from, if they did.
    pub fn skip_to(&self, group: &str, topic: &str, partition: u32) -> Option<i64> {
        let key = (group.to_owned(), topic.to_owned(), partition);
        self.stalls.lock().unwrap().get(&key)?.skip_to
    }

    /// `group` has moved past its stall in `topic`/`partition`, to `to`.
    pub fn resumed(&self, group: &str, topic: &str, partition: u32, to: i64) {
        let key = (group.to_owned(), topic.to_owned(), partition);
        if let Some(stall) = self.stalls.lock().unwrap().remove(&key) {
            let skipped = (to - stall.offset).max(0) as u64;
            self.skipped_total.fetch_add(1, Ordering::Relaxed);
            self.skipped_offsets_total
                .fetch_add(skipped, Ordering::Relaxed);
            tracing::warn!(
                group,
                topic,
                partition,
                from = stall.offset,
                to,
                "moved past offsets {}..{to} on an operator's word; they are not consumed",
                stall.offset
            );
        }
        self.changed.notify_waiters();
    }

    /// An operator's word: `group` goes on in `topic`/`partition` from `to`, or from the batch
    /// after the unreadable one. Returns where it stopped and where it goes on.
    pub fn skip(
        &self,
        group: &str,
        topic: &str,
        partition: u32,
        to: Option<i64>,
    ) -> Result<(i64, i64), String> {
        let key = (group.to_owned(), topic.to_owned(), partition);
        let mut stalls = self.stalls.lock().unwrap();
        let Some(stall) = stalls.get_mut(&key) else {
            return Err(format!(
                "group {group:?} is not stopped in {topic}/{partition}; `nublar log stalls` \
                 lists where consumers stopped"
            ));
        };
        let to = match (to, stall.resume_at) {
            (Some(to), _) | (None, Some(to)) => to,
            (None, None) => {
                return Err(format!(
                    "the batch at offset {} could not be parsed, so where the next one starts is \
                     not known: say it with --to (`nublar log dump {topic} -p {partition} --from \
                     {}` shows the batches there)",
                    stall.offset, stall.offset
                ));
            }
        };
        if to <= stall.offset {
            return Err(format!(
                "--to {to} is not past offset {}, where group {group:?} stopped",
                stall.offset
            ));
        }
        stall.skip_to = Some(to);
        let from = stall.offset;
        drop(stalls);
        self.changed.notify_waiters();
        Ok((from, to))
    }

    /// Resolves when a stall may have been skipped; a consumer waits on it (with a time-out,
    /// since a wake-up before the wait began is not kept).
    pub async fn changed(&self) {
        self.changed.notified().await;
    }

    pub fn list(&self) -> Vec<Stall> {
        self.stalls.lock().unwrap().values().cloned().collect()
    }

    /// One line per stall, for readiness.
    pub fn problems(&self) -> Vec<String> {
        self.list()
            .into_iter()
            .map(|stall| {
                format!(
                    "{} stopped in {}/{} at offset {}: {} (nublar log skip {} -p {} --group {})",
                    stall.group,
                    stall.topic,
                    stall.partition,
                    stall.offset,
                    stall.reason,
                    stall.topic,
                    stall.partition,
                    stall.group
                )
            })
            .collect()
    }

    pub fn prometheus(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "# TYPE nublar_consumer_stalled_partitions gauge");
        let _ = writeln!(
            out,
            "nublar_consumer_stalled_partitions {}",
            self.stalls.lock().unwrap().len()
        );
        for (name, counter) in [
            ("nublar_consumer_stalls_total", &self.stalled_total),
            ("nublar_consumer_skips_total", &self.skipped_total),
            (
                "nublar_consumer_skipped_offsets_total",
                &self.skipped_offsets_total,
            ),
        ] {
            let _ = writeln!(out, "# TYPE {name} counter");
            let _ = writeln!(out, "{name} {}", counter.load(Ordering::Relaxed));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stall_is_moved_past_only_on_an_operators_word() {
        let stalls = Stalls::default();
        stalls.stall("lake", "telemetry", 3, 100, Some(120), "crc");
        stalls.stall("lake", "telemetry", 3, 100, Some(120), "crc");
        assert_eq!(stalls.list().len(), 1);
        assert_eq!(stalls.skip_to("lake", "telemetry", 3), None);
        assert!(stalls.skip("lake", "telemetry", 2, None).is_err());
        assert!(stalls.skip("lake", "telemetry", 3, Some(100)).is_err());
        assert_eq!(stalls.skip("lake", "telemetry", 3, None), Ok((100, 120)));
        assert_eq!(stalls.skip_to("lake", "telemetry", 3), Some(120));
        stalls.resumed("lake", "telemetry", 3, 120);
        assert!(stalls.list().is_empty());
        let metrics = stalls.prometheus();
        assert!(
            metrics.contains("nublar_consumer_stalls_total 1"),
            "{metrics}"
        );
        assert!(
            metrics.contains("nublar_consumer_skipped_offsets_total 20"),
            "{metrics}"
        );
        // Where the batch after a broken one starts is not always known.
        stalls.stall("processors", "telemetry", 0, 7, None, "bad length");
        let error = stalls.skip("processors", "telemetry", 0, None).unwrap_err();
        assert!(error.contains("--to"), "{error}");
        assert_eq!(
            stalls.skip("processors", "telemetry", 0, Some(9)),
            Ok((7, 9))
        );
    }
}
