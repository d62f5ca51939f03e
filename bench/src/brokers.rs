//! The brokers a comparison runs against: started fresh for each run and stopped after it
//! (sluice; Apache Kafka through `scripts/kafka-reference.sh`), or already running elsewhere
//! and only named by address.
//!
//! Every started broker is pinned to the same CPUs, listens on the same port and writes to the
//! same directory, which is wiped before each start. A started broker is stopped when its
//! [`RunningBroker`] is dropped, also on an error; sluice and the Kafka script run in their own
//! process group so that a Ctrl-C in the terminal reaches only sluice-bench, which stops them in
//! order, and sluice is sent SIGTERM by the kernel should sluice-bench die.

use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::subprocess;

/// How long a broker may take to listen after its start (sluice), or to free the port after a
/// stop.
const PORT_WAIT_SECONDS_MAX: u64 = 30;
/// How long sluice may take to stop after SIGTERM before it is killed.
const STOP_GRACE_SECONDS: u64 = 30;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BrokerKind {
    /// The sluice binary, with these `--override KEY=VALUE` settings.
    Sluice { overrides: Vec<String> },
    /// `scripts/kafka-reference.sh start --profile PROFILE`.
    Kafka { profile: String },
    /// A cluster of `nodes` sluice processes on this machine, each a broker and a voter of
    /// the metadata quorum, all pinned to the same CPUs as a single broker would be.
    SluiceCluster { nodes: usize },
    /// `scripts/kafka-reference.sh cluster-start NODES --profile PROFILE`: as many Apache Kafka
    /// brokers (KRaft combined mode, a static quorum), pinned the same way.
    KafkaCluster { nodes: usize, profile: String },
    /// Already running; not restarted, data not wiped; CPU and RSS only with its PID.
    Running { bootstrap: String, pid: Option<u32> },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerSpec {
    /// Names the broker in the tables and the files (`NAME-runK.json`).
    pub name: String,
    pub kind: BrokerKind,
}

impl BrokerSpec {
    /// `sluice`, `NAME=sluice+KEY=VALUE[+KEY=VALUE...]` (sluice with settings, to compare
    /// variants of it), `kafka-default`, `kafka-flush`, clusters of N nodes `sluice-xN`,
    /// `kafka-default-xN`, `kafka-flush-xN`, or `NAME=HOST:PORT[@PID]`.
    pub fn parse(text: &str) -> Result<BrokerSpec, String> {
        if let Some((base, nodes)) = text.rsplit_once("-x") {
            if let Ok(nodes) = nodes.parse::<usize>() {
                if !(1..=9).contains(&nodes) {
                    return Err(format!("broker {text:?}: a cluster has 1 to 9 nodes"));
                }
                let kind = match base {
                    "sluice" => BrokerKind::SluiceCluster { nodes },
                    "kafka-default" | "kafka-flush" => BrokerKind::KafkaCluster {
                        nodes,
                        profile: base.trim_start_matches("kafka-").to_string(),
                    },
                    _ => return Err(format!("broker {text:?}: sluice-xN or kafka-PROFILE-xN")),
                };
                return Ok(BrokerSpec {
                    name: text.to_string(),
                    kind,
                });
            }
        }
        if let Some((name, variant)) = text.split_once('=') {
            if let Some(settings) = variant.strip_prefix("sluice+") {
                let overrides: Vec<String> = settings.split('+').map(str::to_string).collect();
                let valid = valid_name(name)
                    && overrides
                        .iter()
                        .all(|o| o.split_once('=').is_some_and(|(k, _)| !k.is_empty()));
                if !valid {
                    return Err(format!(
                        "broker {text:?}: NAME=sluice+KEY=VALUE[+KEY=VALUE...] (NAME of letters, \
                         digits, '.', '_', '-')"
                    ));
                }
                return Ok(BrokerSpec {
                    name: name.to_string(),
                    kind: BrokerKind::Sluice { overrides },
                });
            }
        }
        let kind = match text {
            "sluice" => BrokerKind::Sluice {
                overrides: Vec::new(),
            },
            "kafka-default" | "kafka-flush" => BrokerKind::Kafka {
                profile: text.trim_start_matches("kafka-").to_string(),
            },
            _ => return BrokerSpec::parse_running(text),
        };
        Ok(BrokerSpec {
            name: text.to_string(),
            kind,
        })
    }

    fn parse_running(text: &str) -> Result<BrokerSpec, String> {
        let bad = || {
            format!(
                "broker {text:?}: sluice, kafka-default, kafka-flush or NAME=HOST:PORT[@PID] \
                 (NAME of letters, digits, '.', '_', '-')"
            )
        };
        let (name, address) = text.split_once('=').ok_or_else(bad)?;
        let (bootstrap, pid) = match address.split_once('@') {
            Some((bootstrap, pid)) => (bootstrap, Some(pid.parse::<u32>().map_err(|_| bad())?)),
            None => (address, None),
        };
        let port = bootstrap
            .rsplit_once(':')
            .map(|(_, port)| port.parse::<u16>());
        if !valid_name(name) || !matches!(port, Some(Ok(_))) {
            return Err(bad());
        }
        Ok(BrokerSpec {
            name: name.to_string(),
            kind: BrokerKind::Running {
                bootstrap: bootstrap.to_string(),
                pid,
            },
        })
    }

    /// Started and stopped by the comparison (as opposed to already running).
    pub fn is_started(&self) -> bool {
        !matches!(self.kind, BrokerKind::Running { .. })
    }
}

/// A broker name: it names files, so letters, digits, '.', '_' and '-' only.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
}

/// Where started brokers run: the same for every broker of a comparison.
pub struct Setup {
    pub port: u16,
    /// taskset CPU list, or `all`.
    pub cpus: String,
    /// The brokers' data directory; wiped before each start.
    pub data: PathBuf,
    pub sluice_bin: Option<PathBuf>,
    pub sluice_cores: usize,
    pub kafka_script: Option<PathBuf>,
}

enum Handle {
    Sluice(Child),
    Kafka {
        script: PathBuf,
        port: u16,
    },
    SluiceCluster(Vec<Child>),
    KafkaCluster {
        script: PathBuf,
        port: u16,
        nodes: usize,
    },
    NotOurs,
    Stopped,
}

/// A broker (or cluster) serving for one run.
pub struct RunningBroker {
    pub bootstrap: String,
    /// Every broker process: CPU and memory are summed over them.
    pub pids: Vec<u32>,
    handle: Handle,
}

fn wipe(data: &Path) -> Result<(), String> {
    match std::fs::remove_dir_all(data) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(format!("wipe {}: {e}", data.display()))
        }
        _ => Ok(()),
    }
}

fn wait_until_port_is_free(port: u16) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(PORT_WAIT_SECONDS_MAX);
    while TcpListener::bind(("127.0.0.1", port)).is_err() {
        if Instant::now() >= deadline {
            return Err(format!("127.0.0.1:{port} is in use"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

impl RunningBroker {
    /// Starts a fresh broker (a wiped data directory) and waits until it serves; a running
    /// broker is only named. `log` receives sluice's output.
    pub fn start(spec: &BrokerSpec, setup: &Setup, log: &Path) -> Result<RunningBroker, String> {
        match &spec.kind {
            BrokerKind::Running { bootstrap, pid } => Ok(RunningBroker {
                bootstrap: bootstrap.clone(),
                pids: pid.iter().copied().collect(),
                handle: Handle::NotOurs,
            }),
            BrokerKind::Sluice { overrides } => RunningBroker::start_sluice(setup, overrides, log),
            BrokerKind::Kafka { profile } => RunningBroker::start_kafka(setup, profile),
            BrokerKind::SluiceCluster { nodes } => {
                RunningBroker::start_sluice_cluster(setup, *nodes, log)
            }
            BrokerKind::KafkaCluster { nodes, profile } => {
                RunningBroker::start_kafka_cluster(setup, *nodes, profile)
            }
        }
    }

    /// N sluice nodes: clients on PORT.., controllers on PORT+100.., data in DATA/node-I; waits
    /// until every node's Metadata lists N brokers. Their output goes to `log`.
    fn start_sluice_cluster(
        setup: &Setup,
        nodes: usize,
        log: &Path,
    ) -> Result<RunningBroker, String> {
        let bin = setup.sluice_bin.as_ref().ok_or("no sluice binary")?;
        wipe(&setup.data)?;
        let ports: Vec<u16> = (0..nodes).map(|i| setup.port + i as u16).collect();
        for port in &ports {
            wait_until_port_is_free(*port)?;
            wait_until_port_is_free(port + 100)?;
        }
        let voters: Vec<String> = ports
            .iter()
            .enumerate()
            .map(|(i, port)| format!("{}@127.0.0.1:{}", i + 1, port + 100))
            .collect();
        let log_file =
            std::fs::File::create(log).map_err(|e| format!("create {}: {e}", log.display()))?;
        let mut broker = RunningBroker {
            bootstrap: ports
                .iter()
                .map(|p| format!("127.0.0.1:{p}"))
                .collect::<Vec<_>>()
                .join(","),
            pids: Vec::new(),
            handle: Handle::SluiceCluster(Vec::new()),
        };
        for (i, port) in ports.iter().enumerate() {
            let data = setup.data.join(format!("node-{}", i + 1));
            let settings = [
                format!("node.id={}", i + 1),
                "process.roles=broker,controller".to_string(),
                format!("controller.quorum.voters={}", voters.join(",")),
            ];
            let child = spawn_sluice(setup, bin, *port, &data, &settings, &log_file, log)?;
            broker.pids.push(child.id());
            if let Handle::SluiceCluster(children) = &mut broker.handle {
                children.push(child);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(PORT_WAIT_SECONDS_MAX * 2);
        let ready = format!("sluice: cluster: {nodes} live broker(s)");
        loop {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            if text.matches(&ready).count() >= nodes {
                return Ok(broker);
            }
            if let Handle::SluiceCluster(children) = &mut broker.handle {
                if children
                    .iter_mut()
                    .any(|c| matches!(c.try_wait(), Ok(Some(_))))
                {
                    return Err(format!(
                        "a sluice node exited while starting; log: {}",
                        log.display()
                    ));
                }
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "the sluice cluster did not form within {} s; log: {}",
                    PORT_WAIT_SECONDS_MAX * 2,
                    log.display()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn start_kafka_cluster(
        setup: &Setup,
        nodes: usize,
        profile: &str,
    ) -> Result<RunningBroker, String> {
        let script = setup.kafka_script.as_ref().ok_or("no kafka-reference.sh")?;
        let output = Command::new(script)
            .args(["cluster-start", &nodes.to_string()])
            .args(["--profile", profile])
            .args(["--port", &setup.port.to_string()])
            .args(["--cpus", &setup.cpus])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .process_group(0)
            .output()
            .map_err(|e| format!("run {}: {e}", script.display()))?;
        let mut broker = RunningBroker {
            bootstrap: String::new(),
            pids: Vec::new(),
            handle: Handle::KafkaCluster {
                script: script.clone(),
                port: setup.port,
                nodes,
            },
        };
        if !output.status.success() {
            return Err(format!(
                "kafka-reference.sh cluster-start failed ({}); its messages are above",
                output.status
            ));
        }
        // The script prints the bootstrap list, then the PIDs.
        let stdout = String::from_utf8_lossy(&output.stdout);
        let lines: Vec<&str> = stdout.lines().filter(|l| !l.trim().is_empty()).collect();
        let [.., bootstrap, pids] = lines.as_slice() else {
            return Err(format!(
                "kafka-reference.sh cluster-start printed {stdout:?}"
            ));
        };
        broker.bootstrap = bootstrap.trim().to_string();
        broker.pids = pids
            .split(',')
            .map(|p| p.trim().parse::<u32>())
            .collect::<Result<_, _>>()
            .map_err(|_| format!("kafka-reference.sh cluster-start printed {stdout:?}"))?;
        Ok(broker)
    }

    fn start_sluice(
        setup: &Setup,
        overrides: &[String],
        log: &Path,
    ) -> Result<RunningBroker, String> {
        let bin = setup.sluice_bin.as_ref().ok_or("no sluice binary")?;
        wipe(&setup.data)?;
        wait_until_port_is_free(setup.port)?;
        let log_file =
            std::fs::File::create(log).map_err(|e| format!("create {}: {e}", log.display()))?;
        let child = spawn_sluice(
            setup,
            bin,
            setup.port,
            &setup.data,
            overrides,
            &log_file,
            log,
        )?;
        let mut broker = RunningBroker {
            bootstrap: format!("127.0.0.1:{}", setup.port),
            pids: vec![child.id()],
            handle: Handle::Sluice(child),
        };
        let deadline = Instant::now() + Duration::from_secs(PORT_WAIT_SECONDS_MAX);
        while TcpStream::connect(("127.0.0.1", setup.port)).is_err() {
            if let Handle::Sluice(child) = &mut broker.handle {
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(format!(
                        "sluice exited while starting ({status}); log: {}",
                        log.display()
                    ));
                }
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "sluice did not listen on {} within {PORT_WAIT_SECONDS_MAX} s; log: {}",
                    broker.bootstrap,
                    log.display()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(broker)
    }

    fn start_kafka(setup: &Setup, profile: &str) -> Result<RunningBroker, String> {
        let script = setup.kafka_script.as_ref().ok_or("no kafka-reference.sh")?;
        wipe(&setup.data)?;
        let output = Command::new(script)
            .arg("start")
            .args(["--profile", profile])
            .args(["--port", &setup.port.to_string()])
            .arg("--data")
            .arg(&setup.data)
            .args(["--cpus", &setup.cpus])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .process_group(0)
            .output()
            .map_err(|e| format!("run {}: {e}", script.display()))?;
        // From here on, dropping `broker` runs the script's stop, also if the start failed
        // half-way.
        let mut broker = RunningBroker {
            bootstrap: format!("127.0.0.1:{}", setup.port),
            pids: Vec::new(),
            handle: Handle::Kafka {
                script: script.clone(),
                port: setup.port,
            },
        };
        if !output.status.success() {
            return Err(format!(
                "kafka-reference.sh start failed ({}); its messages are above",
                output.status
            ));
        }
        // The script prints the broker's PID on its last line.
        let stdout = String::from_utf8_lossy(&output.stdout);
        let pid = stdout.lines().rev().find(|l| !l.trim().is_empty());
        broker.pids = vec![pid
            .and_then(|p| p.trim().parse().ok())
            .ok_or_else(|| format!("kafka-reference.sh start printed no PID: {stdout:?}"))?];
        Ok(broker)
    }

    /// Stops a started broker and waits until it has exited; idempotent; a running broker
    /// that is not ours is left alone.
    pub fn stop(&mut self) -> Result<(), String> {
        match std::mem::replace(&mut self.handle, Handle::Stopped) {
            Handle::Sluice(mut child) => {
                subprocess::stop(&mut child, Duration::from_secs(STOP_GRACE_SECONDS))
                    .ok_or("sluice could not be stopped")?;
                Ok(())
            }
            Handle::Kafka { script, port } => {
                run_script(&script, &["stop", "--port", &port.to_string()])
            }
            Handle::SluiceCluster(mut children) => {
                // SIGTERM to all at once: nodes stopping one by one would each wait for a
                // quorum that is leaving.
                for child in &children {
                    subprocess::signal(child, libc::SIGTERM);
                }
                for child in &mut children {
                    subprocess::stop(child, Duration::from_secs(STOP_GRACE_SECONDS))
                        .ok_or("a sluice node could not be stopped")?;
                }
                Ok(())
            }
            Handle::KafkaCluster {
                script,
                port,
                nodes,
            } => run_script(
                &script,
                &[
                    "cluster-stop",
                    &nodes.to_string(),
                    "--port",
                    &port.to_string(),
                ],
            ),
            Handle::NotOurs | Handle::Stopped => Ok(()),
        }
    }
}

/// Starts one sluice process pinned to the broker CPUs, listening on `port` with its data in
/// `data` and these `--override` settings, its output appended to `log_file` (named `log`), in
/// its own process group and sent SIGTERM should sluice-bench die.
fn spawn_sluice(
    setup: &Setup,
    bin: &Path,
    port: u16,
    data: &Path,
    settings: &[String],
    log_file: &std::fs::File,
    log: &Path,
) -> Result<Child, String> {
    let output = || {
        log_file
            .try_clone()
            .map_err(|e| format!("{}: {e}", log.display()))
    };
    let mut command = subprocess::pinned(&setup.cpus, bin);
    command
        .arg("--cores")
        .arg(setup.sluice_cores.to_string())
        .arg("--override")
        .arg(format!("listeners=PLAINTEXT://127.0.0.1:{port}"))
        .arg("--override")
        .arg(format!("log.dirs={}", data.display()));
    for s in settings {
        command.arg("--override").arg(s);
    }
    command
        .stdin(Stdio::null())
        .stdout(output()?)
        .stderr(output()?)
        .process_group(0);
    subprocess::dies_with_parent(&mut command, libc::SIGTERM);
    command
        .spawn()
        .map_err(|e| format!("start {}: {e}", bin.display()))
}

/// Runs kafka-reference.sh with `args` (its messages to our stderr), failing on a non-zero exit.
fn run_script(script: &Path, args: &[&str]) -> Result<(), String> {
    let status = Command::new(script)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .process_group(0)
        .status()
        .map_err(|e| format!("run {}: {e}", script.display()))?;
    if !status.success() {
        return Err(format!("kafka-reference.sh {} failed ({status})", args[0]));
    }
    Ok(())
}

impl Drop for RunningBroker {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("sluice-bench compare: stopping the broker: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_names_parse() {
        assert_eq!(
            BrokerSpec::parse("sluice").map(|b| b.kind),
            Ok(BrokerKind::Sluice {
                overrides: Vec::new()
            })
        );
        let zc =
            BrokerSpec::parse("sluice-zc=sluice+sluice.socket.send.zerocopy=true+num.partitions=3")
                .expect("a sluice variant");
        assert_eq!(zc.name, "sluice-zc");
        assert_eq!(
            zc.kind,
            BrokerKind::Sluice {
                overrides: vec![
                    "sluice.socket.send.zerocopy=true".into(),
                    "num.partitions=3".into()
                ]
            }
        );
        assert!(zc.is_started());
        assert_eq!(
            BrokerSpec::parse("kafka-flush").map(|b| b.kind),
            Ok(BrokerKind::Kafka {
                profile: "flush".into()
            })
        );
        let running = BrokerSpec::parse("redpanda=10.0.0.2:9092@1234").expect("running");
        assert_eq!(running.name, "redpanda");
        assert_eq!(
            running.kind,
            BrokerKind::Running {
                bootstrap: "10.0.0.2:9092".into(),
                pid: Some(1234)
            }
        );
        assert!(!running.is_started());
        assert_eq!(
            BrokerSpec::parse("sluice-x3").map(|b| b.kind),
            Ok(BrokerKind::SluiceCluster { nodes: 3 })
        );
        assert_eq!(
            BrokerSpec::parse("kafka-flush-x3").map(|b| b.kind),
            Ok(BrokerKind::KafkaCluster {
                nodes: 3,
                profile: "flush".into()
            })
        );
        assert!(BrokerSpec::parse("kafka-x3").is_err());
        assert!(BrokerSpec::parse("sluice-x0").is_err());
        assert_eq!(
            BrokerSpec::parse("other=localhost:9092").map(|b| b.kind),
            Ok(BrokerKind::Running {
                bootstrap: "localhost:9092".into(),
                pid: None
            })
        );
        for bad in [
            "kafka",
            "x=host",
            "x=host:port",
            "x=host:1@pid",
            "=h:1",
            "a/b=h:1",
            "x=sluice+",
            "x=sluice+novalue",
            "a/b=sluice+k=v",
            "",
        ] {
            assert!(BrokerSpec::parse(bad).is_err(), "{bad}");
        }
    }
}
