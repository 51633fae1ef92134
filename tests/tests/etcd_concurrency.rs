//! Several clients of one etcd cluster (each its own connection and engine, as separate hosts
//! are) change one small tree at once: creates, mkdirs, renames across directories, links,
//! unlinks and rmdirs, chosen at random so that they collide. Afterwards the audit is clean
//! (every counter, link count and entry exact), every directory is reached exactly once from
//! the root (no cycle, no lost subtree), and once orphans are purged (as last closes would)
//! the inode counter equals what is reachable (no lost update).

use std::collections::HashSet;
use std::time::Duration;

use elasticfs_metadata::kv::{EtcdKv, EtcdOptions};
use elasticfs_metadata::{
    Engine, FileKind, Ino, MetaError, MetaStore, NewNode, Rename, RenameMode, Superblock, ROOT_INO,
};
use elasticfs_tests::etcd::{etcd_available, EtcdCluster};

const CLIENTS: usize = 4;
const OPS_PER_CLIENT: usize = 150;

/// xorshift64: the same ops for the same seed, no dependency.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

/// A connection of its own to the cluster, as another host has.
fn kv(cluster: &EtcdCluster) -> EtcdKv {
    EtcdKv::connect(EtcdOptions {
        endpoints: cluster.endpoints().split(',').map(String::from).collect(),
        name: "race".into(),
        tls_ca: None,
        user: None,
        give_up_after: Some(Duration::from_secs(30)),
    })
    .unwrap()
}

/// Errors a namespace operation may meet when others change the tree under it.
fn expected(e: &MetaError) -> bool {
    matches!(
        e,
        MetaError::NotFound
            | MetaError::Exists
            | MetaError::NotEmpty
            | MetaError::IsDir
            | MetaError::NotDir
            | MetaError::NotPermitted
            | MetaError::Invalid(_)
    )
}

/// One random operation on directories `dirs` (the root and whatever mkdir made).
fn random_op(s: &dyn MetaStore, rng: &mut Rng, dirs: &mut Vec<Ino>) -> Result<(), MetaError> {
    let dir = dirs[rng.below(dirs.len())];
    let name = format!("n{}", rng.below(6)).into_bytes();
    match rng.below(6) {
        0 => s.create(&NewNode::new(dir, &name, FileKind::File, 0o644)).map(drop),
        1 => s.create(&NewNode::new(dir, &name, FileKind::Dir, 0o755)).map(|a| dirs.push(a.ino)),
        2 => {
            let to = dirs[rng.below(dirs.len())];
            let new_name = format!("n{}", rng.below(6)).into_bytes();
            let closed = s.lookup(to, &new_name).ok().map(|a| a.ino);
            s.rename(&Rename {
                parent: dir,
                name,
                new_parent: to,
                new_name,
                mode: RenameMode::Replace,
                closed,
            })
            .map(drop)
        }
        3 => {
            let target = s.lookup(dir, &name)?;
            let to = dirs[rng.below(dirs.len())];
            s.link(target.ino, to, format!("n{}", rng.below(6)).as_bytes()).map(drop)
        }
        4 => {
            let closed = s.lookup(dir, &name)?.ino;
            s.unlink(dir, &name, Some(closed)).map(drop)
        }
        _ => s.rmdir(dir, &name),
    }
}

#[test]
fn concurrent_clients_keep_the_tree_whole() {
    if !etcd_available() {
        return;
    }
    let cluster = EtcdCluster::start();
    let sb = Superblock::new("race", 65536, 1024, "memory://");
    let tool = Engine::format_kv(kv(&cluster), &sb, 0, 0).unwrap();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let store = Engine::open_kv(kv(&cluster)).unwrap();
            std::thread::spawn(move || {
                let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (c as u64 + 1));
                let mut dirs = vec![ROOT_INO];
                let mut done = 0;
                for _ in 0..OPS_PER_CLIENT {
                    match random_op(&store, &mut rng, &mut dirs) {
                        Ok(()) => done += 1,
                        Err(e) if expected(&e) => {}
                        Err(e) => panic!("client {c}: unexpected error {e:?}"),
                    }
                }
                done
            })
        })
        .collect();
    let succeeded: usize = clients.into_iter().map(|c| c.join().unwrap()).sum();
    assert!(succeeded > CLIENTS * OPS_PER_CLIENT / 5, "the clients mostly failed: {succeeded}");

    let audit = tool.audit().unwrap();
    assert!(audit.is_clean(), "{:#?}", audit.findings);
    // Every directory is reached once from the root, and every inode is reachable.
    let (mut seen_dirs, mut inodes) = (HashSet::new(), HashSet::from([ROOT_INO]));
    let mut stack = vec![ROOT_INO];
    while let Some(dir) = stack.pop() {
        assert!(seen_dirs.insert(dir), "directory {dir} reached twice: a cycle");
        for entry in tool.readdir(dir, 0, usize::MAX).unwrap() {
            inodes.insert(entry.ino);
            if entry.kind == FileKind::Dir {
                assert_eq!(tool.getattr(entry.ino).unwrap().parent, dir);
                stack.push(entry.ino);
            }
        }
    }
    // A name replaced between a client's lookup and its unlink leaves the inode it did not
    // name as an orphan, as an open file's would be: purged as its last close would.
    for orphan in tool.orphans().unwrap() {
        assert_eq!(tool.getattr(orphan).unwrap().nlink, 0);
        tool.purge(orphan).unwrap();
    }
    assert_eq!(tool.usage().unwrap().inodes, inodes.len() as u64);
    eprintln!(
        "{succeeded} of {} operations succeeded; {} inodes remain",
        CLIENTS * OPS_PER_CLIENT,
        inodes.len()
    );
}

/// A client answers from what it remembers of keys only where its commit checks it: here
/// another client changes each thing the first one just wrote or read, and every operation of
/// the first still sees the change.
#[test]
fn what_a_client_remembers_never_decides_an_operation() {
    if !etcd_available() {
        return;
    }
    let cluster = EtcdCluster::start();
    let sb = Superblock::new("race", 65536, 1024, "memory://");
    let a = Engine::format_kv(kv(&cluster), &sb, 0, 0).unwrap();
    let b = Engine::open_kv(kv(&cluster)).unwrap();
    let file = |name: &[u8]| NewNode::new(ROOT_INO, name, FileKind::File, 0o644);

    // An attribute set by another client on a file this one created (and so knows to have
    // none) is removed with the file.
    let f = a.create(&file(b"f")).unwrap().ino;
    b.set_xattr(f, b"user.x", b"1", elasticfs_metadata::XattrMode::Upsert).unwrap();
    assert!(a.unlink(ROOT_INO, b"f", Some(f)).unwrap().purged);
    assert!(b.get_xattr(f, b"user.x").is_err());

    // A name this client created, removed by another, may be created again.
    a.create(&file(b"g")).unwrap();
    b.unlink(ROOT_INO, b"g", None).unwrap();
    let g = a.create(&file(b"g")).unwrap().ino;
    assert_eq!(b.lookup(ROOT_INO, b"g").unwrap().ino, g);

    // A name moved away by another client is not there to unlink.
    let h = a.create(&file(b"h")).unwrap().ino;
    b.rename(&Rename {
        parent: ROOT_INO,
        name: b"h".to_vec(),
        new_parent: ROOT_INO,
        new_name: b"h2".to_vec(),
        mode: RenameMode::Replace,
        closed: None,
    })
    .unwrap();
    assert!(matches!(a.unlink(ROOT_INO, b"h", Some(h)), Err(MetaError::NotFound)));

    // A name another client pointed at a new inode is looked up as it is now.
    a.create(&file(b"k")).unwrap();
    b.unlink(ROOT_INO, b"k", None).unwrap();
    let k = b.create(&file(b"k")).unwrap().ino;
    assert_eq!(a.lookup(ROOT_INO, b"k").unwrap().ino, k);

    for orphan in a.orphans().unwrap() {
        a.purge(orphan).unwrap();
    }
    let audit = a.audit().unwrap();
    assert!(audit.is_clean(), "{:#?}", audit.findings);
}
