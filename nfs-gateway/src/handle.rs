//! NFS file handles: the volume, the inode and its generation, so that a handle stays valid
//! across gateway restarts and from any gateway of the same file system, and a handle of a
//! removed file (or of another file system) is recognised as stale.

use elasticfs_core::metadata::Ino;

const MAGIC: [u8; 2] = *b"EF";
const VERSION: u8 = 1;
pub const HANDLE_LEN: usize = 28;

/// Encodes and decodes the handles of one file system.
#[derive(Clone, Copy, Debug)]
pub struct HandleCodec {
    /// Derived from the file system's uuid; also reported as `fsid`.
    pub volume: u64,
}

#[derive(Debug, PartialEq, Eq)]
pub enum BadHandle {
    /// Not a handle we make.
    Malformed,
    /// One of ours for another file system.
    OtherVolume,
}

impl HandleCodec {
    pub fn new(volume_uuid: &str) -> Self {
        let hash = elasticfs_core::hash_of(volume_uuid.as_bytes());
        HandleCodec { volume: u64::from_be_bytes(hash[..8].try_into().expect("8 bytes")) }
    }

    pub fn encode(&self, ino: Ino, generation: u64) -> Vec<u8> {
        let mut out = Vec::with_capacity(HANDLE_LEN);
        out.extend_from_slice(&MAGIC);
        out.push(VERSION);
        out.push(0);
        out.extend_from_slice(&self.volume.to_be_bytes());
        out.extend_from_slice(&ino.to_be_bytes());
        out.extend_from_slice(&generation.to_be_bytes());
        out
    }

    /// The inode and generation a handle names.
    pub fn decode(&self, handle: &[u8]) -> Result<(Ino, u64), BadHandle> {
        if handle.len() != HANDLE_LEN || handle[..2] != MAGIC || handle[2] != VERSION {
            return Err(BadHandle::Malformed);
        }
        let word = |at: usize| u64::from_be_bytes(handle[at..at + 8].try_into().expect("8 bytes"));
        if word(4) != self.volume {
            return Err(BadHandle::OtherVolume);
        }
        Ok((word(12), word(20)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_round_trip_and_name_their_volume() {
        let codec = HandleCodec::new("volume-a");
        let handle = codec.encode(42, 7);
        assert_eq!(handle.len(), HANDLE_LEN);
        assert_eq!(codec.decode(&handle), Ok((42, 7)));
        assert_eq!(HandleCodec::new("volume-b").decode(&handle), Err(BadHandle::OtherVolume));
        assert_eq!(codec.decode(&handle[..20]), Err(BadHandle::Malformed));
        let mut wrong = handle.clone();
        wrong[2] = 9;
        assert_eq!(codec.decode(&wrong), Err(BadHandle::Malformed));
    }
}
