//! `sluice-bench compare`: one workload against several brokers, side by side.
//!
//! Runs alternate between the brokers (A B C A B C ...) so that drift of a shared machine hits
//! them alike. Each run starts its broker fresh (same CPUs, same port, same wiped data
//! directory), runs the load generator as a child process (this executable, pinned to the client
//! CPUs, `--pid BROKER --json OUT/NAME-runK.json` and a fresh topic), and stops the broker. Then
//! the summary: per broker the median of each headline figure over its verified, complete runs,
//! and the ratio to the first broker's ([`crate::summary`]). `OUT/compare.json` holds every run's
//! report and the summary; it is rewritten after every run.
//!
//! A failed run (it did not run, or lost or duplicated records) is reported loudly and makes the
//! exit status non-zero, after the summary. Ctrl-C stops the current run (its load generator
//! gets SIGINT and writes a partial report, left out of the medians), stops its broker, and
//! still prints the summary of the runs that completed.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::brokers::{BrokerKind, BrokerSpec, RunningBroker, Setup};
use crate::load::{self, Options, INTERRUPTED};
use crate::report::ReportFile;
use crate::subprocess;
use crate::summary::Summary;

pub const USAGE: &str = "usage: sluice-bench compare [--runs 3] [--brokers sluice,kafka-default,kafka-flush] \
[--broker-cpus 0] [--client-cpus 1] [--port 29092] [--data target/bench/data] [--out target/bench] \
[--sluice-bin PATH (default: the sluice next to sluice-bench)] [--sluice-cores 1] [--scripts DIR] \
-- LOAD FLAGS (as for a run, e.g. --workload bench/workloads/small-e2e-100mb.workload --seconds 20)
  brokers (comma-separated; the first is the baseline of the ratios):
    sluice                 the sluice binary, started fresh for each run
    kafka-default          Apache Kafka with its defaults (scripts/kafka-reference.sh, found from
    kafka-flush            the current directory or --scripts DIR), or fsync per batch
    NAME=sluice+K=V[+K=V]  sluice started with these --override settings (compare variants of it)
    sluice-xN              a cluster of N sluice nodes (clients on PORT.., controllers on PORT+100..)
    kafka-default-xN       a cluster of N Kafka brokers (kafka-reference.sh cluster-start; PORT, PORT+2..),
    kafka-flush-xN         every node pinned to the broker CPUs; CPU and RSS are summed over the nodes
    NAME=HOST:PORT[@PID]   a broker already running: not restarted, not wiped; CPU/RSS only with @PID
  CPU lists are taskset lists, or all (no pinning). Writes OUT/NAME-runK.json, OUT/NAME-runK.log
  (sluice's output) and OUT/compare.json; the brokers' data lives in DATA/log, wiped before each run.
  Exit status: 0, 1 if a run failed or lost/duplicated records, 2 for bad flags, 130 on Ctrl-C.";

/// The comparison sets these itself for each run.
const FLAGS_SET_PER_RUN: [&str; 6] = [
    "--bootstrap",
    "--topic",
    "--pid",
    "--json",
    "--charts",
    "--slice",
];

/// Marks a data directory this command made, so that it never wipes somebody else's.
const DATA_MARKER: &str = ".sluice-bench-compare";

#[derive(Debug, Clone, PartialEq)]
pub struct CompareOptions {
    pub runs: usize,
    pub brokers: Vec<BrokerSpec>,
    pub broker_cpus: String,
    pub client_cpus: String,
    pub port: u16,
    pub data: PathBuf,
    pub out: PathBuf,
    pub sluice_bin: Option<PathBuf>,
    pub sluice_cores: usize,
    pub scripts: Option<PathBuf>,
    /// Everything after `--`: the load generator's flags.
    pub load_args: Vec<String>,
}

impl CompareOptions {
    pub fn parse(args: &[String]) -> Result<CompareOptions, String> {
        let mut c = CompareOptions {
            runs: 3,
            brokers: Vec::new(),
            broker_cpus: "0".into(),
            client_cpus: "1".into(),
            port: 29092,
            data: PathBuf::from("target/bench/data"),
            out: PathBuf::from("target/bench"),
            sluice_bin: None,
            sluice_cores: 1,
            scripts: None,
            load_args: Vec::new(),
        };
        let mut brokers = "sluice,kafka-default,kafka-flush".to_string();
        let mut it = args.iter();
        while let Some(flag) = it.next() {
            if flag == "--" {
                c.load_args = it.by_ref().cloned().collect();
                break;
            }
            let mut value = || {
                it.next()
                    .cloned()
                    .ok_or_else(|| format!("{flag} needs a value"))
            };
            let number = |v: String| {
                v.parse::<usize>()
                    .map_err(|_| format!("{flag}: not a number"))
            };
            match flag.as_str() {
                "--runs" => c.runs = number(value()?)?,
                "--brokers" => brokers = value()?,
                "--broker-cpus" => c.broker_cpus = value()?,
                "--client-cpus" => c.client_cpus = value()?,
                "--port" => c.port = value()?.parse().map_err(|_| "--port: not a port")?,
                "--data" => c.data = value()?.into(),
                "--out" => c.out = value()?.into(),
                "--sluice-bin" => c.sluice_bin = Some(value()?.into()),
                "--sluice-cores" => c.sluice_cores = number(value()?)?,
                "--scripts" => c.scripts = Some(value()?.into()),
                other => {
                    return Err(format!(
                        "unknown flag {other} (the load generator's flags go after --)"
                    ))
                }
            }
        }
        c.brokers = brokers
            .split(',')
            .map(str::trim)
            .filter(|b| !b.is_empty())
            .map(BrokerSpec::parse)
            .collect::<Result<_, _>>()?;
        if c.brokers.is_empty() {
            return Err("--brokers names no broker".into());
        }
        for (i, b) in c.brokers.iter().enumerate() {
            if c.brokers[..i].iter().any(|other| other.name == b.name) {
                return Err(format!("broker {} is named twice", b.name));
            }
        }
        if c.runs < 1 || c.sluice_cores < 1 {
            return Err("--runs and --sluice-cores must be at least 1".into());
        }
        c.check_load_args()?;
        Ok(c)
    }

    /// The load flags must make a valid run once the comparison adds its own.
    fn check_load_args(&self) -> Result<(), String> {
        let expanded = load::expand_workloads(&self.load_args)?;
        if let Some(flag) = expanded
            .iter()
            .find(|a| FLAGS_SET_PER_RUN.contains(&a.as_str()))
        {
            return Err(format!(
                "{flag} is set by compare for each run; leave it out of the load flags"
            ));
        }
        let mut probe = self.load_args.clone();
        probe.extend(["--bootstrap".to_string(), "127.0.0.1:1".to_string()]);
        Options::parse(&probe)
            .map(|_| ())
            .map_err(|e| format!("load flags: {e}"))
    }
}

/// One run of one broker, as `compare.json` records it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunRecord {
    pub broker: String,
    pub run: usize,
    /// The broker's PID during this run (a started broker is a fresh process per run).
    pub broker_pid: Option<u32>,
    pub verified: bool,
    pub interrupted: bool,
    /// Why the run produced no report (it did not run).
    pub error: Option<String>,
    pub report: Option<ReportFile>,
}

impl RunRecord {
    /// Counts in the medians.
    fn complete(&self) -> bool {
        self.report.is_some() && self.verified && !self.interrupted
    }
}

/// `OUT/compare.json`, `"schema": 1`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CompareFile {
    pub schema: u32,
    pub baseline: String,
    pub brokers: Vec<String>,
    pub runs_per_broker: usize,
    pub load_flags: Vec<String>,
    pub interrupted: bool,
    pub runs: Vec<RunRecord>,
    /// Per broker: `runs` counted, and for each figure (`mb_per_second`, `publish_p99_ms`, ...)
    /// the median and `..._ratio` to the baseline's; see [`Summary::json`].
    pub summary: serde_json::Value,
}

impl CompareFile {
    pub fn load(path: &Path) -> Result<CompareFile, String> {
        let text =
            std::fs::read_to_string(path).map_err(|e| format!("read {}: {e}", path.display()))?;
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
    }
}

struct Comparison {
    c: CompareOptions,
    /// This executable: the load generator.
    exe: PathBuf,
    setup: Setup,
    records: Vec<RunRecord>,
    header_printed: bool,
}

/// `sluice-bench compare ARGS`; returns the exit status.
pub fn main(args: &[String]) -> i32 {
    let c = match CompareOptions::parse(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("sluice-bench compare: {e}\n{USAGE}");
            return 2;
        }
    };
    match Comparison::prepare(c) {
        Ok(comparison) => comparison.run(),
        Err(e) => {
            eprintln!("sluice-bench compare: {e}");
            1
        }
    }
}

fn absolute(path: &Path) -> Result<PathBuf, String> {
    std::path::absolute(path).map_err(|e| format!("{}: {e}", path.display()))
}

/// `scripts/kafka-reference.sh` in `--scripts DIR`, else in the current directory or one of its
/// parents, else next to this executable's repository (target/release/../..).
fn find_kafka_script(scripts: Option<&Path>, exe: &Path) -> Result<PathBuf, String> {
    if let Some(dir) = scripts {
        let script = dir.join("kafka-reference.sh");
        return match script.is_file() {
            true => absolute(&script),
            false => Err(format!("{} does not exist", script.display())),
        };
    }
    let cwd = std::env::current_dir().map_err(|e| format!("current directory: {e}"))?;
    cwd.ancestors()
        .chain(exe.ancestors())
        .map(|dir| dir.join("scripts/kafka-reference.sh"))
        .find(|script| script.is_file())
        .ok_or_else(|| {
            "scripts/kafka-reference.sh is not in the current directory or above; run from the \
             repository or pass --scripts DIR"
                .to_string()
        })
}

/// The data directory must be new, empty, or one this command made before.
fn prepare_data_dir(data: &Path) -> Result<PathBuf, String> {
    let marker = data.join(DATA_MARKER);
    let empty = std::fs::read_dir(data).map_or(true, |mut entries| entries.next().is_none());
    if !empty && !marker.exists() {
        return Err(format!(
            "--data {} holds files sluice-bench compare did not make; refusing to wipe it",
            data.display()
        ));
    }
    std::fs::create_dir_all(data).map_err(|e| format!("create {}: {e}", data.display()))?;
    std::fs::write(
        &marker,
        "the brokers of sluice-bench compare write to log/, wiped per run\n",
    )
    .map_err(|e| format!("write {}: {e}", marker.display()))?;
    Ok(data.join("log"))
}

impl Comparison {
    fn prepare(c: CompareOptions) -> Result<Comparison, String> {
        let exe = std::env::current_exe().map_err(|e| format!("this executable's path: {e}"))?;
        let any = |f: fn(&BrokerKind) -> bool| c.brokers.iter().any(|b| f(&b.kind));
        let sluice_bin = if any(|k| {
            matches!(
                k,
                BrokerKind::Sluice { .. } | BrokerKind::SluiceCluster { .. }
            )
        }) {
            let bin = match &c.sluice_bin {
                Some(bin) => absolute(bin)?,
                None => exe.with_file_name("sluice"),
            };
            if !bin.is_file() {
                return Err(format!(
                    "the sluice binary {} does not exist (build it, or pass --sluice-bin)",
                    bin.display()
                ));
            }
            Some(bin)
        } else {
            None
        };
        let kafka_script = if any(|k| {
            matches!(
                k,
                BrokerKind::Kafka { .. } | BrokerKind::KafkaCluster { .. }
            )
        }) {
            Some(find_kafka_script(c.scripts.as_deref(), &exe)?)
        } else {
            None
        };
        if c.brokers.iter().any(BrokerSpec::is_started) {
            subprocess::check_cpus(&c.broker_cpus)?;
        }
        subprocess::check_cpus(&c.client_cpus)?;
        let out = absolute(&c.out)?;
        std::fs::create_dir_all(&out).map_err(|e| format!("create {}: {e}", out.display()))?;
        let data = prepare_data_dir(&absolute(&c.data)?)?;
        let setup = Setup {
            port: c.port,
            cpus: c.broker_cpus.clone(),
            data,
            sluice_bin,
            sluice_cores: c.sluice_cores,
            kafka_script,
        };
        Ok(Comparison {
            c: CompareOptions { out, ..c },
            exe,
            setup,
            records: Vec::new(),
            header_printed: false,
        })
    }

    fn run(mut self) -> i32 {
        let names: Vec<String> = self.c.brokers.iter().map(|b| b.name.clone()).collect();
        println!(
            "Comparing {} over {} alternating runs (brokers on CPUs {}, load generator on CPUs {}); \
             ratios are to {}.\n",
            names.join(", "),
            self.c.runs,
            self.c.broker_cpus,
            self.c.client_cpus,
            names[0]
        );
        'runs: for run in 1..=self.c.runs {
            for b in self.c.brokers.clone() {
                if INTERRUPTED.load(Ordering::SeqCst) {
                    break 'runs;
                }
                let record = self.one_run(&b, run);
                self.records.push(record);
                if let Err(e) = self.write_json() {
                    eprintln!("sluice-bench compare: {e}");
                }
            }
        }
        if let Err(e) = std::fs::remove_dir_all(&self.setup.data) {
            if e.kind() != std::io::ErrorKind::NotFound {
                eprintln!(
                    "sluice-bench compare: wipe {}: {e}",
                    self.setup.data.display()
                );
            }
        }
        self.finish()
    }

    /// One run: start the broker, run the load generator against it, stop the broker. The row
    /// is printed as soon as the run ends.
    fn one_run(&mut self, b: &BrokerSpec, run: usize) -> RunRecord {
        let json = self.c.out.join(format!("{}-run{run}.json", b.name));
        let log = self.c.out.join(format!("{}-run{run}.log", b.name));
        let _ = std::fs::remove_file(&json);
        let mut record = RunRecord {
            broker: b.name.clone(),
            run,
            broker_pid: None,
            verified: false,
            interrupted: false,
            error: None,
            report: None,
        };
        let outcome = RunningBroker::start(b, &self.setup, &log).and_then(|mut broker| {
            record.broker_pid = broker.pids.first().copied();
            if INTERRUPTED.load(Ordering::SeqCst) {
                return Err("interrupted before the load started".to_string());
            }
            let topic = format!("bench-{}-run{run}-{}", b.name, std::process::id());
            let stdout = self.load(&broker, &topic, &json);
            let stopped = broker.stop();
            let stdout = stdout?;
            stopped?;
            Ok(stdout)
        });
        let stdout = match outcome {
            Ok(stdout) => stdout,
            Err(e) => {
                record.interrupted = INTERRUPTED.load(Ordering::SeqCst);
                record.error = Some(e);
                String::new()
            }
        };
        if record.error.is_none() {
            match std::fs::read_to_string(&json)
                .map_err(|e| {
                    format!("the load generator wrote no report ({e}); its messages are above")
                })
                .and_then(|text| ReportFile::parse(&text))
            {
                Ok(report) => {
                    record.verified = report.verified;
                    record.interrupted = report.interrupted;
                    record.report = Some(report);
                }
                Err(e) => record.error = Some(e),
            }
        }
        self.print_row(&record, &stdout);
        record
    }

    /// The load generator, pinned to the client CPUs, in its own process group (a terminal's
    /// Ctrl-C reaches only us; we forward it). Returns what it printed.
    fn load(&self, broker: &RunningBroker, topic: &str, json: &Path) -> Result<String, String> {
        let mut command = subprocess::pinned(&self.c.client_cpus, &self.exe);
        command
            .args(&self.c.load_args)
            .args(["--bootstrap", &broker.bootstrap, "--topic", topic])
            .arg("--json")
            .arg(json);
        if !broker.pids.is_empty() {
            let pids: Vec<String> = broker.pids.iter().map(u32::to_string).collect();
            command.args(["--pid", &pids.join(",")]);
        }
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .process_group(0);
        subprocess::dies_with_parent(&mut command, libc::SIGINT);
        let mut child = command
            .spawn()
            .map_err(|e| format!("start the load generator {}: {e}", self.exe.display()))?;
        let mut stdout = child.stdout.take().expect("stdout is piped");
        let reader = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stdout.read_to_string(&mut text);
            text
        });
        let mut forwarded = false;
        loop {
            match child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) => {}
                Err(e) => return Err(format!("waiting for the load generator: {e}")),
            }
            if INTERRUPTED.load(Ordering::SeqCst) && !forwarded {
                subprocess::signal(&child, libc::SIGINT);
                forwarded = true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(reader.join().unwrap_or_default())
    }

    /// The load generator's Markdown row, named after the broker and run.
    fn print_row(&mut self, record: &RunRecord, stdout: &str) {
        let lines: Vec<&str> = stdout.lines().collect();
        let label = format!("{} run {}", record.broker, record.run);
        match (&record.error, lines.get(2)) {
            (None, Some(row)) if row.starts_with("| ") => {
                if !self.header_printed {
                    println!("| broker, run: {}", &lines[0][2..]);
                    println!("{}", lines[1]);
                    self.header_printed = true;
                }
                println!("| {label}: {}", &row[2..]);
            }
            (None, _) => println!("{label}: (no Markdown row printed)"),
            (Some(e), _) => println!("{label}: FAILED: {e}"),
        }
        if let Some(report) = &record.report {
            if !report.verified {
                println!("{label}: VERIFICATION FAILED: {}", report.verification);
            } else if report.interrupted {
                println!("{label}: interrupted (partial; left out of the medians)");
            }
        }
    }

    fn summary(&self) -> Summary {
        let names: Vec<String> = self.c.brokers.iter().map(|b| b.name.clone()).collect();
        let complete: Vec<(String, ReportFile)> = self
            .records
            .iter()
            .filter(|r| r.complete())
            .filter_map(|r| Some((r.broker.clone(), r.report.clone()?)))
            .collect();
        Summary::of(&names, &complete)
    }

    fn write_json(&self) -> Result<(), String> {
        let file = CompareFile {
            schema: 1,
            baseline: self.c.brokers[0].name.clone(),
            brokers: self.c.brokers.iter().map(|b| b.name.clone()).collect(),
            runs_per_broker: self.c.runs,
            load_flags: self.c.load_args.clone(),
            interrupted: INTERRUPTED.load(Ordering::SeqCst),
            runs: self.records.clone(),
            summary: self.summary().json(),
        };
        let path = self.c.out.join("compare.json");
        let text = serde_json::to_string_pretty(&file).map_err(|e| format!("compare.json: {e}"))?;
        std::fs::write(&path, text + "\n").map_err(|e| format!("write {}: {e}", path.display()))
    }

    /// Prints the summary and the failures; the exit status.
    fn finish(self) -> i32 {
        let interrupted = INTERRUPTED.load(Ordering::SeqCst);
        println!(
            "\nMedians over the verified, complete runs{}; ratios to {}:\n",
            if interrupted {
                " (interrupted: only the runs that completed)"
            } else {
                ""
            },
            self.c.brokers[0].name
        );
        print!("{}", self.summary().markdown());
        if let Err(e) = self.write_json() {
            eprintln!("sluice-bench compare: {e}");
        }
        println!("\nReports: {}", self.c.out.join("compare.json").display());
        let failures: Vec<String> = self
            .records
            .iter()
            .filter_map(|r| match (&r.error, &r.report) {
                (Some(e), _) if !r.interrupted => Some(format!("{} run {}: {e}", r.broker, r.run)),
                (None, Some(report)) if !report.verified => Some(format!(
                    "{} run {}: VERIFICATION FAILED: {}",
                    r.broker, r.run, report.verification
                )),
                _ => None,
            })
            .collect();
        for failure in &failures {
            eprintln!("sluice-bench compare: FAILED: {failure}");
        }
        if !failures.is_empty() {
            eprintln!(
                "sluice-bench compare: {} of {} runs FAILED; the medians leave them out",
                failures.len(),
                self.records.len()
            );
            return 1;
        }
        if interrupted {
            eprintln!("sluice-bench compare: interrupted");
            return 130;
        }
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn defaults_and_flags() {
        let c = CompareOptions::parse(&args(&["--", "--partitions", "2"])).expect("defaults");
        assert_eq!(c.runs, 3);
        assert_eq!(
            c.brokers
                .iter()
                .map(|b| b.name.as_str())
                .collect::<Vec<_>>(),
            vec!["sluice", "kafka-default", "kafka-flush"]
        );
        assert_eq!((c.broker_cpus.as_str(), c.client_cpus.as_str()), ("0", "1"));
        assert_eq!(c.load_args, args(&["--partitions", "2"]));
        let c = CompareOptions::parse(&args(&[
            "--runs",
            "2",
            "--brokers",
            "sluice,ext=127.0.0.1:9092@7",
            "--port",
            "1234",
            "--broker-cpus",
            "all",
            "--sluice-cores",
            "2",
            "--",
            "--seconds",
            "1",
        ]))
        .expect("flags");
        assert_eq!(c.runs, 2);
        assert_eq!(c.brokers[1].name, "ext");
        assert_eq!(c.port, 1234);
        assert_eq!(c.sluice_cores, 2);
    }

    #[test]
    fn bad_flags_are_refused_before_any_broker_starts() {
        for bad in [
            &["--runs", "0"][..],
            &["--brokers", "sluice,sluice"],
            &["--brokers", ""],
            &["--brokers", "nonsense"],
            &["--bogus"],
            &["--", "--bootstrap", "h:1"],
            &["--", "--pid", "1"],
            &["--", "--json", "x"],
            &["--", "--partitions", "x"],
            &["--", "--unknown-load-flag"],
        ] {
            assert!(CompareOptions::parse(&args(bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_foreign_data_directory_is_never_wiped() {
        let dir =
            std::env::temp_dir().join(format!("sluice-bench-compare-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::write(dir.join("precious"), "x").expect("file");
        assert!(prepare_data_dir(&dir).is_err(), "not ours");
        std::fs::remove_file(dir.join("precious")).expect("rm");
        assert_eq!(
            prepare_data_dir(&dir),
            Ok(dir.join("log")),
            "empty: ours now"
        );
        std::fs::create_dir_all(dir.join("log/topic-0")).expect("broker data");
        assert!(prepare_data_dir(&dir).is_ok(), "ours, with broker data");
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
