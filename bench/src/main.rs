//! sluice-bench: drives any Kafka-protocol broker with librdkafka and reports what it measured.
//!
//! ```text
//! sluice-bench [run] --bootstrap 127.0.0.1:9092 [--topic T] [--partitions 8] [--record-bytes 1024]
//!              [--acks all] [--linger-ms 5] [--batch-bytes 1048576] [--compression none]
//!              [--rate-mb 0 (as fast as possible)] [--seconds 20] [--warmup-seconds 3]
//!              [--producers 1] [--processes 1] [--consume] [--pid BROKER_PID] [--json FILE]
//! sluice-bench compare [--runs 3] [--brokers sluice,kafka-default,kafka-flush] ... -- LOAD FLAGS
//! sluice-bench groups --bootstrap 127.0.0.1:9092 [--repeat 5] [--commit-seconds 5] [--json FILE]
//! ```
//!
//! Publish latency is send → acknowledgement; with `--consume`, end-to-end latency is send →
//! receive by a consumer in the same process (one clock). With `--pid`, the broker's CPU seconds
//! (utime + stime from /proc) and peak RSS are read before and after, giving CPU-seconds per GB
//! ingested. With `--consume` every record is checked to arrive exactly once, in order per
//! partition; a loss or duplicate is reported and the exit status is non-zero.
//!
//! `--processes N` runs the load from N child processes of this executable (for when one
//! process's librdkafka is the limit): child i owns the partitions `p % N == i`, produces its
//! share of the rate (rate / N when N divides the partitions) with `--producers` producers, and
//! consumes and verifies its own partitions; the
//! parent measures the broker and merges the children's counts, time series and latency
//! histograms into one report (see `processes.rs`).
//!
//! `compare` runs one workload against several brokers, alternating, each started fresh for each
//! run, and prints medians and ratios (see `compare.rs`, `compare --help`).

use sluice_bench::{compare, groups, load, processes};

fn groups_main(args: &[String]) -> i32 {
    let o = match groups::Options::parse(args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("sluice-bench groups: {e}\n{}", groups::USAGE);
            return 2;
        }
    };
    match groups::run(&o) {
        Ok((markdown, json)) => {
            println!("{markdown}");
            if let Some(path) = &o.json {
                if let Err(e) = std::fs::write(path, json) {
                    eprintln!("sluice-bench groups: cannot write {path}: {e}");
                    return 1;
                }
            }
            0
        }
        Err(e) => {
            eprintln!("sluice-bench groups: {e}");
            1
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    load::install_signal_handlers();
    match args.first().map(String::as_str) {
        Some("compare") => {
            if args.iter().any(|a| a == "--help" || a == "-h") {
                println!("{}", compare::USAGE);
                return;
            }
            std::process::exit(compare::main(&args[1..]));
        }
        Some("groups") => {
            if args.iter().any(|a| a == "--help" || a == "-h") {
                println!("{}", groups::USAGE);
                return;
            }
            std::process::exit(groups_main(&args[1..]));
        }
        Some("run") => run(&args[1..]),
        _ => run(&args),
    }
}

fn run(args: &[String]) {
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("{}\n\n{}", load::USAGE, compare::USAGE);
        return;
    }
    let options = match load::Options::parse(args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("sluice-bench: {e}\n{}", load::USAGE);
            std::process::exit(2);
        }
    };
    let report = match load::run(&options) {
        Ok(report) => report,
        Err(e) => {
            eprintln!("sluice-bench: {e}");
            std::process::exit(1);
        }
    };
    if options.slice.is_some() {
        // A child of a multi-process run: the report goes to the parent, which judges it.
        match processes::child_report_line(&report) {
            Ok(line) => println!("{line}"),
            Err(e) => {
                eprintln!("sluice-bench: {e}");
                std::process::exit(1);
            }
        }
        return;
    }
    println!("{}", report.markdown());
    if let Some(path) = &options.json {
        if let Err(e) = std::fs::write(path, report.json()) {
            eprintln!("sluice-bench: cannot write {path}: {e}");
            std::process::exit(1);
        }
    }
    if let Some(prefix) = &options.charts {
        if let Err(e) = sluice_bench::charts::write(prefix, &report) {
            eprintln!("sluice-bench: cannot write charts {prefix}-*.svg: {e}");
            std::process::exit(1);
        }
    }
    if !report.verified {
        eprintln!("sluice-bench: VERIFICATION FAILED: {}", report.verification);
        std::process::exit(1);
    }
}
