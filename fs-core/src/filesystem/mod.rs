//! The one file system API both frontends use. Methods block the calling thread (a FUSE worker
//! or an NFS task's blocking section); object-store I/O runs on the engine's own runtime.
//! Attributes and names are here; the read path (`read_path.rs`), the write path
//! (`write_path.rs`), flushes and truncates (`flush.rs`), the handle table (`handles.rs`) and
//! directory listings (`listing.rs`) are modules of their own.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use elasticfs_metadata::throughput::IoKind;
use elasticfs_metadata::{
    Attr, FileKind, Ino, LockKind, LockRecord, LockRequest, MetaStore, NewNode, Rename, RenameMode, SetAttr,
    Timestamp, Usage, XattrMode,
};
use tokio::sync::Semaphore;
use tracing::{instrument, warn};

use crate::access::{without_privileges, Identity};
use crate::chunk_store::ChunkStore;
use crate::compaction::Compactor;
use crate::error::{errno, FsError, FsResult};
use crate::locks::LockTable;
use crate::metrics::{EngineMetrics, Op};
use crate::open_file::WriteBudget;
use crate::throttle::Throttle;

mod changed_dirs;
mod dir_handles;
mod flush;
mod handles;

pub use handles::CreateMode;
mod listing;

use handles::{Handle, OpenEntry};
mod names;
mod read_path;
pub use read_path::Window;
mod write_path;

use changed_dirs::ChangedDirs;
use dir_handles::DirHandles;
use names::RecentNames;

/// Largest file offset accepted (as ext4's 16 TiB limit, rounded to a power of two).
const MAX_FILE_SIZE: u64 = 1 << 44;

/// Set-user-ID and set-group-ID.
const SET_ID_BITS: u16 = 0o6000;

/// Stripes of the lock that keeps opens and removing unlinks of one inode apart.
const OPEN_GATES: usize = 64;

/// Tunables of the engine.
#[derive(Clone, Debug)]
pub struct FsConfig {
    /// Bytes of verified chunk data kept in memory.
    pub cache_bytes: usize,
    /// Blocks uploaded at once; also bounds the memory of sealed blocks waiting to upload.
    pub max_uploads: usize,
    /// Largest readahead window, in blocks.
    pub max_readahead_blocks: u64,
    /// Bytes of written blocks kept in memory, across all files, until a flush or the room is
    /// needed: a block written in place is uploaded once per flush, not once per write.
    pub write_buffer_bytes: usize,
    /// How long the frontend lets its clients cache attributes (FUSE's `attr-cache`): a
    /// directory's attributes from this client's own change answer a getattr for that long.
    pub attr_cache: Duration,
    /// Whether a read that finds a block whose slices want compacting starts compacting it
    /// (off for a read-only mount, which should not write).
    pub compact_found: bool,
}

impl Default for FsConfig {
    fn default() -> Self {
        FsConfig {
            cache_bytes: 256 << 20,
            max_uploads: 16,
            max_readahead_blocks: 8,
            write_buffer_bytes: 256 << 20,
            attr_cache: Duration::from_secs(1),
            compact_found: true,
        }
    }
}

/// Who is asking: new nodes are owned by the caller.
#[derive(Clone, Copy, Debug)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
}

impl Caller {
    /// A node of `kind` named `name` in `parent`, owned by the caller, with the permission bits
    /// of `perm`.
    fn new_node(self, parent: Ino, name: &[u8], kind: FileKind, perm: u16) -> NewNode {
        NewNode { uid: self.uid, gid: self.gid, ..NewNode::new(parent, name, kind, perm & 0o7777) }
    }
}

/// A `setattr` request as a frontend receives it.
#[derive(Clone, Debug, Default)]
pub struct SetAttrRequest {
    pub perm: Option<u16>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<Timestamp>,
    pub mtime: Option<Timestamp>,
}

pub struct FileSystem {
    meta: Arc<dyn MetaStore>,
    chunks: Arc<ChunkStore>,
    runtime: tokio::runtime::Runtime,
    config: FsConfig,
    block_size: u64,
    inline_threshold: u64,
    open_files: Mutex<HashMap<Ino, OpenEntry>>,
    handles: Mutex<HashMap<u64, Arc<Handle>>>,
    next_handle: AtomicU64,
    upload_slots: Arc<Semaphore>,
    write_budget: Arc<WriteBudget>,
    open_gates: Vec<Mutex<()>>,
    /// What each recently opened file looked like at its last open (see [`Handle::unchanged`]).
    last_opened: Mutex<lru::LruCache<Ino, FileVersion>>,
    names: RecentNames,
    changed_dirs: ChangedDirs,
    dir_handles: DirHandles,
    locks: LockTable,
    throttle: Arc<Throttle>,
    compactor: Arc<Compactor>,
}

/// What tells one state of a file's content from another: any change by anyone moves its
/// modification or change time, or its size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileVersion {
    mtime: Timestamp,
    ctime: Timestamp,
    size: u64,
}

impl FileVersion {
    pub fn of(attr: &Attr) -> Self {
        FileVersion { mtime: attr.mtime, ctime: attr.ctime, size: attr.size }
    }
}

/// Files whose last-open version is remembered.
const REMEMBERED_OPENS: usize = 65536;

impl FileSystem {
    pub fn new(meta: Arc<dyn MetaStore>, mut chunks: ChunkStore, config: FsConfig) -> FsResult<Self> {
        chunks.protect_with(meta.clone());
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .thread_name("elasticfs-io")
            .enable_all()
            .build()
            .map_err(|e| FsError::io(format!("starting the I/O runtime: {e}")))?;
        let sb = meta.superblock().clone();
        let throttle = Arc::new(Throttle::new(meta.clone(), chunks.metrics().clone()));
        let idle_reports = Arc::downgrade(&throttle);
        runtime.spawn(async move {
            // An idle client's last I/O reaches the governor's figures within a second.
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
            loop {
                tick.tick().await;
                let Some(throttle) = idle_reports.upgrade() else { break };
                let _ = tokio::task::spawn_blocking(move || throttle.report()).await;
            }
        });
        let write_budget = WriteBudget::new(config.write_buffer_bytes, chunks.metrics().write_buffer());
        let chunks = Arc::new(chunks);
        let compactor = Compactor::new(
            meta.clone(),
            chunks.clone(),
            throttle.clone(),
            runtime.handle().clone(),
            sb.inline_threshold as u64,
        );
        Ok(FileSystem {
            compactor,
            locks: LockTable::new(meta.clone()),
            throttle,
            meta,
            chunks,
            runtime,
            block_size: sb.block_size as u64,
            inline_threshold: sb.inline_threshold as u64,
            upload_slots: Arc::new(Semaphore::new(config.max_uploads.max(1))),
            write_budget,
            open_files: Mutex::new(HashMap::new()),
            handles: Mutex::new(HashMap::new()),
            next_handle: AtomicU64::new(1),
            open_gates: (0..OPEN_GATES).map(|_| Mutex::new(())).collect(),
            last_opened: Mutex::new(lru::LruCache::new(REMEMBERED_OPENS.try_into().expect("non-zero"))),
            names: RecentNames::new(),
            changed_dirs: ChangedDirs::new(config.attr_cache),
            dir_handles: DirHandles::default(),
            config,
        })
    }

    pub fn meta(&self) -> &Arc<dyn MetaStore> {
        &self.meta
    }

    /// This client's metrics (see [`crate::metrics`]).
    pub fn metrics(&self) -> &Arc<EngineMetrics> {
        self.chunks.metrics()
    }

    /// Counts and times one operation, throttling included.
    fn run<T>(&self, op: Op, body: impl FnOnce() -> FsResult<T>) -> FsResult<T> {
        let started = Instant::now();
        let result = crate::chunk_store::may_block_on_disk(body);
        self.metrics().operation(op, started.elapsed(), result.is_err());
        result
    }

    /// [`Self::run`] for an operation metered as one metadata request (the smallest request
    /// size, 4 KiB as EFS meters it, whatever it carries).
    fn metadata_op<T>(&self, op: Op, body: impl FnOnce() -> FsResult<T>) -> FsResult<T> {
        self.run(op, || {
            self.throttle.charge(IoKind::Metadata, 0);
            body()
        })
    }

    /// The lock that would keep `req` from being granted (F_GETLK).
    pub fn test_lock(&self, ino: Ino, req: &LockRequest) -> FsResult<Option<LockRecord>> {
        self.run(Op::TestLock, || self.locks.test(ino, req))
    }

    /// Releases every lock `owner` holds on `ino` (close, process exit).
    pub fn release_locks(&self, ino: Ino, owner: u64) -> FsResult<()> {
        self.locks.release(ino, owner)
    }

    /// Takes over the sessions of other processes that served `label` (a restarted NFS
    /// gateway's killed predecessor on this host, or with `any_host` a failed gateway whose
    /// address this one now serves): their locks become this client's, and those sessions end.
    /// Returns the locks taken over as (file, owner), or `None` if there was no such session.
    pub fn take_over_sessions(&self, label: &str, any_host: bool) -> FsResult<Option<Vec<(Ino, u64)>>> {
        let me = elasticfs_metadata::ClientInfo::this_process(label);
        let mut taken = None;
        for old in self.meta.sessions()? {
            let same_host = old.client.host == me.host;
            let other_process = !same_host || old.client.pid != me.pid;
            if (any_host || same_host) && old.client.mountpoint == label && other_process {
                taken.get_or_insert_with(Vec::new).extend(self.meta.adopt_session(old.id)?);
            }
        }
        if let Some(taken) = &taken {
            self.locks.held_by_this_client(taken);
        }
        Ok(taken)
    }

    /// Sets or releases a lock through handle `fh`, with the consistency NFS gives locks: an
    /// unlock first commits what the handle's file wrote, and a granted lock makes this client
    /// see what others committed before it (the caller drops its own caches of the file).
    pub fn set_lock(&self, fh: u64, ino: Ino, req: &LockRequest, wait: bool) -> FsResult<()> {
        self.run(Op::SetLock, || {
            if req.kind == LockKind::Unlock {
                self.flush(fh)?;
                return self.locks.set(ino, req, false);
            }
            self.locks.set(ino, req, wait)?;
            if let Some(file) = self.open_file(ino) {
                file.adopt_committed_size(self.meta.getattr(ino)?.size);
            }
            Ok(())
        })
    }

    pub fn chunks(&self) -> &Arc<ChunkStore> {
        &self.chunks
    }

    pub fn block_size(&self) -> u64 {
        self.block_size
    }

    /// Runs object-store work to completion from a blocking caller.
    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.runtime.block_on(f)
    }

    // ----- attributes and names -------------------------------------------------------------

    /// Attributes as this client sees them: including its own uncommitted writes.
    pub fn with_local_changes(&self, mut attr: Attr) -> Attr {
        if let Some(file) = self.open_file(attr.ino) {
            let st = file.state.lock().unwrap();
            if let Some(mtime) = st.mtime {
                attr.size = st.size;
                attr.mtime = mtime;
                attr.ctime = attr.ctime.max(mtime);
            }
        }
        attr
    }

    #[instrument(level = "debug", skip(self))]
    pub fn getattr(&self, ino: Ino) -> FsResult<Attr> {
        self.metadata_op(Op::Getattr, || match self.changed_dirs.take(ino) {
            Some(dir) => Ok(dir),
            None => Ok(self.with_local_changes(self.meta.getattr(ino)?)),
        })
    }

    #[instrument(level = "debug", skip(self, name))]
    pub fn lookup(&self, parent: Ino, name: &[u8]) -> FsResult<Attr> {
        self.metadata_op(Op::Lookup, || {
            let attr = self.meta.lookup(parent, name)?;
            if name != b"." && name != b".." {
                self.names.saw(parent, name, attr.ino);
            }
            Ok(self.with_local_changes(attr))
        })
    }

    /// Creates a node of any kind but symlink. `perm` is the requested mode's permission bits,
    /// already reduced by the umask.
    #[instrument(level = "debug", skip(self, name))]
    pub fn mknod(
        &self,
        parent: Ino,
        name: &[u8],
        kind: FileKind,
        perm: u16,
        rdev: u32,
        caller: Caller,
    ) -> FsResult<Attr> {
        let node = NewNode { rdev, ..caller.new_node(parent, name, kind, perm) };
        self.metadata_op(Op::Mknod, || self.create_node(&node, false))
    }

    #[instrument(level = "debug", skip(self, name, target))]
    pub fn symlink(&self, parent: Ino, name: &[u8], target: &[u8], caller: Caller) -> FsResult<Attr> {
        self.metadata_op(Op::Symlink, || {
            if target.is_empty() || target.len() > 4095 {
                return Err(FsError::new(
                    if target.is_empty() { errno::ENOENT } else { errno::ENAMETOOLONG },
                    "symlink target length",
                ));
            }
            let node = NewNode {
                link_target: target.to_vec(),
                ..caller.new_node(parent, name, FileKind::Symlink, 0o777)
            };
            self.create_node(&node, false)
        })
    }

    /// Creates `node`; a `pending` one is durable only with its first commit at close or
    /// `fsync` (see [`CreateMode::OpenOrCreatePending`]).
    fn create_node(&self, node: &NewNode, pending: bool) -> FsResult<Attr> {
        let created =
            if pending { self.meta.create_pending(node)? } else { self.meta.create_in_dir(node)? };
        self.names.saw(node.parent, &node.name, created.attr.ino);
        self.changed_dirs.changed(created.dir);
        Ok(created.attr)
    }

    pub fn readlink(&self, ino: Ino) -> FsResult<Vec<u8>> {
        self.metadata_op(Op::Readlink, || Ok(self.meta.readlink(ino)?))
    }

    #[instrument(level = "debug", skip(self, name))]
    pub fn link(&self, ino: Ino, parent: Ino, name: &[u8]) -> FsResult<Attr> {
        self.metadata_op(Op::Link, || {
            self.changed_dirs.forget(parent);
            let attr = self.meta.link(ino, parent, name)?;
            self.names.saw(parent, name, ino);
            Ok(self.with_local_changes(attr))
        })
    }

    #[instrument(level = "debug", skip(self, name))]
    pub fn unlink(&self, parent: Ino, name: &[u8]) -> FsResult<()> {
        self.metadata_op(Op::Unlink, || {
            let victim = match self.names.guess(parent, name) {
                Some(ino) => ino,
                None => self.meta.lookup(parent, name)?.ino,
            };
            let gate = self.open_gate(victim);
            let closed = self.closed(victim);
            self.names.gone(parent, name);
            self.changed_dirs.forget(parent);
            let unlinked = self.meta.unlink(parent, name, closed)?;
            drop(gate);
            if let Some(dir) = unlinked.dir.clone() {
                self.changed_dirs.changed(dir);
            }
            if unlinked.orphaned {
                self.purge_unless_open(unlinked.attr.ino)?;
            }
            Ok(())
        })
    }

    #[instrument(level = "debug", skip(self, name))]
    pub fn rmdir(&self, parent: Ino, name: &[u8]) -> FsResult<()> {
        self.metadata_op(Op::Rmdir, || {
            self.names.gone(parent, name);
            self.changed_dirs.forget(parent);
            Ok(self.meta.rmdir(parent, name)?)
        })
    }

    #[instrument(level = "debug", skip(self, name, new_name))]
    pub fn rename(
        &self,
        parent: Ino,
        name: &[u8],
        new_parent: Ino,
        new_name: &[u8],
        mode: RenameMode,
    ) -> FsResult<()> {
        self.metadata_op(Op::Rename, || {
            // Only a plain rename can unlink what its destination names.
            let victim = match mode {
                RenameMode::Replace => self
                    .names
                    .guess(new_parent, new_name)
                    .or_else(|| self.meta.lookup(new_parent, new_name).ok().map(|attr| attr.ino)),
                RenameMode::NoReplace | RenameMode::Exchange => None,
            };
            self.names.gone(parent, name);
            self.names.gone(new_parent, new_name);
            // Both directories change, and so does a directory that moves.
            self.changed_dirs.forget_all();
            let gate = victim.map(|ino| self.open_gate(ino));
            let closed = victim.and_then(|ino| self.closed(ino));
            let rename =
                Rename { parent, name: name.to_vec(), new_parent, new_name: new_name.to_vec(), mode, closed };
            let replaced = self.meta.rename(&rename)?;
            drop(gate);
            match replaced {
                Some(replaced) if replaced.orphaned => self.purge_unless_open(replaced.attr.ino),
                _ => Ok(()),
            }
        })
    }

    /// `ino` if no handle of this client holds it: an unlink may then remove it outright.
    /// Call with the inode's open gate held, so that no open slips in before the unlink.
    fn closed(&self, ino: Ino) -> Option<Ino> {
        (!self.open_files.lock().unwrap().contains_key(&ino)).then_some(ino)
    }

    /// Serialises opening an inode with unlinks that may remove it (striped by inode number,
    /// so that unrelated opens rarely wait).
    fn open_gate(&self, ino: Ino) -> std::sync::MutexGuard<'_, ()> {
        self.open_gates[(ino % OPEN_GATES as u64) as usize].lock().unwrap()
    }

    #[instrument(level = "debug", skip(self))]
    pub fn setattr(&self, ino: Ino, req: &SetAttrRequest) -> FsResult<Attr> {
        self.metadata_op(Op::Setattr, || {
            self.changed_dirs.forget(ino);
            let mut attr = None;
            if let Some(size) = req.size {
                attr = Some(self.truncate(ino, size)?);
            }
            let mut changes = SetAttr {
                perm: req.perm,
                uid: req.uid,
                gid: req.gid,
                atime: req.atime,
                mtime: req.mtime,
                ctime: None,
            };
            let dated = match (req.mtime, self.open_file(ino)) {
                (Some(mtime), Some(file)) => self.flush_dated(&file, mtime)?,
                _ => false,
            };
            if dated {
                changes.mtime = None;
            }
            if changes != SetAttr::default() || (attr.is_none() && !dated) {
                attr = Some(self.meta.setattr(ino, &changes)?);
            } else if dated {
                // The dated commit changed what a truncate above answered.
                attr = Some(self.meta.getattr(ino)?);
            }
            if let (Some(file), Some(attr)) = (self.open_file(ino), &attr) {
                file.may_have_set_id_bits.store(attr.perm & SET_ID_BITS != 0, Ordering::Relaxed);
            }
            Ok(self.with_local_changes(attr.expect("set above")))
        })
    }

    /// Drops the set-user-ID and set-group-ID bits that a write by `who` to the file `attr`
    /// describes must drop (see [`Identity::mode_after_write`]); returns the attributes after.
    /// For the NFS gateway, which has the caller and fresh attributes at hand; a FUSE mount,
    /// whose kernel knows the caller's privileges, uses [`Self::drop_set_id_bits_before_write`].
    pub fn drop_privileges_for_write(&self, attr: Attr, who: &Identity) -> FsResult<Attr> {
        match who.mode_after_write(&attr) {
            Some(perm) => self.setattr(attr.ino, &SetAttrRequest { perm: Some(perm), ..Default::default() }),
            None => Ok(attr),
        }
    }

    /// Drops the set-user-ID and set-group-ID bits of handle `fh`'s file before a write whose
    /// caller may not keep them (the FUSE kernel module says so with FUSE_WRITE_KILL_SUIDGID,
    /// having left this to us: HANDLE_KILLPRIV_V2). The attributes are read only if the file
    /// had such a bit at its last open or this client's last chmod of it.
    pub fn drop_set_id_bits_before_write(&self, fh: u64) -> FsResult<()> {
        let file = self.handle(fh)?.file.clone();
        if !file.may_have_set_id_bits.load(Ordering::Relaxed) {
            return Ok(());
        }
        let attr = self.getattr(file.ino)?;
        if let Some(perm) = without_privileges(attr.perm) {
            self.setattr(file.ino, &SetAttrRequest { perm: Some(perm), ..Default::default() })?;
        }
        file.may_have_set_id_bits.store(false, Ordering::Relaxed);
        Ok(())
    }

    pub fn statfs(&self) -> FsResult<Usage> {
        self.metadata_op(Op::Statfs, || Ok(self.meta.usage()?))
    }

    pub fn set_xattr(&self, ino: Ino, name: &[u8], value: &[u8], mode: XattrMode) -> FsResult<()> {
        self.metadata_op(Op::SetXattr, || {
            self.changed_dirs.forget(ino);
            Ok(self.meta.set_xattr(ino, name, value, mode)?)
        })
    }

    pub fn get_xattr(&self, ino: Ino, name: &[u8]) -> FsResult<Vec<u8>> {
        self.metadata_op(Op::GetXattr, || Ok(self.meta.get_xattr(ino, name)?))
    }

    pub fn list_xattr(&self, ino: Ino) -> FsResult<Vec<Vec<u8>>> {
        self.metadata_op(Op::ListXattr, || Ok(self.meta.list_xattr(ino)?))
    }

    pub fn remove_xattr(&self, ino: Ino, name: &[u8]) -> FsResult<()> {
        self.metadata_op(Op::RemoveXattr, || {
            self.changed_dirs.forget(ino);
            Ok(self.meta.remove_xattr(ino, name)?)
        })
    }
}

impl Drop for FileSystem {
    fn drop(&mut self) {
        if let Err(e) = self.flush_all() {
            warn!("committing open files at shutdown failed: {e}");
        }
        // Before the runtime goes with the fields: background compactions upload through it.
        self.compactor.shut_down(std::time::Duration::from_secs(30));
    }
}
