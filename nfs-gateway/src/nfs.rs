//! The NFSv3 procedures (RFC 1813) over the engine, with permission checks against the
//! caller's (squashed) identity.

use bytes::Bytes;
use elasticfs_core::metadata::{Attr, FileKind, Ino};
use elasticfs_core::{CreateMode, FsError, Identity, ReadData, MAY_EXEC, MAY_READ, MAY_WRITE};
use nfs3_types::nfs3::*;
use nfs3_types::xdr_codec::{List, Opaque, Pack, Void};

use crate::attrs::{fattr, join_rdev, post_op, requested_mode, set_request, status, time, wcc};
use crate::handle::BadHandle;
use crate::rpc::Record;
use crate::Gateway;

/// Largest READ and WRITE (FSINFO's rtmax and wtmax).
pub const MAX_IO: u32 = 1 << 20;
/// Largest file offset (as the engine's limit).
const MAX_FILE_SIZE: u64 = 1 << 44;
/// Reported as total capacity: elastic, as EFS reports 8 EiB.
const TOTAL_BYTES: u64 = 8 << 60;
const TOTAL_FILES: u64 = 1 << 48;

type Nfs<T> = Result<T, nfsstat3>;

/// Each procedure's result, packed after room for the RPC reply header (see `rpc::success`).
pub enum Reply {
    Packed(Record),
    /// The procedure number is not NFSv3's.
    NoSuchProcedure,
}

pub(crate) fn packed(result: impl Pack) -> Reply {
    Reply::Packed(pack(result))
}

fn pack(result: impl Pack) -> Record {
    let mut out = crate::rpc::result_buffer(result.packed_size());
    result.pack(&mut out).expect("packing into a Vec cannot fail");
    out.into()
}

/// A successful READ, whose data follows its packed result as the engine's pieces.
fn packed_read(result: READ3resok<'_>, data: ReadData) -> Reply {
    debug_assert!(result.data.is_empty(), "the data goes after the packed result");
    let mut record = pack(READ3res::Ok(result));
    // The result ends with the (empty) data's length word: set it to the real length, and
    // pad the data to four bytes as XDR asks.
    let len = data.len();
    let at = record.packed.len() - 4;
    record.packed[at..].copy_from_slice(&(len as u32).to_be_bytes());
    record.data = data.into_pieces();
    let padding = len.next_multiple_of(4) - len;
    if padding > 0 {
        record.data.push(Bytes::from_static(&[0; 3][..padding]));
    }
    Reply::Packed(record)
}

/// WRITE's arguments with the data borrowed from the record: the library's decoder would copy
/// it (up to a megabyte) into a fresh buffer for every WRITE.
fn unpack_write<'a>(args: &mut &'a [u8]) -> Option<WRITE3args<'a>> {
    use nfs3_types::xdr_codec::Unpack;
    let (file, _) = nfs_fh3::unpack(args).ok()?;
    let (offset, _) = u64::unpack(args).ok()?;
    let (count, _) = u32::unpack(args).ok()?;
    let (stable, _) = stable_how::unpack(args).ok()?;
    let (len, _) = u32::unpack(args).ok()?;
    let (len, padded) = (len as usize, (len as usize).next_multiple_of(4));
    let rest: &'a [u8] = args;
    if rest.len() < padded {
        return None;
    }
    *args = &rest[padded..];
    Some(WRITE3args { file, offset, count, stable, data: Opaque::borrowed(&rest[..len]) })
}

fn fail<T, E: Default>(status: nfsstat3) -> Nfs3Result<T, E> {
    Nfs3Result::Err((status, E::default()))
}

/// The result of a procedure whose failure carries no more than defaults.
fn result<T, E: Default>(r: Nfs<T>) -> Nfs3Result<T, E> {
    r.map_or_else(fail, Nfs3Result::Ok)
}

fn name_of<'a>(name: &'a filename3<'_>) -> Nfs<&'a [u8]> {
    let name = name.as_ref();
    if name.len() > 255 {
        Err(nfsstat3::NFS3ERR_NAMETOOLONG)
    } else if name.is_empty() || name.contains(&b'/') || name.contains(&0) {
        Err(nfsstat3::NFS3ERR_INVAL)
    } else {
        Ok(name)
    }
}

/// A name a new entry may take ("." and ".." always exist).
fn new_name<'a>(name: &'a filename3<'_>) -> Nfs<&'a [u8]> {
    match name_of(name)? {
        b"." | b".." => Err(nfsstat3::NFS3ERR_EXIST),
        name => Ok(name),
    }
}

fn allow(permitted: bool) -> Nfs<()> {
    if permitted {
        Ok(())
    } else {
        Err(nfsstat3::NFS3ERR_ACCES)
    }
}

fn fs_err(e: FsError) -> nfsstat3 {
    status(&e)
}

impl Gateway {
    /// Runs procedure `proc` with the XDR arguments in `args`; `None` if they do not decode.
    pub(crate) fn nfs_call(&self, proc: u32, args: &mut &[u8], who: &Identity) -> Option<Reply> {
        use nfs3_types::xdr_codec::Unpack;
        macro_rules! call {
            ($args:ty, $run:expr) => {{
                let (args, _) = <$args>::unpack(args).ok()?;
                packed($run(args))
            }};
        }
        Some(match proc {
            0 => packed(Void),
            1 => call!(GETATTR3args, |a: GETATTR3args| self.getattr(a)),
            2 => call!(SETATTR3args, |a| self.setattr(a, who)),
            3 => call!(LOOKUP3args, |a| self.lookup(a, who)),
            4 => call!(ACCESS3args, |a| self.access(a, who)),
            5 => call!(READLINK3args, |a: READLINK3args| self.readlink(a)),
            6 => self.read(READ3args::unpack(args).ok()?.0, who),
            7 => packed(self.write(unpack_write(args)?, who)),
            8 => call!(CREATE3args, |a| self.create(a, who)),
            9 => call!(MKDIR3args, |a| self.mkdir(a, who)),
            10 => call!(SYMLINK3args, |a| self.symlink(a, who)),
            11 => call!(MKNOD3args, |a| self.mknod(a, who)),
            12 => call!(REMOVE3args, |a| self.remove(a, who)),
            13 => call!(RMDIR3args, |a| self.rmdir(a, who)),
            14 => call!(RENAME3args, |a| self.rename(a, who)),
            15 => call!(LINK3args, |a| self.link(a, who)),
            16 => call!(READDIR3args, |a| self.readdir(a, who)),
            17 => call!(READDIRPLUS3args, |a| self.readdirplus(a, who)),
            18 => call!(FSSTAT3args, |a: FSSTAT3args| self.fsstat(a)),
            19 => call!(FSINFO3args, |a: FSINFO3args| self.fsinfo(a)),
            20 => call!(PATHCONF3args, |a: PATHCONF3args| self.pathconf(a)),
            21 => call!(COMMIT3args, |a: COMMIT3args| self.commit(a)),
            _ => Reply::NoSuchProcedure,
        })
    }

    // ----- helpers ------------------------------------------------------------------------

    pub(crate) fn handle_of(&self, attr: &Attr) -> nfs_fh3 {
        nfs_fh3 { data: Opaque::owned(self.handles.encode(attr.ino, attr.generation)) }
    }

    /// The attributes of the file a handle names: STALE if it is gone (or its inode number
    /// was used again), BADHANDLE if it is not a handle at all.
    pub(crate) fn resolve(&self, fh: &nfs_fh3) -> Nfs<Attr> {
        let (ino, generation) = self.handles.decode(fh.data.as_ref()).map_err(|e| match e {
            BadHandle::Malformed => nfsstat3::NFS3ERR_BADHANDLE,
            BadHandle::OtherVolume => nfsstat3::NFS3ERR_STALE,
        })?;
        crate::checks::live(&self.fs, ino, generation)
            .map_err(|e| e.map_or(nfsstat3::NFS3ERR_STALE, |e| status(&e)))
    }

    fn resolve_dir(&self, fh: &nfs_fh3) -> Nfs<Attr> {
        let dir = self.resolve(fh)?;
        if dir.kind != FileKind::Dir {
            return Err(nfsstat3::NFS3ERR_NOTDIR);
        }
        Ok(dir)
    }

    fn writable(&self) -> Nfs<()> {
        if self.export.read_only {
            Err(nfsstat3::NFS3ERR_ROFS)
        } else {
            Ok(())
        }
    }

    fn attrs_of(&self, ino: Ino) -> post_op_attr {
        post_op(self.fs.getattr(ino).ok().as_ref(), self.handles.volume)
    }

    fn dir_wcc(&self, dir: Ino) -> wcc_data {
        wcc(self.fs.getattr(dir).ok().as_ref(), self.handles.volume)
    }

    /// A directory that the caller may add entries to or remove entries from.
    fn changeable_dir(&self, fh: &nfs_fh3, who: &Identity) -> Nfs<Attr> {
        self.writable()?;
        let dir = self.resolve_dir(fh)?;
        crate::checks::may_change_dir(who, &dir).map_err(fs_err)?;
        Ok(dir)
    }

    fn lookup_in(&self, dir: &Attr, name: &[u8]) -> Nfs<Attr> {
        match name {
            b"." => Ok(dir.clone()),
            b".." => self.fs.getattr(dir.parent).map_err(fs_err),
            _ => self.fs.lookup(dir.ino, name).map_err(fs_err),
        }
    }

    /// What a CREATE, MKDIR, SYMLINK or MKNOD returns.
    fn made(&self, attr: &Attr, dir: Ino) -> (post_op_fh3, post_op_attr, wcc_data) {
        let fsid = self.handles.volume;
        (post_op_fh3::Some(self.handle_of(attr)), post_op(Some(attr), fsid), self.dir_wcc(dir))
    }

    // ----- attributes -----------------------------------------------------------------------

    fn getattr(&self, a: GETATTR3args) -> GETATTR3res {
        match self.resolve(&a.object) {
            Ok(attr) => Nfs3Result::Ok(GETATTR3resok { obj_attributes: fattr(&attr, self.handles.volume) }),
            Err(s) => Nfs3Result::Err((s, Void)),
        }
    }

    fn setattr(&self, a: SETATTR3args, who: &Identity) -> SETATTR3res {
        let run = || -> Nfs<Attr> {
            self.writable()?;
            let attr = self.resolve(&a.object)?;
            if let sattrguard3::Some(ctime) = a.guard {
                if time(attr.ctime) != ctime {
                    return Err(nfsstat3::NFS3ERR_NOT_SYNC);
                }
            }
            let (req, to_now) = set_request(&a.new_attributes);
            crate::checks::setattr(&self.fs, who, &attr, &req, to_now).map_err(|e| match e.errno {
                libc::EISDIR => nfsstat3::NFS3ERR_INVAL,
                _ => fs_err(e),
            })
        };
        match run() {
            Ok(attr) => Nfs3Result::Ok(SETATTR3resok { obj_wcc: wcc(Some(&attr), self.handles.volume) }),
            Err(s) => fail(s),
        }
    }

    fn access(&self, a: ACCESS3args, who: &Identity) -> ACCESS3res {
        let attr = match self.resolve(&a.object) {
            Ok(attr) => attr,
            Err(s) => return fail(s),
        };
        let granted = crate::checks::granted_access(who, &attr, self.export.read_only);
        Nfs3Result::Ok(ACCESS3resok {
            obj_attributes: post_op(Some(&attr), self.handles.volume),
            access: a.access & granted,
        })
    }

    fn pathconf(&self, a: PATHCONF3args) -> PATHCONF3res {
        result(self.resolve(&a.object).map(|attr| PATHCONF3resok {
            obj_attributes: post_op(Some(&attr), self.handles.volume),
            linkmax: u32::MAX,
            name_max: 255,
            no_trunc: true,
            chown_restricted: true,
            case_insensitive: false,
            case_preserving: true,
        }))
    }

    fn fsstat(&self, a: FSSTAT3args) -> FSSTAT3res {
        let run = || -> Nfs<FSSTAT3resok> {
            let attr = self.resolve(&a.fsroot)?;
            let usage = self.fs.statfs().map_err(fs_err)?;
            let free_bytes = TOTAL_BYTES.saturating_sub(usage.bytes);
            let free_files = TOTAL_FILES.saturating_sub(usage.inodes);
            Ok(FSSTAT3resok {
                obj_attributes: post_op(Some(&attr), self.handles.volume),
                tbytes: TOTAL_BYTES,
                fbytes: free_bytes,
                abytes: free_bytes,
                tfiles: TOTAL_FILES,
                ffiles: free_files,
                afiles: free_files,
                invarsec: 0,
            })
        };
        result(run())
    }

    fn fsinfo(&self, a: FSINFO3args) -> FSINFO3res {
        result(self.resolve(&a.fsroot).map(|attr| FSINFO3resok {
            obj_attributes: post_op(Some(&attr), self.handles.volume),
            rtmax: MAX_IO,
            rtpref: MAX_IO,
            rtmult: 4096,
            wtmax: MAX_IO,
            wtpref: MAX_IO,
            wtmult: 4096,
            dtpref: 64 << 10,
            maxfilesize: MAX_FILE_SIZE,
            time_delta: nfstime3 { seconds: 0, nseconds: 1 },
            properties: FSF3_LINK | FSF3_SYMLINK | FSF3_HOMOGENEOUS | FSF3_CANSETTIME,
        }))
    }

    // ----- names ----------------------------------------------------------------------------

    fn lookup(&self, a: LOOKUP3args, who: &Identity) -> LOOKUP3res {
        let fsid = self.handles.volume;
        let dir = match self.resolve_dir(&a.what.dir) {
            Ok(dir) => dir,
            Err(s) => return fail(s),
        };
        let found = name_of(&a.what.name)
            .and_then(|name| allow(who.may(&dir, MAY_EXEC)).and_then(|_| self.lookup_in(&dir, name)));
        match found {
            Ok(attr) => Nfs3Result::Ok(LOOKUP3resok {
                object: self.handle_of(&attr),
                obj_attributes: post_op(Some(&attr), fsid),
                dir_attributes: post_op(Some(&dir), fsid),
            }),
            Err(s) => Nfs3Result::Err((s, LOOKUP3resfail { dir_attributes: post_op(Some(&dir), fsid) })),
        }
    }

    fn readlink(&self, a: READLINK3args) -> READLINK3res<'static> {
        let run = || -> Nfs<READLINK3resok<'static>> {
            let attr = self.resolve(&a.symlink)?;
            if attr.kind != FileKind::Symlink {
                return Err(nfsstat3::NFS3ERR_INVAL);
            }
            let target = self.fs.readlink(attr.ino).map_err(fs_err)?;
            Ok(READLINK3resok {
                symlink_attributes: post_op(Some(&attr), self.handles.volume),
                data: nfspath3(Opaque::owned(target)),
            })
        };
        result(run())
    }

    fn create(&self, a: CREATE3args, who: &Identity) -> CREATE3res {
        let made = self.make(&a.where_, who, |dir, name| match &a.how {
            createhow3::UNCHECKED(s) | createhow3::GUARDED(s) => {
                let guarded = matches!(a.how, createhow3::GUARDED(_));
                if !guarded {
                    if let Ok(existing) = self.fs.lookup(dir, name) {
                        if existing.kind != FileKind::File {
                            return Err(nfsstat3::NFS3ERR_EXIST);
                        }
                    }
                }
                let mode = requested_mode(s, 0o644);
                // A CREATE is on stable storage before its reply: never a pending create.
                let create = if guarded { CreateMode::Exclusive } else { CreateMode::OpenOrCreate };
                let (attr, fh) =
                    self.fs.create(dir, name, mode, who.caller(), create, false).map_err(fs_err)?;
                self.open.adopt(attr.ino, fh);
                // The mode was used at creation; what else was asked (a size of 0 when the
                // file existed, an owner) is applied as a SETATTR would be.
                let (mut req, _) = set_request(s);
                req.perm = None;
                if req.size.is_none() && req.uid.is_none() && req.gid.is_none() {
                    return Ok(attr);
                }
                allow(who.may_set(&attr, &req))?;
                self.fs.setattr(attr.ino, &who.effective_setattr(&attr, &req)).map_err(fs_err)
            }
            createhow3::EXCLUSIVE(verf) => {
                crate::checks::create_exclusive(&self.fs, &self.open, who, dir, name, verf.0).map_err(fs_err)
            }
        });
        result(made.map(|(obj, obj_attributes, dir_wcc)| CREATE3resok { obj, obj_attributes, dir_wcc }))
    }

    /// CREATE, MKDIR, SYMLINK and MKNOD: `make` creates the entry in a directory the caller may
    /// change.
    fn make(
        &self,
        at: &diropargs3,
        who: &Identity,
        make: impl FnOnce(Ino, &[u8]) -> Nfs<Attr>,
    ) -> Nfs<(post_op_fh3, post_op_attr, wcc_data)> {
        let dir = self.changeable_dir(&at.dir, who)?;
        let attr = make(dir.ino, new_name(&at.name)?)?;
        Ok(self.made(&attr, dir.ino))
    }

    fn mkdir(&self, a: MKDIR3args, who: &Identity) -> MKDIR3res {
        let mode = requested_mode(&a.attributes, 0o755);
        let made = self.make(&a.where_, who, |dir, name| {
            self.fs.mknod(dir, name, FileKind::Dir, mode, 0, who.caller()).map_err(fs_err)
        });
        result(made.map(|(obj, obj_attributes, dir_wcc)| MKDIR3resok { obj, obj_attributes, dir_wcc }))
    }

    fn symlink(&self, a: SYMLINK3args, who: &Identity) -> SYMLINK3res {
        let target = a.symlink.symlink_data.as_ref();
        let made = self.make(&a.where_, who, |dir, name| {
            self.fs.symlink(dir, name, target, who.caller()).map_err(fs_err)
        });
        result(made.map(|(obj, obj_attributes, dir_wcc)| SYMLINK3resok { obj, obj_attributes, dir_wcc }))
    }

    fn mknod(&self, a: MKNOD3args, who: &Identity) -> MKNOD3res {
        let (kind, attrs, rdev) = match &a.what {
            mknoddata3::NF3CHR(d) => (FileKind::CharDev, &d.dev_attributes, Some(&d.spec)),
            mknoddata3::NF3BLK(d) => (FileKind::BlockDev, &d.dev_attributes, Some(&d.spec)),
            mknoddata3::NF3SOCK(s) => (FileKind::Socket, s, None),
            mknoddata3::NF3FIFO(s) => (FileKind::Fifo, s, None),
            mknoddata3::default => {
                return Nfs3Result::Err((
                    nfsstat3::NFS3ERR_BADTYPE,
                    MKNOD3resfail { dir_wcc: wcc_data::default() },
                ))
            }
        };
        let made = self.make(&a.where_, who, |dir, name| {
            if rdev.is_some() && who.uid != 0 {
                // Device nodes are root's to make, as mknod(2) says.
                return Err(nfsstat3::NFS3ERR_PERM);
            }
            let rdev = rdev.map_or(0, |spec| join_rdev(spec.specdata1, spec.specdata2));
            let mode = requested_mode(attrs, 0o644);
            self.fs.mknod(dir, name, kind, mode, rdev, who.caller()).map_err(fs_err)
        });
        match made {
            Ok((obj, obj_attributes, dir_wcc)) => {
                Nfs3Result::Ok(MKNOD3resok { obj, obj_attributes, dir_wcc })
            }
            Err(s) => Nfs3Result::Err((s, MKNOD3resfail { dir_wcc: wcc_data::default() })),
        }
    }

    /// REMOVE and RMDIR: the victim must be one the caller may delete.
    fn unlink_checked(&self, object: &diropargs3, who: &Identity, rmdir: bool) -> Nfs<Ino> {
        let dir = self.changeable_dir(&object.dir, who)?;
        let name = match name_of(&object.name)? {
            b"." => return Err(nfsstat3::NFS3ERR_INVAL),
            b".." => return Err(nfsstat3::NFS3ERR_EXIST),
            name => name,
        };
        crate::checks::remove(&self.fs, &self.open, who, &dir, name, rmdir).map_err(fs_err)?;
        Ok(dir.ino)
    }

    fn remove(&self, a: REMOVE3args, who: &Identity) -> REMOVE3res {
        match self.unlink_checked(&a.object, who, false) {
            Ok(dir) => Nfs3Result::Ok(REMOVE3resok { dir_wcc: self.dir_wcc(dir) }),
            Err(s) => fail(s),
        }
    }

    fn rmdir(&self, a: RMDIR3args, who: &Identity) -> RMDIR3res {
        match self.unlink_checked(&a.object, who, true) {
            Ok(dir) => Nfs3Result::Ok(RMDIR3resok { dir_wcc: self.dir_wcc(dir) }),
            Err(s) => Nfs3Result::Err((s, RMDIR3resfail { dir_wcc: wcc_data::default() })),
        }
    }

    fn rename(&self, a: RENAME3args, who: &Identity) -> RENAME3res {
        let run = || -> Nfs<(Ino, Ino)> {
            let from = self.changeable_dir(&a.from.dir, who)?;
            let to = self.changeable_dir(&a.to.dir, who)?;
            let (name, new_name) = (new_name(&a.from.name)?, new_name(&a.to.name)?);
            crate::checks::rename(&self.fs, &self.open, who, (&from, name), (&to, new_name))
                .map_err(fs_err)?;
            Ok((from.ino, to.ino))
        };
        match run() {
            Ok((from, to)) => {
                Nfs3Result::Ok(RENAME3resok { fromdir_wcc: self.dir_wcc(from), todir_wcc: self.dir_wcc(to) })
            }
            Err(s) => fail(s),
        }
    }

    fn link(&self, a: LINK3args, who: &Identity) -> LINK3res {
        let fsid = self.handles.volume;
        let run = || -> Nfs<(Attr, Ino)> {
            let file = self.resolve(&a.file)?;
            let dir = self.changeable_dir(&a.link.dir, who)?;
            let name = new_name(&a.link.name)?;
            if file.kind == FileKind::Dir {
                return Err(nfsstat3::NFS3ERR_ISDIR);
            }
            let attr = self.fs.link(file.ino, dir.ino, name).map_err(fs_err)?;
            Ok((attr, dir.ino))
        };
        match run() {
            Ok((attr, dir)) => Nfs3Result::Ok(LINK3resok {
                file_attributes: post_op(Some(&attr), fsid),
                linkdir_wcc: self.dir_wcc(dir),
            }),
            Err(s) => Nfs3Result::Err((
                s,
                LINK3resfail { file_attributes: post_op_attr::None, linkdir_wcc: wcc_data::default() },
            )),
        }
    }

    // ----- data -----------------------------------------------------------------------------

    /// A regular file the caller may read or write.
    fn data_file(&self, fh: &nfs_fh3, who: &Identity, want: u16) -> Nfs<Attr> {
        let attr = self.resolve(fh)?;
        crate::checks::data_file(who, &attr, want).map_err(fs_err)?;
        Ok(attr)
    }

    fn read(&self, a: READ3args, who: &Identity) -> Reply {
        let run = || -> Nfs<(READ3resok<'static>, ReadData)> {
            let attr = self.data_file(&a.file, who, MAY_READ)?;
            let handle = self.open.get(attr.ino).map_err(fs_err)?;
            // What others committed since this gateway opened the file (close-to-open).
            self.fs.revalidate(handle.fh, &attr).map_err(fs_err)?;
            let data = self.fs.read(handle.fh, a.offset, a.count.min(MAX_IO)).map_err(fs_err)?;
            let result = READ3resok {
                file_attributes: post_op(Some(&attr), self.handles.volume),
                count: data.len() as u32,
                eof: a.offset.saturating_add(data.len() as u64) >= attr.size,
                data: Opaque::borrowed(&[]),
            };
            Ok((result, data))
        };
        match run() {
            Ok((result, data)) => packed_read(result, data),
            Err(status) => packed(fail::<READ3resok, READ3resfail>(status)),
        }
    }

    fn write(&self, a: WRITE3args, who: &Identity) -> WRITE3res {
        let run = || -> Nfs<WRITE3resok> {
            self.writable()?;
            let attr = self.data_file(&a.file, who, MAY_WRITE)?;
            let data = a.data.as_ref();
            if (a.count as usize) > data.len() {
                return Err(nfsstat3::NFS3ERR_INVAL);
            }
            let data = &data[..a.count as usize];
            let handle = self.open.get(attr.ino).map_err(fs_err)?;
            let attr = self.fs.drop_privileges_for_write(attr, who).map_err(fs_err)?;
            self.fs.write(handle.fh, a.offset, data).map_err(fs_err)?;
            // The attributes after the write, without asking the metadata again; a flush below
            // commits exactly these.
            let after = self.fs.with_local_changes(attr);
            // UNSTABLE data waits for COMMIT (or for the handle's close); anything else is
            // made durable before the reply, so that no reply claims more than is true.
            let committed = if a.stable == stable_how::UNSTABLE {
                stable_how::UNSTABLE
            } else {
                self.fs.fsync(handle.fh).map_err(fs_err)?;
                stable_how::FILE_SYNC
            };
            Ok(WRITE3resok {
                file_wcc: wcc(Some(&after), self.handles.volume),
                count: data.len() as u32,
                committed,
                verf: self.write_verifier(),
            })
        };
        result(run())
    }

    fn commit(&self, a: COMMIT3args) -> COMMIT3res {
        let run = || -> Nfs<Ino> {
            let attr = self.resolve(&a.file)?;
            // Without a handle there is nothing uncommitted: closing it committed it, or
            // (if that failed) changed the verifier, so that the client writes again.
            if let Some(handle) = self.open.existing(attr.ino) {
                self.fs.fsync(handle.fh).map_err(fs_err)?;
            }
            Ok(attr.ino)
        };
        match run() {
            Ok(ino) => Nfs3Result::Ok(COMMIT3resok {
                file_wcc: wcc_data { before: Default::default(), after: self.attrs_of(ino) },
                verf: self.write_verifier(),
            }),
            Err(s) => Nfs3Result::Err((s, COMMIT3resfail { file_wcc: wcc_data::default() })),
        }
    }

    // ----- directories ------------------------------------------------------------------------

    fn readable_dir(&self, fh: &nfs_fh3, who: &Identity) -> Nfs<Attr> {
        let dir = self.resolve_dir(fh)?;
        allow(who.may(&dir, MAY_READ))?;
        Ok(dir)
    }

    /// One page of a listing from `cookie`: `entry` makes each entry (from its attributes when
    /// `plus` asks for them) and says what it costs against each limit in `room` (the reply's
    /// bytes; for READDIRPLUS also `dircount`). Returns the entries and whether the listing
    /// ended.
    fn page<E>(
        &self,
        dir: Ino,
        cookie: u64,
        mut room: [usize; 2],
        plus: bool,
        mut entry: impl FnMut(Ino, u64, &[u8], Option<&Attr>) -> (E, [usize; 2]),
    ) -> Nfs<(List<E>, bool)> {
        let mut entries = Vec::new();
        let mut take = |ino, cookie, name: &[u8], attr: Option<&Attr>| {
            let (made, cost) = entry(ino, cookie, name, attr);
            if cost[0] > room[0] || cost[1] > room[1] {
                return true;
            }
            room = [room[0] - cost[0], room[1] - cost[1]];
            entries.push(made);
            false
        };
        let eof = if plus {
            self.fs.list_dir_plus(dir, cookie, |ino, cookie, _, name, attr| take(ino, cookie, name, attr))
        } else {
            self.fs.list_dir(dir, cookie, |ino, cookie, _, name| take(ino, cookie, name, None))
        }
        .map_err(fs_err)?;
        if !eof && entries.is_empty() {
            return Err(nfsstat3::NFS3ERR_TOOSMALL);
        }
        Ok((List(entries), eof))
    }

    fn readdir(&self, a: READDIR3args, who: &Identity) -> READDIR3res<'static> {
        let run = || -> Nfs<READDIR3resok<'static>> {
            let dir = self.readable_dir(&a.dir, who)?;
            let mut reply = READDIR3resok {
                dir_attributes: post_op(Some(&dir), self.handles.volume),
                cookieverf: cookieverf3::default(),
                reply: dirlist3 { entries: List(Vec::new()), eof: false },
            };
            let room = (a.count as usize).saturating_sub(reply.packed_size());
            let (entries, eof) =
                self.page(dir.ino, a.cookie, [room, usize::MAX], false, |ino, cookie, name, _| {
                    let entry = entry3 { fileid: ino, name: filename3(Opaque::owned(name.to_vec())), cookie };
                    let size = 4 + entry.packed_size();
                    (entry, [size, 0])
                })?;
            reply.reply = dirlist3 { entries, eof };
            Ok(reply)
        };
        result(run())
    }

    fn readdirplus(&self, a: READDIRPLUS3args, who: &Identity) -> READDIRPLUS3res<'static> {
        let fsid = self.handles.volume;
        let run = || -> Nfs<READDIRPLUS3resok<'static>> {
            let dir = self.readable_dir(&a.dir, who)?;
            let mut reply = READDIRPLUS3resok {
                dir_attributes: post_op(Some(&dir), fsid),
                cookieverf: cookieverf3::default(),
                reply: dirlistplus3 { entries: List(Vec::new()), eof: false },
            };
            let room = [(a.maxcount as usize).saturating_sub(reply.packed_size()), a.dircount as usize];
            let (entries, eof) = self.page(dir.ino, a.cookie, room, true, |ino, cookie, name, attr| {
                // An entry removed since it was listed is still listed, without attributes.
                let entry = entryplus3 {
                    fileid: ino,
                    name: filename3(Opaque::owned(name.to_vec())),
                    cookie,
                    name_attributes: post_op(attr, fsid),
                    name_handle: attr.map_or(post_op_fh3::None, |a| post_op_fh3::Some(self.handle_of(a))),
                };
                // dircount counts what a READDIR entry would hold; maxcount the whole reply.
                let dir_size = 4 + 8 + 4 + name.len().div_ceil(4) * 4 + 8;
                let size = 4 + entry.packed_size();
                (entry, [size, dir_size])
            })?;
            reply.reply = dirlistplus3 { entries, eof };
            Ok(reply)
        };
        result(run())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_arguments_decode_as_the_library_packs_them_without_copying_the_data() {
        let args = WRITE3args {
            file: nfs_fh3 { data: Opaque::borrowed(b"handle") },
            offset: 1 << 40,
            count: 5,
            stable: stable_how::FILE_SYNC,
            data: Opaque::borrowed(b"hello"),
        };
        let mut record = Vec::new();
        args.pack(&mut record).unwrap();
        record.extend_from_slice(b"next");
        let mut rest = record.as_slice();
        let got = unpack_write(&mut rest).unwrap();
        assert_eq!(got.file.data.as_ref(), b"handle");
        assert_eq!((got.offset, got.count, got.stable), (1 << 40, 5, stable_how::FILE_SYNC));
        assert_eq!(got.data.as_ref(), b"hello");
        assert!(
            std::ptr::eq(got.data.as_ref().as_ptr(), record[record.len() - 12..].as_ptr()),
            "data copied"
        );
        assert_eq!(rest, b"next", "the padding is consumed");
        for cut in 0..record.len() - 4 {
            assert!(unpack_write(&mut &record[..cut]).is_none(), "a record cut at {cut} decoded");
        }
    }
}
