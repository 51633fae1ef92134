//! The small things a new user trips on: mounting over a mount point, a log full of ioctl
//! warnings, fsyncdir, a background mount whose error is someone else's log, a bad --meta
//! found only after forking, `umount DIR && mount DIR`, and `commit=` where it cannot apply.

use std::process::Command;

use elasticfs_tests::{elasticfs, elasticfs_bin, elasticfs_fails, fuse_available, run_ok, Volume};

#[test]
fn mounting_over_a_mount_point_is_refused() {
    if !fuse_available() {
        return;
    }
    let vol = Volume::local();
    let mount = vol.mount();
    let err = elasticfs_fails(&["mount", "--meta", &vol.meta, mount.path.to_str().unwrap(), "-d"], &[]);
    assert!(err.contains("is already a mount point") && err.contains("umount"), "{err}");
    // The first mount is still there and working.
    std::fs::write(mount.path.join("f"), b"still here").unwrap();
    mount.unmount();
}

#[test]
fn terminal_probes_and_fsyncdir_are_answered_quietly() {
    if !fuse_available() {
        return;
    }
    let vol = Volume::local();
    let log = vol.dir.path().join("mount.log");
    let mount = vol.mount_with("", Some(&log));
    let file = mount.path.join("f");
    std::fs::write(&file, b"x").unwrap();
    // isatty() is a TCGETS ioctl: ENOTTY, not a warning per call.
    let probe = format!(
        "import os\nfor _ in range(200): assert not open({file:?}).isatty()\n\
         d = os.open({dir:?}, os.O_RDONLY)\nos.fsync(d)\nprint('ok')",
        file = file.to_str().unwrap(),
        dir = mount.path.to_str().unwrap()
    );
    let out = run_ok(Command::new("python3").args(["-c", &probe]));
    assert_eq!(out.trim(), "ok");
    mount.unmount();
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(!logged.contains("ioctl"), "{logged}");
    assert!(!logged.contains("fsyncdir"), "{logged}");
    assert!(!logged.contains("Failed to umount"), "a clean unmount is not a warning: {logged}");
}

#[test]
fn a_failing_background_mount_shows_its_own_error_first() {
    if !fuse_available() {
        return;
    }
    let vol = Volume::local();
    let running = vol.mount();
    let log = vol.dir.path().join("shared.log");
    std::fs::write(&log, "a line of another mount\n").unwrap();
    let second = vol.dir.path().join("second");
    std::fs::create_dir(&second).unwrap();
    let err = elasticfs_fails(
        &["mount", "--meta", &vol.meta, second.to_str().unwrap(), "-d", "--log", log.to_str().unwrap()],
        &[],
    );
    let first = err.lines().next().unwrap_or_default();
    assert!(first.contains("in use by another process"), "{err}");
    assert!(!err.contains("another mount"), "another mount's lines are not this one's: {err}");
    running.unmount();

    // A --meta that cannot work is reported before the mount goes to the background.
    for (meta, says) in [
        (format!("sled://{}/nothing-here", vol.dir.path().display()), "no file system at"),
        (vol.dir.path().join("meta").display().to_string(), "is not understood"),
    ] {
        let err = elasticfs_fails(&["mount", "--meta", &meta, second.to_str().unwrap(), "-d"], &[]);
        assert!(err.contains(says) && !err.contains("background"), "{err}");
    }
}

#[test]
fn umount_then_mount_again_works_at_once() {
    if !fuse_available() {
        return;
    }
    let vol = Volume::local();
    let at = vol.dir.path().join("cycled");
    std::fs::create_dir(&at).unwrap();
    let log = vol.dir.path().join("cycle.log");
    let args = ["mount", "--meta", &vol.meta, at.to_str().unwrap(), "-d", "--log", log.to_str().unwrap()];
    elasticfs(&args, &[]);
    for round in 0..5 {
        std::fs::write(at.join(format!("f{round}")), vec![round as u8; 100_000]).unwrap();
        // umount(8), as fstab users and scripts do: it returns once the kernel has detached.
        run_ok(Command::new("umount").arg(&at));
        let out = Command::new(elasticfs_bin()).args(args).output().unwrap();
        assert!(out.status.success(), "round {round}: {}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(std::fs::read(at.join(format!("f{round}"))).unwrap(), vec![round as u8; 100_000]);
    }
    elasticfs(&["umount", at.to_str().unwrap()], &[]);
}

/// `-o commit=` defers the durability of an embedded store; a metadata service or etcd always
/// commits durably, so a mount of one with the option is refused, before it forks or connects.
#[test]
fn deferred_commits_are_refused_where_the_store_decides() {
    let dir = tempfile::tempdir().unwrap();
    let at = dir.path().to_str().unwrap();
    for meta in ["tcp://127.0.0.1:9", "etcd://127.0.0.1:9/fs"] {
        let err = elasticfs_fails(&["mount", "--meta", meta, at, "-d", "-o", "commit=5s"], &[]);
        assert!(err.contains("commit=") && err.contains("embedded store"), "{meta}: {err}");
    }
}
