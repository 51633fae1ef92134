//! The embedded metadata engine: the schema of [`crate::schema`] on sled 0.34 (the last
//! release with cross-tree transactions). Every mutation is one transaction over the trees it
//! touches, followed by a group-committed flush, so it is durable when it returns.

mod audit;
mod chunks;
mod sessions;
mod throughput;
mod txn;

use std::path::Path;
use std::sync::{Arc, RwLock};

use sled::transaction::Transactional;
use tracing::instrument;

use crate::audit::Audit;
use crate::durability::GroupCommit;
use crate::error::{MetaError, MetaResult};
use crate::locks::{LockRecord, LockRequest};
use crate::schema::{self, Dentry};
use crate::session::{SessionId, SessionRecord};
use crate::store::{
    BlockCommit, ChunkProtection, MetaStore, NewNode, Rename, RenameMode, Unlinked, XattrMode,
};
use crate::throughput::{Lease, LeaseRequest, ThroughputSettings, ThroughputStatus};
use crate::types::{
    Attr, BlockRef, ChunkHash, DirEntry, FileKind, Ino, SetAttr, Superblock, Timestamp, Usage,
    FORMAT_VERSION, MAX_NAME_LEN, ROOT_INO,
};
use txn::{fail, TxResult, Txn};

const S_ISGID: u16 = 0o2000;
/// The session of a store opened without one: tools (`format`, `status`, `fsck`). Orphans it
/// made would belong to no session and are reclaimed by the next embedded mount.
const NO_SESSION: SessionId = 0;
/// Cookies 1 and 2 are `.` and `..`; entries start after them.
const FIRST_COOKIE: u64 = 3;

/// The trees of the schema (see [`crate::schema`]).
struct Trees {
    inodes: sled::Tree,
    dentries: sled::Tree,
    cookies: sled::Tree,
    blocks: sled::Tree,
    symlinks: sled::Tree,
    chunk_refs: sled::Tree,
    unreferenced: sled::Tree,
    intents: sled::Tree,
    condemned: sled::Tree,
    xattrs: sled::Tree,
    orphans: sled::Tree,
    counters: sled::Tree,
    sessions: sled::Tree,
    locks: sled::Tree,
}

impl Trees {
    fn open(db: &sled::Db) -> MetaResult<Self> {
        Ok(Trees {
            inodes: db.open_tree("inodes")?,
            dentries: db.open_tree("dentries")?,
            cookies: db.open_tree("cookies")?,
            blocks: db.open_tree("blocks")?,
            symlinks: db.open_tree("symlinks")?,
            chunk_refs: db.open_tree("chunk_refs")?,
            unreferenced: db.open_tree("unreferenced")?,
            intents: db.open_tree("intents")?,
            condemned: db.open_tree("condemned")?,
            xattrs: db.open_tree("xattrs")?,
            orphans: db.open_tree("orphans")?,
            counters: db.open_tree("counters")?,
            sessions: db.open_tree("sessions")?,
            locks: db.open_tree("locks")?,
        })
    }
}

/// One open store: shared by every session that works on it.
struct Shared {
    db: sled::Db,
    trees: Trees,
    superblock: Superblock,
    durable: GroupCommit,
    throughput: throughput::Throughput,
    /// Every transaction holds the read side; an audit holds the write side, so that it
    /// recounts one state of the records.
    audit_gate: RwLock<()>,
}

/// The embedded engine, as seen by one session (see [`SledStore::session`]). Cloning is cheap
/// and shares the open store.
#[derive(Clone)]
pub struct SledStore {
    shared: Arc<Shared>,
    session: SessionId,
}

impl SledStore {
    /// Creates a new file system's metadata at `path` with a root directory owned by
    /// `root_uid:root_gid`. Refuses a store that is already formatted.
    pub fn format(path: &Path, superblock: &Superblock, root_uid: u32, root_gid: u32) -> MetaResult<Self> {
        let db = open_db(path)?;
        let meta = db.open_tree("superblock")?;
        if meta.get(schema::SUPERBLOCK_KEY)?.is_some() {
            return Err(MetaError::Format(format!(
                "{} already holds a formatted file system; mount it, or choose an empty directory",
                path.display()
            )));
        }
        let store = Self::with_db(db, superblock.clone())?;
        let now = Timestamp::now();
        let root = Attr {
            ino: ROOT_INO,
            kind: FileKind::Dir,
            perm: 0o755,
            uid: root_uid,
            gid: root_gid,
            size: 0,
            stored: 0,
            nlink: 2,
            atime: now,
            mtime: now,
            ctime: now,
            crtime: now,
            rdev: 0,
            generation: 0,
            parent: ROOT_INO,
            entries: 0,
            next_cookie: FIRST_COOKIE,
        };
        store.mutate(|t| {
            t.put_inode(&root)?;
            t.add_counter(schema::INODES_COUNTER, 1)
        })?;
        write_superblock(&store.shared.db, superblock)?;
        store.shared.durable.wait_durable()?;
        Ok(store)
    }

    /// Opens an existing store, refusing one written by a newer format.
    pub fn open(path: &Path) -> MetaResult<Self> {
        if !Self::exists(path) {
            return Err(MetaError::Format(format!(
                "no file system at {}: run `elasticfs format` first",
                path.display()
            )));
        }
        let db = open_db(path)?;
        let raw = db.open_tree("superblock")?.get(schema::SUPERBLOCK_KEY)?.ok_or_else(|| {
            MetaError::Format(format!("{} has no superblock: it was never formatted", path.display()))
        })?;
        let superblock: Superblock = serde_json::from_slice(&raw).map_err(|e| {
            MetaError::Format(format!("the superblock at {} is unreadable: {e}", path.display()))
        })?;
        if superblock.format_version > FORMAT_VERSION {
            return Err(MetaError::Format(format!(
                "{} was written by a newer elasticfs (format version {}; this build reads up to {}): upgrade elasticfs",
                path.display(),
                superblock.format_version,
                FORMAT_VERSION
            )));
        }
        Self::with_db(db, superblock)
    }

    /// [`Self::open`], waiting up to `patience` for another process to let go of the store: a
    /// mount that was just unmounted holds it for the moment it takes to commit and exit.
    pub fn open_waiting(path: &Path, patience: std::time::Duration) -> MetaResult<Self> {
        let deadline = std::time::Instant::now() + patience;
        loop {
            match Self::open(path) {
                Err(MetaError::Store(e)) if e.contains(IN_USE) && std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
                other => return other,
            }
        }
    }

    fn with_db(db: sled::Db, superblock: Superblock) -> MetaResult<Self> {
        let trees = Trees::open(&db)?;
        let throughput = throughput::Throughput::open(&trees.counters, superblock.throughput)?;
        let shared = Shared {
            durable: GroupCommit::new(db.clone()),
            db,
            trees,
            superblock,
            throughput,
            audit_gate: RwLock::new(()),
        };
        Ok(SledStore { shared: Arc::new(shared), session: NO_SESSION })
    }

    /// The same store, acting for `session`: what it orphans and locks belongs to it.
    pub fn session(&self, session: SessionId) -> SledStore {
        SledStore { shared: self.shared.clone(), session }
    }

    /// The session this view acts for.
    pub fn session_id(&self) -> SessionId {
        self.session
    }

    /// Whether `path` holds a store (formatted or not yet), without opening it.
    pub fn exists(path: &Path) -> bool {
        // sled writes its `conf` file when it creates a database.
        path.join("conf").exists()
    }

    /// Runs `f` as one transaction over every tree, then waits until it is durable.
    fn mutate<T>(&self, f: impl Fn(&Txn) -> TxResult<T>) -> MetaResult<T> {
        let value = self.transact(f)?;
        self.shared.durable.wait_durable()?;
        Ok(value)
    }

    fn transact<T>(&self, f: impl Fn(&Txn) -> TxResult<T>) -> MetaResult<T> {
        let _not_audited = self.shared.audit_gate.read().unwrap();
        let block_size = self.shared.superblock.block_size as u64;
        let t = &self.shared.trees;
        let all = (
            &t.inodes,
            &t.dentries,
            &t.cookies,
            &t.blocks,
            &t.symlinks,
            &t.chunk_refs,
            &t.unreferenced,
            &t.intents,
            &t.condemned,
            &t.xattrs,
            &t.orphans,
            &t.counters,
        );
        let result = all.transaction(
            |(
                inodes,
                dentries,
                cookies,
                blocks,
                symlinks,
                chunk_refs,
                unreferenced,
                intents,
                condemned,
                xattrs,
                orphans,
                counters,
            )| {
                f(&Txn {
                    inodes,
                    dentries,
                    cookies,
                    blocks,
                    symlinks,
                    chunk_refs,
                    unreferenced,
                    intents,
                    condemned,
                    xattrs,
                    orphans,
                    counters,
                    block_size,
                    session: self.session,
                    now: Timestamp::now(),
                })
            },
        );
        result.map_err(MetaError::from)
    }

    fn new_ino(&self) -> MetaResult<Ino> {
        // sled's ids start at 0 and never repeat, even across restarts; 1 is the root.
        Ok(self.shared.db.generate_id()? + ROOT_INO + 1)
    }

    /// The part of removing an inode that cannot be in its transaction.
    fn after_unlink(&self, unlinked: Unlinked) -> MetaResult<Unlinked> {
        if unlinked.purged {
            self.drop_xattrs(unlinked.attr.ino)?;
        }
        Ok(unlinked)
    }

    /// Removes extended attributes of an inode that no longer exists. Outside the transaction
    /// that removed the inode: inode numbers are never reused, so these keys are unreachable.
    fn drop_xattrs(&self, ino: Ino) -> MetaResult<()> {
        let xattrs = &self.shared.trees.xattrs;
        for key in xattrs.scan_prefix(schema::ino_key(ino)).keys() {
            xattrs.remove(key?)?;
        }
        Ok(())
    }

    fn counter(&self, key: &[u8]) -> MetaResult<u64> {
        read_counter(&self.shared.trees.counters, key)
    }
}

/// A usage counter outside a transaction (0 until first counted).
fn read_counter(counters: &sled::Tree, key: &[u8]) -> MetaResult<u64> {
    Ok(counters.get(key)?.map(|v| schema::decode_u64(&v)).unwrap_or(0))
}

/// Stores the superblock (not yet durable: the caller waits for that).
fn write_superblock(db: &sled::Db, superblock: &Superblock) -> MetaResult<()> {
    let encoded = serde_json::to_vec(superblock).map_err(MetaError::store)?;
    db.open_tree("superblock")?.insert(schema::SUPERBLOCK_KEY, encoded)?;
    Ok(())
}

/// What [`open_db`] says of a store another process holds.
const IN_USE: &str = "is in use by another process";

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

fn check_name(name: &[u8]) -> MetaResult<()> {
    if name.len() > MAX_NAME_LEN {
        return Err(MetaError::NameTooLong);
    }
    if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') || name.contains(&0) {
        return Err(MetaError::Invalid("file name".into()));
    }
    Ok(())
}

impl MetaStore for SledStore {
    fn superblock(&self) -> &Superblock {
        &self.shared.superblock
    }

    fn getattr(&self, ino: Ino) -> MetaResult<Attr> {
        match self.shared.trees.inodes.get(schema::ino_key(ino))? {
            Some(v) => Attr::decode(&v),
            None => Err(MetaError::NotFound),
        }
    }

    fn lookup(&self, parent: Ino, name: &[u8]) -> MetaResult<Attr> {
        if name.len() > MAX_NAME_LEN {
            return Err(MetaError::NameTooLong);
        }
        let parent_attr = self.getattr(parent)?;
        if !parent_attr.is_dir() {
            return Err(MetaError::NotDir);
        }
        match name {
            b"." => return Ok(parent_attr),
            b".." => return self.getattr(parent_attr.parent),
            _ => {}
        }
        match self.shared.trees.dentries.get(schema::ino_prefixed(parent, name))? {
            Some(v) => self.getattr(Dentry::decode(&v)?.ino),
            None => Err(MetaError::NotFound),
        }
    }

    #[instrument(level = "debug", skip_all, fields(parent = node.parent, kind = ?node.kind))]
    fn create(&self, node: &NewNode) -> MetaResult<Attr> {
        let NewNode { parent, ref name, kind, perm, uid, gid, rdev, ref link_target } = *node;
        check_name(name)?;
        let ino = self.new_ino()?;
        self.mutate(|t| {
            let mut dir = t.dir(parent)?;
            if t.dentry(parent, name)?.is_some() {
                return fail(MetaError::Exists);
            }
            let mut attr = Attr {
                ino,
                kind,
                perm,
                uid,
                gid,
                size: link_target.len() as u64,
                stored: 0,
                nlink: if kind == FileKind::Dir { 2 } else { 1 },
                atime: t.now,
                mtime: t.now,
                ctime: t.now,
                crtime: t.now,
                rdev,
                generation: 0,
                parent,
                entries: 0,
                next_cookie: FIRST_COOKIE,
            };
            // BSD group semantics of a setgid directory, as Linux applies them.
            if dir.perm & S_ISGID != 0 {
                attr.gid = dir.gid;
                if kind == FileKind::Dir {
                    attr.perm |= S_ISGID;
                }
            }
            t.add_entry(&mut dir, name, ino, kind)?;
            if kind == FileKind::Dir {
                dir.nlink += 1;
            }
            t.touch(&mut dir);
            t.put_inode(&dir)?;
            t.put_inode(&attr)?;
            if kind == FileKind::Symlink {
                t.symlinks.insert(&schema::ino_key(ino), link_target.as_slice())?;
            }
            t.add_counter(schema::INODES_COUNTER, 1)?;
            Ok(attr)
        })
    }

    #[instrument(level = "debug", skip(self, new_name))]
    fn link(&self, ino: Ino, new_parent: Ino, new_name: &[u8]) -> MetaResult<Attr> {
        check_name(new_name)?;
        self.mutate(|t| {
            let mut attr = t.inode(ino)?;
            if attr.is_dir() {
                return fail(MetaError::NotPermitted);
            }
            if attr.nlink == 0 {
                return fail(MetaError::NotFound);
            }
            if attr.nlink == u32::MAX {
                return fail(MetaError::TooManyLinks);
            }
            let mut dir = t.dir(new_parent)?;
            if t.dentry(new_parent, new_name)?.is_some() {
                return fail(MetaError::Exists);
            }
            t.add_entry(&mut dir, new_name, ino, attr.kind)?;
            t.touch(&mut dir);
            t.put_inode(&dir)?;
            attr.nlink += 1;
            attr.ctime = t.now;
            t.put_inode(&attr)?;
            Ok(attr)
        })
    }

    #[instrument(level = "debug", skip(self, name))]
    fn unlink(&self, parent: Ino, name: &[u8], closed: Option<Ino>) -> MetaResult<Unlinked> {
        if name.len() > MAX_NAME_LEN {
            return Err(MetaError::NameTooLong);
        }
        self.mutate(|t| {
            let mut dir = t.dir(parent)?;
            let Some(entry) = t.dentry(parent, name)? else {
                return fail(MetaError::NotFound);
            };
            if entry.kind == FileKind::Dir {
                return fail(MetaError::IsDir);
            }
            let attr = t.inode(entry.ino)?;
            t.remove_entry(&mut dir, name, &entry)?;
            t.touch(&mut dir);
            t.put_inode(&dir)?;
            t.drop_link(attr, closed)
        })
        .and_then(|unlinked| self.after_unlink(unlinked))
    }

    #[instrument(level = "debug", skip(self, name))]
    fn rmdir(&self, parent: Ino, name: &[u8]) -> MetaResult<()> {
        match name {
            b"." => return Err(MetaError::Invalid("rmdir of .".into())),
            b".." => return Err(MetaError::NotEmpty),
            _ if name.len() > MAX_NAME_LEN => return Err(MetaError::NameTooLong),
            _ => {}
        }
        let removed = self.mutate(|t| {
            let mut dir = t.dir(parent)?;
            let Some(entry) = t.dentry(parent, name)? else {
                return fail(MetaError::NotFound);
            };
            if entry.kind != FileKind::Dir {
                return fail(MetaError::NotDir);
            }
            let child = t.inode(entry.ino)?;
            if child.entries > 0 {
                return fail(MetaError::NotEmpty);
            }
            t.remove_entry(&mut dir, name, &entry)?;
            dir.nlink -= 1;
            t.touch(&mut dir);
            t.put_inode(&dir)?;
            t.delete_dir(&child)?;
            Ok(child.ino)
        })?;
        self.drop_xattrs(removed)
    }

    #[instrument(level = "debug", skip_all, fields(parent = rename.parent, new_parent = rename.new_parent))]
    fn rename(&self, rename: &Rename) -> MetaResult<Option<Unlinked>> {
        check_name(&rename.name)?;
        check_name(&rename.new_name)?;
        let outcome = self.mutate(|t| rename_in(t, rename))?;
        if let Some(RenameOutcome { removed_dir: Some(ino), .. }) = outcome {
            self.drop_xattrs(ino)?;
        }
        outcome.and_then(|o| o.unlinked).map(|u| self.after_unlink(u)).transpose()
    }

    fn readdir(&self, dir: Ino, after: u64, limit: usize) -> MetaResult<Vec<DirEntry>> {
        let attr = self.getattr(dir)?;
        if !attr.is_dir() {
            return Err(MetaError::NotDir);
        }
        let dentries = &self.shared.trees.dentries;
        let start = schema::pair_key(dir, after.saturating_add(1));
        let end = schema::pair_key(dir, u64::MAX);
        let mut out = Vec::with_capacity(limit.min(1024));
        for item in self.shared.trees.cookies.range(start..=end) {
            if out.len() >= limit {
                break;
            }
            let (key, name) = item?;
            let cookie = schema::split_pair_key(&key);
            // An entry removed between the two reads is simply not listed.
            let Some(raw) = dentries.get(schema::ino_prefixed(dir, &name))? else {
                continue;
            };
            let entry = Dentry::decode(&raw)?;
            out.push(DirEntry { name: name.to_vec(), ino: entry.ino, kind: entry.kind, cookie });
        }
        Ok(out)
    }

    fn readlink(&self, ino: Ino) -> MetaResult<Vec<u8>> {
        match self.shared.trees.symlinks.get(schema::ino_key(ino))? {
            Some(v) => Ok(v.to_vec()),
            None if self.getattr(ino).is_ok() => Err(MetaError::Invalid("not a symbolic link".into())),
            None => Err(MetaError::NotFound),
        }
    }

    #[instrument(level = "debug", skip(self))]
    fn setattr(&self, ino: Ino, changes: &SetAttr) -> MetaResult<Attr> {
        self.mutate(|t| {
            let mut attr = t.inode(ino)?;
            if let Some(perm) = changes.perm {
                attr.perm = perm & 0o7777;
            }
            if let Some(uid) = changes.uid {
                attr.uid = uid;
            }
            if let Some(gid) = changes.gid {
                attr.gid = gid;
            }
            if let Some(atime) = changes.atime {
                attr.atime = atime;
            }
            if let Some(mtime) = changes.mtime {
                attr.mtime = mtime;
            }
            attr.ctime = changes.ctime.unwrap_or(t.now);
            t.put_inode(&attr)?;
            Ok(attr)
        })
    }

    fn blocks(&self, ino: Ino, first: u64, count: u64) -> MetaResult<Vec<(u64, BlockRef)>> {
        let start = schema::pair_key(ino, first);
        let end = schema::pair_key(ino, first.saturating_add(count));
        let mut out = Vec::new();
        for item in self.shared.trees.blocks.range(start..end) {
            let (key, value) = item?;
            out.push((schema::split_pair_key(&key), BlockRef::decode(&value)?));
        }
        Ok(out)
    }

    #[instrument(level = "debug", skip(self, commit), fields(blocks = commit.blocks.len()))]
    fn commit_blocks(&self, ino: Ino, commit: &BlockCommit) -> MetaResult<Attr> {
        self.mutate(|t| {
            let mut attr = t.inode(ino)?;
            if attr.kind != FileKind::File {
                return fail(MetaError::Invalid("block map of a non-regular file".into()));
            }
            let mut delta = 0i64;
            if let Some(size) = commit.truncate {
                let keep = size.div_ceil(t.block_size);
                delta += t.drop_blocks_from(ino, keep, attr.size.max(size))?;
                attr.size = size;
            }
            for (index, block) in &commit.blocks {
                delta += t.set_block(ino, *index, Some(block))?;
            }
            for hash in &commit.release {
                t.release_intent(hash)?;
            }
            attr.size = attr.size.max(commit.min_size);
            attr.stored = attr.stored.saturating_add_signed(delta);
            if let Some(mtime) = commit.mtime {
                attr.mtime = mtime;
                attr.ctime = mtime.max(t.now);
            }
            t.put_inode(&attr)?;
            t.add_counter(schema::BYTES_COUNTER, delta)?;
            Ok(attr)
        })
    }

    #[instrument(level = "debug", skip(self))]
    fn purge(&self, ino: Ino) -> MetaResult<()> {
        let purged = self.mutate(|t| {
            let attr = match t.inode(ino) {
                Ok(attr) => attr,
                Err(sled::transaction::ConflictableTransactionError::Abort(MetaError::NotFound)) => {
                    t.orphans.remove(&schema::ino_key(ino))?;
                    return Ok(false);
                }
                Err(e) => return Err(e),
            };
            if attr.nlink > 0 {
                // Linked again since it was orphaned: nothing to purge.
                t.orphans.remove(&schema::ino_key(ino))?;
                return Ok(false);
            }
            t.remove_inode(&attr)?;
            Ok(true)
        })?;
        if purged {
            self.drop_xattrs(ino)?;
        }
        Ok(())
    }

    fn orphans(&self) -> MetaResult<Vec<Ino>> {
        let mut out = Vec::new();
        for key in self.shared.trees.orphans.iter().keys() {
            out.push(schema::decode_ino_key(&key?)?);
        }
        Ok(out)
    }

    fn set_xattr(&self, ino: Ino, name: &[u8], value: &[u8], mode: XattrMode) -> MetaResult<()> {
        self.mutate(|t| {
            let mut attr = t.inode(ino)?;
            let key = schema::ino_prefixed(ino, name);
            let exists = t.xattrs.get(&key)?.is_some();
            match mode {
                XattrMode::Create if exists => return fail(MetaError::Exists),
                XattrMode::Replace if !exists => return fail(MetaError::NoXattr),
                _ => {}
            }
            t.xattrs.insert(key, value)?;
            attr.ctime = t.now;
            t.put_inode(&attr)
        })
    }

    fn get_xattr(&self, ino: Ino, name: &[u8]) -> MetaResult<Vec<u8>> {
        self.getattr(ino)?;
        match self.shared.trees.xattrs.get(schema::ino_prefixed(ino, name))? {
            Some(v) => Ok(v.to_vec()),
            None => Err(MetaError::NoXattr),
        }
    }

    fn list_xattr(&self, ino: Ino) -> MetaResult<Vec<Vec<u8>>> {
        self.getattr(ino)?;
        let mut names = Vec::new();
        for key in self.shared.trees.xattrs.scan_prefix(schema::ino_key(ino)).keys() {
            names.push(key?[8..].to_vec());
        }
        Ok(names)
    }

    fn remove_xattr(&self, ino: Ino, name: &[u8]) -> MetaResult<()> {
        self.mutate(|t| {
            let mut attr = t.inode(ino)?;
            if t.xattrs.remove(schema::ino_prefixed(ino, name))?.is_none() {
                return fail(MetaError::NoXattr);
            }
            attr.ctime = t.now;
            t.put_inode(&attr)
        })
    }

    fn usage(&self) -> MetaResult<Usage> {
        Ok(Usage {
            bytes: self.counter(schema::BYTES_COUNTER)?,
            inodes: self.counter(schema::INODES_COUNTER)?,
        })
    }

    fn referenced_chunks(&self) -> MetaResult<Vec<(ChunkHash, u64)>> {
        let mut out = Vec::new();
        for item in self.shared.trees.chunk_refs.iter() {
            let (key, value) = item?;
            out.push((key.as_ref().try_into().map_err(MetaError::store)?, schema::decode_u64(&value)));
        }
        Ok(out)
    }

    fn audit(&self) -> MetaResult<Audit> {
        self.audit_records()
    }

    fn unreferenced_chunks(&self) -> MetaResult<Vec<(ChunkHash, Timestamp)>> {
        let mut out = Vec::new();
        for item in self.shared.trees.unreferenced.iter() {
            let (key, value) = item?;
            out.push((key.as_ref().try_into().map_err(MetaError::store)?, schema::decode_time(&value)?));
        }
        Ok(out)
    }

    fn protect_chunk(&self, hash: &ChunkHash) -> MetaResult<ChunkProtection> {
        self.mutate(|t| t.protect_chunk(hash))
    }

    fn condemn_chunks(
        &self,
        hashes: &[ChunkHash],
        unreferenced_before: Timestamp,
    ) -> MetaResult<Vec<ChunkHash>> {
        self.condemn_chunks_in(hashes, unreferenced_before)
    }

    fn condemned_chunks(&self) -> MetaResult<Vec<ChunkHash>> {
        self.condemned_chunks_in()
    }

    fn forget_condemned(&self, hashes: &[ChunkHash]) -> MetaResult<()> {
        self.forget_condemned_in(hashes)
    }

    fn lease_throughput(&self, request: &LeaseRequest) -> MetaResult<Lease> {
        self.lease_throughput_in(request)
    }

    fn throughput(&self) -> MetaResult<ThroughputStatus> {
        self.throughput_in()
    }

    fn set_throughput(&self, settings: &ThroughputSettings) -> MetaResult<()> {
        self.set_throughput_in(settings)
    }

    fn end_own_session(&self) -> MetaResult<()> {
        if self.session == NO_SESSION {
            return Ok(());
        }
        self.end_session(self.session)
    }

    fn sessions(&self) -> MetaResult<Vec<SessionRecord>> {
        self.session_records()
    }

    #[instrument(level = "debug", skip(self))]
    fn set_lock(&self, ino: Ino, req: &LockRequest) -> MetaResult<()> {
        self.set_lock_in(ino, req)
    }

    fn get_lock(&self, ino: Ino, req: &LockRequest) -> MetaResult<Option<LockRecord>> {
        self.get_lock_in(ino, req)
    }

    #[instrument(level = "debug", skip(self))]
    fn release_locks(&self, ino: Ino, owner: u64) -> MetaResult<()> {
        self.release_locks_in(ino, owner)
    }
}

struct RenameOutcome {
    unlinked: Option<Unlinked>,
    removed_dir: Option<Ino>,
}

/// The body of `rename`, in one transaction. Returns `None` when it had nothing to do.
fn rename_in(t: &Txn, rename: &Rename) -> TxResult<Option<RenameOutcome>> {
    let Rename { parent, ref name, new_parent, ref new_name, mode, closed } = *rename;
    let (name, new_name) = (name.as_slice(), new_name.as_slice());
    t.dir(parent)?;
    let Some(src) = t.dentry(parent, name)? else {
        return fail(MetaError::NotFound);
    };
    t.dir(new_parent)?;
    let dst = t.dentry(new_parent, new_name)?;
    if parent == new_parent && name == new_name {
        return match mode {
            RenameMode::NoReplace => fail(MetaError::Exists),
            _ => Ok(None),
        };
    }
    // A directory may not move into its own subtree (in either direction for an exchange).
    if src.kind == FileKind::Dir && parent != new_parent {
        check_not_ancestor(t, src.ino, new_parent)?;
    }
    if mode == RenameMode::Exchange {
        let Some(dst) = dst else {
            return fail(MetaError::NotFound);
        };
        if dst.kind == FileKind::Dir && parent != new_parent {
            check_not_ancestor(t, dst.ino, parent)?;
        }
        exchange(t, (parent, name, src), (new_parent, new_name, dst))?;
        return Ok(Some(RenameOutcome { unlinked: None, removed_dir: None }));
    }
    let mut outcome = RenameOutcome { unlinked: None, removed_dir: None };
    // The two directories may be one inode: each step reloads the record it changes.
    if let Some(dst) = dst {
        if mode == RenameMode::NoReplace {
            return fail(MetaError::Exists);
        }
        if dst.ino == src.ino {
            // Two names of one inode: POSIX says do nothing.
            return Ok(None);
        }
        let victim = t.inode(dst.ino)?;
        match (src.kind == FileKind::Dir, victim.is_dir()) {
            (true, false) => return fail(MetaError::NotDir),
            (false, true) => return fail(MetaError::IsDir),
            (true, true) if victim.entries > 0 => return fail(MetaError::NotEmpty),
            _ => {}
        }
        let mut dir = t.inode(new_parent)?;
        t.remove_entry(&mut dir, new_name, &dst)?;
        if victim.is_dir() {
            dir.nlink -= 1;
            t.put_inode(&dir)?;
            t.delete_dir(&victim)?;
            outcome.removed_dir = Some(victim.ino);
        } else {
            t.put_inode(&dir)?;
            outcome.unlinked = Some(t.drop_link(victim, closed)?);
        }
    }
    let mut from = t.inode(parent)?;
    t.remove_entry(&mut from, name, &src)?;
    if src.kind == FileKind::Dir {
        from.nlink -= 1;
    }
    t.touch(&mut from);
    t.put_inode(&from)?;
    let mut to = t.inode(new_parent)?;
    t.add_entry(&mut to, new_name, src.ino, src.kind)?;
    if src.kind == FileKind::Dir {
        to.nlink += 1;
    }
    t.touch(&mut to);
    t.put_inode(&to)?;
    let mut moved = t.inode(src.ino)?;
    moved.ctime = t.now;
    if moved.is_dir() {
        moved.parent = new_parent;
    }
    t.put_inode(&moved)?;
    Ok(Some(outcome))
}

/// RENAME_EXCHANGE: each of the two names, given as (directory, name, entry), takes the
/// other's inode.
fn exchange(
    t: &Txn,
    (parent, name, src): (Ino, &[u8], Dentry),
    (new_parent, new_name, dst): (Ino, &[u8], Dentry),
) -> TxResult<()> {
    // Point each name at the other inode, keeping each name's cookie.
    let a = Dentry { ino: dst.ino, kind: dst.kind, cookie: src.cookie };
    let b = Dentry { ino: src.ino, kind: src.kind, cookie: dst.cookie };
    t.dentries.insert(schema::ino_prefixed(parent, name), a.encode())?;
    t.dentries.insert(schema::ino_prefixed(new_parent, new_name), b.encode())?;
    if parent != new_parent {
        let dirs_moving_in = (src.kind == FileKind::Dir) as i64 - (dst.kind == FileKind::Dir) as i64;
        let mut to = t.inode(new_parent)?;
        to.nlink = (to.nlink as i64 + dirs_moving_in) as u32;
        t.touch(&mut to);
        t.put_inode(&to)?;
        let mut from = t.inode(parent)?;
        from.nlink = (from.nlink as i64 - dirs_moving_in) as u32;
        t.touch(&mut from);
        t.put_inode(&from)?;
    } else {
        let mut dir = t.inode(parent)?;
        t.touch(&mut dir);
        t.put_inode(&dir)?;
    }
    for (ino, home) in [(src.ino, new_parent), (dst.ino, parent)] {
        let mut attr = t.inode(ino)?;
        attr.ctime = t.now;
        if attr.is_dir() {
            attr.parent = home;
        }
        t.put_inode(&attr)?;
    }
    Ok(())
}

/// Fails with EINVAL if `dir` is `target` or one of its ancestors.
fn check_not_ancestor(t: &Txn, dir: Ino, target: Ino) -> TxResult<()> {
    let mut cursor = target;
    loop {
        if cursor == dir {
            return fail(MetaError::Invalid("cannot move a directory into itself".into()));
        }
        if cursor == ROOT_INO {
            return Ok(());
        }
        cursor = t.inode(cursor).or_else(|_| fail(MetaError::NotFound))?.parent;
    }
}
