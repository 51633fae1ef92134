//! The read path: what each block of a range is made of (this client's unflushed bytes over
//! the committed block's base and slices), fetched verified and concurrently, and readahead.

use std::collections::HashMap;

use elasticfs_metadata::throughput::IoKind;
use elasticfs_metadata::{Block, Ino};
use futures::future::try_join_all;
use tracing::{instrument, warn};

use super::FileSystem;
use crate::block_cache::Part;
use crate::error::{FsError, FsResult};
use crate::metrics::Op;
use crate::open_file::Dirty;
use crate::read_data::ReadData;
use crate::slices::{Layout, Source};

impl FileSystem {
    #[instrument(level = "debug", skip(self))]
    pub fn read(&self, fh: u64, offset: u64, len: u32) -> FsResult<ReadData> {
        self.run(Op::Read, || {
            let handle = self.handle(fh)?;
            let file = &handle.file;
            // Metered as the bytes it returns: what lies past the end is not data read.
            let size = file.state.lock().unwrap().size;
            self.throttle.charge(IoKind::Read, size.saturating_sub(offset).min(len as u64));
            let bs = self.block_size;
            // Under the file's lock: what each block of the range is made of. Uncommitted bytes
            // are copied for just the part of the block the read covers.
            let (end, layouts) = {
                let st = file.state.lock().unwrap();
                let end = st.size.min(offset.saturating_add(len as u64));
                if offset >= end {
                    return Ok(ReadData::default());
                }
                let (first, last) = (offset / bs, (end - 1) / bs);
                let needs_committed = |index: &u64| match st.dirty().get(index) {
                    None | Some(Dirty::Sliced(_)) => true,
                    Some(Dirty::Buffer { over_committed, .. }) => *over_committed,
                    Some(_) => false,
                };
                let mut committed: HashMap<u64, Block> = HashMap::new();
                if (first..=last).any(|i| needs_committed(&i)) {
                    committed.extend(self.meta.blocks(file.ino, first, last - first + 1)?);
                    if self.config.compact_found {
                        // Any client that finds slices piled up folds them (another may have laid them).
                        self.compactor.consider(file.ino, committed.iter().map(|(i, b)| (*i, b)));
                    }
                }
                let mut layouts = Vec::with_capacity((last - first + 1) as usize);
                for index in first..=last {
                    let block_start = index * bs;
                    let within =
                        offset.max(block_start) - block_start..end.min(block_start + bs) - block_start;
                    let under = |committed: &mut HashMap<u64, Block>| match committed.remove(&index) {
                        Some(block) => Layout::of(&block, within.clone()),
                        None => Layout::zeros(within.clone()),
                    };
                    let layout = match st.dirty().get(&index) {
                        Some(Dirty::Buffer { patch, over_committed }) => {
                            let mut layout = if *over_committed {
                                under(&mut committed)
                            } else {
                                Layout::zeros(within.clone())
                            };
                            layout.paint_patch(patch);
                            layout
                        }
                        Some(Dirty::Sliced(slice)) => {
                            let mut layout = under(&mut committed);
                            layout.paint_slice(slice);
                            layout
                        }
                        Some(Dirty::Uploading { data, .. }) => {
                            let mut layout = Layout::zeros(within.clone());
                            layout.paint_bytes(data.clone());
                            layout
                        }
                        Some(Dirty::Stored(base)) => Layout::of(&Block::whole(base.clone()), within.clone()),
                        None => under(&mut committed),
                    };
                    layouts.push((block_start, layout));
                }
                (end, layouts)
            };
            let random = {
                let mut readahead = handle.readahead.lock().unwrap();
                let prefetch = readahead.on_read(offset, end - offset, bs, self.config.max_readahead_blocks);
                if let Some((first, count)) = prefetch {
                    self.prefetch(file.ino, first, count);
                }
                readahead.is_random()
            };
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
            let mut out = ReadData::default();
            for (_, len, data) in pieces {
                match data {
                    Some(data) => out.push(data),
                    None => out.push_zeros(len as usize),
                }
            }
            self.metrics().read(out.len() as u64);
            Ok(out)
        })
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
