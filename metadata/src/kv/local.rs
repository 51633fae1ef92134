//! Transactions over an ordered map that one process holds (sled on disk, or memory): a
//! writer lock makes every read-write transaction see one state and commit without conflict,
//! and the commit is one atomic batch. Bodies are short (no I/O but the map's own), and
//! durability (a flush) is waited for after the lock is released, so concurrent commits still
//! share one flush (see [`crate::durability`]).

use std::sync::Mutex;

use super::write_set::WriteSet;
use super::{Body, KvTxn, Pair, TxResult};
use crate::error::MetaResult;

/// The map under a [`Local`] driver.
pub(super) trait OrderedMap: Send + Sync + 'static {
    /// What `decode` makes of `key`'s value, read where it lies (no copy for a caller that
    /// decodes).
    fn get_with<T>(&self, key: &[u8], decode: impl FnOnce(Option<&[u8]>) -> MetaResult<T>) -> MetaResult<T>;
    /// Up to `limit` pairs with `start <= key < end`, in key order.
    fn range(&self, start: &[u8], end: &[u8], limit: usize) -> MetaResult<Vec<Pair>>;
    /// Applies every write at once: a reader sees all of them or none.
    fn apply(&self, writes: WriteSet) -> MetaResult<()>;
}

pub(super) struct Local<M> {
    pub(super) map: M,
    /// Held by every read-write transaction (and by a snapshot) from its first read to its
    /// commit.
    writer: Mutex<()>,
}

impl<M: OrderedMap> Local<M> {
    pub(super) fn new(map: M) -> Self {
        Local { map, writer: Mutex::new(()) }
    }

    pub(super) fn transact(&self, body: Body) -> TxResult<()> {
        let _only_writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let mut txn = LocalTxn { map: &self.map, writes: WriteSet::default() };
        body(&mut txn)?;
        if !txn.writes.writes.is_empty() {
            self.map.apply(txn.writes)?;
        }
        Ok(())
    }

    pub(super) fn get_with<T>(
        &self,
        key: &[u8],
        decode: impl FnOnce(Option<&[u8]>) -> MetaResult<T>,
    ) -> TxResult<T> {
        Ok(self.map.get_with(key, decode)?)
    }

    pub(super) fn read(&self, body: Body) -> TxResult<()> {
        body(&mut LocalTxn { map: &self.map, writes: WriteSet::default() })
    }

    pub(super) fn snapshot(&self, body: Body) -> TxResult<()> {
        let _no_writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        self.read(body)
    }
}

struct LocalTxn<'a, M> {
    map: &'a M,
    writes: WriteSet,
}

impl<M: OrderedMap> KvTxn for LocalTxn<'_, M> {
    fn get(&mut self, key: &[u8]) -> TxResult<Option<Vec<u8>>> {
        match self.writes.get(key) {
            Some(written) => Ok(written),
            None => Ok(self.map.get_with(key, |value| Ok(value.map(<[u8]>::to_vec)))?),
        }
    }

    fn scan(&mut self, start: &[u8], end: &[u8], limit: usize) -> TxResult<Vec<Pair>> {
        let fetch = limit.saturating_add(self.writes.scan_margin(start, end));
        let stored = self.map.range(start, end, fetch)?;
        let complete = stored.len() < fetch;
        Ok(self.writes.overlay(stored, start, end, complete, limit))
    }

    fn put(&mut self, key: &[u8], value: &[u8]) {
        self.writes.put(key, value);
    }

    fn delete(&mut self, key: &[u8]) {
        self.writes.delete(key);
    }
}
