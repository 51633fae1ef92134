//! The embedded store's write-ahead journal: what makes a commit durable with one append and
//! one `fdatasync`.
//!
//! Every commit is queued here as a record of its writes when it is applied (to the memory
//! tables of [`super::memtable`]). A group commit ([`crate::durability`]) writes the queued
//! records to the journal's file and syncs it: that is the commit's durability. sled receives
//! the commits later, many at a time, at a checkpoint ([`super::sled`]), after which the
//! journal files before it are removed.
//!
//! On open, every journal file left is replayed into sled in order. A record holds the values
//! its commit wrote (and the keys it deleted), never a change relative to what was there, so
//! replaying records sled already holds changes nothing: after a crash sled holds the state of
//! its last checkpoint, or part of the one under way (whose records are all still here), and
//! replaying every record since the last completed checkpoint over it gives the state of the
//! last record written. A record cut short by the crash fails its checksum and ends the replay:
//! its commit was never acknowledged.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use super::write_set::WriteSet;
use crate::durability::SledFlush;

/// The journal's directory inside the sled store's.
const DIR: &str = "journal";
/// A record's header: the length of its body and the body's CRC-32.
const HEADER: usize = 8;
/// How far ahead of its records a journal file is filled with zeros.
const ZEROED_AHEAD: u64 = 1 << 20;
/// The unit of a direct write: it starts and ends on a multiple of this, from memory aligned
/// to it (every Linux file system that takes `O_DIRECT` takes this).
const PAGE: usize = 4096;

pub(crate) struct Journal {
    dir: PathBuf,
    /// Records queued and not yet written to the file.
    queued: Mutex<Vec<u8>>,
    /// Bytes of records in the current file, written or queued.
    size: AtomicU64,
    /// The file records are appended to; held by one writer at a time.
    file: Mutex<Segment>,
    /// Records are written past the page cache (see [`Segment::write`]).
    direct: AtomicBool,
}

struct Segment {
    file: File,
    /// The same file opened for direct I/O (`O_DIRECT`), if its file system allows it.
    direct: Option<File>,
    number: u64,
    /// Where the next record goes.
    end: u64,
    /// The file is zeros from `end` to here (see [`Segment::write`]).
    zeroed: u64,
    /// The bytes of the page `end` falls in, up to `end`: a direct write rewrites that page.
    tail: Vec<u8>,
    /// Memory for direct writes (see [`aligned`]).
    pages: Vec<u8>,
    /// The buffer the last write took from the queue, kept for the queue's next turn.
    spare: Vec<u8>,
}

impl Journal {
    /// The journal of the sled store in directory `path`, after replaying into `tree` what an
    /// earlier process left in it (made durable with `sled` before the files that held it go).
    pub(super) fn open(path: &Path, tree: &sled::Tree, sled: &SledFlush) -> io::Result<Self> {
        let dir = path.join(DIR);
        fs::create_dir_all(&dir)?;
        let left = segments(&dir)?;
        let mut replayed = 0;
        for (_, file) in &left {
            replayed += replay(file, tree)?;
        }
        if replayed > 0 {
            tracing::info!("replayed {replayed} metadata commits from the journal in {}", dir.display());
            sled.flush()?;
        }
        let next = left.last().map_or(1, |&(n, _)| n + 1);
        let segment = Segment::create(&dir, next)?;
        for (_, file) in left {
            fs::remove_file(file)?;
        }
        File::open(&dir)?.sync_all()?;
        Ok(Journal {
            dir,
            queued: Mutex::new(Vec::new()),
            size: AtomicU64::new(0),
            file: Mutex::new(segment),
            direct: AtomicBool::new(true),
        })
    }

    /// Writes records through the page cache from now on: for a store whose commits are
    /// deferred, whose records are written out one by one without a sync (a direct write
    /// would wait for the disk each time).
    pub(super) fn write_through_page_cache(&self) {
        self.direct.store(false, Ordering::Relaxed);
    }

    /// Queues the record of a commit. Called in commit order (under the store's writer lock), so
    /// the journal holds commits in the order they were applied. Returns the bytes of records
    /// in the current file, this one included.
    pub(super) fn queue(&self, writes: &WriteSet) -> u64 {
        let mut queued = self.queued.lock().unwrap_or_else(|p| p.into_inner());
        let before = queued.len();
        encode(writes, &mut queued);
        let added = (queued.len() - before) as u64;
        self.size.fetch_add(added, Ordering::Relaxed) + added
    }

    /// Writes every queued record to the file and syncs it: every commit queued before the call
    /// is then durable.
    pub(crate) fn commit(&self) -> io::Result<()> {
        let mut segment = self.file.lock().unwrap_or_else(|p| p.into_inner());
        self.write_queued(&mut segment)?;
        segment.file.sync_data()
    }

    /// Writes every queued record to the file, without syncing it: a crash of the process then
    /// loses none of them (the kernel has them), a crash of the machine may.
    pub(super) fn write_out(&self) -> io::Result<()> {
        let mut segment = self.file.lock().unwrap_or_else(|p| p.into_inner());
        self.write_queued(&mut segment)
    }

    /// [`Self::commit`], then starts a new file for the records queued from now on. Returns the
    /// number of the file left, which may be removed once sled durably holds every commit queued
    /// before the call.
    pub(super) fn rotate(&self) -> io::Result<u64> {
        let mut segment = self.file.lock().unwrap_or_else(|p| p.into_inner());
        self.write_queued(&mut segment)?;
        segment.file.sync_data()?;
        let next = Segment::create(&self.dir, segment.number + 1)?;
        self.size.store(0, Ordering::Relaxed);
        Ok(std::mem::replace(&mut *segment, next).number)
    }

    /// Removes the files up to number `last`: sled holds their commits durably.
    pub(super) fn remove_through(&self, last: u64) -> io::Result<()> {
        for (number, file) in segments(&self.dir)? {
            if number <= last {
                // A crash before the removal is durable replays the file again: harmless.
                fs::remove_file(file)?;
            }
        }
        Ok(())
    }

    /// Removes every file, the current one too: sled holds every commit durably, and the store
    /// is closing.
    pub(super) fn remove_all(&self) -> io::Result<()> {
        self.remove_through(u64::MAX)
    }

    fn write_queued(&self, segment: &mut Segment) -> io::Result<()> {
        let mut records = std::mem::take(&mut segment.spare);
        std::mem::swap(&mut records, &mut *self.queued.lock().unwrap_or_else(|p| p.into_inner()));
        let written = segment.write(&records, self.direct.load(Ordering::Relaxed));
        records.clear();
        segment.spare = records;
        written
    }
}

/// The error a failed write or sync of the journal gives the operation that waited for it.
pub(crate) fn write_failed(e: io::Error) -> crate::MetaError {
    crate::MetaError::Store(format!(
        "writing the metadata journal failed: {e}: is the disk of the metadata store full or failing?"
    ))
}

impl Segment {
    fn create(dir: &Path, number: u64) -> io::Result<Self> {
        let path = segment_path(dir, number);
        let file = OpenOptions::new().create_new(true).write(true).open(&path)?;
        // Some file systems refuse O_DIRECT (tmpfs before Linux 6.6): records then go through
        // the page cache.
        let direct = OpenOptions::new().write(true).custom_flags(libc::O_DIRECT).open(&path).ok();
        // The new name must survive a crash before the old file's removal does.
        File::open(dir)?.sync_all()?;
        Ok(Segment {
            file,
            direct,
            number,
            end: 0,
            zeroed: 0,
            tail: Vec::new(),
            pages: Vec::new(),
            spare: Vec::new(),
        })
    }

    /// Writes `records` at the end of those written so far, `direct`ly if it can. Records are
    /// written over zeros the file already holds, a megabyte of which is added ahead when
    /// needed: a sync then has only data to write, where one after an append must also commit
    /// the file's new size to the file system's own journal (about 160 → 115 µs a sync here).
    /// A direct write rewrites the last page written with the records after it, and skips
    /// the page cache's write-back at the sync (a write and `fdatasync` of a record measured
    /// 106 → 93 µs; docs/PERFORMANCE.md).
    fn write(&mut self, records: &[u8], direct: bool) -> io::Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        let end = self.end + records.len() as u64;
        let page_end = end.next_multiple_of(PAGE as u64);
        if page_end > self.zeroed {
            // Written the way the records over them will be: a direct write over pages still
            // dirty in the page cache would first wait for their write-back.
            let (from, to) = (self.zeroed, page_end.next_multiple_of(ZEROED_AHEAD));
            let len = (to - from) as usize;
            if !(direct && self.write_direct(from, len, |zeros| zeros.fill(0))?) {
                self.file.write_all_at(&vec![0; len], from)?;
            }
            self.zeroed = to;
        }
        let tail = std::mem::take(&mut self.tail);
        let len = tail.len() + records.len();
        let pages = |buf: &mut [u8]| {
            buf[..tail.len()].copy_from_slice(&tail);
            buf[tail.len()..len].copy_from_slice(records);
            buf[len..].fill(0);
        };
        if !(direct && self.write_direct(self.end - tail.len() as u64, len.next_multiple_of(PAGE), pages)?) {
            self.file.write_all_at(records, self.end)?;
        }
        self.tail = tail;
        self.tail.extend_from_slice(records);
        self.tail.drain(..self.tail.len() / PAGE * PAGE);
        self.end = end;
        Ok(())
    }

    /// Writes `len` bytes (whole pages) at `at` (a page boundary) past the page cache, as
    /// `fill` lays them out. Returns false, having written nothing, when the file is not open
    /// for direct I/O; a file system that turns out to refuse it is written through the page
    /// cache from then on.
    fn write_direct(&mut self, at: u64, len: usize, fill: impl FnOnce(&mut [u8])) -> io::Result<bool> {
        let Some(direct) = &self.direct else { return Ok(false) };
        let Some(buf) = aligned(&mut self.pages, len) else { return Ok(false) };
        fill(buf);
        match direct.write_all_at(buf, at) {
            Ok(()) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                tracing::info!(
                    "the metadata journal's file system refuses direct I/O: writing through its page cache"
                );
                self.direct = None;
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }
}

/// `len` bytes of `memory` that start on a page boundary, growing it as needed; `None` if the
/// allocator's memory cannot be offset to one (Rust allows `align_offset` to say so).
fn aligned(memory: &mut Vec<u8>, len: usize) -> Option<&mut [u8]> {
    if memory.len() < len + PAGE {
        *memory = vec![0; len + PAGE];
    }
    let at = memory.as_ptr().align_offset(PAGE);
    memory.get_mut(at..at.checked_add(len)?)
}

fn segment_path(dir: &Path, number: u64) -> PathBuf {
    dir.join(format!("{number:020}"))
}

/// The journal files in `dir`, oldest first.
fn segments(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if let Some(number) = entry.file_name().to_str().and_then(|n| n.parse::<u64>().ok()) {
            found.push((number, entry.path()));
        }
    }
    found.sort();
    Ok(found)
}

/// Appends the record of `writes`: a header (body length, body CRC-32), then the body: each
/// write as key length, key, and either 0 (deleted) or 1, value length, value.
fn encode(writes: &WriteSet, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; HEADER]);
    for (key, value) in &writes.writes {
        put_bytes(out, key);
        match value {
            None => out.push(0),
            Some(v) => {
                out.push(1);
                put_bytes(out, v);
            }
        }
    }
    let body_len = (out.len() - start - HEADER) as u32;
    let crc = crc32fast::hash(&out[start + HEADER..]);
    out[start..start + 4].copy_from_slice(&body_len.to_le_bytes());
    out[start + 4..start + HEADER].copy_from_slice(&crc.to_le_bytes());
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

/// Applies every whole record of the file at `path` to `tree`, in order; returns how many.
fn replay(path: &Path, tree: &sled::Tree) -> io::Result<usize> {
    let data = fs::read(path)?;
    let mut at = 0;
    let mut count = 0;
    while let Some((writes, next)) = decode(&data, at) {
        // Key by key, as a checkpoint writes (sled's atomic batches can deadlock its I/O
        // threads when many come at once, as here: seen in CI); a replay cut short is replayed
        // again.
        for (key, value) in writes {
            match value {
                Some(v) => tree.insert(key, v).map(drop),
                None => tree.remove(key).map(drop),
            }
            .map_err(io::Error::other)?;
        }
        at = next;
        count += 1;
    }
    // After the last record: zeros written ahead of the records, or a record a crash cut short.
    if data[at..].iter().any(|&b| b != 0) {
        tracing::warn!(
            "the metadata journal {} ends in {} bytes of a commit cut short by a crash (never acknowledged): ignored",
            path.display(),
            data.len() - at
        );
    }
    Ok(count)
}

/// A record's writes: `None` deletes the key.
type Writes<'a> = Vec<(&'a [u8], Option<&'a [u8]>)>;

/// The writes of the record at `at`, and where the next one starts; `None` at the end of the
/// records (the file's end, or a record cut short or never written: zeros, a bad checksum).
fn decode(data: &[u8], at: usize) -> Option<(Writes<'_>, usize)> {
    let header = data.get(at..at + HEADER)?;
    let len = u32::from_le_bytes(header[..4].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(header[4..].try_into().ok()?);
    let body = data.get(at + HEADER..at + HEADER + len)?;
    if len == 0 || crc32fast::hash(body) != crc {
        return None;
    }
    let mut writes = Vec::new();
    let mut rest = body;
    while !rest.is_empty() {
        let key = take_bytes(&mut rest)?;
        let (&tag, after) = rest.split_first()?;
        rest = after;
        match tag {
            0 => writes.push((key, None)),
            1 => writes.push((key, Some(take_bytes(&mut rest)?))),
            _ => return None,
        }
    }
    Some((writes, at + HEADER + len))
}

fn take_bytes<'a>(rest: &mut &'a [u8]) -> Option<&'a [u8]> {
    let len = u32::from_le_bytes(rest.get(..4)?.try_into().ok()?) as usize;
    let bytes = rest.get(4..4 + len)?;
    *rest = &rest[4 + len..];
    Some(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Store {
        tree: sled::Tree,
        sled: SledFlush,
        journal: Journal,
    }

    fn open(path: &Path) -> Store {
        // sled's threads may hold the last process's lock for a moment after it is dropped.
        let mut tries = 0;
        let db = loop {
            match sled::Config::new().path(path).flush_every_ms(None).open() {
                Err(_) if tries < 50 => std::thread::sleep(std::time::Duration::from_millis(20)),
                other => break other.unwrap(),
            }
            tries += 1;
        };
        let tree = db.open_tree("kv").unwrap();
        let sled = SledFlush::new(db, path).unwrap();
        let journal = Journal::open(path, &tree, &sled).unwrap();
        Store { tree, sled, journal }
    }

    impl Store {
        /// A commit made durable in the journal only, as the store does between checkpoints.
        fn commit(&self, puts: &[(&str, &str)], deletes: &[&str]) {
            let mut writes = WriteSet::default();
            for (k, v) in puts {
                writes.put(k.as_bytes(), v.as_bytes());
            }
            for k in deletes {
                writes.delete(k.as_bytes());
            }
            self.journal.queue(&writes);
            self.journal.commit().unwrap();
        }

        fn contents(&self) -> Vec<(String, String)> {
            self.tree
                .iter()
                .map(|kv| {
                    let (k, v) = kv.unwrap();
                    (String::from_utf8(k.to_vec()).unwrap(), String::from_utf8(v.to_vec()).unwrap())
                })
                .collect()
        }
    }

    fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
        items.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn commits_only_the_journal_holds_are_replayed_into_sled_at_open() {
        let tmp = tempfile::tempdir().unwrap();
        {
            let store = open(tmp.path());
            store.tree.insert("a", "0").unwrap();
            store.sled.flush().unwrap();
            store.commit(&[("a", "1"), ("b", "1")], &[]);
            store.commit(&[("b", "2"), ("c", "2")], &["a"]);
            assert_eq!(store.contents(), pairs(&[("a", "0")]));
        }
        let store = open(tmp.path());
        assert_eq!(store.contents(), pairs(&[("b", "2"), ("c", "2")]));
        // The replay is in sled durably: one fresh, empty file is left.
        let left = segments(&tmp.path().join(DIR)).unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(fs::metadata(&left[0].1).unwrap().len(), 0);
    }

    #[test]
    fn replaying_over_a_sled_that_already_holds_some_of_the_commits_ends_in_the_same_state() {
        let tmp = tempfile::tempdir().unwrap();
        {
            let store = open(tmp.path());
            store.commit(&[("a", "1"), ("b", "1")], &[]);
            store.commit(&[("a", "2")], &["b"]);
            store.commit(&[("c", "3")], &[]);
            // A checkpoint that had written part of the second commit when the process died.
            store.tree.insert("a", "2").unwrap();
        }
        let store = open(tmp.path());
        assert_eq!(store.contents(), pairs(&[("a", "2"), ("c", "3")]));
    }

    #[test]
    fn a_record_cut_short_ends_the_replay_and_the_commits_before_it_stand() {
        let tmp = tempfile::tempdir().unwrap();
        {
            let store = open(tmp.path());
            store.commit(&[("a", "1")], &[]);
            store.commit(&[("b", "1")], &[]);
        }
        let (_, file) = segments(&tmp.path().join(DIR)).unwrap().pop().unwrap();
        // The second record loses its last byte, as if the crash came before it was written.
        let last = fs::read(&file).unwrap().iter().rposition(|&b| b != 0).unwrap();
        OpenOptions::new().write(true).open(&file).unwrap().write_all_at(&[0], last as u64).unwrap();

        let store = open(tmp.path());
        assert_eq!(store.contents(), pairs(&[("a", "1")]));
    }

    #[test]
    fn a_journal_of_many_megabytes_is_replayed() {
        let tmp = tempfile::tempdir().unwrap();
        let value = "v".repeat(3000);
        {
            let store = open(tmp.path());
            for i in 0..4000 {
                store.commit(&[(&format!("k{:04}", i % 1000), &value), (&format!("i{i:05}"), "x")], &[]);
            }
        }
        let store = open(tmp.path());
        assert_eq!(store.tree.len(), 5000);
    }

    /// Records of every size, crossing pages and the zeros laid ahead, written past the page
    /// cache, then through it (a store whose commits become deferred), then past it again.
    #[test]
    fn direct_and_page_cache_writes_of_any_size_are_replayed() {
        let tmp = tempfile::tempdir().unwrap();
        let values: Vec<String> = (0..300).map(|i| "v".repeat(i * 37 % 5000)).collect();
        {
            let store = open(tmp.path());
            for (i, value) in values.iter().enumerate() {
                if i == 100 {
                    store.journal.write_through_page_cache();
                }
                if i == 200 {
                    store.journal.direct.store(true, Ordering::Relaxed);
                }
                store.commit(&[(&format!("k{i:03}"), value)], &[]);
            }
        }
        let store = open(tmp.path());
        let expected: Vec<_> =
            values.iter().enumerate().map(|(i, v)| (format!("k{i:03}"), v.clone())).collect();
        assert_eq!(store.contents(), expected);
    }

    #[test]
    fn a_rotated_file_is_kept_until_removed_and_replayed_before_the_next() {
        let tmp = tempfile::tempdir().unwrap();
        {
            let store = open(tmp.path());
            store.commit(&[("a", "1")], &[]);
            let old = store.journal.rotate().unwrap();
            store.commit(&[("a", "2")], &[]);
            assert_eq!(segments(&tmp.path().join(DIR)).unwrap().len(), 2);
            store.journal.remove_through(old - 1).unwrap();
            assert_eq!(segments(&tmp.path().join(DIR)).unwrap().len(), 2);
        }
        let store = open(tmp.path());
        assert_eq!(store.contents(), pairs(&[("a", "2")]));
    }
}
