//! The write path: bytes into the write-back buffer, blocks sealed and uploaded, the block map
//! and size committed (objects first, metadata second), truncate.

use std::sync::Arc;

use bytes::Bytes;
use elasticfs_metadata::throughput::IoKind;
use elasticfs_metadata::{Attr, BlockCommit, BlockRef, ChunkHash, FileKind, Ino, MetaError, Timestamp};
use tokio::task::JoinHandle;
use tracing::instrument;

use super::{FileSystem, MAX_FILE_SIZE};
use crate::error::{errno, FsError, FsResult};
use crate::metrics::Op;
use crate::open_file::{Dirty, FileState, OpenFile};

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
            let inline_threshold = self.inline_threshold as usize;
            let (mut pos, mut rest) = (offset, data);
            while !rest.is_empty() {
                let index = pos / bs;
                let within = (pos % bs) as usize;
                let n = rest.len().min(bs as usize - within);
                let size = st.size;
                self.make_buffer(file.ino, &mut st, index, size)?;
                let full = st.change_buffer(index, |buffer| {
                    if buffer.len() < within + n {
                        if within + n > inline_threshold {
                            // Past the inline size the block will most likely fill: one
                            // allocation of the whole block instead of a doubling series of copies.
                            buffer.reserve_exact(bs as usize - buffer.len());
                        }
                        buffer.resize(within + n, 0);
                    }
                    buffer[within..within + n].copy_from_slice(&rest[..n]);
                    buffer.len() as u64 == bs
                });
                // Filled up to its end by this stream (a later piece of one write follows the
                // piece before it).
                if full && within + n == bs as usize && (sequential || pos > offset) {
                    self.seal(&mut st, index);
                }
                pos += n as u64;
                rest = &rest[n..];
            }
            st.write_end = end;
            if self.write_budget.over() {
                self.make_room(file, &mut st, (end - 1) / bs);
            }
            st.size = st.size.max(end);
            st.mtime = Some(Timestamp::now());
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

    /// Makes block `index`'s entry a buffer holding the block's current content: this client's
    /// uncommitted bytes, or what is committed.
    fn make_buffer(&self, ino: Ino, st: &mut FileState, index: u64, size: u64) -> FsResult<()> {
        let base = match st.dirty().get(&index) {
            Some(Dirty::Buffer(_)) => return Ok(()),
            Some(Dirty::Uploading { .. }) => {
                let Some(Dirty::Uploading { data, task }) = st.take(index) else { unreachable!() };
                // Rewriting a block on its way to the store: the upload is let finish, and its
                // chunk is released by the next commit like every other upload of this file (no
                // reference keeps it, so garbage collection takes it). Nothing is left behind
                // that the metadata does not account for.
                if let Ok(hash) = self.join_upload(task) {
                    st.protected.push(hash);
                }
                data.to_vec()
            }
            Some(Dirty::Stored(block)) => self.load_block(block)?,
            // A block beyond the end has no committed content.
            None if index * self.block_size >= size => Vec::new(),
            None => match self.meta.blocks(ino, index, 1)?.pop() {
                Some((_, block)) => self.load_block(&block)?,
                None => Vec::new(),
            },
        };
        st.set(index, Dirty::Buffer(base));
        Ok(())
    }

    /// Uploads buffered blocks until the write buffer is within its budget again: this file's
    /// first (but `keep`, the block just written), then those of other open files that are not
    /// busy. Buffers small enough to stay inline are left: they are small.
    fn make_room(&self, file: &OpenFile, st: &mut FileState, keep: u64) {
        let large = |st: &FileState, index: u64| matches!(st.dirty().get(&index), Some(Dirty::Buffer(d)) if d.len() as u64 > self.inline_threshold);
        for index in st.buffered_blocks() {
            if !self.write_budget.over() {
                return;
            }
            if index != keep && large(st, index) {
                self.seal(st, index);
            }
        }
        let others: Vec<Arc<OpenFile>> = self
            .open_files
            .lock()
            .unwrap()
            .values()
            .map(|e| e.file.clone())
            .filter(|f| f.ino != file.ino)
            .collect();
        for other in others {
            let Ok(mut theirs) = other.state.try_lock() else { continue };
            for index in theirs.buffered_blocks() {
                if !self.write_budget.over() {
                    return;
                }
                if large(&theirs, index) {
                    self.seal(&mut theirs, index);
                }
            }
        }
    }

    fn load_block(&self, block: &BlockRef) -> FsResult<Vec<u8>> {
        match block {
            BlockRef::Inline(data) => Ok(data.clone()),
            BlockRef::Chunk { hash, .. } => Ok(self.block_on(self.chunks.get(*hash))?.to_vec()),
        }
    }

    /// Starts uploading block `index` in the background. Waits for an upload slot first, which
    /// is what bounds the memory of a fast writer.
    fn seal(&self, st: &mut FileState, index: u64) {
        if !matches!(st.dirty().get(&index), Some(Dirty::Buffer(_))) {
            return;
        }
        let Some(Dirty::Buffer(data)) = st.take(index) else { unreachable!() };
        let data = Bytes::from(data);
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
                st.set(index, Dirty::Buffer(data.to_vec()));
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
        // Each retry protects one more chunk: at most one per block.
        for _ in 0..=commit.blocks.len() {
            match self.meta.commit_blocks(ino, &commit) {
                Err(MetaError::ChunkUnprotected(hash)) => {
                    self.block_on(self.chunks.reprotect(hash))?;
                    commit.release.push(hash);
                }
                other => return Ok(other?),
            }
        }
        Err(FsError::io("a commit kept naming chunks the metadata did not find protected"))
    }

    /// Uploads whatever is pending, waits for every upload, then commits the block map and size
    /// in one metadata transaction: objects first, metadata second.
    pub(super) fn flush_file(&self, file: &OpenFile) -> FsResult<()> {
        let mut st = file.state.lock().unwrap();
        if !st.has_changes() {
            return Ok(());
        }
        for index in st.buffered_blocks() {
            let small = matches!(st.dirty().get(&index), Some(Dirty::Buffer(d)) if d.len() as u64 <= self.inline_threshold);
            if small {
                if let Some(Dirty::Buffer(data)) = st.take(index) {
                    st.set(index, Dirty::Stored(BlockRef::Inline(data)));
                }
            } else {
                self.seal(&mut st, index);
            }
        }
        let uploading: Vec<u64> = st.dirty().keys().copied().collect();
        let mut failure = None;
        for index in uploading {
            if let Some(e) = self.finish_upload(&mut st, index) {
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
                Dirty::Stored(block) => (*i, block.clone()),
                _ => unreachable!("every block was stored above"),
            })
            .collect();
        let release = st.protected.clone();
        let commit = BlockCommit { truncate: None, blocks, min_size: st.size, mtime: st.mtime, release };
        let attr = self.commit(file.ino, commit)?;
        st.protected.clear();
        st.clear();
        st.mtime = None;
        st.size = attr.size;
        Ok(())
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
                    commit.blocks.push((index, block));
                }
            }
        }
        let attr = self.commit(ino, commit)?;
        if let Some(st) = guard.as_mut() {
            st.size = attr.size;
        }
        Ok(attr)
    }
}
