//! Opening the object store a file system's chunks live in, from its storage URL.

use std::sync::Arc;

use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, RetryConfig};

use crate::chunk_store::ChunkStore;
use crate::error::{FsError, FsResult};
use crate::ownership::{self, Ownership};

/// Opens the chunk store at `url`, proves it usable and applies `ownership` to it (see
/// [`connect_object_store`]).
pub fn connect_chunk_store(url: &str, cache_bytes: usize, ownership: Ownership) -> FsResult<ChunkStore> {
    Ok(ChunkStore::new(connect_object_store(url, ownership)?, cache_bytes))
}

/// Opens the object store at `url` and proves it usable by writing, reading and deleting a
/// probe object, so that a wrong endpoint, bucket or credential is reported up front, naming
/// the storage, rather than as EIO on the first write; then makes sure that it belongs to the
/// file system (see [`crate::ownership`]) before anything else touches it.
pub fn connect_object_store(url: &str, ownership: Ownership) -> FsResult<Arc<dyn ObjectStore>> {
    let store = open_object_store(url)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| FsError::io(format!("starting a runtime: {e}")))?;
    let probe = Path::from(".elasticfs-probe");
    runtime
        .block_on(async {
            store.put(&probe, PutPayload::from_static(b"probe")).await?;
            store.get(&probe).await?.bytes().await?;
            store.delete(&probe).await
        })
        .map_err(|e| {
            FsError::io(format!(
                "the storage {url} is not usable: {e}\n  check the bucket name, the endpoint \
                 (AWS_ENDPOINT_URL) and the credentials (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY)"
            ))
        })?;
    runtime.block_on(ownership::enforce(&store, url, ownership))?;
    Ok(store)
}

/// Opens `url`: `file:///dir` (created if missing), `memory://` (tests), or `s3://bucket[/prefix]`
/// with its settings from query parameters (`endpoint`, `region`) and the usual `AWS_*`
/// environment variables (credentials are only ever taken from the environment).
pub fn open_object_store(url: &str) -> FsResult<Arc<dyn ObjectStore>> {
    let parsed = url::Url::parse(url).map_err(|e| {
        FsError::io(format!("storage URL {url:?} is not a URL ({e}): use file:///dir or s3://bucket"))
    })?;
    match parsed.scheme() {
        "file" => {
            let dir = parsed.to_file_path().map_err(|_| FsError::io(format!("{url:?}: not a local path")))?;
            std::fs::create_dir_all(&dir)
                .map_err(|e| FsError::io(format!("creating the chunk directory {}: {e}", dir.display())))?;
            let store = LocalFileSystem::new_with_prefix(&dir)
                .map_err(|e| FsError::io(format!("opening the chunk directory {}: {e}", dir.display())))?
                // A chunk must be on disk before the metadata that names it commits.
                .with_fsync(true)
                .with_automatic_cleanup(true);
            Ok(Arc::new(store))
        }
        "memory" => Ok(Arc::new(InMemory::new())),
        "s3" => {
            let bucket = parsed.host_str().ok_or_else(|| FsError::io(format!("{url:?}: no bucket name")))?;
            let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket).with_retry(RetryConfig {
                max_retries: 6,
                retry_timeout: std::time::Duration::from_secs(60),
                ..Default::default()
            });
            if std::env::var_os("AWS_UNSIGNED_PAYLOAD").is_none() {
                // Signing the payload hashes every chunk with SHA-256 on both ends, which cost a
                // third of the write throughput against a local S3 server. Chunks carry their
                // own blake3 name, checked on every read and by `fsck --verify-data`, so the
                // default is UNSIGNED-PAYLOAD, as AWS SDKs do over HTTPS;
                // AWS_UNSIGNED_PAYLOAD=false restores signing.
                builder = builder.with_unsigned_payload(true);
            }
            for (key, value) in parsed.query_pairs() {
                builder = match key.as_ref() {
                    "endpoint" => {
                        let plain_http = value.starts_with("http://");
                        builder.with_endpoint(value.to_string()).with_allow_http(plain_http)
                    }
                    "region" => builder.with_region(value.to_string()),
                    other => {
                        return Err(FsError::io(format!(
                            "{url:?}: unknown storage setting {other:?} (known: endpoint, region)"
                        )))
                    }
                };
            }
            let store =
                builder.build().map_err(|e| FsError::io(format!("configuring S3 bucket {bucket:?}: {e}")))?;
            let prefix = parsed.path().trim_matches('/');
            if prefix.is_empty() {
                Ok(Arc::new(store))
            } else {
                Ok(Arc::new(object_store::prefix::PrefixStore::new(store, prefix)))
            }
        }
        other => Err(FsError::io(format!("unknown storage kind {other:?}: use file://, s3:// or memory://"))),
    }
}
