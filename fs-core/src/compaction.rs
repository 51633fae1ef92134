//! Compaction: folding a block's slices back together, so that reads stay cheap and the
//! metadata small, at a bounded cost in uploads.
//!
//! Slices are merged in levels, like a size-tiered LSM tree, per block. A flush lays slices of
//! level 0. When [`FANOUT`] slices of one level pile up on top of the block they are merged
//! into one slice of the next level (which holds the union of their extents, the newest bytes
//! winning); when that makes [`FANOUT`] of the next level, those merge too, in the same pass.
//! A block's levels never increase from oldest to newest, so the slices merged are always the
//! newest run. When the slices carry as many bytes as the block, or there are [`HARD_LIMIT`]
//! of them, everything is merged into a new base and the slices go.
//!
//! What it costs: every byte written is uploaded once by its flush, once more per level it
//! climbs (4 KiB writes reach 1 MiB slices in two levels, and a 4 MiB block's slices reach its
//! size before a third), and the merge into a base uploads the block, at most the bytes the
//! slices carried: at most four times the bytes written, less where writes overlap.
//!
//! Safety: a compaction reads the block, uploads what replaces it (protected from garbage
//! collection like any upload), and commits only if the block is still what it read, apart
//! from slices laid on top since ([`MetaStore::compact_block`]). Anything else that changed
//! the block makes it give up; what it uploaded is then garbage. One compaction per block runs
//! in a process at a time; two processes compacting one block are safe (one of the commits
//! fails), only wasteful.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use elasticfs_metadata::throughput::IoKind;
use elasticfs_metadata::{Block, BlockRef, Compaction, Ino, MetaStore, Slice};
use tracing::{debug, instrument, warn};

use crate::chunk_store::ChunkStore;
use crate::error::FsResult;
use crate::slices::Layout;
use crate::throttle::Throttle;

/// Slices of one level that are merged into one of the next.
pub(crate) const FANOUT: usize = 16;
/// Slices on one block at which a flush compacts it before returning, rather than in the
/// background.
pub(crate) const HARD_LIMIT: usize = 64;
/// Background compactions one process runs at once.
const RUNNING_AT_MOST: usize = 4;

/// What to merge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Plan {
    /// The base and every slice, into a new base.
    Whole,
    /// The slices from index `from` on, into one slice of `level`.
    Tail { from: usize, level: u8 },
}

/// What `block` needs, if anything.
pub(crate) fn plan(block: &Block) -> Option<Plan> {
    if block.slices.is_empty() {
        return None;
    }
    if block.slices.len() >= HARD_LIMIT || block.slice_bytes() >= block.len() {
        return Some(Plan::Whole);
    }
    // Cascade up the levels from the newest end: `carried` is the merged slice a lower level
    // hands up.
    let mut merged_up_to = None;
    let mut carried = 0;
    let mut level = 0u8;
    loop {
        let at_level = block.slices.iter().filter(|s| s.level == level).count() + carried;
        if at_level < FANOUT {
            break;
        }
        merged_up_to = Some(level);
        carried = 1;
        level = level.checked_add(1)?;
    }
    let top = merged_up_to?;
    let from = block.slices.iter().position(|s| s.level <= top).unwrap_or(block.slices.len());
    Some(Plan::Tail { from, level: top + 1 })
}

/// The extents of `slices` together: sorted, apart (touching ones joined).
fn union_of(slices: &[Slice]) -> Vec<(u32, u32)> {
    let mut all: Vec<(u32, u32)> = slices.iter().flat_map(|s| s.extents.iter().copied()).collect();
    all.sort_unstable();
    let mut union: Vec<(u32, u32)> = Vec::with_capacity(all.len());
    for (at, len) in all {
        match union.last_mut() {
            Some((start, run)) if at <= *start + *run => *run = (*run).max(at + len - *start),
            _ => union.push((at, len)),
        }
    }
    union
}

pub(crate) struct Compactor {
    meta: Arc<dyn MetaStore>,
    chunks: Arc<ChunkStore>,
    throttle: Arc<Throttle>,
    runtime: tokio::runtime::Handle,
    inline_threshold: u64,
    running: Mutex<HashSet<(Ino, u64)>>,
    /// Set when the file system shuts down: no background compaction starts after it.
    closing: std::sync::atomic::AtomicBool,
}

impl Compactor {
    pub(crate) fn new(
        meta: Arc<dyn MetaStore>,
        chunks: Arc<ChunkStore>,
        throttle: Arc<Throttle>,
        runtime: tokio::runtime::Handle,
        inline_threshold: u64,
    ) -> Arc<Self> {
        Arc::new(Compactor {
            meta,
            chunks,
            throttle,
            runtime,
            inline_threshold,
            running: Mutex::new(HashSet::new()),
            closing: Default::default(),
        })
    }

    /// After a commit laid slices on `layered`: compacts those past [`HARD_LIMIT`] now, and
    /// starts compacting the others that want it in the background. Called from a blocking
    /// thread.
    pub(crate) fn after_commit(self: &Arc<Self>, ino: Ino, layered: Vec<(u64, Block)>) {
        for (index, block) in layered {
            if block.slices.len() >= HARD_LIMIT {
                // Bounded work for the writer: the commit that follows needs room.
                if let Err(e) = self.compact(ino, index, block) {
                    warn!(ino, index, "compacting a block with {HARD_LIMIT} slices failed: {e}");
                }
            } else {
                self.start(ino, index, &block);
            }
        }
    }

    /// Starts compacting, in the background, the blocks of `ino` a read found that want it.
    pub(crate) fn consider<'a>(self: &Arc<Self>, ino: Ino, blocks: impl Iterator<Item = (u64, &'a Block)>) {
        for (index, block) in blocks {
            self.start(ino, index, block);
        }
    }

    /// Stops starting background compactions and waits (up to `within`) for those under
    /// way: they upload through the engine's runtime, which must outlive them (a PUT on a
    /// runtime being dropped panics).
    pub(crate) fn shut_down(&self, within: std::time::Duration) {
        // Under the lock `start` takes to register a compaction, so that none slips in after.
        {
            let _running = self.running.lock().unwrap();
            self.closing.store(true, std::sync::atomic::Ordering::SeqCst);
        }
        let until = std::time::Instant::now() + within;
        while !self.running.lock().unwrap().is_empty() {
            if std::time::Instant::now() >= until {
                warn!("background compactions still running at shutdown; they are abandoned");
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    /// Compacts block `index` in the background if it wants it and nothing compacts it yet.
    fn start(self: &Arc<Self>, ino: Ino, index: u64, block: &Block) {
        if plan(block).is_none() {
            return;
        }
        {
            let mut running = self.running.lock().unwrap();
            if self.closing.load(std::sync::atomic::Ordering::SeqCst) {
                return;
            }
            if running.len() >= RUNNING_AT_MOST || !running.insert((ino, index)) {
                // Busy, or already under way: the next commit or read of this block asks again.
                return;
            }
        }
        let (compactor, block) = (self.clone(), block.clone());
        self.runtime.spawn_blocking(move || {
            if let Err(e) = compactor.compact(ino, index, block) {
                warn!(ino, index, "compacting a block failed (it stays as it is): {e}");
            }
            compactor.running.lock().unwrap().remove(&(ino, index));
        });
    }

    /// Compacts block `index` of `ino`, which the caller read as `block`. Returns whether the
    /// result was committed (false: nothing to do, or the block changed meanwhile).
    #[instrument(level = "debug", skip(self, block), fields(slices = block.slices.len()))]
    pub(crate) fn compact(&self, ino: Ino, index: u64, block: Block) -> FsResult<bool> {
        let Some(plan) = plan(&block) else { return Ok(false) };
        let mut release = Vec::new();
        let mut uploaded = 0;
        let now = match plan {
            Plan::Whole => {
                let len = block.len();
                let data = self.bytes_of(Layout::of(&block, 0..len))?;
                let base = if len <= self.inline_threshold {
                    BlockRef::Inline(data)
                } else {
                    let hash;
                    (hash, uploaded) = self.upload(data)?;
                    release.push(hash);
                    BlockRef::Chunk { hash, len: len as u32 }
                };
                Block::whole(base)
            }
            Plan::Tail { from, level } => {
                let run = Block { base: None, slices: block.slices[from..].to_vec() };
                let extents = union_of(&run.slices);
                let mut data = Vec::with_capacity(extents.iter().map(|e| e.1 as usize).sum());
                for &(at, len) in &extents {
                    data.extend(self.bytes_of(Layout::of(&run, at as u64..at as u64 + len as u64))?);
                }
                let chunk_len = data.len() as u32;
                let hash;
                (hash, uploaded) = self.upload(data)?;
                release.push(hash);
                let mut slices = block.slices[..from].to_vec();
                slices.push(Slice { hash, chunk_len, chunk_offset: 0, extents, level });
                Block { base: block.base.clone(), slices }
            }
        };
        let compaction = Compaction { ino, index, was: block, now, release };
        let applied = self.meta.compact_block(&compaction)?;
        self.chunks.metrics().compacted(uploaded, applied);
        debug!(ino, index, ?plan, applied, "compaction");
        Ok(applied)
    }

    /// Stores `data` as a chunk, metered as a write. Returns its name and the bytes sent (none
    /// if the store had them already).
    fn upload(&self, data: Vec<u8>) -> FsResult<(elasticfs_metadata::ChunkHash, u64)> {
        let len = data.len() as u64;
        self.throttle.charge(IoKind::Write, len);
        let (hash, sent) = self.runtime.block_on(self.chunks.store(Bytes::from(data)))?;
        Ok((hash, if sent { len } else { 0 }))
    }

    /// The bytes a layout names, metered as a read of what comes from chunks.
    fn bytes_of(&self, layout: Layout) -> FsResult<Vec<u8>> {
        self.throttle.charge(IoKind::Read, layout.chunk_bytes());
        self.runtime.block_on(self.chunks.read_layout(layout))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slice(level: u8, at: u32, len: u32) -> Slice {
        Slice { hash: [level; 32], chunk_len: len, chunk_offset: 0, extents: vec![(at, len)], level }
    }

    fn block_of(levels: &[u8]) -> Block {
        let base = Some(BlockRef::Chunk { hash: [9; 32], len: 1 << 22 });
        Block {
            base,
            slices: levels.iter().enumerate().map(|(i, &l)| slice(l, i as u32 * 8192, 4096)).collect(),
        }
    }

    #[test]
    fn slices_merge_a_level_at_a_time_and_cascade() {
        assert_eq!(plan(&block_of(&[])), None);
        assert_eq!(plan(&block_of(&[0; FANOUT - 1])), None);
        assert_eq!(plan(&block_of(&[0; FANOUT])), Some(Plan::Tail { from: 0, level: 1 }));
        let mut levels = vec![2, 1, 1];
        levels.extend([0; FANOUT]);
        assert_eq!(plan(&block_of(&levels)), Some(Plan::Tail { from: 3, level: 1 }));
        // FANOUT - 1 slices of level 1 and FANOUT of level 0: both merge, into level 2.
        let mut levels = vec![2];
        levels.extend([1; FANOUT - 1]);
        levels.extend([0; FANOUT]);
        assert_eq!(plan(&block_of(&levels)), Some(Plan::Tail { from: 1, level: 2 }));
    }

    #[test]
    fn slices_carrying_as_much_as_the_block_go_into_a_new_base() {
        let mut block = block_of(&[0]);
        block.base = Some(BlockRef::Inline(vec![0; 8000]));
        assert_eq!(plan(&block), None, "4,096 bytes of slices over a block of 8,000");
        block.base = Some(BlockRef::Inline(vec![0; 3000]));
        assert_eq!(plan(&block), Some(Plan::Whole), "4,096 bytes of slices over a block of 4,096");
        let many = block_of(&(0..HARD_LIMIT).map(|i| (i % 3) as u8).rev().collect::<Vec<_>>());
        assert_eq!(plan(&many), Some(Plan::Whole));
    }

    #[test]
    fn a_union_joins_what_overlaps_or_touches() {
        let slices =
            [slice(0, 100, 50), slice(0, 0, 10), slice(0, 140, 20), slice(0, 10, 5), slice(0, 300, 1)];
        assert_eq!(union_of(&slices), vec![(0, 15), (100, 60), (300, 1)]);
    }
}
