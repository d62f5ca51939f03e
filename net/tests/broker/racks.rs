//! Racks: consumers that give their `client.rack` read from an in-sync replica in their rack
//! (KIP-392) when the brokers use Kafka's RackAwareReplicaSelector, and followers serve such
//! reads up to their high watermark. (Rack-aware placement is unit-tested with the metadata
//! image.)

use std::time::{Duration, Instant};

use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::{ApiKey, BrokerId, FetchRequest, FetchResponse, TopicName};
use kafka_protocol::protocol::StrBytes;
use rdkafka::admin::{AdminOptions, NewTopic, TopicReplication};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message, Offset, TopicPartitionList};

use crate::cluster::{admin, block_on, partition_state, wait_for, Cluster};
use crate::common::call;

const SELECTOR: &str =
    "replica.selector.class=org.apache.kafka.common.replica.RackAwareReplicaSelector";

/// A consumer's Fetch (v12) of partition 0 of `topic` from offset 0 on node `id`: (error, high
/// watermark, preferred read replica, record bytes).
fn fetch(
    cluster: &Cluster,
    id: i32,
    topic: &str,
    rack: &str,
    epoch: i32,
) -> (i16, i64, i32, usize) {
    let mut raw = cluster.raw(id);
    let request = FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_wait_ms(0)
        .with_max_bytes(1 << 20)
        .with_session_epoch(-1)
        .with_rack_id(StrBytes::from_string(rack.to_string()))
        .with_topics(vec![FetchTopic::default()
            .with_topic(TopicName(StrBytes::from_string(topic.to_string())))
            .with_partitions(vec![FetchPartition::default()
                .with_partition(0)
                .with_current_leader_epoch(epoch)
                .with_fetch_offset(0)
                .with_partition_max_bytes(1 << 20)])]);
    let answer: FetchResponse = call(&mut raw, ApiKey::Fetch, 12, &request);
    let p = &answer.responses[0].partitions[0];
    (
        p.error_code,
        p.high_watermark,
        p.preferred_read_replica.0,
        p.records.as_ref().map_or(0, |r| r.len()),
    )
}

#[test]
fn consumers_read_from_an_in_sync_replica_in_their_rack() {
    // Default session timeouts (9 s): a frozen leader stays the leader for the test's span.
    let cluster = Cluster::start_with(3, &[SELECTOR], &|i| vec![format!("broker.rack=r{i}")]);
    let bootstrap = cluster.bootstrap();
    let topic = NewTopic::new("racked", 1, TopicReplication::Variable(&[&[1, 2, 3]]));
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(25)));
    let created = block_on(admin(&bootstrap).create_topics(&[topic], &options)).expect("admin");
    created.into_iter().next().expect("one").expect("created");
    // 100 records, one batch each, all replicas in sync.
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("acks", "all")
        .set("linger.ms", "0")
        .create()
        .expect("producer");
    block_on(async {
        for i in 0..100 {
            let value = format!("racked-{i}");
            producer
                .send(
                    FutureRecord::<(), _>::to("racked")
                        .partition(0)
                        .payload(&value),
                    Duration::from_secs(30),
                )
                .await
                .expect("acknowledged");
        }
    });
    let (leader, _, isr) = partition_state(&cluster.metadata(2), "racked", 0);
    assert_eq!((leader, isr.len()), (1, 3));
    // The leader (rack r1) sends a consumer of rack r2 to broker 2, and serves r1 and
    // rack-less consumers itself.
    let (error, _, preferred, bytes) = fetch(&cluster, 1, "racked", "r2", 0);
    assert_eq!(
        (error, preferred, bytes),
        (0, 2, 0),
        "sent to broker 2, no records"
    );
    let (error, high_watermark, preferred, bytes) = fetch(&cluster, 1, "racked", "r1", 0);
    assert_eq!((error, high_watermark, preferred), (0, 100, -1));
    assert!(bytes > 0);
    assert_eq!(fetch(&cluster, 1, "racked", "", 0).2, -1);
    // A follower serves consumers up to its high watermark (which its next fetch from the
    // leader brings to 100), checking the leader epoch they know.
    wait_for(
        "broker 2's high watermark at 100",
        Duration::from_secs(10),
        || fetch(&cluster, 2, "racked", "r2", 0).1 == 100,
    );
    let (error, _, preferred, bytes) = fetch(&cluster, 2, "racked", "r2", 0);
    assert_eq!((error, preferred), (0, -1));
    assert!(bytes > 0);
    assert_eq!(
        fetch(&cluster, 2, "racked", "r2", 1).0,
        75,
        "UNKNOWN_LEADER_EPOCH"
    );
    wait_for(
        "broker 3's high watermark at 100",
        Duration::from_secs(10),
        || fetch(&cluster, 3, "racked", "r3", 0).1 == 100,
    );
    // librdkafka in rack r3: once the leader has sent it to broker 3, it reads on while the
    // leader is frozen (which would stall reads from the leader for the session timeout).
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("group.id", "racked-reader")
        .set("client.rack", "r3")
        .set("enable.auto.commit", "false")
        .set("max.partition.fetch.bytes", "64")
        .set("fetch.wait.max.ms", "50")
        .create()
        .expect("consumer");
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset("racked", 0, Offset::Beginning)
        .expect("assign");
    consumer.assign(&assignment).expect("assign");
    let mut read = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while read.len() < 10 {
        assert!(Instant::now() < deadline, "read {} records", read.len());
        if let Some(m) = consumer.poll(Duration::from_millis(100)) {
            let m = m.expect("a record");
            read.push(String::from_utf8_lossy(m.payload().unwrap_or_default()).to_string());
        }
    }
    // SAFETY: kill(2) on a child process this test started.
    unsafe {
        libc::kill(cluster.node(1).pid() as i32, libc::SIGSTOP);
    }
    let frozen = Instant::now();
    while read.len() < 100 && frozen.elapsed() < Duration::from_secs(5) {
        if let Some(m) = consumer.poll(Duration::from_millis(100)) {
            let m = m.expect("a record");
            read.push(String::from_utf8_lossy(m.payload().unwrap_or_default()).to_string());
        }
    }
    unsafe {
        libc::kill(cluster.node(1).pid() as i32, libc::SIGCONT);
    }
    let expected: Vec<String> = (0..100).map(|i| format!("racked-{i}")).collect();
    assert_eq!(
        read, expected,
        "every record, in order, from broker 3 while the leader froze"
    );
}
