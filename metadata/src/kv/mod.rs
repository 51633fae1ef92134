//! The key-value transaction seam (the shape of JuiceFS's `tkv`): the metadata engine
//! ([`crate::engine`]) is written once against [`KvTxn`], and each store it runs on is a
//! driver of [`Kv`]: [`SledKv`] (embedded, the default), [`MemKv`] (tests) and [`EtcdKv`]
//! (replicated). A driver gives serializable transactions: a body runs against one consistent
//! view, reads its own writes, and commits atomically or reports [`TxError::Conflict`], upon
//! which the engine runs the body again.

mod etcd;
mod journal;
mod local;
mod memory;
mod memtable;
mod sled;
mod sled_map;
mod sled_upgrade;
mod write_set;

pub use self::etcd::{EtcdKv, EtcdOptions};
pub(crate) use self::journal::{write_failed as journal_write_failed, Journal};
pub use self::memory::MemKv;
pub use self::sled::SledKv;

use crate::error::MetaError;

/// Why a transaction body or commit stopped.
#[derive(Debug)]
pub enum TxError {
    /// Another transaction changed what this one read: run it again.
    Conflict,
    /// The operation fails with this error (a rule of the namespace, or the store's own).
    Abort(MetaError),
}

impl From<MetaError> for TxError {
    fn from(e: MetaError) -> Self {
        TxError::Abort(e)
    }
}

pub type TxResult<T> = Result<T, TxError>;

/// Fails the transaction with `e`.
pub fn fail<T>(e: MetaError) -> TxResult<T> {
    Err(TxError::Abort(e))
}

/// A key and its value.
pub type Pair = (Vec<u8>, Vec<u8>);

/// One transaction's view of the key space.
pub trait KvTxn {
    fn get(&mut self, key: &[u8]) -> TxResult<Option<Vec<u8>>>;
    /// Several keys at once (one round trip where the store allows).
    fn get_many(&mut self, keys: &[Vec<u8>]) -> TxResult<Vec<Option<Vec<u8>>>> {
        keys.iter().map(|k| self.get(k)).collect()
    }
    /// Whether [`KvTxn::prefetch`] does anything (callers on hot paths skip building keys).
    fn prefetches(&self) -> bool {
        false
    }
    /// A hint that the transaction is about to read `keys`: a remote store fetches them in
    /// one round trip now; a local one has nothing to gain.
    fn prefetch(&mut self, keys: &[Vec<u8>]) -> TxResult<()> {
        let _ = keys;
        Ok(())
    }
    /// A value `key` had lately, if the store keeps any at hand: perhaps stale, so only for
    /// choosing what to [`KvTxn::prefetch`], never for a decision.
    fn hint(&self, key: &[u8]) -> Option<Vec<u8>> {
        let _ = key;
        None
    }
    /// A hint that once this transaction commits, nothing lies in `[start, end)` (the keys of
    /// an inode it creates): a store that remembers what it saw may answer a later scan of
    /// the range from that, checked by that transaction's commit.
    fn known_empty(&mut self, start: &[u8], end: &[u8]) {
        let _ = (start, end);
    }
    /// Up to `limit` pairs with `start <= key < end`, in key order.
    fn scan(&mut self, start: &[u8], end: &[u8], limit: usize) -> TxResult<Vec<Pair>>;
    fn put(&mut self, key: &[u8], value: &[u8]);
    fn delete(&mut self, key: &[u8]);
}

/// A transaction body: run once per attempt.
pub type Body<'a> = &'a mut dyn FnMut(&mut dyn KvTxn) -> TxResult<()>;

/// A store the engine can run on.
pub trait Kv: Send + Sync + 'static {
    /// Runs `body` and commits what it wrote, atomically; [`TxError::Conflict`] if another
    /// commit changed what it read.
    fn transact(&self, body: Body) -> TxResult<()>;
    /// Runs `body` over the store without committing (its writes are discarded).
    fn read(&self, body: Body) -> TxResult<()>;
    /// What `decode` makes of one key's value, read on its own (a local store spares the
    /// transaction around it, and the copy of the value).
    fn get_with<T>(
        &self,
        key: &[u8],
        decode: impl FnOnce(Option<&[u8]>) -> crate::MetaResult<T>,
    ) -> TxResult<T> {
        let mut value = None;
        self.read(&mut |t: &mut dyn KvTxn| {
            value = t.get(key)?;
            Ok(())
        })?;
        Ok(decode(value.as_deref())?)
    }
    /// Like [`Kv::read`], over one state of the whole store however long the body runs (the
    /// audit): commits wait, or the reads are pinned to one revision.
    fn snapshot(&self, body: Body) -> TxResult<()> {
        self.read(body)
    }
    /// Called after each mutation: returns once every commit so far is on stable storage, or
    /// at once if the store defers its commits ([`Kv::deferred_commits`]).
    fn sync(&self) -> crate::MetaResult<()> {
        Ok(())
    }
    /// Returns once every commit so far is on stable storage, deferred or not.
    fn sync_all(&self) -> crate::MetaResult<()> {
        self.sync()
    }
    /// Whether [`Kv::sync`] after a commit waits for the disk: false where a commit is durable
    /// as it is made (etcd) or its durability is deferred.
    fn commits_wait_for_sync(&self) -> bool {
        false
    }
    /// How long a commit may wait before it is made durable, if the store defers commits.
    fn deferred_commits(&self) -> Option<std::time::Duration> {
        None
    }
    /// How many keys one transaction may read and how many it may write (each, not
    /// together); `usize::MAX` where the store sets no limit.
    fn max_ops(&self) -> usize {
        usize::MAX
    }
    /// Whether one process holds the store and runs its read-write transactions one at a time,
    /// so that they never conflict: the engine then keeps a directory's times in its record
    /// (one read for a getattr) rather than in a key of their own (see [`crate::keys`]).
    fn single_writer(&self) -> bool {
        false
    }
    /// The store, for messages.
    fn describe(&self) -> String;
}

/// The smallest key greater than every key that starts with `prefix`.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Every byte was 0xff: the range runs to the end of the key space.
    vec![0xff; prefix.len() + 1]
}
