//! Writes a metadata dump (what `elasticfs meta load` reads) of a file system whose directory
//! `big` holds N empty files named `f0000000`…, made in memory in seconds: the benchmark of a
//! 1,000,000-entry listing on etcd (`benches/large_dir_etcd.sh`) loads it instead of creating
//! each file through a mount, which would take most of an hour here.
//!
//!     cargo run --release -p elasticfs-benches --example large_dir_dump -- N STORAGE_URL > DUMP

use std::io::{BufWriter, Write};

use elasticfs_core::metadata::{FileKind, MemStore, MetaStore, NewNode, Superblock, ROOT_INO};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(count), Some(storage)) = (args.get(1).and_then(|n| n.parse::<u64>().ok()), args.get(2)) else {
        eprintln!("usage: large_dir_dump N STORAGE_URL > DUMP");
        std::process::exit(2);
    };
    let store = MemStore::in_memory(&Superblock::new("big", 4 << 20, 64 << 10, storage)).unwrap();
    let big = store.create(&NewNode::new(ROOT_INO, b"big", FileKind::Dir, 0o755)).unwrap().ino;
    for n in 0..count {
        store.create(&NewNode::new(big, format!("f{n:07}").as_bytes(), FileKind::File, 0o644)).unwrap();
    }
    let mut out = BufWriter::new(std::io::stdout().lock());
    let records = store.dump(&mut out, &|_| {}).unwrap();
    out.flush().unwrap();
    eprintln!("{count} files in /big: {records} records");
}
