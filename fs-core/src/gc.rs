//! Garbage collection (DESIGN §6): deletes the objects of chunks that nothing references once
//! their grace period has passed, and objects the metadata knows nothing of (uploads whose
//! commit never came: a client died) once they are that old.
//!
//! Safety against writers comes from the metadata, not from timing: a chunk is deleted only
//! after the metadata *condemned* it in a transaction that found no reference and no upload
//! intent, and while it is condemned no writer may rely on it (see
//! `metadata/src/sled_store/chunks.rs`). The grace period is a courtesy (undo, slow clients),
//! not what keeps data safe.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use elasticfs_metadata::{ChunkHash, MetaStore, Timestamp};
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use tracing::{info, instrument, warn};

use crate::chunk_store::{chunk_path, segments_path};
use crate::error::{FsError, FsResult};
use crate::ownership::{self, Ownership};

#[derive(Clone, Copy, Debug)]
pub struct GcOptions {
    /// How long a chunk stays after it lost its last reference (and how old a leaked object
    /// must be) before it is deleted.
    pub grace: Duration,
    /// Count what would be deleted, delete nothing.
    pub dry_run: bool,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Chunks nothing references whose grace period has passed.
    pub unreferenced: u64,
    /// Objects the metadata knows nothing of, older than the grace period.
    pub leaked: u64,
    /// Chunks left for now: within their grace period, or protected by an upload under way.
    pub kept: u64,
    /// Chunks whose objects were deleted (or, in a dry run, would be).
    pub deleted: u64,
    /// Bytes of the objects deleted (or that would be).
    pub freed_bytes: u64,
}

/// Chunks condemned and deleted per metadata transaction.
const BATCH: usize = 1000;
/// Object deletions in flight.
const DELETES_IN_FLIGHT: usize = 16;

/// The chunk an object under `chunks/` belongs to (its segment list belongs to it too).
fn chunk_of(path: &Path) -> Option<ChunkHash> {
    let name = path.filename()?;
    let hex = name.strip_suffix(".segs").unwrap_or(name);
    let mut hash = [0u8; 32];
    hex::decode_to_slice(hex, &mut hash).ok()?;
    Some(hash)
}

/// What the bucket holds for one chunk.
#[derive(Default, Clone, Copy)]
struct Stored {
    /// Its objects: the chunk, and its segment list if it has one.
    objects: u64,
    bytes: u64,
    /// Unix seconds of its newest object's last write.
    newest: i64,
}

/// Every object under `chunks/`, by the chunk it belongs to.
async fn list_chunk_objects(store: &Arc<dyn ObjectStore>) -> FsResult<HashMap<ChunkHash, Stored>> {
    let mut objects: HashMap<ChunkHash, Stored> = HashMap::new();
    let mut listing = store.list(Some(&Path::from("chunks")));
    while let Some(object) =
        listing.try_next().await.map_err(|e| FsError::io(format!("listing chunks: {e}")))?
    {
        if let Some(hash) = chunk_of(&object.location) {
            let entry = objects.entry(hash).or_default();
            entry.objects += 1;
            entry.bytes += object.size;
            entry.newest = entry.newest.max(object.last_modified.timestamp());
        }
    }
    Ok(objects)
}

/// What the bucket holds against what the metadata knows of (for `fsck` and `status`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BucketSurvey {
    /// Objects of chunks (and their segment lists) in the bucket.
    pub objects: u64,
    pub bytes: u64,
    /// Of those, the objects the metadata knows nothing of: uploads never committed (a client
    /// died, or superseded them), or under way right now. Collection deletes them once they
    /// are older than its grace period.
    pub leaked_objects: u64,
    pub leaked_bytes: u64,
}

/// Lists the bucket and sorts what it holds by `known`, the chunks the metadata knows (referenced
/// or unreferenced); without it, only counts it (nothing is then called leaked).
pub fn survey(
    known: Option<&HashSet<ChunkHash>>,
    store: &Arc<dyn ObjectStore>,
    runtime: &tokio::runtime::Runtime,
) -> FsResult<BucketSurvey> {
    let objects = runtime.block_on(list_chunk_objects(store))?;
    let mut survey = BucketSurvey::default();
    for (hash, stored) in &objects {
        survey.objects += stored.objects;
        survey.bytes += stored.bytes;
        if known.is_some_and(|k| !k.contains(hash)) {
            survey.leaked_objects += stored.objects;
            survey.leaked_bytes += stored.bytes;
        }
    }
    Ok(survey)
}

/// Runs one collection. Metadata calls block the calling thread; object-store calls run on
/// `runtime`. `progress(done, total)` follows the deletions.
#[instrument(skip_all, fields(grace_secs = options.grace.as_secs(), dry_run = options.dry_run))]
pub fn collect(
    meta: &Arc<dyn MetaStore>,
    store: &Arc<dyn ObjectStore>,
    runtime: &tokio::runtime::Runtime,
    options: GcOptions,
    progress: &dyn Fn(u64, u64),
) -> FsResult<GcReport> {
    // Whatever else it gets wrong, a collection never deletes what its file system does not own.
    let sb = meta.superblock().clone();
    runtime.block_on(ownership::enforce(store, &sb.storage, Ownership::Check(&sb)))?;
    let now = Timestamp::now();
    let cutoff = Timestamp { secs: now.secs - options.grace.as_secs() as i64, nanos: now.nanos };
    let objects = runtime.block_on(list_chunk_objects(store))?;
    let referenced: HashSet<ChunkHash> = meta.referenced_chunks()?.into_iter().map(|(h, _)| h).collect();
    let unreferenced = meta.unreferenced_chunks()?;
    let known: HashSet<ChunkHash> = unreferenced.iter().map(|(h, _)| *h).collect();

    let mut report = GcReport::default();
    let mut candidates = Vec::new();
    for (hash, since) in &unreferenced {
        if *since <= cutoff {
            report.unreferenced += 1;
            candidates.push(*hash);
        } else {
            report.kept += 1;
        }
    }
    for (hash, stored) in &objects {
        if referenced.contains(hash) || known.contains(hash) {
            continue;
        }
        if stored.newest <= cutoff.secs {
            report.leaked += 1;
            candidates.push(*hash);
        } else {
            report.kept += 1;
        }
    }
    // Chunks a collection condemned and did not finish deleting.
    let mut seen: HashSet<ChunkHash> = candidates.iter().copied().collect();
    for hash in meta.condemned_chunks()? {
        if seen.insert(hash) {
            candidates.push(hash);
        }
    }
    let total = candidates.len() as u64;
    progress(0, total);
    if options.dry_run {
        report.deleted = total;
        report.freed_bytes = candidates.iter().map(|h| objects.get(h).map_or(0, |s| s.bytes)).sum();
        return Ok(report);
    }
    let mut done = 0;
    for batch in candidates.chunks(BATCH) {
        // The metadata has the last word: whatever was referenced or protected since the
        // listing is not condemned.
        let condemned = meta.condemn_chunks(batch, cutoff)?;
        runtime.block_on(delete_objects(store, &condemned))?;
        meta.forget_condemned(&condemned)?;
        report.deleted += condemned.len() as u64;
        report.freed_bytes += condemned.iter().map(|h| objects.get(h).map_or(0, |s| s.bytes)).sum::<u64>();
        report.kept += (batch.len() - condemned.len()) as u64;
        done += batch.len() as u64;
        progress(done, total);
    }
    info!(
        deleted = report.deleted,
        freed_bytes = report.freed_bytes,
        kept = report.kept,
        "garbage collection done"
    );
    Ok(report)
}

/// Deletes each chunk's object and segment list (either may already be gone).
async fn delete_objects(store: &Arc<dyn ObjectStore>, hashes: &[ChunkHash]) -> FsResult<()> {
    let paths: Vec<Path> = hashes.iter().flat_map(|h| [chunk_path(h), segments_path(h)]).collect();
    futures::stream::iter(paths)
        .map(|path| async move {
            match store.delete(&path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(FsError::io(format!("deleting {path}: {e}"))),
            }
        })
        .buffer_unordered(DELETES_IN_FLIGHT)
        .try_collect::<Vec<()>>()
        .await
        .map(|_| ())
}

/// What a background collection works on: the metadata and the bucket, once they are there
/// (a metadata service may not be formatted yet).
pub type GcTarget = Box<dyn Fn() -> FsResult<Option<(Arc<dyn MetaStore>, Arc<dyn ObjectStore>)>> + Send>;

/// Collects garbage every so often in a thread of its own, for whoever owns the metadata
/// store: the metadata service, or an embedded mount.
pub struct BackgroundGc {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

impl BackgroundGc {
    pub fn start(every: Duration, grace: Duration, target: GcTarget) -> FsResult<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| FsError::io(format!("starting the garbage collector's runtime: {e}")))?;
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let signal = stop.clone();
        let thread = std::thread::Builder::new()
            .name("elasticfs-gc".into())
            .spawn(move || {
                let (lock, wake) = &*signal;
                loop {
                    let stopped = wake.wait_timeout_while(lock.lock().unwrap(), every, |s| !*s).unwrap().0;
                    if *stopped {
                        return;
                    }
                    drop(stopped);
                    let run = target().and_then(|t| match t {
                        Some((meta, store)) => {
                            let options = GcOptions { grace, dry_run: false };
                            collect(&meta, &store, &runtime, options, &|_, _| {}).map(Some)
                        }
                        None => Ok(None),
                    });
                    if let Err(e) = run {
                        warn!("background garbage collection failed (next try in {every:?}): {e}");
                    }
                }
            })
            .map_err(|e| FsError::io(format!("starting the garbage collector: {e}")))?;
        Ok(BackgroundGc { stop, thread: Some(thread) })
    }
}

impl Drop for BackgroundGc {
    fn drop(&mut self) {
        *self.stop.0.lock().unwrap() = true;
        self.stop.1.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_map_to_their_chunks() {
        let hash = [7u8; 32];
        assert_eq!(chunk_of(&chunk_path(&hash)), Some(hash));
        assert_eq!(chunk_of(&segments_path(&hash)), Some(hash));
        assert_eq!(chunk_of(&Path::from("chunks/07/not-a-chunk")), None);
    }
}
