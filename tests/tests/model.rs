//! The engine against its reference model (`elasticfs_tests::model`): on sled with small blocks
//! (every sequence crosses chunk, inline and slice paths), on sled with blocks of several
//! 64 KiB segments and no cache (ranged reads), and on a 3-member etcd cluster.

use std::sync::Arc;

use elasticfs_core::metadata::kv::EtcdKv;
use elasticfs_core::metadata::{Engine, MetaStore, SledStore};
use elasticfs_tests::etcd::{etcd_available, EtcdCluster};
use elasticfs_tests::model::{op, superblock, Harness, Op};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

const BLOCK: u64 = 4096;
/// Four verifiable segments per block.
const SEGMENTED_BLOCK: u64 = 256 << 10;

/// A harness over a fresh sled store in `dir`.
fn on_sled(dir: &tempfile::TempDir, block: u64, cache_bytes: usize, write_buffer_bytes: usize) -> Harness {
    let meta: Arc<dyn MetaStore> =
        Arc::new(SledStore::format(&dir.path().join("meta"), &superblock(block), 0, 0).unwrap());
    Harness::new(meta, cache_bytes, write_buffer_bytes)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn engine_matches_the_model(ops in prop::collection::vec(op(BLOCK), 1..40), buffer_blocks in 1..8usize) {
        // A write buffer of a few blocks: writes keep making room by flushing.
        let dir = tempfile::tempdir().unwrap();
        let mut h = on_sled(&dir, BLOCK, 1 << 20, buffer_blocks * BLOCK as usize);
        for op in &ops {
            h.apply(op);
        }
        h.check_committed();
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn ranged_reads_match_the_model(ops in prop::collection::vec(op(SEGMENTED_BLOCK), 1..24)) {
        let dir = tempfile::tempdir().unwrap();
        let mut h = on_sled(&dir, SEGMENTED_BLOCK, 0, 1 << 20);
        for op in &ops {
            h.apply(op);
        }
        h.check_committed();
    }
}

#[test]
fn engine_on_etcd_matches_the_model() {
    if !etcd_available() {
        return;
    }
    let cluster = EtcdCluster::start();
    let mut runner = TestRunner::new(Config { cases: 24, ..Config::default() });
    let case = std::sync::atomic::AtomicU64::new(0);
    let strategy = (prop::collection::vec(op(BLOCK), 1..30), 1..8usize);
    let result = runner.run(&strategy, |(ops, buffer_blocks)| {
        // Each case (and each shrinking step) on a file system of its own in the cluster.
        let case = case.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let options = cluster.options(&format!("model{case}"));
        let meta: Arc<dyn MetaStore> =
            Arc::new(Engine::format_kv(EtcdKv::connect(options).unwrap(), &superblock(BLOCK), 0, 0).unwrap());
        let mut h = Harness::new(meta, 1 << 20, buffer_blocks * BLOCK as usize);
        for op in &ops {
            h.apply(op);
        }
        h.check_committed();
        Ok(())
    });
    if let Err(failure) = result {
        panic!("{failure}");
    }
}

#[test]
fn holes_read_as_zeros_and_cost_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = on_sled(&dir, BLOCK, 1 << 20, 1 << 20);
    h.apply(&Op::Write { file: 0, offset: 10 * BLOCK, len: 10, seed: 1 });
    h.apply(&Op::Read { file: 0, offset: 0, len: (11 * BLOCK) as u32 });
    h.apply(&Op::Flush { file: 0 });
    assert_eq!(h.fs.getattr(h.ino(0)).unwrap().stored, 10);
}
