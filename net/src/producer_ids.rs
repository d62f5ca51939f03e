//! Producer ids for idempotent producers (InitProducerId), never handed out twice — not even
//! across a crash.
//!
//! Core 0 owns the allocator, as it owns topic metadata; other cores ask it with a cross-core
//! message (once per producer start, never on the produce path). Ids come from blocks of
//! [`BLOCK_SIZE`], as Kafka's controller hands them out: the end of the current block is made
//! durable in `<log.dirs>/.sluice/producer-ids` (written to a temporary file, fsync'ed,
//! renamed) before any id of the block is used, and a restarted broker starts at the stored end,
//! skipping whatever the last block had left. In a cluster the blocks come from the metadata
//! quorum instead, which records each in its log (Kafka's AllocateProducerIds).

use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Duration;

use futures::future::LocalBoxFuture;

use crate::metadata::metadata_dir;

/// Ids per durable block.
pub const BLOCK_SIZE: i64 = 1000;

/// Asks the metadata quorum for a block of ids: (first id, count).
pub type BlockSource = Rc<dyn Fn() -> LocalBoxFuture<'static, Result<(i64, i64), String>>>;

/// Where blocks of ids come from.
enum Source {
    /// A single node: the end of the last block handed out, in a local file.
    File(PathBuf),
    /// A cluster: the metadata quorum hands out blocks (a ProducerIds record each), so no two
    /// brokers ever use the same id. Returns (first id, count).
    Quorum(BlockSource),
}

pub struct ProducerIds {
    source: Source,
    next: Cell<i64>,
    /// Ids below this (and from `next`) may be handed out: the end of the current durable block.
    durable_end: Cell<i64>,
    persisting: Cell<bool>,
}

impl ProducerIds {
    /// Loads the stored block end (0 for a new data directory).
    pub fn load(log_dirs: &Path) -> Result<ProducerIds, String> {
        let path = metadata_dir(log_dirs).join("producer-ids");
        let end = match std::fs::read_to_string(&path) {
            Ok(text) => decode(&text)
                .ok_or_else(|| format!("{} is damaged; refusing to guess", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        };
        Ok(ProducerIds {
            source: Source::File(path),
            next: Cell::new(end),
            durable_end: Cell::new(end),
            persisting: Cell::new(false),
        })
    }

    /// Ids from blocks the metadata quorum hands out through `block`.
    pub fn from_quorum(block: BlockSource) -> ProducerIds {
        ProducerIds {
            source: Source::Quorum(block),
            next: Cell::new(0),
            durable_end: Cell::new(0),
            persisting: Cell::new(false),
        }
    }

    /// The next producer id, after making its block durable if it starts a new one.
    pub async fn allocate(&self) -> std::io::Result<i64> {
        loop {
            let id = self.next.get();
            if id < self.durable_end.get() {
                self.next.set(id + 1);
                return Ok(id);
            }
            if self.persisting.replace(true) {
                // Another allocation is getting the next block; it covers this one too, or the
                // loop gets one more.
                glommio::timer::sleep(Duration::from_millis(1)).await;
                continue;
            }
            let block = match &self.source {
                Source::File(path) => {
                    let end = (id / BLOCK_SIZE + 1) * BLOCK_SIZE;
                    store(path, end).map(|()| (id, end))
                }
                Source::Quorum(block) => block()
                    .await
                    .map(|(first, count)| (first, first + count))
                    .map_err(std::io::Error::other),
            };
            self.persisting.set(false);
            let (first, end) = block?;
            self.next.set(first);
            self.durable_end.set(end);
        }
    }
}

fn encode(end: i64) -> String {
    let body = format!("version=1\nblock.end={end}\n");
    format!("{body}crc32c={:08x}\n", crc32c::crc32c(body.as_bytes()))
}

fn decode(text: &str) -> Option<i64> {
    let at = text.rfind("crc32c=")?;
    let (body, crc) = text.split_at(at);
    let crc = u32::from_str_radix(crc.strip_prefix("crc32c=")?.trim(), 16).ok()?;
    if crc32c::crc32c(body.as_bytes()) != crc {
        return None;
    }
    body.lines()
        .find_map(|l| l.strip_prefix("block.end="))?
        .parse()
        .ok()
        .filter(|end: &i64| *end >= 0)
}

/// Control-plane I/O through std::fs (a few bytes, once per thousand producers).
fn store(path: &Path, end: i64) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().expect("a file in the metadata directory");
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(".producer-ids.tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(encode(end).as_bytes())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_never_reused_across_restarts_and_damage_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .io_memory(1 << 20)
            .spawn({
                let root = dir.path().to_path_buf();
                move || async move {
                    let ids = ProducerIds::load(&root).expect("fresh");
                    let first: Vec<i64> = futures::future::join_all((0..3).map(|_| ids.allocate()))
                        .await
                        .into_iter()
                        .map(|r| r.expect("allocated"))
                        .collect();
                    assert_eq!(first, vec![0, 1, 2]);
                    // A restart continues after the stored block, never inside it.
                    let ids = ProducerIds::load(&root).expect("reload");
                    assert_eq!(ids.allocate().await.expect("allocated"), BLOCK_SIZE);
                    for expected in BLOCK_SIZE + 1..2 * BLOCK_SIZE + 5 {
                        assert_eq!(ids.allocate().await.expect("allocated"), expected);
                    }
                    let ids = ProducerIds::load(&root).expect("reload");
                    assert_eq!(ids.allocate().await.expect("allocated"), 3 * BLOCK_SIZE);
                    let path = metadata_dir(&root).join("producer-ids");
                    let text = std::fs::read_to_string(&path).expect("stored");
                    std::fs::write(&path, text.replace("block.end=4", "block.end=5"))
                        .expect("damage");
                    assert!(ProducerIds::load(&root).is_err());
                }
            })
            .expect("executor")
            .join()
            .expect("join");
    }
}
