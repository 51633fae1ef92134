//! Which inode each recently seen name led to, in this client. An unlink or a rename over an
//! existing name must know the inode it removes before it commits (to hold the inode's open
//! gate, and to remove a file nobody here holds open in the same transaction); the kernel has
//! just looked the name up, so the answer is usually here and costs no request to the store.
//! It is only a guess: the store checks it, and a wrong one only takes the slower path (the
//! inode is left an orphan and purged after).

use std::num::NonZeroUsize;
use std::sync::Mutex;

use elasticfs_metadata::Ino;
use lru::LruCache;

/// Names remembered (about 100 bytes each).
const CAPACITY: usize = 16 * 1024;

pub(super) struct RecentNames {
    names: Mutex<LruCache<(Ino, Vec<u8>), Ino>>,
}

impl RecentNames {
    pub(super) fn new() -> Self {
        RecentNames { names: Mutex::new(LruCache::new(NonZeroUsize::new(CAPACITY).expect("not zero"))) }
    }

    pub(super) fn saw(&self, parent: Ino, name: &[u8], ino: Ino) {
        self.names.lock().unwrap().put((parent, name.to_vec()), ino);
    }

    pub(super) fn guess(&self, parent: Ino, name: &[u8]) -> Option<Ino> {
        self.names.lock().unwrap().get(&(parent, name.to_vec())).copied()
    }

    pub(super) fn gone(&self, parent: Ino, name: &[u8]) {
        self.names.lock().unwrap().pop(&(parent, name.to_vec()));
    }
}
