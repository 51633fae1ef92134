//! File locks (used through [`crate::FileSystem`]'s lock methods): held in the metadata (so every client of the file system sees
//! them) and released when their owner closes the file or its session ends.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use elasticfs_metadata::{Ino, LockKind, LockRecord, LockRequest, MetaError, MetaStore};
use tracing::instrument;

use crate::error::FsResult;

/// How long a waiting lock request sleeps between tries, at most.
const MAX_WAIT_STEP: Duration = Duration::from_millis(100);

pub(crate) struct LockTable {
    meta: Arc<dyn MetaStore>,
    /// (file, owner) pairs this client has set a lock for: a close by any other owner needs no
    /// round trip to the metadata.
    owners: Mutex<HashSet<(Ino, u64)>>,
}

impl LockTable {
    pub(crate) fn new(meta: Arc<dyn MetaStore>) -> Self {
        LockTable { meta, owners: Mutex::new(HashSet::new()) }
    }

    /// The lock that would keep `req` from being granted (F_GETLK).
    pub(crate) fn test(&self, ino: Ino, req: &LockRequest) -> FsResult<Option<LockRecord>> {
        Ok(self.meta.get_lock(ino, req)?)
    }

    /// Sets, changes or releases a lock (F_SETLK, or F_SETLKW with `wait`: then it tries again,
    /// backing off, until the lock is granted). Fails with EAGAIN when another owner holds a
    /// conflicting lock and `wait` is false.
    #[instrument(level = "debug", skip(self))]
    pub(crate) fn set(&self, ino: Ino, req: &LockRequest, wait: bool) -> FsResult<()> {
        if req.kind != LockKind::Unlock {
            // Recorded first: a close racing with the grant must not skip the release.
            self.owners.lock().unwrap().insert((ino, req.owner));
        }
        let mut step = Duration::from_millis(1);
        loop {
            match self.meta.set_lock(ino, req) {
                Err(MetaError::WouldBlock) if wait => {
                    std::thread::sleep(step);
                    step = (step * 2).min(MAX_WAIT_STEP);
                }
                other => return Ok(other?),
            }
        }
    }

    /// Records locks this client holds that it did not set itself (taken over from a dead
    /// process), so that releasing them is not skipped.
    pub(crate) fn held_by_this_client(&self, locks: &[(Ino, u64)]) {
        self.owners.lock().unwrap().extend(locks.iter().copied());
    }

    /// Releases every lock `owner` holds on `ino` (close, process exit).
    #[instrument(level = "debug", skip(self))]
    pub(crate) fn release(&self, ino: Ino, owner: u64) -> FsResult<()> {
        if !self.owners.lock().unwrap().remove(&(ino, owner)) {
            return Ok(());
        }
        Ok(self.meta.release_locks(ino, owner)?)
    }
}
