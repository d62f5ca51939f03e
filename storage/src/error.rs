//! Errors of the storage layer. The net crate maps each to exactly one Kafka error code.

use std::fmt;

/// Why a produced batch was refused; nothing was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchError {
    /// Fewer bytes than the header, or than `batch_length` promises.
    Truncated,
    /// `batch_length` disagrees with the bytes given.
    LengthMismatch,
    /// CRC-32C over attributes..end does not match.
    CrcMismatch,
    /// Magic 0 or 1 (or garbage): only magic 2 is accepted.
    UnsupportedMagic(i8),
    /// `records_count` is not positive or disagrees with `last_offset_delta`.
    RecordCount,
}

impl fmt::Display for BatchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BatchError::Truncated => write!(f, "record batch is truncated"),
            BatchError::LengthMismatch => write!(f, "record batch length does not match its bytes"),
            BatchError::CrcMismatch => write!(f, "record batch CRC-32C mismatch"),
            BatchError::UnsupportedMagic(m) => write!(f, "record batch magic {m} is not supported"),
            BatchError::RecordCount => write!(f, "record batch record count is inconsistent"),
        }
    }
}

/// Errors of a partition log.
#[derive(Debug)]
pub enum StorageError {
    Batch(BatchError),
    /// A produce larger than `max.message.bytes`.
    TooLarge {
        bytes: usize,
        max: usize,
    },
    /// Requested offset is outside [log_start_offset, log_end_offset].
    OffsetOutOfRange {
        offset: i64,
        log_start: i64,
        log_end: i64,
    },
    /// The disk failed (full, I/O error); the write was not made. Reads go on.
    Io(std::io::Error),
    /// A log file is damaged beyond what recovery may repair (not the tail).
    Corrupt(String),
    /// An idempotent producer's batch out of sequence or from a fenced epoch.
    Sequence(crate::producer_state::SequenceError),
    /// A batch a client may not write: a control batch, or a transactional one outside a
    /// transaction.
    InvalidRecord(&'static str),
    /// A replicated append (`PartitionLog::append_replicated`) whose first batch does not begin
    /// at the log end, or whose batches do not follow one another: a gap or an overlap with what
    /// the follower holds. Nothing was appended.
    NotContiguous {
        expected: i64,
        found: i64,
    },
}

impl From<std::io::Error> for StorageError {
    fn from(e: std::io::Error) -> Self {
        StorageError::Io(e)
    }
}

impl From<glommio::GlommioError<()>> for StorageError {
    fn from(e: glommio::GlommioError<()>) -> Self {
        StorageError::Io(e.into())
    }
}

impl From<BatchError> for StorageError {
    fn from(e: BatchError) -> Self {
        StorageError::Batch(e)
    }
}

impl fmt::Display for StorageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StorageError::Batch(e) => write!(f, "{e}"),
            StorageError::TooLarge { bytes, max } => {
                write!(f, "{bytes} bytes exceed max.message.bytes={max}")
            }
            StorageError::OffsetOutOfRange {
                offset,
                log_start,
                log_end,
            } => {
                write!(f, "offset {offset} is outside [{log_start}, {log_end}]")
            }
            StorageError::Io(e) => write!(f, "I/O error: {e}"),
            StorageError::Corrupt(why) => write!(f, "corrupt log: {why}"),
            StorageError::Sequence(e) => write!(f, "{e}"),
            StorageError::InvalidRecord(why) => write!(f, "{why}"),
            StorageError::NotContiguous { expected, found } => write!(
                f,
                "replicated batch at offset {found} does not follow: expected offset {expected}"
            ),
        }
    }
}

impl std::error::Error for StorageError {}

pub type Result<T> = std::result::Result<T, StorageError>;
