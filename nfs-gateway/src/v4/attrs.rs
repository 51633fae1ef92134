//! fattr4 (RFC 8881 section 5): the attributes the gateway reports, packed in the order of
//! their numbers, and the ones a client may set (SETATTR, and a create's attributes).

use elasticfs_core::metadata::{Attr, FileKind, Timestamp, Usage};
use elasticfs_core::SetAttrRequest;

use super::status::{OpResult, Status};
use super::xdr::{Bitmap, Reader, Writer};
use crate::attrs::split_rdev;

pub const SUPPORTED_ATTRS: u32 = 0;
pub const TYPE: u32 = 1;
const FH_EXPIRE_TYPE: u32 = 2;
pub const CHANGE: u32 = 3;
pub const SIZE: u32 = 4;
const LINK_SUPPORT: u32 = 5;
const SYMLINK_SUPPORT: u32 = 6;
const NAMED_ATTR: u32 = 7;
const FSID: u32 = 8;
const UNIQUE_HANDLES: u32 = 9;
const LEASE_TIME: u32 = 10;
pub const RDATTR_ERROR: u32 = 11;
const ACLSUPPORT: u32 = 13;
const CANSETTIME: u32 = 15;
const CASE_INSENSITIVE: u32 = 16;
const CASE_PRESERVING: u32 = 17;
const CHOWN_RESTRICTED: u32 = 18;
const FILEHANDLE: u32 = 19;
pub const FILEID: u32 = 20;
const FILES_AVAIL: u32 = 21;
const FILES_FREE: u32 = 22;
const FILES_TOTAL: u32 = 23;
const HOMOGENEOUS: u32 = 26;
const MAXFILESIZE: u32 = 27;
const MAXLINK: u32 = 28;
const MAXNAME: u32 = 29;
const MAXREAD: u32 = 30;
const MAXWRITE: u32 = 31;
pub const MODE: u32 = 33;
const NO_TRUNC: u32 = 34;
const NUMLINKS: u32 = 35;
pub const OWNER: u32 = 36;
pub const OWNER_GROUP: u32 = 37;
const RAWDEV: u32 = 41;
const SPACE_AVAIL: u32 = 42;
const SPACE_FREE: u32 = 43;
const SPACE_TOTAL: u32 = 44;
const SPACE_USED: u32 = 45;
const TIME_ACCESS: u32 = 47;
pub const TIME_ACCESS_SET: u32 = 48;
const TIME_DELTA: u32 = 51;
const TIME_METADATA: u32 = 52;
const TIME_MODIFY: u32 = 53;
pub const TIME_MODIFY_SET: u32 = 54;
const MOUNTED_ON_FILEID: u32 = 55;
/// NFSv4.1: the attributes an EXCLUSIVE4_1 create may set.
const SUPPATTR_EXCLCREAT: u32 = 75;

/// What the gateway reports, by number.
const READABLE: &[u32] = &[
    SUPPORTED_ATTRS,
    TYPE,
    FH_EXPIRE_TYPE,
    CHANGE,
    SIZE,
    LINK_SUPPORT,
    SYMLINK_SUPPORT,
    NAMED_ATTR,
    FSID,
    UNIQUE_HANDLES,
    LEASE_TIME,
    RDATTR_ERROR,
    ACLSUPPORT,
    CANSETTIME,
    CASE_INSENSITIVE,
    CASE_PRESERVING,
    CHOWN_RESTRICTED,
    FILEHANDLE,
    FILEID,
    FILES_AVAIL,
    FILES_FREE,
    FILES_TOTAL,
    HOMOGENEOUS,
    MAXFILESIZE,
    MAXLINK,
    MAXNAME,
    MAXREAD,
    MAXWRITE,
    MODE,
    NO_TRUNC,
    NUMLINKS,
    OWNER,
    OWNER_GROUP,
    RAWDEV,
    SPACE_AVAIL,
    SPACE_FREE,
    SPACE_TOTAL,
    SPACE_USED,
    TIME_ACCESS,
    TIME_DELTA,
    TIME_METADATA,
    TIME_MODIFY,
    MOUNTED_ON_FILEID,
];
/// What a client may set.
const WRITABLE: &[u32] = &[SIZE, MODE, OWNER, OWNER_GROUP, TIME_ACCESS_SET, TIME_MODIFY_SET];

/// What `supported_attrs` reports in minor version `minor`.
pub fn supported(minor: u32) -> Bitmap {
    let mut map = readable(minor);
    for &bit in WRITABLE {
        map.insert(bit);
    }
    map
}

/// Limits reported with the attributes (the same as NFSv3's FSINFO).
pub const MAX_IO: u64 = crate::nfs::MAX_IO as u64;
const MAX_FILE_SIZE: u64 = 1 << 44;
const TOTAL_BYTES: u64 = 8 << 60;
const TOTAL_FILES: u64 = 1 << 48;

/// Everything an object's attributes are packed from.
pub struct Source<'a> {
    pub attr: &'a Attr,
    pub handle: &'a [u8],
    pub fsid: u64,
    pub lease_secs: u32,
    pub minor: u32,
    /// The file system's usage, read only if a space or files attribute is asked for.
    pub usage: &'a dyn Fn() -> Option<Usage>,
}

/// The change attribute: the inode's ctime in nanoseconds, which every change of its data or
/// attributes moves.
pub fn change_of(attr: &Attr) -> u64 {
    (attr.ctime.secs.max(0) as u64).wrapping_mul(1_000_000_000).wrapping_add(u64::from(attr.ctime.nanos))
}

fn file_type(kind: FileKind) -> u32 {
    match kind {
        FileKind::File => 1,
        FileKind::Dir => 2,
        FileKind::BlockDev => 3,
        FileKind::CharDev => 4,
        FileKind::Symlink => 5,
        FileKind::Socket => 6,
        FileKind::Fifo => 7,
    }
}

fn time(w: &mut Writer, t: Timestamp) {
    w.i64(t.secs);
    w.u32(t.nanos);
}

/// Packs the fattr4 of `requested` (those we report; write-only ones are the caller's to
/// refuse) into `w`.
pub fn encode(w: &mut Writer, requested: &Bitmap, src: &Source<'_>) {
    let answered = requested.intersection(&readable(src.minor));
    w.bitmap(&answered);
    let mut vals = Writer::default();
    let usage = std::cell::OnceCell::new();
    let usage = || *usage.get_or_init(|| (src.usage)().unwrap_or_default());
    let a = src.attr;
    for bit in answered.bits() {
        match bit {
            SUPPORTED_ATTRS => vals.bitmap(&supported(src.minor)),
            TYPE => vals.u32(file_type(a.kind)),
            FH_EXPIRE_TYPE => vals.u32(0), // FH4_PERSISTENT
            CHANGE => vals.u64(change_of(a)),
            SIZE => vals.u64(a.size),
            LINK_SUPPORT | SYMLINK_SUPPORT | UNIQUE_HANDLES | CANSETTIME | CASE_PRESERVING
            | CHOWN_RESTRICTED | HOMOGENEOUS | NO_TRUNC => vals.bool(true),
            NAMED_ATTR | CASE_INSENSITIVE => vals.bool(false),
            FSID => {
                vals.u64(src.fsid);
                vals.u64(0);
            }
            LEASE_TIME => vals.u32(src.lease_secs),
            RDATTR_ERROR => vals.u32(Status::OK.0),
            ACLSUPPORT => vals.u32(0),
            FILEHANDLE => vals.opaque(src.handle),
            FILEID | MOUNTED_ON_FILEID => vals.u64(a.ino),
            FILES_AVAIL | FILES_FREE => vals.u64(TOTAL_FILES.saturating_sub(usage().inodes)),
            FILES_TOTAL => vals.u64(TOTAL_FILES),
            MAXFILESIZE => vals.u64(MAX_FILE_SIZE),
            MAXLINK => vals.u32(u32::MAX),
            MAXNAME => vals.u32(255),
            MAXREAD | MAXWRITE => vals.u64(MAX_IO),
            MODE => vals.u32(u32::from(a.perm)),
            NUMLINKS => vals.u32(a.nlink),
            OWNER => vals.opaque(a.uid.to_string().as_bytes()),
            OWNER_GROUP => vals.opaque(a.gid.to_string().as_bytes()),
            RAWDEV => {
                let (major, minor) = split_rdev(a.rdev);
                vals.u32(major);
                vals.u32(minor);
            }
            SPACE_AVAIL | SPACE_FREE => vals.u64(TOTAL_BYTES.saturating_sub(usage().bytes)),
            SPACE_TOTAL => vals.u64(TOTAL_BYTES),
            SPACE_USED => vals.u64(a.stored),
            TIME_ACCESS => time(&mut vals, a.atime),
            TIME_DELTA => time(&mut vals, Timestamp { secs: 0, nanos: 1 }),
            TIME_METADATA => time(&mut vals, a.ctime),
            TIME_MODIFY => time(&mut vals, a.mtime),
            SUPPATTR_EXCLCREAT => vals.bitmap(&Bitmap::of(&[SIZE, MODE, OWNER, OWNER_GROUP])),
            _ => unreachable!("attribute {bit} is not in READABLE"),
        }
    }
    w.opaque(&vals.packed);
}

/// What GETATTR answers in minor version `minor`.
fn readable(minor: u32) -> Bitmap {
    let mut map = Bitmap::of(READABLE);
    if minor >= 1 {
        map.insert(SUPPATTR_EXCLCREAT);
    }
    map
}

/// A GETATTR or READDIR request that names a write-only attribute is refused.
pub fn check_readable(requested: &Bitmap) -> OpResult {
    if requested.contains(TIME_ACCESS_SET) || requested.contains(TIME_MODIFY_SET) {
        return Err(Status::INVAL.into());
    }
    Ok(())
}

/// What a SETATTR (or a create's attributes) asks for: the change, the attributes it names,
/// and whether both times are to become the server's "now" (which needs less permission).
pub struct SetRequest {
    pub req: SetAttrRequest,
    pub names: Bitmap,
    pub to_now: bool,
}

/// Reads a fattr4 to set. Unknown attributes are NFS4ERR_ATTRNOTSUPP, read-only ones INVAL,
/// owners that are not numeric NFS4ERR_BADOWNER (the gateway does no id mapping, as Linux
/// servers with it off).
pub fn decode_set(r: &mut Reader<'_>) -> OpResult<SetRequest> {
    let names = r.bitmap()?;
    let vals = r.opaque(64 << 10)?;
    let mut v = Reader::new(vals);
    let mut req = SetAttrRequest::default();
    let mut to_now = true;
    let settable = supported(1);
    for bit in names.bits() {
        if !settable.contains(bit) {
            return Err(Status::ATTRNOTSUPP.into());
        }
        match bit {
            SIZE => req.size = Some(v.u64()?),
            MODE => req.perm = Some((v.u32()? & 0o7777) as u16),
            OWNER => req.uid = Some(numeric_id(v.opaque(1024)?)?),
            OWNER_GROUP => req.gid = Some(numeric_id(v.opaque(1024)?)?),
            TIME_ACCESS_SET => req.atime = Some(set_time(&mut v, &mut to_now)?),
            TIME_MODIFY_SET => req.mtime = Some(set_time(&mut v, &mut to_now)?),
            _ => return Err(Status::INVAL.into()),
        }
    }
    if v.remaining() != 0 {
        return Err(Status::BADXDR.into());
    }
    Ok(SetRequest { req, names, to_now })
}

fn numeric_id(name: &[u8]) -> OpResult<u32> {
    std::str::from_utf8(name).ok().and_then(|s| s.parse().ok()).ok_or_else(|| Status::BADOWNER.into())
}

/// A settime4: the server's time, or the client's (a nanosecond count past 999,999,999 is
/// INVAL).
fn set_time(v: &mut Reader<'_>, to_now: &mut bool) -> OpResult<Timestamp> {
    match v.u32()? {
        0 => Ok(Timestamp::now()),
        1 => {
            *to_now = false;
            let secs = v.i64()?;
            let nanos = v.u32()?;
            if nanos > 999_999_999 {
                return Err(Status::INVAL.into());
            }
            Ok(Timestamp { secs, nanos })
        }
        _ => Err(Status::BADXDR.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Attr {
        Attr {
            ino: 42,
            kind: FileKind::File,
            perm: 0o640,
            uid: 1000,
            gid: 100,
            size: 5,
            stored: 5,
            nlink: 1,
            atime: Timestamp { secs: 1, nanos: 2 },
            mtime: Timestamp { secs: 3, nanos: 4 },
            ctime: Timestamp { secs: 5, nanos: 6 },
            crtime: Timestamp { secs: 5, nanos: 6 },
            rdev: 0,
            generation: 0,
            parent: 1,
        }
    }

    #[test]
    fn attributes_are_packed_in_number_order_and_unknown_ones_left_out() {
        let attr = sample();
        let src = Source { attr: &attr, handle: b"fh", fsid: 9, lease_secs: 90, minor: 1, usage: &|| None };
        let mut w = Writer::default();
        encode(&mut w, &Bitmap::of(&[OWNER, TYPE, SIZE, 12, MODE]), &src);
        let mut r = Reader::new(&w.packed);
        assert_eq!(r.bitmap().unwrap(), Bitmap::of(&[TYPE, SIZE, MODE, OWNER]), "acl (12) is not reported");
        let vals = r.opaque(1024).unwrap();
        let mut v = Reader::new(vals);
        assert_eq!(v.u32(), Ok(1));
        assert_eq!(v.u64(), Ok(5));
        assert_eq!(v.u32(), Ok(0o640));
        assert_eq!(v.opaque(16), Ok(&b"1000"[..]));
        assert_eq!(v.remaining(), 0);
    }

    #[test]
    fn set_requests_take_numeric_owners_and_refuse_names_and_read_only_attributes() {
        let pack = |bits: &[u32], vals: &dyn Fn(&mut Writer)| {
            let mut inner = Writer::default();
            vals(&mut inner);
            let mut w = Writer::default();
            w.bitmap(&Bitmap::of(bits));
            w.opaque(&inner.packed);
            w.packed
        };
        let ok = pack(&[SIZE, MODE, OWNER, TIME_MODIFY_SET], &|w| {
            w.u64(10);
            w.u32(0o100755);
            w.opaque(b"1001");
            w.u32(1);
            w.i64(77);
            w.u32(5);
        });
        let set = decode_set(&mut Reader::new(&ok)).unwrap();
        assert_eq!(set.req.size, Some(10));
        assert_eq!(set.req.perm, Some(0o755));
        assert_eq!(set.req.uid, Some(1001));
        assert_eq!(set.req.mtime, Some(Timestamp { secs: 77, nanos: 5 }));
        assert!(!set.to_now);
        let named = pack(&[OWNER], &|w| w.opaque(b"alice@example.com"));
        assert_eq!(decode_set(&mut Reader::new(&named)).err().unwrap().status, Status::BADOWNER);
        let read_only = pack(&[FILEID], &|w| w.u64(1));
        assert_eq!(decode_set(&mut Reader::new(&read_only)).err().unwrap().status, Status::INVAL);
        let acl = pack(&[12], &|w| w.u32(0));
        assert_eq!(decode_set(&mut Reader::new(&acl)).err().unwrap().status, Status::ATTRNOTSUPP);
    }
}
