//! One conformance suite for every metadata driver: in memory, sled, a real 3-member etcd
//! cluster, and the sled service over `tcp://`. Each case runs on a fresh file system and
//! ends with a clean audit; the etcd cases also run past etcd's 128-operation limit (files of
//! more blocks than one transaction may hold go in steps).

use std::sync::Arc;
use std::time::Duration;

use elasticfs_metadata::kv::EtcdKv;
use elasticfs_metadata::remote::{ClientOptions, RemoteStore, Retry};
use elasticfs_metadata::{
    Block, BlockChange, BlockCommit, BlockRef, ClientInfo, Compaction, Engine, FileKind, LockKind,
    LockRequest, MemStore, MetaError, MetaResult, MetaStore, NewNode, Rename, RenameMode, SledStore, Slice,
    Superblock, Unlinked, XattrMode, ROOT_INO,
};
use elasticfs_tests::etcd::{etcd_available, EtcdCluster};
use elasticfs_tests::MetaService;

/// Opens a client session of the file system under test, for a mount at the given path.
type OpenClient = Box<dyn Fn(&str) -> Arc<dyn MetaStore>>;

/// A file system under test: a tool's view of it, and a way to open more client sessions.
struct Subject {
    store: Arc<dyn MetaStore>,
    client: OpenClient,
    /// The same file system opened anew (what a restart or another host sees).
    reopen: Box<dyn Fn() -> Arc<dyn MetaStore>>,
    _keep: Box<dyn std::any::Any>,
}

type Case = fn(&Subject);

const CASES: [(&str, Case); 13] = [
    ("rename cycles and link counts", rename_refuses_cycles_and_keeps_link_counts),
    ("rename modes", rename_replace_noreplace_and_exchange),
    ("unlink of a closed file", unlink_removes_a_closed_file_in_the_same_transaction),
    ("readdir cookies", readdir_resumes_from_any_cookie_exactly_once),
    ("names", names_are_checked),
    ("sessions, locks, orphans", ending_a_session_releases_its_locks_and_reclaims_its_orphans),
    ("a session taken over", a_session_taken_over_hands_its_locks_to_the_new_one),
    ("large files", large_files_commit_truncate_and_go_in_steps),
    ("extended attributes", extended_attributes_live_and_die_with_their_inode),
    ("durability", everything_acknowledged_is_there_when_reopened),
    ("directory times", a_directory_s_times_follow_its_entries_and_setattr),
    ("attributes in a batch", attributes_come_in_a_batch_and_a_gone_inode_is_none),
    ("slices and compaction", slices_lie_over_blocks_until_a_compaction_replaces_them),
];

fn superblock() -> Superblock {
    Superblock::new("t", 65536, 1024, "memory://")
}

fn run_all(mut subject: impl FnMut(usize) -> Subject) {
    for (n, (name, case)) in CASES.iter().enumerate() {
        let s = subject(n);
        case(&s);
        let audit = s.store.audit().unwrap();
        assert!(audit.is_clean(), "{name}: {:#?}", audit.findings);
    }
}

#[test]
fn conformance_in_memory() {
    run_all(|_| {
        let store = MemStore::in_memory(&superblock()).unwrap();
        let (a, b) = (store.clone(), store.clone());
        Subject {
            store: Arc::new(store),
            client: Box::new(move |m| Arc::new(a.start_session(ClientInfo::this_process(m), None).unwrap())),
            reopen: Box::new(move || Arc::new(b.clone())),
            _keep: Box::new(()),
        }
    });
}

#[test]
fn conformance_on_sled() {
    run_all(|_| {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::format(&dir.path().join("meta"), &superblock(), 0, 0).unwrap();
        let (a, b) = (store.clone(), store.clone());
        Subject {
            store: Arc::new(store),
            client: Box::new(move |m| Arc::new(a.start_session(ClientInfo::this_process(m), None).unwrap())),
            // sled is one process's: the same open store, after a flush, is what a restart sees.
            reopen: Box::new(move || Arc::new(b.clone())),
            _keep: Box::new(dir),
        }
    });
}

#[test]
fn conformance_on_etcd() {
    if !etcd_available() {
        return;
    }
    let cluster = Arc::new(EtcdCluster::start());
    run_all(|n| {
        let name = format!("conformance{n}");
        let connect = {
            let options = cluster.options(&name);
            move || EtcdKv::connect(options.clone()).unwrap()
        };
        let store = Engine::format_kv(connect(), &superblock(), 0, 0).unwrap();
        let a = store.clone();
        Subject {
            store: Arc::new(store),
            client: Box::new(move |m| {
                Arc::new(a.start_session(ClientInfo::this_process(m), Some(Duration::from_secs(30))).unwrap())
            }),
            reopen: Box::new(move || Arc::new(Engine::open_kv(connect()).unwrap())),
            _keep: Box::new(cluster.clone()),
        }
    });
}

fn service_options(client: Option<&str>) -> ClientOptions {
    ClientOptions {
        token: Some(b"a-test-token".to_vec()),
        tls: None,
        client: client.map(ClientInfo::this_process),
        retry: Retry::Soft(Duration::from_secs(10)),
    }
}

#[test]
fn conformance_through_the_service() {
    run_all(|_| {
        let service = Arc::new(MetaService::start("30s"));
        let addr = format!("127.0.0.1:{}", service.port);
        RemoteStore::format(&addr, service_options(None), &superblock(), 0, 0).unwrap();
        let connect = {
            let addr = addr.clone();
            move |client: Option<&str>| -> Arc<dyn MetaStore> {
                Arc::new(RemoteStore::connect(&addr, service_options(client)).unwrap())
            }
        };
        let (a, b) = (connect.clone(), connect.clone());
        Subject {
            store: connect(None),
            client: Box::new(move |m| a(Some(m))),
            reopen: Box::new(move || b(None)),
            _keep: Box::new(service),
        }
    });
}

fn mkdir(s: &dyn MetaStore, parent: u64, name: &str) -> u64 {
    s.create(&NewNode::new(parent, name.as_bytes(), FileKind::Dir, 0o755)).unwrap().ino
}

fn mkfile(s: &dyn MetaStore, parent: u64, name: &str) -> u64 {
    s.create(&NewNode::new(parent, name.as_bytes(), FileKind::File, 0o644)).unwrap().ino
}

fn rename(
    s: &dyn MetaStore,
    parent: u64,
    name: &[u8],
    new_parent: u64,
    new_name: &[u8],
    mode: RenameMode,
) -> MetaResult<Option<Unlinked>> {
    let (name, new_name) = (name.to_vec(), new_name.to_vec());
    s.rename(&Rename { parent, name, new_parent, new_name, mode, closed: None })
}

fn rename_refuses_cycles_and_keeps_link_counts(subject: &Subject) {
    let s = subject.store.as_ref();
    let a = mkdir(s, ROOT_INO, "a");
    let b = mkdir(s, a, "b");
    let c = mkdir(s, b, "c");
    assert_eq!(
        rename(s, ROOT_INO, b"a", c, b"a", RenameMode::Replace),
        Err(MetaError::Invalid("cannot move a directory into itself".into()))
    );
    assert!(matches!(rename(s, a, b"b", b, b"x", RenameMode::Replace), Err(MetaError::Invalid(_))));
    rename(s, b, b"c", ROOT_INO, b"c", RenameMode::Replace).unwrap();
    assert_eq!(s.getattr(ROOT_INO).unwrap().nlink, 4); // ., a, c and its own ..
    assert_eq!(s.getattr(b).unwrap().nlink, 2);
    assert_eq!(s.lookup(c, b"..").unwrap().ino, ROOT_INO);
}

fn rename_replace_noreplace_and_exchange(subject: &Subject) {
    let s = subject.store.as_ref();
    let f = mkfile(s, ROOT_INO, "f");
    let g = mkfile(s, ROOT_INO, "g");
    let d = mkdir(s, ROOT_INO, "d");
    assert_eq!(rename(s, ROOT_INO, b"f", ROOT_INO, b"g", RenameMode::NoReplace), Err(MetaError::Exists));
    assert_eq!(rename(s, ROOT_INO, b"f", ROOT_INO, b"d", RenameMode::Replace), Err(MetaError::IsDir));
    assert_eq!(rename(s, ROOT_INO, b"d", ROOT_INO, b"f", RenameMode::Replace), Err(MetaError::NotDir));
    rename(s, ROOT_INO, b"f", ROOT_INO, b"d", RenameMode::Exchange).unwrap();
    assert_eq!(s.lookup(ROOT_INO, b"d").unwrap().ino, f);
    assert_eq!(s.lookup(ROOT_INO, b"f").unwrap().ino, d);
    let replaced = rename(s, ROOT_INO, b"d", ROOT_INO, b"g", RenameMode::Replace).unwrap().unwrap();
    assert_eq!(replaced.attr.ino, g);
    assert!(replaced.orphaned);
    assert_eq!(s.orphans().unwrap(), vec![g]);
    s.purge(g).unwrap();
    assert_eq!(s.getattr(g), Err(MetaError::NotFound));
    assert_eq!(s.usage().unwrap().inodes, 3); // root, f (now "g"), d (now "f")
}

fn unlink_removes_a_closed_file_in_the_same_transaction(subject: &Subject) {
    let s = subject.store.as_ref();
    let kept = mkfile(s, ROOT_INO, "kept");
    let gone = mkfile(s, ROOT_INO, "gone");
    let linked = mkfile(s, ROOT_INO, "linked");
    s.link(linked, ROOT_INO, b"second").unwrap();
    s.set_xattr(gone, b"user.a", b"1", XattrMode::Upsert).unwrap();

    let open_here = s.unlink(ROOT_INO, b"kept", None).unwrap();
    assert!(open_here.orphaned && !open_here.purged);
    let closed = s.unlink(ROOT_INO, b"gone", Some(gone)).unwrap();
    assert!(closed.purged && !closed.orphaned);
    assert_eq!(s.getattr(gone), Err(MetaError::NotFound));
    assert_eq!(s.list_xattr(gone), Err(MetaError::NotFound));
    // A name that is not the last one removes nothing, whatever the caller says.
    let one_of_two = s.unlink(ROOT_INO, b"linked", Some(linked)).unwrap();
    assert!(!one_of_two.purged && !one_of_two.orphaned);
    assert_eq!(s.getattr(linked).unwrap().nlink, 1);
    // A caller that named another inode than the name's (a race) gets the orphan path.
    let raced = s.unlink(ROOT_INO, b"second", Some(kept)).unwrap();
    assert!(raced.orphaned && !raced.purged);
    let mut orphans = s.orphans().unwrap();
    orphans.sort();
    assert_eq!(orphans, vec![kept, linked]);
    assert_eq!(s.usage().unwrap().inodes, 3); // root and the two orphans
    s.purge(kept).unwrap();
    s.purge(linked).unwrap();
}

fn readdir_resumes_from_any_cookie_exactly_once(subject: &Subject) {
    let s = subject.store.as_ref();
    for i in 0..300 {
        mkfile(s, ROOT_INO, &format!("e{i}"));
    }
    let mut seen = Vec::new();
    let mut after = 0;
    loop {
        let page = s.readdir(ROOT_INO, after, 37).unwrap();
        if page.is_empty() {
            break;
        }
        after = page.last().unwrap().cookie;
        // Deleting entries already listed does not disturb the listing.
        for e in &page {
            if e.name.ends_with(b"7") {
                s.unlink(ROOT_INO, &e.name, Some(e.ino)).unwrap();
            }
        }
        seen.extend(page.into_iter().map(|e| e.name));
    }
    assert_eq!(seen.len(), 300);
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 300);
}

fn names_are_checked(subject: &Subject) {
    let s = subject.store.as_ref();
    let long = "x".repeat(256);
    assert_eq!(
        s.create(&NewNode::new(ROOT_INO, long.as_bytes(), FileKind::File, 0o644)),
        Err(MetaError::NameTooLong)
    );
    assert!(matches!(
        s.create(&NewNode::new(ROOT_INO, b"a/b", FileKind::File, 0o644)),
        Err(MetaError::Invalid(_))
    ));
    mkfile(s, ROOT_INO, &"x".repeat(255));
    assert_eq!(s.rmdir(ROOT_INO, b"nope"), Err(MetaError::NotFound));
    assert_eq!(s.lookup(ROOT_INO, long.as_bytes()), Err(MetaError::NameTooLong));
}

fn ending_a_session_releases_its_locks_and_reclaims_its_orphans(subject: &Subject) {
    let (a, b) = ((subject.client)("/a"), (subject.client)("/b"));
    let sessions = subject.store.sessions().unwrap();
    assert_eq!(sessions.len(), 2);
    let a_id = sessions.iter().find(|r| r.client.mountpoint == "/a").unwrap().id;
    let file = mkfile(a.as_ref(), ROOT_INO, "f");
    let write = |owner| LockRequest { owner, pid: 1, kind: LockKind::Write, start: 0, end: u64::MAX };
    a.set_lock(file, &write(7)).unwrap();
    assert_eq!(b.set_lock(file, &write(7)), Err(MetaError::WouldBlock));
    assert_eq!(b.get_lock(file, &write(7)).unwrap().unwrap().session, a_id);
    // A unlinks the file while it holds it open: an orphan of session A.
    let kept = mkfile(a.as_ref(), ROOT_INO, "kept");
    assert!(a.unlink(ROOT_INO, b"kept", None).unwrap().orphaned);
    // B's own orphan is not A's to reclaim.
    let theirs = mkfile(b.as_ref(), ROOT_INO, "theirs");
    assert!(b.unlink(ROOT_INO, b"theirs", None).unwrap().orphaned);

    a.end_own_session().unwrap();
    b.set_lock(file, &write(7)).unwrap();
    assert_eq!(subject.store.getattr(kept), Err(MetaError::NotFound));
    assert_eq!(subject.store.orphans().unwrap(), vec![theirs]);
    assert_eq!(subject.store.sessions().unwrap().len(), 1);
    // Releasing by owner frees the file for everyone.
    b.release_locks(file, 7).unwrap();
    b.end_own_session().unwrap();
    assert!(subject.store.orphans().unwrap().is_empty());
}

/// A restarted gateway takes over its dead process's session: the locks move to the new
/// session (still excluding others), and the old session is gone.
fn a_session_taken_over_hands_its_locks_to_the_new_one(subject: &Subject) {
    let (old, other) = ((subject.client)("/gw-old"), (subject.client)("/other"));
    let file = mkfile(old.as_ref(), ROOT_INO, "f");
    let write = |owner, start, end| LockRequest { owner, pid: 0, kind: LockKind::Write, start, end };
    old.set_lock(file, &write(7, 0, 9)).unwrap();
    old.set_lock(file, &write(8, 20, 29)).unwrap();
    let old_id =
        subject.store.sessions().unwrap().iter().find(|r| r.client.mountpoint == "/gw-old").unwrap().id;
    let new = (subject.client)("/gw-new");
    let mut taken = new.adopt_session(old_id).unwrap();
    taken.sort_unstable();
    assert_eq!(taken, vec![(file, 7), (file, 8)]);
    assert!(subject.store.sessions().unwrap().iter().all(|r| r.id != old_id), "the old session ended");
    assert_eq!(other.set_lock(file, &write(1, 0, 0)), Err(MetaError::WouldBlock), "still locked");
    // The new session holds them as its own: it may change and release them.
    new.set_lock(file, &write(7, 0, 19)).unwrap();
    new.release_locks(file, 7).unwrap();
    other.set_lock(file, &write(1, 0, 9)).unwrap();
    assert_eq!(other.set_lock(file, &write(1, 20, 20)), Err(MetaError::WouldBlock));
    assert!(
        new.adopt_session(new_session_id(subject, "/gw-new")).is_err(),
        "a session cannot take itself over"
    );
    for s in [new, other] {
        s.end_own_session().unwrap();
    }
}

fn new_session_id(subject: &Subject, mountpoint: &str) -> u64 {
    subject.store.sessions().unwrap().iter().find(|r| r.client.mountpoint == mountpoint).unwrap().id
}

/// A file of 100 blocks (etcd takes 16 per transaction) is committed, truncated and removed:
/// counters, stored bytes and chunk references stay exact at every step.
fn large_files_commit_truncate_and_go_in_steps(subject: &Subject) {
    let s = subject.store.as_ref();
    let bs = 65536u64;
    let f = mkfile(s, ROOT_INO, "big");
    let hashes: Vec<[u8; 32]> = (0..100u32).map(|i| *blake3::hash(&i.to_le_bytes()).as_bytes()).collect();
    for h in &hashes {
        s.protect_chunk(h).unwrap();
    }
    let blocks: Vec<(u64, BlockChange)> = hashes
        .iter()
        .enumerate()
        .map(|(i, h)| (i as u64, BlockChange::Whole(BlockRef::Chunk { hash: *h, len: bs as u32 })))
        .collect();
    let commit = BlockCommit { blocks, min_size: 100 * bs, release: hashes.clone(), ..Default::default() };
    let attr = s.commit_blocks(f, &commit).unwrap().attr;
    assert_eq!((attr.size, attr.stored), (100 * bs, 100 * bs));
    assert_eq!(s.usage().unwrap().bytes, 100 * bs);
    assert_eq!(s.referenced_chunks().unwrap().len(), 100);
    assert!(s.audit().unwrap().is_clean());

    let truncate = BlockCommit { truncate: Some(10 * bs + 5), ..Default::default() };
    let attr = s.commit_blocks(f, &truncate).unwrap().attr;
    assert_eq!((attr.size, attr.stored), (10 * bs + 5, 11 * bs));
    assert_eq!(s.blocks(f, 0, 1000).unwrap().len(), 11);
    assert_eq!(s.unreferenced_chunks().unwrap().len(), 89);

    let gone = s.unlink(ROOT_INO, b"big", Some(f)).unwrap();
    assert!(gone.purged);
    assert_eq!(s.getattr(f), Err(MetaError::NotFound));
    assert_eq!(s.usage().unwrap().bytes, 0);
    assert!(s.referenced_chunks().unwrap().is_empty());
}

/// A chunk protected for this session, named after `seed`.
fn protected_chunk(s: &dyn MetaStore, seed: u32) -> [u8; 32] {
    let hash = *blake3::hash(&seed.to_le_bytes()).as_bytes();
    s.protect_chunk(&hash).unwrap();
    hash
}

fn slice(hash: [u8; 32], extents: Vec<(u32, u32)>) -> Slice {
    let chunk_len = extents.iter().map(|e| e.1).sum();
    Slice { hash, chunk_len, chunk_offset: 0, extents, level: 0 }
}

/// Slices laid on a block by commits, then compactions: one that still matches applies (and
/// keeps a slice laid since on top), one that does not is refused; references, stored bytes
/// and the audit stay exact throughout.
fn slices_lie_over_blocks_until_a_compaction_replaces_them(subject: &Subject) {
    let s = subject.store.as_ref();
    let f = mkfile(s, ROOT_INO, "f");
    let base = protected_chunk(s, 1);
    let whole = BlockChange::Whole(BlockRef::Chunk { hash: base, len: 1000 });
    let commit =
        BlockCommit { blocks: vec![(0, whole)], min_size: 1000, release: vec![base], ..Default::default() };
    assert!(s.commit_blocks(f, &commit).unwrap().layered.is_empty(), "a whole block is no layer");

    // Two slices in one commit's chunk, over blocks 0 and 1 (a hole so far).
    let packed = protected_chunk(s, 2);
    let over = |extents: Vec<(u32, u32)>, offset: u32| Slice {
        hash: packed,
        chunk_len: 300,
        chunk_offset: offset,
        extents,
        level: 0,
    };
    let commit = BlockCommit {
        blocks: vec![
            (0, BlockChange::Overlay(over(vec![(10, 100), (900, 200)], 0))),
            (1, BlockChange::Overlay(over(vec![(0, 0)], 300))),
        ],
        release: vec![packed],
        ..Default::default()
    };
    assert!(matches!(s.commit_blocks(f, &commit), Err(MetaError::Invalid(_))), "an empty extent is refused");
    let commit = BlockCommit {
        blocks: vec![(0, BlockChange::Overlay(over(vec![(10, 100), (900, 200)], 0)))],
        min_size: 1100,
        release: vec![packed],
        ..Default::default()
    };
    let committed = s.commit_blocks(f, &commit).unwrap();
    assert_eq!((committed.attr.size, committed.attr.stored), (1100, 1100), "the slice made the block longer");
    let (index, layered) = &committed.layered[0];
    assert_eq!((*index, layered.slices.len(), layered.len()), (0, 1, 1100));
    assert_eq!(s.blocks(f, 0, 1).unwrap()[0].1, *layered);
    assert_eq!(s.referenced_chunks().unwrap().len(), 2);
    assert!(s.audit().unwrap().is_clean());

    // A compaction of what was read, while another slice lands on top meanwhile.
    let was = layered.clone();
    let later = protected_chunk(s, 3);
    let commit = BlockCommit {
        blocks: vec![(0, BlockChange::Overlay(slice(later, vec![(0, 5)])))],
        release: vec![later],
        ..Default::default()
    };
    s.commit_blocks(f, &commit).unwrap();
    let merged = protected_chunk(s, 4);
    let now = Block { base: Some(BlockRef::Chunk { hash: merged, len: 1100 }), slices: Vec::new() };
    let compaction = Compaction { ino: f, index: 0, was: was.clone(), now, release: vec![merged] };
    assert!(s.compact_block(&compaction).unwrap());
    let block = s.blocks(f, 0, 1).unwrap().remove(0).1;
    assert_eq!(block.base, Some(BlockRef::Chunk { hash: merged, len: 1100 }));
    assert_eq!(block.slices, vec![slice(later, vec![(0, 5)])], "the later slice stays on top");
    let referenced: Vec<_> = s.referenced_chunks().unwrap().into_iter().map(|(h, _)| h).collect();
    assert!(referenced.contains(&merged) && referenced.contains(&later) && referenced.len() == 2);
    assert_eq!(s.unreferenced_chunks().unwrap().len(), 2, "the base and the packed chunk it replaced");
    assert!(s.audit().unwrap().is_clean());

    // The same compaction again: the block is no longer what it read.
    let stale = protected_chunk(s, 5);
    let now = Block { base: Some(BlockRef::Chunk { hash: stale, len: 1100 }), slices: Vec::new() };
    let compaction = Compaction { ino: f, index: 0, was, now, release: vec![stale] };
    assert!(!s.compact_block(&compaction).unwrap());
    assert_eq!(s.blocks(f, 0, 1).unwrap()[0].1, block, "unchanged");
    let changes_length = Compaction {
        now: Block { base: Some(BlockRef::Inline(vec![1; 10])), slices: Vec::new() },
        was: block.clone(),
        ..compaction
    };
    assert!(matches!(s.compact_block(&changes_length), Err(MetaError::Invalid(_))));
    assert_eq!(s.getattr(f).unwrap().stored, 1100);
    assert!(s.audit().unwrap().is_clean());

    // Removing the file drops every reference, slices' included.
    assert!(s.unlink(ROOT_INO, b"f", Some(f)).unwrap().purged);
    assert!(s.referenced_chunks().unwrap().is_empty());
    assert_eq!(s.usage().unwrap().bytes, 0);
}

fn extended_attributes_live_and_die_with_their_inode(subject: &Subject) {
    let s = subject.store.as_ref();
    let d = mkdir(s, ROOT_INO, "d");
    for i in 0..40 {
        s.set_xattr(d, format!("user.{i}").as_bytes(), b"v", XattrMode::Create).unwrap();
    }
    assert_eq!(s.set_xattr(d, b"user.1", b"v", XattrMode::Create), Err(MetaError::Exists));
    assert_eq!(s.set_xattr(d, b"user.x", b"v", XattrMode::Replace), Err(MetaError::NoXattr));
    assert_eq!(s.list_xattr(d).unwrap().len(), 40);
    assert_eq!(s.get_xattr(d, b"user.3").unwrap(), b"v");
    s.remove_xattr(d, b"user.3").unwrap();
    assert_eq!(s.get_xattr(d, b"user.3"), Err(MetaError::NoXattr));
    let f = mkfile(s, d, "f");
    s.set_xattr(f, b"user.f", b"1", XattrMode::Upsert).unwrap();
    assert!(s.unlink(d, b"f", Some(f)).unwrap().purged);
    assert_eq!(s.get_xattr(f, b"user.f"), Err(MetaError::NotFound));
    s.rmdir(ROOT_INO, b"d").unwrap();
    assert_eq!(s.list_xattr(d), Err(MetaError::NotFound));
}

fn everything_acknowledged_is_there_when_reopened(subject: &Subject) {
    let s = subject.store.as_ref();
    let d = mkdir(s, ROOT_INO, "d");
    let f = mkfile(s, d, "f");
    s.link(f, ROOT_INO, b"f2").unwrap();
    s.set_xattr(f, b"user.k", b"v", XattrMode::Upsert).unwrap();
    let again = (subject.reopen)();
    assert_eq!(again.lookup(d, b"f").unwrap().nlink, 2);
    assert_eq!(again.get_xattr(f, b"user.k").unwrap(), b"v");
    assert_eq!(again.usage().unwrap().inodes, 3);
    assert_eq!(again.superblock().uuid, s.superblock().uuid);
}

fn a_directory_s_times_follow_its_entries_and_setattr(subject: &Subject) {
    use elasticfs_metadata::{SetAttr, Timestamp};
    let s = subject.store.as_ref();
    let d = mkdir(s, ROOT_INO, "d");
    let past = Timestamp { secs: 1_000_000, nanos: 0 };
    let set = SetAttr { mtime: Some(past), ..Default::default() };
    assert_eq!(s.setattr(d, &set).unwrap().mtime, past);
    assert_eq!(s.getattr(d).unwrap().mtime, past);
    // Every entry added or removed moves both times to now, whichever client does it, and the
    // change says what it left the directory as.
    let other = (subject.client)("/other");
    let created = other.create_in_dir(&NewNode::new(d, b"f", FileKind::File, 0o644)).unwrap();
    let f = created.attr.ino;
    let after_create = s.getattr(d).unwrap();
    assert_eq!(created.dir, after_create);
    assert!(after_create.mtime > past && after_create.ctime >= after_create.mtime, "{after_create:?}");
    assert_eq!(s.lookup(d, b".").unwrap().mtime, after_create.mtime);
    std::thread::sleep(Duration::from_millis(20));
    let unlinked = s.unlink(d, b"f", Some(f)).unwrap();
    assert_eq!(unlinked.dir, Some(s.getattr(d).unwrap()));
    assert!(s.getattr(d).unwrap().mtime > after_create.mtime);
    // An explicit time wins over the entries' last change.
    assert_eq!(s.setattr(d, &set).unwrap().mtime, past);
    assert_eq!(s.getattr(d).unwrap().mtime, past);
    other.end_own_session().unwrap();
}

fn attributes_come_in_a_batch_and_a_gone_inode_is_none(subject: &Subject) {
    let s = subject.store.as_ref();
    let d = mkdir(s, ROOT_INO, "d");
    let files: Vec<u64> = (0..200).map(|n| mkfile(s, d, &format!("f{n}"))).collect();
    s.unlink(d, b"f7", Some(files[7])).unwrap();
    let mut asked = vec![d];
    asked.extend(&files);
    let got = s.getattrs(&asked).unwrap();
    assert_eq!(got.len(), asked.len());
    assert_eq!(got[0], Some(s.getattr(d).unwrap()));
    for (n, (ino, attr)) in files.iter().zip(&got[1..]).enumerate() {
        match n {
            7 => assert_eq!(attr, &None, "a removed inode"),
            _ => assert_eq!(attr, &Some(s.getattr(*ino).unwrap())),
        }
    }
}
