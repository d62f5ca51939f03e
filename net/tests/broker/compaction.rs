//! Log compaction through real clients: librdkafka producers write keyed updates (lz4
//! compressed) and tombstones to a `cleanup.policy=compact` topic; the broker's cleaner runs;
//! a consumer reading from offset 0 sees the latest value of every key at the offset it was
//! written at, tombstones until `delete.retention.ms` has passed and then not, and the same
//! after `kill -9`. Keyless records are refused. `__consumer_offsets` is compacted too and its
//! committed offsets survive a restart after compaction.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use crate::common::Broker;

const TIMEOUT: Duration = Duration::from_secs(30);
const TOPIC: &str = "changelog";
const KEYS: usize = 40;
const ROUNDS: usize = 8;
const DELETED: usize = 10;

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    futures::executor::block_on(f)
}

fn admin(broker: &Broker) -> AdminClient<DefaultClientContext> {
    ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap())
        .create()
        .expect("admin")
}

fn producer(broker: &Broker, compression: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap())
        .set("linger.ms", "5")
        .set("compression.codec", compression)
        .create()
        .expect("producer")
}

/// Sends (key, value-or-tombstone) records, all enqueued before any is awaited so they batch;
/// returns each record's offset.
fn send(p: &FutureProducer, records: &[(String, Option<String>)]) -> Vec<i64> {
    let pending: Vec<_> = records
        .iter()
        .map(|(k, v)| {
            let mut record = FutureRecord::to(TOPIC).partition(0).key(k.as_str());
            if let Some(v) = v {
                record = record.payload(v.as_str());
            }
            p.send_result(record).map_err(|(e, _)| e).expect("enqueued")
        })
        .collect();
    pending
        .into_iter()
        .map(|d| {
            block_on(d)
                .expect("delivery report")
                .map_err(|(e, _)| e)
                .expect("delivered")
                .offset
        })
        .collect()
}

/// Everything in the partition from offset 0: (offset, key, value or None for a tombstone).
type Row = (i64, String, Option<String>);

fn read_all(broker: &Broker) -> Vec<Row> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap())
        .set("group.id", "compaction-reader")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "100")
        .create()
        .expect("consumer");
    let (_, high) = c.fetch_watermarks(TOPIC, 0, TIMEOUT).expect("watermarks");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(TOPIC, 0, Offset::Offset(0))
        .expect("offset");
    c.assign(&tpl).expect("assign");
    let mut rows = Vec::new();
    let deadline = Instant::now() + TIMEOUT;
    while rows.last().is_none_or(|r: &Row| r.0 + 1 < high) {
        assert!(
            Instant::now() < deadline,
            "read stalled at {:?}",
            rows.last()
        );
        match c.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
                rows.push((
                    m.offset(),
                    text(m.key().expect("every record has a key")),
                    m.payload().map(text),
                ));
            }
            Some(Err(e)) => panic!("consume error: {e}"),
            None => {}
        }
    }
    rows
}

/// The latest (offset, value) of each key in `rows`, fillers aside.
fn latest(rows: &[Row]) -> BTreeMap<String, (i64, Option<String>)> {
    rows.iter()
        .filter(|r| !r.1.starts_with("filler"))
        .map(|(o, k, v)| (k.clone(), (*o, v.clone())))
        .collect()
}

fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_compacted_topic_keeps_the_latest_value_per_key_and_drops_tombstones_after_their_retention() {
    let mut broker = Broker::start_logged(&["log.cleaner.backoff.ms=200"]);
    let topic = NewTopic::new(TOPIC, 1, TopicReplication::Fixed(1))
        .set("cleanup.policy", "compact")
        .set("segment.bytes", "8192")
        .set("min.cleanable.dirty.ratio", "0.01")
        .set("delete.retention.ms", "3000");
    for r in block_on(admin(&broker).create_topics(&[topic], &AdminOptions::new())).expect("create")
    {
        r.expect("topic created");
    }

    // Updates, lz4-compressed, in several rounds (several segments), then tombstones.
    let updates = producer(&broker, "lz4");
    let mut written: Vec<Row> = Vec::new();
    for round in 0..ROUNDS {
        let records: Vec<(String, Option<String>)> = (0..KEYS)
            .map(|k| {
                (
                    format!("key-{k}"),
                    Some(format!("value-{k}-{round}-{}", "x".repeat(40))),
                )
            })
            .collect();
        for (offset, (k, v)) in send(&updates, &records).into_iter().zip(records) {
            written.push((offset, k, v));
        }
    }
    let plain = producer(&broker, "none");
    let tombstones: Vec<(String, Option<String>)> =
        (0..DELETED).map(|k| (format!("key-{k}"), None)).collect();
    for (offset, (k, v)) in send(&plain, &tombstones).into_iter().zip(tombstones) {
        written.push((offset, k, v));
    }
    // Enough after them that the tombstones' segment closes and can be cleaned.
    let fillers: Vec<(String, Option<String>)> = (0..150)
        .map(|i| (format!("filler-{i}"), Some("y".repeat(100))))
        .collect();
    send(&plain, &fillers);
    let expected = latest(&written);

    // Keyless records are refused on a compacted topic, as Kafka refuses them.
    let keyless = FutureRecord::<(), _>::to(TOPIC)
        .partition(0)
        .payload("no key");
    let refused = block_on(plain.send(keyless, TIMEOUT));
    assert!(
        matches!(
            refused,
            Err((
                KafkaError::MessageProduction(RDKafkaErrorCode::InvalidRecord),
                _
            ))
        ),
        "got {refused:?}"
    );

    wait_for("the cleaner", TIMEOUT, || {
        broker.log().contains(&format!("cleaned {TOPIC}-0"))
    });
    // Tombstones may already be gone if a second clean passed their horizon; either way every
    // key that is present holds its latest value at its original offset, once.
    let cleaned = read_all(&broker);
    let keys: Vec<&String> = cleaned
        .iter()
        .map(|r| &r.1)
        .filter(|k| !k.starts_with("filler"))
        .collect();
    assert!(
        keys.len() <= KEYS,
        "one record per key is left, got {}",
        keys.len()
    );
    for (key, at) in latest(&cleaned) {
        assert_eq!(Some(&at), expected.get(&key), "key {key}");
    }
    for (key, (offset, value)) in &expected {
        if value.is_some() {
            assert!(
                cleaned.iter().any(|r| &r.1 == key && r.0 == *offset),
                "the latest value of {key} at offset {offset} survives"
            );
        }
    }
    assert!(cleaned.windows(2).all(|w| w[0].0 < w[1].0), "offsets grow");

    // After delete.retention.ms the tombstones go too.
    wait_for("tombstones to expire", TIMEOUT, || {
        read_all(&broker).iter().all(|r| r.2.is_some())
    });
    let settled = read_all(&broker);
    let live: BTreeMap<_, _> = expected.iter().filter(|(_, (_, v))| v.is_some()).collect();
    let got = latest(&settled);
    assert_eq!(got.len(), live.len());
    for (key, at) in live {
        assert_eq!(got.get(key), Some(at), "key {key}");
    }

    // kill -9 and restart: the compacted log reads back the same.
    broker.kill9();
    broker.restart();
    assert_eq!(read_all(&broker), settled);

    // DescribeConfigs reports the policy as the topic's own setting.
    let resource = ResourceSpecifier::Topic(TOPIC);
    let described = block_on(admin(&broker).describe_configs([&resource], &AdminOptions::new()))
        .expect("describe");
    let config = described
        .into_iter()
        .next()
        .expect("one")
        .expect("described");
    let policy = config.get("cleanup.policy").and_then(|e| e.value.clone());
    assert_eq!(policy.as_deref(), Some("compact"));
}

#[test]
fn consumer_offsets_are_compacted_and_the_last_commit_survives_a_restart() {
    let mut broker = Broker::start_logged(&[
        "log.cleaner.backoff.ms=200",
        "offsets.topic.num.partitions=1",
        "offsets.topic.segment.bytes=4096",
        "log.cleaner.min.cleanable.ratio=0.01",
    ]);
    crate::common::create_topic_blocking(&broker, "input", 1);
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap())
        .set("group.id", "committer")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let commit = |offset: i64| {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset("input", 0, Offset::Offset(offset))
            .expect("offset");
        consumer.commit(&tpl, CommitMode::Sync).expect("commit");
    };
    // Enough commits of one partition to fill several segments of __consumer_offsets.
    for offset in 1..=300 {
        commit(offset);
    }
    wait_for("__consumer_offsets to be cleaned", TIMEOUT, || {
        broker.log().contains("cleaned __consumer_offsets-0")
    });
    broker.kill9();
    broker.restart();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition("input", 0);
    let committed = consumer
        .committed_offsets(tpl, TIMEOUT)
        .expect("committed offsets");
    let offset = committed
        .find_partition("input", 0)
        .expect("partition")
        .offset();
    assert_eq!(offset, Offset::Offset(300));
    let log = broker.log();
    let removed: u64 = log
        .lines()
        .filter(|l| l.contains("cleaned __consumer_offsets-0"))
        .filter_map(|l| {
            let (_, rest) = l.split_once(" removed, ")?;
            rest.split_whitespace().next()?.parse::<u64>().ok()
        })
        .sum();
    assert!(
        removed > 100,
        "the cleaner dropped superseded commits ({removed}): {log}"
    );
}
