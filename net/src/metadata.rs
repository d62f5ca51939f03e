//! Durable topic metadata: which topics exist, their ids, partition counts and configs.
//!
//! Owned by core 0 (the metadata owner); every other core holds a read-only copy that core 0
//! keeps current by broadcast. One file per topic under `<log.dirs>/.sluice/topics/`, written to
//! a temporary name, fsync'ed and renamed, so a crash leaves the old file or the new one, never
//! a torn one. The text format (docs/FORMATS.md) ends with a CRC-32C line; a file whose CRC does
//! not match stops the broker at start rather than guessing.
//!
//! This is control-plane I/O through std::fs (blocking, a few hundred bytes, only when topics
//! are created or deleted), never on the produce/fetch path.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use sluice_core::config::BrokerConfig;
use sluice_core::topic::TopicConfig;
use sluice_replication::metadata_records::PartitionState;

const FORMAT_VERSION: u32 = 1;

/// What every core knows about a topic.
#[derive(Debug, Clone)]
pub struct TopicMeta {
    pub name: String,
    pub id: [u8; 16],
    pub partitions: i32,
    pub config: TopicConfig,
    /// Replicas, ISR, leader and leader epoch of each partition (index = partition). On a single
    /// node this broker is the one replica and the leader of every partition, at epoch 0.
    pub states: Vec<PartitionState>,
}

impl TopicMeta {
    /// A topic of a single node: `node` holds and leads every partition.
    pub fn single_node(
        name: String,
        id: [u8; 16],
        partitions: i32,
        config: TopicConfig,
        node: i32,
    ) -> TopicMeta {
        let state = PartitionState::new(vec![node], vec![node], node, 0);
        TopicMeta {
            name,
            id,
            partitions,
            config,
            states: vec![state; partitions.max(0) as usize],
        }
    }

    /// The leader of a partition, if it has one.
    pub fn leader(&self, partition: i32) -> Option<i32> {
        let state = self.states.get(usize::try_from(partition).ok()?)?;
        (state.leader >= 0).then_some(state.leader)
    }
}

/// A broker of the cluster as every core knows it (Metadata, FindCoordinator, DescribeCluster).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerEndpoint {
    pub id: i32,
    pub host: String,
    pub port: u16,
    pub rack: Option<String>,
    pub fenced: bool,
}

/// The brokers of the cluster and the active controller, one copy per core (core 0 keeps them
/// current by broadcast).
#[derive(Debug, Clone, Default)]
pub struct ClusterView {
    pub brokers: Vec<BrokerEndpoint>,
    /// The node leading the metadata quorum, -1 while there is none.
    pub controller_id: i32,
}

impl ClusterView {
    /// A single node: this broker, its own controller.
    pub fn single_node(broker: &BrokerConfig) -> ClusterView {
        ClusterView {
            brokers: vec![BrokerEndpoint {
                id: broker.node_id,
                host: broker.advertised_host.clone(),
                port: broker.advertised_port,
                rack: broker.broker_rack.clone(),
                fenced: false,
            }],
            controller_id: broker.node_id,
        }
    }

    pub fn broker(&self, id: i32) -> Option<&BrokerEndpoint> {
        self.brokers.iter().find(|b| b.id == id)
    }
}

pub fn metadata_dir(log_dirs: &Path) -> PathBuf {
    log_dirs.join(".sluice")
}

fn topics_dir(log_dirs: &Path) -> PathBuf {
    metadata_dir(log_dirs).join("topics")
}

fn topic_file(log_dirs: &Path, name: &str) -> PathBuf {
    topics_dir(log_dirs).join(format!("{name}.topic"))
}

/// Encodes a topic's metadata file.
pub fn encode(meta: &TopicMeta) -> String {
    let mut body = format!(
        "version={FORMAT_VERSION}\nname={}\nid={}\npartitions={}\n",
        meta.name,
        hex(&meta.id),
        meta.partitions
    );
    for (k, v) in &meta.config.overrides {
        body.push_str(&format!("config.{k}={v}\n"));
    }
    let crc = crc32c::crc32c(body.as_bytes());
    body.push_str(&format!("crc32c={crc:08x}\n"));
    body
}

/// Decodes a topic's metadata file, validating its CRC and the topic config against the
/// broker's current defaults.
pub fn decode(text: &str, broker: &BrokerConfig) -> Result<TopicMeta, String> {
    let crc_at = text.rfind("crc32c=").ok_or("no crc32c line")?;
    let (body, crc_line) = text.split_at(crc_at);
    let want = u32::from_str_radix(crc_line.trim().trim_start_matches("crc32c="), 16)
        .map_err(|_| "bad crc32c line")?;
    if crc32c::crc32c(body.as_bytes()) != want {
        return Err("crc32c mismatch".into());
    }
    let mut fields = BTreeMap::new();
    let mut overrides = BTreeMap::new();
    for line in body.lines() {
        let (k, v) = line
            .split_once('=')
            .ok_or_else(|| format!("bad line '{line}'"))?;
        match k.strip_prefix("config.") {
            Some(key) => _ = overrides.insert(key.to_string(), v.to_string()),
            None => _ = fields.insert(k.to_string(), v.to_string()),
        }
    }
    if fields.get("version").map(String::as_str) != Some("1") {
        return Err("unsupported version".into());
    }
    let name = fields.get("name").ok_or("no name")?.clone();
    let id = unhex(fields.get("id").ok_or("no id")?).ok_or("bad id")?;
    let partitions: i32 = fields
        .get("partitions")
        .ok_or("no partitions")?
        .parse()
        .map_err(|_| "bad partitions")?;
    let config = TopicConfig::with_overrides(broker, &overrides).map_err(|e| e.to_string())?;
    Ok(TopicMeta::single_node(
        name,
        id,
        partitions,
        config,
        broker.node_id,
    ))
}

/// Loads every topic at start (before the reactors run).
pub fn load_all(broker: &BrokerConfig) -> Result<Vec<TopicMeta>, String> {
    let dir = topics_dir(&broker.log_dirs);
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut topics = Vec::new();
    for entry in std::fs::read_dir(&dir).map_err(|e| e.to_string())? {
        let path = entry.map_err(|e| e.to_string())?.path();
        if path.extension().is_none_or(|x| x != "topic") {
            continue;
        }
        let text =
            std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        topics.push(decode(&text, broker).map_err(|e| format!("{}: {e}", path.display()))?);
    }
    topics.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(topics)
}

/// Persists a topic (create).
pub fn store(log_dirs: &Path, meta: &TopicMeta) -> std::io::Result<()> {
    let dir = topics_dir(log_dirs);
    std::fs::create_dir_all(&dir)?;
    let tmp = dir.join(format!(".{}.tmp", meta.name));
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(encode(meta).as_bytes())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, topic_file(log_dirs, &meta.name))?;
    std::fs::File::open(&dir)?.sync_all()
}

/// Removes a topic's metadata (delete). The partition directories are removed by their owners.
pub fn remove(log_dirs: &Path, name: &str) -> std::io::Result<()> {
    std::fs::remove_file(topic_file(log_dirs, name))?;
    std::fs::File::open(topics_dir(log_dirs))?.sync_all()
}

/// The file naming the topic a partition directory belongs to (Kafka keeps one too, KIP-516):
/// `version: 0` and `topic_id: <32 hex digits>`, one per line.
const PARTITION_METADATA: &str = "partition.metadata";

/// Makes `dir` the directory of a partition of the topic with id `topic_id` before its log
/// opens. A directory left by an earlier topic of the same name (deleted while this broker was
/// down, then created again) is removed, so the new topic never starts with the old one's
/// records; true when that happened. A directory without the file (an older sluice) is taken
/// as this topic's. Control-plane std::fs I/O, at open only.
pub fn claim_partition_dir(dir: &Path, topic_id: &[u8; 16]) -> std::io::Result<bool> {
    let file = dir.join(PARTITION_METADATA);
    let mut removed = false;
    if let Ok(text) = std::fs::read_to_string(&file) {
        let stored = text
            .lines()
            .find_map(|l| l.strip_prefix("topic_id: "))
            .and_then(|id| unhex(id.trim()));
        if stored.as_ref() == Some(topic_id) {
            return Ok(false);
        }
        std::fs::remove_dir_all(dir)?;
        removed = true;
    }
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".{PARTITION_METADATA}.tmp"));
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(format!("version: 0\ntopic_id: {}\n", hex(topic_id)).as_bytes())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, &file)?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(removed)
}

/// Removes the partition directories under `log_dirs` that no topic this broker holds owns
/// (`held(topic, partition)` false): left by a topic deleted, or a replica moved away, while
/// the broker was down. Only directories named `<topic>-<partition>` are looked at. Returns
/// the names removed.
pub fn remove_stray_logs(log_dirs: &Path, held: &dyn Fn(&str, i32) -> bool) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(log_dirs) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
        let Some((topic, partition)) = name.rsplit_once('-') else {
            continue;
        };
        let Ok(partition) = partition.parse::<i32>() else {
            continue;
        };
        if !is_dir || name.starts_with('.') || partition < 0 || held(topic, partition) {
            continue;
        }
        match std::fs::remove_dir_all(entry.path()) {
            Ok(()) => removed.push(name),
            Err(e) => eprintln!("sluice: cannot remove the stray log {name}: {e}"),
        }
    }
    removed
}

/// The cluster id, created once and kept in `meta.properties` like Kafka's.
pub fn cluster_id(broker: &BrokerConfig) -> std::io::Result<String> {
    let dir = metadata_dir(&broker.log_dirs);
    std::fs::create_dir_all(&dir)?;
    let path = broker.log_dirs.join("meta.properties");
    if let Ok(text) = std::fs::read_to_string(&path) {
        if let Some(id) = text.lines().find_map(|l| l.strip_prefix("cluster.id=")) {
            return Ok(id.trim().to_string());
        }
    }
    let id = if broker.clustered() {
        quorum_cluster_id(broker)
    } else {
        base64_url(uuid::Uuid::new_v4().as_bytes())
    };
    let text = format!("version=1\ncluster.id={id}\nnode.id={}\n", broker.node_id);
    let tmp = broker.log_dirs.join(".meta.properties.tmp");
    std::fs::write(&tmp, text)?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    Ok(id)
}

/// The nodes of a quorum must agree on the cluster id without a formatting step (Kafka's
/// `kafka-storage.sh format --cluster-id`): it is derived from the voter list they share.
fn quorum_cluster_id(broker: &BrokerConfig) -> String {
    let voters: Vec<String> = broker
        .controller_quorum_voters
        .iter()
        .map(|v| format!("{}@{}:{}", v.id, v.host, v.port))
        .collect();
    let text = voters.join(",");
    let mut bytes = [0u8; 16];
    let (low, high) = (fnv1a(text.as_bytes(), 0), fnv1a(text.as_bytes(), 1));
    bytes[..8].copy_from_slice(&low.to_le_bytes());
    bytes[8..].copy_from_slice(&high.to_le_bytes());
    base64_url(&bytes)
}

/// FNV-1a of `seed` then `bytes`: two independent halves of one id.
fn fnv1a(bytes: &[u8], seed: u8) -> u64 {
    sluice_core::placement::fnv1a(&[&[seed][..], bytes].concat())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<[u8; 16]> {
    if s.len() != 32 {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(s.get(i * 2..i * 2 + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Kafka prints cluster ids as URL-safe base64 of 16 bytes without padding.
fn base64_url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, b)| acc | (u32::from(*b) << (16 - 8 * i)));
        let chars = chunk.len() + 1;
        for i in 0..chars {
            out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_files_round_trip_and_detect_damage() {
        let broker = BrokerConfig::default();
        let mut overrides = BTreeMap::new();
        overrides.insert("retention.ms".to_string(), "60000".to_string());
        let meta = TopicMeta::single_node(
            "orders".into(),
            [7; 16],
            12,
            TopicConfig::with_overrides(&broker, &overrides).expect("valid"),
            broker.node_id,
        );
        let text = encode(&meta);
        let back = decode(&text, &broker).expect("decodes");
        assert_eq!(back.name, "orders");
        assert_eq!(back.id, [7; 16]);
        assert_eq!(back.partitions, 12);
        assert_eq!(back.config.retention_ms, 60000);
        let damaged = text.replace("partitions=12", "partitions=13");
        assert!(decode(&damaged, &broker).is_err());
        assert_eq!(base64_url(&[0u8; 16]).len(), 22);
    }
}
