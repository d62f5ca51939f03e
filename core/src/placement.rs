//! Placement policy: which core should own a new partition.
//!
//! Kept apart from lookup ([`crate::shard_table`]) so that the policy can change without
//! touching the code that answers "who owns this partition?". The policy is a pure function of
//! the topic name, partition and core count, so every core and every restart computes the same
//! answer and nothing about placement needs to be persisted on a single node.

/// Spreads a topic's partitions round-robin over the cores, starting at a core chosen by the
/// topic name, so that many single-partition topics do not all land on core 0.
pub fn core_for_partition(topic: &str, partition: i32, cores: usize) -> usize {
    assert!(cores > 0, "placement needs at least one core");
    let start = fnv1a(topic.as_bytes()) as usize % cores;
    (start + partition.max(0) as usize) % cores
}

/// FNV-1a (64 bit): stable across releases and platforms, unlike std's randomly seeded hasher.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_spread_evenly_and_deterministically() {
        let mut counts = [0usize; 4];
        for p in 0..8 {
            counts[core_for_partition("orders", p, 4)] += 1;
        }
        assert_eq!(counts, [2, 2, 2, 2]);
        assert_eq!(
            core_for_partition("orders", 3, 4),
            core_for_partition("orders", 3, 4)
        );
        assert_eq!(core_for_partition("anything", 5, 1), 0);
    }
}
