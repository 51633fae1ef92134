//! File systems on a real 3-member etcd cluster, mounted several times: the mounts share one
//! namespace, keep working through the loss of the leader, wait out (hard) or fail (soft) the
//! loss of quorum, and a killed client's locks go with its lease.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use elasticfs_tests::etcd::{etcd_available, EtcdCluster};
use elasticfs_tests::{fuse_available, pattern, S3Server, Volume};

fn ready() -> bool {
    fuse_available() && etcd_available()
}

fn names(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect()
}

#[test]
fn four_mounts_keep_every_acknowledged_change_through_a_leader_kill() {
    if !ready() {
        return;
    }
    let mut cluster = EtcdCluster::start();
    let s3 = S3Server::start();
    let vol = Volume::etcd(&cluster, "storm", &s3, 10);
    let mounts: Vec<_> = (0..4).map(|i| vol.mount_named(&format!("m{i}"), "", None)).collect();
    std::fs::create_dir(mounts[0].path.join("shared")).unwrap();
    let data = pattern(7, 3_000_000);
    std::fs::write(mounts[0].path.join("big"), &data).unwrap();

    // Each mount creates files in the shared directory and renames half of them into a
    // directory of its own, while the leader is killed part-way.
    let storms: Vec<_> = mounts
        .iter()
        .enumerate()
        .map(|(m, mount)| {
            let root = mount.path.clone();
            std::thread::spawn(move || {
                let own = root.join(format!("own{m}"));
                std::fs::create_dir(&own).unwrap();
                let mut acknowledged = Vec::new();
                for i in 0..60 {
                    let name = format!("f-{m}-{i}");
                    std::fs::write(root.join("shared").join(&name), format!("{m}/{i}")).unwrap();
                    if i % 2 == 0 {
                        std::fs::rename(root.join("shared").join(&name), own.join(&name)).unwrap();
                        acknowledged.push(format!("own{m}/{name}"));
                    } else {
                        acknowledged.push(format!("shared/{name}"));
                    }
                }
                acknowledged
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(700));
    let leader = cluster.leader().expect("a leader");
    cluster.kill(leader);
    let mut all = Vec::new();
    for storm in storms {
        all.extend(storm.join().expect("a storm failed: an operation returned an error"));
    }
    // Every mount sees every acknowledged change, without a remount.
    for mount in &mounts {
        for path in &all {
            let (dir, name) = path.split_once('/').unwrap();
            assert!(
                names(&mount.path.join(dir)).contains(name),
                "{path} missing on {}",
                mount.path.display()
            );
        }
        assert_eq!(names(&mount.path.join("shared")).len(), 4 * 30);
        assert_eq!(std::fs::read(mount.path.join("big")).unwrap(), data);
    }
    assert_eq!(std::fs::read_to_string(mounts[3].path.join("own1/f-1-58")).unwrap(), "1/58");
    cluster.restart(leader);
    for mount in mounts {
        mount.unmount();
    }
    vol.assert_fsck_clean(true);
    assert_eq!(vol.status()["client_connections"], 0, "clean unmounts end their sessions");
}

#[test]
fn without_quorum_soft_mounts_fail_and_hard_mounts_wait_then_resume() {
    if !ready() {
        return;
    }
    let mut cluster = EtcdCluster::start();
    let s3 = S3Server::start();
    let vol = Volume::etcd(&cluster, "quorum", &s3, 30);
    let hard = vol.mount_named("hard", "", None);
    let soft = vol.mount_named("soft", "soft,timeo=3", None);
    std::fs::write(hard.path.join("before"), "1").unwrap();

    cluster.kill(0);
    cluster.kill(1);
    let started = Instant::now();
    let err = std::fs::write(soft.path.join("during-soft"), "x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    assert!(started.elapsed() < Duration::from_secs(30), "a soft mount gives up after timeo");

    let hard_path = hard.path.clone();
    let writer = std::thread::spawn(move || std::fs::write(hard_path.join("during-hard"), "2"));
    std::thread::sleep(Duration::from_secs(3));
    assert!(!writer.is_finished(), "a hard mount waits for the cluster");
    cluster.restart(0);
    writer.join().unwrap().expect("the hard mount resumes once a quorum is back");
    cluster.restart(1);
    cluster.wait_healthy(Duration::from_secs(30));
    assert_eq!(std::fs::read_to_string(soft.path.join("during-hard")).unwrap(), "2");
    hard.unmount();
    soft.unmount();
    vol.assert_fsck_clean(false);
}

/// A member that is down is passed over by clients that start meanwhile, not only by running
/// ones: `status` and a new mount work with one member of three stopped, whichever member the
/// client tries first.
#[test]
fn new_clients_start_with_a_member_down() {
    if !ready() {
        return;
    }
    let mut cluster = EtcdCluster::start();
    let s3 = S3Server::start();
    let vol = Volume::etcd(&cluster, "minority", &s3, 30);
    let first = vol.mount_named("first", "", None);
    std::fs::write(first.path.join("before"), "1").unwrap();
    for down in 0..3 {
        cluster.kill(down);
        for _ in 0..4 {
            assert_eq!(vol.status()["used_inodes"], 2, "status with member {down} down");
        }
        let late = vol.mount_named(&format!("late{down}"), "", None);
        assert_eq!(std::fs::read_to_string(late.path.join("before")).unwrap(), "1");
        late.unmount();
        cluster.restart(down);
        cluster.wait_healthy(Duration::from_secs(30));
    }
    first.unmount();
    vol.assert_fsck_clean(false);
}

/// Everything a user sees of a tree: per path, kind, mode, owner, size, link count, extended
/// attributes, symlink target and a hash of the bytes.
fn tree(root: &Path) -> Vec<String> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let rel = path.strip_prefix(root).unwrap().display().to_string();
            let mut line = format!("{rel} mode={:o} uid={} nlink={}", meta.mode(), meta.uid(), meta.nlink());
            if meta.is_symlink() {
                line += &format!(" -> {}", std::fs::read_link(&path).unwrap().display());
            } else if meta.is_dir() {
                stack.push(path.clone());
            } else {
                line +=
                    &format!(" size={} blake3={}", meta.len(), blake3::hash(&std::fs::read(&path).unwrap()));
            }
            let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
            let mut buf = vec![0u8; 4096];
            // SAFETY: valid C string and buffer.
            let n = unsafe { libc::llistxattr(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
            if n > 0 {
                line +=
                    &format!(" xattrs={}", String::from_utf8_lossy(&buf[..n as usize]).replace('\0', ","));
            }
            out.push(line);
        }
    }
    out.sort();
    out
}

fn populate(root: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(root.join("a/b/c")).unwrap();
    std::fs::write(root.join("a/big"), pattern(3, 2_500_000)).unwrap();
    for i in 0..50 {
        std::fs::write(root.join(format!("a/b/small{i}")), format!("small {i}")).unwrap();
    }
    std::fs::hard_link(root.join("a/big"), root.join("a/b/c/big-again")).unwrap();
    std::os::unix::fs::symlink("../big", root.join("a/b/link")).unwrap();
    std::fs::set_permissions(root.join("a/b/small3"), std::fs::Permissions::from_mode(0o4751)).unwrap();
    std::os::unix::fs::chown(root.join("a/b/small4"), Some(1234), Some(56)).unwrap();
    let status = std::process::Command::new("setfattr")
        .args(["-n", "user.colour", "-v", "blue"])
        .arg(root.join("a/b/small5"))
        .status();
    if !status.is_ok_and(|s| s.success()) {
        let c = std::ffi::CString::new(root.join("a/b/small5").as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: valid C strings and buffer.
        let rc =
            unsafe { libc::setxattr(c.as_ptr(), c"user.colour".as_ptr(), b"blue".as_ptr().cast(), 4, 0) };
        assert_eq!(rc, 0, "setxattr");
    }
}

#[test]
fn a_sled_file_system_moves_to_etcd_and_back_with_meta_dump_and_load() {
    if !ready() {
        return;
    }
    let cluster = EtcdCluster::start();
    let vol = Volume::local();
    let mount = vol.mount();
    populate(&mount.path);
    let original = tree(&mount.path);
    mount.unmount();

    let dump = vol.dir.path().join("meta.dump");
    let out = std::process::Command::new(elasticfs_tests::elasticfs_bin())
        .args(["meta", "dump", "--meta", &vol.meta])
        .stdout(std::fs::File::create(&dump).unwrap())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let load = |url: &str, from: &Path| {
        let out = std::process::Command::new(elasticfs_tests::elasticfs_bin())
            .args(["meta", "load", "--meta", url])
            .stdin(std::fs::File::open(from).unwrap())
            .output()
            .unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (ok, log) = load(&cluster.url("moved"), &dump);
    assert!(ok, "{log}");
    // A store that holds a file system is not loaded over.
    let (ok, log) = load(&cluster.url("moved"), &dump);
    assert!(!ok && log.contains("already holds a file system"), "{log}");

    let on_etcd = Volume { meta: cluster.url("moved"), dir: tempfile::tempdir().unwrap(), env: Vec::new() };
    let mount = on_etcd.mount();
    assert_eq!(tree(&mount.path), original);
    std::fs::write(mount.path.join("written-on-etcd"), "new").unwrap();
    mount.unmount();
    on_etcd.assert_fsck_clean(true);

    // And back to sled.
    let back_dump = vol.dir.path().join("etcd.dump");
    let out = std::process::Command::new(elasticfs_tests::elasticfs_bin())
        .args(["meta", "dump", "--meta", &on_etcd.meta])
        .stdout(std::fs::File::create(&back_dump).unwrap())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let back = Volume {
        meta: format!("sled://{}/back", vol.dir.path().display()),
        dir: tempfile::tempdir().unwrap(),
        env: Vec::new(),
    };
    let (ok, log) = load(&back.meta, &back_dump);
    assert!(ok, "{log}");
    let mount = back.mount();
    assert_eq!(std::fs::read_to_string(mount.path.join("written-on-etcd")).unwrap(), "new");
    std::fs::remove_file(mount.path.join("written-on-etcd")).unwrap();
    assert_eq!(tree(&mount.path), original);
    mount.unmount();
    back.assert_fsck_clean(true);

    // A cut-short dump is refused, and loads nothing.
    let bytes = std::fs::read(&dump).unwrap();
    let cut = vol.dir.path().join("cut.dump");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let (ok, log) = load(&cluster.url("cut"), &cut);
    assert!(!ok && log.contains("cut short"), "{log}");
}

#[test]
fn a_killed_clients_lock_goes_with_its_lease() {
    use elasticfs_tests::locks::{hold, lock_state};
    if !ready() {
        return;
    }
    let cluster = EtcdCluster::start();
    let s3 = S3Server::start();
    let vol = Volume::etcd(&cluster, "locks", &s3, 3);
    let survivor = vol.mount_named("survivor", "", None);
    let doomed = vol.mount_named("doomed", "", None);
    std::fs::write(doomed.path.join("held"), "x").unwrap();
    let mut stuck = hold(&doomed.path.join("held"));
    assert!(lock_state(&survivor.path.join("held")).starts_with("held write"));
    let doomed_path = doomed.path.clone();
    doomed.kill();
    let killed = Instant::now();
    while lock_state(&survivor.path.join("held")) != "unlocked" {
        assert!(killed.elapsed() < Duration::from_secs(30), "the dead mount's lock was never released");
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!("lock of the killed mount released after {:?}", killed.elapsed());
    assert_eq!(vol.status()["client_connections"], 1, "the dead mount's session is gone");
    let _ = stuck.kill();
    elasticfs_tests::detach(&doomed_path);
    let _ = stuck.wait();
    survivor.unmount();
    vol.assert_fsck_clean(false);
}

#[test]
fn pjdfstest_passes_on_etcd() {
    if !ready() {
        return;
    }
    let cluster = EtcdCluster::start();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/pjdfstest.sh");
    let out =
        std::process::Command::new(script).env("ELASTICFS_PJD_META", cluster.url("pjd")).output().unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{report}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(report.contains("Summary: 0 failed"), "{report}");
    eprintln!("{}", report.trim());
}

#[test]
fn etcds_speaks_tls_and_refuses_a_wrong_ca() {
    if !ready() {
        return;
    }
    let certs = tempfile::tempdir().unwrap();
    let (cert, key) = elasticfs_tests::self_signed_cert(certs.path());
    let cluster = EtcdCluster::start_with(Some((cert.clone(), key)));
    let url = format!("etcds://{}/secure?ca={}", cluster.endpoints(), cert.display());
    let vol = Volume { meta: url, dir: tempfile::tempdir().unwrap(), env: Vec::new() };
    let chunks = vol.dir.path().join("chunks");
    elasticfs_tests::elasticfs(
        &["format", "--meta", &vol.meta, "--storage", "file", "--bucket", chunks.to_str().unwrap()],
        &[],
    );
    let mount = vol.mount();
    std::fs::write(mount.path.join("over-tls"), "sealed").unwrap();
    mount.unmount();
    assert!(vol.fsck(false).contains(": consistent"));
    // Plain http to a TLS cluster, and a CA that did not sign the members' certificate.
    let plain = elasticfs_tests::elasticfs_fails(&["status", "--meta", &cluster.url("secure")], &[]);
    assert!(plain.contains("etcd://") && plain.contains("check"), "{plain}");
    let other = tempfile::tempdir().unwrap();
    let (stranger, _) = elasticfs_tests::self_signed_cert(other.path());
    let wrong = format!("etcds://{}/secure?ca={}", cluster.endpoints(), stranger.display());
    let refused = elasticfs_tests::elasticfs_fails(&["status", "--meta", &wrong], &[]);
    assert!(refused.contains("etcd://"), "{refused}");
}

#[test]
fn posix_suite_on_etcd_survives_remount() {
    use elasticfs_tests::posix_suite::{self, hash_file};
    if !ready() {
        return;
    }
    let cluster = EtcdCluster::start();
    let s3 = S3Server::start();
    let vol = Volume::etcd(&cluster, "posix", &s3, 20);
    let mount = vol.mount();
    let large = posix_suite::run_all(&mount.path, 256 << 20, 2_000);
    let at = mount.path.clone();
    mount.unmount();
    let again = vol.mount_at(&at);
    assert_eq!(hash_file(&again.path.join("large.bin")), large);
    assert_eq!(std::fs::read_dir(again.path.join("many")).unwrap().count(), 2_000);
    again.unmount();
    vol.assert_fsck_clean(true);
}
