//! Brings a sled store of format 1 (one sled tree per kind of record) into the one key space
//! of format 2 (see [`crate::keys`]), at its first open by this build. The new keys are
//! written in one atomic batch whose last key is the superblock, so a crash leaves either the
//! old store untouched or the new one whole; the old trees are dropped afterwards (again at
//! the next open, if a crash came first).

use crate::error::{MetaError, MetaResult};
use crate::keys::{self, Counter, Dentry, Listed};
use crate::types::{Superblock, ROOT_INO};

/// Format-1 trees, with the prefix their records take in format 2 (`None`: not carried over;
/// sessions, locks and upload intents belong to clients that are gone, and the credit balance
/// restarts full).
const LEGACY_TREES: [(&str, Option<u8>); 15] = [
    ("superblock", None),
    ("inodes", Some(keys::INODE)),
    ("dentries", Some(keys::DENTRY)),
    ("cookies", None),
    ("blocks", Some(keys::BLOCK)),
    ("symlinks", Some(keys::SYMLINK)),
    ("chunk_refs", Some(keys::CHUNK_REFS)),
    ("unreferenced", Some(keys::UNREFERENCED)),
    ("intents", None),
    ("condemned", Some(keys::CONDEMNED)),
    ("xattrs", Some(keys::XATTR)),
    ("orphans", Some(keys::ORPHAN)),
    ("counters", None),
    ("sessions", None),
    ("locks", None),
];

pub(super) fn upgrade(db: &sled::Db, kv: &sled::Tree) -> MetaResult<()> {
    let names = db.tree_names();
    let has_legacy = names.iter().any(|n| n.as_ref() == b"superblock");
    if !has_legacy {
        return Ok(());
    }
    if kv.get(keys::SUPERBLOCK)?.is_none() {
        copy_legacy(db, kv)?;
    }
    for (name, _) in LEGACY_TREES {
        db.drop_tree(name)?;
    }
    db.flush()?;
    Ok(())
}

fn copy_legacy(db: &sled::Db, kv: &sled::Tree) -> MetaResult<()> {
    let Some(raw) = db.open_tree("superblock")?.get(b"superblock")? else {
        return Ok(());
    };
    let mut superblock: Superblock = serde_json::from_slice(&raw)
        .map_err(|e| MetaError::Format(format!("the format-1 superblock is unreadable: {e}")))?;
    if superblock.format_version != 1 {
        return Ok(());
    }
    let mut batch = sled::Batch::default();
    let mut put = |prefix: u8, key: &[u8], value: &[u8]| {
        let mut k = vec![prefix];
        k.extend_from_slice(key);
        batch.insert(k, value);
    };
    for (name, prefix) in LEGACY_TREES {
        let Some(prefix) = prefix else { continue };
        for item in db.open_tree(name)?.iter() {
            let (k, v) = item?;
            put(prefix, &k, &v);
        }
    }
    // The listing index now carries the entry itself.
    let dentries = db.open_tree("dentries")?;
    for item in db.open_tree("cookies")?.iter() {
        let (k, name) = item?;
        let mut by_name = k[..8].to_vec();
        by_name.extend_from_slice(&name);
        if let Some(raw) = dentries.get(&by_name)? {
            let entry = Dentry::decode(&raw)?;
            put(keys::LISTING, &k, &Listed::encode(entry.ino, entry.kind, &name));
        }
    }
    let counters = db.open_tree("counters")?;
    for (counter, name) in [(Counter::Bytes, &b"bytes"[..]), (Counter::Inodes, b"inodes")] {
        let value = counters.get(name)?.map(|v| keys::decode_u64(&v)).unwrap_or(0);
        batch.insert(counter.share(0, 0), &keys::encode_u64(value));
    }
    // Format 1 drew inode and session numbers from sled's id generator: continue past it.
    let next = db.generate_id()? + ROOT_INO + 2;
    batch.insert(keys::NEXT_INO, &keys::encode_u64(next));
    batch.insert(keys::NEXT_SESSION, &keys::encode_u64(next));
    superblock.format_version = crate::FORMAT_VERSION;
    let encoded = serde_json::to_vec(&superblock).map_err(MetaError::store)?;
    batch.insert(keys::SUPERBLOCK, encoded);
    kv.apply_batch(batch)?;
    db.flush()?;
    tracing::info!("brought the metadata store from format 1 to format {}", crate::FORMAT_VERSION);
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::keys::Dentry;
    use crate::store::{MetaStore, NewNode};
    use crate::types::{Attr, FileKind, Superblock, Timestamp, ROOT_INO};
    use crate::SledStore;

    /// An inode record as format 1 wrote it: version 1, with the entry count and next cookie.
    fn v1_record(attr: &Attr, entries: u64, next_cookie: u64) -> Vec<u8> {
        let mut raw = attr.encode();
        raw[0] = 1;
        raw.extend_from_slice(&entries.to_le_bytes());
        raw.extend_from_slice(&next_cookie.to_le_bytes());
        raw
    }

    fn attr(ino: u64, kind: FileKind, nlink: u32) -> Attr {
        Attr { nlink, ..Attr::new(ino, kind, 0o755, Timestamp::now()) }
    }

    #[test]
    fn a_format_1_store_opens_converted_with_everything_in_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meta");
        {
            let db = sled::open(&path).unwrap();
            let mut sb = Superblock::new("old", 65536, 1024, "memory://");
            sb.format_version = 1;
            db.open_tree("superblock")
                .unwrap()
                .insert("superblock", serde_json::to_vec(&sb).unwrap())
                .unwrap();
            let inodes = db.open_tree("inodes").unwrap();
            inodes
                .insert(ROOT_INO.to_be_bytes(), v1_record(&attr(ROOT_INO, FileKind::Dir, 3), 2, 5))
                .unwrap();
            inodes.insert(7u64.to_be_bytes(), v1_record(&attr(7, FileKind::Dir, 2), 0, 3)).unwrap();
            inodes.insert(8u64.to_be_bytes(), v1_record(&attr(8, FileKind::File, 1), 0, 0)).unwrap();
            let (dentries, cookies) = (db.open_tree("dentries").unwrap(), db.open_tree("cookies").unwrap());
            for (name, ino, kind, cookie) in
                [(&b"d"[..], 7, FileKind::Dir, 3u64), (b"f", 8, FileKind::File, 4)]
            {
                let key = [&ROOT_INO.to_be_bytes()[..], name].concat();
                dentries.insert(&key, Dentry { ino, kind, cookie }.encode()).unwrap();
                cookies.insert([ROOT_INO.to_be_bytes(), cookie.to_be_bytes()].concat(), name).unwrap();
            }
            let counters = db.open_tree("counters").unwrap();
            counters.insert("inodes", &3u64.to_le_bytes()).unwrap();
            counters.insert("bytes", &0u64.to_le_bytes()).unwrap();
            // Format 1 took inode numbers from sled's generator: new ones must come after 8.
            for _ in 0..9 {
                db.generate_id().unwrap();
            }
            db.flush().unwrap();
        }
        let store = SledStore::open(&path).unwrap();
        assert_eq!(store.superblock().format_version, crate::FORMAT_VERSION);
        assert_eq!(store.lookup(ROOT_INO, b"d").unwrap().ino, 7);
        assert_eq!(store.lookup(ROOT_INO, b"f").unwrap().kind, FileKind::File);
        let listed: Vec<_> =
            store.readdir(ROOT_INO, 0, 10).unwrap().into_iter().map(|e| (e.name, e.cookie)).collect();
        assert_eq!(listed, vec![(b"d".to_vec(), 3), (b"f".to_vec(), 4)]);
        // New entries get numbers and cookies past every old one, and the audit is clean.
        let new = store.create(&NewNode::new(ROOT_INO, b"new", FileKind::File, 0o644)).unwrap();
        assert!(new.ino > 8, "{}", new.ino);
        assert!(store.readdir(ROOT_INO, 4, 10).unwrap().iter().all(|e| e.cookie > 4));
        assert_eq!(store.usage().unwrap().inodes, 4);
        let audit = store.audit().unwrap();
        assert!(audit.is_clean(), "{:#?}", audit.findings);
        assert!(store.rmdir(ROOT_INO, b"d").is_ok());
    }
}
