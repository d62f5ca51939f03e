//! sluice-bench as a library: the load generator and its report, so that tests (and the
//! `sluice-bench` binary) drive the same code.

pub mod charts;
pub mod load;
pub mod procfs;
