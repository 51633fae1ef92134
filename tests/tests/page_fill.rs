//! Random reads on a FUSE mount hand the kernel's page cache the verified 64 KiB window around
//! each page asked for (FUSE_NOTIFY_STORE). A window read before a change must never land
//! after it: readers read at random all along while one process writes, truncates, extends and
//! reads back through the page cache, and every read-back sees the last change.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;

use elasticfs_tests::{fuse_available, pattern, Volume};

const PAGE: usize = 4096;
const MAX_LEN: usize = 2 << 20;
/// Enough rounds and readers that a missing guard fails the test (4 of 4 runs with the guard's
/// check removed; 1 of 5 with 400 rounds and two readers, once workers stored their own windows).
const ROUNDS: u64 = 1500;
const READERS: u64 = 4;

/// A small deterministic generator (the test needs spread, not quality).
struct Steps(u64);

impl Steps {
    fn below(&mut self, n: usize) -> usize {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((self.0 >> 33) as usize) % n
    }
}

/// Opens `path` read-only, advising the kernel that reads will be random (as fio and databases
/// do): each missed page is then one FUSE READ of 4 KiB, which is what fills windows.
fn open_random(path: &Path) -> File {
    let file = File::open(path).unwrap();
    // SAFETY: a valid descriptor; the advice changes no memory.
    let advised = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_RANDOM) };
    assert_eq!(advised, 0);
    file
}

/// Reads pages at random until told to stop, reopening now and then (an open may drop the
/// kernel's pages, close-to-open), and counts them.
fn read_at_random(path: &Path, seed: u64, stop: &AtomicBool, reads: &AtomicU64) {
    let mut steps = Steps(seed);
    let mut buf = vec![0u8; PAGE];
    while !stop.load(Ordering::Relaxed) {
        let file = open_random(path);
        for _ in 0..200 {
            let _ = file.read_at(&mut buf, (steps.below(MAX_LEN / PAGE) * PAGE) as u64).unwrap();
            reads.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// What the file holds in `range`, read through a fresh read-only handle at random, page by
/// page (so through the page cache the windows fill).
fn read_back(path: &Path, start: usize, end: usize) -> Vec<u8> {
    let file = open_random(path);
    let first = start / PAGE * PAGE;
    let (mut bytes, mut page) = (Vec::new(), vec![0u8; PAGE]);
    for at in (first..end).step_by(PAGE) {
        let n = file.read_at(&mut page, at as u64).unwrap();
        bytes.extend_from_slice(&page[..n]);
    }
    bytes.truncate(end - first);
    bytes.split_off(start - first)
}

#[test]
fn a_window_read_before_a_change_never_lands_after_it() {
    if !fuse_available() {
        return;
    }
    let vol = Volume::local();
    let mount = vol.mount();
    let path = mount.path.join("f");
    let mut model = pattern(1, MAX_LEN);
    std::fs::write(&path, &model).unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicU64::new(0));
    let readers: Vec<_> = (0..READERS)
        .map(|seed| {
            let (path, stop, reads) = (path.clone(), stop.clone(), reads.clone());
            thread::spawn(move || read_at_random(&path, seed, &stop, &reads))
        })
        .collect();

    let mut steps = Steps(99);
    for round in 0..ROUNDS {
        let changed = match steps.below(4) {
            // A write through a handle opened and closed for it.
            0 | 1 => {
                let at = steps.below(model.len().max(1));
                let data = pattern(1000 + round, 1 + steps.below(3 * PAGE));
                let file = OpenOptions::new().write(true).open(&path).unwrap();
                file.write_at(&data, at as u64).unwrap();
                drop(file);
                if model.len() < at + data.len() {
                    model.resize(at + data.len(), 0);
                }
                model[at..at + data.len()].copy_from_slice(&data);
                at..at + data.len()
            }
            // A truncate by path (no handle open): shorter or longer.
            2 => {
                let len = steps.below(MAX_LEN);
                let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
                // SAFETY: a valid C string.
                assert_eq!(unsafe { libc::truncate(c.as_ptr(), len as libc::off_t) }, 0);
                let from = len.min(model.len());
                model.resize(len, 0);
                from..len.max(from)
            }
            // A write read back while its handle is still open.
            _ => {
                let at = steps.below(model.len().max(1));
                let data = pattern(5000 + round, 1 + steps.below(PAGE));
                let file = OpenOptions::new().read(true).write(true).open(&path).unwrap();
                file.write_at(&data, at as u64).unwrap();
                if model.len() < at + data.len() {
                    model.resize(at + data.len(), 0);
                }
                model[at..at + data.len()].copy_from_slice(&data);
                let end = (at + data.len()).min(model.len());
                assert!(
                    read_back(&path, at, end) == model[at..end],
                    "round {round}: read back with the writer open"
                );
                at..end
            }
        };
        assert_eq!(std::fs::metadata(&path).unwrap().len() as usize, model.len(), "round {round}: size");
        // Around the change: the windows that hold it, and their neighbours.
        let start = changed.start.saturating_sub(64 << 10);
        let end = (changed.end + (64 << 10)).min(model.len());
        assert!(read_back(&path, start, end) == model[start..end], "round {round}: read back {changed:?}");
    }
    stop.store(true, Ordering::Relaxed);
    for reader in readers {
        reader.join().unwrap();
    }
    assert!(std::fs::read(&path).unwrap() == model, "the whole file at the end");
    assert!(reads.load(Ordering::Relaxed) > ROUNDS, "the readers ran throughout");
    mount.unmount();
    vol.assert_fsck_clean(true);
}
