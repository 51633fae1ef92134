//! The read path: what each block of a range is made of (this client's unflushed bytes over
//! the committed block's base and slices), fetched verified and concurrently, and readahead.

use std::collections::HashMap;
use std::ops::Range;

use bytes::Bytes;

use elasticfs_metadata::throughput::IoKind;
use elasticfs_metadata::{Block, BlockRef, Ino};
use futures::future::try_join_all;
use tracing::{instrument, warn};

use super::FileSystem;
use crate::block_cache::Part;
use crate::error::{FsError, FsResult};
use crate::metrics::Op;
use crate::open_file::{Dirty, FileState, OpenFile, Pending};
use crate::read_data::ReadData;
use crate::segments::SEGMENT_LEN;
use crate::slices::{Layout, Source};

/// The bytes around a read that fetching it read too (see [`FileSystem::read_with_window`]).
#[derive(Debug)]
pub struct Window {
    /// Where in the file they start.
    pub offset: u64,
    pub data: ReadData,
}

impl FileSystem {
    #[instrument(level = "debug", skip(self))]
    pub fn read(&self, fh: u64, offset: u64, len: u32) -> FsResult<ReadData> {
        Ok(self.read_at(fh, offset, len, false)?.0)
    }

    /// Like [`FileSystem::read`]; and when the handle reads at random and asks for less than a
    /// segment, also the whole [`SEGMENT_LEN`]-aligned window around the bytes asked for (up to
    /// the end of the file), which fetching and verifying them read anyway. A frontend may hand
    /// the window to the kernel's page cache, so that its neighbours need no request of their
    /// own. Only the bytes asked for are metered.
    #[instrument(level = "debug", skip(self))]
    pub fn read_with_window(&self, fh: u64, offset: u64, len: u32) -> FsResult<(ReadData, Option<Window>)> {
        self.read_at(fh, offset, len, true)
    }

    fn read_at(&self, fh: u64, offset: u64, len: u32, widen: bool) -> FsResult<(ReadData, Option<Window>)> {
        self.run(Op::Read, || {
            let handle = self.handle(fh)?;
            let file = &handle.file;
            let asked_end = offset.saturating_add(len as u64);
            let random = handle.readahead.lock().unwrap().is_random();
            // The readahead state says how the handle read so far: a random reader's next read
            // is most likely random too. (A wrong guess costs one wider read, or one narrower.)
            let window = (widen && random && (len as u64) < SEGMENT_LEN)
                .then(|| offset / SEGMENT_LEN * SEGMENT_LEN..asked_end.div_ceil(SEGMENT_LEN) * SEGMENT_LEN);
            let read_range = window.clone().unwrap_or(offset..asked_end);
            let found = self.layouts(file, read_range.start, (read_range.end - read_range.start) as u32)?;
            // Where the bytes asked for end: at the end of the file, if it comes first.
            let end = found.as_ref().map_or(offset, |(end, _)| asked_end.min(*end));
            // Metered as the bytes it returns (before fetching them): what lies past the end is
            // not data read, nor is the rest of a window.
            self.throttle.charge(IoKind::Read, end.saturating_sub(offset));
            let Some((window_end, layouts)) = found.filter(|_| end > offset) else {
                return Ok((ReadData::default(), None));
            };
            let bs = self.block_size;
            let (prefetch, random) = {
                let mut readahead = handle.readahead.lock().unwrap();
                let prefetch = readahead.on_read(offset, end - offset, bs, self.config.max_readahead_blocks);
                (prefetch, readahead.is_random())
            };
            // With the handle's readahead state let go: prefetching reads the block map.
            if let Some((first, count)) = prefetch {
                self.prefetch(file.ino, first, count);
            }
            let pieces = layouts.into_iter().flat_map(|(block_start, layout)| {
                layout.into_pieces().into_iter().map(move |p| (block_start, p))
            });
            let pieces = self.block_on(try_join_all(pieces.map(|(block_start, piece)| {
                let chunks = self.chunks.clone();
                async move {
                    let data = match piece.source {
                        Source::Zeros => None,
                        Source::Bytes(data) => Some(data),
                        // A random read fetches only the segments it touches; a sequential one
                        // the whole chunk, which readahead is fetching anyway.
                        Source::Chunk { hash, chunk_len, offset } if random => {
                            Some(chunks.get_range(hash, chunk_len, offset..offset + piece.len).await?)
                        }
                        Source::Chunk { hash, offset, .. } => {
                            let data = chunks.get(hash).await?;
                            Some(data.slice(clip_range(&data, &(offset..offset + piece.len))))
                        }
                    };
                    Ok::<_, FsError>((block_start + piece.at, piece.len, data))
                }
            })))?;
            let mut read = ReadData::default();
            for (_, len, data) in pieces {
                match data {
                    Some(data) => read.push(data),
                    None => read.push_zeros(len as usize),
                }
            }
            let Some(window) = window else {
                self.metrics().read(read.len() as u64);
                return Ok((read, None));
            };
            let asked = read.slice((offset - window.start) as usize..(end - window.start) as usize);
            self.metrics().read(asked.len() as u64);
            debug_assert_eq!(read.len() as u64, window_end - window.start);
            Ok((asked, Some(Window { offset: window.start, data: read })))
        })
    }

    /// What each block of `len` bytes at `offset` is made of (this client's unflushed bytes
    /// over a flush's layer over the committed block), with where the range ends; `None` past
    /// the end of the file. The committed blocks are fetched without the file's lock; a commit
    /// of the file by this client ending in the meantime (see [`FileState::commits`]) sends the
    /// read round again. Unflushed bytes are copied for just the part of the block read.
    fn layouts(&self, file: &OpenFile, offset: u64, len: u32) -> FsResult<Option<(u64, Vec<BlockLayout>)>> {
        let bs = self.block_size;
        loop {
            let st = file.state.lock().unwrap();
            let commits = st.commits;
            let end = st.size.min(offset.saturating_add(len as u64));
            if offset >= end {
                return Ok(None);
            }
            let (first, last) = (offset / bs, (end - 1) / bs);
            let fetch = (first..=last).any(|index| lies_over_committed(&st, index));
            drop(st);
            let mut committed: HashMap<u64, Block> = HashMap::new();
            if fetch {
                committed.extend(self.meta.blocks(file.ino, first, last - first + 1)?);
                if self.config.compact_found {
                    // Any client that finds slices piled up folds them (another may have laid them).
                    self.compactor.consider(file.ino, committed.iter().map(|(i, b)| (*i, b)));
                }
            }
            let st = file.state.lock().unwrap();
            if st.commits != commits
                || (!fetch && (first..=last).any(|index| lies_over_committed(&st, index)))
            {
                continue;
            }
            // Within the range fetched for, however far a write has taken the file since.
            let end = end.min(st.size);
            if offset >= end {
                return Ok(None);
            }
            let layouts = (first..=(end - 1) / bs)
                .map(|index| {
                    let block_start = index * bs;
                    let within =
                        offset.max(block_start) - block_start..end.min(block_start + bs) - block_start;
                    (block_start, layout_of(&st, index, within, committed.remove(&index)))
                })
                .collect();
            return Ok(Some((end, layouts)));
        }
    }

    /// Starts fetching committed blocks into the cache, without waiting for them.
    fn prefetch(&self, ino: Ino, first: u64, count: u64) {
        let blocks = match self.meta.blocks(ino, first, count) {
            Ok(blocks) => blocks,
            Err(e) => return warn!(ino, "readahead skipped: {e}"),
        };
        for (_, block) in blocks {
            for &hash in block.chunks() {
                if self.chunks.cache().get(&(hash, Part::Whole)).is_none() {
                    let chunks = self.chunks.clone();
                    self.runtime.spawn(async move {
                        let _ = chunks.get(hash).await;
                    });
                }
            }
        }
    }
}

/// The part of `range` (offsets within a block) that `data`, the block's stored bytes, covers.
fn clip_range(data: &[u8], range: &std::ops::Range<u64>) -> std::ops::Range<usize> {
    let end = (range.end as usize).min(data.len());
    (range.start as usize).min(end)..end
}

/// Where a block starts in the file, and what the part of it read is made of.
type BlockLayout = (u64, Layout);

/// Whether block `index` as this client reads it lies (in part) over its committed content.
fn lies_over_committed(st: &FileState, index: u64) -> bool {
    let over_layer = match st.flushing.as_ref().and_then(|layer| layer.blocks.get(&index)) {
        None | Some(Pending::Sliced(_)) => true,
        Some(Pending::Patch { over_committed, .. }) => *over_committed,
        Some(Pending::Sealed(_) | Pending::Stored(_)) => false,
    };
    match st.dirty().get(&index) {
        None => over_layer,
        Some(Dirty::Buffer { over_committed, .. }) => *over_committed && over_layer,
        Some(Dirty::Uploading { .. } | Dirty::Stored(_)) => false,
    }
}

/// The part `within` of block `index`: `committed` (the block as the store has it), then a
/// flush's layer, then the buffer, each laid over what is below or in place of it.
fn layout_of(st: &FileState, index: u64, within: Range<u64>, committed: Option<Block>) -> Layout {
    let below = || match &committed {
        Some(block) => Layout::of(block, within.clone()),
        None => Layout::zeros(within.clone()),
    };
    let whole = |base: &BlockRef| Layout::of(&Block::whole(base.clone()), within.clone());
    let with_bytes = |data: &Bytes| {
        let mut layout = Layout::zeros(within.clone());
        layout.paint_bytes(data.clone());
        layout
    };
    let layer = match st.flushing.as_ref().and_then(|layer| layer.blocks.get(&index)) {
        None => below(),
        Some(Pending::Patch { patch, over_committed }) => {
            let mut layout = if *over_committed { below() } else { Layout::zeros(within.clone()) };
            layout.paint_patch(patch);
            layout
        }
        Some(Pending::Sealed(data)) => with_bytes(data),
        Some(Pending::Stored(base)) => whole(base),
        Some(Pending::Sliced(slice)) => {
            let mut layout = below();
            layout.paint_slice(slice);
            layout
        }
    };
    match st.dirty().get(&index) {
        None => layer,
        Some(Dirty::Buffer { patch, over_committed }) => {
            let mut layout = if *over_committed { layer } else { Layout::zeros(within.clone()) };
            layout.paint_patch(patch);
            layout
        }
        Some(Dirty::Uploading { data, .. }) => with_bytes(data),
        Some(Dirty::Stored(base)) => whole(base),
    }
}
