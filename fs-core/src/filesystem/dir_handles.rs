//! Directories open for listing (FUSE's opendir to releasedir). Each keeps the entries it read
//! from the store past what the last readdir took: a FUSE reply holds about 128 entries and the
//! store is asked for 512 at a time, so without this every reply read a page of its own (and
//! on etcd 3.4 a page costs in proportion to what is left of the directory).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use elasticfs_metadata::DirEntry;

/// Where a listing of an open directory stands.
#[derive(Default)]
pub(super) struct Cursor {
    /// The cookie the entries in `ahead` follow.
    pub(super) after: u64,
    /// Entries read from the store and not taken yet, in cookie order.
    pub(super) ahead: VecDeque<DirEntry>,
    /// `ahead` runs to the end of the directory.
    pub(super) end: bool,
}

#[derive(Default)]
pub(super) struct DirHandles {
    next: AtomicU64,
    open: Mutex<HashMap<u64, Arc<Mutex<Cursor>>>>,
}

impl DirHandles {
    pub(super) fn open(&self) -> u64 {
        let fh = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        self.open.lock().unwrap().insert(fh, Arc::default());
        fh
    }

    pub(super) fn get(&self, fh: u64) -> Option<Arc<Mutex<Cursor>>> {
        self.open.lock().unwrap().get(&fh).cloned()
    }

    pub(super) fn release(&self, fh: u64) {
        self.open.lock().unwrap().remove(&fh);
    }
}
