//! The POSIX suite on a real FUSE mount with chunks in a local directory, then a remount that
//! must show the same data, and the bad-input checks of the command line.

use std::os::fd::AsRawFd;
use std::path::Path;

use elasticfs_tests::posix_suite::{self, hash_file};
use elasticfs_tests::{elasticfs_fails, eventually, fuse_available, Volume};

#[test]
fn posix_suite_on_a_local_directory_survives_remount() {
    if !fuse_available() {
        return;
    }
    let vol = Volume::local();
    let mount = vol.mount();
    let large = posix_suite::run_all(&mount.path, 1 << 30, 10_000);
    let at = mount.path.clone();
    mount.unmount();
    let again = vol.mount_at(&at);
    assert_eq!(hash_file(&again.path.join("large.bin")), large);
    assert_eq!(std::fs::read_dir(again.path.join("many")).unwrap().count(), 10_000);
    again.unmount();
    vol.assert_fsck_clean(true);
}

#[test]
fn bad_input_is_refused_with_a_clear_error() {
    if !fuse_available() {
        return;
    }
    let vol = Volume::local();
    let missing = vol.dir.path().join("no-such-dir");
    let err = elasticfs_fails(&["mount", "--meta", &vol.meta, missing.to_str().unwrap()], &[]);
    assert!(err.contains("does not exist") && err.contains("mkdir -p"), "{err}");

    let full = vol.dir.path().join("full");
    std::fs::create_dir(&full).unwrap();
    std::fs::write(full.join("precious"), b"keep me").unwrap();
    let err = elasticfs_fails(&["mount", "--meta", &vol.meta, full.to_str().unwrap()], &[]);
    assert!(err.contains("not empty"), "{err}");
    assert_eq!(std::fs::read(full.join("precious")).unwrap(), b"keep me");

    let empty = vol.dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let err =
        elasticfs_fails(&["mount", "--meta", &vol.meta, empty.to_str().unwrap(), "-o", "rw,frobnicate"], &[]);
    assert!(err.contains("unknown mount option \"frobnicate\""), "{err}");

    // A store that a running mount holds is refused, naming the reason.
    let mount = vol.mount();
    let err = elasticfs_fails(&["mount", "--meta", &vol.meta, empty.to_str().unwrap()], &[]);
    assert!(err.contains("in use by another process"), "{err}");
    mount.unmount();

    // Formatting twice is refused; a store from a newer format version is refused.
    let err = elasticfs_fails(&["format", "--meta", &vol.meta], &[]);
    assert!(err.contains("already holds a formatted file system"), "{err}");
}

#[test]
fn unreachable_bucket_is_reported_at_format() {
    let dir = tempfile::tempdir().unwrap();
    let meta = format!("sled://{}/meta", dir.path().display());
    // Nothing listens on port 9 of loopback.
    let env = [("AWS_ACCESS_KEY_ID", "x"), ("AWS_SECRET_ACCESS_KEY", "y"), ("AWS_REGION", "us-east-1")];
    let out = std::process::Command::new(elasticfs_tests::elasticfs_bin())
        .args(["format", "--meta", &meta, "--storage", "s3", "--bucket", "http://127.0.0.1:9/nobucket"])
        .envs(env)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not usable") && err.contains("endpoint"), "{err}");
    assert!(!dir.path().join("meta").exists(), "a failed format leaves nothing behind");
}

#[test]
fn fsck_finds_a_wrong_counter_and_missing_and_corrupt_chunks() {
    if !fuse_available() {
        return;
    }
    let vol = Volume::local();
    let mount = vol.mount();
    // Three distinct 1 MiB blocks: three chunk objects.
    posix_suite::write_pattern_file(&mount.path.join("data"), 5, 3 << 20);
    mount.unmount();
    let clean = vol.fsck(true);
    assert!(clean.contains("3 referenced chunks: 0 missing, 0 corrupt"), "{clean}");
    assert!(
        clean.contains("metadata: 2 inodes and 3145728 bytes in 3 blocks (0 slices laid over them) over 3 distinct chunks"),
        "{clean}"
    );
    assert!(clean.contains(": consistent"), "{clean}");

    // A usage counter gone wrong behind the store's back: found, with its repair, and left alone.
    let meta_dir = vol.dir.path().join("meta");
    set_bytes_counter(&meta_dir, 12345);
    let out = std::process::Command::new(elasticfs_tests::elasticfs_bin())
        .args(["fsck", "--meta", &vol.meta])
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success(), "{stdout}");
    let expected =
        format!("the bytes counter says 12345, the records add up to {}: would set it to", 3 << 20);
    assert!(stdout.contains(&expected), "{stdout}");
    assert!(stderr.contains("1 inconsistencies in the metadata (nothing was changed)"), "{stderr}");
    assert_eq!(vol.status()["used_bytes"], 12345, "fsck changed nothing");
    set_bytes_counter(&meta_dir, 3 << 20);

    let mut objects: Vec<_> = elasticfs_tests::walk_files(&vol.dir.path().join("chunks/chunks"))
        .into_iter()
        .filter(|p| p.extension().is_none()) // leave the `.segs` lists out
        .collect();
    objects.sort();
    assert_eq!(objects.len(), 3);
    std::fs::write(&objects[0], b"not the bytes this name promises").unwrap();
    std::fs::remove_file(&objects[1]).unwrap();

    // Without --verify-data only the missing object shows; with it, the corrupt one too.
    let err = elasticfs_fails(&["fsck", "--meta", &vol.meta], &[]);
    assert!(err.contains("1 damaged chunk references"), "{err}");
    let err = elasticfs_fails(&["fsck", "--meta", &vol.meta, "--verify-data"], &[]);
    assert!(err.contains("2 damaged chunk references"), "{err}");
}

/// Sets the store's bytes counter behind its back, and returns once sled has let go of the
/// store: its background threads may hold the file lock for a moment after the handle is
/// dropped, and the next `elasticfs` command must find the store free.
fn set_bytes_counter(meta_dir: &Path, bytes: u64) {
    let db = sled::open(meta_dir).unwrap();
    // The counter is the sum of one share per session (see metadata/src/keys.rs): keep one.
    let kv = db.open_tree("kv").unwrap();
    for key in kv.scan_prefix(b"Ubytes\0").keys() {
        kv.remove(key.unwrap()).unwrap();
    }
    kv.insert([&b"Ubytes\0"[..], &0u64.to_be_bytes()].concat(), &bytes.to_le_bytes()).unwrap();
    db.flush().unwrap();
    // The tree keeps the database open: both go before the lock is free.
    drop(kv);
    drop(db);
    // sled locks its `db` file with flock: probe it the same way (closing the probe unlocks).
    let probe = std::fs::File::open(meta_dir.join("db")).unwrap();
    // SAFETY: flock(2) on a descriptor this function owns.
    let free = || unsafe { libc::flock(probe.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0;
    assert!(eventually(10, free), "sled still holds {} 10 s after closing it", meta_dir.display());
}

#[test]
fn a_full_cache_disk_slows_reads_down_but_never_fails_them() {
    if !fuse_available() {
        return;
    }
    let vol = Volume::local();
    let mount = vol.mount();
    posix_suite::write_pattern_file(&mount.path.join("data"), 9, 24 << 20);
    let expected = hash_file(&mount.path.join("data"));
    mount.unmount();

    // A 4 MiB tmpfs as the disk cache, told it may hold 1 GiB; a 1 MiB memory cache.
    let small = vol.dir.path().join("small-cache");
    std::fs::create_dir(&small).unwrap();
    let status = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=4m", "tmpfs", small.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(status.success(), "mounting a tmpfs for the cache");
    let log = vol.dir.path().join("mount.log");
    let options = format!("cache-dir={},disk-cache=1G,cache-size=1M", small.display());
    let mount = vol.mount_with(&options, Some(&log));
    for _ in 0..2 {
        // Each pass needs data the full disk could not keep: fetched again, verified, right.
        elasticfs_tests::drop_page_cache();
        assert_eq!(hash_file(&mount.path.join("data")), expected);
    }
    mount.unmount();
    let cached = elasticfs_tests::dir_bytes(&small);
    std::process::Command::new("umount").arg(&small).status().unwrap();
    assert!(cached > 0 && cached <= 4 << 20, "the cache filled what it could: {cached} bytes");
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(log.contains("cannot write to the disk cache"), "the full disk is reported:\n{log}");
    assert_eq!(log.matches("cannot write to the disk cache").count(), 1, "once, not per read:\n{log}");
}

/// Random reads fetch the segments they touch, and the rest of each chunk in the background
/// into the disk cache: after a few random reads over a file, the whole file is on local disk.
/// Read back with the bucket's chunks gone, it is served from there (verified in place on the
/// FUSE thread); a damaged cached chunk is refused (an error while the bucket is gone, the
/// right bytes once it is back), never returned.
#[test]
fn random_reads_fill_the_disk_cache_whose_copies_are_verified() {
    use std::os::unix::fs::FileExt;
    if !fuse_available() {
        return;
    }
    const SIZE: usize = 24 << 20;
    let vol = Volume::local();
    let mount = vol.mount();
    let expected = posix_suite::write_pattern_file(&mount.path.join("data"), 3, SIZE);
    mount.unmount();
    let whole_chunks_in = |dir: &std::path::Path| {
        elasticfs_tests::walk_files(dir)
            .into_iter()
            .filter(|f| !f.file_name().unwrap().to_string_lossy().contains('.'))
            .collect::<Vec<_>>()
    };
    let bucket = vol.dir.path().join("chunks");
    let chunks = whole_chunks_in(&bucket).len();

    // A memory cache too small for one chunk: whole chunks can only be kept on disk.
    let cache = vol.dir.path().join("disk-cache");
    let options = format!("cache-dir={},cache-size=1M", cache.display());
    let mount = vol.mount_with(&options, None);
    elasticfs_tests::drop_page_cache();
    let file = std::fs::File::open(mount.path.join("data")).unwrap();
    let mut buf = [0u8; 4096];
    // One 4 KiB read in every 256 KiB, in a scattered order (a stride coprime to the count).
    let places = SIZE / (256 << 10);
    for i in 0..places {
        let at = (i * 37 % places) * (256 << 10) + 1000;
        assert_eq!(file.read_at(&mut buf, at as u64).unwrap(), buf.len());
    }
    assert!(
        eventually(60, || whole_chunks_in(&cache).len() == chunks),
        "{} of {chunks} chunks reached the disk cache",
        whole_chunks_in(&cache).len()
    );
    drop(file);
    mount.unmount();

    // The chunk objects moved out of the bucket (its owner record stays).
    let objects = bucket.join("chunks");
    let away = vol.dir.path().join("chunks-away");
    std::fs::rename(&objects, &away).unwrap();
    let mount = vol.mount_with(&options, None);
    elasticfs_tests::drop_page_cache();
    assert_eq!(hash_file(&mount.path.join("data")), expected, "read from the disk cache alone");
    mount.unmount();

    // One byte of one cached chunk changed: refused while the bucket is away, right once back.
    let victim = whole_chunks_in(&cache).swap_remove(0);
    let mut bytes = std::fs::read(&victim).unwrap();
    bytes[12345] ^= 0x20;
    std::fs::write(&victim, bytes).unwrap();
    let mount = vol.mount_with(&options, None);
    elasticfs_tests::drop_page_cache();
    let err = std::fs::read(mount.path.join("data")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    std::fs::rename(&away, &objects).unwrap();
    elasticfs_tests::drop_page_cache();
    assert_eq!(hash_file(&mount.path.join("data")), expected, "fetched again from the bucket");
    mount.unmount();
}

/// A listing carries each entry's attributes (readdirplus through the open directory): `ls -l`
/// of a directory sends no LOOKUP per entry, and its names and sizes are right.
#[test]
fn a_listing_with_attributes_needs_no_lookup_per_entry() {
    if !fuse_available() {
        return;
    }
    let vol = Volume::local();
    let port = elasticfs_tests::free_port();
    let mount = vol.mount_with(&format!("metrics=127.0.0.1:{port}"), None);
    let dir = mount.path.join("d");
    std::fs::create_dir(&dir).unwrap();
    for n in 0..1500u64 {
        std::fs::write(dir.join(format!("f{n}")), vec![b'x'; (n % 7) as usize]).unwrap();
    }
    let lookups = || {
        elasticfs_tests::scrape(port)
            .get(r#"elasticfs_client_operation_seconds_count{op="lookup"}"#)
            .copied()
            .expect("the mount counts its lookups")
    };
    elasticfs_tests::drop_page_cache();
    let before = lookups();
    assert!(before >= 1500.0, "each create looked its name up first: {before}");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let entry = entry.unwrap();
        let n: u64 = entry.file_name().to_str().unwrap()[1..].parse().unwrap();
        assert_eq!(entry.metadata().unwrap().len(), n % 7, "{:?}", entry.file_name());
        seen += 1;
    }
    assert_eq!(seen, 1500);
    let looked_up = lookups() - before;
    assert!(looked_up < 10.0, "{looked_up} lookups for a listing of 1,500 entries with their attributes");
    mount.unmount();
}

/// Names read through one `DIR*` stream (the kernel's opendir to releasedir): a listing of many
/// pages returns every name once while names are added and removed behind it, and a rewind
/// sees the directory as it is now, not what the stream had read ahead.
#[test]
fn a_directory_stream_lists_every_name_once_and_a_rewind_sees_changes() {
    use std::collections::HashSet;
    use std::ffi::{CStr, CString};
    if !fuse_available() {
        return;
    }
    let vol = Volume::local();
    let mount = vol.mount();
    let dir = mount.path.join("d");
    std::fs::create_dir(&dir).unwrap();
    for n in 0..3000 {
        std::fs::write(dir.join(format!("f{n:04}")), b"").unwrap();
    }
    let path = CString::new(dir.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: plain libc directory-stream calls on a stream this test owns and closes.
    unsafe {
        let stream = libc::opendir(path.as_ptr());
        assert!(!stream.is_null());
        let mut names = Vec::new();
        let next = |names: &mut Vec<String>| {
            let entry = libc::readdir(stream);
            if entry.is_null() {
                return false;
            }
            names.push(CStr::from_ptr((*entry).d_name.as_ptr()).to_string_lossy().into_owned());
            true
        };
        for _ in 0..500 {
            assert!(next(&mut names));
        }
        // Behind the stream's position: a name removed and one added; ahead of it, one removed.
        std::fs::remove_file(dir.join("f0001")).unwrap();
        std::fs::remove_file(dir.join("f2999")).unwrap();
        std::fs::write(dir.join("late"), b"").unwrap();
        while next(&mut names) {}
        let once: HashSet<_> = names.iter().collect();
        assert_eq!(once.len(), names.len(), "a name listed twice");
        for n in 2..2999 {
            assert!(once.contains(&format!("f{n:04}")), "f{n:04} missing");
        }
        libc::rewinddir(stream);
        names.clear();
        while next(&mut names) {}
        let now: HashSet<_> = names.into_iter().collect();
        assert!(now.contains("late") && !now.contains("f0001") && !now.contains("f2999"));
        assert_eq!(now.len(), 3000 - 2 + 1 + 2, "every name, `.` and `..`");
        libc::closedir(stream);
    }
    mount.unmount();
    vol.assert_fsck_clean(false);
}
