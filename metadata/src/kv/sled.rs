//! [`SledKv`]: the embedded driver. One sled tree holds the key space; a commit is one
//! atomic batch, and durability comes from a group-committed flush (sled 0.34, the last
//! release with atomic batches and a stable on-disk format).

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use super::local::{Local, OrderedMap};
use super::write_set::WriteSet;
use super::{Body, Kv, Pair, TxResult};
use crate::durability::GroupCommit;
use crate::error::{MetaError, MetaResult};

/// What [`SledKv::open`] says of a store another process holds.
const IN_USE: &str = "is in use by another process";

pub struct SledKv {
    local: Local<SledMap>,
    durable: Arc<GroupCommit>,
    /// Set when commits are deferred (see [`SledKv::defer_commits`]).
    deferred: OnceLock<Duration>,
    path: PathBuf,
}

struct SledMap(sled::Tree);

impl SledKv {
    /// Opens (creating if need be) the store at `path`, bringing one written by an older
    /// format up to date.
    pub fn open(path: &Path) -> MetaResult<Self> {
        let db = open_db(path)?;
        let tree = db.open_tree("kv")?;
        super::sled_upgrade::upgrade(&db, &tree)?;
        Ok(SledKv {
            local: Local::new(SledMap(tree)),
            durable: Arc::new(GroupCommit::new(db, path)?),
            deferred: OnceLock::new(),
            path: path.into(),
        })
    }

    /// [`Self::open`], waiting up to `patience` for another process to let go of the store: a
    /// mount that was just unmounted holds it for the moment it takes to commit and exit.
    pub fn open_waiting(path: &Path, patience: Duration) -> MetaResult<Self> {
        let deadline = Instant::now() + patience;
        loop {
            match Self::open(path) {
                Err(MetaError::Store(e)) if e.contains(IN_USE) && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(100));
                }
                other => return other,
            }
        }
    }

    /// Whether `path` holds a store (formatted or not yet), without opening it.
    pub fn exists(path: &Path) -> bool {
        // sled writes its `conf` file when it creates a database.
        path.join("conf").exists()
    }

    /// Defers commits: a mutation returns once applied (seen by every later read), and a
    /// background flush makes everything applied durable every `every`, besides
    /// [`Kv::sync_all`] (on `fsync` and unmount). A crash loses at most the last `every` of
    /// changes, and leaves the store as it was at some moment (sled's log is replayed in
    /// order, and each commit is one atomic batch in it).
    pub fn defer_commits(&self, every: Duration) {
        if self.deferred.set(every).is_err() {
            return;
        }
        let durable = Arc::downgrade(&self.durable);
        let spawned = std::thread::Builder::new().name("elasticfs-commit".into()).spawn(move || loop {
            std::thread::sleep(every);
            // The store is gone: so is the work.
            let Some(durable) = durable.upgrade() else { return };
            if let Err(e) = durable.wait_durable() {
                tracing::error!("making deferred metadata commits durable: {e}");
            }
        });
        if let Err(e) = spawned {
            tracing::error!("starting the deferred-commit flusher: {e}");
        }
    }

    /// The raw tree, for tests that damage records on purpose.
    #[cfg(test)]
    pub(crate) fn tree(&self) -> &sled::Tree {
        &self.local.map.0
    }
}

fn open_db(path: &Path) -> MetaResult<sled::Db> {
    sled::Config::new()
        .path(path)
        .cache_capacity(64 << 20)
        // Durability comes from our group commit, not a timer.
        .flush_every_ms(None)
        .open()
        .map_err(|e| match e {
            sled::Error::Io(io)
                if io.kind() == std::io::ErrorKind::WouldBlock || io.to_string().contains("lock") =>
            {
                MetaError::Store(format!(
                    "the metadata store at {} {IN_USE} (a running mount?): \
                     unmount it first, or share it through `elasticfs meta serve`",
                    path.display()
                ))
            }
            other => MetaError::Store(format!("opening the metadata store at {}: {other}", path.display())),
        })
}

impl OrderedMap for SledMap {
    fn get_with<T>(&self, key: &[u8], decode: impl FnOnce(Option<&[u8]>) -> MetaResult<T>) -> MetaResult<T> {
        decode(self.0.get(key)?.as_deref())
    }

    fn range(&self, start: &[u8], end: &[u8], limit: usize) -> MetaResult<Vec<Pair>> {
        let mut out = Vec::new();
        for item in self.0.range(start..end).take(limit) {
            let (k, v) = item?;
            out.push((k.to_vec(), v.to_vec()));
        }
        Ok(out)
    }

    fn apply(&self, writes: WriteSet) -> MetaResult<()> {
        let mut batch = sled::Batch::default();
        for (key, value) in writes.writes {
            match value {
                Some(v) => batch.insert(key, v),
                None => batch.remove(key),
            }
        }
        Ok(self.0.apply_batch(batch)?)
    }
}

impl Kv for SledKv {
    fn transact(&self, body: Body) -> TxResult<()> {
        self.local.transact(body)
    }

    fn read(&self, body: Body) -> TxResult<()> {
        self.local.read(body)
    }

    fn get_with<T>(&self, key: &[u8], decode: impl FnOnce(Option<&[u8]>) -> MetaResult<T>) -> TxResult<T> {
        self.local.get_with(key, decode)
    }

    fn snapshot(&self, body: Body) -> TxResult<()> {
        self.local.snapshot(body)
    }

    fn sync(&self) -> MetaResult<()> {
        match self.deferred.get() {
            Some(_) => Ok(()),
            None => self.durable.wait_durable(),
        }
    }

    fn sync_all(&self) -> MetaResult<()> {
        self.durable.wait_durable()
    }

    fn deferred_commits(&self) -> Option<Duration> {
        self.deferred.get().copied()
    }

    fn single_writer(&self) -> bool {
        true
    }

    fn describe(&self) -> String {
        self.path.display().to_string()
    }
}
