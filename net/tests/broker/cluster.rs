//! Clusters of real `sluice` processes: the metadata quorum (Raft) that every node runs, brokers
//! registering and being fenced, topics created through any node, and librdkafka following the
//! partition leaders over several brokers.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use kafka_protocol::messages::offset_for_leader_epoch_request::{
    OffsetForLeaderPartition, OffsetForLeaderTopic,
};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, DescribeClusterRequest,
    DescribeClusterResponse, DescribeQuorumRequest, DescribeQuorumResponse, ElectLeadersRequest,
    ElectLeadersResponse, FindCoordinatorRequest, FindCoordinatorResponse, MetadataRequest,
    MetadataResponse, OffsetForLeaderEpochRequest, OffsetForLeaderEpochResponse,
};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::Message;

use crate::common::{call, free_port, Broker, Raw};
use crate::netns::Network;

/// Timeouts short enough for tests: a broker heartbeats every 200 ms and is fenced after 2 s
/// of silence; a controller stands for election after 500 ms without a leader.
pub(crate) const FAST: &[&str] = &[
    "broker.heartbeat.interval.ms=200",
    "broker.session.timeout.ms=2000",
    "controller.quorum.election.timeout.ms=500",
];

/// N nodes, each a broker and a voter of the metadata quorum (node ids 1..=N; `nodes[i]` is
/// node i+1) — or N broker-only nodes and C dedicated controllers (ids N+1..=N+C).
pub struct Cluster {
    /// Declared before the network: the nodes stop before their namespaces go.
    pub nodes: Vec<Broker>,
    /// The namespaces the nodes run in, for clusters whose links a test cuts.
    pub network: Option<Network>,
    /// How many of the nodes (the first ones) are brokers.
    brokers: usize,
    _dir: tempfile::TempDir,
}

/// A node's client and controller ports inside its own network namespace.
const NETNS_PORTS: (u16, u16) = (9092, 9093);

impl Cluster {
    pub fn start(n: usize, extra: &[&str]) -> Cluster {
        Cluster::start_on(None, n, 0, extra, &|_| Vec::new())
    }

    /// `brokers` broker-only nodes (ids 1..=brokers) following a quorum of `controllers`
    /// dedicated controllers (the ids after them): KRaft's split roles.
    pub fn start_split(brokers: usize, controllers: usize, extra: &[&str]) -> Cluster {
        Cluster::start_on(None, brokers, controllers, extra, &|_| Vec::new())
    }

    /// N nodes with settings of their own besides `extra`: `per_node(i)` for node i (1..=N).
    pub fn start_with(
        n: usize,
        extra: &[&str],
        per_node: &dyn Fn(usize) -> Vec<String>,
    ) -> Cluster {
        Cluster::start_on(None, n, 0, extra, per_node)
    }

    /// `start_split` with every node in its own network namespace (controllers too).
    pub fn start_split_partitionable(
        brokers: usize,
        controllers: usize,
        extra: &[&str],
    ) -> Cluster {
        Cluster::start_on(
            Some(Network::create(brokers + controllers)),
            brokers,
            controllers,
            extra,
            &|_| Vec::new(),
        )
    }

    /// N nodes, each in its own network namespace (see `netns`): `network()` cuts links.
    pub fn start_partitionable(n: usize, extra: &[&str]) -> Cluster {
        Cluster::start_on(Some(Network::create(n)), n, 0, extra, &|_| Vec::new())
    }

    /// `brokers` nodes and, with `controllers` > 0, that many dedicated controllers after them
    /// (the brokers then only follow the quorum); with none, every node is both.
    fn start_on(
        network: Option<Network>,
        brokers: usize,
        controllers: usize,
        extra: &[&str],
        per_node: &dyn Fn(usize) -> Vec<String>,
    ) -> Cluster {
        let n = brokers + controllers;
        let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
        let ports: Vec<(u16, u16)> = (0..n)
            .map(|_| match network {
                Some(_) => NETNS_PORTS,
                None => (free_port(), free_port()),
            })
            .collect();
        let host = |i: usize| {
            network
                .as_ref()
                .map_or("127.0.0.1".to_string(), |net| net.host(i + 1))
        };
        let is_voter = |i: usize| controllers == 0 || i >= brokers;
        let voters: Vec<String> = ports
            .iter()
            .enumerate()
            .filter(|(i, _)| is_voter(*i))
            .map(|(i, (_, controller))| format!("{}@{}:{controller}", i + 1, host(i)))
            .collect();
        let voters = format!("controller.quorum.voters={}", voters.join(","));
        let mut nodes = Vec::new();
        for (i, (port, _)) in ports.iter().enumerate() {
            let id = format!("node.id={}", i + 1);
            let roles = match (controllers, is_voter(i)) {
                (0, _) => "process.roles=broker,controller",
                (_, true) => "process.roles=controller",
                (_, false) => "process.roles=broker",
            };
            let mut settings = vec![id.as_str(), voters.as_str(), roles];
            settings.extend_from_slice(extra);
            let own = per_node(i + 1);
            settings.extend(own.iter().map(String::as_str));
            let node_dir = dir.path().join(format!("node-{}", i + 1));
            let log = dir.path().join(format!("node-{}.log", i + 1));
            nodes.push(match &network {
                None if i >= brokers => {
                    Broker::prepare_controller(node_dir.join("data"), ports[i].1, &settings, log)
                }
                Some(net) if i >= brokers => Broker::prepare_controller_in(
                    &net.netns(i + 1),
                    &host(i),
                    node_dir.join("data"),
                    ports[i].1,
                    &settings,
                    log,
                ),
                Some(net) => Broker::prepare_in(
                    &net.netns(i + 1),
                    &host(i),
                    node_dir.join("data"),
                    *port,
                    &settings,
                    log,
                ),
                None => Broker::prepare(node_dir.join("data"), *port, &settings, log),
            });
        }
        for node in &mut nodes {
            node.restart();
        }
        let cluster = Cluster {
            nodes,
            network,
            brokers,
            _dir: dir,
        };
        for node in 1..=brokers {
            cluster.wait_for_brokers(node, brokers);
        }
        cluster
    }

    pub fn node(&self, id: i32) -> &Broker {
        &self.nodes[id as usize - 1]
    }

    pub fn node_mut(&mut self, id: i32) -> &mut Broker {
        &mut self.nodes[id as usize - 1]
    }

    /// The namespaces of a cluster started with `start_partitionable`.
    pub fn network(&self) -> &Network {
        self.network.as_ref().expect("a partitionable cluster")
    }

    /// A raw connection to node `id`.
    pub fn raw(&self, id: i32) -> Raw {
        let node = self.node(id);
        Raw::connect_to(&node.host, node.port)
    }

    /// Every node's address: what a client is given.
    pub fn bootstrap(&self) -> String {
        let all: Vec<String> = self.nodes[..self.brokers]
            .iter()
            .map(Broker::bootstrap)
            .collect();
        all.join(",")
    }

    /// Metadata (v12, every topic) as node `id` answers it.
    pub fn metadata(&self, id: i32) -> MetadataResponse {
        let mut raw = self.raw(id);
        call(
            &mut raw,
            ApiKey::Metadata,
            12,
            &MetadataRequest::default().with_topics(None),
        )
    }

    /// Metadata as node `id` answers it, if it does (it may be down, cut off or restarting).
    pub fn try_metadata(&self, id: i32) -> Option<MetadataResponse> {
        let node = self.node(id);
        crate::common::try_call(
            &node.host,
            node.port,
            ApiKey::Metadata,
            12,
            &MetadataRequest::default().with_topics(None),
        )
    }

    /// The active controller, as node `id` knows it (-1: none).
    pub fn controller(&self, id: i32) -> i32 {
        let mut raw = self.raw(id);
        let answer: DescribeClusterResponse = call(
            &mut raw,
            ApiKey::DescribeCluster,
            0,
            &DescribeClusterRequest::default(),
        );
        answer.controller_id.0
    }

    /// DescribeQuorum (v2) for `__cluster_metadata`-0 as node `id` answers it.
    pub fn describe_quorum(&self, id: i32) -> DescribeQuorumResponse {
        let request = DescribeQuorumRequest::default().with_topics(vec![
            kafka_protocol::messages::describe_quorum_request::TopicData::default()
                .with_topic_name(kafka_protocol::messages::TopicName(
                    kafka_protocol::protocol::StrBytes::from_static_str("__cluster_metadata"),
                ))
                .with_partitions(vec![
                    kafka_protocol::messages::describe_quorum_request::PartitionData::default(),
                ]),
        ]);
        call(&mut self.raw(id), ApiKey::DescribeQuorum, 2, &request)
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

pub(crate) fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(f)
}

pub(crate) fn admin(bootstrap: &str) -> AdminClient<DefaultClientContext> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("admin")
}

/// CreateTopics through the nodes of `bootstrap`; the topic's own error, if any.
pub(crate) fn create_topic(
    bootstrap: &str,
    name: &str,
    partitions: i32,
    replication: i32,
) -> Result<(), String> {
    create_topic_with(bootstrap, name, partitions, replication, &[])
}

pub(crate) fn create_topic_with(
    bootstrap: &str,
    name: &str,
    partitions: i32,
    replication: i32,
    configs: &[(&str, &str)],
) -> Result<(), String> {
    let mut topic = NewTopic::new(name, partitions, TopicReplication::Fixed(replication));
    for (k, v) in configs {
        topic = topic.set(k, v);
    }
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
pub(crate) fn produce(bootstrap: &str, topic: &str, prefix: &str, count: usize) -> Vec<(i32, i64)> {
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

/// Reads every partition of `topic` from the start until at least `count` records arrived and
/// nothing more comes for a second: values by partition, in offset order.
pub(crate) fn consume(
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
    crate::common::assign_from_beginning(&consumer, topic, partitions);
    let mut got: BTreeMap<i32, Vec<(i64, String)>> = BTreeMap::new();
    let mut seen = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut quiet_since = Instant::now();
    while seen < count || quiet_since.elapsed() < Duration::from_secs(1) {
        assert!(
            Instant::now() < deadline,
            "read {seen} of {count} records of {topic}"
        );
        if let Some(message) = consumer.poll(Duration::from_millis(200)) {
            quiet_since = Instant::now();
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
pub(crate) fn leaders(metadata: &MetadataResponse, topic: &str) -> Vec<i32> {
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
    // More replicas than brokers is refused.
    let refused = create_topic(&cluster.bootstrap(), "too-many", 3, 4).expect_err("refused");
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
    // A cluster node advertises what a single node does, transactions included.
    let mut raw = Raw::connect(cluster.node(1).port);
    let versions: ApiVersionsResponse = call(
        &mut raw,
        ApiKey::ApiVersions,
        3,
        &ApiVersionsRequest::default(),
    );
    let keys: BTreeSet<i16> = versions.api_keys.iter().map(|k| k.api_key).collect();
    assert!(keys.contains(&(ApiKey::Produce as i16)));
    assert!(keys.contains(&(ApiKey::EndTxn as i16)));
    assert!(keys.contains(&(ApiKey::WriteTxnMarkers as i16)));
    assert_eq!(versions.finalized_features.len(), 1, "transaction.version");
    // DescribeQuorum, asked of any node (the others pass it on to the quorum's leader).
    let controller = cluster.controller(1);
    for id in 1..=3 {
        let quorum = cluster.describe_quorum(id);
        let p = &quorum.topics[0].partitions[0];
        assert_eq!(
            (p.error_code, p.leader_id.0),
            (0, controller),
            "asked node {id}"
        );
        assert!(p.high_watermark > 0);
        let voters: Vec<i32> = p.current_voters.iter().map(|v| v.replica_id.0).collect();
        assert_eq!(voters, vec![1, 2, 3]);
        assert_eq!(quorum.nodes.len(), 3);
    }
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

/// (leader, replicas, isr) of one partition in a Metadata answer.
pub(crate) fn partition_state(
    metadata: &MetadataResponse,
    topic: &str,
    partition: i32,
) -> (i32, Vec<i32>, Vec<i32>) {
    let topic = metadata
        .topics
        .iter()
        .find(|t| t.name.as_ref().is_some_and(|n| n.as_str() == topic))
        .unwrap_or_else(|| panic!("{topic} in metadata"));
    let p = topic
        .partitions
        .iter()
        .find(|p| p.partition_index == partition)
        .expect("the partition");
    (
        p.leader_id.0,
        p.replica_nodes.iter().map(|r| r.0).collect(),
        p.isr_nodes.iter().map(|r| r.0).collect(),
    )
}

/// A producer that gives up at the first error, so a test sees the broker's answer.
pub(crate) fn strict_producer(bootstrap: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("acks", "all")
        .set("enable.idempotence", "false")
        .set("retries", "0")
        .set("message.timeout.ms", "10000")
        .create()
        .expect("producer")
}

/// Values read from every partition of `topic`, in offset order per partition.
pub(crate) fn values(got: &BTreeMap<i32, Vec<(i64, String)>>) -> Vec<String> {
    got.values().flatten().map(|(_, v)| v.clone()).collect()
}

#[test]
fn with_three_replicas_and_min_insync_two_writes_survive_one_loss_and_fail_visibly_at_two() {
    // Five nodes keep the metadata quorum (3 of 5) while two of the topic's three replicas
    // are down.
    let mut settings = FAST.to_vec();
    settings.extend(["cores=1", "replica.lag.time.max.ms=2000"]);
    let mut cluster = Cluster::start(5, &settings);
    create_topic_with(
        &cluster.bootstrap(),
        "durable",
        1,
        3,
        &[("min.insync.replicas", "2")],
    )
    .expect("created");
    let (leader, replicas, isr) = partition_state(&cluster.metadata(1), "durable", 0);
    assert_eq!(replicas.len(), 3);
    assert_eq!(isr.len(), 3);
    assert_eq!(leader, replicas[0]);
    let watcher = (1..=5)
        .find(|n| !replicas.contains(n))
        .expect("a node without a replica");
    let mut acked = Vec::new();
    acked.extend(produce(&cluster.bootstrap(), "durable", "a", 50));
    // One follower down: it leaves the ISR and writes go on with two.
    let (first, second) = (replicas[1], replicas[2]);
    cluster.node_mut(first).kill9();
    wait_for(
        "the ISR without the first follower",
        Duration::from_secs(20),
        || {
            partition_state(&cluster.metadata(watcher), "durable", 0)
                .2
                .len()
                == 2
        },
    );
    acked.extend(produce(&cluster.bootstrap(), "durable", "b", 50));
    // A second one down: the ISR is the leader alone, below min.insync.replicas, and acks=all
    // fails visibly rather than pretending.
    cluster.node_mut(second).kill9();
    wait_for(
        "the ISR down to the leader",
        Duration::from_secs(20),
        || partition_state(&cluster.metadata(watcher), "durable", 0).2 == vec![leader],
    );
    let producer = strict_producer(&cluster.bootstrap());
    let refused = block_on(producer.send(
        FutureRecord::to("durable").key("k").payload("refused"),
        Duration::from_secs(10),
    ));
    let error = refused.expect_err("refused").0;
    assert_eq!(
        error.rdkafka_error_code(),
        Some(rdkafka::types::RDKafkaErrorCode::NotEnoughReplicas),
        "{error:?}"
    );
    // They come back, catch up, and the ISR fills again.
    cluster.node_mut(first).restart();
    cluster.node_mut(second).restart();
    wait_for("the ISR refilled", Duration::from_secs(30), || {
        partition_state(&cluster.metadata(watcher), "durable", 0)
            .2
            .len()
            == 3
    });
    acked.extend(produce(&cluster.bootstrap(), "durable", "c", 50));
    let got = consume(&cluster.bootstrap(), "durable", 1, 150);
    let read = values(&got);
    let expected: Vec<String> = (0..50)
        .map(|i| format!("a-{i}"))
        .chain((0..50).map(|i| format!("b-{i}")))
        .chain((0..50).map(|i| format!("c-{i}")))
        .collect();
    let mut sorted_read = read.clone();
    sorted_read.sort();
    let mut sorted_expected = expected.clone();
    sorted_expected.sort();
    assert_eq!(
        sorted_read, sorted_expected,
        "every acknowledged record once, nothing else"
    );
    let offsets: Vec<i64> = got[&0].iter().map(|(o, _)| *o).collect();
    assert_eq!(
        offsets,
        (0..150).collect::<Vec<i64>>(),
        "no offset twice, no gap"
    );
    assert_eq!(acked.len(), 150);
}

#[test]
fn when_the_leader_dies_mid_produce_an_in_sync_replica_takes_over_and_nothing_acked_is_lost() {
    let mut settings = FAST.to_vec();
    settings.push("replica.lag.time.max.ms=3000");
    let mut cluster = Cluster::start(3, &settings);
    create_topic_with(
        &cluster.bootstrap(),
        "failover",
        2,
        3,
        &[("min.insync.replicas", "2")],
    )
    .expect("created");
    let (leader, _, _) = partition_state(&cluster.metadata(1), "failover", 0);
    let bootstrap = cluster.bootstrap();
    // A producer keeps writing while the leader of partition 0 is killed, once it has had
    // writes acknowledged.
    let acks = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = acks.clone();
    let writer = std::thread::spawn(move || {
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .set("message.timeout.ms", "60000")
            .set("linger.ms", "2")
            .create()
            .expect("producer");
        block_on(async {
            let mut acked = Vec::new();
            for round in 0..40 {
                let sends: Vec<_> = (0..25)
                    .map(|i| {
                        let value = format!("w-{round}-{i}");
                        let key = format!("{}", i % 2);
                        let producer = producer.clone();
                        let counted = counted.clone();
                        async move {
                            let result = producer
                                .send(
                                    FutureRecord::to("failover")
                                        .partition(i % 2)
                                        .key(&key)
                                        .payload(&value),
                                    Duration::from_secs(60),
                                )
                                .await;
                            if result.is_ok() {
                                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            }
                            result.ok().map(|d| (d.partition, d.offset, value))
                        }
                    })
                    .collect();
                acked.extend(futures::future::join_all(sends).await.into_iter().flatten());
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            acked
        })
    });
    wait_for(
        "writes acknowledged before the kill",
        Duration::from_secs(30),
        || acks.load(std::sync::atomic::Ordering::SeqCst) >= 100,
    );
    let killed_at = Instant::now();
    cluster.node_mut(leader).kill9();
    let watcher = (1..=3).find(|n| *n != leader).expect("a survivor");
    wait_for("a new leader from the ISR", Duration::from_secs(15), || {
        let (now, _, _) = partition_state(&cluster.metadata(watcher), "failover", 0);
        now != leader && now != -1
    });
    let elected_after = killed_at.elapsed();
    let acked = writer.join().expect("writer");
    assert!(
        acked.len() >= 900,
        "most writes acknowledged: {}",
        acked.len()
    );
    // The old leader returns as a follower, truncates whatever it had beyond the new leader,
    // and catches up.
    cluster.node_mut(leader).restart();
    wait_for(
        "the old leader back in the ISR",
        Duration::from_secs(30),
        || {
            (0..2).all(|p| {
                partition_state(&cluster.metadata(watcher), "failover", p)
                    .2
                    .len()
                    == 3
            })
        },
    );
    let total: usize = 1000;
    let got = consume(&cluster.bootstrap(), "failover", 2, acked.len());
    let read: BTreeSet<String> = values(&got).into_iter().collect();
    for (partition, offset, value) in &acked {
        let at = got[partition]
            .iter()
            .find(|(o, _)| o == offset)
            .unwrap_or_else(|| panic!("acknowledged {value} at {partition}/{offset} is gone"));
        assert_eq!(
            &at.1, value,
            "offset {offset} of partition {partition} holds another record"
        );
    }
    assert_eq!(read.len(), values(&got).len(), "no record twice");
    assert!(read.len() <= total);
    for (partition, records) in &got {
        let offsets: Vec<i64> = records.iter().map(|(o, _)| *o).collect();
        assert!(
            offsets.windows(2).all(|w| w[1] == w[0] + 1),
            "partition {partition} has gaps"
        );
    }
    eprintln!("new leader elected {elected_after:?} after kill -9");
    // OffsetForLeaderEpoch on the new leader: epoch 0 ended where the new leadership began;
    // the current epoch ends at the log end; an asker with an older current epoch is fenced.
    let metadata = cluster.metadata(watcher);
    let (now_leader, _, _) = partition_state(&metadata, "failover", 0);
    let epoch = metadata
        .topics
        .iter()
        .flat_map(|t| &t.partitions)
        .find(|p| p.partition_index == 0 && p.leader_id.0 == now_leader)
        .map(|p| p.leader_epoch)
        .expect("partition 0");
    assert!(epoch >= 1);
    let ask = |current: i32, asked: i32| {
        let mut raw = Raw::connect(cluster.node(now_leader).port);
        let request = OffsetForLeaderEpochRequest::default()
            .with_replica_id(kafka_protocol::messages::BrokerId(-1))
            .with_topics(vec![OffsetForLeaderTopic::default()
                .with_topic(kafka_protocol::messages::TopicName(
                    kafka_protocol::protocol::StrBytes::from_static_str("failover"),
                ))
                .with_partitions(vec![OffsetForLeaderPartition::default()
                    .with_partition(0)
                    .with_current_leader_epoch(current)
                    .with_leader_epoch(asked)])]);
        let answer: OffsetForLeaderEpochResponse =
            call(&mut raw, ApiKey::OffsetForLeaderEpoch, 4, &request);
        let p = answer.topics[0].partitions[0].clone();
        (p.error_code, p.leader_epoch, p.end_offset)
    };
    let log_end = got[&0].last().map_or(0, |(o, _)| o + 1);
    let (error, answered, end) = ask(epoch, 0);
    assert_eq!((error, answered), (0, 0));
    assert!(
        end > 0 && end <= log_end,
        "epoch 0 ended at {end}, log end {log_end}"
    );
    assert_eq!(ask(epoch, epoch), (0, epoch, log_end));
    assert_eq!(ask(epoch - 1, 0).0, 74, "FENCED_LEADER_EPOCH");
}

#[test]
fn a_frozen_follower_leaves_the_isr_after_the_lag_time_and_rejoins_once_caught_up() {
    // Sessions far longer than the lag time: the follower leaves the ISR because it stopped
    // copying, not because it was fenced.
    let cluster = Cluster::start(
        3,
        &[
            "broker.heartbeat.interval.ms=200",
            "broker.session.timeout.ms=60000",
            "controller.quorum.election.timeout.ms=500",
            "replica.lag.time.max.ms=1500",
        ],
    );
    create_topic(&cluster.bootstrap(), "lagging", 1, 3).expect("created");
    let controller = cluster.controller(1);
    let (leader, replicas, _) = partition_state(&cluster.metadata(1), "lagging", 0);
    let frozen = *replicas
        .iter()
        .find(|r| **r != leader && **r != controller)
        .or_else(|| replicas.iter().find(|r| **r != leader))
        .expect("a follower");
    let watcher = leader;
    produce(&cluster.bootstrap(), "lagging", "before", 20);
    let pid = cluster.node(frozen).pid() as i32;
    unsafe {
        libc::kill(pid, libc::SIGSTOP);
    }
    let frozen_at = Instant::now();
    // Writes with acks=all go on once it is out (min.insync.replicas is 1).
    let producer = std::thread::spawn({
        let bootstrap = cluster.bootstrap();
        move || produce(&bootstrap, "lagging", "during", 20)
    });
    wait_for(
        "the frozen follower out of the ISR",
        Duration::from_secs(15),
        || {
            !partition_state(&cluster.metadata(watcher), "lagging", 0)
                .2
                .contains(&frozen)
        },
    );
    assert!(
        frozen_at.elapsed() >= Duration::from_millis(1500),
        "not before the lag time"
    );
    assert_eq!(producer.join().expect("producer").len(), 20);
    unsafe {
        libc::kill(pid, libc::SIGCONT);
    }
    wait_for(
        "the follower back in the ISR",
        Duration::from_secs(15),
        || {
            partition_state(&cluster.metadata(watcher), "lagging", 0)
                .2
                .contains(&frozen)
        },
    );
    assert_eq!(
        values(&consume(&cluster.bootstrap(), "lagging", 1, 40)).len(),
        40
    );
}

/// The scenario of a leader cut off from the cluster after its followers fell out of the ISR:
/// it alone has the last acknowledged records. Kills the followers, writes 20 records that only
/// the leader takes (min.insync.replicas 1), freezes the leader (cut off: no heartbeats, no
/// fetches served), brings the followers back, and returns (the cluster, the topic's replicas,
/// the frozen leader's pid, a node that holds no replica).
/// The leader of a partition becomes its only in-sync replica (its followers are killed), takes
/// 20 more records, and is then partitioned off from everyone (its network unplugged: it runs
/// on, unreachable) while the followers come back. None when network namespaces cannot be made
/// here (outside CI).
fn strand_the_only_in_sync_replica(unclean: &str) -> Option<(Cluster, Vec<i32>, i32)> {
    if !Network::available() {
        eprintln!("skipped: network namespaces cannot be made here (run as root)");
        return None;
    }
    // Five nodes: the quorum keeps three while the leader is cut off and one follower is down.
    let mut settings = FAST.to_vec();
    settings.extend(["cores=1", "replica.lag.time.max.ms=2000"]);
    let mut cluster = Cluster::start_partitionable(5, &settings);
    create_topic_with(
        &cluster.bootstrap(),
        "stranded",
        1,
        3,
        &[("unclean.leader.election.enable", unclean)],
    )
    .expect("created");
    let (leader, replicas, _) = partition_state(&cluster.metadata(1), "stranded", 0);
    let watcher = (1..=5)
        .find(|n| !replicas.contains(n))
        .expect("a bystander");
    produce(&cluster.bootstrap(), "stranded", "shared", 30);
    for follower in replicas.iter().filter(|r| **r != leader) {
        cluster.node_mut(*follower).kill9();
    }
    wait_for(
        "the ISR down to the leader",
        Duration::from_secs(20),
        || partition_state(&cluster.metadata(watcher), "stranded", 0).2 == vec![leader],
    );
    produce(&cluster.bootstrap(), "stranded", "only-leader", 20);
    cluster.network().disconnect(leader as usize);
    for follower in replicas.iter().filter(|r| **r != leader) {
        cluster.node_mut(*follower).restart();
    }
    // The cut-off leader is fenced; it was the last in-sync replica.
    wait_for("the leader fenced", Duration::from_secs(20), || {
        !cluster.brokers_seen_by(watcher).contains(&leader)
    });
    Some((cluster, replicas, watcher))
}

#[test]
fn with_unclean_election_off_a_partition_whose_in_sync_replicas_are_gone_stays_offline() {
    let Some((cluster, _, watcher)) = strand_the_only_in_sync_replica("false") else {
        return;
    };
    // The followers are back, but not in sync: no leader, rather than a leader without the
    // last acknowledged records.
    std::thread::sleep(Duration::from_secs(3));
    let (leader, _, isr) = partition_state(&cluster.metadata(watcher), "stranded", 0);
    assert_eq!(leader, -1, "offline");
    assert_eq!(isr.len(), 1);
    // The in-sync replica comes back and leads again, with every acknowledged record.
    cluster.network().reconnect(isr[0] as usize);
    wait_for(
        "the in-sync replica leading again",
        Duration::from_secs(20),
        || partition_state(&cluster.metadata(watcher), "stranded", 0).0 == isr[0],
    );
    let read = values(&consume(&cluster.bootstrap(), "stranded", 1, 50));
    assert_eq!(read.len(), 50, "nothing lost");
    assert!(read.iter().any(|v| v == "only-leader-19"));
}

#[test]
fn with_unclean_election_on_an_out_of_sync_replica_leads_and_the_loss_is_reported() {
    let Some((cluster, replicas, watcher)) = strand_the_only_in_sync_replica("true") else {
        return;
    };
    let old_leader = {
        let (_, _, isr) = partition_state(&cluster.metadata(watcher), "stranded", 0);
        isr[0]
    };
    wait_for("an unclean leader", Duration::from_secs(20), || {
        let (leader, _, _) = partition_state(&cluster.metadata(watcher), "stranded", 0);
        leader != -1 && leader != old_leader
    });
    let (leader, _, isr) = partition_state(&cluster.metadata(watcher), "stranded", 0);
    assert!(replicas.contains(&leader));
    // The ISR restarted from the new leader alone (the other follower may have caught up and
    // joined it since); the old leader is out.
    assert!(
        isr.contains(&leader) && !isr.contains(&old_leader),
        "{isr:?}"
    );
    // Available again, without what only the old leader had: the loss is the 20 records.
    produce(&cluster.bootstrap(), "stranded", "after", 10);
    let read = values(&consume(&cluster.bootstrap(), "stranded", 1, 40));
    let lost = (0..20)
        .filter(|i| !read.contains(&format!("only-leader-{i}")))
        .count();
    assert_eq!(lost, 20, "{read:?}");
    assert_eq!(read.len(), 40);
    let reported = (1..=5).any(|n| {
        cluster
            .node(n)
            .log()
            .contains("stranded-0: unclean leader election")
    });
    assert!(reported, "the controller reports the unclean election");
    // The old leader returns, truncates what it alone had, and follows.
    cluster.network().reconnect(old_leader as usize);
    wait_for("the old leader truncated", Duration::from_secs(20), || {
        cluster
            .node(old_leader)
            .log()
            .contains("stranded-0: truncated from 50 to 30")
    });
}

#[test]
fn a_group_coordinator_moves_with_leadership_and_committed_offsets_survive_its_broker() {
    let mut cluster = Cluster::start(3, FAST);
    create_topic(&cluster.bootstrap(), "work", 3, 3).expect("created");
    produce(&cluster.bootstrap(), "work", "before", 60);
    let member = |bootstrap: &str| -> BaseConsumer {
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("group.id", "workers")
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("session.timeout.ms", "6000")
            .create()
            .expect("consumer");
        c.subscribe(&["work"]).expect("subscribe");
        c
    };
    let read = |c: &BaseConsumer, count: usize| -> Vec<String> {
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while got.len() < count {
            assert!(Instant::now() < deadline, "read {} of {count}", got.len());
            if let Some(Ok(m)) = c.poll(Duration::from_millis(200)) {
                got.push(String::from_utf8_lossy(m.payload().unwrap_or_default()).to_string());
            }
        }
        got
    };
    {
        let first = member(&cluster.bootstrap());
        assert_eq!(read(&first, 60).len(), 60);
        first
            .commit_consumer_state(rdkafka::consumer::CommitMode::Sync)
            .expect("committed");
    }
    // The group's coordinator, and its __consumer_offsets partition replicated on 3 brokers.
    let mut raw = Raw::connect(cluster.node(1).port);
    let found: FindCoordinatorResponse = call(
        &mut raw,
        ApiKey::FindCoordinator,
        3,
        &FindCoordinatorRequest::default().with_key(
            kafka_protocol::protocol::StrBytes::from_static_str("workers"),
        ),
    );
    assert_eq!(found.error_code, 0);
    let coordinator = found.node_id.0;
    let metadata = cluster.metadata(1);
    let offsets_topic = metadata
        .topics
        .iter()
        .find(|t| {
            t.name
                .as_ref()
                .is_some_and(|n| n.as_str() == "__consumer_offsets")
        })
        .expect("__consumer_offsets");
    assert!(offsets_topic
        .partitions
        .iter()
        .all(|p| p.replica_nodes.len() == 3));
    // Its broker dies: another in-sync replica of the partition takes over the group, loading
    // it from its copy of the log.
    cluster.node_mut(coordinator).kill9();
    produce(&cluster.bootstrap(), "work", "after", 30);
    let second = member(&cluster.bootstrap());
    let got = read(&second, 30);
    assert!(
        got.iter().all(|v| v.starts_with("after-")),
        "the group resumed from its committed offsets: {got:?}"
    );
    let mut raw = Raw::connect(cluster.node((coordinator % 3) + 1).port);
    let moved: FindCoordinatorResponse = call(
        &mut raw,
        ApiKey::FindCoordinator,
        3,
        &FindCoordinatorRequest::default().with_key(
            kafka_protocol::protocol::StrBytes::from_static_str("workers"),
        ),
    );
    assert_eq!(moved.error_code, 0);
    assert_ne!(moved.node_id.0, coordinator, "the coordinator moved");
}

/// Kills node 1 and brings it back: leadership of the partitions it preferred has moved to
/// other replicas; returns once node 1 is back in every ISR of `topic`.
fn displace_node_one(cluster: &mut Cluster, topic: &str, partitions: i32) -> Vec<i32> {
    let preferred_by_one: Vec<i32> = (0..partitions)
        .filter(|p| partition_state(&cluster.metadata(2), topic, *p).1[0] == 1)
        .collect();
    assert!(!preferred_by_one.is_empty());
    cluster.node_mut(1).kill9();
    wait_for("leaders off node 1", Duration::from_secs(15), || {
        (0..partitions).all(|p| partition_state(&cluster.metadata(2), topic, p).0 != 1)
    });
    cluster.node_mut(1).restart();
    wait_for("node 1 back in every ISR", Duration::from_secs(30), || {
        (0..partitions).all(|p| partition_state(&cluster.metadata(2), topic, p).2.len() == 3)
    });
    preferred_by_one
}

#[test]
fn elect_leaders_moves_leadership_back_to_the_preferred_replica() {
    let mut settings = FAST.to_vec();
    settings.push("auto.leader.rebalance.enable=false");
    let mut cluster = Cluster::start(3, &settings);
    create_topic(&cluster.bootstrap(), "preferred", 6, 3).expect("created");
    let moved = displace_node_one(&mut cluster, "preferred", 6);
    // Without the automatic rebalance, node 1 stays a follower of what it prefers.
    std::thread::sleep(Duration::from_secs(1));
    for p in &moved {
        assert_ne!(partition_state(&cluster.metadata(2), "preferred", *p).0, 1);
    }
    // ElectLeaders (preferred, every partition): exactly the displaced ones are elected.
    let mut raw = Raw::connect(cluster.node(3).port);
    let answer: ElectLeadersResponse = call(
        &mut raw,
        ApiKey::ElectLeaders,
        2,
        &ElectLeadersRequest::default()
            .with_election_type(0)
            .with_topic_partitions(None)
            .with_timeout_ms(10_000),
    );
    let mut elected: Vec<i32> = answer
        .replica_election_results
        .iter()
        .flat_map(|t| &t.partition_result)
        .map(|p| {
            assert_eq!(p.error_code, 0, "{p:?}");
            p.partition_id
        })
        .collect();
    elected.sort_unstable();
    assert_eq!(elected, moved);
    wait_for(
        "node 1 leading what it prefers",
        Duration::from_secs(10),
        || {
            // Node 1's own view too: the fetches below go to it.
            moved.iter().all(|p| {
                partition_state(&cluster.metadata(2), "preferred", *p).0 == 1
                    && partition_state(&cluster.metadata(1), "preferred", *p).0 == 1
            })
        },
    );
    // Asking again for a named partition: not needed.
    let topic = kafka_protocol::messages::elect_leaders_request::TopicPartitions::default()
        .with_topic(kafka_protocol::messages::TopicName(
            kafka_protocol::protocol::StrBytes::from_static_str("preferred"),
        ))
        .with_partitions(vec![moved[0]]);
    let again: ElectLeadersResponse = call(
        &mut raw,
        ApiKey::ElectLeaders,
        2,
        &ElectLeadersRequest::default()
            .with_election_type(0)
            .with_topic_partitions(Some(vec![topic]))
            .with_timeout_ms(10_000),
    );
    assert_eq!(
        again.replica_election_results[0].partition_result[0].error_code, 84,
        "ELECTION_NOT_NEEDED"
    );
    // A consumer fetching with the leader epoch it knows: the current one is served, an older
    // one is fenced, a newer one unknown (the client refreshes its metadata).
    let metadata = cluster.metadata(1);
    let epoch = metadata
        .topics
        .iter()
        .filter(|t| t.name.as_ref().is_some_and(|n| n.as_str() == "preferred"))
        .flat_map(|t| &t.partitions)
        .find(|p| p.partition_index == moved[0])
        .map(|p| p.leader_epoch)
        .expect("the partition");
    let fetch_with = |leader_epoch: i32| {
        let mut raw = Raw::connect(cluster.node(1).port);
        let request = kafka_protocol::messages::FetchRequest::default()
            .with_replica_id(kafka_protocol::messages::BrokerId(-1))
            .with_max_wait_ms(0)
            .with_max_bytes(1 << 20)
            .with_session_epoch(-1)
            .with_topics(vec![
                kafka_protocol::messages::fetch_request::FetchTopic::default()
                    .with_topic(kafka_protocol::messages::TopicName(
                        kafka_protocol::protocol::StrBytes::from_static_str("preferred"),
                    ))
                    .with_partitions(vec![
                        kafka_protocol::messages::fetch_request::FetchPartition::default()
                            .with_partition(moved[0])
                            .with_current_leader_epoch(leader_epoch)
                            .with_fetch_offset(0)
                            .with_partition_max_bytes(1 << 20),
                    ]),
            ]);
        let answer: kafka_protocol::messages::FetchResponse =
            call(&mut raw, ApiKey::Fetch, 12, &request);
        answer.responses[0].partitions[0].error_code
    };
    assert_eq!(fetch_with(epoch), 0);
    assert_eq!(fetch_with(-1), 0, "an epoch-less client is served");
    assert_eq!(fetch_with(epoch - 1), 74, "FENCED_LEADER_EPOCH");
    assert_eq!(fetch_with(epoch + 1), 75, "UNKNOWN_LEADER_EPOCH");
    // ListOffsets checks it the same way, and answers with the log's newest leader epoch.
    let list_with = |leader_epoch: i32| {
        let mut raw = Raw::connect(cluster.node(1).port);
        let request = kafka_protocol::messages::ListOffsetsRequest::default()
            .with_replica_id(kafka_protocol::messages::BrokerId(-1))
            .with_topics(vec![
                kafka_protocol::messages::list_offsets_request::ListOffsetsTopic::default()
                    .with_name(kafka_protocol::messages::TopicName(
                        kafka_protocol::protocol::StrBytes::from_static_str("preferred"),
                    ))
                    .with_partitions(vec![
                        kafka_protocol::messages::list_offsets_request::ListOffsetsPartition::default()
                            .with_partition_index(moved[0])
                            .with_current_leader_epoch(leader_epoch)
                            .with_timestamp(-1),
                    ]),
            ]);
        let answer: kafka_protocol::messages::ListOffsetsResponse =
            call(&mut raw, ApiKey::ListOffsets, 8, &request);
        let p = &answer.topics[0].partitions[0];
        (p.error_code, p.leader_epoch)
    };
    assert_eq!(list_with(epoch), (0, epoch));
    assert_eq!(list_with(-1), (0, epoch));
    assert_eq!(list_with(epoch - 1).0, 74, "FENCED_LEADER_EPOCH");
    assert_eq!(list_with(epoch + 1).0, 75, "UNKNOWN_LEADER_EPOCH");
    // Nothing was lost moving leadership around.
    produce(&cluster.bootstrap(), "preferred", "x", 60);
    assert_eq!(
        values(&consume(&cluster.bootstrap(), "preferred", 6, 60)).len(),
        60
    );
}

#[test]
fn the_controller_moves_leadership_back_to_preferred_replicas_by_itself() {
    let mut settings = FAST.to_vec();
    settings.push("leader.imbalance.check.interval.seconds=1");
    let mut cluster = Cluster::start(3, &settings);
    create_topic(&cluster.bootstrap(), "rebalanced", 6, 3).expect("created");
    let moved = displace_node_one(&mut cluster, "rebalanced", 6);
    wait_for("leadership back on node 1", Duration::from_secs(15), || {
        moved
            .iter()
            .all(|p| partition_state(&cluster.metadata(2), "rebalanced", *p).0 == 1)
    });
}
