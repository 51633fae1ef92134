//! In-memory cache of verified chunk contents, bounded in bytes (not entries: blocks range
//! from a few bytes to the block size).

use std::sync::Mutex;

use bytes::Bytes;
use elasticfs_metadata::ChunkHash;
use lru::LruCache;

pub struct BlockCache {
    inner: Mutex<Inner>,
    capacity_bytes: usize,
}

struct Inner {
    lru: LruCache<ChunkHash, Bytes>,
    bytes: usize,
}

impl BlockCache {
    pub fn new(capacity_bytes: usize) -> Self {
        BlockCache { inner: Mutex::new(Inner { lru: LruCache::unbounded(), bytes: 0 }), capacity_bytes }
    }

    pub fn get(&self, hash: &ChunkHash) -> Option<Bytes> {
        self.inner.lock().unwrap().lru.get(hash).cloned()
    }

    pub fn insert(&self, hash: ChunkHash, data: Bytes) {
        if data.len() > self.capacity_bytes {
            return;
        }
        let mut inner = self.inner.lock().unwrap();
        inner.bytes += data.len();
        if let Some(old) = inner.lru.put(hash, data) {
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
        let cache = BlockCache::new(10);
        cache.insert([1; 32], Bytes::from_static(b"aaaa"));
        cache.insert([2; 32], Bytes::from_static(b"bbbb"));
        assert!(cache.get(&[1; 32]).is_some()); // 1 is now the most recent
        cache.insert([3; 32], Bytes::from_static(b"cccc"));
        assert!(cache.get(&[2; 32]).is_none());
        assert!(cache.get(&[1; 32]).is_some());
        assert_eq!(cache.size(), 8);
        cache.insert([4; 32], Bytes::from(vec![0; 11])); // larger than the whole budget
        assert!(cache.get(&[4; 32]).is_none());
    }
}
