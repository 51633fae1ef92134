//! The `elasticfs` command: CLI, FUSE adapter, mounting. A thin layer over `elasticfs-core`.

pub mod cli;
pub mod fuse;
pub mod mounting;
pub mod options;
pub mod serve_meta;
pub mod status;
pub mod volume;
