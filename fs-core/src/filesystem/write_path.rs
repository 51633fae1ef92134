//! The write path: bytes into the write-back buffer, and blocks a sequential stream fills
//! sealed and uploaded in the background. A write holds the file's state lock only for work
//! in memory: the bytes a rewritten block needs from the store are fetched, and upload slots
//! waited for, with the lock let go. What a flush commits is in `flush.rs`.

use std::sync::{Arc, MutexGuard};

use bytes::Bytes;
use elasticfs_metadata::throughput::IoKind;
use elasticfs_metadata::{Block, BlockRef, ChunkHash, Timestamp};
use tokio::sync::OwnedSemaphorePermit;
use tracing::{instrument, warn};

use super::flush::Settles;
use super::{FileSystem, MAX_FILE_SIZE};
use crate::error::{errno, FsError, FsResult};
use crate::metrics::Op;
use crate::open_file::{Dirty, FileState, OpenFile, Upload};
use crate::slices::Patch;

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
            let mut slots = self.seal_slots(file, handle.append, offset, data.len());
            let (mut st, offset) = self.lock_for_write(file, handle.append, offset, data.len())?;
            let end = offset.checked_add(data.len() as u64).filter(|e| *e <= MAX_FILE_SIZE);
            let Some(end) = end else {
                return Err(FsError::new(errno::EFBIG, "write past the largest file size"));
            };
            // A block is uploaded as soon as a sequential stream of writes fills it. Blocks
            // written in place stay buffered until a flush, or until the buffer needs room.
            let sequential = offset == st.write_end;
            let (mut pos, mut rest) = (offset, data);
            while !rest.is_empty() {
                let index = pos / bs;
                let within = pos % bs;
                let n = rest.len().min((bs - within) as usize);
                self.make_buffer(&mut st, index);
                // Past the inline size the block will most likely fill: one allocation of the
                // whole block instead of a doubling series of copies.
                let reserve = (within + n as u64 > self.inline_threshold).then_some(bs);
                let (was_full, full) = st.change_patch(index, |patch| {
                    let was_full = patch.covers(bs);
                    patch.write(within, &rest[..n], reserve);
                    (was_full, patch.covers(bs))
                });
                // Filled up to its end by this stream (a later piece of one write follows the
                // piece before it), or filled by this write at last: a stream's writes served
                // out of order (an NFS client's several in flight) fill a block in the middle.
                // A block already full is being rewritten in place and stays buffered.
                if full && ((within + n as u64 == bs && (sequential || pos > offset)) || !was_full) {
                    self.seal(&mut st, index, slots.pop());
                }
                pos += n as u64;
                rest = &rest[n..];
            }
            st.write_end = end;
            st.size = st.size.max(end);
            st.mtime = Some(Timestamp::now());
            st.changes += 1;
            drop(st);
            // After the size and time: making room commits them with the bytes.
            if self.write_budget.over() {
                self.make_room(file)?;
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
                        st.changes += 1;
                    }
                    Ok(())
                }
                KEEP_SIZE => Ok(()),
                _ => Err(FsError::new(errno::EOPNOTSUPP, "fallocate mode")),
            }
        })
    }

    /// Upload slots for the blocks a write of `len` bytes at `offset` fills to their end,
    /// waited for before the file's lock is taken: what bounds the memory of a fast writer,
    /// without holding up readers of the file meanwhile. (A block sealed without one, because
    /// an appending write's offset moved, waits for its slot in the background.)
    fn seal_slots(
        &self,
        file: &OpenFile,
        append: bool,
        offset: u64,
        len: usize,
    ) -> Vec<OwnedSemaphorePermit> {
        let offset = if append { file.state.lock().unwrap().size } else { offset };
        let ends = offset.saturating_add(len as u64) / self.block_size - offset / self.block_size;
        let wanted = ends.min(self.config.max_uploads.max(1) as u64) as u32;
        if wanted == 0 {
            return Vec::new();
        }
        let mut permit = self
            .block_on(self.upload_slots.clone().acquire_many_owned(wanted))
            .expect("semaphore never closed");
        let mut slots: Vec<_> = (1..wanted).filter_map(|_| permit.split(1)).collect();
        slots.push(permit);
        slots
    }

    /// The file's state, locked, with the offset the write goes to, once every block the write
    /// covers can take it in memory: a block whose upload finished before a flush took it is
    /// fetched back first, with the lock let go (then looked at again).
    fn lock_for_write<'a>(
        &self,
        file: &'a OpenFile,
        append: bool,
        offset: u64,
        len: usize,
    ) -> FsResult<(MutexGuard<'a, FileState>, u64)> {
        let bs = self.block_size;
        loop {
            let mut st = file.state.lock().unwrap();
            self.collect_uploads(&mut st);
            let offset = if append { st.size } else { offset };
            let last = offset.saturating_add(len as u64 - 1) / bs;
            let uploaded = st.dirty().range(offset / bs..=last).find_map(|(index, entry)| match entry {
                Dirty::Stored(base @ BlockRef::Chunk { .. }) => Some((*index, base.clone())),
                _ => None,
            });
            let Some((index, base)) = uploaded else {
                return Ok((st, offset));
            };
            drop(st);
            let data = self.load_block(&Block::whole(base.clone()))?;
            let mut st = file.state.lock().unwrap();
            if matches!(st.dirty().get(&index), Some(Dirty::Stored(now)) if *now == base) {
                st.set(index, Dirty::Buffer { patch: Patch::whole(data), over_committed: false });
            }
        }
    }

    /// Makes block `index`'s entry a buffer: of this client's unflushed bytes of the block, or
    /// an empty patch (over what lies below, if anything may).
    fn make_buffer(&self, st: &mut FileState, index: u64) {
        if matches!(st.dirty().get(&index), Some(Dirty::Buffer { .. })) {
            return;
        }
        let buffer = match st.take(index) {
            // Rewriting a block on its way to the store: the upload is let finish, and the
            // next flush releases its chunk like every other upload of this file (no reference
            // keeps it, so garbage collection takes it).
            Some(Dirty::Uploading { data, task }) => {
                st.abandoned.push(task);
                Dirty::Buffer { patch: Patch::whole(data.to_vec()), over_committed: false }
            }
            Some(Dirty::Stored(BlockRef::Inline(data))) => {
                Dirty::Buffer { patch: Patch::whole(data), over_committed: false }
            }
            Some(Dirty::Buffer { .. } | Dirty::Stored(BlockRef::Chunk { .. })) => {
                unreachable!("returned above, or fetched by lock_for_write")
            }
            // Anything below the file's size may have bytes: in the store, or in a flush's layer.
            None => {
                Dirty::Buffer { patch: Patch::default(), over_committed: index * self.block_size < st.size }
            }
        };
        st.set(index, buffer);
    }

    /// Brings the write buffer within its budget again: flushes this file (uploads and
    /// commits what it has buffered), then other open files that are not flushing already.
    /// Committing rather than only uploading means a block written again afterwards gets a new
    /// patch over what was committed, instead of taking its uploaded bytes back into the
    /// buffer (and uploading them again at the next spill).
    fn make_room(&self, file: &OpenFile) -> FsResult<()> {
        {
            let _turn = file.flush.lock().unwrap();
            self.flush_held(file, Settles::Nothing)?;
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
            if !self.write_budget.over() {
                break;
            }
            let Ok(_turn) = other.flush.try_lock() else { continue };
            // Another file's trouble is not this write's: it finds out at its own flush.
            if let Err(e) = self.flush_held(&other, Settles::Nothing) {
                warn!(ino = other.ino, "making room in the write buffer: {e}");
            }
        }
        Ok(())
    }

    /// Starts uploading buffered block `index` in the background, in `slot` (or in the next
    /// one free).
    fn seal(&self, st: &mut FileState, index: u64, slot: Option<OwnedSemaphorePermit>) {
        if !matches!(st.dirty().get(&index), Some(Dirty::Buffer { .. })) {
            return;
        }
        let Some(Dirty::Buffer { patch, .. }) = st.take(index) else { unreachable!() };
        let data = Bytes::from(patch.into_whole());
        let task = self.upload_whole(data.clone(), slot);
        st.set(index, Dirty::Uploading { data, task });
    }

    /// Uploads a whole block in the background, in `slot` or once one is free.
    pub(super) fn upload_whole(&self, data: Bytes, slot: Option<OwnedSemaphorePermit>) -> Upload {
        let (chunks, slots) = (self.chunks.clone(), self.upload_slots.clone());
        self.runtime.spawn(async move {
            let _slot = match slot {
                Some(slot) => slot,
                None => slots.acquire_owned().await.expect("semaphore never closed"),
            };
            chunks.put(data).await
        })
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
            let Some(Dirty::Uploading { data, task }) = st.take(index) else { unreachable!() };
            match self.join_upload(task) {
                Ok(hash) => {
                    st.protected.push(hash);
                    st.set(index, Dirty::Stored(BlockRef::Chunk { hash, len: data.len() as u32 }));
                }
                Err(e) => {
                    warn!("uploading a block failed (kept buffered): {e}");
                    st.set(
                        index,
                        Dirty::Buffer { patch: Patch::whole(data.to_vec()), over_committed: false },
                    );
                }
            }
        }
    }

    /// Waits for an upload (one that has finished, or with no lock held).
    pub(super) fn join_upload(&self, task: Upload) -> FsResult<ChunkHash> {
        self.block_on(task).unwrap_or_else(|e| Err(FsError::io(format!("upload task failed: {e}"))))
    }

    /// A committed block's bytes.
    pub(super) fn load_block(&self, block: &Block) -> FsResult<Vec<u8>> {
        self.block_on(self.chunks.read_layout(crate::slices::Layout::of(block, 0..block.len())))
    }
}
