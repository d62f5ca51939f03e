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

criterion_group!(hot_paths, validation, patching, index_lookup, crc);
criterion_main!(hot_paths);
