//! Directories' attributes as this client's own create or unlink in them left them.
//!
//! The kernel drops what it caches of a directory's attributes whenever an entry is added to or
//! removed from it, and asks for them again before its next permission check in the directory
//! (`default_permissions`): in a directory being filled or emptied, every create or unlink
//! would cost a getattr as well. The store already returned those attributes with the change,
//! so the next getattr is answered from them: once, and only within the attribute cache time,
//! so that the answer is never older than one the kernel's own cache could have given.

use std::num::NonZeroUsize;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use elasticfs_metadata::{Attr, Ino};
use lru::LruCache;

/// Directories remembered (each is taken by the getattr that follows its change).
const CAPACITY: usize = 1024;

pub(super) struct ChangedDirs {
    ttl: Duration,
    dirs: Mutex<LruCache<Ino, (Attr, Instant)>>,
}

impl ChangedDirs {
    /// Answers for `ttl` at most (zero: never).
    pub(super) fn new(ttl: Duration) -> Self {
        ChangedDirs { ttl, dirs: Mutex::new(LruCache::new(NonZeroUsize::new(CAPACITY).expect("not zero"))) }
    }

    /// Directory `attr.ino` is as `attr` says, just after a change this client made.
    pub(super) fn changed(&self, attr: Attr) {
        if !self.ttl.is_zero() {
            self.dirs.lock().unwrap().put(attr.ino, (attr, Instant::now()));
        }
    }

    /// The attributes of `ino` left by this client's change to it, if that was recent.
    pub(super) fn take(&self, ino: Ino) -> Option<Attr> {
        let (attr, at) = self.dirs.lock().unwrap().pop(&ino)?;
        (at.elapsed() < self.ttl).then_some(attr)
    }

    /// `ino` changed in a way that left no attributes here.
    pub(super) fn forget(&self, ino: Ino) {
        self.dirs.lock().unwrap().pop(&ino);
    }

    /// Directories this client cannot name changed (a rename moves one).
    pub(super) fn forget_all(&self) {
        self.dirs.lock().unwrap().clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use elasticfs_metadata::{FileKind, Timestamp};

    fn dir(ino: Ino) -> Attr {
        Attr::new(ino, FileKind::Dir, 0o755, Timestamp::now())
    }

    #[test]
    fn a_change_answers_one_getattr() {
        let dirs = ChangedDirs::new(Duration::from_secs(60));
        dirs.changed(dir(7));
        assert_eq!(dirs.take(7).map(|a| a.ino), Some(7));
        assert_eq!(dirs.take(7), None);
        dirs.changed(dir(8));
        dirs.forget(8);
        assert_eq!(dirs.take(8), None);
    }

    #[test]
    fn nothing_is_kept_past_the_attribute_cache_time() {
        let dirs = ChangedDirs::new(Duration::ZERO);
        dirs.changed(dir(7));
        assert_eq!(dirs.take(7), None);
        let dirs = ChangedDirs::new(Duration::from_nanos(1));
        dirs.changed(dir(7));
        std::thread::sleep(Duration::from_millis(1));
        assert_eq!(dirs.take(7), None);
    }
}
