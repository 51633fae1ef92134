//! `rename`, `renameat2(RENAME_NOREPLACE)` and `renameat2(RENAME_EXCHANGE)`, in one
//! transaction each.

use super::txn::Txn;
use crate::error::MetaError;
use crate::keys::Dentry;
use crate::kv::{fail, TxResult};
use crate::store::{Rename, RenameMode, Unlinked};
use crate::types::{FileKind, Ino, ROOT_INO};

/// The body of `rename`; the name's new entry takes `cookie`. Returns what a replacing rename
/// unlinked.
pub(super) fn rename_in(t: &mut Txn, rename: &Rename, cookie: u64) -> TxResult<Option<Unlinked>> {
    let Rename { parent, ref name, new_parent, ref new_name, mode, closed } = *rename;
    let (name, new_name) = (name.as_slice(), new_name.as_slice());
    let mut likely = vec![
        Txn::inode_key(parent),
        Txn::inode_key(new_parent),
        Txn::dentry_key(parent, name),
        Txn::dentry_key(new_parent, new_name),
    ];
    likely.extend(closed.map(Txn::inode_key));
    t.prefetch(&likely)?;
    t.dir(parent)?;
    let Some(src) = t.dentry(parent, name)? else {
        return fail(MetaError::NotFound);
    };
    t.confirm_create(src.ino);
    t.dir(new_parent)?;
    let dst = t.dentry(new_parent, new_name)?;
    if parent == new_parent && name == new_name {
        return match mode {
            RenameMode::NoReplace => fail(MetaError::Exists),
            _ => Ok(None),
        };
    }
    // A directory may not move into its own subtree (in either direction for an exchange).
    if src.kind == FileKind::Dir && parent != new_parent {
        check_not_ancestor(t, src.ino, new_parent)?;
    }
    if mode == RenameMode::Exchange {
        let Some(dst) = dst else {
            return fail(MetaError::NotFound);
        };
        if dst.kind == FileKind::Dir && parent != new_parent {
            check_not_ancestor(t, dst.ino, parent)?;
        }
        exchange(t, (parent, name, src), (new_parent, new_name, dst))?;
        return Ok(None);
    }
    let mut unlinked = None;
    // The two directories may be one inode: each step reloads the record it changes.
    if let Some(dst) = dst {
        if mode == RenameMode::NoReplace {
            return fail(MetaError::Exists);
        }
        if dst.ino == src.ino {
            // Two names of one inode: POSIX says do nothing.
            return Ok(None);
        }
        let victim = t.inode(dst.ino)?;
        match (src.kind == FileKind::Dir, victim.is_dir()) {
            (true, false) => return fail(MetaError::NotDir),
            (false, true) => return fail(MetaError::IsDir),
            (true, true) if !t.is_empty_dir(victim.ino)? => return fail(MetaError::NotEmpty),
            _ => {}
        }
        t.remove_entry(new_parent, new_name, &dst);
        t.mark_dir_changed(new_parent)?;
        if victim.is_dir() {
            let mut dir = t.inode(new_parent)?;
            dir.nlink -= 1;
            t.put_inode(&dir)?;
            if !t.delete_dir(&victim)? {
                unlinked = Some(Unlinked { attr: victim, orphaned: true, purged: false, dir: None });
            }
        } else {
            unlinked = Some(t.drop_link(victim, closed)?);
        }
    }
    t.remove_entry(parent, name, &src);
    t.add_entry(new_parent, new_name, src.ino, src.kind, cookie);
    // A directory moving between directories changes both link counts.
    let moves_dir = src.kind == FileKind::Dir && parent != new_parent;
    t.mark_dir_changed(parent)?;
    t.mark_dir_changed(new_parent)?;
    if moves_dir {
        let mut from = t.inode(parent)?;
        from.nlink -= 1;
        t.touch(&mut from);
        t.put_inode(&from)?;
        let mut to = t.inode(new_parent)?;
        to.nlink += 1;
        t.touch(&mut to);
        t.put_inode(&to)?;
    }
    let mut moved = t.inode(src.ino)?;
    moved.ctime = t.now;
    if moved.is_dir() {
        moved.parent = new_parent;
    }
    t.put_inode(&moved)?;
    Ok(unlinked)
}

/// RENAME_EXCHANGE: each of the two names, given as (directory, name, entry), takes the
/// other's inode.
fn exchange(
    t: &mut Txn,
    (parent, name, src): (Ino, &[u8], Dentry),
    (new_parent, new_name, dst): (Ino, &[u8], Dentry),
) -> TxResult<()> {
    // Point each name at the other inode, keeping each name's cookie.
    t.put_entry(parent, name, &Dentry { ino: dst.ino, kind: dst.kind, cookie: src.cookie });
    t.put_entry(new_parent, new_name, &Dentry { ino: src.ino, kind: src.kind, cookie: dst.cookie });
    t.mark_dir_changed(parent)?;
    t.mark_dir_changed(new_parent)?;
    let dirs_moving_in = (src.kind == FileKind::Dir) as i64 - (dst.kind == FileKind::Dir) as i64;
    if parent != new_parent && dirs_moving_in != 0 {
        let mut to = t.inode(new_parent)?;
        to.nlink = (to.nlink as i64 + dirs_moving_in) as u32;
        t.put_inode(&to)?;
        let mut from = t.inode(parent)?;
        from.nlink = (from.nlink as i64 - dirs_moving_in) as u32;
        t.put_inode(&from)?;
    }
    for (ino, home) in [(src.ino, new_parent), (dst.ino, parent)] {
        let mut attr = t.inode(ino)?;
        attr.ctime = t.now;
        if attr.is_dir() {
            attr.parent = home;
        }
        t.put_inode(&attr)?;
    }
    Ok(())
}

/// Fails with EINVAL if `dir` is `target` or one of its ancestors.
fn check_not_ancestor(t: &mut Txn, dir: Ino, target: Ino) -> TxResult<()> {
    let mut cursor = target;
    loop {
        if cursor == dir {
            return fail(MetaError::Invalid("cannot move a directory into itself".into()));
        }
        if cursor == ROOT_INO {
            return Ok(());
        }
        cursor = t.inode(cursor).or_else(|_| fail(MetaError::NotFound))?.parent;
    }
}
