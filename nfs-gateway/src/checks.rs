//! Permission decisions shared by NFSv3 and NFSv4, as errno values each version maps to its
//! own status: the same caller gets the same answer whichever version it speaks.

use elasticfs_core::metadata::{Attr, FileKind, Ino, Timestamp};
use elasticfs_core::{
    CreateMode, FileSystem, FsError, FsResult, Identity, SetAttrRequest, MAY_EXEC, MAY_READ, MAY_WRITE,
};

use crate::open_files::OpenFiles;

/// The object a file handle (`ino`, `generation`) names, if it still lives: `Err(None)` when it
/// is gone or its inode number was reused (the handle is stale), `Err(Some(e))` when the
/// engine failed to say.
pub fn live(fs: &FileSystem, ino: Ino, generation: u64) -> Result<Attr, Option<FsError>> {
    match fs.getattr(ino) {
        Ok(attr) if attr.generation == generation => Ok(attr),
        Ok(_) => Err(None),
        Err(e) if e.errno == libc::ENOENT => Err(None),
        Err(e) => Err(Some(e)),
    }
}

/// ACCESS's bits, the same in NFSv3 and NFSv4.
pub const ACCESS_READ: u32 = 0x01;
pub const ACCESS_LOOKUP: u32 = 0x02;
pub const ACCESS_MODIFY: u32 = 0x04;
pub const ACCESS_EXTEND: u32 = 0x08;
pub const ACCESS_DELETE: u32 = 0x10;
pub const ACCESS_EXECUTE: u32 = 0x20;

fn denied(errno: i32) -> FsError {
    FsError::new(errno, "permission denied")
}

fn allow(permitted: bool) -> FsResult<()> {
    if permitted {
        Ok(())
    } else {
        Err(denied(libc::EACCES))
    }
}

/// The ACCESS bits `who` holds on `attr` (no write access on a read-only export).
pub fn granted_access(who: &Identity, attr: &Attr, read_only: bool) -> u32 {
    let (r, x) = (who.may(attr, MAY_READ), who.may(attr, MAY_EXEC));
    let w = who.may(attr, MAY_WRITE) && !read_only;
    let mut granted = 0;
    if r {
        granted |= ACCESS_READ;
    }
    if w {
        granted |= ACCESS_MODIFY | ACCESS_EXTEND;
    }
    if attr.kind == FileKind::Dir {
        if x {
            granted |= ACCESS_LOOKUP;
        }
        if w {
            granted |= ACCESS_DELETE;
        }
    } else if x {
        granted |= ACCESS_EXECUTE;
    }
    granted
}

/// Applies a SETATTR as `who`, refused as chmod, chown, truncate and utimes(2) would: EPERM
/// for what only an owner may do, EACCES for a truncate or a touch without write permission.
/// `to_now` says both times are to become the server's "now" (which needs less permission).
pub fn setattr(
    fs: &FileSystem,
    who: &Identity,
    attr: &Attr,
    req: &SetAttrRequest,
    to_now: bool,
) -> FsResult<Attr> {
    let only_times = req.perm.is_none() && req.uid.is_none() && req.gid.is_none() && req.size.is_none();
    let permitted = if only_times && to_now { who.may_touch(attr) } else { who.may_set(attr, req) };
    if !permitted {
        let owner_only = req.perm.is_some() || req.uid.is_some() || req.gid.is_some() || !to_now;
        return Err(denied(if owner_only { libc::EPERM } else { libc::EACCES }));
    }
    if req.size.is_some() && attr.kind == FileKind::Dir {
        return Err(FsError::new(libc::EISDIR, "a directory has no size to set"));
    }
    fs.setattr(attr.ino, &who.effective_setattr(attr, req))
}

/// Removes `name` (a file, or with `rmdir` a directory) from `dir` if `who` may; the file's
/// gateway handle is closed first, so that it goes at once.
pub fn remove(
    fs: &FileSystem,
    open: &OpenFiles,
    who: &Identity,
    dir: &Attr,
    name: &[u8],
    rmdir: bool,
) -> FsResult<()> {
    let victim = fs.lookup(dir.ino, name)?;
    allow(who.may_delete(dir, &victim))?;
    open.close(victim.ino)?;
    if rmdir {
        fs.rmdir(dir.ino, name)
    } else {
        fs.unlink(dir.ino, name)
    }
}

/// Renames `name` in `from` to `new_name` in `to` if `who` may, replacing what is there.
pub fn rename(
    fs: &FileSystem,
    open: &OpenFiles,
    who: &Identity,
    (from, name): (&Attr, &[u8]),
    (to, new_name): (&Attr, &[u8]),
) -> FsResult<()> {
    let moving = fs.lookup(from.ino, name)?;
    allow(who.may_delete(from, &moving))?;
    if let Ok(target) = fs.lookup(to.ino, new_name) {
        allow(who.may_delete(to, &target))?;
        open.close(target.ino)?;
    }
    if moving.kind == FileKind::Dir && from.ino != to.ino {
        // Its ".." changes: as on Linux, that needs write permission on it.
        allow(who.may(&moving, MAY_WRITE))?;
    }
    fs.rename(from.ino, name, to.ino, new_name, elasticfs_core::metadata::RenameMode::Replace)
}

/// A directory `who` may add entries to or remove entries from.
pub fn may_change_dir(who: &Identity, dir: &Attr) -> FsResult<()> {
    allow(who.may(dir, MAY_WRITE | MAY_EXEC))
}

/// A regular file `who` may read (`MAY_READ`) or write (`MAY_WRITE`).
pub fn data_file(who: &Identity, attr: &Attr, want: u16) -> FsResult<()> {
    match attr.kind {
        FileKind::File => {}
        FileKind::Dir => return Err(FsError::new(libc::EISDIR, "a directory")),
        _ => return Err(FsError::new(libc::EINVAL, "not a regular file")),
    }
    allow(who.may_access_data(attr, want))
}

/// An exclusive create keeps the client's verifier in the file's times (as knfsd does), so
/// that a retransmitted create finds its own file and succeeds (EEXIST for anyone else's);
/// the client then sets the real attributes.
pub fn create_exclusive(
    fs: &FileSystem,
    open: &OpenFiles,
    who: &Identity,
    dir: Ino,
    name: &[u8],
    verifier: [u8; 8],
) -> FsResult<Attr> {
    let word = |at: usize| u32::from_be_bytes(verifier[at..at + 4].try_into().expect("4 bytes"));
    let stamp = (Timestamp { secs: word(0) as i64, nanos: 0 }, Timestamp { secs: word(4) as i64, nanos: 0 });
    match fs.create(dir, name, 0o600, who.caller(), CreateMode::Exclusive, false) {
        Ok((attr, fh)) => {
            open.adopt(attr.ino, fh);
            let req = SetAttrRequest { atime: Some(stamp.0), mtime: Some(stamp.1), ..Default::default() };
            fs.setattr(attr.ino, &req)
        }
        Err(e) if e.errno == libc::EEXIST => {
            let existing = fs.lookup(dir, name)?;
            if existing.kind == FileKind::File && (existing.atime, existing.mtime) == stamp {
                Ok(existing)
            } else {
                Err(e)
            }
        }
        Err(e) => Err(e),
    }
}
