//! Every fixed bound of the broker in one place, units last in each name.
//!
//! Configurable limits (Kafka properties such as `message.max.bytes`) live in
//! [`crate::config::BrokerConfig`]; the ones here are structural and not worth a setting.

// Limits are named like values (`request_bytes_max`), units last, as TigerBeetle does: they read
// as quantities at the call site, which upper-case constants obscure.
#![allow(non_upper_case_globals)]

/// Requests read from one connection and not yet answered. Kafka clients pipeline up to 5 by
/// default; beyond this the connection stops reading until the oldest answer is written.
pub const inflight_requests_per_connection_max: usize = 32;

/// Messages queued from one core to another before the sender waits (cross-core back-pressure).
pub const cross_core_channel_depth: usize = 1024;

/// Size of a record batch header (magic 2), up to and including the record count.
pub const batch_header_bytes: usize = 61;

/// Direct I/O alignment assumed for segment writes; glommio reports the device's real one and we
/// assert it divides this.
pub const dma_alignment_bytes: u64 = 4096;

/// Largest single DMA write issued when flushing a segment tail.
pub const dma_write_bytes_max: usize = 8 << 20;

/// A flusher round that writes more than this syncs its segments directly instead of copying
/// its bytes into the core's journal: it already carries enough bytes per fdatasync, and a
/// second copy would cost CPU and disk bandwidth (see storage/src/journal.rs).
pub const journal_round_bytes_max: u64 = 1 << 20;

/// Chunk size for sequential DMA reads during recovery and cold fetches.
pub const dma_read_chunk_bytes: usize = 1 << 20;

/// A segment file is preallocated ahead of its writes in steps that grow with its size (from
/// 256 KiB) up to this, so appends rarely extend the file.
pub const segment_preallocate_step_bytes: u64 = 64 << 20;

/// Topic names longer than this are rejected (Kafka's own limit).
pub const topic_name_length_max: usize = 249;

/// Partitions one CreateTopics request may ask for in one topic.
pub const partitions_per_topic_max: i32 = 10_000;

/// Topics the broker will hold.
pub const topics_max: usize = 100_000;

/// Recent batches kept in memory per core for fetches from the log tail.
pub const batch_cache_bytes_per_core: usize = 64 << 20;

/// Upper bound on the bytes of one partition's tail kept in the batch cache.
pub const batch_cache_bytes_per_partition_max: usize = 4 << 20;

/// Largest decompressed records section the broker inflates (the key check of compacted topics
/// and the cleaner); a batch that inflates past it is refused at produce and left as it is by
/// the cleaner. Bounds what a decompression bomb can cost.
pub const decompressed_batch_bytes_max: usize = 64 << 20;

/// Bytes the cleaner gathers before one DMA write of a cleaned segment.
pub const cleaner_write_chunk_bytes: usize = 1 << 20;
