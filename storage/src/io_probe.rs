//! Guard against glommio's polled-I/O mis-detection on devices without `io_poll`.
//!
//! When glommio opens a DMA file it probes the device for polled I/O by reading offset 0. On a
//! new, empty file that read hits end-of-file and "succeeds", glommio then caches "pollable" for
//! the whole device in this executor, and every later O_DIRECT read on it fails with EOPNOTSUPP
//! (os error 95) on devices such as virtio disks whose `queue/io_poll` is 0. Opening a non-empty
//! file on the same device first makes the probe fail correctly and caches "not pollable".
//!
//! [`guard`] must run in every executor before any other DMA file on the data device is opened.

use std::path::Path;

use crate::error::Result;

const PROBE_FILE: &str = ".sluice-io-probe";
const PROBE_BYTES: usize = 4096;

/// Creates the non-empty probe file in `dir` if it is missing. Call once, before the executors
/// start (they would race creating it).
pub fn prepare(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join(PROBE_FILE);
    let long_enough = std::fs::metadata(&path).map(|m| m.len() >= PROBE_BYTES as u64);
    if !matches!(long_enough, Ok(true)) {
        let tmp = dir.join(format!("{PROBE_FILE}.tmp"));
        std::fs::write(&tmp, vec![0x5a_u8; PROBE_BYTES])?;
        std::fs::rename(&tmp, &path)?;
    }
    Ok(())
}

/// Opens the probe file (see [`prepare`]) with O_DIRECT, so that this executor's cached
/// polled-I/O verdict for the device is the correct one. Must run in every executor before any
/// other DMA file on the data device is opened.
pub async fn guard(dir: &Path) -> Result<()> {
    let path = dir.join(PROBE_FILE);
    let file = glommio::io::DmaFile::open(&path).await?;
    // Read through it once: this is also a cheap check that O_DIRECT reads work here at all.
    let read = file.read_at(0, PROBE_BYTES).await?;
    if read.len() != PROBE_BYTES {
        return Err(crate::error::StorageError::Corrupt(
            "I/O probe file read short".into(),
        ));
    }
    file.close().await?;
    Ok(())
}
