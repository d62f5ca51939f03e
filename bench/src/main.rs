//! sluice-bench: drives any Kafka-protocol broker with librdkafka and reports what it measured.
//!
//! ```text
//! sluice-bench --bootstrap 127.0.0.1:9092 [--topic T] [--partitions 8] [--record-bytes 1024]
//!              [--acks all] [--linger-ms 5] [--batch-bytes 1048576] [--compression none]
//!              [--rate-mb 0 (as fast as possible)] [--seconds 20] [--warmup-seconds 3]
//!              [--consume] [--pid BROKER_PID] [--json FILE]
//! ```
//!
//! Publish latency is send → acknowledgement; with `--consume`, end-to-end latency is send →
//! receive by a consumer in this process (one clock). With `--pid`, the broker's CPU seconds
//! (utime + stime from /proc) and peak RSS are read before and after, giving CPU-seconds per GB
//! ingested. With `--consume` every record is checked to arrive exactly once, in order per
//! partition; a loss or duplicate is reported and the exit status is non-zero.

use sluice_bench::load;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("{}", load::USAGE);
        return;
    }
    load::install_signal_handlers();
    let options = match load::Options::parse(&args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("sluice-bench: {e}\n{}", load::USAGE);
            std::process::exit(2);
        }
    };
    match load::run(&options) {
        Ok(report) => {
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
        Err(e) => {
            eprintln!("sluice-bench: {e}");
            std::process::exit(1);
        }
    }
}
