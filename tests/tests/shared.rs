//! Several mounts of one file system, each its own process, sharing one metadata service
//! (`elasticfs meta serve`) and one S3 server: close-to-open, concurrent namespace changes,
//! locks across clients, sessions, and a service killed mid-storm.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use elasticfs_tests::locks::{hold, lock_state, lock_tool};
use elasticfs_tests::{detach, fuse_available, pattern, MetaService, Mount, S3Server, Volume};

fn mounts(vol: &Volume, range: std::ops::Range<usize>) -> Vec<Mount> {
    range.map(|i| vol.mount_named(&format!("m{i}"), "", None)).collect()
}

fn names(dir: &Path) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    out.sort();
    out
}

#[test]
fn mounts_share_one_namespace_with_close_to_open() {
    if !fuse_available() {
        return;
    }
    let s3 = S3Server::start();
    let service = MetaService::start("5s");
    let vol = Volume::shared(&service, &s3);
    let mut all = mounts(&vol, 0..2);
    let (a, b) = (all[0].path.clone(), all[1].path.clone());

    // Written and closed on one host, read byte-exact on the other.
    let data = pattern(1, 2_500_000);
    std::fs::write(a.join("big"), &data).unwrap();
    assert_eq!(std::fs::read(b.join("big")).unwrap(), data);
    // B has the file's attributes cached now; A's append must still be seen at B's next open.
    let more = pattern(2, 100_000);
    let mut f = std::fs::OpenOptions::new().append(true).open(a.join("big")).unwrap();
    f.write_all(&more).unwrap();
    drop(f);
    let grown = std::fs::read(b.join("big")).unwrap();
    assert_eq!(grown.len(), data.len() + more.len());
    assert!(grown[data.len()..] == more[..], "appended bytes differ");
    // fsync without close is enough too.
    let mut f = std::fs::File::create(b.join("synced")).unwrap();
    f.write_all(b"fsynced on b").unwrap();
    f.sync_all().unwrap();
    assert_eq!(std::fs::read(a.join("synced")).unwrap(), b"fsynced on b");
    drop(f);

    // Eight mounts, each writing one file: every mount sees all eight.
    all.extend(mounts(&vol, 2..8));
    for (i, m) in all.iter().enumerate() {
        std::fs::write(m.path.join(format!("from-{i}")), format!("mount {i}")).unwrap();
    }
    let expected: Vec<String> = ["big", "synced"]
        .iter()
        .map(|s| s.to_string())
        .chain((0..8).map(|i| format!("from-{i}")))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    for m in &all {
        assert_eq!(names(&m.path), expected, "listing on {}", m.path.display());
        assert_eq!(std::fs::read_to_string(m.path.join("from-5")).unwrap(), "mount 5");
    }
    let status = vol.status();
    assert_eq!(status["client_connections"], 8, "{status}");

    // Creates, mkdirs and renames storming in from four mounts at once.
    std::fs::create_dir(a.join("storm")).unwrap();
    let storms: Vec<_> = all[..4]
        .iter()
        .enumerate()
        .map(|(m, mount)| {
            let dir = mount.path.join("storm");
            std::thread::spawn(move || {
                let mut made = Vec::new();
                for i in 0..60 {
                    std::fs::create_dir(dir.join(format!("d-{m}-{i}"))).unwrap();
                    made.push(format!("d-{m}-{i}"));
                    std::fs::write(dir.join(format!("f-{m}-{i}")), format!("{m}/{i}")).unwrap();
                    if i % 3 == 0 {
                        std::fs::rename(dir.join(format!("f-{m}-{i}")), dir.join(format!("r-{m}-{i}")))
                            .unwrap();
                        made.push(format!("r-{m}-{i}"));
                    } else {
                        made.push(format!("f-{m}-{i}"));
                    }
                }
                made
            })
        })
        .collect();
    let mut union = BTreeSet::new();
    for storm in storms {
        union.extend(storm.join().unwrap());
    }
    for m in [&all[4], &all[7]] {
        let listed = names(&m.path.join("storm"));
        assert_eq!(listed.len(), union.len(), "duplicated or lost entries");
        assert_eq!(listed.into_iter().collect::<BTreeSet<_>>(), union);
    }
    assert_eq!(std::fs::read_to_string(all[6].path.join("storm/r-2-30")).unwrap(), "2/30");
    for m in all {
        m.unmount();
    }
    let status = vol.status();
    assert_eq!(status["client_connections"], 0, "clean unmounts end their sessions: {status}");
}

/// Close-to-open holds however long a mount lets the kernel cache attributes: an open after
/// another host's change makes the kernel drop the size it holds (else reads stop short at it),
/// and an open of a file unchanged since the kernel was told its attributes need not.
#[test]
fn an_open_sees_another_hosts_change_through_a_long_attribute_cache() {
    if !fuse_available() {
        return;
    }
    let s3 = S3Server::start();
    let service = MetaService::start("5s");
    let vol = Volume::shared(&service, &s3);
    let writer = vol.mount_named("writer", "", None);
    let reader = vol.mount_named("reader", "attr-cache=1h,entry-cache=1h", None);
    let (at_writer, at_reader) = (writer.path.join("grows"), reader.path.join("grows"));

    let first = pattern(3, 1000);
    std::fs::write(&at_writer, &first).unwrap();
    assert_eq!(std::fs::read(&at_reader).unwrap(), first);
    assert_eq!(std::fs::metadata(&at_reader).unwrap().len(), 1000, "the reader's kernel holds 1000 bytes");
    let more = pattern(4, 500);
    std::fs::OpenOptions::new().append(true).open(&at_writer).unwrap().write_all(&more).unwrap();

    let grown = std::fs::read(&at_reader).unwrap();
    assert_eq!(grown.len(), 1500, "the reader's open must drop the size its kernel cached");
    assert!(grown[..1000] == first[..] && grown[1000..] == more[..], "content differs");
    assert_eq!(std::fs::read(&at_reader).unwrap(), grown, "an open of the unchanged file reads the same");
    drop((reader, writer));
}

fn count_under_locks(kind: &str, files: &[PathBuf], per_process: u32) -> u64 {
    std::fs::write(&files[0], "0").unwrap();
    let workers: Vec<Child> = files
        .iter()
        .map(|f| lock_tool(&["count", kind, f.to_str().unwrap(), &per_process.to_string()]).spawn().unwrap())
        .collect();
    for mut w in workers {
        assert!(w.wait().unwrap().success(), "{kind} counter process failed");
    }
    std::fs::read_to_string(&files[0]).unwrap().trim().parse().unwrap()
}

#[test]
fn locks_are_shared_between_mounts_and_end_with_their_session() {
    if !fuse_available() {
        return;
    }
    let s3 = S3Server::start();
    let service = MetaService::start("3s");
    let vol = Volume::shared(&service, &s3);
    let all = mounts(&vol, 0..2);
    let (a, b) = (all[0].path.clone(), all[1].path.clone());

    // Four processes, two on each mount, each adding 25 under the lock.
    let counter = |name: &str| vec![a.join(name), b.join(name), a.join(name), b.join(name)];
    assert_eq!(count_under_locks("flock", &counter("flock-counter"), 25), 100);
    assert_eq!(count_under_locks("fcntl", &counter("fcntl-counter"), 25), 100);

    // F_GETLK on the other mount names the holder; a second writer is refused.
    std::fs::write(a.join("held"), "x").unwrap();
    let mut holder = hold(&a.join("held"));
    assert_eq!(lock_state(&b.join("held")), format!("held write 0 0 {}", holder.id()));
    let busy = lock_tool(&["hold", b.join("held").to_str().unwrap()]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&busy.stdout).trim(), "busy");
    // Process exit releases its locks.
    holder.kill().unwrap();
    holder.wait().unwrap();
    assert_eq!(lock_state(&b.join("held")), "unlocked");

    // A mount killed while one of its processes holds a lock: the lock goes with the session,
    // once the lease (3 s) runs out.
    let doomed = vol.mount_named("doomed", "", None);
    let mut stuck = hold(&doomed.path.join("held"));
    assert!(lock_state(&b.join("held")).starts_with("held write"));
    let doomed_path = doomed.path.clone();
    doomed.kill();
    let killed = Instant::now();
    while lock_state(&b.join("held")) != "unlocked" {
        assert!(killed.elapsed() < Duration::from_secs(30), "the dead mount's lock was never released");
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!("lock of the killed mount released after {:?}", killed.elapsed());
    assert!(service.log().contains("session expired"), "{}", service.log());
    let _ = stuck.kill();
    detach(&doomed_path);
    let _ = stuck.wait();
    for m in all {
        m.unmount();
    }
}

#[test]
fn service_killed_mid_storm_loses_nothing_acknowledged() {
    if !fuse_available() {
        return;
    }
    let s3 = S3Server::start();
    let mut service = MetaService::start("10s");
    let vol = Volume::shared(&service, &s3);
    let all = mounts(&vol, 0..3);
    std::fs::create_dir(all[0].path.join("storm")).unwrap();
    let (acked_tx, acked_rx) = std::sync::mpsc::channel();
    let storms: Vec<_> = all
        .iter()
        .enumerate()
        .map(|(m, mount)| {
            let (dir, acked) = (mount.path.join("storm"), acked_tx.clone());
            std::thread::spawn(move || {
                for i in 0..120u64 {
                    let name = format!("f-{m}-{i}");
                    let data = pattern(m as u64 * 1000 + i, (i as usize * 7919) % 40_000 + 1);
                    // An operation in flight when the service dies may be retried after it
                    // committed (and then fail with EEXIST): only successes are acknowledged.
                    if std::fs::write(dir.join(&name), &data).is_ok() {
                        acked.send((name, Some(blake3::hash(&data)))).unwrap();
                    }
                    let dir_name = format!("d-{m}-{i}");
                    if std::fs::create_dir(dir.join(&dir_name)).is_ok() {
                        acked.send((dir_name, None)).unwrap();
                    }
                }
            })
        })
        .collect();
    drop(acked_tx);
    let mut acked = Vec::new();
    while acked.len() < 60 {
        acked.push(acked_rx.recv_timeout(Duration::from_secs(60)).expect("the storm makes progress"));
    }
    service.kill();
    std::thread::sleep(Duration::from_secs(1));
    service.restart();
    for storm in storms {
        storm.join().unwrap();
    }
    acked.extend(acked_rx.try_iter());
    assert!(acked.len() > 300, "the clients carried on after the restart: {} acknowledged", acked.len());

    // Checked through a fresh mount, with nothing cached.
    let check = vol.mount_named("check", "", None);
    for (name, hash) in &acked {
        let path = check.path.join("storm").join(name);
        match hash {
            Some(hash) => assert_eq!(blake3::hash(&std::fs::read(&path).unwrap()), *hash, "{name}"),
            None => assert!(path.is_dir(), "{name} lost"),
        }
    }
    // The clients carry on without a remount.
    std::fs::write(all[1].path.join("after"), "after the restart").unwrap();
    assert_eq!(std::fs::read_to_string(all[2].path.join("after")).unwrap(), "after the restart");
    for m in all {
        m.unmount();
    }
    check.unmount();
    vol.assert_fsck_clean(false);
}

#[test]
fn soft_mount_fails_with_eio_while_the_service_is_away_then_recovers() {
    if !fuse_available() {
        return;
    }
    let s3 = S3Server::start();
    let mut service = MetaService::start("30s");
    let vol = Volume::shared(&service, &s3);
    let soft = vol.mount_named("soft", "soft,timeo=2s", None);
    std::fs::write(soft.path.join("before"), "x").unwrap();
    service.kill();
    let err = std::fs::metadata(soft.path.join("never-looked-up")).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    service.restart();
    assert_eq!(std::fs::read_to_string(soft.path.join("before")).unwrap(), "x");
    std::fs::write(soft.path.join("after"), "y").unwrap();
    soft.unmount();
}
