//! Idempotent producers: InitProducerId hands out ids never reused, a retried batch is written
//! once and answered with its original offsets, gaps and stale epochs get Kafka's error codes, and
//! all of it holds across `kill -9` and clean restarts. Driven with hand-made batches (to retry
//! and reorder on purpose) and with librdkafka's own idempotent producer.

use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    ApiKey, InitProducerIdRequest, InitProducerIdResponse, ProduceRequest, ProduceResponse,
    TopicName, TransactionalId,
};
use kafka_protocol::protocol::StrBytes;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use sluice_storage::batch::{build_batch, set_producer};

use crate::common::{call, create_topic_blocking, Broker, Raw};

const OUT_OF_ORDER_SEQUENCE_NUMBER: i16 = 45;
const INVALID_PRODUCER_EPOCH: i16 = 47;
const INVALID_REQUEST: i16 = 42;

fn init_producer_id(raw: &mut Raw, transactional_id: Option<&str>) -> InitProducerIdResponse {
    let request = InitProducerIdRequest::default()
        .with_transactional_id(
            transactional_id.map(|t| TransactionalId(StrBytes::from_string(t.into()))),
        )
        .with_transaction_timeout_ms(60_000);
    call(raw, ApiKey::InitProducerId, 4, &request)
}

/// A batch of `records` records from producer `pid` at `epoch`, starting at `sequence`.
fn batch(records: usize, pid: i64, epoch: i16, sequence: i32) -> Bytes {
    let values: Vec<Vec<u8>> = (0..records)
        .map(|i| format!("p{pid}-e{epoch}-s{}", sequence as usize + i).into_bytes())
        .collect();
    let refs: Vec<&[u8]> = values.iter().map(Vec::as_slice).collect();
    let mut b = build_batch(0, 1_700_000_000_000, &refs);
    set_producer(&mut b, pid, epoch, sequence);
    b.freeze()
}

/// Produces one batch to partition 0 with acks=all: (error code, base offset).
fn produce(raw: &mut Raw, topic: &str, records: Bytes) -> (i16, i64) {
    let request = ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(10_000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(TopicName(StrBytes::from_string(topic.into())))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(0)
                .with_records(Some(records))])]);
    let response: ProduceResponse = call(raw, ApiKey::Produce, 9, &request);
    let p = &response.responses[0].partition_responses[0];
    (p.error_code, p.base_offset)
}

fn high_watermark(broker: &Broker, topic: &str) -> i64 {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap())
        .create()
        .expect("client");
    c.fetch_watermarks(topic, 0, Duration::from_secs(20))
        .expect("watermarks")
        .1
}

#[test]
fn retries_are_written_once_gaps_and_stale_epochs_refused_across_restarts() {
    let mut broker = Broker::start(&[]);
    let topic = "idempotent";
    create_topic_blocking(&broker, topic, 1);
    let mut raw = Raw::connect(broker.port);

    let first = init_producer_id(&mut raw, None);
    assert_eq!((first.error_code, first.producer_epoch), (0, 0));
    let pid = first.producer_id.0;
    let second = init_producer_id(&mut raw, None);
    assert!(second.producer_id.0 > pid, "a fresh id for every producer");
    // A transactional id keeps its producer id; each InitProducerId bumps the epoch.
    let txn = init_producer_id(&mut raw, Some("txn"));
    assert_eq!((txn.error_code, txn.producer_epoch), (0, 0));
    assert!(txn.producer_id.0 > second.producer_id.0);
    let again = init_producer_id(&mut raw, Some("txn"));
    assert_eq!(
        (again.error_code, again.producer_id, again.producer_epoch),
        (0, txn.producer_id, 1)
    );
    assert_eq!(
        init_producer_id(&mut raw, Some("")).error_code,
        INVALID_REQUEST
    );

    assert_eq!(produce(&mut raw, topic, batch(3, pid, 0, 0)), (0, 0));
    assert_eq!(
        produce(&mut raw, topic, batch(3, pid, 0, 0)),
        (0, 0),
        "a retry: same offset"
    );
    assert_eq!(produce(&mut raw, topic, batch(2, pid, 0, 3)), (0, 3));
    assert_eq!(
        produce(&mut raw, topic, batch(3, pid, 0, 0)),
        (0, 0),
        "still remembered"
    );
    assert_eq!(
        produce(&mut raw, topic, batch(1, pid, 0, 9)).0,
        OUT_OF_ORDER_SEQUENCE_NUMBER
    );
    assert_eq!(
        produce(&mut raw, topic, batch(1, pid, 1, 0)),
        (0, 5),
        "a new epoch at 0"
    );
    assert_eq!(
        produce(&mut raw, topic, batch(1, pid, 0, 5)).0,
        INVALID_PRODUCER_EPOCH
    );
    // Plain batches are untouched by all this.
    assert_eq!(produce(&mut raw, topic, batch(1, -1, -1, -1)), (0, 6));
    assert_eq!(high_watermark(&broker, topic), 7);

    // A crash: the state comes back from the log itself.
    broker.kill9();
    broker.restart();
    let mut raw = Raw::connect(broker.port);
    assert_eq!(
        produce(&mut raw, topic, batch(1, pid, 1, 0)),
        (0, 5),
        "retry after kill -9"
    );
    assert_eq!(
        produce(&mut raw, topic, batch(1, pid, 0, 5)).0,
        INVALID_PRODUCER_EPOCH
    );
    assert_eq!(produce(&mut raw, topic, batch(1, pid, 1, 1)), (0, 7));

    // A clean stop writes a snapshot; the state comes back from it.
    assert!(broker.terminate().success());
    let partition_dir = broker.data.join(format!("{topic}-0"));
    assert!(
        partition_dir
            .join("00000000000000000008.snapshot")
            .is_file(),
        "a producer-state snapshot at the log end on clean shutdown"
    );
    broker.restart();
    let mut raw = Raw::connect(broker.port);
    assert_eq!(
        produce(&mut raw, topic, batch(1, pid, 1, 1)),
        (0, 7),
        "retry after restart"
    );
    assert_eq!(
        produce(&mut raw, topic, batch(1, pid, 1, 5)).0,
        OUT_OF_ORDER_SEQUENCE_NUMBER
    );
    assert_eq!(
        high_watermark(&broker, topic),
        8,
        "every retry was written once"
    );

    // Ids are never handed out twice, even across restarts.
    let third = init_producer_id(&mut raw, None);
    assert_eq!(third.error_code, 0);
    assert!(third.producer_id.0 > second.producer_id.0);
}

#[test]
fn librdkafka_idempotent_producer_round_trip() {
    let broker = Broker::start(&[]);
    create_topic_blocking(&broker, "idempotent-rdkafka", 3);
    round_trip(&broker.bootstrap(), "idempotent-rdkafka", 3000);
}

/// Retries without duplicates: a proxy loses every 7th Produce response (closing the
/// connection after the broker served the request), so librdkafka's idempotent producer
/// retries batches the broker already wrote; each record is still in the log exactly once, in
/// order.
#[test]
fn lost_responses_make_librdkafka_retry_and_every_record_is_written_once() {
    let proxy_port = crate::common::free_port();
    let advertised = format!("advertised.listeners=PLAINTEXT://127.0.0.1:{proxy_port}");
    let broker = Broker::start(&[advertised.as_str()]);
    let proxy = crate::proxy::Proxy::start(proxy_port, broker.port, 7);
    let bootstrap = format!("127.0.0.1:{proxy_port}");
    create_topic_blocking(&broker, "idempotent-lossy", 3);
    round_trip(&bootstrap, "idempotent-lossy", 3000);
    assert!(
        proxy.dropped() >= 3,
        "responses lost: {} of {} produce responses",
        proxy.dropped(),
        proxy.produced()
    );
}

/// Produces `n` values round-robin over 3 partitions with librdkafka's idempotent producer
/// through `bootstrap`, then reads them back: every partition holds its values in order, each
/// exactly once, at offsets 0, 1, 2, ...
fn round_trip(bootstrap: &str, topic: &str, n: usize) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set("batch.num.messages", "50")
        .set("message.timeout.ms", "60000")
        .create()
        .expect("producer");
    let values: Vec<String> = (0..n).map(|i| format!("idempotent-{i}")).collect();
    let sends: Vec<_> = values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            producer
                .send_result(
                    FutureRecord::<(), _>::to(topic)
                        .partition((i % 3) as i32)
                        .payload(v.as_str()),
                )
                .map_err(|(e, _)| e)
                .expect("enqueued")
        })
        .collect();
    for s in sends {
        futures::executor::block_on(s)
            .expect("delivery report")
            .map_err(|(e, _)| e)
            .expect("delivered");
    }
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "sluice-tests")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    crate::common::assign_from_beginning(&consumer, topic, 3);
    let mut got: Vec<Vec<String>> = vec![Vec::new(); 3];
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while got.iter().map(Vec::len).sum::<usize>() < values.len() {
        assert!(std::time::Instant::now() < deadline, "timed out");
        if let Some(m) = consumer.poll(Duration::from_millis(200)) {
            let m = m.expect("message");
            let p = m.partition() as usize;
            assert_eq!(m.offset(), got[p].len() as i64, "no gaps, no duplicates");
            got[p].push(String::from_utf8_lossy(m.payload().unwrap_or_default()).into());
        }
    }
    for (p, records) in got.iter().enumerate() {
        let expected: Vec<String> = values.iter().skip(p).step_by(3).cloned().collect();
        assert_eq!(records, &expected, "partition {p} in order, exactly once");
    }
}
