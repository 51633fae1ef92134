//! Content-addressed chunks in an object store: `chunks/<2 hex>/<blake3 hex>`. A PUT is
//! idempotent (the name is the content), every GET is verified against the name, and
//! concurrent misses on one chunk share one fetch.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use elasticfs_metadata::ChunkHash;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use tokio::sync::OnceCell;
use tracing::{error, instrument};

use crate::block_cache::BlockCache;
use crate::error::{FsError, FsResult};

pub struct ChunkStore {
    store: Arc<dyn ObjectStore>,
    cache: BlockCache,
    inflight: Mutex<HashMap<ChunkHash, Arc<OnceCell<Bytes>>>>,
}

pub fn chunk_path(hash: &ChunkHash) -> Path {
    let hex = hex::encode(hash);
    Path::from(format!("chunks/{}/{}", &hex[..2], hex))
}

pub fn hash_of(data: &[u8]) -> ChunkHash {
    *blake3::hash(data).as_bytes()
}

impl ChunkStore {
    pub fn new(store: Arc<dyn ObjectStore>, cache_bytes: usize) -> Self {
        ChunkStore { store, cache: BlockCache::new(cache_bytes), inflight: Mutex::new(HashMap::new()) }
    }

    pub fn object_store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    pub fn cache(&self) -> &BlockCache {
        &self.cache
    }

    /// Stores `data` and returns its name. Safe to repeat: the same bytes make the same object.
    #[instrument(level = "debug", skip_all, fields(len = data.len()))]
    pub async fn put(&self, data: Bytes) -> FsResult<ChunkHash> {
        let hash = hash_of(&data);
        self.store.put(&chunk_path(&hash), PutPayload::from_bytes(data.clone())).await.map_err(|e| {
            error!(chunk = %hex::encode(hash), "upload failed: {e}");
            FsError::io(format!("uploading chunk {}: {e}", hex::encode(hash)))
        })?;
        self.cache.insert(hash, data);
        Ok(hash)
    }

    /// The verified contents of chunk `hash`.
    #[instrument(level = "debug", skip_all, fields(chunk = %hex::encode(&hash[..6])))]
    pub async fn get(&self, hash: ChunkHash) -> FsResult<Bytes> {
        if let Some(data) = self.cache.get(&hash) {
            return Ok(data);
        }
        let cell = self.inflight.lock().unwrap().entry(hash).or_default().clone();
        let result = cell.get_or_try_init(|| self.fetch(hash)).await.cloned();
        self.inflight.lock().unwrap().remove(&hash);
        result
    }

    async fn fetch(&self, hash: ChunkHash) -> FsResult<Bytes> {
        let path = chunk_path(&hash);
        let data = async { self.store.get(&path).await?.bytes().await }.await.map_err(|e| {
            error!(%path, "download failed: {e}");
            FsError::io(format!("downloading chunk {path}: {e}"))
        })?;
        if hash_of(&data) != hash {
            error!(%path, "chunk content does not match its hash: refusing to return it");
            return Err(FsError::io(format!(
                "chunk {path} is corrupt (its content does not match its name)"
            )));
        }
        self.cache.insert(hash, data.clone());
        Ok(data)
    }

    /// Whether the object for `hash` exists (fsck).
    pub async fn exists(&self, hash: &ChunkHash) -> FsResult<bool> {
        match self.store.head(&chunk_path(hash)).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(FsError::io(format!("checking chunk {}: {e}", hex::encode(hash)))),
        }
    }
}
