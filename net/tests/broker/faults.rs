//! Network faults, with a checker (Jepsen-style): a cluster runs in network namespaces (see
//! `netns`), real clients write and read through the faults, and afterwards the history is
//! checked — every write acknowledged with acks=all is in the log at the offset it was
//! acknowledged at, nothing a consumer saw was lost, each partition holds its writes once and
//! in the order they were sent, and no offset holds two records.
//!
//! The named scenarios run in CI; `randomized_faults` draws a schedule of cuts, heals, kills
//! and freezes from a seed (`scripts/fault-run.sh` runs it longer, with any seed).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::admin::{NewTopic, TopicReplication};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::BaseConsumer;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::Message;

use crate::cluster::{admin, block_on, consume, partition_state, wait_for, Cluster, FAST};
use crate::netns::Network;

/// (partition, offset, value).
type Write = (i32, i64, String);

/// What the clients saw: writes acknowledged, records read.
#[derive(Default)]
pub(crate) struct History {
    pub(crate) acked: Mutex<Vec<Write>>,
    seen: Mutex<Vec<Write>>,
}

impl History {
    fn acked(&self) -> usize {
        self.acked.lock().expect("not poisoned").len()
    }
}

/// Writes `p{partition}-{n}` to every partition, `n` counting up per partition, with acks=all
/// and idempotence, until `stop`. Sends time out at the broker after 3 s, so a client stuck on
/// a leader that lost its quorum moves on; a record is given up only after two minutes (that
/// panics the writer: the test then fails on it).
pub(crate) fn write_until(
    bootstrap: String,
    topic: &'static str,
    partitions: i32,
    stop: Arc<AtomicBool>,
    history: Arc<History>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .set("linger.ms", "5")
            .set("request.timeout.ms", "3000")
            .set("message.timeout.ms", "120000")
            .set("topic.metadata.refresh.interval.ms", "1000")
            .create()
            .expect("producer");
        let mut next = 0usize;
        while !stop.load(Ordering::Relaxed) {
            let round: Vec<_> = (0..partitions)
                .flat_map(|p| (next..next + 10).map(move |n| (p, n)))
                .map(|(p, n)| {
                    let producer = producer.clone();
                    async move {
                        let value = format!("p{p}-{n}");
                        let sent = producer
                            .send(
                                FutureRecord::<(), _>::to(topic)
                                    .partition(p)
                                    .payload(&value),
                                Duration::from_secs(120),
                            )
                            .await;
                        (value, sent)
                    }
                })
                .collect();
            for (value, sent) in block_on(futures::future::join_all(round)) {
                let delivered =
                    sent.unwrap_or_else(|(e, _)| panic!("{value} not acknowledged: {e}"));
                history.acked.lock().expect("not poisoned").push((
                    delivered.partition,
                    delivered.offset,
                    value,
                ));
            }
            next += 10;
        }
    })
}

/// Reads every partition from the start until `stop`, recording what it sees.
fn read_until(
    bootstrap: String,
    topic: &'static str,
    partitions: i32,
    stop: Arc<AtomicBool>,
    history: Arc<History>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("group.id", "fault-reader")
            .set("enable.auto.commit", "false")
            .set("topic.metadata.refresh.interval.ms", "1000")
            .create()
            .expect("consumer");
        crate::common::assign_from_beginning(&consumer, topic, partitions);
        while !stop.load(Ordering::Relaxed) {
            if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
                let value = String::from_utf8_lossy(m.payload().unwrap_or_default()).to_string();
                history
                    .seen
                    .lock()
                    .expect("not poisoned")
                    .push((m.partition(), m.offset(), value));
            }
        }
    })
}

/// The checker: the final logs against what the clients saw. Returns a description of every
/// violation (empty: the history is valid).
fn violations(history: &History, logs: &BTreeMap<i32, Vec<(i64, String)>>) -> Vec<String> {
    let mut found = Vec::new();
    let mut at: BTreeMap<(i32, i64), &str> = BTreeMap::new();
    for (p, records) in logs {
        let mut last_n: Option<u64> = None;
        let mut values = BTreeSet::new();
        for (offset, value) in records {
            if at.insert((*p, *offset), value).is_some() {
                found.push(format!("partition {p}: offset {offset} read twice"));
            }
            if !values.insert(value.clone()) {
                found.push(format!("partition {p}: {value} written twice"));
            }
            // Sent in order, one producer: per-partition order holds.
            let n: u64 = value
                .rsplit('-')
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            if !value.starts_with(&format!("p{p}-")) {
                found.push(format!("partition {p}: {value} belongs elsewhere"));
            }
            if last_n.is_some_and(|last| n <= last) {
                found.push(format!(
                    "partition {p}: {value} after p{p}-{}",
                    last_n.unwrap_or(0)
                ));
            }
            last_n = Some(n);
        }
        let offsets: Vec<i64> = records.iter().map(|(o, _)| *o).collect();
        let expected: Vec<i64> = (0..records.len() as i64).collect();
        if offsets != expected {
            found.push(format!("partition {p}: offsets have gaps or disorder"));
        }
    }
    for (what, list) in [("acknowledged", &history.acked), ("seen", &history.seen)] {
        for (p, offset, value) in list.lock().expect("not poisoned").iter() {
            if at.get(&(*p, *offset)) != Some(&value.as_str()) {
                found.push(format!(
                    "{what} {value} at {p}/{offset}, the log holds {:?}",
                    at.get(&(*p, *offset))
                ));
            }
        }
    }
    found
}

/// Stops the clients, reads everything back through the healed cluster and checks it.
fn stop_and_check(
    cluster: &Cluster,
    topic: &str,
    partitions: i32,
    stop: &AtomicBool,
    clients: Vec<std::thread::JoinHandle<()>>,
    history: &History,
) {
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.join().expect("a client failed");
    }
    let acked = history.acked();
    let logs = consume(&cluster.bootstrap(), topic, partitions, acked);
    let violations = violations(history, &logs);
    assert!(
        violations.is_empty(),
        "{} violations, first: {:?}",
        violations.len(),
        &violations[..violations.len().min(10)]
    );
    let seen = history.seen.lock().expect("not poisoned").len();
    eprintln!("checked: {acked} acknowledged writes, {seen} reads, no violation");
}

/// The partition scenarios' settings: the test timeouts, a 2 s lag time, no rebalancing.
fn cut_settings() -> Vec<&'static str> {
    let mut settings = FAST.to_vec();
    settings.extend([
        "replica.lag.time.max.ms=2000",
        "auto.leader.rebalance.enable=false",
    ]);
    settings
}

/// A writer and a reader on every partition of `topic`, into a fresh history; returns once 200
/// writes were acknowledged.
fn start_load(
    cluster: &Cluster,
    topic: &'static str,
    partitions: i32,
) -> (
    Arc<AtomicBool>,
    Arc<History>,
    Vec<std::thread::JoinHandle<()>>,
) {
    let stop = Arc::new(AtomicBool::new(false));
    let history = Arc::new(History::default());
    let clients = vec![
        write_until(
            cluster.bootstrap(),
            topic,
            partitions,
            stop.clone(),
            history.clone(),
        ),
        read_until(
            cluster.bootstrap(),
            topic,
            partitions,
            stop.clone(),
            history.clone(),
        ),
    ];
    wait_for("writes to flow", Duration::from_secs(20), || {
        history.acked() >= 200
    });
    (stop, history, clients)
}

/// Waits until 100 more writes than now are acknowledged.
fn writes_go_on(history: &History, what: &str, timeout: Duration) {
    let before = history.acked();
    wait_for(what, timeout, || history.acked() >= before + 100);
}

fn create_assigned(cluster: &Cluster, topic: &str, replicas: &[&[i32]]) {
    let new = NewTopic::new(
        topic,
        replicas.len() as i32,
        TopicReplication::Variable(replicas),
    );
    let options =
        rdkafka::admin::AdminOptions::new().operation_timeout(Some(Duration::from_secs(25)));
    let created = block_on(admin(&cluster.bootstrap()).create_topics(&[new], &options));
    created
        .expect("admin")
        .into_iter()
        .next()
        .expect("one result")
        .expect("created");
}

#[test]
fn a_leader_cut_off_from_the_other_brokers_acknowledges_nothing_and_loses_nothing() {
    if !Network::available() {
        eprintln!("skipped: network namespaces cannot be made here (run as root)");
        return;
    }
    let cluster = Cluster::start_partitionable(3, &cut_settings());
    create_assigned(&cluster, "cut", &[&[1, 2, 3], &[1, 3, 2]]);
    let (stop, history, clients) = start_load(&cluster, "cut", 2);
    // Node 1 leads both partitions; cut it off from nodes 2 and 3. Clients still reach it. It
    // acknowledges nothing without its followers, and once it has gone a session timeout
    // without the quorum it knows it was fenced and turns clients away: they find the new
    // leaders on the majority side.
    cluster.network().isolate(1);
    let cut_at = Instant::now();
    wait_for(
        "a new leader on the majority side",
        Duration::from_secs(20),
        || {
            cluster.try_metadata(2).is_some_and(|metadata| {
                (0..2).all(|p| ![-1, 1].contains(&partition_state(&metadata, "cut", p).0))
            })
        },
    );
    writes_go_on(
        &history,
        "writes acknowledged by the new leaders",
        Duration::from_secs(40),
    );
    eprintln!("writes went on {:?} after the cut", cut_at.elapsed());
    cluster.network().rejoin(1);
    // Node 1 learns it was replaced, truncates what it alone took, and catches up.
    wait_for("node 1 back in sync", Duration::from_secs(30), || {
        cluster.try_metadata(2).is_some_and(|metadata| {
            (0..2).all(|p| partition_state(&metadata, "cut", p).2.contains(&1))
        })
    });
    writes_go_on(&history, "writes after the heal", Duration::from_secs(20));
    stop_and_check(&cluster, "cut", 2, &stop, clients, &history);
}

/// Split roles: a broker-only node cut off from every controller (but not from the other
/// brokers, nor from clients) is fenced by the active controller, fences itself, and its
/// partition gets a new leader; healed, it follows again. Nothing acknowledged is lost.
#[test]
fn a_broker_cut_off_from_the_controllers_is_replaced_and_loses_nothing() {
    if !Network::available() {
        eprintln!("skipped: network namespaces cannot be made here (run as root)");
        return;
    }
    let cluster = Cluster::start_split_partitionable(3, 3, &cut_settings());
    create_assigned(&cluster, "quorumless", &[&[1, 2, 3]]);
    let (stop, history, clients) = start_load(&cluster, "quorumless", 1);
    for controller in 4..=6 {
        cluster.network().cut(1, controller);
    }
    wait_for("a new leader", Duration::from_secs(20), || {
        cluster.try_metadata(2).is_some_and(|metadata| {
            ![-1, 1].contains(&partition_state(&metadata, "quorumless", 0).0)
        })
    });
    writes_go_on(
        &history,
        "writes acknowledged by the new leader",
        Duration::from_secs(40),
    );
    // Node 1 no longer hears from the quorum: it turns clients away.
    wait_for("node 1 to fence itself", Duration::from_secs(10), || {
        cluster.try_metadata(1).is_none()
    });
    for controller in 4..=6 {
        cluster.network().heal(1, controller);
    }
    wait_for("node 1 back in sync", Duration::from_secs(30), || {
        cluster
            .try_metadata(2)
            .is_some_and(|metadata| partition_state(&metadata, "quorumless", 0).2.contains(&1))
    });
    writes_go_on(&history, "writes after the heal", Duration::from_secs(20));
    stop_and_check(&cluster, "quorumless", 1, &stop, clients, &history);
}

/// xorshift64*: a reproducible schedule from a seed, without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// What is wrong with a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    Killed,
    Frozen,
    Disconnected,
    Isolated,
}

fn signal(cluster: &Cluster, node: usize, signal: i32) {
    // SAFETY: kill(2) on a child process this test started.
    unsafe {
        libc::kill(cluster.node(node as i32).pid() as i32, signal);
    }
}

fn inflict(cluster: &mut Cluster, node: usize, fault: Fault) {
    match fault {
        Fault::Killed => cluster.node_mut(node as i32).kill9(),
        Fault::Frozen => signal(cluster, node, libc::SIGSTOP),
        Fault::Disconnected => cluster.network().disconnect(node),
        Fault::Isolated => cluster.network().isolate(node),
    }
}

fn repair(cluster: &mut Cluster, node: usize, fault: Fault) {
    match fault {
        Fault::Killed => cluster.node_mut(node as i32).restart(),
        Fault::Frozen => signal(cluster, node, libc::SIGCONT),
        Fault::Disconnected => cluster.network().reconnect(node),
        Fault::Isolated => cluster.network().rejoin(node),
    }
}

/// A randomized run: five nodes, a topic of three partitions with three replicas and
/// min.insync.replicas=2, a writer and a reader; for `SLUICE_FAULT_SECONDS` (default 20) a
/// fault every 1–3 s drawn from `SLUICE_FAULT_SEED` (default: from the clock; printed either
/// way): a node killed (kill -9, restarted later), frozen (SIGSTOP), unplugged from the
/// network, or cut off from the other nodes only; or a link between two healthy nodes cut;
/// or one of these repaired. At most two nodes are down at once, so the quorum and every
/// partition keep a majority to come back to. Then everything is repaired, the cluster must
/// recover, and the checker looks at the whole history.
#[test]
fn randomized_faults() {
    if !Network::available() {
        eprintln!("skipped: network namespaces cannot be made here (run as root)");
        return;
    }
    let seed: u64 = std::env::var("SLUICE_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
    let seconds: u64 = std::env::var("SLUICE_FAULT_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    eprintln!("randomized faults: SLUICE_FAULT_SEED={seed} SLUICE_FAULT_SECONDS={seconds}");
    let mut rng = Rng(seed.max(1));
    let mut settings = FAST.to_vec();
    settings.extend([
        "cores=1",
        "replica.lag.time.max.ms=3000",
        "min.insync.replicas=2",
    ]);
    let mut cluster = Cluster::start_partitionable(5, &settings);
    create_assigned(&cluster, "chaos", &[&[1, 2, 3], &[2, 3, 4], &[3, 4, 5]]);
    let stop = Arc::new(AtomicBool::new(false));
    let history = Arc::new(History::default());
    let clients = vec![
        write_until(
            cluster.bootstrap(),
            "chaos",
            3,
            stop.clone(),
            history.clone(),
        ),
        read_until(
            cluster.bootstrap(),
            "chaos",
            3,
            stop.clone(),
            history.clone(),
        ),
    ];
    wait_for("writes to flow", Duration::from_secs(20), || {
        history.acked() >= 100
    });
    let mut faults: BTreeMap<usize, Fault> = BTreeMap::new();
    let mut cut: Option<(usize, usize)> = None;
    let end = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    while Instant::now() < end {
        std::thread::sleep(Duration::from_millis(1000 + rng.below(2000) as u64));
        let at = started.elapsed().as_secs_f32();
        let healthy: Vec<usize> = (1..=5).filter(|n| !faults.contains_key(n)).collect();
        let roll = rng.below(6);
        match roll {
            // Repair a node (always, when two are down).
            _ if faults.len() >= 2 || (roll < 2 && !faults.is_empty()) => {
                let nodes: Vec<usize> = faults.keys().copied().collect();
                let node = nodes[rng.below(nodes.len())];
                let fault = faults.remove(&node).expect("listed");
                eprintln!("{at:6.1}s  repair node {node} ({fault:?})");
                repair(&mut cluster, node, fault);
            }
            // Cut or heal a link between two healthy nodes.
            2 => match cut.take() {
                Some((a, b)) => {
                    eprintln!("{at:6.1}s  heal the link {a}-{b}");
                    cluster.network().heal(a, b);
                }
                None if healthy.len() >= 2 => {
                    let a = healthy[rng.below(healthy.len())];
                    let others: Vec<usize> = healthy.iter().copied().filter(|n| *n != a).collect();
                    let b = others[rng.below(others.len())];
                    eprintln!("{at:6.1}s  cut the link {a}-{b}");
                    cluster.network().cut(a, b);
                    cut = Some((a, b));
                }
                None => {}
            },
            // Break a node.
            _ => {
                let node = healthy[rng.below(healthy.len())];
                if let Some((a, b)) = cut.filter(|(a, b)| *a == node || *b == node) {
                    cluster.network().heal(a, b);
                    cut = None;
                }
                let fault = [
                    Fault::Killed,
                    Fault::Frozen,
                    Fault::Disconnected,
                    Fault::Isolated,
                ][rng.below(4)];
                eprintln!("{at:6.1}s  {fault:?} node {node}");
                inflict(&mut cluster, node, fault);
                faults.insert(node, fault);
            }
        }
    }
    eprintln!("repairing everything");
    for (node, fault) in std::mem::take(&mut faults) {
        repair(&mut cluster, node, fault);
    }
    if let Some((a, b)) = cut {
        cluster.network().heal(a, b);
    }
    wait_for(
        "every replica back in sync",
        Duration::from_secs(60),
        || {
            cluster.try_metadata(1).is_some_and(|metadata| {
                (0..3).all(|p| partition_state(&metadata, "chaos", p).2.len() == 3)
            })
        },
    );
    let before = history.acked();
    wait_for("writes after the repairs", Duration::from_secs(60), || {
        history.acked() >= before + 100
    });
    stop_and_check(&cluster, "chaos", 3, &stop, clients, &history);
}

/// The checker itself finds what it is there to find.
#[test]
fn the_checker_finds_lost_moved_duplicated_and_reordered_records() {
    let history = History::default();
    let log = |values: &[(i64, &str)]| -> Vec<(i64, String)> {
        values.iter().map(|(o, v)| (*o, v.to_string())).collect()
    };
    history
        .acked
        .lock()
        .expect("not poisoned")
        .extend([(0, 0, "p0-0".to_string()), (0, 1, "p0-1".to_string())]);
    history
        .seen
        .lock()
        .expect("not poisoned")
        .push((0, 2, "p0-2".to_string()));
    let good = BTreeMap::from([(0, log(&[(0, "p0-0"), (1, "p0-1"), (2, "p0-2")]))]);
    assert!(violations(&history, &good).is_empty());
    let lost_ack = BTreeMap::from([(0, log(&[(0, "p0-0")]))]);
    assert!(violations(&history, &lost_ack)
        .iter()
        .any(|v| v.starts_with("acknowledged p0-1")));
    let lost_read = BTreeMap::from([(0, log(&[(0, "p0-0"), (1, "p0-1")]))]);
    assert!(violations(&history, &lost_read)
        .iter()
        .any(|v| v.starts_with("seen p0-2")));
    let moved = BTreeMap::from([(0, log(&[(0, "p0-1"), (1, "p0-0"), (2, "p0-2")]))]);
    let found = violations(&history, &moved);
    assert!(found.iter().any(|v| v.contains("after")), "{found:?}");
    assert!(found.iter().any(|v| v.starts_with("acknowledged p0-0")));
    let twice = BTreeMap::from([(
        0,
        log(&[(0, "p0-0"), (1, "p0-1"), (2, "p0-2"), (3, "p0-2")]),
    )]);
    assert!(violations(&history, &twice)
        .iter()
        .any(|v| v.contains("written twice")));
    let gap = BTreeMap::from([(0, log(&[(0, "p0-0"), (1, "p0-1"), (3, "p0-2")]))]);
    assert!(violations(&history, &gap)
        .iter()
        .any(|v| v.contains("gaps")));
}
