//! Clients, leases and sessions: 4.1's EXCHANGE_ID, CREATE_SESSION, SEQUENCE, DESTROY_*,
//! BIND_CONN_TO_SESSION, RECLAIM_COMPLETE, TEST_/FREE_STATEID, and 4.0's SETCLIENTID(_CONFIRM),
//! RENEW and RELEASE_LOCKOWNER.

use std::sync::Mutex;

use super::state::{Principal, Session, Slot, SlotUse, MAX_SLOTS};
use super::status::{OpResult, Status};
use super::xdr::{Reader, Writer};
use super::{stateid, Compound, InSession, MAX_OPS};
use crate::rpc::MAX_RECORD;

const EXCHGID4_FLAG_USE_NON_PNFS: u32 = 0x0001_0000;
const EXCHGID4_FLAG_UPD_CONFIRMED_REC_A: u32 = 0x4000_0000;
const EXCHGID4_FLAG_CONFIRMED_R: u32 = 0x8000_0000;
/// The flags a client may send: SUPP_MOVED_REFER/MIGR, BIND_PRINC_STATEID, the USE_* bits and
/// UPD_CONFIRMED_REC_A (what Linux's server accepts); others are INVAL.
const EXCHGID4_FLAG_MASK_A: u32 = 0x4007_0103;
/// CREATE_SESSION's flags: PERSIST, CONN_BACK_CHAN, CONN_RDMA; others are INVAL.
const CREATE_SESSION4_FLAG_MASK: u32 = 0x7;
/// The smallest requests and replies a session may be limited to: room for an RPC header
/// with AUTH_SYS credentials and a SEQUENCE (Linux's server asks about as much).
const MIN_CHANNEL_MESSAGE: u32 = 256;
const SP4_NONE: u32 = 0;
const SP4_MACH_CRED: u32 = 1;
/// Replies cached per slot at most, when a client asks for caching.
const MAX_CACHED_REPLY: u32 = 64 << 10;
/// BIND_CONN_TO_SESSION's directions asked (CDFC4_*) and granted (CDFS4_*).
const CDFC4_FORE: u32 = 1;
const CDFC4_BACK: u32 = 2;
const CDFC4_FORE_OR_BOTH: u32 = 3;
const CDFC4_BACK_OR_BOTH: u32 = 7;
const CDFS4_FORE: u32 = 1;
const CDFS4_BOTH: u32 = 3;
const CREATE_SESSION4_FLAG_CONN_BACK_CHAN: u32 = 2;

/// A session's channel attributes (channel_attrs4).
struct Channel {
    header_pad: u32,
    max_request: u32,
    max_response: u32,
    max_cached: u32,
    max_ops: u32,
    max_requests: u32,
}

impl Channel {
    fn read(r: &mut Reader<'_>) -> OpResult<Channel> {
        let channel = Channel {
            header_pad: r.u32()?,
            max_request: r.u32()?,
            max_response: r.u32()?,
            max_cached: r.u32()?,
            max_ops: r.u32()?,
            max_requests: r.u32()?,
        };
        r.array(1, Reader::u32)?; // RDMA's ird: not used over TCP
        Ok(channel)
    }

    fn write(&self, w: &mut Writer) {
        for v in [
            self.header_pad,
            self.max_request,
            self.max_response,
            self.max_cached,
            self.max_ops,
            self.max_requests,
        ] {
            w.u32(v);
        }
        w.u32(0);
    }

    /// What the gateway grants of what the client asked for its fore channel.
    fn granted(&self) -> Channel {
        let record = (MAX_RECORD - 4096) as u32;
        Channel {
            header_pad: 0,
            max_request: self.max_request.min(record),
            max_response: self.max_response.min(record),
            max_cached: self.max_cached.min(MAX_CACHED_REPLY),
            max_ops: self.max_ops.min(MAX_OPS),
            max_requests: self.max_requests.clamp(1, MAX_SLOTS),
        }
    }
}

/// Skips an array of callback_sec_parms4 (the gateway makes no callbacks).
fn skip_callback_securities(r: &mut Reader<'_>) -> OpResult {
    let count = r.u32()?;
    if count > 16 {
        return Err(Status::BADXDR.into());
    }
    (0..count).try_for_each(|_| skip_callback_security(r))
}

fn skip_callback_security(r: &mut Reader<'_>) -> OpResult {
    match r.u32()? {
        0 => {}
        1 => {
            r.u32()?;
            r.opaque(255)?;
            r.u32()?;
            r.u32()?;
            r.array(16, Reader::u32)?;
        }
        6 => {
            r.u32()?;
            r.opaque(1024)?;
            r.opaque(1024)?;
        }
        _ => return Err(Status::INVAL.into()),
    }
    Ok(())
}

impl Compound<'_> {
    /// The caller, as a client record's owner.
    fn principal(&self) -> Principal {
        (self.who.uid, self.who.gid)
    }

    pub(super) fn exchange_id(&mut self, r: &mut Reader<'_>, w: &mut Writer) -> OpResult {
        let verifier: [u8; 8] = r.fixed()?;
        let owner = r.opaque(1024)?;
        let flags = r.u32()?;
        if flags & !EXCHGID4_FLAG_MASK_A != 0 {
            return Err(Status::INVAL.into());
        }
        match r.u32()? {
            SP4_NONE => {}
            // Asked with AUTH_SYS, where it protects nothing: answered as SP4_NONE.
            SP4_MACH_CRED => {
                r.bitmap()?;
                r.bitmap()?;
            }
            _ => return Err(Status::NOTSUPP.into()),
        }
        r.array(1, |r| {
            r.opaque(1024)?;
            r.opaque(1024)?;
            r.i64()?;
            r.u32()
        })?;
        let update = flags & EXCHGID4_FLAG_UPD_CONFIRMED_REC_A != 0;
        let client = self.gw.v4.exchange(owner, verifier, 1, self.principal(), update)?;
        w.u64(client.id);
        w.u32(client.create_seq);
        w.u32(EXCHGID4_FLAG_USE_NON_PNFS | if client.confirmed { EXCHGID4_FLAG_CONFIRMED_R } else { 0 });
        w.u32(SP4_NONE);
        // One server owner and scope per file system: gateways of one file system share its
        // namespace, so a client may see them as one server.
        w.u64(0);
        w.opaque(&self.gw.handles.volume.to_be_bytes());
        w.opaque(&self.gw.handles.volume.to_be_bytes());
        w.u32(1);
        w.opaque(b"elasticfs");
        w.opaque(concat!("elasticfs ", env!("CARGO_PKG_VERSION")).as_bytes());
        w.i64(0);
        w.u32(0);
        Ok(())
    }

    pub(super) fn create_session(&mut self, r: &mut Reader<'_>, w: &mut Writer) -> OpResult {
        let client = r.u64()?;
        let sequence = r.u32()?;
        let flags = r.u32()?;
        let fore = Channel::read(r)?;
        let back = Channel::read(r)?;
        let _program = r.u32()?;
        skip_callback_securities(r)?;
        let principal = self.principal();
        // A retransmission gets the reply the first one got.
        let replay = self.gw.v4.with_client(client, |c| match &c.last_create {
            // Only the principal that made an unconfirmed record may confirm it.
            _ if !c.confirmed && c.principal != principal => Err(Status::CLID_INUSE.into()),
            Some((seq, reply)) if *seq == sequence => Ok(Some(reply.clone())),
            _ if sequence != c.create_seq => Err(Status::SEQ_MISORDERED.into()),
            _ => Ok(None),
        })?;
        if let Some(reply) = replay {
            w.fixed(&reply);
            return Ok(());
        }
        if flags & !CREATE_SESSION4_FLAG_MASK != 0 {
            return Err(Status::INVAL.into());
        }
        let fore = fore.granted();
        if fore.max_request < MIN_CHANNEL_MESSAGE || fore.max_response < MIN_CHANNEL_MESSAGE {
            return Err(Status::TOOSMALL.into());
        }
        let (session, released) = self.gw.v4.add_session(client, |id| Session {
            id,
            client,
            slots: Mutex::new((0..fore.max_requests).map(|_| Slot::default()).collect()),
            max_request: fore.max_request,
            max_response: fore.max_response,
            max_cached: fore.max_cached,
            max_ops: fore.max_ops,
        })?;
        let mut reply = Writer::default();
        reply.fixed(&session.id);
        reply.u32(sequence);
        // No persistence. A back channel is accepted on the connection as asked (clients
        // require one), though the gateway has nothing to call back for: it grants no
        // delegations or layouts.
        reply.u32(flags & CREATE_SESSION4_FLAG_CONN_BACK_CHAN);
        fore.write(&mut reply);
        Channel { max_requests: back.max_requests.min(1), ..back }.write(&mut reply);
        self.gw.v4.with_client(client, |c| {
            c.create_seq = sequence.wrapping_add(1);
            c.last_create = Some((sequence, reply.packed.clone()));
            Ok(())
        })?;
        self.gw.let_go(released);
        w.fixed(&reply.packed);
        Ok(())
    }

    pub(super) fn sequence(&mut self, r: &mut Reader<'_>, w: &mut Writer) -> OpResult<Option<Vec<u8>>> {
        let id: [u8; 16] = r.fixed()?;
        let seqid = r.u32()?;
        let slot = r.u32()?;
        let _highest = r.u32()?;
        let cache = r.bool()?;
        let session = self.gw.v4.session(&id)?;
        if self.ops > session.max_ops {
            return Err(Status::TOO_MANY_OPS.into());
        }
        if self.request_len > session.max_request as usize {
            return Err(Status::REQ_TOO_BIG.into());
        }
        match session.begin(slot, seqid, cache)? {
            SlotUse::Replay(reply) => return Ok(Some(reply)),
            SlotUse::New { cache } => {
                self.session = Some(InSession { session: session.clone(), slot, cache });
            }
        }
        let highest = session.slots.lock().unwrap().len() as u32 - 1;
        w.fixed(&id);
        w.u32(seqid);
        w.u32(slot);
        w.u32(highest);
        w.u32(highest);
        w.u32(0);
        Ok(None)
    }

    pub(super) fn destroy_session(&mut self, r: &mut Reader<'_>) -> OpResult {
        let id: [u8; 16] = r.fixed()?;
        self.gw.v4.destroy_session(&id)
    }

    pub(super) fn bind_conn_to_session(&mut self, r: &mut Reader<'_>, w: &mut Writer) -> OpResult {
        let id: [u8; 16] = r.fixed()?;
        let dir = r.u32()?;
        let _rdma = r.bool()?;
        self.gw.v4.session(&id)?;
        let granted = match dir {
            CDFC4_FORE => CDFS4_FORE,
            CDFC4_BACK | CDFC4_FORE_OR_BOTH | CDFC4_BACK_OR_BOTH => CDFS4_BOTH,
            _ => return Err(Status::INVAL.into()),
        };
        w.fixed(&id);
        w.u32(granted);
        w.bool(false);
        Ok(())
    }

    /// BACKCHANNEL_CTL: the back channel's program and security, accepted (never used).
    pub(super) fn backchannel_ctl(&mut self, r: &mut Reader<'_>) -> OpResult {
        let _program = r.u32()?;
        skip_callback_securities(r)?;
        self.session_client().ok_or(Status::OP_NOT_IN_SESSION)?;
        Ok(())
    }

    pub(super) fn destroy_clientid(&mut self, r: &mut Reader<'_>) -> OpResult {
        let id = r.u64()?;
        let released = self.gw.v4.destroy_client(id)?;
        self.gw.let_go(released);
        Ok(())
    }

    pub(super) fn reclaim_complete(&mut self, r: &mut Reader<'_>) -> OpResult {
        let one_fs = r.bool()?;
        let client = self.session_client().ok_or(Status::OP_NOT_IN_SESSION)?;
        if one_fs {
            // Per file system: there is one, and its reclaim is the client's.
            return Ok(());
        }
        self.gw.v4.with_client(client, |c| {
            if std::mem::replace(&mut c.reclaimed, true) {
                return Err(Status::COMPLETE_ALREADY.into());
            }
            Ok(())
        })
    }

    pub(super) fn test_stateid(&mut self, r: &mut Reader<'_>, w: &mut Writer) -> OpResult {
        let ids = r.array(1024, |r| Ok((r.u32()?, r.fixed::<12>()?)))?;
        w.u32(ids.len() as u32);
        for (seqid, other) in ids {
            w.u32(self.gw.v4.test(&super::state::Stateid { seqid, other }).0);
        }
        Ok(())
    }

    /// FREE_STATEID: a lock stateid goes with its locks; an open's is freed by CLOSE.
    pub(super) fn free_stateid(&mut self, r: &mut Reader<'_>) -> OpResult {
        let id = stateid(r)?;
        if self.gw.v4.is_lock(&id) {
            let locks = self.gw.v4.free_lock(&id)?;
            self.gw.release_locks(locks);
            return Ok(());
        }
        match self.gw.v4.test(&id) {
            Status::OK => Err(Status::LOCKS_HELD.into()),
            status => Err(status.into()),
        }
    }

    pub(super) fn setclientid(&mut self, r: &mut Reader<'_>, w: &mut Writer) -> OpResult {
        let verifier: [u8; 8] = r.fixed()?;
        let owner = r.opaque(1024)?;
        let _program = r.u32()?;
        let _netid = r.opaque(64)?;
        let _addr = r.opaque(256)?;
        let _ident = r.u32()?;
        let client = self.gw.v4.exchange(owner, verifier, 0, self.principal(), false)?;
        w.u64(client.id);
        w.fixed(&client.confirm);
        Ok(())
    }

    pub(super) fn setclientid_confirm(&mut self, r: &mut Reader<'_>) -> OpResult {
        let id = r.u64()?;
        let confirm: [u8; 8] = r.fixed()?;
        let released = self.gw.v4.confirm(id, confirm, self.principal())?;
        self.gw.let_go(released);
        Ok(())
    }

    pub(super) fn renew(&mut self, r: &mut Reader<'_>) -> OpResult {
        let id = r.u64()?;
        self.gw.v4.with_client(id, |_| Ok(()))
    }
}
