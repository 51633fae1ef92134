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
