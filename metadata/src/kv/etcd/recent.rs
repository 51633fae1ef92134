//! What this client recently saw of each key: the value and mod-revision it last read or
//! committed. Most operations read what the one just before them read or wrote (the kernel's
//! lookup before a create or unlink reads the entry and the directory; the create before it
//! wrote this session's counter share), so:
//!
//! - a read-write transaction takes its reads from here first. That is safe because its commit
//!   compares the mod-revision of every key it read: a stale value fails the commit, and the
//!   operation runs again on fresh reads (see [`super::EtcdKv`]'s `transact`). It only costs a
//!   conflict, so values are taken only while young;
//! - a read-only transaction, which no commit checks, never takes values from here, only hints
//!   of which keys to fetch together (the inode an entry named the last time).
//!
//! Ranges seen empty are kept too (a new inode's extended attributes, which its removal scans),
//! under the same rule: a read-write transaction takes them, and its commit guards them.

use std::num::NonZeroUsize;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use lru::LruCache;

/// Keys remembered: about 200 bytes each, so a few MiB.
const CAPACITY: usize = 32 * 1024;
/// How long a value seeds transactions. Past this it is likelier to have changed than not
/// under a busy key, and a failed commit costs a Raft round.
const SEED_AGE: Duration = Duration::from_secs(5);
/// The same for an empty range: the ones remembered (an inode's extended attributes) seldom
/// stop being empty.
const EMPTY_SEED_AGE: Duration = Duration::from_secs(60);

/// A key's value (`None`: absent) at mod-revision `mod_revision` (0: absent).
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Seen {
    pub mod_revision: i64,
    pub value: Option<Vec<u8>>,
}

struct Entry {
    seen: Seen,
    /// The store revision at which it was true, so that an older answer arriving late does not
    /// replace a newer one.
    as_of: i64,
    at: Instant,
}

/// `[start, end)`.
type Range = (Vec<u8>, Vec<u8>);

pub(super) struct RecentKeys {
    entries: Mutex<LruCache<Vec<u8>, Entry>>,
    /// `[start, end)` ranges with nothing in them, and the revision at which that was true.
    empty: Mutex<LruCache<Range, (i64, Instant)>>,
}

impl RecentKeys {
    pub(super) fn new() -> Self {
        let capacity = NonZeroUsize::new(CAPACITY).expect("not zero");
        RecentKeys {
            entries: Mutex::new(LruCache::new(capacity)),
            empty: Mutex::new(LruCache::new(capacity)),
        }
    }

    /// What `key` was recently enough to seed a read-write transaction.
    pub(super) fn seed(&self, key: &[u8]) -> Option<Seen> {
        let mut entries = self.entries.lock().unwrap();
        entries.get(key).filter(|e| e.at.elapsed() < SEED_AGE).map(|e| e.seen.clone())
    }

    /// The last value seen of `key`, however old: only a hint.
    pub(super) fn hint(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.entries.lock().unwrap().peek(key).and_then(|e| e.seen.value.clone())
    }

    /// Records that `key` was `seen` at store revision `as_of`.
    pub(super) fn saw(&self, key: &[u8], seen: Seen, as_of: i64) {
        let mut entries = self.entries.lock().unwrap();
        if entries.peek(key).is_some_and(|e| e.as_of > as_of) {
            return;
        }
        entries.put(key.to_vec(), Entry { seen, as_of, at: Instant::now() });
    }

    /// The revision at which `[start, end)` was seen empty, recently enough to seed a
    /// read-write transaction.
    pub(super) fn seed_empty(&self, start: &[u8], end: &[u8]) -> Option<i64> {
        let mut empty = self.empty.lock().unwrap();
        let (as_of, at) = *empty.get(&(start.to_vec(), end.to_vec()))?;
        (at.elapsed() < EMPTY_SEED_AGE).then_some(as_of)
    }

    /// Records that `[start, end)` held nothing at revision `as_of`.
    pub(super) fn saw_empty(&self, start: &[u8], end: &[u8], as_of: i64) {
        self.empty.lock().unwrap().put((start.to_vec(), end.to_vec()), (as_of, Instant::now()));
    }

    /// Drops what is known of range `[start, end)`.
    pub(super) fn forget_range(&self, start: &[u8], end: &[u8]) {
        self.empty.lock().unwrap().pop(&(start.to_vec(), end.to_vec()));
    }

    /// Drops what is known of `keys` (a commit that read them failed).
    pub(super) fn forget<'k>(&self, keys: impl IntoIterator<Item = &'k Vec<u8>>) {
        let mut entries = self.entries.lock().unwrap();
        for key in keys {
            entries.pop(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(rev: i64, value: &[u8]) -> Seen {
        Seen { mod_revision: rev, value: Some(value.to_vec()) }
    }

    #[test]
    fn a_late_older_answer_does_not_replace_a_newer_one() {
        let recent = RecentKeys::new();
        recent.saw(b"k", seen(7, b"new"), 9);
        recent.saw(b"k", seen(3, b"old"), 5);
        assert_eq!(recent.seed(b"k"), Some(seen(7, b"new")));
        recent.saw(b"k", Seen { mod_revision: 0, value: None }, 10);
        assert_eq!(recent.seed(b"k"), Some(Seen { mod_revision: 0, value: None }));
        assert_eq!(recent.hint(b"k"), None);
    }

    #[test]
    fn forgotten_keys_seed_nothing() {
        let recent = RecentKeys::new();
        recent.saw(b"a", seen(1, b"x"), 1);
        recent.saw(b"b", seen(1, b"y"), 1);
        recent.forget(&[b"a".to_vec()]);
        assert_eq!(recent.seed(b"a"), None);
        assert_eq!(recent.hint(b"b"), Some(b"y".to_vec()));
    }
}
