//! Sessions and the locks they hold, as records in the store: one per live client and one
//! per locked file (all of that file's locks, so that a lock change is a read-modify-write of
//! one key). A session with a lease heartbeats its record; any client that finds a session
//! past its lease ends it, and ending one is idempotent, so several may do it at once.

use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};

use super::{Engine, NO_SESSION};
use crate::error::{MetaError, MetaResult};
use crate::keys::{self, Counter};
use crate::kv::Kv;
use crate::locks::{self, LockRecord, LockRequest};
use crate::session::{ClientInfo, SessionId, SessionRecord};
use crate::store::MetaStore;
use crate::types::{Ino, Timestamp};

impl<K: Kv> Engine<K> {
    /// Registers a new session for `client` and returns this store acting for it. With a
    /// `lease`, a thread heartbeats the session while the store is open, and ends sessions of
    /// other clients that missed theirs; without one, the process that holds the store
    /// watches its clients itself.
    pub fn start_session(&self, client: ClientInfo, lease: Option<Duration>) -> MetaResult<Engine<K>> {
        let now = Timestamp::now();
        let lease_ms = lease.map_or(0, |l| l.as_millis() as u64);
        let id = self.mutate(|t| {
            let id = t.get(keys::NEXT_SESSION)?.map_or(1, |v| keys::decode_u64(&v)).max(1);
            t.put(keys::NEXT_SESSION, &keys::encode_u64(id + 1));
            let record = SessionRecord { id, client: client.clone(), started: now, heartbeat: now, lease_ms };
            t.put(&keys::numbered(keys::SESSION, id), &encode(&record)?);
            Ok(id)
        })?;
        let session = self.session(id);
        if let Some(lease) = lease {
            session.keep_alive(lease)?;
        }
        Ok(session)
    }

    /// Heartbeats this session every third of `lease` from a thread of its own, which stops
    /// when the store is closed or the session has ended.
    fn keep_alive(&self, lease: Duration) -> MetaResult<()> {
        let shared = Arc::downgrade(&self.shared);
        let id = self.session;
        let period = lease / 3;
        std::thread::Builder::new()
            .name("elasticfs-heartbeat".into())
            .spawn(move || loop {
                std::thread::sleep(period);
                let Some(shared) = shared.upgrade() else { return };
                let engine = Engine { shared, session: id };
                match engine.heartbeat() {
                    Ok(true) => {}
                    Ok(false) => {
                        info!(session = id, "the session has ended: heartbeats stop");
                        return;
                    }
                    Err(e) => warn!(session = id, "heartbeat: {e}"),
                }
                if let Err(e) = engine.end_expired_sessions() {
                    warn!("ending expired sessions: {e}");
                }
            })
            .map_err(MetaError::store)?;
        Ok(())
    }

    /// Records a sign of life of this session; false if it has ended (or expired).
    pub fn heartbeat(&self) -> MetaResult<bool> {
        let id = self.session;
        let now = Timestamp::now();
        self.run(|t| {
            let key = keys::numbered(keys::SESSION, id);
            let Some(raw) = t.get(&key)? else { return Ok(false) };
            let mut record: SessionRecord = decode(&raw)?;
            record.heartbeat = now;
            t.put(&key, &encode(&record)?);
            Ok(true)
        })
    }

    /// Ends every session past its lease; returns how many.
    pub fn end_expired_sessions(&self) -> MetaResult<usize> {
        let now = Timestamp::now();
        let expired: Vec<SessionId> =
            self.session_records()?.into_iter().filter(|s| s.expired(now)).map(|s| s.id).collect();
        for id in &expired {
            self.end_session(*id)?;
            info!(session = id, "session expired: no heartbeat within its lease");
        }
        Ok(expired.len())
    }

    /// Whether `id` is a registered session.
    pub fn has_session(&self, id: SessionId) -> MetaResult<bool> {
        self.read(|t| Ok(t.get(&keys::numbered(keys::SESSION, id))?.is_some()))
    }

    /// Ends a session: withdraws the creates it left pending, releases its locks and its chunk
    /// intents, removes the files it held open after unlinking them, folds its share of the
    /// counters into the common one, and forgets it. Each step is its own transaction and may
    /// be repeated.
    pub fn end_session(&self, id: SessionId) -> MetaResult<()> {
        let withdrawn = self.withdraw_pending_creates(Some(id))?;
        for (key, raw) in self.scan_all(&[keys::LOCKS])? {
            let held: Vec<LockRecord> = decode(&raw)?;
            if held.iter().any(|l| l.session == id) {
                self.update_locks(keys::first_number(&key)?, |held| {
                    held.retain(|l| l.session != id);
                    Ok(())
                })?;
            }
        }
        let mut purged = 0;
        for (key, owner) in self.scan_all(&[keys::ORPHAN])? {
            if keys::decode_u64(&owner) == id {
                self.purge(keys::first_number(&key)?)?;
                purged += 1;
            }
        }
        self.drop_intents_of(id)?;
        if id != NO_SESSION {
            self.run(|t| {
                for counter in [Counter::Bytes, Counter::Inodes] {
                    let shares = t.scan_prefix(&counter.session_prefix(id), usize::MAX)?;
                    if shares.is_empty() {
                        continue;
                    }
                    let mut sum = 0u64;
                    for (key, value) in &shares {
                        t.delete(key);
                        sum = sum.wrapping_add(keys::decode_u64(value));
                    }
                    let common = counter.share(NO_SESSION, 0);
                    let total = t.get(&common)?.map_or(0, |v| keys::decode_u64(&v));
                    t.put(&common, &keys::encode_u64(total.wrapping_add(sum)));
                }
                t.delete(&keys::numbered(keys::SESSION, id));
                Ok(())
            })?;
        }
        self.sync()?;
        info!(session = id, purged, withdrawn, "session ended");
        Ok(())
    }

    /// Ends every session and reclaims every orphan: for an embedded mount, which holds the
    /// store exclusively, so that whoever used it before is gone.
    pub fn end_all_sessions(&self) -> MetaResult<usize> {
        let withdrawn = self.withdraw_pending_creates(None)?;
        if withdrawn > 0 {
            info!(withdrawn, "removed files whose create a crash left before their first close");
        }
        for id in self.session_records()?.iter().map(|s| s.id) {
            self.end_session(id)?;
        }
        // Orphans, locks and intents of no session (or of one whose record is already gone).
        let orphans = self.orphans()?;
        for ino in &orphans {
            self.purge(*ino)?;
        }
        for prefix in [keys::LOCKS, keys::INTENTS] {
            for page in self.scan_all(&[prefix])?.chunks(self.page()) {
                self.run(|t| {
                    page.iter().for_each(|(k, _)| t.delete(k));
                    Ok(())
                })?;
            }
        }
        self.sync()?;
        Ok(orphans.len())
    }

    /// Moves the locks of session `from` to this session, then ends `from`: a restarted NFS
    /// gateway takes over what its killed process held, so that nobody else takes those
    /// locks before its clients reclaim them. Returns the locks taken over (file, owner).
    pub(super) fn adopt_session_in(&self, from: SessionId) -> MetaResult<Vec<(Ino, u64)>> {
        let session = self.session;
        if session == NO_SESSION || from == session || from == NO_SESSION {
            return Err(MetaError::Invalid("a session is taken over by another session".into()));
        }
        let mut taken = Vec::new();
        for (key, raw) in self.scan_all(&[keys::LOCKS])? {
            let held: Vec<LockRecord> = decode(&raw)?;
            if !held.iter().any(|l| l.session == from) {
                continue;
            }
            let ino = keys::first_number(&key)?;
            self.update_locks(ino, |held| {
                held.iter_mut().filter(|l| l.session == from).for_each(|l| l.session = session);
                Ok(())
            })?;
            taken.extend(held.iter().filter(|l| l.session == from).map(|l| (ino, l.owner)));
        }
        taken.sort_unstable();
        taken.dedup();
        self.end_session(from)?;
        info!(session, from, locks = taken.len(), "took over a session");
        Ok(taken)
    }

    pub(super) fn session_records(&self) -> MetaResult<Vec<SessionRecord>> {
        self.scan_all(&[keys::SESSION])?.iter().map(|(_, v)| decode(v)).collect()
    }

    pub(super) fn set_lock_in(&self, ino: Ino, req: &LockRequest) -> MetaResult<()> {
        if self.session == NO_SESSION {
            return Err(MetaError::Invalid("locks need a session".into()));
        }
        let session = self.session;
        let changed = self.update_locks(ino, |held| locks::apply(held, session, req))?;
        if changed {
            self.sync()?;
        }
        Ok(())
    }

    pub(super) fn get_lock_in(&self, ino: Ino, req: &LockRequest) -> MetaResult<Option<LockRecord>> {
        let raw = self.read(|t| t.get(&keys::numbered(keys::LOCKS, ino)))?;
        let held = match raw {
            Some(raw) => decode(&raw)?,
            None => Vec::new(),
        };
        Ok(locks::conflict(&held, self.session, req))
    }

    pub(super) fn release_locks_in(&self, ino: Ino, owner: u64) -> MetaResult<()> {
        let session = self.session;
        let changed = self.update_locks(ino, |held| {
            held.retain(|l| !(l.session == session && l.owner == owner));
            Ok(())
        })?;
        if changed {
            self.sync()?;
        }
        Ok(())
    }

    /// Read-modify-write of one file's locks; returns whether anything changed. A session
    /// that has ended (its lease ran out) may only release.
    fn update_locks(
        &self,
        ino: Ino,
        change: impl Fn(&mut Vec<LockRecord>) -> MetaResult<()>,
    ) -> MetaResult<bool> {
        let session = self.session;
        self.run(|t| {
            let key = keys::numbered(keys::LOCKS, ino);
            let before: Vec<LockRecord> = match t.get(&key)? {
                Some(raw) => decode(&raw)?,
                None => Vec::new(),
            };
            let mut held = before.clone();
            change(&mut held)?;
            if held == before {
                return Ok(false);
            }
            let gains = held.iter().any(|l| l.session == session && !before.contains(l));
            if gains && session != NO_SESSION && t.get(&keys::numbered(keys::SESSION, session))?.is_none() {
                return Err(MetaError::SessionExpired.into());
            }
            if held.is_empty() {
                t.delete(&key);
            } else {
                t.put(&key, &encode(&held)?);
            }
            Ok(true)
        })
    }
}

pub(super) fn encode<T: serde::Serialize>(value: &T) -> MetaResult<Vec<u8>> {
    postcard::to_allocvec(value).map_err(MetaError::store)
}

pub(super) fn decode<T: serde::de::DeserializeOwned>(raw: &[u8]) -> MetaResult<T> {
    postcard::from_bytes(raw).map_err(|e| MetaError::Store(format!("unreadable session or lock record: {e}")))
}
