//! What a transaction has written and not yet committed: its reads see it first.

use std::collections::BTreeMap;
use std::ops::Bound;

use super::Pair;

#[derive(Default)]
pub(super) struct WriteSet {
    /// `None` is a deletion.
    pub(super) writes: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
}

impl WriteSet {
    /// `Some(value)` if this transaction wrote the key (`Some(None)`: deleted it).
    pub(super) fn get(&self, key: &[u8]) -> Option<Option<Vec<u8>>> {
        self.writes.get(key).cloned()
    }

    pub(super) fn put(&mut self, key: &[u8], value: &[u8]) {
        self.writes.insert(key.to_vec(), Some(value.to_vec()));
    }

    pub(super) fn delete(&mut self, key: &[u8]) {
        self.writes.insert(key.to_vec(), None);
    }

    fn in_range<'a>(
        &'a self,
        start: &[u8],
        end: &[u8],
    ) -> impl Iterator<Item = (&'a Vec<u8>, &'a Option<Vec<u8>>)> + 'a {
        self.writes.range::<[u8], _>((Bound::Included(start), Bound::Excluded(end)))
    }

    /// How many more pairs a scan of the store must fetch so that, after this transaction's
    /// deletions hide some, `limit` remain.
    pub(super) fn scan_margin(&self, start: &[u8], end: &[u8]) -> usize {
        self.in_range(start, end).filter(|(_, v)| v.is_none()).count()
    }

    /// Lays this transaction's writes over `stored` (a scan of the store from `start`, in key
    /// order, of which `complete` says whether it reached `end`), keeping `limit` pairs.
    pub(super) fn overlay(
        &self,
        stored: Vec<Pair>,
        start: &[u8],
        end: &[u8],
        complete: bool,
        limit: usize,
    ) -> Vec<Pair> {
        // Past the last stored key of an incomplete scan, the store may hold keys not fetched:
        // writes beyond it are left for the next page.
        let horizon = if complete { None } else { stored.last().map(|(k, _)| k.clone()) };
        let mut merged: BTreeMap<Vec<u8>, Vec<u8>> = stored.into_iter().collect();
        for (key, value) in self.in_range(start, end) {
            if horizon.as_ref().is_some_and(|h| key > h) {
                break;
            }
            match value {
                Some(v) => merged.insert(key.clone(), v.clone()),
                None => merged.remove(key),
            };
        }
        merged.into_iter().take(limit).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(keys: &[&str]) -> Vec<Pair> {
        keys.iter().map(|k| (k.as_bytes().to_vec(), b"s".to_vec())).collect()
    }

    #[test]
    fn writes_and_deletions_lay_over_a_scan() {
        let mut w = WriteSet::default();
        w.put(b"b", b"w");
        w.delete(b"c");
        w.put(b"z", b"w");
        let out = w.overlay(pairs(&["a", "c", "d"]), b"a", b"y", true, 10);
        let keys: Vec<_> = out.iter().map(|(k, _)| k.as_slice()).collect();
        assert_eq!(keys, [b"a".as_slice(), b"b", b"d"]);
        assert_eq!(w.scan_margin(b"a", b"y"), 1);
    }

    #[test]
    fn an_incomplete_scan_keeps_writes_beyond_its_last_key_for_the_next_page() {
        let mut w = WriteSet::default();
        w.put(b"e", b"w");
        let out = w.overlay(pairs(&["a", "c"]), b"a", b"z", false, 10);
        assert_eq!(out.len(), 2);
        let out = w.overlay(pairs(&["a", "c"]), b"a", b"z", true, 10);
        assert_eq!(out.len(), 3);
    }
}
