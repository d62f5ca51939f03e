//! Bad input never panics the broker or damages data, and other clients keep being served.
//! Each case sends hand-made bytes on a raw socket, then checks the broker still answers a real
//! client and still holds what it held.

use crate::common::{create_topic_blocking, request_frame, Broker, Raw};
use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsResponse, ProduceRequest, ProduceResponse, ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use std::time::Duration;

fn request<R: Encodable>(key: ApiKey, version: i16, correlation_id: i32, body: &R) -> Vec<u8> {
    request_frame(key, version, correlation_id, body)
}

/// The broker still serves a real client: metadata answers with the expected topic.
fn still_serving(broker: &Broker, topic: &str) {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap())
        .create()
        .expect("client");
    let md = c
        .fetch_metadata(Some(topic), Duration::from_secs(20))
        .expect("metadata answered");
    assert_eq!(md.topics()[0].name(), topic);
    assert!(md.topics()[0].error().is_none(), "{topic} is known");
    assert_eq!(md.topics()[0].partitions().len(), 1);
}

fn produce(topic: &str, records: Bytes) -> ProduceRequest {
    ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(5000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(TopicName(StrBytes::from_string(topic.into())))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(0)
                .with_records(Some(records))])])
}

fn produce_error(raw: &mut Raw, version: i16, req: &ProduceRequest) -> i16 {
    raw.send(&request(ApiKey::Produce, version, 7, req));
    let answer = raw.recv().expect("produce answered");
    let mut body = Bytes::from(answer);
    ResponseHeader::decode(&mut body, ApiKey::Produce.response_header_version(version))
        .expect("header");
    let response = ProduceResponse::decode(&mut body, version).expect("response");
    response.responses[0].partition_responses[0].error_code
}

#[test]
fn garbage_frames_close_only_that_connection() {
    let broker = Broker::start(&[]);
    create_topic_blocking(&broker, "kept", 1);
    still_serving(&broker, "kept");
    // A frame whose header is garbage (unknown API key 9999).
    let mut raw = Raw::connect(broker.port);
    raw.send(&[0, 0, 0, 12, 0x27, 0x0f, 0, 0, 0, 0, 0, 1, 0xff, 0xff, 0, 0]);
    assert!(raw.closed(), "unknown API key closes the connection");
    // Negative and oversize frame sizes.
    let mut raw = Raw::connect(broker.port);
    raw.send(&(-5i32).to_be_bytes());
    assert!(raw.closed(), "negative size closes");
    let mut raw = Raw::connect(broker.port);
    raw.send(&(200_000_000i32).to_be_bytes());
    assert!(raw.closed(), "size over socket.request.max.bytes closes");
    // Known API, body that does not decode.
    let mut raw = Raw::connect(broker.port);
    raw.send(&[
        0, 0, 0, 14, 0, 3, 0, 9, 0, 0, 0, 1, 0, 0, 0xff, 0xff, 0xff, 0x7f,
    ]);
    assert!(raw.closed(), "undecodable Metadata closes");
    // Unsupported version of a known API.
    let mut raw = Raw::connect(broker.port);
    let mut unsupported = request(ApiKey::Produce, 9, 1, &produce("kept", Bytes::new()));
    unsupported[6..8].copy_from_slice(&99i16.to_be_bytes());
    raw.send(&unsupported);
    assert!(raw.closed(), "unsupported Produce version closes");
    // A client vanishing halfway through a frame.
    let mut raw = Raw::connect(broker.port);
    raw.send(&[0, 0, 1, 0, 0, 0, 0]);
    drop(raw);
    still_serving(&broker, "kept");
}

#[test]
fn api_versions_at_an_unknown_version_answers_v0_with_unsupported_version() {
    let broker = Broker::start(&[]);
    let mut raw = Raw::connect(broker.port);
    // ApiVersions v127: header v2 with an empty tagged-field section, empty body.
    let mut frame = BytesMut::new();
    frame.put_i32(0);
    frame.put_i16(18);
    frame.put_i16(127);
    frame.put_i32(42);
    frame.put_i16(4);
    frame.put_slice(b"test");
    frame.put_u8(0);
    let size = frame.len() as i32 - 4;
    frame[..4].copy_from_slice(&size.to_be_bytes());
    raw.send(&frame);
    let answer = raw.recv().expect("answered");
    let mut body = Bytes::from(answer);
    let header = ResponseHeader::decode(&mut body, 0).expect("v0 header");
    assert_eq!(header.correlation_id, 42);
    let response = ApiVersionsResponse::decode(&mut body, 0).expect("v0 body");
    assert_eq!(response.error_code, 35, "UNSUPPORTED_VERSION");
    assert!(response
        .api_keys
        .iter()
        .any(|k| k.api_key == ApiKey::Produce as i16));
}

#[test]
fn corrupt_and_old_format_batches_get_error_codes_and_change_nothing() {
    let broker = Broker::start(&[]);
    create_topic_blocking(&broker, "victim", 1);
    still_serving(&broker, "victim");
    let mut raw = Raw::connect(broker.port);
    let good = sluice_storage::batch::build_batch(0, 1000, &[b"fine"]).freeze();
    assert_eq!(
        produce_error(&mut raw, 9, &produce("victim", good.clone())),
        0
    );
    let mut corrupt = BytesMut::from(&good[..]);
    let n = corrupt.len();
    corrupt[n - 3] ^= 0x55;
    assert_eq!(
        produce_error(&mut raw, 9, &produce("victim", corrupt.freeze())),
        2,
        "CORRUPT_MESSAGE"
    );
    let mut old = BytesMut::from(&good[..]);
    old[16] = 1;
    assert_eq!(
        produce_error(&mut raw, 9, &produce("victim", old.freeze())),
        43,
        "UNSUPPORTED_FOR_MESSAGE_FORMAT"
    );
    let truncated = good.slice(..good.len() - 5);
    assert_eq!(
        produce_error(&mut raw, 9, &produce("victim", truncated)),
        2,
        "truncated is CORRUPT_MESSAGE"
    );
    assert_eq!(
        produce_error(&mut raw, 9, &produce("no-such-topic-!", good.clone())),
        3,
        "UNKNOWN_TOPIC_OR_PARTITION"
    );
    // Kafka's rule for v3+: exactly one batch per partition.
    let mut two = BytesMut::from(&good[..]);
    two.extend_from_slice(&good);
    assert_eq!(
        produce_error(&mut raw, 9, &produce("victim", two.freeze())),
        87,
        "two batches: INVALID_RECORD"
    );
    assert_eq!(
        produce_error(&mut raw, 9, &produce("victim", Bytes::new())),
        87,
        "no batch: INVALID_RECORD"
    );
    // the same connection still works and the log holds exactly the good batches
    assert_eq!(produce_error(&mut raw, 9, &produce("victim", good)), 0);
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap())
        .create()
        .expect("client");
    let (low, high) = c
        .fetch_watermarks("victim", 0, Duration::from_secs(20))
        .expect("watermarks");
    assert_eq!((low, high), (0, 2));
}

#[test]
fn invalid_topic_names_in_metadata_get_invalid_topic_exception() {
    let broker = Broker::start(&[]);
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap())
        .create()
        .expect("client");
    let md = c
        .fetch_metadata(Some("bad/name"), Duration::from_secs(20))
        .expect("metadata");
    assert_eq!(
        md.topics()[0].error(),
        Some(rdkafka::types::RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_EXCEPTION)
    );
    create_topic_blocking(&broker, "good.name", 1);
    still_serving(&broker, "good.name");
}

#[test]
fn absurd_array_lengths_close_the_connection_without_killing_the_broker() {
    let broker = Broker::start(&[]);
    create_topic_blocking(&broker, "survivor", 1);
    // Metadata v1 whose topics array claims 2^31-1 entries, and a flexible v9 one whose compact
    // array claims 2^32-2 entries: the decoder would size a vector of hundreds of gigabytes.
    let mut raw = Raw::connect(broker.port);
    let mut frame = BytesMut::new();
    frame.put_i32(0);
    frame.put_i16(3);
    frame.put_i16(1);
    frame.put_i32(5);
    frame.put_i16(-1);
    frame.put_i32(i32::MAX);
    let size = frame.len() as i32 - 4;
    frame[..4].copy_from_slice(&size.to_be_bytes());
    raw.send(&frame);
    assert!(raw.closed(), "huge array closes the connection");
    let mut raw = Raw::connect(broker.port);
    let mut frame = BytesMut::new();
    frame.put_i32(0);
    frame.put_i16(3);
    frame.put_i16(9);
    frame.put_i32(6);
    frame.put_i16(-1);
    frame.put_u8(0); // header tagged fields
    frame.put_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f]); // unsigned varint 2^32-1
    let size = frame.len() as i32 - 4;
    frame[..4].copy_from_slice(&size.to_be_bytes());
    raw.send(&frame);
    assert!(raw.closed(), "huge compact array closes the connection");
    still_serving(&broker, "survivor");
}
