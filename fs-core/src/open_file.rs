//! The state of one open inode: the bytes written through any of its handles that are not yet
//! committed. It is per inode, not per handle, so that every handle of this client reads what
//! the others wrote before it is flushed.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use elasticfs_metadata::{BlockRef, ChunkHash, Ino, Slice, Timestamp};
use prometheus_client::metrics::gauge::Gauge;
use tokio::task::JoinHandle;

use crate::error::FsResult;
use crate::slices::Patch;

pub(crate) enum Dirty {
    /// Written, not yet uploaded. With `over_committed`, the patch lies over the block's
    /// committed content; without, it is the whole block (zeros in its gaps).
    Buffer { patch: Patch, over_committed: bool },
    /// A whole block sealed and being uploaded; `data` serves reads until the upload is
    /// collected.
    Uploading { data: Bytes, task: JoinHandle<FsResult<ChunkHash>> },
    /// A whole block uploaded (or small enough to stay inline): waiting for the commit.
    Stored(BlockRef),
    /// A patch over the committed block, uploaded as this slice: waiting for the commit.
    /// Reads lay it over the committed block meanwhile.
    Sliced(Slice),
}

/// The mount's write-back buffer: bytes of [`Dirty::Buffer`]s across all open files, and
/// how many there may be before writers upload buffered blocks to make room.
#[derive(Debug)]
pub(crate) struct WriteBudget {
    limit: i64,
    /// Bytes in use: the client's `client_write_buffer_bytes` metric itself.
    used: Gauge,
}

impl WriteBudget {
    pub(crate) fn new(limit: usize, used: Gauge) -> Arc<Self> {
        Arc::new(WriteBudget { limit: i64::try_from(limit).unwrap_or(i64::MAX), used })
    }

    pub(crate) fn over(&self) -> bool {
        self.used.get() > self.limit
    }
}

pub(crate) struct FileState {
    /// Size including uncommitted writes.
    pub(crate) size: u64,
    /// Size as of this client's last commit or open: blocks before it may have committed
    /// content, which a write in place lays a patch over.
    pub(crate) committed_size: u64,
    /// Changed blocks; a [`Dirty::Buffer`] enters and leaves only through [`Self::set`] and
    /// [`Self::take`], which count it against the write budget.
    dirty: BTreeMap<u64, Dirty>,
    /// Time of the last uncommitted write; `None` when there is nothing to commit.
    pub(crate) mtime: Option<Timestamp>,
    /// Chunks uploaded for this file since its last commit, which protect them from garbage
    /// collection until the commit releases them (used by the commit or not).
    pub(crate) protected: Vec<ChunkHash>,
    /// Where the last write ended: a write that starts there continues a sequential stream.
    pub(crate) write_end: u64,
    /// Where this file's buffers (their capacity) are counted.
    budget: Arc<WriteBudget>,
}

impl FileState {
    pub(crate) fn has_changes(&self) -> bool {
        self.mtime.is_some() || !self.dirty.is_empty()
    }

    pub(crate) fn dirty(&self) -> &BTreeMap<u64, Dirty> {
        &self.dirty
    }

    fn count(&self, added: usize, removed: usize) {
        self.budget.used.inc_by(added as i64 - removed as i64);
    }

    /// Bytes (capacity) of this file's buffers.
    fn buffered_bytes(&self) -> usize {
        self.dirty.values().map(buffered).sum()
    }

    /// Removes block `index`'s entry.
    pub(crate) fn take(&mut self, index: u64) -> Option<Dirty> {
        let taken = self.dirty.remove(&index);
        if let Some(dirty) = &taken {
            self.count(0, buffered(dirty));
        }
        taken
    }

    /// Sets block `index`'s entry.
    pub(crate) fn set(&mut self, index: u64, dirty: Dirty) {
        self.count(buffered(&dirty), 0);
        if let Some(old) = self.dirty.insert(index, dirty) {
            self.count(0, buffered(&old));
        }
    }

    /// Changes buffer `index`'s patch in place with `change`, keeping the count.
    pub(crate) fn change_patch<T>(&mut self, index: u64, change: impl FnOnce(&mut Patch) -> T) -> T {
        let Some(Dirty::Buffer { patch, .. }) = self.dirty.get_mut(&index) else {
            unreachable!("block {index} is buffered")
        };
        let before = patch.capacity();
        let result = change(patch);
        let after = patch.capacity();
        self.count(after, before);
        result
    }

    /// Forgets every entry (after a commit stored them all).
    pub(crate) fn clear(&mut self) {
        self.count(0, self.buffered_bytes());
        self.dirty.clear();
    }

    /// Blocks whose entry is a buffer.
    pub(crate) fn buffered_blocks(&self) -> Vec<u64> {
        self.dirty.iter().filter(|(_, d)| matches!(d, Dirty::Buffer { .. })).map(|(i, _)| *i).collect()
    }
}

/// Memory of an entry that the write budget counts: that of a buffer's patch.
fn buffered(dirty: &Dirty) -> usize {
    match dirty {
        Dirty::Buffer { patch, .. } => patch.capacity(),
        _ => 0,
    }
}

impl Drop for FileState {
    fn drop(&mut self) {
        self.count(0, self.buffered_bytes());
    }
}

pub(crate) struct OpenFile {
    pub(crate) ino: Ino,
    pub(crate) state: Mutex<FileState>,
    /// Whether the file may have a set-user-ID or set-group-ID bit, as of its last open or this
    /// client's last chmod of it: a write that must drop them looks at the attributes only then.
    pub(crate) may_have_set_id_bits: AtomicBool,
}

impl OpenFile {
    pub(crate) fn new(ino: Ino, size: u64, budget: Arc<WriteBudget>) -> Self {
        let state = FileState {
            size,
            committed_size: size,
            dirty: BTreeMap::new(),
            mtime: None,
            protected: Vec::new(),
            write_end: 0,
            budget,
        };
        OpenFile { ino, state: Mutex::new(state), may_have_set_id_bits: AtomicBool::new(true) }
    }

    /// Takes the committed size as the file's size, unless this client has uncommitted changes
    /// (then its own size is the truth): at open, and when a lock is granted.
    pub(crate) fn adopt_committed_size(&self, committed: u64) {
        let mut st = self.state.lock().unwrap();
        if !st.has_changes() {
            st.size = committed;
            st.committed_size = committed;
        }
    }
}

/// Per-handle sequential-read detection: the readahead window doubles while reads follow each
/// other and falls back to nothing on a seek.
#[derive(Default)]
pub(crate) struct Readahead {
    pub(crate) next_offset: u64,
    pub(crate) window_blocks: u64,
    /// Blocks before this index have been prefetched already.
    pub(crate) prefetched_until: u64,
}

impl Readahead {
    /// Whether the last read did not follow the one before it.
    pub(crate) fn is_random(&self) -> bool {
        self.window_blocks == 0
    }

    /// Records a read and returns the block range to prefetch, if any.
    pub(crate) fn on_read(
        &mut self,
        offset: u64,
        len: u64,
        block_size: u64,
        max_window: u64,
    ) -> Option<(u64, u64)> {
        let sequential = offset == self.next_offset;
        self.next_offset = offset + len;
        if !sequential {
            self.window_blocks = 0;
            return None;
        }
        self.window_blocks = (self.window_blocks * 2).clamp(1, max_window.max(1));
        let next_block = (offset + len).div_ceil(block_size);
        let start = next_block.max(self.prefetched_until);
        let end = next_block + self.window_blocks;
        if start >= end {
            return None;
        }
        self.prefetched_until = end;
        Some((start, end - start))
    }
}
