//! Clusters of real `sluice` processes: the metadata quorum (Raft) that every node runs, brokers
//! registering and being fenced, topics created through any node, and librdkafka following the
//! partition leaders over several brokers.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, DescribeClusterRequest,
    DescribeClusterResponse, MetadataRequest, MetadataResponse,
};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message, Offset, TopicPartitionList};

use crate::common::{call, free_port, Broker, Raw};

/// Timeouts short enough for tests: a broker heartbeats every 200 ms and is fenced after 2 s
/// of silence; a controller stands for election after 500 ms without a leader.
const FAST: &[&str] = &[
    "broker.heartbeat.interval.ms=200",
    "broker.session.timeout.ms=2000",
    "controller.quorum.election.timeout.ms=500",
];

/// N nodes, each a broker and a voter of the metadata quorum (node ids 1..=N; `nodes[i]` is
/// node i+1).
pub struct Cluster {
    pub nodes: Vec<Broker>,
    _dir: tempfile::TempDir,
}

impl Cluster {
    pub fn start(n: usize, extra: &[&str]) -> Cluster {
        let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
        let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
        let voters: Vec<String> = ports
            .iter()
            .enumerate()
            .map(|(i, (_, controller))| format!("{}@127.0.0.1:{controller}", i + 1))
            .collect();
        let voters = format!("controller.quorum.voters={}", voters.join(","));
        let mut nodes = Vec::new();
        for (i, (port, _)) in ports.iter().enumerate() {
            let id = format!("node.id={}", i + 1);
            let mut settings = vec![
                id.as_str(),
                voters.as_str(),
                "process.roles=broker,controller",
            ];
            settings.extend_from_slice(extra);
            let node_dir = dir.path().join(format!("node-{}", i + 1));
            nodes.push(Broker::prepare(
                node_dir.join("data"),
                *port,
                &settings,
                dir.path().join(format!("node-{}.log", i + 1)),
            ));
        }
        for node in &mut nodes {
            node.restart();
        }
        let cluster = Cluster { nodes, _dir: dir };
        for node in 1..=n {
            cluster.wait_for_brokers(node, n);
        }
        cluster
    }

    pub fn node(&self, id: i32) -> &Broker {
        &self.nodes[id as usize - 1]
    }

    pub fn node_mut(&mut self, id: i32) -> &mut Broker {
        &mut self.nodes[id as usize - 1]
    }

    /// Every node's address: what a client is given.
    pub fn bootstrap(&self) -> String {
        let all: Vec<String> = self.nodes.iter().map(Broker::bootstrap).collect();
        all.join(",")
    }

    /// Metadata (v12, every topic) as node `id` answers it.
    pub fn metadata(&self, id: i32) -> MetadataResponse {
        let mut raw = Raw::connect(self.node(id).port);
        call(
            &mut raw,
            ApiKey::Metadata,
            12,
            &MetadataRequest::default().with_topics(None),
        )
    }

    /// The active controller, as node `id` knows it (-1: none).
    pub fn controller(&self, id: i32) -> i32 {
        let mut raw = Raw::connect(self.node(id).port);
        let answer: DescribeClusterResponse = call(
            &mut raw,
            ApiKey::DescribeCluster,
            0,
            &DescribeClusterRequest::default(),
        );
        answer.controller_id.0
    }

    /// The live brokers node `id` lists in Metadata.
    pub fn brokers_seen_by(&self, id: i32) -> BTreeSet<i32> {
        self.metadata(id)
            .brokers
            .iter()
            .map(|b| b.node_id.0)
            .collect()
    }

    /// Waits until node `id` lists `count` live brokers.
    pub fn wait_for_brokers(&self, id: usize, count: usize) {
        wait_for(
            &format!("node {id} to see {count} live brokers"),
            Duration::from_secs(30),
            || self.brokers_seen_by(id as i32).len() == count,
        );
    }
}

pub fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(f)
}

fn admin(bootstrap: &str) -> AdminClient<DefaultClientContext> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("admin")
}

/// CreateTopics through the nodes of `bootstrap`; the topic's own error, if any.
fn create_topic(
    bootstrap: &str,
    name: &str,
    partitions: i32,
    replication: i32,
) -> Result<(), String> {
    let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(replication));
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(25)));
    let results =
        block_on(admin(bootstrap).create_topics(&[topic], &options)).map_err(|e| e.to_string())?;
    results
        .into_iter()
        .next()
        .expect("one result")
        .map(|_| ())
        .map_err(|(_, code)| format!("{code:?}"))
}

/// Produces `count` records `{prefix}-{i}` keyed by i with acks=all and idempotence; returns
/// (partition, offset) of each, in order.
fn produce(bootstrap: &str, topic: &str, prefix: &str, count: usize) -> Vec<(i32, i64)> {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()
        .expect("producer");
    block_on(async {
        let sends: Vec<_> = (0..count)
            .map(|i| {
                let key = i.to_string();
                let value = format!("{prefix}-{i}");
                let producer = producer.clone();
                let topic = topic.to_string();
                async move {
                    producer
                        .send(
                            FutureRecord::to(&topic).key(&key).payload(&value),
                            Duration::from_secs(30),
                        )
                        .await
                }
            })
            .collect();
        futures::future::join_all(sends)
            .await
            .into_iter()
            .map(|r| {
                let delivered = r.expect("acknowledged");
                (delivered.partition, delivered.offset)
            })
            .collect()
    })
}

/// Reads every partition of `topic` from the start until `count` records arrived: values by
/// partition, in offset order.
fn consume(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    count: usize,
) -> BTreeMap<i32, Vec<(i64, String)>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("reader-{}", free_port()))
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut assignment = TopicPartitionList::new();
    for p in 0..partitions {
        assignment
            .add_partition_offset(topic, p, Offset::Beginning)
            .expect("assign");
    }
    consumer.assign(&assignment).expect("assign");
    let mut got: BTreeMap<i32, Vec<(i64, String)>> = BTreeMap::new();
    let mut seen = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen < count {
        assert!(
            Instant::now() < deadline,
            "read {seen} of {count} records of {topic}"
        );
        if let Some(message) = consumer.poll(Duration::from_millis(200)) {
            let message = message.expect("a record");
            let value = String::from_utf8_lossy(message.payload().unwrap_or_default()).to_string();
            got.entry(message.partition())
                .or_default()
                .push((message.offset(), value));
            seen += 1;
        }
    }
    got
}

/// The leader of each partition of `topic` in a Metadata answer (-1: none).
fn leaders(metadata: &MetadataResponse, topic: &str) -> Vec<i32> {
    let topic = metadata
        .topics
        .iter()
        .find(|t| t.name.as_ref().is_some_and(|n| n.as_str() == topic))
        .unwrap_or_else(|| panic!("{topic} in metadata"));
    let mut leaders: Vec<(i32, i32)> = topic
        .partitions
        .iter()
        .map(|p| (p.partition_index, p.leader_id.0))
        .collect();
    leaders.sort_unstable();
    leaders.into_iter().map(|(_, leader)| leader).collect()
}

#[test]
fn partitions_spread_over_the_brokers_and_clients_follow_their_leaders() {
    let cluster = Cluster::start(3, FAST);
    // Created through node 2 only: a node that is not the active controller forwards it.
    create_topic(&cluster.node(2).bootstrap(), "spread", 6, 1).expect("created");
    let metadata = cluster.metadata(3);
    assert_eq!(
        metadata
            .brokers
            .iter()
            .map(|b| b.node_id.0)
            .collect::<BTreeSet<_>>(),
        BTreeSet::from([1, 2, 3])
    );
    let led = leaders(&metadata, "spread");
    for broker in 1..=3 {
        assert_eq!(
            led.iter().filter(|l| **l == broker).count(),
            2,
            "each broker leads 2 of the 6 partitions: {led:?}"
        );
    }
    assert!((1..=3).contains(&metadata.controller_id.0));
    // Every node answers with the same view.
    for node in [1, 2] {
        assert_eq!(leaders(&cluster.metadata(node), "spread"), led);
    }
    // Replication is not built yet: a replication factor above 1 is refused, not faked.
    let refused = create_topic(&cluster.bootstrap(), "replicated", 3, 3).expect_err("refused");
    assert!(refused.contains("InvalidReplicationFactor"), "{refused}");
    // The client talks to node 1 only; it finds every partition's leader by itself.
    let acked = produce(&cluster.node(1).bootstrap(), "spread", "v", 600);
    let partitions: BTreeSet<i32> = acked.iter().map(|(p, _)| *p).collect();
    assert_eq!(partitions.len(), 6, "keys spread over every partition");
    let got = consume(&cluster.node(3).bootstrap(), "spread", 6, 600);
    for (partition, records) in &got {
        let offsets: Vec<i64> = records.iter().map(|(o, _)| *o).collect();
        let expected: Vec<i64> = (0..records.len() as i64).collect();
        assert_eq!(
            offsets, expected,
            "partition {partition}: offsets from 0, no gaps"
        );
    }
    let values: BTreeSet<String> = got.values().flatten().map(|(_, v)| v.clone()).collect();
    assert_eq!(values.len(), 600, "every record once");
    // Transactions need a single node for now: a cluster node does not advertise them.
    let mut raw = Raw::connect(cluster.node(1).port);
    let versions: ApiVersionsResponse = call(
        &mut raw,
        ApiKey::ApiVersions,
        3,
        &ApiVersionsRequest::default(),
    );
    let keys: BTreeSet<i16> = versions.api_keys.iter().map(|k| k.api_key).collect();
    assert!(keys.contains(&(ApiKey::Produce as i16)));
    assert!(!keys.contains(&(ApiKey::EndTxn as i16)));
    assert!(versions.finalized_features.is_empty());
}

#[test]
fn the_quorum_elects_a_new_controller_and_a_returning_broker_leads_again() {
    let mut cluster = Cluster::start(3, FAST);
    create_topic(&cluster.bootstrap(), "before", 3, 1).expect("created");
    let acked = produce(&cluster.bootstrap(), "before", "b", 90);
    let first = cluster.controller(1);
    assert!((1..=3).contains(&first), "a controller: {first}");
    cluster.node_mut(first).kill9();
    let survivor = (1..=3).find(|n| *n != first).expect("a survivor");
    // The quorum (2 of 3) elects another controller, and topics can be created again.
    wait_for("a new controller", Duration::from_secs(15), || {
        let now = cluster.controller(survivor);
        now != -1 && now != first
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match create_topic(&cluster.node(survivor).bootstrap(), "after", 2, 1) {
            Ok(()) => break,
            Err(e) => assert!(
                Instant::now() < deadline,
                "no topic creation after failover: {e}"
            ),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    // Without heartbeats the dead broker is fenced: gone from Metadata, its partitions without
    // a leader (replication factor 1: no other replica may take over) and listed offline.
    wait_for("the dead broker fenced", Duration::from_secs(15), || {
        !cluster.brokers_seen_by(survivor).contains(&first)
    });
    let metadata = cluster.metadata(survivor);
    let topic = metadata
        .topics
        .iter()
        .find(|t| t.name.as_ref().is_some_and(|n| n.as_str() == "before"))
        .expect("before");
    for p in &topic.partitions {
        if p.replica_nodes.iter().any(|r| r.0 == first) {
            assert_eq!(p.leader_id.0, -1);
            assert_eq!(p.error_code, 5, "LEADER_NOT_AVAILABLE");
            assert_eq!(
                p.offline_replicas.iter().map(|r| r.0).collect::<Vec<_>>(),
                vec![first]
            );
        } else {
            assert_ne!(p.leader_id.0, -1);
        }
    }
    // It comes back: registers, is unfenced, and leads its partitions again with its data.
    cluster.node_mut(first).restart();
    wait_for("the broker back", Duration::from_secs(20), || {
        cluster.brokers_seen_by(survivor).len() == 3
            && leaders(&cluster.metadata(survivor), "before")
                .iter()
                .all(|l| *l != -1)
    });
    let got = consume(&cluster.bootstrap(), "before", 3, acked.len());
    let values: BTreeSet<String> = got.values().flatten().map(|(_, v)| v.clone()).collect();
    assert_eq!(values.len(), 90, "every acknowledged record, once");
    assert_eq!(cluster.controller(first), cluster.controller(survivor));
}

#[test]
fn a_frozen_broker_is_fenced_and_unfenced_when_it_thaws() {
    let mut cluster = Cluster::start(3, FAST);
    create_topic(&cluster.bootstrap(), "thaw", 3, 1).expect("created");
    let controller = cluster.controller(1);
    let frozen = (1..=3)
        .find(|n| *n != controller)
        .expect("a non-controller");
    let watcher = controller;
    let pid = cluster.node_mut(frozen).pid() as i32;
    unsafe {
        libc::kill(pid, libc::SIGSTOP);
    }
    wait_for("the frozen broker fenced", Duration::from_secs(15), || {
        !cluster.brokers_seen_by(watcher).contains(&frozen)
    });
    assert!(leaders(&cluster.metadata(watcher), "thaw").contains(&-1));
    unsafe {
        libc::kill(pid, libc::SIGCONT);
    }
    wait_for("the thawed broker back", Duration::from_secs(15), || {
        cluster.brokers_seen_by(watcher).contains(&frozen)
            && !leaders(&cluster.metadata(watcher), "thaw").contains(&-1)
    });
    // And it serves its partitions again.
    let acked = produce(&cluster.bootstrap(), "thaw", "t", 30);
    assert_eq!(acked.len(), 30);
    let got = consume(&cluster.bootstrap(), "thaw", 3, 30);
    assert_eq!(got.values().map(Vec::len).sum::<usize>(), 30);
}
