//! The lake sink's decisions, without I/O.
//!
//! The sink reads the telemetry topic partition by partition, makes rows of
//! its records in one buffer per table, and now and then commits: every table
//! with rows first (each Delta commit records, per partition, the last offset
//! its rows hold), then the consumer group's offsets. [`SinkCore`] is that
//! bookkeeping and those choices: where each partition stands, which rows
//! wait for which table, when a commit is due, what it does in which order,
//! when a drain is done, how long to wait for records. Its driver does the
//! reading, the row making and the commits, and feeds back what happened;
//! the clock is a reading the driver passes. So the order that makes the lake
//! exactly once (no group offset past a row that no table holds) is decided
//! here, tested here without a disk, and run by the node's sink and by the
//! deterministic simulation alike.
//!
//! Why the order is enough: a group offset only moves past rows whose table
//! commits hold them, so after any crash the sink starts at or before every
//! row not in the lake; and each table's own positions tell the driver which
//! of the rows it reads again it already holds, so none lands twice.

use std::time::Duration;

/// When the sink commits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Rows waiting in all tables that make a commit due.
    pub rows_max: usize,
    /// Bytes waiting in all tables' buffers that make a commit due.
    pub bytes_max: usize,
    /// The longest a row waits for its commit.
    pub commit_interval: Duration,
}

/// Where a partition is read from when the sink starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StartAt {
    pub offset: i64,
    /// Records the group had not read that are gone from the log (an operator reclaimed
    /// its space, or retention passed them): the lake never sees them.
    pub lost: i64,
}

/// Where the group's committed offset (if any) and the log's first offset put the sink.
pub fn start_at(committed: Option<i64>, log_start: i64) -> StartAt {
    match committed {
        Some(offset) if offset < log_start => StartAt {
            offset: log_start,
            lost: log_start - offset,
        },
        Some(offset) => StartAt { offset, lost: 0 },
        None => StartAt {
            offset: log_start,
            lost: 0,
        },
    }
}

/// What the driver does after a pass over every partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AfterPass {
    /// Asked to stop: fetch each partition's end now and give it to [`SinkCore::drain_to`],
    /// then pass again. The drain reads up to there, so a stopped node's lake holds
    /// everything it acknowledged.
    FetchEnds,
    /// Commit when `commit` says so; then stop when `done`, wait for records at most `wait`
    /// when given, else pass again at once.
    Go {
        commit: bool,
        done: bool,
        wait: Option<Duration>,
    },
}

/// One step of a commit, in the order the steps must be taken.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CommitStep {
    /// Commit table `table`'s rows, recording for each partition listed the last offset
    /// its rows hold.
    Table {
        table: usize,
        positions: Vec<(u32, i64)>,
    },
    /// Commit the group's offsets, one per partition: where each is read from next.
    Group { offsets: Vec<i64> },
}

/// The rows one table holds toward its next commit.
#[derive(Clone, Debug, Default)]
struct TablePending {
    /// By partition: the last offset among the rows, `None` when they hold none of it.
    last: Vec<Option<i64>>,
    rows: usize,
    bytes: usize,
}

impl TablePending {
    fn is_empty(&self) -> bool {
        self.last.iter().all(Option::is_none)
    }
}

/// One run of the sink, from the group's offsets to a failure or a finished drain. After a
/// failure the driver drops it (and its tables' buffers) and starts another from the
/// offsets committed.
#[derive(Clone, Debug)]
pub struct SinkCore {
    limits: Limits,
    next: Vec<i64>,
    committed: Vec<i64>,
    stalled: Vec<bool>,
    drain_to: Option<Vec<i64>>,
    /// When the oldest row not yet committed was taken.
    oldest_pending: Option<Duration>,
    tables: Vec<TablePending>,
}

impl SinkCore {
    /// A run that reads each partition from `starts` (see [`start_at`]), taken to be what
    /// the group has committed.
    pub fn new(starts: Vec<i64>, limits: Limits) -> SinkCore {
        SinkCore {
            limits,
            stalled: vec![false; starts.len()],
            committed: starts.clone(),
            next: starts,
            drain_to: None,
            oldest_pending: None,
            tables: Vec::new(),
        }
    }

    pub fn partitions(&self) -> u32 {
        self.next.len() as u32
    }

    /// Where `partition` is read from next.
    pub fn next(&self, partition: u32) -> i64 {
        self.next[partition as usize]
    }

    /// What the group has committed, by partition, as far as this run knows.
    pub fn committed(&self) -> &[i64] {
        &self.committed
    }

    /// Whether `partition` waits at a batch that cannot be read, for an operator.
    pub fn is_stalled(&self, partition: u32) -> bool {
        self.stalled[partition as usize]
    }

    /// A table the driver opened: its rows are counted under the returned number.
    pub fn add_table(&mut self) -> usize {
        self.tables.push(TablePending {
            last: vec![None; self.next.len()],
            ..TablePending::default()
        });
        self.tables.len() - 1
    }

    /// A row of the record at `offset` of `partition` went into `table`'s buffer, which
    /// now takes `table_bytes`; `now` is the driver's clock.
    pub fn row_taken(
        &mut self,
        table: usize,
        partition: u32,
        offset: i64,
        table_bytes: usize,
        now: Duration,
    ) {
        let pending = &mut self.tables[table];
        pending.last[partition as usize] = Some(offset);
        pending.rows += 1;
        pending.bytes = table_bytes;
        self.oldest_pending.get_or_insert(now);
    }

    /// The records of `partition` before `next` are taken (made rows of, skipped, or found
    /// to be no row).
    pub fn advance(&mut self, partition: u32, next: i64) {
        let at = &mut self.next[partition as usize];
        debug_assert!(next >= *at, "a partition's position never goes back");
        *at = (*at).max(next);
    }

    /// `partition` stands at a batch that cannot be read, at `offset` (the rows before it
    /// taken): it is read no further until [`resume`](Self::resume).
    pub fn stall(&mut self, partition: u32, offset: i64) {
        self.advance(partition, offset);
        self.stalled[partition as usize] = true;
    }

    /// An operator moved a stalled `partition` on to `to`. The group moves past what lies
    /// between at the next commit, which is due now.
    pub fn resume(&mut self, partition: u32, to: i64) {
        let index = partition as usize;
        self.next[index] = self.next[index].max(to);
        self.stalled[index] = false;
    }

    /// Whether the rows waiting make a commit due before the partition's next read.
    pub fn full(&self) -> bool {
        let (rows, bytes) = self.tables.iter().fold((0, 0), |(rows, bytes), table| {
            (rows + table.rows, bytes + table.bytes)
        });
        rows >= self.limits.rows_max || bytes >= self.limits.bytes_max
    }

    /// The driver passed over every partition; `read_any` when some read returned records,
    /// `stop` once it is asked to stop.
    pub fn pass_done(&mut self, read_any: bool, stop: bool, now: Duration) -> AfterPass {
        if stop && self.drain_to.is_none() {
            return AfterPass::FetchEnds;
        }
        let done = self.drain_to.as_ref().is_some_and(|ends| {
            !read_any || self.next.iter().zip(ends).all(|(next, end)| next >= end)
        });
        let waited = self.oldest_pending.map(|oldest| now.saturating_sub(oldest));
        let due = waited.is_some_and(|waited| waited >= self.limits.commit_interval);
        let commit = done || due || (!read_any && self.next != self.committed);
        let wait = (!done && !read_any && self.drain_to.is_none()).then(|| match waited {
            Some(waited) if !commit => self.limits.commit_interval.saturating_sub(waited),
            _ => self.limits.commit_interval,
        });
        AfterPass::Go { commit, done, wait }
    }

    /// Each partition's end when the sink was asked to stop.
    pub fn drain_to(&mut self, ends: Vec<i64>) {
        self.drain_to = Some(ends);
    }

    /// Whether the run is draining.
    pub fn draining(&self) -> bool {
        self.drain_to.is_some()
    }

    /// What to wait for when nothing was read: by partition, the offset past which a record
    /// wakes the sink; `None` for a stalled partition, which waits for an operator instead.
    pub fn waiting(&self) -> Vec<Option<i64>> {
        self.next
            .iter()
            .zip(&self.stalled)
            .map(|(next, stalled)| (!stalled).then_some(*next))
            .collect()
    }

    /// A commit begins: the rows waiting are on their way, whatever comes of it.
    pub fn begin_commit(&mut self) {
        self.oldest_pending = None;
    }

    /// The commit's next step, `None` once it is complete. Every table with rows comes
    /// before the group's offsets: the group never moves past a row no table holds.
    pub fn commit_step(&self) -> Option<CommitStep> {
        if let Some((table, pending)) = self
            .tables
            .iter()
            .enumerate()
            .find(|(_, pending)| !pending.is_empty())
        {
            let positions = pending
                .last
                .iter()
                .enumerate()
                .filter_map(|(partition, last)| Some((partition as u32, (*last)?)))
                .collect();
            return Some(CommitStep::Table { table, positions });
        }
        (self.next != self.committed).then(|| CommitStep::Group {
            offsets: self.next.clone(),
        })
    }

    /// The driver took `step` and it succeeded.
    pub fn step_done(&mut self, step: &CommitStep) {
        match step {
            CommitStep::Table { table, .. } => {
                let pending = &mut self.tables[*table];
                pending.last.iter_mut().for_each(|last| *last = None);
                pending.rows = 0;
                pending.bytes = 0;
            }
            CommitStep::Group { offsets } => self.committed.clone_from(offsets),
        }
    }
}

#[cfg(test)]
mod tests;
