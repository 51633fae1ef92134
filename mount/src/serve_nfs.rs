//! `elasticfs nfs serve`: the NFS gateway, a client of the file system like a mount, serving
//! NFSv3 and MOUNT on one TCP port until SIGINT or SIGTERM.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use elasticfs_nfs_gateway::{parse_network, ExportConfig, Gateway, Squash};
use tracing::{info, warn};

use crate::options::MountOptions;
use crate::volume::{self, MetaAccess};

pub struct NfsArgs {
    pub meta: MetaAccess,
    pub listen: String,
    pub allow: Vec<String>,
    pub read_only: bool,
    pub squash: String,
    pub anon_uid: u32,
    pub anon_gid: u32,
    /// Engine options, as `mount -o` takes them (cache-dir=, cache-size=, hard, soft, …).
    pub options: Vec<String>,
}

pub fn serve(mut args: NfsArgs) -> Result<()> {
    let export = ExportConfig {
        allow: args
            .allow
            .iter()
            .map(|a| parse_network(a).map_err(anyhow::Error::msg))
            .collect::<Result<_>>()?,
        read_only: args.read_only,
        squash: args.squash.parse::<Squash>().map_err(anyhow::Error::msg)?,
        anon_uid: args.anon_uid,
        anon_gid: args.anon_gid,
    };
    let opts = MountOptions::parse(args.options.iter().map(String::as_str))?;
    if args.meta.token_file.is_none() {
        args.meta.token_file = opts.token_file.clone();
    }
    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().thread_name("elasticfs-nfs").build()?;
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind(&args.listen))
        .with_context(|| format!("listening on {} (in use, or not an address of this host?)", args.listen))?;
    let addr = listener.local_addr()?;
    let fs = Arc::new(volume::open_filesystem(&args.meta, Path::new(&format!("nfs://{addr}")), &opts)?);
    if export.allow.is_empty() && !addr.ip().is_loopback() {
        warn!("serving {addr} to every address: restrict clients with --allow CIDR");
    }
    info!(%addr, read_only = export.read_only, squash = ?export.squash, "NFS gateway listening");
    let gateway = Gateway::new(fs.clone(), export);
    // Tests and scripts read the address from the first line (useful with port 0).
    let mut out = std::io::stdout();
    writeln!(out, "listening on {addr}")?;
    out.flush()?;
    runtime.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            served = gateway.clone().serve(listener) => served.context("accepting NFS connections"),
            _ = tokio::signal::ctrl_c() => Ok(()),
            _ = term.recv() => Ok(()),
        }
    })?;
    info!("stopping: committing open files");
    gateway.close_all().context("committing open files at shutdown")?;
    fs.flush_all().context("committing open files at shutdown")?;
    Ok(())
}
