//! Which inode each recently seen name led to, in this client. An unlink or a rename over an
//! existing name must know the inode it removes before it commits (to hold the inode's open
//! gate, and to remove a file nobody here holds open in the same transaction); the kernel has
//! just looked the name up, so the answer is usually here and costs no request to the store.
//! It is only a guess: the store checks it, and a wrong one only takes the slower path (the
//! inode is left an orphan and purged after).

use std::hash::{BuildHasher, RandomState};
use std::num::NonZeroUsize;
use std::sync::Mutex;

use elasticfs_metadata::Ino;
use lru::LruCache;

/// Names remembered (about 50 bytes each).
const CAPACITY: usize = 16 * 1024;

/// Names are remembered by a hash of (parent, name), not a copy: one is noted on every lookup,
/// and a guess may be wrong anyway (two names with one hash make one guess wrong, which the
/// store then corrects).
pub(super) struct RecentNames {
    names: Mutex<LruCache<u64, Ino>>,
    hasher: RandomState,
}

impl RecentNames {
    pub(super) fn new() -> Self {
        RecentNames {
            names: Mutex::new(LruCache::new(NonZeroUsize::new(CAPACITY).expect("not zero"))),
            hasher: RandomState::new(),
        }
    }

    fn key(&self, parent: Ino, name: &[u8]) -> u64 {
        self.hasher.hash_one((parent, name))
    }

    pub(super) fn saw(&self, parent: Ino, name: &[u8], ino: Ino) {
        let key = self.key(parent, name);
        self.names.lock().unwrap().put(key, ino);
    }

    pub(super) fn guess(&self, parent: Ino, name: &[u8]) -> Option<Ino> {
        let key = self.key(parent, name);
        self.names.lock().unwrap().get(&key).copied()
    }

    pub(super) fn gone(&self, parent: Ino, name: &[u8]) {
        let key = self.key(parent, name);
        self.names.lock().unwrap().pop(&key);
    }
}
