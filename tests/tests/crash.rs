//! Kill the mount with SIGKILL in the middle of a write-and-fsync loop: every file whose fsync
//! returned must be intact after a remount, and no chunk reference may dangle. And what a
//! SIGKILL cannot show, a power cut: a durable metadata commit ends in a sync of the log.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use elasticfs_tests::posix_suite::hash_file;
use elasticfs_tests::{
    detach, fuse_available, pattern, run_ok, tool_available, MetaService, Mount, S3Server, Volume,
};

#[test]
fn fsynced_files_survive_sigkill_of_the_mount() {
    if !fuse_available() {
        return;
    }
    let vol = Volume::local();
    let mount = vol.mount();
    let root = mount.path.clone();
    // An unlinked-but-open file at the moment of the crash must be reclaimed at the next mount.
    let ghost_path = root.join("ghost");
    let mut ghost = std::fs::File::create(&ghost_path).unwrap();
    ghost.write_all(&pattern(99, 300_000)).unwrap();
    ghost.sync_all().unwrap();
    std::fs::remove_file(&ghost_path).unwrap();

    let (acked_tx, acked_rx) = mpsc::channel();
    let writer_root = root.clone();
    let writer = std::thread::spawn(move || {
        for i in 0..2_000u64 {
            // Sizes cross the inline threshold and the 1 MiB block size.
            let len = (i as usize * 197_003) % (3 << 20) + 1;
            let data = pattern(i, len);
            let path = writer_root.join(format!("f{i:05}"));
            let written = (|| {
                let mut f =
                    std::fs::OpenOptions::new().write(true).create_new(true).mode(0o644).open(&path)?;
                f.write_all(&data)?;
                f.sync_all()
            })();
            if written.is_err() {
                return;
            }
            acked_tx.send((path.file_name().unwrap().to_owned(), blake3::hash(&data))).unwrap();
        }
    });
    // Let it get going, then crash the mount mid-loop.
    let mut acked = Vec::new();
    while acked.len() < 25 {
        acked.push(acked_rx.recv_timeout(Duration::from_secs(60)).expect("writer makes progress"));
    }
    mount.kill();
    // The writer sees ENOTCONN and stops; only then is the dead mount detached.
    writer.join().unwrap();
    drop(ghost);
    detach(&root);
    acked.extend(acked_rx.try_iter());

    let again = vol.mount_at(&root);
    for (name, hash) in &acked {
        assert_eq!(hash_file(&again.path.join(name)), *hash, "{name:?} was fsynced, so it must be intact");
    }
    again.unmount();
    vol.assert_fsck_clean(false);
    // Root plus the files the writer created (at most one more than acknowledged); the ghost is gone.
    let inodes = vol.status()["used_inodes"].as_u64().unwrap();
    assert!(
        inodes == acked.len() as u64 + 1 || inodes == acked.len() as u64 + 2,
        "{inodes} inodes for {} files",
        acked.len()
    );
}

/// A file created without `O_EXCL` becomes durable with its close (one disk flush per small
/// file, not two). SIGKILL the mount while four writers create, write (in two halves, a pause
/// between) and close files: every file whose close returned is intact after a remount; every
/// other file is absent, never empty or cut short; fsck is clean. With a create durable on its
/// own, the files being written at the kill would be left empty.
#[test]
fn a_file_whose_close_did_not_return_is_absent_or_complete_after_sigkill() {
    if !fuse_available() {
        return;
    }
    let vol = Volume::local();
    let mount = vol.mount();
    let root = mount.path.clone();
    let (acked_tx, acked_rx) = mpsc::channel();
    let writers: Vec<_> = (0..4u64)
        .map(|w| {
            let (dir, acked_tx) = (root.join(format!("w{w}")), acked_tx.clone());
            std::fs::create_dir(&dir).unwrap();
            std::thread::spawn(move || {
                for i in 0..100_000u64 {
                    let (path, data) = (dir.join(format!("f{i}")), pattern(w * 1_000_000 + i, 6_000));
                    let written = (|| {
                        let mut f = std::fs::File::create(&path)?;
                        f.write_all(&data[..3_000])?;
                        std::thread::sleep(Duration::from_millis(2));
                        f.write_all(&data[3_000..])?;
                        // The close, whose error a dropped File would not tell.
                        // SAFETY: the descriptor is ours, closed once.
                        match unsafe { libc::close(std::os::fd::IntoRawFd::into_raw_fd(f)) } {
                            0 => Ok(()),
                            _ => Err(std::io::Error::last_os_error()),
                        }
                    })();
                    if written.is_err() || acked_tx.send(path).is_err() {
                        return;
                    }
                }
            })
        })
        .collect();
    drop(acked_tx);
    let mut acked = Vec::new();
    while acked.len() < 200 {
        acked.push(acked_rx.recv_timeout(Duration::from_secs(60)).expect("writers make progress"));
    }
    mount.kill();
    for writer in writers {
        writer.join().unwrap();
    }
    detach(&root);
    acked.extend(acked_rx.try_iter());

    let again = vol.mount_at(&root);
    let mut present = 0;
    for w in 0..4u64 {
        for entry in std::fs::read_dir(again.path.join(format!("w{w}"))).unwrap() {
            let path = entry.unwrap().path();
            let i: u64 = path.file_name().unwrap().to_str().unwrap()[1..].parse().unwrap();
            let got = std::fs::read(&path).unwrap();
            assert!(
                got == pattern(w * 1_000_000 + i, 6_000),
                "{path:?}: {} bytes, not the file written",
                got.len()
            );
            present += 1;
        }
    }
    for path in &acked {
        let path = again.path.join(path.strip_prefix(&root).unwrap());
        assert!(path.exists(), "{path:?} was closed before the kill, so it must be there");
    }
    assert!(present >= acked.len(), "{present} files for {} closed", acked.len());
    again.unmount();
    vol.assert_fsck_clean(true);
}

/// A change is durable when the metadata journal's file is synced (the page cache, and the
/// disk's write cache, may still hold it otherwise when the power goes). A `mkdir`
/// acknowledged by a mount must have ended in an `fdatasync` of the journal; with `-o commit=`
/// it must not have, but an `fsync` must.
#[test]
fn acknowledged_changes_sync_the_metadata_log_to_the_disk_unless_deferred() {
    if !fuse_available() || !tool_available("strace", "-V") {
        return;
    }
    let vol = Volume::local();
    let mount = vol.mount();
    let mkdir = |root: &Path, name: &str| std::fs::create_dir(root.join(name)).unwrap();
    assert!(syncs_the_log(&vol, &mount, |root| mkdir(root, "durable")), "a durable mkdir syncs the log");
    mount.unmount();

    let mount = vol.mount_with("commit=10m", None);
    // `status` shows the mode (from what the mount publishes every 2 s).
    let deferred = (0..50).any(|_| {
        let commit = &vol.status()["mount"]["commit"];
        std::thread::sleep(Duration::from_millis(100));
        commit["mode"] == "deferred" && commit["every_secs"] == 600.0
    });
    assert!(deferred, "status shows deferred commits: {}", vol.status());
    assert!(!syncs_the_log(&vol, &mount, |root| mkdir(root, "deferred")), "a deferred mkdir waits");
    let fsync = |root: &Path| {
        let mut f = std::fs::File::create(root.join("synced")).unwrap();
        f.write_all(b"durable now").unwrap();
        f.sync_all().unwrap();
    };
    assert!(syncs_the_log(&vol, &mount, fsync), "an fsync makes the deferred commits durable");
    mount.unmount();
}

/// `meta serve --commit`: the service answers changes once applied, its clients see the mode
/// in `status`, and a client's fsync makes the service sync its log.
#[test]
fn a_metadata_service_with_deferred_commits_syncs_at_a_clients_fsync() {
    if !fuse_available() || !tool_available("strace", "-V") {
        return;
    }
    let service = MetaService::start_with("30s", &["--commit", "10m"]);
    let server = S3Server::start();
    let vol = Volume::shared(&service, &server);
    assert_eq!(vol.status()["commit"]["every_secs"], 600.0, "{}", vol.status());
    let mount = vol.mount();
    let log = format!("{}/db/journal/", service.dir.path().display());
    let mkdir = || std::fs::create_dir(mount.path.join("deferred")).unwrap();
    assert!(!process_syncs(service.pid(), &log, mkdir), "a deferred mkdir waits");
    let fsync = || {
        let mut f = std::fs::File::create(mount.path.join("synced")).unwrap();
        f.write_all(b"durable now").unwrap();
        f.sync_all().unwrap();
    };
    assert!(process_syncs(service.pid(), &log, fsync), "a client's fsync makes the service sync");
    mount.unmount();
}

/// Whether `action` on `mount` makes the mount's process sync the metadata journal (seen by
/// strace).
fn syncs_the_log(vol: &Volume, mount: &Mount, action: impl FnOnce(&Path)) -> bool {
    let log = format!("{}/meta/journal/", vol.dir.path().display());
    process_syncs(mount.pid(), &log, || action(&mount.path))
}

/// Whether process `pid` syncs a file whose strace `-y` name contains `log` while `action`
/// runs.
fn process_syncs(pid: u32, log: &str, action: impl FnOnce()) -> bool {
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("trace");
    let mut strace = std::process::Command::new("strace")
        .args(["-f", "-y", "-e", "trace=fdatasync,fsync", "-o"])
        .arg(&trace)
        .args(["-p", &pid.to_string()])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // strace says on stderr when it has attached to every thread.
    let mut said = std::io::BufReader::new(strace.stderr.take().unwrap());
    let mut line = String::new();
    while std::io::BufRead::read_line(&mut said, &mut line).unwrap() > 0 && !line.contains("attached") {
        line.clear();
    }
    std::thread::sleep(Duration::from_millis(500));
    action();
    // SIGINT detaches strace, which writes out what it saw.
    unsafe { libc::kill(strace.id() as i32, libc::SIGINT) };
    strace.wait().unwrap();
    let trace = std::fs::read_to_string(&trace).unwrap();
    trace.lines().any(|call| (call.contains("fdatasync(") || call.contains("fsync(")) && call.contains(log))
}

/// `-o commit=DURATION`: SIGKILL the mount in the middle of an untar. Every file fsynced before
/// the kill is intact; of the rest, the store is as it was at some earlier moment: each
/// extracted file is absent, empty (created, its data's commit lost) or complete, and fsck is
/// clean.
#[test]
fn deferred_commits_lose_only_what_was_not_fsynced() {
    if !fuse_available() {
        return;
    }
    let vol = Volume::local();
    // Commits deferred far longer than the test runs: only fsyncs make anything durable.
    let mount = vol.mount_with("commit=10m", None);
    let root = mount.path.clone();
    let mut untar = Untar::start(&root);
    let synced = untar.fsync_files_midway();
    mount.kill();
    untar.finish();
    detach(&root);

    let again = vol.mount_at(&root);
    untar.check(&again.path, &synced);
    again.unmount();
    vol.assert_fsck_clean(true);
}

/// `-o commit=` defers the syncs, not the writes: a SIGKILL of the mount alone (the machine
/// keeps running, and with it the page cache) loses no acknowledged change, fsynced or not.
#[test]
fn deferred_commits_survive_sigkill_of_the_mount_alone() {
    if !fuse_available() {
        return;
    }
    let vol = Volume::local();
    let mount = vol.mount_with("commit=10m", None);
    let root = mount.path.clone();
    std::fs::create_dir(root.join("dir")).unwrap();
    for i in 0..50u64 {
        std::fs::write(root.join("dir").join(format!("f{i}")), pattern(i, 1_000 + i as usize * 997)).unwrap();
    }
    std::fs::rename(root.join("dir/f0"), root.join("moved")).unwrap();
    std::fs::remove_file(root.join("dir/f1")).unwrap();
    mount.kill();
    detach(&root);

    let again = vol.mount_at(&root);
    assert_eq!(std::fs::read(again.path.join("moved")).unwrap(), pattern(0, 1_000));
    assert!(!again.path.join("dir/f1").exists());
    for i in 2..50u64 {
        let got = std::fs::read(again.path.join("dir").join(format!("f{i}"))).unwrap();
        assert!(got == pattern(i, 1_000 + i as usize * 997), "dir/f{i} was closed before the kill");
    }
    again.unmount();
    vol.assert_fsck_clean(true);
}

/// The same with the commits deferred by `meta serve --commit`, and the service SIGKILLed in
/// the middle of the untar: the (hard) mount waits, and goes on once the service is back.
#[test]
fn a_metadata_service_with_deferred_commits_killed_amid_an_untar() {
    if !fuse_available() {
        return;
    }
    let mut service = MetaService::start_with("30s", &["--commit", "10m"]);
    let server = S3Server::start();
    let vol = Volume::shared(&service, &server);
    let mount = vol.mount();
    let mut untar = Untar::start(&mount.path);
    let synced = untar.fsync_files_midway();
    service.kill();
    std::thread::sleep(Duration::from_millis(500));
    service.restart();
    untar.finish();
    untar.check(&mount.path, &synced);
    mount.unmount();
    vol.assert_fsck_clean(true);
}

/// A tarball of 600 files of up to 200 KB, being extracted by tar into a mount.
struct Untar {
    /// Holds the tarball.
    _source: tempfile::TempDir,
    sizes: Vec<usize>,
    tar: std::process::Child,
    root: std::path::PathBuf,
}

impl Untar {
    fn start(root: &Path) -> Untar {
        let source = tempfile::tempdir().unwrap();
        let tree = source.path().join("tree");
        std::fs::create_dir(&tree).unwrap();
        let sizes: Vec<usize> = (0..600).map(|i| (i * 7_919) % 200_000 + 1).collect();
        for (i, len) in sizes.iter().enumerate() {
            std::fs::write(tree.join(format!("f{i:04}")), pattern(i as u64, *len)).unwrap();
        }
        let tarball = source.path().join("tree.tar");
        run_ok(
            std::process::Command::new("tar")
                .arg("-cf")
                .arg(&tarball)
                .arg("-C")
                .arg(source.path())
                .arg("tree"),
        );
        let tar =
            std::process::Command::new("tar").arg("-xf").arg(&tarball).arg("-C").arg(root).spawn().unwrap();
        Untar { _source: source, sizes, tar, root: root.to_path_buf() }
    }

    /// Waits (a bounded while) until `count` files are extracted or tar has ended.
    fn wait_for(&mut self, count: usize) {
        for _ in 0..600 {
            let extracted = std::fs::read_dir(self.root.join("tree")).map(|d| d.count()).unwrap_or(0);
            if extracted >= count || self.tar.try_wait().unwrap().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Once a sixth of the tree is out, writes and fsyncs 20 files beside it, then waits for
    /// half of it: what the crash that follows must not lose.
    fn fsync_files_midway(&mut self) -> Vec<(String, Vec<u8>)> {
        self.wait_for(100);
        let synced: Vec<(String, Vec<u8>)> =
            (0..20).map(|i| (format!("synced{i}"), pattern(1_000 + i, 50_000))).collect();
        for (name, data) in &synced {
            let mut f = std::fs::File::create(self.root.join(name)).unwrap();
            f.write_all(data).unwrap();
            f.sync_all().unwrap();
        }
        self.wait_for(300);
        synced
    }

    fn finish(&mut self) {
        let _ = self.tar.wait();
    }

    /// The fsynced files are intact; every extracted file is absent, empty or complete.
    fn check(&self, root: &Path, synced: &[(String, Vec<u8>)]) {
        for (name, data) in synced {
            assert!(
                std::fs::read(root.join(name)).unwrap() == *data,
                "{name} was fsynced, so it must be intact"
            );
        }
        let mut seen = 0;
        for (i, len) in self.sizes.iter().enumerate() {
            let Ok(got) = std::fs::read(root.join("tree").join(format!("f{i:04}"))) else { continue };
            seen += 1;
            assert!(
                got.is_empty() || got == pattern(i as u64, *len),
                "f{i:04} is torn: {} of {len} bytes",
                got.len()
            );
        }
        eprintln!("{seen} of {} extracted files after the crash", self.sizes.len());
    }
}
