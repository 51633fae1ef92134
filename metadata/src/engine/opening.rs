//! What opening a store does to records that an earlier engine left in a form this one no
//! longer writes. Each step finds nothing to do on a store it has seen before.

use super::{Engine, FIRST_COOKIE};
use crate::error::{MetaError, MetaResult};
use crate::keys;
use crate::kv::{Kv, TxError};
use crate::types::FORMAT_VERSION;

impl<K: Kv> Engine<K> {
    /// Marks a store of an earlier format as this one's before anything new is written to it:
    /// an older elasticfs that opens it afterwards refuses it by name rather than meeting
    /// records it cannot read (format 3 added slices to blocks; nothing else changes). The
    /// caller opened the engine with the new version already in its superblock.
    pub(super) fn upgrade_format(&self) -> MetaResult<()> {
        self.mutate(|t| {
            let mut superblock = t.superblock()?;
            superblock.format_version = superblock.format_version.max(FORMAT_VERSION);
            t.put(keys::SUPERBLOCK, &serde_json::to_vec(&superblock).map_err(MetaError::store)?);
            Ok(())
        })
    }

    /// Stores written before readdir cookies came from one counter (format 1, and format 2
    /// before record version 2 of inodes) numbered each directory's entries from 3: the
    /// counter starts past the highest cookie in use.
    pub(super) fn start_cookie_counter(&self) -> MetaResult<()> {
        if self.read(|t| t.get(keys::NEXT_COOKIE))?.is_some() {
            return Ok(());
        }
        self.mutate(|t| {
            let mut next = FIRST_COOKIE;
            for (key, _) in t.scan_whole(&[keys::LISTING])? {
                next = next.max(keys::second_number(&key)? + 1);
            }
            t.put(keys::NEXT_COOKIE, &keys::encode_u64(next));
            Ok(())
        })
    }

    /// A store that one process holds keeps directories' times in their records (see
    /// [`Kv::single_writer`]); times keys on one (written by the engine before that, or loaded
    /// from a replicated store's dump) are folded into the records, all in one transaction.
    pub(super) fn fold_dir_times(&self) -> MetaResult<()> {
        if !self.shared.kv.single_writer() || self.read(|t| t.scan_prefix(&[keys::DIR_TIMES], 1))?.is_empty()
        {
            return Ok(());
        }
        self.mutate(|t| {
            for (key, raw) in t.scan_whole(&[keys::DIR_TIMES])? {
                let changed = keys::decode_time(&raw)?;
                let ino = keys::first_number(&key)?;
                match t.inode(ino) {
                    Ok(mut dir) => {
                        dir.mtime = dir.mtime.max(changed);
                        dir.ctime = dir.ctime.max(changed);
                        t.put_inode(&dir)?;
                    }
                    Err(TxError::Abort(MetaError::NotFound)) => {}
                    Err(e) => return Err(e),
                }
                t.delete(&key);
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::kv::{Kv, KvTxn};
    use crate::store::{MetaStore, NewNode};
    use crate::types::{FileKind, Superblock, Timestamp, ROOT_INO};
    use crate::{keys, SledStore};

    /// A sled store with a times key (as the engine wrote them before single-writer stores kept
    /// times in records) opens with the times in the record and the key gone.
    #[test]
    fn times_keys_are_folded_into_records_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta");
        let later = Timestamp { secs: 4_000_000_000, nanos: 5 };
        let d = {
            let store =
                SledStore::format(&path, &Superblock::new("t", 65536, 1024, "memory://"), 0, 0).unwrap();
            let d = store.create(&NewNode::new(ROOT_INO, b"d", FileKind::Dir, 0o755)).unwrap().ino;
            store
                .kv()
                .transact(&mut |t: &mut dyn KvTxn| {
                    t.put(&keys::numbered(keys::DIR_TIMES, d), &keys::encode_time(later));
                    // One whose directory is gone is dropped.
                    t.put(&keys::numbered(keys::DIR_TIMES, 999), &keys::encode_time(later));
                    Ok(())
                })
                .unwrap();
            d
        };
        let store = SledStore::open(&path).unwrap();
        let attr = store.getattr(d).unwrap();
        assert_eq!((attr.mtime, attr.ctime), (later, later));
        assert!(store.scan_all(&[keys::DIR_TIMES]).unwrap().is_empty());
        let audit = store.audit().unwrap();
        assert!(audit.is_clean(), "{:#?}", audit.findings);
    }
}
