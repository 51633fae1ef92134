//! Content-addressed chunks in an object store: `chunks/<2 hex>/<blake3 hex>`. A PUT is
//! idempotent (the name is the content), every GET is verified against the name (a ranged
//! GET against the chunk's segment hashes, see [`crate::segments`]), and concurrent misses on
//! one chunk or segment share one fetch.

use std::cell::Cell;
use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use elasticfs_metadata::{ChunkHash, ChunkProtection, MetaStore};
use futures::future::try_join_all;
use futures::StreamExt;
use object_store::path::Path;
use object_store::{GetResultPayload, ObjectStore, ObjectStoreExt, PutPayload};
use tokio::sync::OnceCell;
use tracing::{error, instrument, warn};

use crate::block_cache::{BlockCache, CacheKey, Part};
use crate::buffer_pool::BufferPool;
use crate::disk_cache::DiskCache;
use crate::error::{FsError, FsResult};
use crate::metrics::{CacheTier, EngineMetrics, ObjectRequest};
use crate::segments::{SegmentHashes, SEGMENT_LEN};
use crate::slices::{Layout, Source};

pub struct ChunkStore {
    store: Arc<dyn ObjectStore>,
    cache: BlockCache,
    disk: Option<Arc<DiskCache>>,
    /// Bounds the copies to the disk cache in flight (see `write_disk_cache`).
    disk_writers: Arc<tokio::sync::Semaphore>,
    /// Bounds the whole-chunk fetches that random reads start (see `fetch_whole_in_background`).
    background_fetches: Arc<tokio::sync::Semaphore>,
    /// With a metadata store: every upload is protected from garbage collection first, and
    /// skipped when the metadata knows the chunk to be stored (see [`ChunkStore::put`]).
    meta: Option<Arc<dyn MetaStore>>,
    /// Uploads under way, by chunk: a second upload of the same bytes waits for the first.
    uploading: Mutex<HashMap<ChunkHash, Arc<OnceCell<()>>>>,
    inflight: Mutex<HashMap<CacheKey, Arc<OnceCell<Bytes>>>>,
    /// Buffers of downloaded chunks, reused once the cache drops them.
    buffers: Arc<BufferPool>,
    metrics: Arc<EngineMetrics>,
}

/// Whether a downloaded chunk must reach the disk cache before its fetch is done.
#[derive(Clone, Copy)]
enum DiskCopy {
    /// In the background, unless `DISK_CACHE_WRITERS` copies are already queued.
    IfIdle,
    /// Before the fetch returns (a fetch made to fill the disk cache).
    Always,
}

/// Copies to the disk cache that may be queued at once.
const DISK_CACHE_WRITERS: usize = 2;
/// Whole-chunk fetches that random reads may have running at once.
const BACKGROUND_FETCHES: usize = 4;
/// How long an upload waits for garbage collection to finish deleting an earlier copy of the
/// same chunk before it gives up.
const CONDEMNED_WAIT: Duration = Duration::from_secs(60);

thread_local! {
    /// Set while a frontend's request runs on this thread (see [`may_block_on_disk`]).
    static MAY_BLOCK: Cell<bool> = const { Cell::new(false) };
}

/// Runs `body` with this thread marked as one that may block on local disk: a frontend's
/// request thread (FUSE's, or the NFS gateway's blocking section), as opposed to a task of the
/// engine's runtime. There a disk-cache read is done in place, in a few microseconds, instead
/// of being handed to the blocking pool and back, which costs two thread wake-ups: on a random
/// read served from the disk cache that hand-off was most of the time.
pub(crate) fn may_block_on_disk<T>(body: impl FnOnce() -> T) -> T {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            MAY_BLOCK.set(self.0);
        }
    }
    let _restore = Restore(MAY_BLOCK.replace(true));
    body()
}

pub fn chunk_path(hash: &ChunkHash) -> Path {
    let hex = hex::encode(hash);
    Path::from(format!("chunks/{}/{}", &hex[..2], hex))
}

/// The side object holding a chunk's segment hashes (see [`crate::segments`]).
pub fn segments_path(hash: &ChunkHash) -> Path {
    let hex = hex::encode(hash);
    Path::from(format!("chunks/{}/{}.segs", &hex[..2], hex))
}

pub fn hash_of(data: &[u8]) -> ChunkHash {
    *blake3::hash(data).as_bytes()
}

impl ChunkStore {
    pub fn new(store: Arc<dyn ObjectStore>, cache_bytes: usize) -> Self {
        ChunkStore {
            store,
            cache: BlockCache::new(cache_bytes),
            disk: None,
            disk_writers: Arc::new(tokio::sync::Semaphore::new(DISK_CACHE_WRITERS)),
            background_fetches: Arc::new(tokio::sync::Semaphore::new(BACKGROUND_FETCHES)),
            meta: None,
            uploading: Mutex::new(HashMap::new()),
            inflight: Mutex::new(HashMap::new()),
            buffers: Arc::default(),
            metrics: Arc::default(),
        }
    }

    /// Protects uploads from garbage collection through `meta`, and deduplicates them against
    /// every chunk it knows (see [`ChunkStore::put`]).
    pub fn protect_with(&mut self, meta: Arc<dyn MetaStore>) {
        self.meta = Some(meta);
    }

    /// Keeps what is downloaded on local disk too.
    pub fn with_disk_cache(mut self, disk: DiskCache) -> Self {
        self.disk = Some(Arc::new(disk));
        self
    }

    pub fn disk_cache(&self) -> Option<&DiskCache> {
        self.disk.as_deref()
    }

    pub fn object_store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    pub fn cache(&self) -> &BlockCache {
        &self.cache
    }

    /// This client's metrics (the engine built on this store counts into them too).
    pub fn metrics(&self) -> &Arc<EngineMetrics> {
        &self.metrics
    }

    /// Counts a finished object-store request.
    fn counted<T>(&self, request: ObjectRequest, result: object_store::Result<T>) -> object_store::Result<T> {
        let failed = match &result {
            Ok(_) | Err(object_store::Error::NotFound { .. }) if request == ObjectRequest::Head => false,
            other => other.is_err(),
        };
        self.metrics.object_request(request, failed);
        result
    }

    /// Stores `data` and returns its name. Safe to repeat: the same bytes make the same object.
    /// A chunk of several segments gets its segment hash list stored beside it.
    ///
    /// With a metadata store, the chunk is first protected from garbage collection for this
    /// session (the commit that references it releases the protection); a chunk the metadata
    /// knows to be stored is not uploaded again. The caller must pass the returned hash in its
    /// commit's [`BlockCommit::release`](elasticfs_metadata::BlockCommit) list.
    pub async fn put(&self, data: Bytes) -> FsResult<ChunkHash> {
        Ok(self.store(data).await?.0)
    }

    /// [`Self::put`], saying also whether the bytes were sent (false: the store had them).
    #[instrument(level = "debug", skip_all, fields(len = data.len()))]
    pub(crate) async fn store(&self, data: Bytes) -> FsResult<(ChunkHash, bool)> {
        let segments = SegmentHashes::applies_to(data.len() as u64).then(|| SegmentHashes::compute(&data));
        let hash = match &segments {
            Some((_, hash)) => *hash,
            None => hash_of(&data),
        };
        let sent = self.protect(hash).await? != ChunkProtection::Stored;
        if sent {
            let list = segments.map(|(segments, _)| Bytes::from(segments.encode()));
            self.upload_once(hash, data.clone(), list).await?;
        }
        self.cache.insert((hash, Part::Whole), data);
        Ok((hash, sent))
    }

    /// Protects `hash` for this session, waiting out a garbage collection that is deleting an
    /// earlier copy (then the chunk must be uploaded anew).
    async fn protect(&self, hash: ChunkHash) -> FsResult<ChunkProtection> {
        let Some(meta) = self.meta.clone() else { return Ok(ChunkProtection::New) };
        let deadline = Instant::now() + CONDEMNED_WAIT;
        loop {
            let meta = meta.clone();
            let answer = tokio::task::spawn_blocking(move || meta.protect_chunk(&hash))
                .await
                .map_err(|e| FsError::io(format!("protecting a chunk: {e}")))??;
            if answer != ChunkProtection::Condemned {
                return Ok(answer);
            }
            if Instant::now() >= deadline {
                return Err(FsError::io(format!(
                    "chunk {} has been being deleted by garbage collection for over {}s: is a gc stuck?",
                    hex::encode(hash),
                    CONDEMNED_WAIT.as_secs()
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Uploads the chunk (and its segment list), or waits for an upload of it already under
    /// way in this process. Only uploads under way are shared: one that finished before this
    /// chunk was protected may have been collected since.
    async fn upload_once(&self, hash: ChunkHash, data: Bytes, segments: Option<Bytes>) -> FsResult<()> {
        let cell = self.uploading.lock().unwrap().entry(hash).or_default().clone();
        let result = cell
            .get_or_try_init(|| async {
                match &segments {
                    None => self.put_object(chunk_path(&hash), data).await,
                    Some(list) => {
                        futures::try_join!(
                            self.put_object(segments_path(&hash), list.clone()),
                            self.put_object(chunk_path(&hash), data)
                        )?;
                        self.cache.insert((hash, Part::SegmentHashes), list.clone());
                        Ok(())
                    }
                }
            })
            .await
            .map(|_| ());
        let mut uploading = self.uploading.lock().unwrap();
        if uploading.get(&hash).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
            uploading.remove(&hash);
        }
        result
    }

    /// Protects a chunk that a commit named but the metadata did not find protected (this
    /// client's session ended while the chunk waited for its commit): fine if its object is
    /// still there, else the data is lost and the commit must fail.
    pub async fn reprotect(&self, hash: ChunkHash) -> FsResult<()> {
        if self.protect(hash).await? == ChunkProtection::Stored || self.exists(&hash).await? {
            return Ok(());
        }
        Err(FsError::io(format!(
            "chunk {} of uncommitted data is gone: this client lost its metadata session (no \
             heartbeat within the lease) and garbage collection deleted the chunk meanwhile",
            hex::encode(hash)
        )))
    }

    async fn put_object(&self, path: Path, data: Bytes) -> FsResult<()> {
        let result = self.store.put(&path, PutPayload::from_bytes(data)).await;
        self.counted(ObjectRequest::Put, result).map(|_| ()).map_err(|e| {
            error!(%path, "upload failed: {e}");
            FsError::io(format!("uploading {path}: {e}"))
        })
    }

    /// A whole object, received into a pooled buffer (see [`crate::buffer_pool`]).
    async fn get_object(&self, path: &Path) -> object_store::Result<Bytes> {
        let result = async {
            let got = self.store.get(path).await?;
            let GetResultPayload::Stream(mut stream) = got.payload else {
                return got.bytes().await; // a local file, read in one go
            };
            let mut buf = self.buffers.take((got.range.end - got.range.start) as usize);
            while let Some(piece) = stream.next().await {
                buf.extend_from_slice(&piece?);
            }
            Ok(buf.freeze())
        }
        .await;
        self.counted(ObjectRequest::Get, result)
    }

    /// The verified contents of chunk `hash`.
    #[instrument(level = "debug", skip_all, fields(chunk = %hex::encode(&hash[..6])))]
    pub async fn get(&self, hash: ChunkHash) -> FsResult<Bytes> {
        self.single_flight((hash, Part::Whole), || self.fetch(hash, DiskCopy::IfIdle)).await
    }

    /// The bytes a block's layout names, those in chunks fetched (segments only where that is
    /// less) and verified.
    pub(crate) async fn read_layout(self: &Arc<Self>, layout: Layout) -> FsResult<Vec<u8>> {
        let mut out = Vec::new();
        for piece in layout.into_pieces() {
            match piece.source {
                Source::Zeros => out.resize(out.len() + piece.len as usize, 0),
                Source::Bytes(bytes) => out.extend_from_slice(&bytes),
                Source::Chunk { hash, chunk_len, offset } => {
                    out.extend_from_slice(&self.get_range(hash, chunk_len, offset..offset + piece.len).await?)
                }
            }
        }
        Ok(out)
    }

    /// Bytes `range` of chunk `hash` (which is `chunk_len` long), verified, fetching only the
    /// segments the range touches when the whole chunk is not at hand.
    #[instrument(level = "debug", skip_all, fields(chunk = %hex::encode(&hash[..6]), start = range.start))]
    pub async fn get_range(
        self: &Arc<Self>,
        hash: ChunkHash,
        chunk_len: u64,
        range: Range<u64>,
    ) -> FsResult<Bytes> {
        let mut whole = self.cache.get(&(hash, Part::Whole));
        if whole.is_some() {
            self.metrics.cache_lookup(CacheTier::Memory, true);
        } else if self.inflight.lock().unwrap().contains_key(&(hash, Part::Whole)) {
            // The whole chunk is on its way: waiting for it costs no request of its own.
            whole = Some(self.get(hash).await?);
        }
        let segments = match whole {
            None if SegmentHashes::applies_to(chunk_len) => self.segment_hashes(hash, chunk_len).await,
            _ => None,
        };
        let Some(segments) = segments else {
            // Small chunk, cached chunk, or no usable segment list: read it whole.
            let data = match whole {
                Some(data) => data,
                None => self.get(hash).await?,
            };
            let end = range.end.min(data.len() as u64);
            return Ok(data.slice(range.start.min(end) as usize..end as usize));
        };
        let (first, last) = (range.start / SEGMENT_LEN, (range.end.max(1) - 1) / SEGMENT_LEN);
        let parts = try_join_all((first..=last.min(segments.count() - 1)).map(|index| {
            let segments = &segments;
            self.single_flight((hash, Part::Segment(index as u32)), move || {
                self.fetch_segment(hash, segments, index)
            })
        }))
        .await?;
        self.fetch_whole_in_background(hash);
        let within = |index: u64| {
            let seg = segments.range(index);
            (range.start.max(seg.start) - seg.start) as usize..(range.end.min(seg.end) - seg.start) as usize
        };
        if let [part] = parts.as_slice() {
            // Within one segment: a view of the cached segment, not a copy.
            return Ok(part.slice(within(first)));
        }
        let mut out = Vec::with_capacity((range.end - range.start) as usize);
        for (index, part) in (first..).zip(parts) {
            out.extend_from_slice(&part[within(index)]);
        }
        Ok(Bytes::from(out))
    }

    /// Runs `fetch` for `key` unless it is cached or another caller is already fetching it,
    /// in which case this one waits for that result.
    async fn single_flight<F, Fut>(&self, key: CacheKey, fetch: F) -> FsResult<Bytes>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = FsResult<Bytes>>,
    {
        let cached = self.cache.get(&key);
        self.metrics.cache_lookup(CacheTier::Memory, cached.is_some());
        if let Some(data) = cached {
            return Ok(data);
        }
        let cell = self.inflight.lock().unwrap().entry(key).or_default().clone();
        let result = cell
            .get_or_try_init(|| async {
                let data = fetch().await?;
                self.cache.insert(key, data.clone());
                Ok(data)
            })
            .await
            .cloned();
        self.inflight.lock().unwrap().remove(&key);
        result
    }

    async fn fetch(&self, hash: ChunkHash, copy: DiskCopy) -> FsResult<Bytes> {
        let key = (hash, Part::Whole);
        if let Some(data) = self.read_disk_cache(key, None, |data| hash_of(data) == hash).await {
            return Ok(data);
        }
        let path = chunk_path(&hash);
        let data = self.get_object(&path).await.map_err(|e| {
            error!(%path, "download failed: {e}");
            FsError::io(format!("downloading chunk {path}: {e}"))
        })?;
        if hash_of(&data) != hash {
            error!(%path, "chunk content does not match its hash: refusing to return it");
            return Err(FsError::io(format!(
                "chunk {path} is corrupt (its content does not match its name)"
            )));
        }
        self.write_disk_cache(key, &data, copy).await;
        Ok(data)
    }

    /// The disk cache's copy of `key` (or of `range` of it), if it has one that passes
    /// `verify` (a copy that does not is dropped).
    async fn read_disk_cache(
        &self,
        key: CacheKey,
        range: Option<Range<u64>>,
        verify: impl FnOnce(&[u8]) -> bool,
    ) -> Option<Bytes> {
        let disk = self.disk.clone()?;
        let data = if MAY_BLOCK.get() {
            disk.get(&key, range)
        } else {
            let lookup = disk.clone();
            tokio::task::spawn_blocking(move || lookup.get(&key, range)).await.ok().flatten()
        };
        let verified = match data {
            Some(data) if verify(&data) => Some(Bytes::from(data)),
            Some(_) => {
                warn!(dir = %disk.dir().display(), "a disk cache file did not match its hash: fetching it again");
                disk.discard(&key);
                None
            }
            None => None,
        };
        self.metrics.cache_lookup(CacheTier::Disk, verified.is_some());
        verified
    }

    /// After a ranged read, fetches the rest of the chunk in the background when there is a
    /// disk cache to keep it and a free prefetch slot: random reads over a file that fits the
    /// cache soon need no requests at all, while a sparse reader of a huge data set costs at
    /// most the few whole-chunk fetches the slots allow.
    fn fetch_whole_in_background(self: &Arc<Self>, hash: ChunkHash) {
        let Some(disk) = &self.disk else { return };
        if disk.contains(&(hash, Part::Whole)) || self.cache.get(&(hash, Part::Whole)).is_some() {
            return;
        }
        let Ok(slot) = self.background_fetches.clone().try_acquire_owned() else { return };
        let this = self.clone();
        tokio::spawn(async move {
            let _slot = slot;
            // Kept on disk whatever else is being copied there: that is what it was fetched
            // for (a copy skipped here would be fetched again by the next read of the chunk).
            let _ = this.single_flight((hash, Part::Whole), || this.fetch(hash, DiskCopy::Always)).await;
        });
    }

    /// Copies verified bytes to the disk cache, as `copy` says. `IfIdle` is best effort, in
    /// the background: with `DISK_CACHE_WRITERS` copies already queued it is skipped, so that
    /// filling the cache never takes the CPU and disk a fast sequential read needs (a skipped
    /// chunk is only a later miss). `Always` copies whatever is queued, and returns when done.
    async fn write_disk_cache(&self, key: CacheKey, data: &Bytes, copy: DiskCopy) {
        let Some(disk) = self.disk.clone() else { return };
        let slot = match copy {
            DiskCopy::IfIdle => match self.disk_writers.clone().try_acquire_owned() {
                Ok(slot) => Some(slot),
                Err(_) => return,
            },
            DiskCopy::Always => None,
        };
        let data = data.clone();
        let copying = tokio::task::spawn_blocking(move || {
            let _slot = slot;
            disk.insert(key, &data)
        });
        if let DiskCopy::Always = copy {
            let _ = copying.await;
        }
    }

    /// The chunk's verified segment list, or `None` if it is missing or does not match the
    /// chunk's name (then the caller reads the chunk whole, which is verified on its own).
    async fn segment_hashes(&self, hash: ChunkHash, chunk_len: u64) -> Option<SegmentHashes> {
        let key = (hash, Part::SegmentHashes);
        let path = segments_path(&hash);
        let fetched = self
            .single_flight(key, || async {
                let bytes = self
                    .get_object(&path)
                    .await
                    .map_err(|e| FsError::io(format!("downloading {path}: {e}")))?;
                match SegmentHashes::decode(&bytes, chunk_len, &hash) {
                    Some(_) => Ok(bytes),
                    None => Err(FsError::io(format!("{path} does not match its chunk"))),
                }
            })
            .await;
        match fetched {
            // Only lists that matched the name are ever cached: no need to hash them up again
            // on every random read.
            Ok(bytes) => SegmentHashes::decode_verified(&bytes, chunk_len),
            Err(e) => {
                warn!("reading the chunk whole instead of a range: {e}");
                // Remembered as unusable (an empty list never decodes), so that later reads of
                // this chunk neither retry the download nor warn again.
                self.cache.insert(key, Bytes::new());
                None
            }
        }
    }

    async fn fetch_segment(&self, hash: ChunkHash, segments: &SegmentHashes, index: u64) -> FsResult<Bytes> {
        let key = (hash, Part::Segment(index as u32));
        let range = segments.range(index);
        let verify = |data: &[u8]| segments.verify(index, data);
        // The segment cached on its own, or cut out of the cached whole chunk.
        if let Some(data) = self.read_disk_cache(key, None, verify).await {
            return Ok(data);
        }
        if let Some(data) = self.read_disk_cache((hash, Part::Whole), Some(range.clone()), verify).await {
            return Ok(data);
        }
        let path = chunk_path(&hash);
        let result = self.store.get_range(&path, range).await;
        let data = self.counted(ObjectRequest::Get, result).map_err(|e| {
            error!(%path, segment = index, "ranged download failed: {e}");
            FsError::io(format!("downloading segment {index} of chunk {path}: {e}"))
        })?;
        if !segments.verify(index, &data) {
            error!(%path, segment = index, "segment does not match its hash: refusing to return it");
            return Err(FsError::io(format!(
                "segment {index} of chunk {path} is corrupt (it does not match the chunk's hash tree)"
            )));
        }
        self.write_disk_cache(key, &data, DiskCopy::IfIdle).await;
        Ok(data)
    }

    /// Whether the object for `hash` exists (fsck).
    pub async fn exists(&self, hash: &ChunkHash) -> FsResult<bool> {
        match self.counted(ObjectRequest::Head, self.store.head(&chunk_path(hash)).await) {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(FsError::io(format!("checking chunk {}: {e}", hex::encode(hash)))),
        }
    }
}
