//! sluice-replication: partition leadership state.
//!
//! Today this crate owns the leader-epoch checkpoint of each partition — the `(epoch, start
//! offset)` history that replication needs to truncate a diverged follower (KIP-101/KIP-279).
//! On a single node the broker is the leader of every partition at epoch 0 for its whole life;
//! the high watermark is the log's durable end, kept by the storage layer. Replication proper
//! (followers, ISR, elections) arrives with clustering and will step a state machine from here.
//!
//! It must never do I/O on the produce/fetch path: the checkpoint is written only when an epoch
//! begins.

pub mod leader_epoch;

pub use leader_epoch::LeaderEpochFile;
