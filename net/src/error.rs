//! The one place internal errors become Kafka error codes.

use kafka_protocol::error::ResponseError;
use sluice_storage::producer_state::SequenceError;
use sluice_storage::{BatchError, StorageError};

pub fn storage_error_code(e: &StorageError) -> i16 {
    match e {
        StorageError::Batch(BatchError::UnsupportedMagic(_)) => {
            ResponseError::UnsupportedForMessageFormat.code()
        }
        StorageError::Batch(_) => ResponseError::CorruptMessage.code(),
        StorageError::TooLarge { .. } => ResponseError::MessageTooLarge.code(),
        StorageError::OffsetOutOfRange { .. } => ResponseError::OffsetOutOfRange.code(),
        StorageError::Io(_) | StorageError::Corrupt(_) => ResponseError::KafkaStorageError.code(),
        StorageError::Sequence(SequenceError::StaleEpoch { .. }) => {
            ResponseError::InvalidProducerEpoch.code()
        }
        StorageError::Sequence(SequenceError::OutOfOrder { .. }) => {
            ResponseError::OutOfOrderSequenceNumber.code()
        }
        StorageError::Sequence(SequenceError::NotTransactional { .. }) => {
            ResponseError::InvalidTxnState.code()
        }
        StorageError::InvalidRecord(_) => ResponseError::InvalidRecord.code(),
        // Only a follower copying its leader meets this, and handles it itself.
        StorageError::NotContiguous { .. } => ResponseError::UnknownServerError.code(),
    }
}
