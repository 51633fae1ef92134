//! The key layout, in one place. Every tree is a plain ordered key-value map, so another
//! ordered transactional engine (TiKV, FoundationDB) could hold the same layout.
//!
//! | tree          | key                              | value                              |
//! |---------------|----------------------------------|------------------------------------|
//! | `superblock`  | `"superblock"`                   | JSON [`crate::Superblock`]         |
//! | `inodes`      | ino (u64 BE)                     | [`crate::Attr`] record             |
//! | `dentries`    | parent (u64 BE) ++ name          | child ino (u64 LE), kind, cookie   |
//! | `cookies`     | parent (u64 BE) ++ cookie (BE)   | name                               |
//! | `blocks`      | ino (u64 BE) ++ block index (BE) | [`crate::BlockRef`] record         |
//! | `symlinks`    | ino (u64 BE)                     | target bytes                       |
//! | `chunk_refs`  | blake3 hash (32 bytes)           | reference count (u64 LE)           |
//! | `unreferenced`| blake3 hash                      | time the count reached zero        |
//! | `intents`     | blake3 hash                      | postcard `Vec<(session, count)>`: uploads not yet committed |
//! | `condemned`   | blake3 hash                      | time GC chose to delete it         |
//! | `xattrs`      | ino (u64 BE) ++ name             | value                              |
//! | `orphans`     | ino (u64 BE)                     | session that holds it (u64 LE)     |
//! | `counters`    | `"bytes"`, `"inodes"`            | u64 LE                             |
//! | `sessions`    | session id (u64 BE)              | postcard [`crate::SessionRecord`]  |
//! | `locks`       | ino (u64 BE)                     | postcard `Vec<`[`crate::LockRecord`]`>` |
//!
//! Big-endian numbers in keys keep sled's byte order equal to numeric order, so a directory's
//! entries and a file's blocks are contiguous ranges.

use crate::codec::{Reader, Writer};
use crate::error::{MetaError, MetaResult};
use crate::types::{FileKind, Ino, Timestamp};

pub(crate) const SUPERBLOCK_KEY: &[u8] = b"superblock";
pub(crate) const BYTES_COUNTER: &[u8] = b"bytes";
pub(crate) const INODES_COUNTER: &[u8] = b"inodes";

pub(crate) fn ino_key(ino: Ino) -> [u8; 8] {
    ino.to_be_bytes()
}

/// The inode (or session) number of an [`ino_key`].
pub(crate) fn decode_ino_key(key: &[u8]) -> MetaResult<Ino> {
    key.try_into().map(u64::from_be_bytes).map_err(|_| MetaError::Store("malformed inode key".into()))
}

pub(crate) fn ino_prefixed(ino: Ino, suffix: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(8 + suffix.len());
    key.extend_from_slice(&ino.to_be_bytes());
    key.extend_from_slice(suffix);
    key
}

pub(crate) fn pair_key(a: u64, b: u64) -> [u8; 16] {
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&a.to_be_bytes());
    key[8..].copy_from_slice(&b.to_be_bytes());
    key
}

pub(crate) fn split_pair_key(key: &[u8]) -> u64 {
    u64::from_be_bytes(key[8..16].try_into().unwrap())
}

/// The value of a directory entry.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Dentry {
    pub(crate) ino: Ino,
    pub(crate) kind: FileKind,
    pub(crate) cookie: u64,
}

impl Dentry {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut w = Writer::with_capacity(17);
        w.u64(self.ino).u8(self.kind.encode()).u64(self.cookie);
        w.0
    }

    pub(crate) fn decode(buf: &[u8]) -> MetaResult<Self> {
        let mut r = Reader::new(buf);
        Ok(Dentry { ino: r.u64()?, kind: FileKind::decode(r.u8()?)?, cookie: r.u64()? })
    }
}

pub(crate) fn encode_u64(v: u64) -> [u8; 8] {
    v.to_le_bytes()
}

pub(crate) fn decode_u64(buf: &[u8]) -> u64 {
    buf.try_into().map(u64::from_le_bytes).unwrap_or(0)
}

pub(crate) fn encode_time(t: Timestamp) -> Vec<u8> {
    let mut w = Writer::with_capacity(12);
    w.i64(t.secs).u32(t.nanos);
    w.0
}

pub(crate) fn decode_time(buf: &[u8]) -> MetaResult<Timestamp> {
    let mut r = Reader::new(buf);
    Ok(Timestamp { secs: r.i64()?, nanos: r.u32()? })
}
