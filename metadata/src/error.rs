use std::borrow::Cow;
use std::fmt;

use serde::{Deserialize, Serialize};

/// Everything a metadata operation can fail with. Each variant maps to one errno so that the
/// frontends can answer the kernel (or an NFS client) without guessing. Errors cross the
/// network as they are (see [`crate::remote`]).
#[derive(Debug, thiserror::Error, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetaError {
    #[error("no such file or directory")]
    NotFound,
    #[error("file exists")]
    Exists,
    #[error("not a directory")]
    NotDir,
    #[error("is a directory")]
    IsDir,
    #[error("directory not empty")]
    NotEmpty,
    #[error("invalid argument: {0}")]
    Invalid(Cow<'static, str>),
    #[error("file name longer than 255 bytes")]
    NameTooLong,
    #[error("no such extended attribute")]
    NoXattr,
    #[error("too many links")]
    TooManyLinks,
    #[error("operation not permitted")]
    NotPermitted,
    /// A lock request conflicts with a lock held by another owner.
    #[error("the lock is held by another owner")]
    WouldBlock,
    /// The store's format is not one this build can read.
    #[error("{0}")]
    Format(String),
    /// The metadata service could not be reached, refused us, or did not answer in time.
    #[error("{0}")]
    Unavailable(String),
    /// The metadata service ended this client's session (no heartbeat within its lease).
    #[error("the client's session has expired")]
    SessionExpired,
    /// The store itself failed (disk, corruption, lock held by another process).
    #[error("metadata store: {0}")]
    Store(String),
    /// A commit named a chunk that nothing references and that this session did not protect
    /// (see [`crate::MetaStore::protect_chunk`]): garbage collection may have deleted it.
    #[error("chunk {} is not protected from garbage collection", hex32(.0))]
    ChunkUnprotected(crate::types::ChunkHash),
}

fn hex32(hash: &[u8; 32]) -> String {
    hash.iter().map(|b| format!("{b:02x}")).collect()
}

pub type MetaResult<T> = Result<T, MetaError>;

impl MetaError {
    /// The errno a frontend should answer with.
    pub fn errno(&self) -> i32 {
        match self {
            MetaError::NotFound => libc_errno::ENOENT,
            MetaError::Exists => libc_errno::EEXIST,
            MetaError::NotDir => libc_errno::ENOTDIR,
            MetaError::IsDir => libc_errno::EISDIR,
            MetaError::NotEmpty => libc_errno::ENOTEMPTY,
            MetaError::Invalid(_) => libc_errno::EINVAL,
            MetaError::NameTooLong => libc_errno::ENAMETOOLONG,
            MetaError::NoXattr => libc_errno::ENODATA,
            MetaError::TooManyLinks => libc_errno::EMLINK,
            MetaError::NotPermitted => libc_errno::EPERM,
            MetaError::WouldBlock => libc_errno::EAGAIN,
            MetaError::Format(_)
            | MetaError::Store(_)
            | MetaError::Unavailable(_)
            | MetaError::SessionExpired
            | MetaError::ChunkUnprotected(_) => libc_errno::EIO,
        }
    }

    pub fn store(e: impl fmt::Display) -> Self {
        MetaError::Store(e.to_string())
    }
}

/// Linux errno values. Kept here (not from `libc`) so that the metadata crate, which may one
/// day serve clients on other systems, states the wire meaning of each error explicitly.
mod libc_errno {
    pub const EPERM: i32 = 1;
    pub const ENOENT: i32 = 2;
    pub const EIO: i32 = 5;
    pub const EAGAIN: i32 = 11;
    pub const EEXIST: i32 = 17;
    pub const ENOTDIR: i32 = 20;
    pub const EISDIR: i32 = 21;
    pub const EINVAL: i32 = 22;
    pub const EMLINK: i32 = 31;
    pub const ENAMETOOLONG: i32 = 36;
    pub const ENOTEMPTY: i32 = 39;
    pub const ENODATA: i32 = 61;
}

impl From<sled::Error> for MetaError {
    fn from(e: sled::Error) -> Self {
        MetaError::store(e)
    }
}

/// A transaction fails with the error its body aborted with, or with the store's own.
impl From<sled::transaction::TransactionError<MetaError>> for MetaError {
    fn from(e: sled::transaction::TransactionError<MetaError>) -> Self {
        match e {
            sled::transaction::TransactionError::Abort(e) => e,
            sled::transaction::TransactionError::Storage(e) => MetaError::store(e),
        }
    }
}
