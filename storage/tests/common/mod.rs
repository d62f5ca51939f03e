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
