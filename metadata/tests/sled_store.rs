//! What only the embedded sled store does: refuse a second process, and a newer format. The
//! rules every store shares are in `tests/tests/meta_conformance.rs`, run on every driver.

use elasticfs_metadata::{FileKind, MetaStore, NewNode, SledStore, Superblock, FORMAT_VERSION, ROOT_INO};

#[test]
fn reopened_store_has_everything_and_a_second_opener_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("meta");
    let sb = Superblock::new("t", 65536, 1024, "memory://");
    {
        let s = SledStore::format(&path, &sb, 0, 0).unwrap();
        s.create(&NewNode::new(ROOT_INO, b"kept", FileKind::File, 0o644)).unwrap();
        let err = SledStore::open(&path).err().unwrap();
        assert!(err.to_string().contains("in use by another process"), "{err}");
    }
    let s = SledStore::open(&path).unwrap();
    assert!(s.lookup(ROOT_INO, b"kept").is_ok());
    assert_eq!(s.superblock(), &sb);
}

#[test]
fn a_newer_format_version_is_refused_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("meta");
    let mut sb = Superblock::new("t", 65536, 1024, "memory://");
    sb.format_version = FORMAT_VERSION + 1;
    drop(SledStore::format(&path, &sb, 0, 0).unwrap());
    let err = SledStore::open(&path).err().unwrap().to_string();
    assert!(err.contains("newer elasticfs") && err.contains("upgrade"), "{err}");
}
