//! Group commit: sled does not fsync a transaction by itself, so every mutation waits here
//! until a flush that started after its commit has finished. Whoever arrives while no flush is
//! running leads the next one; everyone who committed meanwhile rides on it, so N concurrent
//! mutations cost one fsync, not N.
//!
//! sled 0.34's own flush is not enough for that: it writes its log with `sync_file_range`,
//! which neither commits the file's metadata nor empties the disk's write cache
//! (spacejam/sled#1452), and it writes pages too large for the log to blob files that it
//! never syncs. Each flush here is followed by what makes it durable ([`DiskSync`]).

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex};
use std::time::SystemTime;

use crate::error::{MetaError, MetaResult};

pub(crate) struct GroupCommit {
    db: sled::Db,
    disk: DiskSync,
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
    /// Group commit of `db`, a sled database in directory `path`.
    pub(crate) fn new(db: sled::Db, path: &Path) -> MetaResult<Self> {
        let disk = DiskSync::open(path)
            .map_err(|e| MetaError::Store(format!("opening the metadata log in {}: {e}", path.display())))?;
        Ok(GroupCommit { db, disk, state: Mutex::new(State::default()), flushed: Condvar::new() })
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
            let result = self.db.flush().map_err(|e| e.to_string()).and_then(|_| {
                self.disk
                    .sync()
                    .map_err(|e| format!("{e}: is the disk of the metadata store full or failing?"))
            });
            state = self.state.lock().unwrap();
            state.flushing = false;
            if result.is_ok() {
                state.durable = state.durable.max(target);
            }
            self.flushed.notify_all();
            if let Err(e) = result {
                return Err(MetaError::Store(format!("flushing the metadata log failed: {e}")));
            }
        }
    }
}

/// What makes a sled flush durable: an `fdatasync` of its log, after an `fsync` of the blob
/// files written since the last one (and of their directory).
struct DiskSync {
    log: File,
    blobs: PathBuf,
    /// When the blob directory last changed as of the last sync, and the highest blob synced
    /// (blobs are named by log position, which only grows).
    seen: Mutex<(Option<SystemTime>, u64)>,
}

impl DiskSync {
    fn open(path: &Path) -> io::Result<Self> {
        Ok(DiskSync {
            log: File::open(path.join("db"))?,
            blobs: path.join("blobs"),
            seen: Mutex::new((None, 0)),
        })
    }

    fn sync(&self) -> io::Result<()> {
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
