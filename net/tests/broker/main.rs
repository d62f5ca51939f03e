//! The one integration test binary: it starts real `sluice` processes and drives them with real
//! Kafka clients (librdkafka through the `rdkafka` crate) and with hand-made protocol bytes.

mod bad_input;
mod clients;
mod cluster;
mod cluster_txn;
mod common;
mod compaction;
mod faults;
mod groups;
mod harness;
mod idempotence;
mod netns;
mod offsets;
mod partitions;
mod proxy;
mod racks;
mod roles;
mod transactions;
