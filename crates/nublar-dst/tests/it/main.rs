//! The simulation as a test: many seeds, each keeping every invariant; the same seed making
//! the same trace; and a pinned trace, so that a change that alters what a seed does is seen.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use nublar_dst::{STEPS_DEFAULT, run};

/// Seeds every `cargo test` runs.
const SEEDS: u64 = 200;

#[test]
fn two_hundred_seeds_keep_every_invariant() {
    let started = Instant::now();
    let next = AtomicU64::new(0);
    let failures = Mutex::new(Vec::new());
    // One thread per core: the seeds are independent.
    let threads = std::thread::available_parallelism().map_or(2, usize::from);
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                loop {
                    let seed = next.fetch_add(1, Ordering::Relaxed);
                    if seed >= SEEDS {
                        return;
                    }
                    if let Err(failure) = run(seed, STEPS_DEFAULT) {
                        failures.lock().unwrap().push(failure.to_string());
                    }
                }
            });
        }
    });
    let failures = failures.into_inner().unwrap();
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    eprintln!(
        "{SEEDS} seeds of {STEPS_DEFAULT} steps kept every invariant in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn the_same_seed_makes_the_same_run() {
    let first = run(7, STEPS_DEFAULT).unwrap();
    let again = run(7, STEPS_DEFAULT).unwrap();
    assert_eq!(first, again);
    let other = run(8, STEPS_DEFAULT).unwrap();
    assert_ne!(first.trace_hash, other.trace_hash);
}

/// What seed 1 does, pinned. A change to the simulation, to what the node does at any step
/// the seed reaches, or to a dependency that draws the numbers changes it: look at the new
/// trace (`cargo run -p nublar-dst -- --seed 1`), and pin the new hash once it is understood.
#[test]
fn seed_one_makes_the_pinned_trace() {
    let outcome = run(1, STEPS_DEFAULT).unwrap();
    assert_eq!(
        format!("{:016x}", outcome.trace_hash),
        "f82c9f614d57a0aa",
        "{outcome:?}"
    );
}

#[test]
fn a_failure_says_how_to_run_exactly_it_again() {
    let failure = nublar_dst::Failure {
        seed: 42,
        steps: 400,
        step: 17,
        what: "INVARIANT: something".into(),
        trace_tail: vec!["clock +5 ms".into()],
    };
    let text = failure.to_string();
    assert!(text.contains("seed 42 failed at step 17 of 400"), "{text}");
    assert!(
        text.ends_with("cargo run -p nublar-dst -- --seed 42 --steps 400"),
        "{text}"
    );
}
