//! A node as a library.
//!
//! [`node::Node::start`] opens the data directory's log, starts the gateway, the processors,
//! the webhooks, the lake sinks and their maintenance, BFD and the HTTP and UDP listeners, in
//! that order, from a [`config::NodeConfig`]; [`node::Node::stop`] drains the listeners and
//! stops the rest in the reverse order, so that everything acknowledged is in the log and what
//! the sinks buffered is committed. The binary's `nublar serve` is signal handling around the two; tests
//! and benchmarks start nodes in the same process.
//!
//! The other modules are what a node serves and how its configuration lowers onto the
//! components: `config` (the file, environment and flags), `processors` and `webhooks`, and
//! the operator routes with the local renderings the command line shares with them
//! (`log_command`, `lake_command`, `query_command`, `bfd_command`).

pub mod bfd_command;
pub mod config;
pub mod lake_command;
pub mod log_command;
pub mod node;
pub mod operator;
pub mod processors;
pub mod query_command;
pub mod webhooks;
