//! What one block of a file is made of: a base (the block's bytes as one piece) and slices
//! laid over it, newest last. A block written whole (a sequential stream, a compaction that
//! merged everything) is a base alone; a block changed in place gets a slice per flush, which
//! carries about what was written rather than the whole block.
//!
//! Reading a block: zeros up to [`Block::len`], then the base's bytes, then each slice's
//! extents in order, a later one winning where they overlap.

use serde::{Deserialize, Serialize};

use crate::codec::{Reader, Writer};
use crate::error::{MetaError, MetaResult};
use crate::types::ChunkHash;

/// A block's bytes as one piece.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum BlockRef {
    /// Small files and tails live in the metadata itself: no object at all.
    Inline(Vec<u8>),
    /// A chunk object named by the blake3 hash of its `len` bytes.
    Chunk { hash: ChunkHash, len: u32 },
}

impl BlockRef {
    pub fn len(&self) -> u64 {
        match self {
            BlockRef::Inline(data) => data.len() as u64,
            BlockRef::Chunk { len, .. } => *len as u64,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn chunk(&self) -> Option<&ChunkHash> {
        match self {
            BlockRef::Inline(_) => None,
            BlockRef::Chunk { hash, .. } => Some(hash),
        }
    }

    fn write(&self, w: &mut Writer) {
        match self {
            BlockRef::Inline(data) => {
                w.u8(1).u32(data.len() as u32).bytes(data);
            }
            BlockRef::Chunk { hash, len } => {
                w.u8(2).bytes(hash).u32(*len);
            }
        }
    }

    fn read(r: &mut Reader) -> MetaResult<Option<Self>> {
        match r.u8()? {
            0 => Ok(None),
            1 => {
                let len = r.u32()? as usize;
                Ok(Some(BlockRef::Inline(r.take(len)?.to_vec())))
            }
            2 => Ok(Some(BlockRef::Chunk { hash: r.array()?, len: r.u32()? })),
            t => Err(MetaError::Store(format!("unknown block base type {t}"))),
        }
    }
}

/// Bytes of a chunk laid over ranges of a block: the extents' bytes follow each other in the
/// chunk from `chunk_offset` on (one chunk may hold the slices of several blocks).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Slice {
    pub hash: ChunkHash,
    /// The whole chunk's length (what a ranged, verified read of it needs to know).
    pub chunk_len: u32,
    pub chunk_offset: u32,
    /// `(offset in the block, length)`, in ascending order, neither overlapping nor empty.
    pub extents: Vec<(u32, u32)>,
    /// How many compactions made it: 0 for a slice a flush wrote (see fs-core's compaction).
    pub level: u8,
}

impl Slice {
    /// Where the slice ends in the block.
    pub fn end(&self) -> u64 {
        self.extents.last().map_or(0, |&(at, len)| at as u64 + len as u64)
    }

    /// The bytes the slice carries.
    pub fn bytes(&self) -> u64 {
        self.extents.iter().map(|&(_, len)| len as u64).sum()
    }

    /// Whether the extents are in order, non-empty, apart, and inside the chunk.
    pub fn is_well_formed(&self) -> bool {
        let ordered = self.extents.windows(2).all(|w| w[0].0 as u64 + w[0].1 as u64 <= w[1].0 as u64);
        let nonempty = !self.extents.is_empty() && self.extents.iter().all(|&(_, len)| len > 0);
        ordered && nonempty && self.chunk_offset as u64 + self.bytes() <= self.chunk_len as u64
    }
}

/// One block of a file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Block {
    /// `None`: the block starts as zeros (a hole under its slices).
    pub base: Option<BlockRef>,
    /// Oldest first.
    pub slices: Vec<Slice>,
}

/// Record type of a block that is a base alone (as every block was before slices) ...
const BASE_INLINE: u8 = 1;
const BASE_CHUNK: u8 = 2;
/// ... and of one with slices.
const LAYERED: u8 = 3;

impl Block {
    pub fn whole(base: BlockRef) -> Self {
        Block { base: Some(base), slices: Vec::new() }
    }

    /// The block's length: its content ends where its base or its last-ending slice does.
    pub fn len(&self) -> u64 {
        let base = self.base.as_ref().map_or(0, BlockRef::len);
        self.slices.iter().map(Slice::end).fold(base, u64::max)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes the slices carry (what a compaction into one base would take off the store).
    pub fn slice_bytes(&self) -> u64 {
        self.slices.iter().map(Slice::bytes).sum()
    }

    /// Every chunk the block references, once per reference (base first).
    pub fn chunks(&self) -> impl Iterator<Item = &ChunkHash> {
        self.base.iter().filter_map(BlockRef::chunk).chain(self.slices.iter().map(|s| &s.hash))
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        match (&self.base, self.slices.is_empty()) {
            (Some(BlockRef::Inline(data)), true) => {
                let mut w = Writer::with_capacity(1 + data.len());
                w.u8(BASE_INLINE).bytes(data);
                w.0
            }
            (Some(BlockRef::Chunk { hash, len }), true) => {
                let mut w = Writer::with_capacity(37);
                w.u8(BASE_CHUNK).bytes(hash).u32(*len);
                w.0
            }
            _ => {
                let mut w = Writer::with_capacity(64 + self.slices.len() * 64);
                w.u8(LAYERED);
                match &self.base {
                    Some(base) => base.write(&mut w),
                    None => {
                        w.u8(0);
                    }
                }
                w.u32(self.slices.len() as u32);
                for slice in &self.slices {
                    w.bytes(&slice.hash).u32(slice.chunk_len).u32(slice.chunk_offset).u8(slice.level);
                    w.u32(slice.extents.len() as u32);
                    for &(at, len) in &slice.extents {
                        w.u32(at).u32(len);
                    }
                }
                w.0
            }
        }
    }

    pub(crate) fn decode(buf: &[u8]) -> MetaResult<Self> {
        let mut r = Reader::new(buf);
        match r.u8()? {
            BASE_INLINE => Ok(Block::whole(BlockRef::Inline(r.rest().to_vec()))),
            BASE_CHUNK => Ok(Block::whole(BlockRef::Chunk { hash: r.array()?, len: r.u32()? })),
            LAYERED => {
                let base = BlockRef::read(&mut r)?;
                let count = r.u32()? as usize;
                let mut slices = Vec::with_capacity(count.min(1024));
                for _ in 0..count {
                    let (hash, chunk_len, chunk_offset, level) = (r.array()?, r.u32()?, r.u32()?, r.u8()?);
                    let n = r.u32()? as usize;
                    let mut extents = Vec::with_capacity(n.min(4096));
                    for _ in 0..n {
                        extents.push((r.u32()?, r.u32()?));
                    }
                    slices.push(Slice { hash, chunk_len, chunk_offset, extents, level });
                }
                Ok(Block { base, slices })
            }
            t => Err(MetaError::Store(format!("unknown block record type {t}"))),
        }
    }
}

/// A change to one block in a [`crate::BlockCommit`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum BlockChange {
    /// The block becomes this base alone (its slices go).
    Whole(BlockRef),
    /// This slice goes on top of the block.
    Overlay(Slice),
}

/// A compaction of one block: `was` is the block as the compaction read it, `now` what
/// replaces it. Slices added on top since then are kept on top of `now`; any other change
/// to the block since (a new base, a truncate) makes the compaction give up.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compaction {
    pub ino: crate::Ino,
    pub index: u64,
    pub was: Block,
    pub now: Block,
    /// Chunks this session protected for `now`: released whether or not it is applied.
    pub release: Vec<ChunkHash>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slice(level: u8, extents: Vec<(u32, u32)>) -> Slice {
        let bytes: u32 = extents.iter().map(|e| e.1).sum();
        Slice { hash: [level; 32], chunk_len: bytes + 7, chunk_offset: 7, extents, level }
    }

    #[test]
    fn records_round_trip_and_old_ones_still_read() {
        let blocks = [
            Block::whole(BlockRef::Inline(vec![1, 2, 3])),
            Block::whole(BlockRef::Chunk { hash: [9; 32], len: 4096 }),
            Block { base: None, slices: vec![slice(0, vec![(10, 5)])] },
            Block {
                base: Some(BlockRef::Inline(vec![4; 20])),
                slices: vec![slice(2, vec![(0, 1), (100, 50)]), slice(0, vec![(3, 4)])],
            },
            Block {
                base: Some(BlockRef::Chunk { hash: [1; 32], len: 100 }),
                slices: vec![slice(1, vec![(200, 300)])],
            },
        ];
        for block in blocks {
            assert_eq!(Block::decode(&block.encode()).unwrap(), block);
        }
        // The records every block had before slices: type, then the base.
        assert_eq!(Block::decode(&[1, 7, 8]).unwrap(), Block::whole(BlockRef::Inline(vec![7, 8])));
        assert!(Block::decode(&[3, 0, 1, 0, 0, 0]).is_err(), "a truncated record is refused");
    }

    #[test]
    fn a_block_ends_where_its_furthest_piece_does() {
        let block = Block {
            base: Some(BlockRef::Inline(vec![0; 100])),
            slices: vec![slice(0, vec![(10, 5), (150, 10)]), slice(0, vec![(0, 20)])],
        };
        assert_eq!(block.len(), 160);
        assert_eq!(block.slice_bytes(), 35);
        assert_eq!(block.chunks().count(), 2, "an inline base references no chunk");
        assert!(block.slices.iter().all(Slice::is_well_formed));
        assert!(!slice(0, vec![(10, 5), (12, 5)]).is_well_formed(), "overlapping extents");
    }
}
