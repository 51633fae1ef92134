//! NFSv4 state (RFC 8881 sections 2.4, 2.10, 8 and 9; RFC 7530 section 9): clients and their
//! leases, sessions with their slot tables and reply caches, and the stateids of opens.
//!
//! Held in the gateway's memory: a restarted gateway answers the old client ids and stateids
//! with STALE_CLIENTID / STALE_STATEID (their first word is the gateway's boot time), and the
//! clients establish their state again.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use elasticfs_core::metadata::Ino;

use super::open_table::OpenTable;
use super::status::{OpResult, Status};
use crate::open_files::OpenHandle;

/// Most slots a session is granted: requests in flight at once per session.
pub const MAX_SLOTS: u32 = 64;
/// Most clients held at once: past it, EXCHANGE_ID and SETCLIENTID answer RESOURCE/DELAY
/// until leases expire, so a flood of clients cannot grow the gateway without bound.
const MAX_CLIENTS: usize = 4096;
/// Most sessions per client.
const MAX_SESSIONS_PER_CLIENT: usize = 16;
/// Most opens (stateids) per client.
pub const MAX_OPENS_PER_CLIENT: usize = 65_536;

/// A stateid4: a sequence number and twelve bytes naming the state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Stateid {
    pub seqid: u32,
    pub other: [u8; 12],
}

impl Stateid {
    /// NFSv4.1: "the current stateid" of the COMPOUND.
    pub const CURRENT: Stateid = Stateid { seqid: 1, other: [0; 12] };

    /// The anonymous stateid (all zeros) and the read bypass (all ones): I/O outside any open.
    pub fn is_special(&self) -> bool {
        self.other == [0; 12] || self.other == [0xff; 12]
    }
}

/// An open: one open-owner's opening of one file, with its share reservation.
pub struct Open {
    pub client: u64,
    pub owner: Vec<u8>,
    pub ino: Ino,
    pub seqid: u32,
    pub access: u32,
    pub deny: u32,
    /// The engine handle the file is read and written through while any open of it lasts.
    pub handle: Arc<OpenHandle>,
}

/// A lock-owner's locks on one file (its lock stateid): the locks themselves are in the
/// metadata store's lock table, under `key`, where every client of the file system sees them.
pub struct LockState {
    pub client: u64,
    pub owner: Vec<u8>,
    pub key: u64,
    pub ino: Ino,
    /// The open the lock-owner came through (its CLOSE releases the locks).
    pub open: [u8; 12],
    pub seqid: u32,
}

/// Locks to release in the engine: (file, lock owner key).
pub type HeldLocks = Vec<(Ino, u64)>;

/// What a client that went away held: its opens (their handles to let go) and its locks.
#[derive(Default)]
pub struct Released {
    pub opens: Vec<Open>,
    pub locks: HeldLocks,
}

pub struct Client {
    pub owner: Vec<u8>,
    pub verifier: [u8; 8],
    /// Who made the record (AUTH_SYS uid and gid): another principal may not take it over.
    pub principal: Principal,
    pub confirmed: bool,
    /// NFSv4.0: the SETCLIENTID_CONFIRM verifier.
    pub confirm: [u8; 8],
    pub minor: u32,
    /// NFSv4.1: the sequence id CREATE_SESSION expects next, and the reply to the last one.
    pub create_seq: u32,
    pub last_create: Option<(u32, Vec<u8>)>,
    last_seen: Instant,
    pub sessions: Vec<[u8; 16]>,
    /// NFSv4.0: each open-owner's and lock-owner's last seqid and the reply it got.
    pub owners: HashMap<Vec<u8>, OwnerSeq>,
    /// NFSv4.1: the client sent RECLAIM_COMPLETE (it reclaims nothing more, and may now take
    /// new opens and locks).
    pub reclaimed: bool,
}

/// An AUTH_SYS caller, as far as client records go: its uid and gid.
pub type Principal = (u32, u32);

/// What EXCHANGE_ID and SETCLIENTID answer: the client id, whether its record is confirmed,
/// 4.0's confirm verifier and 4.1's next CREATE_SESSION sequence id.
pub struct Exchanged {
    pub id: u64,
    pub confirmed: bool,
    pub confirm: [u8; 8],
    pub create_seq: u32,
}

impl Client {
    /// What EXCHANGE_ID and SETCLIENTID answer for this record, whose id is `id`.
    fn exchanged(&self, id: u64) -> Exchanged {
        Exchanged { id, confirmed: self.confirmed, confirm: self.confirm, create_seq: self.create_seq }
    }
}

/// NFSv4.0: where an owner's sequence stands (RFC 7530 section 9.1.7): its last seqid, and
/// the status and result body that request got, for a retransmission of it.
pub struct OwnerSeq {
    pub seqid: u32,
    pub reply: Option<(Status, Vec<u8>)>,
}

/// One slot of a session's table: the last request's sequence id and, if the client asked
/// for it to be cached, its whole reply.
#[derive(Default)]
pub struct Slot {
    pub seqid: u32,
    pub busy: bool,
    pub reply: Option<Vec<u8>>,
}

pub struct Session {
    pub id: [u8; 16],
    pub client: u64,
    pub slots: Mutex<Vec<Slot>>,
    pub max_request: u32,
    pub max_response: u32,
    pub max_cached: u32,
    pub max_ops: u32,
}

#[derive(Default)]
struct Tables {
    clients: HashMap<u64, Client>,
    sessions: HashMap<[u8; 16], Arc<Session>>,
    opens: OpenTable,
    locks: HashMap<[u8; 12], LockState>,
    /// NFSv4.0: the owners of recently closed opens, so that a retransmitted CLOSE finds the
    /// owner whose reply it gets (oldest first; at most `RECENTLY_CLOSED`).
    closed: std::collections::VecDeque<([u8; 12], u64, Vec<u8>)>,
}

/// Closed opens remembered for retransmitted CLOSEs.
const RECENTLY_CLOSED: usize = 4096;

pub struct State {
    /// The gateway's start, in seconds: the first word of its client ids and stateids.
    boot: u32,
    pub lease: Duration,
    next: AtomicU64,
    tables: Mutex<Tables>,
    /// After a restart: the grace period in which clients reclaim what they held.
    grace: Mutex<Option<Grace>>,
}

/// The grace period after a restart (RFC 8881 section 8.4.2): until `until`, only reclaims
/// are served; the locks taken over from the killed process stay held (excluding every other
/// client of the file system) until reclaimed or the period ends.
struct Grace {
    until: Instant,
    adopted: HashSet<(Ino, u64)>,
    reclaimed: HashSet<(Ino, u64)>,
}

/// What happened to a SEQUENCE's slot.
pub enum SlotUse {
    /// A new request: run it.
    New { cache: bool },
    /// A retry of the last request, whose cached reply this is.
    Replay(Vec<u8>),
}

impl State {
    pub fn new(lease: Duration) -> Self {
        let boot = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_secs() as u32);
        State { boot, lease, next: AtomicU64::new(1), tables: Mutex::default(), grace: Mutex::default() }
    }

    fn fresh(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed)
    }

    fn client_id(&self) -> u64 {
        (u64::from(self.boot) << 32) | (self.fresh() & 0xffff_ffff)
    }

    fn verifier(&self) -> [u8; 8] {
        (self.fresh() ^ (u64::from(self.boot) << 24)).to_be_bytes()
    }

    pub fn lease_secs(&self) -> u32 {
        self.lease.as_secs() as u32
    }

    // ----- grace -----------------------------------------------------------------------------

    /// Starts the grace period (one lease long) with the locks taken over from the process
    /// before this one.
    pub fn start_grace(&self, adopted: Vec<(Ino, u64)>) {
        let until = Instant::now() + self.lease;
        let adopted = adopted.into_iter().collect();
        *self.grace.lock().unwrap() = Some(Grace { until, adopted, reclaimed: HashSet::new() });
    }

    pub fn in_grace(&self) -> bool {
        self.grace.lock().unwrap().as_ref().is_some_and(|g| Instant::now() < g.until)
    }

    /// A client reclaims its lock `key` on `ino`: RECLAIM_BAD unless the gateway took that
    /// lock over from its killed process (the client did not hold it, RFC 8881 section 8.4.3),
    /// else noted as reclaimed.
    pub fn reclaim(&self, ino: Ino, key: u64) -> OpResult {
        let mut grace = self.grace.lock().unwrap();
        match grace.as_mut() {
            Some(g) if g.adopted.contains(&(ino, key)) => {
                g.reclaimed.insert((ino, key));
                Ok(())
            }
            _ => Err(Status::RECLAIM_BAD.into()),
        }
    }

    /// Ends the grace period once it is over; returns the locks taken over that nobody
    /// reclaimed, for the caller to release.
    pub fn end_grace_if_due(&self) -> HeldLocks {
        let mut grace = self.grace.lock().unwrap();
        match grace.as_ref() {
            Some(g) if Instant::now() >= g.until => {
                let g = grace.take().expect("checked");
                g.adopted.difference(&g.reclaimed).copied().collect()
            }
            _ => Vec::new(),
        }
    }

    // ----- clients -------------------------------------------------------------------------

    /// EXCHANGE_ID (4.1) and SETCLIENTID (4.0) by `principal` (RFC 8881 section 18.35.4, RFC
    /// 7530 section 16.33.5). A client keeps its id while its verifier stays the same; a new
    /// verifier (the client rebooted) gets a new, unconfirmed record, and the old one keeps
    /// its state until the new one is confirmed. An unconfirmed record is replaced. A
    /// confirmed record of another principal is refused (CLID_INUSE) while it holds state, and
    /// replaced otherwise. `update` (4.1's EXCHGID4_FLAG_UPD_CONFIRMED_REC_A) only updates a
    /// confirmed record with the same verifier and principal.
    pub fn exchange(
        &self,
        owner: &[u8],
        verifier: [u8; 8],
        minor: u32,
        principal: Principal,
        update: bool,
    ) -> OpResult<Exchanged> {
        let mut t = self.tables.lock().unwrap();
        let confirmed = record_of(&t, owner, minor, true);
        if update {
            let c = confirmed.and_then(|id| t.clients.get_mut(&id)).ok_or(Status::NOENT)?;
            if c.principal != principal {
                return Err(Status::PERM.into());
            }
            if c.verifier != verifier {
                return Err(Status::NOT_SAME.into());
            }
            c.last_seen = Instant::now();
            return Ok(c.exchanged(confirmed.expect("found")));
        }
        if let Some(id) = confirmed {
            let in_use = has_state(&t, id);
            let c = t.clients.get_mut(&id).expect("found");
            if c.principal != principal {
                if in_use {
                    return Err(Status::CLID_INUSE.into());
                }
                // Nothing held: nothing for the engine to let go.
                drop_client(&mut t, id);
            } else if c.verifier == verifier {
                c.last_seen = Instant::now();
                // 4.0: a SETCLIENTID to update the callback; its confirm verifier is new.
                if minor == 0 {
                    c.confirm = self.verifier();
                }
                return Ok(c.exchanged(id));
            }
        }
        if let Some(id) = record_of(&t, owner, minor, false) {
            drop_client(&mut t, id);
        }
        if t.clients.len() >= MAX_CLIENTS {
            return Err(Status::DELAY.into());
        }
        let id = self.client_id();
        let client = Client {
            owner: owner.to_vec(),
            verifier,
            principal,
            confirmed: false,
            confirm: self.verifier(),
            minor,
            create_seq: 1,
            last_create: None,
            last_seen: Instant::now(),
            sessions: Vec::new(),
            owners: HashMap::new(),
            reclaimed: false,
        };
        let exchanged = client.exchanged(id);
        t.clients.insert(id, client);
        Ok(exchanged)
    }

    /// Keeps the reply to an owner's last sequenced request, for its retransmission.
    pub fn remember_reply(&self, client: u64, owner: &[u8], status: Status, body: Vec<u8>) {
        let mut t = self.tables.lock().unwrap();
        if let Some(seq) = t.clients.get_mut(&client).and_then(|c| c.owners.get_mut(owner)) {
            seq.reply = Some((status, body));
        }
    }

    /// The owner string of client `id`.
    pub fn client_owner(&self, id: u64) -> OpResult<Vec<u8>> {
        self.with_client(id, |c| Ok(c.owner.clone()))
    }

    /// Runs `f` on client `id` and counts as hearing from it (renews its lease).
    pub fn with_client<T>(&self, id: u64, f: impl FnOnce(&mut Client) -> OpResult<T>) -> OpResult<T> {
        let mut t = self.tables.lock().unwrap();
        match t.clients.get_mut(&id) {
            Some(c) => {
                c.last_seen = Instant::now();
                f(c)
            }
            None => Err(Status::STALE_CLIENTID.into()),
        }
    }

    /// SETCLIENTID_CONFIRM by `principal`. Confirming a client's new record ends its old
    /// incarnation: what that held is returned, for the caller to let go.
    pub fn confirm(&self, id: u64, verifier: [u8; 8], principal: Principal) -> OpResult<Released> {
        let mut t = self.tables.lock().unwrap();
        let c = t.clients.get_mut(&id).ok_or(Status::STALE_CLIENTID)?;
        if c.confirm != verifier {
            return Err(Status::STALE_CLIENTID.into());
        }
        if c.principal != principal {
            return Err(Status::CLID_INUSE.into());
        }
        c.last_seen = Instant::now();
        Ok(confirm_record(&mut t, id))
    }

    /// DESTROY_CLIENTID: refused while the client has sessions.
    pub fn destroy_client(&self, id: u64) -> OpResult<Released> {
        let mut t = self.tables.lock().unwrap();
        let Some(c) = t.clients.get(&id) else { return Err(Status::STALE_CLIENTID.into()) };
        if !c.sessions.is_empty() {
            return Err(Status::CLIENTID_BUSY.into());
        }
        Ok(drop_client(&mut t, id))
    }

    /// Clients not heard from for a lease lose their state; returns what they held, for the
    /// caller to close and unlock.
    pub fn expire(&self) -> Released {
        let mut t = self.tables.lock().unwrap();
        let lease = self.lease;
        let gone: Vec<u64> =
            t.clients.iter().filter(|(_, c)| c.last_seen.elapsed() > lease).map(|(id, _)| *id).collect();
        let mut released = Released::default();
        for id in gone {
            let r = drop_client(&mut t, id);
            released.opens.extend(r.opens);
            released.locks.extend(r.locks);
        }
        released
    }

    // ----- sessions ------------------------------------------------------------------------

    /// CREATE_SESSION: a new session of `client`, which it confirms. Confirming a client's
    /// new record ends its old incarnation: what that held is returned, for the caller to
    /// let go.
    pub fn add_session(
        &self,
        client: u64,
        make: impl FnOnce([u8; 16]) -> Session,
    ) -> OpResult<(Arc<Session>, Released)> {
        let mut t = self.tables.lock().unwrap();
        let Some(c) = t.clients.get_mut(&client) else { return Err(Status::STALE_CLIENTID.into()) };
        if c.sessions.len() >= MAX_SESSIONS_PER_CLIENT {
            return Err(Status::RESOURCE.into());
        }
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&client.to_be_bytes());
        id[8..].copy_from_slice(&self.fresh().to_be_bytes());
        c.sessions.push(id);
        let released = confirm_record(&mut t, client);
        let session = Arc::new(make(id));
        t.sessions.insert(id, session.clone());
        Ok((session, released))
    }

    pub fn session(&self, id: &[u8; 16]) -> OpResult<Arc<Session>> {
        let mut t = self.tables.lock().unwrap();
        let session = t.sessions.get(id).cloned().ok_or(Status::BADSESSION)?;
        heard_from(&mut t, session.client);
        Ok(session)
    }

    pub fn destroy_session(&self, id: &[u8; 16]) -> OpResult {
        let mut t = self.tables.lock().unwrap();
        let session = t.sessions.remove(id).ok_or(Status::BADSESSION)?;
        if let Some(c) = t.clients.get_mut(&session.client) {
            c.sessions.retain(|s| s != id);
        }
        Ok(())
    }

    // ----- opens ---------------------------------------------------------------------------

    fn stateid_other(&self) -> [u8; 12] {
        let mut other = [0u8; 12];
        other[..4].copy_from_slice(&self.boot.to_be_bytes());
        other[4..].copy_from_slice(&self.fresh().to_be_bytes());
        other
    }

    /// Checks a share reservation against the opens of `ino`, the owner's own included (RFC
    /// 7530 section 9.9: an owner that denied reading may not then open for reading; Linux's
    /// server and pynfs agree).
    fn share_conflict(t: &Tables, ino: Ino, access: u32, deny: u32) -> bool {
        t.opens.of_file(ino).any(|(_, o)| o.deny & access != 0 || o.access & deny != 0)
    }

    /// Whether an open of `ino` denies `access` (SHARE_ACCESS_READ or _WRITE): I/O outside
    /// any open (the anonymous stateid) is then refused.
    pub fn denied(&self, ino: Ino, access: u32) -> bool {
        self.tables.lock().unwrap().opens.of_file(ino).any(|(_, o)| o.deny & access != 0)
    }

    /// OPEN: the owner's open of `ino` (upgraded if it had one), and its stateid. `handle` is
    /// the engine handle, opened by the caller before the state's lock is taken.
    pub fn open(
        &self,
        client: u64,
        owner: &[u8],
        ino: Ino,
        access: u32,
        deny: u32,
        handle: Arc<OpenHandle>,
    ) -> OpResult<Stateid> {
        let mut t = self.tables.lock().unwrap();
        if Self::share_conflict(&t, ino, access, deny) {
            return Err(Status::SHARE_DENIED.into());
        }
        let own =
            t.opens.of_file(ino).find(|(_, o)| o.client == client && o.owner == owner).map(|(id, _)| *id);
        if let Some(other) = own {
            let open = t.opens.get_mut(&other).expect("found");
            open.access |= access;
            open.deny |= deny;
            open.seqid = open.seqid.wrapping_add(1).max(1);
            return Ok(Stateid { seqid: open.seqid, other });
        }
        if t.opens.count_of(client) >= MAX_OPENS_PER_CLIENT {
            return Err(Status::RESOURCE.into());
        }
        let other = self.stateid_other();
        t.opens.insert(other, Open { client, owner: owner.to_vec(), ino, seqid: 1, access, deny, handle });
        Ok(Stateid { seqid: 1, other })
    }

    /// Why a stateid names no state: it is from before this gateway's start, or not ours.
    fn unknown(&self, id: &Stateid) -> Status {
        if id.other[..4] != self.boot.to_be_bytes() {
            Status::STALE_STATEID
        } else {
            Status::BAD_STATEID
        }
    }

    /// Checks that `id` names a current open (of `ino`), and runs `f` on it.
    pub fn with_open<T>(
        &self,
        id: &Stateid,
        minor: u32,
        f: impl FnOnce(&mut Open) -> OpResult<T>,
    ) -> OpResult<T> {
        let mut t = self.tables.lock().unwrap();
        let open = t.opens.get(&id.other).ok_or_else(|| self.unknown(id))?;
        current(id, open.seqid, minor)?;
        let client = open.client;
        heard_from(&mut t, client);
        let open = t.opens.get_mut(&id.other).expect("found above");
        f(open)
    }

    /// CLOSE: forgets the open and the lock states that came through it, and returns them
    /// (the handle is for the caller to let go, the locks to release).
    pub fn close(&self, id: &Stateid, minor: u32) -> OpResult<(Open, HeldLocks)> {
        self.with_open(id, minor, |_| Ok(()))?;
        let mut t = self.tables.lock().unwrap();
        let open = t.opens.remove(&id.other).expect("checked");
        let locks = remove_locks(&mut t, |l| l.open == id.other);
        if t.closed.len() >= RECENTLY_CLOSED {
            t.closed.pop_front();
        }
        t.closed.push_back((id.other, open.client, open.owner.clone()));
        Ok((open, locks))
    }

    /// The client and owner of a recently closed open (for a retransmitted CLOSE).
    pub fn closed_owner(&self, id: &Stateid) -> Option<(u64, Vec<u8>)> {
        let t = self.tables.lock().unwrap();
        t.closed.iter().rev().find(|(other, ..)| *other == id.other).map(|(_, c, o)| (*c, o.clone()))
    }

    /// The lock state of `owner` (of `client`) on the file of open `open`, made if it has none.
    /// Returns its stateid and engine key.
    pub fn lock_state(
        &self,
        client: u64,
        owner: &[u8],
        open: &Stateid,
        minor: u32,
    ) -> OpResult<(Stateid, u64)> {
        let ino = self.with_open(open, minor, |o| {
            if o.client != client {
                return Err(Status::BAD_STATEID.into());
            }
            Ok(o.ino)
        })?;
        let mut t = self.tables.lock().unwrap();
        if let Some((other, l)) =
            t.locks.iter().find(|(_, l)| l.client == client && l.owner == owner && l.ino == ino)
        {
            return Ok((Stateid { seqid: l.seqid, other: *other }, l.key));
        }
        let key = lock_key(&t.clients.get(&client).ok_or(Status::STALE_CLIENTID)?.owner, owner);
        let other = self.stateid_other();
        t.locks
            .insert(other, LockState { client, owner: owner.to_vec(), key, ino, open: open.other, seqid: 0 });
        Ok((Stateid { seqid: 0, other }, key))
    }

    /// Checks that `id` names a current lock state, and runs `f` on it.
    pub fn with_lock<T>(
        &self,
        id: &Stateid,
        minor: u32,
        f: impl FnOnce(&mut LockState) -> OpResult<T>,
    ) -> OpResult<T> {
        let mut t = self.tables.lock().unwrap();
        let l = t.locks.get_mut(&id.other).ok_or_else(|| self.unknown(id))?;
        current(id, l.seqid, minor)?;
        let client = l.client;
        let result = f(l);
        heard_from(&mut t, client);
        result
    }

    /// Runs `f` on the open a READ or WRITE goes through: the one `id` names, or the one a
    /// lock stateid came through (READ and WRITE may name either). The stateid's seqid is
    /// checked against its own state's.
    pub fn with_io_open<T>(
        &self,
        id: &Stateid,
        minor: u32,
        f: impl FnOnce(&Open) -> OpResult<T>,
    ) -> OpResult<T> {
        let mut t = self.tables.lock().unwrap();
        let (seqid, open) = match t.locks.get(&id.other) {
            Some(lock) => (lock.seqid, lock.open),
            None => (t.opens.get(&id.other).ok_or_else(|| self.unknown(id))?.seqid, id.other),
        };
        current(id, seqid, minor)?;
        let open = t.opens.get(&open).ok_or(Status::BAD_STATEID)?;
        let client = open.client;
        let result = f(open);
        heard_from(&mut t, client);
        result
    }

    /// RELEASE_LOCKOWNER: forgets the owner's lock states; returns the locks to release.
    pub fn release_lock_owner(&self, client: u64, owner: &[u8]) -> HeldLocks {
        remove_locks(&mut self.tables.lock().unwrap(), |l| l.client == client && l.owner == owner)
    }

    /// FREE_STATEID of a lock stateid: forgets it; returns its locks to release.
    pub fn free_lock(&self, id: &Stateid) -> OpResult<HeldLocks> {
        self.with_lock(id, 1, |_| Ok(()))?;
        let removed = self.tables.lock().unwrap().locks.remove(&id.other);
        Ok(removed.map(|l| (l.ino, l.key)).into_iter().collect())
    }

    /// Moves a lock state to its next seqid (after a LOCK or LOCKU); returns the new stateid.
    pub fn bump_lock(&self, other: &[u8; 12]) -> OpResult<Stateid> {
        let mut t = self.tables.lock().unwrap();
        let l = t.locks.get_mut(other).ok_or(Status::BAD_STATEID)?;
        l.seqid = l.seqid.wrapping_add(1).max(1);
        Ok(Stateid { seqid: l.seqid, other: *other })
    }

    /// The engine handle of open `other`.
    pub fn open_handle(&self, other: &[u8; 12]) -> OpResult<Arc<OpenHandle>> {
        let t = self.tables.lock().unwrap();
        Ok(t.opens.get(other).ok_or(Status::BAD_STATEID)?.handle.clone())
    }

    /// Whether another open of `ino` remains (the engine handle stays open until none does).
    pub fn is_open(&self, ino: Ino) -> bool {
        self.tables.lock().unwrap().opens.file_is_open(ino)
    }

    /// TEST_STATEID's answer for one stateid (an open's or a lock state's).
    pub fn test(&self, id: &Stateid) -> Status {
        match self.with_open(id, 1, |_| Ok(())).or_else(|_| self.with_lock(id, 1, |_| Ok(()))) {
            Ok(()) => Status::OK,
            Err(fail) => fail.status,
        }
    }

    /// Whether `id` names a lock state.
    pub fn is_lock(&self, id: &Stateid) -> bool {
        self.tables.lock().unwrap().locks.contains_key(&id.other)
    }
}

/// Checks a stateid's seqid against its state's: an older one is OLD_STATEID, a newer one
/// BAD_STATEID; in NFSv4.1 a seqid of 0 means whatever the current one is.
fn current(id: &Stateid, seqid: u32, minor: u32) -> OpResult {
    if minor >= 1 && id.seqid == 0 {
        return Ok(());
    }
    match id.seqid.cmp(&seqid) {
        std::cmp::Ordering::Less => Err(Status::OLD_STATEID.into()),
        std::cmp::Ordering::Greater => Err(Status::BAD_STATEID.into()),
        std::cmp::Ordering::Equal => Ok(()),
    }
}

/// Whether client `id` holds state another principal may not take away: sessions, opens or
/// locks.
fn has_state(t: &Tables, id: u64) -> bool {
    t.clients.get(&id).is_some_and(|c| !c.sessions.is_empty())
        || t.opens.count_of(id) > 0
        || t.locks.values().any(|l| l.client == id)
}

/// Marks client `id` confirmed; another confirmed record of its owner (an earlier incarnation)
/// goes, with its state.
fn confirm_record(t: &mut Tables, id: u64) -> Released {
    let Some(c) = t.clients.get(&id).filter(|c| !c.confirmed) else { return Released::default() };
    let old = record_of(t, &c.owner, c.minor, true);
    t.clients.get_mut(&id).expect("found").confirmed = true;
    old.map(|old| drop_client(t, old)).unwrap_or_default()
}

/// The confirmed or unconfirmed record of client `owner` of minor version `minor` (there is
/// at most one of each).
fn record_of(t: &Tables, owner: &[u8], minor: u32, confirmed: bool) -> Option<u64> {
    t.clients
        .iter()
        .find(|(_, c)| c.owner == owner && c.minor == minor && c.confirmed == confirmed)
        .map(|(id, _)| *id)
}

/// Counts as hearing from `client`: its lease starts again.
fn heard_from(t: &mut Tables, client: u64) {
    if let Some(c) = t.clients.get_mut(&client) {
        c.last_seen = Instant::now();
    }
}

/// Removes a client with its sessions, opens and lock states; returns what it held.
fn drop_client(t: &mut Tables, id: u64) -> Released {
    if let Some(c) = t.clients.remove(&id) {
        for s in &c.sessions {
            t.sessions.remove(s);
        }
    }
    Released { opens: t.opens.remove_client(id), locks: remove_locks(t, |l| l.client == id) }
}

/// Removes the lock states `which` selects; returns their locks.
fn remove_locks(t: &mut Tables, which: impl Fn(&LockState) -> bool) -> HeldLocks {
    let ids: Vec<[u8; 12]> = t.locks.iter().filter(|(_, l)| which(l)).map(|(k, _)| *k).collect();
    ids.into_iter().filter_map(|k| t.locks.remove(&k)).map(|l| (l.ino, l.key)).collect()
}

/// The engine's lock owner for an NFSv4 lock-owner: a hash of its client's owner string (which
/// a client keeps across restarts of either side, unlike its client id) and its own bytes, so
/// that a reclaim after a gateway restart names the lock it held.
pub fn lock_key(client_owner: &[u8], owner: &[u8]) -> u64 {
    let hash = elasticfs_core::hash_of(
        &[&(client_owner.len() as u64).to_be_bytes()[..], client_owner, owner].concat(),
    );
    u64::from_be_bytes(hash[..8].try_into().expect("8 bytes"))
}

impl Session {
    /// SEQUENCE: claims slot `slot` for request `seqid`.
    pub fn begin(&self, slot: u32, seqid: u32, cache: bool) -> OpResult<SlotUse> {
        let mut slots = self.slots.lock().unwrap();
        let s = slots.get_mut(slot as usize).ok_or(Status::BADSLOT)?;
        if seqid == s.seqid.wrapping_add(1) {
            if s.busy {
                return Err(Status::DELAY.into());
            }
            s.busy = true;
            s.seqid = seqid;
            s.reply = None;
            return Ok(SlotUse::New { cache });
        }
        if seqid == s.seqid {
            if s.busy {
                return Err(Status::DELAY.into());
            }
            return match &s.reply {
                Some(reply) => Ok(SlotUse::Replay(reply.clone())),
                None => Err(Status::RETRY_UNCACHED_REP.into()),
            };
        }
        Err(Status::SEQ_MISORDERED.into())
    }

    /// The request in `slot` is answered: its reply is kept if it was to be cached.
    pub fn finish(&self, slot: u32, reply: Option<Vec<u8>>) {
        if let Some(s) = self.slots.lock().unwrap().get_mut(slot as usize) {
            s.busy = false;
            s.reply = reply;
        }
    }
}

#[cfg(test)]
#[path = "state_tests.rs"]
mod tests;
