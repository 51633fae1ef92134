//! ONC RPC over TCP (RFC 5531): record marking, call headers, AUTH_SYS credentials, replies.

use std::io::{self, Cursor, IoSlice, Read};
use std::sync::Mutex;

use bytes::Bytes;

use nfs3_types::rpc::{
    accept_stat_data, accepted_reply, auth_flavor, auth_stat, fragment_header, msg_body, opaque_auth,
    rejected_reply, reply_body, rpc_msg, RPC_VERSION_2,
};
use nfs3_types::xdr_codec::{Pack, Unpack};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Largest record accepted: a 1 MiB WRITE (our wtmax) and its headers, with room to spare.
pub const MAX_RECORD: usize = 2 << 20;

/// RFC 5531 caps an opaque_auth body at 400 bytes.
const MAX_AUTH_BODY: usize = 400;
/// AUTH_SYS carries at most 16 supplementary groups and a 255-byte machine name.
const MAX_AUTH_GROUPS: usize = 16;
const MAX_MACHINE_NAME: usize = 255;

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("connection closed")]
    Closed,
    #[error("record of more than {MAX_RECORD} bytes")]
    TooLarge,
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// Reads one record (all its fragments) into `record`, which is cleared first. Bytes are read
/// straight into the vector's spare capacity, so that a reused buffer is not zeroed again.
pub async fn read_record<R: AsyncRead + Unpin>(
    reader: &mut R,
    record: &mut Vec<u8>,
) -> Result<(), RecordError> {
    record.clear();
    loop {
        let mut header = [0u8; 4];
        match reader.read_exact(&mut header).await {
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof && record.is_empty() => {
                return Err(RecordError::Closed)
            }
            other => other?,
        };
        let header = fragment_header::from(header);
        let len = header.fragment_length() as usize;
        if record.len() + len > MAX_RECORD {
            return Err(RecordError::TooLarge);
        }
        record.reserve(len);
        let mut fragment = (&mut *reader).take(len as u64);
        while fragment.limit() > 0 {
            if fragment.read_buf(record).await? == 0 {
                return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
            }
        }
        if header.eof() {
            return Ok(());
        }
    }
}

/// Record buffers kept for the next records once a call is answered: the allocator maps each
/// large buffer on its own (see `bound_allocator_memory` in the binary), so a fresh megabyte
/// for every WRITE would be mapped, faulted in page by page and unmapped again each time.
/// Shared by all connections, so that what is kept does not grow with their number.
#[derive(Default)]
pub struct RecordBuffers {
    free: Mutex<Vec<Vec<u8>>>,
}

/// Buffers kept at most (a WRITE's is a little over 1 MiB, none is over 2 MiB).
const KEPT_BUFFERS: usize = 16;

impl RecordBuffers {
    pub fn take(&self) -> Vec<u8> {
        self.free.lock().unwrap().pop().unwrap_or_default()
    }

    pub fn give(&self, buffer: Vec<u8>) {
        let mut free = self.free.lock().unwrap();
        if free.len() < KEPT_BUFFERS {
            free.push(buffer);
        }
    }
}

/// The AUTH_SYS credential of a call (AUTH_NULL calls have none).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthSys {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
}

/// A decoded call header; its arguments follow at `args_at` in the record.
#[derive(Debug)]
pub struct Call {
    pub xid: u32,
    pub prog: u32,
    pub vers: u32,
    pub proc: u32,
    pub auth: Option<AuthSys>,
    pub args_at: usize,
}

/// Why a record is not a call we can answer normally.
#[derive(Debug)]
pub enum BadCall {
    /// Not even an RPC header: drop the connection.
    Garbage,
    /// A reply to send instead of calling anything.
    Reply(Record),
}

pub fn decode_call(record: &[u8]) -> Result<Call, BadCall> {
    let mut cursor = Cursor::new(record);
    let (msg, _) = rpc_msg::unpack(&mut cursor).map_err(|_| BadCall::Garbage)?;
    let msg_body::CALL(call) = msg.body else { return Err(BadCall::Garbage) };
    let xid = msg.xid;
    if call.rpcvers != RPC_VERSION_2 {
        let mismatch = rejected_reply::rpc_mismatch(RPC_VERSION_2, RPC_VERSION_2);
        return Err(BadCall::Reply(encode(xid, reply_body::MSG_DENIED(mismatch))));
    }
    let auth = match call.cred.flavor {
        auth_flavor::AUTH_NULL => None,
        auth_flavor::AUTH_UNIX => Some(
            decode_auth_sys(call.cred.body.as_ref())
                .ok_or_else(|| BadCall::Reply(denied(xid, auth_stat::AUTH_BADCRED)))?,
        ),
        _ => return Err(BadCall::Reply(denied(xid, auth_stat::AUTH_BADCRED))),
    };
    Ok(Call {
        xid,
        prog: call.prog,
        vers: call.vers,
        proc: call.proc,
        auth,
        args_at: cursor.position() as usize,
    })
}

/// Parses AUTH_SYS by hand, with its limits checked: the library's decoder would trust a group
/// count from the wire to size an allocation.
fn decode_auth_sys(body: &[u8]) -> Option<AuthSys> {
    if body.len() > MAX_AUTH_BODY {
        return None;
    }
    let mut r = Cursor::new(body);
    let mut word = || {
        let mut b = [0u8; 4];
        Read::read_exact(&mut r, &mut b).ok().map(|_| u32::from_be_bytes(b))
    };
    let _stamp = word()?;
    let name_len = word()? as usize;
    if name_len > MAX_MACHINE_NAME {
        return None;
    }
    for _ in 0..name_len.div_ceil(4) {
        word()?;
    }
    let uid = word()?;
    let gid = word()?;
    let count = word()? as usize;
    if count > MAX_AUTH_GROUPS {
        return None;
    }
    let groups = (0..count).map(|_| word()).collect::<Option<Vec<_>>>()?;
    Some(AuthSys { uid, gid, groups })
}

/// Bytes before a successful result: the record mark, xid, REPLY, MSG_ACCEPTED, a null
/// verifier and SUCCESS. Results are packed after this much room, and the header is filled in
/// at the end, so that a result is not copied again to prepend it.
pub const SUCCESS_HEADER: usize = 28;

/// Slices handed to one `writev` at most (Linux's IOV_MAX is 1024).
const MAX_SLICES: usize = 1024;

/// One reply record: packed bytes, then file data sent from where it lies in the engine's
/// cache (a READ's), so that it is never copied into the record.
#[derive(Debug, Default)]
pub struct Record {
    pub packed: Vec<u8>,
    pub data: Vec<Bytes>,
}

impl From<Vec<u8>> for Record {
    fn from(packed: Vec<u8>) -> Self {
        Record { packed, data: Vec::new() }
    }
}

impl Record {
    pub fn len(&self) -> usize {
        self.packed.len() + self.data.iter().map(Bytes::len).sum::<usize>()
    }

    fn slices(&self) -> impl Iterator<Item = IoSlice<'_>> {
        std::iter::once(IoSlice::new(&self.packed)).chain(self.data.iter().map(|d| IoSlice::new(d)))
    }
}

/// Writes `records` in order, gathered into as few `writev` calls as the kernel takes.
pub async fn send<W: AsyncWrite + Unpin>(writer: &mut W, records: &[Record]) -> io::Result<()> {
    let mut slices: Vec<IoSlice<'_>> = records.iter().flat_map(Record::slices).collect();
    let mut rest = &mut slices[..];
    while !rest.is_empty() {
        let batch = rest.len().min(MAX_SLICES);
        match writer.write_vectored(&rest[..batch]).await? {
            0 => return Err(io::ErrorKind::WriteZero.into()),
            written => IoSlice::advance_slices(&mut rest, written),
        }
    }
    Ok(())
}

/// A buffer to pack a successful result into, after room for its headers.
pub fn result_buffer(capacity: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(SUCCESS_HEADER + capacity);
    out.resize(SUCCESS_HEADER, 0);
    out
}

/// The record of an accepted, successful reply, from a [`result_buffer`] with the result in it.
pub fn success(xid: u32, mut record: Record) -> Record {
    let mark = 0x8000_0000 | (record.len() - 4) as u32;
    // REPLY, MSG_ACCEPTED, AUTH_NULL verifier of length 0, SUCCESS.
    for (i, word) in [mark, xid, 1, 0, 0, 0, 0].into_iter().enumerate() {
        record.packed[i * 4..i * 4 + 4].copy_from_slice(&word.to_be_bytes());
    }
    record
}

/// An accepted reply that is not a success (no such program, procedure or version; bad args).
pub fn failure(xid: u32, stat: accept_stat_data) -> Record {
    encode(xid, reply_body::MSG_ACCEPTED(accepted_reply { verf: opaque_auth::default(), reply_data: stat }))
}

/// A call refused for its credentials.
pub fn denied(xid: u32, why: auth_stat) -> Record {
    encode(xid, reply_body::MSG_DENIED(rejected_reply::auth_error(why)))
}

/// A reply with no result, as one record of one fragment.
fn encode(xid: u32, body: reply_body<'_>) -> Record {
    let msg = rpc_msg { xid, body: msg_body::REPLY(body) };
    let mut out = Vec::with_capacity(4 + msg.packed_size());
    out.extend_from_slice(&fragment_header::new(msg.packed_size() as u32, true).into_xdr_buf());
    msg.pack(&mut out).expect("packing into a Vec cannot fail");
    out.into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use nfs3_types::rpc::call_body;
    use proptest::prelude::*;

    fn call_record(rpcvers: u32, cred: opaque_auth<'static>) -> Vec<u8> {
        let msg = rpc_msg {
            xid: 7,
            body: msg_body::CALL(call_body {
                rpcvers,
                prog: 100_003,
                vers: 3,
                proc: 1,
                cred,
                verf: opaque_auth::default(),
            }),
        };
        let mut out = Vec::new();
        msg.pack(&mut out).unwrap();
        out
    }

    #[test]
    fn auth_sys_credentials_are_read_with_their_groups() {
        let cred = nfs3_types::rpc::auth_unix {
            stamp: 1,
            machinename: b"host".as_slice().into(),
            uid: 1000,
            gid: 100,
            gids: vec![100, 200],
        };
        let call = decode_call(&call_record(2, opaque_auth::auth_unix(&cred))).unwrap();
        assert_eq!(call.auth, Some(AuthSys { uid: 1000, gid: 100, groups: vec![100, 200] }));
        assert_eq!((call.xid, call.prog, call.vers, call.proc), (7, 100_003, 3, 1));
    }

    #[test]
    fn wrong_rpc_version_gets_a_mismatch_reply() {
        match decode_call(&call_record(3, opaque_auth::default())) {
            Err(BadCall::Reply(reply)) => assert_eq!(&reply.packed[4..8], &7u32.to_be_bytes()),
            other => panic!("expected a reply, got {other:?}"),
        }
    }

    #[test]
    fn oversized_group_list_is_a_bad_credential() {
        let mut body = Vec::new();
        for word in [0u32, 0, 1000, 100, 4_000_000_000] {
            body.extend_from_slice(&word.to_be_bytes());
        }
        let cred = opaque_auth { flavor: auth_flavor::AUTH_UNIX, body: body.into() };
        assert!(matches!(decode_call(&call_record(2, cred)), Err(BadCall::Reply(_))));
    }

    #[tokio::test]
    async fn records_are_sent_whole_and_in_order_through_short_writes() {
        let records = [
            Record {
                packed: b"head".to_vec(),
                data: vec![Bytes::from_static(b"abc"), Bytes::from_static(b"defg")],
            },
            Record::from(b"next".to_vec()),
        ];
        // A pipe that takes at most 3 bytes at a time, so that most writes are partial.
        let (mut sender, mut receiver) = tokio::io::duplex(3);
        let received = tokio::spawn(async move {
            let mut all = Vec::new();
            receiver.read_to_end(&mut all).await.map(|_| all)
        });
        send(&mut sender, &records).await.unwrap();
        drop(sender);
        assert_eq!(received.await.unwrap().unwrap(), b"headabcdefgnext");
    }

    proptest! {
        #[test]
        fn random_records_never_panic(record in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_call(&record);
        }
    }
}
