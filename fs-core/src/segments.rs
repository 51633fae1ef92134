//! Verifying part of a chunk without reading all of it.
//!
//! A chunk's name is its blake3 hash, and blake3 is a tree: the hash of a chunk is the root
//! of a binary tree over its 1 KiB pieces. Every aligned power-of-two span of the chunk has
//! its own "chaining value" in that tree. Keeping the chaining values of the chunk's 64 KiB
//! segments in a small side object (`<chunk>.segs`, 32 bytes per segment) lets a reader fetch
//! one segment with a ranged GET and check it against that list, while the list itself is
//! checked by merging it up to the root and comparing with the chunk's name. So a 4 KiB random
//! read costs a 64 KiB GET, not a whole block, and every byte returned is still verified.

use blake3::hazmat::{
    left_subtree_len, merge_subtrees_non_root, merge_subtrees_root, ChainingValue, HasherExt, Mode,
};

use elasticfs_metadata::ChunkHash;

/// Bytes per independently verifiable segment (a power of two, at least blake3's 1 KiB).
pub const SEGMENT_LEN: u64 = 64 << 10;
const CV_LEN: usize = 32;

/// The chaining values of a chunk's segments, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentHashes {
    chunk_len: u64,
    cvs: Vec<ChainingValue>,
}

impl SegmentHashes {
    /// Whether a chunk this long has segments at all: a chunk of one segment is read whole.
    pub fn applies_to(chunk_len: u64) -> bool {
        chunk_len > SEGMENT_LEN
    }

    /// Hashes `data` segment by segment. Returns the list and the chunk's name, which the
    /// segments determine (no second pass over the data).
    pub fn compute(data: &[u8]) -> (Self, ChunkHash) {
        debug_assert!(Self::applies_to(data.len() as u64));
        let cvs = data
            .chunks(SEGMENT_LEN as usize)
            .enumerate()
            .map(|(i, segment)| segment_cv(i as u64, segment))
            .collect();
        let hashes = SegmentHashes { chunk_len: data.len() as u64, cvs };
        let root = hashes.root();
        (hashes, root)
    }

    /// Parses a side object and accepts it only if it hashes up to `name`.
    pub fn decode(bytes: &[u8], chunk_len: u64, name: &ChunkHash) -> Option<Self> {
        Self::decode_verified(bytes, chunk_len).filter(|hashes| hashes.root() == *name)
    }

    /// Parses a list that [`SegmentHashes::decode`] or [`SegmentHashes::compute`] already
    /// checked against its chunk's name (a cached one): only its shape is checked again.
    pub fn decode_verified(bytes: &[u8], chunk_len: u64) -> Option<Self> {
        let count = chunk_len.div_ceil(SEGMENT_LEN) as usize;
        if !Self::applies_to(chunk_len) || bytes.len() != count * CV_LEN {
            return None;
        }
        let cvs = bytes.chunks(CV_LEN).map(|cv| cv.try_into().expect("exact chunks")).collect();
        Some(SegmentHashes { chunk_len, cvs })
    }

    pub fn encode(&self) -> Vec<u8> {
        self.cvs.concat()
    }

    pub fn count(&self) -> u64 {
        self.cvs.len() as u64
    }

    /// The byte range of segment `index` within the chunk.
    pub fn range(&self, index: u64) -> std::ops::Range<u64> {
        let start = index * SEGMENT_LEN;
        start..(start + SEGMENT_LEN).min(self.chunk_len)
    }

    /// Whether `data` is exactly segment `index` of the chunk.
    pub fn verify(&self, index: u64, data: &[u8]) -> bool {
        let range = self.range(index);
        data.len() as u64 == range.end - range.start
            && self.cvs.get(index as usize) == Some(&segment_cv(index, data))
    }

    fn root(&self) -> ChunkHash {
        let len = self.chunk_len;
        let split = left_subtree_len(len);
        let left = self.subtree(0, split);
        let right = self.subtree(split, len);
        *merge_subtrees_root(&left, &right, Mode::Hash).as_bytes()
    }

    /// The chaining value of bytes `start..end`: one segment, or the merge of the two subtrees
    /// blake3's tree shape puts under it (splits always fall on segment boundaries, because
    /// every left subtree longer than one segment is a power-of-two multiple of it).
    fn subtree(&self, start: u64, end: u64) -> ChainingValue {
        if end - start <= SEGMENT_LEN {
            return self.cvs[(start / SEGMENT_LEN) as usize];
        }
        let split = start + left_subtree_len(end - start);
        merge_subtrees_non_root(&self.subtree(start, split), &self.subtree(split, end), Mode::Hash)
    }
}

fn segment_cv(index: u64, segment: &[u8]) -> ChainingValue {
    blake3::Hasher::new().set_input_offset(index * SEGMENT_LEN).update(segment).finalize_non_root()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 4093) as u8).collect()
    }

    #[test]
    fn the_root_of_the_segments_is_the_blake3_hash() {
        let s = SEGMENT_LEN as usize;
        for len in [s + 1, 2 * s, 2 * s + 1, 3 * s - 1, 5 * s + 77, 64 * s, 64 * s - 1, 4 << 20] {
            let bytes = data(len);
            let (hashes, name) = SegmentHashes::compute(&bytes);
            assert_eq!(name, *blake3::hash(&bytes).as_bytes(), "length {len}");
            assert_eq!(SegmentHashes::decode(&hashes.encode(), len as u64, &name), Some(hashes.clone()));
            for i in 0..hashes.count() {
                let r = hashes.range(i);
                assert!(hashes.verify(i, &bytes[r.start as usize..r.end as usize]));
            }
        }
    }

    #[test]
    fn a_changed_segment_or_list_is_refused() {
        let mut bytes = data(3 * SEGMENT_LEN as usize + 10);
        let (hashes, name) = SegmentHashes::compute(&bytes);
        let mut list = hashes.encode();
        list[40] ^= 1;
        assert_eq!(SegmentHashes::decode(&list, bytes.len() as u64, &name), None);
        // A length with another number of segments does not fit the list. (The exact length
        // within the last segment is checked when that segment is read: its hash covers it.)
        assert_eq!(SegmentHashes::decode(&hashes.encode(), bytes.len() as u64 + SEGMENT_LEN, &name), None);
        bytes[SEGMENT_LEN as usize + 5] ^= 1;
        let r = hashes.range(1);
        assert!(!hashes.verify(1, &bytes[r.start as usize..r.end as usize]));
        // The right bytes offered as the wrong segment are refused too.
        let r0 = hashes.range(0);
        assert!(!hashes.verify(2, &bytes[r0.start as usize..r0.end as usize]));
    }
}
