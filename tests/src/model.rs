//! A reference model of a few files for property tests of the engine (the way Mountpoint for
//! S3 checks its file system): random operation sequences run against a [`FileSystem`] and
//! against plain byte vectors, and every read must agree. Bursts of small writes each flushed
//! lay slices over blocks, which compactions (forced, and the ones commits start in the
//! background) fold back, at any point of a sequence. `tests/model.rs` runs it on sled and on
//! etcd.

use std::sync::Arc;

use elasticfs_core::metadata::{MetaStore, Superblock, ROOT_INO};
use elasticfs_core::{
    open_object_store, Caller, ChunkStore, CreateMode, FileSystem, FsConfig, SetAttrRequest,
};
use proptest::prelude::*;

const FILES: usize = 3;
/// The inline threshold of a model's file system: small, so that sequences cross it.
const INLINE: u32 = 1024;

/// The superblock a model's store is formatted with.
pub fn superblock(block: u64) -> Superblock {
    Superblock::new("model", block as u32, INLINE, "memory://")
}

#[derive(Clone, Debug)]
pub enum Op {
    Write {
        file: usize,
        offset: u64,
        len: usize,
        seed: u8,
    },
    Truncate {
        file: usize,
        size: u64,
    },
    Read {
        file: usize,
        offset: u64,
        len: u32,
    },
    Flush {
        file: usize,
    },
    Reopen {
        file: usize,
    },
    Recreate {
        file: usize,
    },
    /// `writes` small writes into one block, each flushed: a slice each.
    FlushedWrites {
        file: usize,
        block: u64,
        writes: Vec<(u64, usize, u8)>,
    },
    Compact {
        file: usize,
    },
}

/// Any operation, on files of a few blocks of `block` bytes.
pub fn op(block: u64) -> impl Strategy<Value = Op> {
    let file = 0..FILES;
    prop_oneof![
        4 => (file.clone(), 0..4 * block, 0..(2 * block as usize), any::<u8>())
            .prop_map(|(file, offset, len, seed)| Op::Write { file, offset, len, seed }),
        1 => (file.clone(), 0..5 * block).prop_map(|(file, size)| Op::Truncate { file, size }),
        3 => (file.clone(), 0..5 * block, 0..(3 * block as u32)).prop_map(|(file, offset, len)| Op::Read { file, offset, len }),
        1 => file.clone().prop_map(|file| Op::Flush { file }),
        1 => file.clone().prop_map(|file| Op::Reopen { file }),
        1 => file.clone().prop_map(|file| Op::Recreate { file }),
        2 => (file.clone(), 0..4u64, prop::collection::vec((0..block, 1..300usize, any::<u8>()), 1..40))
            .prop_map(|(file, block, writes)| Op::FlushedWrites { file, block, writes }),
        1 => file.prop_map(|file| Op::Compact { file }),
    ]
}

pub struct Harness {
    pub fs: FileSystem,
    block_size: u64,
    handles: Vec<u64>,
    model: Vec<Vec<u8>>,
}

const ROOT: Caller = Caller { uid: 0, gid: 0 };

impl Harness {
    /// A file system over `meta` (formatted with [`superblock`]`(block)`), chunks in memory.
    pub fn new(meta: Arc<dyn MetaStore>, cache_bytes: usize, write_buffer_bytes: usize) -> Self {
        let block = meta.superblock().block_size as u64;
        let chunks = ChunkStore::new(open_object_store("memory://").unwrap(), cache_bytes);
        let config = FsConfig {
            cache_bytes,
            max_uploads: 2,
            max_readahead_blocks: 2,
            write_buffer_bytes,
            ..FsConfig::default()
        };
        let fs = FileSystem::new(meta, chunks, config).unwrap();
        let mut handles = Vec::new();
        for i in 0..FILES {
            let (_, fh) = fs
                .create(ROOT_INO, format!("f{i}").as_bytes(), 0o644, ROOT, CreateMode::Exclusive, false)
                .unwrap();
            handles.push(fh);
        }
        Harness { fs, block_size: block, handles, model: vec![Vec::new(); FILES] }
    }

    fn write(&mut self, file: usize, offset: u64, len: usize, seed: u8) {
        let data: Vec<u8> = (0..len).map(|i| seed.wrapping_add(i as u8) | 1).collect();
        assert_eq!(self.fs.write(self.handles[file], offset, &data).unwrap(), len);
        let m = &mut self.model[file];
        let end = offset as usize + len;
        if len > 0 {
            if m.len() < end {
                m.resize(end, 0);
            }
            m[offset as usize..end].copy_from_slice(&data);
        }
    }

    pub fn apply(&mut self, op: &Op) {
        match *op {
            Op::Write { file, offset, len, seed } => self.write(file, offset, len, seed),
            Op::FlushedWrites { file, block, ref writes } => {
                let block_size = self.block_size;
                for &(within, len, seed) in writes {
                    let len = len.min((block_size - within) as usize);
                    self.write(file, block * block_size + within, len, seed);
                    self.fs.fsync(self.handles[file]).unwrap();
                }
            }
            Op::Compact { file } => {
                self.fs.flush(self.handles[file]).unwrap();
                self.fs.compact(self.ino(file)).unwrap();
            }
            Op::Truncate { file, size } => {
                let ino = self.ino(file);
                let req = SetAttrRequest { size: Some(size), ..Default::default() };
                assert_eq!(self.fs.setattr(ino, &req).unwrap().size, size);
                self.model[file].resize(size as usize, 0);
            }
            Op::Read { file, offset, len } => {
                let got = self.fs.read(self.handles[file], offset, len).unwrap().into_vec();
                let m = &self.model[file];
                let from = (offset as usize).min(m.len());
                let to = (offset as usize + len as usize).min(m.len());
                assert_same(&got, &m[from..to], &format!("read of f{file} at {offset}+{len}"));
            }
            Op::Flush { file } => self.fs.flush(self.handles[file]).unwrap(),
            Op::Reopen { file } => {
                self.fs.release(self.handles[file]).unwrap();
                self.handles[file] = self.fs.open(self.ino(file), false).unwrap();
                assert_eq!(self.fs.getattr(self.ino(file)).unwrap().size, self.model[file].len() as u64);
            }
            Op::Recreate { file } => {
                let name = format!("f{file}");
                self.fs.release(self.handles[file]).unwrap();
                self.fs.unlink(ROOT_INO, name.as_bytes()).unwrap();
                // Pending until its first close or fsync, as FUSE creates without O_EXCL.
                let (_, fh) = self
                    .fs
                    .create(ROOT_INO, name.as_bytes(), 0o644, ROOT, CreateMode::OpenOrCreatePending, false)
                    .unwrap();
                self.handles[file] = fh;
                self.model[file].clear();
            }
        }
    }

    pub fn ino(&self, file: usize) -> u64 {
        self.fs.lookup(ROOT_INO, format!("f{file}").as_bytes()).unwrap().ino
    }

    /// After all handles close, what the metadata holds is exactly the model, and consistent.
    pub fn check_committed(mut self) {
        for fh in std::mem::take(&mut self.handles) {
            self.fs.release(fh).unwrap();
        }
        let mut stored = 0;
        for (file, expected) in self.model.iter().enumerate() {
            let ino = self.ino(file);
            let fh = self.fs.open(ino, false).unwrap();
            let got = self.fs.read(fh, 0, expected.len() as u32 + 10).unwrap().into_vec();
            assert_same(&got, expected, &format!("f{file} read whole after closing"));
            stored += self.fs.getattr(ino).unwrap().stored;
            self.fs.release(fh).unwrap();
        }
        assert_eq!(self.fs.statfs().unwrap().bytes, stored, "usage counter matches the files' blocks");
        assert_eq!(self.fs.statfs().unwrap().inodes, FILES as u64 + 1);
        // Every counter, link count and chunk reference count agrees with a recount.
        let audit = self.fs.meta().audit().unwrap();
        assert!(audit.is_clean(), "{:#?}", audit.findings);
    }
}

/// Fails naming the first byte that differs (not printing two whole files).
fn assert_same(got: &[u8], expected: &[u8], what: &str) {
    if let Some(at) = got.iter().zip(expected).position(|(g, e)| g != e) {
        panic!("{what}: byte {at} is {} where {} was written", got[at], expected[at]);
    }
    assert_eq!(got.len(), expected.len(), "{what}: length");
}
