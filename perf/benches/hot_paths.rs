//! Hot paths of the produce/fetch path, each on inputs shaped like the benchmark workload
//! (1 KiB records, 16 KiB batches).

use bytes::Bytes;
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use sluice_storage::batch::{self, build_batch};
use sluice_storage::index::SegmentIndex;

fn batch_of(records: usize, record_bytes: usize) -> Bytes {
    let value = vec![0x5a; record_bytes];
    let values: Vec<&[u8]> = (0..records).map(|_| value.as_slice()).collect();
    build_batch(0, 1_700_000_000_000, &values).freeze()
}

fn validation(c: &mut Criterion) {
    let batch = batch_of(16, 1024);
    let mut group = c.benchmark_group("batch");
    group.throughput(Throughput::Bytes(batch.len() as u64));
    group.bench_function("validate_16KiB (header + CRC-32C)", |b| {
        b.iter(|| batch::validate(black_box(&batch)).expect("valid"))
    });
    let mut payload = Vec::new();
    for _ in 0..64 {
        payload.extend_from_slice(&batch);
    }
    group.throughput(Throughput::Bytes(payload.len() as u64));
    group.bench_function("split_and_validate_1MiB", |b| {
        b.iter(|| batch::split_and_validate(black_box(&payload)).expect("valid"))
    });
    group.finish();
}

fn patching(c: &mut Criterion) {
    let batch = batch_of(16, 1024);
    c.bench_function("patch header (offset + epoch)", |b| {
        let mut header = batch[..batch::HEADER_BYTES].to_vec();
        let mut offset = 0i64;
        b.iter(|| {
            offset += 16;
            batch::assign_offset(black_box(&mut header), offset, 0);
        })
    });
    c.bench_function("LogAppendTime restamp 16KiB (CRC over body)", |b| {
        let mut header = batch[..batch::HEADER_BYTES].to_vec();
        let body = &batch[batch::HEADER_BYTES..];
        b.iter(|| batch::set_log_append_time_split(black_box(&mut header), body, 42))
    });
}

fn index_lookup(c: &mut Criterion) {
    let mut index = SegmentIndex::default();
    for i in 0..65_536u32 {
        index.on_append(i * 16, i * 16_384, 16_384, i64::from(i), 4096);
    }
    c.bench_function("offset index lookup (64k entries)", |b| {
        let mut x = 0u32;
        b.iter(|| {
            x = x.wrapping_add(7919) % (65_536 * 16);
            black_box(index.position_for(x))
        })
    });
    c.bench_function("time index lookup (64k entries)", |b| {
        let mut x = 0i64;
        b.iter(|| {
            x = (x + 7919) % 65_536;
            black_box(index.scan_start_for_timestamp(x))
        })
    });
}

fn crc(c: &mut Criterion) {
    let data = vec![0xa5u8; 1 << 20];
    let mut group = c.benchmark_group("crc32c");
    group.throughput(Throughput::Bytes(data.len() as u64));
    group.bench_function("1MiB", |b| b.iter(|| crc32c::crc32c(black_box(&data))));
    group.finish();
}

fn request_decode(c: &mut Criterion) {
    use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
    use kafka_protocol::messages::{ApiKey, ProduceRequest, RequestHeader, TopicName};
    use kafka_protocol::protocol::{Encodable, StrBytes};
    let batch = batch_of(16, 1024);
    let partitions = (0..8)
        .map(|p| {
            PartitionProduceData::default()
                .with_index(p)
                .with_records(Some(batch.clone()))
        })
        .collect();
    let request = ProduceRequest::default()
        .with_acks(-1)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(TopicName(StrBytes::from_static_str("bench")))
            .with_partition_data(partitions)]);
    let header = RequestHeader::default()
        .with_request_api_key(ApiKey::Produce as i16)
        .with_request_api_version(9)
        .with_correlation_id(1);
    let mut frame = bytes::BytesMut::new();
    header
        .encode(&mut frame, ApiKey::Produce.request_header_version(9))
        .expect("header");
    request.encode(&mut frame, 9).expect("body");
    let frame = frame.freeze();
    let mut group = c.benchmark_group("request");
    group.throughput(Throughput::Bytes(frame.len() as u64));
    group.bench_function("decode Produce v9, 8 partitions x 16 KiB", |b| {
        b.iter(|| {
            sluice_net::connection::decode_request(black_box(frame.clone())).expect("decodes")
        })
    });
    group.finish();
}

fn fetch_response(c: &mut Criterion) {
    use sluice_net::connection::RequestContext;
    use sluice_net::handlers::fetch::{encode, PartitionAnswer, TopicAnswer};
    let batch = batch_of(16, 1024);
    let ctx = RequestContext {
        api_key: kafka_protocol::messages::ApiKey::Fetch,
        api_version: 16,
        correlation_id: 1,
        client_id: None,
    };
    let topics = || {
        vec![TopicAnswer {
            name: "bench".into(),
            topic_id: uuid::Uuid::from_bytes([1; 16]),
            partitions: (0..8)
                .map(|p| PartitionAnswer {
                    partition: p,
                    error: 0,
                    high_watermark: 1000,
                    log_start_offset: 0,
                    records: sluice_storage::Records {
                        parts: (0..4).map(|_| batch.clone()).collect(),
                    },
                })
                .collect(),
        }]
    };
    let mut group = c.benchmark_group("fetch");
    group.throughput(Throughput::Bytes(8 * 4 * batch.len() as u64));
    group.bench_function(
        "assemble v16 response, 8 partitions x 64 KiB (zero-copy)",
        |b| {
            b.iter_batched(
                topics,
                |t| encode(&ctx, 0, black_box(&t)),
                criterion::BatchSize::SmallInput,
            )
        },
    );
    group.finish();
}

criterion_group!(
    hot_paths,
    validation,
    patching,
    index_lookup,
    crc,
    request_decode,
    fetch_response
);
criterion_main!(hot_paths);
