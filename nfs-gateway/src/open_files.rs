//! NFS has no open or close, but the engine reads and writes through open handles (they hold
//! the file's unwritten blocks and its readahead state). The gateway keeps one handle per file
//! it is reading or writing, and closes it once idle, which commits what it wrote.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use elasticfs_core::metadata::Ino;
use elasticfs_core::{FileSystem, FsError, FsResult};

pub struct OpenHandle {
    pub fh: u64,
    last_used: Mutex<Instant>,
}

impl OpenHandle {
    /// A handle that stands for engine handle `fh` without one being open.
    #[cfg(test)]
    pub fn for_tests(fh: u64) -> OpenHandle {
        OpenHandle { fh, last_used: Mutex::new(Instant::now()) }
    }
}

pub struct OpenFiles {
    fs: Arc<FileSystem>,
    handles: Mutex<HashMap<Ino, Arc<OpenHandle>>>,
}

impl OpenFiles {
    pub fn new(fs: Arc<FileSystem>) -> Self {
        OpenFiles { fs, handles: Mutex::new(HashMap::new()) }
    }

    /// The file's handle, opening it if there is none.
    pub fn get(&self, ino: Ino) -> FsResult<Arc<OpenHandle>> {
        if let Some(handle) = self.existing(ino) {
            return Ok(handle);
        }
        let fh = self.fs.open(ino, false)?;
        Ok(self.adopt(ino, fh))
    }

    /// The file's handle if it has one.
    pub fn existing(&self, ino: Ino) -> Option<Arc<OpenHandle>> {
        let handle = self.handles.lock().unwrap().get(&ino).cloned()?;
        *handle.last_used.lock().unwrap() = Instant::now();
        Some(handle)
    }

    /// Keeps `fh` (just opened, by a CREATE) as the file's handle; if another call opened the
    /// file meanwhile, that handle is kept and `fh` is closed.
    pub fn adopt(&self, ino: Ino, fh: u64) -> Arc<OpenHandle> {
        let handle = Arc::new(OpenHandle { fh, last_used: Mutex::new(Instant::now()) });
        let kept = self.handles.lock().unwrap().entry(ino).or_insert(handle).clone();
        if kept.fh != fh {
            if let Err(e) = self.fs.release(fh) {
                tracing::warn!(ino, "closing a duplicate handle: {e}");
            }
        }
        kept
    }

    /// Closes the file's handle unless a call is using it: before an unlink, so that the file
    /// goes at once instead of lingering as open-but-unlinked (NFS clients keep files they
    /// have open themselves, by renaming them aside).
    pub fn close(&self, ino: Ino) -> FsResult<()> {
        let handle = {
            let mut handles = self.handles.lock().unwrap();
            match handles.get(&ino) {
                Some(h) if Arc::strong_count(h) == 1 => handles.remove(&ino),
                _ => None,
            }
        };
        handle.map_or(Ok(()), |h| self.fs.release(h.fh))
    }

    /// Closes the handles no call has used for `idle` (all of them with `Duration::ZERO`) and
    /// not in use now. Returns the files whose close failed to commit their writes.
    pub fn close_idle(&self, idle: Duration) -> Vec<(Ino, FsError)> {
        let closing: Vec<(Ino, Arc<OpenHandle>)> = {
            let mut handles = self.handles.lock().unwrap();
            let idle: Vec<Ino> = handles
                .iter()
                .filter(|(_, h)| Arc::strong_count(h) == 1 && h.last_used.lock().unwrap().elapsed() >= idle)
                .map(|(ino, _)| *ino)
                .collect();
            idle.into_iter().filter_map(|ino| handles.remove(&ino).map(|h| (ino, h))).collect()
        };
        closing.into_iter().filter_map(|(ino, h)| self.fs.release(h.fh).err().map(|e| (ino, e))).collect()
    }
}
