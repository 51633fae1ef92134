//! POSIX byte-range lock semantics, independent of where the locks are kept. `flock` locks are
//! whole-file locks of one more kind of owner (an open file description), as the Linux NFS
//! client treats them.

use serde::{Deserialize, Serialize};

use crate::error::{MetaError, MetaResult};
use crate::session::SessionId;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LockKind {
    Read,
    Write,
    Unlock,
}

/// A request to set or test a lock on `start..=end` (`end` = u64::MAX: to the end of the file).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockRequest {
    /// The kernel's lock owner: a process's file table for POSIX locks, an open file for flock.
    pub owner: u64,
    pub pid: u32,
    pub kind: LockKind,
    pub start: u64,
    pub end: u64,
}

/// A lock held by `owner` of `session`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockRecord {
    pub session: SessionId,
    pub owner: u64,
    pub pid: u32,
    /// Read or Write (never Unlock).
    pub kind: LockKind,
    pub start: u64,
    pub end: u64,
}

impl LockRecord {
    fn overlaps(&self, start: u64, end: u64) -> bool {
        self.start <= end && start <= self.end
    }

    fn same_owner(&self, session: SessionId, owner: u64) -> bool {
        self.session == session && self.owner == owner
    }
}

/// The first lock in `held` that keeps `session`'s `req` from being granted.
pub fn conflict(held: &[LockRecord], session: SessionId, req: &LockRequest) -> Option<LockRecord> {
    if req.kind == LockKind::Unlock || req.start > req.end {
        return None;
    }
    held.iter()
        .find(|l| {
            !l.same_owner(session, req.owner)
                && l.overlaps(req.start, req.end)
                && (l.kind == LockKind::Write || req.kind == LockKind::Write)
        })
        .copied()
}

/// Applies `req` to the locks of one file: fails with [`MetaError::WouldBlock`] on a conflict,
/// else replaces whatever the owner held in the range (splitting its locks at the edges).
pub fn apply(held: &mut Vec<LockRecord>, session: SessionId, req: &LockRequest) -> MetaResult<()> {
    if req.start > req.end {
        return Err(MetaError::Invalid("lock range ends before it starts".into()));
    }
    if conflict(held, session, req).is_some() {
        return Err(MetaError::WouldBlock);
    }
    let mut kept = Vec::with_capacity(held.len() + 2);
    for lock in held.drain(..) {
        if !lock.same_owner(session, req.owner) || !lock.overlaps(req.start, req.end) {
            kept.push(lock);
            continue;
        }
        if lock.start < req.start {
            kept.push(LockRecord { end: req.start - 1, ..lock });
        }
        if lock.end > req.end {
            kept.push(LockRecord { start: req.end + 1, ..lock });
        }
    }
    if req.kind != LockKind::Unlock {
        kept.push(LockRecord {
            session,
            owner: req.owner,
            pid: req.pid,
            kind: req.kind,
            start: req.start,
            end: req.end,
        });
    }
    *held = kept;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(owner: u64, kind: LockKind, start: u64, end: u64) -> LockRequest {
        LockRequest { owner, pid: owner as u32, kind, start, end }
    }

    #[test]
    fn readers_share_and_writers_exclude() {
        let mut held = Vec::new();
        apply(&mut held, 1, &req(10, LockKind::Read, 0, 99)).unwrap();
        apply(&mut held, 2, &req(10, LockKind::Read, 50, 150)).unwrap();
        assert_eq!(apply(&mut held, 2, &req(11, LockKind::Write, 90, 95)), Err(MetaError::WouldBlock));
        // The same owner number in another session is another owner.
        let blocker = conflict(&held, 3, &req(10, LockKind::Write, 0, 0)).unwrap();
        assert_eq!((blocker.session, blocker.start), (1, 0));
        apply(&mut held, 2, &req(11, LockKind::Write, 151, u64::MAX)).unwrap();
    }

    #[test]
    fn unlocking_the_middle_splits_a_lock() {
        let mut held = Vec::new();
        apply(&mut held, 1, &req(7, LockKind::Write, 0, 99)).unwrap();
        apply(&mut held, 1, &req(7, LockKind::Unlock, 40, 59)).unwrap();
        let mut ranges: Vec<_> = held.iter().map(|l| (l.start, l.end)).collect();
        ranges.sort();
        assert_eq!(ranges, [(0, 39), (60, 99)]);
        assert!(conflict(&held, 2, &req(8, LockKind::Write, 40, 59)).is_none());
        // Upgrading part of its own lock needs no one's permission.
        apply(&mut held, 1, &req(7, LockKind::Read, 0, 9)).unwrap();
        assert_eq!(held.len(), 3);
    }
}
