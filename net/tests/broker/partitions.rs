//! Partitions and where their replicas live: CreatePartitions, replica assignments given at
//! creation, and reassignment (AlterPartitionReassignments / ListPartitionReassignments) — on a
//! single node, and on clusters of real processes while a producer keeps writing.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::alter_partition_reassignments_request::{
    ReassignablePartition, ReassignableTopic,
};
use kafka_protocol::messages::{
    AlterPartitionReassignmentsRequest, AlterPartitionReassignmentsResponse, ApiKey, BrokerId,
    ListPartitionReassignmentsRequest, ListPartitionReassignmentsResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use rdkafka::admin::{AdminOptions, NewPartitions, NewTopic, TopicReplication};
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::cluster::{
    admin, block_on, consume, create_topic, partition_state, wait_for, Cluster, FAST,
};
use crate::common::{call, Broker, Raw};
use crate::faults::{write_until, History};

fn options() -> AdminOptions {
    AdminOptions::new().operation_timeout(Some(Duration::from_secs(25)))
}

/// CreatePartitions through rdkafka's admin client: the topic's own error, if any.
fn create_partitions(
    bootstrap: &str,
    topic: &str,
    count: usize,
    assignment: Option<&[&[i32]]>,
) -> Result<(), String> {
    let mut wanted = NewPartitions::new(topic, count);
    if let Some(assignment) = assignment {
        wanted = wanted.assign(assignment);
    }
    let results = block_on(admin(bootstrap).create_partitions(&[wanted], &options()))
        .map_err(|e| e.to_string())?;
    results
        .into_iter()
        .next()
        .expect("one result")
        .map(|_| ())
        .map_err(|(_, code)| format!("{code:?}"))
}

/// CreateTopics with the replicas of each partition given.
fn create_assigned(bootstrap: &str, topic: &str, replicas: &[&[i32]]) -> Result<(), String> {
    let new = NewTopic::new(
        topic,
        replicas.len() as i32,
        TopicReplication::Variable(replicas),
    );
    let results =
        block_on(admin(bootstrap).create_topics(&[new], &options())).map_err(|e| e.to_string())?;
    results
        .into_iter()
        .next()
        .expect("one result")
        .map(|_| ())
        .map_err(|(_, code)| format!("{code:?}"))
}

/// The partition count of `topic` in node `port`'s Metadata.
fn partition_count(port: u16, topic: &str) -> usize {
    let mut raw = Raw::connect(port);
    let metadata: kafka_protocol::messages::MetadataResponse = call(
        &mut raw,
        ApiKey::Metadata,
        12,
        &kafka_protocol::messages::MetadataRequest::default().with_topics(None),
    );
    metadata
        .topics
        .iter()
        .find(|t| t.name.as_ref().is_some_and(|n| n.as_str() == topic))
        .map_or(0, |t| t.partitions.len())
}

fn name(topic: &str) -> TopicName {
    TopicName(StrBytes::from_string(topic.to_string()))
}

/// AlterPartitionReassignments: (topic, partition, error code) per partition asked about.
fn reassign(
    port: u16,
    version: i16,
    allow_replication_factor_change: bool,
    moves: &[(&str, i32, Option<&[i32]>)],
) -> Vec<(String, i32, i16)> {
    let topics = moves
        .iter()
        .map(|(topic, partition, replicas)| {
            ReassignableTopic::default()
                .with_name(name(topic))
                .with_partitions(vec![ReassignablePartition::default()
                    .with_partition_index(*partition)
                    .with_replicas(
                        replicas.map(|r| r.iter().copied().map(BrokerId).collect()),
                    )])
        })
        .collect();
    let mut raw = Raw::connect(port);
    let answer: AlterPartitionReassignmentsResponse = call(
        &mut raw,
        ApiKey::AlterPartitionReassignments,
        version,
        &AlterPartitionReassignmentsRequest::default()
            .with_timeout_ms(20_000)
            .with_allow_replication_factor_change(allow_replication_factor_change)
            .with_topics(topics),
    );
    assert_eq!(answer.error_code, 0, "{answer:?}");
    answer
        .responses
        .iter()
        .flat_map(|t| {
            t.partitions
                .iter()
                .map(|p| (t.name.0.to_string(), p.partition_index, p.error_code))
        })
        .collect()
}

/// A reassignment in progress as ListPartitionReassignments shows it.
#[derive(Debug, PartialEq, Eq)]
struct Ongoing {
    topic: String,
    partition: i32,
    replicas: Vec<i32>,
    adding: Vec<i32>,
    removing: Vec<i32>,
}

fn list_reassignments(port: u16) -> Vec<Ongoing> {
    let mut raw = Raw::connect(port);
    let answer: ListPartitionReassignmentsResponse = call(
        &mut raw,
        ApiKey::ListPartitionReassignments,
        0,
        &ListPartitionReassignmentsRequest::default()
            .with_timeout_ms(10_000)
            .with_topics(None),
    );
    assert_eq!(answer.error_code, 0, "{answer:?}");
    let ids = |ids: &[BrokerId]| ids.iter().map(|b| b.0).collect::<Vec<i32>>();
    answer
        .topics
        .iter()
        .flat_map(|t| {
            t.partitions.iter().map(|p| Ongoing {
                topic: t.name.0.to_string(),
                partition: p.partition_index,
                replicas: ids(&p.replicas),
                adding: ids(&p.adding_replicas),
                removing: ids(&p.removing_replicas),
            })
        })
        .collect()
}

fn code(error: ResponseError) -> i16 {
    error.code()
}

fn signal(broker: &Broker, signal: i32) {
    // SAFETY: kill(2) on a child process this test started.
    unsafe {
        libc::kill(broker.pid() as i32, signal);
    }
}

/// Produces `count` records to `partition` of `topic` with acks=all; their offsets.
fn produce_to(bootstrap: &str, topic: &str, partition: i32, count: usize) -> Vec<i64> {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("acks", "all")
        .create()
        .expect("producer");
    block_on(async {
        let mut offsets = Vec::new();
        for i in 0..count {
            let value = format!("{topic}-{partition}-{i}");
            let delivered = producer
                .send(
                    FutureRecord::<(), _>::to(topic)
                        .partition(partition)
                        .payload(&value),
                    Duration::from_secs(30),
                )
                .await
                .expect("acknowledged");
            offsets.push(delivered.offset);
        }
        offsets
    })
}

#[test]
fn a_single_node_adds_partitions_and_refuses_what_it_cannot_do() {
    let mut broker = Broker::start(&[]);
    let bootstrap = broker.bootstrap();
    create_topic(&bootstrap, "grow", 2, 1).expect("created");
    create_partitions(&bootstrap, "grow", 5, None).expect("grown to 5");
    assert_eq!(partition_count(broker.port, "grow"), 5);
    assert_eq!(produce_to(&bootstrap, "grow", 4, 3), vec![0, 1, 2]);
    let got = consume(&bootstrap, "grow", 5, 3);
    assert_eq!(got.keys().copied().collect::<Vec<_>>(), vec![4]);
    // Kafka's answers to what cannot be done.
    let refused = |topic: &str, count: usize, assignment: Option<&[&[i32]]>| {
        create_partitions(&bootstrap, topic, count, assignment).expect_err("refused")
    };
    assert_eq!(refused("grow", 3, None), "InvalidPartitions");
    assert_eq!(refused("grow", 5, None), "InvalidPartitions");
    assert_eq!(refused("missing", 3, None), "UnknownTopicOrPartition");
    assert_eq!(
        refused("grow", 6, Some(&[&[7]])),
        "InvalidReplicaAssignment"
    );
    assert_eq!(refused("__consumer_offsets", 60, None), "InvalidRequest");
    create_partitions(&bootstrap, "grow", 6, Some(&[&[0]])).expect("assigned to this node");
    // Replica assignments at creation: only this broker exists.
    create_assigned(&bootstrap, "placed", &[&[0], &[0], &[0]]).expect("created as assigned");
    assert_eq!(partition_count(broker.port, "placed"), 3);
    assert_eq!(
        create_assigned(&bootstrap, "misplaced", &[&[0], &[3]]).expect_err("refused"),
        "InvalidReplicaAssignment"
    );
    // A one-broker cluster moves nothing: to itself is done already, elsewhere is invalid.
    let answers = reassign(
        broker.port,
        1,
        true,
        &[
            ("grow", 0, Some(&[0])),
            ("grow", 1, Some(&[1])),
            ("grow", 2, None),
            ("missing", 0, Some(&[0])),
        ],
    );
    let codes: Vec<i16> = answers.iter().map(|a| a.2).collect();
    assert_eq!(
        codes,
        vec![
            0,
            code(ResponseError::InvalidReplicaAssignment),
            code(ResponseError::NoReassignmentInProgress),
            code(ResponseError::UnknownTopicOrPartition),
        ]
    );
    assert!(list_reassignments(broker.port).is_empty());
    // The new partitions are durable.
    broker.terminate();
    broker.restart();
    assert_eq!(partition_count(broker.port, "grow"), 6);
    let got = consume(&broker.bootstrap(), "grow", 6, 3);
    assert_eq!(got[&4].len(), 3);
}

#[test]
fn a_cluster_adds_partitions_placed_or_as_assigned() {
    let cluster = Cluster::start(3, FAST);
    let bootstrap = cluster.bootstrap();
    create_topic(&bootstrap, "wider", 2, 2).expect("created");
    create_partitions(&cluster.node(2).bootstrap(), "wider", 4, None).expect("placed");
    create_partitions(&bootstrap, "wider", 5, Some(&[&[3, 1]])).expect("assigned");
    wait_for(
        "every node to see 5 partitions",
        Duration::from_secs(10),
        || (1..=3).all(|id| partition_count(cluster.node(id).port, "wider") == 5),
    );
    let metadata = cluster.metadata(1);
    for p in 0..5 {
        let (leader, replicas, isr) = partition_state(&metadata, "wider", p);
        assert_eq!(replicas.len(), 2, "partition {p}: {replicas:?}");
        assert_eq!(isr.len(), 2, "partition {p}: {isr:?}");
        assert!(replicas.contains(&leader));
    }
    assert_eq!(
        partition_state(&metadata, "wider", 4),
        (3, vec![3, 1], vec![3, 1])
    );
    assert_eq!(
        create_partitions(&bootstrap, "wider", 6, Some(&[&[3]])).expect_err("refused"),
        "InvalidReplicaAssignment",
        "a replication factor other than the topic's"
    );
    for p in 2..5 {
        assert_eq!(produce_to(&bootstrap, "wider", p, 5), vec![0, 1, 2, 3, 4]);
    }
    let got = consume(&bootstrap, "wider", 5, 15);
    for p in 2..5 {
        assert_eq!(got[&p].len(), 5, "partition {p}");
    }
    // Two requests for 8 partitions at once: one grows the topic, the other is told it has
    // 8 already (not grown to 11).
    let racing: Vec<_> = (1..=2)
        .map(|n| {
            let bootstrap = cluster.node(n).bootstrap();
            std::thread::spawn(move || create_partitions(&bootstrap, "wider", 8, None))
        })
        .collect();
    let mut outcomes: Vec<Result<(), String>> = racing
        .into_iter()
        .map(|t| t.join().expect("joined"))
        .collect();
    outcomes.sort();
    assert_eq!(
        outcomes,
        vec![Ok(()), Err("InvalidPartitions".to_string())],
        "exactly one of two concurrent requests grows the topic"
    );
    wait_for("8 partitions", Duration::from_secs(10), || {
        partition_count(cluster.node(3).port, "wider") == 8
    });
    // Assigned at creation: the replicas as given, the first leading.
    create_assigned(&bootstrap, "by-hand", &[&[3, 2], &[1, 3]]).expect("created");
    let metadata = cluster.metadata(2);
    assert_eq!(partition_state(&metadata, "by-hand", 0).1, vec![3, 2]);
    assert_eq!(partition_state(&metadata, "by-hand", 1).0, 1);
    assert_eq!(
        create_assigned(&bootstrap, "nowhere", &[&[1, 9]]).expect_err("refused"),
        "InvalidReplicaAssignment"
    );
}

#[test]
fn replicas_move_under_load_and_nothing_acknowledged_is_lost() {
    let cluster = Cluster::start(4, FAST);
    let bootstrap = cluster.bootstrap();
    create_assigned(&bootstrap, "moving", &[&[1, 2, 3], &[2, 3, 1]]).expect("created");
    let stop = Arc::new(AtomicBool::new(false));
    let history = Arc::new(History::default());
    let producer = write_until(
        bootstrap.clone(),
        "moving",
        2,
        stop.clone(),
        history.clone(),
    );
    let acked = &history.acked;
    wait_for("records to flow", Duration::from_secs(20), || {
        acked.lock().expect("not poisoned").len() >= 200
    });
    // Node 4 is frozen, so what it is given stays in progress until it thaws.
    signal(cluster.node(4), libc::SIGSTOP);
    let answers = reassign(
        cluster.node(2).port,
        1,
        true,
        &[
            ("moving", 0, Some(&[4, 2, 3])),
            ("moving", 1, Some(&[4, 3, 1])),
        ],
    );
    assert!(answers.iter().all(|a| a.2 == 0), "{answers:?}");
    let ongoing = list_reassignments(cluster.node(3).port);
    assert_eq!(
        ongoing,
        vec![
            Ongoing {
                topic: "moving".into(),
                partition: 0,
                replicas: vec![4, 2, 3, 1],
                adding: vec![4],
                removing: vec![1],
            },
            Ongoing {
                topic: "moving".into(),
                partition: 1,
                replicas: vec![4, 3, 1, 2],
                adding: vec![4],
                removing: vec![2],
            },
        ]
    );
    // What cannot be done, while moves are in progress.
    let refused = reassign(
        cluster.node(1).port,
        1,
        false,
        &[
            ("moving", 0, Some(&[1, 9, 2])),
            ("moving", 0, Some(&[2, 3])),
            ("missing", 0, Some(&[1])),
        ],
    );
    let codes: Vec<i16> = refused.iter().map(|a| a.2).collect();
    assert_eq!(
        codes,
        vec![
            code(ResponseError::InvalidReplicaAssignment),
            code(ResponseError::InvalidReplicationFactor),
            code(ResponseError::UnknownTopicOrPartition),
        ]
    );
    // Partition 1's move is cancelled: back to its replicas (in the order the move listed
    // them, as Kafka does), node 2 leading as before.
    let cancelled = reassign(cluster.node(1).port, 0, true, &[("moving", 1, None)]);
    assert_eq!(cancelled[0].2, 0, "{cancelled:?}");
    let ongoing = list_reassignments(cluster.node(1).port);
    assert_eq!(ongoing.len(), 1, "{ongoing:?}");
    assert_eq!(ongoing[0].partition, 0);
    let (leader, replicas, _) = partition_state(&cluster.metadata(1), "moving", 1);
    assert_eq!((leader, replicas), (2, vec![3, 1, 2]));
    assert_eq!(
        reassign(cluster.node(1).port, 0, true, &[("moving", 1, None)])[0].2,
        code(ResponseError::NoReassignmentInProgress)
    );
    // Thawed, node 4 copies partition 0 while the producer goes on; the controller then drops
    // node 1 from it, and node 4 (the first target replica in sync) leads.
    signal(cluster.node(4), libc::SIGCONT);
    wait_for(
        "the move of partition 0 to complete",
        Duration::from_secs(60),
        || list_reassignments(cluster.node(2).port).is_empty(),
    );
    wait_for("every node to see it", Duration::from_secs(10), || {
        (1..=4).all(|id| {
            let (leader, replicas, isr) = partition_state(&cluster.metadata(id), "moving", 0);
            let mut isr = isr;
            isr.sort_unstable();
            leader == 4 && replicas == vec![4, 2, 3] && isr == vec![2, 3, 4]
        })
    });
    // The replicas moved away are deleted: node 1's copy of partition 0, and node 4's of
    // partition 1 (made, or not, while the cancelled move was in progress).
    wait_for(
        "moved-away copies to be deleted",
        Duration::from_secs(10),
        || {
            !cluster.node(1).data.join("moving-0").exists()
                && !cluster.node(4).data.join("moving-1").exists()
        },
    );
    assert!(cluster.node(4).data.join("moving-0").exists());
    let before = acked.lock().expect("not poisoned").len();
    // Generous: the whole suite runs clusters side by side on two cores.
    wait_for(
        "more records through the new leader",
        Duration::from_secs(60),
        || acked.lock().expect("not poisoned").len() >= before + 200,
    );
    stop.store(true, Ordering::Relaxed);
    producer
        .join()
        .expect("the producer saw every record acknowledged");
    // Every acknowledged record is where it was acknowledged, once; offsets have no gaps.
    let acked = acked.lock().expect("not poisoned").clone();
    let got = consume(&bootstrap, "moving", 2, acked.len());
    let mut by_offset: BTreeMap<(i32, i64), String> = BTreeMap::new();
    for (partition, records) in &got {
        for (i, (offset, value)) in records.iter().enumerate() {
            assert_eq!(
                *offset, i as i64,
                "partition {partition}: offsets in order, no gap"
            );
            by_offset.insert((*partition, *offset), value.clone());
        }
    }
    for (partition, offset, value) in &acked {
        assert_eq!(
            by_offset.get(&(*partition, *offset)),
            Some(value),
            "acknowledged {value} at {partition}/{offset}"
        );
    }
    let total: usize = got.values().map(Vec::len).sum();
    assert_eq!(total, acked.len(), "nothing but what was acknowledged");
}

/// The earliest offset of a partition, as its leader answers ListOffsets.
fn earliest(cluster: &Cluster, topic: &str, partition: i32) -> i64 {
    let consumer: rdkafka::consumer::BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap())
        .create()
        .expect("consumer");
    use rdkafka::consumer::Consumer;
    let (low, _) = consumer
        .fetch_watermarks(topic, partition, Duration::from_secs(10))
        .expect("watermarks");
    low
}

#[test]
fn a_replica_added_after_retention_starts_at_the_leaders_log_start() {
    let mut settings = FAST.to_vec();
    settings.push("log.retention.check.interval.ms=200");
    let cluster = Cluster::start(3, &settings);
    let bootstrap = cluster.bootstrap();
    let topic = NewTopic::new("trimmed", 1, TopicReplication::Variable(&[&[1]]))
        .set("segment.bytes", "4096")
        .set("retention.bytes", "8192");
    let created = block_on(admin(&bootstrap).create_topics(&[topic], &options())).expect("admin");
    created.into_iter().next().expect("one").expect("created");
    produce_to(&bootstrap, "trimmed", 0, 400);
    wait_for(
        "retention to delete the oldest segments",
        Duration::from_secs(20),
        || earliest(&cluster, "trimmed", 0) > 0,
    );
    let start = earliest(&cluster, "trimmed", 0);
    // Node 2 holds nothing of it: it starts over at node 1's log start, then takes over alone.
    let answers = reassign(
        cluster.node(3).port,
        1,
        true,
        &[("trimmed", 0, Some(&[1, 2]))],
    );
    assert_eq!(answers[0].2, 0, "{answers:?}");
    wait_for("node 2 in sync", Duration::from_secs(30), || {
        let (_, replicas, isr) = partition_state(&cluster.metadata(3), "trimmed", 0);
        replicas == vec![1, 2] && isr.len() == 2
    });
    let answers = reassign(cluster.node(3).port, 1, true, &[("trimmed", 0, Some(&[2]))]);
    assert_eq!(answers[0].2, 0, "{answers:?}");
    wait_for("node 2 alone", Duration::from_secs(30), || {
        partition_state(&cluster.metadata(1), "trimmed", 0) == (2, vec![2], vec![2])
    });
    let now_start = earliest(&cluster, "trimmed", 0);
    assert!(
        now_start >= start,
        "node 2 starts at {now_start}, node 1 started at {start}"
    );
    let got = consume(&bootstrap, "trimmed", 1, (400 - now_start) as usize);
    let offsets: Vec<i64> = got[&0].iter().map(|(o, _)| *o).collect();
    assert_eq!(offsets, (now_start..400).collect::<Vec<i64>>());
    assert!(got[&0].iter().all(|(o, v)| *v == format!("trimmed-0-{o}")));
}

/// A consumer group's committed offset for `topic`-0, or -1.
fn committed(bootstrap: &str, group: &str, topic: &str) -> i64 {
    use rdkafka::consumer::Consumer;
    let consumer: rdkafka::consumer::BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut wanted = rdkafka::TopicPartitionList::new();
    wanted.add_partition(topic, 0);
    let got = consumer
        .committed_offsets(wanted, Duration::from_secs(30))
        .expect("committed");
    match got.find_partition(topic, 0).map(|p| p.offset()) {
        Some(rdkafka::Offset::Offset(o)) => o,
        _ => -1,
    }
}

fn commit(bootstrap: &str, group: &str, topic: &str, offset: i64) {
    use rdkafka::consumer::Consumer;
    let consumer: rdkafka::consumer::BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut offsets = rdkafka::TopicPartitionList::new();
    offsets
        .add_partition_offset(topic, 0, rdkafka::Offset::Offset(offset))
        .expect("offset");
    consumer
        .commit(&offsets, rdkafka::consumer::CommitMode::Sync)
        .expect("committed");
}

/// A group coordinator's partition moved away by a reassignment and back: the broker leads it
/// again and serves the offsets committed meanwhile (loaded afresh), not its old copy.
#[test]
fn a_coordinator_partition_moved_away_and_back_serves_what_was_committed_meanwhile() {
    let mut settings = FAST.to_vec();
    settings.push("offsets.topic.num.partitions=4");
    settings.push("auto.leader.rebalance.enable=false");
    let cluster = Cluster::start(4, &settings);
    let bootstrap = cluster.bootstrap();
    create_topic(&bootstrap, "tracked", 1, 1).expect("created");
    commit(&bootstrap, "mover", "tracked", 5);
    assert_eq!(committed(&bootstrap, "mover", "tracked"), 5);
    let p = sluice_net::offsets::partition_for("mover", 4);
    let (leader, replicas, _) = partition_state(&cluster.metadata(1), "__consumer_offsets", p);
    let spare = (1..=4)
        .find(|n| !replicas.contains(n))
        .expect("a fourth broker");
    let away: Vec<i32> = replicas
        .iter()
        .copied()
        .filter(|r| *r != leader)
        .chain([spare])
        .collect();
    let moved = |target: &[i32]| {
        let answers = reassign(
            cluster.node(2).port,
            1,
            true,
            &[("__consumer_offsets", p, Some(target))],
        );
        assert_eq!(answers[0].2, 0, "{answers:?}");
        wait_for("the move to complete", Duration::from_secs(30), || {
            list_reassignments(cluster.node(3).port).is_empty()
                && partition_state(&cluster.metadata(1), "__consumer_offsets", p).1 == target
        });
    };
    moved(&away);
    commit(&bootstrap, "mover", "tracked", 10);
    assert_eq!(committed(&bootstrap, "mover", "tracked"), 10);
    // Back, with the old leader first: it leads again and must not serve its old copy.
    let back: Vec<i32> = std::iter::once(leader)
        .chain(away.iter().copied().filter(|r| *r != away[0]))
        .collect();
    moved(&back);
    wait_for(
        "the old coordinator leading again",
        Duration::from_secs(20),
        || partition_state(&cluster.metadata(1), "__consumer_offsets", p).0 == leader,
    );
    assert_eq!(committed(&bootstrap, "mover", "tracked"), 10);
}

/// Logs this broker holds no partition for are removed at start, and a partition directory
/// left by an earlier topic of the same name (its `partition.metadata` names another topic id)
/// is removed before the new topic's log opens there.
#[test]
fn stray_and_stale_partition_logs_are_removed_at_start() {
    let mut broker = Broker::start(&[]);
    let bootstrap = broker.bootstrap();
    create_topic(&bootstrap, "kept", 1, 1).expect("created");
    produce_to(&bootstrap, "kept", 0, 5);
    create_topic(&bootstrap, "reborn", 1, 1).expect("created");
    produce_to(&bootstrap, "reborn", 0, 5);
    broker.terminate();
    let data = broker.data.clone();
    let metadata = std::fs::read_to_string(data.join("kept-0/partition.metadata")).expect("file");
    assert!(metadata.starts_with("version: 0\ntopic_id: "), "{metadata}");
    // A deleted topic's directory, and one beyond a topic's partitions.
    for stray in ["gone-0", "kept-7"] {
        std::fs::create_dir_all(data.join(stray)).expect("dir");
        std::fs::write(data.join(stray).join("00000000000000000000.log"), b"old").expect("file");
    }
    // "reborn" as if it were an earlier topic of that name.
    std::fs::write(
        data.join("reborn-0/partition.metadata"),
        "version: 0\ntopic_id: 0123456789abcdef0123456789abcdef\n",
    )
    .expect("rewritten");
    broker.restart();
    assert!(!data.join("gone-0").exists() && !data.join("kept-7").exists());
    let got = consume(&broker.bootstrap(), "kept", 1, 5);
    assert_eq!(got[&0].len(), 5, "a held partition keeps its records");
    assert_eq!(
        produce_to(&broker.bootstrap(), "reborn", 0, 1),
        vec![0],
        "started over"
    );
}
