//! Micro-benchmarks: block hashing (the cost every write and verified read pays), metadata
//! operations on the embedded engine (each one durable), and the engine's write+commit path on
//! an in-memory object store.
//!
//! Run: `cargo bench -p elasticfs-benches`

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use elasticfs_core::metadata::{FileKind, MetaStore, NewNode, SledStore, Superblock, ROOT_INO};
use elasticfs_core::{hash_of, open_object_store, Caller, ChunkStore, CreateMode, FileSystem, FsConfig};

fn hashing(c: &mut Criterion) {
    let mut group = c.benchmark_group("blake3");
    for size in [64 << 10, 1 << 20, 4 << 20] {
        let data = vec![0x5au8; size];
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::from_parameter(size), &data, |b, d| b.iter(|| hash_of(d)));
    }
    group.finish();
}

/// Lookups and getattrs run in a directory of this many files, whatever the create benchmark
/// managed in its time: a faster create would otherwise leave a bigger store to read, and two
/// engines compared would not be reading the same thing.
const SEEDED_FILES: u64 = 20_000;

fn metadata_ops(c: &mut Criterion) {
    let sb = Superblock::new("bench", 4 << 20, 64 << 10, "memory://");
    let new_file = |n: u64| NewNode::new(ROOT_INO, format!("f{n}").as_bytes(), FileKind::File, 0o644);
    let mut group = c.benchmark_group("metadata");
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::format(&dir.path().join("meta"), &sb, 0, 0).unwrap();
    let mut n = 0u64;
    group.bench_function("create (durable)", |b| {
        b.iter(|| {
            n += 1;
            store.create(&new_file(n)).unwrap()
        })
    });
    drop(store);
    let seeded_dir = tempfile::tempdir().unwrap();
    let seeded = SledStore::format(&seeded_dir.path().join("meta"), &sb, 0, 0).unwrap();
    for n in 1..=SEEDED_FILES {
        seeded.create(&new_file(n)).unwrap();
    }
    group.bench_function("lookup", |b| b.iter(|| seeded.lookup(ROOT_INO, b"f1").unwrap()));
    group.bench_function("getattr", |b| b.iter(|| seeded.getattr(ROOT_INO).unwrap()));
    group.finish();
}

fn engine_writes(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let sb = Superblock::new("bench", 4 << 20, 64 << 10, "memory://");
    let meta: Arc<dyn MetaStore> = Arc::new(SledStore::format(&dir.path().join("meta"), &sb, 0, 0).unwrap());
    let chunks = ChunkStore::new(open_object_store("memory://").unwrap(), 64 << 20);
    let fs = FileSystem::new(meta, chunks, FsConfig::default()).unwrap();
    let caller = Caller { uid: 0, gid: 0 };
    let mut group = c.benchmark_group("engine");
    let mut n = 0u64;
    group.bench_function("4 KiB file: create, write, close", |b| {
        let data = vec![1u8; 4096];
        b.iter(|| {
            n += 1;
            let (_, fh) = fs
                .create(ROOT_INO, format!("s{n}").as_bytes(), 0o644, caller, CreateMode::Exclusive, false)
                .unwrap();
            fs.write(fh, 0, &data).unwrap();
            fs.release(fh).unwrap();
        })
    });
    let size = 16 << 20;
    group.throughput(Throughput::Bytes(size as u64));
    group.sample_size(10);
    // Distinct pieces; each file stamps its number into every piece, so that no block repeats
    // and deduplication cannot skip an upload.
    let mut pieces: Vec<Vec<u8>> = (0..16u8).map(|i| vec![i; 1 << 20]).collect();
    group.bench_function("16 MiB file in 1 MiB writes, then close", |b| {
        b.iter(|| {
            n += 1;
            let (_, fh) = fs
                .create(ROOT_INO, format!("l{n}").as_bytes(), 0o644, caller, CreateMode::Exclusive, false)
                .unwrap();
            for (i, piece) in pieces.iter_mut().enumerate() {
                piece[..8].copy_from_slice(&n.to_le_bytes());
                fs.write(fh, (i as u64) << 20, piece).unwrap();
            }
            fs.release(fh).unwrap();
        })
    });
    group.finish();
}

criterion_group!(benches, hashing, metadata_ops, engine_writes);
criterion_main!(benches);
