//! The write path: bytes into the write-back buffer, blocks sealed and uploaded, the block map
//! and size committed (objects first, metadata second), truncate.

use std::sync::Arc;

use bytes::Bytes;
use elasticfs_metadata::throughput::IoKind;
use elasticfs_metadata::{
    Attr, Block, BlockChange, BlockCommit, BlockRef, ChunkHash, Committed, FileKind, Ino, MetaError, Slice,
    Timestamp,
};
use tokio::task::JoinHandle;
use tracing::{instrument, warn};

use super::{FileSystem, MAX_FILE_SIZE};
use crate::error::{errno, FsError, FsResult};
use crate::metrics::Op;
use crate::open_file::{Dirty, FileState, OpenFile};
use crate::slices::{Layout, Patch};

/// Patches of several blocks packed into one chunk.
struct Pack {
    blocks: Vec<Packed>,
    data: Bytes,
}

/// One block's patch in a [`Pack`].
struct Packed {
    index: u64,
    /// Where its bytes start in the pack.
    offset: u32,
    extents: Vec<(u32, u32)>,
}

impl Pack {
    /// The patches back (an upload failed).
    fn into_patches(self) -> impl Iterator<Item = (u64, Patch)> {
        self.blocks.into_iter().map(move |Packed { index, offset, extents }| {
            let mut patch = Patch::default();
            let mut at = offset as usize;
            for (start, len) in extents {
                patch.write(start as u64, &self.data[at..at + len as usize], None);
                at += len as usize;
            }
            (index, patch)
        })
    }
}

/// How a buffered block is stored at a flush.
enum Storable {
    /// As a whole block: inline if `small`, else as a chunk.
    Whole { small: bool },
    /// As a slice over the committed block.
    Patch,
}

impl FileSystem {
    #[instrument(level = "debug", skip(self, data), fields(len = data.len()))]
    pub fn write(&self, fh: u64, offset: u64, data: &[u8]) -> FsResult<usize> {
        self.run(Op::Write, || {
            self.throttle.charge(IoKind::Write, data.len() as u64);
            let handle = self.handle(fh)?;
            if data.is_empty() {
                // POSIX: writing nothing changes nothing, not even the size.
                return Ok(0);
            }
            let file = &handle.file;
            let bs = self.block_size;
            let mut st = file.state.lock().unwrap();
            let offset = if handle.append { st.size } else { offset };
            let end = offset.checked_add(data.len() as u64).filter(|e| *e <= MAX_FILE_SIZE);
            let Some(end) = end else {
                return Err(FsError::new(errno::EFBIG, "write past the largest file size"));
            };
            self.collect_uploads(&mut st);
            // A block is uploaded as soon as a sequential stream of writes fills it. Blocks
            // written in place stay buffered until a flush, or until the buffer needs room.
            let sequential = offset == st.write_end;
            let (mut pos, mut rest) = (offset, data);
            while !rest.is_empty() {
                let index = pos / bs;
                let within = pos % bs;
                let n = rest.len().min((bs - within) as usize);
                self.make_buffer(&mut st, index)?;
                // Past the inline size the block will most likely fill: one allocation of the
                // whole block instead of a doubling series of copies.
                let reserve = (within + n as u64 > self.inline_threshold).then_some(bs);
                let full = st.change_patch(index, |patch| {
                    patch.write(within, &rest[..n], reserve);
                    patch.covers(bs)
                });
                // Filled up to its end by this stream (a later piece of one write follows the
                // piece before it).
                if full && within + n as u64 == bs && (sequential || pos > offset) {
                    self.seal(&mut st, index);
                }
                pos += n as u64;
                rest = &rest[n..];
            }
            st.write_end = end;
            st.size = st.size.max(end);
            st.mtime = Some(Timestamp::now());
            // After the size and time: making room commits them with the bytes.
            if self.write_budget.over() {
                self.make_room(file, &mut st)?;
            }
            self.metrics().written(data.len() as u64);
            Ok(data.len())
        })
    }

    /// fallocate: mode 0 extends the file (space is elastic, so there is nothing to reserve);
    /// FALLOC_FL_KEEP_SIZE is a no-op for the same reason.
    pub fn fallocate(&self, fh: u64, offset: u64, len: u64, mode: i32) -> FsResult<()> {
        self.run(Op::Fallocate, || {
            const KEEP_SIZE: i32 = 1;
            let handle = self.handle(fh)?;
            match mode {
                0 => {
                    let end = offset.checked_add(len).filter(|e| *e <= MAX_FILE_SIZE);
                    let end = end
                        .ok_or_else(|| FsError::new(errno::EFBIG, "fallocate past the largest file size"))?;
                    let mut st = handle.file.state.lock().unwrap();
                    if end > st.size {
                        st.size = end;
                        st.mtime = Some(Timestamp::now());
                    }
                    Ok(())
                }
                KEEP_SIZE => Ok(()),
                _ => Err(FsError::new(errno::EOPNOTSUPP, "fallocate mode")),
            }
        })
    }

    /// Makes block `index`'s entry a buffer: of this client's uncommitted bytes of the block,
    /// or an empty patch (over the committed block if there may be one).
    fn make_buffer(&self, st: &mut FileState, index: u64) -> FsResult<()> {
        if matches!(st.dirty().get(&index), Some(Dirty::Buffer { .. })) {
            return Ok(());
        }
        let buffer = match st.take(index) {
            Some(Dirty::Buffer { .. }) => unreachable!("returned above"),
            // Rewriting a block on its way to the store: the upload is let finish, and its
            // chunk is released by the next commit like every other upload of this file (no
            // reference keeps it, so garbage collection takes it). Nothing is left behind that
            // the metadata does not account for.
            Some(Dirty::Uploading { data, task }) => {
                if let Ok(hash) = self.join_upload(task) {
                    st.protected.push(hash);
                }
                Dirty::Buffer { patch: Patch::whole(data.to_vec()), over_committed: false }
            }
            Some(Dirty::Stored(base)) => {
                let data = self.load_block(&Block::whole(base))?;
                Dirty::Buffer { patch: Patch::whole(data), over_committed: false }
            }
            // Uploaded, but the commit did not take it (it failed): its bytes back into a patch.
            Some(Dirty::Sliced(slice)) => {
                let mut layout = Layout::zeros(0..slice.end());
                layout.paint_slice(&slice);
                let data = self.block_on(self.chunks.read_layout(layout))?;
                let mut patch = Patch::default();
                for &(at, len) in &slice.extents {
                    patch.write(at as u64, &data[at as usize..(at + len) as usize], None);
                }
                Dirty::Buffer { patch, over_committed: true }
            }
            None => Dirty::Buffer {
                patch: Patch::default(),
                over_committed: index * self.block_size < st.committed_size,
            },
        };
        st.set(index, buffer);
        Ok(())
    }

    /// Brings the write buffer within its budget again: flushes this file (uploads and
    /// commits what it has buffered), then other open files that are not busy. Committing
    /// rather than only uploading means a block written again afterwards gets a new patch over
    /// what was committed, instead of taking its uploaded bytes back into the buffer (and
    /// uploading them again at the next spill).
    fn make_room(&self, file: &OpenFile, st: &mut FileState) -> FsResult<()> {
        self.flush_state(file.ino, st)?;
        let others: Vec<Arc<OpenFile>> = self
            .open_files
            .lock()
            .unwrap()
            .values()
            .map(|e| e.file.clone())
            .filter(|f| f.ino != file.ino)
            .collect();
        for other in others {
            if !self.write_budget.over() {
                break;
            }
            let Ok(mut theirs) = other.state.try_lock() else { continue };
            // Another file's trouble is not this write's: it finds out at its own flush.
            if let Err(e) = self.flush_state(other.ino, &mut theirs) {
                warn!(ino = other.ino, "making room in the write buffer: {e}");
            }
        }
        Ok(())
    }

    /// How buffered block `index` will be stored.
    fn storable(&self, st: &FileState, index: u64) -> Storable {
        let Some(Dirty::Buffer { patch, over_committed }) = st.dirty().get(&index) else {
            unreachable!("block {index} is buffered")
        };
        // What the block can hold committed: no more than the file's committed size reaches
        // into it. A patch over all of that (a file's last block rewritten) is the whole block.
        let committed = st.committed_size.saturating_sub(index * self.block_size).min(self.block_size);
        if *over_committed && !patch.covers(committed) {
            Storable::Patch
        } else {
            Storable::Whole { small: patch.end() <= self.inline_threshold }
        }
    }

    /// Uploads the patches of buffered blocks `indices` as slices, packed into chunks of up to
    /// a block each (a flush of 16 small writes is one upload), and leaves them waiting for
    /// the commit. Packs go up a few at a time, each patch leaving the buffer as it is packed,
    /// so that the memory packing takes is a few blocks, not a second copy of the buffer.
    fn upload_slices(&self, ino: Ino, st: &mut FileState, indices: &[u64]) -> FsResult<()> {
        let mut indices = indices.iter().copied().peekable();
        let at_once = self.config.max_uploads.max(1);
        loop {
            let packs: Vec<Pack> =
                std::iter::from_fn(|| self.next_pack(st, &mut indices)).take(at_once).collect();
            if packs.is_empty() {
                return Ok(());
            }
            let uploads: Vec<_> = packs.iter().map(|pack| self.chunks.store(pack.data.clone())).collect();
            let uploaded = self.block_on(futures::future::join_all(uploads));
            let mut failure = None;
            for (pack, uploaded) in packs.into_iter().zip(uploaded) {
                match uploaded {
                    Ok((hash, sent)) => {
                        if sent {
                            self.metrics().sliced(pack.data.len() as u64);
                        }
                        st.protected.push(hash);
                        let chunk_len = pack.data.len() as u32;
                        for Packed { index, offset, extents } in pack.blocks {
                            let slice = Slice { hash, chunk_len, chunk_offset: offset, extents, level: 0 };
                            st.set(index, Dirty::Sliced(slice));
                        }
                    }
                    Err(e) => {
                        warn!(ino, "uploading slices failed (kept buffered): {e}");
                        for (index, patch) in pack.into_patches() {
                            st.set(index, Dirty::Buffer { patch, over_committed: true });
                        }
                        failure.get_or_insert(e);
                    }
                }
            }
            if let Some(e) = failure {
                return Err(e);
            }
        }
    }

    /// Takes the next buffered patches of `indices` out of the buffer, into one pack of up to
    /// a block (or one patch, if it is larger).
    fn next_pack(
        &self,
        st: &mut FileState,
        indices: &mut std::iter::Peekable<impl Iterator<Item = u64>>,
    ) -> Option<Pack> {
        let (mut blocks, mut data) = (Vec::new(), Vec::new());
        while let Some(&index) = indices.peek() {
            let bytes = match st.dirty().get(&index) {
                Some(Dirty::Buffer { patch, .. }) => patch.bytes(),
                _ => {
                    indices.next();
                    continue;
                }
            };
            if !blocks.is_empty() && (data.len() + bytes) as u64 > self.block_size {
                break;
            }
            indices.next();
            let Some(Dirty::Buffer { patch, .. }) = st.take(index) else { unreachable!("buffered") };
            let offset = data.len() as u32;
            let extents = patch.extents().map(|(at, bytes)| (at as u32, bytes.len() as u32)).collect();
            for (_, bytes) in patch.extents() {
                data.extend_from_slice(bytes);
            }
            blocks.push(Packed { index, offset, extents });
        }
        (!blocks.is_empty()).then(|| Pack { blocks, data: Bytes::from(data) })
    }

    /// A committed block's bytes.
    fn load_block(&self, block: &Block) -> FsResult<Vec<u8>> {
        self.block_on(self.chunks.read_layout(Layout::of(block, 0..block.len())))
    }

    /// Starts uploading block `index` in the background. Waits for an upload slot first, which
    /// is what bounds the memory of a fast writer.
    fn seal(&self, st: &mut FileState, index: u64) {
        if !matches!(st.dirty().get(&index), Some(Dirty::Buffer { .. })) {
            return;
        }
        let Some(Dirty::Buffer { patch, .. }) = st.take(index) else { unreachable!() };
        let data = Bytes::from(patch.into_whole());
        let permit =
            self.block_on(self.upload_slots.clone().acquire_owned()).expect("semaphore never closed");
        let chunks = self.chunks.clone();
        let upload = data.clone();
        let task = self.runtime.spawn(async move {
            let _slot = permit;
            chunks.put(upload).await
        });
        st.set(index, Dirty::Uploading { data, task });
    }

    /// Turns finished uploads into block references (and failed ones back into buffers, to be
    /// retried at the next flush), without waiting for unfinished ones.
    fn collect_uploads(&self, st: &mut FileState) {
        let finished: Vec<u64> = st
            .dirty()
            .iter()
            .filter(|(_, d)| matches!(d, Dirty::Uploading { task, .. } if task.is_finished()))
            .map(|(i, _)| *i)
            .collect();
        for index in finished {
            self.finish_upload(st, index);
        }
    }

    fn finish_upload(&self, st: &mut FileState, index: u64) -> Option<FsError> {
        if !matches!(st.dirty().get(&index), Some(Dirty::Uploading { .. })) {
            return None;
        }
        let Some(Dirty::Uploading { data, task }) = st.take(index) else { unreachable!() };
        match self.join_upload(task) {
            Ok(hash) => {
                st.protected.push(hash);
                st.set(index, Dirty::Stored(BlockRef::Chunk { hash, len: data.len() as u32 }));
                None
            }
            Err(e) => {
                st.set(index, Dirty::Buffer { patch: Patch::whole(data.to_vec()), over_committed: false });
                Some(e)
            }
        }
    }

    fn join_upload(&self, task: JoinHandle<FsResult<ChunkHash>>) -> FsResult<ChunkHash> {
        self.block_on(task).unwrap_or_else(|e| Err(FsError::io(format!("upload task failed: {e}"))))
    }

    /// Commits a change to a file's block map, releasing the chunk protections it was made
    /// with. A chunk the metadata no longer finds protected (this client's session lapsed) is
    /// protected again if its object is still stored.
    fn commit(&self, ino: Ino, mut commit: BlockCommit) -> FsResult<Attr> {
        let committed = self.commit_layered(ino, &mut commit)?;
        self.compactor.after_commit(ino, committed.layered);
        Ok(committed.attr)
    }

    fn commit_layered(&self, ino: Ino, commit: &mut BlockCommit) -> FsResult<Committed> {
        // Each retry protects one more chunk: at most one per block.
        for _ in 0..=commit.blocks.len() {
            match self.meta.commit_blocks(ino, commit) {
                Err(MetaError::ChunkUnprotected(hash)) => {
                    self.block_on(self.chunks.reprotect(hash))?;
                    commit.release.push(hash);
                }
                other => return Ok(other?),
            }
        }
        Err(FsError::io("a commit kept naming chunks the metadata did not find protected"))
    }

    /// Compacts every block of file `ino` that wants it, now (see [`crate::compaction`]).
    /// Returns how many blocks were compacted.
    pub fn compact(&self, ino: Ino) -> FsResult<u64> {
        const PAGE: u64 = 1024;
        let attr = self.meta.getattr(ino)?;
        if attr.kind != FileKind::File {
            return Ok(0);
        }
        let mut compacted = 0;
        for first in (0..attr.size.div_ceil(self.block_size)).step_by(PAGE as usize) {
            for (index, block) in self.meta.blocks(ino, first, PAGE)? {
                if crate::compaction::plan(&block).is_some() && self.compactor.compact(ino, index, block)? {
                    compacted += 1;
                }
            }
        }
        Ok(compacted)
    }

    /// Uploads whatever is pending, waits for every upload, then commits the block map and size
    /// in one metadata transaction: objects first, metadata second.
    pub(super) fn flush_file(&self, file: &OpenFile) -> FsResult<()> {
        self.flush_state(file.ino, &mut file.state.lock().unwrap())
    }

    /// [`Self::flush_file`], with the file's state already locked.
    fn flush_state(&self, ino: Ino, st: &mut FileState) -> FsResult<()> {
        if !st.has_changes() {
            return Ok(());
        }
        let mut patches = Vec::new();
        for index in st.buffered_blocks() {
            match self.storable(st, index) {
                Storable::Whole { small: true } => {
                    let Some(Dirty::Buffer { patch, .. }) = st.take(index) else { unreachable!() };
                    st.set(index, Dirty::Stored(BlockRef::Inline(patch.into_whole())));
                }
                Storable::Whole { small: false } => self.seal(st, index),
                Storable::Patch => match self.small_merged(ino, st, index)? {
                    // A small block stays inline, patched in the metadata: no upload at all.
                    Some(data) => {
                        st.take(index);
                        st.set(index, Dirty::Stored(BlockRef::Inline(data)));
                    }
                    None => patches.push(index),
                },
            }
        }
        self.upload_slices(ino, st, &patches)?;
        let uploading: Vec<u64> = st.dirty().keys().copied().collect();
        let mut failure = None;
        for index in uploading {
            if let Some(e) = self.finish_upload(st, index) {
                failure.get_or_insert(e);
            }
        }
        if let Some(e) = failure {
            return Err(e);
        }
        let blocks = st
            .dirty()
            .iter()
            .map(|(i, d)| match d {
                Dirty::Stored(base) => (*i, BlockChange::Whole(base.clone())),
                Dirty::Sliced(slice) => (*i, BlockChange::Overlay(slice.clone())),
                _ => unreachable!("every block was stored above"),
            })
            .collect();
        let release = st.protected.clone();
        let commit = BlockCommit { truncate: None, blocks, min_size: st.size, mtime: st.mtime, release };
        let attr = self.commit(ino, commit)?;
        st.protected.clear();
        st.clear();
        st.mtime = None;
        st.size = attr.size;
        st.committed_size = attr.size;
        Ok(())
    }

    /// Buffered block `index` patched over its committed content, if the result is small
    /// enough to stay inline and the committed block is inline too (or absent).
    fn small_merged(&self, ino: Ino, st: &FileState, index: u64) -> FsResult<Option<Vec<u8>>> {
        let Some(Dirty::Buffer { patch, .. }) = st.dirty().get(&index) else { unreachable!() };
        if patch.end() > self.inline_threshold {
            return Ok(None);
        }
        let committed = self.meta.blocks(ino, index, 1)?.pop().map(|(_, block)| block).unwrap_or_default();
        let inline = committed.slices.is_empty() && !matches!(committed.base, Some(BlockRef::Chunk { .. }));
        if !inline || committed.len() > self.inline_threshold {
            return Ok(None);
        }
        let mut layout = Layout::of(&committed, 0..committed.len().max(patch.end()));
        layout.paint_patch(patch);
        Ok(Some(self.block_on(self.chunks.read_layout(layout))?))
    }

    /// Stores one block's content the way a flush would: inline if small, else as a chunk.
    fn store_block(&self, data: Vec<u8>) -> FsResult<BlockRef> {
        if data.len() as u64 <= self.inline_threshold {
            return Ok(BlockRef::Inline(data));
        }
        let len = data.len() as u32;
        let hash = self.block_on(self.chunks.put(Bytes::from(data)))?;
        Ok(BlockRef::Chunk { hash, len })
    }

    pub(super) fn truncate(&self, ino: Ino, size: u64) -> FsResult<Attr> {
        if size > MAX_FILE_SIZE {
            return Err(FsError::new(errno::EFBIG, "truncate past the largest file size"));
        }
        let file = self.open_file(ino);
        if let Some(file) = &file {
            self.flush_file(file)?;
        }
        // Hold the file (if open) so that no write slips between the flush and the truncate.
        let mut guard = file.as_ref().map(|f| f.state.lock().unwrap());
        let attr = self.meta.getattr(ino)?;
        match attr.kind {
            FileKind::File => {}
            FileKind::Dir => return Err(FsError::new(errno::EISDIR, "truncate of a directory")),
            _ => return Err(FsError::new(errno::EINVAL, "truncate of a special file")),
        }
        let mut commit = BlockCommit {
            truncate: Some(size),
            blocks: Vec::new(),
            min_size: 0,
            mtime: Some(Timestamp::now()),
            release: Vec::new(),
        };
        let cut = (size % self.block_size) as usize;
        if size < attr.size && cut != 0 {
            let index = size / self.block_size;
            if let Some((_, block)) = self.meta.blocks(ino, index, 1)?.pop() {
                if block.len() as usize > cut {
                    let mut data = self.load_block(&block)?;
                    data.truncate(cut);
                    let block = self.store_block(data)?;
                    if let BlockRef::Chunk { hash, .. } = &block {
                        commit.release.push(*hash);
                    }
                    commit.blocks.push((index, BlockChange::Whole(block)));
                }
            }
        }
        let attr = self.commit(ino, commit)?;
        if let Some(st) = guard.as_mut() {
            st.size = attr.size;
            st.committed_size = attr.size;
        }
        Ok(attr)
    }
}
