//! The benchmark harness checks what it measured: against a real sluice, a clean run verifies,
//! and a planted loss or duplicate is caught.

use crate::common::Broker;
use sluice_bench::load::{self, Options, Plant};

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
    let report = load::run(&options(&broker, "clean", None)).expect("run");
    assert!(report.verified, "{}", report.verification);
    assert!(
        report.acked > 1000,
        "records acknowledged: {}",
        report.acked
    );
    assert!(report.e2e_us.is_some(), "end-to-end latency measured");
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
