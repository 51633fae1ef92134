//! The NFS gateway: NFSv3 with MOUNT, NFSv4.0 and NFSv4.1 (one TCP port, no portmapper) over
//! the `fs-core` engine,
//! so that hosts without a FUSE client share the file system with those that have one.
//!
//! Built on the `nfs3_types` XDR definitions with our own RPC server and procedures: see
//! docs/ARCHITECTURE.md for why neither `nfsserve` nor `nfs3_server` is used.

mod attrs;
mod checks;
mod export;
mod handle;
mod mount;
mod nfs;
mod open_files;
mod rpc;
mod v4;

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use elasticfs_core::{FileSystem, FsResult};
use nfs3_types::nfs3::writeverf3;
use nfs3_types::rpc::{accept_stat_data, auth_stat};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tracing::{debug, debug_span, warn};

pub use export::{parse_network, ExportConfig, Squash};

use handle::HandleCodec;
use nfs::Reply;
use open_files::OpenFiles;

const NFS_PROGRAM: u32 = 100_003;
const MOUNT_PROGRAM: u32 = 100_005;
const VERSION_3: u32 = 3;
const VERSION_4: u32 = 4;

/// Calls of one connection served at once.
const IN_FLIGHT_PER_CONNECTION: usize = 32;
/// Replies gathered into one write at most.
const REPLIES_PER_WRITE: usize = 64;
/// A file's handle is closed (and its writes committed) after this long without a call.
const IDLE_CLOSE: Duration = Duration::from_secs(5);

pub struct Gateway {
    fs: Arc<FileSystem>,
    export: ExportConfig,
    handles: HandleCodec,
    open: OpenFiles,
    buffers: rpc::RecordBuffers,
    /// NFSv4's clients, sessions and opens.
    v4: v4::State,
    /// Changes whenever UNSTABLE writes may have been lost (at start, and when committing an
    /// idle file fails), so that clients send them again.
    verifier: AtomicU64,
}

impl Gateway {
    pub fn new(fs: Arc<FileSystem>, export: ExportConfig) -> Arc<Self> {
        let boot = SystemTime::now().duration_since(UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64);
        Arc::new(Gateway {
            handles: HandleCodec::new(&fs.meta().superblock().uuid),
            open: OpenFiles::new(fs.clone()),
            buffers: rpc::RecordBuffers::default(),
            v4: v4::State::new(export.lease),
            fs,
            export,
            verifier: AtomicU64::new(boot),
        })
    }

    /// Unstable writes may have been lost (a commit at close failed): a new write verifier
    /// makes clients send them again.
    fn writes_lost(&self) {
        warn!("clients will resend their unstable writes");
        self.verifier.fetch_add(1, Ordering::Relaxed);
    }

    fn write_verifier(&self) -> writeverf3 {
        writeverf3(self.verifier.load(Ordering::Relaxed).to_be_bytes())
    }

    /// Serves NFS and MOUNT calls from `listener` until the task is dropped.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) -> io::Result<()> {
        tokio::spawn(self.clone().close_idle_files());
        loop {
            let (stream, peer) = listener.accept().await?;
            let _ = stream.set_nodelay(true);
            tokio::spawn(self.clone().connection(stream, peer));
        }
    }

    /// Commits and closes every open file (at shutdown).
    pub fn close_all(&self) -> FsResult<()> {
        match self.open.close_idle(Duration::ZERO).into_iter().next() {
            Some((_, e)) => Err(e),
            None => Ok(()),
        }
    }

    async fn close_idle_files(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            let gateway = self.clone();
            let failed = tokio::task::spawn_blocking(move || {
                // NFSv4 clients that stopped renewing lose their opens and locks; then idle
                // handles close.
                gateway.let_go(gateway.v4.expire());
                gateway.release_locks(gateway.v4.end_grace_if_due());
                gateway.open.close_idle(IDLE_CLOSE)
            })
            .await;
            for (ino, e) in failed.unwrap_or_default() {
                warn!(ino, "committing an idle file failed ({e})");
                self.writes_lost();
            }
        }
    }

    async fn connection(self: Arc<Self>, stream: TcpStream, peer: SocketAddr) {
        let allowed = self.export.allows(peer.ip());
        if !allowed {
            warn!(%peer, "refusing a client outside --allow");
        }
        let (mut reader, mut writer) = stream.into_split();
        let (replies, mut outgoing) = mpsc::unbounded_channel::<rpc::Record>();
        let writing = tokio::spawn(async move {
            let mut ready = Vec::new();
            // Whatever replies are ready go out together, in one writev where they fit.
            while outgoing.recv_many(&mut ready, REPLIES_PER_WRITE).await > 0 {
                if rpc::send(&mut writer, &ready).await.is_err() {
                    return;
                }
                ready.clear();
            }
        });
        let slots = Arc::new(Semaphore::new(IN_FLIGHT_PER_CONNECTION));
        let buffers = &self.buffers;
        loop {
            let mut record = buffers.take();
            match rpc::read_record(&mut reader, &mut record).await {
                Ok(()) => {}
                Err(rpc::RecordError::Closed) => break,
                // A client that goes away mid-record or resets its connection is a client
                // going away, not a problem of the gateway's.
                Err(rpc::RecordError::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::ConnectionReset
                            | std::io::ErrorKind::UnexpectedEof
                            | std::io::ErrorKind::BrokenPipe
                    ) =>
                {
                    debug!(%peer, "client disconnected: {e}");
                    break;
                }
                Err(e) => {
                    warn!(%peer, "dropping the connection: {e}");
                    break;
                }
            };
            let call = match rpc::decode_call(&record) {
                Ok(call) => call,
                Err(rpc::BadCall::Reply(reply)) => {
                    buffers.give(record);
                    let _ = replies.send(reply);
                    continue;
                }
                Err(rpc::BadCall::Garbage) => {
                    warn!(%peer, "dropping the connection: a record that is not an RPC call");
                    break;
                }
            };
            let permit = slots.clone().acquire_owned().await.expect("never closed");
            let (gateway, replies) = (self.clone(), replies.clone());
            tokio::task::spawn_blocking(move || {
                let reply = gateway.answer(&call, &record[call.args_at..], allowed);
                gateway.buffers.give(record);
                let _ = replies.send(reply);
                drop(permit);
            });
        }
        drop(replies);
        let _ = writing.await;
    }

    /// The reply to one call.
    fn answer(&self, call: &rpc::Call, mut args: &[u8], allowed: bool) -> rpc::Record {
        let _span = debug_span!("nfs", prog = call.prog, proc = call.proc, xid = call.xid).entered();
        let who = self.export.identity(call.auth.as_ref());
        let reply = match (call.prog, call.vers) {
            (MOUNT_PROGRAM, VERSION_3) => self.mount_call(call.proc, &mut args, allowed, &who),
            (NFS_PROGRAM, VERSION_3) if !allowed && call.proc != 0 => {
                return rpc::denied(call.xid, auth_stat::AUTH_TOOWEAK)
            }
            (NFS_PROGRAM, VERSION_3) => self.nfs_call(call.proc, &mut args, &who),
            (NFS_PROGRAM, VERSION_4) if !allowed && call.proc != 0 => {
                return rpc::denied(call.xid, auth_stat::AUTH_TOOWEAK)
            }
            (NFS_PROGRAM, VERSION_4) => self.nfs4_call(call.proc, args, &who),
            (NFS_PROGRAM, _) => {
                let mismatch = accept_stat_data::PROG_MISMATCH { low: VERSION_3, high: VERSION_4 };
                return rpc::failure(call.xid, mismatch);
            }
            (MOUNT_PROGRAM, _) => {
                let mismatch = accept_stat_data::PROG_MISMATCH { low: VERSION_3, high: VERSION_3 };
                return rpc::failure(call.xid, mismatch);
            }
            _ => return rpc::failure(call.xid, accept_stat_data::PROG_UNAVAIL),
        };
        match reply {
            Some(Reply::Packed(record)) => rpc::success(call.xid, record),
            Some(Reply::NoSuchProcedure) => rpc::failure(call.xid, accept_stat_data::PROC_UNAVAIL),
            None => {
                debug!("arguments that do not decode");
                rpc::failure(call.xid, accept_stat_data::GARBAGE_ARGS)
            }
        }
    }
}
