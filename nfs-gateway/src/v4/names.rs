//! File handles, attributes and the namespace: PUT*FH, GETFH, SAVEFH, RESTOREFH, LOOKUP(P),
//! ACCESS, GETATTR, SETATTR, (N)VERIFY, READDIR, READLINK, CREATE, REMOVE, RENAME, LINK and
//! SECINFO(_NO_NAME).

use elasticfs_core::metadata::{Attr, FileKind, ROOT_INO};
use elasticfs_core::{CreateMode, MAY_EXEC, MAY_READ};

use super::attrs::{self, Source};
use super::status::{Fail, OpResult, Status};
use super::xdr::{Bitmap, Reader, Writer};
use super::{change_info, component, new_component, stateid, Compound, Fh};
use crate::attrs::join_rdev;
use crate::checks;

/// AUTH_SYS, the one flavour the gateway takes (SECINFO's answer).
const AUTH_SYS: u32 = 1;

impl Compound<'_> {
    pub(super) fn putrootfh(&mut self) -> OpResult {
        let root = self.gw.fs.getattr(ROOT_INO)?;
        self.set_current(&root);
        Ok(())
    }

    pub(super) fn putfh(&mut self, r: &mut Reader<'_>) -> OpResult {
        let fh = self.decode_fh(r.opaque(128)?)?;
        self.current = Some(fh);
        self.current_stateid = None;
        Ok(())
    }

    pub(super) fn getfh(&mut self, w: &mut Writer) -> OpResult {
        let attr = self.current()?;
        w.opaque(&self.handle_bytes(Fh { ino: attr.ino, generation: attr.generation }));
        Ok(())
    }

    pub(super) fn savefh(&mut self) -> OpResult {
        self.saved = Some(self.current.ok_or(Status::NOFILEHANDLE)?);
        self.saved_stateid = self.current_stateid;
        Ok(())
    }

    pub(super) fn restorefh(&mut self) -> OpResult {
        self.current = Some(self.saved.ok_or(Status::RESTOREFH)?);
        self.current_stateid = self.saved_stateid;
        Ok(())
    }

    pub(super) fn lookup(&mut self, r: &mut Reader<'_>) -> OpResult {
        let name = component(r)?;
        let dir = self.current_dir()?;
        if !self.who.may(&dir, MAY_EXEC) {
            return Err(Status::ACCESS.into());
        }
        if name == b"." || name == b".." {
            return Err(Status::NOENT.into());
        }
        let found = self.gw.fs.lookup(dir.ino, name)?;
        self.set_current(&found);
        Ok(())
    }

    pub(super) fn lookupp(&mut self) -> OpResult {
        let dir = self.current_dir()?;
        if dir.ino == ROOT_INO {
            // The export's root is the pseudo-root: it has no parent.
            return Err(Status::NOENT.into());
        }
        let parent = self.gw.fs.getattr(dir.parent)?;
        self.set_current(&parent);
        Ok(())
    }

    pub(super) fn access(&mut self, r: &mut Reader<'_>, w: &mut Writer) -> OpResult {
        let asked = r.u32()?;
        let attr = self.current()?;
        let all = checks::ACCESS_READ
            | checks::ACCESS_LOOKUP
            | checks::ACCESS_MODIFY
            | checks::ACCESS_EXTEND
            | checks::ACCESS_DELETE
            | checks::ACCESS_EXECUTE;
        let granted = checks::granted_access(self.who, &attr, self.gw.export.read_only);
        w.u32(asked & all);
        w.u32(asked & granted);
        Ok(())
    }

    /// Packs `attr`'s attributes of `requested`.
    pub(super) fn put_attrs(&self, w: &mut Writer, attr: &Attr, requested: &Bitmap) {
        let handle = self.handle_bytes(Fh { ino: attr.ino, generation: attr.generation });
        let fs = &self.gw.fs;
        let usage = || fs.statfs().ok();
        let src = Source {
            attr,
            handle: &handle,
            fsid: self.gw.handles.volume,
            lease_secs: self.gw.v4.lease_secs(),
            minor: self.minor,
            usage: &usage,
        };
        attrs::encode(w, requested, &src);
    }

    pub(super) fn getattr(&mut self, r: &mut Reader<'_>, w: &mut Writer) -> OpResult {
        let requested = r.bitmap()?;
        attrs::check_readable(&requested)?;
        let attr = self.gw.fs.with_local_changes(self.current()?);
        self.put_attrs(w, &attr, &requested);
        Ok(())
    }

    /// VERIFY (`same`) succeeds when the attributes given are the object's; NVERIFY when they
    /// are not.
    pub(super) fn verify(&mut self, r: &mut Reader<'_>, same: bool) -> OpResult {
        let asked = r.bitmap()?;
        let given = r.opaque(64 << 10)?;
        attrs::check_readable(&asked)?;
        if asked.intersection(&attrs::supported(self.minor)).trimmed() != asked.trimmed() {
            return Err(Status::ATTRNOTSUPP.into());
        }
        let attr = self.gw.fs.with_local_changes(self.current()?);
        let mut mine = Writer::default();
        self.put_attrs(&mut mine, &attr, &asked);
        let mut ours = Reader::new(&mine.packed);
        ours.bitmap()?;
        let equal = ours.opaque(64 << 10)? == given;
        match (same, equal) {
            (true, false) => Err(Status::NOT_SAME.into()),
            (false, true) => Err(Status::SAME.into()),
            _ => Ok(()),
        }
    }

    pub(super) fn setattr(&mut self, r: &mut Reader<'_>, w: &mut Writer) -> OpResult {
        // The result carries the attributes set, on failure too (none then).
        let fail = |status: Status| Fail { status, body: 0u32.to_be_bytes().to_vec() };
        let id = stateid(r).map_err(|e| fail(e.status))?;
        let set = attrs::decode_set(r).map_err(|e| fail(e.status))?;
        self.writable().map_err(|e| fail(e.status))?;
        let attr = self.current().map_err(|e| fail(e.status))?;
        // A new size is a write: the stateid must allow writing this file (RFC 7530 section
        // 16.32.4); other attributes ignore it.
        if set.req.size.is_some() && attr.kind == FileKind::File {
            self.stateid_access(id, &attr, super::io::SHARE_ACCESS_WRITE).map_err(|e| fail(e.status))?;
        }
        checks::setattr(&self.gw.fs, self.who, &attr, &set.req, set.to_now).map_err(|e| {
            fail(match e.errno {
                libc::EISDIR => Status::ISDIR,
                other => super::status::of_errno(other),
            })
        })?;
        w.bitmap(&set.names);
        Ok(())
    }

    pub(super) fn readlink(&mut self, w: &mut Writer) -> OpResult {
        let attr = self.current()?;
        if attr.kind != FileKind::Symlink {
            return Err(Status::INVAL.into());
        }
        w.opaque(&self.gw.fs.readlink(attr.ino)?);
        Ok(())
    }

    /// READDIR: entries after `cookie` (the engine's offsets, which leave 0, 1 and 2 unused by
    /// entries, as NFSv4 asks), without "." and "..", within `maxcount` bytes of reply.
    pub(super) fn readdir(&mut self, r: &mut Reader<'_>, w: &mut Writer) -> OpResult {
        let cookie = r.u64()?;
        let verifier: [u8; 8] = r.fixed()?;
        let _dircount = r.u32()?;
        let maxcount = r.u32()? as usize;
        let requested = r.bitmap()?;
        attrs::check_readable(&requested)?;
        let dir = self.current_dir()?;
        if !self.who.may(&dir, MAY_READ) {
            return Err(Status::ACCESS.into());
        }
        if (cookie == 1 || cookie == 2) || (cookie != 0 && verifier != [0; 8] && verifier != COOKIE_VERIFIER)
        {
            return Err(Status::BAD_COOKIE.into());
        }
        // The reply's fixed part: the verifier, the list's end and eof, besides what comes
        // before this result in the COMPOUND (counted generously).
        let mut room = maxcount.saturating_sub(8 + 4 + 4 + 128);
        w.fixed(&COOKIE_VERIFIER);
        let mut taken = 0usize;
        let with_attrs = !requested.is_empty();
        let from = cookie.max(2);
        let mut entry = Writer::default();
        let mut add = |ino, next: u64, name: &[u8], attr: Option<&Attr>| -> bool {
            entry.packed.clear();
            entry.bool(true);
            entry.u64(next);
            entry.opaque(name);
            match attr {
                Some(attr) => self.put_attrs(&mut entry, attr, &requested),
                // Removed since it was listed: only its error and number, as rdattr_error asks.
                None => put_rdattr_error(&mut entry, ino, &requested),
            }
            if entry.packed.len() > room {
                return true;
            }
            room -= entry.packed.len();
            w.fixed(&entry.packed);
            taken += 1;
            false
        };
        let eof = if with_attrs {
            self.gw.fs.list_dir_plus(dir.ino, from, |ino, next, _, name, attr| add(ino, next, name, attr))
        } else {
            self.gw.fs.list_dir(dir.ino, from, |ino, next, _, name| add(ino, next, name, None))
        }?;
        if !eof && taken == 0 {
            return Err(Status::TOOSMALL.into());
        }
        w.bool(false);
        w.bool(eof);
        Ok(())
    }

    pub(super) fn create(&mut self, r: &mut Reader<'_>, w: &mut Writer) -> OpResult {
        let kind = r.u32()?;
        let (kind, target, rdev) = match kind {
            5 => (FileKind::Symlink, Some(r.opaque(4096)?), 0),
            3 | 4 => {
                let (major, minor) = (r.u32()?, r.u32()?);
                let kind = if kind == 3 { FileKind::BlockDev } else { FileKind::CharDev };
                (kind, None, join_rdev(major, minor))
            }
            6 => (FileKind::Socket, None, 0),
            7 => (FileKind::Fifo, None, 0),
            2 => (FileKind::Dir, None, 0),
            _ => return Err(Status::BADTYPE.into()),
        };
        let name = new_component(r)?;
        let set = attrs::decode_set(r)?;
        self.writable()?;
        let dir = self.current_dir()?;
        checks::may_change_dir(self.who, &dir)?;
        if rdev != 0 && self.who.uid != 0 {
            return Err(Status::PERM.into());
        }
        let fs = &self.gw.fs;
        let caller = self.who.caller();
        let default_mode = if kind == FileKind::Dir { 0o755 } else { 0o644 };
        let mode = set.req.perm.unwrap_or(default_mode);
        let made = match target {
            Some(target) => fs.symlink(dir.ino, name, target, caller)?,
            None => fs.mknod(dir.ino, name, kind, mode, rdev, caller)?,
        };
        let made = self.apply_create_attrs(made, &set)?;
        let after = fs.getattr(dir.ino).ok();
        change_info(w, &dir, after.as_ref());
        w.bitmap(&set.names);
        self.set_current(&made);
        Ok(())
    }

    /// What a create asked besides its mode (an owner, times, a size) is applied as a SETATTR
    /// would be.
    pub(super) fn apply_create_attrs(&self, made: Attr, set: &attrs::SetRequest) -> OpResult<Attr> {
        let mut req = set.req.clone();
        req.perm = None;
        if req.uid.is_none()
            && req.gid.is_none()
            && req.size.is_none()
            && req.atime.is_none()
            && req.mtime.is_none()
        {
            return Ok(made);
        }
        Ok(checks::setattr(&self.gw.fs, self.who, &made, &req, set.to_now)?)
    }

    pub(super) fn remove(&mut self, r: &mut Reader<'_>, w: &mut Writer) -> OpResult {
        let name = new_component(r)?;
        self.writable()?;
        let dir = self.current_dir()?;
        checks::may_change_dir(self.who, &dir)?;
        let victim = self.gw.fs.lookup(dir.ino, name)?;
        checks::remove(&self.gw.fs, &self.gw.open, self.who, &dir, name, victim.kind == FileKind::Dir)?;
        let after = self.gw.fs.getattr(dir.ino).ok();
        change_info(w, &dir, after.as_ref());
        Ok(())
    }

    pub(super) fn rename(&mut self, r: &mut Reader<'_>, w: &mut Writer) -> OpResult {
        let name = new_component(r)?;
        let new_name = new_component(r)?;
        self.writable()?;
        let from = self.resolve(self.saved.ok_or(Status::NOFILEHANDLE)?)?;
        let to = self.current_dir()?;
        if from.kind != FileKind::Dir {
            return Err(Status::NOTDIR.into());
        }
        checks::may_change_dir(self.who, &from)?;
        checks::may_change_dir(self.who, &to)?;
        checks::rename(&self.gw.fs, &self.gw.open, self.who, (&from, name), (&to, new_name))?;
        let fs = &self.gw.fs;
        change_info(w, &from, fs.getattr(from.ino).ok().as_ref());
        change_info(w, &to, fs.getattr(to.ino).ok().as_ref());
        Ok(())
    }

    pub(super) fn link(&mut self, r: &mut Reader<'_>, w: &mut Writer) -> OpResult {
        let name = new_component(r)?;
        self.writable()?;
        let file = self.resolve(self.saved.ok_or(Status::NOFILEHANDLE)?)?;
        let dir = self.current_dir()?;
        if file.kind == FileKind::Dir {
            return Err(Status::ISDIR.into());
        }
        checks::may_change_dir(self.who, &dir)?;
        self.gw.fs.link(file.ino, dir.ino, name)?;
        change_info(w, &dir, self.gw.fs.getattr(dir.ino).ok().as_ref());
        Ok(())
    }

    /// SECINFO: AUTH_SYS for every name. In 4.1 it consumes the current file handle.
    pub(super) fn secinfo(&mut self, r: &mut Reader<'_>, w: &mut Writer) -> OpResult {
        let name = component(r)?;
        let dir = self.current_dir()?;
        self.gw.fs.lookup(dir.ino, name)?;
        put_secinfo(w);
        if self.minor >= 1 {
            self.current = None;
        }
        Ok(())
    }

    pub(super) fn secinfo_no_name(&mut self, r: &mut Reader<'_>, w: &mut Writer) -> OpResult {
        let style = r.u32()?;
        if style > 1 {
            return Err(Status::INVAL.into());
        }
        self.current()?;
        put_secinfo(w);
        self.current = None;
        Ok(())
    }

    /// OPEN's create: a regular file `name` in the current directory, as `how` says.
    pub(super) fn create_file(
        &self,
        dir: &Attr,
        name: &[u8],
        mode: u16,
        how: CreateMode,
    ) -> OpResult<(Attr, u64)> {
        self.writable()?;
        checks::may_change_dir(self.who, dir)?;
        Ok(self.gw.fs.create(dir.ino, name, mode, self.who.caller(), how, false)?)
    }
}

/// The verifier of our READDIR cookies: they stay valid for ever (an entry's cookie is fixed
/// when it is made), so it never changes.
const COOKIE_VERIFIER: [u8; 8] = *b"elasticf";

/// The attributes of an entry that vanished while listed: rdattr_error (NOENT) if asked,
/// and its number.
fn put_rdattr_error(w: &mut Writer, ino: u64, requested: &Bitmap) {
    let mut answered = Bitmap::default();
    let mut vals = Writer::default();
    if requested.contains(attrs::RDATTR_ERROR) {
        answered.insert(attrs::RDATTR_ERROR);
        vals.u32(Status::NOENT.0);
    }
    if requested.contains(attrs::FILEID) {
        answered.insert(attrs::FILEID);
        vals.u64(ino);
    }
    w.bitmap(&answered);
    w.opaque(&vals.packed);
}

fn put_secinfo(w: &mut Writer) {
    w.u32(1);
    w.u32(AUTH_SYS);
}
