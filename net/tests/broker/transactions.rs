//! Transactions through librdkafka's transactional producer and read_committed consumers:
//! commits are seen once, aborts never by read_committed (always by read_uncommitted); an open
//! transaction holds read_committed consumers back until it ends or times out; a second
//! producer with the same transactional id fences the first; offsets sent to a transaction
//! become the group's only when it commits; and all of it holds across `kill -9`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use crate::common::{create_topic_blocking, Broker};

const TIMEOUT: Duration = Duration::from_secs(30);
const PARTITIONS: i32 = 4;

type TxnProducer = ThreadedProducer<DefaultProducerContext>;

fn producer(broker: &Broker, id: &str, timeout_ms: u32) -> TxnProducer {
    let p: TxnProducer = ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap())
        .set("transactional.id", id)
        .set("transaction.timeout.ms", timeout_ms.to_string())
        .set("linger.ms", "2")
        .create()
        .expect("producer");
    p.init_transactions(TIMEOUT).expect("init_transactions");
    p
}

/// Sends `values` round-robin over the topic's partitions inside the open transaction and
/// flushes them (delivered, not yet committed).
fn send(p: &TxnProducer, topic: &str, values: &[String]) {
    for (i, v) in values.iter().enumerate() {
        let key = format!("k{i}");
        p.send(
            BaseRecord::to(topic)
                .partition(i as i32 % PARTITIONS)
                .key(&key)
                .payload(v),
        )
        .map_err(|(e, _)| e)
        .expect("enqueued");
    }
    p.flush(TIMEOUT).expect("flushed");
}

fn values(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}

/// Every value readable in `topic` from the start at `isolation`, read until `quiet` passes
/// without a new record.
fn read_all(broker: &Broker, topic: &str, isolation: &str, quiet: Duration) -> Vec<String> {
    read_values(&broker.bootstrap(), topic, PARTITIONS, isolation, quiet)
}

/// Every value readable in partitions `0..partitions` of `topic` through `bootstrap`, from the
/// start at `isolation`, read until `quiet` passes without a new record; sorted.
pub(crate) fn read_values(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    isolation: &str,
    quiet: Duration,
) -> Vec<String> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("reader-{isolation}"))
        .set("enable.auto.commit", "false")
        .set("isolation.level", isolation)
        .create()
        .expect("consumer");
    crate::common::assign_from_beginning(&c, topic, partitions);
    let mut out = Vec::new();
    let mut last = Instant::now();
    while last.elapsed() < quiet {
        if let Some(m) = c.poll(Duration::from_millis(100)) {
            let m = m.expect("message");
            out.push(String::from_utf8_lossy(m.payload().unwrap_or_default()).to_string());
            last = Instant::now();
        }
    }
    out.sort();
    out
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

#[test]
fn committed_records_are_read_once_and_aborted_ones_never_by_read_committed() {
    let broker = Broker::start(&[]);
    create_topic_blocking(&broker, "txn-out", PARTITIONS);
    let p = producer(&broker, "writer-1", 60_000);
    p.begin_transaction().expect("begin");
    send(&p, "txn-out", &values("first", 12));
    p.commit_transaction(TIMEOUT).expect("commit");
    p.begin_transaction().expect("begin");
    send(&p, "txn-out", &values("aborted", 12));
    p.abort_transaction(TIMEOUT).expect("abort");
    p.begin_transaction().expect("begin");
    send(&p, "txn-out", &values("second", 12));
    p.commit_transaction(TIMEOUT).expect("commit");
    let quiet = Duration::from_secs(2);
    let committed = read_all(&broker, "txn-out", "read_committed", quiet);
    let mut expected = values("first", 12);
    expected.extend(values("second", 12));
    assert_eq!(committed, sorted(expected.clone()));
    let everything = read_all(&broker, "txn-out", "read_uncommitted", quiet);
    expected.extend(values("aborted", 12));
    assert_eq!(everything, sorted(expected));
    list_transactions_filters(&broker);
}

/// ListTransactions v2 on the wire: the id pattern matches whole ids, unknown state names are
/// echoed back, a pattern that does not compile is INVALID_REGULAR_EXPRESSION.
fn list_transactions_filters(broker: &Broker) {
    use kafka_protocol::messages::{ApiKey, ListTransactionsRequest, ListTransactionsResponse};
    use kafka_protocol::protocol::StrBytes;
    let mut raw = crate::common::Raw::connect(broker.port);
    let mut list = |pattern: &str, states: &[&'static str]| -> ListTransactionsResponse {
        let request = ListTransactionsRequest::default()
            .with_transactional_id_pattern(Some(StrBytes::from_string(pattern.into())))
            .with_state_filters(
                states
                    .iter()
                    .map(|s| StrBytes::from_static_str(s))
                    .collect(),
            )
            .with_duration_filter(-1);
        crate::common::call(&mut raw, ApiKey::ListTransactions, 2, &request)
    };
    let found = list("writer-.", &[]);
    assert_eq!(found.error_code, 0);
    let ids: Vec<(String, String)> = found
        .transaction_states
        .iter()
        .map(|t| {
            (
                t.transactional_id.0.to_string(),
                t.transaction_state.to_string(),
            )
        })
        .collect();
    assert_eq!(ids, vec![("writer-1".into(), "CompleteCommit".into())]);
    assert!(
        list("writer", &[]).transaction_states.is_empty(),
        "whole ids only"
    );
    let filtered = list("writer-1", &["Ongoing", "Bogus"]);
    assert!(filtered.transaction_states.is_empty());
    assert_eq!(
        filtered
            .unknown_state_filters
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>(),
        vec!["Bogus".to_string()]
    );
    assert_eq!(list("(", &[]).error_code, 128, "INVALID_REGULAR_EXPRESSION");
}

#[test]
fn an_open_transaction_holds_read_committed_back_until_it_times_out_and_fences_its_producer() {
    let broker =
        Broker::start(&["transaction.abort.timed.out.transaction.cleanup.interval.ms=200"]);
    create_topic_blocking(&broker, "txn-lso", PARTITIONS);
    let stalled = producer(&broker, "stalled", 3_000);
    stalled.begin_transaction().expect("begin");
    send(&stalled, "txn-lso", &values("open", 4));
    // Another producer commits behind the open transaction: invisible until it ends.
    let other = producer(&broker, "other", 60_000);
    other.begin_transaction().expect("begin");
    send(&other, "txn-lso", &values("behind", 4));
    other.commit_transaction(TIMEOUT).expect("commit");
    let quiet = Duration::from_millis(1500);
    assert!(
        read_all(&broker, "txn-lso", "read_committed", quiet).is_empty(),
        "the open transaction holds the last stable offset"
    );
    assert_eq!(
        read_all(&broker, "txn-lso", "read_uncommitted", quiet).len(),
        8
    );
    // The coordinator aborts it after transaction.timeout.ms (3 s).
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(
        read_all(&broker, "txn-lso", "read_committed", quiet),
        sorted(values("behind", 4))
    );
    // Its producer was fenced by the abort's epoch bump.
    assert!(stalled.commit_transaction(TIMEOUT).is_err());
}

#[test]
fn a_second_producer_with_the_same_transactional_id_fences_the_first() {
    let broker = Broker::start(&[]);
    create_topic_blocking(&broker, "txn-zombie", PARTITIONS);
    let zombie = producer(&broker, "shared-id", 60_000);
    zombie.begin_transaction().expect("begin");
    send(&zombie, "txn-zombie", &values("zombie", 4));
    // The newer producer's init aborts the zombie's open transaction and bumps the epoch.
    let fresh = producer(&broker, "shared-id", 60_000);
    fresh.begin_transaction().expect("begin");
    send(&fresh, "txn-zombie", &values("fresh", 4));
    fresh.commit_transaction(TIMEOUT).expect("commit");
    assert!(
        zombie.commit_transaction(TIMEOUT).is_err(),
        "the fenced producer cannot commit"
    );
    let quiet = Duration::from_secs(2);
    assert_eq!(
        read_all(&broker, "txn-zombie", "read_committed", quiet),
        sorted(values("fresh", 4))
    );
}

/// The group's committed offsets as the broker reports them.
fn committed_offsets(broker: &Broker, group: &str, topic: &str) -> BTreeMap<i32, i64> {
    try_committed_offsets(broker, group, topic, TIMEOUT).expect("committed")
}

/// Asks with `require_stable` (librdkafka sends it under read_committed): undecided
/// transactional offsets answer UNSTABLE_OFFSET_COMMIT, which the client retries until `wait`.
fn try_committed_offsets(
    broker: &Broker,
    group: &str,
    topic: &str,
    wait: Duration,
) -> rdkafka::error::KafkaResult<BTreeMap<i32, i64>> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap())
        .set("group.id", group)
        .set("isolation.level", "read_committed")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition(topic, p);
    }
    Ok(c.committed_offsets(tpl, wait)?
        .elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(o) => Some((e.partition(), o)),
            _ => None,
        })
        .collect())
}

#[test]
fn offsets_sent_to_a_transaction_commit_with_it_and_everything_survives_kill_9() {
    let mut broker = Broker::start(&[]);
    create_topic_blocking(&broker, "txn-in", PARTITIONS);
    create_topic_blocking(&broker, "txn-eos", PARTITIONS);
    let group_meta_consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap())
        .set("group.id", "eos-group")
        .create()
        .expect("consumer");
    let metadata = group_meta_consumer
        .group_metadata()
        .expect("group metadata");
    let p = producer(&broker, "eos-worker", 60_000);
    let offsets = |o: i64| {
        let mut tpl = TopicPartitionList::new();
        for part in 0..PARTITIONS {
            tpl.add_partition_offset("txn-in", part, Offset::Offset(o + i64::from(part)))
                .expect("offset");
        }
        tpl
    };
    // Committed with the transaction.
    p.begin_transaction().expect("begin");
    send(&p, "txn-eos", &values("out", 4));
    p.send_offsets_to_transaction(&offsets(10), &metadata, TIMEOUT)
        .expect("send offsets");
    p.commit_transaction(TIMEOUT).expect("commit");
    let expected: BTreeMap<i32, i64> = (0..PARTITIONS).map(|p| (p, 10 + i64::from(p))).collect();
    assert_eq!(committed_offsets(&broker, "eos-group", "txn-in"), expected);
    // Aborted with the transaction: the group's offsets stay.
    p.begin_transaction().expect("begin");
    send(&p, "txn-eos", &values("dropped", 4));
    p.send_offsets_to_transaction(&offsets(50), &metadata, TIMEOUT)
        .expect("send offsets");
    p.abort_transaction(TIMEOUT).expect("abort");
    assert_eq!(committed_offsets(&broker, "eos-group", "txn-in"), expected);
    // A transaction open when the broker is killed stays invisible after the restart, until
    // the next producer with the same id aborts it.
    p.begin_transaction().expect("begin");
    send(&p, "txn-eos", &values("in-flight", 4));
    p.send_offsets_to_transaction(&offsets(90), &metadata, TIMEOUT)
        .expect("send offsets");
    assert!(
        try_committed_offsets(&broker, "eos-group", "txn-in", Duration::from_secs(2)).is_err(),
        "offsets an open transaction sent are unstable, not the old ones"
    );
    drop(p);
    broker.kill9();
    broker.restart();
    let quiet = Duration::from_secs(2);
    assert_eq!(
        read_all(&broker, "txn-eos", "read_committed", quiet),
        sorted(values("out", 4))
    );
    // The open transaction's offsets were recovered as undecided.
    assert!(try_committed_offsets(&broker, "eos-group", "txn-in", Duration::from_secs(2)).is_err());
    // The restarted worker's init aborts it: the group's offsets are the committed ones.
    let p = producer(&broker, "eos-worker", 60_000);
    assert_eq!(committed_offsets(&broker, "eos-group", "txn-in"), expected);
    p.begin_transaction().expect("begin");
    send(&p, "txn-eos", &values("after", 4));
    p.commit_transaction(TIMEOUT).expect("commit");
    let mut all = values("out", 4);
    all.extend(values("after", 4));
    assert_eq!(
        read_all(&broker, "txn-eos", "read_committed", quiet),
        sorted(all)
    );
    assert_eq!(committed_offsets(&broker, "eos-group", "txn-in"), expected);
}

/// One consume-transform-produce worker, as in Kafka's documentation: reads `ctp-in` from the
/// group's committed offsets (read_committed), writes each record upper-cased to the same
/// partition of `ctp-out` and sends its input offsets to the same transaction, `per_txn`
/// records a transaction. Commits `txns` transactions; with `die_mid_txn` it then processes
/// one more and dies before committing it: records written, offsets sent, clients gone.
fn worker(broker: &Broker, txns: usize, per_txn: usize, die_mid_txn: bool) {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap())
        .set("group.id", "ctp-group")
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset("ctp-in", p, Offset::Stored)
            .expect("partition");
    }
    consumer.assign(&tpl).expect("assign");
    let metadata = consumer.group_metadata().expect("group metadata");
    let producer = producer(broker, "ctp-worker", 60_000);
    let rounds = txns + usize::from(die_mid_txn);
    for round in 0..rounds {
        producer.begin_transaction().expect("begin");
        let mut next: BTreeMap<i32, i64> = BTreeMap::new();
        let mut taken = 0;
        let deadline = Instant::now() + TIMEOUT;
        while taken < per_txn {
            assert!(Instant::now() < deadline, "the input ran dry");
            let Some(m) = consumer.poll(Duration::from_millis(100)) else {
                continue;
            };
            let m = m.expect("message");
            let upper = String::from_utf8_lossy(m.payload().unwrap_or_default()).to_uppercase();
            producer
                .send(
                    BaseRecord::<(), _>::to("ctp-out")
                        .partition(m.partition())
                        .payload(&upper),
                )
                .map_err(|(e, _)| e)
                .expect("enqueued");
            next.insert(m.partition(), m.offset() + 1);
            taken += 1;
        }
        let mut offsets = TopicPartitionList::new();
        for (p, o) in &next {
            offsets
                .add_partition_offset("ctp-in", *p, Offset::Offset(*o))
                .expect("offset");
        }
        producer
            .send_offsets_to_transaction(&offsets, &metadata, TIMEOUT)
            .expect("send offsets");
        if round == txns {
            // Dies here, the transaction open on the broker.
            producer.flush(TIMEOUT).expect("flushed");
            return;
        }
        producer.commit_transaction(TIMEOUT).expect("commit");
    }
}

/// Kafka's exactly-once loop: a worker killed mid-transaction and restarted with the same
/// transactional id (which fences and aborts what the dead one left open) leaves every input
/// record exactly once in the output for read_committed consumers, and the group's committed
/// offsets at the end of the input.
#[test]
fn consume_transform_produce_survives_a_worker_killed_mid_transaction() {
    let broker = Broker::start(&[]);
    create_topic_blocking(&broker, "ctp-in", PARTITIONS);
    create_topic_blocking(&broker, "ctp-out", PARTITIONS);
    let input = values("record", 120);
    let plain: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap())
        .create()
        .expect("producer");
    for (i, v) in input.iter().enumerate() {
        plain
            .send(
                BaseRecord::<(), _>::to("ctp-in")
                    .partition(i as i32 % PARTITIONS)
                    .payload(v),
            )
            .map_err(|(e, _)| e)
            .expect("enqueued");
    }
    plain.flush(TIMEOUT).expect("input written");
    // 3 transactions of 10 committed, then killed in the 4th.
    worker(&broker, 3, 10, true);
    // The restarted worker finishes the input: 90 records in 9 transactions.
    worker(&broker, 9, 10, false);
    let quiet = Duration::from_secs(2);
    let expected: Vec<String> = input.iter().map(|v| v.to_uppercase()).collect();
    assert_eq!(
        read_all(&broker, "ctp-out", "read_committed", quiet),
        sorted(expected)
    );
    let ends: BTreeMap<i32, i64> = (0..PARTITIONS)
        .map(|p| (p, input.len() as i64 / i64::from(PARTITIONS)))
        .collect();
    assert_eq!(committed_offsets(&broker, "ctp-group", "ctp-in"), ends);
}

/// Rewrites the latest `__transaction_state` record of `transactional_id` in a stopped
/// broker's data directory to PrepareCommit: the state a `kill -9` leaves between the Prepare
/// record and the markers.
fn leave_prepared(data: &std::path::Path, transactional_id: &'static str) {
    use sluice_net::transactions::{decode_key, decode_value, encode_key, encode_value, TxnState};
    let partition = sluice_net::offsets::partition_for(transactional_id, 50);
    let dir = data.join(format!("__transaction_state-{partition}"));
    let root = data.to_path_buf();
    glommio::LocalExecutorBuilder::default()
        .io_memory(1 << 20)
        .spawn(move || async move {
            sluice_storage::io_probe::prepare(&root).expect("probe file");
            sluice_storage::io_probe::guard(&root).await.expect("probe");
            let mut topic = sluice_core::topic::TopicConfig::from_broker(
                &sluice_core::config::BrokerConfig::default(),
            );
            topic.cleanup_policy = "compact".into();
            let config = sluice_storage::LogConfig::from_topic(&topic, 4096, true);
            let log = sluice_storage::PartitionLog::open(
                &dir,
                "__transaction_state",
                partition,
                config,
                0,
            )
            .await
            .expect("open");
            let mut latest = None;
            sluice_net::offsets::for_each_record(&log, |key, value| {
                if decode_key(key).as_deref() == Some(transactional_id) {
                    latest = value.and_then(decode_value);
                }
            })
            .await
            .expect("read");
            let mut meta = latest.expect("the transaction's state");
            assert_eq!(meta.state, TxnState::Ongoing);
            meta.state = TxnState::PrepareCommit;
            let key = encode_key(transactional_id);
            let value = encode_value(&meta);
            let record =
                sluice_storage::batch::build_keyed_batch(0, 1, &[(Some(&key), Some(&value))]);
            let info = log.append(&record.freeze(), 1).expect("append");
            log.flush(1).await.expect("flush");
            log.wait_durable(&info, sluice_storage::Durability::Synced)
                .await
                .expect("durable");
            log.close().await.expect("close");
        })
        .expect("executor")
        .join()
        .expect("rewritten");
}

/// A crash after the coordinator made PrepareCommit durable but before any marker was
/// written: at restart it finishes the commit — markers reach every partition, including those
/// of topics opened after `__transaction_state` — so the records become readable.
#[test]
fn a_transaction_prepared_before_a_crash_is_committed_at_restart() {
    let mut broker = Broker::start(&[]);
    create_topic_blocking(&broker, "prepared-out", PARTITIONS);
    let p = producer(&broker, "prepared-id", 60_000);
    p.begin_transaction().expect("begin");
    send(&p, "prepared-out", &values("prepared", 8));
    drop(p);
    broker.terminate();
    leave_prepared(&broker.data, "prepared-id");
    broker.restart();
    let quiet = Duration::from_secs(3);
    assert_eq!(
        read_all(&broker, "prepared-out", "read_committed", quiet),
        sorted(values("prepared", 8))
    );
}

/// `transactional.id.expiration.ms`: an id idle that long is forgotten — DescribeTransactions
/// no longer knows it, also after a restart, and its next producer gets a new producer id.
#[test]
fn idle_transactional_ids_expire() {
    use kafka_protocol::messages::{
        ApiKey, DescribeTransactionsRequest, DescribeTransactionsResponse, InitProducerIdRequest,
        InitProducerIdResponse, TransactionalId,
    };
    use kafka_protocol::protocol::StrBytes;
    let mut broker = Broker::start(&[
        "transactional.id.expiration.ms=1000",
        "transaction.abort.timed.out.transaction.cleanup.interval.ms=200",
    ]);
    let id = || TransactionalId(StrBytes::from_static_str("expiring-id"));
    let init = |broker: &Broker| -> InitProducerIdResponse {
        let mut raw = crate::common::Raw::connect(broker.port);
        let request = InitProducerIdRequest::default()
            .with_transactional_id(Some(id()))
            .with_transaction_timeout_ms(60_000);
        crate::common::call(&mut raw, ApiKey::InitProducerId, 4, &request)
    };
    let describe = |broker: &Broker| -> i16 {
        let mut raw = crate::common::Raw::connect(broker.port);
        let request = DescribeTransactionsRequest::default().with_transactional_ids(vec![id()]);
        let response: DescribeTransactionsResponse =
            crate::common::call(&mut raw, ApiKey::DescribeTransactions, 0, &request);
        response.transaction_states[0].error_code
    };
    let first = init(&broker);
    assert_eq!((first.error_code, first.producer_epoch), (0, 0));
    assert_eq!(describe(&broker), 0);
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(
        describe(&broker),
        105,
        "TRANSACTIONAL_ID_NOT_FOUND once expired"
    );
    broker.kill9();
    broker.restart();
    assert_eq!(describe(&broker), 105, "the expiry is durable");
    let second = init(&broker);
    assert_eq!(second.error_code, 0);
    assert_ne!(second.producer_id, first.producer_id, "a new producer id");
    assert_eq!(second.producer_epoch, 0);
}

/// Transaction version 2 on the wire (KIP-890): Produce v12 adds its partitions to the
/// transaction without AddPartitionsToTxn, EndTxn v5 ends at a bumped epoch and answers it
/// (a retry with the old epoch gets the same answer), and a write at the old epoch — a zombie's
/// — is refused and aborted at once, so it never holds a partition's last stable offset.
#[test]
fn transaction_version_2_adds_partitions_implicitly_and_bumps_the_epoch() {
    use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
    use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
    use kafka_protocol::messages::{
        ApiKey, EndTxnRequest, EndTxnResponse, InitProducerIdRequest, InitProducerIdResponse,
        ListOffsetsRequest, ListOffsetsResponse, ProduceRequest, ProduceResponse, ProducerId,
        TopicName, TransactionalId,
    };
    use kafka_protocol::protocol::StrBytes;
    let broker = Broker::start(&[]);
    create_topic_blocking(&broker, "tv2", 2);
    let mut raw = crate::common::Raw::connect(broker.port);
    let id = || TransactionalId(StrBytes::from_static_str("tv2-id"));
    let init: InitProducerIdResponse = crate::common::call(
        &mut raw,
        ApiKey::InitProducerId,
        5,
        &InitProducerIdRequest::default()
            .with_transactional_id(Some(id()))
            .with_transaction_timeout_ms(60_000)
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1),
    );
    let pid = init.producer_id.0;
    assert_eq!((init.error_code, init.producer_epoch), (0, 0));
    let mut produce = |partition: i32, epoch: i16, seq: i32| -> i16 {
        let mut b = sluice_storage::batch::build_batch(0, 1_000, &[b"v".as_slice()]);
        b[22] |= 0x10;
        sluice_storage::batch::set_producer(&mut b, pid, epoch, seq);
        let request = ProduceRequest::default()
            .with_transactional_id(Some(id()))
            .with_acks(-1)
            .with_timeout_ms(10_000)
            .with_topic_data(vec![TopicProduceData::default()
                .with_name(TopicName(StrBytes::from_static_str("tv2")))
                .with_partition_data(vec![PartitionProduceData::default()
                    .with_index(partition)
                    .with_records(Some(b.freeze()))])]);
        let response: ProduceResponse =
            crate::common::call(&mut raw, ApiKey::Produce, 12, &request);
        response.responses[0].partition_responses[0].error_code
    };
    assert_eq!(produce(0, 0, 0), 0, "joins the transaction implicitly");
    let mut raw2 = crate::common::Raw::connect(broker.port);
    let mut end = |epoch: i16| -> EndTxnResponse {
        let request = EndTxnRequest::default()
            .with_transactional_id(id())
            .with_producer_id(ProducerId(pid))
            .with_producer_epoch(epoch)
            .with_committed(true);
        crate::common::call(&mut raw2, ApiKey::EndTxn, 5, &request)
    };
    let ended = end(0);
    assert_eq!(
        (ended.error_code, ended.producer_id.0, ended.producer_epoch),
        (0, pid, 1)
    );
    let retried = end(0);
    assert_eq!(
        (retried.error_code, retried.producer_epoch),
        (0, 1),
        "a retry"
    );
    // A zombie at epoch 0 writes to partition 1 (which saw no marker): refused and aborted.
    assert_eq!(produce(1, 0, 1), 47, "INVALID_PRODUCER_EPOCH");
    let latest = |isolation: i8| -> i64 {
        let mut raw = crate::common::Raw::connect(broker.port);
        let request = ListOffsetsRequest::default()
            .with_replica_id(kafka_protocol::messages::BrokerId(-1))
            .with_isolation_level(isolation)
            .with_topics(vec![ListOffsetsTopic::default()
                .with_name(TopicName(StrBytes::from_static_str("tv2")))
                .with_partitions(vec![ListOffsetsPartition::default()
                    .with_partition_index(1)
                    .with_timestamp(-1)])]);
        let response: ListOffsetsResponse =
            crate::common::call(&mut raw, ApiKey::ListOffsets, 4, &request);
        response.topics[0].partitions[0].offset
    };
    assert_eq!(latest(1), latest(0), "nothing left open on partition 1");
    assert_eq!(latest(0), 2, "the zombie's batch and its ABORT marker");
    // The producer goes on at epoch 1.
    assert_eq!(produce(1, 1, 0), 0);
    assert_eq!(end(1).producer_epoch, 2);
}
