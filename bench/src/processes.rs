//! One workload from several load-generator processes (`--processes N`), for when one process's
//! librdkafka is the bottleneck.
//!
//! The parent creates the topic and starts N children of the sluice-bench executable; child `i`
//! (`--slice i/N`) produces to the partitions `p % N == i` (its share of the rate in proportion
//! to them: rate / N when N divides the partitions) and, with `--consume`, consumes and verifies
//! exactly those. The parent measures the broker (CPU, RSS) over the
//! measured window and merges the children's reports: counts and per-second series are summed,
//! latency histograms merged (so percentiles are true percentiles over every record), and the run
//! verifies only if every child verified.
//!
//! The protocol between the parent and a child, over the child's stdin and stdout (its stderr is
//! the parent's):
//! 1. child → parent: the line `ready` once its consumer is assigned, just before producing;
//! 2. parent → child: the line `go` once every child is ready, so they measure the same window
//!    (end of input instead: the parent is gone, and the child gives up);
//! 3. child → parent: its report as one JSON line ([`ReportFile`] with both histograms); it exits.
//!
//! Ctrl-C (SIGINT or SIGTERM) in the parent is forwarded to the children as SIGINT; they stop
//! producing, drain, and report, and the parent still merges a partial report.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::load::{self, Options, Slice, BENCH_BIN_ENV, INTERRUPTED};
use crate::report::{decode_histogram, histogram, Percentiles, Report, ReportFile};
use crate::{procfs, subprocess};

/// How long children may take to connect and assign their consumers (a Kafka broker may take a
/// while to elect leaders for a new topic).
const SETUP_SECONDS_MAX: u64 = 180;
/// How long children may take after the measured window to flush, drain and report.
const FINISH_SECONDS_MAX: u64 = 300;

/// Child side, step 1 and 2 of the protocol.
pub fn ready_and_wait_for_go() -> Result<(), String> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "ready")
        .and_then(|()| out.flush())
        .map_err(|e| format!("telling the parent process we are ready: {e}"))?;
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .map_err(|e| format!("waiting for the parent process: {e}"))?;
    if line.trim() != "go" {
        return Err("the parent process went away before the start".into());
    }
    Ok(())
}

/// Child side, step 3: the report with its histograms, one line.
pub fn child_report_line(report: &Report) -> Result<String, String> {
    let file = report.file(true)?;
    serde_json::to_string(&file).map_err(|e| format!("report JSON: {e}"))
}

/// The executable the children run: `Options::bench_bin`, else `$SLUICE_BENCH_BIN`, else this
/// process's own executable.
fn executable(o: &Options) -> Result<PathBuf, String> {
    let path = match (&o.bench_bin, std::env::var_os(BENCH_BIN_ENV)) {
        (Some(path), _) => path.clone(),
        (None, Some(path)) => PathBuf::from(path),
        (None, None) => {
            std::env::current_exe().map_err(|e| format!("this executable's path: {e}"))?
        }
    };
    if !path.is_file() {
        return Err(format!(
            "the sluice-bench executable for the child processes, {}, does not exist",
            path.display()
        ));
    }
    Ok(path)
}

enum Event {
    Line(usize, String),
    Closed(usize),
}

/// The running children; dropping this kills and reaps any that are still running.
struct Children {
    slices: Vec<Slice>,
    partitions: i32,
    processes: Vec<Child>,
    stdins: Vec<Option<ChildStdin>>,
    events: Receiver<Event>,
    ready: Vec<bool>,
    reports: Vec<Option<String>>,
    closed: Vec<bool>,
    interrupt_forwarded: bool,
}

impl Children {
    fn spawn(exe: &Path, o: &Options) -> Result<Children, String> {
        let (sender, events) = channel();
        let mut children = Children {
            slices: Vec::new(),
            partitions: o.partitions,
            processes: Vec::new(),
            stdins: Vec::new(),
            events,
            ready: vec![false; o.processes],
            reports: vec![None; o.processes],
            closed: vec![false; o.processes],
            interrupt_forwarded: false,
        };
        for index in 0..o.processes {
            let slice = Slice {
                index,
                count: o.processes,
            };
            let mut command = Command::new(exe);
            command
                .args(o.child_args(slice))
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit());
            subprocess::dies_with_parent(&mut command, libc::SIGTERM);
            let mut child = command
                .spawn()
                .map_err(|e| format!("start {}: {e}", exe.display()))?;
            let stdout = child.stdout.take().expect("stdout is piped");
            children.stdins.push(child.stdin.take());
            children.processes.push(child);
            children.slices.push(slice);
            let sender = sender.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    match line {
                        Ok(line) => {
                            if sender.send(Event::Line(index, line)).is_err() {
                                return;
                            }
                        }
                        Err(_) => break,
                    }
                }
                let _ = sender.send(Event::Closed(index));
            });
        }
        Ok(children)
    }

    fn describe(&self, index: usize) -> String {
        format!(
            "process {index} ({})",
            self.slices[index].describe(self.partitions)
        )
    }

    /// Handles what the children said within `timeout`; forwards a Ctrl-C once.
    fn pump(&mut self, timeout: Duration) {
        if INTERRUPTED.load(Ordering::Relaxed) && !self.interrupt_forwarded {
            self.interrupt_forwarded = true;
            for child in &self.processes {
                subprocess::signal(child, libc::SIGINT);
            }
        }
        let event = match self.events.recv_timeout(timeout) {
            Ok(event) => event,
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => return,
        };
        match event {
            Event::Line(i, line) if line == "ready" => self.ready[i] = true,
            Event::Line(i, line) if line.starts_with('{') => self.reports[i] = Some(line),
            Event::Line(i, line) => eprintln!("sluice-bench process {i}: {line}"),
            Event::Closed(i) => self.closed[i] = true,
        }
    }

    /// A child that ended without handing back its report.
    fn failure(&mut self) -> Option<String> {
        let i = (0..self.processes.len()).find(|&i| self.closed[i] && self.reports[i].is_none())?;
        let status = self.processes[i]
            .wait()
            .map(|s| s.to_string())
            .unwrap_or_else(|e| e.to_string());
        Some(format!(
            "{} ended without a report ({status}); its messages are above",
            self.describe(i)
        ))
    }

    /// Pumps until `done`, a child failing, or `deadline` (an error naming `what`).
    fn wait_for(
        &mut self,
        done: impl Fn(&Children) -> bool,
        deadline: Instant,
        what: &str,
    ) -> Result<(), String> {
        while !done(self) {
            if let Some(failure) = self.failure() {
                return Err(failure);
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "the load-generator processes were not {what} in time"
                ));
            }
            self.pump(Duration::from_millis(100));
        }
        Ok(())
    }

    /// Pumps until `deadline` or Ctrl-C; a failing child is an error.
    fn run_until(&mut self, deadline: Instant) -> Result<(), String> {
        while Instant::now() < deadline && !INTERRUPTED.load(Ordering::Relaxed) {
            if let Some(failure) = self.failure() {
                return Err(failure);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            self.pump(left.min(Duration::from_millis(100)));
        }
        Ok(())
    }

    fn go(&mut self) -> Result<(), String> {
        for (i, stdin) in self.stdins.iter_mut().enumerate() {
            let mut stdin = stdin.take().expect("go is said once");
            writeln!(stdin, "go")
                .and_then(|()| stdin.flush())
                .map_err(|e| format!("starting process {i}: {e}"))?;
        }
        Ok(())
    }

    /// Reaps the children (each has reported) and decodes their reports.
    fn finish(mut self) -> Result<Vec<SliceReport>, String> {
        let mut out = Vec::new();
        for i in 0..self.processes.len() {
            let _ = self.processes[i].wait();
            let line = self.reports[i].take().expect("every child reported");
            let file =
                ReportFile::parse(&line).map_err(|e| format!("{}: {e}", self.describe(i)))?;
            out.push(
                SliceReport::from_file(self.slices[i], &file)
                    .map_err(|e| format!("{}: {e}", self.describe(i)))?,
            );
        }
        Ok(out)
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        for child in &mut self.processes {
            if let Ok(None) = child.try_wait() {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
    }
}

/// The parent of a multi-process run.
pub fn run(o: &Options) -> Result<Report, String> {
    load::ensure_topic(o)?;
    let exe = executable(o)?;
    let mut children = Children::spawn(&exe, o)?;
    let setup_deadline = Instant::now() + Duration::from_secs(SETUP_SECONDS_MAX);
    children.wait_for(|c| c.ready.iter().all(|r| *r), setup_deadline, "ready")?;
    children.go()?;
    let start = Instant::now();
    let warmup = Duration::from_secs(o.warmup_seconds);
    let total = warmup + Duration::from_secs(o.seconds);
    children.run_until(start + warmup)?;
    let cpu_before = procfs::sample_all(&o.pids);
    let measure_start = Instant::now();
    while start.elapsed() < total && !INTERRUPTED.load(Ordering::Relaxed) {
        children.run_until((Instant::now() + Duration::from_secs(1)).min(start + total))?;
        load::progress(measure_start.elapsed().as_secs(), o.seconds, None);
    }
    let cpu_after = procfs::sample_all(&o.pids);
    let finish_deadline = Instant::now() + Duration::from_secs(FINISH_SECONDS_MAX);
    children.wait_for(
        |c| c.reports.iter().all(Option::is_some),
        finish_deadline,
        "finished",
    )?;
    let slices = children.finish()?;
    let broker = BrokerFigures {
        cpu_seconds: match (&cpu_before, &cpu_after) {
            (Some(a), Some(b)) => Some(b.cpu_seconds - a.cpu_seconds),
            _ => None,
        },
        peak_rss_bytes: cpu_after.as_ref().map(|s| s.peak_rss_bytes),
    };
    merge(o, &slices, broker)
}

/// What the parent measured of the broker over the measured window.
#[derive(Debug, Clone, Copy, Default)]
pub struct BrokerFigures {
    pub cpu_seconds: Option<f64>,
    pub peak_rss_bytes: Option<u64>,
}

/// One child's report, decoded.
pub struct SliceReport {
    pub slice: Slice,
    pub acked: u64,
    pub acked_bytes: u64,
    pub consumed_bytes: Option<u64>,
    pub failed: u64,
    pub measured_seconds: f64,
    pub per_second_mb: Vec<f64>,
    pub publish: Histogram<u64>,
    pub e2e: Option<Histogram<u64>>,
    pub interrupted: bool,
    pub verified: bool,
    pub verification: String,
}

impl SliceReport {
    pub fn from_file(slice: Slice, file: &ReportFile) -> Result<SliceReport, String> {
        let publish = file
            .publish_histogram
            .as_deref()
            .ok_or("the report has no publish histogram")?;
        Ok(SliceReport {
            slice,
            acked: file.acked,
            acked_bytes: file.acked_bytes,
            consumed_bytes: file.consumed_bytes,
            failed: file.failed,
            measured_seconds: file.measured_seconds,
            per_second_mb: file.per_second_mb.clone(),
            publish: decode_histogram(publish)?,
            e2e: file
                .e2e_histogram
                .as_deref()
                .map(decode_histogram)
                .transpose()?,
            interrupted: file.interrupted,
            verified: file.verified,
            verification: file.verification.clone(),
        })
    }
}

/// Elementwise sum; a shorter series counts as zero where it has no value.
fn sum_series(series: &[&[f64]]) -> Vec<f64> {
    let len = series.iter().map(|s| s.len()).max().unwrap_or(0);
    (0..len)
        .map(|i| series.iter().filter_map(|s| s.get(i)).sum())
        .collect()
}

/// One report from the children's: see the module comment for what is summed and merged.
pub fn merge(o: &Options, slices: &[SliceReport], broker: BrokerFigures) -> Result<Report, String> {
    let mut publish = histogram();
    for s in slices {
        publish
            .add(&s.publish)
            .map_err(|e| format!("merge publish histograms: {e:?}"))?;
    }
    // End-to-end latency exists only if every process's consumer check passed.
    let e2e = if !slices.is_empty() && slices.iter().all(|s| s.e2e.is_some()) {
        let mut merged = histogram();
        for h in slices.iter().filter_map(|s| s.e2e.as_ref()) {
            merged
                .add(h)
                .map_err(|e| format!("merge end-to-end histograms: {e:?}"))?;
        }
        Some(merged)
    } else {
        None
    };
    let acked: u64 = slices.iter().map(|s| s.acked).sum();
    let acked_bytes: u64 = slices.iter().map(|s| s.acked_bytes).sum();
    // The children measured the same window (they started together); the longest is the run's.
    let measured = slices
        .iter()
        .map(|s| s.measured_seconds)
        .fold(0.0, f64::max);
    let verified = !slices.is_empty() && slices.iter().all(|s| s.verified);
    let verification = if slices.is_empty() {
        "no process reported".to_string()
    } else if verified {
        format!("{} processes: {}", slices.len(), slices[0].verification)
    } else {
        slices
            .iter()
            .filter(|s| !s.verified)
            .map(|s| {
                format!(
                    "process {} ({}): {}",
                    s.slice.index,
                    s.slice.describe(o.partitions),
                    s.verification
                )
            })
            .collect::<Vec<_>>()
            .join("; ")
    };
    let series: Vec<&[f64]> = slices.iter().map(|s| &s.per_second_mb[..]).collect();
    Ok(Report {
        options: o.clone(),
        per_second_mb: sum_series(&series),
        interrupted: slices.iter().any(|s| s.interrupted),
        measured_seconds: measured,
        acked,
        acked_bytes,
        failed: slices.iter().map(|s| s.failed).sum(),
        mb_per_second: acked_bytes as f64 / measured.max(1e-9) / 1e6,
        records_per_second: acked as f64 / measured.max(1e-9),
        publish_us: Percentiles::of(&publish),
        e2e_us: e2e.as_ref().map(Percentiles::of),
        publish_histogram: publish,
        e2e_histogram: e2e,
        broker_cpu_seconds: broker.cpu_seconds,
        broker_cpu_seconds_per_gb: broker
            .cpu_seconds
            .map(|c| c / (acked_bytes as f64 / 1e9).max(1e-9)),
        broker_peak_rss_bytes: broker.peak_rss_bytes,
        acked_per_process: slices.iter().map(|s| s.acked).collect(),
        consumed_bytes: slices.iter().map(|s| s.consumed_bytes).sum::<Option<u64>>(),
        verified,
        verification,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::encode_histogram;

    fn options(processes: usize) -> Options {
        let args: Vec<String> = [
            "--bootstrap",
            "127.0.0.1:9092",
            "--partitions",
            "3",
            "--consume",
            "--processes",
            &processes.to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        Options::parse(&args).expect("options")
    }

    fn slice_report(index: usize, latencies_us: &[u64], verified: bool) -> SliceReport {
        let mut publish = histogram();
        let mut e2e = histogram();
        for &v in latencies_us {
            publish.record(v).expect("in range");
            e2e.record(v * 2).expect("in range");
        }
        SliceReport {
            slice: Slice { index, count: 2 },
            acked: latencies_us.len() as u64,
            acked_bytes: latencies_us.len() as u64 * 100,
            consumed_bytes: Some(latencies_us.len() as u64 * 100),
            failed: 0,
            measured_seconds: 2.0 + index as f64 * 0.01,
            per_second_mb: vec![1.0; 2 + index],
            publish,
            e2e: verified.then_some(e2e),
            interrupted: false,
            verified,
            verification: if verified {
                "every send was acknowledged; every record consumed exactly once, in order per partition".into()
            } else {
                "every send was acknowledged; consumer check failed: partition 0: expected sequence 100 got 101".into()
            },
        }
    }

    #[test]
    fn merged_percentiles_are_percentiles_over_every_record() {
        // Process 0 is fast, process 1 slow: averaging their p50s (50 and 5,000) would say
        // ~2,500; over all 300 records the p50 is a slow one, the p99 the slowest.
        let fast: Vec<u64> = (1..=100).collect();
        let slow: Vec<u64> = (1..=200).map(|v| 5_000 + v).collect();
        let report = merge(
            &options(2),
            &[slice_report(0, &fast, true), slice_report(1, &slow, true)],
            BrokerFigures::default(),
        )
        .expect("merge");
        let mut all = histogram();
        for &v in fast.iter().chain(&slow) {
            all.record(v).expect("in range");
        }
        assert_eq!(report.publish_us, Percentiles::of(&all));
        assert!(report.publish_us.p50 > 5_000, "{:?}", report.publish_us);
        assert_eq!(report.publish_histogram.len(), 300);
        assert_eq!(report.e2e_histogram.as_ref().map(|h| h.len()), Some(300));
        assert_eq!(report.acked, 300);
        assert_eq!(report.acked_bytes, 30_000);
        assert_eq!(report.consumed_bytes, Some(30_000), "consumed bytes add up");
        assert_eq!(report.acked_per_process, vec![100, 200]);
        assert_eq!(
            report.per_second_mb,
            vec![2.0, 2.0, 1.0],
            "summed per second"
        );
        assert_eq!(report.measured_seconds, 2.01);
        assert!(report.verified, "{}", report.verification);
        assert!(report.verification.starts_with("2 processes: "));
    }

    #[test]
    fn one_failing_process_fails_the_merged_report_and_is_named() {
        let report = merge(
            &options(2),
            &[
                slice_report(0, &[10, 20], false),
                slice_report(1, &[10, 20], true),
            ],
            BrokerFigures {
                cpu_seconds: Some(0.5),
                peak_rss_bytes: Some(1 << 20),
            },
        )
        .expect("merge");
        assert!(!report.verified);
        assert!(
            report.e2e_us.is_none(),
            "no e2e figures from a failed check"
        );
        assert!(
            report
                .verification
                .starts_with("process 0 (partitions 0, 2): every send"),
            "{}",
            report.verification
        );
        assert!(!report.verification.contains("process 1"));
        assert_eq!(report.broker_cpu_seconds, Some(0.5));
        assert_eq!(report.broker_peak_rss_bytes, Some(1 << 20));
    }

    #[test]
    fn a_child_report_round_trips_through_its_json_line() {
        let merged = merge(
            &options(2),
            &[slice_report(0, &[7, 70, 700], true)],
            BrokerFigures::default(),
        )
        .expect("merge");
        let line = child_report_line(&merged).expect("line");
        assert!(!line.contains('\n'), "one line");
        let file = ReportFile::parse(&line).expect("parse");
        let back = SliceReport::from_file(Slice { index: 0, count: 2 }, &file).expect("decode");
        assert_eq!(Percentiles::of(&back.publish), merged.publish_us);
        assert_eq!(back.e2e.map(|h| h.len()), Some(3));
        assert_eq!(back.acked_bytes, 300);
        // The report a person reads carries no histograms.
        assert!(!merged.json().contains("histogram"));
        let mut without = file.clone();
        without.publish_histogram = None;
        assert!(SliceReport::from_file(Slice { index: 0, count: 2 }, &without).is_err());
        assert!(encode_histogram(&histogram()).is_ok());
    }

    #[test]
    fn series_of_different_lengths_sum_elementwise() {
        assert_eq!(sum_series(&[&[1.0, 2.0], &[10.0]]), vec![11.0, 2.0]);
        assert!(sum_series(&[]).is_empty());
    }
}
