//! One metadata transaction: typed access to every tree, so that the namespace operations in
//! `mod.rs` read as the rules they enforce rather than as byte juggling.

use sled::transaction::{ConflictableTransactionError, TransactionalTree};

use crate::error::MetaError;
use crate::schema::{self, Dentry};
use crate::session::SessionId;
use crate::store::Unlinked;
use crate::types::{Attr, BlockRef, ChunkHash, FileKind, Ino, Timestamp};

pub(super) type TxResult<T> = Result<T, ConflictableTransactionError<MetaError>>;

pub(super) fn fail<T>(e: MetaError) -> TxResult<T> {
    Err(ConflictableTransactionError::Abort(e))
}

pub(super) trait OrAbort<T> {
    fn or_abort(self) -> TxResult<T>;
}

impl<T> OrAbort<T> for Result<T, MetaError> {
    fn or_abort(self) -> TxResult<T> {
        self.map_err(ConflictableTransactionError::Abort)
    }
}

pub(super) struct Txn<'a> {
    pub(super) inodes: &'a TransactionalTree,
    pub(super) dentries: &'a TransactionalTree,
    pub(super) cookies: &'a TransactionalTree,
    pub(super) blocks: &'a TransactionalTree,
    pub(super) symlinks: &'a TransactionalTree,
    pub(super) chunk_refs: &'a TransactionalTree,
    pub(super) unreferenced: &'a TransactionalTree,
    pub(super) intents: &'a TransactionalTree,
    pub(super) condemned: &'a TransactionalTree,
    pub(super) xattrs: &'a TransactionalTree,
    pub(super) orphans: &'a TransactionalTree,
    pub(super) counters: &'a TransactionalTree,
    pub(super) block_size: u64,
    /// The session doing the change: an inode it orphans belongs to it.
    pub(super) session: SessionId,
    pub(super) now: Timestamp,
}

impl Txn<'_> {
    pub(super) fn inode(&self, ino: Ino) -> TxResult<Attr> {
        match self.inodes.get(schema::ino_key(ino))? {
            Some(v) => Attr::decode(&v).or_abort(),
            None => fail(MetaError::NotFound),
        }
    }

    pub(super) fn put_inode(&self, attr: &Attr) -> TxResult<()> {
        self.inodes.insert(&schema::ino_key(attr.ino), attr.encode())?;
        Ok(())
    }

    /// A live directory: exists, is a directory and has not been removed.
    pub(super) fn dir(&self, ino: Ino) -> TxResult<Attr> {
        let attr = self.inode(ino)?;
        if !attr.is_dir() {
            return fail(MetaError::NotDir);
        }
        if attr.nlink == 0 {
            return fail(MetaError::NotFound);
        }
        Ok(attr)
    }

    pub(super) fn dentry(&self, parent: Ino, name: &[u8]) -> TxResult<Option<Dentry>> {
        match self.dentries.get(schema::ino_prefixed(parent, name))? {
            Some(v) => Dentry::decode(&v).map(Some).or_abort(),
            None => Ok(None),
        }
    }

    /// Adds `name -> ino` to `dir` with the directory's next cookie. The caller stores `dir`.
    pub(super) fn add_entry(&self, dir: &mut Attr, name: &[u8], ino: Ino, kind: FileKind) -> TxResult<()> {
        let cookie = dir.next_cookie;
        dir.next_cookie += 1;
        dir.entries += 1;
        let entry = Dentry { ino, kind, cookie };
        self.dentries.insert(schema::ino_prefixed(dir.ino, name), entry.encode())?;
        self.cookies.insert(&schema::pair_key(dir.ino, cookie), name)?;
        Ok(())
    }

    /// Removes `name` from `dir`. The caller stores `dir`.
    pub(super) fn remove_entry(&self, dir: &mut Attr, name: &[u8], entry: &Dentry) -> TxResult<()> {
        dir.entries -= 1;
        self.dentries.remove(schema::ino_prefixed(dir.ino, name))?;
        self.cookies.remove(&schema::pair_key(dir.ino, entry.cookie))?;
        Ok(())
    }

    pub(super) fn add_counter(&self, key: &[u8], delta: i64) -> TxResult<()> {
        if delta == 0 {
            return Ok(());
        }
        let current = self.counters.get(key)?.map(|v| schema::decode_u64(&v)).unwrap_or(0);
        let next = current.saturating_add_signed(delta);
        self.counters.insert(key, &schema::encode_u64(next))?;
        Ok(())
    }

    fn chunk_ref(&self, hash: &ChunkHash, delta: i64) -> TxResult<()> {
        let current = self.chunk_refs.get(hash)?.map(|v| schema::decode_u64(&v)).unwrap_or(0);
        if current == 0 && delta > 0 {
            self.check_protected(hash)?;
        }
        let next = current.saturating_add_signed(delta);
        if next == 0 {
            self.chunk_refs.remove(hash)?;
            self.unreferenced.insert(hash, schema::encode_time(self.now))?;
        } else {
            if current == 0 {
                self.unreferenced.remove(hash)?;
            }
            self.chunk_refs.insert(hash, &schema::encode_u64(next))?;
        }
        Ok(())
    }

    /// Places (or with `None` removes) one block and keeps chunk references in step. Returns the
    /// change in stored bytes.
    pub(super) fn set_block(&self, ino: Ino, index: u64, block: Option<&BlockRef>) -> TxResult<i64> {
        let key = schema::pair_key(ino, index);
        let old = match block {
            Some(b) => self.blocks.insert(&key, b.encode())?,
            None => self.blocks.remove(&key)?,
        };
        let mut delta = 0i64;
        if let Some(old) = old {
            let old = BlockRef::decode(&old).or_abort()?;
            if let BlockRef::Chunk { hash, .. } = &old {
                self.chunk_ref(hash, -1)?;
            }
            delta -= old.len() as i64;
        }
        if let Some(new) = block {
            if let BlockRef::Chunk { hash, .. } = new {
                self.chunk_ref(hash, 1)?;
            }
            delta += new.len() as i64;
        }
        Ok(delta)
    }

    /// Removes every block of `ino` from index `first` up to the end of a file of `size` bytes.
    pub(super) fn drop_blocks_from(&self, ino: Ino, first: u64, size: u64) -> TxResult<i64> {
        let end = size.div_ceil(self.block_size);
        let mut delta = 0;
        for index in first..end {
            delta += self.set_block(ino, index, None)?;
        }
        Ok(delta)
    }

    /// Drops a name's hold on `attr` (already loaded). When that was the last name the inode
    /// is removed if it is the caller's `closed` one, else kept as an orphan.
    pub(super) fn drop_link(&self, mut attr: Attr, closed: Option<Ino>) -> TxResult<Unlinked> {
        attr.nlink = attr.nlink.saturating_sub(1);
        attr.ctime = self.now;
        let last = attr.nlink == 0;
        let purged = last && closed == Some(attr.ino);
        if purged {
            self.remove_inode(&attr)?;
        } else {
            self.put_inode(&attr)?;
            if last {
                self.orphans.insert(&schema::ino_key(attr.ino), &schema::encode_u64(self.session))?;
            }
        }
        Ok(Unlinked { attr, orphaned: last && !purged, purged })
    }

    /// Deletes a file with no names left: its blocks, its record and its orphan entry. Its
    /// extended attributes are not in the transaction (they need a range scan): the caller
    /// drops them after the commit.
    pub(super) fn remove_inode(&self, attr: &Attr) -> TxResult<()> {
        let delta = self.drop_blocks_from(attr.ino, 0, attr.size)?;
        self.add_counter(schema::BYTES_COUNTER, delta)?;
        self.add_counter(schema::INODES_COUNTER, -1)?;
        self.inodes.remove(&schema::ino_key(attr.ino))?;
        self.symlinks.remove(&schema::ino_key(attr.ino))?;
        self.orphans.remove(&schema::ino_key(attr.ino))?;
        Ok(())
    }

    /// Deletes an empty directory's inode outright (directories are never kept as orphans).
    pub(super) fn delete_dir(&self, attr: &Attr) -> TxResult<()> {
        self.inodes.remove(&schema::ino_key(attr.ino))?;
        self.add_counter(schema::INODES_COUNTER, -1)
    }

    pub(super) fn touch(&self, attr: &mut Attr) {
        attr.mtime = self.now;
        attr.ctime = self.now;
    }
}
