//! The POSIX behaviour every mount must show, driven through std::fs and libc against a real
//! mount. Shared by the local-directory and the S3 runs.

use std::collections::HashSet;
use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::path::Path;

use crate::pattern;

fn c(path: &Path) -> CString {
    CString::new(path.as_os_str().as_bytes()).unwrap()
}

fn errno_of(ret: i32) -> i32 {
    assert_eq!(ret, -1, "call should have failed");
    std::io::Error::last_os_error().raw_os_error().unwrap()
}

/// Writes `len` distinct pseudo-random bytes (no two blocks alike, so deduplication cannot
/// shortcut anything) in 1 MiB writes, and returns their blake3 hash.
pub fn write_pattern_file(path: &Path, seed: u64, len: usize) -> blake3::Hash {
    let mut f = File::create(path).unwrap();
    let mut hasher = blake3::Hasher::new();
    let mut stream = blake3::Hasher::new().update(&seed.to_le_bytes()).finalize_xof();
    let mut chunk = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        let n = left.min(chunk.len());
        stream.fill(&mut chunk[..n]);
        f.write_all(&chunk[..n]).unwrap();
        hasher.update(&chunk[..n]);
        left -= n;
    }
    f.sync_all().unwrap();
    hasher.finalize()
}

pub fn hash_file(path: &Path) -> blake3::Hash {
    let mut f = File::open(path).unwrap();
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    hasher.finalize()
}

pub fn files_and_data(root: &Path) {
    let p = root.join("small.txt");
    fs::write(&p, b"hello elasticfs\n").unwrap();
    assert_eq!(fs::read(&p).unwrap(), b"hello elasticfs\n");
    // O_APPEND appends whatever the offset.
    let mut f = OpenOptions::new().append(true).open(&p).unwrap();
    f.write_all(b"more\n").unwrap();
    drop(f);
    assert_eq!(fs::read_to_string(&p).unwrap(), "hello elasticfs\nmore\n");
    // O_EXCL refuses an existing name.
    let err = OpenOptions::new().write(true).create_new(true).open(&p).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AlreadyExists);
    // Overwrite in the middle, read through another handle before close.
    let w = OpenOptions::new().write(true).open(&p).unwrap();
    w.write_all_at(b"HELLO", 0).unwrap();
    let r = fs::read_to_string(&p).unwrap();
    assert!(r.starts_with("HELLO elasticfs"), "{r}");
    drop(w);
    // Truncate down, then up: the cut bytes read back as zeros.
    let f = OpenOptions::new().write(true).open(&p).unwrap();
    f.set_len(3).unwrap();
    f.set_len(8).unwrap();
    drop(f);
    assert_eq!(fs::read(&p).unwrap(), b"HEL\0\0\0\0\0");
    // A block-crossing file with a truncation inside a chunk.
    let q = root.join("cut.bin");
    let data = pattern(7, 3 << 20);
    fs::write(&q, &data).unwrap();
    let f = OpenOptions::new().write(true).open(&q).unwrap();
    f.set_len((1 << 20) + 12345).unwrap();
    f.set_len(3 << 20).unwrap();
    drop(f);
    let back = fs::read(&q).unwrap();
    assert_eq!(&back[..(1 << 20) + 12345], &data[..(1 << 20) + 12345]);
    assert!(back[(1 << 20) + 12345..].iter().all(|b| *b == 0));
    // fallocate mode 0 extends the size.
    let f = OpenOptions::new().write(true).open(&q).unwrap();
    // SAFETY: valid fd.
    assert_eq!(unsafe { libc::fallocate(std::os::fd::AsRawFd::as_raw_fd(&f), 0, 0, 5 << 20) }, 0);
    assert_eq!(f.metadata().unwrap().len(), 5 << 20);
}

pub fn sparse_files(root: &Path) {
    let p = root.join("sparse");
    let mut f = File::create(&p).unwrap();
    f.seek(SeekFrom::Start(100 << 20)).unwrap();
    f.write_all(b"end").unwrap();
    f.write_all_at(b"start", 0).unwrap();
    f.sync_all().unwrap();
    let meta = fs::metadata(&p).unwrap();
    assert_eq!(meta.len(), (100 << 20) + 3);
    assert!(meta.blocks() * 512 < 1 << 20, "a hole costs nothing: {} blocks", meta.blocks());
    let mut buf = vec![0xffu8; 4096];
    File::open(&p).unwrap().read_exact_at(&mut buf, 50 << 20).unwrap();
    assert!(buf.iter().all(|b| *b == 0));
    let mut head = [0u8; 5];
    File::open(&p).unwrap().read_exact_at(&mut head, 0).unwrap();
    assert_eq!(&head, b"start");
}

pub fn directories_and_names(root: &Path) {
    let d = root.join("dir");
    fs::create_dir(&d).unwrap();
    fs::create_dir(d.join("sub")).unwrap();
    fs::write(d.join("f"), b"x").unwrap();
    assert_eq!(fs::metadata(&d).unwrap().nlink(), 3);
    assert_eq!(fs::remove_dir(&d).unwrap_err().raw_os_error(), Some(libc::ENOTEMPTY));
    // A directory may not move into its own subtree.
    let err = fs::rename(&d, d.join("sub/inside")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EINVAL));
    // Rename replaces atomically; across directories too.
    fs::write(root.join("a"), b"A").unwrap();
    fs::write(d.join("b"), b"B").unwrap();
    fs::rename(root.join("a"), d.join("b")).unwrap();
    assert_eq!(fs::read(d.join("b")).unwrap(), b"A");
    assert!(!root.join("a").exists());
    // RENAME_NOREPLACE and RENAME_EXCHANGE.
    fs::write(root.join("x"), b"X").unwrap();
    let (x, b) = (c(&root.join("x")), c(&d.join("b")));
    // SAFETY: valid C strings.
    let rc = unsafe {
        libc::renameat2(libc::AT_FDCWD, x.as_ptr(), libc::AT_FDCWD, b.as_ptr(), libc::RENAME_NOREPLACE)
    };
    assert_eq!(errno_of(rc), libc::EEXIST);
    // SAFETY: valid C strings.
    let rc = unsafe {
        libc::renameat2(libc::AT_FDCWD, x.as_ptr(), libc::AT_FDCWD, b.as_ptr(), libc::RENAME_EXCHANGE)
    };
    assert_eq!(rc, 0);
    assert_eq!(fs::read(root.join("x")).unwrap(), b"A");
    assert_eq!(fs::read(d.join("b")).unwrap(), b"X");
    // Moving a directory updates both parents' link counts.
    fs::rename(d.join("sub"), root.join("sub-moved")).unwrap();
    assert_eq!(fs::metadata(&d).unwrap().nlink(), 2);
    // Names: 255 bytes is fine, 256 is ENAMETOOLONG.
    fs::write(root.join("n".repeat(255)), b"").unwrap();
    assert_eq!(
        fs::write(root.join("n".repeat(256)), b"").unwrap_err().raw_os_error(),
        Some(libc::ENAMETOOLONG)
    );
    // Links.
    fs::hard_link(d.join("b"), root.join("b-link")).unwrap();
    assert_eq!(fs::metadata(d.join("b")).unwrap().nlink(), 2);
    std::os::unix::fs::symlink("dir/b", root.join("sym")).unwrap();
    assert_eq!(fs::read_link(root.join("sym")).unwrap().to_str(), Some("dir/b"));
    assert_eq!(fs::read(root.join("sym")).unwrap(), b"X");
    // Special files.
    let fifo = c(&root.join("fifo"));
    // SAFETY: valid C string.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
    assert!(std::os::unix::fs::FileTypeExt::is_fifo(&fs::metadata(root.join("fifo")).unwrap().file_type()));
    let _sock = std::os::unix::net::UnixListener::bind(root.join("sock")).unwrap();
    assert!(std::os::unix::fs::FileTypeExt::is_socket(
        &fs::symlink_metadata(root.join("sock")).unwrap().file_type()
    ));
}

pub fn attributes_and_xattrs(root: &Path) {
    let p = root.join("attrs");
    fs::write(&p, b"a").unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(0o640)).unwrap();
    assert_eq!(fs::metadata(&p).unwrap().mode() & 0o7777, 0o640);
    std::os::unix::fs::chown(&p, Some(1234), Some(5678)).unwrap();
    let m = fs::metadata(&p).unwrap();
    assert_eq!((m.uid(), m.gid()), (1234, 5678));
    // utimensat with nanoseconds.
    let times = [
        libc::timespec { tv_sec: 1_000_000_000, tv_nsec: 123_456_789 },
        libc::timespec { tv_sec: 1_500_000_000, tv_nsec: 987_654_321 },
    ];
    let path = c(&p);
    // SAFETY: valid C string and array of two timespecs.
    assert_eq!(unsafe { libc::utimensat(libc::AT_FDCWD, path.as_ptr(), times.as_ptr(), 0) }, 0);
    let m = fs::metadata(&p).unwrap();
    assert_eq!((m.atime(), m.atime_nsec()), (1_000_000_000, 123_456_789));
    assert_eq!((m.mtime(), m.mtime_nsec()), (1_500_000_000, 987_654_321));
    // A time set through an open file after writing it (tar, `cp -p`) outlasts the close, and
    // a write after it stamps the file again.
    let stamped = root.join("stamped");
    let set = std::time::UNIX_EPOCH + std::time::Duration::new(1_200_000_000, 5);
    let mut f = File::create(&stamped).unwrap();
    f.write_all(b"extracted").unwrap();
    f.set_modified(set).unwrap();
    drop(f);
    assert_eq!(fs::metadata(&stamped).unwrap().modified().unwrap(), set, "the close kept the time set");
    let mut f = OpenOptions::new().append(true).open(&stamped).unwrap();
    f.set_modified(set).unwrap();
    f.write_all(b" and appended").unwrap();
    drop(f);
    assert!(fs::metadata(&stamped).unwrap().modified().unwrap() > set, "a later write stamps the file");
    assert_eq!(fs::read(&stamped).unwrap(), b"extracted and appended");
    // Extended attributes.
    let name = CString::new("user.colour").unwrap();
    // SAFETY: valid pointers and lengths throughout.
    unsafe {
        assert_eq!(libc::setxattr(path.as_ptr(), name.as_ptr(), b"blue".as_ptr().cast(), 4, 0), 0);
        let rc = libc::setxattr(path.as_ptr(), name.as_ptr(), b"red".as_ptr().cast(), 3, libc::XATTR_CREATE);
        assert_eq!(errno_of(rc), libc::EEXIST);
        let mut buf = [0u8; 16];
        let n = libc::getxattr(path.as_ptr(), name.as_ptr(), buf.as_mut_ptr().cast(), buf.len());
        assert_eq!(&buf[..n as usize], b"blue");
        let n = libc::listxattr(path.as_ptr(), buf.as_mut_ptr().cast(), buf.len());
        assert_eq!(&buf[..n as usize], b"user.colour\0");
        assert_eq!(libc::removexattr(path.as_ptr(), name.as_ptr()), 0);
        let n = libc::getxattr(path.as_ptr(), name.as_ptr(), buf.as_mut_ptr().cast(), buf.len());
        assert_eq!(errno_of(n as i32), libc::ENODATA);
    }
}

pub fn unlinked_while_open(root: &Path) {
    let p = root.join("ghost");
    let before = statfs_files(root);
    let mut f = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&p).unwrap();
    f.write_all(&pattern(3, 200_000)).unwrap();
    fs::remove_file(&p).unwrap();
    assert!(!p.exists());
    // Still readable and writable through the open handle.
    f.write_all(b"tail").unwrap();
    f.sync_all().unwrap();
    let mut back = Vec::new();
    f.seek(SeekFrom::Start(0)).unwrap();
    f.read_to_end(&mut back).unwrap();
    assert_eq!(back.len(), 200_004);
    assert_eq!(&back[..200_000], &pattern(3, 200_000)[..]);
    drop(f);
    // The kernel sends RELEASE after close(2) returns, asynchronously: wait for it (bounded).
    let mut now = statfs_files(root);
    for _ in 0..100 {
        if now == before {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
        now = statfs_files(root);
    }
    assert_eq!(now, before, "the last close removes the inode");
}

fn statfs_files(root: &Path) -> u64 {
    let path = c(root);
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid C string and out-pointer.
    assert_eq!(unsafe { libc::statvfs(path.as_ptr(), &mut st) }, 0);
    st.f_files - st.f_ffree
}

/// Creates `count` entries and checks that a listing returns each exactly once.
pub fn large_directory(root: &Path, count: usize) {
    let d = root.join("many");
    fs::create_dir(&d).unwrap();
    for i in 0..count {
        File::create(d.join(format!("entry-{i:06}"))).unwrap();
    }
    let mut seen = HashSet::new();
    for e in fs::read_dir(&d).unwrap() {
        let name = e.unwrap().file_name().into_string().unwrap();
        assert!(seen.insert(name.clone()), "{name} listed twice");
    }
    assert_eq!(seen.len(), count);
    for i in 0..count {
        assert!(seen.contains(&format!("entry-{i:06}")));
    }
}

/// Writes and reads back a large file, checking its hash; returns the hash.
pub fn large_file(root: &Path, len: usize) -> blake3::Hash {
    let p = root.join("large.bin");
    let written = write_pattern_file(&p, 42, len);
    assert_eq!(fs::metadata(&p).unwrap().len(), len as u64);
    assert_eq!(hash_file(&p), written);
    written
}

pub fn statfs_reports_usage(root: &Path) {
    let path = c(root);
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid C string and out-pointer.
    assert_eq!(unsafe { libc::statvfs(path.as_ptr(), &mut st) }, 0);
    assert!(st.f_blocks > 1 << 40, "capacity is elastic: a very large total");
    assert!(st.f_blocks > st.f_bfree, "used bytes are counted");
    assert_eq!(st.f_namemax, 255);
}

/// Everything above on one mount.
pub fn run_all(root: &Path, large_len: usize, dir_entries: usize) -> blake3::Hash {
    files_and_data(root);
    sparse_files(root);
    directories_and_names(root);
    attributes_and_xattrs(root);
    unlinked_while_open(root);
    large_directory(root, dir_entries);
    let hash = large_file(root, large_len);
    statfs_reports_usage(root);
    hash
}
