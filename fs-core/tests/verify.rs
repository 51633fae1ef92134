//! Every byte read from the object store is checked against its name.

use std::sync::Arc;

use elasticfs_core::metadata::{BlockRef, ChunkHash, Ino, MetaStore, SledStore, Superblock, ROOT_INO};
use elasticfs_core::{chunk_path, open_object_store, Caller, ChunkStore, CreateMode, FileSystem, FsConfig};
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

/// An engine over fresh metadata and an in-memory bucket, with no cache at all, so that every
/// read goes to the store.
fn uncached_engine(block_size: u32) -> (tempfile::TempDir, FileSystem, Arc<dyn ObjectStore>) {
    let dir = tempfile::tempdir().unwrap();
    let sb = Superblock::new("verify", block_size, 1024, "memory://");
    let meta: Arc<dyn MetaStore> = Arc::new(SledStore::format(&dir.path().join("meta"), &sb, 0, 0).unwrap());
    let store = open_object_store("memory://").unwrap();
    let fs = uncached(meta, store.clone());
    (dir, fs, store)
}

fn uncached(meta: Arc<dyn MetaStore>, store: Arc<dyn ObjectStore>) -> FileSystem {
    FileSystem::new(meta, ChunkStore::new(store, 0), FsConfig { cache_bytes: 0, ..Default::default() })
        .unwrap()
}

/// Writes `data` (one block) as file `f`; returns its inode and the name of its chunk.
fn write_file(fs: &FileSystem, data: &[u8]) -> (Ino, ChunkHash) {
    let (attr, fh) =
        fs.create(ROOT_INO, b"f", 0o644, Caller { uid: 0, gid: 0 }, CreateMode::Exclusive, false).unwrap();
    fs.write(fh, 0, data).unwrap();
    fs.release(fh).unwrap();
    let block = fs.meta().blocks(attr.ino, 0, 1).unwrap().pop().unwrap().1;
    let Some(BlockRef::Chunk { hash, .. }) = block.base else { panic!("expected a chunk") };
    (attr.ino, hash)
}

#[test]
fn a_corrupted_chunk_is_an_io_error_not_wrong_data() {
    let (_dir, fs, store) = uncached_engine(65536);
    let data = vec![7u8; 100_000];
    let (ino, hash) = write_file(&fs, &data);
    let fh = fs.open(ino, false).unwrap();
    assert_eq!(fs.read(fh, 0, 100_000).unwrap().into_vec(), data);

    fs.block_on(store.put(&chunk_path(&hash), PutPayload::from_static(b"garbage"))).unwrap();
    let err = fs.read(fh, 0, 10).unwrap_err();
    assert_eq!(err.errno, elasticfs_core::errno::EIO);
    assert!(err.message.contains("corrupt"), "{err}");
}

#[test]
fn random_reads_fetch_verified_segments_and_refuse_a_corrupt_one() {
    let (_dir, fs, store) = uncached_engine(1 << 20);
    let data: Vec<u8> = (0..(1u32 << 20) - 300).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    let (ino, hash) = write_file(&fs, &data);

    // Reads that jump around (the first one already does) take the ranged path; some cross
    // segment boundaries, one runs past the end of the file.
    let check = |fh: u64, at: usize, len: usize| {
        let got = fs.read(fh, at as u64, len as u32).unwrap().into_vec();
        assert_eq!(got, data[at..(at + len).min(data.len())], "read of {len} at {at}");
    };
    let fh = fs.open(ino, false).unwrap();
    for (at, len) in [(700_000, 4096), (65_000, 4096), (3, 200_000), (1_048_000, 4096), (131_072, 65_536)] {
        check(fh, at, len);
    }

    // Without its segment list a chunk is read whole, still verified.
    let segs = elasticfs_core::segments_path(&hash);
    let list = fs.block_on(async { store.get(&segs).await.unwrap().bytes().await.unwrap() });
    fs.block_on(store.delete(&segs)).unwrap();
    let fh2 = fs.open(ino, false).unwrap();
    check(fh2, 500_000, 4096);
    check(fh2, 10, 4096);

    // One flipped byte in segment 5: reads of that segment fail, others still succeed.
    fs.block_on(store.put(&segs, PutPayload::from(list))).unwrap();
    let mut corrupt = data.clone();
    corrupt[5 * 65_536 + 100] ^= 0xff;
    fs.block_on(store.put(&chunk_path(&hash), PutPayload::from(corrupt))).unwrap();
    let fresh = uncached(fs.meta().clone(), store.clone());
    let fh3 = fresh.open(ino, false).unwrap();
    let err = fresh.read(fh3, 5 * 65_536 + 10, 4096).unwrap_err();
    assert_eq!(err.errno, elasticfs_core::errno::EIO);
    assert!(err.message.contains("segment 5"), "{err}");
    assert_eq!(fresh.read(fh3, 65_536 * 2, 4096).unwrap().into_vec(), data[65_536 * 2..65_536 * 2 + 4096]);
}

#[test]
fn a_small_random_read_hands_back_the_verified_window_around_it() {
    let (_dir, fs, _store) = uncached_engine(1 << 20);
    let len = (1usize << 20) - 300;
    let data: Vec<u8> = (0..len as u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    let (ino, _) = write_file(&fs, &data);
    let fh = fs.open(ino, false).unwrap();
    let segment = 65_536usize;
    // (offset, length asked, the window expected): within a segment, across two, at the end of
    // the file (the window stops there), and past it.
    for (at, asked, window) in [
        (700_000, 4096, Some(10 * segment..11 * segment)),
        (65_530, 100, Some(0..2 * segment)),
        (len - 10, 4096, Some(15 * segment..len)),
    ] {
        let (got, around) = fs.read_with_window(fh, at as u64, asked).unwrap();
        assert_eq!(got.into_vec(), data[at..(at + asked as usize).min(len)], "read of {asked} at {at}");
        let around = around.expect("a small random read has a window");
        let expected = window.unwrap();
        assert_eq!(around.offset as usize, expected.start);
        assert!(around.data.into_vec() == data[expected], "the window holds the file's bytes");
    }
    let (past, around) = fs.read_with_window(fh, len as u64 + 10, 4096).unwrap();
    assert!(past.is_empty() && around.is_none(), "nothing past the end");
    let (_, around) = fs.read_with_window(fh, 0, 65_536).unwrap();
    assert!(around.is_none(), "a read of a whole segment needs no window");
}
