//! The records of the metadata log: what the metadata quorum agrees on, one Raft entry at a
//! time (KRaft's `__cluster_metadata`, simplified).
//!
//! A Raft entry's data is one [`MetadataEntry`]: the node that proposed it, that node's proposal
//! sequence (so an entry proposed twice — a retry after a leader change — is applied once), and
//! records that are applied all-or-nothing by `MetadataImage::apply`.
//!
//! Binary format, little-endian (also in docs/FORMATS.md, "Metadata quorum"):
//!
//! ```text
//! version   u8 = 1
//! crc32c    u32   over every byte after it
//! proposer  i32
//! sequence  u64
//! count     u16   records
//! per record: type u8 (1..=9, the order of MetadataRecord's variants), then its fields
//!
//! string          u16 length + UTF-8
//! optional string i16 length + UTF-8, -1 = None
//! list of i32     u16 count + i32 each
//! configs         u16 count + (key string, value string) each
//! partitions      u32 count + PartitionState each: replicas, isr (lists of i32), leader i32,
//!                 leader_epoch i32, partition_epoch i32 (a new partition is never being
//!                 reassigned, so its adding and removing lists are not written)
//! ```
//!
//! Pure: no I/O. Decoding checks the version and the CRC before it parses anything, refuses
//! trailing bytes, and bounds every count by the bytes left, so arbitrary input can neither
//! panic it nor make it allocate more than the input's size.

use std::fmt;

/// The only format version written and read.
pub const FORMAT_VERSION: u8 = 1;

/// Version byte and CRC.
const PREAMBLE_BYTES: usize = 5;

/// One partition as the metadata log records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionState {
    /// Assigned replicas, in preference order (the first is the preferred leader).
    pub replicas: Vec<i32>,
    /// In-sync replicas: a subset of `replicas`, never empty.
    pub isr: Vec<i32>,
    /// The leader's broker id; -1 when the partition has no leader (offline).
    pub leader: i32,
    pub leader_epoch: i32,
    /// Grows by one on every change of leader, ISR or replicas (Kafka's partition epoch).
    pub partition_epoch: i32,
    /// While the partition is being reassigned: replicas being added (copying the log, not yet
    /// all in sync) and replicas being removed once they are. Both empty otherwise. `replicas`
    /// holds the target replicas first, then the removing ones (Kafka's order).
    pub adding: Vec<i32>,
    pub removing: Vec<i32>,
}

impl PartitionState {
    /// A partition not being reassigned: `replicas` with `isr`, led by `leader`.
    pub fn new(replicas: Vec<i32>, isr: Vec<i32>, leader: i32, leader_epoch: i32) -> Self {
        PartitionState {
            replicas,
            isr,
            leader,
            leader_epoch,
            partition_epoch: 0,
            adding: Vec::new(),
            removing: Vec::new(),
        }
    }

    /// Adding or removing replicas.
    pub fn reassigning(&self) -> bool {
        !self.adding.is_empty() || !self.removing.is_empty()
    }

    /// The replicas the partition had before its reassignment began (its current ones when it
    /// is not being reassigned), in their order.
    pub fn original_replicas(&self) -> Vec<i32> {
        self.replicas
            .iter()
            .copied()
            .filter(|r| !self.adding.contains(r))
            .collect()
    }

    /// The replicas the partition will have once its reassignment completes.
    pub fn target_replicas(&self) -> Vec<i32> {
        self.replicas
            .iter()
            .copied()
            .filter(|r| !self.removing.contains(r))
            .collect()
    }
}

/// One change to the cluster's metadata. The variant order gives the record type numbers
/// (1 = `RegisterBroker` … 9 = `AddPartitions`): never reorder, only append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetadataRecord {
    /// A broker (re)started: its incarnation is new on every start.
    RegisterBroker {
        id: i32,
        incarnation: u64,
        host: String,
        port: u16,
        rack: Option<String>,
    },
    FenceBroker {
        id: i32,
        incarnation: u64,
    },
    UnfenceBroker {
        id: i32,
        incarnation: u64,
    },
    /// A topic is created with all its partitions.
    Topic {
        name: String,
        id: [u8; 16],
        configs: Vec<(String, String)>,
        partitions: Vec<PartitionState>,
    },
    /// A partition's leader or ISR changes (the partition epoch grows by one when applied).
    PartitionChange {
        topic: String,
        partition: i32,
        leader: i32,
        isr: Vec<i32>,
        leader_epoch: i32,
    },
    RemoveTopic {
        name: String,
    },
    /// Producer ids `first .. first + count` are handed to `broker`.
    ProducerIds {
        broker: i32,
        first: i64,
        count: i64,
    },
    /// A partition's replicas change (a reassignment starts, completes or is cancelled), with
    /// the leader, ISR and leader epoch that go with them. Applied only while the partition is
    /// at `partition_epoch` (Kafka's AlterPartition check): a decision taken on an image that
    /// has moved on since is refused rather than undoing a newer change.
    PartitionReplicas {
        topic: String,
        partition: i32,
        partition_epoch: i32,
        replicas: Vec<i32>,
        isr: Vec<i32>,
        leader: i32,
        leader_epoch: i32,
        adding: Vec<i32>,
        removing: Vec<i32>,
    },
    /// CreatePartitions: partitions appended to an existing topic, which must have `first`
    /// partitions (the count it was decided at: two concurrent requests cannot both grow it).
    AddPartitions {
        topic: String,
        first: i32,
        partitions: Vec<PartitionState>,
    },
}

/// One Raft entry: who proposed it (node id and that node's proposal sequence, from 1) and
/// records applied all-or-nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetadataEntry {
    pub proposer: i32,
    pub sequence: u64,
    pub records: Vec<MetadataRecord>,
}

/// Why bytes are not a metadata entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// The bytes end before the entry does.
    Truncated,
    UnknownVersion(u8),
    Checksum {
        stored: u32,
        computed: u32,
    },
    UnknownRecordType(u8),
    /// A string that is not UTF-8, or an optional string with a length below -1.
    BadString,
    /// Bytes left over after the last record.
    TrailingBytes(usize),
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Truncated => write!(f, "metadata entry truncated"),
            DecodeError::UnknownVersion(v) => write!(f, "metadata entry version {v} unknown"),
            DecodeError::Checksum { stored, computed } => write!(
                f,
                "metadata entry crc32c mismatch: stored {stored:#010x}, computed {computed:#010x}"
            ),
            DecodeError::UnknownRecordType(t) => write!(f, "metadata record type {t} unknown"),
            DecodeError::BadString => write!(f, "metadata entry holds a malformed string"),
            DecodeError::TrailingBytes(n) => {
                write!(f, "metadata entry followed by {n} unexpected bytes")
            }
        }
    }
}

impl std::error::Error for DecodeError {}

/// Why an entry cannot be encoded: a field is longer than its length prefix can say. Values a
/// client chooses (topic names, config values) can reach these limits, so the controller must
/// turn this into an error for that client, never a crash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodeError {
    pub field: &'static str,
    pub len: usize,
    pub max: usize,
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "metadata {} too long to encode: {} > {}",
            self.field, self.len, self.max
        )
    }
}

impl std::error::Error for EncodeError {}

const TYPE_REGISTER_BROKER: u8 = 1;
const TYPE_FENCE_BROKER: u8 = 2;
const TYPE_UNFENCE_BROKER: u8 = 3;
const TYPE_TOPIC: u8 = 4;
const TYPE_PARTITION_CHANGE: u8 = 5;
const TYPE_REMOVE_TOPIC: u8 = 6;
const TYPE_PRODUCER_IDS: u8 = 7;
const TYPE_PARTITION_REPLICAS: u8 = 8;
const TYPE_ADD_PARTITIONS: u8 = 9;

/// The fewest bytes one encoded item can take, used to bound counts by the bytes left.
const RECORD_BYTES_MIN: usize = 3; // RemoveTopic with an empty name
const CONFIG_BYTES_MIN: usize = 4; // two empty strings
const PARTITION_BYTES_MIN: usize = 16; // two empty lists and three i32s

impl MetadataEntry {
    /// The entry's bytes, as Raft stores them. Fails only when a field is longer than its
    /// length prefix allows (see [`EncodeError`]).
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        let mut out = Vec::with_capacity(64);
        out.push(FORMAT_VERSION);
        out.extend_from_slice(&[0; 4]);
        out.extend_from_slice(&self.proposer.to_le_bytes());
        out.extend_from_slice(&self.sequence.to_le_bytes());
        put_count_u16(&mut out, "record count", self.records.len())?;
        for record in &self.records {
            encode_record(&mut out, record)?;
        }
        let crc = crc32c::crc32c(&out[PREAMBLE_BYTES..]);
        out[1..PREAMBLE_BYTES].copy_from_slice(&crc.to_le_bytes());
        Ok(out)
    }

    /// Parses an entry written by [`MetadataEntry::encode`], verifying its version and CRC.
    pub fn decode(bytes: &[u8]) -> Result<MetadataEntry, DecodeError> {
        let mut reader = Reader { bytes };
        let version = reader.u8()?;
        if version != FORMAT_VERSION {
            return Err(DecodeError::UnknownVersion(version));
        }
        let stored = reader.u32()?;
        let computed = crc32c::crc32c(reader.bytes);
        if stored != computed {
            return Err(DecodeError::Checksum { stored, computed });
        }
        let proposer = reader.i32()?;
        let sequence = reader.u64()?;
        let count = reader.u16()?;
        let count = reader.count(usize::from(count), RECORD_BYTES_MIN)?;
        let mut records = Vec::with_capacity(count);
        for _ in 0..count {
            records.push(decode_record(&mut reader)?);
        }
        if !reader.bytes.is_empty() {
            return Err(DecodeError::TrailingBytes(reader.bytes.len()));
        }
        Ok(MetadataEntry {
            proposer,
            sequence,
            records,
        })
    }
}

fn encode_record(out: &mut Vec<u8>, record: &MetadataRecord) -> Result<(), EncodeError> {
    match record {
        MetadataRecord::RegisterBroker {
            id,
            incarnation,
            host,
            port,
            rack,
        } => {
            out.push(TYPE_REGISTER_BROKER);
            out.extend_from_slice(&id.to_le_bytes());
            out.extend_from_slice(&incarnation.to_le_bytes());
            put_string(out, "broker host", host)?;
            out.extend_from_slice(&port.to_le_bytes());
            put_optional_string(out, "broker rack", rack.as_deref())?;
        }
        MetadataRecord::FenceBroker { id, incarnation } => {
            out.push(TYPE_FENCE_BROKER);
            out.extend_from_slice(&id.to_le_bytes());
            out.extend_from_slice(&incarnation.to_le_bytes());
        }
        MetadataRecord::UnfenceBroker { id, incarnation } => {
            out.push(TYPE_UNFENCE_BROKER);
            out.extend_from_slice(&id.to_le_bytes());
            out.extend_from_slice(&incarnation.to_le_bytes());
        }
        MetadataRecord::Topic {
            name,
            id,
            configs,
            partitions,
        } => {
            out.push(TYPE_TOPIC);
            put_string(out, "topic name", name)?;
            out.extend_from_slice(id);
            put_count_u16(out, "config count", configs.len())?;
            for (key, value) in configs {
                put_string(out, "config key", key)?;
                put_string(out, "config value", value)?;
            }
            put_partitions(out, partitions)?;
        }
        MetadataRecord::PartitionChange {
            topic,
            partition,
            leader,
            isr,
            leader_epoch,
        } => {
            out.push(TYPE_PARTITION_CHANGE);
            put_string(out, "topic name", topic)?;
            out.extend_from_slice(&partition.to_le_bytes());
            out.extend_from_slice(&leader.to_le_bytes());
            put_i32s(out, "isr", isr)?;
            out.extend_from_slice(&leader_epoch.to_le_bytes());
        }
        MetadataRecord::RemoveTopic { name } => {
            out.push(TYPE_REMOVE_TOPIC);
            put_string(out, "topic name", name)?;
        }
        MetadataRecord::ProducerIds {
            broker,
            first,
            count,
        } => {
            out.push(TYPE_PRODUCER_IDS);
            out.extend_from_slice(&broker.to_le_bytes());
            out.extend_from_slice(&first.to_le_bytes());
            out.extend_from_slice(&count.to_le_bytes());
        }
        MetadataRecord::PartitionReplicas {
            topic,
            partition,
            partition_epoch,
            replicas,
            isr,
            leader,
            leader_epoch,
            adding,
            removing,
        } => {
            out.push(TYPE_PARTITION_REPLICAS);
            put_string(out, "topic name", topic)?;
            out.extend_from_slice(&partition.to_le_bytes());
            out.extend_from_slice(&partition_epoch.to_le_bytes());
            put_i32s(out, "replica list", replicas)?;
            put_i32s(out, "isr", isr)?;
            out.extend_from_slice(&leader.to_le_bytes());
            out.extend_from_slice(&leader_epoch.to_le_bytes());
            put_i32s(out, "adding replicas", adding)?;
            put_i32s(out, "removing replicas", removing)?;
        }
        MetadataRecord::AddPartitions {
            topic,
            first,
            partitions,
        } => {
            out.push(TYPE_ADD_PARTITIONS);
            put_string(out, "topic name", topic)?;
            out.extend_from_slice(&first.to_le_bytes());
            put_partitions(out, partitions)?;
        }
    }
    Ok(())
}

fn put_partitions(out: &mut Vec<u8>, partitions: &[PartitionState]) -> Result<(), EncodeError> {
    let count = u32::try_from(partitions.len()).map_err(|_| EncodeError {
        field: "partition count",
        len: partitions.len(),
        max: u32::MAX as usize,
    })?;
    out.extend_from_slice(&count.to_le_bytes());
    for p in partitions {
        put_i32s(out, "replica list", &p.replicas)?;
        put_i32s(out, "isr", &p.isr)?;
        out.extend_from_slice(&p.leader.to_le_bytes());
        out.extend_from_slice(&p.leader_epoch.to_le_bytes());
        out.extend_from_slice(&p.partition_epoch.to_le_bytes());
    }
    Ok(())
}

fn put_count_u16(out: &mut Vec<u8>, field: &'static str, len: usize) -> Result<(), EncodeError> {
    let count = u16::try_from(len).map_err(|_| EncodeError {
        field,
        len,
        max: usize::from(u16::MAX),
    })?;
    out.extend_from_slice(&count.to_le_bytes());
    Ok(())
}

fn put_string(out: &mut Vec<u8>, field: &'static str, s: &str) -> Result<(), EncodeError> {
    put_count_u16(out, field, s.len())?;
    out.extend_from_slice(s.as_bytes());
    Ok(())
}

fn put_optional_string(
    out: &mut Vec<u8>,
    field: &'static str,
    s: Option<&str>,
) -> Result<(), EncodeError> {
    let Some(s) = s else {
        out.extend_from_slice(&(-1i16).to_le_bytes());
        return Ok(());
    };
    let len = i16::try_from(s.len()).map_err(|_| EncodeError {
        field,
        len: s.len(),
        max: i16::MAX as usize,
    })?;
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(s.as_bytes());
    Ok(())
}

fn put_i32s(out: &mut Vec<u8>, field: &'static str, values: &[i32]) -> Result<(), EncodeError> {
    put_count_u16(out, field, values.len())?;
    for v in values {
        out.extend_from_slice(&v.to_le_bytes());
    }
    Ok(())
}

fn decode_record(reader: &mut Reader<'_>) -> Result<MetadataRecord, DecodeError> {
    let record = match reader.u8()? {
        TYPE_REGISTER_BROKER => MetadataRecord::RegisterBroker {
            id: reader.i32()?,
            incarnation: reader.u64()?,
            host: reader.string()?,
            port: reader.u16()?,
            rack: reader.optional_string()?,
        },
        TYPE_FENCE_BROKER => MetadataRecord::FenceBroker {
            id: reader.i32()?,
            incarnation: reader.u64()?,
        },
        TYPE_UNFENCE_BROKER => MetadataRecord::UnfenceBroker {
            id: reader.i32()?,
            incarnation: reader.u64()?,
        },
        TYPE_TOPIC => {
            let name = reader.string()?;
            let id = reader.array::<16>()?;
            let count = reader.u16()?;
            let count = reader.count(usize::from(count), CONFIG_BYTES_MIN)?;
            let mut configs = Vec::with_capacity(count);
            for _ in 0..count {
                configs.push((reader.string()?, reader.string()?));
            }
            MetadataRecord::Topic {
                name,
                id,
                configs,
                partitions: reader.partitions()?,
            }
        }
        TYPE_PARTITION_CHANGE => MetadataRecord::PartitionChange {
            topic: reader.string()?,
            partition: reader.i32()?,
            leader: reader.i32()?,
            isr: reader.i32s()?,
            leader_epoch: reader.i32()?,
        },
        TYPE_REMOVE_TOPIC => MetadataRecord::RemoveTopic {
            name: reader.string()?,
        },
        TYPE_PRODUCER_IDS => MetadataRecord::ProducerIds {
            broker: reader.i32()?,
            first: reader.i64()?,
            count: reader.i64()?,
        },
        TYPE_PARTITION_REPLICAS => MetadataRecord::PartitionReplicas {
            topic: reader.string()?,
            partition: reader.i32()?,
            partition_epoch: reader.i32()?,
            replicas: reader.i32s()?,
            isr: reader.i32s()?,
            leader: reader.i32()?,
            leader_epoch: reader.i32()?,
            adding: reader.i32s()?,
            removing: reader.i32s()?,
        },
        TYPE_ADD_PARTITIONS => MetadataRecord::AddPartitions {
            topic: reader.string()?,
            first: reader.i32()?,
            partitions: reader.partitions()?,
        },
        other => return Err(DecodeError::UnknownRecordType(other)),
    };
    Ok(record)
}

/// A cursor over the bytes still to parse. Every read checks what is left first.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let (head, rest) = self
            .bytes
            .split_at_checked(n)
            .ok_or(DecodeError::Truncated)?;
        self.bytes = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        self.take(N)?.try_into().map_err(|_| DecodeError::Truncated)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        self.array::<1>().map(|[b]| b)
    }

    fn u16(&mut self) -> Result<u16, DecodeError> {
        self.array().map(u16::from_le_bytes)
    }

    fn i16(&mut self) -> Result<i16, DecodeError> {
        self.array().map(i16::from_le_bytes)
    }

    fn i32(&mut self) -> Result<i32, DecodeError> {
        self.array().map(i32::from_le_bytes)
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        self.array().map(u32::from_le_bytes)
    }

    fn i64(&mut self) -> Result<i64, DecodeError> {
        self.array().map(i64::from_le_bytes)
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        self.array().map(u64::from_le_bytes)
    }

    /// `count` items of at least `item_bytes_min` bytes each must fit in what is left; this is
    /// what keeps a forged count from reserving memory the input cannot back.
    fn count(&self, count: usize, item_bytes_min: usize) -> Result<usize, DecodeError> {
        match count.checked_mul(item_bytes_min) {
            Some(bytes) if bytes <= self.bytes.len() => Ok(count),
            _ => Err(DecodeError::Truncated),
        }
    }

    fn utf8(&mut self, len: usize) -> Result<String, DecodeError> {
        let raw = self.take(len)?;
        std::str::from_utf8(raw)
            .map(str::to_owned)
            .map_err(|_| DecodeError::BadString)
    }

    fn string(&mut self) -> Result<String, DecodeError> {
        let len = usize::from(self.u16()?);
        self.utf8(len)
    }

    fn optional_string(&mut self) -> Result<Option<String>, DecodeError> {
        match self.i16()? {
            -1 => Ok(None),
            len => {
                let len = usize::try_from(len).map_err(|_| DecodeError::BadString)?;
                self.utf8(len).map(Some)
            }
        }
    }

    fn partitions(&mut self) -> Result<Vec<PartitionState>, DecodeError> {
        let count = usize::try_from(self.u32()?).map_err(|_| DecodeError::Truncated)?;
        let count = self.count(count, PARTITION_BYTES_MIN)?;
        let mut partitions = Vec::with_capacity(count);
        for _ in 0..count {
            partitions.push(PartitionState {
                replicas: self.i32s()?,
                isr: self.i32s()?,
                leader: self.i32()?,
                leader_epoch: self.i32()?,
                partition_epoch: self.i32()?,
                adding: Vec::new(),
                removing: Vec::new(),
            });
        }
        Ok(partitions)
    }

    fn i32s(&mut self) -> Result<Vec<i32>, DecodeError> {
        let count = self.u16()?;
        let count = self.count(usize::from(count), 4)?;
        let mut values = Vec::with_capacity(count);
        for _ in 0..count {
            values.push(self.i32()?);
        }
        Ok(values)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn partition(replicas: &[i32], leader: i32) -> PartitionState {
        PartitionState {
            partition_epoch: 7,
            ..PartitionState::new(replicas.to_vec(), replicas.to_vec(), leader, 3)
        }
    }

    /// One record of every type, with optional and empty values exercised.
    fn every_record() -> Vec<MetadataRecord> {
        vec![
            MetadataRecord::RegisterBroker {
                id: 1,
                incarnation: u64::MAX - 5,
                host: "broker-1.example".into(),
                port: 9092,
                rack: Some("rack-a".into()),
            },
            MetadataRecord::RegisterBroker {
                id: 2,
                incarnation: 0,
                host: String::new(),
                port: 0,
                rack: None,
            },
            MetadataRecord::RegisterBroker {
                id: 3,
                incarnation: 1,
                host: "h".into(),
                port: u16::MAX,
                rack: Some(String::new()),
            },
            MetadataRecord::FenceBroker {
                id: 1,
                incarnation: 42,
            },
            MetadataRecord::UnfenceBroker {
                id: -7,
                incarnation: 43,
            },
            MetadataRecord::Topic {
                name: "orders".into(),
                id: [0xab; 16],
                configs: vec![
                    ("retention.ms".into(), "60000".into()),
                    ("cleanup.policy".into(), "compact".into()),
                ],
                partitions: vec![partition(&[1, 2, 3], 1), partition(&[2], -1)],
            },
            MetadataRecord::Topic {
                name: "ünïcode-topic".into(),
                id: [0; 16],
                configs: vec![],
                partitions: vec![],
            },
            MetadataRecord::PartitionChange {
                topic: "orders".into(),
                partition: 1,
                leader: -1,
                isr: vec![2],
                leader_epoch: i32::MAX,
            },
            MetadataRecord::RemoveTopic {
                name: "orders".into(),
            },
            MetadataRecord::ProducerIds {
                broker: 1,
                first: 1000,
                count: i64::MAX,
            },
            MetadataRecord::PartitionReplicas {
                topic: "orders".into(),
                partition: 0,
                partition_epoch: 8,
                replicas: vec![4, 5, 1],
                isr: vec![1, 4],
                leader: 1,
                leader_epoch: 4,
                adding: vec![4, 5],
                removing: vec![1],
            },
            MetadataRecord::AddPartitions {
                topic: "orders".into(),
                first: 2,
                partitions: vec![partition(&[3, 1], 3)],
            },
            MetadataRecord::AddPartitions {
                topic: "o".into(),
                first: -1,
                partitions: vec![],
            },
        ]
    }

    fn sample() -> MetadataEntry {
        MetadataEntry {
            proposer: 3,
            sequence: 99,
            records: every_record(),
        }
    }

    fn encoded(entry: &MetadataEntry) -> Vec<u8> {
        entry.encode().expect("encodable")
    }

    #[test]
    fn every_record_type_round_trips() {
        for record in every_record() {
            let entry = MetadataEntry {
                proposer: -1,
                sequence: 1,
                records: vec![record],
            };
            assert_eq!(MetadataEntry::decode(&encoded(&entry)), Ok(entry));
        }
        let entry = sample();
        assert_eq!(MetadataEntry::decode(&encoded(&entry)), Ok(entry));
        let empty = MetadataEntry {
            proposer: 0,
            sequence: 0,
            records: vec![],
        };
        assert_eq!(encoded(&empty).len(), PREAMBLE_BYTES + 4 + 8 + 2);
        assert_eq!(MetadataEntry::decode(&encoded(&empty)), Ok(empty));
    }

    #[test]
    fn layout_matches_the_documented_format() {
        let entry = MetadataEntry {
            proposer: 2,
            sequence: 5,
            records: vec![MetadataRecord::RemoveTopic { name: "t".into() }],
        };
        let bytes = encoded(&entry);
        let body = [
            &2i32.to_le_bytes()[..],
            &5u64.to_le_bytes(),
            &1u16.to_le_bytes(),
            &[TYPE_REMOVE_TOPIC],
            &1u16.to_le_bytes(),
            b"t",
        ]
        .concat();
        let mut expected = vec![FORMAT_VERSION];
        expected.extend_from_slice(&crc32c::crc32c(&body).to_le_bytes());
        expected.extend_from_slice(&body);
        assert_eq!(bytes, expected);
    }

    #[test]
    fn every_truncation_is_an_error() {
        let bytes = encoded(&sample());
        for len in 0..bytes.len() {
            assert!(
                MetadataEntry::decode(&bytes[..len]).is_err(),
                "decoded a {len}-byte prefix of {}",
                bytes.len()
            );
        }
    }

    #[test]
    fn every_single_byte_flip_is_an_error() {
        let bytes = encoded(&sample());
        for i in 0..bytes.len() {
            for flip in [0x01u8, 0x80, 0xff] {
                let mut damaged = bytes.clone();
                damaged[i] ^= flip;
                assert!(
                    MetadataEntry::decode(&damaged).is_err(),
                    "byte {i} ^ {flip:#x} went unnoticed"
                );
            }
        }
    }

    #[test]
    fn trailing_bytes_and_unknown_versions_are_refused() {
        let mut bytes = encoded(&sample());
        bytes.push(0);
        let crc = crc32c::crc32c(&bytes[PREAMBLE_BYTES..]);
        bytes[1..PREAMBLE_BYTES].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(
            MetadataEntry::decode(&bytes),
            Err(DecodeError::TrailingBytes(1))
        );
        bytes[0] = 2;
        assert_eq!(
            MetadataEntry::decode(&bytes),
            Err(DecodeError::UnknownVersion(2))
        );
    }

    #[test]
    fn oversized_fields_are_an_encode_error() {
        let entry = MetadataEntry {
            proposer: 1,
            sequence: 1,
            records: vec![MetadataRecord::RemoveTopic {
                name: "x".repeat(usize::from(u16::MAX) + 1),
            }],
        };
        let err = entry.encode().expect_err("too long");
        assert_eq!(err.field, "topic name");
        let rack = MetadataEntry {
            proposer: 1,
            sequence: 1,
            records: vec![MetadataRecord::RegisterBroker {
                id: 1,
                incarnation: 1,
                host: "h".into(),
                port: 1,
                rack: Some("r".repeat(i16::MAX as usize + 1)),
            }],
        };
        assert_eq!(rack.encode().expect_err("too long").field, "broker rack");
    }

    /// Marsaglia's xorshift64: deterministic, and enough to shake a decoder.
    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn bytes(&mut self, len: usize) -> Vec<u8> {
            (0..len).map(|_| self.next() as u8).collect()
        }
    }

    /// Gives random bytes a valid version and CRC, so the parser behind the checksum is what
    /// gets exercised.
    fn with_valid_preamble(mut bytes: Vec<u8>) -> Vec<u8> {
        if bytes.len() < PREAMBLE_BYTES {
            return bytes;
        }
        bytes[0] = FORMAT_VERSION;
        let crc = crc32c::crc32c(&bytes[PREAMBLE_BYTES..]);
        bytes[1..PREAMBLE_BYTES].copy_from_slice(&crc.to_le_bytes());
        bytes
    }

    #[test]
    fn random_bytes_never_panic() {
        let seed = 0x5eed_1234_abcd_0001;
        let mut rng = XorShift(seed);
        let valid = encoded(&sample());
        let mut decoded = 0;
        for round in 0..4000 {
            let len = (rng.next() % 300) as usize;
            let random = rng.bytes(len);
            // Raw noise (stopped by the CRC), noise behind a valid preamble, and a valid entry
            // with a few bytes changed and its CRC fixed up (deep in the parser).
            let _ = MetadataEntry::decode(&random);
            let _ = MetadataEntry::decode(&with_valid_preamble(random));
            let mut mutated = valid.clone();
            for _ in 0..1 + rng.next() % 4 {
                let at = (rng.next() as usize) % mutated.len();
                mutated[at] = rng.next() as u8;
            }
            if round % 7 == 0 {
                mutated.truncate((rng.next() as usize) % mutated.len());
            }
            let mutated = with_valid_preamble(mutated);
            // The format is canonical: whatever decodes encodes back to the same bytes.
            if let Ok(entry) = MetadataEntry::decode(&mutated) {
                assert_eq!(entry.encode().as_ref(), Ok(&mutated), "seed {seed:#x}");
                decoded += 1;
            }
        }
        // Changed integers and string bytes still decode: the parser went deep.
        assert!(decoded > 100, "only {decoded} mutants decoded");
    }

    #[test]
    fn forged_counts_are_refused_before_allocating() {
        let mut body = Vec::new();
        body.extend_from_slice(&1i32.to_le_bytes());
        body.extend_from_slice(&1u64.to_le_bytes());
        body.extend_from_slice(&u16::MAX.to_le_bytes());
        let mut bytes = vec![0; PREAMBLE_BYTES];
        bytes.extend_from_slice(&body);
        assert_eq!(
            MetadataEntry::decode(&with_valid_preamble(bytes)),
            Err(DecodeError::Truncated)
        );
    }
}
