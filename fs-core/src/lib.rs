//! The elasticfs engine: one [`FileSystem`] API over a [`elasticfs_metadata::MetaStore`] and a
//! content-addressed [`ChunkStore`], shared by the FUSE and NFS frontends.

mod access;
mod block_cache;
mod buffer_pool;
mod chunk_store;
mod compaction;
mod disk_cache;
mod error;
mod filesystem;
pub mod gc;
mod locks;
pub mod metrics;
mod open_file;
pub mod ownership;
mod read_data;
mod segments;
mod slices;
mod storage;
mod throttle;

pub use access::{dropping_set_id_bits, Identity, MAY_EXEC, MAY_READ, MAY_WRITE};
pub use block_cache::BlockCache;
pub use chunk_store::{chunk_path, hash_of, segments_path, ChunkStore};
pub use disk_cache::DiskCache;
pub use error::{errno, FsError, FsResult};
pub use filesystem::{Caller, CreateMode, FileSystem, FileVersion, FsConfig, SetAttrRequest, Window};
pub use ownership::Ownership;
pub use read_data::ReadData;
pub use storage::{connect_chunk_store, connect_object_store, open_object_store};
pub use throttle::Throttle;

pub use elasticfs_metadata as metadata;
