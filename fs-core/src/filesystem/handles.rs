//! The handle table: opens and closes, the files this client has open (one [`OpenFile`] per
//! inode, shared by its handles), and what a close or an unlink of an open file commits.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use elasticfs_metadata::{Attr, FileKind, Ino, MetaError};
use tracing::instrument;

use super::{Caller, FileSystem, FileVersion, SET_ID_BITS};
use crate::error::{errno, FsError, FsResult};
use crate::metrics::Op;
use crate::open_file::{OpenFile, Readahead};

/// How [`FileSystem::create`] treats a name that exists, and when a file it creates is
/// durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CreateMode {
    /// Fail if the name exists (`O_EXCL`, which programs use as a lock; NFS GUARDED and
    /// EXCLUSIVE). The new file is durable when this returns.
    Exclusive,
    /// Open what the name holds, else create a file durable when this returns (NFS UNCHECKED:
    /// its CREATE must be on stable storage before the reply).
    OpenOrCreate,
    /// Open what the name holds, else create a file that becomes durable with its first
    /// commit at close or `fsync` (FUSE `open(O_CREAT)` without `O_EXCL`): one disk flush per
    /// small file instead of two. After a crash before that, the file is absent.
    OpenOrCreatePending,
}
/// One open of a file: what FUSE and the gateway call a file handle.
pub(super) struct Handle {
    pub(super) file: Arc<OpenFile>,
    pub(super) append: bool,
    /// The file as the store had it when this handle opened it.
    pub(super) opened_as: FileVersion,
    /// The file is as it was at this client's previous open: the kernel's cached pages of it
    /// are still right.
    pub(super) unchanged: bool,
    pub(super) readahead: Mutex<Readahead>,
}

/// A file this client has open, through however many handles.
pub(super) struct OpenEntry {
    pub(super) handles: usize,
    pub(super) file: Arc<OpenFile>,
    /// This client removed the file's last name while it was open: the last close removes
    /// the file.
    pub(super) orphaned: bool,
}

impl FileSystem {
    pub(super) fn open_file(&self, ino: Ino) -> Option<Arc<OpenFile>> {
        self.open_files.lock().unwrap().get(&ino).map(|e| e.file.clone())
    }

    pub(super) fn handle(&self, fh: u64) -> FsResult<Arc<Handle>> {
        self.handles
            .lock()
            .unwrap()
            .get(&fh)
            .cloned()
            .ok_or_else(|| FsError::new(errno::EBADF, "unknown handle"))
    }

    /// Opens a regular file and returns its handle number.
    #[instrument(level = "debug", skip(self))]
    pub fn open(&self, ino: Ino, append: bool) -> FsResult<u64> {
        self.open_known(ino, append, None)
    }

    /// Opens `ino`, as `known` says it is when the store gave its attributes just now (a
    /// create), else as the store says.
    pub(super) fn open_known(&self, ino: Ino, append: bool, known: Option<Attr>) -> FsResult<u64> {
        self.metadata_op(Op::Open, || {
            let _gate = self.open_gate(ino);
            let attr = match known {
                Some(attr) => attr,
                None => self.meta.getattr(ino)?,
            };
            self.open_as(&attr, append)
        })
    }

    /// Opens the file whose attributes the store gave just now. Call with its open gate held.
    pub(super) fn open_as(&self, attr: &Attr, append: bool) -> FsResult<u64> {
        let ino = attr.ino;
        let file = {
            let mut open = self.open_files.lock().unwrap();
            let entry = open.entry(ino).or_insert_with(|| OpenEntry {
                handles: 0,
                file: Arc::new(OpenFile::new(ino, attr.size, self.write_budget.clone())),
                orphaned: false,
            });
            entry.handles += 1;
            entry.file.clone()
        };
        // Close-to-open.
        file.adopt_committed_size(attr.size);
        file.may_have_set_id_bits.store(attr.perm & SET_ID_BITS != 0, Ordering::Relaxed);
        let opened_as = FileVersion::of(attr);
        let unchanged = self.last_opened.lock().unwrap().put(ino, opened_as) == Some(opened_as);
        let fh = self.next_handle.fetch_add(1, Ordering::Relaxed);
        let handle =
            Handle { file, append, opened_as, unchanged, readahead: Mutex::new(Readahead::default()) };
        self.handles.lock().unwrap().insert(fh, Arc::new(handle));
        Ok(fh)
    }

    /// The version of the file that handle `fh` opened (what the store had at the open), and
    /// whether it is the version of this client's previous open of it, so that a frontend's
    /// page cache of it may be kept (close-to-open: a change by anyone since then changes its
    /// times or size, and the cache is dropped).
    pub fn opened_as(&self, fh: u64) -> FsResult<(FileVersion, bool)> {
        let handle = self.handle(fh)?;
        Ok((handle.opened_as, handle.unchanged))
    }

    /// Makes handle `fh` read the file as `attr` (its [`Self::getattr`] of just now) says: the
    /// committed size becomes the handle's, unless this client has changes of its own (then
    /// `attr` already shows them). For a frontend that keeps handles open across its clients'
    /// opens and closes, as the NFS gateway does.
    pub fn revalidate(&self, fh: u64, attr: &Attr) -> FsResult<()> {
        self.handle(fh)?.file.adopt_committed_size(attr.size);
        Ok(())
    }

    /// Creates and opens a regular file (`perm` already reduced by the umask); see
    /// [`CreateMode`] for a name that exists and for when the new file is durable.
    #[instrument(level = "debug", skip(self, name))]
    pub fn create(
        &self,
        parent: Ino,
        name: &[u8],
        perm: u16,
        caller: Caller,
        mode: CreateMode,
        append: bool,
    ) -> FsResult<(Attr, u64)> {
        let pending = mode == CreateMode::OpenOrCreatePending;
        let node = caller.new_node(parent, name, FileKind::File, perm);
        let (attr, created) = match self.metadata_op(Op::Mknod, || self.create_node(&node, pending)) {
            Err(e) if e.errno == MetaError::Exists.errno() && mode != CreateMode::Exclusive => {
                (self.lookup(parent, name)?, false)
            }
            other => (other?, true),
        };
        // Opened as the store just answered: no second read of what it returned.
        let fh = self.open_known(attr.ino, append, Some(attr.clone()))?;
        if pending && created {
            self.handle(fh)?.file.create_pending.store(true, Ordering::Release);
        }
        Ok((attr, fh))
    }

    /// Commits this handle's file: after it returns, every write made before is durable.
    #[instrument(level = "debug", skip(self))]
    pub fn flush(&self, fh: u64) -> FsResult<()> {
        self.run(Op::Flush, || {
            let handle = self.handle(fh)?;
            self.flush_file(&handle.file)
        })
    }

    /// [`Self::flush`], then waits until every change acknowledged so far is durable (which
    /// it already is, unless the store defers its commits: `-o commit=DURATION`).
    pub fn fsync(&self, fh: u64) -> FsResult<()> {
        self.flush(fh)?;
        self.sync_all()
    }

    /// Waits until every change acknowledged so far is durable (`fsync` of a directory).
    pub fn sync_all(&self) -> FsResult<()> {
        Ok(self.meta.sync_all()?)
    }

    /// Closes a handle; the last one of an unlinked file removes it.
    #[instrument(level = "debug", skip(self))]
    pub fn release(&self, fh: u64) -> FsResult<()> {
        self.run(Op::Release, || {
            let Some(handle) = self.handles.lock().unwrap().remove(&fh) else {
                return Err(FsError::new(errno::EBADF, "unknown handle"));
            };
            let flushed = self.flush_file(&handle.file);
            let ino = handle.file.ino;
            let _gate = self.open_gate(ino);
            let orphaned_last = {
                let mut open = self.open_files.lock().unwrap();
                let entry = open.get_mut(&ino).expect("an open handle has an open entry");
                entry.handles -= 1;
                let last = entry.handles == 0;
                last && open.remove(&ino).is_some_and(|entry| entry.orphaned)
            };
            // A file another client unlinked was removed by that client (or is its orphan,
            // removed at its last close or when its session ends).
            if orphaned_last {
                match self.meta.getattr(ino) {
                    Ok(attr) if attr.nlink == 0 => self.meta.purge(ino)?,
                    _ => {}
                }
            }
            flushed
        })
    }

    /// A clean stop (unmount, a gateway's SIGTERM): commits every open file, then ends this
    /// client's session.
    pub fn shutdown(&self) -> FsResult<()> {
        self.flush_all()?;
        self.meta.end_own_session()?;
        self.sync_all()
    }

    /// Commits every open file (at unmount).
    pub fn flush_all(&self) -> FsResult<()> {
        let files: Vec<_> = self.open_files.lock().unwrap().values().map(|e| e.file.clone()).collect();
        for file in files {
            self.flush_file(&file)?;
        }
        Ok(())
    }

    pub(super) fn purge_unless_open(&self, ino: Ino) -> FsResult<()> {
        let _gate = self.open_gate(ino);
        match self.open_files.lock().unwrap().get_mut(&ino) {
            Some(open) => open.orphaned = true,
            None => self.meta.purge(ino)?,
        }
        Ok(())
    }
}
