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
                    last_stable_offset: 1000,
                    log_start_offset: 0,
                    records: sluice_storage::Records {
                        parts: (0..4).map(|_| batch.clone()).collect(),
                    },
                    aborted: None,
                    preferred_read_replica: -1,
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

/// Appending one 16 KiB batch to a segment's memory (index entry, cache pieces), and to a
/// partition log (validation, offset and epoch patching, segment append): the produce path up to
/// the flusher. Each sample appends to a fresh segment or log, so memory stays bounded.
fn append(c: &mut Criterion) {
    use sluice_storage::segment::Segment;
    let batch = batch_of(16, 1024);
    let header = batch::BatchHeader::parse(&batch).expect("header");
    let mut group = c.benchmark_group("append");
    group.throughput(Throughput::Bytes(batch.len() as u64));
    let dir = tempfile::tempdir().expect("tempdir");
    group.bench_function("segment, 16 KiB batch (memory)", |b| {
        b.iter_custom(|iters| {
            let mut segment = Segment::new(dir.path(), 0);
            let mut header = header;
            let start = std::time::Instant::now();
            for _ in 0..iters {
                let patched = batch.slice(..batch::HEADER_BYTES);
                let body = batch.slice(batch::HEADER_BYTES..);
                segment.append(patched, body, black_box(&header), 0, 4096);
                header.base_offset += i64::from(header.records_count);
            }
            start.elapsed()
        })
    });
    let executor = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .io_memory(1 << 20)
        .make()
        .expect("executor");
    group.bench_function(
        "partition log, 16 KiB batch (validate, patch, segment)",
        |b| {
            b.iter_custom(|iters| {
                executor.run(async {
                    let topic = sluice_core::topic::TopicConfig::from_broker(&Default::default());
                    let config = sluice_storage::LogConfig::from_topic(&topic, 4096, true);
                    let scratch = tempfile::tempdir_in(dir.path()).expect("tempdir");
                    let log =
                        sluice_storage::PartitionLog::open(scratch.path(), "bench", 0, config, 0)
                            .await
                            .expect("log");
                    let start = std::time::Instant::now();
                    for _ in 0..iters {
                        log.append(black_box(&batch), 0).expect("append");
                    }
                    start.elapsed()
                })
            })
        },
    );
    group.finish();
}

/// A request to another core and its answer: one message each way over glommio's bounded
/// cross-core channels (what the router's mesh is made of), the two executors pinned to
/// different CPUs when there are two. Measured with glommio's defaults (an idle executor parks
/// in the kernel and is woken through an eventfd) and with both executors spinning 100 µs
/// before they park.
/// The cleaner's CPU work per batch: a 16 KiB batch of 16 keyed 1 KiB records, of which half
/// are superseded, filtered and rewritten — uncompressed and lz4 (inflated and re-compressed).
fn compaction(c: &mut Criterion) {
    use sluice_storage::codec;
    use sluice_storage::compaction::{add_keys, filter_batch, Filtered, KeyMap};
    let value = vec![0x5a; 1024];
    let keys: Vec<Vec<u8>> = (0..16u64).map(|k| k.to_be_bytes().to_vec()).collect();
    let records: Vec<batch::KeyValue<'_>> = keys
        .iter()
        .map(|k| (Some(k.as_slice()), Some(value.as_slice())))
        .collect();
    let plain = batch::build_keyed_batch(0, 1_700_000_000_000, &records);
    let mut lz4 = plain.clone();
    let packed = codec::compress(codec::LZ4, &plain[batch::HEADER_BYTES..]).expect("lz4");
    lz4.truncate(batch::HEADER_BYTES);
    lz4.extend_from_slice(&packed);
    let length = (lz4.len() - batch::LOG_OVERHEAD) as i32;
    lz4[8..12].copy_from_slice(&length.to_be_bytes());
    lz4[21..23].copy_from_slice(&codec::LZ4.to_be_bytes());
    batch::reseal_crc(&mut lz4);
    // Every even key is written again later (at offset 100+).
    let mut map = KeyMap::new(1 << 20);
    add_keys(&mut map, &plain);
    for k in keys.iter().step_by(2) {
        map.put(k, 100);
    }
    let mut group = c.benchmark_group("compaction");
    group.throughput(Throughput::Bytes(plain.len() as u64));
    for (name, batch) in [("16 KiB batch, none", &plain), ("16 KiB batch, lz4", &lz4)] {
        group.bench_function(format!("filter half of a {name}"), |b| {
            b.iter(|| {
                let out = filter_batch(black_box(batch), &map, 200, 0, 0);
                assert!(matches!(out.filtered, Filtered::Rewrite(_)));
                out
            })
        });
    }
    group.bench_function("key map from a 16 KiB batch", |b| {
        b.iter(|| {
            let mut fresh = KeyMap::new(1 << 20);
            add_keys(&mut fresh, black_box(&plain));
            fresh
        })
    });
    group.finish();
}

fn cross_core_hop(c: &mut Criterion) {
    let mut group = c.benchmark_group("cross-core");
    hop(&mut group, "request and answer, executors park", None);
    hop(
        &mut group,
        "request and answer, executors spin 100 us before parking",
        Some(std::time::Duration::from_micros(100)),
    );
    group.finish();
}

fn hop(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    spin: Option<std::time::Duration>,
) {
    use glommio::channels::shared_channel;
    use glommio::{LocalExecutorBuilder, Placement};
    let two_cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) >= 2;
    let builder = |cpu| {
        let placement = if two_cpus {
            Placement::Fixed(cpu)
        } else {
            Placement::Unbound
        };
        let builder = LocalExecutorBuilder::new(placement).io_memory(1 << 20);
        match spin {
            Some(d) => builder.spin_before_park(d),
            None => builder,
        }
    };
    let (to_peer, from_here) = shared_channel::new_bounded::<u64>(64);
    let (to_here, from_peer) = shared_channel::new_bounded::<u64>(64);
    let peer = builder(1)
        .name("hop-peer")
        .spawn(move || async move {
            let requests = from_here.connect().await;
            let answers = to_here.connect().await;
            while let Some(x) = requests.recv().await {
                if answers.send(x + 1).await.is_err() {
                    break;
                }
            }
        })
        .expect("peer executor");
    let executor = builder(0).make().expect("executor");
    let (requests, answers) =
        executor.run(async { (to_peer.connect().await, from_peer.connect().await) });
    group.bench_function(name, |b| {
        b.iter_custom(|iters| {
            executor.run(async {
                let start = std::time::Instant::now();
                for i in 0..iters {
                    requests.send(i).await.expect("send");
                    let answer = answers.recv().await.expect("answer");
                    assert_eq!(answer, i + 1);
                }
                start.elapsed()
            })
        })
    });
    drop((requests, answers));
    drop(executor);
    peer.join().expect("peer");
}

criterion_group!(
    hot_paths,
    validation,
    patching,
    index_lookup,
    crc,
    request_decode,
    fetch_response,
    append,
    compaction,
    cross_core_hop
);
criterion_main!(hot_paths);
