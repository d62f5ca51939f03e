//! Support shared by the storage integration tests: an executor to run a test body in, a
//! scratch directory on the data disk, and the O_DIRECT probe an executor needs before its first
//! DMA read (see `io_probe`).

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use glommio::LocalExecutorBuilder;

/// Runs `f` to completion in a fresh glommio executor.
pub fn run<F, Fut>(f: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + 'static,
{
    LocalExecutorBuilder::default()
        .io_memory(1 << 20)
        .spawn(f)
        .expect("executor")
        .join()
        .expect("test body");
}

/// A scratch directory under target/, so that the test runs on the data disk, never on tmpfs.
pub fn scratch() -> tempfile::TempDir {
    tempfile::tempdir_in(PathBuf::from(env!("CARGO_TARGET_TMPDIR"))).expect("tempdir")
}

/// The probe file and guard every executor needs before its first DMA read of a new file.
pub async fn probe(dir: &Path) {
    sluice_storage::io_probe::prepare(dir).expect("probe file");
    sluice_storage::io_probe::guard(dir).await.expect("probe");
}

/// One record read back: its offset, whether it is in a control batch, its key and its value
/// (as text; None: null).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub offset: i64,
    pub control: bool,
    pub key: Option<String>,
    pub value: Option<String>,
}

/// Every record of `log` below its high watermark, from the log start, each batch checked
/// valid (uncompressed batches only).
pub async fn read_records(log: &sluice_storage::PartitionLog) -> Vec<Stored> {
    use sluice_storage::batch::{self, BatchHeader};
    let mut out = Vec::new();
    let mut offset = log.log_start_offset();
    while offset < log.high_watermark() {
        let read = log.read(offset, 1 << 20, true).await.expect("read");
        let bytes = read.records.to_bytes();
        if bytes.is_empty() {
            break;
        }
        let mut at = 0;
        while let Some(h) = bytes.get(at..).and_then(BatchHeader::parse) {
            let whole = &bytes[at..at + h.total_bytes()];
            batch::validate_stored(whole).expect("a valid batch");
            for r in batch::records(whole).expect("uncompressed records") {
                if r.offset >= offset {
                    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
                    out.push(Stored {
                        offset: r.offset,
                        control: h.is_control(),
                        key: r.key.map(text),
                        value: r.value.map(text),
                    });
                }
            }
            offset = offset.max(h.last_offset() + 1);
            at += h.total_bytes();
        }
    }
    out
}
