//! The POSIX suite on a real FUSE mount whose chunks live in a real S3 bucket, spoken to over
//! HTTP on 127.0.0.1 (an in-process s3s-fs server).

use elasticfs_tests::posix_suite::{self, hash_file};
use elasticfs_tests::{elasticfs_fails, fuse_available, S3Server, Volume};

#[test]
fn posix_suite_on_s3_survives_remount() {
    if !fuse_available() {
        return;
    }
    let server = S3Server::start();
    let vol = Volume::s3(&server);
    let mount = vol.mount();
    let large = posix_suite::run_all(&mount.path, 1 << 30, 10_000);
    assert!(server.bucket_objects() > 1024, "the 1 GiB file is in the bucket as 1 MiB chunks");
    let at = mount.path.clone();
    mount.unmount();
    let again = vol.mount_at(&at);
    assert_eq!(hash_file(&again.path.join("large.bin")), large);
    again.unmount();
    vol.assert_fsck_clean(true);
}

#[test]
fn wrong_credentials_are_refused_at_mount() {
    if !fuse_available() {
        return;
    }
    let server = S3Server::start();
    let vol = Volume::s3(&server);
    let at = vol.dir.path().join("mnt");
    std::fs::create_dir(&at).unwrap();
    let env = [
        ("AWS_ACCESS_KEY_ID", "elasticfs-test"),
        ("AWS_SECRET_ACCESS_KEY", "wrong"),
        ("AWS_REGION", "us-east-1"),
    ];
    let err = elasticfs_fails(&["mount", "--meta", &vol.meta, at.to_str().unwrap()], &env);
    assert!(err.contains("not usable") && err.contains("credentials"), "{err}");
}
