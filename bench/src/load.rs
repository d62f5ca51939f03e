//! The produce (and optionally consume) load, its measurements and the report.
//!
//! One process runs `--producers` librdkafka producer instances (threads) and, with `--consume`,
//! one consumer. With `--processes N` the process becomes a parent: it creates the topic and
//! starts N children of the sluice-bench executable, each owning the partitions `p % N == i`
//! (see [`crate::processes`]), and merges what they measured into one report.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::ClientContext;

pub use crate::report::{histogram, Percentiles, Report, CURVE_QUANTILES};
use crate::{processes, procfs};

pub const USAGE: &str = "usage: sluice-bench [run] --bootstrap HOST:PORT [--topic T] [--partitions N] \
[--record-bytes N] [--client librdkafka|native] [--acks 0|1|all] [--linger-ms N] [--batch-bytes N] [--compression none|gzip|snappy|lz4|zstd] \
[--rate-mb MB/s (0 = max)] [--seconds N] [--warmup-seconds N] [--producers N (per process)] [--idempotence] [--transactions RECORDS_PER_TXN] \
[--processes N (load-generator processes, partitions split between them)] [--consume] [--pid PID[,PID...]] \
[--keys N (records keyed by their sequence modulo N)] [--topic-config KEY=VALUE]... [--replication-factor N] \
[--json FILE] [--charts PREFIX] [--catch-up-mb N [--drop-caches]] [--workload FILE] \
[--plant loss|duplicate (harness self-test)]";

/// Environment variable naming the sluice-bench executable the children of a multi-process run
/// execute (default: this executable); tests running inside a test binary point it at the real
/// one.
pub const BENCH_BIN_ENV: &str = "SLUICE_BENCH_BIN";

/// Replaces `--workload FILE` by the flags the file holds: one `key = value` (or a bare `key`
/// for a switch) per line, `#` comments, the keys being the flag names without `--`. Flags after
/// `--workload` on the command line override the file.
pub(crate) fn expand_workloads(args: &[String]) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        if arg != "--workload" {
            out.push(arg.clone());
            continue;
        }
        let path = it.next().ok_or("--workload needs a file")?;
        let text = std::fs::read_to_string(path).map_err(|e| format!("workload {path}: {e}"))?;
        for line in text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
        {
            match line.split_once('=') {
                Some((k, v)) => {
                    out.push(format!("--{}", k.trim()));
                    out.push(v.trim().to_string());
                }
                None => out.push(format!("--{line}")),
            }
        }
    }
    Ok(out)
}

#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    pub bootstrap: String,
    pub topic: String,
    pub partitions: i32,
    pub record_bytes: usize,
    pub acks: String,
    pub linger_ms: u64,
    pub batch_bytes: usize,
    pub compression: String,
    pub rate_mb: f64,
    pub seconds: u64,
    pub warmup_seconds: u64,
    pub consume: bool,
    pub producers: usize,
    /// The broker processes (a cluster has several): CPU and memory are summed over them.
    pub pids: Vec<u32>,
    /// Replicas of the topic the run creates.
    pub replication_factor: i32,
    pub json: Option<String>,
    /// Harness self-test: deliberately lose or duplicate one record; the consumer check must
    /// catch it.
    pub plant: Option<Plant>,
    /// Write `PREFIX-throughput.svg` and `PREFIX-latency.svg`.
    pub charts: Option<String>,
    /// Catch-up read workload: produce this many MB first, then measure consumers draining the
    /// backlog from the beginning.
    pub catch_up_mb: Option<u64>,
    /// Before the catch-up read, drop the kernel's page cache (root) so the read is cold for
    /// every broker alike.
    pub drop_caches: bool,
    /// librdkafka's idempotent producer (InitProducerId, sequence numbers): what Java and
    /// franz-go producers do by default.
    pub idempotence: bool,
    /// Transactional producers committing every this many records (`--transactions N`), read
    /// with isolation.level=read_committed.
    pub transaction_records: Option<u64>,
    /// Load-generator processes; each runs `producers` producers (and a consumer with
    /// `consume`) for its share of the partitions and of `rate_mb` (in proportion to its
    /// partitions: `rate_mb / processes` when they divide evenly).
    pub processes: usize,
    /// Set only in a child of a multi-process run (the hidden flag `--slice I/N`): this process
    /// is child I of N and owns the partitions `p % N == I`.
    pub slice: Option<Slice>,
    /// The executable the children of a multi-process run execute; default: the environment
    /// variable [`BENCH_BIN_ENV`], else this executable.
    pub bench_bin: Option<PathBuf>,
    /// Key each record with its partition sequence number modulo this (8 bytes, big-endian), so
    /// a compacted topic has this many live keys per partition; None: no keys.
    pub keys: Option<u64>,
    /// Configs of the topic the run creates (`--topic-config cleanup.policy=compact`).
    pub topic_configs: Vec<(String, String)>,
    /// The producers' client: librdkafka (the default), or sluice-bench's own producer (see
    /// [`crate::native`]), which needs far less CPU per record.
    pub native: bool,
}

/// One load-generator process's share of a multi-process run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slice {
    pub index: usize,
    pub count: usize,
}

impl Slice {
    /// The whole workload: one process owning every partition.
    pub const WHOLE: Slice = Slice { index: 0, count: 1 };

    /// Parses `I/N` with `I < N`.
    pub fn parse(text: &str) -> Result<Slice, String> {
        let bad = || format!("--slice I/N with I < N, not {text}");
        let (index, count) = text.split_once('/').ok_or_else(bad)?;
        let slice = Slice {
            index: index.parse().map_err(|_| bad())?,
            count: count.parse().map_err(|_| bad())?,
        };
        if slice.index >= slice.count {
            return Err(bad());
        }
        Ok(slice)
    }

    /// The partitions this process produces to and consumes from.
    pub fn partitions(&self, partitions: i32) -> Vec<i32> {
        (0..partitions)
            .filter(|p| *p as usize % self.count == self.index)
            .collect()
    }

    /// A short description of [`Slice::partitions`] for messages.
    pub fn describe(&self, partitions: i32) -> String {
        let mine = self.partitions(partitions);
        if mine.len() <= 8 {
            let list: Vec<String> = mine.iter().map(i32::to_string).collect();
            format!("partitions {}", list.join(", "))
        } else {
            format!("partitions p % {} == {}", self.count, self.index)
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plant {
    /// Skip one sequence number (a record the consumer never sees).
    Loss,
    /// Send one record twice.
    Duplicate,
}

/// Set by SIGINT/SIGTERM: stop producing, drain, and still write the report.
pub static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Ctrl-C (or SIGTERM) ends the run early; the partial report is still written.
pub fn install_signal_handlers() {
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
}

impl Options {
    pub fn parse(args: &[String]) -> Result<Options, String> {
        let args = expand_workloads(args)?;
        let args = &args[..];
        let mut o = Options {
            bootstrap: String::new(),
            topic: format!("sluice-bench-{}", std::process::id()),
            partitions: 8,
            record_bytes: 1024,
            acks: "all".into(),
            linger_ms: 5,
            batch_bytes: 1 << 20,
            compression: "none".into(),
            rate_mb: 0.0,
            seconds: 20,
            warmup_seconds: 3,
            consume: false,
            producers: 1,
            pids: Vec::new(),
            replication_factor: 1,
            json: None,
            plant: None,
            charts: None,
            catch_up_mb: None,
            drop_caches: false,
            idempotence: false,
            transaction_records: None,
            processes: 1,
            slice: None,
            bench_bin: None,
            keys: None,
            topic_configs: Vec::new(),
            native: false,
        };
        let mut it = args.iter();
        while let Some(flag) = it.next() {
            let mut value = || {
                it.next()
                    .cloned()
                    .ok_or_else(|| format!("{flag} needs a value"))
            };
            let num = |v: String| {
                v.parse::<f64>()
                    .map_err(|_| format!("{flag}: not a number"))
            };
            match flag.as_str() {
                "--bootstrap" => o.bootstrap = value()?,
                "--topic" => o.topic = value()?,
                "--partitions" => o.partitions = num(value()?)? as i32,
                "--record-bytes" => o.record_bytes = num(value()?)? as usize,
                "--acks" => o.acks = value()?,
                "--linger-ms" => o.linger_ms = num(value()?)? as u64,
                "--batch-bytes" => o.batch_bytes = num(value()?)? as usize,
                "--compression" => o.compression = value()?,
                "--rate-mb" => o.rate_mb = num(value()?)?,
                "--seconds" => o.seconds = num(value()?)? as u64,
                "--warmup-seconds" => o.warmup_seconds = num(value()?)? as u64,
                "--consume" => o.consume = true,
                "--producers" => o.producers = num(value()?)? as usize,
                "--pid" => {
                    o.pids = value()?
                        .split(',')
                        .map(|p| num(p.to_string()).map(|n| n as u32))
                        .collect::<Result<_, _>>()?
                }
                "--replication-factor" => o.replication_factor = num(value()?)? as i32,
                "--json" => o.json = Some(value()?),
                "--charts" => o.charts = Some(value()?),
                "--catch-up-mb" => o.catch_up_mb = Some(num(value()?)? as u64),
                "--drop-caches" => o.drop_caches = true,
                "--idempotence" => o.idempotence = true,
                "--transactions" => {
                    let n = num(value()?)? as u64;
                    if n == 0 {
                        return Err("--transactions: records per transaction, at least 1".into());
                    }
                    o.transaction_records = Some(n);
                }
                "--processes" => o.processes = num(value()?)? as usize,
                "--keys" => {
                    let n = num(value()?)? as u64;
                    if n == 0 {
                        return Err("--keys: how many distinct keys, at least 1".into());
                    }
                    o.keys = Some(n);
                }
                "--topic-config" => {
                    let pair = value()?;
                    let (k, v) = pair
                        .split_once('=')
                        .ok_or_else(|| format!("--topic-config KEY=VALUE, not {pair}"))?;
                    // A later setting of the same key (on the command line after --workload)
                    // replaces the earlier one.
                    o.topic_configs.retain(|(key, _)| key != k.trim());
                    o.topic_configs
                        .push((k.trim().to_string(), v.trim().to_string()));
                }
                "--slice" => o.slice = Some(Slice::parse(&value()?)?),
                "--client" => {
                    o.native = match value()?.as_str() {
                        "librdkafka" => false,
                        "native" => true,
                        other => return Err(format!("--client librdkafka|native, not {other}")),
                    }
                }
                "--plant" => {
                    o.plant = Some(match value()?.as_str() {
                        "loss" => Plant::Loss,
                        "duplicate" => Plant::Duplicate,
                        other => return Err(format!("--plant loss|duplicate, not {other}")),
                    })
                }
                other => return Err(format!("unknown flag {other}")),
            }
        }
        if o.bootstrap.is_empty() {
            return Err("--bootstrap is required".into());
        }
        if o.record_bytes < 16 {
            return Err("--record-bytes must be at least 16 (timestamp and sequence)".into());
        }
        if o.partitions < 1 {
            return Err("--partitions must be at least 1".into());
        }
        if o.processes < 1 || o.processes > o.partitions as usize {
            return Err(format!(
                "--processes must be between 1 and the number of partitions ({}), not {}",
                o.partitions, o.processes
            ));
        }
        if o.processes > 1 && o.catch_up_mb.is_some() {
            return Err("--catch-up-mb runs in one process: no --processes".into());
        }
        if o.keys.is_some() && o.catch_up_mb.is_some() {
            return Err(
                "--keys is for live runs: a catch-up read checks every record, which \
                        compaction may remove"
                    .into(),
            );
        }
        if o.native
            && (o.idempotence
                || o.transaction_records.is_some()
                || o.compression != "none"
                || o.catch_up_mb.is_some())
        {
            return Err(
                "--client native sends plain batches: no --idempotence, --transactions, \
                        --compression or --catch-up-mb"
                    .into(),
            );
        }
        if o.processes > 1 && o.slice.is_some() {
            return Err("--slice is a child's flag: no --processes with it".into());
        }
        Ok(o)
    }

    /// The command line of child `slice` of a multi-process run: the workload's flags (not the
    /// parent's outputs: the parent measures the broker and writes the report) and `--slice`.
    pub fn child_args(&self, slice: Slice) -> Vec<String> {
        let mut args: Vec<String> = [
            ("--bootstrap", self.bootstrap.clone()),
            ("--topic", self.topic.clone()),
            ("--partitions", self.partitions.to_string()),
            ("--replication-factor", self.replication_factor.to_string()),
            ("--record-bytes", self.record_bytes.to_string()),
            ("--acks", self.acks.clone()),
            ("--linger-ms", self.linger_ms.to_string()),
            ("--batch-bytes", self.batch_bytes.to_string()),
            ("--compression", self.compression.clone()),
            ("--rate-mb", self.rate_mb.to_string()),
            ("--seconds", self.seconds.to_string()),
            ("--warmup-seconds", self.warmup_seconds.to_string()),
            ("--producers", self.producers.to_string()),
            ("--slice", format!("{}/{}", slice.index, slice.count)),
        ]
        .into_iter()
        .flat_map(|(flag, value)| [flag.to_string(), value])
        .collect();
        if self.consume {
            args.push("--consume".into());
        }
        if self.native {
            args.extend(["--client".to_string(), "native".to_string()]);
        }
        if self.idempotence {
            args.push("--idempotence".into());
        }
        if let Some(n) = self.transaction_records {
            args.push("--transactions".into());
            args.push(n.to_string());
        }
        if let Some(n) = self.keys {
            args.push("--keys".into());
            args.push(n.to_string());
        }
        for (k, v) in &self.topic_configs {
            args.push("--topic-config".into());
            args.push(format!("{k}={v}"));
        }
        if let Some(plant) = self.plant {
            args.push("--plant".into());
            args.push(
                match plant {
                    Plant::Loss => "loss",
                    Plant::Duplicate => "duplicate",
                }
                .into(),
            );
        }
        args
    }

    /// This process's share of the workload.
    pub fn slice(&self) -> Slice {
        self.slice.unwrap_or(Slice::WHOLE)
    }
}

/// Shared between the send loop and librdkafka's delivery thread.
pub(crate) struct Stats {
    pub(crate) measuring: AtomicBool,
    pub(crate) base: Instant,
    pub(crate) acked: AtomicU64,
    pub(crate) acked_bytes: AtomicU64,
    /// Payload bytes consumed while measuring.
    consumed_bytes: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) publish: Mutex<Histogram<u64>>,
    pub(crate) first_error: Mutex<Option<String>>,
}

struct Context {
    stats: Arc<Stats>,
    record_bytes: u64,
}

impl ClientContext for Context {}

impl ProducerContext for Context {
    type DeliveryOpaque = Box<u64>;

    fn delivery(&self, result: &DeliveryResult<'_>, sent_nanos: Self::DeliveryOpaque) {
        let stats = &self.stats;
        match result {
            Ok(_) => {
                if stats.measuring.load(Ordering::Relaxed) {
                    let now = stats.base.elapsed().as_nanos() as u64;
                    let micros = now.saturating_sub(*sent_nanos) / 1000;
                    if let Ok(mut h) = stats.publish.lock() {
                        let _ = h.record(micros.max(1));
                    }
                    stats.acked.fetch_add(1, Ordering::Relaxed);
                    stats
                        .acked_bytes
                        .fetch_add(self.record_bytes, Ordering::Relaxed);
                }
            }
            Err((e, _)) => {
                stats.failed.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut first) = stats.first_error.lock() {
                    first.get_or_insert_with(|| e.to_string());
                }
            }
        }
    }
}

fn client_config(o: &Options) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &o.bootstrap);
    c
}

pub(crate) fn ensure_topic(o: &Options) -> Result<(), String> {
    let admin: AdminClient<DefaultClientContext> = client_config(o)
        .create()
        .map_err(|e| format!("admin client: {e}"))?;
    let mut topic = NewTopic::new(
        &o.topic,
        o.partitions,
        TopicReplication::Fixed(o.replication_factor),
    );
    for (k, v) in &o.topic_configs {
        topic = topic.set(k, v);
    }
    let results = futures::executor::block_on(admin.create_topics(&[topic], &AdminOptions::new()))
        .map_err(|e| format!("create topic: {e}"))?;
    for r in results {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, e)) => return Err(format!("create topic {t}: {e}")),
        }
    }
    Ok(())
}

pub(crate) fn sleep_unless_interrupted(d: Duration) {
    let end = Instant::now() + d;
    while Instant::now() < end && !INTERRUPTED.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(50).min(end - Instant::now()));
    }
}

/// One progress line a second on stderr, when it is a terminal; `throughput` is the last
/// second's MB and the bytes acknowledged so far, when this process knows them.
pub(crate) fn progress(elapsed_s: u64, total_s: u64, throughput: Option<(f64, u64)>) {
    use std::io::{IsTerminal, Write};
    let mut err = std::io::stderr();
    if err.is_terminal() {
        let done = (elapsed_s * 30 / total_s.max(1)).min(30) as usize;
        let figures = match throughput {
            Some((mb_last_second, acked_bytes)) => format!(
                "  {mb_last_second:7.1} MB/s  {:.2} GB acked",
                acked_bytes as f64 / 1e9
            ),
            None => String::new(),
        };
        let _ = write!(
            err,
            "\r[{}{}] {elapsed_s}/{total_s} s{figures}  (Ctrl-C stops, report still written)",
            "#".repeat(done),
            " ".repeat(30 - done),
        );
        let _ = err.flush();
        if elapsed_s >= total_s {
            let _ = writeln!(err);
        }
    }
}

/// A transactional producer's transactions (`--transactions N`): one is open from the start,
/// committed and replaced every N records, the last committed at the end. Nothing for a
/// producer without transactions.
struct Transactions {
    records: Option<u64>,
    in_transaction: u64,
}

impl Transactions {
    fn start(producer: &ThreadedProducer<Context>, records: Option<u64>) -> Result<Self, String> {
        if records.is_some() {
            producer
                .init_transactions(Duration::from_secs(30))
                .map_err(|e| format!("init_transactions: {e}"))?;
            producer
                .begin_transaction()
                .map_err(|e| format!("begin_transaction: {e}"))?;
        }
        Ok(Transactions {
            records,
            in_transaction: 0,
        })
    }

    /// One more record sent in the open transaction.
    fn sent(&mut self, producer: &ThreadedProducer<Context>) -> Result<(), String> {
        self.in_transaction += 1;
        if self.records.is_some_and(|n| self.in_transaction >= n) {
            producer
                .commit_transaction(Duration::from_secs(60))
                .map_err(|e| format!("commit_transaction: {e}"))?;
            producer
                .begin_transaction()
                .map_err(|e| format!("begin_transaction: {e}"))?;
            self.in_transaction = 0;
        }
        Ok(())
    }

    fn finish(&self, producer: &ThreadedProducer<Context>) -> Result<(), String> {
        if self.records.is_some() {
            producer
                .commit_transaction(Duration::from_secs(60))
                .map_err(|e| format!("commit_transaction: {e}"))?;
        }
        Ok(())
    }
}

/// A librdkafka producer configured from the workload, reporting deliveries into `stats`;
/// transactional (and so idempotent) with a `transactional_id`.
fn new_producer(
    o: &Options,
    stats: &Arc<Stats>,
    transactional_id: Option<&str>,
) -> Result<ThreadedProducer<Context>, String> {
    let mut config = client_config(o);
    if let Some(id) = transactional_id {
        config.set("transactional.id", id);
    }
    config
        .set("acks", &o.acks)
        .set("linger.ms", o.linger_ms.to_string())
        .set("batch.size", o.batch_bytes.to_string())
        .set("compression.codec", &o.compression)
        .set("queue.buffering.max.kbytes", "1048576")
        .set("queue.buffering.max.messages", "1000000")
        .set(
            "enable.idempotence",
            (o.idempotence || transactional_id.is_some()).to_string(),
        )
        .set("message.timeout.ms", "60000")
        .create_with_context(Context {
            stats: stats.clone(),
            record_bytes: o.record_bytes as u64,
        })
        .map_err(|e| format!("producer: {e}"))
}

/// Fresh, empty delivery statistics.
fn new_stats() -> Arc<Stats> {
    Arc::new(Stats {
        measuring: AtomicBool::new(false),
        base: Instant::now(),
        acked: AtomicU64::new(0),
        acked_bytes: AtomicU64::new(0),
        consumed_bytes: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        publish: Mutex::new(histogram()),
        first_error: Mutex::new(None),
    })
}

/// How this process's partitions are split between its producers: producer k sends to every
/// `producers`-th of them, starting at the k-th (at most one producer per partition).
pub fn producer_shares(mine: &[i32], producers: usize) -> Vec<Vec<i32>> {
    let producers = producers.clamp(1, mine.len().max(1));
    (0..producers)
        .map(|k| mine.iter().copied().skip(k).step_by(producers).collect())
        .collect()
}

/// A producer's share of `--rate-mb`: in proportion to its partitions, so that every partition
/// gets the same rate however the partitions are split between processes and producers (with N
/// processes dividing the partitions evenly, each process produces rate / N). 0: as fast as
/// possible.
fn producer_bytes_per_second(o: &Options, partitions: usize) -> f64 {
    o.rate_mb * 1_000_000.0 * partitions as f64 / o.partitions.max(1) as f64
}

/// What one producer thread does.
pub(crate) struct ProducerShare {
    pub(crate) partitions: Vec<i32>,
    pub(crate) bytes_per_second: f64,
    /// Harness self-test: this producer plants `Options::plant` (exactly one producer of one
    /// process does, on its first partition).
    pub(crate) plants: bool,
}

/// One producer (its own librdkafka instance, connection and threads) sending to its partitions
/// until `total` has passed, then flushing. Each partition's records carry a sequence number 0,
/// 1, 2, ... so the consumer can check order and uniqueness.
fn produce_loop(
    o: &Options,
    share: &ProducerShare,
    stats: &Arc<Stats>,
    start: Instant,
    total: Duration,
) -> Result<u64, String> {
    let mine = &share.partitions;
    // Unique per producer: each producer of a run has its own partitions.
    let transactional_id = o
        .transaction_records
        .map(|_| format!("sluice-bench-{}-{}", std::process::id(), mine[0]));
    let producer = new_producer(o, stats, transactional_id.as_deref())?;
    let mut transactions = Transactions::start(&producer, o.transaction_records)?;
    let mut sequence = vec![0u64; mine.len()];
    let mut payload: Vec<u8> = (0..o.record_bytes)
        .map(|i| (i * 7919 % 251) as u8)
        .collect();
    let mut sent: u64 = 0;
    let mut planted = false;
    while start.elapsed() < total && !INTERRUPTED.load(Ordering::Relaxed) {
        if share.bytes_per_second > 0.0 {
            let due = (start.elapsed().as_secs_f64() * share.bytes_per_second
                / o.record_bytes as f64) as u64;
            if sent >= due {
                std::thread::sleep(Duration::from_micros(200));
                continue;
            }
        }
        let slot = (sent % mine.len() as u64) as usize;
        let now = stats.base.elapsed().as_nanos() as u64;
        payload[..8].copy_from_slice(&now.to_be_bytes());
        payload[8..16].copy_from_slice(&sequence[slot].to_be_bytes());
        let key = o.keys.map(|n| (sequence[slot] % n).to_be_bytes());
        let mut record =
            BaseRecord::<[u8], [u8], Box<u64>>::with_opaque_to(&o.topic, Box::new(now))
                .partition(mine[slot])
                .payload(&payload[..]);
        if let Some(key) = &key {
            record = record.key(&key[..]);
        }
        match producer.send(record) {
            Ok(()) => {
                sent += 1;
                sequence[slot] += 1;
                transactions.sent(&producer)?;
                if share.plants && slot == 0 && !planted && sequence[slot] == 100 {
                    planted = true;
                    match o.plant {
                        Some(Plant::Loss) => sequence[slot] += 1,
                        Some(Plant::Duplicate) => sequence[slot] -= 1,
                        None => {}
                    }
                }
            }
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                std::thread::sleep(Duration::from_micros(100));
            }
            Err((e, _)) => return Err(format!("send: {e}")),
        }
    }
    transactions.finish(&producer)?;
    producer
        .flush(Duration::from_secs(60))
        .map_err(|e| format!("flush: {e}"))?;
    Ok(sent)
}

/// Runs the workload: in this process, or with `--processes N` in N children whose reports are
/// merged. A child (`--slice`) does not create the topic (its parent did) and starts producing
/// only when its parent says so, so that all children measure the same window.
pub fn run(o: &Options) -> Result<Report, String> {
    if o.processes > 1 {
        return processes::run(o);
    }
    if o.slice.is_none() {
        ensure_topic(o)?;
    }
    if let Some(mb) = o.catch_up_mb {
        return catch_up(o, mb);
    }
    let slice = o.slice();
    let mine = slice.partitions(o.partitions);
    if mine.is_empty() {
        return Err(format!("no partitions for process {}", slice.index));
    }
    let stats = new_stats();
    let consumer = if o.consume {
        Some(start_consumer(o, &mine, stats.clone())?)
    } else {
        None
    };
    if o.slice.is_some() {
        processes::ready_and_wait_for_go()?;
    }
    let start = Instant::now();
    let warmup = Duration::from_secs(o.warmup_seconds);
    let total = warmup + Duration::from_secs(o.seconds);
    let threads: Vec<_> = producer_shares(&mine, o.producers)
        .into_iter()
        .enumerate()
        .map(|(k, partitions)| {
            let share = ProducerShare {
                bytes_per_second: producer_bytes_per_second(o, partitions.len()),
                partitions,
                plants: slice.index == 0 && k == 0,
            };
            let (o, stats) = (o.clone(), stats.clone());
            std::thread::spawn(move || match o.native {
                true => crate::native::produce_loop(&o, &share, &stats, start, total),
                false => produce_loop(&o, &share, &stats, start, total),
            })
        })
        .collect();
    sleep_unless_interrupted(warmup);
    stats.measuring.store(true, Ordering::SeqCst);
    let measure_start = Instant::now();
    let cpu_before = procfs::sample_all(&o.pids);
    let mut per_second_mb = Vec::new();
    let mut last_bytes = 0u64;
    while start.elapsed() < total && !INTERRUPTED.load(Ordering::Relaxed) {
        sleep_unless_interrupted(Duration::from_secs(1).min(total.saturating_sub(start.elapsed())));
        let bytes = stats.acked_bytes.load(Ordering::Relaxed);
        let mb = (bytes - last_bytes) as f64 / 1e6;
        last_bytes = bytes;
        per_second_mb.push(mb);
        if o.slice.is_none() {
            progress(
                measure_start.elapsed().as_secs(),
                o.seconds,
                Some((mb, bytes)),
            );
        }
    }
    let measured = measure_start.elapsed().as_secs_f64();
    stats.measuring.store(false, Ordering::SeqCst);
    let cpu_after = procfs::sample_all(&o.pids);
    let mut sent = 0u64;
    for t in threads {
        sent += t
            .join()
            .map_err(|_| "producer thread panicked".to_string())??;
    }
    // Every send was acknowledged or failed once the producers flushed; the consumer is told how
    // many were sent and not failed (warm-up included).
    let delivered = sent - stats.failed.load(Ordering::SeqCst);
    let e2e = consumer.map(|c| c.finish(delivered));
    let acked = stats.acked.load(Ordering::SeqCst);
    let acked_bytes = stats.acked_bytes.load(Ordering::SeqCst);
    let failed = stats.failed.load(Ordering::SeqCst);
    let publish_histogram = stats
        .publish
        .lock()
        .map(|h| h.clone())
        .unwrap_or_else(|_| histogram());
    let cpu = match (&cpu_before, &cpu_after) {
        (Some(a), Some(b)) => Some(b.cpu_seconds - a.cpu_seconds),
        _ => None,
    };
    let mut verified = failed == 0;
    let mut verification = if failed == 0 {
        "every send was acknowledged".to_string()
    } else {
        format!(
            "{failed} sends failed (first: {})",
            stats
                .first_error
                .lock()
                .ok()
                .and_then(|e| e.clone())
                .unwrap_or_default()
        )
    };
    let e2e_histogram = match e2e {
        None => None,
        Some(Ok(h)) => {
            verification.push_str("; every record consumed exactly once, in order per partition");
            Some(h)
        }
        Some(Err(why)) => {
            verified = false;
            verification.push_str(&format!("; consumer check failed: {why}"));
            None
        }
    };
    Ok(Report {
        per_second_mb,
        interrupted: INTERRUPTED.load(Ordering::SeqCst),
        options: o.clone(),
        measured_seconds: measured,
        acked,
        acked_bytes,
        failed,
        mb_per_second: acked_bytes as f64 / measured.max(1e-9) / 1e6,
        records_per_second: acked as f64 / measured.max(1e-9),
        publish_us: Percentiles::of(&publish_histogram),
        e2e_us: e2e_histogram.as_ref().map(Percentiles::of),
        publish_histogram,
        e2e_histogram,
        broker_cpu_seconds: cpu,
        broker_cpu_seconds_per_gb: cpu.map(|c| c / (acked_bytes as f64 / 1e9).max(1e-9)),
        broker_peak_rss_bytes: cpu_after.as_ref().map(|s| s.peak_rss_bytes),
        acked_per_process: vec![acked],
        consumed_bytes: o
            .consume
            .then(|| stats.consumed_bytes.load(Ordering::SeqCst)),
        verified,
        verification,
    })
}

/// The catch-up read workload: build a backlog of `mb` MB (not measured), optionally drop the
/// page cache, then measure one consumer reading every partition from the beginning until the
/// whole backlog is back, checking count and per-partition order. With `--transactions N` the
/// backlog is written in committed transactions of N records and read with
/// isolation.level=read_committed (the read_committed fetch path: last stable offset, aborted
/// transaction lists, markers skipped by the client).
fn catch_up(o: &Options, mb: u64) -> Result<Report, String> {
    let stats = new_stats();
    let records = mb * 1_000_000 / o.record_bytes as u64;
    let transactional_id = o
        .transaction_records
        .map(|_| format!("sluice-bench-catch-up-{}", std::process::id()));
    let producer = new_producer(o, &stats, transactional_id.as_deref())?;
    let mut transactions = Transactions::start(&producer, o.transaction_records)?;
    let mut sequence = vec![0u64; o.partitions as usize];
    let mut payload: Vec<u8> = (0..o.record_bytes)
        .map(|i| (i * 7919 % 251) as u8)
        .collect();
    let mut sent = 0u64;
    while sent < records && !INTERRUPTED.load(Ordering::Relaxed) {
        let p = (sent % o.partitions as u64) as usize;
        payload[8..16].copy_from_slice(&sequence[p].to_be_bytes());
        let record = BaseRecord::<(), [u8], Box<u64>>::with_opaque_to(&o.topic, Box::new(0))
            .partition(p as i32)
            .payload(&payload[..]);
        match producer.send(record) {
            Ok(()) => {
                sent += 1;
                sequence[p] += 1;
                transactions.sent(&producer)?;
            }
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                std::thread::sleep(Duration::from_micros(200));
            }
            Err((e, _)) => return Err(format!("send: {e}")),
        }
    }
    transactions.finish(&producer)?;
    producer
        .flush(Duration::from_secs(120))
        .map_err(|e| format!("flush: {e}"))?;
    drop(producer);
    if o.drop_caches {
        // SAFETY: plain libc call with no preconditions.
        unsafe { libc::sync() };
        std::fs::write("/proc/sys/vm/drop_caches", "3")
            .map_err(|e| format!("--drop-caches needs root: {e}"))?;
    }
    let consumer: BaseConsumer = client_config(o)
        .set("group.id", "sluice-bench-catch-up")
        .set("enable.auto.commit", "false")
        .set(
            "isolation.level",
            if o.transaction_records.is_some() {
                "read_committed"
            } else {
                "read_uncommitted"
            },
        )
        .set("fetch.max.bytes", "52428800")
        .set("max.partition.fetch.bytes", "4194304")
        .create()
        .map_err(|e| format!("consumer: {e}"))?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..o.partitions {
        tpl.add_partition_offset(&o.topic, p, Offset::Beginning)
            .map_err(|e| e.to_string())?;
    }
    consumer.assign(&tpl).map_err(|e| format!("assign: {e}"))?;
    let cpu_before = procfs::sample_all(&o.pids);
    let start = Instant::now();
    let mut next = vec![0u64; o.partitions as usize];
    let mut received = 0u64;
    let mut bytes = 0u64;
    let mut per_second_mb = Vec::new();
    let mut second_bytes = 0u64;
    let mut second_start = Instant::now();
    let mut failure = None;
    let mut idle_since: Option<Instant> = None;
    while received < sent && !INTERRUPTED.load(Ordering::Relaxed) {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                idle_since = None;
                let payload = m.payload().unwrap_or_default();
                let seq = payload
                    .get(8..16)
                    .map(|b| u64::from_be_bytes(b.try_into().unwrap_or_default()));
                let p = m.partition() as usize;
                if failure.is_none() && seq != Some(next[p]) {
                    failure = Some(format!(
                        "partition {p}: expected sequence {} got {seq:?}",
                        next[p]
                    ));
                }
                next[p] += 1;
                received += 1;
                bytes += payload.len() as u64;
                second_bytes += payload.len() as u64;
            }
            Some(Err(e)) => return Err(format!("consume: {e}")),
            None => {
                if idle_since.get_or_insert_with(Instant::now).elapsed() > Duration::from_secs(10) {
                    break;
                }
            }
        }
        if second_start.elapsed() >= Duration::from_secs(1) {
            per_second_mb.push(second_bytes as f64 / 1e6);
            second_bytes = 0;
            second_start = Instant::now();
        }
    }
    let measured = start.elapsed().as_secs_f64();
    let cpu_after = procfs::sample_all(&o.pids);
    let cpu = match (&cpu_before, &cpu_after) {
        (Some(a), Some(b)) => Some(b.cpu_seconds - a.cpu_seconds),
        _ => None,
    };
    let verified = failure.is_none() && received == sent;
    let verification = match failure {
        Some(f) => f,
        None if received != sent => format!("read back {received} of {sent} records"),
        None => format!("catch-up read of {sent} records: all back, in order per partition"),
    };
    Ok(Report {
        per_second_mb,
        interrupted: INTERRUPTED.load(Ordering::SeqCst),
        options: o.clone(),
        measured_seconds: measured,
        acked: received,
        acked_bytes: bytes,
        failed: sent - received.min(sent),
        mb_per_second: bytes as f64 / measured.max(1e-9) / 1e6,
        records_per_second: received as f64 / measured.max(1e-9),
        publish_us: Percentiles::default(),
        e2e_us: None,
        publish_histogram: histogram(),
        e2e_histogram: None,
        broker_cpu_seconds: cpu,
        broker_cpu_seconds_per_gb: cpu.map(|c| c / (bytes as f64 / 1e9).max(1e-9)),
        broker_peak_rss_bytes: cpu_after.as_ref().map(|s| s.peak_rss_bytes),
        acked_per_process: vec![received],
        consumed_bytes: Some(bytes),
        verified,
        verification,
    })
}

struct ConsumerHandle {
    /// Records the consumer must receive; u64::MAX until the producer has finished.
    expected: Arc<AtomicU64>,
    thread: std::thread::JoinHandle<Result<Histogram<u64>, String>>,
}

/// A consumer of `mine` (this process's partitions) from their current ends, checking every
/// record's sequence number and recording end-to-end latency while measuring.
fn start_consumer(o: &Options, mine: &[i32], stats: Arc<Stats>) -> Result<ConsumerHandle, String> {
    let consumer: BaseConsumer = client_config(o)
        .set("group.id", "sluice-bench")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "5")
        .set("fetch.min.bytes", "1")
        // Only committed records count when the producers are transactional.
        .set("isolation.level", "read_committed")
        .create()
        .map_err(|e| format!("consumer: {e}"))?;
    let mut tpl = TopicPartitionList::new();
    for &p in mine {
        // A topic created a moment ago may not have a leader yet (Kafka): retry for a while.
        let deadline = Instant::now() + Duration::from_secs(30);
        let high = loop {
            match consumer.fetch_watermarks(&o.topic, p, Duration::from_secs(10)) {
                Ok((_, high)) => break high,
                Err(e) if Instant::now() >= deadline => return Err(format!("watermarks: {e}")),
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        };
        tpl.add_partition_offset(&o.topic, p, Offset::Offset(high))
            .map_err(|e| e.to_string())?;
    }
    consumer.assign(&tpl).map_err(|e| format!("assign: {e}"))?;
    let expected = Arc::new(AtomicU64::new(u64::MAX));
    let expected_count = expected.clone();
    let partitions = o.partitions as u64;
    let thread = std::thread::spawn(move || {
        let mut e2e = histogram();
        let mut next: Vec<u64> = vec![0; partitions as usize];
        let mut received = 0u64;
        let mut idle_since = None;
        loop {
            match consumer.poll(Duration::from_millis(100)) {
                Some(Ok(m)) => {
                    idle_since = None;
                    let payload = m.payload().unwrap_or_default();
                    if payload.len() < 16 {
                        return Err(format!("short record at offset {}", m.offset()));
                    }
                    let sent = u64::from_be_bytes(payload[..8].try_into().unwrap_or_default());
                    let seq = u64::from_be_bytes(payload[8..16].try_into().unwrap_or_default());
                    let p = m.partition() as usize;
                    if seq != next[p] {
                        return Err(format!(
                            "partition {p}: expected sequence {} got {seq} (loss, duplicate or reorder)",
                            next[p]
                        ));
                    }
                    next[p] += 1;
                    received += 1;
                    if stats.measuring.load(Ordering::Relaxed) {
                        let now = stats.base.elapsed().as_nanos() as u64;
                        let _ = e2e.record((now.saturating_sub(sent) / 1000).max(1));
                        stats
                            .consumed_bytes
                            .fetch_add(payload.len() as u64, Ordering::Relaxed);
                    }
                }
                Some(Err(e)) => return Err(format!("consume: {e}")),
                None => {
                    if expected_count.load(Ordering::SeqCst) != u64::MAX {
                        let since = *idle_since.get_or_insert_with(Instant::now);
                        if since.elapsed() > Duration::from_secs(10) {
                            break;
                        }
                    }
                }
            }
            if received >= expected_count.load(Ordering::SeqCst) {
                break;
            }
        }
        let want = expected_count.load(Ordering::SeqCst);
        if received != want {
            return Err(format!(
                "received {received} records, {want} were acknowledged"
            ));
        }
        Ok(e2e)
    });
    Ok(ConsumerHandle { expected, thread })
}

impl ConsumerHandle {
    /// Waits until every acknowledged record arrived (or 10 s of silence), checking the count.
    fn finish(self, acknowledged: u64) -> Result<Histogram<u64>, String> {
        self.expected.store(acknowledged, Ordering::SeqCst);
        self.thread
            .join()
            .map_err(|_| "consumer thread panicked".to_string())?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn slices_cover_every_partition_exactly_once() {
        for count in 1..=5usize {
            let mut owners = vec![0; 13];
            for index in 0..count {
                for p in (Slice { index, count }).partitions(13) {
                    assert_eq!(p as usize % count, index);
                    owners[p as usize] += 1;
                }
            }
            assert!(owners.iter().all(|n| *n == 1), "{count}: {owners:?}");
        }
        assert_eq!(Slice::WHOLE.partitions(3), vec![0, 1, 2]);
        assert_eq!(
            (Slice { index: 1, count: 2 }).describe(5),
            "partitions 1, 3"
        );
        assert_eq!(
            (Slice { index: 1, count: 2 }).describe(100),
            "partitions p % 2 == 1"
        );
    }

    #[test]
    fn producers_split_a_slice_without_overlap() {
        let mine = (Slice { index: 1, count: 2 }).partitions(10); // 1, 3, 5, 7, 9
        assert_eq!(producer_shares(&mine, 2), vec![vec![1, 5, 9], vec![3, 7]]);
        assert_eq!(
            producer_shares(&mine, 9).len(),
            5,
            "at most one per partition"
        );
        assert_eq!(producer_shares(&mine, 0), vec![mine.clone()]);
    }

    #[test]
    fn the_rate_is_shared_in_proportion_to_partitions() {
        let o = Options::parse(&args(&[
            "--bootstrap",
            "h:1",
            "--partitions",
            "4",
            "--rate-mb",
            "8",
        ]))
        .expect("options");
        assert_eq!(
            producer_bytes_per_second(&o, 4),
            8e6,
            "one process, one producer"
        );
        assert_eq!(
            producer_bytes_per_second(&o, 2),
            4e6,
            "2 processes: rate / 2 each"
        );
        assert_eq!(
            producer_bytes_per_second(&o, 1),
            2e6,
            "2 MB/s per partition everywhere"
        );
        let sum: f64 = (0..3)
            .flat_map(|i| producer_shares(&Slice { index: i, count: 3 }.partitions(4), 2))
            .map(|share| producer_bytes_per_second(&o, share.len()))
            .sum();
        assert_eq!(sum, 8e6, "the shares add up to the rate");
    }

    #[test]
    fn idempotence_and_transactions_parse_and_reach_the_children() {
        let o = Options::parse(&args(&[
            "--bootstrap",
            "h:1",
            "--idempotence",
            "--transactions",
            "500",
        ]))
        .expect("parses");
        assert!(o.idempotence);
        assert_eq!(o.transaction_records, Some(500));
        let child = o.child_args(Slice { index: 0, count: 2 });
        assert!(child.iter().any(|a| a == "--idempotence"));
        let at = child
            .iter()
            .position(|a| a == "--transactions")
            .expect("passed on");
        assert_eq!(child[at + 1], "500");
        assert!(Options::parse(&args(&["--bootstrap", "h:1", "--transactions", "0"])).is_err());
        let plain = Options::parse(&args(&["--bootstrap", "h:1"])).expect("parses");
        assert!(!plain.idempotence && plain.transaction_records.is_none());
    }

    #[test]
    fn slice_flags_parse_and_reject_nonsense() {
        assert_eq!(Slice::parse("1/2"), Ok(Slice { index: 1, count: 2 }));
        for bad in ["2/2", "1", "a/2", "0/0", "-1/2"] {
            assert!(Slice::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_child_gets_the_workload_and_its_slice_and_nothing_of_the_parent() {
        let parent = Options::parse(&args(&[
            "--bootstrap",
            "h:1",
            "--topic",
            "t",
            "--partitions",
            "6",
            "--record-bytes",
            "100",
            "--acks",
            "1",
            "--linger-ms",
            "2",
            "--batch-bytes",
            "4096",
            "--compression",
            "lz4",
            "--rate-mb",
            "2.5",
            "--seconds",
            "7",
            "--warmup-seconds",
            "1",
            "--producers",
            "2",
            "--consume",
            "--plant",
            "loss",
            "--processes",
            "3",
            "--pid",
            "42",
            "--json",
            "x.json",
            "--charts",
            "c",
        ]))
        .expect("parent");
        let slice = Slice { index: 2, count: 3 };
        let child = Options::parse(&parent.child_args(slice)).expect("child");
        let expected = Options {
            processes: 1,
            slice: Some(slice),
            pids: Vec::new(),
            json: None,
            charts: None,
            ..parent.clone()
        };
        assert_eq!(child, expected);
        assert_eq!(child.slice(), slice);
    }

    #[test]
    fn processes_are_checked_against_the_workload() {
        let base = ["--bootstrap", "h:1", "--partitions", "2"];
        let with = |extra: &[&str]| {
            let mut a = args(&base);
            a.extend(args(extra));
            Options::parse(&a)
        };
        assert_eq!(with(&[]).expect("default").processes, 1);
        assert!(with(&["--processes", "2"]).is_ok());
        assert!(
            with(&["--processes", "3"]).is_err(),
            "more processes than partitions"
        );
        assert!(with(&["--processes", "0"]).is_err());
        assert!(with(&["--processes", "2", "--catch-up-mb", "1"]).is_err());
        assert!(with(&["--processes", "2", "--slice", "0/2"]).is_err());
    }
}
