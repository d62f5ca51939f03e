//! sluice-replication: partition leadership state, and the metadata quorum's state.
//!
//! This crate owns:
//! * the leader-epoch checkpoint of each partition — the `(epoch, start offset)` history that
//!   replication needs to truncate a diverged follower (KIP-101/KIP-279). On a single node the
//!   broker is the leader of every partition at epoch 0 for its whole life; the high watermark
//!   is the log's durable end, kept by the storage layer. Replication proper (followers, ISR,
//!   elections) arrives with clustering and will step a state machine from here;
//! * the metadata log's records ([`metadata_records`]): brokers, topics, partition leadership
//!   and producer-id blocks, as the Raft metadata quorum (KRaft's role) commits them;
//! * the metadata image ([`metadata_image`]): the state machine every node applies those
//!   records to, and the controller's pure decisions (fencing, elections, replica placement);
//! * the durable Raft storage of the quorum ([`quorum_store`]): raft-rs's entries and hard
//!   state in an append-only file.
//!
//! It must never do I/O on the produce/fetch path: the checkpoint is written only when an epoch
//! begins, and the quorum store is control-plane I/O (rare, small, std::fs). The records and
//! the image do no I/O at all; consensus itself is raft-rs's pure state machine, stepped by a
//! driver outside these modules.

pub mod leader_epoch;
pub mod metadata_image;
pub mod metadata_records;
pub mod partition;
pub mod quorum_store;

pub use leader_epoch::LeaderEpochFile;
pub use metadata_image::{Applied, Change, ElectionRefusal, MetadataImage, Rejection};
pub use metadata_records::{MetadataEntry, MetadataRecord, PartitionState};
pub use partition::LeaderState;
pub use quorum_store::{QuorumStore, Recovered};
