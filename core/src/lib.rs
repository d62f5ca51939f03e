//! sluice-core: what every other crate of sluice agrees on.
//!
//! This crate owns the broker configuration (Kafka property names), the limits that bound every
//! queue and size, topic naming rules, and the partition → core [`shard_table`] with its
//! [`placement`] policy. It does no I/O beyond reading the configuration file at start, holds no
//! runtime state of its own and must never depend on the reactor: everything here is plain data
//! that each core keeps its own copy of.

pub mod config;
pub mod limits;
pub mod placement;
pub mod shard_table;
pub mod topic;

pub use shard_table::{ShardTable, TopicPartition};
