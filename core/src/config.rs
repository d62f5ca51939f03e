//! Broker configuration, read the way Kafka's start script reads it: an optional properties file
//! and `--override key=value` pairs, using Kafka's property names.
//!
//! Unknown keys are an error naming the key, so a typo never silently falls back to a default.
//! Kafka settings that have no meaning in a thread-per-core broker (thread pool sizes, KRaft
//! controller wiring of a single node) are accepted and reported as ignored.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

use crate::topic::{parse_timestamp_type, TimestampType};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigError {
    Unknown(String),
    Invalid {
        key: String,
        value: String,
        why: String,
    },
    File {
        path: String,
        why: String,
    },
    Argument(String),
}

impl ConfigError {
    pub fn invalid(key: &str, value: &str, why: &str) -> ConfigError {
        ConfigError::Invalid {
            key: key.into(),
            value: value.into(),
            why: why.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Unknown(key) => write!(f, "unknown setting '{key}'"),
            ConfigError::Invalid { key, value, why } => {
                write!(f, "invalid value '{value}' for setting '{key}': {why}")
            }
            ConfigError::File { path, why } => write!(f, "cannot read '{path}': {why}"),
            ConfigError::Argument(why) => write!(f, "{why}"),
        }
    }
}

impl std::error::Error for ConfigError {}

/// The broker's settings. Defaults are Kafka's, except where noted in README's config table.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    pub node_id: i32,
    /// Where clients connect; `listeners` in Kafka's `NAME://host:port` form.
    pub listener: SocketAddr,
    /// Host and port put in Metadata responses (`advertised.listeners`).
    pub advertised_host: String,
    pub advertised_port: u16,
    pub log_dirs: PathBuf,
    pub num_partitions: i32,
    pub default_replication_factor: i16,
    pub log_segment_bytes: u64,
    pub log_roll_ms: i64,
    pub log_retention_ms: i64,
    pub log_retention_bytes: i64,
    pub log_retention_check_interval_ms: u64,
    pub log_index_interval_bytes: u32,
    pub message_max_bytes: usize,
    pub socket_request_max_bytes: usize,
    pub auto_create_topics_enable: bool,
    pub log_message_timestamp_type: TimestampType,
    /// sluice default 1: every acks=all write is fdatasync'ed before it is acknowledged.
    pub log_flush_interval_messages: i64,
    /// -1 (default): no time-based flush policy; see `log_flush_interval_messages`.
    pub log_flush_interval_ms: i64,
    /// Number of cores (reactors) to run; 0 means every CPU the process may run on.
    pub cores: usize,
    /// Bytes of DMA memory glommio registers per core.
    pub io_memory_bytes: usize,
    /// Consumer groups: the session timeouts a member may ask for, and how long a group that
    /// was empty waits for more members before its first rebalance completes.
    pub group_min_session_timeout_ms: i32,
    pub group_max_session_timeout_ms: i32,
    pub group_initial_rebalance_delay_ms: i64,
    /// Committed offsets of groups without members expire this long after their commit
    /// (`offsets.retention.minutes`, Kafka's 7 days), checked every
    /// `offsets.retention.check.interval.ms`.
    pub offsets_retention_minutes: i64,
    pub offsets_retention_check_interval_ms: u64,
    /// KIP-848 consumer groups: the heartbeat interval the broker tells members, and the session
    /// timeout after which a silent member is dropped.
    pub group_consumer_heartbeat_interval_ms: i32,
    pub group_consumer_session_timeout_ms: i32,
    /// Partitions of `__consumer_offsets`, created at the first FindCoordinator for a group
    /// (`offsets.topic.num.partitions`, Kafka's 50).
    pub offsets_topic_num_partitions: i32,
    /// `segment.bytes` of `__consumer_offsets` when it is created (`offsets.topic.segment.bytes`,
    /// Kafka's 100 MiB): only closed segments are compacted.
    pub offsets_topic_segment_bytes: u64,
    /// Longest metadata string a committed offset may carry (`offset.metadata.max.bytes`).
    pub offset_metadata_max_bytes: usize,
    /// Transactions: partitions of `__transaction_state` (`transaction.state.log.num.partitions`,
    /// Kafka's 50) and its `segment.bytes` (`transaction.state.log.segment.bytes`, 100 MiB); the
    /// longest `transaction.timeout.ms` a producer may ask for (`transaction.max.timeout.ms`,
    /// 15 minutes); how often timed-out transactions are looked for and aborted
    /// (`transaction.abort.timed.out.transaction.cleanup.interval.ms`, 10 s).
    pub transaction_state_log_num_partitions: i32,
    pub transaction_state_log_segment_bytes: u64,
    pub transaction_max_timeout_ms: i32,
    pub transaction_abort_timed_out_transaction_cleanup_interval_ms: u64,
    /// A transactional id with no transaction for this long is forgotten
    /// (`transactional.id.expiration.ms`, Kafka's 7 days): its next producer gets a new
    /// producer id.
    pub transactional_id_expiration_ms: i64,
    /// How long a partition remembers an idempotent producer after its last batch's timestamp
    /// (`producer.id.expiration.ms`, Kafka's default of one day).
    pub producer_id_expiration_ms: i64,
    /// Send fetch responses with io_uring SENDMSG_ZC instead of vectored `sendmsg(2)`
    /// (`sluice.socket.send.zerocopy`, default false: see docs/BENCHMARKS.md for why).
    pub socket_send_zerocopy: bool,
    /// Bytes of each core's journal ring (`sluice.journal.bytes`; 0: none), which makes a
    /// flusher round durable with one fdatasync (storage/src/journal.rs). None: 64 MiB per
    /// core, less above 8 cores (see [`Self::journal_ring_bytes`]). Used only when acks=all
    /// waits for fdatasync (`sync_before_ack`).
    pub journal_bytes: Option<u64>,
    /// Log compaction: the default `cleanup.policy` of new topics (`log.cleanup.policy`), whether
    /// each core runs a cleaner, how long a cleaner sleeps when no log needs cleaning, the memory
    /// for its key map (`log.cleaner.dedupe.buffer.size`, for the whole broker, split evenly
    /// between cores), its read+write budget in bytes per second, and the topic defaults of
    /// the compaction settings.
    pub log_cleanup_policy: String,
    pub log_cleaner_enable: bool,
    pub log_cleaner_backoff_ms: u64,
    pub log_cleaner_dedupe_buffer_size: u64,
    pub log_cleaner_io_max_bytes_per_second: f64,
    pub log_cleaner_delete_retention_ms: i64,
    pub log_cleaner_min_cleanable_ratio_ppm: u32,
    pub log_cleaner_min_compaction_lag_ms: i64,
    pub log_cleaner_max_compaction_lag_ms: i64,
    /// The metadata quorum (`controller.quorum.voters`, `id@host:port,...`). Empty (the
    /// default): a single node keeping its metadata in local files, with no quorum. Otherwise
    /// the nodes listed are the quorum's voters (controllers); other nodes of the cluster are
    /// brokers only and follow the quorum's log.
    pub controller_quorum_voters: Vec<Voter>,
    /// `process.roles` on a cluster node: whether it serves clients as a broker (false:
    /// controller only) and whether it votes in the metadata quorum (false: broker only).
    /// Both by default; a single node is always a broker.
    pub broker_role: bool,
    pub controller_role: bool,
    /// How often a broker tells the active controller it is alive
    /// (`broker.heartbeat.interval.ms`, Kafka's 2 s), and how long the controller waits without
    /// one before fencing the broker and moving its leaderships (`broker.session.timeout.ms`,
    /// Kafka's 9 s).
    pub broker_heartbeat_interval_ms: u64,
    pub broker_session_timeout_ms: u64,
    /// How long a controller waits without hearing from the quorum's leader before it stands
    /// for election (`controller.quorum.election.timeout.ms`, Kafka's 1 s).
    pub controller_quorum_election_timeout_ms: u64,
    /// `broker.rack`, reported in Metadata and used to place replicas across racks.
    pub broker_rack: Option<String>,
    /// `replica.selector.class` = Kafka's `RackAwareReplicaSelector`: a leader sends consumers
    /// that give their `client.rack` to an in-sync replica in their rack (KIP-392). Off by
    /// default, as in Kafka.
    pub rack_aware_replica_selector: bool,
    /// Replication: the default `min.insync.replicas` of topics (Kafka's 1), and how long a
    /// follower may go without catching up before its leader drops it from the ISR
    /// (`replica.lag.time.max.ms`, Kafka's 30 s).
    pub min_insync_replicas: i32,
    pub replica_lag_time_max_ms: i64,
    /// Automatic preferred-leader election: whether the active controller moves leadership back
    /// to each partition's first replica (`auto.leader.rebalance.enable`, Kafka's true), how
    /// often it looks (`leader.imbalance.check.interval.seconds`, 300), and the share of a
    /// broker's preferred partitions led elsewhere that triggers it
    /// (`leader.imbalance.per.broker.percentage`, 10).
    pub auto_leader_rebalance_enable: bool,
    pub leader_imbalance_check_interval_seconds: u64,
    pub leader_imbalance_per_broker_percentage: u32,
    /// Replicas of `__consumer_offsets` in a cluster (`offsets.topic.replication.factor`,
    /// Kafka's 3); it is created once that many brokers are live; 1 on a single node.
    pub offsets_topic_replication_factor: i16,
    /// Replicas of `__transaction_state` in a cluster
    /// (`transaction.state.log.replication.factor`, Kafka's 3), created once that many brokers
    /// are live, and its `min.insync.replicas` (`transaction.state.log.min.isr`, Kafka's 2, at
    /// most its replicas).
    pub transaction_state_log_replication_factor: i16,
    pub transaction_state_log_min_isr: i32,
    /// The default `unclean.leader.election.enable` of topics (Kafka's false).
    pub unclean_leader_election_enable: bool,
    /// Settings that were given but have no effect in sluice, reported once at start.
    pub ignored: Vec<String>,
}

/// A member of the metadata quorum: its node id and where its controller listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Voter {
    pub id: i32,
    pub host: String,
    pub port: u16,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            node_id: 0,
            listener: SocketAddr::from(([127, 0, 0, 1], 9092)),
            advertised_host: "127.0.0.1".into(),
            advertised_port: 9092,
            log_dirs: PathBuf::from("./sluice-data"),
            num_partitions: 1,
            default_replication_factor: 1,
            log_segment_bytes: 1 << 30,
            log_roll_ms: 168 * 3_600_000,
            log_retention_ms: 168 * 3_600_000,
            log_retention_bytes: -1,
            log_retention_check_interval_ms: 300_000,
            log_index_interval_bytes: 4096,
            message_max_bytes: 1_048_588,
            socket_request_max_bytes: 104_857_600,
            auto_create_topics_enable: true,
            log_message_timestamp_type: TimestampType::CreateTime,
            log_flush_interval_messages: 1,
            log_flush_interval_ms: -1,
            cores: 0,
            io_memory_bytes: 2 << 20,
            producer_id_expiration_ms: 86_400_000,
            group_min_session_timeout_ms: 6_000,
            group_max_session_timeout_ms: 1_800_000,
            group_initial_rebalance_delay_ms: 3_000,
            group_consumer_heartbeat_interval_ms: 5_000,
            group_consumer_session_timeout_ms: 45_000,
            offsets_retention_minutes: 10_080,
            offsets_retention_check_interval_ms: 600_000,
            offsets_topic_num_partitions: 50,
            offsets_topic_segment_bytes: 104_857_600,
            offset_metadata_max_bytes: 4096,
            transaction_state_log_num_partitions: 50,
            transaction_state_log_segment_bytes: 104_857_600,
            transaction_max_timeout_ms: 900_000,
            transaction_abort_timed_out_transaction_cleanup_interval_ms: 10_000,
            transactional_id_expiration_ms: 604_800_000,
            socket_send_zerocopy: false,
            journal_bytes: None,
            log_cleanup_policy: "delete".into(),
            log_cleaner_enable: true,
            log_cleaner_backoff_ms: 15_000,
            log_cleaner_dedupe_buffer_size: 128 << 20,
            log_cleaner_io_max_bytes_per_second: f64::MAX,
            log_cleaner_delete_retention_ms: 86_400_000,
            log_cleaner_min_cleanable_ratio_ppm: 500_000,
            log_cleaner_min_compaction_lag_ms: 0,
            log_cleaner_max_compaction_lag_ms: i64::MAX,
            controller_quorum_voters: Vec::new(),
            broker_role: true,
            controller_role: false,
            broker_heartbeat_interval_ms: 2_000,
            broker_session_timeout_ms: 9_000,
            controller_quorum_election_timeout_ms: 1_000,
            broker_rack: None,
            rack_aware_replica_selector: false,
            min_insync_replicas: 1,
            replica_lag_time_max_ms: 30_000,
            unclean_leader_election_enable: false,
            offsets_topic_replication_factor: 3,
            transaction_state_log_replication_factor: 3,
            transaction_state_log_min_isr: 2,
            auto_leader_rebalance_enable: true,
            leader_imbalance_check_interval_seconds: 300,
            leader_imbalance_per_broker_percentage: 10,
            ignored: Vec::new(),
        }
    }
}

/// Kafka settings accepted for compatibility with existing `server.properties` files but without
/// effect: sluice has no thread pools to size and a single node has no quorum to wire.
const IGNORED_KEYS: &[&str] = &[
    "num.network.threads",
    "num.io.threads",
    "num.recovery.threads.per.data.dir",
    "socket.send.buffer.bytes",
    "socket.receive.buffer.bytes",
    "controller.quorum.bootstrap.servers",
    "controller.listener.names",
    "listener.security.protocol.map",
    "inter.broker.listener.name",
    "share.coordinator.state.topic.replication.factor",
    "share.coordinator.state.topic.min.isr",
    "log.cleaner.threads",
];

impl BrokerConfig {
    /// Builds the configuration from command-line arguments (without the program name):
    /// `[server.properties] [--override key=value]... [--cores N]`.
    pub fn from_args(args: &[String]) -> Result<BrokerConfig, ConfigError> {
        let mut settings: Vec<(String, String)> = Vec::new();
        let mut file: Option<String> = None;
        let mut iter = args.iter();
        while let Some(arg) = iter.next() {
            match arg.as_str() {
                "--override" => {
                    let pair = iter.next().ok_or_else(|| {
                        ConfigError::Argument("--override needs key=value".into())
                    })?;
                    settings.push(split_pair(pair)?);
                }
                "--cores" => {
                    let n = iter
                        .next()
                        .ok_or_else(|| ConfigError::Argument("--cores needs a number".into()))?;
                    settings.push(("cores".into(), n.clone()));
                }
                other if other.starts_with("--") => {
                    return Err(ConfigError::Argument(format!("unknown argument '{other}'")));
                }
                path => {
                    if file.is_some() {
                        return Err(ConfigError::Argument(format!(
                            "more than one properties file given ('{path}')"
                        )));
                    }
                    file = Some(path.to_string());
                }
            }
        }
        let mut all = match &file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
                    path: path.clone(),
                    why: e.to_string(),
                })?;
                parse_properties(&text)?
            }
            None => Vec::new(),
        };
        all.extend(settings);
        BrokerConfig::from_settings(&all)
    }

    /// Applies `key=value` settings in order over the defaults; later ones win.
    pub fn from_settings(settings: &[(String, String)]) -> Result<BrokerConfig, ConfigError> {
        let mut config = BrokerConfig::default();
        let mut advertised: Option<String> = None;
        let mut retention: BTreeMap<&str, i64> = BTreeMap::new();
        let mut roll: BTreeMap<&str, i64> = BTreeMap::new();
        let mut roles: Option<String> = None;
        for (key, value) in settings {
            let (k, v) = (key.as_str(), value.trim());
            match k {
                "node.id" | "broker.id" => config.node_id = parse_i64(k, v)? as i32,
                "listeners" => config.listener = parse_listener(k, v)?,
                "advertised.listeners" => advertised = Some(v.to_string()),
                "log.dirs" | "log.dir" => {
                    let first = v.split(',').next().unwrap_or("").trim();
                    if first.is_empty() {
                        return Err(ConfigError::invalid(k, v, "must name a directory"));
                    }
                    if v.contains(',') {
                        return Err(ConfigError::invalid(
                            k,
                            v,
                            "sluice uses one log directory per broker",
                        ));
                    }
                    config.log_dirs = PathBuf::from(first);
                }
                "num.partitions" => config.num_partitions = positive(k, v)? as i32,
                "default.replication.factor" => {
                    config.default_replication_factor =
                        positive(k, v)?.min(i64::from(i16::MAX)) as i16
                }
                "log.segment.bytes" => config.log_segment_bytes = positive(k, v)? as u64,
                "log.roll.ms" => _ = roll.insert("ms", positive(k, v)?),
                "log.roll.hours" => _ = roll.insert("hours", positive(k, v)?),
                "log.retention.ms" => _ = retention.insert("ms", parse_i64(k, v)?),
                "log.retention.minutes" => _ = retention.insert("minutes", parse_i64(k, v)?),
                "log.retention.hours" => _ = retention.insert("hours", parse_i64(k, v)?),
                "log.retention.bytes" => config.log_retention_bytes = parse_i64(k, v)?,
                "log.retention.check.interval.ms" => {
                    config.log_retention_check_interval_ms = positive(k, v)? as u64
                }
                "log.index.interval.bytes" => {
                    config.log_index_interval_bytes = positive(k, v)?.min(u32::MAX as i64) as u32
                }
                "message.max.bytes" => config.message_max_bytes = positive(k, v)? as usize,
                "socket.request.max.bytes" => {
                    config.socket_request_max_bytes = positive(k, v)? as usize
                }
                "auto.create.topics.enable" => config.auto_create_topics_enable = parse_bool(k, v)?,
                "log.message.timestamp.type" => {
                    config.log_message_timestamp_type = parse_timestamp_type(k, v)?
                }
                "log.flush.interval.messages" => {
                    config.log_flush_interval_messages = positive(k, v)?
                }
                "log.flush.interval.ms" => config.log_flush_interval_ms = parse_i64(k, v)?,
                "producer.id.expiration.ms" => config.producer_id_expiration_ms = positive(k, v)?,
                "group.min.session.timeout.ms" => {
                    config.group_min_session_timeout_ms = positive(k, v)? as i32
                }
                "group.max.session.timeout.ms" => {
                    config.group_max_session_timeout_ms = positive(k, v)? as i32
                }
                "group.initial.rebalance.delay.ms" => {
                    config.group_initial_rebalance_delay_ms = parse_i64(k, v)?.max(0)
                }
                "offsets.retention.minutes" => config.offsets_retention_minutes = positive(k, v)?,
                "group.consumer.heartbeat.interval.ms" => {
                    config.group_consumer_heartbeat_interval_ms = positive(k, v)? as i32
                }
                "group.consumer.session.timeout.ms" => {
                    config.group_consumer_session_timeout_ms = positive(k, v)? as i32
                }
                "offsets.retention.check.interval.ms" => {
                    config.offsets_retention_check_interval_ms = positive(k, v)? as u64
                }
                "offsets.topic.num.partitions" => {
                    config.offsets_topic_num_partitions = positive(k, v)? as i32
                }
                "offsets.topic.segment.bytes" => {
                    config.offsets_topic_segment_bytes = positive(k, v)?.max(14) as u64
                }
                "offset.metadata.max.bytes" => {
                    config.offset_metadata_max_bytes = positive(k, v)? as usize
                }
                "transaction.state.log.num.partitions" => {
                    config.transaction_state_log_num_partitions = positive(k, v)? as i32
                }
                "transaction.state.log.segment.bytes" => {
                    config.transaction_state_log_segment_bytes = positive(k, v)?.max(14) as u64
                }
                "transaction.max.timeout.ms" => {
                    config.transaction_max_timeout_ms =
                        positive(k, v)?.min(i64::from(i32::MAX)) as i32
                }
                "transactional.id.expiration.ms" => {
                    config.transactional_id_expiration_ms = positive(k, v)?
                }
                "transaction.abort.timed.out.transaction.cleanup.interval.ms" => {
                    config.transaction_abort_timed_out_transaction_cleanup_interval_ms =
                        positive(k, v)? as u64
                }
                "log.cleanup.policy" => {
                    config.log_cleanup_policy = crate::topic::parse_cleanup_policy(k, v)?
                }
                "log.cleaner.enable" => config.log_cleaner_enable = parse_bool(k, v)?,
                "log.cleaner.backoff.ms" => config.log_cleaner_backoff_ms = positive(k, v)? as u64,
                "log.cleaner.dedupe.buffer.size" => {
                    config.log_cleaner_dedupe_buffer_size = positive(k, v)? as u64
                }
                "log.cleaner.io.max.bytes.per.second" => {
                    config.log_cleaner_io_max_bytes_per_second = match v.parse::<f64>() {
                        Ok(r) if r > 0.0 => r,
                        _ => return Err(ConfigError::invalid(k, v, "must be positive")),
                    }
                }
                "log.cleaner.delete.retention.ms" => {
                    config.log_cleaner_delete_retention_ms = parse_i64(k, v)?.max(0)
                }
                "log.cleaner.min.cleanable.ratio" => {
                    config.log_cleaner_min_cleanable_ratio_ppm =
                        crate::topic::parse_ratio_ppm(k, v)?
                }
                "log.cleaner.min.compaction.lag.ms" => {
                    config.log_cleaner_min_compaction_lag_ms = parse_i64(k, v)?.max(0)
                }
                "log.cleaner.max.compaction.lag.ms" => {
                    config.log_cleaner_max_compaction_lag_ms = positive(k, v)?
                }
                "process.roles" => roles = Some(v.to_string()),
                "controller.quorum.voters" => config.controller_quorum_voters = parse_voters(k, v)?,
                "broker.heartbeat.interval.ms" => {
                    config.broker_heartbeat_interval_ms = positive(k, v)? as u64
                }
                "broker.session.timeout.ms" => {
                    config.broker_session_timeout_ms = positive(k, v)? as u64
                }
                "controller.quorum.election.timeout.ms" => {
                    config.controller_quorum_election_timeout_ms = positive(k, v)? as u64
                }
                "broker.rack" => config.broker_rack = (!v.is_empty()).then(|| v.to_string()),
                "replica.selector.class" => {
                    config.rack_aware_replica_selector = match v {
                        "" | "org.apache.kafka.common.replica.LeaderSelector" => false,
                        "org.apache.kafka.common.replica.RackAwareReplicaSelector" => true,
                        _ => {
                            return Err(ConfigError::invalid(
                                k,
                                v,
                                "sluice implements org.apache.kafka.common.replica.\
                                 RackAwareReplicaSelector (and the default, leader only)",
                            ))
                        }
                    }
                }
                "min.insync.replicas" => {
                    config.min_insync_replicas = positive(k, v)?.min(i64::from(i32::MAX)) as i32
                }
                "replica.lag.time.max.ms" => config.replica_lag_time_max_ms = positive(k, v)?,
                "unclean.leader.election.enable" => {
                    config.unclean_leader_election_enable = parse_bool(k, v)?
                }
                "auto.leader.rebalance.enable" => {
                    config.auto_leader_rebalance_enable = parse_bool(k, v)?
                }
                "leader.imbalance.check.interval.seconds" => {
                    config.leader_imbalance_check_interval_seconds = positive(k, v)? as u64
                }
                "leader.imbalance.per.broker.percentage" => {
                    config.leader_imbalance_per_broker_percentage =
                        parse_i64(k, v)?.clamp(0, 100) as u32
                }
                "offsets.topic.replication.factor" => {
                    config.offsets_topic_replication_factor =
                        positive(k, v)?.min(i64::from(i16::MAX)) as i16
                }
                "transaction.state.log.replication.factor" => {
                    config.transaction_state_log_replication_factor =
                        positive(k, v)?.min(i64::from(i16::MAX)) as i16
                }
                "transaction.state.log.min.isr" => {
                    config.transaction_state_log_min_isr =
                        positive(k, v)?.min(i64::from(i32::MAX)) as i32
                }
                "cores" => config.cores = parse_i64(k, v)?.max(0) as usize,
                "sluice.io.memory.bytes" => config.io_memory_bytes = positive(k, v)? as usize,
                "sluice.socket.send.zerocopy" => config.socket_send_zerocopy = parse_bool(k, v)?,
                "sluice.journal.bytes" => {
                    let bytes = parse_i64(k, v)?;
                    if bytes < 0 || bytes % 4096 != 0 || (bytes > 0 && bytes < 1 << 20) {
                        return Err(ConfigError::invalid(
                            k,
                            v,
                            "must be 0 (no journal) or a multiple of 4096 of at least 1 MiB",
                        ));
                    }
                    config.journal_bytes = Some(bytes as u64);
                }
                _ if IGNORED_KEYS.contains(&k) => config.ignored.push(k.to_string()),
                _ => return Err(ConfigError::Unknown(k.to_string())),
            }
        }
        // Kafka's precedence: ms over minutes over hours.
        if let Some(ms) = retention
            .get("ms")
            .copied()
            .or_else(|| retention.get("minutes").map(|m| m.saturating_mul(60_000)))
            .or_else(|| retention.get("hours").map(|h| h.saturating_mul(3_600_000)))
        {
            config.log_retention_ms = if ms < 0 { -1 } else { ms };
        }
        if let Some(ms) = roll
            .get("ms")
            .copied()
            .or_else(|| roll.get("hours").map(|h| h.saturating_mul(3_600_000)))
        {
            config.log_roll_ms = ms;
        }
        config.advertised_host = config.listener.ip().to_string();
        config.advertised_port = config.listener.port();
        if config.listener.ip().is_unspecified() {
            config.advertised_host = "127.0.0.1".into();
        }
        if let Some(adv) = advertised {
            let (host, port) = parse_host_port("advertised.listeners", &adv)?;
            config.advertised_host = host;
            config.advertised_port = port;
        }
        config.check_roles(roles.as_deref())?;
        if config.default_replication_factor != 1 && !config.clustered() {
            return Err(ConfigError::invalid(
                "default.replication.factor",
                &config.default_replication_factor.to_string(),
                "a single node supports only 1",
            ));
        }
        Ok(config)
    }

    /// Whether this node is one of a quorum's (false: a single node with local metadata).
    pub fn clustered(&self) -> bool {
        !self.controller_quorum_voters.is_empty()
    }

    /// Where this node's controller listens: its own entry in `controller.quorum.voters`.
    pub fn controller_listener(&self) -> Option<SocketAddr> {
        let me = self
            .controller_quorum_voters
            .iter()
            .find(|v| v.id == self.node_id)?;
        let host = if me.host == "localhost" {
            "127.0.0.1"
        } else {
            &me.host
        };
        Some(SocketAddr::new(host.parse().ok()?, me.port))
    }

    /// KRaft's `process.roles`: `broker,controller` (combined, the default on a cluster node),
    /// `controller` (a voter serving no clients) or `broker` (serving clients, following the
    /// quorum's log without a vote). As in Kafka, a controller must be one of
    /// `controller.quorum.voters` and a broker-only node must not be. A single node (no voters)
    /// is a broker with local metadata; its `process.roles` may say `broker` or both.
    fn check_roles(&mut self, roles: Option<&str>) -> Result<(), ConfigError> {
        let (broker, controller) = match roles {
            None => (true, self.clustered()),
            Some(roles) => {
                let mut set: Vec<&str> = roles.split(',').map(str::trim).collect();
                set.sort_unstable();
                match set.as_slice() {
                    ["broker", "controller"] => (true, true),
                    ["broker"] => (true, false),
                    ["controller"] => (false, true),
                    _ => {
                        return Err(ConfigError::invalid(
                            "process.roles",
                            roles,
                            "must be broker, controller, or broker,controller",
                        ))
                    }
                }
            }
        };
        if !self.clustered() {
            if !broker {
                return Err(ConfigError::invalid(
                    "process.roles",
                    roles.unwrap_or_default(),
                    "a controller needs controller.quorum.voters",
                ));
            }
            self.broker_role = true;
            self.controller_role = false;
            return Ok(());
        }
        let listed = self
            .controller_quorum_voters
            .iter()
            .any(|v| v.id == self.node_id);
        if controller && self.controller_listener().is_none() {
            return Err(ConfigError::invalid(
                "controller.quorum.voters",
                &format!("{:?}", self.controller_quorum_voters),
                &format!(
                    "must list this node (node.id={}) with an IP address or localhost: it is a \
                     controller (process.roles=broker only makes a node that follows the quorum)",
                    self.node_id
                ),
            ));
        }
        if !controller && listed {
            return Err(ConfigError::invalid(
                "process.roles",
                roles.unwrap_or_default(),
                &format!(
                    "node.id={} is one of controller.quorum.voters, so it must be a controller",
                    self.node_id
                ),
            ));
        }
        self.broker_role = broker;
        self.controller_role = controller;
        Ok(())
    }

    /// The broker settings DescribeConfigs reports, with Kafka's names and effective values.
    pub fn entries(&self) -> Vec<(&'static str, String)> {
        vec![
            ("node.id", self.node_id.to_string()),
            ("broker.id", self.node_id.to_string()),
            ("listeners", format!("PLAINTEXT://{}", self.listener)),
            (
                "advertised.listeners",
                format!(
                    "PLAINTEXT://{}:{}",
                    self.advertised_host, self.advertised_port
                ),
            ),
            ("log.dirs", self.log_dirs.display().to_string()),
            ("num.partitions", self.num_partitions.to_string()),
            (
                "default.replication.factor",
                self.default_replication_factor.to_string(),
            ),
            ("log.segment.bytes", self.log_segment_bytes.to_string()),
            ("log.roll.ms", self.log_roll_ms.to_string()),
            ("log.retention.ms", self.log_retention_ms.to_string()),
            ("log.retention.bytes", self.log_retention_bytes.to_string()),
            (
                "log.retention.check.interval.ms",
                self.log_retention_check_interval_ms.to_string(),
            ),
            (
                "log.index.interval.bytes",
                self.log_index_interval_bytes.to_string(),
            ),
            ("message.max.bytes", self.message_max_bytes.to_string()),
            (
                "socket.request.max.bytes",
                self.socket_request_max_bytes.to_string(),
            ),
            (
                "auto.create.topics.enable",
                self.auto_create_topics_enable.to_string(),
            ),
            (
                "log.message.timestamp.type",
                match self.log_message_timestamp_type {
                    TimestampType::CreateTime => "CreateTime".into(),
                    TimestampType::LogAppendTime => "LogAppendTime".into(),
                },
            ),
            (
                "log.flush.interval.messages",
                self.log_flush_interval_messages.to_string(),
            ),
            (
                "log.flush.interval.ms",
                self.log_flush_interval_ms.to_string(),
            ),
            (
                "group.min.session.timeout.ms",
                self.group_min_session_timeout_ms.to_string(),
            ),
            (
                "group.max.session.timeout.ms",
                self.group_max_session_timeout_ms.to_string(),
            ),
            (
                "group.initial.rebalance.delay.ms",
                self.group_initial_rebalance_delay_ms.to_string(),
            ),
            (
                "group.consumer.heartbeat.interval.ms",
                self.group_consumer_heartbeat_interval_ms.to_string(),
            ),
            (
                "group.consumer.session.timeout.ms",
                self.group_consumer_session_timeout_ms.to_string(),
            ),
            (
                "offsets.retention.minutes",
                self.offsets_retention_minutes.to_string(),
            ),
            (
                "offsets.retention.check.interval.ms",
                self.offsets_retention_check_interval_ms.to_string(),
            ),
            (
                "offsets.topic.num.partitions",
                self.offsets_topic_num_partitions.to_string(),
            ),
            (
                "offsets.topic.segment.bytes",
                self.offsets_topic_segment_bytes.to_string(),
            ),
            (
                "offset.metadata.max.bytes",
                self.offset_metadata_max_bytes.to_string(),
            ),
            (
                "transaction.state.log.num.partitions",
                self.transaction_state_log_num_partitions.to_string(),
            ),
            (
                "transaction.state.log.segment.bytes",
                self.transaction_state_log_segment_bytes.to_string(),
            ),
            (
                "transaction.max.timeout.ms",
                self.transaction_max_timeout_ms.to_string(),
            ),
            (
                "transactional.id.expiration.ms",
                self.transactional_id_expiration_ms.to_string(),
            ),
            (
                "transaction.abort.timed.out.transaction.cleanup.interval.ms",
                self.transaction_abort_timed_out_transaction_cleanup_interval_ms
                    .to_string(),
            ),
            (
                "producer.id.expiration.ms",
                self.producer_id_expiration_ms.to_string(),
            ),
            ("log.cleanup.policy", self.log_cleanup_policy.clone()),
            ("log.cleaner.enable", self.log_cleaner_enable.to_string()),
            (
                "log.cleaner.backoff.ms",
                self.log_cleaner_backoff_ms.to_string(),
            ),
            (
                "log.cleaner.dedupe.buffer.size",
                self.log_cleaner_dedupe_buffer_size.to_string(),
            ),
            (
                "log.cleaner.io.max.bytes.per.second",
                format!("{:?}", self.log_cleaner_io_max_bytes_per_second),
            ),
            (
                "log.cleaner.delete.retention.ms",
                self.log_cleaner_delete_retention_ms.to_string(),
            ),
            (
                "log.cleaner.min.cleanable.ratio",
                crate::topic::format_ratio_ppm(self.log_cleaner_min_cleanable_ratio_ppm),
            ),
            (
                "log.cleaner.min.compaction.lag.ms",
                self.log_cleaner_min_compaction_lag_ms.to_string(),
            ),
            (
                "log.cleaner.max.compaction.lag.ms",
                self.log_cleaner_max_compaction_lag_ms.to_string(),
            ),
        ]
    }

    /// True when acks=all waits for fdatasync (the default); false when a Kafka-style flush
    /// policy was configured and syncing happens by count or time instead.
    pub fn sync_before_ack(&self) -> bool {
        self.log_flush_interval_messages == 1 && self.log_flush_interval_ms < 0
    }

    /// The journal ring of each of `cores` cores: none unless acks=all waits for fdatasync,
    /// and none on a dedicated controller (it holds no partition logs). By default 64 MiB per
    /// core, but at most 512 MiB for the whole broker (at least 8 MiB a core): with more
    /// cores each carries a smaller share of the writes, and a first start writes every ring
    /// in full.
    pub fn journal_ring_bytes(&self, cores: usize) -> u64 {
        if !self.sync_before_ack() || !self.broker_role {
            return 0;
        }
        self.journal_bytes.unwrap_or_else(|| {
            let share = (512u64 << 20) / cores.max(1) as u64;
            share.clamp(8 << 20, 64 << 20) / 4096 * 4096
        })
    }
}

fn split_pair(pair: &str) -> Result<(String, String), ConfigError> {
    match pair.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.to_string())),
        _ => Err(ConfigError::Argument(format!(
            "expected key=value, got '{pair}'"
        ))),
    }
}

/// Parses Java-properties-style text: `key=value` or `key: value`, `#`/`!` comments.
pub fn parse_properties(text: &str) -> Result<Vec<(String, String)>, ConfigError> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with('!') {
            continue;
        }
        let split = line.find(['=', ':']).ok_or_else(|| {
            ConfigError::Argument(format!("properties line without '=': '{line}'"))
        })?;
        let (k, v) = line.split_at(split);
        out.push((k.trim().to_string(), v[1..].trim().to_string()));
    }
    Ok(out)
}

pub fn parse_i64(key: &str, value: &str) -> Result<i64, ConfigError> {
    value
        .parse::<i64>()
        .map_err(|_| ConfigError::invalid(key, value, "not an integer"))
}

pub fn parse_bool(key: &str, value: &str) -> Result<bool, ConfigError> {
    match value {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(ConfigError::invalid(key, value, "must be true or false")),
    }
}

fn positive(key: &str, value: &str) -> Result<i64, ConfigError> {
    let v = parse_i64(key, value)?;
    if v <= 0 {
        return Err(ConfigError::invalid(key, value, "must be positive"));
    }
    Ok(v)
}

/// `PLAINTEXT://host:port` (first listener only; sluice serves one plaintext listener).
fn parse_host_port(key: &str, value: &str) -> Result<(String, u16), ConfigError> {
    let first = value.split(',').next().unwrap_or("").trim();
    let rest = match first.split_once("://") {
        Some((scheme, rest)) => {
            if !scheme.eq_ignore_ascii_case("PLAINTEXT") {
                return Err(ConfigError::invalid(
                    key,
                    value,
                    "only PLAINTEXT listeners exist",
                ));
            }
            rest
        }
        None => first,
    };
    let (host, port) = rest
        .rsplit_once(':')
        .ok_or_else(|| ConfigError::invalid(key, value, "expected PLAINTEXT://host:port"))?;
    let port: u16 = port
        .parse()
        .map_err(|_| ConfigError::invalid(key, value, "port is not a number"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let host = if host.is_empty() { "0.0.0.0" } else { host };
    Ok((host.to_string(), port))
}

/// `id@host:port,...`, as Kafka's `controller.quorum.voters`.
fn parse_voters(key: &str, value: &str) -> Result<Vec<Voter>, ConfigError> {
    let mut voters: Vec<Voter> = Vec::new();
    for entry in value.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let bad = || ConfigError::invalid(key, value, "expected id@host:port,...");
        let (id, address) = entry.split_once('@').ok_or_else(bad)?;
        let id: i32 = id.trim().parse().map_err(|_| bad())?;
        let (host, port) = address.rsplit_once(':').ok_or_else(bad)?;
        let port: u16 = port.parse().map_err(|_| bad())?;
        if id < 0 || voters.iter().any(|v| v.id == id) {
            return Err(ConfigError::invalid(
                key,
                value,
                "voter ids must be distinct and >= 0",
            ));
        }
        voters.push(Voter {
            id,
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string(),
            port,
        });
    }
    Ok(voters)
}

fn parse_listener(key: &str, value: &str) -> Result<SocketAddr, ConfigError> {
    let (host, port) = parse_host_port(key, value)?;
    let host = if host == "localhost" {
        "127.0.0.1".to_string()
    } else {
        host
    };
    let ip: std::net::IpAddr = host
        .parse()
        .map_err(|_| ConfigError::invalid(key, value, "host must be an IP address or localhost"))?;
    Ok(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {

    #[test]
    fn the_journal_ring_shrinks_with_many_cores_and_follows_the_settings() {
        let config = BrokerConfig::default();
        assert_eq!(config.journal_ring_bytes(2), 64 << 20);
        assert_eq!(config.journal_ring_bytes(16), 32 << 20);
        assert_eq!(config.journal_ring_bytes(128), 8 << 20);
        let mut set = config.clone();
        set.journal_bytes = Some(4 << 20);
        assert_eq!(set.journal_ring_bytes(128), 4 << 20);
        // No journal when acks=all does not wait for fdatasync, or on a dedicated controller.
        let mut relaxed = config.clone();
        relaxed.log_flush_interval_ms = 1000;
        assert_eq!(relaxed.journal_ring_bytes(2), 0);
        let mut controller = config;
        controller.broker_role = false;
        assert_eq!(controller.journal_ring_bytes(2), 0);
    }

    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn defaults_match_the_readme() {
        let c = BrokerConfig::from_args(&[]).expect("defaults");
        assert_eq!(c.listener.to_string(), "127.0.0.1:9092");
        assert_eq!(c.log_dirs, PathBuf::from("./sluice-data"));
        assert!(c.sync_before_ack());
    }

    #[test]
    fn overrides_use_kafka_names_and_precedence() {
        let c = BrokerConfig::from_args(&args(&[
            "--override",
            "listeners=PLAINTEXT://0.0.0.0:19092",
            "--override",
            "log.retention.hours=1",
            "--override",
            "log.retention.ms=5000",
            "--cores",
            "2",
        ]))
        .expect("valid");
        assert_eq!(c.listener.port(), 19092);
        assert_eq!(c.advertised_host, "127.0.0.1");
        assert_eq!(c.log_retention_ms, 5000);
        assert_eq!(c.cores, 2);
    }

    #[test]
    fn process_roles_follow_krafts_rules() {
        let voters = "controller.quorum.voters=1@127.0.0.1:9093,2@localhost:9094";
        let c = BrokerConfig::from_args(&args(&[
            "--override",
            "node.id=2",
            "--override",
            voters,
            "--override",
            "process.roles=controller,broker",
        ]))
        .expect("combined mode");
        assert!(c.clustered());
        assert_eq!(c.controller_quorum_voters.len(), 2);
        assert_eq!(
            c.controller_listener(),
            Some(SocketAddr::from(([127, 0, 0, 1], 9094)))
        );
        let e = BrokerConfig::from_args(&args(&["--override", "node.id=3", "--override", voters]))
            .expect_err("not a voter");
        assert!(e.to_string().contains("node.id=3"), "{e}");
        let e = BrokerConfig::from_args(&args(&[
            "--override",
            "node.id=1",
            "--override",
            voters,
            "--override",
            "process.roles=broker",
        ]))
        .expect_err("a voter must be a controller");
        assert!(e.to_string().contains("process.roles"), "{e}");
        let c = BrokerConfig::from_args(&args(&[
            "--override",
            "node.id=3",
            "--override",
            voters,
            "--override",
            "process.roles=broker",
        ]))
        .expect("a broker following the quorum");
        assert!(c.clustered() && c.broker_role && !c.controller_role);
        let c = BrokerConfig::from_args(&args(&[
            "--override",
            "node.id=1",
            "--override",
            voters,
            "--override",
            "process.roles=controller",
        ]))
        .expect("a dedicated controller");
        assert!(c.controller_role && !c.broker_role);
        let c = BrokerConfig::from_args(&args(&["--override", "node.id=2", "--override", voters]))
            .expect("combined by default");
        assert!(c.broker_role && c.controller_role);
        for bad in ["controller", "observer", "", "broker,broker"] {
            let setting = format!("process.roles={bad}");
            let e = BrokerConfig::from_args(&args(&["--override", &setting]))
                .expect_err("no controller without voters, no unknown role");
            assert!(e.to_string().contains("process.roles"), "{e}");
        }
        for bad in ["1@host", "x@h:1", "1@h:1,1@h:2", "-1@h:1"] {
            let setting = format!("controller.quorum.voters={bad}");
            assert!(
                BrokerConfig::from_args(&args(&["--override", &setting])).is_err(),
                "{bad}"
            );
        }
        // A single node may keep its server.properties' KRaft settings.
        let c = BrokerConfig::from_args(&args(&["--override", "process.roles=broker"]))
            .expect("single node");
        assert!(!c.clustered());
    }

    #[test]
    fn unknown_and_invalid_settings_name_the_key() {
        let e = BrokerConfig::from_args(&args(&["--override", "log.segmnt.bytes=1"]))
            .expect_err("typo");
        assert!(e.to_string().contains("log.segmnt.bytes"), "{e}");
        let e = BrokerConfig::from_args(&args(&["--override", "num.partitions=zero"]))
            .expect_err("not a number");
        assert!(e.to_string().contains("num.partitions"), "{e}");
    }

    #[test]
    fn properties_files_parse_like_java() {
        let p = parse_properties("# comment\nnum.partitions = 3\nlog.dirs: /tmp/x\n\n")
            .expect("parses");
        assert_eq!(p[0], ("num.partitions".to_string(), "3".to_string()));
        assert_eq!(p[1], ("log.dirs".to_string(), "/tmp/x".to_string()));
        let c = BrokerConfig::from_settings(&p).expect("valid");
        assert_eq!(c.num_partitions, 3);
    }
}
