//! Every byte read from the object store is checked against its name.

use std::sync::Arc;

use elasticfs_core::metadata::{MetaStore, SledStore, Superblock, ROOT_INO};
use elasticfs_core::{chunk_path, open_object_store, Caller, ChunkStore, FileSystem, FsConfig};
use object_store::{ObjectStoreExt, PutPayload};

#[test]
fn a_corrupted_chunk_is_an_io_error_not_wrong_data() {
    let dir = tempfile::tempdir().unwrap();
    let sb = Superblock::new("verify", 65536, 1024, "memory://");
    let meta: Arc<dyn MetaStore> = Arc::new(SledStore::format(&dir.path().join("meta"), &sb, 0, 0).unwrap());
    let store = open_object_store("memory://").unwrap();
    // No cache: every read goes to the store.
    let fs = FileSystem::new(
        meta,
        ChunkStore::new(store.clone(), 0),
        FsConfig { cache_bytes: 0, ..Default::default() },
    )
    .unwrap();
    let (attr, fh) = fs.create(ROOT_INO, b"f", 0o644, Caller { uid: 0, gid: 0 }, true, false).unwrap();
    let data = vec![7u8; 100_000];
    fs.write(fh, 0, &data).unwrap();
    fs.release(fh).unwrap();
    let fh = fs.open(attr.ino, false).unwrap();
    assert_eq!(fs.read(fh, 0, 100_000).unwrap(), data);

    let block = fs.meta().blocks(attr.ino, 0, 1).unwrap().pop().unwrap().1;
    let elasticfs_core::metadata::BlockRef::Chunk { hash, .. } = block else { panic!("expected a chunk") };
    fs.block_on(store.put(&chunk_path(&hash), PutPayload::from_static(b"garbage"))).unwrap();
    let err = fs.read(fh, 0, 10).unwrap_err();
    assert_eq!(err.errno, elasticfs_core::errno::EIO);
    assert!(err.message.contains("corrupt"), "{err}");
}
