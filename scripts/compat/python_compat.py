#!/usr/bin/env python3
"""Client-compatibility check of sluice with kafka-python.

Usage: python3 scripts/compat/python_compat.py HOST:PORT

Creates topics with KafkaAdminClient, produces keyed records with headers
(acks='all', idempotent producer), reads them back with a group-less KafkaConsumer
(assign + seek_to_beginning) and checks every record, the per-partition order
and the offset look-ups; commits offsets for a group and reads them back (a second
consumer's committed(), and KafkaAdminClient.list_group_offsets, one OffsetFetch v8 for all). Exits 0
when every check passed, 1 otherwise.
"""

import logging
import sys
import time

import kafka
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition

PARTITIONS = 3
RECORDS = 200
TIMEOUT_S = 30
MAX_REPORTED = 20

failures = []
_reported = [0]


def fail(msg):
    _reported[0] += 1
    if _reported[0] <= MAX_REPORTED:
        failures.append(msg)
    elif _reported[0] == MAX_REPORTED + 1:
        failures.append("(further mismatches of this run not shown)")


def check(ok, msg):
    if not ok:
        fail(msg)
    return ok


def codec_available(codec):
    """gzip needs nothing; the others need optional modules kafka-python may lack."""
    if codec in (None, "gzip"):
        return True
    from kafka import codec as kc
    return {"snappy": kc.has_snappy, "lz4": kc.has_lz4, "zstd": kc.has_zstd}[codec]()


def topic_for(codec):
    return "python-compat" if codec is None else "python-compat-" + codec


def create_topics(admin, names):
    major = int(kafka.__version__.split(".")[0])
    if major >= 3:
        spec = {n: {"num_partitions": PARTITIONS, "replication_factor": 1} for n in names}
    else:  # kafka-python 2.x only takes NewTopic objects
        from kafka.admin import NewTopic
        spec = [NewTopic(n, num_partitions=PARTITIONS, replication_factor=1) for n in names]
    return admin.create_topics(spec, timeout_ms=TIMEOUT_S * 1000)


def admin_checks(bootstrap, topics):
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="sluice-compat-py-admin",
                             request_timeout_ms=15000)
    try:
        cluster = admin.describe_cluster()
        brokers = cluster.get("brokers", [])
        print(f"python: describe_cluster: cluster_id={cluster.get('cluster_id')} "
              f"brokers={[(b.get('broker_id'), b.get('host'), b.get('port')) for b in brokers]}")
        check(len(brokers) == 1, f"describe_cluster: expected 1 broker, got {brokers}")
        check(cluster.get("cluster_id"), f"describe_cluster: no cluster_id in {cluster}")

        create_topics(admin, topics)
        print(f"python: create_topics {topics} ({PARTITIONS} partitions, rf 1): ok")

        listed = admin.list_topics()
        check(set(topics) <= set(listed), f"list_topics: expected {topics} in {listed}")
        for t in admin.describe_topics(topics):
            name = t.get("name", t.get("topic"))
            check(t.get("error_code", 0) == 0, f"describe_topics: {name}: error {t.get('error_code')}")
            check(len(t.get("partitions", [])) == PARTITIONS,
                  f"describe_topics: {name} has {len(t.get('partitions', []))} partitions, expected {PARTITIONS}")
    finally:
        admin.close()


def make_records(codec, base_ts):
    out = []
    for i in range(RECORDS):
        key = f"py-key-{i:03d}".encode()
        if i % 50 == 3:
            value = b""
        else:
            value = (f"py-value-{codec}-{i}-" + "xyz" * ((i * 31) % 400)).encode()
        headers = [("idx", str(i).encode()), ("codec", str(codec).encode())]
        if i % 9 == 0:
            headers.append(("dup", b"a"))
            headers.append(("dup", b"b"))
        out.append({"idx": i, "key": key, "value": value, "headers": headers,
                    "ts": base_ts + 10 * i})
    return out


def round_trip(bootstrap, codec):
    topic = topic_for(codec)
    base_ts = (int(time.time()) - 120) * 1000
    records = make_records(codec, base_ts)

    producer = KafkaProducer(
        bootstrap_servers=bootstrap,
        client_id=f"sluice-compat-py-producer-{codec}",
        acks="all",
        enable_idempotence=True,
        compression_type=codec,
        linger_ms=5,
        max_in_flight_requests_per_connection=1,
        request_timeout_ms=15000,
    )
    try:
        futures = [producer.send(topic, key=r["key"], value=r["value"], headers=r["headers"],
                                 timestamp_ms=r["ts"]) for r in records]
        producer.flush(timeout=TIMEOUT_S)
        for r, f in zip(records, futures):
            md = f.get(timeout=TIMEOUT_S)
            r["partition"], r["offset"] = md.partition, md.offset
    finally:
        producer.close(timeout=10)

    by_partition = {}
    by_offset = {}
    for r in records:
        by_partition.setdefault(r["partition"], []).append(r)
        by_offset[(r["partition"], r["offset"])] = r
    check(len(by_partition) == PARTITIONS,
          f"{codec}: records landed in partitions {sorted(by_partition)}, expected {PARTITIONS}")
    for p, lst in by_partition.items():
        offsets = [r["offset"] for r in lst]
        check(offsets == list(range(len(lst))),
              f"{codec}: partition {p}: acked offsets {offsets[:10]}... not 0,1,2,... in send order")

    tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        client_id=f"sluice-compat-py-consumer-{codec}",
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        request_timeout_ms=15000,
        max_poll_records=40,
    )
    try:
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        received = 0
        last_offset = {}
        seen = set()
        deadline = time.monotonic() + TIMEOUT_S
        while received < RECORDS and time.monotonic() < deadline:
            batch = consumer.poll(timeout_ms=500)
            for tp, msgs in batch.items():
                for m in msgs:
                    received += 1
                    where = f"{codec}: {tp.topic}-{tp.partition}@{m.offset}"
                    if (tp.partition, m.offset) in seen:
                        fail(f"{where}: delivered twice")
                        continue
                    seen.add((tp.partition, m.offset))
                    prev = last_offset.get(tp.partition, -1)
                    check(m.offset == prev + 1, f"{where}: follows offset {prev} (gap or reordering)")
                    last_offset[tp.partition] = m.offset
                    want = by_offset.get((tp.partition, m.offset))
                    if not check(want is not None, f"{where}: unexpected record key={m.key!r}"):
                        continue
                    check(m.key == want["key"], f"{where}: key {m.key!r}, expected {want['key']!r}")
                    check(m.value == want["value"],
                          f"{where}: value {m.value[:60]!r}... ({len(m.value or b'')} bytes), "
                          f"expected {want['value'][:60]!r}... ({len(want['value'])} bytes)")
                    got_headers = [(k, v) for k, v in (m.headers or [])]
                    check(got_headers == want["headers"],
                          f"{where}: headers {got_headers}, expected {want['headers']}")
                    check(m.timestamp == want["ts"], f"{where}: timestamp {m.timestamp}, expected {want['ts']}")
                    check(m.timestamp_type == 0, f"{where}: timestamp type {m.timestamp_type}, expected 0 (CreateTime)")
        check(received == RECORDS,
              f"{codec}: consumed {received} records, expected {RECORDS} (last offsets {last_offset})")
        extra = sum(len(v) for v in consumer.poll(timeout_ms=300).values())
        check(extra == 0, f"{codec}: {extra} more records after all {RECORDS}")

        begin = consumer.beginning_offsets(tps)
        end = consumer.end_offsets(tps)
        for tp in tps:
            n = len(by_partition.get(tp.partition, []))
            check(begin.get(tp) == 0, f"{codec}: beginning_offsets {tp} = {begin.get(tp)}, expected 0")
            check(end.get(tp) == n, f"{codec}: end_offsets {tp} = {end.get(tp)}, expected {n}")

        for target in (base_ts, base_ts + 10 * 77, base_ts + 10 * 77 - 3,
                       base_ts + 10 * (RECORDS - 1), base_ts + 10 * RECORDS):
            found = consumer.offsets_for_times({tp: target for tp in tps})
            for tp in tps:
                want = next((r for r in by_partition.get(tp.partition, []) if r["ts"] >= target), None)
                got = found.get(tp)
                what = f"{codec}: offsets_for_times({tp.topic}-{tp.partition}, base+{target - base_ts})"
                if want is None:
                    check(got is None, f"{what} = {got}, expected none")
                elif check(got is not None, f"{what} = none, expected offset {want['offset']}"):
                    check(got.offset == want["offset"] and got.timestamp == want["ts"],
                          f"{what} = {got}, expected offset {want['offset']} timestamp {want['ts']}")
    finally:
        consumer.close()


def committed_offsets(bootstrap, topic):
    from kafka.structs import OffsetAndMetadata
    group = "python-compat-group"
    tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
    commit = {tp: (10 + tp.partition, f"py-{tp.partition}") for tp in tps}

    def consumer(name):
        return KafkaConsumer(bootstrap_servers=bootstrap, client_id=f"sluice-compat-py-{name}",
                             group_id=group, enable_auto_commit=False, request_timeout_ms=15000)

    c = consumer("committer")
    try:
        c.assign(tps)
        c.commit({tp: OffsetAndMetadata(o, m, -1) for tp, (o, m) in commit.items()})
    finally:
        c.close()
    c = consumer("reader")
    try:
        c.assign(tps)
        for tp, (o, _) in commit.items():
            got = c.committed(tp)
            check(got == o, f"offsets: committed({tp}) = {got}, expected {o}")
    finally:
        c.close()
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=15000)
    try:
        listed = admin.list_group_offsets({group: None}).get(group, {})
        for tp, (o, m) in commit.items():
            got = listed.get(tp)
            check(got is not None and got.offset == o and got.metadata == m,
                  f"offsets: list_group_offsets[{tp}] = {got}, expected {o} {m!r}")
    finally:
        admin.close()


def main():
    bootstrap = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:9092"
    logging.basicConfig(level=logging.CRITICAL)  # kafka-python logs connection noise otherwise
    print(f"python: kafka-python {kafka.__version__}")
    start = time.monotonic()
    codecs = [None, "gzip", "lz4", "zstd", "snappy"]
    runnable = [c for c in codecs if codec_available(c)]
    skipped = [c for c in codecs if c not in runnable]
    admin_ok = False
    try:
        admin_checks(bootstrap, [topic_for(c) for c in runnable])
        admin_ok = True
    except Exception as e:  # noqa: BLE001 - report whatever the client raised
        fail(f"admin: {type(e).__name__}: {e}")
    if admin_ok:
        for codec in runnable:
            _reported[0] = 0
            before = len(failures)
            try:
                round_trip(bootstrap, codec)
            except Exception as e:  # noqa: BLE001
                fail(f"{codec}: {type(e).__name__}: {e}")
            print(f"python: {str(codec):6} round trip of {RECORDS} records: "
                  f"{'ok' if len(failures) == before else 'FAILED'}")
        before = len(failures)
        try:
            committed_offsets(bootstrap, topic_for(runnable[0]))
        except Exception as e:  # noqa: BLE001
            fail(f"offsets: {type(e).__name__}: {e}")
        print("python: committed offsets (commit, committed, list_group_offsets): "
              f"{'ok' if len(failures) == before else 'FAILED'}")
    if skipped:
        print(f"python: codecs skipped (python module not installed): {skipped}")
    ms = int((time.monotonic() - start) * 1000)
    if not failures:
        print(f"python: all checks passed in {ms} ms")
        return 0
    print(f"python: {len(failures)} check(s) failed in {ms} ms:")
    for f in failures:
        print(f"  - {f}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
