//! Runs the deterministic simulation over many seeds, or exactly one.

use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;

/// Runs the whole node deterministically from seeds, checking every invariant after every
/// step; a failing seed prints its last steps and the command that runs exactly it again.
#[derive(Parser)]
#[command(name = "nublar-dst")]
struct Args {
    /// Run only this seed.
    #[arg(long, conflicts_with_all = ["seeds", "first"])]
    seed: Option<u64>,
    /// How many seeds to run, from --first on.
    #[arg(long, default_value_t = 1000)]
    seeds: u64,
    /// The first seed of the range.
    #[arg(long, default_value_t = 0)]
    first: u64,
    /// Steps per seed before the drain and the final checks.
    #[arg(long, default_value_t = nublar_dst::STEPS_DEFAULT)]
    steps: usize,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let seeds = match args.seed {
        Some(seed) => seed..seed + 1,
        None => args.first..args.first.saturating_add(args.seeds),
    };
    let count = seeds.end - seeds.start;
    let started = Instant::now();
    let mut last_report = Instant::now();
    for (done, seed) in seeds.enumerate() {
        match nublar_dst::run(seed, args.steps) {
            Ok(outcome) if count == 1 => println!(
                "seed {seed}: ok, trace {:016x}, {} records acknowledged, {} rows in the lake, \
                 {} restarts, {} processor items",
                outcome.trace_hash,
                outcome.acknowledged_records,
                outcome.rows_in_lake,
                outcome.restarts,
                outcome.processor_items
            ),
            Ok(_) => {}
            Err(failure) => {
                eprintln!("{failure}");
                return ExitCode::FAILURE;
            }
        }
        if last_report.elapsed().as_secs() >= 5 {
            eprintln!(
                "{} of {count} seeds passed ({:.0} s)",
                done + 1,
                started.elapsed().as_secs_f64()
            );
            last_report = Instant::now();
        }
    }
    println!(
        "{count} seeds of {} steps passed in {:.1} s",
        args.steps,
        started.elapsed().as_secs_f64()
    );
    ExitCode::SUCCESS
}
