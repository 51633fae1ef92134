//! The audit behind `elasticfs fsck`: every record recounted from one state of the store (a
//! driver's snapshot: one revision of etcd, or sled with commits held off meanwhile), see
//! [`crate::MetaStore::audit`].

use std::collections::{BTreeMap, HashMap, HashSet};

use super::txn::Txn;
use super::Engine;
use crate::audit::{Audit, Finding};
use crate::block::Block;
use crate::error::MetaResult;
use crate::keys::{self, Counter, Dentry, Listed};
use crate::kv::{Kv, Pair, TxResult};
use crate::types::{Attr, ChunkHash, FileKind, Ino, Usage, ROOT_INO};

/// What the records say about one inode.
struct Seen {
    attr: Attr,
    /// Names that refer to it.
    names: u32,
    /// Directories only: subdirectories, and the directory that names it.
    subdirs: u32,
    named_in: Option<Ino>,
    /// Bytes of its blocks within its size.
    stored: u64,
}

impl<K: Kv> Engine<K> {
    pub(super) fn audit_records(&self) -> MetaResult<Audit> {
        let block_size = self.shared.superblock.block_size as u64;
        self.snapshot(|t| audit_in(t, block_size))
    }
}

fn all(t: &mut Txn, kind: u8) -> TxResult<Vec<Pair>> {
    t.scan_whole(&[kind])
}

fn audit_in(t: &mut Txn, block_size: u64) -> TxResult<Audit> {
    let mut audit = Audit {
        counters: Usage {
            bytes: t.counter_total(Counter::Bytes)?,
            inodes: t.counter_total(Counter::Inodes)?,
        },
        ..Audit::default()
    };

    let mut inodes: BTreeMap<Ino, Seen> = BTreeMap::new();
    for (_, value) in all(t, keys::INODE)? {
        let attr = Attr::decode(&value)?;
        inodes.insert(attr.ino, Seen { attr, names: 0, subdirs: 0, named_in: None, stored: 0 });
    }

    // The listing index, to match against the entries (two scans, no point reads).
    let mut listing: HashMap<(Ino, u64), Vec<u8>> = HashMap::new();
    for (key, value) in all(t, keys::LISTING)? {
        let listed = Listed::decode(&value)?;
        listing.insert((keys::first_number(&key)?, keys::second_number(&key)?), listed.name);
    }
    for (key, value) in all(t, keys::DENTRY)? {
        let (parent, name) = (keys::first_number(&key)?, &key[9..]);
        let entry = Dentry::decode(&value)?;
        if listing.remove(&(parent, entry.cookie)).as_deref() != Some(name) {
            audit.add(Finding::ListingIndex { parent, cookie: entry.cookie, name: name.to_vec() });
        }
        let parent_is_dir = inodes.get(&parent).is_some_and(|p| p.attr.kind == FileKind::Dir);
        let Some(child) = inodes.get_mut(&entry.ino).filter(|_| parent_is_dir) else {
            audit.add(Finding::DanglingEntry { parent, name: name.to_vec(), ino: entry.ino });
            continue;
        };
        child.names += 1;
        let child_is_dir = child.attr.kind == FileKind::Dir;
        if child_is_dir {
            child.named_in = Some(parent);
        }
        if child_is_dir {
            inodes.get_mut(&parent).expect("checked above").subdirs += 1;
        }
    }
    // Listing entries no entry claims.
    let mut unclaimed: Vec<_> = listing.into_iter().collect();
    unclaimed.sort();
    for ((parent, cookie), name) in unclaimed {
        audit.add(Finding::ListingIndex { parent, cookie, name });
    }

    let mut refs: HashMap<ChunkHash, u64> = HashMap::new();
    let mut stray: BTreeMap<Ino, u64> = BTreeMap::new();
    let mut past_end: BTreeMap<Ino, u64> = BTreeMap::new();
    for (key, value) in all(t, keys::BLOCK)? {
        let (ino, index) = (keys::first_number(&key)?, keys::second_number(&key)?);
        let Some(seen) = inodes.get_mut(&ino) else {
            *stray.entry(ino).or_default() += 1;
            continue;
        };
        if index.saturating_mul(block_size) >= seen.attr.size {
            *past_end.entry(ino).or_default() += 1;
            continue;
        }
        let block = Block::decode(&value)?;
        seen.stored += block.len();
        audit.blocks += 1;
        audit.slices += block.slices.len() as u64;
        for hash in block.chunks() {
            *refs.entry(*hash).or_default() += 1;
        }
    }
    for (ino, count) in stray {
        audit.add(Finding::StrayRecords { ino, what: "blocks".into(), count });
    }
    for (ino, count) in past_end {
        audit.add(Finding::BlocksPastEnd { ino, count });
    }
    for (what, kind) in [
        ("extended attributes", keys::XATTR),
        ("symlink targets", keys::SYMLINK),
        ("directory times", keys::DIR_TIMES),
    ] {
        let mut stray: BTreeMap<Ino, u64> = BTreeMap::new();
        for (key, _) in all(t, kind)? {
            let ino = keys::first_number(&key)?;
            if !inodes.contains_key(&ino) {
                *stray.entry(ino).or_default() += 1;
            }
        }
        for (ino, count) in stray {
            audit.add(Finding::StrayRecords { ino, what: what.into(), count });
        }
    }

    let mut orphans = HashSet::new();
    for (key, _) in all(t, keys::ORPHAN)? {
        let ino = keys::first_number(&key)?;
        if inodes.get(&ino).is_none_or(|s| s.names > 0) {
            audit.add(Finding::StaleOrphan { ino });
        }
        orphans.insert(ino);
    }

    for (&ino, seen) in &inodes {
        let attr = &seen.attr;
        audit.counted.inodes += 1;
        audit.counted.bytes += seen.stored;
        let is_dir = attr.kind == FileKind::Dir;
        let links = if is_dir { 2 + seen.subdirs } else { seen.names };
        if ino != ROOT_INO && seen.names == 0 && !orphans.contains(&ino) {
            audit.add(Finding::Unreachable { ino });
        } else if attr.nlink != links && !(seen.names == 0 && attr.nlink == 0) {
            audit.add(Finding::LinkCount { ino, stored: attr.nlink, counted: links });
        }
        if is_dir {
            let named_in = if ino == ROOT_INO { ROOT_INO } else { seen.named_in.unwrap_or(attr.parent) };
            if attr.parent != named_in {
                audit.add(Finding::DirParent { ino, stored: attr.parent, counted: named_in });
            }
        }
        if attr.stored != seen.stored {
            audit.add(Finding::StoredBytes { ino, stored: attr.stored, counted: seen.stored });
        }
    }

    let unreferenced: HashSet<ChunkHash> =
        all(t, keys::UNREFERENCED)?.iter().map(|(k, _)| keys::chunk_hash(k)).collect::<MetaResult<_>>()?;
    for (key, value) in all(t, keys::CHUNK_REFS)? {
        let hash = keys::chunk_hash(&key)?;
        let stored = keys::decode_u64(&value);
        let counted = refs.remove(&hash).unwrap_or(0);
        if stored != counted {
            audit.add(Finding::ChunkRefs { hash, stored, counted });
        }
        if counted > 0 && unreferenced.contains(&hash) {
            audit.add(Finding::ReferencedButListedUnreferenced { hash });
        }
        audit.chunks += u64::from(counted > 0);
    }
    for (hash, counted) in refs {
        audit.add(Finding::ChunkRefs { hash, stored: 0, counted });
        audit.chunks += 1;
    }

    for (name, stored, counted) in [
        ("bytes", audit.counters.bytes, audit.counted.bytes),
        ("inodes", audit.counters.inodes, audit.counted.inodes),
    ] {
        if stored != counted {
            audit.add(Finding::Counter { name: name.into(), stored, counted });
        }
    }
    Ok(audit)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::{BlockChange, BlockRef, Slice};
    use crate::store::{BlockCommit, MetaStore, NewNode};
    use crate::types::Superblock;
    use crate::SledStore;

    /// A store with a directory, a file with two names whose chunk another file shares, a
    /// symlink and an unlinked-but-open file.
    fn populated() -> (tempfile::TempDir, SledStore, Ino, ChunkHash) {
        let dir = tempfile::tempdir().unwrap();
        let sb = Superblock::new("t", 65536, 1024, "memory://");
        let s = SledStore::format(&dir.path().join("meta"), &sb, 0, 0).unwrap();
        let d = s.create(&NewNode::new(ROOT_INO, b"d", FileKind::Dir, 0o755)).unwrap().ino;
        let f = s.create(&NewNode::new(d, b"f", FileKind::File, 0o644)).unwrap().ino;
        s.link(f, ROOT_INO, b"f-again").unwrap();
        let link = NewNode {
            link_target: b"d/f".to_vec(),
            ..NewNode::new(ROOT_INO, b"l", FileKind::Symlink, 0o777)
        };
        s.create(&link).unwrap();
        let hash = [7u8; 32];
        for (ino, tail) in
            [(f, true), (s.create(&NewNode::new(d, b"copy", FileKind::File, 0o644)).unwrap().ino, false)]
        {
            s.protect_chunk(&hash).unwrap();
            let mut blocks = vec![(0, BlockChange::Whole(BlockRef::Chunk { hash, len: 65536 }))];
            if tail {
                blocks.push((1, BlockChange::Whole(BlockRef::Inline(vec![1; 10]))));
                // A slice over the shared block, whose chunk holds the file's own bytes.
                let own = [7; 32];
                s.protect_chunk(&own).unwrap();
                let slice =
                    Slice { hash: own, chunk_len: 100, chunk_offset: 0, extents: vec![(10, 100)], level: 0 };
                s.commit_blocks(
                    ino,
                    &BlockCommit {
                        blocks: vec![(0, BlockChange::Overlay(slice))],
                        release: vec![own],
                        ..Default::default()
                    },
                )
                .unwrap();
            }
            let min_size = if tail { 65546 } else { 65536 };
            s.commit_blocks(
                ino,
                &BlockCommit { blocks, min_size, release: vec![hash], ..Default::default() },
            )
            .unwrap();
        }
        let open = s.create(&NewNode::new(ROOT_INO, b"open", FileKind::File, 0o644)).unwrap().ino;
        assert!(s.unlink(ROOT_INO, b"open", None).unwrap().orphaned, "kept as an orphan: {open}");
        (dir, s, f, hash)
    }

    #[test]
    fn a_consistent_store_audits_clean() {
        let (_dir, s, _, _) = populated();
        let audit = s.audit().unwrap();
        assert!(audit.is_clean(), "{:?}", audit.findings);
        assert_eq!(audit.counted, audit.counters);
        assert_eq!(audit.counted, Usage { bytes: 2 * 65536 + 10, inodes: 6 });
        assert_eq!((audit.blocks, audit.chunks), (3, 1));
    }

    #[test]
    fn every_kind_of_damage_is_found_with_its_repair() {
        let (_dir, s, f, hash) = populated();
        let t = s.kv().settled_tree();
        for share in t.scan_prefix(Counter::Bytes.prefix()).keys() {
            t.remove(share.unwrap()).unwrap();
        }
        t.insert(Counter::Bytes.share(0, 0), &keys::encode_u64(1)).unwrap();
        t.insert(keys::chunk(keys::CHUNK_REFS, &hash), &keys::encode_u64(5)).unwrap();
        let mut attr = s.getattr(f).unwrap();
        attr.nlink = 7;
        attr.stored = 3;
        t.insert(keys::numbered(keys::INODE, f), attr.encode()).unwrap();
        let symlink = s.lookup(ROOT_INO, b"l").unwrap().ino;
        t.remove(keys::numbered(keys::INODE, symlink)).unwrap();
        t.insert(keys::pair(keys::BLOCK, 999, 0), Block::whole(BlockRef::Inline(vec![1])).encode()).unwrap();
        t.insert(keys::pair(keys::BLOCK, f, 9), Block::whole(BlockRef::Inline(vec![1])).encode()).unwrap();

        let audit = s.audit().unwrap();
        let want = [
            Finding::Counter { name: "bytes".into(), stored: 1, counted: 2 * 65536 + 10 },
            Finding::Counter { name: "inodes".into(), stored: 6, counted: 5 },
            Finding::ChunkRefs { hash, stored: 5, counted: 2 },
            Finding::LinkCount { ino: f, stored: 7, counted: 2 },
            Finding::StoredBytes { ino: f, stored: 3, counted: 65546 },
            Finding::DanglingEntry { parent: ROOT_INO, name: b"l".to_vec(), ino: symlink },
            Finding::StrayRecords { ino: symlink, what: "symlink targets".into(), count: 1 },
            Finding::StrayRecords { ino: 999, what: "blocks".into(), count: 1 },
            Finding::BlocksPastEnd { ino: f, count: 1 },
        ];
        for finding in &want {
            assert!(audit.findings.contains(finding), "missing {finding:?} in {:#?}", audit.findings);
            assert!(finding.to_string().contains(": would "), "{finding}");
        }
        assert_eq!(audit.findings.len(), want.len(), "{:#?}", audit.findings);
    }
}
