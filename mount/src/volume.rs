//! Where a file system lives: its metadata URL, and opening or formatting it.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use elasticfs_core::metadata::{MetaStore, SledStore, Superblock};
use elasticfs_core::{connect_chunk_store, DiskCache, FileSystem};

use crate::options::MountOptions;

/// The embedded default volume: `~/.local/share/elasticfs/` (metadata and chunks side by side).
pub fn default_home() -> PathBuf {
    let base = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("/var/lib"));
    base.join("elasticfs")
}

pub fn default_meta_url() -> String {
    format!("sled://{}", default_home().join("meta").display())
}

pub fn default_storage_url() -> String {
    format!("file://{}", default_home().join("chunks").display())
}

/// A parsed `--meta` URL.
pub enum MetaUrl {
    Sled(PathBuf),
}

impl MetaUrl {
    pub fn parse(url: &str) -> Result<Self> {
        if let Some(path) = url.strip_prefix("sled://") {
            if !path.starts_with('/') {
                bail!("metadata URL {url:?} needs an absolute path: sled:///var/lib/elasticfs/meta");
            }
            return Ok(MetaUrl::Sled(PathBuf::from(path)));
        }
        if url.starts_with("tcp://") {
            bail!("metadata URL {url:?}: the shared metadata service (tcp://) is not available in this build yet; use sled:///path");
        }
        bail!("metadata URL {url:?} is not understood: use sled:///path/to/meta")
    }
}

/// Settings for a new file system.
pub struct FormatSpec {
    pub name: String,
    pub storage: String,
    pub block_size: u32,
    pub inline_threshold: u32,
}

pub fn format(meta_url: &str, spec: &FormatSpec) -> Result<Superblock> {
    let MetaUrl::Sled(path) = MetaUrl::parse(meta_url)?;
    if !spec.block_size.is_power_of_two() || !(64 << 10..=64 << 20).contains(&spec.block_size) {
        bail!("block size {} is not a power of two between 64 KiB and 64 MiB", spec.block_size);
    }
    if spec.inline_threshold > spec.block_size.min(1 << 20) {
        bail!("inline threshold {} must not exceed the block size or 1 MiB", spec.inline_threshold);
    }
    // Check the bucket before writing anything: a typo must not leave a half-made file system.
    connect_chunk_store(&spec.storage, 0)?;
    std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
    let sb = Superblock::new(&spec.name, spec.block_size, spec.inline_threshold, &spec.storage);
    // SAFETY: geteuid/getegid have no preconditions.
    let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    SledStore::format(&path, &sb, uid, gid)?;
    Ok(sb)
}

pub fn open_meta(meta_url: &str) -> Result<Arc<dyn MetaStore>> {
    let MetaUrl::Sled(path) = MetaUrl::parse(meta_url)?;
    Ok(Arc::new(SledStore::open(&path)?))
}

/// Opens the engine over an existing file system, with a disk cache unless its size is 0.
pub fn open_filesystem(meta_url: &str, opts: &MountOptions) -> Result<FileSystem> {
    let meta = open_meta(meta_url)?;
    let storage = meta.superblock().storage.clone();
    let mut chunks = connect_chunk_store(&storage, opts.engine.cache_bytes)?;
    if opts.disk_cache_bytes > 0 {
        let dir =
            opts.cache_dir.clone().unwrap_or_else(|| default_cache_root().join(&meta.superblock().uuid));
        chunks = chunks.with_disk_cache(DiskCache::open(&dir, opts.disk_cache_bytes)?);
    }
    Ok(FileSystem::new(meta, chunks, opts.engine.clone())?)
}

/// `/var/cache/elasticfs` for root, else the user's cache directory.
fn default_cache_root() -> PathBuf {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return PathBuf::from("/var/cache/elasticfs");
    }
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir)
        .join("elasticfs")
}

/// Whether `meta_url` already holds a file system.
pub fn is_formatted(meta_url: &str) -> Result<bool> {
    let MetaUrl::Sled(path) = MetaUrl::parse(meta_url)?;
    Ok(SledStore::exists(&path))
}
