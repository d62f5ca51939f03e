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
    /// variants of it), `kafka-default`, `kafka-flush` or `NAME=HOST:PORT[@PID]`.
    pub fn parse(text: &str) -> Result<BrokerSpec, String> {
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
    Kafka { script: PathBuf, port: u16 },
    NotOurs,
    Stopped,
}

/// A broker serving for one run.
pub struct RunningBroker {
    pub bootstrap: String,
    pub pid: Option<u32>,
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
                pid: *pid,
                handle: Handle::NotOurs,
            }),
            BrokerKind::Sluice { overrides } => RunningBroker::start_sluice(setup, overrides, log),
            BrokerKind::Kafka { profile } => RunningBroker::start_kafka(setup, profile),
        }
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
        let log_err = log_file
            .try_clone()
            .map_err(|e| format!("{}: {e}", log.display()))?;
        let mut command = subprocess::pinned(&setup.cpus, bin);
        command
            .arg("--cores")
            .arg(setup.sluice_cores.to_string())
            .arg("--override")
            .arg(format!("listeners=PLAINTEXT://127.0.0.1:{}", setup.port))
            .arg("--override")
            .arg(format!("log.dirs={}", setup.data.display()));
        for o in overrides {
            command.arg("--override").arg(o);
        }
        command
            .stdin(Stdio::null())
            .stdout(log_file)
            .stderr(log_err)
            .process_group(0);
        subprocess::dies_with_parent(&mut command, libc::SIGTERM);
        let child = command
            .spawn()
            .map_err(|e| format!("start {}: {e}", bin.display()))?;
        let mut broker = RunningBroker {
            bootstrap: format!("127.0.0.1:{}", setup.port),
            pid: Some(child.id()),
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
            pid: None,
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
        broker.pid = Some(
            pid.and_then(|p| p.trim().parse().ok())
                .ok_or_else(|| format!("kafka-reference.sh start printed no PID: {stdout:?}"))?,
        );
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
                let status = Command::new(&script)
                    .args(["stop", "--port", &port.to_string()])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::inherit())
                    .process_group(0)
                    .status()
                    .map_err(|e| format!("run {}: {e}", script.display()))?;
                if !status.success() {
                    return Err(format!("kafka-reference.sh stop failed ({status})"));
                }
                Ok(())
            }
            Handle::NotOurs | Handle::Stopped => Ok(()),
        }
    }
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
