//! Metadata of an elasticfs file system.
//!
//! [`MetaStore`] is the one interface the engine (`fs-core`) uses for inodes, directory
//! entries, block maps, extended attributes and usage counters. [`SledStore`] is the embedded
//! engine; a networked client implements the same trait. This crate knows nothing of FUSE,
//! NFS or object storage: a block entry names a chunk by its hash and length, nothing more.

pub mod audit;
mod codec;
mod durability;
mod error;
mod locks;
pub mod remote;
mod schema;
mod session;
mod sled_store;
mod store;
pub mod throughput;
mod types;

pub use error::{MetaError, MetaResult};
pub use locks::{LockKind, LockRecord, LockRequest};
pub use session::{ClientInfo, SessionId, SessionRecord};
pub use sled_store::SledStore;
pub use store::{BlockCommit, ChunkProtection, MetaStore, NewNode, Rename, RenameMode, Unlinked, XattrMode};
pub use types::{
    Attr, BlockRef, ChunkHash, DirEntry, FileKind, Ino, SetAttr, Superblock, Timestamp, Usage,
    FORMAT_VERSION, MAX_NAME_LEN, ROOT_INO,
};
