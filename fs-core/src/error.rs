use elasticfs_metadata::MetaError;

/// An operation's failure, carrying the errno the frontend answers with.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("{message} (errno {errno})")]
pub struct FsError {
    pub errno: i32,
    pub message: String,
}

pub type FsResult<T> = Result<T, FsError>;

impl FsError {
    pub fn new(errno: i32, message: impl Into<String>) -> Self {
        FsError { errno, message: message.into() }
    }

    pub fn io(message: impl Into<String>) -> Self {
        Self::new(errno::EIO, message)
    }
}

impl From<MetaError> for FsError {
    fn from(e: MetaError) -> Self {
        FsError::new(e.errno(), e.to_string())
    }
}

/// errno values fs-core answers with itself.
pub mod errno {
    pub const ENOENT: i32 = 2;
    pub const EIO: i32 = 5;
    pub const EBADF: i32 = 9;
    pub const ENOTDIR: i32 = 20;
    pub const EISDIR: i32 = 21;
    pub const EINVAL: i32 = 22;
    pub const EFBIG: i32 = 27;
    pub const ENAMETOOLONG: i32 = 36;
    pub const EOPNOTSUPP: i32 = 95;
}
