//! A block's bytes from its layers: which piece of which chunk (or of the metadata, or of
//! this client's unflushed writes) each byte of a range comes from, newest layer winning.
//! Pure bookkeeping, no I/O: the read path, the flush and compaction fetch what it names.

use std::collections::BTreeMap;
use std::ops::Range;

use bytes::Bytes;
use elasticfs_metadata::{Block, BlockRef, ChunkHash, Slice};

/// Where the bytes of one [`Piece`] come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Source {
    Zeros,
    /// These bytes, as they are.
    Bytes(Bytes),
    /// Bytes of chunk `hash` (`chunk_len` long) from `offset` on.
    Chunk {
        hash: ChunkHash,
        chunk_len: u64,
        offset: u64,
    },
}

/// `len` bytes of a block from offset `at`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Piece {
    pub(crate) at: u64,
    pub(crate) len: u64,
    pub(crate) source: Source,
}

impl Piece {
    fn end(&self) -> u64 {
        self.at + self.len
    }

    /// The part of this piece within `range`, if any.
    fn clipped(&self, range: &Range<u64>) -> Option<Piece> {
        let (start, end) = (self.at.max(range.start), self.end().min(range.end));
        (start < end).then(|| self.sub(start, end))
    }

    /// Bytes `start..end` of the block, which this piece covers.
    fn sub(&self, start: u64, end: u64) -> Piece {
        let skip = start - self.at;
        let source = match &self.source {
            Source::Zeros => Source::Zeros,
            Source::Bytes(b) => Source::Bytes(b.slice(skip as usize..(skip + end - start) as usize)),
            Source::Chunk { hash, chunk_len, offset } => {
                Source::Chunk { hash: *hash, chunk_len: *chunk_len, offset: offset + skip }
            }
        };
        Piece { at: start, len: end - start, source }
    }
}

/// A range of a block, as the pieces that make it up, in order and without gaps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Layout {
    range: Range<u64>,
    pieces: Vec<Piece>,
}

impl Layout {
    /// `range` of a block, all zeros so far.
    pub(crate) fn zeros(range: Range<u64>) -> Self {
        let pieces = if range.is_empty() {
            Vec::new()
        } else {
            vec![Piece { at: range.start, len: range.end - range.start, source: Source::Zeros }]
        };
        Layout { range, pieces }
    }

    /// `range` of `block`: its base, then its slices in order.
    pub(crate) fn of(block: &Block, range: Range<u64>) -> Self {
        let mut layout = Layout::zeros(range);
        match &block.base {
            Some(BlockRef::Inline(data)) => layout.paint_copy(0, data),
            Some(BlockRef::Chunk { hash, len }) => layout.paint(Piece {
                at: 0,
                len: *len as u64,
                source: Source::Chunk { hash: *hash, chunk_len: *len as u64, offset: 0 },
            }),
            None => {}
        }
        for slice in &block.slices {
            layout.paint_slice(slice);
        }
        layout
    }

    /// Lays a slice's extents over what is there.
    pub(crate) fn paint_slice(&mut self, slice: &Slice) {
        let mut offset = slice.chunk_offset as u64;
        for &(at, len) in &slice.extents {
            let source = Source::Chunk { hash: slice.hash, chunk_len: slice.chunk_len as u64, offset };
            self.paint(Piece { at: at as u64, len: len as u64, source });
            offset += len as u64;
        }
    }

    /// Lays `piece` over what is there (only its part within the range counts).
    pub(crate) fn paint(&mut self, piece: Piece) {
        let Some(piece) = piece.clipped(&self.range) else { return };
        let mut pieces = Vec::with_capacity(self.pieces.len() + 2);
        let mut placed = false;
        for old in self.pieces.drain(..) {
            if old.end() <= piece.at {
                pieces.push(old);
                continue;
            }
            if old.at >= piece.end() {
                if !placed {
                    pieces.push(piece.clone());
                    placed = true;
                }
                pieces.push(old);
                continue;
            }
            if old.at < piece.at {
                pieces.push(old.sub(old.at, piece.at));
            }
            if !placed {
                pieces.push(piece.clone());
                placed = true;
            }
            if old.end() > piece.end() {
                pieces.push(old.sub(piece.end(), old.end()));
            }
        }
        if !placed {
            pieces.push(piece);
        }
        self.pieces = pieces;
    }

    /// Lays a client's unflushed writes over what is there.
    pub(crate) fn paint_patch(&mut self, patch: &Patch) {
        for (at, data) in patch.extents() {
            self.paint_copy(at, data);
        }
    }

    /// Lays `data`, which starts at `at` in the block, over what is there, copying only what
    /// is in range (a 4 KiB read of an inline block or of a large patch copies 4 KiB).
    fn paint_copy(&mut self, at: u64, data: &[u8]) {
        let (start, end) = (at.max(self.range.start), (at + data.len() as u64).min(self.range.end));
        if start < end {
            let bytes = Bytes::copy_from_slice(&data[(start - at) as usize..(end - at) as usize]);
            self.paint(Piece { at: start, len: end - start, source: Source::Bytes(bytes) });
        }
    }

    /// Lays `data` over the block from its start.
    pub(crate) fn paint_bytes(&mut self, data: Bytes) {
        self.paint(Piece { at: 0, len: data.len() as u64, source: Source::Bytes(data) });
    }

    /// Bytes of the range that come from chunks.
    pub(crate) fn chunk_bytes(&self) -> u64 {
        self.pieces.iter().filter(|p| matches!(p.source, Source::Chunk { .. })).map(|p| p.len).sum()
    }

    pub(crate) fn into_pieces(self) -> Vec<Piece> {
        self.pieces
    }
}

/// Writes to one block that are not flushed yet: extents of bytes, apart from each other.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Patch {
    extents: BTreeMap<u64, Vec<u8>>,
}

impl Patch {
    /// A patch of a whole block's bytes.
    pub(crate) fn whole(data: Vec<u8>) -> Self {
        let mut extents = BTreeMap::new();
        if !data.is_empty() {
            extents.insert(0, data);
        }
        Patch { extents }
    }

    /// Writes `data` at `at`, over whatever the patch held there. `reserve_to`: where an
    /// extent from the block's start will most likely end (a block being filled), to allocate
    /// it once; other extents grow as they need.
    pub(crate) fn write(&mut self, at: u64, data: &[u8], reserve_to: Option<u64>) {
        let end = at + data.len() as u64;
        // The extents the write overlaps or adjoins, last first: it joins them into one.
        let touched: Vec<u64> = self
            .extents
            .range(..=end)
            .rev()
            .take_while(|(start, bytes)| *start + bytes.len() as u64 >= at)
            .map(|(start, _)| *start)
            .collect();
        let start = touched.last().map_or(at, |first| at.min(*first));
        let new_end = touched.iter().map(|s| s + self.extents[s].len() as u64).fold(end, u64::max);
        // An extent that starts where the joined one does is grown in place (appends).
        let mut joined = self.extents.remove(&start).unwrap_or_default();
        let len = (new_end - start) as usize;
        if joined.capacity() < len {
            match reserve_to.filter(|_| start == 0) {
                Some(r) => joined.reserve_exact(len.max(r as usize) - joined.len()),
                // Amortised: a run of small appends copies the extent a logarithmic number of times.
                None => joined.reserve(len - joined.len()),
            }
        }
        joined.resize(len, 0);
        for s in touched {
            if let Some(bytes) = self.extents.remove(&s) {
                let from = (s - start) as usize;
                joined[from..from + bytes.len()].copy_from_slice(&bytes);
            }
        }
        let from = (at - start) as usize;
        joined[from..from + data.len()].copy_from_slice(data);
        self.extents.insert(start, joined);
    }

    /// `(offset, bytes)` of each extent, in order.
    pub(crate) fn extents(&self) -> impl Iterator<Item = (u64, &[u8])> {
        self.extents.iter().map(|(at, bytes)| (*at, bytes.as_slice()))
    }

    /// Where the last extent ends.
    pub(crate) fn end(&self) -> u64 {
        self.extents.iter().next_back().map_or(0, |(at, bytes)| at + bytes.len() as u64)
    }

    /// Bytes held.
    pub(crate) fn bytes(&self) -> usize {
        self.extents.values().map(Vec::len).sum()
    }

    /// Memory held (what the write budget counts).
    pub(crate) fn capacity(&self) -> usize {
        self.extents.values().map(Vec::capacity).sum()
    }

    /// Whether the patch holds every byte of `0..len`.
    pub(crate) fn covers(&self, len: u64) -> bool {
        match self.extents.iter().next() {
            Some((0, bytes)) => bytes.len() as u64 >= len,
            _ => len == 0,
        }
    }

    /// The block as the patch alone makes it (zeros in its gaps), up to its end.
    pub(crate) fn materialize(&self) -> Vec<u8> {
        if self.extents.len() == 1 && self.extents.contains_key(&0) {
            return self.extents[&0].clone();
        }
        let mut out = vec![0; self.end() as usize];
        for (at, bytes) in self.extents() {
            out[at as usize..at as usize + bytes.len()].copy_from_slice(bytes);
        }
        out
    }

    /// Takes the whole block out of a patch that [`Self::covers`] it, without a copy.
    pub(crate) fn into_whole(mut self) -> Vec<u8> {
        match self.extents.remove(&0) {
            Some(bytes) if self.extents.is_empty() => bytes,
            Some(bytes) => {
                self.extents.insert(0, bytes);
                self.materialize()
            }
            None => self.materialize(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The bytes a layout names, with chunks given by `chunk`.
    fn bytes_of(layout: Layout, chunk: impl Fn(&ChunkHash) -> Vec<u8>) -> Vec<u8> {
        let mut out = Vec::new();
        for piece in layout.into_pieces() {
            match piece.source {
                Source::Zeros => out.extend(std::iter::repeat_n(0, piece.len as usize)),
                Source::Bytes(b) => out.extend_from_slice(&b),
                Source::Chunk { hash, offset, .. } => {
                    out.extend_from_slice(&chunk(&hash)[offset as usize..(offset + piece.len) as usize])
                }
            }
        }
        out
    }

    proptest! {
        /// A patch, however written, holds what a plain buffer written the same way holds.
        #[test]
        fn a_patch_reads_as_a_buffer(writes in prop::collection::vec((0u64..300, 1usize..80, any::<u8>()), 1..30)) {
            let mut patch = Patch::default();
            let mut model = vec![None::<u8>; 400];
            for (at, len, byte) in writes {
                patch.write(at, &vec![byte; len], (byte % 2 == 0).then_some(350));
                model[at as usize..at as usize + len].iter_mut().for_each(|b| *b = Some(byte));
            }
            let end = model.iter().rposition(Option::is_some).map_or(0, |p| p + 1);
            prop_assert_eq!(patch.end(), end as u64);
            let expected: Vec<u8> = model[..end].iter().map(|b| b.unwrap_or(0)).collect();
            prop_assert_eq!(patch.materialize(), expected);
            let extents: Vec<(u64, usize)> = patch.extents().map(|(at, b)| (at, b.len())).collect();
            for pair in extents.windows(2) {
                prop_assert!(pair[0].0 + (pair[0].1 as u64) < pair[1].0, "extents stay apart: {:?}", extents);
            }
            prop_assert_eq!(patch.bytes(), model.iter().filter(|b| b.is_some()).count());
        }

        /// A block's layout over any range names the bytes that applying its base and then its
        /// slices in order gives.
        #[test]
        fn a_layout_is_the_layers_applied_in_order(
            base_len in 0u64..200,
            slices in prop::collection::vec(prop::collection::vec((0u32..250, 1u32..40), 1..4), 0..6),
            range in (0u64..260, 0u64..260),
        ) {
            let chunk_of = |seed: u8, len: usize| (0..len).map(|i| seed.wrapping_mul(31).wrapping_add(i as u8)).collect::<Vec<u8>>();
            let mut block = Block { base: Some(BlockRef::Chunk { hash: [200; 32], len: base_len as u32 }), slices: Vec::new() };
            let mut model = vec![0u8; 300];
            model[..base_len as usize].copy_from_slice(&chunk_of(200, base_len as usize));
            for (n, extents) in slices.into_iter().enumerate() {
                // Apart and in order, as a slice's extents are.
                let mut at = 0u32;
                let extents: Vec<(u32, u32)> = extents.into_iter().map(|(gap, len)| { let e = (at + gap % 20, len); at = e.0 + len; e }).collect();
                let bytes: u32 = extents.iter().map(|e| e.1).sum();
                let data = chunk_of(n as u8, 5 + bytes as usize);
                let mut offset = 5usize;
                for &(at, len) in &extents {
                    model[at as usize..(at + len) as usize].copy_from_slice(&data[offset..offset + len as usize]);
                    offset += len as usize;
                }
                block.slices.push(Slice { hash: [n as u8; 32], chunk_len: 5 + bytes, chunk_offset: 5, extents, level: 0 });
            }
            let range = range.0.min(range.1)..range.0.max(range.1);
            let layout = Layout::of(&block, range.clone());
            let got = bytes_of(layout, |h| if h[0] == 200 { chunk_of(200, base_len as usize) } else {
                let s = &block.slices[h[0] as usize];
                chunk_of(h[0], s.chunk_len as usize)
            });
            prop_assert_eq!(got, model[range.start as usize..range.end as usize].to_vec());
        }
    }
}
