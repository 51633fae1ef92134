//! Creates that become durable with their file's first commit at close (or `fsync`) instead
//! of a disk flush of their own: a small file then costs one flush, not two.
//!
//! A pending create is applied like any other (every reader sees the file at once) and also
//! writes a record naming its session, directory and name; it does not wait for the disk. The
//! file's close commits its data and deletes the record in one transaction, and waits for the
//! disk as usual ([`MetaStore::commit_blocks`] with `confirms_create`, or
//! [`MetaStore::confirm_create`] for a file closed unwritten). So does any change to the file
//! that must survive (a setattr, a link, a rename, an extended attribute): what it confirmed
//! is then durable with it. If the client dies first, whoever ends its session withdraws the
//! file: after a crash, a file whose close never returned is absent, or as its last commit left
//! it; never empty for want of a commit that was on its way.
//!
//! Only a store whose commits wait for a sync of their own (sled, committing durably) has a
//! flush to save: on the others a pending create is an ordinary one. Exclusive creates
//! (`O_EXCL`, used as locks) and every other namespace change stay durable when acknowledged.

use std::collections::HashSet;
use std::sync::Mutex;

use super::{Engine, Txn};
use crate::error::{MetaError, MetaResult};
use crate::keys;
use crate::kv::Kv;
use crate::session::SessionId;
use crate::store::{Created, MetaStore, NewNode};
use crate::types::{FileKind, Ino};

/// The creates of this process still pending, by inode.
#[derive(Default)]
pub(super) struct PendingCreates(Mutex<HashSet<Ino>>);

impl PendingCreates {
    fn contains(&self, ino: Ino) -> bool {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).contains(&ino)
    }

    /// Forgets creates confirmed by a transaction that committed.
    pub(super) fn forget(&self, confirmed: &[Ino]) {
        if !confirmed.is_empty() {
            let mut pending = self.0.lock().unwrap_or_else(|p| p.into_inner());
            for ino in confirmed {
                pending.remove(ino);
            }
        }
    }
}

/// The record of a pending create: session (u64 LE), directory (u64 LE), name.
fn record(session: SessionId, parent: Ino, name: &[u8]) -> Vec<u8> {
    let mut value = Vec::with_capacity(16 + name.len());
    value.extend_from_slice(&session.to_le_bytes());
    value.extend_from_slice(&parent.to_le_bytes());
    value.extend_from_slice(name);
    value
}

fn decode_record(raw: &[u8]) -> MetaResult<(SessionId, Ino, &[u8])> {
    let number = |at: usize| raw.get(at..at + 8).map(|b| u64::from_le_bytes(b.try_into().unwrap()));
    match (number(0), number(8)) {
        (Some(session), Some(parent)) => Ok((session, parent, &raw[16..])),
        _ => Err(MetaError::Store(format!(
            "a pending-create record of {} bytes: the store is damaged",
            raw.len()
        ))),
    }
}

impl Txn<'_> {
    /// Marks the file this transaction creates as pending (see the module's comment).
    pub(super) fn mark_pending(&mut self, ino: Ino, parent: Ino, name: &[u8]) {
        self.put(&keys::numbered(keys::PENDING_CREATE, ino), &record(self.session, parent, name));
    }

    /// Makes the pending create of `ino`, if this process has one, durable with this
    /// transaction.
    pub(super) fn confirm_create(&mut self, ino: Ino) {
        if self.pending.contains(ino) {
            self.delete(&keys::numbered(keys::PENDING_CREATE, ino));
            self.confirmed.push(ino);
        }
    }
}

impl<K: Kv> Engine<K> {
    pub(super) fn create_pending_in(&self, node: &NewNode) -> MetaResult<Created> {
        if node.kind != FileKind::File || !self.shared.kv.commits_wait_for_sync() {
            return self.create_in_dir(node);
        }
        let created = self.create_node(node, true)?;
        self.shared.pending.0.lock().unwrap_or_else(|p| p.into_inner()).insert(created.attr.ino);
        Ok(created)
    }

    pub(super) fn confirm_create_in(&self, ino: Ino) -> MetaResult<()> {
        if !self.shared.pending.contains(ino) {
            return Ok(());
        }
        self.mutate(|t| {
            t.confirm_create(ino);
            Ok(())
        })
    }

    /// At a clean end of this process's session: every create still pending becomes durable.
    pub(super) fn confirm_every_create(&self) -> MetaResult<()> {
        let pending: Vec<Ino> =
            self.shared.pending.0.lock().unwrap_or_else(|p| p.into_inner()).iter().copied().collect();
        if pending.is_empty() {
            return Ok(());
        }
        self.mutate(|t| {
            pending.iter().for_each(|&ino| t.confirm_create(ino));
            Ok(())
        })
    }

    /// Withdraws the creates a dead session left pending (`None`: every session's, for an
    /// embedded mount, which holds the store alone): each such file is removed if its name
    /// still leads to it. Returns how many were removed.
    pub(super) fn withdraw_pending_creates(&self, of: Option<SessionId>) -> MetaResult<usize> {
        let mut withdrawn = 0;
        for (key, raw) in self.scan_all(&[keys::PENDING_CREATE])? {
            let ino = keys::first_number(&key)?;
            let (session, parent, name) = decode_record(&raw)?;
            if of.is_some_and(|of| of != session) {
                continue;
            }
            let named = match self.lookup(parent, name) {
                Ok(attr) => attr.ino == ino,
                Err(MetaError::NotFound | MetaError::NotDir) => false,
                Err(e) => return Err(e),
            };
            if named {
                let unlinked = self.unlink(parent, name, Some(ino))?;
                if unlinked.orphaned && !unlinked.purged {
                    self.purge(ino)?;
                }
                withdrawn += 1;
            }
            self.mutate(|t| {
                t.delete(&key);
                Ok(())
            })?;
        }
        Ok(withdrawn)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::BlockCommit;
    use crate::types::{SetAttr, Superblock, ROOT_INO};
    use crate::{BlockChange, BlockRef, ClientInfo, SledStore};

    fn names(s: &SledStore) -> Vec<Vec<u8>> {
        let mut names: Vec<_> = s.readdir(ROOT_INO, 0, 100).unwrap().into_iter().map(|e| e.name).collect();
        names.sort();
        names
    }

    /// A client that dies leaves its unconfirmed creates to whoever ends its session; what it
    /// closed, changed or ended cleanly stays.
    #[test]
    fn a_dead_sessions_pending_creates_are_withdrawn_and_confirmed_ones_stay() {
        let dir = tempfile::tempdir().unwrap();
        let sb = Superblock::new("t", 65536, 1024, "memory://");
        let store = SledStore::format(&dir.path().join("meta"), &sb, 0, 0).unwrap();
        let client = store.start_session(ClientInfo::this_process("/mnt"), None).unwrap();
        let file = |name: &[u8]| NewNode::new(ROOT_INO, name, FileKind::File, 0o644);
        let written = client.create_pending(&file(b"written")).unwrap().attr.ino;
        let closed_empty = client.create_pending(&file(b"closed-empty")).unwrap().attr.ino;
        let chmodded = client.create_pending(&file(b"chmodded")).unwrap().attr.ino;
        client.create_pending(&file(b"never-closed")).unwrap();
        // Pending, it is a file like any other.
        assert_eq!(names(&store).len(), 4);
        let data = BlockChange::Whole(BlockRef::Inline(vec![1; 10]));
        let close = BlockCommit {
            blocks: vec![(0, data)],
            min_size: 10,
            confirms_create: true,
            ..Default::default()
        };
        client.commit_blocks(written, &close).unwrap();
        client.confirm_create(closed_empty).unwrap();
        client.setattr(chmodded, &SetAttr { perm: Some(0o600), ..Default::default() }).unwrap();
        let inodes = store.usage().unwrap().inodes;

        // The client dies; the next one to hold the store ends every session.
        store.end_all_sessions().unwrap();
        assert_eq!(names(&store), [b"chmodded".to_vec(), b"closed-empty".to_vec(), b"written".to_vec()]);
        assert_eq!(store.usage().unwrap().inodes, inodes - 1);
        assert!(store.audit().unwrap().is_clean());
        assert!(store.scan_all(&[keys::PENDING_CREATE]).unwrap().is_empty());

        // A clean end confirms what is still pending.
        let client = store.start_session(ClientInfo::this_process("/mnt"), None).unwrap();
        client.create_pending(&file(b"open-at-unmount")).unwrap();
        client.end_own_session().unwrap();
        store.end_all_sessions().unwrap();
        assert_eq!(names(&store).len(), 4);
    }
}
