//! Elastic capacity with real mounts: `df` shows what the counters count, deleted data leaves
//! the bucket once garbage is collected, and identical files from two clients are stored once.

use elasticfs_tests::{
    df_used, dir_bytes, drop_page_cache, elasticfs, elasticfs_fails, fuse_available, pattern, write_mib,
    MetaService, S3Server, Volume,
};

const MIB: usize = 1 << 20;

#[test]
fn a_gibibyte_written_and_deleted_leaves_the_bucket() {
    if !fuse_available() {
        return;
    }
    let vol = Volume::local();
    vol.config(&["--throughput", "elastic"]);
    let chunks = vol.dir.path().join("chunks");
    let before = dir_bytes(&chunks);
    let mount = vol.mount();
    write_mib(&mount.path.join("big"), 1024, 1);
    std::fs::write(mount.path.join("small"), b"stays").unwrap();

    // df reports the counters, which count every byte written.
    let used = df_used(&mount.path);
    std::thread::sleep(std::time::Duration::from_millis(2500)); // the mount publishes its status every 2 s
    let counted = vol.status()["used_bytes"].as_u64().unwrap();
    assert_eq!(counted, 1024 * MIB as u64 + 5);
    assert_eq!(used, counted.div_ceil(4096) * 4096, "df and the counters");
    assert!(dir_bytes(&chunks) >= before + 1024 * MIB as u64);

    // A running embedded mount holds its store: gc says so and what to do.
    let err = elasticfs_fails(&["gc", "--meta", &vol.meta, "--grace", "0s"], &[]);
    assert!(err.contains("collects its own garbage") && err.contains("unmount"), "{err}");

    std::fs::remove_file(mount.path.join("big")).unwrap();
    assert_eq!(df_used(&mount.path), 4096, "df drops at once");
    mount.unmount();
    let dry = elasticfs(&["gc", "--meta", &vol.meta, "--grace", "0s", "--dry-run"], &[]);
    assert!(dry.contains("would delete 1024 chunks (1.00GiB"), "{dry}");
    let kept = elasticfs(&["gc", "--meta", &vol.meta], &[]);
    assert!(
        kept.contains("deleted 0 chunks") && kept.contains("1024 kept"),
        "within the grace period: {kept}"
    );
    let done = elasticfs(&["gc", "--meta", &vol.meta, "--grace", "0s"], &[]);
    assert!(done.contains("deleted 1024 chunks"), "{done}");
    let after = dir_bytes(&chunks);
    // Back to where it started (within 1% of the gibibyte that came and went).
    assert!(
        after.abs_diff(before) <= (1024 * MIB / 100) as u64,
        "bucket at {after} bytes, {before} before the write"
    );

    let mount = vol.mount();
    assert_eq!(std::fs::read(mount.path.join("small")).unwrap(), b"stays");
    mount.unmount();
    vol.assert_fsck_clean(true);
}

#[test]
fn identical_files_from_two_clients_are_stored_once() {
    if !fuse_available() {
        return;
    }
    let s3 = S3Server::start();
    let service = MetaService::start_with("5s", &["--gc-interval", "0"]);
    let vol = Volume::shared(&service, &s3);
    let (a, b) = (vol.mount_named("a", "", None), vol.mount_named("b", "", None));
    let empty = s3.bucket_bytes();
    write_mib(&a.path.join("one"), 8, 7);
    let once = s3.bucket_bytes() - empty;
    assert!(once >= 8 * MIB as u64, "{once}");
    write_mib(&b.path.join("two"), 8, 7);
    assert_eq!(s3.bucket_bytes() - empty, once, "the second copy is not stored again");

    // Deleting one copy keeps the other intact, through a collection with no grace.
    std::fs::remove_file(a.path.join("one")).unwrap();
    let report = elasticfs(&["gc", "--meta", &vol.meta, "--grace", "0s"], &vol.env_refs());
    assert!(report.contains("deleted 0 chunks"), "{report}");
    let expected: Vec<u8> = (0..8u64).flat_map(|i| pattern(7 << 32 | i, MIB)).collect();
    drop_page_cache();
    assert!(
        std::fs::read(a.path.join("two")).unwrap() == expected,
        "the other copy, read on the first mount"
    );

    // Deleting the last copy empties the bucket again.
    std::fs::remove_file(b.path.join("two")).unwrap();
    let report = elasticfs(&["gc", "--meta", &vol.meta, "--grace", "0s"], &vol.env_refs());
    assert!(report.contains("deleted 8 chunks"), "{report}");
    assert_eq!(s3.bucket_bytes(), empty);
    a.unmount();
    b.unmount();
}
