//! nfsstat4 (RFC 8881 section 15): the status of each operation, and how the engine's errors
//! map to it.

use elasticfs_core::FsError;

/// An nfsstat4 value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Status(pub u32);

impl Status {
    pub const OK: Status = Status(0);
    pub const PERM: Status = Status(1);
    pub const NOENT: Status = Status(2);
    pub const IO: Status = Status(5);
    pub const NXIO: Status = Status(6);
    pub const ACCESS: Status = Status(13);
    pub const EXIST: Status = Status(17);
    pub const XDEV: Status = Status(18);
    pub const NOTDIR: Status = Status(20);
    pub const ISDIR: Status = Status(21);
    pub const INVAL: Status = Status(22);
    pub const FBIG: Status = Status(27);
    pub const NOSPC: Status = Status(28);
    pub const ROFS: Status = Status(30);
    pub const MLINK: Status = Status(31);
    pub const NAMETOOLONG: Status = Status(63);
    pub const NOTEMPTY: Status = Status(66);
    pub const DQUOT: Status = Status(69);
    pub const STALE: Status = Status(70);
    pub const BADHANDLE: Status = Status(10001);
    pub const BAD_COOKIE: Status = Status(10003);
    pub const NOTSUPP: Status = Status(10004);
    pub const TOOSMALL: Status = Status(10005);
    pub const BADTYPE: Status = Status(10007);
    pub const DELAY: Status = Status(10008);
    pub const SAME: Status = Status(10009);
    pub const DENIED: Status = Status(10010);
    pub const GRACE: Status = Status(10013);
    pub const LOCKED: Status = Status(10012);
    pub const SHARE_DENIED: Status = Status(10015);
    pub const CLID_INUSE: Status = Status(10017);
    pub const RESOURCE: Status = Status(10018);
    pub const NOFILEHANDLE: Status = Status(10020);
    pub const MINOR_VERS_MISMATCH: Status = Status(10021);
    pub const STALE_CLIENTID: Status = Status(10022);
    pub const STALE_STATEID: Status = Status(10023);
    pub const OLD_STATEID: Status = Status(10024);
    pub const BAD_STATEID: Status = Status(10025);
    pub const BAD_SEQID: Status = Status(10026);
    pub const NOT_SAME: Status = Status(10027);
    pub const SYMLINK: Status = Status(10029);
    pub const RESTOREFH: Status = Status(10030);
    pub const ATTRNOTSUPP: Status = Status(10032);
    pub const NO_GRACE: Status = Status(10033);
    pub const RECLAIM_BAD: Status = Status(10034);
    pub const BADXDR: Status = Status(10036);
    pub const LOCKS_HELD: Status = Status(10037);
    pub const OPENMODE: Status = Status(10038);
    pub const BADOWNER: Status = Status(10039);
    pub const BADNAME: Status = Status(10041);
    pub const OP_ILLEGAL: Status = Status(10044);
    pub const BADSESSION: Status = Status(10052);
    pub const BADSLOT: Status = Status(10053);
    pub const COMPLETE_ALREADY: Status = Status(10054);
    pub const SEQ_MISORDERED: Status = Status(10063);
    pub const SEQUENCE_POS: Status = Status(10064);
    pub const REQ_TOO_BIG: Status = Status(10065);
    pub const REP_TOO_BIG: Status = Status(10066);
    pub const REP_TOO_BIG_TO_CACHE: Status = Status(10067);
    pub const RETRY_UNCACHED_REP: Status = Status(10068);
    pub const TOO_MANY_OPS: Status = Status(10070);
    pub const OP_NOT_IN_SESSION: Status = Status(10071);
    pub const CLIENTID_BUSY: Status = Status(10074);
    pub const NOT_ONLY_OP: Status = Status(10081);
    pub const WRONG_TYPE: Status = Status(10083);
}

/// An operation's failure: its status, and the result body that some failures carry
/// (SETATTR's attrsset, LOCK's conflicting lock), already packed.
#[derive(Debug, PartialEq, Eq)]
pub struct Fail {
    pub status: Status,
    pub body: Vec<u8>,
}

impl From<Status> for Fail {
    fn from(status: Status) -> Self {
        Fail { status, body: Vec::new() }
    }
}

impl From<FsError> for Fail {
    fn from(e: FsError) -> Self {
        of_errno(e.errno).into()
    }
}

/// What an operation returns: `Ok` after packing its successful result.
pub type OpResult<T = ()> = Result<T, Fail>;

pub fn of_errno(e: i32) -> Status {
    match e {
        libc::EPERM => Status::PERM,
        libc::ENOENT => Status::NOENT,
        libc::ENXIO | libc::ENODEV => Status::NXIO,
        libc::EACCES => Status::ACCESS,
        libc::EEXIST => Status::EXIST,
        libc::EXDEV => Status::XDEV,
        libc::ENOTDIR => Status::NOTDIR,
        libc::EISDIR => Status::ISDIR,
        libc::EINVAL => Status::INVAL,
        libc::EFBIG => Status::FBIG,
        libc::ENOSPC => Status::NOSPC,
        libc::EROFS => Status::ROFS,
        libc::EMLINK => Status::MLINK,
        libc::ENAMETOOLONG => Status::NAMETOOLONG,
        libc::ENOTEMPTY => Status::NOTEMPTY,
        libc::EDQUOT => Status::DQUOT,
        libc::ESTALE => Status::STALE,
        libc::ENOTSUP => Status::NOTSUPP,
        libc::ELOOP => Status::SYMLINK,
        libc::EAGAIN | libc::EBUSY => Status::DELAY,
        _ => Status::IO,
    }
}
