//! [`RemoteStore`]: the [`MetaStore`] of a client of the metadata service.
//!
//! Callers block (they are FUSE workers or NFS tasks' blocking sections); the connection lives
//! on a small runtime of its own. Each call gets an id, goes out through the writer task and
//! waits for the reader task to hand back the reply with that id, so many calls share one
//! connection at once. A lost connection fails every waiting call, and each retries on the next
//! connection: forever with backoff (`hard`, the default, like an NFS hard mount) or until its
//! deadline (`soft`), then EIO.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tracing::{info, warn};

use super::tls::TlsClient;
use super::wire::{self, Hello, Request, SessionRequest, Welcome};
use crate::audit::Audit;
use crate::block::{Block, Compaction};
use crate::error::{MetaError, MetaResult};
use crate::locks::{LockRecord, LockRequest};
use crate::session::{ClientInfo, SessionId, SessionRecord};
use crate::store::{
    BlockCommit, ChunkProtection, Committed, Created, MetaStore, NewNode, Rename, Unlinked, XattrMode,
};
use crate::throughput::{Lease, LeaseRequest, ThroughputSettings, ThroughputStatus};
use crate::types::{Attr, ChunkHash, DirEntry, Ino, SetAttr, Superblock, Timestamp, Usage};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A call with no reply for this long is taken to have met a hung connection: the connection
/// is dropped and the call retried on a new one.
const HUNG_CALL: Duration = Duration::from_secs(60);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// What a call does while the service is away.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retry {
    /// Wait and retry until the service answers.
    Hard,
    /// Give up with EIO after this long.
    Soft(Duration),
}

pub struct ClientOptions {
    pub token: Option<Vec<u8>>,
    pub tls: Option<TlsClient>,
    /// Register a session for this client (mounts and gateways); `None` for short-lived tools.
    pub client: Option<ClientInfo>,
    pub retry: Retry,
}

pub struct RemoteStore {
    client: Arc<Client>,
    superblock: Superblock,
}

struct Client {
    /// `host:port`.
    addr: String,
    options: ClientOptions,
    runtime: tokio::runtime::Runtime,
    conn: Mutex<Option<Arc<Conn>>>,
    next_id: AtomicU64,
    session: Mutex<Option<SessionId>>,
    lease: Mutex<Duration>,
    /// How long the service defers durability of its commits, as its last welcome said.
    deferred: Mutex<Option<Duration>>,
    /// Set while the service is unreachable, so that an outage is logged once.
    outage: AtomicBool,
}

/// One connection: the writer's queue and the calls waiting for replies.
struct Conn {
    outgoing: mpsc::UnboundedSender<(u64, Vec<u8>)>,
    pending: Mutex<Pending>,
    tasks: Mutex<Vec<AbortHandle>>,
}

struct Pending {
    alive: bool,
    waiting: HashMap<u64, SyncSender<Vec<u8>>>,
}

/// Why a call did not get a reply on this attempt.
enum Lost {
    /// The connection failed or could not be made: retry.
    Connection(String),
    /// The service refused us (wrong token, other version): retrying may not help.
    Refused(String),
}

impl Conn {
    /// Fails every waiting call (they retry) and closes the socket.
    fn kill(&self) {
        let mut pending = self.pending.lock().unwrap();
        pending.alive = false;
        pending.waiting.clear();
        drop(pending);
        for task in self.tasks.lock().unwrap().drain(..) {
            task.abort();
        }
    }

    fn alive(&self) -> bool {
        self.pending.lock().unwrap().alive
    }
}

impl RemoteStore {
    /// Connects to the service at `addr` (`host:port`). Fails at once if it cannot be reached
    /// or refuses us, or if it holds no file system yet.
    pub fn connect(addr: &str, options: ClientOptions) -> MetaResult<Self> {
        let (client, superblock) = Client::start(addr, options)?;
        let superblock = superblock.ok_or_else(|| {
            MetaError::Format(format!(
                "the metadata service at {addr} holds no file system yet: run `elasticfs format --meta tcp://{addr}`"
            ))
        })?;
        if client.session.lock().unwrap().is_some() {
            spawn_heartbeat(&client);
        }
        Ok(RemoteStore { client, superblock })
    }

    /// Formats the store of the service at `addr`.
    pub fn format(
        addr: &str,
        options: ClientOptions,
        superblock: &Superblock,
        uid: u32,
        gid: u32,
    ) -> MetaResult<()> {
        let (client, _) = Client::start(addr, options)?;
        client.call(&Request::Format { superblock: superblock.clone(), root_uid: uid, root_gid: gid })
    }

    /// This client's session, if it registered one.
    pub fn session_id(&self) -> Option<SessionId> {
        *self.client.session.lock().unwrap()
    }

    fn call<T: DeserializeOwned>(&self, request: &Request) -> MetaResult<T> {
        self.client.call(request)
    }
}

impl RemoteStore {
    /// Ends the session at the service (its locks and orphans go now), once.
    fn end_session(&self, patience: Duration) -> MetaResult<()> {
        if self.session_id().is_none() {
            return Ok(());
        }
        let ended = self.client.call_with(&Request::EndSession, Retry::Soft(patience));
        *self.client.session.lock().unwrap() = None;
        ended
    }
}

impl Drop for RemoteStore {
    fn drop(&mut self) {
        // A clean end releases our locks now rather than after the lease; if the service is
        // away, the lease does it.
        if let Err(e) = self.end_session(Duration::from_secs(2)) {
            warn!("ending the session: {e}");
        }
        if let Some(conn) = self.client.conn.lock().unwrap().take() {
            conn.kill();
        }
    }
}

impl Client {
    fn start(addr: &str, options: ClientOptions) -> MetaResult<(Arc<Self>, Option<Superblock>)> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("elasticfs-meta")
            .enable_all()
            .build()
            .map_err(|e| MetaError::store(format!("starting the metadata client runtime: {e}")))?;
        let client = Arc::new(Client {
            addr: addr.to_string(),
            options,
            runtime,
            conn: Mutex::new(None),
            next_id: AtomicU64::new(1),
            session: Mutex::new(None),
            lease: Mutex::new(Duration::from_secs(30)),
            deferred: Mutex::new(None),
            outage: AtomicBool::new(false),
        });
        let superblock = match client.reconnect(CONNECT_TIMEOUT) {
            Ok(superblock) => superblock,
            Err(Lost::Connection(e)) => {
                return Err(MetaError::Unavailable(format!(
                "cannot reach the metadata service at {addr}: {e} (is `elasticfs meta serve` running there?)"
            )))
            }
            Err(Lost::Refused(reason)) => {
                return Err(MetaError::Unavailable(format!(
                    "the metadata service at {addr} refused this client: {reason}"
                )))
            }
        };
        Ok((client, superblock))
    }

    fn call<T: DeserializeOwned>(&self, request: &Request) -> MetaResult<T> {
        self.call_with(request, self.options.retry)
    }

    fn call_with<T: DeserializeOwned>(&self, request: &Request, retry: Retry) -> MetaResult<T> {
        let payload = postcard::to_allocvec(request).map_err(MetaError::store)?;
        let deadline = match retry {
            Retry::Hard => None,
            Retry::Soft(timeout) => Some(Instant::now() + timeout),
        };
        let mut backoff = Duration::from_millis(50);
        loop {
            let lost = match self.attempt(&payload, deadline) {
                Ok(reply) => {
                    if self.outage.swap(false, Ordering::Relaxed) {
                        info!(service = self.addr, "the metadata service is back");
                    }
                    return postcard::from_bytes::<MetaResult<T>>(&reply).unwrap_or_else(|e| {
                        Err(MetaError::Store(format!("malformed reply from the metadata service: {e}")))
                    });
                }
                Err(Lost::Connection(e) | Lost::Refused(e)) => e,
            };
            if !self.outage.swap(true, Ordering::Relaxed) {
                warn!(service = self.addr, "the metadata service is unreachable ({lost}); retrying");
            }
            if deadline.is_some_and(|d| Instant::now() + backoff >= d) {
                return Err(MetaError::Unavailable(format!(
                    "the metadata service at {} did not answer in time (soft mount): {lost}",
                    self.addr
                )));
            }
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// One try of one call.
    fn attempt(&self, payload: &[u8], deadline: Option<Instant>) -> Result<Vec<u8>, Lost> {
        let remaining = || deadline.map(|d| d.saturating_duration_since(Instant::now()));
        let conn = self.connection(remaining().unwrap_or(CONNECT_TIMEOUT).min(CONNECT_TIMEOUT))?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = sync_channel(1);
        {
            let mut pending = conn.pending.lock().unwrap();
            if !pending.alive {
                return Err(Lost::Connection("connection lost".into()));
            }
            pending.waiting.insert(id, tx);
        }
        if conn.outgoing.send((id, payload.to_vec())).is_err() {
            conn.kill();
            return Err(Lost::Connection("connection lost".into()));
        }
        let wait = remaining().unwrap_or(HUNG_CALL).min(HUNG_CALL);
        match rx.recv_timeout(wait) {
            Ok(reply) => Ok(reply),
            Err(RecvTimeoutError::Disconnected) => Err(Lost::Connection("connection lost".into())),
            Err(RecvTimeoutError::Timeout) => {
                conn.pending.lock().unwrap().waiting.remove(&id);
                if deadline.is_none() {
                    // Hard: a call this slow means a hung connection; start a new one.
                    conn.kill();
                }
                Err(Lost::Connection(format!("no reply within {wait:?}")))
            }
        }
    }

    /// The live connection, making a new one if there is none.
    fn connection(&self, timeout: Duration) -> Result<Arc<Conn>, Lost> {
        if let Some(conn) = self.conn.lock().unwrap().as_ref().filter(|c| c.alive()) {
            return Ok(conn.clone());
        }
        self.reconnect(timeout)?;
        self.conn.lock().unwrap().clone().ok_or_else(|| Lost::Connection("connection lost".into()))
    }

    /// Connects and says hello (resuming our session, if we have one). One caller at a time
    /// does this; the others find its connection when they get the lock.
    fn reconnect(&self, timeout: Duration) -> Result<Option<Superblock>, Lost> {
        let mut slot = self.conn.lock().unwrap();
        if slot.as_ref().is_some_and(|c| c.alive()) {
            return Ok(None);
        }
        let previous = *self.session.lock().unwrap();
        let session = match (&self.options.client, previous) {
            (None, _) => SessionRequest::None,
            (Some(info), None) => SessionRequest::New(info.clone()),
            (Some(info), Some(id)) => SessionRequest::Resume(id, info.clone()),
        };
        let hello = Hello { token: self.options.token.clone(), session };
        let (tx, rx) = sync_channel(1);
        let addr = self.addr.clone();
        let tls = self.options.tls.as_ref().map(|t| (t.connector.clone(), t.server_name.clone()));
        self.runtime.spawn(async move {
            let result = tokio::time::timeout(timeout, open(&addr, tls, &hello)).await;
            let _ = tx.send(
                result.unwrap_or_else(|_| Err(Lost::Connection(format!("no answer within {timeout:?}")))),
            );
        });
        let (conn, welcome) = rx.recv().map_err(|_| Lost::Connection("client runtime stopped".into()))??;
        let Welcome::Accepted { superblock, session, resumed, lease_ms, deferred_commit_ms } = welcome else {
            unreachable!("open returns refusals as errors");
        };
        if let (Some(old), Some(new)) = (previous, session) {
            if !resumed {
                warn!(
                    old,
                    new, "the metadata service had ended this client's session (no heartbeat within its lease): locks held before are lost"
                );
            }
        }
        *self.session.lock().unwrap() = session;
        *self.lease.lock().unwrap() = Duration::from_millis(lease_ms.max(100));
        *self.deferred.lock().unwrap() = deferred_commit_ms.map(Duration::from_millis);
        *slot = Some(conn);
        Ok(superblock)
    }

    /// Drops the connection, so that the next call says hello again.
    fn disconnect(&self) {
        if let Some(conn) = self.conn.lock().unwrap().take() {
            conn.kill();
        }
    }
}

trait Stream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Stream for T {}

/// Opens a connection, says hello, and starts its reader and writer tasks.
async fn open(
    addr: &str,
    tls: Option<(tokio_rustls::TlsConnector, rustls::pki_types::ServerName<'static>)>,
    hello: &Hello,
) -> Result<(Arc<Conn>, Welcome), Lost> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| Lost::Connection(e.to_string()))?;
    let _ = tcp.set_nodelay(true);
    let stream: Box<dyn Stream> = match tls {
        Some((connector, name)) => Box::new(
            connector.connect(name, tcp).await.map_err(|e| Lost::Refused(format!("TLS handshake: {e}")))?,
        ),
        None => Box::new(tcp),
    };
    let (mut reader, writer) = tokio::io::split(stream);
    let mut writer = BufWriter::new(writer);
    let io = |e: std::io::Error| Lost::Connection(e.to_string());
    wire::write_frame(&mut writer, 0, &wire::encode_hello(hello)).await.map_err(io)?;
    writer.flush().await.map_err(io)?;
    let (_, payload) =
        wire::read_frame(&mut reader, 1 << 20).await.map_err(|e| Lost::Connection(e.to_string()))?;
    let welcome: Welcome = postcard::from_bytes(&payload).map_err(|e| {
        Lost::Refused(format!(
            "the service's answer is not understood ({e}): is it the same elasticfs release?"
        ))
    })?;
    if let Welcome::Refused(reason) = welcome {
        return Err(Lost::Refused(reason));
    }
    let (outgoing, queue) = mpsc::unbounded_channel();
    let conn = Arc::new(Conn {
        outgoing,
        pending: Mutex::new(Pending { alive: true, waiting: HashMap::new() }),
        tasks: Mutex::new(Vec::new()),
    });
    let writing = tokio::spawn(write_requests(writer, queue, conn.clone()));
    let reading = tokio::spawn(read_replies(reader, conn.clone()));
    conn.tasks.lock().unwrap().extend([writing.abort_handle(), reading.abort_handle()]);
    Ok((conn, welcome))
}

async fn write_requests<W: AsyncWrite + Unpin>(
    mut writer: W,
    mut queue: mpsc::UnboundedReceiver<(u64, Vec<u8>)>,
    conn: Arc<Conn>,
) {
    while let Some((id, payload)) = queue.recv().await {
        let mut result = wire::write_frame(&mut writer, id, &payload).await;
        while let (Ok(()), Ok((id, payload))) = (&result, queue.try_recv()) {
            result = wire::write_frame(&mut writer, id, &payload).await;
        }
        if result.is_err() || writer.flush().await.is_err() {
            break;
        }
    }
    conn.kill();
}

async fn read_replies<R: AsyncRead + Unpin>(mut reader: R, conn: Arc<Conn>) {
    while let Ok((id, reply)) = wire::read_frame(&mut reader, wire::MAX_REPLY_FRAME).await {
        if let Some(waiter) = conn.pending.lock().unwrap().waiting.remove(&id) {
            let _ = waiter.try_send(reply);
        }
    }
    conn.kill();
}

/// Heartbeats at a third of the lease while the client lives.
fn spawn_heartbeat(client: &Arc<Client>) {
    let weak: Weak<Client> = Arc::downgrade(client);
    std::thread::Builder::new()
        .name("elasticfs-heartbeat".into())
        .spawn(move || loop {
            let Some(client) = weak.upgrade() else { return };
            let period = *client.lease.lock().unwrap() / 3;
            if client.session.lock().unwrap().is_none() {
                return;
            }
            match client.call::<()>(&Request::Heartbeat) {
                // The service ended our session: say hello again for a new one.
                Err(MetaError::SessionExpired) => client.disconnect(),
                Err(e) => warn!("heartbeat: {e}"),
                Ok(()) => {}
            }
            drop(client);
            std::thread::sleep(period);
        })
        .expect("spawning the heartbeat thread");
}

impl MetaStore for RemoteStore {
    fn superblock(&self) -> &Superblock {
        &self.superblock
    }

    fn end_own_session(&self) -> MetaResult<()> {
        self.end_session(Duration::from_secs(10))
    }

    fn sync_all(&self) -> MetaResult<()> {
        match self.deferred_commits() {
            // The service answers every change durably: nothing to wait for.
            None => Ok(()),
            Some(_) => self.call(&Request::SyncAll),
        }
    }

    fn deferred_commits(&self) -> Option<Duration> {
        *self.client.deferred.lock().unwrap()
    }

    fn getattr(&self, ino: Ino) -> MetaResult<Attr> {
        self.call(&Request::GetAttr(ino))
    }

    fn lookup(&self, parent: Ino, name: &[u8]) -> MetaResult<Attr> {
        self.call(&Request::Lookup(parent, name.to_vec()))
    }

    fn create_in_dir(&self, node: &NewNode) -> MetaResult<Created> {
        self.call(&Request::Create(node.clone()))
    }

    fn link(&self, ino: Ino, new_parent: Ino, new_name: &[u8]) -> MetaResult<Attr> {
        self.call(&Request::Link(ino, new_parent, new_name.to_vec()))
    }

    fn unlink(&self, parent: Ino, name: &[u8], closed: Option<Ino>) -> MetaResult<Unlinked> {
        self.call(&Request::Unlink(parent, name.to_vec(), closed))
    }

    fn rmdir(&self, parent: Ino, name: &[u8]) -> MetaResult<()> {
        self.call(&Request::Rmdir(parent, name.to_vec()))
    }

    fn rename(&self, rename: &Rename) -> MetaResult<Option<Unlinked>> {
        self.call(&Request::Rename(rename.clone()))
    }

    fn readdir(&self, dir: Ino, after: u64, limit: usize) -> MetaResult<Vec<DirEntry>> {
        self.call(&Request::Readdir(dir, after, limit.min(u32::MAX as usize) as u32))
    }

    fn readlink(&self, ino: Ino) -> MetaResult<Vec<u8>> {
        self.call(&Request::Readlink(ino))
    }

    fn setattr(&self, ino: Ino, changes: &SetAttr) -> MetaResult<Attr> {
        self.call(&Request::SetAttr(ino, changes.clone()))
    }

    fn blocks(&self, ino: Ino, first: u64, count: u64) -> MetaResult<Vec<(u64, Block)>> {
        self.call(&Request::Blocks(ino, first, count))
    }

    fn commit_blocks(&self, ino: Ino, commit: &BlockCommit) -> MetaResult<Committed> {
        self.call(&Request::CommitBlocks(ino, commit.clone()))
    }

    fn compact_block(&self, compaction: &Compaction) -> MetaResult<bool> {
        self.call(&Request::CompactBlock(compaction.clone()))
    }

    fn purge(&self, ino: Ino) -> MetaResult<()> {
        self.call(&Request::Purge(ino))
    }

    fn orphans(&self) -> MetaResult<Vec<Ino>> {
        self.call(&Request::Orphans)
    }

    fn set_xattr(&self, ino: Ino, name: &[u8], value: &[u8], mode: XattrMode) -> MetaResult<()> {
        self.call(&Request::SetXattr(ino, name.to_vec(), value.to_vec(), mode))
    }

    fn get_xattr(&self, ino: Ino, name: &[u8]) -> MetaResult<Vec<u8>> {
        self.call(&Request::GetXattr(ino, name.to_vec()))
    }

    fn list_xattr(&self, ino: Ino) -> MetaResult<Vec<Vec<u8>>> {
        self.call(&Request::ListXattr(ino))
    }

    fn remove_xattr(&self, ino: Ino, name: &[u8]) -> MetaResult<()> {
        self.call(&Request::RemoveXattr(ino, name.to_vec()))
    }

    fn usage(&self) -> MetaResult<Usage> {
        self.call(&Request::Usage)
    }

    fn referenced_chunks(&self) -> MetaResult<Vec<(ChunkHash, u64)>> {
        self.call(&Request::ReferencedChunks)
    }

    fn unreferenced_chunks(&self) -> MetaResult<Vec<(ChunkHash, Timestamp)>> {
        self.call(&Request::UnreferencedChunks)
    }

    fn audit(&self) -> MetaResult<Audit> {
        self.call(&Request::Audit)
    }

    fn protect_chunk(&self, hash: &ChunkHash) -> MetaResult<ChunkProtection> {
        self.call(&Request::ProtectChunk(*hash))
    }

    fn condemn_chunks(
        &self,
        hashes: &[ChunkHash],
        unreferenced_before: Timestamp,
    ) -> MetaResult<Vec<ChunkHash>> {
        self.call(&Request::CondemnChunks(hashes.to_vec(), unreferenced_before))
    }

    fn condemned_chunks(&self) -> MetaResult<Vec<ChunkHash>> {
        self.call(&Request::CondemnedChunks)
    }

    fn forget_condemned(&self, hashes: &[ChunkHash]) -> MetaResult<()> {
        self.call(&Request::ForgetCondemned(hashes.to_vec()))
    }

    fn lease_throughput(&self, request: &LeaseRequest) -> MetaResult<Lease> {
        self.call(&Request::LeaseThroughput(*request))
    }

    fn throughput(&self) -> MetaResult<ThroughputStatus> {
        self.call(&Request::Throughput)
    }

    fn set_throughput(&self, settings: &ThroughputSettings) -> MetaResult<()> {
        self.call(&Request::SetThroughput(*settings))
    }

    fn sessions(&self) -> MetaResult<Vec<SessionRecord>> {
        self.call(&Request::Sessions)
    }

    fn set_lock(&self, ino: Ino, req: &LockRequest) -> MetaResult<()> {
        self.call(&Request::SetLock(ino, *req))
    }

    fn get_lock(&self, ino: Ino, req: &LockRequest) -> MetaResult<Option<LockRecord>> {
        self.call(&Request::GetLock(ino, *req))
    }

    fn release_locks(&self, ino: Ino, owner: u64) -> MetaResult<()> {
        self.call(&Request::ReleaseLocks(ino, owner))
    }

    fn adopt_session(&self, from: SessionId) -> MetaResult<Vec<(Ino, u64)>> {
        self.call(&Request::AdoptSession(from))
    }
}
