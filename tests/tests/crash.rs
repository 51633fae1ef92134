//! Kill the mount with SIGKILL in the middle of a write-and-fsync loop: every file whose fsync
//! returned must be intact after a remount, and no chunk reference may dangle.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::mpsc;
use std::time::Duration;

use elasticfs_tests::posix_suite::hash_file;
use elasticfs_tests::{detach, fuse_available, pattern, Volume};

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
