//! Conversions between the engine's attributes and errors and NFSv3's.

use elasticfs_core::metadata::{Attr, FileKind, Timestamp};
use elasticfs_core::{FsError, SetAttrRequest};
use nfs3_types::nfs3::{
    fattr3, ftype3, nfsstat3, nfstime3, post_op_attr, sattr3, set_atime, set_gid3, set_mode3, set_mtime,
    set_size3, set_uid3, specdata3, wcc_data,
};

pub fn fattr(attr: &Attr, fsid: u64) -> fattr3 {
    let (major, minor) = split_rdev(attr.rdev);
    fattr3 {
        type_: match attr.kind {
            FileKind::File => ftype3::NF3REG,
            FileKind::Dir => ftype3::NF3DIR,
            FileKind::Symlink => ftype3::NF3LNK,
            FileKind::Fifo => ftype3::NF3FIFO,
            FileKind::Socket => ftype3::NF3SOCK,
            FileKind::CharDev => ftype3::NF3CHR,
            FileKind::BlockDev => ftype3::NF3BLK,
        },
        mode: u32::from(attr.perm),
        nlink: attr.nlink,
        uid: attr.uid,
        gid: attr.gid,
        size: attr.size,
        used: attr.stored,
        rdev: specdata3 { specdata1: major, specdata2: minor },
        fsid,
        fileid: attr.ino,
        atime: time(attr.atime),
        mtime: time(attr.mtime),
        ctime: time(attr.ctime),
    }
}

pub fn post_op(attr: Option<&Attr>, fsid: u64) -> post_op_attr {
    attr.map_or(post_op_attr::None, |a| post_op_attr::Some(fattr(a, fsid)))
}

/// Weak cache consistency data with the attributes after the call only: without the ones from
/// before, clients simply drop their caches of the object, which is always correct.
pub fn wcc(after: Option<&Attr>, fsid: u64) -> wcc_data {
    wcc_data { before: Default::default(), after: post_op(after, fsid) }
}

pub fn time(t: Timestamp) -> nfstime3 {
    nfstime3 { seconds: t.secs.clamp(0, u32::MAX as i64) as u32, nseconds: t.nanos }
}

fn timestamp(t: nfstime3) -> Timestamp {
    Timestamp { secs: t.seconds as i64, nanos: t.nseconds.min(999_999_999) }
}

/// What a SETATTR (or the attributes of a CREATE/MKDIR) asks to change, and whether both times
/// are to become the server's "now" (which needs less permission than setting them).
pub fn set_request(s: &sattr3) -> (SetAttrRequest, bool) {
    let now = Timestamp::now();
    let atime = match s.atime {
        set_atime::DONT_CHANGE => None,
        set_atime::SET_TO_SERVER_TIME => Some(now),
        set_atime::SET_TO_CLIENT_TIME(t) => Some(timestamp(t)),
    };
    let mtime = match s.mtime {
        set_mtime::DONT_CHANGE => None,
        set_mtime::SET_TO_SERVER_TIME => Some(now),
        set_mtime::SET_TO_CLIENT_TIME(t) => Some(timestamp(t)),
    };
    let to_now = matches!(s.atime, set_atime::SET_TO_SERVER_TIME | set_atime::DONT_CHANGE)
        && matches!(s.mtime, set_mtime::SET_TO_SERVER_TIME | set_mtime::DONT_CHANGE);
    let req = SetAttrRequest {
        perm: match s.mode {
            set_mode3::Some(mode) => Some((mode & 0o7777) as u16),
            set_mode3::None => None,
        },
        uid: match s.uid {
            set_uid3::Some(uid) => Some(uid),
            set_uid3::None => None,
        },
        gid: match s.gid {
            set_gid3::Some(gid) => Some(gid),
            set_gid3::None => None,
        },
        size: match s.size {
            set_size3::Some(size) => Some(size),
            set_size3::None => None,
        },
        atime,
        mtime,
    };
    (req, to_now)
}

/// The mode a CREATE, MKDIR or MKNOD asks for, or `default`.
pub fn requested_mode(s: &sattr3, default: u16) -> u16 {
    match s.mode {
        set_mode3::Some(mode) => (mode & 0o7777) as u16,
        set_mode3::None => default,
    }
}

/// Device numbers are kept as Linux's `new_encode_dev` (as the FUSE frontend receives them).
pub fn join_rdev(major: u32, minor: u32) -> u32 {
    (minor & 0xff) | ((major & 0xfff) << 8) | ((minor & !0xff) << 12)
}

pub fn split_rdev(rdev: u32) -> (u32, u32) {
    ((rdev & 0xfff00) >> 8, (rdev & 0xff) | ((rdev >> 12) & 0xfff00))
}

/// The NFS status for an engine error.
pub fn status(e: &FsError) -> nfsstat3 {
    match e.errno {
        libc::EPERM => nfsstat3::NFS3ERR_PERM,
        libc::ENOENT => nfsstat3::NFS3ERR_NOENT,
        libc::ENXIO => nfsstat3::NFS3ERR_NXIO,
        libc::EACCES => nfsstat3::NFS3ERR_ACCES,
        libc::EEXIST => nfsstat3::NFS3ERR_EXIST,
        libc::EXDEV => nfsstat3::NFS3ERR_XDEV,
        libc::ENODEV => nfsstat3::NFS3ERR_NODEV,
        libc::ENOTDIR => nfsstat3::NFS3ERR_NOTDIR,
        libc::EISDIR => nfsstat3::NFS3ERR_ISDIR,
        libc::EINVAL => nfsstat3::NFS3ERR_INVAL,
        libc::EFBIG => nfsstat3::NFS3ERR_FBIG,
        libc::ENOSPC => nfsstat3::NFS3ERR_NOSPC,
        libc::EROFS => nfsstat3::NFS3ERR_ROFS,
        libc::EMLINK => nfsstat3::NFS3ERR_MLINK,
        libc::ENAMETOOLONG => nfsstat3::NFS3ERR_NAMETOOLONG,
        libc::ENOTEMPTY => nfsstat3::NFS3ERR_NOTEMPTY,
        libc::EOPNOTSUPP => nfsstat3::NFS3ERR_NOTSUPP,
        libc::ESTALE => nfsstat3::NFS3ERR_STALE,
        libc::EDQUOT => nfsstat3::NFS3ERR_DQUOT,
        _ => nfsstat3::NFS3ERR_IO,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_numbers_round_trip_through_the_kernel_encoding() {
        for (major, minor) in [(0, 0), (1, 3), (8, 17), (259, 65_536), (4095, 1 << 19)] {
            assert_eq!(split_rdev(join_rdev(major, minor)), (major, minor));
        }
        assert_eq!(join_rdev(1, 3), (1 << 8) | 3, "small numbers are the classic encoding");
    }
}
