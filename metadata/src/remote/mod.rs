//! The metadata service: one process owns the sled store and every client (FUSE mounts, NFS
//! gateways, `format`, `status`) works on it over TCP, optionally in TLS.
//!
//! * [`wire`]: the framing, the handshake and the request set (postcard-encoded).
//! * [`server`]: `elasticfs meta serve`: sessions, leases, one blocking task per request.
//! * [`client`]: [`RemoteStore`], the [`crate::MetaStore`] a client uses: many requests in
//!   flight on one connection, reconnection with backoff, hard or soft failure.

pub mod client;
pub mod server;
pub mod tls;
pub mod wire;

pub use client::{ClientOptions, RemoteStore, Retry};
pub use server::{MetaServer, ServerConfig};
