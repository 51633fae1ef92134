//! The NFS gateway (NFSv3 over `fs-core`) is issue 4 and not written yet. This crate exists so
//! that the workspace has the shape of the design; it deliberately exports nothing.
