//! Chunk-sized buffers kept for the next download once the cache lets go of them.
//!
//! A download of a whole chunk lands in one buffer of the chunk's size, which the memory cache
//! then holds. The binary keeps glibc's mmap threshold low so that memory returns to the system
//! (`mount/src/main.rs`), which made every such buffer a fresh mapping: a page fault and a
//! page clearing per 4 KiB, then an unmap. On a cold sequential read that was about a third of
//! the mount's time (profiled). A buffer dropped by the cache now goes back to this pool, up to
//! [`KEPT`] of them, and the next download fills it again with no fault at all.

use std::sync::{Arc, Mutex};

use bytes::Bytes;

/// Buffers kept at most (32 MiB with the default 4 MiB blocks).
const KEPT: usize = 8;
/// Downloads smaller than this (segments, small chunks) get a buffer of their own.
const POOLED_FROM: usize = 1 << 20;

#[derive(Default)]
pub struct BufferPool {
    free: Mutex<Vec<Vec<u8>>>,
}

impl BufferPool {
    /// An empty buffer for `len` bytes: a kept one when there is one large enough.
    pub fn take(self: &Arc<Self>, len: usize) -> PooledBuf {
        let kept = (len >= POOLED_FROM).then(|| {
            let mut free = self.free.lock().unwrap();
            let at = free.iter().position(|b| b.capacity() >= len)?;
            Some(free.swap_remove(at))
        });
        let data = kept.flatten().unwrap_or_else(|| Vec::with_capacity(len));
        PooledBuf { data, pool: self.clone() }
    }

    #[cfg(test)]
    fn kept(&self) -> usize {
        self.free.lock().unwrap().len()
    }

    fn give_back(&self, mut data: Vec<u8>) {
        if data.capacity() < POOLED_FROM {
            return;
        }
        let mut free = self.free.lock().unwrap();
        if free.len() < KEPT {
            data.clear();
            free.push(data);
        }
    }
}

/// A buffer that returns to its pool when the last [`Bytes`] made of it is dropped.
pub struct PooledBuf {
    data: Vec<u8>,
    pool: Arc<BufferPool>,
}

impl PooledBuf {
    pub fn extend_from_slice(&mut self, bytes: &[u8]) {
        self.data.extend_from_slice(bytes);
    }

    pub fn freeze(self) -> Bytes {
        Bytes::from_owner(self)
    }
}

impl AsRef<[u8]> for PooledBuf {
    fn as_ref(&self) -> &[u8] {
        &self.data
    }
}

impl Drop for PooledBuf {
    fn drop(&mut self) {
        self.pool.give_back(std::mem::take(&mut self.data));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dropped_buffer_is_filled_again_and_small_ones_are_not_kept() {
        let pool = Arc::new(BufferPool::default());
        let mut buf = pool.take(2 << 20);
        buf.extend_from_slice(b"abc");
        let first = buf.data.as_ptr();
        let bytes = buf.freeze();
        let part = bytes.slice(1..);
        drop(bytes);
        assert_eq!(pool.kept(), 0, "a slice still holds it");
        assert_eq!(&part[..], b"bc");
        drop(part);
        assert_eq!(pool.kept(), 1);
        let again = pool.take(1 << 20);
        assert_eq!(again.data.as_ptr(), first, "the same memory, reused");
        assert!(again.data.is_empty());
        drop(again);
        drop(pool.take(64 << 10));
        assert_eq!(pool.kept(), 1, "a segment's buffer is not kept");
        let many: Vec<_> = (0..KEPT + 3).map(|_| pool.take(1 << 20)).collect();
        drop(many);
        assert_eq!(pool.kept(), KEPT);
    }
}
