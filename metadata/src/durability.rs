//! Group commit: every mutation of the embedded store waits here until a write of the
//! journal ([`crate::kv::Journal`]) that started after its commit has been synced. Whoever
//! arrives while no sync is running leads the next one; everyone who committed meanwhile rides
//! on it, so N concurrent mutations cost one `fdatasync`, not N.
//!
//! sled's own flush, used at the journal's checkpoints, is not durable by itself: sled 0.34
//! writes its log with `sync_file_range`, which neither commits the file's metadata nor empties
//! the disk's write cache (spacejam/sled#1452), and it writes pages too large for the log to
//! blob files that it never syncs. [`SledFlush`] does what makes it durable.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::SystemTime;

use crate::error::MetaResult;
use crate::kv::Journal;

pub(crate) struct GroupCommit {
    journal: Arc<Journal>,
    state: Mutex<State>,
    flushed: Condvar,
}

#[derive(Default)]
struct State {
    /// Tickets handed out: one per committed mutation.
    issued: u64,
    /// Every ticket up to this one is durable.
    durable: u64,
    flushing: bool,
}

impl GroupCommit {
    pub(crate) fn new(journal: Arc<Journal>) -> Self {
        GroupCommit { journal, state: Mutex::new(State::default()), flushed: Condvar::new() }
    }

    /// Call after a transaction has committed; returns once it is on stable storage.
    pub(crate) fn wait_durable(&self) -> MetaResult<()> {
        let mut state = self.state.lock().unwrap();
        state.issued += 1;
        let ticket = state.issued;
        loop {
            if state.durable >= ticket {
                return Ok(());
            }
            if state.flushing {
                state = self.flushed.wait(state).unwrap();
                continue;
            }
            state.flushing = true;
            let target = state.issued;
            drop(state);
            let result = self.journal.commit();
            state = self.state.lock().unwrap();
            state.flushing = false;
            if result.is_ok() {
                state.durable = state.durable.max(target);
            }
            self.flushed.notify_all();
            if let Err(e) = result {
                return Err(crate::kv::journal_write_failed(e));
            }
        }
    }
}

/// A durable flush of a sled database: sled's flush, then an `fdatasync` of its log after an
/// `fsync` of the blob files written since the last one (and of their directory).
pub(crate) struct SledFlush {
    db: sled::Db,
    log: File,
    blobs: PathBuf,
    /// When the blob directory last changed as of the last sync, and the highest blob synced
    /// (blobs are named by log position, which only grows).
    seen: Mutex<(Option<SystemTime>, u64)>,
}

impl SledFlush {
    /// For `db`, the sled database in directory `path`.
    pub(crate) fn new(db: sled::Db, path: &Path) -> io::Result<Self> {
        Ok(SledFlush {
            db,
            log: File::open(path.join("db"))?,
            blobs: path.join("blobs"),
            seen: Mutex::new((None, 0)),
        })
    }

    /// Returns once everything written to the database before the call is on stable storage.
    pub(crate) fn flush(&self) -> io::Result<()> {
        self.db.flush().map_err(io::Error::other)?;
        self.sync_new_blobs()?;
        self.log.sync_data()
    }

    fn sync_new_blobs(&self) -> io::Result<()> {
        // Only a directory that changed since the last sync has new blobs: one stat per flush.
        let changed = std::fs::metadata(&self.blobs).and_then(|m| m.modified()).ok();
        let mut seen = self.seen.lock().unwrap();
        if changed.is_none() || changed == seen.0 {
            return Ok(());
        }
        let mut highest = seen.1;
        for entry in std::fs::read_dir(&self.blobs)? {
            let entry = entry?;
            let Some(id) = entry.file_name().to_str().and_then(|n| n.parse::<u64>().ok()) else { continue };
            if id > seen.1 {
                File::open(entry.path())?.sync_all()?;
                highest = highest.max(id);
            }
        }
        File::open(&self.blobs)?.sync_all()?;
        *seen = (changed, highest);
        Ok(())
    }
}
