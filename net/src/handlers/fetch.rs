//! Fetch (key 1): read from each partition's owning core, long-polling until `min_bytes` have
//! accumulated or `max_wait_ms` has passed. Waiting is driven by high-watermark notifications
//! on the owning cores (no polling loop): each round reads, and if short of `min_bytes` asks
//! every involved core to report when any of its partitions gets new data.
//!
//! `max_bytes` is split over the involved cores in proportion to their partitions, and each
//! core honours `partition_max_bytes`; the first non-empty partition of each core's share returns
//! at least one whole batch even if larger (KIP-74), so an oversized batch never stalls a client.
//!
//! Fetch sessions (KIP-227): sluice answers every request sessionless (session id 0), which the
//! protocol allows and clients handle by sending full fetch requests.

use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::{BufMut, BytesMut};
use futures::future::{join_all, select_all};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::{ApiKey, FetchRequest, FetchResponse};
use sluice_core::TopicPartition;
use uuid::Uuid;

use super::{Api, Outcome};
use crate::connection::{encode_response, RequestContext};
use crate::router::{CoreRequest, CoreResponse, ReadOutcome, ReadPartition};
use crate::shard::Shard;
use sluice_storage::log::Isolation;

pub const API: Api = Api {
    key: ApiKey::Fetch,
    min_version: 4,
    max_version: 16,
};

/// Longest a long poll sleeps before it looks again whether the broker is stopping.
const STOP_CHECK: Duration = Duration::from_millis(100);

struct Wanted {
    topic: String,
    topic_id: Uuid,
    partition: i32,
    offset: i64,
    max_bytes: usize,
    /// The leader epoch the fetcher knows (v9+), -1 when unknown.
    leader_epoch: i32,
    core: Option<usize>,
    early_error: i16,
    /// A consumer read from this broker's follower replica (KIP-392).
    from_follower: bool,
    /// The leader sends the consumer to this in-sync replica in its rack (KIP-392), -1: none.
    preferred: i32,
}

pub async fn handle(shard: &Rc<Shard>, ctx: &RequestContext, request: FetchRequest) -> Outcome {
    if request.session_id != 0 {
        let response =
            FetchResponse::default().with_error_code(ResponseError::FetchSessionIdNotFound.code());
        return encode_response(ctx, &response);
    }
    if request.session_epoch > 0 {
        let response = FetchResponse::default()
            .with_error_code(ResponseError::InvalidFetchSessionEpoch.code());
        return encode_response(ctx, &response);
    }
    // A follower broker copying the leader's log (Kafka's replica fetch) names itself.
    let replica_id = if ctx.api_version >= 15 {
        request.replica_state.replica_id.0
    } else {
        request.replica_id.0
    };
    let follower = (replica_id >= 0 && shard.broker.clustered()).then_some(replica_id);
    // A consumer's rack (v11+, `client.rack`), for the rack-aware replica selector.
    let rack = (ctx.api_version >= 11 && follower.is_none() && !request.rack_id.is_empty())
        .then(|| request.rack_id.to_string());
    let wanted = resolve(shard, ctx, &request, follower.is_none(), rack.as_deref());
    let isolation = if follower.is_some() {
        Isolation::Replica
    } else if request.isolation_level == 1 {
        Isolation::ReadCommitted
    } else {
        Isolation::ReadUncommitted
    };
    let max_wait = Duration::from_millis(request.max_wait_ms.max(0) as u64);
    let min_bytes = request.min_bytes.max(0) as usize;
    let max_bytes = if request.max_bytes <= 0 {
        usize::MAX
    } else {
        request.max_bytes as usize
    };
    let started = Instant::now();
    let mut outcomes;
    loop {
        outcomes = read_round(shard, &wanted, max_bytes, isolation, follower).await;
        let bytes: usize = outcomes.values().map(|o| o.records.len()).sum();
        let any_error = outcomes.values().any(|o| o.error != 0);
        let elapsed = started.elapsed();
        let done = bytes >= min_bytes || any_error || elapsed >= max_wait || wanted.is_empty();
        // A stopping broker answers long polls at once rather than at their deadline.
        if done || shard.stopping.get() {
            break;
        }
        // Waits are capped so that a stop is noticed within STOP_CHECK.
        let remaining = (max_wait - elapsed).min(STOP_CHECK);
        wait_for_data(shard, &wanted, remaining, isolation).await;
    }
    let topics = build_response(ctx, wanted, outcomes);
    encode(ctx, 0, &topics)
}

/// Where each partition of the request is read: on this broker's core that leads it, on the
/// core holding its follower replica (a consumer's fetch, KIP-392), or nowhere (the error to
/// answer, or the in-sync replica in the consumer's rack the leader sends it to).
fn resolve(
    shard: &Shard,
    ctx: &RequestContext,
    request: &FetchRequest,
    consumer: bool,
    rack: Option<&str>,
) -> Vec<Wanted> {
    let by_id = ctx.api_version >= 13;
    let topics = shard.topics.borrow();
    let table = shard.table.borrow();
    let node = shard.broker.node_id;
    let mut wanted = Vec::new();
    for topic in &request.topics {
        let name = if by_id {
            topics
                .values()
                .find(|m| m.id == *topic.topic_id.as_bytes())
                .map(|m| m.name.clone())
        } else {
            Some(topic.topic.0.to_string())
        };
        for p in &topic.partitions {
            let mut from_follower = false;
            let mut preferred = -1;
            // Looked up only where it decides something (not on a leader's plain fetch).
            let state = || {
                let meta = topics.get(name.as_ref()?)?;
                meta.states.get(usize::try_from(p.partition).ok()?)
            };
            let (core, early_error) = match &name {
                None => (None, ResponseError::UnknownTopicId.code()),
                Some(n) => match table.core_of(n, p.partition) {
                    // A follower replica here serves consumers up to its high watermark.
                    None if consumer
                        && state()
                            .is_some_and(|s| s.leader != node && s.replicas.contains(&node)) =>
                    {
                        from_follower = true;
                        let core = sluice_core::placement::core_for_partition(
                            n,
                            p.partition,
                            shard.cores(),
                        );
                        (Some(core), 0)
                    }
                    None if table.exists(n, p.partition) => {
                        (None, ResponseError::NotLeaderOrFollower.code())
                    }
                    None => (None, ResponseError::UnknownTopicOrPartition.code()),
                    Some(core) => {
                        if let Some(rack) =
                            rack.filter(|_| shard.broker.rack_aware_replica_selector)
                        {
                            if let Some(state) = state() {
                                preferred = preferred_replica(shard, state, rack);
                            }
                        }
                        if preferred >= 0 {
                            (None, 0)
                        } else {
                            (Some(core), 0)
                        }
                    }
                },
            };
            wanted.push(Wanted {
                topic: name.clone().unwrap_or_else(|| topic.topic.0.to_string()),
                topic_id: topic.topic_id,
                partition: p.partition,
                offset: p.fetch_offset,
                max_bytes: p.partition_max_bytes.max(0) as usize,
                leader_epoch: p.current_leader_epoch,
                core,
                early_error,
                from_follower,
                preferred,
            });
        }
    }
    wanted
}

/// Kafka's RackAwareReplicaSelector: for a consumer in `rack`, the leader itself if it is in
/// that rack (-1), else the first replica in that rack that is in sync and alive, else the
/// leader (-1).
fn preferred_replica(shard: &Shard, state: &sluice_replication::PartitionState, rack: &str) -> i32 {
    let cluster = shard.cluster.borrow();
    let in_rack = |id: i32| {
        cluster
            .broker(id)
            .is_some_and(|b| !b.fenced && b.rack.as_deref() == Some(rack))
    };
    if in_rack(state.leader) {
        return -1;
    }
    state
        .replicas
        .iter()
        .copied()
        .find(|r| *r != state.leader && state.isr.contains(r) && in_rack(*r))
        .unwrap_or(-1)
}

async fn read_round(
    shard: &Rc<Shard>,
    wanted: &[Wanted],
    max_bytes: usize,
    isolation: Isolation,
    follower: Option<i32>,
) -> BTreeMap<TopicPartition, ReadOutcome> {
    let mut by_core: BTreeMap<usize, Vec<ReadPartition>> = BTreeMap::new();
    for w in wanted {
        if let Some(core) = w.core {
            by_core.entry(core).or_default().push(ReadPartition {
                tp: TopicPartition::new(w.topic.clone(), w.partition),
                offset: w.offset,
                max_bytes: w.max_bytes,
                isolation,
                replica: follower.map(|id| (id, w.leader_epoch)),
                // -1 before v9 (the field's default) and from clients that do not know it.
                leader_epoch: w.leader_epoch,
                from_follower: w.from_follower,
            });
        }
    }
    let routed: usize = by_core.values().map(Vec::len).sum::<usize>().max(1);
    let calls: Vec<_> = by_core
        .into_iter()
        .map(|(core, partitions)| {
            let share = (max_bytes / routed).saturating_mul(partitions.len()).max(1);
            let budget = if max_bytes == usize::MAX {
                usize::MAX
            } else {
                share
            };
            shard.dispatch(
                core,
                CoreRequest::Read {
                    budget_bytes: budget,
                    partitions,
                },
            )
        })
        .collect();
    let mut outcomes = BTreeMap::new();
    for answer in join_all(calls).await {
        if let Some(CoreResponse::Read(list)) = answer {
            for o in list {
                outcomes.insert(o.tp.clone(), o);
            }
        }
    }
    outcomes
}

async fn wait_for_data(
    shard: &Rc<Shard>,
    wanted: &[Wanted],
    remaining: Duration,
    isolation: Isolation,
) {
    let mut by_core: BTreeMap<usize, Vec<(TopicPartition, i64)>> = BTreeMap::new();
    for w in wanted {
        if let Some(core) = w.core {
            by_core
                .entry(core)
                .or_default()
                .push((TopicPartition::new(w.topic.clone(), w.partition), w.offset));
        }
    }
    if by_core.is_empty() {
        glommio::timer::sleep(remaining).await;
        return;
    }
    // Rounded up: a wait of less than a millisecond truncated to 0 would return at once and
    // turn the last millisecond of every long poll into a busy loop.
    let timeout_ms = (remaining.as_micros() as u64).div_ceil(1000);
    let waits: Vec<_> = by_core
        .into_iter()
        .map(|(core, partitions)| {
            shard.dispatch(
                core,
                CoreRequest::WaitForData {
                    partitions,
                    timeout_ms,
                    read_committed: isolation == Isolation::ReadCommitted,
                    replica: isolation == Isolation::Replica,
                },
            )
        })
        .collect();
    // Bounded here too: a peer that is shutting down may never answer.
    let _ = crate::shard::with_timeout(select_all(waits), remaining).await;
}

/// What the answer holds for one partition.
pub struct PartitionAnswer {
    pub partition: i32,
    pub error: i16,
    pub high_watermark: i64,
    pub last_stable_offset: i64,
    pub log_start_offset: i64,
    pub records: sluice_storage::Records,
    /// read_committed: (producer id, first offset) of aborted transactions; None: null.
    pub aborted: Option<Vec<(i64, i64)>>,
    /// The replica the consumer should fetch from instead (KIP-392, v11+), -1: none.
    pub preferred_read_replica: i32,
}

/// One topic of the answer, in request order.
pub struct TopicAnswer {
    pub name: String,
    pub topic_id: Uuid,
    pub partitions: Vec<PartitionAnswer>,
}

fn build_response(
    ctx: &RequestContext,
    wanted: Vec<Wanted>,
    mut outcomes: BTreeMap<TopicPartition, ReadOutcome>,
) -> Vec<TopicAnswer> {
    let mut topics: Vec<TopicAnswer> = Vec::new();
    for w in wanted {
        let tp = TopicPartition::new(w.topic.clone(), w.partition);
        let answer = match outcomes.remove(&tp) {
            Some(o) if w.early_error == 0 => PartitionAnswer {
                partition: w.partition,
                error: o.error,
                high_watermark: o.high_watermark,
                last_stable_offset: o.last_stable_offset,
                log_start_offset: o.log_start_offset,
                records: o.records,
                aborted: o.aborted,
                preferred_read_replica: -1,
            },
            // Sent to a replica in the consumer's rack: no records from here.
            _ if w.preferred >= 0 => PartitionAnswer {
                partition: w.partition,
                error: 0,
                high_watermark: -1,
                last_stable_offset: -1,
                log_start_offset: -1,
                records: sluice_storage::Records::default(),
                aborted: None,
                preferred_read_replica: w.preferred,
            },
            _ => PartitionAnswer {
                partition: w.partition,
                error: if w.early_error != 0 {
                    w.early_error
                } else {
                    ResponseError::NotLeaderOrFollower.code()
                },
                high_watermark: -1,
                last_stable_offset: -1,
                log_start_offset: -1,
                records: sluice_storage::Records::default(),
                aborted: None,
                preferred_read_replica: -1,
            },
        };
        let same_topic = topics.last().is_some_and(|t| {
            if ctx.api_version >= 13 {
                t.topic_id == w.topic_id
            } else {
                t.name == w.topic
            }
        });
        match topics.last_mut() {
            Some(t) if same_topic => t.partitions.push(answer),
            _ => topics.push(TopicAnswer {
                name: w.topic.clone(),
                topic_id: w.topic_id,
                partitions: vec![answer],
            }),
        }
    }
    topics
}

/// Encodes a FetchResponse (v4–16) by hand so that record bytes are never copied: the frame is
/// a list of pieces — small encoded fields, then each partition's record pieces as they sit in
/// the batch cache — written to the socket back to back. Checked field by field against the
/// `kafka-protocol` decoder for every version in the tests below.
pub fn encode(ctx: &RequestContext, error: i16, topics: &[TopicAnswer]) -> Outcome {
    let v = ctx.api_version;
    let flexible = v >= 12;
    let mut parts: Vec<bytes::Bytes> = Vec::new();
    let mut buf = BytesMut::with_capacity(256);
    buf.put_i32(0); // frame size, patched below
    buf.put_i32(ctx.correlation_id);
    if flexible {
        buf.put_u8(0); // response header tagged fields
    }
    buf.put_i32(0); // throttle_time_ms
    if v >= 7 {
        buf.put_i16(error);
        buf.put_i32(0); // session_id: sessionless
    }
    put_array_len(&mut buf, flexible, topics.len());
    for topic in topics {
        if v >= 13 {
            buf.put_slice(topic.topic_id.as_bytes());
        } else {
            put_string(&mut buf, flexible, &topic.name);
        }
        put_array_len(&mut buf, flexible, topic.partitions.len());
        for p in &topic.partitions {
            buf.put_i32(p.partition);
            buf.put_i16(p.error);
            buf.put_i64(p.high_watermark);
            buf.put_i64(p.last_stable_offset);
            if v >= 5 {
                buf.put_i64(p.log_start_offset);
            }
            match &p.aborted {
                None if flexible => put_unsigned_varint(&mut buf, 0),
                None => buf.put_i32(-1),
                Some(aborted) => {
                    put_array_len(&mut buf, flexible, aborted.len());
                    for (producer_id, first_offset) in aborted {
                        buf.put_i64(*producer_id);
                        buf.put_i64(*first_offset);
                        if flexible {
                            buf.put_u8(0); // aborted transaction tagged fields
                        }
                    }
                }
            }
            if v >= 11 {
                buf.put_i32(p.preferred_read_replica);
            }
            let len = p.records.len();
            if flexible {
                put_unsigned_varint(&mut buf, len as u64 + 1);
            } else {
                buf.put_i32(len as i32);
            }
            if len > 0 {
                parts.push(buf.split().freeze());
                parts.extend(p.records.parts.iter().filter(|b| !b.is_empty()).cloned());
            }
            if flexible {
                buf.put_u8(0); // partition tagged fields
            }
        }
        if flexible {
            buf.put_u8(0); // topic tagged fields
        }
    }
    if flexible {
        buf.put_u8(0); // top-level tagged fields
    }
    parts.push(buf.freeze());
    let total: usize = parts.iter().map(bytes::Bytes::len).sum();
    let size = (total - 4) as i32;
    let mut first = BytesMut::from(&parts[0][..]);
    first[..4].copy_from_slice(&size.to_be_bytes());
    parts[0] = first.freeze();
    Outcome::RespondParts(parts)
}

fn put_array_len(buf: &mut BytesMut, flexible: bool, len: usize) {
    if flexible {
        put_unsigned_varint(buf, len as u64 + 1);
    } else {
        buf.put_i32(len as i32);
    }
}

fn put_string(buf: &mut BytesMut, flexible: bool, s: &str) {
    if flexible {
        put_unsigned_varint(buf, s.len() as u64 + 1);
    } else {
        buf.put_i16(s.len() as i16);
    }
    buf.put_slice(s.as_bytes());
}

fn put_unsigned_varint(buf: &mut BytesMut, mut v: u64) {
    while v >= 0x80 {
        buf.put_u8((v as u8) | 0x80);
        v >>= 7;
    }
    buf.put_u8(v as u8);
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::{ApiKey, ResponseHeader};
    use kafka_protocol::protocol::Decodable;

    fn ctx(version: i16) -> RequestContext {
        RequestContext {
            api_key: ApiKey::Fetch,
            api_version: version,
            correlation_id: 99,
            client_id: None,
        }
    }

    #[test]
    fn hand_encoding_decodes_with_kafka_protocol_at_every_version() {
        let batch = sluice_storage::batch::build_batch(5, 1, &[b"abc", b"defg"]).freeze();
        let records = sluice_storage::Records {
            parts: vec![batch.slice(..61), batch.slice(61..70), batch.slice(70..)],
        };
        let id = Uuid::from_bytes([3; 16]);
        for v in API.min_version..=API.max_version {
            let topics = vec![
                TopicAnswer {
                    name: "orders".into(),
                    topic_id: id,
                    partitions: vec![
                        PartitionAnswer {
                            partition: 2,
                            error: 0,
                            high_watermark: 7,
                            last_stable_offset: 6,
                            log_start_offset: 1,
                            records: records.clone(),
                            aborted: Some(vec![(42, 5), (43, 6)]),
                            preferred_read_replica: -1,
                        },
                        PartitionAnswer {
                            partition: 3,
                            error: 1,
                            high_watermark: -1,
                            last_stable_offset: -1,
                            log_start_offset: -1,
                            records: sluice_storage::Records::default(),
                            aborted: None,
                            preferred_read_replica: 3,
                        },
                    ],
                },
                TopicAnswer {
                    name: "empty".into(),
                    topic_id: Uuid::from_bytes([4; 16]),
                    partitions: vec![],
                },
            ];
            let Outcome::RespondParts(parts) = encode(&ctx(v), 0, &topics) else {
                panic!("parts expected");
            };
            let mut frame = BytesMut::new();
            for p in &parts {
                frame.extend_from_slice(p);
            }
            let size = i32::from_be_bytes([frame[0], frame[1], frame[2], frame[3]]);
            assert_eq!(size as usize, frame.len() - 4, "v{v} frame size");
            let mut body = frame.freeze().slice(4..);
            let header =
                ResponseHeader::decode(&mut body, ApiKey::Fetch.response_header_version(v))
                    .expect("header");
            assert_eq!(header.correlation_id, 99);
            let response = FetchResponse::decode(&mut body, v).expect("body decodes");
            assert!(body.is_empty(), "v{v}: nothing left over");
            assert_eq!(response.responses.len(), 2);
            let t = &response.responses[0];
            if v >= 13 {
                assert_eq!(t.topic_id, id);
            } else {
                assert_eq!(t.topic.0.as_str(), "orders");
            }
            let p = &t.partitions[0];
            assert_eq!(
                (p.partition_index, p.error_code, p.high_watermark),
                (2, 0, 7)
            );
            assert_eq!(p.last_stable_offset, 6);
            let aborted: Vec<(i64, i64)> = p
                .aborted_transactions
                .iter()
                .flatten()
                .map(|a| (a.producer_id.0, a.first_offset))
                .collect();
            assert_eq!(aborted, vec![(42, 5), (43, 6)], "v{v} aborted transactions");
            assert!(t.partitions[1].aborted_transactions.is_none(), "v{v} null");
            if v >= 5 {
                assert_eq!(p.log_start_offset, 1);
            }
            assert_eq!(
                p.records.as_deref(),
                Some(&batch[..]),
                "v{v} records intact"
            );
            assert_eq!(t.partitions[1].error_code, 1);
            if v >= 11 {
                assert_eq!(t.partitions[0].preferred_read_replica.0, -1, "v{v}");
                assert_eq!(t.partitions[1].preferred_read_replica.0, 3, "v{v}");
            }
            assert_eq!(t.partitions[1].records.as_deref().map(<[u8]>::len), Some(0));
        }
    }
}
