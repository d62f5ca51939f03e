//! Test support: real `sluice` processes on free ports with their own data directories.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub struct Broker {
    /// The address it listens on (127.0.0.1 unless it runs in a network namespace).
    pub host: String,
    pub port: u16,
    /// The network namespace it runs in (`ip netns exec`), if any.
    netns: Option<String>,
    pub data: PathBuf,
    child: Option<Child>,
    args: Vec<String>,
    /// Where the broker's stderr goes (appended across restarts); None: the test's stderr.
    log: Option<PathBuf>,
    /// A dedicated controller's quorum port: it serves no clients, so it is ready once that
    /// port accepts connections.
    controller_only: Option<u16>,
    _dir: Option<tempfile::TempDir>,
}

/// A port that can be bound now, below the kernel's ephemeral range (a port in that range can be
/// taken at any time by some client's outgoing connection, which would break a restart on the
/// same port), never handed out twice in this test process (tests run in parallel).
pub fn free_port() -> u16 {
    static NEXT: std::sync::Mutex<u32> = std::sync::Mutex::new(0);
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32768);
    let (low, high) = (10_000u32, ephemeral_low.max(10_100));
    let span = high - low;
    let mut next = NEXT.lock().expect("ports");
    if *next == 0 {
        *next = std::process::id().wrapping_mul(7919) % span;
    }
    for _ in 0..span {
        let port = (low + *next % span) as u16;
        *next = *next % span + 1;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no bindable port in {low}..{high}");
}

fn scratch() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir")
}

impl Broker {
    /// Starts a broker with 2 cores (cross-core routing is always exercised) and `extra`
    /// `--override key=value` settings.
    pub fn start(extra: &[&str]) -> Broker {
        let dir = scratch();
        let data = dir.path().join("data");
        let mut broker = Broker::with_dir(data, extra);
        broker._dir = Some(dir);
        broker
    }

    /// Like [`Broker::start`], with the broker's stderr kept for [`Broker::log`].
    pub fn start_logged(extra: &[&str]) -> Broker {
        let dir = scratch();
        let mut broker = Broker::build(dir.path().join("data"), extra);
        broker.log = Some(dir.path().join("broker.log"));
        broker._dir = Some(dir);
        broker.spawn();
        broker
    }

    /// What the broker wrote to stderr so far (brokers from [`Broker::start_logged`]).
    pub fn log(&self) -> String {
        let path = self
            .log
            .as_ref()
            .expect("a broker started with start_logged");
        std::fs::read_to_string(path).unwrap_or_default()
    }

    pub fn with_dir(data: PathBuf, extra: &[&str]) -> Broker {
        let mut broker = Broker::build(data, extra);
        broker.spawn();
        broker
    }

    /// A broker on `port`, not started yet ([`Broker::restart`] starts it), its stderr appended
    /// to `log`: the nodes of a cluster need each other's ports before any of them starts.
    pub fn prepare(data: PathBuf, port: u16, extra: &[&str], log: PathBuf) -> Broker {
        let mut broker = Broker::build_on(data, port, extra);
        broker.log = Some(log);
        broker
    }

    fn build(data: PathBuf, extra: &[&str]) -> Broker {
        Broker::build_on(data, free_port(), extra)
    }

    /// A broker in network namespace `netns`, listening on `host:port` there; not started yet.
    pub fn prepare_in(
        netns: &str,
        host: &str,
        data: PathBuf,
        port: u16,
        extra: &[&str],
        log: PathBuf,
    ) -> Broker {
        let mut broker = Broker::build_at(host, data, port, extra);
        broker.netns = Some(netns.to_string());
        broker.log = Some(log);
        broker
    }

    /// A dedicated controller (`process.roles=controller`) whose quorum listens on
    /// `controller_port`; not started yet.
    pub fn prepare_controller(
        data: PathBuf,
        controller_port: u16,
        extra: &[&str],
        log: PathBuf,
    ) -> Broker {
        let mut node = Broker::prepare(data, free_port(), extra, log);
        node.controller_only = Some(controller_port);
        node
    }

    /// A dedicated controller in network namespace `netns`, its quorum on
    /// `host:controller_port`; not started yet.
    pub fn prepare_controller_in(
        netns: &str,
        host: &str,
        data: PathBuf,
        controller_port: u16,
        extra: &[&str],
        log: PathBuf,
    ) -> Broker {
        // Its (unbound) client port: one no other node in the namespace uses.
        let mut node = Broker::prepare_in(netns, host, data, controller_port + 1, extra, log);
        node.controller_only = Some(controller_port);
        node
    }

    fn build_on(data: PathBuf, port: u16, extra: &[&str]) -> Broker {
        Broker::build_at("127.0.0.1", data, port, extra)
    }

    fn build_at(host: &str, data: PathBuf, port: u16, extra: &[&str]) -> Broker {
        let mut args = vec![
            "--cores".to_string(),
            "2".to_string(),
            "--override".to_string(),
            format!("listeners=PLAINTEXT://{host}:{port}"),
            "--override".to_string(),
            format!("log.dirs={}", data.display()),
            // A small journal ring (the default is 64 MiB per core): every start writes it in
            // full, and a small one wraps and checkpoints often, which the tests then exercise.
            "--override".to_string(),
            "sluice.journal.bytes=4194304".to_string(),
        ];
        for e in extra {
            args.push("--override".into());
            args.push(e.to_string());
        }
        Broker {
            host: host.to_string(),
            port,
            netns: None,
            data,
            child: None,
            args,
            log: None,
            controller_only: None,
            _dir: None,
        }
    }

    fn spawn(&mut self) {
        let mut command = match &self.netns {
            Some(netns) => {
                // `ip netns exec` execs the broker: the child's pid is the broker's.
                let mut c = Command::new("ip");
                c.args(["netns", "exec", netns, env!("CARGO_BIN_EXE_sluice")]);
                c
            }
            None => Command::new(env!("CARGO_BIN_EXE_sluice")),
        };
        let child = command
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(match &self.log {
                Some(path) => Stdio::from(
                    std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(path)
                        .expect("broker log"),
                ),
                None => Stdio::inherit(),
            })
            .spawn()
            .expect("start sluice");
        self.child = Some(child);
        match self.controller_only {
            None => wait_for_address(&self.host, self.port),
            Some(port) => {
                let deadline = Instant::now() + Duration::from_secs(30);
                while TcpStream::connect((self.host.as_str(), port)).is_err() {
                    assert!(
                        Instant::now() < deadline,
                        "the controller did not listen on {port} within 30 s"
                    );
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
    }

    pub fn bootstrap(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// SIGKILL, as a crash would.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait for the exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        unsafe {
            libc::kill(child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("sluice did not stop within 30 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the same broker again (same data, same port).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop the broker first");
        self.spawn();
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Waits until a broker answers an ApiVersions request on `port`. An answer, not just an
/// accepted connection: after `kill -9` the dead broker's listening socket can linger for a
/// moment while the kernel tears down its io_uring rings.
pub fn wait_for_port(port: u16) {
    wait_for_address("127.0.0.1", port)
}

pub fn wait_for_address(host: &str, port: u16) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !answers_api_versions(host, port) {
        assert!(
            Instant::now() < deadline,
            "sluice did not serve on {port} within 30 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn answers_api_versions(host: &str, port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect((host, port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    // ApiVersions v0: size, api key 18, version 0, correlation id 1, null client id.
    let request = [0, 0, 0, 10, 0, 18, 0, 0, 0, 0, 0, 1, 0xff, 0xff];
    let mut size = [0u8; 4];
    s.write_all(&request).is_ok() && s.read_exact(&mut size).is_ok()
}

/// A raw connection for feeding the broker hand-made bytes.
pub struct Raw(pub TcpStream);

impl Raw {
    pub fn connect(port: u16) -> Raw {
        Raw::connect_to("127.0.0.1", port)
    }

    pub fn connect_to(host: &str, port: u16) -> Raw {
        let s = TcpStream::connect((host, port)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        Raw(s)
    }

    pub fn send(&mut self, bytes: &[u8]) {
        let _ = self.0.write_all(bytes);
    }

    /// Reads one size-prefixed answer; None when the broker closed the connection.
    pub fn recv(&mut self) -> Option<Vec<u8>> {
        let mut size = [0u8; 4];
        self.0.read_exact(&mut size).ok()?;
        let mut body = vec![0u8; i32::from_be_bytes(size) as usize];
        self.0.read_exact(&mut body).ok()?;
        Some(body)
    }

    /// True when the broker closed the connection (EOF) within the read timeout.
    pub fn closed(&mut self) -> bool {
        let mut buf = [0u8; 1];
        matches!(self.0.read(&mut buf), Ok(0) | Err(_))
    }
}

pub fn dir_size(path: &Path) -> u64 {
    std::fs::read_dir(path)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
                .sum()
        })
        .unwrap_or(0)
}

/// Creates a topic with the admin API of a real client (for tests without an async runtime).
pub fn create_topic_blocking(broker: &Broker, name: &str, partitions: i32) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::config::ClientConfig;
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap())
        .create()
        .expect("admin");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt");
    let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    let results = runtime
        .block_on(admin.create_topics(&[topic], &AdminOptions::new()))
        .expect("create_topics");
    for r in results {
        r.expect("topic created");
    }
}

/// A request frame (size prefix, header, body) as a client would send it.
pub fn request_frame<R: kafka_protocol::protocol::Encodable>(
    key: kafka_protocol::messages::ApiKey,
    version: i16,
    correlation_id: i32,
    body: &R,
) -> Vec<u8> {
    use bytes::BufMut;
    use kafka_protocol::protocol::{Encodable, StrBytes};
    let header = kafka_protocol::messages::RequestHeader::default()
        .with_request_api_key(key as i16)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(StrBytes::from_static_str("sluice-tests")));
    let mut buf = bytes::BytesMut::new();
    buf.put_i32(0);
    header
        .encode(&mut buf, key.request_header_version(version))
        .expect("header");
    body.encode(&mut buf, version).expect("body");
    let size = buf.len() as i32 - 4;
    buf[..4].copy_from_slice(&size.to_be_bytes());
    buf.to_vec()
}

/// One request to `host:port` that may fail (a broker being restarted, cut off or turning
/// clients away): None instead of a panic.
pub fn try_call<Req, Resp>(
    host: &str,
    port: u16,
    key: kafka_protocol::messages::ApiKey,
    version: i16,
    body: &Req,
) -> Option<Resp>
where
    Req: kafka_protocol::protocol::Encodable,
    Resp: kafka_protocol::protocol::Decodable,
{
    use kafka_protocol::protocol::Decodable;
    let address = format!("{host}:{port}").parse().ok()?;
    let stream = TcpStream::connect_timeout(&address, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut raw = Raw(stream);
    raw.send(&request_frame(key, version, 11, body));
    let mut answer = bytes::Bytes::from(raw.recv()?);
    let header = kafka_protocol::messages::ResponseHeader::decode(
        &mut answer,
        key.response_header_version(version),
    )
    .ok()?;
    (header.correlation_id == 11).then_some(())?;
    Resp::decode(&mut answer, version).ok()
}

/// Sends one request on a raw connection and decodes its answer, checking the correlation id.
pub fn call<Req, Resp>(
    raw: &mut Raw,
    key: kafka_protocol::messages::ApiKey,
    version: i16,
    body: &Req,
) -> Resp
where
    Req: kafka_protocol::protocol::Encodable,
    Resp: kafka_protocol::protocol::Decodable,
{
    use kafka_protocol::protocol::Decodable;
    raw.send(&request_frame(key, version, 11, body));
    let mut answer = bytes::Bytes::from(raw.recv().expect("answered"));
    let header = kafka_protocol::messages::ResponseHeader::decode(
        &mut answer,
        key.response_header_version(version),
    )
    .expect("response header");
    assert_eq!(header.correlation_id, 11);
    Resp::decode(&mut answer, version).expect("response body")
}

/// Assigns `consumer` partitions 0..`partitions` of `topic`, each from its beginning.
pub fn assign_from_beginning(
    consumer: &rdkafka::consumer::BaseConsumer,
    topic: &str,
    partitions: i32,
) {
    use rdkafka::consumer::Consumer;
    let mut assignment = rdkafka::TopicPartitionList::new();
    for p in 0..partitions {
        assignment
            .add_partition_offset(topic, p, rdkafka::Offset::Beginning)
            .expect("assign");
    }
    consumer.assign(&assignment).expect("assign");
}
