//! NFSv4.0 (RFC 7530) and NFSv4.1 (RFC 8881): the COMPOUND procedure over the same engine,
//! export rules and permission checks as NFSv3, on the same port.
//!
//! A COMPOUND runs its operations in order against a current (and a saved) file handle and
//! stops at the first that fails. Each operation lives with its kind: `names` (file handles,
//! attributes, the namespace), `io` (opens, reads and writes), `locks`, `sessions` (clients, leases,
//! sessions and the 4.0 client operations); `state` holds what they share.

mod attrs;
mod io;
mod locks;
mod names;
mod open_table;
mod sessions;
pub mod state;
mod status;
mod xdr;

use std::sync::Arc;

use elasticfs_core::metadata::{Attr, FileKind, Ino};
use elasticfs_core::Identity;
use tracing::debug;

use crate::handle::BadHandle;
use crate::rpc::Record;
use crate::Gateway;
pub use state::State;
use state::{Session, Stateid};
use status::{OpResult, Status};
use xdr::{Reader, Writer};

/// Operations in one COMPOUND at most (4.1 negotiates this per session, up to this).
pub const MAX_OPS: u32 = 64;
/// Largest tag echoed back.
const MAX_TAG: usize = 1024;

mod op {
    pub const ACCESS: u32 = 3;
    pub const CLOSE: u32 = 4;
    pub const COMMIT: u32 = 5;
    pub const CREATE: u32 = 6;
    pub const DELEGPURGE: u32 = 7;
    pub const DELEGRETURN: u32 = 8;
    pub const GETATTR: u32 = 9;
    pub const GETFH: u32 = 10;
    pub const LINK: u32 = 11;
    pub const LOCK: u32 = 12;
    pub const LOCKT: u32 = 13;
    pub const LOCKU: u32 = 14;
    pub const LOOKUP: u32 = 15;
    pub const LOOKUPP: u32 = 16;
    pub const NVERIFY: u32 = 17;
    pub const OPEN: u32 = 18;
    pub const OPENATTR: u32 = 19;
    pub const OPEN_CONFIRM: u32 = 20;
    pub const OPEN_DOWNGRADE: u32 = 21;
    pub const PUTFH: u32 = 22;
    pub const PUTPUBFH: u32 = 23;
    pub const PUTROOTFH: u32 = 24;
    pub const READ: u32 = 25;
    pub const READDIR: u32 = 26;
    pub const READLINK: u32 = 27;
    pub const REMOVE: u32 = 28;
    pub const RENAME: u32 = 29;
    pub const RENEW: u32 = 30;
    pub const RESTOREFH: u32 = 31;
    pub const SAVEFH: u32 = 32;
    pub const SECINFO: u32 = 33;
    pub const SETATTR: u32 = 34;
    pub const SETCLIENTID: u32 = 35;
    pub const SETCLIENTID_CONFIRM: u32 = 36;
    pub const VERIFY: u32 = 37;
    pub const WRITE: u32 = 38;
    pub const RELEASE_LOCKOWNER: u32 = 39;
    pub const BACKCHANNEL_CTL: u32 = 40;
    pub const BIND_CONN_TO_SESSION: u32 = 41;
    pub const EXCHANGE_ID: u32 = 42;
    pub const CREATE_SESSION: u32 = 43;
    pub const DESTROY_SESSION: u32 = 44;
    pub const FREE_STATEID: u32 = 45;
    pub const SECINFO_NO_NAME: u32 = 52;
    pub const SEQUENCE: u32 = 53;
    pub const TEST_STATEID: u32 = 55;
    pub const DESTROY_CLIENTID: u32 = 57;
    pub const RECLAIM_COMPLETE: u32 = 58;
    pub const ILLEGAL: u32 = 10044;
}

/// A file handle's object: its inode and generation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Fh {
    ino: Ino,
    generation: u64,
}

/// A SEQUENCE's session and slot, for the reply to be cached in once the COMPOUND is done.
struct InSession {
    session: Arc<Session>,
    slot: u32,
    cache: bool,
}

/// One COMPOUND's running state.
struct Compound<'g> {
    gw: &'g Gateway,
    who: &'g Identity,
    minor: u32,
    current: Option<Fh>,
    saved: Option<Fh>,
    current_stateid: Option<Stateid>,
    saved_stateid: Option<Stateid>,
    session: Option<InSession>,
    /// The COMPOUND's operation count and size, which SEQUENCE checks against its session's
    /// limits.
    ops: u32,
    request_len: usize,
    /// NFSv4.0: the owner (client, owner key) whose sequence the running operation advanced,
    /// for its reply to be kept for a retransmission.
    sequenced: Option<(u64, Vec<u8>)>,
}

impl Gateway {
    /// NFS program version 4: NULL and COMPOUND.
    pub(crate) fn nfs4_call(&self, proc: u32, args: &[u8], who: &Identity) -> Option<crate::nfs::Reply> {
        match proc {
            0 => Some(crate::nfs::Reply::Packed(crate::rpc::result_buffer(0).into())),
            1 => Some(crate::nfs::Reply::Packed(self.compound(args, who)?)),
            _ => Some(crate::nfs::Reply::NoSuchProcedure),
        }
    }

    /// Runs a COMPOUND; `None` if its header does not decode (GARBAGE_ARGS).
    fn compound(&self, args: &[u8], who: &Identity) -> Option<Record> {
        let mut r = Reader::new(args);
        let tag = r.opaque(MAX_TAG).ok()?;
        let minor = r.u32().ok()?;
        let count = r.u32().ok()?;
        let mut w = Writer::with_packed(crate::rpc::result_buffer(256));
        let header = w.position();
        w.u32(0); // the COMPOUND's status, set below
        w.opaque(tag);
        let count_at = w.position();
        w.u32(0);
        if minor > 1 {
            w.set_u32(header, Status::MINOR_VERS_MISMATCH.0);
            return Some(Record { packed: w.packed, data: w.data });
        }
        let mut c = Compound {
            gw: self,
            who,
            minor,
            current: None,
            saved: None,
            current_stateid: None,
            saved_stateid: None,
            session: None,
            ops: count,
            request_len: args.len(),
            sequenced: None,
        };
        let mut done = 0;
        let mut last = Status::OK;
        let limit = if count > MAX_OPS { 0 } else { count };
        if limit == 0 && count > 0 {
            // Too many operations: the first is answered with the error (4.0's RESOURCE).
            let status = if minor == 0 { Status::RESOURCE } else { Status::TOO_MANY_OPS };
            let opnum = r.u32().unwrap_or(op::ILLEGAL);
            w.u32(opnum);
            w.u32(status.0);
            done = 1;
            last = status;
        }
        for index in 0..limit {
            let Ok(mut opnum) = r.u32() else {
                // Fewer operations than counted: the next is undecodable.
                w.u32(op::ILLEGAL);
                w.u32(Status::BADXDR.0);
                done += 1;
                last = Status::BADXDR;
                break;
            };
            if !known(opnum, minor) {
                opnum = op::ILLEGAL;
            }
            w.u32(opnum);
            let status_at = w.position();
            w.u32(0);
            let body_at = w.position();
            let outcome = match c.sequence_rules(opnum, index, count) {
                Err(e) => Err(e),
                Ok(()) => c.run(opnum, &mut r, &mut w).and_then(|done| match c.reply_too_big(w.len()) {
                    Some(status) => Err(status.into()),
                    None => Ok(done),
                }),
            };
            done += 1;
            if let Some((client, owner)) = c.sequenced.take() {
                let (status, body) = match &outcome {
                    Ok(_) => (Status::OK, w.packed[body_at..].to_vec()),
                    Err(fail) => (fail.status, fail.body.clone()),
                };
                self.v4.remember_reply(client, &owner, status, body);
            }
            match outcome {
                Ok(Some(replay)) => {
                    // A retried request: its cached reply is the whole answer.
                    let mut packed = crate::rpc::result_buffer(replay.len());
                    packed.extend_from_slice(&replay);
                    return Some(packed.into());
                }
                Ok(None) => {}
                Err(fail) => {
                    w.truncate(body_at);
                    w.set_u32(status_at, fail.status.0);
                    w.fixed(&fail.body);
                    last = fail.status;
                    debug!(opnum, status = fail.status.0, "NFSv4 operation failed");
                    break;
                }
            }
        }
        // The header's words are in the packed part; a READ's data pieces stay where they are.
        w.set_u32(header, last.0);
        w.set_u32(count_at, done);
        let mut record = Record { packed: w.packed, data: w.data };
        if let Some(s) = c.session.take() {
            c.finish_session(s, &mut record);
        }
        Some(record)
    }
}

/// Whether `opnum` is an operation of minor version `minor` (others are OP_ILLEGAL).
fn known(opnum: u32, minor: u32) -> bool {
    match minor {
        0 => (op::ACCESS..=op::RELEASE_LOCKOWNER).contains(&opnum),
        _ => (op::ACCESS..=op::RECLAIM_COMPLETE).contains(&opnum),
    }
}

impl Compound<'_> {
    /// NFSv4.1's rules for where SEQUENCE stands (RFC 8881 section 2.10.6.4).
    fn sequence_rules(&self, opnum: u32, index: u32, count: u32) -> OpResult {
        if self.minor == 0 {
            return Ok(());
        }
        let alone = matches!(
            opnum,
            op::EXCHANGE_ID
                | op::CREATE_SESSION
                | op::DESTROY_SESSION
                | op::BIND_CONN_TO_SESSION
                | op::DESTROY_CLIENTID
        );
        match (index, opnum) {
            (0, op::SEQUENCE) => Ok(()),
            (_, op::SEQUENCE) => Err(Status::SEQUENCE_POS.into()),
            (0, _) if alone && count == 1 => Ok(()),
            (0, _) if alone => Err(Status::NOT_ONLY_OP.into()),
            (0, op::ILLEGAL) => Ok(()),
            (0, _) => Err(Status::OP_NOT_IN_SESSION.into()),
            _ => Ok(()),
        }
    }

    /// Whether a reply grown to `len` bytes is past what the session allows: its largest
    /// reply, or, when the client asked for it to be cached, the largest cached one (RFC 8881
    /// section 2.10.6.4). The operation that crossed the line is answered with the error in
    /// place of its result. It has run: a change whose reply does not fit is made, as when a
    /// reply is lost (Linux's server estimates sizes first; our replies to changes are small).
    fn reply_too_big(&self, len: usize) -> Option<Status> {
        let s = self.session.as_ref()?;
        if len > s.session.max_response as usize {
            Some(Status::REP_TOO_BIG)
        } else if s.cache && len > s.session.max_cached as usize {
            Some(Status::REP_TOO_BIG_TO_CACHE)
        } else {
            None
        }
    }

    /// Runs one operation, its arguments read from `r` and its result body packed into `w`.
    /// `Ok(Some(reply))` is a SEQUENCE that found the request already answered.
    fn run(&mut self, opnum: u32, r: &mut Reader<'_>, w: &mut Writer) -> OpResult<Option<Vec<u8>>> {
        let v40 = self.minor == 0;
        match opnum {
            op::ACCESS => self.access(r, w)?,
            op::CLOSE => self.close(r, w)?,
            op::COMMIT => self.commit(r, w)?,
            op::CREATE => self.create(r, w)?,
            op::DELEGPURGE => return Err(Status::NOTSUPP.into()),
            op::DELEGRETURN => return Err(Status::BAD_STATEID.into()),
            op::GETATTR => self.getattr(r, w)?,
            op::GETFH => self.getfh(w)?,
            op::LINK => self.link(r, w)?,
            op::LOCK => self.lock(r, w)?,
            op::LOCKT => self.lockt(r)?,
            op::LOCKU => self.locku(r, w)?,
            op::LOOKUP => self.lookup(r)?,
            op::LOOKUPP => self.lookupp()?,
            op::NVERIFY => self.verify(r, false)?,
            op::OPEN => self.open(r, w)?,
            op::OPENATTR => return Err(Status::NOTSUPP.into()),
            op::OPEN_CONFIRM if v40 => self.open_confirm(r, w)?,
            op::OPEN_DOWNGRADE => self.open_downgrade(r, w)?,
            op::PUTFH => self.putfh(r)?,
            op::PUTPUBFH | op::PUTROOTFH => self.putrootfh()?,
            op::READ => self.read(r, w)?,
            op::READDIR => self.readdir(r, w)?,
            op::READLINK => self.readlink(w)?,
            op::REMOVE => self.remove(r, w)?,
            op::RENAME => self.rename(r, w)?,
            op::RENEW if v40 => self.renew(r)?,
            op::RESTOREFH => self.restorefh()?,
            op::SAVEFH => self.savefh()?,
            op::SECINFO => self.secinfo(r, w)?,
            op::SETATTR => self.setattr(r, w)?,
            op::SETCLIENTID if v40 => self.setclientid(r, w)?,
            op::SETCLIENTID_CONFIRM if v40 => self.setclientid_confirm(r)?,
            op::VERIFY => self.verify(r, true)?,
            op::WRITE => self.write(r, w)?,
            op::RELEASE_LOCKOWNER if v40 => self.release_lockowner(r)?,
            op::BACKCHANNEL_CTL => self.backchannel_ctl(r)?,
            op::BIND_CONN_TO_SESSION => self.bind_conn_to_session(r, w)?,
            op::EXCHANGE_ID => self.exchange_id(r, w)?,
            op::CREATE_SESSION => self.create_session(r, w)?,
            op::DESTROY_SESSION => self.destroy_session(r)?,
            op::FREE_STATEID => self.free_stateid(r)?,
            op::SECINFO_NO_NAME => self.secinfo_no_name(r, w)?,
            op::SEQUENCE => return self.sequence(r, w),
            op::TEST_STATEID => self.test_stateid(r, w)?,
            op::DESTROY_CLIENTID => self.destroy_clientid(r)?,
            op::RECLAIM_COMPLETE => self.reclaim_complete(r)?,
            op::ILLEGAL => return Err(Status::OP_ILLEGAL.into()),
            // The 4.0-only operations in 4.1, and 4.1's delegations, layouts, devices and
            // backchannel (no delegation or layout is ever granted).
            _ => return Err(Status::NOTSUPP.into()),
        }
        Ok(None)
    }

    // ----- shared helpers ------------------------------------------------------------------

    fn handle_bytes(&self, fh: Fh) -> Vec<u8> {
        self.gw.handles.encode(fh.ino, fh.generation)
    }

    /// The object a handle names: STALE if it is gone, BADHANDLE if it is not ours.
    fn decode_fh(&self, bytes: &[u8]) -> OpResult<Fh> {
        let (ino, generation) = self.gw.handles.decode(bytes).map_err(|e| match e {
            BadHandle::Malformed => Status::BADHANDLE,
            BadHandle::OtherVolume => Status::STALE,
        })?;
        Ok(Fh { ino, generation })
    }

    fn resolve(&self, fh: Fh) -> OpResult<Attr> {
        crate::checks::live(&self.gw.fs, fh.ino, fh.generation)
            .map_err(|e| e.map_or(Status::STALE.into(), status::Fail::from))
    }

    /// The current file handle's object.
    fn current(&self) -> OpResult<Attr> {
        self.resolve(self.current.ok_or(Status::NOFILEHANDLE)?)
    }

    fn current_dir(&self) -> OpResult<Attr> {
        let attr = self.current()?;
        match attr.kind {
            FileKind::Dir => Ok(attr),
            FileKind::Symlink => Err(Status::SYMLINK.into()),
            _ => Err(Status::NOTDIR.into()),
        }
    }

    fn set_current(&mut self, attr: &Attr) {
        self.current = Some(Fh { ino: attr.ino, generation: attr.generation });
        self.current_stateid = None;
    }

    fn writable(&self) -> OpResult {
        if self.gw.export.read_only {
            return Err(Status::ROFS.into());
        }
        Ok(())
    }

    /// The client id the COMPOUND speaks for: its session's (4.1), or the one given (4.0).
    fn session_client(&self) -> Option<u64> {
        self.session.as_ref().map(|s| s.session.client)
    }

    /// Ends a SEQUENCE'd COMPOUND: frees its slot, with the reply kept if it was asked for.
    fn finish_session(&self, s: InSession, record: &mut Record) {
        // Measured before copying: a reply too big to cache (a READ's) is not copied at all.
        let len = record.len() - crate::rpc::SUCCESS_HEADER;
        let cached = (s.cache && len <= s.session.max_cached as usize).then(|| {
            let mut reply = record.packed[crate::rpc::SUCCESS_HEADER..].to_vec();
            for piece in &record.data {
                reply.extend_from_slice(piece);
            }
            reply
        });
        s.session.finish(s.slot, cached);
    }
}

/// A name a client sent (component4): UTF-8 is not required of names (Linux does not check),
/// but an empty name, one with a slash or a NUL, and one over 255 bytes are refused.
fn component<'a>(r: &mut Reader<'a>) -> OpResult<&'a [u8]> {
    let name = r.opaque(4096)?;
    if name.is_empty() {
        return Err(Status::INVAL.into());
    }
    if name.len() > 255 {
        return Err(Status::NAMETOOLONG.into());
    }
    if name.contains(&b'/') || name.contains(&0) {
        return Err(Status::BADNAME.into());
    }
    Ok(name)
}

/// A name a new entry may take: "." and ".." are not names in NFSv4.
fn new_component<'a>(r: &mut Reader<'a>) -> OpResult<&'a [u8]> {
    match component(r)? {
        b"." | b".." => Err(Status::BADNAME.into()),
        name => Ok(name),
    }
}

fn stateid(r: &mut Reader<'_>) -> OpResult<Stateid> {
    Ok(Stateid { seqid: r.u32()?, other: r.fixed()? })
}

fn put_stateid(w: &mut Writer, id: &Stateid) {
    w.u32(id.seqid);
    w.fixed(&id.other);
}

/// A change_info4 for a directory changed by the operation: atomic, with the change
/// attribute before and after.
fn change_info(w: &mut Writer, before: &Attr, after: Option<&Attr>) {
    w.bool(after.is_some());
    w.u64(attrs::change_of(before));
    w.u64(after.map_or(attrs::change_of(before), attrs::change_of));
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, OnceLock};

    use elasticfs_core::metadata::{MetaStore, SledStore, Superblock};
    use elasticfs_core::{open_object_store, ChunkStore, FileSystem, FsConfig, Identity};
    use proptest::prelude::*;

    use super::*;
    use crate::ExportConfig;

    /// One gateway over a fresh file system (sled in a temporary directory, an in-memory
    /// bucket), shared by the cases.
    fn gateway() -> &'static Arc<Gateway> {
        static GATEWAY: OnceLock<(tempfile::TempDir, Arc<Gateway>)> = OnceLock::new();
        &GATEWAY
            .get_or_init(|| {
                let dir = tempfile::tempdir().unwrap();
                let sb = Superblock::new("compound", 1 << 20, 1024, "memory://");
                let meta: Arc<dyn MetaStore> =
                    Arc::new(SledStore::format(&dir.path().join("meta"), &sb, 0, 0).unwrap());
                let store = open_object_store("memory://").unwrap();
                let fs = FileSystem::new(meta, ChunkStore::new(store, 0), FsConfig::default()).unwrap();
                (dir, Gateway::new(Arc::new(fs), ExportConfig::default()))
            })
            .1
    }

    fn args(minor: u32, ops: &[(u32, Vec<u32>)]) -> Vec<u8> {
        let mut w = Writer::default();
        w.opaque(b"prop");
        w.u32(minor);
        w.u32(ops.len() as u32);
        for (op, words) in ops {
            w.u32(*op);
            words.iter().for_each(|v| w.u32(*v));
        }
        w.packed
    }

    /// A 4.1 session of the shared gateway, and the next sequence id of its slot 0.
    fn session() -> &'static ([u8; 16], std::sync::atomic::AtomicU32) {
        static SESSION: OnceLock<([u8; 16], std::sync::atomic::AtomicU32)> = OnceLock::new();
        SESSION.get_or_init(|| {
            let mut exchange = Writer::default();
            exchange.fixed(&[1; 8]);
            exchange.opaque(b"property-test");
            [0, 0, 0].into_iter().for_each(|v| exchange.u32(v)); // flags, SP4_NONE, no impl id
            let reply = run_one(1, op::EXCHANGE_ID, &exchange.packed);
            let mut r = Reader::new(&reply);
            let client = r.u64().unwrap();
            let mut create = Writer::default();
            create.u64(client);
            create.u32(r.u32().unwrap());
            create.u32(0);
            for _ in 0..2 {
                [0, 1 << 20, 1 << 20, 4096, 16, 4, 0].into_iter().for_each(|v| create.u32(v));
            }
            [0x4000_0000, 1, 0].into_iter().for_each(|v| create.u32(v)); // program, AUTH_NONE
            let reply = run_one(1, op::CREATE_SESSION, &create.packed);
            (reply[..16].try_into().unwrap(), std::sync::atomic::AtomicU32::new(1))
        })
    }

    /// Runs one operation alone and returns its result body (it must succeed).
    fn run_one(minor: u32, opnum: u32, arguments: &[u8]) -> Vec<u8> {
        let mut w = Writer::default();
        w.opaque(b"prop");
        w.u32(minor);
        w.u32(1);
        w.u32(opnum);
        w.fixed(arguments);
        let record = gateway().compound(&w.packed, &Identity::root()).unwrap();
        assert_eq!(header(&record), (0, 1), "{opnum} failed");
        // status, tag "prop", count, then the result's opnum and status.
        record.packed[crate::rpc::SUCCESS_HEADER + 24..].to_vec()
    }

    /// What a COMPOUND of `minor` starts with so that its operations get to run: PUTROOTFH,
    /// after a SEQUENCE of the shared session in 4.1.
    fn prefix(minor: u32) -> Vec<(u32, Vec<u32>)> {
        let mut ops = Vec::new();
        if minor == 1 {
            let (id, next) = session();
            let seqid = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let mut words: Vec<u32> =
                id.chunks(4).map(|c| u32::from_be_bytes(c.try_into().unwrap())).collect();
            words.extend([seqid, 0, 0, 0]);
            ops.push((op::SEQUENCE, words));
        }
        ops.push((op::PUTROOTFH, Vec::new()));
        ops
    }

    /// The reply's status and result count, checked for shape.
    fn header(record: &Record) -> (u32, u32) {
        let mut r = Reader::new(&record.packed[crate::rpc::SUCCESS_HEADER..]);
        let status = r.u32().unwrap();
        assert_eq!(r.opaque(MAX_TAG).unwrap(), b"prop");
        (status, r.u32().unwrap())
    }

    #[test]
    fn a_valid_compound_is_answered_in_full() {
        let record =
            gateway().compound(&args(0, &[(op::PUTROOTFH, vec![]), (op::GETFH, vec![])]), &Identity::root());
        assert_eq!(header(&record.unwrap()), (0, 2));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// Operations of every number with arguments of random words (small ones, which reach
        /// past the first length checks, and any), cut anywhere: every COMPOUND whose header
        /// decodes gets a well-formed reply with no more results than operations, whose last
        /// status is the COMPOUND's; nothing panics.
        #[test]
        fn any_compound_gets_a_well_formed_reply(
            minor in 0u32..3,
            ops in proptest::collection::vec(
                (0u32..64, proptest::collection::vec(prop_oneof![0u32..40, any::<u32>()], 0..10)),
                0..6,
            ),
            cut in any::<proptest::sample::Index>(),
        ) {
            let ops: Vec<_> = if minor <= 1 { prefix(minor).into_iter().chain(ops).collect() } else { ops };
            let full = args(minor, &ops);
            let cut = cut.index(full.len() + 1);
            for input in [&full[..], &full[..cut]] {
                let Some(record) = gateway().compound(input, &Identity::root()) else { continue };
                let (status, count) = header(&record);
                prop_assert!(count as usize <= ops.len().max(1));
                if minor > 1 {
                    prop_assert_eq!((status, count), (Status::MINOR_VERS_MISMATCH.0, 0));
                }
            }
        }
    }
}
