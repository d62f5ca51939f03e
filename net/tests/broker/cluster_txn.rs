//! Transactions on a cluster: a transaction's partitions are led by different brokers (the
//! coordinator sends WriteTxnMarkers to each leader), `__transaction_state` is replicated, and
//! when the coordinator's broker dies the new leader of the id's partition loads its state and
//! takes over; librdkafka's transactional producer carries on.

use std::time::Duration;

use kafka_protocol::messages::{ApiKey, FindCoordinatorRequest, FindCoordinatorResponse};
use kafka_protocol::protocol::StrBytes;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};

use crate::cluster::{create_topic, leaders, wait_for, Cluster, FAST};
use crate::common::call;

const TIMEOUT: Duration = Duration::from_secs(60);
const PARTITIONS: i32 = 3;

type TxnProducer = ThreadedProducer<DefaultProducerContext>;

/// Sends `values` round-robin over the partitions in one transaction, waits until they are
/// written, then commits or aborts.
fn transaction(p: &TxnProducer, topic: &str, values: &[String], commit: bool) {
    p.begin_transaction().expect("begin");
    for (i, v) in values.iter().enumerate() {
        p.send(
            BaseRecord::<(), _>::to(topic)
                .partition(i as i32 % PARTITIONS)
                .payload(v),
        )
        .map_err(|(e, _)| e)
        .expect("enqueued");
    }
    // Delivered before the end (an abort would otherwise drop what is still queued).
    p.flush(TIMEOUT).expect("flushed");
    if commit {
        p.commit_transaction(TIMEOUT).expect("committed");
    } else {
        p.abort_transaction(TIMEOUT).expect("aborted");
    }
}

fn values(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}

/// Every value of `topic` at `isolation`, read until two seconds pass without a new record.
fn read_all(bootstrap: &str, topic: &str, isolation: &str) -> Vec<String> {
    crate::transactions::read_values(
        bootstrap,
        topic,
        PARTITIONS,
        isolation,
        Duration::from_secs(2),
    )
}

/// The broker coordinating `transactional_id`, as node `asked` answers FindCoordinator (-1
/// while it has none, e.g. between a leader's death and the next election).
fn coordinator(cluster: &Cluster, asked: i32, transactional_id: &str) -> i32 {
    let mut raw = cluster.raw(asked);
    let answer: FindCoordinatorResponse = call(
        &mut raw,
        ApiKey::FindCoordinator,
        3,
        &FindCoordinatorRequest::default()
            .with_key(StrBytes::from_string(transactional_id.to_string()))
            .with_key_type(1),
    );
    if answer.error_code == 0 {
        answer.node_id.0
    } else {
        -1
    }
}

#[test]
fn transactions_span_brokers_and_their_coordinator_moves_with_leadership() {
    let mut cluster = Cluster::start(3, FAST);
    let bootstrap = cluster.bootstrap();
    create_topic(&bootstrap, "txn-data", PARTITIONS, 3).expect("created");
    let mut led: Vec<i32> = leaders(&cluster.metadata(1), "txn-data");
    led.sort_unstable();
    led.dedup();
    assert_eq!(led.len(), 3, "the partitions are led by three brokers");
    let producer: TxnProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("transactional.id", "cluster-txn")
        .set("transaction.timeout.ms", "30000")
        .set("linger.ms", "2")
        .create()
        .expect("producer");
    producer
        .init_transactions(TIMEOUT)
        .expect("init_transactions");
    transaction(&producer, "txn-data", &values("first", 30), true);
    transaction(&producer, "txn-data", &values("aborted", 30), false);
    transaction(&producer, "txn-data", &values("second", 30), true);
    let mut committed = [values("first", 30), values("second", 30)].concat();
    committed.sort();
    assert_eq!(
        read_all(&bootstrap, "txn-data", "read_committed"),
        committed
    );
    assert_eq!(
        read_all(&bootstrap, "txn-data", "read_uncommitted").len(),
        90
    );
    // Every node agrees on the coordinator: the leader of the id's `__transaction_state`
    // partition. Its broker dies; the partition's new leader loads the id and coordinates it.
    let old = coordinator(&cluster, 1, "cluster-txn");
    assert!((1..=3).contains(&old), "a coordinator: {old}");
    assert_eq!(coordinator(&cluster, 2, "cluster-txn"), old);
    cluster.node_mut(old).kill9();
    let survivor = (1..=3).find(|n| *n != old).expect("a survivor");
    wait_for("a new coordinator", Duration::from_secs(20), || {
        let now = coordinator(&cluster, survivor, "cluster-txn");
        now != old && now != -1
    });
    transaction(&producer, "txn-data", &values("third", 30), true);
    transaction(&producer, "txn-data", &values("aborted-later", 30), false);
    cluster.node_mut(old).restart();
    committed.extend(values("third", 30));
    committed.sort();
    assert_eq!(
        read_all(&bootstrap, "txn-data", "read_committed"),
        committed
    );
    assert_eq!(
        read_all(&bootstrap, "txn-data", "read_uncommitted").len(),
        150
    );
}
