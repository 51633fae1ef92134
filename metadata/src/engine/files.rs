//! Block maps: commits, truncation and the removal of files, in steps where a store limits
//! the size of one transaction. Each step leaves a consistent file system: a truncate goes
//! down through smaller truncates, a commit places its blocks a page at a time (the size
//! following the blocks placed), and a removal takes a page of blocks off an inode that has
//! no names left. A client that dies between steps leaves a file that a retry, the orphan
//! sweep or a new write finishes.

use super::txn::Txn;
use super::Engine;
use crate::block::{BlockChange, Compaction};
use crate::error::{MetaError, MetaResult};
use crate::keys::{self, Counter};
use crate::kv::{fail, Kv, TxResult};
use crate::store::{BlockCommit, Committed};
use crate::types::{Attr, ChunkHash, FileKind, Ino};

impl Txn<'_> {
    fn file(&mut self, ino: Ino) -> TxResult<Attr> {
        let attr = self.inode(ino)?;
        if attr.kind != FileKind::File {
            return fail(MetaError::Invalid("block map of a non-regular file".into()));
        }
        Ok(attr)
    }
}

impl<K: Kv> Engine<K> {
    pub(super) fn commit_blocks_in(&self, ino: Ino, commit: &BlockCommit) -> MetaResult<Committed> {
        let page = self.page();
        if let Some(size) = commit.truncate {
            self.truncate_down_to_one_page(ino, size)?;
        }
        let pages: Vec<&[(u64, BlockChange)]> =
            if commit.blocks.is_empty() { vec![&[]] } else { commit.blocks.chunks(page).collect() };
        let mut unreleased = commit.release.clone();
        let block_size = self.shared.superblock.block_size as u64;
        let mut attr = None;
        let mut layered = Vec::new();
        for (n, blocks) in pages.iter().enumerate() {
            let last = n + 1 == pages.len();
            // Intents go with the page that references their chunks; the rest with the last.
            let release: Vec<ChunkHash> =
                if last { std::mem::take(&mut unreleased) } else { take_used(&mut unreleased, blocks) };
            let min_size = if last {
                commit.min_size
            } else {
                let end = blocks.iter().map(|(i, _)| (i + 1) * block_size).max().unwrap_or(0);
                commit.min_size.min(end)
            };
            let truncate = if n == 0 { commit.truncate } else { None };
            let (page_attr, page_layered) = self.mutate(|t| {
                let mut likely = vec![Txn::inode_key(ino), t.share_key(Counter::Bytes)];
                likely.extend(blocks.iter().map(|(i, _)| keys::pair(keys::BLOCK, ino, *i)));
                t.prefetch(&likely)?;
                let mut attr = t.file(ino)?;
                // A close's commit, and a truncate (a setattr), confirm a pending create.
                if last && (commit.confirms_create || commit.truncate.is_some()) {
                    t.confirm_create(ino);
                }
                let mut delta = 0i64;
                if let Some(size) = truncate {
                    let keep = size.div_ceil(t.block_size);
                    let (dropped, more) = t.drop_blocks_from(ino, keep, t.page)?;
                    if more {
                        // Written meanwhile past the new end: go round again.
                        return Err(crate::kv::TxError::Conflict);
                    }
                    delta += dropped;
                    attr.size = size;
                }
                let mut layered = Vec::new();
                for (index, change) in blocks.iter() {
                    let (changed, now) = t.change_block(ino, *index, change)?;
                    delta += changed;
                    layered.extend(now.map(|block| (*index, block)));
                }
                for hash in &release {
                    t.release_intent(hash)?;
                }
                attr.size = attr.size.max(min_size);
                attr.stored = attr.stored.saturating_add_signed(delta);
                if let Some(mtime) = commit.mtime {
                    attr.mtime = mtime;
                    attr.ctime = mtime.max(t.now);
                }
                t.put_inode(&attr)?;
                t.add_counter(Counter::Bytes, delta)?;
                Ok((attr, layered))
            })?;
            attr = Some(page_attr);
            layered.extend(page_layered);
        }
        Ok(Committed { attr: attr.expect("at least one page"), layered })
    }

    pub(super) fn compact_block_in(&self, c: &Compaction) -> MetaResult<bool> {
        if c.now.len() != c.was.len() {
            return Err(MetaError::Invalid("a compaction must keep the block's length".into()));
        }
        self.mutate(|t| {
            let applied = match t.block(c.ino, c.index)? {
                Some(current) if current.base == c.was.base && current.slices.starts_with(&c.was.slices) => {
                    let mut now = c.now.clone();
                    now.slices.extend_from_slice(&current.slices[c.was.slices.len()..]);
                    // Lengths are equal (checked above), so the inode's stored bytes stay.
                    t.replace_block(c.ino, c.index, Some(&current), Some(&now))?;
                    true
                }
                // Changed meanwhile (a new base, a truncate, a removal): the compaction's work
                // is left to garbage collection.
                _ => false,
            };
            for hash in &c.release {
                t.release_intent(hash)?;
            }
            Ok(applied)
        })
    }

    /// Brings the file down, a page of blocks at a time from its end, until what a truncate
    /// to `size` drops fits in one transaction. Each step is a truncate of its own.
    fn truncate_down_to_one_page(&self, ino: Ino, size: u64) -> MetaResult<()> {
        let page = self.page();
        let keep = size.div_ceil(self.shared.superblock.block_size as u64);
        loop {
            // Where the last page of blocks past the new end starts, if there is more than one.
            let beyond: Vec<u64> = self
                .scan_range_all(&keys::pair(keys::BLOCK, ino, keep), &keys::numbered(keys::BLOCK, ino + 1))?
                .iter()
                .map(|(k, _)| keys::second_number(k))
                .collect::<MetaResult<_>>()?;
            if beyond.len() <= page {
                return Ok(());
            }
            let from = beyond[beyond.len() - page];
            self.mutate(|t| {
                let mut attr = t.file(ino)?;
                let (delta, _) = t.drop_blocks_from(ino, from, page)?;
                attr.size = attr.size.min(from * t.block_size).max(size);
                attr.stored = attr.stored.saturating_add_signed(delta);
                attr.mtime = t.now;
                attr.ctime = t.now;
                t.put_inode(&attr)?;
                t.add_counter(Counter::Bytes, delta)
            })?;
        }
    }

    /// Removes an inode that has no names left, a page of blocks and attributes at a time
    /// when it does not fit in one transaction.
    pub(super) fn purge_in_steps(&self, ino: Ino) -> MetaResult<()> {
        loop {
            let done = self.mutate(|t| {
                let orphan = keys::numbered(keys::ORPHAN, ino);
                let mut attr = match t.inode(ino) {
                    Ok(attr) => attr,
                    Err(crate::kv::TxError::Abort(MetaError::NotFound)) => {
                        t.delete(&orphan);
                        return Ok(true);
                    }
                    Err(e) => return Err(e),
                };
                if attr.nlink > 0 {
                    // Linked again since it was orphaned: nothing to purge.
                    t.delete(&orphan);
                    return Ok(true);
                }
                if t.remove_inode(&attr)? {
                    return Ok(true);
                }
                let (delta, _) = t.drop_blocks_from(ino, 0, t.page)?;
                if delta == 0 {
                    t.drop_xattrs(ino, t.page)?;
                }
                attr.stored = attr.stored.saturating_add_signed(delta);
                t.put_inode(&attr)?;
                t.add_counter(Counter::Bytes, delta)?;
                Ok(false)
            })?;
            if done {
                return Ok(());
            }
        }
    }
}

/// Takes from `unreleased` one intent for each chunk that `blocks` reference.
fn take_used(unreleased: &mut Vec<ChunkHash>, blocks: &[(u64, BlockChange)]) -> Vec<ChunkHash> {
    let mut taken = Vec::new();
    for (_, change) in blocks {
        let hash = match change {
            BlockChange::Whole(base) => base.chunk(),
            BlockChange::Overlay(slice) => Some(&slice.hash),
        };
        if let Some(at) = hash.and_then(|hash| unreleased.iter().position(|h| h == hash)) {
            taken.push(unreleased.swap_remove(at));
        }
    }
    taken
}
