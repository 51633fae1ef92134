//! POSIX permission checks, for frontends that cannot leave them to a kernel: the FUSE mount
//! has the kernel check (`default_permissions`); the NFS gateway checks each call against the
//! caller's AUTH_SYS credentials with these.

use elasticfs_metadata::{Attr, FileKind};

use crate::filesystem::{Caller, SetAttrRequest};

pub const MAY_READ: u16 = 4;
pub const MAY_WRITE: u16 = 2;
pub const MAY_EXEC: u16 = 1;

const STICKY: u16 = 0o1000;
const SETUID: u16 = 0o4000;
const SETGID: u16 = 0o2000;
const GROUP_EXEC: u16 = 0o010;

/// `perm` without the bits that would let someone run a changed file with its owner's or group's
/// rights, as Linux's `file_remove_privs` drops them: set-user-ID always; set-group-ID only with
/// group execute (without it, the bit marks mandatory locking and stays). `None` if there are
/// none.
pub(crate) fn without_privileges(perm: u16) -> Option<u16> {
    let mut kept = perm & !SETUID;
    if perm & (SETGID | GROUP_EXEC) == SETGID | GROUP_EXEC {
        kept &= !SETGID;
    }
    (kept != perm).then_some(kept)
}

/// `req` with the set-user-ID and set-group-ID bits it must drop (as a mode change): a chown or
/// chgrp of anything but a directory drops them whoever asks (Linux since 2.2.13, and knfsd); a
/// truncate by a caller without the privilege to keep them (`privileged`: root, CAP_FSETID)
/// drops them as a write does.
pub fn dropping_set_id_bits(attr: &Attr, req: &SetAttrRequest, privileged: bool) -> SetAttrRequest {
    let mut req = req.clone();
    let chown = (req.uid.is_some() || req.gid.is_some()) && attr.kind != FileKind::Dir;
    let truncate = req.size.is_some() && !privileged && attr.kind == FileKind::File;
    if chown || truncate {
        if let Some(perm) = without_privileges(req.perm.unwrap_or(attr.perm)) {
            req.perm = Some(perm);
        }
    }
    req
}

/// Who is calling, with the supplementary groups that permission checks need.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
}

impl Identity {
    pub fn root() -> Self {
        Identity { uid: 0, gid: 0, groups: Vec::new() }
    }

    pub fn caller(&self) -> Caller {
        Caller { uid: self.uid, gid: self.gid }
    }

    fn is_root(&self) -> bool {
        self.uid == 0
    }

    fn in_group(&self, gid: u32) -> bool {
        self.gid == gid || self.groups.contains(&gid)
    }

    fn owns(&self, attr: &Attr) -> bool {
        self.is_root() || self.uid == attr.uid
    }

    /// Whether the mode bits grant every right in `want` (MAY_* bits). Root may do anything
    /// but execute a file that no one may execute.
    pub fn may(&self, attr: &Attr, want: u16) -> bool {
        if self.is_root() {
            return want & MAY_EXEC == 0 || attr.kind == FileKind::Dir || attr.perm & 0o111 != 0;
        }
        let class = if self.uid == attr.uid {
            attr.perm >> 6
        } else if self.in_group(attr.gid) {
            attr.perm >> 3
        } else {
            attr.perm
        };
        class & 7 & want == want
    }

    /// Reading or writing file data: as knfsd, the owner may always read and write their own
    /// file, so that a file created read-only can still be written through its first handle.
    pub fn may_access_data(&self, attr: &Attr, want: u16) -> bool {
        self.owns(attr) || self.may(attr, want)
    }

    /// Whether `victim` may be unlinked from (or renamed out of) `dir`: write and search on
    /// the directory and, in a sticky directory, owning the directory or the victim.
    pub fn may_delete(&self, dir: &Attr, victim: &Attr) -> bool {
        self.may(dir, MAY_WRITE | MAY_EXEC)
            && (dir.perm & STICKY == 0 || self.owns(dir) || self.uid == victim.uid)
    }

    /// Whether `req` may change `attr`, as chmod, chown, truncate and utimes allow. Only the
    /// owner may chown, even to the ids the file has (Linux's `chown_ok`/`chgrp_ok`).
    pub fn may_set(&self, attr: &Attr, req: &SetAttrRequest) -> bool {
        let size = req.size.is_none() || attr.kind == FileKind::Dir || self.may_access_data(attr, MAY_WRITE);
        let mode = req.perm.is_none() || self.owns(attr);
        let owner = self.uid == attr.uid;
        let uid = req.uid.is_none_or(|uid| self.is_root() || (owner && uid == attr.uid));
        let gid =
            req.gid.is_none_or(|gid| self.is_root() || (owner && (gid == attr.gid || self.in_group(gid))));
        let times = (req.atime.is_none() && req.mtime.is_none()) || self.owns(attr);
        size && mode && uid && gid && times
    }

    /// The mode a file written (or truncated) by this caller must take, if the write must drop
    /// its set-user-ID or set-group-ID bit: anyone but root does (Linux's `file_remove_privs`).
    pub fn mode_after_write(&self, attr: &Attr) -> Option<u16> {
        if self.is_root() || attr.kind != FileKind::File {
            return None;
        }
        without_privileges(attr.perm)
    }

    /// `req` as it must be carried out, with the mode changes Linux makes on its own: chmod by
    /// a caller who is neither root nor in the file's (new) group drops set-group-ID, and
    /// [`dropping_set_id_bits`] for chown and truncate.
    pub fn effective_setattr(&self, attr: &Attr, req: &SetAttrRequest) -> SetAttrRequest {
        let mut req = req.clone();
        if let Some(perm) = req.perm {
            if !self.is_root() && !self.in_group(req.gid.unwrap_or(attr.gid)) {
                req.perm = Some(perm & !SETGID);
            }
        }
        dropping_set_id_bits(attr, &req, self.is_root())
    }

    /// Setting both times to "now" needs only write permission (utimes with a null argument).
    pub fn may_touch(&self, attr: &Attr) -> bool {
        self.owns(attr) || self.may(attr, MAY_WRITE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use elasticfs_metadata::Timestamp;

    fn attr(kind: FileKind, perm: u16, uid: u32, gid: u32) -> Attr {
        Attr { uid, gid, nlink: 1, ..Attr::new(2, kind, perm, Timestamp { secs: 0, nanos: 0 }) }
    }

    fn user(uid: u32, gid: u32, groups: &[u32]) -> Identity {
        Identity { uid, gid, groups: groups.to_vec() }
    }

    #[test]
    fn mode_classes_are_owner_then_group_then_other() {
        let file = attr(FileKind::File, 0o640, 1000, 100);
        assert!(user(1000, 1, &[]).may(&file, MAY_READ | MAY_WRITE));
        assert!(user(2000, 100, &[]).may(&file, MAY_READ));
        assert!(!user(2000, 100, &[]).may(&file, MAY_WRITE));
        assert!(user(2000, 7, &[100]).may(&file, MAY_READ), "supplementary group counts");
        assert!(!user(2000, 7, &[]).may(&file, MAY_READ));
        // The owner class applies even when it grants less than the group class.
        let odd = attr(FileKind::File, 0o070, 1000, 100);
        assert!(!user(1000, 100, &[]).may(&odd, MAY_READ));
    }

    #[test]
    fn root_may_do_anything_but_execute_a_non_executable_file() {
        let file = attr(FileKind::File, 0o000, 1000, 100);
        assert!(Identity::root().may(&file, MAY_READ | MAY_WRITE));
        assert!(!Identity::root().may(&file, MAY_EXEC));
        assert!(Identity::root().may(&attr(FileKind::Dir, 0o000, 1, 1), MAY_EXEC));
    }

    #[test]
    fn sticky_directories_protect_other_users_files() {
        let tmp = attr(FileKind::Dir, 0o1777, 0, 0);
        let mine = attr(FileKind::File, 0o644, 1000, 100);
        let theirs = attr(FileKind::File, 0o644, 2000, 100);
        assert!(user(1000, 100, &[]).may_delete(&tmp, &mine));
        assert!(!user(1000, 100, &[]).may_delete(&tmp, &theirs));
        assert!(Identity::root().may_delete(&tmp, &theirs));
        let plain = attr(FileKind::Dir, 0o777, 0, 0);
        assert!(user(1000, 100, &[]).may_delete(&plain, &theirs));
        let closed = attr(FileKind::Dir, 0o755, 0, 0);
        assert!(!user(1000, 100, &[]).may_delete(&closed, &mine));
    }

    #[test]
    fn only_root_gives_files_away_and_owners_pick_their_own_groups() {
        let file = attr(FileKind::File, 0o644, 1000, 100);
        let owner = user(1000, 100, &[200]);
        let chown = |uid, gid| SetAttrRequest { uid, gid, ..Default::default() };
        assert!(!owner.may_set(&file, &chown(Some(2000), None)));
        assert!(owner.may_set(&file, &chown(Some(1000), Some(200))));
        assert!(!owner.may_set(&file, &chown(None, Some(300))));
        assert!(Identity::root().may_set(&file, &chown(Some(2000), Some(300))));
        let chmod = SetAttrRequest { perm: Some(0o600), ..Default::default() };
        assert!(!user(2000, 100, &[]).may_set(&file, &chmod));
        let truncate = SetAttrRequest { size: Some(0), ..Default::default() };
        assert!(!user(2000, 100, &[]).may_set(&file, &truncate));
        assert!(user(2000, 100, &[]).may_set(&attr(FileKind::File, 0o666, 1000, 100), &truncate));
        // Not even to the ids it has: only the owner (or root) may chown.
        let stranger = user(2000, 100, &[]);
        assert!(!stranger.may_set(&file, &chown(Some(1000), None)));
        assert!(!stranger.may_set(&file, &chown(None, Some(100))));
        assert!(owner.may_set(&file, &chown(None, Some(100))));
    }

    #[test]
    fn a_write_by_anyone_but_root_drops_set_id_bits() {
        let stranger = user(2000, 100, &[]);
        assert_eq!(stranger.mode_after_write(&attr(FileKind::File, 0o6777, 1000, 100)), Some(0o777));
        assert_eq!(stranger.mode_after_write(&attr(FileKind::File, 0o4755, 1000, 100)), Some(0o755));
        // Set-group-ID without group execute marks mandatory locking: it stays.
        assert_eq!(stranger.mode_after_write(&attr(FileKind::File, 0o6745, 1000, 100)), Some(0o2745));
        assert_eq!(stranger.mode_after_write(&attr(FileKind::File, 0o0777, 1000, 100)), None);
        assert_eq!(
            user(1000, 100, &[]).mode_after_write(&attr(FileKind::File, 0o4777, 1000, 100)),
            Some(0o777)
        );
        assert_eq!(Identity::root().mode_after_write(&attr(FileKind::File, 0o6777, 1000, 100)), None);
    }

    #[test]
    fn chown_chgrp_chmod_and_truncate_drop_set_id_bits_as_linux_does() {
        let file = attr(FileKind::File, 0o6555, 1000, 100);
        let owner = user(1000, 100, &[200]);
        let perm_of = |who: &Identity, req: SetAttrRequest| who.effective_setattr(&file, &req).perm;
        let chgrp = SetAttrRequest { gid: Some(200), ..Default::default() };
        assert_eq!(perm_of(&owner, chgrp.clone()), Some(0o555));
        assert_eq!(perm_of(&Identity::root(), chgrp), Some(0o555));
        let dir = attr(FileKind::Dir, 0o2775, 1000, 100);
        let chown_dir = SetAttrRequest { uid: Some(2000), ..Default::default() };
        assert_eq!(Identity::root().effective_setattr(&dir, &chown_dir).perm, None, "directories keep them");
        // chmod g+s by an owner outside the file's group: set-group-ID is dropped.
        let chmod = SetAttrRequest { perm: Some(0o2755), ..Default::default() };
        assert_eq!(perm_of(&user(1000, 300, &[]), chmod.clone()), Some(0o755));
        assert_eq!(perm_of(&owner, chmod.clone()), Some(0o2755));
        assert_eq!(perm_of(&Identity::root(), chmod), Some(0o2755));
        let truncate = SetAttrRequest { size: Some(0), ..Default::default() };
        assert_eq!(perm_of(&user(2000, 100, &[]), truncate.clone()), Some(0o555));
        assert_eq!(perm_of(&Identity::root(), truncate), None);
    }
}
