//! One optimistic transaction on etcd (see the driver's documentation).

use std::collections::HashMap;

use etcd_client::{Compare, CompareOp, GetOptions, Txn, TxnOp, TxnOpResponse};

use super::recent::Seen;
use super::{EtcdKv, MAX_REQUEST_BYTES, MAX_TXN_OPS};
use crate::error::MetaError;
use crate::kv::write_set::WriteSet;
use crate::kv::{KvTxn, Pair, TxError, TxResult};

/// One transaction: the revision its reads are at, what they saw, and what it wrote.
pub(super) struct EtcdTxn<'a> {
    kv: &'a EtcdKv,
    revision: Option<i64>,
    /// Every key read, with its value and mod-revision (0: absent).
    seen: HashMap<Vec<u8>, (i64, Option<Vec<u8>>)>,
    /// Every range scanned, `[start, end)` (without the prefix), and the revision it was
    /// scanned at: the commit requires nothing in it to have changed since.
    ranges: Vec<(Vec<u8>, Vec<u8>, i64)>,
    /// Ranges that hold nothing once the transaction is over: those the body says so of (see
    /// [`KvTxn::known_empty`]), and those it scanned empty and did not write into.
    declared_empty: Vec<(Vec<u8>, Vec<u8>)>,
    scanned_empty: Vec<(Vec<u8>, Vec<u8>, i64)>,
    writes: WriteSet,
    /// Whether reads may be taken from what the client recently saw (see [`super::recent`]):
    /// only for an attempt whose commit checks them.
    seeded: bool,
    /// The keys whose values were taken from there, and the ranges taken as empty.
    from_recent: Vec<Vec<u8>>,
    empty_from_recent: Vec<(Vec<u8>, Vec<u8>)>,
}

impl<'a> EtcdTxn<'a> {
    pub(super) fn new(kv: &'a EtcdKv, seeded: bool) -> Self {
        EtcdTxn {
            kv,
            revision: None,
            seen: HashMap::new(),
            ranges: Vec::new(),
            declared_empty: Vec::new(),
            scanned_empty: Vec::new(),
            writes: WriteSet::default(),
            seeded,
            from_recent: Vec::new(),
            empty_from_recent: Vec::new(),
        }
    }

    /// Whether any value this attempt read came from what the client recently saw.
    pub(super) fn took_recent(&self) -> bool {
        !self.from_recent.is_empty() || !self.empty_from_recent.is_empty()
    }

    /// After a failed attempt: drops what the client knew of the keys it read, so that the
    /// next attempt reads them afresh.
    pub(super) fn forget_reads(&self) {
        self.kv.recent.forget(self.seen.keys());
        for (start, end) in &self.empty_from_recent {
            self.kv.recent.forget_range(start, end);
        }
    }

    fn at_revision(&self, options: GetOptions) -> GetOptions {
        match self.revision {
            Some(rev) => options.with_revision(rev),
            None => options,
        }
    }

    /// Sends reads as one etcd transaction (one round trip, one revision).
    fn fetch(&mut self, gets: Vec<TxnOp>) -> TxResult<Vec<etcd_client::GetResponse>> {
        let mut out = Vec::with_capacity(gets.len());
        let mut remaining = gets;
        while !remaining.is_empty() {
            let rest = remaining.split_off(remaining.len().min(MAX_TXN_OPS));
            tracing::trace!(reads = remaining.len(), at = ?self.revision, "etcd read");
            let response = self.kv.read_txn(Txn::new().and_then(std::mem::replace(&mut remaining, rest)))?;
            if self.revision.is_none() {
                self.revision = response.header().map(|h| h.revision());
            }
            for op in response.op_responses() {
                if let TxnOpResponse::Get(get) = op {
                    out.push(get);
                }
            }
        }
        Ok(out)
    }

    /// Remembers the ranges this transaction found empty and left so, as of when it found them.
    pub(super) fn remember_empty_scans(&self) {
        for (start, end, revision) in &self.scanned_empty {
            if !self.writes.writes.keys().any(|k| start <= k && k < end) {
                self.kv.recent.saw_empty(start, end, *revision);
            }
        }
    }

    /// Commits what the attempt wrote, if nothing it read changed since.
    pub(super) fn commit(&mut self) -> TxResult<()> {
        self.remember_empty_scans();
        if self.writes.writes.is_empty() {
            return Ok(());
        }
        let kv = self.kv;
        let mut compares: Vec<Compare> = self
            .seen
            .iter()
            .map(|(k, (rev, _))| Compare::mod_revision(kv.key(k), CompareOp::Equal, *rev))
            .collect();
        for (start, end, revision) in &self.ranges {
            compares.push(
                Compare::mod_revision(kv.key(start), CompareOp::Less, revision + 1).with_range(kv.key(end)),
            );
        }
        let mut bytes = 0;
        let writes = std::mem::take(&mut self.writes.writes);
        let ops: Vec<TxnOp> = writes
            .iter()
            .map(|(k, v)| {
                bytes += k.len() + v.as_ref().map_or(0, Vec::len) + 16;
                match v {
                    Some(v) => TxnOp::put(kv.key(k), v.clone(), None),
                    None => TxnOp::delete(kv.key(k), None),
                }
            })
            .collect();
        if compares.len() >= MAX_TXN_OPS || ops.len() >= MAX_TXN_OPS || bytes > MAX_REQUEST_BYTES {
            return Err(TxError::Abort(MetaError::Invalid(
                format!(
                    "the operation needs {} reads checked and {} writes ({bytes} bytes) in one etcd \
                     transaction, past etcd's limits of {MAX_TXN_OPS} operations (--max-txn-ops) and \
                     1.5 MiB (--max-request-bytes)",
                    compares.len(),
                    ops.len()
                )
                .into(),
            )));
        }
        match kv.commit(compares, ops)? {
            Some(revision) => {
                for (key, value) in writes {
                    let mod_revision = if value.is_some() { revision } else { 0 };
                    kv.recent.saw(&key, Seen { mod_revision, value }, revision);
                }
                for (start, end) in &self.declared_empty {
                    kv.recent.saw_empty(start, end, revision);
                }
            }
            // Applied, but at a revision this client did not learn.
            None => kv.recent.forget(writes.keys()),
        }
        Ok(())
    }
}

impl KvTxn for EtcdTxn<'_> {
    fn get(&mut self, key: &[u8]) -> TxResult<Option<Vec<u8>>> {
        Ok(self.get_many(&[key.to_vec()])?.pop().flatten())
    }

    fn get_many(&mut self, keys: &[Vec<u8>]) -> TxResult<Vec<Option<Vec<u8>>>> {
        let mut missing: Vec<Vec<u8>> = keys
            .iter()
            .filter(|k| self.writes.get(k).is_none() && !self.seen.contains_key(*k))
            .cloned()
            .collect();
        if self.seeded {
            missing.retain(|k| match self.kv.recent.seed(k) {
                Some(seen) => {
                    self.seen.insert(k.clone(), (seen.mod_revision, seen.value));
                    self.from_recent.push(k.clone());
                    false
                }
                None => true,
            });
        }
        if !missing.is_empty() {
            let gets = missing
                .iter()
                .map(|k| TxnOp::get(self.kv.key(k), Some(self.at_revision(GetOptions::new()))))
                .collect();
            let responses = self.fetch(gets)?;
            let as_of = self.revision.unwrap_or(0);
            for (key, response) in missing.into_iter().zip(responses) {
                let seen = match response.kvs().first() {
                    Some(kv) => Seen { mod_revision: kv.mod_revision(), value: Some(kv.value().to_vec()) },
                    None => Seen { mod_revision: 0, value: None },
                };
                self.kv.recent.saw(&key, seen.clone(), as_of);
                self.seen.insert(key, (seen.mod_revision, seen.value));
            }
        }
        Ok(keys
            .iter()
            .map(|k| match self.writes.get(k) {
                Some(written) => written,
                None => self.seen.get(k).and_then(|(_, v)| v.clone()),
            })
            .collect())
    }

    fn prefetches(&self) -> bool {
        true
    }

    fn prefetch(&mut self, keys: &[Vec<u8>]) -> TxResult<()> {
        self.get_many(keys).map(drop)
    }

    fn hint(&self, key: &[u8]) -> Option<Vec<u8>> {
        match self.writes.get(key) {
            Some(written) => written,
            None => self.kv.recent.hint(key),
        }
    }

    fn known_empty(&mut self, start: &[u8], end: &[u8]) {
        self.declared_empty.push((start.to_vec(), end.to_vec()));
    }

    fn scan(&mut self, start: &[u8], end: &[u8], limit: usize) -> TxResult<Vec<Pair>> {
        if let Some(as_of) = self.seeded.then(|| self.kv.recent.seed_empty(start, end)).flatten() {
            self.ranges.push((start.to_vec(), end.to_vec(), as_of));
            self.empty_from_recent.push((start.to_vec(), end.to_vec()));
            return Ok(self.writes.overlay(Vec::new(), start, end, true, limit));
        }
        let fetch = limit.saturating_add(self.writes.scan_margin(start, end));
        let options = self.at_revision(
            GetOptions::new().with_range(self.kv.key(end)).with_limit(fetch.min(i64::MAX as usize) as i64),
        );
        let response = self.fetch(vec![TxnOp::get(self.kv.key(start), Some(options))])?.pop();
        let prefix = self.kv.prefix.len();
        let stored: Vec<Pair> = response
            .map(|r| r.kvs().iter().map(|kv| (kv.key()[prefix..].to_vec(), kv.value().to_vec())).collect())
            .unwrap_or_default();
        let complete = stored.len() < fetch;
        // Guarded up to where the scan looked: past an incomplete page's last key, later pages
        // guard their own part.
        let guarded_end = match stored.last() {
            Some((last, _)) if !complete => [last.as_slice(), &[0]].concat(),
            _ => end.to_vec(),
        };
        let revision = self.revision.unwrap_or_default();
        if stored.is_empty() {
            self.scanned_empty.push((start.to_vec(), end.to_vec(), revision));
        }
        self.ranges.push((start.to_vec(), guarded_end, revision));
        Ok(self.writes.overlay(stored, start, end, complete, limit))
    }

    fn put(&mut self, key: &[u8], value: &[u8]) {
        self.writes.put(key, value);
    }

    fn delete(&mut self, key: &[u8]) {
        self.writes.delete(key);
    }
}
