use serde::{Deserialize, Serialize};

use crate::audit::Audit;
use crate::block::{Block, BlockChange, Compaction};
use crate::error::{MetaError, MetaResult};
use crate::locks::{LockRecord, LockRequest};
use crate::session::{SessionId, SessionRecord};
use crate::throughput::{Lease, LeaseRequest, ThroughputSettings, ThroughputStatus};
use crate::types::{Attr, ChunkHash, DirEntry, FileKind, Ino, SetAttr, Superblock, Timestamp, Usage};

/// How `rename` treats an existing destination (renameat2 flags).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RenameMode {
    /// Plain rename(2): atomically replace the destination.
    Replace,
    /// RENAME_NOREPLACE: fail with EEXIST if the destination exists.
    NoReplace,
    /// RENAME_EXCHANGE: atomically swap the two names.
    Exchange,
}

/// What an unlink (or a replacing rename) left behind.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unlinked {
    /// The inode's attributes after losing the name.
    pub attr: Attr,
    /// The inode lost its last name. It stays readable (it sits in the orphan list) until the
    /// caller, once no handle holds it, calls [`MetaStore::purge`].
    pub orphaned: bool,
    /// The inode lost its last name and was removed in the same transaction (it was the
    /// `closed` inode the caller named).
    pub purged: bool,
    /// An unlink's directory as the unlink left it (see [`Created::dir`]); `None` for what a
    /// rename replaced.
    pub dir: Option<Attr>,
}

/// What [`MetaStore::create_in_dir`] made.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Created {
    pub attr: Attr,
    /// The directory's attributes as the create left them: what a getattr right after it
    /// shows, unless another client changed the directory since.
    pub dir: Attr,
}

/// A node for [`MetaStore::create`] to make.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewNode {
    pub parent: Ino,
    pub name: Vec<u8>,
    pub kind: FileKind,
    pub perm: u16,
    pub uid: u32,
    pub gid: u32,
    /// The device number of a block or character device.
    pub rdev: u32,
    /// The target of a symlink (empty for every other kind).
    pub link_target: Vec<u8>,
}

impl NewNode {
    /// A node owned by root, with no device number and no link target; set those as needed.
    pub fn new(parent: Ino, name: &[u8], kind: FileKind, perm: u16) -> Self {
        NewNode { parent, name: name.to_vec(), kind, perm, uid: 0, gid: 0, rdev: 0, link_target: Vec::new() }
    }
}

/// A rename for [`MetaStore::rename`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rename {
    pub parent: Ino,
    pub name: Vec<u8>,
    pub new_parent: Ino,
    pub new_name: Vec<u8>,
    pub mode: RenameMode,
    /// As for [`MetaStore::unlink`], for the inode the destination name points to.
    pub closed: Option<Ino>,
}

/// A change to a file's block map, applied in one transaction.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockCommit {
    /// Set the size to exactly this first, dropping every block that lies wholly beyond it.
    /// The caller supplies the trimmed last block in `blocks` when the new size cuts one.
    pub truncate: Option<u64>,
    /// Changes to blocks, by block index.
    pub blocks: Vec<(u64, BlockChange)>,
    /// After the commit the file is at least this long (the end of the writes).
    pub min_size: u64,
    /// Time of the change: mtime and ctime are set to it.
    pub mtime: Option<Timestamp>,
    /// Chunks this session protected for the change (see [`MetaStore::protect_chunk`]), used
    /// or not: released once the commit holds its references.
    pub release: Vec<ChunkHash>,
    /// The commit of a close or an `fsync`: it makes a pending create of the file durable with
    /// it (see [`MetaStore::create_pending`]).
    pub confirms_create: bool,
}

/// What [`MetaStore::commit_blocks`] left.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Committed {
    pub attr: Attr,
    /// The blocks the commit laid slices on, as they are now (for the caller to see whether
    /// they want compacting).
    pub layered: Vec<(u64, Block)>,
}

/// What [`MetaStore::protect_chunk`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChunkProtection {
    /// The chunk's object is stored (the metadata knows it): no upload needed.
    Stored,
    /// This session protected the chunk before (an upload of its own is done or under way).
    HeldBySession,
    /// Unknown: upload it.
    New,
    /// Being deleted by garbage collection: ask again shortly, then upload it.
    Condemned,
}

/// `setxattr` flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum XattrMode {
    Upsert,
    /// XATTR_CREATE: fail if it exists.
    Create,
    /// XATTR_REPLACE: fail if it does not exist.
    Replace,
}

/// The metadata interface. Every method that changes anything is one transaction and is
/// durable when it returns.
pub trait MetaStore: Send + Sync + 'static {
    fn superblock(&self) -> &Superblock;

    fn getattr(&self, ino: Ino) -> MetaResult<Attr>;
    /// The attributes of several inodes (`None` for one that is gone), in one round trip
    /// where the store allows: a listing with attributes asks for a page of them at once.
    fn getattrs(&self, inos: &[Ino]) -> MetaResult<Vec<Option<Attr>>> {
        inos.iter()
            .map(|&ino| match self.getattr(ino) {
                Ok(attr) => Ok(Some(attr)),
                Err(MetaError::NotFound) => Ok(None),
                Err(e) => Err(e),
            })
            .collect()
    }
    fn lookup(&self, parent: Ino, name: &[u8]) -> MetaResult<Attr>;
    /// Creates a file, directory, symlink or special node.
    fn create(&self, node: &NewNode) -> MetaResult<Attr> {
        Ok(self.create_in_dir(node)?.attr)
    }
    /// [`MetaStore::create`], also telling what it did to the directory.
    fn create_in_dir(&self, node: &NewNode) -> MetaResult<Created>;
    /// [`MetaStore::create_in_dir`] for a regular file that need not be durable before its
    /// creator's first commit of it at close or `fsync` ([`BlockCommit::confirms_create`],
    /// [`MetaStore::confirm_create`]): if the creator dies first, the file is removed when its
    /// session is ended. A store with no flush to save this way creates durably.
    fn create_pending(&self, node: &NewNode) -> MetaResult<Created> {
        self.create_in_dir(node)
    }
    /// Makes the pending create of `ino`, if any, durable (its file was closed unwritten).
    fn confirm_create(&self, ino: Ino) -> MetaResult<()> {
        let _ = ino;
        Ok(())
    }
    fn link(&self, ino: Ino, new_parent: Ino, new_name: &[u8]) -> MetaResult<Attr>;
    /// Removes a name. `closed` is the inode the caller believes the name points to, if no
    /// handle of the caller holds it open: when that inode loses its last name it is removed
    /// in the same transaction instead of becoming an orphan (one durable commit, not two).
    fn unlink(&self, parent: Ino, name: &[u8], closed: Option<Ino>) -> MetaResult<Unlinked>;
    fn rmdir(&self, parent: Ino, name: &[u8]) -> MetaResult<()>;
    /// Returns what a replacing rename unlinked, if anything.
    fn rename(&self, rename: &Rename) -> MetaResult<Option<Unlinked>>;
    /// Up to `limit` entries whose cookie is greater than `after`, in cookie order.
    fn readdir(&self, dir: Ino, after: u64, limit: usize) -> MetaResult<Vec<DirEntry>>;
    fn readlink(&self, ino: Ino) -> MetaResult<Vec<u8>>;
    fn setattr(&self, ino: Ino, changes: &SetAttr) -> MetaResult<Attr>;

    /// The blocks with index in `first..first + count` that exist (holes are absent).
    fn blocks(&self, ino: Ino, first: u64, count: u64) -> MetaResult<Vec<(u64, Block)>>;
    fn commit_blocks(&self, ino: Ino, commit: &BlockCommit) -> MetaResult<Committed>;
    /// Replaces a block by its compaction, if the block is still what the compaction read
    /// (slices laid on it since are kept on top). Returns whether it was applied; either way
    /// the compaction's protections are released.
    fn compact_block(&self, compaction: &Compaction) -> MetaResult<bool>;

    /// Removes an inode that has no names left (see [`Unlinked::orphaned`]).
    fn purge(&self, ino: Ino) -> MetaResult<()>;
    /// Inodes unlinked while open that were never purged (a client died holding them).
    fn orphans(&self) -> MetaResult<Vec<Ino>>;

    fn set_xattr(&self, ino: Ino, name: &[u8], value: &[u8], mode: XattrMode) -> MetaResult<()>;
    fn get_xattr(&self, ino: Ino, name: &[u8]) -> MetaResult<Vec<u8>>;
    fn list_xattr(&self, ino: Ino) -> MetaResult<Vec<Vec<u8>>>;
    fn remove_xattr(&self, ino: Ino, name: &[u8]) -> MetaResult<()>;

    fn usage(&self) -> MetaResult<Usage>;
    /// Every referenced chunk and its reference count (for fsck).
    fn referenced_chunks(&self) -> MetaResult<Vec<(ChunkHash, u64)>>;
    /// Recounts every record against the counters, link counts and chunk reference counts
    /// that summarise them (for fsck). Changes wait while it runs.
    fn audit(&self) -> MetaResult<Audit>;
    /// Chunks whose reference count fell to zero, with the time it did (for GC).
    fn unreferenced_chunks(&self) -> MetaResult<Vec<(ChunkHash, Timestamp)>>;

    /// Tokens for metered I/O from the file system's throughput governor (see
    /// [`crate::throughput`]); the request carries the I/O the client did since its last one.
    fn lease_throughput(&self, request: &LeaseRequest) -> MetaResult<Lease>;
    /// The throughput settings, credit balance, permitted rate and metered I/O.
    fn throughput(&self) -> MetaResult<ThroughputStatus>;
    /// Changes the throughput mode or rates, for every client from its next lease.
    fn set_throughput(&self, settings: &ThroughputSettings) -> MetaResult<()>;

    /// Declares that this session is about to commit a reference to chunk `hash` (it is
    /// uploading it, or relies on it being stored). Until a commit releases it (see
    /// [`BlockCommit::release`]) or the session ends, garbage collection keeps the chunk.
    fn protect_chunk(&self, hash: &ChunkHash) -> MetaResult<ChunkProtection>;
    /// Chooses chunks for deletion, in one transaction: of `hashes`, those nothing references
    /// and no session protects, that are either unreferenced since before `unreferenced_before`
    /// or unknown to the metadata (leaked objects). Returns them with those condemned before
    /// and not yet forgotten (a collection that stopped half-way). A chunk stays condemned
    /// (and [`MetaStore::protect_chunk`] answers [`ChunkProtection::Condemned`]) until
    /// [`MetaStore::forget_condemned`].
    fn condemn_chunks(
        &self,
        hashes: &[ChunkHash],
        unreferenced_before: Timestamp,
    ) -> MetaResult<Vec<ChunkHash>>;
    /// Chunks condemned and not yet forgotten.
    fn condemned_chunks(&self) -> MetaResult<Vec<ChunkHash>>;
    /// Forgets condemned chunks whose objects are deleted.
    fn forget_condemned(&self, hashes: &[ChunkHash]) -> MetaResult<()>;

    /// The live client sessions.
    fn sessions(&self) -> MetaResult<Vec<SessionRecord>>;
    /// Sets, changes or releases a lock of this session's `req.owner` on `ino`; fails with
    /// [`crate::MetaError::WouldBlock`] if another owner holds a conflicting lock.
    fn set_lock(&self, ino: Ino, req: &LockRequest) -> MetaResult<()>;
    /// The first lock that would keep `req` from being granted, if any.
    fn get_lock(&self, ino: Ino, req: &LockRequest) -> MetaResult<Option<LockRecord>>;
    /// Releases every lock this session's `owner` holds on `ino` (at close or process exit).
    fn release_locks(&self, ino: Ino, owner: u64) -> MetaResult<()>;
    /// Moves every lock of session `from` (a process of this client that died) to this session
    /// and ends `from`; returns the locks taken over as (file, owner).
    fn adopt_session(&self, from: SessionId) -> MetaResult<Vec<(Ino, u64)>>;
    /// Ends this client's session now, at a clean shutdown: its locks and chunk intents go,
    /// and the files it held open after unlinking them are removed, instead of waiting for the
    /// lease or the next mount. A metadata service's client does this when it is dropped.
    fn end_own_session(&self) -> MetaResult<()> {
        Ok(())
    }

    /// Returns once every change acknowledged so far is durable. Every change already is when
    /// it is acknowledged, except on an embedded store whose commits are deferred
    /// ([`Self::deferred_commits`]): `fsync` and unmount call this.
    fn sync_all(&self) -> MetaResult<()> {
        Ok(())
    }

    /// How long an acknowledged change may wait before it is durable, if this store defers
    /// its commits (`-o commit=DURATION`); `None`: durable when acknowledged.
    fn deferred_commits(&self) -> Option<std::time::Duration> {
        None
    }
}
