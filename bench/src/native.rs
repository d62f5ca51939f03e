//! sluice-bench's own producer (`--client native`): the Kafka protocol spoken directly, for
//! measuring a broker's ingest rather than the load generator's.
//!
//! With librdkafka, one client core tops out near 320–370 MB/s of 1 KiB records on this kind of
//! machine (docs/BENCHMARKS.md), below what the broker can take, so a librdkafka figure measures
//! the client. This producer does what a producer must and nothing more: it builds magic-2
//! record batches (each record its own timestamp and sequence, as the librdkafka load sends,
//! CRC-32C over each batch), closes a partition's batch at `--batch-bytes` or after
//! `--linger-ms`, sends every ready batch of a leader in one Produce request (v7) with up to
//! five requests in flight per connection, and counts a record acknowledged when the broker's
//! answer for its partition says so. No retries, no idempotence, no compression: a failed
//! partition answer fails its records, and the run's verification says so.
//!
//! Each producer thread owns its partitions and one connection per leader; a reader thread per
//! connection takes the answers in order and records each record's publish latency (from the
//! moment the record was added to its batch to the answer) like librdkafka's delivery reports.

use std::collections::HashMap;
use std::io::{IoSlice, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Buf, BufMut, BytesMut};
use kafka_protocol::messages::{
    ApiKey, MetadataRequest, MetadataResponse, ProduceResponse, RequestHeader, ResponseHeader,
};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, StrBytes};

use crate::load::{Options, ProducerShare, Stats, INTERRUPTED};

/// Produce requests in flight per connection (the Java client's default).
const IN_FLIGHT: usize = 5;
/// The Produce version sent: non-flexible, supported by every broker from Kafka 2.1 on.
const PRODUCE_VERSION: i16 = 7;
/// Size of a magic-2 record batch header.
const BATCH_HEADER: usize = 61;
/// Largest answer accepted.
const RESPONSE_BYTES_MAX: usize = 64 << 20;
/// Largest Produce request sent (the broker's socket.request.max.bytes is 100 MiB): a leader's
/// ready batches beyond it go in further requests.
const REQUEST_BYTES_MAX: usize = 16 << 20;
/// How long a connection may block in a read or a write before the run gives up on it.
const IO_TIMEOUT: Duration = Duration::from_secs(60);

/// Which partitions a broker leads, and where to reach it: from one Metadata request.
struct Leaders {
    brokers: HashMap<i32, String>,
    partitions: HashMap<i32, i32>,
}

fn leaders(o: &Options) -> Result<Leaders, String> {
    let mut last_error = String::from("no bootstrap server");
    for address in o.bootstrap.split(',') {
        let mut stream = match TcpStream::connect(address) {
            Ok(s) => s,
            Err(e) => {
                last_error = format!("{address}: {e}");
                continue;
            }
        };
        let request = MetadataRequest::default().with_topics(Some(vec![
            kafka_protocol::messages::metadata_request::MetadataRequestTopic::default().with_name(
                Some(kafka_protocol::messages::TopicName(StrBytes::from_string(
                    o.topic.clone(),
                ))),
            ),
        ]));
        // Metadata v12: Kafka 3.1 and later.
        let version = 12;
        let response: MetadataResponse =
            match call(&mut stream, ApiKey::Metadata, version, &request) {
                Ok(r) => r,
                Err(e) => {
                    last_error = format!("{address}: {e}");
                    continue;
                }
            };
        let brokers = response
            .brokers
            .iter()
            .map(|b| (b.node_id.0, format!("{}:{}", b.host.as_str(), b.port)))
            .collect();
        let topic = response
            .topics
            .iter()
            .find(|t| t.name.as_ref().is_some_and(|n| n.as_str() == o.topic))
            .ok_or_else(|| format!("{}: no such topic in Metadata", o.topic))?;
        let partitions = topic
            .partitions
            .iter()
            .map(|p| (p.partition_index, p.leader_id.0))
            .collect();
        return Ok(Leaders {
            brokers,
            partitions,
        });
    }
    Err(format!("Metadata: {last_error}"))
}

/// One request and its answer on a blocking connection, with kafka-protocol's encoding.
fn call<Req: Encodable + HeaderVersion, Resp: Decodable + HeaderVersion>(
    stream: &mut TcpStream,
    key: ApiKey,
    version: i16,
    request: &Req,
) -> Result<Resp, String> {
    let mut body = BytesMut::new();
    RequestHeader::default()
        .with_request_api_key(key as i16)
        .with_request_api_version(version)
        .with_correlation_id(1)
        .with_client_id(Some(StrBytes::from_static_str("sluice-bench")))
        .encode(&mut body, Req::header_version(version))
        .map_err(|e| e.to_string())?;
    request
        .encode(&mut body, version)
        .map_err(|e| e.to_string())?;
    let mut frame = (body.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&body);
    let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
    stream.write_all(&frame).map_err(|e| e.to_string())?;
    let mut answer = read_frame(stream).map_err(|e| e.to_string())?;
    ResponseHeader::decode(&mut answer, Resp::header_version(version))
        .map_err(|e| e.to_string())?;
    Resp::decode(&mut answer, version).map_err(|e| e.to_string())
}

fn read_frame(stream: &mut TcpStream) -> std::io::Result<BytesMut> {
    let mut length = [0u8; 4];
    stream.read_exact(&mut length)?;
    let length = u32::from_be_bytes(length) as usize;
    if length > RESPONSE_BYTES_MAX {
        return Err(std::io::Error::other(format!("answer of {length} bytes")));
    }
    let mut answer = BytesMut::zeroed(length);
    stream.read_exact(&mut answer)?;
    Ok(answer)
}

/// A partition's open batch: the bytes (header space first) and each record's add time.
struct Batch {
    bytes: Vec<u8>,
    sent_nanos: Vec<u64>,
    opened: Instant,
    base_timestamp: i64,
    /// The newest record's timestamp delta.
    max_timestamp_delta: i64,
}

impl Batch {
    fn new(capacity: usize) -> Batch {
        let mut bytes = Vec::with_capacity(capacity);
        bytes.resize(BATCH_HEADER, 0);
        Batch {
            bytes,
            sent_nanos: Vec::new(),
            opened: Instant::now(),
            base_timestamp: now_ms(),
            max_timestamp_delta: 0,
        }
    }

    fn records(&self) -> usize {
        self.sent_nanos.len()
    }

    /// Appends one record (offset delta = its position) whose value is `payload` with the send
    /// time and sequence in its first 16 bytes, as the librdkafka load writes them.
    fn add(&mut self, key: Option<&[u8]>, payload: &[u8], sent_nanos: u64, sequence: u64) {
        let offset_delta = self.records() as i64;
        let timestamp_delta = (now_ms() - self.base_timestamp).max(0);
        self.max_timestamp_delta = self.max_timestamp_delta.max(timestamp_delta);
        let key_length = key.map_or(-1, |k| k.len() as i64);
        let body = 1
            + varint_len(timestamp_delta)
            + varint_len(offset_delta)
            + varint_len(key_length)
            + key.map_or(0, <[u8]>::len)
            + varint_len(payload.len() as i64)
            + payload.len()
            + 1;
        put_varint(&mut self.bytes, body as i64);
        self.bytes.push(0); // attributes
        put_varint(&mut self.bytes, timestamp_delta);
        put_varint(&mut self.bytes, offset_delta);
        put_varint(&mut self.bytes, key_length);
        if let Some(key) = key {
            self.bytes.extend_from_slice(key);
        }
        put_varint(&mut self.bytes, payload.len() as i64);
        let value_at = self.bytes.len();
        self.bytes.extend_from_slice(payload);
        self.bytes[value_at..value_at + 8].copy_from_slice(&sent_nanos.to_be_bytes());
        self.bytes[value_at + 8..value_at + 16].copy_from_slice(&sequence.to_be_bytes());
        self.bytes.push(0); // no headers
        self.sent_nanos.push(sent_nanos);
    }

    /// Fills in the header (base offset 0, no producer id, CreateTime) and the CRC.
    fn seal(mut self) -> (Vec<u8>, Vec<u64>) {
        let records = self.records() as i32;
        let length = (self.bytes.len() - 12) as i32;
        let max_timestamp = self.base_timestamp + self.max_timestamp_delta;
        let mut header = &mut self.bytes[..BATCH_HEADER];
        header.put_i64(0);
        header.put_i32(length);
        header.put_i32(-1);
        header.put_i8(2);
        header.put_u32(0); // CRC, below
        header.put_i16(0);
        header.put_i32(records - 1);
        header.put_i64(self.base_timestamp);
        header.put_i64(max_timestamp);
        header.put_i64(-1);
        header.put_i16(-1);
        header.put_i32(-1);
        header.put_i32(records);
        let crc = crc32c::crc32c(&self.bytes[21..]);
        self.bytes[17..21].copy_from_slice(&crc.to_be_bytes());
        (self.bytes, self.sent_nanos)
    }
}

fn varint_len(value: i64) -> usize {
    let mut zigzag = ((value << 1) ^ (value >> 63)) as u64;
    let mut n = 1;
    while zigzag >= 0x80 {
        zigzag >>= 7;
        n += 1;
    }
    n
}

fn put_varint(out: &mut Vec<u8>, value: i64) {
    let mut zigzag = ((value << 1) ^ (value >> 63)) as u64;
    while zigzag >= 0x80 {
        out.push((zigzag as u8) | 0x80);
        zigzag >>= 7;
    }
    out.push(zigzag as u8);
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// A sealed batch ready to send: its partition, its bytes and its records' send times.
type Sealed = (i32, Vec<u8>, Vec<u64>);

/// A request in flight: per partition, the send times of its records.
struct InFlight {
    partitions: Vec<(i32, Vec<u64>)>,
}

/// One leader's connection: the writer side, and the reader thread taking its answers.
struct Connection {
    stream: TcpStream,
    in_flight: Option<SyncSender<InFlight>>,
    reader: Option<JoinHandle<()>>,
    correlation: i32,
}

impl Connection {
    fn open(address: &str, stats: &Arc<Stats>, o: &Options, acks: i16) -> Result<Self, String> {
        let stream = TcpStream::connect(address).map_err(|e| format!("{address}: {e}"))?;
        let _ = stream.set_nodelay(true);
        // A broker that stops answering fails the run instead of hanging it.
        let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
        let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
        let (in_flight, answers) = sync_channel::<InFlight>(IN_FLIGHT - 1);
        let reader = match acks {
            0 => {
                drop(answers);
                None
            }
            _ => {
                let mut stream = stream.try_clone().map_err(|e| e.to_string())?;
                let stats = stats.clone();
                let record_bytes = o.record_bytes as u64;
                Some(std::thread::spawn(move || {
                    // After a failed read the stream is out of step: every later request fails
                    // unread, and the connection is shut so the writer fails too.
                    let mut broken = false;
                    while let Ok(sent) = answers.recv() {
                        if broken {
                            fail(&stats, &sent, "an earlier answer could not be read".into());
                        } else if !take_answer(&mut stream, sent, &stats, record_bytes) {
                            broken = true;
                            let _ = stream.shutdown(std::net::Shutdown::Both);
                        }
                    }
                }))
            }
        };
        Ok(Connection {
            stream,
            in_flight: (acks != 0).then_some(in_flight),
            reader,
            correlation: 0,
        })
    }

    /// Sends one Produce request with these sealed batches (blocks while `IN_FLIGHT` are
    /// unanswered).
    fn send(
        &mut self,
        topic: &str,
        acks: i16,
        mut batches: Vec<Sealed>,
        stats: &Stats,
        record_bytes: u64,
    ) -> Result<(), String> {
        let in_flight = InFlight {
            partitions: batches
                .iter_mut()
                .map(|(p, _, sent)| (*p, std::mem::take(sent)))
                .collect(),
        };
        self.correlation = self.correlation.wrapping_add(1);
        let head = produce_head(self.correlation, topic, acks, batches.len());
        let prefixes: Vec<[u8; 8]> = batches
            .iter()
            .map(|(partition, bytes, _)| partition_prefix(*partition, bytes))
            .collect();
        let total = head.len() + batches.iter().map(|(_, b, _)| 8 + b.len()).sum::<usize>();
        let length = (total as u32).to_be_bytes();
        let mut slices = vec![IoSlice::new(&length), IoSlice::new(&head)];
        for ((_, bytes, _), prefix) in batches.iter().zip(&prefixes) {
            slices.push(IoSlice::new(prefix));
            slices.push(IoSlice::new(bytes));
        }
        match &self.in_flight {
            Some(queue) => queue
                .send(in_flight)
                .map_err(|_| "the connection's reader stopped".to_string())?,
            None => {
                // acks=0: nothing comes back; a record counts once it is written.
                if stats.measuring.load(Ordering::Relaxed) {
                    let records: u64 = in_flight
                        .partitions
                        .iter()
                        .map(|(_, s)| s.len() as u64)
                        .sum();
                    stats.acked.fetch_add(records, Ordering::Relaxed);
                    stats
                        .acked_bytes
                        .fetch_add(records * record_bytes, Ordering::Relaxed);
                }
            }
        }
        write_all_vectored(&mut self.stream, &mut slices).map_err(|e| format!("send: {e}"))
    }

    /// Waits for every answer.
    fn finish(mut self) {
        self.in_flight = None;
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}

/// A Produce v7 request up to its partitions: header (v1), no transactional id, acks, a 30 s
/// timeout, one topic with `partitions` partitions following.
fn produce_head(correlation: i32, topic: &str, acks: i16, partitions: usize) -> Vec<u8> {
    let mut head = Vec::with_capacity(64 + topic.len());
    head.put_i16(ApiKey::Produce as i16);
    head.put_i16(PRODUCE_VERSION);
    head.put_i32(correlation);
    head.put_i16(12);
    head.put_slice(b"sluice-bench");
    head.put_i16(-1);
    head.put_i16(acks);
    head.put_i32(30_000);
    head.put_i32(1);
    head.put_i16(topic.len() as i16);
    head.put_slice(topic.as_bytes());
    head.put_i32(partitions as i32);
    head
}

/// A partition's index and the length of its records.
fn partition_prefix(partition: i32, batch: &[u8]) -> [u8; 8] {
    let mut prefix = [0u8; 8];
    prefix[..4].copy_from_slice(&partition.to_be_bytes());
    prefix[4..].copy_from_slice(&(batch.len() as i32).to_be_bytes());
    prefix
}

/// Sends each partition's first record (sequence 0) on its own and waits for its answer,
/// again while the answer says no leader has it yet (for up to 30 s, asking for the leaders
/// anew each time): a broker that has just created the topic may not lead its partitions yet,
/// and this producer does not retry once the load runs. Only answers that mean nothing was
/// written are retried (UNKNOWN_TOPIC_OR_PARTITION, LEADER_NOT_AVAILABLE,
/// NOT_LEADER_OR_FOLLOWER, no connection); anything else fails the run, since a retry could
/// write the record twice. With acks=0 there is no answer: it waits for every partition to
/// have a leader, and the first record goes with the load.
fn prime(
    o: &Options,
    mine: &[i32],
    acks: i16,
    stats: &Stats,
    payload: &[u8],
) -> Result<Leaders, String> {
    const RETRIABLE: [i16; 3] = [3, 5, 6];
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut pending: Vec<i32> = mine.to_vec();
    loop {
        let leaders = leaders(o)?;
        let mut failed = Vec::new();
        let mut last_error = String::new();
        for &partition in &pending {
            let Some(address) = leaders
                .partitions
                .get(&partition)
                .and_then(|leader| leaders.brokers.get(leader))
            else {
                last_error = format!("partition {partition} has no leader");
                failed.push(partition);
                continue;
            };
            if acks == 0 {
                continue;
            }
            let mut stream = match TcpStream::connect(address) {
                Ok(s) => s,
                Err(e) => {
                    last_error = format!("{address}: {e}");
                    failed.push(partition);
                    continue;
                }
            };
            let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
            let key = o.keys.map(|n| (0 % n).to_be_bytes());
            let mut batch = Batch::new(payload.len() + 128);
            let now = stats.base.elapsed().as_nanos() as u64;
            batch.add(key.as_ref().map(|k| &k[..]), payload, now, 0);
            let (bytes, _) = batch.seal();
            let mut frame = produce_head(0, &o.topic, acks, 1);
            frame.extend_from_slice(&partition_prefix(partition, &bytes));
            frame.extend_from_slice(&bytes);
            let answer = stream
                .write_all(&(frame.len() as u32).to_be_bytes())
                .and_then(|()| stream.write_all(&frame))
                .and_then(|()| read_frame(&mut stream))
                .map_err(|e| format!("partition {partition}: {e}"))
                .and_then(|mut answer| {
                    if answer.remaining() < 4 {
                        return Err(format!("partition {partition}: a short answer"));
                    }
                    answer.advance(4);
                    ProduceResponse::decode(&mut answer, PRODUCE_VERSION)
                        .map_err(|e| format!("partition {partition}: {e}"))
                })?;
            match answer
                .responses
                .iter()
                .flat_map(|t| t.partition_responses.iter())
                .find(|p| p.index == partition)
                .map(|p| p.error_code)
            {
                Some(0) => {}
                Some(code) if RETRIABLE.contains(&code) => {
                    last_error = format!("partition {partition}: error code {code}");
                    failed.push(partition);
                }
                Some(code) => return Err(format!("partition {partition}: error code {code}")),
                None => return Err(format!("partition {partition}: not in the answer")),
            }
        }
        if failed.is_empty() {
            return Ok(leaders);
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "the first records were not taken in 30 s: {last_error}"
            ));
        }
        pending = failed;
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn write_all_vectored(
    stream: &mut TcpStream,
    mut slices: &mut [IoSlice<'_>],
) -> std::io::Result<()> {
    while !slices.is_empty() {
        match stream.write_vectored(slices) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut slices, n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Counts every record of `sent` failed, for `why`.
fn fail(stats: &Stats, sent: &InFlight, why: String) {
    let records: u64 = sent.partitions.iter().map(|(_, s)| s.len() as u64).sum();
    stats.failed.fetch_add(records, Ordering::Relaxed);
    if let Ok(mut first) = stats.first_error.lock() {
        first.get_or_insert(why);
    }
}

/// Reads the answer to `sent` and counts its records acknowledged or failed; false if the
/// answer could not be read (the connection is then unusable).
fn take_answer(stream: &mut TcpStream, sent: InFlight, stats: &Stats, record_bytes: u64) -> bool {
    let answer = read_frame(stream)
        .map_err(|e| e.to_string())
        .and_then(|mut frame| {
            if frame.remaining() < 4 {
                return Err("a short answer".to_string());
            }
            frame.advance(4); // correlation id: answers come in order
            ProduceResponse::decode(&mut frame, PRODUCE_VERSION).map_err(|e| e.to_string())
        });
    let now = stats.base.elapsed().as_nanos() as u64;
    if let Err(e) = &answer {
        fail(stats, &sent, e.clone());
        return false;
    }
    let errors: HashMap<i32, i16> = match &answer {
        Ok(response) => response
            .responses
            .iter()
            .flat_map(|t| t.partition_responses.iter())
            .map(|p| (p.index, p.error_code))
            .collect(),
        Err(_) => HashMap::new(),
    };
    for (partition, sent_nanos) in sent.partitions {
        let records = sent_nanos.len() as u64;
        match (&answer, errors.get(&partition)) {
            (Ok(_), Some(0)) => {
                if stats.measuring.load(Ordering::Relaxed) {
                    if let Ok(mut h) = stats.publish.lock() {
                        for at in &sent_nanos {
                            let _ = h.record((now.saturating_sub(*at) / 1000).max(1));
                        }
                    }
                    stats.acked.fetch_add(records, Ordering::Relaxed);
                    stats
                        .acked_bytes
                        .fetch_add(records * record_bytes, Ordering::Relaxed);
                }
            }
            (outcome, code) => {
                stats.failed.fetch_add(records, Ordering::Relaxed);
                let why = match (outcome, code) {
                    (Err(e), _) => e.clone(),
                    (Ok(_), Some(code)) => format!("partition {partition}: error code {code}"),
                    (Ok(_), None) => format!("partition {partition}: not in the answer"),
                };
                if let Ok(mut first) = stats.first_error.lock() {
                    first.get_or_insert(why);
                }
            }
        }
    }
    true
}

/// One native producer: its partitions' batches and a connection per leader, sending until
/// `total` has passed, then sending what is left and waiting for every answer. Returns how many
/// records it sent (each then acknowledged or failed).
pub(crate) fn produce_loop(
    o: &Options,
    share: &ProducerShare,
    stats: &Arc<Stats>,
    start: Instant,
    total: Duration,
) -> Result<u64, String> {
    let acks: i16 = match o.acks.as_str() {
        "all" | "-1" => -1,
        "1" => 1,
        "0" => 0,
        other => return Err(format!("--acks {other}: 0, 1 or all")),
    };
    let mine = &share.partitions;
    let payload: Vec<u8> = (0..o.record_bytes)
        .map(|i| (i * 7919 % 251) as u8)
        .collect();
    let leaders = prime(o, mine, acks, stats, &payload)?;
    // The rate counts from here: priming may take a while on a new topic, and its time must
    // not turn into a burst.
    let paced_from = Instant::now();
    let mut leader_of = Vec::with_capacity(mine.len());
    let mut connections: HashMap<i32, Connection> = HashMap::new();
    for partition in mine {
        let leader = *leaders
            .partitions
            .get(partition)
            .filter(|l| **l >= 0)
            .ok_or_else(|| format!("partition {partition} has no leader"))?;
        if let std::collections::hash_map::Entry::Vacant(entry) = connections.entry(leader) {
            let address = leaders
                .brokers
                .get(&leader)
                .ok_or_else(|| format!("broker {leader} is not in Metadata"))?;
            entry.insert(Connection::open(address, stats, o, acks)?);
        }
        leader_of.push(leader);
    }
    let record_bytes = o.record_bytes as u64;
    // A batch is full when one more record might not fit in `--batch-bytes` (librdkafka's
    // batch.size is a maximum too; the broker refuses a batch over message.max.bytes).
    let room = o.record_bytes + 32;
    let full_at = o.batch_bytes.saturating_sub(room).max(BATCH_HEADER + 1);
    let capacity = o.batch_bytes + room;
    let linger = Duration::from_millis(o.linger_ms);
    let mut batches: Vec<Option<Batch>> = (0..mine.len()).map(|_| None).collect();
    // The first record of each partition went with `prime` (unless acks=0).
    let primed = u64::from(acks != 0);
    let mut sequence = vec![primed; mine.len()];
    let mut sent: u64 = 0;
    let mut planted = false;
    let mut finishing = false;
    loop {
        if !finishing && (start.elapsed() >= total || INTERRUPTED.load(Ordering::Relaxed)) {
            finishing = true;
        }
        // Add records while they are due (all at once at full speed, one partition after the
        // other), stopping at the first full batch: it has to go before more are added. (At
        // full speed every batch fills within a few milliseconds, so the batches that lingered
        // go out with it; breaking off for them earlier only made batches smaller while the
        // connection's five requests were in flight anyway.)
        let mut full = false;
        if !finishing {
            let due = match share.bytes_per_second > 0.0 {
                true => {
                    (paced_from.elapsed().as_secs_f64() * share.bytes_per_second
                        / o.record_bytes as f64) as u64
                }
                false => u64::MAX,
            };
            while sent < due {
                let slot = (sent % mine.len() as u64) as usize;
                let batch = batches[slot].get_or_insert_with(|| Batch::new(capacity));
                let key = o.keys.map(|n| (sequence[slot] % n).to_be_bytes());
                let now = stats.base.elapsed().as_nanos() as u64;
                batch.add(key.as_ref().map(|k| &k[..]), &payload, now, sequence[slot]);
                sent += 1;
                sequence[slot] += 1;
                if share.plants && slot == 0 && !planted && sequence[slot] == 100 {
                    planted = true;
                    match o.plant {
                        Some(crate::load::Plant::Loss) => sequence[slot] += 1,
                        Some(crate::load::Plant::Duplicate) => sequence[slot] -= 1,
                        None => {}
                    }
                }
                if batch.bytes.len() >= full_at {
                    full = true;
                    break;
                }
            }
        }
        // Send, per leader, every batch that is full or has lingered (everything at the end).
        let mut ready: HashMap<i32, Vec<Sealed>> = HashMap::new();
        for (slot, batch) in batches.iter_mut().enumerate() {
            let due = batch.as_ref().is_some_and(|b| {
                finishing || b.bytes.len() >= full_at || b.opened.elapsed() >= linger
            });
            if due {
                if let Some(batch) = batch.take() {
                    let (bytes, sent_nanos) = batch.seal();
                    ready
                        .entry(leader_of[slot])
                        .or_default()
                        .push((mine[slot], bytes, sent_nanos));
                }
            }
        }
        for (leader, batches) in ready {
            let Some(connection) = connections.get_mut(&leader) else {
                continue;
            };
            let mut request = Vec::new();
            let mut request_bytes = 0;
            for batch in batches {
                if !request.is_empty() && request_bytes + batch.1.len() > REQUEST_BYTES_MAX {
                    connection.send(
                        &o.topic,
                        acks,
                        std::mem::take(&mut request),
                        stats,
                        record_bytes,
                    )?;
                    request_bytes = 0;
                }
                request_bytes += batch.1.len();
                request.push(batch);
            }
            if !request.is_empty() {
                connection.send(&o.topic, acks, request, stats, record_bytes)?;
            }
        }
        if finishing {
            break;
        }
        if !full && share.bytes_per_second > 0.0 {
            std::thread::sleep(Duration::from_micros(200));
        }
    }
    for (_, connection) in connections {
        connection.finish();
    }
    Ok(sent + primed * mine.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_are_zigzag_encoded() {
        for (value, bytes) in [
            (0i64, vec![0u8]),
            (-1, vec![1]),
            (1, vec![2]),
            (63, vec![126]),
            (64, vec![128, 1]),
            (1040, vec![0xa0, 0x10]),
        ] {
            let mut out = Vec::new();
            put_varint(&mut out, value);
            assert_eq!(out, bytes, "{value}");
            assert_eq!(varint_len(value), bytes.len(), "{value}");
        }
    }

    #[test]
    fn a_sealed_batch_is_a_valid_magic_2_batch() {
        let mut batch = Batch::new(4096);
        let payload = vec![7u8; 100];
        batch.add(None, &payload, 11, 0);
        batch.add(Some(b"k"), &payload, 12, 1);
        let (bytes, sent) = batch.seal();
        assert_eq!(sent, vec![11, 12]);
        let length = i32::from_be_bytes(bytes[8..12].try_into().expect("4 bytes"));
        assert_eq!(length as usize, bytes.len() - 12);
        assert_eq!(bytes[16], 2, "magic");
        let crc = u32::from_be_bytes(bytes[17..21].try_into().expect("4 bytes"));
        assert_eq!(crc, crc32c::crc32c(&bytes[21..]));
        let last_offset_delta = i32::from_be_bytes(bytes[23..27].try_into().expect("4 bytes"));
        assert_eq!(last_offset_delta, 1);
        let count = i32::from_be_bytes(bytes[57..61].try_into().expect("4 bytes"));
        assert_eq!(count, 2);
        // Decoded by the wire-type crate the broker uses: two records, the values carrying
        // the send time and the sequence.
        let mut buf = bytes::Bytes::from(bytes);
        let records = kafka_protocol::records::RecordBatchDecoder::decode(&mut buf)
            .expect("a valid batch")
            .records;
        assert_eq!(records.len(), 2);
        let value = records[1].value.as_ref().expect("a value");
        assert_eq!(&value[..8], &12u64.to_be_bytes());
        assert_eq!(&value[8..16], &1u64.to_be_bytes());
        assert_eq!(records[1].key.as_deref(), Some(&b"k"[..]));
    }
}
