//! `elasticfs meta serve`: owns the sled store and serves it to every client.
//!
//! Each connection has a reader (this task) and a writer task. Every request runs as its own
//! blocking task, so one connection can have many in flight and concurrent mutations share
//! one group-committed flush. A reply is sent only once its mutation is durable.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tracing::{debug, info, info_span, warn, Instrument};

use super::wire::{self, Request, SessionRequest, Welcome};
use crate::engine::SledStore;
use crate::error::{MetaError, MetaResult};
use crate::session::{ClientInfo, SessionId};
use crate::store::MetaStore;

/// Requests one connection may have running at once; more wait in the socket.
const IN_FLIGHT_PER_CONNECTION: usize = 256;
/// A client must say hello this soon after connecting.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

pub struct ServerConfig {
    pub db: PathBuf,
    /// Clients must present this token (compared in constant time).
    pub token: Option<Vec<u8>>,
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// A session without a heartbeat for this long is ended.
    pub lease: Duration,
    /// `meta serve --commit`: answer changes once applied and make them durable this often
    /// (and when a client asks, at its fsync); `None`: durable before the answer.
    pub commit: Option<Duration>,
}

pub struct MetaServer {
    config: ServerConfig,
    token: Option<blake3::Hash>,
    store: OnceLock<SledStore>,
    /// When each live session last showed a sign of life.
    last_seen: Mutex<HashMap<SessionId, Instant>>,
}

impl MetaServer {
    fn with_commit_mode(&self, store: SledStore) -> SledStore {
        if let Some(every) = self.config.commit {
            store.defer_commits(every);
        }
        store
    }

    /// Opens the store (if it is formatted yet) and takes over its sessions, each of which gets
    /// one lease to reconnect.
    pub fn open(config: ServerConfig) -> MetaResult<Arc<Self>> {
        let server = MetaServer {
            token: config.token.as_deref().map(blake3::hash),
            store: OnceLock::new(),
            last_seen: Mutex::new(HashMap::new()),
            config,
        };
        if SledStore::exists(&server.config.db) {
            let store = server.with_commit_mode(SledStore::open(&server.config.db)?);
            let now = Instant::now();
            let mut seen = server.last_seen.lock().unwrap();
            for session in store.sessions()? {
                seen.insert(session.id, now);
            }
            drop(seen);
            let _ = server.store.set(store);
        }
        Ok(Arc::new(server))
    }

    /// The store, once it is formatted (for the service's own background work).
    pub fn store(&self) -> Option<SledStore> {
        self.store.get().cloned()
    }

    /// Serves connections from `listener` until the process ends.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        tokio::spawn(self.clone().reap_expired_sessions());
        loop {
            match listener.accept().await {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let server = self.clone();
                    tokio::spawn(
                        async move { server.accept(stream, peer).await }
                            .instrument(info_span!("client", %peer)),
                    );
                }
                Err(e) => {
                    // Out of file descriptors and the like: wait rather than spin.
                    warn!("accepting a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    async fn accept(self: Arc<Self>, stream: TcpStream, peer: SocketAddr) {
        match self.config.tls.clone() {
            Some(tls) => match tls.accept(stream).await {
                Ok(stream) => self.connection(stream, peer).await,
                Err(e) => warn!("TLS handshake with {peer} failed: {e}"),
            },
            None => self.connection(stream, peer).await,
        }
    }

    async fn connection<S: AsyncRead + AsyncWrite + Send + 'static>(
        self: Arc<Self>,
        stream: S,
        peer: SocketAddr,
    ) {
        let (mut reader, writer) = tokio::io::split(stream);
        let mut writer = BufWriter::new(writer);
        let session = match self.handshake(&mut reader, &mut writer, peer).await {
            Ok(session) => session,
            Err(reason) => {
                debug!("connection closed during the handshake: {reason}");
                return;
            }
        };
        let (replies, outgoing) = mpsc::unbounded_channel();
        let writing = tokio::spawn(write_replies(writer, outgoing));
        let slots = Arc::new(Semaphore::new(IN_FLIGHT_PER_CONNECTION));
        loop {
            let (id, payload) = match wire::read_frame(&mut reader, wire::MAX_REQUEST_FRAME).await {
                Ok(frame) => frame,
                Err(wire::FrameError::Closed) => break,
                Err(e) => {
                    warn!("dropping the connection from {peer}: {e}");
                    break;
                }
            };
            let request: Request = match postcard::from_bytes(&payload) {
                Ok(request) => request,
                Err(e) => {
                    warn!("malformed request from {peer}: {e}");
                    let _ =
                        replies.send((id, encode::<()>(Err(MetaError::Invalid("malformed request".into())))));
                    continue;
                }
            };
            if let Request::Heartbeat = request {
                // Answered here: a heartbeat must not wait behind the blocking pool.
                let _ = replies.send((id, self.heartbeat(session)));
                continue;
            }
            if request.is_point_read() {
                // A point read is a lookup in sled's page cache: answering it here is cheaper
                // than the hand-off to the blocking pool and back (a third of a stat's round trip).
                let _ = replies.send((id, self.dispatch(session, request)));
                continue;
            }
            let permit = slots.clone().acquire_owned().await.expect("never closed");
            let (server, replies) = (self.clone(), replies.clone());
            tokio::task::spawn_blocking(move || {
                let reply = server.dispatch(session, request);
                let _ = replies.send((id, reply));
                drop(permit);
            });
        }
        drop(replies);
        let _ = writing.await;
    }

    /// Reads and answers the hello; returns the connection's session.
    async fn handshake<R, W>(
        &self,
        reader: &mut R,
        writer: &mut W,
        peer: SocketAddr,
    ) -> Result<Option<SessionId>, String>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let frame = tokio::time::timeout(HELLO_TIMEOUT, wire::read_frame(reader, 64 << 10))
            .await
            .map_err(|_| "no hello within 10 s".to_string())?;
        let (id, payload) = frame.map_err(|e| e.to_string())?;
        let welcome = match wire::decode_hello(&payload) {
            Err(reason) => {
                warn!("refused {peer}: {reason}");
                Welcome::Refused(reason)
            }
            Ok(hello) if !self.token_matches(hello.token.as_deref()) => {
                warn!("refused {peer}: wrong or missing token");
                Welcome::Refused(
                    "wrong or missing token: give the client the service's token with --token-file \
                     or ELASTICFS_TOKEN_FILE"
                        .into(),
                )
            }
            Ok(hello) => {
                let store = self.store.get().cloned();
                let request = hello.session;
                let started = tokio::task::spawn_blocking(move || start_session(store, request))
                    .await
                    .map_err(|e| e.to_string())?;
                match started {
                    Ok((session, resumed)) => {
                        if let Some(id) = session {
                            self.touch_or_insert(id);
                        }
                        info!(?session, resumed, "client connected");
                        Welcome::Accepted {
                            superblock: self.store.get().map(|s| s.superblock().clone()),
                            session,
                            resumed,
                            lease_ms: self.config.lease.as_millis() as u64,
                            deferred_commit_ms: self
                                .store
                                .get()
                                .and_then(|s| s.deferred_commits())
                                .map(|every| every.as_millis() as u64),
                        }
                    }
                    Err(e) => Welcome::Refused(e.to_string()),
                }
            }
        };
        let payload = postcard::to_allocvec(&welcome).expect("a welcome always encodes");
        wire::write_frame(writer, id, &payload).await.map_err(|e| e.to_string())?;
        writer.flush().await.map_err(|e| e.to_string())?;
        match welcome {
            Welcome::Accepted { session, .. } => Ok(session),
            Welcome::Refused(reason) => Err(format!("refused: {reason}")),
        }
    }

    fn token_matches(&self, offered: Option<&[u8]>) -> bool {
        match (&self.token, offered) {
            (None, _) => true,
            // blake3::Hash compares in constant time, and hashing first hides the length.
            (Some(expected), Some(offered)) => *expected == blake3::hash(offered),
            (Some(_), None) => false,
        }
    }

    /// The reply to a heartbeat: fine for a session-less tool, an error for an expired session.
    fn heartbeat(&self, session: Option<SessionId>) -> Vec<u8> {
        match session {
            Some(id) if !self.touch(id) => encode::<()>(Err(MetaError::SessionExpired)),
            _ => encode(Ok(())),
        }
    }

    /// Records a heartbeat; false if the session has expired.
    fn touch(&self, session: SessionId) -> bool {
        match self.last_seen.lock().unwrap().get_mut(&session) {
            Some(seen) => {
                *seen = Instant::now();
                true
            }
            None => false,
        }
    }

    fn touch_or_insert(&self, session: SessionId) {
        self.last_seen.lock().unwrap().insert(session, Instant::now());
    }

    /// Runs one request against the store and encodes its reply.
    fn dispatch(&self, session: Option<SessionId>, request: Request) -> Vec<u8> {
        if let Request::Format { superblock, root_uid, root_gid } = request {
            return encode(self.format(&superblock, root_uid, root_gid));
        }
        let Some(store) = self.store.get() else {
            return encode::<()>(Err(MetaError::Format(format!(
                "the metadata service's store {} holds no file system yet: run `elasticfs format --meta tcp://…`",
                self.config.db.display()
            ))));
        };
        // A tool's connection has no session: it acts as the store itself.
        let store = match session {
            Some(id) => store.session(id),
            None => store.clone(),
        };
        match request {
            Request::Heartbeat => self.heartbeat(session),
            Request::EndSession => {
                let ended = match session {
                    Some(id) => {
                        self.last_seen.lock().unwrap().remove(&id);
                        store.end_session(id)
                    }
                    None => Ok(()),
                };
                encode(ended)
            }
            Request::Format { .. } => unreachable!("handled above"),
            Request::GetAttr(ino) => encode(store.getattr(ino)),
            Request::Lookup(parent, name) => encode(store.lookup(parent, &name)),
            Request::Create(node) => encode(store.create_in_dir(&node)),
            Request::Link(ino, parent, name) => encode(store.link(ino, parent, &name)),
            Request::Unlink(parent, name, closed) => encode(store.unlink(parent, &name, closed)),
            Request::Rmdir(parent, name) => encode(store.rmdir(parent, &name)),
            Request::Rename(r) => encode(store.rename(&r)),
            Request::Readdir(dir, after, limit) => encode(store.readdir(dir, after, limit as usize)),
            Request::Readlink(ino) => encode(store.readlink(ino)),
            Request::SetAttr(ino, changes) => encode(store.setattr(ino, &changes)),
            Request::Blocks(ino, first, count) => encode(store.blocks(ino, first, count)),
            Request::CommitBlocks(ino, commit) => encode(store.commit_blocks(ino, &commit)),
            Request::CompactBlock(compaction) => encode(store.compact_block(&compaction)),
            Request::Purge(ino) => encode(store.purge(ino)),
            Request::Orphans => encode(store.orphans()),
            Request::SetXattr(ino, name, value, mode) => encode(store.set_xattr(ino, &name, &value, mode)),
            Request::GetXattr(ino, name) => encode(store.get_xattr(ino, &name)),
            Request::ListXattr(ino) => encode(store.list_xattr(ino)),
            Request::RemoveXattr(ino, name) => encode(store.remove_xattr(ino, &name)),
            Request::Usage => encode(store.usage()),
            Request::SyncAll => encode(store.sync_all()),
            Request::ReferencedChunks => encode(store.referenced_chunks()),
            Request::UnreferencedChunks => encode(store.unreferenced_chunks()),
            Request::Audit => encode(store.audit()),
            Request::Sessions => encode(store.sessions()),
            Request::SetLock(ino, req) => encode(store.set_lock(ino, &req)),
            Request::GetLock(ino, req) => encode(store.get_lock(ino, &req)),
            Request::ReleaseLocks(ino, owner) => encode(store.release_locks(ino, owner)),
            Request::AdoptSession(from) => encode(store.adopt_session(from)),
            Request::ProtectChunk(hash) => encode(store.protect_chunk(&hash)),
            Request::CondemnChunks(hashes, before) => encode(store.condemn_chunks(&hashes, before)),
            Request::CondemnedChunks => encode(store.condemned_chunks()),
            Request::ForgetCondemned(hashes) => encode(store.forget_condemned(&hashes)),
            Request::LeaseThroughput(req) => encode(store.lease_throughput(&req)),
            Request::Throughput => encode(store.throughput()),
            Request::SetThroughput(settings) => encode(store.set_throughput(&settings)),
        }
    }

    fn format(&self, superblock: &crate::Superblock, uid: u32, gid: u32) -> MetaResult<()> {
        if self.store.get().is_some() {
            return Err(MetaError::Format(format!(
                "the metadata service's store {} already holds a file system; mount it, or serve an empty directory",
                self.config.db.display()
            )));
        }
        std::fs::create_dir_all(&self.config.db).map_err(MetaError::store)?;
        let store = self.with_commit_mode(SledStore::format(&self.config.db, superblock, uid, gid)?);
        self.store
            .set(store)
            .map_err(|_| MetaError::Format("another client formatted the store at the same time".into()))?;
        info!(uuid = superblock.uuid, "formatted a new file system");
        Ok(())
    }

    /// Ends every session whose lease ran out: its locks are released and the files it held
    /// open after unlinking them are removed.
    async fn reap_expired_sessions(self: Arc<Self>) {
        let period = (self.config.lease / 4).max(Duration::from_millis(100));
        loop {
            tokio::time::sleep(period).await;
            let expired: Vec<SessionId> = {
                let mut seen = self.last_seen.lock().unwrap();
                let lease = self.config.lease;
                let expired: Vec<_> =
                    seen.iter().filter(|(_, t)| t.elapsed() > lease).map(|(id, _)| *id).collect();
                for id in &expired {
                    seen.remove(id);
                }
                expired
            };
            let Some(store) = self.store.get().cloned() else { continue };
            for id in expired {
                let store = store.clone();
                let ended = tokio::task::spawn_blocking(move || store.end_session(id)).await;
                match ended {
                    Ok(Ok(())) => info!(session = id, "session expired: no heartbeat within the lease"),
                    Ok(Err(e)) => warn!(session = id, "ending an expired session: {e}"),
                    Err(e) => warn!(session = id, "ending an expired session: {e}"),
                }
            }
        }
    }
}

/// Registers or resumes the session a hello asks for; returns it and whether it was resumed.
fn start_session(store: Option<SledStore>, request: SessionRequest) -> MetaResult<(Option<SessionId>, bool)> {
    let new = |store: &SledStore, client: ClientInfo| -> MetaResult<(Option<SessionId>, bool)> {
        Ok((Some(store.start_session(client, None)?.session_id()), false))
    };
    match (store, request) {
        (_, SessionRequest::None) => Ok((None, false)),
        (None, _) => Ok((None, false)),
        (Some(store), SessionRequest::New(client)) => new(&store, client),
        (Some(store), SessionRequest::Resume(id, client)) => {
            if store.has_session(id)? {
                Ok((Some(id), true))
            } else {
                new(&store, client)
            }
        }
    }
}

/// Sends replies as they come, flushing whenever no more are waiting.
async fn write_replies<W: AsyncWrite + Unpin>(
    mut writer: W,
    mut replies: mpsc::UnboundedReceiver<(u64, Vec<u8>)>,
) {
    while let Some((id, payload)) = replies.recv().await {
        if wire::write_frame(&mut writer, id, &payload).await.is_err() {
            return;
        }
        while let Ok((id, payload)) = replies.try_recv() {
            if wire::write_frame(&mut writer, id, &payload).await.is_err() {
                return;
            }
        }
        if writer.flush().await.is_err() {
            return;
        }
    }
}

fn encode<T: Serialize>(result: MetaResult<T>) -> Vec<u8> {
    postcard::to_allocvec(&result).unwrap_or_else(|e| {
        postcard::to_allocvec(&MetaResult::<T>::Err(MetaError::store(format!("encoding a reply: {e}"))))
            .expect("an error always encodes")
    })
}
