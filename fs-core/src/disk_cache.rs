//! Chunks and segments kept on local disk, so that data read once is not fetched again after
//! it leaves the memory cache or across remounts. It is only a cache: what it returns is
//! verified by the caller like any download, a damaged file is dropped and fetched again, and a
//! full disk stops the caching, never a read.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lru::LruCache;
use tracing::{info, warn};

use crate::block_cache::{CacheKey, Part};
use crate::error::{FsError, FsResult};

/// Leave at least this share of the cache's file system free, whatever the configured size.
const MIN_FREE_RATIO: f64 = 0.10;
/// Cached files kept open for ranged reads (a random read from the disk cache is one `pread`,
/// not an `open`, a `pread` and a `close`).
const OPEN_FILES: usize = 256;
/// How often a full disk is reported while it stays full.
const FULL_WARNING_EVERY: Duration = Duration::from_secs(60);

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

pub struct DiskCache {
    dir: PathBuf,
    capacity: u64,
    state: Mutex<State>,
    open_files: Mutex<LruCache<CacheKey, Arc<File>>>,
}

struct State {
    lru: LruCache<CacheKey, u64>,
    bytes: u64,
    /// Lowered when the disk fills up before `capacity` is reached.
    limit: u64,
    last_full_warning: Option<Instant>,
}

impl DiskCache {
    /// Opens (creating it if needed) the cache in `dir`, holding at most `capacity` bytes, and
    /// indexes what an earlier mount left there.
    pub fn open(dir: &Path, capacity: u64) -> FsResult<Self> {
        let fix = "choose another with -o cache-dir=DIR, or turn the disk cache off with -o disk-cache=0";
        std::fs::create_dir_all(dir)
            .map_err(|e| FsError::io(format!("cache directory {}: {e}; {fix}", dir.display())))?;
        let probe = dir.join(".probe");
        std::fs::write(&probe, b"probe").and_then(|_| std::fs::remove_file(&probe)).map_err(|e| {
            FsError::io(format!("cache directory {} is not writable: {e}; {fix}", dir.display()))
        })?;
        let cache = DiskCache {
            dir: dir.to_path_buf(),
            capacity,
            state: Mutex::new(State {
                lru: LruCache::unbounded(),
                bytes: 0,
                limit: capacity,
                last_full_warning: None,
            }),
            open_files: Mutex::new(LruCache::new(OPEN_FILES.try_into().expect("non-zero"))),
        };
        let found = cache.index_existing();
        if found > 0 {
            info!(dir = %dir.display(), files = found, "disk cache reused");
        }
        Ok(cache)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Bytes held now.
    pub fn size(&self) -> u64 {
        self.state.lock().unwrap().bytes
    }

    /// The cached bytes of `key`, or of `range` of them, unverified (the caller checks them
    /// against their hash). A file that cannot be read is forgotten.
    pub fn get(&self, key: &CacheKey, range: Option<std::ops::Range<u64>>) -> Option<Vec<u8>> {
        self.state.lock().unwrap().lru.get(key)?;
        let read = match range {
            None => std::fs::read(self.path(key)),
            Some(range) => self
                .open_file(key)
                .and_then(|file| read_exact_at(&file, range.start, (range.end - range.start) as usize)),
        };
        read.inspect_err(|_| self.discard(key)).ok()
    }

    /// The file of `key`, opened once for many ranged reads. (A descriptor kept past its
    /// file's removal reads the same bytes a new file of that key would hold: names are
    /// contents. The caller verifies them all the same.)
    fn open_file(&self, key: &CacheKey) -> std::io::Result<Arc<File>> {
        if let Some(file) = self.open_files.lock().unwrap().get(key) {
            return Ok(file.clone());
        }
        let file = Arc::new(File::open(self.path(key))?);
        self.open_files.lock().unwrap().put(*key, file.clone());
        Ok(file)
    }

    /// Removes `key`'s file (it leaves the cache).
    fn remove_file(&self, key: &CacheKey) {
        self.open_files.lock().unwrap().pop(key);
        let _ = std::fs::remove_file(self.path(key));
    }

    /// Whether `key` is cached (without reading it).
    pub fn contains(&self, key: &CacheKey) -> bool {
        self.state.lock().unwrap().lru.contains(key)
    }

    /// Forgets `key` (its file failed verification or vanished).
    pub fn discard(&self, key: &CacheKey) {
        let mut st = self.state.lock().unwrap();
        if let Some(len) = st.lru.pop(key) {
            st.bytes -= len;
        }
        self.remove_file(key);
    }

    /// Stores `data` under `key`, evicting the least recently used files to make room.
    pub fn insert(&self, key: CacheKey, data: &[u8]) {
        let len = data.len() as u64;
        {
            let mut st = self.state.lock().unwrap();
            if st.lru.contains(&key) || len > st.limit {
                return;
            }
            self.make_room(&mut st, len);
        }
        let path = self.path(&key);
        // Written beside and renamed into place, so that a crash never leaves a torn file
        // under a chunk's name (a leftover `.tmp` is removed at the next open).
        let unique = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        let tmp = path.with_extension(format!("{unique}.tmp"));
        let written = path
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|_| std::fs::write(&tmp, data))
            .and_then(|_| std::fs::rename(&tmp, &path));
        let mut st = self.state.lock().unwrap();
        match written {
            Ok(()) => {
                // Another copy of the same bytes may have landed meanwhile: counted once.
                if let Some(before) = st.lru.put(key, len) {
                    st.bytes -= before;
                }
                st.bytes += len;
            }
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                // Most likely the disk is full: cache no more than what fits now.
                st.limit = st.bytes.min(self.capacity);
                self.report_full(&mut st, &e.to_string());
            }
        }
    }

    fn make_room(&self, st: &mut State, incoming: u64) {
        if free_ratio(&self.dir).is_some_and(|r| r < MIN_FREE_RATIO) {
            st.limit = st.bytes.saturating_sub(incoming);
            let reason = format!("less than {:.0}% of its file system is free", MIN_FREE_RATIO * 100.0);
            self.report_full(st, &reason);
        }
        while st.bytes + incoming > st.limit {
            let Some((old, len)) = st.lru.pop_lru() else { break };
            st.bytes -= len;
            self.remove_file(&old);
        }
    }

    /// Says, at most once a minute, that the cache cannot grow: whether a write failed or the
    /// disk's free-space reserve was reached first, the user's fix is the same.
    fn report_full(&self, st: &mut State, reason: &str) {
        let now = Instant::now();
        if st.last_full_warning.is_none_or(|t| now.duration_since(t) >= FULL_WARNING_EVERY) {
            st.last_full_warning = Some(now);
            warn!(
                dir = %self.dir.display(),
                cached = st.bytes,
                "cannot write to the disk cache ({reason}); reads go on without it: free space \
                 there, or lower -o disk-cache=SIZE"
            );
        }
    }

    /// `<dir>/<2 hex>/<hex>` for a whole chunk, `<hex>.<n>` for its segment n.
    fn path(&self, (hash, part): &CacheKey) -> PathBuf {
        let hex = hex::encode(hash);
        let name = match part {
            Part::Whole => hex.clone(),
            Part::Segment(n) => format!("{hex}.{n}"),
            Part::SegmentHashes => format!("{hex}.segs"),
        };
        self.dir.join(&hex[..2]).join(name)
    }

    fn index_existing(&self) -> usize {
        let mut st = self.state.lock().unwrap();
        let Ok(shards) = std::fs::read_dir(&self.dir) else { return 0 };
        for shard in shards.flatten() {
            let Ok(files) = std::fs::read_dir(shard.path()) else { continue };
            for file in files.flatten() {
                let path = file.path();
                match (parse_name(&file.file_name().to_string_lossy()), file.metadata()) {
                    (Some(key), Ok(meta)) if st.bytes + meta.len() <= st.limit => {
                        st.bytes += meta.len();
                        st.lru.put(key, meta.len());
                    }
                    // Torn writes of a crashed mount, strangers, or more than fits now.
                    _ => {
                        let _ = std::fs::remove_file(&path);
                    }
                }
            }
        }
        st.lru.len()
    }
}

/// `len` bytes at `offset` of `file`, read into fresh memory without zeroing it first (a
/// random read from the cache reads a whole segment: zeroing it first was a tenth of the time).
fn read_exact_at(file: &File, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(len);
    while buf.len() < len {
        let at = (offset + buf.len() as u64) as libc::off_t;
        let spare = buf.spare_capacity_mut();
        // SAFETY: pread writes at most `spare.len()` bytes into the vector's spare capacity,
        // which it owns; only the bytes it reports written are then counted as the vector's.
        let read = unsafe { libc::pread(file.as_raw_fd(), spare.as_mut_ptr().cast(), spare.len(), at) };
        match read {
            0 => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            // SAFETY: pread initialised these `n` bytes just past the vector's length.
            n if n > 0 => unsafe { buf.set_len(buf.len() + n as usize) },
            _ => {
                let e = std::io::Error::last_os_error();
                if e.kind() != std::io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
    Ok(buf)
}

fn parse_name(name: &str) -> Option<CacheKey> {
    let (hex, part) = match name.split_once('.') {
        None => (name, Part::Whole),
        Some((hex, n)) => (hex, Part::Segment(n.parse().ok()?)),
    };
    let hash: [u8; 32] = hex::decode(hex).ok()?.try_into().ok()?;
    Some((hash, part))
}

/// Free share of the file system holding `dir`.
fn free_ratio(dir: &Path) -> Option<f64> {
    let path = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).ok()?;
    // SAFETY: statvfs writes into the zeroed struct we own; the path is NUL-terminated.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 || st.f_blocks == 0 {
        return None;
    }
    Some(st.f_bavail as f64 / st.f_blocks as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_within_capacity_and_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let cache = DiskCache::open(dir.path(), 10).unwrap();
        cache.insert(([1; 32], Part::Whole), b"aaaa");
        cache.insert(([2; 32], Part::Segment(3)), b"bbbb");
        assert_eq!(cache.get(&([1; 32], Part::Whole), None).unwrap(), b"aaaa");
        cache.insert(([3; 32], Part::Whole), b"cccc"); // evicts 2, the least recently used
        assert!(cache.get(&([2; 32], Part::Segment(3)), None).is_none());
        assert_eq!(cache.size(), 8);
        drop(cache);
        let again = DiskCache::open(dir.path(), 10).unwrap();
        assert_eq!(again.size(), 8);
        assert_eq!(again.get(&([3; 32], Part::Whole), None).unwrap(), b"cccc");
        assert_eq!(again.get(&([3; 32], Part::Whole), Some(1..3)).unwrap(), b"cc");
        again.discard(&([3; 32], Part::Whole));
        assert!(again.get(&([3; 32], Part::Whole), None).is_none());
    }

    #[test]
    fn an_unwritable_directory_is_refused_with_the_fix() {
        let Err(err) = DiskCache::open(Path::new("/proc/elasticfs-cache"), 10) else { panic!("opened") };
        assert!(err.message.contains("-o cache-dir="), "{err}");
    }
}
