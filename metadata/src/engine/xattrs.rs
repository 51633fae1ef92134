//! Extended attributes: one key per attribute under its inode; a change also sets the inode's
//! ctime, so the inode owns the range (see [`crate::keys`]).

use super::Engine;
use crate::error::{MetaError, MetaResult};
use crate::keys;
use crate::kv::{fail, Kv};
use crate::store::XattrMode;
use crate::types::Ino;

impl<K: Kv> Engine<K> {
    pub(super) fn set_xattr_in(
        &self,
        ino: Ino,
        name: &[u8],
        value: &[u8],
        mode: XattrMode,
    ) -> MetaResult<()> {
        self.mutate(|t| {
            t.confirm_create(ino);
            let mut attr = t.inode(ino)?;
            let key = keys::numbered_with(keys::XATTR, ino, name);
            let exists = t.get(&key)?.is_some();
            match mode {
                XattrMode::Create if exists => return fail(MetaError::Exists),
                XattrMode::Replace if !exists => return fail(MetaError::NoXattr),
                _ => {}
            }
            t.put(&key, value);
            attr.ctime = t.now;
            t.put_inode(&attr)
        })
    }

    pub(super) fn get_xattr_in(&self, ino: Ino, name: &[u8]) -> MetaResult<Vec<u8>> {
        self.read(|t| {
            let keys = [keys::numbered(keys::INODE, ino), keys::numbered_with(keys::XATTR, ino, name)];
            match t.kv.get_many(&keys)?.as_slice() {
                [None, _] => fail(MetaError::NotFound),
                [Some(_), Some(value)] => Ok(value.clone()),
                _ => fail(MetaError::NoXattr),
            }
        })
    }

    pub(super) fn list_xattr_in(&self, ino: Ino) -> MetaResult<Vec<Vec<u8>>> {
        self.read(|t| {
            t.inode(ino)?;
            let found = t.scan_whole(&keys::numbered(keys::XATTR, ino))?;
            Ok(found.into_iter().map(|(k, _)| k[9..].to_vec()).collect())
        })
    }

    pub(super) fn remove_xattr_in(&self, ino: Ino, name: &[u8]) -> MetaResult<()> {
        self.mutate(|t| {
            t.confirm_create(ino);
            let mut attr = t.inode(ino)?;
            let key = keys::numbered_with(keys::XATTR, ino, name);
            if t.get(&key)?.is_none() {
                return fail(MetaError::NoXattr);
            }
            t.delete(&key);
            attr.ctime = t.now;
            t.put_inode(&attr)
        })
    }
}
