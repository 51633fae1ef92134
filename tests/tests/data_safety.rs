//! Nothing lost, nothing wasted: a bucket (and prefix) belongs to one file system, so that no
//! other file system's garbage collection deletes its chunks; and a file written in place at
//! random is uploaded once per flush, not once per write.

use elasticfs_tests::nfs::*;
use elasticfs_tests::{
    dir_bytes, elasticfs, elasticfs_fails, fio, fio_available, free_disk_bytes, fuse_available,
    leaked_objects, pattern, S3Server, Volume,
};
use nfs3_client::nfs3_types::nfs3::stable_how;

const OWNER_RECORD: &str = "elasticfs-owner.json";

fn uuid_of(vol: &Volume) -> String {
    vol.status()["uuid"].as_str().expect("status names the uuid").to_string()
}

/// Writes `data` to `name` through a mount of `vol`.
fn write_through_mount(vol: &Volume, name: &str, data: &[u8]) {
    let mount = vol.mount();
    std::fs::write(mount.path.join(name), data).unwrap();
    mount.unmount();
}

fn read_through_mount(vol: &Volume, name: &str) -> Vec<u8> {
    let mount = vol.mount();
    let data = std::fs::read(mount.path.join(name)).unwrap();
    mount.unmount();
    data
}

#[test]
fn a_local_directory_belongs_to_one_file_system() {
    if !fuse_available() {
        return;
    }
    let vol = Volume::local();
    let data = pattern(1, (3 << 20) + 17);
    write_through_mount(&vol, "precious", &data);
    let chunks = vol.dir.path().join("chunks");
    let owner = uuid_of(&vol);

    // A second format on the same directory is refused, naming the owner and the fix.
    let second = format!("sled://{}/second", vol.dir.path().display());
    let err = elasticfs_fails(&["format", "--meta", &second, "--bucket", chunks.to_str().unwrap()], &[]);
    assert!(err.contains("belongs to another file system") && err.contains(&owner), "{err}");
    assert!(err.contains("--bucket"), "the error names the fix: {err}");
    assert!(!vol.dir.path().join("second").exists(), "a refused format leaves no metadata behind");

    // Without --bucket, a file system gets chunks of its own beside its metadata.
    let third = vol.dir.path().join("third");
    let out = elasticfs(&["format", "--meta", &format!("sled://{}", third.display())], &[]);
    let own = vol.dir.path().join("third.chunks");
    assert!(out.contains(own.to_str().unwrap()), "{out}");
    let record = std::fs::read_to_string(own.join(OWNER_RECORD)).unwrap();
    assert!(!record.contains(&owner), "the new directory is the new file system's: {record}");

    // A metadata store pointed at a location another file system owns (here: its record
    // copied over) is refused by every command that would touch an object.
    std::fs::copy(chunks.join(OWNER_RECORD), own.join(OWNER_RECORD)).unwrap();
    let meta = format!("sled://{}", third.display());
    let mountpoint = vol.dir.path().join("third-mnt");
    std::fs::create_dir(&mountpoint).unwrap();
    for args in [
        vec!["mount", "--meta", &meta, mountpoint.to_str().unwrap()],
        vec!["nfs", "serve", "--meta", &meta, "--listen", "127.0.0.1:0"],
        vec!["gc", "--meta", &meta, "--grace", "0s"],
        vec!["fsck", "--meta", &meta],
    ] {
        let err = elasticfs_fails(&args, &[]);
        assert!(err.contains("belongs to another file system") && err.contains(&owner), "{args:?}: {err}");
    }

    // The owner is untouched, and its own collection keeps its live data.
    elasticfs(&["gc", "--meta", &vol.meta, "--grace", "0s"], &[]);
    vol.assert_fsck_clean(true);
    assert_eq!(read_through_mount(&vol, "precious"), data);
}

#[test]
fn a_file_system_from_before_ownership_records_is_upgraded_by_its_first_mount() {
    if !fuse_available() {
        return;
    }
    let vol = Volume::local();
    write_through_mount(&vol, "old", &pattern(2, 2 << 20));
    let chunks = vol.dir.path().join("chunks");
    std::fs::remove_file(chunks.join(OWNER_RECORD)).unwrap();

    // Nothing proves whose the chunks are: gc and fsck refuse, and so does a new format there.
    let err = elasticfs_fails(&["gc", "--meta", &vol.meta, "--grace", "0s"], &[]);
    assert!(err.contains("no ownership record") && err.contains("mount the file system once"), "{err}");
    let other = format!("sled://{}/other", vol.dir.path().display());
    let err = elasticfs_fails(&["format", "--meta", &other, "--bucket", chunks.to_str().unwrap()], &[]);
    assert!(err.contains("already holds chunks"), "{err}");

    // The first mount writes the record; then everything works as for a new file system.
    assert_eq!(read_through_mount(&vol, "old"), pattern(2, 2 << 20));
    let record = std::fs::read_to_string(chunks.join(OWNER_RECORD)).unwrap();
    assert!(record.contains(&uuid_of(&vol)), "{record}");
    elasticfs(&["gc", "--meta", &vol.meta, "--grace", "0s"], &[]);
    vol.assert_fsck_clean(true);
}

#[test]
fn two_file_systems_on_one_s3_bucket_are_kept_apart() {
    if !fuse_available() {
        return;
    }
    let server = S3Server::start();
    let volume_at = |location: &str| {
        let dir = tempfile::tempdir().unwrap();
        let meta = format!("sled://{}/meta", dir.path().display());
        let vol = Volume { meta, dir, env: server.env() };
        elasticfs(
            &["format", "--meta", &vol.meta, "--block-size", "1M", "--storage", "s3", "--bucket", location],
            &vol.env_refs(),
        );
        vol
    };
    let first = volume_at(&format!("{}/first", server.bucket_url()));

    // Same bucket, same prefix: refused.
    let dir = tempfile::tempdir().unwrap();
    let meta = format!("sled://{}/meta", dir.path().display());
    let args =
        ["format", "--meta", &meta, "--storage", "s3", "--bucket", &format!("{}/first", server.bucket_url())];
    let env = server.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let err = elasticfs_fails(&args, &env);
    assert!(err.contains("belongs to another file system") && err.contains(&uuid_of(&first)), "{err}");

    // Another prefix, and the bucket's root, are places of their own.
    let second = volume_at(&format!("{}/second", server.bucket_url()));
    let root = volume_at(&server.bucket_url());
    let files = [(&first, pattern(3, 5 << 20)), (&second, pattern(4, 3 << 20)), (&root, pattern(5, 2 << 20))];
    for (vol, data) in &files {
        write_through_mount(vol, "data", data);
    }
    for (vol, _) in &files {
        elasticfs(&["gc", "--meta", &vol.meta, "--grace", "0s"], &vol.env_refs());
    }
    for (vol, data) in &files {
        vol.assert_fsck_clean(true);
        assert_eq!(blake3::hash(&read_through_mount(vol, "data")), blake3::hash(data));
    }
}

const FILE: u64 = 64 << 20;

#[test]
fn random_writes_through_fuse_upload_each_block_once_per_flush() {
    if !fuse_available() || !fio_available() {
        return;
    }
    let vol = Volume::local();
    assert!(free_disk_bytes(vol.dir.path()) > 4 * FILE, "not enough free disk for this test");
    let mount = vol.mount();
    let file = mount.path.join("db");
    let size = format!("--size={FILE}");
    fio(&file, &[&size, "--end_fsync=1", "--do_verify=0"]);
    mount.unmount();
    // Uploads before any collection: the file's blocks once, not once per write.
    let stored = dir_bytes(&vol.dir.path().join("chunks"));
    eprintln!("{stored} bytes stored for a {FILE}-byte file written at random through FUSE");
    assert!(stored <= 2 * FILE, "{stored} bytes stored for a {FILE}-byte file written at random");

    let mount = vol.mount();
    let out = fio(&mount.path.join("db"), &[&size, "--verify_only"]);
    assert!(out.contains("err= 0"), "{out}");
    mount.unmount();
    vol.assert_fsck_clean(true);
}

#[tokio::test(flavor = "multi_thread")]
async fn random_writes_through_the_gateway_upload_each_block_once_per_commit() {
    let vol = Volume::local();
    assert!(free_disk_bytes(vol.dir.path()) > 4 * FILE, "not enough free disk for this test");
    let mut gw = Gateway::start(&vol, "gw", &["--squash", "none"]);
    let (mut nfs, root) = client(gw.port, 0, 0).await;
    let file = create(&mut nfs, &root, "db", 0o644).await.unwrap();
    // 4 KiB UNSTABLE writes at random places, as a database or fio would send them, over a
    // model of the file; one COMMIT at the end.
    let mut model = vec![0u8; FILE as usize];
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for i in 0..(FILE / 4096) {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let offset = (state % (FILE / 4096)) * 4096;
        let data = pattern(i, 4096);
        write(&mut nfs, &file, offset, &data, stable_how::UNSTABLE).await.unwrap();
        model[offset as usize..offset as usize + 4096].copy_from_slice(&data);
    }
    // The file's length, whatever the last places written.
    write(&mut nfs, &file, FILE - 4096, &model[(FILE - 4096) as usize..], stable_how::UNSTABLE)
        .await
        .unwrap();
    commit(&mut nfs, &file).await.unwrap();
    drop(nfs);
    gw.stop();
    let stored = dir_bytes(&vol.dir.path().join("chunks"));
    assert!(stored <= 2 * FILE, "{stored} bytes stored for a {FILE}-byte file written at random");

    gw.restart();
    let back = read_back(gw.port, "db").await;
    assert!(back == model, "the file read back differs from what was written");
    gw.stop();
    vol.assert_fsck_clean(true);
}

/// A size in `/proc/PID/status` (`VmHWM`: the largest resident set so far; `VmRSS`: now), in bytes.
fn memory_of(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with(field)).unwrap_or_else(|| panic!("{field} of {pid}"));
    line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() << 10
}

#[test]
fn random_writes_over_a_file_larger_than_the_write_buffer_stay_within_budget() {
    if !fuse_available() || !fio_available() {
        return;
    }
    let vol = Volume::local();
    // Past the buffer the mount commits what it holds: patches become slices, about the
    // bytes written (600 writes of 4 KiB), not whole blocks.
    assert!(free_disk_bytes(vol.dir.path()) > 512 << 20, "not enough free disk for this test");
    const BUDGET: &str = "write-buffer=8M,cache-size=8M,disk-cache=0,uploads=4";
    let mount = vol.mount_with(BUDGET, None);
    let idle = memory_of(mount.pid(), "VmRSS:");
    let file = mount.path.join("big");
    // A file four times the write buffer.
    fio(&file, &["--size=32m", "--number_ios=600", "--end_fsync=1", "--do_verify=1"]);
    let peak = memory_of(mount.pid(), "VmHWM:");
    eprintln!("mount RSS: {idle} bytes idle, {peak} at its peak");
    // The budgets: 8 MiB of buffer, 8 MiB of cache, 4 uploads of a 1 MiB block (and their
    // copies while they are sent), FUSE's request buffers; 32 MiB over the idle mount allows
    // for all of them with room to spare, and is a quarter of the file.
    assert!(peak <= idle + (32 << 20), "peak RSS {peak} against {idle} idle");
    mount.unmount();
    let mount = vol.mount();
    let out = fio(&mount.path.join("big"), &["--size=32m", "--number_ios=600", "--verify_only"]);
    assert!(out.contains("err= 0"), "{out}");
    mount.unmount();

    // What the layout wrote and the random writes replaced is collected; the rest is the file.
    vol.assert_fsck_clean(true);
    elasticfs(&["gc", "--meta", &vol.meta, "--grace", "0s"], &[]);
    let report = vol.fsck(true);
    assert_eq!(leaked_objects(&report), 0, "{report}");
    vol.assert_fsck_clean(true);
    let status = vol.status();
    let (bucket, used) =
        (status["bucket"]["bytes"].as_u64().unwrap(), status["used_bytes"].as_u64().unwrap());
    assert!(bucket <= used + (1 << 20), "after gc the bucket ({bucket}) holds the files ({used})");
}
