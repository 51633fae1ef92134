//! The metadata engine: the namespace, block maps, chunk references, sessions, locks, the
//! throughput governor and the audit, written once over the key-value seam of [`crate::kv`]
//! with the key layout of [`crate::keys`]. Every mutation is one transaction (or, where a
//! store limits the size of one, a sequence of transactions each of which leaves a consistent
//! file system; see [`Engine::page`]) and is durable when it returns.

mod audit;
mod chunks;
mod create;
mod dump;
mod files;
mod opening;
mod pending;
mod rename;
mod sessions;
mod throughput;
mod txn;
mod xattrs;

use std::ops::Range;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tracing::instrument;

use crate::audit::Audit;
use crate::block::{Block, Compaction};
use crate::error::{MetaError, MetaResult};
use crate::keys::{self, Counter, Listed};
use crate::kv::{fail, Kv, KvTxn, MemKv, Pair, SledKv, TxError, TxResult};
use crate::locks::{LockRecord, LockRequest};
use crate::session::{SessionId, SessionRecord};
use crate::store::{
    BlockCommit, ChunkProtection, Committed, Created, MetaStore, NewNode, Rename, Unlinked, XattrMode,
};
use crate::throughput::{Lease, LeaseRequest, ThroughputSettings, ThroughputStatus};
use crate::types::{
    Attr, ChunkHash, DirEntry, FileKind, Ino, SetAttr, Superblock, Timestamp, Usage, FORMAT_VERSION,
    MAX_NAME_LEN, ROOT_INO,
};
use txn::Txn;

pub(super) const S_ISGID: u16 = 0o2000;
/// The session of a store opened without one: tools (`format`, `status`, `fsck`). Orphans it
/// made would belong to no session and are reclaimed by the next embedded mount.
const NO_SESSION: SessionId = 0;
/// Cookies 1 and 2 are `.` and `..`; entries start after them.
const FIRST_COOKIE: u64 = 3;
/// Numbers (inodes, readdir cookies) one allocation takes from a counter: numbers a process
/// does not use are skipped (never reused), which costs nothing but keeps allocation off the
/// hot key.
const ALLOCATION_BATCH: u64 = 1024;
/// Keys one read of a whole range fetches at a time.
const SCAN_PAGE: usize = 1024;
/// A transaction that keeps conflicting is given up after this many attempts.
const MAX_ATTEMPTS: u32 = 1000;

/// One open store: shared by every session that works on it.
struct Shared<K> {
    kv: K,
    superblock: Superblock,
    inos: Allocator,
    /// Readdir cookies: any unique number will do (a listing goes in cookie order, and an
    /// entry keeps its cookie), so they come from one counter for the whole file system rather
    /// than from the directory's record, which every create would then write.
    cookies: Allocator,
    pending: pending::PendingCreates,
}

/// Numbers from a counter key, taken [`ALLOCATION_BATCH`] at a time.
struct Allocator {
    key: &'static [u8],
    /// Where the counter starts.
    first: u64,
    /// Taken from the counter and not yet used.
    taken: Mutex<Range<u64>>,
}

impl Allocator {
    fn new(key: &'static [u8], first: u64) -> Self {
        Allocator { key, first, taken: Mutex::new(0..0) }
    }
}

impl<K> Shared<K> {
    fn new(kv: K, superblock: Superblock) -> Self {
        Shared {
            kv,
            superblock,
            inos: Allocator::new(keys::NEXT_INO, ROOT_INO + 1),
            cookies: Allocator::new(keys::NEXT_COOKIE, FIRST_COOKIE),
            pending: pending::PendingCreates::default(),
        }
    }
}

/// The engine over the store `K`, as seen by one session (see [`Engine::session`]). Cloning is
/// cheap and shares the open store.
pub struct Engine<K> {
    shared: Arc<Shared<K>>,
    session: SessionId,
}

impl<K> Clone for Engine<K> {
    fn clone(&self) -> Self {
        Engine { shared: self.shared.clone(), session: self.session }
    }
}

/// The embedded engine: sled on the local disk.
pub type SledStore = Engine<SledKv>;
/// The engine in memory (tests).
pub type MemStore = Engine<MemKv>;

impl<K: Kv> Engine<K> {
    /// Creates a new file system in `kv` with a root directory owned by `root_uid:root_gid`.
    /// Refuses a store that already holds one.
    pub fn format_kv(kv: K, superblock: &Superblock, root_uid: u32, root_gid: u32) -> MetaResult<Self> {
        let store = Engine { shared: Arc::new(Shared::new(kv, superblock.clone())), session: NO_SESSION };
        let root = Attr {
            uid: root_uid,
            gid: root_gid,
            ..Attr::new(ROOT_INO, FileKind::Dir, 0o755, Timestamp::now())
        };
        let encoded = serde_json::to_vec(superblock).map_err(MetaError::store)?;
        store.mutate(|t| {
            if t.get(keys::SUPERBLOCK)?.is_some() {
                return fail(MetaError::Format(format!(
                    "{} already holds a formatted file system; mount it, or choose an empty one",
                    store.shared.kv.describe()
                )));
            }
            t.put_inode(&root)?;
            t.add_counter(Counter::Inodes, 1)?;
            t.put(keys::NEXT_INO, &keys::encode_u64(ROOT_INO + 1));
            t.put(keys::NEXT_COOKIE, &keys::encode_u64(FIRST_COOKIE));
            t.put(keys::SUPERBLOCK, &encoded);
            Ok(())
        })?;
        Ok(store)
    }

    /// Opens the file system in `kv`, refusing one written by a newer format.
    pub fn open_kv(kv: K) -> MetaResult<Self> {
        let where_ = kv.describe();
        let mut raw = None;
        let read = kv.read(&mut |t: &mut dyn KvTxn| {
            raw = t.get(keys::SUPERBLOCK)?;
            Ok(())
        });
        read.map_err(tx_error)?;
        let raw = raw.ok_or_else(|| {
            MetaError::Format(format!("no file system at {where_}: run `elasticfs format` first"))
        })?;
        let mut superblock: Superblock = serde_json::from_slice(&raw)
            .map_err(|e| MetaError::Format(format!("the superblock at {where_} is unreadable: {e}")))?;
        if superblock.format_version > FORMAT_VERSION {
            return Err(MetaError::Format(format!(
                "{where_} was written by a newer elasticfs (format version {}; this build reads up to {}): upgrade elasticfs",
                superblock.format_version, FORMAT_VERSION
            )));
        }
        let upgrade = superblock.format_version < FORMAT_VERSION;
        if upgrade {
            superblock.format_version = FORMAT_VERSION;
        }
        let engine = Engine { shared: Arc::new(Shared::new(kv, superblock)), session: NO_SESSION };
        if upgrade {
            engine.upgrade_format()?;
        }
        engine.start_cookie_counter()?;
        engine.fold_dir_times()?;
        Ok(engine)
    }

    /// The same store, acting for `session`: what it orphans and locks belongs to it.
    pub fn session(&self, session: SessionId) -> Engine<K> {
        Engine { shared: self.shared.clone(), session }
    }

    /// The session this view acts for.
    pub fn session_id(&self) -> SessionId {
        self.session
    }

    #[cfg(test)]
    pub(crate) fn kv(&self) -> &K {
        &self.shared.kv
    }

    /// The most blocks, chunks or attributes one transaction handles where the store limits
    /// transactions (etcd: 128 operations): each costs up to six keys read or written.
    /// Operations past it go in steps, each a consistent state.
    fn page(&self) -> usize {
        match self.shared.kv.max_ops() {
            usize::MAX => usize::MAX / 2,
            ops => (ops / 8).max(1),
        }
    }

    /// A transaction body's view of `kv` at `now`; the pending creates it confirms go into
    /// `confirmed`.
    fn txn<'a>(&'a self, kv: &'a mut dyn KvTxn, now: Timestamp, confirmed: &'a mut Vec<Ino>) -> Txn<'a> {
        Txn {
            kv,
            block_size: self.shared.superblock.block_size as u64,
            session: self.session,
            now,
            page: self.page(),
            times_in_record: self.shared.kv.single_writer(),
            pending: &self.shared.pending,
            confirmed,
        }
    }

    /// Runs `f` as one transaction, again while it conflicts with others.
    fn run<T>(&self, mut f: impl FnMut(&mut Txn) -> TxResult<T>) -> MetaResult<T> {
        for attempt in 0..MAX_ATTEMPTS {
            let mut out = None;
            let now = Timestamp::now();
            let mut confirmed = Vec::new();
            let result = self.shared.kv.transact(&mut |kv| {
                confirmed.clear();
                out = Some(f(&mut self.txn(kv, now, &mut confirmed))?);
                Ok(())
            });
            match result {
                Ok(()) => {
                    self.shared.pending.forget(&confirmed);
                    return Ok(out.expect("set by the body that succeeded"));
                }
                Err(TxError::Abort(e)) => return Err(e),
                Err(TxError::Conflict) => backoff(attempt),
            }
        }
        Err(MetaError::Store(format!(
            "a transaction on {} conflicted with others {MAX_ATTEMPTS} times in a row: giving up",
            self.shared.kv.describe()
        )))
    }

    /// [`Self::run`], then waits until the change is durable.
    fn mutate<T>(&self, f: impl FnMut(&mut Txn) -> TxResult<T>) -> MetaResult<T> {
        let value = self.run(f)?;
        self.sync()?;
        Ok(value)
    }

    fn sync(&self) -> MetaResult<()> {
        self.shared.kv.sync()
    }

    /// Runs `f` over the store without changing it.
    fn read<T>(&self, f: impl FnMut(&mut Txn) -> TxResult<T>) -> MetaResult<T> {
        self.read_with(f, false)
    }

    /// Runs `f` over one state of the whole store (see [`Kv::snapshot`]).
    fn snapshot<T>(&self, f: impl FnMut(&mut Txn) -> TxResult<T>) -> MetaResult<T> {
        self.read_with(f, true)
    }

    fn read_with<T>(&self, mut f: impl FnMut(&mut Txn) -> TxResult<T>, whole: bool) -> MetaResult<T> {
        for attempt in 0..MAX_ATTEMPTS {
            let mut out = None;
            let mut body = |kv: &mut dyn KvTxn| {
                // A read writes nothing: no clock to read, nothing to confirm.
                out = Some(f(&mut self.txn(kv, Timestamp::default(), &mut Vec::new()))?);
                Ok(())
            };
            let result =
                if whole { self.shared.kv.snapshot(&mut body) } else { self.shared.kv.read(&mut body) };
            match result {
                Ok(()) => return Ok(out.expect("set by the body that succeeded")),
                Err(TxError::Abort(e)) => return Err(e),
                // A read is retried when its revision went away under it (etcd compaction).
                Err(TxError::Conflict) => backoff(attempt),
            }
        }
        Err(MetaError::Store(format!("a read of {} kept failing", self.shared.kv.describe())))
    }

    /// Every record whose key starts with `prefix`, read a page at a time (not one state: for
    /// records that stand alone).
    fn scan_all(&self, prefix: &[u8]) -> MetaResult<Vec<Pair>> {
        self.scan_range_all(prefix, &crate::kv::prefix_end(prefix))
    }

    /// Every record with `start <= key < end`, as [`Self::scan_all`] reads them.
    fn scan_range_all(&self, start: &[u8], end: &[u8]) -> MetaResult<Vec<Pair>> {
        in_pages(start, |from| self.read(|t| t.scan(from, end, SCAN_PAGE)))
    }

    fn new_ino(&self) -> MetaResult<Ino> {
        self.allocate(&self.shared.inos)
    }

    fn new_cookie(&self) -> MetaResult<u64> {
        self.allocate(&self.shared.cookies)
    }

    fn allocate(&self, from: &Allocator) -> MetaResult<u64> {
        let mut taken = from.taken.lock().unwrap();
        if taken.is_empty() {
            let first = self.mutate(|t| {
                let next = t.get(from.key)?.map_or(from.first, |v| keys::decode_u64(&v));
                t.put(from.key, &keys::encode_u64(next + ALLOCATION_BATCH));
                Ok(next)
            })?;
            *taken = first..first + ALLOCATION_BATCH;
        }
        Ok(taken.next().expect("refilled above"))
    }

    fn counter(&self, counter: Counter) -> MetaResult<u64> {
        self.read(|t| t.counter_total(counter))
    }

    /// What an unlink or rename left for the caller, once an inode too large to remove in
    /// the same transaction has been removed in steps.
    fn finish_unlink(&self, mut unlinked: Unlinked, closed: Option<Ino>) -> MetaResult<Unlinked> {
        if unlinked.orphaned && (closed == Some(unlinked.attr.ino) || unlinked.attr.is_dir()) {
            self.purge(unlinked.attr.ino)?;
            unlinked.orphaned = false;
            unlinked.purged = true;
        }
        Ok(unlinked)
    }
}

/// Reads a range from `start` a page of [`SCAN_PAGE`] keys at a time (`read_page` reads the
/// page that starts at the key it is given) until a page comes back short.
fn in_pages<E>(
    start: &[u8],
    mut read_page: impl FnMut(&[u8]) -> Result<Vec<Pair>, E>,
) -> Result<Vec<Pair>, E> {
    let mut out: Vec<Pair> = Vec::new();
    let mut from = start.to_vec();
    loop {
        let page = read_page(&from)?;
        let done = page.len() < SCAN_PAGE;
        if let Some((last, _)) = page.last() {
            from = [last.as_slice(), &[0]].concat();
        }
        out.extend(page);
        if done {
            return Ok(out);
        }
    }
}

/// Waits a little before attempt `attempt + 1` of a conflicting transaction: longer the more
/// it has conflicted, and jittered so that clients that collided do not collide again.
fn backoff(attempt: u32) {
    let jitter = Timestamp::now().nanos as u64 % 1000;
    let micros = (50u64 << attempt.min(10)).min(50_000) + jitter;
    std::thread::sleep(Duration::from_micros(micros));
}

fn tx_error(e: TxError) -> MetaError {
    match e {
        TxError::Abort(e) => e,
        TxError::Conflict => MetaError::Store("the store changed while it was being opened".into()),
    }
}

impl Txn<'_> {
    /// The sum of every share of `counter` (see [`crate::keys`]).
    fn counter_total(&mut self, counter: Counter) -> TxResult<u64> {
        let shares = self.scan_whole(&counter.prefix())?;
        Ok(shares.iter().fold(0u64, |sum, (_, v)| sum.wrapping_add(keys::decode_u64(v))))
    }

    /// Every record whose key starts with `prefix`, a page at a time within this transaction.
    fn scan_whole(&mut self, prefix: &[u8]) -> TxResult<Vec<Pair>> {
        let end = crate::kv::prefix_end(prefix);
        in_pages(prefix, |from| self.scan(from, &end, SCAN_PAGE))
    }
}

impl SledStore {
    /// Defers durability of its commits (see [`SledKv::defer_commits`]).
    pub fn defer_commits(&self, every: std::time::Duration) {
        self.shared.kv.defer_commits(every);
    }

    /// Creates a new file system's metadata at `path` (see [`Engine::format_kv`]).
    pub fn format(path: &Path, superblock: &Superblock, root_uid: u32, root_gid: u32) -> MetaResult<Self> {
        Self::format_kv(SledKv::open(path)?, superblock, root_uid, root_gid)
    }

    /// Opens the file system at `path`.
    pub fn open(path: &Path) -> MetaResult<Self> {
        if !Self::exists(path) {
            return Err(MetaError::Format(format!(
                "no file system at {}: run `elasticfs format` first",
                path.display()
            )));
        }
        Self::open_kv(SledKv::open(path)?)
    }

    /// [`Self::open`], waiting up to `patience` for another process to let go of the store.
    pub fn open_waiting(path: &Path, patience: Duration) -> MetaResult<Self> {
        if !Self::exists(path) {
            return Self::open(path);
        }
        Self::open_kv(SledKv::open_waiting(path, patience)?)
    }

    /// Whether `path` holds a store (formatted or not yet), without opening it.
    pub fn exists(path: &Path) -> bool {
        SledKv::exists(path)
    }
}

impl MemStore {
    /// A new file system in memory.
    pub fn in_memory(superblock: &Superblock) -> MetaResult<Self> {
        Self::format_kv(MemKv::new(), superblock, 0, 0)
    }
}

pub(crate) fn check_name(name: &[u8]) -> MetaResult<()> {
    if name.len() > MAX_NAME_LEN {
        return Err(MetaError::NameTooLong);
    }
    if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') || name.contains(&0) {
        return Err(MetaError::Invalid("file name".into()));
    }
    Ok(())
}

impl<K: Kv> MetaStore for Engine<K> {
    fn superblock(&self) -> &Superblock {
        &self.shared.superblock
    }

    fn sync_all(&self) -> MetaResult<()> {
        self.shared.kv.sync_all()
    }

    fn deferred_commits(&self) -> Option<std::time::Duration> {
        self.shared.kv.deferred_commits()
    }

    fn getattr(&self, ino: Ino) -> MetaResult<Attr> {
        if self.shared.kv.single_writer() {
            // The record is the whole answer (directory times included): one key, read on
            // its own, for the most frequent call of all.
            let key = keys::numbered_array(keys::INODE, ino);
            let decode = |raw: Option<&[u8]>| raw.map_or(Err(MetaError::NotFound), Attr::decode);
            return self.shared.kv.get_with(&key, decode).map_err(tx_error);
        }
        self.read(|t| t.attr(ino))
    }

    fn getattrs(&self, inos: &[Ino]) -> MetaResult<Vec<Option<Attr>>> {
        self.read(|t| {
            if t.kv.prefetches() {
                let records = inos.iter().map(|&ino| Txn::inode_key(ino));
                let times = inos.iter().map(|&ino| keys::numbered(keys::DIR_TIMES, ino));
                t.prefetch(&records.chain(times).collect::<Vec<_>>())?;
            }
            inos.iter()
                .map(|&ino| match t.attr(ino) {
                    Ok(attr) => Ok(Some(attr)),
                    Err(TxError::Abort(MetaError::NotFound)) => Ok(None),
                    Err(e) => Err(e),
                })
                .collect()
        })
    }

    fn lookup(&self, parent: Ino, name: &[u8]) -> MetaResult<Attr> {
        if name.len() > MAX_NAME_LEN {
            return Err(MetaError::NameTooLong);
        }
        self.read(|t| {
            t.prefetch_lookup(parent, name)?;
            if name != b"." && name != b".." {
                // The entry first: a hit needs no look at the directory itself.
                if let Some(entry) = t.dentry(parent, name)? {
                    return t.attr_of(entry.ino, entry.kind);
                }
            }
            let dir = t.attr(parent)?;
            if !dir.is_dir() {
                return fail(MetaError::NotDir);
            }
            match name {
                b"." => Ok(dir),
                b".." => t.attr(dir.parent),
                _ => fail(MetaError::NotFound),
            }
        })
    }

    #[instrument(level = "debug", skip_all, fields(parent = node.parent, kind = ?node.kind))]
    fn create_in_dir(&self, node: &NewNode) -> MetaResult<Created> {
        let created = self.create_node(node, false)?;
        self.sync()?;
        Ok(created)
    }

    fn create_pending(&self, node: &NewNode) -> MetaResult<Created> {
        self.create_pending_in(node)
    }

    fn confirm_create(&self, ino: Ino) -> MetaResult<()> {
        self.confirm_create_in(ino)
    }

    #[instrument(level = "debug", skip(self, new_name))]
    fn link(&self, ino: Ino, new_parent: Ino, new_name: &[u8]) -> MetaResult<Attr> {
        check_name(new_name)?;
        let cookie = self.new_cookie()?;
        self.mutate(|t| {
            t.prefetch(&[
                Txn::inode_key(ino),
                Txn::inode_key(new_parent),
                Txn::dentry_key(new_parent, new_name),
            ])?;
            t.confirm_create(ino);
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
            t.dir(new_parent)?;
            if t.dentry(new_parent, new_name)?.is_some() {
                return fail(MetaError::Exists);
            }
            t.add_entry(new_parent, new_name, ino, attr.kind, cookie);
            t.mark_dir_changed(new_parent)?;
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
        let unlinked = self.mutate(|t| {
            // With the inode the caller saw under the name, most likely still there.
            t.prefetch_entry(parent, name, closed)?;
            t.dir(parent)?;
            let Some(entry) = t.dentry(parent, name)? else {
                return fail(MetaError::NotFound);
            };
            if entry.kind == FileKind::Dir {
                return fail(MetaError::IsDir);
            }
            // A pending create is settled by the file's removal: its record goes with the name.
            t.confirm_create(entry.ino);
            let attr = t.inode(entry.ino)?;
            t.remove_entry(parent, name, &entry);
            t.mark_dir_changed(parent)?;
            let unlinked = t.drop_link(attr, closed)?;
            Ok(Unlinked { dir: Some(t.dir_as_changed(parent)?), ..unlinked })
        })?;
        self.finish_unlink(unlinked, closed)
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
            t.prefetch_entry(parent, name, None)?;
            let mut dir = t.dir(parent)?;
            let Some(entry) = t.dentry(parent, name)? else {
                return fail(MetaError::NotFound);
            };
            if entry.kind != FileKind::Dir {
                return fail(MetaError::NotDir);
            }
            let child = t.inode(entry.ino)?;
            if !t.is_empty_dir(child.ino)? {
                return fail(MetaError::NotEmpty);
            }
            t.remove_entry(parent, name, &entry);
            t.mark_dir_changed(parent)?;
            dir.nlink -= 1;
            t.touch(&mut dir);
            t.put_inode(&dir)?;
            // A directory with more attributes than one transaction may remove is left as an
            // orphan, removed in steps below.
            Ok((!t.delete_dir(&child)?).then_some(child.ino))
        })?;
        match removed {
            Some(leftover) => self.purge_in_steps(leftover),
            None => Ok(()),
        }
    }

    #[instrument(level = "debug", skip_all, fields(parent = rename.parent, new_parent = rename.new_parent))]
    fn rename(&self, rename: &Rename) -> MetaResult<Option<Unlinked>> {
        check_name(&rename.name)?;
        check_name(&rename.new_name)?;
        let cookie = self.new_cookie()?;
        let unlinked = self.mutate(|t| rename::rename_in(t, rename, cookie))?;
        unlinked.map(|u| self.finish_unlink(u, rename.closed)).transpose()
    }

    fn readdir(&self, dir: Ino, after: u64, limit: usize) -> MetaResult<Vec<DirEntry>> {
        self.read(|t| {
            if !t.inode(dir)?.is_dir() {
                return fail(MetaError::NotDir);
            }
            let start = keys::pair(keys::LISTING, dir, after.saturating_add(1));
            let end = keys::numbered(keys::LISTING, dir.saturating_add(1));
            let mut out = Vec::with_capacity(limit.min(SCAN_PAGE));
            for (key, value) in t.scan(&start, &end, limit)? {
                let Listed { ino, kind, name } = Listed::decode(&value)?;
                out.push(DirEntry { name, ino, kind, cookie: keys::second_number(&key)? });
            }
            Ok(out)
        })
    }

    fn readlink(&self, ino: Ino) -> MetaResult<Vec<u8>> {
        self.read(|t| match t.get(&keys::numbered(keys::SYMLINK, ino))? {
            Some(v) => Ok(v),
            None => {
                t.inode(ino)?;
                fail(MetaError::Invalid("not a symbolic link".into()))
            }
        })
    }

    #[instrument(level = "debug", skip(self))]
    fn setattr(&self, ino: Ino, changes: &SetAttr) -> MetaResult<Attr> {
        self.mutate(|t| {
            t.confirm_create(ino);
            // A directory's times key is folded into its record, which the change then sets.
            let mut attr = t.attr(ino)?;
            if attr.is_dir() {
                t.delete(&keys::numbered(keys::DIR_TIMES, ino));
            }
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

    fn blocks(&self, ino: Ino, first: u64, count: u64) -> MetaResult<Vec<(u64, Block)>> {
        let start = keys::pair(keys::BLOCK, ino, first);
        let end = keys::pair(keys::BLOCK, ino, first.saturating_add(count));
        self.read(|t| {
            let mut out = Vec::new();
            for (key, value) in t.scan(&start, &end, count.min(usize::MAX as u64) as usize)? {
                out.push((keys::second_number(&key)?, Block::decode(&value)?));
            }
            Ok(out)
        })
    }

    #[instrument(level = "debug", skip(self, commit), fields(blocks = commit.blocks.len()))]
    fn commit_blocks(&self, ino: Ino, commit: &BlockCommit) -> MetaResult<Committed> {
        self.commit_blocks_in(ino, commit)
    }

    #[instrument(level = "debug", skip(self, compaction), fields(ino = compaction.ino, index = compaction.index))]
    fn compact_block(&self, compaction: &Compaction) -> MetaResult<bool> {
        self.compact_block_in(compaction)
    }

    #[instrument(level = "debug", skip(self))]
    fn purge(&self, ino: Ino) -> MetaResult<()> {
        self.purge_in_steps(ino)
    }

    fn orphans(&self) -> MetaResult<Vec<Ino>> {
        self.scan_all(&[keys::ORPHAN])?.iter().map(|(k, _)| keys::first_number(k)).collect()
    }

    fn set_xattr(&self, ino: Ino, name: &[u8], value: &[u8], mode: XattrMode) -> MetaResult<()> {
        self.set_xattr_in(ino, name, value, mode)
    }

    fn get_xattr(&self, ino: Ino, name: &[u8]) -> MetaResult<Vec<u8>> {
        self.get_xattr_in(ino, name)
    }

    fn list_xattr(&self, ino: Ino) -> MetaResult<Vec<Vec<u8>>> {
        self.list_xattr_in(ino)
    }

    fn remove_xattr(&self, ino: Ino, name: &[u8]) -> MetaResult<()> {
        self.remove_xattr_in(ino, name)
    }

    fn usage(&self) -> MetaResult<Usage> {
        Ok(Usage { bytes: self.counter(Counter::Bytes)?, inodes: self.counter(Counter::Inodes)? })
    }

    fn referenced_chunks(&self) -> MetaResult<Vec<(ChunkHash, u64)>> {
        let found = self.scan_all(&[keys::CHUNK_REFS])?;
        found.iter().map(|(k, v)| Ok((keys::chunk_hash(k)?, keys::decode_u64(v)))).collect()
    }

    fn audit(&self) -> MetaResult<Audit> {
        self.audit_records()
    }

    fn unreferenced_chunks(&self) -> MetaResult<Vec<(ChunkHash, Timestamp)>> {
        let found = self.scan_all(&[keys::UNREFERENCED])?;
        found.iter().map(|(k, v)| Ok((keys::chunk_hash(k)?, keys::decode_time(v)?))).collect()
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
        // A clean stop: the files created here stay, closed or not.
        self.confirm_every_create()?;
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

    #[instrument(level = "debug", skip(self))]
    fn adopt_session(&self, from: SessionId) -> MetaResult<Vec<(Ino, u64)>> {
        self.adopt_session_in(from)
    }
}
