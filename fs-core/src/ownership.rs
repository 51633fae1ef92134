//! A bucket (and prefix) belongs to one file system (DESIGN §3, invariant I).
//!
//! `format` writes an ownership record, [`OWNER_OBJECT`], at the root of the location; every
//! client checks it against its metadata's uuid before it reads, writes or deletes a chunk.
//! Without it, two file systems on one location would each take the other's chunks for
//! leaked objects, and garbage collection would delete them.

use std::sync::Arc;

use elasticfs_metadata::Superblock;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use serde::{Deserialize, Serialize};
use tracing::info;

use crate::error::{FsError, FsResult};

/// The record's name, at the root of the bucket and prefix.
pub const OWNER_OBJECT: &str = "elasticfs-owner.json";

/// What the record says: which file system owns the location.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    pub uuid: String,
    pub name: String,
    pub format_version: u32,
    pub created_secs: i64,
}

impl Owner {
    pub fn of(sb: &Superblock) -> Self {
        Owner {
            uuid: sb.uuid.clone(),
            name: sb.name.clone(),
            format_version: sb.format_version,
            created_secs: sb.created_secs,
        }
    }
}

/// What a client does about a location, before touching any chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ownership<'a> {
    /// `format`: the location must hold no record and no chunk; it then gets this one's.
    Claim(&'a Superblock),
    /// A mount or gateway: the record must be this file system's. A location without one (a
    /// file system formatted before records existed) gets it: the first mount upgrades it.
    CheckOrAdopt(&'a Superblock),
    /// `gc`, `fsck`: the record must be there and be this file system's.
    Check(&'a Superblock),
}

fn owner_path() -> Path {
    Path::from(OWNER_OBJECT)
}

/// The location's record, if it has one.
pub async fn read_owner(store: &Arc<dyn ObjectStore>, location: &str) -> FsResult<Option<Owner>> {
    match store.get(&owner_path()).await {
        Ok(got) => {
            let bytes = got.bytes().await.map_err(|e| read_error(location, e))?;
            serde_json::from_slice(&bytes).map(Some).map_err(|e| {
                FsError::io(format!(
                    "{location}: the ownership record {OWNER_OBJECT} is not readable ({e}); it was \
                     not written by elasticfs: use another bucket or prefix"
                ))
            })
        }
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(read_error(location, e)),
    }
}

fn read_error(location: &str, e: object_store::Error) -> FsError {
    FsError::io(format!("{location}: reading the ownership record {OWNER_OBJECT}: {e}"))
}

/// Whether the record found names `sb`'s file system: `Ok(true)` if so, `Ok(false)` if there is
/// none, the error that names the owner if it is another's.
fn is_ours(found: Option<Owner>, location: &str, sb: &Superblock) -> FsResult<bool> {
    match found {
        Some(owner) if owner.uuid == sb.uuid => Ok(true),
        Some(owner) => Err(foreign(location, &owner, sb)),
        None => Ok(false),
    }
}

fn foreign(location: &str, theirs: &Owner, ours: &Superblock) -> FsError {
    FsError::io(format!(
        "the storage {location} belongs to another file system, {:?} ({}), not to {:?} ({}): \
         give this file system a bucket or prefix of its own (format --bucket)",
        theirs.name, theirs.uuid, ours.name, ours.uuid
    ))
}

/// Applies `ownership` to the location `store` (named `location` in errors).
pub async fn enforce(store: &Arc<dyn ObjectStore>, location: &str, ownership: Ownership<'_>) -> FsResult<()> {
    let (sb, adopt) = match ownership {
        Ownership::Claim(sb) => return claim(store, location, sb).await,
        Ownership::CheckOrAdopt(sb) => (sb, true),
        Ownership::Check(sb) => (sb, false),
    };
    if is_ours(read_owner(store, location).await?, location, sb)? {
        return Ok(());
    }
    if adopt {
        write_record(store, location, sb).await?;
        info!(location, uuid = %sb.uuid, "wrote the storage's ownership record (first mount since upgrade)");
        return Ok(());
    }
    Err(FsError::io(format!(
        "the storage {location} has no ownership record ({OWNER_OBJECT}), so nothing proves its \
             objects are {:?}'s ({}): mount the file system once (the first mount writes the record), \
             then run this again",
        sb.name, sb.uuid
    )))
}

async fn claim(store: &Arc<dyn ObjectStore>, location: &str, sb: &Superblock) -> FsResult<()> {
    if let Some(owner) = read_owner(store, location).await? {
        // Even its own record: a second format must not reuse a location.
        return Err(foreign(location, &owner, sb));
    }
    let mut chunks = store.list(Some(&Path::from("chunks")));
    if let Some(found) = futures::TryStreamExt::try_next(&mut chunks)
        .await
        .map_err(|e| FsError::io(format!("{location}: listing chunks: {e}")))?
    {
        return Err(FsError::io(format!(
            "the storage {location} already holds chunks ({} among them) of a file system that has \
             no ownership record: give this file system a bucket or prefix of its own (format \
             --bucket), or mount that file system once so that it records itself",
            found.location
        )));
    }
    write_record(store, location, sb).await
}

/// Gives the location back (a format that failed after claiming it): deletes the record if it
/// is `sb`'s.
pub async fn release(store: &Arc<dyn ObjectStore>, location: &str, sb: &Superblock) -> FsResult<()> {
    if read_owner(store, location).await?.is_some_and(|owner| owner.uuid == sb.uuid) {
        store.delete(&owner_path()).await.map_err(|e| {
            FsError::io(format!(
                "{location}: the format failed, and removing its ownership record {OWNER_OBJECT} \
                 failed too ({e}): delete that object before formatting again"
            ))
        })?;
    }
    Ok(())
}

/// Writes the record unless one is there. Where the store cannot create exclusively (some S3
/// servers) it is a plain PUT, read back: of two writers racing, the last one's record stands
/// and the other learns it here.
async fn write_record(store: &Arc<dyn ObjectStore>, location: &str, sb: &Superblock) -> FsResult<()> {
    let body = serde_json::to_vec_pretty(&Owner::of(sb)).expect("a record always encodes");
    let create = PutOptions { mode: PutMode::Create, ..Default::default() };
    let written = match store.put_opts(&owner_path(), PutPayload::from(body.clone()), create).await {
        Ok(_) => return Ok(()),
        Err(object_store::Error::NotImplemented { .. }) => {
            store.put(&owner_path(), PutPayload::from(body)).await
        }
        Err(e) => Err(e),
    };
    match written {
        // Written without exclusion, or someone else's was there first: what stands decides.
        Ok(_) | Err(object_store::Error::AlreadyExists { .. }) => {
            match is_ours(read_owner(store, location).await?, location, sb)? {
                true => Ok(()),
                false => {
                    Err(FsError::io(format!("{location}: the ownership record vanished as it was written")))
                }
            }
        }
        Err(e) => Err(FsError::io(format!("{location}: writing the ownership record {OWNER_OBJECT}: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use object_store::memory::InMemory;

    use super::*;

    fn superblock(name: &str) -> Superblock {
        Superblock::new(name, 4 << 20, 4096, "memory://")
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
    }

    #[test]
    fn a_location_belongs_to_the_file_system_that_claimed_it() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let (a, b) = (superblock("a"), superblock("b"));
        block_on(async {
            enforce(&store, "mem", Ownership::Claim(&a)).await.unwrap();
            enforce(&store, "mem", Ownership::Check(&a)).await.unwrap();
            enforce(&store, "mem", Ownership::CheckOrAdopt(&a)).await.unwrap();
            for refused in [Ownership::Claim(&b), Ownership::Check(&b), Ownership::CheckOrAdopt(&b)] {
                let e = enforce(&store, "mem", refused).await.unwrap_err();
                assert!(e.message.contains(&a.uuid) && e.message.contains("--bucket"), "{e}");
            }
            // The owner cannot claim it twice either: a second format must not reuse it.
            assert!(enforce(&store, "mem", Ownership::Claim(&a)).await.is_err());
            // Released by a failed format, it can be claimed anew.
            release(&store, "mem", &b).await.unwrap();
            enforce(&store, "mem", Ownership::Check(&a)).await.unwrap();
            release(&store, "mem", &a).await.unwrap();
            enforce(&store, "mem", Ownership::Claim(&b)).await.unwrap();
        });
    }

    #[test]
    fn a_location_without_a_record_is_adopted_by_a_mount_only() {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let (a, b) = (superblock("a"), superblock("b"));
        block_on(async {
            store.put(&Path::from("chunks/00/0011"), PutPayload::from_static(b"x")).await.unwrap();
            let e = enforce(&store, "mem", Ownership::Check(&a)).await.unwrap_err();
            assert!(e.message.contains("mount the file system once"), "{e}");
            let e = enforce(&store, "mem", Ownership::Claim(&b)).await.unwrap_err();
            assert!(e.message.contains("already holds chunks"), "{e}");
            enforce(&store, "mem", Ownership::CheckOrAdopt(&a)).await.unwrap();
            enforce(&store, "mem", Ownership::Check(&a)).await.unwrap();
            assert!(enforce(&store, "mem", Ownership::CheckOrAdopt(&b)).await.is_err());
        });
    }
}
