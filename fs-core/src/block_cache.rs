//! In-memory cache of verified chunk contents, bounded in bytes (not entries: blocks range
//! from a few bytes to the block size). Whole chunks, single segments of a chunk (random
//! reads) and segment hash lists share one budget.

use std::sync::Mutex;

use bytes::Bytes;
use elasticfs_metadata::ChunkHash;
use lru::LruCache;

/// What part of a chunk an entry holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Part {
    Whole,
    /// One segment (see [`crate::segments`]), by index.
    Segment(u32),
    /// The chunk's verified segment hash list.
    SegmentHashes,
}

pub type CacheKey = (ChunkHash, Part);

pub struct BlockCache {
    inner: Mutex<Inner>,
    capacity_bytes: usize,
}

struct Inner {
    lru: LruCache<CacheKey, Bytes>,
    bytes: usize,
}

impl BlockCache {
    pub fn new(capacity_bytes: usize) -> Self {
        BlockCache { inner: Mutex::new(Inner { lru: LruCache::unbounded(), bytes: 0 }), capacity_bytes }
    }

    pub fn get(&self, key: &CacheKey) -> Option<Bytes> {
        self.inner.lock().unwrap().lru.get(key).cloned()
    }

    pub fn insert(&self, key: CacheKey, data: Bytes) {
        if data.len() > self.capacity_bytes {
            return;
        }
        let mut inner = self.inner.lock().unwrap();
        inner.bytes += data.len();
        if let Some(old) = inner.lru.put(key, data) {
            inner.bytes -= old.len();
        }
        while inner.bytes > self.capacity_bytes {
            match inner.lru.pop_lru() {
                Some((_, evicted)) => inner.bytes -= evicted.len(),
                None => break,
            }
        }
    }

    /// Bytes held now.
    pub fn size(&self) -> usize {
        self.inner.lock().unwrap().bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_least_recently_used_to_stay_within_budget() {
        let key = |n: u8| ([n; 32], Part::Whole);
        let cache = BlockCache::new(10);
        cache.insert(key(1), Bytes::from_static(b"aaaa"));
        cache.insert(key(2), Bytes::from_static(b"bbbb"));
        assert!(cache.get(&key(1)).is_some()); // 1 is now the most recent
        cache.insert(([3; 32], Part::Segment(0)), Bytes::from_static(b"cccc"));
        assert!(cache.get(&key(2)).is_none());
        assert!(cache.get(&key(1)).is_some());
        assert_eq!(cache.size(), 8);
        cache.insert(key(4), Bytes::from(vec![0; 11])); // larger than the whole budget
        assert!(cache.get(&key(4)).is_none());
    }
}
