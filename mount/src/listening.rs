//! The listening socket of a server command (`meta serve`, `nfs serve`).

use std::io::Write;
use std::net::SocketAddr;

use anyhow::{Context, Result};

/// Binds `addr` on a new runtime whose threads are called `thread_name`.
pub fn bind(addr: &str, thread_name: &str) -> Result<(tokio::runtime::Runtime, tokio::net::TcpListener)> {
    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().thread_name(thread_name).build()?;
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind(addr))
        .with_context(|| format!("listening on {addr} (in use, or not an address of this host?)"))?;
    Ok((runtime, listener))
}

/// Says where the server listens on the first line of stdout: tests and scripts read it there
/// (useful with port 0).
pub fn announce(addr: SocketAddr) -> Result<()> {
    let mut out = std::io::stdout();
    writeln!(out, "listening on {addr}")?;
    out.flush()?;
    Ok(())
}
