//! Sessions and the locks they hold, on sled. Both are small: one record per live client and
//! one record per locked file (all of that file's locks, so that a lock change is a
//! read-modify-write of one key).

use sled::transaction::ConflictableTransactionError;
use tracing::info;

use super::{SledStore, NO_SESSION};
use crate::error::{MetaError, MetaResult};
use crate::locks::{self, LockRecord, LockRequest};
use crate::schema;
use crate::session::{ClientInfo, SessionId, SessionRecord};
use crate::store::MetaStore;
use crate::types::{Ino, Timestamp};

impl SledStore {
    /// Registers a new session for `client` and returns this store acting for it.
    pub fn start_session(&self, client: ClientInfo) -> MetaResult<SledStore> {
        let id = self.shared.db.generate_id()? + 1;
        let record = SessionRecord { id, client, started: Timestamp::now() };
        self.shared.trees.sessions.insert(schema::ino_key(id), encode(&record)?)?;
        self.shared.durable.wait_durable()?;
        Ok(self.session(id))
    }

    /// Whether `id` is a registered session.
    pub fn has_session(&self, id: SessionId) -> MetaResult<bool> {
        Ok(self.shared.trees.sessions.contains_key(schema::ino_key(id))?)
    }

    /// Ends a session: releases its locks and its chunk intents, removes the files it held
    /// open after unlinking them, and forgets it.
    pub fn end_session(&self, id: SessionId) -> MetaResult<()> {
        let locks = &self.shared.trees.locks;
        for key in locks.iter().keys() {
            let key = key?;
            update_locks(locks, &key, |held| {
                held.retain(|l| l.session != id);
                Ok(())
            })?;
        }
        let mut purged = 0;
        for item in self.shared.trees.orphans.iter() {
            let (key, owner) = item?;
            if schema::decode_u64(&owner) == id {
                self.purge(schema::decode_ino_key(&key)?)?;
                purged += 1;
            }
        }
        self.drop_intents_of(id)?;
        self.shared.trees.sessions.remove(schema::ino_key(id))?;
        self.shared.durable.wait_durable()?;
        info!(session = id, purged, "session ended");
        Ok(())
    }

    /// Ends every session and reclaims every orphan: for an embedded mount, which holds the
    /// store exclusively, so that whoever used it before is gone.
    pub fn end_all_sessions(&self) -> MetaResult<usize> {
        for id in self.session_records()?.iter().map(|s| s.id) {
            self.end_session(id)?;
        }
        // Orphans of no session (or of one whose record is already gone).
        let orphans = self.orphans()?;
        for ino in &orphans {
            self.purge(*ino)?;
        }
        self.shared.trees.locks.clear()?;
        self.shared.trees.intents.clear()?;
        self.shared.durable.wait_durable()?;
        Ok(orphans.len())
    }

    pub(super) fn session_records(&self) -> MetaResult<Vec<SessionRecord>> {
        let mut out = Vec::new();
        for value in self.shared.trees.sessions.iter().values() {
            out.push(decode(&value?)?);
        }
        Ok(out)
    }

    pub(super) fn set_lock_in(&self, ino: Ino, req: &LockRequest) -> MetaResult<()> {
        if self.session == NO_SESSION {
            return Err(MetaError::Invalid("locks need a session".into()));
        }
        let session = self.session;
        update_locks(&self.shared.trees.locks, &schema::ino_key(ino), |held| {
            locks::apply(held, session, req)
        })?;
        self.shared.durable.wait_durable()
    }

    pub(super) fn get_lock_in(&self, ino: Ino, req: &LockRequest) -> MetaResult<Option<LockRecord>> {
        let held = match self.shared.trees.locks.get(schema::ino_key(ino))? {
            Some(raw) => decode(&raw)?,
            None => Vec::new(),
        };
        Ok(locks::conflict(&held, self.session, req))
    }

    pub(super) fn release_locks_in(&self, ino: Ino, owner: u64) -> MetaResult<()> {
        let session = self.session;
        let changed = update_locks(&self.shared.trees.locks, &schema::ino_key(ino), |held| {
            held.retain(|l| !(l.session == session && l.owner == owner));
            Ok(())
        })?;
        if changed {
            self.shared.durable.wait_durable()?;
        }
        Ok(())
    }
}

/// Read-modify-write of one file's locks; returns whether anything changed.
fn update_locks(
    tree: &sled::Tree,
    key: &[u8],
    change: impl Fn(&mut Vec<LockRecord>) -> MetaResult<()>,
) -> MetaResult<bool> {
    let result = tree.transaction(|t| {
        let before: Vec<LockRecord> = match t.get(key)? {
            Some(raw) => decode(&raw).map_err(ConflictableTransactionError::Abort)?,
            None => Vec::new(),
        };
        let mut held = before.clone();
        change(&mut held).map_err(ConflictableTransactionError::Abort)?;
        if held == before {
            return Ok(false);
        }
        if held.is_empty() {
            t.remove(key)?;
        } else {
            t.insert(key, encode(&held).map_err(ConflictableTransactionError::Abort)?)?;
        }
        Ok(true)
    });
    result.map_err(MetaError::from)
}

fn encode<T: serde::Serialize>(value: &T) -> MetaResult<Vec<u8>> {
    postcard::to_allocvec(value).map_err(MetaError::store)
}

fn decode<T: serde::de::DeserializeOwned>(raw: &[u8]) -> MetaResult<T> {
    postcard::from_bytes(raw).map_err(|e| MetaError::Store(format!("unreadable session or lock record: {e}")))
}
