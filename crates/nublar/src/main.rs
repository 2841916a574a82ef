//! The `nublar` command: one binary for every role.

mod demo;
mod failover;
mod latest_command;
mod replay_command;
mod serve;
mod sim;

use nublar_node::{bfd_command, lake_command, log_command, query_command};

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "nublar",
    version,
    about = "Telemetry pipeline for large sensor fleets: ingest, a durable commit log, processors, and a Delta Lake",
    propagate_version = true
)]
struct Cli {
    /// The node's data directory: the commit log lives in its `log` folder, the lake in `lake`.
    #[arg(
        long,
        global = true,
        env = "NUBLAR_DATA",
        default_value = "./nublar-data"
    )]
    data: PathBuf,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// A node in a fresh directory, the park simulator sending to it, then answers in SQL to
    /// questions a park's operator asks, and the commands to ask more.
    Demo(demo::DemoArgs),
    /// Run a node: the commit log and the ingest gateway (HTTP and UDP).
    Serve(serve::ServeArgs),
    /// Simulate a park: write its events to a file or send them to nodes.
    Sim(sim::SimArgs),
    /// Look inside the commit log of a data directory (asking its node when one owns it).
    Log(log_command::LogArgs),
    /// Ask the lake a question in SQL: every table of a database, named as sent.
    Query(query_command::QueryArgs),
    /// The lake's tables, and their maintenance (asking the node when one owns the directory).
    Lake(lake_command::LakeArgs),
    /// Recompute a processor's outputs from a point of the log and print them (live outputs
    /// are never touched); through the node when one runs on the directory.
    Replay(replay_command::ReplayArgs),
    /// The latest reading of every field of the series that match, from the running node.
    Latest(latest_command::LatestArgs),
    /// BFD sessions of the node running on the data directory (`nublar bfd status`).
    Bfd(bfd_command::BfdArgs),
    /// Benchmark programs; each prints its figures and the machine they ran on.
    #[command(subcommand)]
    Bench(nublar_bench::BenchCommand),
}

/// A request's body and batch are large and short-lived. glibc's malloc by default raises
/// its threshold for serving allocations from mmap each time such a buffer is freed (up to
/// 32 MiB), after which buffers of that size come from the heap of the thread's arena and
/// stay resident after they are freed, in every arena a thread used: the node's memory would
/// then grow past what its requests hold. A fixed threshold of 1 MiB keeps every buffer of
/// that size or more in pages of its own, given back to the system when freed.
fn keep_large_buffers_out_of_the_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets a parameter of the allocator, before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}

fn main() -> ExitCode {
    // Like other command line tools, end quietly when the reader of our
    // output goes away (`nublar log tail … | head`) instead of panicking.
    // SAFETY: called before any thread starts; only resets a disposition.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    keep_large_buffers_out_of_the_heap();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("NUBLAR_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo(args) => demo::run(args),
        Command::Serve(args) => serve::run(&cli.data, args),
        Command::Sim(args) => sim::run(args),
        Command::Log(command) => log_command::run(&cli.data, command),
        Command::Query(args) => query_command::run(&cli.data, args),
        Command::Lake(args) => lake_command::run(&cli.data, args),
        Command::Bfd(args) => bfd_command::run(&cli.data, args),
        Command::Latest(args) => latest_command::run_latest(&cli.data, args),
        Command::Replay(args) => replay_command::run_replay_command(&cli.data, args),
        Command::Bench(command) => nublar_bench::run(command),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
