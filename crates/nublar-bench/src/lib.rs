//! The benchmark programs behind `nublar bench …`: each measures one part of the pipeline and
//! prints its figures with the machine they ran on (`machine`); BENCHMARKS.md holds them with
//! their commands. `node_child` starts a node as a child process (the binary's own `serve`)
//! for them and for the demo, where a process of its own is the point: what a client sees
//! across the loopback, and its memory and CPU apart from the load's.

pub mod bench;
mod bench_alerts;
mod bench_bfd;
mod bench_failover;
mod bench_freshness;
mod bench_lake;
mod bench_memory;
mod bench_processors;
mod bench_query;
mod bench_tls;
pub mod machine;
pub mod node_child;

pub use bench::{BenchCommand, run};
