//! The key layout, in one place: one ordered key space, a one-byte prefix per kind of record.
//! Every driver of [`crate::kv`] holds exactly these keys (etcd under `NAME/`).
//!
//! | prefix | key after the prefix             | value                                        |
//! |--------|----------------------------------|----------------------------------------------|
//! | `S`    | (none)                           | JSON [`crate::Superblock`]                   |
//! | `N`    | counter name (`ino`, `session`, `cookie`) | next free number (u64 LE): allocators |
//! | `U`    | `bytes`/`inodes`, 0, session (u64 BE), slot (u8) | u64 LE: one share of a usage counter |
//! | `i`    | ino (u64 BE)                     | [`crate::Attr`] record                       |
//! | `d`    | parent (u64 BE) ++ name          | [`Dentry`]: child ino, kind, cookie          |
//! | `c`    | parent (u64 BE) ++ cookie (u64 BE) | [`Listed`]: child ino, kind, name          |
//! | `b`    | ino (u64 BE) ++ block index (u64 BE) | [`crate::Block`]: base and slices        |
//! | `l`    | ino (u64 BE)                     | symlink target                               |
//! | `m`    | ino (u64 BE)                     | directories: when entries last changed (see below) |
//! | `x`    | ino (u64 BE) ++ name             | extended attribute value                     |
//! | `o`    | ino (u64 BE)                     | session that holds the orphan (u64 LE)       |
//! | `w`    | ino (u64 BE)                     | a create waiting for its file's close: session, directory (u64 LE each), name |
//! | `r`    | blake3 hash (32 bytes)           | chunk reference count (u64 LE)               |
//! | `u`    | blake3 hash                      | time the count reached zero                  |
//! | `p`    | blake3 hash                      | postcard `Vec<(session, count)>`: uploads not yet committed |
//! | `k`    | blake3 hash                      | time GC condemned it                         |
//! | `s`    | session id (u64 BE)              | postcard [`crate::SessionRecord`]            |
//! | `L`    | ino (u64 BE)                     | postcard `Vec<`[`crate::LockRecord`]`>`      |
//! | `T`    | (none)                           | postcard throughput governor state           |
//!
//! Big-endian numbers keep key order equal to numeric order, so a directory's entries, its
//! listing and a file's blocks are each one contiguous range.
//!
//! **Ranges and their owners.** A file's blocks and an inode's extended attributes have an
//! owner record that every change to them also writes: the inode. A transaction that reads it
//! therefore conflicts with any change to the range, deletions included. (A compaction
//! rewrites one block record without the inode; it neither adds nor removes keys, changes no
//! length, and a range read of the blocks conflicts with it as with any modified key.) A directory's listing
//! has no such owner (creates do not write the directory); the one decision taken on it,
//! emptiness, is broken only by an insert, and drivers guard scanned ranges against inserts
//! (see [`crate::kv::EtcdKv`]).
//!
//! **Directory times.** Adding or removing an entry sets the directory's mtime and ctime by a
//! blind write of its `m` key, not by rewriting its inode record: creates in one directory
//! from many clients then write different keys and do not conflict. A directory's times are
//! the later of its record's and its `m` key's; a `setattr` of its times folds the key back
//! into the record. A store that one process holds has no conflicts to avoid
//! ([`crate::kv::Kv::single_writer`]): there the times stay in the record (a getattr is one
//! read), and `m` keys found on one when it opens are folded into the records.
//!
//! **Sharded counters.** Usage counters are split into shares, one per session and thread
//! slot (tools use session 0), and summed when read, so that clients (and the threads of one
//! client) creating files at once do not all write one key; a session's shares are folded
//! into session 0's when it ends.

use crate::codec::{Reader, Writer};
use crate::error::{MetaError, MetaResult};
use crate::types::{ChunkHash, FileKind, Ino, Timestamp};

pub(crate) const SUPERBLOCK: &[u8] = b"S";
pub(crate) const GOVERNOR: &[u8] = b"T";
pub(crate) const NEXT_INO: &[u8] = b"Nino";
pub(crate) const NEXT_SESSION: &[u8] = b"Nsession";
pub(crate) const NEXT_COOKIE: &[u8] = b"Ncookie";

pub(crate) const INODE: u8 = b'i';
pub(crate) const DENTRY: u8 = b'd';
pub(crate) const LISTING: u8 = b'c';
pub(crate) const BLOCK: u8 = b'b';
pub(crate) const SYMLINK: u8 = b'l';
pub(crate) const DIR_TIMES: u8 = b'm';
pub(crate) const XATTR: u8 = b'x';
pub(crate) const ORPHAN: u8 = b'o';
pub(crate) const PENDING_CREATE: u8 = b'w';
pub(crate) const CHUNK_REFS: u8 = b'r';
pub(crate) const UNREFERENCED: u8 = b'u';
pub(crate) const INTENTS: u8 = b'p';
pub(crate) const CONDEMNED: u8 = b'k';
pub(crate) const SESSION: u8 = b's';
pub(crate) const LOCKS: u8 = b'L';
const USAGE: u8 = b'U';

/// The usage counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Counter {
    Bytes,
    Inodes,
}

impl Counter {
    fn name(self) -> &'static [u8] {
        match self {
            Counter::Bytes => b"bytes",
            Counter::Inodes => b"inodes",
        }
    }

    /// The prefix of every share of the counter.
    pub(crate) fn prefix(self) -> Vec<u8> {
        let mut key = vec![USAGE];
        key.extend_from_slice(self.name());
        key.push(0);
        key
    }

    /// The prefix of every share of the counter that belongs to `session`.
    pub(crate) fn session_prefix(self, session: u64) -> Vec<u8> {
        let mut key = self.prefix();
        key.extend_from_slice(&session.to_be_bytes());
        key
    }

    /// One share: `session`'s, for the threads of slot `slot` (see [`share_slot`]).
    pub(crate) fn share(self, session: u64, slot: u8) -> Vec<u8> {
        let mut key = self.session_prefix(session);
        key.push(slot);
        key
    }
}

/// Shares each session has per counter: a thread writes the share of its slot, so that up to
/// this many threads of one client change counters without conflicting with each other.
const SLOTS: u8 = 16;

/// The share slot of the calling thread (threads take slots in turn).
pub(crate) fn share_slot() -> u8 {
    use std::sync::atomic::{AtomicU8, Ordering};
    static NEXT: AtomicU8 = AtomicU8::new(0);
    thread_local! {
        static SLOT: u8 = NEXT.fetch_add(1, Ordering::Relaxed) % SLOTS;
    }
    SLOT.with(|slot| *slot)
}

/// `kind` ++ a number.
pub(crate) fn numbered(kind: u8, n: u64) -> Vec<u8> {
    numbered_array(kind, n).to_vec()
}

/// [`numbered`], without an allocation (for the hottest reads).
pub(crate) fn numbered_array(kind: u8, n: u64) -> [u8; 9] {
    let mut key = [kind; 9];
    key[1..].copy_from_slice(&n.to_be_bytes());
    key
}

/// `kind` ++ a number ++ bytes.
pub(crate) fn numbered_with(kind: u8, n: u64, suffix: &[u8]) -> Vec<u8> {
    let mut key = numbered(kind, n);
    key.extend_from_slice(suffix);
    key
}

/// `kind` ++ two numbers.
pub(crate) fn pair(kind: u8, a: u64, b: u64) -> Vec<u8> {
    numbered_with(kind, a, &b.to_be_bytes())
}

pub(crate) fn chunk(kind: u8, hash: &ChunkHash) -> Vec<u8> {
    let mut key = Vec::with_capacity(33);
    key.push(kind);
    key.extend_from_slice(hash);
    key
}

/// The first number of a key made by [`numbered`], [`numbered_with`] or [`pair`].
pub(crate) fn first_number(key: &[u8]) -> MetaResult<u64> {
    key.get(1..9)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| MetaError::Store("malformed key".into()))
}

/// The second number of a key made by [`pair`].
pub(crate) fn second_number(key: &[u8]) -> MetaResult<u64> {
    key.get(9..17)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| MetaError::Store("malformed key".into()))
}

/// The hash of a key made by [`chunk`].
pub(crate) fn chunk_hash(key: &[u8]) -> MetaResult<ChunkHash> {
    key.get(1..).and_then(|b| b.try_into().ok()).ok_or_else(|| MetaError::Store("malformed chunk key".into()))
}

/// The value of a directory entry, by name.
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

/// The value of a directory entry, by cookie: what a listing needs, in one range read.
pub(crate) struct Listed {
    pub(crate) ino: Ino,
    pub(crate) kind: FileKind,
    pub(crate) name: Vec<u8>,
}

impl Listed {
    pub(crate) fn encode(ino: Ino, kind: FileKind, name: &[u8]) -> Vec<u8> {
        let mut w = Writer::with_capacity(9 + name.len());
        w.u64(ino).u8(kind.encode());
        w.0.extend_from_slice(name);
        w.0
    }

    pub(crate) fn decode(buf: &[u8]) -> MetaResult<Self> {
        if buf.len() < 9 {
            return Err(MetaError::Store("malformed listing entry".into()));
        }
        let mut r = Reader::new(buf);
        Ok(Listed { ino: r.u64()?, kind: FileKind::decode(r.u8()?)?, name: buf[9..].to_vec() })
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
