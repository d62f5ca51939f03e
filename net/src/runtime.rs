//! Starting and stopping the broker: one glommio executor per core, each pinned to one CPU of
//! the process's affinity mask, joined by a bounded channel mesh.
//!
//! Start: the main thread loads the topic metadata, then spawns the executors. Each executor
//! guards against glommio's polled-I/O mis-detection, recovers the partitions it owns, joins the
//! mesh (a barrier: no core accepts before every core has recovered), and accepts connections
//! on the shared port (SO_REUSEPORT lets the kernel spread connections over cores).
//!
//! Stop (SIGTERM/SIGINT): the main thread, which only waits for signals, raises a flag; each
//! core stops accepting, lets in-flight requests finish (bounded wait), flushes and closes its
//! logs, and exits; the process exits 0.

use std::cell::{Cell, OnceCell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use glommio::channels::channel_mesh::MeshBuilder;
use glommio::net::TcpListener;
use glommio::{LocalExecutorBuilder, Placement};
use sluice_core::config::BrokerConfig;
use sluice_core::ShardTable;
use sluice_storage::Flusher;

use crate::metadata::{self, ClusterView, TopicMeta};
use crate::producer_ids::ProducerIds;
use crate::router::{Envelope, Router, TopicChange};
use crate::shard::{now_ms, Shard};

/// Start and stop coordination between the main thread and the cores. Only the start barrier,
/// the stop flag and these counters are shared, never data-path state.
struct Lifecycle {
    /// Raised by a signal or by a failing core; every core then stops.
    stop: AtomicBool,
    /// Cores still running.
    running: AtomicUsize,
    /// Cores that have recovered their partitions (start barrier).
    started: AtomicUsize,
    /// Cores with no client request left in flight (stop barrier).
    drained: AtomicUsize,
}

/// How long a stopping core waits for in-flight requests before closing its logs anyway.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

pub fn run(config: BrokerConfig) -> Result<(), String> {
    let cpus = allowed_cpus();
    let cores = if config.cores == 0 {
        cpus.len()
    } else {
        config.cores
    };
    if cores == 0 {
        return Err("no CPU available to run on".into());
    }
    std::fs::create_dir_all(&config.log_dirs)
        .map_err(|e| format!("log.dirs {}: {e}", config.log_dirs.display()))?;
    sluice_storage::io_probe::prepare(&config.log_dirs)
        .map_err(|e| format!("log.dirs {}: {e}", config.log_dirs.display()))?;
    // Before any log is opened: bytes acknowledged through a journal and lost from their
    // segments (an OS crash) are written back, then each core gets an empty journal.
    let replayed =
        sluice_storage::journal::prepare(&config.log_dirs, cores, config.journal_ring_bytes(cores))
            .map_err(|e| format!("journal in {}: {e}", config.log_dirs.display()))?;
    if replayed.records > 0 || replayed.skipped > 0 {
        eprintln!(
            "sluice: journal: wrote {} records ({} bytes) back into segments, skipped {} of \
             deleted segments",
            replayed.records, replayed.bytes, replayed.skipped
        );
    }
    // A cluster's metadata is its quorum's log, replayed here before any core starts; a single
    // node's is its topic files.
    let mut quorum = match config.clustered() {
        true => Some(crate::controller::recover(&config)?),
        false => None,
    };
    let (topics, cluster) = match &quorum {
        Some(q) => (
            crate::controller::topics_of(&q.image, &config),
            crate::controller::cluster_of(&q.image, -1),
        ),
        None => (
            metadata::load_all(&config)?,
            ClusterView::single_node(&config),
        ),
    };
    let cluster_id = metadata::cluster_id(&config).map_err(|e| format!("meta.properties: {e}"))?;
    // Logs of partitions this broker no longer holds (deleted or moved away while it was down).
    let held = |topic: &str, partition: i32| {
        topics.iter().any(|m| {
            m.name == topic
                && usize::try_from(partition)
                    .ok()
                    .and_then(|p| m.states.get(p))
                    .is_some_and(|s| s.replicas.contains(&config.node_id))
        })
    };
    for name in metadata::remove_stray_logs(&config.log_dirs, &held) {
        eprintln!("sluice: removed the stray log {name}: this broker holds no such partition");
    }
    for key in &config.ignored {
        eprintln!("sluice: setting '{key}' has no effect in sluice and is ignored");
    }
    // SO_REUSEPORT (how every core shares the port) would also let a second broker bind the
    // same port silently; a plain bind first fails with "address in use" as Kafka would.
    // A process killed moments ago may still hold the port: io_uring tears a dead process's
    // ring down asynchronously, and the sockets with it. Wait for that, briefly, rather than fail.
    let deadline = Instant::now() + Duration::from_secs(15);
    while let Err(e) = match config.broker_role {
        true => check_port_free(config.listener),
        // A dedicated controller binds no client listener.
        false => Ok(()),
    } {
        if Instant::now() >= deadline || !e.contains("in use") {
            return Err(e);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    block_stop_signals();
    let life = Arc::new(Lifecycle {
        stop: AtomicBool::new(false),
        running: AtomicUsize::new(cores),
        started: AtomicUsize::new(0),
        drained: AtomicUsize::new(0),
    });
    let mesh = (cores > 1).then(|| {
        MeshBuilder::<Envelope, _>::full(cores, sluice_core::limits::cross_core_channel_depth)
    });
    let mut handles = Vec::new();
    for core in 0..cores {
        let cpu = cpus[core % cpus.len()];
        let config = config.clone();
        let topics = topics.clone();
        let cluster = cluster.clone();
        let quorum = if core == 0 { quorum.take() } else { None };
        let cluster_id = cluster_id.clone();
        let mesh = mesh.clone();
        let life = life.clone();
        let handle = LocalExecutorBuilder::new(Placement::Fixed(cpu))
            .name(&format!("sluice-core-{core}"))
            .io_memory(config.io_memory_bytes)
            .spawn(move || async move {
                let start = CoreStart {
                    topics,
                    cluster,
                    quorum,
                    cluster_id,
                };
                let result = core_main(core, config, start, mesh, life.clone()).await;
                if let Err(e) = &result {
                    // One core failing stops the broker: say why now, not at exit.
                    eprintln!("sluice: {e}");
                    life.stop.store(true, Ordering::SeqCst);
                }
                life.running.fetch_sub(1, Ordering::SeqCst);
                result
            })
            .map_err(|e| format!("cannot start the executor of core {core} on CPU {cpu}: {e}"))?;
        handles.push(handle);
    }
    wait_for_stop(&life);
    let mut failure = None;
    for handle in handles {
        match handle.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failure = Some(e),
            Err(e) => failure = Some(format!("a core failed: {e}")),
        }
    }
    match failure {
        Some(_) => Err("stopped because a core failed (see above)".into()),
        None => Ok(()),
    }
}

/// What a core starts from: the topics and brokers the node knows, and on core 0 of a cluster
/// node the recovered metadata quorum.
struct CoreStart {
    topics: Vec<TopicMeta>,
    cluster: ClusterView,
    quorum: Option<crate::controller::Recovered>,
    cluster_id: String,
}

async fn core_main(
    core: usize,
    config: BrokerConfig,
    start: CoreStart,
    mesh: Option<MeshBuilder<Envelope, glommio::channels::channel_mesh::Full>>,
    life: Arc<Lifecycle>,
) -> Result<(), String> {
    let CoreStart {
        topics,
        cluster,
        quorum,
        cluster_id,
    } = start;
    sluice_storage::io_probe::guard(&config.log_dirs)
        .await
        .map_err(|e| {
            format!(
                "core {core}: O_DIRECT probe in {}: {e}",
                config.log_dirs.display()
            )
        })?;
    // The journal's file (made by `prepare`) knows its size; only whether there is one matters.
    let cores = mesh.as_ref().map_or(1, |m| m.nr_peers());
    let flusher = match config.journal_ring_bytes(cores) {
        0 => Flusher::new(),
        _ => Flusher::with_journal(
            sluice_storage::journal::Journal::open(&config.log_dirs, core)
                .await
                .map_err(|e| format!("core {core}: journal: {e}"))?,
        ),
    };
    let shard_count = mesh.as_ref().map(|m| m.nr_peers()).unwrap_or(1);
    let mut revision = 1u64;
    let mut placements = Vec::new();
    for meta in &topics {
        let cores_of = crate::shard::placement(meta, config.node_id, shard_count);
        placements.push(TopicChange::Created {
            revision,
            meta: Box::new(meta.clone()),
            cores: cores_of,
        });
        revision += 1;
    }
    let (router, receivers) = match mesh {
        None => (Router::single(), None),
        Some(mesh) => {
            let (senders, receivers) = mesh
                .join()
                .await
                .map_err(|_| format!("core {core}: cannot join the mesh"))?;
            let (router, receivers) = Router::connect(senders, receivers);
            if router.core_id != core {
                return Err(format!("core {core} got mesh id {}", router.core_id));
            }
            (router, Some(receivers))
        }
    };
    let controller_cell: Rc<OnceCell<Rc<crate::controller::Controller>>> = Rc::default();
    let producer_ids = match (core, config.clustered()) {
        (0, false) => {
            Some(ProducerIds::load(&config.log_dirs).map_err(|e| format!("core 0: {e}"))?)
        }
        (0, true) => {
            let cell = controller_cell.clone();
            Some(ProducerIds::from_quorum(Rc::new(move || {
                let controller = cell.get().cloned();
                Box::pin(async move {
                    match controller {
                        Some(c) => c.producer_id_block().await,
                        None => Err("the metadata quorum is not running yet".to_string()),
                    }
                })
            })))
        }
        _ => None,
    };
    let shard = Rc::new(Shard {
        core_id: core,
        broker: Rc::new(config.clone()),
        cluster_id,
        table: RefCell::new(ShardTable::new()),
        topics: RefCell::new(BTreeMap::new()),
        logs: RefCell::new(HashMap::new()),
        flusher: flusher.clone(),
        router,
        next_revision: Cell::new(revision),
        offsets: RefCell::new(Default::default()),
        groups: RefCell::new(Default::default()),
        consumer_groups: RefCell::new(Default::default()),
        txn_offsets: RefCell::new(Default::default()),
        txns: RefCell::new(Default::default()),
        producer_ids,
        cluster: RefCell::new(cluster),
        replicas: RefCell::new(Default::default()),
        coordinating: RefCell::new(Default::default()),
        loading_offsets: RefCell::new(Default::default()),
        txn_coordinating: RefCell::new(Default::default()),
        txn_loading: RefCell::new(Default::default()),
        controller: controller_cell,
        stopping: Cell::new(false),
        isolated: Cell::new(false),
        peers: RefCell::new(Default::default()),
        admin_changes: glommio::sync::Semaphore::new(1),
        truncating: RefCell::new(Default::default()),
        inflight: Cell::new(0),
    });
    // Recover the partitions this core owns, then wait for every core to have done the same:
    // no core accepts a client (who could route work here) before all logs are open.
    for change in placements {
        let _ = shard
            .start(crate::router::CoreRequest::ApplyTopic(change))
            .await;
    }
    // An async barrier: a blocking one would stall this reactor while peers may still need it
    // to finish connecting their mesh channels.
    life.started.fetch_add(1, Ordering::SeqCst);
    while life.started.load(Ordering::SeqCst) < shard.cores() {
        if life.stop.load(Ordering::SeqCst) {
            return Err(format!("core {core}: stopped during start"));
        }
        glommio::timer::sleep(Duration::from_millis(1)).await;
    }
    if let Some(mut receivers) = receivers {
        for (peer, receiver) in receivers.streams() {
            let shard = shard.clone();
            glommio::spawn_local(async move {
                while let Some(envelope) = receiver.recv().await {
                    match envelope {
                        Envelope::Request { id, from, body } => {
                            let started = shard.start(body);
                            let shard = shard.clone();
                            glommio::spawn_local(async move {
                                let answer = started.await;
                                shard.router.reply(from, id, answer);
                            })
                            .detach();
                        }
                        Envelope::Response { id, body } => shard.router.complete(id, body),
                    }
                }
                let _ = peer;
            })
            .detach();
        }
    }
    if let Some(recovered) = quorum {
        // Before this core serves anything: a topic change must never take the single-node
        // path on a cluster node.
        let controller = crate::controller::Controller::start(&shard, recovered)?;
        let _ = shard.controller.set(controller);
    }
    let flusher_task =
        glommio::spawn_local(flusher.clone().run(now_ms, Duration::from_millis(100)));
    glommio::spawn_local(retention_loop(shard.clone())).detach();
    crate::log_cleaner::start(shard.clone());
    glommio::spawn_local(crate::groups::session_loop(shard.clone())).detach();
    glommio::spawn_local(crate::offsets::expiry_loop(shard.clone())).detach();
    glommio::spawn_local(crate::txn_coordinator::timeout_loop(shard.clone())).detach();
    glommio::spawn_local(crate::replica::isr_loop(shard.clone())).detach();
    // A dedicated controller (process.roles=controller) serves no clients: it has no client
    // listener, only the quorum's.
    let listener = match config.broker_role {
        true => Some(
            bind_listener(config.listener)
                .map_err(|e| format!("core {core}: cannot listen on {}: {e}", config.listener))?,
        ),
        false => None,
    };
    if core == 0 {
        match &listener {
            Some(_) => eprintln!(
                "sluice: listening on {} with {} core(s), data in {}",
                config.listener,
                shard.cores(),
                config.log_dirs.display()
            ),
            None => eprintln!(
                "sluice: controller only, quorum listener on {} with {} core(s), data in {}",
                config
                    .controller_listener()
                    .map_or_else(String::new, |a| a.to_string()),
                shard.cores(),
                config.log_dirs.display()
            ),
        }
    }
    let active = Rc::new(Cell::new(0usize));
    loop {
        let accepted = futures_lite::future::or(
            async {
                match &listener {
                    Some(listener) => Some(listener.accept().await),
                    None => std::future::pending().await,
                }
            },
            async {
                while !life.stop.load(Ordering::Relaxed) {
                    glommio::timer::sleep(Duration::from_millis(50)).await;
                }
                None
            },
        )
        .await;
        match accepted {
            None => break,
            Some(Ok(stream)) => {
                let shard = shard.clone();
                let active = active.clone();
                active.set(active.get() + 1);
                glommio::spawn_local(async move {
                    crate::connection::serve(shard, stream).await;
                    active.set(active.get() - 1);
                })
                .detach();
            }
            Some(Err(e)) => {
                eprintln!("sluice: core {core}: accept failed: {e}");
                glommio::timer::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    drop(listener);
    shard.stopping.set(true);
    let deadline = Instant::now() + SHUTDOWN_GRACE;
    while shard.inflight_requests() > 0 && Instant::now() < deadline {
        glommio::timer::sleep(Duration::from_millis(10)).await;
    }
    // Keep serving peers until every core has drained: an in-flight request on another core may
    // still need this one (a fetch reading a partition owned here).
    life.drained.fetch_add(1, Ordering::SeqCst);
    while life.drained.load(Ordering::SeqCst) < shard.cores() && Instant::now() < deadline {
        glommio::timer::sleep(Duration::from_millis(5)).await;
    }
    let logs: Vec<_> = shard.logs.borrow().values().cloned().collect();
    let mut result = Ok(());
    for log in logs {
        if let Err(e) = log.close().await {
            result = Err(format!(
                "core {core}: closing {}-{}: {e}",
                log.topic, log.partition
            ));
        }
    }
    flusher.stop();
    flusher_task.await;
    // Every log is closed and synced: nothing is left for replay at the next start.
    if let Err(e) = flusher.barrier().await {
        result = Err(format!("core {core}: journal checkpoint: {e}"));
    }
    if let Some(journal) = flusher.journal() {
        let stats = journal.stats();
        eprintln!(
            "sluice: core {core}: journal: {} rounds ({} MiB) made durable by one fdatasync, {} \
             rounds synced their segments, {} checkpoints",
            stats.rounds,
            stats.bytes >> 20,
            stats.direct_rounds,
            stats.checkpoints
        );
    }
    if let Some((sends, copied)) = crate::send::zero_copy_counts() {
        eprintln!(
            "sluice: core {core}: {sends} zero-copy sends, of which the kernel copied {copied}"
        );
    }
    result
}

/// Deletes expired segments, and forgets idempotent producers idle for
/// `producer.id.expiration.ms`, every `log.retention.check.interval.ms`.
async fn retention_loop(shard: Rc<Shard>) {
    let interval = Duration::from_millis(shard.broker.log_retention_check_interval_ms);
    loop {
        glommio::timer::sleep(interval).await;
        if shard.stopping.get() {
            return;
        }
        let logs: Vec<_> = shard.logs.borrow().values().cloned().collect();
        let expiration_ms = shard.broker.producer_id_expiration_ms;
        for log in logs {
            if let Err(e) = log.enforce_retention(now_ms()).await {
                eprintln!("sluice: retention of {}-{}: {e}", log.topic, log.partition);
            }
            log.expire_producers(now_ms(), expiration_ms);
        }
    }
}

/// This core's listening socket: SO_REUSEPORT so every core listens on the port (the kernel
/// spreads connections), SO_REUSEADDR so a restart is not refused by the previous run's
/// connections in TIME_WAIT (glommio's own `bind` sets only the first).
pub(crate) fn bind_listener(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    use std::os::fd::{FromRawFd, IntoRawFd};
    let domain = if addr.is_ipv6() {
        socket2::Domain::IPV6
    } else {
        socket2::Domain::IPV4
    };
    let socket = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    // SAFETY: a fresh listening socket whose ownership moves into the glommio listener.
    Ok(unsafe { TcpListener::from_raw_fd(socket.into_raw_fd()) })
}

/// Binds the listener address once with SO_REUSEADDR (as Kafka does) but without SO_REUSEPORT:
/// fails if another process listens there.
fn check_port_free(addr: std::net::SocketAddr) -> Result<(), String> {
    let domain = if addr.is_ipv6() {
        socket2::Domain::IPV6
    } else {
        socket2::Domain::IPV4
    };
    let socket = socket2::Socket::new(domain, socket2::Type::STREAM, None)
        .map_err(|e| format!("cannot create a socket: {e}"))?;
    socket
        .set_reuse_address(true)
        .map_err(|e| format!("SO_REUSEADDR: {e}"))?;
    socket
        .bind(&addr.into())
        .and_then(|_| socket.listen(1))
        .map_err(|e| format!("cannot listen on {addr}: {e}"))
}

/// CPUs this process may run on (respects `taskset`).
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity fills it for this process.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return vec![0];
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|cpu| libc::CPU_ISSET(*cpu, &set))
            .collect()
    }
}

fn stop_signal_set() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data initialised by sigemptyset.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        set
    }
}

/// Blocks SIGINT/SIGTERM in this thread and every thread spawned after, so that only the main
/// thread's `sigtimedwait` receives them.
fn block_stop_signals() {
    let set = stop_signal_set();
    // SAFETY: valid signal set; changes only this thread's mask.
    unsafe {
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

/// Waits for SIGINT/SIGTERM (or for every core to have exited on its own), then raises `stop`.
fn wait_for_stop(life: &Lifecycle) {
    let set = stop_signal_set();
    let timeout = libc::timespec {
        tv_sec: 0,
        tv_nsec: 200_000_000,
    };
    loop {
        if life.running.load(Ordering::SeqCst) == 0 || life.stop.load(Ordering::SeqCst) {
            break;
        }
        // SAFETY: valid set and timeout; a null info pointer is allowed.
        let signal = unsafe { libc::sigtimedwait(&set, std::ptr::null_mut(), &timeout) };
        if signal == libc::SIGINT || signal == libc::SIGTERM {
            eprintln!("sluice: stopping (signal {signal})");
            break;
        }
    }
    life.stop.store(true, Ordering::SeqCst);
}
