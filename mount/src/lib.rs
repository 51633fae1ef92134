//! The `elasticfs` command: CLI, FUSE adapter, mounting. A thin layer over `elasticfs-core`.

pub mod cli;
pub mod fuse;
pub mod mounting;
pub mod options;
pub mod status;
pub mod volume;
