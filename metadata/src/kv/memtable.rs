//! Commits the embedded store has made durable in its journal but not yet written to sled.
//!
//! Writing each commit to sled as it happens costs more than the journal's append and sync
//! that make it durable: every sled atomic batch writes out sled's log buffer twice, through
//! its I/O threads, with `sync_file_range` (docs/PERFORMANCE.md, session 14). So commits land
//! here, in memory, and a checkpoint writes them to sled many thousands at a time. Reads look
//! here first: the active table (new commits), then the frozen one (being written to sled by
//! a checkpoint), then sled.

use std::collections::btree_map;
use std::iter::Peekable;
use std::ops::Bound;
use std::sync::Arc;

use super::write_set::WriteSet;
use super::Pair;
use crate::error::MetaResult;

#[derive(Default)]
pub(super) struct Tables {
    pub(super) active: WriteSet,
    /// Being written to sled; dropped once sled holds it durably.
    pub(super) frozen: Option<Arc<WriteSet>>,
}

/// A table's writes in a key range: `None` values are deletions.
type Writes<'a> = Peekable<btree_map::Range<'a, Vec<u8>, Option<Vec<u8>>>>;

impl Tables {
    /// What the tables say of `key`: `Some(None)` if a commit here deleted it, `None` if no
    /// commit here wrote it (sled has the answer).
    pub(super) fn lookup(&self, key: &[u8]) -> Option<Option<&[u8]>> {
        let newest = self.active.writes.get(key).or_else(|| self.frozen.as_ref()?.writes.get(key))?;
        Some(newest.as_deref())
    }

    /// Adds a commit's writes to the active table.
    pub(super) fn apply(&mut self, writes: WriteSet) {
        self.active.writes.extend(writes.writes);
    }

    /// Moves the active table to the frozen place (which must be free) and returns it.
    pub(super) fn freeze(&mut self) -> Arc<WriteSet> {
        debug_assert!(self.frozen.is_none());
        let frozen = Arc::new(std::mem::take(&mut self.active));
        self.frozen = Some(frozen.clone());
        frozen
    }

    /// Up to `limit` pairs with `start <= key < end`, in key order: the tables laid over
    /// `stored`, sled's pairs in the same range in key order.
    pub(super) fn range(
        &self,
        stored: impl Iterator<Item = MetaResult<Pair>>,
        start: &[u8],
        end: &[u8],
        limit: usize,
    ) -> MetaResult<Vec<Pair>> {
        let empty = WriteSet::default();
        let mut active = in_range(&self.active, start, end);
        let mut frozen = in_range(self.frozen.as_deref().unwrap_or(&empty), start, end);
        let mut stored = stored.peekable();
        let mut out = Vec::new();
        while out.len() < limit {
            // The smallest key any source has next; where several have it, the newest wins.
            let next_written = [active.peek(), frozen.peek()].into_iter().flatten().map(|(k, _)| *k).min();
            let next_stored = match stored.peek() {
                Some(Ok((k, _))) => Some(k),
                Some(Err(_)) => return Err(stored.next().unwrap().unwrap_err()),
                None => None,
            };
            let key = match (next_written, next_stored) {
                (None, None) => break,
                (Some(w), Some(s)) if s < w => s.clone(),
                (Some(w), _) => w.clone(),
                (None, Some(s)) => s.clone(),
            };
            let from_active = take_if(&mut active, &key);
            let from_frozen = take_if(&mut frozen, &key);
            let from_stored = match stored.peek() {
                Some(Ok((k, _))) if *k == key => stored.next().transpose()?.map(|(_, v)| v),
                _ => None,
            };
            let value = match (from_active, from_frozen) {
                (Some(written), _) | (None, Some(written)) => written.clone(),
                (None, None) => from_stored,
            };
            if let Some(value) = value {
                out.push((key, value));
            }
        }
        Ok(out)
    }
}

fn in_range<'a>(table: &'a WriteSet, start: &[u8], end: &[u8]) -> Writes<'a> {
    table.writes.range::<[u8], _>((Bound::Included(start), Bound::Excluded(end))).peekable()
}

/// The next write of `writes` if it is to `key`.
fn take_if<'a>(writes: &mut Writes<'a>, key: &[u8]) -> Option<&'a Option<Vec<u8>>> {
    match writes.peek() {
        Some((k, _)) if k.as_slice() == key => writes.next().map(|(_, v)| v),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    /// Writes to a key space of 16 keys: `None` deletes.
    fn writes() -> impl Strategy<Value = Vec<(u8, Option<u8>)>> {
        prop::collection::vec((0u8..16, prop::option::of(any::<u8>())), 0..24)
    }

    fn write_set(writes: &[(u8, Option<u8>)]) -> WriteSet {
        let mut set = WriteSet::default();
        for &(k, v) in writes {
            match v {
                Some(v) => set.put(&[k], &[v]),
                None => set.delete(&[k]),
            }
        }
        set
    }

    fn apply(model: &mut BTreeMap<Vec<u8>, Vec<u8>>, writes: &[(u8, Option<u8>)]) {
        for &(k, v) in writes {
            match v {
                Some(v) => model.insert(vec![k], vec![v]),
                None => model.remove(&vec![k]),
            };
        }
    }

    proptest! {
        /// sled, then a frozen table over it, then an active one over both, read as a range
        /// and key by key, is the map with every write applied in that order.
        #[test]
        fn the_tables_over_the_store_read_as_the_writes_applied_in_order(
            stored in writes(), older in writes(), newer in writes(),
            start in 0u8..16, len in 0u8..17, limit in 0usize..20,
        ) {
            let mut base = BTreeMap::new();
            apply(&mut base, &stored);
            let mut model = base.clone();
            apply(&mut model, &older);
            apply(&mut model, &newer);

            let mut tables = Tables::default();
            tables.apply(write_set(&older));
            tables.freeze();
            tables.apply(write_set(&newer));

            let end = start.saturating_add(len);
            let (start, end) = (vec![start], vec![end]);
            let from_store = base.range(start.clone()..end.clone()).map(|(k, v)| Ok((k.clone(), v.clone())));
            let got = tables.range(from_store, &start, &end, limit).unwrap();
            let want: Vec<Pair> =
                model.range(start..end).take(limit).map(|(k, v)| (k.clone(), v.clone())).collect();
            prop_assert_eq!(got, want);
            for k in 0u8..16 {
                let read = match tables.lookup(&[k]) {
                    Some(written) => written.map(<[u8]>::to_vec),
                    None => base.get(&vec![k]).cloned(),
                };
                prop_assert_eq!(read, model.get(&vec![k]).cloned());
            }
        }
    }
}
