//! The produce (and optionally consume) load, its measurements and the report.

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

use crate::procfs;

pub const USAGE: &str = "usage: sluice-bench --bootstrap HOST:PORT [--topic T] [--partitions N] \
[--record-bytes N] [--acks 0|1|all] [--linger-ms N] [--batch-bytes N] [--compression none|gzip|snappy|lz4|zstd] \
[--rate-mb MB/s (0 = max)] [--seconds N] [--warmup-seconds N] [--producers N] [--consume] [--pid PID] [--json FILE] [--charts PREFIX] [--catch-up-mb N [--drop-caches]] [--workload FILE] [--plant loss|duplicate (harness self-test)]";

/// Replaces `--workload FILE` by the flags the file holds: one `key = value` (or a bare `key`
/// for a switch) per line, `#` comments, the keys being the flag names without `--`. Flags after
/// `--workload` on the command line override the file.
fn expand_workloads(args: &[String]) -> Result<Vec<String>, String> {
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

#[derive(Debug, Clone)]
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
    pub pid: Option<u32>,
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
            pid: None,
            json: None,
            plant: None,
            charts: None,
            catch_up_mb: None,
            drop_caches: false,
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
                "--pid" => o.pid = Some(num(value()?)? as u32),
                "--json" => o.json = Some(value()?),
                "--charts" => o.charts = Some(value()?),
                "--catch-up-mb" => o.catch_up_mb = Some(num(value()?)? as u64),
                "--drop-caches" => o.drop_caches = true,
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
        Ok(o)
    }
}

/// Shared between the send loop and librdkafka's delivery thread.
struct Stats {
    measuring: AtomicBool,
    base: Instant,
    acked: AtomicU64,
    acked_bytes: AtomicU64,
    failed: AtomicU64,
    publish: Mutex<Histogram<u64>>,
    first_error: Mutex<Option<String>>,
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

pub struct Report {
    pub options: Options,
    /// Acknowledged MB in each second of the measured window (the throughput time series).
    pub per_second_mb: Vec<f64>,
    /// The run was cut short by Ctrl-C; the figures cover what was measured.
    pub interrupted: bool,
    pub measured_seconds: f64,
    pub acked: u64,
    pub failed: u64,
    pub mb_per_second: f64,
    pub records_per_second: f64,
    pub publish_us: Percentiles,
    pub e2e_us: Option<Percentiles>,
    pub broker_cpu_seconds: Option<f64>,
    pub broker_cpu_seconds_per_gb: Option<f64>,
    pub broker_peak_rss_bytes: Option<u64>,
    pub verified: bool,
    pub verification: String,
}

/// Quantiles at which the latency curve is sampled for the CDF chart.
pub const CURVE_QUANTILES: [f64; 12] = [
    0.0, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.995, 0.999, 0.9995, 0.9999, 1.0,
];

#[derive(Debug, Clone, Copy, Default)]
pub struct Percentiles {
    pub p50: u64,
    pub p99: u64,
    pub p999: u64,
    pub p9999: u64,
    pub max: u64,
    /// Latency (µs) at each of [`CURVE_QUANTILES`].
    pub curve: [u64; 12],
}

impl Percentiles {
    fn of(h: &Histogram<u64>) -> Percentiles {
        Percentiles {
            p50: h.value_at_quantile(0.5),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            p9999: h.value_at_quantile(0.9999),
            max: h.max(),
            curve: CURVE_QUANTILES.map(|q| h.value_at_quantile(q)),
        }
    }

    fn json(&self) -> String {
        format!(
            "{{\"p50\":{},\"p99\":{},\"p99_9\":{},\"p99_99\":{},\"max\":{}}}",
            self.p50, self.p99, self.p999, self.p9999, self.max
        )
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds")
}

fn client_config(o: &Options) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &o.bootstrap);
    c
}

fn ensure_topic(o: &Options) -> Result<(), String> {
    let admin: AdminClient<DefaultClientContext> = client_config(o)
        .create()
        .map_err(|e| format!("admin client: {e}"))?;
    let topic = NewTopic::new(&o.topic, o.partitions, TopicReplication::Fixed(1));
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

fn sleep_unless_interrupted(d: Duration) {
    let end = Instant::now() + d;
    while Instant::now() < end && !INTERRUPTED.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(50).min(end - Instant::now()));
    }
}

/// One progress line a second on stderr, when it is a terminal.
fn progress(elapsed_s: u64, total_s: u64, mb_last_second: f64, acked_bytes: u64) {
    use std::io::{IsTerminal, Write};
    let mut err = std::io::stderr();
    if err.is_terminal() {
        let done = (elapsed_s * 30 / total_s.max(1)).min(30) as usize;
        let _ = write!(
            err,
            "\r[{}{}] {elapsed_s}/{total_s} s  {mb_last_second:7.1} MB/s  {:.2} GB acked  (Ctrl-C stops, report still written)",
            "#".repeat(done),
            " ".repeat(30 - done),
            acked_bytes as f64 / 1e9
        );
        let _ = err.flush();
        if elapsed_s >= total_s {
            let _ = writeln!(err);
        }
    }
}

/// A librdkafka producer configured from the workload, reporting deliveries into `stats`.
fn new_producer(o: &Options, stats: &Arc<Stats>) -> Result<ThreadedProducer<Context>, String> {
    client_config(o)
        .set("acks", &o.acks)
        .set("linger.ms", o.linger_ms.to_string())
        .set("batch.size", o.batch_bytes.to_string())
        .set("compression.codec", &o.compression)
        .set("queue.buffering.max.kbytes", "1048576")
        .set("queue.buffering.max.messages", "1000000")
        .set("enable.idempotence", "false")
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
        failed: AtomicU64::new(0),
        publish: Mutex::new(histogram()),
        first_error: Mutex::new(None),
    })
}

/// One producer (its own librdkafka instance, connection and threads) sending to the partitions
/// `p` with `p % producers == index` until `total` has passed, then flushing. Each partition's
/// records carry a sequence number 0, 1, 2, ... so the consumer can check order and uniqueness.
fn produce_loop(
    o: &Options,
    index: usize,
    producers: usize,
    stats: &Arc<Stats>,
    start: Instant,
    total: Duration,
) -> Result<u64, String> {
    let producer = new_producer(o, stats)?;
    let mine: Vec<i32> = (0..o.partitions)
        .filter(|p| *p as usize % producers == index)
        .collect();
    let mut sequence = vec![0u64; mine.len()];
    let mut payload: Vec<u8> = (0..o.record_bytes)
        .map(|i| (i * 7919 % 251) as u8)
        .collect();
    let bytes_per_second = o.rate_mb * 1_000_000.0 / producers as f64;
    let mut sent: u64 = 0;
    let mut planted = false;
    while start.elapsed() < total && !INTERRUPTED.load(Ordering::Relaxed) {
        if bytes_per_second > 0.0 {
            let due =
                (start.elapsed().as_secs_f64() * bytes_per_second / o.record_bytes as f64) as u64;
            if sent >= due {
                std::thread::sleep(Duration::from_micros(200));
                continue;
            }
        }
        let slot = (sent % mine.len() as u64) as usize;
        let now = stats.base.elapsed().as_nanos() as u64;
        payload[..8].copy_from_slice(&now.to_be_bytes());
        payload[8..16].copy_from_slice(&sequence[slot].to_be_bytes());
        let record = BaseRecord::<(), [u8], Box<u64>>::with_opaque_to(&o.topic, Box::new(now))
            .partition(mine[slot])
            .payload(&payload[..]);
        match producer.send(record) {
            Ok(()) => {
                sent += 1;
                sequence[slot] += 1;
                if index == 0 && slot == 0 && !planted && sequence[slot] == 100 {
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
    producer
        .flush(Duration::from_secs(60))
        .map_err(|e| format!("flush: {e}"))?;
    Ok(sent)
}

pub fn run(o: &Options) -> Result<Report, String> {
    ensure_topic(o)?;
    if let Some(mb) = o.catch_up_mb {
        return catch_up(o, mb);
    }
    let stats = new_stats();
    let consumer = if o.consume {
        Some(start_consumer(o, stats.clone())?)
    } else {
        None
    };
    let start = Instant::now();
    let warmup = Duration::from_secs(o.warmup_seconds);
    let total = warmup + Duration::from_secs(o.seconds);
    let producers = o.producers.clamp(1, o.partitions.max(1) as usize);
    let threads: Vec<_> = (0..producers)
        .map(|k| {
            let (o, stats) = (o.clone(), stats.clone());
            std::thread::spawn(move || produce_loop(&o, k, producers, &stats, start, total))
        })
        .collect();
    sleep_unless_interrupted(warmup);
    stats.measuring.store(true, Ordering::SeqCst);
    let measure_start = Instant::now();
    let cpu_before = o.pid.and_then(procfs::sample);
    let mut per_second_mb = Vec::new();
    let mut last_bytes = 0u64;
    while start.elapsed() < total && !INTERRUPTED.load(Ordering::Relaxed) {
        sleep_unless_interrupted(Duration::from_secs(1).min(total.saturating_sub(start.elapsed())));
        let bytes = stats.acked_bytes.load(Ordering::Relaxed);
        let mb = (bytes - last_bytes) as f64 / 1e6;
        last_bytes = bytes;
        per_second_mb.push(mb);
        progress(measure_start.elapsed().as_secs(), o.seconds, mb, bytes);
    }
    let measured = measure_start.elapsed().as_secs_f64();
    stats.measuring.store(false, Ordering::SeqCst);
    let cpu_after = o.pid.and_then(procfs::sample);
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
    let acked_bytes = stats.acked_bytes.load(Ordering::SeqCst) as f64;
    let failed = stats.failed.load(Ordering::SeqCst);
    let publish = stats
        .publish
        .lock()
        .map(|h| Percentiles::of(&h))
        .unwrap_or_default();
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
    let e2e_us = match e2e {
        None => None,
        Some(Ok(p)) => {
            verification.push_str("; every record consumed exactly once, in order per partition");
            Some(p)
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
        failed,
        mb_per_second: acked_bytes / measured.max(1e-9) / 1e6,
        records_per_second: acked as f64 / measured.max(1e-9),
        publish_us: publish,
        e2e_us,
        broker_cpu_seconds: cpu,
        broker_cpu_seconds_per_gb: cpu.map(|c| c / (acked_bytes / 1e9).max(1e-9)),
        broker_peak_rss_bytes: cpu_after.as_ref().map(|s| s.peak_rss_bytes),
        verified,
        verification,
    })
}

/// The catch-up read workload: build a backlog of `mb` MB (not measured), optionally drop the
/// page cache, then measure one consumer reading every partition from the beginning until the
/// whole backlog is back, checking count and per-partition order.
fn catch_up(o: &Options, mb: u64) -> Result<Report, String> {
    let stats = new_stats();
    let records = mb * 1_000_000 / o.record_bytes as u64;
    let producer = new_producer(o, &stats)?;
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
            }
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                std::thread::sleep(Duration::from_micros(200));
            }
            Err((e, _)) => return Err(format!("send: {e}")),
        }
    }
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
    let cpu_before = o.pid.and_then(procfs::sample);
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
    let cpu_after = o.pid.and_then(procfs::sample);
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
        failed: sent - received.min(sent),
        mb_per_second: bytes as f64 / measured.max(1e-9) / 1e6,
        records_per_second: received as f64 / measured.max(1e-9),
        publish_us: Percentiles::default(),
        e2e_us: None,
        broker_cpu_seconds: cpu,
        broker_cpu_seconds_per_gb: cpu.map(|c| c / (bytes as f64 / 1e9).max(1e-9)),
        broker_peak_rss_bytes: cpu_after.as_ref().map(|s| s.peak_rss_bytes),
        verified,
        verification,
    })
}

struct ConsumerHandle {
    /// Records the consumer must receive; u64::MAX until the producer has finished.
    expected: Arc<AtomicU64>,
    thread: std::thread::JoinHandle<Result<Percentiles, String>>,
}

fn start_consumer(o: &Options, stats: Arc<Stats>) -> Result<ConsumerHandle, String> {
    let consumer: BaseConsumer = client_config(o)
        .set("group.id", "sluice-bench")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "5")
        .set("fetch.min.bytes", "1")
        .create()
        .map_err(|e| format!("consumer: {e}"))?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..o.partitions {
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
        Ok(Percentiles::of(&e2e))
    });
    Ok(ConsumerHandle { expected, thread })
}

impl ConsumerHandle {
    /// Waits until every acknowledged record arrived (or 10 s of silence), checking the count.
    fn finish(self, acknowledged: u64) -> Result<Percentiles, String> {
        self.expected.store(acknowledged, Ordering::SeqCst);
        self.thread
            .join()
            .map_err(|_| "consumer thread panicked".to_string())?
    }
}

impl Report {
    pub fn markdown(&self) -> String {
        let o = &self.options;
        let mut s = format!(
            "| workload | MB/s | records/s | publish p50/p99/p99.9/max µs | e2e p50/p99/p99.9/max µs | broker CPU s/GB | broker peak RSS MiB |\n\
             |---|---|---|---|---|---|---|\n\
             | {}p × {} B, acks={}, linger {} ms, {}, rate {} | {:.1} | {:.0} | {}/{}/{}/{} | ",
            match o.catch_up_mb {
                Some(mb) => format!("catch-up read of {mb} MB, {}", o.partitions),
                None => o.partitions.to_string(),
            },
            o.record_bytes,
            o.acks,
            o.linger_ms,
            o.compression,
            if o.rate_mb > 0.0 { format!("{} MB/s", o.rate_mb) } else { "max".into() },
            self.mb_per_second,
            self.records_per_second,
            self.publish_us.p50,
            self.publish_us.p99,
            self.publish_us.p999,
            self.publish_us.max
        );
        match &self.e2e_us {
            Some(p) => s.push_str(&format!("{}/{}/{}/{} | ", p.p50, p.p99, p.p999, p.max)),
            None => s.push_str("- | "),
        }
        s.push_str(&match self.broker_cpu_seconds_per_gb {
            Some(c) => format!("{c:.3} | "),
            None => "- | ".into(),
        });
        s.push_str(&match self.broker_peak_rss_bytes {
            Some(r) => format!("{:.0} |", r as f64 / 1048576.0),
            None => "- |".into(),
        });
        s.push_str(&format!(
            "\n\n{} records acknowledged in {:.1} s{}; {}",
            self.acked,
            self.measured_seconds,
            if self.interrupted {
                " (interrupted: partial report)"
            } else {
                ""
            },
            self.verification
        ));
        s
    }

    pub fn json(&self) -> String {
        let o = &self.options;
        format!(
            "{{\"schema\":1,\"workload\":{{\"topic\":\"{}\",\"partitions\":{},\"record_bytes\":{},\"acks\":\"{}\",\"linger_ms\":{},\"compression\":\"{}\",\"rate_mb\":{},\"seconds\":{}}},\
             \"measured_seconds\":{:.3},\"acked\":{},\"failed\":{},\"mb_per_second\":{:.3},\"records_per_second\":{:.1},\
             \"publish_latency_us\":{},\"e2e_latency_us\":{},\"broker_cpu_seconds\":{},\"broker_cpu_seconds_per_gb\":{},\"broker_peak_rss_bytes\":{},\"verified\":{},\"interrupted\":{},\"per_second_mb\":[{}]}}\n",
            o.topic, o.partitions, o.record_bytes, o.acks, o.linger_ms, o.compression, o.rate_mb, o.seconds,
            self.measured_seconds, self.acked, self.failed, self.mb_per_second, self.records_per_second,
            self.publish_us.json(),
            self.e2e_us.map(|p| p.json()).unwrap_or_else(|| "null".into()),
            self.broker_cpu_seconds.map(|c| format!("{c:.3}")).unwrap_or_else(|| "null".into()),
            self.broker_cpu_seconds_per_gb.map(|c| format!("{c:.4}")).unwrap_or_else(|| "null".into()),
            self.broker_peak_rss_bytes.map(|r| r.to_string()).unwrap_or_else(|| "null".into()),
            self.verified,
            self.interrupted,
            self.per_second_mb.iter().map(|m| format!("{m:.2}")).collect::<Vec<_>>().join(",")
        )
    }
}
