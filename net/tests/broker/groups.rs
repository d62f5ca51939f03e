//! Consumer groups with librdkafka's `subscribe()`: queue semantics inside a group (8 consumers
//! on 6 partitions: 6 busy, 2 idle, every record once), pub-sub across groups, a rebalance when
//! members leave, and the admin view (ListGroups, DescribeGroups).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};

use crate::common::{create_topic_blocking, Broker};

fn member(broker: &Broker, group: &str) -> BaseConsumer {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap())
        .set("group.id", group)
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "300")
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "200")
        .set("partition.assignment.strategy", "range")
        .create()
        .expect("consumer");
    c.subscribe(&["grouped"]).expect("subscribe");
    c
}

fn produce(broker: &Broker, from: usize, count: usize) {
    let p: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap())
        .set("linger.ms", "5")
        .create()
        .expect("producer");
    for i in from..from + count {
        let value = format!("record-{i}");
        p.send(
            BaseRecord::<(), _>::to("grouped")
                .partition((i % 6) as i32)
                .payload(&value),
        )
        .map_err(|(e, _)| e)
        .expect("enqueued");
    }
    p.flush(Duration::from_secs(30)).expect("flushed");
}

/// Polls every consumer until `done` says so (or 60 s), collecting (consumer, value).
fn poll_until(
    consumers: &[BaseConsumer],
    got: &mut Vec<(usize, String)>,
    mut done: impl FnMut(&[BaseConsumer], &[(usize, String)]) -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done(consumers, got) {
        assert!(
            Instant::now() < deadline,
            "timed out; got {} records",
            got.len()
        );
        for (i, c) in consumers.iter().enumerate() {
            match c.poll(Duration::from_millis(10)) {
                Some(Ok(m)) => got.push((
                    i,
                    String::from_utf8_lossy(m.payload().unwrap_or_default()).into(),
                )),
                // The broker going away (a crash test) is reported, then retried by the client.
                Some(Err(rdkafka::error::KafkaError::MessageConsumption(
                    rdkafka::types::RDKafkaErrorCode::BrokerTransportFailure
                    | rdkafka::types::RDKafkaErrorCode::AllBrokersDown,
                ))) => {}
                Some(Err(e)) => panic!("consume error: {e}"),
                None => {}
            }
        }
    }
}

fn assigned(c: &BaseConsumer) -> BTreeSet<i32> {
    c.assignment()
        .map(|tpl| tpl.elements().iter().map(|e| e.partition()).collect())
        .unwrap_or_default()
}

#[test]
fn a_group_shares_partitions_and_another_group_gets_everything() {
    let broker = Broker::start(&["group.initial.rebalance.delay.ms=500"]);
    create_topic_blocking(&broker, "grouped", 6);
    let consumers: Vec<BaseConsumer> = (0..8).map(|_| member(&broker, "workers")).collect();
    let mut got = Vec::new();
    // Until the group is stable: the six partitions held once each, by six of the eight.
    poll_until(&consumers, &mut got, |cs, _| {
        let sets: Vec<BTreeSet<i32>> = cs.iter().map(assigned).collect();
        let all: Vec<i32> = sets.iter().flatten().copied().collect();
        all.len() == 6 && all.iter().collect::<BTreeSet<_>>().len() == 6
    });
    let sets: Vec<BTreeSet<i32>> = consumers.iter().map(assigned).collect();
    assert_eq!(
        sets.iter().filter(|s| !s.is_empty()).count(),
        6,
        "6 active: {sets:?}"
    );
    assert_eq!(
        sets.iter().filter(|s| s.is_empty()).count(),
        2,
        "2 idle: {sets:?}"
    );

    produce(&broker, 0, 600);
    poll_until(&consumers, &mut got, |_, got| got.len() >= 600);
    std::thread::sleep(Duration::from_millis(300));
    poll_until(&consumers, &mut got, |_, _| true);
    let values: BTreeSet<&String> = got.iter().map(|(_, v)| v).collect();
    assert_eq!(got.len(), 600, "every record exactly once within the group");
    assert_eq!(values.len(), 600);
    let per_consumer: BTreeMap<usize, usize> = got.iter().fold(BTreeMap::new(), |mut m, (i, _)| {
        *m.entry(*i).or_default() += 1;
        m
    });
    for (i, n) in &per_consumer {
        assert_eq!(*n, 100, "consumer {i} read its one partition");
        assert!(!sets[*i].is_empty());
    }

    // Another group reads the whole stream on its own.
    let other = vec![member(&broker, "auditors")];
    let mut audited = Vec::new();
    poll_until(&other, &mut audited, |_, got| got.len() >= 600);
    assert_eq!(
        audited
            .iter()
            .map(|(_, v)| v)
            .collect::<BTreeSet<_>>()
            .len(),
        600
    );

    // The admin view of the group.
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap())
        .create()
        .expect("admin");
    let groups = admin
        .inner()
        .fetch_group_list(None, Duration::from_secs(10))
        .expect("group list");
    let workers = groups
        .groups()
        .iter()
        .find(|g| g.name() == "workers")
        .expect("workers listed");
    assert_eq!(workers.state(), "Stable");
    assert_eq!(workers.protocol_type(), "consumer");
    assert_eq!(workers.protocol(), "range");
    assert_eq!(workers.members().len(), 8);

    // A group with members can be neither deleted nor lose offsets of a topic it reads.
    let deleted =
        futures::executor::block_on(admin.delete_groups(&["workers"], &AdminOptions::new()))
            .expect("delete_groups answered");
    assert!(
        matches!(
            &deleted[0],
            Err((_, rdkafka::types::RDKafkaErrorCode::NonEmptyGroup))
        ),
        "{deleted:?}"
    );
    assert_eq!(
        raw::offset_delete(&broker, "workers", "grouped"),
        (0, 86),
        "GROUP_SUBSCRIBED_TO_TOPIC"
    );
}

#[test]
fn members_leaving_hand_their_partitions_to_the_others() {
    let broker = Broker::start(&["group.initial.rebalance.delay.ms=0"]);
    create_topic_blocking(&broker, "grouped", 6);
    let mut consumers: Vec<BaseConsumer> = (0..4).map(|_| member(&broker, "shrinking")).collect();
    let mut got = Vec::new();
    let covered = |cs: &[BaseConsumer], _: &[(usize, String)]| {
        let all: Vec<i32> = cs.iter().flat_map(assigned).collect();
        all.len() == 6 && all.iter().collect::<BTreeSet<_>>().len() == 6
    };
    // All four members share the six partitions once the joins have settled.
    poll_until(&consumers, &mut got, |cs, got| {
        covered(cs, got) && cs.iter().all(|c| !assigned(c).is_empty())
    });
    produce(&broker, 0, 60);
    poll_until(&consumers, &mut got, |_, got| got.len() >= 60);
    std::thread::sleep(Duration::from_millis(500)); // auto-commit
    poll_until(&consumers, &mut got, |_, _| true);

    // Two members leave (close sends LeaveGroup): the other two take every partition.
    for c in consumers.drain(..2) {
        c.unsubscribe();
        drop(c);
    }
    let mut after = Vec::new();
    poll_until(&consumers, &mut after, covered);
    produce(&broker, 60, 60);
    poll_until(&consumers, &mut after, |_, got| {
        let values: BTreeSet<&String> = got.iter().map(|(_, v)| v).collect();
        (60..120).all(|i| values.contains(&format!("record-{i}")))
    });
}

mod raw {
    use std::time::Duration;

    use bytes::Bytes;
    use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
    use kafka_protocol::messages::offset_commit_request::{
        OffsetCommitRequestPartition, OffsetCommitRequestTopic,
    };
    use kafka_protocol::messages::sync_group_request::SyncGroupRequestAssignment;
    use kafka_protocol::messages::{
        ApiKey, DescribeGroupsRequest, DescribeGroupsResponse, FindCoordinatorRequest,
        FindCoordinatorResponse, GroupId, HeartbeatRequest, HeartbeatResponse, JoinGroupRequest,
        JoinGroupResponse, OffsetCommitRequest, OffsetCommitResponse, SyncGroupRequest,
        SyncGroupResponse, TopicName,
    };
    use kafka_protocol::protocol::StrBytes;

    use crate::common::{call, create_topic_blocking, Broker, Raw};

    fn join(raw: &mut Raw, version: i16, member: &str) -> JoinGroupResponse {
        let request = JoinGroupRequest::default()
            .with_group_id(GroupId(StrBytes::from_static_str("raw-group")))
            .with_session_timeout_ms(1000)
            .with_rebalance_timeout_ms(1000)
            .with_member_id(StrBytes::from_string(member.into()))
            .with_protocol_type(StrBytes::from_static_str("consumer"))
            .with_protocols(vec![JoinGroupRequestProtocol::default()
                .with_name(StrBytes::from_static_str("range"))
                .with_metadata(Bytes::from_static(b"subscription"))]);
        call(raw, ApiKey::JoinGroup, version, &request)
    }

    fn state(raw: &mut Raw) -> (String, usize) {
        let r: DescribeGroupsResponse = call(
            raw,
            ApiKey::DescribeGroups,
            5,
            &DescribeGroupsRequest::default()
                .with_groups(vec![GroupId(StrBytes::from_static_str("raw-group"))]),
        );
        (
            r.groups[0].group_state.to_string(),
            r.groups[0].members.len(),
        )
    }

    fn heartbeat(raw: &mut Raw, generation: i32, member: &str) -> i16 {
        let r: HeartbeatResponse = call(
            raw,
            ApiKey::Heartbeat,
            4,
            &HeartbeatRequest::default()
                .with_group_id(GroupId(StrBytes::from_static_str("raw-group")))
                .with_generation_id(generation)
                .with_member_id(StrBytes::from_string(member.into())),
        );
        r.error_code
    }

    fn commit(raw: &mut Raw, generation: i32, member: &str) -> i16 {
        let request = OffsetCommitRequest::default()
            .with_group_id(GroupId(StrBytes::from_static_str("raw-group")))
            .with_generation_id_or_member_epoch(generation)
            .with_member_id(StrBytes::from_string(member.into()))
            .with_topics(vec![OffsetCommitRequestTopic::default()
                .with_name(TopicName(StrBytes::from_static_str("t")))
                .with_partitions(vec![OffsetCommitRequestPartition::default()
                    .with_partition_index(0)
                    .with_committed_offset(1)])]);
        let r: OffsetCommitResponse = call(raw, ApiKey::OffsetCommit, 8, &request);
        r.topics[0].partitions[0].error_code
    }

    /// OffsetDelete of partition 0 of `topic`: (group error, partition error).
    pub fn offset_delete(broker: &Broker, group: &str, topic: &str) -> (i16, i16) {
        use kafka_protocol::messages::offset_delete_request::{
            OffsetDeleteRequestPartition, OffsetDeleteRequestTopic,
        };
        use kafka_protocol::messages::{OffsetDeleteRequest, OffsetDeleteResponse};
        let mut raw = Raw::connect(broker.port);
        let request = OffsetDeleteRequest::default()
            .with_group_id(GroupId(StrBytes::from_string(group.into())))
            .with_topics(vec![OffsetDeleteRequestTopic::default()
                .with_name(TopicName(StrBytes::from_string(topic.into())))
                .with_partitions(vec![
                    OffsetDeleteRequestPartition::default().with_partition_index(0)
                ])]);
        let r: OffsetDeleteResponse = call(&mut raw, ApiKey::OffsetDelete, 0, &request);
        (
            r.error_code,
            r.topics.first().map_or(-1, |t| t.partitions[0].error_code),
        )
    }

    fn sync(raw: &mut Raw, generation: i32, member: &str) -> SyncGroupResponse {
        call(
            raw,
            ApiKey::SyncGroup,
            5,
            &SyncGroupRequest::default()
                .with_group_id(GroupId(StrBytes::from_static_str("raw-group")))
                .with_generation_id(generation)
                .with_member_id(StrBytes::from_string(member.into()))
                .with_assignments(vec![SyncGroupRequestAssignment::default()
                    .with_member_id(StrBytes::from_string(member.into()))
                    .with_assignment(Bytes::from_static(b"partition 0"))]),
        )
    }

    /// The group's generation and members are stored in `__consumer_offsets`: after a crash the
    /// member carries on heartbeating; an emptied group stays empty; a deleted one stays gone.
    #[test]
    fn membership_survives_a_restart() {
        use kafka_protocol::messages::{DeleteGroupsRequest, DeleteGroupsResponse};
        let mut broker = Broker::start(&[
            "group.initial.rebalance.delay.ms=0",
            "group.min.session.timeout.ms=500",
        ]);
        let mut raw = Raw::connect(broker.port);
        let member = join(&mut raw, 3, "").member_id.to_string();
        let joined = join(&mut raw, 3, &member);
        assert_eq!(joined.error_code, 0);
        let generation = joined.generation_id;
        assert_eq!(sync(&mut raw, generation, &member).error_code, 0);

        broker.kill9();
        broker.restart();
        let mut raw = Raw::connect(broker.port);
        assert_eq!(
            heartbeat(&mut raw, generation, &member),
            0,
            "known after the crash"
        );
        assert_eq!(state(&mut raw), ("Stable".into(), 1));
        let again = sync(&mut raw, generation, &member);
        assert_eq!(
            (again.error_code, again.assignment),
            (0, Bytes::from_static(b"partition 0"))
        );

        std::thread::sleep(Duration::from_millis(2000));
        assert_eq!(state(&mut raw), ("Empty".into(), 0), "the session expired");
        assert!(broker.terminate().success());
        broker.restart();
        let mut raw = Raw::connect(broker.port);
        assert_eq!(
            state(&mut raw),
            ("Empty".into(), 0),
            "still empty after a restart"
        );
        let r: DeleteGroupsResponse = call(
            &mut raw,
            ApiKey::DeleteGroups,
            2,
            &DeleteGroupsRequest::default()
                .with_groups_names(vec![GroupId(StrBytes::from_static_str("raw-group"))]),
        );
        assert_eq!(r.results[0].error_code, 0);
        broker.kill9();
        broker.restart();
        let mut raw = Raw::connect(broker.port);
        assert_eq!(state(&mut raw), ("Dead".into(), 0), "deleted for good");
    }

    /// KIP-345: a static member that comes back (same `group.instance.id`, no member id) takes
    /// over its membership with no rebalance; its old id is fenced; it may leave by instance id.
    #[test]
    fn static_members_come_back_without_a_rebalance() {
        use kafka_protocol::messages::leave_group_request::MemberIdentity;
        use kafka_protocol::messages::{LeaveGroupRequest, LeaveGroupResponse};
        let broker = Broker::start(&[
            "group.initial.rebalance.delay.ms=0",
            "group.min.session.timeout.ms=500",
        ]);
        let mut raw = Raw::connect(broker.port);
        let join_static = |raw: &mut Raw, member: &str| -> JoinGroupResponse {
            let request = JoinGroupRequest::default()
                .with_group_id(GroupId(StrBytes::from_static_str("raw-group")))
                .with_session_timeout_ms(10_000)
                .with_rebalance_timeout_ms(10_000)
                .with_member_id(StrBytes::from_string(member.into()))
                .with_group_instance_id(Some(StrBytes::from_static_str("instance-1")))
                .with_protocol_type(StrBytes::from_static_str("consumer"))
                .with_protocols(vec![JoinGroupRequestProtocol::default()
                    .with_name(StrBytes::from_static_str("range"))
                    .with_metadata(Bytes::from_static(b"subscription"))]);
            call(raw, ApiKey::JoinGroup, 9, &request)
        };
        let first = join_static(&mut raw, "");
        assert_eq!(
            first.error_code, 0,
            "static members skip MEMBER_ID_REQUIRED"
        );
        let old_id = first.member_id.to_string();
        assert_eq!(sync(&mut raw, first.generation_id, &old_id).error_code, 0);

        let back = join_static(&mut raw, "");
        assert_eq!(back.error_code, 0);
        let new_id = back.member_id.to_string();
        assert_ne!(new_id, old_id);
        assert_eq!(back.generation_id, first.generation_id, "no new generation");
        assert_eq!(state(&mut raw), ("Stable".into(), 1));
        let hb = |raw: &mut Raw, member: &str| -> i16 {
            let r: HeartbeatResponse = call(
                raw,
                ApiKey::Heartbeat,
                4,
                &HeartbeatRequest::default()
                    .with_group_id(GroupId(StrBytes::from_static_str("raw-group")))
                    .with_generation_id(first.generation_id)
                    .with_member_id(StrBytes::from_string(member.into()))
                    .with_group_instance_id(Some(StrBytes::from_static_str("instance-1"))),
            );
            r.error_code
        };
        assert_eq!(hb(&mut raw, &old_id), 82, "FENCED_INSTANCE_ID");
        assert_eq!(hb(&mut raw, &new_id), 0);
        let synced = sync(&mut raw, first.generation_id, &new_id);
        assert_eq!(
            (synced.error_code, synced.assignment),
            (0, Bytes::from_static(b"partition 0"))
        );
        assert_eq!(
            join_static(&mut raw, &old_id).error_code,
            82,
            "the old process is fenced"
        );

        let r: LeaveGroupResponse = call(
            &mut raw,
            ApiKey::LeaveGroup,
            5,
            &LeaveGroupRequest::default()
                .with_group_id(GroupId(StrBytes::from_static_str("raw-group")))
                .with_members(vec![MemberIdentity::default().with_group_instance_id(
                    Some(StrBytes::from_static_str("instance-1")),
                )]),
        );
        assert_eq!(r.members[0].error_code, 0, "left by instance id");
        assert_eq!(state(&mut raw), ("Empty".into(), 0));
    }

    /// An empty group without committed offsets is forgotten at the next offsets cleanup.
    #[test]
    fn empty_groups_without_offsets_are_forgotten() {
        let broker = Broker::start(&[
            "group.initial.rebalance.delay.ms=0",
            "group.min.session.timeout.ms=500",
            "offsets.retention.check.interval.ms=300",
        ]);
        let mut raw = Raw::connect(broker.port);
        let member = join(&mut raw, 3, "").member_id.to_string();
        let joined = join(&mut raw, 3, &member);
        assert_eq!(sync(&mut raw, joined.generation_id, &member).error_code, 0);
        assert_eq!(state(&mut raw), ("Stable".into(), 1));
        // The session (1 s) expires, the group empties, the next cleanup forgets it.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while state(&mut raw).0 != "Dead" {
            assert!(
                std::time::Instant::now() < deadline,
                "still {:?}",
                state(&mut raw)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The protocol step by step: MEMBER_ID_REQUIRED (v4+), join, sync, heartbeats, commits
    /// fenced by generation, and a member dropped when its session expires.
    #[test]
    fn join_sync_heartbeat_commit_and_session_expiry() {
        let broker = Broker::start(&[
            "group.initial.rebalance.delay.ms=0",
            "group.min.session.timeout.ms=500",
        ]);
        create_topic_blocking(&broker, "t", 1);
        let mut raw = Raw::connect(broker.port);
        let _: FindCoordinatorResponse = call(
            &mut raw,
            ApiKey::FindCoordinator,
            3,
            &FindCoordinatorRequest::default().with_key(StrBytes::from_static_str("raw-group")),
        );

        let first = join(&mut raw, 9, "");
        assert_eq!(first.error_code, 79, "MEMBER_ID_REQUIRED");
        let member = first.member_id.to_string();
        assert!(!member.is_empty());
        let joined = join(&mut raw, 9, &member);
        assert_eq!(joined.error_code, 0);
        assert_eq!(joined.leader.to_string(), member, "the only member leads");
        assert_eq!(joined.members.len(), 1, "the leader gets the subscriptions");
        assert_eq!(
            joined.members[0].metadata,
            Bytes::from_static(b"subscription")
        );
        assert_eq!(joined.protocol_name.as_deref(), Some("range"));
        let generation = joined.generation_id;
        assert_eq!(
            join(&mut raw, 9, "someone-else").error_code,
            25,
            "UNKNOWN_MEMBER_ID"
        );

        let synced: SyncGroupResponse = call(
            &mut raw,
            ApiKey::SyncGroup,
            5,
            &SyncGroupRequest::default()
                .with_group_id(GroupId(StrBytes::from_static_str("raw-group")))
                .with_generation_id(generation)
                .with_member_id(StrBytes::from_string(member.clone()))
                .with_assignments(vec![SyncGroupRequestAssignment::default()
                    .with_member_id(StrBytes::from_string(member.clone()))
                    .with_assignment(Bytes::from_static(b"partition 0"))]),
        );
        assert_eq!(synced.error_code, 0);
        assert_eq!(synced.assignment, Bytes::from_static(b"partition 0"));
        assert_eq!(state(&mut raw), ("Stable".into(), 1));
        assert_eq!(heartbeat(&mut raw, generation, &member), 0);
        assert_eq!(
            heartbeat(&mut raw, generation + 1, &member),
            22,
            "ILLEGAL_GENERATION"
        );
        assert_eq!(commit(&mut raw, generation, &member), 0, "a member commits");
        assert_eq!(
            commit(&mut raw, generation - 1, &member),
            22,
            "a stale generation is fenced"
        );
        assert_eq!(
            commit(&mut raw, -1, ""),
            25,
            "no anonymous commits while it has members"
        );

        // No heartbeats for longer than the session: the member is gone.
        std::thread::sleep(Duration::from_millis(2000));
        assert_eq!(state(&mut raw), ("Empty".into(), 0));
        assert_eq!(
            heartbeat(&mut raw, generation, &member),
            25,
            "UNKNOWN_MEMBER_ID"
        );
        assert_eq!(
            commit(&mut raw, -1, ""),
            0,
            "an empty group takes simple commits again"
        );
    }
}

fn cooperative_member(broker: &Broker) -> BaseConsumer {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap())
        .set("group.id", "cooperative")
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "300")
        .set("auto.offset.reset", "earliest")
        .set("partition.assignment.strategy", "cooperative-sticky")
        .create()
        .expect("consumer");
    c.subscribe(&["cooperative"]).expect("subscribe");
    c
}

/// Incremental rebalancing (cooperative-sticky, the broker passing the protocol through): when a
/// member leaves, only its partitions move; the survivors never give one of theirs up.
#[test]
fn cooperative_sticky_survivors_keep_their_partitions() {
    let broker = Broker::start(&["group.initial.rebalance.delay.ms=0"]);
    create_topic_blocking(&broker, "cooperative", 8);
    let mut members: Vec<BaseConsumer> = (0..4).map(|_| cooperative_member(&broker)).collect();
    let mut got = Vec::new();
    poll_until(&members, &mut got, |cs, _| {
        let all: Vec<i32> = cs.iter().flat_map(assigned).collect();
        all.len() == 8 && cs.iter().all(|c| assigned(c).len() == 2)
    });
    let before: Vec<BTreeSet<i32>> = members.iter().map(assigned).collect();
    let leaving = before[0].clone();
    let gone = members.remove(0);
    gone.unsubscribe();
    drop(gone);
    let survivors_before = before[1..].to_vec();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        for c in &members {
            let _ = c.poll(Duration::from_millis(10));
        }
        let now: Vec<BTreeSet<i32>> = members.iter().map(assigned).collect();
        for (i, (was, is)) in survivors_before.iter().zip(&now).enumerate() {
            assert!(
                was.is_subset(is),
                "survivor {i} gave up a partition: had {was:?}, has {is:?}"
            );
        }
        let all: BTreeSet<i32> = now.iter().flatten().copied().collect();
        if all.len() == 8 && now.iter().map(BTreeSet::len).sum::<usize>() == 8 {
            let moved: BTreeSet<i32> = now
                .iter()
                .zip(&survivors_before)
                .flat_map(|(is, was)| is.difference(was).copied().collect::<Vec<_>>())
                .collect();
            assert_eq!(moved, leaving, "exactly the leaver's partitions moved");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the group did not settle: {now:?}"
        );
    }
}

/// At-least-once: a consumer that commits after processing and dies mid-batch is replaced by
/// one that resumes from the last commit — nothing skipped.
#[test]
fn a_replacement_consumer_resumes_from_the_last_commit() {
    use rdkafka::consumer::CommitMode;
    let broker = Broker::start(&["group.initial.rebalance.delay.ms=0"]);
    create_topic_blocking(&broker, "grouped", 6);
    produce(&broker, 0, 60);
    let make = || -> BaseConsumer {
        let c: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", broker.bootstrap())
            .set("group.id", "at-least-once")
            .set("session.timeout.ms", "6000")
            .set("heartbeat.interval.ms", "300")
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "false")
            .create()
            .expect("consumer");
        c.subscribe(&["grouped"]).expect("subscribe");
        c
    };
    let first = make();
    let mut processed: BTreeSet<String> = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    // Process 30 records, committing after each; then read 5 more without committing and "die".
    while processed.len() < 30 {
        assert!(Instant::now() < deadline, "timed out");
        if let Some(m) = first.poll(Duration::from_millis(100)) {
            let m = m.expect("message");
            processed.insert(String::from_utf8_lossy(m.payload().unwrap_or_default()).into());
            first.commit_message(&m, CommitMode::Sync).expect("commit");
        }
    }
    let mut uncommitted = 0;
    while uncommitted < 5 {
        assert!(Instant::now() < deadline, "timed out");
        if first.poll(Duration::from_millis(100)).is_some() {
            uncommitted += 1;
        }
    }
    drop(first);
    let second = make();
    let mut seen_again: BTreeSet<String> = BTreeSet::new();
    while processed.len() < 60 {
        assert!(
            Instant::now() < deadline,
            "timed out with {} records",
            processed.len()
        );
        if let Some(m) = second.poll(Duration::from_millis(100)) {
            let value: String =
                String::from_utf8_lossy(m.expect("message").payload().unwrap_or_default()).into();
            if !processed.insert(value.clone()) {
                seen_again.insert(value);
            }
        }
    }
    assert!(
        seen_again.is_empty(),
        "committed records came again: {seen_again:?}"
    );
    assert_eq!(processed.len(), 60, "nothing skipped");
}

/// A broker crash under a consuming group: the members reconnect, the group (restored from
/// `__consumer_offsets`) carries on, and records produced after the restart are all consumed.
#[test]
fn consumers_carry_on_across_a_broker_crash() {
    let mut broker = Broker::start(&["group.initial.rebalance.delay.ms=0"]);
    create_topic_blocking(&broker, "grouped", 6);
    let consumers: Vec<BaseConsumer> = (0..2).map(|_| member(&broker, "survivors")).collect();
    let mut got = Vec::new();
    poll_until(&consumers, &mut got, |cs, _| {
        let all: Vec<i32> = cs.iter().flat_map(assigned).collect();
        all.len() == 6 && cs.iter().all(|c| !assigned(c).is_empty())
    });
    produce(&broker, 0, 60);
    poll_until(&consumers, &mut got, |_, got| got.len() >= 60);
    std::thread::sleep(Duration::from_millis(500)); // auto-commit
    poll_until(&consumers, &mut got, |_, _| true);

    broker.kill9();
    broker.restart();
    produce(&broker, 60, 60);
    let mut after = Vec::new();
    poll_until(&consumers, &mut after, |_, got| {
        let values: BTreeSet<&String> = got.iter().map(|(_, v)| v).collect();
        (60..120).all(|i| values.contains(&format!("record-{i}")))
    });
    let replayed = after
        .iter()
        .filter(|(_, v)| {
            v.trim_start_matches("record-")
                .parse::<usize>()
                .is_ok_and(|i| i < 60)
        })
        .count();
    assert!(
        replayed <= 60,
        "at most the uncommitted tail is read again ({replayed})"
    );
}

mod kip848 {
    use kafka_protocol::messages::consumer_group_heartbeat_request::TopicPartitions;
    use kafka_protocol::messages::{
        ApiKey, ConsumerGroupHeartbeatRequest, ConsumerGroupHeartbeatResponse, GroupId, TopicName,
    };
    use kafka_protocol::protocol::StrBytes;

    use crate::common::{call, create_topic_blocking, Broker, Raw};

    fn beat(
        raw: &mut Raw,
        member: &str,
        epoch: i32,
        subscribe: bool,
        owned: Option<Vec<TopicPartitions>>,
    ) -> ConsumerGroupHeartbeatResponse {
        let request = ConsumerGroupHeartbeatRequest::default()
            .with_group_id(GroupId(StrBytes::from_static_str("new-protocol")))
            .with_member_id(StrBytes::from_string(member.into()))
            .with_member_epoch(epoch)
            .with_rebalance_timeout_ms(30_000)
            .with_subscribed_topic_names(
                subscribe.then(|| vec![TopicName(StrBytes::from_static_str("k"))]),
            )
            .with_topic_partitions(owned);
        call(raw, ApiKey::ConsumerGroupHeartbeat, 1, &request)
    }

    fn partitions(r: &ConsumerGroupHeartbeatResponse) -> Vec<i32> {
        let mut p: Vec<i32> = r
            .assignment
            .as_ref()
            .map(|a| {
                a.topic_partitions
                    .iter()
                    .flat_map(|t| t.partitions.clone())
                    .collect()
            })
            .unwrap_or_default();
        p.sort();
        p
    }

    fn beat_with(
        raw: &mut Raw,
        member: &str,
        epoch: i32,
        assignor: Option<&str>,
        rebalance_timeout_ms: i32,
    ) -> ConsumerGroupHeartbeatResponse {
        let request = ConsumerGroupHeartbeatRequest::default()
            .with_group_id(GroupId(StrBytes::from_static_str("ranged")))
            .with_member_id(StrBytes::from_string(member.into()))
            .with_member_epoch(epoch)
            .with_rebalance_timeout_ms(rebalance_timeout_ms)
            .with_server_assignor(assignor.map(|a| StrBytes::from_string(a.into())))
            .with_subscribed_topic_names(
                (epoch == 0).then(|| vec![TopicName(StrBytes::from_static_str("k"))]),
            );
        call(raw, ApiKey::ConsumerGroupHeartbeat, 1, &request)
    }

    /// The `range` assignor on request, an unknown assignor refused, and a member that never
    /// gives up its partitions dropped after its rebalance timeout so that they move on.
    #[test]
    fn range_assignor_unknown_assignors_and_the_rebalance_timeout() {
        let broker = Broker::start(&[]);
        create_topic_blocking(&broker, "k", 4);
        let mut raw = Raw::connect(broker.port);
        assert_eq!(
            beat_with(&mut raw, "x", 0, Some("mystery"), 500).error_code,
            112,
            "UNSUPPORTED_ASSIGNOR"
        );
        let a = beat_with(&mut raw, "a", 0, Some("range"), 500);
        assert_eq!(partitions(&a), vec![0, 1, 2, 3]);
        let b = beat_with(&mut raw, "b", 0, Some("range"), 500);
        assert_eq!(b.error_code, 0);
        // a is told to give up 2 and 3 (range: a keeps 0-1, b gets 2-3) but never reports back.
        let a2 = beat_with(&mut raw, "a", a.member_epoch, None, 500);
        assert_eq!(partitions(&a2), vec![0, 1]);
        std::thread::sleep(std::time::Duration::from_millis(1600));
        // a was dropped at its rebalance timeout; b now gets everything.
        assert_eq!(
            beat_with(&mut raw, "a", a.member_epoch, None, 500).error_code,
            25
        );
        let b2 = beat_with(&mut raw, "b", b.member_epoch, None, 500);
        let b3 = if b2.assignment.is_some() {
            b2
        } else {
            beat_with(&mut raw, "b", b2.member_epoch, None, 500)
        };
        assert_eq!(partitions(&b3), vec![0, 1, 2, 3]);
    }

    /// The KIP-848 reconciliation step by step: a join gets everything; a second member gets
    /// nothing until the first has revoked; stale epochs are fenced; leaving hands all back.
    #[test]
    fn members_are_reconciled_one_heartbeat_at_a_time() {
        let broker = Broker::start(&[]);
        create_topic_blocking(&broker, "k", 4);
        let mut raw = Raw::connect(broker.port);

        let a1 = beat(&mut raw, "member-a", 0, true, None);
        assert_eq!(a1.error_code, 0);
        assert_eq!(
            partitions(&a1),
            vec![0, 1, 2, 3],
            "the only member gets everything"
        );
        let topic_id = a1.assignment.as_ref().expect("assignment").topic_partitions[0].topic_id;
        let epoch_a = a1.member_epoch;
        assert!(epoch_a > 0);

        let b1 = beat(&mut raw, "member-b", 0, true, None);
        assert_eq!(b1.error_code, 0);
        assert_eq!(partitions(&b1), Vec::<i32>::new(), "nothing is free yet");

        // a is asked to give two partitions up, and keeps its epoch until it does.
        let owned_all = vec![TopicPartitions::default()
            .with_topic_id(topic_id)
            .with_partitions(vec![0, 1, 2, 3])];
        let a2 = beat(&mut raw, "member-a", epoch_a, false, Some(owned_all));
        assert_eq!(a2.member_epoch, epoch_a);
        let kept = partitions(&a2);
        assert_eq!(kept.len(), 2, "{kept:?}");
        assert_eq!(
            beat(&mut raw, "member-a", epoch_a + 10, false, None).error_code,
            110,
            "FENCED_MEMBER_EPOCH"
        );
        assert_eq!(
            beat(&mut raw, "nobody", 5, false, None).error_code,
            25,
            "UNKNOWN_MEMBER_ID"
        );

        // a reports the revocation: it moves to the new epoch, and b gets the freed partitions.
        let owned_kept = vec![TopicPartitions::default()
            .with_topic_id(topic_id)
            .with_partitions(kept.clone())];
        let a3 = beat(&mut raw, "member-a", epoch_a, false, Some(owned_kept));
        assert!(a3.member_epoch > epoch_a);
        let b2 = beat(&mut raw, "member-b", b1.member_epoch, false, None);
        let mut all = kept.clone();
        all.extend(partitions(&b2));
        all.sort();
        assert_eq!(all, vec![0, 1, 2, 3], "every partition held once");

        // a leaves: b is given everything.
        assert_eq!(beat(&mut raw, "member-a", -1, false, None).error_code, 0);
        let b3 = beat(&mut raw, "member-b", b2.member_epoch, false, None);
        assert_eq!(partitions(&b3), vec![0, 1, 2, 3]);
    }

    /// A regular-expression subscription (what the Java client's `subscribe(SubscriptionPattern)`
    /// sends): the member gets the partitions of every topic whose whole name matches, a topic
    /// created later that matches is added at the next heartbeat, internal topics never match,
    /// and an invalid regex gets INVALID_REGULAR_EXPRESSION.
    #[test]
    fn regex_subscriptions_follow_the_topics_that_match() {
        let broker = Broker::start(&[]);
        create_topic_blocking(&broker, "rx-a", 2);
        create_topic_blocking(&broker, "rx-b", 2);
        create_topic_blocking(&broker, "other-rx-c", 2);
        let mut raw = Raw::connect(broker.port);
        let by_regex = |raw: &mut Raw, epoch: i32, regex: &str| {
            let request = ConsumerGroupHeartbeatRequest::default()
                .with_group_id(GroupId(StrBytes::from_static_str("by-regex")))
                .with_member_id(StrBytes::from_static_str("member-r"))
                .with_member_epoch(epoch)
                .with_rebalance_timeout_ms(30_000)
                .with_subscribed_topic_regex(
                    (epoch == 0).then(|| StrBytes::from_string(regex.into())),
                );
            call::<_, ConsumerGroupHeartbeatResponse>(
                raw,
                ApiKey::ConsumerGroupHeartbeat,
                1,
                &request,
            )
        };
        let bad = by_regex(&mut raw, 0, "rx-(");
        assert_eq!(bad.error_code, 128, "INVALID_REGULAR_EXPRESSION");
        let joined = by_regex(&mut raw, 0, "rx-.*");
        assert_eq!(joined.error_code, 0, "{:?}", joined.error_message);
        let count = |r: &ConsumerGroupHeartbeatResponse| {
            r.assignment.as_ref().map(|a| {
                a.topic_partitions
                    .iter()
                    .map(|t| t.partitions.len())
                    .sum::<usize>()
            })
        };
        assert_eq!(
            count(&joined),
            Some(4),
            "rx-a and rx-b, not other-rx-c (whole names)"
        );
        create_topic_blocking(&broker, "rx-late", 3);
        let later = by_regex(&mut raw, joined.member_epoch, "");
        assert_eq!(later.error_code, 0);
        assert!(
            later.member_epoch > joined.member_epoch,
            "the group epoch moved"
        );
        assert_eq!(count(&later), Some(7), "rx-late joined the subscription");
        // `.*` matches every topic but the internal ones (__consumer_offsets exists here).
        let all = by_regex(&mut raw, 0, ".*");
        assert_eq!(all.error_code, 0);
        let mut epoch = all.member_epoch;
        let mut held = count(&all);
        for _ in 0..5 {
            let next = by_regex(&mut raw, epoch, "");
            epoch = next.member_epoch;
            held = count(&next).or(held);
        }
        assert_eq!(
            held,
            Some(9),
            "every partition of the 4 user topics, none internal"
        );
    }

    /// A KIP-848 group survives `kill -9`: stored in `__consumer_offsets` in Kafka's record
    /// formats, it is rebuilt at start, and its members carry on at their epochs with their
    /// partitions (no rejoin, no rebalance); a member that was mid-revocation still owes it.
    #[test]
    fn a_consumer_group_survives_a_restart() {
        let mut broker = Broker::start(&[]);
        create_topic_blocking(&broker, "k", 4);
        let mut raw = Raw::connect(broker.port);
        let a1 = beat(&mut raw, "member-a", 0, true, None);
        let topic_id = a1.assignment.as_ref().expect("assignment").topic_partitions[0].topic_id;
        let b1 = beat(&mut raw, "member-b", 0, true, None);
        let owned_all = vec![TopicPartitions::default()
            .with_topic_id(topic_id)
            .with_partitions(vec![0, 1, 2, 3])];
        let a2 = beat(
            &mut raw,
            "member-a",
            a1.member_epoch,
            false,
            Some(owned_all),
        );
        let kept = partitions(&a2);
        assert_eq!(kept.len(), 2);

        // Restart while a still owes two partitions: it must still give them up afterwards.
        broker.kill9();
        broker.restart();
        let mut raw = Raw::connect(broker.port);
        let a3 = beat(&mut raw, "member-a", a1.member_epoch, false, None);
        assert_eq!(a3.error_code, 0, "{:?}", a3.error_message);
        assert_eq!(
            a3.member_epoch, a1.member_epoch,
            "still revoking: same epoch"
        );
        assert_eq!(
            partitions(&a3),
            kept,
            "the assignment is sent again after a restart"
        );
        let owned_kept = vec![TopicPartitions::default()
            .with_topic_id(topic_id)
            .with_partitions(kept.clone())];
        let a4 = beat(
            &mut raw,
            "member-a",
            a1.member_epoch,
            false,
            Some(owned_kept),
        );
        assert!(a4.member_epoch > a1.member_epoch, "revoked: a moves on");
        let b2 = beat(&mut raw, "member-b", b1.member_epoch, false, None);
        assert_eq!(b2.error_code, 0, "{:?}", b2.error_message);
        let mut all = kept.clone();
        all.extend(partitions(&b2));
        all.sort();
        assert_eq!(all, vec![0, 1, 2, 3], "every partition held once");

        // And a stable group comes back stable.
        broker.kill9();
        broker.restart();
        let mut raw = Raw::connect(broker.port);
        let a5 = beat(&mut raw, "member-a", a4.member_epoch, false, None);
        let b3 = beat(&mut raw, "member-b", b2.member_epoch, false, None);
        assert_eq!((a5.error_code, b3.error_code), (0, 0));
        assert_eq!(
            (a5.member_epoch, b3.member_epoch),
            (a4.member_epoch, b2.member_epoch)
        );
        assert_eq!(partitions(&a5), kept);
        assert_eq!(partitions(&b3), partitions(&b2));
        assert_eq!(
            beat(&mut raw, "member-a", a4.member_epoch + 1, false, None).error_code,
            110,
            "epochs are still fenced after a restart"
        );
    }
}
