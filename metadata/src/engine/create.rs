//! Creating a node: a file, directory, symlink or special file, durable when acknowledged or,
//! for a file, pending until its close (see [`super::pending`]).

use super::{check_name, Engine, S_ISGID};
use crate::error::{MetaError, MetaResult};
use crate::keys::{self, Counter};
use crate::kv::{fail, Kv};
use crate::store::{Created, NewNode};
use crate::types::{Attr, FileKind};

impl<K: Kv> Engine<K> {
    /// Creates `node` in one transaction, without waiting for the disk; a `pending` create
    /// also records itself as such.
    pub(super) fn create_node(&self, node: &NewNode, pending: bool) -> MetaResult<Created> {
        let NewNode { parent, ref name, kind, perm, uid, gid, rdev, ref link_target } = *node;
        check_name(name)?;
        let (ino, cookie) = (self.new_ino()?, self.new_cookie()?);
        self.run(|t| {
            t.prefetch_entry(parent, name, None)?;
            let mut dir = t.dir(parent)?;
            if t.dentry(parent, name)?.is_some() {
                return fail(MetaError::Exists);
            }
            let mut attr = Attr {
                uid,
                gid,
                size: link_target.len() as u64,
                rdev,
                parent,
                ..Attr::new(ino, kind, perm, t.now)
            };
            // BSD group semantics of a setgid directory, as Linux applies them.
            if dir.perm & S_ISGID != 0 {
                attr.gid = dir.gid;
                if kind == FileKind::Dir {
                    attr.perm |= S_ISGID;
                }
            }
            t.add_entry(parent, name, ino, kind, cookie);
            if kind == FileKind::Dir {
                dir.nlink += 1;
                t.touch(&mut dir);
                t.put_inode(&dir)?;
            }
            t.mark_dir_changed(parent)?;
            t.put_inode(&attr)?;
            if kind == FileKind::Symlink {
                t.put(&keys::numbered(keys::SYMLINK, ino), link_target);
            }
            // A new inode has no extended attributes: its removal need not look for them.
            let xattrs = keys::numbered(keys::XATTR, ino);
            t.known_empty(&xattrs, &crate::kv::prefix_end(&xattrs));
            t.add_counter(Counter::Inodes, 1)?;
            if pending {
                t.mark_pending(ino, parent, name);
            }
            Ok(Created { attr, dir: t.dir_as_changed(parent)? })
        })
    }
}
