package sluice.compat;

import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Collection;
import java.util.HashMap;
import java.util.HashSet;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.Random;
import java.util.Set;
import java.util.TreeMap;
import java.util.concurrent.Future;
import java.util.concurrent.TimeUnit;

import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.clients.admin.DescribeClusterResult;
import org.apache.kafka.clients.admin.ListOffsetsResult;
import org.apache.kafka.clients.admin.NewTopic;
import org.apache.kafka.clients.admin.OffsetSpec;
import org.apache.kafka.clients.admin.TopicDescription;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.ConsumerRecords;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.clients.consumer.OffsetAndMetadata;
import org.apache.kafka.clients.consumer.OffsetAndTimestamp;
import org.apache.kafka.clients.consumer.SubscriptionPattern;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.clients.producer.RecordMetadata;
import org.apache.kafka.common.Node;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.TopicPartitionInfo;
import org.apache.kafka.common.header.Header;
import org.apache.kafka.common.header.internals.RecordHeader;
import org.apache.kafka.common.header.internals.RecordHeaders;
import org.apache.kafka.common.record.TimestampType;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;
import org.apache.kafka.common.serialization.ByteArraySerializer;

/**
 * Client-compatibility check of sluice with the official Java client (kafka-clients).
 *
 * <p>Usage: {@code java -jar sluice-compat.jar HOST:PORT}. Exits 0 when every check passed, 1
 * otherwise, printing each mismatch. Uses only what sluice implements: no consumer group
 * (manual assign, no commits). The producer keeps the client's defaults for idempotence
 * (enable.idempotence=true since Kafka 3.0, so InitProducerId and sequence numbers are used).
 */
public final class Compat {
    private static final int PARTITIONS = 3;
    private static final int RECORDS = 300;
    private static final long TIMEOUT_S = 30;
    /** Codecs, one topic each; the first one uses the plain topic name "java-compat". */
    private static final String[] CODECS = {"zstd", "lz4", "gzip", "snappy", "none"};
    private static final int MAX_REPORTED = 20;

    private static final List<String> failures = new ArrayList<>();
    private static int reportedInRun = 0;

    private Compat() {}

    public static void main(String[] args) {
        String bootstrap = args.length > 0 ? args[0] : "127.0.0.1:9092";
        long start = System.nanoTime();
        List<String> topics = new ArrayList<>();
        for (String codec : CODECS) {
            topics.add(topicFor(codec));
        }
        boolean adminOk = false;
        try {
            adminOk = adminChecks(bootstrap, topics);
        } catch (Throwable e) {
            fail("admin: unexpected exception: " + describe(e));
            e.printStackTrace(System.out);
        }
        if (adminOk) {
            for (String codec : CODECS) {
                reportedInRun = 0;
                int before = failures.size();
                try {
                    roundTrip(bootstrap, topicFor(codec), codec);
                } catch (Throwable e) {
                    fail(codec + ": unexpected exception: " + describe(e));
                    e.printStackTrace(System.out);
                }
                System.out.printf("java: %-6s round trip of %d records: %s%n", codec, RECORDS,
                        failures.size() == before ? "ok" : "FAILED");
            }
            int before = failures.size();
            try {
                committedOffsets(bootstrap, topicFor(CODECS[0]));
            } catch (Throwable e) {
                fail("offsets: unexpected exception: " + describe(e));
                e.printStackTrace(System.out);
            }
            System.out.printf("java: committed offsets (commitSync, committed, admin listConsumerGroupOffsets): %s%n",
                    failures.size() == before ? "ok" : "FAILED");
            before = failures.size();
            try {
                groupConsume(bootstrap, topicFor(CODECS[0]));
            } catch (Throwable e) {
                fail("group: unexpected exception: " + describe(e));
                e.printStackTrace(System.out);
            }
            System.out.printf("java: consumer group (2 members subscribe, share %d partitions, every record once; describeConsumerGroups): %s%n",
                    PARTITIONS, failures.size() == before ? "ok" : "FAILED");
            before = failures.size();
            long t0 = System.nanoTime();
            try {
                kip848Consume(bootstrap, topicFor(CODECS[0]));
            } catch (Throwable e) {
                fail("kip848: unexpected exception: " + describe(e));
                e.printStackTrace(System.out);
            }
            System.out.printf("java: KIP-848 consumer group (group.protocol=consumer: 2 members share %d partitions, every record once; describeConsumerGroups; one leaves, the other takes all) in %d ms: %s%n",
                    PARTITIONS, (System.nanoTime() - t0) / 1_000_000, failures.size() == before ? "ok" : "FAILED");
            before = failures.size();
            try {
                kip848Pattern(bootstrap);
            } catch (Throwable e) {
                fail("kip848 pattern: unexpected exception: " + describe(e));
                e.printStackTrace(System.out);
            }
            System.out.printf("java: KIP-848 regex subscription (subscribe(SubscriptionPattern), resolved by the broker): %s%n",
                    failures.size() == before ? "ok" : "FAILED");
            before = failures.size();
            try {
                transactions(bootstrap);
            } catch (Throwable e) {
                fail("transactions: unexpected exception: " + describe(e));
                e.printStackTrace(System.out);
            }
            System.out.printf("java: transactions (commit with sendOffsetsToTransaction, abort, read_committed vs read_uncommitted, a fenced zombie; admin describeTransactions, listTransactions, describeProducers, abortTransaction): %s%n",
                    failures.size() == before ? "ok" : "FAILED");
        }
        long ms = (System.nanoTime() - start) / 1_000_000;
        if (failures.isEmpty()) {
            System.out.printf("java: all checks passed in %d ms%n", ms);
            System.exit(0);
        }
        System.out.printf("java: %d check(s) failed in %d ms:%n", failures.size(), ms);
        for (String f : failures) {
            System.out.println("  - " + f);
        }
        System.exit(1);
    }

    private static String topicFor(String codec) {
        return codec.equals(CODECS[0]) ? "java-compat" : "java-compat-" + codec;
    }

    // ---------------------------------------------------------------- admin

    private static Properties adminProps(String bootstrap) {
        Properties p = new Properties();
        p.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        p.put(AdminClientConfig.CLIENT_ID_CONFIG, "sluice-compat-admin");
        p.put(AdminClientConfig.REQUEST_TIMEOUT_MS_CONFIG, "15000");
        p.put(AdminClientConfig.DEFAULT_API_TIMEOUT_MS_CONFIG, "30000");
        return p;
    }

    /** Creates the topics and checks cluster/topic metadata. Returns false if producing is pointless. */
    private static boolean adminChecks(String bootstrap, List<String> topics) throws Exception {
        try (Admin admin = Admin.create(adminProps(bootstrap))) {
            DescribeClusterResult cluster = admin.describeCluster();
            Collection<Node> nodes = cluster.nodes().get(TIMEOUT_S, TimeUnit.SECONDS);
            String clusterId = cluster.clusterId().get(TIMEOUT_S, TimeUnit.SECONDS);
            Node controller = cluster.controller().get(TIMEOUT_S, TimeUnit.SECONDS);
            check(nodes.size() == 1, "describeCluster: expected 1 node, got " + nodes);
            check(clusterId != null && !clusterId.isEmpty(), "describeCluster: clusterId is null/empty");
            check(controller != null && !controller.isEmpty(), "describeCluster: no controller");
            System.out.printf("java: describeCluster: clusterId=%s nodes=%s controller=%s%n",
                    clusterId, nodes, controller);
            if (nodes.isEmpty()) {
                return false;
            }
            int nodeId = nodes.iterator().next().id();

            List<NewTopic> newTopics = new ArrayList<>();
            for (String t : topics) {
                newTopics.add(new NewTopic(t, PARTITIONS, (short) 1));
            }
            admin.createTopics(newTopics).all().get(TIMEOUT_S, TimeUnit.SECONDS);
            System.out.printf("java: createTopics %s (%d partitions, rf 1): ok%n", topics, PARTITIONS);

            Set<String> listed = admin.listTopics().names().get(TIMEOUT_S, TimeUnit.SECONDS);
            check(listed.containsAll(topics), "listTopics: expected " + topics + " in " + listed);

            Map<String, TopicDescription> described =
                    admin.describeTopics(topics).allTopicNames().get(TIMEOUT_S, TimeUnit.SECONDS);
            for (String t : topics) {
                TopicDescription d = described.get(t);
                if (!check(d != null, "describeTopics: " + t + " missing")) {
                    continue;
                }
                check(d.partitions().size() == PARTITIONS,
                        "describeTopics: " + t + " has " + d.partitions().size() + " partitions, expected " + PARTITIONS);
                for (TopicPartitionInfo pi : d.partitions()) {
                    check(pi.leader() != null && pi.leader().id() == nodeId,
                            "describeTopics: " + t + "-" + pi.partition() + " leader " + pi.leader() + ", expected node " + nodeId);
                    check(pi.replicas().size() == 1, "describeTopics: " + t + "-" + pi.partition() + " replicas " + pi.replicas());
                }
            }

            // Creating an existing topic must fail with TopicExistsException.
            try {
                admin.createTopics(List.of(new NewTopic(topics.get(0), PARTITIONS, (short) 1)))
                        .all().get(TIMEOUT_S, TimeUnit.SECONDS);
                fail("createTopics: re-creating " + topics.get(0) + " succeeded, expected TopicExistsException");
            } catch (java.util.concurrent.ExecutionException e) {
                check(e.getCause() instanceof org.apache.kafka.common.errors.TopicExistsException,
                        "createTopics: re-creating " + topics.get(0) + " failed with " + describe(e.getCause())
                                + ", expected TopicExistsException");
            }

            // describeConfigs: a topic created with an override reports it as a dynamic topic
            // config; the broker reports its settings.
            String configured = "java-compat-configured";
            admin.createTopics(List.of(new NewTopic(configured, 1, (short) 1)
                    .configs(Map.of("retention.ms", "3600000"))))
                    .all().get(TIMEOUT_S, TimeUnit.SECONDS);
            org.apache.kafka.common.config.ConfigResource topicResource = new org.apache.kafka.common.config.ConfigResource(
                    org.apache.kafka.common.config.ConfigResource.Type.TOPIC, configured);
            org.apache.kafka.common.config.ConfigResource brokerResource = new org.apache.kafka.common.config.ConfigResource(
                    org.apache.kafka.common.config.ConfigResource.Type.BROKER, Integer.toString(nodeId));
            Map<org.apache.kafka.common.config.ConfigResource, org.apache.kafka.clients.admin.Config> configs =
                    admin.describeConfigs(List.of(topicResource, brokerResource)).all().get(TIMEOUT_S, TimeUnit.SECONDS);
            org.apache.kafka.clients.admin.ConfigEntry retention = configs.get(topicResource).get("retention.ms");
            check(retention != null && "3600000".equals(retention.value()),
                    "describeConfigs: retention.ms of " + configured + " is " + retention);
            check(retention != null && retention.source() == org.apache.kafka.clients.admin.ConfigEntry.ConfigSource.DYNAMIC_TOPIC_CONFIG,
                    "describeConfigs: retention.ms source is " + (retention == null ? null : retention.source()));
            org.apache.kafka.clients.admin.ConfigEntry maxBytes = configs.get(brokerResource).get("message.max.bytes");
            check(maxBytes != null && maxBytes.value() != null, "describeConfigs: broker message.max.bytes missing");
            System.out.printf("java: describeConfigs: %s retention.ms=%s (%s), broker message.max.bytes=%s%n",
                    configured, retention == null ? null : retention.value(),
                    retention == null ? null : retention.source(), maxBytes == null ? null : maxBytes.value());

            try {
                admin.describeConfigs(List.of(new org.apache.kafka.common.config.ConfigResource(
                        org.apache.kafka.common.config.ConfigResource.Type.TOPIC, "no-such-topic-for-configs")))
                        .all().get(TIMEOUT_S, TimeUnit.SECONDS);
                fail("describeConfigs: an unknown topic succeeded");
            } catch (java.util.concurrent.ExecutionException e) {
                check(e.getCause() instanceof org.apache.kafka.common.errors.UnknownTopicOrPartitionException,
                        "describeConfigs: unknown topic failed with " + describe(e.getCause()));
            }

            // Create and delete a scratch topic.
            String scratch = "java-compat-scratch";
            admin.createTopics(List.of(new NewTopic(scratch, 1, (short) 1))).all().get(TIMEOUT_S, TimeUnit.SECONDS);
            admin.deleteTopics(List.of(scratch)).all().get(TIMEOUT_S, TimeUnit.SECONDS);
            Set<String> after = admin.listTopics().names().get(TIMEOUT_S, TimeUnit.SECONDS);
            check(!after.contains(scratch), "deleteTopics: " + scratch + " still listed: " + after);
            check(after.containsAll(topics), "deleteTopics: deleting " + scratch + " lost other topics: " + after);
            System.out.println("java: createTopics/deleteTopics of scratch topic: done");
            return true;
        }
    }

    // ---------------------------------------------------------------- produce / consume

    /** One record as sent, and where the broker said it put it. */
    private static final class Sent {
        final int idx;
        final byte[] key;
        final byte[] value;
        final List<Header> headers;
        final long timestamp;
        RecordMetadata meta;

        Sent(int idx, byte[] key, byte[] value, List<Header> headers, long timestamp) {
            this.idx = idx;
            this.key = key;
            this.value = value;
            this.headers = headers;
            this.timestamp = timestamp;
        }
    }

    private static Sent makeRecord(String codec, int i, long baseTs, Random rnd) {
        byte[] key = String.format("key-%03d", i).getBytes(StandardCharsets.UTF_8);
        byte[] value;
        if (i == 150) {
            // One large, incompressible record (200 KiB).
            value = new byte[200 * 1024];
            rnd.nextBytes(value);
        } else if (i % 50 == 7) {
            value = new byte[0]; // empty (not null) value
        } else {
            StringBuilder sb = new StringBuilder("value-" + codec + "-" + i + "-");
            int extra = (i * 37) % 1500;
            for (int j = 0; j < extra; j++) {
                sb.append((char) ('a' + (i + j) % 26));
            }
            value = sb.toString().getBytes(StandardCharsets.UTF_8);
        }
        List<Header> headers = new ArrayList<>();
        headers.add(new RecordHeader("idx", Integer.toString(i).getBytes(StandardCharsets.UTF_8)));
        headers.add(new RecordHeader("codec", codec.getBytes(StandardCharsets.UTF_8)));
        if (i % 7 == 0) {
            headers.add(new RecordHeader("null-header", null));
        }
        if (i % 11 == 0) {
            // Repeated header keys must keep their order.
            headers.add(new RecordHeader("dup", "first".getBytes(StandardCharsets.UTF_8)));
            headers.add(new RecordHeader("dup", "second".getBytes(StandardCharsets.UTF_8)));
        }
        if (i % 13 == 0) {
            headers.add(new RecordHeader("utf8-\u00e9\u6f22", "\u2603 snow".getBytes(StandardCharsets.UTF_8)));
        }
        return new Sent(i, key, value, headers, baseTs + 10L * i);
    }

    private static void roundTrip(String bootstrap, String topic, String codec) throws Exception {
        long baseTs = (System.currentTimeMillis() / 1000) * 1000 - 120_000;
        Random rnd = new Random(42);
        List<Sent> sent = new ArrayList<>();
        for (int i = 0; i < RECORDS; i++) {
            sent.add(makeRecord(codec, i, baseTs, rnd));
        }

        // ---- produce
        Properties pp = new Properties();
        pp.put(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        pp.put(ProducerConfig.CLIENT_ID_CONFIG, "sluice-compat-producer-" + codec);
        pp.put(ProducerConfig.ACKS_CONFIG, "all");
        pp.put(ProducerConfig.COMPRESSION_TYPE_CONFIG, codec);
        pp.put(ProducerConfig.LINGER_MS_CONFIG, "5");
        pp.put(ProducerConfig.REQUEST_TIMEOUT_MS_CONFIG, "15000");
        pp.put(ProducerConfig.DELIVERY_TIMEOUT_MS_CONFIG, "30000");
        pp.put(ProducerConfig.KEY_SERIALIZER_CLASS_CONFIG, ByteArraySerializer.class.getName());
        pp.put(ProducerConfig.VALUE_SERIALIZER_CLASS_CONFIG, ByteArraySerializer.class.getName());
        try (KafkaProducer<byte[], byte[]> producer = new KafkaProducer<>(pp)) {
            List<Future<RecordMetadata>> futures = new ArrayList<>();
            for (Sent s : sent) {
                // Keyed records; the default partitioner spreads them over the partitions.
                futures.add(producer.send(new ProducerRecord<>(topic, null, s.timestamp, s.key, s.value,
                        new RecordHeaders(s.headers))));
            }
            producer.flush();
            for (int i = 0; i < RECORDS; i++) {
                sent.get(i).meta = futures.get(i).get(TIMEOUT_S, TimeUnit.SECONDS);
            }
        }

        // Check the acks: offsets per partition 0,1,2,... in send order, timestamps echoed.
        Map<Integer, List<Sent>> byPartition = new TreeMap<>();
        Map<TopicPartition, Map<Long, Sent>> byOffset = new HashMap<>();
        for (Sent s : sent) {
            RecordMetadata m = s.meta;
            byPartition.computeIfAbsent(m.partition(), k -> new ArrayList<>()).add(s);
            byOffset.computeIfAbsent(new TopicPartition(topic, m.partition()), k -> new HashMap<>()).put(m.offset(), s);
            check(m.hasOffset(), codec + ": ack of record " + s.idx + " has no offset");
            check(m.timestamp() == s.timestamp, codec + ": ack of record " + s.idx + " timestamp "
                    + m.timestamp() + ", expected " + s.timestamp + " (CreateTime)");
        }
        check(byPartition.size() == PARTITIONS, codec + ": records landed in partitions " + byPartition.keySet()
                + ", expected all " + PARTITIONS);
        for (Map.Entry<Integer, List<Sent>> e : byPartition.entrySet()) {
            List<Sent> list = e.getValue();
            for (int j = 0; j < list.size(); j++) {
                check(list.get(j).meta.offset() == j, codec + ": partition " + e.getKey() + ": record "
                        + list.get(j).idx + " acked at offset " + list.get(j).meta.offset() + ", expected " + j);
            }
        }

        List<TopicPartition> tps = new ArrayList<>();
        for (int p = 0; p < PARTITIONS; p++) {
            tps.add(new TopicPartition(topic, p));
        }

        // ---- consume: manual assignment, no group, no commits
        try (KafkaConsumer<byte[], byte[]> consumer = newConsumer(bootstrap, codec, Map.of())) {
            consumeAll(consumer, tps, codec, byOffset);

            // ---- offsets
            Map<TopicPartition, Long> begin = consumer.beginningOffsets(tps);
            Map<TopicPartition, Long> end = consumer.endOffsets(tps);
            for (TopicPartition tp : tps) {
                long count = byPartition.getOrDefault(tp.partition(), List.of()).size();
                check(begin.get(tp) != null && begin.get(tp) == 0L, codec + ": beginningOffsets " + tp + " = " + begin.get(tp) + ", expected 0");
                check(end.get(tp) != null && end.get(tp) == count, codec + ": endOffsets " + tp + " = " + end.get(tp) + ", expected " + count);
                check(consumer.position(tp) == count, codec + ": position " + tp + " = " + consumer.position(tp) + ", expected " + count);
            }

            long[] targets = {
                baseTs - 1_000, // before everything -> first record of each partition
                sent.get(0).timestamp,
                sent.get(101).timestamp,
                sent.get(101).timestamp - 5, // between two records -> the next one
                sent.get(RECORDS - 1).timestamp,
                sent.get(RECORDS - 1).timestamp + 1, // after everything -> none
            };
            for (long target : targets) {
                Map<TopicPartition, Long> query = new HashMap<>();
                for (TopicPartition tp : tps) {
                    query.put(tp, target);
                }
                Map<TopicPartition, OffsetAndTimestamp> found = consumer.offsetsForTimes(query);
                for (TopicPartition tp : tps) {
                    Sent want = null;
                    for (Sent s : byPartition.getOrDefault(tp.partition(), List.of())) {
                        if (s.timestamp >= target) {
                            want = s;
                            break;
                        }
                    }
                    OffsetAndTimestamp got = found.get(tp);
                    String what = codec + ": offsetsForTimes(" + tp + ", base+" + (target - baseTs) + ")";
                    if (want == null) {
                        check(got == null, what + " = " + got + ", expected none");
                    } else if (check(got != null, what + " = none, expected offset " + want.meta.offset())) {
                        check(got.offset() == want.meta.offset() && got.timestamp() == want.timestamp,
                                what + " = " + got + ", expected offset " + want.meta.offset()
                                        + " timestamp " + want.timestamp);
                    }
                }
            }
        }

        // ---- again with fetch sizes far below the data (and below the 200 KiB record): many
        // fetch rounds, and the broker must still return a whole oversized batch (KIP-74).
        try (KafkaConsumer<byte[], byte[]> consumer = newConsumer(bootstrap, codec + "-small", Map.of(
                ConsumerConfig.FETCH_MAX_BYTES_CONFIG, "16384",
                ConsumerConfig.MAX_PARTITION_FETCH_BYTES_CONFIG, "4096"))) {
            consumeAll(consumer, tps, codec + " (small fetches)", byOffset);
        }

        // ---- ListOffsets through the admin client, including max timestamp (ListOffsets v7+)
        try (Admin admin = Admin.create(adminProps(bootstrap))) {
            Map<TopicPartition, OffsetSpec> earliest = new HashMap<>();
            Map<TopicPartition, OffsetSpec> latest = new HashMap<>();
            Map<TopicPartition, OffsetSpec> maxTs = new HashMap<>();
            for (TopicPartition tp : tps) {
                earliest.put(tp, OffsetSpec.earliest());
                latest.put(tp, OffsetSpec.latest());
                maxTs.put(tp, OffsetSpec.maxTimestamp());
            }
            Map<TopicPartition, ListOffsetsResult.ListOffsetsResultInfo> e =
                    admin.listOffsets(earliest).all().get(TIMEOUT_S, TimeUnit.SECONDS);
            Map<TopicPartition, ListOffsetsResult.ListOffsetsResultInfo> l =
                    admin.listOffsets(latest).all().get(TIMEOUT_S, TimeUnit.SECONDS);
            Map<TopicPartition, ListOffsetsResult.ListOffsetsResultInfo> m =
                    admin.listOffsets(maxTs).all().get(TIMEOUT_S, TimeUnit.SECONDS);
            for (TopicPartition tp : tps) {
                List<Sent> list = byPartition.getOrDefault(tp.partition(), List.of());
                check(e.get(tp).offset() == 0, codec + ": admin listOffsets(earliest) " + tp + " = " + e.get(tp).offset());
                check(l.get(tp).offset() == list.size(), codec + ": admin listOffsets(latest) " + tp + " = "
                        + l.get(tp).offset() + ", expected " + list.size());
                if (!list.isEmpty()) {
                    Sent last = list.get(list.size() - 1); // timestamps grow with idx
                    check(m.get(tp).offset() == last.meta.offset() && m.get(tp).timestamp() == last.timestamp,
                            codec + ": admin listOffsets(maxTimestamp) " + tp + " = " + m.get(tp)
                                    + ", expected offset " + last.meta.offset() + " timestamp " + last.timestamp);
                }
            }
        }
    }

    /**
     * A group's committed offsets: commitSync from an assign()ed consumer, read back by another
     * consumer of the group (committed) and by the admin client (listConsumerGroupOffsets).
     */
    private static void committedOffsets(String bootstrap, String topic) throws Exception {
        String group = "java-compat-group";
        Map<TopicPartition, OffsetAndMetadata> commit = new HashMap<>();
        for (int p = 0; p < PARTITIONS; p++) {
            commit.put(new TopicPartition(topic, p), new OffsetAndMetadata(10L + p, "java-" + p));
        }
        Map<String, String> grouped = Map.of(ConsumerConfig.GROUP_ID_CONFIG, group);
        try (KafkaConsumer<byte[], byte[]> consumer = newConsumer(bootstrap, "committer", grouped)) {
            consumer.assign(commit.keySet());
            consumer.commitSync(commit);
        }
        try (KafkaConsumer<byte[], byte[]> consumer = newConsumer(bootstrap, "reader", grouped)) {
            Map<TopicPartition, OffsetAndMetadata> got = consumer.committed(commit.keySet());
            check(commit.equals(got), "offsets: committed() = " + got + ", expected " + commit);
        }
        Properties ap = new Properties();
        ap.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        try (Admin admin = Admin.create(ap)) {
            Map<TopicPartition, OffsetAndMetadata> listed =
                    admin.listConsumerGroupOffsets(group).partitionsToOffsetAndMetadata().get(TIMEOUT_S, TimeUnit.SECONDS);
            check(commit.equals(listed), "offsets: listConsumerGroupOffsets = " + listed + ", expected " + commit);
        }
    }

    private static KafkaProducer<byte[], byte[]> transactionalProducer(String bootstrap, String id) {
        Properties pp = new Properties();
        pp.put(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        pp.put(ProducerConfig.TRANSACTIONAL_ID_CONFIG, id);
        pp.put(ProducerConfig.KEY_SERIALIZER_CLASS_CONFIG, ByteArraySerializer.class.getName());
        pp.put(ProducerConfig.VALUE_SERIALIZER_CLASS_CONFIG, ByteArraySerializer.class.getName());
        KafkaProducer<byte[], byte[]> producer = new KafkaProducer<>(pp);
        producer.initTransactions();
        return producer;
    }

    /** Every value of the topic from the beginning at the isolation level, sorted. */
    private static List<String> readTopic(String bootstrap, String topic, String isolation) {
        List<String> out = new ArrayList<>();
        try (KafkaConsumer<byte[], byte[]> c = newConsumer(bootstrap, "txn-" + isolation,
                Map.of(ConsumerConfig.ISOLATION_LEVEL_CONFIG, isolation))) {
            List<TopicPartition> tps = new ArrayList<>();
            for (int p = 0; p < PARTITIONS; p++) {
                tps.add(new TopicPartition(topic, p));
            }
            c.assign(tps);
            c.seekToBeginning(tps);
            long quietUntil = System.currentTimeMillis() + 2000;
            while (System.currentTimeMillis() < quietUntil) {
                for (ConsumerRecord<byte[], byte[]> r : c.poll(Duration.ofMillis(200))) {
                    out.add(new String(r.value(), StandardCharsets.UTF_8));
                    quietUntil = System.currentTimeMillis() + 2000;
                }
            }
        }
        out.sort(null);
        return out;
    }

    /**
     * A transactional producer (InitProducerId with a transactional id, AddPartitionsToTxn v3,
     * AddOffsetsToTxn, TxnOffsetCommit, EndTxn v4 as the Java 4.x client negotiates them without
     * transaction version 2): a committed transaction with sendOffsetsToTransaction, an aborted
     * one; read_committed sees only the committed records, read_uncommitted all of them; the
     * group's offsets are the committed transaction's; a second producer with the same id fences
     * the first.
     */
    private static void transactions(String bootstrap) throws Exception {
        String topic = "java-compat-txn";
        String group = "java-compat-txn-group";
        try (Admin admin = Admin.create(adminProps(bootstrap))) {
            admin.createTopics(List.of(new NewTopic(topic, PARTITIONS, (short) 1))).all().get(TIMEOUT_S, TimeUnit.SECONDS);
        }
        Map<TopicPartition, OffsetAndMetadata> offsets = new HashMap<>();
        for (int p = 0; p < PARTITIONS; p++) {
            offsets.put(new TopicPartition(topic, p), new OffsetAndMetadata(7L + p));
        }
        List<String> committed = new ArrayList<>();
        List<String> all = new ArrayList<>();
        try (KafkaProducer<byte[], byte[]> producer = transactionalProducer(bootstrap, "java-compat-txn")) {
            producer.beginTransaction();
            for (int i = 0; i < 12; i++) {
                String v = "committed-" + i;
                producer.send(new ProducerRecord<>(topic, i % PARTITIONS, null, v.getBytes(StandardCharsets.UTF_8)));
                committed.add(v);
            }
            producer.sendOffsetsToTransaction(offsets, new org.apache.kafka.clients.consumer.ConsumerGroupMetadata(group));
            producer.commitTransaction();
            producer.beginTransaction();
            Map<TopicPartition, OffsetAndMetadata> later = new HashMap<>();
            for (TopicPartition tp : offsets.keySet()) {
                later.put(tp, new OffsetAndMetadata(99L));
            }
            for (int i = 0; i < 6; i++) {
                String v = "aborted-" + i;
                producer.send(new ProducerRecord<>(topic, i % PARTITIONS, null, v.getBytes(StandardCharsets.UTF_8)));
                all.add(v);
            }
            producer.sendOffsetsToTransaction(later, new org.apache.kafka.clients.consumer.ConsumerGroupMetadata(group));
            producer.flush();
            producer.abortTransaction();
        }
        all.addAll(committed);
        committed.sort(null);
        all.sort(null);
        List<String> rc = readTopic(bootstrap, topic, "read_committed");
        check(rc.equals(committed), "transactions: read_committed saw " + rc + ", expected " + committed);
        List<String> ru = readTopic(bootstrap, topic, "read_uncommitted");
        check(ru.equals(all), "transactions: read_uncommitted saw " + ru + ", expected " + all);
        try (Admin admin = Admin.create(adminProps(bootstrap))) {
            Map<TopicPartition, OffsetAndMetadata> listed =
                    admin.listConsumerGroupOffsets(group).partitionsToOffsetAndMetadata().get(TIMEOUT_S, TimeUnit.SECONDS);
            check(offsets.equals(listed), "transactions: group offsets " + listed + ", expected " + offsets);
        }
        // Zombie fencing: the second producer's initTransactions fences the first.
        KafkaProducer<byte[], byte[]> zombie = transactionalProducer(bootstrap, "java-compat-zombie");
        zombie.beginTransaction();
        zombie.send(new ProducerRecord<>(topic, 0, null, "zombie".getBytes(StandardCharsets.UTF_8))).get(TIMEOUT_S, TimeUnit.SECONDS);
        operatorViews(bootstrap, topic);
        try (KafkaProducer<byte[], byte[]> fresh = transactionalProducer(bootstrap, "java-compat-zombie")) {
            boolean fenced = false;
            try {
                zombie.commitTransaction();
            } catch (org.apache.kafka.common.errors.ProducerFencedException
                     | org.apache.kafka.common.errors.InvalidProducerEpochException e) {
                fenced = true;
            }
            check(fenced, "transactions: the zombie producer committed after being fenced");
        } finally {
            zombie.close(Duration.ZERO);
        }
        List<String> after = readTopic(bootstrap, topic, "read_committed");
        check(after.equals(committed), "transactions: after fencing, read_committed saw " + after);
        abortHanging(bootstrap, topic);
    }

    /**
     * An operator ends a transaction by hand (Admin.abortTransaction: DescribeProducers to find
     * the producer, then WriteTxnMarkers with an ABORT marker to the partition): the partition's
     * open transaction is gone, its record stays invisible to read_committed, and a record
     * committed behind it becomes visible.
     */
    private static void abortHanging(String bootstrap, String topic) throws Exception {
        TopicPartition tp = new TopicPartition(topic, 1);
        KafkaProducer<byte[], byte[]> hanging = transactionalProducer(bootstrap, "java-compat-hanging");
        try (Admin admin = Admin.create(adminProps(bootstrap))) {
            hanging.beginTransaction();
            hanging.send(new ProducerRecord<>(topic, 1, null, "hanging".getBytes(StandardCharsets.UTF_8))).get(TIMEOUT_S, TimeUnit.SECONDS);
            try (KafkaProducer<byte[], byte[]> behind = transactionalProducer(bootstrap, "java-compat-behind")) {
                behind.beginTransaction();
                behind.send(new ProducerRecord<>(topic, 1, null, "behind".getBytes(StandardCharsets.UTF_8)));
                behind.commitTransaction();
            }
            List<String> held = readTopic(bootstrap, topic, "read_committed");
            check(!held.contains("behind"), "transactions: read past an open transaction: " + held);
            org.apache.kafka.clients.admin.ProducerState open = null;
            for (org.apache.kafka.clients.admin.ProducerState ps : admin.describeProducers(List.of(tp)).partitionResult(tp)
                    .get(TIMEOUT_S, TimeUnit.SECONDS).activeProducers()) {
                if (ps.currentTransactionStartOffset().isPresent()) {
                    open = ps;
                }
            }
            if (!check(open != null, "transactions: describeProducers shows no open transaction on " + tp)) {
                return;
            }
            admin.abortTransaction(new org.apache.kafka.clients.admin.AbortTransactionSpec(tp, open.producerId(),
                    (short) open.producerEpoch(), open.coordinatorEpoch().orElse(0))).all().get(TIMEOUT_S, TimeUnit.SECONDS);
            List<String> freed = readTopic(bootstrap, topic, "read_committed");
            check(freed.contains("behind") && !freed.contains("hanging"),
                    "transactions: after abortTransaction, read_committed saw " + freed);
        } finally {
            hanging.close(Duration.ZERO);
        }
    }

    /**
     * What operators see (DescribeTransactions, ListTransactions, DescribeProducers through the
     * admin client) while "java-compat-zombie" has an open transaction on partition 0 and
     * "java-compat-txn" has completed an abort.
     */
    private static void operatorViews(String bootstrap, String topic) throws Exception {
        TopicPartition tp0 = new TopicPartition(topic, 0);
        try (Admin admin = Admin.create(adminProps(bootstrap))) {
            Map<String, org.apache.kafka.clients.admin.TransactionDescription> described = admin
                    .describeTransactions(List.of("java-compat-zombie", "java-compat-txn"))
                    .all().get(TIMEOUT_S, TimeUnit.SECONDS);
            org.apache.kafka.clients.admin.TransactionDescription open = described.get("java-compat-zombie");
            check(open != null && open.state() == org.apache.kafka.clients.admin.TransactionState.ONGOING
                            && open.topicPartitions().contains(tp0) && open.transactionStartTimeMs().isPresent(),
                    "transactions: describeTransactions(open) = " + open);
            org.apache.kafka.clients.admin.TransactionDescription done = described.get("java-compat-txn");
            check(done != null && done.state() == org.apache.kafka.clients.admin.TransactionState.COMPLETE_ABORT
                            && done.topicPartitions().isEmpty(),
                    "transactions: describeTransactions(aborted) = " + done);
            // Transaction version 2 (KIP-890, advertised as a finalized feature): the client
            // sends no AddPartitionsToTxn and every transaction ends at a bumped epoch — one
            // commit and one abort after initTransactions leave epoch 2 (version 1 would stay 0).
            check(done != null && done.producerEpoch() == 2,
                    "transactions: transaction version 2 not in use, epoch " + (done == null ? "?" : done.producerEpoch()));
            Collection<org.apache.kafka.clients.admin.TransactionListing> listed =
                    admin.listTransactions().all().get(TIMEOUT_S, TimeUnit.SECONDS);
            Set<String> ids = new HashSet<>();
            for (org.apache.kafka.clients.admin.TransactionListing l : listed) {
                ids.add(l.transactionalId());
            }
            check(ids.containsAll(List.of("java-compat-zombie", "java-compat-txn")),
                    "transactions: listTransactions = " + ids);
            Collection<org.apache.kafka.clients.admin.TransactionListing> ongoing = admin
                    .listTransactions(new org.apache.kafka.clients.admin.ListTransactionsOptions()
                            .filterStates(List.of(org.apache.kafka.clients.admin.TransactionState.ONGOING)))
                    .all().get(TIMEOUT_S, TimeUnit.SECONDS);
            check(ongoing.size() == 1 && ongoing.iterator().next().transactionalId().equals("java-compat-zombie"),
                    "transactions: listTransactions(ONGOING) = " + ongoing);
            org.apache.kafka.clients.admin.DescribeProducersResult.PartitionProducerState producers =
                    admin.describeProducers(List.of(tp0)).partitionResult(tp0).get(TIMEOUT_S, TimeUnit.SECONDS);
            boolean sawOpen = false;
            for (org.apache.kafka.clients.admin.ProducerState ps : producers.activeProducers()) {
                if (open != null && ps.producerId() == open.producerId()) {
                    sawOpen = ps.currentTransactionStartOffset().isPresent() && ps.producerEpoch() == open.producerEpoch();
                }
            }
            check(sawOpen, "transactions: describeProducers(" + tp0 + ") = " + producers.activeProducers());
        }
    }

    /**
     * Two consumers subscribe() in one group (classic protocol, the client's default): they split
     * the partitions between them and read every record of the topic exactly once; the admin
     * client describes the group as Stable with two members.
     */
    private static void groupConsume(String bootstrap, String topic) throws Exception {
        String group = "java-compat-subscribers";
        Map<String, String> grouped = Map.of(ConsumerConfig.GROUP_ID_CONFIG, group,
                ConsumerConfig.HEARTBEAT_INTERVAL_MS_CONFIG, "500");
        try (KafkaConsumer<byte[], byte[]> a = newConsumer(bootstrap, "member-a", grouped);
             KafkaConsumer<byte[], byte[]> b = newConsumer(bootstrap, "member-b", grouped)) {
            a.subscribe(List.of(topic));
            b.subscribe(List.of(topic));
            Set<String> seen = new HashSet<>();
            int received = 0;
            long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(TIMEOUT_S);
            while ((received < RECORDS || a.assignment().isEmpty() || b.assignment().isEmpty())
                    && System.nanoTime() < deadline) {
                for (KafkaConsumer<byte[], byte[]> c : List.of(a, b)) {
                    for (ConsumerRecord<byte[], byte[]> r : c.poll(Duration.ofMillis(100))) {
                        received++;
                        check(seen.add(r.partition() + "@" + r.offset()), "group: record " + r.partition() + "@" + r.offset() + " delivered twice");
                    }
                }
            }
            check(received == RECORDS, "group: received " + received + " records, expected " + RECORDS);
            check(!a.assignment().isEmpty() && !b.assignment().isEmpty(),
                    "group: assignments " + a.assignment() + " and " + b.assignment() + ", expected both non-empty");
            check(a.assignment().size() + b.assignment().size() == PARTITIONS,
                    "group: " + (a.assignment().size() + b.assignment().size()) + " partitions assigned, expected " + PARTITIONS);
            Properties ap = new Properties();
            ap.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
            try (Admin admin = Admin.create(ap)) {
                var described = admin.describeConsumerGroups(List.of(group)).all().get(TIMEOUT_S, TimeUnit.SECONDS).get(group);
                check(described != null && described.members().size() == 2,
                        "group: describeConsumerGroups members = " + (described == null ? null : described.members()));
                check(described != null && "STABLE".equals(String.valueOf(described.groupState()).toUpperCase()),
                        "group: describeConsumerGroups state = " + (described == null ? null : described.groupState()));
            }
        }
    }

    /**
     * The new consumer group protocol (KIP-848, group.protocol=consumer): the broker assigns the
     * partitions; two members split them and read every record once; when one leaves, the
     * other is given all of them.
     */
    private static void kip848Consume(String bootstrap, String topic) throws Exception {
        // Auto-commit: a member commits what it read before it gives a partition up (with its
        // member epoch, OffsetCommit v9), so the next owner goes on from there.
        Map<String, String> grouped = Map.of(ConsumerConfig.GROUP_ID_CONFIG, "java-compat-kip848",
                ConsumerConfig.GROUP_PROTOCOL_CONFIG, "consumer",
                ConsumerConfig.ENABLE_AUTO_COMMIT_CONFIG, "true");
        KafkaConsumer<byte[], byte[]> a = newConsumer(bootstrap, "kip848-a", grouped);
        try (KafkaConsumer<byte[], byte[]> b = newConsumer(bootstrap, "kip848-b", grouped)) {
            a.subscribe(List.of(topic));
            b.subscribe(List.of(topic));
            Set<String> seen = new HashSet<>();
            int received = 0;
            long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(TIMEOUT_S);
            while ((received < RECORDS || a.assignment().isEmpty() || b.assignment().isEmpty()
                    || a.assignment().size() + b.assignment().size() != PARTITIONS)
                    && System.nanoTime() < deadline) {
                for (KafkaConsumer<byte[], byte[]> c : List.of(a, b)) {
                    for (ConsumerRecord<byte[], byte[]> r : c.poll(Duration.ofMillis(100))) {
                        received++;
                        check(seen.add(r.partition() + "@" + r.offset()), "kip848: record " + r.partition() + "@" + r.offset() + " delivered twice");
                    }
                }
            }
            check(received == RECORDS, "kip848: received " + received + " records, expected " + RECORDS);
            check(!a.assignment().isEmpty() && !b.assignment().isEmpty()
                    && a.assignment().size() + b.assignment().size() == PARTITIONS,
                    "kip848: assignments " + a.assignment() + " and " + b.assignment());
            Properties ap = new Properties();
            ap.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
            try (Admin admin = Admin.create(ap)) {
                var described = admin.describeConsumerGroups(List.of("java-compat-kip848")).all()
                        .get(TIMEOUT_S, TimeUnit.SECONDS).get("java-compat-kip848");
                check(described != null && described.members().size() == 2
                        && "consumer".equalsIgnoreCase(String.valueOf(described.type())),
                        "kip848: describeConsumerGroups = " + described);
            }
            a.close();
            deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(TIMEOUT_S);
            while (b.assignment().size() != PARTITIONS && System.nanoTime() < deadline) {
                b.poll(Duration.ofMillis(100));
            }
            check(b.assignment().size() == PARTITIONS, "kip848: after a left, b has " + b.assignment());
        }
    }

    /**
     * A broker-side regular-expression subscription (KIP-848, subscribe(SubscriptionPattern)):
     * the broker resolves the pattern to the lz4 and gzip topics; every record of both arrives.
     */
    private static void kip848Pattern(String bootstrap) throws Exception {
        Map<String, String> grouped = Map.of(ConsumerConfig.GROUP_ID_CONFIG, "java-compat-kip848-regex",
                ConsumerConfig.GROUP_PROTOCOL_CONFIG, "consumer");
        try (KafkaConsumer<byte[], byte[]> c = newConsumer(bootstrap, "kip848-regex", grouped)) {
            c.subscribe(new SubscriptionPattern("java-compat-(lz4|gzip)"));
            Set<String> seen = new HashSet<>();
            long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(TIMEOUT_S);
            while (seen.size() < 2 * RECORDS && System.nanoTime() < deadline) {
                for (ConsumerRecord<byte[], byte[]> r : c.poll(Duration.ofMillis(100))) {
                    check(seen.add(r.topic() + "-" + r.partition() + "@" + r.offset()),
                            "kip848 pattern: record " + r.topic() + "-" + r.partition() + "@" + r.offset() + " delivered twice");
                }
            }
            Set<String> topics = new HashSet<>();
            for (TopicPartition tp : c.assignment()) {
                topics.add(tp.topic());
            }
            check(topics.equals(Set.of(topicFor("lz4"), topicFor("gzip"))) && c.assignment().size() == 2 * PARTITIONS,
                    "kip848 pattern: assignment " + c.assignment());
            check(seen.size() == 2 * RECORDS, "kip848 pattern: received " + seen.size() + " records, expected " + 2 * RECORDS);
        }
    }

    private static KafkaConsumer<byte[], byte[]> newConsumer(String bootstrap, String name, Map<String, String> extra) {
        Properties cp = new Properties();
        cp.put(ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        cp.put(ConsumerConfig.CLIENT_ID_CONFIG, "sluice-compat-consumer-" + name);
        // No group.id unless given: the round trips use assign() without a group.
        cp.put(ConsumerConfig.ENABLE_AUTO_COMMIT_CONFIG, "false");
        cp.put(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG, "earliest");
        cp.put(ConsumerConfig.REQUEST_TIMEOUT_MS_CONFIG, "15000");
        cp.put(ConsumerConfig.DEFAULT_API_TIMEOUT_MS_CONFIG, "30000");
        cp.put(ConsumerConfig.MAX_POLL_RECORDS_CONFIG, "50"); // several polls per partition
        cp.put(ConsumerConfig.KEY_DESERIALIZER_CLASS_CONFIG, ByteArrayDeserializer.class.getName());
        cp.put(ConsumerConfig.VALUE_DESERIALIZER_CLASS_CONFIG, ByteArrayDeserializer.class.getName());
        cp.putAll(extra);
        return new KafkaConsumer<>(cp);
    }

    /** assign + seekToBeginning, then polls until every acked record is back, checking each. */
    private static void consumeAll(KafkaConsumer<byte[], byte[]> consumer, List<TopicPartition> tps,
            String label, Map<TopicPartition, Map<Long, Sent>> byOffset) {
        consumer.assign(tps);
        consumer.seekToBeginning(tps);
        Map<TopicPartition, Long> lastOffset = new HashMap<>();
        Map<TopicPartition, Integer> lastIdx = new HashMap<>();
        Set<String> seen = new HashSet<>();
        int received = 0;
        long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(TIMEOUT_S);
        while (received < RECORDS && System.nanoTime() < deadline) {
            ConsumerRecords<byte[], byte[]> records = consumer.poll(Duration.ofMillis(500));
            for (ConsumerRecord<byte[], byte[]> r : records) {
                received++;
                TopicPartition tp = new TopicPartition(r.topic(), r.partition());
                String where = label + ": " + tp + "@" + r.offset();
                if (!seen.add(tp + "@" + r.offset())) {
                    fail(where + ": delivered twice");
                    continue;
                }
                Long prev = lastOffset.put(tp, r.offset());
                check(r.offset() == (prev == null ? 0 : prev + 1), where + ": offset follows "
                        + (prev == null ? "the beginning" : prev) + " (gap or reordering)");
                Sent s = byOffset.getOrDefault(tp, Map.of()).get(r.offset());
                if (!check(s != null, where + ": unexpected record (key="
                        + str(r.key()) + "), nothing was acked there")) {
                    continue;
                }
                Integer pi = lastIdx.put(tp, s.idx);
                check(pi == null || pi < s.idx, where + ": record " + s.idx + " came after record " + pi);
                check(Arrays.equals(r.key(), s.key), where + ": key " + str(r.key()) + ", expected " + str(s.key));
                check(Arrays.equals(r.value(), s.value), where + ": value differs (got "
                        + (r.value() == null ? "null" : r.value().length + " bytes: " + abbrev(r.value()))
                        + ", expected " + s.value.length + " bytes: " + abbrev(s.value) + ")");
                check(r.timestamp() == s.timestamp, where + ": timestamp " + r.timestamp() + ", expected " + s.timestamp);
                check(r.timestampType() == TimestampType.CREATE_TIME, where + ": timestamp type " + r.timestampType());
                List<String> got = headerStrings(r.headers());
                List<String> want = headerStrings(s.headers);
                check(got.equals(want), where + ": headers " + got + ", expected " + want);
            }
        }
        check(received == RECORDS, label + ": consumed " + received + " records, expected " + RECORDS
                + " (per-partition last offsets " + lastOffset + ")");
        // Nothing more must arrive.
        int extra = consumer.poll(Duration.ofMillis(300)).count();
        check(extra == 0, label + ": " + extra + " more records after all " + RECORDS);
    }

    // ---------------------------------------------------------------- helpers

    private static List<String> headerStrings(Iterable<Header> headers) {
        List<String> out = new ArrayList<>();
        for (Header h : headers) {
            out.add(h.key() + "=" + (h.value() == null ? "<null>" : str(h.value())));
        }
        return out;
    }

    private static String str(byte[] b) {
        return b == null ? "<null>" : new String(b, StandardCharsets.UTF_8);
    }

    private static String abbrev(byte[] b) {
        String s = str(b);
        return s.length() > 60 ? s.substring(0, 60) + "..." : s;
    }

    private static String describe(Throwable e) {
        StringBuilder sb = new StringBuilder();
        for (Throwable t = e; t != null; t = t.getCause()) {
            if (sb.length() > 0) {
                sb.append(" <- caused by ");
            }
            sb.append(t.getClass().getName()).append(": ").append(t.getMessage());
            if (t.getCause() == t) {
                break;
            }
        }
        return sb.toString();
    }

    private static boolean check(boolean ok, String message) {
        if (!ok) {
            fail(message);
        }
        return ok;
    }

    private static void fail(String message) {
        if (reportedInRun++ < MAX_REPORTED) {
            failures.add(message);
        } else if (reportedInRun == MAX_REPORTED + 1) {
            failures.add("(further mismatches of this run not shown)");
        }
    }
}
