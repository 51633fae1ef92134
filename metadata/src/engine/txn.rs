//! One metadata transaction: typed access to the records of [`crate::keys`] over a
//! [`KvTxn`], so that the namespace operations read as the rules they enforce rather than as
//! byte juggling.

use crate::block::{Block, BlockChange};
use crate::error::MetaError;
use crate::keys::{self, Counter, Dentry, Listed};
use crate::kv::{fail, KvTxn, Pair, TxResult};
use crate::session::SessionId;
use crate::store::Unlinked;
use crate::types::{Attr, ChunkHash, FileKind, Ino, Timestamp};

/// Slices one block may have: past this a commit that lays one more is refused (fs-core
/// compacts a block long before; this bounds the record).
pub(crate) const MAX_SLICES: usize = 256;

pub(super) struct Txn<'a> {
    pub(super) kv: &'a mut dyn KvTxn,
    pub(super) block_size: u64,
    /// The session doing the change: an inode it orphans belongs to it, and its counter
    /// changes go to its share.
    pub(super) session: SessionId,
    pub(super) now: Timestamp,
    /// The most blocks (or extended attributes) one transaction may remove (see
    /// [`super::Engine::page`]).
    pub(super) page: usize,
    /// A directory's times are in its record, not in a times key (see [`Kv::single_writer`]).
    pub(super) times_in_record: bool,
    /// This process's pending creates (see [`super::pending`]).
    pub(super) pending: &'a super::pending::PendingCreates,
    /// The pending creates this transaction confirms, forgotten once it commits.
    pub(super) confirmed: &'a mut Vec<Ino>,
}

impl Txn<'_> {
    pub(super) fn get(&mut self, key: &[u8]) -> TxResult<Option<Vec<u8>>> {
        self.kv.get(key)
    }

    pub(super) fn put(&mut self, key: &[u8], value: &[u8]) {
        self.kv.put(key, value)
    }

    pub(super) fn delete(&mut self, key: &[u8]) {
        self.kv.delete(key)
    }

    /// Reads `keys` at once (one round trip on etcd), so that the reads that follow find them.
    pub(super) fn prefetch(&mut self, keys: &[Vec<u8>]) -> TxResult<()> {
        self.kv.prefetch(keys)
    }

    /// Prefetches what adding or removing `name` in `parent` reads: the directory, the entry,
    /// this session's inode count share, and the inode `also` when given.
    pub(super) fn prefetch_entry(&mut self, parent: Ino, name: &[u8], also: Option<Ino>) -> TxResult<()> {
        if !self.kv.prefetches() {
            return Ok(());
        }
        let mut likely =
            vec![Self::inode_key(parent), Self::dentry_key(parent, name), self.share_key(Counter::Inodes)];
        likely.extend(also.map(Self::inode_key));
        self.prefetch(&likely)
    }

    /// Prefetches what a lookup of `name` in `parent` reads: the entry and the inode it named
    /// when this client last saw it, so that a hit on a known name takes one round trip; for
    /// an unknown name, the entry and what a miss needs (the directory and its times).
    pub(super) fn prefetch_lookup(&mut self, parent: Ino, name: &[u8]) -> TxResult<()> {
        if !self.kv.prefetches() {
            return Ok(());
        }
        let entry = Self::dentry_key(parent, name);
        let likely = match self.kv.hint(&entry).and_then(|raw| Dentry::decode(&raw).ok()) {
            Some(named) if named.kind == FileKind::Dir => {
                vec![entry, Self::inode_key(named.ino), keys::numbered(keys::DIR_TIMES, named.ino)]
            }
            Some(named) => vec![entry, Self::inode_key(named.ino)],
            None => vec![entry, Self::inode_key(parent), keys::numbered(keys::DIR_TIMES, parent)],
        };
        self.prefetch(&likely)
    }

    /// The key of an inode's record.
    pub(super) fn inode_key(ino: Ino) -> Vec<u8> {
        keys::numbered(keys::INODE, ino)
    }

    /// The key of a directory entry.
    pub(super) fn dentry_key(parent: Ino, name: &[u8]) -> Vec<u8> {
        keys::numbered_with(keys::DENTRY, parent, name)
    }

    /// The key of this session's share of `counter`.
    pub(super) fn share_key(&self, counter: Counter) -> Vec<u8> {
        counter.share(self.session, keys::share_slot())
    }

    pub(super) fn scan(&mut self, start: &[u8], end: &[u8], limit: usize) -> TxResult<Vec<Pair>> {
        self.kv.scan(start, end, limit)
    }

    /// Every key with `prefix`, up to `limit`.
    pub(super) fn known_empty(&mut self, start: &[u8], end: &[u8]) {
        self.kv.known_empty(start, end)
    }

    pub(super) fn scan_prefix(&mut self, prefix: &[u8], limit: usize) -> TxResult<Vec<Pair>> {
        self.kv.scan(prefix, &crate::kv::prefix_end(prefix), limit)
    }

    pub(super) fn inode(&mut self, ino: Ino) -> TxResult<Attr> {
        match self.get(&keys::numbered_array(keys::INODE, ino))? {
            Some(v) => Ok(Attr::decode(&v)?),
            None => fail(MetaError::NotFound),
        }
    }

    pub(super) fn put_inode(&mut self, attr: &Attr) -> TxResult<()> {
        self.put(&keys::numbered(keys::INODE, attr.ino), &attr.encode());
        Ok(())
    }

    /// A live directory: exists, is a directory and has not been removed.
    pub(super) fn dir(&mut self, ino: Ino) -> TxResult<Attr> {
        let attr = self.inode(ino)?;
        if !attr.is_dir() {
            return fail(MetaError::NotDir);
        }
        if attr.nlink == 0 {
            return fail(MetaError::NotFound);
        }
        Ok(attr)
    }

    pub(super) fn dentry(&mut self, parent: Ino, name: &[u8]) -> TxResult<Option<Dentry>> {
        match self.get(&keys::numbered_with(keys::DENTRY, parent, name))? {
            Some(v) => Ok(Some(Dentry::decode(&v)?)),
            None => Ok(None),
        }
    }

    /// Writes `name -> entry` in `dir`, by name and by cookie.
    pub(super) fn put_entry(&mut self, dir: Ino, name: &[u8], entry: &Dentry) {
        self.put(&keys::numbered_with(keys::DENTRY, dir, name), &entry.encode());
        self.put(&keys::pair(keys::LISTING, dir, entry.cookie), &Listed::encode(entry.ino, entry.kind, name));
    }

    /// Adds `name -> ino` to directory `dir` under `cookie` (see [`super::Engine::new_cookie`]).
    pub(super) fn add_entry(&mut self, dir: Ino, name: &[u8], ino: Ino, kind: FileKind, cookie: u64) {
        self.put_entry(dir, name, &Dentry { ino, kind, cookie });
    }

    /// Removes `name` from directory `dir`.
    pub(super) fn remove_entry(&mut self, dir: Ino, name: &[u8], entry: &Dentry) {
        self.delete(&keys::numbered_with(keys::DENTRY, dir, name));
        self.delete(&keys::pair(keys::LISTING, dir, entry.cookie));
    }

    /// Whether directory `dir` has no entries (a range read: a concurrent create in it
    /// conflicts with this transaction).
    pub(super) fn is_empty_dir(&mut self, dir: Ino) -> TxResult<bool> {
        Ok(self.scan_prefix(&keys::numbered(keys::LISTING, dir), 1)?.is_empty())
    }

    /// Adds `delta` to this session's share of `counter`.
    pub(super) fn add_counter(&mut self, counter: Counter, delta: i64) -> TxResult<()> {
        if delta == 0 {
            return Ok(());
        }
        let key = self.share_key(counter);
        let current = self.get(&key)?.map(|v| keys::decode_u64(&v)).unwrap_or(0);
        // A share may go below zero (a session deletes what another created): kept as the
        // two's complement, so that the sum of the shares stays exact.
        let next = current.wrapping_add_signed(delta);
        self.put(&key, &keys::encode_u64(next));
        Ok(())
    }

    fn chunk_ref(&mut self, hash: &ChunkHash, delta: i64) -> TxResult<()> {
        let key = keys::chunk(keys::CHUNK_REFS, hash);
        let current = self.get(&key)?.map(|v| keys::decode_u64(&v)).unwrap_or(0);
        if current == 0 && delta > 0 {
            self.check_protected(hash)?;
        }
        let next = current.saturating_add_signed(delta);
        if next == 0 {
            self.delete(&key);
            self.put(&keys::chunk(keys::UNREFERENCED, hash), &keys::encode_time(self.now));
        } else {
            if current == 0 {
                self.delete(&keys::chunk(keys::UNREFERENCED, hash));
            }
            self.put(&key, &keys::encode_u64(next));
        }
        Ok(())
    }

    /// Block `index` of `ino`, if it has a record.
    pub(super) fn block(&mut self, ino: Ino, index: u64) -> TxResult<Option<Block>> {
        match self.get(&keys::pair(keys::BLOCK, ino, index))? {
            Some(raw) => Ok(Some(Block::decode(&raw)?)),
            None => Ok(None),
        }
    }

    /// Applies `change` to block `index`. Returns the change in stored bytes, and the block as
    /// it is now if the change laid a slice on it.
    pub(super) fn change_block(
        &mut self,
        ino: Ino,
        index: u64,
        change: &BlockChange,
    ) -> TxResult<(i64, Option<Block>)> {
        let old = self.block(ino, index)?;
        let new = match change {
            BlockChange::Whole(base) => Block::whole(base.clone()),
            BlockChange::Overlay(slice) => {
                if !slice.is_well_formed() {
                    return fail(MetaError::Invalid(
                        "a slice's extents are out of order or outside its chunk".into(),
                    ));
                }
                let mut block = old.clone().unwrap_or_default();
                if block.slices.len() >= MAX_SLICES {
                    return fail(MetaError::Invalid(
                        format!("block {index} of inode {ino} has {MAX_SLICES} slices: compact it first")
                            .into(),
                    ));
                }
                block.slices.push(slice.clone());
                block
            }
        };
        let delta = self.replace_block(ino, index, old.as_ref(), Some(&new))?;
        let layered = matches!(change, BlockChange::Overlay(_)).then_some(new);
        Ok((delta, layered))
    }

    /// Replaces block `index`'s record `old` (as read) with `new` (`None` removes it), keeping
    /// chunk references in step. Returns the change in stored bytes.
    pub(super) fn replace_block(
        &mut self,
        ino: Ino,
        index: u64,
        old: Option<&Block>,
        new: Option<&Block>,
    ) -> TxResult<i64> {
        let key = keys::pair(keys::BLOCK, ino, index);
        match new {
            Some(b) => self.put(&key, &b.encode()),
            None if old.is_some() => self.delete(&key),
            None => {}
        }
        // Only the references that differ: a slice laid on a block with many leaves the
        // others' counts alone.
        let mut refs: Vec<(ChunkHash, i64)> = Vec::new();
        let mut count = |hash: &ChunkHash, delta: i64| match refs.iter_mut().find(|(h, _)| h == hash) {
            Some((_, d)) => *d += delta,
            None => refs.push((*hash, delta)),
        };
        new.iter().flat_map(|b| b.chunks()).for_each(|h| count(h, 1));
        old.iter().flat_map(|b| b.chunks()).for_each(|h| count(h, -1));
        // Gains first: a chunk moving from one reference to another never touches zero.
        refs.sort_by_key(|(_, delta)| std::cmp::Reverse(*delta));
        for (hash, delta) in refs {
            if delta != 0 {
                self.chunk_ref(&hash, delta)?;
            }
        }
        Ok(new.map_or(0, Block::len) as i64 - old.map_or(0, Block::len) as i64)
    }

    /// Removes up to `limit` blocks of `ino` with index `first` or more. Returns the change in
    /// stored bytes and whether blocks remain beyond those removed.
    pub(super) fn drop_blocks_from(&mut self, ino: Ino, first: u64, limit: usize) -> TxResult<(i64, bool)> {
        let start = keys::pair(keys::BLOCK, ino, first);
        let end = keys::numbered(keys::BLOCK, ino.saturating_add(1));
        let found = self.scan(&start, &end, limit.saturating_add(1))?;
        let more = found.len() > limit;
        let mut delta = 0;
        for (key, value) in found.into_iter().take(limit) {
            let index = keys::second_number(&key)?;
            delta += self.replace_block(ino, index, Some(&Block::decode(&value)?), None)?;
        }
        Ok((delta, more))
    }

    /// Removes up to `limit` extended attributes of `ino`; returns whether more remain.
    pub(super) fn drop_xattrs(&mut self, ino: Ino, limit: usize) -> TxResult<bool> {
        let found = self.scan_prefix(&keys::numbered(keys::XATTR, ino), limit.saturating_add(1))?;
        let more = found.len() > limit;
        for (key, _) in found.into_iter().take(limit) {
            self.delete(&key);
        }
        Ok(more)
    }

    /// Whether removing `attr` fits in this transaction (see [`Txn::remove_inode`]).
    pub(super) fn removal_fits(&self, attr: &Attr) -> bool {
        attr.size.div_ceil(self.block_size) < self.page as u64
    }

    /// Drops a name's hold on `attr` (already loaded). When that was the last name the inode
    /// is removed if it is the caller's `closed` one and small enough to go in this
    /// transaction, else kept as an orphan (for [`crate::MetaStore::purge`]).
    pub(super) fn drop_link(&mut self, mut attr: Attr, closed: Option<Ino>) -> TxResult<Unlinked> {
        attr.nlink = attr.nlink.saturating_sub(1);
        attr.ctime = self.now;
        let last = attr.nlink == 0;
        let purged = last && closed == Some(attr.ino) && self.removal_fits(&attr);
        if purged && self.remove_inode(&attr)? {
            return Ok(Unlinked { attr, orphaned: false, purged: true, dir: None });
        }
        self.put_inode(&attr)?;
        if last {
            self.put(&keys::numbered(keys::ORPHAN, attr.ino), &keys::encode_u64(self.session));
        }
        Ok(Unlinked { attr, orphaned: last, purged: false, dir: None })
    }

    /// Deletes a file with no names left: its blocks, extended attributes, record and orphan
    /// entry. Returns false, changing nothing, if it has more blocks or attributes than one
    /// transaction may remove (the caller removes it in steps, see
    /// [`super::Engine::purge_in_steps`]).
    pub(super) fn remove_inode(&mut self, attr: &Attr) -> TxResult<bool> {
        // An empty file has no blocks (a truncate drops those past the end): one read fewer.
        let blocks = if attr.size == 0 && attr.stored == 0 {
            Vec::new()
        } else {
            self.scan(
                &keys::numbered(keys::BLOCK, attr.ino),
                &keys::numbered(keys::BLOCK, attr.ino + 1),
                self.page + 1,
            )?
        };
        let xattrs = self.scan_prefix(&keys::numbered(keys::XATTR, attr.ino), self.page + 1)?;
        if blocks.len() > self.page || xattrs.len() > self.page {
            return Ok(false);
        }
        let (delta, _) =
            if blocks.is_empty() { (0, false) } else { self.drop_blocks_from(attr.ino, 0, self.page)? };
        for (key, _) in &xattrs {
            self.delete(key);
        }
        self.add_counter(Counter::Bytes, delta)?;
        self.add_counter(Counter::Inodes, -1)?;
        self.delete(&keys::numbered(keys::INODE, attr.ino));
        self.delete(&keys::numbered(keys::SYMLINK, attr.ino));
        self.delete(&keys::numbered(keys::DIR_TIMES, attr.ino));
        self.delete(&keys::numbered(keys::ORPHAN, attr.ino));
        Ok(true)
    }

    /// Deletes an empty directory's inode; returns false if it has more extended attributes
    /// than this transaction may remove, in which case it becomes an orphan for
    /// [`super::Engine::purge_in_steps`] to remove.
    pub(super) fn delete_dir(&mut self, attr: &Attr) -> TxResult<bool> {
        if self.remove_inode(attr)? {
            return Ok(true);
        }
        let mut gone = attr.clone();
        gone.nlink = 0;
        gone.ctime = self.now;
        self.put_inode(&gone)?;
        self.put(&keys::numbered(keys::ORPHAN, attr.ino), &keys::encode_u64(self.session));
        Ok(false)
    }

    pub(super) fn touch(&self, attr: &mut Attr) {
        attr.mtime = self.now;
        attr.ctime = self.now;
    }

    /// Directory `dir`, which this transaction marked changed, as a getattr shows it right
    /// after the commit.
    pub(super) fn dir_as_changed(&mut self, dir: Ino) -> TxResult<Attr> {
        let mut attr = self.inode(dir)?;
        if !self.times_in_record {
            attr.mtime = attr.mtime.max(self.now);
            attr.ctime = attr.ctime.max(self.now);
        }
        Ok(attr)
    }

    /// Marks directory `dir` changed by an entry added or removed: its mtime and ctime become
    /// now. Where transactions can conflict, by a blind write of its times key (see
    /// [`crate::keys`]), so that changes in one directory do not all conflict on its record.
    pub(super) fn mark_dir_changed(&mut self, dir: Ino) -> TxResult<()> {
        if self.times_in_record {
            let mut attr = self.inode(dir)?;
            self.touch(&mut attr);
            return self.put_inode(&attr);
        }
        self.put(&keys::numbered(keys::DIR_TIMES, dir), &keys::encode_time(self.now));
        Ok(())
    }

    /// An inode's attributes as users see them: a directory's times include its times key.
    /// For reads that a transaction does not depend on to write: a mutation that reads this
    /// conflicts with every create and unlink in the directory.
    pub(super) fn attr(&mut self, ino: Ino) -> TxResult<Attr> {
        self.attr_maybe_dir(ino, true)
    }

    /// [`Self::attr`] of an inode an entry says is of `kind`: only a directory has a times key
    /// to fetch with its record.
    pub(super) fn attr_of(&mut self, ino: Ino, kind: FileKind) -> TxResult<Attr> {
        self.attr_maybe_dir(ino, kind == FileKind::Dir)
    }

    fn attr_maybe_dir(&mut self, ino: Ino, maybe_dir: bool) -> TxResult<Attr> {
        if self.kv.prefetches() {
            let mut likely = vec![Self::inode_key(ino)];
            if maybe_dir {
                likely.push(keys::numbered(keys::DIR_TIMES, ino));
            }
            self.prefetch(&likely)?;
        }
        let mut attr = self.inode(ino)?;
        if attr.is_dir() && !self.times_in_record {
            if let Some(raw) = self.get(&keys::numbered(keys::DIR_TIMES, ino))? {
                let changed = keys::decode_time(&raw)?;
                attr.mtime = attr.mtime.max(changed);
                attr.ctime = attr.ctime.max(changed);
            }
        }
        Ok(attr)
    }
}
