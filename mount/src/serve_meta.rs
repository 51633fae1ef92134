//! `elasticfs meta serve`: runs the metadata service in this process until it is killed.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Result};
use elasticfs_core::gc::{BackgroundGc, GcTarget};
use elasticfs_core::metadata::remote::{tls, MetaServer, ServerConfig};
use elasticfs_core::metadata::MetaStore;
use elasticfs_core::open_object_store;
use tracing::{info, warn};

use crate::{listening, metrics_endpoint, volume};

pub struct ServeArgs {
    pub db: PathBuf,
    pub listen: String,
    pub token_file: Option<PathBuf>,
    /// Certificate and key.
    pub tls: Option<(PathBuf, PathBuf)>,
    pub lease: Duration,
    /// How often to collect garbage (zero: never), and the grace period of deleted data.
    pub gc_interval: Duration,
    pub gc_grace: Duration,
    /// Where to serve Prometheus metrics, if anywhere.
    pub metrics: Option<String>,
    /// `--commit`: defer durability of commits by up to this long.
    pub commit: Option<Duration>,
}

pub fn serve(args: ServeArgs) -> Result<()> {
    if args.lease < Duration::from_millis(300) {
        bail!("--lease {:?} is too short: heartbeats go at a third of it; use at least 300ms", args.lease);
    }
    let token = args.token_file.as_deref().map(volume::read_token).transpose()?;
    let tls = match &args.tls {
        Some((cert, key)) => Some(tls::acceptor(cert, key)?),
        None => None,
    };
    let (runtime, listener) = listening::bind(&args.listen, "elasticfs-meta")?;
    let addr = listener.local_addr()?;
    if token.is_none() && !addr.ip().is_loopback() {
        warn!("serving {addr} without --token-file: any host that reaches it can change the file system");
    }
    let tls_on = tls.is_some();
    let server = MetaServer::open(ServerConfig {
        db: args.db.clone(),
        token,
        tls,
        lease: args.lease,
        commit: args.commit,
    })?;
    info!(%addr, db = %args.db.display(), tls = tls_on, "metadata service listening");
    let _gc = start_gc(&server, args.gc_interval, args.gc_grace)?;
    let _metrics = match &args.metrics {
        Some(addr) => {
            let server = server.clone();
            let store = move || server.store().map(|s| Arc::new(s) as Arc<dyn MetaStore>);
            Some(metrics_endpoint::serve(addr, metrics_endpoint::service_registry(store))?)
        }
        None => None,
    };
    // Last: whoever waits for this line may use every endpoint.
    listening::announce(addr)?;
    runtime.block_on(server.serve(listener));
    Ok(())
}

/// Background collection, once the store is formatted. The service reaches the bucket with
/// the storage URL in the superblock and the `AWS_*` credentials of its environment.
fn start_gc(server: &Arc<MetaServer>, every: Duration, grace: Duration) -> Result<Option<BackgroundGc>> {
    if every.is_zero() {
        return Ok(None);
    }
    let server = server.clone();
    let target: GcTarget = Box::new(move || {
        let Some(store) = server.store() else { return Ok(None) };
        // No probe at every collection: `collect` checks the ownership record before it deletes.
        let bucket = open_object_store(&store.superblock().storage)?;
        let meta: Arc<dyn MetaStore> = Arc::new(store);
        Ok(Some((meta, bucket)))
    });
    Ok(Some(BackgroundGc::start(every, grace, target)?))
}
