//! Garbage collection against a real engine: deleted data leaves the bucket, live data stays,
//! leaked objects go once they are old enough, and a writer that deduplicates against a chunk
//! being collected never ends up referencing a deleted object.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use elasticfs_core::gc::{collect, GcOptions, GcReport};
use elasticfs_core::metadata::{
    BlockChange, BlockCommit, BlockRef, ChunkProtection, MetaError, MetaStore, SledStore, Superblock,
    ROOT_INO,
};
use elasticfs_core::{
    chunk_path, hash_of, open_object_store, ownership, Caller, ChunkStore, CreateMode, FileSystem, FsConfig,
    Ownership,
};
use futures::TryStreamExt;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

const BLOCK: usize = 65536;
const ROOT: Caller = Caller { uid: 0, gid: 0 };

struct Setup {
    _dir: tempfile::TempDir,
    fs: FileSystem,
    meta: Arc<dyn MetaStore>,
    store: Arc<dyn ObjectStore>,
    runtime: tokio::runtime::Runtime,
}

/// An engine over fresh metadata and an in-memory bucket, with no cache, so that every read
/// goes to the bucket.
fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let sb = Superblock::new("gc", BLOCK as u32, 1024, "memory://");
    let meta: Arc<dyn MetaStore> = Arc::new(SledStore::format(&dir.path().join("meta"), &sb, 0, 0).unwrap());
    let store = open_object_store("memory://").unwrap();
    let config = FsConfig { cache_bytes: 0, ..Default::default() };
    let fs = FileSystem::new(meta.clone(), ChunkStore::new(store.clone(), 0), config).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(ownership::enforce(&store, "memory://", Ownership::Claim(&sb))).unwrap();
    Setup { _dir: dir, fs, meta, store, runtime }
}

impl Setup {
    fn gc(&self, grace: Duration) -> GcReport {
        let options = GcOptions { grace, dry_run: false };
        collect(&self.meta, &self.store, &self.runtime, options, &|_, _| {}).unwrap()
    }

    /// Objects under `chunks/` (the ownership record aside).
    fn objects(&self) -> usize {
        let listing = self.store.list(Some(&object_store::path::Path::from("chunks")));
        self.runtime.block_on(listing.try_collect::<Vec<_>>()).unwrap().len()
    }

    fn write(&self, name: &str, data: &[u8]) {
        let (_, fh) =
            self.fs.create(ROOT_INO, name.as_bytes(), 0o644, ROOT, CreateMode::OpenOrCreate, false).unwrap();
        self.fs.write(fh, 0, data).unwrap();
        self.fs.release(fh).unwrap();
    }

    fn read(&self, name: &str) -> Vec<u8> {
        let attr = self.fs.lookup(ROOT_INO, name.as_bytes()).unwrap();
        let fh = self.fs.open(attr.ino, false).unwrap();
        let data = self.fs.read(fh, 0, attr.size as u32).unwrap().into_vec();
        self.fs.release(fh).unwrap();
        data
    }
}

/// Distinct, incompressible-looking bytes for round `seed`.
fn data(seed: u64, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

#[test]
fn deleted_data_leaves_the_bucket_and_live_data_stays() {
    let s = setup();
    let (kept, dropped) = (data(1, 3 * BLOCK), data(2, 3 * BLOCK));
    s.write("kept", &kept);
    s.write("dropped", &dropped);
    assert_eq!(s.objects(), 6);
    s.fs.unlink(ROOT_INO, b"dropped").unwrap();
    // Within the grace period nothing goes.
    let report = s.gc(Duration::from_secs(3600));
    assert_eq!((report.deleted, report.kept), (0, 3), "{report:?}");
    let report = s.gc(Duration::ZERO);
    assert_eq!((report.unreferenced, report.deleted), (3, 3), "{report:?}");
    assert_eq!(report.freed_bytes, 3 * BLOCK as u64);
    assert_eq!(s.objects(), 3);
    assert_eq!(s.read("kept"), kept);
    // Nothing left to do.
    assert_eq!(s.gc(Duration::ZERO).deleted, 0);
}

#[test]
fn leaked_objects_go_once_they_are_older_than_the_grace_period() {
    let s = setup();
    let orphan = data(3, 1000);
    let hash = hash_of(&orphan);
    s.runtime.block_on(s.store.put(&chunk_path(&hash), PutPayload::from(orphan))).unwrap();
    let report = s.gc(Duration::from_secs(3600));
    assert_eq!((report.leaked, report.kept, report.deleted), (0, 1, 0), "{report:?}");
    let dry = collect(
        &s.meta,
        &s.store,
        &s.runtime,
        GcOptions { grace: Duration::ZERO, dry_run: true },
        &|_, _| {},
    )
    .unwrap();
    assert_eq!((dry.leaked, dry.deleted, dry.freed_bytes), (1, 1, 1000), "{dry:?}");
    assert_eq!(s.objects(), 1, "a dry run deletes nothing");
    let report = s.gc(Duration::ZERO);
    assert_eq!((report.leaked, report.deleted), (1, 1), "{report:?}");
    assert_eq!(s.objects(), 0);
}

#[test]
fn protection_and_condemnation_exclude_each_other() {
    let s = setup();
    let hash = [9u8; 32];
    let far_future = elasticfs_core::metadata::Timestamp { secs: i64::MAX / 2, nanos: 0 };
    // An upload under way is never condemned.
    assert_eq!(s.meta.protect_chunk(&hash).unwrap(), ChunkProtection::New);
    assert_eq!(s.meta.protect_chunk(&hash).unwrap(), ChunkProtection::HeldBySession);
    assert!(s.meta.condemn_chunks(&[hash], far_future).unwrap().is_empty());
    // A commit releases what it was protected with: then the chunk may be condemned, and
    // while it is, nobody may protect it.
    let (attr, fh) = s.fs.create(ROOT_INO, b"x", 0o644, ROOT, CreateMode::Exclusive, false).unwrap();
    s.fs.release(fh).unwrap();
    let commit = |release: Vec<[u8; 32]>| BlockCommit {
        blocks: vec![(0, BlockChange::Whole(BlockRef::Chunk { hash, len: BLOCK as u32 }))],
        min_size: BLOCK as u64,
        release,
        ..Default::default()
    };
    s.meta.commit_blocks(attr.ino, &commit(vec![hash, hash])).unwrap();
    s.fs.unlink(ROOT_INO, b"x").unwrap();
    assert_eq!(s.meta.condemn_chunks(&[hash], far_future).unwrap(), vec![hash]);
    assert_eq!(s.meta.protect_chunk(&hash).unwrap(), ChunkProtection::Condemned);
    // A commit naming it without protection is refused rather than left dangling.
    let (attr, fh) = s.fs.create(ROOT_INO, b"y", 0o644, ROOT, CreateMode::Exclusive, false).unwrap();
    s.fs.release(fh).unwrap();
    assert_eq!(s.meta.commit_blocks(attr.ino, &commit(vec![])), Err(MetaError::ChunkUnprotected(hash)));
    s.meta.forget_condemned(&[hash]).unwrap();
    assert_eq!(s.meta.protect_chunk(&hash).unwrap(), ChunkProtection::New);
}

#[test]
fn a_writer_deduplicating_against_a_chunk_being_collected_never_loses_it() {
    let s = Arc::new(setup());
    for round in 0..60u64 {
        let content = data(100 + round, 3 * BLOCK);
        s.write("a", &content);
        s.fs.unlink(ROOT_INO, b"a").unwrap();
        // A collector with no grace runs flat out while the same bytes are written again:
        // the writer finds the chunks unreferenced, condemned or gone, in any interleaving.
        let stop = Arc::new(AtomicBool::new(false));
        let collector = {
            let (s, stop) = (s.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut runs = 0;
                while runs == 0 || !stop.load(Ordering::Relaxed) {
                    s.gc(Duration::ZERO);
                    runs += 1;
                }
            })
        };
        let name = format!("b{round}");
        s.write(&name, &content);
        stop.store(true, Ordering::Relaxed);
        collector.join().unwrap();
        // Read back from the bucket (every byte verified against its name).
        assert_eq!(s.read(&name), content, "round {round}");
    }
    s.gc(Duration::ZERO);
    for round in 0..60u64 {
        assert_eq!(s.read(&format!("b{round}")), data(100 + round, 3 * BLOCK), "after a last collection");
    }
}

#[test]
fn a_collection_deletes_nothing_in_a_bucket_another_file_system_owns() {
    let s = setup();
    s.write("a", &vec![3u8; 3 * BLOCK]);
    let before = s.objects();
    // A second file system's metadata pointed at the same bucket: every chunk there is unknown
    // to it, so without the ownership record it would take them all for leaked objects.
    let dir = tempfile::tempdir().unwrap();
    let other = Superblock::new("other", BLOCK as u32, 1024, "memory://");
    let meta: Arc<dyn MetaStore> =
        Arc::new(SledStore::format(&dir.path().join("meta"), &other, 0, 0).unwrap());
    let options = GcOptions { grace: Duration::ZERO, dry_run: false };
    let e = collect(&meta, &s.store, &s.runtime, options, &|_, _| {}).unwrap_err();
    assert!(
        e.message.contains("belongs to another file system") && e.message.contains(&s.meta.superblock().uuid),
        "{e}"
    );
    assert_eq!(s.objects(), before);
    assert_eq!(s.read("a"), vec![3u8; 3 * BLOCK]);
}
