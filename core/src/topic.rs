//! Topic names and per-topic configuration, validated the way Kafka validates them.

use std::collections::BTreeMap;

use crate::config::{parse_i64, BrokerConfig, ConfigError};
use crate::limits;

/// Why a topic name is not acceptable; maps to INVALID_TOPIC_EXCEPTION.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidTopicName(pub String);

/// Checks a topic name against Kafka's rules: 1..=249 characters of `[a-zA-Z0-9._-]`, not `.`
/// or `..`.
pub fn validate_topic_name(name: &str) -> Result<(), InvalidTopicName> {
    if name.is_empty() {
        return Err(InvalidTopicName("topic name is empty".into()));
    }
    if name == "." || name == ".." {
        return Err(InvalidTopicName(format!("topic name cannot be '{name}'")));
    }
    if name.len() > limits::topic_name_length_max {
        return Err(InvalidTopicName(format!(
            "topic name is {} characters, the limit is {}",
            name.len(),
            limits::topic_name_length_max
        )));
    }
    let legal = |c: char| c.is_ascii_alphanumeric() || c == '.' || c == '_' || c == '-';
    if let Some(bad) = name.chars().find(|c| !legal(*c)) {
        return Err(InvalidTopicName(format!(
            "topic name '{name}' contains '{bad}'; only [a-zA-Z0-9._-] are legal"
        )));
    }
    Ok(())
}

/// Whether a record's timestamp is the producer's or the broker's append time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimestampType {
    CreateTime,
    LogAppendTime,
}

/// The per-topic settings sluice honours. Values default to the broker's `log.*` settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicConfig {
    pub segment_bytes: u64,
    pub segment_ms: i64,
    pub retention_ms: i64,
    pub retention_bytes: i64,
    pub max_message_bytes: usize,
    pub timestamp_type: TimestampType,
    pub flush_messages: i64,
    pub flush_ms: i64,
    pub cleanup_policy: String,
    /// Compaction (`cleanup.policy` holds `compact`): how long tombstones stay readable after
    /// the cleaner first saw them, the dirty share of the log that triggers a clean, and the
    /// age bounds within which a record is (not yet / at the latest) compacted.
    pub delete_retention_ms: i64,
    /// `min.cleanable.dirty.ratio` in millionths, so the config stays comparable for equality.
    pub min_cleanable_dirty_ratio_ppm: u32,
    pub min_compaction_lag_ms: i64,
    pub max_compaction_lag_ms: i64,
    /// Replication: an acks=all write fails with NOT_ENOUGH_REPLICAS while the ISR has fewer
    /// replicas than this.
    pub min_insync_replicas: i32,
    /// Whether a partition whose in-sync replicas are all gone may be led by an out-of-sync
    /// one (available again, losing what only the in-sync ones had).
    pub unclean_leader_election_enable: bool,
    /// The overrides given at creation, exactly as given: persisted and reported by
    /// DescribeConfigs as dynamic topic configs.
    pub overrides: BTreeMap<String, String>,
}

/// Topic-level config names sluice accepts at CreateTopics. Others get INVALID_CONFIG.
pub const TOPIC_CONFIG_NAMES: &[&str] = &[
    "segment.bytes",
    "segment.ms",
    "retention.ms",
    "retention.bytes",
    "max.message.bytes",
    "message.timestamp.type",
    "flush.messages",
    "flush.ms",
    "cleanup.policy",
    "delete.retention.ms",
    "min.cleanable.dirty.ratio",
    "min.compaction.lag.ms",
    "max.compaction.lag.ms",
    "min.insync.replicas",
    "unclean.leader.election.enable",
];

impl TopicConfig {
    /// The topic defaults taken from the broker's configuration.
    pub fn from_broker(broker: &BrokerConfig) -> TopicConfig {
        TopicConfig {
            segment_bytes: broker.log_segment_bytes,
            segment_ms: broker.log_roll_ms,
            retention_ms: broker.log_retention_ms,
            retention_bytes: broker.log_retention_bytes,
            max_message_bytes: broker.message_max_bytes,
            timestamp_type: broker.log_message_timestamp_type,
            flush_messages: broker.log_flush_interval_messages,
            flush_ms: broker.log_flush_interval_ms,
            cleanup_policy: broker.log_cleanup_policy.clone(),
            delete_retention_ms: broker.log_cleaner_delete_retention_ms,
            min_cleanable_dirty_ratio_ppm: broker.log_cleaner_min_cleanable_ratio_ppm,
            min_compaction_lag_ms: broker.log_cleaner_min_compaction_lag_ms,
            max_compaction_lag_ms: broker.log_cleaner_max_compaction_lag_ms,
            min_insync_replicas: broker.min_insync_replicas,
            unclean_leader_election_enable: broker.unclean_leader_election_enable,
            overrides: BTreeMap::new(),
        }
    }

    /// Applies topic-level overrides on top of the broker defaults, validating each.
    pub fn with_overrides(
        broker: &BrokerConfig,
        overrides: &BTreeMap<String, String>,
    ) -> Result<TopicConfig, ConfigError> {
        let mut config = TopicConfig::from_broker(broker);
        for (key, value) in overrides {
            config.apply(key, value)?;
        }
        config.overrides = overrides.clone();
        Ok(config)
    }

    fn apply(&mut self, key: &str, value: &str) -> Result<(), ConfigError> {
        let positive = |v: i64| -> Result<i64, ConfigError> {
            if v <= 0 {
                Err(ConfigError::invalid(key, value, "must be positive"))
            } else {
                Ok(v)
            }
        };
        match key {
            "segment.bytes" => {
                let v = positive(parse_i64(key, value)?)?;
                if v < 14 {
                    return Err(ConfigError::invalid(key, value, "must be at least 14"));
                }
                self.segment_bytes = v as u64;
            }
            "segment.ms" => self.segment_ms = positive(parse_i64(key, value)?)?,
            "retention.ms" => self.retention_ms = at_least_minus_one(key, value)?,
            "retention.bytes" => self.retention_bytes = at_least_minus_one(key, value)?,
            "max.message.bytes" => {
                self.max_message_bytes = positive(parse_i64(key, value)?)? as usize
            }
            "message.timestamp.type" => self.timestamp_type = parse_timestamp_type(key, value)?,
            "flush.messages" => self.flush_messages = positive(parse_i64(key, value)?)?,
            "flush.ms" => self.flush_ms = at_least_minus_one(key, value)?,
            "cleanup.policy" => self.cleanup_policy = parse_cleanup_policy(key, value)?,
            "delete.retention.ms" => self.delete_retention_ms = non_negative(key, value)?,
            "min.cleanable.dirty.ratio" => {
                self.min_cleanable_dirty_ratio_ppm = parse_ratio_ppm(key, value)?
            }
            "min.compaction.lag.ms" => self.min_compaction_lag_ms = non_negative(key, value)?,
            "max.compaction.lag.ms" => {
                self.max_compaction_lag_ms = positive(parse_i64(key, value)?)?
            }
            "min.insync.replicas" => {
                self.min_insync_replicas =
                    positive(parse_i64(key, value)?)?.min(i32::MAX as i64) as i32
            }
            "unclean.leader.election.enable" => {
                self.unclean_leader_election_enable = crate::config::parse_bool(key, value)?
            }
            _ => return Err(ConfigError::Unknown(key.into())),
        }
        Ok(())
    }

    /// Every config of the topic with its effective value, for DescribeConfigs.
    pub fn entries(&self) -> Vec<(&'static str, String)> {
        vec![
            ("segment.bytes", self.segment_bytes.to_string()),
            ("segment.ms", self.segment_ms.to_string()),
            ("retention.ms", self.retention_ms.to_string()),
            ("retention.bytes", self.retention_bytes.to_string()),
            ("max.message.bytes", self.max_message_bytes.to_string()),
            (
                "message.timestamp.type",
                match self.timestamp_type {
                    TimestampType::CreateTime => "CreateTime".into(),
                    TimestampType::LogAppendTime => "LogAppendTime".into(),
                },
            ),
            ("flush.messages", self.flush_messages.to_string()),
            ("flush.ms", self.flush_ms.to_string()),
            ("cleanup.policy", self.cleanup_policy.clone()),
            ("delete.retention.ms", self.delete_retention_ms.to_string()),
            (
                "min.cleanable.dirty.ratio",
                format_ratio_ppm(self.min_cleanable_dirty_ratio_ppm),
            ),
            (
                "min.compaction.lag.ms",
                self.min_compaction_lag_ms.to_string(),
            ),
            (
                "max.compaction.lag.ms",
                self.max_compaction_lag_ms.to_string(),
            ),
            ("min.insync.replicas", self.min_insync_replicas.to_string()),
            (
                "unclean.leader.election.enable",
                self.unclean_leader_election_enable.to_string(),
            ),
        ]
    }

    /// True when the cleaner keeps only the latest record per key (`compact` in the policy).
    pub fn compacted(&self) -> bool {
        self.cleanup_policy
            .split(',')
            .any(|p| p.trim() == "compact")
    }

    /// True when retention deletes old segments (`delete` in the policy).
    pub fn deletes(&self) -> bool {
        self.cleanup_policy.split(',').any(|p| p.trim() == "delete")
    }
}

/// Validates `cleanup.policy`: `delete`, `compact`, or both (comma-separated, either order).
pub fn parse_cleanup_policy(key: &str, value: &str) -> Result<String, ConfigError> {
    let mut parts: Vec<&str> = value.split(',').map(str::trim).collect();
    parts.sort_unstable();
    parts.dedup();
    let known = |p: &&str| *p == "delete" || *p == "compact";
    if parts.is_empty() || parts.iter().any(|p| !known(p)) {
        return Err(ConfigError::invalid(
            key,
            value,
            "must be delete, compact or compact,delete",
        ));
    }
    Ok(value
        .split(',')
        .map(str::trim)
        .collect::<Vec<_>>()
        .join(","))
}

/// Parses a ratio in [0, 1] into millionths.
pub fn parse_ratio_ppm(key: &str, value: &str) -> Result<u32, ConfigError> {
    match value.trim().parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok((r * 1_000_000.0).round() as u32),
        _ => Err(ConfigError::invalid(
            key,
            value,
            "must be a number in [0, 1]",
        )),
    }
}

/// A ratio in millionths the way Kafka prints a double (0.5, 0.01, 1.0).
pub fn format_ratio_ppm(ppm: u32) -> String {
    let r = f64::from(ppm) / 1_000_000.0;
    if r.fract() == 0.0 {
        format!("{r:.1}")
    } else {
        format!("{r}")
    }
}

fn non_negative(key: &str, value: &str) -> Result<i64, ConfigError> {
    let v = parse_i64(key, value)?;
    if v < 0 {
        return Err(ConfigError::invalid(key, value, "must be 0 or more"));
    }
    Ok(v)
}

fn at_least_minus_one(key: &str, value: &str) -> Result<i64, ConfigError> {
    let v = parse_i64(key, value)?;
    if v < -1 {
        return Err(ConfigError::invalid(key, value, "must be -1 or more"));
    }
    Ok(v)
}

pub(crate) fn parse_timestamp_type(key: &str, value: &str) -> Result<TimestampType, ConfigError> {
    match value {
        "CreateTime" => Ok(TimestampType::CreateTime),
        "LogAppendTime" => Ok(TimestampType::LogAppendTime),
        _ => Err(ConfigError::invalid(
            key,
            value,
            "must be CreateTime or LogAppendTime",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names_follow_kafka_rules() {
        assert!(validate_topic_name("orders.v1_x-y").is_ok());
        assert!(validate_topic_name("").is_err());
        assert!(validate_topic_name(".").is_err());
        assert!(validate_topic_name("..").is_err());
        assert!(validate_topic_name("has space").is_err());
        assert!(validate_topic_name("slash/").is_err());
        assert!(validate_topic_name(&"a".repeat(249)).is_ok());
        assert!(validate_topic_name(&"a".repeat(250)).is_err());
    }

    #[test]
    fn overrides_are_validated_and_kept() {
        let broker = BrokerConfig::default();
        let mut o = BTreeMap::new();
        o.insert("retention.ms".to_string(), "1000".to_string());
        o.insert(
            "message.timestamp.type".to_string(),
            "LogAppendTime".to_string(),
        );
        let c = TopicConfig::with_overrides(&broker, &o).expect("valid");
        assert_eq!(c.retention_ms, 1000);
        assert_eq!(c.timestamp_type, TimestampType::LogAppendTime);
        assert_eq!(c.overrides.len(), 2);
        o.insert("segment.bytes".into(), "-5".into());
        assert!(TopicConfig::with_overrides(&broker, &o).is_err());
        let mut bad = BTreeMap::new();
        bad.insert("no.such.config".to_string(), "1".to_string());
        let mut compact = BTreeMap::new();
        compact.insert("cleanup.policy".to_string(), "compact, delete".to_string());
        compact.insert("min.cleanable.dirty.ratio".to_string(), "0.01".to_string());
        let c = TopicConfig::with_overrides(&broker, &compact).expect("valid");
        assert!(c.compacted() && c.deletes());
        assert_eq!(c.min_cleanable_dirty_ratio_ppm, 10_000);
        assert_eq!(format_ratio_ppm(c.min_cleanable_dirty_ratio_ppm), "0.01");
        assert_eq!(format_ratio_ppm(500_000), "0.5");
        assert_eq!(format_ratio_ppm(1_000_000), "1.0");
        compact.insert("cleanup.policy".to_string(), "shred".to_string());
        assert!(TopicConfig::with_overrides(&broker, &compact).is_err());
        compact.insert("cleanup.policy".to_string(), "compact".to_string());
        compact.insert("min.cleanable.dirty.ratio".to_string(), "1.5".to_string());
        assert!(TopicConfig::with_overrides(&broker, &compact).is_err());
        assert!(matches!(
            TopicConfig::with_overrides(&broker, &bad),
            Err(ConfigError::Unknown(_))
        ));
    }
}
