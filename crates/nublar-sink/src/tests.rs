use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;

fn limits(rows_max: usize) -> Limits {
    Limits {
        rows_max,
        bytes_max: usize::MAX,
        commit_interval: Duration::from_secs(1),
    }
}

fn steps(core: &mut SinkCore) -> Vec<CommitStep> {
    core.begin_commit();
    let mut taken = Vec::new();
    while let Some(step) = core.commit_step() {
        core.step_done(&step);
        taken.push(step);
    }
    taken
}

#[test]
fn a_commit_takes_every_table_before_the_group() {
    let mut core = SinkCore::new(vec![0, 10], limits(100));
    let weather = core.add_table();
    let fence = core.add_table();
    core.row_taken(weather, 0, 0, 64, Duration::ZERO);
    core.row_taken(fence, 1, 10, 64, Duration::ZERO);
    core.row_taken(weather, 1, 11, 128, Duration::ZERO);
    core.advance(0, 1);
    core.advance(1, 12);
    assert_eq!(
        steps(&mut core),
        vec![
            CommitStep::Table {
                table: weather,
                positions: vec![(0, 0), (1, 11)]
            },
            CommitStep::Table {
                table: fence,
                positions: vec![(1, 10)]
            },
            CommitStep::Group {
                offsets: vec![1, 12]
            },
        ]
    );
    assert_eq!(core.committed(), &[1, 12]);
    assert_eq!(steps(&mut core), vec![], "nothing moved, nothing to commit");
}

#[test]
fn records_that_make_no_row_still_move_the_group() {
    let mut core = SinkCore::new(vec![5], limits(100));
    core.advance(0, 9);
    assert_eq!(
        core.pass_done(true, false, Duration::ZERO),
        AfterPass::Go {
            commit: false,
            done: false,
            wait: None
        }
    );
    // A pass that read nothing commits what moved.
    assert_eq!(
        core.pass_done(false, false, Duration::ZERO),
        AfterPass::Go {
            commit: true,
            done: false,
            wait: Some(Duration::from_secs(1))
        }
    );
    assert_eq!(
        steps(&mut core),
        vec![CommitStep::Group { offsets: vec![9] }]
    );
}

#[test]
fn a_row_waits_at_most_the_commit_interval() {
    let mut core = SinkCore::new(vec![0], limits(100));
    let table = core.add_table();
    core.row_taken(table, 0, 0, 10, Duration::from_millis(100));
    core.advance(0, 1);
    let at = |ms| Duration::from_millis(ms);
    assert_eq!(
        core.pass_done(true, false, at(300)),
        AfterPass::Go {
            commit: false,
            done: false,
            wait: None
        }
    );
    // Nothing new: wait out the rest of the oldest row's interval.
    core.row_taken(table, 0, 1, 20, at(400));
    core.advance(0, 2);
    let AfterPass::Go { commit, wait, .. } = core.pass_done(false, false, at(400)) else {
        panic!("not stopping");
    };
    // Read nothing but moved: committed at once.
    assert!(commit);
    assert_eq!(wait, Some(at(1000)));
    steps(&mut core);
    core.row_taken(table, 0, 2, 10, at(500));
    core.advance(0, 3);
    let AfterPass::Go { commit, .. } = core.pass_done(true, false, at(1499)) else {
        panic!("not stopping");
    };
    assert!(!commit);
    let AfterPass::Go { commit, .. } = core.pass_done(true, false, at(1500)) else {
        panic!("not stopping");
    };
    assert!(commit, "due after one interval");
}

#[test]
fn full_buffers_make_a_commit_due_by_rows_or_bytes() {
    let mut core = SinkCore::new(vec![0], limits(2));
    let table = core.add_table();
    core.row_taken(table, 0, 0, 10, Duration::ZERO);
    assert!(!core.full());
    core.row_taken(table, 0, 1, 20, Duration::ZERO);
    assert!(core.full());
    steps(&mut core);
    assert!(!core.full());

    let mut core = SinkCore::new(
        vec![0],
        Limits {
            bytes_max: 100,
            ..limits(1000)
        },
    );
    let a = core.add_table();
    let b = core.add_table();
    core.row_taken(a, 0, 0, 60, Duration::ZERO);
    assert!(!core.full());
    core.row_taken(b, 0, 1, 40, Duration::ZERO);
    assert!(core.full(), "bytes count over every table");
}

#[test]
fn a_drain_reads_to_the_ends_at_the_stop_then_commits_and_ends() {
    let mut core = SinkCore::new(vec![0, 0], limits(100));
    assert_eq!(
        core.pass_done(true, true, Duration::ZERO),
        AfterPass::FetchEnds
    );
    core.drain_to(vec![3, 0]);
    core.advance(0, 2);
    assert_eq!(
        core.pass_done(true, true, Duration::ZERO),
        AfterPass::Go {
            commit: false,
            done: false,
            wait: None
        },
        "records remain before the end"
    );
    core.advance(0, 3);
    assert_eq!(
        core.pass_done(true, true, Duration::ZERO),
        AfterPass::Go {
            commit: true,
            done: true,
            wait: None
        }
    );
}

#[test]
fn a_stalled_partition_is_not_waited_on_and_resuming_moves_the_group() {
    let mut core = SinkCore::new(vec![0, 0], limits(100));
    core.stall(1, 4);
    assert!(core.is_stalled(1));
    assert_eq!(core.waiting(), vec![Some(0), None]);
    core.resume(1, 9);
    assert!(!core.is_stalled(1));
    assert_eq!(
        steps(&mut core),
        vec![CommitStep::Group {
            offsets: vec![0, 9]
        }]
    );
}

#[test]
fn the_start_is_the_commit_or_the_logs_start_past_it() {
    assert_eq!(start_at(None, 7), StartAt { offset: 7, lost: 0 });
    assert_eq!(start_at(Some(9), 7), StartAt { offset: 9, lost: 0 });
    assert_eq!(start_at(Some(3), 7), StartAt { offset: 7, lost: 4 });
}

/// A table as Delta keeps it: committed rows, and per partition the last offset a commit
/// recorded.
#[derive(Default)]
struct Table {
    rows: Vec<(u32, i64)>,
    positions: BTreeMap<u32, i64>,
}

impl Table {
    fn holds(&self, partition: u32, offset: i64) -> bool {
        self.positions
            .get(&partition)
            .is_some_and(|last| offset <= *last)
    }
}

#[derive(Clone, Debug)]
enum Op {
    /// Read up to this many records of a partition.
    Read(u32, usize),
    /// A pass ends; time moves on by this many milliseconds.
    Pass(u64),
    /// The sink crashes after this many steps of its next commit.
    CrashInCommit(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u32..3, 1usize..6).prop_map(|(partition, count)| Op::Read(partition, count)),
        2 => (0u64..1500).prop_map(Op::Pass),
        1 => (0usize..4).prop_map(Op::CrashInCommit),
    ]
}

/// What survives a crash of the sink: the tables and the group's offsets.
struct Durable {
    tables: Vec<Table>,
    group: Vec<i64>,
}

/// One commit, the rows of each table landing with its step. Crashing after `crash_after`
/// steps loses the run, its buffers with it: answers whether the commit finished.
fn commit(
    core: &mut SinkCore,
    durable: &mut Durable,
    buffers: &mut [Vec<(u32, i64)>],
    crash_after: &mut Option<usize>,
) -> bool {
    core.begin_commit();
    let mut taken = 0;
    while let Some(step) = core.commit_step() {
        if crash_after.take_if(|after| *after == taken).is_some() {
            buffers.iter_mut().for_each(Vec::clear);
            return false;
        }
        match &step {
            CommitStep::Table { table, positions } => {
                let landing = &mut durable.tables[*table];
                landing.rows.append(&mut buffers[*table]);
                for (partition, last) in positions {
                    landing.positions.insert(*partition, *last);
                }
            }
            CommitStep::Group { offsets } => durable.group.clone_from(offsets),
        }
        core.step_done(&step);
        taken += 1;
    }
    true
}

/// Makes rows of `partition`'s records from where the core stands up to `to`, as the
/// node's sink does: a row a table already holds is skipped.
fn read(
    core: &mut SinkCore,
    durable: &Durable,
    buffers: &mut [Vec<(u32, i64)>],
    partition: u32,
    to: i64,
    now: Duration,
) -> bool {
    let from = core.next(partition);
    for offset in from..to {
        let table = (offset % 3) as usize;
        if durable.tables[table].holds(partition, offset) {
            continue;
        }
        buffers[table].push((partition, offset));
        core.row_taken(table, partition, offset, 0, now);
    }
    core.advance(partition, to.max(from));
    to > from
}

/// Drives the core over a log of `records` per partition whose record `o` belongs to table
/// `o % 3`, with crashes inside commits, then drains. Every record must end in exactly one
/// table, once.
fn run(records: i64, ops: &[Op], rows_max: usize) -> Result<(), TestCaseError> {
    let partitions = 3u32;
    let mut durable = Durable {
        tables: (0..3).map(|_| Table::default()).collect(),
        group: vec![0; partitions as usize],
    };
    let start = |group: &[i64]| {
        let mut core = SinkCore::new(group.to_vec(), limits(rows_max));
        for _ in 0..3 {
            core.add_table();
        }
        core
    };
    let mut core = start(&durable.group);
    let mut buffers: Vec<Vec<(u32, i64)>> = vec![Vec::new(); 3];
    let mut now = Duration::ZERO;
    let mut crash_after = None;
    let mut read_any = false;
    for op in ops {
        let due = match op {
            Op::Read(partition, count) => {
                let to = (core.next(*partition) + *count as i64).min(records);
                read_any |= read(&mut core, &durable, &mut buffers, *partition, to, now);
                core.full()
            }
            Op::Pass(ms) => {
                now += Duration::from_millis(*ms);
                let after = core.pass_done(read_any, false, now);
                read_any = false;
                matches!(after, AfterPass::Go { commit: true, .. })
            }
            Op::CrashInCommit(steps) => {
                crash_after = Some(*steps);
                false
            }
        };
        if due && !commit(&mut core, &mut durable, &mut buffers, &mut crash_after) {
            core = start(&durable.group);
        }
    }
    prop_assert_eq!(core.pass_done(read_any, true, now), AfterPass::FetchEnds);
    core.drain_to(vec![records; partitions as usize]);
    loop {
        let mut read_now = false;
        for partition in 0..partitions {
            read_now |= read(&mut core, &durable, &mut buffers, partition, records, now);
        }
        let AfterPass::Go {
            commit: due, done, ..
        } = core.pass_done(read_now, true, now)
        else {
            return Err(TestCaseError::fail("asked for the ends twice"));
        };
        if due {
            prop_assert!(commit(&mut core, &mut durable, &mut buffers, &mut None));
        }
        if done {
            break;
        }
    }
    prop_assert_eq!(&durable.group, &vec![records; partitions as usize]);
    let mut landed: Vec<(u32, i64)> = durable
        .tables
        .into_iter()
        .flat_map(|table| table.rows)
        .collect();
    landed.sort_unstable();
    let expected: Vec<(u32, i64)> = (0..partitions)
        .flat_map(|partition| (0..records).map(move |offset| (partition, offset)))
        .collect();
    prop_assert_eq!(landed, expected, "every record in the lake exactly once");
    Ok(())
}

proptest! {
    #[test]
    fn every_record_lands_exactly_once_whatever_crashes_inside_commits(
        records in 0i64..40,
        ops in proptest::collection::vec(op(), 0..80),
        rows_max in 1usize..12,
    ) {
        run(records, &ops, rows_max)?;
    }
}
