//! sluice-storage: the partition log.
//!
//! Owns everything on disk under `log.dirs`: segment files written with O_DIRECT through
//! glommio's DMA files, their sparse offset and time indexes, recovery of torn tails at start,
//! retention, and the per-core group-commit [`flusher`] with its [`journal`]. Every on-disk byte
//! is specified in docs/FORMATS.md.
//!
//! It must never: share a log between cores (a log is `!Send` and lives on its owning core),
//! decode records on the produce path (except the key check of compacted topics, which Kafka
//! makes too), or acknowledge bytes before they are durable at the
//! level the caller asked for.

pub mod batch;
pub mod codec;
pub mod compaction;
pub mod error;
pub mod flusher;
pub mod index;
pub mod io_probe;
pub mod journal;
pub mod log;
pub mod notify;
pub mod producer_state;
pub mod segment;
pub mod txn;

pub use error::{BatchError, StorageError};
pub use flusher::Flusher;
pub use log::{
    AppendInfo, CleanBudget, CleanCrashPoint, CleanStats, Durability, LogConfig, PartitionLog,
    ReadResult, Records, SyncPolicy,
};
