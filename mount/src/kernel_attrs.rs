//! Which version of each file's attributes the kernel was handed, so that an open can tell
//! whether the kernel's cached attributes may predate the store's.
//!
//! Close-to-open consistency needs the kernel's cached size to be no older than the file at
//! open: the kernel cuts reads short at it. An open of a file changed since this client last
//! opened it therefore makes the kernel forget the file's attributes, which costs a GETATTR
//! round trip on the next `fstat` or read. When every reply that carried the file's attributes
//! since the kernel last forgot them (a LOOKUP a moment before the open, typically) was of the
//! version the open found, there is nothing older to forget.

use std::num::NonZeroUsize;
use std::sync::Mutex;

use elasticfs_core::metadata::Ino;
use elasticfs_core::FileVersion;

/// Files whose handed-over attributes are remembered; a file forgotten here is treated as
/// unknown, which costs only the round trip.
const REMEMBERED: NonZeroUsize = NonZeroUsize::new(65536).unwrap();

#[derive(Clone, Copy, PartialEq, Eq)]
enum Handed {
    /// Every reply since the kernel last forgot the file's attributes carried this version.
    Only(FileVersion),
    /// Replies carried more than one version.
    Several,
}

pub(crate) struct KernelAttrs {
    handed: Mutex<lru::LruCache<Ino, Handed>>,
}

impl KernelAttrs {
    pub(crate) fn new() -> Self {
        KernelAttrs { handed: Mutex::new(lru::LruCache::new(REMEMBERED)) }
    }

    /// Notes a reply that hands the kernel attributes of `ino` at `version`. Call it before the
    /// reply goes out, so that an open that runs in between sees it.
    pub(crate) fn handing(&self, ino: Ino, version: FileVersion) {
        let mut handed = self.handed.lock().unwrap();
        match handed.get_mut(&ino) {
            Some(seen) if *seen != Handed::Only(version) => *seen = Handed::Several,
            Some(_) => {}
            None => {
                handed.put(ino, Handed::Only(version));
            }
        }
    }

    /// Whether all the kernel can hold of `ino`'s attributes is of `version`. If not, the
    /// caller makes the kernel forget them, and they are forgotten here too.
    pub(crate) fn hold_only(&self, ino: Ino, version: FileVersion) -> bool {
        let mut handed = self.handed.lock().unwrap();
        let only = handed.peek(&ino) == Some(&Handed::Only(version));
        if !only {
            handed.pop(&ino);
        }
        only
    }
}

#[cfg(test)]
mod tests {
    use elasticfs_core::metadata::{Attr, FileKind, Timestamp};

    use super::*;

    fn version(size: u64) -> FileVersion {
        let mut attr = Attr::new(7, FileKind::File, 0o644, Timestamp::default());
        attr.size = size;
        FileVersion::of(&attr)
    }

    #[test]
    fn a_file_never_handed_over_is_unknown() {
        assert!(!KernelAttrs::new().hold_only(7, version(1)));
    }

    #[test]
    fn one_version_handed_over_holds_until_another_is_asked_for() {
        let kernel = KernelAttrs::new();
        kernel.handing(7, version(1));
        kernel.handing(7, version(1));
        assert!(kernel.hold_only(7, version(1)));
        assert!(kernel.hold_only(7, version(1)), "asking does not forget a match");
        assert!(!kernel.hold_only(7, version(2)));
        assert!(!kernel.hold_only(7, version(1)), "a mismatch forgets what was handed over");
    }

    #[test]
    fn two_versions_handed_over_match_neither() {
        let kernel = KernelAttrs::new();
        kernel.handing(7, version(1));
        kernel.handing(7, version(2));
        assert!(!kernel.hold_only(7, version(2)));
        kernel.handing(7, version(2));
        assert!(kernel.hold_only(7, version(2)), "what is handed over after forgetting counts");
    }
}
