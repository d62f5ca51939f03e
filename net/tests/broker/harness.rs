//! The benchmark harness checks what it measured: against a real sluice, a clean run verifies,
//! and a planted loss or duplicate is caught; so with several load-generator processes, and
//! through `sluice-bench compare`.
//!
//! The multi-process and compare tests run the real `sluice-bench` executable, which cargo builds
//! next to `sluice` only when asked (`cargo build --workspace --bins`, as scripts/test.sh does
//! before the tests); they fail with that advice when it is missing.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use crate::common::{free_port, Broker};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use sluice_bench::compare::CompareFile;
use sluice_bench::load::{self, Options, Plant};
use sluice_bench::report::ReportFile;

/// Runs a load that must verify, with more than a thousand records acknowledged.
fn verified_run(o: &Options) -> sluice_bench::report::Report {
    let report = load::run(o).expect("run");
    assert!(report.verified, "{}", report.verification);
    assert!(
        report.acked > 1000,
        "records acknowledged: {}",
        report.acked
    );
    report
}

fn options(broker: &Broker, topic: &str, plant: Option<Plant>) -> Options {
    let args: Vec<String> = [
        "--bootstrap",
        &broker.bootstrap(),
        "--topic",
        topic,
        "--partitions",
        "3",
        "--record-bytes",
        "100",
        "--rate-mb",
        "1",
        "--seconds",
        "2",
        "--warmup-seconds",
        "1",
        "--linger-ms",
        "1",
        "--consume",
        "--pid",
        &broker.pid().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut o = Options::parse(&args).expect("options");
    o.plant = plant;
    o
}

#[test]
fn a_clean_tiny_run_verifies_and_measures() {
    let broker = Broker::start(&[]);
    let report = verified_run(&options(&broker, "clean", None));
    assert!(report.e2e_us.is_some(), "end-to-end latency measured");
    let consumed = report
        .consume_mb_per_second()
        .expect("consume rate measured");
    assert!(
        consumed > 0.5 * report.mb_per_second && consumed < 2.0 * report.mb_per_second,
        "consume rate {consumed} MB/s follows the publish rate {} MB/s",
        report.mb_per_second
    );
    assert!(report.json().contains("\"consume_mb_per_second\""));
    assert!(
        report.broker_cpu_seconds.is_some(),
        "broker CPU read from /proc"
    );
    assert!(!report.per_second_mb.is_empty(), "a throughput time series");
    assert!(report.json().contains("\"verified\":true"));
    assert!(report.markdown().contains("| MB/s |"));
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let prefix = dir.path().join("clean");
    sluice_bench::charts::write(prefix.to_str().expect("utf8"), &report).expect("charts");
    let latency = std::fs::read_to_string(dir.path().join("clean-latency.svg")).expect("svg");
    assert!(latency.contains("<polyline") && latency.contains("end-to-end"));
    let throughput = std::fs::read_to_string(dir.path().join("clean-throughput.svg")).expect("svg");
    assert!(throughput.contains("<polyline"));
}

#[test]
fn an_idempotent_run_verifies() {
    let broker = Broker::start(&[]);
    let mut o = options(&broker, "idempotent", None);
    o.idempotence = true;
    let report = verified_run(&o);
    assert!(report.markdown().contains("idempotent"));
}

/// Transactional producers committing every 100 records, read back with read_committed:
/// every acknowledged record is verified, in order, exactly once.
#[test]
fn a_transactional_run_verifies() {
    let broker = Broker::start(&[]);
    let mut o = options(&broker, "transactional", None);
    o.transaction_records = Some(100);
    verified_run(&o);
}

/// sluice-bench's own producer (`--client native`): a clean run verifies (every record
/// acknowledged, then consumed once, in order, by librdkafka), and a planted loss is caught.
#[test]
fn the_native_producer_verifies_and_a_planted_loss_is_caught() {
    let broker = Broker::start(&[]);
    let mut o = options(&broker, "native", None);
    o.native = true;
    let report = verified_run(&o);
    assert!(report.e2e_us.is_some() && report.publish_us.p50 > 0);
    let mut o = options(&broker, "native-lossy", Some(Plant::Loss));
    o.native = true;
    let report = load::run(&o).expect("run");
    assert!(!report.verified, "a lost record must fail verification");
    assert!(
        report.verification.contains("expected sequence"),
        "{}",
        report.verification
    );
}

#[test]
fn a_planted_loss_is_caught() {
    let broker = Broker::start(&[]);
    let report = load::run(&options(&broker, "lossy", Some(Plant::Loss))).expect("run");
    assert!(!report.verified, "a lost record must fail verification");
    assert!(
        report.verification.contains("expected sequence"),
        "{}",
        report.verification
    );
}

#[test]
fn a_planted_duplicate_is_caught() {
    let broker = Broker::start(&[]);
    let report = load::run(&options(&broker, "doubled", Some(Plant::Duplicate))).expect("run");
    assert!(
        !report.verified,
        "a duplicated record must fail verification"
    );
    assert!(
        report.verification.contains("expected sequence"),
        "{}",
        report.verification
    );
}

#[test]
fn the_catch_up_workload_reads_the_whole_backlog_back() {
    let broker = Broker::start(&[]);
    let mut o = options(&broker, "backlog", None);
    o.catch_up_mb = Some(5);
    let report = load::run(&o).expect("run");
    assert!(report.verified, "{}", report.verification);
    assert_eq!(report.acked, 5_000_000 / 100, "every record read back");
    assert!(report.mb_per_second > 0.0);
}

#[test]
fn the_shipped_workload_files_parse() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../bench/workloads");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).expect("workloads dir") {
        let path = entry.expect("entry").path();
        let args: Vec<String> = ["--bootstrap", "127.0.0.1:9092", "--workload"]
            .iter()
            .map(|s| s.to_string())
            .chain([path.display().to_string()])
            .collect();
        let o = Options::parse(&args).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(o.partitions > 0);
        seen += 1;
    }
    assert!(
        seen >= 6,
        "the OMB set and the small-machine variants: {seen}"
    );
}

/// target/<profile>/sluice-bench, next to the sluice binary cargo built for these tests.
fn bench_binary() -> PathBuf {
    let path = Path::new(env!("CARGO_BIN_EXE_sluice")).with_file_name("sluice-bench");
    assert!(
        path.is_file(),
        "{} is missing: build it first with `cargo build --workspace --bins` (scripts/test.sh \
         does); an old one would test old code",
        path.display()
    );
    path
}

fn two_processes(broker: &Broker, topic: &str, plant: Option<Plant>) -> Options {
    let mut o = options(broker, topic, plant);
    o.processes = 2;
    o.bench_bin = Some(bench_binary());
    o
}

fn high_watermark(broker: &Broker, topic: &str, partition: i32) -> u64 {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap())
        .create()
        .expect("consumer");
    let (_, high) = consumer
        .fetch_watermarks(topic, partition, Duration::from_secs(10))
        .expect("watermarks");
    high as u64
}

#[test]
fn two_load_processes_split_the_partitions_and_verify_together() {
    let broker = Broker::start(&[]);
    let report = load::run(&two_processes(&broker, "two-processes", None)).expect("run");
    assert!(report.verified, "{}", report.verification);
    assert!(
        report.verification.starts_with("2 processes: "),
        "{}",
        report.verification
    );
    let per_process = &report.acked_per_process;
    assert_eq!(per_process.len(), 2);
    assert!(
        per_process.iter().all(|acked| *acked > 1000),
        "records from both processes: {per_process:?}"
    );
    assert_eq!(report.acked, per_process.iter().sum::<u64>());
    assert_eq!(
        report.publish_histogram.len(),
        report.acked,
        "the merged publish histogram holds every acknowledged record of both processes"
    );
    assert!(report
        .e2e_histogram
        .as_ref()
        .is_some_and(|h| h.len() > 2000));
    assert!(
        report.broker_cpu_seconds.is_some(),
        "the parent measured the broker"
    );
    assert!(
        report.per_second_mb.len() >= 2,
        "{:?}",
        report.per_second_mb
    );
    // Process 1 owns partition 1 alone, process 0 partitions 0 and 2 (warm-up records too).
    let high: Vec<u64> = (0..3)
        .map(|p| high_watermark(&broker, "two-processes", p))
        .collect();
    assert!(high[1] >= per_process[1], "{high:?} {per_process:?}");
    assert!(
        high[0] + high[2] >= per_process[0],
        "{high:?} {per_process:?}"
    );
    assert!(report.markdown().contains(", 2 processes |"));
}

#[test]
fn a_loss_planted_in_one_of_two_processes_is_caught_through_the_merged_report() {
    let broker = Broker::start(&[]);
    let report = load::run(&two_processes(&broker, "two-lossy", Some(Plant::Loss))).expect("run");
    assert!(!report.verified, "a lost record must fail verification");
    assert!(
        report
            .verification
            .starts_with("process 0 (partitions 0, 2): "),
        "{}",
        report.verification
    );
    assert!(
        report
            .verification
            .contains("partition 0: expected sequence 100 got 101"),
        "{}",
        report.verification
    );
    assert!(
        !report.verification.contains("process 1"),
        "planted in exactly one process: {}",
        report.verification
    );
    assert!(
        report.e2e_us.is_none(),
        "no e2e figures from a failed check"
    );
}

/// The first CPU this process may run on (taskset must accept it).
fn first_allowed_cpu() -> String {
    let status = std::fs::read_to_string("/proc/self/status").expect("status");
    let list = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .expect("Cpus_allowed_list")
        .trim();
    list.split([',', '-']).next().expect("a CPU").to_string()
}

/// Runs `sluice-bench compare` on `port` with a tiny workload plus `load_flags`.
fn compare(
    dir: &Path,
    port: u16,
    brokers: &str,
    runs: &str,
    cpus: &str,
    load_flags: &[&str],
) -> Output {
    let port = port.to_string();
    let data = dir.join("data");
    let out = dir.join("out");
    let mut args: Vec<&str> = vec![
        "compare",
        "--brokers",
        brokers,
        "--runs",
        runs,
        "--port",
        &port,
        "--broker-cpus",
        cpus,
        "--client-cpus",
        cpus,
        "--sluice-bin",
        env!("CARGO_BIN_EXE_sluice"),
        "--data",
        data.to_str().expect("utf8"),
        "--out",
        out.to_str().expect("utf8"),
        "--",
        "--partitions",
        "2",
        "--record-bytes",
        "100",
        "--rate-mb",
        "1",
        "--seconds",
        "1",
        "--warmup-seconds",
        "0",
        "--linger-ms",
        "1",
        "--consume",
    ];
    args.extend(load_flags);
    Command::new(bench_binary())
        .args(&args)
        .output()
        .expect("run sluice-bench compare")
}

#[test]
fn compare_runs_a_fresh_pinned_broker_per_run_and_summarizes_medians() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let port = free_port();
    let output = compare(dir.path(), port, "sluice", "2", &first_allowed_cpu(), &[]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("| sluice run 1: 2p × 100 B"), "{stdout}");
    assert!(stdout.contains("| sluice run 2: 2p × 100 B"), "{stdout}");
    assert!(stdout.contains("| broker (runs) | MB/s |"), "{stdout}");
    assert!(stdout.contains("| sluice (2) | "), "{stdout}");
    let file = CompareFile::load(&dir.path().join("out/compare.json")).expect("compare.json");
    assert_eq!(file.runs.len(), 2);
    for (i, run) in file.runs.iter().enumerate() {
        assert_eq!((run.broker.as_str(), run.run), ("sluice", i + 1));
        assert!(run.verified && !run.interrupted, "{run:?}");
        let report = run.report.as_ref().expect("a report");
        assert!(
            report.acked > 1000 && report.broker_cpu_seconds.is_some(),
            "{report:?}"
        );
        // The per-run file is the same report.
        let path = dir.path().join(format!("out/sluice-run{}.json", i + 1));
        let text = std::fs::read_to_string(path).expect("run report");
        assert_eq!(&ReportFile::parse(&text).expect("parse"), report);
    }
    assert_ne!(
        file.runs[0].broker_pid, file.runs[1].broker_pid,
        "a fresh broker for each run"
    );
    assert_eq!(file.summary[0]["broker"], "sluice");
    assert_eq!(file.summary[0]["runs"], 2);
    assert!(file.summary[0]["mb_per_second"]
        .as_f64()
        .is_some_and(|m| m > 0.5));
    assert!(file.summary[0]["e2e_p99_ms"].as_f64().is_some());
    assert!(
        !dir.path().join("data/log").exists(),
        "the brokers' data is wiped at the end"
    );
    assert!(
        std::net::TcpListener::bind(("127.0.0.1", port)).is_ok(),
        "the last broker was stopped"
    );
}

#[test]
fn compare_fails_loudly_when_a_run_loses_a_record() {
    // A broker that is already running: named by address and PID, not restarted.
    let broker = Broker::start(&[]);
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let spec = format!("theirs={}@{}", broker.bootstrap(), broker.pid());
    let output = compare(
        dir.path(),
        free_port(),
        &spec,
        "1",
        "all",
        &["--plant", "loss"],
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("FAILED: theirs run 1: VERIFICATION FAILED"),
        "{stderr}"
    );
    assert!(
        stdout.contains("| theirs (0) | - |"),
        "left out of the medians: {stdout}"
    );
    let file = CompareFile::load(&dir.path().join("out/compare.json")).expect("compare.json");
    let run = &file.runs[0];
    assert!(!run.verified, "{run:?}");
    assert_eq!(run.broker_pid, Some(broker.pid()));
    let report = run.report.as_ref().expect("a report");
    assert!(
        report.verification.contains("expected sequence"),
        "{report:?}"
    );
    assert!(
        report.broker_cpu_seconds.is_some(),
        "CPU from the PID given"
    );
}

/// `sluice-bench groups` against a real sluice: both rebalances complete and commits flow.
#[test]
fn the_groups_benchmark_measures_rebalances_and_commits() {
    let broker = Broker::start(&["group.initial.rebalance.delay.ms=0"]);
    let o = sluice_bench::groups::Options::parse(&[
        "--bootstrap".to_string(),
        broker.bootstrap(),
        "--repeat".to_string(),
        "1".to_string(),
        "--commit-seconds".to_string(),
        "1".to_string(),
    ])
    .expect("options");
    let (markdown, json) = sluice_bench::groups::run(&o).expect("groups benchmark");
    assert!(
        markdown.contains("rebalance after 1 of 4 members leaves"),
        "{markdown}"
    );
    let value: serde_json::Value = serde_json::from_str(&json).expect("json");
    for key in [
        "leave_rebalance_ms",
        "join_rebalance_ms",
        "commits_per_second",
    ] {
        let median = value[key]["median"].as_f64().expect("a median");
        assert!(median > 0.0, "{key}: {median}");
    }
    assert!(
        value["commits_per_second"]["median"]
            .as_f64()
            .unwrap_or(0.0)
            > 10.0
    );
}
