//! Line protocol out of the generator: a file for `nublar sim --out`, request bodies for the
//! HTTP and UDP senders.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::net::Ipv6Addr;

use crate::generator::{Generator, SimEvent};
use crate::limits::{BATCH_LINES_MAX, BATCHER_PENDING_LINES_MAX};

/// Writes the next `count` events, one line each, and returns how many were written (fewer
/// only at the end of the generator's time). The output is flushed before returning.
pub fn write_lines(generator: &mut Generator, count: u64, out: &mut impl Write) -> io::Result<u64> {
    let mut buffer = Vec::with_capacity(WRITE_BUFFER_BYTES + 1024);
    let mut written = 0;
    while written < count {
        let Some(event) = generator.next_event() else {
            break;
        };
        event.write(&mut buffer);
        written += 1;
        if buffer.len() >= WRITE_BUFFER_BYTES {
            out.write_all(&buffer)?;
            buffer.clear();
        }
    }
    out.write_all(&buffer)?;
    out.flush()?;
    Ok(written)
}

/// The next `lines` events as one body, senders mixed: what a single client sends in one
/// request. `None` once the generator has ended and nothing is left.
pub fn next_batch(generator: &mut Generator, lines: usize) -> Option<Batch> {
    let mut batch = Batch {
        sender: None,
        body: Vec::new(),
        lines: 0,
    };
    while batch.lines < lines {
        let Some(event) = generator.next_event() else {
            break;
        };
        event.write(&mut batch.body);
        batch.lines += 1;
    }
    (batch.lines > 0).then_some(batch)
}

/// Whether a body holds the lines of many sensors (one client sending for all of them) or
/// of one sensor (each sensor sending from its own address, as with `--bind-prefix`, where
/// the gateway puts each sender's batch in its own partition).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grouping {
    Mixed,
    BySender,
}

/// One request body of whole lines, each ending in `\n`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// The one sender of every line, when grouped by sender.
    pub sender: Option<Ipv6Addr>,
    pub body: Vec<u8>,
    pub lines: usize,
}

/// Groups events into bodies of `lines_per_batch` lines. Sans-IO: the caller pushes events
/// and sends the batches that come out.
#[derive(Debug)]
pub struct Batcher {
    lines_per_batch: usize,
    grouping: Grouping,
    mixed: Batch,
    /// Ordered by address, so that a flush of every pending batch comes out the same way in
    /// every run.
    by_sender: BTreeMap<Ipv6Addr, Batch>,
    pending_lines: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("lines per batch must be from 1 to {BATCH_LINES_MAX}, not {0}")]
pub struct BatcherConfigError(pub usize);

impl Batcher {
    pub fn new(lines_per_batch: usize, grouping: Grouping) -> Result<Batcher, BatcherConfigError> {
        if !(1..=BATCH_LINES_MAX).contains(&lines_per_batch) {
            return Err(BatcherConfigError(lines_per_batch));
        }
        Ok(Batcher {
            lines_per_batch,
            grouping,
            mixed: empty_batch(None),
            by_sender: BTreeMap::new(),
            pending_lines: 0,
        })
    }

    /// Appends the batches the event completed to `ready`, oldest first. Grouped by sender,
    /// a batch is complete when full, and every pending batch is when all together hold
    /// [`BATCHER_PENDING_LINES_MAX`] lines.
    pub fn push(&mut self, event: &SimEvent, ready: &mut Vec<Batch>) {
        match self.grouping {
            Grouping::Mixed => {
                event.write(&mut self.mixed.body);
                self.mixed.lines += 1;
                if self.mixed.lines == self.lines_per_batch {
                    ready.push(std::mem::replace(&mut self.mixed, empty_batch(None)));
                }
            }
            Grouping::BySender => {
                let batch = self
                    .by_sender
                    .entry(event.sender)
                    .or_insert_with(|| empty_batch(Some(event.sender)));
                event.write(&mut batch.body);
                batch.lines += 1;
                self.pending_lines += 1;
                if batch.lines == self.lines_per_batch {
                    self.pending_lines -= batch.lines;
                    let full = self
                        .by_sender
                        .remove(&event.sender)
                        .expect("the batch was just written to");
                    ready.push(full);
                }
                if self.pending_lines >= BATCHER_PENDING_LINES_MAX {
                    self.finish(ready);
                }
            }
        }
    }

    /// Appends every batch not yet full to `ready`: the end of a run.
    pub fn finish(&mut self, ready: &mut Vec<Batch>) {
        if self.mixed.lines > 0 {
            ready.push(std::mem::replace(&mut self.mixed, empty_batch(None)));
        }
        ready.extend(std::mem::take(&mut self.by_sender).into_values());
        self.pending_lines = 0;
    }
}

/// Large enough that a file is written in few system calls, small enough to stay in cache.
const WRITE_BUFFER_BYTES: usize = 256 * 1024;

fn empty_batch(sender: Option<Ipv6Addr>) -> Batch {
    Batch {
        sender,
        body: Vec::new(),
        lines: 0,
    }
}
