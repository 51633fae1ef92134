//! The NFS gateway is a full member of its file system: it collects the garbage of an embedded
//! store as a mount does, stops cleanly on SIGTERM and SIGINT (files committed, session ended,
//! exit 0), survives a log it cannot write, and takes client disconnects calmly.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use elasticfs_tests::nfs::*;
use elasticfs_tests::{elasticfs_bin, pattern, start_listening, walk_files, Volume};
use nfs3_client::nfs3_types::nfs3::*;

fn chunk_objects(vol: &Volume) -> usize {
    walk_files(&vol.dir.path().join("chunks"))
        .iter()
        .filter(|p| p.to_string_lossy().contains("/chunks/"))
        .count()
}

async fn remove(nfs: &mut Client, dir: &nfs_fh3, n: &str) {
    match nfs.remove(&REMOVE3args { object: at(dir, n) }).await.unwrap() {
        Nfs3Result::Ok(_) => {}
        Nfs3Result::Err((s, _)) => panic!("REMOVE {n}: {s:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_gateway_collects_garbage_and_stops_cleanly() {
    let vol = Volume::local();
    let mut gw = Gateway::start(&vol, "gw", &["--squash", "none", "-o", "gc-interval=1s,gc-grace=0s"]);
    let (mut nfs, root) = client(gw.port, 0, 0).await;
    let file = create(&mut nfs, &root, "doomed", 0o644).await.unwrap();
    write(&mut nfs, &file, 0, &pattern(1, 3 << 20), stable_how::FILE_SYNC).await.unwrap();
    let keep = create(&mut nfs, &root, "kept", 0o644).await.unwrap();
    let kept = pattern(2, 2 << 20);
    write(&mut nfs, &keep, 0, &kept, stable_how::UNSTABLE).await.unwrap();
    commit(&mut nfs, &keep).await.unwrap();
    let stored = chunk_objects(&vol);
    assert!(stored >= 5, "{stored} chunk objects for 5 MiB in 1 MiB blocks");

    // The gateway's own collection takes the deleted file's chunks, and only those.
    remove(&mut nfs, &root, "doomed").await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while chunk_objects(&vol) > stored - 3 {
        assert!(Instant::now() < deadline, "the gateway did not collect: {}", gw.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(read_all(&mut nfs, &keep, 1 << 20).await.unwrap(), kept);

    // Unstable data not yet committed is committed by a SIGTERM, which ends the session too.
    let late = pattern(3, 100_000);
    write(&mut nfs, &keep, 0, &late, stable_how::UNSTABLE).await.unwrap();
    drop(nfs);
    gw.stop();
    let log = gw.log();
    assert!(!log.contains("panicked"), "{log}");
    assert!(!log.contains("WARN"), "a client's disconnect is not a warning: {log}");
    assert_eq!(vol.status()["client_connections"], 0, "the gateway's session was left behind");
    vol.assert_fsck_clean(true);

    // SIGINT (Ctrl-C) stops it the same way.
    gw.restart();
    let (mut nfs, root) = client(gw.port, 0, 0).await;
    let keep = lookup(&mut nfs, &root, "kept").await.unwrap();
    let back = read_all(&mut nfs, &keep, 1 << 20).await.unwrap();
    assert!(back[..late.len()] == late[..] && back[late.len()..] == kept[late.len()..]);
    drop(nfs);
    gw.interrupt();
    assert!(!gw.log().contains("panicked"), "{}", gw.log());
    assert_eq!(vol.status()["client_connections"], 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gateway_whose_log_cannot_be_written_keeps_serving() {
    let vol = Volume::local();
    let cache = vol.dir.path().join("cache-full");
    let mut command = Command::new(elasticfs_bin());
    command
        .args(["nfs", "serve", "--meta", &vol.meta, "--listen", "127.0.0.1:0", "--squash", "none"])
        .args(["-o", &format!("cache-dir={}", cache.display())])
        // Every log line fails with ENOSPC, as on a full disk.
        .stderr(Stdio::from(std::fs::File::options().write(true).open("/dev/full").unwrap()))
        .env("ELASTICFS_LOG", "debug");
    let (mut child, port) = start_listening(command, String::new);
    let (mut nfs, root) = client(port, 0, 0).await;
    let file = create(&mut nfs, &root, "f", 0o644).await.unwrap();
    let data = pattern(4, 3 << 20);
    write(&mut nfs, &file, 0, &data, stable_how::FILE_SYNC).await.unwrap();
    assert_eq!(read_all(&mut nfs, &file, 1 << 20).await.unwrap(), data);
    drop(nfs);
    assert!(child.alive(), "the gateway died of its log");
    let status = child.terminate();
    assert!(status.success(), "nfs serve exited with {status}");
}
