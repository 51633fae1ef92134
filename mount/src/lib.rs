//! The `elasticfs` command: CLI, FUSE adapter, mounting, and the NFS gateway's command. A thin
//! layer over `elasticfs-core` and `elasticfs-nfs-gateway`.

pub mod cli;
pub mod collect;
pub mod dump;
pub mod etcd_url;
pub mod fsck;
pub mod fuse;
mod kernel_attrs;
pub mod listening;
pub mod metrics_endpoint;
pub mod mounting;
pub mod options;
mod page_fill;
pub mod serve_meta;
pub mod serve_nfs;
pub mod status;
pub mod throughput_spec;
pub mod volume;
