//! sluice-bench as a library: the load generator and its report, so that tests (and the
//! `sluice-bench` binary) drive the same code.
//!
//! - [`load`]: one run (options, producers, the verifying consumer);
//! - [`native`]: the load generator's own Kafka producer (`--client native`);
//! - [`processes`]: a run from several load-generator processes, and merging their reports;
//! - [`report`]: what a run measured, as Markdown and as JSON;
//! - [`compare`]: one workload against several brokers, alternating runs ([`brokers`] starts
//!   and stops them), summarized by [`summary`] (medians and ratios);
//! - [`groups`]: a group coordinator's rebalance times and commit throughput;
//! - [`charts`], [`procfs`], [`subprocess`]: SVG charts, /proc figures, child processes.
//!
//! It must never leave a process running: every child (load generator, broker) is stopped on
//! every path and dies with its parent.

pub mod brokers;
pub mod charts;
pub mod compare;
pub mod groups;
pub mod load;
pub mod native;
pub mod processes;
pub mod procfs;
pub mod report;
pub mod subprocess;
pub mod summary;
