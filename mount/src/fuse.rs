//! The FUSE frontend: translates fuser requests into [`FileSystem`] calls and nothing more.
//! Permission checks are the kernel's (`default_permissions`), made against the attributes
//! this adapter reports.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use elasticfs_core::metadata::{Attr, FileKind, LockKind, LockRequest, RenameMode, Timestamp, XattrMode};
use elasticfs_core::{
    dropping_set_id_bits, Caller, CreateMode, FileSystem, FileVersion, FsError, SetAttrRequest, Window,
};
use fuser::{
    AccessFlags, BsdFileFlags, Errno, FileAttr, FileHandle, FileType, FopenFlags, Generation, INodeNo,
    InitFlags, IoctlFlags, KernelConfig, LockOwner, Notifier, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate,
    ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyIoctl, ReplyLock, ReplyOpen,
    ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use tracing::{debug_span, warn};

use crate::kernel_attrs::KernelAttrs;
use crate::page_fill::{PageFill, PageFillMetrics};

/// `st_blksize`: the preferred I/O size, matching the largest FUSE write.
const IO_SIZE: u32 = 1 << 20;
/// The kernel's page, the unit its page cache holds.
const PAGE_SIZE: u64 = 4096;

pub struct FuseAdapter {
    fs: Arc<FileSystem>,
    attr_ttl: Duration,
    entry_ttl: Duration,
    /// Set once the session exists (the adapter is made before it).
    notifier: Arc<OnceLock<Notifier>>,
    /// The kernel left dropping set-user-ID and set-group-ID bits to us (HANDLE_KILLPRIV_V2).
    kills_set_id_bits: bool,
    /// Which attributes the kernel may hold of each file.
    kernel_attrs: KernelAttrs,
    /// Stores what random reads fetched around them in the kernel's page cache.
    page_fill: PageFill,
}

impl FuseAdapter {
    /// The adapter, and the slot to put the session's notifier in once it is mounted.
    pub fn new(
        fs: Arc<FileSystem>,
        attr_ttl: Duration,
        entry_ttl: Duration,
        page_fill: PageFillMetrics,
        workers: usize,
    ) -> (Self, Arc<OnceLock<Notifier>>) {
        let notifier = Arc::new(OnceLock::new());
        let adapter = FuseAdapter {
            fs,
            attr_ttl,
            entry_ttl,
            notifier: notifier.clone(),
            kills_set_id_bits: false,
            kernel_attrs: KernelAttrs::new(),
            page_fill: PageFill::new(notifier.clone(), page_fill, workers),
        };
        (adapter, notifier)
    }
}

/// A lock request from the kernel's `fcntl`/`flock` fields.
fn lock_request(
    lock_owner: LockOwner,
    start: u64,
    end: u64,
    typ: i32,
    pid: u32,
) -> Result<LockRequest, Errno> {
    let kind = match typ {
        libc::F_RDLCK => LockKind::Read,
        libc::F_WRLCK => LockKind::Write,
        libc::F_UNLCK => LockKind::Unlock,
        _ => return Err(Errno::EINVAL),
    };
    Ok(LockRequest { owner: lock_owner.0, pid, kind, start, end })
}

fn errno(e: &FsError) -> Errno {
    Errno::from_i32(e.errno)
}

fn file_type(kind: FileKind) -> FileType {
    match kind {
        FileKind::File => FileType::RegularFile,
        FileKind::Dir => FileType::Directory,
        FileKind::Symlink => FileType::Symlink,
        FileKind::Fifo => FileType::NamedPipe,
        FileKind::Socket => FileType::Socket,
        FileKind::CharDev => FileType::CharDevice,
        FileKind::BlockDev => FileType::BlockDevice,
    }
}

fn to_fuse_attr(attr: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(attr.ino),
        size: attr.size,
        blocks: attr.stored.div_ceil(512),
        atime: attr.atime.into(),
        mtime: attr.mtime.into(),
        ctime: attr.ctime.into(),
        crtime: attr.crtime.into(),
        kind: file_type(attr.kind),
        perm: attr.perm,
        nlink: attr.nlink,
        uid: attr.uid,
        gid: attr.gid,
        rdev: attr.rdev,
        blksize: IO_SIZE,
        flags: 0,
    }
}

fn timestamp(t: TimeOrNow) -> Timestamp {
    match t {
        TimeOrNow::SpecificTime(t) => t.into(),
        TimeOrNow::Now => Timestamp::now(),
    }
}

/// Permission bits of a new node: the requested mode less the caller's umask. (The kernel has
/// usually applied the umask already; applying it again is harmless.)
fn perm(mode: u32, umask: u32) -> u16 {
    (mode & !umask & 0o7777) as u16
}

/// Whether open flags ask to write (what a page fill must not cross).
fn for_writing(flags: i32) -> bool {
    flags & libc::O_ACCMODE != libc::O_RDONLY
}

/// Whether `window` holds a page beyond those of the bytes `asked` (a small file's does not).
fn adds_pages(window: &Window, asked: &std::ops::Range<u64>) -> bool {
    let page = |at: u64| at / PAGE_SIZE;
    let window_end = window.offset + window.data.len() as u64;
    page(window.offset) < page(asked.start) || page(window_end - 1) > page(asked.end.max(1) - 1)
}

fn caller(req: &Request) -> Caller {
    Caller { uid: req.uid(), gid: req.gid() }
}

impl FuseAdapter {
    /// `attr` as a reply hands it to the kernel.
    fn hand_over(&self, attr: &Attr) -> FileAttr {
        self.kernel_attrs.handing(attr.ino, FileVersion::of(attr));
        to_fuse_attr(attr)
    }

    fn reply_entry(&self, result: Result<Attr, FsError>, reply: ReplyEntry) {
        match result {
            Ok(attr) => reply.entry(&self.entry_ttl, &self.hand_over(&attr), Generation(attr.generation)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn reply_empty(result: Result<(), FsError>, reply: ReplyEmpty) {
        match result {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn reply_xattr(data: Vec<u8>, size: u32, reply: ReplyXattr) {
        if size == 0 {
            reply.size(data.len() as u32);
        } else if data.len() > size as usize {
            reply.error(Errno::ERANGE);
        } else {
            reply.data(&data);
        }
    }
}

impl fuser::Filesystem for FuseAdapter {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.set_max_write(IO_SIZE);
        let _ = config.set_max_readahead(IO_SIZE);
        // Locks go to the metadata, so that every client sees them. The kernel sends flock
        // requests as whole-file locks of the open file (fuser does not pass the flock flag on),
        // as the Linux NFS client also does.
        if let Err(missing) =
            config.add_capabilities(InitFlags::FUSE_POSIX_LOCKS | InitFlags::FUSE_FLOCK_LOCKS)
        {
            warn!("the kernel does not offer {missing:?}: locks stay local to this host");
        }
        // A listing hands the kernel each entry's attributes with its name (readdirplus), so
        // that `ls -l`, `find` and scandir+stat need no LOOKUP per entry; AUTO lets the kernel
        // go back to plain READDIR for a directory whose entries are not looked up after.
        if let Err(missing) =
            config.add_capabilities(InitFlags::FUSE_DO_READDIRPLUS | InitFlags::FUSE_READDIRPLUS_AUTO)
        {
            warn!("the kernel does not offer {missing:?}: listings look up each entry");
        }
        // Lookups and listings of one directory run side by side (the kernel otherwise holds a
        // per-directory mutex across each request): the engine serves them concurrently, as it
        // does for the NFS gateway.
        if let Err(missing) = config.add_capabilities(InitFlags::FUSE_PARALLEL_DIROPS) {
            warn!("the kernel does not offer {missing:?}: lookups in one directory queue");
        }
        // The engine drops set-id bits itself on write, chown and truncate. Otherwise the kernel
        // asks getxattr("security.capability") before every write(2): one more round trip, and
        // a metered metadata request, per write.
        self.kills_set_id_bits = config.add_capabilities(InitFlags::FUSE_HANDLE_KILLPRIV_V2).is_ok();
        Ok(())
    }

    fn destroy(&mut self) {
        if let Err(e) = self.fs.flush_all() {
            warn!("committing open files at unmount failed: {e}");
        }
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let _s = debug_span!("lookup", parent = parent.0).entered();
        self.reply_entry(self.fs.lookup(parent.0, name.as_bytes()), reply);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let _s = debug_span!("getattr", ino = ino.0).entered();
        match self.fs.getattr(ino.0) {
            Ok(attr) => reply.attr(&self.attr_ttl, &self.hand_over(&attr)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn setattr(
        &self,
        fuse_req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let _s = debug_span!("setattr", ino = ino.0).entered();
        let mut req = SetAttrRequest {
            perm: mode.map(|m| (m & 0o7777) as u16),
            uid,
            gid,
            size,
            atime: atime.map(timestamp),
            mtime: mtime.map(timestamp),
        };
        if self.kills_set_id_bits && (uid.is_some() || gid.is_some() || size.is_some()) {
            // fuser does not pass FATTR_KILL_SUIDGID on: a truncate by anyone but root (who has
            // CAP_FSETID) is taken to ask for it, as the kernel would.
            match self.fs.getattr(ino.0) {
                Ok(attr) => req = dropping_set_id_bits(&attr, &req, fuse_req.uid() == 0),
                Err(e) => return reply.error(errno(&e)),
            }
        }
        match self.fs.setattr(ino.0, &req) {
            // The kernel drops its pages past a new end once answered: no store may cross that.
            Ok(attr) if size.is_some() => {
                let (ttl, attr) = (self.attr_ttl, self.hand_over(&attr));
                self.page_fill.section(ino.0, move || reply.attr(&ttl, &attr));
            }
            Ok(attr) => reply.attr(&self.attr_ttl, &self.hand_over(&attr)),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let _s = debug_span!("readlink", ino = ino.0).entered();
        match self.fs.readlink(ino.0) {
            Ok(target) => reply.data(&target),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let _s = debug_span!("mknod", parent = parent.0).entered();
        let kind = match mode & libc::S_IFMT {
            libc::S_IFREG | 0 => FileKind::File,
            libc::S_IFIFO => FileKind::Fifo,
            libc::S_IFSOCK => FileKind::Socket,
            libc::S_IFCHR => FileKind::CharDev,
            libc::S_IFBLK => FileKind::BlockDev,
            _ => return reply.error(Errno::EINVAL),
        };
        self.reply_entry(
            self.fs.mknod(parent.0, name.as_bytes(), kind, perm(mode, umask), rdev, caller(req)),
            reply,
        );
    }

    fn mkdir(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, reply: ReplyEntry) {
        let _s = debug_span!("mkdir", parent = parent.0).entered();
        self.reply_entry(
            self.fs.mknod(parent.0, name.as_bytes(), FileKind::Dir, perm(mode, umask), 0, caller(req)),
            reply,
        );
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _s = debug_span!("unlink", parent = parent.0).entered();
        Self::reply_empty(self.fs.unlink(parent.0, name.as_bytes()), reply);
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _s = debug_span!("rmdir", parent = parent.0).entered();
        Self::reply_empty(self.fs.rmdir(parent.0, name.as_bytes()), reply);
    }

    fn symlink(&self, req: &Request, parent: INodeNo, link_name: &OsStr, target: &Path, reply: ReplyEntry) {
        let _s = debug_span!("symlink", parent = parent.0).entered();
        let result =
            self.fs.symlink(parent.0, link_name.as_bytes(), target.as_os_str().as_bytes(), caller(req));
        self.reply_entry(result, reply);
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let _s = debug_span!("rename", parent = parent.0, newparent = newparent.0).entered();
        let mode = if flags.is_empty() {
            RenameMode::Replace
        } else if flags == RenameFlags::RENAME_NOREPLACE {
            RenameMode::NoReplace
        } else if flags == RenameFlags::RENAME_EXCHANGE {
            RenameMode::Exchange
        } else {
            return reply.error(Errno::EINVAL);
        };
        Self::reply_empty(
            self.fs.rename(parent.0, name.as_bytes(), newparent.0, newname.as_bytes(), mode),
            reply,
        );
    }

    fn link(&self, _req: &Request, ino: INodeNo, newparent: INodeNo, newname: &OsStr, reply: ReplyEntry) {
        let _s = debug_span!("link", ino = ino.0, newparent = newparent.0).entered();
        self.reply_entry(self.fs.link(ino.0, newparent.0, newname.as_bytes()), reply);
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let _s = debug_span!("open", ino = ino.0).entered();
        match self.fs.open(ino.0, flags.0 & libc::O_APPEND != 0) {
            Ok(fh) => {
                let writes = for_writing(flags.0);
                self.page_fill.opened(ino.0, writes);
                let flags = match self.fs.opened_as(fh) {
                    Ok((_, true)) => FopenFlags::FOPEN_KEEP_CACHE,
                    // Close-to-open: the kernel's cached size may predate another client's
                    // change, and it would cut reads short at it. (Pages are dropped anyway
                    // without FOPEN_KEEP_CACHE.)
                    opened => {
                        let current = opened.is_ok_and(|(v, _)| self.kernel_attrs.hold_only(ino.0, v));
                        if let (false, Some(notifier)) = (current, self.notifier.get()) {
                            let _ = notifier.inval_inode(ino, -1, 0);
                        }
                        FopenFlags::empty()
                    }
                };
                if writes || !flags.contains(FopenFlags::FOPEN_KEEP_CACHE) {
                    // Writes go through the page cache, and without FOPEN_KEEP_CACHE the kernel
                    // drops it once answered: no store may cross either.
                    self.page_fill.section(ino.0, move || reply.opened(FileHandle(fh), flags));
                } else {
                    reply.opened(FileHandle(fh), flags)
                }
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let _s = debug_span!("read", ino = ino.0, offset, size).entered();
        let Some(epoch) = self.page_fill.epoch_to_read(ino.0) else {
            return match self.fs.read(fh.0, offset, size) {
                Ok(data) => reply.data(&data.contiguous()),
                Err(e) => reply.error(errno(&e)),
            };
        };
        match self.fs.read_with_window(fh.0, offset, size) {
            Ok((data, window)) => {
                let asked = offset..offset + data.len() as u64;
                reply.data(&data.contiguous());
                // Only once answered: the page asked for stays locked until then.
                if let Some(window) = window.filter(|w| adds_pages(w, &asked)) {
                    self.page_fill.offer(ino.0, epoch, window);
                }
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let _s = debug_span!("write", ino = ino.0, offset, len = data.len()).entered();
        if write_flags.contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID) {
            if let Err(e) = self.fs.drop_set_id_bits_before_write(fh.0) {
                return reply.error(errno(&e));
            }
        }
        match self.fs.write(fh.0, offset, data) {
            Ok(n) => reply.written(n as u32),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn flush(&self, _req: &Request, ino: INodeNo, fh: FileHandle, lock_owner: LockOwner, reply: ReplyEmpty) {
        let _s = debug_span!("flush", ino = ino.0).entered();
        // POSIX: closing any descriptor of a file releases the process's locks on it.
        let flushed = self.fs.flush(fh.0);
        let released = self.fs.release_locks(ino.0, lock_owner.0);
        Self::reply_empty(flushed.and(released), reply);
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        flags: OpenFlags,
        lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let _s = debug_span!("release", ino = ino.0).entered();
        self.page_fill.released(ino.0, for_writing(flags.0));
        // The last close of an open file releases its flock.
        let released = match lock_owner {
            Some(owner) => self.fs.release_locks(ino.0, owner.0),
            None => Ok(()),
        };
        Self::reply_empty(self.fs.release(fh.0).and(released), reply);
    }

    fn getlk(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        lock_owner: LockOwner,
        start: u64,
        end: u64,
        typ: i32,
        pid: u32,
        reply: ReplyLock,
    ) {
        let _s = debug_span!("getlk", ino = ino.0).entered();
        let req = match lock_request(lock_owner, start, end, typ, pid) {
            Ok(req) => req,
            Err(e) => return reply.error(e),
        };
        match self.fs.test_lock(ino.0, &req) {
            Ok(Some(holder)) => {
                let typ = if holder.kind == LockKind::Write { libc::F_WRLCK } else { libc::F_RDLCK };
                // The kernel takes no offset past OFFSET_MAX (it answers EIO): a lock "to the
                // end" set by an NFS client ends at u64::MAX.
                let offset_max = i64::MAX as u64;
                reply.locked(holder.start.min(offset_max), holder.end.min(offset_max), typ, holder.pid)
            }
            Ok(None) => reply.locked(start, end, libc::F_UNLCK, 0),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn setlk(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        lock_owner: LockOwner,
        start: u64,
        end: u64,
        typ: i32,
        pid: u32,
        sleep: bool,
        reply: ReplyEmpty,
    ) {
        let _s = debug_span!("setlk", ino = ino.0, sleep).entered();
        let req = match lock_request(lock_owner, start, end, typ, pid) {
            Ok(req) => req,
            Err(e) => return reply.error(e),
        };
        let (fs, notifier, page_fill) = (self.fs.clone(), self.notifier.clone(), self.page_fill.clone());
        let set = move || {
            let result = fs.set_lock(fh.0, ino.0, &req, sleep);
            if result.is_err() || req.kind == LockKind::Unlock {
                return Self::reply_empty(result, reply);
            }
            // What the kernel cached of the file may predate the last holder's writes.
            page_fill.section(ino.0, move || {
                if let Some(notifier) = notifier.get() {
                    let _ = notifier.inval_inode(ino, 0, 0);
                }
                Self::reply_empty(result, reply)
            });
        };
        if sleep {
            // A waiting lock must not hold a FUSE worker: the holder's unlock may need one.
            std::thread::spawn(set);
        } else {
            set();
        }
    }

    fn fsync(&self, _req: &Request, ino: INodeNo, fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        let _s = debug_span!("fsync", ino = ino.0).entered();
        Self::reply_empty(self.fs.fsync(fh.0), reply);
    }

    /// Namespace changes are durable when acknowledged, except with `-o commit=DURATION`: then
    /// this waits for the deferred commits.
    fn fsyncdir(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        Self::reply_empty(self.fs.sync_all(), reply);
    }

    /// No ioctl is supported: ENOTTY, as for any file that is not a terminal (programs probe with
    /// TCGETS often: isatty on every file they open).
    #[allow(clippy::too_many_arguments)]
    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: ReplyIoctl,
    ) {
        reply.error(Errno::ENOTTY);
    }

    fn opendir(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        reply.opened(FileHandle(self.fs.open_dir()), FopenFlags::empty());
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.fs.release_dir(fh.0);
        reply.ok();
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let _s = debug_span!("readdir", ino = ino.0, offset).entered();
        let result = self.fs.list_open_dir(fh.0, ino.0, offset, |entry_ino, cookie, kind, name| {
            reply.add(INodeNo(entry_ino), cookie, file_type(kind), OsStr::from_bytes(name))
        });
        match result.map(|_| ()) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let _s = debug_span!("readdirplus", ino = ino.0, offset).entered();
        let result =
            self.fs.list_open_dir_plus(fh.0, ino.0, offset, |entry_ino, cookie, _kind, name, attr| {
                // An entry removed since it was listed is skipped, not an error.
                let Some(attr) = attr else { return false };
                let fattr = self.hand_over(attr);
                reply.add(
                    INodeNo(entry_ino),
                    cookie,
                    OsStr::from_bytes(name),
                    &self.entry_ttl,
                    &fattr,
                    Generation(attr.generation),
                )
            });
        match result.map(|_| ()) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        // Capacity is elastic: report 8 EiB, as EFS does, and the counters for what is used.
        const BSIZE: u64 = 4096;
        const TOTAL_BLOCKS: u64 = (8u64 << 60) / BSIZE;
        const TOTAL_FILES: u64 = 1 << 48;
        match self.fs.statfs() {
            Ok(usage) => {
                let used = usage.bytes.div_ceil(BSIZE);
                let free = TOTAL_BLOCKS - used.min(TOTAL_BLOCKS);
                let ffree = TOTAL_FILES - usage.inodes.min(TOTAL_FILES);
                reply.statfs(TOTAL_BLOCKS, free, free, TOTAL_FILES, ffree, BSIZE as u32, 255, BSIZE as u32)
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let _s = debug_span!("setxattr", ino = ino.0).entered();
        let mode = match flags {
            0 => XattrMode::Upsert,
            libc::XATTR_CREATE => XattrMode::Create,
            libc::XATTR_REPLACE => XattrMode::Replace,
            _ => return reply.error(Errno::EINVAL),
        };
        Self::reply_empty(self.fs.set_xattr(ino.0, name.as_bytes(), value, mode), reply);
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let _s = debug_span!("getxattr", ino = ino.0).entered();
        match self.fs.get_xattr(ino.0, name.as_bytes()) {
            Ok(value) => Self::reply_xattr(value, size, reply),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let _s = debug_span!("listxattr", ino = ino.0).entered();
        match self.fs.list_xattr(ino.0) {
            Ok(names) => {
                let mut data = Vec::new();
                for name in names {
                    data.extend_from_slice(&name);
                    data.push(0);
                }
                Self::reply_xattr(data, size, reply)
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _s = debug_span!("removexattr", ino = ino.0).entered();
        Self::reply_empty(self.fs.remove_xattr(ino.0, name.as_bytes()), reply);
    }

    fn access(&self, _req: &Request, ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        // With default_permissions the kernel checks permissions itself; this only confirms
        // that the inode exists.
        Self::reply_empty(self.fs.getattr(ino.0).map(|_| ()), reply);
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let _s = debug_span!("create", parent = parent.0).entered();
        // Without O_EXCL, a new file is durable with its first commit at close or fsync.
        let create =
            if flags & libc::O_EXCL != 0 { CreateMode::Exclusive } else { CreateMode::OpenOrCreatePending };
        let append = flags & libc::O_APPEND != 0;
        match self.fs.create(parent.0, name.as_bytes(), perm(mode, umask), caller(req), create, append) {
            Ok((attr, fh)) => {
                // The file may have existed (no O_EXCL), and been read at random here.
                self.page_fill.opened(attr.ino, for_writing(flags));
                let (ttl, fuse_attr) = (self.entry_ttl, self.hand_over(&attr));
                self.page_fill.section(attr.ino, move || {
                    let (generation, fh) = (Generation(attr.generation), FileHandle(fh));
                    reply.created(&ttl, &fuse_attr, generation, fh, FopenFlags::empty())
                });
            }
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let _s = debug_span!("fallocate", ino = ino.0, offset, length).entered();
        Self::reply_empty(self.fs.fallocate(fh.0, offset, length, mode), reply);
    }
}
