//! Committed offsets: librdkafka consumers commit and read back offsets (with metadata), a
//! consumer resumes from its group's committed position, the offsets survive `kill -9`, groups
//! are independent, and bad commits get Kafka's error codes. FindCoordinator answers batched
//! and single keys.

use std::time::Duration;

use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::offset_fetch_request::{
    OffsetFetchRequestGroup, OffsetFetchRequestTopics,
};
use kafka_protocol::messages::{
    ApiKey, FindCoordinatorRequest, FindCoordinatorResponse, GroupId, OffsetCommitRequest,
    OffsetCommitResponse, OffsetFetchRequest, OffsetFetchResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use crate::common::{call, create_topic_blocking, Broker, Raw};

const TIMEOUT: Duration = Duration::from_secs(30);

fn consumer(broker: &Broker, group: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap())
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "error")
        .create()
        .expect("consumer")
}

fn produce(broker: &Broker, topic: &str, partitions: i32, per_partition: usize) {
    let p: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap())
        .set("linger.ms", "5")
        .create()
        .expect("producer");
    for i in 0..per_partition {
        for partition in 0..partitions {
            let value = format!("p{partition}-{i}");
            p.send(
                BaseRecord::<(), _>::to(topic)
                    .partition(partition)
                    .payload(&value),
            )
            .map_err(|(e, _)| e)
            .expect("enqueued");
        }
    }
    p.flush(TIMEOUT).expect("flushed");
}

/// The group's committed (offset, metadata) per partition, as librdkafka reads them.
fn committed(broker: &Broker, group: &str, topic: &str, partitions: i32) -> Vec<(Offset, String)> {
    let c = consumer(broker, group);
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let got = c
        .committed_offsets(tpl, TIMEOUT)
        .expect("committed offsets");
    (0..partitions)
        .map(|p| {
            let e = got.find_partition(topic, p).expect("partition answered");
            (e.offset(), e.metadata().to_string())
        })
        .collect()
}

#[test]
fn committed_offsets_are_kept_per_group_resumed_from_and_survive_kill_9() {
    let mut broker = Broker::start(&[]);
    let topic = "committed";
    create_topic_blocking(&broker, topic, 3);
    produce(&broker, topic, 3, 20);

    let c = consumer(&broker, "readers");
    let mut tpl = TopicPartitionList::new();
    for (p, offset) in [(0, 5), (1, 7), (2, 20)] {
        tpl.add_partition_offset(topic, p, Offset::Offset(offset))
            .expect("offset");
        tpl.find_partition(topic, p)
            .expect("just added")
            .set_metadata(format!("checkpoint-{p}"));
    }
    c.commit(&tpl, CommitMode::Sync).expect("commit");
    drop(c);

    let expected = vec![
        (Offset::Offset(5), "checkpoint-0".to_string()),
        (Offset::Offset(7), "checkpoint-1".to_string()),
        (Offset::Offset(20), "checkpoint-2".to_string()),
    ];
    assert_eq!(committed(&broker, "readers", topic, 3), expected);
    assert!(
        committed(&broker, "others", topic, 3)
            .iter()
            .all(|(o, _)| *o == Offset::Invalid),
        "another group has committed nothing"
    );

    // A consumer of the group starts where the group left off.
    let c = consumer(&broker, "readers");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Stored)
        .expect("offset");
    c.assign(&tpl).expect("assign");
    let first = loop {
        if let Some(m) = c.poll(TIMEOUT) {
            break m.expect("message").offset();
        }
    };
    assert_eq!(first, 5, "resumed at the committed offset");
    drop(c);

    // A later commit replaces an earlier one; both survive a crash.
    let c = consumer(&broker, "readers");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 1, Offset::Offset(9))
        .expect("offset");
    c.commit(&tpl, CommitMode::Sync).expect("commit");
    drop(c);
    broker.kill9();
    broker.restart();
    let after = committed(&broker, "readers", topic, 3);
    assert_eq!(after[0], expected[0]);
    assert_eq!(after[1].0, Offset::Offset(9));
    assert_eq!(after[2], expected[2]);
}

fn commit_request(
    group: &str,
    generation: i32,
    member: &str,
    topic: &str,
    metadata: &str,
) -> OffsetCommitRequest {
    OffsetCommitRequest::default()
        .with_group_id(GroupId(StrBytes::from_string(group.into())))
        .with_generation_id_or_member_epoch(generation)
        .with_member_id(StrBytes::from_string(member.into()))
        .with_topics(vec![OffsetCommitRequestTopic::default()
            .with_name(TopicName(StrBytes::from_string(topic.into())))
            .with_partitions(vec![OffsetCommitRequestPartition::default()
                .with_partition_index(0)
                .with_committed_offset(3)
                .with_committed_metadata(Some(StrBytes::from_string(
                    metadata.into(),
                )))])])
}

fn commit_error(raw: &mut Raw, request: &OffsetCommitRequest) -> i16 {
    let r: OffsetCommitResponse = call(raw, ApiKey::OffsetCommit, 8, request);
    r.topics[0].partitions[0].error_code
}

#[test]
fn coordinators_are_found_and_bad_commits_get_kafka_error_codes() {
    let broker = Broker::start(&[]);
    create_topic_blocking(&broker, "t", 1);
    let mut raw = Raw::connect(broker.port);

    let single: FindCoordinatorResponse = call(
        &mut raw,
        ApiKey::FindCoordinator,
        2,
        &FindCoordinatorRequest::default().with_key(StrBytes::from_static_str("g")),
    );
    assert_eq!(
        (single.error_code, single.port),
        (0, i32::from(broker.port))
    );
    let batched: FindCoordinatorResponse = call(
        &mut raw,
        ApiKey::FindCoordinator,
        4,
        &FindCoordinatorRequest::default().with_coordinator_keys(vec![
            StrBytes::from_static_str("g1"),
            StrBytes::from_static_str("g2"),
        ]),
    );
    assert_eq!(batched.coordinators.len(), 2);
    assert!(batched
        .coordinators
        .iter()
        .all(|c| c.error_code == 0 && c.node_id.0 == 0));
    let txn: FindCoordinatorResponse = call(
        &mut raw,
        ApiKey::FindCoordinator,
        4,
        &FindCoordinatorRequest::default()
            .with_key_type(1)
            .with_coordinator_keys(vec![StrBytes::from_static_str("txn")]),
    );
    assert_eq!(
        (
            txn.coordinators[0].error_code,
            txn.coordinators[0].node_id.0
        ),
        (0, 0),
        "the transaction coordinator is this broker"
    );

    assert_eq!(
        commit_error(&mut raw, &commit_request("g", -1, "", "t", "m")),
        0
    );
    // Kafka: without a generation any member id is accepted for a group without members,
    // and so is the empty group id.
    assert_eq!(
        commit_error(&mut raw, &commit_request("g", -1, "member-1", "t", "m")),
        0
    );
    assert_eq!(
        commit_error(&mut raw, &commit_request("", -1, "", "t", "m")),
        0
    );
    // A generation: the group exists but has no member, or it does not exist at all.
    assert_eq!(
        commit_error(&mut raw, &commit_request("g", 3, "m-1", "t", "m")),
        25,
        "UNKNOWN_MEMBER_ID"
    );
    assert_eq!(
        commit_error(&mut raw, &commit_request("nobody", 3, "", "t", "m")),
        22,
        "ILLEGAL_GENERATION"
    );
    let r: OffsetCommitResponse = call(
        &mut raw,
        ApiKey::OffsetCommit,
        9,
        &commit_request("nobody", 3, "", "t", "m"),
    );
    assert_eq!(
        r.topics[0].partitions[0].error_code, 69,
        "GROUP_ID_NOT_FOUND from v9"
    );
    assert_eq!(
        commit_error(&mut raw, &commit_request("g", -1, "", "nope", "m")),
        3,
        "UNKNOWN_TOPIC_OR_PARTITION"
    );
    let long = "x".repeat(4097);
    assert_eq!(
        commit_error(&mut raw, &commit_request("g", -1, "", "t", &long)),
        12,
        "OFFSET_METADATA_TOO_LARGE"
    );

    // Several groups in one fetch (v8): one committed, one not; "all topics" for the first.
    let fetch = OffsetFetchRequest::default().with_groups(vec![
        OffsetFetchRequestGroup::default()
            .with_group_id(GroupId(StrBytes::from_static_str("g")))
            .with_topics(Some(vec![OffsetFetchRequestTopics::default()
                .with_name(TopicName(StrBytes::from_static_str("t")))
                .with_partition_indexes(vec![0])])),
        OffsetFetchRequestGroup::default()
            .with_group_id(GroupId(StrBytes::from_static_str("empty")))
            .with_topics(Some(vec![OffsetFetchRequestTopics::default()
                .with_name(TopicName(StrBytes::from_static_str("t")))
                .with_partition_indexes(vec![0])])),
        OffsetFetchRequestGroup::default()
            .with_group_id(GroupId(StrBytes::from_static_str("g")))
            .with_topics(None),
    ]);
    let r: OffsetFetchResponse = call(&mut raw, ApiKey::OffsetFetch, 8, &fetch);
    let offset_of = |g: usize| {
        let p = &r.groups[g].topics[0].partitions[0];
        (
            p.committed_offset,
            p.metadata.as_ref().map(|m| m.to_string()),
            p.error_code,
        )
    };
    assert_eq!(offset_of(0), (3, Some("m".into()), 0));
    assert_eq!(offset_of(1), (-1, Some(String::new()), 0));
    assert_eq!(offset_of(2), (3, Some("m".into()), 0));
    assert_eq!(
        r.groups[2].topics.len(),
        1,
        "all committed topics of the group"
    );
}

fn fetch_one(raw: &mut Raw, group: &str, topic: &str) -> i64 {
    let fetch = OffsetFetchRequest::default().with_groups(vec![OffsetFetchRequestGroup::default()
        .with_group_id(GroupId(StrBytes::from_string(group.into())))
        .with_topics(Some(vec![OffsetFetchRequestTopics::default()
            .with_name(TopicName(StrBytes::from_string(topic.into())))
            .with_partition_indexes(vec![0])]))]);
    let r: OffsetFetchResponse = call(raw, ApiKey::OffsetFetch, 8, &fetch);
    r.groups[0].topics[0].partitions[0].committed_offset
}

#[test]
fn offsets_and_groups_are_deleted_with_tombstones_that_survive_a_restart() {
    use kafka_protocol::messages::offset_delete_request::{
        OffsetDeleteRequestPartition, OffsetDeleteRequestTopic,
    };
    use kafka_protocol::messages::{
        DeleteGroupsRequest, DeleteGroupsResponse, OffsetDeleteRequest, OffsetDeleteResponse,
    };
    let mut broker = Broker::start(&[]);
    create_topic_blocking(&broker, "t", 1);
    create_topic_blocking(&broker, "u", 1);
    let mut raw = Raw::connect(broker.port);
    for (group, topic) in [("keep", "t"), ("keep", "u"), ("drop", "t")] {
        assert_eq!(
            commit_error(&mut raw, &commit_request(group, -1, "", topic, "m")),
            0
        );
    }
    let delete_offsets = OffsetDeleteRequest::default()
        .with_group_id(GroupId(StrBytes::from_static_str("keep")))
        .with_topics(vec![OffsetDeleteRequestTopic::default()
            .with_name(TopicName(StrBytes::from_static_str("u")))
            .with_partitions(vec![
                OffsetDeleteRequestPartition::default().with_partition_index(0)
            ])]);
    let r: OffsetDeleteResponse = call(&mut raw, ApiKey::OffsetDelete, 0, &delete_offsets);
    assert_eq!((r.error_code, r.topics[0].partitions[0].error_code), (0, 0));
    let delete = |names: &[&str]| {
        DeleteGroupsRequest::default().with_groups_names(
            names
                .iter()
                .map(|n| GroupId(StrBytes::from_string(n.to_string())))
                .collect(),
        )
    };
    let r: DeleteGroupsResponse = call(
        &mut raw,
        ApiKey::DeleteGroups,
        2,
        &delete(&["drop", "never-was"]),
    );
    let codes: Vec<i16> = r.results.iter().map(|g| g.error_code).collect();
    assert_eq!(codes, vec![0, 69], "deleted; GROUP_ID_NOT_FOUND");

    for round in ["before", "after"] {
        assert_eq!(fetch_one(&mut raw, "keep", "t"), 3, "{round} restart: kept");
        assert_eq!(
            fetch_one(&mut raw, "keep", "u"),
            -1,
            "{round} restart: offset deleted"
        );
        assert_eq!(
            fetch_one(&mut raw, "drop", "t"),
            -1,
            "{round} restart: group deleted"
        );
        if round == "before" {
            broker.kill9();
            broker.restart();
            raw = Raw::connect(broker.port);
        }
    }
}
