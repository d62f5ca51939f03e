//! A deterministic, stable-Rust fuzz pass over the request decoder, run by `cargo test`: valid
//! requests of every implemented API and version are mutated (bit flips, byte overwrites,
//! truncation, splices, length fields set to extremes) and fed to `decode_request`, which must
//! return — never panic, never abort. The coverage-guided fuzzer in `net/fuzz` goes deeper;
//! this keeps the property checked on every test run. A failure prints the seed and iteration.

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Encodable, StrBytes};

use crate::connection::decode_request;
use crate::handlers::APIS;

fn frame<R: Encodable>(key: ApiKey, version: i16, body: &R) -> Option<Vec<u8>> {
    let header = RequestHeader::default()
        .with_request_api_key(key as i16)
        .with_request_api_version(version)
        .with_correlation_id(7)
        .with_client_id(Some(StrBytes::from_static_str("fuzz")));
    let mut buf = BytesMut::new();
    header
        .encode(&mut buf, key.request_header_version(version))
        .ok()?;
    body.encode(&mut buf, version).ok()?;
    Some(buf.to_vec())
}

fn txn_id() -> TransactionalId {
    TransactionalId(StrBytes::from_static_str("txn"))
}

fn name(s: &'static str) -> TopicName {
    TopicName(StrBytes::from_static_str(s))
}

/// One valid request per implemented API and version.
pub fn seeds() -> Vec<Vec<u8>> {
    let batch = sluice_storage::batch::build_batch(0, 1, &[b"hello", b"world"]).freeze();
    let mut out = Vec::new();
    for api in APIS {
        for v in api.min_version..=api.max_version {
            let encoded = match api.key {
                ApiKey::Produce => frame(
                    api.key,
                    v,
                    &ProduceRequest::default()
                        .with_acks(-1)
                        .with_topic_data(vec![produce_request::TopicProduceData::default()
                            .with_name(name("t"))
                            .with_partition_data(vec![
                                produce_request::PartitionProduceData::default()
                                    .with_index(0)
                                    .with_records(Some(batch.clone())),
                            ])]),
                ),
                ApiKey::Fetch => frame(
                    api.key,
                    v,
                    &FetchRequest::default()
                        .with_max_wait_ms(100)
                        .with_topics(vec![fetch_request::FetchTopic::default()
                            .with_topic(if v < 13 {
                                name("t")
                            } else {
                                TopicName::default()
                            })
                            .with_partitions(vec![fetch_request::FetchPartition::default()
                                .with_partition(0)
                                .with_partition_max_bytes(1 << 20)])]),
                ),
                ApiKey::ListOffsets => frame(
                    api.key,
                    v,
                    &ListOffsetsRequest::default().with_topics(vec![
                        list_offsets_request::ListOffsetsTopic::default()
                            .with_name(name("t"))
                            .with_partitions(vec![
                                list_offsets_request::ListOffsetsPartition::default()
                                    .with_timestamp(-1),
                            ]),
                    ]),
                ),
                ApiKey::Metadata => frame(
                    api.key,
                    v,
                    &MetadataRequest::default()
                        .with_topics(Some(vec![metadata_request::MetadataRequestTopic::default(
                        )
                        .with_name(Some(name("t")))])),
                ),
                ApiKey::ApiVersions => frame(api.key, v, &ApiVersionsRequest::default()),
                ApiKey::CreateTopics => frame(
                    api.key,
                    v,
                    &CreateTopicsRequest::default().with_topics(vec![
                        create_topics_request::CreatableTopic::default()
                            .with_name(name("t"))
                            .with_num_partitions(3)
                            .with_replication_factor(1),
                    ]),
                ),
                ApiKey::DeleteTopics => frame(
                    api.key,
                    v,
                    &if v < 6 {
                        DeleteTopicsRequest::default().with_topic_names(vec![name("t")])
                    } else {
                        DeleteTopicsRequest::default()
                            .with_topics(vec![delete_topics_request::DeleteTopicState::default()
                                .with_name(Some(name("t")))])
                    },
                ),
                ApiKey::DescribeCluster => frame(api.key, v, &DescribeClusterRequest::default()),
                ApiKey::DescribeConfigs => frame(
                    api.key,
                    v,
                    &DescribeConfigsRequest::default().with_resources(vec![
                        describe_configs_request::DescribeConfigsResource::default()
                            .with_resource_type(2)
                            .with_resource_name(StrBytes::from_static_str("t")),
                    ]),
                ),
                ApiKey::AddPartitionsToTxn => frame(
                    api.key,
                    v,
                    &AddPartitionsToTxnRequest::default()
                        .with_v3_and_below_transactional_id(txn_id())
                        .with_v3_and_below_topics(vec![
                            add_partitions_to_txn_request::AddPartitionsToTxnTopic::default()
                                .with_name(name("t"))
                                .with_partitions(vec![0, 1]),
                        ]),
                ),
                ApiKey::AddOffsetsToTxn => frame(
                    api.key,
                    v,
                    &AddOffsetsToTxnRequest::default().with_transactional_id(txn_id()),
                ),
                ApiKey::EndTxn => frame(
                    api.key,
                    v,
                    &EndTxnRequest::default()
                        .with_transactional_id(txn_id())
                        .with_committed(true),
                ),
                ApiKey::TxnOffsetCommit => frame(
                    api.key,
                    v,
                    &TxnOffsetCommitRequest::default()
                        .with_transactional_id(txn_id())
                        .with_topics(vec![
                            txn_offset_commit_request::TxnOffsetCommitRequestTopic::default()
                                .with_name(name("t"))
                                .with_partitions(vec![
                                    txn_offset_commit_request::TxnOffsetCommitRequestPartition::default()
                                        .with_committed_offset(5),
                                ]),
                        ]),
                ),
                ApiKey::WriteTxnMarkers => frame(
                    api.key,
                    v,
                    &WriteTxnMarkersRequest::default().with_markers(vec![
                        write_txn_markers_request::WritableTxnMarker::default().with_topics(vec![
                            write_txn_markers_request::WritableTxnMarkerTopic::default()
                                .with_name(name("t"))
                                .with_partition_indexes(vec![0]),
                        ]),
                    ]),
                ),
                ApiKey::DescribeTransactions => frame(
                    api.key,
                    v,
                    &DescribeTransactionsRequest::default().with_transactional_ids(vec![txn_id()]),
                ),
                ApiKey::ListTransactions => frame(
                    api.key,
                    v,
                    &ListTransactionsRequest::default()
                        .with_state_filters(vec![StrBytes::from_static_str("Ongoing")]),
                ),
                ApiKey::DescribeProducers => frame(
                    api.key,
                    v,
                    &DescribeProducersRequest::default().with_topics(vec![
                        describe_producers_request::TopicRequest::default()
                            .with_name(name("t"))
                            .with_partition_indexes(vec![0]),
                    ]),
                ),
                _ => None,
            };
            if let Some(bytes) = encoded {
                out.push(bytes);
            }
        }
    }
    out
}

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn mutate(rng: &mut XorShift, input: &[u8], other: &[u8]) -> Vec<u8> {
    let mut data = input.to_vec();
    for _ in 0..1 + rng.below(4) {
        if data.is_empty() {
            break;
        }
        let at = rng.below(data.len());
        match rng.below(6) {
            0 => data[at] ^= 1 << rng.below(8),
            1 => data[at] = rng.next() as u8,
            2 => data.truncate(at),
            3 => {
                // a length-like field set to an extreme value
                let extreme: [u8; 4] = match rng.below(4) {
                    0 => [0x7f, 0xff, 0xff, 0xff],
                    1 => [0xff, 0xff, 0xff, 0xff],
                    2 => [0x80, 0, 0, 0],
                    _ => [0xff, 0xff, 0xff, 0x0f],
                };
                for (i, b) in extreme.iter().enumerate() {
                    if let Some(slot) = data.get_mut(at + i) {
                        *slot = *b;
                    }
                }
            }
            4 => {
                let from = rng.below(other.len());
                let len = rng.below(other.len() - from + 1);
                data.splice(at..at, other[from..from + len].iter().copied());
            }
            _ => data.insert(at, rng.next() as u8),
        }
    }
    data
}

#[test]
fn decoder_survives_mutated_requests() {
    let seeds = seeds();
    assert!(
        seeds.len() > 50,
        "seeds for every API and version: {}",
        seeds.len()
    );
    for seed in &seeds {
        assert!(
            decode_request(Bytes::copy_from_slice(seed)).is_some(),
            "valid seeds decode"
        );
    }
    let seed: u64 = std::env::var("SLUICE_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed);
    let iterations: usize = std::env::var("SLUICE_FUZZ_ITERATIONS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300_000);
    let mut rng = XorShift(seed | 1);
    for i in 0..iterations {
        let a = &seeds[rng.below(seeds.len())];
        let b = &seeds[rng.below(seeds.len())];
        let input = mutate(&mut rng, a, b);
        let outcome = std::panic::catch_unwind(|| {
            let _ = decode_request(Bytes::from(input.clone()));
            let _ = sluice_storage::batch::split_and_validate(&input);
        });
        assert!(
            outcome.is_ok(),
            "decoder panicked: seed {seed} iteration {i} input {input:02x?}"
        );
    }
}

#[test]
fn random_bytes_never_panic_the_decoder() {
    let mut rng = XorShift(42);
    for _ in 0..20_000 {
        let len = rng.below(64);
        let mut buf = BytesMut::with_capacity(len);
        for _ in 0..len {
            buf.put_u8(rng.next() as u8);
        }
        let _ = decode_request(buf.freeze());
    }
}
