//! Flushes and truncates: what the write buffer holds uploaded and committed (objects first,
//! metadata second). A flush takes the buffer out as a [`FlushLayer`] under the file's state
//! lock, then uploads and commits it with only the file's flush lock held, so that reads,
//! writes and `stat` of the file go on meanwhile (reads see the layer between the committed
//! blocks and the new buffer).

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use elasticfs_metadata::{
    Attr, BlockChange, BlockCommit, BlockRef, ChunkHash, Committed, FileKind, Ino, MetaError, Slice,
    Timestamp,
};
use tracing::warn;

use super::{FileSystem, MAX_FILE_SIZE};
use crate::error::{errno, FsError, FsResult};
use crate::open_file::{FlushLayer, OpenFile, Pending, Upload};
use crate::slices::{Layout, Patch};

/// Patches of several blocks packed into one chunk.
/// Whether a flush settles the file's pending create (see [`FileSystem::flush_held`]).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Settles {
    Create,
    Nothing,
}

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

/// How a buffered block is stored at a flush.
enum Storable {
    /// As a whole block: inline if `small`, else as a chunk.
    Whole { small: bool },
    /// As a slice over the committed block.
    Patch,
}

/// What one attempt at committing a layer got done: each block's change, the chunks to
/// release, and the first failure.
#[derive(Default)]
struct Progress {
    done: BTreeMap<u64, BlockChange>,
    release: Vec<ChunkHash>,
    failure: Option<FsError>,
}

impl Progress {
    fn failed(&mut self, e: FsError) {
        self.failure.get_or_insert(e);
    }
}

impl FileSystem {
    /// Uploads and commits everything written to `file` before the call. Waits for a flush or
    /// truncate of the file already under way, not for writes.
    pub(super) fn flush_file(&self, file: &OpenFile) -> FsResult<()> {
        let _turn = file.flush.lock().unwrap();
        self.flush_held(file, Settles::Create)
    }

    /// Commits what is written to `file` with its modification time set to `mtime`, if
    /// anything is written; whether it did. For a setattr of the time: left to their own
    /// commit, the writes would stamp the file with their time after the one set (tar and
    /// `cp -p` write, set the time, then close), and the two together take one durable commit.
    pub(super) fn flush_dated(&self, file: &OpenFile, mtime: Timestamp) -> FsResult<bool> {
        let _turn = file.flush.lock().unwrap();
        {
            let mut st = file.state.lock().unwrap();
            if !st.has_changes() {
                return Ok(false);
            }
            st.mtime = Some(mtime);
        }
        self.flush_held(file, Settles::Create)?;
        Ok(true)
    }

    /// [`Self::flush_file`], with the file's flush lock held. A flush that `settles` the file's
    /// pending create (a close, an `fsync`) confirms it with its commit, or on its own if there
    /// is nothing to commit; one to make room in the write buffer does not (a crash then
    /// leaves the file absent, not cut short).
    pub(super) fn flush_held(&self, file: &OpenFile, settles: Settles) -> FsResult<()> {
        let confirm = settles == Settles::Create && file.create_pending.load(Ordering::Acquire);
        // What a failed flush left was written before the buffer: it is committed first.
        let left = {
            let st = file.state.lock().unwrap();
            st.flushing.clone().map(|layer| (layer, st.changes))
        };
        if let Some((layer, changes)) = left {
            self.commit_layer(file, layer, Vec::new(), Vec::new(), changes, false)?;
        }
        let taken = {
            let mut st = file.state.lock().unwrap();
            st.has_changes().then(|| {
                let (layer, uploads) = st.take_layer();
                (layer, uploads, std::mem::take(&mut st.abandoned), st.changes)
            })
        };
        match taken {
            Some((layer, uploads, abandoned, changes)) => {
                self.commit_layer(file, layer, uploads, abandoned, changes, confirm)?
            }
            None if confirm => self.meta.confirm_create(file.ino)?,
            None => {}
        }
        if confirm {
            file.create_pending.store(false, Ordering::Release);
        }
        Ok(())
    }

    /// Uploads what `layer` holds that is not stored yet, waits for `uploads` (its sealed
    /// blocks') and `abandoned` (whose chunks only need releasing), and commits the block map
    /// and size in one metadata transaction. On failure the layer stays, with what was
    /// uploaded, for the next flush. `changes` is the file's write count when the layer was
    /// taken: if no write came since, the file has nothing left to commit. The commit
    /// `confirms_create` of a close or `fsync` (see [`Self::flush_held`]).
    fn commit_layer(
        &self,
        file: &OpenFile,
        layer: Arc<FlushLayer>,
        uploads: Vec<(u64, Upload)>,
        abandoned: Vec<Upload>,
        changes: u64,
        confirms_create: bool,
    ) -> FsResult<()> {
        let ino = file.ino;
        let committed_size = file.state.lock().unwrap().committed_size;
        let mut progress = Progress { release: layer.release.clone(), ..Progress::default() };
        let mut uploads: Vec<(u64, u32, Upload)> =
            uploads.into_iter().map(|(index, task)| (index, sealed_len(&layer, index), task)).collect();
        let mut patches = Vec::new();
        for (&index, pending) in &layer.blocks {
            match pending {
                Pending::Patch { patch, over_committed } => {
                    match self.storable(committed_size, index, patch, *over_committed) {
                        Storable::Whole { small: true } => {
                            progress
                                .done
                                .insert(index, BlockChange::Whole(BlockRef::Inline(patch.materialize())));
                        }
                        Storable::Whole { small: false } => {
                            // The slot first: no more copies of the layer's blocks in memory
                            // than there are uploads in flight.
                            let slot = self.block_on(self.upload_slots.clone().acquire_owned());
                            let data = Bytes::from(patch.materialize());
                            uploads.push((index, data.len() as u32, self.upload_whole(data, slot.ok())));
                        }
                        // A small block stays inline, patched in the metadata: no upload at all.
                        Storable::Patch => match self.small_merged(ino, index, patch) {
                            Ok(Some(data)) => {
                                progress.done.insert(index, BlockChange::Whole(BlockRef::Inline(data)));
                            }
                            Ok(None) => patches.push(index),
                            Err(e) => progress.failed(e),
                        },
                    }
                }
                // Sealed by a write, its upload is among `uploads`, unless a failed flush
                // left it here: then it goes up again.
                Pending::Sealed(data) if !uploads.iter().any(|(i, ..)| *i == index) => {
                    uploads.push((index, data.len() as u32, self.upload_whole(data.clone(), None)));
                }
                Pending::Sealed(_) => {}
                Pending::Stored(base) => {
                    progress.done.insert(index, BlockChange::Whole(base.clone()));
                }
                Pending::Sliced(slice) => {
                    progress.done.insert(index, BlockChange::Overlay(slice.clone()));
                }
            }
        }
        self.upload_slices(ino, &layer, &patches, &mut progress);
        for (index, len, task) in uploads {
            match self.join_upload(task) {
                Ok(hash) => {
                    progress.release.push(hash);
                    progress.done.insert(index, BlockChange::Whole(BlockRef::Chunk { hash, len }));
                }
                Err(e) => progress.failed(e),
            }
        }
        progress.release.extend(abandoned.into_iter().filter_map(|task| self.join_upload(task).ok()));
        if let Some(e) = progress.failure.take() {
            file.state.lock().unwrap().flushing = Some(Arc::new(left_over(&layer, progress)));
            return Err(e);
        }
        let commit = BlockCommit {
            truncate: None,
            blocks: progress.done.iter().map(|(i, change)| (*i, change.clone())).collect(),
            min_size: layer.size,
            mtime: layer.mtime,
            release: progress.release.clone(),
            confirms_create,
        };
        let committed = self.commit(ino, commit);
        file.after_commit(|st| match &committed {
            Ok(attr) => {
                st.flushing = None;
                st.committed_size = attr.size;
                if st.changes == changes && st.dirty().is_empty() {
                    st.mtime = None;
                    st.size = attr.size;
                } else {
                    st.size = st.size.max(attr.size);
                }
            }
            Err(_) => st.flushing = Some(Arc::new(left_over(&layer, progress))),
        });
        committed.map(|_| ())
    }

    /// How buffered block `index` will be stored, with `committed_size` what the file's
    /// committed blocks hold.
    fn storable(&self, committed_size: u64, index: u64, patch: &Patch, over_committed: bool) -> Storable {
        // What the block can hold committed: no more than the file's committed size reaches
        // into it. A patch over all of that (a file's last block rewritten) is the whole block.
        let committed = committed_size.saturating_sub(index * self.block_size).min(self.block_size);
        if over_committed && !patch.covers(committed) {
            Storable::Patch
        } else {
            Storable::Whole { small: patch.end() <= self.inline_threshold }
        }
    }

    /// Uploads the patches of blocks `indices` of `layer` as slices, packed into chunks of up
    /// to a block each (a flush of 16 small writes is one upload), a few packs at a time so
    /// that packing takes the memory of a few blocks.
    fn upload_slices(&self, ino: Ino, layer: &FlushLayer, indices: &[u64], progress: &mut Progress) {
        let mut indices = indices.iter().copied().peekable();
        let at_once = self.config.max_uploads.max(1);
        loop {
            let packs: Vec<Pack> =
                std::iter::from_fn(|| self.next_pack(layer, &mut indices)).take(at_once).collect();
            if packs.is_empty() {
                return;
            }
            let uploads: Vec<_> = packs.iter().map(|pack| self.chunks.store(pack.data.clone())).collect();
            let uploaded = self.block_on(futures::future::join_all(uploads));
            for (pack, uploaded) in packs.into_iter().zip(uploaded) {
                match uploaded {
                    Ok((hash, sent)) => {
                        if sent {
                            self.metrics().sliced(pack.data.len() as u64);
                        }
                        progress.release.push(hash);
                        let chunk_len = pack.data.len() as u32;
                        for Packed { index, offset, extents } in pack.blocks {
                            let slice = Slice { hash, chunk_len, chunk_offset: offset, extents, level: 0 };
                            progress.done.insert(index, BlockChange::Overlay(slice));
                        }
                    }
                    Err(e) => {
                        warn!(ino, "uploading slices failed (kept buffered): {e}");
                        progress.failed(e);
                    }
                }
            }
        }
    }

    /// The next patches of `indices` packed into one chunk of up to a block (or one patch, if
    /// it is larger).
    fn next_pack(
        &self,
        layer: &FlushLayer,
        indices: &mut std::iter::Peekable<impl Iterator<Item = u64>>,
    ) -> Option<Pack> {
        let (mut blocks, mut data) = (Vec::new(), Vec::new());
        while let Some(&index) = indices.peek() {
            let Some(Pending::Patch { patch, .. }) = layer.blocks.get(&index) else {
                unreachable!("block {index} is a patch")
            };
            if !blocks.is_empty() && (data.len() + patch.bytes()) as u64 > self.block_size {
                break;
            }
            indices.next();
            let offset = data.len() as u32;
            let extents = patch.extents().map(|(at, bytes)| (at as u32, bytes.len() as u32)).collect();
            for (_, bytes) in patch.extents() {
                data.extend_from_slice(bytes);
            }
            blocks.push(Packed { index, offset, extents });
        }
        (!blocks.is_empty()).then(|| Pack { blocks, data: Bytes::from(data) })
    }

    /// Block `index`'s `patch` laid over its committed content, if the result is small enough
    /// to stay inline and the committed block is inline too (or absent).
    fn small_merged(&self, ino: Ino, index: u64, patch: &Patch) -> FsResult<Option<Vec<u8>>> {
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
    pub(super) fn store_block(&self, data: Vec<u8>) -> FsResult<BlockRef> {
        if data.len() as u64 <= self.inline_threshold {
            return Ok(BlockRef::Inline(data));
        }
        let len = data.len() as u32;
        let hash = self.block_on(self.chunks.put(Bytes::from(data)))?;
        Ok(BlockRef::Chunk { hash, len })
    }

    /// Commits a change to a file's block map, releasing the chunk protections it was made
    /// with. A chunk the metadata no longer finds protected (this client's session lapsed) is
    /// protected again if its object is still stored.
    pub(super) fn commit(&self, ino: Ino, mut commit: BlockCommit) -> FsResult<Attr> {
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

    pub(super) fn truncate(&self, ino: Ino, size: u64) -> FsResult<Attr> {
        if size > MAX_FILE_SIZE {
            return Err(FsError::new(errno::EFBIG, "truncate past the largest file size"));
        }
        let file = self.open_file(ino);
        // A flush of the file waits until the truncate is committed, and the other way round.
        let _turn = file.as_ref().map(|f| f.flush.lock().unwrap());
        let changes = match &file {
            Some(file) => {
                self.flush_held(file, Settles::Nothing)?;
                Some(file.state.lock().unwrap().changes)
            }
            None => None,
        };
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
            // A truncate is a setattr: it confirms a pending create in the metadata.
            confirms_create: false,
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
        let Some(file) = &file else {
            return self.commit(ino, commit);
        };
        let committed = self.commit(ino, commit);
        file.after_commit(|st| {
            if let Ok(attr) = &committed {
                st.committed_size = attr.size;
                // Writes that came in meanwhile (through another handle) keep what they wrote.
                st.size = if Some(st.changes) == changes {
                    attr.size
                } else {
                    attr.size.max(st.dirty_end(self.block_size))
                };
            }
        });
        committed
    }
}

/// The length of the sealed block `index` of `layer`.
fn sealed_len(layer: &FlushLayer, index: u64) -> u32 {
    match layer.blocks.get(&index) {
        Some(Pending::Sealed(data)) => data.len() as u32,
        _ => unreachable!("an upload of the layer is of a sealed block"),
    }
}

/// `layer` as a failed attempt leaves it: what was stored is kept as stored, the rest as it was.
fn left_over(layer: &FlushLayer, progress: Progress) -> FlushLayer {
    let blocks = layer
        .blocks
        .iter()
        .map(|(index, pending)| {
            let now = match progress.done.get(index) {
                Some(BlockChange::Whole(base)) => Pending::Stored(base.clone()),
                Some(BlockChange::Overlay(slice)) => Pending::Sliced(slice.clone()),
                None => pending.clone(),
            };
            (*index, now)
        })
        .collect();
    layer.rebuilt(blocks, progress.release)
}
