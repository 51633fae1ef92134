//! Byte-range locks: LOCK, LOCKT, LOCKU and RELEASE_LOCKOWNER. The locks live in the metadata
//! store's lock table (through the engine), so an NFSv4 client's locks and a FUSE mount's
//! `fcntl` locks exclude each other, across gateways; the gateway keeps only the lock
//! stateids. A conflict is answered at once with NFS4ERR_DENIED: clients poll for blocking
//! locks (READW/WRITEW), as RFC 8881 section 9.6 allows.

use elasticfs_core::metadata::{Ino, LockKind, LockRecord, LockRequest};

use super::state::{lock_key, HeldLocks, OwnerSeq, Released, Stateid};
use super::status::{Fail, OpResult, Status};
use super::xdr::{Reader, Writer};
use super::{put_stateid, stateid, Compound};
use crate::Gateway;

const READ_LT: u32 = 1;
const WRITE_LT: u32 = 2;
const READW_LT: u32 = 3;
const WRITEW_LT: u32 = 4;

/// The lock kind of a nfs_lock_type4.
fn kind_of(locktype: u32) -> OpResult<LockKind> {
    match locktype {
        READ_LT | READW_LT => Ok(LockKind::Read),
        WRITE_LT | WRITEW_LT => Ok(LockKind::Write),
        _ => Err(Status::INVAL.into()),
    }
}

/// The inclusive byte range of an offset and a length (u64::MAX: to the end of the file).
fn range(offset: u64, length: u64) -> OpResult<(u64, u64)> {
    match length {
        0 => Err(Status::INVAL.into()),
        u64::MAX => Ok((offset, u64::MAX)),
        _ => Ok((offset, offset.checked_add(length - 1).ok_or(Status::INVAL)?)),
    }
}

/// NFS4ERR_DENIED with the lock in the way (LOCK4denied). Its owner may be a FUSE process or
/// another gateway's client: it is named by the lock table's owner number.
fn denied(held: Option<LockRecord>) -> Fail {
    let mut w = Writer::default();
    if let Some(l) = held {
        w.u64(l.start);
        // A lock to the end of the file ends at u64::MAX (NFS) or OFFSET_MAX (the kernel's).
        w.u64(if l.end >= i64::MAX as u64 { u64::MAX } else { l.end - l.start + 1 });
        w.u32(if l.kind == LockKind::Write { WRITE_LT } else { READ_LT });
        w.u64(0);
        w.opaque(&l.owner.to_be_bytes());
    } else {
        // Released between the refusal and the test: the client simply asks again.
        return Status::DELAY.into();
    }
    Fail { status: Status::DENIED, body: w.packed }
}

/// The 4.0 sequence space of a lock-owner, apart from the open-owners'.
fn lock_owner_seq_key(owner: &[u8]) -> Vec<u8> {
    [b"lock-owner:".as_slice(), owner].concat()
}

impl Gateway {
    /// At start: takes over what other processes serving the addresses in `labels` held (this
    /// gateway's own address, killed and restarted on this host, first; then the addresses of
    /// failed gateways it replaces, from any host) and, if there were any, opens the grace
    /// period in which their clients reclaim their opens and locks. Returns the number of
    /// locks taken over.
    pub fn take_over(&self, own: &str, failed: &[String]) -> elasticfs_core::FsResult<Option<usize>> {
        let mut adopted: Option<Vec<_>> = self.fs.take_over_sessions(own, false)?;
        for label in failed {
            if let Some(locks) = self.fs.take_over_sessions(label, true)? {
                adopted.get_or_insert_with(Vec::new).extend(locks);
            }
        }
        let Some(adopted) = adopted else { return Ok(None) };
        let count = adopted.len();
        self.v4.start_grace(adopted);
        Ok(Some(count))
    }

    /// Lets go of what ended NFSv4 state held: its engine handles (the last open of a file
    /// here closes it, committing its writes) and its locks.
    pub(crate) fn let_go(&self, released: Released) {
        for open in released.opens {
            let ino = open.ino;
            drop(open);
            if !self.v4.is_open(ino) {
                if let Err(e) = self.open.close(ino) {
                    tracing::warn!(ino, "closing a file an NFSv4 client left open: {e}");
                    self.writes_lost();
                }
            }
        }
        self.release_locks(released.locks);
    }

    /// Releases locks of NFSv4 state that ended (a CLOSE, an expired or replaced client).
    pub(crate) fn release_locks(&self, locks: HeldLocks) {
        for (ino, key) in locks {
            if let Err(e) = self.fs.release_locks(ino, key) {
                tracing::warn!(ino, "releasing an NFSv4 client's locks: {e}");
            }
        }
    }
}

impl Compound<'_> {
    pub(super) fn lock(&mut self, r: &mut Reader<'_>, w: &mut Writer) -> OpResult {
        let kind = kind_of(r.u32()?)?;
        let reclaim = r.bool()?;
        let (start, end) = range(r.u64()?, r.u64()?)?;
        let (lock_id, key) = if r.bool()? {
            // A new lock-owner, through one of its client's opens.
            let open_seqid = r.u32()?;
            let open_id = self.real_stateid(stateid(r)?)?;
            let lock_seqid = r.u32()?;
            let named_client = r.u64()?;
            let owner = r.opaque(1024)?;
            let client = self.owner_client(named_client)?;
            let (open_client, open_owner) =
                self.gw.v4.with_open(&open_id, self.minor, |o| Ok((o.client, o.owner.clone())))?;
            if let Some(replay) = self.owner_seqid(open_client, &open_owner, open_seqid)? {
                return replay.answer(w);
            }
            // A new lock-owner starts its sequence here (again, if an earlier LOCK that would
            // have made it was refused).
            if self.minor == 0 {
                self.gw.v4.with_client(client, |c| {
                    c.owners.insert(lock_owner_seq_key(owner), OwnerSeq { seqid: lock_seqid, reply: None });
                    Ok(())
                })?;
            }
            self.gw.v4.lock_state(client, owner, &open_id, self.minor)?
        } else {
            let lock_id = self.real_stateid(stateid(r)?)?;
            let lock_seqid = r.u32()?;
            let (client, owner, key) =
                self.gw.v4.with_lock(&lock_id, self.minor, |l| Ok((l.client, l.owner.clone(), l.key)))?;
            if let Some(replay) = self.owner_seqid(client, &lock_owner_seq_key(&owner), lock_seqid)? {
                return replay.answer(w);
            }
            (lock_id, key)
        };
        // A reclaim names a lock the gateway took over from its killed process, held under
        // the same key.
        self.may_take_state(reclaim)?;
        let (ino, handle) = self.lock_target(&lock_id)?;
        if reclaim {
            self.gw.v4.reclaim(ino, key)?;
        }
        let req = LockRequest { owner: key, pid: 0, kind, start, end };
        match self.gw.fs.set_lock(handle, ino, &req, false) {
            Ok(()) => {}
            Err(e) if e.errno == libc::EAGAIN => return Err(denied(self.gw.fs.test_lock(ino, &req)?)),
            Err(e) => return Err(e.into()),
        }
        let next = self.gw.v4.bump_lock(&lock_id.other)?;
        put_stateid(w, &next);
        self.current_stateid = Some(next);
        Ok(())
    }

    /// Whether an OPEN or LOCK, a reclaim or not, may take state now (RFC 8881 sections
    /// 8.4.2 and 18.51.3). In the grace period after a restart only reclaims are served. A
    /// 4.1 client reclaims until its RECLAIM_COMPLETE, and takes new state only after it.
    pub(super) fn may_take_state(&self, reclaim: bool) -> OpResult {
        let in_grace = self.gw.v4.in_grace();
        let (may_reclaim, may_take) = match self.session_client() {
            Some(client) => {
                let complete = self.gw.v4.with_client(client, |c| Ok(c.reclaimed))?;
                (in_grace && !complete, !in_grace && complete)
            }
            None => (in_grace, !in_grace),
        };
        match reclaim {
            true if !may_reclaim => Err(Status::NO_GRACE.into()),
            false if !may_take => Err(Status::GRACE.into()),
            _ => Ok(()),
        }
    }

    pub(super) fn lockt(&mut self, r: &mut Reader<'_>) -> OpResult {
        let kind = kind_of(r.u32()?)?;
        let (start, end) = range(r.u64()?, r.u64()?)?;
        let named_client = r.u64()?;
        let owner = r.opaque(1024)?;
        let client = self.session_client().unwrap_or(named_client);
        let file = self.current()?;
        if file.kind != elasticfs_core::metadata::FileKind::File {
            return Err(Status::INVAL.into());
        }
        if self.gw.v4.in_grace() {
            return Err(Status::GRACE.into());
        }
        let client_owner = self.gw.v4.client_owner(client)?;
        let req = LockRequest { owner: lock_key(&client_owner, owner), pid: 0, kind, start, end };
        match self.gw.fs.test_lock(file.ino, &req)? {
            None => Ok(()),
            held => Err(denied(held)),
        }
    }

    pub(super) fn locku(&mut self, r: &mut Reader<'_>, w: &mut Writer) -> OpResult {
        let _kind = kind_of(r.u32()?)?;
        let seqid = r.u32()?;
        let lock_id = self.real_stateid(stateid(r)?)?;
        let (start, end) = range(r.u64()?, r.u64()?)?;
        let (client, owner, key) =
            self.gw.v4.with_lock(&lock_id, self.minor, |l| Ok((l.client, l.owner.clone(), l.key)))?;
        if let Some(replay) = self.owner_seqid(client, &lock_owner_seq_key(&owner), seqid)? {
            return replay.answer(w);
        }
        let (ino, handle) = self.lock_target(&lock_id)?;
        let req = LockRequest { owner: key, pid: 0, kind: LockKind::Unlock, start, end };
        self.gw.fs.set_lock(handle, ino, &req, false)?;
        let next = self.gw.v4.bump_lock(&lock_id.other)?;
        put_stateid(w, &next);
        Ok(())
    }

    /// RELEASE_LOCKOWNER (4.0): the owner's locks go with its lock stateids.
    pub(super) fn release_lockowner(&mut self, r: &mut Reader<'_>) -> OpResult {
        let client = r.u64()?;
        let owner = r.opaque(1024)?;
        self.gw.v4.with_client(client, |_| Ok(()))?;
        let locks = self.gw.v4.release_lock_owner(client, owner);
        self.gw.release_locks(locks);
        Ok(())
    }

    /// The file and engine handle a lock stateid's locks are set through.
    fn lock_target(&self, lock_id: &Stateid) -> OpResult<(Ino, u64)> {
        let (ino, open) = self.gw.v4.with_lock(lock_id, 1, |l| Ok((l.ino, l.open)))?;
        Ok((ino, self.gw.v4.open_handle(&open)?.fh))
    }
}
