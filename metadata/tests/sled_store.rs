//! The embedded engine's namespace rules, durability of the format and refusal of bad stores.

use elasticfs_metadata::{
    ClientInfo, FileKind, LockKind, LockRequest, MetaError, MetaResult, MetaStore, NewNode, Rename,
    RenameMode, SledStore, Superblock, Unlinked, XattrMode, FORMAT_VERSION, ROOT_INO,
};

fn store() -> (tempfile::TempDir, SledStore) {
    let dir = tempfile::tempdir().unwrap();
    let sb = Superblock::new("t", 65536, 1024, "memory://");
    let s = SledStore::format(&dir.path().join("meta"), &sb, 0, 0).unwrap();
    (dir, s)
}

fn mkdir(s: &SledStore, parent: u64, name: &str) -> u64 {
    s.create(&NewNode::new(parent, name.as_bytes(), FileKind::Dir, 0o755)).unwrap().ino
}

fn rename(
    s: &SledStore,
    parent: u64,
    name: &[u8],
    new_parent: u64,
    new_name: &[u8],
    mode: RenameMode,
) -> MetaResult<Option<Unlinked>> {
    let (name, new_name) = (name.to_vec(), new_name.to_vec());
    s.rename(&Rename { parent, name, new_parent, new_name, mode, closed: None })
}

fn mkfile(s: &SledStore, parent: u64, name: &str) -> u64 {
    s.create(&NewNode::new(parent, name.as_bytes(), FileKind::File, 0o644)).unwrap().ino
}

#[test]
fn rename_refuses_cycles_and_keeps_link_counts() {
    let (_d, s) = store();
    let a = mkdir(&s, ROOT_INO, "a");
    let b = mkdir(&s, a, "b");
    let c = mkdir(&s, b, "c");
    assert_eq!(
        rename(&s, ROOT_INO, b"a", c, b"a", RenameMode::Replace),
        Err(MetaError::Invalid("cannot move a directory into itself".into()))
    );
    assert!(matches!(rename(&s, a, b"b", b, b"x", RenameMode::Replace), Err(MetaError::Invalid(_))));
    rename(&s, b, b"c", ROOT_INO, b"c", RenameMode::Replace).unwrap();
    assert_eq!(s.getattr(ROOT_INO).unwrap().nlink, 4); // ., a, c and its own ..
    assert_eq!(s.getattr(b).unwrap().nlink, 2);
    assert_eq!(s.lookup(c, b"..").unwrap().ino, ROOT_INO);
}

#[test]
fn rename_replace_noreplace_and_exchange() {
    let (_d, s) = store();
    let f = mkfile(&s, ROOT_INO, "f");
    let g = mkfile(&s, ROOT_INO, "g");
    let d = mkdir(&s, ROOT_INO, "d");
    assert_eq!(rename(&s, ROOT_INO, b"f", ROOT_INO, b"g", RenameMode::NoReplace), Err(MetaError::Exists));
    assert_eq!(rename(&s, ROOT_INO, b"f", ROOT_INO, b"d", RenameMode::Replace), Err(MetaError::IsDir));
    assert_eq!(rename(&s, ROOT_INO, b"d", ROOT_INO, b"f", RenameMode::Replace), Err(MetaError::NotDir));
    rename(&s, ROOT_INO, b"f", ROOT_INO, b"d", RenameMode::Exchange).unwrap();
    assert_eq!(s.lookup(ROOT_INO, b"d").unwrap().ino, f);
    assert_eq!(s.lookup(ROOT_INO, b"f").unwrap().ino, d);
    let replaced = rename(&s, ROOT_INO, b"d", ROOT_INO, b"g", RenameMode::Replace).unwrap().unwrap();
    assert_eq!(replaced.attr.ino, g);
    assert!(replaced.orphaned);
    assert_eq!(s.orphans().unwrap(), vec![g]);
    s.purge(g).unwrap();
    assert_eq!(s.getattr(g), Err(MetaError::NotFound));
    assert_eq!(s.usage().unwrap().inodes, 3); // root, f (now "g"), d (now "f")
}

#[test]
fn unlink_removes_a_closed_file_in_the_same_transaction() {
    let (_d, s) = store();
    let kept = mkfile(&s, ROOT_INO, "kept");
    let gone = mkfile(&s, ROOT_INO, "gone");
    let linked = mkfile(&s, ROOT_INO, "linked");
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
    assert_eq!(s.orphans().unwrap(), vec![kept, linked]);
    assert_eq!(s.usage().unwrap().inodes, 3); // root and the two orphans
}

#[test]
fn readdir_resumes_from_any_cookie_exactly_once() {
    let (_d, s) = store();
    for i in 0..500 {
        mkfile(&s, ROOT_INO, &format!("e{i}"));
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
                s.unlink(ROOT_INO, &e.name, None).unwrap();
            }
        }
        seen.extend(page.into_iter().map(|e| e.name));
    }
    assert_eq!(seen.len(), 500);
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 500);
}

#[test]
fn names_are_checked() {
    let (_d, s) = store();
    let long = "x".repeat(256);
    assert_eq!(
        s.create(&NewNode::new(ROOT_INO, long.as_bytes(), FileKind::File, 0o644)),
        Err(MetaError::NameTooLong)
    );
    assert!(matches!(
        s.create(&NewNode::new(ROOT_INO, b"a/b", FileKind::File, 0o644)),
        Err(MetaError::Invalid(_))
    ));
    mkfile(&s, ROOT_INO, &"x".repeat(255));
    assert_eq!(s.rmdir(ROOT_INO, b"nope"), Err(MetaError::NotFound));
}

#[test]
fn reopened_store_has_everything_and_a_second_opener_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("meta");
    let sb = Superblock::new("t", 65536, 1024, "memory://");
    {
        let s = SledStore::format(&path, &sb, 0, 0).unwrap();
        mkfile(&s, ROOT_INO, "kept");
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

#[test]
fn ending_a_session_releases_its_locks_and_reclaims_its_orphans() {
    let (_d, s) = store();
    let a = s.start_session(ClientInfo::this_process("/a")).unwrap();
    let b = s.start_session(ClientInfo::this_process("/b")).unwrap();
    assert_eq!(s.sessions().unwrap().len(), 2);
    let file = mkfile(&a, ROOT_INO, "f");
    let write = |owner| LockRequest { owner, pid: 1, kind: LockKind::Write, start: 0, end: u64::MAX };
    a.set_lock(file, &write(7)).unwrap();
    assert_eq!(b.set_lock(file, &write(7)), Err(MetaError::WouldBlock));
    assert_eq!(b.get_lock(file, &write(7)).unwrap().unwrap().session, a.session_id());
    // A unlinks the file while it holds it open: an orphan of session A.
    let kept = mkfile(&a, ROOT_INO, "kept");
    assert!(a.unlink(ROOT_INO, b"kept", None).unwrap().orphaned);
    // B's own orphan is not A's to reclaim.
    let theirs = mkfile(&b, ROOT_INO, "theirs");
    assert!(b.unlink(ROOT_INO, b"theirs", None).unwrap().orphaned);

    s.end_session(a.session_id()).unwrap();
    b.set_lock(file, &write(7)).unwrap();
    assert_eq!(s.getattr(kept), Err(MetaError::NotFound));
    assert_eq!(s.orphans().unwrap(), vec![theirs]);
    assert_eq!(s.sessions().unwrap().len(), 1);
    // Releasing by owner frees the file for everyone.
    b.release_locks(file, 7).unwrap();
    assert!(a.session(99).get_lock(file, &write(1)).unwrap().is_none());
}
