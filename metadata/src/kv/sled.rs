//! [`SledKv`]: the embedded driver. A commit is applied to memory tables in front of a sled
//! tree and made durable by a group-committed write of its record to a journal; sled receives
//! the commits at checkpoints ([`super::sled_map`]). sled 0.34: the last release with a stable
//! on-disk format.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use super::journal::Journal;
use super::local::Local;
use super::sled_map::SledMap;
use super::{Body, Kv, TxResult};
use crate::durability::{GroupCommit, SledFlush};
use crate::error::{MetaError, MetaResult};

/// What [`SledKv::open`] says of a store another process holds.
const IN_USE: &str = "is in use by another process";

pub struct SledKv {
    local: Local<SledMap>,
    journal: Arc<Journal>,
    durable: Arc<GroupCommit>,
    /// Set when commits are deferred (see [`SledKv::defer_commits`]).
    deferred: OnceLock<Duration>,
    path: PathBuf,
}

impl SledKv {
    /// Opens (creating if need be) the store at `path`, bringing one written by an older
    /// format up to date.
    pub fn open(path: &Path) -> MetaResult<Self> {
        Self::open_checkpointing_after(path, super::sled_map::CHECKPOINT_AFTER)
    }

    fn open_checkpointing_after(path: &Path, journal_bytes: u64) -> MetaResult<Self> {
        let db = open_db(path)?;
        let tree = db.open_tree("kv")?;
        let journal_error =
            |e| MetaError::Store(format!("opening the metadata journal in {}: {e}", path.display()));
        let sled = SledFlush::new(db.clone(), path).map_err(journal_error)?;
        let journal = Arc::new(Journal::open(path, &tree, &sled).map_err(journal_error)?);
        super::sled_upgrade::upgrade(&db, &tree)?;
        Ok(SledKv {
            local: Local::new(SledMap::new(tree, journal.clone(), sled, journal_bytes)),
            durable: Arc::new(GroupCommit::new(journal.clone())),
            journal,
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
    /// changes, and leaves the store as it was at some moment (the journal is written in
    /// commit order and replayed up to its first record cut short).
    pub fn defer_commits(&self, every: Duration) {
        if self.deferred.set(every).is_err() {
            return;
        }
        self.journal.write_through_page_cache();
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

    /// The raw tree, with every commit written to it, for tests that damage records on
    /// purpose.
    #[cfg(test)]
    pub(crate) fn settled_tree(&self) -> &sled::Tree {
        self.local.map.settle().unwrap();
        self.local.map.tree()
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
            // Deferred, the commit still reaches the journal's file at once: a crash of this
            // process alone loses nothing.
            Some(_) => self.journal.write_out().map_err(super::journal::write_failed),
            None => self.durable.wait_durable(),
        }
    }

    fn sync_all(&self) -> MetaResult<()> {
        self.durable.wait_durable()
    }

    fn commits_wait_for_sync(&self) -> bool {
        self.deferred.get().is_none()
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::kv::KvTxn;

    fn copy_dir(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_dir() {
                copy_dir(&entry.path(), &to.join(entry.file_name()));
            } else {
                std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
            }
        }
    }

    fn contents(kv: &SledKv) -> BTreeMap<Vec<u8>, Vec<u8>> {
        let mut out = BTreeMap::new();
        kv.read(&mut |t: &mut dyn KvTxn| {
            out = t.scan(b"", &[0xff], usize::MAX)?.into_iter().collect();
            Ok(())
        })
        .unwrap();
        out
    }

    /// Commits over many checkpoints read back in order, from the live store, from a copy of
    /// its files taken between checkpoints (what a crash of the process leaves), and after a
    /// close.
    #[test]
    fn commits_survive_checkpoints_a_crash_between_them_and_a_close() {
        let tmp = tempfile::tempdir().unwrap();
        let (live, crashed) = (tmp.path().join("live"), tmp.path().join("crashed"));
        let kv = SledKv::open_checkpointing_after(&live, 2048).unwrap();
        let mut model = BTreeMap::new();
        for i in 0..600u32 {
            let key = format!("k{:03}", i % 97).into_bytes();
            let value = format!("value {i}").into_bytes();
            let gone = format!("k{:03}", (i * 7) % 97).into_bytes();
            kv.transact(&mut |t: &mut dyn KvTxn| {
                t.put(&key, &value);
                if i % 3 == 0 {
                    t.delete(&gone);
                }
                Ok(())
            })
            .unwrap();
            kv.sync().unwrap();
            model.insert(key, value);
            if i % 3 == 0 {
                model.remove(&gone);
            }
        }
        assert_eq!(contents(&kv), model);
        kv.local.map.checkpoint_idle();
        let journal_files = std::fs::read_dir(live.join("journal")).unwrap().count();
        assert!(journal_files <= 2, "{journal_files} journal files: checkpoints remove them");
        copy_dir(&live, &crashed);
        drop(kv);
        assert_eq!(std::fs::read_dir(live.join("journal")).unwrap().count(), 0, "a close leaves no journal");

        for path in [&crashed, &live] {
            let kv = SledKv::open_waiting(path, Duration::from_secs(5)).unwrap();
            assert_eq!(contents(&kv), model, "{}", path.display());
        }
    }
}
