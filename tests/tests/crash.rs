//! Kill the mount with SIGKILL in the middle of a write-and-fsync loop: every file whose fsync
//! returned must be intact after a remount, and no chunk reference may dangle. And what a
//! SIGKILL cannot show, a power cut: a durable metadata commit ends in a sync of the log.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::mpsc;
use std::time::Duration;

use elasticfs_tests::posix_suite::hash_file;
use elasticfs_tests::{detach, fuse_available, pattern, tool_available, Volume};

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

/// sled 0.34's own flush only writes the log's pages out (`sync_file_range`): the file's
/// metadata and the disk's write cache may still hold an acknowledged change when the power
/// goes. A `mkdir` acknowledged by a mount must have ended in an `fdatasync` of the log.
#[test]
fn an_acknowledged_mkdir_syncs_the_metadata_log_to_the_disk() {
    if !fuse_available() || !tool_available("strace", "-V") {
        return;
    }
    let vol = Volume::local();
    let mount = vol.mount();
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("trace");
    let mut strace = std::process::Command::new("strace")
        .args(["-f", "-y", "-e", "trace=fdatasync,fsync", "-o"])
        .arg(&trace)
        .args(["-p", &mount.pid().to_string()])
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
    std::fs::create_dir(mount.path.join("acknowledged")).unwrap();
    // SIGINT detaches strace, which writes out what it saw.
    unsafe { libc::kill(strace.id() as i32, libc::SIGINT) };
    strace.wait().unwrap();
    let trace = std::fs::read_to_string(&trace).unwrap();
    let log = format!("{}/meta/db>", vol.dir.path().display());
    assert!(
        trace
            .lines()
            .any(|call| (call.contains("fdatasync(") || call.contains("fsync(")) && call.contains(&log)),
        "no sync of the metadata log {log} in:\n{trace}"
    );
    mount.unmount();
}
