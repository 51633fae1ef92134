//! [`MemKv`]: the engine in memory, for tests (nothing survives the process).

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::RwLock;

use super::local::{Local, OrderedMap};
use super::write_set::WriteSet;
use super::{Body, Kv, Pair, TxResult};
use crate::error::MetaResult;

pub struct MemKv(Local<Map>);

struct Map(RwLock<BTreeMap<Vec<u8>, Vec<u8>>>);

impl MemKv {
    pub fn new() -> Self {
        MemKv(Local::new(Map(RwLock::new(BTreeMap::new()))))
    }
}

impl Default for MemKv {
    fn default() -> Self {
        Self::new()
    }
}

impl OrderedMap for Map {
    fn get_with<T>(&self, key: &[u8], decode: impl FnOnce(Option<&[u8]>) -> MetaResult<T>) -> MetaResult<T> {
        decode(self.0.read().unwrap().get(key).map(Vec::as_slice))
    }

    fn range(&self, start: &[u8], end: &[u8], limit: usize) -> MetaResult<Vec<Pair>> {
        let map = self.0.read().unwrap();
        let range = map.range::<[u8], _>((Bound::Included(start), Bound::Excluded(end)));
        Ok(range.take(limit).map(|(k, v)| (k.clone(), v.clone())).collect())
    }

    fn apply(&self, writes: WriteSet) -> MetaResult<()> {
        let mut map = self.0.write().unwrap();
        for (key, value) in writes.writes {
            match value {
                Some(v) => map.insert(key, v),
                None => map.remove(&key),
            };
        }
        Ok(())
    }
}

impl Kv for MemKv {
    fn transact(&self, body: Body) -> TxResult<()> {
        self.0.transact(body)
    }

    fn read(&self, body: Body) -> TxResult<()> {
        self.0.read(body)
    }

    fn get_with<T>(&self, key: &[u8], decode: impl FnOnce(Option<&[u8]>) -> MetaResult<T>) -> TxResult<T> {
        self.0.get_with(key, decode)
    }

    fn snapshot(&self, body: Body) -> TxResult<()> {
        self.0.snapshot(body)
    }

    fn single_writer(&self) -> bool {
        true
    }

    fn describe(&self) -> String {
        "the in-memory store".into()
    }
}
