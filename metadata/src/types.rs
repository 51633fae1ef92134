use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::throughput::ThroughputSettings;

use crate::codec::{Reader, Writer};
use crate::error::{MetaError, MetaResult};

/// Inode number. Never reused: numbers come from a counter in the store, in batches.
pub type Ino = u64;
/// The root directory's inode number (the one FUSE expects).
pub const ROOT_INO: Ino = 1;
/// Longest file name, in bytes, as on Linux.
pub const MAX_NAME_LEN: usize = 255;
/// The on-disk format this build writes. A store with a higher version is refused.
/// Version 3 added slices to block records (see [`crate::Block`]).
pub const FORMAT_VERSION: u32 = 3;

/// A chunk's name: the blake3 hash of its bytes.
pub type ChunkHash = [u8; 32];

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum FileKind {
    File,
    Dir,
    Symlink,
    Fifo,
    Socket,
    CharDev,
    BlockDev,
}

impl FileKind {
    pub(crate) fn encode(self) -> u8 {
        match self {
            FileKind::File => 1,
            FileKind::Dir => 2,
            FileKind::Symlink => 3,
            FileKind::Fifo => 4,
            FileKind::Socket => 5,
            FileKind::CharDev => 6,
            FileKind::BlockDev => 7,
        }
    }

    pub(crate) fn decode(code: u8) -> MetaResult<Self> {
        Ok(match code {
            1 => FileKind::File,
            2 => FileKind::Dir,
            3 => FileKind::Symlink,
            4 => FileKind::Fifo,
            5 => FileKind::Socket,
            6 => FileKind::CharDev,
            7 => FileKind::BlockDev,
            _ => return Err(MetaError::Store(format!("unknown file kind {code}"))),
        })
    }
}

/// Seconds and nanoseconds since the Unix epoch (negative seconds allowed, as in `timespec`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default, Serialize, Deserialize)]
pub struct Timestamp {
    pub secs: i64,
    pub nanos: u32,
}

impl Timestamp {
    pub fn now() -> Self {
        Self::from(SystemTime::now())
    }

    /// Milliseconds from `earlier` to this time (negative if `earlier` is later).
    pub fn millis_since(self, earlier: Timestamp) -> i64 {
        (self.secs - earlier.secs) * 1000 + (self.nanos as i64 - earlier.nanos as i64) / 1_000_000
    }
}

impl From<SystemTime> for Timestamp {
    fn from(t: SystemTime) -> Self {
        match t.duration_since(UNIX_EPOCH) {
            Ok(d) => Timestamp { secs: d.as_secs() as i64, nanos: d.subsec_nanos() },
            Err(e) => {
                let d = e.duration();
                if d.subsec_nanos() == 0 {
                    Timestamp { secs: -(d.as_secs() as i64), nanos: 0 }
                } else {
                    Timestamp { secs: -(d.as_secs() as i64) - 1, nanos: 1_000_000_000 - d.subsec_nanos() }
                }
            }
        }
    }
}

impl From<Timestamp> for SystemTime {
    fn from(t: Timestamp) -> Self {
        if t.secs >= 0 {
            UNIX_EPOCH + std::time::Duration::new(t.secs as u64, t.nanos)
        } else {
            UNIX_EPOCH - std::time::Duration::from_secs(t.secs.unsigned_abs())
                + std::time::Duration::from_nanos(t.nanos as u64)
        }
    }
}

/// An inode's attributes, as kept in the `inodes` tree.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attr {
    pub ino: Ino,
    pub kind: FileKind,
    /// Permission bits including setuid, setgid and sticky (`mode & 0o7777`).
    pub perm: u16,
    pub uid: u32,
    pub gid: u32,
    /// Logical size in bytes.
    pub size: u64,
    /// Bytes held by this inode's blocks (inline or chunk), which is what `st_blocks` reports:
    /// holes cost nothing.
    pub stored: u64,
    pub nlink: u32,
    pub atime: Timestamp,
    pub mtime: Timestamp,
    pub ctime: Timestamp,
    pub crtime: Timestamp,
    pub rdev: u32,
    /// Bumped never, today; kept so that NFS file handles (inode + generation) stay stable.
    pub generation: u64,
    /// Directories only: the parent directory (a directory has exactly one), for rename's cycle
    /// check and `..`.
    pub parent: Ino,
}

/// Version 2 dropped a directory's entry count and next cookie (version 1 records are read,
/// those two fields skipped): keeping them meant writing the directory on every create and
/// unlink in it, so clients working in one directory all wrote one key.
const ATTR_RECORD_VERSION: u8 = 2;

impl Attr {
    /// A new inode `ino` made at `now`, owned by root, empty, in the root directory: one link
    /// (two for a directory, counting its `.`). Callers set what differs.
    pub fn new(ino: Ino, kind: FileKind, perm: u16, now: Timestamp) -> Self {
        Attr {
            ino,
            kind,
            perm,
            uid: 0,
            gid: 0,
            size: 0,
            stored: 0,
            nlink: if kind == FileKind::Dir { 2 } else { 1 },
            atime: now,
            mtime: now,
            ctime: now,
            crtime: now,
            rdev: 0,
            generation: 0,
            parent: ROOT_INO,
        }
    }

    pub fn is_dir(&self) -> bool {
        self.kind == FileKind::Dir
    }

    /// The full `st_mode`: file type bits and permission bits.
    pub fn mode(&self) -> u32 {
        let type_bits = match self.kind {
            FileKind::File => 0o100000,
            FileKind::Dir => 0o040000,
            FileKind::Symlink => 0o120000,
            FileKind::Fifo => 0o010000,
            FileKind::Socket => 0o140000,
            FileKind::CharDev => 0o020000,
            FileKind::BlockDev => 0o060000,
        };
        type_bits | self.perm as u32
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(128);
        w.u8(ATTR_RECORD_VERSION)
            .u64(self.ino)
            .u8(self.kind.encode())
            .u16(self.perm)
            .u32(self.uid)
            .u32(self.gid)
            .u64(self.size)
            .u64(self.stored)
            .u32(self.nlink);
        for t in [self.atime, self.mtime, self.ctime, self.crtime] {
            w.i64(t.secs).u32(t.nanos);
        }
        w.u32(self.rdev).u64(self.generation).u64(self.parent);
        w.0
    }

    pub(crate) fn decode(buf: &[u8]) -> MetaResult<Self> {
        let mut r = Reader::new(buf);
        let version = r.u8()?;
        if !(1..=ATTR_RECORD_VERSION).contains(&version) {
            return Err(MetaError::Store(format!("inode record version {version} unknown")));
        }
        let ino = r.u64()?;
        let kind = FileKind::decode(r.u8()?)?;
        let perm = r.u16()?;
        let uid = r.u32()?;
        let gid = r.u32()?;
        let size = r.u64()?;
        let stored = r.u64()?;
        let nlink = r.u32()?;
        let mut times = [Timestamp::default(); 4];
        for t in &mut times {
            *t = Timestamp { secs: r.i64()?, nanos: r.u32()? };
        }
        let (rdev, generation, parent) = (r.u32()?, r.u64()?, r.u64()?);
        Ok(Attr {
            ino,
            kind,
            perm,
            uid,
            gid,
            size,
            stored,
            nlink,
            atime: times[0],
            mtime: times[1],
            ctime: times[2],
            crtime: times[3],
            rdev,
            generation,
            parent,
        })
    }
}

/// The attribute changes of one `setattr`. `None` leaves a field alone. Size changes go
/// through [`crate::MetaStore::commit_blocks`] because they change the block map.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetAttr {
    pub perm: Option<u16>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub atime: Option<Timestamp>,
    pub mtime: Option<Timestamp>,
    pub ctime: Option<Timestamp>,
}

/// One directory entry as `readdir` returns it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirEntry {
    pub name: Vec<u8>,
    pub ino: Ino,
    pub kind: FileKind,
    /// Pass this back to continue the listing after this entry.
    pub cookie: u64,
}

/// Fixed at format time; stored once. Never holds secrets.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Superblock {
    pub format_version: u32,
    pub uuid: String,
    pub name: String,
    pub block_size: u32,
    /// Blocks at most this long are kept inline in the metadata.
    pub inline_threshold: u32,
    /// Where chunks live: `file:///dir`, `memory://` or `s3://bucket[/prefix]` (endpoint and
    /// region are stored with it when given; credentials never are).
    pub storage: String,
    pub created_secs: i64,
    /// The throughput mode and rates at format time. They can be changed later (see
    /// [`crate::MetaStore::set_throughput`]); the store's current ones are in
    /// [`crate::MetaStore::throughput`]. Absent in stores formatted before throughput modes.
    #[serde(default)]
    pub throughput: ThroughputSettings,
}

impl Superblock {
    pub fn new(name: &str, block_size: u32, inline_threshold: u32, storage: &str) -> Self {
        Superblock {
            format_version: FORMAT_VERSION,
            uuid: uuid::Uuid::new_v4().to_string(),
            name: name.to_string(),
            block_size,
            inline_threshold,
            storage: storage.to_string(),
            created_secs: Timestamp::now().secs,
            throughput: ThroughputSettings::default(),
        }
    }
}

/// Usage counters, kept in the same transactions as the changes they count.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Bytes held by all blocks of all inodes (holes excluded, duplicates counted per file).
    pub bytes: u64,
    pub inodes: u64,
}
