//! The embedded store's map: commits in memory tables ([`super::memtable`]) in front of a sled
//! tree, made durable by the journal ([`super::journal`]) and written to sled at checkpoints.
//!
//! When the journal's current file has grown past [`CHECKPOINT_AFTER`], the commit that grew it
//! starts a new file and freezes the active table, and a thread writes the frozen table to sled
//! and makes sled durable; then the old journal file goes and the frozen table is dropped. sled
//! changes at checkpoints only, so after a crash it holds the last checkpoint's state, or that
//! state with part of the next one written, and the journal files left hold every commit since:
//! replaying them at open ends in the state of the last commit made durable.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use super::journal::Journal;
use super::local::OrderedMap;
use super::memtable::Tables;
use super::write_set::WriteSet;
use super::Pair;
use crate::durability::SledFlush;
use crate::error::MetaResult;

/// Journal bytes after which a checkpoint starts (what the memory tables hold is at most about
/// twice this: the active table, and the frozen one while its checkpoint runs).
pub(super) const CHECKPOINT_AFTER: u64 = 16 << 20;

pub(super) struct SledMap {
    shared: Arc<Shared>,
    checkpoint_after: u64,
    /// The checkpoint under way, if any.
    running: Mutex<Option<JoinHandle<()>>>,
}

struct Shared {
    tree: sled::Tree,
    tables: RwLock<Tables>,
    journal: Arc<Journal>,
    sled: SledFlush,
    /// Set when the store closes: a failing checkpoint stops retrying.
    closing: AtomicBool,
}

impl SledMap {
    /// Checkpoints when the journal's file holds `checkpoint_after` bytes.
    pub(super) fn new(
        tree: sled::Tree,
        journal: Arc<Journal>,
        sled: SledFlush,
        checkpoint_after: u64,
    ) -> Self {
        let shared = Shared {
            tree,
            tables: RwLock::new(Tables::default()),
            journal,
            sled,
            closing: AtomicBool::new(false),
        };
        SledMap { shared: Arc::new(shared), checkpoint_after, running: Mutex::new(None) }
    }

    /// Starts a checkpoint of everything applied so far, unless one is under way. Called under
    /// the store's writer lock, so no commit lands between the journal's new file and the
    /// freeze.
    fn start_checkpoint(&self) {
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        if running.as_ref().is_some_and(|h| !h.is_finished()) {
            return;
        }
        if self.shared.tables.read().unwrap_or_else(|p| p.into_inner()).frozen.is_some() {
            // Left by a checkpoint that failed at close (only `settle` runs after that).
            return;
        }
        let old_file = match self.shared.journal.rotate() {
            Ok(number) => number,
            Err(e) => {
                // The next commit tries again; meanwhile the journal keeps every commit.
                tracing::error!("starting a checkpoint of the metadata store: {e}");
                return;
            }
        };
        let frozen = self.shared.tables.write().unwrap_or_else(|p| p.into_inner()).freeze();
        let (shared, job) = (self.shared.clone(), frozen.clone());
        let spawned = std::thread::Builder::new()
            .name("elasticfs-checkpoint".into())
            .spawn(move || shared.checkpoint(&job, old_file));
        match spawned {
            Ok(handle) => *running = Some(handle),
            Err(e) => {
                tracing::warn!("starting the metadata checkpoint thread: {e}; checkpointing in place");
                self.shared.checkpoint(&frozen, old_file);
            }
        }
    }

    /// Waits for the checkpoint under way, if any.
    fn wait_for_checkpoint(&self) {
        let handle = self.running.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(handle) = handle {
            if handle.join().is_err() {
                tracing::error!("the metadata checkpoint thread panicked");
            }
        }
    }

    /// Writes every commit applied so far to sled, durably, and empties the tables.
    pub(super) fn settle(&self) -> io::Result<()> {
        self.wait_for_checkpoint();
        let mut tables = self.shared.tables.write().unwrap_or_else(|p| p.into_inner());
        if let Some(frozen) = &tables.frozen {
            self.shared.write_to_sled(frozen)?;
        }
        self.shared.write_to_sled(&tables.active)?;
        self.shared.sled.flush()?;
        *tables = Tables::default();
        Ok(())
    }

    #[cfg(test)]
    pub(super) fn tree(&self) -> &sled::Tree {
        &self.shared.tree
    }

    #[cfg(test)]
    pub(super) fn checkpoint_idle(&self) {
        self.wait_for_checkpoint();
    }
}

impl Shared {
    /// The checkpoint's thread: the frozen table into sled, then the journal files up to
    /// `old_file` are not needed.
    fn checkpoint(&self, frozen: &WriteSet, old_file: u64) {
        loop {
            match self.write_to_sled(frozen).and_then(|_| self.sled.flush()) {
                Ok(()) => break,
                Err(e) if self.closing.load(Ordering::Relaxed) => {
                    tracing::error!("checkpointing the metadata store: {e}; the journal keeps every commit");
                    return;
                }
                Err(e) => {
                    tracing::error!("checkpointing the metadata store: {e}; trying again in a second");
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
        }
        if let Err(e) = self.journal.remove_through(old_file) {
            tracing::warn!("removing metadata journal files sled now holds: {e}");
        }
        self.tables.write().unwrap_or_else(|p| p.into_inner()).frozen = None;
    }

    /// Writes one table to sled, one key at a time: sled's atomic batches cost a write of its
    /// log each, and a checkpoint cut short is made whole by the journal's replay.
    fn write_to_sled(&self, table: &WriteSet) -> io::Result<()> {
        for (key, value) in &table.writes {
            match value {
                Some(v) => self.tree.insert(key.as_slice(), v.as_slice()).map(drop),
                None => self.tree.remove(key.as_slice()).map(drop),
            }
            .map_err(io::Error::other)?;
        }
        Ok(())
    }
}

impl OrderedMap for SledMap {
    fn get_with<T>(&self, key: &[u8], decode: impl FnOnce(Option<&[u8]>) -> MetaResult<T>) -> MetaResult<T> {
        {
            let tables = self.shared.tables.read().unwrap_or_else(|p| p.into_inner());
            if let Some(written) = tables.lookup(key) {
                return decode(written);
            }
        }
        // Not in the tables: sled holds the value, and a checkpoint does not change it.
        decode(self.shared.tree.get(key)?.as_deref())
    }

    fn range(&self, start: &[u8], end: &[u8], limit: usize) -> MetaResult<Vec<Pair>> {
        let tables = self.shared.tables.read().unwrap_or_else(|p| p.into_inner());
        let stored = self.shared.tree.range(start..end).map(|item| {
            let (k, v) = item?;
            Ok((k.to_vec(), v.to_vec()))
        });
        tables.range(stored, start, end, limit)
    }

    fn apply(&self, writes: WriteSet) -> MetaResult<()> {
        let journal_bytes = self.shared.journal.queue(&writes);
        self.shared.tables.write().unwrap_or_else(|p| p.into_inner()).apply(writes);
        if journal_bytes >= self.checkpoint_after {
            self.start_checkpoint();
        }
        Ok(())
    }
}

impl Drop for SledMap {
    fn drop(&mut self) {
        self.shared.closing.store(true, Ordering::Relaxed);
        // A store closed in order leaves no journal to replay.
        if let Err(e) = self.settle().and_then(|_| self.shared.journal.remove_all()) {
            tracing::error!(
                "writing the metadata journal into sled at close: {e}; it is replayed at the next open"
            );
        }
    }
}
