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

/// A block's entry in the buffer of writes not yet taken by a flush.
pub(crate) enum Dirty {
    /// Written, not yet uploaded. With `over_committed`, the patch lies over what is below it
    /// (a flush's layer, then the committed block); without, it is the whole block (zeros in
    /// its gaps).
    Buffer { patch: Patch, over_committed: bool },
    /// A whole block sealed and being uploaded; `data` serves reads until the upload is
    /// collected.
    Uploading { data: Bytes, task: Upload },
    /// A whole block uploaded: waiting for a flush.
    Stored(BlockRef),
}

/// An upload in the background, giving the chunk's hash.
pub(crate) type Upload = JoinHandle<FsResult<ChunkHash>>;

/// A block's entry in a [`FlushLayer`].
#[derive(Clone)]
pub(crate) enum Pending {
    /// A [`Dirty::Buffer`] not yet uploaded.
    Patch { patch: Patch, over_committed: bool },
    /// A sealed whole block whose upload the flush waits for.
    Sealed(Bytes),
    /// A whole block uploaded (or small enough to stay inline).
    Stored(BlockRef),
    /// A patch over the committed block, uploaded as this slice.
    Sliced(Slice),
}

/// What one flush commits: the buffer as the flush found it, taken out so that writes go on
/// into a fresh buffer while it uploads and commits. Reads lay it between the committed
/// blocks and the buffer. A failed flush leaves it (with what was uploaded) for the next.
pub(crate) struct FlushLayer {
    pub(crate) blocks: BTreeMap<u64, Pending>,
    /// The file's size and time of last write when the layer was taken.
    pub(crate) size: u64,
    pub(crate) mtime: Option<Timestamp>,
    /// Chunks uploaded for the file since its last commit, which the commit releases.
    pub(crate) release: Vec<ChunkHash>,
    budget: Arc<WriteBudget>,
}

impl FlushLayer {
    pub(crate) fn new(
        blocks: BTreeMap<u64, Pending>,
        size: u64,
        mtime: Option<Timestamp>,
        release: Vec<ChunkHash>,
        budget: Arc<WriteBudget>,
    ) -> Self {
        let layer = FlushLayer { blocks, size, mtime, release, budget };
        layer.budget.used.inc_by(layer.buffered_bytes() as i64);
        layer
    }

    /// A layer like this one, with `blocks` and `release` as a failed flush left them.
    pub(crate) fn rebuilt(&self, blocks: BTreeMap<u64, Pending>, release: Vec<ChunkHash>) -> Self {
        FlushLayer::new(blocks, self.size, self.mtime, release, self.budget.clone())
    }

    fn buffered_bytes(&self) -> usize {
        self.blocks
            .values()
            .map(|p| if let Pending::Patch { patch, .. } = p { patch.capacity() } else { 0 })
            .sum()
    }
}

impl Drop for FlushLayer {
    fn drop(&mut self) {
        self.budget.used.dec_by(self.buffered_bytes() as i64);
    }
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
    /// Size as of this client's last commit or open.
    pub(crate) committed_size: u64,
    /// Changed blocks; a [`Dirty::Buffer`] enters and leaves only through [`Self::set`] and
    /// [`Self::take`], which count it against the write budget.
    dirty: BTreeMap<u64, Dirty>,
    /// What a flush is committing, or what a failed one left: below `dirty`.
    pub(crate) flushing: Option<Arc<FlushLayer>>,
    /// Time of the last uncommitted write; `None` when there is nothing to commit.
    pub(crate) mtime: Option<Timestamp>,
    /// Counts writes (and size changes): a flush that ends with the count it started with
    /// knows the file has nothing more to commit.
    pub(crate) changes: u64,
    /// Chunks uploaded for this file since its last commit, which protect them from garbage
    /// collection until the commit releases them (used by the commit or not).
    pub(crate) protected: Vec<ChunkHash>,
    /// Uploads of blocks written again before a flush took them: the flush waits for them
    /// and releases what they stored.
    pub(crate) abandoned: Vec<Upload>,
    /// Commits of the file's blocks by this client (or attempts), counted once each is
    /// reflected here: a read that fetched the committed blocks without the lock checks that
    /// none ended in between. (One under way needs no check: its layer stays in
    /// [`Self::flushing`] until it ends, and laying it again over blocks that already have it
    /// changes nothing.)
    pub(crate) commits: u64,
    /// Where the last write ended: a write that starts there continues a sequential stream.
    pub(crate) write_end: u64,
    /// Where this file's buffers (their capacity) are counted.
    budget: Arc<WriteBudget>,
}

impl FileState {
    pub(crate) fn has_changes(&self) -> bool {
        self.mtime.is_some() || !self.dirty.is_empty() || self.flushing.is_some()
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

    /// Takes the buffer out as a [`FlushLayer`] (below which the one a failed flush left must
    /// already be committed), with the uploads it must wait for.
    pub(crate) fn take_layer(&mut self) -> (Arc<FlushLayer>, Vec<(u64, Upload)>) {
        debug_assert!(self.flushing.is_none(), "the layer below is committed first");
        let mut uploads = Vec::new();
        let dirty = std::mem::take(&mut self.dirty);
        self.count(0, dirty.values().map(buffered).sum());
        let blocks = dirty
            .into_iter()
            .map(|(index, entry)| {
                let pending = match entry {
                    Dirty::Buffer { patch, over_committed } => Pending::Patch { patch, over_committed },
                    Dirty::Uploading { data, task } => {
                        uploads.push((index, task));
                        Pending::Sealed(data)
                    }
                    Dirty::Stored(base) => Pending::Stored(base),
                };
                (index, pending)
            })
            .collect();
        let release = std::mem::take(&mut self.protected);
        let layer = Arc::new(FlushLayer::new(blocks, self.size, self.mtime, release, self.budget.clone()));
        self.flushing = Some(layer.clone());
        (layer, uploads)
    }

    /// Where the buffer's last block ends (0 if it is empty).
    pub(crate) fn dirty_end(&self, block_size: u64) -> u64 {
        let end = |(index, entry): (&u64, &Dirty)| {
            index * block_size
                + match entry {
                    Dirty::Buffer { patch, .. } => patch.end(),
                    Dirty::Uploading { data, .. } => data.len() as u64,
                    Dirty::Stored(base) => base.len(),
                }
        };
        self.dirty.iter().next_back().map_or(0, end)
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
    /// Held by a flush or a truncate from start to commit: they take turns, while reads,
    /// writes and `stat` only ever take [`Self::state`], briefly.
    pub(crate) flush: Mutex<()>,
    /// Whether the file may have a set-user-ID or set-group-ID bit, as of its last open or this
    /// client's last chmod of it: a write that must drop them looks at the attributes only then.
    pub(crate) may_have_set_id_bits: AtomicBool,
    /// The file was created by this client as a pending create (see
    /// `MetaStore::create_pending`) that no close or `fsync` has settled yet.
    pub(crate) create_pending: AtomicBool,
}

impl OpenFile {
    pub(crate) fn new(ino: Ino, size: u64, budget: Arc<WriteBudget>) -> Self {
        let state = FileState {
            size,
            committed_size: size,
            dirty: BTreeMap::new(),
            flushing: None,
            mtime: None,
            changes: 0,
            protected: Vec::new(),
            abandoned: Vec::new(),
            commits: 0,
            write_end: 0,
            budget,
        };
        OpenFile {
            ino,
            state: Mutex::new(state),
            flush: Mutex::new(()),
            may_have_set_id_bits: AtomicBool::new(true),
            create_pending: AtomicBool::new(false),
        }
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

    /// Updates the state with the outcome of a commit of the file's blocks, with `then`, and
    /// counts the commit (see [`FileState::commits`]).
    pub(crate) fn after_commit(&self, then: impl FnOnce(&mut FileState)) {
        let mut st = self.state.lock().unwrap();
        then(&mut st);
        st.commits += 1;
    }
}

/// Per-handle sequential-read detection: the readahead window doubles while reads follow each
/// other and falls back to nothing on a seek. Reads a little out of order still follow: an NFS
/// client keeps several READs of one stream in flight and the gateway serves them on several
/// threads, so they reach the engine shuffled (strict order made such a stream look random:
/// no readahead, and every read a fetch of its own).
#[derive(Default)]
pub(crate) struct Readahead {
    pub(crate) next_offset: u64,
    pub(crate) window_blocks: u64,
    /// Blocks before this index have been prefetched already.
    pub(crate) prefetched_until: u64,
}

/// How far (in reads of its size) a read may land from where the stream had got to and still
/// continue it.
const REORDERED_READS: u64 = 8;

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
        let shuffled = self.window_blocks > 0
            && offset.abs_diff(self.next_offset) <= len.saturating_mul(REORDERED_READS);
        if offset != self.next_offset && !shuffled {
            self.next_offset = offset + len;
            self.window_blocks = 0;
            return None;
        }
        self.next_offset = self.next_offset.max(offset + len);
        self.window_blocks = (self.window_blocks * 2).clamp(1, max_window.max(1));
        let next_block = self.next_offset.div_ceil(block_size);
        let start = next_block.max(self.prefetched_until);
        let end = next_block + self.window_blocks;
        if start >= end {
            return None;
        }
        self.prefetched_until = end;
        Some((start, end - start))
    }
}

#[cfg(test)]
mod readahead_tests {
    use super::Readahead;

    const MIB: u64 = 1 << 20;

    #[test]
    fn reads_a_little_out_of_order_keep_the_window_and_a_seek_drops_it() {
        let mut r = Readahead::default();
        let bs = 4 * MIB;
        assert!(r.on_read(0, MIB, bs, 8).is_some(), "a read from the start is sequential");
        // In flight together and served shuffled: 2, 1, 3.
        r.on_read(2 * MIB, MIB, bs, 8);
        assert!(!r.is_random());
        r.on_read(MIB, MIB, bs, 8);
        assert!(!r.is_random(), "a read behind the stream's end, within reach, continues it");
        r.on_read(3 * MIB, MIB, bs, 8);
        assert!(!r.is_random());
        assert_eq!(r.next_offset, 4 * MIB, "an earlier read never moves the stream back");
        assert!(r.on_read(512 * MIB, MIB, bs, 8).is_none());
        assert!(r.is_random(), "a seek far away is a random read");
        assert!(r.on_read(100 * MIB, 4096, bs, 8).is_none());
        assert!(r.on_read(100 * MIB + 3 * 4096, 4096, bs, 8).is_none(), "near a random read is still random");
    }
}
