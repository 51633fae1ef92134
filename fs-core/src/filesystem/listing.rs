//! Directory listings: names only (`readdir`), or names with attributes (`readdirplus`, NFS's
//! READDIRPLUS), from a listing offset, through an open directory's cursor when there is one.

use std::collections::VecDeque;

use elasticfs_metadata::{Attr, DirEntry, FileKind, Ino};

use super::dir_handles::Cursor;
use super::FileSystem;
use crate::error::{errno, FsError, FsResult};
use crate::metrics::Op;

/// Entries offered to a listing's taker at once: about what one reply of a page holds, and the
/// batch in which a listing with attributes asks the store for them.
const RUN: usize = 32;

impl FileSystem {
    /// Entries after cookie `after` (0 = from the start), at most `limit` of them.
    pub fn readdir(&self, dir: Ino, after: u64, limit: usize) -> FsResult<Vec<DirEntry>> {
        self.metadata_op(Op::Readdir, || Ok(self.meta.readdir(dir, after, limit)?))
    }

    /// Lists `dir` from listing offset `offset` (0 = the start), with `.` and `..` first (offsets
    /// 1 and 2; entries carry their own cookies, which are larger). `add` receives each entry
    /// with the offset that resumes after it, and returns true when the entry did not fit (it
    /// is then not taken, and the listing stops). Returns whether the listing reached the end.
    pub fn list_dir(
        &self,
        dir: Ino,
        offset: u64,
        add: impl FnMut(Ino, u64, FileKind, &[u8]) -> bool,
    ) -> FsResult<bool> {
        self.list(dir, offset, None, names(add))
    }

    /// Opens a directory for listing with [`Self::list_open_dir`] (FUSE's opendir).
    pub fn open_dir(&self) -> u64 {
        self.dir_handles.open()
    }

    pub fn release_dir(&self, fh: u64) {
        self.dir_handles.release(fh)
    }

    /// [`Self::list_dir`] through an open directory `fh`, which keeps what it read past what
    /// `add` took for the next call that resumes there. A listing from the start reads afresh
    /// (rewinddir sees the directory as it is now).
    pub fn list_open_dir(
        &self,
        fh: u64,
        dir: Ino,
        offset: u64,
        add: impl FnMut(Ino, u64, FileKind, &[u8]) -> bool,
    ) -> FsResult<bool> {
        let cursor = self.dir_handles.get(fh);
        let mut cursor = cursor.as_ref().map(|c| c.lock().unwrap());
        self.list(dir, offset, cursor.as_deref_mut(), names(add))
    }

    /// [`Self::list_dir`] with each entry's attributes (`None` for an entry removed since it
    /// was listed), asked of the store a run of entries at a time rather than one by one.
    pub fn list_dir_plus(
        &self,
        dir: Ino,
        offset: u64,
        add: impl FnMut(Ino, u64, FileKind, &[u8], Option<&Attr>) -> bool,
    ) -> FsResult<bool> {
        self.list(dir, offset, None, self.with_attrs(add))
    }

    /// [`Self::list_dir_plus`] through an open directory, as [`Self::list_open_dir`]: the
    /// entries a reply had no room for are the next reply's, not read from the store again.
    /// (Without the cursor every reply of about 30 entries read a page of 512.)
    pub fn list_open_dir_plus(
        &self,
        fh: u64,
        dir: Ino,
        offset: u64,
        add: impl FnMut(Ino, u64, FileKind, &[u8], Option<&Attr>) -> bool,
    ) -> FsResult<bool> {
        let cursor = self.dir_handles.get(fh);
        let mut cursor = cursor.as_ref().map(|c| c.lock().unwrap());
        self.list(dir, offset, cursor.as_deref_mut(), self.with_attrs(add))
    }

    /// A taker that looks up a run's attributes in one request and hands each entry to `add`.
    fn with_attrs<'a>(
        &'a self,
        mut add: impl FnMut(Ino, u64, FileKind, &[u8], Option<&Attr>) -> bool + 'a,
    ) -> impl FnMut(&[DirEntry]) -> FsResult<usize> + 'a {
        move |run| {
            let inos: Vec<Ino> = run.iter().map(|e| e.ino).collect();
            let attrs = self.metadata_op(Op::Getattr, || Ok(self.meta.getattrs(&inos)?))?;
            for (taken, (e, attr)) in run.iter().zip(attrs).enumerate() {
                let attr = attr.map(|attr| self.with_local_changes(attr));
                if add(e.ino, e.cookie, e.kind, &e.name, attr.as_ref()) {
                    return Ok(taken);
                }
            }
            Ok(run.len())
        }
    }

    /// The listing itself: `take` is offered runs of entries in order and says how many of
    /// each it took; fewer than offered ends the listing there, and `cursor` keeps the rest.
    fn list(
        &self,
        dir: Ino,
        offset: u64,
        mut cursor: Option<&mut Cursor>,
        mut take: impl FnMut(&[DirEntry]) -> FsResult<usize>,
    ) -> FsResult<bool> {
        // Metered per request to the store, by getattr and readdir. An open directory keeps
        // what its caller did not take, so it reads more at once: fewer, larger pages.
        let batch_size = if cursor.is_some() { 4096 } else { 512 };
        if offset < 2 {
            if let Some(cursor) = cursor.as_deref_mut() {
                *cursor = Cursor::default();
            }
            let attr = self.getattr(dir)?;
            if attr.kind != FileKind::Dir {
                return Err(FsError::new(errno::ENOTDIR, "not a directory"));
            }
            let dot =
                |ino, cookie, name: &[u8]| DirEntry { name: name.to_vec(), ino, kind: FileKind::Dir, cookie };
            let dots = [dot(dir, 1, b"."), dot(attr.parent, 2, b"..")];
            let dots = &dots[offset as usize..];
            if take(dots)? < dots.len() {
                return Ok(false);
            }
        }
        let mut after = offset.max(2);
        loop {
            let (mut batch, done): (VecDeque<DirEntry>, bool) = match cursor.as_deref_mut() {
                Some(c) if c.after == after && !c.ahead.is_empty() => (std::mem::take(&mut c.ahead), c.end),
                _ => {
                    let batch = self.readdir(dir, after, batch_size)?;
                    let done = batch.len() < batch_size;
                    (batch.into(), done)
                }
            };
            while !batch.is_empty() {
                let run = batch.make_contiguous();
                let run = &run[..run.len().min(RUN)];
                let offered = run.len();
                let taken = take(run)?;
                if taken > 0 {
                    after = run[taken - 1].cookie;
                }
                batch.drain(..taken);
                if taken < offered {
                    if let Some(c) = cursor.as_deref_mut() {
                        *c = Cursor { after, ahead: batch, end: done };
                    }
                    return Ok(false);
                }
            }
            if done {
                return Ok(true);
            }
        }
    }
}

/// A taker that hands each entry's name to `add` until it is full.
fn names(
    mut add: impl FnMut(Ino, u64, FileKind, &[u8]) -> bool,
) -> impl FnMut(&[DirEntry]) -> FsResult<usize> {
    move |run| Ok(run.iter().position(|e| add(e.ino, e.cookie, e.kind, &e.name)).unwrap_or(run.len()))
}
