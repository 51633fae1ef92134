//! `elasticfs nfs serve`: the NFS gateway, a client of the file system like a mount, serving
//! NFSv3 with MOUNT, NFSv4.0 and NFSv4.1 on one TCP port until SIGINT or SIGTERM.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use elasticfs_nfs_gateway::{parse_network, ExportConfig, Gateway, Squash};
use tracing::{info, warn};

use crate::listening;
use crate::metrics_endpoint::{self, client_registry};
use crate::options::MountOptions;
use crate::volume::{self, MetaAccess};

#[derive(clap::Args, Debug)]
pub struct NfsArgs {
    #[arg(long, env = "ELASTICFS_META")]
    meta: Option<String>,
    /// The metadata service's shared token.
    #[arg(long, env = "ELASTICFS_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// Address to listen on, e.g. 0.0.0.0:2049 (port 0 picks a free one).
    #[arg(long)]
    listen: String,
    /// A client network allowed to mount (10.0.0.0/8, or one address); may repeat.
    /// Without any, every address is allowed.
    #[arg(long)]
    allow: Vec<String>,
    /// Refuse every change (NFS3ERR_ROFS, NFS4ERR_ROFS).
    #[arg(long)]
    read_only: bool,
    /// Map uid 0 (root), every uid (all), or none to the anonymous ids.
    #[arg(long, default_value = "root")]
    squash: String,
    #[arg(long, default_value_t = 65534)]
    anon_uid: u32,
    #[arg(long, default_value_t = 65534)]
    anon_gid: u32,
    /// NFSv4's lease in seconds: a client not heard from for this long loses its opens.
    #[arg(long, default_value_t = 90, value_parser = clap::value_parser!(u64).range(1..=3600))]
    lease_time: u64,
    /// Take over a failed gateway that listened on ADDR (host:port, as `elasticfs status`
    /// shows it: nfs://ADDR), whose clients now reach this one: its locks are kept for them to
    /// reclaim in the grace period. Only for a gateway that is down; may repeat.
    #[arg(long, value_name = "ADDR")]
    take_over: Vec<String>,
    /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9568).
    #[arg(long, value_name = "ADDR")]
    metrics: Option<String>,
    /// Engine options, as for mount (cache-dir=, cache-size=, hard, soft, timeo=, …).
    #[arg(short = 'o')]
    options: Vec<String>,
}

pub fn serve(args: NfsArgs) -> Result<()> {
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
        lease: Duration::from_secs(args.lease_time),
    };
    let mut opts = MountOptions::parse(args.options.iter().map(String::as_str))?;
    opts.metrics = args.metrics.or(opts.metrics);
    let meta = MetaAccess::new(args.meta, args.token_file.or_else(|| opts.token_file.clone()));
    let (runtime, listener) = listening::bind(&args.listen, "elasticfs-nfs")?;
    let addr = listener.local_addr()?;
    let label = format!("nfs://{addr}");
    let fs = Arc::new(volume::open_filesystem(&meta, Path::new(&label), &opts)?);
    if export.allow.is_empty() && !addr.ip().is_loopback() {
        warn!("serving {addr} to every address: restrict clients with --allow CIDR");
    }
    info!(%addr, read_only = export.read_only, squash = ?export.squash, "NFS gateway listening");
    let _metrics = opts
        .metrics
        .as_deref()
        .map(|addr| metrics_endpoint::serve(addr, client_registry(&fs)))
        .transpose()?;
    let gc = crate::collect::start_client_gc(&fs, &meta, &opts)?;
    let gateway = Gateway::new(fs.clone(), export);
    // A gateway restarted on the same address takes over what its killed predecessor held,
    // and gives NFSv4 clients a grace period to reclaim it.
    let failed: Vec<String> = args.take_over.iter().map(|addr| format!("nfs://{addr}")).collect();
    if let Some(locks) = gateway.take_over(&label, &failed)? {
        info!(locks, lease = args.lease_time, "took over an earlier gateway's session: grace period started");
    }
    listening::announce(addr)?;
    let served = runtime.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
        tokio::select! {
            served = gateway.clone().serve(listener) => served.context("accepting NFS connections"),
            _ = interrupt.recv() => Ok(()),
            _ = term.recv() => Ok(()),
        }
    });
    info!("stopping: committing open files");
    // The connections' tasks go first, on this thread: they hold the engine, whose own runtime
    // must not be dropped from inside another runtime's worker.
    runtime.shutdown_timeout(Duration::from_secs(5));
    drop(gc);
    let closed = gateway.close_all().context("committing open files at shutdown");
    let stopped = fs.shutdown().context("ending the gateway's session");
    served.and(closed).and(stopped)?;
    info!("stopped");
    Ok(())
}
