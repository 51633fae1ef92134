//! What `elasticfs fsck` learns from the metadata: every record recounted against the counters,
//! link counts and chunk reference counts that summarise them (see [`crate::MetaStore::audit`]).
//! Each [`Finding`] says what is wrong and what a repair would do.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::types::{ChunkHash, Ino, Usage};

/// The outcome of an audit.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Audit {
    /// What the usage counters say.
    pub counters: Usage,
    /// What the records add up to (the counters a repair would set).
    pub counted: Usage,
    /// Blocks of live files, and the distinct chunks they refer to.
    pub blocks: u64,
    pub chunks: u64,
    /// Slices laid over those blocks (compaction folds them back in).
    pub slices: u64,
    /// The first [`Audit::MAX_FINDINGS`] findings.
    pub findings: Vec<Finding>,
    /// Findings beyond those listed.
    pub more_findings: u64,
}

impl Audit {
    pub const MAX_FINDINGS: usize = 1000;

    pub fn is_clean(&self) -> bool {
        self.findings.is_empty()
    }

    /// Every finding, listed or not.
    pub fn total_findings(&self) -> u64 {
        self.findings.len() as u64 + self.more_findings
    }

    pub(crate) fn add(&mut self, finding: Finding) {
        if self.findings.len() < Self::MAX_FINDINGS {
            self.findings.push(finding);
        } else {
            self.more_findings += 1;
        }
    }
}

/// One inconsistency in the metadata.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Finding {
    /// A usage counter (`bytes` or `inodes`) differs from the recount.
    Counter { name: String, stored: u64, counted: u64 },
    /// A chunk's reference count differs from the blocks that refer to it.
    ChunkRefs { hash: ChunkHash, stored: u64, counted: u64 },
    /// A referenced chunk is also listed as unreferenced (a candidate for garbage collection).
    ReferencedButListedUnreferenced { hash: ChunkHash },
    /// A directory entry names an inode that does not exist, or sits in something that is not
    /// a directory.
    DanglingEntry { parent: Ino, name: Vec<u8>, ino: Ino },
    /// A directory entry and the listing index (readdir cookies) disagree.
    ListingIndex { parent: Ino, cookie: u64, name: Vec<u8> },
    /// An inode's link count differs from the names (and, for a directory, subdirectories)
    /// that refer to it.
    LinkCount { ino: Ino, stored: u32, counted: u32 },
    /// A directory's recorded parent is not the directory that names it.
    DirParent { ino: Ino, stored: Ino, counted: Ino },
    /// An inode's stored bytes differ from its blocks.
    StoredBytes { ino: Ino, stored: u64, counted: u64 },
    /// An inode no name refers to that is not an orphan either (nothing would ever remove it).
    Unreachable { ino: Ino },
    /// An orphan record of an inode that is gone or has names again.
    StaleOrphan { ino: Ino },
    /// Records (blocks, extended attributes, a symlink target) of an inode that does not exist.
    StrayRecords { ino: Ino, what: String, count: u64 },
    /// Blocks that lie wholly past their file's size.
    BlocksPastEnd { ino: Ino, count: u64 },
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = |n: &[u8]| String::from_utf8_lossy(n).into_owned();
        match self {
            Finding::Counter { name, stored, counted } => write!(
                f,
                "the {name} counter says {stored}, the records add up to {counted}: would set it to {counted}"
            ),
            Finding::ChunkRefs { hash, stored, counted } => write!(
                f,
                "chunk {} has reference count {stored}, {counted} blocks refer to it: would set it to {counted}{}",
                hex(hash),
                if *counted == 0 { " (and leave the chunk to gc)" } else { "" }
            ),
            Finding::ReferencedButListedUnreferenced { hash } => write!(
                f,
                "chunk {} is referenced but listed as unreferenced: would take it off that list",
                hex(hash)
            ),
            Finding::DanglingEntry { parent, name: n, ino } => write!(
                f,
                "entry {:?} in directory {parent} names inode {ino}, which does not exist or whose \
                 parent is no directory: would remove the entry",
                name(n)
            ),
            Finding::ListingIndex { parent, cookie, name: n } => write!(
                f,
                "directory {parent}: entry {:?} and listing cookie {cookie} disagree: would rebuild the \
                 directory's listing index",
                name(n)
            ),
            Finding::LinkCount { ino, stored, counted } => {
                write!(f, "inode {ino} has link count {stored}, {counted} refer to it: would set it to {counted}")
            }
            Finding::DirParent { ino, stored, counted } => write!(
                f,
                "directory {ino} records parent {stored} but is named in {counted}: would set its parent to {counted}"
            ),
            Finding::StoredBytes { ino, stored, counted } => write!(
                f,
                "inode {ino} records {stored} stored bytes, its blocks hold {counted}: would set it to {counted}"
            ),
            Finding::Unreachable { ino } => write!(
                f,
                "inode {ino} has no name and is not an orphan (nothing would ever remove it): would \
                 move it to /lost+found"
            ),
            Finding::StaleOrphan { ino } => {
                write!(f, "orphan record of inode {ino}, which is gone or has a name: would delete the record")
            }
            Finding::StrayRecords { ino, what, count } => {
                write!(f, "{count} {what} of inode {ino}, which does not exist: would delete them")
            }
            Finding::BlocksPastEnd { ino, count } => {
                write!(f, "{count} blocks of inode {ino} lie past its size: would delete them")
            }
        }
    }
}

fn hex(hash: &ChunkHash) -> String {
    hash.iter().map(|b| format!("{b:02x}")).collect()
}
