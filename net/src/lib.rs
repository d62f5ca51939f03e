//! sluice-net: the Kafka protocol front end and the thread-per-core runtime.
//!
//! Owns connections, request decoding (wire types from the `kafka-protocol` crate, generated
//! from Kafka's JSON schemas), one handler per Kafka API, the per-core [`shard::Shard`] state and
//! the cross-core [`router`]. Produce and fetch run on the core that owns the partition; requests
//! arriving on another core are split by owner and forwarded as typed messages.
//!
//! It must never: share mutable state between cores, block a reactor on the data path, answer a
//! produce before the storage layer says the bytes are durable at the level `acks` asks, or
//! advertise an API version it does not implement (see [`handlers::APIS`]).

pub mod alloc_guard;
pub mod connection;
pub mod consumer_group_records;
pub mod consumer_groups;
pub mod controller;
pub mod error;
pub mod groups;
pub mod handlers;
pub mod log_cleaner;
pub mod metadata;
pub mod offsets;
pub mod partitions;
pub mod peer;
pub mod producer_ids;
pub mod replica;
pub mod router;
pub mod runtime;
pub mod send;
pub mod shard;
pub mod topics;
pub mod transactions;
pub mod txn_coordinator;

/// Unit tests run under the same allocator as the broker (see `alloc_guard`).
#[cfg(test)]
#[global_allocator]
static TEST_ALLOCATOR: alloc_guard::GuardedAllocator = alloc_guard::GuardedAllocator;

#[cfg(test)]
mod decoder_fuzz;
