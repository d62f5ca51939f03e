//! The transaction coordinator: drives [`crate::transactions`] for the transactional ids whose
//! `__transaction_state` partition this core owns (the id's Java hash modulo
//! `transaction.state.log.num.partitions`, as Kafka places them), so that a transaction's state
//! lives on exactly one core and nothing about it is shared.
//!
//! Every change is appended to the id's partition and durable before it takes effect or is
//! answered. While a change is in flight the id is `pending` and other requests for it get
//! CONCURRENT_TRANSACTIONS, as in Kafka. Ending a transaction writes PrepareCommit/Abort, then
//! the COMMIT/ABORT markers — one cross-core `WriteMarkers` message per core owning partitions
//! of the transaction — then CompleteCommit/Abort.
//!
//! Where sluice differs: Kafka answers EndTxn once the Prepare record is written and sends the
//! markers afterwards, so a client's next transaction can meet CONCURRENT_TRANSACTIONS; sluice
//! answers once the markers are written and the transaction is complete (a few fsyncs on one
//! machine), so a committed transaction is readable by read_committed consumers when its
//! producer hears that it committed.

use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::time::Duration;

use futures::future::join_all;
use kafka_protocol::error::ResponseError;
use sluice_core::config::BrokerConfig;
use sluice_core::TopicPartition;
use sluice_storage::txn::Marker;
use sluice_storage::{Durability, PartitionLog, SyncPolicy};

use crate::router::{CoreRequest, CoreResponse};
use crate::shard::{now_ms, Shard};
use crate::transactions::{self, EndNext, InitNext, TxnMetadata, TxnState, TXN_TOPIC};

/// One transactional id on its coordinating core.
#[derive(Debug, Clone)]
pub struct TxnEntry {
    pub meta: TxnMetadata,
    /// A change is being written or markers are being sent.
    pub pending: bool,
}

pub type TxnTable = HashMap<String, TxnEntry>;

/// Work for a transactional id's coordinating core.
#[derive(Debug)]
pub enum TxnCall {
    InitProducerId {
        transactional_id: String,
        timeout_ms: i32,
        expected: Option<(i64, i16)>,
    },
    AddPartitions {
        transactional_id: String,
        producer_id: i64,
        producer_epoch: i16,
        partitions: Vec<(String, i32)>,
    },
    EndTxn {
        transactional_id: String,
        producer_id: i64,
        producer_epoch: i16,
        commit: bool,
        /// EndTxn v5: transaction version 2 (KIP-890).
        version_2: bool,
    },
    /// States of the given ids (None: every id on this core), for DescribeTransactions and
    /// ListTransactions.
    Describe { ids: Option<Vec<String>> },
}

#[derive(Debug)]
pub enum TxnReply {
    /// InitProducerId's and EndTxn's answer: the producer id and epoch to continue with.
    ProducerId(Result<(i64, i16), ResponseError>),
    Done(Result<(), ResponseError>),
    States(Vec<(String, Option<TxnMetadata>)>),
    /// A Describe of one id this core cannot answer for: NOT_COORDINATOR or
    /// COORDINATOR_LOAD_IN_PROGRESS (the client retries).
    Failed(ResponseError),
}

/// Settings of `__transaction_state` when sluice creates it, Kafka's: compacted, in segments of
/// `transaction.state.log.segment.bytes`.
fn txn_topic_configs(broker: &BrokerConfig) -> Vec<(String, Option<String>)> {
    vec![
        ("cleanup.policy".into(), Some("compact".into())),
        (
            "segment.bytes".into(),
            Some(broker.transaction_state_log_segment_bytes.to_string()),
        ),
    ]
}

/// Creates `__transaction_state` (through core 0) unless it exists; false if that failed.
pub async fn ensure_topic(shard: &Rc<Shard>) -> bool {
    let partitions = shard.broker.transaction_state_log_num_partitions;
    let configs = txn_topic_configs(&shard.broker);
    crate::offsets::ensure_internal_topic(
        shard,
        TXN_TOPIC,
        partitions,
        shard.broker.transaction_state_log_replication_factor,
        Some(shard.broker.transaction_state_log_min_isr),
        configs,
    )
    .await
}

fn txn_partition(shard: &Shard, transactional_id: &str) -> Option<TopicPartition> {
    let partitions = shard.topics.borrow().get(TXN_TOPIC)?.partitions;
    Some(TopicPartition::new(
        TXN_TOPIC.to_string(),
        crate::offsets::partition_for(transactional_id, partitions),
    ))
}

/// The core coordinating `transactional_id`, once `__transaction_state` exists.
pub fn coordinator_core(shard: &Shard, transactional_id: &str) -> Option<usize> {
    let tp = txn_partition(shard, transactional_id)?;
    shard.table.borrow().core_of(&tp.topic, tp.partition)
}

/// The answer to `call` when this broker cannot run it: `error` in the call's reply type.
fn refused(call: &TxnCall, error: ResponseError) -> TxnReply {
    match call {
        TxnCall::InitProducerId { .. } | TxnCall::EndTxn { .. } => TxnReply::ProducerId(Err(error)),
        TxnCall::AddPartitions { .. } => TxnReply::Done(Err(error)),
        TxnCall::Describe { .. } => TxnReply::Failed(error),
    }
}

/// Sends `call` to the coordinating core of `transactional_id` (creating `__transaction_state`
/// first if needed). In a cluster, NOT_COORDINATOR when another broker leads the id's
/// partition (the client looks the coordinator up again).
pub async fn call(shard: &Rc<Shard>, transactional_id: &str, call: TxnCall) -> Option<TxnReply> {
    if !ensure_topic(shard).await {
        return None;
    }
    let Some(core) = coordinator_core(shard, transactional_id) else {
        return Some(refused(&call, ResponseError::NotCoordinator));
    };
    match shard.call(core, CoreRequest::Txn(call)).await {
        Some(CoreResponse::Txn(reply)) => Some(reply),
        _ => None,
    }
}

/// Sends `call` to the coordinating core of `transactional_id` if `__transaction_state` exists
/// (None otherwise): for reads that must not create it.
pub async fn call_existing(
    shard: &Rc<Shard>,
    transactional_id: &str,
    call: TxnCall,
) -> Option<TxnReply> {
    txn_partition(shard, transactional_id)?;
    let Some(core) = coordinator_core(shard, transactional_id) else {
        return Some(refused(&call, ResponseError::NotCoordinator));
    };
    match shard.call(core, CoreRequest::Txn(call)).await {
        Some(CoreResponse::Txn(reply)) => Some(reply),
        _ => None,
    }
}

/// AddPartitionsToTxn on the producer's behalf (transaction version 2: its writes and
/// transactional offset commits add their partitions implicitly): retried while the id is busy
/// with another change (CONCURRENT_TRANSACTIONS) or its coordinator is not reachable, for up to
/// ten seconds; then the coordinator's answer.
pub async fn add_with_retries(
    shard: &Rc<Shard>,
    transactional_id: &str,
    producer_id: i64,
    producer_epoch: i16,
    partitions: Vec<(String, i32)>,
) -> Result<(), ResponseError> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut delay = Duration::from_millis(1);
    loop {
        let request = TxnCall::AddPartitions {
            transactional_id: transactional_id.to_string(),
            producer_id,
            producer_epoch,
            partitions: partitions.clone(),
        };
        let answer = match coordinator_broker(shard, transactional_id) {
            Some(broker) if broker != shard.broker.node_id => {
                add_remotely(
                    shard,
                    broker,
                    transactional_id,
                    producer_id,
                    producer_epoch,
                    &partitions,
                )
                .await
            }
            _ => match call(shard, transactional_id, request).await {
                Some(TxnReply::Done(answer)) => answer,
                _ => Err(ResponseError::CoordinatorNotAvailable),
            },
        };
        let retriable = matches!(
            answer,
            Err(ResponseError::ConcurrentTransactions
                | ResponseError::CoordinatorNotAvailable
                | ResponseError::CoordinatorLoadInProgress
                | ResponseError::NotCoordinator)
        );
        if !retriable || std::time::Instant::now() >= deadline || shard.stopping.get() {
            return answer;
        }
        glommio::timer::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_millis(50));
    }
}

/// The broker leading `transactional_id`'s partition of `__transaction_state` (its
/// coordinator), once the topic exists and the partition has a leader.
fn coordinator_broker(shard: &Shard, transactional_id: &str) -> Option<i32> {
    let tp = txn_partition(shard, transactional_id)?;
    shard.topics.borrow().get(&tp.topic)?.leader(tp.partition)
}

/// AddPartitionsToTxn (v3, as the producer would send it) to the coordinator on `broker`: a
/// partition leader adding a transaction version 2 producer's partitions on its behalf.
async fn add_remotely(
    shard: &Shard,
    broker: i32,
    transactional_id: &str,
    producer_id: i64,
    producer_epoch: i16,
    partitions: &[(String, i32)],
) -> Result<(), ResponseError> {
    use kafka_protocol::messages::add_partitions_to_txn_request::AddPartitionsToTxnTopic;
    use kafka_protocol::messages::{
        AddPartitionsToTxnRequest, AddPartitionsToTxnResponse, ApiKey, ProducerId, TransactionalId,
    };
    let mut by_topic: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
    for (topic, p) in partitions {
        by_topic.entry(topic).or_default().push(*p);
    }
    let request = AddPartitionsToTxnRequest::default()
        .with_v3_and_below_transactional_id(TransactionalId(crate::handlers::str_bytes(
            transactional_id,
        )))
        .with_v3_and_below_producer_id(ProducerId(producer_id))
        .with_v3_and_below_producer_epoch(producer_epoch)
        .with_v3_and_below_topics(
            by_topic
                .into_iter()
                .map(|(topic, ps)| {
                    AddPartitionsToTxnTopic::default()
                        .with_name(crate::handlers::topic_name(topic))
                        .with_partitions(ps)
                })
                .collect(),
        );
    let answer: Option<AddPartitionsToTxnResponse> =
        crate::peer::call(shard, broker, ApiKey::AddPartitionsToTxn, 3, &request).await;
    let Some(answer) = answer else {
        return Err(ResponseError::CoordinatorNotAvailable);
    };
    let code = answer
        .results_by_topic_v3_and_below
        .iter()
        .flat_map(|t| &t.results_by_partition)
        .map(|p| p.partition_error_code)
        .find(|code| *code != 0)
        .unwrap_or(answer.error_code);
    match ResponseError::try_from_code(code) {
        None => Ok(()),
        Some(e) => Err(e),
    }
}

/// Runs a call on this (the coordinating) core.
pub async fn run(shard: &Rc<Shard>, call: TxnCall) -> TxnReply {
    match call {
        TxnCall::InitProducerId {
            transactional_id,
            timeout_ms,
            expected,
        } => TxnReply::ProducerId(
            init_producer_id(shard, &transactional_id, timeout_ms, expected).await,
        ),
        TxnCall::AddPartitions {
            transactional_id,
            producer_id,
            producer_epoch,
            partitions,
        } => TxnReply::Done(
            add_partitions(
                shard,
                &transactional_id,
                producer_id,
                producer_epoch,
                &partitions,
            )
            .await,
        ),
        TxnCall::EndTxn {
            transactional_id,
            producer_id,
            producer_epoch,
            commit,
            version_2,
        } => TxnReply::ProducerId(
            end_txn(
                shard,
                &transactional_id,
                producer_id,
                producer_epoch,
                commit,
                version_2,
            )
            .await,
        ),
        TxnCall::Describe { ids } => {
            if let Some([id]) = ids.as_deref() {
                if let Err(e) = txn_log(shard, id) {
                    return TxnReply::Failed(e);
                }
            }
            let table = shard.txns.borrow();
            TxnReply::States(match ids {
                Some(ids) => ids
                    .into_iter()
                    .map(|id| {
                        let meta = table.get(&id).map(|e| e.meta.clone());
                        (id, meta)
                    })
                    .collect(),
                None => table
                    .iter()
                    .map(|(id, e)| (id.clone(), Some(e.meta.clone())))
                    .collect(),
            })
        }
    }
}

/// The log of the id's partition on this core: NOT_COORDINATOR when another core or broker
/// leads it, COORDINATOR_LOAD_IN_PROGRESS while this core loads its transactions after taking
/// the lead.
fn txn_log(shard: &Shard, transactional_id: &str) -> Result<Rc<PartitionLog>, ResponseError> {
    let tp =
        txn_partition(shard, transactional_id).ok_or(ResponseError::CoordinatorNotAvailable)?;
    if !shard.txn_coordinating.borrow().contains(&tp.partition) {
        return Err(if shard.txn_loading.borrow().contains(&tp.partition) {
            ResponseError::CoordinatorLoadInProgress
        } else {
            ResponseError::NotCoordinator
        });
    }
    shard
        .owned_log(&tp)
        .map_err(|_| ResponseError::NotCoordinator)
}

/// Drops the transactions of one `__transaction_state` partition from this core: another
/// broker leads the partition now and loads them from its copy.
pub fn unload(shard: &Shard, partition: i32) {
    let Some(partitions) = shard.topics.borrow().get(TXN_TOPIC).map(|m| m.partitions) else {
        return;
    };
    shard
        .txns
        .borrow_mut()
        .retain(|id, _| crate::offsets::partition_for(id, partitions) != partition);
}

/// The id's current state unless a change is in flight.
fn current(shard: &Shard, transactional_id: &str) -> Result<Option<TxnMetadata>, ResponseError> {
    match shard.txns.borrow().get(transactional_id) {
        Some(e) if e.pending => Err(ResponseError::ConcurrentTransactions),
        Some(e) => Ok(Some(e.meta.clone())),
        None => Ok(None),
    }
}

fn set_pending(shard: &Shard, transactional_id: &str, pending: bool) {
    if let Some(e) = shard.txns.borrow_mut().get_mut(transactional_id) {
        e.pending = pending;
    }
}

/// Writes `meta` for the id and, once durable, makes it the id's state.
async fn persist(
    shard: &Rc<Shard>,
    transactional_id: &str,
    meta: TxnMetadata,
) -> Result<(), ResponseError> {
    let log = txn_log(shard, transactional_id)?;
    let record = (
        transactions::encode_key(transactional_id),
        Some(transactions::encode_value(&meta)),
    );
    let written = crate::offsets::append_records(&log, &shard.flusher, &[record], now_ms()).await;
    if let Err(why) = written {
        eprintln!("sluice: writing the state of transaction {transactional_id}: {why}");
        return Err(ResponseError::CoordinatorNotAvailable);
    }
    // The lead may have moved while the write waited for the replicas: the new coordinator
    // has the state from its own copy, and this core must not hold it any more.
    txn_log(shard, transactional_id)?;
    let mut table = shard.txns.borrow_mut();
    let entry = table
        .entry(transactional_id.to_string())
        .or_insert_with(|| TxnEntry {
            meta: meta.clone(),
            pending: false,
        });
    entry.meta = meta;
    Ok(())
}

async fn init_producer_id(
    shard: &Rc<Shard>,
    transactional_id: &str,
    timeout_ms: i32,
    expected: Option<(i64, i16)>,
) -> Result<(i64, i16), ResponseError> {
    if timeout_ms <= 0 || timeout_ms > shard.broker.transaction_max_timeout_ms {
        return Err(ResponseError::InvalidTransactionTimeout);
    }
    txn_log(shard, transactional_id)?;
    let existing = current(shard, transactional_id)?;
    // Claimed before the first await: a concurrent request for the id now gets
    // CONCURRENT_TRANSACTIONS instead of racing this one (a new id gets a placeholder).
    claim(shard, transactional_id, existing.as_ref());
    let result = init_claimed(shard, transactional_id, timeout_ms, expected, existing).await;
    match result {
        // The abort now owns the claim and releases it when done.
        Err(ResponseError::ConcurrentTransactions) => {}
        _ => release(shard, transactional_id),
    }
    result
}

async fn init_claimed(
    shard: &Rc<Shard>,
    transactional_id: &str,
    timeout_ms: i32,
    expected: Option<(i64, i16)>,
    existing: Option<TxnMetadata>,
) -> Result<(i64, i16), ResponseError> {
    let now = now_ms();
    let meta = match existing {
        Some(meta) => meta,
        None => TxnMetadata::new(allocate_producer_id(shard).await?, timeout_ms, now),
    };
    let next = match transactions::init(&meta, timeout_ms, expected, now)? {
        InitNext::Current => return Ok((meta.producer_id, meta.producer_epoch)),
        InitNext::FenceAndAbort(fenced) => {
            // The open transaction goes first; the client retries once it is aborted.
            let (shard, id) = (shard.clone(), transactional_id.to_string());
            glommio::spawn_local(async move {
                if let Err(e) = finish(&shard, &id, fenced).await {
                    eprintln!("sluice: aborting the transaction of {id}: {e:?}");
                }
            })
            .detach();
            return Err(ResponseError::ConcurrentTransactions);
        }
        InitNext::NewProducerId => {
            let fresh = TxnMetadata::new(allocate_producer_id(shard).await?, timeout_ms, now);
            match transactions::init(&fresh, timeout_ms, None, now)? {
                InitNext::Bump(next) => next,
                _ => return Err(ResponseError::UnknownServerError),
            }
        }
        InitNext::Bump(next) => next,
    };
    let answer = (next.producer_id, next.producer_epoch);
    persist(shard, transactional_id, next).await?;
    Ok(answer)
}

/// Marks the id pending while a change is decided and written; a new id gets a placeholder
/// entry (no state yet) that [`release`] removes if nothing was written.
fn claim(shard: &Shard, transactional_id: &str, existing: Option<&TxnMetadata>) {
    let mut table = shard.txns.borrow_mut();
    match existing {
        Some(_) => {
            if let Some(e) = table.get_mut(transactional_id) {
                e.pending = true;
            }
        }
        None => {
            table.insert(
                transactional_id.to_string(),
                TxnEntry {
                    meta: TxnMetadata::new(-1, 0, -1),
                    pending: true,
                },
            );
        }
    }
}

/// Ends a claim: clears pending, and drops a placeholder that never got a state.
fn release(shard: &Shard, transactional_id: &str) {
    let mut table = shard.txns.borrow_mut();
    let placeholder = table
        .get(transactional_id)
        .is_some_and(|e| e.meta.producer_id == -1);
    if placeholder {
        table.remove(transactional_id);
    } else if let Some(e) = table.get_mut(transactional_id) {
        e.pending = false;
    }
}

async fn allocate_producer_id(shard: &Rc<Shard>) -> Result<i64, ResponseError> {
    match shard.call(0, CoreRequest::AllocateProducerId).await {
        Some(CoreResponse::ProducerId(Ok(id))) => Ok(id),
        Some(CoreResponse::ProducerId(Err(why))) => {
            eprintln!("sluice: InitProducerId: cannot allocate a producer id: {why}");
            Err(ResponseError::KafkaStorageError)
        }
        _ => Err(ResponseError::CoordinatorNotAvailable),
    }
}

async fn add_partitions(
    shard: &Rc<Shard>,
    transactional_id: &str,
    producer_id: i64,
    producer_epoch: i16,
    partitions: &[(String, i32)],
) -> Result<(), ResponseError> {
    txn_log(shard, transactional_id)?;
    let Some(meta) = current(shard, transactional_id)? else {
        return Err(ResponseError::InvalidProducerIdMapping);
    };
    let Some(next) =
        transactions::add_partitions(&meta, producer_id, producer_epoch, partitions, now_ms())?
    else {
        return Ok(());
    };
    set_pending(shard, transactional_id, true);
    let persisted = persist(shard, transactional_id, next).await;
    set_pending(shard, transactional_id, false);
    persisted
}

/// EndTxn; answers the producer id and epoch the client continues with (new ones under
/// transaction version 2).
async fn end_txn(
    shard: &Rc<Shard>,
    transactional_id: &str,
    producer_id: i64,
    producer_epoch: i16,
    commit: bool,
    version_2: bool,
) -> Result<(i64, i16), ResponseError> {
    txn_log(shard, transactional_id)?;
    let Some(meta) = current(shard, transactional_id)? else {
        return Err(ResponseError::InvalidProducerIdMapping);
    };
    let next = transactions::end(
        &meta,
        producer_id,
        producer_epoch,
        commit,
        now_ms(),
        version_2,
    )?;
    match next {
        EndNext::AlreadyDone => Ok((meta.producer_id, meta.producer_epoch)),
        EndNext::Prepare(prepared) => {
            set_pending(shard, transactional_id, true);
            let done = finish_rotating(shard, transactional_id, prepared, version_2).await?;
            Ok((done.producer_id, done.producer_epoch))
        }
    }
}

/// Ends a transaction, the id already pending: writes the Prepare state (unless it is the
/// state already, as after a restart), the markers, then the Complete state; clears pending.
async fn finish(
    shard: &Rc<Shard>,
    transactional_id: &str,
    prepared: TxnMetadata,
) -> Result<TxnMetadata, ResponseError> {
    finish_rotating(shard, transactional_id, prepared, false).await
}

/// [`finish`]; with `rotate` (transaction version 2) an exhausted epoch moves the id to a new
/// producer id at epoch 0 in the Complete state, which the client is answered with.
async fn finish_rotating(
    shard: &Rc<Shard>,
    transactional_id: &str,
    prepared: TxnMetadata,
    rotate: bool,
) -> Result<TxnMetadata, ResponseError> {
    let result = finish_inner(shard, transactional_id, prepared, rotate).await;
    set_pending(shard, transactional_id, false);
    result
}

async fn finish_inner(
    shard: &Rc<Shard>,
    transactional_id: &str,
    prepared: TxnMetadata,
    rotate: bool,
) -> Result<TxnMetadata, ResponseError> {
    let already = shard
        .txns
        .borrow()
        .get(transactional_id)
        .is_some_and(|e| e.meta == prepared);
    if !already {
        persist(shard, transactional_id, prepared.clone()).await?;
    }
    if !write_markers(shard, transactional_id, &prepared).await {
        // Stopping: the Prepare state stays, and the next start writes the markers.
        return Err(ResponseError::CoordinatorNotAvailable);
    }
    let mut done = transactions::complete(&prepared, now_ms());
    if rotate && done.producer_epoch >= transactions::EPOCH_EXHAUSTED {
        done.producer_id = allocate_producer_id(shard).await?;
        done.producer_epoch = 0;
        done.last_producer_epoch = -1;
    }
    persist(shard, transactional_id, done.clone()).await?;
    Ok(done)
}

/// Writes the transaction's markers to every partition in it, on the cores that own them, and
/// waits until each is durable. A partition whose marker fails is retried until it succeeds
/// or its topic is deleted, as Kafka's marker channel retries; false when the broker stopped
/// first (the transaction must stay prepared).
async fn write_markers(shard: &Rc<Shard>, transactional_id: &str, meta: &TxnMetadata) -> bool {
    let commit = meta.state == TxnState::PrepareCommit;
    let mut remaining: Vec<TopicPartition> = meta
        .partitions
        .iter()
        .map(|(t, p)| TopicPartition::new(t.clone(), *p))
        .collect();
    let mut delay = Duration::from_millis(10);
    loop {
        if remaining.is_empty() {
            return true;
        }
        // Stopping, no longer the coordinator, or cut off from the quorum (so possibly no
        // longer the coordinator without knowing it): the transaction stays prepared, and
        // whoever coordinates it next writes the markers.
        if shard.stopping.get() || shard.isolated.get() || txn_log(shard, transactional_id).is_err()
        {
            return false;
        }
        let mut by_core: BTreeMap<usize, Vec<TopicPartition>> = BTreeMap::new();
        let mut by_broker: BTreeMap<i32, Vec<TopicPartition>> = BTreeMap::new();
        let mut unplaced = Vec::new();
        {
            let table = shard.table.borrow();
            let topics = shard.topics.borrow();
            for tp in remaining.drain(..) {
                match table.core_of(&tp.topic, tp.partition) {
                    Some(core) => by_core.entry(core).or_default().push(tp),
                    // A partition of a deleted topic needs no marker.
                    None => match topics.get(&tp.topic) {
                        None => {}
                        // Led by another broker: its marker goes there (WriteTxnMarkers).
                        Some(topic) => match topic.leader(tp.partition) {
                            Some(leader) if leader != shard.broker.node_id => {
                                by_broker.entry(leader).or_default().push(tp)
                            }
                            _ => unplaced.push(tp),
                        },
                    },
                }
            }
        }
        remaining.extend(unplaced);
        let remote = join_all(by_broker.into_iter().map(|(broker, partitions)| {
            remote_markers(
                shard,
                broker,
                meta.producer_id,
                meta.producer_epoch,
                commit,
                partitions,
            )
        }));
        let sent: Vec<Vec<TopicPartition>> = by_core.values().cloned().collect();
        let answers = dispatch_markers(
            shard,
            meta.producer_id,
            meta.producer_epoch,
            commit,
            by_core,
        );
        for (answer, partitions) in answers.await.into_iter().zip(sent) {
            match answer {
                Some(CoreResponse::Markers(results)) => {
                    // A newer epoch on the partition: a later marker of the producer is there.
                    remaining.extend(results.into_iter().filter_map(|(tp, error)| {
                        (error != 0 && error != ResponseError::InvalidProducerEpoch.code())
                            .then_some(tp)
                    }));
                }
                // A core that did not answer (stopping) is asked again.
                _ => remaining.extend(partitions),
            }
        }
        for results in remote.await {
            remaining.extend(results.into_iter().filter_map(|(tp, error)| {
                (error != 0 && error != ResponseError::InvalidProducerEpoch.code()).then_some(tp)
            }));
        }
        if !remaining.is_empty() {
            glommio::timer::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(1));
        }
    }
}

/// WriteTxnMarkers (v1) to the broker leading `partitions`: one error code per partition
/// (NOT_LEADER_OR_FOLLOWER for all of them when the broker cannot be reached).
async fn remote_markers(
    shard: &Rc<Shard>,
    broker: i32,
    producer_id: i64,
    producer_epoch: i16,
    commit: bool,
    partitions: Vec<TopicPartition>,
) -> Vec<(TopicPartition, i16)> {
    use kafka_protocol::messages::write_txn_markers_request::{
        WritableTxnMarker, WritableTxnMarkerTopic,
    };
    use kafka_protocol::messages::{
        ApiKey, ProducerId, WriteTxnMarkersRequest, WriteTxnMarkersResponse,
    };
    let mut by_topic: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
    for tp in &partitions {
        by_topic.entry(&tp.topic).or_default().push(tp.partition);
    }
    let marker = WritableTxnMarker::default()
        .with_producer_id(ProducerId(producer_id))
        .with_producer_epoch(producer_epoch)
        .with_transaction_result(commit)
        .with_coordinator_epoch(0)
        .with_topics(
            by_topic
                .into_iter()
                .map(|(topic, ps)| {
                    WritableTxnMarkerTopic::default()
                        .with_name(crate::handlers::topic_name(topic))
                        .with_partition_indexes(ps)
                })
                .collect(),
        );
    let request = WriteTxnMarkersRequest::default().with_markers(vec![marker]);
    let answer: Option<WriteTxnMarkersResponse> =
        crate::peer::call(shard, broker, ApiKey::WriteTxnMarkers, 1, &request).await;
    let Some(answer) = answer else {
        let error = ResponseError::NotLeaderOrFollower.code();
        return partitions.into_iter().map(|tp| (tp, error)).collect();
    };
    let mut codes: HashMap<TopicPartition, i16> = answer
        .markers
        .iter()
        .flat_map(|m| &m.topics)
        .flat_map(|t| {
            t.partitions.iter().map(|p| {
                (
                    TopicPartition::new(t.name.0.to_string(), p.partition_index),
                    p.error_code,
                )
            })
        })
        .collect();
    partitions
        .into_iter()
        .map(|tp| {
            let code = codes
                .remove(&tp)
                .unwrap_or(ResponseError::NotLeaderOrFollower.code());
            (tp, code)
        })
        .collect()
}

/// Sends one `WriteMarkers` message to each core of `by_core` for its partitions; the answers
/// in core order (None from a core that is stopping).
pub fn dispatch_markers(
    shard: &Rc<Shard>,
    producer_id: i64,
    producer_epoch: i16,
    commit: bool,
    by_core: BTreeMap<usize, Vec<TopicPartition>>,
) -> futures::future::JoinAll<futures::future::LocalBoxFuture<'static, Option<CoreResponse>>> {
    let calls: Vec<_> = by_core
        .into_iter()
        .map(|(core, partitions)| {
            shard.dispatch(
                core,
                CoreRequest::WriteMarkers {
                    producer_id,
                    producer_epoch,
                    commit,
                    partitions,
                },
            )
        })
        .collect();
    join_all(calls)
}

/// Writes markers to partitions this core owns (the `WriteMarkers` cross-core message); one
/// error code per partition. A marker in `__consumer_offsets` also makes the producer's pending
/// transactional offsets visible (commit) or drops them (abort).
pub async fn write_local_markers(
    shard: &Rc<Shard>,
    producer_id: i64,
    producer_epoch: i16,
    commit: bool,
    partitions: Vec<TopicPartition>,
) -> Vec<(TopicPartition, i16)> {
    let now = now_ms();
    let marker = Marker {
        commit,
        coordinator_epoch: 0,
    };
    let mut appended = Vec::with_capacity(partitions.len());
    let mut out = Vec::with_capacity(partitions.len());
    for tp in partitions {
        let log = match shard.owned_log(&tp) {
            Ok(log) => log,
            Err(code) => {
                out.push((tp, code));
                continue;
            }
        };
        match log.append_marker(producer_id, producer_epoch, marker, now) {
            Ok(info) => {
                shard.flusher.mark_dirty(&log);
                appended.push((tp, log, info));
            }
            Err(e) => out.push((tp, crate::error::storage_error_code(&e))),
        }
    }
    for (tp, log, info) in appended {
        let level = match log.config().sync {
            SyncPolicy::EveryWrite => Durability::Synced,
            SyncPolicy::Interval { .. } => Durability::Written,
        };
        let mut durable = log
            .wait_durable(&info, level)
            .await
            .map_err(|e| crate::error::storage_error_code(&e));
        // In a cluster a marker counts once every in-sync replica has it (Kafka writes markers
        // with acks=all): a marker lost in a failover would leave the transaction open there.
        if durable.is_ok() && shard.broker.clustered() {
            durable = match crate::replica::leads(shard, &tp) {
                None => Err(ResponseError::NotLeaderOrFollower.code()),
                Some(epoch) => {
                    let end = info.last_offset + 1;
                    let wait = crate::replica::wait_replicated(shard, &tp, &log, end, epoch);
                    match crate::shard::with_timeout(wait, MARKER_REPLICATION_WAIT).await {
                        // Every in-sync replica has it, however few they are now.
                        Some(Ok(()) | Err(ResponseError::NotEnoughReplicasAfterAppend)) => Ok(()),
                        Some(Err(e)) => Err(e.code()),
                        None => Err(ResponseError::RequestTimedOut.code()),
                    }
                }
            };
        }
        match durable {
            Ok(()) => {
                if tp.topic == crate::offsets::OFFSETS_TOPIC {
                    let at = info.base_offset;
                    crate::offsets::end_transaction(shard, tp.partition, producer_id, commit, at);
                }
                out.push((tp, 0));
            }
            Err(code) => out.push((tp, code)),
        }
    }
    out
}

/// How long a marker waits for the in-sync replicas before the coordinator is told to retry.
const MARKER_REPLICATION_WAIT: Duration = Duration::from_secs(10);

/// Rebuilds the transaction states of one `__transaction_state` partition at start; the
/// transactions that were ending when the broker stopped are finished (their markers written
/// again: a partition that has one already gets a second, which ends nothing).
pub async fn load(shard: &Rc<Shard>, log: &Rc<PartitionLog>) -> Result<usize, String> {
    let mut states: HashMap<String, Option<TxnMetadata>> = HashMap::new();
    crate::offsets::for_each_record(log, |key, value| {
        if let Some(id) = transactions::decode_key(key) {
            states.insert(id, value.and_then(transactions::decode_value));
        }
    })
    .await?;
    let loaded = states.len();
    let mut table = shard.txns.borrow_mut();
    for (id, meta) in states {
        let Some(meta) = meta else { continue };
        // Prepared transactions are finished by `timeout_loop` once every core serves (the
        // partitions of their markers may not be open yet while this one loads).
        table.insert(
            id,
            TxnEntry {
                meta,
                pending: false,
            },
        );
    }
    Ok(loaded)
}

/// Started once every core serves, and then every
/// `transaction.abort.timed.out.transaction.cleanup.interval.ms`: finishes prepared
/// transactions that are not being finished (found at start, or whose Complete record could not
/// be written), aborts timed-out transactions of the ids this core coordinates, fencing their
/// producers, and forgets ids idle past `transactional.id.expiration.ms`.
pub async fn timeout_loop(shard: Rc<Shard>) {
    let interval = Duration::from_millis(
        shard
            .broker
            .transaction_abort_timed_out_transaction_cleanup_interval_ms,
    );
    while !shard.stopping.get() {
        let now = now_ms();
        let due: Vec<(String, TxnMetadata)> = shard
            .txns
            .borrow()
            .iter()
            .filter(|(_, e)| !e.pending)
            .filter_map(|(id, e)| match e.meta.state {
                TxnState::PrepareCommit | TxnState::PrepareAbort => {
                    Some((id.clone(), e.meta.clone()))
                }
                _ if e.meta.timed_out(now) => {
                    Some((id.clone(), transactions::abort_timed_out(&e.meta, now)))
                }
                _ => None,
            })
            .collect();
        for (id, fenced) in due {
            set_pending(&shard, &id, true);
            let shard = shard.clone();
            glommio::spawn_local(async move {
                if let Err(e) = finish(&shard, &id, fenced).await {
                    eprintln!("sluice: ending the transaction of {id}: {e:?}");
                }
            })
            .detach();
        }
        expire_ids(&shard, now);
        glommio::timer::sleep(interval).await;
    }
}

/// Forgets the transactional ids with no transaction for `transactional.id.expiration.ms`:
/// a tombstone in `__transaction_state` (so a restart forgets them too), then out of the table.
fn expire_ids(shard: &Rc<Shard>, now_ms: i64) {
    let expiration_ms = shard.broker.transactional_id_expiration_ms;
    let expired: Vec<String> = shard
        .txns
        .borrow()
        .iter()
        .filter(|(_, e)| !e.pending && e.meta.expired(now_ms, expiration_ms))
        .map(|(id, _)| id.clone())
        .collect();
    for id in expired {
        set_pending(shard, &id, true);
        let shard = shard.clone();
        glommio::spawn_local(async move {
            let written = match txn_log(&shard, &id) {
                Ok(log) => {
                    let tombstone = (transactions::encode_key(&id), None);
                    crate::offsets::append_records(&log, &shard.flusher, &[tombstone], now_ms)
                        .await
                        .map(|_| ())
                }
                Err(e) => Err(format!("{e:?}")),
            };
            match written {
                Ok(()) => _ = shard.txns.borrow_mut().remove(&id),
                Err(why) => {
                    eprintln!("sluice: expiring transactional id {id}: {why}");
                    set_pending(&shard, &id, false);
                }
            }
        })
        .detach();
    }
}
