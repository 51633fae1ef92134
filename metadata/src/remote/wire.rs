//! The wire protocol. Every message is one frame:
//!
//! ```text
//! u32 LE  length of what follows (id + payload)
//! u64 LE  request id: a reply carries its request's id, so replies may come in any order
//! ...     payload
//! ```
//!
//! The first frame on a connection is the client's hello: the magic `EFSM`, the protocol
//! version (u32 LE), then a postcard-encoded [`Hello`]. The server answers with a [`Welcome`].
//! After that the client sends postcard [`Request`]s and the server answers each with a
//! postcard `MetaResult<T>`, `T` being the matching [`crate::MetaStore`] method's result.

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::block::Compaction;
use crate::locks::LockRequest;
use crate::session::{ClientInfo, SessionId};
use crate::store::{BlockCommit, NewNode, Rename, XattrMode};
use crate::throughput::{LeaseRequest, ThroughputSettings};
use crate::types::{ChunkHash, Ino, SetAttr, Superblock, Timestamp};

pub const MAGIC: [u8; 4] = *b"EFSM";
/// Bumped whenever a message changes shape; a client and a service must agree exactly.
pub const PROTOCOL_VERSION: u32 = 8;
/// Largest request frame a server accepts (inline data is at most 1 MiB per block).
pub const MAX_REQUEST_FRAME: usize = 16 << 20;
/// Largest reply frame a client accepts (chunk lists of a large file system are long).
pub const MAX_REPLY_FRAME: usize = 1 << 30;
/// The fixed part of a frame: length and id.
const HEADER: usize = 12;

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Hello {
    /// The shared secret, if the client has one.
    pub token: Option<Vec<u8>>,
    pub session: SessionRequest,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum SessionRequest {
    /// A short-lived tool (`format`, `status`): no locks, no open files.
    None,
    New(ClientInfo),
    /// Reconnecting: carry on with this session if the service still has it.
    Resume(SessionId, ClientInfo),
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Welcome {
    Accepted {
        /// `None` while the service's store has not been formatted.
        superblock: Option<Superblock>,
        session: Option<SessionId>,
        /// A resumed session kept its locks and open files; a new one did not.
        resumed: bool,
        /// A session that sends no heartbeat for this long is ended.
        lease_ms: u64,
        /// The service defers durability of its commits by up to this long (`meta serve
        /// --commit`); `None`: every change is durable when answered.
        deferred_commit_ms: Option<u64>,
    },
    Refused(String),
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Request {
    Heartbeat,
    /// Make every change answered so far durable (a client's fsync, with deferred commits).
    SyncAll,
    /// Clean unmount: release locks and open files now rather than after the lease.
    EndSession,
    Format {
        superblock: Superblock,
        root_uid: u32,
        root_gid: u32,
    },
    GetAttr(Ino),
    Lookup(Ino, Vec<u8>),
    Create(NewNode),
    Link(Ino, Ino, Vec<u8>),
    Unlink(Ino, Vec<u8>, Option<Ino>),
    Rmdir(Ino, Vec<u8>),
    Rename(Rename),
    Readdir(Ino, u64, u32),
    Readlink(Ino),
    SetAttr(Ino, SetAttr),
    Blocks(Ino, u64, u64),
    CommitBlocks(Ino, BlockCommit),
    CompactBlock(Compaction),
    Purge(Ino),
    Orphans,
    SetXattr(Ino, Vec<u8>, Vec<u8>, XattrMode),
    GetXattr(Ino, Vec<u8>),
    ListXattr(Ino),
    RemoveXattr(Ino, Vec<u8>),
    Usage,
    ReferencedChunks,
    UnreferencedChunks,
    Audit,
    Sessions,
    SetLock(Ino, LockRequest),
    GetLock(Ino, LockRequest),
    ReleaseLocks(Ino, u64),
    AdoptSession(SessionId),
    ProtectChunk(ChunkHash),
    CondemnChunks(Vec<ChunkHash>, Timestamp),
    CondemnedChunks,
    ForgetCondemned(Vec<ChunkHash>),
    LeaseThroughput(LeaseRequest),
    Throughput,
    SetThroughput(ThroughputSettings),
}

impl Request {
    /// Requests that touch a few keys and never wait on the disk (reads, and throughput leases
    /// whose balance saves are not flushed); scans and durable writes are not.
    pub fn is_point_read(&self) -> bool {
        matches!(
            self,
            Request::GetAttr(_)
                | Request::Lookup(..)
                | Request::Readlink(_)
                | Request::GetXattr(..)
                | Request::ListXattr(_)
                | Request::GetLock(..)
                | Request::Usage
                | Request::LeaseThroughput(_)
                | Request::Throughput
        )
    }
}

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("connection closed")]
    Closed,
    #[error("frame of {0} bytes is larger than the limit of {1}")]
    TooLarge(usize, usize),
    #[error("frame of {0} bytes is too short to hold a request id")]
    TooShort(usize),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Reads one frame: its id and payload.
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R, max: usize) -> Result<(u64, Vec<u8>), FrameError> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(FrameError::Closed),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_le_bytes(len) as usize;
    if len > max {
        return Err(FrameError::TooLarge(len, max));
    }
    if len < HEADER - 4 {
        return Err(FrameError::TooShort(len));
    }
    let mut id = [0u8; 8];
    r.read_exact(&mut id).await?;
    let mut payload = vec![0u8; len - 8];
    r.read_exact(&mut payload).await?;
    Ok((u64::from_le_bytes(id), payload))
}

/// Writes one frame (without flushing).
pub async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, id: u64, payload: &[u8]) -> std::io::Result<()> {
    let len = u32::try_from(payload.len() + 8)
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "frame over 4 GiB"))?;
    let mut header = [0u8; HEADER];
    header[..4].copy_from_slice(&len.to_le_bytes());
    header[4..].copy_from_slice(&id.to_le_bytes());
    w.write_all(&header).await?;
    w.write_all(payload).await
}

/// The payload of a hello frame.
pub fn encode_hello(hello: &Hello) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&PROTOCOL_VERSION.to_le_bytes());
    out.extend_from_slice(&postcard::to_allocvec(hello).expect("a hello always encodes"));
    out
}

/// Checks a hello frame's magic and version before decoding the rest, so that a client of
/// another version is told so rather than failing to decode.
pub fn decode_hello(payload: &[u8]) -> Result<Hello, String> {
    if payload.len() < 8 || payload[..4] != MAGIC {
        return Err("this is an elasticfs metadata service; the client did not speak its protocol".into());
    }
    let version = u32::from_le_bytes(payload[4..8].try_into().expect("4 bytes"));
    if version != PROTOCOL_VERSION {
        return Err(format!(
            "protocol version {version} is not supported: this metadata service speaks version \
             {PROTOCOL_VERSION}; run the same elasticfs release on clients and service"
        ));
    }
    postcard::from_bytes(&payload[8..]).map_err(|e| format!("malformed hello: {e}"))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn hello_round_trips_and_other_versions_are_named() {
        let hello = Hello { token: Some(b"t".to_vec()), session: SessionRequest::None };
        let mut raw = encode_hello(&hello);
        assert!(decode_hello(&raw).is_ok());
        raw[4] = 9;
        let err = decode_hello(&raw).unwrap_err();
        assert!(err.contains("version 9") && err.contains(&format!("version {PROTOCOL_VERSION}")), "{err}");
        assert!(decode_hello(b"GET / HTTP/1.1").unwrap_err().contains("did not speak"));
    }

    #[tokio::test]
    async fn oversized_and_truncated_frames_are_errors() {
        let mut big = Vec::new();
        big.extend_from_slice(&(u32::MAX).to_le_bytes());
        let err = read_frame(&mut big.as_slice(), MAX_REQUEST_FRAME).await.unwrap_err();
        assert!(matches!(err, FrameError::TooLarge(..)));
        let mut framed = Vec::new();
        write_frame(&mut framed, 7, b"abc").await.unwrap();
        assert_eq!(read_frame(&mut framed.as_slice(), 64).await.unwrap(), (7, b"abc".to_vec()));
        let cut = &framed[..framed.len() - 1];
        assert!(read_frame(&mut &cut[..], 64).await.is_err());
        assert!(matches!(read_frame(&mut &[][..], 64).await, Err(FrameError::Closed)));
    }

    proptest! {
        /// Whatever arrives, decoding answers (with a value or an error) and never panics.
        #[test]
        fn decoders_never_panic_on_random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_hello(&bytes);
            let _ = postcard::from_bytes::<Request>(&bytes);
            let mut prefixed = MAGIC.to_vec();
            prefixed.extend_from_slice(&PROTOCOL_VERSION.to_le_bytes());
            prefixed.extend_from_slice(&bytes);
            let _ = decode_hello(&prefixed);
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            let _ = rt.block_on(read_frame(&mut bytes.as_slice(), 256));
        }
    }
}
