//! The one place that answers "which core owns this partition?".
//!
//! Every core holds its own copy (no sharing, no locks). Changes are made by the metadata owner
//! (core 0) and broadcast to all cores as [`ShardUpdate`]s carrying a revision; a core applies an
//! update only if it is newer than what it has, so a late or duplicated broadcast can never roll
//! the table back. After a request hops to the owning core, the handler there re-checks
//! ownership with its own copy before touching the log.

use std::collections::HashMap;

/// A topic name and partition index, as Kafka names a partition.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicPartition {
    pub topic: String,
    pub partition: i32,
}

impl TopicPartition {
    pub fn new(topic: impl Into<String>, partition: i32) -> Self {
        TopicPartition {
            topic: topic.into(),
            partition,
        }
    }
}

impl std::fmt::Display for TopicPartition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.topic, self.partition)
    }
}

/// A change to the table, stamped with the revision it produces.
#[derive(Debug, Clone)]
pub enum ShardUpdate {
    /// The topic now exists (or changed) with, per partition (index = partition), the core that
    /// serves it here, or None where this broker does not lead the partition.
    TopicPlaced {
        revision: u64,
        topic: String,
        cores: Vec<Option<usize>>,
    },
    TopicRemoved {
        revision: u64,
        topic: String,
    },
}

impl ShardUpdate {
    pub fn revision(&self) -> u64 {
        match self {
            ShardUpdate::TopicPlaced { revision, .. }
            | ShardUpdate::TopicRemoved { revision, .. } => *revision,
        }
    }
}

/// partition → core, one copy per core. A partition of a topic this table knows but that this
/// broker does not lead (in a cluster) has no core.
#[derive(Debug, Default, Clone)]
pub struct ShardTable {
    revision: u64,
    topics: HashMap<String, Vec<Option<usize>>>,
}

impl ShardTable {
    pub fn new() -> Self {
        ShardTable::default()
    }

    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// The core that serves the partition here, or None if the topic or partition does not
    /// exist or this broker does not lead it.
    pub fn core_of(&self, topic: &str, partition: i32) -> Option<usize> {
        let cores = self.topics.get(topic)?;
        usize::try_from(partition)
            .ok()
            .and_then(|p| cores.get(p).copied().flatten())
    }

    /// Whether the partition exists, whether or not this broker serves it.
    pub fn exists(&self, topic: &str, partition: i32) -> bool {
        self.topics
            .get(topic)
            .is_some_and(|cores| usize::try_from(partition).is_ok_and(|p| p < cores.len()))
    }

    /// Number of partitions of a topic, if it exists.
    pub fn partition_count(&self, topic: &str) -> Option<usize> {
        self.topics.get(topic).map(Vec::len)
    }

    /// Applies an update if it is newer than the table; returns whether it was applied.
    pub fn apply(&mut self, update: &ShardUpdate) -> bool {
        if update.revision() <= self.revision {
            return false;
        }
        self.revision = update.revision();
        match update {
            ShardUpdate::TopicPlaced { topic, cores, .. } => {
                self.topics.insert(topic.clone(), cores.clone());
            }
            ShardUpdate::TopicRemoved { topic, .. } => {
                self.topics.remove(topic);
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_updates_are_ignored() {
        let mut table = ShardTable::new();
        let placed = ShardUpdate::TopicPlaced {
            revision: 2,
            topic: "t".into(),
            cores: vec![Some(1), Some(0), None],
        };
        assert!(table.apply(&placed));
        assert_eq!(table.core_of("t", 0), Some(1));
        assert_eq!(table.core_of("t", 1), Some(0));
        assert_eq!(table.core_of("t", 2), None);
        assert!(table.exists("t", 2));
        assert!(!table.exists("t", 3));
        assert_eq!(table.core_of("t", 3), None);
        assert_eq!(table.core_of("t", -1), None);
        let stale = ShardUpdate::TopicRemoved {
            revision: 1,
            topic: "t".into(),
        };
        assert!(!table.apply(&stale));
        assert_eq!(table.partition_count("t"), Some(3));
        let removed = ShardUpdate::TopicRemoved {
            revision: 3,
            topic: "t".into(),
        };
        assert!(table.apply(&removed));
        assert_eq!(table.core_of("t", 0), None);
    }
}
