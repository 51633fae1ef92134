//! Metadata of an elasticfs file system.
//!
//! [`MetaStore`] is the one interface the engine (`fs-core`) uses for inodes, directory
//! entries, block maps, extended attributes and usage counters. [`Engine`] implements it once
//! over the key-value seam of [`kv`], on sled ([`SledStore`], embedded), in memory and on etcd
//! (replicated); the client of the metadata service implements the same trait. This crate knows nothing of FUSE,
//! NFS or object storage: a block entry names a chunk by its hash and length, nothing more.

pub mod audit;
mod block;
mod codec;
mod durability;
mod engine;
mod error;
mod keys;
pub mod kv;
mod locks;
pub mod remote;
mod session;
mod store;
pub mod throughput;
mod types;

pub use block::{Block, BlockChange, BlockRef, Compaction, Slice};
pub use engine::{Engine, MemStore, SledStore};
pub use error::{MetaError, MetaResult};
pub use locks::{LockKind, LockRecord, LockRequest};
pub use session::{ClientInfo, SessionId, SessionRecord};
pub use store::{
    BlockCommit, ChunkProtection, Committed, Created, MetaStore, NewNode, Rename, RenameMode, Unlinked,
    XattrMode,
};
pub use types::{
    Attr, ChunkHash, DirEntry, FileKind, Ino, SetAttr, Superblock, Timestamp, Usage, FORMAT_VERSION,
    MAX_NAME_LEN, ROOT_INO,
};
